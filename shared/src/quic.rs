//! QUIC settings for bulk data on long paths (the spoke↔spoke relay): flow-control windows sized
//! for the bandwidth-delay product, a configurable congestion controller and UDP sockets with
//! large kernel buffers.
//!
//! quinn's defaults (1.25 MB stream window, 10 MB send window) cap one stream at ~100 Mbit/s on
//! a 100 ms path; [`bulk_transport`] allows 24 MiB per stream, per connection and unacknowledged
//! at the sender, shared by a transfer's stripes ([`bulk_transport`]'s `stripes`: 6 MiB each of
//! the default 4, so striping does not multiply memory). On a lossy path a stream's window also
//! covers the data behind each hole until its retransmission arrives (1-2 RTTs more): `bench
//! wan` case c (200 ms, 1 % loss) crossed the WAN at 232 Mbit/s when the stream window was
//! 16 MiB (4 MiB per stripe; `stream_data_blocked` 162 times) and ~355 with 24 (and the parts
//! pipelined). Larger windows buy more on lossy paths but the relaying spoke holds its whole
//! send window: with 28 MiB it peaked at 57-79 MiB RSS (cubic the most), with 24 at 52-55; with
//! 64 MiB at 126. The kernel clamps socket buffers to
//! `net.core.rmem_max`/`wmem_max` unless the process has CAP_NET_ADMIN (a spoke run as root
//! takes [`UDP_BUFFER`] anyway); [`bind_udp`] reports what it actually got so operators can
//! raise those limits.

use nix::sys::socket::sockopt;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Bytes the peer may send on one stream before we read them.
pub const STREAM_WINDOW: u64 = 24 << 20;
/// Bytes the peer may send on the whole connection before we read them.
pub const CONNECTION_WINDOW: u64 = 24 << 20;
/// Bytes we keep in flight (unacknowledged) on the connection.
pub const SEND_WINDOW: u64 = 24 << 20;
/// UDP socket buffer size asked of the kernel. The relay's receiver must absorb the moments
/// its process is not scheduled (a busy 2-core host): at 8 MiB, `bench wan` case a lost ~1 %
/// of the relay's datagrams to full receive buffers (`RcvbufErrors`, 8,893 of 770,164 in one
/// 1 GiB copy, in bursts of up to 2,230 per 100 ms), which QUIC takes for congestion; at 32 MiB
/// none. It is kernel memory, used only while the reader is behind, not the process's RSS.
pub const UDP_BUFFER: usize = 32 << 20;

/// The congestion controller of bulk connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    /// CUBIC (RFC 9438): well understood, fair to TCP, but a loss-based controller: on a long
    /// lossy path it collapses (`bench wan`, 100 ms with 0.1 % loss: 5-7 Mbit/s).
    Cubic,
    /// quinn's BBR (experimental upstream), the default: it keeps its rate under random loss
    /// (`bench wan`, 100 ms: 472 Mbit/s with 0.1 % loss, 469 clean, against cubic's 484 clean
    /// and 5-7 lossy). The relay's links are the long paths between regions, where random loss
    /// is what it meets.
    #[default]
    Bbr,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cubic => "cubic",
            Self::Bbr => "bbr",
            Self::NewReno => "new_reno",
        }
    }
}

/// The smallest window a striped connection gets (a part's stream must still fill its share
/// of a long path).
pub const MIN_STRIPE_WINDOW: u64 = 4 << 20;

/// Transport settings for relay connections: big windows, the chosen controller, and
/// keep-alives well inside the idle timeout. `stripes` is how many connections carry one
/// transfer between the same spokes: each gets that share of the windows (at least
/// [`MIN_STRIPE_WINDOW`]), so striping does not multiply a spoke's memory.
pub fn bulk_transport(
    congestion: Congestion,
    keep_alive: Duration,
    stripes: u32,
) -> quinn::TransportConfig {
    let share = |w: u64| (w / u64::from(stripes.max(1))).max(MIN_STRIPE_WINDOW);
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(varint(share(STREAM_WINDOW).min(share(CONNECTION_WINDOW))));
    t.receive_window(varint(share(CONNECTION_WINDOW)));
    t.send_window(share(SEND_WINDOW));
    t.keep_alive_interval(Some(keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from((keep_alive * 6).max(Duration::from_secs(10))) {
        t.max_idle_timeout(Some(idle));
    }
    match congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
        Congestion::NewReno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
    };
    t
}

fn varint(v: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX)
}

/// A UDP socket bound to `addr` with [`UDP_BUFFER`]-byte receive and send buffers (or as much
/// as the kernel allows). Returns the socket and the buffer sizes granted `(recv, send)`.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, (usize, usize))> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too on a wildcard listener.
        let _ = socket.set_only_v6(false);
    }
    // Failures only mean smaller buffers; what we got is reported below.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    // Linux reports twice the size asked (the other half is bookkeeping).
    let granted = |s: &socket2::Socket| {
        (
            s.recv_buffer_size().unwrap_or(0) / 2,
            s.send_buffer_size().unwrap_or(0) / 2,
        )
    };
    // Past `net.core.rmem_max`/`wmem_max` only with CAP_NET_ADMIN (a spoke run as root):
    // refused otherwise, and the clamped size stays.
    let (recv, send) = granted(&socket);
    if recv < UDP_BUFFER {
        let _ = nix::sys::socket::setsockopt(&socket, sockopt::RcvBufForce, &UDP_BUFFER);
    }
    if send < UDP_BUFFER {
        let _ = nix::sys::socket::setsockopt(&socket, sockopt::SndBufForce, &UDP_BUFFER);
    }
    socket.bind(&addr.into())?;
    let granted = granted(&socket);
    if granted.0 < UDP_BUFFER || granted.1 < UDP_BUFFER {
        tracing::warn!(
            recv = granted.0,
            send = granted.1,
            wanted = UDP_BUFFER,
            "UDP buffers are smaller than wanted; raise net.core.rmem_max and net.core.wmem_max \
             for full speed on long paths"
        );
    }
    Ok((socket.into(), granted))
}

/// A quinn endpoint on a [`bind_udp`] socket; `server` makes it accept connections too.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let (socket, _) = bind_udp(addr)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_names_parse_and_unknown_ones_are_refused() {
        for c in [Congestion::Cubic, Congestion::Bbr, Congestion::NewReno] {
            let parsed: Congestion =
                serde_json::from_value(serde_json::json!(c.as_str())).expect("parse");
            assert_eq!(parsed, c);
        }
        assert!(serde_json::from_value::<Congestion>(serde_json::json!("vegas")).is_err());
        assert_eq!(Congestion::default(), Congestion::Bbr);
    }

    /// Bytes a client can push on one stream to a server that never reads, before flow
    /// control stops it (bounded: 32 writes of 1 MiB, each given 300 ms).
    async fn unread_credit(transport: quinn::TransportConfig) -> u64 {
        let ca = crate::pki::Ca::generate("test CA", Duration::from_secs(3600)).expect("ca");
        let (chain, key) = ca
            .issue_hub(&["127.0.0.1".to_owned()], Duration::from_secs(3600))
            .expect("hub cert");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            crate::pki::certs(&chain).expect("chain"),
            crate::pki::private_key(&key).expect("key"),
        )
        .expect("server tls");
        tls.alpn_protocols = vec![b"t".to_vec()];
        let transport = Arc::new(transport);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic server"),
        ));
        server.transport_config(transport.clone());
        let server_ep =
            endpoint("127.0.0.1:0".parse().expect("addr"), Some(server)).expect("server");
        let addr = server_ep.local_addr().expect("local addr");
        // The server accepts the stream and holds it unread.
        let holder = tokio::spawn(async move {
            let conn = server_ep
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            let stream = conn.accept_uni().await.expect("stream");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop((stream, conn));
        });
        let mut client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::pki::certs(&ca.cert_pem).expect("ca pem") {
                roots.add(c).expect("root");
            }
            roots
        })
        .with_no_client_auth();
        client_tls.alpn_protocols = vec![b"t".to_vec()];
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("quic client"),
        ));
        client.transport_config(transport);
        let mut client_ep = endpoint("127.0.0.1:0".parse().expect("addr"), None).expect("client");
        client_ep.set_default_client_config(client);
        let conn = client_ep
            .connect(addr, "127.0.0.1")
            .expect("connect")
            .await
            .expect("handshake");
        let mut send = conn.open_uni().await.expect("open");
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        for _ in 0..32 {
            match tokio::time::timeout(Duration::from_millis(300), send.write(&chunk)).await {
                Ok(Ok(n)) => sent += n as u64,
                _ => break,
            }
        }
        holder.abort();
        sent
    }

    #[tokio::test]
    async fn bulk_windows_let_a_stream_window_fly_where_defaults_stop_near_1_mib() {
        let ours = unread_credit(bulk_transport(Congestion::Bbr, Duration::from_secs(1), 1)).await;
        let default = unread_credit(quinn::TransportConfig::default()).await;
        assert!(
            ours >= STREAM_WINDOW - (1 << 20),
            "only {ours} bytes were in flight with the bulk transport"
        );
        assert!(
            default < 4 << 20,
            "the default transport let {default} bytes fly: the test no longer measures windows"
        );
    }

    #[tokio::test]
    async fn striped_connections_share_the_windows_down_to_a_floor() {
        // Four stripes: a quarter of the stream window each (6 MiB).
        let four = unread_credit(bulk_transport(Congestion::Bbr, Duration::from_secs(1), 4)).await;
        let quarter = STREAM_WINDOW / 4;
        assert!(
            (quarter - (1 << 20)..=quarter + (1 << 20)).contains(&four),
            "{four} bytes flew on one of four stripes"
        );
        // Sixteen stripes would get 1 MiB each: the floor keeps 4 MiB.
        let many = unread_credit(bulk_transport(Congestion::Bbr, Duration::from_secs(1), 16)).await;
        assert!(
            many >= MIN_STRIPE_WINDOW - (1 << 20),
            "{many} bytes flew on one of sixteen stripes"
        );
    }

    #[test]
    fn udp_buffers_are_as_large_as_the_kernel_allows() {
        let max = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        // With CAP_NET_ADMIN (bit 12 of the effective set) the limits do not apply.
        let net_admin = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & (1 << 12) != 0);
        let limit = |name: &str| match net_admin {
            true => UDP_BUFFER,
            false => UDP_BUFFER.min(max(name)),
        };
        let (_, (recv, send)) = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        assert!(recv >= limit("rmem_max"), "recv buffer {recv}");
        assert!(send >= limit("wmem_max"), "send buffer {send}");
        assert!(
            recv > 212_992 / 2,
            "the default buffer size was left unchanged"
        );
    }
}
