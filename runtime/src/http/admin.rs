//! The admin listener (loopback by default): `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` (every routed app has a runnable version) and `/apps` (JSON).

use std::sync::Arc;

use http::{header, Request, Response, StatusCode};

use super::body::{InBody, OutBody};
use super::handler::ConnInfo;
use super::Handler;
use crate::metrics::Metrics;
use crate::node::Live;

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<OutBody> {
    let mut r = Response::new(OutBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

pub fn handler(live: Arc<Live>, metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |req: Request<InBody>, _conn: ConnInfo| {
        let (live, metrics) = (live.clone(), metrics.clone());
        Box::pin(async move {
            match req.uri().path() {
                "/metrics" => {
                    for (tenant, depth) in live.state.load().queue_depths() {
                        metrics
                            .queue_depth
                            .with_label_values(&[tenant])
                            .set(depth as i64);
                    }
                    text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        metrics.render(),
                    )
                }
                "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
                "/readyz" => {
                    let state = live.state.load();
                    if state.ready() {
                        text(StatusCode::OK, "text/plain", "ready\n")
                    } else {
                        let waiting: Vec<&str> = state
                            .apps
                            .iter()
                            .filter(|a| a.error.is_some())
                            .map(|a| a.app.as_str())
                            .collect();
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            format!("not ready: {}\n", waiting.join(", ")),
                        )
                    }
                }
                "/apps" => {
                    let state = live.state.load();
                    let json =
                        serde_json::to_string_pretty(&state.apps).unwrap_or_else(|_| "[]".into());
                    text(StatusCode::OK, "application/json", json + "\n")
                }
                _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            }
        })
    })
}
