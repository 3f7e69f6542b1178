//! Echo: reflects the request back. `/meta` answers with the method, path, query and headers
//! as text; any other path streams the request body back byte for byte, with the method, path
//! and query in `X-Echo-*` headers. `?status=NNN` sets the status.
use std::io::{self, Read, Write};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn main() -> io::Result<()> {
    let (method, path, query) = (var("REQUEST_METHOD"), var("PATH_INFO"), var("QUERY_STRING"));
    let status = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("status="))
        .unwrap_or("200");
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    write!(out, "Status: {status}\r\n")?;
    if path == "/meta" {
        write!(out, "Content-Type: text/plain\r\n\r\n")?;
        writeln!(out, "method: {method}")?;
        writeln!(out, "path: {path}")?;
        writeln!(out, "query: {query}")?;
        let mut headers: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("HTTP_") || k.starts_with("CONTENT_"))
            .collect();
        headers.sort();
        for (k, v) in headers {
            writeln!(out, "header: {k}={v}")?;
        }
        let mut body = Vec::new();
        io::stdin().read_to_end(&mut body)?;
        writeln!(out, "body-bytes: {}", body.len())?;
        return out.flush();
    }
    write!(out, "Content-Type: application/octet-stream\r\n")?;
    write!(out, "X-Echo-Method: {method}\r\nX-Echo-Path: {path}\r\nX-Echo-Query: {query}\r\n\r\n")?;
    io::copy(&mut io::stdin().lock(), &mut out)?;
    out.flush()
}
