//! The hub's side of the spoke network: the internal CA, the QUIC control endpoint (mutual
//! TLS), enrollment, and the registry of connected spokes.
//!
//! [`Network::load`] runs at hub start (the CA is shared by all hubs through the database);
//! [`start`] binds the QUIC endpoint and spawns the accept loop.

pub mod asks;
mod control;
pub mod enroll;
pub mod registry;

use crate::db::CaRole;
use crate::state::{now_ms, AppState};
use anyhow::Context as _;
use shared::auth::Sealer;
use shared::pki::Ca;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use registry::{LiveStatus, Registry};

/// The CA lives ten years; hub certificates one year and are re-issued at every start.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
const HUB_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
const CA_AAD: &[u8] = b"network-ca";
const SPOKE_CA_AAD: &[u8] = b"spoke-ca";

/// Network state held by the hub.
#[derive(Debug)]
pub struct Network {
    /// The network CA (what join strings pin): issues hub certificates only.
    pub ca: Ca,
    pub ca_fingerprint: String,
    /// Issues spoke certificates only; hubs accept as spokes, and spokes as peers, only
    /// certificates from it.
    pub spoke_ca: Ca,
    pub registry: Registry,
    /// Failed enrollments per source address.
    pub enroll_throttle: enroll::Throttle,
    /// `host:port` spokes dial, known once the endpoint is bound.
    advertise: OnceLock<String>,
}

/// Loads the CA of `role` from the database, creating it on first start (the first hub to
/// store one wins; every hub uses that one).
async fn load_ca(
    db: &crate::db::Db,
    sealer: &Sealer,
    role: CaRole,
) -> anyhow::Result<(Ca, String)> {
    let (name, aad) = match role {
        CaRole::Hub => ("Switchyard network CA", CA_AAD),
        CaRole::Spoke => ("Switchyard spoke CA", SPOKE_CA_AAD),
    };
    let record = match db.get_ca(role).await? {
        Some(r) => r,
        None => {
            let ca = Ca::generate(name, CA_LIFETIME)?;
            let fresh = crate::db::CaRecord {
                fingerprint: ca.fingerprint()?,
                key_sealed: sealer.seal(ca.key_pem().as_bytes(), aad),
                cert_pem: ca.cert_pem.clone(),
            };
            db.insert_ca_if_absent(role, &fresh, now_ms()).await?
        }
    };
    let key = sealer
        .open(&record.key_sealed, aad)
        .map_err(|e| anyhow::anyhow!("the {name} key does not open with this master key: {e}"))?;
    let key = String::from_utf8(key).with_context(|| format!("{name} key"))?;
    Ok((Ca::from_pem(&record.cert_pem, &key)?, record.fingerprint))
}

impl Network {
    /// Loads the network's CAs from the database, creating them on first start.
    pub async fn load(
        db: &crate::db::Db,
        sealer: &Sealer,
        config: &crate::config::Config,
    ) -> anyhow::Result<Network> {
        let (ca, ca_fingerprint) = load_ca(db, sealer, CaRole::Hub).await?;
        let (spoke_ca, _) = load_ca(db, sealer, CaRole::Spoke).await?;
        Ok(Network {
            ca,
            ca_fingerprint,
            spoke_ca,
            enroll_throttle: enroll::Throttle::default(),
            registry: Registry::new(
                Duration::from_millis(config.network.heartbeat_ms),
                config.network.missed_heartbeats,
            ),
            advertise: OnceLock::new(),
        })
    }

    /// The QUIC endpoint spokes dial, if the network is running.
    pub fn advertise(&self) -> Option<&str> {
        self.advertise.get().map(String::as_str)
    }
}

/// A fresh, unguessable grant id.
pub fn new_grant_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Registers `g` (a single-purpose grant) on `spoke` and returns the signature over its claims
/// (`shared::auth::sign_data` with the spoke's data key) that lets its holder use it; `None`
/// when the spoke is not connected.
pub fn grant(state: &AppState, spoke: i64, g: shared::proto::Grant) -> Option<String> {
    let signature = shared::auth::sign_data(
        &shared::auth::Tagger::new(state.spoke_data_key(spoke)),
        &shared::auth::DataClaims {
            method: &g.method,
            grant: &g.grant_id,
            account: g.account,
            target: &g.location.path,
            expires: g.expires,
        },
    );
    state
        .network
        .registry
        .send(spoke, shared::proto::HubMsg::Grant(Box::new(g)))
        .then_some(signature)
}

/// A running QUIC endpoint.
#[derive(Debug)]
pub struct NetworkHandle {
    pub local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    revocations: tokio::task::JoinHandle<()>,
    /// Refreshes this hub's row of the hub directory (see [`announce`]).
    directory: tokio::task::JoinHandle<()>,
}

impl NetworkHandle {
    /// Closes the endpoint at once (connections get a close frame, no waiting).
    pub fn close(&self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(shared::proto::CLOSE_NORMAL),
            b"hub shutting down",
        );
        self.task.abort();
        self.revocations.abort();
        self.directory.abort();
    }

    /// Closes every spoke connection and stops accepting.
    pub async fn shutdown(self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(shared::proto::CLOSE_NORMAL),
            b"hub shutting down",
        );
        self.task.abort();
        self.revocations.abort();
        self.directory.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Binds the QUIC control endpoint on `addr` and serves spokes until shut down.
pub async fn start(state: AppState, addr: SocketAddr) -> anyhow::Result<NetworkHandle> {
    let net = &state.network;
    let mut names = state.config.network.names.clone();
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let (chain, key) = net.ca.issue_hub(&names, HUB_CERT_LIFETIME)?;
    // Client certificates are verified under the spoke CA only: a hub's certificate, or
    // anything else from the network CA, is no spoke.
    let tls =
        shared::pki::hub_server_config(&net.spoke_ca.cert_pem, &chain, &key, shared::proto::ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("QUIC TLS config: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(&state.config)));
    let endpoint = quinn::Endpoint::server(server, addr)
        .with_context(|| format!("binding the QUIC endpoint on {addr}"))?;
    let local_addr = endpoint.local_addr()?;
    let advertise = state
        .config
        .network
        .quic_advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    let _ = net.advertise.set(advertise.clone());
    announce_once(&state, &advertise).await?;
    tracing::info!(%local_addr, %advertise, ca = %net.ca_fingerprint, "spoke network listening");
    let task = tokio::spawn(control::accept_loop(state.clone(), endpoint.clone()));
    let revocations = tokio::spawn(push_revocations(state.clone()));
    let directory = tokio::spawn(announce(state.clone(), advertise));
    Ok(NetworkHandle {
        local_addr,
        endpoint,
        task,
        revocations,
        directory,
    })
}

/// How often a hub refreshes its row of the hub directory (`hubs`): its `seen_ms` (the
/// console shows a hub unseen for 30 s as down; spokes are handed the hubs seen in the last
/// day), version, database role and replica lag.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Writes this hub's row of the hub directory once.
async fn announce_once(state: &AppState, advertise: &str) -> Result<(), sqlx::Error> {
    let (db_role, replica_lag_ms) = state.db.role();
    let about = crate::db::HubAnnouncement {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        db_role,
        replica_lag_ms,
    };
    state
        .db
        .upsert_hub(
            advertise,
            &state.config.region,
            &state.config.public_url(),
            &about,
            now_ms(),
        )
        .await
}

/// Refreshes this hub's directory row every [`ANNOUNCE_EVERY`] until the [`NetworkHandle`]
/// closes (a failed write is retried at the next round).
async fn announce(state: AppState, advertise: String) {
    loop {
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        if let Err(e) = announce_once(&state, &advertise).await {
            tracing::warn!(error = %e, "could not refresh this hub in the hub directory");
        }
    }
}

/// A certificate's not-after in ms since the epoch, `None` when its DER does not parse.
pub(crate) fn cert_not_after_ms(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp().saturating_mul(1000))
}

/// How often a hub looks for spokes revoked (on any hub) since its last push.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Pushes the revoked-certificate list to every connected spoke whenever it grows (a spoke
/// revoked on any hub reaches the spokes of every hub within about [`REVOCATION_POLL`]).
/// Runs until the [`NetworkHandle`] closes.
async fn push_revocations(state: AppState) {
    let mut known = 0usize;
    loop {
        tokio::time::sleep(REVOCATION_POLL).await;
        let list = match state.db.revoked_fingerprints().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not read revoked spokes");
                continue;
            }
        };
        if list.len() == known {
            continue;
        }
        known = list.len();
        for id in state.network.registry.connected_ids() {
            state.network.registry.send(
                id,
                shared::proto::HubMsg::Revoked {
                    fingerprints: list.clone(),
                },
            );
        }
    }
}

/// QUIC transport settings shared by hub and spoke: keep-alives well inside the idle timeout.
pub fn transport(config: &crate::config::Config) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let hb = Duration::from_millis(config.network.heartbeat_ms);
    t.keep_alive_interval(Some(hb));
    let idle = (hb * (config.network.missed_heartbeats + 2)).max(Duration::from_secs(5));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}
