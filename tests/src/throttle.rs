//! A rate-limited provider for the budget tests: a reverse proxy on loopback (`proxy`) in front
//! of a real server (the WebDAV server), which records when each request arrived, enforces a
//! provider-style limit of its own (a token bucket: over it, `429` with `Retry-After: 1`) and
//! can be told to answer the next request itself (`429 Retry-After: 7`). Bodies stream through
//! both ways.

use crate::proxy::{lock, through, Hooks, Incoming, Proxy, Upstream};
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request the provider got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// What it was answered (the upstream's status, or ours).
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    /// Answers given instead of forwarding, to the next requests in order.
    script: VecDeque<(u16, Option<u64>)>,
    /// The provider's own limit: (rate per second, burst, tokens, last refill).
    limit: Option<(f64, f64, f64, Instant)>,
}

impl Inner {
    fn record(&mut self, req: &Incoming, status: u16) {
        self.seen.push(Seen {
            at: req.at,
            method: req.method.to_string(),
            path: req.path.clone(),
            status,
        });
    }
}

/// The provider. Stops when dropped.
pub struct Throttle {
    proxy: Proxy,
    inner: Arc<Mutex<Inner>>,
}

impl Throttle {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<Throttle> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let proxy = Proxy::start(upstream, inner.clone()).await?;
        Ok(Throttle { proxy, inner })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// Enforces `rate` requests per second with `burst` at once, as a provider would: a
    /// request over it is answered `429 Retry-After: 1` without reaching the server.
    pub fn limit(&self, rate: f64, burst: f64) {
        lock(&self.inner).limit = Some((rate, burst, burst, Instant::now()));
    }

    /// The next request is answered `status` (with `Retry-After: retry_after` seconds).
    pub fn answer_next(&self, status: u16, retry_after: Option<u64>) {
        lock(&self.inner).script.push_back((status, retry_after));
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.inner).seen.clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        lock(&self.inner).seen.clear();
    }
}

fn refused(status: u16, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
        "slow down\n",
    )
        .into_response();
    if let Some(s) = retry_after {
        if let Ok(v) = s.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

impl Hooks for Mutex<Inner> {
    /// A scripted answer, else `429 Retry-After: 1` when over the limit.
    fn answer(&self, req: &Incoming) -> Option<Response> {
        let mut inner = lock(self);
        let scripted = inner.script.pop_front();
        let over = match (&scripted, &mut inner.limit) {
            (None, Some((rate, burst, tokens, last))) => {
                *tokens = (*tokens + last.elapsed().as_secs_f64() * *rate).min(*burst);
                *last = Instant::now();
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        let (status, retry_after) = scripted.or(over.then_some((429, Some(1))))?;
        inner.record(req, status);
        Some(refused(status, retry_after))
    }

    fn body(&self, req: &Incoming, status: StatusCode, upstream: Upstream) -> Body {
        lock(self).record(req, status.as_u16());
        through(upstream)
    }
}
