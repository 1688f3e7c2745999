//! The storage API, by resource: folders, files (metadata, replace, move, delete, copy),
//! uploads, downloads, client-direct URLs through spokes, search and recent. This module
//! holds the plumbing every handler shares: the account a request names, ids to paths, the
//! API's object, and the events a change records.

mod direct;
mod download;
mod files;
mod folders;
mod from_url;
mod links;
pub(crate) mod raw_data;
mod search;
mod sessions;
mod upload;

pub(crate) use files::transferred_object;
pub(crate) use sessions::session_view;
pub(crate) use upload::{publish_for, upload_error, write_upload};

use super::{page_of, Paging};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind, Change};
use crate::ids::IdCodec;
use crate::model::{rfc3339, AccountRefBody, FolderRef, ObjectList, StorageObject};
use crate::state::{Account, AppState};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::Deserialize;
use shared::storage::{numbered, Entry, EntryKind, StorageError, StoragePath};
use std::sync::Arc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(folders::create_folder))
        .routes(routes!(
            folders::get_folder,
            folders::patch_folder,
            folders::delete_folder
        ))
        .routes(routes!(folders::folder_contents))
        .routes(routes!(folders::copy_folder))
        .routes(routes!(upload::upload_file))
        .routes(routes!(direct::upload_url))
        .routes(routes!(
            files::get_file,
            files::replace_file,
            files::patch_file,
            files::delete_file
        ))
        .routes(routes!(download::download_file))
        .routes(routes!(files::copy_file))
        .routes(routes!(search::search))
        .routes(routes!(search::recent))
        .routes(routes!(sessions::create_session))
        .routes(routes!(
            sessions::get_session,
            sessions::put_part,
            sessions::abort_session
        ))
        .routes(routes!(sessions::complete_session))
        .routes(routes!(links::create_link, links::list_links))
        .routes(routes!(
            links::get_link,
            links::patch_link,
            links::delete_link
        ))
        .routes(routes!(links::open_link, links::unlock_link))
}

/// `{acc}` of a storage route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct AccountPath {
    /// Account id or `me`.
    #[param(pattern = r"^([0-9]{1,18}|me)$")]
    pub(super) acc: String,
}

impl AccountPath {
    /// The account, if this caller may reach it and it is active.
    pub(super) async fn resolve(
        &self,
        state: &AppState,
        caller: &Caller,
    ) -> ApiResult<Arc<Account>> {
        account(state, caller, &self.acc).await
    }
}

/// `{acc}` and `{id}` of a file route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct FilePath {
    /// Account id or `me`.
    #[param(pattern = r"^([0-9]{1,18}|me)$")]
    acc: String,
    /// File id.
    #[param(pattern = r"^F[A-Za-z0-9_-]+$")]
    id: String,
}

impl FilePath {
    /// The account and the path the file id names (the file need not exist).
    pub(super) async fn resolve(
        &self,
        state: &AppState,
        caller: &Caller,
    ) -> ApiResult<(Arc<Account>, StoragePath)> {
        let a = account(state, caller, &self.acc).await?;
        let path = file_path(state, &a, &self.id)?;
        Ok((a, path))
    }
}

/// `{acc}` and `{id}` of a folder route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct FolderPath {
    /// Account id or `me`.
    #[param(pattern = r"^([0-9]{1,18}|me)$")]
    acc: String,
    /// Folder id, or `root` for the account's top folder.
    #[param(pattern = r"^(root|D[A-Za-z0-9_-]+)$")]
    id: String,
}

impl FolderPath {
    /// The account and the path the folder id names (the folder need not exist).
    pub(super) async fn resolve(
        &self,
        state: &AppState,
        caller: &Caller,
    ) -> ApiResult<(Arc<Account>, StoragePath)> {
        let a = account(state, caller, &self.acc).await?;
        let path = folder_path(state, &a, &self.id)?;
        Ok((a, path))
    }
}

/// The file at `path`; 404 naming a file when there is none (or a folder is there).
pub(super) async fn stat_file(a: &Account, path: &StoragePath) -> ApiResult<Entry> {
    a.connector
        .stat_file(path)
        .await
        .map_err(not_found_as("file"))
}

/// The folder at `path`; 404 naming `what` ("folder", "parent folder") when there is none.
pub(super) async fn stat_folder(
    a: &Account,
    path: &StoragePath,
    what: &'static str,
) -> ApiResult<Entry> {
    a.connector
        .stat_folder(path)
        .await
        .map_err(not_found_as(what))
}

/// Whether upload sessions (`storage/multipart`) are served (on every service).
pub(crate) const SESSIONS_SUPPORTED: bool = true;

/// Auto-rename tries for `overwrite=false` before giving up.
pub(crate) const MAX_RENAME_TRIES: u32 = 1000;

/// Renders an entry of account `a` as the API's object, with the provider's own metadata
/// (`raw`) when the request asked for it (`X-Kloudless-Raw-Data: true`).
pub(crate) fn object(ids: &IdCodec, a: &Account, e: &Entry) -> StorageObject {
    let mut o = object_of(ids, a.id(), e);
    if raw_data::requested() {
        o.raw = Some(raw_data::raw(&a.settings, e));
    }
    o
}

/// Renders an entry as the API's object, without `raw` (the event feed's metadata).
pub(crate) fn object_of(ids: &IdCodec, account: i64, e: &Entry) -> StorageObject {
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
        raw: None,
    }
}

/// One page of `entries` as API objects.
fn entries_page(
    ids: &IdCodec,
    account: &Account,
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
pub(crate) async fn account(
    state: &AppState,
    caller: &Caller,
    acc: &str,
) -> ApiResult<Arc<Account>> {
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

/// `name (1).ext`, `name (2).ext`, ...: the first name not taken in `parent`.
/// This only looks: where the name must be held (a spoke's upload grant), the write itself
/// must still refuse to replace.
/// `X-Kloudless-Async: true` (or `1`): the client wants a task to poll, not the result.
fn async_requested(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-kloudless-async")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
}

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

/// `Content-Disposition` of a download of the file `name` (RFC 6266, UTF-8).
fn attachment(name: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename*=UTF-8''{encoded}")
}

fn insert(r: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Most bytes of an unread request body (a refused or redirected part) read and dropped
/// before answering.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads and drops an unread request's body when it is at most [`DRAIN_LIMIT`] bytes and
/// arrives within a few seconds; a larger or slower one is cut (the connection closes).
pub(super) async fn drain(req: axum::extract::Request) {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none_or(|n| n > DRAIN_LIMIT) {
        return;
    }
    let mut body = req.into_body().into_data_stream();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use futures::StreamExt;
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
}

/// Before a redirect: a client that sent `Expect: 100-continue` has not sent the body (and
/// never will here); any other is sending it now, so read and drop it (within
/// [`DRAIN_LIMIT`]) and the client reads the redirect rather than a broken pipe.
pub(super) async fn drain_unless_continue(req: axum::extract::Request) {
    let waits = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if !waits {
        drain(req).await;
    }
}
