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

use crate::config::Identity;
use crate::data::{lock, now_secs, Grants};
use bytes::Bytes;
use shared::auth::{verify_data, DataClaims, Tagger};
use shared::proto::{
    self, check_preamble, decode_body, encode, frame_len, preamble, RelayFrom, RelayReply,
    RelayRequest,
};
use shared::quic::{bulk_transport, Congestion};
use shared::storage::transfer::{range_source, ByteStream, OpenFuture, RangeSource};
use shared::storage::{ConnectOptions, Connector, StorageError, StoragePath};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
/// Sources kept open for reuse (one per grant).
const MAX_SOURCES: usize = 256;

// ---------------------------------------------------------------------------------------------
// The relaying side.

/// State of a relay endpoint.
struct Server {
    grants: Arc<Grants>,
    scratch: PathBuf,
    /// The hub's SSRF policy for provider connections.
    egress: shared::egress::EgressPolicy,
    /// Sources by grant id, so the parts of one transfer share an HTTP client.
    sources: Mutex<HashMap<String, Arc<dyn RangeSource>>>,
}

/// The relay endpoint's server config: the spoke's certificate, network-CA clients only, bulk
/// transport with `congestion` (the relaying side sends the bytes, so its controller counts)
/// and windows shared by `stripes` connections per transfer.
pub fn server_config(
    ident: &Identity,
    congestion: Congestion,
    stripes: u32,
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
    server.transport_config(Arc::new(bulk_transport(congestion, KEEP_ALIVE, stripes)));
    Ok(server)
}

/// Binds the relay endpoint on `listen` (UDP) with the spoke's certificate and the congestion
/// controller it enrolled with (a hub's welcome may change it: [`server_config`]).
pub fn bind(ident: &Identity, listen: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let s = &ident.config.settings;
    let server = server_config(ident, s.congestion, s.relay_connections)?;
    let endpoint = shared::quic::endpoint(listen, Some(server))
        .map_err(|e| anyhow::anyhow!("binding the relay endpoint on UDP {listen}: {e}"))?;
    tracing::info!(%listen, "relay endpoint listening (QUIC)");
    Ok(endpoint)
}

/// Serves relay requests until `shutdown` fires.
pub async fn serve(
    endpoint: quinn::Endpoint,
    revoked: shared::pki::Revoked,
    grants: Arc<Grants>,
    scratch: PathBuf,
    egress: shared::egress::EgressPolicy,
    shutdown: CancellationToken,
) {
    let server = Arc::new(Server {
        grants,
        scratch,
        egress,
        sources: Mutex::new(HashMap::new()),
    });
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            () = shutdown.cancelled() => {
                endpoint.close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"spoke shutting down");
                return;
            }
        };
        let (server, revoked) = (server.clone(), revoked.clone());
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HEADER_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "relay handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = peer_leaf(&conn);
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
                tokio::spawn(async move { server.stream(send, recv).await });
            }
            log_path(&conn, None, "relay connection served");
        });
    }
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
    async fn stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
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
        let opened = match self.authorize(&req).await {
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

    /// Checks the request against its grant and returns the grant's source.
    async fn authorize(&self, req: &RelayRequest) -> Result<Arc<dyn RangeSource>, RelayReply> {
        let refused = |code: &str, message: &str| RelayReply::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        };
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
        if let Err(e) = verify_data(&Tagger::new(key), &claims, &req.signature.0, now_secs()) {
            return Err(refused("forbidden", &e.to_string()));
        }
        if let Some(s) = lock(&self.sources).get(&grant.grant_id) {
            return Ok(s.clone());
        }
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
        let source = Connector::connect(&grant.location.service, &opts)
            .await
            .and_then(|c| range_source(&grant.location.service, &c, &path))
            .map_err(|e| refused("unavailable", &e.to_string()))?;
        let mut sources = lock(&self.sources);
        if sources.len() >= MAX_SOURCES {
            sources.clear();
        }
        sources.insert(grant.grant_id.clone(), source.clone());
        Ok(source)
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

/// A storage error as the relay's answer.
fn refusal(e: StorageError) -> RelayReply {
    let code = match &e {
        StorageError::NotFound => "not_found",
        StorageError::RangeNotSatisfiable => "range_not_satisfiable",
        StorageError::PermissionDenied(_) | StorageError::InvalidSettings(_) => "forbidden",
        _ => "unavailable",
    };
    RelayReply::Refused {
        code: code.to_owned(),
        message: e.to_string(),
    }
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
/// empty (`bench wan`). Each range goes to the stripe with the fewest open.
pub struct Relayed {
    stripes: Vec<Stripe>,
    from: RelayFrom,
    _endpoint: quinn::Endpoint,
}

struct Stripe {
    conn: quinn::Connection,
    /// Ranges being read over it.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a range as open on its stripe until the range's stream is dropped.
struct OpenRange(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenRange {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
        let unavailable =
            |e: String| StorageError::Unavailable(format!("relay spoke {}: {e}", from.spoke_id));
        let target: SocketAddr = shared::resolve::resolve(&from.addr)
            .await
            .map_err(|e| unavailable(format!("resolving {}: {e}", from.addr)))?;
        let bind: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
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
                    open: Arc::default(),
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

    /// The stripe with the fewest open ranges (the first of equals), counted open.
    fn pick(&self) -> (&quinn::Connection, OpenRange) {
        use std::sync::atomic::Ordering;
        let st = self
            .stripes
            .iter()
            .filter(|s| s.conn.close_reason().is_none())
            .min_by_key(|s| s.open.load(Ordering::Relaxed))
            .unwrap_or(&self.stripes[0]);
        st.open.fetch_add(1, Ordering::Relaxed);
        (&st.conn, OpenRange(st.open.clone()))
    }

    async fn request(&self, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        let lost = |e: String| {
            StorageError::Interrupted(format!("relay spoke {}: {e}", self.from.spoke_id))
        };
        let (conn, open) = self.pick();
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
            Some((recv, open)),
            move |state| async move {
                let (mut recv, open) = state?;
                match recv.read_chunk(READ_CHUNK, true).await {
                    Ok(Some(c)) => Some((Ok::<Bytes, std::io::Error>(c.bytes), Some((recv, open)))),
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
