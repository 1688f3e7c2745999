//! `spoke run`: one QUIC control session per hub (outbound only, so it works behind NAT),
//! mutual TLS with the enrolled certificate, hello / heartbeats / reports, reconnect with
//! backoff. Transfers assigned by a hub run in [`crate::worker`] and are cancelled when that
//! hub's session ends (the hub resumes them from their durable parts).

use crate::config::Identity;
use crate::worker::{self, Jobs};
use anyhow::Context as _;
use shared::proto::{
    self, check_preamble, encode, preamble, FrameDecoder, Heartbeat, Hello, HubInfo, HubMsg,
    ProtoError, RttSample, SpokeMsg,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Resolves `host:port` and dials it over QUIC with `tls`.
pub async fn connect(
    addr: &str,
    tls: rustls::ClientConfig,
    keep_alive: Duration,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    // hickory-resolver: a hub name's TTL is honoured, so steering changes reach us.
    let target: SocketAddr = shared::resolve::resolve(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?;
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("QUIC TLS config: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from((keep_alive * 5).max(Duration::from_secs(5))) {
        transport.max_idle_timeout(Some(idle));
    }
    client.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(target, shared::pki::HUB_SERVER_NAME)?
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((endpoint, conn))
}

/// The spoke's end of a control stream.
pub struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl ControlStream {
    /// Opens the control stream and exchanges preambles.
    pub async fn open(conn: &quinn::Connection) -> anyhow::Result<ControlStream> {
        Self::open_with_version(conn, proto::VERSION).await
    }

    /// Like [`ControlStream::open`], announcing `version` (tests of version mismatch).
    pub async fn open_with_version(
        conn: &quinn::Connection,
        version: u16,
    ) -> anyhow::Result<ControlStream> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&preamble(version)).await?;
        let mut theirs = [0u8; proto::PREAMBLE_LEN];
        if let Err(e) = recv.read_exact(&mut theirs).await {
            return Err(closed_reason(conn).unwrap_or_else(|| anyhow::anyhow!("{e}")));
        }
        match check_preamble(&theirs) {
            Ok(_) if version == proto::VERSION => {}
            Ok(_) => {
                return Err(anyhow::Error::new(Fatal(format!(
                    "protocol version mismatch: this spoke speaks {version}, the hub speaks {}; \
                     upgrade the older side",
                    proto::VERSION
                ))))
            }
            Err(ProtoError::VersionMismatch { theirs, .. }) => {
                return Err(anyhow::Error::new(Fatal(format!(
                    "protocol version mismatch: this spoke speaks {version}, the hub speaks {theirs}; \
                     upgrade the older side"
                ))))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(ControlStream {
            send,
            recv,
            decoder: FrameDecoder::default(),
            buf: vec![0u8; 64 * 1024],
        })
    }

    pub async fn send(&mut self, msg: &SpokeMsg) -> anyhow::Result<()> {
        self.send.write_all(&encode(msg)?).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> anyhow::Result<HubMsg> {
        loop {
            if let Some(m) = self.decoder.decode::<HubMsg>()? {
                return Ok(m);
            }
            match self.recv.read(&mut self.buf).await? {
                Some(n) => self.decoder.push(&self.buf[..n]),
                None => anyhow::bail!("the hub closed the control stream"),
            }
        }
    }
}

/// The hub's close reason, when it closed the connection on purpose.
fn closed_reason(conn: &quinn::Connection) -> Option<anyhow::Error> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            let code = c.error_code.into_inner() as u32;
            Some(match code {
                proto::CLOSE_VERSION_MISMATCH => {
                    anyhow::Error::new(Fatal(format!("the hub refused us: {reason}")))
                }
                proto::CLOSE_REVOKED => anyhow::Error::new(Fatal(reason)),
                _ => anyhow::anyhow!("the hub closed the connection: {reason}"),
            })
        }
        other => Some(anyhow::anyhow!("{other}")),
    }
}

/// An error that ends `spoke run` (revocation): retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Options of `spoke run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: PathBuf,
    /// The protocol version to announce (only tests change it).
    pub protocol_version: u16,
}

/// Runs the spoke until `shutdown` fires, or until every hub has refused it for good.
pub async fn run(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ident = Arc::new(Identity::load(&opts.data_dir)?);
    let local = crate::config::LocalConfig::load(&opts.data_dir)?;
    let fs_roots = crate::fsroots::FsRoots::new(local.storage.fs_roots.clone());
    // The budgets handed at enrollment, until a hub's welcome brings the current ones.
    crate::budget::global().set_settings(ident.config.settings.budgets.clone());
    let jobs = Arc::new(Jobs::new(
        ident.config.settings.max_jobs,
        opts.data_dir.join("scratch"),
        ident.clone(),
        fs_roots.clone(),
    ));
    tracing::info!(spoke_id = ident.config.spoke_id, name = %ident.config.name,
                   region = %ident.config.region, hubs = ident.config.hubs.len(),
                   fs_roots = local.storage.fs_roots.len(), "spoke starting");
    let probes = tokio::spawn(worker::probe_loop(jobs.clone(), shutdown.clone()));
    let grants = Arc::new(crate::data::Grants::new(fs_roots));
    let mut relay_endpoint = None;
    let mut relay_limits = None;
    let mut data_health = None;
    let data = match &ident.config.advertise {
        Some(a) => {
            let bind = ident.config.listen.as_deref().unwrap_or(a);
            let listen: SocketAddr = bind.parse().with_context(|| {
                format!(
                    "the data endpoint's address {bind:?} (spoke.yaml `listen`, else \
                     `advertise`) must be ip:port"
                )
            })?;
            let tls =
                shared::pki::spoke_server_config(&ident.ca_pem, &ident.cert_pem, &ident.key_pem)?;
            // The policy the hub handed at enrollment; assignments carry the current one.
            let egress = shared::egress::EgressPolicy::from_settings(&ident.config.settings.egress);
            let app = crate::data::router(
                grants.clone(),
                opts.data_dir.join("scratch"),
                egress.clone(),
                &local.data_endpoint,
            );
            // The same address over UDP relays source bytes to other spokes.
            let relay = crate::relay::bind(&ident, listen)?;
            relay_endpoint = Some(relay.clone());
            let limits = crate::relay::RelayLimits::new(&ident.config.settings);
            relay_limits = Some(limits.clone());
            tokio::spawn(crate::relay::serve(
                relay,
                crate::relay::ServeOptions {
                    revoked: ident.revoked.clone(),
                    grants: grants.clone(),
                    scratch: opts.data_dir.join("scratch"),
                    egress,
                    limits,
                },
                shutdown.clone(),
            ));
            let health = Arc::new(crate::data::Health::default());
            data_health = Some(health.clone());
            Some(tokio::spawn(crate::data::serve(
                listen,
                tls,
                app,
                local.data_endpoint.clone(),
                health,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let mut sessions = tokio::task::JoinSet::new();
    for hub in ident.config.hubs.clone() {
        let node = Node {
            ident: ident.clone(),
            jobs: jobs.clone(),
            grants: grants.clone(),
            relay: relay_endpoint.clone(),
            relay_limits: relay_limits.clone(),
            data_health: data_health.clone(),
        };
        let (shutdown, opts) = (shutdown.clone(), opts.clone());
        sessions.spawn(async move { hub_loop(hub, node, opts, shutdown).await });
    }
    let mut fatal = Vec::new();
    while let Some(r) = sessions.join_next().await {
        if let Ok(Err(e)) = r {
            fatal.push(e);
        }
    }
    probes.abort();
    if let Some(d) = data {
        d.abort();
    }
    jobs.cancel_all();
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let msg: Vec<String> = fatal.iter().map(|e| format!("{e:#}")).collect();
    anyhow::bail!("every hub refused this spoke: {}", msg.join("; "))
}

/// What every hub session of this spoke shares.
#[derive(Clone)]
struct Node {
    ident: Arc<Identity>,
    jobs: Arc<Jobs>,
    grants: Arc<crate::data::Grants>,
    /// The relay endpoint, when this spoke serves one.
    relay: Option<quinn::Endpoint>,
    /// What each peer may hold on the relay endpoint.
    relay_limits: Option<Arc<crate::relay::RelayLimits>>,
    /// The data endpoint's state, when this spoke serves one.
    data_health: Option<Arc<crate::data::Health>>,
}

async fn hub_loop(
    hub: HubInfo,
    node: Node,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(&hub, &node, &opts, &shutdown) => r,
            () = shutdown.cancelled() => return Ok(()),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                tracing::error!(hub = %hub.quic, error = %e, "the hub refused this spoke for good");
                return Err(e);
            }
            Err(e) => {
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
                tracing::warn!(hub = %hub.quic, error = format!("{e:#}"), retry_in = ?backoff,
                               "control session ended");
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                tokio::select! {
                    () = tokio::time::sleep(backoff + jitter) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn session(
    hub: &HubInfo,
    node: &Node,
    opts: &RunOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (ident, jobs, grants) = (&node.ident, &node.jobs, &node.grants);
    // Hubs are verified under the network CA only: a certificate from the spoke CA (another
    // spoke's, whatever names it carries) is no hub.
    let tls = shared::pki::spoke_client_config(
        &ident.hub_ca_pem,
        &ident.cert_pem,
        &ident.key_pem,
        proto::ALPN,
    )?;
    let heartbeat = Duration::from_millis(ident.config.settings.heartbeat_ms.max(50));
    let (endpoint, conn) = connect(&hub.quic, tls, heartbeat).await?;
    let result = async {
        let mut stream = ControlStream::open_with_version(&conn, opts.protocol_version).await?;
        stream
            .send(&SpokeMsg::Hello(Hello {
                version: opts.protocol_version,
                spoke_id: ident.config.spoke_id,
                region: ident.config.region.clone(),
                software: format!("spoke {}", env!("CARGO_PKG_VERSION")),
                slots: ident.config.settings.max_jobs.max(1),
                running: Vec::new(),
                fs_roots: grants.fs_roots().declared(),
                url_sources: true,
            }))
            .await?;
        let welcome = match stream.recv().await {
            Ok(HubMsg::Welcome(w)) => w,
            Ok(HubMsg::Refused { code, message }) if code == "revoked" => {
                return Err(anyhow::Error::new(Fatal(message)));
            }
            Ok(HubMsg::Refused { code, message }) => {
                anyhow::bail!("the hub refused the hello ({code}): {message}")
            }
            Ok(other) => anyhow::bail!("unexpected first message from the hub: {other:?}"),
            Err(e) => return Err(closed_reason(&conn).unwrap_or(e)),
        };
        tracing::info!(hub = %hub.quic, region = %welcome.hub_region, "connected to hub");
        crate::budget::global().set_settings(welcome.settings.budgets.clone());
        // Side questions (budgets, part reports) may go over this connection while it lives.
        let side_link = crate::asks::hubs().add(conn.clone());
        if let Some(k) = &welcome.data_key {
            grants.set_key(&k.0);
        }
        if let Some(relay) = &node.relay {
            // The network's settings now (they may have changed since enrollment).
            relay.set_server_config(Some(crate::relay::server_config(
                ident,
                &welcome.settings,
            )?));
        }
        if let Some(limits) = &node.relay_limits {
            limits.update(&welcome.settings);
        }
        let session_jobs = CancellationToken::new();
        // The runs this session's hub started, by transfer: the generation of each.
        let mut started: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<SpokeMsg>();
        let mut tick = tokio::time::interval(Duration::from_millis(welcome.settings.heartbeat_ms.max(50)));
        // Published uploads this session reported, by their number in `grants`.
        let mut reported_done = 0u64;
        let mut measured = jobs.first_measured();
        let r: anyhow::Result<()> = loop {
            // A heartbeat goes out on the tick, and at once when an upload was published (its
            // event should not wait for the tick) or a storage endpoint was measured for the
            // first time (the hub may hold a new transfer until it knows).
            tokio::select! {
                _ = tick.tick() => {}
                () = grants.done_added.notified() => {}
                Ok(()) = measured.changed() => {}
                msg = stream.recv() => {
                    match on_hub_msg(msg, node, &welcome, &mut started, &tx, &session_jobs, &conn) {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                Some(report) = rx.recv() => {
                    if let Err(e) = stream.send(&report).await {
                        break Err(e);
                    }
                    continue;
                }
                () = shutdown.cancelled() => {
                    conn.close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"spoke shutting down");
                    break Ok(());
                }
            }
            let mut rtts = vec![RttSample {
                target: format!("hub:{}", welcome.hub_region),
                rtt_us: conn.rtt().as_micros() as u64,
            }];
            rtts.extend(jobs.probe_samples());
            let (uploaded, last) = grants.published_after(reported_done);
            let hb = Heartbeat {
                active_jobs: jobs.active(),
                free_slots: jobs.free(),
                bytes_per_sec: jobs.bytes_per_sec(),
                rtts,
                data_endpoint: node.data_health.as_ref().map(|h| h.get()),
                uploads: grants.uploads(),
                uploaded,
            };
            if let Err(e) = stream.send(&SpokeMsg::Heartbeat(hb)).await {
                break Err(e);
            }
            reported_done = last;
        };
        // This hub's transfers stop with its session; it resumes them from durable parts.
        session_jobs.cancel();
        drop(side_link);
        r
    }
    .await;
    endpoint.close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"bye");
    result
}

/// Handles one message (or receive error) from the hub on a session; an error ends it.
fn on_hub_msg(
    msg: anyhow::Result<HubMsg>,
    node: &Node,
    welcome: &shared::proto::Welcome,
    started: &mut std::collections::HashMap<i64, u64>,
    tx: &mpsc::UnboundedSender<SpokeMsg>,
    session_jobs: &CancellationToken,
    conn: &quinn::Connection,
) -> anyhow::Result<()> {
    let (ident, jobs, grants) = (&node.ident, &node.jobs, &node.grants);
    match msg {
        Ok(HubMsg::Assign(a)) => {
            let id = a.transfer_id;
            let generation = jobs.start(
                *a,
                welcome.settings.clone(),
                tx.clone(),
                session_jobs.child_token(),
            );
            // Bounded by the runs still going: finished ones are forgotten.
            started.retain(|t, g| jobs.runs(*t, *g));
            started.insert(id, generation);
        }
        // A hub cancels only the runs it started: a hub that lost a transfer to
        // another hub must not stop the new holder's run of it here.
        Ok(HubMsg::Cancel { transfer_id }) => {
            if let Some(generation) = started.remove(&transfer_id) {
                jobs.cancel(transfer_id, generation);
            }
        }
        Ok(HubMsg::Grant(g)) => grants.add(*g),
        Ok(HubMsg::Probe { targets }) => jobs.probe(targets),
        Ok(HubMsg::Revoked { fingerprints }) => {
            let new = ident.revoked.extend(fingerprints);
            if new > 0 {
                tracing::info!(
                    new,
                    total = ident.revoked.len(),
                    "revoked spoke certificates updated"
                );
            }
        }
        Ok(HubMsg::Refused { code, message }) if code == "revoked" => {
            return Err(anyhow::Error::new(Fatal(message)));
        }
        Ok(other) => tracing::debug!(?other, "ignored hub message"),
        Err(e) => return Err(closed_reason(conn).unwrap_or(e)),
    }
    Ok(())
}
