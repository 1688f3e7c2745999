//! Queries of sharing links (`links`; migration `0014_links.sql`): create, list by account,
//! read, change, delete, and the failed-password counter (one UPDATE that opens a new window
//! or counts in the current one).

use super::{Db, DbResult};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A link as stored.
#[derive(Debug, Clone)]
pub struct LinkRecord {
    pub id: i64,
    pub app_id: i64,
    pub account_id: i64,
    /// The file's path in the account.
    pub path: String,
    /// Part of the URL's tag: a new nonce would make a new URL.
    pub nonce: String,
    pub direct: bool,
    pub active: bool,
    /// scrypt PHC string.
    pub password_hash: Option<String>,
    pub expires_ms: Option<i64>,
    pub created_ms: i64,
    pub modified_ms: i64,
}

/// What a PATCH changes (`None`: unchanged; `Some(None)`: cleared).
#[derive(Debug, Default)]
pub struct LinkChanges {
    pub active: Option<bool>,
    pub direct: Option<bool>,
    pub password_hash: Option<Option<String>>,
    pub expires_ms: Option<Option<i64>>,
}

const COLS: &str = "id, app_id, account_id, path, nonce, direct, active, password_hash, \
                    expires_ms, created_ms, modified_ms";

fn link_from(r: &AnyRow) -> DbResult<LinkRecord> {
    Ok(LinkRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        account_id: r.try_get("account_id")?,
        path: r.try_get("path")?,
        nonce: r.try_get("nonce")?,
        direct: r.try_get::<i64, _>("direct")? != 0,
        active: r.try_get::<i64, _>("active")? != 0,
        password_hash: r.try_get("password_hash")?,
        expires_ms: r.try_get("expires_ms")?,
        created_ms: r.try_get("created_ms")?,
        modified_ms: r.try_get("modified_ms")?,
    })
}

impl Db {
    /// Records a link; returns it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_link(
        &self,
        app_id: i64,
        account_id: i64,
        path: &str,
        nonce: &str,
        direct: bool,
        active: bool,
        password_hash: Option<&str>,
        expires_ms: Option<i64>,
        now: i64,
    ) -> DbResult<LinkRecord> {
        let r = sqlx::query(&format!(
            "INSERT INTO links (app_id, account_id, path, nonce, direct, active, password_hash, \
             expires_ms, created_ms, modified_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             RETURNING {COLS}"
        ))
        .bind(app_id)
        .bind(account_id)
        .bind(path)
        .bind(nonce)
        .bind(i64::from(direct))
        .bind(i64::from(active))
        .bind(password_hash)
        .bind(expires_ms)
        .bind(now)
        .fetch_one(&self.w())
        .await?;
        link_from(&r)
    }

    /// Link `id`, of `account_id` when given (the public URL names only the link).
    pub async fn link(&self, id: i64, account_id: Option<i64>) -> DbResult<Option<LinkRecord>> {
        let row = match account_id {
            Some(acc) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM links WHERE id = $1 AND account_id = $2"
                ))
                .bind(id)
                .bind(acc)
                .fetch_optional(&self.w())
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLS} FROM links WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.w())
                    .await?
            }
        };
        row.as_ref().map(link_from).transpose()
    }

    /// One page of the links of `account_id`, oldest first, with the total (`active` filters).
    pub async fn links(
        &self,
        account_id: i64,
        active: Option<bool>,
        offset: i64,
        limit: i64,
    ) -> DbResult<(Vec<LinkRecord>, i64)> {
        // `active` is a filter of fixed text (never user input).
        let filter = match active {
            None => "",
            Some(true) => " AND active = 1",
            Some(false) => " AND active = 0",
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM links WHERE account_id = $1{filter} ORDER BY id LIMIT $2 OFFSET $3"
        ))
        .bind(account_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.w())
        .await?;
        let total: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM links WHERE account_id = $1{filter}"
        ))
        .bind(account_id)
        .fetch_one(&self.w())
        .await?
        .try_get("n")?;
        Ok((rows.iter().map(link_from).collect::<DbResult<_>>()?, total))
    }

    /// Applies `c` to link `id` of `account_id`; returns the link after, `None` if there is none.
    pub async fn update_link(
        &self,
        id: i64,
        account_id: i64,
        c: &LinkChanges,
        now: i64,
    ) -> DbResult<Option<LinkRecord>> {
        let Some(mut l) = self.link(id, Some(account_id)).await? else {
            return Ok(None);
        };
        if let Some(a) = c.active {
            l.active = a;
        }
        if let Some(d) = c.direct {
            l.direct = d;
        }
        if let Some(p) = &c.password_hash {
            l.password_hash = p.clone();
        }
        if let Some(e) = c.expires_ms {
            l.expires_ms = e;
        }
        let row = sqlx::query(&format!(
            "UPDATE links SET active = $3, direct = $4, password_hash = $5, expires_ms = $6, \
             modified_ms = $7 WHERE id = $1 AND account_id = $2 RETURNING {COLS}"
        ))
        .bind(id)
        .bind(account_id)
        .bind(i64::from(l.active))
        .bind(i64::from(l.direct))
        .bind(l.password_hash.as_deref())
        .bind(l.expires_ms)
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        row.as_ref().map(link_from).transpose()
    }

    /// Deletes link `id` of `account_id`; true when there was one.
    pub async fn delete_link(&self, id: i64, account_id: i64) -> DbResult<bool> {
        let r = sqlx::query("DELETE FROM links WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .execute(&self.w())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Counts a password attempt for link `id` in the window that started at most `window_ms`
    /// ago (a new window when it is older); returns the count and when the window started.
    pub async fn link_failed_attempt(
        &self,
        id: i64,
        now: i64,
        window_ms: i64,
    ) -> DbResult<(i64, i64)> {
        let r = sqlx::query(
            "UPDATE links SET \
             fail_count = CASE WHEN fail_since_ms < $3 THEN 1 ELSE fail_count + 1 END, \
             fail_since_ms = CASE WHEN fail_since_ms < $3 THEN $2 ELSE fail_since_ms END \
             WHERE id = $1 RETURNING fail_count, fail_since_ms",
        )
        .bind(id)
        .bind(now)
        .bind(now - window_ms)
        .fetch_one(&self.w())
        .await?;
        Ok((r.try_get("fail_count")?, r.try_get("fail_since_ms")?))
    }

    /// Gives back one attempt of link `id` (it was the right password).
    pub async fn link_release_attempt(&self, id: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE links SET fail_count = CASE WHEN fail_count > 0 THEN fail_count - 1 ELSE 0 END \
             WHERE id = $1",
        )
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(())
    }
}
