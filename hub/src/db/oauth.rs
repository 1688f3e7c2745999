//! Queries of OAuth 2.0 for applications: the application's OAuth settings, authorization codes
//! (only their SHA-256 kept; taken once by one conditional UPDATE), and the tokens they become.

use super::{app_from, Application, Db, DbResult, APP_COLS};
use crate::model::OAuthChanges;
use sqlx::Row;

/// An authorization code as stored.
#[derive(Debug, Clone)]
pub struct OAuthCode {
    pub id: i64,
    pub app_id: i64,
    pub account_id: i64,
    pub redirect_uri: String,
    pub scope: String,
    /// The PKCE challenge (`S256`), when the app sent one.
    pub code_challenge: Option<String>,
    pub expires_ms: i64,
}

/// What taking a code found.
#[derive(Debug)]
pub enum Taken {
    /// The code, now used.
    Fresh(OAuthCode),
    /// Used before: the token it was exchanged for (to revoke), if any.
    Reused(Option<i64>),
    /// No such code (or its account is gone).
    Unknown,
}

/// The fields of a new code.
#[derive(Debug)]
pub struct NewCode<'a> {
    pub hash: &'a [u8],
    pub app_id: i64,
    pub account_id: i64,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub code_challenge: Option<&'a str>,
    pub expires_ms: i64,
}

/// What `GET /v1/oauth/token` says about a bearer token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub account_id: i64,
    pub app_id: i64,
    pub scope: String,
    pub created_ms: i64,
}

impl Db {
    /// Sets the OAuth settings `c` names (the others stay); the application after, or `None`
    /// when `c` changes nothing (or the application is gone).
    pub async fn set_app_oauth(
        &self,
        id: i64,
        c: &OAuthChanges,
        now: i64,
    ) -> DbResult<Option<Application>> {
        if c.redirect_uris.is_none()
            && c.trusted_domains.is_none()
            && c.implicit_grant_enabled.is_none()
        {
            return Ok(None);
        }
        let json = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|l| serde_json::to_string(l).unwrap_or_else(|_| "[]".into()))
        };
        let r = sqlx::query(&format!(
            "UPDATE applications SET redirect_uris = COALESCE($1, redirect_uris), \
             trusted_domains = COALESCE($2, trusted_domains), \
             implicit_grant_enabled = COALESCE($3, implicit_grant_enabled), modified_ms = $4 \
             WHERE id = $5 RETURNING {APP_COLS}, {}",
            self.xid_col()
        ))
        .bind(json(&c.redirect_uris))
        .bind(json(&c.trusted_domains))
        .bind(c.implicit_grant_enabled.map(i64::from))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        r.as_ref().map(app_from).transpose()
    }

    /// Every origin some active application trusts (CORS).
    pub async fn trusted_origins(&self) -> DbResult<Vec<String>> {
        let rows = read!(self, pool => sqlx::query(
            "SELECT trusted_domains FROM applications WHERE active = 1 AND trusted_domains <> '[]'"
        )
        .fetch_all(pool)
        .await)?;
        let mut all = Vec::new();
        for r in rows {
            let text: String = r.try_get("trusted_domains")?;
            if let Ok(list) = serde_json::from_str::<Vec<String>>(&text) {
                all.extend(list);
            }
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Stores a new authorization code.
    pub async fn create_code(&self, c: &NewCode<'_>, now: i64) -> DbResult<()> {
        let r = sqlx::query(&format!(
            "INSERT INTO oauth_codes (code_hash, app_id, account_id, redirect_uri, scope, \
             code_challenge, expires_ms, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING {}",
            self.xid_col()
        ))
        .bind(c.hash.to_vec())
        .bind(c.app_id)
        .bind(c.account_id)
        .bind(c.redirect_uri)
        .bind(c.scope)
        .bind(c.code_challenge)
        .bind(c.expires_ms)
        .bind(now)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        Ok(())
    }

    /// Takes the code with this hash: the first taker gets it (one conditional UPDATE), every
    /// later one learns it was used. Expiry is the caller's to check (an expired code is
    /// taken too, so it can never be tried again).
    pub async fn take_code(&self, hash: &[u8], now: i64) -> DbResult<Taken> {
        let r = sqlx::query(
            "UPDATE oauth_codes SET used_ms = $2 WHERE code_hash = $1 AND used_ms IS NULL \
             RETURNING id, app_id, account_id, redirect_uri, scope, code_challenge, expires_ms",
        )
        .bind(hash.to_vec())
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        if let Some(r) = r {
            return Ok(Taken::Fresh(OAuthCode {
                id: r.try_get("id")?,
                app_id: r.try_get("app_id")?,
                account_id: r.try_get("account_id")?,
                redirect_uri: r.try_get("redirect_uri")?,
                scope: r.try_get("scope")?,
                code_challenge: r.try_get("code_challenge")?,
                expires_ms: r.try_get("expires_ms")?,
            }));
        }
        // Marked reused in the same statement that reads its token: an exchange still under
        // way then finds the mark and gives nothing (see `set_code_token`).
        let used = sqlx::query(
            "UPDATE oauth_codes SET reused_ms = COALESCE(reused_ms, $2) WHERE code_hash = $1 \
             RETURNING token_id",
        )
        .bind(hash.to_vec())
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        Ok(match used {
            Some(r) => Taken::Reused(r.try_get("token_id")?),
            None => Taken::Unknown,
        })
    }

    /// Records the token a code was exchanged for, unless the code was presented again
    /// meanwhile (false: the token must not be given). Either this runs first and the second
    /// presenter finds the token to revoke, or the second presenter's mark is here first.
    pub async fn set_code_token(&self, code_id: i64, token_id: i64) -> DbResult<bool> {
        let r =
            sqlx::query("UPDATE oauth_codes SET token_id = $2 WHERE id = $1 AND reused_ms IS NULL")
                .bind(code_id)
                .bind(token_id)
                .execute(&self.w())
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a bearer token (a code presented twice revokes what it gave).
    pub async fn delete_token(&self, token_id: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM account_tokens WHERE id = $1")
            .bind(token_id)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Deletes codes expired before `before` (they are useless; used ones keep their token id
    /// until then, for the reuse check), and short-lived tokens past their time.
    pub async fn sweep_codes(&self, before: i64) -> DbResult<u64> {
        let r = sqlx::query("DELETE FROM oauth_codes WHERE expires_ms < $1")
            .bind(before)
            .execute(&self.w())
            .await?;
        // Short-lived tokens (the portal's explorer) past their time.
        sqlx::query("DELETE FROM account_tokens WHERE expires_ms IS NOT NULL AND expires_ms < $1")
            .bind(before)
            .execute(&self.w())
            .await?;
        Ok(r.rows_affected())
    }

    /// Moves the expiry of application `app_id`'s codes to `expires_ms` (tests of expiry).
    pub async fn backdate_codes(&self, app_id: i64, expires_ms: i64) -> DbResult<()> {
        sqlx::query("UPDATE oauth_codes SET expires_ms = $2 WHERE app_id = $1")
            .bind(app_id)
            .bind(expires_ms)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// What a bearer token (by hash) was granted, if it is live.
    pub async fn token_info(&self, hash: &[u8]) -> DbResult<Option<TokenInfo>> {
        let r = read!(self, pool => sqlx::query(
            "SELECT c.id AS account_id, c.app_id AS app_id, t.scope AS scope, \
             t.created_ms AS created_ms FROM account_tokens t \
             JOIN accounts c ON c.id = t.account_id JOIN applications a ON a.id = c.app_id \
             WHERE t.token_hash = $1 AND c.active = 1 AND a.active = 1 \
             AND (t.expires_ms IS NULL OR t.expires_ms > $2)",
        )
        .bind(hash.to_vec())
        .bind(crate::state::now_ms())
        .fetch_optional(pool)
        .await)?;
        r.map(|r| {
            Ok(TokenInfo {
                account_id: r.try_get("account_id")?,
                app_id: r.try_get("app_id")?,
                scope: r.try_get("scope")?,
                created_ms: r.try_get("created_ms")?,
            })
        })
        .transpose()
    }
}
