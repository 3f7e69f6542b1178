//! `outpost serve` from a configuration file: routing, readiness, and hot reload under load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

fn config(dir: &TempDir, route_to: &str, extra: &str) -> String {
    format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

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
app = "{route_to}"

[[route]]
host = "*.example.test"
path = "/echo"
app = "echo"

[[tenant]]
name = "slowpoke"
allow_unsigned = true

[[app]]
name = "slow"
tenant = "slowpoke"
source = "file:{stream}"
env = {{ CONFIG = "{route_to}" }}

[[route]]
host = "slow.test"
app = "slow"
{extra}"#,
        data = dir.path("data").display(),
        hello = wat_guest("hello").display(),
        echo = echo_rust().display(),
        stream = test_guest("stream").display(),
    )
}

#[test]
fn routes_by_host_and_prefix_and_reports_readiness() {
    let dir = TempDir::new("serve-routes");
    let cfg = dir.path("node.toml");
    let broken = dir.path("broken.wasm");
    std::fs::write(&broken, b"not wasm").expect("write");
    let extra = format!(
        "\n[[app]]\nname = \"broken\"\ntenant = \"dev\"\nsource = \"file:{}\"\n\n[[route]]\nhost = \"broken.test\"\napp = \"broken\"\n",
        broken.display()
    );
    std::fs::write(&cfg, config(&dir, "hello", &extra)).expect("write config");
    let node = Daemon::serve(&cfg);
    let at = |host: &str, path: &str| curl(&node.url(path), &["-H", &format!("Host: {host}")]);
    let hello = at("localhost", "/anything");
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello\n"));
    let wild = curl(&node.url("/echo/meta"), &["-H", "Host: shop.example.test"]);
    assert_eq!(wild.status, 200);
    assert!(wild.text().contains("path: /meta"), "{}", wild.text());
    assert_eq!(
        at("shop.example.test", "/other").status,
        404,
        "only /echo is routed there"
    );
    assert_eq!(
        at("example.test", "/echo").status,
        404,
        "the wildcard needs a subdomain"
    );
    assert_eq!(at("unknown.test", "/").status, 404);
    let broken = at("broken.test", "/");
    assert_eq!(broken.status, 503);
    assert_eq!(broken.header("retry-after"), Some("1"));
    let ready = curl(&node.admin_url("/readyz"), &[]);
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("broken"));
    let apps = curl(&node.admin_url("/apps"), &[]).text();
    assert!(apps.contains("\"app\": \"hello\""), "{apps}");
    assert!(apps.contains("not a WebAssembly module"), "{apps}");
}

/// A series as `name{a="x",b="y"}`: its name and its labels, in any order.
fn series_key(series: &str) -> (String, std::collections::BTreeSet<String>) {
    let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
    let labels = labels.trim_end_matches('}');
    (
        name.to_string(),
        labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// A sample of `/metrics` (`name{labels}`, labels in any order), if present.
pub fn metric(node: &Daemon, series: &str) -> Option<f64> {
    let want = series_key(series);
    let text = curl(&node.admin_url("/metrics"), &[]).text();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (series_key(key) == want).then(|| value.parse().ok())?
    })
}

/// Wait (up to 20 s) until a series of `/metrics` reads `value`.
pub fn wait_for_metric(node: &Daemon, series: &str, value: f64) {
    let until = Instant::now() + Duration::from_secs(20);
    while metric(node, series) != Some(value) {
        assert!(
            Instant::now() < until,
            "{series} is {:?}, never {value}:\n{}",
            metric(node, series),
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Slow requests (1.5 s each) to the `slow` app, started now in the background: each reply and
/// when it ended.
fn slow_requests(node: &Daemon, count: usize) -> Vec<std::thread::JoinHandle<(Reply, Instant)>> {
    (0..count)
        .map(|_| {
            let url = node.url("/?sleep=1500");
            std::thread::spawn(move || {
                let reply = curl(&url, &["-H", "Host: slow.test"]);
                (reply, Instant::now())
            })
        })
        .collect()
}

/// A bounded loop of requests while the route changes, an invalid file is written, and the
/// route changes back: no request fails, and the app served changes exactly when valid files
/// land. Slow requests in flight across each change finish on the configuration they started
/// on.
#[test]
fn reload_under_load_drops_nothing_and_ignores_invalid_files() {
    let dir = TempDir::new("serve-reload");
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir, "hello", "")).expect("write config");
    let node = Daemon::serve(&cfg);
    let url = node.url("/");
    let seen: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (seen, done, url) = (seen.clone(), done.clone(), url.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..5000 {
                if done.load(std::sync::atomic::Ordering::SeqCst)
                    || started.elapsed() > Duration::from_secs(60)
                {
                    break;
                }
                let r = curl(&url, &["-H", "Host: localhost"]);
                let who = if r.text() == "hello\n" {
                    "hello"
                } else if r.header("x-echo-method").is_some() {
                    "echo"
                } else {
                    "other"
                };
                seen.lock()
                    .expect("seen")
                    .push((Instant::now(), r.status, who.to_string()));
            }
        })
    };
    // Until the loop has served `who` `more` times in a row (bounded by 20 s).
    let wait_for = |who: &str, more: usize| {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let seen = seen.lock().expect("seen");
            if seen.len() >= more && seen[seen.len() - more..].iter().all(|s| s.2 == who) {
                return;
            }
            drop(seen);
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never served {who} {more} times:\n{}", node.log_text());
    };
    let slow_in_flight = |count: f64| {
        wait_for_metric(
            &node,
            "outpost_active_instances{tenant=\"slowpoke\"}",
            count,
        )
    };
    wait_for("hello", 10);
    let slow_on_hello = slow_requests(&node, 2);
    slow_in_flight(2.0);
    let to_echo = Instant::now();
    write_atomically(&cfg, &config(&dir, "echo", ""));
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 1.0);
    let to_echo_counted = Instant::now();
    wait_for("echo", 10);
    write_atomically(
        &cfg,
        &config(
            &dir,
            "hello",
            "\n[[route]]\nhost = \"localhost\"\napp = \"nope\"\n",
        ),
    );
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"error\"}", 1.0);
    wait_for("echo", 10);
    let slow_on_echo = slow_requests(&node, 2);
    slow_in_flight(2.0);
    let back = Instant::now();
    write_atomically(&cfg, &config(&dir, "hello", ""));
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 2.0);
    let back_counted = Instant::now();
    wait_for("hello", 10);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    looper.join().expect("loop");

    // Started before a reload, finished after it, served whole by the app they started on.
    for (handles, config, reload) in [
        (slow_on_hello, "hello", to_echo_counted),
        (slow_on_echo, "echo", back_counted),
    ] {
        for handle in handles {
            let (reply, ended) = handle.join().expect("slow request");
            assert_eq!(
                (reply.status, reply.text()),
                (200, format!("first\nsecond {config}\n")),
                "{}",
                node.log_text()
            );
            assert!(ended > reload, "a slow request ended before the reload");
        }
    }

    let seen = seen.lock().expect("seen");
    assert!(
        seen.iter().all(|s| s.1 == 200),
        "a request failed: {:?}",
        seen.iter().find(|s| s.1 != 200)
    );
    assert!(seen.iter().all(|s| s.2 != "other"));
    // hello* echo+ hello+: exactly two switches, each after its valid file landed.
    let switches: Vec<(Instant, &str)> = seen
        .windows(2)
        .filter(|w| w[0].2 != w[1].2)
        .map(|w| (w[1].0, w[1].2.as_str()))
        .collect();
    assert_eq!(switches.len(), 2, "{switches:?}");
    assert_eq!(switches[0].1, "echo");
    assert!(switches[0].0 > to_echo);
    assert_eq!(switches[1].1, "hello");
    assert!(
        switches[1].0 > back,
        "the invalid file changed what was served"
    );
    assert!(node.log_text().contains("route to unknown app `nope`"));
}

#[test]
fn the_example_configuration_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("check")
        .arg(repo_root().join("examples/outpost.toml"))
        .output()
        .expect("outpost check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 1 tenants, 2 apps, 2 routes"),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_and_exits_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("check")
        .arg(repo_root().join("edge-config/tests/ui/invalid/several_mistakes_at_once.toml"))
        .output()
        .expect("outpost check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": error: ").count(), 4, "{stderr}");
    assert!(
        stderr.contains("several_mistakes_at_once.toml:5:10: error:"),
        "{stderr}"
    );
}

/// SIGHUP reloads the file (counted, logged) even when its contents did not change.
#[test]
fn sighup_reloads_the_configuration() {
    let dir = TempDir::new("serve-sighup");
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir, "hello", "")).expect("write config");
    let node = Daemon::serve(&cfg);
    assert_eq!(
        metric(&node, "outpost_config_reloads_total{result=\"ok\"}"),
        None
    );
    let hup = |node: &Daemon| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &node.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hup(&node);
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 1.0);
    assert!(
        node.log_text()
            .contains("SIGHUP: reloading the configuration"),
        "{}",
        node.log_text()
    );
    hup(&node);
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 2.0);
    let reply = curl(&node.url("/"), &["-H", "Host: localhost"]);
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello\n"));
}

/// A reload that adds a tenant with an app and a route, then one that removes them, while a
/// loop of requests to another app runs: the new app is served after the first, refused (404,
/// gone from /apps) after the second, and the loop never fails.
#[test]
fn a_reload_adds_and_removes_apps_and_tenants_while_traffic_runs() {
    let dir = TempDir::new("serve-add-remove");
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir, "hello", "")).expect("write config");
    let node = Daemon::serve(&cfg);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (done, url) = (done.clone(), node.url("/"));
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            let started = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
                && replies.len() < 5000
            {
                let r = curl(&url, &["-H", "Host: localhost"]);
                replies.push((r.status, r.text()));
            }
            replies
        })
    };
    let extra = |host: &str| curl(&node.url("/extra"), &["-H", &format!("Host: {host}")]);
    assert_eq!(extra("extra.test").status, 404);
    let added = format!(
        "\n[[tenant]]\nname = \"newcomer\"\nallow_unsigned = true\n{}",
        app_routed("extra", "newcomer", "extra.test", &wat_guest("hello"))
    );
    write_atomically(&cfg, &config(&dir, "hello", &added));
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 1.0);
    let reply = extra("extra.test");
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello\n"));
    let apps = curl(&node.admin_url("/apps"), &[]).text();
    assert!(apps.contains("\"tenant\": \"newcomer\""), "{apps}");
    assert_eq!(curl(&node.admin_url("/readyz"), &[]).status, 200);
    write_atomically(&cfg, &config(&dir, "hello", ""));
    wait_for_metric(&node, "outpost_config_reloads_total{result=\"ok\"}", 2.0);
    assert_eq!(extra("extra.test").status, 404);
    let apps = curl(&node.admin_url("/apps"), &[]).text();
    assert!(!apps.contains("newcomer"), "{apps}");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let replies = looper.join().expect("loop");
    assert!(!replies.is_empty());
    assert!(
        replies.iter().all(|r| *r == (200, "hello\n".to_string())),
        "{:?}",
        replies.iter().find(|r| r.0 != 200)
    );
}

/// The admin probes: /healthz 200 while the process runs; /readyz 200 when every app has a
/// runnable version (the 503 case: `routes_by_host_and_prefix_and_reports_readiness`).
#[test]
fn healthz_and_readyz_answer_200_when_all_is_well() {
    let dir = TempDir::new("serve-health");
    let cfg = dir.path("node.toml");
    std::fs::write(&cfg, config(&dir, "hello", "")).expect("write config");
    let node = Daemon::serve(&cfg);
    assert_eq!(curl(&node.admin_url("/healthz"), &[]).status, 200);
    assert_eq!(curl(&node.admin_url("/readyz"), &[]).status, 200);
}

/// `self_signed = true` with no certificate: HTTPS on a generated certificate for
/// localhost, its PEM written to DATA_DIR/tls/localhost.pem (what the README's quick start
/// hands curl), and a warning logged.
#[test]
fn self_signed_writes_the_certificate_the_quick_start_uses() {
    let dir = TempDir::new("serve-self-signed");
    let cfg = dir.path("node.toml");
    let text = config(&dir, "hello", "").replacen(
        "admin = \"127.0.0.1:0\"\n",
        "admin = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[tls]\nself_signed = true\n",
        1,
    );
    std::fs::write(&cfg, &text).expect("write config");
    let node = Daemon::serve_with(&cfg, &["https", "admin"]);
    let pem = dir.path("data").join("tls/localhost.pem");
    assert!(
        pem.exists(),
        "{} missing:\n{}",
        pem.display(),
        node.log_text()
    );
    let port = node.https.rsplit(':').next().unwrap_or("0").to_string();
    let reply = curl(
        &format!("https://localhost:{port}/"),
        &[
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "--cacert",
            &pem.display().to_string(),
        ],
    );
    assert_eq!(
        (reply.status, reply.text().as_str(), reply.curl_exit),
        (200, "hello\n", 0),
        "{}",
        node.log_text()
    );
    assert!(
        node.log_text()
            .contains("serving a self-signed certificate for localhost"),
        "{}",
        node.log_text()
    );
}
