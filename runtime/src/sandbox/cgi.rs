//! The CGI guest ABI as pure functions: request meta-variables into environment bytes, and a
//! guest's response head from its stdout. No I/O here; the sandbox's streaming sink calls in.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// Largest response head a guest may write before its blank line.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEAD_LINES: usize = 256;

/// What a guest learns about its request, independent of the protocol it came over.
#[derive(Debug, Clone, Default)]
pub struct CgiRequest {
    pub method: String,
    /// Raw request path, as sent (percent-escapes intact).
    pub path: String,
    /// Raw query string without the `?`.
    pub query: String,
    /// Request headers in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub server_name: String,
    pub server_port: u16,
    /// "HTTP/1.1", "HTTP/2" or "HTTP/3".
    pub protocol: String,
    pub remote_addr: String,
    pub https: bool,
    /// Route prefix that selected the app ("" for `outpost run`).
    pub script_name: String,
}

/// Environment block for WASI: `KEY=VALUE\0` entries, plus their count.
#[derive(Debug, Clone, Default)]
pub struct EnvBlock {
    pub bytes: Vec<u8>,
    pub count: u32,
}

impl EnvBlock {
    pub fn push(&mut self, key: &str, value: &[u8]) {
        // A NUL inside would split the entry; such a value cannot reach a guest intact.
        if key.contains('\0') || key.contains('=') || value.contains(&0) {
            return;
        }
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(b'=');
        self.bytes.extend_from_slice(value);
        self.bytes.push(0);
        self.count += 1;
    }

    pub fn extend(&mut self, other: &EnvBlock) {
        self.bytes.extend_from_slice(&other.bytes);
        self.count += other.count;
    }
}

fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// RFC 3875 meta-variables and `HTTP_*` headers for one request, followed by the app's own
/// environment (which cannot override the request's variables: those come first and wasi-libc
/// and Rust's std take the first match).
pub fn request_env(req: &CgiRequest, app_env: &EnvBlock) -> EnvBlock {
    let mut env = EnvBlock {
        bytes: Vec::with_capacity(512 + app_env.bytes.len()),
        count: 0,
    };
    env.push("GATEWAY_INTERFACE", b"CGI/1.1");
    env.push(
        "SERVER_SOFTWARE",
        concat!("outpost/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    env.push("REQUEST_METHOD", req.method.as_bytes());
    env.push("SCRIPT_NAME", req.script_name.as_bytes());
    let path_info = req
        .path
        .strip_prefix(req.script_name.as_str())
        .unwrap_or(&req.path);
    let decoded = percent_decode(path_info);
    if decoded.contains(&0) {
        env.push("PATH_INFO", path_info.as_bytes());
    } else {
        env.push("PATH_INFO", &decoded);
    }
    env.push("QUERY_STRING", req.query.as_bytes());
    let uri = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    env.push("REQUEST_URI", uri.as_bytes());
    env.push("SERVER_NAME", req.server_name.as_bytes());
    env.push("SERVER_PORT", req.server_port.to_string().as_bytes());
    env.push("SERVER_PROTOCOL", req.protocol.as_bytes());
    env.push("REMOTE_ADDR", req.remote_addr.as_bytes());
    if req.https {
        env.push("HTTPS", b"on");
    }
    let mut key = String::with_capacity(64);
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case("content-type") {
            env.push("CONTENT_TYPE", value);
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            env.push("CONTENT_LENGTH", value);
            continue;
        }
        key.clear();
        key.push_str("HTTP_");
        key.extend(name.chars().map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        env.push(&key, value);
    }
    env.extend(app_env);
    env
}

/// A guest's response status and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Where the blank line ending the head is: (end of head, start of body).
pub fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        if nl == 0 || (nl == 1 && buf[0] == b'\r') {
            // The output starts with a blank line: no headers at all.
            return Some((0, nl + 1));
        }
        i = nl + 1;
    }
    None
}

/// Headers a guest may not set: the connection and the framing belong to outpost.
fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "transfer-encoding"
            | "keep-alive"
            | "upgrade"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "content-length"
    )
}

/// Parse the CGI head (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Result<ResponseHead, String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "the response head is not UTF-8".to_string())?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for (n, line) in text.split('\n').enumerate() {
        if n >= MAX_HEAD_LINES {
            return Err(format!("more than {MAX_HEAD_LINES} header lines"));
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {} has no colon: {:?}", n + 1, truncate(line)))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let parsed = code
                .parse::<u16>()
                .ok()
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("Status {value:?} is not a final status code (200-599)"))?;
            status = Some(parsed);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", truncate(name)))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        if is_reserved(&name) {
            continue;
        }
        headers.append(name, value);
    }
    let status = match status {
        Some(s) => s,
        None if headers.contains_key(http::header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(ResponseHead { status, headers })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_with_either_line_ending() {
        assert_eq!(find_head_end(b"A: b\n\nbody"), Some((4, 6)));
        assert_eq!(find_head_end(b"A: b\r\n\r\nbody"), Some((5, 8)));
        assert_eq!(find_head_end(b"\nbody"), Some((0, 1)));
        assert_eq!(find_head_end(b"A: b\nC: d\n"), None);
    }

    #[test]
    fn parses_status_location_and_drops_framing_headers() {
        let head = parse_head(b"Status: 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2")
            .expect("head");
        assert_eq!(head.status, 201);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert!(!head.headers.contains_key("content-length"));
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        let redirect = parse_head(b"Location: /elsewhere").expect("head");
        assert_eq!(redirect.status, 302);
        assert_eq!(parse_head(b"").expect("empty head").status, 200);
    }

    #[test]
    fn rejects_malformed_heads() {
        assert!(parse_head(b"no colon here").is_err());
        assert!(parse_head(b"Status: 99").is_err());
        assert!(parse_head(b"Status: 700 Odd").is_err());
        assert!(parse_head(b"Status: abc").is_err());
        assert!(parse_head(b"Bad Name: x").is_err());
        assert!(parse_head(&[0xff, 0xfe, b':', b' ']).is_err());
    }

    #[test]
    fn request_env_maps_headers_and_keeps_request_first() {
        let req = CgiRequest {
            method: "POST".into(),
            path: "/a%20b".into(),
            query: "x=1".into(),
            headers: vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("x-forwarded-for".into(), b"1.2.3.4".to_vec()),
            ],
            server_name: "localhost".into(),
            server_port: 8080,
            protocol: "HTTP/1.1".into(),
            remote_addr: "127.0.0.1".into(),
            https: false,
            script_name: String::new(),
        };
        let mut app = EnvBlock::default();
        app.push("GREETING", b"hi");
        let env = request_env(&req, &app);
        let text = String::from_utf8(env.bytes.clone()).expect("utf8");
        let vars: Vec<&str> = text.split('\0').filter(|s| !s.is_empty()).collect();
        assert_eq!(vars.len() as u32, env.count);
        assert!(vars.contains(&"PATH_INFO=/a b"));
        assert!(vars.contains(&"CONTENT_TYPE=text/plain"));
        assert!(vars.contains(&"HTTP_X_FORWARDED_FOR=1.2.3.4"));
        assert_eq!(vars.last(), Some(&"GREETING=hi"));
        assert!(!vars.iter().any(|v| v.starts_with("HTTPS=")));
    }
}
