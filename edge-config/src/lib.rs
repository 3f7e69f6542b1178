//! outpost's operator configuration: the TOML schema, validation into types that cannot hold an
//! invalid state, and errors that name file, line and column. Pure: no I/O but reading a file.

pub mod config;
pub mod diag;
pub mod types;
pub mod units;

pub use config::{
    load, parse, App, Backend, CertPair, Config, Listen, Node, Registry, Route, Tenant, Tls,
};
pub use diag::{Diagnostic, Diagnostics, Position};
pub use types::{
    GuestHost, HostPattern, Limits, Name, OriginUrl, PathPrefix, PublicKey, Reference, Scheme,
    Source,
};
