//! The HTTP/1.1 accept loop, on hyper directly so that lockd controls what
//! `axum::serve` does not expose: the header-read timeout (slow clients cannot hold a
//! connection open by trickling headers) and a graceful drain with a deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Closes the HTTP connection of the request that carries it, whatever the connection
/// is doing: used to cut off an event-stream client that stopped reading, which a
/// response body alone cannot do (hyper stops polling a body whose socket is full).
#[derive(Debug, Clone)]
pub struct ConnectionCloser(pub CancellationToken);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest time a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Longest time in-flight requests get to finish after shutdown begins.
    pub shutdown_timeout: Duration,
}

/// Answers a connection over the limit with a 503 problem document, then closes it.
/// The request is not read: the answer is the same whatever it was.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = concat!(
        r#"{"type":"urn:lockd:problem:connection_limit","title":"Too many connections","#,
        r#""status":503,"detail":"this server has as many connections open as it serves; "#,
        r#"retry shortly or on another instance","code":"connection_limit"}"#
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Serves `app` on `listener` until `shutdown` fires, then stops accepting, lets the
/// requests in flight finish (up to the shutdown timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Bounds what a connection may buffer, both ways: a client that stops reading an
        // event stream costs at most this much before hyper stops taking its events
        // (and the hub, whose buffer then fills, cuts it off).
        .max_buf_size(64 * 1024)
        .keep_alive(true);

    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Running out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            crate::metrics::rejected("connection_limit");
            tokio::spawn(refuse(stream));
            continue;
        };
        crate::metrics::connections(1.0);
        let closer = CancellationToken::new();
        let service = TowerToHyperService::new(app.clone().map_request({
            let closer = closer.clone();
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectionCloser(closer.clone()));
                request
            }
        }));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                () = closer.cancelled() => {
                    tracing::debug!(%peer, "connection closed by the server");
                }
            }
            crate::metrics::connections(-1.0);
        });
    }
    drop(listener);

    tracing::info!("draining connections");
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = u64::try_from(limits.shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
            "requests still in flight at the shutdown deadline were dropped"
        );
    }
}
