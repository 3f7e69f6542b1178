//! outpost: a multi-tenant edge compute runtime. Each HTTP request runs in a fresh WebAssembly
//! instance under its tenant's limits. The binary's subcommands live in `commands`; the rooms
//! are `sandbox` (running guests), `http` (listeners and the request path) and `metrics`.

pub mod bundle;
pub mod commands;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod sandbox;
