//! Queries of the per-account change feed (`events`, `event_streams`; see migration
//! `0009_events.sql`): recording an event under its account's stream lock, reading a page
//! after a position, the stream's head and `after-auth` point, and the retention sweep.

use super::{Db, DbResult};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// An event to record. Row types stay here; callers build this.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub account_id: i64,
    /// `add`, `update`, `delete`, `rename`, `move` or `copy`.
    pub kind: &'static str,
    /// What happened in more detail (`upload`, `create_folder`, `transfer`, ...).
    pub action: &'static str,
    pub object_id: String,
    /// The object's path from the account root (for detectors matching API changes).
    pub path: String,
    /// The object as the API returns it, JSON.
    pub metadata: String,
    /// Where a renamed or moved object was before.
    pub previous: Option<PreviousObject>,
    /// When the change happened (ms).
    pub modified_ms: i64,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    /// `api`, or the detector that saw the change.
    pub origin: &'static str,
    /// The provider's version of the object after the change (its ETag), when known.
    pub version: Option<String>,
    pub size: Option<i64>,
    pub mtime_ms: Option<i64>,
    /// Makes the insert idempotent per account: a second event with the same key is not
    /// recorded.
    pub dedupe_key: Option<String>,
    /// Which earlier events make this one a repeat of a change already in the feed.
    pub echo: Echo,
}

/// When an event repeats one already recorded (the detector's and the API's view of one
/// change). Checked under the account's stream lock, so of the two views of one change
/// whichever is inserted second sees the first (see ARCHITECTURE.md, "A change appears once").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Echo {
    /// Always recorded.
    #[default]
    Never,
    /// An API change: not recorded when a detected event recorded at or after `since_ms` (the
    /// request's start) left the same outcome at its path (any of them: the detector may have
    /// seen the API's change and then another).
    Api { since_ms: i64 },
    /// A detected change: not recorded when an event numbered above `after_seq` (the stream
    /// position before the previous complete listing) already leads to this outcome: the
    /// same path with the same version, a delete or a move away of it or of a folder above
    /// it, or a folder above it renamed, moved or copied into place. Of the events up to
    /// `listed_seq` (the position read before this listing started, so its listing saw them)
    /// the latest counts; of those after it, any: the listing may have seen the state one of
    /// them left before the next one changed it again (a rename the API then deleted).
    Detected { after_seq: i64, listed_seq: i64 },
}

/// What an event leaves at a path, for [`Echo`] checks.
#[derive(Debug)]
enum Outcome<'a> {
    Present {
        path: &'a str,
        version: Option<&'a str>,
        size: Option<i64>,
        mtime_ms: Option<i64>,
    },
    Absent {
        path: &'a str,
    },
}

fn outcomes(e: &NewEvent) -> Vec<Outcome<'_>> {
    let present = Outcome::Present {
        path: &e.path,
        version: e.version.as_deref(),
        size: e.size,
        mtime_ms: e.mtime_ms,
    };
    match e.kind {
        "delete" => vec![Outcome::Absent { path: &e.path }],
        "rename" | "move" => match &e.previous {
            Some(p) => vec![Outcome::Absent { path: &p.path }, present],
            None => vec![present],
        },
        _ => vec![present],
    }
}

/// The paths of the folders above `path`, nearest last.
fn ancestors(path: &str) -> Vec<&str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

/// What [`Db::insert_event`] did.
pub(crate) enum Inserted {
    /// Recorded; the row carries `seq` and the transaction id; the number is how many webhook
    /// notifications the insert opened or extended (the outbox rows of the same transaction).
    Row(AnyRow, u64),
    /// The account's application does not collect events (or the account is gone).
    Off,
    /// An event with the same `dedupe_key` exists.
    Duplicate,
}

/// The id, name, parent and path an object had before a rename or move.
#[derive(Debug, Clone)]
pub struct PreviousObject {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub path: String,
}

/// A recorded event, as the feed returns it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub account_id: i64,
    pub seq: i64,
    pub kind: String,
    pub action: String,
    pub object_id: String,
    pub metadata: String,
    pub prev_id: Option<String>,
    pub prev_name: Option<String>,
    pub prev_parent_id: Option<String>,
    pub modified_ms: i64,
    pub ip: Option<String>,
    pub user_id: Option<String>,
}

/// Where an account's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// The newest event's number (0: none yet).
    pub last_seq: i64,
    /// The position when the account was last (re)connected (`after-auth`).
    pub auth_seq: i64,
    /// The oldest retained event's number, if any is retained.
    pub min_seq: Option<i64>,
}

impl StreamPosition {
    /// The oldest position a reader may continue from: every event after it is retained.
    pub fn oldest_valid(&self) -> i64 {
        match self.min_seq {
            Some(m) => m - 1,
            None => self.last_seq,
        }
    }
}

const EVENT_COLS: &str = "account_id, seq, kind, action, object_id, metadata, prev_id, prev_name, \
    prev_parent_id, modified_ms, ip, user_id";

fn event_from(r: &AnyRow) -> DbResult<EventRecord> {
    Ok(EventRecord {
        account_id: r.try_get("account_id")?,
        seq: r.try_get("seq")?,
        kind: r.try_get("kind")?,
        action: r.try_get("action")?,
        object_id: r.try_get("object_id")?,
        metadata: r.try_get("metadata")?,
        prev_id: r.try_get("prev_id")?,
        prev_name: r.try_get("prev_name")?,
        prev_parent_id: r.try_get("prev_parent_id")?,
        modified_ms: r.try_get("modified_ms")?,
        ip: r.try_get("ip")?,
        user_id: r.try_get("user_id")?,
    })
}

impl Db {
    /// Records `e` inside the caller's open transaction `conn`: takes the next number of the
    /// account's stream (locking its row until commit, so commits happen in number order) if
    /// the account's application collects events, then inserts. On
    /// [`Inserted::Duplicate`] the caller must roll back, which gives the number back.
    pub(crate) async fn insert_event(
        &self,
        conn: &mut AnyConnection,
        e: &NewEvent,
        now: i64,
    ) -> DbResult<Inserted> {
        let taken = sqlx::query(
            "UPDATE event_streams SET last_seq = last_seq + 1, \
             last_ms = CASE WHEN last_ms > $2 THEN last_ms ELSE $2 END \
             WHERE account_id = $1 AND EXISTS (SELECT 1 FROM accounts c \
               JOIN applications a ON a.id = c.app_id \
               WHERE c.id = $1 AND a.collect_events = 1) \
             RETURNING last_seq, last_ms",
        )
        .bind(e.account_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(taken) = taken else {
            return Ok(Inserted::Off);
        };
        let (seq, created_ms): (i64, i64) = (taken.try_get("last_seq")?, taken.try_get("last_ms")?);
        // Checked under the stream lock: of two inserts of one key (two hubs told of the same
        // direct upload) the second waits for the first to commit and then sees its row.
        if let Some(key) = &e.dedupe_key {
            let seen = sqlx::query(
                "SELECT 1 AS one FROM events WHERE account_id = $1 AND dedupe_key = $2",
            )
            .bind(e.account_id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
            if seen.is_some() {
                return Ok(Inserted::Duplicate);
            }
        }
        if self.is_echo(conn, e).await? {
            return Ok(Inserted::Duplicate);
        }
        let kind = self.detected_kind(conn, e).await?;
        let prev = e.previous.as_ref();
        let row = sqlx::query(&format!(
            "INSERT INTO events (account_id, seq, kind, action, object_id, path, metadata, \
             prev_id, prev_name, prev_parent_id, prev_path, modified_ms, created_ms, ip, user_id, \
             origin, version, size, mtime_ms, dedupe_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20) RETURNING seq, {}",
            self.xid_col()
        ))
        .bind(e.account_id)
        .bind(seq)
        .bind(kind)
        .bind(e.action)
        .bind(&e.object_id)
        .bind(&e.path)
        .bind(&e.metadata)
        .bind(prev.map(|p| p.id.clone()))
        .bind(prev.map(|p| p.name.clone()))
        .bind(prev.and_then(|p| p.parent_id.clone()))
        .bind(prev.map(|p| p.path.clone()))
        .bind(e.modified_ms)
        .bind(created_ms)
        .bind(e.ip.clone())
        .bind(e.user_id.clone())
        .bind(e.origin)
        .bind(e.version.clone())
        .bind(e.size)
        .bind(e.mtime_ms)
        .bind(e.dedupe_key.clone())
        .fetch_one(&mut *conn)
        .await?;
        let pending = self.outbox_upsert(conn, e.account_id, seq, now).await?;
        Ok(Inserted::Row(row, pending))
    }

    /// The kind `e` is recorded as. A detected `add` of a file the feed already shows at that
    /// path (the API added it after the detector's last complete listing, and it changed
    /// again before the next one) is an `update`: the feed's reader saw the file added once.
    async fn detected_kind(
        &self,
        conn: &mut AnyConnection,
        e: &NewEvent,
    ) -> DbResult<&'static str> {
        let Echo::Detected { after_seq, .. } = e.echo else {
            return Ok(e.kind);
        };
        if e.kind != "add" {
            return Ok(e.kind);
        }
        let latest = sqlx::query(
            "SELECT kind, path FROM events WHERE account_id = $1 AND seq > $2 \
             AND (path = $3 OR prev_path = $3) ORDER BY seq DESC LIMIT 1",
        )
        .bind(e.account_id)
        .bind(after_seq)
        .bind(&e.path)
        .fetch_optional(&mut *conn)
        .await?;
        let present = match latest {
            Some(r) => {
                let kind: String = r.try_get("kind")?;
                let at: String = r.try_get("path")?;
                kind != "delete" && at == e.path
            }
            None => false,
        };
        Ok(if present { "update" } else { e.kind })
    }

    /// Whether every outcome of `e` is already in the feed (see [`Echo`]). Runs under the
    /// stream lock [`Db::insert_event`] took.
    async fn is_echo(&self, conn: &mut AnyConnection, e: &NewEvent) -> DbResult<bool> {
        // Two windows of stream numbers: the latest row of the first must explain the outcome,
        // or any row of the second; API events count for detected changes only.
        let (latest, any, since_ms, api_ok) = match e.echo {
            Echo::Never => return Ok(false),
            // Any detected event since the request started: the detector may have changed the
            // path again after it recorded the API's outcome.
            Echo::Api { since_ms } => ((0, 0), Some((0, i64::MAX)), since_ms, 0),
            Echo::Detected {
                after_seq,
                listed_seq,
            } => (
                (after_seq, listed_seq.max(after_seq)),
                Some((listed_seq.max(after_seq), i64::MAX)),
                0,
                1,
            ),
        };
        for o in outcomes(e) {
            let path = match &o {
                Outcome::Present { path, .. } | Outcome::Absent { path } => *path,
            };
            let up = match e.echo {
                Echo::Detected { .. } => ancestors(path),
                _ => Vec::new(),
            };
            let mut explained = false;
            if latest.0 < latest.1 {
                let rows = echo_candidates(
                    conn,
                    e.account_id,
                    path,
                    &up,
                    latest,
                    since_ms,
                    api_ok,
                    1,
                    1,
                )
                .await?;
                if let Some(r) = rows.first() {
                    explained = explains(r, &o, path)?;
                }
            }
            if !explained {
                if let Some(w) = any {
                    // A detected change is not explained by what its own poll recorded (the
                    // only detected events past the stream head it read): a delta page's folder
                    // rename must not swallow the change of a file inside it that follows.
                    let detect_ok = i64::from(!matches!(e.echo, Echo::Detected { .. }));
                    for r in echo_candidates(
                        conn,
                        e.account_id,
                        path,
                        &up,
                        w,
                        since_ms,
                        api_ok,
                        100,
                        detect_ok,
                    )
                    .await?
                    {
                        if explains(&r, &o, path)? {
                            explained = true;
                            break;
                        }
                    }
                }
            }
            if !explained {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records one event in its own transaction (with its webhook outbox rows); returns its
    /// number, `None` when nothing was recorded (collection off, an echo, or a
    /// duplicate of `dedupe_key`). Waits for the replica to show it, like every write that
    /// answers a client, so the client's next read of the feed sees it.
    pub async fn record_event(&self, e: &NewEvent, now: i64) -> DbResult<Option<i64>> {
        let mut tx = self.w().begin().await?;
        let (row, pending) = match self.insert_event(&mut tx, e, now).await? {
            Inserted::Row(r, p) => (r, p),
            Inserted::Off => return Ok(None),
            // The transaction (and the stream number it took) rolls back on drop.
            Inserted::Duplicate => return Ok(None),
        };
        tx.commit().await?;
        if pending > 0 {
            self.outbox_wake.notify_one();
        }
        self.wrote(Some(&row)).await;
        Ok(Some(row.try_get("seq")?))
    }

    /// Creates the stream of a new account inside the transaction that created it.
    pub(crate) async fn create_event_stream(
        &self,
        conn: &mut AnyConnection,
        account_id: i64,
        now: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO event_streams (account_id, last_seq, auth_seq, created_ms) \
             VALUES ($1, 0, 0, $2)",
        )
        .bind(account_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Moves the account's `after-auth` point to its stream's head (the account was
    /// connected again with new credentials).
    pub async fn mark_event_auth(&self, account_id: i64) -> DbResult<()> {
        sqlx::query("UPDATE event_streams SET auth_seq = last_seq WHERE account_id = $1")
            .bind(account_id)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Where the account's stream stands; `None` when the account has none (it is gone).
    /// Replica-eligible: answers a client.
    pub async fn event_position(&self, account_id: i64) -> DbResult<Option<StreamPosition>> {
        let r = read!(self, pool => sqlx::query(
            "SELECT s.last_seq AS last_seq, s.auth_seq AS auth_seq, \
             (SELECT MIN(e.seq) FROM events e WHERE e.account_id = s.account_id) AS min_seq \
             FROM event_streams s WHERE s.account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(pool)
        .await)?;
        r.map(|r| {
            Ok(StreamPosition {
                last_seq: r.try_get("last_seq")?,
                auth_seq: r.try_get("auth_seq")?,
                min_seq: r.try_get("min_seq")?,
            })
        })
        .transpose()
    }

    /// Up to `limit` events of the account after position `after`, oldest first, with the
    /// stream's position read in the same round of reads (for `remaining` and expiry).
    /// Replica-eligible: an event's write waited for the replica before its request answered.
    pub async fn events_after(
        &self,
        account_id: i64,
        after: i64,
        limit: i64,
    ) -> DbResult<Vec<EventRecord>> {
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM events WHERE account_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ))
        .bind(account_id)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)?;
        rows.iter().map(event_from).collect()
    }

    /// Deletes up to `limit` of the oldest events recorded before `before_ms` (primary);
    /// returns how many went.
    pub async fn sweep_events(&self, before_ms: i64, limit: i64) -> DbResult<u64> {
        let r = sqlx::query(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE created_ms < $1 ORDER BY created_ms LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected())
    }

    /// Backdates an account's events recorded up to `seq` (tests of retention).
    pub async fn backdate_events(
        &self,
        account_id: i64,
        seq: i64,
        created_ms: i64,
    ) -> DbResult<()> {
        sqlx::query("UPDATE events SET created_ms = $1 WHERE account_id = $2 AND seq <= $3")
            .bind(created_ms)
            .bind(account_id)
            .bind(seq)
            .execute(&self.w())
            .await?;
        Ok(())
    }
}

/// The events of `account` numbered in `(lo, hi]`, recorded at or after `since_ms`, that may
/// explain an outcome at `path` (`up`: the folders above it), newest first, at most `limit`.
#[allow(clippy::too_many_arguments)]
async fn echo_candidates(
    conn: &mut AnyConnection,
    account_id: i64,
    path: &str,
    up: &[&str],
    (lo, hi): (i64, i64),
    since_ms: i64,
    api_ok: i64,
    limit: i64,
    detect_ok: i64,
) -> DbResult<Vec<AnyRow>> {
    // $1 account, $2 after, $3 up to, $4 since, $5 whether API events count, $6 the path,
    // $7 the limit, $8 whether detected events count, then the folders above it.
    let list = (0..up.len())
        .map(|i| format!("${}", i + 9))
        .collect::<Vec<_>>()
        .join(", ");
    let above = if up.is_empty() {
        String::new()
    } else {
        format!(
            " OR (path IN ({list}) AND (kind IN ('delete', 'rename', 'move', 'copy') \
             OR (kind = 'add' AND action = 'move'))) OR prev_path IN ({list})"
        )
    };
    let sql = format!(
        "SELECT kind, path, prev_path, version, size, mtime_ms FROM events \
         WHERE account_id = $1 AND seq > $2 AND seq <= $3 AND created_ms >= $4 \
         AND (origin <> 'api' OR $5 = 1) AND (origin <> 'detect' OR $8 = 1) \
         AND (path = $6 OR prev_path = $6{above}) ORDER BY seq DESC LIMIT $7"
    );
    let mut q = sqlx::query(&sql)
        .bind(account_id)
        .bind(lo)
        .bind(hi)
        .bind(since_ms)
        .bind(api_ok)
        .bind(path)
        .bind(limit)
        .bind(detect_ok);
    for a in up {
        q = q.bind(*a);
    }
    q.fetch_all(&mut *conn).await
}

/// Whether the event `r` leaves outcome `o` at `path`.
fn explains(r: &AnyRow, o: &Outcome<'_>, path: &str) -> DbResult<bool> {
    let kind: String = r.try_get("kind")?;
    let at: String = r.try_get("path")?;
    let moved_away = r
        .try_get::<Option<String>, _>("prev_path")?
        .is_some_and(|p| {
            p == path
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
        && at != path;
    let gone = kind == "delete" || moved_away;
    Ok(match o {
        Outcome::Absent { .. } => gone,
        Outcome::Present { .. } if gone => false,
        // A folder above was renamed, moved or copied into place: its contents came along.
        Outcome::Present { .. } if at != path => true,
        Outcome::Present {
            version,
            size,
            mtime_ms,
            ..
        } => {
            let v: Option<String> = r.try_get("version")?;
            let s: Option<i64> = r.try_get("size")?;
            let m: Option<i64> = r.try_get("mtime_ms")?;
            match (version, v.as_deref()) {
                (Some(a), Some(b)) => *a == b,
                // Folders carry no size; files compare size and time.
                _ if size.is_none() => s.is_none(),
                _ => *size == s && mtime_ms.is_some() && *mtime_ms == m,
            }
        }
    })
}
