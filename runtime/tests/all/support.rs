//! Test support: guests built from source, the real `outpost` binary started on loopback, and
//! curl as the client. Nothing here is skipped when a tool is missing: it fails, naming it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The checkout the tests run from. Cargo sets CARGO_MANIFEST_DIR when it runs a test, which
/// stays right when one target directory serves several checkouts (the compile-time value
/// would point at whichever checkout built the binary).
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().expect("workspace root").to_path_buf()
}

/// Held by the tests that load the node heavily or measure time (the soak, the hostile and the
/// fairness tests): they run one at a time, so neither's load skews the other's figures.
pub fn heavy_test() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `outpost` binary under test: `OUTPOST_BIN` when set (a copy taken right after the
/// build, since a target directory shared by several checkouts holds one `debug/outpost` that
/// another checkout's build may replace mid-run), else the one Cargo built.
pub fn outpost_bin() -> PathBuf {
    std::env::var_os("OUTPOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outpost")))
}

/// An `[[app]]` from a module file and the `[[route]]` that serves it at `host` + `/PATH`, for
/// test configurations. App names cannot hold `_`: it becomes `-`.
pub fn app_routed(path: &str, tenant: &str, host: &str, module: &Path) -> String {
    format!(
        "\n[[app]]\nname = \"{app}\"\ntenant = \"{tenant}\"\nsource = \"file:{}\"\n\n[[route]]\nhost = \"{host}\"\npath = \"/{path}\"\napp = \"{app}\"\n",
        module.display(),
        app = path.replace('_', "-"),
    )
}

/// Scratch space for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("outpost-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where this checkout's test guests are built: below the target directory, in a folder of this
/// checkout's own (one target directory may serve several checkouts whose guests differ).
fn guest_out_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    repo_root().hash(&mut h);
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join(format!("guests-{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).expect("guest dir");
    dir
}

fn run_tool(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot start {:?}: {e} (scripts/test installs it)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Build a Rust guest crate for wasm32-wasip1 (once per test run) and return the module path.
pub fn rust_guest(crate_dir: &str, bin: &str) -> PathBuf {
    let _one = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let target_dir = guest_out_dir().join("rust");
    let wasm = target_dir
        .join("wasm32-wasip1/release")
        .join(format!("{bin}.wasm"));
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|c| c == crate_dir) {
        run_tool(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--target",
                    "wasm32-wasip1",
                    "--manifest-path",
                ])
                .arg(repo_root().join(crate_dir).join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS"),
            &format!("building Rust guest {crate_dir}"),
        );
        built.push(crate_dir.to_string());
    }
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    wasm
}

/// Build the C example with clang and wasi-libc.
pub fn c_guest() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let out = guest_out_dir().join("hello-c.wasm");
        run_tool(
            Command::new("clang")
                .args(["--target=wasm32-wasi", "-O2", "-o"])
                .arg(&out)
                .arg(repo_root().join("examples/hello-c/hello.c")),
            "building the C guest",
        );
        out
    })
    .clone()
}

/// A WAT fixture from tests/guests/wat, assembled to a module file.
pub fn wat_guest(name: &str) -> PathBuf {
    let src = repo_root()
        .join("runtime/tests/guests/wat")
        .join(format!("{name}.wat"));
    let text = std::fs::read_to_string(&src).expect("read wat");
    let bytes = wasmer::wat2wasm(text.as_bytes()).expect("assemble wat");
    // Named by content and written by rename: tests running in parallel never see a file
    // another test is still writing, nor a different fixture under the same name.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let out = guest_out_dir().join(format!("{name}-{:016x}.wasm", h.finish()));
    if !out.exists() {
        // A temporary name of this writer's own: two tests of one run may assemble the same
        // fixture at once.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = out.with_extension(format!("{}-{n}.tmp", std::process::id()));
        std::fs::write(&tmp, &*bytes).expect("write wasm");
        std::fs::rename(&tmp, &out).expect("rename wasm");
    }
    out
}

pub fn hello_rust() -> PathBuf {
    rust_guest("examples/hello-rust", "hello")
}

pub fn echo_rust() -> PathBuf {
    rust_guest("examples/echo-rust", "echo")
}

pub fn test_guest(bin: &str) -> PathBuf {
    rust_guest("runtime/tests/guests/rust", bin)
}

/// A running `outpost` process, killed on drop; its stderr lines are collected.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub admin: String,
    pub https: String,
    pub http3: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// `outpost run MODULE --listen 127.0.0.1:0 ARGS...`, waiting until it listens.
    pub fn run(module: &Path, data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(outpost_bin());
        cmd.arg("run")
            .arg(module)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start(cmd, &["http"])
    }

    /// `outpost serve --config CONFIG`, waiting until the named listeners ("http", "https",
    /// "http3", "admin") are up.
    pub fn serve_with(config: &Path, listeners: &[&str]) -> Self {
        Self::serve_env(config, listeners, &[])
    }

    /// `serve_with`, with extra environment variables.
    pub fn serve_env(config: &Path, listeners: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(outpost_bin());
        cmd.arg("serve").arg("--config").arg(config);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start(cmd, listeners)
    }

    /// `outpost serve --config CONFIG` with plain http and admin listeners.
    pub fn serve(config: &Path) -> Self {
        Self::serve_with(config, &["http", "admin"])
    }

    fn start(mut cmd: Command, expect: &[&str]) -> Self {
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Killed with the test thread that started it, even when the test binary is killed and
        // no drop runs: an orphaned daemon would keep ports, files and inherited descriptors
        // (a build lock's among them).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start outpost");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let kind = if line.contains("admin listening on http://") {
                    Some("admin")
                } else if line.contains("(HTTP/3, UDP)") {
                    Some("http3")
                } else if line.contains("listening on https://") {
                    Some("https")
                } else if line.contains("listening on http://") {
                    Some("http")
                } else {
                    None
                };
                if let Some(kind) = kind {
                    let addr = line
                        .split("://")
                        .nth(1)
                        .and_then(|a| a.split_whitespace().next())
                        .unwrap_or("");
                    let _ = tx.send((kind, addr.to_string()));
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut found: std::collections::HashMap<&'static str, String> = Default::default();
        let until = Instant::now() + Duration::from_secs(120);
        while !expect.iter().all(|k| found.contains_key(k)) {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((kind, addr)) => {
                    found.insert(kind, addr);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "outpost did not start listening:\n{}",
                        log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                    );
                }
            }
        }
        Self {
            child,
            addr: found.get("http").cloned().unwrap_or_default(),
            admin: found.get("admin").cloned().unwrap_or_default(),
            https: found.get("https").cloned().unwrap_or_default(),
            http3: found.get("http3").cloned().unwrap_or_default(),
            log,
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// The log once at least `count` of its lines contain `needle`, waiting up to 10 s: a line
    /// the daemon wrote reaches this process through a pipe, after the response it is about
    /// may already have.
    pub fn log_with(&self, needle: &str, count: usize) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            let found = log.lines().filter(|l| l.contains(needle)).count();
            if found >= count {
                return log;
            }
            assert!(
                Instant::now() < until,
                "{found} of {count} lines with {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (threads, resident KiB) from /proc.
    pub fn threads_and_rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .expect("proc field")
        };
        (field("Threads:"), field("VmRSS:"))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub curl_exit: i32,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Run curl with extra arguments against `url`; headers and body captured separately.
pub fn curl(url: &str, extra: &[&str]) -> Reply {
    let dir = TempDir::new("curl");
    let (head, body) = (dir.path("head"), dir.path("body"));
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl must be installed (scripts/test installs it)");
    let elapsed = started.elapsed();
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    // With redirects or 100-continue there may be several blocks: the last one counts.
    let block = head_text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        curl_exit: out.status.code().unwrap_or(-1),
        elapsed,
    }
}

/// `count` requests to `url` from one curl, `parallel` at a time: each one's status (0 for a
/// transfer that failed), in completion order.
pub fn curl_parallel(url: &str, count: usize, parallel: usize) -> Vec<u16> {
    curl_many(url, None, count, parallel)
        .into_iter()
        .map(|(status, _)| status)
        .collect()
}

/// Write a file the way an operator's editor does: a temporary file, then a rename.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `n` requests to `url` (with `Host: host` if given), at most `parallel` at once, from one
/// curl: each one's (status, seconds) in completion order, status 0 for a failed transfer.
pub fn curl_many(url: &str, host: Option<&str>, n: usize, parallel: usize) -> Vec<(u16, f64)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60"]);
    if let Some(host) = host {
        cmd.arg("-H").arg(format!("Host: {host}"));
    }
    cmd.args(["--parallel", "--parallel-immediate", "--parallel-max"])
        .arg(parallel.to_string())
        .args(["-w", "%{http_code} %{time_total}\\n"]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd
        .output()
        .expect("curl must be installed (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (code, time) = l.split_once(' ')?;
            Some((code.parse().unwrap_or(0), time.parse().ok()?))
        })
        .collect()
}
