//! Revocation that reaches every hub within [`BOUND`]: the feed that tells this hub's caches
//! of principals and accounts what was revoked elsewhere (another hub, the `hub` command line).
//!
//! Database triggers (`migrations/*/0004_revocations.sql`) fire on every change that revokes or
//! may narrow a credential. On PostgreSQL they `NOTIFY switchyard_revocations` with what to
//! forget; on SQLite (one hub, plus the command line in other processes) they bump a one-row
//! generation. Every [`POLL`] the feed proves it is live: on PostgreSQL a `SELECT 1` on the
//! listening connection (the server sends notifications committed before it ahead of the
//! answer), on SQLite a read of the generation. Cached entries are trusted for their full TTL
//! only while the last proof started less than [`TRUST`] ago; otherwise (the connection
//! dropped, the database is slow) they live only [`SHORT_TTL`], and the listener reconnects and
//! starts from empty caches, as notifications sent meanwhile are lost.

use crate::db::Backend;
use crate::state::AppState;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a revocation made anywhere takes to apply on every hub (the documented bound).
pub const BOUND: Duration = Duration::from_secs(1);
/// How often the feed proves it is live.
pub const POLL: Duration = Duration::from_millis(200);
/// Cached entries keep their full TTL only while the last proof started less than this ago.
pub const TRUST: Duration = Duration::from_millis(700);
/// How long a cached entry lives while the feed is not live.
pub const SHORT_TTL: Duration = Duration::from_millis(500);
/// A proof that takes longer than this counts as a lost feed.
const ROUND_TIMEOUT: Duration = Duration::from_millis(400);
/// The PostgreSQL channel the triggers notify.
pub const CHANNEL: &str = "switchyard_revocations";
/// `application_name` of the listening connection (operators can see it in `pg_stat_activity`).
pub const LISTENER_NAME: &str = "switchyard-revocations";

// A stale entry is used at most TRUST after the revocation (live feed) or SHORT_TTL after its
// read (lost feed), plus a proof's latency: both well inside the bound.
const _: () = assert!(TRUST.as_millis() + 200 < BOUND.as_millis());
const _: () = assert!(SHORT_TTL.as_millis() + 200 < BOUND.as_millis());

/// When the feed last proved it is live, and so how old a cached entry may be.
#[derive(Debug)]
pub struct Freshness {
    origin: Instant,
    /// Milliseconds after `origin` at which the last successful proof started, plus one; zero
    /// when the feed is not live.
    confirmed: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            confirmed: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    /// Records a proof that started at `started`: every revocation committed before it has
    /// been applied to the caches.
    pub fn confirm(&self, started: Instant) {
        let ms = started.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.confirmed.fetch_max(ms, Ordering::SeqCst);
    }

    /// The feed is lost: from now on entries live only [`SHORT_TTL`].
    pub fn lapse(&self) {
        self.confirmed.store(0, Ordering::SeqCst);
    }

    /// Whether the last proof started less than [`TRUST`] before `now`.
    pub fn live(&self, now: Instant) -> bool {
        match self.confirmed.load(Ordering::SeqCst) {
            0 => false,
            ms => {
                let at = self.origin + Duration::from_millis(ms - 1);
                now.saturating_duration_since(at) < TRUST
            }
        }
    }

    /// How old a cached entry may be at `now` to be used.
    pub fn max_age(&self, now: Instant) -> Duration {
        if self.live(now) {
            Duration::MAX
        } else {
            SHORT_TTL
        }
    }
}

/// Applies one notification's payload: `app:<id>`, `account:<id>`, anything else forgets all.
pub fn apply(state: &AppState, payload: &str) {
    // The replica may not have replayed the revocation yet: until it has, cache misses read
    // the primary, or they could cache again what was just revoked.
    state.db.fence_replica();
    let id = |p: &str| p.parse::<i64>().ok();
    match payload.split_once(':') {
        Some(("app", n)) if id(n).is_some() => state.forget_app(id(n).unwrap_or_default()),
        Some(("account", n)) if id(n).is_some() => state.forget_account(id(n).unwrap_or_default()),
        _ => state.forget_all(),
    }
}

/// Runs the feed for this hub's database until aborted.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match state.db.backend() {
            Backend::Sqlite => sqlite_feed(state).await,
            Backend::Postgres => postgres_feed(state).await,
        }
    })
}

fn ticker() -> tokio::time::Interval {
    let mut t = tokio::time::interval(POLL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

async fn sqlite_feed(state: AppState) {
    let mut seen = None;
    let mut tick = ticker();
    let mut healthy = true;
    loop {
        tick.tick().await;
        let started = Instant::now();
        match tokio::time::timeout(ROUND_TIMEOUT, state.db.revocation_generation()).await {
            Ok(Ok(generation)) => {
                // Also on the first read: entries cached before it were never checked.
                if seen != Some(generation) {
                    state.forget_all();
                }
                seen = Some(generation);
                state.freshness.confirm(started);
                if !healthy {
                    tracing::info!("revocation feed is live again");
                    healthy = true;
                }
            }
            Ok(Err(e)) if healthy => {
                tracing::warn!(error = %e, "revocation feed: cannot read the generation; caching credentials only briefly");
                healthy = false;
            }
            Err(_) if healthy => {
                tracing::warn!("revocation feed: the generation read timed out; caching credentials only briefly");
                healthy = false;
            }
            _ => {}
        }
    }
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name(LISTENER_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn postgres_feed(state: AppState) {
    let mut backoff = POLL;
    loop {
        // The current primary (notifications are not replicated), found again after a failover.
        let url = state
            .db
            .primary_url()
            .unwrap_or_else(|| state.config.database_url());
        let mut listener = match tokio::time::timeout(Duration::from_secs(5), listen(&url)).await {
            Ok(Ok(l)) => l,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(%error, "revocation feed: cannot LISTEN; caching credentials only briefly");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = POLL;
        // Whatever was revoked while nobody listened is unknown: start from empty caches.
        state.forget_all();
        tracing::debug!("revocation feed listening");
        let mut tick = ticker();
        loop {
            tick.tick().await;
            let started = Instant::now();
            let proof = tokio::time::timeout(
                ROUND_TIMEOUT,
                sqlx::query("SELECT 1").execute(&mut listener),
            )
            .await;
            while let Some(n) = listener.next_buffered() {
                apply(&state, n.payload());
            }
            match proof {
                Ok(Ok(_)) => state.freshness.confirm(started),
                failed => {
                    state.freshness.lapse();
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(%error, "revocation feed lost; reconnecting, caching credentials only briefly meanwhile");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_lapses() {
        let f = Freshness::default();
        let t0 = Instant::now();
        assert_eq!(f.max_age(t0), SHORT_TTL, "not live before the first proof");
        f.confirm(t0);
        assert!(f.live(t0 + Duration::from_millis(100)));
        assert_eq!(f.max_age(t0 + Duration::from_millis(100)), Duration::MAX);
        assert!(
            !f.live(t0 + TRUST),
            "a proof older than TRUST is not enough"
        );
        f.confirm(t0 + Duration::from_millis(300));
        f.confirm(t0 + Duration::from_millis(100));
        assert!(
            f.live(t0 + Duration::from_millis(900)),
            "the newest proof counts"
        );
        f.lapse();
        assert!(!f.live(t0 + Duration::from_millis(301)));
    }
}
