//! The sandbox as a library: many apps and hostile guests on one sandbox (one worker pool, one
//! memory pool), the way a daemon shares it between tenants.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outpost::error::{Failure, Limit};
use outpost::sandbox::cgi::CgiRequest;
use outpost::sandbox::io::{GuestInput, GuestOutput, Started};
use outpost::sandbox::{App, Envelope, Limits, Request, Sandbox, SandboxConfig};

use crate::support::*;

struct Harness {
    sandbox: Arc<Sandbox>,
    rt: tokio::runtime::Runtime,
    _data: TempDir,
}

/// The response a guest started, read to its end: (status, body) or the failure.
async fn collect(
    start: tokio::sync::oneshot::Receiver<Result<Started, Failure>>,
) -> Result<(u16, Vec<u8>), Failure> {
    let started = start.await.expect("start")?;
    let mut bytes = started.first.to_vec();
    if let Some(mut rest) = started.rest {
        while let Some(chunk) = rest.recv().await {
            bytes.extend_from_slice(&chunk?);
        }
    }
    Ok((started.head.status.as_u16(), bytes))
}

impl Harness {
    fn new() -> Self {
        let data = TempDir::new("sandbox");
        let mut config = SandboxConfig::new(data.0.clone());
        config.workers = 2;
        Self {
            sandbox: Sandbox::new(config).expect("sandbox"),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            _data: data,
        }
    }

    fn load_wat(&self, src: &str) -> Arc<App> {
        let bytes = wasmer::wat2wasm(src.as_bytes()).expect("wat");
        Arc::new(self.sandbox.load("t", &bytes, vec![], &[]).expect("load"))
    }

    fn load_file(&self, path: &std::path::Path) -> Arc<App> {
        let bytes = std::fs::read(path).expect("read module");
        Arc::new(self.sandbox.load("t", &bytes, vec![], &[]).expect("load"))
    }

    fn request(app: &App, body: &'static [u8]) -> Request {
        Request {
            env: app.request_env(&CgiRequest {
                method: "POST",
                path: "/",
                protocol: "HTTP/1.1",
                ..CgiRequest::default()
            }),
            input: GuestInput::fixed(Bytes::from_static(body)),
        }
    }

    /// Run one request on the calling thread, always the same one (a pool may hand requests to
    /// any of its threads); (status, body) or the failure.
    fn call_here(
        &self,
        app: &Arc<App>,
        envelope: &Arc<Envelope>,
        body: &'static [u8],
    ) -> Result<(u16, Vec<u8>), Failure> {
        let (output, start) = GuestOutput::new(1 << 20);
        let request = Self::request(app, body);
        self.sandbox
            .run_here(app, envelope, request, output, self.rt.handle().clone());
        self.rt.block_on(collect(start))
    }

    /// Run one request; (status, body) or the failure.
    fn call(
        &self,
        app: &Arc<App>,
        envelope: &Arc<Envelope>,
        body: &'static [u8],
    ) -> Result<(u16, Vec<u8>), Failure> {
        let request = Self::request(app, body);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let start = self.sandbox.dispatch(
            app.clone(),
            envelope.clone(),
            request,
            self.rt.handle().clone(),
            move |outcome| {
                let _ = done_tx.send(outcome);
            },
        );
        self.rt.block_on(async move {
            let response = collect(start).await;
            // Failed or not, the guest is gone (its memory back in the pool) before the next
            // call: tests count pooled slots.
            let _ = done_rx.await;
            response
        })
    }
}

#[test]
fn hostile_guests_and_hello_share_one_sandbox() {
    let h = Harness::new();
    let limits = Limits {
        memory: 4 << 20,
        fuel: 50_000_000,
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let envelope = Arc::new(h.sandbox.envelope(limits));
    let hello = h.load_file(&wat_guest("hello"));
    let hostile = [
        ("loop", Failure::Limit(Limit::Fuel)),
        ("trap", Failure::Trap(String::new())),
        ("stack", Failure::StackOverflow),
        ("oom", Failure::Limit(Limit::Memory)),
        ("badcgi", Failure::BadResponse(String::new())),
    ];
    for (name, expected) in hostile {
        let app = h.load_file(&wat_guest(name));
        let got = h.call(&app, &envelope, b"").expect_err(name);
        assert_eq!(got.kind(), expected.kind(), "{name}: {got}");
        assert_eq!(
            h.call(&hello, &envelope, b"").expect("hello after"),
            (200, b"hello\n".to_vec())
        );
    }
    // With fuel to spare, the deadline stops the loop and frees the worker.
    let endless = Arc::new(h.sandbox.envelope(Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(200),
        ..Limits::default()
    }));
    let looping = h.load_file(&wat_guest("loop"));
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(
            h.call(&looping, &endless, b"").expect_err("deadline"),
            Failure::Limit(Limit::Time)
        );
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        h.call(&hello, &envelope, b"").expect("hello"),
        (200, b"hello\n".to_vec())
    );
}

/// A recycled linear memory must read back zero: what one request (or tenant) wrote is never
/// seen by the next.
#[test]
fn recycled_memory_is_clean_for_the_next_request() {
    let h = Harness::new();
    let envelope = Arc::new(h.sandbox.envelope(Limits::default()));
    let app = h.load_wat(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 4)
          (data (i32.const 16) "\r\nclean\n\r\ndirty\n")
          (func (export "_start")
            (local $i i32)
            (drop (memory.grow (i32.const 2)))
            (i32.store (i32.const 0) (i32.const 16))
            (if (i32.or (i32.or (i32.load8_u (i32.const 70000)) (i32.load8_u (i32.const 200000)))
                        (i32.load8_u (i32.const 300000)))
              (then (i32.store (i32.const 0) (i32.const 24))))
            (i32.store (i32.const 4) (i32.const 8))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (i32.store8 (i32.const 70000) (i32.const 171))
            (i32.store8 (i32.const 200000) (i32.const 171))
            (i32.store8 (i32.const 300000) (i32.const 171))))"#,
    );
    // A small memory between rounds takes the same pooled slot and shrinks it; the next large
    // one grows back into pages the earlier round dirtied.
    let small = h.load_file(&wat_guest("hello"));
    for round in 0..5 {
        let (status, body) = h.call(&app, &envelope, b"").expect("call");
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8_lossy(&body), "clean\n", "round {round}");
        assert_eq!(h.call(&small, &envelope, b"").expect("small").0, 200);
    }
    assert!(
        h.sandbox.idle_memories() >= 1,
        "memories are recycled through the pool"
    );
}

/// A pooled slot that held a large memory and is reused for a smaller one is cut down to the
/// smaller size: a load past it traps (bounds checks rely on the inaccessible pages), it does
/// not read the old slot's pages.
#[test]
fn a_reused_memory_traps_past_its_smaller_size() {
    let h = Harness::new();
    let envelope = Arc::new(h.sandbox.envelope(Limits::default()));
    let big = h.load_wat(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 8)
          (data (i32.const 16) "\r\nbig\n")
          (func (export "_start")
            (i32.store8 (i32.const 70000) (i32.const 171))
            (i32.store8 (i32.const 500000) (i32.const 171))
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 6))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    );
    // One page: 70000 is past its end.
    let small = h.load_wat(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "\r\nread\n")
          (func (export "_start")
            (drop (i32.load8_u (i32.const 70000)))
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 7))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    );
    for round in 0..3 {
        assert_eq!(
            h.call(&big, &envelope, b"").expect("big"),
            (200, b"big\n".to_vec()),
            "round {round}"
        );
        assert_eq!(h.sandbox.idle_memories(), 1, "one slot, reused");
        let got = h
            .call(&small, &envelope, b"")
            .expect_err("a load past the memory");
        assert_eq!(
            got.kind(),
            Failure::Trap(String::new()).kind(),
            "round {round}: {got}"
        );
    }
}

/// The same, for the common case of one app served again and again at one memory size: its
/// memory's resident pages are cleared without a scan when the guest faulted in no new page,
/// and a guest that does touch a new page is scanned.
#[test]
fn a_memory_reused_at_the_same_size_is_clean_with_or_without_a_scan() {
    let h = Harness::new();
    let envelope = Arc::new(h.sandbox.envelope(Limits::default()));
    // Every request reports whether its probe bytes read non-zero, then writes them. The body
    // picks a third probe, far from the others: "f?" writes it (a page no request touched
    // before), "c?" reads it; "?a" is at 100000, "?b" at 120000.
    let app = h.load_wat(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 2)
          (data (i32.const 16) "\r\nclean\n\r\ndirty\n")
          (func (export "_start")
            (local $far i32) (local $dirty i32)
            (i32.store (i32.const 32) (i32.const 48))
            (i32.store (i32.const 36) (i32.const 8))
            (drop (call $r (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
            (local.set $far (i32.add (i32.const 100000)
              (i32.mul (i32.sub (i32.load8_u (i32.const 49)) (i32.const 97)) (i32.const 20000))))
            (local.set $dirty (i32.or (i32.load8_u (i32.const 5000)) (i32.load8_u (i32.const 70000))))
            (if (i32.eq (i32.load8_u (i32.const 48)) (i32.const 99))
              (then (local.set $dirty (i32.or (local.get $dirty) (i32.load8_u (local.get $far))))))
            (i32.store (i32.const 0) (i32.const 16))
            (if (local.get $dirty) (then (i32.store (i32.const 0) (i32.const 24))))
            (i32.store (i32.const 4) (i32.const 8))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (i32.store8 (i32.const 5000) (i32.const 171))
            (i32.store8 (i32.const 70000) (i32.const 171))
            (if (i32.eq (i32.load8_u (i32.const 48)) (i32.const 102))
              (then (i32.store8 (local.get $far) (i32.const 171))))
            (i64.store (i32.const 48) (i64.const 0))))"#,
    );
    // On one thread: the fault watch follows the thread a memory was made on, and a pool thread
    // new to the work faults in its own stack and allocator pages at first (a scan each time).
    let rounds = |count: usize, body: &'static [u8]| {
        for round in 0..count {
            let (status, out) = h.call_here(&app, &envelope, body).expect("call");
            assert_eq!(status, 200);
            let body = String::from_utf8_lossy(body);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "clean\n",
                "{body} round {round}"
            );
        }
    };
    rounds(3, b"near");
    let scans = h.sandbox.memory_scans();
    rounds(40, b"near");
    let near_scans = h.sandbox.memory_scans() - scans;
    // The fast path is taken: a page the host itself faults in on this thread may cost a scan
    // now and then (its allocator's arena is shared with other threads, which may hand pages
    // back to the kernel), never one per request.
    assert!(
        near_scans <= 10,
        "40 rounds touching only known pages scanned {near_scans} times"
    );
    for probe in [&b"a"[..], b"b"] {
        let scans = h.sandbox.memory_scans();
        rounds(1, if probe == b"a" { b"fa" } else { b"fb" });
        assert!(
            h.sandbox.memory_scans() > scans,
            "a request that touched a new page is scanned"
        );
        rounds(2, if probe == b"a" { b"ca" } else { b"cb" });
        rounds(2, b"near");
    }
}

/// A data or element segment past the end of its memory or table traps while the instance is
/// made: that request fails as a trap (500), its memory goes back to the pool, and the
/// sandbox serves the next request.
#[test]
fn a_segment_out_of_bounds_fails_its_request_as_a_trap() {
    let h = Harness::new();
    let envelope = Arc::new(h.sandbox.envelope(Limits::default()));
    let hello = h.load_file(&wat_guest("hello"));
    for (what, wat) in [
        (
            "data",
            r#"(module (memory (export "memory") 1) (data (i32.const 65535) "ab")
                 (func (export "_start")))"#,
        ),
        (
            "element",
            r#"(module (memory (export "memory") 1) (table 1 funcref) (func $f)
                 (elem (i32.const 1) $f) (func (export "_start")))"#,
        ),
    ] {
        let app = h.load_wat(wat);
        let got = h.call(&app, &envelope, b"").expect_err(what);
        assert_eq!(
            got.kind(),
            Failure::Trap(String::new()).kind(),
            "{what}: {got}"
        );
        assert!(got.to_string().contains("out of bounds"), "{what}: {got}");
        assert_eq!(got.status().as_u16(), 500, "{what}");
        assert!(h.sandbox.idle_memories() >= 1, "{what}: the memory is back");
        let (status, body) = h.call(&hello, &envelope, b"").expect("hello after it");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello\n"[..]),
            "after {what}"
        );
    }
}

#[test]
fn a_rust_std_guest_runs_with_its_body_on_stdin() {
    let h = Harness::new();
    let envelope = Arc::new(h.sandbox.envelope(Limits::default()));
    let echo = h.load_file(&echo_rust());
    let (status, body) = h.call(&echo, &envelope, b"ping").expect("echo");
    assert_eq!((status, body.as_slice()), (200, &b"ping"[..]));
}

/// The same guests on both hosts: each gives the response or the failure expected of it, on both.
#[test]
fn the_lean_and_wasix_hosts_agree_on_the_same_guests() {
    use outpost::sandbox::{HostChoice, HostKind};
    let h = Harness::new();
    let limits = Limits {
        memory: 4 << 20,
        fuel: 50_000_000,
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let envelope = Arc::new(h.sandbox.envelope(limits));
    // Each guest with what both hosts must give: (status, body) or the failure.
    type Outcome = Result<(u16, &'static str), Failure>;
    let guests: [(std::path::PathBuf, Outcome); 9] = [
        (wat_guest("hello"), Ok((200, "hello\n"))),
        (echo_rust(), Ok((200, "same body"))),
        (c_guest(), Ok((200, "Hello from C! POST /\n"))),
        (test_guest("probe"), Ok((200, "env: clean\n"))),
        (wat_guest("loop"), Err(Failure::Limit(Limit::Fuel))),
        (wat_guest("trap"), Err(Failure::Trap(String::new()))),
        (wat_guest("stack"), Err(Failure::StackOverflow)),
        (wat_guest("oom"), Err(Failure::Limit(Limit::Memory))),
        (
            wat_guest("badcgi"),
            Err(Failure::BadResponse(String::new())),
        ),
    ];
    for (path, expected) in guests {
        let bytes = std::fs::read(&path).expect("module");
        let on = |choice| {
            let app = h
                .sandbox
                .load_with("g", &bytes, vec![], &[], choice)
                .expect("load");
            Arc::new(app)
        };
        let (lean, wasix) = (on(HostChoice::Lean), on(HostChoice::Wasix));
        assert_eq!((lean.host, wasix.host), (HostKind::Lean, HostKind::Wasix));
        for (host, app) in [("lean", &lean), ("wasix", &wasix)] {
            let got = h.call(app, &envelope, b"same body");
            let what = format!("{} on the {host} host: {got:?}", path.display());
            match (&got, &expected) {
                (Ok((status, body)), Ok((want_status, want_body))) => {
                    assert_eq!(
                        (*status, String::from_utf8_lossy(body).as_ref()),
                        (*want_status, *want_body),
                        "{what}"
                    )
                }
                (Err(failure), Err(want)) => assert_eq!(failure.kind(), want.kind(), "{what}"),
                _ => panic!("{what}, expected {expected:?}"),
            }
        }
    }
}
