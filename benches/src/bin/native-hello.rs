//! The comparison point for the load benchmark: a native hyper server answering "hello" with
//! the same rustls settings outpost's TLS listener uses (same cipher suites, ALPN, session
//! resumption), no Wasm. `native-hello ADDR CERT_DIR`
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost::http::certs::{self, Certs, SniResolver};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18444".into())
        .parse()?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/native-hello".into()));
    let (key, pem) = certs::self_signed(&dir).map_err(anyhow::Error::msg)?;
    let empty: edge_config::Config =
        edge_config::parse("", "empty.toml", &dir).map_err(|d| anyhow::anyhow!("{d}"))?;
    let resolver = Arc::new(SniResolver {
        certs: arc_swap::ArcSwap::from_pointee(Certs::build(&empty, key)),
    });
    let (tls, _) = certs::server_configs(resolver).map_err(anyhow::Error::msg)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!(
            "native hello on https://{} (cert {})",
            listener.local_addr()?,
            pem.display()
        );
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                        b"Hello from outpost!\n",
                    )));
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}
