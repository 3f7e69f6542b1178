//! The sandbox every request goes through: admission-checked modules compiled once (cached on
//! disk), a fresh instance per request under a tenant's envelope (memory, fuel, wall time,
//! response size), CGI in and out, on a worker pool off the async threads.
//! It knows nothing of HTTP listeners, routes or tenants' names; callers hand it a request
//! and an envelope and get a response stream and an outcome back.

pub mod cache;
pub mod cgi;
pub mod check;
pub mod io;
pub mod memory;
pub mod metering;
pub mod wasi;
mod watchdog;
mod workers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use wasmer::sys::{CompilerConfig, Cranelift, NativeEngineExt, Singlepass};
use wasmer::{
    Engine, Extern, FunctionEnv, Instance, InstantiationError, Module, RuntimeError, Store,
};
use wasmer_types::{CompilationProgressCallback, TrapCode, UserAbort};

use crate::error::{Failure, Limit};
use cache::ArtifactCache;
use cgi::{CgiRequest, EnvBlock};
use check::{check_module, CheckError};
use io::{GuestInput, GuestOutput, HostStop, Started, StderrBuf};
use memory::{CappedTunables, MemoryPool};
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
    /// Threads that run guests.
    pub workers: usize,
}

impl SandboxConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            compiler: CompilerKind::Cranelift,
            max_module_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(60),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
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

/// An engine handle carrying one tenant's memory cap, plus the tenant's other limits.
pub struct Envelope {
    engine: Engine,
    pub limits: Limits,
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
    module: Module,
    link: Vec<Constructor>,
    args: Arc<EnvBlock>,
    env: EnvBlock,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Check(#[from] CheckError),
    #[error("compiling failed: {0}")]
    Compile(String),
    #[error("compiling took longer than the {0:?} compile time limit")]
    CompileTimeout(Duration),
}

/// One request for a guest.
pub struct Request {
    pub cgi: CgiRequest,
    pub input: GuestInput,
}

/// What happened in one request, for its log line and metrics.
#[derive(Debug)]
pub struct Outcome {
    pub failure: Option<Failure>,
    pub exit_code: Option<i32>,
    pub fuel_used: u64,
    pub memory_peak: u64,
    pub instantiate: Duration,
    pub total: Duration,
    pub stderr: StderrBuf,
}

pub struct Sandbox {
    engine: Engine,
    pool: Arc<MemoryPool>,
    cache: ArtifactCache,
    compile_lock: Mutex<()>,
    workers: workers::Workers,
    watchdog: watchdog::Watchdog,
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
        let workers = workers::Workers::start(config.workers)?;
        let pool = MemoryPool::new(workers.size() * 2);
        let mut engine = base_engine(config.compiler);
        engine.set_tunables(CappedTunables::new(4 << 30, pool.clone()));
        let fingerprint = engine_fingerprint(&engine, config.compiler);
        let cache = ArtifactCache::open(&config.data_dir, fingerprint)?;
        Ok(Arc::new(Self {
            engine,
            pool,
            cache,
            compile_lock: Mutex::new(()),
            workers,
            watchdog: watchdog::Watchdog::start()?,
            config,
        }))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn fingerprint(&self) -> &str {
        self.cache.fingerprint()
    }

    /// An envelope for these limits: an engine handle whose memories are capped.
    pub fn envelope(&self, limits: Limits) -> Envelope {
        let mut engine = self.engine.clone();
        engine.set_tunables(CappedTunables::new(limits.memory, self.pool.clone()));
        Envelope { engine, limits }
    }

    /// Check, then compile or load from the artifact cache. Runs on the caller's thread.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        args: Vec<String>,
        env: &[(String, String)],
    ) -> Result<App, LoadError> {
        let started = Instant::now();
        let shape = check_module(bytes, self.config.max_module_bytes)?;
        let link = shape
            .imports
            .iter()
            .map(|name| {
                wasi::constructor(name).ok_or_else(|| {
                    LoadError::Check(CheckError::ForeignImport {
                        module: "wasi_snapshot_preview1".into(),
                        name: name.clone(),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let digest = hex::encode(Sha256::digest(bytes));
        let (module, source) = match self.load_cached(&digest) {
            Some(module) => (module, LoadSource::Cache),
            None => (self.compile(bytes, &digest)?, LoadSource::Compiled),
        };
        let mut app_env = EnvBlock::default();
        for (k, v) in env {
            app_env.push(k, v.as_bytes());
        }
        let argv = std::iter::once(name.to_string()).chain(args);
        Ok(App {
            name: name.to_string(),
            digest,
            source,
            load_time: started.elapsed(),
            module,
            link,
            args: Arc::new(block_of(argv)),
            env: app_env,
        })
    }

    fn load_cached(&self, digest: &str) -> Option<Module> {
        let artifact = self.cache.get(digest)?;
        // SAFETY: the bytes come from outpost's own artifact cache: written by `compile` below
        // for this exact module digest and engine fingerprint, and checksummed on read, so
        // they are an artifact this engine produced.
        match unsafe { Module::deserialize(&self.engine, artifact) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(digest, error = %e, "cached artifact did not load; recompiling");
                None
            }
        }
    }

    fn compile(&self, bytes: &[u8], digest: &str) -> Result<Module, LoadError> {
        // One compile at a time: the fuel middleware is shared and it bounds CPU spent on it.
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
        let module = self
            .engine
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

    /// Run one request on a worker. The first receiver yields the response start (or the
    /// failure that replaces it); the second the outcome once the guest is gone.
    pub fn dispatch(
        self: &Arc<Self>,
        app: Arc<App>,
        envelope: Arc<Envelope>,
        request: Request,
        handle: Handle,
    ) -> (
        oneshot::Receiver<Result<Started, Failure>>,
        oneshot::Receiver<Outcome>,
    ) {
        let (output, start_rx) = GuestOutput::new(envelope.limits.response_body);
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let sandbox = self.clone();
        let queued = Instant::now();
        let submitted = self.workers.submit(move || {
            let outcome = sandbox.run_here(&app, &envelope, request, output, handle, queued);
            let _ = outcome_tx.send(outcome);
        });
        if !submitted {
            tracing::error!("worker pool is shut down");
        }
        (start_rx, outcome_rx)
    }

    /// Run one request on the calling thread (which must not be an async runtime thread).
    pub fn run_here(
        &self,
        app: &App,
        envelope: &Envelope,
        request: Request,
        output: GuestOutput,
        handle: Handle,
        queued: Instant,
    ) -> Outcome {
        let limits = &envelope.limits;
        let started = Instant::now();
        let deadline = queued + limits.timeout;
        let env = cgi::request_env(&request.cgi, &app.env);
        let mut store = Store::new(envelope.engine.clone());
        let state = HostState::new(
            app.args.clone(),
            env,
            request.input,
            output,
            StderrBuf::new(limits.stderr),
            deadline,
            handle.clone(),
        );
        let func_env = FunctionEnv::new(&mut store, state);
        let externs: Vec<Extern> = app
            .link
            .iter()
            .map(|ctor| Extern::Function(ctor(&mut store, &func_env)))
            .collect();
        memory::take_grow_denied();
        let instance = match Instance::new_by_index(&mut store, &app.module, &externs) {
            Ok(instance) => instance,
            Err(e) => {
                let failure = instantiation_failure(e);
                func_env.as_mut(&mut store).output.fail(failure.clone());
                return Outcome {
                    failure: Some(failure),
                    exit_code: None,
                    fuel_used: 0,
                    memory_peak: 0,
                    instantiate: started.elapsed(),
                    total: started.elapsed(),
                    stderr: StderrBuf::new(0),
                };
            }
        };
        let memory = instance.exports.get_memory("memory").ok().cloned();
        {
            let state = func_env.as_mut(&mut store);
            state.memory = memory.clone();
        }
        metering::set_fuel(&mut store, &instance, limits.fuel);
        let instantiate = started.elapsed();

        let guard = self.watchdog.arm(deadline, store.interrupter());
        let result = match instance.exports.get_function("_start") {
            Ok(start) => start.call(&mut store, &[]).map(|_| ()),
            Err(e) => Err(RuntimeError::new(e.to_string())),
        };
        let timed_out = guard.fired();
        drop(guard);
        let grow_denied = memory::take_grow_denied();
        let (fuel_left, fuel_exhausted) = metering::fuel_left(&mut store, &instance);

        let mut exit_code = None;
        let failure = match result {
            Ok(()) => None,
            Err(e) => match e.downcast_ref::<HostStop>() {
                Some(HostStop::Exit(code)) => {
                    exit_code = Some(*code);
                    None
                }
                Some(HostStop::Fail(f)) => Some(f.clone()),
                None => Some(trap_failure(e, fuel_exhausted, timed_out, grow_denied)),
            },
        };
        let memory_peak = memory.as_ref().map_or(0, |m| m.view(&store).data_size());
        let state = func_env.as_mut(&mut store);
        let failure = failure.or_else(|| state.output.finish(&handle, deadline).err());
        if let Some(f) = &failure {
            state.output.fail(f.clone());
        }
        let stderr = std::mem::take(&mut state.stderr);
        let fuel_used = limits.fuel.saturating_sub(fuel_left);
        drop(store);
        Outcome {
            failure,
            exit_code,
            fuel_used,
            memory_peak,
            instantiate,
            total: started.elapsed(),
            stderr,
        }
    }

    pub fn idle_memories(&self) -> usize {
        self.pool.idle()
    }
}

fn instantiation_failure(e: InstantiationError) -> Failure {
    match e {
        InstantiationError::Link(link) => {
            let text = link.to_string();
            if text.contains("memory") {
                Failure::Limit(Limit::Memory)
            } else {
                Failure::Internal(format!("linking the app failed: {text}"))
            }
        }
        InstantiationError::Start(trap) => trap_failure(trap, false, false, false),
        other => Failure::Internal(format!("instantiating the app failed: {other}")),
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
