//! `outpost_http_v1`: subrequests from a guest to the backends its app declares. A guest sends
//! a request (backend name, method, path, header lines, body), then reads the response's
//! status, header lines and body in chunks through a handle. Every wait is on the async side
//! under the request's deadline and gives the guest's CPU slot back; everything copied between
//! guest and host is capped (request body, response body, header bytes, subrequest count).
//! The module check links these imports only for apps that declare a backend.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use http_body::Body;
use hyper::body::Incoming;
use wasmer::{Function, FunctionEnv, FunctionEnvMut, MemoryView, Store};

use super::io::{wait_for, HostStop};
use super::wasi::HostState;
use crate::origin::{add_forwarding, OriginBody, OriginErrorKind, Outbound};

/// The import module's name.
pub const MODULE: &str = "outpost_http_v1";

/// Its functions: name, parameter types, result types (`i` = i32).
pub const FUNCTIONS: &[(&str, &str, &str)] = &[
    ("send", "iiiiiiiiii", "i"),
    ("status", "i", "i"),
    ("headers", "iii", "i"),
    ("read", "iii", "i"),
    ("close", "i", "i"),
];

/// Subrequests one request may send (Fastly allows as many).
pub const MAX_SUBREQUESTS: u32 = 32;
const MAX_NAME: u32 = 256;
const MAX_METHOD: u32 = 32;
const MAX_PATH: u32 = 8 << 10;
const MAX_HEADER_BYTES: u32 = 64 << 10;

// Results below zero: what went wrong. docs/guest-abi.md and guest/outpost_http.h list them.
pub const ERR_INVALID: i32 = -1;
pub const ERR_UNKNOWN_BACKEND: i32 = -2;
pub const ERR_LIMIT: i32 = -3;
pub const ERR_CONNECT: i32 = -4;
pub const ERR_TIMEOUT: i32 = -5;
pub const ERR_ORIGIN: i32 = -6;
pub const ERR_HANDLE: i32 = -7;
pub const ERR_REFUSED: i32 = -8;
pub const ERR_FAULT: i32 = -9;
pub const ERR_BUSY: i32 = -10;

fn code_of(kind: OriginErrorKind) -> i32 {
    match kind {
        OriginErrorKind::UnknownBackend => ERR_UNKNOWN_BACKEND,
        OriginErrorKind::Refused(_) => ERR_REFUSED,
        OriginErrorKind::Dns | OriginErrorKind::Connect | OriginErrorKind::Tls => ERR_CONNECT,
        OriginErrorKind::ConnectTimeout
        | OriginErrorKind::FirstByteTimeout
        | OriginErrorKind::BodyTimeout => ERR_TIMEOUT,
        OriginErrorKind::Busy => ERR_BUSY,
        OriginErrorKind::Reset => ERR_ORIGIN,
    }
}

/// A response the guest reads.
struct Open {
    status: u16,
    /// `name: value\n` lines.
    headers: Vec<u8>,
    body: Incoming,
    /// Dropped at the end of the body: the backend may reuse the connection.
    in_flight: Option<crate::origin::InFlight>,
    pending: Bytes,
    read: u64,
    done: bool,
    idle: Duration,
}

/// One request's subrequests.
pub struct Subrequests {
    outbound: Outbound,
    sent: u32,
    open: Vec<Option<Open>>,
    request_cap: u64,
    response_cap: u64,
}

impl Subrequests {
    pub fn new(outbound: Outbound, request_cap: u64, response_cap: u64) -> Self {
        Self {
            outbound,
            sent: 0,
            open: Vec::new(),
            request_cap,
            response_cap,
        }
    }

    fn get(&mut self, handle: i32) -> Option<&mut Open> {
        let i = usize::try_from(handle).ok()?.checked_sub(1)?;
        self.open.get_mut(i)?.as_mut()
    }
}

type Env<'a> = FunctionEnvMut<'a, HostState>;

fn read_guest(view: &MemoryView, ptr: i32, len: i32, cap: u64) -> Result<Vec<u8>, i32> {
    let len = u32::try_from(len).map_err(|_| ERR_INVALID)?;
    if u64::from(len) > cap {
        return Err(ERR_LIMIT);
    }
    let mut buf = vec![0u8; len as usize];
    view.read(u64::from(ptr as u32), &mut buf)
        .map_err(|_| ERR_FAULT)?;
    Ok(buf)
}

fn text(bytes: Vec<u8>) -> Result<String, i32> {
    String::from_utf8(bytes).map_err(|_| ERR_INVALID)
}

/// `Name: value` lines, `\n` or `\r\n` ended.
fn parse_headers(block: &[u8]) -> Result<HeaderMap, i32> {
    let mut headers = HeaderMap::new();
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or(ERR_INVALID)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| ERR_INVALID)?;
        let value =
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| ERR_INVALID)?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn header_lines(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `send(backend, backend_len, method, method_len, path, path_len, headers, headers_len, body,
/// body_len) -> handle | error`
#[allow(clippy::too_many_arguments)]
fn send(
    mut env: Env,
    backend: i32,
    backend_len: i32,
    method: i32,
    method_len: i32,
    path: i32,
    path_len: i32,
    headers: i32,
    headers_len: i32,
    body: i32,
    body_len: i32,
) -> Result<i32, HostStop> {
    let (state, store) = env.data_and_store_mut();
    let Some(memory) = state.memory.clone() else {
        return Ok(ERR_FAULT);
    };
    let Some(sub) = state.outbound.as_mut() else {
        return Ok(ERR_UNKNOWN_BACKEND);
    };
    if sub.sent >= MAX_SUBREQUESTS {
        return Ok(ERR_LIMIT);
    }
    let view = memory.view(&store);
    let read = |ptr, len, cap| read_guest(&view, ptr, len, cap);
    let parsed = (|| {
        let name = text(read(backend, backend_len, u64::from(MAX_NAME))?)?;
        let method = Method::from_bytes(&read(method, method_len, u64::from(MAX_METHOD))?)
            .map_err(|_| ERR_INVALID)?;
        let path = text(read(path, path_len, u64::from(MAX_PATH))?)?;
        let mut headers = parse_headers(&read(headers, headers_len, u64::from(MAX_HEADER_BYTES))?)?;
        let body = read(body, body_len, sub.request_cap)?;
        if !crate::origin::valid_path(&path) {
            return Err(ERR_INVALID);
        }
        // Who the client was is outpost's to say, not the guest's.
        headers.remove("forwarded");
        headers.remove("x-forwarded-for");
        add_forwarding(&mut headers, &sub.outbound.forwarding);
        Ok((name, method, path, headers, body))
    })();
    let (name, method, path, headers, body) = match parsed {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(backend) = sub.outbound.backends.get(&name).cloned() else {
        return Ok(ERR_UNKNOWN_BACKEND);
    };
    let body = if body.is_empty() {
        OriginBody::Empty
    } else {
        OriginBody::Full(Some(Bytes::from(body)))
    };
    let req = match backend.request(method, &path, headers, body) {
        Ok(r) => r,
        Err(_) => return Ok(ERR_INVALID),
    };
    sub.sent += 1;
    // The request's deadline ends the wait (504 for the whole request); the backend's
    // first-byte timeout, when shorter, is the guest's to handle.
    let response = wait_for(&state.handle, state.deadline, backend.send(req))?;
    let (response, in_flight) = match response {
        Ok(r) => r,
        Err(f) => return Ok(code_of(f.kind)),
    };
    let (parts, incoming) = response.into_parts();
    let declared = incoming.size_hint().exact();
    if declared.is_some_and(|n| n > sub.response_cap) {
        return Ok(ERR_LIMIT);
    }
    sub.open.push(Some(Open {
        status: parts.status.as_u16(),
        headers: header_lines(&parts.headers),
        body: incoming,
        in_flight: Some(in_flight),
        pending: Bytes::new(),
        read: 0,
        done: false,
        idle: backend.idle_timeout(),
    }));
    Ok(sub.open.len() as i32)
}

fn status(mut env: Env, handle: i32) -> i32 {
    match env.data_mut().outbound.as_mut().and_then(|s| s.get(handle)) {
        Some(open) => i32::from(open.status),
        None => ERR_HANDLE,
    }
}

/// `headers(handle, buf, buf_len) -> length`: the header lines' length; they are written only
/// when they fit (call again with a larger buffer otherwise).
fn headers(mut env: Env, handle: i32, buf: i32, buf_len: i32) -> i32 {
    let (state, store) = env.data_and_store_mut();
    let Some(memory) = state.memory.clone() else {
        return ERR_FAULT;
    };
    let Some(open) = state.outbound.as_mut().and_then(|s| s.get(handle)) else {
        return ERR_HANDLE;
    };
    let len = open.headers.len();
    if len <= buf_len.max(0) as usize
        && memory
            .view(&store)
            .write(u64::from(buf as u32), &open.headers)
            .is_err()
    {
        return ERR_FAULT;
    }
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// `read(handle, buf, buf_len) -> bytes` (0 at the end of the body).
fn read(mut env: Env, handle: i32, buf: i32, buf_len: i32) -> Result<i32, HostStop> {
    let (state, store) = env.data_and_store_mut();
    let Some(memory) = state.memory.clone() else {
        return Ok(ERR_FAULT);
    };
    let Some(sub) = state.outbound.as_mut() else {
        return Ok(ERR_HANDLE);
    };
    let cap = sub.response_cap;
    let Some(open) = sub.get(handle) else {
        return Ok(ERR_HANDLE);
    };
    if buf_len <= 0 {
        return Ok(ERR_INVALID);
    }
    while open.pending.is_empty() && !open.done {
        let idle = open.idle;
        let next = wait_for(&state.handle, state.deadline, async {
            tokio::time::timeout(idle, http_body_util::BodyExt::frame(&mut open.body)).await
        })?;
        match next {
            Err(_) => return Ok(ERR_TIMEOUT),
            Ok(None) => {
                open.done = true;
                open.in_flight = None;
            }
            Ok(Some(Err(_))) => {
                open.done = true;
                return Ok(ERR_ORIGIN);
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    open.read += data.len() as u64;
                    if open.read > cap {
                        open.done = true;
                        return Ok(ERR_LIMIT);
                    }
                    open.pending = data;
                }
            }
        }
    }
    let n = open.pending.len().min(buf_len as usize);
    if n == 0 {
        return Ok(0);
    }
    let chunk = open.pending.split_to(n);
    if memory
        .view(&store)
        .write(u64::from(buf as u32), &chunk)
        .is_err()
    {
        return Ok(ERR_FAULT);
    }
    Ok(n as i32)
}

/// `close(handle)`: drop the response (an unread body closes its connection).
fn close(mut env: Env, handle: i32) -> i32 {
    let Some(sub) = env.data_mut().outbound.as_mut() else {
        return ERR_HANDLE;
    };
    let slot = usize::try_from(handle)
        .ok()
        .and_then(|h| h.checked_sub(1))
        .and_then(|i| sub.open.get_mut(i));
    match slot {
        Some(slot @ Some(_)) => {
            *slot = None;
            0
        }
        _ => ERR_HANDLE,
    }
}

/// The signature of an `outpost_http_v1` function, if it is one.
pub fn signature_of(
    name: &str,
) -> Option<(
    Vec<wasmer::wasmparser::ValType>,
    Vec<wasmer::wasmparser::ValType>,
)> {
    let i32s = |n: usize| vec![wasmer::wasmparser::ValType::I32; n];
    FUNCTIONS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, params, results)| (i32s(params.len()), i32s(results.len())))
}

/// The constructor of an `outpost_http_v1` function.
pub fn constructor(name: &str) -> Option<super::wasi::Constructor> {
    macro_rules! typed {
        ($f:expr) => {
            Some(|store: &mut Store, env: &FunctionEnv<HostState>| {
                Function::new_typed_with_env(store, env, $f)
            })
        };
    }
    match name {
        "send" => typed!(send),
        "status" => typed!(status),
        "headers" => typed!(headers),
        "read" => typed!(read),
        "close" => typed!(close),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_parse_and_refuse_junk() {
        let h = parse_headers(b"Accept: application/json\r\nX-A:  1 \nX-A: 2\n").expect("ok");
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(parse_headers(b"no colon here"), Err(ERR_INVALID));
        assert_eq!(parse_headers(b"bad name: x"), Err(ERR_INVALID));
        assert_eq!(
            header_lines(&h),
            b"accept: application/json\nx-a: 1\nx-a: 2\n"
        );
    }
}
