//! Queries of webhooks and their transactional outbox (`webhooks`, `webhook_pending`,
//! `webhook_attempts`; see migration `0010_webhooks.sql`): the Meta API's rows, the upsert the
//! event insert makes, handing due rows to the work queue, claiming one for delivery and
//! settling it, and the attempt log.

use super::{Db, DbResult};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// A webhook as the Meta API shows it (its secret stays sealed here).
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: i64,
    pub app_id: i64,
    pub url: String,
    pub created_ms: i64,
    pub disabled_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub failing_since_ms: Option<i64>,
}

/// What a delivery needs about its webhook: where, and the sealed keys to sign with.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub hook: WebhookRecord,
    pub secret_sealed: Vec<u8>,
    /// The application's oldest API key that has a sealed copy (keys made before migration
    /// 0010 have none): `None` when the application has no such key.
    pub key_sealed: Option<Vec<u8>>,
}

/// A pending notification this hub claimed for delivery.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    pub webhook_id: i64,
    pub account_id: i64,
    pub first_seq: i64,
    pub seq: i64,
    pub attempts: i64,
    /// When the notification was opened (the first event it covers was recorded).
    pub created_ms: i64,
}

/// One delivery attempt, as `…/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone)]
pub struct WebhookAttempt {
    pub id: i64,
    pub webhook_id: i64,
    pub account_id: i64,
    pub msg_id: String,
    pub attempt: i64,
    pub at_ms: i64,
    pub status: Option<i64>,
    pub latency_ms: i64,
    pub ok: bool,
    pub error: Option<String>,
}

const HOOK_COLS: &str =
    "id, app_id, url, created_ms, disabled_ms, disabled_reason, failing_since_ms";

fn hook_from(r: &AnyRow) -> DbResult<WebhookRecord> {
    Ok(WebhookRecord {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        url: r.try_get("url")?,
        created_ms: r.try_get("created_ms")?,
        disabled_ms: r.try_get("disabled_ms")?,
        disabled_reason: r.try_get("disabled_reason")?,
        failing_since_ms: r.try_get("failing_since_ms")?,
    })
}

fn attempt_from(r: &AnyRow) -> DbResult<WebhookAttempt> {
    Ok(WebhookAttempt {
        id: r.try_get("id")?,
        webhook_id: r.try_get("webhook_id")?,
        account_id: r.try_get("account_id")?,
        msg_id: r.try_get("msg_id")?,
        attempt: r.try_get("attempt")?,
        at_ms: r.try_get("at_ms")?,
        status: r.try_get("status")?,
        latency_ms: r.try_get("latency_ms")?,
        ok: r.try_get::<i64, _>("ok")? != 0,
        error: r.try_get("error")?,
    })
}

/// How a claimed delivery ended.
#[derive(Debug, Clone)]
pub enum Settle {
    /// The receiver took it.
    Delivered,
    /// It failed; try again at `next_ms`, or give the webhook up (`disable` carries why).
    Failed {
        error: String,
        next_ms: i64,
        disable: Option<String>,
    },
}

impl Db {
    /// Inside the event insert's transaction: opens (or extends, coalescing) the pending
    /// notification of every enabled webhook of the account's application. Returns how many
    /// rows it touched.
    pub(crate) async fn outbox_upsert(
        &self,
        conn: &mut AnyConnection,
        account_id: i64,
        seq: i64,
        now: i64,
    ) -> DbResult<u64> {
        let r = sqlx::query(
            "INSERT INTO webhook_pending (webhook_id, account_id, first_seq, seq, created_ms, \
             next_ms, attempts) \
             SELECT w.id, c.id, $2, $2, $3, $4, 0 FROM webhooks w \
             JOIN accounts c ON c.app_id = w.app_id \
             WHERE c.id = $1 AND w.disabled_ms IS NULL \
             ON CONFLICT (webhook_id, account_id) DO UPDATE SET seq = excluded.seq",
        )
        .bind(account_id)
        .bind(seq)
        .bind(now)
        .bind(
            now + self
                .outbox_delay_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .execute(&mut *conn)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn create_webhook(
        &self,
        app_id: i64,
        url: &str,
        secret_sealed: &[u8],
        now: i64,
    ) -> DbResult<WebhookRecord> {
        let r = sqlx::query(&format!(
            "INSERT INTO webhooks (app_id, url, secret_sealed, created_ms) VALUES ($1, $2, $3, $4) \
             RETURNING {HOOK_COLS}, {}",
            self.xid_col()
        ))
        .bind(app_id)
        .bind(url)
        .bind(secret_sealed.to_vec())
        .bind(now)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        hook_from(&r)
    }

    /// An application's webhooks, oldest first. Replica-eligible.
    pub async fn list_webhooks(&self, app_id: i64) -> DbResult<Vec<WebhookRecord>> {
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {HOOK_COLS} FROM webhooks WHERE app_id = $1 ORDER BY id"
        ))
        .bind(app_id)
        .fetch_all(pool)
        .await)?;
        rows.iter().map(hook_from).collect()
    }

    /// One webhook of `app_id`. Replica-eligible.
    pub async fn get_webhook(&self, app_id: i64, id: i64) -> DbResult<Option<WebhookRecord>> {
        let r = read!(self, pool => sqlx::query(&format!(
            "SELECT {HOOK_COLS} FROM webhooks WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        r.as_ref().map(hook_from).transpose()
    }

    /// Deletes a webhook with its pending notifications and attempt log.
    pub async fn delete_webhook(&self, app_id: i64, id: i64) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "DELETE FROM webhooks WHERE app_id = $1 AND id = $2 RETURNING id, {}",
            self.xid_col()
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    /// What delivering to webhook `id` needs, read from the primary (background work).
    pub async fn delivery_target(&self, id: i64) -> DbResult<Option<DeliveryTarget>> {
        let r = sqlx::query(&format!(
            "SELECT {HOOK_COLS}, secret_sealed, \
             (SELECT k.key_sealed FROM api_keys k WHERE k.app_id = webhooks.app_id \
              AND k.key_sealed IS NOT NULL ORDER BY k.id LIMIT 1) AS key_sealed \
             FROM webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        r.map(|r| {
            Ok(DeliveryTarget {
                hook: hook_from(&r)?,
                secret_sealed: r.try_get("secret_sealed")?,
                key_sealed: r.try_get("key_sealed")?,
            })
        })
        .transpose()
    }

    /// The sealed copy of the API key `app_id`'s webhooks are signed with: its oldest key that
    /// has one (a rotation adds the new key, updates receivers, then deletes the old).
    pub async fn delivery_key(&self, app_id: i64) -> DbResult<Option<Vec<u8>>> {
        let r = sqlx::query(
            "SELECT key_sealed FROM api_keys WHERE app_id = $1 AND key_sealed IS NOT NULL \
             ORDER BY id LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&self.w())
        .await?;
        Ok(match r {
            Some(r) => r.try_get("key_sealed")?,
            None => None,
        })
    }

    /// Marks up to `limit` due, unclaimed rows as handed to the queue now and returns them:
    /// rows never handed, and rows handed more than `requeue_ms` ago that are still pending
    /// (their work was lost: a Redis restart, a crashed hub). The outer condition is checked
    /// again on the locked row, so two hubs running this at once hand each row once.
    pub async fn outbox_due(
        &self,
        now: i64,
        requeue_ms: i64,
        limit: i64,
    ) -> DbResult<Vec<(i64, i64)>> {
        let stale = now - requeue_ms;
        let rows = sqlx::query(
            "UPDATE webhook_pending SET enqueued_ms = $1 \
             WHERE (enqueued_ms IS NULL OR enqueued_ms < $2) AND next_ms <= $1 \
             AND (claimed_until_ms IS NULL OR claimed_until_ms < $1) \
             AND (webhook_id, account_id) IN (SELECT webhook_id, account_id FROM webhook_pending \
               WHERE next_ms <= $1 AND (enqueued_ms IS NULL OR enqueued_ms < $2) \
               AND (claimed_until_ms IS NULL OR claimed_until_ms < $1) \
               ORDER BY next_ms LIMIT $3) \
             RETURNING webhook_id, account_id",
        )
        .bind(now)
        .bind(stale)
        .bind(limit)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("webhook_id")?, r.try_get("account_id")?)))
            .collect()
    }

    /// The earliest `next_ms` of a row waiting to be handed (a new notification's coalescing
    /// window, a retry), so the reconciler can sleep until then. Rows handed or claimed are
    /// found again by the reconciler's periodic pass.
    pub async fn outbox_next_due(&self) -> DbResult<Option<i64>> {
        let r = sqlx::query(
            "SELECT MIN(next_ms) AS next FROM webhook_pending \
             WHERE enqueued_ms IS NULL AND claimed_until_ms IS NULL",
        )
        .fetch_one(&self.w())
        .await?;
        r.try_get("next")
    }

    /// Claims the pending notification of (webhook, account) for `lease_ms` if it is due and
    /// nobody holds it: of two hubs handed the same work, one delivers.
    pub async fn claim_delivery(
        &self,
        webhook_id: i64,
        account_id: i64,
        now: i64,
        lease_ms: i64,
    ) -> DbResult<Option<Claimed>> {
        let r = sqlx::query(
            "UPDATE webhook_pending SET claimed_until_ms = $3 \
             WHERE webhook_id = $1 AND account_id = $2 AND next_ms <= $4 \
             AND (claimed_until_ms IS NULL OR claimed_until_ms < $4) \
             RETURNING first_seq, seq, attempts, created_ms",
        )
        .bind(webhook_id)
        .bind(account_id)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        r.map(|r| {
            Ok(Claimed {
                webhook_id,
                account_id,
                first_seq: r.try_get("first_seq")?,
                seq: r.try_get("seq")?,
                attempts: r.try_get("attempts")?,
                created_ms: r.try_get("created_ms")?,
            })
        })
        .transpose()
    }

    /// Drops a claimed row without an attempt (its webhook is disabled or gone).
    pub async fn drop_pending(&self, webhook_id: i64, account_id: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM webhook_pending WHERE webhook_id = $1 AND account_id = $2")
            .bind(webhook_id)
            .bind(account_id)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Records the attempt and settles the claimed row in one transaction. Returns true when
    /// the row is due again right away (events came in while it was being delivered: a new
    /// notification, which the caller hands to the queue).
    #[allow(clippy::too_many_arguments)]
    pub async fn settle_delivery(
        &self,
        c: &Claimed,
        msg_id: &str,
        status: Option<u16>,
        latency_ms: i64,
        outcome: &Settle,
        now: i64,
    ) -> DbResult<bool> {
        let mut tx = self.w().begin().await?;
        let (ok, error) = match outcome {
            Settle::Delivered => (1i64, None),
            Settle::Failed { error, .. } => (0, Some(error.as_str())),
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (webhook_id, account_id, msg_id, attempt, at_ms, \
             status, latency_ms, ok, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(c.webhook_id)
        .bind(c.account_id)
        .bind(msg_id)
        .bind(c.attempts + 1)
        .bind(now)
        .bind(status.map(i64::from))
        .bind(latency_ms)
        .bind(ok)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let mut again = false;
        match outcome {
            Settle::Delivered => {
                let gone = sqlx::query(
                    "DELETE FROM webhook_pending \
                     WHERE webhook_id = $1 AND account_id = $2 AND seq = $3",
                )
                .bind(c.webhook_id)
                .bind(c.account_id)
                .bind(c.seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if gone == 0 {
                    // Newer events arrived during the delivery: the receiver may have read the
                    // feed before they committed, so they get a notification of their own.
                    sqlx::query(
                        "UPDATE webhook_pending SET first_seq = seq, attempts = 0, \
                         created_ms = $3, next_ms = $3, enqueued_ms = $3, \
                         claimed_until_ms = NULL, last_error = NULL \
                         WHERE webhook_id = $1 AND account_id = $2",
                    )
                    .bind(c.webhook_id)
                    .bind(c.account_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    again = true;
                }
                sqlx::query(
                    "UPDATE webhooks SET failing_since_ms = NULL \
                     WHERE id = $1 AND failing_since_ms IS NOT NULL",
                )
                .bind(c.webhook_id)
                .execute(&mut *tx)
                .await?;
            }
            Settle::Failed {
                error,
                next_ms,
                disable,
            } => {
                sqlx::query(
                    "UPDATE webhooks SET failing_since_ms = $2 \
                     WHERE id = $1 AND failing_since_ms IS NULL",
                )
                .bind(c.webhook_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if let Some(reason) = disable {
                    sqlx::query(
                        "UPDATE webhooks SET disabled_ms = $2, disabled_reason = $3 \
                         WHERE id = $1 AND disabled_ms IS NULL",
                    )
                    .bind(c.webhook_id)
                    .bind(now)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM webhook_pending WHERE webhook_id = $1")
                        .bind(c.webhook_id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(
                        "UPDATE webhook_pending SET attempts = attempts + 1, next_ms = $3, \
                         enqueued_ms = NULL, claimed_until_ms = NULL, last_error = $4 \
                         WHERE webhook_id = $1 AND account_id = $2",
                    )
                    .bind(c.webhook_id)
                    .bind(c.account_id)
                    .bind(next_ms)
                    .bind(error)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(again)
    }

    /// When webhook `id` started failing without a success since (`None`: it is not failing).
    pub async fn webhook_failing_since(&self, id: i64) -> DbResult<Option<i64>> {
        let r = sqlx::query("SELECT failing_since_ms FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.w())
            .await?;
        Ok(match r {
            Some(r) => r.try_get("failing_since_ms")?,
            None => None,
        })
    }

    /// Opens a notification of (webhook, account) due now (a manual retry). False when the
    /// webhook is disabled or the account is gone.
    pub async fn rearm_delivery(
        &self,
        webhook_id: i64,
        account_id: i64,
        now: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "INSERT INTO webhook_pending (webhook_id, account_id, first_seq, seq, created_ms, \
             next_ms, attempts) \
             SELECT w.id, c.id, COALESCE(s.last_seq, 0), COALESCE(s.last_seq, 0), $3, $3, 0 \
             FROM webhooks w JOIN accounts c ON c.app_id = w.app_id \
             LEFT JOIN event_streams s ON s.account_id = c.id \
             WHERE w.id = $1 AND c.id = $2 AND w.disabled_ms IS NULL \
             ON CONFLICT (webhook_id, account_id) DO UPDATE SET next_ms = $3, \
             enqueued_ms = NULL, attempts = 0 \
             RETURNING webhook_id, {}",
            self.xid_col()
        ))
        .bind(webhook_id)
        .bind(account_id)
        .bind(now)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    /// A page of webhook `id`'s attempts, newest first, and how many there are.
    /// Replica-eligible.
    pub async fn list_webhook_attempts(
        &self,
        id: i64,
        offset: i64,
        limit: i64,
    ) -> DbResult<(Vec<WebhookAttempt>, i64)> {
        let rows = read!(self, pool => sqlx::query(
            "SELECT id, webhook_id, account_id, msg_id, attempt, at_ms, status, latency_ms, ok, \
             error FROM webhook_attempts WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(id)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
        let total = read!(self, pool => sqlx::query(
            "SELECT COUNT(*) AS n FROM webhook_attempts WHERE webhook_id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await)?;
        Ok((
            rows.iter().map(attempt_from).collect::<DbResult<_>>()?,
            total.try_get("n")?,
        ))
    }

    /// One attempt of webhook `id`. Replica-eligible.
    pub async fn get_webhook_attempt(
        &self,
        webhook_id: i64,
        id: i64,
    ) -> DbResult<Option<WebhookAttempt>> {
        let r = read!(self, pool => sqlx::query(
            "SELECT id, webhook_id, account_id, msg_id, attempt, at_ms, status, latency_ms, ok, \
             error FROM webhook_attempts WHERE webhook_id = $1 AND id = $2",
        )
        .bind(webhook_id)
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        r.as_ref().map(attempt_from).transpose()
    }

    /// Deletes attempts recorded before `before_ms`; returns how many.
    pub async fn sweep_webhook_attempts(&self, before_ms: i64) -> DbResult<u64> {
        Ok(sqlx::query("DELETE FROM webhook_attempts WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.w())
            .await?
            .rows_affected())
    }

    /// Whether the region's replica shows the account's event `seq` (true when there is no
    /// usable replica: readers then read the primary). Webhooks wait for this, so a receiver
    /// that reads the feed through this region's hubs finds the event it was told about.
    pub async fn replica_shows_event(&self, account_id: i64, seq: i64) -> bool {
        let Some(t) = self.topology() else {
            return true;
        };
        let Some(rep) = &t.replica else {
            return true;
        };
        if !t.replica_usable() {
            return true;
        }
        match sqlx::query("SELECT last_seq FROM event_streams WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&rep.pool)
            .await
        {
            Ok(Some(r)) => r.try_get::<i64, _>("last_seq").is_ok_and(|s| s >= seq),
            Ok(None) => false,
            Err(_) => true,
        }
    }
}
