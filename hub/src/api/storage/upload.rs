//! Uploads through the hub: the body streams to the provider through the write path, and a
//! large one is redirected to a spoke near the storage.

use super::direct::{direct_url, Direct};
use super::{
    change, folder_path, free_name, insert, object, stat_folder, AccountPath, MAX_RENAME_TRIES,
};
use crate::api::{ApiPath, ApiQuery, CommonErrors};
use crate::auth::Caller;
use crate::db::{upload_claim_key, ClaimKind};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind};
use crate::model::{StorageObject, UploadMetadata};
use crate::state::{Account, AppState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use shared::storage::{numbered, Entry, EntryKind, Publish, StorageError, StoragePath};
use std::sync::Arc;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadOptions {
    /// Replace an existing file of the same name; when false (the default) the upload is
    /// renamed `name (1).ext`, `name (2).ext`, ...
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    overwrite: Option<bool>,
}

/// Upload a file: the raw body is the content, `X-Kloudless-Metadata: {"name","parent_id"}`
/// names it. The body streams to the provider; an interrupted upload leaves no file behind.
/// With `Content-Type: application/json` and `{"url","parent_id","name"}` the file is fetched
/// from the URL instead (http/https, internal addresses refused, at most 5 redirects, each
/// checked): by the hub when small, else by a transfer on a spoke near the storage; with
/// `X-Kloudless-Async: true` the answer is that transfer's task (202).
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/files", tag = "storage",
    params(AccountPath, UploadOptions,
           ("X-Kloudless-Metadata" = String, Header, description = "JSON: {\"name\": ..., \"parent_id\": ...}"),
           ("X-Kloudless-Async" = Option<bool>, Header, description = "Upload from a URL: answer the task (202) at once")),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (super::from_url::UrlUpload = "application/json"))),
    responses((status = 201, body = StorageObject),
              (status = 202, body = crate::api::transfers::TaskView),
              (status = 307, description = "Large upload (Content-Length ≥ `offload.threshold`): repeat the request at `Location`, a spoke near the storage"),
              (status = 413, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn upload_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(opts): ApiQuery<UploadOptions>,
    req: Request,
) -> ApiResult<Response> {
    let a = p.resolve(&state, &caller).await?;
    if super::from_url::is_url_upload(&req) {
        let overwrite = opts.overwrite == Some(true);
        let as_task = super::async_requested(req.headers());
        return super::from_url::upload_from_url(
            &state,
            caller.app_id,
            &a,
            overwrite,
            as_task,
            req,
        )
        .await;
    }
    let meta = upload_metadata(req.headers())?;
    let parent = folder_path(&state, &a, &meta.parent_id)?;
    let mut target = parent.join(&meta.name)?;
    stat_folder(&a, &parent, "parent folder").await?;
    let overwrite = opts.overwrite == Some(true);
    let taken = file_taken(&a, &target).await?;
    // A large upload goes straight to a spoke near the storage: the client repeats the
    // request there (307 keeps the method and body), and the bytes never pass through a hub.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = state.config.limits.max_upload_bytes;
    if let Some(n) = declared.filter(|n| *n >= state.config.offload.threshold) {
        if max > 0 && n > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the upload is {n} bytes; the limit is {max}"),
            ));
        }
        if taken && !overwrite {
            target = free_name(&a, &parent, &meta.name).await?;
        }
        let direct = Direct::Upload {
            replace: overwrite,
            declared_len: Some(n),
            // The feed's kind, fixed now: replacing the file that is there is an update.
            event: if overwrite && taken {
                kind::UPDATE
            } else {
                kind::ADD
            },
        };
        if let Some((url, _)) = direct_url(&state, &a, &target, direct, 600).await? {
            super::drain_unless_continue(req).await;
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            insert(&mut r, header::LOCATION, &url);
            return Ok(r);
        }
    }
    let publish = publish_for(overwrite);
    let body = limited_body(req.into_body(), max);
    let e = write_upload(&state, &a, &target, body, publish)
        .await
        .map_err(upload_error)?;
    // Replacing is an update of the file; a new name (free or numbered) is an addition.
    let k = upload_kind(overwrite, taken, &target, &e);
    events::record(&state, change(a.id(), k, "upload", &e)).await;
    Ok((StatusCode::CREATED, Json(object(&state.ids, &a, &e))).into_response())
}

/// Whether a file already has the name `target` (a folder there is a 409).
pub(super) async fn file_taken(a: &Account, target: &StoragePath) -> ApiResult<bool> {
    match a.connector.stat(target).await {
        Ok(e) if e.kind == EntryKind::Folder => Err(ApiError::conflict(
            "conflict",
            "a folder with that name exists",
        )),
        Ok(_) => Ok(true),
        Err(StorageError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// How an upload takes its name: replacing with `overwrite`, else the next free one.
pub(crate) fn publish_for(overwrite: bool) -> Publish {
    if overwrite {
        Publish::Replace
    } else {
        Publish::NoReplace {
            alternatives: MAX_RENAME_TRIES,
        }
    }
}

/// The feed's kind of an upload that landed as `e`: replacing the file that was at `target`
/// is an update; a new name (free or numbered) is an addition.
pub(super) fn upload_kind(
    overwrite: bool,
    taken: bool,
    target: &StoragePath,
    e: &Entry,
) -> &'static str {
    if overwrite && taken && e.path == *target {
        kind::UPDATE
    } else {
        kind::ADD
    }
}

/// Writes an upload through the write path: staged and published by the connector (with its
/// staging object claimed in the database, so a crash leaves nothing the sweep cannot find),
/// or, on services that write in place and must not replace, under a name reserved in the
/// database first (concurrent uploads of one name each get their own).
pub(crate) async fn write_upload<S, E>(
    state: &AppState,
    a: &Arc<Account>,
    target: &StoragePath,
    body: S,
    publish: Publish,
) -> Result<Entry, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + Sync + 'static,
{
    if let (true, Publish::NoReplace { alternatives }) = (a.connector.publishes_in_place(), publish)
    {
        for n in 0..=alternatives {
            let Ok(candidate) = numbered(target, n) else {
                break;
            };
            if a.connector.exists(&candidate).await? {
                continue;
            }
            let Some(claim) =
                crate::claims::take(state, a, candidate.as_str(), ClaimKind::Name).await?
            else {
                continue;
            };
            let res = match a.connector.exists(&candidate).await {
                Ok(false) => a
                    .connector
                    .write_with(
                        &candidate,
                        body,
                        Publish::NoReplace { alternatives: 0 },
                        None,
                    )
                    .await
                    .map_err(UploadError::from),
                Ok(true) => {
                    claim.done().await;
                    continue;
                }
                Err(e) => Err(e.into()),
            };
            claim.done().await;
            return res;
        }
        return Err(StorageError::AlreadyExists.into());
    }
    let staging = a.connector.new_staging();
    // Staged uploads claim their staging object; in-place ones claim the upload itself (a
    // writer killed mid-way leaves an incomplete multipart upload on object stores).
    let (key, kind) = match &staging {
        Some(key) => (key.as_str().to_owned(), ClaimKind::Staging),
        None => (upload_claim_key(target.as_str()), ClaimKind::Upload),
    };
    let claim = crate::claims::take(state, a, &key, kind)
        .await?
        .ok_or_else(|| ApiError::internal("claim key collision"))?;
    let res = a.connector.write_with(target, body, publish, staging).await;
    if res.is_ok() {
        claim.done().await;
    } else {
        claim.release().await;
    }
    Ok(res?)
}

/// A failed upload: from the provider, or from our own bookkeeping.
#[derive(Debug)]
pub(crate) enum UploadError {
    Storage(StorageError),
    Api(ApiError),
}

impl From<StorageError> for UploadError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl From<ApiError> for UploadError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

fn upload_metadata(headers: &HeaderMap) -> ApiResult<UploadMetadata> {
    let raw = headers
        .get("x-kloudless-metadata")
        .ok_or_else(|| ApiError::bad_request("the X-Kloudless-Metadata header is required"))?;
    // The header is JSON; non-ASCII names arrive as raw UTF-8 bytes.
    let text = std::str::from_utf8(raw.as_bytes())
        .map_err(|_| ApiError::bad_request("X-Kloudless-Metadata is not UTF-8"))?;
    serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "X-Kloudless-Metadata must be JSON with `name` and `parent_id`: {e}"
        ))
    })
}

/// An upload error: exceeding the size limit is a 413; a parent folder deleted during the
/// upload is a 404 naming it; every candidate name taken is a 409.
pub(crate) fn upload_error(e: UploadError) -> ApiError {
    let e = match e {
        UploadError::Api(e) => return e,
        UploadError::Storage(e) => e,
    };
    match &e {
        StorageError::Interrupted(m) if m.contains(TOO_LARGE) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "upload exceeds limits.max_upload_bytes",
        ),
        StorageError::NotFound => ApiError::not_found("parent folder"),
        StorageError::AlreadyExists => {
            ApiError::conflict("conflict", "too many files with that name")
        }
        StorageError::WrongKind { .. } => {
            ApiError::conflict("conflict", "a folder with that name exists")
        }
        _ => e.into(),
    }
}

const TOO_LARGE: &str = "upload size limit exceeded";

/// The request body as a byte stream that fails once more than `limit` bytes (0: no limit)
/// have passed.
pub(super) fn limited_body(
    body: Body,
    limit: u64,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static {
    let mut seen: u64 = 0;
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| e.to_string())?;
        seen += chunk.len() as u64;
        if limit > 0 && seen > limit {
            return Err(TOO_LARGE.to_owned());
        }
        Ok(chunk)
    })
}
