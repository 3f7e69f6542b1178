//! The inline path: a short guest runs on the async thread that received its request; a guest
//! that would wait, hold a large response, or run past the slice moves to a pool thread and
//! runs again from the start, and its client sees one whole, correct response either way.

use crate::serve::metric;
use crate::support::*;

const LOCAL: &[&str] = &["-H", "Host: localhost"];

fn runs(node: &Daemon, path: &str) -> f64 {
    metric(
        node,
        &format!("outpost_guest_runs_total{{tenant=\"a\",path=\"{path}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A node with a plain listener and one tenant, `a` (a 1.5 s time limit, fuel to spare),
/// serving each (name, module) at `localhost/NAME`.
fn node_serving(dir: &TempDir, apps: &[(&str, std::path::PathBuf)]) -> Daemon {
    let mut config = format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[tenant]]
name = "a"
allow_unsigned = true
[tenant.limits]
timeout = "1500ms"
fuel = 100000000000
"#,
        data = dir.path("data").display(),
    );
    for (name, module) in apps {
        config.push_str(&app_routed(name, "a", "localhost", module));
    }
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config).expect("write config");
    Daemon::serve(&cfg)
}

#[test]
fn short_guests_run_inline_and_the_others_move_with_the_same_response() {
    let dir = TempDir::new("inline");
    let node = node_serving(
        &dir,
        &[
            ("hello", wat_guest("hello")),
            ("nap", wat_guest("nap")),
            ("big", wat_guest("big_body")),
            ("spin", wat_guest("loop")),
        ],
    );

    // One request at a time: the tenant's slot is always free, so each runs inline. On a
    // machine loaded enough to hold the attempt's thread past its 2 ms slice (a full test run
    // on 2 cores did: an instantiation took 8.9 ms), the attempt moves instead and its app stays
    // off the inline path for 100 ms (doubled for each move in a row). So: hello requests until
    // 5 have run inline, at most 10, letting such a backoff pass after any that did not.
    let mut sent = 0;
    while runs(&node, "inline") < 5.0 {
        assert!(
            sent < 10,
            "{sent} hello requests, one at a time, ran inline {} times: {}",
            runs(&node, "inline"),
            node.log_text()
        );
        let before = runs(&node, "inline");
        let reply = curl(&node.url("/hello"), LOCAL);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello\n");
        sent += 1;
        if runs(&node, "inline") == before {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    assert_eq!(runs(&node, "inline"), 5.0, "{}", node.log_text());
    let (pool, moved) = (runs(&node, "pool"), runs(&node, "moved"));
    assert_eq!(pool + moved, (sent - 5) as f64, "{}", node.log_text());

    // A guest that sleeps cannot wait on an async thread: it moves, sleeps there, answers.
    let reply = curl(&node.url("/nap"), LOCAL);
    assert_eq!((reply.status, reply.text().as_str()), (200, "napped"));
    assert_eq!(runs(&node, "moved"), moved + 1.0, "{}", node.log_text());

    // A response larger than an inline run may hold moves too, and arrives whole.
    let reply = curl(&node.url("/big"), LOCAL);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 8 << 16);
    assert!(reply.body.iter().all(|&b| b == b'a'));
    assert_eq!(runs(&node, "moved"), moved + 2.0, "{}", node.log_text());

    // A guest spinning past the slice moves, and still ends at its deadline.
    let reply = curl(&node.url("/spin"), LOCAL);
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(runs(&node, "moved"), moved + 3.0, "{}", node.log_text());
    assert_eq!(runs(&node, "pool"), pool, "{}", node.log_text());

    // Each request ran exactly once for the client and once in the request counters.
    let total = metric(
        &node,
        "outpost_requests_total{tenant=\"a\",app=\"hello\",protocol=\"HTTP/1.1\",status=\"200\"}",
    );
    assert_eq!(total, Some(sent as f64));
    let nap = metric(
        &node,
        "outpost_requests_total{tenant=\"a\",app=\"nap\",protocol=\"HTTP/1.1\",status=\"200\"}",
    );
    assert_eq!(nap, Some(1.0));
}

/// Guests whose one inline attempt would hold the calling thread far past the slice: a host
/// call looping until the deadline, one Wasm operator writing a whole memory, an instantiation
/// writing a large table. (name, module, whether it may start inline at all, expected status)
const STALLERS: &[(&str, &str, bool, u16)] = &[
    (
        "random_get over 64 MiB (a host call checked only against the deadline)",
        r#"(module
            (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1025)
            (data (i32.const 16) "Content-Type: text/plain\n\nok")
            (func (export "_start")
              (drop (call $random (i32.const 65536) (i32.const 67108864)))
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 28))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        true,
        200,
    ),
    (
        "fd_write of 4 Mi empty iovecs to stderr",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 513)
            (data (i32.const 16) "Content-Type: text/plain\n\nok")
            (func (export "_start")
              (drop (call $fd_write (i32.const 2) (i32.const 65536) (i32.const 4194304) (i32.const 8)))
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 28))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        true,
        200,
    ),
    (
        "one memory.fill of 240 MiB (one operator; wasmer's interrupt is a signal, which stops it)",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 3841)
            (data (i32.const 16) "Content-Type: text/plain\n\nok")
            (func (export "_start")
              (memory.fill (i32.const 65536) (i32.const 7) (i32.const 251658240))
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 28))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        true,
        200,
    ),
    (
        "a table of 4 M elements built at instantiation (no Wasm runs to interrupt)",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (table 4000000 funcref)
            (data (i32.const 16) "Content-Type: text/plain\n\nok")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 28))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        false,
        200,
    ),
];

/// The promise of the inline path, for the thread that received the request: whatever the
/// guest does, its inline attempt gives that thread back after about one slice, and the
/// request still gets its whole answer, run once more on a pool thread.
#[test]
fn an_inline_attempt_gives_its_thread_back_within_a_slice_whatever_the_guest_does() {
    use outpost::sandbox::cgi::EnvBlock;
    use outpost::sandbox::io::GuestInput;
    use outpost::sandbox::{Limits, Request, RunPath, Sandbox, SandboxConfig};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let data = TempDir::new("inline-stall");
    let mut config = SandboxConfig::new(data.0.clone());
    config.workers = 2;
    let sandbox = Sandbox::new(config).expect("sandbox");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let envelope = Arc::new(sandbox.envelope(Limits {
        memory: 512 << 20,
        fuel: 10_000_000_000,
        timeout: Duration::from_secs(5),
        ..Limits::default()
    }));
    // The slice is 2 ms; the bound leaves room for a shared 2-core machine, and is far below
    // what each of these guests takes when its attempt is not stopped (tens to hundreds of ms).
    let bound = Duration::from_millis(12);
    let mut stalls = Vec::new();
    for (what, wat, inline, status) in STALLERS {
        let bytes = wasmer::wat2wasm(wat.as_bytes()).expect("wat");
        let app = Arc::new(sandbox.load("stall", &bytes, vec![], &[]).expect("load"));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let request = Request {
            env: std::sync::Arc::new(EnvBlock::default()),
            input: GuestInput::fixed(bytes::Bytes::new()),
        };
        // Called from this thread, as an async thread calls it: an inline attempt runs here.
        let began = Instant::now();
        let start = sandbox.dispatch(
            app,
            envelope.clone(),
            request,
            rt.handle().clone(),
            move |outcome| {
                let _ = done_tx.send(outcome);
            },
        );
        let held = began.elapsed();
        let outcome = done_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: no outcome: {e}"));
        let started = rt
            .block_on(start)
            .expect("start")
            .unwrap_or_else(|f| panic!("{what}: {f}"));
        assert_eq!(started.head.status.as_u16(), *status, "{what}");
        assert_eq!(&started.first[..], b"ok", "{what}");
        let path = if *inline {
            RunPath::Moved
        } else {
            RunPath::Pool
        };
        if held >= bound || outcome.path != path {
            stalls.push(format!(
                "{what}: held the calling thread {held:?}, ran {:?} (want {path:?})",
                outcome.path
            ));
        }
    }
    // Every guest is tried before failing, so one run names every path that stalls.
    assert!(stalls.is_empty(), "bound {bound:?}: {stalls:#?}");
}

/// Sends a POST declaring a `declared`-byte body to the node's plain listener, its body in
/// `parts` (byte counts) with `pause` seconds between them, half-closes if the parts fall
/// short of the declared length, and returns what came back (empty if nothing did).
fn post_in_parts(
    node: &Daemon,
    path: &str,
    declared: usize,
    parts: &[usize],
    pause: f64,
) -> String {
    let script = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
path, declared, pause = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
parts = [int(n) for n in sys.argv[5].split(",")]
s = socket.create_connection((host, int(port)))
s.sendall(("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (path, declared)).encode())
for i, n in enumerate(parts):
    if i:
        time.sleep(pause)
    s.sendall(b"q" * n)
if sum(parts) < declared:
    s.shutdown(socket.SHUT_WR)
s.settimeout(10)
out = b""
while True:
    try:
        chunk = s.recv(65536)
    except (ConnectionResetError, socket.timeout):
        break
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode("latin-1"))
"#;
    let parts: Vec<String> = parts.iter().map(|n| n.to_string()).collect();
    let out = std::process::Command::new("python3")
        .args(["-c", script, &node.addr, path, &declared.to_string()])
        .arg(pause.to_string())
        .arg(parts.join(","))
        .output()
        .expect("python3 (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small body of a declared length is read before the guest starts, for up to 1 s (the
/// tenant's time limit, 1.5 s here, is longer): a client pausing 0.5 s within its body costs
/// the guest nothing (it runs inline and reads all 700 bytes); one pausing 2 s gets its guest
/// started at 1 s with the first part in hand, which reads the rest as it arrives (on a guest
/// thread, within its own 1.5 s); and a body cut short reaches its guest as a failure, never as
/// a shorter complete body.
#[test]
fn a_small_body_is_read_ahead_within_the_time_limit_and_streams_after_it() {
    let dir = TempDir::new("inline-read-ahead");
    let node = node_serving(&dir, &[("drain", wat_guest("drain"))]);

    let reply = post_in_parts(&node, "/drain", 700, &[300, 400], 0.5);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("read 700"), "{reply}");
    assert_eq!(
        (runs(&node, "inline"), runs(&node, "pool")),
        (1.0, 0.0),
        "{}",
        node.log_text()
    );

    let reply = post_in_parts(&node, "/drain", 700, &[300, 400], 2.0);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("read 700"), "{reply}");
    assert_eq!(
        (runs(&node, "inline"), runs(&node, "pool")),
        (1.0, 1.0),
        "{}",
        node.log_text()
    );

    let reply = post_in_parts(&node, "/drain", 700, &[300], 0.0);
    assert!(
        !reply.contains("read 300"),
        "a cut-short body was taken as complete: {reply}"
    );
    // Logged once the guest's run (or refusal) ends: not as a 200 for a complete 300 bytes.
    let log = node.log_with("outpost::request", 3);
    let answered = log
        .lines()
        .filter(|l| l.contains("outpost::request") && l.contains("status=200"))
        .count();
    assert_eq!(answered, 2, "{log}");
}
