//! HTTP conditional requests on files (RFC 9110 §13): `If-Match` and `If-Unmodified-Since`
//! guard `PUT`, `PATCH` and `DELETE` (412 when stale), `If-None-Match` and `If-Modified-Since`
//! make a `GET` answer 304, evaluated in the RFC's order. Also a per-file lock that serialises
//! conditional changes of one file on this hub, so that two clients holding the same ETag
//! cannot both pass the check and both write.

use crate::error::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::storage::etag_list_matches;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// What the preconditions of a request decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Perform the method.
    Proceed,
    /// `GET`: answer 304 with the validators, no body.
    NotModified,
    /// Answer 412 and change nothing.
    Failed,
}

/// True when the request carries a precondition this module evaluates.
pub(crate) fn has_preconditions(h: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|n| h.contains_key(n))
}

/// True when the request needs the ETag to be evaluated (dates alone do not).
pub(crate) fn needs_etag(h: &HeaderMap) -> bool {
    h.contains_key(header::IF_MATCH) || h.contains_key(header::IF_NONE_MATCH)
}

/// All values of a header, joined as one list (a client may split a list over fields).
fn list(h: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in h.get_all(name) {
        let v = String::from_utf8_lossy(v.as_bytes());
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(&v);
            }
            None => out = Some(v.into_owned()),
        }
    }
    out
}

/// An HTTP-date header as Unix seconds; `None` when absent or invalid (the RFC says to ignore
/// an invalid date).
fn date(h: &HeaderMap, name: &header::HeaderName) -> Option<i64> {
    let v = h.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Evaluates the preconditions of a request on an existing file whose strong ETag is `etag`
/// (`None` when the request needs none, see [`needs_etag`]) and whose modification time is
/// `modified_ms`. `safe` is true for `GET`/`HEAD`.
pub(crate) fn evaluate(
    h: &HeaderMap,
    safe: bool,
    etag: Option<&str>,
    modified_ms: Option<i64>,
) -> Decision {
    // Dates have one-second resolution: compare whole seconds.
    let modified = modified_ms.map(|ms| ms.div_euclid(1000));
    // 1. If-Match; 2. otherwise If-Unmodified-Since.
    if let Some(m) = list(h, &header::IF_MATCH) {
        if !etag.is_some_and(|e| etag_list_matches(&m, e, false)) {
            return Decision::Failed;
        }
    } else if let (Some(since), Some(modified)) = (date(h, &header::IF_UNMODIFIED_SINCE), modified)
    {
        if modified > since {
            return Decision::Failed;
        }
    }
    // 3. If-None-Match; 4. otherwise If-Modified-Since (GET and HEAD only).
    if let Some(m) = list(h, &header::IF_NONE_MATCH) {
        if etag.is_some_and(|e| etag_list_matches(&m, e, true)) {
            return if safe {
                Decision::NotModified
            } else {
                Decision::Failed
            };
        }
    } else if safe {
        if let (Some(since), Some(modified)) = (date(h, &header::IF_MODIFIED_SINCE), modified) {
            if modified <= since {
                return Decision::NotModified;
            }
        }
    }
    Decision::Proceed
}

/// `Last-Modified` text for Unix milliseconds.
pub(crate) fn http_date(ms: i64) -> Option<String> {
    let secs = u64::try_from(ms.div_euclid(1000)).ok()?;
    Some(httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

/// Sets `ETag` and `Last-Modified` on a response.
pub(crate) fn set_validators(r: &mut Response, etag: Option<&str>, modified_ms: Option<i64>) {
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        r.headers_mut().insert(header::ETAG, v);
    }
    if let Some(v) = modified_ms
        .and_then(http_date)
        .and_then(|d| HeaderValue::from_str(&d).ok())
    {
        r.headers_mut().insert(header::LAST_MODIFIED, v);
    }
}

/// The answer for a decision other than [`Decision::Proceed`].
pub(crate) fn answer(d: Decision, etag: Option<&str>, modified_ms: Option<i64>) -> Response {
    let mut r = match d {
        Decision::NotModified => StatusCode::NOT_MODIFIED.into_response(),
        _ => ApiError::precondition_failed().into_response(),
    };
    set_validators(&mut r, etag, modified_ms);
    r
}

/// Serialises conditional changes of one file on this hub: held from the precondition check
/// until the change is done, so that of several requests carrying the same ETag exactly one
/// wins. Entries are dropped when their last holder releases them.
pub(crate) struct FileLock {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn table() -> &'static Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

impl FileLock {
    /// Waits for the lock of file `path` of account `account`.
    pub(crate) async fn acquire(account: i64, path: &str) -> FileLock {
        let key = format!("{account}/{path}");
        let lock = table()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        FileLock {
            key,
            lock,
            _guard: guard,
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
        // Ours, our guard's and the table's: nobody else holds or waits for it.
        if Arc::strong_count(&self.lock) <= 3 {
            t.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    const TAG: &str = "\"abc\"";
    // Sun, 06 Nov 1994 08:49:37 GMT
    const T: i64 = 784_111_777_000;

    #[test]
    fn rfc9110_precedence() {
        use Decision::*;
        let e = |pairs: &[(&'static str, &str)], safe| {
            evaluate(&headers(pairs), safe, Some(TAG), Some(T))
        };
        assert_eq!(e(&[], false), Proceed);
        assert_eq!(e(&[("if-match", "\"abc\"")], false), Proceed);
        assert_eq!(e(&[("if-match", "\"old\"")], false), Failed);
        assert_eq!(e(&[("if-match", "*")], false), Proceed);
        assert_eq!(
            e(&[("if-match", "W/\"abc\"")], false),
            Failed,
            "strong comparison"
        );
        // If-Match beats If-Unmodified-Since (which alone would fail).
        let past = "Sat, 05 Nov 1994 08:49:37 GMT";
        assert_eq!(e(&[("if-unmodified-since", past)], false), Failed);
        assert_eq!(
            e(
                &[("if-match", "\"abc\""), ("if-unmodified-since", past)],
                false
            ),
            Proceed
        );
        assert_eq!(e(&[("if-unmodified-since", "garbage")], false), Proceed);
        // If-None-Match (weak) beats If-Modified-Since.
        let same = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(e(&[("if-none-match", "W/\"abc\"")], true), NotModified);
        assert_eq!(e(&[("if-modified-since", same)], true), NotModified);
        assert_eq!(e(&[("if-modified-since", past)], true), Proceed);
        assert_eq!(
            e(
                &[("if-none-match", "\"other\""), ("if-modified-since", same)],
                true
            ),
            Proceed
        );
        assert_eq!(e(&[("if-none-match", "*")], false), Failed);
        // A list split over two fields.
        assert_eq!(
            e(&[("if-match", "\"x\""), ("if-match", "\"abc\"")], false),
            Proceed
        );
        assert_eq!(http_date(T).as_deref(), Some(same));
    }
}

/// The preconditions a change of a file takes (for the OpenAPI document; they are read from
/// the headers by the handlers).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct ChangePreconditions {
    /// ETags (strong comparison) or `*`: 412 unless one matches.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// HTTP-date: 412 when modified since (ignored with `If-Match`).
    #[param(rename = "If-Unmodified-Since")]
    if_unmodified_since: Option<String>,
}
