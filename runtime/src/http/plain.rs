//! Plain HTTP/1.1 on a TCP listener: `outpost run`'s dev server and `serve`'s optional
//! `http` listener. Stops accepting on shutdown and lets open requests finish.

use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::body::InBody;
use super::handler::{ConnInfo, ServiceResult};
use super::Handler;

/// Default time a client has to send a complete request head (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The next connection, or `None` once `shutdown` turns true. Accept errors (out of file
/// descriptors, for one) are logged and retried after a pause, never fatal.
pub async fn accept_until(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accept connections until `shutdown` turns true, then wait (up to `drain`) for open
/// connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    while let Some((stream, remote)) = accept_until(&listener, &mut shutdown).await {
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            remote,
            local,
            https: false,
            protocol: "HTTP/1.1",
        };
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let (handler, conn) = (handler.clone(), conn.clone());
            async move { ServiceResult::Ok(handler(req.map(InBody::Hyper), conn).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}
