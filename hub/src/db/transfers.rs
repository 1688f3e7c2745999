//! Queries of transfers and their durable parts: the plan, who runs it, and every verified part.

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
    pub owner: String,
    pub attempts: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
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
}

const COLS: &str = "id, app_id, kind, state, src_account, src_path, dst_account, dst_path, size, \
    part_size, upload_id, executor, spoke_id, region, bytes_done, checksum, error, note, owner, \
    attempts, created_ms, updated_ms, finished_ms";

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
        attempts: r.try_get("attempts")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        finished_ms: r.try_get("finished_ms")?,
    })
}

impl Db {
    pub async fn create_transfer(&self, t: &NewTransfer<'_>, now: i64) -> DbResult<TransferRecord> {
        let r = sqlx::query(&format!(
            "INSERT INTO transfers (app_id, kind, state, src_account, src_path, dst_account, \
             dst_path, size, part_size, owner, created_ms, updated_ms) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {COLS}, {}",
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
        .bind(now)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        from_row(&r)
    }

    pub async fn get_transfer(&self, id: i64) -> DbResult<Option<TransferRecord>> {
        read_one!(self, pool => sqlx::query(&format!("SELECT {COLS} FROM transfers WHERE id = $1"))
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

    /// Transfers of this hub in `state`.
    pub async fn transfers_in_state(
        &self,
        owner: &str,
        state: &str,
    ) -> DbResult<Vec<TransferRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM transfers WHERE owner = $1 AND state = $2 ORDER BY id"
        ))
        .bind(owner)
        .bind(state)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Marks a queued (or re-queued) transfer as running on `executor`; false when it is no
    /// longer queued. Only a queued transfer is taken, so of two dispatchers racing (the API's
    /// and the scheduler tick's) exactly one starts it: a second start would count another
    /// attempt and leave the first run unable to complete it.
    #[allow(clippy::too_many_arguments)]
    pub async fn assign_transfer(
        &self,
        id: i64,
        executor: &str,
        spoke_id: Option<i64>,
        region: Option<&str>,
        note: Option<&str>,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = 'running', executor = $1, spoke_id = $2, region = $3, \
             note = COALESCE($4, note), attempts = attempts + 1, updated_ms = $5 \
             WHERE id = $6 AND state = 'queued'",
        )
        .bind(executor)
        .bind(spoke_id)
        .bind(region)
        .bind(note)
        .bind(now)
        .bind(id)
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
    /// so parts never go to an upload the completion does not name).
    pub async fn set_transfer_upload_id(&self, id: i64, upload_id: &str) -> DbResult<bool> {
        let done =
            sqlx::query("UPDATE transfers SET upload_id = $1 WHERE id = $2 AND upload_id IS NULL")
                .bind(upload_id)
                .bind(id)
                .execute(&self.w())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets the upload of a transfer whose multipart upload is gone: the next dispatch
    /// creates a new one.
    pub async fn clear_transfer_upload_id(&self, id: i64) -> DbResult<()> {
        sqlx::query("UPDATE transfers SET upload_id = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Forgets durable parts that could not be verified; they are planned again.
    pub async fn forget_parts(&self, transfer_id: i64, indexes: &[u32]) -> DbResult<()> {
        for idx in indexes {
            sqlx::query("DELETE FROM transfer_parts WHERE transfer_id = $1 AND idx = $2")
                .bind(transfer_id)
                .bind(i64::from(*idx))
                .execute(&self.w())
                .await?;
        }
        Ok(())
    }

    /// Puts a running transfer back in the queue (its spoke went away).
    pub async fn requeue_transfer(&self, id: i64, note: &str, now: i64) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = 'queued', spoke_id = NULL, note = $1, updated_ms = $2 \
             WHERE id = $3 AND state = 'running'",
        )
        .bind(note)
        .bind(now)
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_transfer_progress(&self, id: i64, bytes_done: i64, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE transfers SET bytes_done = $1, updated_ms = $2 WHERE id = $3 AND state = 'running'",
        )
        .bind(bytes_done)
        .bind(now)
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Ends a transfer (`done`, `failed` or `cancelled`); false if it had already ended.
    pub async fn finish_transfer(
        &self,
        id: i64,
        state: &str,
        checksum: Option<&str>,
        error: Option<&str>,
        bytes_done: Option<i64>,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE transfers SET state = $1, checksum = COALESCE($2, checksum), error = $3, \
             bytes_done = COALESCE($4, bytes_done), updated_ms = $5, finished_ms = $5 \
             WHERE id = $6 AND state IN ('queued', 'running')",
        )
        .bind(state)
        .bind(checksum)
        .bind(error)
        .bind(bytes_done)
        .bind(now)
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes a verified part durable (idempotent: a part reported twice is kept once).
    pub async fn record_part(
        &self,
        transfer_id: i64,
        part: &PartDone,
        spoke_id: Option<i64>,
        now: i64,
    ) -> DbResult<()> {
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
        .execute(&self.w())
        .await?;
        Ok(())
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
