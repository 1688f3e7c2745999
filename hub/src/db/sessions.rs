//! Queries of upload sessions and their parts (`upload_sessions`, `upload_parts`; migration
//! `0013_upload_sessions.sql`): create, read with the parts received, record a part (a re-sent
//! part replaces the earlier one), take the completion (one request at a time), finish, and
//! find expired sessions for the sweep.

use super::{Db, DbResult};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: i64,
    pub app_id: i64,
    pub account_id: i64,
    /// Where the file goes (for `objects` stores without overwrite, the name asked for: the
    /// write path takes the next free one at completion).
    pub path: String,
    pub overwrite: bool,
    pub size: Option<i64>,
    pub part_size: i64,
    /// `s3`, `azure` or `objects`.
    pub store: String,
    pub upload_id: Option<String>,
    /// The name claim an `s3` or `azure` session without overwrite holds on `path`.
    pub name_claim: Option<String>,
    pub state: String,
    pub state_ms: i64,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Where the file landed, once `done`.
    pub file_path: Option<String>,
}

/// A part as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub number: i64,
    pub size: i64,
    pub etag: Option<String>,
    pub staging: Option<String>,
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub app_id: i64,
    pub account_id: i64,
    pub path: &'a str,
    pub overwrite: bool,
    pub size: Option<i64>,
    pub part_size: i64,
    pub store: &'a str,
    pub upload_id: Option<&'a str>,
    pub name_claim: Option<&'a str>,
    pub now: i64,
    pub expires_ms: i64,
}

const COLS: &str = "id, app_id, account_id, path, overwrite, size, part_size, store, upload_id, \
                    name_claim, state, state_ms, created_ms, expires_ms, file_path";

fn session_from(r: &AnyRow) -> DbResult<SessionRecord> {
    Ok(SessionRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        account_id: r.try_get("account_id")?,
        path: r.try_get("path")?,
        overwrite: r.try_get::<i64, _>("overwrite")? != 0,
        size: r.try_get("size")?,
        part_size: r.try_get("part_size")?,
        store: r.try_get("store")?,
        upload_id: r.try_get("upload_id")?,
        name_claim: r.try_get("name_claim")?,
        state: r.try_get("state")?,
        state_ms: r.try_get("state_ms")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        file_path: r.try_get("file_path")?,
    })
}

fn part_from(r: &AnyRow) -> DbResult<PartRecord> {
    Ok(PartRecord {
        number: r.try_get("part_number")?,
        size: r.try_get("size")?,
        etag: r.try_get("etag")?,
        staging: r.try_get("staging")?,
    })
}

impl Db {
    /// Records a new open session; returns its id.
    pub async fn create_session(&self, s: &NewSession<'_>) -> DbResult<i64> {
        let r = sqlx::query(
            "INSERT INTO upload_sessions (app_id, account_id, path, overwrite, size, part_size, \
             store, upload_id, name_claim, state, state_ms, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $10, $11) RETURNING id",
        )
        .bind(s.app_id)
        .bind(s.account_id)
        .bind(s.path)
        .bind(i64::from(s.overwrite))
        .bind(s.size)
        .bind(s.part_size)
        .bind(s.store)
        .bind(s.upload_id)
        .bind(s.name_claim)
        .bind(s.now)
        .bind(s.expires_ms)
        .fetch_one(&self.w())
        .await?;
        r.try_get("id")
    }

    /// The session `id` of `account_id` (read from the primary: a part may follow its
    /// creation on another hub at once).
    pub async fn session(&self, account_id: i64, id: i64) -> DbResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM upload_sessions WHERE id = $1 AND account_id = $2"
        ))
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.w())
        .await?;
        row.as_ref().map(session_from).transpose()
    }

    /// The parts received, by number.
    pub async fn session_parts(&self, id: i64) -> DbResult<Vec<PartRecord>> {
        let rows = sqlx::query(
            "SELECT part_number, size, etag, staging FROM upload_parts WHERE session_id = $1 \
             ORDER BY part_number",
        )
        .bind(id)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(part_from).collect()
    }

    /// Records part `p` of an open session, replacing one of the same number. Returns whether
    /// it was recorded (false: the session is no longer open, and the caller discards what it
    /// wrote) and the part it replaced (whose staging object the caller deletes).
    pub async fn put_session_part(
        &self,
        id: i64,
        p: &PartRecord,
        now: i64,
    ) -> DbResult<(bool, Option<PartRecord>)> {
        let mut tx = self.w().begin().await?;
        // The session row is locked first (an UPDATE), so a completion that starts meanwhile
        // waits for this part or sees the session taken.
        let open = sqlx::query(
            "UPDATE upload_sessions SET state_ms = state_ms WHERE id = $1 AND state = 'open'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !open {
            return Ok((false, None));
        }
        let old = sqlx::query(
            "SELECT part_number, size, etag, staging FROM upload_parts \
             WHERE session_id = $1 AND part_number = $2",
        )
        .bind(id)
        .bind(p.number)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(part_from)
        .transpose()?;
        sqlx::query(
            "INSERT INTO upload_parts (session_id, part_number, size, etag, staging, received_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id, part_number) DO UPDATE \
             SET size = excluded.size, etag = excluded.etag, staging = excluded.staging, \
             received_ms = excluded.received_ms",
        )
        .bind(id)
        .bind(p.number)
        .bind(p.size)
        .bind(p.etag.as_deref())
        .bind(p.staging.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((true, old))
    }

    /// Moves session `id` to `to` (`completing` or `aborted`) when it is open, or held by a
    /// completion that started before `stale_before` and never finished (its hub died); true
    /// when this call moved it (so exactly one of concurrent callers goes on).
    pub async fn take_session(
        &self,
        id: i64,
        to: &str,
        now: i64,
        stale_before: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE upload_sessions SET state = $4, state_ms = $2 WHERE id = $1 AND \
             (state = 'open' OR (state = 'completing' AND state_ms < $3))",
        )
        .bind(id)
        .bind(now)
        .bind(stale_before)
        .bind(to)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a completion back (it failed in a way the client can fix: a missing part).
    pub async fn reopen_session(&self, id: i64, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE upload_sessions SET state = 'open', state_ms = $2 \
             WHERE id = $1 AND state = 'completing'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Marks session `id` done with the file at `file_path`; its parts' rows go.
    pub async fn finish_session(&self, id: i64, file_path: &str, now: i64) -> DbResult<()> {
        let mut tx = self.w().begin().await?;
        sqlx::query(
            "UPDATE upload_sessions SET state = 'done', state_ms = $2, file_path = $3, \
             upload_id = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(file_path)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM upload_parts WHERE session_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes session `id` and its parts' rows (aborted, or swept once expired).
    pub async fn delete_session(&self, id: i64) -> DbResult<()> {
        let mut tx = self.w().begin().await?;
        sqlx::query("DELETE FROM upload_parts WHERE session_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM upload_sessions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sessions past their expiry (or aborted), oldest first, at most `limit`.
    pub async fn expired_sessions(&self, now: i64, limit: i64) -> DbResult<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM upload_sessions WHERE expires_ms < $1 OR state = 'aborted' \
             ORDER BY expires_ms LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(session_from).collect()
    }

    /// The native multipart uploads of unfinished sessions of `account_id` (the claims sweep
    /// must not abort them).
    pub async fn session_upload_ids(&self, account_id: i64) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT upload_id FROM upload_sessions WHERE account_id = $1 \
             AND upload_id IS NOT NULL AND state IN ('open', 'completing')",
        )
        .bind(account_id)
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(|r| r.try_get("upload_id")).collect()
    }

    /// Puts session `id` back in `completing` since `state_ms`: what a hub that died while
    /// completing it leaves behind (tests of the takeover).
    pub async fn backdate_completion(&self, id: i64, state_ms: i64) -> DbResult<()> {
        sqlx::query("UPDATE upload_sessions SET state = 'completing', state_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(state_ms)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Moves session `id`'s expiry to `expires_ms` (tests of the sweep).
    pub async fn backdate_session(&self, id: i64, expires_ms: i64) -> DbResult<()> {
        sqlx::query("UPDATE upload_sessions SET expires_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(expires_ms)
            .execute(&self.w())
            .await?;
        Ok(())
    }
}
