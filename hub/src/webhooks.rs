//! Webhook deliveries: telling an application that one of its accounts changed, at least
//! once, signed the Kloudless way and the Standard Webhooks way.
//!
//! The flow (the database is the record, the work queue only carries work):
//! 1. The transaction that records an event opens or extends the pending notification of
//!    each enabled webhook of the account's application (`db::webhooks`, the outbox): at most
//!    one per (webhook, account), so a burst of changes makes one notification.
//! 2. The [reconciler](spawn) hands due notifications to the [work queue](crate::workqueue)
//!    (Redis Streams shared by the region's hubs, or in-process): woken at once after such a
//!    commit, and every `webhooks.reconcile_every` for retries that come due and for work the
//!    queue lost (a Redis restarted without persistence, a hub that crashed holding it).
//! 3. A consumer [claims](crate::db::Db::claim_delivery) the row (so of two hubs given the
//!    same work one delivers), waits until the region's replica shows the event (a receiver
//!    reading the feed through this region then finds it), and POSTs `account=<id>`.
//! 4. Success (2xx with the application id as the body) deletes the row unless newer events
//!    arrived meanwhile, which then get a notification of their own. Failure (timeout,
//!    non-2xx, another body, a refused address) schedules the next attempt from
//!    `webhooks.retry_schedule`, or later if the receiver's `Retry-After` asks; `410 Gone`, or
//!    failures for `webhooks.disable_after`, disable the webhook with the reason.
//!
//! Signatures: `X-Kloudless-Signature` = base64(HMAC-SHA256(key = the application's API key,
//! msg = raw body)), so existing Kloudless receivers verify unchanged (the key is kept sealed
//! with the master key for this; lookups still use its hash); and Standard Webhooks'
//! `webhook-id` (stable across retries), `webhook-timestamp` and `webhook-signature`
//! (`v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))) with a per-webhook secret
//! shown once, so new receivers can reject replays.
//!
//! SSRF: requests go through the storage egress policy's client, whose resolver refuses
//! internal addresses (unless `storage.allow_private_endpoints`/`allowed_private_endpoints`
//! allow them, as `hub dev` does for loopback) and connects to the address it checked;
//! redirects are never followed.

use crate::db::{Claimed, Settle};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, AppState};
use crate::workqueue::WorkQueue;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest receiver body read (an application id is a few digits).
const MAX_BODY: usize = 4096;
/// The most a receiver's `Retry-After` may push an attempt back.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// Notifications handed to the queue per reconciler round.
const HAND_BATCH: i64 = 1000;

/// The sealing context of an application's API key copy.
pub fn api_key_aad(app: i64) -> String {
    format!("api-key:{app}")
}

/// The sealing context of a webhook's signing secret.
fn secret_aad(app: i64) -> String {
    format!("webhook-secret:{app}")
}

/// What a delivery attempt came to.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

/// How long a webhook's delivery target stays cached. Staleness is harmless: deleting or
/// disabling a webhook deletes its pending rows, so no claim succeeds for it afterwards.
const TARGET_TTL: Duration = Duration::from_secs(2);
/// Cached targets at most (then the cache starts over).
const TARGET_CACHE: usize = 10_000;

/// The running engine: the queue and the HTTP client deliveries use.
#[derive(Clone)]
struct Engine {
    state: AppState,
    queue: WorkQueue,
    client: reqwest::Client,
    targets:
        Arc<std::sync::Mutex<std::collections::HashMap<i64, (Instant, crate::db::DeliveryTarget)>>>,
}

/// The reconciler and queue consumer of this hub.
#[derive(Debug)]
pub struct Tasks {
    consumer: tokio::task::JoinHandle<()>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl Tasks {
    pub fn abort(&self) {
        self.consumer.abort();
        self.reconciler.abort();
    }
}

/// Starts the reconciler and the queue consumer of this hub. With `redis.url`, fails when
/// Redis cannot be reached at start-up.
pub async fn spawn(state: AppState) -> anyhow::Result<Tasks> {
    let queue = crate::workqueue::open(&state.config, "webhooks").await?;
    let client = http_client(&state)?;
    let engine = Engine {
        state: state.clone(),
        queue,
        client,
        targets: Arc::default(),
    };
    let consumer = engine.clone();
    let handler: crate::workqueue::Handler = Arc::new(move |payload: String| {
        let e = consumer.clone();
        Box::pin(async move { e.handle(&payload).await })
    });
    let consumer = engine.queue.consume(
        state.config.webhooks.concurrency as usize,
        state.metrics.webhook_queue.clone(),
        handler,
    );
    let reconciler = tokio::spawn(engine.reconcile());
    Ok(Tasks {
        consumer,
        reconciler,
    })
}

/// The client deliveries and test requests use: the egress guard's resolver, no redirects, no
/// proxy, the configured timeout for the whole exchange.
fn http_client(state: &AppState) -> anyhow::Result<reqwest::Client> {
    let timeout = state.config.webhooks.timeout.0;
    Ok(state
        .connect_options
        .egress
        .http_builder(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("Switchyard-Webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(64)
        .build()?)
}

impl Engine {
    /// Hands due notifications to the queue: at once when woken by a commit, else every
    /// `reconcile_every`. Also sweeps the attempt log past the events' retention, hourly.
    async fn reconcile(self) {
        let wake = self.state.db.outbox_wake();
        let cfg = &self.state.config.webhooks;
        let requeue = cfg.requeue_after.0.as_millis() as i64;
        let mut last_sweep = Instant::now();
        loop {
            loop {
                match self
                    .state
                    .db
                    .outbox_due(now_ms(), requeue, HAND_BATCH)
                    .await
                {
                    Ok(due) => {
                        for (w, a) in &due {
                            // A failed push leaves the row handed but unclaimed: it is handed
                            // again after `requeue_after`.
                            let _ = self
                                .queue
                                .push(&format!("{w}:{a}"), &self.state.metrics.webhook_queue)
                                .await;
                        }
                        if (due.len() as i64) < HAND_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "handing webhook notifications to the queue failed");
                        break;
                    }
                }
            }
            if last_sweep.elapsed() > Duration::from_secs(3600) {
                last_sweep = Instant::now();
                let before = now_ms() - self.state.config.events.retention().as_millis() as i64;
                if let Err(e) = self.state.db.sweep_webhook_attempts(before).await {
                    tracing::warn!(error = %e, "sweeping the webhook attempt log failed");
                }
            }
            // Until the next row comes due (a coalescing window ends, a retry), at most
            // `reconcile_every`, or a commit opens a notification.
            let mut sleep = cfg.reconcile_every.0;
            if let Ok(Some(next)) = self.state.db.outbox_next_due().await {
                let until = Duration::from_millis((next - now_ms()).max(0) as u64);
                sleep = sleep.min(until.max(Duration::from_millis(5)));
            }
            let _ = tokio::time::timeout(sleep, wake.notified()).await;
        }
    }

    /// One queue payload, `webhook:account`.
    async fn handle(&self, payload: &str) {
        let Some((w, a)) = payload
            .split_once(':')
            .and_then(|(w, a)| Some((w.parse::<i64>().ok()?, a.parse::<i64>().ok()?)))
        else {
            tracing::warn!("ignoring a malformed webhook work item");
            return;
        };
        if let Err(e) = self.deliver(w, a).await {
            // The row stays claimed until its lease ends, then is handed again.
            tracing::warn!(webhook = w, account = a, error = %e, "webhook delivery could not be settled");
        }
    }

    async fn deliver(&self, webhook_id: i64, account_id: i64) -> Result<(), sqlx::Error> {
        let state = &self.state;
        let cfg = &state.config.webhooks;
        let wait = state.config.database.read_your_writes_wait_ms;
        // Held for a whole attempt (the replica wait and the request): nobody else delivers.
        let lease = (cfg.timeout.0 + Duration::from_millis(wait) + Duration::from_secs(5))
            .as_millis() as i64;
        let Some(c) = state
            .db
            .claim_delivery(webhook_id, account_id, now_ms(), lease)
            .await?
        else {
            return Ok(());
        };
        let target = match self.target(webhook_id).await? {
            Some(t) if t.hook.disabled_ms.is_none() => t,
            _ => return state.db.drop_pending(webhook_id, account_id).await,
        };
        let deadline = Instant::now() + Duration::from_millis(wait);
        while !state.db.replica_shows_event(account_id, c.seq).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let app = target.hook.app_id;
        let msg_id = format!("msg_{webhook_id}_{account_id}_{}", c.first_seq);
        let body = format!("account={account_id}");
        let started = Instant::now();
        let outcome = match (
            open(state, target.key_sealed.as_deref(), &api_key_aad(app)),
            open(state, Some(&target.secret_sealed), &secret_aad(app)),
        ) {
            (Some(key), Some(secret)) => {
                let req = Signed::new(&target.hook.url, &msg_id, &body, &key, &secret);
                self.send(req, app).await
            }
            (None, _) => Outcome {
                status: None,
                error: Some(
                    "the application has no API key to sign with (keys made before webhooks \
                     existed are kept only hashed): create a new API key"
                        .into(),
                ),
                retry_after: None,
            },
            (_, None) => Outcome {
                status: None,
                error: Some("the webhook's secret cannot be opened with this master key".into()),
                retry_after: None,
            },
        };
        let latency_ms = started.elapsed().as_millis() as i64;
        let now = now_ms();
        let settle = match &outcome.error {
            None => Settle::Delivered,
            Some(error) => self.failure(
                &c,
                &outcome,
                error.clone(),
                target.hook.failing_since_ms,
                now,
            ),
        };
        let again = state
            .db
            .settle_delivery(&c, &msg_id, outcome.status, latency_ms, &settle, now)
            .await?;
        let result = match settle {
            Settle::Delivered => {
                state
                    .metrics
                    .webhook_latency
                    .observe((now - c.created_ms).max(0) as f64 / 1000.0);
                "delivered"
            }
            Settle::Failed { disable, .. } => {
                if let Some(reason) = disable {
                    tracing::warn!(webhook = webhook_id, app, %reason, "webhook disabled");
                }
                "failed"
            }
        };
        state
            .metrics
            .webhook_attempts
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
        if again {
            let _ = self
                .queue
                .push(
                    &format!("{webhook_id}:{account_id}"),
                    &state.metrics.webhook_queue,
                )
                .await;
        }
        Ok(())
    }

    /// The webhook's URL and sealed keys, cached for [`TARGET_TTL`].
    async fn target(&self, id: i64) -> Result<Option<crate::db::DeliveryTarget>, sqlx::Error> {
        let lock = || self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, t)) = lock().get(&id) {
            if at.elapsed() < TARGET_TTL {
                return Ok(Some(t.clone()));
            }
        }
        let t = self.state.db.delivery_target(id).await?;
        let mut cache = lock();
        match &t {
            Some(t) => {
                if cache.len() >= TARGET_CACHE {
                    cache.clear();
                }
                cache.insert(id, (Instant::now(), t.clone()));
            }
            None => {
                cache.remove(&id);
            }
        }
        Ok(t)
    }

    /// The settlement of a failed attempt: when to try again, or why to stop.
    fn failure(
        &self,
        c: &Claimed,
        o: &Outcome,
        error: String,
        failing_since: Option<i64>,
        now: i64,
    ) -> Settle {
        let cfg = &self.state.config.webhooks;
        let failures = (c.attempts + 1) as usize;
        let step = cfg.retry_schedule[failures.min(cfg.retry_schedule.len() - 1)].0;
        let wait = o
            .retry_after
            .map(|r| r.min(MAX_RETRY_AFTER).max(step))
            .unwrap_or(step);
        let since = failing_since.unwrap_or(now);
        let disable = if o.status == Some(410) {
            Some("the receiver answered 410 Gone".to_owned())
        } else if now - since >= cfg.disable_after.0.as_millis() as i64 {
            Some(format!(
                "deliveries failed for {} without a success (since {}); last error: {error}",
                human(cfg.disable_after.0),
                crate::model::rfc3339(since)
            ))
        } else {
            None
        };
        Settle::Failed {
            error,
            next_ms: now + wait.as_millis() as i64,
            disable,
        }
    }

    async fn send(&self, req: Signed, app: i64) -> Outcome {
        post(&self.client, &self.state, req, app).await
    }
}

/// `5d`, `3h`, `90s`: a duration for messages, in its largest whole unit.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Opens a sealed value; `None` (logged without the value) when it cannot be.
fn open(state: &AppState, sealed: Option<&[u8]>, aad: &str) -> Option<Vec<u8>> {
    let sealed = sealed?;
    match state.sealer.open(sealed, aad.as_bytes()) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!(
                context = aad,
                "a sealed webhook key does not open with this master key"
            );
            None
        }
    }
}

/// A signed delivery request.
struct Signed {
    url: String,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Signed {
    fn new(url: &str, msg_id: &str, body: &str, api_key: &[u8], secret: &[u8]) -> Self {
        let ts = now_ms() / 1000;
        let kloudless = STANDARD.encode(hmac(api_key, body.as_bytes()));
        let standard = STANDARD.encode(hmac(secret, format!("{msg_id}.{ts}.{body}").as_bytes()));
        Self {
            url: url.to_owned(),
            body: body.to_owned(),
            headers: vec![
                ("X-Kloudless-Signature", kloudless),
                ("webhook-id", msg_id.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", format!("v1,{standard}")),
            ],
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// POSTs one signed request; success is a 2xx whose body is the application id.
async fn post(client: &reqwest::Client, state: &AppState, req: Signed, app: i64) -> Outcome {
    let fail = |status, error: String, retry_after| Outcome {
        status,
        error: Some(error),
        retry_after,
    };
    let url = match reqwest::Url::parse(&req.url) {
        Ok(u) => u,
        Err(e) => return fail(None, format!("the URL is not valid: {e}"), None),
    };
    if let Err(e) = state.connect_options.egress.check_url(&url) {
        return fail(None, format!("refused: {e}"), None);
    }
    let mut r = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(req.body);
    for (k, v) in req.headers {
        r = r.header(k, v);
    }
    let mut resp = match r.send().await {
        Ok(resp) => resp,
        Err(e) => return fail(None, describe(&e), None),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return fail(
                        Some(status),
                        format!("the answer's body is over {MAX_BODY} bytes"),
                        retry_after,
                    );
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return fail(Some(status), describe(&e), retry_after),
        }
    }
    let text = String::from_utf8_lossy(&body);
    if !(200..300).contains(&status) {
        return fail(
            Some(status),
            format!("answered HTTP {status}: {}", snippet(&text)),
            retry_after,
        );
    }
    if text.trim() != app.to_string() {
        return fail(
            Some(status),
            format!(
                "answered HTTP {status} with {}, not the application id ({app})",
                snippet(&text)
            ),
            retry_after,
        );
    }
    Outcome {
        status: Some(status),
        error: None,
        retry_after: None,
    }
}

/// The first 100 characters of a receiver's body, quoted, for messages.
fn snippet(text: &str) -> String {
    let t: String = text.chars().take(100).collect();
    if text.chars().count() > 100 {
        format!("{t:?}…")
    } else {
        format!("{t:?}")
    }
}

/// A request error as a short sentence (the URL is the webhook's own; no secrets in it).
fn describe(e: &reqwest::Error) -> String {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if let Some(eg) = s.downcast_ref::<shared::egress::EgressError>() {
            return format!("refused: {eg}");
        }
        src = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        "answered with a redirect (not followed)".into()
    } else {
        let mut text = e.to_string();
        if let Some(u) = e.url() {
            text = text.replace(u.as_str(), "the webhook URL");
        }
        format!("request failed: {text}")
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A new webhook's Standard Webhooks secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    (format!("whsec_{}", STANDARD.encode(raw)), raw.to_vec())
}

/// Checks a webhook URL before it is saved: http(s), a host, no credentials, not too long,
/// and (through the egress policy) not an internal address.
pub async fn check_url(state: &AppState, url: &str) -> ApiResult<reqwest::Url> {
    if url.len() > 2048 {
        return Err(ApiError::bad_request(
            "`url` must be at most 2048 characters",
        ));
    }
    let u = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_request(format!("`url` is not a valid URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ApiError::bad_request("`url` must be http or https"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(ApiError::bad_request(
            "`url` must not carry a user or password (they would be logged by proxies); \
             receivers verify the signature instead",
        ));
    }
    let Some(host) = u.host_str() else {
        return Err(ApiError::bad_request("`url` has no host"));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    state
        .connect_options
        .egress
        .resolve(&host)
        .await
        .map_err(|e| ApiError::bad_request(format!("`url`: {e}")))?;
    Ok(u)
}

/// The test request made before a webhook is saved: the same POST with an empty body, signed
/// with the same keys. The receiver must answer 200 with the application id.
pub async fn test_request(state: &AppState, app: i64, url: &str, secret: &[u8]) -> ApiResult<()> {
    let key = state
        .db
        .delivery_key(app)
        .await?
        .and_then(|k| open(state, Some(&k), &api_key_aad(app)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "the application has no API key to sign webhooks with (keys made before \
                 webhooks existed are kept only hashed): create a new API key first",
            )
        })?;
    let client = http_client(state).map_err(ApiError::internal)?;
    let msg_id = format!("msg_test_{}", rand::random::<u64>());
    let req = Signed::new(url, &msg_id, "", &key, secret);
    let o = post(&client, state, req, app).await;
    match (o.status, o.error) {
        (Some(200), None) => Ok(()),
        (s, None) => Err(ApiError::bad_request(format!(
            "the test request to the webhook URL was answered HTTP {}; it must be answered \
             200 with the application id ({app}) as the body",
            s.unwrap_or_default()
        ))),
        (_, Some(e)) => Err(ApiError::bad_request(format!(
            "the test request to the webhook URL failed: {e}; it must be answered 200 with the \
             application id ({app}) as the body"
        ))),
    }
}

/// Seals a new webhook's secret for storage.
pub fn seal_secret(state: &AppState, app: i64, raw: &[u8]) -> Vec<u8> {
    state.sealer.seal(raw, secret_aad(app).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kloudless_signature_is_base64_hmac_of_the_raw_body() {
        // RFC 4231 test case 2 ("Jefe"), base64 of its HMAC-SHA256.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let s = Signed::new("http://x/", "msg_1_2_3", "account=2", b"Jefe", b"secret");
        let sig = &s
            .headers
            .iter()
            .find(|h| h.0 == "X-Kloudless-Signature")
            .expect("sig")
            .1;
        assert_eq!(
            STANDARD.decode(sig).expect("base64"),
            hmac(b"Jefe", b"account=2").to_vec()
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert!(parse_retry_after("soon").is_none());
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(d > Duration::from_secs(3500) && d <= Duration::from_secs(3600));
        let past = httpdate::fmt_http_date(std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
    }

    #[test]
    fn secrets_are_whsec_base64_of_32_bytes() {
        let (text, raw) = new_secret();
        assert_eq!(raw.len(), 32);
        assert_eq!(
            STANDARD
                .decode(text.strip_prefix("whsec_").expect("prefix"))
                .expect("base64"),
            raw
        );
        assert_ne!(new_secret().1, raw);
    }
}
