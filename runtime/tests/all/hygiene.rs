//! Hostile inputs at the edges, through the real binary: guest output split anywhere, request
//! headers that would reach a guest as something else, the plain listener's caps, tenant text
//! in the node's log, and compiled artifacts on disk that this node did not write.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::*;

#[test]
fn a_head_split_inside_a_header_name_is_served_as_a_head() {
    let data = TempDir::new("split-head");
    let daemon = Daemon::run(&wat_guest("split_head"), &data.0, &[], &[]);
    let reply = curl(&daemon.url("/"), &[]);
    assert_eq!(reply.status, 200, "{}", daemon.log_text());
    assert_eq!(reply.header("x-foo"), Some("bar"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(reply.text(), "hello");
}

#[test]
fn tenant_stderr_cannot_forge_log_lines_and_bad_pointers_do_not_flood_the_log() {
    let data = TempDir::new("hostile-log");
    let daemon = Daemon::run(&wat_guest("hostile_log"), &data.0, &[], &[]);
    let reply = curl(&daemon.url("/"), &[]);
    assert_eq!((reply.status, reply.text().as_str()), (200, "logged\n"));
    daemon.log_with("stderr:", 1);
    let log = daemon.log_with("outpost::request", 1);
    for line in log.lines().filter(|l| l.contains("tenant=victim")) {
        assert!(
            line.contains("stderr: oops\\n2026-01-01"),
            "a tenant's stderr became a log line of its own: {line:?}\n{log}"
        );
    }
    assert!(!log.contains('\x1b'), "a terminal escape reached the log");
    assert!(
        !log.contains("beyond the bounds"),
        "each bad pointer logged a wasmer warning:\n{log}"
    );
}

fn serve_config(dir: &TempDir, listen_extra: &str) -> std::path::PathBuf {
    let cfg = dir.path("node.toml");
    let text = format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
{listen_extra}

[[tenant]]
name = "dev"
allow_unsigned = true

[[app]]
name = "hello"
tenant = "dev"
source = "file:{hello}"

[[app]]
name = "echo"
tenant = "dev"
source = "file:{echo}"

[[route]]
host = "localhost"
app = "hello"

[[route]]
host = "*.example.test"
path = "/echo"
app = "echo"
"#,
        data = dir.path("data").display(),
        hello = wat_guest("hello").display(),
        echo = echo_rust().display(),
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

#[test]
fn request_headers_reach_the_guest_only_as_what_they_are() {
    let dir = TempDir::new("hygiene-headers");
    let node = Daemon::serve(&serve_config(&dir, ""));

    // httpoxy: a Proxy header must not become HTTP_PROXY; an underscore spelling must not
    // shadow the header a proxy set.
    let meta = curl(
        &node.url("/echo/meta"),
        &[
            "-H",
            "Host: shop.example.test",
            "-H",
            "Proxy: http://127.0.0.1:9",
            "-H",
            "X_Forwarded_For: 6.6.6.6",
            "-H",
            "X-Forwarded-For: 1.2.3.4",
        ],
    );
    assert_eq!(meta.status, 200, "{}", node.log_text());
    let text = meta.text();
    assert!(!text.contains("HTTP_PROXY"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");
    assert!(
        text.contains("header: HTTP_X_FORWARDED_FOR=1.2.3.4"),
        "{text}"
    );
    assert!(
        text.contains("header: HTTP_HOST=shop.example.test"),
        "{text}"
    );

    // An absolute-form target: its authority replaces Host, for routing and for HTTP_HOST.
    let absolute = curl(
        &node.url("/"),
        &[
            "--request-target",
            "http://shop.example.test/echo/meta",
            "-H",
            "Host: localhost",
        ],
    );
    assert_eq!(absolute.status, 200, "{}", node.log_text());
    let text = absolute.text();
    assert!(
        text.contains("header: HTTP_HOST=shop.example.test"),
        "{text}"
    );
    assert!(!text.contains("localhost"), "{text}");
    let other_way = curl(
        &node.url("/"),
        &[
            "--request-target",
            "http://localhost/echo/meta",
            "-H",
            "Host: shop.example.test",
        ],
    );
    assert_eq!(
        (other_way.status, other_way.text().as_str()),
        (200, "hello\n"),
        "routed by the authority, not the Host header"
    );
}

/// Send one request on an open connection and read its response (hello.wat's is small).
fn request_on(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A connection that has been served once (and so holds a slot), retrying while slots of
/// connections that just closed are still being released.
fn served_connection(addr: &str) -> TcpStream {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(addr).expect("connect");
        if request_on(&mut stream).is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return stream;
        }
        assert!(Instant::now() < until, "no connection slot came free");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_plain_listener_caps_connections_and_request_heads() {
    let dir = TempDir::new("hygiene-plain-caps");
    let node = Daemon::serve(&serve_config(
        &dir,
        "max_connections = 2\nmax_header_bytes = \"16KiB\"\nheader_timeout = \"30s\"",
    ));
    let url = node.url("/");

    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let refused = curl(&url, &["-H", "Host: localhost", "-H", &big]);
    assert_eq!(refused.status, 431, "a 32 KiB head past a 16 KiB cap");
    // A 960 KiB head (curl sends no request larger than 1 MiB): the 431 goes out while the
    // client is still sending most of it, and must reach it all the same (not a reset).
    let line = 16 * 1024;
    let headers: String = (0..60)
        .map(|i| format!("X-Big-{i}: {}\n", "a".repeat(line - 12)))
        .collect();
    let header_file = dir.path("headers.txt");
    std::fs::write(&header_file, headers).expect("header file");
    let header_arg = format!("@{}", header_file.display());
    let refused = curl(&url, &["-H", "Host: localhost", "-H", &header_arg]);
    assert_eq!(
        (refused.status, refused.curl_exit),
        (431, 0),
        "a 960 KiB head"
    );
    // The same from a client on a slow link, still sending when the 431 is written: it sends
    // its whole head, then reads the answer.
    let port = node.addr.rsplit(':').next().unwrap_or("0");
    for round in 0..3 {
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("runtime/tests/clients/slow_head.py"))
            .args([port, "localhost", "960"])
            .output()
            .expect("python3");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "slow client, round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fits = format!("X-Fits: {}", "a".repeat(4 * 1024));
    let served = curl(&url, &["-H", "Host: localhost", "-H", &fits]);
    assert_eq!((served.status, served.text().as_str()), (200, "hello\n"));

    // Two connections held open (each has been served, so each holds its slot)...
    let addr = node.addr.clone();
    let mut held: Vec<TcpStream> = (0..2).map(|_| served_connection(&addr)).collect();
    // ...so a third is closed without an answer.
    let mut third = TcpStream::connect(&addr).expect("connect");
    let answer = request_on(&mut third).unwrap_or_default();
    assert!(
        !answer.contains("HTTP/1.1"),
        "a third connection was served past max_connections = 2: {answer}"
    );
    crate::serve::wait_for_metric(&node, "outpost_connections_refused_total", 1.0);
    // Closing one frees its slot.
    held.pop();
    served_connection(&addr);
    drop(held);
}

fn artifact_of(data: &std::path::Path, module: &std::path::Path) -> std::path::PathBuf {
    let digest = hex::encode(Sha256::digest(std::fs::read(module).expect("module")));
    let dir = data.join("artifacts");
    std::fs::read_dir(&dir)
        .expect("artifacts")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&digest) && n.ends_with(".bin"))
        })
        .unwrap_or_else(|| panic!("no artifact for {digest} in {}", dir.display()))
}

fn assert_split_head_served(daemon: &Daemon) {
    let reply = curl(&daemon.url("/"), &[]);
    assert_eq!(reply.status, 200, "{}", daemon.log_text());
    assert_eq!(reply.header("x-foo"), Some("bar"), "{}", daemon.log_text());
    assert_eq!(reply.text(), "hello");
}

#[test]
fn a_damaged_or_foreign_artifact_is_recompiled_never_loaded() {
    let data = TempDir::new("artifact-trust");
    let (ours, other) = (wat_guest("split_head"), wat_guest("hello"));
    drop(Daemon::run(&ours, &data.0, &[], &[]));
    drop(Daemon::run(&other, &data.0, &[], &[]));
    let (ours_artifact, other_artifact) =
        (artifact_of(&data.0, &ours), artifact_of(&data.0, &other));

    // Another module's valid artifact under this module's name.
    std::fs::copy(&other_artifact, &ours_artifact).expect("replace");
    let daemon = Daemon::run(&ours, &data.0, &[], &[]);
    let log = daemon.log_text();
    assert!(log.contains("failed authentication"), "{log}");
    assert!(log.contains("source=\"compiled\""), "{log}");
    assert_split_head_served(&daemon);
    drop(daemon);

    // One flipped byte in the compiled code.
    let mut bytes = std::fs::read(&ours_artifact).expect("artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&ours_artifact, bytes).expect("damage");
    let daemon = Daemon::run(&ours, &data.0, &[], &[]);
    let log = daemon.log_text();
    assert!(log.contains("failed authentication"), "{log}");
    assert!(log.contains("source=\"compiled\""), "{log}");
    assert_split_head_served(&daemon);
    drop(daemon);

    // The recompiled artifact is trusted again on the next start.
    let daemon = Daemon::run(&ours, &data.0, &[], &[]);
    assert!(
        daemon.log_text().contains("source=\"cache\""),
        "{}",
        daemon.log_text()
    );
    assert_split_head_served(&daemon);
}

#[test]
fn a_cache_directory_other_users_can_write_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let data = TempDir::new("artifact-perms");
    let module = wat_guest("hello");
    drop(Daemon::run(&module, &data.0, &[], &[]));
    let artifacts = data.0.join("artifacts");
    std::fs::set_permissions(&artifacts, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("run")
        .arg(&module)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start outpost");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("outpost started with a world-writable artifact cache");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success());
    assert!(stderr.contains("writable by other users"), "{stderr}");
}
