//! Queries of the detectors of outside changes (`detectors`, `detect_snapshots`; see
//! migration `0011_detect.sql`): the schedule (due detectors handed to the work queue once),
//! the per-poll lease (taken with one conditional UPDATE that bumps the epoch, renewed while
//! the poll runs), the snapshot read page by page in sort-key order, and the holder's writes,
//! each fenced by holder and epoch.

use super::{Db, DbResult};
use crate::detect::delta::SnapOp;
use crate::detect::listing::Seen;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// A hub process's hold on one poll of an account, with what the last poll left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorLease {
    pub account_id: i64,
    pub holder: String,
    pub epoch: i64,
    /// A complete listing is stored (the first poll records no events).
    pub baseline: bool,
    /// The stream position read before the last complete poll started listing.
    pub polled_seq: i64,
    /// The delta API's cursor.
    pub cursor: Option<String>,
}

/// A detector row: who polls now, who polled last, when the last complete poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorState {
    pub holder: Option<String>,
    pub last_holder: Option<String>,
    pub last_poll_ms: Option<i64>,
}

/// Rows one snapshot upsert statement writes at most (bounds its parameters).
const PUT_BATCH: usize = 400;

fn seen_from(r: &sqlx::any::AnyRow) -> DbResult<Seen> {
    Ok(Seen {
        key: r.try_get("sort_key")?,
        path: r.try_get("path")?,
        folder: r.try_get::<i64, _>("folder")? != 0,
        version: r.try_get("version")?,
        size: r.try_get("size")?,
        mtime_ms: r.try_get("mtime_ms")?,
        ident: r.try_get("ident")?,
    })
}

impl Db {
    /// Creates the detector rows of accounts whose application collects events and that
    /// have none yet (any hub may; a row another hub inserted first is kept).
    pub async fn ensure_detectors(&self, now: i64) -> DbResult<u64> {
        let r = sqlx::query(
            "INSERT INTO detectors (account_id, created_ms) \
             SELECT c.id, $1 FROM accounts c JOIN applications a ON a.id = c.app_id \
             WHERE a.collect_events = 1 AND c.active = 1 \
             AND NOT EXISTS (SELECT 1 FROM detectors d WHERE d.account_id = c.id) \
             ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected())
    }

    /// Marks up to `limit` due detectors as handed to the work queue until `queued_until` and
    /// returns their accounts. Due: the account's application collects events, no poll runs
    /// (or the one that ran lost its lease: its hub died), `next_poll_ms` has come or the dead
    /// poll must be redone, and no hand-over is outstanding. One UPDATE re-checked row by row:
    /// of schedulers on several hubs, one hands each detector.
    pub async fn queue_due_detectors(
        &self,
        now: i64,
        queued_until: i64,
        limit: i64,
    ) -> DbResult<Vec<i64>> {
        let due = "(d.next_poll_ms <= $1 OR d.lease_holder IS NOT NULL) \
             AND (d.lease_until IS NULL OR d.lease_until < $1) \
             AND (d.queued_until IS NULL OR d.queued_until < $1)";
        let rows = sqlx::query(&format!(
            "UPDATE detectors SET queued_until = $2 WHERE account_id IN (\
               SELECT d.account_id FROM detectors d \
               JOIN accounts c ON c.id = d.account_id JOIN applications a ON a.id = c.app_id \
               WHERE a.collect_events = 1 AND c.active = 1 AND {due} \
               ORDER BY d.next_poll_ms LIMIT $3) \
             AND {} RETURNING account_id",
            due.replace("d.", "")
        ))
        .bind(now)
        .bind(queued_until)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(|r| r.try_get("account_id")).collect()
    }

    /// When the next detector comes due (`None` without detectors); a scheduler sleeps until
    /// then at most.
    pub async fn next_detector_due(&self) -> DbResult<Option<i64>> {
        // A running poll's detector is due when its lease runs out at the earliest; a handed
        // one when its hand-over does. Accounts that do not collect are never due.
        let r = sqlx::query(
            "SELECT MIN(CASE \
               WHEN d.lease_until IS NOT NULL AND d.lease_until > d.next_poll_ms \
                 THEN d.lease_until \
               WHEN d.queued_until IS NOT NULL AND d.queued_until > d.next_poll_ms \
                 THEN d.queued_until \
               ELSE d.next_poll_ms END) AS due \
             FROM detectors d JOIN accounts c ON c.id = d.account_id \
             JOIN applications a ON a.id = c.app_id \
             WHERE a.collect_events = 1 AND c.active = 1",
        )
        .fetch_one(&self.w())
        .await?;
        r.try_get::<Option<i64>, _>("due")
    }

    /// Takes the account's detector lease for one poll, for `holder` until `until`: one
    /// conditional UPDATE that bumps the epoch, so of two hubs handed the same account (the
    /// queue delivers at least once) one polls. `None` when the poll is not due any more (it
    /// ran meanwhile), another poll runs, or the account stopped collecting.
    pub async fn start_poll(
        &self,
        account_id: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> DbResult<Option<DetectorLease>> {
        let row = sqlx::query(
            "UPDATE detectors SET lease_holder = $1, lease_until = $2, \
             lease_epoch = lease_epoch + 1, wake = 0 \
             WHERE account_id = $3 AND (lease_until IS NULL OR lease_until < $4) \
             AND (next_poll_ms <= $4 OR lease_holder IS NOT NULL) \
             AND account_id IN (SELECT c.id FROM accounts c \
               JOIN applications a ON a.id = c.app_id WHERE a.collect_events = 1 AND c.active = 1) \
             RETURNING lease_epoch, baseline, polled_seq, cursor",
        )
        .bind(holder)
        .bind(until)
        .bind(account_id)
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        row.map(|r| {
            Ok(DetectorLease {
                account_id,
                holder: holder.to_owned(),
                epoch: r.try_get("lease_epoch")?,
                baseline: r.try_get::<i64, _>("baseline")? != 0,
                polled_seq: r.try_get("polled_seq")?,
                cursor: r.try_get("cursor")?,
            })
        })
        .transpose()
    }

    /// Extends a running poll's lease to `until`; false when it was lost.
    pub async fn renew_poll(&self, lease: &DetectorLease, until: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE detectors SET lease_until = $1 \
             WHERE account_id = $2 AND lease_holder = $3 AND lease_epoch = $4",
        )
        .bind(until)
        .bind(lease.account_id)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a poll (complete or not): lets the lease go, records who ran it, and schedules the
    /// next one at `next_ms`, or at once when the account was woken while it ran
    /// ([`Db::poll_soon`]).
    pub async fn end_poll(&self, lease: &DetectorLease, now: i64, next_ms: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE detectors SET lease_holder = NULL, lease_until = NULL, queued_until = NULL, \
             last_holder = $1, next_poll_ms = CASE WHEN wake = 1 THEN $2 ELSE $3 END, wake = 0 \
             WHERE account_id = $4 AND lease_holder = $1 AND lease_epoch = $5",
        )
        .bind(&lease.holder)
        .bind(now)
        .bind(next_ms)
        .bind(lease.account_id)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Asks for a poll of the account as soon as possible (an `fs` root's inotify saw a
    /// change): due now, and again right after a poll that is running now.
    pub async fn poll_soon(&self, account_id: i64, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE detectors SET wake = 1, \
             next_poll_ms = CASE WHEN next_poll_ms > $2 THEN $2 ELSE next_poll_ms END \
             WHERE account_id = $1",
        )
        .bind(account_id)
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// The account's detector row as operators and tests see it (`None`: no detector).
    pub async fn detector_state(&self, account_id: i64) -> DbResult<Option<DetectorState>> {
        let r = sqlx::query(
            "SELECT lease_holder, last_holder, last_poll_ms FROM detectors WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.w())
        .await?;
        r.map(|r| {
            Ok(DetectorState {
                holder: r.try_get("lease_holder")?,
                last_holder: r.try_get("last_holder")?,
                last_poll_ms: r.try_get("last_poll_ms")?,
            })
        })
        .transpose()
    }

    /// Up to `limit` snapshot rows of the account after `after` (a sort key), in sort-key
    /// order (primary: the holder reads what it wrote).
    pub async fn snapshot_page(
        &self,
        account_id: i64,
        after: Option<&str>,
        limit: i64,
    ) -> DbResult<Vec<Seen>> {
        let rows = sqlx::query(
            "SELECT sort_key, path, folder, version, size, mtime_ms, ident \
             FROM detect_snapshots WHERE account_id = $1 AND sort_key > $2 \
             ORDER BY sort_key LIMIT $3",
        )
        .bind(account_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(seen_from).collect()
    }

    /// The snapshot row at `key`, if any.
    pub async fn snapshot_get(&self, account_id: i64, key: &str) -> DbResult<Option<Seen>> {
        let r = sqlx::query(
            "SELECT sort_key, path, folder, version, size, mtime_ms, ident \
             FROM detect_snapshots WHERE account_id = $1 AND sort_key = $2",
        )
        .bind(account_id)
        .bind(key)
        .fetch_optional(&self.w())
        .await?;
        r.as_ref().map(seen_from).transpose()
    }

    /// Whether `lease` still holds its detector; locks the row until the caller's
    /// transaction ends, so a takeover waits for (or fences) the holder's write.
    async fn fence(conn: &mut AnyConnection, lease: &DetectorLease) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE detectors SET lease_epoch = lease_epoch WHERE account_id = $1 \
             AND lease_holder = $2 AND lease_epoch = $3",
        )
        .bind(lease.account_id)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&mut *conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Writes `put` into and removes `delete` (sort keys) from the snapshot, fenced by the
    /// lease; false when the lease is lost (nothing written).
    pub async fn snapshot_write(
        &self,
        lease: &DetectorLease,
        put: &[Seen],
        delete: &[String],
    ) -> DbResult<bool> {
        let ops: Vec<SnapOp> = delete
            .iter()
            .map(|k| SnapOp::Delete(k.clone()))
            .chain(put.iter().map(|s| SnapOp::Put(s.clone())))
            .collect();
        self.snapshot_apply(lease, &ops, &[]).await
    }

    /// The snapshot rows at `keys` (sort keys) and those with `idents`, in one or two round
    /// trips per [`PUT_BATCH`] of each.
    pub async fn snapshot_lookup(
        &self,
        account_id: i64,
        keys: &[String],
        idents: &[String],
    ) -> DbResult<(HashMap<String, Seen>, HashMap<String, Seen>)> {
        let mut by_key = HashMap::new();
        let mut by_ident = HashMap::new();
        for (column, wanted) in [("sort_key", keys), ("ident", idents)] {
            for chunk in wanted.chunks(PUT_BATCH) {
                let sql = format!(
                    "SELECT sort_key, path, folder, version, size, mtime_ms, ident \
                     FROM detect_snapshots WHERE account_id = $1 AND {column} IN ({})",
                    placeholders(2, chunk.len())
                );
                let mut q = sqlx::query(&sql).bind(account_id);
                for k in chunk {
                    q = q.bind(k);
                }
                for r in q.fetch_all(&self.w()).await? {
                    let s = seen_from(&r)?;
                    if column == "sort_key" {
                        by_key.insert(s.key.clone(), s);
                    } else if let Some(i) = s.ident.clone() {
                        by_ident.insert(i, s);
                    }
                }
            }
        }
        Ok((by_key, by_ident))
    }

    /// Applies a delta page's snapshot writes in order and stamps the rows at `seen` (sort
    /// keys) with the poll's epoch (a full listing's mark), in one transaction fenced by the
    /// lease; false when the lease is lost (nothing written).
    pub async fn snapshot_apply(
        &self,
        lease: &DetectorLease,
        ops: &[SnapOp],
        seen: &[String],
    ) -> DbResult<bool> {
        let mut tx = self.w().begin().await?;
        if !Self::fence(&mut tx, lease).await? {
            return Ok(false);
        }
        let account = lease.account_id;
        // Runs of puts and of deletes are written in batches, in order with the tree writes.
        let (mut puts, mut deletes): (Vec<Seen>, Vec<String>) = (Vec::new(), Vec::new());
        for op in ops {
            if !matches!(op, SnapOp::Put(_)) && !puts.is_empty() {
                put_rows(
                    &mut tx,
                    account,
                    &std::mem::take(&mut puts),
                    Some(lease.epoch),
                )
                .await?;
            }
            if !matches!(op, SnapOp::Delete(_)) && !deletes.is_empty() {
                delete_rows(&mut tx, account, &std::mem::take(&mut deletes)).await?;
            }
            match op {
                SnapOp::Put(row) => puts.push(row.clone()),
                SnapOp::Delete(key) => deletes.push(key.clone()),
                SnapOp::DeleteTree(key) => delete_tree(&mut tx, account, key).await?,
                SnapOp::MoveTree {
                    from_key,
                    to_key,
                    from_path,
                    to_path,
                } => {
                    // Whatever the snapshot held under the new path was replaced; unless the
                    // two subtrees overlap (a folder moved up over its parent's old name).
                    let (from_tree, to_tree) =
                        (format!("{from_key}\u{1}"), format!("{to_key}\u{1}"));
                    if !(from_tree.starts_with(&to_tree) || to_tree.starts_with(&from_tree)) {
                        delete_tree(&mut tx, account, to_key).await?;
                    }
                    sqlx::query(
                        "UPDATE detect_snapshots SET \
                         sort_key = $1 || substr(sort_key, $2), path = $3 || substr(path, $4) \
                         WHERE account_id = $5 AND sort_key >= $6 AND sort_key < $7",
                    )
                    .bind(to_key)
                    .bind(from_key.chars().count() as i64 + 1)
                    .bind(to_path)
                    .bind(from_path.chars().count() as i64 + 1)
                    .bind(account)
                    .bind(from_tree)
                    .bind(format!("{from_key}\u{2}"))
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        put_rows(&mut tx, account, &puts, Some(lease.epoch)).await?;
        delete_rows(&mut tx, account, &deletes).await?;
        for chunk in seen.chunks(PUT_BATCH) {
            let sql = format!(
                "UPDATE detect_snapshots SET mark = $1 WHERE account_id = $2 \
                 AND sort_key IN ({})",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(lease.epoch).bind(account);
            for k in chunk {
                q = q.bind(k);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// After a full listing: the next rows (in sort-key order, after `after`) it did not
    /// stamp with `epoch`, i.e. what disappeared.
    pub async fn snapshot_unmarked(
        &self,
        account_id: i64,
        epoch: i64,
        after: &str,
        limit: i64,
    ) -> DbResult<Vec<Seen>> {
        let rows = sqlx::query(
            "SELECT sort_key, path, folder, version, size, mtime_ms, ident \
             FROM detect_snapshots WHERE account_id = $1 AND sort_key > $2 \
             AND (mark IS NULL OR mark <> $3) ORDER BY sort_key LIMIT $4",
        )
        .bind(account_id)
        .bind(after)
        .bind(epoch)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(seen_from).collect()
    }

    /// Ends a complete poll: the stream position read before it listed, the baseline flag,
    /// the delta cursor; fenced by the lease (false when lost).
    pub async fn finish_poll(
        &self,
        lease: &DetectorLease,
        polled_seq: i64,
        cursor: Option<&str>,
        now: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE detectors SET polled_seq = $1, baseline = 1, cursor = $2, last_poll_ms = $3 \
             WHERE account_id = $4 AND lease_holder = $5 AND lease_epoch = $6",
        )
        .bind(polled_seq)
        .bind(cursor)
        .bind(now)
        .bind(lease.account_id)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The newest event number of the account's stream (primary).
    pub async fn stream_head(&self, account_id: i64) -> DbResult<i64> {
        let r = sqlx::query("SELECT last_seq FROM event_streams WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&self.w())
            .await?;
        Ok(match r {
            Some(r) => r.try_get("last_seq")?,
            None => 0,
        })
    }
}

/// `$first, $first+1, ...` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes everything below the folder whose sort key is `key`.
async fn delete_tree(conn: &mut AnyConnection, account_id: i64, key: &str) -> DbResult<()> {
    sqlx::query(
        "DELETE FROM detect_snapshots WHERE account_id = $1 AND sort_key >= $2 AND sort_key < $3",
    )
    .bind(account_id)
    .bind(format!("{key}\u{1}"))
    .bind(format!("{key}\u{2}"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn delete_rows(conn: &mut AnyConnection, account_id: i64, keys: &[String]) -> DbResult<()> {
    for chunk in keys.chunks(PUT_BATCH) {
        let sql = format!(
            "DELETE FROM detect_snapshots WHERE account_id = $1 AND sort_key IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(account_id);
        for k in chunk {
            q = q.bind(k);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Upserts `rows`, stamped with `mark` (a full listing's epoch) when given.
async fn put_rows(
    conn: &mut AnyConnection,
    account_id: i64,
    rows: &[Seen],
    mark: Option<i64>,
) -> DbResult<()> {
    const COLS: usize = 9;
    for chunk in rows.chunks(PUT_BATCH) {
        let values = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * COLS + 1, COLS)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO detect_snapshots (account_id, sort_key, path, folder, version, \
             size, mtime_ms, ident, mark) VALUES {values} ON CONFLICT (account_id, sort_key) DO \
             UPDATE SET path = excluded.path, folder = excluded.folder, \
             version = excluded.version, size = excluded.size, \
             mtime_ms = excluded.mtime_ms, ident = excluded.ident, mark = excluded.mark"
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q
                .bind(account_id)
                .bind(&s.key)
                .bind(&s.path)
                .bind(i64::from(s.folder))
                .bind(&s.version)
                .bind(s.size)
                .bind(s.mtime_ms)
                .bind(&s.ident)
                .bind(mark);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
