//! CORS for browser apps calling the API directly: an `Origin` some active application lists
//! in its `trusted_domains` gets `Access-Control-Allow-Origin` (that origin, never `*`, never
//! with credentials: the API takes keys and tokens in headers, not cookies) and preflights
//! answered; any other origin gets no CORS header at all, so the browser keeps the answer from
//! the page. The trusted set is read from the database at most every few seconds.

use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the trusted set is used before it is read again.
const REFRESH: Duration = Duration::from_secs(3);

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Content-MD5, Range, If-Match, \
    If-None-Match, If-Range, X-Kloudless-Metadata, X-Kloudless-Async, X-Kloudless-Raw-Data, \
    X-Kloudless-Raw-URI, X-Kloudless-Raw-Method, X-Kloudless-Raw-Headers";
const EXPOSE_HEADERS: &str = "X-Request-Id, Retry-After, X-RateLimit-Limit, \
    X-RateLimit-Remaining, X-RateLimit-Reset, Location, ETag, Content-Range, Content-Disposition";

/// The origins applications trust, cached.
#[derive(Debug, Default)]
pub struct TrustedOrigins {
    cached: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
}

impl TrustedOrigins {
    /// Forgets the cached set (an application's settings changed).
    pub fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn get(&self, state: &AppState) -> Arc<Vec<String>> {
        if let Some((at, list)) = &*self.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < REFRESH {
                return list.clone();
            }
        }
        let list = match state.db.trusted_origins().await {
            Ok(l) => Arc::new(l),
            // The database is away: no origin is trusted meanwhile (fail closed).
            Err(e) => {
                tracing::warn!(error = %e, "reading the trusted origins failed");
                Arc::new(Vec::new())
            }
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), list.clone()));
        list
    }
}

/// The request's `Origin`, when some application trusts it.
async fn trusted(state: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let list = state.cors.get(state).await;
    list.iter().any(|o| o == text).then(|| origin.clone())
}

/// The middleware: preflights of trusted origins answered here; their other requests get the
/// allow headers on the answer.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::ORIGIN) || !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let allowed = trusted(&state, req.headers()).await;
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(o) = allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        return r;
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(o) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    r
}
