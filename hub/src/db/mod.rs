//! The hub's database: sqlx over SQLite (embedded default) or PostgreSQL through the Any
//! driver, so one set of queries serves both. Schema lives only in `migrations/`.
//!
//! Row types are private to this module; callers get the domain records below.

/// A replica-eligible read: `$body` runs with `$pool` bound to [`Db::reader`]'s pool, and once
/// more on the primary when [`Db::read_again`] says so (the replica failed or lacks the row,
/// or a pooled primary connection was dead), so a replica that dies costs no failed request.
macro_rules! read {
    ($db:expr, $pool:ident => $body:expr) => {{
        let (chosen, on_replica) = $db.reader();
        let $pool = &chosen;
        let first = $body;
        if $db.read_again(&first, on_replica) {
            let chosen = $db.w();
            let $pool = &chosen;
            $body
        } else {
            first
        }
    }};
}

/// What a read answered, as far as [`Db::read_again`] cares: whether it is a missing row.
trait Answer {
    fn missing(&self) -> bool {
        false
    }
}
impl Answer for AnyRow {}
impl Answer for Vec<AnyRow> {}
impl Answer for Option<AnyRow> {
    fn missing(&self) -> bool {
        self.is_none()
    }
}

pub mod admin;
mod claims;
mod detect;
mod events;
mod links;
mod network;
mod oauth;
mod portal;
mod prune;
mod sessions;
mod steering;
pub mod topology;
mod transfers;
mod webhooks;
pub use claims::{upload_claim_key, ClaimKind, ClaimRecord};
pub use detect::{DetectorLease, DetectorState};
pub(crate) use events::Inserted;
pub use events::{Echo, EventRecord, NewEvent, PreviousObject, StreamPosition};
pub use links::{LinkChanges, LinkRecord};
pub use network::{
    CaRecord, CaRole, HubAnnouncement, HubRecord, JoinTokenRecord, SpokeRecord, TokenSpent,
};
pub use oauth::{NewCode, OAuthCode, Taken, TokenInfo};
pub use prune::{
    Expiring, HUB_HEALTH, PRUNE_BATCH, PRUNE_MAX_BATCHES, STEERING_RTT, TRANSFER_EXCLUSIONS,
};
pub use sessions::{NewSession, PartRecord, SessionRecord};
pub use steering::{HealthRecord, RttRecord, SteeringHubRecord};
pub use transfers::{Exclusion, Held, Lease, NewTransfer, TransferRecord};
pub use webhooks::{Claimed, DeliveryTarget, Settle, WebhookAttempt, WebhookRecord};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::Duration;
use topology::{Routing, Topology};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database's connection pools plus the queries the hub needs. On PostgreSQL the pools
/// are those of a [`topology::Topology`]: writes go to the current primary, replica-eligible
/// reads ([`Db::r`]) to the region's replica under the rules in [`topology`].
#[derive(Clone, Debug)]
pub struct Db {
    /// The SQLite pool (unused on PostgreSQL, where `topo` has the pools).
    pool: AnyPool,
    backend: Backend,
    topo: Option<Arc<Topology>>,
    /// Woken after a commit that opened webhook notifications (the outbox), so this hub hands
    /// them to the work queue at once rather than at the reconciler's next tick.
    outbox_wake: Arc<tokio::sync::Notify>,
    /// How long a new webhook notification waits for more changes (`webhooks.coalesce`), ms.
    outbox_delay_ms: Arc<std::sync::atomic::AtomicI64>,
}

/// An application (a tenant: its keys reach only its accounts).
#[derive(Debug, Clone)]
pub struct Application {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub active: bool,
    /// Whether changes to its accounts are recorded in their event feeds.
    pub collect_events: bool,
    pub created_ms: i64,
    pub modified_ms: i64,
    /// OAuth redirect URIs it registered (exact match).
    pub redirect_uris: Vec<String>,
    /// Origins its browser code calls the API from (CORS).
    pub trusted_domains: Vec<String>,
    /// `response_type=token` allowed.
    pub implicit_grant_enabled: bool,
}

/// An API key as stored: only a hash and a short hint of the key text.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub app_id: i64,
    pub hint: String,
    pub created_ms: i64,
}

/// A connected storage account; `credentials` is the sealed (encrypted) settings blob.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    pub id: i64,
    pub app_id: i64,
    pub service: String,
    pub name: String,
    pub credentials: Vec<u8>,
    pub active: bool,
    pub created_ms: i64,
    pub modified_ms: i64,
}

/// Fields an account update may change.
#[derive(Debug, Default)]
pub struct AccountChanges {
    pub name: Option<String>,
    pub active: Option<bool>,
    pub credentials: Option<Vec<u8>>,
}

/// Whether `e` means the database cannot be reached or cannot take writes now (connection
/// lost or refused, pool exhausted past its acquire timeout, server shutting down or in
/// recovery): the API answers 503 `database_unavailable` with `Retry-After`, never 500.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(m) => m.contains("connection") || m.contains("closed"),
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown / cannot connect now; 25006: a
            // read-only transaction (a standby or demoted server); 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P") || c == "25006" || c == "53300"
        }),
        _ => false,
    }
}

/// Whether `e` says the pooled connection itself was dead (the server restarted or dropped
/// it since its last use), so the same query may simply be sent again on another.
pub fn is_broken_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(m) => m.contains("connection") || m.contains("closed"),
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c == "57P01" || c.starts_with("08")),
        _ => false,
    }
}

/// Whether a read that failed on the replica should be sent to the primary: the replica is
/// unreachable, or it has not replayed the schema the query needs yet (a migration just ran:
/// undefined table or column, SQLSTATE class 42).
pub fn replica_should_retry(e: &sqlx::Error) -> bool {
    is_unavailable(e)
        || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("42")))
}

/// Result alias for database calls.
pub type DbResult<T> = Result<T, sqlx::Error>;

fn app_from(r: &AnyRow) -> DbResult<Application> {
    Ok(Application {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        active: r.try_get::<i64, _>("active")? != 0,
        collect_events: r.try_get::<i64, _>("collect_events")? != 0,
        created_ms: r.try_get("created_ms")?,
        modified_ms: r.try_get("modified_ms")?,
        redirect_uris: json_list(r, "redirect_uris")?,
        trusted_domains: json_list(r, "trusted_domains")?,
        implicit_grant_enabled: r.try_get::<i64, _>("implicit_grant_enabled")? != 0,
    })
}

/// A JSON array of strings kept in a text column.
fn json_list(r: &AnyRow, col: &str) -> DbResult<Vec<String>> {
    let text: String = r.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn account_from(r: &AnyRow) -> DbResult<AccountRecord> {
    Ok(AccountRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        service: r.try_get("service")?,
        name: r.try_get("name")?,
        credentials: r.try_get("credentials")?,
        active: r.try_get::<i64, _>("active")? != 0,
        created_ms: r.try_get("created_ms")?,
        modified_ms: r.try_get("modified_ms")?,
    })
}

fn key_from(r: &AnyRow) -> DbResult<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        hint: r.try_get("key_hint")?,
        created_ms: r.try_get("created_ms")?,
    })
}

const ACCOUNT_COLS: &str =
    "id, app_id, service, name, credentials, active, created_ms, modified_ms";
const APP_COLS: &str = "id, name, description, active, collect_events, created_ms, modified_ms, \
    redirect_uris, trusted_domains, implicit_grant_enabled";

impl Db {
    /// Connects (creating an SQLite file if needed) without running migrations.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        let routing = Routing {
            max_connections,
            ..Routing::default()
        };
        Self::connect_routed(url, None, routing)
            .await
            .map_err(|(key, m)| sqlx::Error::Configuration(format!("{key}: {m}").into()))
    }

    /// Connects to `url` (SQLite, or PostgreSQL with possibly several hosts: the writable
    /// primary among them is found and re-found after a failover) and, on PostgreSQL, to the
    /// region's `replica` (checked to be a streaming replica). Errors name the config key.
    pub async fn connect_routed(
        url: &str,
        replica: Option<&str>,
        routing: Routing,
    ) -> Result<Self, (&'static str, String)> {
        sqlx::any::install_default_drivers();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if replica.is_some() {
                return Err((
                    "database.replica_url",
                    "replicas need PostgreSQL; the SQLite database has none (remove the key or \
                     set database.url to postgres://...)"
                        .into(),
                ));
            }
            let pool = Self::sqlite_pool(url, rest, routing.max_connections)
                .await
                .map_err(|e| ("database.url", e.to_string()))?;
            return Ok(Self {
                pool,
                backend: Backend::Sqlite,
                topo: None,
                outbox_wake: Arc::default(),
                outbox_delay_ms: Arc::default(),
            });
        }
        let topo = Topology::open(url, replica, routing)
            .await
            .map_err(|r| (r.key, r.message))?;
        Ok(Self {
            pool: topo.primary().pool.clone(),
            backend: Backend::Postgres,
            topo: Some(topo),
            outbox_wake: Arc::default(),
            outbox_delay_ms: Arc::default(),
        })
    }

    async fn sqlite_pool(url: &str, rest: &str, max_connections: u32) -> DbResult<AnyPool> {
        let path = rest.trim_start_matches("//");
        if let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = if url.contains("mode=") {
            url.to_owned()
        } else {
            format!("{url}{sep}mode=rwc")
        };
        AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the single writer; busy_timeout turns
                    // writer contention into waiting rather than SQLITE_BUSY errors.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
    }

    /// Where writes (and reads that feed a write) go: the current primary.
    fn w(&self) -> AnyPool {
        match &self.topo {
            Some(t) => t.writer(),
            None => self.pool.clone(),
        }
    }

    /// Where a replica-eligible read goes (see [`topology`]): listings and GETs that answer a
    /// client, and the auth lookups behind the TTL caches. True when it is the replica. Used
    /// through `read!`.
    fn reader(&self) -> (AnyPool, bool) {
        match &self.topo {
            Some(t) => t.reader(),
            None => (self.pool.clone(), false),
        }
    }

    /// Whether a read that answered `r` from the replica (`on_replica`) or the primary must be
    /// sent again to the primary: the replica was unreachable or behind on the schema (it is
    /// then marked so), it lacks the one row asked for ("not found" on a replica may only mean
    /// "not replayed yet": a key the command line just made, an account another region just
    /// connected), or the primary connection had died since its last use (pools do not ping
    /// before each use).
    fn read_again<T: Answer>(&self, r: &DbResult<T>, on_replica: bool) -> bool {
        match (r, &self.topo) {
            (Err(e), Some(t)) if on_replica && replica_should_retry(e) => {
                t.replica_failed(e);
                true
            }
            (Err(e), _) => !on_replica && is_broken_connection(e),
            (Ok(v), _) => on_replica && v.missing(),
        }
    }

    /// A background read that tolerates replication lag (the steering snapshot).
    fn stale(&self) -> AnyPool {
        match &self.topo {
            Some(t) => t.stale_reader(),
            None => self.pool.clone(),
        }
    }

    /// The `RETURNING` column that carries a write's transaction id (`sy_xid`), for
    /// read-your-writes.
    fn xid_col(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "pg_current_xact_id()::text AS sy_xid",
            Backend::Sqlite => "NULL AS sy_xid",
        }
    }

    /// After a write that answers a client: waits until the region's replica shows it (see
    /// [`topology`]). `row` carries [`Db::xid_col`].
    async fn wrote(&self, row: Option<&AnyRow>) {
        if let (Some(t), Some(row)) = (&self.topo, row) {
            let xid: Option<String> = row.try_get("sy_xid").ok().flatten();
            t.wrote(xid.as_deref()).await;
        }
    }

    /// Sets `webhooks.coalesce`: how long a new notification waits for more changes.
    pub fn set_outbox_delay(&self, d: Duration) {
        self.outbox_delay_ms
            .store(d.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notified after commits that opened webhook notifications (see `crate::webhooks`).
    pub fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_wake.clone()
    }

    /// The PostgreSQL topology (primary, replica, their state), when there is one.
    pub fn topology(&self) -> Option<&Topology> {
        self.topo.as_deref()
    }

    /// The URL of the server writes go to now (the SQLite URL on SQLite).
    pub fn primary_url(&self) -> Option<String> {
        self.topo.as_ref().map(|t| t.primary_url().to_owned())
    }

    /// See [`Topology::fence_replica`].
    pub fn fence_replica(&self) {
        if let Some(t) = &self.topo {
            t.fence_replica();
        }
    }

    /// A read carrying a client's position (`X-Switchyard-Position`): waits for the replica to
    /// reach it, else sends this request's reads to the primary.
    pub async fn await_position(&self, p: topology::Position) {
        if let Some(t) = &self.topo {
            t.await_position(p).await;
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How this hub uses the database now, for the hub directory (the operator console):
    /// `sqlite`; `postgres primary` (no replica configured); `postgres replica-reading`
    /// (replica-eligible reads go to the region's replica); `postgres primary (replica
    /// lagging | unreachable | promoted)` when a configured replica is not read. And the
    /// replica's lag in ms as the topology monitor measured it last (the time its heartbeat
    /// transaction took to show on the replica, not an estimate): `None` without a replica,
    /// before the first measurement, and while the replica is unreachable or promoted.
    pub fn role(&self) -> (String, Option<i64>) {
        let Some(t) = &self.topo else {
            return ("sqlite".into(), None);
        };
        if t.replica.is_none() {
            return ("postgres primary".into(), None);
        }
        let r = t.replica_state();
        let role = if t.replica_usable() {
            "postgres replica-reading"
        } else if !r.reachable {
            "postgres primary (replica unreachable)"
        } else if !r.in_recovery {
            "postgres primary (replica promoted)"
        } else {
            "postgres primary (replica lagging)"
        };
        let lag = r
            .lag_ms
            .filter(|_| r.reachable && r.in_recovery)
            .map(|ms| ms.min(i64::MAX as u64) as i64);
        (role.into(), lag)
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.w()).await,
            Backend::Postgres => {
                POSTGRES_MIGRATIONS.run(&self.w()).await?;
                // Reads stay off the replica until it has replayed what the migrations did.
                self.fence_replica();
                Ok(())
            }
        }
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1").execute(&self.w()).await?;
        Ok(())
    }

    /// The SQLite revocation generation (bumped by triggers on every revoking change).
    pub async fn revocation_generation(&self) -> DbResult<i64> {
        sqlx::query("SELECT generation FROM revocations WHERE id = 1")
            .fetch_one(&self.w())
            .await?
            .try_get("generation")
    }

    pub async fn close(&self) {
        match &self.topo {
            Some(t) => {
                for n in t.hosts.iter().chain(&t.replica) {
                    n.pool.close().await;
                }
            }
            None => self.pool.close().await,
        }
    }

    // ---- applications ----

    pub async fn create_app(
        &self,
        name: &str,
        description: &str,
        collect_events: bool,
        now: i64,
    ) -> DbResult<Application> {
        let r = sqlx::query(&format!(
            "INSERT INTO applications (name, description, active, collect_events, created_ms, \
             modified_ms) VALUES ($1, $2, 1, $4, $3, $3) RETURNING {APP_COLS}, {}",
            self.xid_col()
        ))
        .bind(name)
        .bind(description)
        .bind(now)
        .bind(i64::from(collect_events))
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        app_from(&r)
    }

    pub async fn list_apps(&self, offset: i64, limit: i64) -> DbResult<(Vec<Application>, i64)> {
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {APP_COLS} FROM applications ORDER BY id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
        let total: i64 = read!(self, pool => sqlx::query("SELECT COUNT(*) AS n FROM applications")
            .fetch_one(pool)
            .await)?
        .try_get("n")?;
        Ok((rows.iter().map(app_from).collect::<DbResult<_>>()?, total))
    }

    pub async fn get_app(&self, id: i64) -> DbResult<Option<Application>> {
        read!(self, pool => sqlx::query(&format!(
            "SELECT {APP_COLS} FROM applications WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)?
        .as_ref()
        .map(app_from)
        .transpose()
    }

    pub async fn update_app(
        &self,
        id: i64,
        name: Option<&str>,
        description: Option<&str>,
        active: Option<bool>,
        collect_events: Option<bool>,
        now: i64,
    ) -> DbResult<Option<Application>> {
        let r = sqlx::query(&format!(
            "UPDATE applications SET name = COALESCE($1, name), \
             description = COALESCE($2, description), active = COALESCE($3, active), \
             collect_events = COALESCE($6, collect_events), \
             modified_ms = $4 WHERE id = $5 RETURNING {APP_COLS}, {}",
            self.xid_col()
        ))
        .bind(name)
        .bind(description)
        .bind(active.map(i64::from))
        .bind(now)
        .bind(id)
        .bind(collect_events.map(i64::from))
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        r.as_ref().map(app_from).transpose()
    }

    pub async fn delete_app(&self, id: i64) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "DELETE FROM applications WHERE id = $1 RETURNING {}",
            self.xid_col()
        ))
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    // ---- API keys ----

    pub async fn create_api_key(
        &self,
        app_id: i64,
        hash: &[u8],
        hint: &str,
        sealed: &[u8],
        now: i64,
    ) -> DbResult<ApiKeyRecord> {
        let r = sqlx::query(&format!(
            "INSERT INTO api_keys (app_id, key_hash, key_hint, key_sealed, created_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, app_id, key_hint, created_ms, {}",
            self.xid_col()
        ))
        .bind(app_id)
        .bind(hash.to_vec())
        .bind(hint)
        .bind(sealed.to_vec())
        .bind(now)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        key_from(&r)
    }

    pub async fn list_api_keys(&self, app_id: i64) -> DbResult<Vec<ApiKeyRecord>> {
        let rows = read!(self, pool => sqlx::query(
            "SELECT id, app_id, key_hint, created_ms FROM api_keys WHERE app_id = $1 ORDER BY id",
        )
        .bind(app_id)
        .fetch_all(pool)
        .await)?;
        rows.iter().map(key_from).collect()
    }

    /// Deletes the key of `app_id` with this id or this hash; true when one was deleted.
    pub async fn delete_api_key(
        &self,
        app_id: i64,
        id: Option<i64>,
        hash: &[u8],
    ) -> DbResult<bool> {
        let rows = sqlx::query(&format!(
            "DELETE FROM api_keys WHERE app_id = $1 AND (id = $2 OR key_hash = $3) RETURNING {}",
            self.xid_col()
        ))
        .bind(app_id)
        .bind(id.unwrap_or(-1))
        .bind(hash.to_vec())
        .fetch_all(&self.w())
        .await?;
        self.wrote(rows.first()).await;
        Ok(!rows.is_empty())
    }

    /// The active application an API key hash belongs to.
    pub async fn app_for_api_key(&self, hash: &[u8]) -> DbResult<Option<i64>> {
        let r = read!(self, pool => sqlx::query(
            "SELECT a.id AS id FROM api_keys k JOIN applications a ON a.id = k.app_id \
             WHERE k.key_hash = $1 AND a.active = 1",
        )
        .bind(hash.to_vec())
        .fetch_optional(pool)
        .await)?;
        r.map(|r| r.try_get("id")).transpose()
    }

    // ---- meta tokens ----

    pub async fn create_meta_token(&self, name: &str, hash: &[u8], now: i64) -> DbResult<i64> {
        sqlx::query(
            "INSERT INTO meta_tokens (name, token_hash, created_ms) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(hash.to_vec())
        .bind(now)
        .fetch_one(&self.w())
        .await?
        .try_get("id")
    }

    pub async fn meta_token_exists(&self, hash: &[u8]) -> DbResult<bool> {
        Ok(
            read!(self, pool => sqlx::query("SELECT id FROM meta_tokens WHERE token_hash = $1")
                .bind(hash.to_vec())
                .fetch_optional(pool)
                .await)?
            .is_some(),
        )
    }

    // ---- accounts ----

    /// Inserts an account; `seal` encrypts the settings bound to the new row's id, in the same
    /// transaction, so no row ever holds unbound credentials.
    pub async fn create_account(
        &self,
        app_id: i64,
        service: &str,
        name: &str,
        seal: impl FnOnce(i64) -> Vec<u8>,
        now: i64,
    ) -> DbResult<AccountRecord> {
        let mut tx = self.w().begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO accounts (app_id, service, name, credentials, active, created_ms, modified_ms) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) RETURNING id",
        )
        .bind(app_id)
        .bind(service)
        .bind(name)
        .bind(Vec::<u8>::new())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let sealed = seal(id);
        self.create_event_stream(&mut tx, id, now).await?;
        let r = sqlx::query(&format!(
            "UPDATE accounts SET credentials = $1 WHERE id = $2 RETURNING {ACCOUNT_COLS}, {}",
            self.xid_col()
        ))
        .bind(sealed)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wrote(Some(&r)).await;
        account_from(&r)
    }

    /// A page of an application's accounts (or just `only`, for a bearer token).
    pub async fn list_accounts(
        &self,
        app_id: i64,
        only: Option<i64>,
        offset: i64,
        limit: i64,
    ) -> DbResult<(Vec<AccountRecord>, i64)> {
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE app_id = $1 AND ($2 < 0 OR id = $2) \
             ORDER BY id LIMIT $3 OFFSET $4"
        ))
        .bind(app_id)
        .bind(only.unwrap_or(-1))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
        let total: i64 = read!(self, pool => sqlx::query(
            "SELECT COUNT(*) AS n FROM accounts WHERE app_id = $1 AND ($2 < 0 OR id = $2)",
        )
        .bind(app_id)
        .bind(only.unwrap_or(-1))
        .fetch_one(pool)
        .await)?
        .try_get("n")?;
        Ok((
            rows.iter().map(account_from).collect::<DbResult<_>>()?,
            total,
        ))
    }

    /// An account, only if it belongs to `app_id`.
    /// An account by id alone (background work: the primary).
    pub async fn get_account_any(&self, id: i64) -> DbResult<Option<AccountRecord>> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.w())
        .await?
        .as_ref()
        .map(account_from)
        .transpose()
    }

    pub async fn get_account(&self, app_id: i64, id: i64) -> DbResult<Option<AccountRecord>> {
        read!(self, pool => sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1 AND app_id = $2"
        ))
        .bind(id)
        .bind(app_id)
        .fetch_optional(pool)
        .await)?
        .as_ref()
        .map(account_from)
        .transpose()
    }

    pub async fn update_account(
        &self,
        app_id: i64,
        id: i64,
        changes: AccountChanges,
        now: i64,
    ) -> DbResult<Option<AccountRecord>> {
        let r = sqlx::query(&format!(
            "UPDATE accounts SET name = COALESCE($1, name), active = COALESCE($2, active), \
             credentials = COALESCE($3, credentials), modified_ms = $4 \
             WHERE id = $5 AND app_id = $6 RETURNING {ACCOUNT_COLS}, {}",
            self.xid_col()
        ))
        .bind(changes.name)
        .bind(changes.active.map(i64::from))
        .bind(changes.credentials)
        .bind(now)
        .bind(id)
        .bind(app_id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        r.as_ref().map(account_from).transpose()
    }

    pub async fn delete_account(&self, app_id: i64, id: i64) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "DELETE FROM accounts WHERE id = $1 AND app_id = $2 RETURNING {}",
            self.xid_col()
        ))
        .bind(id)
        .bind(app_id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    pub async fn create_account_token(
        &self,
        account_id: i64,
        hash: &[u8],
        now: i64,
    ) -> DbResult<()> {
        self.create_scoped_token(account_id, hash, "all", now)
            .await
            .map(|_| ())
    }

    /// Stores a bearer token (its hash) of `account_id` granted `scope`; its row id.
    pub async fn create_scoped_token(
        &self,
        account_id: i64,
        hash: &[u8],
        scope: &str,
        now: i64,
    ) -> DbResult<i64> {
        self.create_expiring_token(account_id, hash, scope, now, None)
            .await
    }

    /// [`Db::create_scoped_token`] that stops working at `expires_ms` (when given).
    pub async fn create_expiring_token(
        &self,
        account_id: i64,
        hash: &[u8],
        scope: &str,
        now: i64,
        expires_ms: Option<i64>,
    ) -> DbResult<i64> {
        let r = sqlx::query(&format!(
            "INSERT INTO account_tokens (account_id, token_hash, created_ms, scope, expires_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, {}",
            self.xid_col()
        ))
        .bind(account_id)
        .bind(hash.to_vec())
        .bind(now)
        .bind(scope)
        .bind(expires_ms)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        r.try_get("id")
    }

    /// The (account, application) a bearer token hash belongs to, if both are active.
    pub async fn account_for_token(&self, hash: &[u8]) -> DbResult<Option<(i64, i64)>> {
        let r = read!(self, pool => sqlx::query(
            "SELECT c.id AS account_id, c.app_id AS app_id FROM account_tokens t \
             JOIN accounts c ON c.id = t.account_id JOIN applications a ON a.id = c.app_id \
             WHERE t.token_hash = $1 AND c.active = 1 AND a.active = 1 \
             AND (t.expires_ms IS NULL OR t.expires_ms > $2)",
        )
        .bind(hash.to_vec())
        .bind(crate::state::now_ms())
        .fetch_optional(pool)
        .await)?;
        r.map(|r| Ok((r.try_get("account_id")?, r.try_get("app_id")?)))
            .transpose()
    }
}
