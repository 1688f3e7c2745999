//! The spoke's HTTPS data endpoint: clients upload to and download from storage directly here,
//! with URLs the hub signed (`shared::auth::DataClaims`) for grants it registered on this spoke.
//! Bytes stream between the client and the provider; nothing passes through a hub.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use futures::TryStreamExt as _;
use serde::Deserialize;
use shared::auth::{verify_data, DataClaims, Tagger};
use shared::proto::Grant;
use shared::storage::{ConnectOptions, Connector, StoragePath};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Grants older than their expiry are dropped; at most this many are kept.
const MAX_GRANTS: usize = 10_000;

/// Grants the hubs registered, and the keys that verify their URLs.
#[derive(Debug, Default)]
pub struct Grants {
    inner: Mutex<HashMap<String, Grant>>,
    key: Mutex<Option<[u8; 32]>>,
    added: tokio::sync::Notify,
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
        map.retain(|_, g| g.expires > now);
        if map.len() < MAX_GRANTS {
            map.insert(g.grant_id.clone(), g);
        }
        drop(map);
        self.added.notify_waiters();
    }

    /// The URL key, once a hub has sent it.
    pub(crate) fn key(&self) -> Option<[u8; 32]> {
        *lock(&self.key)
    }

    /// The grant, waiting briefly for one still in flight from the hub (a client may follow a
    /// redirect faster than the control message arrives).
    pub(crate) async fn get(&self, id: &str) -> Option<Grant> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let notified = self.added.notified();
            if let Some(g) = lock(&self.inner).get(id).cloned() {
                return Some(g);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

#[derive(Clone)]
struct DataState {
    grants: Arc<Grants>,
    scratch: PathBuf,
    /// The hub's SSRF policy for provider connections.
    egress: shared::egress::EgressPolicy,
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

/// The router of the data endpoint.
pub fn router(
    grants: Arc<Grants>,
    scratch: PathBuf,
    egress: shared::egress::EgressPolicy,
) -> Router {
    Router::new()
        .route("/v1/data/{grant}", any(handle))
        .with_state(DataState {
            grants,
            scratch,
            egress,
        })
}

async fn handle(
    State(st): State<DataState>,
    Path(grant_id): Path<String>,
    Query(q): Query<Signed>,
    method: Method,
    body: Body,
) -> Response {
    let forbidden = |m: &str| refuse(StatusCode::FORBIDDEN, "forbidden", m);
    let Some(grant) = st.grants.get(&grant_id).await else {
        return forbidden("this signed URL is not valid here");
    };
    let Some(key) = *lock(&st.grants.key) else {
        return forbidden("this spoke has no URL key yet");
    };
    let wanted = if grant.method == "PUT" {
        matches!(method, Method::PUT | Method::POST)
    } else {
        matches!(method, Method::GET | Method::HEAD)
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
    if !wanted {
        return forbidden("this signed URL is for another method");
    }
    let opts = ConnectOptions {
        scratch_dir: st.scratch.clone(),
        egress: st.egress.clone(),
        ..ConnectOptions::default()
    };
    let result = async {
        let c = Connector::connect(&grant.location.service, &opts).await?;
        let path = StoragePath::parse(&grant.location.path)?;
        if grant.method == "GET" {
            let e = c.stat_file(&path).await?;
            let stream = c.read(&path, None).await?;
            let mut r = Response::new(Body::from_stream(stream));
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, e.size.into());
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            return Ok::<_, shared::storage::StorageError>(r);
        }
        let max = grant.max_bytes;
        let mut seen = 0u64;
        let stream = body
            .into_data_stream()
            .map_err(|e| e.to_string())
            .and_then(move |b| {
                seen += b.len() as u64;
                let over = max > 0 && seen > max;
                async move {
                    if over {
                        Err("the upload exceeds the allowed size".to_owned())
                    } else {
                        Ok(b)
                    }
                }
            });
        let e = c.write(&path, Box::pin(stream)).await?;
        // An upload grant is single use.
        lock(&st.grants.inner).remove(&grant.grant_id);
        let body = serde_json::json!({"id": grant.file_id, "type": "file", "name": path.name(),
            "size": e.size, "account": grant.account});
        Ok((StatusCode::CREATED, Json(body)).into_response())
    }
    .await;
    match result {
        Ok(r) => r,
        Err(shared::storage::StorageError::NotFound) => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "the file does not exist",
        ),
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            "service_unavailable",
            &e.to_string(),
        ),
    }
}

/// Serves the data endpoint over TLS on `listen` with the spoke's certificate.
pub async fn serve(
    listen: std::net::SocketAddr,
    tls: rustls::ServerConfig,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "data endpoint listening (HTTPS)");
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}
