//! The `outpost` binary: parse the command line and hand over to a subcommand.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Multi-tenant edge compute runtime for WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one module over plain HTTP/1.1 on loopback: the local dev server, with the same
    /// sandbox and limits as production.
    Run(outpost::commands::run::RunArgs),
    /// Run the PoP daemon from a configuration file.
    Serve(outpost::commands::serve::ServeArgs),
    /// Validate a configuration file: exit 0 with a summary, or 1 with every error.
    Check(outpost::commands::check::CheckArgs),
    /// Make a tenant's ed25519 signing key.
    Keygen(outpost::commands::keygen::KeygenArgs),
    /// Push, inspect and list signed bundles (registry or OCI image layout).
    Bundle(outpost::commands::bundle::BundleArgs),
}

/// wasmer warns on every out-of-bounds memory view access, which a guest triggers at will by
/// passing a bad pointer to a host call (it gets EFAULT): one log line per call would let a
/// tenant flood the node's log. Those warnings are kept to errors unless RUST_LOG names wasmer.
const WASMER_VIEW_TARGET: &str = "wasmer::backend::sys::entities::memory";

fn log_filter() -> tracing_subscriber::EnvFilter {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let names_wasmer = from_env.as_deref().is_some_and(|s| s.contains("wasmer"));
    let filter = from_env
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    if names_wasmer {
        return filter;
    }
    match format!("{WASMER_VIEW_TARGET}=error").parse::<tracing_subscriber::filter::Directive>() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => outpost::commands::run::run(args),
        Command::Serve(args) => outpost::commands::serve::serve(args),
        Command::Check(args) => return outpost::commands::check::check(args),
        Command::Keygen(args) => outpost::commands::keygen::keygen(args),
        Command::Bundle(args) => outpost::commands::bundle::bundle(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
