//! The wasmer-wasix host path, for modules that need more than WASI preview 1 (WASIX calls,
//! threads, a virtual filesystem). Same CGI ABI and limits as the lean host: stdio is wired to
//! the request and the response, networking is the unsupported implementation, and the
//! filesystem is wasix's in-memory one; nothing of the host's is mounted.
//! Slower per request (wasix rebuilds its imports per instance); the lean host stays the default.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use wasmer_wasix::runtime::task_manager::tokio::TokioTaskManager;
use wasmer_wasix::runtime::task_manager::{TaskWasm, VirtualTaskManager};
use wasmer_wasix::virtual_fs::{self, VirtualFile};
use wasmer_wasix::WasiThreadError;
use wasmer_wasix::{generate_import_object_from_env, WasiVersion};
use wasmer_wasix::{PluggableRuntime, UnsupportedVirtualNetworking, WasiEnv, WasiError};

use super::cgi::EnvBlock;
use super::check::CheckError;
use super::io::{GuestInput, GuestOutput, HostStop, StderrBuf};
use crate::error::Failure;

thread_local! {
    /// The deadline of the wasix request running on this thread: wasix's sleeps end by it.
    static DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// While alive, wasix sleeps on this thread end at `deadline` at the latest (the watchdog then
/// stops the guest when it is back in Wasm).
pub struct DeadlineScope(());

impl DeadlineScope {
    pub fn enter(deadline: Instant) -> Self {
        DEADLINE.with(|d| d.set(Some(deadline)));
        Self(())
    }
}

impl Drop for DeadlineScope {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(None));
    }
}

/// wasix's task manager with outpost's envelope: a sleep never outlasts the request's
/// deadline, and nothing runs Wasm on another thread (threads, which would escape the
/// deadline, the fuel and the memory budget, are refused; the module check refuses their
/// imports and shared memories first).
#[derive(Debug)]
struct EnvelopedTasks {
    inner: TokioTaskManager,
}

impl VirtualTaskManager for EnvelopedTasks {
    fn build_memory(
        &self,
        _store: &mut wasmer::StoreMut,
        spawn_type: wasmer_wasix::runtime::SpawnType,
    ) -> Result<Option<wasmer::Memory>, WasiThreadError> {
        match spawn_type {
            wasmer_wasix::runtime::SpawnType::CreateMemory => Ok(None),
            _ => Err(WasiThreadError::Unsupported),
        }
    }

    fn sleep_now(
        &self,
        time: std::time::Duration,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync + 'static>> {
        let Some(deadline) = DEADLINE.with(|d| d.get()) else {
            return self.inner.sleep_now(time);
        };
        let sleep = self
            .inner
            .sleep_now(time.min(deadline.saturating_duration_since(Instant::now())));
        // A sleeping guest (its own sleep, or a poll or futex timeout) holds no CPU slot, as
        // on the lean host: given back now, taken back when the sleep ends or is dropped.
        let paused = super::scheduler::Paused::begin(deadline);
        Box::pin(async move {
            let _paused = paused;
            sleep.await;
        })
    }

    fn task_shared(
        &self,
        task: Box<
            dyn FnOnce() -> Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>
                + Send
                + 'static,
        >,
    ) -> Result<(), WasiThreadError> {
        self.inner.task_shared(task)
    }

    fn task_wasm(&self, _task: TaskWasm) -> Result<(), WasiThreadError> {
        Err(WasiThreadError::Unsupported)
    }

    fn task_dedicated(
        &self,
        task: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), WasiThreadError> {
        self.inner.task_dedicated(task)
    }

    fn thread_parallelism(&self) -> Result<usize, WasiThreadError> {
        Ok(1)
    }

    fn spawn_with_module(
        &self,
        _module: wasmer::Module,
        _task: Box<dyn FnOnce(wasmer::Module) + Send + 'static>,
    ) -> Result<(), WasiThreadError> {
        Err(WasiThreadError::Unsupported)
    }
}

/// One wasix runtime (task manager, no networking) shared by every wasix request.
#[derive(Default)]
pub struct WasixHost {
    runtime: OnceLock<Arc<PluggableRuntime>>,
}

impl WasixHost {
    fn runtime(&self, handle: &Handle) -> Arc<PluggableRuntime> {
        self.runtime
            .get_or_init(|| {
                let tasks = EnvelopedTasks {
                    inner: TokioTaskManager::new(handle.clone()),
                };
                let mut runtime = PluggableRuntime::new(Arc::new(tasks));
                runtime.set_networking_implementation(UnsupportedVirtualNetworking::default());
                // An engine that cannot compile: wasix compiles what a guest spawns, execs or
                // loads in its runtime's engine, which every tenant would share, outside any
                // envelope. The module check refuses those imports; this is the second wall.
                runtime.set_engine(<wasmer::Engine as wasmer::sys::NativeEngineExt>::headless());
                Arc::new(runtime)
            })
            .clone()
    }
}

/// The request's stdio as wasix sees it.
pub struct Stdio {
    pub output: GuestOutput,
    pub stderr: StderrBuf,
    /// Set when writing the response failed (bad CGI, the cap, the client gone): the request's
    /// failure, whatever the guest does after its write returned an error.
    pub failure: Option<Failure>,
    handle: Handle,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// stdout or stderr: writes go into the shared `Stdio`.
struct StdioFile {
    stdio: Arc<Mutex<Stdio>>,
    stream: Stream,
}

impl std::fmt::Debug for StdioFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StdioFile({:?})", self.stream)
    }
}

/// stdin: the request body, read in full before the guest starts.
#[derive(Debug)]
struct StdinFile {
    body: Bytes,
}

macro_rules! no_seek {
    ($t:ty) => {
        impl AsyncSeek for $t {
            fn start_seek(self: Pin<&mut Self>, _: io::SeekFrom) -> io::Result<()> {
                Err(io::ErrorKind::Unsupported.into())
            }
            fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
                Poll::Ready(Ok(0))
            }
        }
    };
}
no_seek!(StdioFile);
no_seek!(StdinFile);

macro_rules! stream_file {
    ($t:ty, $size:expr) => {
        impl VirtualFile for $t {
            fn last_accessed(&self) -> u64 {
                0
            }
            fn last_modified(&self) -> u64 {
                0
            }
            fn created_time(&self) -> u64 {
                0
            }
            fn size(&self) -> u64 {
                $size(self)
            }
            fn set_len(&mut self, _: u64) -> virtual_fs::Result<()> {
                Err(virtual_fs::FsError::PermissionDenied)
            }
            fn unlink(&mut self) -> virtual_fs::Result<()> {
                Ok(())
            }
            fn poll_read_ready(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok($size(&*self) as usize))
            }
            fn poll_write_ready(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(64 * 1024))
            }
        }
    };
}
stream_file!(StdioFile, |_: &StdioFile| 0u64);
stream_file!(StdinFile, |f: &StdinFile| f.body.len() as u64);

impl AsyncWrite for StdioFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut stdio) = self.stdio.lock() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let stdio = &mut *stdio;
        match self.stream {
            Stream::Stderr => {
                stdio.stderr.write(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Stream::Stdout => {
                if stdio.failure.is_some() {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                match stdio.output.write(buf, &stdio.handle, stdio.deadline) {
                    Ok(()) => Poll::Ready(Ok(buf.len())),
                    Err(HostStop::Fail(failure)) => {
                        stdio.failure = Some(failure);
                        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
                    }
                    Err(HostStop::Exit(_)) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for StdioFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StdinFile {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::PermissionDenied.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for StdinFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.body.len());
        let chunk = self.body.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Read the whole request body (bounded by the body cap upstream) before the guest starts.
pub fn read_body(
    input: &mut GuestInput,
    handle: &Handle,
    deadline: Instant,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        match input.read(64 * 1024, handle, deadline) {
            Ok(chunk) if chunk.is_empty() => return Ok(body.freeze()),
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(HostStop::Fail(f)) => return Err(f),
            Err(HostStop::Exit(_)) => return Err(Failure::Internal("reading the body".into())),
        }
    }
}

/// Split an environment block back into pairs.
fn env_pairs(block: &EnvBlock) -> Vec<(Vec<u8>, Vec<u8>)> {
    block
        .bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            Some((entry[..eq].to_vec(), entry[eq + 1..].to_vec()))
        })
        .collect()
}

/// Everything wasix needs for one instance.
pub struct Prepared {
    pub builder: wasmer_wasix::WasiEnvBuilder,
    pub stdio: Arc<Mutex<Stdio>>,
}

impl Stdio {
    pub fn new(
        mut output: GuestOutput,
        stderr: StderrBuf,
        handle: &Handle,
        deadline: Instant,
    ) -> Self {
        output.set_never_wait(true);
        Self {
            output,
            stderr,
            failure: None,
            handle: handle.clone(),
            deadline,
        }
    }
}

pub fn prepare(
    host: &WasixHost,
    name: &str,
    args: &[String],
    env: &EnvBlock,
    body: Bytes,
    stdio: Stdio,
) -> Prepared {
    let handle = stdio.handle.clone();
    let stdio = Arc::new(Mutex::new(stdio));
    let builder = WasiEnv::builder(name)
        .runtime(host.runtime(&handle))
        .args(args)
        .envs(env_pairs(env))
        .stdin(Box::new(StdinFile { body }))
        .stdout(Box::new(StdioFile {
            stdio: stdio.clone(),
            stream: Stream::Stdout,
        }))
        .stderr(Box::new(StdioFile {
            stdio: stdio.clone(),
            stream: Stream::Stderr,
        }));
    Prepared { builder, stdio }
}

/// The function types of every host function wasix makes for an instance (all its WASI and
/// WASIX versions), by the signature hash wasmer files them under. Probed once per process
/// (again after a failed probe).
fn host_types() -> Result<&'static HashMap<u32, wasmer::FunctionType>, String> {
    static TYPES: OnceLock<HashMap<u32, wasmer::FunctionType>> = OnceLock::new();
    if let Some(types) = TYPES.get() {
        return Ok(types);
    }
    // Its own thread: wasix's environment wants a tokio runtime, which must not be made or
    // dropped on one of the node's async threads. A failure is not kept: the next load tries
    // again.
    let probed = std::thread::Builder::new()
        .name("outpost-wasix-probe".into())
        .spawn(probe_host_types)
        .map_err(|e| format!("no thread for the probe: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the probe panicked".into()))?;
    Ok(TYPES.get_or_init(|| probed))
}

fn probe_host_types() -> Result<HashMap<u32, wasmer::FunctionType>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let _entered = runtime.enter();
    let mut store = wasmer::Store::default();
    let tasks = TokioTaskManager::new(runtime.handle().clone());
    let env = WasiEnv::builder("probe")
        .runtime(Arc::new(PluggableRuntime::new(Arc::new(tasks))))
        .finalize(&mut store)
        .map_err(|e| e.to_string())?;
    let mut types = HashMap::new();
    for version in [
        WasiVersion::Snapshot0,
        WasiVersion::Snapshot1,
        WasiVersion::Wasix32v1,
        WasiVersion::Wasix64v1,
    ] {
        let imports = generate_import_object_from_env(&mut store, &env.env, version);
        for (_, export) in &imports {
            if let wasmer::Extern::Function(f) = export {
                let ty = f.ty(&store);
                types.insert(ty.signature_hash(), ty);
            }
        }
    }
    Ok(types)
}

/// Refuses a module with a function type wasmer cannot tell apart from one of wasix's host
/// functions. wasmer checks a type by a 32-bit hash of it, and registering a second type with
/// a known hash panics (and poisons the engine's registry). Within a module its compiler refuses
/// such a pair; but the wasix host makes its functions, all of them, only when a request's
/// instance is made. A type built for the collision (crc32 is easy to solve for) would panic
/// every request of the app.
pub fn check_types(module: &wasmer::Module) -> Result<(), CheckError> {
    let host = host_types().map_err(CheckError::HostTypes)?;
    for ty in module.info().signatures.values() {
        let hash = ty.signature_hash();
        match host.get(&hash) {
            Some(theirs) if theirs != ty => {
                return Err(CheckError::SignatureCollision {
                    found: signature(ty),
                    host: signature(theirs),
                    hash,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A function type as the module check writes signatures: `(i32, i64) -> (i32)`.
fn signature(ty: &wasmer::FunctionType) -> String {
    let list = |types: &[wasmer::Type]| {
        types
            .iter()
            .map(|t| t.to_string().to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(ty.params()), list(ty.results()))
}

/// The exit code if this error is wasix's `proc_exit`.
pub fn exit_code(e: &wasmer::RuntimeError) -> Option<i32> {
    match e.downcast_ref::<WasiError>() {
        Some(WasiError::Exit(code)) => Some(code.raw()),
        _ => None,
    }
}
