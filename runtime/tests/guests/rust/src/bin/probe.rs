//! Looks for the daemon's environment through Rust std (the filesystem and socket imports are
//! probed by tests/guests/wat/isolation.wat, which calls the host itself: std on
//! wasm32-wasip1 refuses some of those calls without asking the host).
use std::io::Write;

fn main() {
    let mut out = String::new();
    let leaked: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OUTPOST_PROBE_SECRET") || k == "PATH" || k == "HOME")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if leaked.is_empty() {
        out.push_str("env: clean\n");
    } else {
        out.push_str(&format!("env: LEAKED {}\n", leaked.join(" ")));
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = write!(lock, "Content-Type: text/plain\r\n\r\n{out}");
}
