//! Bounded deletes of rows that ran out (stale steering estimates, old health observations,
//! spent exclusions of spokes from transfers): one statement shape for every such table,
//! oldest first through the index on its time column, in batches so no delete holds a long
//! transaction or lock.

use super::{Db, DbResult};

/// Rows one prune statement deletes at most (bounds its transaction and lock time).
pub const PRUNE_BATCH: i64 = 1000;
/// Statements one prune round runs per table at most; the next round takes the rest.
pub const PRUNE_MAX_BATCHES: usize = 20;

/// A table whose rows run out: `at` is the indexed time column (ms), `key` the primary key's
/// columns. All three are fixed identifiers of our schema, never input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiring {
    table: &'static str,
    key: &'static str,
    at: &'static str,
}

/// Client-network RTT estimates, by when they were last updated.
pub const STEERING_RTT: Expiring = Expiring {
    table: "steering_rtt",
    key: "prefix, region",
    at: "updated_ms",
};
/// Hub health observations, by when they were last made.
pub const HUB_HEALTH: Expiring = Expiring {
    table: "hub_health",
    key: "observer, target",
    at: "updated_ms",
};
/// Exclusions of spokes from transfers, by when they run out.
pub const TRANSFER_EXCLUSIONS: Expiring = Expiring {
    table: "transfer_exclusions",
    key: "transfer_id, spoke_id",
    at: "until_ms",
};

impl Db {
    /// Deletes up to `limit` rows of `t` whose time is before `before_ms`, the oldest first
    /// (through the time column's index: no table scan however large the table); returns
    /// how many went. A row refreshed meanwhile is kept: the predicate is checked again on
    /// the row deleted.
    pub async fn prune_some(&self, t: Expiring, before_ms: i64, limit: i64) -> DbResult<u64> {
        let Expiring { table, key, at } = t;
        let sql = format!(
            "DELETE FROM {table} WHERE {at} < $1 AND ({key}) IN \
             (SELECT {key} FROM {table} WHERE {at} < $1 ORDER BY {at} LIMIT $2)"
        );
        let r = sqlx::query(&sql)
            .bind(before_ms)
            .bind(limit)
            .execute(&self.w())
            .await?;
        Ok(r.rows_affected())
    }

    /// One prune round of `t`: batches of [`PRUNE_BATCH`] until one deletes fewer (nothing
    /// older is left) or [`PRUNE_MAX_BATCHES`] ran (the next round takes the rest); returns
    /// how many rows went. Deletes are idempotent, so hubs pruning at once share the work.
    pub async fn prune(&self, t: Expiring, before_ms: i64) -> DbResult<u64> {
        let mut total = 0;
        for _ in 0..PRUNE_MAX_BATCHES {
            let n = self.prune_some(t, before_ms, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }
}
