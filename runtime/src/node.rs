//! The node room: tenants (envelopes and admission), one slot per app holding the version it
//! serves now, and the router, built from a validated configuration. Each app's slot is
//! swapped on its own (the sync loop in `node::sync`, a reload that changed that app's entry);
//! a request holds the version it started on until it ends. Nothing here touches the network.

pub mod reload;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use ed25519_dalek::VerifyingKey;
use edge_config::{Config, GuestHost, Source};
use tokio::sync::Semaphore;

use crate::bundle::fetch::{verify_cached, Verified};
use crate::bundle::format::Caps;
use crate::bundle::layout::Layout;
use crate::http::handler::Target;
use crate::http::router::Router;
use crate::metrics::Metrics;
use crate::origin::{AppBackends, Backend, Origins};
use crate::sandbox::assets::Assets;
use crate::sandbox::{App, Envelope, HostChoice, Limits, Sandbox};

/// Assets layers larger than this are refused before they are fetched.
pub const MAX_ASSETS_BYTES: u64 = 256 << 20;
/// Annotations on the cache's index entries recording what each app last served.
const SOURCE_ANNOTATION: &str = "dev.outpost.source";
pub const SIGNATURE_ANNOTATION: &str = "dev.outpost.signature";
const TENANT_ANNOTATION: &str = "dev.outpost.tenant";

/// What a route leads to.
pub enum Routed {
    App(Arc<AppSlot>),
    /// The route names no app (cannot happen after validation; kept total).
    NotReady {
        app: String,
    },
}

/// One app as `/apps` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppStatus {
    pub app: String,
    pub tenant: String,
    /// The bundle's manifest digest (`sha256:...`), or the module's sha256 for `file:` apps.
    pub digest: Option<String>,
    /// Seconds since the Unix epoch when this version started serving.
    pub since: Option<u64>,
    pub host: Option<String>,
    /// Why the app has no runnable version (its routes answer 503).
    pub error: Option<String>,
    /// Why the newest version was refused while an older one keeps serving.
    pub last_error: Option<String>,
}

/// A runnable version of an app.
pub struct Version {
    pub target: Arc<Target>,
    pub digest: String,
    pub since: SystemTime,
    /// Carried over from the app's previous entry (its env, args or source changed): served
    /// until the sync loop loads the entry's own version, never taken as that version.
    pub carried: bool,
}

/// The app's current version, swappable on its own.
pub struct AppSlot {
    /// Unique for the process's life: the sync loop's schedule is keyed by it.
    pub id: u64,
    pub name: String,
    pub tenant: String,
    pub spec: edge_config::App,
    keys: Vec<VerifyingKey>,
    envelope: Arc<Envelope>,
    admission: Arc<Semaphore>,
    backends: Arc<AppBackends>,
    current: ArcSwapOption<Version>,
    problem: Mutex<Problem>,
}

#[derive(Default)]
struct Problem {
    error: Option<String>,
    /// The last version refused for a reason retrying cannot fix; not fetched again.
    refused: Option<String>,
}

impl AppSlot {
    /// The version a new request runs on.
    pub fn target(&self) -> Option<Arc<Target>> {
        self.current.load().as_ref().map(|v| v.target.clone())
    }

    pub fn digest(&self) -> Option<String> {
        self.current.load().as_ref().map(|v| v.digest.clone())
    }

    /// The digest this app's own entry serves (not a version carried over from before).
    pub fn own_digest(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .filter(|v| !v.carried)
            .map(|v| v.digest.clone())
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    fn problem(&self) -> std::sync::MutexGuard<'_, Problem> {
        self.problem.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn refused(&self) -> Option<String> {
        self.problem().refused.clone()
    }

    /// Record why the newest version is not serving.
    pub fn set_error(&self, error: String, refused_digest: Option<String>) {
        let mut p = self.problem();
        p.error = Some(error);
        if refused_digest.is_some() {
            p.refused = refused_digest;
        }
    }

    /// Serve `app` (from bundle version `digest`) from now on; running requests keep theirs.
    pub fn swap(&self, app: App, digest: String) {
        self.current.store(Some(Arc::new(Version {
            target: Arc::new(Target {
                tenant: self.tenant.clone(),
                app: Arc::new(app),
                envelope: self.envelope.clone(),
                admission: self.admission.clone(),
                backends: self.backends.clone(),
                series: Default::default(),
            }),
            digest,
            since: SystemTime::now(),
            carried: false,
        })));
        *self.problem() = Problem::default();
    }

    /// Carry another slot's version over, under this slot's tenant envelope.
    fn adopt(&self, version: &Version) {
        self.current.store(Some(Arc::new(Version {
            target: Arc::new(Target {
                tenant: self.tenant.clone(),
                app: version.target.app.clone(),
                envelope: self.envelope.clone(),
                admission: self.admission.clone(),
                backends: self.backends.clone(),
                series: Default::default(),
            }),
            digest: version.digest.clone(),
            since: version.since,
            carried: true,
        })));
    }

    pub fn status(&self) -> AppStatus {
        let current = self.current.load();
        let problem = self.problem();
        let (error, last_error) = match current.as_ref() {
            Some(_) => (None, problem.error.clone()),
            None => (
                Some(
                    problem
                        .error
                        .clone()
                        .unwrap_or_else(|| "waiting for the first version".into()),
                ),
                None,
            ),
        };
        AppStatus {
            app: self.name.clone(),
            tenant: self.tenant.clone(),
            digest: current.as_ref().map(|v| v.digest.clone()),
            since: current.as_ref().map(|v| epoch_secs(v.since)),
            host: current
                .as_ref()
                .map(|v| format!("{:?}", v.target.app.host).to_lowercase()),
            error,
            last_error,
        }
    }

    /// The module's run settings: the bundle's, with the node config's env on top and its
    /// args instead when it names any.
    pub fn run_settings(&self, bundle: Option<&Verified>) -> (Vec<String>, Vec<(String, String)>) {
        let mut env: BTreeMap<String, String> =
            bundle.map(|b| b.config.env.clone()).unwrap_or_default();
        env.extend(self.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let args = match bundle {
            Some(b) if self.spec.args.is_empty() => b.config.args.clone(),
            _ => self.spec.args.clone(),
        };
        (args, env.into_iter().collect())
    }

    pub fn host_choice(&self) -> HostChoice {
        host_choice(self.spec.host)
    }

    /// Load a module for this app (blocking: may compile).
    fn load(
        &self,
        sandbox: &Sandbox,
        bytes: &[u8],
        bundle: Option<&Verified>,
    ) -> Result<App, String> {
        let (args, env) = self.run_settings(bundle);
        // The assets first: refusing a bad tar costs no compile.
        let assets = match bundle.and_then(|v| v.assets.as_ref().map(|tar| (v, tar))) {
            None => None,
            Some((v, tar)) => {
                let mount = v.config.assets_mount.as_deref().unwrap_or("/assets");
                Some(Assets::from_tar(mount, tar.clone())?)
            }
        };
        let outbound = !self.spec.backends.is_empty();
        let app = sandbox
            .load_outbound(&self.name, bytes, args, &env, self.host_choice(), outbound)
            .map_err(|e| e.to_string())?;
        match assets {
            None => Ok(app),
            Some(assets) => app.with_assets(assets).map_err(|e| e.to_string()),
        }
    }
}

struct TenantRuntime {
    limits: edge_config::Limits,
    keys: Vec<VerifyingKey>,
    envelope: Arc<Envelope>,
    admission: Arc<Semaphore>,
}

/// What every state of the node shares: the sandbox, the metrics, the bundle cache.
pub struct NodeContext {
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
    /// The node's cache: an OCI image layout whose index records what each app last served.
    pub cache: Layout,
    /// `local:REPO:TAG` sources read the OCI image layout `bundles/REPO`.
    pub bundles: PathBuf,
    /// What every backend's pool shares (the node's own listeners, never connected to).
    pub origins: Arc<Origins>,
}

impl NodeContext {
    pub fn new(
        data_dir: &std::path::Path,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let cache = Layout::create(&data_dir.join("cache"))?;
        let leftovers = cache.remove_leftovers();
        if leftovers > 0 {
            tracing::info!(
                files = leftovers,
                "removed unfinished writes from the bundle cache"
            );
        }
        Ok(Self {
            origins: Arc::new(Origins::new(metrics.clone())),
            sandbox,
            metrics,
            cache,
            bundles: data_dir.join("bundles"),
        })
    }

    pub fn caps(&self, config: &Config) -> Caps {
        Caps {
            module: config
                .registry
                .max_module
                .min(self.sandbox.config().max_module_bytes as u64),
            assets: MAX_ASSETS_BYTES,
        }
    }

    /// Compile a verified bundle for a slot (blocking).
    pub fn load_bundle(&self, slot: &AppSlot, v: &Verified) -> Result<App, String> {
        slot.load(&self.sandbox, &v.module, Some(v))
            .map(|app| self.counted(app))
    }

    /// A loaded module, counted in `outpost_module_loads_total` by where its code came from.
    fn counted(&self, app: App) -> App {
        self.metrics
            .module_loads
            .with_label_values(&[app.source.label()])
            .inc();
        app
    }

    /// Record that `slot` serves version `v`, so a restart serves it from the cache.
    pub fn record(&self, slot: &AppSlot, v: &Verified) -> Result<(), crate::bundle::Rejection> {
        let extra = BTreeMap::from([
            (
                SOURCE_ANNOTATION.to_string(),
                source_text(&slot.spec.source),
            ),
            (SIGNATURE_ANNOTATION.to_string(), v.signature.clone()),
            (TENANT_ANNOTATION.to_string(), slot.tenant.clone()),
        ]);
        self.cache.set_ref(
            &format!("apps/{}", slot.name),
            &v.digest,
            v.manifest_size,
            extra,
        )
    }

    /// The version this app last served with the same source, proven from the cache alone.
    fn recorded(
        &self,
        slot: &AppSlot,
        caps: Caps,
    ) -> Option<Result<Verified, crate::bundle::Rejection>> {
        let entry = self.cache.resolve(&format!("apps/{}", slot.name)).ok()??;
        let notes = entry.annotations.as_ref()?;
        if notes.get(SOURCE_ANNOTATION)? != &source_text(&slot.spec.source)
            || notes.get(TENANT_ANNOTATION)? != &slot.tenant
        {
            return None;
        }
        let signature = notes.get(SIGNATURE_ANNOTATION)?;
        Some(verify_cached(
            &self.cache,
            &entry.digest,
            signature,
            &slot.keys,
            caps,
        ))
    }
}

/// A source as the config spells it.
pub fn source_text(s: &Source) -> String {
    let reference = |r: &edge_config::Reference| match r {
        edge_config::Reference::Tag(t) => format!(":{t}"),
        edge_config::Reference::Digest(d) => format!("@{d}"),
    };
    match s {
        Source::Oci {
            registry,
            repository,
            reference: r,
        } => format!("oci://{registry}/{repository}{}", reference(r)),
        Source::Local {
            repository,
            reference: r,
        } => format!("local:{repository}{}", reference(r)),
        Source::File(p) => format!("file:{}", p.display()),
    }
}

pub struct State {
    pub config: Arc<Config>,
    pub router: Router<Routed>,
    pub slots: Vec<Arc<AppSlot>>,
    tenants: HashMap<String, TenantRuntime>,
    /// Each declared backend with its connection pool.
    backends: HashMap<String, Arc<Backend>>,
}

impl State {
    pub fn empty(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            router: Router::default(),
            slots: Vec::new(),
            tenants: HashMap::new(),
            backends: HashMap::new(),
        }
    }

    /// Each tenant's requests waiting for a CPU slot now.
    pub fn queue_depths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tenants
            .iter()
            .map(|(name, t)| (name.as_str(), t.envelope.queued()))
    }

    pub fn apps(&self) -> Vec<AppStatus> {
        self.slots.iter().map(|s| s.status()).collect()
    }

    /// Ready when every app has a runnable version.
    pub fn ready(&self) -> bool {
        self.slots.iter().all(|s| s.current.load().is_some())
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

fn verifying_keys(keys: &[edge_config::PublicKey]) -> Vec<VerifyingKey> {
    // A config key that is not a curve point cannot verify anything; it is left out.
    keys.iter()
        .filter_map(|k| VerifyingKey::from_bytes(&k.0).ok())
        .collect()
}

/// Build the next state from a validated config. Work is proportional to what changed: an
/// app whose entry and tenant did not change keeps its slot (and the version in it); a new
/// or changed app loads its module (`file:`) or the version it last served from the cache
/// (bundles; the sync loop fetches newer ones). Blocking: may compile.
pub fn build(config: Config, previous: &State, ctx: &NodeContext) -> State {
    let mut tenants = HashMap::new();
    for t in &config.tenants {
        let name = t.name.as_str().to_string();
        let keys = verifying_keys(&t.keys);
        let reused = previous
            .tenants
            .get(&name)
            .filter(|old| old.limits == t.limits)
            .map(|old| TenantRuntime {
                limits: old.limits.clone(),
                keys: keys.clone(),
                envelope: old.envelope.clone(),
                admission: old.admission.clone(),
            });
        let runtime = reused.unwrap_or_else(|| TenantRuntime {
            limits: t.limits.clone(),
            keys,
            envelope: Arc::new(ctx.sandbox.envelope(sandbox_limits(&t.limits))),
            admission: Arc::new(Semaphore::new(t.limits.concurrency as usize)),
        });
        tenants.insert(name, runtime);
    }
    let caps = ctx.caps(&config);

    // A backend whose entry did not change keeps its pool (and its open connections).
    let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
    for b in &config.backends {
        let name = b.name.as_str().to_string();
        let kept = previous
            .backends
            .get(&name)
            .filter(|old| old.spec == *b)
            .cloned();
        let backend = match kept {
            Some(old) => old,
            None => match ctx.origins.backend(b) {
                Ok(new) => new,
                Err(e) => {
                    tracing::error!(backend = %name, tenant = %b.tenant, error = %e, "backend not usable; its apps' requests to it fail with 502");
                    continue;
                }
            },
        };
        backends.insert(name, backend);
    }

    let mut slots = Vec::new();
    let mut by_name: HashMap<String, Arc<AppSlot>> = HashMap::new();
    for a in &config.apps {
        let name = a.name.as_str().to_string();
        let tenant = a.tenant.as_str().to_string();
        let Some(rt) = tenants.get(&tenant) else {
            continue;
        };
        let app_backends = AppBackends::new(
            a.backends
                .iter()
                .filter_map(|b| backends.get(b.as_str()).cloned())
                .collect(),
        );
        let old = previous.slots.iter().find(|s| s.name == name);
        let unchanged = old.filter(|s| {
            s.spec == *a
                && Arc::ptr_eq(&s.envelope, &rt.envelope)
                && s.keys == rt.keys
                && s.backends.same_as(&app_backends)
        });
        let slot = match unchanged {
            Some(s) => s.clone(),
            None => {
                static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let slot = Arc::new(AppSlot {
                    id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    name: name.clone(),
                    tenant: tenant.clone(),
                    spec: a.clone(),
                    keys: rt.keys.clone(),
                    envelope: rt.envelope.clone(),
                    admission: rt.admission.clone(),
                    backends: Arc::new(app_backends),
                    current: ArcSwapOption::empty(),
                    problem: Mutex::new(Problem::default()),
                });
                first_version(&slot, old.map(|s| s.as_ref()), ctx, caps);
                slot
            }
        };
        by_name.insert(name, slot.clone());
        slots.push(slot);
    }

    let mut router = Router::default();
    for r in &config.routes {
        let app = r.app.as_str();
        let routed = match by_name.get(app) {
            Some(slot) => Routed::App(slot.clone()),
            None => Routed::NotReady {
                app: app.to_string(),
            },
        };
        router.insert(&r.host, r.path.clone(), routed);
    }
    State {
        config: Arc::new(config),
        router,
        slots,
        tenants,
        backends,
    }
}

/// Give a new slot its first version: the module (`file:`), or the bundle version the app last
/// served from this source (cache). A version that fails never replaces one that serves: the
/// previous slot's version is carried over if it was the same tenant's.
fn first_version(slot: &AppSlot, old: Option<&AppSlot>, ctx: &NodeContext, caps: Caps) {
    let name = &slot.name;
    let loaded: Result<Option<(App, String)>, String> = match &slot.spec.source {
        Source::File(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|bytes| slot.load(&ctx.sandbox, &bytes, None))
            .map(|app| ctx.counted(app))
            .map(|app| {
                let digest = app.digest.clone();
                Some((app, digest))
            }),
        Source::Oci { .. } | Source::Local { .. } => match ctx.recorded(slot, caps) {
            None => Ok(None),
            Some(Err(e)) => Err(format!("the cached version does not verify: {e}")),
            Some(Ok(v)) => ctx.load_bundle(slot, &v).map(|app| Some((app, v.digest))),
        },
    };
    match loaded {
        Ok(Some((app, digest))) => {
            tracing::info!(app = %name, tenant = %slot.tenant, digest = %digest, source = app.source.label(), "app ready");
            let before = old.and_then(|o| o.digest());
            ctx.metrics
                .app_version(&slot.tenant, name, before.as_deref(), &digest);
            slot.swap(app, digest);
        }
        Ok(None) => {}
        Err(e) => {
            let kept = old
                .filter(|o| o.tenant == slot.tenant)
                .and_then(|o| o.current.load_full());
            match kept {
                Some(version) => {
                    tracing::error!(app = %name, error = %e, "new version refused; the last good version keeps serving");
                    slot.adopt(&version);
                }
                None => {
                    tracing::error!(app = %name, tenant = %slot.tenant, error = %e, "app not ready")
                }
            }
            slot.set_error(e, None);
            return;
        }
    }
    if slot.current.load().is_none() {
        // A bundle app not in the cache: serve the previous version until the sync loop has
        // pulled this one (a pinned rollback, a changed env).
        if let Some(version) = old
            .filter(|o| o.tenant == slot.tenant)
            .and_then(|o| o.current.load_full())
        {
            slot.adopt(&version);
        }
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
