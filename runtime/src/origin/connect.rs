//! The connector of one backend's pool: resolve the configured host (never a host a request
//! names), refuse addresses `ssrf::check` refuses, connect under the connect timeout and a cap
//! on open connections, then TLS with ALPN (h2, http/1.1) verified against the backend's roots.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ssrf;
use super::OriginErrorKind;

/// The addresses outpost's own listeners are bound to, filled in as they bind.
#[derive(Debug, Default)]
pub struct OwnListeners(RwLock<Vec<SocketAddr>>);

impl OwnListeners {
    pub fn add(&self, addr: SocketAddr) {
        if let Ok(mut v) = self.0.write() {
            v.push(addr);
        }
    }

    fn snapshot(&self) -> Vec<SocketAddr> {
        self.0.read().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Why a connection could not be made; found again in the client's error chain.
#[derive(Debug)]
pub struct ConnectError {
    pub kind: OriginErrorKind,
    pub detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ConnectError {}

fn fail(kind: OriginErrorKind, detail: impl Into<String>) -> ConnectError {
    ConnectError {
        kind,
        detail: detail.into(),
    }
}

/// A backend's requests in flight and connections open or being opened, so the connector
/// opens one only when every open connection is busy. The pool hands a connection back a
/// moment after its response ends; a request sent in that moment would otherwise race a new
/// connection against the returning one and keep both.
#[derive(Debug, Default)]
pub struct Usage {
    in_flight: AtomicUsize,
    open: AtomicUsize,
    dialing: AtomicUsize,
    changed: Notify,
}

impl Usage {
    fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Claim a dial if the requests in flight outnumber the connections open and opening.
    fn claim_dial(&self) -> bool {
        let need = self.in_flight.load(Ordering::SeqCst);
        let have = self.open.load(Ordering::SeqCst) + self.dialing.load(Ordering::SeqCst);
        if need > have {
            self.dialing.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }
}

/// One request in flight on a backend, until its response ends or is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Usage>);

impl InFlight {
    pub fn start(usage: &Arc<Usage>) -> Self {
        usage.in_flight.fetch_add(1, Ordering::SeqCst);
        usage.changed();
        Self(usage.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed();
    }
}

/// Releases a dial claim when the dial ends (the connection, if any, now counts as open).
struct Dialing<'a>(&'a Usage);

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        self.0.dialing.fetch_sub(1, Ordering::SeqCst);
        self.0.changed();
    }
}

/// Counts a connection as open while it lives.
struct OpenSlot(Arc<Usage>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed();
    }
}

/// Where and how one backend connects.
pub struct Dial {
    pub host: String,
    pub port: u16,
    pub literal: Option<IpAddr>,
    pub allow_private: bool,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
    pub permits: Arc<Semaphore>,
    pub own: Arc<OwnListeners>,
    /// Counts connections opened (`outpost_backend_connections_total`).
    pub opened: prometheus::IntCounter,
    pub usage: Arc<Usage>,
}

#[derive(Clone)]
pub struct Connector(pub Arc<Dial>);

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    /// The URI is ignored: a backend connects only where its configuration says.
    fn call(&mut self, _: Uri) -> Self::Future {
        let dial = self.0.clone();
        Box::pin(async move {
            let limit = dial.connect_timeout;
            match tokio::time::timeout(limit, dial.connect()).await {
                Ok(result) => result,
                Err(_) => Err(fail(
                    OriginErrorKind::ConnectTimeout,
                    format!("no connection within the connect timeout ({limit:?})"),
                )),
            }
        })
    }
}

impl Dial {
    /// Wait until a new connection is needed (every open one busy), then open it. A connect
    /// whose request got a returning connection meanwhile waits here until the connect timeout
    /// ends it, unused.
    async fn connect(&self) -> Result<Conn, ConnectError> {
        loop {
            let changed = self.usage.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.usage.claim_dial() {
                break;
            }
            changed.await;
        }
        let _claim = Dialing(&self.usage);
        self.dial().await
    }

    async fn dial(&self) -> Result<Conn, ConnectError> {
        // A connection slot first: past the cap, wait for one to close (bounded by the
        // connect timeout around this whole function).
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| {
            fail(
                OriginErrorKind::Busy,
                "the backend's connection pool is closed",
            )
        })?;
        let addrs: Vec<SocketAddr> = match self.literal {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    fail(
                        OriginErrorKind::Dns,
                        format!("resolving {}: {e}", self.host),
                    )
                })?
                .collect(),
        };
        let own = self.own.snapshot();
        let mut refused = None;
        let mut last_error = None;
        for addr in addrs.iter().take(8) {
            if let Err(why) = ssrf::check(*addr, self.literal, self.allow_private, &own) {
                refused.get_or_insert((*addr, why));
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return self.finish(tcp, permit).await;
                }
                Err(e) => last_error = Some(format!("connecting to {addr}: {e}")),
            }
        }
        if let Some(e) = last_error {
            return Err(fail(OriginErrorKind::Connect, e));
        }
        match refused {
            Some((addr, why)) => Err(fail(
                OriginErrorKind::Refused(why),
                format!(
                    "refused to connect to {addr} for {}: {}",
                    self.host,
                    why.describe()
                ),
            )),
            None => Err(fail(
                OriginErrorKind::Dns,
                format!("{} resolved to no address", self.host),
            )),
        }
    }

    async fn finish(
        &self,
        tcp: TcpStream,
        permit: OwnedSemaphorePermit,
    ) -> Result<Conn, ConnectError> {
        let Some((connector, name)) = &self.tls else {
            return Ok(self.opened(Stream::Plain(tcp), false, permit));
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| fail(OriginErrorKind::Tls, format!("TLS with {}: {e}", self.host)))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(self.opened(Stream::Tls(Box::new(tls)), h2, permit))
    }

    fn opened(&self, stream: Stream, h2: bool, permit: OwnedSemaphorePermit) -> Conn {
        self.opened.inc();
        self.usage.open.fetch_add(1, Ordering::SeqCst);
        Conn {
            io: TokioIo::new(stream),
            h2,
            _open: OpenSlot(self.usage.clone()),
            _permit: permit,
        }
    }
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// One connection to an origin; holds one of the backend's connection slots until closed.
pub struct Conn {
    io: TokioIo<Stream>,
    h2: bool,
    _open: OpenSlot,
    _permit: OwnedSemaphorePermit,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
