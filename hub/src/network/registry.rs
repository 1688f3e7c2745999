//! The spokes connected to this hub: their control channels, last heartbeats and load, and the
//! choice of a spoke for a transfer.

use shared::proto::{Heartbeat, HubMsg};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A live control connection.
#[derive(Debug)]
struct Connected {
    /// The data endpoint (`host:port`), when the spoke serves one.
    advertise: Option<String>,
    region: String,
    session: u64,
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<HubMsg>,
    connected_at: Instant,
    last_heartbeat: Instant,
    load: Heartbeat,
    slots: u32,
    /// Transfers this hub assigned and has not heard the end of.
    assigned: usize,
    /// Storage endpoints this hub asked the spoke to measure.
    asked: HashSet<String>,
    /// Those of `asked` it has answered (each wakes the scheduler once).
    answered: HashSet<String>,
    /// The folders the spoke serves `fs` accounts in (from its hello).
    fs_roots: Vec<std::path::PathBuf>,
    /// It fetches URL sources (from its hello).
    url_sources: bool,
}

impl Connected {
    /// The spoke's last RTT to a storage endpoint (`host:port`) in µs; `Some(UNREACHABLE)` when
    /// it could not connect, `None` when it has not measured it.
    fn storage_rtt(&self, endpoint: &str) -> Option<u64> {
        self.load
            .rtts
            .iter()
            .find(|s| is_storage(s, endpoint))
            .map(|s| s.rtt_us)
    }
}

/// Whether `rtts` answer an endpoint of `asked` not yet in `answered` (which then records it).
fn first_answers(
    asked: &HashSet<String>,
    answered: &mut HashSet<String>,
    rtts: &[shared::proto::RttSample],
) -> bool {
    let mut first = false;
    for e in asked {
        if !answered.contains(e) && rtts.iter().any(|s| is_storage(s, e)) {
            answered.insert(e.clone());
            first = true;
        }
    }
    first
}

/// Whether a heartbeat's sample is the RTT to storage endpoint `endpoint` (`host:port`).
fn is_storage(s: &shared::proto::RttSample, endpoint: &str) -> bool {
    s.target.strip_prefix("storage:") == Some(endpoint)
}

/// The RTT a spoke reports for a storage endpoint it cannot connect to.
pub use shared::proto::UNREACHABLE;

/// The storage RTT (µs) the hub ranks a spoke by: what it `claimed`, but never less than the
/// triangle inequality allows given what the hub measures itself. The hub reaches the storage
/// in `hub` µs and the spoke (its QUIC connection) in `quic` µs; a path hub → spoke → storage
/// cannot be shorter than the direct one, so the spoke's RTT to the storage is at least
/// `hub - quic`. A spoke claiming 0 µs therefore ranks no better than the hub's own view
/// allows. Without a hub measurement (or when the hub cannot reach the storage) the claim
/// stands; claims above the floor are the spoke's own knowledge of its network.
pub fn plausible_rtt(claimed: u64, hub: Option<u64>, quic: u64) -> u64 {
    match hub {
        Some(h) if h < UNREACHABLE => claimed.max(h.saturating_sub(quic)),
        _ => claimed,
    }
}

/// A relay is used only when the writer's RTT to the source is this much worse (absolute)...
const RELAY_MIN_GAIN: Duration = Duration::from_millis(10);
/// ...and this many percent worse than the relaying spoke's.
const RELAY_MIN_GAIN_PCT: u64 = 20;

/// What the API shows about a connected spoke.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LiveStatus {
    pub healthy: bool,
    pub connected_secs: u64,
    pub last_heartbeat_ms_ago: u64,
    pub active_jobs: u32,
    pub free_slots: u32,
    pub bytes_per_sec: u64,
    /// Control-connection round trip measured by QUIC, microseconds.
    pub rtt_us: u64,
    /// Round trips the spoke measured itself (`hub:<region>`, `storage:<host:port>`).
    pub rtts: HashMap<String, u64>,
    /// The spoke's HTTPS data endpoint as its last heartbeat reported it (`up`, `down`);
    /// absent without one. A spoke whose endpoint is down gets no client-direct URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<&'static str>,
}

/// The registry (one per hub process).
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<HashMap<i64, Connected>>,
    next_session: std::sync::atomic::AtomicU64,
    heartbeat: Duration,
    missed: u32,
    /// This hub's own TCP connect times to storage endpoints (`host:port`, µs; `None` when
    /// the last attempt failed) and when each was last started: the floor under spokes' claims.
    own: Mutex<HashMap<String, (Option<u64>, Instant)>>,
}

/// A spoke picked for work.
#[derive(Debug, Clone)]
pub struct Pick {
    pub spoke_id: i64,
    pub region: String,
    pub tx: mpsc::UnboundedSender<HubMsg>,
}

impl Registry {
    pub fn new(heartbeat: Duration, missed: u32) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            next_session: std::sync::atomic::AtomicU64::new(1),
            heartbeat,
            missed,
            own: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Connected>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self, c: &Connected, now: Instant) -> bool {
        now.duration_since(c.last_heartbeat) < self.heartbeat * self.missed
            && c.conn.close_reason().is_none()
    }

    /// Registers a connection; a previous connection of the same spoke is closed. Returns the
    /// session number that [`Registry::remove`] must present.
    pub fn insert(
        &self,
        spoke_id: i64,
        advertise: Option<String>,
        region: &str,
        slots: u32,
        conn: quinn::Connection,
        tx: mpsc::UnboundedSender<HubMsg>,
    ) -> u64 {
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let old = self.lock().insert(
            spoke_id,
            Connected {
                advertise,
                region: region.to_owned(),
                session,
                conn,
                tx,
                connected_at: now,
                last_heartbeat: now,
                load: Heartbeat::default(),
                slots,
                assigned: 0,
                asked: HashSet::new(),
                answered: HashSet::new(),
                fs_roots: Vec::new(),
                url_sources: false,
            },
        );
        if let Some(old) = old {
            old.conn.close(
                quinn::VarInt::from_u32(shared::proto::CLOSE_NORMAL),
                b"replaced by a newer connection",
            );
        }
        session
    }

    /// Records what a connected spoke's hello declared: the folders it serves `fs` accounts
    /// in, and whether it fetches URL sources.
    pub fn set_declared(&self, spoke_id: i64, roots: &[String], url_sources: bool) {
        if let Some(c) = self.lock().get_mut(&spoke_id) {
            c.fs_roots = roots
                .iter()
                .map(std::path::PathBuf::from)
                .filter(|p| p.is_absolute())
                .collect();
            c.url_sources = url_sources;
        }
    }

    /// Connected spokes that do not fetch URL sources (older versions): callers exclude them
    /// from uploads from a URL.
    pub fn without_url_sources(&self) -> Vec<i64> {
        self.lock()
            .iter()
            .filter(|(_, c)| !c.url_sources)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Connected spokes that cannot act on an `fs` account rooted at `root` (no declared root
    /// at or above it): callers exclude them from `fs` work. The spoke checks again itself.
    pub fn without_fs_root(&self, root: &std::path::Path) -> Vec<i64> {
        use std::path::Component;
        // Lexical: a root with `..` or not absolute is served by no spoke.
        let clean = root.is_absolute()
            && root
                .components()
                .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
        self.lock()
            .iter()
            .filter(|(_, c)| !clean || !c.fs_roots.iter().any(|r| root.starts_with(r)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets a connection if it is still the registered session.
    pub fn remove(&self, spoke_id: i64, session: u64) -> bool {
        let mut map = self.lock();
        if map.get(&spoke_id).is_some_and(|c| c.session == session) {
            map.remove(&spoke_id);
            return true;
        }
        false
    }

    /// Records a spoke's heartbeat. True when it brings the first measurement of a storage
    /// endpoint this hub asked it to measure: transfers waiting for that can be dispatched now.
    /// (Only endpoints the hub asked for count, each once per session, so a spoke cannot make
    /// the hub rescan its queue at will.)
    pub fn heartbeat(&self, spoke_id: i64, hb: Heartbeat) -> bool {
        let mut map = self.lock();
        let Some(c) = map.get_mut(&spoke_id) else {
            return false;
        };
        let first = first_answers(&c.asked, &mut c.answered, &hb.rtts);
        c.last_heartbeat = Instant::now();
        c.load = hb;
        first
    }

    /// Closes a spoke's connection at once (revocation).
    pub fn disconnect(&self, spoke_id: i64, code: u32, reason: &str) -> bool {
        match self.lock().remove(&spoke_id) {
            Some(c) => {
                c.conn
                    .close(quinn::VarInt::from_u32(code), reason.as_bytes());
                true
            }
            None => false,
        }
    }

    /// Whether the spoke is connected and healthy.
    pub fn is_healthy(&self, spoke_id: i64) -> bool {
        let now = Instant::now();
        self.lock()
            .get(&spoke_id)
            .is_some_and(|c| self.healthy(c, now))
    }

    /// Sends a message to a connected spoke; false when it is gone.
    pub fn send(&self, spoke_id: i64, msg: HubMsg) -> bool {
        self.lock()
            .get(&spoke_id)
            .is_some_and(|c| c.tx.send(msg).is_ok())
    }

    /// Adjusts the count of transfers assigned to a spoke.
    pub fn note_assigned(&self, spoke_id: i64, delta: isize) {
        if let Some(c) = self.lock().get_mut(&spoke_id) {
            c.assigned = c.assigned.saturating_add_signed(delta);
        }
    }

    /// Connected spoke ids (healthy or not).
    pub fn connected_ids(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    /// Live status of one spoke.
    pub fn status(&self, spoke_id: i64) -> Option<LiveStatus> {
        let now = Instant::now();
        self.lock().get(&spoke_id).map(|c| LiveStatus {
            healthy: self.healthy(c, now),
            connected_secs: now.duration_since(c.connected_at).as_secs(),
            last_heartbeat_ms_ago: now.duration_since(c.last_heartbeat).as_millis() as u64,
            active_jobs: c.load.active_jobs,
            free_slots: c.load.free_slots,
            bytes_per_sec: c.load.bytes_per_sec,
            rtt_us: c.conn.rtt().as_micros() as u64,
            rtts: c
                .load
                .rtts
                .iter()
                .map(|s| (s.target.clone(), s.rtt_us))
                .collect(),
            data_endpoint: c.load.data_endpoint.map(|h| match h {
                shared::proto::EndpointHealth::Up => "up",
                shared::proto::EndpointHealth::Down => "down",
            }),
        })
    }

    /// Chooses a spoke for a transfer touching storage in `near` (host:port of the provider
    /// endpoints) and `region`: healthy, with a free slot; then the lowest measured RTT to the
    /// storage (summed over the endpoints: the spoke must reach all of them), then same region,
    /// then least loaded. `exclude` skips spokes (e.g. the one that just failed).
    pub fn choose(&self, region: Option<&str>, near: &[String], exclude: &[i64]) -> Option<Pick> {
        let now = Instant::now();
        let map = self.lock();
        // (id, ranking key: storage RTT ms, other region, busy slots, id; lower is better)
        type Ranked<'a> = (i64, (u64, u8, u64, i64), &'a Connected);
        let mut best: Option<Ranked<'_>> = None;
        for (id, c) in map.iter() {
            if exclude.contains(id) || !self.healthy(c, now) {
                continue;
            }
            let busy = (c.assigned as u32).max(c.load.active_jobs);
            if busy >= c.slots {
                continue;
            }
            let quic = c.conn.rtt().as_micros() as u64;
            let rtt = near.iter().fold(0u64, |sum, n| {
                let claimed = c.storage_rtt(n).unwrap_or(UNREACHABLE);
                sum.saturating_add(plausible_rtt(claimed, self.own_rtt(n), quic))
            });
            let same_region = u8::from(region != Some(c.region.as_str()));
            // Lower is better; the id keeps the choice deterministic.
            let key = (rtt / 1000, same_region, u64::from(busy), *id);
            if best.as_ref().is_none_or(|(_, k, _)| key < *k) {
                best = Some((*id, key, c));
            }
        }
        best.map(|(id, _, c)| Pick {
            spoke_id: id,
            region: c.region.clone(),
            tx: c.tx.clone(),
        })
    }

    /// This hub's last measured RTT to a storage endpoint, µs.
    fn own_rtt(&self, endpoint: &str) -> Option<u64> {
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .and_then(|(rtt, _)| *rtt)
    }

    /// Whether this hub should measure `endpoint` now (not measured in the last `every`);
    /// true marks the measurement as started.
    pub fn own_probe_due(&self, endpoint: &str, every: Duration) -> bool {
        let now = Instant::now();
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        if own
            .get(endpoint)
            .is_some_and(|(_, at)| now.duration_since(*at) < every)
        {
            return false;
        }
        // Bounded: endpoints come from connected accounts, but a long-running hub sees many.
        if own.len() >= 4096 {
            own.retain(|_, (_, at)| now.duration_since(*at) < every);
        }
        let last = own.get(endpoint).and_then(|(rtt, _)| *rtt);
        own.insert(endpoint.to_owned(), (last, now));
        true
    }

    /// Records this hub's measurement of `endpoint` (`None`: it could not connect).
    pub fn record_own_rtt(&self, endpoint: &str, rtt: Option<u64>) {
        if let Some(e) = self
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(endpoint)
        {
            e.0 = rtt;
        }
    }

    /// Asks healthy spokes that have not measured some of `endpoints` to measure them (once per
    /// connection). True while any healthy spoke still lacks a measurement.
    pub fn request_probes(&self, endpoints: &[String]) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let mut missing_any = false;
        for c in map.values_mut() {
            if !self.healthy(c, now) {
                continue;
            }
            let missing: Vec<String> = endpoints
                .iter()
                .filter(|e| c.storage_rtt(e).is_none())
                .cloned()
                .collect();
            missing_any |= !missing.is_empty();
            let new: Vec<String> = missing
                .into_iter()
                .filter(|e| c.asked.insert(e.clone()))
                .collect();
            if !new.is_empty() {
                let _ = c.tx.send(HubMsg::Probe { targets: new });
            }
        }
        missing_any
    }

    /// The spoke to read a copy's source (`src`, host:port) for the spoke `writer` near its
    /// destination: a healthy spoke with a relay endpoint whose measured RTT to the source is
    /// clearly better than the writer's (≥ 20 % and ≥ 10 ms), or which reaches a source the
    /// writer cannot. Returns `(spoke id, relay host:port)`.
    pub fn choose_relay(&self, src: &str, writer: i64, exclude: &[i64]) -> Option<(i64, String)> {
        let now = Instant::now();
        let map = self.lock();
        let own = self.own_rtt(src);
        let plausible = |c: &Connected| {
            let quic = c.conn.rtt().as_micros() as u64;
            c.storage_rtt(src).map(|r| plausible_rtt(r, own, quic))
        };
        let writer_rtt = plausible(map.get(&writer)?)?;
        let (rtt, id, addr) = map
            .iter()
            .filter(|(id, c)| **id != writer && !exclude.contains(id) && self.healthy(c, now))
            .filter_map(|(id, c)| {
                let rtt = plausible(c).filter(|r| *r < UNREACHABLE)?;
                Some((rtt, *id, c.advertise.clone()?))
            })
            .min_by_key(|(rtt, id, _)| (*rtt, *id))?;
        let gain = writer_rtt.saturating_sub(rtt);
        let clearly_nearer = writer_rtt == UNREACHABLE
            || (gain >= RELAY_MIN_GAIN.as_micros() as u64
                && gain.saturating_mul(100) >= rtt.saturating_mul(RELAY_MIN_GAIN_PCT));
        clearly_nearer.then_some((id, addr))
    }

    /// A healthy spoke with a data endpoint for client-direct transfers: same region first,
    /// then least busy. A spoke whose last heartbeat reported its endpoint down gets no
    /// clients. Returns `(spoke id, host:port)`.
    pub fn choose_data(&self, region: &str, exclude: &[i64]) -> Option<(i64, String)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(id, c)| !exclude.contains(id) && self.healthy(c, now))
            .filter(|(_, c)| c.load.data_endpoint != Some(shared::proto::EndpointHealth::Down))
            .filter_map(|(id, c)| {
                let a = c.advertise.clone()?;
                let key = (u8::from(c.region != region), c.load.active_jobs, *id);
                Some((key, *id, a))
            })
            .min_by_key(|(k, _, _)| *k)
            .map(|(_, id, a)| (id, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_first_answer_to_a_probe_wakes_the_scheduler() {
        let sample = |t: &str| shared::proto::RttSample {
            target: t.into(),
            rtt_us: 1_000,
        };
        let asked: HashSet<String> = ["s3.a:9000".to_owned()].into();
        let mut answered = HashSet::new();
        // Endpoints nobody asked for, and other kinds of samples, do not count.
        assert!(!first_answers(
            &asked,
            &mut answered,
            &[sample("storage:other:1"), sample("hub:local")]
        ));
        assert!(first_answers(
            &asked,
            &mut answered,
            &[sample("storage:s3.a:9000")]
        ));
        // Again, or after a heartbeat without it (a spoke playing games): never again.
        assert!(!first_answers(
            &asked,
            &mut answered,
            &[sample("storage:s3.a:9000")]
        ));
        assert!(!first_answers(&asked, &mut answered, &[]));
        assert!(!first_answers(
            &asked,
            &mut answered,
            &[sample("storage:s3.a:9000")]
        ));
    }

    #[test]
    fn claims_below_the_triangle_floor_are_raised() {
        // The hub reaches the storage in 40 ms and the spoke in 10 ms: the spoke cannot be
        // nearer the storage than 30 ms, whatever it says.
        assert_eq!(plausible_rtt(0, Some(40_000), 10_000), 30_000);
        assert_eq!(plausible_rtt(1, Some(40_000), 10_000), 30_000);
        // A plausible claim stands, and so does one the hub has nothing to set against.
        assert_eq!(plausible_rtt(35_000, Some(40_000), 10_000), 35_000);
        assert_eq!(plausible_rtt(5, None, 10_000), 5);
        assert_eq!(plausible_rtt(5, Some(UNREACHABLE), 10_000), 5);
        // A spoke farther from the hub than the storage is: no floor.
        assert_eq!(plausible_rtt(2_000, Some(40_000), 60_000), 2_000);
        // Unreachable stays unreachable.
        assert_eq!(
            plausible_rtt(UNREACHABLE, Some(40_000), 10_000),
            UNREACHABLE
        );
    }
}
