//! Operational endpoints: `/healthz` (alive), `/readyz` (database reachable, TLS certificate
//! served), `/metrics` (Prometheus text), `/v1/openapi.json` (the generated OpenAPI 3.1
//! document).

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the hub answers but part of its database does not (a lagging
    /// or unreachable replica: reads go to the primary; an unreachable primary: reads come
    /// from the replica and writes answer 503).
    status: &'static str,
    /// The database's parts, on PostgreSQL with a replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<DatabaseHealth>,
    /// Where provider budgets are kept: `shared` (Redis), `local` (no Redis configured) or
    /// `local_fallback` (Redis configured but unreachable: this hub paces alone meanwhile,
    /// and stays ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    budgets: Option<&'static str>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DatabaseHealth {
    /// `ok` or `unreachable`.
    primary: &'static str,
    /// `ok`, `lagging`, `unreachable`, `promoted` or `not_configured`.
    replica: &'static str,
    /// Replay lag of the replica, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_lag_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_lag_bytes: Option<u64>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        database: None,
        budgets: None,
    })
}

/// Readiness: the database answers (the primary, or else this region's replica, which keeps
/// reads going) and, with TLS, a real certificate is served (load balancers route only to
/// ready hubs). A degraded database is reported in the body and stays ready.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, body = Health), (status = 503, body = crate::error::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if let Some(tls) = &state.tls {
        tls.readiness()
            .map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m))?;
    }
    // A health probe (other hubs' steering, load balancers), not a client's query: it counts
    // as background work in the per-pool counters.
    let ping = crate::db::topology::detached(tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.db.ping(),
    ))
    .await;
    let primary_ok = matches!(ping, Ok(Ok(())));
    let database = state
        .db
        .topology()
        .filter(|t| t.replica.is_some())
        .map(|t| {
            let r = t.replica_state();
            DatabaseHealth {
                primary: if primary_ok { "ok" } else { "unreachable" },
                replica: if t.replica_usable() {
                    "ok"
                } else if !r.reachable {
                    "unreachable"
                } else if !r.in_recovery {
                    "promoted"
                } else {
                    "lagging"
                },
                replica_lag_ms: r.lag_ms,
                replica_lag_bytes: r.lag_bytes,
            }
        });
    let replica_ok = database.as_ref().is_some_and(|d| d.replica == "ok");
    let budgets = Some(state.connect_options.budgets.mode().label());
    if primary_ok {
        let degraded = database.as_ref().is_some_and(|d| d.replica != "ok");
        return Ok(Json(Health {
            status: if degraded { "degraded" } else { "ok" },
            database,
            budgets,
        }));
    }
    if replica_ok {
        tracing::warn!("readiness: database primary unreachable; reads from the replica");
        return Ok(Json(Health {
            status: "degraded",
            database,
            budgets,
        }));
    }
    match ping {
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "database unreachable",
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "database timed out",
        )),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub(super) fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The OpenAPI document route (not itself part of the document).
pub(super) fn routes(doc: Arc<utoipa::openapi::OpenApi>) -> Router<AppState> {
    let body: Arc<String> = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    Router::new().route(
        "/v1/openapi.json",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    (*body).clone(),
                )
            }
        }),
    )
}
