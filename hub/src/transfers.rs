//! The transfer scheduler: creates transfers, picks a spoke (or runs them on the hub when no
//! spoke is healthy), makes every verified part durable, and resumes a transfer on another
//! executor when its spoke or this hub went away.
//!
//! Life of a transfer: `queued` → `running` (executor `spoke` or `hub`) → `done` | `failed` |
//! `cancelled`. Parts are recorded in `transfer_parts` as they are verified; a resumed
//! transfer gets only the parts not yet recorded. Bytes of a spoke-run transfer never pass
//! through the hub: the hub only creates, completes (from the durable parts, under its lease)
//! and (on cancel) aborts the destination's multipart upload, which are small control
//! requests.
//!
//! Many hubs share the transfers through leases (`lease_holder`, `lease_until`,
//! `lease_epoch`): a hub process works only on the transfers it holds, renews all its leases
//! with one UPDATE every third of `transfers.lease_ms`, and takes over any unfinished transfer
//! whose lease expired with one conditional UPDATE that bumps the epoch; it then resumes it
//! from the durable parts exactly like after a restart (re-queue, dispatch). Every write it
//! makes as holder names its lease and changes nothing once the transfer was taken over, and a
//! renewal that no longer finds a transfer makes the hub drop it (and its spoke's run).
//!
//! Spokes are not believed blindly: a part report must match the plan (index in range, the
//! planned length; the offset follows from the index), and before a transfer is `done` the hub
//! checks the destination object itself (size, and on S3 the multipart ETag the durable parts
//! predict). A transfer whose spoke reported something that does not hold up is re-planned
//! without that spoke (its unverifiable parts forgotten), on another spoke or on the hub.
//!
//! A spoke that failed a transfer (it reported the failure, or was lost while running it) is
//! kept away from that transfer for `transfers.failed_spoke_exclusion_secs`: the exclusion is
//! written with the re-queue (`transfer_exclusions`, fenced by the lease), so whichever hub
//! dispatches the transfer next picks another spoke, or runs it itself when none is left (or
//! waits while it may not yet), and the transfer's note names the spoke, why and until when.
//!
//! Progress (`bytes_done`) is the verified parts plus the current attempts of the parts in
//! flight (`shared::storage::progress`: a retried part's failed attempt does not count on top
//! of its retry), at most the total, and never goes back: the live figure and the stored one
//! only grow, and the live one is written before a transfer leaves `running`.
//!
//! Uploads from a URL run as transfers too (kinds `url`, `url_replace`; [`create_url`]): the
//! source is the URL (sealed in the row), fetched by a spoke that declared `url_sources` (or
//! the hub) through `shared::storage::url`, every redirect checked by the fetching process's
//! own egress guard. A source that answers ranges is copied in parts like any object (into S3
//! multipart uploads, resumable); one that does not, or whose length is unknown, as one
//! stream under `limits.max_upload_bytes`.

use crate::db::{Lease, NewTransfer, TransferRecord};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, Account, AppState};
use shared::proto::{Assignment, HubMsg, Location, Redacted, RelayFrom, SpokeMsg, UrlFetch};
use shared::storage::multipart::S3Multipart;
use shared::storage::progress::Progress;
use shared::storage::transfer::{
    choose_part_size, composite_sha256, copy_parts_via, copy_stream, multipart_etag, plan_parts,
    range_source, CopyEvent, CopyOptions, PartDone,
};
use shared::storage::url::{copy_from_url, UrlTarget};
use shared::storage::{Entry, ServiceConfig, StorageError, StoragePath};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A transfer is failed after this many executor attempts.
const MAX_ATTEMPTS: i64 = 6;
/// How long a new transfer waits for spokes to measure storage endpoints they have not seen.
const PROBE_WAIT: Duration = Duration::from_secs(4);
/// Extra attempts at the destination check before a completion fails for a provider error.
const VERIFY_RETRIES: u32 = 3;
/// Longest wait for one destination check.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Validity of a relay grant (a re-dispatch makes a new one).
const RELAY_GRANT: Duration = Duration::from_secs(6 * 3600);
/// Expired leases one scheduler tick takes over (the next tick takes the rest).
const TAKEOVER_BATCH: i64 = 50;

/// In-memory view of running transfers (progress between database writes, inline tasks).
#[derive(Debug)]
pub struct TransferBook {
    live: Mutex<HashMap<i64, Live>>,
    inline: Mutex<HashMap<i64, CancellationToken>>,
    /// Per transfer, the spokes whose reports about it were refused: never assigned it again
    /// by this hub process.
    distrusted: Mutex<HashMap<i64, Vec<i64>>>,
    started: Instant,
    /// Set when the hub shuts down: nothing new is dispatched, inline runs stop.
    closing: std::sync::atomic::AtomicBool,
    /// Wakes waiters when any transfer ends.
    pub changed: tokio::sync::Notify,
    /// Wakes the scheduler before its tick (see [`TransferBook::kick`]).
    kicked: tokio::sync::Notify,
    /// This process's lease holder id, fixed at first use (see [`holder`]).
    holder: OnceLock<Arc<str>>,
    /// Random per process: a restarted hub is a new holder.
    nonce: String,
    /// The transfers this process holds a lease on.
    held: Mutex<HashMap<i64, Hold>>,
}

/// This process's hold on one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    epoch: i64,
    /// The spoke this hub assigned it to, while it runs there.
    spoke: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    bytes_done: u64,
    bytes_per_sec: u64,
    /// When progress was last written to the database.
    persisted: Option<Instant>,
}

impl Default for TransferBook {
    fn default() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            inline: Mutex::new(HashMap::new()),
            distrusted: Mutex::new(HashMap::new()),
            started: Instant::now(),
            closing: std::sync::atomic::AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            kicked: tokio::sync::Notify::new(),
            holder: OnceLock::new(),
            nonce: format!("{:016x}", rand::random::<u64>()),
            held: Mutex::new(HashMap::new()),
        }
    }
}

impl TransferBook {
    /// Runs the scheduler's pass now rather than at its next tick: something a queued
    /// transfer waited for (a spoke's measurement of its storage endpoints) has arrived. Kicks
    /// while a pass runs coalesce into one more pass.
    pub fn kick(&self) {
        self.kicked.notify_one();
    }

    /// The hub is shutting down: dispatch nothing more and stop the transfers it runs itself
    /// (they stay `running` in the database; the next hub start re-queues them).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for (_, c) in lock(&self.inline).drain() {
            c.cancel();
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the in-memory state of a transfer that ended (or that this hub lost).
    fn ended(&self, id: i64) {
        lock(&self.live).remove(&id);
        lock(&self.distrusted).remove(&id);
        lock(&self.held).remove(&id);
    }

    /// Records that this process holds transfer `id` under `epoch`.
    fn hold(&self, id: i64, epoch: i64) {
        lock(&self.held).insert(id, Hold { epoch, spoke: None });
    }

    /// Notes the spoke this hub runs transfer `id` on (`None`: not on a spoke now).
    fn set_spoke(&self, id: i64, spoke: Option<i64>) {
        if let Some(h) = lock(&self.held).get_mut(&id) {
            h.spoke = spoke;
        }
    }

    /// Transfers this process holds and their epochs.
    fn held(&self) -> Vec<(i64, i64)> {
        lock(&self.held)
            .iter()
            .map(|(k, h)| (*k, h.epoch))
            .collect()
    }

    fn distrusted(&self, id: i64) -> Vec<i64> {
        lock(&self.distrusted).get(&id).cloned().unwrap_or_default()
    }
}

/// Who must be running a transfer for its completion to count: a transfer re-assigned in
/// the meantime (a lost spoke, a hub restart) is finished only by its current executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Executor {
    Spoke(i64),
    /// The hub, in the run that made `attempts` what it is.
    Hub {
        attempts: i64,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TransferBook {
    /// Live progress of a running transfer: `(bytes_done, bytes_per_sec)`.
    pub fn live(&self, id: i64) -> Option<(u64, u64)> {
        lock(&self.live)
            .get(&id)
            .map(|l| (l.bytes_done, l.bytes_per_sec))
    }
}

/// This hub's address, recorded as the `owner` (creator) of the transfers it creates.
pub fn owner(state: &AppState) -> String {
    state
        .network
        .advertise()
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.public_url())
}

/// This process's lease holder id: `<advertise or public url>#<16 hex>`, new for every
/// process, so a restarted hub never mistakes its predecessor's leases for its own.
pub fn holder(state: &AppState) -> Arc<str> {
    state
        .transfers
        .holder
        .get_or_init(|| format!("{}#{}", owner(state), state.transfers.nonce).into())
        .clone()
}

/// The lease this process holds on transfer `id`, if any.
fn lease(state: &AppState, id: i64) -> Option<Lease> {
    let epoch = lock(&state.transfers.held).get(&id)?.epoch;
    Some(Lease {
        holder: holder(state),
        epoch,
    })
}

/// When a lease taken or renewed now runs out.
fn lease_until(state: &AppState) -> i64 {
    now_ms() + state.config.transfers.lease_ms as i64
}

/// This hub no longer holds transfer `id` (taken over by another hub, or ended by a cancel
/// elsewhere): it drops its state and stops its own run, on its spoke or inline. Nothing is
/// written: the transfer belongs to whoever holds it now.
async fn lost(state: &AppState, id: i64, why: &str) {
    let Some(hold) = lock(&state.transfers.held).remove(&id) else {
        return;
    };
    tracing::info!(
        transfer = id,
        epoch = hold.epoch,
        reason = why,
        "lost the lease of the transfer; dropping it"
    );
    if let Some(s) = hold.spoke {
        // The spoke stops only the run this hub's session started (a newer holder's run of
        // the same transfer on the same spoke goes on).
        state
            .network
            .registry
            .send(s, HubMsg::Cancel { transfer_id: id });
        state.network.registry.note_assigned(s, -1);
    }
    if let Some(c) = lock(&state.transfers.inline).remove(&id) {
        c.cancel();
    }
    state.transfers.ended(id);
    state.transfers.changed.notify_waiters();
}

/// After a holder write changed nothing: if this hub's lease is gone, drop the transfer.
async fn check_lease(state: &AppState, id: i64, lease: &Lease) {
    if let Ok(false) = state.db.holds(id, lease).await {
        lost(state, id, "a write was fenced off").await;
    }
}

/// Whether a copy of `size` bytes from `src` to `dst` goes to a spoke.
pub fn should_offload(state: &AppState, src: &Account, dst: &Account, size: u64) -> bool {
    src.record.id != dst.record.id || size >= state.config.offload.threshold
}

/// Creates a copy transfer and dispatches it.
pub async fn create_copy(
    state: &AppState,
    app_id: i64,
    src: &Account,
    src_path: &StoragePath,
    dst: &Account,
    dst_path: &StoragePath,
    size: u64,
) -> ApiResult<TransferRecord> {
    let part_size = choose_part_size(size, state.config.offload.part_size);
    let owner = owner(state);
    create(
        state,
        &NewTransfer {
            app_id,
            kind: "copy",
            src_account: src.record.id,
            src_path: src_path.as_str(),
            dst_account: dst.record.id,
            dst_path: dst_path.as_str(),
            size: size as i64,
            part_size: part_size as i64,
            owner: &owner,
            src_url: None,
        },
    )
    .await
}

/// What an upload from a URL found when the hub accepted it.
#[derive(Debug)]
pub struct UrlSource<'a> {
    /// The URL the client gave.
    pub url: &'a str,
    /// Its origin (`scheme://host[:port]`), shown as the transfer's source.
    pub origin: String,
    /// Its length, when the server said.
    pub size: Option<u64>,
    /// The server answers byte ranges (the copy then goes in resumable parts).
    pub ranges: bool,
    /// The file replaces the one at the destination (the feed records an update).
    pub replace: bool,
}

/// Creates the transfer of an upload from a URL into `dst_path` of `dst` and dispatches it.
pub async fn create_url(
    state: &AppState,
    app_id: i64,
    dst: &Account,
    dst_path: &StoragePath,
    src: &UrlSource<'_>,
) -> ApiResult<TransferRecord> {
    let part_size = match (src.ranges, src.size) {
        (true, Some(n)) => choose_part_size(n, state.config.offload.part_size),
        _ => 0,
    };
    let sealed = seal_url(state, app_id, dst.record.id, dst_path.as_str(), src.url);
    let owner = owner(state);
    create(
        state,
        &NewTransfer {
            app_id,
            kind: if src.replace { "url_replace" } else { "url" },
            src_account: dst.record.id,
            src_path: &src.origin,
            dst_account: dst.record.id,
            dst_path: dst_path.as_str(),
            size: src.size.map_or(-1, |n| n as i64),
            part_size: part_size as i64,
            owner: &owner,
            src_url: Some(&sealed),
        },
    )
    .await
}

/// Inserts a transfer held by this hub and dispatches it.
async fn create(state: &AppState, new: &NewTransfer<'_>) -> ApiResult<TransferRecord> {
    let me = holder(state);
    let rec = state
        .db
        .create_transfer(new, &me, lease_until(state), now_ms())
        .await?;
    state.transfers.hold(rec.id, rec.lease_epoch);
    // The dispatcher decides from the primary's view, not the replica's (see db::topology).
    crate::db::topology::detached(dispatch(state, rec.id, &[])).await;
    Ok(state.db.get_transfer(rec.id).await?.unwrap_or(rec))
}

/// What binds a sealed source URL to its transfer: a sealed URL copied into another row does
/// not open.
fn url_aad(app_id: i64, dst_account: i64, dst_path: &str) -> String {
    format!("transfer-url:{app_id}:{dst_account}:{dst_path}")
}

/// Seals a source URL for the database (a presigned URL is a credential).
fn seal_url(state: &AppState, app_id: i64, dst_account: i64, dst_path: &str, url: &str) -> Vec<u8> {
    state.sealer.seal(
        url.as_bytes(),
        url_aad(app_id, dst_account, dst_path).as_bytes(),
    )
}

/// The URL source of an upload from a URL, opened, with its limits; `None` for copies.
fn url_fetch(state: &AppState, t: &TransferRecord) -> ApiResult<Option<UrlFetch>> {
    let Some(sealed) = &t.src_url else {
        return Ok(None);
    };
    let plain = state
        .sealer
        .open(
            sealed,
            url_aad(t.app_id, t.dst_account, &t.dst_path).as_bytes(),
        )
        .map_err(|_| {
            ApiError::internal(format_args!("transfer {}: its URL does not open", t.id))
        })?;
    let url = String::from_utf8(plain)
        .map_err(|_| ApiError::internal(format_args!("transfer {}: its URL is not text", t.id)))?;
    Ok(Some(UrlFetch {
        url: Redacted(url),
        size: u64::try_from(t.size).ok(),
        max_bytes: state.config.limits.max_upload_bytes,
    }))
}

/// The transfer's parts: none for a URL source copied as one stream.
fn planned(t: &TransferRecord) -> Vec<shared::storage::transfer::PartPlan> {
    if t.src_url.is_some() && t.part_size <= 0 {
        Vec::new()
    } else {
        plan_parts(t.size.max(0) as u64, t.part_size as u64)
    }
}

/// Opens both accounts of a transfer.
async fn accounts(state: &AppState, t: &TransferRecord) -> ApiResult<(Arc<Account>, Arc<Account>)> {
    let src = state.account(t.app_id, t.src_account).await?;
    let dst = state.account(t.app_id, t.dst_account).await?;
    Ok((src, dst))
}

fn path(p: &str) -> ApiResult<StoragePath> {
    StoragePath::parse(p).map_err(|e| ApiError::internal(format_args!("stored path {p:?}: {e}")))
}

/// The destination's resumable multipart target, when it has one.
/// Its client follows the account connector's egress policy (the SSRF guard).
fn multipart_target(dst: &Account, path: &StoragePath) -> ApiResult<Option<S3Multipart>> {
    match &dst.settings {
        ServiceConfig::S3(s) => Ok(Some(
            S3Multipart::for_settings(s, path, dst.connector.egress())?
                .with_budget(dst.connector.budget().clone()),
        )),
        _ => Ok(None),
    }
}

fn endpoint_of(cfg: &ServiceConfig) -> Option<String> {
    cfg.endpoint_addr()
        .ok()
        .flatten()
        .map(|(h, p)| format!("{h}:{p}"))
}

/// Picks an executor for a queued transfer and starts it there. Never fails for lack of a
/// spoke: after the start-up grace period, the hub runs it itself.
/// Only the lease holder dispatches: a transfer this hub does not hold is left alone.
pub async fn dispatch(state: &AppState, id: i64, exclude: &[i64]) {
    if state.transfers.is_closing() {
        return;
    }
    let Some(lease) = lease(state, id) else {
        return;
    };
    if let Err(e) = try_dispatch(state, id, &lease, exclude).await {
        tracing::warn!(transfer = id, error = %e.message(), "dispatch failed");
        match state
            .db
            .finish_transfer(
                id,
                &lease,
                "failed",
                None,
                Some(e.message()),
                None,
                now_ms(),
            )
            .await
        {
            Ok(true) => {
                state.transfers.ended(id);
                state.transfers.changed.notify_waiters();
            }
            _ => check_lease(state, id, &lease).await,
        }
    }
}

async fn try_dispatch(state: &AppState, id: i64, lease: &Lease, exclude: &[i64]) -> ApiResult<()> {
    let Some(t) = state.db.get_transfer(id).await? else {
        return Ok(());
    };
    if t.state != "queued" {
        return Ok(());
    }
    if t.lease_holder.as_deref() != Some(&*lease.holder) || t.lease_epoch != lease.epoch {
        lost(state, id, "another hub holds it").await;
        return Ok(());
    }
    // Spokes whose reports were refused never get this transfer again. A transfer poisoned by
    // such reports is not failed for the attempts they wasted: it gets a second allowance, run
    // by the hub itself.
    let distrusted = state.transfers.distrusted(id);
    // Spokes that failed this transfer lately (recorded with it, by whichever hub saw the
    // failure) stay away from it until their exclusion runs out.
    let excluded: Vec<(i64, i64, String)> = state
        .db
        .transfer_exclusions(id, now_ms())
        .await?
        .into_iter()
        .map(|e| (e.spoke_id, e.until_ms, e.reason))
        .collect();
    let excluded_note = exclusion_note(state, &excluded).await;
    let exclude: Vec<i64> = exclude
        .iter()
        .chain(&distrusted)
        .chain(excluded.iter().map(|(spoke, ..)| spoke))
        .copied()
        .collect();
    let exclude = exclude.as_slice();
    let poisoned = !distrusted.is_empty();
    let hub_only = poisoned && t.attempts >= MAX_ATTEMPTS;
    let limit = if poisoned {
        2 * MAX_ATTEMPTS
    } else {
        MAX_ATTEMPTS
    };
    if t.attempts >= limit {
        state
            .db
            .finish_transfer(
                id,
                lease,
                "failed",
                None,
                Some(&format!("gave up after {} attempts", t.attempts)),
                None,
                now_ms(),
            )
            .await?;
        state.transfers.ended(id);
        state.transfers.changed.notify_waiters();
        return Ok(());
    }
    let (src, dst) = accounts(state, &t).await?;
    let dst_path = path(&t.dst_path)?;
    let fetch = url_fetch(state, &t)?;
    // Resumable destinations get their multipart upload once, up front (a URL source only
    // when it answers ranges).
    let mut upload_id = t.upload_id.clone();
    if upload_id.is_none() && (fetch.is_none() || t.part_size > 0) {
        if let Some(mp) = multipart_target(&dst, &dst_path)? {
            let id_ = mp.create().await?;
            if state.db.set_transfer_upload_id(id, lease, &id_).await? {
                upload_id = Some(id_);
            } else {
                // Another dispatcher (the API's or the tick's) was first: use its upload.
                let _ = mp.abort(&id_).await;
                return Ok(());
            }
        }
    }
    // A URL's host is no storage endpoint spokes measure: only the destination counts.
    let src_ep = match fetch {
        Some(_) => None,
        None => endpoint_of(&src.settings),
    };
    let dst_ep = endpoint_of(&dst.settings);
    let near: Vec<String> = [src_ep.clone(), dst_ep.clone()]
        .into_iter()
        .flatten()
        .collect();
    let registry = &state.network.registry;
    let region = Some(state.config.region.as_str());
    // `fs` accounts only go to spokes that declared a folder holding their root.
    let mut exclude = exclude.to_vec();
    if fetch.is_some() {
        exclude.extend(registry.without_url_sources());
    }
    for acc in [&src, &dst] {
        if let ServiceConfig::Fs(fs) = &acc.settings {
            exclude.extend(registry.without_fs_root(std::path::Path::new(&fs.root)));
        }
    }
    let exclude = exclude.as_slice();
    // The hub measures the same endpoints itself: the floor under what spokes may claim.
    measure_storage(
        state,
        [
            src_ep.clone().map(|e| (e, src.connector.egress().clone())),
            dst_ep.clone().map(|e| (e, dst.connector.egress().clone())),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    // Spokes measure storage endpoints when asked; a new transfer waits a moment for that.
    let age = Duration::from_millis(now_ms().saturating_sub(t.created_ms).max(0) as u64);
    if registry.request_probes(&near) && age < PROBE_WAIT {
        return Ok(());
    }
    // The spoke nearest the destination writes; when another spoke is clearly nearer the
    // source, that one reads and relays (resumable destinations only: parts are the unit).
    let mut relay = None;
    let mut pick = None;
    if let (false, true, Some(_), Some(s), Some(d)) = (
        hub_only,
        state.config.offload.relay,
        &upload_id,
        &src_ep,
        &dst_ep,
    ) {
        if let Some(w) = registry.choose(region, std::slice::from_ref(d), exclude) {
            if let Some(r) = registry.choose_relay(s, w.spoke_id, exclude) {
                relay = Some(r);
                pick = Some(w);
            }
        }
    }
    let pick = match hub_only {
        true => None,
        false => pick.or_else(|| registry.choose(region, &near, exclude)),
    };
    let done: Vec<PartDone> = state
        .db
        .transfer_parts(id)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let plan = planned(&t);
    let total_parts = plan.len();
    let todo: Vec<_> = plan
        .into_iter()
        .filter(|p| !done.iter().any(|d| d.index == p.index))
        .collect();
    let resumed = (!done.is_empty() && upload_id.is_some()).then(|| {
        format!(
            "resumed with {} of {total_parts} parts already durable",
            done.len()
        )
    });
    match pick {
        Some(pick) => {
            let relay_from = relay
                .and_then(|(rid, addr)| relay_grant(state, rid, addr, pick.spoke_id, &src, &t));
            let relayed = relay_from
                .as_ref()
                .map(|r| format!("source relayed by spoke {} (nearer the source)", r.spoke_id));
            let said: Vec<&str> = [&relayed, &resumed, &excluded_note]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let note = (!said.is_empty()).then(|| said.join("; "));
            // A URL source has no location: the destination's stands in (spokes that fetch
            // URLs never read it).
            let source = match &fetch {
                Some(_) => Location {
                    service: dst.settings.clone(),
                    path: t.dst_path.clone(),
                },
                None => Location {
                    service: src.settings.clone(),
                    path: t.src_path.clone(),
                },
            };
            let assignment = Assignment {
                transfer_id: id,
                source,
                dest: Location {
                    service: dst.settings.clone(),
                    path: t.dst_path.clone(),
                },
                size: t.size.max(0) as u64,
                part_size: t.part_size as u64,
                upload_id,
                parts: todo,
                done,
                concurrency: state.config.offload.part_concurrency,
                rate_limit: state.config.offload.spoke_rate_limit,
                relay: relay_from,
                source_url: fetch,
            };
            if !state
                .db
                .assign_transfer(
                    id,
                    lease,
                    "spoke",
                    Some(pick.spoke_id),
                    Some(&pick.region),
                    note.as_deref(),
                    now_ms(),
                )
                .await?
            {
                return Ok(());
            }
            if pick.tx.send(HubMsg::Assign(Box::new(assignment))).is_err() {
                state
                    .db
                    .requeue_transfer(
                        id,
                        lease,
                        "the chosen spoke went away before the assignment",
                        now_ms(),
                    )
                    .await?;
                return Ok(());
            }
            state.transfers.set_spoke(id, Some(pick.spoke_id));
            state.network.registry.note_assigned(pick.spoke_id, 1);
            tracing::info!(
                transfer = id,
                spoke = pick.spoke_id,
                "transfer assigned to spoke"
            );
        }
        None => {
            let grace = Duration::from_secs(state.config.offload.startup_grace_secs);
            if state.transfers.started.elapsed() < grace {
                // Spokes may still be reconnecting after a hub restart; the tick retries.
                return Ok(());
            }
            let mut note = if poisoned {
                let ids: Vec<String> = distrusted.iter().map(i64::to_string).collect();
                format!(
                    "reports of spoke {} were refused and no other spoke is healthy: the hub \
                     ran this transfer itself",
                    ids.join(", ")
                )
            } else if let Some(x) = &excluded_note {
                format!("{x}; no other spoke can take it: the hub ran this transfer itself")
            } else {
                "no healthy spoke: the hub ran this transfer itself".to_owned()
            };
            if let Some(r) = &resumed {
                note = format!("{note}; {r}");
            }
            if let (true, Some(x)) = (poisoned, &excluded_note) {
                note = format!("{note}; {x}");
            }
            if !state
                .db
                .assign_transfer(
                    id,
                    lease,
                    "hub",
                    None,
                    Some(&state.config.region),
                    Some(&note),
                    now_ms(),
                )
                .await?
            {
                return Ok(());
            }
            tracing::info!(
                transfer = id,
                "no healthy spoke; running the transfer on the hub"
            );
            let cancel = CancellationToken::new();
            lock(&state.transfers.inline).insert(id, cancel.clone());
            // assign_transfer counted this attempt.
            let run = Executor::Hub {
                attempts: t.attempts + 1,
            };
            let state = state.clone();
            let lease = lease.clone();
            tokio::spawn(async move {
                let result = run_inline(
                    &state, id, &lease, run, src, dst, fetch, upload_id, todo, done, cancel,
                )
                .await;
                lock(&state.transfers.inline).remove(&id);
                if let Err(e) = result {
                    requeue_or_fail(&state, id, &lease, e.message(), e.retryable(), None).await;
                }
            });
        }
    }
    Ok(())
}

/// Registers a `RELAY` grant for the transfer's source on spoke `relay`, for spoke `writer`
/// only, and signs it for the writer; `None` when the relay spoke is gone.
fn relay_grant(
    state: &AppState,
    relay: i64,
    addr: String,
    writer: i64,
    src: &Account,
    t: &TransferRecord,
) -> Option<RelayFrom> {
    let g = shared::proto::Grant {
        grant_id: crate::network::new_grant_id(),
        method: "RELAY".to_owned(),
        account: src.id(),
        location: Location {
            service: src.settings.clone(),
            path: t.src_path.clone(),
        },
        file_id: String::new(),
        expires: now_ms() / 1000 + RELAY_GRANT.as_secs() as i64,
        max_bytes: 0,
        replace: false,
        declared_len: None,
        staging: None,
        claim: None,
        receipt: None,
        part: None,
        reader: Some(writer),
    };
    let (grant_id, expires) = (g.grant_id.clone(), g.expires);
    let signature = crate::network::grant(state, relay, g)?;
    Some(RelayFrom {
        spoke_id: relay,
        addr,
        grant_id,
        expires,
        signature: shared::proto::Redacted(signature),
    })
}

/// Runs a transfer on the hub with the same engine spokes use.
#[allow(clippy::too_many_arguments)]
async fn run_inline(
    state: &AppState,
    id: i64,
    lease: &Lease,
    run: Executor,
    src: Arc<Account>,
    dst: Arc<Account>,
    fetch: Option<UrlFetch>,
    upload_id: Option<String>,
    todo: Vec<shared::storage::transfer::PartPlan>,
    done: Vec<PartDone>,
    cancel: CancellationToken,
) -> ApiResult<()> {
    let Some(t) = state.db.get_transfer(id).await? else {
        return Ok(());
    };
    let dst_path = path(&t.dst_path)?;
    let opts = CopyOptions {
        concurrency: state.config.offload.part_concurrency as usize,
        ..CopyOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let base: u64 = done.iter().map(|p| p.len).sum();
    let total = u64::try_from(t.size).ok();
    let reporter = {
        let state = state.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            // Verified parts plus the current attempts of parts in flight: a retried part's
            // failed attempt does not count on top of its retry.
            let mut moved = Progress::new(total, base);
            let started = Instant::now();
            while let Some(ev) = rx.recv().await {
                let bytes_done = moved.observe(&ev);
                match ev {
                    CopyEvent::Bytes { .. } => {
                        let rate = moved.sent() as f64 / started.elapsed().as_secs_f64().max(0.001);
                        progress(&state, id, &lease, bytes_done, rate as u64).await;
                    }
                    CopyEvent::PartDone(p) => {
                        if let Ok(false) =
                            state.db.record_part(id, &lease, &p, None, now_ms()).await
                        {
                            // Taken over: this run stops (its parts are the new holder's
                            // to plan).
                            check_lease(&state, id, &lease).await;
                        }
                    }
                    CopyEvent::PartRetry { index, error } => {
                        tracing::warn!(transfer = id, part = index, %error, "part retried");
                    }
                }
            }
        })
    };
    let mp = multipart_target(&dst, &dst_path)?;
    let result = match (fetch, upload_id, mp) {
        (Some(fetch), upload_id, mp) => {
            let target = match (&upload_id, &mp) {
                (Some(upload_id), Some(mp)) => UrlTarget::Parts {
                    upload: mp,
                    upload_id,
                    parts: todo,
                },
                _ => UrlTarget::Stream {
                    dst: &dst.connector,
                    path: &dst_path,
                },
            };
            let egress = &state.connect_options.egress;
            copy_from_url(&fetch, egress, target, &opts, tx, cancel)
                .await
                .map(|c| c.map(|c| (c.sha256, c.size)))
        }
        (None, Some(upload_id), Some(mp)) => copy_parts_via(
            range_source(&src.settings, &src.connector, &path(&t.src_path)?)?,
            &mp,
            &upload_id,
            todo,
            &opts,
            tx,
            cancel,
        )
        .await
        .map(|()| None),
        (None, ..) => copy_stream(
            &src.connector,
            &path(&t.src_path)?,
            &dst.connector,
            &dst_path,
            &opts,
            tx,
            cancel,
        )
        .await
        .map(|c| Some((c.sha256, c.size))),
    };
    let _ = reporter.await;
    let reported = result?;
    match complete(state, id, lease, run, reported).await {
        Ok(()) => Ok(()),
        Err(Incomplete::Failed(e)) => Err(e),
        // Our own run left a destination that does not match its parts (another writer, a
        // provider that lost a part): forget what cannot be verified and try again.
        Err(Incomplete::Unverified(why)) => {
            tracing::warn!(transfer = id, reason = %why, "the hub's own copy did not verify");
            if let Some(t) = state.db.get_transfer(id).await? {
                reconcile_parts(state, &t, lease).await?;
            }
            Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "transfer_unverified",
                format!("the destination did not verify: {why}"),
            ))
        }
    }
}

/// Why a completion did not mark a transfer done.
#[derive(Debug)]
enum Incomplete {
    /// Something failed on the way (the database, the provider); retrying may help.
    Failed(ApiError),
    /// The executor's claims do not hold: the destination is missing or differs from the
    /// durable parts, or the reported checksum is not theirs.
    Unverified(String),
}

impl From<ApiError> for Incomplete {
    fn from(e: ApiError) -> Self {
        Incomplete::Failed(e)
    }
}

impl From<sqlx::Error> for Incomplete {
    fn from(e: sqlx::Error) -> Self {
        Incomplete::Failed(e.into())
    }
}

impl From<StorageError> for Incomplete {
    fn from(e: StorageError) -> Self {
        Incomplete::Failed(e.into())
    }
}

/// Checks the destination object the way its provider allows: it exists and has the
/// transfer's size; on S3, a multipart copy's object ETag is the one its durable parts'
/// ETags predict (so parts that were never uploaded, or other bytes, do not pass).
async fn verify_destination(
    state: &AppState,
    t: &TransferRecord,
    size: u64,
    parts: &[PartDone],
) -> Result<Entry, Incomplete> {
    let (_, dst) = accounts(state, t).await?;
    let dst_path = path(&t.dst_path)?;
    // A provider hiccup is not a false report: the check is retried a few times before the
    // completion counts as failed (and is retried as a whole).
    let mut attempt = 0;
    let entry = loop {
        let stat = tokio::time::timeout(VERIFY_TIMEOUT, dst.connector.stat_file(&dst_path))
            .await
            .unwrap_or_else(|_| {
                Err(StorageError::Unavailable(format!(
                    "no answer within {VERIFY_TIMEOUT:?}"
                )))
            });
        match stat {
            Ok(e) => break e,
            Err(StorageError::NotFound) => {
                return Err(Incomplete::Unverified(
                    "the destination object does not exist".into(),
                ))
            }
            Err(e) if attempt < VERIFY_RETRIES => {
                attempt += 1;
                tracing::warn!(transfer = t.id, error = %e, attempt,
                               "checking the destination failed; trying again");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if entry.size != size {
        return Err(Incomplete::Unverified(format!(
            "the destination object holds {} bytes, the transfer {size}",
            entry.size
        )));
    }
    if t.upload_id.is_some() {
        if let (Some(want), Some(got)) = (multipart_etag(parts), entry.etag.as_deref()) {
            let got = got.trim().trim_start_matches("W/").trim_matches('"');
            if !got.eq_ignore_ascii_case(&want) {
                return Err(Incomplete::Unverified(format!(
                    "the destination object's ETag {got} is not the {want} its parts predict"
                )));
            }
        }
    }
    Ok(entry)
}

/// Completes a transfer whose parts are all durable: assembles the multipart upload if the
/// hub runs it, checks the parts cover the object, records the checksum. `reported` is a
/// stream copy's digest and length (the length counts only for a URL source of unknown
/// length; the destination must then hold exactly that).
async fn complete(
    state: &AppState,
    id: i64,
    lease: &Lease,
    by: Executor,
    reported: Option<(String, u64)>,
) -> Result<(), Incomplete> {
    let Some(t) = state.db.get_transfer(id).await? else {
        return Ok(());
    };
    if t.lease_holder.as_deref() != Some(&*lease.holder) || t.lease_epoch != lease.epoch {
        lost(state, id, "another hub holds it").await;
        return Ok(());
    }
    let current = match (t.executor.as_deref(), t.spoke_id) {
        (Some("spoke"), Some(s)) => Some(Executor::Spoke(s)),
        (Some("hub"), _) => Some(Executor::Hub {
            attempts: t.attempts,
        }),
        _ => None,
    };
    if t.state != "running" || current != Some(by) {
        tracing::warn!(transfer = id, ?by, ?current, state = %t.state,
                       "a completion from a run that no longer owns the transfer is ignored");
        return Ok(());
    }
    let parts: Vec<PartDone> = state
        .db
        .transfer_parts(id)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let checksum = if t.upload_id.is_some() {
        let plan = plan_parts(t.size as u64, t.part_size as u64);
        let covered = parts.len() == plan.len()
            && parts
                .iter()
                .zip(&plan)
                .all(|(p, q)| p.index == q.index && p.len == q.len);
        if !covered {
            return Err(ApiError::internal(format_args!(
                "transfer {id}: {} of {} parts are durable at completion",
                parts.len(),
                plan.len()
            ))
            .into());
        }
        let ours = composite_sha256(&parts);
        if let Some((r, _)) = &reported {
            if r != &ours {
                return Err(Incomplete::Unverified(format!(
                    "the reported checksum {r} is not the durable parts' {ours}"
                )));
            }
        }
        // The lease holder completes the upload, whoever moved the parts: a spoke run left
        // behind by a hub that lost the transfer (dead, stopped) never completes it under
        // the new holder's feet. The last look at the lease comes just before this side
        // effect, which no fence can undo.
        if !state.db.holds(id, lease).await? {
            lost(state, id, "taken over before completing the upload").await;
            return Ok(());
        }
        let (_, dst) = accounts(state, &t).await?;
        if let (Some(upload), Some(mp)) =
            (&t.upload_id, multipart_target(&dst, &path(&t.dst_path)?)?)
        {
            let list: Vec<(u16, String)> = parts
                .iter()
                .map(|p| ((p.index + 1) as u16, p.etag.clone()))
                .collect();
            match mp.complete(upload, &list).await {
                Ok(_) => {}
                // Completed already (a completion whose `done` was not recorded, or a spoke
                // of an earlier version that completes uploads itself): the destination
                // check below decides.
                Err(StorageError::NotFound) => {}
                // S3 refused the part list: the upload does not hold the reported parts.
                Err(StorageError::Other(why)) => return Err(Incomplete::Unverified(why)),
                Err(e) => {
                    tracing::warn!(transfer = id, error = %e, "completing the upload failed");
                    return Err(e.into());
                }
            }
        }
        Some(ours)
    } else {
        reported.as_ref().map(|(c, _)| c.clone())
    };
    let Some(size) = u64::try_from(t.size)
        .ok()
        .or(reported.as_ref().map(|(_, n)| *n))
    else {
        return Err(Incomplete::Unverified(
            "no length was reported for a source of unknown length".into(),
        ));
    };
    let landed = verify_destination(state, &t, size, &parts).await?;
    // An upload from a URL is the destination's upload (added, or updating the file it
    // replaced); a copy is a copy.
    let (kind, action) = match t.kind.as_str() {
        "url" => (crate::events::kind::ADD, "upload"),
        "url_replace" => (crate::events::kind::UPDATE, "upload"),
        _ => (crate::events::kind::COPY, "transfer"),
    };
    // The copy landing is the destination account's event, written in the transaction that
    // marks the transfer done: a fenced completion records none, and a recorded `done` has
    // exactly one.
    let event = crate::events::new_event(
        &state.ids,
        &crate::events::Change {
            account: t.dst_account,
            kind,
            action,
            entry: &landed,
            from: None,
            dedupe_key: None,
        },
    );
    // A view that read the row while it was still `running` and finds the live figure gone
    // falls back to the stored one: it must be what the live one showed.
    flush_progress(state, id, lease).await;
    let finished = match state
        .db
        .finish_transfer_done(
            id,
            lease,
            checksum.as_deref(),
            size as i64,
            &event,
            now_ms(),
        )
        .await
    {
        Ok(done) => done.map(|recorded| {
            if recorded {
                state.metrics.events_recorded.inc();
            }
        }),
        Err(e) => {
            // Never fail a verified copy for its event: finish it without one.
            crate::events::failed(state, &event, &e);
            state
                .db
                .finish_transfer(
                    id,
                    lease,
                    "done",
                    checksum.as_deref(),
                    None,
                    Some(size as i64),
                    now_ms(),
                )
                .await?
                .then_some(())
        }
    };
    if finished.is_none() {
        tracing::warn!(
            transfer = id,
            "the completion was fenced off: another hub holds it"
        );
        check_lease(state, id, lease).await;
        return Ok(());
    }
    state.transfers.ended(id);
    state.transfers.changed.notify_waiters();
    tracing::info!(transfer = id, executor = ?t.executor, "transfer done");
    Ok(())
}

async fn progress(state: &AppState, id: i64, lease: &Lease, bytes_done: u64, bytes_per_sec: u64) {
    let (persist, bytes_done) = {
        let mut live = lock(&state.transfers.live);
        let e = live.entry(id).or_insert(Live {
            bytes_done,
            bytes_per_sec,
            persisted: None,
        });
        // Never backwards: a resumed run starts from its durable parts, which may be less
        // than an earlier run of this transfer showed.
        e.bytes_done = e.bytes_done.max(bytes_done);
        e.bytes_per_sec = bytes_per_sec;
        let persist = e
            .persisted
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if persist {
            e.persisted = Some(Instant::now());
        }
        (persist, e.bytes_done)
    };
    if persist {
        if let Ok(false) = state
            .db
            .set_transfer_progress(id, lease, bytes_done as i64, now_ms())
            .await
        {
            check_lease(state, id, lease).await;
        }
    }
}

/// Re-queues a failed attempt (the scheduler tick dispatches it) or fails the transfer.
/// `failed_by`: the spoke whose run failed, kept away from the transfer for a while.
/// Returns whether it was re-queued.
async fn requeue_or_fail(
    state: &AppState,
    id: i64,
    lease: &Lease,
    message: &str,
    retryable: bool,
    failed_by: Option<i64>,
) -> bool {
    state.transfers.set_spoke(id, None);
    flush_progress(state, id, lease).await;
    let now = now_ms();
    if retryable {
        let requeued = match failed_by {
            Some(spoke) => requeue_excluding(state, id, lease, spoke, message).await,
            None => {
                state
                    .db
                    .requeue_transfer(id, lease, &format!("retrying after: {message}"), now)
                    .await
            }
        };
        if let Ok(true) = requeued {
            return true;
        }
    }
    match state
        .db
        .finish_transfer(id, lease, "failed", None, Some(message), None, now)
        .await
    {
        Ok(true) => {
            state.transfers.ended(id);
            state.transfers.changed.notify_waiters();
        }
        _ => check_lease(state, id, lease).await,
    }
    false
}

/// Like [`requeue_or_fail`], then dispatches at once away from the spoke that failed. With
/// `exclude_for_a_while`, that spoke stays away from the transfer for
/// `transfers.failed_spoke_exclusion_secs`, whichever hub dispatches it.
async fn fail_or_retry(
    state: &AppState,
    id: i64,
    lease: &Lease,
    spoke: i64,
    message: &str,
    retryable: bool,
    exclude_for_a_while: bool,
) {
    let failed_by = exclude_for_a_while.then_some(spoke);
    if requeue_or_fail(state, id, lease, message, retryable, failed_by).await {
        dispatch(state, id, &[spoke]).await;
    }
}

/// The longest reason stored with an exclusion (and shown in the note).
const MAX_REASON: usize = 300;

/// Re-queues a running transfer that spoke `spoke` failed (`why`: its report, or how it was
/// lost) and keeps that spoke away from it for `transfers.failed_spoke_exclusion_secs`: the
/// exclusion is written with the re-queue, fenced by the lease, so whichever hub dispatches
/// the transfer next honours it. The note says which spoke, why and until when. False when
/// the transfer is not running under `lease`.
async fn requeue_excluding(
    state: &AppState,
    id: i64,
    lease: &Lease,
    spoke: i64,
    why: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let why = truncate(why, MAX_REASON);
    let ttl = state.config.transfers.failed_spoke_exclusion();
    if ttl.is_zero() {
        let note = format!("spoke {spoke} failed this transfer: {why}; retrying");
        return state.db.requeue_transfer(id, lease, &note, now).await;
    }
    let until = now.saturating_add(ttl.as_millis() as i64);
    let name = spoke_name(state, spoke).await;
    let note = excluded_text(spoke, &name, why, until);
    tracing::info!(transfer = id, spoke, until = %crate::model::rfc3339(until), reason = %why,
                   "the spoke failed the transfer; kept away from it for a while");
    state
        .db
        .requeue_transfer_excluding(id, lease, &note, spoke, why, until, now)
        .await
}

/// How the note names an excluded spoke.
fn excluded_text(spoke: i64, name: &str, why: &str, until: i64) -> String {
    format!(
        "spoke {spoke} ({name}) failed this transfer: {why}; excluded until {}",
        crate::model::rfc3339(until)
    )
}

/// The note's account of the spokes kept away from a transfer (spoke, until when, why);
/// `None` when none is.
async fn exclusion_note(state: &AppState, excluded: &[(i64, i64, String)]) -> Option<String> {
    if excluded.is_empty() {
        return None;
    }
    let mut said = Vec::with_capacity(excluded.len());
    for (spoke, until, why) in excluded {
        let name = spoke_name(state, *spoke).await;
        said.push(excluded_text(*spoke, &name, why, *until));
    }
    Some(said.join("; "))
}

/// A spoke's name for notes (`?` when it cannot be read).
async fn spoke_name(state: &AppState, spoke: i64) -> String {
    match state.db.get_spoke(spoke).await {
        Ok(Some(s)) => s.name,
        _ => "?".to_owned(),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the progress this hub last saw of a running transfer it holds, before the
/// transfer leaves `running` (re-queued, failed, cancelled): the stored figure is what every
/// view shows then, and it must not fall below what the live one showed.
async fn flush_progress(state: &AppState, id: i64, lease: &Lease) {
    if let Some((bytes_done, _)) = state.transfers.live(id) {
        let _ = state
            .db
            .set_transfer_progress(id, lease, bytes_done as i64, now_ms())
            .await;
    }
}

/// Deletes the exclusions of spokes from transfers that ran out (see [`requeue_excluding`]),
/// in bounded batches; returns how many went.
pub async fn prune_exclusions(state: &AppState) -> Result<u64, sqlx::Error> {
    state
        .db
        .prune(crate::db::TRANSFER_EXCLUSIONS, now_ms())
        .await
}

/// A report from a spoke about a transfer, on this hub's connection to it. Reports about a
/// transfer this hub does not hold (another hub took it over), or that the spoke no longer
/// runs (it was reassigned), are ignored and that run is cancelled; what is recorded is
/// written under this hub's lease, so a report reaching a hub that just lost the lease
/// changes nothing.
pub async fn on_report(state: &AppState, spoke_id: i64, msg: SpokeMsg) {
    let id = match &msg {
        SpokeMsg::Progress { transfer_id, .. }
        | SpokeMsg::PartDone { transfer_id, .. }
        | SpokeMsg::Done { transfer_id, .. }
        | SpokeMsg::Failed { transfer_id, .. } => *transfer_id,
        _ => return,
    };
    let lease = lease(state, id);
    let t = match (&lease, state.db.get_transfer(id).await) {
        (Some(l), Ok(Some(t)))
            if t.state == "running"
                && t.spoke_id == Some(spoke_id)
                && t.lease_holder.as_deref() == Some(&*l.holder)
                && t.lease_epoch == l.epoch =>
        {
            Some(t)
        }
        (Some(l), Ok(Some(t)))
            if t.lease_holder.as_deref() != Some(&*l.holder) || t.lease_epoch != l.epoch =>
        {
            lost(state, id, "another hub holds it").await;
            None
        }
        _ => None,
    };
    let (Some(t), Some(lease)) = (t, lease) else {
        tracing::debug!(
            transfer = id,
            spoke = spoke_id,
            "report for a transfer this spoke no longer runs for this hub"
        );
        if !matches!(msg, SpokeMsg::Progress { .. }) {
            state
                .network
                .registry
                .send(spoke_id, HubMsg::Cancel { transfer_id: id });
        }
        return;
    };
    match msg {
        SpokeMsg::Progress {
            bytes_done,
            bytes_per_sec,
            ..
        } => {
            // A spoke's progress is shown, never trusted: it cannot exceed the transfer (or,
            // for a source of unknown length, the largest upload).
            let most = u64::try_from(t.size).unwrap_or(state.config.limits.max_upload_bytes);
            let bytes_done = if most == 0 {
                bytes_done
            } else {
                bytes_done.min(most)
            };
            progress(state, id, &lease, bytes_done, bytes_per_sec).await
        }
        SpokeMsg::PartDone { part, .. } => {
            let checked = match t.upload_id {
                Some(_) => check_part(t.size.max(0) as u64, t.part_size as u64, &part),
                None => Err("a part report for a transfer copied as one stream".to_owned()),
            };
            if let Err(why) = checked {
                state.network.registry.note_assigned(spoke_id, -1);
                refuse_report(state, id, &lease, spoke_id, &why).await;
                return;
            }
            match state
                .db
                .record_part(id, &lease, &part, Some(spoke_id), now_ms())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        transfer = id,
                        spoke = spoke_id,
                        part = part.index,
                        "a part report was fenced off: this hub lost the lease"
                    );
                    check_lease(state, id, &lease).await;
                }
                Err(e) => tracing::error!(transfer = id, error = %e, "recording a part failed"),
            }
        }
        SpokeMsg::Done { checksum, size, .. } => {
            state.network.registry.note_assigned(spoke_id, -1);
            let max = state.config.limits.max_upload_bytes;
            let wrong = match u64::try_from(t.size) {
                Ok(n) => size != n,
                // A URL source of unknown length: anything up to the upload limit.
                Err(_) => max > 0 && size > max,
            };
            if wrong {
                let why = format!("`done` with {size} bytes for a transfer of {}", t.size);
                refuse_report(state, id, &lease, spoke_id, &why).await;
                return;
            }
            // Completing a large upload takes the provider a while: off this spoke's
            // control loop, whose heartbeats must keep flowing meanwhile (a `done` is the
            // last report of its run).
            let state = state.clone();
            tokio::spawn(async move {
                let state = &state;
                let reported = Some((checksum, size));
                match complete(state, id, &lease, Executor::Spoke(spoke_id), reported).await {
                    Ok(()) => {}
                    Err(Incomplete::Unverified(why)) => {
                        refuse_report(
                            state,
                            id,
                            &lease,
                            spoke_id,
                            &format!("`done` did not verify: {why}"),
                        )
                        .await;
                    }
                    Err(Incomplete::Failed(e)) => {
                        tracing::warn!(transfer = id, spoke = spoke_id, error = %e.message(),
                                       "completing the transfer failed; retrying");
                        // The completion is the hub's work: the spoke is not to blame.
                        fail_or_retry(state, id, &lease, spoke_id, e.message(), true, false).await;
                    }
                }
            });
        }
        SpokeMsg::Failed {
            message, retryable, ..
        } => {
            state.network.registry.note_assigned(spoke_id, -1);
            tracing::warn!(transfer = id, spoke = spoke_id, %message, "transfer failed on spoke");
            fail_or_retry(state, id, &lease, spoke_id, &message, retryable, true).await;
        }
        _ => {}
    }
}

/// Why a part report does not match the transfer's plan (`size` bytes in parts of
/// `part_size`), if it does not. The offset is not on the wire: the plan derives it from the
/// index, so an index in range with exactly the planned length names exactly the planned
/// range. The digests must at least have their form (the destination check at completion is
/// what proves them).
fn check_part(size: u64, part_size: u64, p: &PartDone) -> Result<(), String> {
    let part = part_size.max(1);
    let count = if size == 0 { 1 } else { size.div_ceil(part) };
    let index = u64::from(p.index);
    if index >= count {
        return Err(format!(
            "part index {} is outside the plan's {count} parts",
            p.index
        ));
    }
    let planned = size.saturating_sub(index * part).min(part);
    if p.len != planned {
        return Err(format!(
            "part {} reported {} bytes, the plan has {planned}",
            p.index, p.len
        ));
    }
    if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("part {} has no well-formed SHA-256", p.index));
    }
    if p.etag.is_empty() || p.etag.len() > 256 || p.etag.chars().any(|c| c.is_control() || c == '"')
    {
        return Err(format!("part {} has no well-formed ETag", p.index));
    }
    Ok(())
}

/// A report of the spoke running transfer `id` did not hold up (`why`). The report is not
/// stored; the spoke loses the transfer and is never given it again by this hub process; the
/// durable parts the destination does not confirm are forgotten; the transfer is re-planned
/// on another executor, the hub itself when no other spoke is healthy. It is not failed.
async fn refuse_report(state: &AppState, id: i64, lease: &Lease, spoke_id: i64, why: &str) {
    tracing::warn!(transfer = id, spoke = spoke_id, reason = %why,
                   "refused a spoke's report; re-planning the transfer without that spoke");
    {
        let mut d = lock(&state.transfers.distrusted);
        let e = d.entry(id).or_default();
        if !e.contains(&spoke_id) {
            e.push(spoke_id);
        }
    }
    state
        .network
        .registry
        .send(spoke_id, HubMsg::Cancel { transfer_id: id });
    state.transfers.set_spoke(id, None);
    // Reports of this spoke are handled one at a time on its connection, so nothing of it is
    // recorded while the parts are checked; the transfer is still ours until re-queued.
    match state.db.get_transfer(id).await {
        Ok(Some(t)) => {
            if let Err(e) = reconcile_parts(state, &t, lease).await {
                tracing::warn!(transfer = id, error = %e.message(),
                               "checking the durable parts failed; forgetting them all");
                let all: Vec<u32> = match state.db.transfer_parts(id).await {
                    Ok(p) => p.into_iter().map(|(p, _)| p.index).collect(),
                    Err(_) => Vec::new(),
                };
                let _ = state.db.forget_parts(id, lease, &all, now_ms()).await;
            }
        }
        Ok(None) => return,
        Err(e) => tracing::warn!(transfer = id, error = %e, "reading the transfer failed"),
    }
    let note = format!("a report of spoke {spoke_id} was refused ({why}); re-planned without it");
    flush_progress(state, id, lease).await;
    match state.db.requeue_transfer(id, lease, &note, now_ms()).await {
        Ok(true) => dispatch(state, id, &[]).await,
        Ok(false) => check_lease(state, id, lease).await,
        Err(e) => tracing::warn!(transfer = id, error = %e, "re-queueing the transfer failed"),
    }
}

/// Forgets the durable parts the destination does not hold as recorded: on S3 a part counts
/// only if ListParts shows its part number with the recorded ETag and size. When the upload is
/// gone (completed or aborted), every part is forgotten and the next dispatch starts a new
/// upload. Destinations without multipart uploads have no durable parts.
async fn reconcile_parts(state: &AppState, t: &TransferRecord, lease: &Lease) -> ApiResult<()> {
    let Some(upload) = &t.upload_id else {
        return Ok(());
    };
    let (_, dst) = accounts(state, t).await?;
    let Some(mp) = multipart_target(&dst, &path(&t.dst_path)?)? else {
        return Ok(());
    };
    let durable = state.db.transfer_parts(t.id).await?;
    let listed = match mp.list_parts(upload).await {
        Ok(l) => Some(l),
        Err(StorageError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let unverified: Vec<u32> = durable
        .iter()
        .filter(|(p, _)| {
            !listed.as_ref().is_some_and(|l| {
                l.iter().any(|(n, etag, size)| {
                    u32::from(*n) == p.index + 1
                        && *size == p.len
                        && etag.trim_matches('"').eq_ignore_ascii_case(&p.etag)
                })
            })
        })
        .map(|(p, _)| p.index)
        .collect();
    if !unverified.is_empty() {
        tracing::warn!(
            transfer = t.id,
            forgotten = unverified.len(),
            kept = durable.len() - unverified.len(),
            "durable parts the destination does not confirm are planned again"
        );
    }
    if !state
        .db
        .forget_parts(t.id, lease, &unverified, now_ms())
        .await?
    {
        return Ok(());
    }
    if listed.is_none() && state.db.clear_transfer_upload_id(t.id, lease).await? {
        if let Err(e) = mp.abort(upload).await {
            tracing::debug!(transfer = t.id, error = %e, "aborting the old upload");
        }
    }
    Ok(())
}

/// How long the hub's own RTT measurement of a storage endpoint counts.
const OWN_PROBE_EVERY: Duration = Duration::from_secs(30);

/// Measures this hub's TCP connect time to storage endpoints (`host:port`) not measured
/// lately, in the background, resolving under each account's egress policy. The registry
/// uses them as the floor under the RTTs spokes claim for the same endpoints.
fn measure_storage(state: &AppState, targets: Vec<(String, shared::egress::EgressPolicy)>) {
    for (endpoint, egress) in targets {
        if !state
            .network
            .registry
            .own_probe_due(&endpoint, OWN_PROBE_EVERY)
        {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let rtt = connect_time(&endpoint, &egress).await;
            state.network.registry.record_own_rtt(&endpoint, rtt);
        });
    }
}

/// TCP connect time to `host:port` in µs (the handshake only, not the name lookup); `None`
/// when it cannot be measured.
async fn connect_time(endpoint: &str, egress: &shared::egress::EgressPolicy) -> Option<u64> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip = *egress.resolve(host).await.ok()?.first()?;
    let start = Instant::now();
    let conn = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await;
    matches!(conn, Ok(Ok(_))).then(|| (start.elapsed().as_micros() as u64).max(1))
}

/// A spoke connected (or reconnected): the transfers it still runs stay with it.
pub fn spoke_ready(state: &AppState, spoke_id: i64, running: &[i64]) {
    state
        .network
        .registry
        .note_assigned(spoke_id, running.len() as isize);
}

/// A spoke's connection ended: its transfers go back to the queue and on to another executor.
pub async fn spoke_lost(state: &AppState, spoke_id: i64) {
    requeue_from(state, spoke_id, "its spoke disconnected").await;
}

/// Re-queues the transfers this hub holds that run on `spoke_id` and dispatches them again.
async fn requeue_from(state: &AppState, spoke_id: i64, why: &str) {
    let Ok(running) = state.db.held_transfers(&holder(state), "running").await else {
        return;
    };
    for t in running.into_iter().filter(|t| t.spoke_id == Some(spoke_id)) {
        let Some(lease) = lease(state, t.id).filter(|l| l.epoch == t.lease_epoch) else {
            continue;
        };
        tracing::info!(
            transfer = t.id,
            spoke = spoke_id,
            "{why}; resuming elsewhere"
        );
        state
            .network
            .registry
            .send(spoke_id, HubMsg::Cancel { transfer_id: t.id });
        state.transfers.set_spoke(t.id, None);
        flush_progress(state, t.id, &lease).await;
        // A spoke lost mid-run failed the transfer: it stays away from it for a while. Not
        // when this hub is shutting down (its own spoke connections are closing).
        let requeued = if state.transfers.is_closing() {
            state
                .db
                .requeue_transfer(
                    t.id,
                    &lease,
                    &format!("spoke {spoke_id} lost ({why}); resumed"),
                    now_ms(),
                )
                .await
        } else {
            requeue_excluding(state, t.id, &lease, spoke_id, &format!("lost ({why})")).await
        };
        match requeued {
            Ok(true) => dispatch(state, t.id, &[spoke_id]).await,
            Ok(false) => check_lease(state, t.id, &lease).await,
            Err(_) => {}
        }
    }
}

/// Cancels a transfer, whichever hub holds it: aborts the upload and, when this hub holds
/// it, stops its run (on its spoke or inline). A holder elsewhere stops its run when its next
/// renewal no longer finds the transfer.
pub async fn cancel(state: &AppState, t: &TransferRecord) -> ApiResult<bool> {
    if let Some(l) = lease(state, t.id) {
        flush_progress(state, t.id, &l).await;
    }
    if !state
        .db
        .cancel_transfer(t.id, "cancelled by the client", now_ms())
        .await?
    {
        return Ok(false);
    }
    lost(state, t.id, "cancelled by the client").await;
    if let Some(upload) = &t.upload_id {
        if let Ok((_, dst)) = accounts(state, t).await {
            if let Ok(Some(mp)) = multipart_target(&dst, &path(&t.dst_path)?) {
                let _ = mp.abort(upload).await;
            }
        }
    }
    state.transfers.ended(t.id);
    state.transfers.changed.notify_waiters();
    Ok(true)
}

/// Waits until a transfer ends or `timeout` passes; returns its latest row.
pub async fn wait(state: &AppState, id: i64, timeout: Duration) -> ApiResult<TransferRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = state.transfers.changed.notified();
        let t = state
            .db
            .get_transfer(id)
            .await?
            .ok_or_else(|| ApiError::not_found("transfer"))?;
        if !matches!(t.state.as_str(), "queued" | "running") {
            return Ok(t);
        }
        // Another hub may take the transfer over and end it, which notifies nobody here:
        // look again at least every second.
        let next = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout_at(next, notified).await;
        if tokio::time::Instant::now() >= deadline {
            return state
                .db
                .get_transfer(id)
                .await?
                .ok_or_else(|| ApiError::not_found("transfer"));
        }
    }
}

/// Closes connections of spokes revoked elsewhere (another hub, the CLI).
async fn disconnect_revoked(state: &AppState) {
    let live = state.network.registry.connected_ids();
    if live.is_empty() {
        return;
    }
    let Ok(spokes) = state.db.list_spokes().await else {
        return;
    };
    for s in spokes {
        if s.revoked_ms.is_some() && live.contains(&s.id) {
            let _ = crate::api::revoke_spoke(state, s.id).await;
        }
    }
}

/// Renews this process's leases (one UPDATE for all of them) and drops the transfers the
/// renewal no longer finds: taken over by another hub (this one was too slow: stopped, cut
/// off from the database), or ended by a cancel on another hub.
async fn renew(state: &AppState) {
    // Only transfers held before the statement can be missing from its answer: one taken or
    // created meanwhile is not mistaken for a lost one.
    let before = state.transfers.held();
    if before.is_empty() {
        return;
    }
    let still = match state
        .db
        .renew_leases(&holder(state), lease_until(state))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "renewing the transfer leases failed");
            return;
        }
    };
    for (id, epoch) in before {
        if still.contains(&(id, epoch)) {
            continue;
        }
        let unchanged = lock(&state.transfers.held).get(&id).map(|h| h.epoch) == Some(epoch);
        if unchanged {
            lost(state, id, "the renewal no longer finds it held").await;
        }
    }
}

/// Takes over the unfinished transfers whose lease expired (their hub died, stopped or lost
/// the database) and resumes each from its durable parts, as a restarted hub would.
async fn take_over_expired(state: &AppState) {
    let now = now_ms();
    let Ok(expired) = state.db.expired_leases(now, TAKEOVER_BATCH).await else {
        return;
    };
    for id in expired {
        if state.transfers.is_closing() {
            return;
        }
        take_over(state, id, now_ms()).await;
    }
}

/// Takes transfer `id` over if its lease expired before `now` (one conditional UPDATE), then
/// resumes it from its durable parts: re-queued and dispatched by this hub. False when it is
/// held by another hub or ended.
pub async fn take_over(state: &AppState, id: i64, now: i64) -> bool {
    let lease = match state
        .db
        .take_over_transfer(id, &holder(state), now, lease_until(state))
        .await
    {
        Ok(Some(l)) => l,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(transfer = id, error = %e, "taking over the transfer failed");
            return false;
        }
    };
    state.transfers.hold(id, lease.epoch);
    let Ok(Some(t)) = state.db.get_transfer(id).await else {
        return true;
    };
    tracing::info!(transfer = id, epoch = lease.epoch, created_by = %t.owner, state = %t.state,
                   "took over a transfer whose lease expired");
    if t.state == "running" {
        let _ = state
            .db
            .requeue_transfer(
                id,
                &lease,
                "its hub's lease expired; resumed by another hub",
                now_ms(),
            )
            .await;
    }
    dispatch(state, id, &[]).await;
    true
}

/// Aborts a task when dropped: the lease renewer lives exactly as long as the scheduler.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the scheduler: every tick it takes over transfers whose lease expired, dispatches
/// the queued transfers this hub holds and takes transfers away from spokes that stopped
/// reporting. The leases are renewed by a task of their own, so a slow tick (a provider that
/// takes its time to answer) never lets them expire.
pub fn spawn_scheduler(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _renewer = AbortOnDrop(tokio::spawn({
            let state = state.clone();
            async move {
                let mut every = tokio::time::interval(state.config.transfers.renew_every());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    renew(&state).await;
                }
            }
        }));
        let mut tick = tokio::time::interval(state.config.transfers.scheduler_tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = state.transfers.kicked.notified() => {}
            }
            disconnect_revoked(&state).await;
            let me = holder(&state);
            take_over_expired(&state).await;
            if let Ok(queued) = state.db.held_transfers(&me, "queued").await {
                for t in queued {
                    dispatch(&state, t.id, &[]).await;
                }
            }
            if let Ok(running) = state.db.held_transfers(&me, "running").await {
                for t in running {
                    if let Some(s) = t.spoke_id {
                        if !state.network.registry.is_healthy(s) {
                            requeue_from(&state, s, "its spoke missed heartbeats").await;
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(index: u32, len: u64) -> PartDone {
        PartDone {
            index,
            len,
            sha256: "ab".repeat(32),
            etag: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn part_reports_must_match_the_plan() {
        // Every planned part passes, whatever the sizes; the check agrees with plan_parts.
        for (size, part_size) in [(0, 5), (1, 5), (10, 5), (11, 5), (40 << 20, 8 << 20)] {
            for p in plan_parts(size, part_size) {
                assert_eq!(check_part(size, part_size, &part(p.index, p.len)), Ok(()));
                assert!(check_part(size, part_size, &part(p.index, p.len + 1)).is_err());
            }
        }
        let (size, part_size) = (40 << 20, 8 << 20);
        assert!(check_part(size, part_size, &part(5, 8 << 20)).is_err());
        assert!(check_part(size, part_size, &part(u32::MAX, 8 << 20)).is_err());
        assert!(check_part(size, part_size, &part(4, 0)).is_err());
        let mut bad = part(0, 8 << 20);
        bad.sha256 = "not a digest".into();
        assert!(check_part(size, part_size, &bad).is_err());
        let mut bad = part(0, 8 << 20);
        bad.etag = String::new();
        assert!(check_part(size, part_size, &bad).is_err());
    }
}
