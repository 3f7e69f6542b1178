//! Per-request lifecycle (instantiate + CGI run + teardown) side by side with the floor: a raw
//! wasmer Store + Instance + call of a trivial module with one page of memory.
//! Criterion reports each; a second pass interleaves the three for median and p99 and prints
//! the ratios to the floor (docs/benchmarks.md records them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use outpost::sandbox::cgi::CgiRequest;
use outpost::sandbox::io::{GuestInput, GuestOutput};
use outpost::sandbox::{App, Envelope, HostChoice, Limits, Request, Sandbox, SandboxConfig};
use wasmer::{imports, Instance, Module, Store};

const FLOOR_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "run")))"#;
const HELLO_WAT: &str = include_str!("../runtime/tests/guests/wat/hello.wat");

struct Fixture {
    sandbox: Arc<Sandbox>,
    envelope: Envelope,
    hello: App,
    rust: App,
    rust_wasix: App,
    floor_store_engine: wasmer::Engine,
    floor: Module,
    rt: tokio::runtime::Runtime,
    _dir: std::path::PathBuf,
}

fn rust_guest() -> Vec<u8> {
    // Cargo's run-time value: right even when another checkout built this binary.
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("guests/rust");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root.join("examples/echo-rust/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo");
    assert!(status.success(), "building the echo guest failed");
    std::fs::read(target.join("wasm32-wasip1/release/echo.wasm")).expect("echo.wasm")
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("outpost-bench-{}", std::process::id()));
        let mut config = SandboxConfig::new(dir.clone());
        config.workers = 1;
        let sandbox = Sandbox::new(config).expect("sandbox");
        let hello_bytes = wasmer::wat2wasm(HELLO_WAT.as_bytes()).expect("wat");
        let hello = sandbox
            .load("hello", &hello_bytes, vec![], &[])
            .expect("hello");
        let echo = rust_guest();
        let rust = sandbox.load("echo", &echo, vec![], &[]).expect("echo");
        let rust_wasix = sandbox
            .load_with("echo", &echo, vec![], &[], HostChoice::Wasix)
            .expect("echo on wasix");
        let envelope = sandbox.envelope(Limits::default());
        let floor_store_engine = wasmer::Engine::default();
        let floor = Module::new(&floor_store_engine, FLOOR_WAT).expect("floor");
        Self {
            sandbox,
            envelope,
            hello,
            rust,
            rust_wasix,
            floor_store_engine,
            floor,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt"),
            _dir: dir,
        }
    }

    fn floor_once(&self) {
        let mut store = Store::new(self.floor_store_engine.clone());
        let instance = Instance::new(&mut store, &self.floor, &imports! {}).expect("instance");
        let run = instance.exports.get_function("run").expect("run");
        run.call(&mut store, &[]).expect("call");
    }

    fn request_once(&self, app: &App, body: &Bytes) -> usize {
        let (output, mut start) = GuestOutput::new(1 << 20);
        let length = body.len().to_string();
        let request = Request {
            env: app.request_env(&CgiRequest {
                method: "POST",
                path: "/bench",
                protocol: "HTTP/1.1",
                headers: &[("content-length", length.as_bytes())],
                ..CgiRequest::default()
            }),
            input: GuestInput::fixed(body.clone()),
        };
        let outcome = self.sandbox.run_here(
            app,
            &self.envelope,
            request,
            output,
            self.rt.handle().clone(),
        );
        assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
        start
            .try_recv()
            .expect("started")
            .expect("response")
            .first
            .len()
    }
}

fn lifecycle(c: &mut Criterion) {
    let f = Fixture::new();
    let kib = Bytes::from(vec![b'x'; 1024]);
    let empty = Bytes::new();
    let mut group = c.benchmark_group("per_request");
    group.bench_function("floor_raw_instantiate_call", |b| b.iter(|| f.floor_once()));
    group.bench_function("outpost_wat_hello", |b| {
        b.iter(|| f.request_once(&f.hello, &empty))
    });
    group.bench_function("outpost_rust_echo_1k", |b| {
        b.iter(|| f.request_once(&f.rust, &kib))
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// `OUTPOST_BENCH_N`, else `default`: how many runs of each path.
fn runs(default: usize) -> usize {
    std::env::var("OUTPOST_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Interleaved runs so the three paths see the same machine noise.
fn side_by_side() {
    let f = Fixture::new();
    let kib = Bytes::from(vec![b'x'; 1024]);
    let empty = Bytes::new();
    let n = runs(10_000);
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..200 {
        f.floor_once();
        f.request_once(&f.hello, &empty);
        f.request_once(&f.rust, &kib);
        f.request_once(&f.rust_wasix, &kib);
    }
    for _ in 0..n {
        let t = Instant::now();
        f.floor_once();
        times[0].push(t.elapsed());
        let t = Instant::now();
        f.request_once(&f.hello, &empty);
        times[1].push(t.elapsed());
        let t = Instant::now();
        f.request_once(&f.rust, &kib);
        times[2].push(t.elapsed());
        // The wasix host is about ten times slower: sample it every tenth round.
        if times[2].len().is_multiple_of(10) {
            let t = Instant::now();
            f.request_once(&f.rust_wasix, &kib);
            times[3].push(t.elapsed());
        }
    }
    for t in &mut times {
        t.sort();
    }
    let floor = percentile(&times[0], 0.5);
    println!("\nside by side, {n} interleaved runs each, wasix every tenth (microseconds):");
    println!("| path | median | p99 | median / floor |");
    println!("|---|---|---|---|");
    for (name, t) in [
        ("floor: raw Store + Instance + call, (memory 1)", &times[0]),
        ("outpost: WAT hello (fd_write)", &times[1]),
        ("outpost: Rust std echo, 1 KiB body", &times[2]),
        ("outpost wasix host: same echo guest", &times[3]),
    ] {
        let median = percentile(t, 0.5);
        println!(
            "| {name} | {median:.1} | {:.1} | {:.2}x |",
            percentile(t, 0.99),
            median / floor
        );
    }
}

criterion_group!(benches, lifecycle);

/// One path alone in a loop, for a profiler (`OUTPOST_BENCH_PROFILE=floor|hello|echo`).
fn profile(path: &str) {
    let f = Fixture::new();
    let kib = Bytes::from(vec![b'x'; 1024]);
    let empty = Bytes::new();
    let n = runs(200_000);
    let t = Instant::now();
    for _ in 0..n {
        match path {
            "floor" => f.floor_once(),
            "hello" => drop(f.request_once(&f.hello, &empty)),
            "echo" => drop(f.request_once(&f.rust, &kib)),
            other => panic!("OUTPOST_BENCH_PROFILE: no path {other:?} (floor, hello, echo)"),
        }
    }
    let each = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{path}: {n} runs, {each:.2} us each");
}

fn main() {
    if let Ok(path) = std::env::var("OUTPOST_BENCH_PROFILE") {
        return profile(&path);
    }
    side_by_side();
    if std::env::var_os("OUTPOST_BENCH_SIDE_ONLY").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
