//! The per-account change feed: what the API records after each change the provider
//! confirmed ([`record`]), the opaque cursors clients page with ([`CursorCodec`]), and the
//! retention sweep ([`spawn_sweeper`]). The feed's API is `api::events`; its rows are
//! `db::events`.
//!
//! Recording never fails the request that made the change: the provider already did it, and
//! answering an error would make the client retry a change that happened (a second upload,
//! a "not found" delete). A failed insert is logged (account, kind and the database's error,
//! never a path or credential) and counted in `switchyard_hub_event_record_failures`; the
//! change then misses from the feed, which a detector of outside changes (a later part) would
//! pick up as an outside change.

use crate::db::{Echo, NewEvent, PreviousObject};
use crate::error::ApiError;
use crate::ids::IdCodec;
use crate::state::{now_ms, AppState};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use shared::auth::{ct_eq, Tagger};
use shared::storage::{Entry, EntryKind, StoragePath};
use std::net::IpAddr;
use std::time::Duration;

tokio::task_local! {
    /// The address of the client whose request is running (set by the API middleware).
    pub static CLIENT_IP: Option<IpAddr>;
}

tokio::task_local! {
    /// When the request this task serves started (ms; set by the API middleware).
    pub static REQUEST_START: i64;
}

/// When the request this task serves started, if it is one.
fn request_start() -> Option<i64> {
    REQUEST_START.try_with(|t| *t).ok()
}

/// How far back an API change recorded outside a request (a transfer's completion, a
/// spoke's report) looks for a detector's view of the same change: a transfer that ran
/// longer than this may, rarely, show twice.
const BACKGROUND_ECHO_MS: i64 = 600_000;

/// The client address of the request this task serves, if any.
fn client_ip() -> Option<String> {
    CLIENT_IP
        .try_with(|ip| ip.map(|i| i.to_string()))
        .ok()
        .flatten()
}

/// The peer address of an API connection, put on each of its requests by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Event kinds (the Kloudless `type`).
pub mod kind {
    pub const ADD: &str = "add";
    pub const UPDATE: &str = "update";
    pub const DELETE: &str = "delete";
    pub const RENAME: &str = "rename";
    pub const MOVE: &str = "move";
    pub const COPY: &str = "copy";
}

/// One change made through the API, for [`record`].
#[derive(Debug)]
pub struct Change<'a> {
    pub account: i64,
    pub kind: &'static str,
    pub action: &'static str,
    /// The object after the change (for a delete: as it was, as far as known).
    pub entry: &'a Entry,
    /// Where a renamed or moved object was.
    pub from: Option<&'a StoragePath>,
    /// Makes recording idempotent (a spoke's report that reaches several hubs).
    pub dedupe_key: Option<String>,
}

/// The event row for `c`; `metadata` is the object exactly as the API returns it.
pub fn new_event(ids: &IdCodec, c: &Change<'_>) -> NewEvent {
    let mut metadata =
        serde_json::to_value(crate::api::storage::object_of(ids, c.account, c.entry))
            .unwrap_or(serde_json::Value::Null);
    // A deleted object's size and time are not known without an extra provider call.
    if c.kind == kind::DELETE {
        if let Some(m) = metadata.as_object_mut() {
            if m.get("type").and_then(|t| t.as_str()) == Some("file") {
                m.insert("size".into(), serde_json::Value::Null);
            }
            m.insert("modified".into(), serde_json::Value::Null);
        }
    }
    let previous = c.from.map(|p| PreviousObject {
        id: ids.encode(c.account, c.entry.kind, p),
        name: p.name().to_owned(),
        parent_id: p
            .parent()
            .map(|parent| ids.encode(c.account, EntryKind::Folder, &parent)),
        path: p.to_string(),
    });
    let known = c.kind != kind::DELETE;
    NewEvent {
        account_id: c.account,
        kind: c.kind,
        action: c.action,
        object_id: ids.encode(c.account, c.entry.kind, &c.entry.path),
        path: c.entry.path.to_string(),
        metadata: metadata.to_string(),
        previous,
        modified_ms: now_ms(),
        ip: client_ip(),
        user_id: None,
        origin: "api",
        version: c.entry.etag.clone().filter(|_| known),
        size: (known && c.entry.kind == EntryKind::File).then_some(c.entry.size as i64),
        mtime_ms: c.entry.modified.filter(|_| known),
        dedupe_key: c.dedupe_key.clone(),
        echo: Echo::Api {
            since_ms: request_start().unwrap_or_else(|| now_ms() - BACKGROUND_ECHO_MS),
        },
    }
}

/// Records a change the provider confirmed. Never fails (see the module comment).
pub async fn record(state: &AppState, c: Change<'_>) {
    let e = new_event(&state.ids, &c);
    record_event(state, &e).await;
}

/// Records a prepared event; failures are logged and counted, never returned. True when it
/// was recorded (not a duplicate, an echo, or for an application that does not collect).
pub async fn record_event(state: &AppState, e: &NewEvent) -> bool {
    match state.db.record_event(e, now_ms()).await {
        Ok(Some(_)) => {
            state.metrics.events_recorded.inc();
            true
        }
        Ok(None) => false,
        Err(err) => {
            failed(state, e, &err);
            false
        }
    }
}

/// Logs and counts an event that could not be recorded.
pub fn failed(state: &AppState, e: &NewEvent, err: &sqlx::Error) {
    state.metrics.event_record_failures.inc();
    tracing::warn!(account = e.account_id, kind = e.kind, action = e.action, error = %err,
        "could not record an event; the change itself succeeded and is missing from the feed");
}

/// The receipt of a client-direct upload grant: the event kind the upload will be, tagged
/// over the grant, account, path and kind so that a spoke can report only what was granted.
pub fn receipt(
    state: &AppState,
    grant_id: &str,
    account: i64,
    path: &str,
    kind: &str,
) -> shared::proto::UploadReceipt {
    shared::proto::UploadReceipt {
        kind: kind.to_owned(),
        tag: hex::encode(receipt_tag(state, grant_id, account, path, kind)),
    }
}

fn receipt_tag(state: &AppState, grant_id: &str, account: i64, path: &str, kind: &str) -> [u8; 32] {
    state.receipts.tag(&[
        b"upload-receipt",
        grant_id.as_bytes(),
        &account.to_be_bytes(),
        path.as_bytes(),
        kind.as_bytes(),
    ])
}

/// Records the client-direct uploads a spoke published (reported in its heartbeats): one
/// event per grant and account, however many hubs the report reaches or how often. A report
/// whose receipt this network's hubs did not issue is refused and logged.
pub async fn record_direct_uploads(
    state: &AppState,
    spoke_id: i64,
    done: Vec<shared::proto::UploadDone>,
) {
    for d in done {
        let want = receipt_tag(state, &d.grant_id, d.account, &d.path, &d.receipt.kind);
        let genuine = hex::decode(&d.receipt.tag).is_ok_and(|t| ct_eq(&t, &want));
        let k = match d.receipt.kind.as_str() {
            kind::ADD => kind::ADD,
            kind::UPDATE => kind::UPDATE,
            _ => "",
        };
        let path = StoragePath::parse(&d.path);
        let (true, false, Ok(path)) = (genuine, k.is_empty(), path) else {
            tracing::warn!(spoke_id, grant = %d.grant_id, account = d.account,
                "a spoke reported an upload no hub granted; ignored");
            continue;
        };
        let entry = Entry {
            path,
            kind: EntryKind::File,
            size: d.size,
            modified: d.modified,
            etag: d.etag,
            content_type: d.content_type,
        };
        let c = Change {
            account: d.account,
            kind: k,
            action: "upload",
            entry: &entry,
            from: None,
            dedupe_key: Some(format!("grant:{}", d.grant_id)),
        };
        record(state, c).await;
    }
}

/// A deleted object as far as the API knows it without asking the provider.
pub fn gone(path: &StoragePath, kind: EntryKind) -> Entry {
    Entry {
        path: path.clone(),
        kind,
        size: 0,
        modified: None,
        etag: None,
        content_type: None,
    }
}

/// Which of rename or move a change of `from` into `to` is: a move when the folder changed
/// (whether or not the name did too).
pub fn rename_or_move(from: &StoragePath, to: &StoragePath) -> &'static str {
    if from.parent() == to.parent() {
        kind::RENAME
    } else {
        kind::MOVE
    }
}

const CURSOR_TAG_LEN: usize = 12;
const CURSOR_RAW_LEN: usize = 16 + CURSOR_TAG_LEN;

/// Opaque event cursors: base64url of the account, the stream position and an HMAC tag over
/// both, so a client can neither forge a position nor use one account's cursor on another.
#[derive(Debug, Clone)]
pub struct CursorCodec {
    tagger: Tagger,
}

impl CursorCodec {
    pub fn new(tagger: Tagger) -> Self {
        Self { tagger }
    }

    fn tag(&self, account: i64, seq: i64) -> [u8; 32] {
        self.tagger
            .tag(&[b"event-cursor", &account.to_be_bytes(), &seq.to_be_bytes()])
    }

    /// The cursor of position `seq` (after event `seq`) of `account`.
    pub fn encode(&self, account: i64, seq: i64) -> String {
        let mut raw = Vec::with_capacity(CURSOR_RAW_LEN);
        raw.extend_from_slice(&account.to_be_bytes());
        raw.extend_from_slice(&seq.to_be_bytes());
        raw.extend_from_slice(&self.tag(account, seq)[..CURSOR_TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position a cursor of `account` names; anything else (malformed, forged, another
    /// account's) is a 400 `invalid_cursor`.
    pub fn decode(&self, account: i64, text: &str) -> Result<i64, ApiError> {
        let invalid = || {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "`cursor` is not a cursor of this account's event feed: pass one this API \
                 returned for the account, `after-auth`, or none (from the oldest kept event)",
            )
        };
        if text.len() > 64 {
            return Err(invalid());
        }
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        if raw.len() != CURSOR_RAW_LEN {
            return Err(invalid());
        }
        let mut a = [0u8; 8];
        let mut s = [0u8; 8];
        a.copy_from_slice(&raw[..8]);
        s.copy_from_slice(&raw[8..16]);
        let (acc, seq) = (i64::from_be_bytes(a), i64::from_be_bytes(s));
        let ok = ct_eq(&raw[16..], &self.tag(acc, seq)[..CURSOR_TAG_LEN]);
        if !ok || acc != account || seq < 0 {
            return Err(invalid());
        }
        Ok(seq)
    }
}

/// Events one sweep statement deletes at most (bounds its transaction and lock time).
const SWEEP_BATCH: i64 = 1000;
/// Batches one sweep round runs at most; the next round takes the rest.
const SWEEP_MAX_BATCHES: usize = 100;
/// How often every hub sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes events older than `events.retention_days`, in bounded batches; returns how many.
pub async fn sweep_once(state: &AppState) -> Result<u64, sqlx::Error> {
    let before = now_ms() - state.config.events.retention().as_millis() as i64;
    let mut total = 0;
    for _ in 0..SWEEP_MAX_BATCHES {
        let n = state.db.sweep_events(before, SWEEP_BATCH).await?;
        total += n;
        if n < SWEEP_BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// The retention sweep: at start-up, then every minute, on every hub (deletes are
/// idempotent, so hubs sweeping at once only share the work).
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sweep_once(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
                Err(e) => tracing::warn!(error = %e, "the event retention sweep failed"),
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let c = CursorCodec::new(Tagger::new([7u8; 32]));
        let text = c.encode(42, 9);
        assert_eq!(c.decode(42, &text).expect("own"), 9);
        // Another account's cursor, a different key, garbage, and a flipped byte.
        assert!(c.decode(43, &text).is_err());
        assert!(CursorCodec::new(Tagger::new([8u8; 32]))
            .decode(42, &text)
            .is_err());
        for bad in ["", "x", "after-auth", "-1", &"A".repeat(80)] {
            assert!(c.decode(42, bad).is_err(), "{bad}");
        }
        let mut raw = URL_SAFE_NO_PAD.decode(&text).expect("b64");
        raw[15] ^= 1;
        assert!(c.decode(42, &URL_SAFE_NO_PAD.encode(raw)).is_err());
    }

    #[test]
    fn renames_and_moves() {
        let p = |s: &str| StoragePath::parse(s).expect("path");
        assert_eq!(rename_or_move(&p("a/b.txt"), &p("a/c.txt")), kind::RENAME);
        assert_eq!(rename_or_move(&p("a/b.txt"), &p("d/b.txt")), kind::MOVE);
        assert_eq!(rename_or_move(&p("a/b.txt"), &p("d/c.txt")), kind::MOVE);
    }
}
