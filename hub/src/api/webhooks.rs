//! The Meta API's webhooks: `GET/POST /v1/meta/applications/{app}/webhooks`,
//! `GET/DELETE …/webhooks/{id}`, the attempt log `…/webhooks/{id}/deliveries` and
//! `POST …/deliveries/{id}/retry`. Delivery itself is `crate::webhooks`.

use super::{page_of, ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::MetaCaller;
use crate::error::{ApiError, ApiResult};
use crate::model::{rfc3339, ObjectList};
use crate::state::{now_ms, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Webhooks one application may have.
const MAX_WEBHOOKS: usize = 100;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// A webhook. `secret` (the Standard Webhooks signing secret) is present only in the response
/// that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub application: i64,
    /// False once deliveries stopped (`disabled_reason` says why).
    pub active: bool,
    pub disabled_reason: Option<String>,
    pub disabled: Option<String>,
    /// When the current run of failed deliveries began (absent when the last one succeeded).
    pub failing_since: Option<String>,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where notifications are POSTed (http or https).
    pub url: String,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub webhook: i64,
    pub account: i64,
    /// The notification's `webhook-id` header (the same for every attempt of it).
    pub message_id: String,
    /// 1 for the first attempt of the notification, 2 for its first retry, ...
    pub attempt: i64,
    pub created: String,
    /// The receiver's HTTP status; absent when it gave none (timeout, refused connection).
    pub status: Option<i64>,
    pub latency_ms: i64,
    pub success: bool,
    pub error: Option<String>,
}

fn view(w: crate::db::WebhookRecord, secret: Option<String>) -> WebhookView {
    WebhookView {
        id: w.id,
        url: w.url,
        application: w.app_id,
        active: w.disabled_ms.is_none(),
        disabled_reason: w.disabled_reason,
        disabled: w.disabled_ms.map(rfc3339),
        failing_since: w.failing_since_ms.map(rfc3339),
        created: rfc3339(w.created_ms),
        secret,
    }
}

fn delivery_view(a: crate::db::WebhookAttempt) -> DeliveryView {
    DeliveryView {
        id: a.id,
        webhook: a.webhook_id,
        account: a.account_id,
        message_id: a.msg_id,
        attempt: a.attempt,
        created: rfc3339(a.at_ms),
        status: a.status,
        latency_ms: a.latency_ms,
        success: a.ok,
        error: a.error,
    }
}

async fn app_exists(state: &AppState, app: i64) -> ApiResult<()> {
    state
        .db
        .get_app(app)
        .await?
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("application"))
}

/// List an application's webhooks.
#[utoipa::path(get, path = "/v1/meta/applications/{app}/webhooks", tag = "meta",
    params(("app" = i64, Path, description = "Application id"), Paging),
    responses((status = 200, body = ObjectList<WebhookView>), CommonErrors))]
async fn list_webhooks(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<WebhookView>>> {
    let (page, size) = paging.resolve()?;
    app_exists(&state, app).await?;
    let hooks = state.db.list_webhooks(app).await?;
    let total = hooks.len();
    let objects = hooks
        .into_iter()
        .skip(Paging::offset(page, size))
        .take(size as usize)
        .map(|w| view(w, None))
        .collect();
    Ok(Json(page_of(objects, page, size, total, "meta")))
}

/// Add a webhook. The URL is sent a signed test request first, which must be answered 200
/// with the application id as the body; the response carries the Standard Webhooks secret,
/// the only time it is shown.
#[utoipa::path(post, path = "/v1/meta/applications/{app}/webhooks", tag = "meta",
    params(("app" = i64, Path, description = "Application id")), request_body = NewWebhook,
    responses((status = 201, body = WebhookView), CommonErrors))]
async fn create_webhook(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(app): ApiPath<i64>,
    ApiJson(body): ApiJson<NewWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let (hook, text) = add(&state, app, &body.url).await?;
    Ok((StatusCode::CREATED, Json(view(hook, Some(text)))))
}

/// Adds a webhook to application `app` after its live test (the Meta API and the portal);
/// returns it with its secret (shown once).
pub(crate) async fn add(
    state: &AppState,
    app: i64,
    url: &str,
) -> ApiResult<(crate::db::WebhookRecord, String)> {
    app_exists(state, app).await?;
    let url = crate::webhooks::check_url(state, url.trim()).await?;
    if state.db.list_webhooks(app).await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::conflict(
            "too_many_webhooks",
            format!("an application may have at most {MAX_WEBHOOKS} webhooks; delete one first"),
        ));
    }
    let (text, raw) = crate::webhooks::new_secret();
    crate::webhooks::test_request(state, app, url.as_str(), &raw).await?;
    let sealed = crate::webhooks::seal_secret(state, app, &raw);
    let hook = state
        .db
        .create_webhook(app, url.as_str(), &sealed, now_ms())
        .await?;
    tracing::info!(app, webhook = hook.id, "webhook added");
    Ok((hook, text))
}

/// Retrieve a webhook (whether it is active, and why not).
#[utoipa::path(get, path = "/v1/meta/applications/{app}/webhooks/{id}", tag = "meta",
    params(("app" = i64, Path, description = "Application id"),
           ("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), CommonErrors))]
async fn get_webhook(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath((app, id)): ApiPath<(i64, i64)>,
) -> ApiResult<Json<WebhookView>> {
    let w = state
        .db
        .get_webhook(app, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(view(w, None)))
}

/// Delete a webhook; its pending notifications are dropped.
#[utoipa::path(delete, path = "/v1/meta/applications/{app}/webhooks/{id}", tag = "meta",
    params(("app" = i64, Path, description = "Application id"),
           ("id" = i64, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), CommonErrors))]
async fn delete_webhook(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath((app, id)): ApiPath<(i64, i64)>,
) -> ApiResult<StatusCode> {
    if !state.db.delete_webhook(app, id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// List a webhook's delivery attempts, newest first.
#[utoipa::path(get, path = "/v1/meta/applications/{app}/webhooks/{id}/deliveries", tag = "meta",
    params(("app" = i64, Path, description = "Application id"),
           ("id" = i64, Path, description = "Webhook id"), Paging),
    responses((status = 200, body = ObjectList<DeliveryView>), CommonErrors))]
async fn list_deliveries(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath((app, id)): ApiPath<(i64, i64)>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<DeliveryView>>> {
    let (page, size) = paging.resolve()?;
    state
        .db
        .get_webhook(app, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let (rows, total) = state
        .db
        .list_webhook_attempts(id, Paging::offset(page, size) as i64, i64::from(size))
        .await?;
    let objects = rows.into_iter().map(delivery_view).collect();
    Ok(Json(page_of(objects, page, size, total as usize, "meta")))
}

/// Send the notification of a past attempt's account again, now.
#[utoipa::path(post, path = "/v1/meta/applications/{app}/webhooks/{id}/deliveries/{delivery}/retry",
    tag = "meta",
    params(("app" = i64, Path, description = "Application id"),
           ("id" = i64, Path, description = "Webhook id"),
           ("delivery" = i64, Path, description = "Delivery attempt id")),
    responses((status = 202, description = "Queued"), CommonErrors))]
async fn retry_delivery(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath((app, id, delivery)): ApiPath<(i64, i64, i64)>,
) -> ApiResult<StatusCode> {
    resend(&state, app, id, delivery).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Queues the notification of a past delivery attempt's account again, now (the Meta API and
/// the portal).
pub(crate) async fn resend(state: &AppState, app: i64, id: i64, delivery: i64) -> ApiResult<()> {
    let hook = state
        .db
        .get_webhook(app, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let attempt = state
        .db
        .get_webhook_attempt(id, delivery)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    if hook.disabled_ms.is_some() {
        return Err(ApiError::conflict(
            "webhook_disabled",
            format!(
                "the webhook is disabled ({}); add it again to resume deliveries",
                hook.disabled_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            ),
        ));
    }
    if !state
        .db
        .rearm_delivery(id, attempt.account_id, now_ms())
        .await?
    {
        return Err(ApiError::not_found("account"));
    }
    state.db.outbox_wake().notify_one();
    Ok(())
}
