//! A file's metadata, and the changes of an existing file: replace its content, rename or
//! move it (also to another account), delete it, copy it; conditional on its version with
//! `If-Match`.

use super::upload::{limited_body, upload_error, write_upload, UploadError};
use super::{
    change, destination, folder_path, free_name, not_found_as, object, record_moved, stat_file,
    stat_folder, target_account, FilePath, MAX_RENAME_TRIES,
};
use crate::api::conditional::{self, ChangePreconditions, Decision, FileLock};
use crate::api::{ApiJson, ApiPath, ApiQuery, CommonErrors};
use crate::auth::Caller;
use crate::db::ClaimKind;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind};
use crate::model::{CopyTarget, ObjectChanges, StorageObject};
use crate::state::{Account, AppState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::storage::{Entry, EntryKind, Publish, StoragePath};
use std::sync::Arc;
use utoipa::IntoParams;

/// Retrieve a file's metadata, with its `ETag` and `Last-Modified`; `If-None-Match` (weak
/// comparison) or `If-Modified-Since` answer 304, a stale `If-Match` 412.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(FilePath,
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison): 304 when one matches"),
           ("If-Modified-Since" = Option<String>, Header, description = "HTTP-date: 304 when not modified since (ignored with If-None-Match)")),
    responses((status = 200, body = StorageObject, headers(("ETag" = String), ("Last-Modified" = String))),
              (status = 304, description = "Not modified"),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn get_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let e = stat_file(&a, &path).await?;
    let etag = a.connector.etag(&e).await.map_err(not_found_as("file"))?;
    let d = conditional::evaluate(&headers, true, Some(&etag), e.modified);
    if d != Decision::Proceed {
        return Ok(conditional::answer(d, Some(&etag), e.modified));
    }
    let mut r = Json(object(&state.ids, &a, &e)).into_response();
    conditional::set_validators(&mut r, Some(&etag), e.modified);
    Ok(r)
}

/// The preconditions of a change to the existing file `e`: `Ok(None)` to go ahead without
/// an `If-Match` naming a version, `Ok(Some(etag))` with the current ETag it matched,
/// `Err(response)` to answer instead (412).
async fn check_change(
    a: &Account,
    e: &Entry,
    headers: &HeaderMap,
) -> ApiResult<Result<Option<String>, Response>> {
    if !conditional::has_preconditions(headers) {
        return Ok(Ok(None));
    }
    let etag = if conditional::needs_etag(headers) {
        Some(a.connector.etag(e).await.map_err(not_found_as("file"))?)
    } else {
        None
    };
    // `If-Match: *` asks only that the file exists; a list of tags names this version.
    let names_version = headers
        .get_all(header::IF_MATCH)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"*");
    match conditional::evaluate(headers, false, etag.as_deref(), e.modified) {
        Decision::Proceed if names_version => Ok(Ok(etag)),
        Decision::Proceed => Ok(Ok(None)),
        d => Ok(Err(conditional::answer(d, etag.as_deref(), e.modified))),
    }
}

/// Takes this hub's lock of the file when the request is conditional (see [`FileLock`]).
async fn lock_if_conditional(a: &Account, path: &StoragePath, h: &HeaderMap) -> Option<FileLock> {
    if conditional::has_preconditions(h) {
        Some(FileLock::acquire(a.id(), path.as_str()).await)
    } else {
        None
    }
}

/// Replace a file's content with the raw request body (streamed). With `If-Match` (or
/// `If-Unmodified-Since`) the content is replaced only if the file has not changed: 412
/// otherwise, and nothing changes.
#[utoipa::path(put, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(FilePath, ChangePreconditions),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StorageObject, headers(("ETag" = String))),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn replace_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    req: Request,
) -> ApiResult<Response> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let _lock = lock_if_conditional(&a, &path, req.headers()).await;
    let current = stat_file(&a, &path).await?;
    let matched = match check_change(&a, &current, req.headers()).await? {
        Ok(m) => m,
        Err(answer) => return Ok(answer),
    };
    // Without a provider ETag, the new content's SHA-256 is computed as it streams: the ETag
    // of what we wrote, without reading it back.
    let hasher =
        (!a.connector.provider_etags()).then(|| Arc::new(std::sync::Mutex::new(Sha256::new())));
    let h = hasher.clone();
    let body =
        limited_body(req.into_body(), state.config.limits.max_upload_bytes).inspect(move |chunk| {
            if let (Some(h), Ok(b)) = (&h, chunk) {
                h.lock().unwrap_or_else(|p| p.into_inner()).update(b);
            }
        });
    let e = match matched.filter(|_| a.connector.provider_etags()) {
        // The provider re-checks the ETag when it commits the object: no gap.
        Some(tag) => a
            .connector
            .write_if_match(&path, &tag, body)
            .await
            .map_err(UploadError::from),
        None => write_upload(&state, &a, &path, body, Publish::Replace).await,
    }
    .map_err(upload_error)?;
    events::record(&state, change(a.id(), kind::UPDATE, "replace", &e)).await;
    let etag = match hasher {
        None => a.connector.etag(&e).await.ok(),
        Some(h) => {
            let digest = std::mem::take(&mut *h.lock().unwrap_or_else(|p| p.into_inner()));
            Some(format!("\"{}\"", hex::encode(digest.finalize())))
        }
    };
    let mut r = Json(object(&state.ids, &a, &e)).into_response();
    conditional::set_validators(&mut r, etag.as_deref(), e.modified);
    Ok(r)
}

/// Rename (`name`), move (`parent_id`), or move to another account (`account`). `If-Match` /
/// `If-Unmodified-Since` make it conditional on the file being unchanged (412 otherwise).
#[utoipa::path(patch, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(FilePath, ChangePreconditions),
    request_body = ObjectChanges,
    responses((status = 200, body = StorageObject), (status = 409, body = crate::error::ErrorBody),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn patch_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ObjectChanges>,
) -> ApiResult<Response> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let _lock = lock_if_conditional(&a, &path, &headers).await;
    let current = stat_file(&a, &path).await?;
    let matched = match check_change(&a, &current, &headers).await? {
        Ok(m) => m,
        Err(answer) => return Ok(answer),
    };
    let (landed, e) = moved_file(&state, &caller, &a, &path, &body).await?;
    // A move keeps the content: a hash we computed still holds; provider ETags are re-read.
    let etag = if a.connector.provider_etags() || landed.id() != a.id() {
        None
    } else {
        matched
    };
    let mut r = Json(object(&state.ids, &landed, &e)).into_response();
    conditional::set_validators(&mut r, etag.as_deref(), e.modified);
    Ok(r)
}

/// Performs a file rename or move; returns the account it ended in and its entry.
async fn moved_file(
    state: &AppState,
    caller: &Caller,
    a: &Arc<Account>,
    path: &StoragePath,
    body: &ObjectChanges,
) -> ApiResult<(Arc<Account>, Entry)> {
    let dst = target_account(state, caller, a, body.account.as_ref()).await?;
    if Arc::ptr_eq(a, &dst) {
        let target = destination(
            state,
            a,
            path,
            body.parent_id.as_deref(),
            body.name.as_deref(),
        )
        .await?;
        if target == *path {
            return Ok((a.clone(), a.connector.stat_file(path).await?));
        }
        // Object stores cannot rename without replace on every server (moto ignores
        // `If-None-Match` on copies): the name is claimed like an upload's.
        let claim = if a.connector.publishes_in_place() {
            Some(
                crate::claims::take(state, a, target.as_str(), ClaimKind::Name)
                    .await?
                    .ok_or_else(|| {
                        ApiError::conflict("conflict", "an object with that name already exists")
                    })?,
            )
        } else {
            None
        };
        let renamed = a.connector.rename(path, &target, EntryKind::File).await;
        if let Some(c) = claim {
            c.done().await;
        }
        let e = renamed?;
        record_moved(state, a.id(), path, &e).await;
        return Ok((a.clone(), e));
    }
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(state, &dst, p)?,
        None => StoragePath::root(),
    };
    let target = parent.join(body.name.as_deref().unwrap_or(path.name()))?;
    stat_folder(&dst, &parent, "parent folder").await?;
    if dst.connector.exists(&target).await? {
        return Err(ApiError::conflict(
            "conflict",
            "an object with that name already exists",
        ));
    }
    let e = dst
        .connector
        .copy_file_from(&a.connector, path, &target)
        .await?;
    // Each account's feed gets its side of the move: the file arrived in one, left the other.
    events::record(state, change(dst.id(), kind::ADD, "move", &e)).await;
    a.connector.delete_file(path).await?;
    let gone = events::gone(path, EntryKind::File);
    events::record(state, change(a.id(), kind::DELETE, "move", &gone)).await;
    Ok((dst, e))
}

/// Delete a file. `If-Match` / `If-Unmodified-Since` make it conditional on the file being
/// unchanged (412 otherwise, and the file stays).
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(FilePath, ChangePreconditions),
    responses((status = 204, description = "Deleted"), (status = 412, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn delete_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let _lock = lock_if_conditional(&a, &path, &headers).await;
    let matched = if conditional::has_preconditions(&headers) {
        let current = stat_file(&a, &path).await?;
        match check_change(&a, &current, &headers).await? {
            Ok(m) => m,
            Err(answer) => return Ok(answer),
        }
    } else {
        None
    };
    match matched.filter(|_| a.connector.provider_etags()) {
        Some(tag) => a.connector.delete_file_if_match(&path, &tag).await,
        None => a.connector.delete_file(&path).await,
    }
    .map_err(not_found_as("file"))?;
    let gone = events::gone(&path, EntryKind::File);
    events::record(&state, change(a.id(), kind::DELETE, "delete", &gone)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of a copy.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CopyQuery {
    /// `task` runs the copy asynchronously and answers 202 with a task.
    #[serde(default)]
    #[param(pattern = r"^(task|object)$")]
    return_type: Option<String>,
}

/// Copy a file, within the account or to another account of the application. Copies between
/// accounts and copies of at least `offload.threshold` bytes run as transfers on a spoke (or
/// on the hub when no spoke is healthy); with `X-Kloudless-Async: true` or
/// `return_type=task` the answer is a task to poll at `/v1/accounts/{acc}/tasks/{id}`.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/files/{id}/copy", tag = "storage",
    params(FilePath,
           CopyQuery, ("X-Kloudless-Async" = Option<bool>, Header, description = "Run as a task")),
    request_body = CopyTarget,
    responses((status = 201, body = StorageObject),
              (status = 202, body = crate::api::transfers::TaskView),
              (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn copy_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    ApiQuery(query): ApiQuery<CopyQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CopyTarget>,
) -> ApiResult<Response> {
    let as_task = match query.return_type.as_deref() {
        None | Some("object") => false,
        Some("task") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`return_type` must be `task` or `object`",
            ))
        }
    } || super::async_requested(&headers);
    let (a, path) = p.resolve(&state, &caller).await?;
    let src = stat_file(&a, &path).await?;
    let dst = target_account(&state, &caller, &a, body.account.as_ref()).await?;
    let same = Arc::ptr_eq(&a, &dst);
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(&state, &dst, p)?,
        None if same => path.parent().unwrap_or_else(StoragePath::root),
        None => StoragePath::root(),
    };
    stat_folder(&dst, &parent, "parent folder").await?;
    let name = body.name.as_deref().unwrap_or(path.name());
    let mut target = parent.join(name)?;
    if dst.connector.exists(&target).await? {
        target = free_name(&dst, &parent, name).await?;
    }
    if as_task || crate::transfers::should_offload(&state, &a, &dst, src.size) {
        let t = crate::transfers::create_copy(
            &state,
            caller.app_id,
            &a,
            &path,
            &dst,
            &target,
            src.size,
        )
        .await?;
        if as_task {
            let task = crate::api::transfers::task_view(&state, t).await?;
            return Ok((StatusCode::ACCEPTED, Json(task)).into_response());
        }
        let t =
            crate::transfers::wait(&state, t.id, std::time::Duration::from_secs(24 * 3600)).await?;
        if t.state != "done" {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "transfer_failed",
                format!(
                    "the copy (transfer {}) ended {}: {}",
                    t.id,
                    t.state,
                    t.error.as_deref().unwrap_or("no detail")
                ),
            ));
        }
        let obj = transferred_object(&state, &t).await?;
        return Ok((StatusCode::CREATED, Json(obj)).into_response());
    }
    // The name was free a moment ago; a concurrent writer may take it first, and then the
    // copy takes the next free one rather than replacing.
    let publish = Publish::NoReplace {
        alternatives: MAX_RENAME_TRIES,
    };
    let e = if same {
        a.connector.copy_file_with(&path, &target, publish).await?
    } else {
        dst.connector
            .copy_file_from_with(&a.connector, &path, &target, publish)
            .await?
    };
    events::record(&state, change(dst.id(), kind::COPY, "copy", &e)).await;
    Ok((StatusCode::CREATED, Json(object(&state.ids, &dst, &e))).into_response())
}

/// The destination file of a finished transfer, as a storage object.
pub(crate) async fn transferred_object(
    state: &AppState,
    t: &crate::db::TransferRecord,
) -> ApiResult<StorageObject> {
    let dst = state.account(t.app_id, t.dst_account).await?;
    let path = StoragePath::parse(&t.dst_path)
        .map_err(|e| ApiError::internal(format_args!("stored path {:?}: {e}", t.dst_path)))?;
    let e = stat_file(&dst, &path).await?;
    Ok(object(&state.ids, &dst, &e))
}
