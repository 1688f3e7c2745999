//! File downloads: streamed, with a single `Range`, validators and preconditions; large
//! files redirected to a spoke.

use super::direct::{direct_url, Direct};
use super::{attachment, insert, mime_type, not_found_as, stat_file, FilePath};
use crate::api::conditional::{self, Decision};
use crate::api::{ApiPath, CommonErrors};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use shared::storage::{ByteRange, StorageError};

/// Download a file's content. Supports a single `Range` (206) with `If-Range`, `ETag` and
/// `Last-Modified`, `If-None-Match` (weak comparison) and `If-Modified-Since` (304), and
/// `If-Match` / `If-Unmodified-Since` (412).
#[utoipa::path(get, path = "/v1/accounts/{acc}/storage/files/{id}/contents", tag = "storage",
    params(FilePath,
           ("Range" = Option<String>, Header, description = "bytes=START-END"),
           ("If-None-Match" = Option<String>, Header, description = "ETags (weak comparison): 304 when one matches")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 304, description = "Not modified"),
              (status = 307, description = "Large file: fetch it from the spoke at `Location`"),
              (status = 412, body = crate::error::ErrorBody),
              (status = 416, body = crate::error::ErrorBody), CommonErrors))]
pub(super) async fn download_file(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<FilePath>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (a, path) = p.resolve(&state, &caller).await?;
    let e = stat_file(&a, &path).await?;
    // Preconditions first: a 304 or 412 beats a redirect.
    let mut etag = None;
    if conditional::has_preconditions(&headers) {
        let tag = a.connector.etag(&e).await.map_err(not_found_as("file"))?;
        let d = conditional::evaluate(&headers, true, Some(&tag), e.modified);
        if d != Decision::Proceed {
            return Ok(conditional::answer(d, Some(&tag), e.modified));
        }
        etag = Some(tag);
    }
    // Large whole-file downloads go straight to a spoke near the storage (without hashing
    // the file here when the provider has no ETag: its bytes should not cross the hub).
    if e.size >= state.config.offload.threshold && !headers.contains_key(header::RANGE) {
        if let Some((url, _)) = direct_url(&state, &a, &path, Direct::Download, 600).await? {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            insert(&mut r, header::LOCATION, &url);
            return Ok(r);
        }
    }
    // Without preconditions a file that keeps changing while it is hashed (concurrent
    // overwrites) is still sent, without an ETag, rather than failing the read.
    let etag = match etag {
        Some(t) => Some(t),
        None => match a.connector.etag(&e).await {
            Ok(t) => Some(t),
            Err(StorageError::Unavailable(_)) => a.connector.known_etag(&e).await,
            Err(err) => return Err(not_found_as("file")(err)),
        },
    };
    // If-Range takes a strong ETag; a date (or anything else) sends the whole file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| Some(v.trim()) == etag.as_deref());
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(r, e.size),
        _ => RangeRequest::Full,
    };
    let (status, read_range, len) = match range {
        RangeRequest::Full => (StatusCode::OK, None, e.size),
        RangeRequest::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "requested range is not satisfiable",
            )
            .into_response();
            insert(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes */{}", e.size),
            );
            return Ok(r);
        }
        RangeRequest::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            Some(ByteRange {
                start,
                len: Some(end - start + 1),
            }),
            end - start + 1,
        ),
    };
    let stream = if len == 0 {
        futures::stream::empty().boxed()
    } else {
        a.connector.read(&path, read_range).await?.boxed()
    };
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    insert(&mut r, header::CONTENT_TYPE, &mime_type(&e));
    insert(&mut r, header::CONTENT_LENGTH, &len.to_string());
    conditional::set_validators(&mut r, etag.as_deref(), e.modified);
    insert(&mut r, header::ACCEPT_RANGES, "bytes");
    insert(
        &mut r,
        header::CONTENT_DISPOSITION,
        &attachment(e.path.name()),
    );
    if let Some((start, end)) = read_range.map(|r| (r.start, r.start + len - 1)) {
        insert(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{end}/{}", e.size),
        );
    }
    Ok(r)
}

/// A parsed `Range` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Full,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `size` bytes. Malformed and multi-range
/// headers are ignored (the full file is sent), as RFC 9110 allows.
fn parse_range(h: &str, size: u64) -> RangeRequest {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), _) if start >= size => RangeRequest::Unsatisfiable,
        (Ok(start), Ok(end)) if end >= start => RangeRequest::Part {
            start,
            end: end.min(size - 1),
        },
        (Ok(_), Ok(_)) => RangeRequest::Full,
        (Ok(start), Err(_)) if b.is_empty() => RangeRequest::Part {
            start,
            end: size - 1,
        },
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start: size.saturating_sub(suffix),
                    end: size - 1,
                }
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeRequest::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeRequest::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeRequest::Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), RangeRequest::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=x-y", 100), RangeRequest::Full);
    }
}
