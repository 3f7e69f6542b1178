//! HTTP: the shared request path (`handler`), the streaming response body, and listeners.

pub mod body;
pub mod handler;
pub mod plain;
