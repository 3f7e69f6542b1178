//! HTTP: the shared request path (`handler`), routing, the streaming response body, and
//! listeners (plain HTTP/1.1, admin).

pub mod admin;
pub mod body;
pub mod handler;
pub mod plain;
pub mod router;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use body::OutBody;
use handler::ConnInfo;

/// What a listener calls for each request.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, ConnInfo) -> Pin<Box<dyn Future<Output = Response<OutBody>> + Send>>
        + Send
        + Sync,
>;
