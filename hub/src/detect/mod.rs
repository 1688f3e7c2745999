//! Detection of changes made outside the API: one detector per account of an application
//! that collects events, run by the one hub process holding the account's detector lease.
//!
//! A detector polls the account's storage at `events.detect` intervals and merges the
//! listing with the snapshot it stored in the database (`listing`): object stores are listed
//! flat in key order, page by page; `fs`, WebDAV and SFTP are walked folder by folder in the
//! same order (`fs` reads the disk itself and polls as soon as inotify reports a change,
//! `fs.rs`). Neither the listing nor the snapshot is ever held whole. Dropbox, Google Drive
//! and OneDrive have delta APIs instead (`delta.rs`: their parsers and cursors).
//!
//! Every difference is recorded through [`crate::events::record_event`] (origin `detect`,
//! action `detected`, no client address or user) before the snapshot takes it, with
//! [`Echo::Detected`]: under the account's stream lock, a difference an event already explains
//! (the API made the change and recorded it) records nothing; and an API event finds the
//! detector's view of its change the same way ([`Echo::Api`]). So a change shows once
//! whichever of the two is recorded first, and a detector that dies between recording and
//! storing the snapshot finds its own event on the next poll.
//!
//! The first poll of an account only stores the snapshot (a baseline records no events).

pub mod delta;
pub mod fs;
pub mod listing;

use crate::db::{DetectorLease, Echo};
use crate::events::{self, kind};
use crate::metrics::{PollLabels, ServiceLabels};
use crate::state::{now_ms, Account, AppState};
use futures::{Stream, StreamExt};
use listing::{Change, Diff, Pairing, Seen};
use shared::storage::{Entry, EntryKind, StorageError, StoragePath};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Snapshot rows read per database round trip.
const SNAPSHOT_PAGE: i64 = 1000;
/// Snapshot writes held before they are written in one transaction.
const WRITE_BATCH: usize = 400;
/// Most folder listings a walk holds at once (its depth); deeper trees stop the poll.
const MAX_DEPTH: usize = 256;

/// What one poll cost and found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollStats {
    /// Provider requests (listing pages, or folders read on `fs` and SFTP).
    pub requests: u64,
    /// Objects the listing held.
    pub scanned: u64,
    /// Events recorded.
    pub recorded: u64,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Order(String),
    #[error("the detector lease was lost")]
    LeaseLost,
}

impl From<listing::DiffError<PollError>> for PollError {
    fn from(e: listing::DiffError<PollError>) -> Self {
        match e {
            listing::DiffError::Source(e) => e,
            other => PollError::Order(other.to_string()),
        }
    }
}

/// Starts this hub's detector manager (when `events.detect.enabled`): every third of the
/// lease it creates missing detector rows, renews its leases (stopping the detectors it
/// lost), and takes over detectors whose lease ran out, up to `events.detect.max_accounts`.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !state.config.events.detect.enabled {
            return;
        }
        // Owned here: aborting the manager (a hub stopping) drops the set, which aborts
        // every detector it runs.
        let mut running = Running::default();
        let every = state.config.events.detect.lease() / 3;
        loop {
            if let Err(e) = manage(&state, &mut running).await {
                tracing::warn!(error = %e, "detector leases: a round failed");
            }
            state.metrics.detectors_held.set(running.held.len() as i64);
            tokio::time::sleep(every).await;
        }
    })
}

/// The detectors this hub runs.
#[derive(Default)]
struct Running {
    tasks: tokio::task::JoinSet<()>,
    held: HashMap<i64, tokio::task::AbortHandle>,
}

/// One round of the manager.
async fn manage(state: &AppState, running: &mut Running) -> Result<(), sqlx::Error> {
    while running.tasks.try_join_next().is_some() {}
    let holder = crate::transfers::holder(state);
    let cfg = &state.config.events.detect;
    let now = now_ms();
    let until = now + cfg.lease_ms as i64;
    let held: HashMap<i64, i64> = state
        .db
        .renew_detectors(&holder, until)
        .await?
        .into_iter()
        .collect();
    running.held.retain(|account, task| {
        let keep = held.contains_key(account) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    state.db.ensure_detectors(now).await?;
    let room = (cfg.max_accounts as usize).saturating_sub(running.held.len()) as i64;
    if room > 0 {
        for lease in state.db.take_detectors(&holder, now, until, room).await? {
            let account = lease.account_id;
            tracing::debug!(account, epoch = lease.epoch, "took an account's detector");
            let task = running.tasks.spawn(run(state.clone(), lease));
            running.held.insert(account, task);
        }
    }
    Ok(())
}

/// Runs one account's detector until its lease is lost (the manager aborts it then).
async fn run(state: AppState, mut lease: DetectorLease) {
    let account = match load_account(&state, &lease).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(account = lease.account_id, error = %e,
                "detector: cannot open the account; giving its detector up");
            let _ = state.db.release_detector(&lease).await;
            return;
        }
    };
    let service = account.connector.service();
    if delta::is_delta_service(service) {
        // Their delta APIs need a provider to talk to; the parsers and cursors are in
        // `delta.rs`, the polling loop over them is not wired up yet.
        tracing::debug!(
            account = lease.account_id,
            service,
            "no detector for this service yet"
        );
        return;
    }
    let interval = state.config.events.detect.interval(service);
    let mut wake = match &account.settings {
        shared::storage::ServiceConfig::Fs(s) => fs::watch(
            std::path::Path::new(&s.root),
            Duration::from_millis(state.config.events.detect.fs_settle_ms),
        ),
        _ => None,
    };
    loop {
        let started = Instant::now();
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        let outcome = poll_once(&state, &account, &lease).await;
        let m = &state.metrics;
        m.detect_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok((stats, polled_seq)) => {
                m.detect_polls
                    .get_or_create(&PollLabels {
                        service: service.to_owned(),
                        outcome: "ok",
                    })
                    .inc();
                m.detect_requests
                    .get_or_create(&labels)
                    .observe(stats.requests as f64);
                m.detect_objects
                    .get_or_create(&labels)
                    .observe(stats.scanned as f64);
                m.detect_changes
                    .get_or_create(&labels)
                    .inc_by(stats.recorded);
                lease.baseline = true;
                lease.polled_seq = polled_seq;
            }
            Err(PollError::LeaseLost) => return,
            Err(e) => {
                m.detect_polls
                    .get_or_create(&PollLabels {
                        service: service.to_owned(),
                        outcome: "error",
                    })
                    .inc();
                tracing::warn!(account = lease.account_id, service, error = %e,
                    "detector: the poll failed; trying again at the next interval");
            }
        }
        match wake.as_mut() {
            Some(w) => w.wait(interval).await,
            None => tokio::time::sleep(interval).await,
        }
    }
}

async fn load_account(state: &AppState, lease: &DetectorLease) -> Result<Account, PollError> {
    let record = state
        .db
        .get_account_any(lease.account_id)
        .await?
        .ok_or_else(|| PollError::Storage(StorageError::NotFound))?;
    state
        .open_account(record)
        .await
        .map_err(|e| PollError::Storage(StorageError::Other(e.message().to_owned())))
}

/// One poll of `account`: lists, merges with the snapshot, records what changed, stores the
/// new snapshot, and ends the poll in the database. Returns its cost and the stream position
/// read before listing (the next poll's [`Echo::Detected`] bound).
pub async fn poll_once(
    state: &AppState,
    account: &Account,
    lease: &DetectorLease,
) -> Result<(PollStats, i64), PollError> {
    let c = &account.connector;
    let before = c.requests_sent();
    // Read before listing: an event numbered above it may come from a change this listing
    // sees (the next poll's echo bound).
    let head = state.db.stream_head(lease.account_id).await?;
    let strong = c.strong_etags();
    let mut stats = PollStats::default();
    let mut rec = Recorder::new(state, account, lease);
    let snapshot = snapshot_stream(state, lease.account_id);
    if let shared::storage::ServiceConfig::Fs(s) = &account.settings {
        let (listing, folders) = fs::walk(std::path::PathBuf::from(&s.root));
        stats.scanned = listing::merge(snapshot, listing, &mut rec).await?;
        stats.requests = folders.load(std::sync::atomic::Ordering::Relaxed);
    } else if c.lists_flat() {
        let listing = c.list_flat().await?.map(move |r| {
            r.map(|(raw, e)| seen(listing::object_key(&raw), &e, strong))
                .map_err(PollError::from)
        });
        stats.scanned = listing::merge(snapshot, Box::pin(listing), &mut rec).await?;
        stats.requests = c.requests_sent() - before;
    } else {
        let folders = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listing = walk(c.clone(), strong, folders.clone());
        stats.scanned = listing::merge(snapshot, Box::pin(listing), &mut rec).await?;
        stats.requests =
            (c.requests_sent() - before).max(folders.load(std::sync::atomic::Ordering::Relaxed));
    }
    stats.recorded = rec.finish().await?;
    if !state
        .db
        .finish_poll(lease, head, lease.cursor.as_deref(), now_ms())
        .await?
    {
        return Err(PollError::LeaseLost);
    }
    Ok((stats, head))
}

/// The snapshot of `account`, page by page in sort-key order.
fn snapshot_stream(
    state: &AppState,
    account: i64,
) -> impl Stream<Item = Result<Seen, PollError>> + Unpin + Send + 'static {
    let db = state.db.clone();
    Box::pin(
        futures::stream::try_unfold(
            (db, None::<String>, false),
            move |(db, after, done)| async move {
                if done {
                    return Ok::<_, PollError>(None);
                }
                let page = db
                    .snapshot_page(account, after.as_deref(), SNAPSHOT_PAGE)
                    .await?;
                let done = (page.len() as i64) < SNAPSHOT_PAGE;
                let last = page.last().map(|s| s.key.clone()).or(after);
                Ok(Some((
                    futures::stream::iter(page.into_iter().map(Ok)),
                    (db, last, done),
                )))
            },
        )
        .try_flatten(),
    )
}

use futures::TryStreamExt;

/// A listed entry as the snapshot keeps it.
pub fn seen(key: String, e: &Entry, strong: bool) -> Seen {
    let folder = e.kind == EntryKind::Folder;
    Seen {
        key,
        path: e.path.as_str().to_owned(),
        folder,
        version: e.etag.clone().filter(|_| strong && !folder),
        size: (!folder).then_some(e.size as i64),
        mtime_ms: e.modified.filter(|_| !folder),
        ident: None,
    }
}

/// A depth-first walk of a connector's folders, names in byte order: the order of
/// [`listing::walk_key`]. Holds one listing per level of the current path.
fn walk(
    c: shared::storage::Connector,
    strong: bool,
    folders: Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = Result<Seen, PollError>> + Send + 'static {
    let start: Vec<std::vec::IntoIter<Entry>> = Vec::new();
    futures::stream::try_unfold((c, start, false), move |(c, mut stack, started)| {
        let folders = folders.clone();
        async move {
            if !started {
                let (root, _) = c.list(&StoragePath::root()).await?;
                folders.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stack.push(root.into_iter());
            }
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok::<_, PollError>(None);
                };
                let Some(e) = top.next() else {
                    stack.pop();
                    continue;
                };
                if e.kind == EntryKind::Folder {
                    if stack.len() >= MAX_DEPTH {
                        return Err(PollError::Order(format!(
                            "folders nested deeper than {MAX_DEPTH} levels"
                        )));
                    }
                    match c.list(&e.path).await {
                        Ok((children, _)) => stack.push(children.into_iter()),
                        // Deleted between its parent's listing and ours: gone next poll.
                        Err(StorageError::NotFound) => {}
                        Err(err) => return Err(err.into()),
                    }
                    folders.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let s = seen(listing::walk_key(e.path.as_str()), &e, strong);
                return Ok(Some((s, (c, stack, true))));
            }
        }
    })
}

/// Records a poll's changes and keeps the snapshot in step: each change's event first, then
/// its snapshot rows (batched), so a detector killed in between finds its own event next time.
struct Recorder<'a> {
    state: &'a AppState,
    account: &'a Account,
    lease: &'a DetectorLease,
    pairing: Pairing,
    put: Vec<Seen>,
    delete: Vec<String>,
    recorded: u64,
}

impl listing::DiffSink<PollError> for Recorder<'_> {
    async fn take(&mut self, d: Diff) -> Result<(), PollError> {
        Recorder::take(self, d).await
    }
}

impl<'a> Recorder<'a> {
    fn new(state: &'a AppState, account: &'a Account, lease: &'a DetectorLease) -> Self {
        Self {
            state,
            account,
            lease,
            pairing: Pairing::default(),
            put: Vec::new(),
            delete: Vec::new(),
            recorded: 0,
        }
    }

    /// Takes one difference from the merge.
    async fn take(&mut self, d: Diff) -> Result<(), PollError> {
        if !self.lease.baseline {
            match d {
                Diff::Added(s) | Diff::Changed { new: s, .. } => self.put.push(s),
                Diff::Removed(s) => self.delete.push(s.key),
            }
        } else {
            for change in self.pairing.push(d) {
                self.record(&change).await;
                match change {
                    Change::Added(s) | Change::Updated { new: s, .. } => self.put.push(s),
                    Change::Removed(s) => self.delete.push(s.key),
                    Change::Renamed { from, to } => {
                        self.delete.push(from.key);
                        self.put.push(to);
                    }
                }
            }
        }
        if self.put.len() + self.delete.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PollError> {
        if self.put.is_empty() && self.delete.is_empty() {
            return Ok(());
        }
        if !self
            .state
            .db
            .snapshot_write(self.lease, &self.put, &self.delete)
            .await?
        {
            return Err(PollError::LeaseLost);
        }
        self.put.clear();
        self.delete.clear();
        Ok(())
    }

    /// Records the held changes (renames paired), then writes the rest of the snapshot.
    async fn finish(mut self) -> Result<u64, PollError> {
        let pairing = std::mem::take(&mut self.pairing);
        let (changes, put, delete) = pairing.finish();
        for c in &changes {
            self.record(c).await;
        }
        self.flush().await?;
        for chunk in put.chunks(WRITE_BATCH) {
            if !self.state.db.snapshot_write(self.lease, chunk, &[]).await? {
                return Err(PollError::LeaseLost);
            }
        }
        for chunk in delete.chunks(WRITE_BATCH) {
            if !self.state.db.snapshot_write(self.lease, &[], chunk).await? {
                return Err(PollError::LeaseLost);
            }
        }
        Ok(self.recorded)
    }

    /// Records one change through the feed's one path (see the module comment).
    async fn record(&mut self, c: &Change) {
        let account = self.account.id();
        let (k, entry, from) = match c {
            Change::Added(s) => (kind::ADD, entry_of(s), None),
            Change::Updated { new, .. } => (kind::UPDATE, entry_of(new), None),
            Change::Removed(s) => {
                let e = entry_of(s);
                (kind::DELETE, events::gone(&e.path, e.kind), None)
            }
            Change::Renamed { from, to } => {
                let (f, t) = (entry_of(from), entry_of(to));
                (events::rename_or_move(&f.path, &t.path), t, Some(f.path))
            }
        };
        let change = events::Change {
            account,
            kind: k,
            action: "detected",
            entry: &entry,
            from: from.as_ref(),
            dedupe_key: None,
        };
        let mut e = events::new_event(&self.state.ids, &change);
        e.origin = "detect";
        e.ip = None;
        e.user_id = None;
        e.echo = Echo::Detected {
            after_seq: self.lease.polled_seq,
        };
        if events::record_event(self.state, &e).await {
            self.recorded += 1;
        }
    }
}

/// The API's view of a snapshot row.
fn entry_of(s: &Seen) -> Entry {
    Entry {
        path: StoragePath::parse(&s.path).unwrap_or_else(|_| StoragePath::root()),
        kind: if s.folder {
            EntryKind::Folder
        } else {
            EntryKind::File
        },
        size: s.size.unwrap_or(0).max(0) as u64,
        modified: s.mtime_ms,
        etag: s.version.clone(),
        content_type: None,
    }
}
