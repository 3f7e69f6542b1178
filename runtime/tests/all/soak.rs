//! A bounded soak (about a minute): good requests over HTTP/1.1, HTTP/2 and HTTP/3 interleaved
//! with every hostile guest and with hostile clients (slowloris, oversized heads and bodies,
//! aborted uploads, connection floods within the caps, garbage UDP to the QUIC port). Not one
//! good request may fail, and the node's memory, threads and file descriptors stay flat after
//! the warm-up. `scripts/soak` runs the same mix for longer (docs/reliability.md).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::edge::make_pki;
use crate::support::*;

/// Hostile guests cycled during the soak (each ends in its own way within its deadline).
const HOSTILE: &[&str] = &[
    "hostile_fdwrite_huge",
    "hostile_iovec_count",
    "hostile_table_grow",
    "hostile_table_huge",
    "hostile_start_fill",
    "hostile_start_loop",
    "hostile_stderr_flood",
    "hostile_stdout_flood",
    "hostile_sleep",
    "loop",
    "oom",
    "trap",
    "stack",
    "badcgi",
];

fn config(dir: &TempDir) -> String {
    let d = |name: &str| dir.path(name).display().to_string();
    let mut apps = String::new();
    for name in HOSTILE {
        apps.push_str(&app_routed(
            name,
            "hostile",
            "hostile.test",
            &wat_guest(name),
        ));
    }
    format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
http3 = "127.0.0.1:0"
admin = "127.0.0.1:0"
header_timeout = "1s"
max_connections = 400
max_header_bytes = "16KiB"

[tls]
cert = "{node_pem}"
key = "{node_key}"

[[tenant]]
name = "good"
allow_unsigned = true
[tenant.limits]
request_body = "64KiB"

[[tenant]]
name = "hostile"
allow_unsigned = true
[tenant.limits]
memory = "32MiB"
response_body = "1MiB"
fuel = 200_000_000
timeout = "400ms"
concurrency = 16

[[app]]
name = "hello"
tenant = "good"
source = "file:{hello}"

[[app]]
name = "echo"
tenant = "good"
source = "file:{echo}"

[[route]]
host = "node.test"
app = "hello"

[[route]]
host = "node.test"
path = "/echo"
app = "echo"
{apps}"#,
        data = d("data"),
        node_pem = d("node.pem"),
        node_key = d("node.key"),
        hello = wat_guest("hello").display(),
        echo = echo_rust().display(),
    )
}

/// (threads, resident KiB, open file descriptors) of the node.
fn footprint(node: &Daemon) -> (u64, u64, usize) {
    let (threads, rss) = node.threads_and_rss();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    (threads, rss, fds)
}

struct Counts {
    good: AtomicU64,
    failed: AtomicU64,
    hostile: AtomicU64,
}

#[test]
fn good_requests_never_fail_among_hostile_guests_and_clients() {
    let _alone = heavy_test();
    let dir = TempDir::new("soak");
    let pki = make_pki(&dir.0);
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir)).expect("config");
    let node = Daemon::serve_env(&cfg, &["http", "https", "http3", "admin"], &[]);
    let https_port = node.https.rsplit(':').next().unwrap_or("0").to_string();
    let quic = node.http3.clone();
    let plain = node.addr.clone();
    let ca = pki.ca.display().to_string();
    let counts = Arc::new(Counts {
        good: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        hostile: AtomicU64::new(0),
    });
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let run_phase = |secs: u64| {
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + Duration::from_secs(secs);
        let mut workers = Vec::new();
        // Good clients: curl over TLS (HTTP/1.1, HTTP/2), one request at a time.
        for version in ["--http1.1", "--http2"] {
            let (counts, failures, stop) = (counts.clone(), failures.clone(), stop.clone());
            let (port, ca) = (https_port.clone(), ca.clone());
            workers.push(std::thread::spawn(move || {
                let resolve = format!("node.test:{port}:127.0.0.1");
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (path, body) = if n.is_multiple_of(4) {
                        ("/echo", "x")
                    } else {
                        ("/", "")
                    };
                    let url = format!("https://node.test:{port}{path}");
                    let mut args = vec![version, "--resolve", &resolve, "--cacert", &ca];
                    if !body.is_empty() {
                        args.extend(["--data-binary", "soak"]);
                    }
                    let reply = curl(&url, &args);
                    let ok = reply.status == 200 && (path == "/echo" || reply.text() == "hello\n");
                    counts.good.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!(
                                "{version} {path}: {} {}",
                                reply.status,
                                reply.text()
                            ));
                    }
                }
            }));
        }
        // Good client over HTTP/3: batches of requests on one connection.
        {
            let (counts, failures, stop) = (counts.clone(), failures.clone(), stop.clone());
            let (quic, ca) = (quic.clone(), ca.clone());
            workers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("python3")
                        .arg(repo_root().join("runtime/tests/clients/h3_client.py"))
                        .args(["--connect", &quic, "--url", "https://node.test/"])
                        .args(["--cacert", &ca, "--repeat", "50", "--parallel", "4"])
                        .output()
                        .expect("python3 with aioquic");
                    let json: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    let ok200 = json["statuses"]["200"].as_u64().unwrap_or(0);
                    counts.good.fetch_add(50, Ordering::Relaxed);
                    if !out.status.success() || ok200 != 50 {
                        counts
                            .failed
                            .fetch_add(50 - ok200.min(50), Ordering::Relaxed);
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!(
                                "HTTP/3: {json} {}",
                                String::from_utf8_lossy(&out.stderr)
                            ));
                    }
                }
            }));
        }
        // Hostile guests, eight at a time, over the plain listener.
        {
            let (counts, stop, plain) = (counts.clone(), stop.clone(), plain.clone());
            workers.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = HOSTILE[i % HOSTILE.len()];
                    i += 1;
                    let url = format!("http://{plain}/{name}");
                    let mut cmd = Command::new("curl");
                    cmd.args([
                        "-s",
                        "--max-time",
                        "5",
                        "--parallel",
                        "--parallel-immediate",
                        "-H",
                        "Host: hostile.test",
                    ]);
                    for _ in 0..8 {
                        cmd.args(["-o", "/dev/null", &url]);
                    }
                    let _ = cmd.output();
                    counts.hostile.fetch_add(8, Ordering::Relaxed);
                }
            }));
        }
        // Hostile clients on raw sockets.
        {
            let (stop, plain, https) = (
                stop.clone(),
                plain.clone(),
                format!("127.0.0.1:{https_port}"),
            );
            let quic = quic.clone();
            workers.push(std::thread::spawn(move || {
                let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    // Slowloris: half a head, held, on both TCP listeners.
                    let mut held = Vec::new();
                    for addr in [&plain, &https] {
                        for _ in 0..10 {
                            if let Ok(mut s) = TcpStream::connect(addr) {
                                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: node.test\r\nX-Slow: ");
                                held.push(s);
                            }
                        }
                    }
                    // A connection flood within the cap: open and drop.
                    for _ in 0..50 {
                        let _ = TcpStream::connect(&plain);
                    }
                    // An oversized head (431) and an oversized body (413), then an upload
                    // aborted half way.
                    if let Ok(mut s) = TcpStream::connect(&plain) {
                        let big = "a".repeat(20_000);
                        let _ = s.write_all(
                            format!("GET / HTTP/1.1\r\nHost: node.test\r\nX-Big: {big}\r\n\r\n")
                                .as_bytes(),
                        );
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 64];
                        let _ = s.read(&mut buf);
                    }
                    if let Ok(mut s) = TcpStream::connect(&plain) {
                        let _ = s.write_all(
                            b"POST /echo HTTP/1.1\r\nHost: node.test\r\nContent-Length: 10000000\r\n\r\n",
                        );
                        let _ = s.write_all(&[b'x'; 4096]);
                    }
                    if let Ok(mut s) = TcpStream::connect(&plain) {
                        let _ = s.write_all(
                            b"POST /echo HTTP/1.1\r\nHost: node.test\r\nContent-Length: 60000\r\n\r\n",
                        );
                        let _ = s.write_all(&[b'y'; 30000]);
                        // dropped here: the upload is aborted
                    }
                    // Garbage datagrams at the QUIC port.
                    for i in 0..200u64 {
                        let junk: Vec<u8> = (0..1200u64)
                            .map(|j| (j.wrapping_mul(31) ^ i ^ round) as u8)
                            .collect();
                        let _ = udp.send_to(&junk, &quic);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    drop(held);
                }
            }));
        }
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("soak worker");
        }
    };

    // scripts/soak sets a longer measured phase; CI runs the default.
    let secs = std::env::var("OUTPOST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    run_phase(15);
    let warm = footprint(&node);
    let good_before = counts.good.load(Ordering::Relaxed);
    run_phase(secs);
    let after = footprint(&node);
    let good = counts.good.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let hostile = counts.hostile.load(Ordering::Relaxed);
    eprintln!(
        "soak: {good} good requests ({} after warm-up), {failed} failed, {hostile} hostile; \
         (threads, RSS KiB, fds) after warm-up {warm:?}, at the end {after:?}",
        good - good_before
    );
    assert_eq!(
        failed,
        0,
        "good requests failed: {:?}\n{}",
        failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .take(10)
            .collect::<Vec<_>>(),
        node.log_text()
            .lines()
            .filter(|l| !l.contains("outpost::request"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(good - good_before > 100, "too few good requests ran");
    // Idle pooled memories keep up to 4 MiB resident each, whichever guests used them last:
    // the bound allows for that, and catches a leak of 10 KiB per request.
    assert!(
        after.1 < warm.1 + 32 * 1024,
        "RSS grew from {} to {} KiB",
        warm.1,
        after.1
    );
    assert!(
        after.0 <= warm.0 + 16,
        "threads grew from {} to {}",
        warm.0,
        after.0
    );
    assert!(
        after.2 <= warm.2 + 32,
        "fds grew from {} to {}",
        warm.2,
        after.2
    );
    let mut node = node;
    assert!(node.alive());
}
