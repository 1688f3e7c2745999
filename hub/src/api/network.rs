//! The network API (Meta auth): join tokens, the spoke registry, revocation.

use super::{ApiJson, ApiPath, CommonErrors};
use crate::auth::MetaCaller;
use crate::error::{ApiError, ApiResult};
use crate::model::{rfc3339, ObjectList};
use crate::network::LiveStatus;
use crate::state::{now_ms, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_spokes))
        .routes(routes!(get_spoke, revoke_spoke))
        .routes(routes!(create_token))
}

/// A request for a join token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// Region the spoke will serve (letters, digits, `-`, `_`, `.`).
    pub region: String,
    /// Name for the spoke.
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds the token stays valid (60 to 2,592,000; default `network.join_token_ttl_secs`).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 2_592_000)]
    pub ttl_secs: Option<u64>,
}

/// A join token, with the join string shown only in the creation response.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub region: String,
    pub name: Option<String>,
    pub expires: String,
    /// Paste into `spoke enroll`. Shown once.
    pub join: String,
}

/// A spoke.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpokeView {
    pub id: i64,
    pub name: String,
    pub region: String,
    pub advertise: Option<String>,
    pub enrolled: String,
    pub revoked: Option<String>,
    pub last_seen: Option<String>,
    /// Connected to this hub right now.
    pub connected: bool,
    /// Live status when connected to this hub.
    pub status: Option<LiveStatus>,
}

fn view(state: &AppState, s: crate::db::SpokeRecord) -> SpokeView {
    let status = state.network.registry.status(s.id);
    SpokeView {
        id: s.id,
        name: s.name,
        region: s.region,
        advertise: s.advertise,
        enrolled: rfc3339(s.enrolled_ms),
        revoked: s.revoked_ms.map(rfc3339),
        last_seen: s.last_seen_ms.map(rfc3339),
        connected: status.is_some(),
        status,
    }
}

/// List enrolled spokes, with live status for those connected to this hub.
#[utoipa::path(get, path = "/v1/network/spokes", tag = "network",
    responses((status = 200, body = ObjectList<SpokeView>), CommonErrors))]
async fn list_spokes(
    _: MetaCaller,
    State(state): State<AppState>,
) -> ApiResult<Json<ObjectList<SpokeView>>> {
    let spokes = state.db.list_spokes().await?;
    let objects: Vec<SpokeView> = spokes.into_iter().map(|s| view(&state, s)).collect();
    let total = objects.len();
    Ok(Json(super::page_of(
        objects,
        1,
        total.max(1) as u32,
        total,
        "network",
    )))
}

/// Retrieve a spoke.
#[utoipa::path(get, path = "/v1/network/spokes/{spoke}", tag = "network",
    params(("spoke" = i64, Path, description = "Spoke id")),
    responses((status = 200, body = SpokeView), CommonErrors))]
async fn get_spoke(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<SpokeView>> {
    let s = state
        .db
        .get_spoke(id)
        .await?
        .ok_or_else(|| ApiError::not_found("spoke"))?;
    Ok(Json(view(&state, s)))
}

/// Revoke a spoke: its connections close at once and it is refused afterwards; transfers it
/// was running resume elsewhere.
#[utoipa::path(delete, path = "/v1/network/spokes/{spoke}", tag = "network",
    params(("spoke" = i64, Path, description = "Spoke id")),
    responses((status = 204, description = "Revoked"), CommonErrors))]
async fn revoke_spoke(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    if state.db.get_spoke(id).await?.is_none() {
        return Err(ApiError::not_found("spoke"));
    }
    revoke(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Marks a spoke revoked and drops its connection to this hub.
pub async fn revoke(state: &AppState, id: i64) -> ApiResult<bool> {
    let changed = state.db.revoke_spoke(id, now_ms()).await?;
    if state.network.registry.disconnect(
        id,
        shared::proto::CLOSE_REVOKED,
        "this spoke has been revoked",
    ) {
        tracing::info!(spoke = id, "revoked spoke disconnected");
        crate::transfers::spoke_lost(state, id).await;
    }
    Ok(changed)
}

/// Create a single-use join token for a new spoke.
#[utoipa::path(post, path = "/v1/network/spokes/tokens", tag = "network",
    request_body = NewJoinToken,
    responses((status = 201, body = JoinTokenView), CommonErrors))]
async fn create_token(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewJoinToken>,
) -> ApiResult<(StatusCode, Json<JoinTokenView>)> {
    let ttl = body
        .ttl_secs
        .unwrap_or(state.config.network.join_token_ttl_secs);
    if !(60..=2_592_000).contains(&ttl) {
        return Err(ApiError::bad_request(
            "`ttl_secs` must be between 60 and 2592000",
        ));
    }
    if !crate::network::enroll::valid_label(&body.region) {
        return Err(ApiError::bad_request(
            "`region` must be 1-63 letters, digits, '-', '_' or '.'",
        ));
    }
    if body
        .name
        .as_deref()
        .is_some_and(|n| !crate::network::enroll::valid_label(n))
    {
        return Err(ApiError::bad_request(
            "`name` must be 1-63 letters, digits, '-', '_' or '.'",
        ));
    }
    let (rec, join) = crate::network::enroll::create_token(
        &state,
        &body.region,
        body.name.as_deref(),
        Duration::from_secs(ttl),
    )
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "network_unavailable",
            e.to_string(),
        )
    })?;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenView {
            id: rec.id,
            region: rec.region,
            name: rec.name,
            expires: rfc3339(rec.expires_ms),
            join,
        }),
    ))
}
