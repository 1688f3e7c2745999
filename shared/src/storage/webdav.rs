//! WebDAV requests of our own: the streaming upload (OpenDAL's WebDAV writer buffers a whole
//! file before its single PUT, this client streams it with bounded memory), `MOVE` with an
//! explicit `Overwrite` (publishing without replace), `MKCOL` that reports an existing folder
//! (OpenDAL's treats it as success), and the connect-time check (`PROPFIND` of the root,
//! `Depth: 0`).

use super::service::WebdavSettings;
use super::StorageError;
use crate::egress::EgressPolicy;
use bytes::Bytes;
use futures::Stream;
use std::time::Duration;

/// Most bytes of a `PROPFIND` answer read: one resource's properties fit easily.
const MAX_PROPFIND_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    egress: EgressPolicy,
    /// Endpoint plus root, ending in `/`.
    base: String,
    username: Option<String>,
    password: Option<String>,
    /// The account's provider budget: each request waits for its slot.
    budget: crate::budget::Budget,
}

impl Client {
    pub(crate) fn new(
        s: &WebdavSettings,
        timeout: Duration,
        egress: &EgressPolicy,
        budget: crate::budget::Budget,
    ) -> Result<Self, StorageError> {
        let mut base = s.endpoint.trim_end_matches('/').to_owned();
        if let Some(root) = s.root.as_deref().map(|r| r.trim_matches('/')) {
            if !root.is_empty() {
                base.push('/');
                base.push_str(&encode_path(root));
            }
        }
        base.push('/');
        // A server that accepts and then goes quiet must not hold a request forever: every
        // read of an answer is bounded by the provider I/O timeout.
        let http = egress
            .http_builder(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| StorageError::InvalidSettings(e.to_string()))?;
        Ok(Self {
            http,
            egress: egress.clone(),
            base,
            username: s.username.clone(),
            password: s.password.clone(),
            budget,
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
        let req = self
            .request(reqwest::Method::PUT, self.url(key)?)
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.budget.send(req).await?.map_err(|e| {
            // With its sources: the body's own error (a part's digest, its length) is in there.
            let interrupted = e.is_body() || e.is_request();
            let text = super::multipart::error_chain(&e.without_url());
            if interrupted {
                StorageError::Interrupted(text)
            } else {
                StorageError::Unavailable(text)
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
        let (source, destination) = (self.url(from)?, self.url(to)?);
        let mut pause = std::time::Duration::from_millis(5);
        for _ in 0..MAX_LOCKED_TRIES {
            let req = self
                .request(dav_method(b"MOVE"), source.clone())
                .header("Destination", destination.as_str())
                .header("Overwrite", if overwrite { "T" } else { "F" });
            let resp = self
                .budget
                .send(req)
                .await?
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
        let req = self.request(dav_method(b"MKCOL"), self.url(key)?);
        let resp = self
            .budget
            .send(req)
            .await?
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        // 423: another request is creating (and so holds) that very folder.
        if matches!(resp.status().as_u16(), 405 | 423) {
            return Err(StorageError::AlreadyExists);
        }
        status_error("MKCOL", resp)
    }
}

/// A WebDAV extension method (`MOVE`, `MKCOL`, `PROPFIND`).
fn dav_method(name: &'static [u8]) -> reqwest::Method {
    reqwest::Method::from_bytes(name).expect("a WebDAV method name is a valid token")
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
                    // A hostile server's "come back in a century" is passed on as an hour.
                    .map(|secs| std::time::Duration::from_secs(secs.min(3600))),
            },
            507 => StorageError::Other("WebDAV server is out of space (507)".into()),
            s if s >= 500 => {
                StorageError::Unavailable(format!("WebDAV {method} answered {status}"))
            }
            _ => StorageError::Other(format!("WebDAV {method} answered {status}")),
        })
    }
}

impl Client {
    /// The URL of `key` under the root, checked against the egress policy.
    fn url(&self, key: &str) -> Result<reqwest::Url, StorageError> {
        let url = reqwest::Url::parse(&format!("{}{}", self.base, encode_path(key)))
            .map_err(|e| StorageError::InvalidSettings(format!("invalid WebDAV endpoint: {e}")))?;
        self.egress.check_url(&url).map_err(super::egress_error)?;
        Ok(url)
    }

    /// A request to `url` (from [`Client::url`], so checked by the egress policy) with the
    /// account's login.
    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.username {
            Some(u) => req.basic_auth(u, self.password.as_deref()),
            None => req,
        }
    }

    /// Proves the account works with WebDAV's own request: `PROPFIND` of the root with
    /// `Depth: 0` must answer 207 Multi-Status describing a collection. A static web server
    /// (405 or 200), a missing root (404) or a file root is refused; so is a refused login.
    pub(crate) async fn check_root(&self, host: &str) -> Result<(), StorageError> {
        let req = self
            .request(dav_method(b"PROPFIND"), self.url("")?)
            .header("Depth", "0")
            .header(reqwest::header::CONTENT_TYPE, "application/xml")
            .body(
                r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>"#,
            );
        let mut resp = self
            .budget
            .send(req)
            .await?
            .map_err(|e| super::unreachable(host, &e))?;
        let status = resp.status();
        match status.as_u16() {
            207 => {}
            401 | 403 => {
                return Err(StorageError::InvalidSettings(format!(
                    "the WebDAV server refused the login (PROPFIND answered {status})"
                )))
            }
            404 | 409 => {
                // A file answers only without the trailing slash.
                let is_file = self.url("").ok().and_then(|u| {
                    let bare = u.as_str().strip_suffix('/')?.to_owned();
                    reqwest::Url::parse(&bare).ok()
                });
                let mut what = "the WebDAV root folder does not exist (PROPFIND answered 404)";
                if let Some(bare) = is_file.filter(|u| u.path() != "/" && !u.path().is_empty()) {
                    let req = self
                        .request(dav_method(b"PROPFIND"), bare)
                        .header("Depth", "0");
                    if let Ok(Ok(r)) = self.budget.send(req).await {
                        if r.status().as_u16() == 207 {
                            what = "the WebDAV root is not a folder";
                        }
                    }
                }
                return Err(StorageError::InvalidSettings(what.into()));
            }
            429 => return Err(StorageError::RateLimited { retry_after: None }),
            s if s >= 500 => {
                return Err(StorageError::Unavailable(format!(
                    "WebDAV PROPFIND answered {status}"
                )))
            }
            _ => {
                return Err(StorageError::InvalidSettings(format!(
                    "the endpoint does not speak WebDAV (PROPFIND answered {status})"
                )))
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| super::unreachable(host, &e))?
        {
            let room = MAX_PROPFIND_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_PROPFIND_BYTES {
                break;
            }
        }
        // The namespace prefix is the server's choice (`D:`, `d:`, `lp1:`, none); the element
        // name is not.
        let text = String::from_utf8_lossy(&body).to_ascii_lowercase();
        if !text.contains("multistatus") {
            return Err(StorageError::InvalidSettings(
                "the endpoint does not speak WebDAV (PROPFIND answer is not a multistatus)".into(),
            ));
        }
        if !describes_collection(&text) {
            return Err(StorageError::InvalidSettings(
                "the WebDAV root is not a folder".into(),
            ));
        }
        Ok(())
    }
}

/// Whether a (lowercased) multistatus names a `collection` inside its `resourcetype`.
fn describes_collection(text: &str) -> bool {
    let Some(start) = text.find("resourcetype") else {
        return false;
    };
    let rest = &text[start + "resourcetype".len()..];
    let inner = rest.find("resourcetype").map_or(rest, |end| &rest[..end]);
    inner.contains(":collection") || inner.contains("<collection")
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
