//! The one failure type of a request: where it came from (client, tenant code, limits, an
//! origin server, outpost itself), whether a retry could help, which status the client gets and
//! which metric label counts it. Call sites say what happened; this module alone decides how it
//! is reported.

use std::fmt;

use http::StatusCode;

pub use crate::origin::{OriginErrorKind, OriginFailure};

/// A per-tenant limit from the design's limits table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Memory,
    Fuel,
    Time,
    Concurrency,
    RequestBody,
    ResponseBody,
    Headers,
    /// The request waited for a CPU slot of its tenant as long as it may run.
    Queue,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Fuel => "fuel",
            Limit::Time => "time",
            Limit::Concurrency => "concurrency",
            Limit::RequestBody => "request_body",
            Limit::ResponseBody => "response_body",
            Limit::Headers => "headers",
            Limit::Queue => "queue",
        }
    }
}

/// Where a failed request's cause lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Tenant,
    /// A backend's origin server (or the way to it).
    Origin,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A per-tenant limit was hit.
    Limit(Limit),
    /// The guest trapped (unreachable, out-of-bounds access, division by zero, ...).
    Trap(String),
    /// The guest overflowed its Wasm stack.
    StackOverflow,
    /// The guest's stdout was not a valid CGI response.
    BadResponse(String),
    /// The client went away before the response was complete.
    ClientGone,
    /// Nothing is routed at this host and path.
    NoRoute,
    /// The routed app has no runnable version yet.
    NotReady,
    /// A backend's origin could not be reached or failed mid-response.
    Origin(OriginFailure),
    /// outpost itself failed (resources, a bug); not the tenant's fault.
    Internal(String),
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Limit(Limit::Fuel | Limit::Concurrency | Limit::Queue) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::Limit(Limit::Time) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Limit(Limit::RequestBody) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Limit(Limit::Headers) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Failure::Limit(Limit::Memory | Limit::ResponseBody) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Failure::Trap(_) | Failure::StackOverflow | Failure::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Failure::BadResponse(_) => StatusCode::BAD_GATEWAY,
            // Never sent (the client is gone); 499 is what access logs conventionally record.
            Failure::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Origin(o) => match o.kind {
                OriginErrorKind::ConnectTimeout
                | OriginErrorKind::FirstByteTimeout
                | OriginErrorKind::BodyTimeout => StatusCode::GATEWAY_TIMEOUT,
                OriginErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// Whether the same request, sent again, could succeed: the cause was transient (an origin
    /// that was down or slow, a full queue), not the request or the app itself.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Limit(Limit::Concurrency | Limit::Queue) | Failure::NotReady => true,
            Failure::Origin(o) => !matches!(
                o.kind,
                OriginErrorKind::Refused(_) | OriginErrorKind::UnknownBackend
            ),
            _ => false,
        }
    }

    /// The `kind` label of `outpost_request_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Limit(limit) => limit.label(),
            Failure::Trap(_) => "trap",
            Failure::StackOverflow => "stack_overflow",
            Failure::BadResponse(_) => "bad_response",
            Failure::ClientGone => "client_gone",
            Failure::NoRoute => "no_route",
            Failure::NotReady => "not_ready",
            Failure::Internal(_) => "internal",
            Failure::Origin(o) => o.kind.label(),
        }
    }

    pub fn limit(&self) -> Option<Limit> {
        match self {
            Failure::Limit(limit) => Some(*limit),
            _ => None,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            Failure::ClientGone | Failure::NoRoute | Failure::Limit(Limit::RequestBody) => {
                Source::Client
            }
            Failure::Limit(Limit::Headers) => Source::Client,
            Failure::Internal(_) | Failure::NotReady => Source::Internal,
            // An app naming a backend it may not use is the tenant's mistake.
            Failure::Origin(o) if o.kind == OriginErrorKind::UnknownBackend => Source::Tenant,
            Failure::Origin(_) => Source::Origin,
            _ => Source::Tenant,
        }
    }

    /// The short text body the client receives. It never includes the tenant's own output
    /// or trap details, which go to the tenant's log.
    pub fn client_message(&self) -> String {
        match self {
            Failure::Limit(limit) => {
                format!("outpost: request exceeded the {} limit\n", limit.label())
            }
            Failure::Trap(_) | Failure::StackOverflow => "outpost: the app failed\n".into(),
            Failure::BadResponse(_) => "outpost: the app sent an invalid response\n".into(),
            Failure::NoRoute => "outpost: no app is routed here\n".into(),
            Failure::NotReady => "outpost: the app is not ready\n".into(),
            Failure::ClientGone => String::new(),
            Failure::Internal(_) => "outpost: internal error\n".into(),
            Failure::Origin(o) => match self.status() {
                StatusCode::GATEWAY_TIMEOUT => {
                    "outpost: the origin did not answer in time\n".into()
                }
                StatusCode::SERVICE_UNAVAILABLE => "outpost: the origin is busy\n".into(),
                _ if o.kind == OriginErrorKind::UnknownBackend => {
                    "outpost: the app named a backend it may not use\n".into()
                }
                _ => "outpost: the origin could not be reached\n".into(),
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Limit(limit) => write!(f, "{} limit exceeded", limit.label()),
            Failure::Trap(msg) => write!(f, "guest trapped: {msg}"),
            Failure::StackOverflow => write!(f, "guest overflowed its stack"),
            Failure::BadResponse(msg) => write!(f, "invalid CGI response: {msg}"),
            Failure::ClientGone => write!(f, "client went away"),
            Failure::NoRoute => write!(f, "no route"),
            Failure::NotReady => write!(f, "app not ready"),
            Failure::Internal(msg) => write!(f, "internal error: {msg}"),
            Failure::Origin(o) => write!(f, "origin {}: {}", o.kind.label(), o.detail),
        }
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_limits_table() {
        assert_eq!(Failure::Limit(Limit::Fuel).status(), 503);
        assert_eq!(Failure::Limit(Limit::Time).status(), 504);
        assert_eq!(Failure::Limit(Limit::Memory).status(), 500);
        assert_eq!(Failure::Limit(Limit::Concurrency).status(), 503);
        assert_eq!(Failure::Limit(Limit::RequestBody).status(), 413);
        assert_eq!(Failure::Limit(Limit::Headers).status(), 431);
        assert_eq!(Failure::StackOverflow.status(), 500);
        assert_eq!(Failure::BadResponse("x".into()).status(), 502);
        assert_eq!(Failure::NoRoute.status(), 404);
    }

    #[test]
    fn origin_failures_map_to_gateway_statuses_and_say_if_a_retry_helps() {
        let f = |kind| {
            Failure::Origin(OriginFailure {
                kind,
                detail: "x".into(),
            })
        };
        assert_eq!(f(OriginErrorKind::Connect).status(), 502);
        assert_eq!(f(OriginErrorKind::Tls).status(), 502);
        assert_eq!(f(OriginErrorKind::Reset).status(), 502);
        assert_eq!(f(OriginErrorKind::FirstByteTimeout).status(), 504);
        assert_eq!(f(OriginErrorKind::ConnectTimeout).status(), 504);
        assert_eq!(f(OriginErrorKind::Connect).source(), Source::Origin);
        assert!(f(OriginErrorKind::Connect).retryable());
        let refused = f(OriginErrorKind::Refused(
            crate::origin::ssrf::Refusal::Private,
        ));
        assert_eq!(refused.status(), 502);
        assert!(!refused.retryable());
        assert_eq!(f(OriginErrorKind::UnknownBackend).source(), Source::Tenant);
        assert!(!Failure::Trap("x".into()).retryable());
    }
}
