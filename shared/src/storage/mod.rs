//! Storage connectors: one [`Connector`] per connected account, over Apache OpenDAL, with each
//! service behind a Cargo feature. With `shared::egress`, `shared::resolve` and `shared::quic`,
//! the only modules of `shared` that do IO.
//!
//! The connector adds what the API needs on top of OpenDAL: validated paths ([`StoragePath`]),
//! name-sorted paged listings that hide Switchyard's staging files, uploads that never leave a
//! partial file visible (atomic write, or a staging name plus rename), streaming range reads, and
//! errors mapped onto the few kinds the API distinguishes ([`StorageError`]).

pub mod azure_blocks;
pub mod checked;
mod connect;
mod etag;
pub mod multipart;
#[cfg(feature = "fs")]
mod nofollow;
pub mod path;
pub mod progress;
mod publish;
pub mod service;
pub mod sign;
pub mod transfer;
pub mod url;
mod webdav;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::{BytesRange, EntryMode, ErrorKind, Metadata, Operator};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use connect::ConnectOptions;
pub use etag::{cached_hashes, etag_list_matches, REMOTE_SETTLE};
pub use path::{
    is_reserved, normalize_name, validate_name, PathError, StoragePath, RESERVED_PREFIX,
};
pub use publish::{numbered, Publish, StagingKey, STAGING_DIR};
pub use service::{OAuthSettings, ServiceConfig, SettingsError, SERVICES};

/// Most entries one folder listing or recursive walk collects; larger folders are truncated
/// (and flagged) rather than exhausting memory.
pub const MAX_LISTING: usize = 100_000;

/// What a listed or stat'ed object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Folder,
}

/// Metadata of one file or folder.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: StoragePath,
    pub kind: EntryKind,
    pub size: u64,
    /// Unix milliseconds.
    pub modified: Option<i64>,
    pub etag: Option<String>,
    pub content_type: Option<String>,
}

/// A storage failure, reduced to what the API must tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("folder is not empty")]
    NotEmpty,
    #[error("expected a {expected}")]
    WrongKind { expected: &'static str },
    #[error("the provider refused access: {0}")]
    PermissionDenied(String),
    #[error("the provider rejected the account settings: {0}")]
    InvalidSettings(String),
    #[error("the provider is rate limiting requests")]
    RateLimited { retry_after: Option<Duration> },
    /// Our own pacing: the account's provider budget has no slot within the caller's wait
    /// (or the provider asked the whole cluster to stay away that long).
    #[error("the provider's request budget is spent")]
    BudgetSpent(#[from] crate::budget::BudgetSpent),
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider could not be reached at all (DNS, refused, TLS, timeout).
    #[error("cannot reach the storage provider at {host}: {cause}")]
    Unreachable { host: String, cause: String },
    /// The egress policy refused the provider's address (the SSRF guard).
    #[error("{0}")]
    EgressDenied(String),
    #[error("requested range is not satisfiable")]
    RangeNotSatisfiable,
    #[error("the file changed: its ETag no longer matches")]
    PreconditionFailed,
    #[error("not supported by this service: {0}")]
    Unsupported(String),
    #[error("the upload stream was interrupted: {0}")]
    Interrupted(String),
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error("storage error: {0}")]
    Other(String),
    /// The source of a copy failed for good: a URL that answers an error, that changed during
    /// the copy, or whose server stopped answering ranges. Retrying does not help.
    #[error("{0}")]
    Source(String),
}

impl From<opendal::Error> for StorageError {
    fn from(e: opendal::Error) -> Self {
        if let Some(denied) = egress_denial(&e) {
            return denied;
        }
        if let Some(spent) = budget_spent(&e) {
            return Self::BudgetSpent(spent);
        }
        match e.kind() {
            ErrorKind::NotFound => Self::NotFound,
            ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => Self::AlreadyExists,
            ErrorKind::IsADirectory => Self::WrongKind { expected: "file" },
            ErrorKind::NotADirectory => Self::WrongKind { expected: "folder" },
            ErrorKind::PermissionDenied => Self::PermissionDenied(provider_complaint(&e)),
            ErrorKind::ConfigInvalid => Self::InvalidSettings(provider_complaint(&e)),
            ErrorKind::RateLimited => Self::RateLimited {
                retry_after: provider_retry_after(&e.to_string()),
            },
            // Some services (WebDAV) report a 429 as "unexpected"; the response is in the context.
            _ if provider_status(&e.to_string()) == Some(429) => Self::RateLimited {
                retry_after: provider_retry_after(&e.to_string()),
            },
            ErrorKind::RangeNotSatisfied => Self::RangeNotSatisfiable,
            ErrorKind::Unsupported => Self::Unsupported(provider_complaint(&e)),
            // Temporary: retryable; persistent: still failing after the retry layer gave up
            // (connection refused, provider 5xx). Either way the provider, not us, is at fault.
            _ if e.is_temporary() || e.is_persistent() => Self::Unavailable(describe_error(&e)),
            _ => Self::Other(describe_error(&e)),
        }
    }
}

/// The budget's refusal, when it is what failed a request (the transport's error's source).
fn budget_spent(e: &opendal::Error) -> Option<crate::budget::BudgetSpent> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<crate::budget::BudgetSpent>() {
            return Some(*s);
        }
        cur = err.source();
    }
    None
}

/// The egress policy's refusal, when it is what failed a request (it travels as the source of
/// the transport's error).
fn egress_denial(e: &opendal::Error) -> Option<StorageError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<crate::egress::EgressError>() {
            if matches!(d, crate::egress::EgressError::Denied { .. }) {
                return Some(StorageError::EgressDenied(d.to_string()));
            }
        }
        cur = err.source();
    }
    None
}

/// An egress policy error as a storage error: a refused address, or a name that does not
/// resolve (unreachable).
pub(crate) fn egress_error(e: crate::egress::EgressError) -> StorageError {
    match &e {
        crate::egress::EgressError::Denied { .. } => StorageError::EgressDenied(e.to_string()),
        crate::egress::EgressError::Resolve { host, source } => StorageError::Unreachable {
            host: host.clone(),
            cause: format!("cannot resolve the name: {source}"),
        },
    }
}

/// A failed HTTP exchange with `host` as [`StorageError::Unreachable`] (or the egress refusal
/// that caused it), naming the cause without the URL.
pub fn unreachable(host: &str, e: &(dyn std::error::Error + 'static)) -> StorageError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut causes: Vec<String> = Vec::new();
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<crate::egress::EgressError>() {
            if matches!(d, crate::egress::EgressError::Denied { .. }) {
                return StorageError::EgressDenied(d.to_string());
            }
        }
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            causes.push(reqwest_kind(r).to_owned());
        } else if let Some(o) = err.downcast_ref::<opendal::Error>() {
            // Its message, not its display: the display carries the request's context.
            causes.push(o.message().to_owned());
        } else {
            causes.push(err.to_string());
        }
        cur = err.source();
    }
    // The innermost causes say what happened ("Connection refused", "invalid peer
    // certificate"); the outer ones only wrap them.
    causes.dedup();
    let cause = causes
        .iter()
        .rev()
        .take(2)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join(": ");
    StorageError::Unreachable {
        host: host.to_owned(),
        cause: cause.chars().take(300).collect(),
    }
}

/// What kind of failure a reqwest error is, in words that do not include its URL (which may
/// carry a presigned query).
fn reqwest_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "error connecting"
    } else if e.is_request() {
        "error sending the request"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "HTTP error"
    }
}

/// The host of the `url` an OpenDAL transport error names in its context.
fn error_host(e: &opendal::Error) -> Option<String> {
    let display = e.to_string();
    let rest = &display[display.find("url: ")? + 5..];
    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
    let url = reqwest::Url::parse(&rest[..end]).ok()?;
    url.host_str()
        .map(|h| h.trim_matches(['[', ']']).to_owned())
}

/// One line describing an OpenDAL error for logs and internal errors: kind, operation, the
/// provider's HTTP status and error code, and the underlying cause; never the provider's
/// response body (which an internal address could fill with anything) nor a backtrace.
pub(crate) fn describe_error(e: &opendal::Error) -> String {
    let mut out = e.kind().to_string();
    if let Some(complaint) = http_complaint(e) {
        out.push_str(": ");
        out.push_str(&complaint);
    } else if !e.message().is_empty() {
        out.push_str(": ");
        out.extend(e.message().chars().take(200));
    }
    let mut cur = std::error::Error::source(e);
    while let Some(src) = cur {
        out.push_str(": ");
        out.extend(src.to_string().chars().take(200));
        cur = src.source();
    }
    out.replace(['\n', '\r'], " ")
}

/// The provider's HTTP status, from the `response: Parts { status: N, ... }` context OpenDAL
/// attaches to HTTP errors (it has no typed accessor for it).
fn provider_status(display: &str) -> Option<u16> {
    let rest = &display[display.find("response: Parts { status: ")? + 26..];
    rest.get(..3)?.parse().ok()
}

/// The provider's `Retry-After` in seconds (the delta form), from the same context.
fn provider_retry_after(display: &str) -> Option<Duration> {
    let rest = &display[display.find("\"retry-after\": \"")? + 16..];
    let secs: u64 = rest[..rest.find('"')?].trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A byte range of a read: `start..` or `start..start+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: Option<u64>,
}

/// A connected storage account.
#[derive(Clone)]
pub struct Connector {
    op: Operator,
    service: &'static str,
    /// The same operator without the retry layer, for publishing renames whose failure means
    /// "the name is taken" (retrying those only delays moving on to the next name).
    publish_op: Operator,
    /// Where uploads go first when the service has no atomic write of its own.
    staging: Staging,
    /// The staging folder is known to exist (made once per connector, again if it vanished).
    staging_ready: Arc<AtomicBool>,
    /// How file versions get their ETags.
    tagging: etag::Tagging,
    /// The provider's host, named in network errors.
    endpoint_host: Option<String>,
    /// The SSRF policy its clients follow (side clients such as S3 multipart use it too).
    egress: crate::egress::EgressPolicy,
    /// HTTP requests sent through OpenDAL (0 on `fs` and SFTP).
    requests: Arc<std::sync::atomic::AtomicU64>,
    /// The provider budget its requests draw from (side clients draw from it too).
    budget: crate::budget::Budget,
}

#[derive(Clone)]
enum Staging {
    /// The service (or its OpenDAL writer) only makes an object visible when it is complete.
    Atomic,
    /// Local disk (the account root): our own streaming writer into the staging folder, then
    /// `rename` or `link` (see `publish.rs`).
    Fs(std::path::PathBuf),
    /// SFTP: write the staging object, then rename (without replace: an exclusive placeholder
    /// takes the name first, see `publish.rs`).
    Rename,
    /// WebDAV: a streaming PUT of our own (OpenDAL's WebDAV writer buffers whole files) to the
    /// staging object, then MOVE.
    Webdav(webdav::Client),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({})", self.service)
    }
}

/// What an account's connector can do, from OpenDAL's capability model of its service and
/// what this crate builds on it (the API shows it with `retrieve_full=true`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capabilities {
    /// The provider copies without the bytes passing through us.
    pub server_side_copy: bool,
    /// The provider renames natively (otherwise a rename is a copy and a delete).
    pub native_rename: bool,
    /// Ranged reads (resumed downloads, `Range`).
    pub range_reads: bool,
    /// Folders are objects of their own (otherwise they exist through what is in them).
    pub folders_are_objects: bool,
    /// Writes conditional on the current version, checked by the provider.
    pub conditional_writes: bool,
    /// The parts of an upload session on this service.
    pub parts: PartLimits,
}

/// The parts an upload session may have on a service.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PartLimits {
    /// Smallest part but the last, in bytes.
    pub min: u64,
    /// Largest part, in bytes.
    pub max: u64,
    /// Most parts of one upload.
    pub max_parts: u32,
}

impl PartLimits {
    /// The part size for an upload of `size` bytes (unknown: `None`): `preferred` within the
    /// limits, grown to a whole MiB so that the parts fit in `max_parts`; `None` when even the
    /// largest parts cannot hold it.
    pub fn part_size(&self, size: Option<u64>, preferred: u64) -> Option<u64> {
        const MIB: u64 = 1024 * 1024;
        let mut part = preferred.clamp(self.min.max(1), self.max);
        if let Some(size) = size {
            let needed = size.div_ceil(u64::from(self.max_parts));
            if needed > part {
                part = needed.div_ceil(MIB) * MIB;
            }
        }
        (part <= self.max).then_some(part)
    }
}

/// S3's multipart limits (also Google Cloud Storage's XML API).
pub const S3_PARTS: PartLimits = PartLimits {
    min: 5 * 1024 * 1024,
    max: 5 * 1024 * 1024 * 1024,
    max_parts: 10_000,
};
/// Parts kept as objects or at offsets of a staging file (any size; the count is the API's).
pub const STAGED_PARTS: PartLimits = PartLimits {
    min: 1,
    max: 5 * 1024 * 1024 * 1024,
    max_parts: 10_000,
};

fn entry_from(path: StoragePath, meta: &Metadata) -> Entry {
    Entry {
        path,
        kind: if meta.mode() == EntryMode::DIR {
            EntryKind::Folder
        } else {
            EntryKind::File
        },
        size: if meta.mode() == EntryMode::DIR {
            0
        } else {
            meta.content_length()
        },
        modified: meta
            .last_modified()
            .map(|t| t.into_inner().as_millisecond()),
        etag: meta.etag().map(|s| s.trim_matches('"').to_owned()),
        content_type: meta.content_type().map(str::to_owned),
    }
}

/// Turns an OpenDAL listing path (relative to the root, folders with a trailing `/`) into a
/// validated path; names we cannot represent safely are skipped.
fn listed_path(raw: &str) -> Option<StoragePath> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    StoragePath::parse(trimmed).ok()
}

impl Connector {
    /// The egress policy (SSRF guard) this connector's clients follow.
    pub fn egress(&self) -> &crate::egress::EgressPolicy {
        &self.egress
    }

    /// The provider budget of this account: side clients (S3 multipart, the WebDAV writer, the
    /// pass-through) draw from it for each request too.
    pub fn budget(&self) -> &crate::budget::Budget {
        &self.budget
    }

    /// HTTP requests this connector (and its clones) sent through OpenDAL so far.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the provider's ETag changes with every write (S3, Azure Blob, GCS), so it
    /// tells versions apart on its own.
    pub fn strong_etags(&self) -> bool {
        self.tagging.provider()
    }

    /// Whether the service lists every object below the root in one flat, key-ordered
    /// listing (object stores), rather than folder by folder.
    pub fn lists_flat(&self) -> bool {
        matches!(self.service, "s3" | "azblob" | "gcs")
    }

    /// Every object below the root in the provider's key order (object stores list flat,
    /// in byte order of the key), page by page as the provider sends them: never held whole.
    /// Each item is the listed key (folders with a trailing `/`) and the entry; reserved
    /// names and names that are not valid paths are skipped.
    pub async fn list_flat(
        &self,
    ) -> Result<
        impl Stream<Item = Result<(String, Entry), StorageError>> + Send + Unpin + 'static,
        StorageError,
    > {
        let lister = self.op.lister_with("/").recursive(true).await?;
        Ok(lister.map_err(StorageError::from).try_filter_map(|e| {
            let out = listed_path(e.path())
                .filter(|p| !p.as_str().split('/').any(path::is_reserved))
                .map(|p| (e.path().to_owned(), entry_from(p, e.metadata())));
            futures::future::ready(Ok(out))
        }))
    }

    /// The API service name (`fs`, `s3`, ...).
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Verifies the account settings with a real call to the provider: lists the root, or on
    /// WebDAV asks for the root's properties (the protocol's own request), which proves the
    /// endpoint speaks WebDAV and the root is an existing folder.
    pub async fn check(&self) -> Result<(), StorageError> {
        let host = self.endpoint_host.as_deref();
        if let Staging::Webdav(client) = &self.staging {
            return client
                .check_root(host.unwrap_or("the WebDAV endpoint"))
                .await;
        }
        match self.op.lister_with("/").limit(1).await {
            Ok(mut l) => match l.try_next().await {
                Ok(_) => Ok(()),
                Err(e) => Err(check_error(e, host)),
            },
            Err(e) => Err(check_error(e, host)),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        let cap = self.op.info().capability();
        Capabilities {
            server_side_copy: cap.copy,
            native_rename: cap.rename,
            range_reads: cap.read,
            folders_are_objects: cap.create_dir,
            conditional_writes: cap.write_with_if_match,
            parts: match self.service {
                "s3" => S3_PARTS,
                "azblob" => azure_blocks::BLOCK_PARTS,
                _ => STAGED_PARTS,
            },
        }
    }

    /// Metadata of a file or folder; the root is always a folder.
    pub async fn stat(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        if path.is_root() {
            return Ok(Entry {
                path: StoragePath::root(),
                kind: EntryKind::Folder,
                size: 0,
                modified: None,
                etag: None,
                content_type: None,
            });
        }
        match self.op.stat(path.file_key()).await {
            Ok(meta) => Ok(entry_from(path.clone(), &meta)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Object stores report a folder only under its trailing-slash key.
                let meta = self.op.stat(&path.dir_key()).await?;
                Ok(entry_from(path.clone(), &meta))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Metadata of `path`, which must be a folder.
    pub async fn stat_folder(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        let e = self.stat(path).await?;
        if e.kind != EntryKind::Folder {
            return Err(StorageError::WrongKind { expected: "folder" });
        }
        Ok(e)
    }

    /// Metadata of `path`, which must be a file.
    pub async fn stat_file(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        if path.is_root() {
            return Err(StorageError::WrongKind { expected: "file" });
        }
        let meta = self.op.stat(path.file_key()).await?;
        if meta.mode() == EntryMode::DIR {
            return Err(StorageError::WrongKind { expected: "file" });
        }
        Ok(entry_from(path.clone(), &meta))
    }

    /// The children of `folder`, sorted by name, hiding reserved names. The bool is true when
    /// the folder had more than [`MAX_LISTING`] entries and the listing was cut.
    pub async fn list(&self, folder: &StoragePath) -> Result<(Vec<Entry>, bool), StorageError> {
        let (mut v, cut) = self.collect_limited(folder, false, MAX_LISTING).await?;
        v.sort_by(|a, b| a.path.name().cmp(b.path.name()));
        Ok((v, cut))
    }

    /// Every object below `folder` (recursive), hiding reserved names, capped at `limit`.
    pub async fn walk(
        &self,
        folder: &StoragePath,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let (mut v, cut) = self.collect_limited(folder, true, limit).await?;
        v.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((v, cut))
    }

    async fn collect_limited(
        &self,
        folder: &StoragePath,
        recursive: bool,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let dir = folder.dir_key();
        let mut lister = self.op.lister_with(&dir).recursive(recursive).await?;
        let mut out = Vec::new();
        let mut missing_meta = Vec::new();
        while let Some(entry) = lister.try_next().await? {
            let Some(path) = listed_path(entry.path()) else {
                continue;
            };
            if path == *folder || path.as_str().split('/').any(path::is_reserved) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
            let meta = entry.metadata();
            if meta.mode() == EntryMode::FILE && meta.last_modified().is_none() {
                missing_meta.push(out.len());
            }
            out.push(entry_from(path, meta));
        }
        // Some services list names only; fill in sizes and times with a stat each.
        for i in missing_meta {
            if let Ok(meta) = self.op.stat(out[i].path.file_key()).await {
                let path = out[i].path.clone();
                out[i] = entry_from(path, &meta);
            }
        }
        Ok((out, false))
    }

    /// True when `path` exists as a file or folder.
    pub async fn exists(&self, path: &StoragePath) -> Result<bool, StorageError> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a folder (its parent must exist).
    pub async fn create_folder(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        self.op.create_dir(&path.dir_key()).await?;
        self.stat(path).await
    }

    /// Streams a file's bytes (optionally a range) with bounded memory.
    pub async fn read(
        &self,
        path: &StoragePath,
        range: Option<ByteRange>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, StorageError>
    {
        self.read_chunked(path, range, READ_CHUNK).await
    }

    /// Like [`Connector::read`], fetching at most `chunk` bytes per provider request (and
    /// holding at most that much): transfers running many parts at once use small chunks.
    pub async fn read_chunked(
        &self,
        path: &StoragePath,
        range: Option<ByteRange>,
        chunk: usize,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, StorageError>
    {
        let reader = self
            .op
            .reader_with(path.file_key())
            .chunk(chunk.max(64 * 1024))
            .await?;
        let range = range.map_or(BytesRange::new(0, None), |r| {
            BytesRange::new(r.start, r.len)
        });
        Ok(reader.into_bytes_stream(range).await?)
    }

    /// Writes `body` to `path` (replacing it), never leaving a partial file visible under
    /// `path`: if the stream fails, the upload is aborted and nothing appears.
    pub async fn write<S, E>(&self, path: &StoragePath, body: S) -> Result<Entry, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        self.write_with(path, body, Publish::Replace, None).await
    }

    /// Streams `body` into OpenDAL's writer for `key` (multipart on object stores, at most
    /// [`WRITE_CONCURRENCY`] parts of [`WRITE_CHUNK`] in flight); `exclusive` makes the
    /// provider refuse to replace an existing object (`If-None-Match: *`).
    async fn write_direct<S, E>(
        &self,
        key: &str,
        mut body: S,
        exclusive: bool,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut w = self
            .op
            .writer_with(key)
            .chunk(WRITE_CHUNK)
            .concurrent(WRITE_CONCURRENCY)
            .if_not_exists(exclusive)
            .await?;
        while let Some(next) = body.next().await {
            match next {
                Ok(bytes) => {
                    if let Err(e) = w.write(bytes).await {
                        let _ = w.abort().await;
                        return Err(e.into());
                    }
                }
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(StorageError::Interrupted(e.to_string()));
                }
            }
        }
        if let Err(e) = w.close().await {
            // A refused completion (`If-None-Match`) must not leave a multipart upload behind.
            let _ = w.abort().await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Deletes a file.
    pub async fn delete_file(&self, path: &StoragePath) -> Result<(), StorageError> {
        self.stat_file(path).await?;
        self.op.delete(path.file_key()).await?;
        Ok(())
    }

    /// Deletes a folder; without `recursive` a non-empty folder is refused.
    pub async fn delete_folder(
        &self,
        path: &StoragePath,
        recursive: bool,
    ) -> Result<(), StorageError> {
        if path.is_root() {
            return Err(StorageError::PermissionDenied(
                "the root folder cannot be deleted".into(),
            ));
        }
        self.stat_folder(path).await?;
        if recursive {
            self.op.delete_with(&path.dir_key()).recursive(true).await?;
        } else {
            let mut l = self.op.lister_with(&path.dir_key()).await?;
            while let Some(e) = l.try_next().await? {
                if listed_path(e.path()).is_some_and(|p| p != *path) {
                    return Err(StorageError::NotEmpty);
                }
            }
            self.op.delete(&path.dir_key()).await?;
        }
        Ok(())
    }

    /// Copies a file within this account, replacing the target.
    pub async fn copy_file(
        &self,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<Entry, StorageError> {
        self.copy_file_with(from, to, Publish::Replace).await
    }

    /// Copies a file within this account, taking its name as `publish` says: server-side on
    /// object stores that can (conditional on the name being free when it must not replace),
    /// else streamed through the staged write path.
    pub async fn copy_file_with(
        &self,
        from: &StoragePath,
        to: &StoragePath,
        publish: Publish,
    ) -> Result<Entry, StorageError> {
        let cap = self.op.info().capability();
        let exclusive = matches!(publish, Publish::NoReplace { .. });
        if self.publishes_in_place() && cap.copy && (!exclusive || cap.copy_with_if_not_exists) {
            self.op
                .copy_with(from.file_key(), to.file_key())
                .if_not_exists(exclusive)
                .await?;
            self.stat_file(to).await
        } else {
            let src = self.read(from, None).await?;
            self.write_with(to, Box::pin(src), publish, None).await
        }
    }

    /// Copies a file from another account by streaming it through this process.
    pub async fn copy_file_from(
        &self,
        src: &Connector,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<Entry, StorageError> {
        self.copy_file_from_with(src, from, to, Publish::Replace)
            .await
    }

    /// Like [`Connector::copy_file_from`], taking the name as `publish` says.
    pub async fn copy_file_from_with(
        &self,
        src: &Connector,
        from: &StoragePath,
        to: &StoragePath,
        publish: Publish,
    ) -> Result<Entry, StorageError> {
        let stream = src.read(from, None).await?;
        self.write_with(to, Box::pin(stream), publish, None).await
    }

    /// Copies a folder tree (within this account or from `src`), bounded by [`MAX_LISTING`].
    pub async fn copy_folder_from(
        &self,
        src: &Connector,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<Entry, StorageError> {
        if to.starts_with(from) && std::ptr::eq(self, src) {
            return Err(StorageError::PermissionDenied(
                "a folder cannot be copied into itself".into(),
            ));
        }
        let (entries, cut) = src.walk(from, MAX_LISTING).await?;
        if cut {
            return Err(StorageError::Unsupported(format!(
                "folder has more than {MAX_LISTING} entries"
            )));
        }
        self.create_folder_all(to).await?;
        for e in entries {
            let Some(target) = e.path.rebase(from, to) else {
                continue;
            };
            match e.kind {
                EntryKind::Folder => {
                    self.create_folder_all(&target).await?;
                }
                EntryKind::File => {
                    if let Some(p) = target.parent() {
                        self.create_folder_all(&p).await?;
                    }
                    if std::ptr::eq(self, src) {
                        self.copy_file(&e.path, &target).await?;
                    } else {
                        self.copy_file_from(src, &e.path, &target).await?;
                    }
                }
            }
        }
        self.stat_folder(to).await
    }

    async fn create_folder_all(&self, path: &StoragePath) -> Result<(), StorageError> {
        if path.is_root() {
            return Ok(());
        }
        self.op.create_dir(&path.dir_key()).await?;
        Ok(())
    }

    /// Renames or moves a file or folder within this account; a taken name is
    /// [`StorageError::AlreadyExists`] (for files decided atomically at the provider).
    pub async fn rename(
        &self,
        from: &StoragePath,
        to: &StoragePath,
        kind: EntryKind,
    ) -> Result<Entry, StorageError> {
        if self.exists(to).await? {
            return Err(StorageError::AlreadyExists);
        }
        let cap = self.op.info().capability();
        match kind {
            // A file never replaces one that took the name after the check above.
            EntryKind::File => self.rename_file_new(from, to).await?,
            EntryKind::Folder => {
                if to.starts_with(from) {
                    return Err(StorageError::PermissionDenied(
                        "a folder cannot be moved into itself".into(),
                    ));
                }
                if cap.rename && self.service != "webdav" {
                    self.op.rename(from.file_key(), to.file_key()).await?;
                } else {
                    self.copy_folder_from(self, from, to).await?;
                    self.op.delete_with(&from.dir_key()).recursive(true).await?;
                }
            }
        }
        self.stat(to).await
    }
}

/// Credential checks: a refused login, a missing bucket/container or a root that is not there
/// all mean "these settings do not work"; a provider that cannot be reached is a network
/// failure naming the host and the cause, not a credentials problem.
fn check_error(e: opendal::Error, host: Option<&str>) -> StorageError {
    if let Some(denied) = egress_denial(&e) {
        return denied;
    }
    if http_complaint(&e).is_none() && e.kind() == ErrorKind::Unexpected {
        // No HTTP answer: the request never got one (DNS, refused, TLS, timeout).
        if let Some(host) = host.map(str::to_owned).or_else(|| error_host(&e)) {
            return match unreachable(&host, &e) {
                StorageError::Unreachable { host, cause } if cause.is_empty() => {
                    StorageError::Unreachable {
                        host,
                        cause: describe_error(&e),
                    }
                }
                other => other,
            };
        }
    }
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ConfigInvalid | ErrorKind::NotFound => {
            StorageError::InvalidSettings(provider_complaint(&e))
        }
        ErrorKind::Unexpected if provider_status(&e.to_string()).is_some_and(|s| s < 500) => {
            StorageError::InvalidSettings(provider_complaint(&e))
        }
        _ => e.into(),
    }
}

/// What the provider said, fit for a client: its HTTP status and error code (S3 and Azure
/// `<Code>`, a JSON `code`/`error`), never its raw body. Errors without an HTTP answer
/// (OpenDAL's own, SFTP's) keep their message, which the provider did not write.
fn provider_complaint(e: &opendal::Error) -> String {
    if let Some(c) = http_complaint(e) {
        return c;
    }
    let short: String = e.message().chars().take(300).collect();
    if short.is_empty() {
        format!("{:?}", e.kind())
    } else {
        short
    }
}

/// "the provider answered 403 Forbidden (AccessDenied)" for errors carrying an HTTP answer.
fn http_complaint(e: &opendal::Error) -> Option<String> {
    let status = provider_status(&e.to_string())?;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("the provider answered {status} {reason}");
    if let Some(code) = provider_error_code(e.message()) {
        out.push_str(&format!(" ({code})"));
    }
    Some(out.trim_end().to_owned())
}

/// The provider's machine-readable error code in an error body: S3/Azure XML `<Code>`,
/// OpenDAL's parsed `code: "..."`, or a JSON `"code"`/`"error"` string. Only a short token of
/// letters, digits and `._-` is accepted, so no free text of the body gets through.
fn provider_error_code(body: &str) -> Option<String> {
    let candidates = [
        ("<Code>", "<"),
        ("code: \"", "\""),
        ("\"code\":\"", "\""),
        ("\"code\": \"", "\""),
        ("\"error\":\"", "\""),
        ("\"error\": \"", "\""),
    ];
    for (start, end) in candidates {
        let Some(i) = body.find(start) else { continue };
        let rest = &body[i + start.len()..];
        let Some(j) = rest.find(end) else { continue };
        let code = &rest[..j];
        if (1..=64).contains(&code.len())
            && code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Some(code.to_owned());
        }
    }
    None
}

/// Read chunk: large enough to amortise per-call overhead, small enough to bound memory.
const READ_CHUNK: usize = 4 * 1024 * 1024;
/// Write chunk: also the S3 multipart part size (S3 requires at least 5 MiB).
const WRITE_CHUNK: usize = 8 * 1024 * 1024;
/// Parts in flight per upload; with [`WRITE_CHUNK`] this bounds an upload's buffers.
const WRITE_CONCURRENCY: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_sizes_fit_the_service() {
        // The preferred size, raised to S3's minimum.
        assert_eq!(S3_PARTS.part_size(None, MIB), Some(5 * MIB));
        assert_eq!(S3_PARTS.part_size(Some(100), 16 * MIB), Some(16 * MIB));
        // Grown (to a whole MiB) when 10,000 parts of it would not hold the file.
        assert_eq!(
            S3_PARTS.part_size(Some(1024 * 1024 * MIB), 16 * MIB),
            Some(105 * MIB)
        );
        // Past 10,000 parts of the largest size: none fits.
        assert_eq!(
            S3_PARTS.part_size(Some(10_000 * 5 * 1024 * MIB + 1), 16 * MIB),
            None
        );
        assert_eq!(STAGED_PARTS.part_size(None, 1), Some(1));
        assert_eq!(STAGED_PARTS.part_size(Some(0), 16 * MIB), Some(16 * MIB));
    }
}
