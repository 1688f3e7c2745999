//! WebDAV requests of the write path: the streaming upload (OpenDAL's WebDAV writer buffers a
//! whole file before its single PUT, this client streams it with bounded memory), `MOVE` with
//! an explicit `Overwrite` (publishing without replace), and `MKCOL` that reports an existing
//! folder (OpenDAL's treats it as success).

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
        status_error("PUT", resp)
    }

    /// `MOVE`s `from` to `to` (keys relative to the root). Without `overwrite`, a taken `to` is
    /// [`StorageError::AlreadyExists`] (the server answers 412); a missing parent of `to` is
    /// [`StorageError::NotFound`] (409).
    pub(crate) async fn move_to(
        &self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), StorageError> {
        let mut pause = std::time::Duration::from_millis(5);
        for _ in 0..MAX_LOCKED_TRIES {
            let method = reqwest::Method::from_bytes(b"MOVE")
                .map_err(|e| StorageError::Other(e.to_string()))?;
            let mut req = self
                .http
                .request(method, format!("{}{}", self.base, encode_path(from)))
                .header("Destination", format!("{}{}", self.base, encode_path(to)))
                .header("Overwrite", if overwrite { "T" } else { "F" });
            if let Some(u) = &self.username {
                req = req.basic_auth(u, self.password.as_deref());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| StorageError::Unavailable(e.to_string()))?;
            match resp.status().as_u16() {
                412 => return Err(StorageError::AlreadyExists),
                // Another request holds the destination (servers lock it for the length of a
                // MOVE or PUT). Without replace, the name is as good as taken; with replace,
                // wait our turn.
                423 if !overwrite => return Err(StorageError::AlreadyExists),
                423 => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                _ => return status_error("MOVE", resp),
            }
        }
        Err(StorageError::Unavailable(
            "WebDAV MOVE: the destination stayed locked".into(),
        ))
    }

    /// `MKCOL` of `key` (a folder key ending in `/`): an existing resource is
    /// [`StorageError::AlreadyExists`] (405), a missing parent [`StorageError::NotFound`] (409).
    pub(crate) async fn mkcol(&self, key: &str) -> Result<(), StorageError> {
        let method = reqwest::Method::from_bytes(b"MKCOL")
            .map_err(|e| StorageError::Other(e.to_string()))?;
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, encode_path(key)));
        if let Some(u) = &self.username {
            req = req.basic_auth(u, self.password.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        // 423: another request is creating (and so holds) that very folder.
        if matches!(resp.status().as_u16(), 405 | 423) {
            return Err(StorageError::AlreadyExists);
        }
        status_error("MKCOL", resp)
    }
}

/// Rounds of a replacing MOVE that finds its destination locked by another request.
const MAX_LOCKED_TRIES: usize = 50;

/// Success, or the error a WebDAV answer's status means.
fn status_error(method: &str, resp: reqwest::Response) -> Result<(), StorageError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    {
        Err(match status.as_u16() {
            401 | 403 => {
                StorageError::PermissionDenied(format!("WebDAV {method} answered {status}"))
            }
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
            s if s >= 500 => {
                StorageError::Unavailable(format!("WebDAV {method} answered {status}"))
            }
            _ => StorageError::Other(format!("WebDAV {method} answered {status}")),
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
