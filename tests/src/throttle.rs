//! A rate-limited provider for the budget tests: an HTTP reverse proxy on loopback in front of
//! a real server (the WebDAV server), which records when each request arrived, enforces a
//! provider-style limit of its own (a token bucket: over it, `429` with `Retry-After: 1`) and
//! can be told to answer the next request itself (`429 Retry-After: 7`). Bodies stream through
//! both ways.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[derive(Clone)]
struct Ctx {
    upstream: String,
    http: reqwest::Client,
    inner: Arc<Mutex<Inner>>,
}

/// The proxy. Stops when dropped.
pub struct Throttle {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Throttle {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<Throttle> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let ctx = Ctx {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()?,
            inner: inner.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Throttle { addr, inner, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

async fn forward(State(ctx): State<Ctx>, req: Request<Body>) -> Response {
    let at = Instant::now();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let ours = {
        let mut inner = lock(&ctx.inner);
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
        let ours = scripted.or(over.then_some((429, Some(1))));
        if let Some((status, _)) = ours {
            inner.seen.push(Seen {
                at,
                method: method.to_string(),
                path: path.clone(),
                status,
            });
        }
        ours
    };
    if let Some((status, retry_after)) = ours {
        return refused(status, retry_after);
    }
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    for (k, v) in parts.headers.iter() {
        if k != "host" && k != "connection" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let sent = ctx
        .http
        .request(
            Method::from_bytes(method.as_str().as_bytes()).unwrap_or(Method::GET),
            format!("{}{path}", ctx.upstream),
        )
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    lock(&ctx.inner).seen.push(Seen {
        at,
        method: method.to_string(),
        path,
        status: resp.status().as_u16(),
    });
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    out.body(Body::from_stream(
        resp.bytes_stream().map_err(std::io::Error::other),
    ))
    .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
