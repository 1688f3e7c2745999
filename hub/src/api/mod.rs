//! The REST API: router assembly, the per-request middleware (request id, metrics, JSON
//! errors), and extractors that turn malformed input into `{"error_code","message","id"}`.

mod accounts;
pub use accounts::connect_account;
mod conditional;
mod events;
pub use network::revoke as revoke_spoke;
mod meta;
pub(crate) mod oauth;
pub(crate) mod webhooks;
pub use meta::create_api_key;
pub(crate) use meta::{app_view, is_bidi_control, key_view, validate_app_name};
pub(crate) mod network;
mod ops;
mod raw;
pub(crate) mod storage;
pub(crate) mod transfers;

use crate::db::topology::{in_request, Position, RequestScope, POSITION_HEADER};
use crate::error::{ApiError, ErrorBody, REQUEST_ID};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::model::ObjectList;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use utoipa::{IntoParams, IntoResponses, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard API",
        description = "Unified storage API, wire-compatible with the Kloudless v1 Storage API."
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    security(("api_key" = []), ("bearer" = []))
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`APIKey <key>`",
            ))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Error responses every authenticated route may give.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum CommonErrors {
    /// Invalid input.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// Missing or invalid credentials.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Not found, or not reachable with these credentials.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Request body too large.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The storage provider is rate limiting (see `Retry-After`).
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// Internal error.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The storage provider failed.
    #[response(status = 502)]
    BadGateway(ErrorBody),
}

/// Builds the router with every route and its OpenAPI document.
pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(meta::routes())
        .merge(webhooks::routes())
        .merge(accounts::routes())
        .merge(storage::routes())
        .merge(events::routes())
        .merge(network::routes())
        .merge(transfers::routes())
        .merge(raw::routes())
        .merge(oauth::routes())
        .merge(ops::documented_routes())
        .split_for_parts();
    let doc = std::sync::Arc::new(doc);
    let json_limit = state.config.limits.max_json_body_bytes;
    let cors_state = state.clone();
    let routed = api
        .merge(ops::routes(doc))
        .route("/ui/assets/{name}", axum::routing::get(crate::pages::asset))
        .merge(crate::portal::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .layer(DefaultBodyLimit::max(json_limit))
        .with_state(state);
    // Outside the routing (a router's own layers run after it has picked a route): every
    // route also answers with a trailing slash, as kloudless-js and the file picker send.
    Router::new()
        .fallback_service(routed)
        .layer(axum::middleware::from_fn_with_state(
            cors_state,
            crate::cors::layer,
        ))
        .layer(axum::middleware::map_request(trim_trailing_slash))
}

/// `/v1/accounts/1/` → `/v1/accounts/1` (the query kept); `/` stays.
async fn trim_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.ends_with("//") {
        let trimmed = &path[..path.len() - 1];
        let p_and_q = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = p_and_q.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// A query-string boolean as every Kloudless SDK sends it: `true`/`false` in any case
/// (Python's `requests` sends `True`), or `1`/`0`. For `#[serde(default, deserialize_with)]`.
pub(crate) fn query_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        t if t.eq_ignore_ascii_case("true") || t == "1" => Ok(Some(true)),
        t if t.eq_ignore_ascii_case("false") || t == "0" => Ok(Some(false)),
        other => Err(serde::de::Error::custom(format!(
            "`{other}` is not a boolean (true, false, 1 or 0)"
        ))),
    }
}

/// Per request: a request id (task-local, echoed in `X-Request-Id`), metrics, and a JSON body
/// for any error response that lacks one (405, 413 and the like from the framework).
async fn request_context(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = crate::metrics::method_label(req.method()).to_owned();
    let labels = RouteLabels { route };
    let bytes_in = state.metrics.bytes_in.get_or_create(&labels).clone();
    let req = req.map(|b| {
        Body::new(CountingBody {
            inner: b,
            counter: bytes_in,
        })
    });

    let too_large = headers_too_large(req.headers());
    let client_ip = req
        .extensions()
        .get::<crate::events::ClientAddr>()
        .map(|a| a.0);
    let position = req
        .headers()
        .get(POSITION_HEADER)
        .map(|v| v.to_str().unwrap_or("").parse::<Position>());
    let scope = Arc::new(RequestScope::default());
    let db = state.db.clone();
    // Provider requests made for this request wait at most this long for their budget.
    let wait = state.config.budgets.api_max_wait.0;
    let mut resp = REQUEST_ID
        .scope(
            id.clone(),
            in_request(
                scope.clone(),
                crate::events::REQUEST_START.scope(
                    crate::state::now_ms(),
                    crate::events::CLIENT_IP.scope(client_ip, async move {
                        if let Some(message) = too_large {
                            return ApiError::new(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request_header_fields_too_large",
                                message,
                            )
                            .into_response();
                        }
                        match position {
                            Some(Err(m)) => {
                                return ApiError::new(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_position",
                                    m,
                                )
                                .into_response()
                            }
                            Some(Ok(p)) => db.await_position(p).await,
                            None => {}
                        }
                        let raw = storage::raw_data::asked(req.headers());
                        let (mut resp, admission) = shared::budget::scope(
                            wait,
                            storage::raw_data::RAW_DATA.scope(raw, next.run(req)),
                        )
                        .await;
                        if let Some(a) = admission {
                            budget_headers(resp.headers_mut(), &a);
                        }
                        let passed = resp.extensions().get::<raw::PassThrough>().is_some();
                        if !passed
                            && (resp.status().is_client_error() || resp.status().is_server_error())
                        {
                            ensure_json_error(resp).await
                        } else {
                            resp
                        }
                    }),
                ),
            ),
        )
        .await;
    if let Some(p) = scope.position() {
        if let Ok(v) = HeaderValue::from_str(&p.to_string()) {
            resp.headers_mut().insert(POSITION_HEADER, v);
        }
    }

    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route: labels.route.clone(),
            status,
        })
        .inc();
    let bytes_out = state.metrics.bytes_out.get_or_create(&labels).clone();
    resp.map(|b| {
        Body::new(CountingBody {
            inner: b,
            counter: bytes_out,
        })
    })
}

/// The budget of the account a request used, as the common rate-limit headers: the average
/// rate per second, the requests that could go at once now, and seconds until the bucket is
/// full again.
fn budget_headers(h: &mut axum::http::HeaderMap, a: &shared::budget::Admission) {
    if a.limit.is_unlimited() {
        return;
    }
    let rate = a.limit.rate();
    let rate = if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    };
    let reset = a.full_in.as_millis().div_ceil(1000).to_string();
    for (name, value) in [
        ("x-ratelimit-limit", rate),
        ("x-ratelimit-remaining", a.remaining.to_string()),
        ("x-ratelimit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

/// Most header fields a request may carry (hyper's own default, kept; hyper itself is set to
/// a higher hard limit so that this check answers first, see `crate::http`).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values a request may carry.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why the request's header fields are too large, if they are.
fn headers_too_large(h: &axum::http::HeaderMap) -> Option<String> {
    if h.len() > MAX_HEADERS {
        return Some(format!(
            "the request has {} header fields; at most {MAX_HEADERS} are accepted",
            h.len()
        ));
    }
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (bytes > MAX_HEADER_BYTES).then(|| {
        format!("the request's header fields are {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted")
    })
}

/// Gives framework-made error responses (405, 413, 404 from extractors) our JSON error shape.
async fn ensure_json_error(resp: Response) -> Response {
    // JSON errors are ours; HTML is a page meant for a browser (a link's password form).
    let is_ours = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if is_ours {
        return resp;
    }
    let status = resp.status();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("request_too_large", "request body is too large"),
        StatusCode::NOT_FOUND => ("not_found", "not found"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_parameters", "unsupported content type"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "request_header_fields_too_large",
            "the request's header fields are too large",
        ),
        s if s.is_server_error() => ("internal_server_error", "internal error"),
        _ => ("invalid_parameters", "invalid request"),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::CONTENT_RANGE] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

pin_project_lite::pin_project! {
    /// A body that adds the length of every data frame to a counter as it passes.
    struct CountingBody {
        #[pin]
        inner: Body,
        counter: Counter,
    }
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                this.counter.inc_by(d.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// JSON body extractor whose errors name the offending field and use our error shape. It does
/// not insist on a `Content-Type`, as some Kloudless clients omit it.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "request body is too large",
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {e}"))
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    ApiError::bad_request(format!("invalid JSON body: {}", e.inner()))
                } else {
                    ApiError::bad_request(format!("invalid JSON body at `{path}`: {}", e.inner()))
                }
            })
    }
}

/// Query-string extractor with our error shape.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| {
                ApiError::bad_request(format!("invalid query parameters: {}", e.body_text()))
            })
    }
}

/// Path-parameter extractor with our error shape. A parameter that does not parse is named
/// with what it must be ("`app` must be a numeric application id"), not the parser's words.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        let e = match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => return Ok(ApiPath(v)),
            Err(e) => e,
        };
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .ok();
        let keys: Vec<String> = raw
            .iter()
            .flat_map(|r| r.iter().map(|(k, _)| k.to_owned()))
            .collect();
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let key = match &e {
            PathRejection::FailedToDeserializePathParams(d) => match d.kind() {
                ErrorKind::ParseErrorAtKey { key, .. } => Some(key.clone()),
                ErrorKind::ParseErrorAtIndex { index, .. } => keys.get(*index).cloned(),
                ErrorKind::ParseError { .. } if keys.len() == 1 => keys.first().cloned(),
                _ => None,
            },
            _ => None,
        };
        Err(match key {
            Some(key) => {
                let what = describe_param(&route, &key);
                ApiError::bad_request(format!("`{key}` must be {what}"))
            }
            None => ApiError::bad_request(format!("invalid path parameter: {}", e.body_text())),
        })
    }
}

/// What a numeric path parameter must be, for error messages.
fn describe_param(route: &str, key: &str) -> &'static str {
    match key {
        "app" => "a numeric application id",
        "acc" => "a numeric account id or `me`",
        "spoke" => "a numeric spoke id",
        _ if route.contains("/tasks/") => "a numeric task id",
        _ if route.contains("/transfers/") => "a numeric transfer id",
        _ => "a number",
    }
}

/// Most items a page may hold.
pub const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 100;

/// `page` (from 1) and `page_size` (1 to 1000) query parameters.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Page number, starting at 1.
    #[serde(default)]
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub page_size: Option<u32>,
}

impl Paging {
    /// Validated `(page, page_size)`.
    pub fn resolve(&self) -> Result<(u32, u32), ApiError> {
        let page = self.page.unwrap_or(1);
        let size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page == 0 {
            return Err(ApiError::bad_request("page starts at 1"));
        }
        if size == 0 || size > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        Ok((page, size))
    }

    /// Offset of the first item.
    pub fn offset(page: u32, size: u32) -> usize {
        (page as usize - 1) * size as usize
    }
}

/// Builds a page from the items of this page and the total count.
pub fn page_of<T: ToSchema>(
    objects: Vec<T>,
    page: u32,
    size: u32,
    total: usize,
    api: &'static str,
) -> ObjectList<T> {
    let more = Paging::offset(page, size) + objects.len() < total;
    ObjectList {
        kind: "object_list",
        api,
        count: objects.len(),
        objects,
        page,
        next_page: more.then_some(page + 1),
    }
}
