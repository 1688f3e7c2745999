//! A webhook receiver for tests and benchmarks, written the way an application would write
//! one: an HTTP server on loopback that records every POST (time, headers, raw body), answers
//! with the application id (or whatever the test makes it answer), and checks both signatures
//! byte for byte — `X-Kloudless-Signature` (seed 000) and the Standard Webhooks headers.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The wall-clock time of arrival (to compare with event times).
    pub wall: std::time::SystemTime,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `account` of a notification's form body (`None` for the empty test request).
    pub fn account(&self) -> Option<i64> {
        std::str::from_utf8(&self.body)
            .ok()?
            .strip_prefix("account=")?
            .parse()
            .ok()
    }

    /// Whether `X-Kloudless-Signature` is base64(HMAC-SHA256(key = API key, msg = raw body)).
    pub fn kloudless_signature_ok(&self, api_key: &str) -> bool {
        let Some(sig) = self.header("X-Kloudless-Signature") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        let mut m = Hmac::<Sha256>::new_from_slice(api_key.as_bytes()).expect("hmac key");
        m.update(&self.body);
        m.verify_slice(&sig).is_ok()
    }

    /// Whether the Standard Webhooks signature verifies with `secret` (`whsec_…`).
    pub fn standard_signature_ok(&self, secret: &str) -> bool {
        let (Some(id), Some(ts), Some(sigs)) = (
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        ) else {
            return false;
        };
        let Some(key) = secret
            .strip_prefix("whsec_")
            .and_then(|k| STANDARD.decode(k).ok())
        else {
            return false;
        };
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(&self.body);
        sigs.split(' ').any(|s| {
            let Some(b64) = s.strip_prefix("v1,") else {
                return false;
            };
            let Ok(sig) = STANDARD.decode(b64) else {
                return false;
            };
            let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
            m.update(&signed);
            m.verify_slice(&sig).is_ok()
        })
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with the application id.
    Echo,
    /// This status and body, with a `Retry-After` when given.
    Status(u16, String, Option<String>),
    /// 200 with the application id, after this long.
    Slow(std::time::Duration),
}

struct Shared {
    app_id: String,
    answer: Mutex<Answer>,
    got: Mutex<Vec<Received>>,
    notify: tokio::sync::Notify,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts on 127.0.0.1 answering `app_id`.
    pub async fn start(app_id: i64) -> Self {
        let shared = Arc::new(Shared {
            app_id: app_id.to_string(),
            answer: Mutex::new(Answer::Echo),
            got: Mutex::new(Vec::new()),
            notify: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn answer(&self, a: Answer) {
        *self.shared.answer.lock().expect("answer") = a;
    }

    /// Everything received so far.
    pub fn got(&self) -> Vec<Received> {
        self.shared.got.lock().expect("got").clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.shared.got.lock().expect("got").len()
    }

    /// Waits (at most `within`) until `pred` holds for what was received.
    pub async fn wait_for(
        &self,
        within: std::time::Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> bool {
        let until = Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            if pred(&self.shared.got.lock().expect("got")) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(std::time::Duration::from_millis(200)), notified)
                .await;
        }
    }
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.got.lock().expect("got").push(Received {
        at: Instant::now(),
        wall: std::time::SystemTime::now(),
        headers,
        body,
    });
    s.notify.notify_waiters();
    let answer = s.answer.lock().expect("answer").clone();
    match answer {
        Answer::Echo => (StatusCode::OK, s.app_id.clone()).into_response(),
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, s.app_id.clone()).into_response()
        }
        Answer::Status(code, body, retry_after) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut()
                    .insert("retry-after", ra.parse().expect("retry-after value"));
            }
            r
        }
    }
}
