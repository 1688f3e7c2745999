//! The storage API: folders, files (streaming upload and download with `Range`), copy, move,
//! search and recent, over any connected account.

use super::conditional::{self, Decision, FileLock};
use super::{page_of, ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::db::{upload_claim_key, ClaimKind};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind, Change};
use crate::ids::IdCodec;
use crate::model::{
    rfc3339, AccountRefBody, CopyTarget, FolderRef, NewFolder, ObjectChanges, ObjectList,
    StorageObject, UploadMetadata,
};
use crate::state::{Account, AppState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::storage::{
    numbered, ByteRange, Entry, EntryKind, Publish, ServiceConfig, StorageError, StoragePath,
};
use std::sync::Arc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_folder))
        .routes(routes!(get_folder, patch_folder, delete_folder))
        .routes(routes!(folder_contents))
        .routes(routes!(copy_folder))
        .routes(routes!(upload_file))
        .routes(routes!(upload_url))
        .routes(routes!(get_file, replace_file, patch_file, delete_file))
        .routes(routes!(download_file))
        .routes(routes!(copy_file))
        .routes(routes!(search))
        .routes(routes!(recent))
}

/// Most objects a search or recent listing examines (bounds its memory and time).
const SCAN_LIMIT: usize = 50_000;
/// Auto-rename tries for `overwrite=false` before giving up.
const MAX_RENAME_TRIES: u32 = 1000;

/// Renders an entry as the API's object.
pub(crate) fn object(ids: &IdCodec, account: i64, e: &Entry) -> StorageObject {
    let name = if e.path.is_root() {
        "root".to_owned()
    } else {
        e.path.name().to_owned()
    };
    let folder_ref = |p: &StoragePath| FolderRef {
        id: ids.encode(account, EntryKind::Folder, p),
        name: if p.is_root() {
            "root".into()
        } else {
            p.name().to_owned()
        },
    };
    let is_folder = e.kind == EntryKind::Folder;
    StorageObject {
        id: ids.encode(account, e.kind, &e.path),
        name,
        kind: if is_folder { "folder" } else { "file" },
        size: (!is_folder).then_some(e.size),
        created: None,
        modified: e.modified.map(rfc3339),
        mime_type: (!is_folder).then(|| mime_type(e)),
        account,
        parent: e.path.parent().map(|p| folder_ref(&p)),
        ancestors: e.path.ancestors().iter().map(folder_ref).collect(),
        path: e.path.to_string(),
        downloadable: !is_folder,
        raw_id: e.path.to_string(),
        api: "storage",
        can_create_folders: is_folder.then_some(true),
        can_upload_files: is_folder.then_some(true),
    }
}

/// One page of `entries` as API objects.
fn entries_page(
    ids: &IdCodec,
    account: i64,
    entries: &[Entry],
    page: u32,
    size: u32,
) -> ObjectList<StorageObject> {
    let objects = entries
        .iter()
        .skip(Paging::offset(page, size))
        .take(size as usize)
        .map(|e| object(ids, account, e))
        .collect();
    page_of(objects, page, size, entries.len(), "storage")
}

fn mime_type(e: &Entry) -> String {
    e.content_type
        .clone()
        .filter(|t| !t.is_empty() && t != "application/octet-stream" && t != "binary/octet-stream")
        .unwrap_or_else(|| {
            mime_guess::from_path(e.path.name())
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_owned()
        })
}

/// The account named by `{acc}`, if this caller may reach it and it is active.
async fn account(state: &AppState, caller: &Caller, acc: &str) -> ApiResult<Arc<Account>> {
    let id = caller.account_id(acc)?;
    let a = state.account(caller.app_id, id).await?;
    if !a.record.active {
        return Err(ApiError::forbidden("account is inactive"));
    }
    Ok(a)
}

/// The destination account of a copy or move: the same one, or another of the same
/// application that this caller can reach.
async fn target_account(
    state: &AppState,
    caller: &Caller,
    src: &Arc<Account>,
    account: Option<&AccountRefBody>,
) -> ApiResult<Arc<Account>> {
    let text = match account {
        None => return Ok(src.clone()),
        Some(AccountRefBody::Number(n)) => n.to_string(),
        Some(AccountRefBody::Text(t)) => t.clone(),
    };
    self::account(state, caller, &text).await
}

fn folder_path(state: &AppState, a: &Account, id: &str) -> ApiResult<StoragePath> {
    state.ids.decode(a.id(), EntryKind::Folder, id)
}

fn file_path(state: &AppState, a: &Account, id: &str) -> ApiResult<StoragePath> {
    state.ids.decode(a.id(), EntryKind::File, id)
}

fn not_found_as(kind: &'static str) -> impl Fn(StorageError) -> ApiError {
    move |e| match e {
        StorageError::NotFound | StorageError::WrongKind { .. } => ApiError::not_found(kind),
        other => other.into(),
    }
}

/// A change of `account` made by this request, for its event feed.
fn change<'a>(account: i64, kind: &'static str, action: &'static str, e: &'a Entry) -> Change<'a> {
    Change {
        account,
        kind,
        action,
        entry: e,
        from: None,
        dedupe_key: None,
    }
}

/// Records the rename or move of the object at `from` to `e` within `account`.
async fn record_moved(state: &AppState, account: i64, from: &StoragePath, e: &Entry) {
    let k = events::rename_or_move(from, &e.path);
    let action = if k == kind::RENAME { "rename" } else { "move" };
    let c = Change {
        from: Some(from),
        ..change(account, k, action, e)
    };
    events::record(state, c).await;
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CreateFolderOptions {
    /// Answer 409 if the folder already exists (otherwise the existing folder is returned).
    #[serde(default)]
    conflict_if_exists: Option<bool>,
}

/// Create a folder.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/folders", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), CreateFolderOptions),
    request_body = NewFolder,
    responses((status = 201, body = StorageObject), (status = 200, body = StorageObject, description = "Already existed"),
              (status = 409, body = crate::error::ErrorBody), CommonErrors))]
async fn create_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(opts): ApiQuery<CreateFolderOptions>,
    ApiJson(body): ApiJson<NewFolder>,
) -> ApiResult<(StatusCode, Json<StorageObject>)> {
    let a = account(&state, &caller, &acc).await?;
    let parent = folder_path(&state, &a, &body.parent_id)?;
    let path = parent.join(&body.name)?;
    a.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
    let conflict = opts.conflict_if_exists == Some(true);
    if let Some(existing) = existing_folder(&a, &path, conflict).await? {
        return Ok((StatusCode::OK, Json(object(&state.ids, a.id(), &existing))));
    }
    // Where the provider has no exclusive mkdir, concurrent creators of one name queue on a
    // claim in the database (shared by every hub); the others see the winner's folder.
    let claim = if a.connector.exclusive_folders() {
        None
    } else {
        let c = crate::claims::take_waiting(
            &state,
            &a,
            path.as_str(),
            ClaimKind::Folder,
            FOLDER_CLAIM_WAIT,
        )
        .await?
        .ok_or_else(|| {
            ApiError::conflict("conflict", "the folder is being created by another request")
        })?;
        match existing_folder(&a, &path, conflict).await {
            Ok(None) => {}
            other => {
                c.done().await;
                let existing = other?.ok_or_else(|| ApiError::internal("folder vanished"))?;
                return Ok((StatusCode::OK, Json(object(&state.ids, a.id(), &existing))));
            }
        }
        Some(c)
    };
    let created = a.connector.create_folder_new(&path).await;
    if let Some(c) = claim {
        c.done().await;
    }
    match created {
        Ok(e) => {
            events::record(&state, change(a.id(), kind::ADD, "create_folder", &e)).await;
            Ok((StatusCode::CREATED, Json(object(&state.ids, a.id(), &e))))
        }
        // Another request made it first.
        Err(StorageError::AlreadyExists) => {
            let existing = existing_folder(&a, &path, conflict).await?.ok_or_else(|| {
                ApiError::conflict("conflict", "an object with that name already exists")
            })?;
            Ok((StatusCode::OK, Json(object(&state.ids, a.id(), &existing))))
        }
        Err(StorageError::NotFound) => Err(ApiError::not_found("parent folder")),
        Err(e) => Err(e.into()),
    }
}

/// How long a folder creation waits for a concurrent creation of the same name.
const FOLDER_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The folder at `path` when it exists and may be answered as is (`Ok(None)`: nothing there);
/// a conflict when `conflict_if_exists` or when a file has the name.
async fn existing_folder(
    a: &Account,
    path: &StoragePath,
    conflict_if_exists: bool,
) -> ApiResult<Option<Entry>> {
    match a.connector.stat(path).await {
        Ok(existing) if existing.kind == EntryKind::Folder && !conflict_if_exists => {
            Ok(Some(existing))
        }
        Ok(_) => Err(ApiError::conflict(
            "conflict",
            "an object with that name already exists",
        )),
        Err(StorageError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Retrieve a folder's metadata (`root` is the account's top folder).
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/folders/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "Folder id or `root`", pattern = r"^(root|D[A-Za-z0-9_-]+)$")),
    responses((status = 200, body = StorageObject), CommonErrors))]
async fn get_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<StorageObject>> {
    let a = account(&state, &caller, &acc).await?;
    let path = folder_path(&state, &a, &id)?;
    let e = a
        .connector
        .stat_folder(&path)
        .await
        .map_err(not_found_as("folder"))?;
    Ok(Json(object(&state.ids, a.id(), &e)))
}

/// List a folder's contents, sorted by name.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/folders/{id}/contents", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "Folder id or `root`", pattern = r"^(root|D[A-Za-z0-9_-]+)$"), Paging),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
async fn folder_contents(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = paging.resolve()?;
    let a = account(&state, &caller, &acc).await?;
    let path = folder_path(&state, &a, &id)?;
    a.connector
        .stat_folder(&path)
        .await
        .map_err(not_found_as("folder"))?;
    let (entries, _) = a.connector.list(&path).await?;
    Ok(Json(entries_page(&state.ids, a.id(), &entries, page, size)))
}

/// Rename (`name`) or move (`parent_id`) a folder.
#[utoipa::path(patch, path = "/v1/accounts/{acc}/storage/folders/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "Folder id", pattern = r"^D[A-Za-z0-9_-]+$")),
    request_body = ObjectChanges,
    responses((status = 200, body = StorageObject), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
async fn patch_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ObjectChanges>,
) -> ApiResult<Json<StorageObject>> {
    let a = account(&state, &caller, &acc).await?;
    let path = folder_path(&state, &a, &id)?;
    if path.is_root() {
        return Err(ApiError::bad_request(
            "the root folder cannot be renamed or moved",
        ));
    }
    if body.account.is_some() {
        return Err(ApiError::bad_request(
            "folders cannot be moved to another account; copy them instead",
        ));
    }
    a.connector
        .stat_folder(&path)
        .await
        .map_err(not_found_as("folder"))?;
    let target = destination(
        &state,
        &a,
        &path,
        body.parent_id.as_deref(),
        body.name.as_deref(),
    )
    .await?;
    if target == path {
        return Ok(Json(object(
            &state.ids,
            a.id(),
            &a.connector.stat(&path).await?,
        )));
    }
    let e = a
        .connector
        .rename(&path, &target, EntryKind::Folder)
        .await?;
    record_moved(&state, a.id(), &path, &e).await;
    Ok(Json(object(&state.ids, a.id(), &e)))
}

/// The path `name` (default: the source's name) inside `parent_id` (default: the source's
/// folder) of account `a`, after checking that the parent is a folder.
async fn destination(
    state: &AppState,
    a: &Account,
    src: &StoragePath,
    parent_id: Option<&str>,
    name: Option<&str>,
) -> ApiResult<StoragePath> {
    let parent = match parent_id {
        Some(p) => folder_path(state, a, p)?,
        None => src.parent().unwrap_or_else(StoragePath::root),
    };
    let name = name.unwrap_or(src.name());
    let target = parent.join(name)?;
    a.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
    Ok(target)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteFolderOptions {
    /// Delete a non-empty folder with everything in it.
    #[serde(default)]
    recursive: Option<bool>,
}

/// Delete a folder (`recursive=true` for a non-empty one).
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/folders/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "Folder id", pattern = r"^D[A-Za-z0-9_-]+$"), DeleteFolderOptions),
    responses((status = 204, description = "Deleted"), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
async fn delete_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    ApiQuery(opts): ApiQuery<DeleteFolderOptions>,
) -> ApiResult<StatusCode> {
    let a = account(&state, &caller, &acc).await?;
    let path = folder_path(&state, &a, &id)?;
    if path.is_root() {
        return Err(ApiError::bad_request("the root folder cannot be deleted"));
    }
    a.connector
        .delete_folder(&path, opts.recursive == Some(true))
        .await
        .map_err(not_found_as("folder"))?;
    let gone = events::gone(&path, EntryKind::Folder);
    events::record(&state, change(a.id(), kind::DELETE, "delete", &gone)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Copy a folder tree, within the account or to another account of the application.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/folders/{id}/copy", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "Folder id", pattern = r"^D[A-Za-z0-9_-]+$")),
    request_body = CopyTarget,
    responses((status = 201, body = StorageObject), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
async fn copy_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CopyTarget>,
) -> ApiResult<(StatusCode, Json<StorageObject>)> {
    let a = account(&state, &caller, &acc).await?;
    let path = folder_path(&state, &a, &id)?;
    if path.is_root() && body.name.is_none() {
        return Err(ApiError::bad_request(
            "copying the root folder needs a `name`",
        ));
    }
    a.connector
        .stat_folder(&path)
        .await
        .map_err(not_found_as("folder"))?;
    let dst = target_account(&state, &caller, &a, body.account.as_ref()).await?;
    let src_name = if path.is_root() { "root" } else { path.name() };
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(&state, &dst, p)?,
        None if Arc::ptr_eq(&a, &dst) => path.parent().unwrap_or_else(StoragePath::root),
        None => StoragePath::root(),
    };
    let target = parent.join(body.name.as_deref().unwrap_or(src_name))?;
    dst.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
    if dst.connector.exists(&target).await? {
        return Err(ApiError::conflict(
            "conflict",
            "an object with that name already exists",
        ));
    }
    let e = dst
        .connector
        .copy_folder_from(&a.connector, &path, &target)
        .await?;
    events::record(&state, change(dst.id(), kind::COPY, "copy", &e)).await;
    Ok((StatusCode::CREATED, Json(object(&state.ids, dst.id(), &e))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadOptions {
    /// Replace an existing file of the same name; when false (the default) the upload is
    /// renamed `name (1).ext`, `name (2).ext`, ...
    #[serde(default)]
    overwrite: Option<bool>,
}

/// Upload a file: the raw body is the content, `X-Kloudless-Metadata: {"name","parent_id"}`
/// names it. The body streams to the provider; an interrupted upload leaves no file behind.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/files", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), UploadOptions,
           ("X-Kloudless-Metadata" = String, Header, description = "JSON: {\"name\": ..., \"parent_id\": ...}")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = StorageObject),
              (status = 307, description = "Large upload (Content-Length ≥ `offload.threshold`): repeat the request at `Location`, a spoke near the storage"),
              (status = 413, body = crate::error::ErrorBody), CommonErrors))]
async fn upload_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(opts): ApiQuery<UploadOptions>,
    req: Request,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let meta = upload_metadata(req.headers())?;
    let parent = folder_path(&state, &a, &meta.parent_id)?;
    let mut target = parent.join(&meta.name)?;
    a.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
    let overwrite = opts.overwrite == Some(true);
    let taken = match a.connector.stat(&target).await {
        Ok(e) if e.kind == EntryKind::Folder => {
            return Err(ApiError::conflict(
                "conflict",
                "a folder with that name exists",
            ))
        }
        Ok(_) => true,
        Err(StorageError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
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
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            insert(&mut r, header::LOCATION, &url);
            return Ok(r);
        }
    }
    let publish = if overwrite {
        Publish::Replace
    } else {
        Publish::NoReplace {
            alternatives: MAX_RENAME_TRIES,
        }
    };
    let body = limited_body(req.into_body(), max);
    let e = write_upload(&state, &a, &target, body, publish)
        .await
        .map_err(upload_error)?;
    // Replacing is an update of the file; a new name (free or numbered) is an addition.
    let k = if overwrite && taken && e.path == target {
        kind::UPDATE
    } else {
        kind::ADD
    };
    events::record(&state, change(a.id(), k, "upload", &e)).await;
    Ok((StatusCode::CREATED, Json(object(&state.ids, a.id(), &e))).into_response())
}

/// Writes an upload through the write path: staged and published by the connector (with its
/// staging object claimed in the database, so a crash leaves nothing the sweep cannot find),
/// or, on services that write in place and must not replace, under a name reserved in the
/// database first (concurrent uploads of one name each get their own).
async fn write_upload<S, E>(
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
enum UploadError {
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

/// `name (1).ext`, `name (2).ext`, ...: the first name not taken in `parent`.
/// This only looks: where the name must be held (a spoke's upload grant), the write itself
/// must still refuse to replace.
async fn free_name(a: &Account, parent: &StoragePath, name: &str) -> ApiResult<StoragePath> {
    let base = parent.join(name)?;
    for n in 1..=MAX_RENAME_TRIES {
        let Ok(candidate) = numbered(&base, n) else {
            break;
        };
        if !a.connector.exists(&candidate).await? {
            return Ok(candidate);
        }
    }
    Err(ApiError::conflict(
        "conflict",
        "too many files with that name",
    ))
}

/// An upload error: exceeding the size limit is a 413; a parent folder deleted during the
/// upload is a 404 naming it; every candidate name taken is a 409.
fn upload_error(e: UploadError) -> ApiError {
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
fn limited_body(
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

/// Retrieve a file's metadata, with its `ETag` and `Last-Modified`; `If-None-Match` (weak
/// comparison) or `If-Modified-Since` answer 304, a stale `If-Match` 412.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison): 304 when one matches"),
           ("If-Modified-Since" = Option<String>, Header, description = "HTTP-date: 304 when not modified since (ignored with If-None-Match)")),
    responses((status = 200, body = StorageObject, headers(("ETag" = String), ("Last-Modified" = String))),
              (status = 304, description = "Not modified"),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
async fn get_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let e = a
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
    let etag = a.connector.etag(&e).await.map_err(not_found_as("file"))?;
    let d = conditional::evaluate(&headers, true, Some(&etag), e.modified);
    if d != Decision::Proceed {
        return Ok(conditional::answer(d, Some(&etag), e.modified));
    }
    let mut r = Json(object(&state.ids, a.id(), &e)).into_response();
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
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           ("If-Match" = Option<String>, Header, description = "ETags (strong comparison) or `*`: 412 unless one matches"),
           ("If-Unmodified-Since" = Option<String>, Header, description = "HTTP-date: 412 when modified since (ignored with If-Match)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = StorageObject, headers(("ETag" = String))),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
async fn replace_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let _lock = lock_if_conditional(&a, &path, req.headers()).await;
    let current = a
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
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
    let mut r = Json(object(&state.ids, a.id(), &e)).into_response();
    conditional::set_validators(&mut r, etag.as_deref(), e.modified);
    Ok(r)
}

/// Rename (`name`), move (`parent_id`), or move to another account (`account`). `If-Match` /
/// `If-Unmodified-Since` make it conditional on the file being unchanged (412 otherwise).
#[utoipa::path(patch, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           ("If-Match" = Option<String>, Header, description = "ETags (strong comparison) or `*`: 412 unless one matches"),
           ("If-Unmodified-Since" = Option<String>, Header, description = "HTTP-date: 412 when modified since (ignored with If-Match)")),
    request_body = ObjectChanges,
    responses((status = 200, body = StorageObject), (status = 409, body = crate::error::ErrorBody),
              (status = 412, body = crate::error::ErrorBody), CommonErrors))]
async fn patch_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ObjectChanges>,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let _lock = lock_if_conditional(&a, &path, &headers).await;
    let current = a
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
    let matched = match check_change(&a, &current, &headers).await? {
        Ok(m) => m,
        Err(answer) => return Ok(answer),
    };
    let (account_id, e) = moved_file(&state, &caller, &a, &path, &body).await?;
    // A move keeps the content: a hash we computed still holds; provider ETags are re-read.
    let etag = if a.connector.provider_etags() || account_id != a.id() {
        None
    } else {
        matched
    };
    let mut r = Json(object(&state.ids, account_id, &e)).into_response();
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
) -> ApiResult<(i64, Entry)> {
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
            return Ok((a.id(), a.connector.stat_file(path).await?));
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
        return Ok((a.id(), e));
    }
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(state, &dst, p)?,
        None => StoragePath::root(),
    };
    let target = parent.join(body.name.as_deref().unwrap_or(path.name()))?;
    dst.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
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
    Ok((dst.id(), e))
}

/// Delete a file. `If-Match` / `If-Unmodified-Since` make it conditional on the file being
/// unchanged (412 otherwise, and the file stays).
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/files/{id}", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           ("If-Match" = Option<String>, Header, description = "ETags (strong comparison) or `*`: 412 unless one matches"),
           ("If-Unmodified-Since" = Option<String>, Header, description = "HTTP-date: 412 when modified since (ignored with If-Match)")),
    responses((status = 204, description = "Deleted"), (status = 412, body = crate::error::ErrorBody), CommonErrors))]
async fn delete_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let _lock = lock_if_conditional(&a, &path, &headers).await;
    let matched = if conditional::has_preconditions(&headers) {
        let current = a
            .connector
            .stat_file(&path)
            .await
            .map_err(not_found_as("file"))?;
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

/// A request for a client-direct upload URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UploadUrlRequest {
    parent_id: String,
    name: String,
    /// Seconds the URL stays valid (1 to 86400; default 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    expires_in: Option<u64>,
}

/// A client-direct upload URL.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct UploadUrl {
    /// `PUT` (or `POST`) the raw bytes here; no Authorization header is needed.
    url: String,
    /// The id the file will have.
    id: String,
    expires: String,
}

/// What a client-direct URL is for.
#[derive(Debug, Clone, Copy)]
enum Direct {
    Download,
    /// An upload: replacing a file of the same name or never, held to the `Content-Length`
    /// the client declared to us when it was redirected.
    Upload {
        replace: bool,
        declared_len: Option<u64>,
        /// The event kind the published upload is (`add` or `update`).
        event: &'static str,
    },
}

/// Registers a single-purpose grant on a spoke with a data endpoint and returns the signed URL
/// and its expiry (Unix seconds), or `None` when no such spoke is healthy.
///
/// An upload's leftovers (its staging object, or on object stores an incomplete multipart
/// upload) are claimed in `storage_claims` before the URL exists, fresh until the URL
/// expires; the spoke names the claim in its heartbeats while the upload runs, so a spoke
/// that dies mid-upload leaves nothing the sweep does not find.
async fn direct_url(
    state: &AppState,
    a: &Account,
    path: &StoragePath,
    direct: Direct,
    ttl_secs: u64,
) -> ApiResult<Option<(String, i64)>> {
    let registry = &state.network.registry;
    let exclude = match &a.settings {
        ServiceConfig::Fs(fs) => registry.without_fs_root(std::path::Path::new(&fs.root)),
        _ => Vec::new(),
    };
    let Some((spoke, addr)) = registry.choose_data(&state.config.region, &exclude) else {
        return Ok(None);
    };
    let expires = crate::state::now_ms() / 1000 + ttl_secs as i64;
    let (method, replace, declared_len, event) = match direct {
        Direct::Download => ("GET", false, None, None),
        Direct::Upload {
            replace,
            declared_len,
            event,
        } => ("PUT", replace, declared_len, Some(event)),
    };
    let (mut staging, mut claim) = (None, None);
    if method == "PUT" {
        let key = a.connector.new_staging();
        let (k, kind) = match &key {
            Some(k) => (k.as_str().to_owned(), ClaimKind::Staging),
            None => (upload_claim_key(path.as_str()), ClaimKind::Upload),
        };
        // Untouched until the URL expires (plus the grace period): a URL never used leaves
        // nothing, and one in use is kept fresh by the spoke's heartbeats.
        if !state
            .db
            .take_claim(a.record.app_id, a.id(), &k, kind, expires * 1000)
            .await?
        {
            return Err(ApiError::internal("claim key collision"));
        }
        staging = key.map(|k| k.as_str().to_owned());
        claim = Some(k);
    }
    let grant_id = crate::network::new_grant_id();
    let receipt = event.map(|kind| events::receipt(state, &grant_id, a.id(), path.as_str(), kind));
    let g = shared::proto::Grant {
        grant_id,
        method: method.to_owned(),
        account: a.id(),
        location: shared::proto::Location {
            service: a.settings.clone(),
            path: path.as_str().to_owned(),
        },
        file_id: state.ids.encode(a.id(), EntryKind::File, path),
        expires,
        max_bytes: state.config.limits.max_upload_bytes,
        replace,
        declared_len,
        staging,
        claim: claim.clone(),
        receipt,
    };
    let grant_id = g.grant_id.clone();
    let Some(sig) = crate::network::grant(state, spoke, g) else {
        if let Some(k) = claim {
            state.db.release_claim(a.id(), &k).await?;
        }
        return Ok(None);
    };
    Ok(Some((
        format!("https://{addr}/v1/data/{grant_id}?exp={expires}&sig={sig}"),
        expires,
    )))
}

/// Get a URL a client uploads a file to directly (served by a spoke near the storage, so the
/// bytes never pass through a hub). The URL is signed, expiring and good for one upload (a
/// second request on it gets 410); it never replaces a file: if one of that name appears
/// after the URL was issued, the upload answers 409 and writes nothing.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/files/upload_url", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$")),
    request_body = UploadUrlRequest,
    responses((status = 200, body = UploadUrl), (status = 503, body = crate::error::ErrorBody), CommonErrors))]
async fn upload_url(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiJson(body): ApiJson<UploadUrlRequest>,
) -> ApiResult<Json<UploadUrl>> {
    let ttl = body.expires_in.unwrap_or(3600);
    if !(1..=86_400).contains(&ttl) {
        return Err(ApiError::bad_request(
            "`expires_in` must be between 1 and 86400",
        ));
    }
    let a = account(&state, &caller, &acc).await?;
    let parent = folder_path(&state, &a, &body.parent_id)?;
    a.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
    let mut target = parent.join(&body.name)?;
    if a.connector.exists(&target).await? {
        target = free_name(&a, &parent, &body.name).await?;
    }
    let direct = Direct::Upload {
        replace: false,
        declared_len: None,
        event: kind::ADD,
    };
    let (url, expires) = direct_url(&state, &a, &target, direct, ttl)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_data_spoke",
                "no spoke with a data endpoint is available; upload through \
             POST /v1/accounts/{acc}/storage/files instead",
            )
        })?;
    Ok(Json(UploadUrl {
        url,
        id: state.ids.encode(a.id(), EntryKind::File, &target),
        expires: crate::model::rfc3339(expires * 1000),
    }))
}

/// Query of a copy.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CopyQuery {
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
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           CopyQuery, ("X-Kloudless-Async" = Option<bool>, Header, description = "Run as a task")),
    request_body = CopyTarget,
    responses((status = 201, body = StorageObject),
              (status = 202, body = crate::api::transfers::TaskView),
              (status = 409, body = crate::error::ErrorBody), CommonErrors))]
async fn copy_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
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
    } || headers
        .get("x-kloudless-async")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let src = a
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
    let dst = target_account(&state, &caller, &a, body.account.as_ref()).await?;
    let same = Arc::ptr_eq(&a, &dst);
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(&state, &dst, p)?,
        None if same => path.parent().unwrap_or_else(StoragePath::root),
        None => StoragePath::root(),
    };
    dst.connector
        .stat_folder(&parent)
        .await
        .map_err(not_found_as("parent folder"))?;
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
    Ok((StatusCode::CREATED, Json(object(&state.ids, dst.id(), &e))).into_response())
}

/// The destination file of a finished transfer, as a storage object.
pub(crate) async fn transferred_object(
    state: &AppState,
    t: &crate::db::TransferRecord,
) -> ApiResult<StorageObject> {
    let dst = state.account(t.app_id, t.dst_account).await?;
    let path = StoragePath::parse(&t.dst_path)
        .map_err(|e| ApiError::internal(format_args!("stored path {:?}: {e}", t.dst_path)))?;
    let e = dst
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
    Ok(object(&state.ids, dst.id(), &e))
}

/// Download a file's content. Supports a single `Range` (206) with `If-Range`, `ETag` and
/// `Last-Modified`, `If-None-Match` (weak comparison) and `If-Modified-Since` (304), and
/// `If-Match` / `If-Unmodified-Since` (412).
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/files/{id}/contents", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), ("id" = String, Path, description = "File id", pattern = r"^F[A-Za-z0-9_-]+$"),
           ("Range" = Option<String>, Header, description = "bytes=START-END"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison): 304 when one matches")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 304, description = "Not modified"),
              (status = 307, description = "Large file: fetch it from the spoke at `Location`"),
              (status = 412, body = crate::error::ErrorBody),
              (status = 416, body = crate::error::ErrorBody), CommonErrors))]
async fn download_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = account(&state, &caller, &acc).await?;
    let path = file_path(&state, &a, &id)?;
    let e = a
        .connector
        .stat_file(&path)
        .await
        .map_err(not_found_as("file"))?;
    // Preconditions first: a 304 or 412 beats a redirect.
    let mut etag = None;
    if conditional::has_preconditions(&headers) {
        let tag = a.connector.etag(&e).await.map_err(not_found_as("file"))?;
        let d = conditional::evaluate(&headers, true, Some(&tag), e.modified);
        if d != Decision::Proceed {
            return Ok(conditional::answer(d, Some(&tag), e.modified));
        }
        etag = Some(tag);
    }
    // Large whole-file downloads go straight to a spoke near the storage (without hashing
    // the file here when the provider has no ETag: its bytes should not cross the hub).
    if e.size >= state.config.offload.threshold && !headers.contains_key(header::RANGE) {
        if let Some((url, _)) = direct_url(&state, &a, &path, Direct::Download, 600).await? {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            insert(&mut r, header::LOCATION, &url);
            return Ok(r);
        }
    }
    // Without preconditions a file that keeps changing while it is hashed (concurrent
    // overwrites) is still sent, without an ETag, rather than failing the read.
    let etag = match etag {
        Some(t) => Some(t),
        None => match a.connector.etag(&e).await {
            Ok(t) => Some(t),
            Err(StorageError::Unavailable(_)) => a.connector.known_etag(&e).await,
            Err(err) => return Err(not_found_as("file")(err)),
        },
    };
    // If-Range takes a strong ETag; a date (or anything else) sends the whole file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| Some(v.trim()) == etag.as_deref());
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(r, e.size),
        _ => RangeRequest::Full,
    };
    let (status, read_range, len) = match range {
        RangeRequest::Full => (StatusCode::OK, None, e.size),
        RangeRequest::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "requested range is not satisfiable",
            )
            .into_response();
            insert(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes */{}", e.size),
            );
            return Ok(r);
        }
        RangeRequest::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            Some(ByteRange {
                start,
                len: Some(end - start + 1),
            }),
            end - start + 1,
        ),
    };
    let stream = if len == 0 {
        futures::stream::empty().boxed()
    } else {
        a.connector.read(&path, read_range).await?.boxed()
    };
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    insert(&mut r, header::CONTENT_TYPE, &mime_type(&e));
    insert(&mut r, header::CONTENT_LENGTH, &len.to_string());
    conditional::set_validators(&mut r, etag.as_deref(), e.modified);
    insert(&mut r, header::ACCEPT_RANGES, "bytes");
    let encoded: String =
        percent_encoding::utf8_percent_encode(e.path.name(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    insert(
        &mut r,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename*=UTF-8''{encoded}"),
    );
    if let Some((start, end)) = read_range.map(|r| (r.start, r.start + len - 1)) {
        insert(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{end}/{}", e.size),
        );
    }
    Ok(r)
}

fn insert(r: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// A parsed `Range` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Full,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `size` bytes. Malformed and multi-range
/// headers are ignored (the full file is sent), as RFC 9110 allows.
fn parse_range(h: &str, size: u64) -> RangeRequest {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), _) if start >= size => RangeRequest::Unsatisfiable,
        (Ok(start), Ok(end)) if end >= start => RangeRequest::Part {
            start,
            end: end.min(size - 1),
        },
        (Ok(_), Ok(_)) => RangeRequest::Full,
        (Ok(start), Err(_)) if b.is_empty() => RangeRequest::Part {
            start,
            end: size - 1,
        },
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start: size.saturating_sub(suffix),
                    end: size - 1,
                }
            }
        }
        _ => RangeRequest::Full,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Text to find in names (case-insensitive); must not be empty.
    q: Option<String>,
    /// Comma-separated folder ids to search below (default: the whole account).
    #[serde(default)]
    parents: Option<String>,
    #[serde(default)]
    page: Option<u32>,
    #[serde(default)]
    page_size: Option<u32>,
}

/// Search names below the root or below `parents`.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/search", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), SearchQuery),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
async fn search(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = Paging {
        page: q.page,
        page_size: q.page_size,
    }
    .resolve()?;
    let needle = q.q.as_deref().map(str::trim).unwrap_or("");
    if needle.is_empty() {
        return Err(ApiError::bad_request("`q` must not be empty"));
    }
    let needle = needle.to_lowercase();
    let a = account(&state, &caller, &acc).await?;
    let roots = match q.parents.as_deref().filter(|p| !p.is_empty()) {
        None => vec![StoragePath::root()],
        Some(list) => list
            .split(',')
            .map(|id| folder_path(&state, &a, id.trim()))
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let mut hits = Vec::new();
    for root in roots {
        let (entries, _) = a
            .connector
            .walk(&root, SCAN_LIMIT)
            .await
            .map_err(not_found_as("folder"))?;
        hits.extend(
            entries
                .into_iter()
                .filter(|e| e.path.name().to_lowercase().contains(&needle)),
        );
    }
    hits.sort_by(|x, y| x.path.cmp(&y.path));
    hits.dedup_by(|x, y| x.path == y.path);
    Ok(Json(entries_page(&state.ids, a.id(), &hits, page, size)))
}

/// Recently modified files, newest first.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/recent", tag = "storage",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), Paging),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
async fn recent(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = paging.resolve()?;
    let a = account(&state, &caller, &acc).await?;
    let (entries, _) = a.connector.walk(&StoragePath::root(), SCAN_LIMIT).await?;
    let mut files: Vec<_> = entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    files.sort_by(|x, y| {
        y.modified
            .cmp(&x.modified)
            .then_with(|| x.path.cmp(&y.path))
    });
    Ok(Json(entries_page(&state.ids, a.id(), &files, page, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeRequest::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeRequest::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeRequest::Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), RangeRequest::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=x-y", 100), RangeRequest::Full);
    }
}
