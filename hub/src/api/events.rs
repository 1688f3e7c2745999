//! The event feed of an account (Kloudless v1 shapes): `GET /v1/accounts/{acc}/events` pages
//! through the changes after a cursor, `GET .../events/latest` gives the newest cursor.
//!
//! Positions are per account and dense (see `migrations/*/0009_events.sql`); cursors are
//! opaque, HMAC-tagged (`crate::events::CursorCodec`). Without a cursor the feed starts at the
//! oldest kept event (what the Kloudless SDKs' tests expect of `events.all(page_size=1)`);
//! `cursor=after-auth` starts where the account was (re)connected; `0` is accepted as "no
//! cursor" for clients that start from a numeric zero. Reads may use the replica: every event
//! is written before its request answers, and that write waits for the replica
//! (read-your-writes), so a client that just changed something sees its event.

use super::{ApiPath, ApiQuery, CommonErrors, MAX_PAGE_SIZE};
use crate::auth::Caller;
use crate::db::{EventRecord, StreamPosition};
use crate::error::{ApiError, ApiResult};
use crate::model::{rfc3339, EventCursor, EventList, EventView, PreviousView};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(latest_cursor))
}

const DEFAULT_EVENT_PAGE: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Continue after this cursor (from an earlier page or `/events/latest`); `after-auth`
    /// starts where the account was connected; none starts at the oldest kept event.
    #[serde(default)]
    cursor: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    page_size: Option<i64>,
}

/// The account's stream, after the same checks as every account route (404 for accounts of
/// other applications, 403 for an inactive one).
async fn stream(state: &AppState, caller: &Caller, acc: &str) -> ApiResult<(i64, StreamPosition)> {
    let id = caller.account_id(acc)?;
    let a = state.account(caller.app_id, id).await?;
    if !a.record.active {
        return Err(ApiError::forbidden("account is inactive"));
    }
    let pos = state
        .db
        .event_position(id)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    Ok((id, pos))
}

fn expired(state: &AppState, account: i64, pos: &StreamPosition) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "cursor_expired",
        format!(
            "the cursor points before the oldest kept event (events are kept {} days); the \
             oldest valid cursor is {}",
            state.config.events.retention_days,
            state.cursors.encode(account, pos.oldest_valid())
        ),
    )
}

fn view(r: EventRecord) -> EventView {
    let previous = r.prev_id.map(|id| PreviousView {
        id,
        name: r.prev_name.unwrap_or_default(),
        parent_id: r.prev_parent_id,
    });
    EventView {
        id: r.object_id,
        account: r.account_id,
        kind: r.kind,
        action: r.action,
        modified: rfc3339(r.modified_ms),
        ip: r.ip,
        user_id: r.user_id,
        metadata: serde_json::from_str(&r.metadata).unwrap_or(serde_json::Value::Null),
        previous,
    }
}

/// List an account's events after a cursor, oldest first. An empty page ends the iteration;
/// its `cursor` is the one to continue from later.
#[utoipa::path(get, path = "/v1/accounts/{acc}/events", tag = "events",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), EventsQuery),
    responses((status = 200, body = EventList), CommonErrors))]
async fn list_events(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventList>> {
    let size = q.page_size.unwrap_or(DEFAULT_EVENT_PAGE);
    if !(1..=i64::from(MAX_PAGE_SIZE)).contains(&size) {
        return Err(ApiError::bad_request(format!(
            "page_size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let (id, pos) = stream(&state, &caller, &acc).await?;
    let start = match q.cursor.as_deref().map(str::trim) {
        None | Some("") | Some("0") => pos.oldest_valid(),
        Some("after-auth") => pos.auth_seq,
        Some(c) => state.cursors.decode(id, c)?,
    };
    if start < pos.oldest_valid() {
        return Err(expired(&state, id, &pos));
    }
    let page = state.db.events_after(id, start, size).await?;
    // Retention may have deleted the next events between the two reads: never skip them
    // silently (a stream's kept events are always a contiguous run of positions).
    if page
        .iter()
        .enumerate()
        .any(|(i, e)| e.seq != start + 1 + i as i64)
    {
        let now = state.db.event_position(id).await?.unwrap_or(pos);
        return Err(expired(&state, id, &now));
    }
    let next = page.last().map_or(start, |e| e.seq);
    let remaining = if page.len() as i64 == size {
        let head = state
            .db
            .event_position(id)
            .await?
            .map_or(pos.last_seq, |p| p.last_seq);
        (head - next).max(0)
    } else {
        0
    };
    let objects: Vec<EventView> = page.into_iter().map(view).collect();
    Ok(Json(EventList {
        kind: "object_list",
        count: objects.len(),
        objects,
        cursor: state.cursors.encode(id, next),
        remaining,
    }))
}

/// The cursor of the account's newest event: pass it to `/events` to get only what happens
/// from now on.
#[utoipa::path(get, path = "/v1/accounts/{acc}/events/latest", tag = "events",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$")),
    responses((status = 200, body = EventCursor), CommonErrors))]
async fn latest_cursor(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
) -> ApiResult<Json<EventCursor>> {
    let (id, pos) = stream(&state, &caller, &acc).await?;
    Ok(Json(EventCursor {
        cursor: state.cursors.encode(id, pos.last_seq),
    }))
}
