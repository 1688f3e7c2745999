//! Part-wise, verified, rate-limited copies between connectors: the engine spokes and hubs run.
//!
//! A copy to an S3 destination is planned as parts ([`plan_parts`]) that are copied
//! independently ([`copy_parts`]): each part streams from a ranged read of the source into one
//! `UploadPart` of an [`S3Multipart`] upload, hashed on the way through, and only counts as done
//! ([`CopyEvent::PartDone`]) once S3's ETag and the byte count prove it arrived intact. Done
//! parts can be persisted, so an interrupted copy resumes with the parts still missing, on
//! this process or another. Destinations without resumable multipart uploads get one verified
//! stream instead ([`copy_stream`]).
//!
//! Memory stays bounded: bytes flow from the source reader to the HTTP request in pieces of at
//! most [`PROGRESS_STEP`] bytes, and no part is ever held whole.

use super::multipart::S3Multipart;
use super::{ByteRange, Connector, ServiceConfig, StorageError, StoragePath};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (all but the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest number of parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Bytes flow in pieces of at most this size; each piece is rate limited and reported as a
/// [`CopyEvent::Bytes`] before it is sent.
pub const PROGRESS_STEP: usize = 256 * 1024;
/// Bytes fetched per source request while copying a part: several parts run at once, so each
/// holds at most this much.
const PART_READ_CHUNK: usize = 2 * 1024 * 1024;
/// How long a cancelled [`copy_stream`] waits for the destination writer to abort cleanly.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait before retrying a part, whatever the provider's `Retry-After` says.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// One part of a transfer: the byte range `offset..offset + len` of the source. The S3 part
/// number is `index + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartPlan {
    /// 0-based.
    pub index: u32,
    pub offset: u64,
    pub len: u64,
}

impl PartPlan {
    /// The S3 part number (`index + 1`), if S3 allows one that high.
    pub fn part_number(&self) -> Option<u16> {
        let n = u64::from(self.index) + 1;
        if n > MAX_PARTS {
            return None;
        }
        u16::try_from(n).ok()
    }
}

/// The part size to use for an object of `size` bytes when `preferred` is wanted: never below
/// [`MIN_PART_SIZE`], and grown (to whole MiB) until the object fits in [`MAX_PARTS`] parts.
pub fn choose_part_size(size: u64, preferred: u64) -> u64 {
    let part = preferred.max(MIN_PART_SIZE);
    let needed = size.div_ceil(MAX_PARTS);
    if needed > part {
        needed.div_ceil(MIB).saturating_mul(MIB)
    } else {
        part
    }
}

/// Splits `0..size` into contiguous parts of `part_size` bytes (the last one shorter). A
/// zero-byte object is one empty part, since a multipart upload needs at least one.
pub fn plan_parts(size: u64, part_size: u64) -> Vec<PartPlan> {
    let part = part_size.max(1);
    if size == 0 {
        return vec![PartPlan {
            index: 0,
            offset: 0,
            len: 0,
        }];
    }
    (0..size.div_ceil(part))
        .map(|i| {
            let offset = i * part;
            PartPlan {
                index: i as u32,
                offset,
                len: part.min(size - offset),
            }
        })
        .collect()
}

/// A part that arrived intact at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDone {
    pub index: u32,
    pub len: u64,
    /// Hex SHA-256 of the part's bytes.
    pub sha256: String,
    /// The destination's ETag for the part, without quotes (needed to complete the upload).
    pub etag: String,
}

/// The end-to-end checksum of a transfer made of `parts`: SHA-256 over the concatenated raw
/// 32-byte SHA-256 digests of the parts in index order, as `"{hex}-{number of parts}"`.
///
/// This is the idea of S3's composite checksums (a checksum of checksums, suffixed with the
/// part count): it can be computed from the parts alone, by whoever holds their records, without
/// reading the object again. It depends on the part size, which is fixed per transfer. Digests
/// that are not valid hex (never produced here) are hashed as text.
pub fn composite_sha256(parts: &[PartDone]) -> String {
    let mut sorted: Vec<&PartDone> = parts.iter().collect();
    sorted.sort_by_key(|p| p.index);
    let mut h = Sha256::new();
    for p in sorted {
        match hex::decode(&p.sha256) {
            Ok(raw) => h.update(raw),
            Err(_) => h.update(p.sha256.as_bytes()),
        }
    }
    format!("{}-{}", hex::encode(h.finalize()), parts.len())
}

/// The ETag S3 gives an object completed from `parts`: the MD5 of the concatenated raw MD5s of
/// the parts' ETags in index order, as `"{hex}-{number of parts}"`. `None` when a part ETag is
/// not a plain 32-hex-digit MD5 (encrypted uploads), so the object's ETag cannot be predicted.
/// A hub compares it with the destination's ETag before it believes a multipart copy is done.
pub fn multipart_etag(parts: &[PartDone]) -> Option<String> {
    let mut sorted: Vec<&PartDone> = parts.iter().collect();
    sorted.sort_by_key(|p| p.index);
    let mut h = Md5::new();
    for p in sorted {
        if !looks_like_md5(&p.etag) {
            return None;
        }
        h.update(hex::decode(&p.etag).ok()?);
    }
    Some(format!("{}-{}", hex::encode(h.finalize()), parts.len()))
}

/// Token-bucket arithmetic without a clock: the caller passes the time in.
#[derive(Debug, Clone)]
struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens that accumulate while idle.
    burst: f64,
    /// May go negative: a debt later reservations wait out.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec as f64;
        // A tenth of a second of traffic: enough to absorb scheduling jitter, small enough that
        // a transfer never runs noticeably above its limit.
        let burst = (rate / 10.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens at `now` and returns how long the caller must wait before using them.
    /// Reservations are granted in call order, so concurrent callers share the rate fairly and
    /// together never exceed it.
    fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            self.last = now;
        }
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A byte-rate limit shared by every part of a copy (wrap it in an [`Arc`]).
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<Mutex<TokenBucket>>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec`; `None` (or `Some(0)`) does not limit.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Self {
            bucket: bytes_per_sec
                .filter(|r| *r > 0)
                .map(|r| Mutex::new(TokenBucket::new(r, Instant::now()))),
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let wait = lock(bucket).reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How a copy runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOptions {
    /// Parts in flight at once (at least 1).
    pub concurrency: usize,
    /// Bytes per second over all parts; `None` does not limit.
    pub rate_limit: Option<u64>,
    /// Further attempts of a part after a transient failure or a failed verification.
    pub part_retries: u32,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            rate_limit: None,
            part_retries: 3,
        }
    }
}

/// What a running copy reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// `len` more bytes were sent (at most [`PROGRESS_STEP`] per event), for the current
    /// attempt of part `part` (`None`: a stream copy, which has no parts). Bytes of an attempt
    /// that is later retried were counted too, so the plain sum of `len` can exceed the
    /// object's size when a [`CopyEvent::PartRetry`] happened; [`super::progress::Progress`]
    /// counts only each part's current attempt.
    Bytes { part: Option<u32>, len: u64 },
    /// A part arrived and was verified.
    PartDone(PartDone),
    /// An attempt of a part failed; the part starts over (the bytes its attempt sent no
    /// longer count).
    PartRetry { index: u32, error: String },
}

/// The result of [`copy_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCopied {
    pub size: u64,
    /// Hex SHA-256 of the whole object.
    pub sha256: String,
}

/// Copies `parts` of `src_path` into the multipart upload `upload_id` of `dst`, at most
/// `opts.concurrency` at a time, each verified before it is reported done. Parts already done
/// are simply left out of `parts`; completing the upload is the caller's (it needs every part's
/// ETag, including those of earlier runs).
///
/// A transient failure or a failed verification retries the part up to `opts.part_retries`
/// times; any other failure, or a part out of retries, ends the copy with that error and stops
/// the other parts. Cancelling `cancel` stops everything promptly with
/// [`StorageError::Interrupted`]. Either way the upload stays open, to be resumed or aborted.
#[allow(clippy::too_many_arguments)]
pub async fn copy_parts(
    src: &Connector,
    src_path: &StoragePath,
    dst: &S3Multipart,
    upload_id: &str,
    parts: Vec<PartPlan>,
    opts: &CopyOptions,
    events: UnboundedSender<CopyEvent>,
    cancel: CancellationToken,
) -> Result<(), StorageError> {
    let source = Arc::new(ConnectorRanges {
        connector: src.clone(),
        path: src_path.clone(),
    });
    copy_parts_via(source, dst, upload_id, parts, opts, events, cancel).await
}

/// The best way to read parts of `path` on `connector` (whose settings are `service`): one
/// streamed ranged GET per part when it is an S3 object (fewer requests, no chunk held in
/// memory), the connector's chunked ranged reads otherwise.
pub fn range_source(
    service: &ServiceConfig,
    connector: &Connector,
    path: &StoragePath,
) -> Result<Arc<dyn RangeSource>, StorageError> {
    Ok(match service {
        ServiceConfig::S3(s3) => Arc::new(
            S3Multipart::for_settings(s3, path, connector.egress())?
                .with_budget(connector.budget().clone()),
        ),
        _ => Arc::new(ConnectorRanges {
            connector: connector.clone(),
            path: path.clone(),
        }),
    })
}

/// Like [`copy_parts`], reading each part's bytes from `source` (a connector, an S3 object or
/// another spoke relaying them).
pub async fn copy_parts_via(
    source: Arc<dyn RangeSource>,
    dst: &S3Multipart,
    upload_id: &str,
    parts: Vec<PartPlan>,
    opts: &CopyOptions,
    events: UnboundedSender<CopyEvent>,
    cancel: CancellationToken,
) -> Result<(), StorageError> {
    if let Some(p) = parts.iter().find(|p| p.part_number().is_none()) {
        return Err(StorageError::Other(format!(
            "part index {} is beyond S3's {MAX_PARTS} parts",
            p.index
        )));
    }
    // Body streams run inside the HTTP client's connection tasks; this token ends them as soon
    // as the copy is over, whichever way it ends.
    let stop = cancel.child_token();
    let _stop_on_exit = stop.clone().drop_guard();
    let ctx = Arc::new(PartCtx {
        source,
        dst: dst.clone(),
        upload_id: upload_id.to_owned(),
        limiter: Arc::new(RateLimiter::new(opts.rate_limit)),
        retries: opts.part_retries,
        events,
        stop,
        reading: Arc::new(Semaphore::new(opts.concurrency.max(1))),
    });
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(cancelled()),
        r = run_parts(ctx, parts, opts.concurrency.max(1)) => r,
    }
}

/// A stream of bytes from a source, failing with an I/O error.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A future returned by [`RangeSource::open`].
pub type OpenFuture<'a> =
    Pin<Box<dyn std::future::Future<Output = Result<ByteStream, StorageError>> + Send + 'a>>;

/// Where the bytes of parts come from: anything that streams a byte range of one object.
pub trait RangeSource: Send + Sync {
    /// Streams bytes `offset..offset + len` (exactly `len` of them, or the copy fails the
    /// attempt). Transient failures ([`StorageError::Unavailable`],
    /// [`StorageError::Interrupted`], ...) make the part retry.
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_>;
}

/// An object of any connector, read in chunks of ranged reads.
#[derive(Debug, Clone)]
pub struct ConnectorRanges {
    pub connector: Connector,
    pub path: StoragePath,
}

impl RangeSource for ConnectorRanges {
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_> {
        Box::pin(async move {
            let range = ByteRange {
                start: offset,
                len: Some(len),
            };
            let s = self
                .connector
                .read_chunked(&self.path, Some(range), PART_READ_CHUNK)
                .await?;
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

impl RangeSource for S3Multipart {
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_> {
        Box::pin(async move {
            let s = self
                .get_range(offset, len)
                .await?
                .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

/// Copies `src_path` to `dst_path` as one stream through [`Connector::write`] (nothing appears
/// at `dst_path` unless the whole copy succeeds), hashing and rate limiting on the way, then
/// checks the size the destination reports. The fallback for destinations without resumable
/// multipart uploads: an interruption starts over.
#[allow(clippy::too_many_arguments)]
pub async fn copy_stream(
    src: &Connector,
    src_path: &StoragePath,
    dst: &Connector,
    dst_path: &StoragePath,
    opts: &CopyOptions,
    events: UnboundedSender<CopyEvent>,
    cancel: CancellationToken,
) -> Result<StreamCopied, StorageError> {
    let opened = async {
        let size = src.stat_file(src_path).await?.size;
        let stream = src.read(src_path, None).await?;
        Ok::<_, StorageError>((size, stream))
    };
    let (size, stream) = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(cancelled()),
        r = opened => r?,
    };
    let source = Box::pin(stream) as ByteStream;
    copy_stream_from(
        source,
        Length::Exactly(size),
        dst,
        dst_path,
        opts,
        events,
        cancel,
    )
    .await
}

/// The start of the failure of a source of unknown length that went past its limit.
pub const OVER_LIMIT: &str = "the source has more than the limit of";

/// How many bytes a streamed source must yield.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Exactly this many: fewer or more fails the copy.
    Exactly(u64),
    /// Any number up to this many (a source of unknown length under a size limit).
    AtMost(u64),
}

/// Like [`copy_stream`], from any byte stream (a URL's body): `len` says how many bytes it must
/// yield; the destination must then hold exactly what went through.
pub async fn copy_stream_from(
    source: ByteStream,
    len: Length,
    dst: &Connector,
    dst_path: &StoragePath,
    opts: &CopyOptions,
    events: UnboundedSender<CopyEvent>,
    cancel: CancellationToken,
) -> Result<StreamCopied, StorageError> {
    let stop = cancel.child_token();
    let _stop_on_exit = stop.clone().drop_guard();
    let tally = Arc::new(Mutex::new(Tally::new(false)));
    let body = metered(
        source,
        len,
        None,
        tally.clone(),
        Arc::new(RateLimiter::new(opts.rate_limit)),
        events,
        stop,
    );
    let write = dst.write(dst_path, Box::pin(body));
    tokio::pin!(write);
    let written = tokio::select! {
        biased;
        () = cancel.cancelled() => {
            // The body now fails, so the writer aborts its upload; give it a moment to do so
            // rather than leaving staging data behind.
            let _ = tokio::time::timeout(ABORT_GRACE, &mut write).await;
            return Err(cancelled());
        }
        r = &mut write => r,
    };
    let t = lock(&tally);
    let entry = match written {
        Ok(entry) => entry,
        // A failed body explains the failed write better than the writer's wrapping of it.
        Err(e) => return Err(t.failure.clone().map_or(e, StorageError::Interrupted)),
    };
    // `write` stats the destination once the object is complete: this is its own account.
    let size = match len {
        Length::Exactly(n) => n,
        Length::AtMost(_) => t.count,
    };
    if t.count != size || entry.size != size {
        return Err(StorageError::Other(format!(
            "copy verification failed: the source has {size} bytes, {} were sent and the \
             destination holds {}",
            t.count, entry.size
        )));
    }
    Ok(StreamCopied {
        size,
        sha256: hex::encode(t.sha256.clone().finalize()),
    })
}

/// What every part of one [`copy_parts`] call shares.
struct PartCtx {
    source: Arc<dyn RangeSource>,
    dst: S3Multipart,
    upload_id: String,
    limiter: Arc<RateLimiter>,
    retries: u32,
    events: UnboundedSender<CopyEvent>,
    stop: CancellationToken,
    /// Slots for parts reading their source (`concurrency` of them; see [`run_parts`]).
    reading: Arc<Semaphore>,
}

/// How far from the end of its source a part hands its reading slot to the next part (at most
/// a quarter of the part): the next part's request and first byte (a round trip on a long
/// path, the provider's latency) overlap this part's last bytes and its upload's completion,
/// instead of leaving the path idle between parts.
pub const PIPELINE_LEAD: u64 = 4 << 20;

/// Runs the parts as tasks (hashing uses every core). At most `concurrency` parts read their
/// source at a time, but a part hands its slot on [`PIPELINE_LEAD`] bytes before its source
/// ends, so up to `2 × concurrency` parts are in flight (the extra ones finishing). Dropping
/// this future aborts the tasks.
async fn run_parts(
    ctx: Arc<PartCtx>,
    parts: Vec<PartPlan>,
    concurrency: usize,
) -> Result<(), StorageError> {
    let mut queue = parts.into_iter().peekable();
    let mut running = JoinSet::new();
    loop {
        let more = queue.peek().is_some() && running.len() < 2 * concurrency;
        tokio::select! {
            biased;
            slot = ctx.reading.clone().acquire_owned(), if more => {
                let slot = slot.map_err(|_| StorageError::Other("the part slots closed".into()))?;
                if let Some(plan) = queue.next() {
                    running.spawn(copy_part(ctx.clone(), plan, slot));
                }
            }
            joined = running.join_next(), if !running.is_empty() => match joined {
                None | Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(StorageError::Other(format!("a part task failed: {e}")))
                }
            },
            else => return Ok(()),
        }
    }
}

/// `source` (a part of `len` bytes), holding `slot` until at most [`PIPELINE_LEAD`] (or a
/// quarter of `len`) is left to read, or the stream ends or fails.
fn handing_on(source: SourceStream, len: u64, slot: OwnedSemaphorePermit) -> SourceStream {
    let lead = PIPELINE_LEAD.min(len / 4);
    Box::pin(futures::stream::unfold(
        (source, len, Some(slot)),
        move |(mut source, mut left, mut slot)| async move {
            let item = source.next().await;
            match &item {
                Some(Ok(b)) => {
                    left = left.saturating_sub(b.len() as u64);
                    if left <= lead {
                        slot = None;
                    }
                }
                _ => slot = None,
            }
            item.map(|i| (i, (source, left, slot)))
        },
    ))
}

/// Why one attempt of a part failed.
#[derive(Debug)]
enum AttemptError {
    Storage(StorageError),
    /// The part arrived, but not as sent.
    Mismatch(String),
}

impl From<StorageError> for AttemptError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl AttemptError {
    fn transient(&self) -> bool {
        matches!(
            self,
            Self::Mismatch(_)
                | Self::Storage(
                    StorageError::Unavailable(_)
                        | StorageError::RateLimited { .. }
                        | StorageError::BudgetSpent(_)
                        | StorageError::Interrupted(_)
                )
        )
    }

    fn describe(&self) -> String {
        match self {
            Self::Storage(e) => e.to_string(),
            Self::Mismatch(m) => format!("verification failed: {m}"),
        }
    }

    fn into_storage(self, index: u32) -> StorageError {
        match self {
            Self::Storage(e) => e,
            Self::Mismatch(m) => {
                StorageError::Other(format!("part {index} failed verification: {m}"))
            }
        }
    }
}

/// One part, with its retries; reports it done once verified. `slot` is its first attempt's
/// reading slot; a retry waits for one.
async fn copy_part(
    ctx: Arc<PartCtx>,
    plan: PartPlan,
    slot: OwnedSemaphorePermit,
) -> Result<(), StorageError> {
    let mut failures = 0u32;
    let mut first = Some(slot);
    loop {
        let slot = match first.take() {
            Some(s) => s,
            None => tokio::select! {
                biased;
                () = ctx.stop.cancelled() => return Err(cancelled()),
                s = ctx.reading.clone().acquire_owned() => {
                    s.map_err(|_| StorageError::Other("the part slots closed".into()))?
                }
            },
        };
        match attempt_part(&ctx, &plan, slot).await {
            Ok(done) => {
                tracing::trace!(part = plan.index, "part verified");
                let _ = ctx.events.send(CopyEvent::PartDone(done));
                return Ok(());
            }
            Err(e) if e.transient() && failures < ctx.retries && !ctx.stop.is_cancelled() => {
                failures += 1;
                let error = e.describe();
                tracing::debug!(part = plan.index, attempt = failures, %error, "part failed; retrying");
                let _ = ctx.events.send(CopyEvent::PartRetry {
                    index: plan.index,
                    error,
                });
                tokio::select! {
                    biased;
                    () = ctx.stop.cancelled() => return Err(cancelled()),
                    () = tokio::time::sleep(retry_delay(failures, &e)) => {}
                }
            }
            Err(e) => return Err(e.into_storage(plan.index)),
        }
    }
}

/// Exponential backoff from 250 ms, or the provider's `Retry-After` (bounded).
fn retry_delay(failures: u32, e: &AttemptError) -> Duration {
    if let AttemptError::Storage(StorageError::RateLimited {
        retry_after: Some(d),
    }) = e
    {
        return (*d).min(MAX_RETRY_DELAY);
    }
    if let AttemptError::Storage(StorageError::BudgetSpent(s)) = e {
        return s.retry_after.min(MAX_RETRY_DELAY);
    }
    let ms = 250u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms).min(MAX_RETRY_DELAY)
}

/// Streams one part from the source into its upload and verifies what arrived.
async fn attempt_part(
    ctx: &PartCtx,
    plan: &PartPlan,
    slot: OwnedSemaphorePermit,
) -> Result<PartDone, AttemptError> {
    let part_number = plan.part_number().ok_or_else(|| {
        StorageError::Other(format!("part index {} is beyond S3's parts", plan.index))
    })?;
    // Ends this attempt's body stream whichever way the attempt ends.
    let stop = ctx.stop.child_token();
    let _stop_on_exit = stop.clone().drop_guard();
    let source: SourceStream = if plan.len == 0 {
        Box::pin(futures::stream::empty())
    } else {
        handing_on(
            ctx.source.open(plan.offset, plan.len).await?,
            plan.len,
            slot,
        )
    };
    let tally = Arc::new(Mutex::new(Tally::new(true)));
    let body = metered(
        source,
        Length::Exactly(plan.len),
        Some(plan.index),
        tally.clone(),
        ctx.limiter.clone(),
        ctx.events.clone(),
        stop,
    );
    let sent = ctx
        .dst
        .upload_part(&ctx.upload_id, part_number, plan.len, body)
        .await;
    let t = lock(&tally);
    let etag = match sent {
        Ok(etag) => etag,
        Err(e) => {
            return Err(t
                .failure
                .clone()
                .map_or(e, StorageError::Interrupted)
                .into())
        }
    };
    if t.count != plan.len {
        return Err(AttemptError::Mismatch(format!(
            "{} bytes were sent for a part of {}",
            t.count, plan.len
        )));
    }
    if let Some(md5) = &t.md5 {
        let md5 = hex::encode(md5.clone().finalize());
        if looks_like_md5(&etag) && !etag.eq_ignore_ascii_case(&md5) {
            return Err(AttemptError::Mismatch(format!(
                "the destination's ETag {etag} is not the MD5 {md5} of the bytes sent"
            )));
        }
    }
    Ok(PartDone {
        index: plan.index,
        len: plan.len,
        sha256: hex::encode(t.sha256.clone().finalize()),
        etag,
    })
}

/// A plain part ETag is the hex MD5 of the part; encrypted (SSE-C, SSE-KMS) or otherwise
/// special ETags look different or are not comparable and are only checked by size.
fn looks_like_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

type SourceStream = ByteStream;

/// What went through a metered stream.
struct Tally {
    count: u64,
    sha256: Sha256,
    md5: Option<Md5>,
    /// Why the stream failed, if it did (the HTTP client reports only that the body failed).
    failure: Option<String>,
}

impl Tally {
    fn new(with_md5: bool) -> Self {
        Self {
            count: 0,
            sha256: Sha256::new(),
            md5: with_md5.then(Md5::new),
            failure: None,
        }
    }
}

/// State of a metered stream between pieces.
struct Meter {
    source: SourceStream,
    /// The rest of the current source chunk.
    pending: Bytes,
    /// Bytes the source must yield (exactly, or at most).
    expected: Length,
    /// The part whose attempt this is (`None`: a stream copy).
    part: Option<u32>,
    tally: Arc<Mutex<Tally>>,
    limiter: Arc<RateLimiter>,
    events: UnboundedSender<CopyEvent>,
    stop: CancellationToken,
    finished: bool,
}

/// The source re-cut into pieces of at most [`PROGRESS_STEP`] bytes, each rate limited, hashed,
/// counted and reported before it is yielded. It fails (rather than end) when `stop` fires or
/// the source yields other than `expected` bytes, so the request carrying it fails too.
fn metered(
    source: SourceStream,
    expected: Length,
    part: Option<u32>,
    tally: Arc<Mutex<Tally>>,
    limiter: Arc<RateLimiter>,
    events: UnboundedSender<CopyEvent>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static {
    let meter = Meter {
        source,
        pending: Bytes::new(),
        expected,
        part,
        tally,
        limiter,
        events,
        stop,
        finished: false,
    };
    futures::stream::unfold(meter, |mut m| async move {
        let item = m.next_piece().await?;
        Some((item, m))
    })
}

impl Meter {
    async fn next_piece(&mut self) -> Option<Result<Bytes, StorageError>> {
        if self.finished {
            return None;
        }
        while self.pending.is_empty() {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Some(self.fail("cancelled".into())),
                next = self.source.next() => next,
            };
            match next {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => return Some(self.fail(format!("reading the source failed: {e}"))),
                None => {
                    let count = lock(&self.tally).count;
                    match self.expected {
                        Length::Exactly(n) if count != n => {
                            return Some(
                                self.fail(format!("the source ended after {count} of {n} bytes")),
                            );
                        }
                        _ => {}
                    }
                    self.finished = true;
                    return None;
                }
            }
        }
        let piece = self.pending.split_to(self.pending.len().min(PROGRESS_STEP));
        let len = piece.len() as u64;
        if lock(&self.tally).count + len > self.expected.most() {
            return Some(self.fail(match self.expected {
                Length::Exactly(n) => format!("the source has more than the expected {n} bytes"),
                Length::AtMost(n) => format!("{OVER_LIMIT} {n} bytes"),
            }));
        }
        tokio::select! {
            biased;
            () = self.stop.cancelled() => return Some(self.fail("cancelled".into())),
            () = self.limiter.acquire(len) => {}
        }
        {
            let mut t = lock(&self.tally);
            t.count += len;
            t.sha256.update(&piece);
            if let Some(md5) = &mut t.md5 {
                md5.update(&piece);
            }
        }
        let _ = self.events.send(CopyEvent::Bytes {
            part: self.part,
            len,
        });
        Some(Ok(piece))
    }

    fn fail(&mut self, why: String) -> Result<Bytes, StorageError> {
        self.finished = true;
        lock(&self.tally).failure = Some(why.clone());
        Err(StorageError::Interrupted(why))
    }
}

impl Length {
    /// The most bytes allowed.
    fn most(self) -> u64 {
        match self {
            Length::Exactly(n) | Length::AtMost(n) => n,
        }
    }
}

fn cancelled() -> StorageError {
    StorageError::Interrupted("cancelled".into())
}

/// Locks a mutex whose data stays consistent even if a holder panicked (counters and hashers).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn part_sizes() {
        assert_eq!(choose_part_size(0, 0), MIN_PART_SIZE);
        assert_eq!(choose_part_size(100, MIB), MIN_PART_SIZE);
        assert_eq!(choose_part_size(1 << 30, 8 * MIB), 8 * MIB);
        // 100 GiB in 8 MiB parts would be 12,800 parts.
        let big = 100 * 1024 * MIB;
        let part = choose_part_size(big, 8 * MIB);
        assert_eq!(part, 11 * MIB);
        assert!(plan_parts(big, part).len() as u64 <= MAX_PARTS);
        // S3's largest object, 5 TiB.
        let huge = 5 * 1024 * 1024 * MIB;
        assert!(plan_parts(huge, choose_part_size(huge, 8 * MIB)).len() as u64 <= MAX_PARTS);
    }

    #[test]
    fn plans() {
        assert_eq!(
            plan_parts(0, 8 * MIB),
            vec![PartPlan {
                index: 0,
                offset: 0,
                len: 0
            }]
        );
        let p = plan_parts(10, 4);
        assert_eq!(
            p.iter()
                .map(|p| (p.index, p.offset, p.len))
                .collect::<Vec<_>>(),
            vec![(0, 0, 4), (1, 4, 4), (2, 8, 2)]
        );
        assert_eq!(p[2].part_number(), Some(3));
        let last = PartPlan {
            index: 9_999,
            offset: 0,
            len: 1,
        };
        assert_eq!(last.part_number(), Some(10_000));
        assert_eq!(
            PartPlan {
                index: 10_000,
                ..last
            }
            .part_number(),
            None
        );
        let text = serde_json::to_string(&p[1]).expect("serialises");
        assert_eq!(
            serde_json::from_str::<PartPlan>(&text).expect("parses"),
            p[1]
        );
    }

    fn done(index: u32, data: &[u8]) -> PartDone {
        PartDone {
            index,
            len: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            etag: String::new(),
        }
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        let part = |index: u32, data: &[u8]| PartDone {
            etag: hex::encode(Md5::digest(data)),
            ..done(index, data)
        };
        let (a, b) = (part(0, b"hello "), part(1, b"world"));
        let mut raw = Vec::new();
        raw.extend_from_slice(&Md5::digest(b"hello "));
        raw.extend_from_slice(&Md5::digest(b"world"));
        let want = format!("{}-2", hex::encode(Md5::digest(&raw)));
        assert_eq!(multipart_etag(&[b.clone(), a.clone()]), Some(want));
        // An ETag that is not an MD5 (SSE-KMS) makes the object's unpredictable.
        let kms = PartDone {
            etag: "not-an-md5".into(),
            ..b
        };
        assert_eq!(multipart_etag(&[a, kms]), None);
    }

    #[test]
    fn composite_checksum() {
        let a = done(0, b"hello ");
        let b = done(1, b"world");
        let mut raw = Vec::new();
        raw.extend_from_slice(&Sha256::digest(b"hello "));
        raw.extend_from_slice(&Sha256::digest(b"world"));
        let want = format!("{}-2", hex::encode(Sha256::digest(&raw)));
        assert_eq!(composite_sha256(&[a.clone(), b.clone()]), want);
        // Order of the records does not matter, the order of the parts does.
        assert_eq!(composite_sha256(&[b.clone(), a.clone()]), want);
        let swapped = [
            PartDone {
                index: 1,
                ..a.clone()
            },
            PartDone { index: 0, ..b },
        ];
        assert_ne!(composite_sha256(&swapped), want);
        assert!(composite_sha256(&[a]).ends_with("-1"));
        let text = serde_json::to_string(&swapped[0]).expect("serialises");
        assert_eq!(
            serde_json::from_str::<PartDone>(&text).expect("parses"),
            swapped[0]
        );
    }

    #[test]
    fn token_bucket_paces_reservations() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        // The burst (a tenth of a second) is free, then every byte costs a millisecond.
        assert_eq!(b.reserve(100, t0), Duration::ZERO);
        assert_eq!(b.reserve(500, t0), Duration::from_millis(500));
        // Reservations queue behind each other.
        assert_eq!(b.reserve(500, t0), Duration::from_millis(1000));
        // Time pays the debt off.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(b.reserve(0, t1), Duration::ZERO);
        // Idle time refills at most the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.reserve(100, t2), Duration::ZERO);
        let wait = b.reserve(1, t2);
        assert!(wait.abs_diff(Duration::from_millis(1)) < Duration::from_micros(1));
    }

    proptest! {
        #[test]
        fn plan_covers_object(size in 0u64..(1 << 40), part in 1u64..(1 << 36)) {
            // Keep the number of parts testable.
            let part = part.max(size / 5_000).max(1);
            let plan = plan_parts(size, part);
            prop_assert!(!plan.is_empty());
            let mut next = 0u64;
            for (i, p) in plan.iter().enumerate() {
                prop_assert_eq!(p.index as usize, i);
                prop_assert_eq!(p.offset, next);
                prop_assert!(p.len <= part);
                if i + 1 < plan.len() {
                    prop_assert_eq!(p.len, part);
                }
                prop_assert!(p.len > 0 || size == 0);
                next += p.len;
            }
            prop_assert_eq!(next, size);
        }

        #[test]
        fn chosen_part_sizes_fit_s3(size in 0u64..(6u64 << 40), preferred in 0u64..(1 << 34)) {
            let part = choose_part_size(size, preferred);
            prop_assert!(part >= MIN_PART_SIZE);
            prop_assert!(part >= preferred);
            prop_assert!(size.div_ceil(part) <= MAX_PARTS);
        }

        #[test]
        fn bucket_never_exceeds_rate(
            rate in 1_000u64..100_000_000,
            steps in proptest::collection::vec((0u64..1_000_000, 0u64..50_000), 1..50),
        ) {
            // Whatever the pattern of requests, bytes granted by time t never exceed the
            // burst plus rate * t.
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut granted = 0u64;
            for (n, gap_us) in steps {
                now += Duration::from_micros(gap_us);
                let wait = b.reserve(n, now);
                granted += n;
                let usable_at = (now + wait).duration_since(t0).as_secs_f64();
                let allowed = b.burst + rate as f64 * usable_at;
                prop_assert!(granted as f64 <= allowed * 1.000_001 + 1.0);
            }
        }
    }

    #[tokio::test]
    async fn limiter_limits_concurrent_callers() {
        let unlimited = RateLimiter::new(None);
        let started = Instant::now();
        unlimited.acquire(u64::MAX / 2).await;
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(RateLimiter::new(Some(0)).bucket.is_none());

        // Three tasks take 300 KiB each at 1 MiB/s: about (900 - 102) / 1024 s in all.
        let limiter = Arc::new(RateLimiter::new(Some(MIB)));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..3 {
            let l = limiter.clone();
            tasks.spawn(async move {
                for _ in 0..10 {
                    l.acquire(30 * 1024).await;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "took {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}
