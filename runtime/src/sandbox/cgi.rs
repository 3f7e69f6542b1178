//! The CGI guest ABI as pure functions: request meta-variables into environment bytes, and a
//! guest's response head from its stdout. No I/O here; the sandbox's streaming sink calls in.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// Largest response head a guest may write before its blank line.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEAD_LINES: usize = 256;

/// What a guest learns about its request, independent of the protocol it came over. Borrowed
/// from the request as it arrived: the environment block is its only copy.
#[derive(Debug, Clone, Default)]
pub struct CgiRequest<'a> {
    pub method: &'a str,
    /// Raw request path, as sent (percent-escapes intact).
    pub path: &'a str,
    /// Raw query string without the `?`.
    pub query: &'a str,
    /// Request headers in arrival order.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub server_name: &'a str,
    pub server_port: u16,
    /// "HTTP/1.1", "HTTP/2" or "HTTP/3".
    pub protocol: &'a str,
    pub remote_addr: Option<std::net::IpAddr>,
    pub https: bool,
    /// Route prefix that selected the app ("" for `outpost run`).
    pub script_name: &'a str,
}

/// Environment block for WASI: `KEY=VALUE\0` entries, plus their count.
#[derive(Debug, Clone, Default)]
pub struct EnvBlock {
    pub bytes: Vec<u8>,
    pub count: u32,
}

impl EnvBlock {
    pub fn push(&mut self, key: &str, value: &[u8]) {
        self.push_parts(key, &[value]);
    }

    /// One entry whose value is the concatenation of `parts`.
    pub fn push_parts(&mut self, key: &str, parts: &[&[u8]]) {
        // A NUL inside would split the entry; such a value cannot reach a guest intact.
        if key.contains('\0') || key.contains('=') || parts.iter().any(|p| p.contains(&0)) {
            return;
        }
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(b'=');
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.bytes.push(0);
        self.count += 1;
    }

    /// One entry whose value is a number or an address, formatted in place (no NUL possible).
    fn push_display(&mut self, key: &str, value: impl std::fmt::Display) {
        use std::io::Write;
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(b'=');
        // Writing into a Vec cannot fail.
        let _ = write!(self.bytes, "{value}");
        self.bytes.push(0);
        self.count += 1;
    }

    /// `HTTP_<NAME>=value` for a request header (name upper-cased, `-` as `_`).
    fn push_header(&mut self, name: &str, value: &[u8]) {
        if name.contains(['\0', '=']) || value.contains(&0) {
            return;
        }
        self.bytes.extend_from_slice(b"HTTP_");
        self.bytes.extend(name.bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
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
pub fn request_env(req: &CgiRequest<'_>, app_env: &EnvBlock) -> EnvBlock {
    let headers: usize = req.headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
    let mut env = EnvBlock {
        bytes: Vec::with_capacity(
            320 + 2 * req.path.len() + req.query.len() + headers + app_env.bytes.len(),
        ),
        count: 0,
    };
    env.push("GATEWAY_INTERFACE", b"CGI/1.1");
    env.push(
        "SERVER_SOFTWARE",
        concat!("outpost/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    env.push("REQUEST_METHOD", req.method.as_bytes());
    env.push("SCRIPT_NAME", req.script_name.as_bytes());
    let path_info = req.path.strip_prefix(req.script_name).unwrap_or(req.path);
    let decoded = percent_decode(path_info);
    if decoded.contains(&0) {
        env.push("PATH_INFO", path_info.as_bytes());
    } else {
        env.push("PATH_INFO", &decoded);
    }
    env.push("QUERY_STRING", req.query.as_bytes());
    if req.query.is_empty() {
        env.push("REQUEST_URI", req.path.as_bytes());
    } else {
        env.push_parts(
            "REQUEST_URI",
            &[req.path.as_bytes(), b"?", req.query.as_bytes()],
        );
    }
    env.push("SERVER_NAME", req.server_name.as_bytes());
    env.push_display("SERVER_PORT", req.server_port);
    env.push("SERVER_PROTOCOL", req.protocol.as_bytes());
    match req.remote_addr {
        Some(ip) => env.push_display("REMOTE_ADDR", ip),
        None => env.push("REMOTE_ADDR", b""),
    }
    if req.https {
        env.push("HTTPS", b"on");
    }
    for (name, value) in req.headers {
        if name.eq_ignore_ascii_case("content-type") {
            env.push("CONTENT_TYPE", value);
        } else if name.eq_ignore_ascii_case("content-length") {
            env.push("CONTENT_LENGTH", value);
        } else {
            env.push_header(name, value);
        }
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
        let headers: &[(&str, &[u8])] = &[
            ("content-type", b"text/plain"),
            ("x-forwarded-for", b"1.2.3.4"),
            ("bad\0name", b"x"),
            ("x-nul", b"a\0b"),
        ];
        let req = CgiRequest {
            method: "POST",
            path: "/a%20b",
            query: "x=1",
            headers,
            server_name: "localhost",
            server_port: 8080,
            protocol: "HTTP/1.1",
            remote_addr: Some([127, 0, 0, 1].into()),
            https: false,
            script_name: "",
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
        assert!(vars.contains(&"REQUEST_URI=/a%20b?x=1"));
        assert!(vars.contains(&"SERVER_PORT=8080"));
        assert!(vars.contains(&"REMOTE_ADDR=127.0.0.1"));
        assert!(!vars.iter().any(|v| v.contains("NUL") || v.contains("BAD")));
        assert_eq!(vars.last(), Some(&"GREETING=hi"));
        assert!(!vars.iter().any(|v| v.starts_with("HTTPS=")));
    }
}
