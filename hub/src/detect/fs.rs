//! The `fs` detector's IO: a walk of the account root straight on the disk (no link is
//! followed, reserved names are skipped, the inode is kept so renames pair exactly), and an
//! inotify watch (the `notify` crate) that wakes the detector as soon as something changed,
//! after the burst settled. Where inotify is unavailable or its watch limit is reached, the
//! detector polls at its interval instead.

use super::listing::{walk_key, Seen};
use super::PollError;
use futures::Stream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The entries of one folder, sorted by name, as snapshot rows (`rel` is the folder's path
/// from the root, empty for the root). Symbolic links and reserved or invalid names are left
/// out; a folder that vanished meanwhile has no entries.
fn read_folder(root: &Path, rel: &str) -> Result<Vec<Seen>, std::io::Error> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if shared::storage::is_reserved(&name) || shared::storage::validate_name(&name).is_err() {
            continue;
        }
        // Not followed: a link is neither a file nor a folder of the account.
        let meta = match std::fs::symlink_metadata(ent.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let folder = meta.is_dir();
        if !folder && !meta.is_file() {
            continue;
        }
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let mtime_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        out.push(Seen {
            key: walk_key(&path),
            path,
            folder,
            version: None,
            size: (!folder).then_some(meta.len() as i64),
            mtime_ms: mtime_ms.filter(|_| !folder),
            ident: Some(format!("{}:{}", meta.dev(), meta.ino())),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The stream of a walk.
pub type Walk = std::pin::Pin<Box<dyn Stream<Item = Result<Seen, PollError>> + Send>>;

/// A depth-first walk of `root` in [`walk_key`] order, holding one folder listing per level
/// of the current path; the counter says how many folders were read.
pub fn walk(root: PathBuf) -> (Walk, Arc<AtomicU64>) {
    let folders = Arc::new(AtomicU64::new(0));
    let count = folders.clone();
    let root = Arc::new(root);
    let read = move |rel: String| {
        let root = root.clone();
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::task::spawn_blocking(move || read_folder(&root, &rel))
                .await
                .map_err(|e| PollError::Order(format!("the folder walk stopped: {e}")))?
                .map_err(|e| {
                    PollError::Storage(shared::storage::StorageError::Other(format!(
                        "reading a folder of the fs root: {}",
                        e.kind()
                    )))
                })
        }
    };
    let stream = futures::stream::try_unfold(
        (Vec::<std::vec::IntoIter<Seen>>::new(), false),
        move |(mut stack, started)| {
            let read = read.clone();
            async move {
                if !started {
                    stack.push(read(String::new()).await?.into_iter());
                }
                loop {
                    let Some(top) = stack.last_mut() else {
                        return Ok(None);
                    };
                    let Some(s) = top.next() else {
                        stack.pop();
                        continue;
                    };
                    if s.folder {
                        if stack.len() >= super::MAX_DEPTH {
                            return Err(PollError::Order(format!(
                                "folders nested deeper than {} levels",
                                super::MAX_DEPTH
                            )));
                        }
                        stack.push(read(s.path.clone()).await?.into_iter());
                    }
                    return Ok(Some((s, (stack, true))));
                }
            }
        },
    );
    (Box::pin(stream), folders)
}

/// An inotify watch on an account root that wakes its detector.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::Receiver<()>,
    settle: Duration,
}

/// Watches `root` recursively; `None` (polling only) when inotify cannot (unavailable, or
/// the watch limit reached), which is logged once.
pub fn watch(root: &Path, settle: Duration) -> Option<Watch> {
    use notify::Watcher as _;
    // One slot: a burst of notifications is one wake-up.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    };
    let made = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(root, notify::RecursiveMode::Recursive)?;
        Ok(w)
    });
    match made {
        Ok(w) => Some(Watch {
            _watcher: w,
            rx,
            settle,
        }),
        Err(e) => {
            tracing::info!(error = %e,
                "inotify is not available for an fs account root; its detector polls at its interval");
            None
        }
    }
}

impl Watch {
    /// Waits for a change below the root and for its burst to settle; false once the watch
    /// has ended.
    pub async fn changed(&mut self) -> bool {
        if self.rx.recv().await.is_none() {
            return false;
        }
        // Coalesce: more changes of the same burst arrive within the settle time.
        tokio::time::sleep(self.settle).await;
        while self.rx.try_recv().is_ok() {}
        true
    }
}
