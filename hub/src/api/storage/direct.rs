//! Client-direct URLs: single-purpose signed grants on a data spoke near the storage, for
//! uploads and downloads whose bytes should not pass through a hub.

use super::{folder_path, free_name, stat_folder, AccountPath};
use crate::api::{ApiJson, ApiPath, CommonErrors};
use crate::auth::Caller;
use crate::db::{upload_claim_key, ClaimKind};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, kind};
use crate::state::{Account, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shared::storage::{EntryKind, ServiceConfig, StoragePath};

/// A request for a client-direct upload URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadUrlRequest {
    parent_id: String,
    name: String,
    /// Seconds the URL stays valid (1 to 86400; default 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    expires_in: Option<u64>,
}

/// A client-direct upload URL.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct UploadUrl {
    /// `PUT` (or `POST`) the raw bytes here; no Authorization header is needed.
    url: String,
    /// The id the file will have.
    id: String,
    expires: String,
}

/// What a client-direct URL is for.
#[derive(Debug, Clone)]
pub(super) enum Direct {
    Download,
    /// An upload: replacing a file of the same name or never, held to the `Content-Length`
    /// the client declared to us when it was redirected.
    Upload {
        replace: bool,
        declared_len: Option<u64>,
        /// The event kind the published upload is (`add` or `update`).
        event: &'static str,
    },
    /// A part of an upload session, exactly `len` bytes, to where `target` says (the spoke
    /// has it recorded before it answers).
    Part {
        len: u64,
        target: crate::sessions::PartGrantFields,
    },
}

/// Registers a single-purpose grant on a spoke with a data endpoint and returns the signed URL
/// and its expiry (Unix seconds), or `None` when no such spoke is healthy.
///
/// An upload's leftovers (its staging object, or on object stores an incomplete multipart
/// upload) are claimed in `storage_claims` before the URL exists, fresh until the URL
/// expires; the spoke names the claim in its heartbeats while the upload runs, so a spoke
/// that dies mid-upload leaves nothing the sweep does not find.
pub(super) async fn direct_url(
    state: &AppState,
    a: &Account,
    path: &StoragePath,
    direct: Direct,
    ttl_secs: u64,
) -> ApiResult<Option<(String, i64)>> {
    let registry = &state.network.registry;
    let exclude = match &a.settings {
        ServiceConfig::Fs(fs) => registry.without_fs_root(std::path::Path::new(&fs.root)),
        _ => Vec::new(),
    };
    let Some((spoke, addr)) = registry.choose_data(&state.config.region, &exclude) else {
        return Ok(None);
    };
    let expires = crate::state::now_ms() / 1000 + ttl_secs as i64;
    let (method, replace, declared_len, event) = match &direct {
        Direct::Download => ("GET", false, None, None),
        Direct::Upload {
            replace,
            declared_len,
            event,
        } => ("PUT", *replace, *declared_len, Some(*event)),
        Direct::Part { len, .. } => ("PART", false, Some(*len), None),
    };
    let (mut staging, mut claim) = (None, None);
    if method == "PUT" {
        let key = a.connector.new_staging();
        let (k, kind) = match &key {
            Some(k) => (k.as_str().to_owned(), ClaimKind::Staging),
            None => (upload_claim_key(path.as_str()), ClaimKind::Upload),
        };
        // Untouched until the URL expires (plus the grace period): a URL never used leaves
        // nothing, and one in use is kept fresh by the spoke's heartbeats.
        if !state
            .db
            .take_claim(a.record.app_id, a.id(), &k, kind, expires * 1000)
            .await?
        {
            return Err(ApiError::internal("claim key collision"));
        }
        staging = key.map(|k| k.as_str().to_owned());
        claim = Some(k);
    }
    let grant_id = crate::network::new_grant_id();
    let receipt = event.map(|kind| events::receipt(state, &grant_id, a.id(), path.as_str(), kind));
    let part = match direct {
        Direct::Part { len, target } => Some(shared::proto::PartGrant {
            tag: crate::sessions::part_tag(state, &grant_id, a.id(), len, &target),
            session: target.session,
            number: target.number,
            upload_id: target.upload_id,
            staging: target.staging,
        }),
        _ => None,
    };
    let g = shared::proto::Grant {
        grant_id,
        method: method.to_owned(),
        account: a.id(),
        location: shared::proto::Location {
            service: a.settings.clone(),
            path: path.as_str().to_owned(),
        },
        file_id: state.ids.encode(a.id(), EntryKind::File, path),
        expires,
        max_bytes: match declared_len {
            Some(n) if method == "PART" => n,
            _ => state.config.limits.max_upload_bytes,
        },
        replace,
        declared_len,
        staging,
        claim: claim.clone(),
        receipt,
        part,
        reader: None,
    };
    let grant_id = g.grant_id.clone();
    let Some(sig) = crate::network::grant(state, spoke, g) else {
        if let Some(k) = claim {
            state.db.release_claim(a.id(), &k).await?;
        }
        return Ok(None);
    };
    Ok(Some((
        format!("https://{addr}/v1/data/{grant_id}?exp={expires}&sig={sig}"),
        expires,
    )))
}

/// Get a URL a client uploads a file to directly (served by a spoke near the storage, so the
/// bytes never pass through a hub). The URL is signed, expiring and good for one upload (a
/// second request on it gets 410); it never replaces a file: if one of that name appears
/// after the URL was issued, the upload answers 409 and writes nothing.
#[utoipa::path(post, path = "/v1/accounts/{acc}/storage/files/upload_url", tag = "storage",
    params(AccountPath),
    request_body = UploadUrlRequest,
    responses((status = 200, body = UploadUrl), (status = 503, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn upload_url(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<AccountPath>,
    ApiJson(body): ApiJson<UploadUrlRequest>,
) -> ApiResult<Json<UploadUrl>> {
    let ttl = body.expires_in.unwrap_or(3600);
    if !(1..=86_400).contains(&ttl) {
        return Err(ApiError::bad_request(
            "`expires_in` must be between 1 and 86400",
        ));
    }
    let a = p.resolve(&state, &caller).await?;
    let parent = folder_path(&state, &a, &body.parent_id)?;
    stat_folder(&a, &parent, "parent folder").await?;
    let mut target = parent.join(&body.name)?;
    if a.connector.exists(&target).await? {
        target = free_name(&a, &parent, &body.name).await?;
    }
    let direct = Direct::Upload {
        replace: false,
        declared_len: None,
        event: kind::ADD,
    };
    let (url, expires) = direct_url(&state, &a, &target, direct, ttl)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_data_spoke",
                "no spoke with a data endpoint is available; upload through \
             POST /v1/accounts/{acc}/storage/files instead",
            )
        })?;
    Ok(Json(UploadUrl {
        url,
        id: state.ids.encode(a.id(), EntryKind::File, &target),
        expires: crate::model::rfc3339(expires * 1000),
    }))
}
