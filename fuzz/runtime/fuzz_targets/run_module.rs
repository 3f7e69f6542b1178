//! Modules from wasm-smith (any mix of features, WASI imports the lean host provides, a `_start`
//! export) through the module check, then compiled and run under small limits. Every module is
//! refused at load, or ends within its deadline plus a margin having used no more fuel and
//! memory than its envelope: never a hang, a crash or a panic.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use outpost::sandbox::cgi::CgiRequest;
use outpost::sandbox::io::{GuestInput, GuestOutput};
use outpost::sandbox::{CompilerKind, Envelope, Limits, Request, Sandbox, SandboxConfig};

const IMPORTS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#;
const EXPORTS: &str = r#"(module (func (export "_start")))"#;

struct World {
    sandbox: Arc<Sandbox>,
    envelope: Arc<Envelope>,
    rt: tokio::runtime::Runtime,
    data: std::path::PathBuf,
    imports: Vec<u8>,
    exports: Vec<u8>,
}

const LIMITS_MEMORY: u64 = 4 << 20;
const LIMITS_FUEL: u64 = 2_000_000;
const TIMEOUT: Duration = Duration::from_millis(200);

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let data = std::env::temp_dir().join(format!("outpost-fuzz-{}", std::process::id()));
        let mut config = SandboxConfig::new(data.clone());
        // Singlepass compiles random modules quickly; the limits are the same middleware.
        config.compiler = CompilerKind::Singlepass;
        config.compile_timeout = Duration::from_secs(10);
        let sandbox = Sandbox::new(config).expect("sandbox");
        let envelope = Arc::new(sandbox.envelope(Limits {
            memory: LIMITS_MEMORY,
            fuel: LIMITS_FUEL,
            timeout: TIMEOUT,
            ..Limits::default()
        }));
        World {
            sandbox,
            envelope,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            data,
            imports: wasmer::wat2wasm(IMPORTS.as_bytes())
                .expect("imports")
                .into_owned(),
            exports: wasmer::wat2wasm(EXPORTS.as_bytes())
                .expect("exports")
                .into_owned(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut u = Unstructured::new(data);
    let Ok(mut config) = wasm_smith::Config::arbitrary(&mut u) else {
        return;
    };
    config.available_imports = Some(w.imports.clone());
    config.exports = Some(w.exports.clone());
    config.max_memories = config.max_memories.min(3);
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    let bytes = module.to_bytes();
    // Compiled artifacts would pile up on disk over a long run.
    let _ = std::fs::remove_dir_all(w.data.join("artifacts"));
    let _ = std::fs::create_dir_all(w.data.join("artifacts"));
    let Ok(app) = w.sandbox.load("fuzz", &bytes, vec![], &[]) else {
        return;
    };
    let (output, _start) = GuestOutput::new(1 << 20);
    let request = Request {
        env: app.request_env(&CgiRequest {
            method: "GET",
            path: "/",
            protocol: "HTTP/1.1",
            ..CgiRequest::default()
        }),
        input: GuestInput::fixed(bytes::Bytes::from_static(b"body")),
    };
    let started = Instant::now();
    let outcome = w
        .sandbox
        .run_here(&app, &w.envelope, request, output, w.rt.handle().clone());
    let took = started.elapsed();
    assert!(
        took < TIMEOUT + Duration::from_secs(1),
        "a module ran {took:?}, past its {TIMEOUT:?} deadline"
    );
    assert!(
        outcome.fuel_used <= LIMITS_FUEL,
        "fuel {}",
        outcome.fuel_used
    );
    assert!(
        outcome.memory_peak <= LIMITS_MEMORY,
        "memory {}",
        outcome.memory_peak
    );
});
