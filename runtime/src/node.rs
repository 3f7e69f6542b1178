//! The node's live state: tenants (envelopes and admission), loaded apps and the router, built
//! from a validated configuration and swapped atomically on reload. Requests already running
//! keep the state they started with; a configuration that fails validation or whose apps fail
//! to load changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use edge_config::{Config, GuestHost, Source};
use tokio::sync::Semaphore;

use crate::http::handler::Target;
use crate::http::router::Router;
use crate::sandbox::{App, Envelope, HostChoice, Limits, Sandbox};

/// What a route leads to.
pub enum Routed {
    Ready(Arc<Target>),
    /// The app has no runnable version (its source failed to load): 503.
    NotReady {
        app: String,
    },
}

/// One app as `/apps` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppStatus {
    pub app: String,
    pub tenant: String,
    pub digest: Option<String>,
    /// Seconds since the Unix epoch when this version started serving.
    pub since: Option<u64>,
    pub host: Option<String>,
    /// Why the app has no runnable version (its routes answer 503).
    pub error: Option<String>,
    /// Why the newest version was refused while an older one keeps serving.
    pub last_error: Option<String>,
}

struct TenantRuntime {
    limits: edge_config::Limits,
    envelope: Arc<Envelope>,
    admission: Arc<Semaphore>,
}

#[derive(Clone)]
struct LoadedApp {
    app: Arc<App>,
    tenant: String,
    since: SystemTime,
    args: Vec<String>,
    env: Vec<(String, String)>,
    host: GuestHost,
}

pub struct State {
    pub config: Arc<Config>,
    pub router: Router<Routed>,
    pub apps: Vec<AppStatus>,
    tenants: HashMap<String, TenantRuntime>,
    loaded: HashMap<String, LoadedApp>,
}

impl State {
    pub fn empty(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            router: Router::default(),
            apps: Vec::new(),
            tenants: HashMap::new(),
            loaded: HashMap::new(),
        }
    }

    /// Each tenant's requests waiting for a CPU slot now.
    pub fn queue_depths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tenants
            .iter()
            .map(|(name, t)| (name.as_str(), t.envelope.queued()))
    }

    /// Ready when every routed app has a compiled version.
    pub fn ready(&self) -> bool {
        self.apps.iter().all(|a| a.error.is_none())
    }
}

pub fn sandbox_limits(l: &edge_config::Limits) -> Limits {
    Limits {
        memory: l.memory,
        fuel: l.fuel,
        timeout: l.timeout,
        request_body: l.request_body,
        response_body: l.response_body,
        ..Limits::default()
    }
}

fn host_choice(h: GuestHost) -> HostChoice {
    match h {
        GuestHost::Auto => HostChoice::Auto,
        GuestHost::Lean => HostChoice::Lean,
        GuestHost::Wasix => HostChoice::Wasix,
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum KeptOrNew<'a> {
    Kept(&'a LoadedApp),
    New(App),
}

/// Build the next state from a validated config, reusing what did not change (tenant
/// semaphores, loaded apps whose module and settings are the same). Blocking: compiles.
pub fn build(config: Config, previous: &State, sandbox: &Sandbox) -> State {
    let mut tenants = HashMap::new();
    for t in &config.tenants {
        let name = t.name.as_str().to_string();
        let reused = previous
            .tenants
            .get(&name)
            .filter(|old| old.limits == t.limits)
            .map(|old| TenantRuntime {
                limits: old.limits.clone(),
                envelope: old.envelope.clone(),
                admission: old.admission.clone(),
            });
        let runtime = reused.unwrap_or_else(|| TenantRuntime {
            limits: t.limits.clone(),
            envelope: Arc::new(sandbox.envelope(sandbox_limits(&t.limits))),
            admission: Arc::new(Semaphore::new(t.limits.concurrency as usize)),
        });
        tenants.insert(name, runtime);
    }

    let mut loaded = HashMap::new();
    let mut apps = Vec::new();
    let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
    for a in &config.apps {
        let name = a.name.as_str().to_string();
        let tenant = a.tenant.as_str().to_string();
        let env: Vec<(String, String)> =
            a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let result = match &a.source {
            Source::File(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| {
                    sandbox
                        .load_with(&name, &bytes, a.args.clone(), &env, host_choice(a.host))
                        .map_err(|e| e.to_string())
                }),
            Source::Oci { .. } | Source::Local { .. } => {
                Err("bundle sources (oci:, local:) are not served by this version yet".to_string())
            }
        };
        let mut status = AppStatus {
            app: name.clone(),
            tenant: tenant.clone(),
            digest: None,
            since: None,
            host: None,
            error: None,
            last_error: None,
        };
        // A version that fails to load never replaces one that serves.
        let result = match (result, previous.loaded.get(&name)) {
            (Err(e), Some(old)) if old.tenant == tenant => {
                tracing::error!(app = %name, error = %e, "new version refused; the last good version keeps serving");
                status.last_error = Some(e);
                Ok(KeptOrNew::Kept(old))
            }
            (Err(e), _) => Err(e),
            (Ok(app), _) => Ok(KeptOrNew::New(app)),
        };
        match result {
            Ok(kept_or_new) => {
                let same = match &kept_or_new {
                    KeptOrNew::Kept(old) => Some(*old),
                    KeptOrNew::New(app) => previous.loaded.get(&name).filter(|old| {
                        old.app.digest == app.digest
                            && old.tenant == tenant
                            && old.args == a.args
                            && old.env == env
                            && old.host == a.host
                    }),
                };
                let entry = match (same, kept_or_new) {
                    (Some(old), _) => old.clone(),
                    // A kept version is always the previous one (`same` above).
                    (None, KeptOrNew::Kept(old)) => old.clone(),
                    (None, KeptOrNew::New(app)) => {
                        tracing::info!(app = %name, tenant = %tenant, digest = %app.digest, source = app.source.label(), "app ready");
                        LoadedApp {
                            app: Arc::new(app),
                            tenant: tenant.clone(),
                            since: SystemTime::now(),
                            args: a.args.clone(),
                            env: env.clone(),
                            host: a.host,
                        }
                    }
                };
                status.digest = Some(entry.app.digest.clone());
                status.since = Some(epoch_secs(entry.since));
                status.host = Some(format!("{:?}", entry.app.host).to_lowercase());
                if let Some(t) = tenants.get(&tenant) {
                    targets.insert(
                        name.clone(),
                        Arc::new(Target {
                            tenant: tenant.clone(),
                            app: entry.app.clone(),
                            envelope: t.envelope.clone(),
                            admission: t.admission.clone(),
                        }),
                    );
                }
                loaded.insert(name, entry);
            }
            Err(e) => {
                tracing::error!(app = %name, tenant = %tenant, error = %e, "app not ready");
                status.error = Some(e);
            }
        }
        apps.push(status);
    }

    let mut router = Router::default();
    for r in &config.routes {
        let app = r.app.as_str();
        let routed = match targets.get(app) {
            Some(t) => Routed::Ready(t.clone()),
            None => Routed::NotReady {
                app: app.to_string(),
            },
        };
        router.insert(&r.host, r.path.clone(), routed);
    }
    State {
        config: Arc::new(config),
        router,
        apps,
        tenants,
        loaded,
    }
}

/// The state every request reads, swapped whole on reload.
pub struct Live {
    pub state: ArcSwap<State>,
}

impl Live {
    pub fn new(state: State) -> Self {
        Self {
            state: ArcSwap::from_pointee(state),
        }
    }
}
