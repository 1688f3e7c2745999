//! The work queue the hubs of a region share: Redis Streams with one consumer group per queue
//! when `redis.url` is set, an in-process channel otherwise. It carries only work (small text
//! payloads naming database rows); the database is the record, and every producer keeps
//! enough there that a reconciler can hand lost work again (see `crate::webhooks`).
//!
//! Redis: `XADD <prefix>:<region>:<queue> MAXLEN ~ N` to push; every hub reads with
//! `XREADGROUP GROUP hubs <consumer>` on a connection of its own (the read blocks), acks with
//! `XACK` + `XDEL` once the handler returned, and takes over entries another consumer left
//! unacknowledged for [`CLAIM_IDLE`] with `XAUTOCLAIM` (a hub that crashed mid-delivery). A
//! Redis restarted empty has lost the group: the reader recreates it (`NOGROUP`) and goes on.
//! Handlers must tolerate a payload twice: the queue delivers at least once.

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, Semaphore};

/// The consumer group every hub reads in.
const GROUP: &str = "hubs";
/// Entries a stream keeps at most (approximately): a bound on Redis memory when no hub reads.
const MAX_LEN: usize = 100_000;
/// Capacity of an in-process queue; a push to a full one is dropped (the reconciler hands
/// the work again later).
const LOCAL_CAPACITY: usize = 10_000;
/// An entry delivered to a consumer and not acknowledged for this long is taken over.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_secs(2);

/// What a consumer runs for each payload.
pub type Handler = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A queue of one kind of work.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Inner::Local { .. } => f.write_str("WorkQueue(local)"),
            Inner::Redis(r) => write!(f, "WorkQueue(redis {})", r.key),
        }
    }
}

enum Inner {
    Local {
        tx: mpsc::Sender<String>,
        rx: Mutex<Option<mpsc::Receiver<String>>>,
    },
    Redis(RedisQueue),
}

struct RedisQueue {
    client: redis::Client,
    /// Pushes and acks (multiplexed, reconnects by itself).
    conn: ConnectionManager,
    key: String,
    consumer: String,
}

/// Counters of one queue, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct QueueStats {
    pub pushed: prometheus_client::metrics::counter::Counter,
    pub push_failures: prometheus_client::metrics::counter::Counter,
    pub claimed_over: prometheus_client::metrics::counter::Counter,
}

impl WorkQueue {
    /// An in-process queue (no Redis): the work stays on this hub.
    pub fn local() -> Self {
        let (tx, rx) = mpsc::channel(LOCAL_CAPACITY);
        Self {
            inner: Arc::new(Inner::Local {
                tx,
                rx: Mutex::new(Some(rx)),
            }),
        }
    }

    /// The queue `name` of `region` on the Redis at `url`. Fails when Redis cannot be reached
    /// at start-up (a hub configured for Redis does not silently run alone).
    pub async fn redis(
        url: &str,
        prefix: &str,
        region: &str,
        name: &str,
        consumer: &str,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "connecting to Redis timed out"))
        })??;
        Ok(Self {
            inner: Arc::new(Inner::Redis(RedisQueue {
                client,
                conn,
                key: format!("{prefix}:{region}:{name}"),
                consumer: consumer.to_owned(),
            })),
        })
    }

    /// Whether the queue is shared through Redis.
    pub fn is_redis(&self) -> bool {
        matches!(&*self.inner, Inner::Redis(_))
    }

    /// Hands `payload` to the queue. Failures (Redis down, local queue full) are counted and
    /// returned; the caller's database row stays pending, so nothing is lost.
    pub async fn push(&self, payload: &str, stats: &QueueStats) -> Result<(), String> {
        let r = match &*self.inner {
            Inner::Local { tx, .. } => tx
                .try_send(payload.to_owned())
                .map_err(|e| format!("in-process queue: {e}")),
            Inner::Redis(q) => {
                let mut conn = q.conn.clone();
                let opts = redis::streams::StreamAddOptions::default().trim(
                    redis::streams::StreamTrimStrategy::maxlen(
                        redis::streams::StreamTrimmingMode::Approx,
                        MAX_LEN,
                    ),
                );
                conn.xadd_options::<_, _, _, String>(&q.key, "*", &[("p", payload)], &opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("redis XADD: {}", redact(&e)))
            }
        };
        match &r {
            Ok(()) => stats.pushed.inc(),
            Err(_) => stats.push_failures.inc(),
        };
        r
    }

    /// Runs `handler` for every payload, at most `concurrency` at once, until the process
    /// ends. One consumer per queue and hub.
    pub fn consume(
        &self,
        concurrency: usize,
        stats: QueueStats,
        handler: Handler,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(concurrency.max(1)));
            // Owned by this task: aborting the consumer (a hub stopping) aborts the handlers
            // still running too; their work is handed again (see the module comment).
            let mut running = tokio::task::JoinSet::new();
            match &*me.inner {
                Inner::Local { rx, .. } => {
                    let Some(mut rx) = rx.lock().await.take() else {
                        tracing::error!("the in-process work queue already has a consumer");
                        return;
                    };
                    while let Some(p) = rx.recv().await {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        while running.try_join_next().is_some() {}
                        let h = handler.clone();
                        running.spawn(async move {
                            h(p).await;
                            drop(permit);
                        });
                    }
                }
                Inner::Redis(q) => {
                    q.run(concurrency.max(1), permits, &mut running, stats, handler)
                        .await
                }
            }
        })
    }
}

impl RedisQueue {
    async fn run(
        &self,
        batch: usize,
        permits: Arc<Semaphore>,
        running: &mut tokio::task::JoinSet<()>,
        stats: QueueStats,
        handler: Handler,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut reader: Option<redis::aio::MultiplexedConnection> = None;
        let mut last_claim = tokio::time::Instant::now();
        loop {
            // The blocking read gets a connection of its own; the shared one serves pushes.
            let conn = match &mut reader {
                Some(c) => c,
                None => match self.client.get_multiplexed_async_connection().await {
                    Ok(c) => reader.insert(c),
                    Err(e) => {
                        tracing::warn!(queue = %self.key, error = %redact(&e), "cannot reach Redis; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            let mut entries: Vec<(String, String)> = Vec::new();
            if last_claim.elapsed() >= CLAIM_IDLE / 2 {
                last_claim = tokio::time::Instant::now();
                match self.autoclaim(conn, batch).await {
                    Ok(v) => {
                        for _ in &v {
                            stats.claimed_over.inc();
                        }
                        entries.extend(v);
                    }
                    Err(e) => {
                        if !self.recover(conn, &e).await {
                            reader = None;
                        }
                        continue;
                    }
                }
            }
            if entries.is_empty() {
                let opts = StreamReadOptions::default()
                    .group(GROUP, &self.consumer)
                    .count(batch)
                    .block(BLOCK.as_millis() as usize);
                let read: Result<StreamReadReply, _> =
                    conn.xread_options(&[&self.key], &[">"], &opts).await;
                match read {
                    Ok(reply) => {
                        backoff = Duration::from_millis(100);
                        for key in reply.keys {
                            for id in key.ids {
                                let p: Option<String> = id.get("p");
                                entries.push((id.id, p.unwrap_or_default()));
                            }
                        }
                    }
                    Err(e) => {
                        if !self.recover(conn, &e).await {
                            reader = None;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                        continue;
                    }
                }
            }
            for (id, payload) in entries {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let h = handler.clone();
                let mut ack = self.conn.clone();
                let key = self.key.clone();
                while running.try_join_next().is_some() {}
                running.spawn(async move {
                    if !payload.is_empty() {
                        h(payload).await;
                    }
                    // Unacknowledged entries are taken over after CLAIM_IDLE: an ack that fails
                    // costs a duplicate, which handlers tolerate.
                    let _: Result<(), _> = redis::pipe()
                        .xack(&key, GROUP, &[&id])
                        .ignore()
                        .xdel(&key, &[&id])
                        .ignore()
                        .query_async(&mut ack)
                        .await;
                    drop(permit);
                });
            }
        }
    }

    /// Entries of other consumers idle past [`CLAIM_IDLE`], now this consumer's.
    async fn autoclaim(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        count: usize,
    ) -> redis::RedisResult<Vec<(String, String)>> {
        let opts = redis::streams::StreamAutoClaimOptions::default().count(count);
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &self.key,
                GROUP,
                &self.consumer,
                CLAIM_IDLE.as_millis() as u64,
                "0-0",
                opts,
            )
            .await?;
        Ok(reply
            .claimed
            .into_iter()
            .map(|id| {
                let p: Option<String> = id.get("p");
                (id.id, p.unwrap_or_default())
            })
            .collect())
    }

    /// After a failed read: recreates the group when Redis lost it (restarted empty, or a new
    /// Redis) and returns true; false for other errors (the caller reconnects).
    async fn recover(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        e: &redis::RedisError,
    ) -> bool {
        if e.code() != Some("NOGROUP") {
            tracing::warn!(queue = %self.key, error = %redact(e), "reading the Redis stream failed");
            return false;
        }
        // From the start of the stream: entries pushed before the group existed are work too.
        let r: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.key, GROUP, "0").await;
        match r {
            Ok(()) => {
                tracing::info!(queue = %self.key, "created the Redis consumer group");
                true
            }
            Err(e) if e.code() == Some("BUSYGROUP") => true,
            Err(e) => {
                tracing::warn!(queue = %self.key, error = %redact(&e), "cannot create the Redis consumer group");
                false
            }
        }
    }
}

/// A Redis error as text without anything of the URL (which may carry a password).
fn redact(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.detail().unwrap_or_default()),
        None => format!("{:?}", e.kind()),
    }
}

/// The queue `name` of this hub's region: on the Redis of `redis.url` (failing when it cannot
/// be reached at start-up), or in-process without it.
pub async fn open(config: &crate::config::Config, name: &str) -> anyhow::Result<WorkQueue> {
    match &config.redis.url {
        Some(url) => {
            let prefix = config.redis.key_prefix.as_deref().unwrap_or("switchyard");
            WorkQueue::redis(url, prefix, &config.region, name, &consumer_name())
                .await
                .map_err(|e| anyhow::anyhow!("redis.url: cannot reach Redis ({:?})", e.kind()))
        }
        None => Ok(WorkQueue::local()),
    }
}

/// A consumer name unique to this process: host, pid and a random part.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "hub".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
