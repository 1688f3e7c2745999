//! The HTTP connection loop (HTTP/1.1 and HTTP/2 over TCP): hyper with header limits set
//! well above the API's own, so that a request with too many or too large header fields is
//! answered by the API middleware with the usual JSON error and request id
//! (`api::MAX_HEADERS`, `api::MAX_HEADER_BYTES`) rather than by hyper with an empty 431.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Header fields hyper accepts before it answers a bare 431 itself.
pub const HARD_MAX_HEADERS: usize = 1000;
/// Bytes of request line and header fields hyper accepts (same).
pub const HARD_MAX_HEADER_BYTES: usize = 1024 * 1024;
/// How long a graceful shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

/// A connection builder with our limits.
pub fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .max_headers(HARD_MAX_HEADERS)
        .max_buf_size(HARD_MAX_HEADER_BYTES);
    b.http2().max_header_list_size(HARD_MAX_HEADER_BYTES as u32);
    b
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (at most [`DRAIN`]). `on_accept` sees every accepted connection first.
pub async fn serve_tcp(
    listener: TcpListener,
    app: Router,
    on_accept: impl Fn(&TcpStream) + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = connection_builder();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
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
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
