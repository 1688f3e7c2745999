//! Uploads from a URL (`POST …/storage/files` with a JSON body `{"url", "parent_id", "name"}`):
//! the hub fetches the URL and streams it into the account through the write path.
//!
//! SSRF: the fetch uses the storage egress guard's client, whose resolver answers only
//! addresses the policy permits, and connects to the address it checked (no second lookup); an
//! IP literal is checked before the request. Redirects are followed here, not by the client:
//! at most [`MAX_REDIRECTS`], each hop checked the same way, `http` and `https` only. The body
//! streams (never whole in memory), held to `limits.max_upload_bytes`, with a limit on each
//! wait for data and on the whole fetch.

use super::upload::{file_taken, publish_for, upload_error, upload_kind, write_upload};
use super::{change, object, stat_folder};
use crate::api::ApiJson;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::state::{Account, AppState};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use shared::storage::StorageError;
use std::sync::Arc;
use std::time::Duration;

/// Most redirects followed.
pub const MAX_REDIRECTS: usize = 5;
/// Longest wait for the source's next bytes (or its answer).
const IDLE: Duration = Duration::from_secs(60);
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

/// Fetches the URL the body names into the account; answers 201 with the file.
pub(super) async fn upload_from_url(
    state: &AppState,
    a: &Arc<Account>,
    overwrite: bool,
    req: Request,
) -> ApiResult<Response> {
    let ApiJson(body) = ApiJson::<UrlUpload>::from_request(req, state).await?;
    let parent = super::folder_path(state, a, &body.parent_id)?;
    let target = parent.join(&body.name)?;
    stat_folder(a, &parent, "parent folder").await?;
    let taken = file_taken(a, &target).await?;
    let source = open(state, &body.url).await?;
    let max = state.config.limits.max_upload_bytes;
    if let Some(n) = source.content_length().filter(|n| max > 0 && *n > max) {
        return Err(too_large(format!(
            "the URL's file is {n} bytes; the limit is {max}"
        )));
    }
    let host = source.url().host_str().unwrap_or_default().to_owned();
    let mut seen = 0u64;
    let stream = source.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| format!("{URL_FAILED} ({host}): {}", reqwest_cause(&e)))?;
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

/// The client of URL fetches: the egress guard's resolver, no redirects of its own, no proxy.
fn client(state: &AppState) -> ApiResult<reqwest::Client> {
    state
        .connect_options
        .egress
        .http_builder(Duration::from_secs(10))
        .read_timeout(IDLE)
        .user_agent(concat!("Switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ApiError::internal)
}

/// The source's answer to a GET of `url`, after at most [`MAX_REDIRECTS`] checked redirects.
async fn open(state: &AppState, url: &str) -> ApiResult<reqwest::Response> {
    let mut url = reqwest::Url::parse(url.trim())
        .map_err(|e| ApiError::bad_request(format!("`url` is not a URL: {e}")))?;
    let client = client(state)?;
    let egress = &state.connect_options.egress;
    for hop in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiError::bad_request(format!(
                "`url` must be http or https, not {}{}",
                url.scheme(),
                if hop > 0 { " (after a redirect)" } else { "" }
            )));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(ApiError::bad_request("`url` has no host"));
        }
        egress
            .check_url(&url)
            .map_err(|e| refused(&e.to_string()))?;
        let r = tokio::time::timeout(IDLE, client.get(url.clone()).send())
            .await
            .map_err(|_| unreachable(&host, "no answer in time"))?
            .map_err(|e| match shared::storage::unreachable(&host, &e) {
                StorageError::EgressDenied(m) => refused(&m),
                other => unreachable(&host, &other.to_string()),
            })?;
        let status = r.status();
        if status.is_redirection() {
            let next = r
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        format!("{host} answered {status} without a usable Location"),
                    )
                })?;
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("{host} answered {status}"),
            ));
        }
        return Ok(r);
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("the URL redirected more than {MAX_REDIRECTS} times"),
    ))
}

/// A URL the SSRF guard refused.
fn refused(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "url_not_allowed",
        format!("the URL is not fetched: {why}"),
    )
}

fn unreachable(host: &str, cause: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        format!("cannot fetch from {host}: {cause}"),
    )
}

/// What went wrong reading the source, without the URL (it may carry a signature).
fn reqwest_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no data in time".into()
    } else if e.is_body() || e.is_decode() {
        "the connection broke".into()
    } else {
        "the transfer failed".into()
    }
}
