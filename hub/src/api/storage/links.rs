//! Sharing links (`storage/links`): a URL that serves one file without any key. A `direct`
//! link streams the file (a large one by redirect to a spoke near the storage); otherwise a
//! small page with a download button. A link with a password asks for it first (kept as a
//! scrypt hash; failed attempts are limited per link). Expired and inactive links answer 404.
//! A browser (`Accept: text/html`) gets its errors as pages too (404, 429 with `Retry-After`),
//! API clients the JSON error.
//!
//! The URL is `{public_url}/v1/links/{id}.{tag}`: the tag is an HMAC of the link's id and nonce
//! under a key derived from the master key, checked in constant time, so the URL cannot be
//! guessed from the id and is never stored.

use super::direct::{direct_url, Direct};
use super::{attachment, mime_type, stat_file, AccountPath};
use crate::api::{page_of, ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::db::{LinkChanges, LinkRecord};
use crate::error::{ApiError, ApiResult};
use crate::model::{rfc3339, ObjectList};
use crate::state::{now_ms, Account, AppState};
use axum::body::Body;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shared::storage::{EntryKind, StoragePath};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Failed passwords a link takes per window before it answers 429.
const MAX_FAILURES: i64 = 5;
/// The window failed passwords are counted in.
const FAILURE_WINDOW_MS: i64 = 15 * 60 * 1000;
/// scrypt cost: 2^14 rounds of 8 × 128 bytes (16 MiB, tens of ms).
const SCRYPT_LOG_N: u8 = 14;
/// Password checks at once (each holds 16 MiB): bounds memory under a flood of attempts.
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A link to create.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct NewLink {
    file_id: String,
    /// Serve the bytes at the URL (default false: a page with a download button).
    #[serde(default, alias = "direct_link")]
    direct: Option<bool>,
    #[serde(default)]
    password: Option<String>,
    /// ISO 8601; without a zone it is UTC.
    #[serde(default)]
    expiration: Option<String>,
    #[serde(default)]
    active: Option<bool>,
}

/// Changes to a link; unknown keys (the node SDK sends its arguments too) are ignored. A
/// `null` password or expiration removes it.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct LinkPatch {
    #[serde(default)]
    active: Option<bool>,
    #[serde(default, alias = "direct_link")]
    direct: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    password: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    expiration: Option<Option<String>>,
}

/// `Some(None)` for an explicit `null`, `None` when the key is absent (with `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A link.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LinkView {
    id: i64,
    /// Works without any key.
    url: String,
    file_id: String,
    account: i64,
    direct: bool,
    active: bool,
    expiration: Option<String>,
    /// Whether a password protects it.
    password: bool,
    created: String,
    modified: String,
}

/// `{acc}` and `{id}` of a link route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct LinkPath {
    /// Account id or `me`.
    #[param(pattern = r"^([0-9]{1,18}|me)$")]
    acc: String,
    /// Link id.
    id: i64,
}

/// Paging and the `active` filter of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LinkListQuery {
    #[serde(default)]
    page: Option<u32>,
    #[serde(default)]
    page_size: Option<u32>,
    /// Only active (or only inactive) links.
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    active: Option<bool>,
}

fn tag(state: &AppState, l: &LinkRecord) -> String {
    let t = state
        .links
        .tag(&[b"link", &l.id.to_be_bytes(), l.nonce.as_bytes()]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&t[..18])
}

/// Where links are served: `public_url`, else the host the request came to.
fn base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.config.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn view(state: &AppState, base: &str, l: &LinkRecord) -> ApiResult<LinkView> {
    let path = StoragePath::parse(&l.path).map_err(ApiError::internal)?;
    Ok(LinkView {
        id: l.id,
        url: format!("{base}/v1/links/{}.{}", l.id, tag(state, l)),
        file_id: state.ids.encode(l.account_id, EntryKind::File, &path),
        account: l.account_id,
        direct: l.direct,
        active: l.active,
        expiration: l.expires_ms.map(rfc3339),
        password: l.password_hash.is_some(),
        created: rfc3339(l.created_ms),
        modified: rfc3339(l.modified_ms),
    })
}

/// An ISO 8601 time as milliseconds; naive times are UTC (`2017-08-11T12:00:00.123456`).
fn expiration_ms(s: &str) -> ApiResult<i64> {
    let s = s.trim();
    let parsed = s
        .parse::<jiff::Timestamp>()
        .or_else(|_| {
            s.parse::<jiff::civil::DateTime>()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
                .map(|z| z.timestamp())
        })
        .map_err(|_| {
            ApiError::bad_request(format!("`expiration` must be an ISO 8601 time (got {s:?})"))
        })?;
    Ok(parsed.as_millisecond())
}

fn hash_password(p: &str) -> ApiResult<String> {
    if p.is_empty() || p.len() > 1024 {
        return Err(ApiError::bad_request(
            "`password` must be 1 to 1024 characters",
        ));
    }
    let salt: [u8; 16] = rand::random();
    let out = scrypt_hash(p.as_bytes(), &salt)?;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    Ok(format!(
        "$scrypt$ln={SCRYPT_LOG_N},r=8,p=1${}${}",
        b64.encode(salt),
        b64.encode(out)
    ))
}

fn scrypt_hash(p: &[u8], salt: &[u8]) -> ApiResult<[u8; 32]> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32).map_err(ApiError::internal)?;
    let mut out = [0u8; 32];
    scrypt::scrypt(p, salt, &params, &mut out).map_err(ApiError::internal)?;
    Ok(out)
}

/// Whether `p` is the password `phc` was made from (in constant time, off the async threads,
/// at most [`CHECKS`] at once).
async fn password_matches(phc: &str, p: &str) -> ApiResult<bool> {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut parts = phc.split('$').skip(3);
    let (Some(salt), Some(want)) = (parts.next(), parts.next()) else {
        return Err(ApiError::internal("a stored link password is malformed"));
    };
    let salt = b64.decode(salt).map_err(ApiError::internal)?;
    let want = b64.decode(want).map_err(ApiError::internal)?;
    let _permit = CHECKS.acquire().await.map_err(ApiError::internal)?;
    let p = p.as_bytes().to_vec();
    let got = tokio::task::spawn_blocking(move || scrypt_hash(&p, &salt))
        .await
        .map_err(ApiError::internal)??;
    Ok(shared::auth::ct_eq(&got, &want))
}

/// Create a link to a file.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/links", tag = "storage",
    params(AccountPath), request_body = NewLink,
    responses((status = 201, body = LinkView), CommonErrors))]
pub(super) async fn create_link(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewLink>,
) -> ApiResult<(StatusCode, Json<LinkView>)> {
    let a = p.resolve(&state, &caller).await?;
    let path = super::file_path(&state, &a, &body.file_id)?;
    stat_file(&a, &path).await?;
    let password = body.password.as_deref().map(hash_password).transpose()?;
    let expires = body.expiration.as_deref().map(expiration_ms).transpose()?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let l = state
        .db
        .create_link(
            a.record.app_id,
            a.id(),
            path.as_str(),
            &nonce,
            body.direct.unwrap_or(false),
            body.active.unwrap_or(true),
            password.as_deref(),
            expires,
            now_ms(),
        )
        .await?;
    let base = base(&state, &headers);
    Ok((StatusCode::CREATED, Json(view(&state, &base, &l)?)))
}

/// List an account's links (`active` filters).
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/links", tag = "storage",
    params(AccountPath, LinkListQuery),
    responses((status = 200, body = ObjectList<LinkView>), CommonErrors))]
pub(super) async fn list_links(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(q): ApiQuery<LinkListQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<ObjectList<LinkView>>> {
    let (page, size) = Paging {
        page: q.page,
        page_size: q.page_size,
    }
    .resolve()?;
    let a = p.resolve(&state, &caller).await?;
    let (rows, total) = state
        .db
        .links(
            a.id(),
            q.active,
            Paging::offset(page, size) as i64,
            i64::from(size),
        )
        .await?;
    let base = base(&state, &headers);
    let objects = rows
        .iter()
        .map(|l| view(&state, &base, l))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page_of(
        objects,
        page,
        size,
        total as usize,
        "storage",
    )))
}

async fn owned(
    state: &AppState,
    caller: &Caller,
    p: &LinkPath,
) -> ApiResult<(Arc<Account>, LinkRecord)> {
    let a = AccountPath { acc: p.acc.clone() }
        .resolve(state, caller)
        .await?;
    let l = state
        .db
        .link(p.id, Some(a.id()))
        .await?
        .ok_or_else(|| ApiError::not_found("link"))?;
    Ok((a, l))
}

/// Retrieve a link.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/links/{id}", tag = "storage",
    params(LinkPath), responses((status = 200, body = LinkView), CommonErrors))]
pub(super) async fn get_link(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<LinkPath>,
    headers: HeaderMap,
) -> ApiResult<Json<LinkView>> {
    let (_, l) = owned(&state, &caller, &p).await?;
    Ok(Json(view(&state, &base(&state, &headers), &l)?))
}

/// Change a link: `active`, `direct`, `password`, `expiration` (`null` removes the last two).
#[utoipa::path(patch, path = "/v1/accounts/{acc}/storage/links/{id}", tag = "storage",
    params(LinkPath), request_body = LinkPatch,
    responses((status = 200, body = LinkView), CommonErrors))]
pub(super) async fn patch_link(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<LinkPath>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LinkPatch>,
) -> ApiResult<Json<LinkView>> {
    let (a, _) = owned(&state, &caller, &p).await?;
    let changes = LinkChanges {
        active: body.active,
        direct: body.direct,
        password_hash: match body.password {
            None => None,
            Some(None) => Some(None),
            Some(Some(pw)) => Some(Some(hash_password(&pw)?)),
        },
        expires_ms: match body.expiration {
            None => None,
            Some(None) => Some(None),
            Some(Some(e)) => Some(Some(expiration_ms(&e)?)),
        },
    };
    let l = state
        .db
        .update_link(p.id, a.id(), &changes, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("link"))?;
    Ok(Json(view(&state, &base(&state, &headers), &l)?))
}

/// Delete a link: its URL stops working.
#[utoipa::path(delete, path = "/v1/accounts/{acc}/storage/links/{id}", tag = "storage",
    params(LinkPath), responses((status = 204, description = "Deleted"), CommonErrors))]
pub(super) async fn delete_link(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<LinkPath>,
) -> ApiResult<StatusCode> {
    let (a, _) = owned(&state, &caller, &p).await?;
    if !state.db.delete_link(p.id, a.id()).await? {
        return Err(ApiError::not_found("link"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `{token}` of a link's URL.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TokenPath {
    /// `<id>.<tag>` as the link's `url` has it.
    #[param(pattern = r"^[0-9]{1,18}\.[A-Za-z0-9_-]{24}$")]
    token: String,
}

/// `?download=1` on a page link's button.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OpenQuery {
    /// Send the file rather than the page.
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    download: Option<bool>,
}

/// The password form's field.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct PasswordForm {
    password: String,
}

/// The live link a token names, or 404 (unknown, wrong tag, inactive, expired).
async fn live(state: &AppState, token: &str) -> ApiResult<LinkRecord> {
    let gone = || ApiError::not_found("link");
    let (id, given) = token.split_once('.').ok_or_else(gone)?;
    let id: i64 = id.parse().map_err(|_| gone())?;
    let l = state.db.link(id, None).await?.ok_or_else(gone)?;
    if !shared::auth::ct_eq(tag(state, &l).as_bytes(), given.as_bytes())
        || !l.active
        || l.expires_ms.is_some_and(|e| e <= now_ms())
    {
        return Err(gone());
    }
    Ok(l)
}

/// Open a link (no key): the file, a page with a download button, or a password form.
#[utoipa::path(get, path = "/v1/links/{token}", tag = "storage", security(()),
    params(TokenPath, OpenQuery),
    responses((status = 200, description = "The file, or a page"), (status = 307, description = "Large file: at a spoke"),
              (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(super) async fn open_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(p): ApiPath<TokenPath>,
    ApiQuery(q): ApiQuery<OpenQuery>,
) -> ApiResult<Response> {
    for_browser(&headers, open(&state, &p, &q).await)
}

async fn open(state: &AppState, p: &TokenPath, q: &OpenQuery) -> ApiResult<Response> {
    let l = live(state, &p.token).await?;
    if l.password_hash.is_some() {
        return page(state, &l, PageKind::Password(None)).await;
    }
    if l.direct || q.download == Some(true) {
        return send_file(state, &l).await;
    }
    page(state, &l, PageKind::Download).await
}

/// Send a link's password (the form's POST): the file when it is right.
#[utoipa::path(post, path = "/v1/links/{token}", tag = "storage", security(()),
    params(TokenPath), request_body(content = PasswordForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The file"), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "Wrong password: the form again"),
              (status = 429, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(super) async fn unlock_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(p): ApiPath<TokenPath>,
    form: Result<Form<PasswordForm>, axum::extract::rejection::FormRejection>,
) -> ApiResult<Response> {
    for_browser(&headers, unlock(&state, &p, form).await)
}

async fn unlock(
    state: &AppState,
    p: &TokenPath,
    form: Result<Form<PasswordForm>, axum::extract::rejection::FormRejection>,
) -> ApiResult<Response> {
    let Ok(Form(form)) = form else {
        return Err(ApiError::bad_request(
            "the body must be a form (application/x-www-form-urlencoded) with a `password`",
        ));
    };
    let l = live(state, &p.token).await?;
    let Some(phc) = &l.password_hash else {
        return send_file(state, &l).await;
    };
    // The attempt is counted before the password is checked (one UPDATE), so a burst of
    // concurrent guesses cannot all pass the limit; a right password gives its count back.
    let now = now_ms();
    let (count, since) = state
        .db
        .link_failed_attempt(l.id, now, FAILURE_WINDOW_MS)
        .await?;
    if count > MAX_FAILURES {
        return Err(locked(since + FAILURE_WINDOW_MS - now));
    }
    if password_matches(phc, &form.password).await? {
        state.db.link_release_attempt(l.id).await?;
        return send_file(state, &l).await;
    }
    let mut r = page(state, &l, PageKind::Password(Some(count))).await?;
    *r.status_mut() = StatusCode::FORBIDDEN;
    Ok(r)
}

/// Whether the request asks for a page (a browser's navigation sends `Accept: text/html`;
/// API clients and SDKs do not).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            let m = m.split(';').next().unwrap_or("").trim();
            m.eq_ignore_ascii_case("text/html") || m.eq_ignore_ascii_case("application/xhtml+xml")
        })
}

/// People open links in browsers: an error answers a browser with a page (same status, same
/// `Retry-After`), anyone else with the API's JSON error. The page says as little as the JSON:
/// an expired, turned-off, deleted or unknown link all read alike.
fn for_browser(headers: &HeaderMap, r: ApiResult<Response>) -> ApiResult<Response> {
    let e = match r {
        Err(e) if wants_html(headers) => e,
        r => return r,
    };
    let status = e.status();
    let (title, text) = match status {
        StatusCode::NOT_FOUND => (
            "Link not found",
            "This link does not work: it may have expired or been turned off, or the file is \
             no longer there. Ask whoever shared it for a new one.",
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            "Try again later",
            "Too many wrong passwords were entered for this link. Try again later.",
        ),
        s if s.is_server_error() => (
            "Not available",
            "The file cannot be served right now. Try again in a moment.",
        ),
        _ => ("Not available", e.message()),
    };
    let mut page = crate::pages::page(
        status,
        title,
        &format!(
            "<h1>{}</h1>\n<p class=\"error\" role=\"alert\">{}</p>",
            crate::pages::escape(title),
            crate::pages::escape(text)
        ),
        &[],
    );
    let json = e.into_response();
    if let Some(v) = json.headers().get(header::RETRY_AFTER) {
        page.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    Ok(page)
}

fn locked(ms: i64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "too many wrong passwords for this link; try again later",
    )
    .with_retry_after((ms.max(1000) / 1000) as u64)
}

/// The file behind a link: streamed, or (large, with a data spoke) a redirect to a spoke.
async fn send_file(state: &AppState, l: &LinkRecord) -> ApiResult<Response> {
    let a = state.account(l.app_id, l.account_id).await?;
    let path = StoragePath::parse(&l.path).map_err(ApiError::internal)?;
    let e = stat_file(&a, &path).await?;
    if e.size >= state.config.offload.threshold {
        if let Some((url, _)) = direct_url(state, &a, &path, Direct::Download, 600).await? {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
    }
    let stream = if e.size == 0 {
        futures::stream::empty().boxed()
    } else {
        a.connector.read(&path, None).await?.boxed()
    };
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_TYPE, mime_type(&e)),
        (header::CONTENT_LENGTH, e.size.to_string()),
        (header::CONTENT_DISPOSITION, attachment(e.path.name())),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(r)
}

enum PageKind {
    Download,
    /// The form; `Some(n)` after the n-th wrong password.
    Password(Option<i64>),
}

/// The small HTML page of a link: the file's name and size with a download button, or the
/// password form. Names are escaped; the page loads nothing else.
async fn page(state: &AppState, l: &LinkRecord, kind: PageKind) -> ApiResult<Response> {
    let a = state.account(l.app_id, l.account_id).await?;
    let path = StoragePath::parse(&l.path).map_err(ApiError::internal)?;
    let e = stat_file(&a, &path).await?;
    let name = crate::pages::escape(e.path.name());
    let token = format!("{}.{}", l.id, tag(state, l));
    let body = match kind {
        PageKind::Download => format!(
            "<p class=\"file\">{name} ({} bytes)</p>\n\
             <p><a class=\"button\" href=\"{token}?download=1\" download>Download</a></p>",
            e.size
        ),
        // A wrong password: the error is announced and tied to the field.
        PageKind::Password(wrong) => format!(
            "<p class=\"file\">{name} is protected by a password.</p>\n{}\
             <form method=\"post\" action=\"{token}\">\n\
             <label for=\"id_password\">Password</label>\n\
             <input type=\"password\" name=\"password\" id=\"id_password\" autofocus \
             required{}>\n\
             <button type=\"submit\" name=\"form-submit\">Download</button>\n</form>",
            if wrong.is_some() {
                "<p class=\"error\" id=\"password-error\" role=\"alert\">The password entered \
                 is incorrect.</p>\n"
            } else {
                ""
            },
            if wrong.is_some() {
                " aria-invalid=\"true\" aria-describedby=\"password-error\""
            } else {
                ""
            }
        ),
    };
    Ok(crate::pages::page(
        StatusCode::OK,
        e.path.name(),
        &body,
        &[],
    ))
}
