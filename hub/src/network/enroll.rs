//! Spoke enrollment: expiring, revocable join tokens with a use limit (stored hashed) and the
//! exchange that turns a token and a CSR into a signed certificate and a registry entry.

use crate::db::{JoinTokenRecord, TokenSpent};
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

/// The most spokes one join token may enroll.
pub const MAX_USES: u32 = 10_000;

/// Creates a join token good for `uses` enrollments (1 to [`MAX_USES`]); returns the stored
/// record and the join string (shown once).
pub async fn create_token(
    state: &AppState,
    region: &str,
    name: Option<&str>,
    ttl: Duration,
    uses: u32,
) -> anyhow::Result<(JoinTokenRecord, String)> {
    anyhow::ensure!(
        valid_label(region),
        "region must be 1-63 letters, digits, '-', '_' or '.'"
    );
    anyhow::ensure!(
        (1..=MAX_USES).contains(&uses),
        "uses must be between 1 and {MAX_USES}"
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
        max_uses: i64::from(uses),
        uses: 0,
        revoked_ms: None,
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

/// The QUIC endpoint a join string names: `network.join_advertise` (a load balancer in front of
/// the region's hubs), else the running endpoint, else the configured one, else (for the CLI,
/// which runs beside the hub) what a hub of this region announced.
async fn quic_endpoint(state: &AppState) -> anyhow::Result<String> {
    if let Some(a) = &state.config.network.join_advertise {
        return Ok(a.clone());
    }
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
        relay_connections: state.config.offload.relay_connections,
        egress: shared::proto::EgressSettings {
            allow_private: state.config.storage.allow_private_endpoints,
            allowed: state.config.storage.allowed_private_endpoints.clone(),
        },
        budgets: state.config.budgets.settings(),
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

/// The refusal of a token that takes no further use. Each names the token's state first
/// ("join token exhausted"), which `spoke enroll` prints as it is.
fn spent_refusal(why: TokenSpent, token: &JoinTokenRecord) -> Refusal {
    match why {
        TokenSpent::Revoked => refuse(
            "token_revoked",
            "join token revoked: an operator revoked this token; create a new one with \
             `hub spokes token create`",
        ),
        TokenSpent::Expired => refuse(
            "token_expired",
            "join token expired: create a new one with `hub spokes token create`",
        ),
        TokenSpent::Exhausted if token.max_uses == 1 => refuse(
            "token_exhausted",
            "join token exhausted: this single-use token was already used; create a new one \
             with `hub spokes token create`",
        ),
        TokenSpent::Exhausted => refuse(
            "token_exhausted",
            format!(
                "join token exhausted: all {} uses of this token are taken; create a new one \
                 with `hub spokes token create --uses N`",
                token.max_uses
            ),
        ),
    }
}

/// The names an enrollment tries for its spoke, in order, until one is free among the
/// unrevoked spokes: the name the spoke asked for, else the token's name (a single-use
/// token's spoke takes it as it is, every use of a reusable one gets `-<use>`), else
/// `spoke-<token>`; then `<that>-<use>`, then with a random tag from `tags` (two tokens
/// of one name, a use given back and taken again). Every candidate is at most 63
/// characters.
fn name_candidates(
    requested: Option<&str>,
    token: &JoinTokenRecord,
    use_no: i64,
    tags: &[String],
) -> Vec<String> {
    let default = format!("spoke-{}", token.id.trim_start_matches("jt_"));
    let base = requested.or(token.name.as_deref()).unwrap_or(&default);
    let with = |suffix: &str| {
        // Labels are ASCII, so any byte index is a character boundary.
        let keep = base.len().min(63 - suffix.len());
        format!("{}{suffix}", &base[..keep])
    };
    let mut names = Vec::with_capacity(2 + tags.len());
    if requested.is_some() || token.max_uses == 1 {
        names.push(base.to_owned());
    }
    names.push(with(&format!("-{use_no}")));
    for t in tags {
        names.push(with(&format!("-{use_no}-{t}")));
    }
    names
}

/// Runs one enrollment. The token is checked (secret in constant time; a wrong secret and an
/// unknown id get the same answer), then one of its uses is taken with a single conditional
/// UPDATE, so that of any number of concurrent attempts at most the token's `max_uses` win.
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
    // Only a caller holding the secret learns the token's state.
    if let Some(why) = token.spent(now) {
        return Err(spent_refusal(why, &token));
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
    // Everything that can be checked is checked before a use is taken: the CSR (parsing
    // verifies its signature, so a CSR that parses is one the CA signs) and the hub list.
    if rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem).is_err() {
        return Err(refuse(
            "bad_request",
            "the certificate request does not parse",
        ));
    }
    let hubs = hub_list(state).await.map_err(|e| internal(&e))?;
    let Some(use_no) = state
        .db
        .take_join_token_use(&token.id, now)
        .await
        .map_err(|e| internal(&e))?
    else {
        // Another enrollment took the last use, or the token was revoked since we read it:
        // say which from a fresh read.
        let fresh = state
            .db
            .get_join_token(&token.id)
            .await
            .map_err(|e| internal(&e))?
            .unwrap_or(token);
        let why = fresh.spent(now).unwrap_or(TokenSpent::Exhausted);
        return Err(spent_refusal(why, &fresh));
    };
    match issue(state, req, &token, use_no, advertise_host.as_deref(), now).await {
        Ok((spoke_id, name, cert_pem)) => {
            tracing::info!(spoke_id, %name, region = %token.region, token = %token.id,
                use_no, max_uses = token.max_uses, "spoke enrolled");
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
        Err(refusal) => {
            // The use is given back: this enrollment failed before any certificate left the
            // hub, so no identity came of it, and counting it would let failing instances (a
            // broken image, a database hiccup) use up an autoscaling group's token without a
            // single spoke joining. What the limit bounds still holds: at most `max_uses`
            // certificates are ever issued with the token. Once a certificate is recorded its
            // use stays spent, even if the answer then never reaches the spoke.
            match state.db.return_join_token_use(&token.id).await {
                Ok(_) => tracing::warn!(token = %token.id, code = refusal.code,
                    "an enrollment failed after taking a use of its join token; the use was \
                     given back"),
                Err(e) => tracing::error!(token = %token.id, error = %e,
                    "an enrollment failed after taking a use of its join token and the use \
                     could not be given back: the token has one use fewer"),
            }
            Err(refusal)
        }
    }
}

/// The part of an enrollment after its use was taken: the spoke row under a free name, the
/// certificate, the fingerprint. On failure no certificate has left the hub and the spoke
/// row is gone again.
async fn issue(
    state: &AppState,
    req: &EnrollRequest,
    token: &JoinTokenRecord,
    use_no: i64,
    advertise_host: Option<&str>,
    now: i64,
) -> Result<(i64, String, String), Refusal> {
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, token = %token.id, "enrollment failed");
        refuse(
            "internal",
            "the hub could not complete the enrollment; see its log",
        )
    };
    let tags: Vec<String> = (0..3)
        .map(|_| {
            let mut b = [0u8; 2];
            rand::rngs::OsRng.fill_bytes(&mut b);
            hex::encode(b)
        })
        .collect();
    // Unique per row, so concurrent uses of one token do not meet on the fingerprint column.
    let mut tag = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut tag);
    let placeholder = format!("pending:{}:{}", token.id, hex::encode(tag));
    let mut created = None;
    for name in name_candidates(req.name.as_deref(), token, use_no, &tags) {
        if let Some(id) = state
            .db
            .create_spoke(
                &name,
                &token.region,
                &placeholder,
                req.advertise.as_deref(),
                &token.id,
                now,
            )
            .await
            .map_err(|e| internal(&e))?
        {
            created = Some((id, name));
            break;
        }
    }
    let Some((spoke_id, name)) = created else {
        return Err(refuse(
            "bad_request",
            "no free spoke name was found; enroll with another --name",
        ));
    };
    let signed = async {
        let lifetime = Duration::from_secs(state.config.network.spoke_cert_days * 86_400);
        let cert_pem = state
            .network
            .spoke_ca
            .sign_spoke_csr(&req.csr_pem, spoke_id, advertise_host, lifetime)
            .map_err(|e| refuse("bad_request", e.to_string()))?;
        let fp = shared::pki::fingerprint_pem(&cert_pem).map_err(|e| internal(&e))?;
        let not_after = shared::pki::certs(&cert_pem)
            .ok()
            .and_then(|c| c.first().and_then(|der| super::cert_not_after_ms(der)));
        state
            .db
            .set_spoke_certificate(spoke_id, &fp, not_after)
            .await
            .map_err(|e| internal(&e))?;
        Ok(cert_pem)
    }
    .await;
    match signed {
        Ok(cert_pem) => Ok((spoke_id, name, cert_pem)),
        Err(r) => {
            if let Err(e) = state.db.delete_pending_spoke(spoke_id).await {
                tracing::error!(spoke_id, error = %e, "could not delete a failed enrollment's spoke row");
            }
            Err(r)
        }
    }
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

    fn token(name: Option<&str>, max_uses: i64) -> JoinTokenRecord {
        JoinTokenRecord {
            id: "jt_abcdefghijkl".into(),
            secret_hash: Vec::new(),
            region: "eu".into(),
            name: name.map(str::to_owned),
            expires_ms: 1_000,
            used_ms: None,
            spoke_id: None,
            created_ms: 0,
            max_uses,
            uses: 0,
            revoked_ms: None,
        }
    }

    #[test]
    fn spoke_names_from_tokens() {
        let tags = ["1a2b".to_owned()];
        // A single-use token's spoke takes the token's name as it is (as before reusable
        // tokens); every use of a reusable one gets its use number.
        assert_eq!(
            name_candidates(None, &token(Some("web"), 1), 1, &tags),
            ["web", "web-1", "web-1-1a2b"]
        );
        assert_eq!(
            name_candidates(None, &token(Some("web"), 5), 3, &tags),
            ["web-3", "web-3-1a2b"]
        );
        assert_eq!(
            name_candidates(Some("db-7"), &token(Some("web"), 5), 3, &tags),
            ["db-7", "db-7-3", "db-7-3-1a2b"]
        );
        assert_eq!(
            name_candidates(None, &token(None, 5), 2, &[]),
            ["spoke-abcdefghijkl-2"]
        );
        // Long names are cut so that every candidate stays a valid label.
        let long = "x".repeat(63);
        for n in name_candidates(Some(&long), &token(None, 10_000), 10_000, &tags) {
            assert!(valid_label(&n), "{n}");
        }
    }

    #[test]
    fn why_a_token_is_spent() {
        let mut t = token(None, 2);
        assert_eq!(t.spent(999), None);
        assert_eq!(t.spent(1_000), Some(TokenSpent::Expired));
        t.uses = 2;
        assert_eq!(t.spent(0), Some(TokenSpent::Exhausted));
        t.revoked_ms = Some(5);
        assert_eq!(t.spent(0), Some(TokenSpent::Revoked));
        // A single-use token an older hub marked used (`used_ms` only) is spent too.
        let mut old = token(None, 1);
        old.used_ms = Some(1);
        assert_eq!(old.spent(0), Some(TokenSpent::Exhausted));
        assert!(spent_refusal(TokenSpent::Exhausted, &token(None, 3))
            .message
            .starts_with("join token exhausted"));
        assert!(spent_refusal(TokenSpent::Revoked, &t)
            .message
            .starts_with("join token revoked"));
        assert!(spent_refusal(TokenSpent::Expired, &t)
            .message
            .starts_with("join token expired"));
    }
}
