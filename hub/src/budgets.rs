//! The hub's side of provider budgets (`shared::budget`): the buckets in Redis, shared by every
//! hub of the cluster (one Lua script per decision, on Redis's own clock, so hubs' clocks need
//! not agree), and the answers to spokes, which draw from the same buckets through their hub
//! (`crate::network::asks`; spokes never get the Redis URL: a spoke that turned hostile could
//! read the work queue).
//!
//! Keys: `<prefix>:budget:<bucket>:tat` (the bucket's next arrival time, microseconds, expiring
//! once the bucket is full again) and `<prefix>:budget:<bucket>:cool` (a cool-down, expiring
//! with it).

use crate::state::AppState;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::budget::{Limit, SharedStore, Take, MAX_KEY_LEN};
use shared::proto::{SideAnswer, SideAsk};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// GCRA as in `shared::budget::gcra`, on Redis's clock. Returns `{kind, wait_us, remaining,
/// full_in_us}`: kind 0 granted, 1 refused, 2 cooling.
const TAKE: &str = r#"
local cool = redis.call('PTTL', KEYS[2])
if cool > 0 then return {2, cool * 1000, 0, 0} end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if interval == 0 then return {0, 0, burst, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[3])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {1, wait, 0, 0} end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
local remaining = math.floor((now + tolerance + interval - new) / interval)
if remaining < 0 then remaining = 0 end
return {0, wait, remaining, new - now}
"#;

/// Extends (never shortens) a cool-down.
const COOL: &str = r#"
local want = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
end
return 1
"#;

/// The buckets in Redis. The connection is made on first use and again after failures, so a
/// hub starts, and paces alone, while Redis is down.
pub struct RedisStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
    take: redis::Script,
    cool: redis::Script,
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            prefix: format!("{prefix}:budget:"),
            take: redis::Script::new(TAKE),
            cool: redis::Script::new(COOL),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(shared::budget::SHARED_TIMEOUT)
            .set_response_timeout(shared::budget::SHARED_TIMEOUT)
            .set_number_of_retries(1);
        let c = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| format!("connecting to Redis: {:?}", e.kind()))?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl SharedStore for RedisStore {
    fn take<'a>(
        &'a self,
        key: &'a str,
        limit: Limit,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Take, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let (kind, wait, remaining, full_in): (i64, i64, i64, i64) = self
                .take
                .key(format!("{}{key}:tat", self.prefix))
                .key(format!("{}{key}:cool", self.prefix))
                .arg(limit.interval_us())
                .arg(limit.burst)
                .arg(max_wait.as_micros() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| format!("Redis budget script: {:?}", e.kind()))?;
            let us = |v: i64| v.max(0) as u64;
            Ok(match kind {
                0 => Take::Granted {
                    wait_us: us(wait),
                    remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                    full_in_us: us(full_in),
                },
                1 => Take::Refused { wait_us: us(wait) },
                _ => Take::Cooling { left_us: us(wait) },
            })
        })
    }

    fn cool<'a>(
        &'a self,
        key: &'a str,
        cool_down: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let _: i64 = self
                .cool
                .key(format!("{}{key}:cool", self.prefix))
                .arg(cool_down.as_millis().max(1) as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| format!("Redis budget cool-down: {:?}", e.kind()))?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// The process's budgets: shared through Redis when `redis.url` is set.
pub fn from_config(config: &crate::config::Config) -> anyhow::Result<shared::budget::Budgets> {
    let budgets = shared::budget::Budgets::new(config.budgets.settings());
    if let Some(url) = &config.redis.url {
        let prefix = config.redis.key_prefix.as_deref().unwrap_or("switchyard");
        let store = RedisStore::new(url, prefix)
            .map_err(|e| anyhow::anyhow!("redis.url: {:?}", e.kind()))?;
        budgets.set_shared(std::sync::Arc::new(store));
    }
    Ok(budgets)
}

/// The budgets' counters and mode for `/metrics`, read at each scrape.
#[derive(Debug)]
pub struct BudgetMetrics(pub shared::budget::Budgets);

impl prometheus_client::collector::Collector for BudgetMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.0.stats();
        for (name, help, value) in [
            (
                "budget_waits",
                "Provider requests that waited for their budget slot or a cool-down",
                s.waited.load(Relaxed),
            ),
            (
                "budget_refusals",
                "Provider requests refused because their slot was further than the caller may wait",
                s.refused.load(Relaxed),
            ),
            (
                "budget_cool_downs",
                "Cool-downs started by a provider's 429 or 503 with Retry-After",
                s.cool_downs.load(Relaxed),
            ),
            (
                "budget_shared_failures",
                "Calls to the shared budget store (Redis) that failed",
                s.shared_failures.load(Relaxed),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let shared = ConstGauge::new(i64::from(matches!(
            self.0.mode(),
            shared::budget::Mode::Shared(_)
        )));
        shared.encode(encoder.encode_descriptor(
            "budget_shared",
            "1 while provider budgets are shared through Redis, 0 while this hub paces alone",
            None,
            shared.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The hub's answer to a spoke's budget question ([`SideAsk::Take`] or [`SideAsk::Cool`]):
/// the hub's own limits apply (the spoke names only the service and the bucket, and may wait
/// at most the background bound).
pub async fn answer(state: &AppState, ask: SideAsk) -> SideAnswer {
    if let Err(message) = check(&ask) {
        return SideAnswer::Refused {
            message,
            status: None,
            code: None,
        };
    }
    let budgets = &state.connect_options.budgets;
    match ask {
        SideAsk::Take {
            service,
            key,
            max_wait_ms,
        } => {
            let bound =
                Duration::from_millis(max_wait_ms.min(budgets.settings().background_max_wait_ms));
            SideAnswer::Take {
                take: budgets.take(&service, &key, bound).await,
            }
        }
        SideAsk::Cool { key, ms } => {
            budgets.cool(&key, Duration::from_millis(ms)).await;
            SideAnswer::Cooled
        }
        SideAsk::Part(_) => SideAnswer::Refused {
            message: "not a budget question".into(),
            status: None,
            code: None,
        },
    }
}

/// A spoke's bucket names a service it could hold an account of, in the form our connectors
/// make (`<service>:<printable ASCII>`), and is short: a spoke cannot fill Redis with junk or
/// reach another key space.
fn check(ask: &SideAsk) -> Result<(), String> {
    let key = match ask {
        SideAsk::Take { service, key, .. } => {
            if !key.starts_with(&format!("{service}:")) {
                return Err("the bucket does not belong to the service".into());
            }
            key
        }
        SideAsk::Cool { key, .. } => key,
        SideAsk::Part(_) => return Err("not a budget question".into()),
    };
    let service = key.split(':').next().unwrap_or_default();
    if !shared::storage::service::SERVICES.contains(&service) || matches!(service, "fs" | "sftp") {
        return Err("no such paced service".into());
    }
    if key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the bucket name is not acceptable".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spokes_name_only_real_paced_buckets() {
        let take = |service: &str, key: &str| SideAsk::Take {
            service: service.into(),
            key: key.into(),
            max_wait_ms: 10,
        };
        assert!(check(&take("webdav", "webdav:dav.example:443")).is_ok());
        assert!(check(&take("s3", "webdav:dav.example:443")).is_err());
        assert!(check(&take("fs", "fs:/srv")).is_err());
        assert!(check(&take("nope", "nope:x")).is_err());
        assert!(check(&take("s3", &format!("s3:{}", "x".repeat(600)))).is_err());
        assert!(check(&take("s3", "s3:a b")).is_err());
        assert!(check(&SideAsk::Cool {
            key: "dropbox:user-00".into(),
            ms: 5
        })
        .is_ok());
        assert!(check(&SideAsk::Cool {
            key: "x:y".into(),
            ms: 5
        })
        .is_err());
    }
}
