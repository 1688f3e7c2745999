//! Queries of the steering DNS: the hub directory, client-network RTTs and hub health, all
//! shared between hubs through the database.

use super::{Db, DbResult};
use sqlx::Row;

/// A hub as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringHubRecord {
    pub api: String,
    pub region: String,
    /// The addresses answered for it (parsed by the caller).
    pub addresses: Vec<String>,
    pub seen_ms: i64,
}

/// One measured RTT: from `region`'s hub to the client network `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RttRecord {
    pub prefix: String,
    pub region: String,
    pub rtt_us: i64,
    pub samples: i64,
    pub updated_ms: i64,
}

/// What one hub saw of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    pub observer: String,
    pub target: String,
    pub healthy: bool,
    pub failures: i64,
    pub updated_ms: i64,
}

impl Db {
    /// Registers (or refreshes) a hub in the steering directory.
    pub async fn upsert_steering_hub(
        &self,
        api: &str,
        region: &str,
        addresses: &[String],
        now: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO steering_hubs (api, region, addresses, seen_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (api) DO UPDATE SET region = excluded.region, \
             addresses = excluded.addresses, seen_ms = excluded.seen_ms",
        )
        .bind(api)
        .bind(region)
        .bind(addresses.join(","))
        .bind(now)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Hubs seen since `since_ms`.
    pub async fn steering_hubs(&self, since_ms: i64) -> DbResult<Vec<SteeringHubRecord>> {
        let rows = sqlx::query(
            "SELECT api, region, addresses, seen_ms FROM steering_hubs WHERE seen_ms >= $1 \
             ORDER BY region, api",
        )
        .bind(since_ms)
        .fetch_all(&self.stale())
        .await?;
        rows.iter()
            .map(|r| {
                let addresses: String = r.try_get("addresses")?;
                Ok(SteeringHubRecord {
                    api: r.try_get("api")?,
                    region: r.try_get("region")?,
                    addresses: addresses
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    seen_ms: r.try_get("seen_ms")?,
                })
            })
            .collect()
    }

    /// Writes this hub's current RTT estimates (it alone writes rows of its region).
    pub async fn upsert_rtts(&self, rows: &[RttRecord]) -> DbResult<()> {
        let mut tx = self.w().begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO steering_rtt (prefix, region, rtt_us, samples, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (prefix, region) DO UPDATE SET \
                 rtt_us = excluded.rtt_us, samples = excluded.samples, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(&r.prefix)
            .bind(&r.region)
            .bind(r.rtt_us)
            .bind(r.samples)
            .bind(r.updated_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// RTT rows updated since `since_ms` (at most `limit`, newest first).
    pub async fn rtts_since(&self, since_ms: i64, limit: i64) -> DbResult<Vec<RttRecord>> {
        let rows = sqlx::query(
            "SELECT prefix, region, rtt_us, samples, updated_ms FROM steering_rtt \
             WHERE updated_ms >= $1 ORDER BY updated_ms DESC LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.stale())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RttRecord {
                    prefix: r.try_get("prefix")?,
                    region: r.try_get("region")?,
                    rtt_us: r.try_get("rtt_us")?,
                    samples: r.try_get("samples")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            })
            .collect()
    }

    /// Records what `observer` saw of `target`.
    pub async fn upsert_health(&self, h: &HealthRecord) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO hub_health (observer, target, healthy, failures, updated_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (observer, target) DO UPDATE SET \
             healthy = excluded.healthy, failures = excluded.failures, \
             updated_ms = excluded.updated_ms",
        )
        .bind(&h.observer)
        .bind(&h.target)
        .bind(i64::from(h.healthy))
        .bind(h.failures)
        .bind(h.updated_ms)
        .execute(&self.w())
        .await?;
        Ok(())
    }

    /// Health observations made since `since_ms`.
    pub async fn health_since(&self, since_ms: i64) -> DbResult<Vec<HealthRecord>> {
        let rows = sqlx::query(
            "SELECT observer, target, healthy, failures, updated_ms FROM hub_health \
             WHERE updated_ms >= $1",
        )
        .bind(since_ms)
        .fetch_all(&self.stale())
        .await?;
        rows.iter()
            .map(|r| {
                let healthy: i64 = r.try_get("healthy")?;
                Ok(HealthRecord {
                    observer: r.try_get("observer")?,
                    target: r.try_get("target")?,
                    healthy: healthy != 0,
                    failures: r.try_get("failures")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            })
            .collect()
    }
}
