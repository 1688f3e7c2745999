//! Queries of the developer portal's sign-in sessions: made from a meta token, found by the
//! hash of their own token, gone with that meta token or when they expire.

use super::{Db, DbResult};
use sqlx::Row;

impl Db {
    /// The id of the meta token with this hash.
    pub async fn meta_token_id(&self, hash: &[u8]) -> DbResult<Option<i64>> {
        let r = sqlx::query("SELECT id FROM meta_tokens WHERE token_hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(&self.w())
            .await?;
        r.map(|r| r.try_get("id")).transpose()
    }

    /// Stores a session (its token's hash) of meta token `meta_token_id`.
    pub async fn create_portal_session(
        &self,
        hash: &[u8],
        meta_token_id: i64,
        now: i64,
        expires_ms: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO portal_sessions (token_hash, meta_token_id, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(hash.to_vec())
        .bind(meta_token_id)
        .bind(now)
        .bind(expires_ms)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Whether a live session has this token hash (its meta token still exists).
    pub async fn portal_session_live(&self, hash: &[u8], now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "SELECT s.id FROM portal_sessions s JOIN meta_tokens m ON m.id = s.meta_token_id \
             WHERE s.token_hash = $1 AND s.expires_ms > $2",
        )
        .bind(hash.to_vec())
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        Ok(r.is_some())
    }

    /// Ends a session; and sweeps expired ones.
    pub async fn end_portal_session(&self, hash: &[u8], now: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM portal_sessions WHERE token_hash = $1 OR expires_ms <= $2")
            .bind(hash.to_vec())
            .bind(now)
            .execute(&self.w())
            .await?;
        Ok(())
    }
}
