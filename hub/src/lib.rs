//! Switchyard hub: the regional control plane. It serves the unified storage REST API
//! (Kloudless v1 compatible) over the database and the storage connectors, enrolls spokes and
//! keeps their QUIC control connections, and schedules transfers onto them.
//!
//! Entry points: [`run`] serves a loaded [`config::Config`]; [`open`] builds the shared state
//! (database, keys, caches) and [`app`] the router, which tests drive in-process.

pub mod api;
pub mod auth;
pub mod budgets;
mod cache;
pub mod claims;
pub mod cli;
pub mod config;
pub mod cors;
pub mod db;
pub mod detect;
pub mod dev;
pub mod error;
pub mod events;
pub mod fsroot;
pub mod guard;
pub mod http;
pub mod ids;
mod metrics;
pub mod model;
pub mod network;
pub mod pages;
pub mod portal;
pub mod revocation;
pub mod sessions;
pub mod state;
pub mod steering;
pub mod tls;
pub mod transfers;
pub mod webhooks;
pub mod workqueue;

use anyhow::Context as _;
use shared::auth::MasterKey;
use state::{AppState, HubState};
use std::sync::Arc;

/// Connects and migrates the database, loads the master key, and builds the hub state.
pub async fn open(config: config::Config) -> anyhow::Result<AppState> {
    let master = load_master_key(&config)?;
    let url = config.database_url();
    let db = db::Db::connect_routed(
        &url,
        config.database.replica_url.as_deref(),
        config.database.routing(),
    )
    .await
    .map_err(|(key, m)| anyhow::anyhow!("{key}: {m}"))
    .with_context(|| format!("connecting to the database ({})", redact_url(&url)))?;
    db.migrate().await.context("applying database migrations")?;
    db.set_outbox_delay(config.webhooks.coalesce.0);
    let sealer = shared::auth::Sealer::new(&master.derive("network-ca"));
    let network = network::Network::load(&db, &sealer, &config)
        .await
        .context("loading the network CA")?;
    Ok(Arc::new(HubState::new(config, db, &master, network)?))
}

/// What runs beside the HTTP API: the QUIC endpoint for spokes and the transfer scheduler.
#[derive(Debug)]
pub struct Background {
    pub network: Option<network::NetworkHandle>,
    /// The steering DNS server, when `dns.listen` is set.
    pub dns: Option<steering::dns::DnsServer>,
    scheduler: tokio::task::JoinHandle<()>,
    steering: tokio::task::JoinHandle<()>,
    /// Sweeps abandoned uploads' staging (see [`claims`]).
    sweeper: tokio::task::JoinHandle<()>,
    /// Deletes events past `events.retention_days` (see [`events`]).
    event_sweeper: tokio::task::JoinHandle<()>,
    /// Webhook deliveries: the outbox reconciler and the work queue's consumer.
    webhooks: webhooks::Tasks,
    /// Runs the detectors of outside changes this hub holds (see [`detect`]).
    detectors: detect::Tasks,
    revocations: tokio::task::JoinHandle<()>,
    state: AppState,
}

impl Background {
    /// Starts the spoke network (when `network.quic_listen` is set), the scheduler, steering
    /// and the revocation feed.
    pub async fn start(state: &AppState) -> anyhow::Result<Background> {
        let network = match state.config.network.quic_listen {
            Some(addr) => Some(network::start(state.clone(), addr).await?),
            None => None,
        };
        let dns = match state.config.dns.listen {
            Some(addr) => Some(
                steering::dns::DnsServer::start(state.steering.clone(), &state.config, addr)
                    .await?,
            ),
            None => None,
        };
        Ok(Background {
            network,
            dns,
            scheduler: transfers::spawn_scheduler(state.clone()),
            steering: steering::spawn(state.clone()),
            sweeper: claims::spawn_sweeper(state.clone()),
            event_sweeper: events::spawn_sweeper(state.clone()),
            webhooks: webhooks::spawn(state.clone()).await?,
            detectors: detect::spawn(state.clone()).await?,
            revocations: revocation::spawn(state.clone()),
            state: state.clone(),
        })
    }

    /// Stops both without waiting (for `Drop` paths).
    pub fn abort(&self) {
        self.state.transfers.close();
        self.scheduler.abort();
        self.steering.abort();
        self.sweeper.abort();
        self.event_sweeper.abort();
        self.webhooks.abort();
        self.detectors.abort();
        self.revocations.abort();
        if let Some(n) = &self.network {
            n.close();
        }
    }

    /// Stops both.
    pub async fn shutdown(self) {
        // First, so that connections closing below start no new work.
        self.state.transfers.close();
        self.scheduler.abort();
        self.steering.abort();
        self.sweeper.abort();
        self.event_sweeper.abort();
        self.webhooks.abort();
        self.detectors.abort();
        self.revocations.abort();
        if let Some(d) = self.dns {
            d.shutdown().await;
        }
        if let Some(n) = self.network {
            n.shutdown().await;
        }
    }
}

/// The HTTP application for a hub state.
pub fn app(state: AppState) -> axum::Router {
    api::router(state)
}

/// Serves the API on `listener` until `shutdown` resolves: HTTPS (with the redirect
/// listener, ACME or SIGHUP reload) when `tls` is configured, plain HTTP otherwise.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(tls) = state.tls.clone() {
        return tls::listener::serve(state, tls, listener, shutdown)
            .await
            .context("serving HTTPS");
    }
    let tapped = state.clone();
    http::serve_tcp(
        listener,
        app(state),
        move |tcp| accepted(&tapped, tcp),
        shutdown,
    )
    .await
    .context("serving HTTP")
}

/// What every accepted API connection gets, before any byte is read (TLS or not).
pub(crate) fn accepted(state: &AppState, tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    // The handshake's RTT: a latency sample of this client's network for steering.
    if let (Some(rtt), Ok(peer)) = (steering::tcpinfo::rtt_us(tcp), tcp.peer_addr()) {
        state.steering.record_rtt(peer.ip(), rtt);
    }
}

/// Runs a hub with `config` until SIGINT or SIGTERM.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, region = %state.config.region, tls = state.tls.is_some(),
        "hub listening");
    let background = Background::start(&state).await?;
    serve(state.clone(), listener, shutdown_signal()).await?;
    background.shutdown().await;
    state.db.close().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Reads the master key from `secrets.master_key` or `secrets.master_key_file`.
pub fn load_master_key(config: &config::Config) -> anyhow::Result<MasterKey> {
    if let Some(k) = &config.secrets.master_key {
        return MasterKey::from_base64(k).context("secrets.master_key");
    }
    let path = config.secrets.master_key_file.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "config key `secrets.master_key_file`: no master key configured; create one with \
             `head -c 32 /dev/urandom | base64 > master.key && chmod 600 master.key`"
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("secrets.master_key_file: cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "secrets.master_key_file: {} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("secrets.master_key_file: cannot read {}", path.display()))?;
    MasterKey::from_base64(&text).context("secrets.master_key_file")
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}
