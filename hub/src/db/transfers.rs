//! Queries of transfers and their durable parts: the plan, who runs it, every verified part,
//! and the lease through which one hub process at a time works on an unfinished transfer.
//!
//! Every write a lease holder makes is fenced: it names the holder and the lease epoch, and
//! changes nothing once another hub took the transfer over (which bumped the epoch). Only a
//! client's cancel is unfenced: any hub may cancel any transfer.

use super::{Db, DbResult};
use shared::storage::transfer::PartDone;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A transfer row.
#[derive(Debug, Clone)]
pub struct TransferRecord {
    pub id: i64,
    pub app_id: i64,
    pub kind: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub src_account: i64,
    pub src_path: String,
    pub dst_account: i64,
    pub dst_path: String,
    pub size: i64,
    pub part_size: i64,
    pub upload_id: Option<String>,
    /// `spoke` or `hub` once assigned.
    pub executor: Option<String>,
    pub spoke_id: Option<i64>,
    pub region: Option<String>,
    pub bytes_done: i64,
    pub checksum: Option<String>,
    pub error: Option<String>,
    pub note: Option<String>,
    /// The hub that created the transfer (information only; the lease says who works on it).
    pub owner: String,
    /// The hub process holding the transfer's lease, if any.
    pub lease_holder: Option<String>,
    /// Until when (ms) the lease holds unless renewed.
    pub lease_until: Option<i64>,
    /// Bumped by every takeover: the fence of holder writes.
    pub lease_epoch: i64,
    pub attempts: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    /// An upload from a URL: the URL, sealed (`hub::transfers::seal_url`). `src_path` is
    /// then its origin, `src_account` the destination account, `part_size` 0 when the
    /// source answers no ranges and `size` -1 until a source of unknown length lands.
    pub src_url: Option<Vec<u8>>,
}

/// Fields of a new transfer.
#[derive(Debug, Clone)]
pub struct NewTransfer<'a> {
    pub app_id: i64,
    pub kind: &'a str,
    pub src_account: i64,
    pub src_path: &'a str,
    pub dst_account: i64,
    pub dst_path: &'a str,
    pub size: i64,
    pub part_size: i64,
    pub owner: &'a str,
    /// The sealed URL of an upload from a URL.
    pub src_url: Option<&'a [u8]>,
}

/// A hub process's hold on one transfer: its holder id and the epoch its takeover (or the
/// creation) set. Holder writes carry it; they change nothing once the epoch moved on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: std::sync::Arc<str>,
    pub epoch: i64,
}

/// A spoke kept away from a transfer it failed, until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    pub spoke_id: i64,
    pub until_ms: i64,
    /// Why: what the spoke reported, or how it was lost.
    pub reason: String,
}

/// What a renewal found still held by its holder: the transfer and its lease epoch.
pub type Held = (i64, i64);

const COLS: &str = "id, app_id, kind, state, src_account, src_path, dst_account, dst_path, size, \
    part_size, upload_id, executor, spoke_id, region, bytes_done, checksum, error, note, owner, \
    lease_holder, lease_until, lease_epoch, attempts, created_ms, updated_ms, finished_ms, src_url";

fn from_row(r: &AnyRow) -> DbResult<TransferRecord> {
    Ok(TransferRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        kind: r.try_get("kind")?,
        state: r.try_get("state")?,
        src_account: r.try_get("src_account")?,
        src_path: r.try_get("src_path")?,
        dst_account: r.try_get("dst_account")?,
        dst_path: r.try_get("dst_path")?,
        size: r.try_get("size")?,
        part_size: r.try_get("part_size")?,
        upload_id: r.try_get("upload_id")?,
        executor: r.try_get("executor")?,
        spoke_id: r.try_get("spoke_id")?,
        region: r.try_get("region")?,
        bytes_done: r.try_get("bytes_done")?,
        checksum: r.try_get("checksum")?,
        error: r.try_get("error")?,
        note: r.try_get("note")?,
        owner: r.try_get("owner")?,
        lease_holder: r.try_get("lease_holder")?,
        lease_until: r.try_get("lease_until")?,
        lease_epoch: r.try_get("lease_epoch")?,
        attempts: r.try_get("attempts")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        src_url: r.try_get("src_url")?,
    })
}

impl Db {
    /// Creates a transfer held by `holder` until `lease_until`, with lease epoch 1.
    pub async fn create_transfer(
        &self,
        t: &NewTransfer<'_>,
        holder: &str,
        lease_until: i64,
        now: i64,
    ) -> DbResult<TransferRecord> {
        let r = sqlx::query(&format!(
            "INSERT INTO transfers (app_id, kind, state, src_account, src_path, dst_account, \
             dst_path, size, part_size, owner, lease_holder, lease_until, lease_epoch, \
             created_ms, updated_ms, src_url) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12, $13) \
             RETURNING {COLS}, {}",
            self.xid_col()
        ))
        .bind(t.app_id)
        .bind(t.kind)
        .bind(t.src_account)
        .bind(t.src_path)
        .bind(t.dst_account)
        .bind(t.dst_path)
        .bind(t.size)
        .bind(t.part_size)
        .bind(t.owner)
        .bind(holder)
        .bind(lease_until)
        .bind(now)
        .bind(t.src_url.map(<[u8]>::to_vec))
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        from_row(&r)
    }

    pub async fn get_transfer(&self, id: i64) -> DbResult<Option<TransferRecord>> {
        read!(self, pool => sqlx::query(&format!("SELECT {COLS} FROM transfers WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await)?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    /// Transfers of an application, newest first; with `touching`, only those whose source or
    /// destination is that account.
    pub async fn list_transfers(
        &self,
        app_id: i64,
        touching: Option<i64>,
        offset: i64,
        limit: i64,
    ) -> DbResult<(Vec<TransferRecord>, i64)> {
        const SCOPE: &str = "app_id = $1 AND ($2 < 0 OR src_account = $2 OR dst_account = $2)";
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {COLS} FROM transfers WHERE {SCOPE} ORDER BY id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(app_id)
        .bind(touching.unwrap_or(-1))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
        let count: i64 = read!(self, pool => sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM transfers WHERE {SCOPE}"
        ))
        .bind(app_id)
        .bind(touching.unwrap_or(-1))
        .fetch_one(pool)
        .await)?
        .try_get("n")?;
        Ok((rows.iter().map(from_row).collect::<DbResult<_>>()?, count))
    }

    /// The operator console's transfers, of every application: unfinished ones first, then
    /// the newest, at most `limit`.
    pub async fn console_transfers(&self, limit: i64) -> DbResult<Vec<TransferRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM transfers ORDER BY \
             CASE WHEN state IN ('queued', 'running') THEN 0 ELSE 1 END, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Transfers held by `holder` in `state`.
    pub async fn held_transfers(&self, holder: &str, state: &str) -> DbResult<Vec<TransferRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM transfers WHERE lease_holder = $1 AND state = $2 ORDER BY id"
        ))
        .bind(holder)
        .bind(state)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(from_row).collect()
    }

    // ---- leases ----

    /// Renews every lease `holder` still has on unfinished transfers to `until`, in one
    /// statement; returns those transfers with their epochs. A transfer missing from the
    /// answer (taken over, or ended by a cancel) is no longer this holder's to work on.
    pub async fn renew_leases(&self, holder: &str, until: i64) -> DbResult<Vec<Held>> {
        let rows = sqlx::query(
            "UPDATE transfers SET lease_until = $1 \
             WHERE lease_holder = $2 AND state IN ('queued', 'running') \
             RETURNING id, lease_epoch",
        )
        .bind(until)
        .bind(holder)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("lease_epoch")?)))
            .collect()
    }

    /// Unfinished transfers whose lease expired before `now` (or that have no holder), oldest
    /// first, at most `limit`: candidates for [`Db::take_over_transfer`].
    pub async fn expired_leases(&self, now: i64, limit: i64) -> DbResult<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM transfers WHERE state IN ('queued', 'running') \
             AND (lease_until IS NULL OR lease_until < $1) ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(|r| r.try_get("id")).collect()
    }

    /// Takes transfer `id` over for `holder` until `until` if its lease expired before `now`
    /// (or it has none): one conditional UPDATE that bumps the epoch, so of any number of hubs
    /// trying at once exactly one gets it, and every write of the previous holder is fenced
    /// off from then on. The new lease, or `None` when the transfer is held or ended.
    pub async fn take_over_transfer(
        &self,
        id: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> DbResult<Option<Lease>> {
        let row = sqlx::query(
            "UPDATE transfers SET lease_holder = $1, lease_until = $2, \
             lease_epoch = lease_epoch + 1 \
             WHERE id = $3 AND state IN ('queued', 'running') \
             AND (lease_until IS NULL OR lease_until < $4) \
             RETURNING lease_epoch",
        )
        .bind(holder)
        .bind(until)
        .bind(id)
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        row.map(|r| {
            Ok(Lease {
                holder: holder.into(),
                epoch: r.try_get("lease_epoch")?,
            })
        })
        .transpose()
    }

    /// Whether `lease` still holds transfer `id` (and it is unfinished).
    pub async fn holds(&self, id: i64, lease: &Lease) -> DbResult<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM transfers WHERE id = $1 AND lease_holder = $2 \
             AND lease_epoch = $3 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .fetch_optional(&self.w())
        .await?;
        Ok(row.is_some())
    }

    // ---- holder writes (all fenced by the lease) ----

    /// Marks a queued (or re-queued) transfer as running on `executor`; false when it is no
    /// longer queued or no longer held by `lease`. Only a queued transfer is taken, so of two
    /// dispatchers racing (the API's and the scheduler tick's) exactly one starts it: a second
    /// start would count another attempt and leave the first run unable to complete it.
    #[allow(clippy::too_many_arguments)]
    pub async fn assign_transfer(
        &self,
        id: i64,
        lease: &Lease,
        executor: &str,
        spoke_id: Option<i64>,
        region: Option<&str>,
        note: Option<&str>,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = 'running', executor = $1, spoke_id = $2, region = $3, \
             note = COALESCE($4, note), attempts = attempts + 1, updated_ms = $5 \
             WHERE id = $6 AND state = 'queued' AND lease_holder = $7 AND lease_epoch = $8",
        )
        .bind(executor)
        .bind(spoke_id)
        .bind(region)
        .bind(note)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Multipart upload ids of unfinished transfers into `account_id`: uploads that a
    /// transfer may still resume, which nothing else may abort.
    pub async fn unfinished_upload_ids(&self, account_id: i64) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT upload_id FROM transfers WHERE dst_account = $1 AND upload_id IS NOT NULL \
             AND state IN ('queued', 'running')",
        )
        .bind(account_id)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(|r| r.try_get("upload_id")).collect()
    }

    /// Records the transfer's multipart upload unless it already has one; false when another
    /// dispatcher recorded its own first (the caller then aborts its upload and uses that one,
    /// so parts never go to an upload the completion does not name), or `lease` lost it.
    pub async fn set_transfer_upload_id(
        &self,
        id: i64,
        lease: &Lease,
        upload_id: &str,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET upload_id = $1 WHERE id = $2 AND upload_id IS NULL \
             AND lease_holder = $3 AND lease_epoch = $4",
        )
        .bind(upload_id)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets the upload of a transfer whose multipart upload is gone: the next dispatch
    /// creates a new one. False when `lease` no longer holds the transfer.
    pub async fn clear_transfer_upload_id(&self, id: i64, lease: &Lease) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET upload_id = NULL WHERE id = $1 \
             AND lease_holder = $2 AND lease_epoch = $3",
        )
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes the row lock of a transfer `lease` holds, inside `tx` (PostgreSQL: a takeover
    /// waits for `tx`, and one that committed first makes this false; SQLite serialises
    /// writers anyway). What `tx` then writes about the transfer's parts is fenced too.
    async fn fence_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: i64,
        lease: &Lease,
        running: bool,
        now: i64,
    ) -> DbResult<bool> {
        let states = if running {
            "('running')"
        } else {
            "('queued', 'running')"
        };
        let done = sqlx::query(&format!(
            "UPDATE transfers SET updated_ms = $1 WHERE id = $2 AND lease_holder = $3 \
             AND lease_epoch = $4 AND state IN {states}"
        ))
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets durable parts that could not be verified; they are planned again. False (and
    /// nothing forgotten) when `lease` no longer holds the transfer.
    pub async fn forget_parts(
        &self,
        transfer_id: i64,
        lease: &Lease,
        indexes: &[u32],
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.w().begin().await?;
        if !Self::fence_in(&mut tx, transfer_id, lease, false, now).await? {
            return Ok(false);
        }
        for idx in indexes {
            sqlx::query("DELETE FROM transfer_parts WHERE transfer_id = $1 AND idx = $2")
                .bind(transfer_id)
                .bind(i64::from(*idx))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Puts a running transfer back in the queue (its spoke went away, a retry, a takeover).
    pub async fn requeue_transfer(
        &self,
        id: i64,
        lease: &Lease,
        note: &str,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = 'queued', spoke_id = NULL, note = $1, updated_ms = $2 \
             WHERE id = $3 AND state = 'running' AND lease_holder = $4 AND lease_epoch = $5",
        )
        .bind(note)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records progress; false when the transfer is not running under `lease`. The stored
    /// figure never goes back (a resumed run starts from its durable parts, which may be less
    /// than an earlier run showed): a lower `bytes_done` leaves it as it is.
    pub async fn set_transfer_progress(
        &self,
        id: i64,
        lease: &Lease,
        bytes_done: i64,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET bytes_done = CASE WHEN bytes_done < $1 THEN $1 \
             ELSE bytes_done END, updated_ms = $2 WHERE id = $3 \
             AND state = 'running' AND lease_holder = $4 AND lease_epoch = $5",
        )
        .bind(bytes_done)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a transfer `lease` holds (`done` or `failed`); false if it had already ended or
    /// another hub holds it now. The holder and epoch stay on the row: who finished it.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_transfer(
        &self,
        id: i64,
        lease: &Lease,
        state: &str,
        checksum: Option<&str>,
        error: Option<&str>,
        bytes_done: Option<i64>,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = $1, checksum = COALESCE($2, checksum), error = $3, \
             bytes_done = COALESCE($4, bytes_done), updated_ms = $5, finished_ms = $5, \
             lease_until = NULL \
             WHERE id = $6 AND state IN ('queued', 'running') \
             AND lease_holder = $7 AND lease_epoch = $8",
        )
        .bind(state)
        .bind(checksum)
        .bind(error)
        .bind(bytes_done)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a transfer `lease` holds as `done` and records `event` (the copy landing in the
    /// destination account) in the same transaction. `None` if it had already ended or
    /// another hub holds it (nothing is written); `Some(recorded)` otherwise, `recorded`
    /// false when the destination's application does not collect events.
    pub async fn finish_transfer_done(
        &self,
        id: i64,
        lease: &Lease,
        checksum: Option<&str>,
        bytes_done: i64,
        event: &super::NewEvent,
        now: i64,
    ) -> DbResult<Option<bool>> {
        let mut tx = self.w().begin().await?;
        let done = sqlx::query(
            "UPDATE transfers SET state = 'done', checksum = COALESCE($1, checksum), \
             error = NULL, bytes_done = $2, size = CASE WHEN size < 0 THEN $2 ELSE size END, \
             updated_ms = $3, finished_ms = $3, \
             lease_until = NULL \
             WHERE id = $4 AND state IN ('queued', 'running') \
             AND lease_holder = $5 AND lease_epoch = $6",
        )
        .bind(checksum)
        .bind(bytes_done)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let (row, pending) = match self.insert_event(&mut tx, event, now).await? {
            super::Inserted::Row(r, p) => (Some(r), p),
            super::Inserted::Off | super::Inserted::Duplicate => (None, 0),
        };
        tx.commit().await?;
        if pending > 0 {
            self.outbox_wake.notify_one();
        }
        self.wrote(row.as_ref()).await;
        Ok(Some(row.is_some()))
    }

    // ---- spokes that failed a transfer ----

    /// Puts a running transfer back in the queue (like [`Db::requeue_transfer`]) and keeps
    /// `spoke_id`, which just failed it (`reason`), away from it until `until_ms`, in one
    /// transaction fenced by `lease`: any hub that dispatches it before then skips that spoke.
    /// False (nothing written) when the transfer is not running under `lease`.
    #[allow(clippy::too_many_arguments)]
    pub async fn requeue_transfer_excluding(
        &self,
        id: i64,
        lease: &Lease,
        note: &str,
        spoke_id: i64,
        reason: &str,
        until_ms: i64,
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.w().begin().await?;
        let done = sqlx::query(
            "UPDATE transfers SET state = 'queued', spoke_id = NULL, note = $1, updated_ms = $2 \
             WHERE id = $3 AND state = 'running' AND lease_holder = $4 AND lease_epoch = $5",
        )
        .bind(note)
        .bind(now)
        .bind(id)
        .bind(&*lease.holder)
        .bind(lease.epoch)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO transfer_exclusions (transfer_id, spoke_id, until_ms, reason) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (transfer_id, spoke_id) DO UPDATE SET \
             until_ms = excluded.until_ms, reason = excluded.reason",
        )
        .bind(id)
        .bind(spoke_id)
        .bind(until_ms)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The spokes kept away from transfer `id` at `now`, soonest back first.
    pub async fn transfer_exclusions(&self, id: i64, now: i64) -> DbResult<Vec<Exclusion>> {
        let rows = sqlx::query(
            "SELECT spoke_id, until_ms, reason FROM transfer_exclusions \
             WHERE transfer_id = $1 AND until_ms > $2 ORDER BY until_ms, spoke_id",
        )
        .bind(id)
        .bind(now)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Exclusion {
                    spoke_id: r.try_get("spoke_id")?,
                    until_ms: r.try_get("until_ms")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// A client cancels a transfer: any hub may, whoever holds it (the holder learns of it at
    /// its next renewal). False if it had already ended.
    pub async fn cancel_transfer(&self, id: i64, message: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "UPDATE transfers SET state = 'cancelled', error = $1, updated_ms = $2, \
             finished_ms = $2, lease_until = NULL \
             WHERE id = $3 AND state IN ('queued', 'running') RETURNING {}",
            self.xid_col()
        ))
        .bind(message)
        .bind(now)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    /// Makes a verified part of a running transfer durable (idempotent: a part reported twice
    /// is kept once). False (nothing recorded) when `lease` no longer holds the transfer.
    pub async fn record_part(
        &self,
        transfer_id: i64,
        lease: &Lease,
        part: &PartDone,
        spoke_id: Option<i64>,
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.w().begin().await?;
        if !Self::fence_in(&mut tx, transfer_id, lease, true, now).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO transfer_parts (transfer_id, idx, len, sha256, etag, spoke_id, done_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (transfer_id, idx) DO NOTHING",
        )
        .bind(transfer_id)
        .bind(i64::from(part.index))
        .bind(part.len as i64)
        .bind(&part.sha256)
        .bind(&part.etag)
        .bind(spoke_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Durable parts of a transfer in index order, with the spoke that moved each (`None`: hub).
    pub async fn transfer_parts(&self, transfer_id: i64) -> DbResult<Vec<(PartDone, Option<i64>)>> {
        let rows = read!(self, pool => sqlx::query(
            "SELECT idx, len, sha256, etag, spoke_id FROM transfer_parts WHERE transfer_id = $1 \
             ORDER BY idx",
        )
        .bind(transfer_id)
        .fetch_all(pool)
        .await)?;
        rows.iter()
            .map(|r| {
                Ok((
                    PartDone {
                        index: r.try_get::<i64, _>("idx")? as u32,
                        len: r.try_get::<i64, _>("len")? as u64,
                        sha256: r.try_get("sha256")?,
                        etag: r.try_get("etag")?,
                    },
                    r.try_get("spoke_id")?,
                ))
            })
            .collect()
    }
}
