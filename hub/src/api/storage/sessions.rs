//! Upload sessions (`storage/multipart`, the Kloudless multipart upload): open, which parts
//! arrived, send a part, complete, abort. The work is in [`crate::sessions`]; the shapes are
//! what the Kloudless SDKs read (a numeric `id`, no `type`, a part answered 200 with JSON).

use super::direct::{direct_url, Direct};
use super::{change, object, stat_folder, AccountPath};
use crate::api::{ApiJson, ApiPath, ApiQuery, CommonErrors};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind};
use crate::model::{rfc3339, StorageObject};
use crate::sessions;
use crate::state::{Account, AppState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shared::storage::{EntryKind, StoragePath};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Opening a session.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewSession {
    /// The folder the file goes to (`root` or a folder id).
    parent_id: String,
    name: String,
    /// The file's size in bytes, when known: parts are then checked against it.
    #[serde(default)]
    size: Option<u64>,
}

/// `overwrite` of a session.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SessionOptions {
    /// Replace a file of the same name; when false (the default) the file takes the next free
    /// name (`name (1).ext`).
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    overwrite: Option<bool>,
}

/// `part_number` of a part.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PartQuery {
    /// 1-based; at most 10,000.
    #[param(minimum = 1, maximum = 10000)]
    part_number: Option<u64>,
}

/// `{acc}` and `{id}` of a session route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct SessionPath {
    /// Account id or `me`.
    #[param(pattern = r"^([0-9]{1,18}|me)$")]
    acc: String,
    /// Session id.
    id: i64,
}

impl SessionPath {
    async fn resolve(&self, state: &AppState, caller: &Caller) -> ApiResult<Arc<Account>> {
        AccountPath {
            acc: self.acc.clone(),
        }
        .resolve(state, caller)
        .await
    }
}

/// An upload session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionView {
    id: i64,
    account: i64,
    parent_id: String,
    /// The file's name (without overwrite on object stores: the free name reserved for it).
    name: String,
    size: Option<i64>,
    /// Every part but the last has exactly this many bytes.
    part_size: i64,
    /// Parts may be sent in any order and at once.
    parallel_uploads: bool,
    expires: String,
    /// The numbers of the parts received so far (resume from here).
    parts_received: Vec<i64>,
}

/// The session as the API shows it (also what a spoke answers for a part it took).
pub(crate) async fn session_view(
    state: &AppState,
    s: &crate::db::SessionRecord,
) -> ApiResult<SessionView> {
    view(state, s).await
}

async fn view(state: &AppState, s: &crate::db::SessionRecord) -> ApiResult<SessionView> {
    let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
    let parent = path.parent().unwrap_or_else(StoragePath::root);
    let parts = state.db.session_parts(s.id).await?;
    Ok(SessionView {
        id: s.id,
        account: s.account_id,
        parent_id: state.ids.encode(s.account_id, EntryKind::Folder, &parent),
        name: path.name().to_owned(),
        size: s.size,
        part_size: s.part_size,
        parallel_uploads: true,
        expires: rfc3339(s.expires_ms),
        parts_received: parts.iter().map(|p| p.number).collect(),
    })
}

/// Open an upload session: send the file in parts (`PUT …/multipart/{id}?part_number=N`),
/// then complete it. Sessions live in the database and at the provider: any hub takes any
/// part, and a restart loses nothing.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/multipart", tag = "storage",
    params(AccountPath, SessionOptions),
    request_body = NewSession,
    responses((status = 201, body = SessionView), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn create_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(opts): ApiQuery<SessionOptions>,
    ApiJson(body): ApiJson<NewSession>,
) -> ApiResult<(StatusCode, Json<SessionView>)> {
    let a = p.resolve(&state, &caller).await?;
    let parent = super::folder_path(&state, &a, &body.parent_id)?;
    stat_folder(&a, &parent, "parent folder").await?;
    let s = sessions::create(
        &state,
        &a,
        &parent,
        &body.name,
        opts.overwrite == Some(true),
        body.size,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&state, &s).await?)))
}

/// Retrieve an upload session, with the parts received so far.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/multipart/{id}", tag = "storage",
    params(SessionPath),
    responses((status = 200, body = SessionView), CommonErrors))]
pub(super) async fn get_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SessionPath>,
) -> ApiResult<Json<SessionView>> {
    let a = p.resolve(&state, &caller).await?;
    let s = sessions::open_session(&state, &a, p.id).await?;
    Ok(Json(view(&state, &s).await?))
}

/// Send part `part_number` (raw bytes; `Content-Length` required, `Content-MD5` checked when
/// sent). A part sent again replaces the earlier one. Answers 200 with the session. Parts of
/// sessions at or above `offload.threshold` are redirected (307) to a spoke near the storage:
/// repeat the request there (with its `Content-MD5`); it answers the same.
#[utoipa::path(put, path = "/v1/accounts/{acc}/storage/multipart/{id}", tag = "storage",
    params(SessionPath, PartQuery,
           ("Content-MD5" = Option<String>, Header, description = "Base64 MD5 of the part: a part that does not match is not kept")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = SessionView),
              (status = 307, description = "A large session's part: send it to the spoke at `Location`"),
              (status = 411, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn put_part(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SessionPath>,
    ApiQuery(q): ApiQuery<PartQuery>,
    req: Request,
) -> ApiResult<Response> {
    // Read from the headers first: the request itself is not held across the awaits below.
    let headers = (content_length(req.headers()), content_md5(req.headers()));
    let checked = async {
        let n = q
            .part_number
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad_request("`part_number` must be between 1 and 10000"))?;
        let len = headers.0?;
        let md5 = headers.1?;
        let a = p.resolve(&state, &caller).await?;
        let s = sessions::open_session(&state, &a, p.id).await?;
        sessions::check_part(&state, &s, n, len)?;
        Ok::<_, ApiError>((n, len, md5, a, s))
    }
    .await;
    let (n, len, md5, a, s) = match checked {
        Ok(c) => c,
        Err(e) => {
            // Refused before reading: a part of a sensible size is read and dropped first, so
            // the client (still sending) gets this answer, not a broken connection.
            super::drain(req).await;
            return Err(e);
        }
    };
    // A large session's bytes stay off the hubs: the part goes to a spoke near the storage,
    // which writes it and has it recorded before it answers.
    if s.size
        .is_some_and(|z| z as u64 >= state.config.offload.threshold)
    {
        if let Some(url) = redirect_part(&state, &a, &s, n, len).await? {
            super::drain_unless_continue(req).await;
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = header::HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
    }
    let body = req.into_body().into_data_stream();
    sessions::put_part(&state, &a, &s, n, len, md5, body).await?;
    Ok(Json(view(&state, &s).await?).into_response())
}

/// A signed URL on a data spoke for part `n` (`len` bytes) of `s`, or `None` when no data
/// spoke is healthy (the hub takes the part itself).
async fn redirect_part(
    state: &AppState,
    a: &Account,
    s: &crate::db::SessionRecord,
    n: u64,
    len: u64,
) -> ApiResult<Option<String>> {
    let path = StoragePath::parse(&s.path).map_err(ApiError::internal)?;
    let target = sessions::part_target(state, a, s, n).await?;
    let direct = Direct::Part {
        len,
        target: target.clone(),
    };
    let ttl = 600.min(((s.expires_ms - crate::state::now_ms()) / 1000).max(1) as u64);
    match direct_url(state, a, &path, direct, ttl).await? {
        Some((url, _)) => Ok(Some(url)),
        None => {
            sessions::release_part(state, a, &target).await?;
            Ok(None)
        }
    }
}

fn content_length(h: &HeaderMap) -> ApiResult<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "a part needs a Content-Length",
            )
        })
}

fn content_md5(h: &HeaderMap) -> ApiResult<Option<[u8; 16]>> {
    let Some(v) = h.get("content-md5") else {
        return Ok(None);
    };
    shared::storage::checked::content_md5(v.as_bytes())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Content-MD5 must be the base64 of 16 bytes"))
}

/// Complete an upload session: the file appears in the account. Any body (none, `{}`) is
/// accepted, as the SDKs differ.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/multipart/{id}/complete", tag = "storage",
    params(SessionPath),
    responses((status = 200, body = StorageObject), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn complete_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SessionPath>,
) -> ApiResult<Json<StorageObject>> {
    let a = p.resolve(&state, &caller).await?;
    let s = sessions::open_session(&state, &a, p.id).await?;
    let (e, replaced) = sessions::complete(&state, &a, &s).await?;
    let k = if replaced { kind::UPDATE } else { kind::ADD };
    events::record(&state, change(a.id(), k, "upload", &e)).await;
    Ok(Json(object(&state.ids, &a, &e)))
}

/// Abort an upload session: the parts received are deleted.
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/multipart/{id}", tag = "storage",
    params(SessionPath),
    responses((status = 204, description = "Aborted"), (status = 409, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn abort_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SessionPath>,
) -> ApiResult<StatusCode> {
    let a = p.resolve(&state, &caller).await?;
    let s = sessions::open_session(&state, &a, p.id).await?;
    sessions::abort(&state, &a, &s).await?;
    Ok(StatusCode::NO_CONTENT)
}
