//! Strong entity tags for files, for HTTP conditional requests: the provider's ETag where it
//! changes with the content (S3, Azure Blob, GCS), otherwise a SHA-256 of the content, computed
//! by streaming the file and cached by file version so that an unchanged file is not hashed
//! again. Never size + modification time: two versions of a file can share both.
//!
//! The cache is keyed by the storage (a digest of the account settings), the path, the size,
//! the modification time and, on local disks, the device, inode and ctime in nanoseconds (a
//! replace through Switchyard renames a new inode into place, and ctime cannot be set by
//! users). On SFTP and WebDAV the time has one-second resolution and there is no inode, so a
//! hash is cached only once the file's modification time is [`REMOTE_SETTLE`] old: a write
//! landing in the same second as the version we hashed would otherwise go unnoticed (git's
//! "racily clean" problem). A remote server whose clock runs more than that behind ours, or a
//! tool that writes same-size content and then sets the old mtime back, defeats the cache on
//! those two services; local disks are exact.

use super::{Connector, Entry, StorageError, StoragePath};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most cached hashes (each about 200 bytes): bounds the cache at a few megabytes.
const CACHE_ENTRIES: usize = 50_000;
/// Age a local file's ctime must have before its hash is cached.
const LOCAL_SETTLE: Duration = Duration::from_secs(1);
/// Age a remote file's mtime (one-second resolution) must have before its hash is cached.
pub const REMOTE_SETTLE: Duration = Duration::from_secs(5);
/// Hash attempts when the file changes while it is being hashed.
const HASH_TRIES: usize = 3;

/// How a connector tags file versions.
#[derive(Clone)]
pub(crate) struct Tagging {
    /// The provider's ETag changes whenever the content does: S3 (the MD5 of a single PUT or
    /// the digest of the parts of a multipart upload), Azure Blob and GCS (a new value per
    /// write). Otherwise (and for an object the provider sent no ETag for) we hash.
    provider: bool,
    /// Names the storage in cache keys: a digest of the account settings.
    scope: Arc<str>,
    /// Set for local disks, whose inode and ctime make the version key exact.
    fs_root: Option<PathBuf>,
}

impl Tagging {
    /// Whether the provider's ETag changes with every write.
    pub(crate) fn provider(&self) -> bool {
        self.provider
    }

    pub(crate) fn for_service(cfg: &super::ServiceConfig) -> Self {
        use super::ServiceConfig as S;
        let settings = serde_json::to_vec(cfg).unwrap_or_default();
        Tagging {
            provider: matches!(cfg, S::S3(_) | S::Azblob(_) | S::Gcs(_)),
            scope: hex::encode(&Sha256::digest(&settings)[..16]).into(),
            fs_root: match cfg {
                S::Fs(fs) => Some(PathBuf::from(&fs.root)),
                _ => None,
            },
        }
    }
}

/// One version of one file.
#[derive(Clone, PartialEq, Eq, Hash)]
struct VersionKey {
    scope: Arc<str>,
    path: String,
    size: u64,
    mtime_ns: i128,
    /// Device, inode and ctime (ns) on local disks.
    inode: Option<(u64, u64, i128)>,
}

/// A bounded map with two generations: lookups promote entries from the old generation; when
/// the current one is full the old one is dropped. Approximates LRU with O(1) work.
struct Generations {
    current: HashMap<VersionKey, [u8; 32]>,
    previous: HashMap<VersionKey, [u8; 32]>,
}

fn cache() -> &'static Mutex<Generations> {
    static CACHE: OnceLock<Mutex<Generations>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(Generations {
            current: HashMap::new(),
            previous: HashMap::new(),
        })
    })
}

impl Generations {
    fn get(&mut self, k: &VersionKey) -> Option<[u8; 32]> {
        if let Some(h) = self.current.get(k) {
            return Some(*h);
        }
        let h = self.previous.remove(k)?;
        self.insert(k.clone(), h);
        Some(h)
    }

    fn insert(&mut self, k: VersionKey, h: [u8; 32]) {
        if self.current.len() >= CACHE_ENTRIES / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(k, h);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Generations> {
    // The map holds no invariant a panicking holder could break half-way.
    cache().lock().unwrap_or_else(|p| p.into_inner())
}

/// The hash under way for each version (the slot holds its result once done); an entry lives
/// only while its first hasher runs.
type Flight = Arc<tokio::sync::Mutex<Option<[u8; 32]>>>;

fn flights() -> std::sync::MutexGuard<'static, HashMap<VersionKey, Flight>> {
    static FLIGHTS: OnceLock<Mutex<HashMap<VersionKey, Flight>>> = OnceLock::new();
    FLIGHTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn in_flight(key: &VersionKey) -> Flight {
    flights().entry(key.clone()).or_default().clone()
}

/// Number of hashes in the cache (for tests and metrics).
pub fn cached_hashes() -> usize {
    let g = lock();
    g.current.len() + g.previous.len()
}

/// A strong ETag (`"..."`) from a raw provider value.
fn quoted(raw: &str) -> String {
    format!("\"{}\"", raw.trim_matches('"'))
}

impl Connector {
    /// True when this connector's ETags are the provider's own, so conditional writes can be
    /// handed to the provider ([`Connector::write_if_match`], [`Connector::delete_file_if_match`]).
    pub fn provider_etags(&self) -> bool {
        self.tagging.provider
    }

    /// The ETag of `e` when it costs nothing: the provider's, or a hash already cached for this
    /// version. A plain download of a file that kept changing while it was hashed falls back
    /// on this rather than failing.
    pub async fn known_etag(&self, e: &Entry) -> Option<String> {
        if self.tagging.provider {
            return e.etag.as_deref().filter(|t| !t.is_empty()).map(quoted);
        }
        let (scope, fs_root) = (&self.tagging.scope, self.tagging.fs_root.as_deref());
        let key = self.version_key(scope, fs_root, e).await.ok()?;
        lock().get(&key).map(|h| quoted(&hex::encode(h)))
    }

    /// The strong ETag (quoted) of the file `e` (from [`Connector::stat_file`]): the
    /// provider's, or the SHA-256 of the content (cached per version; hashing streams the file
    /// with bounded memory).
    pub async fn etag(&self, e: &Entry) -> Result<String, StorageError> {
        if self.tagging.provider {
            if let Some(t) = e.etag.as_deref().filter(|t| !t.is_empty()) {
                return Ok(quoted(t));
            }
        }
        let (scope, fs_root) = (&self.tagging.scope, self.tagging.fs_root.as_deref());
        let mut key = self.version_key(scope, fs_root, e).await?;
        if let Some(h) = lock().get(&key) {
            return Ok(quoted(&hex::encode(h)));
        }
        // One hash per version at a time: concurrent requests for a version nobody has hashed
        // yet (200 clients fetching a new file) wait for the first one's result instead of
        // each reading the whole file.
        let flight = in_flight(&key);
        let mut shared = flight.lock().await;
        if let Some(h) = *shared {
            return Ok(quoted(&hex::encode(h)));
        }
        let first = key.clone();
        let hashed = self.hash_version(&e.path, &mut key).await;
        if let Ok(h) = &hashed {
            if key == first {
                *shared = Some(*h);
            }
        }
        flights().remove(&first);
        hashed.map(|h| quoted(&hex::encode(h)))
    }

    /// Hashes the file at `path`, whose version is `key` (updated when the file changes while
    /// it is read, up to [`HASH_TRIES`] times); caches the hash once the version is settled.
    async fn hash_version(
        &self,
        path: &StoragePath,
        key: &mut VersionKey,
    ) -> Result<[u8; 32], StorageError> {
        let (scope, fs_root) = (&self.tagging.scope, self.tagging.fs_root.as_deref());
        for _ in 0..HASH_TRIES {
            let started = SystemTime::now();
            let hash = self.hash_content(path).await?;
            // The file must not have changed while we read it: same version before and after.
            let now = self.stat_file(path).await?;
            let after = self.version_key(scope, fs_root, &now).await?;
            if after != *key {
                *key = after;
                continue;
            }
            if settled(key, started) {
                lock().insert(key.clone(), hash);
            }
            return Ok(hash);
        }
        Err(StorageError::Unavailable(
            "the file kept changing while its ETag was computed".into(),
        ))
    }

    /// Replaces the file at `path` with `body` only if its provider ETag is still `etag`: the
    /// provider checks the condition when it commits the object (S3: `If-Match` on
    /// `PutObject` and on `CompleteMultipartUpload`), so no write can slip in between our
    /// check and the replace. Only for connectors with [`Connector::provider_etags`].
    pub async fn write_if_match<S, E>(
        &self,
        path: &StoragePath,
        etag: &str,
        mut body: S,
    ) -> Result<Entry, StorageError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let cap = self.op.info().capability();
        if !self.tagging.provider || !cap.write_with_if_match {
            return Err(StorageError::Unsupported(
                "conditional writes on this service".into(),
            ));
        }
        let mut w = self
            .op
            .writer_with(path.file_key())
            .chunk(super::WRITE_CHUNK)
            .concurrent(super::WRITE_CONCURRENCY)
            .if_match(&quoted(etag))
            .await
            .map_err(precondition)?;
        while let Some(next) = body.next().await {
            let res = match next {
                Ok(bytes) => w.write(bytes).await.map_err(precondition),
                Err(e) => Err(StorageError::Interrupted(e.to_string())),
            };
            if let Err(e) = res {
                let _ = w.abort().await;
                return Err(e);
            }
        }
        w.close().await.map_err(precondition)?;
        self.stat_file(path).await
    }

    /// Deletes the file at `path` only if its provider ETag is still `etag` (S3: `If-Match` on
    /// `DeleteObject`). Only for connectors with [`Connector::provider_etags`].
    pub async fn delete_file_if_match(
        &self,
        path: &StoragePath,
        etag: &str,
    ) -> Result<(), StorageError> {
        let cap = self.op.info().capability();
        if !self.tagging.provider || !cap.delete_with_if_match {
            return Err(StorageError::Unsupported(
                "conditional deletes on this service".into(),
            ));
        }
        self.op
            .delete_with(path.file_key())
            .if_match(&quoted(etag))
            .await
            .map_err(precondition)
    }

    /// SHA-256 of a file's content, streamed.
    async fn hash_content(&self, path: &StoragePath) -> Result<[u8; 32], StorageError> {
        let mut stream = Box::pin(self.read(path, None).await?);
        let mut h = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StorageError::Unavailable(e.to_string()))?;
            h.update(&chunk);
        }
        Ok(h.finalize().into())
    }

    async fn version_key(
        &self,
        scope: &Arc<str>,
        fs_root: Option<&std::path::Path>,
        e: &Entry,
    ) -> Result<VersionKey, StorageError> {
        let mut key = VersionKey {
            scope: scope.clone(),
            path: e.path.as_str().to_owned(),
            size: e.size,
            mtime_ns: i128::from(e.modified.unwrap_or(0)) * 1_000_000,
            inode: None,
        };
        if let Some(root) = fs_root {
            use std::os::unix::fs::MetadataExt;
            // Never through a link: the connector refuses those (`nofollow`).
            let m = tokio::fs::symlink_metadata(root.join(e.path.as_str()))
                .await
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::NotFound => StorageError::NotFound,
                    _ => StorageError::Other(format!("stat for the etag: {err}")),
                })?;
            key.size = m.len();
            key.mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            key.inode = Some((
                m.dev(),
                m.ino(),
                i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ));
        }
        Ok(key)
    }
}

/// A provider's refusal of a conditional request is a failed precondition here (elsewhere
/// `ConditionNotMatch` means "already exists", from `If-None-Match: *` creates).
fn precondition(e: opendal::Error) -> StorageError {
    if e.kind() == opendal::ErrorKind::ConditionNotMatch {
        StorageError::PreconditionFailed
    } else {
        e.into()
    }
}

/// True when a version is old enough that a later write cannot share its key.
fn settled(key: &VersionKey, started: SystemTime) -> bool {
    let (changed_ns, settle) = match key.inode {
        Some((_, _, ctime)) => (ctime.max(key.mtime_ns), LOCAL_SETTLE),
        None => (key.mtime_ns, REMOTE_SETTLE),
    };
    let started_ns = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    key.mtime_ns != 0 && changed_ns + settle.as_nanos() as i128 <= started_ns
}

/// Whether an `If-Match`/`If-None-Match` list matches `etag`. `weak` is the comparison for
/// `If-None-Match` (`W/"x"` matches `"x"`); strong comparison (for `If-Match`) never matches a
/// weak tag. `*` matches any existing file.
pub fn etag_list_matches(header: &str, etag: &str, weak: bool) -> bool {
    let ours = etag.trim_start_matches("W/");
    split_list(header).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(tag) => weak && tag == ours,
            None => t == ours,
        }
    })
}

/// The entity tags of a header list, honouring commas inside quoted tags.
fn split_list(header: &str) -> impl Iterator<Item = &str> {
    let mut rest = header;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let start = rest;
        let body_at = if rest.starts_with("W/") { 2 } else { 0 };
        let end = if rest[body_at..].starts_with('"') {
            rest[body_at + 1..]
                .find('"')
                .map(|i| body_at + i + 2)
                .unwrap_or(rest.len())
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        rest = &rest[end..];
        let t = start[..end].trim();
        if !t.is_empty() {
            return Some(t);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_matching() {
        let tag = "\"abc\"";
        assert!(etag_list_matches("\"abc\"", tag, false));
        assert!(etag_list_matches("\"x\", \"abc\"", tag, false));
        assert!(etag_list_matches("*", tag, false));
        assert!(!etag_list_matches("W/\"abc\"", tag, false), "strong");
        assert!(etag_list_matches("W/\"abc\"", tag, true), "weak");
        assert!(etag_list_matches("\"a,b\", \"abc\"", tag, true));
        assert!(!etag_list_matches("\"a,b\"", "\"a\"", true));
        assert!(!etag_list_matches("\"abcd\"", tag, true));
        assert!(!etag_list_matches("", tag, true));
    }

    #[test]
    fn generations_stay_bounded() {
        let mut g = Generations {
            current: HashMap::new(),
            previous: HashMap::new(),
        };
        let key = |i: usize| VersionKey {
            scope: Arc::from("s"),
            path: format!("f{i}"),
            size: 1,
            mtime_ns: 1,
            inode: None,
        };
        for i in 0..CACHE_ENTRIES * 3 {
            g.insert(key(i), [0; 32]);
        }
        assert!(g.current.len() + g.previous.len() <= CACHE_ENTRIES);
        assert!(g.get(&key(CACHE_ENTRIES * 3 - 1)).is_some(), "recent kept");
        assert!(g.get(&key(0)).is_none(), "old dropped");
    }
}
