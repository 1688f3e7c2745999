//! The network API (Meta auth): join tokens, the spoke registry, revocation.

use super::{ApiJson, ApiPath, ApiQuery, CommonErrors};
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
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_spokes))
        .routes(routes!(get_spoke, revoke_spoke))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(explain_steering))
}

/// Query of the steering explanation.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SteeringQuery {
    /// The client's (or its resolver's) IP address.
    client: String,
}

/// One hub as the steering ranked it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SteeringCandidate {
    pub region: String,
    pub healthy: bool,
    /// RTT this region's hub measured to the client's network, milliseconds.
    pub rtt_ms: Option<f64>,
    /// `rtt`, `static_map`, `default_region` or `other`.
    pub basis: String,
}

/// Why the DNS answers what it answers for a client.
#[derive(Debug, Serialize, ToSchema)]
pub struct SteeringView {
    pub client: String,
    /// The client network decisions are made for (/24 or /56).
    pub prefix: String,
    /// Best first.
    pub candidates: Vec<SteeringCandidate>,
    pub chosen: Option<String>,
    /// The addresses answered for `api.<zone>`.
    pub addresses: Vec<String>,
    pub reason: String,
    pub fail_open: bool,
    pub ttl: u32,
}

/// Explain the steering decision for a client address: candidates, RTTs, health, the hub
/// chosen and why.
#[utoipa::path(get, path = "/v1/network/steering", tag = "network", params(SteeringQuery),
    responses((status = 200, body = SteeringView), CommonErrors))]
async fn explain_steering(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SteeringQuery>,
) -> ApiResult<Json<SteeringView>> {
    let client: std::net::IpAddr = q.client.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "`client` must be an IP address, not {:?}",
            q.client
        ))
    })?;
    let st = &state.steering;
    let snap = st.snapshot();
    let (d, prefix) = st.explain(&snap, client);
    let addresses = d
        .chosen
        .as_deref()
        .map(|r| st.addresses_of(&snap, r))
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    Ok(Json(SteeringView {
        client: client.to_string(),
        prefix: prefix.to_string(),
        candidates: d
            .ranked
            .into_iter()
            .map(|c| SteeringCandidate {
                region: c.region,
                healthy: c.healthy,
                rtt_ms: c.rtt_us.map(|u| u as f64 / 1000.0),
                basis: c.basis.to_owned(),
            })
            .collect(),
        chosen: d.chosen,
        addresses,
        reason: d.reason,
        fail_open: d.fail_open,
        ttl: st.ttl,
    }))
}

/// A request for a join token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// Region the spoke will serve (letters, digits, `-`, `_`, `.`).
    pub region: String,
    /// Name for the spoke; every use of a reusable token gets it with `-<use>` appended
    /// (unless the spoke asks for its own name).
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds the token stays valid (60 to 2,592,000; default `network.join_token_ttl_secs`).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 2_592_000)]
    pub ttl_secs: Option<u64>,
    /// How many spokes the token may enroll, each with its own key pair and certificate
    /// (1 to 10,000; default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub uses: Option<u32>,
}

/// A new join token, with its join string (shown only in this response).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedJoinToken {
    pub id: String,
    pub region: String,
    pub name: Option<String>,
    pub expires: String,
    /// How many spokes it may enroll.
    pub max_uses: i64,
    /// Paste into `spoke enroll`. Shown once.
    pub join: String,
}

/// A join token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub region: String,
    pub name: Option<String>,
    pub created: String,
    pub expires: String,
    /// Spokes enrolled with it so far.
    pub uses: i64,
    pub max_uses: i64,
    /// The latest enrollment with it.
    pub last_used: Option<String>,
    pub revoked: Option<String>,
    /// `active`, `revoked`, `expired` or `exhausted`.
    pub state: String,
}

/// The listed view of a token.
pub fn token_view(t: crate::db::JoinTokenRecord, now: i64) -> JoinTokenView {
    let state = match t.spent(now) {
        None => "active",
        Some(crate::db::TokenSpent::Revoked) => "revoked",
        Some(crate::db::TokenSpent::Expired) => "expired",
        Some(crate::db::TokenSpent::Exhausted) => "exhausted",
    };
    JoinTokenView {
        id: t.id,
        region: t.region,
        name: t.name,
        created: rfc3339(t.created_ms),
        expires: rfc3339(t.expires_ms),
        uses: t.uses,
        max_uses: t.max_uses,
        last_used: t.used_ms.map(rfc3339),
        revoked: t.revoked_ms.map(rfc3339),
        state: state.to_owned(),
    }
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
    /// The join token it enrolled with.
    pub join_token: Option<String>,
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
        join_token: s.join_token_id,
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

/// Create a join token for new spokes: single use by default, or good for `uses` spokes
/// (an autoscaling group's), each enrolling with its own key pair and certificate.
#[utoipa::path(post, path = "/v1/network/spokes/tokens", tag = "network",
    request_body = NewJoinToken,
    responses((status = 201, body = CreatedJoinToken), CommonErrors))]
async fn create_token(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewJoinToken>,
) -> ApiResult<(StatusCode, Json<CreatedJoinToken>)> {
    let ttl = body
        .ttl_secs
        .unwrap_or(state.config.network.join_token_ttl_secs);
    if !(60..=2_592_000).contains(&ttl) {
        return Err(ApiError::bad_request(
            "`ttl_secs` must be between 60 and 2592000",
        ));
    }
    let max = crate::network::enroll::MAX_USES;
    let uses = body.uses.unwrap_or(1);
    if !(1..=max).contains(&uses) {
        return Err(ApiError::bad_request(format!(
            "`uses` must be between 1 and {max}"
        )));
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
        uses,
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
        Json(CreatedJoinToken {
            id: rec.id,
            region: rec.region,
            name: rec.name,
            expires: rfc3339(rec.expires_ms),
            max_uses: rec.max_uses,
            join,
        }),
    ))
}

/// List join tokens with their uses, expiry and state; never their secrets.
#[utoipa::path(get, path = "/v1/network/spokes/tokens", tag = "network",
    responses((status = 200, body = ObjectList<JoinTokenView>), CommonErrors))]
async fn list_tokens(
    _: MetaCaller,
    State(state): State<AppState>,
) -> ApiResult<Json<ObjectList<JoinTokenView>>> {
    let now = now_ms();
    let objects: Vec<JoinTokenView> = state
        .db
        .list_join_tokens()
        .await?
        .into_iter()
        .map(|t| token_view(t, now))
        .collect();
    let total = objects.len();
    Ok(Json(super::page_of(
        objects,
        1,
        total.max(1) as u32,
        total,
        "network",
    )))
}

/// Revoke a join token: it enrolls no further spoke. Idempotent. Spokes it already enrolled
/// keep working (revoke them one by one with `DELETE /v1/network/spokes/{spoke}`).
#[utoipa::path(delete, path = "/v1/network/spokes/tokens/{token}", tag = "network",
    params(("token" = String, Path, description = "Join token id", pattern = r"^jt_[A-Za-z0-9_-]{1,64}$")),
    responses((status = 204, description = "Revoked"), CommonErrors))]
async fn revoke_token(
    _: MetaCaller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    match state.db.revoke_join_token(&id, now_ms()).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::not_found("join token")),
    }
}
