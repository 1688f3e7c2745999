//! Transfers as first-class objects (`/v1/transfers`) and the Kloudless task view of the
//! asynchronous ones (`/v1/accounts/{acc}/tasks/{id}`).

use super::{page_of, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::db::TransferRecord;
use crate::error::{ApiError, ApiResult};
use crate::model::{rfc3339, ObjectList, StorageObject};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_transfers))
        .routes(routes!(get_transfer, cancel_transfer))
        .routes(routes!(get_task))
}

/// One end of a transfer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferEnd {
    pub account: i64,
    pub path: String,
}

/// A transfer and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferView {
    pub id: i64,
    /// Always `transfer`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub operation: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub source: TransferEnd,
    pub destination: TransferEnd,
    pub bytes_done: u64,
    /// `null` while the length of a URL source is unknown.
    pub bytes_total: Option<u64>,
    /// Bytes per second, while running.
    pub rate: u64,
    /// Seconds left at the current rate, while running.
    pub eta: Option<u64>,
    /// `spoke` or `hub`.
    pub executor: Option<String>,
    pub spoke: Option<i64>,
    pub region: Option<String>,
    pub part_size: u64,
    pub parts_total: u64,
    pub parts_done: u64,
    /// End-to-end checksum: `sha256` of the stream, or for multipart copies the SHA-256 over
    /// the parts' SHA-256 digests followed by `-<parts>`.
    pub checksum: Option<String>,
    pub error: Option<String>,
    /// How the transfer was run (e.g. "no healthy spoke: the hub ran this transfer itself").
    pub note: Option<String>,
    pub attempts: i64,
    pub created: String,
    pub modified: String,
    pub finished: Option<String>,
}

/// Builds the API view (live progress from memory, parts from the database).
pub async fn transfer_view(state: &AppState, t: TransferRecord) -> ApiResult<TransferView> {
    let parts_done = state.db.transfer_parts(t.id).await?.len() as u64;
    let parts_total = if t.upload_id.is_some() {
        shared::storage::transfer::plan_parts(t.size as u64, t.part_size as u64).len() as u64
    } else {
        1
    };
    let running = t.state == "running";
    let done = t.state == "done";
    let total = u64::try_from(t.size).ok();
    let (bytes_done, rate) = match state.transfers.live(t.id) {
        Some((b, r)) if running => (b.max(t.bytes_done as u64).min(total.unwrap_or(u64::MAX)), r),
        _ => (t.bytes_done as u64, 0),
    };
    let eta = total
        .filter(|_| running && rate > 0)
        .map(|total| total.saturating_sub(bytes_done) / rate);
    Ok(TransferView {
        id: t.id,
        kind: "transfer",
        operation: t.kind,
        state: t.state,
        source: TransferEnd {
            account: t.src_account,
            path: t.src_path,
        },
        destination: TransferEnd {
            account: t.dst_account,
            path: t.dst_path,
        },
        bytes_done,
        bytes_total: total,
        rate,
        eta,
        executor: t.executor,
        spoke: t.spoke_id,
        region: t.region,
        part_size: t.part_size as u64,
        parts_total,
        parts_done: if t.upload_id.is_some() {
            parts_done
        } else {
            u64::from(done)
        },
        checksum: t.checksum,
        error: t.error,
        note: t.note,
        attempts: t.attempts,
        created: rfc3339(t.created_ms),
        modified: rfc3339(t.updated_ms),
        finished: t.finished_ms.map(rfc3339),
    })
}

/// A transfer this caller may see: one of its application, and for an account bearer token one
/// whose source or destination is that account. Anything else is a 404, so ids do not leak.
async fn owned(state: &AppState, caller: &Caller, id: i64) -> ApiResult<TransferRecord> {
    match state.db.get_transfer(id).await? {
        Some(t) if t.app_id == caller.app_id && touches(caller, &t) => Ok(t),
        _ => Err(ApiError::not_found("transfer")),
    }
}

fn touches(caller: &Caller, t: &TransferRecord) -> bool {
    match caller.account_id {
        Some(own) => t.src_account == own || t.dst_account == own,
        None => true,
    }
}

/// List transfers, newest first: an API key sees its application's, an account bearer token
/// those whose source or destination is its account.
#[utoipa::path(get, path = "/v1/transfers", tag = "transfers", params(Paging),
    responses((status = 200, body = ObjectList<TransferView>), CommonErrors))]
async fn list_transfers(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<TransferView>>> {
    let (page, size) = paging.resolve()?;
    let (rows, total) = state
        .db
        .list_transfers(
            caller.app_id,
            caller.account_id,
            Paging::offset(page, size) as i64,
            i64::from(size),
        )
        .await?;
    let mut objects = Vec::with_capacity(rows.len());
    for t in rows {
        objects.push(transfer_view(&state, t).await?);
    }
    Ok(Json(page_of(
        objects,
        page,
        size,
        total as usize,
        "transfers",
    )))
}

/// Retrieve a transfer: state, progress, executor, checksum.
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = i64, Path, description = "Transfer id")),
    responses((status = 200, body = TransferView), CommonErrors))]
async fn get_transfer(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TransferView>> {
    let t = owned(&state, &caller, id).await?;
    Ok(Json(transfer_view(&state, t).await?))
}

/// Cancel a transfer. Ended transfers are returned unchanged.
#[utoipa::path(delete, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = i64, Path, description = "Transfer id")),
    responses((status = 200, body = TransferView), CommonErrors))]
async fn cancel_transfer(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<TransferView>> {
    let t = owned(&state, &caller, id).await?;
    crate::transfers::cancel(&state, &t).await?;
    let t = owned(&state, &caller, id).await?;
    Ok(Json(transfer_view(&state, t).await?))
}

/// A Kloudless task.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    /// `PENDING`, `RECEIVED`, `STARTED`, `SUCCESS` or `FAILURE`.
    pub state: &'static str,
    pub bytes_done: u64,
    /// `null` while the length of a URL source is unknown.
    pub bytes_total: Option<u64>,
    /// The copied file, once `SUCCESS`.
    pub result: Option<StorageObject>,
    pub error: Option<String>,
    /// The transfer behind this task (`/v1/transfers/{id}`).
    pub transfer: i64,
}

/// Retrieve a task started with `X-Kloudless-Async` or `return_type=task`.
#[utoipa::path(get, path = "/v1/accounts/{acc}/tasks/{id}", tag = "transfers",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"),
           ("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskView), CommonErrors))]
async fn get_task(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((acc, id)): ApiPath<(String, i64)>,
) -> ApiResult<Json<TaskView>> {
    let account = caller.account_id(&acc)?;
    let t = owned(&state, &caller, id).await?;
    if t.src_account != account && t.dst_account != account {
        return Err(ApiError::not_found("task"));
    }
    Ok(Json(task_view(&state, t).await?))
}

/// The task form of a transfer.
pub async fn task_view(state: &AppState, t: TransferRecord) -> ApiResult<TaskView> {
    let v = transfer_view(state, t.clone()).await?;
    let task_state = match t.state.as_str() {
        "queued" => "PENDING",
        "running" if v.bytes_done == 0 => "RECEIVED",
        "running" => "STARTED",
        "done" => "SUCCESS",
        _ => "FAILURE",
    };
    let result = if t.state == "done" {
        Some(crate::api::storage::transferred_object(state, &t).await?)
    } else {
        None
    };
    Ok(TaskView {
        id: t.id,
        state: task_state,
        bytes_done: v.bytes_done,
        bytes_total: v.bytes_total,
        result,
        error: t.error,
        transfer: t.id,
    })
}
