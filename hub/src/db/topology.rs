//! Where each query goes on PostgreSQL: writes to the writable primary among `database.url`'s
//! hosts (not in recovery, highest timeline, never a lower timeline than one already seen), and
//! reads that tolerate the region's replication lag to `database.replica_url`, with
//! read-your-writes for API requests and the client-carried commit position
//! (`X-Switchyard-Position`).
//!
//! The rules (ARCHITECTURE.md, "which queries may read a replica, and why"):
//! - Only the reads [`super::Db`] sends through `reader()` may go to the replica, and only inside
//!   an API request ([`in_request`]). Background work (scheduler, sweeps, leases, revocation
//!   feed) reads the primary: it makes decisions that the next write depends on. The steering
//!   snapshot (`stale_reader()`) is the one background read that takes the replica.
//! - **Read-your-writes.** A write made inside a request returns its transaction id; before the
//!   write call returns, the hub waits (at most `database.read_your_writes_wait_ms`) until the
//!   transaction is visible in the replica's snapshot (`pg_visible_in_snapshot`, polled as its
//!   own autocommit statement). Every hub of the region reads the same replica, so whichever
//!   hub the client reads through next sees the write. Past the bound, the replica is fenced by
//!   that transaction: no read of this hub goes to it until the replica shows it.
//! - **Across regions.** The request's newest write position (`timeline:LSN@xid`: the LSN from
//!   the replica once it shows the write, else the primary's insert position; the transaction
//!   id) is answered in `X-Switchyard-Position`; a read carrying it waits (at most
//!   `database.position_wait_ms`) for the local replica to reach it, else reads the primary.
//!   On the same timeline the transaction id decides (exact: an LSN taken after a commit can be
//!   past WAL that an idle primary does not send for a while); across a failover, the LSN does.
//! - A replica that is unreachable, not in recovery, on another timeline than the primary, or
//!   more than `database.max_replica_lag_ms` behind is not read; the primary is. The lag is
//!   measured, not inferred: the monitor commits an empty transaction on the primary (a
//!   heartbeat) and times how long until the replica shows it.
//! - Any read of one row that the replica does not have is asked again of the primary, so a row
//!   made outside a request (the command line) or in another region is never "not found".

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The response (and request) header carrying a commit position.
pub const POSITION_HEADER: &str = "x-switchyard-position";

/// How often the monitor samples the primary's position and the replica's replay.
const MONITOR_EVERY: Duration = Duration::from_millis(250);
/// How often the primary is re-discovered among several hosts when nothing failed.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// How long the monitor watches for its heartbeat at each round before moving on.
const HEARTBEAT_WATCH: Duration = Duration::from_millis(150);
/// At most this many transactions fence the replica; past that, one heartbeat stands in.
const MAX_FENCE: usize = 64;
/// How long one probe of one host may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A position in the primary's write-ahead log: its timeline and LSN. An LSN alone is wrong
/// after a failover (the new timeline reuses the LSNs past the switch point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub timeline: u32,
    pub lsn: u64,
    /// The write's transaction id (64-bit, with epoch), when known.
    pub xid: Option<u64>,
}

impl Position {
    /// Whether a server at `self` has everything written at `other` (by LSN).
    pub fn covers(&self, other: &Position) -> bool {
        self.timeline >= other.timeline && self.lsn >= other.lsn
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.timeline, fmt_lsn(self.lsn))?;
        if let Some(x) = self.xid {
            write!(f, "@{x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{POSITION_HEADER} must be TIMELINE:LSN[@XID] as a write answered it \
                 (e.g. 1:0/16B3748@731)"
            )
        };
        let (s, xid) = match s.split_once('@') {
            Some((p, x)) => {
                if x.is_empty() || x.len() > 20 || !x.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (p, Some(x.parse::<u64>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let (tl, lsn) = s.split_once(':').ok_or_else(bad)?;
        if tl.is_empty() || tl.len() > 10 || !tl.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let timeline: u32 = tl.parse().map_err(|_| bad())?;
        if timeline == 0 {
            return Err(bad());
        }
        Ok(Position {
            timeline,
            lsn: parse_lsn(lsn).ok_or_else(bad)?,
            xid,
        })
    }
}

/// Parses PostgreSQL's `pg_lsn` text form (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok(hi) || !ok(lo) {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The `pg_lsn` text form of `lsn`.
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The timeline in a WAL file name (`000000020000000000000003` → 2).
fn walfile_timeline(name: &str) -> Option<u32> {
    u32::from_str_radix(name.get(..8)?, 16).ok()
}

/// Routing knobs, from `database.*`.
#[derive(Clone, Debug)]
pub struct Routing {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub max_replica_lag: Duration,
    pub read_your_writes_wait: Duration,
    pub position_wait: Duration,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
            max_replica_lag: Duration::from_secs(2),
            read_your_writes_wait: Duration::from_secs(2),
            position_wait: Duration::from_secs(1),
        }
    }
}

tokio::task_local! {
    static REQUEST: Arc<RequestScope>;
}

/// What one API request did and may do with the database (see [`in_request`]).
#[derive(Debug, Default)]
pub struct RequestScope {
    primary_only: AtomicBool,
    position: Mutex<Option<Position>>,
    /// Work started by a request that is not the request's own reading (see [`detached`]).
    detached: bool,
}

impl RequestScope {
    /// The newest position this request wrote at, for `X-Switchyard-Position`.
    pub fn position(&self) -> Option<Position> {
        *lock(&self.position)
    }

    fn note(&self, p: Position) {
        let mut cur = lock(&self.position);
        if cur.is_none_or(|c| !c.covers(&p)) {
            *cur = Some(p);
        }
    }
}

/// Runs `f` as an API request: its replica-eligible reads may go to the replica, and its
/// writes wait until the replica shows them (read-your-writes). Work `f` spawns is not inside.
pub async fn in_request<F: std::future::Future>(scope: Arc<RequestScope>, f: F) -> F::Output {
    REQUEST.scope(scope, f).await
}

/// Runs `f`, called from a request, as background work: its reads go to the primary and its
/// writes do not wait for the replica (a dispatcher deciding what to run next must see every
/// hub's newest writes, not the replica's view).
pub async fn detached<F: std::future::Future>(f: F) -> F::Output {
    let scope = Arc::new(RequestScope {
        detached: true,
        ..RequestScope::default()
    });
    REQUEST.scope(scope, f).await
}

fn request() -> Option<Arc<RequestScope>> {
    REQUEST.try_with(Arc::clone).ok().filter(|s| !s.detached)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Labels of [`DbStats`]'s call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CallLabels {
    /// `primary` or `replica`.
    pub pool: &'static str,
    /// `request` (an API request) or `background`.
    pub origin: &'static str,
}

/// Counters of database calls by pool and by origin, and the replica's lag (exported as
/// Prometheus metrics by the hub).
#[derive(Debug)]
pub struct DbStats {
    pub calls: prometheus_client::metrics::family::Family<
        CallLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// The family's four counters, `[replica][background]`, fetched once: counting is on
    /// every query's path.
    counters: [[prometheus_client::metrics::counter::Counter; 2]; 2],
    pub lag_bytes: prometheus_client::metrics::gauge::Gauge,
    pub lag_ms: prometheus_client::metrics::gauge::Gauge,
    /// 1 while replica-eligible reads go to the replica (reachable, in recovery, unfenced,
    /// within `max_replica_lag_ms`), 0 otherwise: the signal that a region reads locally.
    pub usable: prometheus_client::metrics::gauge::Gauge,
}

impl Default for DbStats {
    fn default() -> Self {
        let calls = prometheus_client::metrics::family::Family::<
            CallLabels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        let counter = |pool, origin| calls.get_or_create(&CallLabels { pool, origin }).clone();
        let counters = [
            [
                counter("primary", "request"),
                counter("primary", "background"),
            ],
            [
                counter("replica", "request"),
                counter("replica", "background"),
            ],
        ];
        Self {
            calls,
            counters,
            lag_bytes: Default::default(),
            lag_ms: Default::default(),
            usable: Default::default(),
        }
    }
}

impl DbStats {
    fn count(&self, replica: bool) {
        let background = REQUEST.try_with(|s| s.detached).unwrap_or(true);
        self.counters[usize::from(replica)][usize::from(background)].inc();
    }
}

/// One PostgreSQL server and its pool.
#[derive(Debug)]
pub struct Node {
    /// `host:port` as configured (never the credentials).
    pub label: String,
    pub pool: AnyPool,
    /// The connection URL (holds credentials: never logged).
    url: String,
}

/// What the monitor last saw of the replica.
#[derive(Debug, Clone, Default)]
pub struct ReplicaState {
    pub reachable: bool,
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    pub replay_lsn: Option<u64>,
    /// Bytes between the primary's insert position and the replica's replay (informational:
    /// an idle primary may hold a few hundred bytes it has not flushed or sent).
    pub lag_bytes: Option<u64>,
    /// How long the last heartbeat took to become visible on the replica (or how long the
    /// outstanding one has been waiting, when longer). `None` until one was seen.
    pub lag_ms: Option<u64>,
    /// Reads stay off the replica until it shows these transactions (writes whose visibility
    /// wait ran out; heartbeats committed after a revocation).
    pub fence: Vec<u64>,
    /// A fence is owed since then (a revocation was announced): the next heartbeat started
    /// after that instant joins the fence.
    pub fence_pending: Option<Instant>,
    /// The outstanding heartbeat: its transaction id and when it was committed.
    heartbeat: Option<(u64, Instant)>,
    pub error: Option<String>,
}

/// What the monitor last saw of the primary.
#[derive(Debug, Default)]
struct PrimaryState {
    reachable: bool,
    error: Option<String>,
    /// Its insert position at the last sample.
    lsn: Option<u64>,
}

/// The servers behind a PostgreSQL [`super::Db`].
#[derive(Debug)]
pub struct Topology {
    me: Weak<Topology>,
    /// Writes waiting for the replica to show their transaction, and whom to tell (with the
    /// replica's replay position once it does). One poller serves them all, so a burst of
    /// writes costs one replica query per round, not one per write.
    waiters: Mutex<Vec<(u64, tokio::sync::oneshot::Sender<u64>)>>,
    poller: AtomicBool,
    pub hosts: Vec<Node>,
    current: AtomicUsize,
    timeline: AtomicU32,
    pub replica: Option<Node>,
    replica_state: Mutex<ReplicaState>,
    primary_state: Mutex<PrimaryState>,
    pub routing: Routing,
    pub stats: DbStats,
    wake: Arc<Notify>,
}

/// Splits a libpq-style multi-host URL (`postgres://u@h1:5432,h2:5432/db?x`) into one URL per
/// host, with each host's `host:port` label.
pub fn split_hosts(url: &str) -> Result<Vec<(String, String)>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must be a postgres:// URL".to_owned())?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut out = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err("has an empty host in its host list".to_owned());
        }
        let label = if host.contains(':') && !host.ends_with(']') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        };
        let url = match userinfo {
            Some(u) => format!("{scheme}://{u}@{host}{tail}"),
            None => format!("{scheme}://{host}{tail}"),
        };
        out.push((url, label));
    }
    Ok(out)
}

fn pool(url: &str, routing: &Routing, max: u32) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(routing.acquire_timeout)
        // No ping before each use: to a primary in another region it is a round trip per
        // query. A connection that died meanwhile fails its query instead: reads are asked
        // again (`read!`), writes answer 503 `database_unavailable`.
        .test_before_acquire(false)
        .connect_lazy(url)
}

/// Why a server cannot serve as what it was named for.
#[derive(Debug)]
pub struct Refusal {
    pub key: &'static str,
    pub message: String,
}

/// One probe of a server: in recovery or not, its timeline and positions.
#[derive(Debug, Clone)]
pub struct Probe {
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    /// The primary's insert position, or the replica's replay position.
    pub lsn: Option<u64>,
}

pub async fn probe(pool: &AnyPool) -> Result<Probe, String> {
    let q = sqlx::query(
        "SELECT pg_is_in_recovery() AS rec, \
         CASE WHEN pg_is_in_recovery() THEN NULL \
              ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END AS walfile, \
         CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text \
              ELSE pg_current_wal_insert_lsn()::text END AS lsn, \
         CASE WHEN pg_is_in_recovery() \
              THEN (SELECT received_tli::bigint FROM pg_stat_wal_receiver) END AS tli",
    );
    let row = match tokio::time::timeout(PROBE_TIMEOUT, q.fetch_one(pool)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    let rec: bool = row.try_get("rec").map_err(|e| e.to_string())?;
    let walfile: Option<String> = row.try_get("walfile").map_err(|e| e.to_string())?;
    let lsn: Option<String> = row.try_get("lsn").map_err(|e| e.to_string())?;
    let tli: Option<i64> = row.try_get("tli").map_err(|e| e.to_string())?;
    Ok(Probe {
        in_recovery: rec,
        timeline: match walfile {
            Some(w) => walfile_timeline(&w),
            None => tli.and_then(|t| u32::try_from(t).ok()),
        },
        lsn: lsn.as_deref().and_then(parse_lsn),
    })
}

impl Topology {
    /// Builds the pools and checks what each server is: `database.url` must have a writable
    /// primary, `database.replica_url` (when set) must answer and be a streaming replica (or a
    /// promoted one that `database.url` also names).
    pub async fn open(
        url: &str,
        replica_url: Option<&str>,
        routing: Routing,
    ) -> Result<Arc<Topology>, Refusal> {
        let refuse = |key, message| Refusal { key, message };
        let hosts = split_hosts(url).map_err(|m| refuse("database.url", m))?;
        let mut nodes = Vec::new();
        for (u, label) in hosts {
            let pool = pool(&u, &routing, routing.max_connections)
                .map_err(|e| refuse("database.url", format!("{label}: {e}")))?;
            nodes.push(Node {
                label,
                pool,
                url: u,
            });
        }
        let replica = match replica_url {
            None => None,
            Some(r) => {
                let mut hosts = split_hosts(r).map_err(|m| refuse("database.replica_url", m))?;
                if hosts.len() != 1 {
                    return Err(refuse(
                        "database.replica_url",
                        "must name exactly one host (this region's replica)".into(),
                    ));
                }
                let (u, label) = hosts.remove(0);
                // A local server: waiting longer for a connection only delays the fallback to
                // the primary.
                let quick = Routing {
                    acquire_timeout: routing.acquire_timeout.min(Duration::from_millis(500)),
                    ..routing.clone()
                };
                let pool = pool(&u, &quick, routing.max_connections)
                    .map_err(|e| refuse("database.replica_url", format!("{label}: {e}")))?;
                Some(Node {
                    label,
                    pool,
                    url: u,
                })
            }
        };
        let topo = Arc::new_cyclic(|me| Topology {
            me: me.clone(),
            waiters: Mutex::new(Vec::new()),
            poller: AtomicBool::new(false),
            hosts: nodes,
            current: AtomicUsize::new(0),
            timeline: AtomicU32::new(0),
            replica,
            replica_state: Mutex::new(ReplicaState::default()),
            primary_state: Mutex::new(PrimaryState::default()),
            routing,
            stats: DbStats::default(),
            wake: Arc::new(Notify::new()),
        });
        let found = topo.discover().await;
        if !found.0 {
            return Err(refuse(
                "database.url",
                format!(
                    "no writable primary among its hosts ({})",
                    found.1.join("; ")
                ),
            ));
        }
        if let Some(rep) = &topo.replica {
            match probe(&rep.pool).await {
                Err(e) => {
                    return Err(refuse(
                        "database.replica_url",
                        format!("the replica at {} cannot be reached: {e}", rep.label),
                    ))
                }
                Ok(p) if !p.in_recovery && !topo.hosts.iter().any(|h| h.label == rep.label) => {
                    return Err(refuse(
                        "database.replica_url",
                        format!(
                            "{} is a primary, not a streaming replica (pg_is_in_recovery() is \
                             false); name this region's standby, or list it in database.url if \
                             it was promoted",
                            rep.label
                        ),
                    ))
                }
                Ok(_) => topo.sample_replica().await,
            }
        }
        topo.sample_primary().await;
        let weak = Arc::downgrade(&topo);
        tokio::spawn(monitor(weak));
        Ok(topo)
    }

    /// The current primary's pool.
    pub fn primary(&self) -> &Node {
        &self.hosts[self
            .current
            .load(Ordering::Acquire)
            .min(self.hosts.len() - 1)]
    }

    /// The current primary's connection URL (for the revocation feed's `LISTEN`, which only
    /// a primary can serve: notifications are not replicated).
    pub fn primary_url(&self) -> &str {
        &self.primary().url
    }

    /// Keeps replica-eligible reads on the primary until the replica has replayed the
    /// primary's position as of now (a revocation was just announced: a replica that has not
    /// replayed it must not refill a cache with what was revoked).
    pub fn fence_replica(&self) {
        if self.replica.is_some() {
            lock(&self.replica_state)
                .fence_pending
                .get_or_insert_with(Instant::now);
        }
    }

    /// The primary's timeline as last discovered (0: unknown).
    pub fn timeline(&self) -> u32 {
        self.timeline.load(Ordering::Acquire)
    }

    pub fn writer(&self) -> AnyPool {
        self.stats.count(false);
        self.primary().pool.clone()
    }

    /// A replica-eligible read: the replica inside a request when it is usable, else the
    /// primary.
    pub fn reader(&self) -> (AnyPool, bool) {
        match (&self.replica, request()) {
            (Some(rep), Some(scope))
                if !scope.primary_only.load(Ordering::Acquire) && self.replica_usable() =>
            {
                self.stats.count(true);
                (rep.pool.clone(), true)
            }
            _ => (self.writer(), false),
        }
    }

    /// A read on the replica failed (unreachable, or behind on the schema): reads avoid it
    /// until the monitor sees it answer again (unreachable) or a heartbeat committed after now
    /// shows there (behind).
    pub fn replica_failed(&self, e: &sqlx::Error) {
        let mut s = lock(&self.replica_state);
        if super::is_unavailable(e) {
            if s.reachable {
                tracing::warn!(error = %e, "database replica unreachable; reading the primary");
            }
            s.reachable = false;
            s.error = Some(e.to_string());
        } else {
            tracing::warn!(error = %e, "database replica behind on the schema; reading the primary");
            s.fence_pending.get_or_insert_with(Instant::now);
        }
    }

    /// A background read that tolerates the replica's lag (the steering snapshot).
    pub fn stale_reader(&self) -> AnyPool {
        match &self.replica {
            Some(rep) if self.replica_usable() => {
                self.stats.count(true);
                rep.pool.clone()
            }
            _ => self.writer(),
        }
    }

    pub fn replica_state(&self) -> ReplicaState {
        lock(&self.replica_state).clone()
    }

    /// Whether the primary answered the monitor's last sample, and its error if not.
    pub fn primary_health(&self) -> (bool, Option<String>) {
        let s = lock(&self.primary_state);
        (s.reachable, s.error.clone())
    }

    /// Whether replica-eligible reads may go to the replica now.
    pub fn replica_usable(&self) -> bool {
        if self.replica.is_none() {
            return false;
        }
        let s = lock(&self.replica_state);
        let tl = self.timeline();
        s.reachable
            && s.in_recovery
            && s.fence_pending.is_none()
            && s.fence.is_empty()
            && s.lag_ms
                .is_some_and(|ms| ms <= self.routing.max_replica_lag.as_millis() as u64)
            && (tl == 0 || s.timeline.is_none_or(|t| t == tl))
    }

    /// After a write inside a request (`xid`: its transaction id): waits until the replica
    /// shows it, or fences the replica past it; notes the write's position for the response.
    pub async fn wrote(&self, xid: Option<&str>) {
        let (Some(scope), Some(xid)) = (request(), xid.and_then(|x| x.parse::<u64>().ok())) else {
            return;
        };
        let pos = match &self.replica {
            Some(_) if self.replica_usable() => match self.wait_visible(xid).await {
                Some(p) => Some(p),
                None => {
                    tracing::debug!(xid, "the replica did not show a write in time; fencing it");
                    self.fence(xid);
                    self.primary_position(xid).await
                }
            },
            Some(_) => {
                self.fence(xid);
                self.primary_position(xid).await
            }
            None => self.primary_position(xid).await,
        };
        if let Some(p) = pos {
            scope.note(p);
        }
    }

    async fn wait_visible(&self, xid: u64) -> Option<Position> {
        let lsn = self
            .wait_xid(xid, self.routing.read_your_writes_wait)
            .await?;
        let timeline = lock(&self.replica_state)
            .timeline
            .unwrap_or_else(|| self.timeline());
        Some(Position {
            timeline,
            lsn,
            xid: Some(xid),
        })
    }

    /// Waits at most `limit` until the replica shows transaction `xid`; its replay position
    /// then.
    async fn wait_xid(&self, xid: u64, limit: Duration) -> Option<u64> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.waiters).push((xid, tx));
        self.start_poller();
        tokio::time::timeout(limit, rx).await.ok()?.ok()
    }

    fn start_poller(&self) {
        if self.poller.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                let Some(t) = me.upgrade() else {
                    return;
                };
                if !t.poll_waiters().await {
                    t.poller.store(false, Ordering::Release);
                    // A waiter that came in meanwhile restarts it.
                    if lock(&t.waiters).is_empty() || t.poller.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
                drop(t);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    /// One round of the poller: which waiting transactions the replica shows now. False when
    /// nobody waits any more.
    async fn poll_waiters(&self) -> bool {
        let Some(rep) = &self.replica else {
            return false;
        };
        let xids: Vec<u64> = {
            let mut w = lock(&self.waiters);
            w.retain(|(_, tx)| !tx.is_closed());
            if w.is_empty() {
                return false;
            }
            w.iter().map(|(x, _)| *x).collect()
        };
        self.stats.count(true);
        let Ok(seen) = visible(&rep.pool, &xids).await else {
            return true;
        };
        if seen.is_empty() {
            return true;
        }
        // A separate statement: the replay position read after the commits showed is at or
        // past their commit records.
        self.stats.count(true);
        let Some(lsn) = sqlx::query("SELECT pg_last_wal_replay_lsn()::text AS lsn")
            .fetch_one(&rep.pool)
            .await
            .ok()
            .and_then(|r| r.try_get::<String, _>("lsn").ok())
            .and_then(|l| parse_lsn(&l))
        else {
            return true;
        };
        let mut w = lock(&self.waiters);
        let mut i = 0;
        while i < w.len() {
            if seen.contains(&w[i].0) {
                let (_, tx) = w.swap_remove(i);
                let _ = tx.send(lsn);
            } else {
                i += 1;
            }
        }
        true
    }

    /// The primary's insert position now (after the caller's commit of `xid`).
    async fn primary_position(&self, xid: u64) -> Option<Position> {
        self.stats.count(false);
        let lsn: String = sqlx::query("SELECT pg_current_wal_insert_lsn()::text AS lsn")
            .fetch_one(&self.primary().pool)
            .await
            .and_then(|r| r.try_get("lsn"))
            .ok()?;
        Some(Position {
            timeline: self.timeline(),
            lsn: parse_lsn(&lsn)?,
            xid: Some(xid),
        })
    }

    /// Keeps reads off the replica until it shows transaction `xid`.
    fn fence(&self, xid: u64) {
        let mut s = lock(&self.replica_state);
        if s.fence.len() >= MAX_FENCE {
            // Far behind: wait for a heartbeat committed after all of these instead.
            s.fence.clear();
            s.fence_pending.get_or_insert_with(Instant::now);
        } else {
            s.fence.push(xid);
        }
    }

    /// A read carrying a client's position: waits for the replica to reach it, or sends this
    /// request's reads to the primary.
    pub async fn await_position(&self, want: Position) {
        let Some(scope) = request() else {
            return;
        };
        if want.timeline > self.timeline() {
            // A write on a timeline this hub has not seen: a promotion it missed.
            self.wake.notify_one();
        }
        if let Some(rep) = &self.replica {
            if self.replica_usable() {
                let deadline = Instant::now() + self.routing.position_wait;
                let mut pause = Duration::from_millis(1);
                let same_timeline = lock(&self.replica_state).timeline == Some(want.timeline);
                if let (Some(x), true) = (want.xid, same_timeline) {
                    if self.wait_xid(x, self.routing.position_wait).await.is_some() {
                        return;
                    }
                    scope.primary_only.store(true, Ordering::Release);
                    return;
                }
                loop {
                    self.stats.count(true);
                    let reached = match probe(&rep.pool).await {
                        Ok(p) if p.in_recovery => p.lsn.is_some_and(|lsn| {
                            Position {
                                timeline: p.timeline.unwrap_or(0),
                                lsn,
                                xid: None,
                            }
                            .covers(&want)
                        }),
                        _ => false,
                    };
                    if reached {
                        return;
                    }
                    if Instant::now() + pause > deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(8));
                }
            }
        }
        scope.primary_only.store(true, Ordering::Release);
    }

    /// Finds the writable primary: not in recovery, highest timeline, and never below a
    /// timeline already seen (an old primary that comes back never receives a write). Returns
    /// whether one was found and what each host said.
    async fn discover(&self) -> (bool, Vec<String>) {
        let probes = futures::future::join_all(self.hosts.iter().map(|h| probe(&h.pool))).await;
        let floor = self.timeline();
        let mut best: Option<(usize, u32)> = None;
        let mut said = Vec::new();
        for (i, (h, p)) in self.hosts.iter().zip(probes).enumerate() {
            match p {
                Err(e) => said.push(format!("{}: {e}", h.label)),
                Ok(p) if p.in_recovery => said.push(format!("{}: in recovery", h.label)),
                Ok(p) => {
                    let tl = p.timeline.unwrap_or(0);
                    if tl < floor {
                        said.push(format!(
                            "{}: a primary on timeline {tl}, behind timeline {floor}; never \
                             written to",
                            h.label
                        ));
                        continue;
                    }
                    said.push(format!("{}: primary on timeline {tl}", h.label));
                    if best.is_none_or(|(_, b)| tl > b) {
                        best = Some((i, tl));
                    }
                }
            }
        }
        if let Some((i, tl)) = best {
            let before = self.current.swap(i, Ordering::AcqRel);
            let old_tl = self.timeline.swap(tl, Ordering::AcqRel);
            if before != i || old_tl != tl {
                tracing::warn!(primary = %self.hosts[i].label, timeline = tl,
                    "database primary (re)discovered");
            }
        }
        (best.is_some(), said)
    }

    async fn sample_primary(&self) -> bool {
        let pool = self.primary().pool.clone();
        let p = probe(&pool).await;
        let ok = {
            let mut s = lock(&self.primary_state);
            match p {
                Ok(p) if !p.in_recovery && p.timeline.is_none_or(|t| t >= self.timeline()) => {
                    s.reachable = true;
                    s.error = None;
                    s.lsn = p.lsn;
                    true
                }
                Ok(p) => {
                    s.reachable = false;
                    s.error = Some(if p.in_recovery {
                        "in recovery".into()
                    } else {
                        "on an older timeline".into()
                    });
                    false
                }
                Err(e) => {
                    s.reachable = false;
                    s.error = Some(e);
                    false
                }
            }
        };
        if ok && self.replica.is_some() {
            self.heartbeat(&pool).await;
        }
        ok
    }

    /// Commits a heartbeat on the primary when none is outstanding (or a fence is owed): an
    /// empty transaction whose id the replica shows once it has replayed it.
    async fn heartbeat(&self, pool: &AnyPool) {
        let (outstanding, owed) = {
            let r = lock(&self.replica_state);
            (r.heartbeat.is_some(), r.fence_pending)
        };
        if outstanding && owed.is_none() {
            return;
        }
        let t0 = Instant::now();
        let xid: Option<u64> = sqlx::query("SELECT pg_current_xact_id()::text AS xid")
            .fetch_one(pool)
            .await
            .ok()
            .and_then(|r| r.try_get::<String, _>("xid").ok())
            .and_then(|x| x.parse().ok());
        let Some(xid) = xid else {
            return;
        };
        // Started after the fence was owed: it commits after the revocation did.
        let at = {
            let mut r = lock(&self.replica_state);
            if r.fence_pending.is_some_and(|since| t0 > since) {
                r.fence.push(xid);
                r.fence_pending = None;
            }
            if r.heartbeat.is_some() {
                return;
            }
            // Committed about halfway through the round trip.
            let at = t0 + t0.elapsed() / 2;
            r.heartbeat = Some((xid, at));
            at
        };
        // Its lag is the time until it shows: watch closely for a short while, so the figure
        // is not rounded up to the monitor's period (sample_replica takes over past that).
        let Some(rep) = &self.replica else {
            return;
        };
        let until = Instant::now() + HEARTBEAT_WATCH;
        while Instant::now() < until {
            if let Ok(v) = visible(&rep.pool, &[xid]).await {
                if v.contains(&xid) {
                    let mut r = lock(&self.replica_state);
                    r.lag_ms =
                        Some(Instant::now().saturating_duration_since(at).as_millis() as u64);
                    r.heartbeat = None;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn sample_replica(&self) {
        let Some(rep) = &self.replica else {
            return;
        };
        let p = probe(&rep.pool).await;
        let (watch, heartbeat): (Vec<u64>, Option<(u64, Instant)>) = {
            let s = lock(&self.replica_state);
            let mut w = s.fence.clone();
            w.extend(s.heartbeat.map(|h| h.0));
            (w, s.heartbeat)
        };
        let seen = match (&p, watch.is_empty()) {
            (Ok(p), false) if p.in_recovery => visible(&rep.pool, &watch).await.ok(),
            _ => None,
        };
        let now = Instant::now();
        let primary_lsn = lock(&self.primary_state).lsn;
        let mut s = lock(&self.replica_state);
        match p {
            Err(e) => {
                s.reachable = false;
                s.error = Some(e);
            }
            Ok(p) => {
                s.reachable = true;
                s.error = None;
                s.in_recovery = p.in_recovery;
                if p.timeline.is_some() {
                    s.timeline = p.timeline;
                }
                s.replay_lsn = p.lsn;
                if !p.in_recovery {
                    s.lag_bytes = None;
                    s.lag_ms = None;
                } else {
                    s.lag_bytes = match (primary_lsn, p.lsn) {
                        (Some(l), Some(r)) => Some(l.saturating_sub(r)),
                        _ => None,
                    };
                    if let Some(seen) = &seen {
                        s.fence.retain(|x| !seen.contains(x));
                    }
                    if let Some((x, at)) = heartbeat {
                        let waited = now.duration_since(at).as_millis() as u64;
                        if seen.as_ref().is_some_and(|v| v.contains(&x)) {
                            s.lag_ms = Some(waited);
                            s.heartbeat = None;
                        } else if s.lag_ms.is_some_and(|l| waited > l) {
                            s.lag_ms = Some(waited);
                        }
                    }
                }
            }
        }
        self.stats
            .lag_bytes
            .set(s.lag_bytes.unwrap_or(0).min(i64::MAX as u64) as i64);
        self.stats
            .lag_ms
            .set(s.lag_ms.unwrap_or(0).min(i64::MAX as u64) as i64);
        drop(s);
        self.stats.usable.set(i64::from(self.replica_usable()));
    }
}

/// Which of `xids` the server's current snapshot shows as completed (committed, for the ids
/// this module asks about: they are all of committed transactions).
async fn visible(pool: &AnyPool, xids: &[u64]) -> Result<Vec<u64>, sqlx::Error> {
    if xids.is_empty() {
        return Ok(Vec::new());
    }
    // Numbers only, so the list is safe to inline (the Any driver binds no arrays).
    let list = xids
        .iter()
        .map(|x| format!("('{x}')"))
        .collect::<Vec<_>>()
        .join(",");
    let rows = sqlx::query(&format!(
        "SELECT x FROM (VALUES {list}) AS v(x) \
         WHERE pg_visible_in_snapshot(x::xid8, pg_current_snapshot())"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("x").ok()?.parse().ok())
        .collect())
}

/// Samples the primary and the replica every [`MONITOR_EVERY`]; re-discovers the primary
/// when it fails (and every [`DISCOVER_EVERY`] with several hosts). Ends when the database is
/// dropped.
async fn monitor(topo: Weak<Topology>) {
    let mut last_discovery = Instant::now();
    loop {
        let Some(t) = topo.upgrade() else {
            return;
        };
        let primary_ok = t.sample_primary().await;
        let several = t.hosts.len() > 1;
        if several && (!primary_ok || last_discovery.elapsed() >= DISCOVER_EVERY) {
            t.discover().await;
            last_discovery = Instant::now();
        }
        t.sample_replica().await;
        let notify = t.wake.clone();
        drop(t);
        let wake = notify.notified();
        tokio::select! {
            _ = wake => {
                if let Some(t) = topo.upgrade() {
                    t.discover().await;
                    last_discovery = Instant::now();
                }
            }
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_garbage() {
        let p: Position = "2:16/B374D848".parse().expect("a position");
        assert_eq!(p.timeline, 2);
        assert_eq!(p.lsn, (0x16 << 32) | 0xB374_D848);
        assert_eq!(p.xid, None);
        assert_eq!(p.to_string(), "2:16/B374D848");
        let p: Position = "2:16/B374D848@731".parse().expect("a position with an xid");
        assert_eq!(p.xid, Some(731));
        assert_eq!(p.to_string(), "2:16/B374D848@731");
        for bad in [
            "",
            "2",
            "0:0/1",
            "x:0/1",
            "2:0",
            "2:/1",
            "2:0/",
            "2:0/1g",
            "2:123456789/0",
            "2:0/1@",
            "2:0/1@x",
            "2:0/1@1@2",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
        let a = Position {
            timeline: 2,
            lsn: 10,
            xid: None,
        };
        let at = |timeline, lsn| Position {
            timeline,
            lsn,
            xid: None,
        };
        assert!(a.covers(&at(1, 10)));
        assert!(!a.covers(&at(3, 1)));
        assert!(!a.covers(&at(2, 11)));
    }

    #[test]
    fn multi_host_urls_split_per_host() {
        let h = split_hosts("postgres://u:p@a:5433,b/db?sslmode=disable").expect("two hosts");
        assert_eq!(
            h,
            vec![
                (
                    "postgres://u:p@a:5433/db?sslmode=disable".to_owned(),
                    "a:5433".to_owned()
                ),
                (
                    "postgres://u:p@b/db?sslmode=disable".to_owned(),
                    "b:5432".to_owned()
                ),
            ]
        );
        assert!(split_hosts("postgres://u@a,,b/db").is_err());
        assert_eq!(walfile_timeline("000000020000000000000003"), Some(2));
    }
}
