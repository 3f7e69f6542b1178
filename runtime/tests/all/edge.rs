//! The PoP daemon over TLS and QUIC with real clients: curl (HTTP/1.1, HTTP/2) and an aioquic
//! HTTP/3 client, two tenants with their own certificates, admission limits, slowloris, the
//! metrics, and a drain on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// A test CA and leaf certificates (CA:FALSE) for the tenants and the node.
pub(crate) struct Pki {
    pub(crate) ca: PathBuf,
}

fn issue(dir: &Path, name: &str, sans: &[&str], issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, sans[0]);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
}

pub(crate) fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "outpost test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("write ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    issue(dir, "acme", &["shop.acme.test"], &issuer);
    issue(dir, "globex", &["*.globex.test"], &issuer);
    issue(dir, "node", &["node.test", "slow.test"], &issuer);
    Pki { ca }
}

fn node_config(dir: &TempDir) -> String {
    let d = |name: &str| dir.path(name).display().to_string();
    format!(
        r#"[node]
data_dir = "{data}"

[listen]
https = "127.0.0.1:0"
http3 = "127.0.0.1:0"
admin = "127.0.0.1:0"
header_timeout = "1s"

[tls]
cert = "{node_pem}"
key = "{node_key}"

[[tenant]]
name = "acme"
allow_unsigned = true
[[tenant.cert]]
cert = "{acme_pem}"
key = "{acme_key}"

[[tenant]]
name = "globex"
allow_unsigned = true
[[tenant.cert]]
cert = "{globex_pem}"
key = "{globex_key}"

[[tenant]]
name = "slow"
allow_unsigned = true
[tenant.limits]
concurrency = 1
request_body = "1KiB"

[[app]]
name = "shop"
tenant = "acme"
source = "file:{echo}"

[[app]]
name = "shop-stream"
tenant = "acme"
source = "file:{stream}"

[[app]]
name = "greet"
tenant = "globex"
source = "file:{hello}"

[[app]]
name = "slow"
tenant = "slow"
source = "file:{stream}"

[[app]]
name = "slow-drain"
tenant = "slow"
source = "file:{drain}"

[[route]]
host = "shop.acme.test"
app = "shop"

[[route]]
host = "shop.acme.test"
path = "/stream"
app = "shop-stream"

[[route]]
host = "*.globex.test"
app = "greet"

[[route]]
host = "slow.test"
app = "slow"

[[route]]
host = "slow.test"
path = "/drain"
app = "slow-drain"
"#,
        data = d("data"),
        node_pem = d("node.pem"),
        node_key = d("node.key"),
        acme_pem = d("acme.pem"),
        acme_key = d("acme.key"),
        globex_pem = d("globex.pem"),
        globex_key = d("globex.key"),
        echo = echo_rust().display(),
        stream = test_guest("stream").display(),
        hello = hello_rust().display(),
        drain = wat_guest("drain").display(),
    )
}

struct Edge {
    node: Daemon,
    pki: Pki,
    dir: TempDir,
}

impl Edge {
    fn start(tag: &str) -> Self {
        Self::start_env(tag, &[])
    }

    fn start_env(tag: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_with(tag, envs, "")
    }

    /// With extra `[listen]` lines.
    fn start_with(tag: &str, envs: &[(&str, &str)], listen: &str) -> Self {
        let dir = TempDir::new(tag);
        let pki = make_pki(&dir.0);
        let cfg = dir.path("node.toml");
        let text = node_config(&dir).replacen(
            "header_timeout = \"1s\"\n",
            &format!("header_timeout = \"1s\"\n{listen}\n"),
            1,
        );
        std::fs::write(&cfg, text).expect("config");
        let node = Daemon::serve_env(&cfg, &["https", "http3", "admin"], envs);
        Self { node, pki, dir }
    }

    fn port(&self) -> &str {
        self.node.https.rsplit(':').next().unwrap_or("0")
    }

    fn quic_port(&self) -> &str {
        self.node.http3.rsplit(':').next().unwrap_or("0")
    }

    /// curl over TLS to `host`, resolved to loopback, trusting only the test CA.
    fn curl(&self, version: &str, host: &str, path: &str, extra: &[&str]) -> (Reply, String) {
        let resolve = format!("{host}:{}:127.0.0.1", self.port());
        let url = format!("https://{host}:{}{path}", self.port());
        let stderr_file = self.dir.path(&format!("curl-{}.err", unique()));
        let mut args: Vec<&str> = vec![version, "-v", "--resolve", &resolve, "--cacert"];
        let ca = self.pki.ca.display().to_string();
        args.push(&ca);
        args.push("--stderr");
        let stderr_path = stderr_file.display().to_string();
        args.push(&stderr_path);
        args.extend_from_slice(extra);
        let reply = curl(&url, &args);
        let verbose = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        (reply, verbose)
    }

    /// The aioquic client against the QUIC port.
    fn h3(
        &self,
        host: &str,
        path: &str,
        method: &str,
        data: Option<&Path>,
    ) -> (serde_json::Value, Vec<u8>) {
        self.h3_with(host, path, method, data, &[])
    }

    fn h3_with(
        &self,
        host: &str,
        path: &str,
        method: &str,
        data: Option<&Path>,
        extra: &[&str],
    ) -> (serde_json::Value, Vec<u8>) {
        let out = self.dir.path(&format!("h3-{}.out", unique()));
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("runtime/tests/clients/h3_client.py"))
            .args(["--connect", &format!("127.0.0.1:{}", self.quic_port())])
            .args(["--url", &format!("https://{host}{path}")])
            .arg("--cacert")
            .arg(&self.pki.ca)
            .args(["--method", method])
            .arg("--out")
            .arg(&out);
        if let Some(data) = data {
            cmd.arg("--data-file").arg(data);
        }
        cmd.args(extra);
        let result = cmd
            .output()
            .expect("python3 with aioquic (scripts/test installs it)");
        assert!(
            result.status.success(),
            "HTTP/3 request failed: {}\n{}",
            String::from_utf8_lossy(&result.stderr),
            self.node.log_text()
        );
        let json: serde_json::Value =
            serde_json::from_slice(&result.stdout).expect("h3 client JSON");
        (json, std::fs::read(&out).unwrap_or_default())
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn each_tenant_is_served_with_its_certificate_over_tcp_and_quic() {
    let edge = Edge::start("edge-certs");
    for version in ["--http1.1", "--http2"] {
        let (shop, verbose) = edge.curl(
            version,
            "shop.acme.test",
            "/echo-me?x=1",
            &["--data-binary", "acme body"],
        );
        assert_eq!(shop.status, 200, "{verbose}");
        assert_eq!(shop.body, b"acme body");
        assert_eq!(shop.header("x-echo-path"), Some("/echo-me"));
        assert!(verbose.contains("subject: CN=shop.acme.test"), "{verbose}");
        let expected_alt = format!("h3=\":{}\"; ma=86400", edge.quic_port());
        assert_eq!(shop.header("alt-svc"), Some(expected_alt.as_str()));
        let proto = if version == "--http2" {
            "HTTP/2 200"
        } else {
            "HTTP/1.1 200"
        };
        assert!(verbose.contains(&format!("< {proto}")), "{verbose}");

        let (greet, verbose) = edge.curl(version, "www.globex.test", "/", &[]);
        assert_eq!(
            (greet.status, greet.text().as_str()),
            (200, "Hello from outpost!\n")
        );
        assert!(verbose.contains("subject: CN=*.globex.test"), "{verbose}");
    }

    let (json, body) = edge.h3("www.globex.test", "/", "GET", None);
    assert_eq!(json["status"], 200);
    assert_eq!(body, b"Hello from outpost!\n");
    // Every protocol dates its responses (RFC 9110 6.6.1); hyper does it for HTTP/1.1 and 2.
    let date = json["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|kv| kv[0] == "date"))
        .and_then(|kv| kv[1].as_str())
        .unwrap_or_else(|| panic!("no Date over HTTP/3: {json}"));
    let sent = httpdate::parse_http_date(date).expect("an HTTP date");
    let skew = std::time::SystemTime::now()
        .duration_since(sent)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < std::time::Duration::from_secs(60), "Date {date}");

    let payload: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let file = edge.dir.path("payload.bin");
    std::fs::write(&file, &payload).expect("payload");
    let (json, body) = edge.h3("shop.acme.test", "/upload", "POST", Some(&file));
    assert_eq!(json["status"], 200);
    assert_eq!(body.len(), payload.len());
    assert!(
        body == payload,
        "the 5 MiB body came back different over HTTP/3"
    );
}

#[test]
fn one_quic_connection_serves_thousands_of_requests_in_steady_memory() {
    use std::io::{BufRead, Write};
    let edge = Edge::start("edge-h3-many");
    // One connection, two rounds of 10,000 requests (the first also warms up). After each the
    // client waits with the connection open, and the node's memory is read then: what a finished request held must be freed when it finishes, not when the
    // connection ends (a request task kept until then costs about 600 bytes in this debug
    // build: 10,000 of them show as 6 MiB).
    let mut client = Command::new("python3")
        .arg(repo_root().join("runtime/tests/clients/h3_client.py"))
        .args(["--connect", &format!("127.0.0.1:{}", edge.quic_port())])
        .args(["--url", "https://www.globex.test/"])
        .arg("--cacert")
        .arg(&edge.pki.ca)
        .args(["--rounds", "2", "--repeat", "10000", "--parallel", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with aioquic (scripts/test installs it)");
    let mut to_client = client.stdin.take().expect("stdin");
    let mut from_client = std::io::BufReader::new(client.stdout.take().expect("stdout"));
    let mut rss = Vec::new();
    for round in 1..=2 {
        let mut line = String::new();
        from_client.read_line(&mut line).expect("round line");
        let reply: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("round {round}: {e}: {line:?}\n{}", edge.node.log_text()));
        assert_eq!(reply["round"], round, "{reply}");
        assert_eq!(reply["statuses"]["200"], 10_000, "{reply}");
        rss.push(edge.node.threads_and_rss().1);
        writeln!(to_client, "go").expect("next round");
    }
    let mut last = String::new();
    from_client.read_line(&mut last).expect("final line");
    let status = client.wait().expect("client");
    assert!(status.success(), "{last}\n{}", edge.node.log_text());
    assert!(last.contains(r#""status": 200"#), "{last}");
    let (after_first, after_second) = (rss[0], rss[1]);
    eprintln!("RSS with the connection open: {after_first} KiB, then {after_second} KiB");
    assert!(
        after_second < after_first + 3 * 1024,
        "RSS grew from {after_first} KiB to {after_second} KiB over 10,000 requests on one open \
         connection"
    );
}

/// The requests of one HTTP/2 or HTTP/3 connection are served together in the connection's
/// task (`http/streams.rs`), not one task each: a request whose guest is still running (the
/// stream guest, asleep for 4 s) holds none of the others on its connection. The 100 requests
/// sent beside it, 8 at a time, all end before it does.
#[test]
fn a_slow_request_holds_none_of_its_neighbours_on_a_multiplexed_connection() {
    let edge = Edge::start("edge-neighbours");
    let slow = "/stream?sleep=4000";

    // HTTP/2: curl multiplexes its transfers on one connection and reports each as it ends.
    let origin = format!("https://shop.acme.test:{}", edge.port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "60", "--parallel"])
        .args(["--parallel-max", "8", "--cacert"])
        .arg(&edge.pki.ca)
        .args([
            "--resolve",
            &format!("shop.acme.test:{}:127.0.0.1", edge.port()),
        ])
        .args([
            "-w",
            "%{http_code} %{http_version} %{num_connects} %{url}\\n",
        ])
        .args(["-o", "/dev/null", &format!("{origin}{slow}")]);
    for i in 0..100 {
        cmd.args(["-o", "/dev/null", &format!("{origin}/?{i}")]);
    }
    let out = cmd.output().expect("curl (scripts/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let ended: Vec<Vec<&str>> = report.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(
        ended.len(),
        101,
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ended.iter().all(|e| e[0] == "200" && e[1] == "2"),
        "every request answered 200 over HTTP/2:\n{report}"
    );
    let connects: u32 = ended.iter().filter_map(|e| e[2].parse::<u32>().ok()).sum();
    assert_eq!(connects, 1, "all on one connection:\n{report}");
    assert!(
        ended[100][3].ends_with(slow),
        "the slow request ended last:\n{report}"
    );

    // HTTP/3: the aioquic client's --beside.
    let (json, _) = edge.h3_with(
        "shop.acme.test",
        "/",
        "GET",
        None,
        &[
            "--repeat",
            "100",
            "--parallel",
            "8",
            "--beside",
            &format!("https://shop.acme.test{slow}"),
        ],
    );
    assert_eq!(json["statuses"]["200"], 100, "{json}");
    assert_eq!(json["beside"]["status"], 200, "{json}");
    let others = json["others_after"].as_f64().expect("others_after");
    let slow = json["beside"]["after"].as_f64().expect("beside.after");
    assert!(
        others < slow && slow >= 4.0,
        "the others ended {others} s after the start and the slow one {slow} s: {json}"
    );
}

#[test]
fn unknown_hosts_full_tenants_and_large_bodies_are_refused() {
    let edge = Edge::start("edge-admission");
    let (unknown, _) = edge.curl("--http1.1", "node.test", "/", &[]);
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.text().starts_with("outpost:"),
        "the 404 comes from outpost itself"
    );

    let (big, _) = edge.curl(
        "--http2",
        "slow.test",
        "/",
        &["--data-binary", &"x".repeat(2048)],
    );
    assert_eq!(big.status, 413);

    // The slow tenant allows one request at once: a second one meanwhile gets 503.
    let background = {
        let url = format!("https://slow.test:{}/?sleep=1500", edge.port());
        let resolve = format!("slow.test:{}:127.0.0.1", edge.port());
        let ca = edge.pki.ca.display().to_string();
        std::thread::spawn(move || curl(&url, &["--resolve", &resolve, "--cacert", &ca]))
    };
    crate::serve::wait_for_metric(&edge.node, "outpost_active_instances{tenant=\"slow\"}", 1.0);
    let (full, _) = edge.curl("--http1.1", "slow.test", "/?sleep=0", &[]);
    assert_eq!(full.status, 503);
    assert_eq!(full.header("retry-after"), Some("1"));
    let first = background.join().expect("background");
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "first\nsecond\n")
    );
    let (after, _) = edge.curl("--http1.1", "slow.test", "/?sleep=0", &[]);
    assert_eq!(after.status, 200, "the slot is free again");
}

/// A body over the tenant's `request_body` cap (1 KiB here) with no length declared up front
/// (chunked over HTTP/1.1, DATA frames with no content-length over HTTP/2 and HTTP/3) is
/// refused with 413 while it streams to a guest that reads it all before answering; one under
/// the cap is read whole.
#[test]
fn a_streamed_body_over_the_cap_is_refused_on_every_protocol() {
    let edge = Edge::start("edge-streamed-cap");
    let over = edge.dir.path("over.bin");
    std::fs::write(&over, vec![b'x'; 4096]).expect("body");
    let under = edge.dir.path("under.bin");
    std::fs::write(&under, vec![b'y'; 700]).expect("body");
    for version in ["--http1.1", "--http2"] {
        for (file, status, body) in [(&over, 413, None), (&under, 200, Some("read 700"))] {
            // With this header curl declares no length: chunked over HTTP/1.1, plain DATA
            // frames over HTTP/2.
            let (reply, verbose) = edge.curl(
                version,
                "slow.test",
                "/drain",
                &[
                    "-H",
                    "Transfer-Encoding: chunked",
                    "--data-binary",
                    &format!("@{}", file.display()),
                ],
            );
            assert_eq!(
                reply.status,
                status,
                "{version} {}: {verbose}",
                file.display()
            );
            assert!(
                !verbose.to_ascii_lowercase().contains("> content-length"),
                "{version}: a length was declared:\n{verbose}"
            );
            if let Some(body) = body {
                assert_eq!(reply.text(), body, "{version}");
            }
        }
    }
    let (json, _) = edge.h3_with(
        "slow.test",
        "/drain",
        "POST",
        Some(&over),
        &["--stream-body"],
    );
    assert_eq!(json["status"], 413, "{json}");
    let (json, body) = edge.h3_with(
        "slow.test",
        "/drain",
        "POST",
        Some(&under),
        &["--stream-body"],
    );
    assert_eq!(
        (json["status"].as_u64(), body.as_slice()),
        (Some(200), &b"read 700"[..])
    );
    crate::serve::wait_for_metric(
        &edge.node,
        "outpost_limit_exceeded_total{limit=\"request_body\",tenant=\"slow\"}",
        3.0,
    );
}

/// A body with its length declared up front and small enough (here 700 bytes, under the
/// tenant's 1 KiB cap) is read before its guest starts, so the request runs inline like a GET,
/// over every protocol, and the guest reads all of it.
#[test]
fn a_small_body_of_a_declared_length_runs_inline_on_every_protocol() {
    let edge = Edge::start("edge-read-ahead");
    let body = edge.dir.path("body.bin");
    std::fs::write(&body, vec![b'z'; 700]).expect("body");
    let data = format!("@{}", body.display());
    for version in ["--http1.1", "--http2"] {
        let (reply, verbose) = edge.curl(version, "slow.test", "/drain", &["--data-binary", &data]);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "read 700"),
            "{version}: {verbose}"
        );
        assert!(
            verbose
                .to_ascii_lowercase()
                .contains("> content-length: 700"),
            "{version}: no length was declared:\n{verbose}"
        );
    }
    let (json, reply) = edge.h3("slow.test", "/drain", "POST", Some(&body));
    assert_eq!(
        (json["status"].as_u64(), reply.as_slice()),
        (Some(200), &b"read 700"[..])
    );
    let runs = |path: &str| {
        crate::serve::metric(
            &edge.node,
            &format!("outpost_guest_runs_total{{tenant=\"slow\",path=\"{path}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (runs("inline"), runs("pool"), runs("moved")),
        (3.0, 0.0, 0.0),
        "{}",
        edge.node.log_text()
    );
}

/// A client that trickles its request head is cut off after the header timeout (1 s here),
/// and so is one that never starts its TLS handshake; other clients are served meanwhile.
#[test]
fn slowloris_clients_are_cut_off_while_others_are_served() {
    let edge = Edge::start("edge-slowloris");
    let script = r#"
import socket, ssl, sys, time
port = int(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
raw = socket.create_connection(("127.0.0.1", port))
s = ctx.wrap_socket(raw, server_hostname="shop.acme.test")
start = time.time()
s.sendall(b"GET / HTTP/1.1\r\nHost: shop.acme.test\r\n")
try:
    for i in range(40):
        time.sleep(0.25)
        s.sendall(b"X-Slow-%d: 1\r\n" % i)
    print("NOT CUT %.2f" % (time.time() - start))
except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
    print("CUT %.2f" % (time.time() - start))
"#;
    let slow = {
        let (port, ca) = (edge.port().to_string(), edge.pki.ca.display().to_string());
        let script = script.to_string();
        std::thread::spawn(move || {
            Command::new("python3")
                .args(["-c", &script, &port, &ca])
                .output()
                .expect("python3")
        })
    };
    let silent_started = Instant::now();
    let mut silent =
        std::net::TcpStream::connect(format!("127.0.0.1:{}", edge.port())).expect("connect");
    for _ in 0..5 {
        let (ok, _) = edge.curl(
            "--http2",
            "shop.acme.test",
            "/",
            &["--data-binary", "still served"],
        );
        assert_eq!(ok.body, b"still served");
        std::thread::sleep(Duration::from_millis(100));
    }
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut silent, &mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the silent connection was not closed"
    );
    assert!(
        silent_started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        silent_started.elapsed()
    );
    let out = slow.join().expect("slowloris");
    let said = String::from_utf8_lossy(&out.stdout);
    let cut_after: f64 = said
        .strip_prefix("CUT ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the slow client was not cut off: {said} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(cut_after < 3.0, "cut after {cut_after} s");
}

#[test]
fn metrics_count_each_tenants_requests_by_protocol_and_status() {
    let edge = Edge::start("edge-metrics");
    for _ in 0..3 {
        assert_eq!(
            edge.curl("--http1.1", "shop.acme.test", "/", &[]).0.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            edge.curl("--http2", "www.globex.test", "/", &[]).0.status,
            200
        );
    }
    assert_eq!(edge.h3("shop.acme.test", "/", "GET", None).0["status"], 200);
    assert_eq!(
        edge.curl(
            "--http2",
            "slow.test",
            "/",
            &["--data-binary", &"x".repeat(4096)]
        )
        .0
        .status,
        413
    );
    assert_eq!(edge.curl("--http1.1", "node.test", "/", &[]).0.status, 404);

    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        key = s.name + "|" + ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        out[key] = s.value
print(json.dumps(out))
"#;
    let expected = [
        (
            "outpost_requests_total|app=shop,protocol=HTTP/1.1,status=200,tenant=acme",
            3.0,
        ),
        (
            "outpost_requests_total|app=greet,protocol=HTTP/2,status=200,tenant=globex",
            2.0,
        ),
        (
            "outpost_requests_total|app=shop,protocol=HTTP/3,status=200,tenant=acme",
            1.0,
        ),
        (
            "outpost_requests_total|app=slow,protocol=HTTP/2,status=413,tenant=slow",
            1.0,
        ),
        (
            "outpost_limit_exceeded_total|limit=request_body,tenant=slow",
            1.0,
        ),
        ("outpost_unrouted_requests_total|", 1.0),
        // One handshake per curl (3 + 2 + 1 + 1) and one for the QUIC connection; no failures.
        ("outpost_tls_handshakes_total|result=ok", 8.0),
        ("outpost_quic_connections_total|", 1.0),
        // Five apps of four modules: each module compiled once (the stream guest serves two
        // apps: the second finds it in the cache).
        ("outpost_module_loads_total|source=compiled", 4.0),
        ("outpost_module_loads_total|source=cache", 1.0),
    ];
    // Counters are recorded when each guest's outcome arrives: give them a moment.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = curl(&edge.node.admin_url("/metrics"), &[]).text();
        let parsed = Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(text.as_bytes())?;
                child.wait_with_output()
            })
            .expect("python3 with prometheus_client (scripts/test installs it)");
        assert!(
            parsed.status.success(),
            "/metrics is not valid Prometheus text: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        let samples: serde_json::Value = serde_json::from_slice(&parsed.stdout).expect("json");
        let mismatched: Vec<String> = expected
            .iter()
            .filter(|(k, v)| samples.get(*k).and_then(|x| x.as_f64()) != Some(*v))
            .map(|(k, v)| format!("{k}: want {v}, got {:?}", samples.get(*k)))
            .collect();
        if mismatched.is_empty() {
            every_documented_series_is_exported(&text);
            return;
        }
        assert!(Instant::now() < until, "{}\n{text}", mismatched.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each series docs/operations.md lists is in `/metrics` after the traffic of
/// `metrics_count_each_tenants_requests_by_protocol_and_status`, or is proven by the test named
/// here (it needs a registry or a connection flood).
fn every_documented_series_is_exported(text: &str) {
    const ELSEWHERE: &[(&str, &str)] = &[
        (
            "outpost_connections_refused_total",
            "hygiene::the_plain_listener_caps_connections_and_request_heads",
        ),
        (
            "outpost_config_reloads_total",
            "serve::reload_under_load_drops_nothing_and_ignores_invalid_files",
        ),
        (
            "outpost_sync_swaps_total",
            "bundle::bundle_three_nodes_follow_pushes_without_failed_requests_and_survive_the_registry",
        ),
        (
            "outpost_sync_failures_total",
            "bundle::bundle_rejections_keep_the_last_good_version",
        ),
        (
            "outpost_registry_notifications_total",
            "bundle::bundle_three_nodes_follow_pushes_without_failed_requests_and_survive_the_registry",
        ),
    ];
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("doc");
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `outpost_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(documented.len() >= 20, "{documented:?}");
    let missing: Vec<String> = documented
        .iter()
        .map(|name| format!("outpost_{name}"))
        .filter(|name| !ELSEWHERE.iter().any(|(n, _)| n == name))
        .filter(|name| {
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}\n{text}"
    );
}

/// One request of the load loop: started, ended, curl's exit code, status, body.
type Attempt = (Instant, Instant, i32, u16, Vec<u8>);

/// SIGTERM while a bounded loop of requests runs: every request that reached a guest
/// completes and reaches its client whole; the daemon then exits 0.
#[test]
fn sigterm_drains_open_requests_and_exits_zero() {
    let mut edge = Edge::start("edge-sigterm");
    let results: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(30);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let results = results.clone();
            let url = format!("https://shop.acme.test:{}/stream?sleep=400", edge.port());
            let resolve = format!("shop.acme.test:{}:127.0.0.1", edge.port());
            let ca = edge.pki.ca.display().to_string();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    if Instant::now() > stop_at {
                        break;
                    }
                    let started = Instant::now();
                    let r = curl(&url, &["--resolve", &resolve, "--cacert", &ca]);
                    results.lock().expect("results").push((
                        started,
                        Instant::now(),
                        r.curl_exit,
                        r.status,
                        r.body,
                    ));
                    if r.curl_exit == 7 {
                        break;
                    }
                }
            })
        })
        .collect();
    // SIGTERM once the loop has finished some requests and has others running.
    let until = Instant::now() + Duration::from_secs(20);
    while results.lock().expect("results").len() < 4
        || crate::serve::metric(&edge.node, "outpost_active_instances{tenant=\"acme\"}")
            .unwrap_or(0.0)
            < 1.0
    {
        assert!(Instant::now() < until, "{}", edge.node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let term_at = Instant::now();
    let pid = edge.node.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = loop {
        if let Some(status) = edge.node.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            term_at.elapsed() < Duration::from_secs(30),
            "the daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(status.code(), Some(0), "{}", edge.node.log_text());
    let results = results.lock().expect("results");
    let in_flight = results
        .iter()
        .filter(|r| r.0 < term_at && r.1 > term_at)
        .count();
    assert!(in_flight > 0, "no request was in flight at SIGTERM");
    // Every request the daemon ran reached its client whole: as many complete responses as the
    // daemon logged. A client whose connection was accepted but whose request had not been
    // read when SIGTERM came is closed unserved (HTTP/2 GOAWAY: curl exit 16 or 18; closed
    // while curl still sent or shook hands: 55, 35; closed idle: 52, 56): that request never
    // reached a guest, and is only allowed to have started just before SIGTERM.
    let served = edge
        .node
        .log_text()
        .lines()
        .filter(|l| l.contains("outpost::request") && l.contains("status=200"))
        .count();
    let complete = results.iter().filter(|r| r.2 == 0).count();
    assert_eq!(
        served,
        complete,
        "the daemon served {served} requests, {complete} reached their clients whole\n{}",
        edge.node.log_text()
    );
    for (started, _, exit, status, body) in results.iter() {
        match exit {
            0 => {
                assert_eq!(*status, 200);
                assert_eq!(body.as_slice(), b"first\nsecond\n");
            }
            // Refused (the listener had closed), or closed unserved as above.
            7 | 16 | 18 | 35 | 52 | 55 | 56 => assert!(
                term_at.saturating_duration_since(*started) < Duration::from_secs(2),
                "a request started {:?} before SIGTERM was closed unserved (curl exit {exit})",
                term_at.saturating_duration_since(*started)
            ),
            other => panic!(
                "a request failed with curl exit {other} (started {:?} after SIGTERM)\n{}",
                started.checked_duration_since(term_at),
                edge.node.log_text()
            ),
        }
    }
}

/// SIGTERM with HTTP/3 requests in flight on one QUIC connection: the node sends GOAWAY, lets
/// them finish (each gets its whole body), and exits 0.
#[test]
fn sigterm_drains_http3_requests_in_flight_and_exits_zero() {
    let mut edge = Edge::start("edge-sigterm-h3");
    let client = {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("runtime/tests/clients/h3_client.py"))
            .args(["--connect", &format!("127.0.0.1:{}", edge.quic_port())])
            .args(["--url", "https://shop.acme.test/stream?sleep=2000"])
            .arg("--cacert")
            .arg(&edge.pki.ca)
            .args(["--repeat", "4", "--parallel", "4"])
            .arg("--out")
            .arg(edge.dir.path("h3-drain.out"));
        std::thread::spawn(move || cmd.output().expect("python3 with aioquic"))
    };
    // All four guests running (each has sent its first line and sleeps 2 s).
    crate::serve::wait_for_metric(&edge.node, "outpost_active_instances{tenant=\"acme\"}", 4.0);
    let term_at = Instant::now();
    let pid = edge.node.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let out = client.join().expect("client");
    let status = loop {
        if let Some(status) = edge.node.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            term_at.elapsed() < Duration::from_secs(30),
            "the daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        edge.node.log_text()
    );
    let reply: serde_json::Value = serde_json::from_str(&said).expect("client JSON");
    assert_eq!(reply["statuses"]["200"], 4, "{reply}");
    // The GOAWAY's id is the first request the node did not process (RFC 9114 5.2): past all
    // four, which it did process, so a client must not retry any of them.
    let (goaway, highest) = (reply["goaway"].as_u64(), reply["highest_stream"].as_u64());
    assert!(
        matches!((goaway, highest), (Some(g), Some(h)) if g > h),
        "GOAWAY {goaway:?} for requests up to stream {highest:?}: {reply}"
    );
    assert_eq!(
        std::fs::read(edge.dir.path("h3-drain.out")).expect("body"),
        b"first\nsecond\n"
    );
    assert_eq!(status.code(), Some(0), "{}", edge.node.log_text());
    assert!(
        edge.node.log_text().contains("shutting down"),
        "{}",
        edge.node.log_text()
    );
}

/// The largest value a `/metrics` series reaches while `during` runs (read every 20 ms).
fn peak_metric(node: &Daemon, series: &str, during: impl FnOnce()) -> f64 {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0.0f64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(crate::serve::metric(node, series).unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let stop = Stop(&done);
        during();
        drop(stop);
        sampler.join().expect("sampler")
    })
}

/// A file of request headers that together make a head of about `bytes` (for `curl -H @FILE`
/// and the HTTP/3 client's `--header-file`: too large for one argument).
fn header_file(dir: &TempDir, bytes: usize) -> PathBuf {
    let path = dir.path(&format!("headers-{bytes}.txt"));
    let line = 16 * 1024;
    let text: String = (0..bytes.div_ceil(line))
        .map(|i| format!("X-Big-{i}: {}\n", "a".repeat(line - 12)))
        .collect();
    std::fs::write(&path, text).expect("header file");
    path
}

/// The TLS and QUIC listeners' limits: `max_header_bytes` answers 431 over HTTP/1.1, HTTP/2
/// and HTTP/3 to a head just past it, and over HTTP/1.1 and HTTP/3 to one of 960 KiB that the
/// client is still sending when the 431 goes out; `max_streams` holds a connection to that many requests at once (HTTP/2
/// and HTTP/3).
#[test]
fn listener_limits_hold_over_tls_and_quic() {
    let edge = Edge::start_with(
        "edge-listen-limits",
        &[],
        "max_header_bytes = \"8KiB\"\nmax_streams = 2\nidle_timeout = \"2s\"",
    );
    // Past the 8 KiB cap, and sent by curl in one TLS record.
    let big = format!("X-Big: {}", "a".repeat(12 * 1024));
    // 960 KiB (curl sends no request larger than 1 MiB): the 431 is sent while most of it is
    // still on its way.
    let huge = header_file(&edge.dir, 960 << 10);
    let huge_arg = format!("@{}", huge.display());
    for version in ["--http1.1", "--http2"] {
        let (reply, verbose) = edge.curl(version, "www.globex.test", "/", &["-H", &big]);
        assert_eq!(reply.status, 431, "{version}: {verbose}");
    }
    let (reply, verbose) = edge.curl("--http1.1", "www.globex.test", "/", &["-H", &huge_arg]);
    let said: Vec<&str> = verbose
        .lines()
        .filter(|l| !l.to_ascii_lowercase().contains("x-big"))
        .collect();
    assert_eq!(
        (reply.status, reply.curl_exit),
        (431, 0),
        "HTTP/1.1, 960 KiB head: {}",
        said[said.len().saturating_sub(20)..].join("\n")
    );
    // The same from a client on a slow link, still sending when the 431 is written: it sends
    // its whole head, then reads the answer.
    for round in 0..3 {
        let out = Command::new("python3")
            .arg(repo_root().join("runtime/tests/clients/slow_head.py"))
            .args([edge.port(), "www.globex.test", "960"])
            .arg(&edge.pki.ca)
            .output()
            .expect("python3");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "slow client over TLS, round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // HTTP/2 answers 431 to a head up to about twice the cap; past that, h2 ends the connection
    // (GOAWAY) rather than decode an unbounded header block, and curl gets no response.
    let (reply, _) = edge.curl("--http2", "www.globex.test", "/", &["-H", &huge_arg]);
    assert_eq!(reply.status, 0, "HTTP/2, 960 KiB head");
    for version in ["--http1.1", "--http2"] {
        let (reply, _) = edge.curl(version, "www.globex.test", "/", &["-H", "X-Small: 1"]);
        assert_eq!(reply.status, 200, "{version}");
    }
    let (json, _) = edge.h3_with(
        "www.globex.test",
        "/",
        "GET",
        None,
        &["--header", &format!("x-big: {}", "a".repeat(12 * 1024))],
    );
    assert_eq!(json["status"], 431, "{json}");
    let (json, _) = edge.h3_with(
        "www.globex.test",
        "/",
        "GET",
        None,
        &["--header-file", &huge.display().to_string()],
    );
    assert_eq!(json["status"], 431, "960 KiB head over HTTP/3: {json}");

    // HTTP/2: two streams per connection, so curl, with three requests to make at once, has to
    // open a second connection for the third.
    let url = format!("https://shop.acme.test:{}/stream?sleep=1000", edge.port());
    let (reply, verbose) = edge.curl(
        "--http2",
        "shop.acme.test",
        "/stream?sleep=1000",
        &[
            "--parallel",
            "--parallel-max",
            "3",
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
        ],
    );
    assert_eq!(reply.status, 200, "{verbose}");
    // (A stream curl opens before the node's SETTINGS arrive is refused, and retried on the
    // second connection.)
    assert_eq!(
        verbose.matches("* Connected to").count(),
        2,
        "three requests at once, two streams a connection:\n{verbose}"
    );
    // HTTP/3, three requests at once on one connection: two run, the third waits for a stream.
    let active = "outpost_active_instances{tenant=\"acme\"}";
    let peak = peak_metric(&edge.node, active, || {
        let (json, _) = edge.h3_with(
            "shop.acme.test",
            "/stream?sleep=1000",
            "GET",
            None,
            &["--repeat", "3", "--parallel", "3"],
        );
        assert_eq!(json["statuses"]["200"], 3, "{json}");
    });
    assert_eq!(
        peak, 2.0,
        "HTTP/3 requests running at once on one connection"
    );
}

/// `idle_timeout` closes a connection with no request in flight, on every protocol, and only
/// then: HTTP/1.1 between requests (not at `header_timeout`, which bounds a head once it has
/// started), HTTP/2 although the client keeps pinging, HTTP/3 by QUIC's idle timeout. The
/// client sees the close; `outpost_connections_open` sees the node let go.
#[test]
fn idle_timeout_closes_connections_with_nothing_in_flight_on_every_protocol() {
    // header_timeout is 1 s (node_config); idle_timeout 3 s.
    let edge = Edge::start_with("edge-idle", &[], "idle_timeout = \"3s\"");
    let (idle, header) = (3.0, 1.0);
    let open = |transport: &str| format!("outpost_connections_open{{transport=\"{transport}\"}}");

    // HTTP/1.1: served, then idle: closed at the idle timeout. Then a head that starts after a
    // pause and stalls: cut header_timeout after its first byte.
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.set_alpn_protocols(["http/1.1"])
def served():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="www.globex.test")
    s.sendall(b"GET / HTTP/1.1\r\nHost: www.globex.test\r\n\r\n")
    got = b""
    while not got.endswith(b"Hello from outpost!\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed before the response: %r" % got)
        got += chunk
    return s
def closed_after(s, since):
    s.settimeout(20)
    try:
        while s.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    return time.time() - since
s = served()
print("%.2f" % closed_after(s, time.time()))
s = served()
time.sleep(0.5)
s.sendall(b"GET / HTTP/1.1\r\nHost: www.")
print("%.2f" % closed_after(s, time.time()))
"#;
    let out = Command::new("python3")
        .args(["-c", script, edge.port()])
        .arg(&edge.pki.ca)
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = said
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(
        times.len(),
        2,
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        (idle - 0.2..idle + 2.0).contains(&times[0]),
        "HTTP/1.1: an idle connection was closed after {} s (idle_timeout {idle} s, header_timeout {header} s)",
        times[0]
    );
    assert!(
        (header - 0.2..header + 1.5).contains(&times[1]),
        "HTTP/1.1: a head stalled after its first byte was cut after {} s (header_timeout {header} s)",
        times[1]
    );

    // HTTP/2: the client pings every 0.25 s (and answers the node's pings); no request is in
    // flight, so the connection is idle all the same.
    let out = Command::new("python3")
        .arg(repo_root().join("runtime/tests/clients/h2_idle.py"))
        .args([edge.port()])
        .arg(&edge.pki.ca)
        .args(["www.globex.test", "20"])
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    let (how, after) = said
        .trim()
        .split_once(' ')
        .and_then(|(how, t)| Some((how.to_string(), t.parse::<f64>().ok()?)))
        .unwrap_or_else(|| panic!("{said} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        how != "open" && (idle - 0.2..idle + 2.0).contains(&after),
        "HTTP/2 with pings: {how} after {after} s (idle_timeout {idle} s)"
    );
    crate::serve::wait_for_metric(&edge.node, &open("tcp"), 0.0);

    // HTTP/3: QUIC's idle timeout, which the client adopts as the shorter; the node drops the
    // connection on its side too.
    let (json, _) = edge.h3_with("www.globex.test", "/", "GET", None, &["--idle-wait", "20"]);
    let closed = json["closed_after"].as_f64();
    assert!(
        closed.is_some_and(|t| (idle - 0.2..idle + 2.0).contains(&t)),
        "HTTP/3: an idle connection ended after {closed:?} s (None: still open after 20 s; idle_timeout {idle} s): {json}"
    );
    crate::serve::wait_for_metric(&edge.node, &open("quic"), 0.0);
}
