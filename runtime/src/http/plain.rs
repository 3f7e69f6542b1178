//! Plain HTTP/1.1 on a TCP listener, for `outpost run` (the tenant's local dev server).

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::handler::{serve_app, ConnInfo, ServiceResult, Shared, Target};

/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections until the task is dropped; every request goes to `target`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, target: Arc<Target>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, target) = (shared.clone(), target.clone());
        tokio::spawn(async move {
            let conn = ConnInfo {
                remote,
                local,
                https: false,
                protocol: "HTTP/1.1",
            };
            let service = service_fn(move |req| {
                let (shared, target, conn) = (shared.clone(), target.clone(), conn.clone());
                async move { ServiceResult::Ok(serve_app(&shared, &target, req, &conn, "").await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
}
