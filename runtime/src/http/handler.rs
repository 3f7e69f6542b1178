//! One request path for every listener: admission (tenant concurrency, body cap), the request
//! as CGI into the sandbox, the guest's response streamed back, then a log line and metrics.
//! Listeners only accept connections and call `serve_app`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::body::OutBody;
use super::router::normalize_host;
use crate::error::{Failure, Limit};
use crate::metrics::{Metrics, TenantSeries};
use crate::origin::{pass, AppBackends, Forwarding, Outbound};
use crate::sandbox::cgi::CgiRequest;
use crate::sandbox::io::{BodyChunk, GuestInput};
use crate::sandbox::{App, Envelope, Outcome, Request as GuestRequest, RunPath, Sandbox};

/// Everything needed to run requests for one routed app.
pub struct Target {
    pub tenant: String,
    pub app: Arc<App>,
    pub envelope: Arc<Envelope>,
    /// The tenant's concurrency limit (shared by all of its apps).
    pub admission: Arc<Semaphore>,
    /// The backends the app may send requests to.
    pub backends: Arc<AppBackends>,
    /// The tenant's per-request series, resolved by the first request (`Target::series`).
    pub series: OnceLock<TenantSeries>,
}

impl Target {
    fn series(&self, metrics: &Metrics) -> &TenantSeries {
        self.series
            .get_or_init(|| metrics.tenant_series(&self.tenant))
    }
}

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub https: bool,
    /// "HTTP/1.1", "HTTP/2", "HTTP/3".
    pub protocol: &'static str,
}

/// Shared by every request: the sandbox, the metrics and the async runtime handle.
pub struct Shared {
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
}

/// A plain response from outpost itself (not from a guest).
pub fn error_response(failure: &Failure) -> Response<OutBody> {
    let mut response = Response::new(OutBody::full(failure.client_message()));
    *response.status_mut() = failure.status();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        failure,
        Failure::Limit(Limit::Concurrency | Limit::Queue) | Failure::NotReady
    ) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The host a request is for, as sent: the target's authority when it has one (HTTP/2 and
/// HTTP/3 `:authority`, an HTTP/1.1 absolute-form target, which replaces Host by RFC 9112
/// 3.2.2), else the first Host header. Routing and `HTTP_HOST` both read this, so a guest
/// never sees a different host than the one that selected it.
fn raw_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        // Userinfo (`user@host`) names no host.
        Some(authority) => Some(
            authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, host)| host),
        ),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

/// The request's host, normalized (lowercase, no port).
pub fn request_host<B>(req: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    normalize_host(raw_host(req)?)
}

/// The request's headers as CGI sees them, with the host of `raw_host` as the only Host.
fn cgi_headers<B>(req: &Request<B>) -> Vec<(&str, &[u8])> {
    let mut headers = Vec::with_capacity(req.headers().len() + 1);
    if let Some(host) = raw_host(req) {
        headers.push(("host", host.as_bytes()));
    }
    for (name, value) in req.headers() {
        if *name != http::header::HOST {
            headers.push((name.as_str(), value.as_bytes()));
        }
    }
    headers
}

/// A request refused before its body was read: read (and drop) a bounded amount of it in the
/// background, so the client sees the response rather than a reset stream while it is still
/// sending; past the bound the stream is reset.
pub fn discard_body<B>(body: B)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut seen: usize = 0;
        let drained = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > DISCARD_MAX {
                    break;
                }
            }
        });
        let _ = drained.await;
    });
}

const DISCARD_MAX: usize = 1 << 20;

/// Request bodies of a length declared up front and at most this size are read before the
/// guest starts (`take_body`): the inline path takes a request only with its whole body in hand.
const READ_AHEAD_MAX: u64 = crate::sandbox::inline::BODY_MAX as u64;
/// The longest a body is read ahead (less if the tenant's time limit is shorter): a client that
/// declares a body and sends it slowly holds its admission permit this much longer than its
/// guest's own deadline at most.
const READ_AHEAD_WAIT: Duration = Duration::from_secs(1);

/// The request body as the guest's stdin. A body of a declared length up to `READ_AHEAD_MAX` is
/// read first, for at most `wait` (the request's time limit) or `READ_AHEAD_WAIT`, whichever is
/// shorter: a small POST then runs like a
/// GET (inline when it qualifies), and a client slow to send it holds no guest thread and no
/// CPU slot meanwhile, only its admission permit. What has not arrived by then, and any other
/// body, streams to the guest as it arrives. Either way the tenant's body cap is enforced on
/// the bytes as they come, and a body cut short reaches the guest as a failure, never as a
/// shorter complete body.
async fn take_body<B>(mut body: B, cap: u64, declared: Option<u64>, wait: Duration) -> GuestInput
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    if body.is_end_stream() {
        return GuestInput::fixed(Bytes::new());
    }
    let Some(expected) = declared
        .or_else(|| body.size_hint().exact())
        .filter(|&n| n <= READ_AHEAD_MAX.min(cap))
    else {
        return feed_body(body, cap, Bytes::new());
    };
    let mut read = BytesMut::new();
    let mut first = Bytes::new();
    // The timer is armed only if the body is not in hand at once. The body ends (`Ok(true)`),
    // fails, or grows past its declared length (`Ok(false)`: HTTP/3 does not hold a client to
    // its Content-Length), and its rest then streams like any other body.
    let mut total: u64 = 0;
    let outcome = tokio::time::timeout(wait.min(READ_AHEAD_WAIT), async {
        while let Some(chunk) = next_chunk(&mut body).await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            if total > cap {
                return Err(Failure::Limit(Limit::RequestBody));
            }
            if first.is_empty() && read.is_empty() {
                first = chunk;
            } else {
                if read.is_empty() {
                    read.reserve(expected as usize);
                    read.extend_from_slice(&first);
                    first = Bytes::new();
                }
                read.extend_from_slice(&chunk);
            }
            if total > expected {
                return Ok(false);
            }
        }
        // Ended short of its declared length (HTTP/1.1 and HTTP/2 already fail such a body):
        // incomplete, never a shorter complete body.
        if total < expected {
            return Err(Failure::ClientGone);
        }
        Ok(true)
    })
    .await;
    let so_far = if read.is_empty() {
        first
    } else {
        read.freeze()
    };
    match outcome {
        Ok(Ok(true)) => GuestInput::fixed(so_far),
        Ok(Err(failure)) => {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(failure));
            GuestInput::streaming(so_far, rx)
        }
        Ok(Ok(false)) | Err(_) => feed_body(body, cap.saturating_sub(so_far.len() as u64), so_far),
    }
}

/// The next data chunk of a request body; `None` at its end. Trailers are skipped.
async fn next_chunk<B>(body: &mut B) -> Option<Result<Bytes, Failure>>
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        match body.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Err(_) => return Some(Err(Failure::ClientGone)),
        }
    }
}

/// Feed the rest of a request body to the guest's stdin as it arrives, after `first` (what was
/// read ahead), enforcing the body cap (`cap`: what is left of it) on what follows.
fn feed_body<B>(body: B, cap: u64, first: Bytes) -> GuestInput
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let (tx, rx) = mpsc::channel::<BodyChunk>(8);
    tokio::spawn(async move {
        let mut body = body;
        let mut seen: u64 = 0;
        while let Some(chunk) = next_chunk(&mut body).await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(failure) => {
                    let _ = tx.send(Err(failure)).await;
                    return;
                }
            };
            seen += chunk.len() as u64;
            if seen > cap {
                let _ = tx.send(Err(Failure::Limit(Limit::RequestBody))).await;
                return;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    GuestInput::streaming(first, rx)
}

/// Serve one request with a guest.
pub async fn serve_app<B>(
    shared: &Shared,
    target: &Arc<Target>,
    req: Request<B>,
    conn: &ConnInfo,
    script_name: &str,
) -> Response<OutBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let tenant = target.tenant.as_str();
    let app_name = target.app.name.as_str();
    let record_early = |failure: Failure| {
        shared.metrics.record_failure(tenant, &failure);
        shared
            .metrics
            .requests
            .with_label_values(&[tenant, app_name, conn.protocol, failure.status().as_str()])
            .inc();
        tracing::info!(
            target: "outpost::request",
            tenant, app = app_name, protocol = conn.protocol,
            status = failure.status().as_u16(), failure = %failure,
        );
        error_response(&failure)
    };
    let limits = &target.envelope.limits;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.request_body) {
        discard_body(req.into_body());
        return record_early(Failure::Limit(Limit::RequestBody));
    }
    let permit: OwnedSemaphorePermit = match target.admission.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            discard_body(req.into_body());
            return record_early(Failure::Limit(Limit::Concurrency));
        }
    };
    let host = request_host(&req);
    let local_ip;
    let server_name = match &host {
        Some(host) => host.as_ref(),
        None => {
            local_ip = conn.local.ip().to_string();
            &local_ip
        }
    };
    let headers = cgi_headers(&req);
    let env = target.app.request_env(&CgiRequest {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: &headers,
        server_name,
        server_port: conn.local.port(),
        protocol: conn.protocol,
        remote_addr: Some(conn.remote.ip()),
        https: conn.https,
        script_name,
    });
    drop(headers);
    let outbound = (!target.backends.is_empty()).then(|| Outbound {
        backends: target.backends.clone(),
        forwarding: Forwarding {
            client: Some(conn.remote.ip()),
            https: conn.https,
            host: host.map(|host| host.into_owned()),
        },
    });
    let (parts, body) = req.into_parts();
    let input = take_body(body, limits.request_body, declared, limits.timeout).await;
    let forwarding = outbound.as_ref().map(|o| o.forwarding.clone());
    let record = Arc::new(RequestRecord::new(
        shared.metrics.clone(),
        target,
        conn.protocol,
    ));
    let guest_side = record.clone();
    let start_rx = shared
        .sandbox
        .dispatch_turn(
            target.app.clone(),
            target.envelope.clone(),
            GuestRequest { env, input },
            outbound,
            tokio::runtime::Handle::current(),
            move |outcome| {
                drop(permit);
                guest_side.guest_ended(outcome);
            },
        )
        .await;
    let start = start_rx
        .await
        .unwrap_or_else(|_| Err(Failure::Internal("the worker dropped the request".into())));
    let response = respond(shared, target, conn, start, parts, forwarding).await;
    // What the client gets: a pass-through's is its origin's status, or the failure's.
    record.client_got(response.status());
    response
}

/// The response to the guest's start: its own, or its pass-through's.
async fn respond(
    shared: &Shared,
    target: &Target,
    conn: &ConnInfo,
    start: Result<crate::sandbox::io::Started, Failure>,
    parts: http::request::Parts,
    forwarding: Option<Forwarding>,
) -> Response<OutBody> {
    match start {
        Ok(started) if pass::requested(&started.head) => {
            let refused = if forwarding.is_none() {
                Some("X-Outpost-Backend names a backend, but the app declares none")
            } else if started.rest.is_some() {
                // The guest's output passed the first flush (16 KiB, or 2 ms old) while it ran,
                // so its response was already under way when the head asked for a backend.
                Some(pass::STARTED_STREAMING)
            } else {
                None
            };
            match (refused, forwarding) {
                (None, Some(fwd)) => pass_through(shared, target, started, parts, &fwd, conn).await,
                (why, _) => {
                    let failure =
                        Failure::BadResponse(why.unwrap_or(pass::STARTED_STREAMING).into());
                    tracing::info!(
                        target: "outpost::request",
                        tenant = %target.tenant, app = %target.app.name, protocol = conn.protocol,
                        status = failure.status().as_u16(), failure = %failure,
                        "pass-through refused"
                    );
                    shared.metrics.record_failure(&target.tenant, &failure);
                    error_response(&failure)
                }
            }
        }
        Ok(started) => {
            let mut response = Response::new(OutBody::streaming(started.first, started.rest));
            *response.status_mut() = started.head.status;
            *response.headers_mut() = started.head.headers;
            response
        }
        Err(failure) => error_response(&failure),
    }
}

/// One request's line in the log and count in `outpost_requests_total`, written once, when the
/// guest has ended and the status the client got is known (a pass-through's comes from its
/// origin, after the guest ended): by whichever side lets go last, also when the connection's
/// task is dropped first.
struct RequestRecord {
    metrics: Arc<Metrics>,
    target: Arc<Target>,
    protocol: &'static str,
    outcome: std::sync::Mutex<Option<Outcome>>,
    client_status: std::sync::Mutex<Option<http::StatusCode>>,
}

impl RequestRecord {
    fn new(metrics: Arc<Metrics>, target: &Arc<Target>, protocol: &'static str) -> Self {
        target.series(&metrics).active.inc();
        Self {
            metrics,
            target: target.clone(),
            protocol,
            outcome: std::sync::Mutex::new(None),
            client_status: std::sync::Mutex::new(None),
        }
    }

    fn guest_ended(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }

    fn client_got(&self, status: http::StatusCode) {
        *self.client_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| {
                Outcome::refused(
                    Failure::Internal("the request was dropped before its guest ran".into()),
                    std::time::Duration::ZERO,
                )
            });
        let client_status = *self
            .client_status
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let line = LogLine {
            metrics: self.metrics.clone(),
            target: self.target.clone(),
            protocol: self.protocol,
            status: client_status.unwrap_or(outcome.status),
            outcome,
        };
        // A tenant's stderr (up to its cap, escaped) is a large synchronous write: never on an
        // async thread (the connection's side lets go last when the guest ended first, as an
        // inline run always does), where a slow log reader would stall every connection on it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !line.outcome.stderr.bytes.is_empty() => {
                drop(handle.spawn_blocking(move || drop(line)));
            }
            _ => drop(line),
        }
    }
}

/// A request's log lines and counts, written when dropped (wherever that is).
struct LogLine {
    metrics: Arc<Metrics>,
    target: Arc<Target>,
    protocol: &'static str,
    status: http::StatusCode,
    outcome: Outcome,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let series = self.target.series(&self.metrics);
        log_outcome(
            &self.metrics,
            series,
            &self.target,
            self.protocol,
            &self.outcome,
            self.status,
        );
        // Last: the drain at shutdown waits for this, so the request is logged and counted
        // before the process exits.
        series.active.dec();
    }
}

/// The guest named a backend: forward the client's request to it and stream its response.
async fn pass_through(
    shared: &Shared,
    target: &Target,
    started: crate::sandbox::io::Started,
    parts: http::request::Parts,
    fwd: &Forwarding,
    conn: &ConnInfo,
) -> Response<OutBody> {
    let began = std::time::Instant::now();
    let backend = started
        .head
        .headers
        .get(pass::BACKEND)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let forwarded = pass::forward(
        &target.backends,
        started.head,
        parts,
        started.unread,
        fwd,
        target.envelope.limits.response_body,
    )
    .await;
    let (status, response) = match forwarded {
        Ok(response) => (response.status(), response.map(OutBody::proxied)),
        Err(failure) => {
            shared.metrics.record_failure(&target.tenant, &failure);
            tracing::info!(
                target: "outpost::request",
                tenant = %target.tenant, app = %target.app.name, protocol = conn.protocol,
                backend = %backend, status = failure.status().as_u16(),
                retryable = failure.retryable(), failure = %failure, "pass-through failed"
            );
            return error_response(&failure);
        }
    };
    tracing::info!(
        target: "outpost::request",
        tenant = %target.tenant, app = %target.app.name, protocol = conn.protocol,
        backend = %backend, status = status.as_u16(),
        head_us = began.elapsed().as_micros() as u64, "pass-through"
    );
    response
}

fn log_outcome(
    metrics: &Metrics,
    series: &TenantSeries,
    target: &Target,
    protocol: &str,
    outcome: &Outcome,
    status: http::StatusCode,
) {
    let (tenant, app, digest) = (
        target.tenant.as_str(),
        target.app.name.as_str(),
        target.app.digest.as_str(),
    );
    metrics
        .requests
        .with_label_values(&[tenant, app, protocol, status.as_str()])
        .inc();
    series.duration.observe(outcome.total.as_secs_f64());
    series
        .instantiate
        .observe(outcome.instantiate.as_secs_f64());
    series.queue_wait.observe(outcome.queued.as_secs_f64());
    series.fuel_used.inc_by(outcome.fuel_used);
    match outcome.path {
        RunPath::Pool => series.runs_pool.inc(),
        RunPath::Inline => series.runs_inline.inc(),
        RunPath::Moved => series.runs_moved.inc(),
        RunPath::NotRun => {}
    }
    series.memory_peak.observe(outcome.memory_peak as f64);
    if let Some(failure) = &outcome.failure {
        metrics.record_failure(tenant, failure);
    }
    if !outcome.stderr.bytes.is_empty() {
        tracing::info!(
            target: "outpost::tenant",
            tenant, app, truncated = outcome.stderr.truncated,
            // Escaped: a tenant's newlines or terminal codes must not forge log lines.
            "stderr: {}", String::from_utf8_lossy(&outcome.stderr.bytes).trim_end().escape_debug(),
        );
    }
    let failure = outcome.failure.as_ref().map(|f| f.to_string());
    tracing::info!(
        target: "outpost::request",
        tenant, app, digest = &digest[..12.min(digest.len())], protocol,
        status = status.as_u16(),
        fuel = outcome.fuel_used,
        memory_peak = outcome.memory_peak,
        instantiate_us = outcome.instantiate.as_micros() as u64,
        queued_us = outcome.queued.as_micros() as u64,
        duration_us = outcome.total.as_micros() as u64,
        failure = failure.as_deref().unwrap_or(""),
    );
}
