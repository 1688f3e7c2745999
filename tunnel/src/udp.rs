//! The UDP side of the gateway: one dual-stack socket with batched I/O through `quinn-udp`
//! (`sendmsg` with UDP GSO: one syscall for up to 64 equal-sized datagrams to one peer;
//! `recvmmsg` with UDP GRO: many datagrams per syscall), and [`TxBatch`], the buffer the
//! packet path encrypts into.

use crate::node::{Transmits, MAX_DATAGRAM};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::Interest;

/// Socket buffer size asked for (forced past `net.core.rmem_max` when running as root).
const SOCKET_BUFFER: usize = 8 << 20;
/// Bytes in one GSO send: the whole train must fit one 64 KiB IP datagram.
const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffers per `recvmmsg`, each large enough for one GRO train.
pub const RX_BUFFERS: usize = 16;

/// The gateway's UDP socket.
pub struct Udp {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
}

impl Udp {
    /// Binds `[::]:port` (accepting IPv4 too), or `0.0.0.0:port` where IPv6 is unavailable.
    pub fn bind(port: u16) -> io::Result<Arc<Udp>> {
        let (socket, dual_stack) = match bind_v6(port) {
            Ok(s) => (s, true),
            Err(e) => {
                tracing::debug!(error = %e, "no IPv6 socket, binding IPv4 only");
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
                (s, false)
            }
        };
        grow_buffers(&socket);
        socket.set_nonblocking(true)?;
        let std: std::net::UdpSocket = socket.into();
        let state = UdpSocketState::new(UdpSockRef::from(&std))?;
        let socket = tokio::net::UdpSocket::from_std(std)?;
        Ok(Arc::new(Udp {
            socket,
            state,
            dual_stack,
        }))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many datagrams one GSO send may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, 64)
    }

    /// A destination as this socket wants it (IPv4 as v4-mapped IPv6 on a dual-stack one).
    fn wire(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }

    async fn send(&self, t: &Transmit<'_>) {
        // `UdpSocketState::send` logs and swallows errors other than WouldBlock (a datagram
        // lost to a transient error is like one lost on the wire); WouldBlock waits for room.
        let r = self
            .socket
            .async_io(Interest::WRITABLE, || {
                self.state.send(UdpSockRef::from(&self.socket), t)
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "UDP send failed");
        }
    }

    /// Receives a batch into `rx`; returns how many buffers were filled.
    pub async fn recv(&self, rx: &mut RxBatch) -> io::Result<usize> {
        let RxBatch { bufs, meta } = rx;
        let mut it = bufs.iter_mut();
        let mut iovs: [IoSliceMut<'_>; RX_BUFFERS] =
            std::array::from_fn(|_| IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..])));
        self.socket
            .async_io(Interest::READABLE, || {
                self.state
                    .recv(UdpSockRef::from(&self.socket), &mut iovs, meta)
            })
            .await
    }
}

fn bind_v6(port: u16) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s)
}

/// Big socket buffers absorb the bursts a batch produces. As root the `*BUFFORCE` options
/// pass the system maximum; otherwise the plain options give what the system allows.
fn grow_buffers(s: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let n = SOCKET_BUFFER;
    if setsockopt(s, sockopt::RcvBufForce, &n).is_err() {
        let _ = s.set_recv_buffer_size(n);
    }
    if setsockopt(s, sockopt::SndBufForce, &n).is_err() {
        let _ = s.set_send_buffer_size(n);
    }
}

/// Receive buffers and their metadata.
pub struct RxBatch {
    bufs: Vec<Vec<u8>>,
    meta: [RecvMeta; RX_BUFFERS],
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            bufs: (0..RX_BUFFERS).map(|_| vec![0u8; 1 << 16]).collect(),
            meta: [RecvMeta::default(); RX_BUFFERS],
        }
    }
}

impl RxBatch {
    /// The datagrams of the first `n` buffers (GRO trains split at their stride), each with
    /// its sender in plain form (no v4-mapped IPv6).
    pub fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.bufs
            .iter()
            .zip(self.meta.iter())
            .take(n)
            .flat_map(|(buf, m)| {
                let from = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                let data = &buf[..m.len.min(buf.len())];
                // An empty datagram is still a datagram (garbage, to be counted), but `chunks`
                // of an empty slice yields nothing.
                let stride = if data.is_empty() { 1 } else { m.stride.max(1) };
                let empty: &[u8] = &[];
                let first = data.is_empty().then_some((from, empty));
                first
                    .into_iter()
                    .chain(data.chunks(stride).map(move |d| (from, d)))
            })
    }
}

/// A run of datagrams to one destination, all `seg` bytes but maybe the last.
struct Train {
    to: SocketAddr,
    start: usize,
    end: usize,
    seg: usize,
    count: usize,
    closed: bool,
}

/// Encrypted datagrams waiting to be sent, grouped into GSO trains.
pub struct TxBatch {
    buf: Vec<u8>,
    tail: usize,
    trains: Vec<Train>,
    max_segments: usize,
}

impl TxBatch {
    pub fn new(max_segments: usize) -> TxBatch {
        TxBatch {
            buf: vec![0u8; 4 * MAX_DATAGRAM],
            tail: 0,
            trains: Vec::with_capacity(64),
            max_segments: max_segments.max(1),
        }
    }

    /// Bytes waiting.
    pub fn pending(&self) -> usize {
        self.tail
    }

    /// Sends everything waiting.
    pub async fn flush(&mut self, udp: &Udp) {
        for t in &self.trains {
            let transmit = Transmit {
                destination: udp.wire(t.to),
                ecn: None,
                contents: &self.buf[t.start..t.end],
                segment_size: (t.count > 1).then_some(t.seg),
                src_ip: None,
            };
            udp.send(&transmit).await;
        }
        self.trains.clear();
        self.tail = 0;
    }

    /// The datagrams waiting, in order (for tests).
    pub fn datagrams(&self) -> Vec<(SocketAddr, &[u8])> {
        let mut out = Vec::new();
        for t in &self.trains {
            for d in self.buf[t.start..t.end].chunks(t.seg) {
                out.push((t.to, d));
            }
        }
        out
    }
}

impl Transmits for TxBatch {
    fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.tail < MAX_DATAGRAM {
            // Only when a burst outgrows the batch (queued packets flushed after a
            // handshake); the buffer keeps its size afterwards.
            self.buf.resize(self.tail + MAX_DATAGRAM, 0);
        }
        &mut self.buf[self.tail..]
    }

    fn commit(&mut self, to: SocketAddr, len: usize) {
        if len == 0 {
            return;
        }
        let start = self.tail;
        self.tail += len;
        if let Some(t) = self.trains.last_mut() {
            if !t.closed
                && t.to == to
                && t.end == start
                && len <= t.seg
                && t.count < self.max_segments
                && t.end - t.start + len <= MAX_GSO_BYTES
            {
                t.end += len;
                t.count += 1;
                // A shorter datagram can only end a train.
                t.closed = len < t.seg;
                return;
            }
        }
        self.trains.push(Train {
            to,
            start,
            end: start + len,
            seg: len,
            count: 1,
            closed: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut TxBatch, to: &str, len: usize, fill: u8) {
        let s = b.space();
        s[..len].fill(fill);
        b.commit(to.parse().expect("addr"), len);
    }

    #[test]
    fn trains_group_equal_datagrams_per_destination() {
        let mut b = TxBatch::new(3);
        put(&mut b, "192.0.2.1:1", 100, 1);
        put(&mut b, "192.0.2.1:1", 100, 2);
        put(&mut b, "192.0.2.1:1", 60, 3); // shorter: ends the train
        put(&mut b, "192.0.2.1:1", 100, 4); // new train
        put(&mut b, "192.0.2.2:1", 100, 5); // other peer
        put(&mut b, "192.0.2.2:1", 100, 6);
        put(&mut b, "192.0.2.2:1", 100, 7);
        put(&mut b, "192.0.2.2:1", 100, 8); // segment limit of 3
        let counts: Vec<usize> = b.trains.iter().map(|t| t.count).collect();
        assert_eq!(counts, vec![3, 1, 3, 1]);
        let d = b.datagrams();
        assert_eq!(d.len(), 8);
        assert!(d
            .iter()
            .enumerate()
            .all(|(i, (_, bytes))| bytes[0] == i as u8 + 1));
        assert_eq!(d[2].1.len(), 60);
    }
}
