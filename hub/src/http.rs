//! The HTTP connection loop (HTTP/1.1 and HTTP/2 over TCP): hyper with header limits set
//! well above the API's own, so that a request with too many or too large header fields is
//! answered by the API middleware with the usual JSON error and request id
//! (`api::MAX_HEADERS`, `api::MAX_HEADER_BYTES`) rather than by hyper with an empty 431.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Header fields hyper accepts before it answers a bare 431 itself.
pub const HARD_MAX_HEADERS: usize = 1000;
/// Bytes of request line and header fields hyper accepts (same).
pub const HARD_MAX_HEADER_BYTES: usize = 1024 * 1024;
/// How long a graceful shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

/// A connection builder with our limits. The timer makes hyper enforce its header read
/// timeout (30 s): without one, a client sending its headers a byte at a time would hold a
/// socket and a task forever.
pub fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_headers(HARD_MAX_HEADERS)
        .max_buf_size(HARD_MAX_HEADER_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HARD_MAX_HEADER_BYTES as u32);
    b
}

/// Serves `app` over plain TCP until `shutdown` resolves (see [`serve`]).
pub async fn serve_tcp(
    listener: TcpListener,
    app: Router,
    on_accept: impl Fn(&TcpStream) + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(
        listener,
        app,
        on_accept,
        |tcp| std::future::ready(Some(tcp)),
        shutdown,
    )
    .await
}

/// The one accept loop of every listener the hub serves: `on_accept` sees each accepted
/// connection first, `handshake` turns it into the byte stream HTTP runs on (plain TCP, or a
/// TLS session; `None` drops it), each on its own task. When `shutdown` resolves, listening
/// stops and requests in flight (and handshakes under way) get at most [`DRAIN`] to finish.
pub async fn serve<IO, H>(
    listener: TcpListener,
    app: Router,
    on_accept: impl Fn(&TcpStream) + Send + 'static,
    handshake: impl Fn(TcpStream) -> H + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    H: Future<Output = Option<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = connection_builder();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        on_accept(&tcp);
        // Subscribed now, so a shutdown during the handshake still reaches this connection.
        let watcher = graceful.watcher();
        // Every request of the connection carries the peer's address (the `ip` of events).
        let tagged = tower::ServiceExt::map_request(
            app.clone(),
            move |mut r: http::Request<hyper::body::Incoming>| {
                r.extensions_mut()
                    .insert(crate::events::ClientAddr(peer.ip()));
                r
            },
        );
        let (builder, service) = (builder.clone(), TowerToHyperService::new(tagged));
        let io = handshake(tcp);
        tokio::spawn(async move {
            let Some(io) = io.await else {
                return;
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; closing them");
    }
    Ok(())
}
