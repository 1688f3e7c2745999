//! Name search and recently modified files (bounded scans of the account).

use super::{entries_page, folder_path, not_found_as, AccountPath};
use crate::api::{ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::model::{ObjectList, StorageObject};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use shared::storage::{EntryKind, StoragePath};
use utoipa::IntoParams;

/// Most objects a search or recent listing examines (bounds its memory and time).
const SCAN_LIMIT: usize = 50_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// Text to find in names (case-insensitive); must not be empty.
    q: Option<String>,
    /// Comma-separated folder ids to search below (default: the whole account).
    #[serde(default)]
    parents: Option<String>,
    #[serde(default)]
    page: Option<u32>,
    #[serde(default)]
    page_size: Option<u32>,
}

/// Search names below the root or below `parents`.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/search", tag = "storage",
    params(AccountPath, SearchQuery),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
pub(super) async fn search(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = Paging {
        page: q.page,
        page_size: q.page_size,
    }
    .resolve()?;
    let needle = q.q.as_deref().map(str::trim).unwrap_or("");
    if needle.is_empty() {
        return Err(ApiError::bad_request("`q` must not be empty"));
    }
    let needle = needle.to_lowercase();
    let a = p.resolve(&state, &caller).await?;
    let roots = match q.parents.as_deref().filter(|p| !p.is_empty()) {
        None => vec![StoragePath::root()],
        Some(list) => list
            .split(',')
            .map(|id| folder_path(&state, &a, id.trim()))
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let mut hits = Vec::new();
    for root in roots {
        let (entries, _) = a
            .connector
            .walk(&root, SCAN_LIMIT)
            .await
            .map_err(not_found_as("folder"))?;
        hits.extend(
            entries
                .into_iter()
                .filter(|e| e.path.name().to_lowercase().contains(&needle)),
        );
    }
    hits.sort_by(|x, y| x.path.cmp(&y.path));
    hits.dedup_by(|x, y| x.path == y.path);
    Ok(Json(entries_page(&state.ids, &a, &hits, page, size)))
}

/// Recently modified files, newest first.
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/recent", tag = "storage",
    params(AccountPath, Paging),
    responses((status = 200, body = ObjectList<StorageObject>), CommonErrors))]
pub(super) async fn recent(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<StorageObject>>> {
    let (page, size) = paging.resolve()?;
    let a = p.resolve(&state, &caller).await?;
    let (entries, _) = a.connector.walk(&StoragePath::root(), SCAN_LIMIT).await?;
    let mut files: Vec<_> = entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    files.sort_by(|x, y| {
        y.modified
            .cmp(&x.modified)
            .then_with(|| x.path.cmp(&y.path))
    });
    Ok(Json(entries_page(&state.ids, &a, &files, page, size)))
}
