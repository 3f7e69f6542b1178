//! Tries to leave the sandbox: read a host file, see the daemon's environment, open a socket.
//! Each line of the body says what happened.
use std::io::Write;

fn main() {
    let mut out = String::new();
    match std::fs::read_to_string("/etc/hostname") {
        Ok(s) => out.push_str(&format!("fs: READ {}\n", s.trim())),
        Err(e) => out.push_str(&format!("fs: denied ({e})\n")),
    }
    let leaked: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OUTPOST_PROBE_SECRET") || k == "PATH" || k == "HOME")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if leaked.is_empty() {
        out.push_str("env: clean\n");
    } else {
        out.push_str(&format!("env: LEAKED {}\n", leaked.join(" ")));
    }
    let target = std::env::var("QUERY_STRING").unwrap_or_default();
    let target = target.strip_prefix("connect=").unwrap_or("127.0.0.1:22");
    match std::net::TcpStream::connect(target) {
        Ok(_) => out.push_str(&format!("net: CONNECTED {target}\n")),
        Err(e) => out.push_str(&format!("net: denied ({e})\n")),
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = write!(lock, "Content-Type: text/plain\r\n\r\n{out}");
}
