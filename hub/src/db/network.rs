//! Queries of the spoke network: the internal CA, join tokens and the spoke registry.

use super::{Db, DbResult};
use sqlx::any::AnyRow;
use sqlx::Row;

/// The stored CA: certificate, sealed signing key, fingerprint.
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub fingerprint: String,
}

/// Which of the network's two CAs: they never issue for each other's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRole {
    /// The network CA join strings pin: issues hub certificates only.
    Hub,
    /// Issues spoke certificates only.
    Spoke,
}

impl CaRole {
    fn table(self) -> &'static str {
        match self {
            Self::Hub => "network_ca",
            Self::Spoke => "spoke_ca",
        }
    }
}

/// A join token as stored (the secret only as a hash).
#[derive(Debug, Clone)]
pub struct JoinTokenRecord {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub region: String,
    pub name: Option<String>,
    pub expires_ms: i64,
    /// The latest use.
    pub used_ms: Option<i64>,
    /// The spoke a single-use token enrolled before migration 0008; spokes now name their
    /// token (`SpokeRecord::join_token_id`).
    pub spoke_id: Option<i64>,
    pub created_ms: i64,
    /// How many spokes the token may enroll (1 to 10,000).
    pub max_uses: i64,
    /// Uses taken so far (never above `max_uses`).
    pub uses: i64,
    pub revoked_ms: Option<i64>,
}

/// Why a join token can take no further use, when it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSpent {
    Revoked,
    Expired,
    Exhausted,
}

impl JoinTokenRecord {
    /// Why this token takes no further use at `now`, if it takes none. Revocation is named
    /// first: it is the operator's latest word on the token.
    pub fn spent(&self, now: i64) -> Option<TokenSpent> {
        if self.revoked_ms.is_some() {
            Some(TokenSpent::Revoked)
        } else if self.expires_ms <= now {
            Some(TokenSpent::Expired)
        } else if self.uses >= self.max_uses || (self.max_uses == 1 && self.used_ms.is_some()) {
            Some(TokenSpent::Exhausted)
        } else {
            None
        }
    }
}

/// An enrolled spoke.
#[derive(Debug, Clone)]
pub struct SpokeRecord {
    pub id: i64,
    pub name: String,
    pub region: String,
    pub cert_fingerprint: String,
    pub advertise: Option<String>,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// The join token it enrolled with (unknown for spokes enrolled before migration 0008
    /// whose token row is gone).
    pub join_token_id: Option<String>,
    /// When its certificate expires (ms since the epoch): recorded at issue and from the
    /// certificate it connects with; unknown for a spoke enrolled before migration 0019 that
    /// has not connected since.
    pub cert_not_after_ms: Option<i64>,
}

const TOKEN_COLS: &str =
    "id, secret_hash, region, name, expires_ms, used_ms, spoke_id, created_ms, \
                          max_uses, uses, revoked_ms";
const SPOKE_COLS: &str = "id, name, region, cert_fingerprint, advertise, enrolled_ms, revoked_ms, \
                          last_seen_ms, join_token_id, cert_not_after_ms";

fn token_from(r: &AnyRow) -> DbResult<JoinTokenRecord> {
    Ok(JoinTokenRecord {
        id: r.try_get("id")?,
        secret_hash: r.try_get("secret_hash")?,
        region: r.try_get("region")?,
        name: r.try_get("name")?,
        expires_ms: r.try_get("expires_ms")?,
        used_ms: r.try_get("used_ms")?,
        spoke_id: r.try_get("spoke_id")?,
        created_ms: r.try_get("created_ms")?,
        max_uses: r.try_get("max_uses")?,
        uses: r.try_get("uses")?,
        revoked_ms: r.try_get("revoked_ms")?,
    })
}

fn spoke_from(r: &AnyRow) -> DbResult<SpokeRecord> {
    Ok(SpokeRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        region: r.try_get("region")?,
        cert_fingerprint: r.try_get("cert_fingerprint")?,
        advertise: r.try_get("advertise")?,
        enrolled_ms: r.try_get("enrolled_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        join_token_id: r.try_get("join_token_id")?,
        cert_not_after_ms: r.try_get("cert_not_after_ms")?,
    })
}

impl Db {
    /// The CA of `role`, if one was created.
    pub async fn get_ca(&self, role: CaRole) -> DbResult<Option<CaRecord>> {
        let row = sqlx::query(&format!(
            "SELECT cert_pem, key_sealed, fingerprint FROM {} WHERE id = 1",
            role.table()
        ))
        .fetch_optional(&self.w())
        .await?;
        row.map(|r| {
            Ok(CaRecord {
                cert_pem: r.try_get("cert_pem")?,
                key_sealed: r.try_get("key_sealed")?,
                fingerprint: r.try_get("fingerprint")?,
            })
        })
        .transpose()
    }

    /// Stores `ca` as the CA of `role` unless another hub stored one first; returns the CA
    /// that won.
    pub async fn insert_ca_if_absent(
        &self,
        role: CaRole,
        ca: &CaRecord,
        now: i64,
    ) -> DbResult<CaRecord> {
        sqlx::query(&format!(
            "INSERT INTO {} (id, cert_pem, key_sealed, fingerprint, created_ms) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            role.table()
        ))
        .bind(&ca.cert_pem)
        .bind(&ca.key_sealed)
        .bind(&ca.fingerprint)
        .bind(now)
        .execute(&self.w())
        .await?;
        self.get_ca(role)
            .await?
            .ok_or_else(|| sqlx::Error::RowNotFound)
    }

    /// Certificate fingerprints of every revoked spoke (what hubs push to spokes).
    pub async fn revoked_fingerprints(&self) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT cert_fingerprint FROM spokes WHERE revoked_ms IS NOT NULL \
             AND cert_fingerprint NOT LIKE 'pending:%' ORDER BY id",
        )
        .fetch_all(&self.w())
        .await?;
        rows.iter().map(|r| r.try_get("cert_fingerprint")).collect()
    }

    pub async fn create_join_token(&self, t: &JoinTokenRecord) -> DbResult<()> {
        let r = sqlx::query(&format!(
            "INSERT INTO join_tokens ({TOKEN_COLS}) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7, 0, NULL) RETURNING {}",
            self.xid_col()
        ))
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.region)
        .bind(&t.name)
        .bind(t.expires_ms)
        .bind(t.created_ms)
        .bind(t.max_uses)
        .fetch_one(&self.w())
        .await?;
        self.wrote(Some(&r)).await;
        Ok(())
    }

    pub async fn get_join_token(&self, id: &str) -> DbResult<Option<JoinTokenRecord>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM join_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.w())
        .await?
        .as_ref()
        .map(token_from)
        .transpose()
    }

    /// Every join token, oldest first (what `hub spokes token list` shows).
    pub async fn list_join_tokens(&self) -> DbResult<Vec<JoinTokenRecord>> {
        let rows = read!(self, pool => sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM join_tokens ORDER BY created_ms, id"
        ))
        .fetch_all(pool)
        .await)?;
        rows.iter().map(token_from).collect()
    }

    /// Takes one use of a token if it has one left, is unexpired and not revoked; returns
    /// the use's number (1 for the first). The check and the count are one conditional
    /// UPDATE on the primary, so of any number of concurrent enrollments, across hubs, at
    /// most `max_uses` win. A single-use token also needs `used_ms` unset: a hub older than
    /// migration 0008 still running during an upgrade marks its uses there only.
    pub async fn take_join_token_use(&self, id: &str, now: i64) -> DbResult<Option<i64>> {
        let r = sqlx::query(
            "UPDATE join_tokens SET uses = uses + 1, used_ms = $1 \
             WHERE id = $2 AND uses < max_uses AND expires_ms > $1 AND revoked_ms IS NULL \
             AND (max_uses > 1 OR used_ms IS NULL) RETURNING uses",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        r.map(|r| r.try_get("uses")).transpose()
    }

    /// Gives back a use taken by an enrollment that then failed before any certificate left
    /// the hub (see `network::enroll`). A token back at no use loses its `used_ms` too, which
    /// the single-use condition of [`Db::take_join_token_use`] also reads.
    pub async fn return_join_token_use(&self, id: &str) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE join_tokens SET uses = uses - 1, \
             used_ms = CASE WHEN uses = 1 THEN NULL ELSE used_ms END WHERE id = $1 AND uses > 0",
        )
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes a token (idempotent: a revoked token keeps its first revocation time).
    /// `None` when no such token exists, else whether this call revoked it.
    pub async fn revoke_join_token(&self, id: &str, now: i64) -> DbResult<Option<bool>> {
        let r = sqlx::query(&format!(
            "UPDATE join_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL \
             RETURNING {}",
            self.xid_col()
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        if r.is_some() {
            self.wrote(r.as_ref()).await;
            return Ok(Some(true));
        }
        Ok(self.get_join_token(id).await?.map(|_| false))
    }

    /// Inserts a spoke enrolled with token `join_token_id`, with a placeholder fingerprint
    /// (its certificate needs the id first). `Ok(None)` when an unrevoked spoke already has
    /// that name (names are unique among unrevoked spokes).
    pub async fn create_spoke(
        &self,
        name: &str,
        region: &str,
        placeholder_fingerprint: &str,
        advertise: Option<&str>,
        join_token_id: &str,
        now: i64,
    ) -> DbResult<Option<i64>> {
        let r = sqlx::query(
            "INSERT INTO spokes (name, region, cert_fingerprint, advertise, enrolled_ms, \
             join_token_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(region)
        .bind(placeholder_fingerprint)
        .bind(advertise)
        .bind(now)
        .bind(join_token_id)
        .fetch_one(&self.w())
        .await;
        match r {
            Ok(r) => Ok(Some(r.try_get("id")?)),
            Err(sqlx::Error::Database(d))
                if d.is_unique_violation()
                    && (d.constraint() == Some("spokes_live_name")
                        || d.message().contains("spokes.name")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a spoke whose enrollment failed before its certificate left the hub (its
    /// fingerprint is still the placeholder, so nothing can be known by it).
    pub async fn delete_pending_spoke(&self, id: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM spokes WHERE id = $1 AND cert_fingerprint LIKE 'pending:%'")
            .bind(id)
            .execute(&self.w())
            .await?;
        Ok(())
    }

    /// Records the certificate issued to spoke `id`: its fingerprint (what the spoke is known
    /// by from now on) and its not-after (`None` when it could not be read).
    pub async fn set_spoke_certificate(
        &self,
        id: i64,
        fingerprint: &str,
        not_after_ms: Option<i64>,
    ) -> DbResult<()> {
        sqlx::query(
            "UPDATE spokes SET cert_fingerprint = $1, cert_not_after_ms = $2 WHERE id = $3",
        )
        .bind(fingerprint)
        .bind(not_after_ms)
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Records the not-after of the certificate spoke `id` connected with, when it differs
    /// from the one recorded (a spoke enrolled before migration 0019 has none).
    pub async fn set_spoke_cert_not_after(&self, id: i64, not_after_ms: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE spokes SET cert_not_after_ms = $1 WHERE id = $2 \
             AND (cert_not_after_ms IS NULL OR cert_not_after_ms <> $1)",
        )
        .bind(not_after_ms)
        .bind(id)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    pub async fn spoke_by_fingerprint(&self, fingerprint: &str) -> DbResult<Option<SpokeRecord>> {
        sqlx::query(&format!(
            "SELECT {SPOKE_COLS} FROM spokes WHERE cert_fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.w())
        .await?
        .as_ref()
        .map(spoke_from)
        .transpose()
    }

    pub async fn get_spoke(&self, id: i64) -> DbResult<Option<SpokeRecord>> {
        read!(self, pool => sqlx::query(&format!("SELECT {SPOKE_COLS} FROM spokes WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await)?
        .as_ref()
        .map(spoke_from)
        .transpose()
    }

    pub async fn list_spokes(&self) -> DbResult<Vec<SpokeRecord>> {
        let rows = read!(self, pool => sqlx::query(&format!("SELECT {SPOKE_COLS} FROM spokes ORDER BY id"))
            .fetch_all(pool)
            .await)?;
        rows.iter().map(spoke_from).collect()
    }

    /// Revokes a spoke; false when it does not exist or was already revoked.
    pub async fn revoke_spoke(&self, id: i64, now: i64) -> DbResult<bool> {
        let r = sqlx::query(&format!(
            "UPDATE spokes SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL RETURNING {}",
            self.xid_col()
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.w())
        .await?;
        self.wrote(r.as_ref()).await;
        Ok(r.is_some())
    }

    pub async fn touch_spoke(&self, id: i64, now: i64) -> DbResult<()> {
        sqlx::query("UPDATE spokes SET last_seen_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.w())
            .await?;
        Ok(())
    }
}

/// A hub as announced in the database.
#[derive(Debug, Clone)]
pub struct HubRecord {
    pub quic: String,
    pub region: String,
    pub api: String,
    pub seen_ms: i64,
    /// What the hub runs, as it last announced (`None`: a hub older than migration 0019).
    pub version: Option<String>,
    /// How it uses the database (see [`Db::role`]).
    pub db_role: Option<String>,
    /// Its replica's lag as it last measured it (`None`: no replica, or not measured yet).
    pub replica_lag_ms: Option<i64>,
}

/// What a hub announces of itself besides its addresses (the operator console shows it).
#[derive(Debug, Clone, Default)]
pub struct HubAnnouncement {
    pub version: String,
    pub db_role: String,
    pub replica_lag_ms: Option<i64>,
}

impl Db {
    /// Announces (or refreshes) a hub.
    pub async fn upsert_hub(
        &self,
        quic: &str,
        region: &str,
        api: &str,
        about: &HubAnnouncement,
        now: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO hubs (quic, region, api, seen_ms, version, db_role, replica_lag_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (quic) DO UPDATE SET region = excluded.region, api = excluded.api, \
             seen_ms = excluded.seen_ms, version = excluded.version, \
             db_role = excluded.db_role, replica_lag_ms = excluded.replica_lag_ms",
        )
        .bind(quic)
        .bind(region)
        .bind(api)
        .bind(now)
        .bind(&about.version)
        .bind(&about.db_role)
        .bind(about.replica_lag_ms)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Hubs seen since `since_ms`, newest first.
    pub async fn list_hubs(&self, since_ms: i64) -> DbResult<Vec<HubRecord>> {
        let rows = sqlx::query(
            "SELECT quic, region, api, seen_ms, version, db_role, replica_lag_ms FROM hubs \
             WHERE seen_ms >= $1 ORDER BY seen_ms DESC",
        )
        .bind(since_ms)
        .fetch_all(&self.w())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HubRecord {
                    quic: r.try_get("quic")?,
                    region: r.try_get("region")?,
                    api: r.try_get("api")?,
                    seen_ms: r.try_get("seen_ms")?,
                    version: r.try_get("version")?,
                    db_role: r.try_get("db_role")?,
                    replica_lag_ms: r.try_get("replica_lag_ms")?,
                })
            })
            .collect()
    }
}
