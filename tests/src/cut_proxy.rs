//! A provider whose connections break mid-body, or crawl, for the transfer tests (progress
//! through part retries, a spoke kept busy as long as a test wants): an HTTP reverse proxy
//! on loopback in front of a real server (moto S3) that paces the bodies of ranged GETs, cuts
//! one chosen ranged GET after a given number of body bytes (it closes the connection, as a
//! failing network would: the client sees a truncated body), and keeps account of what it
//! delivered. Everything else streams through untouched.
//!
//! The account it keeps: the body bytes of ranged GETs it has handed on, per response, and
//! the high-water mark of those bytes over the responses it did not cut (`peak`). A client's
//! honest progress (verified parts plus the current attempts of parts in flight) never passes
//! that mark: bytes of a cut response count only until the cut.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pieces a paced body is handed on in.
const PIECE: usize = 64 * 1024;

/// One ranged GET the proxy answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The first byte of the range asked for.
    pub start: u64,
    /// Body bytes handed on so far.
    pub delivered: u64,
    /// The proxy cut this response.
    pub cut: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// The next ranged GET whose range starts here is cut after this many body bytes.
    cut: Option<(u64, u64)>,
    /// Bytes per second of ranged GET bodies (`None`: as fast as they come).
    pace: Option<u64>,
    deliveries: Vec<Delivery>,
    peak: u64,
}

impl Inner {
    fn note(&mut self) {
        let uncut: u64 = self
            .deliveries
            .iter()
            .filter(|d| !d.cut)
            .map(|d| d.delivered)
            .sum();
        self.peak = self.peak.max(uncut);
    }
}

#[derive(Clone)]
struct Ctx {
    upstream: String,
    http: reqwest::Client,
    inner: Arc<Mutex<Inner>>,
}

/// The proxy. Stops when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CutProxy {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<CutProxy> {
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
        Ok(CutProxy { addr, inner, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Hands ranged GET bodies on at `bytes_per_sec` each, from their next piece on (bodies
    /// already flowing change pace too).
    pub fn pace(&self, bytes_per_sec: u64) {
        lock(&self.inner).pace = Some(bytes_per_sec.max(1));
    }

    /// Cuts the next ranged GET whose range starts at byte `start` after `after` body bytes.
    pub fn cut_once(&self, start: u64, after: u64) {
        lock(&self.inner).cut = Some((start, after));
    }

    /// Every ranged GET so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.inner).deliveries.clone()
    }

    /// The most body bytes of ranged GETs that were, at one moment, handed on in responses
    /// not cut (so far).
    pub fn peak(&self) -> u64 {
        lock(&self.inner).peak
    }
}

/// The first byte of a `Range: bytes=a-b` header.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("range")?.to_str().ok()?;
    v.strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A ranged GET's body on its way back: re-cut into pieces, paced, counted, maybe cut.
struct Relay {
    upstream: Upstream,
    pending: Bytes,
    index: usize,
    cut_after: Option<u64>,
    sent: u64,
    inner: Arc<Mutex<Inner>>,
    done: bool,
}

impl Relay {
    async fn next_piece(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        if self.cut_after == Some(self.sent) {
            self.done = true;
            let mut inner = lock(&self.inner);
            inner.deliveries[self.index].cut = true;
            inner.note();
            return Some(Err(std::io::Error::other("cut by the proxy")));
        }
        while self.pending.is_empty() {
            match self.upstream.next().await {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(std::io::Error::other(e)));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
        let mut n = self.pending.len().min(PIECE);
        if let Some(limit) = self.cut_after {
            n = n.min((limit - self.sent) as usize);
        }
        let piece = self.pending.split_to(n);
        let pace = lock(&self.inner).pace;
        if let Some(rate) = pace {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        self.sent += n as u64;
        {
            let mut inner = lock(&self.inner);
            inner.deliveries[self.index].delivered = self.sent;
            inner.note();
        }
        Some(Ok(piece))
    }
}

async fn forward(State(ctx): State<Ctx>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let (parts, body) = req.into_parts();
    let ranged = (method == Method::GET)
        .then(|| range_start(&parts.headers))
        .flatten();
    let mut headers = HeaderMap::new();
    for (k, v) in parts.headers.iter() {
        if k != "host" && k != "connection" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let sent = ctx
        .http
        .request(method, format!("{}{path}", ctx.upstream))
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = match ranged.filter(|_| resp.status().is_success()) {
        None => Body::from_stream(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        ),
        Some(start) => {
            let (index, cut_after) = {
                let mut inner = lock(&ctx.inner);
                let cut_after = match inner.cut {
                    Some((s, after)) if s == start => {
                        inner.cut = None;
                        Some(after)
                    }
                    _ => None,
                };
                inner.deliveries.push(Delivery {
                    start,
                    delivered: 0,
                    cut: false,
                });
                (inner.deliveries.len() - 1, cut_after)
            };
            let relay = Relay {
                upstream: Box::pin(resp.bytes_stream()),
                pending: Bytes::new(),
                index,
                cut_after,
                sent: 0,
                inner: ctx.inner.clone(),
                done: false,
            };
            Body::from_stream(futures::stream::unfold(relay, |mut r| async move {
                let item = r.next_piece().await?;
                Some((item, r))
            }))
        }
    };
    out.body(body)
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
