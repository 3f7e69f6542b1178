//! Streams: writes a first line, sleeps, then a second, so a client can see the response start
//! before the guest ends. `?sleep=MS` sets the pause (default 1500). With `CONFIG` in its
//! environment (an app variable), the second line names it: "second CONFIG".
use std::io::Write;
use std::time::Duration;

fn main() {
    let ms: u64 = std::env::var("QUERY_STRING")
        .ok()
        .and_then(|q| q.strip_prefix("sleep=").and_then(|v| v.parse().ok()))
        .unwrap_or(1500);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = write!(out, "Content-Type: text/plain\r\n\r\nfirst\n");
    let _ = out.flush();
    std::thread::sleep(Duration::from_millis(ms));
    match std::env::var("CONFIG") {
        Ok(config) => {
            let _ = writeln!(out, "second {config}");
        }
        Err(_) => {
            let _ = writeln!(out, "second");
        }
    }
    let _ = out.flush();
}
