//! The WireGuard protocol engine behind a small trait of ours, implemented on boringtun's
//! `noise::Tunn` (library only, no `device` module).
//!
//! Everything above this module speaks [`Engine`] and [`Identity`], so a boringtun fork
//! (Firezone's, Mullvad's GotaTun) can replace it by implementing the two traits.

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Bytes WireGuard adds to an IP packet: type, index, counter (16) and the AEAD tag (16).
pub const DATA_OVERHEAD: usize = 32;
/// The largest handshake message; every output buffer must be at least this long.
pub const MIN_OUTPUT: usize = 148;

/// WireGuard message types (first byte; the next three are zero).
pub const MSG_HANDSHAKE_INIT: u8 = 1;
pub const MSG_HANDSHAKE_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_DATA: u8 = 4;

/// What the engine wants done with its output.
#[derive(Debug)]
pub enum Action<'a> {
    /// Nothing (a keepalive was consumed, a packet was queued behind a handshake, ...).
    Done,
    /// Send these bytes to the peer.
    Network(&'a mut [u8]),
    /// Deliver this decrypted IP packet to the TUN device (inner source already parsed).
    Tunnel(&'a mut [u8], IpAddr),
    /// The session is gone for good (no handshake for 9 minutes, or 90 s of failed attempts).
    Expired,
    /// The input was rejected.
    Rejected(Reject),
}

/// Why a datagram or packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed or truncated message")]
    Malformed,
    #[error("authentication failed")]
    Unauthenticated,
    #[error("replayed or too old counter")]
    Replay,
    #[error("no session for this index")]
    NoSession,
    #[error("under load: handshake without a valid cookie")]
    UnderLoad,
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("engine error")]
    Other,
}

impl From<WireGuardError> for Reject {
    fn from(e: WireGuardError) -> Reject {
        use WireGuardError as E;
        match e {
            E::InvalidPacket
            | E::IncorrectPacketLength
            | E::WrongPacketType
            | E::WrongIndex
            | E::UnexpectedPacket => Reject::Malformed,
            E::InvalidMac | E::InvalidAeadTag | E::WrongKey | E::InvalidTai64nTimestamp => {
                Reject::Unauthenticated
            }
            E::InvalidCounter | E::DuplicateCounter | E::WrongTai64nTimestamp => Reject::Replay,
            E::NoCurrentSession => Reject::NoSession,
            E::UnderLoad => Reject::UnderLoad,
            E::DestinationBufferTooSmall => Reject::BufferTooSmall,
            _ => Reject::Other,
        }
    }
}

/// Counters and timings of one peer's session.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Time since the current session was established.
    pub since_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// The round trip of the last handshake we initiated.
    pub handshake_rtt: Option<Duration>,
}

/// One peer's protocol state: sessions, handshakes, timers.
pub trait Engine: Send {
    /// Encrypts an IP packet. `dst.len()` must be at least `packet.len() + 32` and 148.
    fn encapsulate<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> Action<'a>;
    /// Handles a datagram from `src`. After [`Action::Network`], call [`Engine::flush`] until
    /// it returns something else (packets queued behind the handshake).
    fn decapsulate<'a>(&mut self, src: IpAddr, datagram: &[u8], dst: &'a mut [u8]) -> Action<'a>;
    /// The next packet queued behind a handshake, encrypted, if any.
    fn flush<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a>;
    /// Runs the protocol timers (retries, keepalives, rekeys); call every 100-250 ms.
    fn tick<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a>;
    /// Starts a new handshake unless one is in progress.
    fn initiate<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a>;
    fn stats(&self) -> EngineStats;
}

/// Who sent a datagram, as far as can be told before a peer's engine sees it.
#[derive(Debug)]
pub enum Screened<'a> {
    /// A message for the peer whose local index (low 24 bits of our session index) is this.
    Index(u32),
    /// A handshake initiation from this peer (its static key decrypted from the message).
    Initiator(PublicKey),
    /// Answer the sender with this cookie reply (we are under load).
    Reply(&'a mut [u8]),
    Rejected(Reject),
}

/// The interface's own side of the protocol: its key and the shared handshake rate limiter.
pub trait Identity: Send + Sync {
    /// A new engine for a peer. `index` must be unique among peers in its low 24 bits.
    fn engine(
        &self,
        peer: &PublicKey,
        preshared: Option<&PresharedKey>,
        keepalive: Option<u16>,
        index: u32,
    ) -> Box<dyn Engine>;
    /// Classifies a datagram from `src`; never panics on any input.
    fn screen<'a>(&self, src: IpAddr, datagram: &[u8], dst: &'a mut [u8]) -> Screened<'a>;
    /// Resets the handshake rate limiter; call once a second.
    fn reset_rate_limit(&self);
}

/// Handshakes per second above which initiations must carry a cookie. A handshake
/// initiation is counted twice (once when screened here, once inside the peer's `Tunn`), so
/// this is twice the intended rate.
const HANDSHAKES_PER_SECOND: u64 = 2 * 50;

/// [`Identity`] on boringtun.
pub struct Boringtun {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Boringtun {
    pub fn new(key: &PrivateKey) -> Boringtun {
        let secret = key.to_static_secret();
        let public = x25519::PublicKey::from(&secret);
        Boringtun {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            secret,
            public,
        }
    }
}

fn index_at(datagram: &[u8], at: usize) -> Option<u32> {
    let bytes = datagram.get(at..at + 4)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) >> 8)
}

impl Identity for Boringtun {
    fn engine(
        &self,
        peer: &PublicKey,
        preshared: Option<&PresharedKey>,
        keepalive: Option<u16>,
        index: u32,
    ) -> Box<dyn Engine> {
        Box::new(BoringtunPeer(Tunn::new(
            self.secret.clone(),
            x25519::PublicKey::from(peer.0),
            preshared.map(PresharedKey::bytes),
            keepalive,
            index & 0x00ff_ffff,
            Some(self.limiter.clone()),
        )))
    }

    fn screen<'a>(&self, src: IpAddr, datagram: &[u8], dst: &'a mut [u8]) -> Screened<'a> {
        // Exact sizes as the protocol fixes them; data is at least the overhead.
        let (kind, ok_len) = match datagram.first() {
            Some(&MSG_HANDSHAKE_INIT) => (MSG_HANDSHAKE_INIT, datagram.len() == 148),
            Some(&MSG_HANDSHAKE_RESPONSE) => (MSG_HANDSHAKE_RESPONSE, datagram.len() == 92),
            Some(&MSG_COOKIE_REPLY) => (MSG_COOKIE_REPLY, datagram.len() == 64),
            Some(&MSG_DATA) => (MSG_DATA, datagram.len() >= DATA_OVERHEAD),
            _ => return Screened::Rejected(Reject::Malformed),
        };
        if !ok_len || datagram[1..4] != [0, 0, 0] {
            return Screened::Rejected(Reject::Malformed);
        }
        let index = match kind {
            MSG_DATA | MSG_COOKIE_REPLY => index_at(datagram, 4),
            MSG_HANDSHAKE_RESPONSE => index_at(datagram, 8),
            _ => None,
        };
        if let Some(i) = index {
            return Screened::Index(i);
        }
        // A handshake initiation: check MAC1 and the load (maybe answering with a cookie)
        // before the Diffie-Hellman that reveals the sender's static key.
        if dst.len() < 64 {
            return Screened::Rejected(Reject::BufferTooSmall);
        }
        match self.limiter.verify_packet(Some(src), datagram, dst) {
            Ok(Packet::HandshakeInit(init)) => {
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => Screened::Initiator(PublicKey(half.peer_static_public)),
                    Err(e) => Screened::Rejected(e.into()),
                }
            }
            Ok(_) => Screened::Rejected(Reject::Malformed),
            Err(TunnResult::WriteToNetwork(cookie)) => Screened::Reply(cookie),
            Err(TunnResult::Err(e)) => Screened::Rejected(e.into()),
            Err(_) => Screened::Rejected(Reject::Other),
        }
    }

    fn reset_rate_limit(&self) {
        self.limiter.reset_count();
    }
}

/// [`Engine`] on boringtun's `Tunn`.
struct BoringtunPeer(Tunn);

fn action(r: TunnResult<'_>) -> Action<'_> {
    match r {
        TunnResult::Done => Action::Done,
        TunnResult::WriteToNetwork(p) => Action::Network(p),
        TunnResult::WriteToTunnelV4(p, a) => Action::Tunnel(p, IpAddr::V4(a)),
        TunnResult::WriteToTunnelV6(p, a) => Action::Tunnel(p, IpAddr::V6(a)),
        TunnResult::Err(WireGuardError::ConnectionExpired) => Action::Expired,
        TunnResult::Err(e) => Action::Rejected(e.into()),
    }
}

impl Engine for BoringtunPeer {
    fn encapsulate<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> Action<'a> {
        // Tunn panics on a short buffer; refuse instead.
        if dst.len() < packet.len() + DATA_OVERHEAD || dst.len() < MIN_OUTPUT {
            return Action::Rejected(Reject::BufferTooSmall);
        }
        action(self.0.encapsulate(packet, dst))
    }

    fn decapsulate<'a>(&mut self, src: IpAddr, datagram: &[u8], dst: &'a mut [u8]) -> Action<'a> {
        if datagram.is_empty() {
            // An empty datagram means "flush" to Tunn; from the network it is garbage.
            return Action::Rejected(Reject::Malformed);
        }
        if dst.len() < MIN_OUTPUT {
            return Action::Rejected(Reject::BufferTooSmall);
        }
        action(self.0.decapsulate(Some(src), datagram, dst))
    }

    fn flush<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        if dst.len() < 65_535 {
            // Queued packets can be as large as any IP packet; the caller's buffer is the
            // batch tail, which is always this big.
            return Action::Rejected(Reject::BufferTooSmall);
        }
        action(self.0.decapsulate(None, &[], dst))
    }

    fn tick<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        if dst.len() < MIN_OUTPUT {
            return Action::Rejected(Reject::BufferTooSmall);
        }
        action(self.0.update_timers(dst))
    }

    fn initiate<'a>(&mut self, dst: &'a mut [u8]) -> Action<'a> {
        if dst.len() < MIN_OUTPUT {
            return Action::Rejected(Reject::BufferTooSmall);
        }
        action(self.0.format_handshake_initiation(dst, false))
    }

    fn stats(&self) -> EngineStats {
        let (since, tx, rx, _loss, rtt) = self.0.stats();
        EngineStats {
            since_handshake: since,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
            handshake_rtt: rtt.map(|ms| Duration::from_millis(u64::from(ms))),
        }
    }
}
