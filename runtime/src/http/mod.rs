//! HTTP: the shared request path (`handler`), routing, the streaming response body, and
//! listeners (plain HTTP/1.1, admin).

pub mod admin;
pub mod body;
pub mod certs;
pub mod conn;
pub mod handler;
pub mod plain;
pub mod quic;
pub mod router;
pub mod streams;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};

use body::{InBody, OutBody};
use handler::ConnInfo;

/// What a listener calls for each request.
pub type Handler = Arc<
    dyn Fn(Request<InBody>, ConnInfo) -> Pin<Box<dyn Future<Output = Response<OutBody>> + Send>>
        + Send
        + Sync,
>;

/// The protocol label of a request, from its version.
pub fn protocol_of(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}
