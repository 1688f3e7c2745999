//! Sources that are URLs (uploads from a URL), fetched the same way by hubs and spokes: the
//! SSRF-checked GET that follows redirects itself, the probe that learns a file's length and
//! whether it can be read in ranges, ranged reads of parts, and the copy of a URL into an
//! account ([`copy_from_url`]: parts into an S3 multipart upload when the server answers
//! ranges, one checked stream otherwise).
//!
//! SSRF: every request goes through the egress guard's client, whose resolver answers only
//! addresses the policy permits and which connects to the address it checked (no second
//! lookup); IP literals are checked before the request. Redirects are followed here, never by
//! the client: at most [`MAX_REDIRECTS`], each hop checked the same way, `http` and `https`
//! only. Each process checks for itself: a spoke fetching a URL a hub accepted applies its own
//! policy to every hop again (the source may answer differently the second time).

use super::multipart::S3Multipart;
use super::transfer::{
    copy_parts_via, copy_stream_from, ByteStream, CopyEvent, CopyOptions, Length, OpenFuture,
    PartPlan, RangeSource, StreamCopied, OVER_LIMIT,
};
use super::{Connector, StorageError, StoragePath};
use crate::egress::EgressPolicy;
use crate::proto::UrlFetch;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Most redirects followed.
pub const MAX_REDIRECTS: usize = 5;
/// Longest wait for a source's answer or its next bytes.
pub const IDLE: Duration = Duration::from_secs(60);

/// Why a URL was not fetched. The URL itself never appears (it may carry a signature): hosts
/// and statuses do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL we fetch (syntax, scheme, no host).
    #[error("{0}")]
    Invalid(String),
    /// The SSRF guard refused an address (of the URL or of a redirect).
    #[error("the URL is not fetched: {0}")]
    NotAllowed(String),
    /// No connection or no answer in time.
    #[error("cannot fetch from {host}: {cause}")]
    Unreachable { host: String, cause: String },
    /// The source answered, but not with the file (an error status, a broken redirect).
    #[error("{message}")]
    Upstream {
        status: Option<u16>,
        message: String,
    },
}

impl From<UrlError> for StorageError {
    /// For transfers: what retrying may cure (no answer, a 5xx or 429) is transient; the rest
    /// fails the transfer with the message.
    fn from(e: UrlError) -> Self {
        match e {
            UrlError::NotAllowed(_) => StorageError::EgressDenied(e.to_string()),
            UrlError::Unreachable { .. } => StorageError::Unavailable(e.to_string()),
            UrlError::Upstream {
                status: Some(s), ..
            } if s >= 500 || s == 429 => StorageError::Unavailable(e.to_string()),
            UrlError::Invalid(_) | UrlError::Upstream { .. } => StorageError::Source(e.to_string()),
        }
    }
}

/// The client of URL fetches: the egress guard's resolver, no redirects of its own, no proxy,
/// [`IDLE`] for each wait for data.
pub fn client(egress: &EgressPolicy) -> Result<reqwest::Client, StorageError> {
    egress
        .http_builder(Duration::from_secs(10))
        .read_timeout(IDLE)
        .user_agent(concat!("Switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StorageError::Other(format!("building the URL client: {e}")))
}

/// Parses a URL a client gave.
pub fn parse(url: &str) -> Result<Url, UrlError> {
    Url::parse(url.trim()).map_err(|e| UrlError::Invalid(format!("`url` is not a URL: {e}")))
}

/// A source's answer, after its redirects.
#[derive(Debug)]
pub struct Opened {
    /// Where the answer came from (the last hop).
    pub url: Url,
    pub response: reqwest::Response,
}

/// GETs `url` with `headers`, following at most [`MAX_REDIRECTS`] redirects, each hop checked
/// by `egress`. Answers a success, or `416` when the request asked for a range; anything else
/// is an [`UrlError::Upstream`].
pub async fn open(
    client: &reqwest::Client,
    egress: &EgressPolicy,
    url: &Url,
    headers: &HeaderMap,
) -> Result<Opened, UrlError> {
    let mut url = url.clone();
    let ranged = headers.contains_key(header::RANGE);
    for hop in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Invalid(format!(
                "`url` must be http or https, not {}{}",
                url.scheme(),
                if hop > 0 { " (after a redirect)" } else { "" }
            )));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(UrlError::Invalid("`url` has no host".into()));
        }
        egress
            .check_url(&url)
            .map_err(|e| UrlError::NotAllowed(e.to_string()))?;
        let sent = client.get(url.clone()).headers(headers.clone()).send();
        let r = tokio::time::timeout(IDLE, sent)
            .await
            .map_err(|_| UrlError::Unreachable {
                host: host.clone(),
                cause: "no answer in time".into(),
            })?
            .map_err(|e| match super::unreachable(&host, &e) {
                StorageError::EgressDenied(m) => UrlError::NotAllowed(m),
                other => UrlError::Unreachable {
                    host: host.clone(),
                    cause: match other {
                        StorageError::Unreachable { cause, .. } => cause,
                        o => o.to_string(),
                    },
                },
            })?;
        let status = r.status();
        if status.is_redirection() {
            let next = r
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| UrlError::Upstream {
                    status: Some(status.as_u16()),
                    message: format!("{host} answered {status} without a usable Location"),
                })?;
            url = next;
            continue;
        }
        if status.is_success() || (ranged && status == StatusCode::RANGE_NOT_SATISFIABLE) {
            return Ok(Opened { url, response: r });
        }
        return Err(UrlError::Upstream {
            status: Some(status.as_u16()),
            message: format!("{host} answered {status}"),
        });
    }
    Err(UrlError::Upstream {
        status: None,
        message: format!("the URL redirected more than {MAX_REDIRECTS} times"),
    })
}

/// What a probe learnt about a URL's file.
#[derive(Debug)]
pub struct Probe {
    /// The last hop: ranged reads go there.
    pub url: Url,
    /// The file's length, when the server said.
    pub size: Option<u64>,
    /// The server answers byte ranges of it.
    pub ranges: bool,
    /// What keeps ranged reads on this version of the file (`If-Range`): a strong ETag, else
    /// the last-modified date.
    pub validator: Option<HeaderValue>,
    /// The whole file's answer, when the server ignored the range (read it rather than ask
    /// again).
    pub body: Option<reqwest::Response>,
}

/// GETs the first byte of `url`: a `206` tells the length and that ranges work (one byte
/// read); a `200` is the whole file, kept in [`Probe::body`]; a `416` is an empty file.
pub async fn probe(
    client: &reqwest::Client,
    egress: &EgressPolicy,
    url: &Url,
) -> Result<Probe, UrlError> {
    let mut h = HeaderMap::new();
    h.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
    let Opened { url, response } = open(client, egress, url, &h).await?;
    let validator = validator(response.headers());
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let total = content_range(response.headers())
                .and_then(|(s, e, t)| (s == 0 && e == 0).then_some(t).flatten());
            match total {
                Some(size) => Ok(Probe {
                    url,
                    size: Some(size),
                    ranges: true,
                    validator,
                    body: None,
                }),
                // A range of a file of unknown length: read it whole instead.
                None => whole(client, egress, url).await,
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => whole(client, egress, url).await,
        _ => Ok(Probe {
            url,
            size: response.content_length(),
            ranges: false,
            validator,
            body: Some(response),
        }),
    }
}

/// A plain GET of the probe's last hop.
async fn whole(
    client: &reqwest::Client,
    egress: &EgressPolicy,
    url: Url,
) -> Result<Probe, UrlError> {
    let Opened { url, response } = open(client, egress, &url, &HeaderMap::new()).await?;
    Ok(Probe {
        url,
        size: response.content_length(),
        ranges: false,
        validator: validator(response.headers()),
        body: Some(response),
    })
}

/// A strong ETag, else `Last-Modified`: what `If-Range` may carry.
fn validator(h: &HeaderMap) -> Option<HeaderValue> {
    h.get(header::ETAG)
        .filter(|v| !v.as_bytes().starts_with(b"W/"))
        .or_else(|| h.get(header::LAST_MODIFIED))
        .cloned()
}

/// `Content-Range: bytes START-END/TOTAL` (`TOTAL` may be `*`).
fn content_range(h: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((s.trim().parse().ok()?, e.trim().parse().ok()?, total))
}

/// A URL's file read in ranges (one GET per part), held to the version the probe saw.
pub struct UrlRanges {
    client: reqwest::Client,
    egress: EgressPolicy,
    url: Url,
    size: u64,
    validator: Option<HeaderValue>,
}

impl UrlRanges {
    /// The ranges of a probed file that answers them.
    pub fn new(client: reqwest::Client, egress: EgressPolicy, probe: &Probe) -> Option<Self> {
        (probe.ranges).then_some(())?;
        Some(Self {
            client,
            egress,
            url: probe.url.clone(),
            size: probe.size?,
            validator: probe.validator.clone(),
        })
    }
}

impl RangeSource for UrlRanges {
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_> {
        Box::pin(async move {
            if len == 0 || offset + len > self.size {
                return Err(StorageError::Other(format!(
                    "bytes {offset}+{len} are outside the URL's {} bytes",
                    self.size
                )));
            }
            let last = offset + len - 1;
            let mut h = HeaderMap::new();
            let range = HeaderValue::from_str(&format!("bytes={offset}-{last}"))
                .map_err(|e| StorageError::Other(e.to_string()))?;
            h.insert(header::RANGE, range);
            if let Some(v) = &self.validator {
                h.insert(header::IF_RANGE, v.clone());
            }
            let Opened { response, .. } = open(&self.client, &self.egress, &self.url, &h).await?;
            let same = response.status() == StatusCode::PARTIAL_CONTENT
                && content_range(response.headers()) == Some((offset, last, Some(self.size)));
            if !same {
                return Err(StorageError::Source(
                    "the URL's file changed during the upload (or its server stopped \
                     answering ranges): start the upload again"
                        .into(),
                ));
            }
            let s = response
                .bytes_stream()
                .map(|r| r.map_err(|e| std::io::Error::other(body_cause(&e))));
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

/// What went wrong reading a source's body, without the URL (it may carry a signature).
pub fn body_cause(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "no data in time"
    } else if e.is_body() || e.is_decode() {
        "the connection broke"
    } else {
        "the transfer failed"
    }
}

/// Where [`copy_from_url`] writes.
pub enum UrlTarget<'a> {
    /// Parts into an open S3 multipart upload (the caller completes it from the parts).
    Parts {
        upload: &'a S3Multipart,
        upload_id: &'a str,
        parts: Vec<PartPlan>,
    },
    /// One stream through the connector's write path.
    Stream {
        dst: &'a Connector,
        path: &'a StoragePath,
    },
}

/// Copies the URL of `fetch` into `target`, checking the file is still the one the upload
/// started with (its length) and within `fetch.max_bytes`. Parts need a server that answers
/// ranges; a stream reads the probe's own answer when the server sent the whole file.
/// Returns the stream's size and digest (`None` for parts: they are reported one by one).
pub async fn copy_from_url(
    fetch: &UrlFetch,
    egress: &EgressPolicy,
    target: UrlTarget<'_>,
    opts: &CopyOptions,
    events: UnboundedSender<CopyEvent>,
    cancel: CancellationToken,
) -> Result<Option<StreamCopied>, StorageError> {
    let client = client(egress)?;
    let url = parse(&fetch.url.0)?;
    let probe = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(StorageError::Interrupted("cancelled".into())),
        p = probe(&client, egress, &url) => p?,
    };
    if let (Some(then), Some(now)) = (fetch.size, probe.size) {
        if then != now {
            return Err(StorageError::Source(format!(
                "the URL's file is {now} bytes now, {then} when the upload started"
            )));
        }
    }
    let max = if fetch.max_bytes == 0 {
        u64::MAX
    } else {
        fetch.max_bytes
    };
    if let Some(n) = probe.size.filter(|n| *n > max) {
        return Err(StorageError::Source(format!(
            "the URL's file is {n} bytes; the limit is {max}"
        )));
    }
    match target {
        UrlTarget::Parts {
            upload,
            upload_id,
            parts,
        } => {
            let ranges = UrlRanges::new(client, egress.clone(), &probe).ok_or_else(|| {
                StorageError::Source(
                    "the URL's server no longer answers ranged requests: start the upload again"
                        .into(),
                )
            })?;
            copy_parts_via(
                Arc::new(ranges),
                upload,
                upload_id,
                parts,
                opts,
                events,
                cancel,
            )
            .await
            .map(|()| None)
        }
        UrlTarget::Stream { dst, path } => {
            let response = match probe.body {
                Some(r) => r,
                None => {
                    open(&client, egress, &probe.url, &HeaderMap::new())
                        .await?
                        .response
                }
            };
            let len = match fetch.size.or(probe.size) {
                Some(n) => Length::Exactly(n),
                None => Length::AtMost(max),
            };
            let body = response
                .bytes_stream()
                .map(|r| r.map_err(|e| std::io::Error::other(body_cause(&e))));
            copy_stream_from(Box::pin(body), len, dst, path, opts, events, cancel)
                .await
                .map(Some)
                .map_err(|e| match e {
                    // Past the limit is final: another try would fetch as much again.
                    StorageError::Interrupted(m) if m.starts_with(OVER_LIMIT) => {
                        StorageError::Source(m)
                    }
                    e => e,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn content_ranges_parse() {
        let h = |v| headers(&[(header::CONTENT_RANGE, v)]);
        assert_eq!(
            content_range(&h("bytes 0-0/1234")),
            Some((0, 0, Some(1234)))
        );
        assert_eq!(content_range(&h("bytes 5-9/*")), Some((5, 9, None)));
        assert_eq!(content_range(&h("bytes */1234")), None);
        assert_eq!(content_range(&h("items 0-0/1")), None);
        assert_eq!(content_range(&h("bytes 0-x/1")), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn validators_prefer_strong_etags() {
        let strong = headers(&[
            (header::ETAG, "\"abc\""),
            (header::LAST_MODIFIED, "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        assert_eq!(
            validator(&strong).as_ref().map(|v| v.as_bytes()),
            Some(&b"\"abc\""[..])
        );
        let weak = headers(&[
            (header::ETAG, "W/\"abc\""),
            (header::LAST_MODIFIED, "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        assert_eq!(
            validator(&weak).as_ref().map(|v| v.as_bytes()),
            Some(&b"Tue, 01 Dec 2026 10:00:00 GMT"[..])
        );
        assert_eq!(validator(&HeaderMap::new()), None);
    }

    #[test]
    fn transient_source_failures_retry_and_the_rest_fail() {
        let unavailable =
            |e: UrlError| matches!(StorageError::from(e), StorageError::Unavailable(_));
        assert!(unavailable(UrlError::Unreachable {
            host: "h".into(),
            cause: "refused".into()
        }));
        for s in [500, 503, 429] {
            assert!(unavailable(UrlError::Upstream {
                status: Some(s),
                message: String::new()
            }));
        }
        assert!(matches!(
            StorageError::from(UrlError::Upstream {
                status: Some(404),
                message: "h answered 404".into()
            }),
            StorageError::Source(m) if m == "h answered 404"
        ));
        assert!(matches!(
            StorageError::from(UrlError::NotAllowed("x".into())),
            StorageError::EgressDenied(_)
        ));
    }
}
