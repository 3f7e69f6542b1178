//! Plain HTTP/1.1 on a TCP listener: `outpost run`'s dev server, the admin listener and
//! `serve`'s optional `http` listener, under the same head caps as TLS (and, for `http`, the
//! node's connection cap). Stops accepting on shutdown and lets open requests finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::body::InBody;
use super::conn::{linger, Framing, Lingering, Open, Timeouts, Tracked, Watched};
use super::handler::ConnInfo;
use super::Handler;

/// Default time a client has to send a complete request head (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection with no request in flight stays open (the configuration's
/// default `idle_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default largest request head (the configuration's default `max_header_bytes`).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What bounds each plain connection.
#[derive(Clone)]
pub struct PlainLimits {
    /// For each request head: see `conn::Timeouts`.
    pub header_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
    /// Largest request head: hyper answers 431 past it (it cannot go below 8 KiB).
    pub max_header_bytes: usize,
    /// The node's connection cap, shared with its other listeners, the counter of connections
    /// it refused and the gauge of those open. `None` for listeners outside it (admin,
    /// `outpost run`).
    pub connections: Option<(Arc<Semaphore>, prometheus::IntCounter, prometheus::IntGauge)>,
}

impl PlainLimits {
    /// The defaults, without a connection cap.
    pub fn uncapped(header_timeout: Duration) -> Self {
        Self {
            header_timeout,
            idle_timeout: IDLE_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            connections: None,
        }
    }
}

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
    limits: PlainLimits,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    while let Some((stream, remote)) = accept_until(&listener, &mut shutdown).await {
        // Held by the connection's task: the slot frees when the connection ends.
        let permit = match &limits.connections {
            None => None,
            Some((cap, refused, open)) => match cap.clone().try_acquire_owned() {
                Ok(permit) => Some((permit, Open::new(open.clone()))),
                Err(_) => {
                    refused.inc();
                    continue;
                }
            },
        };
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
        let timeouts = Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        };
        let (stream, finished) = Lingering::new(stream);
        let (io, activity) = Watched::new(stream, timeouts, Some(Framing::Http1));
        let ended = activity.clone();
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let (handler, conn) = (handler.clone(), conn.clone());
            let in_flight = activity.begin();
            async move {
                let response = handler(req.map(InBody::Hyper), conn).await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Tracked::new(body, in_flight)),
                )
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // `Watched` times each head and the idle time between requests.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(io), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            if let Ok(socket) = finished.await {
                if !ended.timed_out() {
                    linger(socket).await;
                }
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
