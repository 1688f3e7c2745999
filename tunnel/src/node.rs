//! The packet path: peers, cryptokey routing and roaming around the [`Engine`]s, with no
//! sockets or devices. The IO shell (`gateway`) hands it packets from the TUN device and
//! datagrams from the UDP socket in batches, and gives it [`Transmits`] and [`Deliveries`] to
//! write its output into (encrypted in place, no per-packet allocation).
//!
//! Rules kept here:
//! - an outbound packet goes to the peer whose AllowedIPs has the longest prefix containing
//!   its destination; no match, no peer: dropped and counted;
//! - a decrypted packet whose source is outside its peer's AllowedIPs is dropped and counted;
//! - a peer's endpoint moves to a datagram's source only after that datagram authenticated;
//! - anything else (garbage, truncated, unknown index, failed MAC, replay) is dropped and
//!   counted, never a panic.

use crate::config::PeerConfig;
use crate::engine::{Action, Engine, Identity, Reject, Screened, MSG_COOKIE_REPLY, MSG_DATA};
use crate::keys::PublicKey;
use crate::routing::{self, AllowedIps, PrefixTable};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Where encrypted datagrams go. `space()` is at least [`MAX_DATAGRAM`] bytes long; after
/// writing a datagram to its start, `commit` it.
pub trait Transmits {
    fn space(&mut self) -> &mut [u8];
    fn commit(&mut self, to: SocketAddr, len: usize);
}

/// Where decrypted packets for the TUN device go, like [`Transmits`].
pub trait Deliveries {
    fn space(&mut self) -> &mut [u8];
    fn commit(&mut self, len: usize);
}

/// The largest datagram or packet handled; output spaces are at least this big.
pub const MAX_DATAGRAM: usize = 65_535;

/// Counters of everything dropped, over all peers.
#[derive(Debug, Default)]
pub struct Counters {
    /// Garbage, truncated or malformed datagrams.
    pub malformed: AtomicU64,
    /// Datagrams that failed authentication (MAC, AEAD tag, handshake decryption).
    pub unauthenticated: AtomicU64,
    /// Replayed or too old data packets and handshakes.
    pub replayed: AtomicU64,
    /// Messages for an index or static key that is no peer of ours.
    pub unknown_peer: AtomicU64,
    /// Data for a session this side no longer has.
    pub no_session: AtomicU64,
    /// Decrypted packets whose source is outside the peer's AllowedIPs.
    pub disallowed_source: AtomicU64,
    /// Outbound packets no peer's AllowedIPs covers, or not IP at all.
    pub no_route: AtomicU64,
    /// Outbound datagrams for a peer whose endpoint is not yet known.
    pub no_endpoint: AtomicU64,
    /// Cookie replies sent because handshakes came too fast.
    pub cookies_sent: AtomicU64,
    /// Other engine refusals (buffers, under load without an address).
    pub other: AtomicU64,
}

impl Counters {
    fn reject(&self, r: Reject) {
        let c = match r {
            Reject::Malformed => &self.malformed,
            Reject::Unauthenticated => &self.unauthenticated,
            Reject::Replay => &self.replayed,
            Reject::NoSession => &self.no_session,
            Reject::UnderLoad | Reject::BufferTooSmall | Reject::Other => &self.other,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            malformed: self.malformed.load(Relaxed),
            unauthenticated: self.unauthenticated.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            unknown_peer: self.unknown_peer.load(Relaxed),
            no_session: self.no_session.load(Relaxed),
            disallowed_source: self.disallowed_source.load(Relaxed),
            no_route: self.no_route.load(Relaxed),
            no_endpoint: self.no_endpoint.load(Relaxed),
            cookies_sent: self.cookies_sent.load(Relaxed),
            other: self.other.load(Relaxed),
        }
    }
}

/// [`Counters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub malformed: u64,
    pub unauthenticated: u64,
    pub replayed: u64,
    pub unknown_peer: u64,
    pub no_session: u64,
    pub disallowed_source: u64,
    pub no_route: u64,
    pub no_endpoint: u64,
    pub cookies_sent: u64,
    pub other: u64,
}

impl CounterSnapshot {
    /// Every datagram dropped on the way in.
    pub fn inbound_dropped(&self) -> u64 {
        self.malformed
            + self.unauthenticated
            + self.replayed
            + self.unknown_peer
            + self.no_session
            + self.disallowed_source
            + self.other
    }
}

/// One remote gateway: its engine and what may change on reload, behind one lock.
pub struct Peer {
    pub public_key: PublicKey,
    /// Our local index for it (low 24 bits of every session index we hand out).
    pub index: u32,
    state: Mutex<PeerState>,
    handshakes: AtomicU64,
    roams: AtomicU64,
}

struct PeerState {
    config: PeerConfig,
    engine: Box<dyn Engine>,
    allowed: AllowedIps,
    endpoint: Option<SocketAddr>,
    expired: bool,
    /// Start a handshake at the next tick: a new peer with a known endpoint gets a session
    /// before it carries traffic, so a restarted gateway is reachable again at once.
    eager: bool,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        // A panic while holding the lock cannot leave the engine half-updated in a way that
        // matters more than losing the peer, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The peers and the routes to them; replaced as a whole on reload.
#[derive(Default)]
pub struct PeerTable {
    peers: Vec<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<PublicKey, Arc<Peer>>,
    routes: PrefixTable<Arc<Peer>>,
}

impl PeerTable {
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
    /// Peers whose key material or keepalive changed: their session restarts.
    pub rekeyed: Vec<PublicKey>,
    /// Peers whose routes or endpoint changed; sessions kept.
    pub updated: Vec<PublicKey>,
    pub routes_added: Vec<IpNet>,
    pub routes_removed: Vec<IpNet>,
}

/// Per-peer figures for `tunnel status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub name: Option<String>,
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds since the current session's handshake; `None` before the first.
    pub last_handshake_secs: Option<f64>,
    pub handshake_rtt_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Completed handshakes (either side initiating) since the gateway started.
    pub handshakes: u64,
    /// Endpoint changes learnt from authenticated datagrams.
    pub roams: u64,
    pub persistent_keepalive: Option<u16>,
}

/// The packet path over a set of peers.
pub struct Node {
    identity: Arc<dyn Identity>,
    table: ArcSwap<PeerTable>,
    next_index: AtomicU64,
    rekey_after: Option<Duration>,
    pub counters: Counters,
}

/// The peer whose lock a batch holds, so runs of packets for one peer lock once.
struct Held<'t> {
    peer: &'t Arc<Peer>,
    state: MutexGuard<'t, PeerState>,
}

impl<'t> Held<'t> {
    fn take<'s>(slot: &'s mut Option<Held<'t>>, peer: &'t Arc<Peer>) -> &'s mut Held<'t> {
        let same = matches!(slot, Some(h) if Arc::ptr_eq(h.peer, peer));
        if !same {
            // Release the previous peer before locking the next: never two locks at once.
            *slot = None;
            *slot = Some(Held {
                peer,
                state: peer.lock(),
            });
        }
        match slot {
            Some(h) => h,
            None => unreachable!("just filled"),
        }
    }
}

impl Node {
    /// A node with no peers. `rekey_after` forces a handshake whenever the current session is
    /// that old (see `interface.rekey_after_secs`).
    pub fn new(identity: Arc<dyn Identity>, rekey_after: Option<Duration>) -> Node {
        Node {
            identity,
            table: ArcSwap::from_pointee(PeerTable::default()),
            next_index: AtomicU64::new(u64::from(rand::random::<u32>() & 0x00ff_ffff)),
            rekey_after,
            counters: Counters::default(),
        }
    }

    /// The current peer table; hold it for one batch.
    pub fn table(&self) -> Arc<PeerTable> {
        self.table.load_full()
    }

    /// An index no peer in `taken` has (only the low 24 bits identify a peer).
    fn fresh_index(&self, taken: &[&HashMap<u32, Arc<Peer>>]) -> u32 {
        loop {
            let i = (self.next_index.fetch_add(1, Relaxed) & 0x00ff_ffff) as u32;
            if !taken.iter().any(|t| t.contains_key(&i)) {
                return i;
            }
        }
    }

    /// Makes the peer set equal to `peers`, keeping the sessions of peers whose keys and
    /// keepalive did not change. Packets in flight see either the old or the new table.
    pub fn apply(&self, peers: &[PeerConfig]) -> Change {
        let old = self.table.load_full();
        let mut change = Change::default();
        let mut next = PeerTable::default();
        for cfg in peers {
            let peer = match old.by_key.get(&cfg.public_key) {
                Some(existing) => {
                    let mut st = existing.lock();
                    let keys_changed = st.config.preshared_key != cfg.preshared_key
                        || st.config.persistent_keepalive != cfg.persistent_keepalive;
                    if keys_changed {
                        st.engine = self.identity.engine(
                            &cfg.public_key,
                            cfg.preshared_key.as_ref(),
                            cfg.persistent_keepalive,
                            existing.index,
                        );
                        st.expired = false;
                        st.eager = true;
                        change.rekeyed.push(cfg.public_key);
                    } else if st.config != *cfg {
                        change.updated.push(cfg.public_key);
                    }
                    if st.config.endpoint != cfg.endpoint && cfg.endpoint.is_some() {
                        st.endpoint = cfg.endpoint;
                    }
                    st.allowed = AllowedIps::new(&cfg.allowed_ips);
                    st.config = cfg.clone();
                    drop(st);
                    existing.clone()
                }
                None => {
                    let index = self.fresh_index(&[&old.by_index, &next.by_index]);
                    change.added.push(cfg.public_key);
                    Arc::new(Peer {
                        public_key: cfg.public_key,
                        index,
                        handshakes: AtomicU64::new(0),
                        roams: AtomicU64::new(0),
                        state: Mutex::new(PeerState {
                            engine: self.identity.engine(
                                &cfg.public_key,
                                cfg.preshared_key.as_ref(),
                                cfg.persistent_keepalive,
                                index,
                            ),
                            allowed: AllowedIps::new(&cfg.allowed_ips),
                            endpoint: cfg.endpoint,
                            config: cfg.clone(),
                            expired: false,
                            eager: cfg.endpoint.is_some(),
                        }),
                    })
                }
            };
            for net in &cfg.allowed_ips {
                next.routes.insert(*net, peer.clone());
            }
            next.by_index.insert(peer.index, peer.clone());
            next.by_key.insert(peer.public_key, peer.clone());
            next.peers.push(peer);
        }
        for p in &old.peers {
            if !next.by_key.contains_key(&p.public_key) {
                change.removed.push(p.public_key);
            }
        }
        let old_nets: Vec<IpNet> = old
            .peers
            .iter()
            .flat_map(|p| p.lock().config.allowed_ips.clone())
            .collect();
        let new_nets: Vec<IpNet> = peers.iter().flat_map(|p| p.allowed_ips.clone()).collect();
        change.routes_added = new_nets
            .iter()
            .filter(|n| !old_nets.contains(n))
            .copied()
            .collect();
        change.routes_removed = old_nets
            .iter()
            .filter(|n| !new_nets.contains(n))
            .copied()
            .collect();
        self.table.store(Arc::new(next));
        change
    }

    /// Encrypts packets read from the TUN device and queues them for their peers.
    pub fn outbound<'p>(
        &self,
        table: &PeerTable,
        packets: impl IntoIterator<Item = &'p [u8]>,
        net: &mut impl Transmits,
    ) {
        let mut held: Option<Held<'_>> = None;
        for packet in packets {
            let Some(peer) = routing::destination(packet).and_then(|d| table.routes.lookup(d))
            else {
                self.counters.no_route.fetch_add(1, Relaxed);
                continue;
            };
            let h = Held::take(&mut held, peer);
            let endpoint = h.state.endpoint;
            match h.state.engine.encapsulate(packet, net.space()) {
                Action::Network(out) => {
                    let len = out.len();
                    match endpoint {
                        Some(to) => net.commit(to, len),
                        None => {
                            self.counters.no_endpoint.fetch_add(1, Relaxed);
                        }
                    }
                }
                Action::Rejected(r) => self.counters.reject(r),
                Action::Expired => h.state.expired = true,
                Action::Done | Action::Tunnel(..) => {}
            }
        }
    }

    /// Handles datagrams from the UDP socket: handshakes answered through `net`, decrypted
    /// packets delivered to `tun`.
    pub fn inbound<'d>(
        &self,
        table: &PeerTable,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'d [u8])>,
        net: &mut impl Transmits,
        tun: &mut impl Deliveries,
    ) {
        let mut held: Option<Held<'_>> = None;
        for (src, datagram) in datagrams {
            let peer = match self.identity.screen(src.ip(), datagram, net.space()) {
                Screened::Index(i) => table.by_index.get(&i),
                Screened::Initiator(key) => table.by_key.get(&key),
                Screened::Reply(cookie) => {
                    let len = cookie.len();
                    net.commit(src, len);
                    self.counters.cookies_sent.fetch_add(1, Relaxed);
                    continue;
                }
                Screened::Rejected(r) => {
                    self.counters.reject(r);
                    continue;
                }
            };
            let Some(peer) = peer else {
                self.counters.unknown_peer.fetch_add(1, Relaxed);
                continue;
            };
            let h = Held::take(&mut held, peer);
            self.decapsulate(h, src, datagram, net, tun);
        }
    }

    fn decapsulate(
        &self,
        h: &mut Held<'_>,
        src: SocketAddr,
        datagram: &[u8],
        net: &mut impl Transmits,
        tun: &mut impl Deliveries,
    ) {
        let kind = datagram.first().copied().unwrap_or(0);
        let space = tun.space();
        let base = space.as_ptr() as usize;
        // Reduce the engine's answer to plain numbers so `space` is free again afterwards.
        enum Got {
            Deliver { at: usize, len: usize, ok: bool },
            Reply { at: usize, len: usize, cookie: bool },
            Keepalive,
            Expired,
            Rejected(Reject),
        }
        let got = match h.state.engine.decapsulate(src.ip(), datagram, space) {
            Action::Tunnel(p, inner_src) => Got::Deliver {
                at: p.as_ptr() as usize - base,
                len: p.len(),
                ok: h.state.allowed.contains(inner_src),
            },
            Action::Network(p) => Got::Reply {
                at: p.as_ptr() as usize - base,
                len: p.len(),
                cookie: p.first() == Some(&MSG_COOKIE_REPLY),
            },
            Action::Done => Got::Keepalive,
            Action::Expired => Got::Expired,
            Action::Rejected(r) => Got::Rejected(r),
        };
        let authenticated = match &got {
            Got::Deliver { .. } => true,
            Got::Reply { cookie, .. } => !cookie,
            // A consumed cookie reply proves nothing about the sender's address.
            Got::Keepalive => kind != MSG_COOKIE_REPLY,
            Got::Expired | Got::Rejected(_) => false,
        };
        if authenticated && h.state.endpoint != Some(src) {
            if h.state.endpoint.is_some() {
                h.peer.roams.fetch_add(1, Relaxed);
                tracing::debug!(peer = %h.state.config.label(), "peer endpoint changed");
            }
            h.state.endpoint = Some(src);
        }
        match got {
            Got::Deliver { at, len, ok } => {
                if !ok {
                    self.counters.disallowed_source.fetch_add(1, Relaxed);
                    return;
                }
                if at != 0 {
                    tun.space().copy_within(at..at + len, 0);
                }
                tun.commit(len);
            }
            Got::Reply { at, len, cookie } => {
                if kind != MSG_DATA && !cookie {
                    h.peer.handshakes.fetch_add(1, Relaxed);
                    h.state.expired = false;
                }
                let out = net.space();
                out[..len].copy_from_slice(&tun.space()[at..at + len]);
                let to = if cookie { Some(src) } else { h.state.endpoint };
                if let Some(to) = to {
                    net.commit(to, len);
                }
                if !cookie {
                    self.flush_queue(h, net);
                }
            }
            Got::Keepalive | Got::Expired => {}
            Got::Rejected(r) => self.counters.reject(r),
        }
    }

    /// Sends the packets the engine queued while it had no session.
    fn flush_queue(&self, h: &mut Held<'_>, net: &mut impl Transmits) {
        loop {
            match h.state.engine.flush(net.space()) {
                Action::Network(p) => {
                    let len = p.len();
                    match h.state.endpoint {
                        Some(to) => net.commit(to, len),
                        None => {
                            self.counters.no_endpoint.fetch_add(1, Relaxed);
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Runs every peer's timers (call every 100-250 ms), and the forced rekey if configured.
    pub fn tick(&self, net: &mut impl Transmits) {
        let table = self.table();
        for peer in &table.peers {
            let mut st = peer.lock();
            let endpoint = st.endpoint;
            match st.engine.tick(net.space()) {
                Action::Network(p) => {
                    let len = p.len();
                    if let Some(to) = endpoint {
                        net.commit(to, len);
                    }
                }
                Action::Expired if !st.expired => {
                    tracing::info!(peer = %st.config.label(), "session expired");
                    st.expired = true;
                }
                _ => {}
            }
            if let (Some(to), true) = (endpoint, st.eager) {
                st.eager = false;
                if let Action::Network(p) = st.engine.initiate(net.space()) {
                    let len = p.len();
                    net.commit(to, len);
                }
            }
            if let (Some(after), Some(to)) = (self.rekey_after, endpoint) {
                let age = st.engine.stats().since_handshake;
                if age.is_some_and(|a| a >= after) {
                    if let Action::Network(p) = st.engine.initiate(net.space()) {
                        let len = p.len();
                        net.commit(to, len);
                    }
                }
            }
        }
    }

    /// Once a second: the shared handshake rate limiter starts counting afresh.
    pub fn second(&self) {
        self.identity.reset_rate_limit();
    }

    /// Every peer's figures.
    pub fn status(&self) -> Vec<PeerStatus> {
        let table = self.table();
        table
            .peers
            .iter()
            .map(|p| {
                let st = p.lock();
                let stats = st.engine.stats();
                PeerStatus {
                    name: st.config.name.clone(),
                    public_key: p.public_key.to_string(),
                    endpoint: st.endpoint,
                    allowed_ips: st.config.allowed_ips.clone(),
                    last_handshake_secs: stats.since_handshake.map(|d| d.as_secs_f64()),
                    handshake_rtt_ms: stats.handshake_rtt.map(|d| d.as_millis() as u64),
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    handshakes: p.handshakes.load(Relaxed),
                    roams: p.roams.load(Relaxed),
                    persistent_keepalive: st.config.persistent_keepalive,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Boringtun;
    use crate::keys::PrivateKey;
    use proptest::prelude::*;

    /// Output collected in memory.
    #[derive(Default)]
    struct Net {
        buf: Vec<u8>,
        sent: Vec<(SocketAddr, Vec<u8>)>,
    }

    impl Transmits for Net {
        fn space(&mut self) -> &mut [u8] {
            self.buf.resize(MAX_DATAGRAM, 0);
            &mut self.buf
        }
        fn commit(&mut self, to: SocketAddr, len: usize) {
            self.sent.push((to, self.buf[..len].to_vec()));
        }
    }

    #[derive(Default)]
    struct Tun {
        buf: Vec<u8>,
        got: Vec<Vec<u8>>,
    }

    impl Deliveries for Tun {
        fn space(&mut self) -> &mut [u8] {
            self.buf.resize(MAX_DATAGRAM, 0);
            &mut self.buf
        }
        fn commit(&mut self, len: usize) {
            self.got.push(self.buf[..len].to_vec());
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    /// An IPv4 packet (no checksum needed: the tunnel does not check it).
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let len = (20 + payload.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    struct Pair {
        a: Node,
        b: Node,
        a_at: SocketAddr,
        b_at: SocketAddr,
    }

    fn peer(key: &PrivateKey, endpoint: Option<&str>, nets: &[&str]) -> PeerConfig {
        PeerConfig {
            name: None,
            public_key: key.public_key(),
            endpoint: endpoint.map(addr),
            allowed_ips: nets.iter().map(|n| net(n)).collect(),
            persistent_keepalive: None,
            preshared_key: None,
        }
    }

    /// A (10.10/16) and B (10.20/16); A knows B's endpoint, B learns A's.
    fn pair() -> Pair {
        let ka = PrivateKey::generate();
        let kb = PrivateKey::generate();
        let a = Node::new(Arc::new(Boringtun::new(&ka)), None);
        let b = Node::new(Arc::new(Boringtun::new(&kb)), None);
        a.apply(&[peer(&kb, Some("192.0.2.2:51820"), &["10.20.0.0/16"])]);
        b.apply(&[peer(&ka, None, &["10.10.0.0/16"])]);
        Pair {
            a,
            b,
            a_at: addr("192.0.2.1:51820"),
            b_at: addr("192.0.2.2:51820"),
        }
    }

    /// Delivers `from`'s datagrams to `to` (arriving from `src`), returning `to`'s answers.
    fn carry(
        to: &Node,
        src: SocketAddr,
        datagrams: Vec<(SocketAddr, Vec<u8>)>,
        tun: &mut Tun,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Net::default();
        let table = to.table();
        to.inbound(
            &table,
            datagrams.iter().map(|(_, d)| (src, d.as_slice())),
            &mut out,
            tun,
        );
        out.sent
    }

    /// Runs the handshake started by a packet from A's side; returns what B delivered.
    fn establish(p: &Pair, first: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Net::default();
        p.a.outbound(&p.a.table(), [first], &mut out);
        assert_eq!(out.sent.len(), 1, "a handshake initiation");
        assert_eq!(out.sent[0].0, p.b_at);
        let mut tun_b = Tun::default();
        let resp = carry(&p.b, p.a_at, out.sent, &mut tun_b);
        assert_eq!(resp.len(), 1, "a handshake response");
        assert_eq!(
            resp[0].0, p.a_at,
            "B answers where the initiation came from"
        );
        let mut tun_a = Tun::default();
        let after = carry(&p.a, p.b_at, resp, &mut tun_a);
        // The keepalive confirming the session, then the packet queued behind the handshake.
        assert_eq!(after.len(), 2);
        carry(&p.b, p.a_at, after, &mut tun_b);
        tun_b.got
    }

    #[test]
    fn handshake_then_data_both_ways() {
        let p = pair();
        let hello = ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"hello");
        assert_eq!(establish(&p, &hello), vec![hello.clone()]);
        // B answers by longest prefix to A, at the endpoint learnt from the handshake.
        let reply = ipv4([10, 20, 0, 7], [10, 10, 0, 5], b"world");
        let mut out = Net::default();
        p.b.outbound(&p.b.table(), [reply.as_slice()], &mut out);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, p.a_at);
        let mut tun_a = Tun::default();
        carry(&p.a, p.b_at, out.sent, &mut tun_a);
        assert_eq!(tun_a.got, vec![reply]);
        let st = p.a.status();
        assert_eq!(st[0].handshakes, 1);
        assert!(
            st[0].handshake_rtt_ms.is_some(),
            "A initiated, so it measured the RTT"
        );
        assert!(p.b.status()[0].handshake_rtt_ms.is_none());
    }

    #[test]
    fn packets_without_a_route_are_dropped() {
        let p = pair();
        let mut out = Net::default();
        let stray = ipv4([10, 10, 0, 5], [172, 16, 0, 1], b"x");
        p.a.outbound(
            &p.a.table(),
            [stray.as_slice(), b"not ip".as_slice()],
            &mut out,
        );
        assert!(out.sent.is_empty());
        assert_eq!(p.a.counters.snapshot().no_route, 2);
    }

    #[test]
    fn inner_source_outside_allowed_ips_is_dropped() {
        let p = pair();
        establish(&p, &ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"ok"));
        // A sends a packet whose source B does not allow for A (10.99/16 is nobody's).
        let spoofed = ipv4([10, 99, 0, 1], [10, 20, 0, 7], b"spoof");
        let mut out = Net::default();
        p.a.outbound(&p.a.table(), [spoofed.as_slice()], &mut out);
        let mut tun_b = Tun::default();
        carry(&p.b, p.a_at, out.sent, &mut tun_b);
        assert!(tun_b.got.is_empty());
        assert_eq!(p.b.counters.snapshot().disallowed_source, 1);
    }

    #[test]
    fn endpoint_moves_only_after_an_authenticated_datagram() {
        let p = pair();
        establish(&p, &ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"ok"));
        let mut out = Net::default();
        p.a.outbound(
            &p.a.table(),
            [ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"1").as_slice()],
            &mut out,
        );
        let genuine = out.sent[0].1.clone();
        let moved = addr("198.51.100.9:4000");
        // Garbage and a tampered copy from the new address: no move.
        let mut tampered = genuine.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let mut tun_b = Tun::default();
        carry(
            &p.b,
            moved,
            vec![(moved, b"garbage".to_vec()), (moved, tampered)],
            &mut tun_b,
        );
        assert_eq!(p.b.status()[0].endpoint, Some(p.a_at));
        // The genuine datagram from there: moved.
        carry(&p.b, moved, vec![(moved, genuine)], &mut tun_b);
        assert_eq!(tun_b.got.len(), 1);
        let st = p.b.status();
        assert_eq!(st[0].endpoint, Some(moved));
        assert_eq!(st[0].roams, 1);
    }

    #[test]
    fn reload_keeps_sessions_of_unchanged_peers() {
        let p = pair();
        establish(&p, &ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"ok"));
        let kb = p.a.table().peers()[0].public_key;
        let index = p.a.table().peers()[0].index;
        let other = PrivateKey::generate();
        let cfg_b = PeerConfig {
            name: None,
            public_key: kb,
            endpoint: Some(p.b_at),
            allowed_ips: vec![net("10.20.0.0/16")],
            persistent_keepalive: None,
            preshared_key: None,
        };
        let change =
            p.a.apply(&[cfg_b.clone(), peer(&other, None, &["10.30.0.0/16"])]);
        assert_eq!(change.added, vec![other.public_key()]);
        assert!(change.rekeyed.is_empty() && change.removed.is_empty());
        assert_eq!(change.routes_added, vec![net("10.30.0.0/16")]);
        let t = p.a.table();
        assert_eq!(t.peers()[0].index, index);
        assert_ne!(t.peers()[1].index & 0xff_ffff, index & 0xff_ffff);
        // The session survived: data flows without a new handshake.
        let mut out = Net::default();
        p.a.outbound(
            &t,
            [ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"after").as_slice()],
            &mut out,
        );
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].1[0], crate::engine::MSG_DATA);
        let change = p.a.apply(&[cfg_b]);
        assert_eq!(change.removed, vec![other.public_key()]);
        assert_eq!(change.routes_removed, vec![net("10.30.0.0/16")]);
    }

    fn established() -> (Pair, Vec<u8>) {
        let p = pair();
        establish(&p, &ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"ok"));
        let mut out = Net::default();
        p.a.outbound(
            &p.a.table(),
            [ipv4([10, 10, 0, 5], [10, 20, 0, 7], b"sample").as_slice()],
            &mut out,
        );
        let sample = out.sent[0].1.clone();
        (p, sample)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any datagram that is not a genuine one is dropped and counted, never delivered,
        /// never a panic, and never moves the peer's endpoint.
        #[test]
        fn arbitrary_datagrams_are_dropped_and_counted(
            datagrams in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..200),
                    // Plausible headers: a valid type byte and zeroed reserved bytes.
                    (1u8..=4, proptest::collection::vec(any::<u8>(), 0..180)).prop_map(|(t, mut rest)| {
                        let mut d = vec![t, 0, 0, 0];
                        d.append(&mut rest);
                        d
                    }),
                    // Exact handshake sizes with random content.
                    (1u8..=3).prop_map(|t| {
                        let len = [148usize, 92, 64][usize::from(t - 1)];
                        let mut d = vec![0x5au8; len];
                        d[0] = t;
                        d[1..4].fill(0);
                        d
                    }),
                ],
                1..16,
            ),
        ) {
            let (p, _) = established();
            let src = addr("203.0.113.5:9999");
            let before = p.b.counters.snapshot().inbound_dropped();
            let mut tun_b = Tun::default();
            let answers = carry(&p.b, src, datagrams.iter().map(|d| (src, d.clone())).collect(), &mut tun_b);
            prop_assert!(tun_b.got.is_empty());
            prop_assert!(answers.is_empty());
            let after = p.b.counters.snapshot().inbound_dropped();
            prop_assert_eq!(after - before, datagrams.len() as u64);
            prop_assert_eq!(p.b.status()[0].endpoint, Some(p.a_at));
        }

        /// A genuine data datagram with any byte changed, or cut short, is never delivered.
        #[test]
        fn tampered_or_truncated_data_is_never_delivered(
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let (p, sample) = established();
            let mut bad = sample.clone();
            if truncate {
                bad.truncate(cut.index(sample.len()));
            } else {
                bad[at.index(sample.len())] ^= flip;
            }
            let mut tun_b = Tun::default();
            carry(&p.b, p.a_at, vec![(p.a_at, bad)], &mut tun_b);
            prop_assert!(tun_b.got.is_empty());
            prop_assert_eq!(p.b.counters.snapshot().inbound_dropped(), 1);
            // The genuine one still goes through afterwards.
            carry(&p.b, p.a_at, vec![(p.a_at, sample)], &mut tun_b);
            prop_assert_eq!(tun_b.got.len(), 1);
        }
    }
}
