//! The write path's claims at providers, recorded in the database (`storage_claims`): an
//! upload's staging object, a name reserved by an upload that writes in place, a folder name
//! being created. A [`Claim`] is refreshed while its request runs and released when it ends;
//! one left by a crashed hub or an abandoned request goes stale after
//! `storage.staging_grace_secs` and the sweep (at start-up, then periodically, on every hub)
//! deletes its staging object, then the row. Only accounts with leftovers are touched: no
//! account's storage is ever walked.

use crate::db::{ClaimKind, ClaimRecord};
use crate::error::ApiResult;
use crate::state::{now_ms, Account, AppState};
use shared::storage::multipart::S3Multipart;
use shared::storage::service::ServiceConfig;
use shared::storage::{StagingKey, StoragePath};
use std::sync::Arc;
use std::time::Duration;

/// Stale claims one sweep round handles (the next round takes the rest).
const SWEEP_BATCH: i64 = 500;

/// A claim held by a running request. Release it with [`Claim::release`]; dropped unreleased
/// (the request was cancelled), it is released in the background.
#[derive(Debug)]
pub struct Claim {
    state: AppState,
    account: Arc<Account>,
    key: String,
    kind: ClaimKind,
    heartbeat: tokio::task::JoinHandle<()>,
    released: bool,
}

/// How often a held claim is refreshed: well inside the grace period.
fn refresh_interval(state: &AppState) -> Duration {
    (state.config.storage.staging_grace() / 4).max(Duration::from_millis(200))
}

/// Takes the claim on `key` for `account`: `None` when another request holds it.
pub async fn take(
    state: &AppState,
    account: &Arc<Account>,
    key: &str,
    kind: ClaimKind,
) -> ApiResult<Option<Claim>> {
    let a = account.record.id;
    if !state
        .db
        .take_claim(account.record.app_id, a, key, kind, now_ms())
        .await?
    {
        return Ok(None);
    }
    let (db, owned, every) = (state.db.clone(), key.to_owned(), refresh_interval(state));
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = db.touch_claim(a, &owned, now_ms()).await {
                tracing::warn!(error = %e, account = a, "could not refresh a storage claim");
            }
        }
    });
    Ok(Some(Claim {
        state: state.clone(),
        account: account.clone(),
        key: key.to_owned(),
        kind,
        heartbeat,
        released: false,
    }))
}

/// Takes the claim on `key`, waiting (bounded, about `wait`) while another live request holds
/// it; a holder that stopped refreshing it for the grace period is taken over. `None` when
/// the holder is still at it after `wait`.
pub async fn take_waiting(
    state: &AppState,
    account: &Arc<Account>,
    key: &str,
    kind: ClaimKind,
    wait: Duration,
) -> ApiResult<Option<Claim>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(c) = take(state, account, key, kind).await? {
            return Ok(Some(c));
        }
        let stale_before = now_ms() - state.config.storage.staging_grace().as_millis() as i64;
        if state
            .db
            .release_stale_claim(account.record.id, key, stale_before)
            .await?
        {
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

impl Claim {
    /// Drops the claim row only: for a caller that knows nothing is left at the provider
    /// (the upload was published, so its staging object is gone).
    pub async fn done(mut self) {
        self.released = true;
        self.heartbeat.abort();
        if let Err(e) = self
            .state
            .db
            .release_claim(self.account.id(), &self.key)
            .await
        {
            tracing::warn!(error = %e, account = self.account.id(), "could not release a storage claim");
        }
    }

    /// Releases the claim: a staging object is deleted first (a no-op once published), and
    /// the row kept for the sweep if that fails.
    pub async fn release(mut self) {
        self.released = true;
        self.heartbeat.abort();
        release(&self.state, &self.account, &self.key, self.kind).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.released {
            return;
        }
        // The request was cancelled mid-way (its client went away): clean up now rather than
        // after the grace period.
        let (state, account, key, kind) = (
            self.state.clone(),
            self.account.clone(),
            std::mem::take(&mut self.key),
            self.kind,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release(&state, &account, &key, kind).await });
        }
    }
}

async fn release(state: &AppState, account: &Account, key: &str, kind: ClaimKind) {
    if kind == ClaimKind::Staging {
        if let Some(k) = StagingKey::parse(key) {
            if let Err(e) = account.connector.discard_staging(&k).await {
                tracing::warn!(error = %e, account = account.id(),
                    "could not delete a staging object; the sweep will retry");
                return;
            }
        }
    }
    if let Err(e) = state.db.release_claim(account.id(), key).await {
        tracing::warn!(error = %e, account = account.id(), "could not release a storage claim");
    }
}

/// Client-direct uploads a spoke reports running at most per heartbeat (more are ignored;
/// spokes send at most as many).
const MAX_REPORTED_UPLOADS: usize = 2048;

/// Keeps the claims of the client-direct uploads spoke `spoke` reports running fresh, so the
/// sweep leaves their staging alone while the spoke writes. A spoke can only delay the sweep
/// of a claim this way, never cause one.
pub async fn touch_spoke_uploads(
    state: &AppState,
    spoke: i64,
    uploads: &[shared::proto::UploadClaim],
) {
    for u in uploads.iter().take(MAX_REPORTED_UPLOADS) {
        if let Err(e) = state
            .db
            .touch_claim_forward(u.account, &u.claim, now_ms())
            .await
        {
            tracing::warn!(error = %e, spoke, account = u.account,
                "could not refresh a spoke upload's claim");
        }
    }
}

/// One sweep round: deletes the leftovers of claims untouched for the grace period. Returns
/// how many claims it cleared.
pub async fn sweep(state: &AppState) -> ApiResult<usize> {
    let before = now_ms() - state.config.storage.staging_grace().as_millis() as i64;
    let stale = state.db.stale_claims(before, SWEEP_BATCH).await?;
    let mut cleared = 0;
    for c in stale {
        match clear(state, &c).await {
            Ok(Cleared::Deferred) => state.db.touch_claim(c.account_id, &c.key, now_ms()).await?,
            Ok(Cleared::Done) => {
                if state
                    .db
                    .release_stale_claim(c.account_id, &c.key, before)
                    .await?
                {
                    cleared += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, account = c.account_id,
                    "could not sweep a stale staging object; retrying after another grace period");
                // To the back of the queue: rows that keep failing (a revoked provider key)
                // must not fill every batch and keep the others from being swept.
                state.db.touch_claim(c.account_id, &c.key, now_ms()).await?;
            }
        }
    }
    if cleared > 0 {
        tracing::info!(cleared, "swept stale uploads' staging");
    }
    Ok(cleared)
}

/// Live claims of one account the sweep considers before aborting uploads (beyond that, it
/// defers).
const LIVE_CLAIMS_LIMIT: i64 = 10_000;

/// What clearing a stale claim came to.
enum Cleared {
    /// Nothing of it is left at the provider.
    Done,
    /// A live writer of the same name may own what is there: try again after another grace
    /// period.
    Deferred,
}

/// Deletes what a stale claim left at the provider: a staging object, or (on S3) the
/// incomplete multipart upload of a writer that wrote in place.
async fn clear(state: &AppState, c: &ClaimRecord) -> Result<Cleared, String> {
    let staging = match c.kind {
        ClaimKind::Folder => return Ok(Cleared::Done),
        ClaimKind::Staging => match StagingKey::parse(&c.key) {
            Some(key) => Some(key),
            None => return Ok(Cleared::Done),
        },
        ClaimKind::Name | ClaimKind::Upload => None,
    };
    let account = match state.account(c.app_id, c.account_id).await {
        Ok(a) => a,
        // The account is gone (or its settings no longer open): nothing to reach.
        Err(e) if e.status().as_u16() == 404 => return Ok(Cleared::Done),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(key) = staging {
        account
            .connector
            .discard_staging(&key)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Cleared::Done);
    }
    let ServiceConfig::S3(s3) = &account.settings else {
        // Other in-place services make nothing visible before the write completes and keep
        // nothing of a write that died.
        return Ok(Cleared::Done);
    };
    let Ok(path) = StoragePath::parse(c.path()) else {
        return Ok(Cleared::Done);
    };
    // S3 does not say which writer started an upload (OpenDAL's writer keeps the id to
    // itself), so an upload of this key is the dead writer's only when no live writer could
    // have started it: none holds a claim on the key now, and (checked first, so a writer that
    // starts meanwhile is after `now`) uploads initiated from now on are not touched. Uploads
    // that unfinished transfers will resume are kept.
    let now = std::time::SystemTime::now();
    let live_since = now_ms() - state.config.storage.staging_grace().as_millis() as i64;
    let live = state
        .db
        .live_claims(c.account_id, live_since, LIVE_CLAIMS_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if live.len() as i64 >= LIVE_CLAIMS_LIMIT
        || live
            .iter()
            .any(|l| l.key != c.key && l.kind != ClaimKind::Folder && l.path() == c.path())
    {
        return Ok(Cleared::Deferred);
    }
    let mut keep = state
        .db
        .unfinished_upload_ids(c.account_id)
        .await
        .map_err(|e| e.to_string())?;
    // And the uploads of open upload sessions (their parts arrive over hours).
    keep.extend(
        state
            .db
            .session_upload_ids(c.account_id)
            .await
            .map_err(|e| e.to_string())?,
    );
    let target = S3Multipart::for_settings(s3, &path, account.connector.egress())
        .map_err(|e| e.to_string())?
        .with_budget(account.connector.budget().clone());
    let aborted = target
        .abort_uploads_before(now, &keep)
        .await
        .map_err(|e| e.to_string())?;
    if aborted > 0 {
        tracing::info!(
            aborted,
            account = c.account_id,
            "aborted a dead writer's incomplete multipart uploads"
        );
    }
    Ok(Cleared::Done)
}

/// Runs [`sweep`] now and then every half grace period (at least every second, at most every
/// five minutes), with the other periodic clean-ups: expired OAuth codes, expired upload
/// sessions, stale steering rows (`steering::prune`) and spent exclusions of spokes from
/// transfers (`transfers::prune_exclusions`), each bounded per round.
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    let every = (state.config.storage.staging_grace() / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    tokio::spawn(async move {
        loop {
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = %e, "staging sweep failed");
            }
            // Expired OAuth codes are useless; a used one is kept until it expires (a second
            // presentation revokes its token).
            if let Err(e) = state.db.sweep_codes(crate::state::now_ms()).await {
                tracing::warn!(error = %e, "OAuth code sweep failed");
            }
            match crate::sessions::sweep(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "swept expired upload sessions"),
                Err(e) => tracing::warn!(error = %e, "upload session sweep failed"),
            }
            // Steering rows no reader looks at any more, and exclusions of spokes from
            // transfers that ran out: bounded batches over indexed predicates.
            match crate::steering::prune(&state.db, crate::state::now_ms()).await {
                Ok(p) if p == crate::steering::Pruned::default() => {}
                Ok(p) => tracing::debug!(rtts = p.rtts, health = p.health, "pruned steering rows"),
                Err(e) => tracing::warn!(error = %e, "steering prune failed"),
            }
            match crate::transfers::prune_exclusions(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(exclusions = n, "pruned spent spoke exclusions"),
                Err(e) => tracing::warn!(error = %e, "pruning spoke exclusions failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
