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
{extra}"#,
        data = dir.path("data").display(),
        hello = wat_guest("hello").display(),
        echo = echo_rust().display(),
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

/// A bounded loop of requests while the route changes, an invalid file is written, and the
/// route changes back: no request fails, and the app served changes exactly when valid files
/// land.
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
                    || started.elapsed() > Duration::from_secs(40)
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
    let wait_for = |who: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if seen
                .lock()
                .expect("seen")
                .last()
                .is_some_and(|s| s.2 == who)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never served {who}:\n{}", node.log_text());
    };
    wait_for("hello");
    std::thread::sleep(Duration::from_millis(500));
    let to_echo = Instant::now();
    write_atomically(&cfg, &config(&dir, "echo", ""));
    wait_for("echo");
    std::thread::sleep(Duration::from_millis(500));
    write_atomically(
        &cfg,
        &config(
            &dir,
            "hello",
            "\n[[route]]\nhost = \"localhost\"\napp = \"nope\"\n",
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let back = Instant::now();
    write_atomically(&cfg, &config(&dir, "hello", ""));
    wait_for("hello");
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    looper.join().expect("loop");

    let seen = seen.lock().expect("seen");
    assert!(seen.len() > 50, "only {} requests made", seen.len());
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
    let metrics = curl(&node.admin_url("/metrics"), &[]).text();
    assert!(
        metrics.contains("outpost_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_config_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
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
