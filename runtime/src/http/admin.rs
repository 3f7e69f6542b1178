//! The admin listener (loopback by default): `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` (every routed app has a runnable version), `/apps` (JSON), and
//! `POST /registry/notifications`: a CNCF distribution registry's push events, authenticated
//! by a shared bearer token, each naming a repository the sync loop resolves at once.

use std::sync::Arc;

use http::{header, Request, Response, StatusCode};

use super::body::{InBody, OutBody};
use super::handler::ConnInfo;
use super::Handler;
use crate::metrics::Metrics;
use crate::node::sync::Nudge;
use crate::node::Live;

/// Registry push notifications: the token they must carry and whom to tell.
pub struct Notifications {
    /// Read on each notification, so the token can be rotated without a restart.
    pub token_file: std::path::PathBuf,
    pub nudge: Arc<Nudge>,
}

/// The events body is small JSON; more than this is refused unread.
const MAX_EVENTS_BYTES: usize = 1 << 20;

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(serde::Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Option<EventTarget>,
}

#[derive(serde::Deserialize)]
struct EventTarget {
    #[serde(default)]
    repository: String,
}

/// Comparison time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn registry_notification(
    req: Request<InBody>,
    hook: &Notifications,
    metrics: &Metrics,
) -> Response<OutBody> {
    use http_body_util::BodyExt;
    let token = match std::fs::read_to_string(&hook.token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            tracing::error!(file = %hook.token_file.display(), "registry notification refused: the token file is unreadable or empty");
            return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no token\n");
        }
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(presented.trim().as_bytes(), token.as_bytes()) {
        metrics
            .registry_notifications
            .with_label_values(&["unauthorized"])
            .inc();
        return text(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_EVENTS_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            metrics
                .registry_notifications
                .with_label_values(&["invalid"])
                .inc();
            return text(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large\n");
        }
    };
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) else {
        metrics
            .registry_notifications
            .with_label_values(&["invalid"])
            .inc();
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "not a notification envelope\n",
        );
    };
    for event in envelope.events {
        if let (true, Some(target)) = (event.action == "push", event.target) {
            if !target.repository.is_empty() {
                tracing::info!(repository = %target.repository, "registry push notification");
                hook.nudge.repository(&target.repository);
            }
        }
    }
    metrics
        .registry_notifications
        .with_label_values(&["ok"])
        .inc();
    text(StatusCode::OK, "text/plain", "ok\n")
}

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

pub fn handler(
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    notifications: Option<Notifications>,
) -> Handler {
    let notifications = notifications.map(Arc::new);
    Arc::new(move |req: Request<InBody>, _conn: ConnInfo| {
        let (live, metrics, hook) = (live.clone(), metrics.clone(), notifications.clone());
        Box::pin(async move {
            match req.uri().path() {
                "/registry/notifications" => match (&hook, req.method() == http::Method::POST) {
                    (Some(hook), true) => registry_notification(req, hook, &metrics).await,
                    (Some(_), false) => {
                        text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n")
                    }
                    (None, _) => text(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        "registry notifications are off (set [registry] notify_token_file)\n",
                    ),
                },
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
                        let apps = state.apps();
                        let waiting: Vec<&str> = apps
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
                        serde_json::to_string_pretty(&state.apps()).unwrap_or_else(|_| "[]".into());
                    text(StatusCode::OK, "application/json", json + "\n")
                }
                _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            }
        })
    })
}
