//! Answers with its arguments (argv[0] first), then the environment variables named in the
//! query string (comma-separated), then writes a line to stderr and exits with the status
//! `EXIT` names (0 without it), after its response is complete.
use std::io::Write;

fn main() {
    let mut out = String::new();
    for (i, arg) in std::env::args().enumerate() {
        out.push_str(&format!("arg{i}: {arg}\n"));
    }
    let names = std::env::var("QUERY_STRING").unwrap_or_default();
    for name in names.split(',').filter(|n| !n.is_empty()) {
        match std::env::var(name) {
            Ok(value) => out.push_str(&format!("{name}={value}\n")),
            Err(_) => out.push_str(&format!("{name} unset\n")),
        }
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = write!(lock, "Content-Type: text/plain\r\n\r\n{out}");
    let _ = lock.flush();
    eprintln!("env guest done");
    let code: i32 = std::env::var("EXIT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
