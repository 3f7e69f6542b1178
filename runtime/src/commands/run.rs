//! `outpost run MODULE`: the tenant's local dev server. Loads one module (compiled once, then
//! from the artifact cache), and serves it over plain HTTP/1.1 with the production sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::Semaphore;

use crate::http::handler::{serve_app, Shared, Target};
use crate::http::Handler;
use crate::metrics::Metrics;
use crate::sandbox::{CompilerKind, HostChoice, Limits, Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The WASI command module to serve (built for wasm32-wasip1).
    pub module: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Linear memory cap per instance, e.g. 64MiB.
    #[arg(long, default_value = "128MiB", value_parser = size)]
    pub memory: u64,
    /// Fuel (Wasm operators) per request.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub fuel: u64,
    /// Wall-clock limit per request, e.g. 500ms or 10s.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Requests running at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Largest request body accepted (413 past it).
    #[arg(long, default_value = "8MiB", value_parser = size)]
    pub request_body: u64,
    /// Largest response body a guest may write.
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub response_body: u64,
    /// Environment variable for the guest, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Where compiled artifacts are cached [default: $XDG_CACHE_HOME/outpost or ~/.cache/outpost].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Compiler: cranelift (optimising) or singlepass (fast compile).
    #[arg(long, default_value = "cranelift", value_parser = compiler)]
    pub compiler: CompilerKind,
    /// Host for the guest: auto (lean WASI p1 host unless the module needs WASIX), lean, or wasix.
    #[arg(long, default_value = "auto", value_parser = host)]
    pub host: HostChoice,
    /// A directory shown to the guest read-only at --assets-mount, as a bundle's assets are.
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Where the guest sees --assets.
    #[arg(long, default_value = "/assets")]
    pub assets_mount: String,
    /// Arguments passed to the guest after its name.
    #[arg(last = true)]
    pub guest_args: Vec<String>,
}

fn size(s: &str) -> Result<u64, String> {
    edge_config::units::parse_size(s).map_err(|e| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    edge_config::units::parse_duration(s).map_err(|e| e.to_string())
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn host(s: &str) -> Result<HostChoice, String> {
    match s {
        "auto" => Ok(HostChoice::Auto),
        "lean" => Ok(HostChoice::Lean),
        "wasix" => Ok(HostChoice::Wasix),
        _ => Err(format!("{s:?} is not a host; expected auto, lean or wasix")),
    }
}

fn compiler(s: &str) -> Result<CompilerKind, String> {
    match s {
        "cranelift" => Ok(CompilerKind::Cranelift),
        "singlepass" => Ok(CompilerKind::Singlepass),
        _ => Err(format!(
            "{s:?} is not a compiler; expected cranelift or singlepass"
        )),
    }
}

/// Default data directory for a developer's machine.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("outpost");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("outpost"),
        None => std::env::temp_dir().join("outpost"),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let mut config = SandboxConfig::new(args.data_dir.clone().unwrap_or_else(default_data_dir));
    config.compiler = args.compiler;
    let sandbox = Sandbox::new(config).context("cannot start the sandbox")?;
    let name = args
        .module
        .file_stem()
        .map_or_else(|| "app".to_string(), |s| s.to_string_lossy().into_owned());
    let app = sandbox
        .load_with(&name, &bytes, args.guest_args.clone(), &args.env, args.host)
        .with_context(|| format!("cannot run {}", args.module.display()))?;
    let app = match &args.assets {
        None => app,
        Some(dir) => {
            let (_, assets) = super::bundle::assets_tar(dir, &args.assets_mount)?;
            app.with_assets(assets)?
        }
    };
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    metrics
        .module_loads
        .with_label_values(&[app.source.label()])
        .inc();
    tracing::info!(
        app = %app.name,
        digest = %app.digest,
        source = app.source.label(),
        host = ?app.host,
        ms = app.load_time.as_millis() as u64,
        fingerprint = sandbox.fingerprint(),
        "module ready"
    );
    let limits = Limits {
        memory: args.memory,
        fuel: args.fuel,
        timeout: args.timeout,
        request_body: args.request_body,
        response_body: args.response_body,
        ..Limits::default()
    };
    let target = Arc::new(Target {
        backends: Default::default(),
        tenant: "local".to_string(),
        app: Arc::new(app),
        envelope: Arc::new(sandbox.envelope(limits)),
        admission: Arc::new(Semaphore::new(args.concurrency.max(1))),
        series: Default::default(),
    });
    let shared = Arc::new(Shared { sandbox, metrics });
    let handler: Handler = Arc::new(move |req, conn| {
        let (shared, target) = (shared.clone(), target.clone());
        Box::pin(async move { serve_app(&shared, &target, req, &conn, "").await })
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        tracing::info!("listening on http://{local}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::terminate_signal().await;
            tracing::info!("shutting down: finishing open requests");
            let _ = stop.send(true);
        });
        crate::http::plain::serve(
            listener,
            handler,
            crate::http::plain::PlainLimits::uncapped(crate::http::plain::HEADER_READ_TIMEOUT),
            stopped,
            args.timeout + Duration::from_secs(5),
        )
        .await;
        Ok(())
    })
}
