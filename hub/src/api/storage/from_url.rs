//! Uploads from a URL (`POST …/storage/files` with a JSON body `{"url", "parent_id", "name"}`):
//! a small file of known length is fetched by the hub and streamed into the account through
//! the write path; a large one (at least `offload.threshold`), one of unknown length, or any
//! with `X-Kloudless-Async: true` becomes a transfer (`hub::transfers::create_url`) that a
//! spoke near the storage fetches (the hub when none is healthy): in resumable parts into S3
//! multipart uploads when the source answers ranges, as one stream otherwise. The synchronous
//! form waits for that transfer and answers the file; the asynchronous one answers the task.
//!
//! SSRF (`shared::storage::url`): the egress guard's client, whose resolver answers only
//! addresses the policy permits and which connects to the address it checked; at most
//! `url::MAX_REDIRECTS` (5) redirects, each hop checked the same way, `http` and `https` only; and
//! the spoke that fetches a transfer checks every hop again under its own policy. The body
//! streams (never whole in memory), held to `limits.max_upload_bytes`, with a limit on each
//! wait for data and on the whole fetch.

use super::upload::{file_taken, publish_for, upload_error, upload_kind, write_upload};
use super::{change, free_name, object, stat_folder};
use crate::api::ApiJson;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::state::{Account, AppState};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use shared::storage::url::{self, UrlError};
use shared::storage::StorageError;
use std::sync::Arc;
use std::time::Duration;

/// Longest the whole fetch may take.
const TOTAL: Duration = Duration::from_secs(6 * 3600);

/// The body of an upload from a URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct UrlUpload {
    /// `http` or `https`; fetched by the hub.
    url: String,
    parent_id: String,
    name: String,
}

/// True when the request asks for an upload from a URL (a JSON body).
pub(super) fn is_url_upload(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Fetches the URL the body names into the account; answers 201 with the file, or with
/// `as_task` 202 and the task of the transfer that fetches it.
pub(super) async fn upload_from_url(
    state: &AppState,
    app_id: i64,
    a: &Arc<Account>,
    overwrite: bool,
    as_task: bool,
    req: Request,
) -> ApiResult<Response> {
    let ApiJson(body) = ApiJson::<UrlUpload>::from_request(req, state).await?;
    let parent = super::folder_path(state, a, &body.parent_id)?;
    let mut target = parent.join(&body.name)?;
    stat_folder(a, &parent, "parent folder").await?;
    let taken = file_taken(a, &target).await?;
    let egress = &state.connect_options.egress;
    let client = url::client(egress)?;
    let link = url::parse(&body.url).map_err(url_error)?;
    let source = url::open(&client, egress, &link, &HeaderMap::new())
        .await
        .map_err(url_error)?
        .response;
    let max = state.config.limits.max_upload_bytes;
    let length = source.content_length();
    check_length(length, max)?;
    if as_task || length.is_none_or(|n| n >= state.config.offload.threshold) {
        drop(source);
        // A second, one-byte look says whether the server answers ranges: the transfer then
        // copies resumable parts.
        let probe = url::probe(&client, egress, &link)
            .await
            .map_err(url_error)?;
        check_length(probe.size, max)?;
        if taken && !overwrite {
            target = free_name(a, &parent, &body.name).await?;
        }
        let src = crate::transfers::UrlSource {
            url: body.url.trim(),
            origin: link.origin().ascii_serialization(),
            size: probe.size,
            ranges: probe.ranges,
            replace: overwrite && taken,
        };
        drop(probe);
        let t = crate::transfers::create_url(state, app_id, a, &target, &src).await?;
        if as_task {
            let task = crate::api::transfers::task_view(state, t).await?;
            return Ok((StatusCode::ACCEPTED, Json(task)).into_response());
        }
        let t = crate::transfers::wait(state, t.id, TOTAL).await?;
        let error = t.error.as_deref().unwrap_or("no detail");
        if t.state == "failed" && error.contains(shared::storage::transfer::OVER_LIMIT) {
            return Err(too_large(format!(
                "the URL's file is larger than the limit of {max} bytes"
            )));
        }
        if t.state != "done" {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!(
                    "the upload from the URL (transfer {}) ended {}: {}",
                    t.id, t.state, error
                ),
            ));
        }
        let obj = super::transferred_object(state, &t).await?;
        return Ok((StatusCode::CREATED, Json(obj)).into_response());
    }
    let host = link.host_str().unwrap_or_default().to_owned();
    let mut seen = 0u64;
    let stream = source.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| format!("{URL_FAILED} ({host}): {}", url::body_cause(&e)))?;
        seen += chunk.len() as u64;
        if max > 0 && seen > max {
            return Err(format!("{URL_TOO_LARGE} {max}"));
        }
        Ok(chunk)
    });
    let publish = publish_for(overwrite);
    let written = tokio::time::timeout(
        TOTAL,
        write_upload(state, a, &target, Box::pin(stream), publish),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("fetching the URL took longer than {} s", TOTAL.as_secs()),
        )
    })?;
    let e = written.map_err(|e| match e {
        super::upload::UploadError::Storage(StorageError::Interrupted(m))
            if m.contains(URL_TOO_LARGE) =>
        {
            too_large(format!(
                "the URL's file is larger than the limit of {max} bytes"
            ))
        }
        super::upload::UploadError::Storage(StorageError::Interrupted(m))
            if m.contains(URL_FAILED) =>
        {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", m)
        }
        other => upload_error(other),
    })?;
    let k = upload_kind(overwrite, taken, &target, &e);
    events::record(state, change(a.id(), k, "upload", &e)).await;
    Ok((StatusCode::CREATED, Json(object(&state.ids, a, &e))).into_response())
}

const URL_TOO_LARGE: &str = "the URL's file exceeds";
const URL_FAILED: &str = "reading the URL failed";

fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
}

/// A 413 for a source longer than `limits.max_upload_bytes` (0: no limit).
fn check_length(length: Option<u64>, max: u64) -> ApiResult<()> {
    match length.filter(|n| max > 0 && *n > max) {
        Some(n) => Err(too_large(format!(
            "the URL's file is {n} bytes; the limit is {max}"
        ))),
        None => Ok(()),
    }
}

/// The API's answer to a URL that was not fetched.
fn url_error(e: UrlError) -> ApiError {
    match e {
        UrlError::Invalid(m) => ApiError::bad_request(m),
        UrlError::NotAllowed(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "url_not_allowed", e.to_string())
        }
        UrlError::Unreachable { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            e.to_string(),
        ),
        UrlError::Upstream { message, .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
        }
    }
}
