//! Pass-through: a guest's CGI response that names a backend (`X-Outpost-Backend`) makes
//! outpost send the client's own request to that backend and stream the origin's response
//! back, the guest's other headers set on it. The guest has ended by then: the origin exchange
//! holds no CPU slot and no guest instance.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Response;
#[cfg(test)]
use http::StatusCode;

use super::{add_forwarding, AppBackends, Forwarding, OriginErrorKind, OriginFailure, ProxiedBody};
use crate::error::Failure;
use crate::sandbox::cgi::ResponseHead;
use crate::sandbox::io::GuestInput;

/// Names the backend; its presence makes a response a pass-through.
pub const BACKEND: &str = "x-outpost-backend";
/// Replaces the request's path and query.
pub const PATH: &str = "x-outpost-path";
/// `Name: value`: sets a request header (repeatable).
pub const SET_HEADER: &str = "x-outpost-set-request-header";
/// `Name`: removes a request header (repeatable).
pub const REMOVE_HEADER: &str = "x-outpost-remove-request-header";

/// Why a response that names a backend but whose body the guest was already streaming (it
/// wrote past the head before ending) is not passed through.
pub const STARTED_STREAMING: &str = "the guest asked for a pass-through (X-Outpost-Backend) after its response had started: it wrote body bytes after that head, which were streaming before it ended; a pass-through response is a head alone";

/// Whether the guest's response asks for a pass-through.
pub fn requested(head: &ResponseHead) -> bool {
    head.headers.contains_key(BACKEND)
}

/// Headers of the guest's response never copied onto the origin's.
fn guest_header_kept(name: &HeaderName) -> bool {
    !(name.as_str().starts_with("x-outpost-")
        || *name == http::header::CONTENT_LENGTH
        || *name == http::header::CONTENT_TYPE)
}

fn bad(why: impl Into<String>) -> Failure {
    Failure::BadResponse(why.into())
}

/// What the guest asked for, checked: the backend, the path, the request header edits.
struct Directive<'a> {
    backend: &'a str,
    path: Option<&'a str>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

fn text(v: &HeaderValue) -> Option<&str> {
    v.to_str().map(str::trim).ok()
}

fn directive(head: &ResponseHead) -> Result<Directive<'_>, Failure> {
    let backend = head
        .headers
        .get(BACKEND)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(|| bad("X-Outpost-Backend is not text"))?;
    let path = match head.headers.get(PATH) {
        None => None,
        Some(v) => match text(v) {
            Some(p) if super::valid_path(p) => Some(p),
            _ => return Err(bad("X-Outpost-Path is not a path starting with /")),
        },
    };
    let mut remove = Vec::new();
    for v in head.headers.get_all(REMOVE_HEADER) {
        let name = text(v)
            .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .ok_or_else(|| bad("X-Outpost-Remove-Request-Header is not a header name"))?;
        remove.push(name);
    }
    let mut set = Vec::new();
    for v in head.headers.get_all(SET_HEADER) {
        let parsed = text(v).and_then(|line| {
            let (name, value) = line.split_once(':')?;
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        set.push(parsed.ok_or_else(|| bad("X-Outpost-Set-Request-Header is not `Name: value`"))?);
    }
    Ok(Directive {
        backend,
        path,
        remove,
        set,
    })
}

/// Forward the client's request as the guest's response directs and return the origin's
/// response (its body streams under `response_cap`).
pub async fn forward(
    backends: &AppBackends,
    guest: ResponseHead,
    request: http::request::Parts,
    unread: Option<GuestInput>,
    fwd: &Forwarding,
    response_cap: u64,
) -> Result<Response<ProxiedBody>, Failure> {
    let d = directive(&guest)?;
    let backend = backends.get(d.backend).ok_or_else(|| {
        Failure::Origin(OriginFailure::new(
            OriginErrorKind::UnknownBackend,
            format!("the app does not declare backend {:?}", d.backend),
        ))
    })?;
    let body = match unread {
        Some(input) => input.into_origin_body(),
        None => {
            return Err(bad(
                "the app read the request body, so it cannot be passed through",
            ))
        }
    };
    let path = d
        .path
        .map(str::to_string)
        .or_else(|| request.uri.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| "/".into());
    let mut headers = request.headers;
    super::strip_hop_by_hop(&mut headers);
    add_forwarding(&mut headers, fwd);
    for name in d.remove {
        headers.remove(name);
    }
    for (name, value) in d.set {
        headers.insert(name, value);
    }
    let req = backend
        .request(request.method, &path, headers, body)
        .map_err(|f| bad(f.detail))?;
    let (response, in_flight) = backend.send(req).await.map_err(Failure::Origin)?;
    let (mut parts, incoming) = response.into_parts();
    apply_guest_headers(&mut parts.headers, guest.headers);
    let body = ProxiedBody::new(incoming, in_flight, response_cap, backend.idle_timeout());
    Ok(Response::from_parts(parts, body))
}

/// The guest's own headers replace the origin's of the same name.
fn apply_guest_headers(origin: &mut HeaderMap, guest: HeaderMap) {
    let mut replaced: Vec<HeaderName> = Vec::new();
    let mut current: Option<HeaderName> = None;
    for (name, value) in guest {
        if let Some(n) = name {
            current = Some(n);
        }
        let Some(name) = current.clone() else {
            continue;
        };
        if !guest_header_kept(&name) {
            continue;
        }
        if !replaced.contains(&name) {
            origin.remove(&name);
            replaced.push(name.clone());
        }
        origin.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_headers_replace_the_origins_and_control_headers_stay_home() {
        let mut origin = HeaderMap::new();
        origin.insert("cache-control", HeaderValue::from_static("no-store"));
        origin.insert("content-type", HeaderValue::from_static("application/json"));
        origin.insert("etag", HeaderValue::from_static("\"1\""));
        let mut guest = HeaderMap::new();
        guest.insert("cache-control", HeaderValue::from_static("max-age=60"));
        guest.append("x-variant", HeaderValue::from_static("a"));
        guest.append("x-variant", HeaderValue::from_static("b"));
        guest.insert("content-type", HeaderValue::from_static("text/plain"));
        guest.insert(BACKEND, HeaderValue::from_static("api"));
        apply_guest_headers(&mut origin, guest);
        assert_eq!(origin["cache-control"], "max-age=60");
        assert_eq!(origin["content-type"], "application/json");
        assert_eq!(origin.get_all("x-variant").iter().count(), 2);
        assert!(origin.get(BACKEND).is_none());
        assert_eq!(origin["etag"], "\"1\"");
    }

    #[test]
    fn directives_are_checked() {
        let head = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.append(*k, HeaderValue::from_static(v));
            }
            ResponseHead {
                status: StatusCode::OK,
                headers,
            }
        };
        let ok = head(&[
            (BACKEND, "api"),
            (PATH, "/v2/items?x=1"),
            (SET_HEADER, "X-Tenant-Auth: yes"),
            (REMOVE_HEADER, "cookie"),
        ]);
        let d = directive(&ok).expect("valid");
        assert_eq!((d.backend, d.path), ("api", Some("/v2/items?x=1")));
        assert_eq!(d.set.len(), 1);
        assert_eq!(d.remove.len(), 1);
        assert!(directive(&head(&[(BACKEND, "api"), (PATH, "http://evil/")])).is_err());
        assert!(directive(&head(&[(BACKEND, "api"), (SET_HEADER, "no colon")])).is_err());
    }
}
