//! Latency-aware steering: which hub a client should use, decided from live measurements and
//! answered over DNS.
//!
//! - [`core`]: the decision, sans IO (rank hubs for a client network).
//! - [`dns`]: the authoritative DNS server (hickory): `api.<zone>` steered, `<region>.api.<zone>`
//!   fixed, static records, SOA/NS, NXDOMAIN for the rest; malformed client subnets get FORMERR.
//! - [`rrl`]: response rate limiting of UDP answers per client network (token bucket, slip).
//! - [`tcpinfo`]: the kernel's RTT of an accepted TCP connection.
//! - This module: the shared state. Every hub measures the handshake RTT of the API connections
//!   it accepts, per client network (an EWMA), and writes its estimates to the database; it
//!   probes the other hubs' `/readyz` and writes what it sees; every second it reloads the
//!   directory, the RTTs and the health votes into a snapshot the DNS server answers from.

pub mod core;
pub mod dns;
pub mod rrl;
pub mod tcpinfo;

use self::core::{decide, Decision, HubEntry, Hysteresis, Inputs, Prefix};
use crate::config::Config;
use crate::db::{HealthRecord, RttRecord};
use crate::state::{now_ms, AppState};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the snapshot is rebuilt from the database.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often this hub re-registers in the directory.
const REGISTER_EVERY: Duration = Duration::from_secs(10);
/// Hubs not seen for this long leave the directory.
const DIRECTORY_AGE: Duration = Duration::from_secs(300);
/// RTT estimates older than this are ignored.
pub const RTT_AGE: Duration = Duration::from_secs(7 * 86_400);
/// How often the whole RTT table is read again (between, only recent rows are).
const RTT_FULL_RELOAD: Duration = Duration::from_secs(60);
/// Rows updated this recently are read at every reload: the flush delay and clock differences
/// between hubs stay well inside it.
const RTT_RECENT: Duration = Duration::from_secs(30);
/// At most this many client networks are loaded.
const MAX_PREFIXES: i64 = 200_000;
/// Weight of a new RTT sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Local estimates kept at most (oldest-updated dropped beyond).
const MAX_LOCAL: usize = 100_000;
/// Health observations older than this are deleted: readers look only at the last few probe
/// intervals, so an older row is one its observer stopped writing (the observer left, or the
/// target left the directory).
pub const HEALTH_RETENTION: Duration = Duration::from_secs(86_400);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What answers are computed from; replaced whole on every reload.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub hubs: Vec<HubEntry>,
    /// The other hubs' API URLs (the ones this hub probes).
    pub peers: Vec<String>,
    /// Client network → region → RTT µs. Shared between snapshots until new samples arrive.
    pub rtt: Arc<RttTable>,
}

/// Client network → region → RTT µs.
pub type RttTable = HashMap<Prefix, HashMap<String, u64>>;

/// One local RTT estimate.
#[derive(Debug, Clone, Copy)]
struct Ewma {
    rtt_us: f64,
    samples: u64,
    dirty: bool,
    updated_ms: i64,
}

/// The steering state of one hub.
#[derive(Debug)]
pub struct Steering {
    /// This hub's id in the directory (its public URL) and region.
    pub me: String,
    pub region: String,
    pub default_region: String,
    pub cidr_regions: Vec<(ipnet::IpNet, String)>,
    pub hysteresis: Hysteresis,
    pub ttl: u32,
    /// The addresses answered for this hub.
    pub addresses: Vec<IpAddr>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Per client network: the region last answered, and the snapshot version it was decided
    /// with (a decision is reused until the snapshot changes).
    sticky: Mutex<HashMap<Prefix, (u64, String)>>,
    local: Mutex<HashMap<Prefix, Ewma>>,
}

impl Steering {
    pub fn new(config: &Config) -> Steering {
        let dns = &config.dns;
        let mut addresses = dns.addresses.clone();
        if addresses.is_empty() {
            if let Some(ip) = host_ip(&config.public_url()) {
                addresses.push(ip);
            }
        }
        Steering {
            me: config.public_url(),
            region: config.region.clone(),
            default_region: dns
                .default_region
                .clone()
                .unwrap_or_else(|| config.region.clone()),
            cidr_regions: dns
                .regions
                .iter()
                .map(|r| (r.cidr, r.region.clone()))
                .collect(),
            hysteresis: Hysteresis {
                pct: dns.hysteresis_pct,
                min_gain: Duration::from_millis(dns.hysteresis_ms),
            },
            ttl: dns.ttl_secs,
            addresses,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            sticky: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The decision for `prefix` from `snap`, staying on `sticky` unless another hub is clearly
    /// better.
    fn decide_for(&self, snap: &Snapshot, prefix: &Prefix, sticky: Option<&str>) -> Decision {
        decide(
            prefix.addr(),
            &Inputs {
                hubs: &snap.hubs,
                rtt_us: snap.rtt.get(prefix),
                cidr_regions: &self.cidr_regions,
                default_region: &self.default_region,
                sticky,
                hysteresis: self.hysteresis,
            },
        )
    }

    /// The region to answer from `snap` for a client (its address, or an ECS address with its
    /// source prefix length), and the prefix the answer was decided for (its length is the ECS
    /// scope). A decision is reused until the snapshot changes.
    pub fn choose(
        &self,
        snap: &Snapshot,
        client: IpAddr,
        source_len: Option<u8>,
    ) -> (Option<String>, Prefix) {
        let prefix = Prefix::of(client, source_len);
        let mut sticky = lock(&self.sticky);
        let old = match sticky.get(&prefix) {
            Some((v, region)) if *v == snap.version => return (Some(region.clone()), prefix),
            Some((_, region)) => Some(region.clone()),
            None => None,
        };
        let d = self.decide_for(snap, &prefix, old.as_deref());
        if let Some(r) = &d.chosen {
            if sticky.len() >= MAX_LOCAL {
                sticky.clear();
            }
            sticky.insert(prefix, (snap.version, r.clone()));
        }
        (d.chosen, prefix)
    }

    /// The full decision for a client, as `GET /v1/network/steering` explains it.
    pub fn explain(&self, snap: &Snapshot, client: IpAddr) -> (Decision, Prefix) {
        let prefix = Prefix::of(client, None);
        let old = lock(&self.sticky).get(&prefix).map(|(_, r)| r.clone());
        (self.decide_for(snap, &prefix, old.as_deref()), prefix)
    }

    /// Addresses of the hub of `region` in the current snapshot.
    pub fn addresses_of(&self, snap: &Snapshot, region: &str) -> Vec<IpAddr> {
        snap.hubs
            .iter()
            .filter(|h| h.region == region)
            .flat_map(|h| {
                h.ipv4
                    .iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(h.ipv6.iter().map(|a| IpAddr::V6(*a)))
            })
            .collect()
    }

    /// Folds one handshake RTT of a connection from `peer` into the local estimate.
    pub fn record_rtt(&self, peer: IpAddr, rtt_us: u32) {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        if peer.is_loopback() || rtt_us == 0 {
            return;
        }
        let prefix = Prefix::of(peer, None);
        let mut local = lock(&self.local);
        if local.len() >= MAX_LOCAL && !local.contains_key(&prefix) {
            // Full: forget the estimates already written to the database (their networks start
            // a fresh average on their next sample). One pass per fill, not per connection.
            local.retain(|_, e| e.dirty);
            if local.len() >= MAX_LOCAL {
                return;
            }
        }
        let e = local.entry(prefix).or_insert(Ewma {
            rtt_us: f64::from(rtt_us),
            samples: 0,
            dirty: true,
            updated_ms: 0,
        });
        e.rtt_us = if e.samples == 0 {
            f64::from(rtt_us)
        } else {
            EWMA_ALPHA * f64::from(rtt_us) + (1.0 - EWMA_ALPHA) * e.rtt_us
        };
        e.samples += 1;
        e.dirty = true;
        e.updated_ms = now_ms();
    }

    /// Estimates changed since the last flush (marked clean).
    fn take_dirty(&self) -> Vec<RttRecord> {
        let mut local = lock(&self.local);
        local
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(p, e)| {
                e.dirty = false;
                RttRecord {
                    prefix: p.to_string(),
                    region: self.region.clone(),
                    rtt_us: e.rtt_us as i64,
                    samples: e.samples as i64,
                    updated_ms: e.updated_ms,
                }
            })
            .collect()
    }

    fn publish(&self, snap: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }
}

/// The IP in a URL's host, if it is one.
fn host_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split("://").nth(1)?;
    let host = rest.split('/').next()?;
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h).parse().ok()
}

/// Health of each hub from the observations: with at least three hubs a hub is down only when
/// two others saw it fail; with fewer, one is enough. A hub never votes on itself.
pub fn hub_health(hubs: &[String], observations: &[HealthRecord]) -> HashMap<String, bool> {
    let needed = if hubs.len() >= 3 { 2 } else { 1 };
    hubs.iter()
        .map(|h| {
            let down = observations
                .iter()
                .filter(|o| &o.target == h && &o.observer != h && !o.healthy)
                .count();
            (h.clone(), down < needed)
        })
        .collect()
}

/// The hub directory with each region's health, and the other hubs' URLs.
async fn load_hubs(state: &AppState) -> anyhow::Result<(Vec<HubEntry>, Vec<String>)> {
    let now = now_ms();
    let dir = state
        .db
        .steering_hubs(now - DIRECTORY_AGE.as_millis() as i64)
        .await?;
    let interval = Duration::from_secs(state.config.dns.probe_interval_secs.max(1));
    let fresh = now - (interval * 3 + Duration::from_secs(10)).as_millis() as i64;
    let observations = state.db.health_since(fresh).await?;
    let ids: Vec<String> = dir.iter().map(|h| h.api.clone()).collect();
    let health = hub_health(&ids, &observations);
    // One entry per region: healthy if any of its hubs is, answering the healthy ones (all of
    // them when none is).
    let mut regions: BTreeMap<&str, Vec<(bool, Vec<IpAddr>)>> = BTreeMap::new();
    for h in &dir {
        let healthy = health.get(&h.api).copied().unwrap_or(true);
        let addrs = h.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        regions.entry(&h.region).or_default().push((healthy, addrs));
    }
    let hubs = regions
        .into_iter()
        .map(|(region, members)| {
            let healthy = members.iter().any(|(ok, _)| *ok);
            let mut e = HubEntry {
                region: region.to_owned(),
                ipv4: Vec::new(),
                ipv6: Vec::new(),
                healthy,
            };
            for ip in members
                .into_iter()
                .filter(|(ok, _)| *ok == healthy)
                .flat_map(|(_, a)| a)
            {
                match ip {
                    IpAddr::V4(v4) => e.ipv4.push(v4),
                    IpAddr::V6(v6) => e.ipv6.push(v6),
                }
            }
            e
        })
        .collect();
    let peers = ids
        .into_iter()
        .filter(|a| *a != state.steering.me)
        .collect();
    Ok((hubs, peers))
}

/// RTT rows updated since `since_ms`, folded into `table`; whether any arrived.
async fn load_rtts(state: &AppState, since_ms: i64, table: &mut RttTable) -> anyhow::Result<bool> {
    let rows = state.db.rtts_since(since_ms, MAX_PREFIXES).await?;
    let any = !rows.is_empty();
    for r in rows {
        if let Some(p) = Prefix::parse(&r.prefix) {
            table
                .entry(p)
                .or_default()
                .insert(r.region, r.rtt_us.max(0) as u64);
        }
    }
    Ok(any)
}

/// The next snapshot. The RTT table is read whole every [`RTT_FULL_RELOAD`] (which also drops
/// estimates past [`RTT_AGE`]); in between only rows updated in the last [`RTT_RECENT`] are
/// read and folded into a copy of the previous table, and not even that copy is made when none
/// arrived.
async fn reload(state: &AppState, prev: &Snapshot, full: bool) -> anyhow::Result<Snapshot> {
    let (hubs, peers) = load_hubs(state).await?;
    let now = now_ms();
    let rtt = if full {
        let mut table = RttTable::new();
        load_rtts(state, now - RTT_AGE.as_millis() as i64, &mut table).await?;
        Arc::new(table)
    } else {
        let mut recent = RttTable::new();
        if load_rtts(state, now - RTT_RECENT.as_millis() as i64, &mut recent).await? {
            let mut table = (*prev.rtt).clone();
            for (p, by_region) in recent {
                table.entry(p).or_default().extend(by_region);
            }
            Arc::new(table)
        } else {
            prev.rtt.clone()
        }
    };
    Ok(Snapshot {
        version: prev.version + 1,
        hubs,
        peers,
        rtt,
    })
}

/// Registers this hub, flushes RTTs, reloads the snapshot every second, and probes the other
/// hubs every `dns.probe_interval_secs`. Runs until aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let st = &state.steering;
        let interval = Duration::from_secs(state.config.dns.probe_interval_secs.max(1));
        let client = reqwest::Client::builder()
            .timeout(interval.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut last_full: Option<tokio::time::Instant> = None;
        let mut last_register: Option<tokio::time::Instant> = None;
        let mut last_probe: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            if last_register.is_none_or(|t| now - t >= REGISTER_EVERY) {
                let addrs: Vec<String> = st.addresses.iter().map(|a| a.to_string()).collect();
                match state
                    .db
                    .upsert_steering_hub(&st.me, &st.region, &addrs, now_ms())
                    .await
                {
                    Ok(()) => last_register = Some(now),
                    Err(e) => tracing::warn!(error = %e, "registering in the steering directory"),
                }
            }
            let dirty = st.take_dirty();
            if !dirty.is_empty() {
                if let Err(e) = state.db.upsert_rtts(&dirty).await {
                    tracing::warn!(error = %e, "writing RTT estimates");
                }
            }
            if last_probe.is_none_or(|t| now - t >= interval) {
                last_probe = Some(now);
                probe_peers(&state, &st.snapshot().peers, &client, &mut failures).await;
            }
            let full = last_full.is_none_or(|t| now - t >= RTT_FULL_RELOAD);
            match reload(&state, &st.snapshot(), full).await {
                Ok(snap) => {
                    if full {
                        last_full = Some(now);
                    }
                    st.publish(snap);
                }
                Err(e) => tracing::warn!(error = %e, "reloading the steering snapshot"),
            }
        }
    })
}

/// What one prune round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rtts: u64,
    pub health: u64,
}

/// Deletes the steering rows no reader looks at any more: RTT estimates not updated for
/// [`RTT_AGE`] (the snapshot ignores them) and health observations older than a day, in
/// bounded batches through their `updated_ms` indexes ([`crate::db::Db::prune`]). Each row is
/// the latest of its key (the writers upsert), so nothing a reader uses goes. Run from the
/// hub's periodic sweep (`claims::spawn_sweeper`) with the current time as `now`.
pub async fn prune(db: &crate::db::Db, now: i64) -> Result<Pruned, sqlx::Error> {
    Ok(Pruned {
        rtts: db
            .prune(crate::db::STEERING_RTT, now - RTT_AGE.as_millis() as i64)
            .await?,
        health: db
            .prune(
                crate::db::HUB_HEALTH,
                now - HEALTH_RETENTION.as_millis() as i64,
            )
            .await?,
    })
}

/// Probes every other hub's `/readyz` once and records what it saw.
async fn probe_peers(
    state: &AppState,
    peers: &[String],
    client: &reqwest::Client,
    failures: &mut HashMap<String, u32>,
) {
    let st = &state.steering;
    let results = futures::future::join_all(peers.iter().map(|api| async move {
        let url = format!("{}/readyz", api.trim_end_matches('/'));
        let ok = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
        (api.clone(), ok)
    }))
    .await;
    let limit = state.config.dns.probe_failures.max(1);
    for (api, ok) in results {
        let f = failures.entry(api.clone()).or_insert(0);
        *f = if ok { 0 } else { f.saturating_add(1) };
        let rec = HealthRecord {
            observer: st.me.clone(),
            target: api.clone(),
            healthy: *f < limit,
            failures: i64::from(*f),
            updated_ms: now_ms(),
        };
        if !rec.healthy && *f == limit {
            tracing::warn!(hub = %api, failures = *f, "a peer hub failed its readiness probes");
        }
        if let Err(e) = state.db.upsert_health(&rec).await {
            tracing::warn!(error = %e, "writing hub health");
        }
    }
    failures.retain(|k, _| peers.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(observer: &str, target: &str, healthy: bool) -> HealthRecord {
        HealthRecord {
            observer: observer.into(),
            target: target.into(),
            healthy,
            failures: if healthy { 0 } else { 3 },
            updated_ms: 0,
        }
    }

    #[test]
    fn health_needs_two_voices_with_three_hubs() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let one = hub_health(&three, &[obs("b", "a", false)]);
        assert!(one["a"], "one observer is not enough with three hubs");
        let two = hub_health(&three, &[obs("b", "a", false), obs("c", "a", false)]);
        assert!(!two["a"]);
        assert!(two["b"] && two["c"]);
        let selfvote = hub_health(&three, &[obs("a", "a", false), obs("b", "a", false)]);
        assert!(selfvote["a"], "a hub does not vote on itself");
        let pair: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert!(!hub_health(&pair, &[obs("b", "a", false)])["a"]);
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_ip("http://10.1.2.3:8080"), "10.1.2.3".parse().ok());
        assert_eq!(
            host_ip("https://[2001:db8::1]:443/x"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(host_ip("https://hub.example.com"), None);
    }
}
