//! `outpost serve --config FILE`: the PoP daemon. Serves every routed app, reloads the
//! configuration on SIGHUP and when the file changes (an invalid file keeps the old one
//! serving), exposes the admin listener, and drains open requests on SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;

use crate::error::Failure;
use crate::http::certs::{self, Certs, SniResolver};
use crate::http::handler::{error_response, request_host, serve_app, ConnInfo, Shared};
use crate::http::quic::QuicListener;
use crate::http::tls::{ConnLimits, TlsListener};
use crate::http::Handler;
use crate::metrics::Metrics;
use crate::node::sync::{Nudge, Syncer};
use crate::node::{self, Live, NodeContext, Routed, State};
use crate::sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Run every guest on a guest thread, never on the async thread that received its
    /// request (the inline path): for comparisons and diagnosis.
    #[arg(long)]
    pub no_inline: bool,
}

/// How long open requests may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(30);

fn request_handler(live: Arc<Live>, shared: Arc<Shared>) -> Handler {
    Arc::new(move |req, conn: ConnInfo| {
        let (live, shared) = (live.clone(), shared.clone());
        Box::pin(async move {
            let host = request_host(&req).unwrap_or_default();
            let state = live.state.load_full();
            let found = state.router.lookup(&host, req.uri().path());
            match found {
                Some((prefix, Routed::App(slot))) => {
                    // The version this request runs on, whatever the sync loop swaps meanwhile.
                    let Some(target) = slot.target() else {
                        tracing::info!(target: "outpost::request", %host, app = %slot.name, status = 503, "app not ready");
                        return error_response(&Failure::NotReady);
                    };
                    let script = if prefix.as_str() == "/" {
                        ""
                    } else {
                        prefix.as_str()
                    };
                    let script = script.to_string();
                    drop((state, host));
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

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config =
        edge_config::load(&args.config).map_err(|d| anyhow!("invalid configuration:\n{d}"))?;
    std::fs::create_dir_all(&config.node.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.node.data_dir.display()
        )
    })?;
    let mut sandbox_config = SandboxConfig::new(config.node.data_dir.clone());
    sandbox_config.inline = !args.no_inline;
    let sandbox = Sandbox::new(sandbox_config).context("cannot start the sandbox")?;
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let listen = config.listen.clone();
    let tls = config.tls.clone();
    let data_dir = config.node.data_dir.clone();
    let ctx = Arc::new(
        NodeContext::new(&data_dir, sandbox.clone(), metrics.clone())
            .context("cannot open the bundle cache")?,
    );
    let notify_token = config.registry.notify_token_file.clone();
    let state = node::build(config.clone(), &State::empty(config), &ctx);
    tracing::info!(
        apps = state.slots.len(),
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
    let certs = if listen.https.is_some() || listen.http3.is_some() {
        let default = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => certs::load_pair(cert, key).map_err(|e| anyhow!(e))?,
            _ => {
                let (key, pem) =
                    certs::self_signed(&data_dir.join("tls")).map_err(|e| anyhow!(e))?;
                tracing::warn!(
                    "no TLS certificate configured: serving a self-signed certificate for localhost ({}); for development only",
                    pem.display()
                );
                key
            }
        };
        let resolver = Arc::new(SniResolver {
            certs: arc_swap::ArcSwap::from_pointee(Certs::build(
                &live.state.load().config,
                default.clone(),
            )),
        });
        Some((resolver, default))
    } else {
        None
    };
    let limits = ConnLimits {
        connections: Arc::new(tokio::sync::Semaphore::new(listen.max_connections as usize)),
        header_timeout: listen.header_timeout,
        idle_timeout: listen.idle_timeout,
        max_streams: listen.max_streams,
        max_header_bytes: listen.max_header_bytes as usize,
    };
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let nudge = Arc::new(Nudge::default());
        let syncer = tokio::spawn(
            Syncer {
                ctx: ctx.clone(),
                live: live.clone(),
                nudge: nudge.clone(),
            }
            .run(),
        );
        let mut listeners = tokio::task::JoinSet::new();
        let admin = tokio::net::TcpListener::bind(listen.admin)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", listen.admin))?;
        tracing::info!("admin listening on http://{}", admin.local_addr()?);
        // No backend may point back at the node itself.
        ctx.origins.own.add(admin.local_addr()?);
        listeners.spawn(crate::http::plain::serve(
            admin,
            crate::http::admin::handler(
                live.clone(),
                metrics.clone(),
                notify_token.map(|token_file| crate::http::admin::Notifications {
                    token_file,
                    nudge: nudge.clone(),
                }),
            ),
            crate::http::plain::PlainLimits::uncapped(listen.header_timeout),
            stopped.clone(),
            Duration::from_secs(1),
        ));
        let handler = request_handler(live.clone(), shared.clone());
        if let Some(addr) = listen.http {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http)"))?;
            tracing::info!("listening on http://{}", http.local_addr()?);
            ctx.origins.own.add(http.local_addr()?);
            let plain_limits = crate::http::plain::PlainLimits {
                header_timeout: limits.header_timeout,
                idle_timeout: limits.idle_timeout,
                max_header_bytes: limits.max_header_bytes,
                connections: Some((
                    limits.connections.clone(),
                    metrics.connections_refused.clone(),
                    metrics.connections_open.with_label_values(&["tcp"]),
                )),
            };
            listeners.spawn(crate::http::plain::serve(
                http,
                handler.clone(),
                plain_limits,
                stopped.clone(),
                DRAIN,
            ));
        }
        let mut quic_port = None;
        if let (Some(addr), Some((resolver, _))) = (listen.http3, &certs) {
            let (_, quic_tls) = certs::server_configs(resolver.clone()).map_err(|e| anyhow!(e))?;
            let endpoint = crate::http::quic::endpoint(addr, quic_tls, &limits)
                .with_context(|| format!("cannot listen on {addr} (http3, UDP)"))?;
            let local = endpoint.local_addr()?;
            quic_port = Some(local.port());
            tracing::info!("listening on https://{local} (HTTP/3, UDP)");
            let quic = QuicListener {
                endpoint,
                handler: handler.clone(),
                limits: limits.clone(),
                metrics: metrics.clone(),
            };
            listeners.spawn(quic.serve(stopped.clone(), DRAIN));
        }
        if let (Some(addr), Some((resolver, _))) = (listen.https, &certs) {
            let (tcp_tls, _) = certs::server_configs(resolver.clone()).map_err(|e| anyhow!(e))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (https)"))?;
            tracing::info!(
                "listening on https://{} (HTTP/1.1, HTTP/2)",
                listener.local_addr()?
            );
            ctx.origins.own.add(listener.local_addr()?);
            let alt_svc = quic_port
                .and_then(|p| http::HeaderValue::from_str(&format!("h3=\":{p}\"; ma=86400")).ok());
            let tls = TlsListener {
                listener,
                acceptor: tokio_rustls::TlsAcceptor::from(tcp_tls),
                handler: handler.clone(),
                limits: limits.clone(),
                alt_svc,
                metrics: metrics.clone(),
            };
            listeners.spawn(tls.serve(stopped.clone(), DRAIN));
        }
        let reloadable = node::reload::Reloadable {
            live: live.clone(),
            ctx: ctx.clone(),
            metrics: metrics.clone(),
            certs: certs.clone(),
        };
        let watcher = tokio::spawn(node::reload::watch_config(args.config.clone(), reloadable));
        super::terminate_signal().await;
        tracing::info!("shutting down: no new connections; finishing open requests");
        watcher.abort();
        syncer.abort();
        let _ = stop.send(true);
        while listeners.join_next().await.is_some() {}
        // A response can reach its client before its guest's outcome is logged and counted (the
        // worker does that after the guest ends): wait for those too, briefly.
        let accounted = async {
            while metrics.active_instances() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), accounted)
            .await
            .is_err()
        {
            tracing::warn!("guests still running after the drain; exiting without their outcomes");
        }
        tracing::info!("stopped");
        Ok(())
    })
}
