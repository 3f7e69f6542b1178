//! The node's configuration lifecycle: reload on SIGHUP and when the file's contents change,
//! validating fully first (an invalid file keeps the running configuration), rebuilding only
//! the apps whose entries changed (`node::build`) and swapping certificates with the state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::{Live, NodeContext, State};
use crate::http::certs::{Certs, SniResolver};
use crate::metrics::Metrics;

/// How often the configuration file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_millis(500);

fn file_digest(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path)
        .ok()
        .map(|b| Sha256::digest(&b).to_vec())
}

/// What a reload refreshes besides the state.
#[derive(Clone)]
pub struct Reloadable {
    pub live: Arc<Live>,
    pub ctx: Arc<NodeContext>,
    pub metrics: Arc<Metrics>,
    pub certs: Option<(Arc<SniResolver>, Arc<CertifiedKey>)>,
}

async fn reload(path: PathBuf, r: Reloadable) {
    let Reloadable {
        live,
        ctx,
        metrics,
        certs,
    } = r;
    let worker_live = live.clone();
    let built = tokio::task::spawn_blocking(move || {
        let config = edge_config::load(&path)?;
        let previous = worker_live.state.load_full();
        if config.listen != previous.config.listen || config.node != previous.config.node {
            tracing::warn!("[listen] and [node] changes take effect at the next restart");
        }
        Ok::<State, edge_config::Diagnostics>(super::build(config, &previous, &ctx))
    })
    .await;
    match built {
        Ok(Ok(state)) => {
            let (apps, routes) = (state.slots.len(), state.router.len());
            if let Some((resolver, default)) = &certs {
                resolver
                    .certs
                    .store(Arc::new(Certs::build(&state.config, default.clone())));
            }
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
pub async fn watch_config(path: PathBuf, r: Reloadable) {
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
        reload(path.clone(), r.clone()).await;
    }
}
