//! Router: an edge app that answers no request itself. `/api` and below pass through to the
//! backend `api` (with a header the origin can trust, and the client's cookies removed);
//! everything else passes through to the backend `static`. Every response gets
//! `X-Routed-By`. Plain std Rust: pass-through needs no imports, only CGI response headers.
//! The backends' names can be changed with the app's env: API_BACKEND, STATIC_BACKEND.
fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let api_backend = std::env::var("API_BACKEND").unwrap_or_else(|_| "api".into());
    let static_backend = std::env::var("STATIC_BACKEND").unwrap_or_else(|_| "static".into());
    let api = path == "/api" || path.starts_with("/api/");
    let mut head = String::new();
    if api {
        head.push_str(&format!("X-Outpost-Backend: {api_backend}\r\n"));
        head.push_str("X-Outpost-Set-Request-Header: X-Edge-Auth: verified\r\n");
        head.push_str("X-Outpost-Remove-Request-Header: cookie\r\n");
    } else {
        head.push_str(&format!("X-Outpost-Backend: {static_backend}\r\n"));
    }
    // /old/... moved to /new/... on the origin; the client's URL stays.
    if let Some(rest) = path.strip_prefix("/old/") {
        let query = std::env::var("QUERY_STRING").unwrap_or_default();
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        head.push_str(&format!("X-Outpost-Path: /new/{rest}{q}\r\n"));
    }
    head.push_str(&format!("X-Routed-By: outpost-router ({})\r\n", if api { "api" } else { "static" }));
    print!("{head}\r\n");
}
