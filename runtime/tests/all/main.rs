//! outpost's integration tests: one binary, one module per area.

mod bundle;
mod edge;
mod engine;
mod hostile;
mod hygiene;
mod inline;
mod origin;
mod run;
mod sandbox;
mod serve;
mod soak;
mod support;
mod wasix;
