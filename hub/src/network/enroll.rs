//! Spoke enrollment: single-use, expiring join tokens (stored hashed) and the exchange that
//! turns a token and a CSR into a signed certificate and a registry entry.

use crate::db::JoinTokenRecord;
use crate::state::{now_ms, AppState};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::ExposeSecret as _;
use shared::auth::{ct_eq, generate_token, hash_token};
use shared::join::JoinString;
use shared::proto::{EnrollRequest, Enrolled, HubInfo, Redacted, SpokeSettings};
use std::time::Duration;

/// A refused enrollment: a stable code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// Failed enrollments one source address may make per [`THROTTLE_WINDOW`] before it is
/// refused without its token being looked at.
const THROTTLE_FAILURES: u32 = 10;
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses the throttle remembers (beyond it, expired entries go, then all).
const THROTTLE_SOURCES: usize = 10_000;

/// Failed enrollment attempts per source address (IPv6 by /64): guessing join tokens costs a
/// window per [`THROTTLE_FAILURES`] tries, and a flood of failures logs one warning per source
/// and window instead of a line per attempt.
#[derive(Debug, Default)]
pub struct Throttle {
    sources:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

impl Throttle {
    fn key(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// True when `ip` has used up its failures for the current window.
    pub fn blocked(&self, ip: std::net::IpAddr) -> bool {
        let map = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&Self::key(ip))
            .is_some_and(|(since, n)| since.elapsed() < THROTTLE_WINDOW && *n >= THROTTLE_FAILURES)
    }

    /// Counts a failure of `ip`; true when this one used up its window (time to warn).
    pub fn failed(&self, ip: std::net::IpAddr) -> bool {
        let mut map = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= THROTTLE_SOURCES {
            map.retain(|_, (since, _)| since.elapsed() < THROTTLE_WINDOW);
            if map.len() >= THROTTLE_SOURCES {
                map.clear();
            }
        }
        let entry = map
            .entry(Self::key(ip))
            .or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= THROTTLE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 == THROTTLE_FAILURES
    }
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Checks a region or spoke name: letters, digits, `-`, `_`, `.`, 1–63 characters.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Creates a join token; returns the stored record and the join string (shown once).
pub async fn create_token(
    state: &AppState,
    region: &str,
    name: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<(JoinTokenRecord, String)> {
    anyhow::ensure!(
        valid_label(region),
        "region must be 1-63 letters, digits, '-', '_' or '.'"
    );
    if let Some(n) = name {
        anyhow::ensure!(
            valid_label(n),
            "name must be 1-63 letters, digits, '-', '_' or '.'"
        );
    }
    let quic = quic_endpoint(state).await?;
    let mut raw = [0u8; 9];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = format!("jt_{}", URL_SAFE_NO_PAD.encode(raw));
    let secret = generate_token("js_");
    let now = now_ms();
    let record = JoinTokenRecord {
        id: id.clone(),
        secret_hash: hash_token(secret.expose_secret()).to_vec(),
        region: region.to_owned(),
        name: name.map(str::to_owned),
        expires_ms: now + ttl.as_millis() as i64,
        used_ms: None,
        spoke_id: None,
        created_ms: now,
    };
    state.db.create_join_token(&record).await?;
    let join = JoinString {
        token_id: id,
        secret: Redacted(secret.expose_secret().to_owned()),
        hub_url: state.config.public_url(),
        quic,
        ca_fingerprint: state.network.ca_fingerprint.clone(),
    };
    Ok((record, join.encode()))
}

/// The QUIC endpoint a join string names: the running endpoint, else the configured one, else
/// (for the CLI, which runs beside the hub) what a hub of this region announced.
async fn quic_endpoint(state: &AppState) -> anyhow::Result<String> {
    if let Some(a) = state.network.advertise() {
        return Ok(a.to_owned());
    }
    anyhow::ensure!(
        state.config.network.quic_listen.is_some(),
        "the spoke network is off on this hub (network.quic_listen is null)"
    );
    if let Some(a) = state.config.quic_advertise() {
        let usable = match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => !sa.ip().is_unspecified() && sa.port() != 0,
            Err(_) => true,
        };
        if usable {
            return Ok(a);
        }
    }
    state
        .db
        .list_hubs(now_ms() - 86_400_000)
        .await?
        .into_iter()
        .find(|h| h.region == state.config.region)
        .map(|h| h.quic)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no QUIC endpoint known: set network.quic_advertise, or start the hub once so it \
                 announces its endpoint"
            )
        })
}

/// The settings every spoke of this hub gets.
pub fn spoke_settings(state: &AppState) -> SpokeSettings {
    SpokeSettings {
        heartbeat_ms: state.config.network.heartbeat_ms,
        max_jobs: state.config.offload.max_jobs_per_spoke,
        part_concurrency: state.config.offload.part_concurrency,
        rate_limit: state.config.offload.spoke_rate_limit,
        congestion: state.config.offload.congestion,
        egress: shared::proto::EgressSettings {
            allow_private: state.config.storage.allow_private_endpoints,
            allowed: state.config.storage.allowed_private_endpoints.clone(),
        },
    }
}

/// The hubs a spoke should dial (seen in the last day), this one first.
pub async fn hub_list(state: &AppState) -> anyhow::Result<Vec<HubInfo>> {
    let mine = state.network.advertise().unwrap_or_default().to_owned();
    let mut hubs: Vec<HubInfo> = state
        .db
        .list_hubs(now_ms() - 86_400_000)
        .await?
        .into_iter()
        .map(|h| HubInfo {
            region: h.region,
            quic: h.quic,
            api: h.api,
        })
        .collect();
    hubs.sort_by_key(|h| h.quic != mine);
    Ok(hubs)
}

/// Runs one enrollment. The token is checked (secret in constant time), then consumed with a
/// single conditional UPDATE so that only one of any number of concurrent attempts wins.
pub async fn enroll(state: &AppState, req: &EnrollRequest) -> Result<Enrolled, Refusal> {
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "enrollment failed");
        refuse(
            "internal",
            "the hub could not complete the enrollment; see its log",
        )
    };
    let now = now_ms();
    let token = state
        .db
        .get_join_token(&req.token_id)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| {
            refuse(
                "unknown_token",
                "this join token does not exist on this network",
            )
        })?;
    let offered = hash_token(&req.secret.0);
    if !ct_eq(&offered, &token.secret_hash) {
        return Err(refuse(
            "unknown_token",
            "this join token does not exist on this network",
        ));
    }
    if token.used_ms.is_some() {
        return Err(refuse(
            "token_used",
            "this join token was already used; create a new one with `hub spokes token create`",
        ));
    }
    if token.expires_ms <= now {
        return Err(refuse(
            "token_expired",
            "this join token has expired; create a new one with `hub spokes token create`",
        ));
    }
    if let Some(name) = &req.name {
        if !valid_label(name) {
            return Err(refuse(
                "bad_request",
                "the spoke name must be 1-63 letters, digits, '-', '_' or '.'",
            ));
        }
    }
    let advertise_host =
        match &req.advertise {
            Some(a) => Some(parse_advertise(a).ok_or_else(|| {
                refuse("bad_request", format!("--advertise {a:?} is not host:port"))
            })?),
            None => None,
        };
    if let Some(host) = &advertise_host {
        if let Some(why) = hub_name_collision(state, host).await {
            return Err(refuse(
                "bad_request",
                format!("--advertise {host:?} is not available to a spoke: {why}"),
            ));
        }
    }
    // Check the CSR before burning the token.
    if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
        return Err(refuse(
            "bad_request",
            "the certificate request does not parse",
        ));
    }
    if !state
        .db
        .consume_join_token(&token.id, now)
        .await
        .map_err(|e| internal(&e))?
    {
        return Err(refuse(
            "token_used",
            "this join token was already used; create a new one with `hub spokes token create`",
        ));
    }
    let name = req
        .name
        .clone()
        .or(token.name.clone())
        .unwrap_or_else(|| format!("spoke-{}", &token.id[3..]));
    let spoke_id = state
        .db
        .create_spoke(
            &name,
            &token.region,
            &format!("pending:{}", token.id),
            req.advertise.as_deref(),
            now,
        )
        .await
        .map_err(|e| internal(&e))?;
    let lifetime = Duration::from_secs(state.config.network.spoke_cert_days * 86_400);
    let cert_pem = state
        .network
        .spoke_ca
        .sign_spoke_csr(&req.csr_pem, spoke_id, advertise_host.as_deref(), lifetime)
        .map_err(|e| refuse("bad_request", e.to_string()))?;
    let fp = shared::pki::fingerprint_pem(&cert_pem).map_err(|e| internal(&e))?;
    state
        .db
        .set_spoke_fingerprint(spoke_id, &fp)
        .await
        .map_err(|e| internal(&e))?;
    state
        .db
        .set_join_token_spoke(&token.id, spoke_id)
        .await
        .map_err(|e| internal(&e))?;
    let hubs = hub_list(state).await.map_err(|e| internal(&e))?;
    tracing::info!(spoke_id, %name, region = %token.region, "spoke enrolled");
    Ok(Enrolled {
        spoke_id,
        name,
        region: token.region,
        cert_pem,
        ca_pem: state.network.spoke_ca.cert_pem.clone(),
        hub_ca_pem: state.network.ca.cert_pem.clone(),
        hubs,
        settings: spoke_settings(state),
    })
}

/// Why a spoke may not advertise (and so carry in its certificate) the DNS name `host`, if
/// it may not: the network's internal names, the steered API names, and every name a hub is
/// known by (its configured certificate names, its public URL, the API and QUIC addresses
/// hubs announce). IP addresses are not refused: hub and spoke may share a host, and no hub
/// identity rests on an IP address in a spoke's certificate (spoke certificates come from the
/// spoke CA, which nothing trusts for a hub).
async fn hub_name_collision(state: &AppState, host: &str) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let norm = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
    let host = norm(host);
    let under = |zone: &str| {
        let zone = norm(zone);
        !zone.is_empty() && (host == zone || host.ends_with(&format!(".{zone}")))
    };
    if under(
        shared::pki::HUB_SERVER_NAME
            .split_once('.')
            .map_or("", |(_, d)| d),
    ) {
        return Some("names under the network's internal domain belong to hubs".into());
    }
    if under(&format!("api.{}", state.config.dns.zone)) {
        return Some("it is one of the hubs' steered API names".into());
    }
    let url_host = |u: &str| {
        reqwest::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(|h| norm(h.trim_matches(['[', ']']))))
    };
    let mut hub_names: Vec<String> = state.config.network.names.iter().map(|n| norm(n)).collect();
    hub_names.extend(url_host(&state.config.public_url()));
    match hub_list(state).await {
        Ok(hubs) => {
            for h in hubs {
                hub_names.extend(url_host(&h.api));
                hub_names.extend(parse_advertise(&h.quic).map(|q| norm(&q)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the hub list to check an advertised name");
            return Some("the hub list could not be read to check it; try again".into());
        }
    }
    hub_names
        .contains(&host)
        .then(|| "a hub is known by that name".into())
}

/// The host part of `host:port` (IPv6 in brackets), when well-formed.
fn parse_advertise(a: &str) -> Option<String> {
    if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_string());
    }
    let (host, port) = a.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return None;
    }
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_advertise_addresses() {
        for ok in ["eu-west", "us_east.1", "a"] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in ["", "has space", "ünï", &"x".repeat(64), "a/b"] {
            assert!(!valid_label(bad), "{bad}");
        }
        assert_eq!(
            parse_advertise("10.0.0.5:9443").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(parse_advertise("[::1]:9443").as_deref(), Some("::1"));
        assert_eq!(
            parse_advertise("spoke1.example.net:443").as_deref(),
            Some("spoke1.example.net")
        );
        for bad in ["spoke1", "host:port", ":443", "a b:1", "h:99999"] {
            assert_eq!(parse_advertise(bad), None, "{bad}");
        }
    }
}
