//! Fetch: gets a JSON document from the backend `api` with a subrequest and answers with a
//! transformed body, `{"via": "outpost", "origin_status": N, "origin": <the document>}`.
//! Origin failures become 502 (unreachable) or 504 (too slow).
//!
//! To try things: `?path=/other.json` fetches another path, `?backend=NAME` another backend,
//! `?repeat=N` sends N sequential subrequests (all but the last body discarded).
use std::io::Write;

fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

fn answer(status: u16, content_type: &str, body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Status: {status}\r\nContent-Type: {content_type}\r\n\r\n");
    let _ = out.write_all(body);
    let _ = out.flush();
}

fn main() {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let path = param(&query, "path").unwrap_or_else(|| "/catalog.json".into());
    let backend = param(&query, "backend").unwrap_or_else(|| "api".into());
    let repeat: u32 = param(&query, "repeat").and_then(|n| n.parse().ok()).unwrap_or(1);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let sent = outpost_http::Request::get(&path)
            .header("accept", "application/json")
            .send(&backend);
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return answer(e.status(), "text/plain", format!("{e}\n").as_bytes());
            }
        };
        let body = match resp.body_to_vec(4 << 20) {
            Ok(b) => b,
            Err(e) => return answer(e.status(), "text/plain", format!("{e}\n").as_bytes()),
        };
        last = Some((resp.status(), resp.header("location"), body));
    }
    let Some((status, location, body)) = last else {
        return answer(500, "text/plain", b"no subrequest\n");
    };
    let mut out = Vec::new();
    let _ = write!(out, "{{\"via\":\"outpost\",\"origin_status\":{status},");
    if let Some(loc) = location {
        let _ = write!(out, "\"origin_location\":{loc:?},");
    }
    out.extend_from_slice(b"\"origin\":");
    let is_json = body.first().is_some_and(|b| *b == b'{' || *b == b'[');
    if is_json {
        out.extend_from_slice(body.trim_ascii_end());
    } else {
        let _ = write!(out, "{:?}", String::from_utf8_lossy(&body));
    }
    out.extend_from_slice(b"}\n");
    answer(200, "application/json", &out);
}
