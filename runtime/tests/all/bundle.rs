//! Bundles end to end against a real CNCF distribution registry (Debian's `docker-registry`)
//! started on loopback by each test: signed pushes, nodes that pull, verify, compile and swap
//! them with no failed request, rejections that keep the last good version, restarts from the
//! cache with the registry down, the local OCI layout path, and skopeo interop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::bundle::format::{self, build_bundle, build_signature_artifact, BundleConfig};
use outpost::bundle::layout::Layout;
use outpost::bundle::sign;
use outpost::bundle::store::Store;

use crate::support::*;

/// A CNCF distribution registry on 127.0.0.1, storage in a temp dir, killed on drop.
struct Registry {
    child: Option<Child>,
    port: u16,
    storage: PathBuf,
    config: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Registry {
    /// Start on a free port.
    fn start(dir: &TempDir) -> Self {
        Self::start_on(dir, free_port(), &[])
    }

    /// Start on `port`; `notify` lists (admin address, token) to send push notifications to.
    fn start_on(dir: &TempDir, port: u16, notify: &[(&str, &str)]) -> Self {
        let storage = dir.path("registry-storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let config = dir.path("registry.yml");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if !notify.is_empty() {
            yml.push_str("notifications:\n  endpoints:\n");
            for (i, (admin, token)) in notify.iter().enumerate() {
                yml.push_str(&format!(
                    "    - name: node{i}\n      url: http://{admin}/registry/notifications\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 5\n      backoff: 1s\n"
                ));
            }
        }
        std::fs::write(&config, yml).expect("registry config");
        let mut r = Self {
            child: None,
            port,
            storage,
            config,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (scripts/test installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let r = curl(
                &format!("http://127.0.0.1:{}/v2/", self.port),
                &["--max-time", "2"],
            );
            if r.status == 200 {
                return;
            }
            assert!(
                Instant::now() < until,
                "the registry did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding a blob's bytes in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CGI module answering `body`.
fn cgi_module(body: &str) -> Vec<u8> {
    let out = format!("Content-Type: text/plain\\n\\n{body}\\n");
    let len = format!("Content-Type: text/plain\n\n{body}\n").len();
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "{out}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    );
    wasmer::wat2wasm(wat.as_bytes()).expect("wat").into_owned()
}

/// A CGI module of at least `size` bytes (a large passive data segment).
fn big_module(size: usize) -> Vec<u8> {
    let filler = "a".repeat(size);
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data "{filler}")
  (func (export "_start")))"#
    );
    wasmer::wat2wasm(wat.as_bytes()).expect("wat").into_owned()
}

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(outpost_bin())
        .args(args)
        .env_remove("OUTPOST_REGISTRY_AUTH")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run outpost")
}

fn ok_stdout(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `outpost keygen`: (key file, public key text).
fn keygen(dir: &TempDir, name: &str) -> (PathBuf, String) {
    let path = dir.path(&format!("{name}.key"));
    let public = ok_stdout(
        outpost(&["keygen", "--out", path.to_str().expect("utf-8")]),
        "keygen",
    );
    assert!(public.starts_with("ed25519:"), "{public}");
    (path, public)
}

/// `outpost bundle push`: the manifest digest printed.
fn push(dir: &TempDir, module: &[u8], to: &str, key: &Path) -> String {
    let file = dir.path(&format!("m-{}.wasm", &format::digest_of(module)[7..19]));
    std::fs::write(&file, module).expect("write module");
    let digest = ok_stdout(
        outpost(&[
            "bundle",
            "push",
            file.to_str().expect("utf-8"),
            "--to",
            to,
            "--key",
            key.to_str().expect("utf-8"),
            "--insecure",
        ]),
        "bundle push",
    );
    assert!(format::valid_digest(&digest), "{digest}");
    digest
}

struct Node {
    daemon: Daemon,
    config: PathBuf,
}

fn node_config(
    dir: &TempDir,
    name: &str,
    source: &str,
    registry: &str,
    keys: (&str, &str),
    extra: &str,
) -> PathBuf {
    let token = dir.path("notify.token");
    if !token.exists() {
        std::fs::write(&token, "s3cret-token\n").expect("token");
    }
    let text = format!(
        r#"[node]
data_dir = "{data}"

[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[registry]
poll = "1s"
insecure = ["{registry}"]
notify_token_file = "{token}"
{extra}
[[tenant]]
name = "acme"
keys = ["{acme}"]

[[tenant]]
name = "evil"
keys = ["{evil}"]

[[app]]
name = "shop"
tenant = "acme"
source = "{source}"

[[route]]
host = "localhost"
app = "shop"
"#,
        data = dir.path(name).display(),
        token = token.display(),
        acme = keys.0,
        evil = keys.1,
    );
    let path = dir.path(&format!("{name}.toml"));
    std::fs::write(&path, text).expect("config");
    path
}

fn start(config: &Path) -> Node {
    Node {
        daemon: Daemon::serve(config),
        config: config.to_path_buf(),
    }
}

fn apps_digest(node: &Daemon) -> Option<String> {
    let apps = curl(&node.admin_url("/apps"), &[]);
    let v: serde_json::Value = serde_json::from_slice(&apps.body).ok()?;
    v.as_array()?
        .iter()
        .find(|a| a["app"] == "shop")?
        .get("digest")?
        .as_str()
        .map(str::to_string)
}

/// Wait (bounded) until the node serves `digest`, returning how long it took.
fn wait_for_digest(node: &Daemon, digest: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while apps_digest(node).as_deref() != Some(digest) {
        assert!(
            started.elapsed() < limit,
            "the node did not serve {digest} within {limit:?}; /apps says {:?}\n{}",
            apps_digest(node),
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn metric(node: &Daemon, name: &str, labels: &[&str]) -> f64 {
    let text = curl(&node.admin_url("/metrics"), &[]).text();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn failures(node: &Daemon, reason: &str) -> f64 {
    metric(
        node,
        "outpost_sync_failures_total{",
        &["app=\"shop\"", &format!("reason=\"{reason}\"")],
    )
}

/// Wait (bounded) until a sync failure with `reason` has been counted.
fn wait_for_failure(node: &Daemon, reason: &str, before: f64) {
    let until = Instant::now() + Duration::from_secs(20);
    while failures(node, reason) <= before {
        assert!(
            Instant::now() < until,
            "no sync failure with reason {reason} was counted\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = node.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("sync failed") && l.contains(&format!("reason=\"{reason}\""))),
        "no log line for {reason}:\n{log}"
    );
}

fn body_of(node: &Daemon) -> (u16, String) {
    let r = curl(&node.url("/"), &["-H", "Host: localhost"]);
    (r.status, r.text())
}

/// Requests in a loop against a node until stopped (bounded in count and time): every
/// status and body seen.
fn load(node_url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(u16, String)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && seen.len() < 20_000 && Instant::now() < until {
            let r = curl(&node_url, &["-H", "Host: localhost"]);
            seen.push((r.status, r.text()));
        }
        seen
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn registry_store(reg: &Registry, repository: &str) -> Store {
    Store::Registry {
        client: outpost::bundle::registry::client(&[reg.host()]).expect("client"),
        auth: oci_client::secrets::RegistryAuth::Anonymous,
        registry: reg.host(),
        repository: repository.into(),
    }
}

/// Push hand-made bundle content (bypassing the CLI's checks), optionally signed, then tag it.
fn push_raw(
    store: &Store,
    built: &format::BuiltBundle,
    key: Option<&ed25519_dalek::SigningKey>,
    tag: &str,
) {
    rt().block_on(async {
        store.push_content(built).await.expect("push content");
        if let Some(key) = key {
            let sig = build_signature_artifact(sign::sign_document(&built.digest, key));
            store
                .push(&sig, &format::signature_tag(&built.digest))
                .await
                .expect("push signature");
        }
        store.tag(built, tag).await.expect("tag");
    });
}

/// A bundle whose manifest is edited after building (its blobs stay).
fn edited(module: Vec<u8>, edit: impl Fn(&mut format::Manifest)) -> format::BuiltBundle {
    let mut b = build_bundle(module, &BundleConfig::default(), None);
    let mut m: format::Manifest = serde_json::from_slice(&b.manifest).expect("manifest");
    edit(&mut m);
    b.manifest = serde_json::to_vec(&m).expect("json");
    b.digest = format::digest_of(&b.manifest);
    b
}

#[test]
fn bundle_three_nodes_follow_pushes_without_failed_requests_and_survive_the_registry() {
    let dir = TempDir::new("bundle-fleet");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    // The registry's port is chosen first so the nodes' configs can name it; the registry
    // starts after the nodes, whose admin addresses its notification config needs.
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let source = format!("oci://{host}/acme/shop:live");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let cfg = node_config(
                &dir,
                &format!("node{i}"),
                &source,
                &host,
                (&acme_pub, &evil_pub),
                "",
            );
            start(&cfg)
        })
        .collect();
    let admins: Vec<String> = nodes.iter().map(|n| n.daemon.admin.clone()).collect();
    let notify: Vec<(&str, &str)> = admins
        .iter()
        .map(|a| (a.as_str(), "s3cret-token"))
        .collect();
    let mut reg = Registry::start_on(&dir, port, &notify);

    let v1 = push(&dir, &cgi_module("v1"), &source, &acme_key);
    for n in &nodes {
        wait_for_digest(&n.daemon, &v1, Duration::from_secs(30));
        assert_eq!(body_of(&n.daemon), (200, "v1\n".to_string()));
    }

    // v2 to the same tag while every node is under load.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = nodes
        .iter()
        .map(|n| load(n.daemon.url("/"), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // let the loops run on v1 first (not a sync)
    let pushed = Instant::now();
    let v2 = push(&dir, &cgi_module("v2"), &source, &acme_key);
    let push_took = pushed.elapsed();
    let mut took = Vec::new();
    for n in &nodes {
        wait_for_digest(&n.daemon, &v2, Duration::from_secs(30));
        took.push(pushed.elapsed());
    }
    // Every loop sees v2 answered before it stops.
    let until = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| body_of(&n.daemon).1 != "v2\n") {
        assert!(Instant::now() < until, "v2 not answered everywhere");
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for (i, l) in loads.into_iter().enumerate() {
        let seen = l.join().expect("load thread");
        total += seen.len();
        let bad: Vec<_> = seen
            .iter()
            .filter(|(s, b)| *s != 200 || (b != "v1\n" && b != "v2\n"))
            .collect();
        assert!(
            bad.is_empty(),
            "node{i}: failed requests across the switch: {bad:?}"
        );
        assert!(
            seen.iter().any(|(_, b)| b == "v1\n"),
            "node{i} never served v1 under load"
        );
    }
    eprintln!(
        "propagation: push took {push_took:?}; nodes served v2 after {took:?} (from the push's start); {total} requests, none failed"
    );
    for n in &nodes {
        let info = metric(
            &n.daemon,
            "outpost_app_info{",
            &[&format!("digest=\"{v2}\""), "tenant=\"acme\""],
        );
        assert_eq!(info, 1.0, "outpost_app_info shows v2");
        assert_eq!(
            metric(
                &n.daemon,
                "outpost_app_info{",
                &[&format!("digest=\"{v1}\"")]
            ),
            0.0
        );
        // Two versions pulled, each swapped in once: v1 into the empty slot, then v2.
        assert_eq!(
            metric(
                &n.daemon,
                "outpost_sync_swaps_total{",
                &["app=\"shop\"", "tenant=\"acme\""]
            ),
            2.0,
            "outpost_sync_swaps_total"
        );
    }

    // Notifications without the shared token are refused.
    let forged = curl(
        &nodes[0].daemon.admin_url("/registry/notifications"),
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer wrong",
            "--data",
            "{\"events\":[]}",
        ],
    );
    assert_eq!(forged.status, 401);
    assert_eq!(
        metric(
            &nodes[0].daemon,
            "outpost_registry_notifications_total{",
            &["result=\"unauthorized\""]
        ),
        1.0
    );
    assert!(
        metric(
            &nodes[0].daemon,
            "outpost_registry_notifications_total{",
            &["result=\"ok\""]
        ) >= 1.0
    );

    // The registry goes away: every node keeps serving v2, and polls count as failures.
    reg.stop();
    for n in &nodes {
        wait_for_failure(&n.daemon, "unreachable", failures(&n.daemon, "unreachable"));
        assert_eq!(body_of(&n.daemon), (200, "v2\n".to_string()));
    }
    // A node restarted with the registry still down serves v2 from its cache.
    let cfg = nodes[0].config.clone();
    let old = nodes.remove(0);
    drop(old);
    let restarted = start(&cfg);
    assert_eq!(
        apps_digest(&restarted.daemon).as_deref(),
        Some(v2.as_str()),
        "{}",
        restarted.daemon.log_text()
    );
    assert_eq!(body_of(&restarted.daemon), (200, "v2\n".to_string()));
    // Served from its cache at start: no version swapped in by the sync loop.
    assert_eq!(
        metric(&restarted.daemon, "outpost_sync_swaps_total{", &[]),
        0.0
    );
    assert!(
        restarted.daemon.log_text().contains("app ready"),
        "{}",
        restarted.daemon.log_text()
    );
    let ready = curl(&restarted.daemon.admin_url("/readyz"), &[]);
    assert_eq!(ready.status, 200);
}

#[test]
fn bundle_rejections_keep_the_last_good_version() {
    let dir = TempDir::new("bundle-reject");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (evil_key, evil_pub) = keygen(&dir, "evil");
    let reg = Registry::start(&dir);
    let source = format!("oci://{}/acme/shop:live", reg.host());
    let cfg = node_config(
        &dir,
        "node",
        &source,
        &reg.host(),
        (&acme_pub, &evil_pub),
        "max_module = \"64KiB\"\n",
    );
    // Another tenant's app pointing at this tenant's repository.
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "\n[[app]]\nname = \"borrowed\"\ntenant = \"evil\"\nsource = \"{source}\"\n\n[[route]]\nhost = \"evil.test\"\napp = \"borrowed\"\n"
    ));
    std::fs::write(&cfg, text).expect("config");
    let node = start(&cfg);
    let n = &node.daemon;
    let v1 = push(&dir, &cgi_module("v1"), &source, &acme_key);
    wait_for_digest(n, &v1, Duration::from_secs(30));
    // acme's bundle is never served under evil's app: acme's key is not evil's.
    let until = Instant::now() + Duration::from_secs(20);
    while metric(
        n,
        "outpost_sync_failures_total{",
        &["app=\"borrowed\"", "reason=\"signature\""],
    ) < 1.0
    {
        assert!(
            Instant::now() < until,
            "the borrowed app was not refused\n{}",
            n.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let borrowed = curl(&n.url("/"), &["-H", "Host: evil.test"]);
    assert_eq!(borrowed.status, 503, "{}", borrowed.text());
    let store = registry_store(&reg, "acme/shop");
    let acme = sign::read_key_file(&acme_key).expect("acme key");
    let still_v1 = |what: &str| {
        assert_eq!(body_of(n), (200, "v1\n".to_string()), "after {what}");
        assert_eq!(apps_digest(n).as_deref(), Some(v1.as_str()), "after {what}");
    };

    // Another tenant's key, even pushed to this tenant's repository.
    let before = failures(n, "signature");
    push(&dir, &cgi_module("evil"), &source, &evil_key);
    wait_for_failure(n, "signature", before);
    still_v1("a bundle signed by another tenant's key");

    // Unsigned.
    let before = failures(n, "unsigned");
    push_raw(
        &store,
        &build_bundle(cgi_module("unsigned"), &BundleConfig::default(), None),
        None,
        "live",
    );
    wait_for_failure(n, "unsigned", before);
    still_v1("an unsigned bundle");

    // A blob altered in the registry's storage (same length, other bytes).
    let before = failures(n, "digest");
    let tampered = build_bundle(cgi_module("tamper"), &BundleConfig::default(), None);
    push_raw(&store, &tampered, Some(&acme), "staging");
    let wasm = &tampered.blobs[1];
    let file = reg.blob_file(&wasm.descriptor.digest);
    let mut bytes = std::fs::read(&file).expect("registry blob");
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).expect("alter blob");
    push_raw(&store, &tampered, Some(&acme), "live");
    wait_for_failure(n, "digest", before);
    still_v1("a blob altered in the registry");

    // A Wasm layer over the node's cap (64 KiB here).
    let before = failures(n, "too_large");
    push(&dir, &big_module(100 << 10), &source, &acme_key);
    wait_for_failure(n, "too_large", before);
    still_v1("an oversize Wasm layer");

    // A layer that is not Wasm.
    let before = failures(n, "layer");
    let not_wasm = edited(cgi_module("text"), |m| {
        m.layers[0].media_type = "text/plain".into()
    });
    push_raw(&store, &not_wasm, Some(&acme), "live");
    wait_for_failure(n, "layer", before);
    still_v1("a non-Wasm layer");

    // A module the sandbox refuses: the CLI refuses it with the sandbox's message, and a
    // bundle made without the CLI is refused by the node.
    let reactor = std::fs::read(wat_guest("reactor")).expect("reactor");
    let file = dir.path("reactor.wasm");
    std::fs::write(&file, &reactor).expect("write");
    let out = outpost(&[
        "bundle",
        "push",
        file.to_str().expect("utf-8"),
        "--to",
        &source,
        "--key",
        acme_key.to_str().expect("utf-8"),
        "--insecure",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exports no `_start` function"), "{err}");
    let before = failures(n, "module");
    push_raw(
        &store,
        &build_bundle(reactor, &BundleConfig::default(), None),
        Some(&acme),
        "live",
    );
    wait_for_failure(n, "module", before);
    still_v1("a module the sandbox refuses");

    // /apps says why the newest version is not serving.
    let apps = curl(&n.admin_url("/apps"), &[]).text();
    assert!(
        apps.contains("last_error") && apps.contains("module refused"),
        "{apps}"
    );
}

#[test]
fn bundle_local_layout_end_to_end_with_no_registry() {
    let dir = TempDir::new("bundle-local");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    let cfg = node_config(
        &dir,
        "node",
        "local:shop:live",
        "127.0.0.1:1",
        (&acme_pub, &evil_pub),
        "",
    );
    let bundles = dir.path("node").join("bundles");
    let to = format!("local:{}:shop:live", bundles.display());
    let v1 = push(&dir, &cgi_module("local v1"), &to, &acme_key);
    // A spec-conformant layout: oci-layout, index.json naming the tag, the blobs.
    let layout_dir = bundles.join("shop");
    assert!(layout_dir.join("oci-layout").is_file());
    let index = std::fs::read_to_string(layout_dir.join("index.json")).expect("index");
    assert!(
        index.contains("\"org.opencontainers.image.ref.name\": \"live\""),
        "{index}"
    );
    assert!(layout_dir.join("blobs/sha256").join(&v1[7..]).is_file());

    let node = start(&cfg);
    let n = &node.daemon;
    wait_for_digest(n, &v1, Duration::from_secs(30));
    assert_eq!(body_of(n), (200, "local v1\n".to_string()));
    let v2 = push(&dir, &cgi_module("local v2"), &to, &acme_key);
    wait_for_digest(n, &v2, Duration::from_secs(30));
    assert_eq!(body_of(n), (200, "local v2\n".to_string()));

    // A manifest that is not JSON (a registry would refuse to store it; a layout cannot).
    let layout = Layout::open(&layout_dir).expect("layout");
    let garbage = b"this is not json".to_vec();
    let garbage_digest = format::digest_of(&garbage);
    layout.write_blob(&garbage_digest, &garbage).expect("blob");
    let acme = sign::read_key_file(&acme_key).expect("key");
    let sig = build_signature_artifact(sign::sign_document(&garbage_digest, &acme));
    let sig_store = Store::Layout(layout.clone());
    rt().block_on(sig_store.push(&sig, &format::signature_tag(&garbage_digest)))
        .expect("sig");
    let before = failures(n, "manifest");
    layout
        .set_ref(
            "live",
            &garbage_digest,
            garbage.len() as u64,
            BTreeMap::new(),
        )
        .expect("tag");
    wait_for_failure(n, "manifest", before);
    assert_eq!(body_of(n), (200, "local v2\n".to_string()));

    // Rollback by pinning a digest: the older version serves within one sync.
    let pinned = std::fs::read_to_string(&node.config)
        .expect("config")
        .replace("local:shop:live", &format!("local:shop@{v1}"));
    write_atomically(&node.config, &pinned);
    wait_for_digest(n, &v1, Duration::from_secs(30));
    assert_eq!(body_of(n), (200, "local v1\n".to_string()));

    // `bundle list` shows versions with their signature status.
    let listed = ok_stdout(
        outpost(&[
            "bundle",
            "list",
            &format!("local:{}:shop", bundles.display()),
            "--key",
            &acme_pub,
        ]),
        "bundle list",
    );
    assert!(
        listed.contains("live") && listed.contains(&garbage_digest),
        "{listed}"
    );
}

#[test]
fn bundle_skopeo_copy_keeps_digest_and_signature() {
    let dir = TempDir::new("bundle-skopeo");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    let reg = Registry::start(&dir);
    let source = format!("oci://{}/acme/shop:live", reg.host());
    let digest = push(&dir, &cgi_module("copied"), &source, &acme_key);
    // inspect and list against the registry.
    let inspected = ok_stdout(
        outpost(&[
            "bundle",
            "inspect",
            &source,
            "--key",
            &acme_pub,
            "--insecure",
        ]),
        "bundle inspect (registry)",
    );
    assert!(
        inspected.contains("signature verified") && inspected.contains("application/wasm"),
        "{inspected}"
    );
    let listed = ok_stdout(
        outpost(&[
            "bundle",
            "list",
            &format!("oci://{}/acme/shop", reg.host()),
            "--key",
            &acme_pub,
            "--insecure",
        ]),
        "bundle list (registry)",
    );
    assert!(
        listed.starts_with("live\t")
            && listed.contains(&digest)
            && listed.contains("signature verified"),
        "{listed}"
    );
    assert!(
        !listed.contains(".sig"),
        "signature tags are not versions: {listed}"
    );
    // Copy the bundle and its signature from the registry into the node's local store.
    let bundles = dir.path("node").join("bundles");
    std::fs::create_dir_all(&bundles).expect("bundles");
    let sig_tag = format::signature_tag(&digest);
    for tag in ["live", sig_tag.as_str()] {
        let out = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/acme/shop:{tag}", reg.host()))
            .arg(format!("oci:{}:{tag}", bundles.join("shop").display()))
            .output()
            .expect("skopeo must be installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let inspected = ok_stdout(
        outpost(&[
            "bundle",
            "inspect",
            &format!("local:{}:shop:live", bundles.display()),
            "--key",
            &acme_pub,
        ]),
        "bundle inspect",
    );
    assert!(
        inspected.contains(&format!("digest: {digest}")),
        "{inspected}"
    );
    assert!(inspected.contains("signature verified"), "{inspected}");
    let other = outpost(&[
        "bundle",
        "inspect",
        &format!("local:{}:shop:live", bundles.display()),
        "--key",
        &evil_pub,
    ]);
    assert!(String::from_utf8_lossy(&other.stdout).contains("NOT VERIFIED"));
    // And a node serves the copy from its local store.
    let cfg = node_config(
        &dir,
        "node",
        "local:shop:live",
        &reg.host(),
        (&acme_pub, &evil_pub),
        "",
    );
    let node = start(&cfg);
    wait_for_digest(&node.daemon, &digest, Duration::from_secs(30));
    assert_eq!(body_of(&node.daemon), (200, "copied\n".to_string()));
}

/// Every blob in a node's cache hashes to its name; every compiled artifact matches its
/// checksum header (magic, sha256 of the rest). Returns how many files were checked.
fn assert_cache_intact(data_dir: &Path) -> usize {
    let mut checked = 0;
    let blobs = data_dir.join("cache/blobs/sha256");
    for e in std::fs::read_dir(&blobs).expect("cache blobs") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            continue; // an unfinished write: never read as a blob, removed at the next start
        }
        let bytes = std::fs::read(e.path()).expect("blob");
        assert_eq!(
            format::digest_of(&bytes),
            format!("sha256:{name}"),
            "corrupt cache blob {name}"
        );
        checked += 1;
    }
    for e in std::fs::read_dir(data_dir.join("artifacts")).expect("artifacts") {
        let e = e.expect("entry");
        if !e.file_name().to_string_lossy().ends_with(".bin") {
            continue;
        }
        // Artifacts are authenticated with the node's key: the cache itself says whether one
        // verifies (`<module digest>-<engine fingerprint>.bin`).
        let name = e.file_name().to_string_lossy().into_owned();
        let (digest, fingerprint) = name
            .trim_end_matches(".bin")
            .split_once('-')
            .expect("artifact name");
        let cache = outpost::sandbox::cache::ArtifactCache::open(data_dir, fingerprint.into())
            .expect("artifact cache");
        assert!(
            cache.get(digest).is_some(),
            "corrupt artifact {:?}",
            e.path()
        );
        checked += 1;
    }
    let index = std::fs::read(data_dir.join("cache/index.json")).expect("index");
    serde_json::from_slice::<serde_json::Value>(&index).expect("index.json is whole JSON");
    checked
}

#[test]
fn bundle_faults_keep_serving_and_leave_no_corrupt_cache() {
    let dir = TempDir::new("bundle-faults");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    let mut reg = Registry::start(&dir);
    let source = format!("oci://{}/acme/shop:live", reg.host());
    let cfg = node_config(
        &dir,
        "node",
        &source,
        &reg.host(),
        (&acme_pub, &evil_pub),
        "",
    );
    let data = dir.path("node");
    let mut node = start(&cfg);
    let v1 = push(&dir, &cgi_module("v1"), &source, &acme_key);
    wait_for_digest(&node.daemon, &v1, Duration::from_secs(30));

    // The cache cannot be written: the sync fails with reason=cache, v1 keeps serving, and
    // once the cache is writable again the new version arrives.
    let blobs = data.join("cache/blobs/sha256");
    let parked = data.join("cache/blobs/parked");
    std::fs::rename(&blobs, &parked).expect("park blobs");
    std::fs::write(&blobs, b"not a directory").expect("block blobs");
    let before = failures(&node.daemon, "cache");
    let v2 = push(&dir, &cgi_module("v2"), &source, &acme_key);
    wait_for_failure(&node.daemon, "cache", before);
    assert_eq!(body_of(&node.daemon), (200, "v1\n".to_string()));
    std::fs::remove_file(&blobs).expect("unblock");
    std::fs::rename(&parked, &blobs).expect("unpark");
    wait_for_digest(&node.daemon, &v2, Duration::from_secs(60));

    // A blob truncated in the registry's storage.
    let store = registry_store(&reg, "acme/shop");
    let acme = sign::read_key_file(&acme_key).expect("key");
    let short = build_bundle(cgi_module("short"), &BundleConfig::default(), None);
    push_raw(&store, &short, Some(&acme), "staging");
    let file = reg.blob_file(&short.blobs[1].descriptor.digest);
    let bytes = std::fs::read(&file).expect("blob");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let before = failures(&node.daemon, "digest");
    push_raw(&store, &short, Some(&acme), "live");
    wait_for_failure(&node.daemon, "digest", before);
    assert_eq!(body_of(&node.daemon), (200, "v2\n".to_string()));

    // SIGKILL at varying points of syncs (pull, blob and artifact writes, the index update):
    // each restart finds only intact cache entries and serves a version it can prove.
    let mut last = v2.clone();
    for i in 0..5u64 {
        last = push(&dir, &cgi_module(&format!("kill{i}")), &source, &acme_key);
        // Deliberate fault timing, not synchronization: kill somewhere inside the sync.
        std::thread::sleep(Duration::from_millis(i * 15));
        let _ = node.daemon.child.kill();
        let _ = node.daemon.child.wait();
        let checked = assert_cache_intact(&data);
        assert!(checked >= 3, "only {checked} cache files");
        node = start(&cfg);
        assert_eq!(body_of(&node.daemon).0, 200, "{}", node.daemon.log_text());
    }
    wait_for_digest(&node.daemon, &last, Duration::from_secs(30));
    assert_eq!(body_of(&node.daemon), (200, "kill4\n".to_string()));

    // With the registry gone, a restart serves the last version from the cache.
    reg.stop();
    drop(node);
    assert_cache_intact(&data);
    let node = start(&cfg);
    assert_eq!(
        apps_digest(&node.daemon).as_deref(),
        Some(last.as_str()),
        "{}",
        node.daemon.log_text()
    );
    assert_eq!(body_of(&node.daemon), (200, "kill4\n".to_string()));
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Propagation from a push to three nodes serving it, 20 pushes, with notifications and with
/// a 1 s poll only; figures for docs/benchmarks.md. Not a test: the benchmark
/// runtime/benches/propagation.rs runs it, with
/// `cargo bench -p outpost --profile dev --bench propagation`.
#[cfg_attr(test, allow(dead_code))]
pub fn bundle_propagation_benchmark() {
    for notify in [true, false] {
        let dir = TempDir::new("bundle-bench");
        let (acme_key, acme_pub) = keygen(&dir, "acme");
        let (_, evil_pub) = keygen(&dir, "evil");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let source = format!("oci://{host}/acme/shop:live");
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let cfg = node_config(
                    &dir,
                    &format!("node{i}"),
                    &source,
                    &host,
                    (&acme_pub, &evil_pub),
                    "",
                );
                start(&cfg)
            })
            .collect();
        let admins: Vec<String> = nodes.iter().map(|n| n.daemon.admin.clone()).collect();
        let endpoints: Vec<(&str, &str)> = if notify {
            admins
                .iter()
                .map(|a| (a.as_str(), "s3cret-token"))
                .collect()
        } else {
            Vec::new()
        };
        let _reg = Registry::start_on(&dir, port, &endpoints);
        let (mut all, mut push_times) = (Vec::new(), Vec::new());
        let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for i in 0..20 {
            let module = cgi_module(&format!("bench {i}"));
            let started = Instant::now();
            let digest = push(&dir, &module, &source, &acme_key);
            let pushed = started.elapsed();
            for n in &nodes {
                wait_for_digest(&n.daemon, &digest, Duration::from_secs(60));
            }
            all.push((started.elapsed() - pushed).as_secs_f64() * 1e3);
            push_times.push(pushed.as_secs_f64() * 1e3);
            for n in &nodes {
                let log = n.daemon.log_text();
                if let Some(line) = log
                    .lines()
                    .find(|l| l.contains("app swapped") && l.contains(&digest))
                {
                    for key in [
                        "resolve_ms",
                        "pull_ms",
                        "verify_ms",
                        "compile_ms",
                        "swap_us",
                    ] {
                        if let Some(v) = field(line, key) {
                            stages.entry(key).or_default().push(v);
                        }
                    }
                }
            }
        }
        let sort = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
        };
        sort(&mut all);
        sort(&mut push_times);
        eprintln!(
            "{}: push (CLI, end to end) median {:.0} ms; push done -> all 3 nodes serving: median {:.0} ms, max {:.0} ms",
            if notify { "notifications + 1 s poll" } else { "1 s poll only" },
            percentile(&push_times, 0.5),
            percentile(&all, 0.5),
            all[all.len() - 1]
        );
        for (key, mut v) in stages {
            sort(&mut v);
            eprintln!(
                "  {key}: median {:.2}, max {:.2} (n={})",
                percentile(&v, 0.5),
                v[v.len() - 1],
                v.len()
            );
        }
    }
}

/// A TCP proxy to the registry that, while `cut` is set, drops any connection once it has
/// sent 64 KiB towards the node: a registry dying in the middle of a blob.
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, stop2) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let cut = cut2.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut server, mut client) = (server, client);
                    let mut buf = [0u8; 16 << 10];
                    let mut sent = 0usize;
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if cut.load(Ordering::SeqCst) && sent > 64 << 10 {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, cut, stop }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A CGI module answering `body`, padded with a passive data segment to about `pad` bytes.
fn padded_module(body: &str, pad: usize) -> Vec<u8> {
    let out = format!("Content-Type: text/plain\\n\\n{body}\\n");
    let len = format!("Content-Type: text/plain\n\n{body}\n").len();
    let filler = "p".repeat(pad);
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "{out}")
  (data "{filler}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    );
    wasmer::wat2wasm(wat.as_bytes()).expect("wat").into_owned()
}

#[test]
fn bundle_registry_dying_mid_pull_keeps_the_last_version() {
    let dir = TempDir::new("bundle-midpull");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    let reg = Registry::start(&dir);
    let proxy = CutProxy::start(reg.port);
    let via_proxy = format!("127.0.0.1:{}", proxy.port);
    let node_source = format!("oci://{via_proxy}/acme/shop:live");
    let push_to = format!("oci://{}/acme/shop:live", reg.host());
    let cfg = node_config(
        &dir,
        "node",
        &node_source,
        &via_proxy,
        (&acme_pub, &evil_pub),
        "",
    );
    let node = start(&cfg);
    let n = &node.daemon;
    let v1 = push(&dir, &cgi_module("v1"), &push_to, &acme_key);
    wait_for_digest(n, &v1, Duration::from_secs(30));

    proxy.cut.store(true, Ordering::SeqCst);
    let before = failures(n, "unreachable");
    let v2 = push(&dir, &padded_module("v2", 2 << 20), &push_to, &acme_key);
    wait_for_failure(n, "unreachable", before);
    let log = n.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("sync failed") && l.contains("blob sha256:")),
        "the pull was not cut inside a blob:\n{log}"
    );
    assert_eq!(body_of(n), (200, "v1\n".to_string()));
    assert_eq!(apps_digest(n).as_deref(), Some(v1.as_str()));
    assert_cache_intact(&dir.path("node"));

    // The registry answers whole again: the next attempt (after backoff) takes v2.
    proxy.cut.store(false, Ordering::SeqCst);
    wait_for_digest(n, &v2, Duration::from_secs(60));
    assert_eq!(body_of(n), (200, "v2\n".to_string()));
    assert_cache_intact(&dir.path("node"));
}

#[test]
fn bundle_assets_are_served_to_the_guest_read_only() {
    let dir = TempDir::new("bundle-assets");
    let (acme_key, acme_pub) = keygen(&dir, "acme");
    let (_, evil_pub) = keygen(&dir, "evil");
    let cfg = node_config(
        &dir,
        "node",
        "local:site:live",
        "127.0.0.1:1",
        (&acme_pub, &evil_pub),
        "",
    );
    let site = dir.path("site");
    std::fs::create_dir_all(site.join("css")).expect("mkdir");
    std::fs::write(site.join("index.html"), "<h1>from assets</h1>\n").expect("write");
    std::fs::write(site.join("css/site.css"), "body{}\n").expect("write");
    // A directory listed over several fd_readdir calls, each resuming at its cookie.
    std::fs::create_dir_all(site.join("many")).expect("mkdir");
    let many: Vec<String> = (0..300).map(|i| format!("file-{i:03}.txt")).collect();
    for name in &many {
        std::fs::write(site.join("many").join(name), name).expect("write");
    }
    // Larger than the host's copy chunk, so a read spans several.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.join("big.bin"), &big).expect("write");
    let module = std::fs::read(test_guest("assets")).expect("guest");
    let file = dir.path("assets.wasm");
    std::fs::write(&file, module).expect("write");
    let bundles = dir.path("node").join("bundles");
    let to = format!("local:{}:site:live", bundles.display());
    ok_stdout(
        outpost(&[
            "bundle",
            "push",
            file.to_str().expect("utf-8"),
            "--to",
            &to,
            "--key",
            acme_key.to_str().expect("utf-8"),
            "--assets",
            site.to_str().expect("utf-8"),
        ]),
        "bundle push",
    );
    let node = start(&cfg);
    let n = &node.daemon;
    let get = |path: &str| {
        let r = curl(&n.url(path), &["-H", "Host: localhost"]);
        (r.status, r.body)
    };
    let until = Instant::now() + Duration::from_secs(60);
    while get("/index.html").0 != 200 {
        assert!(Instant::now() < until, "the bundle never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get("/index.html"),
        (200, b"<h1>from assets</h1>\n".to_vec())
    );
    assert_eq!(get("/css/site.css"), (200, b"body{}\n".to_vec()));
    assert_eq!(
        get("/"),
        (200, b"big.bin\ncss/\nindex.html\nmany/\n".to_vec())
    );
    assert_eq!(get("/css/"), (200, b"site.css\n".to_vec()));
    assert_eq!(
        get("/many/"),
        (200, format!("{}\n", many.join("\n")).into_bytes())
    );
    assert_eq!(get("/many/file-299.txt"), (200, b"file-299.txt".to_vec()));
    let (status, body) = get("/big.bin");
    assert_eq!(status, 200);
    assert!(
        body == big,
        "big.bin came back with {} bytes, not the file",
        body.len()
    );
    let tail = String::from_utf8(get("/big.bin?tail").1).expect("utf-8");
    let last = &big[big.len() - 4..];
    assert_eq!(tail, format!("Ok(\"size {}, last {last:?}\")\n", big.len()));
    // Missing files, writes and escapes get errors; the host's files stay out of reach.
    assert_eq!(get("/missing.txt").0, 404);
    let write = String::from_utf8(get("/new.txt?write").1).expect("utf-8");
    assert!(
        write.starts_with("write: Err") && write.contains("ReadOnly"),
        "{write}"
    );
    let escape = String::from_utf8(get("/etc/hostname?escape").1).expect("utf-8");
    assert!(escape.starts_with("escape: Err"), "{escape}");
}

#[test]
fn run_shows_a_local_directory_as_assets_and_refuses_links() {
    let dir = TempDir::new("run-assets");
    let site = dir.path("site");
    std::fs::create_dir_all(site.join("docs")).expect("mkdir");
    std::fs::write(site.join("docs/a.txt"), "local asset\n").expect("write");
    let guest = test_guest("assets");
    let node = Daemon::run(
        &guest,
        &dir.path("data"),
        &[
            "--assets",
            site.to_str().expect("utf-8"),
            "--assets-mount",
            "/assets",
        ],
        &[],
    );
    let r = curl(&node.url("/docs/a.txt"), &[]);
    assert_eq!((r.status, r.text()), (200, "local asset\n".to_string()));
    assert_eq!(curl(&node.url("/docs/"), &[]).text(), "a.txt\n");
    drop(node);
    // A link could point anywhere on the host: refused before anything serves.
    std::os::unix::fs::symlink("/etc/hostname", site.join("docs/host")).expect("symlink");
    let out = outpost(&[
        "run",
        guest.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path("data").to_str().expect("utf-8"),
        "--assets",
        site.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("only regular files and directories"), "{err}");
}
