//! The spoke's HTTPS data endpoint: clients upload to and download from storage directly here,
//! with URLs the hub signed (`shared::auth::DataClaims`) for grants it registered on this spoke.
//! Bytes stream between the client and the provider; nothing passes through a hub.
//!
//! A grant does exactly one thing: a `GET` grant serves downloads, a `PUT` grant one upload
//! (consumed when the request starts, held to the `Content-Length` the client declared to the
//! hub, published without replacing unless the grant says so), and a `RELAY` grant is never
//! served here. The endpoint outlives hostile clients: accept errors back off and the
//! endpoint keeps listening (reported down to the hubs meanwhile), handshakes, request heads
//! and upload bodies have deadlines, and connections past a cap are closed at once.

use crate::config::DataEndpointConfig;
use crate::fsroots::FsRoots;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use shared::auth::{verify_data, DataClaims, Tagger};
use shared::proto::{
    EndpointHealth, Grant, PartReport, SideAnswer, SideAsk, UploadClaim, UploadDone,
};
use shared::storage::multipart::S3Multipart;
use shared::storage::{
    ConnectOptions, Connector, Publish, ServiceConfig, StagingKey, StorageError, StoragePath,
};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Grants older than their expiry are dropped; at most this many are kept.
const MAX_GRANTS: usize = 10_000;
/// Running uploads a heartbeat names at most (the hub reads as many).
pub const MAX_REPORTED_UPLOADS: usize = 2048;
/// Published uploads one heartbeat reports at most (with paths of up to a few KiB each, the
/// frame stays far below the protocol's 1 MiB); the rest go in the next ones.
pub const MAX_REPORTED_DONE: usize = 64;
/// How long a published upload is repeated to hub sessions that (re)connect: a hub that was
/// down when it finished still learns of it.
const DONE_KEEP: Duration = Duration::from_secs(60);
/// Published uploads kept for reporting at most.
const MAX_DONE: usize = 4096;

/// Published uploads to report, numbered in order so that each session sends each once.
#[derive(Debug, Default)]
struct DoneLog {
    next: u64,
    entries: VecDeque<(u64, std::time::Instant, UploadDone)>,
}

/// A registered grant, and whether its single use is spent (uploads only).
#[derive(Debug)]
struct Held {
    grant: Grant,
    used: bool,
}

/// Grants the hubs registered, the keys that verify their URLs, where they may point (`fs`
/// roots), and the uploads running on them.
#[derive(Debug, Default)]
pub struct Grants {
    inner: Mutex<HashMap<String, Held>>,
    key: Mutex<Option<[u8; 32]>>,
    added: tokio::sync::Notify,
    /// Uploads running now by grant id, named in heartbeats so the hub keeps their claims.
    uploads: Mutex<HashMap<String, UploadClaim>>,
    /// Uploads published recently, for the hubs' event feeds.
    done: Mutex<DoneLog>,
    /// Wakes the hub sessions when an upload is published (a heartbeat goes out at once).
    pub done_added: tokio::sync::Notify,
    fs_roots: FsRoots,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Grants {
    /// Grants that may name `fs` accounts only inside `fs_roots`.
    pub fn new(fs_roots: FsRoots) -> Self {
        Self {
            fs_roots,
            ..Self::default()
        }
    }

    /// Sets the URL key from the hub's welcome (base64url of 32 bytes).
    pub fn set_key(&self, b64: &str) {
        use base64::Engine as _;
        if let Ok(k) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64) {
            if let Ok(k) = <[u8; 32]>::try_from(k.as_slice()) {
                *lock(&self.key) = Some(k);
            }
        }
    }

    pub fn add(&self, g: Grant) {
        let now = now_secs();
        let mut map = lock(&self.inner);
        map.retain(|_, h| h.grant.expires > now);
        if map.len() < MAX_GRANTS {
            map.insert(
                g.grant_id.clone(),
                Held {
                    grant: g,
                    used: false,
                },
            );
        }
        drop(map);
        self.added.notify_waiters();
    }

    /// The URL key, once a hub has sent it.
    pub(crate) fn key(&self) -> Option<[u8; 32]> {
        *lock(&self.key)
    }

    /// Where grants and assignments may reach `fs` storage.
    pub fn fs_roots(&self) -> &FsRoots {
        &self.fs_roots
    }

    /// The grant (used or not), waiting briefly for one still in flight from the hub (a
    /// client may follow a redirect faster than the control message arrives).
    pub(crate) async fn get(&self, id: &str) -> Option<Grant> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let notified = self.added.notified();
            if let Some(h) = lock(&self.inner).get(id) {
                return Some(h.grant.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Spends the grant's single use: true for exactly one caller. The grant stays known
    /// until it expires, so a second use gets a clear answer rather than "unknown".
    fn consume(&self, id: &str) -> bool {
        match lock(&self.inner).get_mut(id) {
            Some(h) if !h.used => {
                h.used = true;
                true
            }
            _ => false,
        }
    }

    /// Records a published upload for the hubs (each session reports it once, and sessions
    /// that connect within a minute report it again: hubs record it once per account).
    fn published(&self, d: UploadDone) {
        let now = std::time::Instant::now();
        let mut log = lock(&self.done);
        log.entries
            .retain(|(_, at, _)| now.duration_since(*at) < DONE_KEEP);
        if log.entries.len() >= MAX_DONE {
            if let Some((_, _, lost)) = log.entries.pop_front() {
                tracing::warn!(grant = %lost.grant_id, "too many published uploads to report; \
                    the oldest is dropped without reaching a hub's event feed");
            }
        }
        log.next += 1;
        let n = log.next;
        log.entries.push_back((n, now, d));
        drop(log);
        self.done_added.notify_waiters();
    }

    /// Published uploads numbered after `after` (at most [`MAX_REPORTED_DONE`]), and the
    /// number to continue after.
    pub fn published_after(&self, after: u64) -> (Vec<UploadDone>, u64) {
        let now = std::time::Instant::now();
        let mut log = lock(&self.done);
        log.entries
            .retain(|(_, at, _)| now.duration_since(*at) < DONE_KEEP);
        let picked: Vec<_> = log
            .entries
            .iter()
            .filter(|(n, _, _)| *n > after)
            .take(MAX_REPORTED_DONE)
            .map(|(n, _, d)| (*n, d.clone()))
            .collect();
        let last = picked.last().map_or(after, |(n, _)| *n);
        (picked.into_iter().map(|(_, d)| d).collect(), last)
    }

    /// The claims of the uploads running now (for heartbeats; at most
    /// [`MAX_REPORTED_UPLOADS`], which keeps the frame far below the protocol's limit).
    pub fn uploads(&self) -> Vec<UploadClaim> {
        lock(&self.uploads)
            .values()
            .take(MAX_REPORTED_UPLOADS)
            .cloned()
            .collect()
    }
}

/// An upload named in heartbeats for as long as this lives.
struct Running<'a> {
    grants: &'a Grants,
    id: String,
}

impl<'a> Running<'a> {
    fn start(grants: &'a Grants, g: &Grant) -> Self {
        if let Some(claim) = &g.claim {
            lock(&grants.uploads).insert(
                g.grant_id.clone(),
                UploadClaim {
                    account: g.account,
                    claim: claim.clone(),
                },
            );
        }
        Self {
            grants,
            id: g.grant_id.clone(),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.grants.uploads).remove(&self.id);
    }
}

/// Whether the data endpoint is accepting connections, as heartbeats report it.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
}

impl Health {
    pub fn get(&self) -> EndpointHealth {
        if self.up.load(Ordering::Relaxed) {
            EndpointHealth::Up
        } else {
            EndpointHealth::Down
        }
    }

    /// Sets the state; true when it changed.
    fn set(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }
}

#[derive(Clone)]
struct DataState {
    grants: Arc<Grants>,
    scratch: PathBuf,
    /// The hub's SSRF policy for provider connections.
    egress: shared::egress::EgressPolicy,
    /// How long an upload body may go without a byte.
    body_idle: Duration,
}

#[derive(Debug, Deserialize)]
struct Signed {
    exp: i64,
    sig: String,
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error_code": code, "message": message,
        "id": format!("{:016x}", rand::random::<u64>())});
    (status, Json(body)).into_response()
}

/// [`refuse`] while the request's body is unread (or half read): the connection closes after
/// the answer unless [`handle`] drains the body first, so an unread body is never taken for a
/// next request.
fn refuse_unread(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = refuse(status, code, message);
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// The router of the data endpoint.
pub fn router(
    grants: Arc<Grants>,
    scratch: PathBuf,
    egress: shared::egress::EgressPolicy,
    limits: &DataEndpointConfig,
) -> Router {
    Router::new()
        .route("/v1/data/{grant}", any(handle))
        .with_state(DataState {
            grants,
            scratch,
            egress,
            body_idle: Duration::from_secs(limits.body_idle_timeout_secs),
        })
}

/// Bytes of an unread request body drained, at most, before a refusal is sent.
const DRAIN_MAX: u64 = 8 << 20;
/// Time spent draining, at most.
const DRAIN_TIME: Duration = Duration::from_secs(3);

/// Answers a request; a refusal sent before the body was read first drains the body (within
/// [`DRAIN_MAX`] and [`DRAIN_TIME`]), so a client still sending reads the answer instead of a
/// reset. A body not drained closes the connection after the answer.
async fn handle(
    state: State<DataState>,
    grant_id: Path<String>,
    q: Query<Signed>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let mut r = answer(state, grant_id, q, method, headers, &mut body).await;
    if let Some(unread) = body {
        if drain(unread).await {
            r.headers_mut().remove(header::CONNECTION);
        }
    }
    r
}

/// Reads and discards `body`; true when it ended within the limits.
async fn drain(body: Body) -> bool {
    let mut s = body.into_data_stream();
    let mut seen = 0u64;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(None) => return true,
            Ok(Some(Ok(b))) => {
                seen += b.len() as u64;
                if seen > DRAIN_MAX {
                    return false;
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

async fn answer(
    State(st): State<DataState>,
    Path(grant_id): Path<String>,
    Query(q): Query<Signed>,
    method: Method,
    headers: HeaderMap,
    body: &mut Option<Body>,
) -> Response {
    let forbidden = |m: &str| refuse_unread(StatusCode::FORBIDDEN, "forbidden", m);
    let Some(grant) = st.grants.get(&grant_id).await else {
        return forbidden("this signed URL is not valid here");
    };
    let Some(key) = st.grants.key() else {
        return forbidden("this spoke has no URL key yet");
    };
    let claims = DataClaims {
        method: &grant.method,
        grant: &grant.grant_id,
        account: grant.account,
        target: &grant.location.path,
        expires: q.exp,
    };
    if let Err(e) = verify_data(&Tagger::new(key), &claims, &q.sig, now_secs()) {
        return forbidden(&e.to_string());
    }
    // Exactly what the grant names, checked for each kind: anything else changes nothing.
    let (download, part) = match (grant.method.as_str(), &method) {
        ("GET", &Method::GET | &Method::HEAD) => (true, false),
        ("PUT", &Method::PUT | &Method::POST) => (false, false),
        ("PART", &Method::PUT | &Method::POST) => (false, true),
        ("RELAY", _) => {
            return forbidden(
                "a relay grant is served only on the relay endpoint, to network peers",
            )
        }
        ("GET" | "PUT" | "PART", _) => return forbidden("this signed URL is for another method"),
        _ => return forbidden("this spoke does not serve this kind of grant"),
    };
    if let Err(e) = st.grants.fs_roots().check(&grant.location.service) {
        return forbidden(&e.to_string());
    }
    let opts = ConnectOptions {
        scratch_dir: st.scratch.clone(),
        egress: st.egress.clone(),
        budgets: crate::budget::global(),
        ..ConnectOptions::default()
    };
    if download {
        return serve_download(&grant, &opts, method == Method::HEAD)
            .await
            .unwrap_or_else(storage_refusal);
    }
    if part {
        return upload_part(&st, &grant, &opts, &headers, body).await;
    }
    upload(&st, &grant, &opts, &headers, body).await
}

/// A part of an upload session (a `PART` grant): exactly the length the client declared to
/// the hub, its `Content-MD5` checked when sent, written where the grant says (the session's
/// S3 multipart upload, or the staging object the hub claimed), then recorded by a hub before
/// the client hears `200` with the session, as the hub itself answers. The grant is spent when
/// the request starts.
async fn upload_part(
    st: &DataState,
    grant: &Grant,
    opts: &ConnectOptions,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Response {
    let (Some(part), Some(len)) = (&grant.part, grant.declared_len) else {
        return refuse_unread(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an incomplete part grant",
        );
    };
    if declared_length(headers) != Some(len) {
        return refuse_unread(
            StatusCode::BAD_REQUEST,
            "content_length_mismatch",
            &format!("this part was declared as {len} bytes: send it with `Content-Length: {len}`"),
        );
    }
    let md5 = match headers.get("content-md5") {
        None => None,
        Some(v) => match shared::storage::checked::content_md5(v.as_bytes()) {
            Some(d) => Some(d),
            None => {
                return refuse_unread(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "Content-MD5 must be the base64 of 16 bytes",
                )
            }
        },
    };
    let body = match spend(
        st,
        grant,
        body,
        "this part URL was already used; send the part to the hub again for a new one",
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let stream = bounded_body(body, Some(len), Some(len), st.body_idle);
    let checked = shared::storage::checked::checked_part(stream, len, md5);
    let staging = part.staging.as_deref().and_then(StagingKey::parse);
    let connector = match Connector::connect(&grant.location.service, opts).await {
        Ok(c) => c,
        Err(e) => return storage_refusal(e),
    };
    let written: Result<Option<String>, StorageError> = async {
        match (&part.upload_id, &grant.location.service, &staging) {
            (Some(id), ServiceConfig::S3(s3), _) => {
                let path = StoragePath::parse(&grant.location.path)?;
                let mp = S3Multipart::for_settings(s3, &path, &opts.egress)?
                    .with_budget(connector.budget().clone());
                let body = futures::TryStreamExt::map_err(checked, StorageError::Interrupted);
                Ok(Some(mp.upload_part(id, part.number, len, body).await?))
            }
            (None, _, Some(key)) => {
                connector.stage_part(key, checked).await?;
                Ok(None)
            }
            _ => Err(StorageError::Other("the part grant names no place".into())),
        }
    }
    .await;
    let discard = || async {
        if let Some(k) = &staging {
            // Best effort: the hub's claim on it has the sweep delete it otherwise.
            let _ = connector.discard_staging(k).await;
        }
    };
    let etag = match written {
        Ok(e) => e,
        Err(e) => {
            discard().await;
            return part_refusal(e);
        }
    };
    let report = SideAsk::Part(PartReport {
        grant_id: grant.grant_id.clone(),
        account: grant.account,
        part: part.clone(),
        size: len,
        etag,
    });
    match crate::asks::hubs().ask(&report).await {
        Ok(SideAnswer::Recorded { session }) => (StatusCode::OK, Json(session)).into_response(),
        Ok(SideAnswer::Refused {
            message,
            status,
            code,
        }) => {
            // The hub deleted the staged part when it refused it (or it was never ours).
            let status = status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::CONFLICT);
            refuse(status, code.as_deref().unwrap_or("conflict"), &message)
        }
        Ok(other) => refuse(
            StatusCode::BAD_GATEWAY,
            "service_unavailable",
            &format!("unexpected answer from the hub: {other:?}"),
        ),
        Err(e) => {
            discard().await;
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                &format!("the part could not be recorded ({e}); send it to the hub again"),
            )
        }
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Spends an upload grant's single use and takes the request body; the refusal (410 with
/// `used`, a used URL) otherwise.
fn spend(
    st: &DataState,
    grant: &Grant,
    body: &mut Option<Body>,
    used: &str,
) -> Result<Body, Box<Response>> {
    if !st.grants.consume(&grant.grant_id) {
        return Err(Box::new(refuse_unread(StatusCode::GONE, "url_used", used)));
    }
    body.take().ok_or_else(|| {
        Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "no request body",
        ))
    })
}

/// What a failed part write answers: the client's mistakes are 4xx, nothing was kept.
fn part_refusal(e: StorageError) -> Response {
    use shared::storage::checked::{PART_DIGEST, PART_LENGTH};
    let text = e.to_string();
    if text.contains(PART_DIGEST) {
        refuse_unread(
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "the part's Content-MD5 does not match its bytes; the part was not kept",
        )
    } else if text.contains(PART_LENGTH) || text.contains(TOO_SHORT) {
        refuse_unread(
            StatusCode::BAD_REQUEST,
            "content_length_mismatch",
            "the part's length does not match Content-Length; the part was not kept",
        )
    } else if text.contains(TOO_LARGE) {
        refuse_unread(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "the part is larger than declared; the part was not kept",
        )
    } else if text.contains(IDLE) {
        refuse_unread(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the part sent no bytes for too long; the part was not kept",
        )
    } else {
        storage_refusal(e)
    }
}

async fn serve_download(
    grant: &Grant,
    opts: &ConnectOptions,
    head: bool,
) -> Result<Response, StorageError> {
    let c = Connector::connect(&grant.location.service, opts).await?;
    let path = StoragePath::parse(&grant.location.path)?;
    let e = c.stat_file(&path).await?;
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from_stream(c.read(&path, None).await?))
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, e.size.into());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// What went wrong reading an upload's body.
const TOO_LARGE: &str = "the upload is larger than allowed";
const TOO_SHORT: &str = "the upload ended before its declared length";
const IDLE: &str = "the upload sent no bytes for too long";

async fn upload(
    st: &DataState,
    grant: &Grant,
    opts: &ConnectOptions,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Response {
    let length = declared_length(headers);
    // Checked before the grant is spent, so a client that got it wrong can still use it.
    let limit = match grant.declared_len {
        Some(declared) => {
            if length.is_some_and(|n| n > declared) {
                return refuse_unread(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    &format!("this upload was declared as {declared} bytes; send exactly that"),
                );
            }
            if length != Some(declared) {
                return refuse_unread(
                    StatusCode::BAD_REQUEST,
                    "content_length_mismatch",
                    &format!(
                        "this upload was declared as {declared} bytes: send it with \
                         `Content-Length: {declared}`"
                    ),
                );
            }
            Some(declared)
        }
        None => (grant.max_bytes > 0).then_some(grant.max_bytes),
    };
    if let (Some(n), Some(max)) = (length, limit) {
        if n > max {
            return refuse_unread(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!("the upload is {n} bytes; the limit is {max}"),
            );
        }
    }
    let body = match spend(
        st,
        grant,
        body,
        "this upload URL was already used (each is good for one upload); ask for a new one",
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let _running = Running::start(&st.grants, grant);
    let result = async {
        let c = Connector::connect(&grant.location.service, opts).await?;
        let path = StoragePath::parse(&grant.location.path)?;
        // The staging key the hub recorded (so its sweep finds what a dead spoke leaves);
        // our own only from a hub that records none.
        let staging = match &grant.staging {
            Some(k) => StagingKey::parse(k),
            None => c.new_staging(),
        };
        // Never replaces unless the grant says so (a redirected `overwrite=true` upload): a
        // file of this name created after the URL was issued stays, and the upload fails.
        let publish = if grant.replace {
            Publish::Replace
        } else {
            Publish::NoReplace { alternatives: 0 }
        };
        let stream = bounded_body(body, limit, grant.declared_len, st.body_idle);
        let e = c.write_with(&path, stream, publish, staging).await?;
        Ok::<_, StorageError>((path, e))
    }
    .await;
    match result {
        Ok((path, e)) => {
            if let Some(receipt) = &grant.receipt {
                st.grants.published(UploadDone {
                    grant_id: grant.grant_id.clone(),
                    account: grant.account,
                    path: grant.location.path.clone(),
                    receipt: receipt.clone(),
                    size: e.size,
                    modified: e.modified,
                    etag: e.etag.clone(),
                    content_type: e.content_type.clone(),
                });
            }
            let body = serde_json::json!({"id": grant.file_id, "type": "file",
                "name": path.name(), "size": e.size, "account": grant.account});
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(StorageError::AlreadyExists) => refuse(
            StatusCode::CONFLICT,
            "conflict",
            "a file of this name was created after this URL was issued; nothing was written \
             (ask for a new URL, which names a free name)",
        ),
        Err(StorageError::Interrupted(m)) if m.contains(TOO_LARGE) => refuse_unread(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "the upload is larger than allowed; nothing was written",
        ),
        Err(StorageError::Interrupted(m)) if m.contains(IDLE) => refuse_unread(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the upload sent no bytes for too long; nothing was written",
        ),
        Err(StorageError::Interrupted(m)) if m.contains(TOO_SHORT) => refuse_unread(
            StatusCode::BAD_REQUEST,
            "content_length_mismatch",
            "the upload ended before its declared length; nothing was written",
        ),
        Err(e) => storage_refusal(e),
    }
}

fn storage_refusal(e: StorageError) -> Response {
    match e {
        StorageError::NotFound => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "the file or its folder does not exist",
        ),
        StorageError::PermissionDenied(m) => refuse(StatusCode::FORBIDDEN, "forbidden", &m),
        e => refuse(
            StatusCode::BAD_GATEWAY,
            "service_unavailable",
            &e.to_string(),
        ),
    }
}

/// The request body as a stream that fails past `limit` bytes, short of `exact` bytes at its
/// end, or after `idle` without a byte, so the write discards what it staged.
fn bounded_body(
    body: Body,
    limit: Option<u64>,
    exact: Option<u64>,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static {
    let state = Some((body.into_data_stream(), 0u64));
    Box::pin(futures::stream::unfold(state, move |state| async move {
        let (mut s, seen) = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Err(_) => Some((Err(IDLE.to_owned()), None)),
            Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
            Ok(Some(Ok(b))) => {
                let seen = seen + b.len() as u64;
                if limit.is_some_and(|l| seen > l) {
                    return Some((Err(TOO_LARGE.to_owned()), None));
                }
                Some((Ok(b), Some((s, seen))))
            }
            Ok(None) if exact.is_some_and(|n| seen != n) => Some((Err(TOO_SHORT.to_owned()), None)),
            Ok(None) => None,
        }
    }))
}

/// Errors of `accept` that concern one connection only (it was reset before we took it):
/// the listener is fine.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Longest pause between accept attempts while accepting fails.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves the data endpoint over TLS on `listen` with the spoke's certificate until
/// `shutdown`. It never gives up: a failed bind is retried, an accept error (out of file
/// descriptors, say) is logged and retried with backoff, and meanwhile `health` says down so
/// hubs send no clients here.
pub async fn serve(
    listen: std::net::SocketAddr,
    tls: rustls::ServerConfig,
    app: Router,
    limits: DataEndpointConfig,
    health: Arc<Health>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let conns = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let handshake = Duration::from_secs(limits.handshake_timeout_secs);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .http1_only();
    // The timer makes hyper enforce the head deadline, also on idle keep-alive connections.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    let mut backoff = Duration::from_millis(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(%listen, error = %e, retry_in = ?backoff,
                    "cannot listen for the data endpoint (reported down to the hubs)");
                health.set(false);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
            }
        }
    };
    health.set(true);
    tracing::info!(%listen, max_connections = limits.max_connections,
        "data endpoint listening (HTTPS)");
    let mut backoff = Duration::from_millis(10);
    let mut turned_away = 0u64;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                if health.set(true) {
                    tracing::info!(%listen, "data endpoint accepting connections again");
                }
                backoff = Duration::from_millis(10);
                tcp
            }
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                if health.set(false) {
                    tracing::warn!(%listen, error = %e,
                        "data endpoint cannot accept connections (reported down to the hubs); \
                         retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            // Closed now (a reset frees the socket at once), not queued behind the others.
            let _ = tcp.set_zero_linger();
            drop(tcp);
            turned_away += 1;
            if turned_away.is_power_of_two() {
                tracing::warn!(%listen, max_connections = limits.max_connections, turned_away,
                    "data endpoint at its connection limit; closing new connections");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(handshake, acceptor.accept(tcp)).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::trace!(error = %e, "data connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::UploadReceipt;

    fn done(n: usize) -> UploadDone {
        UploadDone {
            grant_id: format!("g{n}"),
            account: 1,
            path: format!("f{n}"),
            receipt: UploadReceipt {
                kind: "add".into(),
                tag: "00".into(),
            },
            size: n as u64,
            modified: None,
            etag: None,
            content_type: None,
        }
    }

    /// Each session reports each published upload once, at most `MAX_REPORTED_DONE` per
    /// heartbeat and in order; a session that starts later gets the recent ones again.
    #[test]
    fn published_uploads_are_reported_once_per_session_in_bounded_batches() {
        let g = Grants::default();
        for n in 0..MAX_REPORTED_DONE + 6 {
            g.published(done(n));
        }
        let (first, last) = g.published_after(0);
        assert_eq!(first.len(), MAX_REPORTED_DONE);
        assert_eq!(first[0].grant_id, "g0");
        let (rest, last2) = g.published_after(last);
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[5].grant_id, format!("g{}", MAX_REPORTED_DONE + 5));
        assert_eq!(g.published_after(last2), (Vec::new(), last2));
        let (again, _) = g.published_after(0);
        assert_eq!(again, first, "a new session hears them again");
        for n in 0..MAX_DONE {
            g.published(done(n));
        }
        assert!(lock(&g.done).entries.len() <= MAX_DONE, "bounded");
    }
}
