//! The pass-through API (`POST /v1/accounts/{acc}/raw`): a request to the account's own
//! provider, with the account's credentials added, for what the unified API does not cover.
//!
//! `X-Kloudless-Raw-URI` is relative to the account's API base (S3: the bucket; Azure Blob:
//! the container; WebDAV: the endpoint) or absolute on that same origin; any other origin is
//! refused, so the credentials never go anywhere else. `X-Kloudless-Raw-Method` (default GET)
//! and `X-Kloudless-Raw-Headers` (a JSON object) shape the request; the body streams through
//! for methods that carry one. S3 requests are signed with SigV4 (payload unsigned), Azure with
//! Shared Key, WebDAV with its basic credentials. The provider's status, headers (without
//! hop-by-hop and authentication headers) and body stream back unchanged. The request goes
//! through the storage egress guard like every provider request. `fs` and SFTP have no HTTP
//! API: 400 `raw_not_supported`.

use super::{ApiPath, CommonErrors};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use futures::TryStreamExt;
use shared::storage::sign::{canonical_path, SharedKey, SigV4, UNSIGNED_PAYLOAD};
use shared::storage::ServiceConfig;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(raw))
}

/// Marks a response as the provider's own, so the error-shaping middleware leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassThrough;

/// Headers a caller may not set on a raw request (the hub sets or signs them).
const RESERVED: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "cookie",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "x-ms-date",
];

/// Response headers never passed back (hop-by-hop, or about the provider's authentication).
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "www-authenticate",
    "set-cookie",
];

/// How the account's requests are made.
enum Target {
    S3 { base: String, region: String },
    Azure { base: String },
    Webdav { base: String },
}

fn target(settings: &ServiceConfig) -> ApiResult<Target> {
    match settings {
        ServiceConfig::S3(s) => {
            let region = s.region.clone().unwrap_or_else(|| "us-east-1".into());
            let endpoint = s
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
            Ok(Target::S3 {
                base: format!("{}/{}", endpoint.trim_end_matches('/'), s.bucket),
                region,
            })
        }
        ServiceConfig::Azblob(s) => Ok(Target::Azure {
            base: format!("{}/{}", s.endpoint.trim_end_matches('/'), s.container),
        }),
        ServiceConfig::Webdav(s) => Ok(Target::Webdav {
            base: s.endpoint.trim_end_matches('/').to_owned(),
        }),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "raw_not_supported",
            format!(
                "raw requests are not supported for {} accounts",
                other.name()
            ),
        )),
    }
}

/// The URL a raw URI names: relative to `base`, or absolute on `base`'s own origin.
fn raw_url(base: &str, uri: &str) -> ApiResult<reqwest::Url> {
    let base_url = reqwest::Url::parse(base).map_err(ApiError::internal)?;
    let uri = uri.trim();
    let url = if uri.starts_with("http://") || uri.starts_with("https://") {
        let u = reqwest::Url::parse(uri)
            .map_err(|e| ApiError::bad_request(format!("X-Kloudless-Raw-URI is not a URL: {e}")))?;
        if u.origin() != base_url.origin() {
            return Err(ApiError::bad_request(format!(
                "X-Kloudless-Raw-URI must stay on the account's provider ({}); another host \
                 never gets the account's credentials",
                base_url.origin().ascii_serialization()
            )));
        }
        u
    } else if uri.is_empty() || uri.starts_with('/') || uri.starts_with('?') {
        reqwest::Url::parse(&format!("{base}{uri}"))
            .map_err(|e| ApiError::bad_request(format!("X-Kloudless-Raw-URI: {e}")))?
    } else {
        return Err(ApiError::bad_request(
            "X-Kloudless-Raw-URI must start with `/` or `?` (relative to the account's API \
             base) or be an absolute URL on the provider's host",
        ));
    };
    if url.origin() != base_url.origin() || !url.username().is_empty() {
        return Err(ApiError::bad_request(
            "X-Kloudless-Raw-URI must stay on the account's provider",
        ));
    }
    Ok(url)
}

/// `X-Kloudless-Raw-Headers`: a JSON object of string values, none of them reserved.
fn raw_headers(h: &HeaderMap) -> ApiResult<Vec<(String, String)>> {
    let Some(v) = h.get("x-kloudless-raw-headers") else {
        return Ok(Vec::new());
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(v.as_bytes())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "X-Kloudless-Raw-Headers must be a JSON object: {e}"
            ))
        })?;
    let mut out = Vec::new();
    for (k, v) in map {
        let name = k.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() || name.starts_with("proxy-") {
            return Err(ApiError::bad_request(format!(
                "X-Kloudless-Raw-Headers: `{k}` is not a header name this API forwards"
            )));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "X-Kloudless-Raw-Headers: `{k}` is set by the hub"
            )));
        }
        let value = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "X-Kloudless-Raw-Headers: `{k}` must be a string"
                )))
            }
        };
        if HeaderValue::from_str(&value).is_err() {
            return Err(ApiError::bad_request(format!(
                "X-Kloudless-Raw-Headers: `{k}` has characters a header cannot carry"
            )));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Send a request to the account's provider with its credentials (see the module comment).
#[utoipa::path(post, path = "/v1/accounts/{acc}/raw", tag = "accounts",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"),
           ("X-Kloudless-Raw-URI" = String, Header, description = "Relative to the account's API base, or absolute on its host"),
           ("X-Kloudless-Raw-Method" = Option<String>, Header, description = "GET (default), PUT, POST, PATCH, DELETE, HEAD, PROPFIND, ..."),
           ("X-Kloudless-Raw-Headers" = Option<String>, Header, description = "JSON object of headers to send")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "The provider's answer, whatever its status"),
              (status = 411, body = crate::error::ErrorBody), CommonErrors))]
async fn raw(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    req: Request,
) -> ApiResult<Response> {
    let a = super::storage::account(&state, &caller, &acc).await?;
    let h = req.headers();
    let uri = h
        .get("x-kloudless-raw-uri")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("the X-Kloudless-Raw-URI header is required"))?
        .to_owned();
    let method = h
        .get("x-kloudless-raw-method")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("GET")
        .trim()
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| ApiError::bad_request("X-Kloudless-Raw-Method is not an HTTP method"))?;
    let mut headers = raw_headers(h)?;
    let target = target(&a.settings)?;
    let base = match &target {
        Target::S3 { base, .. } | Target::Azure { base } | Target::Webdav { base } => base,
    };
    let mut url = raw_url(base, &uri)?;
    let with_body = !matches!(
        method,
        reqwest::Method::GET
            | reqwest::Method::HEAD
            | reqwest::Method::DELETE
            | reqwest::Method::OPTIONS
    );
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Without Content-Length or Transfer-Encoding a request has no body (RFC 9112).
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    let length = match (with_body, length) {
        (false, _) => 0,
        (true, Some(n)) => n,
        (true, None) if !chunked => 0,
        (true, None) => {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "a raw request with a body needs a Content-Length",
            ))
        }
    };
    if with_body {
        if let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), ct.to_owned()));
            }
        }
        headers.push(("content-length".into(), length.to_string()));
    }
    let now = jiff::Timestamp::now();
    let auth: Vec<(String, String)> = match (&target, &a.settings) {
        (Target::S3 { region, .. }, ServiceConfig::S3(s)) => {
            let path = canonical_path(&url);
            url.set_path(&path);
            let signed: Vec<(String, String)> = headers
                .iter()
                .filter(|(k, _)| k != "content-length")
                .cloned()
                .collect();
            SigV4 {
                access_key_id: &s.access_key_id,
                secret_access_key: &s.secret_access_key,
                region,
                service: "s3",
            }
            .sign(method.as_str(), &url, &signed, UNSIGNED_PAYLOAD, now)
        }
        (Target::Azure { .. }, ServiceConfig::Azblob(s)) => SharedKey {
            account_name: &s.account_name,
            account_key: &s.account_key,
        }
        .sign(method.as_str(), &url, &headers, now)
        .map_err(|_| ApiError::internal("the account key is not base64"))?,
        (Target::Webdav { .. }, ServiceConfig::Webdav(s)) => match &s.username {
            Some(u) => vec![(
                "authorization".into(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{u}:{}", s.password.as_deref().unwrap_or("")))
                ),
            )],
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    let egress = &state.connect_options.egress;
    let host = url.host_str().unwrap_or_default().to_owned();
    egress
        .check_url(&url)
        .map_err(|e| ApiError::from(shared::storage::StorageError::EgressDenied(e.to_string())))?;
    let client = egress
        .http_builder(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(
            state.config.storage.io_timeout_secs.max(1),
        ))
        .build()
        .map_err(ApiError::internal)?;
    let mut rb = client.request(method, url);
    for (k, v) in headers.iter().chain(auth.iter()) {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if with_body {
        let body = req.into_body().into_data_stream();
        rb = rb.body(reqwest::Body::wrap_stream(body));
    }
    // The account's budget applies: a pass-through request is one more provider request.
    let resp = a
        .connector
        .budget()
        .send(rb)
        .await
        .map_err(|e| ApiError::from(shared::storage::StorageError::from(e)))?
        .map_err(|e| ApiError::from(shared::storage::unreachable(&host, &e)))?;
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !DROPPED.contains(&k.as_str()) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let mut r = out
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)?;
    r.extensions_mut().insert(PassThrough);
    Ok(r)
}
