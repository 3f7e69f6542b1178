//! One module per `outpost` subcommand.

pub mod run;
