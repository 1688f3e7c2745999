//! Hub configuration: a YAML file, overridden by `SWITCHYARD_*` environment variables and by
//! command-line flags, validated once at start-up with errors that name the offending key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole hub configuration. See `config/hub.yaml` for a commented example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the REST API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL clients use to reach this hub (for links in responses); defaults to
    /// `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Region this hub serves.
    #[serde(default = "default_region")]
    pub region: String,
    /// Directory for the embedded database, keys and scratch files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub offload: OffloadConfig,
    #[serde(default)]
    pub transfers: TransfersConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub budgets: BudgetsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub oauth: OAuthConfig,
}

/// `oauth`: the connect page's sign-in through the providers' own OAuth (Dropbox, Google
/// Drive, OneDrive). A provider is offered only when it is configured here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Per provider (`dropbox`, `gdrive`, `onedrive`): this deployment's OAuth client, as
    /// registered with the provider with the redirect URI `<public_url>/v1/oauth/callback`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderClientConfig>,
}

/// `oauth.providers.<name>`. The token endpoint and the API the account is checked against
/// are the ones the detectors and the pass-through use (`events.detect.services.<name>`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderClientConfig {
    /// The OAuth client id the provider gave this deployment.
    pub client_id: String,
    /// Its client secret. Prefer `client_secret_file` (or `SWITCHYARD_OAUTH__PROVIDERS__
    /// <NAME>__CLIENT_SECRET`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A file holding the client secret (must not be readable by group or others).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where the user signs in; the provider's own by default.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// The scopes asked for (space-separated); by default what the connector needs: none for
    /// Dropbox (its app's permissions), `https://www.googleapis.com/auth/drive` for Google
    /// Drive, `offline_access Files.ReadWrite.All User.Read` for OneDrive.
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for ProviderClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClientConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("authorize_url", &self.authorize_url)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Refuses a secret file that group or others may read.
fn check_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is readable by group or others; chmod 600 it",
            path.display()
        )));
    }
    Ok(())
}

/// The providers whose own OAuth the connect page can go through.
pub const OAUTH_PROVIDERS: &[&str] = &["dropbox", "gdrive", "onedrive"];

impl OAuthConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        for (name, p) in &self.providers {
            let key = |k: &str| format!("oauth.providers.{name}.{k}");
            if !OAUTH_PROVIDERS.contains(&name.as_str()) {
                return Err((
                    format!("oauth.providers.{name}"),
                    format!("unknown provider (known: {})", OAUTH_PROVIDERS.join(", ")),
                ));
            }
            if p.client_id.trim().is_empty() || p.client_id.len() > 512 {
                return Err((key("client_id"), "must be 1 to 512 characters".into()));
            }
            match (&p.client_secret, &p.client_secret_file) {
                (Some(_), Some(_)) => {
                    return Err((
                        key("client_secret"),
                        "give client_secret or client_secret_file, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err((
                        key("client_secret"),
                        "is required (or client_secret_file)".into(),
                    ))
                }
                (Some(s), None) if s.is_empty() => {
                    return Err((key("client_secret"), "is empty".into()))
                }
                _ => {}
            }
            if let Some(u) = &p.authorize_url {
                match reqwest::Url::parse(u) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => {
                        return Err((
                            key("authorize_url"),
                            "must be an http:// or https:// URL".into(),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl ProviderClientConfig {
    /// The client secret (read from `client_secret_file` when that is where it is).
    pub fn secret(&self) -> std::io::Result<String> {
        match (&self.client_secret, &self.client_secret_file) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(f)) => {
                check_private_file(f)?;
                Ok(std::fs::read_to_string(f)?.trim().to_owned())
            }
            (None, None) => Err(std::io::Error::other("no client secret is configured")),
        }
    }

    /// Where the user signs in.
    pub fn authorize_url(&self, provider: &str) -> Option<reqwest::Url> {
        let default = match provider {
            "dropbox" => "https://www.dropbox.com/oauth2/authorize",
            "gdrive" => "https://accounts.google.com/o/oauth2/v2/auth",
            "onedrive" => "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            _ => return None,
        };
        reqwest::Url::parse(self.authorize_url.as_deref().unwrap_or(default)).ok()
    }

    /// The scopes asked for.
    pub fn scope(&self, provider: &str) -> String {
        self.scope.clone().unwrap_or_else(|| {
            match provider {
                "gdrive" => "https://www.googleapis.com/auth/drive",
                "onedrive" => "offline_access Files.ReadWrite.All User.Read",
                _ => "",
            }
            .to_owned()
        })
    }
}

/// HTTPS on the REST API: a certificate from files, or one issued and renewed through ACME.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Reloaded on SIGHUP.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Certificates issued and renewed through ACME (RFC 8555) for `public_url`'s host.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// A plain-HTTP listener that redirects (308) to HTTPS and answers ACME HTTP-01
    /// challenges; `null` (the default) turns it off.
    #[serde(default)]
    pub redirect_listen: Option<SocketAddr>,
    /// A connection that has not finished its TLS handshake after this many seconds is closed.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            acme: None,
            redirect_listen: None,
            handshake_timeout_secs: default_handshake_timeout(),
        }
    }
}

impl TlsConfig {
    /// Whether the API serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.acme.is_some()
    }
}

/// ACME issuance and renewal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME server's directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// Contact emails given to the ACME server (expiry notices).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where the account key and the certificate are kept (files 0600); defaults to
    /// `DATA_DIR/acme`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The challenge type; only `http-01` (served on `tls.redirect_listen`).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Renew this long before expiry: seconds, or a number with `s`, `m`, `h` or `d`.
    #[serde(default = "default_renew_before")]
    pub renew_before: HumanDuration,
    /// PEM root CA trusted for the ACME server's own HTTPS (test CAs such as Pebble's); the
    /// system's roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The ACME challenge the hub answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// `GET http://HOST/.well-known/acme-challenge/TOKEN` on `tls.redirect_listen` (port 80).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
}

impl AcmeChallenge {
    /// The name the ACME server uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// A duration written as seconds (`90`) or with a unit (`250ms`, `45s`, `10m`, `12h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(HumanDuration(std::time::Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t).map(HumanDuration).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a duration (seconds, or a number with s, m, h or d)"
                ))
            }),
        }
    }
}

/// `90`, `90s`, `500ms`, `30m`, `12h`, `7d`: seconds, or a number with a unit (the config's durations
/// and the command line's `--ttl`). `None` for anything else, or one that overflows.
pub(crate) fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(n.checked_mul(mult_ms)?))
}

fn default_renew_before() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 86_400))
}
fn default_handshake_timeout() -> u64 {
    10
}

/// The latency-aware steering DNS server (authoritative for one zone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address to serve DNS on; `null` (the default) turns it off.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The zone: `api.<zone>` is steered, `<region>.api.<zone>` is fixed per region.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Name servers of the zone (NS records), absolute or relative to the zone.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// The SOA mailbox (RNAME), e.g. `hostmaster.example.com`.
    #[serde(default)]
    pub hostmaster: Option<String>,
    /// TTL of steered answers, seconds.
    #[serde(default = "default_dns_ttl")]
    pub ttl_secs: u32,
    /// The addresses answered for this hub (its public IPs); defaults to the host of
    /// `public_url` when that is an IP.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// Static records served as they are.
    #[serde(default)]
    pub records: Vec<StaticRecord>,
    /// Fallback when no RTT is measured for a client network: CIDR → region.
    #[serde(default)]
    pub regions: Vec<CidrRegion>,
    /// Last resort region; defaults to this hub's region.
    #[serde(default)]
    pub default_region: Option<String>,
    /// Seconds between health probes of the other hubs' `/readyz`.
    #[serde(default = "default_probe_secs")]
    pub probe_interval_secs: u64,
    /// Consecutive failed probes before a hub counts as down.
    #[serde(default = "default_probe_failures")]
    pub probe_failures: u32,
    /// Move a client network to another hub only when it is this many percent...
    #[serde(default = "default_hysteresis_pct")]
    pub hysteresis_pct: u32,
    /// ...and this many milliseconds faster.
    #[serde(default = "default_hysteresis_ms")]
    pub hysteresis_ms: u64,
    /// Response rate limiting of UDP answers per client network.
    #[serde(default)]
    pub rrl: RrlConfig,
}

/// Response rate limiting (as NSD and BIND do): every client network (/24, /56) gets a token
/// bucket of UDP responses, so the server cannot be used to amplify a flood at a spoofed
/// victim. TCP is never limited (its handshake proves the source address).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RrlConfig {
    /// Sustained UDP responses per second to one client network; 0 turns limiting off.
    #[serde(default = "default_rrl_rate")]
    pub responses_per_second: u32,
    /// Responses a network may get at once above the sustained rate (the bucket's size).
    #[serde(default = "default_rrl_burst")]
    pub burst: u32,
    /// Every `slip`-th limited response is sent empty with TC=1 instead of being dropped, so a
    /// real client behind a flooded network retries over TCP; 0 drops them all.
    #[serde(default = "default_rrl_slip")]
    pub slip: u32,
    /// Client networks tracked at most (the oldest is forgotten beyond).
    #[serde(default = "default_rrl_max_prefixes")]
    pub max_prefixes: usize,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            responses_per_second: default_rrl_rate(),
            burst: default_rrl_burst(),
            slip: default_rrl_slip(),
            max_prefixes: default_rrl_max_prefixes(),
        }
    }
}

fn default_rrl_rate() -> u32 {
    20
}
fn default_rrl_burst() -> u32 {
    40
}
fn default_rrl_slip() -> u32 {
    2
}
fn default_rrl_max_prefixes() -> usize {
    100_000
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            zone: default_zone(),
            nameservers: Vec::new(),
            hostmaster: None,
            ttl_secs: default_dns_ttl(),
            addresses: Vec::new(),
            records: Vec::new(),
            regions: Vec::new(),
            default_region: None,
            probe_interval_secs: default_probe_secs(),
            probe_failures: default_probe_failures(),
            hysteresis_pct: default_hysteresis_pct(),
            hysteresis_ms: default_hysteresis_ms(),
            rrl: RrlConfig::default(),
        }
    }
}

/// A record the DNS server serves verbatim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    /// Relative to the zone (`www`), `@` for the apex, or absolute (`www.example.com.`).
    pub name: String,
    /// `A`, `AAAA`, `CNAME`, `TXT` or `MX`.
    #[serde(rename = "type")]
    pub kind: String,
    /// In zone-file syntax (`192.0.2.1`, `10 mail.example.com.`, ...).
    pub value: String,
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// A static CIDR → region mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRegion {
    pub cidr: ipnet::IpNet,
    pub region: String,
}

fn default_zone() -> String {
    "switchyard.internal".into()
}
fn default_dns_ttl() -> u32 {
    30
}
fn default_probe_secs() -> u64 {
    5
}
fn default_probe_failures() -> u32 {
    3
}
fn default_hysteresis_pct() -> u32 {
    20
}
fn default_hysteresis_ms() -> u64 {
    10
}

/// The spoke control plane (QUIC with mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// UDP address of the QUIC control endpoint spokes dial; `null` turns the network off.
    #[serde(default = "default_quic_listen")]
    pub quic_listen: Option<SocketAddr>,
    /// `host:port` spokes use to reach `quic_listen` on this hub: the hub directory every
    /// spoke dials carries it (and join strings, unless `join_advertise` is set); defaults to
    /// `quic_listen` when that is a specific address.
    #[serde(default)]
    pub quic_advertise: Option<String>,
    /// `host:port` join strings carry instead of `quic_advertise`: the region's load balancer,
    /// when several hubs sit behind one. Enrollment works on any hub; the sessions then go to
    /// every hub's own `quic_advertise`, so each hub has every spoke of the network (one
    /// load-balanced name would give each spoke one hub of the region only).
    #[serde(default)]
    pub join_advertise: Option<String>,
    /// Extra DNS names or IPs in the hub's certificate.
    #[serde(default)]
    pub names: Vec<String>,
    /// How often spokes report, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Missed heartbeats before a spoke is unhealthy.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u32,
    /// Validity of spoke certificates, in days.
    #[serde(default = "default_cert_days")]
    pub spoke_cert_days: u64,
    /// Default validity of join tokens, in seconds.
    #[serde(default = "default_token_ttl")]
    pub join_token_ttl_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            quic_listen: default_quic_listen(),
            quic_advertise: None,
            join_advertise: None,
            names: Vec::new(),
            heartbeat_ms: default_heartbeat_ms(),
            missed_heartbeats: default_missed(),
            spoke_cert_days: default_cert_days(),
            join_token_ttl_secs: default_token_ttl(),
        }
    }
}

/// When and how the hub hands work to spokes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadConfig {
    /// Transfers at or above this size go to a spoke; smaller ones within one account may run
    /// on the hub.
    #[serde(default = "default_threshold")]
    pub threshold: u64,
    /// Preferred part size of resumable transfers.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Parts in flight per transfer.
    #[serde(default = "default_part_concurrency")]
    pub part_concurrency: u32,
    /// Transfers one spoke runs at once; also the most slots the hub counts for any spoke,
    /// whatever its hello claims.
    #[serde(default = "default_max_jobs")]
    pub max_jobs_per_spoke: u32,
    /// Bandwidth cap per spoke in bytes per second (`null`: none).
    #[serde(default)]
    pub spoke_rate_limit: Option<u64>,
    /// After a hub start, how long to wait for spokes to reconnect before running pending
    /// transfers itself, in seconds.
    #[serde(default = "default_grace")]
    pub startup_grace_secs: u64,
    /// Let a spoke near the source relay the bytes to the spoke near the destination when they
    /// differ (spoke↔spoke over QUIC).
    #[serde(default = "default_true")]
    pub relay: bool,
    /// Congestion controller of relay connections: `bbr` (the default: keeps its rate under
    /// random loss on long paths, where `cubic` collapses; `bench wan`), `cubic` or `new_reno`.
    #[serde(default)]
    pub congestion: shared::quic::Congestion,
    /// QUIC connections one relayed transfer is striped over (parts go to the least busy), each
    /// with its own congestion controller and a share of the windows (`bench wan`).
    #[serde(default = "default_relay_connections")]
    pub relay_connections: u32,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            part_size: default_part_size(),
            part_concurrency: default_part_concurrency(),
            max_jobs_per_spoke: default_max_jobs(),
            spoke_rate_limit: None,
            startup_grace_secs: default_grace(),
            relay: true,
            congestion: shared::quic::Congestion::default(),
            relay_connections: default_relay_connections(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_quic_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 7443)))
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_missed() -> u32 {
    3
}
fn default_cert_days() -> u64 {
    90
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_threshold() -> u64 {
    64 << 20
}
fn default_part_size() -> u64 {
    16 << 20
}
fn default_part_concurrency() -> u32 {
    4
}
fn default_max_jobs() -> u32 {
    4
}
fn default_relay_connections() -> u32 {
    4
}
fn default_grace() -> u64 {
    5
}

/// How hubs share transfers: each unfinished transfer is worked on by the one hub process
/// holding its lease; any hub takes over a lease that expired.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransfersConfig {
    /// How long a transfer's lease lasts without renewal, in ms (renewed every third of it).
    /// A hub that stops renewing loses its transfers to another hub after at most this long.
    /// It must exceed the QUIC idle timeout of spoke connections, so that a spoke has dropped
    /// a silent hub's jobs before another hub takes them over.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How long a spoke that failed a transfer (it reported the failure, or was lost while
    /// running it) is kept away from that transfer, in seconds (default 300; 0: only the
    /// immediate retry avoids it). Recorded in the database, so every hub that dispatches the
    /// transfer honours it; the transfer goes to another spoke, or to the hub itself when no
    /// other spoke can take it, and its `note` says which spoke was excluded, why and until
    /// when. At most 86400.
    #[serde(default = "default_failed_spoke_exclusion_secs")]
    pub failed_spoke_exclusion_secs: u64,
    /// How often the scheduler passes over this hub's transfers, in ms (default 500, 50 to
    /// 60000): it dispatches queued ones (those that waited for spokes to measure their
    /// storage endpoints, or for a spoke at all), takes over leases that ran out and takes
    /// transfers away from spokes that stopped reporting. A new transfer does not wait for it:
    /// it is dispatched when created, and again as soon as the measurements it waited for
    /// arrive.
    #[serde(default = "default_scheduler_tick_ms")]
    pub scheduler_tick_ms: u64,
}

impl Default for TransfersConfig {
    fn default() -> Self {
        Self {
            lease_ms: default_lease_ms(),
            failed_spoke_exclusion_secs: default_failed_spoke_exclusion_secs(),
            scheduler_tick_ms: default_scheduler_tick_ms(),
        }
    }
}

impl TransfersConfig {
    /// How long a lease lasts without renewal.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms)
    }

    /// How often a holder renews its leases.
    pub fn renew_every(&self) -> std::time::Duration {
        self.lease() / 3
    }

    /// How long a spoke that failed a transfer is kept away from it.
    pub fn failed_spoke_exclusion(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.failed_spoke_exclusion_secs)
    }

    /// How often the scheduler passes over this hub's transfers.
    pub fn scheduler_tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.scheduler_tick_ms)
    }
}

fn default_lease_ms() -> u64 {
    10_000
}
fn default_failed_spoke_exclusion_secs() -> u64 {
    300
}
fn default_scheduler_tick_ms() -> u64 {
    500
}

/// The per-account change feed (`/v1/accounts/{acc}/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Days an event is kept (1 to 3650); older ones are deleted, and a cursor pointing
    /// before the oldest kept event is refused with `cursor_expired`.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Detection of changes made outside the API (`hub::detect`).
    #[serde(default)]
    pub detect: DetectConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: default_retention_days(),
            detect: DetectConfig::default(),
        }
    }
}

/// `events.detect`: detectors of outside changes, one per account of an application that
/// collects events, polled at intervals by whichever hub of the region takes the poll from the
/// work queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Run detectors on this hub (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between two polls of an account (ms, 100 to 86400000; default 60000), unless its
    /// service has its own under `services`.
    #[serde(default = "default_detect_interval_ms")]
    pub interval_ms: u64,
    /// Per service (`s3`, `webdav`, `sftp`, `azblob`, `fs`, `dropbox`, ...): `{interval_ms:
    /// N}`; the delta-API services also take `api_url` and `token_url` (their defaults are the
    /// providers' own: see [`DetectConfig::delta_endpoints`]), e.g. to go through a proxy.
    #[serde(default)]
    pub services: std::collections::BTreeMap<String, DetectServiceConfig>,
    /// How long a poll's lease lasts without renewal (ms, 1000 to 600000; default 30000; the
    /// poll renews it every third): a dead hub's poll is redone by another hub after this.
    #[serde(default = "default_detect_lease_ms")]
    pub lease_ms: u64,
    /// Hand due polls to the work queue from this hub (default true). Off, the hub only runs
    /// polls other hubs hand it (with `redis.url`), e.g. a hub placed near the storage.
    #[serde(default = "default_true")]
    pub schedule: bool,
    /// Polls one hub runs at once, taken from the region's work queue (1 to 256, default 4).
    #[serde(default = "default_detect_concurrency")]
    pub concurrency: u32,
    /// `fs`: how long to wait after an inotify event for the burst to settle before the
    /// poll (ms, 0 to 10000; default 200).
    #[serde(default = "default_detect_settle_ms")]
    pub fs_settle_ms: u64,
}

/// `events.detect.services.<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectServiceConfig {
    /// Time between two polls (ms); the global `interval_ms` when absent.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Dropbox, Google Drive, OneDrive: the API's base URL.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Dropbox, Google Drive, OneDrive: where access tokens are refreshed.
    #[serde(default)]
    pub token_url: Option<String>,
}

/// Where a delta-API detector talks to its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaEndpoints {
    /// The API's base URL, without a trailing slash (`https://api.dropboxapi.com/2`).
    pub api: reqwest::Url,
    /// The OAuth token endpoint (refresh grants).
    pub token: reqwest::Url,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: default_detect_interval_ms(),
            services: Default::default(),
            lease_ms: default_detect_lease_ms(),
            schedule: true,
            concurrency: default_detect_concurrency(),
            fs_settle_ms: default_detect_settle_ms(),
        }
    }
}

impl DetectConfig {
    /// The time between polls of an account of `service`.
    pub fn interval(&self, service: &str) -> std::time::Duration {
        let ms = self
            .services
            .get(service)
            .and_then(|s| s.interval_ms)
            .unwrap_or(self.interval_ms);
        std::time::Duration::from_millis(ms)
    }

    /// The API and token endpoints of a delta-API service (`dropbox`, `gdrive`, `onedrive`):
    /// the providers' own unless `services.<name>` says otherwise; `None` for other services.
    pub fn delta_endpoints(&self, service: &str) -> Option<DeltaEndpoints> {
        let (api, token) = match service {
            "dropbox" => (
                "https://api.dropboxapi.com/2",
                "https://api.dropboxapi.com/oauth2/token",
            ),
            "gdrive" => (
                "https://www.googleapis.com/drive/v3",
                "https://oauth2.googleapis.com/token",
            ),
            "onedrive" => (
                "https://graph.microsoft.com/v1.0",
                "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            ),
            _ => return None,
        };
        let s = self.services.get(service);
        let api = s.and_then(|s| s.api_url.as_deref()).unwrap_or(api);
        let token = s.and_then(|s| s.token_url.as_deref()).unwrap_or(token);
        Some(DeltaEndpoints {
            api: reqwest::Url::parse(api.trim_end_matches('/')).ok()?,
            token: reqwest::Url::parse(token).ok()?,
        })
    }

    /// The detector lease's length.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let interval = |key: String, ms: u64| {
            if (100..=86_400_000).contains(&ms) {
                Ok(())
            } else {
                Err((
                    key,
                    "must be between 100 and 86400000 (ms between polls)".to_owned(),
                ))
            }
        };
        interval("events.detect.interval_ms".into(), self.interval_ms)?;
        for (name, s) in &self.services {
            if !shared::storage::SERVICES.contains(&name.as_str()) {
                return Err((
                    format!("events.detect.services.{name}"),
                    format!(
                        "is not a service; use one of {}",
                        shared::storage::SERVICES.join(", ")
                    ),
                ));
            }
            if let Some(ms) = s.interval_ms {
                interval(format!("events.detect.services.{name}.interval_ms"), ms)?;
            }
            for (key, url) in [("api_url", &s.api_url), ("token_url", &s.token_url)] {
                let Some(url) = url else { continue };
                let key = format!("events.detect.services.{name}.{key}");
                if !crate::detect::delta::is_delta_service(name) {
                    return Err((
                        key,
                        "only Dropbox, Google Drive and OneDrive (dropbox, gdrive, onedrive) \
                         detectors talk to an API of their own"
                            .into(),
                    ));
                }
                match reqwest::Url::parse(url) {
                    Ok(u)
                        if matches!(u.scheme(), "http" | "https")
                            && u.host_str().is_some()
                            && u.username().is_empty()
                            && u.password().is_none()
                            && u.query().is_none() => {}
                    _ => {
                        return Err((
                            key,
                            "must be an http(s) URL with a host and no credentials or query".into(),
                        ))
                    }
                }
            }
        }
        if !(1000..=600_000).contains(&self.lease_ms) {
            return Err((
                "events.detect.lease_ms".into(),
                "must be between 1000 and 600000".into(),
            ));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err((
                "events.detect.concurrency".into(),
                "must be between 1 and 256".into(),
            ));
        }
        if self.fs_settle_ms > 10_000 {
            return Err((
                "events.detect.fs_settle_ms".into(),
                "must be at most 10000".into(),
            ));
        }
        Ok(())
    }
}

fn default_detect_interval_ms() -> u64 {
    60_000
}

fn default_detect_lease_ms() -> u64 {
    30_000
}

fn default_detect_concurrency() -> u32 {
    4
}

fn default_detect_settle_ms() -> u64 {
    200
}

impl EventsConfig {
    /// How long an event is kept.
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }
}

/// Webhook deliveries (`crate::webhooks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// A delivery that has no complete answer after this long failed.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// The wait before each attempt: entry 0 before the first (Kloudless's "immediately";
    /// the first attempt also waits out `coalesce`), entry n after the n-th failure; the last
    /// entry repeats. A receiver's `Retry-After` (up to a day) wins when it asks for longer.
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule: Vec<HumanDuration>,
    /// A webhook whose deliveries have failed for this long without a success is disabled
    /// (the Meta API shows the reason). A `410 Gone` answer disables it at once.
    #[serde(default = "default_disable_after")]
    pub disable_after: HumanDuration,
    /// How often each hub hands due notifications to the work queue (retries come due, work
    /// lost with a Redis restart is found again). New notifications go at once.
    #[serde(default = "default_reconcile_every")]
    pub reconcile_every: HumanDuration,
    /// A notification handed to the queue that is still pending after this long is handed
    /// again (its work was lost). Must exceed `timeout`.
    #[serde(default = "default_requeue_after")]
    pub requeue_after: HumanDuration,
    /// Deliveries one hub runs at once.
    #[serde(default = "default_webhook_concurrency")]
    pub concurrency: u32,
    /// A new notification waits this long for more changes to the same account before it is
    /// sent, so a burst of changes makes one notification (changes during a delivery make one
    /// more after it).
    #[serde(default = "default_coalesce")]
    pub coalesce: HumanDuration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout: default_webhook_timeout(),
            retry_schedule: default_retry_schedule(),
            disable_after: default_disable_after(),
            reconcile_every: default_reconcile_every(),
            requeue_after: default_requeue_after(),
            concurrency: default_webhook_concurrency(),
            coalesce: default_coalesce(),
        }
    }
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}
/// Kloudless's schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
fn default_retry_schedule() -> Vec<HumanDuration> {
    [
        0u64, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400,
    ]
    .into_iter()
    .map(|s| HumanDuration(std::time::Duration::from_secs(s)))
    .collect()
}
fn default_disable_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5 * 86_400))
}
fn default_reconcile_every() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_requeue_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_webhook_concurrency() -> u32 {
    64
}
fn default_coalesce() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(100))
}

/// Provider request budgets (`shared::budget`): a token bucket per (service, endpoint or
/// account), shared by every hub and spoke through Redis when `redis.url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// Per service: `{rate: requests per second (fractions allowed; 0 = unlimited), burst}`.
    /// Services not named keep their defaults (`shared::budget::BudgetSettings::default`).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceBudget>,
    /// The longest an API request waits for a provider slot before `429 rate_limited`.
    #[serde(default = "default_api_wait")]
    pub api_max_wait: HumanDuration,
    /// The longest background work (transfers, detectors, spokes) waits for one slot.
    #[serde(default = "default_background_wait")]
    pub background_max_wait: HumanDuration,
    /// Cool-down after a provider's `429` without `Retry-After`.
    #[serde(default = "default_cool_down")]
    pub default_cool_down: HumanDuration,
    /// The longest cool-down a provider's `Retry-After` may impose on the cluster.
    #[serde(default = "default_max_cool_down")]
    pub max_cool_down: HumanDuration,
}

/// One service's budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBudget {
    /// Requests per second on average; 0 is unlimited (only cool-downs apply).
    pub rate: f64,
    /// Requests at once after a quiet spell (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            api_max_wait: default_api_wait(),
            background_max_wait: default_background_wait(),
            default_cool_down: default_cool_down(),
            max_cool_down: default_max_cool_down(),
        }
    }
}

fn default_api_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}
fn default_background_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_cool_down() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_max_cool_down() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

impl BudgetsConfig {
    /// The settings every process of the cluster applies (hubs hand them to spokes).
    pub fn settings(&self) -> shared::budget::BudgetSettings {
        let mut s = shared::budget::BudgetSettings::default();
        for (name, b) in &self.services {
            let burst = b.burst.unwrap_or(b.rate.ceil().max(1.0) as u32);
            s.services.insert(
                name.clone(),
                shared::budget::Limit::per_second(b.rate, burst),
            );
        }
        let ms = |d: &HumanDuration| d.0.as_millis() as u64;
        s.api_max_wait_ms = ms(&self.api_max_wait);
        s.background_max_wait_ms = ms(&self.background_max_wait);
        s.default_cool_down_ms = ms(&self.default_cool_down);
        s.max_cool_down_ms = ms(&self.max_cool_down);
        s
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (name, b) in &self.services {
            let key = format!("budgets.services.{name}");
            if !shared::storage::service::SERVICES.contains(&name.as_str()) {
                return Err((key, "is not a service".into()));
            }
            if matches!(name.as_str(), "fs" | "sftp") {
                return Err((key, "is not paced (no HTTP requests to budget)".into()));
            }
            if !b.rate.is_finite() || b.rate < 0.0 || b.rate > 1_000_000.0 {
                return Err((
                    format!("{key}.rate"),
                    "must be between 0 (unlimited) and 1000000 requests per second".into(),
                ));
            }
            if b.burst.is_some_and(|n| n == 0 || n > 1_000_000) {
                return Err((
                    format!("{key}.burst"),
                    "must be between 1 and 1000000".into(),
                ));
            }
        }
        if self.max_cool_down.0 > std::time::Duration::from_secs(86_400) {
            return Err((
                "budgets.max_cool_down".into(),
                "must be at most a day".into(),
            ));
        }
        if self.api_max_wait.0 > std::time::Duration::from_secs(60) {
            return Err((
                "budgets.api_max_wait".into(),
                "must be at most 60 s (clients are waiting)".into(),
            ));
        }
        Ok(())
    }
}

/// Redis: how the hubs of a region share work (webhook deliveries). Without `url`, each hub
/// runs an in-process queue; the database stays the record either way.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of the stream keys (`<prefix>:<region>:<queue>`), for a Redis shared with
    /// other systems. Default `switchyard`.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

fn default_retention_days() -> u32 {
    7
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Where writes go: `sqlite://PATH` (embedded default: `DATA_DIR/hub.db`) or
    /// `postgres://...`, which may list several hosts (`postgres://u@h1:5432,h2:5432/db`): the
    /// hub writes to the one that is not in recovery with the highest timeline, and looks again
    /// after connection errors (a promoted replica is found without a restart).
    #[serde(default)]
    pub url: Option<String>,
    /// This region's streaming replica (PostgreSQL, read only): replica-eligible reads go there
    /// (see ARCHITECTURE.md). Unset: every query goes to the primary.
    #[serde(default)]
    pub replica_url: Option<String>,
    /// Connection pool size (per server).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before the request is answered 503
    /// `database_unavailable` (sqlx's own default is 30 s).
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// A replica further behind the primary than this is not read.
    #[serde(default = "default_max_replica_lag_ms")]
    pub max_replica_lag_ms: u64,
    /// How long a write that answers a client waits for the replica to show it (past this,
    /// reads avoid the replica until it catches up).
    #[serde(default = "default_read_your_writes_wait_ms")]
    pub read_your_writes_wait_ms: u64,
    /// How long a read carrying `X-Switchyard-Position` waits for the replica to reach it
    /// before reading the primary instead.
    #[serde(default = "default_position_wait_ms")]
    pub position_wait_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            replica_url: None,
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            max_replica_lag_ms: default_max_replica_lag_ms(),
            read_your_writes_wait_ms: default_read_your_writes_wait_ms(),
            position_wait_ms: default_position_wait_ms(),
        }
    }
}

impl DatabaseConfig {
    /// The routing knobs of [`crate::db::topology`].
    pub fn routing(&self) -> crate::db::topology::Routing {
        use std::time::Duration;
        crate::db::topology::Routing {
            max_connections: self.max_connections,
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
            max_replica_lag: Duration::from_millis(self.max_replica_lag_ms),
            read_your_writes_wait: Duration::from_millis(self.read_your_writes_wait_ms),
            position_wait: Duration::from_millis(self.position_wait_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of 32 random bytes. Prefer `master_key_file`.
    #[serde(default)]
    pub master_key: Option<String>,
    /// File holding the base64 master key (must not be readable by group or others).
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub fs: FsStorageConfig,
    /// Allow user-supplied endpoints (S3, WebDAV, SFTP...) that resolve to loopback, private,
    /// link-local or otherwise internal addresses. Off by default: this is the SSRF guard.
    #[serde(default)]
    pub allow_private_endpoints: bool,
    /// Internal networks (CIDRs, e.g. `10.0.5.20/32`) provider endpoints may reach although
    /// the SSRF guard is on: the operator's own storage servers.
    #[serde(default)]
    pub allowed_private_endpoints: Vec<ipnet::IpNet>,
    /// The DNS server (`ip:port`) that resolves provider endpoint names; the system's
    /// resolver configuration when unset.
    #[serde(default)]
    pub nameserver: Option<std::net::SocketAddr>,
    /// Timeout of one provider request, in seconds.
    #[serde(default = "default_io_timeout")]
    pub io_timeout_secs: u64,
    /// Seconds after which an upload's staging object (or a reserved name) that its request
    /// stopped refreshing counts as abandoned (the hub crashed, the request was cut) and is
    /// swept. Live uploads refresh theirs every quarter of this, however long they run.
    #[serde(default = "default_staging_grace")]
    pub staging_grace_secs: u64,
    /// Seconds an upload session (`storage/multipart`) stays open; then the parts it holds at
    /// the provider are deleted (default 24 hours).
    #[serde(default = "default_upload_session_ttl")]
    pub upload_session_ttl_secs: u64,
    /// The part size upload sessions ask for (default 16 MiB), within each service's limits
    /// (at least 5 MiB on S3) and grown for files that would need more than 10,000 parts.
    #[serde(default = "default_upload_part_size")]
    pub upload_part_size_bytes: u64,
    /// Seconds after which a session's completion that has not finished (its hub died) may be
    /// taken over by the next completion request (default 10 minutes; at most a day).
    #[serde(default = "default_session_completion_stale")]
    pub session_completion_stale_secs: u64,
}

fn default_session_completion_stale() -> u64 {
    600
}

fn default_upload_part_size() -> u64 {
    crate::sessions::PREFERRED_PART_SIZE
}

fn default_upload_session_ttl() -> u64 {
    24 * 3600
}

fn default_staging_grace() -> u64 {
    900
}

impl StorageConfig {
    /// [`StorageConfig::staging_grace_secs`] as a duration (at least one second).
    pub fn staging_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.staging_grace_secs.max(1))
    }

    /// [`StorageConfig::session_completion_stale_secs`] in milliseconds.
    pub fn session_completion_stale_ms(&self) -> i64 {
        self.session_completion_stale_secs.clamp(1, 86_400) as i64 * 1000
    }

    /// [`StorageConfig::upload_session_ttl_secs`] as a duration (at least one second).
    pub fn upload_session_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.upload_session_ttl_secs.max(1))
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            fs: FsStorageConfig::default(),
            allow_private_endpoints: false,
            allowed_private_endpoints: Vec::new(),
            nameserver: None,
            io_timeout_secs: default_io_timeout(),
            staging_grace_secs: default_staging_grace(),
            upload_session_ttl_secs: default_upload_session_ttl(),
            upload_part_size_bytes: default_upload_part_size(),
            session_completion_stale_secs: default_session_completion_stale(),
        }
    }
}

impl StorageConfig {
    /// The egress policy of provider connections (the SSRF guard) this config asks for.
    pub fn egress_policy(&self) -> anyhow::Result<shared::egress::EgressPolicy> {
        use shared::egress::EgressPolicy;
        use shared::resolve::Resolver;
        let resolver = match self.nameserver {
            Some(ns) => Resolver::with_nameserver(ns)
                .map_err(|e| anyhow::anyhow!("storage.nameserver: {e}"))?,
            None => Resolver::system().clone(),
        };
        Ok(if self.allow_private_endpoints {
            EgressPolicy::open(resolver)
        } else {
            EgressPolicy::guarded(self.allowed_private_endpoints.clone(), resolver)
        })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FsStorageConfig {
    /// Directories under which `fs` accounts may be rooted; each application owns `app-<id>`
    /// under each (`crate::fsroot`). Empty: `fs` accounts are refused.
    #[serde(default)]
    pub allowed_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest JSON request body, in bytes.
    #[serde(default = "default_json_body")]
    pub max_json_body_bytes: usize,
    /// Largest upload, in bytes (0: no limit).
    #[serde(default)]
    pub max_upload_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_json_body_bytes: default_json_body(),
            max_upload_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `hub=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_region() -> String {
    "local".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./switchyard-data")
}
fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout_ms() -> u64 {
    2000
}
fn default_max_replica_lag_ms() -> u64 {
    2000
}
fn default_read_your_writes_wait_ms() -> u64 {
    2000
}
fn default_position_wait_ms() -> u64 {
    1000
}
fn default_io_timeout() -> u64 {
    60
}
fn default_json_body() -> usize {
    1024 * 1024
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "text".into()
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Environment variables that are flags of the CLI rather than config keys.
const NOT_KEYS: &[&str] = &["SWITCHYARD_CONFIG", "SWITCHYARD_LOG"];

impl Config {
    /// Loads `path` (or only defaults when `None`), applies `SWITCHYARD_*` overrides from `env`,
    /// and validates the result.
    ///
    /// An environment variable `SWITCHYARD_A__B` sets key `a.b`; its value is parsed as YAML,
    /// so `SWITCHYARD_STORAGE__FS__ALLOWED_ROOTS='[/srv/a, /srv/b]'` sets a list.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_yaml(&text, env)
    }

    /// Like [`Config::load`] but from YAML text.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        use serde_yaml_ng::{Mapping, Value};
        let mut root: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let key = e
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column()))
                    .unwrap_or_else(|| "(document)".into());
                invalid(&key, e.to_string())
            })?
        };
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SWITCHYARD_") else {
                continue;
            };
            if NOT_KEYS.contains(&name.as_str()) {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            let parsed: Value =
                serde_yaml_ng::from_str(&value).unwrap_or(Value::String(value.clone()));
            set_path(&mut root, &keys, parsed)
                .map_err(|m| invalid(&format!("{name} ({})", keys.join(".")), m))?;
        }
        let cfg: Config = serde_path_to_error::deserialize(root).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(invalid(
                    "database.url",
                    "must start with sqlite:// or postgres://",
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if let Some(r) = &self.database.replica_url {
            let url = self.database.url.as_deref().unwrap_or("sqlite:");
            if url.starts_with("sqlite:") {
                return Err(invalid(
                    "database.replica_url",
                    "replicas need PostgreSQL: database.url is SQLite (the embedded default \
                     when unset); remove database.replica_url or set database.url to \
                     postgres://...",
                ));
            }
            if !(r.starts_with("postgres://") || r.starts_with("postgresql://")) {
                return Err(invalid(
                    "database.replica_url",
                    "must start with postgres://",
                ));
            }
            if r.contains(',') {
                return Err(invalid(
                    "database.replica_url",
                    "must name one host: this region's replica",
                ));
            }
        }
        for (key, v) in [
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
            (
                "database.max_replica_lag_ms",
                self.database.max_replica_lag_ms,
            ),
            (
                "database.read_your_writes_wait_ms",
                self.database.read_your_writes_wait_ms,
            ),
            ("database.position_wait_ms", self.database.position_wait_ms),
        ] {
            if !(1..=600_000).contains(&v) {
                return Err(invalid(key, "must be between 1 and 600000 (milliseconds)"));
            }
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid("public_url", "must be an http:// or https:// URL"));
            }
        }
        if self.secrets.master_key.is_some() && self.secrets.master_key_file.is_some() {
            return Err(invalid(
                "secrets",
                "set only one of master_key and master_key_file",
            ));
        }
        if let Some(k) = &self.secrets.master_key {
            shared::auth::MasterKey::from_base64(k)
                .map_err(|e| invalid("secrets.master_key", e.to_string()))?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be `text` or `json`"));
        }
        if self.storage.io_timeout_secs == 0 {
            return Err(invalid("storage.io_timeout_secs", "must be at least 1"));
        }
        if self.storage.staging_grace_secs == 0 {
            return Err(invalid("storage.staging_grace_secs", "must be at least 1"));
        }
        if !(1..=86_400).contains(&self.storage.session_completion_stale_secs) {
            return Err(invalid(
                "storage.session_completion_stale_secs",
                "must be between 1 and 86400",
            ));
        }
        if self.limits.max_json_body_bytes < 1024 {
            return Err(invalid(
                "limits.max_json_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid("region", "must be letters, digits and '-'"));
        }
        if let Some(l) = self.network.quic_listen {
            if l.ip().is_unspecified() && self.network.quic_advertise.is_none() {
                return Err(invalid(
                    "network.quic_advertise",
                    "required when network.quic_listen is a wildcard address: spokes need a \
                     host:port they can dial",
                ));
            }
        }
        for (key, value) in [
            ("network.quic_advertise", &self.network.quic_advertise),
            ("network.join_advertise", &self.network.join_advertise),
        ] {
            if let Some(a) = value {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
                if !ok {
                    return Err(invalid(key, "must be host:port"));
                }
            }
        }
        if self.network.heartbeat_ms < 50 {
            return Err(invalid("network.heartbeat_ms", "must be at least 50"));
        }
        if self.network.missed_heartbeats == 0 {
            return Err(invalid("network.missed_heartbeats", "must be at least 1"));
        }
        if self.network.spoke_cert_days == 0 {
            return Err(invalid("network.spoke_cert_days", "must be at least 1"));
        }
        if self.network.join_token_ttl_secs < 60 {
            return Err(invalid(
                "network.join_token_ttl_secs",
                "must be at least 60",
            ));
        }
        if self.offload.part_size < 5 << 20 {
            return Err(invalid(
                "offload.part_size",
                "must be at least 5 MiB (5242880), the S3 minimum part size",
            ));
        }
        if self.offload.part_concurrency == 0 || self.offload.max_jobs_per_spoke == 0 {
            return Err(invalid(
                "offload.part_concurrency",
                "part_concurrency and max_jobs_per_spoke must be at least 1",
            ));
        }
        if !(1..=16).contains(&self.offload.relay_connections) {
            return Err(invalid(
                "offload.relay_connections",
                "must be between 1 and 16",
            ));
        }
        // The spokes' QUIC idle timeout (see `network::transport`): a lease must outlast it.
        let idle_ms = (self.network.heartbeat_ms * (u64::from(self.network.missed_heartbeats) + 2))
            .max(5_000);
        if self.transfers.lease_ms <= idle_ms || self.transfers.lease_ms > 600_000 {
            return Err(invalid(
                "transfers.lease_ms",
                format!(
                    "must be above the spokes' QUIC idle timeout ({idle_ms} ms with these \
                     network settings) and at most 600000"
                ),
            ));
        }
        if self.transfers.failed_spoke_exclusion_secs > 86_400 {
            return Err(invalid(
                "transfers.failed_spoke_exclusion_secs",
                "must be at most 86400 (seconds a spoke that failed a transfer is kept away \
                 from it; 0 for none)",
            ));
        }
        if !(50..=60_000).contains(&self.transfers.scheduler_tick_ms) {
            return Err(invalid(
                "transfers.scheduler_tick_ms",
                "must be between 50 and 60000 (ms between the scheduler's passes)",
            ));
        }
        if !(1..=3650).contains(&self.events.retention_days) {
            return Err(invalid(
                "events.retention_days",
                "must be between 1 and 3650 (days an event is kept)",
            ));
        }
        let w = &self.webhooks;
        if w.timeout.0.is_zero() || w.timeout.0 > std::time::Duration::from_secs(300) {
            return Err(invalid("webhooks.timeout", "must be between 1ms and 300s"));
        }
        if w.retry_schedule.is_empty() || w.retry_schedule.len() > 100 {
            return Err(invalid(
                "webhooks.retry_schedule",
                "must list 1 to 100 durations",
            ));
        }
        if w.reconcile_every.0 < std::time::Duration::from_millis(10) {
            return Err(invalid("webhooks.reconcile_every", "must be at least 10ms"));
        }
        if w.requeue_after.0 <= w.timeout.0 {
            return Err(invalid(
                "webhooks.requeue_after",
                "must be longer than webhooks.timeout (a delivery in flight is not handed again)",
            ));
        }
        if w.coalesce.0 > std::time::Duration::from_secs(60) {
            return Err(invalid("webhooks.coalesce", "must be at most 60s"));
        }
        if w.disable_after.0.is_zero() {
            return Err(invalid("webhooks.disable_after", "must be above zero"));
        }
        if !(1..=10_000).contains(&w.concurrency) {
            return Err(invalid(
                "webhooks.concurrency",
                "must be between 1 and 10000",
            ));
        }
        if let Some(url) = &self.redis.url {
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(invalid(
                    "redis.url",
                    format!("is not a Redis URL ({:?})", e.kind()),
                ));
            }
        }
        if let Some(p) = &self.redis.key_prefix {
            if p.is_empty() || p.len() > 64 || !p.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid(
                    "redis.key_prefix",
                    "must be 1 to 64 printable ASCII characters without spaces",
                ));
            }
        }
        self.events
            .detect
            .validate()
            .map_err(|(k, m)| invalid(&k, m))?;
        self.budgets.validate().map_err(|(k, m)| invalid(&k, m))?;
        self.oauth.validate().map_err(|(k, m)| invalid(&k, m))?;
        crate::steering::dns::check_config(self).map_err(|(k, m)| invalid(&k, m))?;
        self.validate_tls()?;
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => return Err(invalid("tls.key_file", "required with tls.cert_file")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "required with tls.key_file")),
            _ => {}
        }
        if tls.handshake_timeout_secs == 0 {
            return Err(invalid("tls.handshake_timeout_secs", "must be at least 1"));
        }
        if tls.redirect_listen.is_some() && !tls.enabled() {
            return Err(invalid(
                "tls.redirect_listen",
                "needs HTTPS: set tls.cert_file and tls.key_file, or tls.acme",
            ));
        }
        if tls.enabled() {
            if let Some(u) = &self.public_url {
                if !u.starts_with("https://") {
                    return Err(invalid(
                        "public_url",
                        "must be an https:// URL when tls is configured",
                    ));
                }
            }
        }
        let Some(acme) = &tls.acme else {
            return Ok(());
        };
        if tls.cert_file.is_some() {
            return Err(invalid(
                "tls.acme",
                "set either tls.cert_file and tls.key_file, or tls.acme, not both",
            ));
        }
        if !acme.directory_url.starts_with("https://") {
            return Err(invalid("tls.acme.directory_url", "must be an https:// URL"));
        }
        if acme.directory_url.parse::<http::Uri>().is_err() {
            return Err(invalid("tls.acme.directory_url", "is not a valid URL"));
        }
        for c in &acme.contact {
            let email = c.strip_prefix("mailto:").unwrap_or(c);
            let ok = email
                .split_once('@')
                .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !d.contains('@'));
            if !ok
                || email
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(invalid(
                    "tls.acme.contact",
                    format!("`{c}` is not an email address"),
                ));
            }
        }
        if acme.renew_before.0.is_zero() {
            return Err(invalid("tls.acme.renew_before", "must be more than zero"));
        }
        match self.public_url.as_deref().map(url_host) {
            None => {
                return Err(invalid(
                    "public_url",
                    "required with tls.acme: its host is the name the certificate is issued for",
                ))
            }
            Some(None) => return Err(invalid("public_url", "has no host")),
            Some(Some(host)) => {
                if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
                    return Err(invalid(
                        "public_url",
                        "with tls.acme the host must be a DNS name, not an IP address",
                    ));
                }
            }
        }
        if acme.challenge == AcmeChallenge::Http01 && tls.redirect_listen.is_none() {
            return Err(invalid(
                "tls.redirect_listen",
                "required by tls.acme with the http-01 challenge: the ACME server fetches \
                 http://HOST/.well-known/acme-challenge/... from it (port 80)",
            ));
        }
        Ok(())
    }

    /// The DNS name ACME certificates are issued for: `public_url`'s host.
    pub fn acme_domain(&self) -> Option<String> {
        self.public_url
            .as_deref()
            .and_then(url_host)
            .map(|h| h.to_ascii_lowercase())
    }

    /// The `host:port` spokes dial, when the network is on.
    pub fn quic_advertise(&self) -> Option<String> {
        if let Some(a) = &self.network.quic_advertise {
            return Some(a.clone());
        }
        self.network.quic_listen.map(|l| l.to_string())
    }

    /// The database URL, defaulting to SQLite in the data dir.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("hub.db").display()))
    }

    /// The base URL clients use.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if self.tls.enabled() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            })
            .trim_end_matches('/')
            .to_owned()
    }
}

/// The host of an `http(s)://` URL, without port or brackets' contents checked.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

fn set_path(
    root: &mut serde_yaml_ng::Value,
    keys: &[String],
    value: serde_yaml_ng::Value,
) -> Result<(), String> {
    use serde_yaml_ng::{Mapping, Value};
    let (first, rest) = keys.split_first().ok_or("empty key")?;
    let Value::Mapping(map) = root else {
        return Err("cannot set a key below a non-mapping value".into());
    };
    let k = Value::String(first.clone());
    if rest.is_empty() {
        map.insert(k, value);
        return Ok(());
    }
    let child = map
        .entry(k)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if child.is_null() {
        *child = Value::Mapping(Mapping::new());
    }
    set_path(child, rest, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_env_overrides() {
        let c = Config::from_yaml(
            "listen: 127.0.0.1:9000\n",
            env(&[
                ("SWITCHYARD_DATABASE__MAX_CONNECTIONS", "4"),
                ("SWITCHYARD_STORAGE__FS__ALLOWED_ROOTS", "[/srv/a, /srv/b]"),
                ("SWITCHYARD_CONFIG", "ignored.yaml"),
                ("OTHER", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.database.max_connections, 4);
        assert_eq!(c.storage.fs.allowed_roots.len(), 2);
        assert!(c.database_url().starts_with("sqlite://"));
        assert_eq!(c.public_url(), "http://127.0.0.1:9000");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_yaml(
            "database:\n  replica_url: postgres://u@replica/db\n",
            env(&[]),
        )
        .expect_err("a replica with SQLite");
        assert!(e.to_string().contains("database.replica_url"), "{e}");
        assert!(e.to_string().contains("SQLite"), "{e}");
        let e = Config::from_yaml(
            "database:\n  url: postgres://u@a/db\n  replica_url: postgres://u@b,c/db\n",
            env(&[]),
        )
        .expect_err("two replica hosts");
        assert!(e.to_string().contains("database.replica_url"), "{e}");
        let e = Config::from_yaml(
            "database:\n  url: postgres://u@a/db\n  acquire_timeout_ms: 0\n",
            env(&[]),
        )
        .expect_err("a zero timeout");
        assert!(e.to_string().contains("database.acquire_timeout_ms"), "{e}");
        let e = Config::from_yaml("database:\n  max_connections: lots\n", env(&[]))
            .expect_err("invalid");
        assert!(e.to_string().contains("database.max_connections"), "{e}");
        let e = Config::from_yaml("storage:\n  fss: {}\n", env(&[])).expect_err("unknown key");
        assert!(e.to_string().contains("storage"), "{e}");
        let e = Config::from_yaml("", env(&[("SWITCHYARD_DATABASE__URL", "mysql://x")]))
            .expect_err("bad url");
        assert!(e.to_string().contains("database.url"), "{e}");
        let e =
            Config::from_yaml("secrets:\n  master_key: short\n", env(&[])).expect_err("bad key");
        assert!(e.to_string().contains("secrets.master_key"), "{e}");
    }

    #[test]
    fn transfer_leases_are_checked() {
        let c = Config::from_yaml("", env(&[])).expect("defaults");
        assert_eq!(c.transfers.lease_ms, 10_000);
        assert_eq!(c.events.retention_days, 7);
        for bad in ["0", "3651", "-1", "x"] {
            let e = Config::from_yaml(&format!("events:\n  retention_days: {bad}\n"), env(&[]))
                .expect_err(bad);
            assert!(
                e.to_string().contains("events.retention_days"),
                "{bad}: {e}"
            );
        }
        // Detector intervals per service; errors name the key.
        let c = Config::from_yaml(
            "events:\n  detect:\n    interval_ms: 5000\n    services:\n      s3:\n        interval_ms: 200\n",
            env(&[]),
        )
        .expect("detect");
        assert_eq!(c.events.detect.interval("s3").as_millis(), 200);
        assert_eq!(c.events.detect.interval("webdav").as_millis(), 5000);
        assert_eq!(
            c.events
                .detect
                .delta_endpoints("dropbox")
                .expect("dropbox")
                .api
                .as_str(),
            "https://api.dropboxapi.com/2"
        );
        assert_eq!(c.events.detect.delta_endpoints("s3"), None);
        let c = Config::from_yaml(
            "events:\n  detect:\n    services:\n      onedrive:\n        api_url: http://127.0.0.1:9/v1.0/\n",
            env(&[]),
        )
        .expect("onedrive endpoint");
        let e = c
            .events
            .detect
            .delta_endpoints("onedrive")
            .expect("onedrive");
        assert_eq!(e.api.as_str(), "http://127.0.0.1:9/v1.0");
        assert_eq!(c.events.detect.interval("onedrive").as_millis(), 60_000);
        for (yaml, key) in [
            (
                "events:\n  detect:\n    interval_ms: 5\n",
                "events.detect.interval_ms",
            ),
            (
                "events:\n  detect:\n    services:\n      s4:\n        interval_ms: 500\n",
                "events.detect.services.s4",
            ),
            (
                "events:\n  detect:\n    services:\n      sftp:\n        interval_ms: 1\n",
                "events.detect.services.sftp.interval_ms",
            ),
            (
                "events:\n  detect:\n    lease_ms: 10\n",
                "events.detect.lease_ms",
            ),
            (
                "events:\n  detect:\n    concurrency: 0\n",
                "events.detect.concurrency",
            ),
            ("events:\n  detect:\n    max_accounts: 10\n", "max_accounts"),
            (
                "events:\n  detect:\n    services:\n      s3:\n        api_url: http://x\n",
                "events.detect.services.s3.api_url",
            ),
            (
                "events:\n  detect:\n    services:\n      dropbox:\n        token_url: ftp://x/t\n",
                "events.detect.services.dropbox.token_url",
            ),
            (
                "events:\n  detect:\n    services:\n      gdrive:\n        api_url: https://u:p@x/v3\n",
                "events.detect.services.gdrive.api_url",
            ),
            (
                "transfers:\n  scheduler_tick_ms: 10\n",
                "transfers.scheduler_tick_ms",
            ),
            (
                "transfers:\n  scheduler_tick_ms: 60001\n",
                "transfers.scheduler_tick_ms",
            ),
        ] {
            let e = Config::from_yaml(yaml, env(&[]))
                .expect_err(yaml)
                .to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let c = Config::from_yaml("events:\n  retention_days: 30\n", env(&[])).expect("30");
        assert_eq!(
            c.events.retention(),
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert_eq!(c.transfers.renew_every().as_millis(), 3_333);
        assert_eq!(
            c.transfers.failed_spoke_exclusion(),
            std::time::Duration::from_secs(300)
        );
        assert_eq!(c.transfers.scheduler_tick().as_millis(), 500);
        let c = Config::from_yaml("transfers:\n  lease_ms: 6000\n", env(&[])).expect("6 s");
        assert_eq!(c.transfers.lease(), std::time::Duration::from_secs(6));
        let c = Config::from_yaml("transfers:\n  failed_spoke_exclusion_secs: 0\n", env(&[]))
            .expect("no exclusion");
        assert_eq!(c.transfers.failed_spoke_exclusion_secs, 0);
        let e = Config::from_yaml(
            "transfers:\n  failed_spoke_exclusion_secs: 86401\n",
            env(&[]),
        )
        .expect_err("a day at most");
        assert!(
            e.to_string()
                .contains("transfers.failed_spoke_exclusion_secs"),
            "{e}"
        );
        for bad in ["0", "5000", "600001"] {
            let e = Config::from_yaml(&format!("transfers:\n  lease_ms: {bad}\n"), env(&[]))
                .expect_err(bad);
            assert!(e.to_string().contains("transfers.lease_ms"), "{e}");
        }
        // Slower heartbeats make a longer idle timeout, which the lease must outlast.
        let e = Config::from_yaml(
            "network:\n  heartbeat_ms: 3000\ntransfers:\n  lease_ms: 12000\n",
            env(&[]),
        )
        .expect_err("lease inside the idle timeout");
        assert!(e.to_string().contains("15000 ms"), "{e}");
        let e = Config::from_yaml("transfers:\n  lease: 1\n", env(&[])).expect_err("unknown");
        assert!(e.to_string().contains("lease"), "{e}");
    }

    #[test]
    fn network_and_offload_are_checked() {
        let e = Config::from_yaml("network:\n  quic_listen: 0.0.0.0:7443\n", env(&[]))
            .expect_err("wildcard without advertise");
        assert!(e.to_string().contains("network.quic_advertise"), "{e}");
        let c = Config::from_yaml(
            "network:\n  quic_listen: 0.0.0.0:7443\n  quic_advertise: hub.example.net:7443\n",
            env(&[]),
        )
        .expect("valid");
        assert_eq!(c.quic_advertise().as_deref(), Some("hub.example.net:7443"));
        let e = Config::from_yaml("network:\n  quic_advertise: nope\n", env(&[]))
            .expect_err("not host:port");
        assert!(e.to_string().contains("network.quic_advertise"), "{e}");
        let e = Config::from_yaml("network:\n  join_advertise: lb.example.net\n", env(&[]))
            .expect_err("not host:port");
        assert!(e.to_string().contains("network.join_advertise"), "{e}");
        let e =
            Config::from_yaml("offload:\n  part_size: 1024\n", env(&[])).expect_err("tiny parts");
        assert!(e.to_string().contains("offload.part_size"), "{e}");
        let e = Config::from_yaml("offload:\n  congestion: vegas\n", env(&[]))
            .expect_err("unknown controller");
        assert!(e.to_string().contains("offload.congestion"), "{e}");
        let c = Config::from_yaml("offload:\n  congestion: bbr\n", env(&[])).expect("bbr");
        assert_eq!(c.offload.congestion, shared::quic::Congestion::Bbr);
        assert_eq!(c.offload.relay_connections, 4);
        for bad in ["0", "17"] {
            let e = Config::from_yaml(&format!("offload:\n  relay_connections: {bad}\n"), env(&[]))
                .expect_err("out of range");
            assert!(e.to_string().contains("offload.relay_connections"), "{e}");
        }
        let c = Config::from_yaml("network:\n  quic_listen: null\n", env(&[])).expect("off");
        assert_eq!(c.quic_advertise(), None);
    }

    #[test]
    fn tls_is_checked() {
        let e = Config::from_yaml("tls:\n  cert_file: /a.pem\n", env(&[])).expect_err("no key");
        assert!(e.to_string().contains("tls.key_file"), "{e}");
        let c = Config::from_yaml(
            "listen: 127.0.0.1:8443\n",
            env(&[
                ("SWITCHYARD_TLS__CERT_FILE", "/a.pem"),
                ("SWITCHYARD_TLS__KEY_FILE", "/a.key"),
            ]),
        )
        .expect("env sets tls");
        assert!(c.tls.enabled());
        assert_eq!(c.public_url(), "https://127.0.0.1:8443", "HTTPS by default");
        let e = Config::from_yaml(
            "public_url: http://h.example\ntls: {cert_file: /a, key_file: /b}\n",
            env(&[]),
        )
        .expect_err("http public url with tls");
        assert!(e.to_string().contains("public_url"), "{e}");
        let e = Config::from_yaml("tls:\n  redirect_listen: 0.0.0.0:80\n", env(&[]))
            .expect_err("redirect without tls");
        assert!(e.to_string().contains("tls.redirect_listen"), "{e}");
        let acme = "tls:\n  redirect_listen: 127.0.0.1:80\n  acme:\n    directory_url: https://ca.example/dir\n";
        let e = Config::from_yaml(acme, env(&[])).expect_err("no public_url");
        assert!(e.to_string().contains("public_url"), "{e}");
        let e = Config::from_yaml(&format!("public_url: https://192.0.2.1\n{acme}"), env(&[]))
            .expect_err("IP host");
        assert!(e.to_string().contains("public_url"), "{e}");
        let c = Config::from_yaml(
            &format!("public_url: https://Api.Example.com:8443/\n{acme}"),
            env(&[]),
        )
        .expect("valid acme");
        assert_eq!(c.acme_domain().as_deref(), Some("api.example.com"));
        let a = c.tls.acme.expect("acme");
        assert_eq!(a.renew_before.0.as_secs(), 30 * 86_400);
        assert_eq!(a.challenge, AcmeChallenge::Http01);
        for (yaml, key) in [
            ("    renew_before: 12x\n", "tls.acme.renew_before"),
            ("    renew_before: 0\n", "tls.acme.renew_before"),
            ("    contact: [nobody]\n", "tls.acme.contact"),
            ("    challenge: dns-01\n", "tls.acme.challenge"),
        ] {
            let e = Config::from_yaml(
                &format!("public_url: https://a.example\n{acme}{yaml}"),
                env(&[]),
            )
            .expect_err(yaml);
            assert!(e.to_string().contains(key), "{yaml}: {e}");
        }
        let c = Config::from_yaml(
            &format!("public_url: https://a.example\n{acme}    renew_before: 12h\n"),
            env(&[]),
        )
        .expect("hours");
        assert_eq!(
            c.tls.acme.expect("acme").renew_before.0.as_secs(),
            12 * 3600
        );
        let e = Config::from_yaml(
            &format!("public_url: https://a.example\n{acme}  cert_file: /a\n  key_file: /b\n"),
            env(&[]),
        )
        .expect_err("both");
        assert!(e.to_string().contains("tls.acme"), "{e}");
        let e = Config::from_yaml(
            "public_url: https://a.example\ntls:\n  acme:\n    directory_url: https://ca.example/dir\n",
            env(&[]),
        )
        .expect_err("http-01 needs the redirect listener");
        assert!(e.to_string().contains("tls.redirect_listen"), "{e}");
    }

    #[test]
    fn budgets_override_defaults_and_are_checked() {
        let c = Config::from_yaml(
            "budgets:\n  services:\n    webdav: {rate: 2.5}\n    dropbox: {rate: 0}\n  api_max_wait: 500ms\n",
            env(&[]),
        )
        .expect("valid");
        let s = c.budgets.settings();
        assert_eq!(s.limit("webdav"), shared::budget::Limit::per_second(2.5, 3));
        assert!(s.limit("dropbox").is_unlimited());
        assert_eq!(
            s.limit("s3"),
            shared::budget::BudgetSettings::default().limit("s3")
        );
        assert_eq!(s.api_max_wait_ms, 500);
        for (yaml, key) in [
            (
                "budgets:\n  services:\n    nope: {rate: 1}\n",
                "budgets.services.nope",
            ),
            (
                "budgets:\n  services:\n    fs: {rate: 1}\n",
                "budgets.services.fs",
            ),
            (
                "budgets:\n  services:\n    s3: {rate: -1}\n",
                "budgets.services.s3.rate",
            ),
            (
                "budgets:\n  services:\n    s3: {rate: 1, burst: 0}\n",
                "budgets.services.s3.burst",
            ),
            ("budgets:\n  api_max_wait: 5m\n", "budgets.api_max_wait"),
            ("budgets:\n  max_cool_down: 2d\n", "budgets.max_cool_down"),
        ] {
            let e = Config::from_yaml(yaml, env(&[])).expect_err(yaml);
            assert!(e.to_string().contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn webhook_and_redis_settings_are_checked() {
        let c = Config::from_yaml("", env(&[])).expect("defaults");
        let secs: Vec<u64> = c
            .webhooks
            .retry_schedule
            .iter()
            .map(|d| d.0.as_secs())
            .collect();
        assert_eq!(
            secs,
            [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
        );
        assert_eq!(c.webhooks.timeout.0, std::time::Duration::from_secs(10));
        assert_eq!(
            c.webhooks.disable_after.0,
            std::time::Duration::from_secs(5 * 86_400)
        );
        assert_eq!(c.webhooks.coalesce.0, std::time::Duration::from_millis(100));
        assert!(c.redis.url.is_none());
        let c = Config::from_yaml(
            "webhooks:\n  retry_schedule: [0ms, 250ms, 2m]\n  timeout: 1500ms\n",
            env(&[]),
        )
        .expect("ms durations");
        assert_eq!(
            c.webhooks.retry_schedule[1].0,
            std::time::Duration::from_millis(250)
        );
        for (yaml, key) in [
            (
                "webhooks:\n  retry_schedule: []\n",
                "webhooks.retry_schedule",
            ),
            ("webhooks:\n  timeout: 0\n", "webhooks.timeout"),
            ("webhooks:\n  requeue_after: 5s\n", "webhooks.requeue_after"),
            ("webhooks:\n  concurrency: 0\n", "webhooks.concurrency"),
            ("webhooks:\n  coalesce: 2m\n", "webhooks.coalesce"),
            (
                "webhooks:\n  reconcile_every: 1ms\n",
                "webhooks.reconcile_every",
            ),
            ("redis:\n  url: \"http://x\"\n", "redis.url"),
            (
                "redis:\n  url: \"redis://:s3cret@h:6379/\"\n  key_prefix: \"a b\"\n",
                "redis.key_prefix",
            ),
        ] {
            let e = Config::from_yaml(yaml, env(&[])).expect_err(yaml);
            assert!(e.to_string().contains(key), "{yaml}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let e = Config::from_yaml("redis:\n  url: \"rediss//:s3cret@h\"\n", env(&[]))
            .expect_err("bad url");
        assert!(
            !e.to_string().contains("s3cret"),
            "the password leaked: {e}"
        );
    }
}
