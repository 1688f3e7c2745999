//! The spoke↔spoke relay: when a transfer's source sits near one spoke and its destination near
//! another, the hub has the spoke near the destination write the parts and read their bytes
//! from the spoke near the source, over QUIC.
//!
//! The relaying spoke serves [`proto::ALPN_RELAY`] on the UDP side of its advertised address,
//! to peers with a network-CA certificate only, and only for `RELAY` grants the hub registered
//! on it, each request signed by the hub (`shared::auth::DataClaims`). One bidirectional stream
//! carries one part: preamble + [`RelayRequest`] one way, preamble + [`RelayReply`] and then
//! exactly the requested bytes the other way. Connections use [`shared::quic::bulk_transport`]
//! (windows sized for long paths, configurable congestion controller); the writer stripes a
//! transfer over `offload.relay_connections` of them ([`Relayed`]).
//!
//! A grant serves only the spoke it names (`Grant::reader`, checked against the peer's
//! certificate), and no peer holds more than its share of the endpoint: handshakes in flight
//! per address and in all ([`MAX_HANDSHAKES_PER_ADDR`], [`MAX_HANDSHAKES`]), connections per
//! spoke ([`RelayLimits`]) and streams per connection (`part_concurrency`-bound).

use crate::config::Identity;
use crate::data::{lock, now_secs, Grants};
use bytes::Bytes;
use shared::auth::{verify_data, DataClaims, Tagger};
use shared::proto::{
    self, check_preamble, decode_body, encode, frame_len, preamble, Grant, RelayFrom, RelayReply,
    RelayRequest, SpokeSettings,
};
use shared::quic::{bulk_transport, Congestion, SEND_WINDOW};
use shared::storage::transfer::{range_source, ByteStream, OpenFuture, RangeSource};
use shared::storage::{ConnectOptions, Connector, StorageError, StoragePath};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Time allowed for a request's header to arrive, and for a connection to be set up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive of relay connections.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Bytes read from the QUIC stream at once on the writer's side.
const READ_CHUNK: usize = 256 * 1024;
/// Application error code: the relaying spoke failed part-way through a part.
const RESET_SOURCE_FAILED: u32 = 0x5701;
/// How often the relay counts the connections its endpoint holds (draining ones give their
/// part of the send window back only when they are gone).
const CENSUS: Duration = Duration::from_millis(250);
/// Sources kept open for reuse (one per grant).
const MAX_SOURCES: usize = 256;
/// QUIC handshakes in flight from one address (before a peer has shown a certificate).
pub const MAX_HANDSHAKES_PER_ADDR: usize = 32;
/// QUIC handshakes in flight in all.
pub const MAX_HANDSHAKES: usize = 256;

// ---------------------------------------------------------------------------------------------
// The relaying side.

/// What one spoke may hold on this relay endpoint, from the network's settings (a hub's
/// welcome updates them): connections per spoke, enough for `max_jobs` transfers each striped
/// over `relay_connections`, twice over (connections closing while new ones open), within
/// 8..=1024.
///
/// And what all of them hold together: quinn keeps each byte a connection sent until the
/// writer acknowledges it, up to the connection's send window, so the relay shares one
/// [`SEND_WINDOW`] among every connection it serves (each gets an equal part, at least
/// [`MIN_SEND_SHARE`]) instead of giving each its own: a transfer's stripes, transfers that
/// overlap (a cancelled one's connections still draining while the next one's fill) and a peer
/// that opens all the connections it may and reads slowly all fit the same memory.
#[derive(Debug)]
pub struct RelayLimits {
    connections_per_spoke: AtomicUsize,
    /// The connections this relay serves, by `stable_id`, whose send windows share
    /// [`SEND_WINDOW`].
    serving: Mutex<HashMap<usize, quinn::Connection>>,
    /// Connections the endpoint still holds past their handshakes, served or not: a closed
    /// connection keeps its unacknowledged bytes for three probe timeouts (draining; over a
    /// second on a long lossy path), so it keeps its part until it is gone. Handshakes in
    /// flight hold no bytes and do not count: a flood of them (no certificate needed) must not
    /// shrink the windows of the spokes being served.
    open: AtomicUsize,
}

/// The least send window a served connection gets however many share [`SEND_WINDOW`]: a
/// quarter of a megabyte still carries ~20 Mbit/s over 100 ms, and the relay's memory grows
/// past the shared window only beyond 96 connections (each peer holds at most
/// [`RelayLimits::connections_per_spoke`]).
pub const MIN_SEND_SHARE: u64 = 256 << 10;

/// Each served connection's send window when `n` share [`SEND_WINDOW`].
pub fn send_share(n: usize) -> u64 {
    (SEND_WINDOW / n.max(1) as u64).max(MIN_SEND_SHARE)
}

/// A served connection's part of the shared send window; the others get its part back when
/// this drops.
struct Serving {
    limits: Arc<RelayLimits>,
    id: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut serving = lock(&self.limits.serving);
        serving.remove(&self.id);
        self.limits.share_out(&serving);
    }
}

impl RelayLimits {
    pub fn new(s: &SpokeSettings) -> Arc<Self> {
        let l = Arc::new(Self {
            connections_per_spoke: AtomicUsize::new(0),
            serving: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
        });
        l.update(s);
        l
    }

    /// Counts `conn` among the served connections until the guard drops, and sets every
    /// one's send window to its share of `open` (the connections the endpoint holds now).
    fn join(self: &Arc<Self>, conn: &quinn::Connection, open: usize) -> Serving {
        let id = conn.stable_id();
        self.open.store(open, Ordering::Relaxed);
        let mut serving = lock(&self.serving);
        serving.insert(id, conn.clone());
        self.share_out(&serving);
        Serving {
            limits: self.clone(),
            id,
        }
    }

    /// Notes how many connections the endpoint holds (draining ones too) and shares the
    /// window out again when that changed.
    fn endpoint_holds(&self, open: usize) {
        if self.open.swap(open, Ordering::Relaxed) != open {
            self.share_out(&lock(&self.serving));
        }
    }

    fn share_out(&self, serving: &HashMap<usize, quinn::Connection>) {
        let window = send_share(serving.len().max(self.open.load(Ordering::Relaxed)));
        for conn in serving.values() {
            conn.set_send_window(window);
        }
    }

    /// Connections being served now.
    pub fn serving(&self) -> usize {
        lock(&self.serving).len()
    }

    pub fn update(&self, s: &SpokeSettings) {
        let n = (s.max_jobs.max(1) as usize)
            .saturating_mul(s.relay_connections.clamp(1, 16) as usize)
            .saturating_mul(2)
            .clamp(8, 1024);
        self.connections_per_spoke.store(n, Ordering::Relaxed);
    }

    pub fn connections_per_spoke(&self) -> usize {
        self.connections_per_spoke.load(Ordering::Relaxed)
    }
}

/// Who holds a bounded share of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    /// Handshakes in flight, all of them.
    Handshakes,
    /// Handshakes in flight from one address.
    HandshakesFrom(std::net::IpAddr),
    /// Established connections of one spoke.
    Spoke(i64),
}

/// Live counts per [`Holder`]; a [`Slot`] holds one until dropped.
#[derive(Debug, Default)]
struct Counts(Mutex<HashMap<Holder, usize>>);

/// One counted unit of a [`Holder`]'s share.
struct Slot {
    counts: Arc<Counts>,
    holder: Holder,
}

impl Counts {
    /// How many slots `holder` holds now.
    fn held(&self, holder: Holder) -> usize {
        lock(&self.0).get(&holder).copied().unwrap_or(0)
    }

    /// A slot of `holder`'s share when it holds fewer than `max`.
    fn take(self: &Arc<Self>, holder: Holder, max: usize) -> Option<Slot> {
        let mut m = lock(&self.0);
        let n = m.entry(holder).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            holder,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = lock(&self.counts.0);
        if let Some(n) = m.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.holder);
            }
        }
    }
}

/// State of a relay endpoint.
struct Server {
    grants: Arc<Grants>,
    scratch: PathBuf,
    /// The hub's SSRF policy for provider connections.
    egress: shared::egress::EgressPolicy,
    /// Sources by grant id, so the parts of one transfer share an HTTP client: the first
    /// request opens it and requests arriving meanwhile (one per stripe) wait for that one.
    sources: Mutex<HashMap<String, Arc<SourceCell>>>,
    /// Sources opened (each a provider client and its TLS roots).
    opened: AtomicU64,
}

/// A grant's source, once its first request opened it (empty again after a failed open, so
/// the next request tries again).
type SourceCell = tokio::sync::OnceCell<Arc<dyn RangeSource>>;

/// The relay endpoint's server config from the network's `settings`: the spoke's certificate,
/// network-CA clients only, bulk transport with `settings.congestion` (the relaying side sends
/// the bytes, so its controller counts), windows shared by the `relay_connections` stripes of a
/// transfer (the send window then by every served connection: [`RelayLimits`]), and at most
/// twice `part_concurrency` streams open per connection (a writer reads that many parts at
/// once over all its stripes; more waits rather than fails).
pub fn server_config(
    ident: &Identity,
    settings: &SpokeSettings,
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = shared::pki::relay_server_config(
        &ident.ca_pem,
        &ident.cert_pem,
        &ident.key_pem,
        &ident.revoked,
    )?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("relay TLS config: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = bulk_transport(settings.congestion, KEEP_ALIVE, settings.relay_connections);
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(
        settings.part_concurrency.clamp(2, 128) * 2,
    ));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Binds the relay endpoint on `listen` (UDP) with the spoke's certificate and the settings it
/// enrolled with (a hub's welcome may change them: [`server_config`]).
pub fn bind(ident: &Identity, listen: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let server = server_config(ident, &ident.config.settings)?;
    let endpoint = shared::quic::endpoint(listen, Some(server))
        .map_err(|e| anyhow::anyhow!("binding the relay endpoint on UDP {listen}: {e}"))?;
    tracing::info!(%listen, "relay endpoint listening (QUIC)");
    Ok(endpoint)
}

/// What [`serve`] needs besides the endpoint.
pub struct ServeOptions {
    pub revoked: shared::pki::Revoked,
    pub grants: Arc<Grants>,
    pub scratch: PathBuf,
    pub egress: shared::egress::EgressPolicy,
    pub limits: Arc<RelayLimits>,
}

/// Serves relay requests until `shutdown` fires.
pub async fn serve(endpoint: quinn::Endpoint, opts: ServeOptions, shutdown: CancellationToken) {
    let ServeOptions {
        revoked,
        grants,
        scratch,
        egress,
        limits,
    } = opts;
    let server = Arc::new(Server {
        grants,
        scratch,
        egress,
        sources: Mutex::new(HashMap::new()),
        opened: AtomicU64::new(0),
    });
    let counts = Arc::new(Counts::default());
    let mut census = tokio::time::interval(CENSUS);
    census.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = census.tick() => {
                limits.endpoint_holds(past_handshakes(&endpoint, &counts));
                continue;
            }
            () = shutdown.cancelled() => {
                endpoint.close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"spoke shutting down");
                return;
            }
        };
        let from = incoming.remote_address();
        let handshake = counts
            .take(Holder::Handshakes, MAX_HANDSHAKES)
            .zip(counts.take(Holder::HandshakesFrom(from.ip()), MAX_HANDSHAKES_PER_ADDR));
        let Some(handshake) = handshake else {
            tracing::debug!(%from, "relay handshake refused: too many in flight");
            incoming.refuse();
            continue;
        };
        let (server, revoked, counts, limits, endpoint) = (
            server.clone(),
            revoked.clone(),
            counts.clone(),
            limits.clone(),
            endpoint.clone(),
        );
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HEADER_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "relay handshake failed");
                    return;
                }
                Err(_) => return,
            };
            drop(handshake);
            let leaf = peer_leaf(&conn);
            let Some(peer) = leaf.as_deref().and_then(shared::pki::spoke_id_of) else {
                conn.close(
                    quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL),
                    b"the certificate names no spoke",
                );
                return;
            };
            let max = limits.connections_per_spoke();
            let Some(_slot) = counts.take(Holder::Spoke(peer), max) else {
                tracing::warn!(spoke = peer, remote = %from, max,
                               "relay connection refused: the spoke holds as many as it may");
                conn.close(
                    quinn::VarInt::from_u32(proto::CLOSE_BUSY),
                    b"this spoke holds as many relay connections as it may",
                );
                return;
            };
            let _serving = limits.join(&conn, past_handshakes(&endpoint, &counts));
            while let Ok((send, recv)) = conn.accept_bi().await {
                // A peer revoked after its handshake loses the connection at its next request.
                if leaf.as_deref().is_none_or(|l| revoked.is_revoked(l)) {
                    tracing::info!(remote = %conn.remote_address(), "closing a revoked relay peer");
                    conn.close(
                        quinn::VarInt::from_u32(proto::CLOSE_REVOKED),
                        shared::pki::REVOKED_PEER.as_bytes(),
                    );
                    return;
                }
                let server = server.clone();
                tokio::spawn(async move { server.stream(peer, send, recv).await });
            }
            log_path(&conn, None, "relay connection served");
        });
    }
}

/// Connections `endpoint` holds that finished their handshakes (served, refused or draining).
fn past_handshakes(endpoint: &quinn::Endpoint, counts: &Counts) -> usize {
    endpoint
        .open_connections()
        .saturating_sub(counts.held(Holder::Handshakes))
}

/// The DER of the certificate the peer of `conn` presented.
fn peer_leaf(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?
        .first()
        .map(|c| c.to_vec())
}

impl Server {
    /// Serves one request of spoke `peer`.
    async fn stream(&self, peer: i64, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let req = match tokio::time::timeout(HEADER_TIMEOUT, read_header::<RelayRequest>(&mut recv))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "bad relay request");
                let _ = send.reset(quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL));
                return;
            }
            Err(_) => {
                let _ = send.reset(quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL));
                return;
            }
        };
        let opened = match self.authorize(peer, &req).await {
            Ok(source) => source.open(req.offset, req.len).await.map_err(refusal),
            Err(r) => Err(r),
        };
        let mut body = match opened {
            Ok(b) => b,
            Err(reply) => {
                tracing::debug!(grant = %req.grant_id, ?reply, "relay request refused");
                let _ = write_reply(&mut send, &reply).await;
                let _ = send.finish();
                return;
            }
        };
        if write_reply(&mut send, &RelayReply::Ok).await.is_err() {
            return;
        }
        use futures::StreamExt as _;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    if send.write_chunk(b).await.is_err() {
                        // The writer went away (or cancelled the part).
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(grant = %req.grant_id, error = %e, "relay source failed");
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_SOURCE_FAILED));
                    return;
                }
            }
        }
        let _ = send.finish();
        // Wait until the writer has every byte (or gave up) before dropping the stream.
        let _ = send.stopped().await;
    }

    /// Checks spoke `peer`'s request against its grant and returns the grant's source.
    async fn authorize(
        &self,
        peer: i64,
        req: &RelayRequest,
    ) -> Result<Arc<dyn RangeSource>, RelayReply> {
        let Some(grant) = self.grants.get(&req.grant_id).await else {
            return Err(refused(
                "unknown_grant",
                "this spoke holds no such relay grant (restarted, or the grant expired)",
            ));
        };
        let Some(key) = self.grants.key() else {
            return Err(refused("unknown_grant", "this spoke has no URL key yet"));
        };
        let claims = DataClaims {
            method: "RELAY",
            grant: &grant.grant_id,
            account: grant.account,
            target: &grant.location.path,
            expires: req.expires,
        };
        if grant.method != "RELAY" {
            return Err(refused("forbidden", "this grant is not for relaying"));
        }
        if grant.reader != Some(peer) {
            tracing::warn!(grant = %grant.grant_id, spoke = peer, reader = ?grant.reader,
                           "relay request from a spoke the grant is not for");
            return Err(refused(
                "forbidden",
                "this relay grant is for another spoke",
            ));
        }
        if let Err(e) = verify_data(&Tagger::new(key), &claims, &req.signature.0, now_secs()) {
            return Err(refused("forbidden", &e.to_string()));
        }
        let cell = {
            let mut sources = lock(&self.sources);
            if sources.len() >= MAX_SOURCES && !sources.contains_key(&grant.grant_id) {
                sources.clear();
            }
            sources.entry(grant.grant_id.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.open_source(&grant))
            .await
            .cloned()
    }

    /// Opens `grant`'s source: its storage connected (through the hub's egress policy, inside
    /// this spoke's filesystem roots) and its object ready for ranges.
    async fn open_source(&self, grant: &Grant) -> Result<Arc<dyn RangeSource>, RelayReply> {
        let path = StoragePath::parse(&grant.location.path)
            .map_err(|e| refused("not_found", &e.to_string()))?;
        self.grants
            .fs_roots()
            .check(&grant.location.service)
            .map_err(|e| refused("forbidden", &e.to_string()))?;
        let opts = ConnectOptions {
            scratch_dir: self.scratch.clone(),
            egress: self.egress.clone(),
            budgets: crate::budget::global(),
            ..ConnectOptions::default()
        };
        let opened = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(grant = %grant.grant_id, opened, "opening a relay source");
        Connector::connect(&grant.location.service, &opts)
            .await
            .and_then(|c| range_source(&grant.location.service, &c, &path))
            .map_err(|e| refused("unavailable", &e.to_string()))
    }
}

/// Logs what a relay connection's path did, both directions (for tuning: `data_blocked` and
/// `stream_data_blocked` frames mean flow-control windows held a sender back).
fn log_path(conn: &quinn::Connection, stripe: Option<usize>, what: &str) {
    let s = conn.stats();
    tracing::info!(
        remote = %conn.remote_address(),
        stripe,
        rtt_ms = s.path.rtt.as_secs_f64() * 1e3,
        cwnd = s.path.cwnd,
        sent_packets = s.path.sent_packets,
        lost_packets = s.path.lost_packets,
        congestion_events = s.path.congestion_events,
        sent_datagrams = s.udp_tx.datagrams,
        send_ios = s.udp_tx.ios,
        received_bytes = s.udp_rx.bytes,
        received_datagrams = s.udp_rx.datagrams,
        received_ios = s.udp_rx.ios,
        data_blocked_sent = s.frame_tx.data_blocked,
        stream_data_blocked_sent = s.frame_tx.stream_data_blocked,
        data_blocked_received = s.frame_rx.data_blocked,
        stream_data_blocked_received = s.frame_rx.stream_data_blocked,
        "{what}"
    );
}

/// A refusal with `code` (the writer maps it to a storage error) and `message`.
fn refused(code: &str, message: &str) -> RelayReply {
    RelayReply::Refused {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// A storage error as the relay's answer.
fn refusal(e: StorageError) -> RelayReply {
    let code = match &e {
        StorageError::NotFound => "not_found",
        StorageError::RangeNotSatisfiable => "range_not_satisfiable",
        StorageError::PermissionDenied(_) | StorageError::InvalidSettings(_) => "forbidden",
        _ => "unavailable",
    };
    refused(code, &e.to_string())
}

/// Reads a stream's header: the preamble and one frame.
async fn read_header<M: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<M> {
    let mut pre = [0u8; proto::PREAMBLE_LEN];
    recv.read_exact(&mut pre).await?;
    check_preamble(&pre)?;
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; frame_len(prefix, proto::MAX_RELAY_FRAME)?];
    recv.read_exact(&mut body).await?;
    Ok(decode_body(&body)?)
}

async fn write_reply(send: &mut quinn::SendStream, reply: &RelayReply) -> anyhow::Result<()> {
    let mut out = preamble(proto::VERSION).to_vec();
    out.extend(encode(reply)?);
    send.write_all(&out).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The writing side.

/// A transfer's source, read through the spoke that relays it, over one or more QUIC
/// connections (stripes): each has its own congestion controller, so a lost packet slows one
/// stripe, not the transfer, and several controllers fill a long path that one leaves half
/// empty (`bench wan`). Each range goes to the stripe with the fewest bytes still to come
/// (a part about to end leaves its stripe to the next part, which the transfer engine requests
/// ahead: `shared::storage::transfer::PIPELINE_LEAD`).
pub struct Relayed {
    stripes: Vec<Stripe>,
    from: RelayFrom,
    _endpoint: quinn::Endpoint,
}

struct Stripe {
    conn: quinn::Connection,
    /// Bytes of the ranges asked over it that have not arrived yet.
    due: Arc<AtomicU64>,
}

/// Counts a range's bytes as due on its stripe until they arrive or the range's stream is
/// dropped.
struct Due {
    stripe: Arc<AtomicU64>,
    left: u64,
}

impl Due {
    fn arrived(&mut self, n: u64) {
        let n = n.min(self.left);
        self.left -= n;
        self.stripe.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for Due {
    fn drop(&mut self) {
        self.stripe.fetch_sub(self.left, Ordering::Relaxed);
    }
}

impl Relayed {
    /// Dials the relaying spoke named in `from` with this spoke's certificate, `stripes`
    /// connections at once (at least one must answer; the others are optional).
    pub async fn connect(
        ident: &Identity,
        from: &RelayFrom,
        congestion: Congestion,
        stripes: u32,
    ) -> Result<Relayed, StorageError> {
        Self::connect_from(None, ident, from, congestion, stripes).await
    }

    /// [`Relayed::connect`] from a local address (`None`: the wildcard of the target's family).
    async fn connect_from(
        bind: Option<SocketAddr>,
        ident: &Identity,
        from: &RelayFrom,
        congestion: Congestion,
        stripes: u32,
    ) -> Result<Relayed, StorageError> {
        let unavailable =
            |e: String| StorageError::Unavailable(format!("relay spoke {}: {e}", from.spoke_id));
        let target: SocketAddr = shared::resolve::resolve(&from.addr)
            .await
            .map_err(|e| unavailable(format!("resolving {}: {e}", from.addr)))?;
        let bind: SocketAddr = bind.unwrap_or(if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        });
        let tls = shared::pki::relay_client_config(
            &ident.ca_pem,
            &ident.cert_pem,
            &ident.key_pem,
            &ident.revoked,
        )
        .map_err(|e| StorageError::Other(format!("relay TLS config: {e}")))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| StorageError::Other(format!("relay TLS config: {e}")))?;
        let stripes = stripes.clamp(1, 16);
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(bulk_transport(congestion, KEEP_ALIVE, stripes)));
        let mut endpoint =
            shared::quic::endpoint(bind, None).map_err(|e| unavailable(e.to_string()))?;
        endpoint.set_default_client_config(client);
        let name = shared::pki::spoke_server_name(from.spoke_id);
        let dial = || async {
            let connecting = endpoint
                .connect(target, &name)
                .map_err(|e| unavailable(e.to_string()))?;
            tokio::time::timeout(HEADER_TIMEOUT, connecting)
                .await
                .map_err(|_| {
                    unavailable(format!("no answer from {target} within {HEADER_TIMEOUT:?}"))
                })?
                .map_err(|e| unavailable(e.to_string()))
        };
        let dialed = futures::future::join_all((0..stripes).map(|_| dial())).await;
        let mut conns = Vec::new();
        let mut first_error = None;
        for d in dialed {
            match d {
                Ok(c) => conns.push(Stripe {
                    conn: c,
                    due: Arc::default(),
                }),
                Err(e) => {
                    tracing::debug!(relay = from.spoke_id, error = %e, "a relay stripe failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if conns.is_empty() {
            return Err(first_error.unwrap_or_else(|| unavailable("no connection".into())));
        }
        tracing::info!(relay = from.spoke_id, %target, congestion = congestion.as_str(),
                       stripes = conns.len(), "reading the source through a relay spoke");
        Ok(Relayed {
            stripes: conns,
            from: from.clone(),
            _endpoint: endpoint,
        })
    }

    /// Closes the connections, logging what the paths did (for tuning: a sender held back by
    /// our windows says so in `*_blocked` frames).
    pub fn close(&self) {
        for (i, st) in self.stripes.iter().enumerate() {
            log_path(&st.conn, Some(i), "relay connection closed");
            st.conn
                .close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"done");
        }
    }

    /// The open stripe with the fewest bytes due (the first of equals), with `len` more due.
    fn pick(&self, len: u64) -> (&quinn::Connection, Due) {
        let st = self
            .stripes
            .iter()
            .filter(|s| s.conn.close_reason().is_none())
            .min_by_key(|s| s.due.load(Ordering::Relaxed))
            .unwrap_or(&self.stripes[0]);
        st.due.fetch_add(len, Ordering::Relaxed);
        (
            &st.conn,
            Due {
                stripe: st.due.clone(),
                left: len,
            },
        )
    }

    async fn request(&self, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        let lost = |e: String| {
            StorageError::Interrupted(format!("relay spoke {}: {e}", self.from.spoke_id))
        };
        let (conn, due) = self.pick(len);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let mut out = preamble(proto::VERSION).to_vec();
        out.extend(
            encode(&RelayRequest {
                grant_id: self.from.grant_id.clone(),
                expires: self.from.expires,
                signature: self.from.signature.clone(),
                offset,
                len,
            })
            .map_err(|e| StorageError::Other(e.to_string()))?,
        );
        send.write_all(&out)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let _ = send.finish();
        let reply = tokio::time::timeout(HEADER_TIMEOUT, read_header::<RelayReply>(&mut recv))
            .await
            .map_err(|_| lost(format!("no answer within {HEADER_TIMEOUT:?}")))?
            .map_err(|e| lost(format!("{e:#}")))?;
        match reply {
            RelayReply::Ok => {}
            RelayReply::Refused { code, message } => {
                let m = format!("relay spoke {}: {message}", self.from.spoke_id);
                return Err(match code.as_str() {
                    "not_found" => StorageError::NotFound,
                    "range_not_satisfiable" => StorageError::RangeNotSatisfiable,
                    "forbidden" => StorageError::PermissionDenied(m),
                    _ => StorageError::Unavailable(m),
                });
            }
        }
        let spoke = self.from.spoke_id;
        Ok(Box::pin(futures::stream::unfold(
            Some((recv, due)),
            move |state| async move {
                let (mut recv, mut due) = state?;
                match recv.read_chunk(READ_CHUNK, true).await {
                    Ok(Some(c)) => {
                        due.arrived(c.bytes.len() as u64);
                        Some((Ok::<Bytes, std::io::Error>(c.bytes), Some((recv, due))))
                    }
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(std::io::Error::other(format!("relay spoke {spoke}: {e}"))),
                        None,
                    )),
                }
            },
        )))
    }
}

impl RangeSource for Relayed {
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_> {
        Box::pin(self.request(offset, len))
    }
}

#[cfg(test)]
mod tests {
    //! The relay endpoint against hostile enrolled peers, over real QUIC on loopback.
    use super::*;
    use crate::config::SpokeConfig;
    use crate::fsroots::FsRoots;
    use shared::proto::Location;
    use shared::storage::service::FsSettings;
    use shared::storage::ServiceConfig;
    use std::time::Instant;

    const KEY: [u8; 32] = [7; 32];
    const LEN: usize = 3 << 20;

    fn identity(ca: &shared::pki::Ca, id: i64, settings: &SpokeSettings) -> Identity {
        let (key_pem, csr) = shared::pki::new_key_and_csr("test").expect("csr");
        let cert_pem = ca
            .sign_spoke_csr(&csr, id, None, Duration::from_secs(3600))
            .expect("cert");
        Identity {
            config: SpokeConfig {
                spoke_id: id,
                name: format!("s{id}"),
                region: "r".into(),
                hubs: Vec::new(),
                settings: settings.clone(),
                advertise: None,
                listen: None,
            },
            cert_pem,
            key_pem,
            ca_pem: ca.cert_pem.clone(),
            hub_ca_pem: ca.cert_pem.clone(),
            revoked: Default::default(),
        }
    }

    /// A relaying spoke (id 1) on loopback with one `RELAY` grant over a 3 MiB file, for
    /// spoke 2; returns what a writer needs and what keeps it alive.
    struct Lab {
        ca: shared::pki::Ca,
        settings: SpokeSettings,
        from: RelayFrom,
        data: Vec<u8>,
        limits: Arc<RelayLimits>,
        _dir: tempfile::TempDir,
        shutdown: CancellationToken,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    /// Grants holding one `RELAY` grant over `path` of `service` for spoke 2, and the
    /// reference a writer gets for it (without the relay's address).
    fn granted(service: ServiceConfig, path: &str, roots: FsRoots) -> (Arc<Grants>, RelayFrom) {
        let grants = Arc::new(Grants::new(roots));
        use base64::Engine as _;
        grants.set_key(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(KEY));
        let expires = now_secs() + 600;
        let grant = Grant {
            grant_id: "0123456789abcdef0123456789abcdef".into(),
            method: "RELAY".into(),
            account: 9,
            location: Location {
                service,
                path: path.into(),
            },
            file_id: String::new(),
            expires,
            max_bytes: 0,
            replace: false,
            declared_len: None,
            staging: None,
            claim: None,
            receipt: None,
            part: None,
            reader: Some(2),
        };
        let signature = shared::auth::sign_data(
            &Tagger::new(KEY),
            &DataClaims {
                method: "RELAY",
                grant: &grant.grant_id,
                account: grant.account,
                target: &grant.location.path,
                expires,
            },
        );
        let from = RelayFrom {
            spoke_id: 1,
            addr: String::new(),
            grant_id: grant.grant_id.clone(),
            expires,
            signature: shared::proto::Redacted(signature),
        };
        grants.add(grant);
        (grants, from)
    }

    async fn lab(settings: SpokeSettings) -> Lab {
        let ca = shared::pki::Ca::generate("test", Duration::from_secs(3600)).expect("ca");
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().canonicalize().expect("canonical");
        let data: Vec<u8> = (0..LEN).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(root.join("src.bin"), &data).expect("write");
        let (grants, from) = granted(
            ServiceConfig::Fs(FsSettings {
                root: root.display().to_string(),
            }),
            "src.bin",
            FsRoots::new(vec![root.clone()]),
        );
        let relaying = identity(&ca, 1, &settings);
        let endpoint = bind(&relaying, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let limits = RelayLimits::new(&settings);
        tokio::spawn(serve(
            endpoint,
            ServeOptions {
                revoked: relaying.revoked.clone(),
                grants,
                scratch: dir.path().join("scratch"),
                egress: Default::default(),
                limits: limits.clone(),
            },
            shutdown.clone(),
        ));
        Lab {
            ca,
            settings,
            from: RelayFrom {
                addr: addr.to_string(),
                ..from
            },
            data,
            limits,
            _dir: dir,
            shutdown,
        }
    }

    async fn read_all(r: &Relayed, len: usize) -> Result<Vec<u8>, StorageError> {
        use futures::TryStreamExt as _;
        let body = r.open(0, len as u64).await?;
        let chunks: Vec<Bytes> = body
            .try_collect()
            .await
            .map_err(|e| StorageError::Interrupted(e.to_string()))?;
        Ok(chunks.concat())
    }

    /// A grant serves the spoke it names and no other enrolled spoke, even one holding its
    /// id and signature (a hostile peer that learned them).
    #[tokio::test]
    async fn a_relay_grant_serves_only_the_spoke_it_names() {
        let lab = lab(SpokeSettings::default()).await;
        let writer = identity(&lab.ca, 2, &lab.settings);
        let r = Relayed::connect(&writer, &lab.from, Congestion::Bbr, 2)
            .await
            .expect("connect");
        assert_eq!(read_all(&r, LEN).await.expect("served"), lab.data);
        let other = identity(&lab.ca, 3, &lab.settings);
        let r = Relayed::connect(&other, &lab.from, Congestion::Bbr, 1)
            .await
            .expect("a network certificate connects");
        match read_all(&r, LEN).await {
            Err(StorageError::PermissionDenied(m)) => {
                assert!(m.contains("for another spoke"), "{m}")
            }
            other => panic!("spoke 3 read spoke 2's grant: {:?}", other.map(|b| b.len())),
        }
    }

    /// A transfer's stripes ask for their first ranges at once: the grant's source (for S3 an
    /// HTTP client and its TLS roots, milliseconds of CPU each) is opened once and shared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_first_requests_of_a_grant_share_one_source() {
        let (grants, from) = granted(
            ServiceConfig::S3(shared::storage::service::S3Settings {
                bucket: "bucket".into(),
                endpoint: Some("https://s3.example.com".into()),
                region: None,
                access_key_id: "key".into(),
                secret_access_key: "secret".into(),
                root: None,
            }),
            "src.bin",
            FsRoots::new(Vec::new()),
        );
        let dir = tempfile::tempdir().expect("tmp");
        let server = Arc::new(Server {
            grants,
            scratch: dir.path().join("scratch"),
            egress: Default::default(),
            sources: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        });
        let req = RelayRequest {
            grant_id: from.grant_id.clone(),
            expires: from.expires,
            signature: from.signature.clone(),
            offset: 0,
            len: 1,
        };
        const ASKS: usize = 8;
        let start = Arc::new(tokio::sync::Barrier::new(ASKS));
        let asks: Vec<_> = (0..ASKS)
            .map(|_| {
                let (server, req, start) = (server.clone(), req.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    server.authorize(2, &req).await.map(|_| ())
                })
            })
            .collect();
        for ask in asks {
            ask.await.expect("task").expect("authorized");
        }
        assert_eq!(server.opened.load(Ordering::Relaxed), 1, "sources opened");
        // Another spoke's request is refused before any source is opened for it.
        let refused = server.authorize(3, &req).await.map(|_| ());
        assert!(
            matches!(refused, Err(RelayReply::Refused { ref code, .. }) if code == "forbidden")
        );
        assert_eq!(server.opened.load(Ordering::Relaxed), 1, "sources opened");
    }

    /// How many of `r`'s connections the relay closed as over the spoke's share: each is
    /// asked for a range, which the relay answers (here, refuses) only on a connection it kept.
    async fn busy_stripes(r: &Relayed) -> usize {
        let probes = r.stripes.iter().map(|s| async {
            let asked = async {
                let (mut send, mut recv) = s.conn.open_bi().await?;
                let mut out = preamble(proto::VERSION).to_vec();
                out.extend(encode(&RelayRequest {
                    grant_id: "unknown".into(),
                    expires: 0,
                    signature: shared::proto::Redacted(String::new()),
                    offset: 0,
                    len: 1,
                })?);
                send.write_all(&out).await?;
                read_header::<RelayReply>(&mut recv).await
            };
            let answered = tokio::time::timeout(HEADER_TIMEOUT, asked).await;
            match (answered, s.conn.close_reason()) {
                (Ok(Ok(_)), _) => false,
                (_, Some(quinn::ConnectionError::ApplicationClosed(c))) => {
                    c.error_code == quinn::VarInt::from_u32(proto::CLOSE_BUSY)
                }
                (other, reason) => panic!("neither answered nor busy: {other:?} {reason:?}"),
            }
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .filter(|b| *b)
            .count()
    }

    /// A hostile enrolled spoke cannot hold more than its share of relay connections (here 8:
    /// one job striped over one connection, twice over, at least 8); the spoke the grant is
    /// for still connects and reads, and the share comes back when the hostile spoke closes.
    #[tokio::test]
    async fn an_enrolled_spoke_holds_at_most_its_share_of_relay_connections() {
        let settings = SpokeSettings {
            max_jobs: 1,
            relay_connections: 1,
            ..SpokeSettings::default()
        };
        let lab = lab(settings).await;
        let hostile = identity(&lab.ca, 3, &lab.settings);
        let mut held = Vec::new();
        let mut busy = 0;
        for _ in 0..2 {
            let r = Relayed::connect(&hostile, &lab.from, Congestion::Bbr, 16)
                .await
                .expect("connect");
            busy += busy_stripes(&r).await;
            held.push(r);
        }
        assert_eq!(busy, 32 - 8, "spoke 3 kept {} connections", 32 - busy);
        let writer = identity(&lab.ca, 2, &lab.settings);
        let r = Relayed::connect(&writer, &lab.from, Congestion::Bbr, 1)
            .await
            .expect("the writer connects");
        assert_eq!(read_all(&r, LEN).await.expect("served"), lab.data);
        for r in &held {
            r.close();
        }
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = Relayed::connect(&hostile, &lab.from, Congestion::Bbr, 8)
                .await
                .expect("connect");
            if busy_stripes(&r).await == 0 {
                break;
            }
            r.close();
            assert!(Instant::now() < deadline, "the share never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to 10 s for the relay to serve `n` connections.
    async fn serving(lab: &Lab, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.limits.serving() != n {
            assert!(
                Instant::now() < deadline,
                "serving {} connections, not {n}",
                lab.limits.serving()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every connection the relay serves shares one send window: a second transfer's stripes
    /// (or a peer that opens all it may and reads slowly) take parts of the first one's
    /// window instead of adding windows of their own, and a closed connection gives its part
    /// back.
    #[tokio::test]
    async fn served_connections_share_one_send_window() {
        let lab = lab(SpokeSettings {
            max_jobs: 16,
            relay_connections: 4,
            ..SpokeSettings::default()
        })
        .await;
        let writer = identity(&lab.ca, 2, &lab.settings);
        let first = Relayed::connect(&writer, &lab.from, Congestion::Bbr, 4)
            .await
            .expect("connect");
        assert_eq!(read_all(&first, LEN).await.expect("served"), lab.data);
        serving(&lab, 4).await;
        let hostile = identity(&lab.ca, 3, &lab.settings);
        let many = Relayed::connect(&hostile, &lab.from, Congestion::Bbr, 16)
            .await
            .expect("connect");
        assert_eq!(busy_stripes(&many).await, 0, "all 16 kept");
        serving(&lab, 20).await;
        // The first transfer still reads, over its smaller share.
        assert_eq!(read_all(&first, LEN).await.expect("served"), lab.data);
        many.close();
        serving(&lab, 4).await;
        first.close();
        serving(&lab, 0).await;
        // What the relay may hold in send buffers: the one window, until so many connections
        // share it that each is at its floor.
        for n in [1, 4, 20, 96, 97, 1024] {
            let all = send_share(n) * n as u64;
            assert!(
                all <= SEND_WINDOW.max(n as u64 * MIN_SEND_SHARE),
                "{n}: {all}"
            );
            assert!(send_share(n) >= MIN_SEND_SHARE);
        }
        assert_eq!(send_share(4), SEND_WINDOW / 4);
    }

    /// Handshakes that never finish (a flood of first packets from one address) take at most
    /// [`MAX_HANDSHAKES_PER_ADDR`] slots: more from that address are refused, another address
    /// still gets in.
    #[tokio::test]
    async fn stalled_handshakes_from_one_address_are_bounded() {
        let lab = lab(SpokeSettings::default()).await;
        let relay: SocketAddr = lab.from.addr.parse().expect("addr");
        // Capture the first datagram (a QUIC Initial) of MAX_HANDSHAKES_PER_ADDR clients and
        // replay each to the relay from its own socket, never answering what comes back.
        let capture = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = RelayFrom {
            addr: capture.local_addr().expect("addr").to_string(),
            ..lab.from.clone()
        };
        let writer = identity(&lab.ca, 2, &lab.settings);
        let dialers = tokio::spawn({
            let writer = identity(&lab.ca, 2, &lab.settings);
            async move {
                let mut set = Vec::new();
                for _ in 0..MAX_HANDSHAKES_PER_ADDR {
                    let (w, f) = (&writer, fake.clone());
                    set.push(async move {
                        let _ = Relayed::connect(w, &f, Congestion::Bbr, 1).await;
                    });
                }
                futures::future::join_all(set).await;
            }
        });
        let mut seen = std::collections::HashSet::new();
        let mut stalled = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while seen.len() < MAX_HANDSHAKES_PER_ADDR {
            let (n, src) =
                tokio::time::timeout(Duration::from_secs(10), capture.recv_from(&mut buf))
                    .await
                    .expect("initial packets")
                    .expect("recv");
            if seen.insert(src) {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.send_to(&buf[..n], relay).expect("send");
                stalled.push(s);
            }
        }
        dialers.abort();
        // Until the relay has taken them all in, a handshake may still get through: poll, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = loop {
            let r = Relayed::connect(&writer, &lab.from, Congestion::Bbr, 1).await;
            match r {
                Ok(through) if Instant::now() < deadline => {
                    through.close();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => break r,
            }
        };
        assert!(
            refused
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("refused")),
            "a handshake beyond the bound: {:?}",
            refused.as_ref().err()
        );
        let other = Relayed::connect_from(
            Some("127.0.0.2:0".parse().expect("addr")),
            &writer,
            &lab.from,
            Congestion::Bbr,
            1,
        )
        .await
        .expect("another address connects");
        assert_eq!(read_all(&other, LEN).await.expect("served"), lab.data);
        drop(stalled);
    }
}
