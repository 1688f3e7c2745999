//! HTTPS on the hub's one accept loop (`crate::http::serve`: a TLS handshake with a deadline,
//! then HTTP/1.1 or HTTP/2, graceful shutdown), its companions, and the plain-HTTP listener that redirects to HTTPS and
//! answers ACME HTTP-01 challenges.

use super::Tls;
use crate::error::ApiError;
use crate::state::AppState;
use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Serves the API over TLS on `listener` until `shutdown` resolves, with what TLS brings
/// along: the redirect listener, the ACME manager or the SIGHUP reload. Returns once every
/// connection has finished.
pub async fn serve(
    state: AppState,
    tls: Arc<Tls>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(());
    // Bind first, so that a port conflict is an error of `serve` rather than a log line.
    let redirect = match tls.config().redirect_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("tls.redirect_listen: binding {addr}"))?,
        ),
        None => None,
    };
    let mut companions = Vec::new();
    if let Some(l) = redirect {
        tracing::info!(listen = %l.local_addr()?, "redirecting HTTP to HTTPS");
        companions.push(tokio::spawn(serve_redirect(
            state.clone(),
            tls.clone(),
            l,
            stop_rx.clone(),
        )));
    }
    if tls.config().acme.is_some() {
        companions.push(tokio::spawn(super::acme::run(
            state.config.clone(),
            tls.clone(),
            stop_rx.clone(),
        )));
    }
    // With ACME too: SIGHUP's default action would end the process.
    companions.push(tokio::spawn(reload_on_sighup(tls.clone(), stop_rx.clone())));

    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let handshake_timeout = Duration::from_secs(tls.config().handshake_timeout_secs);
    let handshake = move |tcp: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Some(s),
                // Scanners, plain HTTP on the TLS port, bad SNI: the client's problem, not ours.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(timeout = ?handshake_timeout, "TLS handshake timed out");
                    None
                }
            }
        }
    };
    let tapped = state.clone();
    let served = crate::http::serve(
        listener,
        crate::app(state),
        move |tcp| crate::accepted(&tapped, tcp),
        handshake,
        shutdown,
    )
    .await;
    drop(stop_rx);
    // The companions hold receivers: tell them, then wait for them.
    let _ = stop_tx.send(());
    for c in companions {
        let _ = c.await;
    }
    Ok(served?)
}

/// Re-reads the certificate files on every SIGHUP until stopped (with ACME, a no-op: its
/// certificates renew on their own).
async fn reload_on_sighup(tls: Arc<Tls>, mut stop: watch::Receiver<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS certificate reload is off");
            return;
        }
    };
    loop {
        tokio::select! {
            s = hup.recv() => {
                if s.is_none() {
                    return;
                }
                if let Err(e) = tls.reload() {
                    tracing::error!(error = format!("{e:#}"),
                        "TLS certificate reload failed; still serving the previous certificate");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[derive(Clone)]
struct RedirectState {
    tls: Arc<Tls>,
    /// `https://host[:port]` of `public_url`, the fallback when `Host` is missing or bad.
    origin: String,
    /// `:port` of the HTTPS endpoint, empty for 443.
    port_suffix: String,
}

/// Serves the redirect listener until stopped.
async fn serve_redirect(
    state: AppState,
    tls: Arc<Tls>,
    listener: TcpListener,
    mut stop: watch::Receiver<()>,
) {
    let public = state.config.public_url();
    let uri: Uri = public.parse().unwrap_or_default();
    let port_suffix = match uri.port_u16() {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let origin = match uri.authority() {
        Some(a) => format!("https://{a}"),
        None => public.clone(),
    };
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(acme_challenge),
        )
        .fallback(redirect)
        .with_state(RedirectState {
            tls,
            origin,
            port_suffix,
        });
    let stopped = async move {
        let _ = stop.changed().await;
    };
    let r = crate::http::serve_tcp(listener, app, |_| {}, stopped).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "the redirect listener stopped");
    }
}

/// `GET /.well-known/acme-challenge/{token}`: the key authorization of a pending challenge.
async fn acme_challenge(
    State(s): State<RedirectState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    match s.tls.challenges.get(&token) {
        Some(key_authorization) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization,
        )
            .into_response()),
        None => Err(ApiError::not_found("ACME challenge")),
    }
}

/// Anything else: `308` to the same host, path and query over HTTPS.
async fn redirect(State(s): State<RedirectState>, headers: HeaderMap, uri: Uri) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map(|a| a.host().to_owned());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = match host {
        Some(h) => format!("https://{h}{}{path}", s.port_suffix),
        None => format!("{}{path}", s.origin),
    };
    match axum::http::HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::bad_request("cannot redirect this request").into_response(),
    }
}
