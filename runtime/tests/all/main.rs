//! outpost's integration tests: one binary, one module per area.

mod edge;
mod hygiene;
mod run;
mod sandbox;
mod serve;
mod support;
