//! The sandbox every request goes through: admission-checked modules compiled once (cached on
//! disk), a fresh instance per request under a tenant's envelope (memory, fuel, wall time,
//! response size), CGI in and out, on guest threads off the async threads, scheduled fairly
//! between tenants (`scheduler`).
//! It knows nothing of HTTP listeners, routes or tenants' names; callers hand it a request
//! and an envelope and get a response stream and an outcome back.

pub mod assets;
pub mod cache;
pub mod cgi;
pub mod check;
pub mod http_v1;
pub mod inline;
mod instantiate;
pub mod io;
pub mod memory;
pub mod metering;
pub mod scheduler;
mod signals;
mod stores;
pub mod wasi;
mod wasix;
mod watchdog;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use wasmer::sys::{CompilerConfig, Cranelift, NativeEngineExt, Singlepass};
use wasmer::{Engine, InstantiationError, Module, RuntimeError, Store};
use wasmer_types::{CompilationProgressCallback, TrapCode, UserAbort};

use crate::error::{Failure, Limit};
use crate::origin::Outbound;
use cache::ArtifactCache;
use cgi::{CgiRequest, EnvBlock};
use check::{check_module_with, CheckError, ImportModule};
pub use check::{HostChoice, HostKind};
use io::{GuestInput, GuestOutput, HostStop, Started, StderrBuf};
use memory::{BudgetScope, CappedTunables, InstanceBudget, MemoryPool};
use metering::FuelMetering;
use wasi::{Constructor, HostState};

/// Which wasmer compiler turns modules into machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompilerKind {
    /// Optimising; the default.
    Cranelift,
    /// About 10x faster to compile, about 2x slower to run.
    Singlepass,
}

impl CompilerKind {
    pub fn name(self) -> &'static str {
        match self {
            CompilerKind::Cranelift => "cranelift",
            CompilerKind::Singlepass => "singlepass",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Root of outpost's on-disk state; compiled artifacts live in `artifacts/` below it.
    pub data_dir: PathBuf,
    pub compiler: CompilerKind,
    /// Modules larger than this are refused before compiling.
    pub max_module_bytes: usize,
    /// A compile running longer than this is aborted.
    pub compile_timeout: Duration,
    /// CPU slots each tenant may use at once: guests of one tenant running Wasm (not waiting
    /// in a host call) at the same time. Defaults to the number of cores.
    pub workers: usize,
    /// Threads guests may occupy at once, running or waiting in host calls, over all tenants.
    pub max_threads: usize,
    /// Run short guests on the async thread that received the request (`inline`).
    pub inline: bool,
}

impl SandboxConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            compiler: CompilerKind::Cranelift,
            max_module_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(60),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_threads: 1024,
            inline: true,
        }
    }
}

/// A tenant's per-request limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Linear memory bytes.
    pub memory: u64,
    /// Wasm operators per request.
    pub fuel: u64,
    /// Wall-clock time per request, from the start of instantiation.
    pub timeout: Duration,
    pub request_body: u64,
    pub response_body: u64,
    /// stderr bytes kept for the tenant's log per request.
    pub stderr: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 128 << 20,
            fuel: 1_000_000_000,
            timeout: Duration::from_secs(10),
            request_body: 8 << 20,
            response_body: 64 << 20,
            stderr: 64 << 10,
        }
    }
}

/// One tenant's memory cap (the tunables each of its stores gets), its other limits, and its
/// CPU lane (its share of the node's cores and its queue).
pub struct Envelope {
    /// Tells envelopes apart (a kept store belongs to one: `stores`).
    id: u64,
    tunables: CappedTunables,
    pub limits: Limits,
    lane: Arc<scheduler::Lane>,
}

impl Envelope {
    /// Requests of this tenant waiting for a CPU slot now.
    pub fn queued(&self) -> usize {
        self.lane.waiting()
    }
}

/// Whether a load compiled the module or found it in the artifact cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    Compiled,
    Cache,
}

impl LoadSource {
    pub fn label(self) -> &'static str {
        match self {
            LoadSource::Compiled => "compiled",
            LoadSource::Cache => "cache",
        }
    }
}

/// A module ready to instantiate.
pub struct App {
    pub name: String,
    /// sha256 of the module bytes, hex.
    pub digest: String,
    pub source: LoadSource,
    pub load_time: Duration,
    /// Which host runs it.
    pub host: HostKind,
    /// The engine that loaded `module` (its code lives as long as the engine).
    engine: Engine,
    module: Module,
    /// Where the exports a run uses are (`instantiate::Entries`).
    entries: instantiate::Entries,
    link: Vec<Constructor>,
    /// argv (the app's name, then its arguments), for the lean host.
    args: Arc<EnvBlock>,
    /// The arguments after the name, for the wasix host.
    guest_args: Vec<String>,
    env: EnvBlock,
    /// A bundle's static files, shown to the guest read-only.
    assets: Option<Arc<assets::Assets>>,
    /// Whether its requests may run inline now.
    inline: inline::AppRecord,
    /// What instantiating it writes (`check::ModuleShape::init_bytes`).
    init_bytes: u64,
    /// Its stores between requests (the lean host's).
    stores: stores::Stores,
}

impl App {
    /// The engine a request's store uses: this app's (whose signature registry its module's
    /// code refers to), with the tenant's memory cap.
    fn store_engine(&self, envelope: &Envelope) -> Engine {
        let mut engine = self.engine.clone();
        engine.set_tunables(envelope.tunables.clone());
        engine
    }

    /// Show `assets` to the guest, read-only at their mount. The lean host serves them; a
    /// wasix module is refused (its filesystem is wasix's own).
    pub fn with_assets(mut self, assets: assets::Assets) -> Result<Self, LoadError> {
        if self.host == HostKind::Wasix {
            return Err(LoadError::Assets(
                "assets are served to WASI preview 1 guests (the lean host); this module imports wasix".into(),
            ));
        }
        self.assets = Some(Arc::new(assets));
        Ok(self)
    }

    /// The environment a request runs with: its CGI variables, then the app's own. Built where
    /// the request arrived, borrowing from it; the block is the one copy handed to a worker.
    pub fn request_env(&self, cgi: &CgiRequest<'_>) -> Arc<EnvBlock> {
        Arc::new(cgi::request_env(cgi, &self.env))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("compiling failed: {0}")]
    Compile(String),
    #[error("compiling took longer than the {0:?} compile time limit")]
    CompileTimeout(Duration),
    #[error("{0}")]
    Assets(String),
}

/// One request for a guest: its environment (`App::request_env`) and stdin.
pub struct Request {
    /// Shared, so that an inline attempt that moves hands the same block to its second run.
    pub env: Arc<EnvBlock>,
    pub input: GuestInput,
}

/// What happened in one request, for its log line and metrics.
#[derive(Debug)]
pub struct Outcome {
    pub failure: Option<Failure>,
    /// The status the client was sent.
    pub status: http::StatusCode,
    pub exit_code: Option<i32>,
    pub fuel_used: u64,
    pub memory_peak: u64,
    pub instantiate: Duration,
    pub total: Duration,
    /// Time spent waiting for a CPU slot before the guest started.
    pub queued: Duration,
    pub stderr: StderrBuf,
    /// Where the guest ran.
    pub path: RunPath,
}

/// Where a request's guest ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPath {
    /// On a pool thread.
    Pool,
    /// On the async thread that received the request (`inline`).
    Inline,
    /// On a pool thread, after an inline attempt that had to move.
    Moved,
    /// Nowhere: refused before it started (its queue wait expired, no thread).
    NotRun,
}

impl RunPath {
    pub fn label(self) -> &'static str {
        match self {
            RunPath::Pool => "pool",
            RunPath::Inline => "inline",
            RunPath::Moved => "moved",
            RunPath::NotRun => "not_run",
        }
    }
}

impl Outcome {
    /// A request that never ran.
    pub fn refused(failure: Failure, queued: Duration) -> Self {
        Self {
            status: failure.status(),
            failure: Some(failure),
            exit_code: None,
            fuel_used: 0,
            memory_peak: 0,
            instantiate: Duration::ZERO,
            total: Duration::ZERO,
            queued,
            stderr: StderrBuf::new(0),
            path: RunPath::NotRun,
        }
    }
}

pub struct Sandbox {
    memories: Arc<MemoryPool>,
    cache: ArtifactCache,
    compile_lock: Mutex<()>,
    pool: scheduler::Pool,
    watchdog: watchdog::Watchdog,
    wasix: wasix::WasixHost,
    config: SandboxConfig,
}

fn base_engine(compiler: CompilerKind) -> Engine {
    let metering = Arc::new(FuelMetering::default());
    match compiler {
        CompilerKind::Cranelift => {
            let mut config = Cranelift::default();
            config.push_middleware(metering);
            Engine::from(config)
        }
        CompilerKind::Singlepass => {
            let mut config = Singlepass::default();
            config.push_middleware(metering);
            Engine::from(config)
        }
    }
}

/// Everything that makes compiled code valid for this process: a change in any of them is a
/// different cache key, so stale artifacts are never deserialized.
fn engine_fingerprint(engine: &Engine, compiler: CompilerKind) -> String {
    let target = engine.target();
    let mut h = Sha256::new();
    for part in [
        "outpost-artifact-v1",
        env!("CARGO_PKG_VERSION"),
        "wasmer-7.4.2",
        compiler.name(),
        metering::FUEL_MODEL,
        "static-memory",
        &target.triple().to_string(),
        &format!("{:?}", target.cpu_features()),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

fn block_of(items: impl IntoIterator<Item = String>) -> EnvBlock {
    let mut block = EnvBlock::default();
    for item in items {
        if !item.contains('\0') {
            block.bytes.extend_from_slice(item.as_bytes());
            block.bytes.push(0);
            block.count += 1;
        }
    }
    block
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> std::io::Result<Arc<Self>> {
        let workers = config.workers.max(1);
        let pool = MemoryPool::new(workers * 2);
        let engine = base_engine(config.compiler);
        let fingerprint = engine_fingerprint(&engine, config.compiler);
        if !signals::install(&engine) {
            tracing::warn!(
                "the guard on wasmer's interrupt signal is not installed: a deadline may land in host code"
            );
        }
        let cache = ArtifactCache::open(&config.data_dir, fingerprint)?;
        Ok(Arc::new(Self {
            memories: pool,
            cache,
            compile_lock: Mutex::new(()),
            pool: scheduler::Pool::new(workers, config.max_threads),
            watchdog: watchdog::Watchdog::start()?,
            wasix: wasix::WasixHost::default(),
            config,
        }))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn fingerprint(&self) -> &str {
        self.cache.fingerprint()
    }

    /// Remove compiled artifacts no module in `keep` (sha256 hex digests) needs and that were
    /// not written or loaded within `grace`. Returns the files and bytes removed.
    pub fn collect_artifacts(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: Duration,
    ) -> (usize, u64) {
        self.cache.collect(keep, grace)
    }

    /// An envelope for these limits.
    pub fn envelope(&self, limits: Limits) -> Envelope {
        let tunables = CappedTunables::new(limits.memory, self.memories.clone());
        // A request that waited for a CPU slot as long as it may run is refused (503) rather
        // than started late.
        let lane = scheduler::Lane::new(self.config.workers, limits.timeout);
        static ENVELOPES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Envelope {
            id: ENVELOPES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            tunables,
            limits,
            lane,
        }
    }

    /// Check, then compile or load from the artifact cache, on the host the module needs.
    /// Runs on the caller's thread.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        args: Vec<String>,
        env: &[(String, String)],
    ) -> Result<App, LoadError> {
        self.load_with(name, bytes, args, env, HostChoice::Auto)
    }

    pub fn load_with(
        &self,
        name: &str,
        bytes: &[u8],
        args: Vec<String>,
        env: &[(String, String)],
        host: HostChoice,
    ) -> Result<App, LoadError> {
        self.load_outbound(name, bytes, args, env, host, false)
    }

    /// `load_with`, for an app that declares backends (`outbound`) or not: only the former
    /// may import `outpost_http_v1`.
    pub fn load_outbound(
        &self,
        name: &str,
        bytes: &[u8],
        args: Vec<String>,
        env: &[(String, String)],
        host: HostChoice,
        outbound: bool,
    ) -> Result<App, LoadError> {
        let started = Instant::now();
        let shape = check_module_with(bytes, self.config.max_module_bytes, host, outbound)?;
        let lean_imports = match shape.host {
            HostKind::Lean => shape.imports.as_slice(),
            HostKind::Wasix => &[],
        };
        let link = lean_imports
            .iter()
            .map(|(module, name)| {
                let ctor = match module {
                    ImportModule::Wasi => wasi::constructor(name),
                    ImportModule::HttpV1 => http_v1::constructor(name),
                };
                ctor.ok_or_else(|| {
                    LoadError::Check(CheckError::ForeignImport {
                        module: format!("{module:?}"),
                        name: name.clone(),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let digest = hex::encode(Sha256::digest(bytes));
        // Each app version gets an engine of its own: wasmer keeps every module's code for
        // the life of the engine that loaded it, so a shared engine would hold the code of
        // every version ever loaded. This one goes with the version's last request, and with
        // the stores threads keep of it (`stores`: at most eight per thread, dropped when the
        // thread next runs or keeps a store, or exits).
        let mut engine = base_engine(self.config.compiler);
        // The memory and table styles compiled into the code come from these tunables; each
        // request's store sets the tenant's cap on the same styles.
        engine.set_tunables(CappedTunables::new(4 << 30, self.memories.clone()));
        let (module, source) = match self.load_cached(&engine, &digest) {
            Some(module) => (module, LoadSource::Cache),
            None => (self.compile(&engine, bytes, &digest)?, LoadSource::Compiled),
        };
        if shape.host == HostKind::Wasix {
            wasix::check_types(&module)?;
        }
        let mut app_env = EnvBlock::default();
        for (k, v) in env {
            app_env.push(k, v.as_bytes());
        }
        let argv = std::iter::once(name.to_string()).chain(args.iter().cloned());
        Ok(App {
            name: name.to_string(),
            digest,
            source,
            load_time: started.elapsed(),
            host: shape.host,
            engine,
            entries: instantiate::Entries::of(&module),
            module,
            link,
            args: Arc::new(block_of(argv)),
            guest_args: args,
            env: app_env,
            assets: None,
            inline: inline::AppRecord::default(),
            init_bytes: shape.init_bytes,
            stores: stores::Stores::default(),
        })
    }

    fn load_cached(&self, engine: &Engine, digest: &str) -> Option<Module> {
        let artifact = self.cache.get(digest)?;
        // SAFETY: the bytes come from outpost's own artifact cache: written by `compile` below
        // for this exact module digest and engine fingerprint, and authenticated on read with
        // an HMAC under this node's private key, so they are an artifact this engine produced.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(digest, error = %e, "cached artifact did not load; recompiling");
                None
            }
        }
    }

    fn compile(&self, engine: &Engine, bytes: &[u8], digest: &str) -> Result<Module, LoadError> {
        // One compile at a time: it bounds the CPU the node spends compiling.
        let _one_at_a_time = self
            .compile_lock
            .lock()
            .map_err(|_| LoadError::Compile("compile lock poisoned".into()))?;
        let limit = self.config.compile_timeout;
        let started = Instant::now();
        let progress = CompilationProgressCallback::new(move |_| {
            if started.elapsed() > limit {
                Err(UserAbort::new("compile time limit"))
            } else {
                Ok(())
            }
        });
        let module = engine
            .new_module_with_progress(bytes, progress)
            .map_err(|e| {
                if started.elapsed() > limit {
                    LoadError::CompileTimeout(limit)
                } else {
                    LoadError::Compile(e.to_string())
                }
            })?;
        match module.serialize() {
            Ok(artifact) => {
                if let Err(e) = self.cache.put(digest, &artifact) {
                    tracing::warn!(digest, error = %e, "could not write compiled artifact");
                }
            }
            Err(e) => tracing::warn!(digest, error = %e, "could not serialize compiled module"),
        }
        Ok(module)
    }

    /// Run one request under a CPU slot of its tenant's lane: inline on this (async) thread
    /// when it qualifies (`inline`), else on a guest thread. The receiver yields the response
    /// start (or the failure that replaces it); `on_done` runs where the guest ran, once it is
    /// gone, with what happened (its log line and metrics).
    pub fn dispatch(
        self: &Arc<Self>,
        app: Arc<App>,
        envelope: Arc<Envelope>,
        request: Request,
        handle: Handle,
        on_done: impl FnOnce(Outcome) + Send + 'static,
    ) -> oneshot::Receiver<Result<Started, Failure>> {
        self.dispatch_outbound(app, envelope, request, None, handle, on_done)
    }

    /// `dispatch_outbound`, for a caller on an async thread that can wait: a request that
    /// qualifies for the inline path but finds its tenant's slots taken waits for one in the
    /// lane's FIFO, like a job, and then runs here, not on a guest thread. Without this, once
    /// guest threads hold the slots with queued jobs (after a run moved, say), every request
    /// that follows queues behind them and the inline path is not taken again while load lasts.
    #[allow(clippy::too_many_arguments)]
    pub async fn dispatch_turn(
        self: &Arc<Self>,
        app: Arc<App>,
        envelope: Arc<Envelope>,
        request: Request,
        outbound: Option<Outbound>,
        handle: Handle,
        on_done: impl FnOnce(Outcome) + Send + 'static,
    ) -> oneshot::Receiver<Result<Started, Failure>> {
        if outbound.is_some() || !self.inline_qualifies(&app, &request, &handle) {
            return self.submit(app, envelope, request, Held::No, outbound, handle, on_done);
        }
        // Dropped while it waits (the client went away), the request is counted as the
        // client's leaving, not as a failure of outpost's.
        let queued_at = Instant::now();
        let on_done = Unheard::new(on_done, queued_at);
        if !envelope.lane.try_take() {
            let turn = self.pool.turn(&envelope.lane);
            if tokio::time::timeout(envelope.lane.max_wait(), turn)
                .await
                .is_err()
            {
                let (mut output, start_rx) = GuestOutput::new(envelope.limits.response_body);
                output.fail(Failure::Limit(Limit::Queue));
                on_done.call(Outcome::refused(
                    Failure::Limit(Limit::Queue),
                    queued_at.elapsed(),
                ));
                return start_rx;
            }
        }
        let queued = queued_at.elapsed();
        let on_done = move |outcome| on_done.call(outcome);
        // The app may have left the inline path while this request waited (an earlier run
        // moved): then a guest thread runs it, under the slot it now holds.
        if !app.inline.allowed(Instant::now()) {
            return self.submit(app, envelope, request, Held::Yes, None, handle, on_done);
        }
        match self.run_inline(&app, &envelope, request, &handle) {
            Inline::Done(mut outcome, start_rx) => {
                outcome.queued = queued;
                on_done(outcome);
                start_rx
            }
            Inline::Moved(again, started) => {
                let held = Held::Since(started);
                self.submit(app, envelope, again, held, None, handle, on_done)
            }
            Inline::NotTried(again) => {
                self.submit(app, envelope, again, Held::Yes, None, handle, on_done)
            }
        }
    }

    /// `dispatch`, for an app that may send subrequests to its backends.
    pub fn dispatch_outbound(
        self: &Arc<Self>,
        app: Arc<App>,
        envelope: Arc<Envelope>,
        request: Request,
        outbound: Option<Outbound>,
        handle: Handle,
        on_done: impl FnOnce(Outcome) + Send + 'static,
    ) -> oneshot::Receiver<Result<Started, Failure>> {
        let mut request = request;
        if outbound.is_none() {
            match self.try_inline(&app, &envelope, request, &handle) {
                Inline::Done(outcome, start_rx) => {
                    on_done(outcome);
                    return start_rx;
                }
                Inline::Moved(again, started) => {
                    let held = Held::Since(started);
                    return self.submit(app, envelope, again, held, None, handle, on_done);
                }
                Inline::NotTried(again) => request = again,
            }
        }
        self.submit(app, envelope, request, Held::No, outbound, handle, on_done)
    }

    /// Run the request on a guest thread: queued in its tenant's lane, or at once under the
    /// slot it already holds (`held`).
    #[allow(clippy::too_many_arguments)]
    fn submit(
        self: &Arc<Self>,
        app: Arc<App>,
        envelope: Arc<Envelope>,
        request: Request,
        held: Held,
        outbound: Option<Outbound>,
        handle: Handle,
        on_done: impl FnOnce(Outcome) + Send + 'static,
    ) -> oneshot::Receiver<Result<Started, Failure>> {
        let from = match held {
            Held::Since(started) => Some(started),
            Held::No | Held::Yes => None,
        };
        let (mut output, start_rx) = GuestOutput::new(envelope.limits.response_body);
        let sandbox = self.clone();
        let lane = envelope.lane.clone();
        let job: scheduler::Job = Box::new(move |start| {
            let refused = match start {
                scheduler::Start::Run(queued) => {
                    let mut outcome = sandbox.run_caught(
                        &app,
                        &envelope,
                        request,
                        Timing::from(from),
                        outbound,
                        output,
                        handle,
                    );
                    outcome.queued = queued;
                    if from.is_some() {
                        outcome.path = RunPath::Moved;
                    }
                    return on_done(outcome);
                }
                scheduler::Start::Expired(queued) => (Failure::Limit(Limit::Queue), queued),
                scheduler::Start::NoThread => (
                    Failure::Internal("no thread was free to run the request".into()),
                    Duration::ZERO,
                ),
            };
            output.fail(refused.0.clone());
            on_done(Outcome::refused(refused.0, refused.1));
        });
        match held {
            Held::No => self.pool.submit(&lane, job),
            Held::Yes | Held::Since(_) => self.pool.submit_held(&lane, job),
        }
        start_rx
    }

    /// The inline path (`inline`): run the request here, on the async thread that received it,
    /// if it qualifies and a CPU slot of its tenant and an inline turn are free now.
    fn try_inline(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        handle: &Handle,
    ) -> Inline {
        if !self.inline_qualifies(app, &request, handle) || !envelope.lane.try_take() {
            return Inline::NotTried(request);
        }
        match self.run_inline(app, envelope, request, handle) {
            Inline::NotTried(request) => {
                self.pool.give_back(&envelope.lane);
                Inline::NotTried(request)
            }
            other => other,
        }
    }

    /// Whether the request may run on the async thread that received it (`try_inline`).
    fn inline_qualifies(&self, app: &App, request: &Request, handle: &Handle) -> bool {
        let Some(body) = request.input.whole() else {
            return false;
        };
        self.config.inline
            && app.host == HostKind::Lean
            && app.init_bytes <= inline::INIT_BYTES_MAX
            && body.len() <= inline::BODY_MAX
            && app.inline.allowed(Instant::now())
            && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    }

    /// Run a qualifying request here, under the lane slot the caller took: given back when the
    /// run ends; a request that moves, or was not tried, still holds it (`submit` with `held`).
    fn run_inline(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        handle: &Handle,
    ) -> Inline {
        let now = Instant::now();
        let Some(body) = request.input.whole() else {
            return Inline::NotTried(request);
        };
        // What a second run needs, should this one move: the body and the environment, both
        // shared, not copied.
        let env = request.env.clone();
        let (mut output, start_rx) = GuestOutput::new(envelope.limits.response_body);
        output.hold();
        let attempt = inline::Attempt::begin();
        // Caught: a panic must not unwind through the connection's task with the tenant's slot
        // taken and the request neither answered nor counted.
        let outcome = self.run_caught(
            app,
            envelope,
            request,
            Timing::inline(now),
            None,
            output,
            handle.clone(),
        );
        let moved = attempt.end() && !is_panicked(&outcome);
        if moved {
            // Still under the slot: the guest thread it moves to runs it at once.
            app.inline.moved(Instant::now());
            let again = Request {
                env,
                input: GuestInput::fixed(body),
            };
            return Inline::Moved(again, now);
        }
        self.pool.give_back(&envelope.lane);
        app.inline.ran(outcome.total, Instant::now());
        let mut outcome = outcome;
        outcome.path = RunPath::Inline;
        Inline::Done(outcome, start_rx)
    }

    /// Run one request on the calling thread (which must not be an async runtime thread). Its
    /// deadline starts now.
    pub fn run_here(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        output: GuestOutput,
        handle: Handle,
    ) -> Outcome {
        self.run_with(
            app,
            envelope,
            request,
            Timing::default(),
            None,
            output,
            handle,
        )
    }

    /// `run_with`, with a panic (a bug in outpost or wasmer) turned into the request's failure:
    /// the output, dropped on the way, tells the client; `on_done` still counts the request.
    #[allow(clippy::too_many_arguments)]
    fn run_caught(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        timing: Timing,
        outbound: Option<Outbound>,
        output: GuestOutput,
        handle: Handle,
    ) -> Outcome {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            self.run_with(app, envelope, request, timing, outbound, output, handle)
        }));
        ran.unwrap_or_else(|_| {
            tracing::error!(app = %app.name, "a request's run panicked; it fails with 500");
            // It ran (part of the way): counted where it ran, not as refused.
            let mut outcome = Outcome::refused(panicked(), Duration::ZERO);
            outcome.path = RunPath::Pool;
            outcome
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        timing: Timing,
        outbound: Option<Outbound>,
        output: GuestOutput,
        handle: Handle,
    ) -> Outcome {
        let started = timing.started.unwrap_or_else(Instant::now);
        let deadline = started + envelope.limits.timeout;
        let env = request.env;
        let run = Run {
            started,
            deadline,
            slice_end: timing.slice.map(|slice| (started + slice).min(deadline)),
            handle: &handle,
            envelope,
            outbound,
        };
        match app.host {
            HostKind::Lean => self.run_lean(app, run, env, request.input, output),
            HostKind::Wasix => self.run_wasix(app, run, env, request.input, output),
        }
    }

    fn run_lean(
        &self,
        app: &App,
        mut run: Run<'_>,
        env: Arc<EnvBlock>,
        input: GuestInput,
        output: GuestOutput,
    ) -> Outcome {
        let limits = &run.envelope.limits;
        let mut kept = app.stores.take(run.envelope.id).unwrap_or_else(|| {
            let vacant = HostState::vacant(app.args.clone(), run.handle.clone(), run.deadline);
            stores::Kept::new(
                &app.stores,
                run.envelope.id,
                app.store_engine(run.envelope),
                &app.link,
                vacant,
            )
        });
        // Armed before instantiation: everything the guest drives from here on is under the
        // request's deadline.
        let guard = self.watchdog.arm(
            run.slice_end.unwrap_or(run.deadline),
            kept.store.interrupter(),
        );
        let budget = InstanceBudget::new(limits.memory);
        let mut state = HostState::new(
            app.args.clone(),
            env,
            input,
            output,
            StderrBuf::new(limits.stderr),
            run.deadline,
            run.handle.clone(),
        );
        state.slice_end = run.slice_end;
        state.fs = app.assets.clone().map(wasi::GuestFs::new);
        state.outbound = run
            .outbound
            .take()
            .map(|o| http_v1::Subrequests::new(o, limits.request_body, limits.response_body));
        let stores::Kept {
            store,
            env: func_env,
            imports,
            ..
        } = &mut kept;
        *func_env.as_mut(store) = state;
        memory::take_grow_denied();
        // Only this thread touches a lean guest's memory (host functions run here too).
        let accounting = memory::FaultAccounting::begin();
        let charged = BudgetScope::enter(&budget);
        let instantiated = instantiate::instantiate(
            store,
            &run.envelope.tunables,
            &app.module,
            &app.entries,
            imports,
        );
        drop(charged);
        drop(accounting);
        let linked = match instantiated {
            Ok(linked) => linked,
            Err(e) => {
                // The store goes with this request: the watchdog may have fired for it.
                if guard.fired() {
                    run.sliced();
                }
                let failure = instantiation_failure(&e.to_string(), e);
                func_env.as_mut(store).output.fail(failure.clone());
                return run.failed_early(failure);
            }
        };
        func_env.as_mut(store).memory = linked.memory.clone();
        let ran = self.call_start(store, &linked, &run, guard);
        drop(linked);
        let state = func_env.as_mut(store);
        // Open subrequests end with the guest (their connections go back to the pool or close).
        state.outbound = None;
        let input = std::mem::replace(&mut state.input, GuestInput::fixed(bytes::Bytes::new()));
        state.output.hand_back(input);
        let failure = settle(&mut state.output, ran.failure.clone(), &run);
        let status = state.output.status();
        let stderr = std::mem::take(&mut state.stderr);
        // The request's instance, memory and host state go now, as with a store of its own.
        let vacant = HostState::vacant(app.args.clone(), run.handle.clone(), run.deadline);
        drop(kept.roll_back(vacant));
        // A store the watchdog interrupted is not kept: its signal could still be on its way.
        if !ran.interrupted {
            app.stores.give_back(kept);
        }
        run.outcome(failure, status, &ran, budget.used(), stderr)
    }

    fn run_wasix(
        &self,
        app: &App,
        run: Run<'_>,
        env: Arc<EnvBlock>,
        mut input: GuestInput,
        mut output: GuestOutput,
    ) -> Outcome {
        let limits = &run.envelope.limits;
        let body = match wasix::read_body(&mut input, run.handle, run.deadline) {
            Ok(body) => body,
            Err(failure) => {
                output.fail(failure.clone());
                return run.failed_early(failure);
            }
        };
        // The wasix guest reads stdin from its own pipe; a pass-through forwards the whole body.
        let unread = body.clone();
        let prepared = wasix::prepare(
            &self.wasix,
            &app.name,
            &app.guest_args,
            &env,
            body,
            wasix::Stdio::new(
                output,
                StderrBuf::new(limits.stderr),
                run.handle,
                run.deadline,
            ),
        );
        let mut store = Store::new(app.store_engine(run.envelope));
        let guard = self.watchdog.arm(run.deadline, store.interrupter());
        let budget = InstanceBudget::new(limits.memory);
        memory::take_grow_denied();
        let _sleeps_end_by = wasix::DeadlineScope::enter(run.deadline);
        let charged = BudgetScope::enter(&budget);
        let instantiated = prepared.builder.instantiate(app.module.clone(), &mut store);
        drop(charged);
        let (instance, wasi_env) = match instantiated {
            Ok(pair) => pair,
            Err(e) => {
                let failure = instantiation_failure(&e.to_string(), e);
                if let Ok(mut stdio) = prepared.stdio.lock() {
                    stdio.output.fail(failure.clone());
                }
                return run.failed_early(failure);
            }
        };
        // wasix's blocking calls (futex waits, polls) are host waits the interrupt cannot end:
        // at the deadline the process is also killed, which wakes them.
        let process = wasi_env.data(&store).process.clone();
        let kill: watchdog::OnFire = Arc::new(move || {
            process.signal_process(wasmer_wasix::wasmer_wasix_types::wasi::Signal::Sigkill)
        });
        let _killer = self
            .watchdog
            .arm_with(run.deadline, store.interrupter(), Some(kill));
        let linked = instantiate::Linked::of_instance(&mut store, &instance);
        let ran = self.call_start(&mut store, &linked, &run, guard);
        wasi_env.on_exit(&mut store, None);
        let memory_peak = budget.used();
        drop(store);
        let Ok(mut stdio) = prepared.stdio.lock() else {
            return run.failed_early(Failure::Internal("stdio lock poisoned".into()));
        };
        let stdio = &mut *stdio;
        stdio.output.hand_back(GuestInput::fixed(unread));
        let failure = stdio.failure.take().or(ran.failure.clone());
        let failure = settle(&mut stdio.output, failure, &run);
        let status = stdio.output.status();
        let stderr = std::mem::take(&mut stdio.stderr);
        run.outcome(failure, status, &ran, memory_peak, stderr)
    }

    /// Give the instance its fuel, run the module's start function (if any) and `_start` under
    /// the watchdog armed before instantiation, and say what happened.
    fn call_start(
        &self,
        store: &mut Store,
        linked: &instantiate::Linked,
        run: &Run<'_>,
        guard: watchdog::Guard,
    ) -> Ran {
        let fuel = run.envelope.limits.fuel;
        linked.fuel.set(store, fuel);
        // An inline attempt whose bulk operators cannot be limited (no such global) does not
        // start: one operator could run far past its slice.
        let unlimited = run.slice_end.is_some() && !linked.fuel.limit_bulk(store, inline::BULK_MAX);
        if unlimited {
            inline::must_move();
        }
        let instantiate = run.started.elapsed();
        // SAFETY: the flag is the guard's, the fuel cell the instance's: both outlive the call,
        // and `running` ends before either goes.
        let running = unsafe { signals::Running::begin(guard.fired_flag(), linked.fuel_cell) };
        let result = match &linked.metering_start {
            _ if unlimited => Err(RuntimeError::new("the inline attempt has no bulk limit")),
            Some(start) => start.call(store, &[]).map(|_| ()),
            None => Ok(()),
        }
        .and_then(|()| match &linked.start {
            Ok(start) => start.call(store, &[]).map(|_| ()),
            Err(why) => Err(RuntimeError::new(why.clone())),
        });
        let taken = running.taken();
        // A run that ended at or past its deadline failed by it, whether the watchdog got there
        // first or not: a wasix sleep capped at the deadline can return just before the
        // watchdog fires, and the guest then ends having written nothing.
        let timed_out = guard.fired() || Instant::now() >= run.deadline;
        // Asked again once disarmed: it may have fired since.
        let interrupted = guard.disarm();
        if timed_out {
            run.sliced();
        }
        let grow_denied = memory::take_grow_denied();
        let (fuel_left, fuel_exhausted) = linked.fuel.left(store);
        // Fuel the signal guard emptied ended the run by its deadline, not its budget.
        let fuel_left = if taken > 0 { taken } else { fuel_left };
        if linked.fuel.bulk_stopped(store) {
            // Only an inline attempt limits bulk operators: it moves, and runs again unlimited.
            inline::must_move();
        }
        let mut exit_code = None;
        let failure = match result {
            Ok(()) => None,
            Err(e) => match e.downcast_ref::<HostStop>() {
                Some(HostStop::Exit(code)) => {
                    exit_code = Some(*code);
                    None
                }
                Some(HostStop::Fail(f)) => Some(f.clone()),
                // Whatever a guest stopped by its deadline reports (wasix reports an exit).
                None if timed_out => Some(Failure::Limit(Limit::Time)),
                None => match wasix::exit_code(&e) {
                    Some(code) => {
                        exit_code = Some(code);
                        None
                    }
                    None => Some(trap_failure(e, fuel_exhausted, timed_out, grow_denied)),
                },
            },
        };
        // Stopped by its deadline, it failed by it, however it ended: a wasix guest whose
        // sleep the deadline's kill cut short returns normally, with nothing written.
        let failure = match failure {
            None if timed_out => Some(Failure::Limit(Limit::Time)),
            failure => failure,
        };
        Ran {
            failure,
            exit_code,
            fuel_used: fuel.saturating_sub(fuel_left),
            instantiate,
            interrupted,
        }
    }

    pub fn idle_memories(&self) -> usize {
        self.memories.idle()
    }

    /// Memory scrubs so far that scanned for resident pages (the others cleared the pages a
    /// scan had found, the guest having faulted in no new one).
    pub fn memory_scans(&self) -> u64 {
        self.memories.scans()
    }
}

/// A request's `on_done` that, dropped without being called (its request's future dropped
/// while it waited for a turn: the client went away), reports that as the outcome.
struct Unheard<F: FnOnce(Outcome)> {
    on_done: Option<F>,
    since: Instant,
}

impl<F: FnOnce(Outcome)> Unheard<F> {
    fn new(on_done: F, since: Instant) -> Self {
        Self {
            on_done: Some(on_done),
            since,
        }
    }

    fn call(mut self, outcome: Outcome) {
        if let Some(on_done) = self.on_done.take() {
            on_done(outcome);
        }
    }
}

impl<F: FnOnce(Outcome)> Drop for Unheard<F> {
    fn drop(&mut self) {
        if let Some(on_done) = self.on_done.take() {
            on_done(Outcome::refused(Failure::ClientGone, self.since.elapsed()));
        }
    }
}

/// Whether a request handed to a guest thread already holds a CPU slot of its lane.
#[derive(Clone, Copy)]
enum Held {
    No,
    Yes,
    /// Yes, since its inline attempt started then and moved (its deadline counts from then).
    Since(Instant),
}

/// What `try_inline` did with a request.
enum Inline {
    /// It ran here.
    Done(Outcome, oneshot::Receiver<Result<Started, Failure>>),
    /// It started here and must run again on a pool thread, with the deadline of the instant
    /// it started.
    Moved(Request, Instant),
    /// It did not qualify or nothing was free: the pool runs it.
    NotTried(Request),
}

/// When a run's deadline starts and whether it is an inline attempt with a slice.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    /// The deadline counts from here (default: the run's start).
    started: Option<Instant>,
    /// An inline attempt: it moves when this much time has passed.
    slice: Option<Duration>,
}

impl Timing {
    fn from(started: Option<Instant>) -> Self {
        Self {
            started,
            slice: None,
        }
    }

    fn inline(started: Instant) -> Self {
        Self {
            started: Some(started),
            slice: Some(inline::SLICE),
        }
    }
}

/// The parts of one request every host path shares.
struct Run<'a> {
    started: Instant,
    deadline: Instant,
    /// An inline attempt's end, before the deadline: the watchdog stops the guest there and
    /// the attempt moves to a pool thread.
    slice_end: Option<Instant>,
    handle: &'a Handle,
    envelope: &'a Envelope,
    outbound: Option<Outbound>,
}

/// What running `_start` did.
struct Ran {
    failure: Option<Failure>,
    exit_code: Option<i32>,
    fuel_used: u64,
    instantiate: Duration,
    /// The watchdog sent its interrupt (whether or not the guest was still running then).
    interrupted: bool,
}

impl Run<'_> {
    /// The watchdog fired: if at an inline attempt's slice (not the deadline), it moves.
    fn sliced(&self) {
        if self.slice_end.is_some_and(|end| end < self.deadline) {
            inline::must_move();
        }
    }

    fn failed_early(&self, failure: Failure) -> Outcome {
        Outcome {
            status: failure.status(),
            failure: Some(failure),
            exit_code: None,
            fuel_used: 0,
            memory_peak: 0,
            instantiate: self.started.elapsed(),
            total: self.started.elapsed(),
            queued: Duration::ZERO,
            stderr: StderrBuf::new(0),
            path: RunPath::Pool,
        }
    }

    fn outcome(
        &self,
        failure: Option<Failure>,
        status: Option<http::StatusCode>,
        ran: &Ran,
        memory_peak: u64,
        stderr: StderrBuf,
    ) -> Outcome {
        let fallback = failure
            .as_ref()
            .map_or(http::StatusCode::INTERNAL_SERVER_ERROR, Failure::status);
        Outcome {
            status: status.unwrap_or(fallback),
            failure,
            exit_code: ran.exit_code,
            fuel_used: ran.fuel_used,
            memory_peak,
            instantiate: ran.instantiate,
            total: self.started.elapsed(),
            queued: Duration::ZERO,
            stderr,
            path: RunPath::Pool,
        }
    }
}

const PANICKED: &str = "the request's run panicked";

/// The failure of a run that panicked.
fn panicked() -> Failure {
    Failure::Internal(PANICKED.into())
}

/// Whether the run panicked (without allocating, as every inline run asks).
fn is_panicked(outcome: &Outcome) -> bool {
    matches!(&outcome.failure, Some(Failure::Internal(why)) if why == PANICKED)
}

/// Complete the response, or replace it with the failure.
fn settle(output: &mut GuestOutput, failure: Option<Failure>, run: &Run<'_>) -> Option<Failure> {
    let failure = failure.or_else(|| output.finish(run.handle, run.deadline).err());
    if let Some(f) = &failure {
        output.fail(f.clone());
    }
    failure
}

fn instantiation_failure<E: Into<InstantiationErrorLike>>(text: &str, e: E) -> Failure {
    match e.into() {
        InstantiationErrorLike::Start(trap) => trap_failure(trap, false, false, false),
        InstantiationErrorLike::Other if text.contains("memory") => Failure::Limit(Limit::Memory),
        InstantiationErrorLike::Other => {
            Failure::Internal(format!("instantiating the app failed: {text}"))
        }
    }
}

/// What matters of an instantiation error from either host.
enum InstantiationErrorLike {
    Start(RuntimeError),
    Other,
}

impl From<InstantiationError> for InstantiationErrorLike {
    fn from(e: InstantiationError) -> Self {
        match e {
            InstantiationError::Start(trap) => Self::Start(trap),
            _ => Self::Other,
        }
    }
}

impl From<wasmer_wasix::WasiRuntimeError> for InstantiationErrorLike {
    fn from(_: wasmer_wasix::WasiRuntimeError) -> Self {
        Self::Other
    }
}

fn trap_failure(
    e: RuntimeError,
    fuel_exhausted: bool,
    timed_out: bool,
    grow_denied: bool,
) -> Failure {
    if fuel_exhausted {
        return Failure::Limit(Limit::Fuel);
    }
    let message = e.message();
    match e.to_trap() {
        Some(TrapCode::StackOverflow) => Failure::StackOverflow,
        Some(TrapCode::HostInterrupt) => Failure::Limit(Limit::Time),
        _ if timed_out => Failure::Limit(Limit::Time),
        _ if grow_denied => Failure::Limit(Limit::Memory),
        _ => Failure::Trap(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host call with a bug: it panics.
    fn panicking(store: &mut Store, env: &wasmer::FunctionEnv<HostState>) -> wasmer::Function {
        wasmer::Function::new_typed_with_env(
            store,
            env,
            |_: wasmer::FunctionEnvMut<HostState>| -> i32 { panic!("a bug in a host call") },
        )
    }

    /// A request that qualifies for the inline path but finds its tenant's slot taken waits
    /// its turn in the lane and then runs on its async thread, not on a guest thread; if its
    /// turn does not come within the lane's wait, it is refused (503) and the slot stays sound.
    #[test]
    fn a_request_that_finds_its_slot_taken_waits_its_turn_and_runs_inline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = SandboxConfig::new(dir.path().into());
        config.workers = 1;
        let sandbox = Sandbox::new(config).expect("sandbox");
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "\r\nok")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 4))
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
        let bytes = wasmer::wat2wasm(wat.as_bytes()).expect("wat");
        let app = Arc::new(sandbox.load("ok", &bytes, vec![], &[]).expect("load"));
        let envelope = Arc::new(sandbox.envelope(Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // With the tenant's one slot held, as a guest thread's run would hold it: a request
        // dispatched as the listeners dispatch it, once it waits for its turn; its outcome, and
        // its response's first bytes.
        type Response = Result<Result<bytes::Bytes, Failure>, oneshot::error::RecvError>;
        let waiting_request = || {
            assert!(envelope.lane.try_take());
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let (sb, app, env) = (sandbox.clone(), app.clone(), envelope.clone());
            let handle = rt.handle().clone();
            let task: tokio::task::JoinHandle<Response> = rt.spawn(async move {
                let request = Request {
                    env: Arc::new(EnvBlock::default()),
                    input: GuestInput::fixed(bytes::Bytes::new()),
                };
                let start = sb
                    .dispatch_turn(app, env, request, None, handle, move |outcome| {
                        let _ = done_tx.send(outcome);
                    })
                    .await;
                start.await.map(|started| started.map(|s| s.first))
            });
            let until = Instant::now() + Duration::from_secs(5);
            while envelope.lane.waiting() == 0 {
                assert!(
                    Instant::now() < until,
                    "the request never waited for a turn"
                );
                std::thread::yield_now();
            }
            (task, done_rx)
        };
        for held in [Duration::from_millis(50), Duration::from_millis(600)] {
            let (response, done_rx) = waiting_request();
            std::thread::sleep(held);
            sandbox.pool.give_back(&envelope.lane);
            let outcome = done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("an outcome");
            let first = rt.block_on(response).expect("task").expect("start");
            if held < envelope.lane.max_wait() {
                assert_eq!(outcome.failure, None, "held {held:?}");
                assert_eq!(outcome.path, RunPath::Inline, "held {held:?}");
                assert!(outcome.queued >= held, "queued {:?}", outcome.queued);
                assert_eq!(first.expect("response").as_ref(), b"ok");
            } else {
                assert_eq!(outcome.failure, Some(Failure::Limit(Limit::Queue)));
                assert_eq!(outcome.path, RunPath::NotRun);
                assert!(first.is_err(), "refused, not answered");
            }
            assert!(
                envelope.lane.try_take(),
                "held {held:?}: the slot is free again"
            );
            sandbox.pool.give_back(&envelope.lane);
            assert_eq!(envelope.lane.waiting(), 0);
        }
        // A request whose client leaves while it waits is counted as that, not as outpost's
        // failure, and leaves the queue. Then the app leaves the inline path while a request
        // waits (an earlier run moved): a guest thread runs it when its turn comes.
        for client_leaves in [true, false] {
            let (task, done_rx) = waiting_request();
            if client_leaves {
                task.abort();
                let outcome = done_rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("an outcome");
                assert_eq!(outcome.failure, Some(Failure::ClientGone));
                assert_eq!(outcome.path, RunPath::NotRun);
                assert_eq!(envelope.lane.waiting(), 0, "it left the queue");
                sandbox.pool.give_back(&envelope.lane);
            } else {
                app.inline.moved(Instant::now());
                sandbox.pool.give_back(&envelope.lane);
                let outcome = done_rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("an outcome");
                assert_eq!(outcome.failure, None);
                assert_eq!(
                    outcome.path,
                    RunPath::Pool,
                    "backed off: a guest thread ran it"
                );
                let first = rt.block_on(task).expect("task").expect("start");
                assert_eq!(first.expect("response").as_ref(), b"ok");
            }
            let until = Instant::now() + Duration::from_secs(5);
            while !envelope.lane.try_take() {
                assert!(Instant::now() < until, "the slot never came back");
                std::thread::yield_now();
            }
            sandbox.pool.give_back(&envelope.lane);
        }
    }

    #[test]
    fn a_run_that_panics_is_answered_counted_once_and_gives_its_slot_back() {
        for inline in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = SandboxConfig::new(dir.path().into());
            config.workers = 1;
            config.inline = inline;
            let sandbox = Sandbox::new(config).expect("sandbox");
            let wat = r#"(module
                (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
                (memory (export "memory") 1)
                (func (export "_start") (drop (call $yield))))"#;
            let bytes = wasmer::wat2wasm(wat.as_bytes()).expect("wat");
            let mut app = sandbox.load("bug", &bytes, vec![], &[]).expect("load");
            app.link[0] = panicking;
            let app = Arc::new(app);
            let envelope = Arc::new(sandbox.envelope(Limits::default()));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            // More requests than the tenant's one CPU slot: a slot kept by a panic would
            // leave the next request waiting until it is refused.
            for round in 0..3 {
                let (done_tx, done_rx) = std::sync::mpsc::channel();
                let request = Request {
                    env: Arc::new(EnvBlock::default()),
                    input: GuestInput::fixed(bytes::Bytes::new()),
                };
                let start = sandbox.dispatch(
                    app.clone(),
                    envelope.clone(),
                    request,
                    rt.handle().clone(),
                    move |outcome| {
                        let _ = done_tx.send(outcome);
                    },
                );
                let outcome = done_rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("inline {inline}, round {round}: no outcome: {e}"));
                assert_eq!(outcome.status, 500, "inline {inline}, round {round}");
                assert_eq!(outcome.failure, Some(panicked()));
                let started = rt.block_on(start);
                assert!(
                    !matches!(started, Ok(Ok(_))),
                    "inline {inline}: the client must not see a response"
                );
            }
            // A pool thread gives its slot back just after `on_done`: wait for it, bounded.
            let until = Instant::now() + Duration::from_secs(5);
            while !envelope.lane.try_take() {
                assert!(
                    Instant::now() < until,
                    "inline {inline}: the slot never came back"
                );
                std::thread::yield_now();
            }
        }
    }

    /// Parameters (24 numeric types) of a function type whose signature hash is `target`.
    /// wasmer's hash is a crc32 of the types, which is affine over GF(2) in their bits: it is
    /// solved from one probe per bit, with the hash itself as the black box.
    fn params_hashing_to(target: u32) -> Vec<wasmer::Type> {
        use wasmer::Type::{F32, F64, I32, I64};
        const N: usize = 24;
        let types = [I32, I64, F32, F64];
        let hash = |bits: &[usize; N]| {
            let params: Vec<_> = bits.iter().map(|b| types[*b]).collect();
            wasmer::FunctionType::new(params, vec![]).signature_hash()
        };
        let base = hash(&[0; N]);
        // A basis of the bits' effects, by distinct leading bit, highest first; each with the
        // set of bits (as a mask) that makes it.
        let mut basis: Vec<(u32, u64)> = Vec::new();
        for k in 0..2 * N {
            let mut bits = [0; N];
            bits[k / 2] = 1 << (k % 2);
            let (mut value, mut mask) = (hash(&bits) ^ base, 1u64 << k);
            for (v, m) in &basis {
                if value ^ v < value {
                    value ^= v;
                    mask ^= m;
                }
            }
            if value != 0 {
                basis.push((value, mask));
                basis.sort_by_key(|b| std::cmp::Reverse(b.0));
            }
        }
        let (mut want, mut mask) = (target ^ base, 0u64);
        for (v, m) in &basis {
            if want ^ v < want {
                want ^= v;
                mask ^= m;
            }
        }
        assert_eq!(want, 0, "the bits span every hash");
        let mut bits = [0; N];
        for (k, bit) in (0..2 * N).map(|k| (k, (mask >> k) & 1)) {
            bits[k / 2] |= (bit as usize) << (k % 2);
        }
        let params: Vec<_> = bits.iter().map(|b| types[*b]).collect();
        assert_eq!(
            wasmer::FunctionType::new(params.clone(), vec![]).signature_hash(),
            target
        );
        params
    }

    /// wasmer tells function types apart by a 32-bit hash, and panics when a second type with
    /// a known hash is registered in an engine. The wasix host makes all its functions for each
    /// request's instance, so a module type built to collide with one of theirs would panic
    /// every request; it is refused when the app loads. The lean host makes only the module's
    /// imports, whose types the check compares with the host's, so there the module loads.
    #[test]
    fn a_module_type_that_collides_with_a_wasix_host_function_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox::new(SandboxConfig::new(dir.path().into())).expect("sandbox");
        // fd_write's type on every WASI version wasix provides.
        let fd_write =
            wasmer::FunctionType::new(vec![wasmer::Type::I32; 4], vec![wasmer::Type::I32]);
        let params = params_hashing_to(fd_write.signature_hash());
        let list = params
            .iter()
            .map(|t| t.to_string().to_lowercase())
            .collect::<Vec<_>>()
            .join(" ");
        let wat = format!(
            r#"(module
            (type (func (param {list})))
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (func (export "_start")))"#
        );
        let bytes = wasmer::wat2wasm(wat.as_bytes()).expect("wat");
        match sandbox.load_with("collides", &bytes, vec![], &[], HostChoice::Wasix) {
            Err(LoadError::Check(CheckError::SignatureCollision { host, hash, .. })) => {
                assert_eq!(host, "(i32, i32, i32, i32) -> (i32)");
                assert_eq!(hash, fd_write.signature_hash());
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a module whose type collides with fd_write's loaded on wasix"),
        }
        sandbox
            .load_with("collides", &bytes, vec![], &[], HostChoice::Lean)
            .expect("the lean host makes only the imports, of the module's own types");
        let plain = wasmer::wat2wasm(
            br#"(module
            (type (func (param i64 i64)))
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (func (export "_start")))"#,
        )
        .expect("wat");
        sandbox
            .load_with("plain", &plain, vec![], &[], HostChoice::Wasix)
            .expect("a module without such a type loads on wasix");
    }

    /// A lean app's store is kept between its requests on a thread, and each request still
    /// gets a fresh instance: its globals and memory as the module declares them, its memory
    /// back in the pool when it ends. A store whose run the watchdog interrupted or whose host
    /// call panicked is not kept, and one kept for another envelope is not used (its tunables
    /// carry that envelope's cap).
    #[test]
    fn a_kept_store_gives_every_request_a_fresh_instance_and_is_dropped_when_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox::new(SandboxConfig::new(dir.path().into())).expect("sandbox");
        // Prints its counter global, then "clean" or "dirty" for the byte at 100, then sets
        // both; a body "spin" makes it loop until stopped. Two pages of memory.
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            (global $count (mut i32) (i32.const 48))
            (data (i32.const 16) "\r\n?clean")
            (func (export "_start")
              (i32.store (i32.const 32) (i32.const 48))
              (i32.store (i32.const 36) (i32.const 4))
              (drop (call $r (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
              (if (i32.eq (i32.load8_u (i32.const 48)) (i32.const 115)) (then (loop (br 0))))
              (i32.store8 (i32.const 18) (global.get $count))
              (if (i32.load8_u (i32.const 100))
                (then (i32.store (i32.const 19) (i32.const 0x74726964))))
              (i32.store8 (i32.const 100) (i32.const 1))
              (global.set $count (i32.add (global.get $count) (i32.const 1)))
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 8))
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
        let bytes = wasmer::wat2wasm(wat.as_bytes()).expect("wat");
        let app = sandbox.load("kept", &bytes, vec![], &[]).expect("load");
        let limits = Limits {
            timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let envelope = sandbox.envelope(limits.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let run = |envelope: &Envelope, body: &'static [u8]| {
            let (output, start) = GuestOutput::new(1 << 20);
            let request = Request {
                env: Arc::new(EnvBlock::default()),
                input: GuestInput::fixed(bytes::Bytes::from_static(body)),
            };
            let outcome = sandbox.run_here(&app, envelope, request, output, rt.handle().clone());
            let first = rt.block_on(start).expect("start").map(|s| s.first);
            (outcome.failure, first.ok())
        };
        let ok = Some(bytes::Bytes::from_static(b"0clean"));
        assert_eq!(run(&envelope, b"go"), (None, ok.clone()));
        assert_eq!(app.stores.idle_here(), 1, "kept after its run");
        let idle_memories = sandbox.idle_memories();
        assert!(idle_memories > 0, "its memory went back to the pool");
        for round in 0..5 {
            assert_eq!(run(&envelope, b"go"), (None, ok.clone()), "round {round}");
            assert_eq!(
                app.stores.idle_here(),
                1,
                "round {round}: the same store again"
            );
            assert_eq!(
                sandbox.idle_memories(),
                idle_memories,
                "round {round}: memory back"
            );
        }
        // Stopped by its deadline: failed by the time limit, and its store is not kept.
        let (failure, _) = run(&envelope, b"spin");
        assert_eq!(failure, Some(Failure::Limit(Limit::Time)));
        assert_eq!(app.stores.idle_here(), 0, "an interrupted store is dropped");
        assert_eq!(run(&envelope, b"go"), (None, ok.clone()));
        // Another envelope, whose cap is one page: the kept store is not used for it.
        let small = sandbox.envelope(Limits {
            memory: 64 << 10,
            ..limits
        });
        let (failure, _) = run(&small, b"go");
        assert_eq!(failure, Some(Failure::Limit(Limit::Memory)));
        assert_eq!(
            app.stores.idle_here(),
            0,
            "the store of another envelope is dropped"
        );
        assert_eq!(run(&envelope, b"go"), (None, ok));
        assert_eq!(app.stores.idle_here(), 1);
        // A run whose host call panicked: its store is not kept either.
        let mut bug = sandbox.load("bug", &bytes, vec![], &[]).expect("load");
        bug.link[0] = |store, env| {
            wasmer::Function::new_typed_with_env(
                store,
                env,
                |_: wasmer::FunctionEnvMut<HostState>, _: i32, _: i32, _: i32, _: i32| -> i32 {
                    panic!("a bug in fd_write")
                },
            )
        };
        let (output, _start) = GuestOutput::new(1 << 20);
        let request = Request {
            env: Arc::new(EnvBlock::default()),
            input: GuestInput::fixed(bytes::Bytes::from_static(b"go")),
        };
        let outcome = sandbox.run_caught(
            &bug,
            &envelope,
            request,
            Timing::default(),
            None,
            output,
            rt.handle().clone(),
        );
        assert_eq!(outcome.failure, Some(panicked()));
        assert_eq!(
            bug.stores.idle_here(),
            0,
            "a panicked run's store is dropped"
        );
    }
}
