//! Validated values: each type can only hold a valid value, and its parser says what it
//! expected when the input is not one.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

/// A tenant or app name: 1 to 63 characters of lowercase ASCII letters, digits and `-`,
/// starting and ending with a letter or digit (usable as a DNS label and a metrics label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid name; expected 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI reference: a tag or a content digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    /// `sha256:<64 lowercase hex>`
    Digest(String),
}

/// Where an app's bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI distribution registry: `oci://host[:port]/repo:tag` or `...@sha256:...`.
    Oci {
        registry: String,
        repository: String,
        reference: Reference,
    },
    /// The node's own bundle store: `local:repo:tag` or `local:repo@sha256:...`.
    Local {
        repository: String,
        reference: Reference,
    },
    /// An unsigned module on disk, for development and single-node use: `file:path/app.wasm`.
    File(PathBuf),
}

const SOURCE_EXPECTED: &str = "oci://HOST[:PORT]/REPOSITORY:TAG, oci://HOST[:PORT]/REPOSITORY@sha256:<64 hex digits>, local:REPOSITORY:TAG or file:PATH";

fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && part.as_bytes()[0].is_ascii_alphanumeric()
                && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn parse_reference(rest: &str) -> Result<(String, Reference), String> {
    if let Some((repo, digest)) = rest.split_once('@') {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest {digest:?} must be sha256:<64 hex digits>"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest {digest:?} must be sha256: followed by 64 lowercase hex digits"
            ));
        }
        if !valid_repository(repo) {
            return Err(format!("{repo:?} is not a valid repository name"));
        }
        return Ok((repo.to_string(), Reference::Digest(digest.to_string())));
    }
    let (repo, tag) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{rest:?} names no tag or digest; add :TAG or @sha256:<digest>"))?;
    if !valid_repository(repo) {
        return Err(format!(
            "{repo:?} is not a valid repository name (lowercase letters, digits, '.', '_', '-', '/')"
        ));
    }
    if !valid_tag(tag) {
        return Err(format!("{tag:?} is not a valid tag"));
    }
    Ok((repo.to_string(), Reference::Tag(tag.to_string())))
}

fn valid_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    port_ok
        && !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Source {
    pub fn parse(s: &str) -> Result<Self, String> {
        let detail = |e: String| format!("{e}; expected {SOURCE_EXPECTED}");
        if let Some(rest) = s.strip_prefix("oci://") {
            let (registry, rest) = rest.split_once('/').ok_or_else(|| {
                detail(format!("{s:?} has no repository after the registry host"))
            })?;
            if !valid_registry_host(registry) {
                return Err(detail(format!(
                    "{registry:?} is not a valid registry host[:port]"
                )));
            }
            let (repository, reference) = parse_reference(rest).map_err(detail)?;
            return Ok(Source::Oci {
                registry: registry.to_string(),
                repository,
                reference,
            });
        }
        if let Some(rest) = s.strip_prefix("local:") {
            let (repository, reference) = parse_reference(rest).map_err(detail)?;
            return Ok(Source::Local {
                repository,
                reference,
            });
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() || path.contains('\0') {
                return Err(detail("file: needs a path".into()));
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        Err(format!(
            "{s:?} is not an app source; expected {SOURCE_EXPECTED}"
        ))
    }

    pub fn is_signed(&self) -> bool {
        !matches!(self, Source::File(_))
    }
}

/// A route's host: exact (`shop.example.com`) or a wildcard over subdomains (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`: `*.example.com` holds `example.com` and matches `a.example.com`
    /// and `a.b.example.com`, not `example.com` itself.
    Wildcard(String),
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let expected = "expected a host name such as \"shop.example.com\" or a wildcard such as \"*.example.com\" (no scheme, port or path)";
        if let Some(suffix) = lower.strip_prefix("*.") {
            if valid_hostname(suffix) {
                return Ok(HostPattern::Wildcard(suffix.to_string()));
            }
        } else if valid_hostname(&lower) {
            return Ok(HostPattern::Exact(lower));
        }
        Err(format!("{s:?} is not a host pattern; {expected}"))
    }

    /// Whether a request's host (lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A route's path prefix: starts with `/`; matches itself and anything below it
/// (`/api` matches `/api` and `/api/x`, not `/apix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = s.starts_with('/')
            && s.len() <= 1024
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !ok {
            return Err(format!(
                "{s:?} is not a path prefix; expected a path starting with '/' without spaces, '?' or '#'"
            ));
        }
        let trimmed = s.trim_end_matches('/');
        Ok(Self(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, path: &str) -> bool {
        self.0 == "/"
            || path
                .strip_prefix(self.0.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scheme an origin is reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a backend lives: `https://origin.example.com[:port]` (or `http://`), a host name or
/// an IP literal, no path, query or user info.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginUrl {
    pub scheme: Scheme,
    /// Lowercase host name, or the IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The address when `host` is an IP literal.
    pub ip: Option<std::net::IpAddr>,
}

impl OriginUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let expected = "expected https://HOST[:PORT] or http://HOST[:PORT], such as \"https://origin.example.com\" (no path, query or user info)";
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!("{s:?} is not an origin URL; {expected}"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!("{s:?} is not an origin URL; {expected}"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?} has an unclosed [IPv6 address]; {expected}"))?;
            let port =
                match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("{s:?} has text after the IPv6 address; {expected}")
                    })?),
                };
            (addr, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535) in {s:?}"))?,
        };
        let lower = host.to_ascii_lowercase();
        let ip = lower.parse::<std::net::IpAddr>().ok();
        if ip.is_none() && (!valid_hostname(&lower) || authority.starts_with('[')) {
            return Err(format!(
                "{host:?} is not a host name or IP address in {s:?}; {expected}"
            ));
        }
        Ok(Self {
            scheme,
            host: lower,
            port,
            ip,
        })
    }

    /// `host:port` as a Host header or authority writes it (IPv6 in brackets, the scheme's
    /// default port left out).
    pub fn authority(&self) -> String {
        let host = match self.ip {
            Some(std::net::IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let default = matches!(
            (self.scheme, self.port),
            (Scheme::Http, 80) | (Scheme::Https, 443)
        );
        if default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// A Host header value an operator may set for a backend: a host name, optionally with a port.
pub fn parse_host_header(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let (host, port) = match lower.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (lower.as_str(), None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if port_ok && (valid_hostname(host) || host.parse::<std::net::Ipv4Addr>().is_ok()) {
        Ok(lower)
    } else {
        Err(format!(
            "{s:?} is not a Host header value; expected a host name such as \"www.example.com\", optionally with :PORT"
        ))
    }
}

/// A tenant's signing key: `ed25519:<base64 of the 32-byte public key>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s.strip_prefix("ed25519:").ok_or_else(|| {
            format!(
                "{:?} is not a public key; expected ed25519:<base64 of 32 bytes>",
                truncate(s)
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
            .map_err(|_| "the key after ed25519: is not valid base64".to_string())?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "an ed25519 public key is 32 bytes; this one is {} bytes",
                bytes.len()
            )
        })?;
        Ok(Self(key))
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Which guest host an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestHost {
    #[default]
    Auto,
    Lean,
    Wasix,
}

impl GuestHost {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "lean" => Ok(Self::Lean),
            "wasix" => Ok(Self::Wasix),
            _ => Err(format!(
                "{s:?} is not a guest host; expected \"auto\", \"lean\" or \"wasix\""
            )),
        }
    }
}

/// Per-request limits, resolved (node defaults with a tenant's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory: u64,
    pub fuel: u64,
    pub timeout: Duration,
    pub concurrency: u32,
    pub request_body: u64,
    pub response_body: u64,
}

impl Limits {
    pub fn defaults() -> Self {
        Self {
            memory: 128 << 20,
            fuel: 1_000_000_000,
            timeout: Duration::from_secs(10),
            concurrency: 64,
            request_body: 8 << 20,
            response_body: 64 << 20,
        }
    }

    /// The caps no tenant may exceed unless the operator raises them.
    pub fn default_caps() -> Self {
        Self {
            memory: 4 << 30,
            fuel: 1_000_000_000_000,
            timeout: Duration::from_secs(300),
            concurrency: 10_000,
            request_body: 1 << 30,
            response_body: 4 << 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            Source::parse("oci://127.0.0.1:5000/acme/shop:v1"),
            Ok(Source::Oci {
                registry: "127.0.0.1:5000".into(),
                repository: "acme/shop".into(),
                reference: Reference::Tag("v1".into())
            })
        );
        assert!(matches!(
            Source::parse(&format!("oci://ghcr.io/acme/shop@{digest}")),
            Ok(Source::Oci {
                reference: Reference::Digest(_),
                ..
            })
        ));
        assert!(matches!(
            Source::parse("local:acme/shop:v2"),
            Ok(Source::Local { .. })
        ));
        assert!(matches!(
            Source::parse("file:apps/shop.wasm"),
            Ok(Source::File(_))
        ));
        for bad in [
            "",
            "http://example.com/a:b",
            "oci://",
            "oci://host",
            "oci://host/repo",
            "oci://host/Repo:v1",
            "oci://host:99999/repo:v1",
            "oci://host/repo@sha256:abc",
            "oci://host/repo@md5:0123",
            "oci://ho st/repo:v1",
            "local:repo",
            "local::v1",
            "file:",
            "oci://hôst/repo:v1",
            "oci://host/repo:-bad",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("Shop.Example.COM"),
            Ok(HostPattern::Exact("shop.example.com".into()))
        );
        let wild = HostPattern::parse("*.example.com").expect("wildcard");
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        for bad in [
            "",
            "*",
            "*.",
            "foo*.com",
            "a..b",
            "-a.com",
            "a.com:443",
            "https://a.com",
            "a.com/x",
            "ünï.com",
            "a b.com",
            &"a".repeat(64),
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn path_prefixes() {
        let api = PathPrefix::parse("/api/").expect("path");
        assert_eq!(api.as_str(), "/api");
        assert!(api.matches("/api"));
        assert!(api.matches("/api/x"));
        assert!(!api.matches("/apix"));
        assert!(PathPrefix::parse("/").expect("root").matches("/anything"));
        for bad in ["", "api", "/a b", "/a?b", "/a#b", "/ü"] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn origin_urls() {
        let u = OriginUrl::parse("https://Origin.Example.com").expect("url");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.ip),
            (Scheme::Https, "origin.example.com", 443, None)
        );
        assert_eq!(u.authority(), "origin.example.com");
        let u = OriginUrl::parse("http://127.0.0.1:8080/").expect("ip");
        assert_eq!(u.ip, Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = OriginUrl::parse("https://[::1]:8443").expect("v6");
        assert_eq!(u.authority(), "[::1]:8443");
        for bad in [
            "",
            "origin.example.com",
            "ftp://a.com",
            "https://",
            "https://a.com/path",
            "https://a.com?q",
            "https://user@a.com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://a b.com",
            "https://[::1",
            "https://[::1]x",
        ] {
            assert!(OriginUrl::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_host_header("www.example.com:8443").is_ok());
        assert!(parse_host_header("a b").is_err());
    }

    #[test]
    fn names_and_keys() {
        assert!(Name::parse("acme-2").is_ok());
        for bad in ["", "Acme", "-a", "a-", "a_b", "ä", &"a".repeat(64)] {
            assert!(Name::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let key = format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        assert_eq!(PublicKey::parse(&key), Ok(PublicKey([7u8; 32])));
        assert!(PublicKey::parse("rsa:AAAA").is_err());
        assert!(PublicKey::parse("ed25519:!!!").is_err());
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
    }
}
