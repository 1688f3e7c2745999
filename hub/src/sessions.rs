//! Upload sessions (`storage/multipart`): a file sent in numbered parts, to any hub of the
//! region, completed into the account in one step.
//!
//! The session and its parts are rows in the database (`db::sessions`); the bytes land on the
//! provider as each part arrives, never in a hub's memory or disk, so any hub takes any part
//! and a restart loses nothing. Where the parts go (the session's `store`):
//!
//! - `s3`: a native multipart upload of the final key (`shared::storage::multipart`), each
//!   part's ETag recorded; completing is one request, the bytes do not move again. Without
//!   overwrite the name is reserved (a name claim) from creation to completion.
//! - `azure` (Azure Blob): each part is a block of the final blob
//!   (`shared::storage::azure_blocks`; its id made of the session id and the part number, so a
//!   part sent again replaces its block), invisible until committed; completing is one
//!   `Put Block List` of the parts in order, the bytes do not move again. Without overwrite
//!   the name is reserved (a name claim) from creation to completion, and the block list is
//!   committed only if no blob of the name exists (`If-None-Match: *`): a blob written there
//!   meanwhile by someone else is never replaced, the completion is a 409. Azure drops
//!   uncommitted blocks by itself after a week: an aborted or expired session leaves nothing
//!   to delete. Parts a spoke takes (see below) are staging objects, turned into blocks at
//!   completion (through the completing hub).
//! - `objects` (every other service): each part is a staging object of its own in the
//!   account's staging folder, claimed in `storage_claims` until the session expires (a part
//!   written by a hub that died before recording it is swept); completing streams the parts in
//!   order through the write path (staged and published atomically, a taken name moving on to
//!   `name (1).ext` without overwrite), then deletes them.
//!
//! Each part is checked as it streams: its exact length (every part but the last is
//! `part_size`) and its `Content-MD5` when sent. A part that fails either is not recorded.
//! Abandoned sessions expire (`storage.upload_session_ttl_secs`): [`sweep`] aborts the
//! provider's upload or deletes the staged parts, then the rows.

use crate::db::{ClaimKind, NewSession, PartRecord, SessionRecord};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, Account, AppState};
use axum::http::StatusCode;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use sha2::Digest;
use shared::storage::azure_blocks::{block_id, AzureBlocks, Block};
use shared::storage::checked::{checked_part, PART_DIGEST, PART_LENGTH};
use shared::storage::multipart::S3Multipart;
use shared::storage::{numbered, ServiceConfig, StagingKey, StorageError, StoragePath};
use std::pin::Pin;
use std::sync::Arc;

/// The part size asked by default (`storage.upload_part_size_bytes`).
pub const PREFERRED_PART_SIZE: u64 = 16 * 1024 * 1024;
/// Expired sessions one sweep round handles.
const SWEEP_BATCH: i64 = 100;

/// Where a session's parts are (its `store`): see the module documentation.
const STORE_S3: &str = "s3";
const STORE_AZURE: &str = "azure";
const STORE_OBJECTS: &str = "objects";

/// How old a completion that has not finished (its hub died) must be to be taken over
/// (`storage.session_completion_stale_secs`).
fn stale_ms(state: &AppState) -> i64 {
    state.config.storage.session_completion_stale_ms()
}

/// The number of parts a session of `size` bytes has (a 0-byte file is one empty part).
pub fn part_count(size: u64, part_size: u64) -> u64 {
    size.div_ceil(part_size).max(1)
}

/// The length part `n` must have, when the session's size is known.
pub fn expected_len(size: u64, part_size: u64, n: u64) -> u64 {
    let count = part_count(size, part_size);
    if n < count {
        part_size
    } else {
        size - (count - 1) * part_size
    }
}

fn s3_target(a: &Account, path: &StoragePath) -> ApiResult<Option<S3Multipart>> {
    match &a.settings {
        ServiceConfig::S3(s3) => Ok(Some(
            S3Multipart::for_settings(s3, path, a.connector.egress())?
                .with_budget(a.connector.budget().clone()),
        )),
        _ => Ok(None),
    }
}

fn azure_target(a: &Account, path: &StoragePath) -> ApiResult<Option<AzureBlocks>> {
    match &a.settings {
        ServiceConfig::Azblob(az) => Ok(Some(
            AzureBlocks::for_settings(az, path, a.connector.egress())?
                .with_budget(a.connector.budget().clone()),
        )),
        _ => Ok(None),
    }
}

/// The blocks of session `s` (an `azure` session) at the provider.
fn blocks_of(a: &Account, s: &SessionRecord) -> ApiResult<AzureBlocks> {
    let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
    azure_target(a, &path)?
        .ok_or_else(|| ApiError::internal("an Azure Blob session on another service"))
}

/// Where the parts of a new session on the service of `settings` go.
fn store_for(settings: &ServiceConfig) -> &'static str {
    match settings {
        ServiceConfig::S3(_) => STORE_S3,
        ServiceConfig::Azblob(_) => STORE_AZURE,
        _ => STORE_OBJECTS,
    }
}

/// Reserves the first free name of `target`, `target (1)`, ... with a name claim until
/// `expires_ms`: other writers that must not replace skip it.
async fn reserve_name(
    state: &AppState,
    a: &Account,
    target: &StoragePath,
    expires_ms: i64,
) -> ApiResult<StoragePath> {
    for n in 0..=crate::api::storage::MAX_RENAME_TRIES {
        let Ok(candidate) = numbered(target, n) else {
            break;
        };
        if a.connector.exists(&candidate).await? {
            continue;
        }
        if !state
            .db
            .take_claim(
                a.record.app_id,
                a.id(),
                candidate.as_str(),
                ClaimKind::Name,
                expires_ms,
            )
            .await?
        {
            continue;
        }
        if a.connector.exists(&candidate).await? {
            state.db.release_claim(a.id(), candidate.as_str()).await?;
            continue;
        }
        return Ok(candidate);
    }
    Err(ApiError::conflict(
        "conflict",
        "too many files with that name",
    ))
}

/// Opens a session for `name` in folder `parent` (which the caller checked).
pub async fn create(
    state: &AppState,
    a: &Arc<Account>,
    parent: &StoragePath,
    name: &str,
    overwrite: bool,
    size: Option<u64>,
) -> ApiResult<SessionRecord> {
    let max = state.config.limits.max_upload_bytes;
    if let Some(n) = size.filter(|n| max > 0 && *n > max) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the file is {n} bytes; the limit is {max}"),
        ));
    }
    let limits = a.connector.capabilities().parts;
    let part_size = limits
        .part_size(size, state.config.storage.upload_part_size_bytes)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "a file of {} bytes does not fit in {} parts of at most {} bytes",
                size.unwrap_or(0),
                limits.max_parts,
                limits.max
            ))
        })?;
    let target = parent.join(name)?;
    if let Ok(e) = a.connector.stat(&target).await {
        if e.kind == shared::storage::EntryKind::Folder {
            return Err(ApiError::conflict(
                "conflict",
                "a folder with that name exists",
            ));
        }
    }
    let now = now_ms();
    let expires_ms = now + state.config.storage.upload_session_ttl().as_millis() as i64;
    let store = store_for(&a.settings);
    let (mut path, mut upload_id, mut name_claim) = (target.clone(), None, None);
    if store != STORE_OBJECTS {
        // The parts go to one key or blob: without overwrite, a free name is reserved until
        // the session completes or expires (other writers that must not replace skip it).
        if !overwrite {
            path = reserve_name(state, a, &target, expires_ms).await?;
            name_claim = Some(path.as_str().to_owned());
        }
        let started: ApiResult<Option<String>> = async {
            if store == STORE_S3 {
                let mp = s3_target(a, &path)?.ok_or_else(|| ApiError::internal("not S3"))?;
                Ok(Some(mp.create().await?))
            } else {
                // Nothing to start on Azure Blob: blocks are put to the blob's name as the
                // parts arrive. Its settings are checked now.
                azure_target(a, &path)?.ok_or_else(|| ApiError::internal("not Azure Blob"))?;
                Ok(None)
            }
        }
        .await;
        match started {
            Ok(id) => upload_id = id,
            Err(e) => {
                if let Some(k) = &name_claim {
                    state.db.release_claim(a.id(), k).await?;
                }
                return Err(e);
            }
        }
    }
    let id = state
        .db
        .create_session(&NewSession {
            app_id: a.record.app_id,
            account_id: a.id(),
            path: path.as_str(),
            overwrite,
            size: size.map(|n| n as i64),
            part_size: part_size as i64,
            store,
            upload_id: upload_id.as_deref(),
            name_claim: name_claim.as_deref(),
            now,
            expires_ms,
        })
        .await?;
    state
        .db
        .session(a.id(), id)
        .await?
        .ok_or_else(|| ApiError::internal("session vanished"))
}

/// The open session `id` of account `a`: 404 when there is none (or it expired), 409 when it
/// is being completed or done.
pub async fn open_session(state: &AppState, a: &Account, id: i64) -> ApiResult<SessionRecord> {
    let s = state
        .db
        .session(a.id(), id)
        .await?
        .filter(|s| s.expires_ms > now_ms() && s.state != "aborted")
        .ok_or_else(|| ApiError::not_found("upload session"))?;
    match s.state.as_str() {
        "open" => Ok(s),
        // A completion whose hub died: the next request may take it over.
        "completing" if s.state_ms < now_ms() - stale_ms(state) => Ok(s),
        "done" => Err(ApiError::conflict(
            "conflict",
            "the upload session is already complete",
        )),
        _ => Err(ApiError::conflict(
            "conflict",
            "the upload session is being completed",
        )),
    }
}

/// What a failed part write answers: the client's mistakes are 400s.
fn part_error(e: StorageError) -> ApiError {
    let text = e.to_string();
    if text.contains(PART_DIGEST) {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "the part's Content-MD5 does not match its bytes; the part was not kept",
        )
    } else if text.contains(PART_LENGTH) {
        ApiError::bad_request(format!(
            "the part's length does not match Content-Length; the part was not kept ({text})"
        ))
    } else {
        e.into()
    }
}

/// Whether part `n` of `len` bytes fits session `s` (its number, its exact length when the
/// size is known, the upload limit), before any of it is read.
pub fn check_part(state: &AppState, s: &SessionRecord, n: u64, len: u64) -> ApiResult<()> {
    let part_size = s.part_size as u64;
    match s.size {
        Some(size) => {
            let count = part_count(size as u64, part_size);
            if n > count {
                return Err(ApiError::bad_request(format!(
                    "`part_number` must be between 1 and {count} for this session"
                )));
            }
            let want = expected_len(size as u64, part_size, n);
            if len != want {
                return Err(ApiError::bad_request(format!(
                    "part {n} must be {want} bytes (Content-Length is {len})"
                )));
            }
        }
        None if len > part_size => {
            return Err(ApiError::bad_request(format!(
                "parts are at most {part_size} bytes (Content-Length is {len})"
            )))
        }
        None => {}
    }
    let max = state.config.limits.max_upload_bytes;
    let end = (n - 1) * part_size + len;
    if max > 0 && end > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("part {n} would take the file to {end} bytes; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Writes part `n` (`len` bytes, `md5` when the client sent one) of session `s` and records
/// it; a part of the same number sent before is replaced.
pub async fn put_part<S, E>(
    state: &AppState,
    a: &Arc<Account>,
    s: &SessionRecord,
    n: u64,
    len: u64,
    md5: Option<[u8; 16]>,
    body: S,
) -> ApiResult<()>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + Sync + 'static,
{
    check_part(state, s, n, len)?;
    let body = checked_part(body, len, md5);
    let now = now_ms();
    let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
    if let (Some(upload_id), Some(mp)) = (&s.upload_id, s3_target(a, &path)?) {
        let body = body.map_err(StorageError::Interrupted);
        let etag = mp
            .upload_part(upload_id, n as u16, len, body)
            .await
            .map_err(part_error)?;
        let part = PartRecord {
            number: n as i64,
            size: len as i64,
            etag: Some(etag),
            staging: None,
        };
        return record(state, a, s, part, now).await;
    }
    if s.store == STORE_AZURE {
        let blocks = blocks_of(a, s)?;
        put_block(
            &blocks,
            s.id,
            n,
            len,
            body.map_err(StorageError::Interrupted),
        )
        .await
        .map_err(part_error)?;
        let part = PartRecord {
            number: n as i64,
            size: len as i64,
            etag: None,
            staging: None,
        };
        return record(state, a, s, part, now).await;
    }
    let key = claim_part_key(state, a, s).await?;
    if let Err(e) = a.connector.stage_part(&key, body).await {
        discard_part(state, a, key.as_str()).await;
        return Err(part_error(e));
    }
    let part = PartRecord {
        number: n as i64,
        size: len as i64,
        etag: None,
        staging: Some(key.as_str().to_owned()),
    };
    record(state, a, s, part, now).await
}

/// Puts part `n` (`len` bytes) of session `session` as its block. Azure takes no empty block:
/// an empty part (only ever the last) is read to the end, for its checks, and only recorded.
async fn put_block<S>(
    blocks: &AzureBlocks,
    session: i64,
    n: u64,
    len: u64,
    body: S,
) -> Result<(), StorageError>
where
    S: Stream<Item = Result<Bytes, StorageError>> + Send + Unpin + 'static,
{
    if len == 0 {
        let mut body = body;
        while body.try_next().await?.is_some() {}
        return Ok(());
    }
    blocks
        .put_block(&block_id(session, n as u16), len, body)
        .await
}

/// Records a part that is at the provider. A part of the same number recorded before is
/// replaced (its staging object deleted); when the session was completed or aborted
/// meanwhile, or the record fails, the new part's staging object is deleted.
async fn record(
    state: &AppState,
    a: &Account,
    s: &SessionRecord,
    part: PartRecord,
    now: i64,
) -> ApiResult<()> {
    let staged = part.staging.clone();
    let discard_new = || async {
        if let Some(k) = &staged {
            discard_part(state, a, k).await;
        }
    };
    match state.db.put_session_part(s.id, &part, now).await {
        Ok((true, old)) => {
            if let Some(old) = old
                .and_then(|o| o.staging)
                .filter(|o| Some(o) != staged.as_ref())
            {
                discard_part(state, a, &old).await;
            }
            Ok(())
        }
        Ok((false, _)) => {
            discard_new().await;
            Err(ApiError::conflict(
                "conflict",
                "the upload session was completed or aborted meanwhile",
            ))
        }
        Err(e) => {
            discard_new().await;
            Err(e.into())
        }
    }
}

/// The tag a part grant carries (see `shared::proto::PartGrant`): over the grant, account,
/// session, part number, length and where the part goes.
pub fn part_tag(
    state: &AppState,
    grant_id: &str,
    account: i64,
    len: u64,
    p: &PartGrantFields,
) -> String {
    hex::encode(state.receipts.tag(&[
        b"session-part",
        grant_id.as_bytes(),
        &account.to_be_bytes(),
        &p.session.to_be_bytes(),
        &p.number.to_be_bytes(),
        &len.to_be_bytes(),
        p.upload_id.as_deref().unwrap_or("").as_bytes(),
        p.staging.as_deref().unwrap_or("").as_bytes(),
    ]))
}

/// What a part grant names besides its tag.
#[derive(Debug, Clone)]
pub struct PartGrantFields {
    pub session: i64,
    pub number: u16,
    pub upload_id: Option<String>,
    pub staging: Option<String>,
}

/// Where part `n` of session `s` goes when a spoke writes it: the S3 upload, or a new staging
/// object claimed until the session expires (a spoke that dies mid-part leaves it to the
/// sweep). Spokes put no Azure blocks: an `azure` session's part is a staging object too,
/// which completion turns into its block. Release the claim with [`release_part`] if no grant
/// is issued.
pub async fn part_target(
    state: &AppState,
    a: &Account,
    s: &SessionRecord,
    n: u64,
) -> ApiResult<PartGrantFields> {
    let (upload_id, staging) = match &s.upload_id {
        Some(id) => (Some(id.clone()), None),
        None => {
            let key = claim_part_key(state, a, s).await?;
            (None, Some(key.as_str().to_owned()))
        }
    };
    Ok(PartGrantFields {
        session: s.id,
        number: n as u16,
        upload_id,
        staging,
    })
}

/// A new staging key for a part of `s`, claimed until the session expires: a hub or spoke
/// that dies before the part is recorded leaves it to the sweep.
async fn claim_part_key(state: &AppState, a: &Account, s: &SessionRecord) -> ApiResult<StagingKey> {
    let key = a.connector.new_part_key();
    if !state
        .db
        .take_claim(
            a.record.app_id,
            a.id(),
            key.as_str(),
            ClaimKind::Staging,
            s.expires_ms,
        )
        .await?
    {
        return Err(ApiError::internal("claim key collision"));
    }
    Ok(key)
}

/// Gives back a part target's claim when no grant was issued for it.
pub async fn release_part(state: &AppState, a: &Account, p: &PartGrantFields) -> ApiResult<()> {
    if let Some(k) = &p.staging {
        state.db.release_claim(a.id(), k).await?;
    }
    Ok(())
}

/// Records a part a spoke wrote for a part grant (`SideAsk::Part`): the report must carry the
/// tag a hub of this network made for exactly this grant, account, session, number, length and
/// place; the session must still take parts. Returns the session as the API shows it.
pub async fn record_spoke_part(
    state: &AppState,
    r: &shared::proto::PartReport,
) -> ApiResult<serde_json::Value> {
    let p = &r.part;
    let fields = PartGrantFields {
        session: p.session,
        number: p.number,
        upload_id: p.upload_id.clone(),
        staging: p.staging.clone(),
    };
    let want = part_tag(state, &r.grant_id, r.account, r.size, &fields);
    let offered = hex::decode(&p.tag).unwrap_or_default();
    if !shared::auth::ct_eq(&offered, &hex::decode(&want).unwrap_or_default()) {
        tracing::warn!(
            account = r.account,
            session = p.session,
            "a spoke reported a session part no hub granted; refused"
        );
        return Err(ApiError::forbidden("this part was not granted as reported"));
    }
    let s = state
        .db
        .session(r.account, p.session)
        .await?
        .ok_or_else(|| ApiError::not_found("upload session"))?;
    let a = state.account(s.app_id, s.account_id).await?;
    let s = open_session(state, &a, s.id).await?;
    check_part(state, &s, u64::from(p.number), r.size)?;
    let part = PartRecord {
        number: i64::from(p.number),
        size: r.size as i64,
        etag: r.etag.clone(),
        staging: p.staging.clone(),
    };
    record(state, &a, &s, part, now_ms()).await?;
    serde_json::to_value(crate::api::storage::session_view(state, &s).await?)
        .map_err(ApiError::internal)
}

/// Deletes a staged part and its claim (kept for the sweep when the provider refuses).
async fn discard_part(state: &AppState, a: &Account, key: &str) {
    let Some(k) = StagingKey::parse(key) else {
        return;
    };
    match a.connector.discard_staging(&k).await {
        Ok(()) => {
            if let Err(e) = state.db.release_claim(a.id(), key).await {
                tracing::warn!(error = %e, "could not release a part's claim");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not delete a staged part; the sweep will"),
    }
}

/// Why the parts received cannot make the file (the client can still send what is missing).
fn missing(s: &SessionRecord, parts: &[PartRecord]) -> Option<String> {
    let part_size = s.part_size;
    let count = match s.size {
        Some(size) => part_count(size as u64, part_size as u64) as i64,
        None => match parts.last() {
            Some(p) => p.number,
            None => return Some("no part has been received".into()),
        },
    };
    let mut next = 1;
    for p in parts {
        if p.number != next {
            return Some(format!("part {next} is missing"));
        }
        if p.number < count && p.size != part_size {
            return Some(format!(
                "part {} is {} bytes; every part but the last must be {part_size}",
                p.number, p.size
            ));
        }
        next += 1;
    }
    if next <= count {
        return Some(format!("part {next} is missing"));
    }
    None
}

/// Completes session `s`: the file appears in the account (under the session's name, or
/// without overwrite the next free one). Returns the file and whether it replaced one.
pub async fn complete(
    state: &AppState,
    a: &Arc<Account>,
    s: &SessionRecord,
) -> ApiResult<(shared::storage::Entry, bool)> {
    let now = now_ms();
    if !state
        .db
        .take_session(s.id, "completing", now, now - stale_ms(state))
        .await?
    {
        return Err(ApiError::conflict(
            "conflict",
            "the upload session is being completed by another request",
        ));
    }
    let res = finish(state, a, s).await;
    match &res {
        Ok((e, _)) => {
            state
                .db
                .finish_session(s.id, e.path.as_str(), now_ms())
                .await?
        }
        Err(_) => state.db.reopen_session(s.id, now_ms()).await?,
    }
    res
}

async fn finish(
    state: &AppState,
    a: &Arc<Account>,
    s: &SessionRecord,
) -> ApiResult<(shared::storage::Entry, bool)> {
    let parts = state.db.session_parts(s.id).await?;
    if let Some(why) = missing(s, &parts) {
        return Err(ApiError::bad_request(format!(
            "the upload session is not complete: {why}"
        )));
    }
    let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
    if s.store == STORE_AZURE {
        return finish_blocks(state, a, s, &path, &parts).await;
    }
    let taken = a.connector.exists(&path).await?;
    if let (Some(upload_id), Some(mp)) = (&s.upload_id, s3_target(a, &path)?) {
        // S3's own list is the truth: of two concurrent sends of one part number, the database
        // and S3 may each have kept a different one last. Its size must be the one recorded.
        // Some S3-compatible servers (s3s-fs) list parts without their ETags: then the ETags
        // recorded as the parts arrived are used.
        let held = match mp.list_parts(upload_id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "ListParts unreadable; completing with the recorded ETags");
                parts
                    .iter()
                    .map(|p| {
                        (
                            p.number as u16,
                            p.etag.clone().unwrap_or_default(),
                            p.size as u64,
                        )
                    })
                    .collect()
            }
        };
        let mut list = Vec::with_capacity(parts.len());
        for p in &parts {
            let Some((n, etag, size)) = held.iter().find(|h| i64::from(h.0) == p.number) else {
                return Err(ApiError::bad_request(format!(
                    "the upload session is not complete: part {} is missing",
                    p.number
                )));
            };
            if *size as i64 != p.size {
                return Err(ApiError::bad_request(format!(
                    "part {n} changed while the session was completed; send it again"
                )));
            }
            list.push((*n, etag.clone()));
        }
        mp.complete(upload_id, &list).await?;
        if let Some(k) = &s.name_claim {
            state.db.release_claim(a.id(), k).await?;
        }
        let e = a.connector.stat_file(&path).await?;
        return Ok((e, taken && s.overwrite));
    }
    let keys: Vec<StagingKey> = parts
        .iter()
        .map(|p| {
            p.staging
                .as_deref()
                .and_then(StagingKey::parse)
                .ok_or_else(|| ApiError::internal(format_args!("part {} has no staging", p.number)))
        })
        .collect::<ApiResult<_>>()?;
    // A completion taken over from a hub that died may find the file published already (the
    // hub died after publishing, before recording it): it is adopted, never published twice.
    if s.state == "completing" {
        if let Some(e) = published_already(a, &path, s.overwrite, &parts, &keys).await? {
            tracing::info!(session = s.id, path = %e.path, "a completion that died had published the file: adopted");
            for k in keys {
                discard_part(state, a, k.as_str()).await;
            }
            let replaced = s.overwrite && e.path == path;
            return Ok((e, replaced));
        }
    }
    let connector = a.connector.clone();
    let body: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>> = Box::pin(
        futures::stream::iter(keys.clone())
            .then(move |k| {
                let c = connector.clone();
                async move {
                    c.read_staging(&k)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))
                }
            })
            .try_flatten(),
    );
    let publish = crate::api::storage::publish_for(s.overwrite);
    let e = crate::api::storage::write_upload(state, a, &path, body, publish)
        .await
        .map_err(crate::api::storage::upload_error)?;
    for k in keys {
        discard_part(state, a, k.as_str()).await;
    }
    Ok((e.clone(), taken && s.overwrite && e.path == path))
}

/// The file an earlier completion of this session published, if it did: at the session's name
/// (with overwrite, only there), else at the first free numbered name of that time (the names
/// are tried up to the first missing one). Only a file holding exactly the staged parts' bytes
/// counts (SHA-256 of both, streamed): a file someone else wrote there is never taken for it.
async fn published_already(
    a: &Account,
    path: &StoragePath,
    overwrite: bool,
    parts: &[PartRecord],
    keys: &[StagingKey],
) -> ApiResult<Option<shared::storage::Entry>> {
    let size: u64 = parts.iter().map(|p| p.size.max(0) as u64).sum();
    let mut want: Option<[u8; 32]> = None;
    let last = if overwrite {
        0
    } else {
        crate::api::storage::MAX_RENAME_TRIES
    };
    for n in 0..=last {
        let candidate = match n {
            0 => path.clone(),
            n => match numbered(path, n) {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let e = match a.connector.stat_file(&candidate).await {
            Ok(e) => e,
            Err(StorageError::NotFound) => break,
            Err(StorageError::WrongKind { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        if e.size != size {
            continue;
        }
        let ours = match want {
            Some(d) => d,
            None => {
                let mut h = sha2::Sha256::new();
                for k in keys {
                    digest_into(&mut h, a.connector.read_staging(k).await?).await?;
                }
                *want.insert(h.finalize().into())
            }
        };
        let mut h = sha2::Sha256::new();
        digest_into(&mut h, a.connector.read(&candidate, None).await?).await?;
        let theirs: [u8; 32] = h.finalize().into();
        if theirs == ours {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Feeds a byte stream into `h`.
async fn digest_into(
    h: &mut sha2::Sha256,
    s: impl Stream<Item = Result<Bytes, std::io::Error>>,
) -> ApiResult<()> {
    let mut s = std::pin::pin!(s);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| StorageError::Interrupted(e.to_string()))?;
        h.update(&chunk);
    }
    Ok(())
}

/// Completes an `azure` session: its parts, every one at hand (`missing` said so), committed
/// in order as the blob at `path`.
async fn finish_blocks(
    state: &AppState,
    a: &Arc<Account>,
    s: &SessionRecord,
    path: &StoragePath,
    parts: &[PartRecord],
) -> ApiResult<(shared::storage::Entry, bool)> {
    let blocks = blocks_of(a, s)?;
    // Parts a spoke took are staging objects: they become their blocks now.
    let mut staged = Vec::new();
    for p in parts {
        let Some(k) = p.staging.as_deref() else {
            continue;
        };
        let key = StagingKey::parse(k).ok_or_else(|| {
            ApiError::internal(format_args!("part {} has a bad staging", p.number))
        })?;
        let len = p.size as u64;
        let body = a.connector.read_staging(&key).await?;
        let body = checked_part(Box::pin(body), len, None).map_err(StorageError::Interrupted);
        put_block(&blocks, s.id, p.number as u64, len, body).await?;
        staged.push(key);
    }
    // Empty parts have no block (see `put_block`).
    let want: Vec<(i64, Block)> = parts
        .iter()
        .filter(|p| p.size > 0)
        .map(|p| {
            let id = block_id(s.id, p.number as u16);
            let size = p.size as u64;
            (p.number, Block { id, size })
        })
        .collect();
    let held = blocks.block_list().await?;
    // A completion that committed and died before recording it (taken over now): the blob
    // is the file already.
    let committed = !want.is_empty()
        && held.committed.len() == want.len()
        && held.committed.iter().zip(&want).all(|(h, (_, w))| h == w);
    let taken = a.connector.exists(path).await?;
    let taken_meanwhile = || {
        ApiError::conflict(
            "conflict",
            "a file of this name was created since the upload session opened; it was not \
             replaced (abort the session, or open one with overwrite)",
        )
    };
    if !committed {
        if taken && !s.overwrite {
            return Err(taken_meanwhile());
        }
        // Azure's list is the truth: of two concurrent sends of one part, the database and
        // Azure may each have kept a different one last, and committing another upload to
        // this name drops the blocks it did not name. Its size must be the one recorded.
        for (n, w) in &want {
            match held.uncommitted.iter().find(|h| h.id == w.id) {
                None => {
                    return Err(ApiError::bad_request(format!(
                        "the upload session is not complete: part {n} is no longer at the \
                         provider (the file was written meanwhile); send it again"
                    )))
                }
                Some(h) if h.size != w.size => {
                    return Err(ApiError::bad_request(format!(
                        "part {n} changed while the session was completed; send it again"
                    )))
                }
                Some(_) => {}
            }
        }
        let ids: Vec<String> = want.into_iter().map(|(_, w)| w.id).collect();
        match blocks.put_block_list(&ids, s.overwrite).await {
            Err(StorageError::AlreadyExists) if !s.overwrite => return Err(taken_meanwhile()),
            r => r?,
        }
    }
    for k in staged {
        discard_part(state, a, k.as_str()).await;
    }
    if let Some(k) = &s.name_claim {
        state.db.release_claim(a.id(), k).await?;
    }
    let e = a.connector.stat_file(path).await?;
    Ok((e, taken && s.overwrite && !committed))
}

/// Aborts session `s`: the provider's upload or the staged parts go, then the rows.
pub async fn abort(state: &AppState, a: &Arc<Account>, s: &SessionRecord) -> ApiResult<()> {
    let now = now_ms();
    if !state
        .db
        .take_session(s.id, "aborted", now, now - stale_ms(state))
        .await?
    {
        return Err(ApiError::conflict(
            "conflict",
            "the upload session is being completed",
        ));
    }
    discard(state, a, s).await?;
    state.db.delete_session(s.id).await?;
    Ok(())
}

/// What a session holds at the provider, deleted (Azure drops an `azure` session's blocks by
/// itself; only the parts a spoke staged go).
async fn discard(state: &AppState, a: &Arc<Account>, s: &SessionRecord) -> ApiResult<()> {
    if let Some(upload_id) = &s.upload_id {
        let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
        if let Some(mp) = s3_target(a, &path)? {
            match mp.abort(upload_id).await {
                Ok(()) | Err(StorageError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for p in state.db.session_parts(s.id).await? {
        if let Some(k) = p.staging {
            discard_part(state, a, &k).await;
        }
    }
    if let Some(k) = &s.name_claim {
        state.db.release_claim(a.id(), k).await?;
    }
    Ok(())
}

/// Deletes expired and aborted sessions with what they hold at the provider; returns how
/// many went.
pub async fn sweep(state: &AppState) -> ApiResult<usize> {
    let mut gone = 0;
    for s in state.db.expired_sessions(now_ms(), SWEEP_BATCH).await? {
        if s.state != "done" {
            match state.account(s.app_id, s.account_id).await {
                Ok(a) => {
                    if let Err(e) = discard(state, &a, &s).await {
                        tracing::warn!(session = s.id, error = %e, "could not clean up an expired upload session");
                        continue;
                    }
                }
                Err(e) if e.status() == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        state.db.delete_session(s.id).await?;
        gone += 1;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_known_size() {
        assert_eq!(part_count(0, 10), 1);
        assert_eq!(part_count(10, 10), 1);
        assert_eq!(part_count(11, 10), 2);
        assert_eq!(expected_len(25, 10, 1), 10);
        assert_eq!(expected_len(25, 10, 3), 5);
        assert_eq!(expected_len(20, 10, 2), 10);
        assert_eq!(expected_len(0, 10, 1), 0);
    }
}
