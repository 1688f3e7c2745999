//! Resumable multipart writes to object stores (S3 today): create, upload parts, complete, abort.
//!
//! OpenDAL's writer hides its multipart upload inside one `write` call, so a transfer that dies
//! halfway starts over. [`S3Multipart`] exposes the upload itself: the upload id and the part
//! ETags can be persisted, a later process can continue with the parts still missing (checking
//! what S3 already holds with [`S3Multipart::list_parts`]) and complete it. Requests are
//! presigned by rusty-s3 (sans-IO) and sent with reqwest; part bodies are streamed, never
//! buffered. Answers are read leniently, field by field: S3-compatible servers disagree on
//! details such as the root element's name (moto answers `ListPartsResponse` where S3 says
//! `ListPartsResult`), which rusty-s3's strict parsers refuse.
//!
//! The object key is the one OpenDAL's S3 service uses for the same path and root, so an object
//! written here is the object a [`Connector`](super::Connector) on the same account sees.

use super::service::S3Settings;
use super::{StorageError, StoragePath};
use bytes::Bytes;
use futures::Stream;
use reqwest::{header, StatusCode, Url};
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, ListParts,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a presigned request stays valid. Each request is signed just before it is sent, so
/// this only has to cover one request, including a slow part upload.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(3600);
/// Longest silence of the server (see [`S3Multipart::with_io_timeout`]), unless given.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read into memory: an error document or one page of ListParts (at most
/// 1,000 parts of a few hundred bytes each).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Most ListParts pages followed: 10,000 parts at the default 1,000 per page, with margin.
const MAX_LIST_PAGES: usize = 100;

/// One multipart upload target: an S3 bucket, an object key and the client that talks to them.
///
/// Cloning is cheap (the HTTP client is shared), so concurrent part uploads can each hold one.
#[derive(Clone)]
pub struct S3Multipart {
    http: reqwest::Client,
    /// Longest silence of the server: before it answers, between reads of an answer, and while
    /// it leaves a part body unread.
    io_timeout: Duration,
    bucket: Bucket,
    credentials: Credentials,
    key: String,
    /// The account's provider budget: each request waits for its slot.
    budget: crate::budget::Budget,
}

impl fmt::Debug for S3Multipart {
    // Neither the credentials nor the customer's object key belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Multipart({})", self.bucket.name())
    }
}

/// One part S3 holds for an upload, as [`S3Multipart::list_parts`] reports it.
pub type ListedPart = (u16, String, u64);

impl S3Multipart {
    /// The upload target for `path` on the account `settings` describe, with default timeouts,
    /// its HTTP client under `egress` (the SSRF guard: names resolve through the policy, an
    /// IP-literal endpoint is checked now, redirects are not followed). Does not contact the
    /// provider.
    pub fn for_settings(
        settings: &S3Settings,
        path: &StoragePath,
        egress: &crate::egress::EgressPolicy,
    ) -> Result<Self, StorageError> {
        Self::with_io_timeout(settings, path, DEFAULT_IO_TIMEOUT, egress)
    }

    /// Like [`S3Multipart::for_settings`], with the longest the server may stay silent (connect,
    /// answer, reading a part body) before the request fails as unavailable.
    pub fn with_io_timeout(
        settings: &S3Settings,
        path: &StoragePath,
        io_timeout: Duration,
        egress: &crate::egress::EgressPolicy,
    ) -> Result<Self, StorageError> {
        if path.is_root() {
            return Err(StorageError::WrongKind { expected: "file" });
        }
        let region = settings.region.as_deref().unwrap_or("us-east-1");
        let endpoint = endpoint_url(settings.endpoint.as_deref(), &settings.bucket, region)?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            settings.bucket.clone(),
            region.to_owned(),
        )
        .map_err(|e| StorageError::InvalidSettings(format!("invalid S3 endpoint: {e:?}")))?;
        let key = object_key(settings.root.as_deref(), path)?;
        egress
            .check_url(bucket.base_url())
            .map_err(super::egress_error)?;
        // No client read timeout: reqwest's runs from the start of the request until the
        // answer's headers, so it would also bound the upload of a (slow, rate limited) part.
        // Silence is timed per request instead, see `upload_part` and `send`. A presigned
        // request is only valid for its own URL: the guard's client follows no redirect.
        let http = egress
            .http_client(io_timeout)
            .map_err(|e| StorageError::InvalidSettings(e.to_string()))?;
        Ok(Self {
            http,
            io_timeout,
            bucket,
            credentials: Credentials::new(&settings.access_key_id, &settings.secret_access_key),
            key,
            budget: crate::budget::Budget::none(),
        })
    }

    /// Draws every request from `budget` (the account connector's, [`super::Connector::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The object key in the bucket (root included).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Streams bytes `offset..offset + len` of the object in one ranged GET: one request per
    /// part, nothing buffered beyond the socket's frames (OpenDAL's reader would fetch the
    /// range in whole chunks). Each wait for the next frame is limited by the I/O timeout.
    pub async fn get_range(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static, StorageError>
    {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &self.key)
            .sign(PRESIGN_EXPIRY);
        let end = offset + len.max(1) - 1;
        let req = self
            .http
            .get(url)
            .header(header::RANGE, format!("bytes={offset}-{end}"));
        self.budget.admit().await?;
        let resp = tokio::time::timeout(self.io_timeout, req.send())
            .await
            .map_err(|_| self.silent("GetObject"))?
            .map_err(|e| send_error("GetObject", e))?;
        self.budget
            .observe(resp.status().as_u16(), resp.headers())
            .await;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK if offset == 0 => {}
            s if s.is_success() => {
                return Err(StorageError::Other(format!(
                    "S3 GetObject ignored the range (answered {s})"
                )))
            }
            _ => return Err(self.failure("GetObject", resp).await),
        }
        let timeout = self.io_timeout;
        Ok(futures::stream::unfold(
            Some(resp),
            move |state| async move {
                let mut resp = state?;
                match tokio::time::timeout(timeout, resp.chunk()).await {
                    Err(_) => Some((
                        Err(StorageError::Unavailable(format!(
                            "S3 GetObject: the server was silent for more than {timeout:?}"
                        ))),
                        None,
                    )),
                    Ok(Err(e)) => Some((
                        Err(StorageError::Interrupted(format!(
                            "S3 GetObject: {}",
                            error_chain(&e.without_url())
                        ))),
                        None,
                    )),
                    Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(resp))),
                    Ok(Ok(None)) => None,
                }
            },
        ))
    }

    /// Starts a multipart upload and returns its id.
    pub async fn create(&self) -> Result<String, StorageError> {
        let url = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &self.key)
            .sign(PRESIGN_EXPIRY);
        let body = self
            .send("CreateMultipartUpload", self.http.post(url))
            .await?;
        xml_text(&body, "UploadId")
            .ok_or_else(|| bad_response("CreateMultipartUpload", "no UploadId"))
    }

    /// Uploads part `part_number` (1-based) of `len` bytes, streaming `body`, and returns the
    /// part's ETag without quotes. The body must yield exactly `len` bytes.
    pub async fn upload_part(
        &self,
        upload_id: &str,
        part_number: u16,
        len: u64,
        body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
    ) -> Result<String, StorageError> {
        let url = self
            .bucket
            .upload_part(Some(&self.credentials), &self.key, part_number, upload_id)
            .sign(PRESIGN_EXPIRY);
        let stall = Arc::new(Mutex::new(Some(Instant::now())));
        let body = Watched {
            inner: Box::pin(body),
            waiting_since: stall.clone(),
        };
        self.budget.admit().await?;
        // With an explicit length hyper sends a plain body rather than chunked encoding, which
        // S3 refuses on presigned part uploads.
        let send = self
            .http
            .put(url)
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        tokio::pin!(send);
        let mut tick = tokio::time::interval(watch_interval(self.io_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resp = loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| send_error("UploadPart", e))?,
                _ = tick.tick() => {
                    let since = *lock(&stall);
                    if since.is_some_and(|t| t.elapsed() > self.io_timeout) {
                        return Err(StorageError::Unavailable(format!(
                            "S3 UploadPart: the server was silent for more than {:?}",
                            self.io_timeout
                        )));
                    }
                }
            }
        };
        self.budget
            .observe(resp.status().as_u16(), resp.headers())
            .await;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.failure("UploadPart", resp).await);
        }
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StorageError::Other("S3 UploadPart answered without an ETag".into()))?;
        Ok(etag)
    }

    /// Completes the upload from `parts` (part number, ETag), which must be sorted by part
    /// number; returns the object's ETag without quotes. S3 requires every part but the last
    /// to hold at least 5 MiB.
    pub async fn complete(
        &self,
        upload_id: &str,
        parts: &[(u16, String)],
    ) -> Result<String, StorageError> {
        if parts.is_empty() {
            return Err(StorageError::Other(
                "a multipart upload needs at least one part".into(),
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StorageError::Other(
                "multipart parts must be sorted by part number, without duplicates".into(),
            ));
        }
        let url = CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            &self.key,
            upload_id,
            std::iter::empty(),
        )
        .sign(PRESIGN_EXPIRY);
        let req = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/xml")
            .body(complete_body(parts));
        let body = self.send("CompleteMultipartUpload", req).await?;
        // S3 may answer 200 and still fail: the status is sent before the work is done, and
        // the error document follows in the body.
        if let Some(code) = xml_text(&body, "Code") {
            return Err(s3_error(
                "CompleteMultipartUpload",
                StatusCode::OK,
                Some(&code),
                xml_text(&body, "Message").as_deref(),
                None,
            ));
        }
        xml_text(&body, "ETag")
            .map(|e| e.trim_matches('"').to_owned())
            .ok_or_else(|| bad_response("CompleteMultipartUpload", "no ETag"))
    }

    /// Abandons the upload; S3 drops the parts it holds.
    pub async fn abort(&self, upload_id: &str) -> Result<(), StorageError> {
        let url =
            AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), &self.key, upload_id)
                .sign(PRESIGN_EXPIRY);
        self.send("AbortMultipartUpload", self.http.delete(url))
            .await
            .map(drop)
    }

    /// Aborts the incomplete multipart uploads of this object key initiated before `before`,
    /// except those named in `keep`: what writers killed mid-upload leave behind (the parts
    /// keep using storage and S3 lists them, but no object appears). The caller makes sure no
    /// live writer of the key could have started one of them. Returns how many were aborted.
    pub async fn abort_uploads_before(
        &self,
        before: std::time::SystemTime,
        keep: &[String],
    ) -> Result<usize, StorageError> {
        let before = jiff::Timestamp::try_from(before)
            .map_err(|e| StorageError::Other(format!("time out of range: {e}")))?;
        let mut aborted = 0;
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_LIST_PAGES {
            let body = self.list_uploads_page(markers.as_ref()).await?;
            let (uploads, next) = parse_list_uploads(&body)?;
            for u in uploads {
                // `prefix` also matches longer keys: only this exact object is ours to clean.
                if u.key != self.key || u.initiated >= before || keep.contains(&u.upload_id) {
                    continue;
                }
                match self.abort(&u.upload_id).await {
                    Ok(()) | Err(StorageError::NotFound) => aborted += 1,
                    Err(e) => return Err(e),
                }
            }
            match next {
                Some(n) if markers.as_ref() != Some(&n) => markers = Some(n),
                Some(_) => {
                    return Err(StorageError::Other(
                        "S3 ListMultipartUploads returned markers that do not advance".into(),
                    ))
                }
                None => return Ok(aborted),
            }
        }
        Err(StorageError::Other(format!(
            "S3 ListMultipartUploads returned more than {MAX_LIST_PAGES} pages"
        )))
    }

    /// One page of `ListMultipartUploads` for keys starting with this key. rusty-s3 has no
    /// action for it, so the request is presigned with its signing function directly.
    async fn list_uploads_page(
        &self,
        markers: Option<&(String, String)>,
    ) -> Result<String, StorageError> {
        // Sorted by name, as `sign` requires.
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(4);
        if let Some((key, _)) = markers {
            query.push(("key-marker", key));
        }
        query.push(("prefix", &self.key));
        if let Some((_, id)) = markers {
            query.push(("upload-id-marker", id));
        }
        query.push(("uploads", ""));
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            self.bucket.base_url().clone(),
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            PRESIGN_EXPIRY.as_secs(),
            query.iter().copied(),
            std::iter::empty(),
        );
        self.send("ListMultipartUploads", self.http.get(url)).await
    }

    /// The parts S3 holds for the upload: (part number, ETag without quotes, size), sorted by
    /// part number, following every page.
    pub async fn list_parts(&self, upload_id: &str) -> Result<Vec<ListedPart>, StorageError> {
        let mut out: Vec<ListedPart> = Vec::new();
        let mut marker: Option<u16> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut action =
                ListParts::new(&self.bucket, Some(&self.credentials), &self.key, upload_id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(PRESIGN_EXPIRY);
            let body = self.send("ListParts", self.http.get(url)).await?;
            let (parts, next) = parse_list_parts(&body)?;
            out.extend(parts);
            match next {
                // A marker that does not advance would loop forever.
                Some(next) if marker.is_none_or(|m| next > m) => marker = Some(next),
                Some(_) => {
                    return Err(StorageError::Other(
                        "S3 ListParts returned a part marker that does not advance".into(),
                    ))
                }
                None => {
                    out.sort_by_key(|p| p.0);
                    out.dedup_by_key(|p| p.0);
                    return Ok(out);
                }
            }
        }
        Err(StorageError::Other(format!(
            "S3 ListParts returned more than {MAX_LIST_PAGES} pages"
        )))
    }

    /// Sends a request whose answer is a small document; returns the document on success.
    async fn send(&self, op: &str, req: reqwest::RequestBuilder) -> Result<String, StorageError> {
        self.budget.admit().await?;
        let resp = tokio::time::timeout(self.io_timeout, req.send())
            .await
            .map_err(|_| self.silent(op))?
            .map_err(|e| send_error(op, e))?;
        self.budget
            .observe(resp.status().as_u16(), resp.headers())
            .await;
        if !resp.status().is_success() {
            return Err(self.failure(op, resp).await);
        }
        let body = self.read_capped(op, resp).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn silent(&self, op: &str) -> StorageError {
        StorageError::Unavailable(format!(
            "S3 {op}: the server was silent for more than {:?}",
            self.io_timeout
        ))
    }

    /// Reads an answer, keeping at most [`MAX_RESPONSE_BYTES`] and allowing the server
    /// `io_timeout` between reads (S3 keeps a long CompleteMultipartUpload alive with spaces).
    async fn read_capped(
        &self,
        op: &str,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, StorageError> {
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.io_timeout, resp.chunk())
                .await
                .map_err(|_| self.silent(op))?
                .map_err(|e| {
                    StorageError::Unavailable(format!("S3 {op}: {}", error_chain(&e.without_url())))
                })?;
            let Some(chunk) = chunk else {
                return Ok(body);
            };
            let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                return Ok(body);
            }
        }
    }

    /// Turns an unsuccessful response into an error, with S3's code and message when present.
    async fn failure(&self, op: &str, resp: reqwest::Response) -> StorageError {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let body = self.read_capped(op, resp).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        s3_error(
            op,
            status,
            xml_text(&text, "Code").as_deref(),
            xml_text(&text, "Message").as_deref(),
            retry_after,
        )
    }
}

/// The endpoint OpenDAL's S3 service would use, before the bucket is added (path style).
fn endpoint_url(endpoint: Option<&str>, bucket: &str, region: &str) -> Result<Url, StorageError> {
    let mut text = match endpoint {
        Some(e) if e.starts_with("http") => e.to_owned(),
        Some(e) => format!("https://{e}"),
        None => "https://s3.amazonaws.com".to_owned(),
    };
    // A virtual-host style endpoint naming the bucket is turned back into the service's.
    text = text.replace(&format!("//{bucket}."), "//");
    let url = Url::parse(&text).map_err(bad_endpoint)?;
    let normalized = url.as_str().trim_end_matches('/');
    if normalized == "https://s3.amazonaws.com" {
        return Url::parse(&format!("https://s3.{region}.amazonaws.com")).map_err(bad_endpoint);
    }
    Url::parse(normalized).map_err(bad_endpoint)
}

fn bad_endpoint(e: impl fmt::Display) -> StorageError {
    StorageError::InvalidSettings(format!("invalid S3 endpoint: {e}"))
}

/// The key OpenDAL's S3 service gives `path` below `root`: the root normalized to `a/b/` (no
/// leading slash, empty segments dropped, nothing for no root or `/`) followed by the path.
fn object_key(root: Option<&str>, path: &StoragePath) -> Result<String, StorageError> {
    let segments: Vec<&str> = root
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // OpenDAL would send such a key as is, while a URL resolves the dot segments away: refuse
    // rather than write somewhere the connector does not look.
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(StorageError::InvalidSettings(
            "the S3 `root` must not contain '.' or '..' segments".into(),
        ));
    }
    let mut key = String::new();
    for s in segments {
        key.push_str(s);
        key.push('/');
    }
    key.push_str(path.file_key());
    Ok(key)
}

/// One page of a ListParts answer: the parts, and the marker of the next page if there is one.
fn parse_list_parts(doc: &str) -> Result<(Vec<ListedPart>, Option<u16>), StorageError> {
    let bad = |what: &str| bad_response("ListParts", what);
    let mut parts = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("<Part>") {
        let block_and_rest = &rest[start + "<Part>".len()..];
        let end = block_and_rest
            .find("</Part>")
            .ok_or_else(|| bad("unterminated Part"))?;
        let block = &block_and_rest[..end];
        let number = xml_text(block, "PartNumber")
            .and_then(|n| n.parse::<u16>().ok())
            .ok_or_else(|| bad("a Part without a valid PartNumber"))?;
        let etag = xml_text(block, "ETag").ok_or_else(|| bad("a Part without an ETag"))?;
        let size = xml_text(block, "Size")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("a Part without a valid Size"))?;
        parts.push((number, etag.trim_matches('"').to_owned(), size));
        rest = &block_and_rest[end + "</Part>".len()..];
    }
    let next = if xml_text(doc, "IsTruncated").as_deref() == Some("true") {
        let marker = xml_text(doc, "NextPartNumberMarker")
            .and_then(|n| n.parse::<u16>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("a truncated page without NextPartNumberMarker"))?;
        Some(marker)
    } else {
        None
    };
    Ok((parts, next))
}

/// An incomplete upload as `ListMultipartUploads` names it.
#[derive(Debug, PartialEq)]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: jiff::Timestamp,
}

/// A `ListMultipartUploads` page: its uploads and, when truncated, the next key and upload-id
/// markers.
#[allow(clippy::type_complexity)]
fn parse_list_uploads(
    doc: &str,
) -> Result<(Vec<ListedUpload>, Option<(String, String)>), StorageError> {
    let bad = |what: &str| bad_response("ListMultipartUploads", what);
    let mut uploads = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("<Upload>") {
        let block_and_rest = &rest[start + "<Upload>".len()..];
        let end = block_and_rest
            .find("</Upload>")
            .ok_or_else(|| bad("unterminated Upload"))?;
        let block = &block_and_rest[..end];
        let key = xml_text(block, "Key").ok_or_else(|| bad("an Upload without a Key"))?;
        let upload_id =
            xml_text(block, "UploadId").ok_or_else(|| bad("an Upload without an UploadId"))?;
        let initiated = xml_text(block, "Initiated")
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .ok_or_else(|| bad("an Upload without a valid Initiated time"))?;
        uploads.push(ListedUpload {
            key,
            upload_id,
            initiated,
        });
        rest = &block_and_rest[end + "</Upload>".len()..];
    }
    let next = if xml_text(doc, "IsTruncated").as_deref() == Some("true") {
        let key = xml_text(doc, "NextKeyMarker")
            .ok_or_else(|| bad("a truncated page without NextKeyMarker"))?;
        let id = xml_text(doc, "NextUploadIdMarker").unwrap_or_default();
        Some((key, id))
    } else {
        None
    };
    Ok((uploads, next))
}

/// The CompleteMultipartUpload document. rusty-s3's numbers parts by position, which is only
/// right when every part from 1 is present; this one keeps the given numbers.
fn complete_body(parts: &[(u16, String)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        xml.push_str("<Part><ETag>&quot;");
        xml.push_str(&xml_escape(etag.trim_matches('"')));
        xml.push_str("&quot;</ETag><PartNumber>");
        xml.push_str(&number.to_string());
        xml.push_str("</PartNumber></Part>");
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The text of the first `<tag>` element in an S3 document (error documents are flat and
/// small; this avoids an XML parser for two fields).
fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&format!("</{tag}>"))?;
    let raw = doc[start..end].trim();
    let text: String = raw
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
        .chars()
        .take(500)
        .collect();
    (!text.is_empty()).then_some(text)
}

/// Maps an S3 failure onto [`StorageError`], naming the status and the error code.
fn s3_error(
    op: &str,
    status: StatusCode,
    code: Option<&str>,
    message: Option<&str>,
    retry_after: Option<Duration>,
) -> StorageError {
    // The status and the code only: the `<Message>` is the provider's free text, which an
    // internal address could fill with anything.
    let _ = message;
    let detail = match code {
        Some(c) => format!("S3 {op} answered {status}: {c}"),
        None => format!("S3 {op} answered {status}"),
    };
    match (status.as_u16(), code) {
        (_, Some("SlowDown")) | (429 | 503, _) => StorageError::RateLimited { retry_after },
        (403, _) => StorageError::PermissionDenied(detail),
        (_, Some("NoSuchUpload")) => StorageError::NotFound,
        (_, Some("NoSuchBucket")) => StorageError::InvalidSettings(detail),
        (404, _) => StorageError::NotFound,
        (_, Some("InternalError" | "ServiceUnavailable" | "RequestTimeout")) => {
            StorageError::Unavailable(detail)
        }
        (s, _) if s >= 500 => StorageError::Unavailable(detail),
        _ => StorageError::Other(detail),
    }
}

/// A request that got no answer: our own body stream failed (interrupted), or the network or
/// the provider is at fault (unavailable).
fn send_error(op: &str, e: reqwest::Error) -> StorageError {
    // The presigned URL carries a signature that works for an hour: never show it.
    let e = e.without_url();
    // The part body's own failure (the source broke off, the copy was cancelled) travels down
    // the chain of sources.
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(body) = s.downcast_ref::<StorageError>() {
            return match body {
                StorageError::Interrupted(why) => StorageError::Interrupted(why.clone()),
                other => StorageError::Interrupted(other.to_string()),
            };
        }
        source = s.source();
    }
    StorageError::Unavailable(format!("S3 {op}: {}", error_chain(&e)))
}

fn bad_response(op: &str, e: impl fmt::Display) -> StorageError {
    StorageError::Other(format!("S3 {op} answered a document we cannot read: {e}"))
}

/// An error and its sources, `: `-separated (reqwest's own display stops at the outermost).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A part body that notes when it waits on the server: from the moment it hands a piece over
/// (or ends) until the HTTP client asks for the next one. While the body itself is producing
/// (reading the source, waiting on the rate limiter) the server is not to blame. Azure block
/// uploads (`azure_blocks`) watch theirs the same way.
pub(crate) struct Watched {
    pub(crate) inner: Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>,
    pub(crate) waiting_since: Arc<Mutex<Option<Instant>>>,
}

impl Stream for Watched {
    type Item = Result<Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        *lock(&self.waiting_since) = None;
        let next = self.inner.as_mut().poll_next(cx);
        if next.is_ready() {
            *lock(&self.waiting_since) = Some(Instant::now());
        }
        next
    }
}

/// How often an upload checks for a silent server: often enough to notice within a tenth of
/// the timeout, at most once a second.
pub(crate) fn watch_interval(io_timeout: Duration) -> Duration {
    (io_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Locks a mutex whose data (a timestamp) stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoragePath {
        StoragePath::parse(s).expect("valid path")
    }

    /// The test endpoints are on loopback: a policy that allows them.
    fn open() -> crate::egress::EgressPolicy {
        crate::egress::EgressPolicy::open(crate::resolve::Resolver::system().clone())
    }

    #[test]
    fn list_uploads_pages_parse() {
        let doc = "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>\
            <NextKeyMarker>a/x</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>\
            <Upload><Key>a/x</Key><UploadId>u1</UploadId>\
            <Initiated>2026-12-01T10:00:00.000Z</Initiated></Upload>\
            <Upload><Key>a/x &amp; y</Key><UploadId>u2</UploadId>\
            <Initiated>2026-12-01T11:00:00Z</Initiated></Upload></ListMultipartUploadsResult>";
        let (uploads, next) = parse_list_uploads(doc).expect("parses");
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[1].key, "a/x & y");
        assert_eq!(uploads[0].upload_id, "u1");
        assert!(uploads[0].initiated < uploads[1].initiated);
        assert_eq!(next, Some(("a/x".into(), "u2".into())));
        let last = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>\
            </ListMultipartUploadsResult>";
        assert_eq!(parse_list_uploads(last).expect("parses"), (vec![], None));
        let broken = "<Upload><Key>k</Key><UploadId>u</UploadId></Upload>";
        assert!(parse_list_uploads(broken).is_err(), "no Initiated time");
    }

    #[test]
    fn keys_follow_opendal_root_normalization() {
        let path = p("dir/file.bin");
        for (root, want) in [
            (None, "dir/file.bin"),
            (Some(""), "dir/file.bin"),
            (Some("/"), "dir/file.bin"),
            (Some("a"), "a/dir/file.bin"),
            (Some("/a/b/"), "a/b/dir/file.bin"),
            (Some("a//b"), "a/b/dir/file.bin"),
            (Some("//a/b"), "a/b/dir/file.bin"),
        ] {
            assert_eq!(object_key(root, &path).expect("key"), want, "root {root:?}");
        }
        assert!(object_key(Some("a/../b"), &path).is_err());
    }

    #[test]
    fn endpoints_follow_opendal() {
        let ep = |e: Option<&str>| {
            endpoint_url(e, "bkt", "eu-west-1")
                .expect("endpoint")
                .to_string()
        };
        assert_eq!(ep(None), "https://s3.eu-west-1.amazonaws.com/");
        assert_eq!(
            ep(Some("https://s3.amazonaws.com/")),
            "https://s3.eu-west-1.amazonaws.com/"
        );
        assert_eq!(ep(Some("http://127.0.0.1:9000")), "http://127.0.0.1:9000/");
        assert_eq!(ep(Some("minio.local")), "https://minio.local/");
        assert_eq!(ep(Some("https://bkt.minio.local")), "https://minio.local/");
        let s = S3Settings {
            bucket: "bkt".into(),
            endpoint: Some("http://127.0.0.1:9000/base".into()),
            region: None,
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
            root: Some("/r/".into()),
        };
        let m = S3Multipart::for_settings(&s, &p("a b/c"), &open()).expect("target");
        assert_eq!(m.key(), "r/a b/c");
        assert_eq!(
            m.bucket.object_url(m.key()).as_str(),
            "http://127.0.0.1:9000/base/bkt/r/a%20b/c"
        );
        assert!(!format!("{m:?}").contains("secret"));
        assert!(matches!(
            S3Multipart::for_settings(&s, &StoragePath::root(), &open()),
            Err(StorageError::WrongKind { .. })
        ));
    }

    #[test]
    fn complete_document_keeps_part_numbers() {
        let body = complete_body(&[(1, "\"aa\"".into()), (3, "bb".into())]);
        assert_eq!(
            body,
            "<CompleteMultipartUpload><Part><ETag>&quot;aa&quot;</ETag><PartNumber>1</PartNumber>\
             </Part><Part><ETag>&quot;bb&quot;</ETag><PartNumber>3</PartNumber></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn list_parts_pages_parse_whatever_the_root() {
        let page = |root: &str, truncated: bool| {
            format!(
                "<?xml version=\"1.0\"?><{root} xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>\
                 <PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker>\
                 <MaxParts>2</MaxParts><IsTruncated>{truncated}</IsTruncated>\
                 <Part><PartNumber>1</PartNumber><LastModified>x</LastModified>\
                 <ETag>&quot;aa&quot;</ETag><Size>5242880</Size></Part>\
                 <Part><PartNumber>2</PartNumber><ETag>\"bb\"</ETag><Size>7</Size></Part></{root}>"
            )
        };
        let want = vec![(1, "aa".to_owned(), 5_242_880), (2, "bb".to_owned(), 7)];
        let (parts, next) = parse_list_parts(&page("ListPartsResult", true)).expect("parses");
        assert_eq!((parts, next), (want.clone(), Some(2)));
        let (parts, next) = parse_list_parts(&page("ListPartsResponse", false)).expect("parses");
        assert_eq!((parts, next), (want, None));
        assert!(parse_list_parts("<ListPartsResult><Part><PartNumber>1</PartNumber>").is_err());
    }

    #[test]
    fn errors_map_to_kinds() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>NoSuchUpload</Code>\
                   <Message>The specified upload does not exist.</Message></Error>";
        assert_eq!(xml_text(doc, "Code").as_deref(), Some("NoSuchUpload"));
        let e = |status: u16, code: Option<&str>| {
            s3_error(
                "Op",
                StatusCode::from_u16(status).expect("status"),
                code,
                Some("msg"),
                None,
            )
        };
        assert!(matches!(
            e(404, Some("NoSuchUpload")),
            StorageError::NotFound
        ));
        assert!(matches!(
            e(403, Some("AccessDenied")),
            StorageError::PermissionDenied(m) if m.ends_with("AccessDenied") && !m.contains("msg")
        ));
        assert!(matches!(
            e(503, Some("SlowDown")),
            StorageError::RateLimited { .. }
        ));
        assert!(matches!(e(429, None), StorageError::RateLimited { .. }));
        assert!(matches!(e(500, None), StorageError::Unavailable(_)));
        assert!(matches!(
            e(200, Some("InternalError")),
            StorageError::Unavailable(_)
        ));
        assert!(matches!(
            e(400, Some("EntityTooSmall")),
            StorageError::Other(_)
        ));
    }
}
