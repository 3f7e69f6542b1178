//! outpost's integration tests: one binary, one module per area.

mod bundle;
mod edge;
mod run;
mod sandbox;
mod serve;
mod support;
