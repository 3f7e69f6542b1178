//! `outpost serve --config FILE`: the PoP daemon. Serves every routed app, reloads the
//! configuration on SIGHUP and when the file changes (an invalid file keeps the old one
//! serving), exposes the admin listener, and drains open requests on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::error::Failure;
use crate::http::handler::{error_response, serve_app, ConnInfo, Shared};
use crate::http::router::normalize_host;
use crate::http::Handler;
use crate::metrics::Metrics;
use crate::node::{self, Live, Routed, State};
use crate::sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// How often the configuration file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long open requests may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(30);

fn file_digest(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path)
        .ok()
        .map(|b| Sha256::digest(&b).to_vec())
}

fn request_handler(live: Arc<Live>, shared: Arc<Shared>) -> Handler {
    Arc::new(move |req, conn: ConnInfo| {
        let (live, shared) = (live.clone(), shared.clone());
        Box::pin(async move {
            let raw_host = req
                .uri()
                .host()
                .map(str::to_string)
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            let host = normalize_host(&raw_host).unwrap_or_default();
            let state = live.state.load_full();
            let found = state.router.lookup(&host, req.uri().path());
            match found {
                Some((prefix, Routed::Ready(target))) => {
                    let script = if prefix.as_str() == "/" {
                        ""
                    } else {
                        prefix.as_str()
                    };
                    let target = target.clone();
                    let script = script.to_string();
                    drop(state);
                    serve_app(&shared, &target, req, &conn, &script).await
                }
                Some((_, Routed::NotReady { app })) => {
                    tracing::info!(target: "outpost::request", %host, app = %app, status = 503, "app not ready");
                    error_response(&Failure::NotReady)
                }
                None => {
                    shared.metrics.unrouted.inc();
                    error_response(&Failure::NoRoute)
                }
            }
        })
    })
}

async fn reload(path: PathBuf, live: Arc<Live>, sandbox: Arc<Sandbox>, metrics: Arc<Metrics>) {
    let worker_live = live.clone();
    let built = tokio::task::spawn_blocking(move || {
        let config = edge_config::load(&path)?;
        let previous = worker_live.state.load_full();
        if config.listen != previous.config.listen || config.node != previous.config.node {
            tracing::warn!("[listen] and [node] changes take effect at the next restart");
        }
        Ok::<State, edge_config::Diagnostics>(node::build(config, &previous, &sandbox))
    })
    .await;
    match built {
        Ok(Ok(state)) => {
            let (apps, routes) = (state.apps.len(), state.router.len());
            live.state.store(Arc::new(state));
            metrics.config_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(apps, routes, "configuration reloaded");
        }
        Ok(Err(diagnostics)) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(
                "configuration not reloaded; the previous one keeps serving:\n{diagnostics}"
            );
        }
        Err(e) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "configuration reload failed");
        }
    }
}

/// Reload on SIGHUP, and when the file's contents change.
async fn watch_config(
    path: PathBuf,
    live: Arc<Live>,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = file_digest(&path);
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = hup => {
                tracing::info!("SIGHUP: reloading the configuration");
            }
            _ = tick.tick() => {
                let now = file_digest(&path);
                if now == seen || now.is_none() {
                    continue;
                }
                tracing::info!("the configuration file changed: reloading");
            }
        }
        seen = file_digest(&path);
        reload(path.clone(), live.clone(), sandbox.clone(), metrics.clone()).await;
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config =
        edge_config::load(&args.config).map_err(|d| anyhow!("invalid configuration:\n{d}"))?;
    if config.listen.https.is_some() || config.listen.http3.is_some() {
        return Err(anyhow!(
            "https and http3 listeners are not available in this build; use [listen] http"
        ));
    }
    std::fs::create_dir_all(&config.node.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.node.data_dir.display()
        )
    })?;
    let sandbox = Sandbox::new(SandboxConfig::new(config.node.data_dir.clone()))
        .context("cannot start the sandbox")?;
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let listen = config.listen.clone();
    let state = node::build(config.clone(), &State::empty(config), &sandbox);
    tracing::info!(
        apps = state.apps.len(),
        routes = state.router.len(),
        ready = state.ready(),
        "configuration loaded"
    );
    let live = Arc::new(Live::new(state));
    let shared = Arc::new(Shared {
        sandbox: sandbox.clone(),
        metrics: metrics.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut listeners = tokio::task::JoinSet::new();
        let admin = tokio::net::TcpListener::bind(listen.admin)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", listen.admin))?;
        tracing::info!("admin listening on http://{}", admin.local_addr()?);
        listeners.spawn(crate::http::plain::serve(
            admin,
            crate::http::admin::handler(live.clone(), metrics.clone()),
            stopped.clone(),
            Duration::from_secs(1),
        ));
        if let Some(addr) = listen.http {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http)"))?;
            tracing::info!("listening on http://{}", http.local_addr()?);
            listeners.spawn(crate::http::plain::serve(
                http,
                request_handler(live.clone(), shared.clone()),
                stopped.clone(),
                DRAIN,
            ));
        }
        let watcher = tokio::spawn(watch_config(
            args.config.clone(),
            live.clone(),
            sandbox.clone(),
            metrics.clone(),
        ));
        super::terminate_signal().await;
        tracing::info!("shutting down: no new connections; finishing open requests");
        watcher.abort();
        let _ = stop.send(true);
        while listeners.join_next().await.is_some() {}
        tracing::info!("stopped");
        Ok(())
    })
}
