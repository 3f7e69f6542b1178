//! `outpost run` against real guests built from source, with curl as the client.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn hello_guests_answer_with_exact_bytes() {
    let data = TempDir::new("hello");
    let rust = Daemon::run(&hello_rust(), &data.0, &[], &[]);
    let reply = curl(&rust.url("/"), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello from outpost!\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("content-length"), Some("20"));

    let c = Daemon::run(&c_guest(), &data.0, &[], &[]);
    let reply = curl(&c.url("/greet"), &["-X", "PUT"]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello from C! PUT /greet\n");
    assert_eq!(reply.header("x-guest"), Some("c"));

    let wat = Daemon::run(&wat_guest("hello"), &data.0, &[], &[]);
    let reply = curl(&wat.url("/"), &[]);
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello\n"));
}

#[test]
fn echo_reflects_method_path_query_headers_and_body() {
    let data = TempDir::new("echo");
    let echo = Daemon::run(&echo_rust(), &data.0, &[], &[]);
    let reply = curl(
        &echo.url("/meta?a=1&b=two"),
        &[
            "-X",
            "POST",
            "-H",
            "X-Custom: hello there",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "abc",
        ],
    );
    assert_eq!(reply.status, 200);
    let text = reply.text();
    for line in [
        "method: POST",
        "path: /meta",
        "query: a=1&b=two",
        "header: HTTP_X_CUSTOM=hello there",
        "header: CONTENT_TYPE=text/plain",
        "header: CONTENT_LENGTH=3",
        "body-bytes: 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    let created = curl(&echo.url("/x?status=201"), &["--data-binary", "hi"]);
    assert_eq!(created.status, 201);
    assert_eq!(created.header("x-echo-method"), Some("POST"));
    assert_eq!(created.header("x-echo-path"), Some("/x"));
    assert_eq!(created.header("x-echo-query"), Some("status=201"));
    assert_eq!(created.body, b"hi");
}

#[test]
fn a_5_mib_post_round_trips_byte_for_byte() {
    let data = TempDir::new("big");
    let echo = Daemon::run(&echo_rust(), &data.0, &["--request-body", "8MiB"], &[]);
    let payload: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = data.path("payload.bin");
    std::fs::write(&file, &payload).expect("write payload");
    let reply = curl(
        &echo.url("/upload"),
        &[
            "--data-binary",
            &format!("@{}", file.display()),
            "-H",
            "Content-Type: application/octet-stream",
        ],
    );
    assert_eq!(reply.status, 200, "{}", echo.log_text());
    assert_eq!(reply.body.len(), payload.len());
    assert!(reply.body == payload, "echoed bytes differ");
}

#[test]
fn the_response_streams_before_the_guest_ends() {
    let data = TempDir::new("stream");
    let server = Daemon::run(&test_guest("stream"), &data.0, &[], &[]);
    let started = Instant::now();
    let mut child = Command::new("curl")
        .args(["-sS", "-N", &server.url("/?sleep=1500")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).expect("first chunk");
    let first_at = started.elapsed();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest");
    let done_at = started.elapsed();
    let _ = child.wait();
    assert_eq!(&first, b"first\n");
    assert_eq!(rest, "second\n");
    assert!(
        first_at < Duration::from_millis(1000),
        "first bytes arrived after {first_at:?}; the guest sleeps 1.5 s before its second write"
    );
    assert!(
        done_at >= Duration::from_millis(1400),
        "the whole response took only {done_at:?}"
    );
}

/// Each hostile fixture gets its status within its limit plus a margin, and the daemon keeps
/// serving.
#[test]
fn hostile_guests_fail_only_their_own_request() {
    let data = TempDir::new("hostile");
    let cases: &[(&str, &[&str], u16, Duration)] = &[
        ("loop", &["--fuel", "5000000"], 503, Duration::from_secs(2)),
        (
            "loop",
            &["--fuel", "1000000000000000", "--timeout", "500ms"],
            504,
            Duration::from_millis(1500),
        ),
        ("trap", &[], 500, Duration::from_secs(2)),
        ("stack", &[], 500, Duration::from_secs(2)),
        ("oom", &["--memory", "4MiB"], 500, Duration::from_secs(2)),
        ("badcgi", &[], 502, Duration::from_secs(2)),
        // A head past 64 KiB.
        ("bighead", &[], 502, Duration::from_secs(2)),
    ];
    for (fixture, args, status, within) in cases {
        let mut daemon = Daemon::run(&wat_guest(fixture), &data.0, args, &[]);
        for round in 0..2 {
            let reply = curl(&daemon.url("/"), &[]);
            assert_eq!(
                reply.status,
                *status,
                "{fixture} {args:?} round {round}: {}",
                daemon.log_text()
            );
            assert!(
                reply.elapsed < *within,
                "{fixture}: answered after {:?}",
                reply.elapsed
            );
        }
        assert!(daemon.alive(), "{fixture} took the daemon down");
    }
}

#[test]
fn an_oversized_response_is_cut_off() {
    let data = TempDir::new("bigresp");
    let daemon = Daemon::run(
        &wat_guest("bigresp"),
        &data.0,
        &["--response-body", "1MiB"],
        &[],
    );
    let reply = curl(&daemon.url("/"), &[]);
    assert_ne!(
        reply.curl_exit, 0,
        "the transfer must not complete normally"
    );
    assert!(
        reply.body.len() <= 1 << 20,
        "got {} bytes past the cap",
        reply.body.len()
    );
    let log = daemon.log_text();
    assert!(log.contains("response_body limit exceeded"), "{log}");
}

/// The largest (threads, resident KiB) of `daemon` seen while `load` runs, read every 20 ms.
fn peak_footprint_during(daemon: &Daemon, load: impl FnOnce()) -> (u64, u64) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = daemon.threads_and_rss();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (threads, rss) = daemon.threads_and_rss();
                peak = (peak.0.max(threads), peak.1.max(rss));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        // Stops the sampler however `load` ends (an assertion in it panics).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let stop = Stop(&done);
        load();
        drop(stop);
        sampler.join().expect("sampler")
    })
}

/// Hostile guests that dirty 2 MiB of memory each and spin until the deadline: measured while
/// they run, the node's threads and memory stay where the first batch left them. 400 requests a
/// batch: a leak of 8 KiB a request (of a guest memory, far more) shows as 3 MiB.
#[test]
fn hundreds_of_hostile_requests_leave_threads_and_memory_bounded() {
    let _alone = heavy_test();
    let data = TempDir::new("soak");
    let daemon = Daemon::run(
        &wat_guest("touch_loop"),
        &data.0,
        &["--fuel", "1000000000000000", "--timeout", "20ms"],
        &[],
    );
    let batch = || {
        let statuses = curl_parallel(&daemon.url("/"), 400, 4);
        assert_eq!(statuses.len(), 400);
        // Each stopped at its deadline (504), or refused after queueing as long (503).
        assert!(
            statuses.iter().all(|s| *s == 504 || *s == 503),
            "{statuses:?}"
        );
        assert!(statuses.contains(&504), "{statuses:?}");
    };
    let (threads_first, rss_first) = peak_footprint_during(&daemon, batch);
    let (threads_second, rss_second) = peak_footprint_during(&daemon, batch);
    let (threads_third, rss_third) = peak_footprint_during(&daemon, batch);
    assert!(
        threads_third <= threads_first + 2 && threads_second <= threads_first + 2,
        "threads grew from {threads_first} to {threads_second} and {threads_third}"
    );
    assert!(
        rss_third < rss_first + 3 * 1024,
        "peak RSS grew from {rss_first} KiB to {rss_second} KiB and {rss_third} KiB over 800 \
         requests"
    );
}

/// What the lean host answers a guest calling its filesystem, socket and process imports
/// directly (docs/guest-abi.md, "denied"): no descriptor beyond stdio, EBADF (8) for the
/// filesystem, ENOTSUP (58) for sockets, ENOSYS (52) for proc_raise.
const LEAN_DENIALS: &str = "preopens: none
path_open: 8
path_filestat_get: 8
fd_read: 8
fd_write: 8
sock_accept: 58
sock_recv: 58
sock_send: 58
sock_shutdown: 58
proc_raise: 52
";

#[test]
fn the_guest_sees_no_host_files_environment_or_network() {
    let data = TempDir::new("probe");
    let daemon = Daemon::run(&wat_guest("isolation"), &data.0, &[], &[]);
    let reply = curl(&daemon.url("/"), &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, LEAN_DENIALS),
        "{}",
        daemon.log_text()
    );
    // The daemon's own environment never reaches the guest (only the request's variables do).
    let probe = Daemon::run(
        &test_guest("probe"),
        &data.0,
        &[],
        &[("OUTPOST_PROBE_SECRET", "hunter2")],
    );
    assert_eq!(curl(&probe.url("/"), &[]).text(), "env: clean\n");
}

/// A listener of the test's own, for a guest that must not reach it.
fn untouched_listener() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[test]
fn a_second_start_loads_the_compiled_artifact_from_disk() {
    let data = TempDir::new("cache");
    let module = echo_rust();
    let first = Daemon::run(&module, &data.0, &[], &[]);
    assert!(
        first.log_text().contains("source=\"compiled\""),
        "{}",
        first.log_text()
    );
    drop(first);
    let second = Daemon::run(&module, &data.0, &[], &[]);
    let log = second.log_text();
    assert!(log.contains("source=\"cache\""), "{log}");
    assert_eq!(
        curl(&second.url("/x"), &["--data-binary", "ok"]).body,
        b"ok"
    );
}

#[test]
fn bad_modules_are_refused_at_once_with_the_cause() {
    let data = TempDir::new("refuse");
    let hello = std::fs::read(wat_guest("hello")).expect("hello");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"#!/bin/sh\necho not wasm\n".to_vec(),
            "not a WebAssembly module",
        ),
        ("empty", Vec::new(), "empty"),
        (
            "truncated",
            hello[..hello.len() / 2].to_vec(),
            "malformed or truncated",
        ),
        (
            "reactor",
            std::fs::read(wat_guest("reactor")).expect("reactor"),
            "not a WASI command",
        ),
        (
            "foreign",
            std::fs::read(wat_guest("foreign")).expect("foreign"),
            "`env`.`open_socket`",
        ),
    ];
    for (name, bytes, cause) in cases {
        let path = data.path(&format!("{name}.wasm"));
        std::fs::write(&path, &bytes).expect("write");
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("run")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path("data"))
            .output()
            .expect("run outpost");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains(cause),
            "{name}: {stderr:?} does not name {cause:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

/// The wasix host behind the same command: same bytes, same isolation, same deadline.
#[test]
fn the_wasix_host_serves_isolates_and_stops_guests() {
    let data = TempDir::new("wasix");
    let echo = Daemon::run(&echo_rust(), &data.0, &["--host", "wasix"], &[]);
    assert!(
        echo.log_text().contains("host=Wasix"),
        "{}",
        echo.log_text()
    );
    let reply = curl(&echo.url("/w?status=201"), &["--data-binary", "over wasix"]);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (201, &b"over wasix"[..])
    );

    // WASIX's own socket calls, aimed at a listener the test holds open: the call fails with
    // the errno of wasix's unsupported networking, and nothing connects.
    let (listener, port) = untouched_listener();
    let net = Daemon::run(&wat_guest("wasix_connect"), &data.0, &[], &[]);
    assert!(net.log_text().contains("host=Wasix"), "{}", net.log_text());
    let reply = curl(&net.url("/"), &["--data-binary", &port.to_string()]);
    // The socket is opened (wasix creates it lazily) but the connect is refused: ENOTSUP (58).
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "sock_open: 0\nsock_connect: 58\n"),
        "{}",
        net.log_text()
    );
    assert!(
        listener.accept().is_err(),
        "the guest reached the test's listener"
    );
    // The p1 imports on wasix: fd 3 is the root of wasix's in-memory filesystem, preopened
    // without the right to open paths in it (ENOTCAPABLE, 76); the directory is neither read
    // nor written (EISDIR, 31) nor a socket (ENOTSOCK, 57). proc_raise(SIGKILL) ends the guest,
    // so its line never comes.
    let files = Daemon::run(&wat_guest("isolation"), &data.0, &["--host", "wasix"], &[]);
    let reply = curl(&files.url("/"), &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (
            200,
            "preopens: 3\npath_open: 76\npath_filestat_get: 76\nfd_read: 31\nfd_write: 31\n\
             sock_accept: 57\nsock_recv: 57\nsock_send: 57\nsock_shutdown: 57\n"
        ),
        "{}",
        files.log_text()
    );
    let probe = Daemon::run(
        &test_guest("probe"),
        &data.0,
        &["--host", "wasix"],
        &[("OUTPOST_PROBE_SECRET", "hunter2")],
    );
    let text = curl(&probe.url("/"), &[]).text();
    assert_eq!(text, "env: clean\n");

    let mut looping = Daemon::run(
        &wat_guest("loop"),
        &data.0,
        &[
            "--host",
            "wasix",
            "--fuel",
            "1000000000000000",
            "--timeout",
            "500ms",
        ],
        &[],
    );
    let reply = curl(&looping.url("/"), &[]);
    assert_eq!(reply.status, 504);
    assert!(
        reply.elapsed < Duration::from_millis(1500),
        "{:?}",
        reply.elapsed
    );
    assert!(looping.alive());
}

/// `outpost run --env` and the guest's arguments: argv[0] is the app's name (the module's file
/// stem), the arguments follow; a request variable wins over a `--env` one of the same name; a
/// guest that exits 1 after a complete response still gets it sent (200), and its stderr goes
/// to the log.
#[test]
fn run_gives_the_guest_its_env_and_args_and_request_variables_win() {
    let data = TempDir::new("env");
    let daemon = Daemon::run(
        &test_guest("env"),
        &data.0,
        &[
            "--env",
            "GREETING=hello there",
            "--env",
            "REQUEST_METHOD=FAKE",
            "--env",
            "EXIT=1",
            "--",
            "one",
            "two words",
        ],
        &[],
    );
    let reply = curl(&daemon.url("/?GREETING,REQUEST_METHOD,EXIT,HOME"), &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (
            200,
            "arg0: env\narg1: one\narg2: two words\nGREETING=hello there\nREQUEST_METHOD=GET\n\
             EXIT=1\nHOME unset\n"
        ),
        "{}",
        daemon.log_text()
    );
    let until = Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("stderr: env guest done") {
        assert!(Instant::now() < until, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The engine fingerprint from a "module ready" log line.
fn fingerprint(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("module ready"))
        .and_then(|l| l.split("fingerprint=\"").nth(1))
        .and_then(|f| f.split('"').next())
        .unwrap_or_else(|| panic!("no fingerprint in {log}"))
        .to_string()
}

/// `--compiler singlepass` compiles with another engine (its own fingerprint: the artifact
/// Cranelift left in the same cache is not taken) and serves the same bytes; `--concurrency 1`
/// lets one request run at once and refuses the next meanwhile with 503 and Retry-After.
#[test]
fn run_takes_the_singlepass_compiler_and_a_concurrency_limit() {
    let data = TempDir::new("singlepass");
    let body = ["--data-binary", "the same bytes"];
    let cranelift = Daemon::run(&echo_rust(), &data.0, &[], &[]);
    let reply = curl(&cranelift.url("/x"), &body);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, &b"the same bytes"[..])
    );
    let cranelift_engine = fingerprint(&cranelift.log_text());
    drop(cranelift);
    let singlepass = Daemon::run(&echo_rust(), &data.0, &["--compiler", "singlepass"], &[]);
    let log = singlepass.log_text();
    assert!(log.contains("source=\"compiled\""), "{log}");
    assert_ne!(fingerprint(&log), cranelift_engine, "{log}");
    let reply = curl(&singlepass.url("/x"), &body);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, &b"the same bytes"[..])
    );

    let one = Daemon::run(&test_guest("stream"), &data.0, &["--concurrency", "1"], &[]);
    let url = one.url("/?sleep=3000");
    let mut first = Command::new("curl")
        .args(["-sS", "-N", &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    // The first request runs once its first line arrives.
    let mut stdout = first.stdout.take().expect("stdout");
    let mut line = [0u8; 6];
    stdout.read_exact(&mut line).expect("first line");
    assert_eq!(&line, b"first\n");
    let second = curl(&one.url("/?sleep=0"), &[]);
    assert_eq!(second.status, 503, "{}", one.log_text());
    assert_eq!(second.header("retry-after"), Some("1"));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest");
    assert_eq!(rest, "second\n");
    let _ = first.wait();
    assert_eq!(curl(&one.url("/?sleep=0"), &[]).status, 200);
}

/// A guest that traps from 20,000 calls deep: wasmer walks every frame under the unwinder's
/// lock as it raises the trap, which takes milliseconds, and a deadline's or a slice's
/// interrupt lands meanwhile. Before `sandbox/signals.rs`, wasmer's handler acted on it there,
/// in host code, and deadlocked on that lock: the first request (inline, its 2 ms slice ending
/// mid-unwind) hung to its 10 s deadline or for good. Each request must now get its trap's 500
/// (or its deadline's 504) at once, and the node keep serving.
#[test]
fn a_deadline_landing_while_a_trap_is_raised_hangs_nothing() {
    let data = TempDir::new("deep-trap");
    for (timeout, statuses) in [("10s", &[500][..]), ("5ms", &[500, 504][..])] {
        let mut daemon = Daemon::run(
            &wat_guest("deep_trap"),
            &data.0,
            &["--timeout", timeout],
            &[],
        );
        for round in 0..6 {
            let reply = curl(&daemon.url("/"), &["--max-time", "5"]);
            assert!(
                statuses.contains(&reply.status),
                "timeout {timeout}, round {round}: {} after {:?}\n{}",
                reply.status,
                reply.elapsed,
                daemon.log_text()
            );
            assert!(
                reply.elapsed < Duration::from_secs(2),
                "timeout {timeout}, round {round}: answered after {:?}",
                reply.elapsed
            );
        }
        assert!(daemon.alive(), "timeout {timeout}: the daemon went down");
    }
}

/// A guest that spends nearly all its time in a library call (a loop of 64 MiB `memory.fill`s)
/// with fuel to spare (10^12: hours of filling) still ends at its deadline, on the lean host and
/// on the wasix host: the interrupts that land in the fill are declined, and the first after the
/// deadline empties its fuel instead, so its next fuel check stops it. The fuel it reports is
/// what it used, not its whole budget.
#[test]
fn a_guest_looping_in_a_library_call_still_ends_at_its_deadline() {
    let data = TempDir::new("fill-loop");
    for host in ["lean", "wasix"] {
        let args = [
            "--timeout",
            "300ms",
            "--fuel",
            "1000000000000",
            "--memory",
            "128MiB",
            "--host",
            host,
        ];
        let mut daemon = Daemon::run(&wat_guest("fill_loop"), &data.0, &args, &[]);
        for round in 0..2 {
            let reply = curl(&daemon.url("/"), &["--max-time", "10"]);
            assert_eq!(
                reply.status,
                504,
                "{host} round {round}: {}",
                daemon.log_text()
            );
            assert!(
                reply.elapsed < Duration::from_secs(2),
                "{host} round {round}: answered after {:?}",
                reply.elapsed
            );
        }
        let log = daemon.log_with("time limit exceeded", 2);
        for line in log.lines().filter(|l| l.contains("time limit exceeded")) {
            let fuel: u64 = line
                .split_once(" fuel=")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            assert!(
                fuel < 1_000_000_000_000,
                "{host}: the whole budget reported used: {line}"
            );
        }
        assert!(daemon.alive(), "{host}: the daemon went down");
    }
}
