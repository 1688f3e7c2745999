//! Queries of the write path's claims (`storage_claims`): staging objects of uploads in flight,
//! names reserved by uploads that write in place, and folder creations in progress. A claim is
//! taken with one conditional INSERT, so of concurrent requests (on any hub) exactly one holds
//! it.

use super::{Db, DbResult};
use sqlx::Row;

/// What a claim holds at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// An upload's staging object: the sweep deletes it.
    Staging,
    /// A file name reserved by an upload that writes in place.
    Name,
    /// An upload that writes in place and may replace (its key is [`upload_claim_key`]): on
    /// object stores a writer killed mid-upload leaves an incomplete multipart upload, which
    /// the sweep aborts.
    Upload,
    /// A folder name being created.
    Folder,
}

impl ClaimKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Name => "name",
            Self::Upload => "upload",
            Self::Folder => "folder",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "staging" => Some(Self::Staging),
            "name" => Some(Self::Name),
            "upload" => Some(Self::Upload),
            "folder" => Some(Self::Folder),
            _ => None,
        }
    }
}

/// A claim as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    pub account_id: i64,
    pub app_id: i64,
    pub key: String,
    pub kind: ClaimKind,
    pub created_ms: i64,
    pub touched_ms: i64,
}

/// The claim key of one in-place upload that may replace `path`: unique per upload (several
/// may run at once), and never a valid storage path (those have no leading `/`), so it cannot
/// collide with a name claim.
pub fn upload_claim_key(path: &str) -> String {
    format!("/upload/{:016x}/{path}", rand::random::<u64>())
}

impl ClaimRecord {
    /// The storage path a name, folder or upload claim is about.
    pub fn path(&self) -> &str {
        match self.kind {
            ClaimKind::Upload => self
                .key
                .strip_prefix("/upload/")
                .and_then(|rest| rest.split_once('/'))
                .map_or("", |(_, path)| path),
            _ => &self.key,
        }
    }
}

impl Db {
    /// Takes the claim on `key` of `account`: true when this call took it, false when someone
    /// holds it already.
    pub async fn take_claim(
        &self,
        app_id: i64,
        account_id: i64,
        key: &str,
        kind: ClaimKind,
        now: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "INSERT INTO storage_claims (account_id, object_key, app_id, kind, created_ms, \
             touched_ms) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (account_id, object_key) DO NOTHING",
        )
        .bind(account_id)
        .bind(key)
        .bind(app_id)
        .bind(kind.as_str())
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Refreshes a claim its holder still uses.
    pub async fn touch_claim(&self, account_id: i64, key: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE storage_claims SET touched_ms = $3 WHERE account_id = $1 AND object_key = $2",
        )
        .bind(account_id)
        .bind(key)
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Moves a claim's refresh time forward to `now` (never back: a client-direct upload's
    /// claim starts fresh until its URL expires).
    pub async fn touch_claim_forward(&self, account_id: i64, key: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE storage_claims SET touched_ms = $3 \
             WHERE account_id = $1 AND object_key = $2 AND touched_ms < $3",
        )
        .bind(account_id)
        .bind(key)
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Drops a claim (its holder is done with it).
    pub async fn release_claim(&self, account_id: i64, key: &str) -> DbResult<()> {
        sqlx::query("DELETE FROM storage_claims WHERE account_id = $1 AND object_key = $2")
            .bind(account_id)
            .bind(key)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Drops a claim only if it is still untouched since `before` (so a holder that refreshed
    /// it meanwhile keeps it); true when it was dropped.
    pub async fn release_stale_claim(
        &self,
        account_id: i64,
        key: &str,
        before: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "DELETE FROM storage_claims WHERE account_id = $1 AND object_key = $2 \
             AND touched_ms < $3",
        )
        .bind(account_id)
        .bind(key)
        .bind(before)
        .execute(&self.w())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The claims of `account_id` refreshed at or after `since` (live writers), at most
    /// `limit` of them.
    pub async fn live_claims(
        &self,
        account_id: i64,
        since: i64,
        limit: i64,
    ) -> DbResult<Vec<ClaimRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLAIM_COLS} FROM storage_claims WHERE account_id = $1 AND touched_ms >= $2 \
             LIMIT $3"
        ))
        .bind(account_id)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .filter_map(|r| claim_row(r).transpose())
            .collect()
    }

    /// Up to `limit` claims untouched since `before`, oldest first.
    pub async fn stale_claims(&self, before: i64, limit: i64) -> DbResult<Vec<ClaimRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLAIM_COLS} FROM storage_claims WHERE touched_ms < $1 ORDER BY touched_ms \
             LIMIT $2"
        ))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .filter_map(|r| claim_row(r).transpose())
            .collect()
    }
}

/// The columns [`claim_row`] reads.
const CLAIM_COLS: &str = "account_id, object_key, app_id, kind, created_ms, touched_ms";

/// A claim row; `None` for a kind this version does not know.
fn claim_row(r: &sqlx::any::AnyRow) -> DbResult<Option<ClaimRecord>> {
    let kind: String = r.try_get("kind")?;
    let Some(kind) = ClaimKind::parse(&kind) else {
        return Ok(None);
    };
    Ok(Some(ClaimRecord {
        account_id: r.try_get("account_id")?,
        app_id: r.try_get("app_id")?,
        key: r.try_get("object_key")?,
        kind,
        created_ms: r.try_get("created_ms")?,
        touched_ms: r.try_get("touched_ms")?,
    }))
}
