//! A provider API replaying recorded answers, for the delta detectors (no Dropbox, Google
//! Drive or OneDrive server is reachable from here): an HTTP server on loopback holding a
//! script of expected requests (method and path) with the answers the provider gave. It
//! answers from the script when the request matches the next scripted one, else from the idle
//! answers (the provider with nothing new, or what every poll asks, like a root folder's id)
//! when one matches, and `599 unscripted` otherwise; it records
//! every request, so a test checks what the detector sent (tokens, cursors, bodies) and that
//! nothing unexpected was asked.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One recorded answer: what the request must be, and what to answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub method: Method,
    pub path: String,
    pub status: u16,
    /// `{base}` is replaced by the server's base URL (for links the provider hands back).
    pub body: String,
}

impl Answer {
    pub fn new(method: Method, path: &str, status: u16, body: impl Into<String>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            status,
            body: body.into(),
        }
    }
}

/// One request the server got.
#[derive(Debug, Clone)]
pub struct Got {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: String,
    /// Answered from the script (not idle, not unscripted).
    pub scripted: bool,
    /// Matched nothing: answered 599.
    pub unscripted: bool,
}

impl Got {
    /// The value of query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let u = reqwest::Url::parse(&format!("http://query/?{}", self.query)).ok()?;
        u.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Answer>,
    idle: Vec<Answer>,
    got: Vec<Got>,
}

/// The server; stops when dropped.
pub struct Replay {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replay {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state((inner.clone(), format!("http://{addr}")));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Hub YAML sending Dropbox, Google Drive and OneDrive requests (the delta detectors', the
    /// pass-through's) and token refreshes to this server; detectors polling every 200 ms when
    /// `detect`.
    pub fn oauth_yaml(&self, detect: bool) -> String {
        let base = self.base();
        format!(
            "events:\n  detect:\n    enabled: {detect}\n    interval_ms: 200\n    lease_ms: 3000\n    services:\n\
             \x20     dropbox:\n        api_url: {base}/2\n        token_url: {base}/oauth2/token\n\
             \x20     gdrive:\n        api_url: {base}/drive/v3\n        token_url: {base}/token\n\
             \x20     onedrive:\n        api_url: {base}/v1.0\n        token_url: {base}/oauth2/v2.0/token\n"
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends answers to the script, atomically (a poll sees all of them or none).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Sets what to answer to requests the script's next answer does not match.
    pub fn idle(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().idle = answers.into_iter().collect();
    }

    /// Scripted answers not asked for yet.
    pub fn pending(&self) -> usize {
        self.lock().script.len()
    }

    /// Every request so far.
    pub fn got(&self) -> Vec<Got> {
        self.lock().got.clone()
    }

    /// The requests that matched neither the script nor an idle answer.
    pub fn unscripted(&self) -> Vec<Got> {
        self.lock()
            .got
            .iter()
            .filter(|g| g.unscripted)
            .cloned()
            .collect()
    }
}

async fn answer(
    State((inner, base)): State<(Arc<Mutex<Inner>>, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = uri.path().to_owned();
    let matches = |a: &Answer| a.method == method && a.path == path;
    let (picked, scripted) = match inner.script.front() {
        Some(a) if matches(a) => (inner.script.pop_front(), true),
        _ => (inner.idle.iter().find(|a| matches(a)).cloned(), false),
    };
    inner.got.push(Got {
        method: method.clone(),
        path,
        query: uri.query().unwrap_or_default().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
        scripted,
        unscripted: picked.is_none(),
    });
    match picked {
        Some(a) => (
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/json")],
            a.body.replace("{base}", &base),
        )
            .into_response(),
        None => (
            StatusCode::from_u16(599).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "unscripted",
        )
            .into_response(),
    }
}
