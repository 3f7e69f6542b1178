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
        if key.contains(['\0', '=']) {
            return;
        }
        self.push_named(key, parts);
    }

    /// `push_parts` for a name of outpost's own (a CGI meta-variable): only the value is checked.
    fn push_named(&mut self, key: &str, parts: &[&[u8]]) {
        if parts.iter().any(|p| p.contains(&0)) {
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

/// Whether a request header may become an `HTTP_*` variable. Not `Proxy`: as `HTTP_PROXY` it
/// would set the proxy of HTTP clients inside the guest (httpoxy). Not a name with `_`: it
/// would map to the same variable as its `-` spelling (`X_Forwarded_For` shadowing what a
/// proxy put in `X-Forwarded-For`), as Apache and nginx also drop them.
fn is_safe_as_cgi_variable(name: &str) -> bool {
    !name.eq_ignore_ascii_case("proxy") && !name.contains('_')
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
    env.push_named("GATEWAY_INTERFACE", &[b"CGI/1.1"]);
    env.push_named(
        "SERVER_SOFTWARE",
        &[concat!("outpost/", env!("CARGO_PKG_VERSION")).as_bytes()],
    );
    env.push_named("REQUEST_METHOD", &[req.method.as_bytes()]);
    env.push_named("SCRIPT_NAME", &[req.script_name.as_bytes()]);
    let path_info = req.path.strip_prefix(req.script_name).unwrap_or(req.path);
    let decoded = path_info
        .contains('%')
        .then(|| percent_decode(path_info))
        .filter(|decoded| !decoded.contains(&0));
    env.push_named(
        "PATH_INFO",
        &[decoded.as_deref().unwrap_or(path_info.as_bytes())],
    );
    env.push_named("QUERY_STRING", &[req.query.as_bytes()]);
    if req.query.is_empty() {
        env.push_named("REQUEST_URI", &[req.path.as_bytes()]);
    } else {
        env.push_named(
            "REQUEST_URI",
            &[req.path.as_bytes(), b"?", req.query.as_bytes()],
        );
    }
    env.push_named("SERVER_NAME", &[req.server_name.as_bytes()]);
    env.push_display("SERVER_PORT", req.server_port);
    env.push_named("SERVER_PROTOCOL", &[req.protocol.as_bytes()]);
    match req.remote_addr {
        Some(ip) => env.push_display("REMOTE_ADDR", ip),
        None => env.push_named("REMOTE_ADDR", &[b""]),
    }
    if req.https {
        env.push_named("HTTPS", &[b"on"]);
    }
    for (name, value) in req.headers {
        if name.eq_ignore_ascii_case("content-type") {
            env.push_named("CONTENT_TYPE", &[value]);
        } else if name.eq_ignore_ascii_case("content-length") {
            env.push_named("CONTENT_LENGTH", &[value]);
        } else if !is_safe_as_cgi_variable(name) {
            continue;
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

/// Why a guest's output is not a CGI response (the client gets 502; this goes to the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The guest ended without writing anything.
    Empty,
    /// The guest ended before the blank line that ends the head.
    NoBlankLine,
    /// No blank line within the first `MAX_HEAD_BYTES` bytes.
    TooLarge,
    /// More header lines than `MAX_HEAD_LINES`.
    TooManyLines,
    /// A line that is not `Name: value` (httparse's reason: a bad name, a bad value, a stray
    /// CR, a line without a colon).
    Malformed(&'static str),
    /// A `Status` header that is not a final status code.
    BadStatus(String),
    /// A value the http crate refuses (httparse lets some through that a response cannot carry).
    BadValue(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Empty => f.write_str("the app wrote nothing to stdout"),
            HeadError::NoBlankLine => f.write_str("the output has no blank line after the headers"),
            HeadError::TooLarge => write!(
                f,
                "no blank line within the first {MAX_HEAD_BYTES} bytes of output"
            ),
            HeadError::TooManyLines => write!(f, "more than {MAX_HEAD_LINES} header lines"),
            HeadError::Malformed(why) => write!(f, "malformed header line ({why})"),
            HeadError::BadStatus(value) => {
                write!(f, "Status {value:?} is not a final status code (200-599)")
            }
            HeadError::BadValue(name) => write!(f, "invalid value for header {name}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// What a write to stdout means for the response.
#[derive(Debug, PartialEq)]
pub enum Progress<'a> {
    /// The head is not complete yet: nothing can be sent.
    NeedMore,
    /// This write completed the head. The body so far is `buffered` (bytes after the blank line
    /// that earlier writes left in the head buffer) followed by `rest` (from this write).
    Head {
        head: ResponseHead,
        buffered: Vec<u8>,
        rest: &'a [u8],
    },
    /// The head was complete before: all of this write is body.
    Body(&'a [u8]),
}

enum HeadState {
    /// Collecting the head; `buf` holds at most `MAX_HEAD_BYTES` of it.
    Collecting {
        buf: Vec<u8>,
    },
    Done,
    Failed(HeadError),
}

/// The CGI response parser as a state machine over a guest's stdout writes, in whatever pieces
/// the guest writes them: bytes in, decisions out. No channels, clocks or I/O, so every split
/// of an output can be checked against the whole (the unit tests and the fuzzer do).
///
/// httparse finds the head's end and tokenizes its lines; outpost's CGI rules (Status, Location,
/// framing headers, the caps) are applied on top. The head is re-parsed only when a write brings
/// a newline (the head can only end on one), and at most `MAX_HEAD_LINES` + 1 writes can, so a
/// guest writing a byte at a time costs linear work.
pub struct CgiOutput {
    state: HeadState,
}

impl Default for CgiOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl CgiOutput {
    pub fn new() -> Self {
        Self {
            state: HeadState::Collecting { buf: Vec::new() },
        }
    }

    /// Whether the head is complete.
    pub fn head_done(&self) -> bool {
        matches!(self.state, HeadState::Done)
    }

    /// Bytes the guest wrote to stdout. After an error every later write fails the same way.
    pub fn write<'a>(&mut self, data: &'a [u8]) -> Result<Progress<'a>, HeadError> {
        let buf = match &mut self.state {
            HeadState::Done => return Ok(Progress::Body(data)),
            HeadState::Failed(e) => return Err(e.clone()),
            HeadState::Collecting { buf } => buf,
        };
        // Only the first MAX_HEAD_BYTES of output can hold the head.
        let take = data.len().min(MAX_HEAD_BYTES - buf.len());
        let (taken, beyond) = data.split_at(take);
        let result = if buf.is_empty() {
            // The common case, head and body in one write: parse in place, copy nothing.
            match parse_if_newline(taken, taken) {
                Ok(Some((head, used))) => Ok(Some((head, Vec::new(), &data[used..]))),
                Ok(None) => {
                    buf.extend_from_slice(taken);
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        } else {
            buf.extend_from_slice(taken);
            match parse_if_newline(buf, taken) {
                Ok(Some((head, used))) => Ok(Some((head, buf.split_off(used), beyond))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let outcome = match result {
            Ok(Some((head, buffered, rest))) => {
                self.state = HeadState::Done;
                return Ok(Progress::Head {
                    head,
                    buffered,
                    rest,
                });
            }
            Ok(None) if beyond.is_empty() => return Ok(Progress::NeedMore),
            Ok(None) => HeadError::TooLarge,
            Err(e) => e,
        };
        self.state = HeadState::Failed(outcome.clone());
        Err(outcome)
    }

    /// The guest's output is over: `Ok` if it was a response (its head complete).
    pub fn end(&mut self) -> Result<(), HeadError> {
        let error = match &self.state {
            HeadState::Done => return Ok(()),
            HeadState::Failed(e) => e.clone(),
            HeadState::Collecting { buf } if buf.is_empty() => HeadError::Empty,
            // A bad line that no newline followed is named rather than reported as "no blank
            // line", as it would have been had the guest written everything at once.
            HeadState::Collecting { buf } => match parse(buf) {
                Err(e) => e,
                Ok(_) => HeadError::NoBlankLine,
            },
        };
        self.state = HeadState::Failed(error.clone());
        Err(error)
    }
}

/// The head and the number of bytes it took (blank line included) when `buf` holds a complete
/// head; `None` while it is partial. Skips the parse when `new` brought no newline: the head
/// can only end on one, and the bytes before were parsed as partial already.
fn parse_if_newline(buf: &[u8], new: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    if !new.contains(&b'\n') {
        return Ok(None);
    }
    parse(buf)
}

fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    // Most heads are a few lines: room for all of them (8 KiB to fill) only when that is short.
    match parse_in::<16>(buf) {
        Err(HeadError::TooManyLines) => parse_in::<MAX_HEAD_LINES>(buf),
        parsed => parsed,
    }
}

fn parse_in<const LINES: usize>(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; LINES];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, lines))) => Ok(Some((apply_cgi_rules(lines)?, used))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyLines),
        Err(e) => Err(HeadError::Malformed(reason(e))),
    }
}

fn reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name, or no colon",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "a carriage return not followed by a newline",
        httparse::Error::TooManyHeaders => "too many header lines",
        _ => "not a header line",
    }
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

/// outpost's CGI rules over the tokenized lines: `Status` sets the status (200-599), a
/// `Location` without it is a 302, framing headers are dropped.
fn apply_cgi_rules(lines: &[httparse::Header<'_>]) -> Result<ResponseHead, HeadError> {
    let mut status = None;
    let mut headers = HeaderMap::with_capacity(lines.len());
    for line in lines {
        if line.name.eq_ignore_ascii_case("status") {
            let text = String::from_utf8_lossy(line.value);
            let code = text.split_whitespace().next().unwrap_or("");
            let parsed = code
                .parse::<u16>()
                .ok()
                .filter(|c| (200..=599).contains(c) && code.len() == 3)
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| HeadError::BadStatus(truncate(text.trim()).to_string()))?;
            status = Some(parsed);
            continue;
        }
        // httparse admits only token characters in names, which HeaderName accepts too.
        let name = HeaderName::from_bytes(line.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        if is_reserved(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(line.value)
            .map_err(|_| HeadError::BadValue(name.to_string()))?;
        headers.append(name, value);
    }
    let status = match status {
        Some(s) => s,
        None if headers.contains_key(http::header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(ResponseHead { status, headers })
}

/// A whole output parsed at once: the head and the body. What any sequence of writes of the
/// same bytes must agree with.
pub fn parse_whole(output: &[u8]) -> Result<(ResponseHead, Vec<u8>), HeadError> {
    parse_writes(std::iter::once(output))
}

/// An output written in pieces, through the same state machine a guest's stdout uses.
pub fn parse_writes<'a>(
    writes: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(ResponseHead, Vec<u8>), HeadError> {
    let mut parser = CgiOutput::new();
    let mut head = None;
    let mut body = Vec::new();
    for data in writes {
        match parser.write(data)? {
            Progress::NeedMore => {}
            Progress::Head {
                head: h,
                buffered,
                rest,
            } => {
                head = Some(h);
                body.extend_from_slice(&buffered);
                body.extend_from_slice(rest);
            }
            Progress::Body(data) => body.extend_from_slice(data),
        }
    }
    parser.end()?;
    match head {
        Some(head) => Ok((head, body)),
        None => Err(HeadError::NoBlankLine),
    }
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

    fn ok(output: &[u8]) -> (ResponseHead, Vec<u8>) {
        parse_whole(output).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(output)))
    }

    #[test]
    fn head_end_is_found_with_either_line_ending() {
        assert_eq!(ok(b"A: b\n\nbody").1, b"body");
        assert_eq!(ok(b"A: b\r\n\r\nbody").1, b"body");
        assert_eq!(ok(b"A: b\r\n\nbody").1, b"body");
        assert_eq!(ok(b"A: b\n\r\nbody").1, b"body");
        assert_eq!(ok(b"\nbody").1, b"body");
        // No headers: the first newline is the blank line, and what follows is body.
        assert_eq!(ok(b"\n\nbody").1, b"\nbody");
        assert_eq!(ok(b"\r\n\nbody").1, b"\nbody");
        assert_eq!(parse_whole(b"A: b\nC: d\n"), Err(HeadError::NoBlankLine));
    }

    #[test]
    fn parses_status_location_and_drops_framing_headers() {
        let (head, body) = ok(b"Status: 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-A: 1\r\nX-A: 2\r\n\r\n");
        assert_eq!(head.status, 201);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert!(!head.headers.contains_key("content-length"));
        assert!(!head.headers.contains_key("transfer-encoding"));
        assert!(!head.headers.contains_key("connection"));
        assert!(!head.headers.contains_key("status"));
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(body.is_empty());
        let (redirect, _) = ok(b"Location: /elsewhere\n\n");
        assert_eq!(redirect.status, 302);
        assert_eq!(redirect.headers["location"], "/elsewhere");
        let (kept, _) = ok(b"Location: /x\nStatus: 301 Moved\n\n");
        assert_eq!(kept.status, 301);
        assert_eq!(ok(b"\n").0.status, 200);
    }

    #[test]
    fn rejects_malformed_heads() {
        for bad in [
            &b"no colon here\n\n"[..],
            b"Status: 99\n\n",
            b"Status: 700 Odd\n\n",
            b"Status: abc\n\n",
            b"Status: 0200\n\n",
            b"Status:\n\n",
            b"Bad Name: x\n\n",
            b"A: b\rc\n\n",
            b"A: \x01\n\n",
            b" folded: x\n\n",
            b"A: b\n continued\n\n",
        ] {
            assert!(
                parse_whole(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_whole(b""), Err(HeadError::Empty));
        assert_eq!(
            parse_whole(b"just text"),
            Err(HeadError::Malformed("invalid header name, or no colon"))
        );
        assert!(matches!(
            parse_whole(b"Status: 7\n\n"),
            Err(HeadError::BadStatus(_))
        ));
    }

    #[test]
    fn the_head_is_capped() {
        let mut line = b"X-Long: ".to_vec();
        line.resize(MAX_HEAD_BYTES - 2, b'a');
        line.extend_from_slice(b"\n\nbody");
        // Exactly at the cap (blank line included) is a head; one byte more is not.
        assert_eq!(ok(&line).1, b"body");
        line.insert(0, b'Y');
        assert_eq!(parse_whole(&line), Err(HeadError::TooLarge));
        let endless = vec![b'a'; 3 * MAX_HEAD_BYTES];
        assert_eq!(parse_whole(&endless), Err(HeadError::TooLarge));
        let many: Vec<u8> = b"A: b\n".repeat(MAX_HEAD_LINES + 1);
        assert_eq!(parse_whole(&many), Err(HeadError::TooManyLines));
        let mut enough = b"A: b\n".repeat(MAX_HEAD_LINES);
        enough.push(b'\n');
        assert_eq!(
            ok(&enough).0.headers.get_all("a").iter().count(),
            MAX_HEAD_LINES
        );
    }

    #[test]
    fn a_head_split_inside_a_header_name_is_still_a_head() {
        // The bug this parser replaced: a newline near the start of a write was taken for the
        // blank line, and `X-Foo: bar` went out as body.
        let (head, body) =
            parse_writes([&b"Content-Type: text/plain\nX-"[..], b"Foo: bar\n\nhello"])
                .expect("response");
        assert_eq!(head.headers["x-foo"], "bar");
        assert_eq!(head.headers["content-type"], "text/plain");
        assert_eq!(body, b"hello");
    }

    #[test]
    fn writes_after_a_failure_keep_failing() {
        let mut parser = CgiOutput::new();
        assert!(parser.write(b"bad line\n").is_err());
        assert!(parser.write(b"\nbody").is_err());
        assert!(parser.end().is_err());
    }

    /// Valid outputs of every shape the ABI allows: LF, CRLF and mixed line ends, no headers,
    /// empty bodies, bodies that look like heads, long values.
    fn valid_outputs() -> Vec<Vec<u8>> {
        let mut outputs: Vec<Vec<u8>> = [
            &b"Content-Type: text/plain\nX-Foo: bar\n\nhello"[..],
            b"Content-Type: text/plain\r\nX-Foo: bar\r\n\r\nhello",
            b"Content-Type: text/plain\r\nX-Foo: bar\n\r\nhello\r\n\r\nstill body",
            b"Status: 404 Not Found\nContent-Type: text/html\r\n\n<h1>no</h1>\n\n",
            b"Location: /there\r\n\r\n",
            b"\nbody only",
            b"\r\n\r\nbody after an empty head",
            b"\n",
            b"X-Empty:\nX-Spaced:   padded   \n\nA: b\n\n",
            b"Status: 201\nContent-Length: 99\nConnection: close\nX-Obs: caf\xe9\n\n\x00\xff binary",
        ]
        .iter()
        .map(|o| o.to_vec())
        .collect();
        let mut long = b"X-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'v', 5000));
        long.extend_from_slice(b"\r\nX-Two: 2\n\n");
        long.extend(std::iter::repeat_n(b'b', 3000));
        outputs.push(long);
        let mut many = Vec::new();
        for i in 0..200 {
            many.extend_from_slice(format!("X-H{i}: {i}").as_bytes());
            many.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
        }
        many.extend_from_slice(b"\nbody");
        outputs.push(many);
        outputs
    }

    /// splitmix64: a fixed-seed generator so the split patterns are the same on every run.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn every_split_of_a_valid_output_gives_the_same_response() {
        let mut seed = 0x006f_7574_706f_7374;
        for output in valid_outputs() {
            let whole = ok(&output);
            let name = String::from_utf8_lossy(&output[..output.len().min(40)]).into_owned();
            // Every single split point, including empty first and last writes.
            for at in 0..=output.len() {
                let (a, b) = output.split_at(at);
                assert_eq!(
                    parse_writes([a, b]).as_ref(),
                    Ok(&whole),
                    "{name:?} split at {at}"
                );
            }
            // Every byte its own write.
            assert_eq!(
                parse_writes(output.chunks(1)).as_ref(),
                Ok(&whole),
                "{name:?} byte by byte"
            );
            // Random multi-way splits, empty writes among them.
            for _ in 0..200 {
                let mut cuts: Vec<usize> = (0..1 + next(&mut seed) % 8)
                    .map(|_| (next(&mut seed) % (output.len() as u64 + 1)) as usize)
                    .collect();
                cuts.sort_unstable();
                let mut writes = Vec::new();
                let mut from = 0;
                for cut in cuts {
                    writes.push(&output[from..cut]);
                    from = cut;
                }
                writes.push(&output[from..]);
                assert_eq!(
                    parse_writes(writes.iter().copied()).as_ref(),
                    Ok(&whole),
                    "{name:?} split as {:?}",
                    writes.iter().map(|w| w.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn invalid_outputs_fail_however_they_are_split() {
        for output in [
            &b"Content-Type: text/plain\nno colon\n\nbody"[..],
            b"A: b\n\rX",
            b"A: b",
            b"Status: 999\r\n\r\n",
        ] {
            for at in 0..=output.len() {
                let (a, b) = output.split_at(at);
                assert!(parse_writes([a, b]).is_err(), "{output:?} split at {at}");
            }
        }
    }

    #[test]
    fn request_env_maps_headers_and_keeps_request_first() {
        let headers: &[(&str, &[u8])] = &[
            ("content-type", b"text/plain"),
            ("x-forwarded-for", b"1.2.3.4"),
            ("bad\0name", b"x"),
            ("x-nul", b"a\0b"),
            ("Proxy", b"http://127.0.0.1:9"),
            ("x_forwarded_for", b"6.6.6.6"),
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
        assert!(
            !vars.iter().any(|v| v.starts_with("HTTP_PROXY=")),
            "httpoxy"
        );
        assert!(
            !vars.contains(&"HTTP_X_FORWARDED_FOR=6.6.6.6"),
            "underscore spelling"
        );
        assert_eq!(vars.last(), Some(&"GREETING=hi"));
        assert!(!vars.iter().any(|v| v.starts_with("HTTPS=")));
    }
}
