//! Origins: the backends an operator declares for a tenant, each with one pooled HTTP client
//! (HTTP/1.1 and HTTP/2 over rustls, keep-alive, no redirects followed), the requests apps send
//! them (pass-through and subrequests) with hop-by-hop headers stripped and Forwarded /
//! X-Forwarded-For set, and how their failures are classified. It must never connect anywhere
//! the operator's configuration did not name (`connect`, `ssrf`).

pub mod body;
pub mod connect;
pub mod pass;
pub mod ssrf;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
pub use body::{OriginBody, ProxiedBody};
pub use connect::InFlight;
use connect::{ConnectError, Connector, Dial, OwnListeners, Usage};

/// What went wrong on the way to an origin or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginErrorKind {
    /// The app named a backend it does not declare.
    UnknownBackend,
    Dns,
    /// The address is one outpost will not connect to.
    Refused(ssrf::Refusal),
    Connect,
    ConnectTimeout,
    Tls,
    /// Every connection the backend may open is in use.
    Busy,
    /// No response head within the backend's first-byte timeout.
    FirstByteTimeout,
    /// The response body paused longer than the first-byte timeout.
    BodyTimeout,
    /// The connection failed or the origin broke the protocol mid-exchange.
    Reset,
}

impl OriginErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            OriginErrorKind::UnknownBackend => "origin_unknown_backend",
            OriginErrorKind::Dns => "origin_dns",
            OriginErrorKind::Refused(_) => "origin_refused",
            OriginErrorKind::Connect => "origin_connect",
            OriginErrorKind::ConnectTimeout => "origin_connect_timeout",
            OriginErrorKind::Tls => "origin_tls",
            OriginErrorKind::Busy => "origin_busy",
            OriginErrorKind::FirstByteTimeout => "origin_timeout",
            OriginErrorKind::BodyTimeout => "origin_body_timeout",
            OriginErrorKind::Reset => "origin_reset",
        }
    }
}

/// An origin failure with its cause, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginFailure {
    pub kind: OriginErrorKind,
    pub detail: String,
}

impl OriginFailure {
    pub fn new(kind: OriginErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// What the node shares with every backend: its own listeners' addresses and the metrics.
pub struct Origins {
    pub own: Arc<OwnListeners>,
    metrics: Arc<Metrics>,
}

/// Who the client was, for Forwarded and X-Forwarded-For.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    pub client: Option<IpAddr>,
    pub https: bool,
    /// The host the client asked for.
    pub host: Option<String>,
}

/// The backends one app may use, by name.
#[derive(Default)]
pub struct AppBackends(Vec<Arc<Backend>>);

impl AppBackends {
    pub fn new(list: Vec<Arc<Backend>>) -> Self {
        Self(list)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Backend>> {
        self.0.iter().find(|b| b.spec.name.as_str() == name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both lists hold the very same backends (same pools).
    pub fn same_as(&self, other: &AppBackends) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// A request's way out: the app's backends and the client it serves.
#[derive(Clone)]
pub struct Outbound {
    pub backends: Arc<AppBackends>,
    pub forwarding: Forwarding,
}

/// One declared backend and its connection pool.
pub struct Backend {
    pub spec: edge_config::Backend,
    client: Client<Connector, OriginBody>,
    usage: Arc<Usage>,
    /// `scheme://authority` every request URI starts with (the Host it sends).
    base: String,
    metrics: Arc<Metrics>,
}

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Remove hop-by-hop headers, those the Connection header lists too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Append this hop to Forwarded and X-Forwarded-For.
pub fn add_forwarding(headers: &mut HeaderMap, fwd: &Forwarding) {
    let Some(ip) = fwd.client else { return };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    let node = match ip {
        IpAddr::V6(_) => format!("\"[{ip}]\""),
        IpAddr::V4(_) => ip.to_string(),
    };
    let mut element = format!(
        "for={node};proto={}",
        if fwd.https { "https" } else { "http" }
    );
    if let Some(host) = fwd.host.as_deref().filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    }) {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {element}"),
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("forwarded", v);
    }
}

fn native_roots() -> &'static Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    static ROOTS: OnceLock<Result<Vec<rustls_pki_types::CertificateDer<'static>>, String>> =
        OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            Err(format!(
                "no system CA certificates found ({:?}); install ca-certificates or set ca_file",
                found.errors
            ))
        } else {
            Ok(found.certs)
        }
    })
}

fn tls_config(spec: &edge_config::Backend) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            let certs = native_roots().as_ref().map_err(Clone::clone)?;
            roots.add_parsable_certificates(certs.iter().cloned());
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the origin with".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Origins {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            own: Arc::new(OwnListeners::default()),
            metrics,
        }
    }

    /// A backend and its (empty) pool. Fails when its TLS roots cannot be loaded.
    pub fn backend(&self, spec: &edge_config::Backend) -> Result<Arc<Backend>, String> {
        let url = &spec.url;
        let authority = spec.host_header.clone().unwrap_or_else(|| url.authority());
        let tls = match url.scheme {
            edge_config::Scheme::Http => None,
            edge_config::Scheme::Https => {
                let config = tls_config(spec)?;
                let name_text = match &spec.host_header {
                    Some(h) => h
                        .rsplit_once(':')
                        .map_or(h.as_str(), |(h, _)| h)
                        .to_string(),
                    None => url.host.clone(),
                };
                let name = ServerName::try_from(name_text.clone())
                    .map_err(|e| format!("{name_text:?} is not a TLS server name: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
        };
        let usage = Arc::new(Usage::default());
        let dial = Dial {
            host: url.host.clone(),
            port: url.port,
            literal: url.ip,
            allow_private: spec.allow_private,
            tls,
            connect_timeout: spec.connect_timeout,
            permits: Arc::new(Semaphore::new(spec.max_connections as usize)),
            own: self.own.clone(),
            opened: self
                .metrics
                .backend_connections
                .with_label_values(&[spec.tenant.as_str(), spec.name.as_str()]),
            usage: usage.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(spec.max_connections as usize)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Connector(Arc::new(dial)));
        Ok(Arc::new(Backend {
            spec: spec.clone(),
            client,
            usage,
            base: format!("{}://{authority}", url.scheme.as_str()),
            metrics: self.metrics.clone(),
        }))
    }
}

/// Whether `path` is a request target outpost sends as is: origin-form, `/` first.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok()
}

impl Backend {
    pub fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    /// A request to this backend. `headers` are forwarded as given, less hop-by-hop ones and
    /// Host (the backend's own is sent).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: OriginBody,
    ) -> Result<Request<OriginBody>, OriginFailure> {
        if !valid_path(path) {
            return Err(OriginFailure::new(
                OriginErrorKind::Reset,
                format!("{path:?} is not a request path"),
            ));
        }
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| OriginFailure::new(OriginErrorKind::Reset, format!("request URI: {e}")))?;
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::HOST);
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Send a request; the response head arrives within the first-byte timeout (or the
    /// caller's own deadline, whichever is first, left to the caller). The request counts as
    /// in flight until the returned guard is dropped: keep it until the body ends.
    pub async fn send(
        &self,
        req: Request<OriginBody>,
    ) -> Result<(Response<Incoming>, InFlight), OriginFailure> {
        let started = Instant::now();
        let in_flight = InFlight::start(&self.usage);
        let limit = self.spec.first_byte_timeout;
        let result = match tokio::time::timeout(limit, self.client.request(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(OriginFailure::new(
                OriginErrorKind::FirstByteTimeout,
                format!("no response head within the first-byte timeout ({limit:?})"),
            )),
        };
        let status = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(f) => crate::error::Failure::Origin(f.clone())
                .status()
                .as_str()
                .to_string(),
        };
        let labels = [self.spec.tenant.as_str(), self.spec.name.as_str()];
        self.metrics
            .backend_requests
            .with_label_values(&[labels[0], labels[1], status.as_str()])
            .inc();
        self.metrics
            .backend_latency
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(f) = &result {
            tracing::warn!(
                target: "outpost::origin",
                tenant = labels[0], backend = labels[1], kind = f.kind.label(),
                cause = %f.detail, "origin request failed"
            );
        }
        result.map(|mut response| {
            strip_hop_by_hop(response.headers_mut());
            (response, in_flight)
        })
    }

    /// The longest pause between response body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.spec.first_byte_timeout
    }
}

/// Our connector's classification if the failure came from it, else a reset.
fn classify(e: &hyper_util::client::legacy::Error) -> OriginFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return OriginFailure::new(c.kind, c.detail.clone());
        }
        source = err.source();
    }
    let kind = if e.is_connect() {
        OriginErrorKind::Connect
    } else {
        OriginErrorKind::Reset
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        detail.push_str(": ");
        detail.push_str(&err.to_string());
        source = err.source();
    }
    OriginFailure::new(kind, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarding_appends_this_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let fwd = Forwarding {
            client: Some("2001:db8::1".parse().expect("ip")),
            https: true,
            host: Some("shop.example".into()),
        };
        add_forwarding(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=https;host=\"shop.example\""
        );
    }

    #[test]
    fn request_paths_are_origin_form_only() {
        assert!(valid_path("/a/b?c=d"));
        assert!(!valid_path("http://evil.example/"));
        assert!(!valid_path("a"));
        assert!(!valid_path("/a b"));
    }
}
