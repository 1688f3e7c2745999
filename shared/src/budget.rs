//! Provider request budgets: a token bucket per (service, provider endpoint or account) that
//! every hub and spoke of the cluster draws from before each request to a provider, and a
//! cluster-wide cool-down when a provider answers `429`/`503` with `Retry-After`.
//!
//! The arithmetic is GCRA (the "generic cell rate algorithm": one timestamp per bucket, the
//! theoretical arrival time of the next request), sans IO in [`gcra`]. A request reserves its
//! slot and then sleeps until it, so callers sharing a bucket are paced in arrival order and
//! the provider sees the configured rate however many processes send. A slot further away than
//! the caller may wait is not reserved: the caller gets [`BudgetSpent`] with the wait as its
//! `Retry-After` (the API answers `429 rate_limited`; background work waits longer).
//!
//! Where the buckets live: [`SharedStore`] (hubs: Redis, see `hub::budgets`; spokes: their hub
//! over the control connection, see `spoke::budget`), else or meanwhile in this process. A
//! store that fails is skipped for [`SHARED_RETRY`] and the process paces alone (its
//! [`Budgets::mode`] says so); nothing fails for lack of it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// After a shared store failed, how long this process paces alone before asking it again.
pub const SHARED_RETRY: Duration = Duration::from_secs(1);
/// How long one call to the shared store may take before this process paces alone.
pub const SHARED_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest key a store accepts (keys name a service and an endpoint or an account digest).
pub const MAX_KEY_LEN: usize = 512;
/// Local buckets kept at most; idle ones are dropped first.
const LOCAL_CAPACITY: usize = 10_000;

/// One bucket's rate: `milli_rate / 1000` requests per second on average, at most `burst` at
/// once after a quiet spell. `milli_rate == 0` is unlimited (cool-downs still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Requests per second, in thousandths.
    pub milli_rate: u64,
    /// Requests that may go at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Limit {
    pub const UNLIMITED: Limit = Limit {
        milli_rate: 0,
        burst: 1,
    };

    /// `rate` requests per second (fractions allowed), `burst` at once.
    pub fn per_second(rate: f64, burst: u32) -> Limit {
        Limit {
            milli_rate: (rate * 1000.0).round().max(0.0) as u64,
            burst: burst.max(1),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.milli_rate == 0
    }

    /// Microseconds between two requests at the average rate.
    pub fn interval_us(&self) -> u64 {
        1_000_000_000u64
            .checked_div(self.milli_rate)
            .map_or(0, |t| t.max(1))
    }

    /// Requests per second, for headers and logs.
    pub fn rate(&self) -> f64 {
        self.milli_rate as f64 / 1000.0
    }
}

/// The cluster's budget settings: hubs read them from `budgets` in their config and hand them
/// to their spokes with the other settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSettings {
    /// Per service (`s3`, `webdav`, `dropbox`, ...); a service not named is unlimited.
    pub services: BTreeMap<String, Limit>,
    /// The longest an API request waits for its budget before `429 rate_limited`.
    pub api_max_wait_ms: u64,
    /// The longest background work (transfers, detectors) waits for one request's budget.
    pub background_max_wait_ms: u64,
    /// Cool-down after a `429` without `Retry-After`.
    pub default_cool_down_ms: u64,
    /// The longest cool-down a provider's `Retry-After` may impose.
    pub max_cool_down_ms: u64,
}

impl Default for BudgetSettings {
    /// Conservative defaults near the cloud providers' published per-user or per-prefix
    /// limits. WebDAV servers are the operator's own (Nextcloud, a NAS): unlimited unless
    /// configured, their `429`s still cool the cluster down.
    fn default() -> Self {
        let services = [
            ("s3", Limit::per_second(3000.0, 3000)),
            ("gcs", Limit::per_second(1000.0, 1000)),
            ("azblob", Limit::per_second(2000.0, 2000)),
            ("dropbox", Limit::per_second(10.0, 20)),
            ("gdrive", Limit::per_second(10.0, 20)),
            ("onedrive", Limit::per_second(10.0, 20)),
        ]
        .into_iter()
        .map(|(s, l)| (s.to_owned(), l))
        .collect();
        Self {
            services,
            api_max_wait_ms: 2_000,
            background_max_wait_ms: 300_000,
            default_cool_down_ms: 1_000,
            max_cool_down_ms: 600_000,
        }
    }
}

impl BudgetSettings {
    pub fn limit(&self, service: &str) -> Limit {
        self.services
            .get(service)
            .copied()
            .unwrap_or(Limit::UNLIMITED)
    }

    /// A provider's cool-down request, capped.
    pub fn cap_cool_down(&self, d: Duration) -> Duration {
        d.min(Duration::from_millis(self.max_cool_down_ms))
    }
}

/// What the store decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Take {
    /// A slot is reserved: send after `wait_us`. `remaining` requests could go at once after
    /// this one; the bucket is full again in `full_in_us`.
    Granted {
        wait_us: u64,
        remaining: u32,
        full_in_us: u64,
    },
    /// The next slot is `wait_us` away, further than the caller may wait: nothing reserved.
    Refused { wait_us: u64 },
    /// The provider asked everyone to stay away for `left_us` more.
    Cooling { left_us: u64 },
}

/// GCRA, sans IO. `tat_us` is the bucket's state (the theoretical arrival time of the next
/// request, in microseconds on the caller's clock; `None` for a new bucket); returns the
/// decision and the new state. The Redis script in `hub::budgets` is the same computation.
pub fn gcra(
    tat_us: Option<u64>,
    now_us: u64,
    limit: Limit,
    max_wait_us: u64,
) -> (Take, Option<u64>) {
    if limit.is_unlimited() {
        return (
            Take::Granted {
                wait_us: 0,
                remaining: limit.burst,
                full_in_us: 0,
            },
            tat_us,
        );
    }
    let t = limit.interval_us();
    let tolerance = t * (u64::from(limit.burst) - 1);
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let allow_at = tat.saturating_sub(tolerance);
    let wait = allow_at.saturating_sub(now_us);
    if wait > max_wait_us {
        return (Take::Refused { wait_us: wait }, tat_us);
    }
    let new = tat + t;
    // Slots left after this one: how far the new arrival time is from a full bucket's.
    let remaining = ((now_us + tolerance + t).saturating_sub(new) / t) as u32;
    (
        Take::Granted {
            wait_us: wait,
            remaining,
            full_in_us: new - now_us,
        },
        Some(new),
    )
}

/// A store every process of the cluster shares. Errors are short descriptions (no secrets).
pub trait SharedStore: Send + Sync + 'static {
    /// Takes a slot of `key`'s bucket, waiting at most `max_wait`.
    fn take<'a>(
        &'a self,
        key: &'a str,
        limit: Limit,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Take, String>> + Send + 'a>>;
    /// Keeps everyone off `key` for `cool_down` (extends, never shortens, a cool-down).
    fn cool<'a>(
        &'a self,
        key: &'a str,
        cool_down: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
    /// `redis`, `hub`: for logs and `/readyz`.
    fn name(&self) -> &'static str;
}

/// Where this process's budgets are kept right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No shared store is configured: this process paces alone.
    Local,
    /// Shared with the cluster.
    Shared(&'static str),
    /// A shared store is configured but failing: pacing alone meanwhile.
    Degraded(&'static str),
}

impl Mode {
    pub fn label(&self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Shared(_) => "shared",
            Mode::Degraded(_) => "local_fallback",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BudgetStats {
    /// Requests that slept for their slot or for a cool-down.
    pub waited: AtomicU64,
    /// Requests refused (the wait was longer than the caller's bound).
    pub refused: AtomicU64,
    /// Cool-downs started by a provider's answer.
    pub cool_downs: AtomicU64,
    /// Calls to the shared store that failed.
    pub shared_failures: AtomicU64,
}

/// Every budget of this process. Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RwLock<BudgetSettings>,
    shared: RwLock<Option<Arc<dyn SharedStore>>>,
    local: Mutex<HashMap<String, LocalBucket>>,
    /// The shared store failed: skip it until this instant.
    skip_until: Mutex<Option<Instant>>,
    degraded: AtomicBool,
    epoch: Instant,
    stats: BudgetStats,
}

#[derive(Debug, Clone, Copy, Default)]
struct LocalBucket {
    tat_us: Option<u64>,
    cool_until_us: u64,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budgets({:?})", self.mode())
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new(BudgetSettings::default())
    }
}

impl Budgets {
    /// Budgets kept in this process only.
    pub fn new(settings: BudgetSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: RwLock::new(settings),
                shared: RwLock::new(None),
                local: Mutex::new(HashMap::new()),
                skip_until: Mutex::new(None),
                degraded: AtomicBool::new(false),
                epoch: Instant::now(),
                stats: BudgetStats::default(),
            }),
        }
    }

    /// Shares the buckets through `store` from now on.
    pub fn set_shared(&self, store: Arc<dyn SharedStore>) {
        *write(&self.inner.shared) = Some(store);
    }

    /// Replaces the settings (a spoke gets its hub's).
    pub fn set_settings(&self, settings: BudgetSettings) {
        *write(&self.inner.settings) = settings;
    }

    pub fn settings(&self) -> BudgetSettings {
        read(&self.inner.settings).clone()
    }

    pub fn stats(&self) -> &BudgetStats {
        &self.inner.stats
    }

    pub fn mode(&self) -> Mode {
        match &*read(&self.inner.shared) {
            None => Mode::Local,
            Some(s) if self.inner.degraded.load(Ordering::Relaxed) => Mode::Degraded(s.name()),
            Some(s) => Mode::Shared(s.name()),
        }
    }

    /// The budget of one provider account (see [`crate::storage::ServiceConfig::budget_key`]).
    pub fn budget(&self, service: &'static str, key: Option<String>) -> Budget {
        Budget {
            budgets: key.is_some().then(|| self.clone()),
            service,
            key: key.map(Arc::from).unwrap_or_else(|| Arc::from("")),
        }
    }

    fn now_us(&self) -> u64 {
        self.inner.epoch.elapsed().as_micros() as u64
    }

    /// One decision for `key`: from the shared store when it answers, else from this process.
    pub async fn take(&self, service: &str, key: &str, max_wait: Duration) -> Take {
        let limit = read(&self.inner.settings).limit(service);
        // A cool-down this process knows of needs no round trip.
        let now = self.now_us();
        if let Some(b) = lock(&self.inner.local).get(key) {
            if b.cool_until_us > now {
                return Take::Cooling {
                    left_us: b.cool_until_us - now,
                };
            }
        }
        if let Some(store) = self.usable_shared() {
            match tokio::time::timeout(SHARED_TIMEOUT, store.take(key, limit, max_wait)).await {
                Ok(Ok(t)) => {
                    self.shared_ok(&*store);
                    return t;
                }
                Ok(Err(e)) => self.shared_failed(&*store, &e),
                Err(_) => self.shared_failed(&*store, "timed out"),
            }
        }
        self.take_local(key, limit, max_wait)
    }

    /// The decision from this process's own bucket for `key`.
    pub fn take_local(&self, key: &str, limit: Limit, max_wait: Duration) -> Take {
        let now = self.now_us();
        let mut local = lock(&self.inner.local);
        if local.len() >= LOCAL_CAPACITY && !local.contains_key(key) {
            local.retain(|_, b| b.tat_us.is_some_and(|t| t > now) || b.cool_until_us > now);
            if local.len() >= LOCAL_CAPACITY {
                // Every bucket is busy: forget an arbitrary one rather than grow without bound.
                if let Some(k) = local.keys().next().cloned() {
                    local.remove(&k);
                }
            }
        }
        let b = local.entry(key.to_owned()).or_default();
        if b.cool_until_us > now {
            return Take::Cooling {
                left_us: b.cool_until_us - now,
            };
        }
        let (take, tat) = gcra(b.tat_us, now, limit, max_wait.as_micros() as u64);
        b.tat_us = tat;
        take
    }

    /// Keeps this process, and through the shared store every process, off `key` for `d`.
    pub async fn cool(&self, key: &str, d: Duration) {
        let d = read(&self.inner.settings).cap_cool_down(d);
        if d.is_zero() {
            return;
        }
        self.inner.stats.cool_downs.fetch_add(1, Ordering::Relaxed);
        self.cool_local(key, d);
        if let Some(store) = self.usable_shared() {
            match tokio::time::timeout(SHARED_TIMEOUT, store.cool(key, d)).await {
                Ok(Ok(())) => self.shared_ok(&*store),
                Ok(Err(e)) => self.shared_failed(&*store, &e),
                Err(_) => self.shared_failed(&*store, "timed out"),
            }
        }
    }

    /// Records a cool-down in this process only.
    pub fn cool_local(&self, key: &str, d: Duration) {
        let until = self.now_us() + d.as_micros() as u64;
        let mut local = lock(&self.inner.local);
        let b = local.entry(key.to_owned()).or_default();
        b.cool_until_us = b.cool_until_us.max(until);
    }

    fn usable_shared(&self) -> Option<Arc<dyn SharedStore>> {
        let store = read(&self.inner.shared).clone()?;
        let skip = *lock(&self.inner.skip_until);
        match skip {
            Some(t) if Instant::now() < t => None,
            _ => Some(store),
        }
    }

    fn shared_ok(&self, store: &dyn SharedStore) {
        if self.inner.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(store = store.name(), "provider budgets are shared again");
        }
        *lock(&self.inner.skip_until) = None;
    }

    fn shared_failed(&self, store: &dyn SharedStore, error: &str) {
        self.inner
            .stats
            .shared_failures
            .fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.skip_until) = Some(Instant::now() + SHARED_RETRY);
        if !self.inner.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = store.name(), %error,
                "the shared provider budgets are unreachable; pacing in this process alone");
        }
    }
}

/// The budget of one provider account: what its connector and side clients draw from.
#[derive(Clone)]
pub struct Budget {
    /// `None`: unbudgeted (`fs`, SFTP).
    budgets: Option<Budgets>,
    service: &'static str,
    key: Arc<str>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key names an endpoint or an account digest: nothing secret, but keep logs short.
        write!(f, "Budget({})", self.service)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::none()
    }
}

/// A request waited longer than its bound allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the provider's request budget is spent for {retry_after:?}")]
pub struct BudgetSpent {
    /// When a request has a slot again (or the provider's cool-down ends).
    pub retry_after: Duration,
    /// The provider asked for the pause (a cool-down), rather than our own pacing.
    pub cooling: bool,
}

/// What a request was granted, for the API's budget headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    pub limit: Limit,
    pub remaining: u32,
    pub full_in: Duration,
}

/// What one scope (an API request) has waited and been granted.
#[derive(Debug)]
struct Scope {
    /// The longest its provider requests may wait in total.
    bound: Duration,
    waited: Duration,
    /// The last admission (the API reports it in headers).
    last: Option<Admission>,
}

tokio::task_local! {
    static SCOPE: Arc<Mutex<Scope>>;
}

/// Runs `fut` with its provider requests waiting at most `max_wait` for their budgets, in
/// total (an API request that calls its provider three times waits at most that long, not
/// three times as long); returns its output and the last admission one of them got.
pub async fn scope<F: Future>(max_wait: Duration, fut: F) -> (F::Output, Option<Admission>) {
    let s = Arc::new(Mutex::new(Scope {
        bound: max_wait,
        waited: Duration::ZERO,
        last: None,
    }));
    let out = SCOPE.scope(s.clone(), fut).await;
    let last = lock(&s).last;
    (out, last)
}

impl Budget {
    /// No budget: every request goes at once.
    pub fn none() -> Self {
        Self {
            budgets: None,
            service: "",
            key: Arc::from(""),
        }
    }

    pub fn is_budgeted(&self) -> bool {
        self.budgets.is_some()
    }

    /// Waits for this request's slot, up to the task's bound (the API's, else the background
    /// one); [`BudgetSpent`] past it.
    pub async fn admit(&self) -> Result<(), BudgetSpent> {
        let Some(b) = &self.budgets else {
            return Ok(());
        };
        // What is left of the scope's total (an API request), else the background bound.
        let scope = SCOPE.try_with(Arc::clone).ok();
        let bound = match &scope {
            Some(s) => {
                let s = lock(s);
                s.bound.saturating_sub(s.waited)
            }
            None => Duration::from_millis(read(&b.inner.settings).background_max_wait_ms),
        };
        let began = Instant::now();
        let deadline = began + bound;
        let result = self.admit_until(b, deadline).await;
        if let Some(s) = &scope {
            let mut s = lock(s);
            s.waited += began.elapsed();
            if let Ok(a) = result {
                s.last = Some(a);
            }
        }
        result.map(|_| ())
    }

    async fn admit_until(&self, b: &Budgets, deadline: Instant) -> Result<Admission, BudgetSpent> {
        let mut slept = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match b.take(self.service, &self.key, left).await {
                Take::Granted {
                    wait_us,
                    remaining,
                    full_in_us,
                } => {
                    let wait = Duration::from_micros(wait_us);
                    if !wait.is_zero() {
                        slept = true;
                        tokio::time::sleep(wait).await;
                    }
                    if slept {
                        b.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                    }
                    let limit = read(&b.inner.settings).limit(self.service);
                    return Ok(Admission {
                        limit,
                        remaining,
                        full_in: Duration::from_micros(full_in_us),
                    });
                }
                Take::Refused { wait_us } => {
                    b.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(BudgetSpent {
                        retry_after: Duration::from_micros(wait_us),
                        cooling: false,
                    });
                }
                Take::Cooling { left_us } => {
                    let wait = Duration::from_micros(left_us);
                    if wait > left {
                        b.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                        return Err(BudgetSpent {
                            retry_after: wait,
                            cooling: true,
                        });
                    }
                    slept = true;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sends `req` within the budget: waits for its slot, sends, reads the answer's cool-down.
    /// The outer error is the budget's, the inner the request's own.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Result<reqwest::Response>, BudgetSpent> {
        self.admit().await?;
        let resp = req.send().await;
        if let Ok(r) = &resp {
            self.observe(r.status().as_u16(), r.headers()).await;
        }
        Ok(resp)
    }

    /// Reads a provider's answer: a `429`, or a `503` with `Retry-After`, cools this budget down
    /// for the whole cluster.
    pub async fn observe(&self, status: u16, headers: &http::HeaderMap) {
        let Some(b) = &self.budgets else {
            return;
        };
        let cool_down = cool_down_for(status, headers, &read(&b.inner.settings));
        if let Some(d) = cool_down {
            tracing::info!(
                service = self.service,
                status,
                cool_down_ms = d.as_millis() as u64,
                "the provider asked us to slow down; every process waits"
            );
            b.cool(&self.key, d).await;
        }
    }
}

/// How long a provider's answer asks everyone to stay away, if at all.
pub fn cool_down_for(
    status: u16,
    headers: &http::HeaderMap,
    s: &BudgetSettings,
) -> Option<Duration> {
    let asked = retry_after(headers);
    let d = match (status, asked) {
        (429 | 503, Some(d)) => d,
        (429, None) => Duration::from_millis(s.default_cool_down_ms),
        _ => return None,
    };
    Some(s.cap_cool_down(d))
}

/// `Retry-After` as seconds or an HTTP date (relative to now; a past date is zero).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?;
    let left = when.timestamp().duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn gcra_allows_the_burst_then_paces() {
        let l = Limit::per_second(10.0, 3);
        let mut tat = None;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let (t, n) = gcra(tat, 0, l, 10 * SEC);
            tat = n;
            match t {
                Take::Granted { wait_us, .. } => waits.push(wait_us),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Three at once, then one every 100 ms.
        assert_eq!(waits, vec![0, 0, 0, 100_000, 200_000]);
    }

    #[test]
    fn gcra_refuses_past_the_bound_without_reserving() {
        let l = Limit::per_second(1.0, 1);
        let (_, tat) = gcra(None, 0, l, 0);
        let (t, after) = gcra(tat, 0, l, 500_000);
        assert_eq!(t, Take::Refused { wait_us: SEC });
        assert_eq!(after, tat, "a refusal reserves nothing");
        // A second later the slot is free again.
        let (t, _) = gcra(tat, SEC, l, 0);
        assert!(matches!(t, Take::Granted { wait_us: 0, .. }));
    }

    #[test]
    fn gcra_counts_what_remains_and_refills() {
        let l = Limit::per_second(2.0, 4);
        let (t, tat) = gcra(None, 0, l, 0);
        assert_eq!(
            t,
            Take::Granted {
                wait_us: 0,
                remaining: 3,
                full_in_us: 500_000
            }
        );
        let (t, tat) = gcra(tat, 0, l, 0);
        assert!(matches!(t, Take::Granted { remaining: 2, .. }));
        // Two seconds of quiet refill the bucket completely.
        let (t, _) = gcra(tat, 2 * SEC, l, 0);
        assert!(matches!(t, Take::Granted { remaining: 3, .. }));
    }

    #[test]
    fn unlimited_never_waits() {
        for i in 0..1000 {
            let (t, _) = gcra(None, i, Limit::UNLIMITED, 0);
            assert!(matches!(t, Take::Granted { wait_us: 0, .. }));
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .expect("date");
        h.insert(http::header::RETRY_AFTER, date.parse().expect("header"));
        let d = retry_after(&h).expect("a date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn cool_downs_follow_the_provider_within_the_cap() {
        let s = BudgetSettings {
            max_cool_down_ms: 60_000,
            ..BudgetSettings::default()
        };
        let mut h = http::HeaderMap::new();
        assert_eq!(cool_down_for(429, &h, &s), Some(Duration::from_secs(1)));
        assert_eq!(cool_down_for(503, &h, &s), None, "a 503 alone is an outage");
        assert_eq!(cool_down_for(500, &h, &s), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(cool_down_for(503, &h, &s), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, "86400".parse().expect("header"));
        assert_eq!(cool_down_for(429, &h, &s), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn a_cool_down_holds_every_request_of_the_key() {
        let budgets = Budgets::new(BudgetSettings::default());
        let a = budgets.budget("webdav", Some("webdav:h:80".into()));
        let other = budgets.budget("webdav", Some("webdav:other:80".into()));
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().expect("header"));
        a.observe(429, &h).await;
        let (r, _) = scope(Duration::from_millis(100), a.admit()).await;
        let e = r.expect_err("cooling");
        assert!(e.cooling && e.retry_after > Duration::from_secs(6), "{e:?}");
        let (r, seen) = scope(Duration::from_millis(100), other.admit()).await;
        assert!(r.is_ok(), "another endpoint is not cooling");
        assert!(seen.is_some(), "the admission is reported to the scope");
        assert_eq!(budgets.stats().cool_downs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_scope_bounds_the_total_wait_of_its_requests() {
        let mut s = BudgetSettings::default();
        s.services
            .insert("webdav".into(), Limit::per_second(1.0, 1));
        let b = Budgets::new(s).budget("webdav", Some("webdav:h:80".into()));
        let (r, _) = scope(Duration::from_millis(1_500), async {
            b.admit().await.expect("the first goes at once");
            b.admit().await.expect("the second waits a second");
            b.admit().await
        })
        .await;
        let e = r.expect_err("a third would make the request wait 2 s in all");
        assert!(!e.cooling);
        assert!(e.retry_after > Duration::from_millis(500), "{e:?}");
    }

    #[tokio::test]
    async fn unbudgeted_accounts_never_wait() {
        let b = Budgets::default().budget("fs", None);
        assert!(!b.is_budgeted());
        b.observe(429, &http::HeaderMap::new()).await;
        let (r, seen) = scope(Duration::ZERO, b.admit()).await;
        assert!(r.is_ok());
        assert!(seen.is_none());
    }

    struct Failing;
    impl SharedStore for Failing {
        fn take<'a>(
            &'a self,
            _: &'a str,
            _: Limit,
            _: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<Take, String>> + Send + 'a>> {
            Box::pin(async { Err("connection refused".to_owned()) })
        }
        fn cool<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            Box::pin(async { Err("connection refused".to_owned()) })
        }
        fn name(&self) -> &'static str {
            "test"
        }
    }

    #[tokio::test]
    async fn a_failing_store_falls_back_to_local_pacing() {
        let mut s = BudgetSettings::default();
        s.services
            .insert("webdav".into(), Limit::per_second(1000.0, 1));
        let budgets = Budgets::new(s);
        budgets.set_shared(Arc::new(Failing));
        assert_eq!(budgets.mode(), Mode::Shared("test"));
        let b = budgets.budget("webdav", Some("webdav:h:80".into()));
        for _ in 0..5 {
            let (r, _) = scope(Duration::from_secs(1), b.admit()).await;
            assert!(r.is_ok(), "no error for lack of the store");
        }
        assert_eq!(budgets.mode(), Mode::Degraded("test"));
        // Skipped after the first failure, until SHARED_RETRY passes.
        assert_eq!(budgets.stats().shared_failures.load(Ordering::Relaxed), 1);
    }
}
