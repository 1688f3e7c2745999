//! Folders: create (once, however many ask at a time), retrieve, list, rename or move,
//! delete, copy.

use super::{
    change, destination, entries_page, folder_path, not_found_as, object, record_moved,
    stat_folder, target_account, AccountPath, FolderPath,
};
use crate::api::{ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::db::ClaimKind;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind};
use crate::model::{CopyTarget, NewFolder, ObjectChanges, ObjectList, StorageObject};
use crate::state::{Account, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shared::storage::{Entry, EntryKind, StorageError, StoragePath};
use std::sync::Arc;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CreateFolderOptions {
    /// Answer 409 if the folder already exists (otherwise the existing folder is returned).
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    conflict_if_exists: Option<bool>,
}

/// Create a folder.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/folders", tag = "storage",
    params(AccountPath, CreateFolderOptions),
    request_body = NewFolder,
    responses((status = 201, body = StorageObject), (status = 200, body = StorageObject, description = "Already existed"),
              (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn create_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(opts): ApiQuery<CreateFolderOptions>,
    ApiJson(body): ApiJson<NewFolder>,
) -> ApiResult<(StatusCode, Json<StorageObject>)> {
    let a = p.resolve(&state, &caller).await?;
    let parent = folder_path(&state, &a, &body.parent_id)?;
    let path = parent.join(&body.name)?;
    stat_folder(&a, &parent, "parent folder").await?;
    let conflict = opts.conflict_if_exists == Some(true);
    if let Some(existing) = existing_folder(&a, &path, conflict).await? {
        return Ok((StatusCode::OK, Json(object(&state.ids, &a, &existing))));
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
                return Ok((StatusCode::OK, Json(object(&state.ids, &a, &existing))));
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
            Ok((StatusCode::CREATED, Json(object(&state.ids, &a, &e))))
        }
        // Another request made it first.
        Err(StorageError::AlreadyExists) => {
            let existing = existing_folder(&a, &path, conflict).await?.ok_or_else(|| {
                ApiError::conflict("conflict", "an object with that name already exists")
            })?;
            Ok((StatusCode::OK, Json(object(&state.ids, &a, &existing))))
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
    params(FolderPath),
    responses((status = 200, body = StorageObject), CommonErrors))]
pub(super) async fn get_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FolderPath>,
) -> ApiResult<Json<StorageObject>> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let e = stat_folder(&a, &path, "folder").await?;
    Ok(Json(object(&state.ids, &a, &e)))
}

/// List a folder's contents, sorted by name.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/folders/{id}/contents", tag = "storage",
    params(FolderPath, Paging),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
pub(super) async fn folder_contents(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FolderPath>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = paging.resolve()?;
    let (a, path) = p.resolve(&state, &caller).await?;
    stat_folder(&a, &path, "folder").await?;
    let (entries, _) = a.connector.list(&path).await?;
    Ok(Json(entries_page(&state.ids, &a, &entries, page, size)))
}

/// Rename (`name`) or move (`parent_id`) a folder.
#[utoipa::path(patch, path = "/v1/accounts/{acc}/storage/folders/{id}", tag = "storage",
    params(FolderPath),
    request_body = ObjectChanges,
    responses((status = 200, body = StorageObject), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn patch_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FolderPath>,
    ApiJson(body): ApiJson<ObjectChanges>,
) -> ApiResult<Json<StorageObject>> {
    let (a, path) = p.resolve(&state, &caller).await?;
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
    stat_folder(&a, &path, "folder").await?;
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
            &a,
            &a.connector.stat(&path).await?,
        )));
    }
    let e = a
        .connector
        .rename(&path, &target, EntryKind::Folder)
        .await?;
    record_moved(&state, a.id(), &path, &e).await;
    Ok(Json(object(&state.ids, &a, &e)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteFolderOptions {
    /// Delete a non-empty folder with everything in it.
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    recursive: Option<bool>,
}

/// Delete a folder (`recursive=true` for a non-empty one).
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/folders/{id}", tag = "storage",
    params(FolderPath, DeleteFolderOptions),
    responses((status = 204, description = "Deleted"), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn delete_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FolderPath>,
    ApiQuery(opts): ApiQuery<DeleteFolderOptions>,
) -> ApiResult<StatusCode> {
    let (a, path) = p.resolve(&state, &caller).await?;
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
    params(FolderPath),
    request_body = CopyTarget,
    responses((status = 201, body = StorageObject), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn copy_folder(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FolderPath>,
    ApiJson(body): ApiJson<CopyTarget>,
) -> ApiResult<(StatusCode, Json<StorageObject>)> {
    let (a, path) = p.resolve(&state, &caller).await?;
    if path.is_root() && body.name.is_none() {
        return Err(ApiError::bad_request(
            "copying the root folder needs a `name`",
        ));
    }
    stat_folder(&a, &path, "folder").await?;
    let dst = target_account(&state, &caller, &a, body.account.as_ref()).await?;
    let src_name = if path.is_root() { "root" } else { path.name() };
    let parent = match body.parent_id.as_deref() {
        Some(p) => folder_path(&state, &dst, p)?,
        None if Arc::ptr_eq(&a, &dst) => path.parent().unwrap_or_else(StoragePath::root),
        None => StoragePath::root(),
    };
    let target = parent.join(body.name.as_deref().unwrap_or(src_name))?;
    stat_folder(&dst, &parent, "parent folder").await?;
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
    Ok((StatusCode::CREATED, Json(object(&state.ids, &dst, &e))))
}
