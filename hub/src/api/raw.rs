//! The pass-through API (`POST /v1/accounts/{acc}/raw`): a request to the account's own
//! provider, with the account's credentials added, for what the unified API does not cover.
//!
//! `X-Kloudless-Raw-URI` is relative to the account's API base (S3: the bucket; Azure Blob:
//! the container; WebDAV: the endpoint; Dropbox, Google Drive, OneDrive: the API base of the
//! delta detectors, `events.detect.services.<svc>.api_url`, by default
//! `https://api.dropboxapi.com/2`, `https://www.googleapis.com/drive/v3` and
//! `https://graph.microsoft.com/v1.0`) or absolute on that same origin (Dropbox: also its
//! content host `https://content.dropboxapi.com`, for uploads and downloads, when the API base
//! is Dropbox's own); any other origin is refused, so the credentials never go anywhere else.
//! `X-Kloudless-Raw-Method` (default GET) and `X-Kloudless-Raw-Headers` (a JSON object) shape
//! the request; the body streams through for methods that carry one. S3 requests are signed
//! with SigV4 (payload unsigned), Azure with Shared Key, WebDAV with its basic credentials.
//!
//! Dropbox, Google Drive and OneDrive requests carry the account's OAuth access token
//! (`Authorization: Bearer`), the one the delta detectors keep and refresh
//! ([`crate::detect::provider::Bearer`]: a token either refreshed serves both). An account
//! without one gets one from its refresh token first. On a 401 the token is refreshed once (the
//! OAuth 2 `refresh_token` grant, with the account's client id and secret) and the request sent
//! again, but only when it had no body or an empty one: a streamed body cannot be replayed, so
//! the provider's 401 comes back as it is. Tokens never appear in logs or error messages.
//!
//! The provider's status, headers (without hop-by-hop and authentication headers) and body
//! stream back unchanged. Every request, a token refresh and a retry included, goes through the
//! storage egress guard and draws from the account's provider budget, like every provider
//! request. `fs` and SFTP have no HTTP API (nor GCS here): 400 `raw_not_supported`.

use super::{ApiPath, CommonErrors};
use crate::auth::Caller;
use crate::config::{DeltaEndpoints, DetectConfig};
use crate::detect::provider::{Bearer, RefreshError};
use crate::error::{ApiError, ApiResult};
use crate::state::{Account, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use futures::TryStreamExt;
use shared::storage::sign::{canonical_path, SharedKey, SigV4, UNSIGNED_PAYLOAD};
use shared::storage::{OAuthSettings, ServiceConfig, StorageError};
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

/// Dropbox's content host (uploads and downloads), next to its default API base.
const DROPBOX_CONTENT: &str = "https://content.dropboxapi.com";

/// How the account's requests are made.
enum Target<'a> {
    S3 {
        base: String,
        region: String,
    },
    Azure {
        base: String,
    },
    Webdav {
        base: String,
    },
    /// Dropbox, Google Drive, OneDrive: the delta detectors' API base (`content`: Dropbox's
    /// content host, an origin absolute URIs may also name) and the account's OAuth token.
    OAuth {
        base: String,
        content: Option<reqwest::Url>,
        endpoints: Box<DeltaEndpoints>,
        service: &'static str,
        settings: &'a OAuthSettings,
    },
}

fn target<'a>(settings: &'a ServiceConfig, detect: &DetectConfig) -> ApiResult<Target<'a>> {
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
        ServiceConfig::Dropbox(s) | ServiceConfig::Gdrive(s) | ServiceConfig::Onedrive(s) => {
            let service = settings.name();
            let endpoints = detect.delta_endpoints(service).ok_or_else(|| {
                ApiError::internal(format_args!("no API endpoints for {service}"))
            })?;
            // Only Dropbox's own API has its content host beside it: a configured base (a
            // proxy, a test server) is the only origin its requests may go to.
            let own = DetectConfig::default()
                .delta_endpoints(service)
                .is_some_and(|d| d.api.origin() == endpoints.api.origin());
            let content = if service == "dropbox" && own {
                Some(reqwest::Url::parse(DROPBOX_CONTENT).map_err(ApiError::internal)?)
            } else {
                None
            };
            Ok(Target::OAuth {
                base: endpoints.api.as_str().trim_end_matches('/').to_owned(),
                content,
                endpoints: Box::new(endpoints),
                service,
                settings: s,
            })
        }
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

/// The URL a raw URI names: relative to `base`, or absolute on `base`'s own origin or on
/// `also` (Dropbox's content host).
fn raw_url(base: &str, also: Option<&reqwest::Url>, uri: &str) -> ApiResult<reqwest::Url> {
    let base_url = reqwest::Url::parse(base).map_err(ApiError::internal)?;
    let allowed = |u: &reqwest::Url| {
        u.origin() == base_url.origin() || also.is_some_and(|a| a.origin() == u.origin())
    };
    let uri = uri.trim();
    let url = if uri.starts_with("http://") || uri.starts_with("https://") {
        let u = reqwest::Url::parse(uri)
            .map_err(|e| ApiError::bad_request(format!("X-Kloudless-Raw-URI is not a URL: {e}")))?;
        if !allowed(&u) {
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
    if !allowed(&url) || !url.username().is_empty() {
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

/// One provider request, as a retry sends it again.
struct Outgoing<'a> {
    /// The egress guard's client.
    client: &'a reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    /// The caller's headers and the request's signature (not the bearer token).
    headers: Vec<(String, String)>,
    with_body: bool,
}

impl Outgoing<'_> {
    /// Sends the request with `bearer` and `body`, within the account's budget: a
    /// pass-through request is one more provider request.
    async fn send(
        &self,
        a: &Account,
        bearer: Option<&str>,
        body: Option<reqwest::Body>,
    ) -> ApiResult<reqwest::Response> {
        let mut rb = self.client.request(self.method.clone(), self.url.clone());
        for (k, v) in &self.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let Some(token) = bearer {
            // Marked sensitive: never shown by a `Debug` of the request.
            rb = rb.bearer_auth(token);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let host = self.url.host_str().unwrap_or_default();
        a.connector
            .budget()
            .send(rb)
            .await
            .map_err(|e| ApiError::from(StorageError::from(e)))?
            .map_err(|e| ApiError::from(shared::storage::unreachable(host, &e)))
    }
}

/// A request to an OAuth service with the account's access token (got from its refresh token
/// first when it has none). On a 401 the token is refreshed once and the request sent again,
/// when it is `replayable`; otherwise the provider's 401 is the answer.
async fn with_bearer(
    state: &AppState,
    a: &Account,
    out: &Outgoing<'_>,
    service: &str,
    bearer: &Bearer<'_>,
    body: Option<reqwest::Body>,
    replayable: bool,
) -> ApiResult<reqwest::Response> {
    let token_host = bearer.token_url().host_str().unwrap_or_default();
    let refresh = || async move {
        bearer
            .refresh(
                out.client,
                &state.connect_options.egress,
                a.connector.budget(),
            )
            .await
            .map_err(|e| refresh_failed(service, token_host, e))
    };
    let (token, refreshed) = match bearer.token() {
        Some(t) => (t, false),
        None => (refresh().await?, true),
    };
    let resp = out.send(a, Some(&token), body).await?;
    if resp.status().as_u16() != 401 || refreshed || !replayable || !bearer.can_refresh() {
        return Ok(resp);
    }
    drop(resp);
    let token = refresh().await?;
    // The first body, if any, was empty: so is this one.
    let empty = || reqwest::Body::wrap_stream(futures::stream::empty::<std::io::Result<Bytes>>());
    out.send(a, Some(&token), out.with_body.then(empty)).await
}

/// The API's answer when the access token could not be refreshed (it never quotes the token
/// endpoint's answer, which may quote the secrets).
pub(crate) fn refresh_failed(service: &str, token_host: &str, e: RefreshError) -> ApiError {
    match e {
        RefreshError::NotRefreshable => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            format!(
                "the {service} account has no access token, and no refresh token with client id \
                 and secret; reconnect the account"
            ),
        ),
        RefreshError::Refused(status) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            format!(
                "refreshing the {service} access token failed ({status}); reconnect the account"
            ),
        ),
        RefreshError::Spent(s) => StorageError::BudgetSpent(s).into(),
        RefreshError::EgressDenied(m) => StorageError::EgressDenied(m).into(),
        RefreshError::Unreachable(e) => shared::storage::unreachable(token_host, &e).into(),
        RefreshError::Answer(m) => StorageError::Unavailable(format!("token refresh: {m}")).into(),
    }
}

/// Send a request to the account's provider with its credentials (see the module comment).
#[utoipa::path(post, path = "/v1/accounts/{acc}/raw", tag = "accounts",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"),
           ("X-Kloudless-Raw-URI" = String, Header, description = "Relative to the account's API base (S3 bucket, Azure container, WebDAV endpoint; Dropbox, Google Drive, OneDrive API), or absolute on its host (Dropbox: also its content host)"),
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
    let target = target(&a.settings, &state.config.events.detect)?;
    let (base, also) = match &target {
        Target::S3 { base, .. } | Target::Azure { base } | Target::Webdav { base } => (base, None),
        Target::OAuth { base, content, .. } => (base, content.as_ref()),
    };
    let mut url = raw_url(base, also, &uri)?;
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
        // OAuth services: the bearer token is added per attempt (see `with_bearer`).
        _ => Vec::new(),
    };
    let egress = &state.connect_options.egress;
    egress
        .check_url(&url)
        .map_err(|e| ApiError::from(StorageError::EgressDenied(e.to_string())))?;
    let client = egress
        .http_builder(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(
            state.config.storage.io_timeout_secs.max(1),
        ))
        .build()
        .map_err(ApiError::internal)?;
    headers.extend(auth);
    let outgoing = Outgoing {
        client: &client,
        method,
        url,
        headers,
        with_body,
    };
    let body = with_body.then(|| reqwest::Body::wrap_stream(req.into_body().into_data_stream()));
    let resp = match target {
        Target::OAuth {
            endpoints,
            service,
            settings,
            ..
        } => {
            let bearer = Bearer::new(a.id(), settings, &endpoints);
            // An empty body is sent again as easily as none; a streamed one is gone.
            let replayable = !with_body || length == 0;
            with_bearer(&state, &a, &outgoing, service, &bearer, body, replayable).await?
        }
        _ => outgoing.send(&a, None, body).await?,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dropbox() -> ServiceConfig {
        ServiceConfig::Dropbox(OAuthSettings {
            access_token: Some("t".into()),
            refresh_token: None,
            client_id: None,
            client_secret: None,
            root: None,
        })
    }

    /// The base and the other origin absolute URIs may name.
    fn origins(settings: &ServiceConfig, detect: &DetectConfig) -> (String, Option<String>) {
        match target(settings, detect).expect("a target") {
            Target::OAuth { base, content, .. } => {
                (base, content.map(|c| c.origin().ascii_serialization()))
            }
            _ => panic!("not an OAuth target"),
        }
    }

    #[test]
    fn dropbox_content_host_only_beside_dropbox_own_api() {
        let detect = DetectConfig::default();
        let settings = dropbox();
        let (base, content) = origins(&settings, &detect);
        assert_eq!(base, "https://api.dropboxapi.com/2");
        assert_eq!(content.as_deref(), Some("https://content.dropboxapi.com"));
        let content = reqwest::Url::parse(DROPBOX_CONTENT).expect("a URL");
        let ok = |uri: &str| {
            raw_url(&base, Some(&content), uri)
                .map(String::from)
                .map_err(|e| e.message().to_owned())
        };
        assert_eq!(
            ok("/files/get_metadata").as_deref(),
            Ok("https://api.dropboxapi.com/2/files/get_metadata")
        );
        assert_eq!(
            ok("https://content.dropboxapi.com/2/files/download").as_deref(),
            Ok("https://content.dropboxapi.com/2/files/download")
        );
        for other in [
            "https://evil.dropboxapi.com/2/files/download",
            "http://content.dropboxapi.com/2/files/download",
            "https://content.dropboxapi.com:8443/2/files/download",
            "https://user@content.dropboxapi.com/2/files/download",
            "https://www.googleapis.com/drive/v3/files",
        ] {
            assert!(ok(other).is_err(), "{other}");
        }

        // A configured API base (a proxy, a test server) is the only origin.
        let mut detect = DetectConfig::default();
        detect.services.insert(
            "dropbox".into(),
            serde_yaml_ng::from_str("api_url: http://127.0.0.1:9/2").expect("yaml"),
        );
        assert_eq!(
            origins(&settings, &detect),
            ("http://127.0.0.1:9/2".to_owned(), None)
        );
        // Google Drive and OneDrive have one origin each.
        for (settings, base) in [
            (
                ServiceConfig::Gdrive(OAuthSettings {
                    access_token: Some("t".into()),
                    refresh_token: None,
                    client_id: None,
                    client_secret: None,
                    root: None,
                }),
                "https://www.googleapis.com/drive/v3",
            ),
            (
                ServiceConfig::Onedrive(OAuthSettings {
                    access_token: Some("t".into()),
                    refresh_token: None,
                    client_id: None,
                    client_secret: None,
                    root: None,
                }),
                "https://graph.microsoft.com/v1.0",
            ),
        ] {
            assert_eq!(
                origins(&settings, &DetectConfig::default()),
                (base.to_owned(), None)
            );
        }
    }
}
