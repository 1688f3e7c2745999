//! The Meta (management) API: applications and their API keys. Needs a meta bearer token.

use super::{page_of, ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::MetaCaller;
use crate::error::{ApiError, ApiResult};
use crate::model::{
    rfc3339, ApiKeyView, ApplicationChanges, ApplicationView, NewApplication, ObjectList,
};
use crate::state::{now_ms, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use secrecy::ExposeSecret;
use shared::auth::{generate_token, hash_token};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, patch_app, delete_app))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(delete_key))
}

pub(crate) fn app_view(a: crate::db::Application) -> ApplicationView {
    ApplicationView {
        id: a.id,
        name: a.name,
        description: a.description,
        active: a.active,
        collect_events: a.collect_events,
        redirect_uris: a.redirect_uris,
        trusted_domains: a.trusted_domains,
        implicit_grant_enabled: a.implicit_grant_enabled,
        created: rfc3339(a.created_ms),
        modified: rfc3339(a.modified_ms),
    }
}

pub(crate) fn key_view(k: crate::db::ApiKeyRecord, key: Option<String>) -> ApiKeyView {
    ApiKeyView {
        id: k.id,
        key,
        key_hint: k.hint,
        created: rfc3339(k.created_ms),
    }
}

/// Bidirectional-formatting characters (embeddings, overrides, isolates, marks): they reorder
/// how the text around them is shown.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Application names are shown to operators (`hub apps list`, dashboards): 1 to 200
/// characters, none of them a control or bidirectional-formatting character.
pub(crate) fn validate_app_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("`name` must be 1 to 200 characters"));
    }
    if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(ApiError::bad_request(
            "`name` must not contain control characters (such as ESC or newlines) or \
             bidirectional-formatting characters",
        ));
    }
    Ok(())
}

/// List applications.
#[utoipa::path(get, path = "/v1/meta/applications", tag = "meta", params(Paging),
    responses((status = 200, body = ObjectList<ApplicationView>), CommonErrors))]
async fn list_apps(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<ApplicationView>>> {
    let (page, size) = paging.resolve()?;
    let (apps, total) = state
        .db
        .list_apps(Paging::offset(page, size) as i64, i64::from(size))
        .await?;
    let objects = apps.into_iter().map(app_view).collect();
    Ok(Json(page_of(objects, page, size, total as usize, "meta")))
}

/// Create an application.
#[utoipa::path(post, path = "/v1/meta/applications", tag = "meta", request_body = NewApplication,
    responses((status = 201, body = ApplicationView), CommonErrors))]
async fn create_app(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewApplication>,
) -> ApiResult<(StatusCode, Json<ApplicationView>)> {
    validate_app_name(&body.name)?;
    crate::api::oauth::validate_settings(&body.oauth)?;
    let mut app = state
        .db
        .create_app(
            &body.name,
            body.description.as_deref().unwrap_or(""),
            body.collect_events.unwrap_or(false),
            now_ms(),
        )
        .await?;
    if let Some(a) = state
        .db
        .set_app_oauth(app.id, &body.oauth, now_ms())
        .await?
    {
        app = a;
    }
    Ok((StatusCode::CREATED, Json(app_view(app))))
}

/// Retrieve an application.
#[utoipa::path(get, path = "/v1/meta/applications/{app}", tag = "meta",
    params(("app" = i64, Path, description = "Application id")),
    responses((status = 200, body = ApplicationView), CommonErrors))]
async fn get_app(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
) -> ApiResult<Json<ApplicationView>> {
    let a = state
        .db
        .get_app(app)
        .await?
        .ok_or_else(|| ApiError::not_found("application"))?;
    Ok(Json(app_view(a)))
}

/// Update an application (name, description, active, collect_events, the OAuth settings).
#[utoipa::path(patch, path = "/v1/meta/applications/{app}", tag = "meta",
    params(("app" = i64, Path, description = "Application id")), request_body = ApplicationChanges,
    responses((status = 200, body = ApplicationView), CommonErrors))]
async fn patch_app(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
    ApiJson(body): ApiJson<ApplicationChanges>,
) -> ApiResult<Json<ApplicationView>> {
    if let Some(n) = &body.name {
        validate_app_name(n)?;
    }
    crate::api::oauth::validate_settings(&body.oauth)?;
    let mut a = state
        .db
        .update_app(
            app,
            body.name.as_deref(),
            body.description.as_deref(),
            body.active,
            body.collect_events,
            now_ms(),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("application"))?;
    if let Some(changed) = state.db.set_app_oauth(app, &body.oauth, now_ms()).await? {
        a = changed;
    }
    state.forget_app(app);
    Ok(Json(app_view(a)))
}

/// Delete an application with its keys and accounts.
#[utoipa::path(delete, path = "/v1/meta/applications/{app}", tag = "meta",
    params(("app" = i64, Path, description = "Application id")),
    responses((status = 204, description = "Deleted"), CommonErrors))]
async fn delete_app(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    if !state.db.delete_app(app).await? {
        return Err(ApiError::not_found("application"));
    }
    state.forget_app(app);
    Ok(StatusCode::NO_CONTENT)
}

/// List an application's API keys (hints only; keys are shown once, at creation).
#[utoipa::path(get, path = "/v1/meta/applications/{app}/apikeys", tag = "meta",
    params(("app" = i64, Path, description = "Application id"), Paging),
    responses((status = 200, body = ObjectList<ApiKeyView>), CommonErrors))]
async fn list_keys(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<ApiKeyView>>> {
    let (page, size) = paging.resolve()?;
    state
        .db
        .get_app(app)
        .await?
        .ok_or_else(|| ApiError::not_found("application"))?;
    let keys = state.db.list_api_keys(app).await?;
    let total = keys.len();
    let objects = keys
        .into_iter()
        .skip(Paging::offset(page, size))
        .take(size as usize)
        .map(|k| key_view(k, None))
        .collect();
    Ok(Json(page_of(objects, page, size, total, "meta")))
}

/// Create an API key; the response is the only time the key is shown.
#[utoipa::path(post, path = "/v1/meta/applications/{app}/apikeys", tag = "meta",
    params(("app" = i64, Path, description = "Application id")),
    responses((status = 201, body = ApiKeyView), CommonErrors))]
async fn create_key(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<ApiKeyView>)> {
    state
        .db
        .get_app(app)
        .await?
        .ok_or_else(|| ApiError::not_found("application"))?;
    let (record, key) = create_api_key(&state, app).await?;
    Ok((StatusCode::CREATED, Json(key_view(record, Some(key)))))
}

/// Creates and stores (hashed) a new API key of `app`; returns the record and the key text.
pub async fn create_api_key(
    state: &AppState,
    app: i64,
) -> ApiResult<(crate::db::ApiKeyRecord, String)> {
    let key = generate_token("sk_");
    let text = key.expose_secret().to_owned();
    let hint: String = text.chars().take(7).collect();
    // Kept sealed too: webhook deliveries are signed with the key itself (X-Kloudless-Signature).
    let sealed = state.sealer.seal(
        text.as_bytes(),
        crate::webhooks::api_key_aad(app).as_bytes(),
    );
    let record = state
        .db
        .create_api_key(app, &hash_token(&text), &hint, &sealed, now_ms())
        .await?;
    Ok((record, text))
}

/// Revoke an API key, given the key itself or its numeric id.
#[utoipa::path(delete, path = "/v1/meta/applications/{app}/apikeys/{key}", tag = "meta",
    params(("app" = i64, Path, description = "Application id"),
           ("key" = String, Path, description = "The API key, or its id", pattern = r"^[A-Za-z0-9_-]{1,128}$")),
    responses((status = 204, description = "Revoked"), CommonErrors))]
async fn delete_key(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath((app, key)): ApiPath<(i64, String)>,
) -> ApiResult<StatusCode> {
    let id = key.parse::<i64>().ok();
    if !state.db.delete_api_key(app, id, &hash_token(&key)).await? {
        return Err(ApiError::not_found("API key"));
    }
    state.forget_app(app);
    Ok(StatusCode::NO_CONTENT)
}
