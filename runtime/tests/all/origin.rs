//! Origins with real servers on loopback: nginx from Debian (plain HTTP and TLS with HTTP/2,
//! its echo module for slow answers and echoed bodies, stub_status for connection counts) as
//! the tenants' backends; curl (HTTP/1.1, HTTP/2) and the aioquic client (HTTP/3) as clients.
//! Pass-through, subrequests, origin failures, SSRF refusals, connection reuse and metrics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A test CA and an origin certificate for `origin.test` (and 127.0.0.1).
fn origin_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "outpost origin test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params =
        rcgen::CertificateParams::new(vec!["origin.test".to_string(), "127.0.0.1".to_string()])
            .expect("params");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (ca, pem, k) = (
        dir.join("origin-ca.pem"),
        dir.join("origin.pem"),
        dir.join("origin.key"),
    );
    std::fs::write(&ca, ca_cert.pem()).expect("ca");
    std::fs::write(&pem, cert.pem()).expect("cert");
    std::fs::write(&k, key.serialize_pem()).expect("key");
    (ca, pem, k)
}

/// nginx serving a directory over HTTP and over TLS (HTTP/2 by ALPN), killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    tls_port: u16,
    ca: PathBuf,
    www: PathBuf,
    dir: PathBuf,
}

const ECHO_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_echo_module.so";

impl Nginx {
    fn start(dir: &TempDir, redirect_to: &str) -> Self {
        assert!(
            Path::new("/usr/sbin/nginx").exists() && Path::new(ECHO_MODULE).exists(),
            "nginx with its echo module is needed (scripts/test installs nginx-light)"
        );
        let root = dir.path("nginx");
        let www = root.join("www");
        for d in ["www/api", "www/new", "tmp"] {
            std::fs::create_dir_all(root.join(d)).expect("nginx dirs");
        }
        std::fs::write(
            www.join("catalog.json"),
            "{\"items\":[{\"id\":1,\"name\":\"tea\"},{\"id\":2,\"name\":\"cake\"}]}\n",
        )
        .expect("catalog");
        std::fs::write(www.join("index.html"), "<h1>static origin</h1>\n").expect("index");
        std::fs::write(www.join("api/items.json"), "{\"api\":true}\n").expect("items");
        std::fs::write(www.join("new/thing.txt"), "the new thing\n").expect("new");
        let big: Vec<u8> = (0..5u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(www.join("big.bin"), &big).expect("big");
        let (ca, pem, key) = origin_pki(&root);
        let (port, tls_port) = (free_port(), free_port());
        let user = if unsafe_is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"load_module {ECHO_MODULE};
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    default_type application/octet-stream;
    types {{ application/json json; text/html html; text/plain txt; }}
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {pem};
        ssl_certificate_key {key};
        server_name _;
        root {www};
        location = /status {{ stub_status; }}
        location = /api/echo {{ echo_read_request_body; echo_request_body; }}
        location = /api/whoami {{
            default_type text/plain;
            echo "auth=[$http_x_edge_auth] cookie=[$http_cookie] xff=[$http_x_forwarded_for] fwd=[$http_forwarded] host=[$host] path=[$request_uri] port=[$server_port]";
        }}
        location = /api/slow {{ echo_sleep 10; echo "late"; }}
        location = /redirect {{ return 302 {redirect_to}; }}
    }}
}}
"#,
            root = root.display(),
            pem = pem.display(),
            key = key.display(),
            www = www.display(),
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let nginx = Self {
            child,
            port,
            tls_port,
            ca,
            www,
            dir: root,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(
                Instant::now() < until,
                "nginx did not start: {}",
                std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// Connections nginx has accepted so far (stub_status), this request's own included.
    fn accepts(&self) -> u64 {
        let status = curl(&format!("http://127.0.0.1:{}/status", self.port), &[]).text();
        status
            .lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("stub_status: {status}"))
    }
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker first. A SIGKILL would leave the worker running
        // as an orphan, holding the test's ports and inherited descriptors.
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn router() -> PathBuf {
    rust_guest("examples/router-rust", "router")
}

fn fetcher() -> PathBuf {
    rust_guest("examples/fetch-rust", "fetch")
}

/// The C example, built with clang and wasi-libc against guest/c/outpost_http.h.
fn fetcher_c(dir: &TempDir) -> PathBuf {
    let out = dir.path("fetch-c.wasm");
    let built = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-I"])
        .arg(repo_root().join("guest/c"))
        .arg("-o")
        .arg(&out)
        .arg(repo_root().join("examples/fetch-c/fetch.c"))
        .output()
        .expect("clang (scripts/test installs it)");
    assert!(
        built.status.success(),
        "building examples/fetch-c: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// The node in front of the origins: HTTP, HTTPS + HTTP/3 (for `node.test`) and admin.
struct Edge {
    node: Daemon,
    nginx: Nginx,
    ca: PathBuf,
    dir: TempDir,
    admin_port: u16,
}

/// Extra `[[backend]]`s, apps and routes go after the common part. The configuration is
/// `edge.config()`.
fn start(tag: &str, tenant_limits: &str, extra: &dyn Fn(&Nginx, u16) -> String) -> Edge {
    let dir = TempDir::new(tag);
    let admin_port = free_port();
    let nginx = Nginx::start(&dir, &format!("http://127.0.0.1:{admin_port}/metrics"));
    let pki = crate::edge::make_pki(&dir.0);
    let d = |name: &str| dir.path(name).display().to_string();
    let config = format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
http3 = "127.0.0.1:0"
admin = "127.0.0.1:{admin_port}"

[tls]
cert = "{node_pem}"
key = "{node_key}"

[[tenant]]
name = "acme"
allow_unsigned = true
{tenant_limits}

[[tenant]]
name = "globex"
allow_unsigned = true

[[backend]]
name = "api"
tenant = "acme"
url = "https://127.0.0.1:{tls_port}"
host_header = "origin.test"
ca_file = "{ca}"

[[backend]]
name = "static"
tenant = "acme"
url = "http://127.0.0.1:{port}"

[[backend]]
name = "globex-api"
tenant = "globex"
url = "http://127.0.0.1:{port}"

[[app]]
name = "router"
tenant = "acme"
source = "file:{router}"
backends = ["api", "static"]

[[app]]
name = "fetch"
tenant = "acme"
source = "file:{fetch}"
backends = ["api", "static"]

[[route]]
host = "node.test"
app = "router"

[[route]]
host = "node.test"
path = "/fetch"
app = "fetch"

[[route]]
host = "localhost"
app = "router"

[[route]]
host = "localhost"
path = "/fetch"
app = "fetch"
{extra}
"#,
        data = d("data"),
        node_pem = d("node.pem"),
        node_key = d("node.key"),
        tls_port = nginx.tls_port,
        port = nginx.port,
        ca = nginx.ca.display(),
        router = router().display(),
        fetch = fetcher().display(),
        extra = extra(&nginx, admin_port),
    );
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config).expect("config");
    let node = Daemon::serve_with(&cfg, &["http", "https", "http3", "admin"]);
    Edge {
        node,
        nginx,
        ca: pki.ca,
        dir,
        admin_port,
    }
}

impl Edge {
    fn port(&self) -> &str {
        self.node.https.rsplit(':').next().unwrap_or("0")
    }

    fn quic_port(&self) -> &str {
        self.node.http3.rsplit(':').next().unwrap_or("0")
    }

    /// curl to node.test over TLS with `version` (--http1.1 / --http2).
    fn tls(&self, version: &str, path: &str, extra: &[&str]) -> Reply {
        let resolve = format!("node.test:{}:127.0.0.1", self.port());
        let url = format!("https://node.test:{}{path}", self.port());
        let ca = self.ca.display().to_string();
        let mut args = vec![version, "--resolve", &resolve, "--cacert", &ca];
        args.extend_from_slice(extra);
        curl(&url, &args)
    }

    /// Plain HTTP to `localhost`.
    fn http(&self, path: &str, extra: &[&str]) -> Reply {
        let mut args = vec!["-H", "Host: localhost"];
        args.extend_from_slice(extra);
        curl(&self.node.url(path), &args)
    }

    /// The aioquic client: (status, headers as JSON, body).
    fn h3(
        &self,
        path: &str,
        method: &str,
        data: Option<&Path>,
    ) -> (u64, serde_json::Value, Vec<u8>) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = self.dir.path(&format!("h3-{n}.out"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("runtime/tests/clients/h3_client.py"))
            .args(["--connect", &format!("127.0.0.1:{}", self.quic_port())])
            .args(["--url", &format!("https://node.test{path}")])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["--method", method])
            .arg("--out")
            .arg(&out);
        if let Some(data) = data {
            cmd.arg("--data-file").arg(data);
        }
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
        let status = json["status"].as_u64().unwrap_or(0);
        (
            status,
            json["headers"].clone(),
            std::fs::read(&out).unwrap_or_default(),
        )
    }

    fn metrics(&self) -> String {
        curl(&self.node.admin_url("/metrics"), &[]).text()
    }

    fn config(&self) -> PathBuf {
        self.dir.path("node.toml")
    }

    /// `outpost_backend_connections_total` for one of acme's backends.
    fn connections(&self, backend: &str) -> f64 {
        metric(
            &self.metrics(),
            &format!("outpost_backend_connections_total{{backend=\"{backend}\",tenant=\"acme\"}}"),
        )
    }
}

fn h3_header<'a>(headers: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    headers.as_array()?.iter().find_map(|pair| {
        let pair = pair.as_array()?;
        (pair.first()?.as_str()? == name).then(|| pair.get(1)?.as_str())?
    })
}

/// `outpost_requests_total` of one app by status, summed over protocols.
fn requests_by_status(metrics: &str, app: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_status = std::collections::BTreeMap::new();
    for line in metrics.lines().filter(|l| {
        l.starts_with("outpost_requests_total{") && l.contains(&format!("app=\"{app}\""))
    }) {
        let status = line
            .split("status=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let count = line
            .split_whitespace()
            .last()
            .and_then(|n| n.parse::<f64>().ok());
        if let (Some(status), Some(count)) = (status, count) {
            *by_status.entry(status.to_string()).or_insert(0.0) += count;
        }
    }
    by_status
}

/// The statuses of an app's per-request log lines (the one line each request gets, with its
/// duration), in order.
fn logged_statuses(log: &str, app: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("outpost::request") && l.contains("duration_us=") && l.contains(app))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("status="))
                .map(str::to_string)
        })
        .collect()
}

fn statuses(pairs: &[(&str, f64)]) -> std::collections::BTreeMap<String, f64> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn pass_through_routes_to_two_origins_over_every_protocol_with_5_mib_each_way() {
    let edge = start("origin-pass", "", &|_, _| String::new());
    let big = std::fs::read(edge.nginx.www.join("big.bin")).expect("big");
    let upload = edge.dir.path("upload.bin");
    let up: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    std::fs::write(&upload, &up).expect("upload");
    let upload_arg = format!("@{}", upload.display());

    for version in ["--http1.1", "--http2"] {
        // Everything but /api goes to `static` (plain HTTP/1.1 origin).
        let page = edge.tls(version, "/index.html", &[]);
        assert_eq!(page.status, 200, "{version}: {}", edge.node.log_text());
        assert_eq!(page.text(), "<h1>static origin</h1>\n");
        assert_eq!(page.header("x-routed-by"), Some("outpost-router (static)"));
        // /api goes to `api`: TLS, HTTP/2 to the origin, verified against the backend's CA.
        let api = edge.tls(version, "/api/items.json", &[]);
        assert_eq!(api.status, 200, "{version}: {}", api.text());
        assert_eq!(api.text(), "{\"api\":true}\n");
        assert_eq!(api.header("x-routed-by"), Some("outpost-router (api)"));
        // 5 MiB down...
        let down = edge.tls(version, "/big.bin", &[]);
        assert_eq!(down.status, 200);
        assert!(
            down.body == big,
            "{version}: download differs ({} bytes)",
            down.body.len()
        );
        // ...and 5 MiB up, echoed back by the origin.
        let echo = edge.tls(
            version,
            "/api/echo",
            &[
                "--data-binary",
                &upload_arg,
                "-H",
                "Content-Type: application/octet-stream",
            ],
        );
        assert_eq!(echo.status, 200, "{version}: {}", edge.node.log_text());
        assert!(
            echo.body == up,
            "{version}: upload echo differs ({} bytes)",
            echo.body.len()
        );
    }

    let (status, headers, body) = edge.h3("/index.html", "GET", None);
    assert_eq!(status, 200);
    assert_eq!(body, b"<h1>static origin</h1>\n");
    assert_eq!(
        h3_header(&headers, "x-routed-by"),
        Some("outpost-router (static)")
    );
    let (status, _, body) = edge.h3("/api/items.json", "GET", None);
    assert_eq!((status, body.as_slice()), (200, &b"{\"api\":true}\n"[..]));
    let (status, _, body) = edge.h3("/big.bin", "GET", None);
    assert_eq!(status, 200);
    assert!(
        body == big,
        "HTTP/3 download differs ({} bytes)",
        body.len()
    );
    let (status, _, body) = edge.h3("/api/echo", "POST", Some(&upload));
    assert_eq!(status, 200, "{}", edge.node.log_text());
    assert!(
        body == up,
        "HTTP/3 upload echo differs ({} bytes)",
        body.len()
    );

    // The origin sees the guest's request header edits and this hop in Forwarded and
    // X-Forwarded-For, never the client's cookie; the path rewrite reaches the origin.
    let who = edge.tls(
        "--http2",
        "/api/whoami",
        &[
            "-H",
            "Cookie: session=secret",
            "-H",
            "X-Forwarded-For: 203.0.113.7",
        ],
    );
    let text = who.text();
    assert!(text.contains("auth=[verified]"), "{text}");
    assert!(text.contains("cookie=[]"), "{text}");
    assert!(text.contains("xff=[203.0.113.7, 127.0.0.1]"), "{text}");
    assert!(
        text.contains("fwd=[for=127.0.0.1;proto=https;host=\"node.test\"]"),
        "{text}"
    );
    assert!(text.contains("host=[origin.test]"), "{text}");
    let moved = edge.http("/old/thing.txt", &[]);
    assert_eq!(
        (moved.status, moved.text().as_str()),
        (200, "the new thing\n")
    );

    // The origin's own status reaches the client, the count and the log line.
    let missing = edge.http("/no-such-page.html", &[]);
    assert_eq!(missing.status, 404, "{}", missing.text());

    let m = edge.metrics();
    let router = requests_by_status(&m, "router");
    assert_eq!(router.get("404"), Some(&1.0), "{m}");
    let logged = logged_statuses(&edge.node.log_text(), "app=\"router\"");
    assert_eq!(
        logged.iter().filter(|s| *s == "404").count(),
        1,
        "{logged:?}"
    );
    assert_eq!(
        logged.len() as f64,
        router.values().sum::<f64>(),
        "one log line per counted request: {logged:?} {router:?}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_requests_total{backend=\"api\",status=\"200\",tenant=\"acme\"}"
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_requests_total{backend=\"static\",status=\"200\",tenant=\"acme\"}"
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_request_seconds_count{backend=\"api\",tenant=\"acme\"}"
        ) >= 6.0,
        "{m}"
    );
}

#[test]
fn subrequests_fetch_and_transform_and_reuse_one_connection() {
    let scratch = TempDir::new("origin-sub-c");
    let c_module = fetcher_c(&scratch);
    let edge = start("origin-sub", "", &|_, _| {
        format!(
            "\n[[app]]\nname = \"fetch-c\"\ntenant = \"acme\"\nsource = \"file:{}\"\nbackends = [\"api\"]\n\n[[route]]\nhost = \"localhost\"\npath = \"/fetch-c\"\napp = \"fetch-c\"\n",
            c_module.display()
        )
    });
    let reply = edge.http("/fetch", &[]);
    assert_eq!(
        reply.status,
        200,
        "{}\n{}",
        reply.text(),
        edge.node.log_text()
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(json["via"], "outpost");
    assert_eq!(json["origin_status"], 200);
    assert_eq!(json["origin"]["items"][1]["name"], "cake");
    // The same from C, through guest/c/outpost_http.h.
    let c = edge.http("/fetch-c", &[]);
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.header("x-origin-status"), Some("200"));
    assert!(c.text().contains("\"CAKE\""), "{}", c.text());

    // N sequential subrequests to the plain origin open one connection to it.
    let before = edge.nginx.accepts();
    let many = edge.http("/fetch?backend=static&repeat=20", &[]);
    assert_eq!(many.status, 200, "{}", many.text());
    let after = edge.nginx.accepts();
    assert_eq!(
        after - before,
        2,
        "20 subrequests (+1 for the status page) opened {} connections",
        after - before - 1
    );
    let m = edge.metrics();
    assert_eq!(
        metric(
            &m,
            "outpost_backend_connections_total{backend=\"static\",tenant=\"acme\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_requests_total{backend=\"static\",status=\"200\",tenant=\"acme\"}"
        ) >= 20.0
    );

    // Over TLS and HTTP/2 to the origin as well.
    let again = edge.http("/fetch?repeat=10", &[]);
    assert_eq!(again.status, 200);
    let m = edge.metrics();
    assert_eq!(
        metric(
            &m,
            "outpost_backend_connections_total{backend=\"api\",tenant=\"acme\"}"
        ),
        1.0,
        "{m}"
    );
}

fn with_host(edge: &Edge, host: &str, path: &str) -> Reply {
    curl(&edge.node.url(path), &["-H", &format!("Host: {host}")])
}

#[test]
fn an_origin_down_gives_502_and_one_slower_than_the_deadline_504() {
    let down = free_port();
    let edge = start(
        "origin-fail",
        "[tenant.limits]\ntimeout = \"2s\"",
        &|n, _| {
            format!(
                r#"
[[backend]]
name = "down"
tenant = "acme"
url = "http://127.0.0.1:{down}"

[[backend]]
name = "impatient"
tenant = "acme"
url = "http://127.0.0.1:{port}"
first_byte_timeout = "500ms"

[[backend]]
name = "patient"
tenant = "acme"
url = "http://127.0.0.1:{port}"
first_byte_timeout = "30s"

[[app]]
name = "router-fail"
tenant = "acme"
source = "file:{router}"
backends = ["down", "impatient"]
env = {{ API_BACKEND = "impatient", STATIC_BACKEND = "down" }}

[[app]]
name = "fetch-fail"
tenant = "acme"
source = "file:{fetch}"
backends = ["down", "impatient", "patient"]

[[route]]
host = "fail.test"
app = "router-fail"

[[route]]
host = "fail.test"
path = "/fetch"
app = "fetch-fail"
"#,
                port = n.port,
                router = router().display(),
                fetch = fetcher().display(),
            )
        },
    );
    // Pass-through: the origin refuses connections (502), or sends no head in time (504).
    let refused = with_host(&edge, "fail.test", "/index.html");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.text(), "outpost: the origin could not be reached\n");
    let slow = with_host(&edge, "fail.test", "/api/slow");
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert!(slow.elapsed < Duration::from_secs(2), "{:?}", slow.elapsed);
    // Subrequests: the app learns why and answers 502 / 504 itself...
    let refused = with_host(&edge, "fail.test", "/fetch?backend=down");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(refused.text().contains("Connect"), "{}", refused.text());
    let slow = with_host(
        &edge,
        "fail.test",
        "/fetch?backend=impatient&path=/api/slow",
    );
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert!(slow.text().contains("Timeout"), "{}", slow.text());
    // ...and an origin slower than the request's deadline ends the request at its deadline.
    let late = with_host(&edge, "fail.test", "/fetch?backend=patient&path=/api/slow");
    assert_eq!(late.status, 504, "{}", late.text());
    assert_eq!(late.text(), "outpost: request exceeded the time limit\n");
    assert!(
        late.elapsed >= Duration::from_millis(1900) && late.elapsed < Duration::from_secs(6),
        "{:?}",
        late.elapsed
    );
    let log = edge.node.log_text();
    assert!(log.contains("origin_connect"), "{log}");
    assert!(log.contains("origin_timeout"), "{log}");
    let m = edge.metrics();
    // Each request counted and logged once, with the status its client got: for a
    // pass-through the failure's (the guest's own head said 200), for a subrequest the app's.
    assert_eq!(
        requests_by_status(&m, "router-fail"),
        statuses(&[("502", 1.0), ("504", 1.0)]),
        "{m}"
    );
    assert_eq!(
        logged_statuses(&log, "router-fail"),
        ["502", "504"],
        "{log}"
    );
    assert_eq!(
        requests_by_status(&m, "fetch-fail"),
        statuses(&[("502", 1.0), ("504", 2.0)]),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_requests_total{backend=\"down\",status=\"502\",tenant=\"acme\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_backend_requests_total{backend=\"impatient\",status=\"504\",tenant=\"acme\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "outpost_request_failures_total{kind=\"origin_connect\",tenant=\"acme\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn apps_reach_only_their_declared_backends_and_never_the_node_itself() {
    let edge = start("origin-ssrf", "", &|n, admin| {
        format!(
            r#"
[[backend]]
name = "by-name"
tenant = "acme"
url = "http://localhost:{port}"

[[backend]]
name = "by-name-allowed"
tenant = "acme"
url = "http://localhost:{port}"
allow_private = true

[[backend]]
name = "admin"
tenant = "acme"
url = "http://127.0.0.1:{admin}"
allow_private = true

[[app]]
name = "probe"
tenant = "acme"
source = "file:{fetch}"
backends = ["by-name", "by-name-allowed", "admin", "static"]

[[app]]
name = "sneaky"
tenant = "acme"
source = "file:{fetch}"

[[app]]
name = "g-router"
tenant = "globex"
source = "file:{router}"
backends = ["globex-api"]
env = {{ API_BACKEND = "api", STATIC_BACKEND = "globex-api" }}

[[route]]
host = "probe.test"
app = "probe"

[[route]]
host = "sneaky.test"
app = "sneaky"

[[route]]
host = "globex.test"
app = "g-router"
"#,
            port = n.port,
            fetch = fetcher().display(),
            router = router().display(),
        )
    });
    let probe = |path: &str| with_host(&edge, "probe.test", path);
    // A DNS name that resolves to loopback is refused unless its backend allows it.
    let by_name = probe("/?backend=by-name");
    assert_eq!(by_name.status, 502, "{}", by_name.text());
    assert!(by_name.text().contains("Refused"), "{}", by_name.text());
    let allowed = probe("/?backend=by-name-allowed");
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert!(allowed.text().contains("\"cake\""), "{}", allowed.text());
    // The admin listener, even named by the operator, is never connected to.
    let admin = probe("/?backend=admin&path=/metrics");
    assert_eq!(admin.status, 502, "{}", admin.text());
    assert!(admin.text().contains("Refused"), "{}", admin.text());
    assert!(edge.node.log_text().contains("outpost's own listeners"));
    // Another tenant's backend, or one nobody declared.
    for other in ["globex-api", "nowhere"] {
        let r = probe(&format!("/?backend={other}"));
        assert_eq!(r.status, 502, "{other}: {}", r.text());
        assert!(r.text().contains("UnknownBackend"), "{other}: {}", r.text());
    }
    // An absolute URL (an IP literal, the admin port) is not a path.
    let literal = probe(&format!(
        "/?backend=static&path=http://127.0.0.1:{}/metrics",
        edge.admin_port
    ));
    assert_eq!(literal.status, 502, "{}", literal.text());
    assert!(literal.text().contains("Invalid"), "{}", literal.text());
    // Redirects are handed to the app, not followed.
    let redirect = probe("/?backend=static&path=/redirect");
    assert_eq!(redirect.status, 200, "{}", redirect.text());
    let json: serde_json::Value = serde_json::from_slice(&redirect.body).expect("JSON");
    assert_eq!(json["origin_status"], 302);
    assert!(!redirect.text().contains("outpost_requests_total"));
    // ...and to the client on a pass-through.
    let passed = edge.http("/redirect", &[]);
    assert_eq!(passed.status, 302);
    assert_eq!(
        passed.header("location"),
        Some(format!("http://127.0.0.1:{}/metrics", edge.admin_port).as_str())
    );
    assert!(!passed.text().contains("outpost_requests_total"));
    // A pass-through naming another tenant's backend.
    let g = with_host(&edge, "globex.test", "/api/items.json");
    assert_eq!(g.status, 502, "{}", g.text());
    let g_own = with_host(&edge, "globex.test", "/index.html");
    assert_eq!(g_own.status, 200, "{}", g_own.text());
    // An app that declares no backends cannot even load a module with the imports.
    let sneaky = with_host(&edge, "sneaky.test", "/");
    assert_eq!(sneaky.status, 503);
    let apps = curl(&edge.node.admin_url("/apps"), &[]).text();
    assert!(apps.contains("declares no backends"), "{apps}");
}

#[test]
fn guests_waiting_on_a_slow_origin_hold_no_cpu_slot() {
    let _alone = heavy_test();
    let edge = start(
        "origin-fair",
        "[tenant.limits]\ntimeout = \"3s\"\nconcurrency = 40",
        &|n, _| {
            format!(
                r#"
[[backend]]
name = "slow"
tenant = "acme"
url = "http://127.0.0.1:{port}"
first_byte_timeout = "30s"

[[app]]
name = "fetch-slow"
tenant = "acme"
source = "file:{fetch}"
backends = ["slow"]

[[app]]
name = "hello-a"
tenant = "acme"
source = "file:{hello}"

[[app]]
name = "hello-g"
tenant = "globex"
source = "file:{hello}"

[[route]]
host = "slow.test"
app = "fetch-slow"

[[route]]
host = "a.test"
app = "hello-a"

[[route]]
host = "g.test"
app = "hello-g"
"#,
                port = n.port,
                fetch = fetcher().display(),
                hello = wat_guest("hello").display(),
            )
        },
    );
    let url = edge.node.url("/?backend=slow&path=/api/slow");
    let load = std::thread::spawn(move || curl_many(&url, Some("slow.test"), 32, 32));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let active = metric(&edge.metrics(), "outpost_active_instances{tenant=\"acme\"}");
        if active >= 32.0 {
            break;
        }
        assert!(Instant::now() < until, "the 32 requests never all started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 32 of acme's guests wait on the origin; acme's other app and another tenant's still
    // answer at once.
    let mut worst = Duration::ZERO;
    for host in ["a.test", "g.test"] {
        for _ in 0..10 {
            let hello = with_host(&edge, host, "/");
            assert_eq!(hello.status, 200, "{host}");
            worst = worst.max(hello.elapsed);
        }
    }
    assert!(
        worst < Duration::from_millis(1000),
        "slowest hello took {worst:?}"
    );
    let replies = load.join().expect("load");
    assert_eq!(replies.len(), 32);
    assert!(
        replies.iter().all(|(s, t)| *s == 504 && *t < 6.0),
        "{replies:?}"
    );
}

/// (line, column) of the first `needle` after the first `after` in `text`, 1-based, as the
/// configuration's diagnostics count them.
fn position(text: &str, after: &str, needle: &str) -> (usize, usize) {
    let from = text.find(after).expect("anchor") + after.len();
    let at = from + text[from..].find(needle).expect("needle");
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    )
}

/// A reload while an app's subrequests run: the backend whose entry did not change keeps its
/// pool (no new connection), a changed backend is used as changed, and a reload that removes a
/// backend an app still names is refused with the place of the mistake, the running
/// configuration serving on.
#[test]
fn a_reload_keeps_unchanged_backends_pools_and_refuses_a_missing_backend() {
    let edge = start("origin-reload", "", &|_, _| String::new());
    let cfg = edge.config();
    let original = std::fs::read_to_string(&cfg).expect("config");
    let whoami = |edge: &Edge| {
        let r = edge.http("/fetch?backend=api&path=/api/whoami", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    let tls_port = format!("port=[{}]", edge.nginx.tls_port);
    let plain_port = format!("port=[{}]", edge.nginx.port);
    assert!(whoami(&edge).contains(&tls_port));
    let first = edge.http("/fetch?backend=static&repeat=3", &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(edge.connections("static"), 1.0);
    assert_eq!(edge.connections("api"), 1.0);

    // Sequential subrequests to `static` run through both reloads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (edge.node.url("/fetch?backend=static"), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && statuses.len() < 2000 {
                statuses.push(curl(&url, &["-H", "Host: localhost"]).status);
            }
            statuses
        })
    };

    // `api` moves from the TLS port to the plain one; `static` is left as it was.
    let api_entry = format!(
        "url = \"https://127.0.0.1:{}\"\nhost_header = \"origin.test\"\nca_file = \"{}\"\n",
        edge.nginx.tls_port,
        edge.nginx.ca.display()
    );
    assert!(original.contains(&api_entry));
    let moved = original.replacen(
        &api_entry,
        &format!("url = \"http://127.0.0.1:{}\"\n", edge.nginx.port),
        1,
    );
    write_atomically(&cfg, &moved);
    crate::serve::wait_for_metric(
        &edge.node,
        "outpost_config_reloads_total{result=\"ok\"}",
        1.0,
    );
    let after = whoami(&edge);
    assert!(after.contains(&plain_port), "the changed backend: {after}");
    assert_eq!(
        edge.connections("api"),
        2.0,
        "the changed backend's new pool"
    );

    // Removing `static` while `router` and `fetch` still name it is a configuration error.
    let static_entry = format!(
        "[[backend]]\nname = \"static\"\ntenant = \"acme\"\nurl = \"http://127.0.0.1:{}\"\n",
        edge.nginx.port
    );
    assert!(moved.contains(&static_entry));
    let missing = moved.replacen(&static_entry, "", 1);
    write_atomically(&cfg, &missing);
    crate::serve::wait_for_metric(
        &edge.node,
        "outpost_config_reloads_total{result=\"error\"}",
        1.0,
    );
    let (line, col) = position(&missing, "name = \"fetch\"", "\"static\"");
    let expected = format!(
        "{}:{line}:{col}: error: app `fetch` names unknown backend `static`",
        cfg.display()
    );
    assert!(
        edge.node.log_text().contains(&expected),
        "{expected}\n{}",
        edge.node.log_text()
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.join().expect("load");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "subrequests across the reloads: {statuses:?}"
    );
    // The running configuration still serves, `static` on its first and only connection.
    let still = edge.http("/fetch?backend=static", &[]);
    assert_eq!(still.status, 200, "{}", still.text());
    assert!(whoami(&edge).contains(&plain_port));
    assert_eq!(
        edge.connections("static"),
        1.0,
        "the unchanged backend opened a new connection across {} requests and two reloads",
        statuses.len() + 2
    );
    assert_eq!(edge.connections("api"), 2.0);
}

/// A guest whose head names a backend but that goes on to write a body has started its
/// response before outpost could pass it through: 502, and the log says just that.
#[test]
fn a_pass_through_asked_for_after_the_response_started_is_refused_saying_so() {
    let edge = start("origin-late-pass", "", &|_, _| {
        format!(
            "\n[[app]]\nname = \"late\"\ntenant = \"acme\"\nsource = \"file:{}\"\nbackends = [\"static\"]\n\n[[route]]\nhost = \"late.test\"\napp = \"late\"\n",
            wat_guest("pass_late").display()
        )
    });
    for version in ["--http1.1", "--http2"] {
        let reply = with_host_tls(&edge, version, "late.test");
        assert_eq!(reply.status, 502, "{version}: {}", reply.text());
        assert_eq!(reply.text(), "outpost: the app sent an invalid response\n");
    }
    let reply = with_host(&edge, "late.test", "/");
    assert_eq!(reply.status, 502, "{}", reply.text());
    let log = edge.node.log_with("pass-through refused", 3);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pass-through refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    for line in refused {
        assert!(
            line.contains("the guest asked for a pass-through (X-Outpost-Backend) after its response had started")
                && line.contains("status=502")
                && !line.contains("read the request body"),
            "{line}"
        );
    }
    // Counted and logged once each, as the 502 the client got (the guest's head said 200).
    let m = edge.metrics();
    assert_eq!(
        requests_by_status(&m, "late"),
        statuses(&[("502", 3.0)]),
        "{m}"
    );
    assert_eq!(
        logged_statuses(&log, "late"),
        ["502", "502", "502"],
        "{log}"
    );
    // Nothing went to the origin.
    assert_eq!(edge.connections("static"), 0.0);
}

/// curl over TLS to `host` (resolved to loopback), path `/`.
fn with_host_tls(edge: &Edge, version: &str, host: &str) -> Reply {
    let resolve = format!("{host}:{}:127.0.0.1", edge.port());
    let url = format!("https://{host}:{}/", edge.port());
    curl(&url, &[version, "--resolve", &resolve, "-k"])
}
