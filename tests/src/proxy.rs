//! The loopback reverse proxy the provider stand-ins are built on (`throttle`, `cut_proxy`):
//! it forwards every request to a real server with bodies streaming both ways; a [`Hooks`]
//! implementation answers some requests itself and shapes the bodies that come back.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A request as the hooks see it (its body goes on to the upstream untouched).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// When it arrived.
    pub at: Instant,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
}

impl Incoming {
    /// The first byte of a ranged GET's `Range: bytes=a-b` (`None`: not a ranged GET).
    pub fn range_start(&self) -> Option<u64> {
        if self.method != Method::GET {
            return None;
        }
        let v = self.headers.get("range")?.to_str().ok()?;
        v.strip_prefix("bytes=")?
            .split('-')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// The upstream's response body, as it arrives.
pub type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What a stand-in does to the traffic it forwards.
pub trait Hooks: Send + Sync + 'static {
    /// Answers `req` instead of the upstream (`None`: forward it).
    fn answer(&self, _req: &Incoming) -> Option<Response> {
        None
    }

    /// The body the client gets of the upstream's answer `status` to `req` (by default the
    /// upstream's, streamed through as it comes).
    fn body(&self, _req: &Incoming, _status: StatusCode, upstream: Upstream) -> Body {
        through(upstream)
    }
}

/// The upstream's body, streamed through as it comes.
pub fn through(upstream: Upstream) -> Body {
    Body::from_stream(upstream.map_err(std::io::Error::other))
}

/// Locks a stand-in's state, whether or not a panicking test poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Ctx {
    upstream: String,
    http: reqwest::Client,
    hooks: Arc<dyn Hooks>,
}

/// The proxy, on a free loopback port. Stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `upstream` (`http://host:port`) doing what `hooks` say.
    pub async fn start(upstream: &str, hooks: Arc<dyn Hooks>) -> anyhow::Result<Proxy> {
        let ctx = Arc::new(Ctx {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()?,
            hooks,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Proxy { addr, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn forward(State(ctx): State<Arc<Ctx>>, req: axum::http::Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let incoming = Incoming {
        at: Instant::now(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        method: parts.method,
        headers: parts.headers,
    };
    if let Some(answer) = ctx.hooks.answer(&incoming) {
        return answer;
    }
    let mut headers = HeaderMap::new();
    for (k, v) in incoming.headers.iter() {
        if k != "host" && k != "connection" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let sent = ctx
        .http
        .request(
            incoming.method.clone(),
            format!("{}{}", ctx.upstream, incoming.path),
        )
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let mut out = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = ctx
        .hooks
        .body(&incoming, status, Box::pin(resp.bytes_stream()));
    out.body(body)
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
