//! Subrequests from an outpost guest to the backends its app declares (`backends = [...]` in
//! the node's `[[app]]`), over the `outpost_http_v1` imports (docs/guest-abi.md).
//!
//! ```no_run
//! let mut resp = outpost_http::Request::get("/items.json")
//!     .header("accept", "application/json")
//!     .send("api")
//!     .expect("origin reachable");
//! assert_eq!(resp.status(), 200);
//! let body = resp.body_to_vec(1 << 20).expect("body");
//! ```
//!
//! Off wasm32 (in a guest's own unit tests) every call fails with `Error::Unavailable`.

use std::fmt;

/// Why a subrequest failed. `status()` is the status a guest usually answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A bad argument: a method, path or header outpost does not accept.
    Invalid,
    /// The app does not declare this backend.
    UnknownBackend,
    /// A cap was hit: 32 subrequests per request, or a body over the tenant's limit.
    Limit,
    /// The origin could not be reached (DNS, connect, TLS).
    Connect,
    /// The origin did not answer within the backend's timeout.
    Timeout,
    /// The origin broke the connection or the protocol mid-response.
    Origin,
    /// The handle is not an open response.
    BadHandle,
    /// outpost refused the address the backend resolved to.
    Refused,
    /// A buffer lay outside the guest's memory.
    Fault,
    /// The backend's connections are all in use.
    Busy,
    /// Not running under outpost (or an error code this crate does not know).
    Unavailable,
}

impl Error {
    fn from_code(code: i32) -> Self {
        match code {
            -1 => Error::Invalid,
            -2 => Error::UnknownBackend,
            -3 => Error::Limit,
            -4 => Error::Connect,
            -5 => Error::Timeout,
            -6 => Error::Origin,
            -7 => Error::BadHandle,
            -8 => Error::Refused,
            -9 => Error::Fault,
            -10 => Error::Busy,
            _ => Error::Unavailable,
        }
    }

    /// The status a gateway answers with for this failure: 504 for timeouts, 503 when busy,
    /// else 502.
    pub fn status(self) -> u16 {
        match self {
            Error::Timeout => 504,
            Error::Busy => 503,
            _ => 502,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subrequest failed: {self:?}")
    }
}

impl std::error::Error for Error {}

#[cfg(target_arch = "wasm32")]
mod sys {
    #[link(wasm_import_module = "outpost_http_v1")]
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn send(
            backend: *const u8,
            backend_len: usize,
            method: *const u8,
            method_len: usize,
            path: *const u8,
            path_len: usize,
            headers: *const u8,
            headers_len: usize,
            body: *const u8,
            body_len: usize,
        ) -> i32;
        pub fn status(handle: i32) -> i32;
        pub fn headers(handle: i32, buf: *mut u8, buf_len: usize) -> i32;
        pub fn read(handle: i32, buf: *mut u8, buf_len: usize) -> i32;
        pub fn close(handle: i32) -> i32;
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
mod sys {
    pub unsafe fn send(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> i32 {
        -100
    }
    pub unsafe fn status(_: i32) -> i32 {
        -100
    }
    pub unsafe fn headers(_: i32, _: *mut u8, _: usize) -> i32 {
        -100
    }
    pub unsafe fn read(_: i32, _: *mut u8, _: usize) -> i32 {
        -100
    }
    pub unsafe fn close(_: i32) -> i32 {
        -100
    }
}

/// A subrequest being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: String,
    body: Vec<u8>,
}

impl Request {
    /// A request with this method for `path` (`/` first, query included).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_string(),
            path: path.to_string(),
            headers: String::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Add a header (Host, hop-by-hop headers and Forwarded / X-Forwarded-For are outpost's).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push_str(name);
        self.headers.push_str(": ");
        self.headers.push_str(value);
        self.headers.push('\n');
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Send it to `backend` and wait for the response head.
    pub fn send(&self, backend: &str) -> Result<Response, Error> {
        // SAFETY: every pointer and length pair describes a live buffer owned by `self` or
        // `backend`; outpost only reads them during the call.
        let code = unsafe {
            sys::send(
                backend.as_ptr(),
                backend.len(),
                self.method.as_ptr(),
                self.method.len(),
                self.path.as_ptr(),
                self.path.len(),
                self.headers.as_ptr(),
                self.headers.len(),
                self.body.as_ptr(),
                self.body.len(),
            )
        };
        if code <= 0 {
            return Err(Error::from_code(code));
        }
        Ok(Response { handle: code })
    }
}

/// A response whose body is read in chunks.
#[derive(Debug)]
pub struct Response {
    handle: i32,
}

impl Response {
    pub fn status(&self) -> u16 {
        // SAFETY: a plain call with an integer handle.
        let code = unsafe { sys::status(self.handle) };
        u16::try_from(code).unwrap_or(0)
    }

    /// The response headers, lowercase names, in the origin's order.
    pub fn headers(&self) -> Result<Vec<(String, String)>, Error> {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: `buf` is a live buffer of `buf.len()` bytes that outpost may write.
            let n = unsafe { sys::headers(self.handle, buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return Err(Error::from_code(n));
            }
            let n = n as usize;
            if n > buf.len() {
                buf.resize(n, 0);
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            return Ok(text
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect());
        }
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers()
            .ok()?
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Read the next chunk of the body into `buf`; 0 at its end.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        // SAFETY: `buf` is a live buffer of `buf.len()` bytes that outpost may write.
        let n = unsafe { sys::read(self.handle, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(Error::from_code(n));
        }
        Ok(n as usize)
    }

    /// The whole body, refusing more than `max` bytes.
    pub fn body_to_vec(&mut self, max: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > max {
                return Err(Error::Limit);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

impl std::io::Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Response::read(self, buf).map_err(std::io::Error::other)
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        // SAFETY: a plain call with an integer handle.
        unsafe {
            sys::close(self.handle);
        }
    }
}
