//! TLS over TCP (rustls): HTTP/1.1 and HTTP/2 by ALPN, one hyper connection per TLS session,
//! under the node's connection cap and timeouts. Responses advertise HTTP/3 with Alt-Svc.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::body::InBody;
use super::conn::{linger, Framing, Lingering, Open, Timeouts, Tracked, Watched};
use super::handler::ConnInfo;
use super::plain::accept_until;
use super::streams::{self, ConnExecutor};
use super::{protocol_of, Handler};
use crate::metrics::Metrics;

/// What bounds each connection.
#[derive(Clone)]
pub struct ConnLimits {
    /// Shared by every listener of the node.
    pub connections: Arc<Semaphore>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_streams: u32,
    pub max_header_bytes: usize,
}

pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    pub handler: Handler,
    pub limits: ConnLimits,
    /// `h3=":PORT"` when an HTTP/3 listener runs.
    pub alt_svc: Option<HeaderValue>,
    pub metrics: Arc<Metrics>,
}

impl TlsListener {
    /// Accept until `shutdown`; then let open requests finish (up to `drain`).
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let graceful = GracefulShutdown::new();
        let mut builder = hyper_util::server::conn::auto::Builder::new(ConnExecutor);
        builder
            .http1()
            .timer(TokioTimer::new())
            // Each head's time, and the idle time between requests, are `Watched`'s to keep:
            // hyper would time the wait for the next head from the end of the last response.
            .header_read_timeout(None)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.max_streams)
            .max_header_list_size(self.limits.max_header_bytes as u32)
            .keep_alive_interval(Some(self.limits.idle_timeout / 2))
            .keep_alive_timeout(self.limits.header_timeout);
        let builder = Arc::new(builder);
        while let Some((stream, remote)) = accept_until(&self.listener, &mut shutdown).await {
            let Ok(permit) = self.limits.connections.clone().try_acquire_owned() else {
                self.metrics.connections_refused.inc();
                continue;
            };
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, handler, metrics) = (
                self.acceptor.clone(),
                self.handler.clone(),
                self.metrics.clone(),
            );
            let (builder, graceful, alt_svc, timeouts) = (
                builder.clone(),
                graceful.watcher(),
                self.alt_svc.clone(),
                Timeouts {
                    header: self.limits.header_timeout,
                    idle: self.limits.idle_timeout,
                },
            );
            let open = Open::new(self.metrics.connections_open.with_label_values(&["tcp"]));
            tokio::spawn(async move {
                let _slot = (permit, open);
                let (stream, finished) = Lingering::new(stream);
                let tls = match tokio::time::timeout(timeouts.header, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics.tls_handshakes.with_label_values(&["error"]).inc();
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshakes.with_label_values(&["timeout"]).inc();
                        return;
                    }
                };
                metrics.tls_handshakes.with_label_values(&["ok"]).inc();
                let framing = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Some(Framing::Http2),
                    Some(_) => Some(Framing::Http1),
                    None => None,
                };
                let (io, activity) = Watched::new(tls, timeouts, framing);
                let ended = activity.clone();
                let conn = ConnInfo {
                    remote,
                    local,
                    https: true,
                    protocol: "HTTP/1.1",
                };
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (handler, alt_svc) = (handler.clone(), alt_svc.clone());
                    let mut conn = conn.clone();
                    conn.protocol = protocol_of(req.version());
                    let in_flight = activity.begin();
                    async move {
                        let mut response = handler(req.map(InBody::Hyper), conn).await;
                        if let Some(alt) = alt_svc {
                            response.headers_mut().insert(http::header::ALT_SVC, alt);
                        }
                        Ok::<_, std::convert::Infallible>(
                            response.map(|body| Tracked::new(body, in_flight)),
                        )
                    }
                });
                let connection = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                // HTTP/2 streams run in this task (`streams`), written out together.
                let watched: Pin<Box<dyn Future<Output = _> + Send>> =
                    Box::pin(graceful.watch(connection));
                if let Err(e) = streams::drive(watched).await {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                // The connection is dropped: its socket is back here to close.
                if let Ok(socket) = finished.await {
                    if !ended.timed_out() {
                        linger(socket).await;
                    }
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("TLS connections still open after {drain:?}; closing them");
        }
    }
}
