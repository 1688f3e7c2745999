//! Streaming WebDAV upload: OpenDAL's WebDAV writer buffers a whole file before its single PUT,
//! so uploads go through this client instead, which streams the body with bounded memory.

use super::service::WebdavSettings;
use super::StorageError;
use bytes::Bytes;
use futures::Stream;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// Endpoint plus root, ending in `/`.
    base: String,
    username: Option<String>,
    password: Option<String>,
}

impl Client {
    pub(crate) fn new(s: &WebdavSettings, timeout: Duration) -> Result<Self, StorageError> {
        let mut base = s.endpoint.trim_end_matches('/').to_owned();
        if let Some(root) = s.root.as_deref().map(|r| r.trim_matches('/')) {
            if !root.is_empty() {
                base.push('/');
                base.push_str(&encode_path(root));
            }
        }
        base.push('/');
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| StorageError::InvalidSettings(e.to_string()))?;
        Ok(Self {
            http,
            base,
            username: s.username.clone(),
            password: s.password.clone(),
        })
    }

    /// PUTs `body` at `key` (relative, no leading slash) as a chunked stream.
    pub(crate) async fn put_stream<S, E>(&self, key: &str, body: S) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        use futures::StreamExt;
        let body = body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
        let mut req = self
            .http
            .put(format!("{}{}", self.base, encode_path(key)))
            .body(reqwest::Body::wrap_stream(body));
        if let Some(u) = &self.username {
            req = req.basic_auth(u, self.password.as_deref());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_body() || e.is_request() {
                StorageError::Interrupted(e.to_string())
            } else {
                StorageError::Unavailable(e.to_string())
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(match status.as_u16() {
            401 | 403 => StorageError::PermissionDenied(format!("WebDAV PUT answered {status}")),
            404 | 409 => StorageError::NotFound,
            429 => StorageError::RateLimited {
                retry_after: resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs),
            },
            507 => StorageError::Other("WebDAV server is out of space (507)".into()),
            s if s >= 500 => StorageError::Unavailable(format!("WebDAV PUT answered {status}")),
            _ => StorageError::Other(format!("WebDAV PUT answered {status}")),
        })
    }
}

/// Percent-encodes each path segment, keeping the `/` separators.
fn encode_path(p: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    p.split('/')
        .map(|seg| percent_encoding::utf8_percent_encode(seg, SET).to_string())
        .collect::<Vec<_>>()
        .join("/")
}
