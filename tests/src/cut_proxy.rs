//! A provider whose connections break mid-body, or crawl, for the transfer tests (progress
//! through part retries, a spoke kept busy as long as a test wants): a reverse proxy on
//! loopback (`proxy`) in front of a real server (moto S3) that paces the bodies of ranged GETs, cuts
//! one chosen ranged GET after a given number of body bytes (it closes the connection, as a
//! failing network would: the client sees a truncated body), and keeps account of what it
//! delivered. Everything else streams through untouched.
//!
//! The account it keeps: the body bytes of ranged GETs it has handed on, per response, and
//! the high-water mark of those bytes over the responses it did not cut (`peak`). A client's
//! honest progress (verified parts plus the current attempts of parts in flight) never passes
//! that mark: bytes of a cut response count only until the cut.

use crate::proxy::{lock, through, Hooks, Incoming, Proxy, Upstream};
use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
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

/// The proxy. Stops when dropped.
pub struct CutProxy {
    proxy: Proxy,
    inner: Arc<Mutex<Inner>>,
}

impl CutProxy {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<CutProxy> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let proxy = Proxy::start(upstream, Arc::new(Shaping(inner.clone()))).await?;
        Ok(CutProxy { proxy, inner })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
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

/// The proxy's hooks (a handle on the account the relays keep).
struct Shaping(Arc<Mutex<Inner>>);

impl Hooks for Shaping {
    /// A successful ranged GET's body is re-cut into pieces, paced, counted and maybe cut;
    /// every other body streams through.
    fn body(&self, req: &Incoming, status: StatusCode, upstream: Upstream) -> Body {
        let Some(start) = req.range_start().filter(|_| status.is_success()) else {
            return through(upstream);
        };
        let (index, cut_after) = {
            let mut inner = lock(&self.0);
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
            upstream,
            pending: Bytes::new(),
            index,
            cut_after,
            sent: 0,
            inner: self.0.clone(),
            done: false,
        };
        Body::from_stream(futures::stream::unfold(relay, |mut r| async move {
            let item = r.next_piece().await?;
            Some((item, r))
        }))
    }
}
