//! QUIC + HTTP/3 (quinn, h3): each request stream goes through the same handler as TCP, its
//! body streamed both ways. Bounded by the node's connection cap, streams per connection and
//! the idle timeout; on shutdown, new requests are refused and open ones finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::body::InBody;
use super::handler::ConnInfo;
use super::streams::{self, Requests};
use super::tls::ConnLimits;
use super::Handler;
use crate::metrics::Metrics;

pub struct QuicListener {
    pub endpoint: quinn::Endpoint,
    pub handler: Handler,
    pub limits: ConnLimits,
    pub metrics: Arc<Metrics>,
}

/// Build the endpoint for `addr` from the QUIC rustls config.
pub fn endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    limits: &ConnLimits,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams.into())
        .max_concurrent_uni_streams(16u32.into())
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(limits.idle_timeout)?));
    config.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::server(config, addr)?)
}

impl QuicListener {
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let mut connections = Tasks::default();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = self.limits.connections.clone().try_acquire_owned() else {
                self.metrics.connections_refused.inc();
                incoming.refuse();
                continue;
            };
            let (handler, metrics, limits, stop) = (
                self.handler.clone(),
                self.metrics.clone(),
                self.limits.clone(),
                shutdown.clone(),
            );
            let local = self.endpoint.local_addr().ok();
            let open =
                super::conn::Open::new(self.metrics.connections_open.with_label_values(&["quic"]));
            connections.spawn(async move {
                let _slot = (permit, open);
                let remote = incoming.remote_address();
                let connecting = match incoming.accept() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "QUIC connection refused");
                        return;
                    }
                };
                // Counted like the TCP listeners' handshakes (docs/operations.md).
                let conn = match tokio::time::timeout(limits.header_timeout, connecting).await {
                    Ok(Ok(conn)) => {
                        metrics.tls_handshakes.with_label_values(&["ok"]).inc();
                        conn
                    }
                    Ok(Err(_)) => {
                        metrics.tls_handshakes.with_label_values(&["error"]).inc();
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshakes.with_label_values(&["timeout"]).inc();
                        return;
                    }
                };
                metrics.quic_connections.inc();
                let info = ConnInfo {
                    remote,
                    local: local.unwrap_or(remote),
                    https: true,
                    protocol: "HTTP/3",
                };
                // Each poll a turn: past `streams::TURN`, its requests wait for the next one.
                streams::turns(serve_connection(conn, handler, info, limits, stop)).await;
            });
        }
        // Stop accepting; let open connections finish their requests.
        let finished = tokio::time::timeout(drain, connections.finish()).await;
        if finished.is_err() {
            tracing::warn!("QUIC connections still open after {drain:?}; closing them");
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    handler: Handler,
    info: ConnInfo,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_header_bytes as u64);
    // Kept to wait for the client after a drain: dropping the last handle closes the
    // connection at once, abandoning response data the client has not acknowledged yet.
    let quic = conn.clone();
    let mut h3conn = match builder.build(h3_quinn::Connection::new(conn)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(remote = %info.remote, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    // The connection's requests run inside this task (`streams`): quinn's driver, woken by
    // the first response written, sends the responses of all that were ready together. quinn
    // caps the streams open at once (`max_streams`).
    let mut requests = Requests::default();
    let mut draining = false;
    loop {
        let stopping = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        let next = tokio::select! {
            next = h3conn.accept() => next,
            Some(()) = requests.next(), if !requests.is_empty() => continue,
            _ = stopping => {
                // GOAWAY: no new requests; those already accepted finish below, and go on
                // meanwhile (a client slow to take the GOAWAY holds none of them).
                // The GOAWAY's id is the first request not processed (RFC 9114 5.2): h3 sends
                // the last accepted one's plus `max_requests`, so 1, not 0, which would tell the
                // client that the last request accepted was not processed (it may retry it).
                let goaway = h3conn.shutdown(1);
                tokio::pin!(goaway);
                loop {
                    tokio::select! {
                        _ = &mut goaway => break,
                        Some(()) = requests.next(), if !requests.is_empty() => {}
                    }
                }
                draining = true;
                break;
            }
        };
        match next {
            Ok(Some(resolver)) => {
                let (handler, info) = (handler.clone(), info.clone());
                requests.push(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => serve_request(req, stream, handler, info).await,
                        Err(e) => tracing::debug!(error = %e, "bad HTTP/3 request"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(remote = %info.remote, error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
    requests.finish().await;
    if draining {
        // The responses are written; the client closes once it has them all (it was sent
        // GOAWAY). The idle timeout bounds a client that does not.
        let _ = tokio::time::timeout(limits.idle_timeout, quic.closed()).await;
    }
}

/// Tasks that must finish before their owner does (a listener's connections). Finished tasks
/// are dropped as new ones start, so a long-lived owner holds only what is still running, not
/// everything it ever ran.
#[derive(Default)]
pub struct Tasks {
    set: tokio::task::JoinSet<()>,
}

impl Tasks {
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.set.try_join_next().is_some() {}
        self.set.spawn(task);
    }

    /// Tasks held: running ones, and any that finished since the last spawn.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Wait until every task has finished.
    pub async fn finish(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// The Date header for a response sent now, formatted once per second per thread (as hyper
/// does for HTTP/1.1 and HTTP/2), not once per response.
fn date_now() -> Option<http::HeaderValue> {
    thread_local! {
        static CACHED: std::cell::RefCell<Option<(u64, http::HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &*cached {
            Some((at, value)) if *at == second => Some(value.clone()),
            _ => {
                let value = http::HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok()?;
                *cached = Some((second, value.clone()));
                Some(value)
            }
        }
    })
}

async fn serve_request(
    req: http::Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    handler: Handler,
    info: ConnInfo,
) {
    let (send, recv) = stream.split();
    let mut send = Response { send, ended: false };
    let body = InBody::h3(recv).await;
    let response = handler(req.map(|()| body), info).await;
    let (mut parts, mut body) = response.into_parts();
    // hyper adds Date to HTTP/1.1 and HTTP/2 responses (RFC 9110 6.6.1: an origin server with
    // a clock must send it); h3 leaves it to us.
    if !parts.headers.contains_key(http::header::DATE) {
        if let Some(date) = date_now() {
            parts.headers.insert(http::header::DATE, date);
        }
    }
    if send
        .send_response(http::Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if send.send_data(data).await.is_err() {
                        return;
                    }
                }
            }
            Err(failure) => {
                // The guest failed mid-body: reset the stream so the client sees it incomplete.
                tracing::debug!(%failure, "HTTP/3 response cut off");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                send.ended = true;
                return;
            }
        }
    }
    if send.finish().await.is_ok() {
        send.ended = true;
    }
}

/// The sending half of an HTTP/3 request stream, reset when dropped before its response ended:
/// quinn finishes a stream dropped unfinished, so a response cut short (its request dropped,
/// or panicked) would otherwise look complete to the client.
struct Response {
    send: h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    ended: bool,
}

impl std::ops::Deref for Response {
    type Target = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for Response {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        if !self.ended {
            self.send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tasks;

    #[test]
    fn finished_tasks_are_not_held() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut tasks = Tasks::default();
            for _ in 0..10_000 {
                tasks.spawn(async {});
                tokio::task::yield_now().await;
            }
            assert!(tasks.len() <= 2, "{} tasks held", tasks.len());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tasks.spawn(async move {
                let _ = rx.await;
            });
            tasks.spawn(async {});
            tokio::task::yield_now().await;
            tasks.spawn(async {});
            assert_eq!(tasks.len(), 2, "the running task and the newest one");
            drop(tx);
            tasks.finish().await;
            assert!(tasks.is_empty());
        });
    }
}
