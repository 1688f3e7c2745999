//! Runs the transfers hubs assign: the same engine the hub uses inline
//! (`shared::storage::transfer`), reporting progress at least once a second and every
//! verified part as it lands, then completing the destination upload.

use crate::config::Identity;
use crate::fsroots::FsRoots;
use crate::relay::Relayed;
use shared::proto::{Assignment, RttSample, SpokeMsg, SpokeSettings, UrlFetch, UNREACHABLE};
use shared::storage::multipart::S3Multipart;
use shared::storage::progress::Progress;
use shared::storage::transfer::{
    composite_sha256, copy_parts_via, copy_stream, range_source, CopyEvent, CopyOptions, PartDone,
    RangeSource,
};
use shared::storage::url::{copy_from_url, UrlTarget};
use shared::storage::{ConnectOptions, Connector, ServiceConfig, StorageError, StoragePath};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::CancellationToken;

/// How often progress is reported while bytes flow (the hub needs at least one a second).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often storage endpoints are probed for RTT.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Storage endpoints measured at most.
const MAX_PROBES: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The transfers running on this spoke.
#[derive(Debug)]
pub struct Jobs {
    slots: u32,
    running: Mutex<HashMap<i64, (u64, CancellationToken)>>,
    generation: AtomicU64,
    /// Bytes moved since start, for the rate in heartbeats.
    moved: AtomicU64,
    rate: Mutex<(Instant, u64, u64)>,
    /// Storage endpoints (`host:port`) seen in assignments or named by a hub, and their last
    /// RTT in µs ([`UNREACHABLE`] when a connection failed; `None` before the first probe).
    probes: Mutex<HashMap<String, Option<u64>>>,
    /// Wakes the probe loop for endpoints just added.
    probe_now: tokio::sync::Notify,
    /// Counts probe rounds that measured an endpoint for the first time: each hub session
    /// sends a heartbeat at once when it moves (a hub may hold a transfer until it knows).
    first_measured: tokio::sync::watch::Sender<u64>,
    scratch: PathBuf,
    /// This spoke's certificate, for dialing relay spokes.
    ident: Arc<Identity>,
    /// Where assignments may reach `fs` storage.
    fs_roots: FsRoots,
}

impl Jobs {
    pub fn new(slots: u32, scratch: PathBuf, ident: Arc<Identity>, fs_roots: FsRoots) -> Self {
        Self {
            slots: slots.max(1),
            running: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            moved: AtomicU64::new(0),
            rate: Mutex::new((Instant::now(), 0, 0)),
            probes: Mutex::new(HashMap::new()),
            probe_now: tokio::sync::Notify::new(),
            first_measured: tokio::sync::watch::Sender::new(0),
            scratch,
            ident,
            fs_roots,
        }
    }

    pub fn active(&self) -> u32 {
        lock(&self.running).len() as u32
    }

    pub fn free(&self) -> u32 {
        self.slots.saturating_sub(self.active())
    }

    /// Bytes per second since the previous call.
    pub fn bytes_per_sec(&self) -> u64 {
        let now = Instant::now();
        let total = self.moved.load(Ordering::Relaxed);
        let mut r = lock(&self.rate);
        let secs = now.duration_since(r.0).as_secs_f64();
        if secs >= 0.5 {
            r.2 = ((total - r.1) as f64 / secs) as u64;
            *r = (now, total, r.2);
        }
        r.2
    }

    /// Latest storage RTTs.
    pub fn probe_samples(&self) -> Vec<RttSample> {
        lock(&self.probes)
            .iter()
            .filter_map(|(k, v)| {
                v.map(|rtt_us| RttSample {
                    target: format!("storage:{k}"),
                    rtt_us,
                })
            })
            .collect()
    }

    /// Adds storage endpoints to measure (from a hub's probe request) and measures them now.
    pub fn probe(&self, targets: Vec<String>) {
        let mut probes = lock(&self.probes);
        for t in targets {
            // Only `host:port`, and not too many: the hub is trusted, but bounded anyway.
            if probes.len() < MAX_PROBES && t.len() <= 300 && t.rsplit_once(':').is_some() {
                probes.entry(t).or_insert(None);
            }
        }
        drop(probes);
        self.probe_now.notify_one();
    }

    /// Changes whenever a probe round measured an endpoint for the first time.
    pub fn first_measured(&self) -> tokio::sync::watch::Receiver<u64> {
        self.first_measured.subscribe()
    }

    /// Whether run `generation` of transfer `id` is still going.
    pub fn runs(&self, id: i64, generation: u64) -> bool {
        lock(&self.running)
            .get(&id)
            .is_some_and(|(g, _)| *g == generation)
    }

    /// Cancels the run `generation` of transfer `id` (the one a hub's session started); a
    /// later run of the same transfer, started for another hub that took it over, goes on.
    pub fn cancel(&self, id: i64, generation: u64) {
        let mut running = lock(&self.running);
        if running.get(&id).is_some_and(|(g, _)| *g == generation) {
            if let Some((_, c)) = running.remove(&id) {
                tracing::info!(transfer = id, "transfer cancelled by the hub");
                c.cancel();
            }
        }
    }

    pub fn cancel_all(&self) {
        for (_, (_, c)) in lock(&self.running).drain() {
            c.cancel();
        }
    }

    /// Starts an assignment (replacing a previous run of the same transfer); returns the
    /// run's generation, which names it in [`Jobs::cancel`].
    pub fn start(
        self: &Arc<Self>,
        a: Assignment,
        settings: SpokeSettings,
        report: UnboundedSender<SpokeMsg>,
        cancel: CancellationToken,
    ) -> u64 {
        let id = a.transfer_id;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = lock(&self.running).insert(id, (generation, cancel.clone())) {
            old.cancel();
        }
        {
            let mut probes = lock(&self.probes);
            for cfg in [&a.source.service, &a.dest.service] {
                if let Ok(Some((h, p))) = cfg.endpoint_addr() {
                    probes.entry(format!("{h}:{p}")).or_insert(None);
                }
            }
        }
        let jobs = self.clone();
        tokio::spawn(async move {
            tracing::info!(
                transfer = id,
                parts = a.parts.len(),
                done = a.done.len(),
                "transfer started"
            );
            let result = run(&jobs, &a, &settings, &report, cancel.clone()).await;
            let mine = {
                let mut running = lock(&jobs.running);
                let mine = running.get(&id).is_some_and(|(g, _)| *g == generation);
                if mine {
                    running.remove(&id);
                }
                mine
            };
            match result {
                Ok(msg) => {
                    tracing::info!(transfer = id, "transfer done (every part uploaded)");
                    let _ = report.send(msg);
                }
                Err(_) if cancel.is_cancelled() || !mine => {}
                Err(e) => {
                    tracing::warn!(transfer = id, error = %e, "transfer failed");
                    // An `fs` location outside our roots may be served by another spoke or
                    // the hub itself: the hub retries the transfer elsewhere.
                    let retryable = matches!(
                        e,
                        StorageError::Unavailable(_)
                            | StorageError::RateLimited { .. }
                            | StorageError::BudgetSpent(_)
                            | StorageError::Interrupted(_)
                            | StorageError::Other(_)
                    ) || crate::fsroots::is_refusal(&e);
                    let _ = report.send(SpokeMsg::Failed {
                        transfer_id: id,
                        message: e.to_string(),
                        retryable,
                    });
                }
            }
        });
        generation
    }
}

async fn run(
    jobs: &Arc<Jobs>,
    a: &Assignment,
    settings: &SpokeSettings,
    report: &UnboundedSender<SpokeMsg>,
    cancel: CancellationToken,
) -> Result<SpokeMsg, StorageError> {
    // A hub names storage locations, never this host's own files: `fs` only inside the
    // declared roots, checked before either side is opened.
    jobs.fs_roots.check(&a.source.service)?;
    jobs.fs_roots.check(&a.dest.service)?;
    let opts = ConnectOptions {
        scratch_dir: jobs.scratch.clone(),
        egress: shared::egress::EgressPolicy::from_settings(&settings.egress),
        budgets: crate::budget::global(),
        ..ConnectOptions::default()
    };
    let dst_path = StoragePath::parse(&a.dest.path)?;
    if let Some(fetch) = &a.source_url {
        return run_url(jobs, a, fetch, settings, &opts, &dst_path, report, cancel).await;
    }
    let src = Connector::connect(&a.source.service, &opts).await?;
    let src_path = StoragePath::parse(&a.source.path)?;
    let copy = CopyOptions {
        concurrency: a.concurrency.max(1) as usize,
        rate_limit: a.rate_limit.or(settings.rate_limit),
        ..CopyOptions::default()
    };
    let base: u64 = a.done.iter().map(|p| p.len).sum();
    let (tx, rx) = mpsc::unbounded_channel();
    let forward = tokio::spawn(forward_events(
        a.transfer_id,
        Some(a.size),
        base,
        rx,
        report.clone(),
        jobs.clone(),
    ));
    let result = match (&a.upload_id, &a.dest.service) {
        (Some(upload_id), ServiceConfig::S3(s3)) => {
            let mp = S3Multipart::for_settings(s3, &dst_path, &opts.egress)?
                .with_budget(opts.budgets.budget("s3", a.dest.service.budget_key()));
            // The source is read from the provider, or through a spoke near it.
            let mut relayed = None;
            let source: Arc<dyn RangeSource> = match &a.relay {
                Some(from) => {
                    let r = Arc::new(
                        Relayed::connect(
                            &jobs.ident,
                            from,
                            settings.congestion,
                            settings.relay_connections,
                        )
                        .await?,
                    );
                    relayed = Some(r.clone());
                    r
                }
                None => range_source(&a.source.service, &src, &src_path)?,
            };
            let r = copy_parts_via(
                source,
                &mp,
                upload_id,
                a.parts.clone(),
                &copy,
                tx,
                cancel.clone(),
            )
            .await;
            if let Some(r) = relayed {
                r.close();
            }
            let new_parts = forward.await.unwrap_or_default();
            r?;
            let mut all: Vec<PartDone> = a.done.clone();
            all.extend(new_parts);
            all.sort_by_key(|p| p.index);
            all.dedup_by_key(|p| p.index);
            // The hub holding the transfer's lease completes the upload from the durable
            // parts: a run whose hub is gone (and whose transfer another hub took over) must
            // never complete it behind that hub's back.
            SpokeMsg::Done {
                transfer_id: a.transfer_id,
                size: a.size,
                checksum: composite_sha256(&all),
            }
        }
        _ => {
            let dst = Connector::connect(&a.dest.service, &opts).await?;
            let r = copy_stream(&src, &src_path, &dst, &dst_path, &copy, tx, cancel.clone()).await;
            let _ = forward.await;
            let c = r?;
            SpokeMsg::Done {
                transfer_id: a.transfer_id,
                size: c.size,
                checksum: c.sha256,
            }
        }
    };
    Ok(result)
}

/// An upload from a URL: the URL fetched under this spoke's own egress policy (every redirect
/// checked here again, whatever the hub saw), in parts into the destination's S3 multipart
/// upload when the hub planned parts, else as one stream.
#[allow(clippy::too_many_arguments)]
async fn run_url(
    jobs: &Arc<Jobs>,
    a: &Assignment,
    fetch: &UrlFetch,
    settings: &SpokeSettings,
    opts: &ConnectOptions,
    dst_path: &StoragePath,
    report: &UnboundedSender<SpokeMsg>,
    cancel: CancellationToken,
) -> Result<SpokeMsg, StorageError> {
    let copy = CopyOptions {
        concurrency: a.concurrency.max(1) as usize,
        rate_limit: a.rate_limit.or(settings.rate_limit),
        ..CopyOptions::default()
    };
    let base: u64 = a.done.iter().map(|p| p.len).sum();
    // Progress of a source of unknown length is capped by the hub, not here.
    let (tx, rx) = mpsc::unbounded_channel();
    let forward = tokio::spawn(forward_events(
        a.transfer_id,
        fetch.size,
        base,
        rx,
        report.clone(),
        jobs.clone(),
    ));
    let dst = Connector::connect(&a.dest.service, opts).await?;
    let mp = match (&a.upload_id, &a.dest.service) {
        (Some(_), ServiceConfig::S3(s3)) => Some(
            S3Multipart::for_settings(s3, dst_path, &opts.egress)?
                .with_budget(opts.budgets.budget("s3", a.dest.service.budget_key())),
        ),
        _ => None,
    };
    let target = match (&a.upload_id, &mp) {
        (Some(upload_id), Some(mp)) => UrlTarget::Parts {
            upload: mp,
            upload_id,
            parts: a.parts.clone(),
        },
        _ => UrlTarget::Stream {
            dst: &dst,
            path: dst_path,
        },
    };
    let r = copy_from_url(fetch, &opts.egress, target, &copy, tx, cancel).await;
    let new_parts = forward.await.unwrap_or_default();
    Ok(match r? {
        Some(c) => SpokeMsg::Done {
            transfer_id: a.transfer_id,
            size: c.size,
            checksum: c.sha256,
        },
        None => {
            let mut all: Vec<PartDone> = a.done.clone();
            all.extend(new_parts);
            all.sort_by_key(|p| p.index);
            all.dedup_by_key(|p| p.index);
            SpokeMsg::Done {
                transfer_id: a.transfer_id,
                size: a.size,
                checksum: composite_sha256(&all),
            }
        }
    })
}

/// Turns engine events into reports; returns the parts that completed.
async fn forward_events(
    transfer_id: i64,
    total: Option<u64>,
    base: u64,
    mut rx: mpsc::UnboundedReceiver<CopyEvent>,
    report: UnboundedSender<SpokeMsg>,
    jobs: Arc<Jobs>,
) -> Vec<PartDone> {
    let started = Instant::now();
    // Verified parts plus the current attempts of parts in flight: a retried part's failed
    // attempt does not count on top of its retry (see `shared::storage::progress`).
    let mut progress = Progress::new(total, base);
    let mut last = Instant::now();
    let mut parts = Vec::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    progress.observe(&ev);
                    match ev {
                        CopyEvent::Bytes { len, .. } => {
                            jobs.moved.fetch_add(len, Ordering::Relaxed);
                        }
                        CopyEvent::PartDone(p) => {
                            let _ = report.send(SpokeMsg::PartDone { transfer_id, part: p.clone() });
                            parts.push(p);
                        }
                        CopyEvent::PartRetry { index, error } => {
                            tracing::warn!(transfer = transfer_id, part = index, %error, "part retried");
                        }
                    }
                }
                None => break,
            },
            _ = tick.tick() => {}
        }
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let _ = report.send(SpokeMsg::Progress {
                transfer_id,
                bytes_done: progress.bytes_done(),
                // The rate on the wire: every byte sent, a failed attempt's too.
                bytes_per_sec: (progress.sent() as f64 / secs) as u64,
            });
        }
    }
    parts
}

/// Measures TCP connect time to every storage endpoint seen, every few seconds.
pub async fn probe_loop(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = jobs.probe_now.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let targets: HashSet<String> = lock(&jobs.probes).keys().cloned().collect();
        let measured = futures::future::join_all(targets.into_iter().map(|t| async move {
            let start = Instant::now();
            let connect = async {
                let addr = shared::resolve::resolve(&t).await?;
                tokio::net::TcpStream::connect(addr).await
            };
            let ok = tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .is_ok_and(|r| r.is_ok());
            let rtt = if ok {
                (start.elapsed().as_micros() as u64).max(1)
            } else {
                UNREACHABLE
            };
            (t, rtt)
        }))
        .await;
        let mut probes = lock(&jobs.probes);
        let mut first = false;
        for (t, rtt) in measured {
            first |= probes.insert(t, Some(rtt)).is_some_and(|was| was.is_none());
        }
        drop(probes);
        if first {
            jobs.first_measured.send_modify(|n| *n += 1);
        }
    }
}
