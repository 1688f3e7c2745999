//! Detection of changes made outside the API: one detector per account of an application
//! that collects events, polled at intervals by whichever hub of the region takes the poll
//! from the work queue, one poll of an account at a time (a lease in the database).
//!
//! Scheduling: every hub's scheduler hands the detectors that are due (`next_poll_ms`) to the
//! region's `detect` queue ([`crate::workqueue`]: Redis Streams with `redis.url`, in-process
//! without), marking them handed so that no other scheduler hands them too; a consumer on any
//! hub takes the poll's lease (one conditional UPDATE: a duplicate delivery or a poll running
//! elsewhere is skipped), polls, and sets the next due time. A hub that dies mid-poll leaves a
//! lease that runs out; the poll is then due again and another hub redoes it. An `fs` root
//! also has an inotify watch on the hubs that polled it lately, which makes it due at once.
//!
//! A detector polls the account's storage at `events.detect` intervals and merges the
//! listing with the snapshot it stored in the database (`listing`): object stores are listed
//! flat in key order, page by page; `fs`, WebDAV and SFTP are walked folder by folder in the
//! same order (`fs` reads the disk itself and polls as soon as inotify reports a change,
//! `fs.rs`). Neither the listing nor the snapshot is ever held whole. Dropbox, Google Drive
//! and OneDrive have delta APIs instead: a poll continues from the cursor the last one stored
//! (`provider.rs`: the HTTP calls and the loop; `delta.rs`: parsers and the diff, sans IO).
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
pub mod provider;

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
    /// A delta API failed or answered what cannot be used.
    #[error("{0}")]
    Provider(String),
    /// The delta API expired the cursor: the account is listed whole again.
    #[error("the provider expired the cursor")]
    Reset,
}

impl From<listing::DiffError<PollError>> for PollError {
    fn from(e: listing::DiffError<PollError>) -> Self {
        match e {
            listing::DiffError::Source(e) => e,
            other => PollError::Order(other.to_string()),
        }
    }
}

/// Polls handed to the queue per scheduler round trip.
const HAND_BATCH: i64 = 200;
/// The longest a scheduler sleeps between two looks at the schedule.
const TICK: Duration = Duration::from_secs(1);
/// Most `fs` roots one hub watches with inotify.
const MAX_WATCHES: usize = 1024;

/// This hub's detector tasks: the scheduler and the consumer of the `detect` queue.
#[derive(Debug)]
pub struct Tasks {
    scheduler: tokio::task::JoinHandle<()>,
    consumer: Option<tokio::task::JoinHandle<()>>,
}

impl Tasks {
    /// Stops both (and the polls running: their leases run out and another hub redoes them).
    pub fn abort(&self) {
        self.scheduler.abort();
        if let Some(c) = &self.consumer {
            c.abort();
        }
    }
}

/// Starts this hub's detector scheduler and its consumer of the region's `detect` work queue
/// (when `events.detect.enabled`). The scheduler creates missing detector rows and hands due
/// polls to the queue; the consumer runs the polls it is handed, at most
/// `events.detect.concurrency` at once. With `redis.url`, every hub of the region takes polls
/// from one Redis stream; fails when Redis cannot be reached at start-up.
pub async fn spawn(state: AppState) -> anyhow::Result<Tasks> {
    if !state.config.events.detect.enabled {
        return Ok(Tasks {
            scheduler: tokio::spawn(async {}),
            consumer: None,
        });
    }
    let queue = crate::workqueue::open(&state.config, "detect").await?;
    let runner = Runner {
        holder: crate::transfers::holder(&state),
        state: state.clone(),
        queue,
        wake: Arc::new(tokio::sync::Notify::new()),
        watches: Arc::default(),
        delta: provider::Delta::new(&state)?,
    };
    let r = runner.clone();
    let handler: crate::workqueue::Handler = Arc::new(move |payload: String| {
        let r = r.clone();
        Box::pin(async move { r.handle(&payload).await })
    });
    let consumer = runner.queue.consume(
        state.config.events.detect.concurrency as usize,
        state.metrics.detect_queue.clone(),
        handler,
    );
    let scheduler = if state.config.events.detect.schedule {
        tokio::spawn(runner.schedule())
    } else {
        tokio::spawn(async {})
    };
    Ok(Tasks {
        scheduler,
        consumer: Some(consumer),
    })
}

/// The scheduler and the poll handler of one hub.
#[derive(Clone)]
struct Runner {
    state: AppState,
    holder: Arc<str>,
    queue: crate::workqueue::WorkQueue,
    /// Wakes the scheduler: an `fs` root changed, or a poll ended that must run again.
    wake: Arc<tokio::sync::Notify>,
    /// The inotify watches of `fs` roots this hub polled or saw change lately.
    watches: Arc<std::sync::Mutex<HashMap<i64, Watching>>>,
    /// The HTTP client and what is kept between polls of delta-API accounts.
    delta: provider::Delta,
}

/// An inotify watch kept for an account; dropping it stops the watch.
struct Watching {
    task: Option<tokio::task::AbortHandle>,
    last_used: Instant,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Runner {
    /// Hands due polls to the queue: when the next one comes due, when woken, at least every
    /// [`TICK`]. Every third of the lease it also creates the rows of accounts that started
    /// collecting, and drops watches of `fs` roots nobody polled here lately.
    async fn schedule(self) {
        let cfg = &self.state.config.events.detect;
        let lease = cfg.lease_ms as i64;
        let mut housekeeping: Option<Instant> = None;
        loop {
            if housekeeping.is_none_or(|t| t.elapsed() >= cfg.lease() / 3) {
                housekeeping = Some(Instant::now());
                if let Err(e) = self.state.db.ensure_detectors(now_ms()).await {
                    tracing::warn!(error = %e, "detectors: creating the rows of new accounts failed");
                }
                let keep = cfg.interval("fs") * 2 + cfg.lease();
                lock(&self.watches).retain(|_, w| w.last_used.elapsed() < keep);
            }
            loop {
                let now = now_ms();
                match self
                    .state
                    .db
                    .queue_due_detectors(now, now + lease, HAND_BATCH)
                    .await
                {
                    Ok(due) => {
                        for account in &due {
                            // A failed push leaves the detector handed: it is handed again
                            // once `queued_until` (a lease from now) has passed.
                            let _ = self
                                .queue
                                .push(&account.to_string(), &self.state.metrics.detect_queue)
                                .await;
                        }
                        if (due.len() as i64) < HAND_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "detectors: handing due polls to the queue failed");
                        break;
                    }
                }
            }
            let wait = match self.state.db.next_detector_due().await {
                Ok(Some(t)) => Duration::from_millis((t - now_ms()).clamp(10, 1000) as u64),
                _ => TICK,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Runs the poll the queue handed (`payload`: the account id), if it is still due and no
    /// other hub polls the account; then schedules the next.
    async fn handle(&self, payload: &str) {
        let Ok(account) = payload.parse::<i64>() else {
            tracing::warn!(payload, "detect queue: not an account id; dropped");
            return;
        };
        let cfg = &self.state.config.events.detect;
        let now = now_ms();
        let lease = match self
            .state
            .db
            .start_poll(account, &self.holder, now, now + cfg.lease_ms as i64)
            .await
        {
            Ok(Some(l)) => l,
            // Polled meanwhile (a duplicate), polled elsewhere right now, or not collecting.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(account, error = %e, "detector: cannot take the poll's lease");
                return;
            }
        };
        let m = &self.state.metrics;
        m.detect_running.inc();
        let next = self.poll(&lease).await;
        m.detect_running.dec();
        if let Err(e) = self.state.db.end_poll(&lease, now_ms(), next).await {
            // The lease runs out and the poll is redone.
            tracing::warn!(account, error = %e, "detector: cannot end the poll");
        }
        // An `fs` root that changed while the poll ran is due at once.
        self.wake.notify_one();
    }

    /// One poll under `lease`, renewed every third of its length while it runs; returns when
    /// the next poll of the account is due.
    async fn poll(&self, lease: &DetectorLease) -> i64 {
        let cfg = &self.state.config.events.detect;
        let account = match load_account(&self.state, lease).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(account = lease.account_id, error = %e,
                    "detector: cannot open the account; trying again at the next interval");
                return now_ms() + cfg.interval_ms as i64;
            }
        };
        let service = account.connector.service();
        let interval = cfg.interval(service);
        let next = || now_ms() + interval.as_millis() as i64;
        if let shared::storage::ServiceConfig::Fs(s) = &account.settings {
            self.watch(lease.account_id, std::path::Path::new(&s.root));
        }
        let renew = async {
            loop {
                tokio::time::sleep(cfg.lease() / 3).await;
                match self
                    .state
                    .db
                    .renew_poll(lease, now_ms() + cfg.lease_ms as i64)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(account = lease.account_id, error = %e,
                        "detector: renewing the poll's lease failed"),
                }
            }
        };
        let started = Instant::now();
        let delta = delta::is_delta_service(service);
        let outcome = tokio::select! {
            r = poll_once(&self.state, &account, lease), if !delta => r,
            r = provider::poll(&self.state, &account, lease, &self.delta), if delta => r,
            () = renew => Err(PollError::LeaseLost),
        };
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        let m = &self.state.metrics;
        m.detect_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let result = match &outcome {
            Ok((stats, _)) => {
                m.detect_requests
                    .get_or_create(&labels)
                    .observe(stats.requests as f64);
                m.detect_objects
                    .get_or_create(&labels)
                    .observe(stats.scanned as f64);
                m.detect_changes
                    .get_or_create(&labels)
                    .inc_by(stats.recorded);
                "ok"
            }
            Err(e) => {
                tracing::warn!(account = lease.account_id, service, error = %e,
                    "detector: the poll failed; trying again at the next interval");
                "error"
            }
        };
        m.detect_polls
            .get_or_create(&PollLabels {
                service: service.to_owned(),
                outcome: result,
            })
            .inc();
        next()
    }

    /// Keeps an inotify watch on the `fs` root of `account`: a change below it makes the
    /// account due at once (on whichever hub then takes the poll).
    fn watch(&self, account: i64, root: &std::path::Path) {
        let mut watches = lock(&self.watches);
        if let Some(w) = watches.get_mut(&account) {
            w.last_used = Instant::now();
            return;
        }
        if watches.len() >= MAX_WATCHES {
            return;
        }
        let settle = Duration::from_millis(self.state.config.events.detect.fs_settle_ms);
        // `None`: inotify is unavailable (logged); remembered so that it is not tried per poll.
        let task = fs::watch(root, settle).map(|mut w| {
            let db = self.state.db.clone();
            let wake = self.wake.clone();
            let watches = Arc::downgrade(&self.watches);
            tokio::spawn(async move {
                while w.changed().await {
                    if let Some(all) = watches.upgrade() {
                        if let Some(me) = lock(&all).get_mut(&account) {
                            me.last_used = Instant::now();
                        }
                    }
                    if let Err(e) = db.poll_soon(account, now_ms()).await {
                        tracing::warn!(account, error = %e, "detector: cannot mark an fs account due");
                    }
                    wake.notify_one();
                }
            })
            .abort_handle()
        });
        watches.insert(
            account,
            Watching {
                task,
                last_used: Instant::now(),
            },
        );
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let mut rec = Recorder::new(state, account, lease, head);
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
        let listing = read_ahead(listing);
        stats.scanned = listing::merge(snapshot, listing, &mut rec).await?;
        stats.requests = c.requests_sent() - before;
    } else {
        let folders = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listing = read_ahead(walk(c.clone(), strong, folders.clone()));
        stats.scanned = listing::merge(snapshot, listing, &mut rec).await?;
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

/// Entries a listing reads ahead of the merge: about two provider pages, so the next page's
/// request is in flight while the merge compares the current one with the snapshot.
const READ_AHEAD: usize = 2000;

/// `listing` driven by a task of its own, [`READ_AHEAD`] entries ahead of its reader (bounded
/// memory); the task stops when the returned stream is dropped.
fn read_ahead<S>(listing: S) -> futures::stream::BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    struct Reader<T> {
        rx: tokio::sync::mpsc::Receiver<T>,
        task: tokio::task::JoinHandle<()>,
    }
    impl<T> Drop for Reader<T> {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(async move {
        let mut listing = std::pin::pin!(listing);
        while let Some(item) = listing.next().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(
        Reader { rx, task },
        |mut r| async move { r.rx.recv().await.map(|item| (item, r)) },
    ))
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
    /// The stream position read before this poll's listing started.
    listed_seq: i64,
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
    fn new(
        state: &'a AppState,
        account: &'a Account,
        lease: &'a DetectorLease,
        listed_seq: i64,
    ) -> Self {
        Self {
            state,
            account,
            lease,
            listed_seq,
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
        if record_change(self.state, self.account, self.lease, self.listed_seq, c).await {
            self.recorded += 1;
        }
    }
}

/// Records one change a detector found, as origin `detect` with action `detected` (no client
/// address or user), unless an event already explains it ([`Echo::Detected`]: `listed_seq` is
/// the stream position read before the listing started). True when an event was recorded.
pub(crate) async fn record_change(
    state: &AppState,
    account: &Account,
    lease: &DetectorLease,
    listed_seq: i64,
    c: &Change,
) -> bool {
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
        account: account.id(),
        kind: k,
        action: "detected",
        entry: &entry,
        from: from.as_ref(),
        dedupe_key: None,
    };
    let mut e = events::new_event(&state.ids, &change);
    e.origin = "detect";
    e.ip = None;
    e.user_id = None;
    e.echo = Echo::Detected {
        after_seq: lease.polled_seq,
        listed_seq,
    };
    events::record_event(state, &e).await
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
