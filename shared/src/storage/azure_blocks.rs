//! Azure Blob block uploads for upload sessions: each part is a `Put Block` on the final blob
//! name, streamed, and completing is one `Put Block List` naming the blocks in order, so the
//! bytes never move again (as S3 multipart uploads in [`super::multipart`]).
//!
//! Blocks are not visible until committed: the blob keeps its old content (or does not exist)
//! until the block list is put, and Azure drops uncommitted blocks by itself a week after the
//! last `Put Block` of the blob. Committing a block list also drops every uncommitted block it
//! does not name, so of two sessions writing blocks to one name, the first to complete loses
//! the other's blocks (which [`AzureBlocks::block_list`] then shows missing).
//!
//! Block ids ([`block_id`]) come from the session id and the part number: they all have the
//! same length (Azure requires it of one blob's blocks), two sessions never share one, and a
//! part sent again replaces its block. Requests are signed with Shared Key
//! ([`super::sign::SharedKey`]) and sent with the egress policy's client, each drawing from the
//! account's provider budget. The blob is the one OpenDAL's Azure Blob service uses for the
//! same path and root, so a committed blob is the file a [`Connector`](super::Connector) on the
//! same account sees.

use super::multipart::{lock, watch_interval, Watched};
use super::service::AzblobSettings;
use super::sign::SharedKey;
use super::{PartLimits, StorageError, StoragePath};
use base64::Engine;
use bytes::Bytes;
use futures::Stream;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{header, StatusCode, Url};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The parts of an upload session kept as blocks: Azure takes up to 50,000 blocks of up to
/// 4000 MiB each (API versions since 2019-12-12; the signer asks for a later one), and the
/// API numbers parts up to 10,000.
pub const BLOCK_PARTS: PartLimits = PartLimits {
    min: 1,
    max: 4000 * 1024 * 1024,
    max_parts: 10_000,
};

/// Longest silence of the server: before it answers, between reads, while it leaves a block
/// body unread.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read into memory: a block list of 10,000 parts is about 1 MiB, and other
/// sessions' uncommitted blocks on the same name may be listed too (at most 100,000).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// What an error answer is read of (only its code is kept).
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The characters OpenDAL's Azure Blob service leaves unencoded in a blob's URL path
/// (`encodeURIComponent`'s, and `/`): the same blob gets the same URL, and signature.
const PATH_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The block id of part `part` of upload session `session`: base64 of the session id in 16
/// hex digits and the part number in 5 decimal ones, so every id has the same length.
pub fn block_id(session: i64, part: u16) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{:016x}{part:05}", session as u64))
}

/// The `Put Block List` document committing `ids` in order (each the latest version of its
/// block).
pub fn block_list_xml(ids: &[String]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for id in ids {
        xml.push_str("<Latest>");
        xml.push_str(&xml_escape(id));
        xml.push_str("</Latest>");
    }
    xml.push_str("</BlockList>");
    xml
}

/// One block of a blob, as `Get Block List` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The block id (base64, as sent).
    pub id: String,
    pub size: u64,
}

/// A blob's blocks: those of its committed content, in order, and those put since and not
/// committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockList {
    pub committed: Vec<Block>,
    pub uncommitted: Vec<Block>,
}

/// Block uploads to one blob: its URL, the account's key and the client that talks to it.
///
/// Cloning is cheap (the HTTP client is shared).
#[derive(Clone)]
pub struct AzureBlocks {
    http: reqwest::Client,
    /// Longest silence of the server: before it answers, between reads of an answer, and while
    /// it leaves a block body unread.
    io_timeout: Duration,
    /// The blob's URL, without a query.
    url: Url,
    account_name: String,
    account_key: String,
    container: String,
    /// The account's provider budget: each request waits for its slot.
    budget: crate::budget::Budget,
}

impl fmt::Debug for AzureBlocks {
    // Neither the key nor the customer's blob name belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AzureBlocks({})", self.container)
    }
}

impl AzureBlocks {
    /// The block target for `path` on the account `settings` describe, with default timeouts,
    /// its HTTP client under `egress` (the SSRF guard: names resolve through the policy, an
    /// IP-literal endpoint is checked now, redirects are not followed). Does not contact the
    /// provider.
    pub fn for_settings(
        settings: &AzblobSettings,
        path: &StoragePath,
        egress: &crate::egress::EgressPolicy,
    ) -> Result<Self, StorageError> {
        let io_timeout = DEFAULT_IO_TIMEOUT;
        if path.is_root() {
            return Err(StorageError::WrongKind { expected: "file" });
        }
        base64::engine::general_purpose::STANDARD
            .decode(&settings.account_key)
            .map_err(|_| StorageError::InvalidSettings("the account key is not base64".into()))?;
        let name = blob_name(settings.root.as_deref(), path)?;
        let url = blob_url(&settings.endpoint, &settings.container, &name)?;
        egress.check_url(&url).map_err(super::egress_error)?;
        // No client read timeout: reqwest's would also bound the upload of a slow block.
        // Silence is timed per request instead (see `put_block` and `send`).
        let http = egress
            .http_client(io_timeout)
            .map_err(|e| StorageError::InvalidSettings(e.to_string()))?;
        Ok(Self {
            http,
            io_timeout,
            url,
            account_name: settings.account_name.clone(),
            account_key: settings.account_key.clone(),
            container: settings.container.clone(),
            budget: crate::budget::Budget::none(),
        })
    }

    /// Draws every request from `budget` (the account connector's, [`super::Connector::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The blob's URL (without a query).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Puts block `id` of `len` bytes (more than 0), streaming `body`, which must yield
    /// exactly `len` bytes. A block of the same id put before is replaced.
    pub async fn put_block(
        &self,
        id: &str,
        len: u64,
        body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
    ) -> Result<(), StorageError> {
        const OP: &str = "Put Block";
        if len == 0 {
            return Err(StorageError::Other("Azure takes no empty block".into()));
        }
        let url = self.with_query(&[("comp", "block"), ("blockid", id)]);
        let headers = vec![("content-length".to_owned(), len.to_string())];
        let stall = Arc::new(Mutex::new(Some(Instant::now())));
        let body = Watched {
            inner: Box::pin(body),
            waiting_since: stall.clone(),
        };
        // With an explicit length hyper sends a plain body rather than chunked encoding.
        let req = self
            .signed(reqwest::Method::PUT, url, headers)?
            .body(reqwest::Body::wrap_stream(body));
        self.budget.admit().await?;
        let send = req.send();
        tokio::pin!(send);
        let mut tick = tokio::time::interval(watch_interval(self.io_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resp = loop {
            tokio::select! {
                r = &mut send => break r.map_err(|e| send_error(OP, e))?,
                _ = tick.tick() => {
                    let since = *lock(&stall);
                    if since.is_some_and(|t| t.elapsed() > self.io_timeout) {
                        return Err(self.silent(OP));
                    }
                }
            }
        };
        self.budget
            .observe(resp.status().as_u16(), resp.headers())
            .await;
        if !resp.status().is_success() {
            return Err(self.failure(OP, resp).await);
        }
        Ok(())
    }

    /// Commits `ids` in order as the blob's content. Without `overwrite` the commit is
    /// conditional on no blob of the name existing (`If-None-Match: *`): an existing blob is
    /// never replaced, and the answer is [`StorageError::AlreadyExists`].
    pub async fn put_block_list(
        &self,
        ids: &[String],
        overwrite: bool,
    ) -> Result<(), StorageError> {
        const OP: &str = "Put Block List";
        let body = block_list_xml(ids);
        let url = self.with_query(&[("comp", "blocklist")]);
        let mut headers = vec![
            ("content-length".to_owned(), body.len().to_string()),
            ("content-type".to_owned(), "application/xml".to_owned()),
        ];
        if !overwrite {
            headers.push(("if-none-match".to_owned(), "*".to_owned()));
        }
        let req = self.signed(reqwest::Method::PUT, url, headers)?.body(body);
        self.send(OP, req).await.map(drop)
    }

    /// The blob's committed and uncommitted blocks. A name with neither is an empty list.
    pub async fn block_list(&self) -> Result<BlockList, StorageError> {
        const OP: &str = "Get Block List";
        let url = self.with_query(&[("comp", "blocklist"), ("blocklisttype", "all")]);
        let req = self.signed(reqwest::Method::GET, url, Vec::new())?;
        match self.send(OP, req).await {
            Ok(doc) => parse_block_list(&String::from_utf8_lossy(&doc)),
            Err(StorageError::NotFound) => Ok(BlockList::default()),
            Err(e) => Err(e),
        }
    }

    fn with_query(&self, pairs: &[(&str, &str)]) -> Url {
        let mut url = self.url.clone();
        url.query_pairs_mut().extend_pairs(pairs);
        url
    }

    /// A request with `headers` (lowercase names) and the Shared Key headers that sign them.
    fn signed(
        &self,
        method: reqwest::Method,
        url: Url,
        headers: Vec<(String, String)>,
    ) -> Result<reqwest::RequestBuilder, StorageError> {
        let auth = SharedKey {
            account_name: &self.account_name,
            account_key: &self.account_key,
        }
        .sign(method.as_str(), &url, &headers, jiff::Timestamp::now())
        .map_err(|_| StorageError::InvalidSettings("the account key is not base64".into()))?;
        let mut req = self.http.request(method, url);
        for (k, v) in headers.iter().chain(&auth) {
            req = req.header(k.as_str(), v.as_str());
        }
        Ok(req)
    }

    /// Sends a request without a streamed body within the budget and reads its answer.
    async fn send(&self, op: &str, req: reqwest::RequestBuilder) -> Result<Vec<u8>, StorageError> {
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
        let (body, whole) = self.read_capped(op, resp, MAX_RESPONSE_BYTES).await?;
        if !whole {
            return Err(StorageError::Other(format!(
                "Azure {op} answered more than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        Ok(body)
    }

    fn silent(&self, op: &str) -> StorageError {
        StorageError::Unavailable(format!(
            "Azure {op}: the server was silent for more than {:?}",
            self.io_timeout
        ))
    }

    /// Reads at most `max` bytes of an answer, allowing the server `io_timeout` between reads;
    /// also says whether that was all of it.
    async fn read_capped(
        &self,
        op: &str,
        mut resp: reqwest::Response,
        max: usize,
    ) -> Result<(Vec<u8>, bool), StorageError> {
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.io_timeout, resp.chunk())
                .await
                .map_err(|_| self.silent(op))?
                .map_err(|e| {
                    StorageError::Unavailable(format!(
                        "Azure {op}: {}",
                        super::multipart::error_chain(&e.without_url())
                    ))
                })?;
            let Some(chunk) = chunk else {
                return Ok((body, true));
            };
            let room = max.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, false));
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// Turns an unsuccessful answer into an error, with Azure's error code when it gives one.
    async fn failure(&self, op: &str, resp: reqwest::Response) -> StorageError {
        let status = resp.status();
        let header_code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let code = match header_code {
            Some(c) => Some(c),
            None => {
                let (body, _) = self
                    .read_capped(op, resp, MAX_ERROR_BYTES)
                    .await
                    .unwrap_or_default();
                xml_text(&String::from_utf8_lossy(&body), "Code")
            }
        };
        azure_error(op, status, code.as_deref(), retry_after)
    }
}

/// The blob name OpenDAL's Azure Blob service gives `path` below `root`: the root normalized
/// to `a/b/` (no leading slash, empty segments dropped, nothing for no root or `/`) followed
/// by the path.
fn blob_name(root: Option<&str>, path: &StoragePath) -> Result<String, StorageError> {
    let segments: Vec<&str> = root
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // A URL resolves dot segments away: refuse rather than write where the connector does
    // not look.
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(StorageError::InvalidSettings(
            "the Azure Blob `root` must not contain '.' or '..' segments".into(),
        ));
    }
    let mut name = String::new();
    for s in segments {
        name.push_str(s);
        name.push('/');
    }
    name.push_str(path.file_key());
    Ok(name)
}

/// `<endpoint>/<container>/<blob name>`, the name percent-encoded as OpenDAL encodes it.
fn blob_url(endpoint: &str, container: &str, name: &str) -> Result<Url, StorageError> {
    let text = format!(
        "{}/{}/{}",
        endpoint.trim_end_matches('/'),
        utf8_percent_encode(container, PATH_ENCODE),
        utf8_percent_encode(name, PATH_ENCODE)
    );
    let url = Url::parse(&text)
        .map_err(|e| StorageError::InvalidSettings(format!("invalid Azure Blob endpoint: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(StorageError::InvalidSettings(
            "the Azure Blob endpoint must be an http(s) URL without a query".into(),
        ));
    }
    Ok(url)
}

/// A `Get Block List` answer.
fn parse_block_list(doc: &str) -> Result<BlockList, StorageError> {
    Ok(BlockList {
        committed: parse_blocks(section(doc, "CommittedBlocks"))?,
        uncommitted: parse_blocks(section(doc, "UncommittedBlocks"))?,
    })
}

/// The inside of the first `<tag>…</tag>` of `doc`; empty when absent or self-closing.
fn section<'a>(doc: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let Some(start) = doc.find(&open).map(|i| i + open.len()) else {
        return "";
    };
    match doc[start..].find(&format!("</{tag}>")) {
        Some(end) => &doc[start..start + end],
        None => "",
    }
}

fn parse_blocks(mut rest: &str) -> Result<Vec<Block>, StorageError> {
    let bad = |what: &str| {
        StorageError::Other(format!(
            "Azure Get Block List answered a document we cannot read: {what}"
        ))
    };
    let mut blocks = Vec::new();
    while let Some(start) = rest.find("<Block>") {
        let block_and_rest = &rest[start + "<Block>".len()..];
        let end = block_and_rest
            .find("</Block>")
            .ok_or_else(|| bad("unterminated Block"))?;
        let block = &block_and_rest[..end];
        let id = xml_text(block, "Name").ok_or_else(|| bad("a Block without a Name"))?;
        let size = xml_text(block, "Size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("a Block without a valid Size"))?;
        blocks.push(Block { id, size });
        rest = &block_and_rest[end + "</Block>".len()..];
    }
    Ok(blocks)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The text of the first `<tag>` element of a small flat document, at most 500 characters.
fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&format!("</{tag}>"))?;
    let text: String = doc[start..end]
        .trim()
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

/// Maps an Azure failure onto [`StorageError`], naming the status and the error code (never
/// the answer's text, which an internal address could fill with anything).
fn azure_error(
    op: &str,
    status: StatusCode,
    code: Option<&str>,
    retry_after: Option<Duration>,
) -> StorageError {
    let code: Option<String> = code.map(|c| {
        c.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(64)
            .collect()
    });
    let detail = match &code {
        Some(c) => format!("Azure {op} answered {status}: {c}"),
        None => format!("Azure {op} answered {status}"),
    };
    match (status.as_u16(), code.as_deref()) {
        (_, Some("ContainerNotFound")) => StorageError::InvalidSettings(detail),
        (404, _) => StorageError::NotFound,
        (409 | 412, _) => StorageError::AlreadyExists,
        (403, _) => StorageError::PermissionDenied(detail),
        (429, _) | (503, Some("ServerBusy")) => StorageError::RateLimited { retry_after },
        (503, _) if retry_after.is_some() => StorageError::RateLimited { retry_after },
        (s, _) if s >= 500 => StorageError::Unavailable(detail),
        _ => StorageError::Other(detail),
    }
}

/// A request that got no answer: our own body stream failed (interrupted), or the network or
/// the provider is at fault (unavailable).
fn send_error(op: &str, e: reqwest::Error) -> StorageError {
    // The blob's URL names the customer's file: never show it.
    let e = e.without_url();
    // The block body's own failure (a part failing its checks, a client that broke off)
    // travels down the chain of sources.
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
    StorageError::Unavailable(format!("Azure {op}: {}", super::multipart::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StoragePath {
        StoragePath::parse(s).expect("valid path")
    }

    fn settings(endpoint: &str, root: Option<&str>) -> AzblobSettings {
        AzblobSettings {
            container: "box".into(),
            endpoint: endpoint.into(),
            account_name: "devstoreaccount1".into(),
            account_key: "a2V5".into(),
            root: root.map(str::to_owned),
        }
    }

    /// The test endpoints are on loopback: a policy that allows them.
    fn open() -> crate::egress::EgressPolicy {
        crate::egress::EgressPolicy::open(crate::resolve::Resolver::system().clone())
    }

    #[test]
    fn block_ids_have_one_length_and_name_session_and_part() {
        let decode = |id: &str| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(id)
                    .expect("base64"),
            )
            .expect("ascii")
        };
        assert_eq!(decode(&block_id(1, 1)), "000000000000000100001");
        assert_eq!(decode(&block_id(0x2a, 10_000)), "000000000000002a10000");
        let ids: Vec<String> = [(1, 1), (1, 2), (7, 9999), (i64::MAX, 10_000), (123_456, 42)]
            .iter()
            .map(|(s, n)| block_id(*s, *n))
            .collect();
        assert!(ids.iter().all(|id| id.len() == ids[0].len()), "{ids:?}");
        // Another session's block of the same part number is another block.
        assert_ne!(block_id(1, 3), block_id(2, 3));
        assert_eq!(block_id(5, 3), block_id(5, 3));
    }

    #[test]
    fn block_list_document_keeps_the_order() {
        let ids = vec![block_id(9, 2), block_id(9, 1)];
        let xml = block_list_xml(&ids);
        assert_eq!(
            xml,
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{}</Latest>\
                 <Latest>{}</Latest></BlockList>",
                ids[0], ids[1]
            )
        );
        assert_eq!(
            block_list_xml(&[]),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList></BlockList>"
        );
    }

    #[test]
    fn urls_follow_opendal_root_and_encoding() {
        let egress = open();
        let path = p("docs/big (1).bin");
        for (endpoint, root, want) in [
            (
                "http://127.0.0.1:10000/devstoreaccount1",
                None,
                "http://127.0.0.1:10000/devstoreaccount1/box/docs/big%20(1).bin",
            ),
            (
                "https://acct.blob.core.windows.net/",
                Some("/data/x/"),
                "https://acct.blob.core.windows.net/box/data/x/docs/big%20(1).bin",
            ),
            (
                "https://acct.blob.core.windows.net",
                Some("data//x"),
                "https://acct.blob.core.windows.net/box/data/x/docs/big%20(1).bin",
            ),
            (
                "https://acct.blob.core.windows.net",
                Some("/"),
                "https://acct.blob.core.windows.net/box/docs/big%20(1).bin",
            ),
        ] {
            let b = AzureBlocks::for_settings(&settings(endpoint, root), &path, &egress)
                .expect("target");
            assert_eq!(b.url().as_str(), want, "root {root:?}");
        }
        let b = AzureBlocks::for_settings(&settings("http://h", None), &p("é+#?.txt"), &egress)
            .expect("target");
        assert_eq!(b.url().path(), "/box/%C3%A9%2B%23%3F.txt");
        // Block ids are query values: `+`, `/` and `=` are encoded, and decode back as sent.
        let url = b.with_query(&[("comp", "block"), ("blockid", "a+b/c=")]);
        assert!(
            url.as_str().ends_with("?comp=block&blockid=a%2Bb%2Fc%3D"),
            "{url}"
        );
        let (_, v) = url.query_pairs().nth(1).expect("blockid");
        assert_eq!(v, "a+b/c=");
    }

    #[test]
    fn bad_settings_are_refused_before_any_request() {
        let egress = open();
        for (s, path) in [
            (settings("http://h", Some("a/../b")), p("f")),
            (settings("not a url", None), p("f")),
            (settings("ftp://h", None), p("f")),
            (
                AzblobSettings {
                    account_key: "not base64!".into(),
                    ..settings("http://h", None)
                },
                p("f"),
            ),
        ] {
            assert!(matches!(
                AzureBlocks::for_settings(&s, &path, &egress),
                Err(StorageError::InvalidSettings(_))
            ));
        }
        assert!(matches!(
            AzureBlocks::for_settings(&settings("http://h", None), &StoragePath::root(), &egress),
            Err(StorageError::WrongKind { .. })
        ));
    }

    #[test]
    fn block_lists_parse() {
        let doc = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><CommittedBlocks>\
            <Block><Name>QUFB</Name><Size>5</Size></Block></CommittedBlocks><UncommittedBlocks>\
            <Block><Name>QkJC</Name><Size>7</Size></Block>\
            <Block><Name>Q0ND</Name><Size>0</Size></Block></UncommittedBlocks></BlockList>";
        let list = parse_block_list(doc).expect("parses");
        assert_eq!(
            list.committed,
            vec![Block {
                id: "QUFB".into(),
                size: 5
            }]
        );
        assert_eq!(list.uncommitted.len(), 2);
        assert_eq!(list.uncommitted[1].id, "Q0ND");
        let empty = "<BlockList><CommittedBlocks /><UncommittedBlocks /></BlockList>";
        assert_eq!(
            parse_block_list(empty).expect("parses"),
            BlockList::default()
        );
        let broken = "<BlockList><UncommittedBlocks><Block><Name>QUFB</Name></Block>\
            </UncommittedBlocks></BlockList>";
        assert!(parse_block_list(broken).is_err(), "no Size");
    }

    #[test]
    fn errors_map_to_kinds() {
        let e = |status: u16, code: Option<&str>| {
            azure_error(
                "Put Block List",
                StatusCode::from_u16(status).expect("status"),
                code,
                None,
            )
        };
        assert!(matches!(
            e(404, Some("BlobNotFound")),
            StorageError::NotFound
        ));
        assert!(matches!(
            e(404, Some("ContainerNotFound")),
            StorageError::InvalidSettings(_)
        ));
        assert!(matches!(
            e(409, Some("BlobAlreadyExists")),
            StorageError::AlreadyExists
        ));
        assert!(matches!(
            e(412, Some("ConditionNotMet")),
            StorageError::AlreadyExists
        ));
        assert!(matches!(
            e(403, Some("AuthenticationFailed")),
            StorageError::PermissionDenied(_)
        ));
        assert!(matches!(e(429, None), StorageError::RateLimited { .. }));
        assert!(matches!(
            e(503, Some("ServerBusy")),
            StorageError::RateLimited { .. }
        ));
        assert!(matches!(e(503, None), StorageError::Unavailable(_)));
        assert!(matches!(e(500, None), StorageError::Unavailable(_)));
        match e(400, Some("InvalidBlockList<script>")) {
            StorageError::Other(m) => {
                assert_eq!(
                    m,
                    "Azure Put Block List answered 400 Bad Request: InvalidBlockListscript"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
