//! `outpost check CONFIG`: validate a configuration file and say what it holds. Never starts
//! a listener or touches the network.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file to check.
    pub config: PathBuf,
}

/// Exit status 0 and a summary when valid; 1 and every error when not.
pub fn check(args: CheckArgs) -> std::process::ExitCode {
    match edge_config::load(&args.config) {
        Ok(config) => {
            println!(
                "{}: ok: {} tenants, {} apps, {} routes",
                args.config.display(),
                config.tenants.len(),
                config.apps.len(),
                config.routes.len()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            let n = diagnostics.0.len();
            eprintln!(
                "{}: {n} error{}",
                args.config.display(),
                if n == 1 { "" } else { "s" }
            );
            std::process::ExitCode::FAILURE
        }
    }
}
