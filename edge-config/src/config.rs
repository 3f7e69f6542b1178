//! The configuration file: raw serde structs (unknown keys refused) read section by section so
//! every mistake in a file is reported at once, then checked into `Config`, whose values are
//! all valid and cross-checked (routes name known apps, apps known tenants, and so on).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::{nearest, Diagnostics, Sink};
use crate::types::{
    parse_host_header, GuestHost, HostPattern, Limits, Name, OriginUrl, PathPrefix, PublicKey,
    Source,
};
use crate::units::{parse_duration, parse_size};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub listen: Listen,
    pub tls: Tls,
    /// Defaults for every tenant.
    pub limits: Limits,
    /// What no tenant may exceed.
    pub caps: Limits,
    pub registry: Registry,
    pub tenants: Vec<Tenant>,
    pub apps: Vec<App>,
    pub routes: Vec<Route>,
    /// Origins tenants' apps may send requests to.
    pub backends: Vec<Backend>,
}

/// An origin server a tenant's apps may reach (pass-through and subrequests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub name: Name,
    pub tenant: Name,
    pub url: OriginUrl,
    /// The Host header (and TLS server name) sent instead of the URL's host.
    pub host_header: Option<String>,
    /// PEM file of the CAs that verify the origin's certificate, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Time from sending the request to the response head; also the longest pause between
    /// two chunks of the response body.
    pub first_byte_timeout: Duration,
    /// Connections open to the origin at once (idle ones included).
    pub max_connections: u32,
    /// Whether the host name may resolve to loopback, link-local or private addresses.
    pub allow_private: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http3: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Open connections (TCP and QUIC together) beyond which new ones are refused.
    pub max_connections: u32,
    /// Concurrent requests (HTTP/2 and HTTP/3 streams) per connection.
    pub max_streams: u32,
    /// Time a client has for its TLS handshake and request head (slowloris protection).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Largest request head (431 past it).
    pub max_header_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// With no certificate configured, generate a self-signed one for localhost.
    pub self_signed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub poll: Duration,
    pub credentials_file: Option<PathBuf>,
    pub credentials_env: Option<String>,
    /// Registries reached over plain HTTP (e.g. one on loopback).
    pub insecure: Vec<String>,
    /// Largest Wasm layer a bundle may carry; larger ones are refused before they are fetched.
    pub max_module: u64,
    /// A file holding the shared token registry push notifications must present.
    pub notify_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: Name,
    pub keys: Vec<PublicKey>,
    pub allow_unsigned: bool,
    pub limits: Limits,
    pub certs: Vec<CertPair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: Name,
    pub tenant: Name,
    pub source: Source,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub host: GuestHost,
    /// Backends (of the app's tenant) the app may send requests to.
    pub backends: Vec<Name>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: HostPattern,
    pub path: PathPrefix,
    pub app: Name,
}

// ---- raw schema: what serde reads, with spans for the checks that follow ----

type S<T> = Spanned<T>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<S<String>>,
    data_dir: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    https: Option<S<String>>,
    http3: Option<S<String>>,
    http: Option<S<String>>,
    admin: Option<S<String>>,
    max_connections: Option<S<toml::Value>>,
    max_streams: Option<S<toml::Value>>,
    header_timeout: Option<S<toml::Value>>,
    idle_timeout: Option<S<toml::Value>>,
    max_header_bytes: Option<S<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<S<String>>,
    key: Option<S<String>>,
    self_signed: Option<S<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<S<toml::Value>>,
    fuel: Option<S<toml::Value>>,
    timeout: Option<S<toml::Value>>,
    concurrency: Option<S<toml::Value>>,
    request_body: Option<S<toml::Value>>,
    response_body: Option<S<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    poll: Option<S<toml::Value>>,
    credentials_file: Option<S<String>>,
    credentials_env: Option<S<String>>,
    #[serde(default)]
    insecure: Vec<S<String>>,
    max_module: Option<S<toml::Value>>,
    notify_token_file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: S<String>,
    key: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: S<String>,
    #[serde(default)]
    keys: Vec<S<String>>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cert: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: S<String>,
    tenant: S<String>,
    source: S<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    args: Vec<String>,
    host: Option<S<String>>,
    #[serde(default)]
    backends: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: S<String>,
    tenant: S<String>,
    url: S<String>,
    host_header: Option<S<String>>,
    ca_file: Option<S<String>>,
    connect_timeout: Option<S<toml::Value>>,
    first_byte_timeout: Option<S<toml::Value>>,
    max_connections: Option<S<toml::Value>>,
    #[serde(default)]
    allow_private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: S<String>,
    path: Option<S<String>>,
    app: S<String>,
}

const SECTIONS: &[&str] = &[
    "node", "listen", "tls", "limits", "caps", "registry", "tenant", "app", "route", "backend",
];

/// Extra advice for keys users commonly try.
fn key_help(section: &str, key: &str) -> Option<&'static str> {
    match (section, key) {
        ("registry", "password" | "token" | "username" | "auth") => Some(
            "registry credentials are never written inline; use credentials_file = \"PATH\" or credentials_env = \"VARIABLE\"",
        ),
        ("registry", "url") => Some("each app names its registry in its source: source = \"oci://HOST/REPOSITORY:TAG\""),
        _ => None,
    }
}

struct Loader<'a> {
    sink: Sink<'a>,
    base: &'a Path,
}

impl<'a> Loader<'a> {
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Deserialize one section (or array entry); a serde error becomes a diagnostic.
    fn read<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        section: &str,
    ) -> Option<T> {
        // Every unknown key is reported: each one found is dropped from a copy and the
        // section read again. Any other error ends the section's reading.
        let mut owned = value.clone();
        loop {
            match T::deserialize(owned.clone().into_deserializer()) {
                // The section parsed only without its unknown keys: still an error.
                Ok(v) => return (owned_is_original(&owned, value)).then_some(v),
                Err(e) => {
                    let span = e.span().unwrap_or_else(|| value.span());
                    let message = e.message().trim().to_string();
                    self.serde_error(span.clone(), &message, section);
                    let unknown = message
                        .strip_prefix("unknown field `")
                        .and_then(|rest| rest.split('`').next())
                        .map(str::to_string);
                    match unknown {
                        Some(key) if remove_key_at(&mut owned, &key, &span) => continue,
                        _ => return None,
                    }
                }
            }
        }
    }

    fn serde_error(&mut self, span: Range<usize>, message: &str, section: &str) {
        // serde: "unknown field `nmae`, expected one of `name`, `keys`"
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let found = rest.split('`').next().unwrap_or("");
            let expected: Vec<&str> = rest
                .split('`')
                .skip(1)
                .filter(|s| !s.trim().is_empty() && !s.contains(','))
                .filter(|s| !s.contains("expected"))
                .collect();
            let header = section_header(section);
            let msg = format!("unknown key `{found}` in {header}");
            let help = key_help(section, found)
                .map(str::to_string)
                .or_else(|| nearest(found, &expected).map(|k| format!("did you mean `{k}`?")))
                .unwrap_or_else(|| format!("{header} takes: {}", expected.join(", ")));
            self.sink.error_help(span, msg, help);
            return;
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or("");
            self.sink.error_help(
                span,
                format!("{} is missing `{field}`", section_header(section)),
                format!("add {field} = ..."),
            );
            return;
        }
        self.sink
            .error(span, format!("in {}: {message}", section_header(section)));
    }

    fn size(&mut self, v: &Option<S<toml::Value>>, field: &str) -> Option<u64> {
        let v = v.as_ref()?;
        match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(*n as u64),
            toml::Value::Integer(n) => {
                self.sink.error(
                    v.span(),
                    format!("{field} = {n} is negative; expected a size such as \"64MiB\""),
                );
                None
            }
            toml::Value::String(s) => match parse_size(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.sink.error(v.span(), format!("{field}: {e}"));
                    None
                }
            },
            other => {
                self.sink.error(
                    v.span(),
                    format!(
                        "{field} is {}; expected a size such as \"64MiB\" or a number of bytes",
                        a_type(other)
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Option<S<toml::Value>>, field: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        match v.get_ref() {
            toml::Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.sink.error(v.span(), format!("{field}: {e}"));
                    None
                }
            },
            other => {
                self.sink.error_help(
                    v.span(),
                    format!("{field} is {}; expected a duration string", a_type(other)),
                    format!("write the unit: {field} = \"10s\" or \"500ms\""),
                );
                None
            }
        }
    }

    fn count(&mut self, v: &Option<S<toml::Value>>, field: &str) -> Option<u64> {
        let v = v.as_ref()?;
        match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(*n as u64),
            other => {
                self.sink.error(
                    v.span(),
                    format!("{field} must be a whole number of at least 1; found {other}"),
                );
                None
            }
        }
    }

    /// Read a limits table onto `base`; report values out of range or over `caps`.
    fn limits(
        &mut self,
        raw: &RawLimits,
        base: &Limits,
        caps: Option<&Limits>,
        what: &str,
    ) -> Limits {
        let mut out = base.clone();
        let over_cap = |cap: Option<&Limits>, f: &dyn Fn(&Limits) -> u128, v: u128| {
            cap.is_some_and(|c| v > f(c))
        };
        if let Some(m) = self.size(&raw.memory, "memory") {
            let span = raw.memory.as_ref().map(|v| v.span()).unwrap_or_default();
            if m > 4 << 30 {
                self.sink.error_help(
                    span,
                    format!(
                        "memory {} is above 4GiB, the most a wasm32 guest can address",
                        fmt_size(m)
                    ),
                    "use at most \"4GiB\"",
                );
            } else if m < 65536 {
                self.sink.error_help(
                    span,
                    format!("memory {} is below one Wasm page (64KiB)", fmt_size(m)),
                    "use at least \"64KiB\"",
                );
            } else if over_cap(caps, &|c| c.memory as u128, m as u128) {
                self.cap_error(span, what, "memory", caps);
            } else {
                out.memory = m;
            }
        }
        if let Some(f) = self.count(&raw.fuel, "fuel") {
            let span = raw.fuel.as_ref().map(|v| v.span()).unwrap_or_default();
            if f == 0 {
                self.sink.error_help(
                    span,
                    "fuel = 0 would stop every request before its first instruction",
                    "use a budget such as 1_000_000_000",
                );
            } else if over_cap(caps, &|c| c.fuel as u128, f as u128) {
                self.cap_error(span, what, "fuel", caps);
            } else {
                out.fuel = f;
            }
        }
        if let Some(t) = self.duration(&raw.timeout, "timeout") {
            let span = raw.timeout.as_ref().map(|v| v.span()).unwrap_or_default();
            if t.is_zero() {
                self.sink.error_help(
                    span,
                    "timeout = 0 would stop every request at once",
                    "use a duration such as \"10s\"",
                );
            } else if over_cap(caps, &|c| c.timeout.as_millis(), t.as_millis()) {
                self.cap_error(span, what, "timeout", caps);
            } else {
                out.timeout = t;
            }
        }
        if let Some(c) = self.count(&raw.concurrency, "concurrency") {
            let span = raw
                .concurrency
                .as_ref()
                .map(|v| v.span())
                .unwrap_or_default();
            if c == 0 {
                self.sink.error_help(
                    span,
                    "concurrency = 0 would refuse every request",
                    "allow at least 1 request at once",
                );
            } else if c > 1_000_000 {
                self.sink
                    .error(span, format!("concurrency {c} is above 1000000"));
            } else if over_cap(caps, &|l| l.concurrency as u128, c as u128) {
                self.cap_error(span, what, "concurrency", caps);
            } else {
                out.concurrency = c as u32;
            }
        }
        for (field, raw_v, slot) in [
            ("request_body", &raw.request_body, 0),
            ("response_body", &raw.response_body, 1),
        ] {
            if let Some(n) = self.size(raw_v, field) {
                let span = raw_v.as_ref().map(|v| v.span()).unwrap_or_default();
                let cap = caps.map(|c| {
                    if slot == 0 {
                        c.request_body
                    } else {
                        c.response_body
                    }
                });
                if cap.is_some_and(|c| n > c) {
                    self.cap_error(span, what, field, caps);
                } else if slot == 0 {
                    out.request_body = n;
                } else {
                    out.response_body = n;
                }
            }
        }
        out
    }

    /// Read a `[name]` section (absent: defaults; not a table, or invalid: reported, defaults).
    fn section<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        sections: &HashMap<&str, &Spanned<DeValue<'_>>>,
        name: &str,
    ) -> T {
        let Some(v) = sections.get(name).copied() else {
            return T::default();
        };
        if !v.get_ref().is_table() {
            self.sink.error_help(
                v.span(),
                format!(
                    "`{name}` must be a table, found a {}",
                    v.get_ref().type_str()
                ),
                format!("write it as a section: [{name}]"),
            );
            return T::default();
        }
        self.read(v, name).unwrap_or_default()
    }

    /// A valid name not defined before in this file; otherwise report why and give `None`.
    fn unique_name(
        &mut self,
        raw: &S<String>,
        kind: &str,
        seen: &mut HashMap<String, Range<usize>>,
    ) -> Option<Name> {
        let name = match Name::parse(raw.get_ref()) {
            Ok(n) => n,
            Err(e) => {
                self.sink.error(raw.span(), format!("{kind} name: {e}"));
                return None;
            }
        };
        if let Some(first) = seen.get(name.as_str()) {
            let first = self.sink.pos(first);
            self.sink
                .error(raw.span(), format!("{kind} `{name}` is defined twice"))
                .notes
                .push((first, "first defined here".into()));
            return None;
        }
        seen.insert(name.as_str().to_string(), raw.span());
        Some(name)
    }

    fn cap_error(&mut self, span: Range<usize>, what: &str, field: &str, caps: Option<&Limits>) {
        let cap = caps.map(|c| match field {
            "memory" => fmt_size(c.memory),
            "fuel" => c.fuel.to_string(),
            "timeout" => format!("{:?}", c.timeout),
            "concurrency" => c.concurrency.to_string(),
            "request_body" => fmt_size(c.request_body),
            _ => fmt_size(c.response_body),
        });
        self.sink.error_help(
            span,
            format!(
                "{what}'s {field} is above the node's cap ({})",
                cap.unwrap_or_default()
            ),
            format!("lower it, or raise {field} in [caps]"),
        );
    }

    fn addr(&mut self, v: &Option<S<String>>, field: &str) -> Option<(SocketAddr, Range<usize>)> {
        let v = v.as_ref()?;
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some((a, v.span())),
            Err(_) => {
                self.sink.error_help(
                    v.span(),
                    format!("{field} = {:?} is not a socket address", v.get_ref()),
                    "write IP:PORT, such as \"0.0.0.0:443\" or \"[::1]:8443\"",
                );
                None
            }
        }
    }
}

/// A size as an operator would write it: "256MiB" when exact, else bytes.
fn fmt_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

fn a_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::Integer(_) => "an integer",
        toml::Value::Array(_) => "an array",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Float(_) => "a float",
        toml::Value::Table(_) => "a table",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::String(_) => "a string",
    }
}

/// Whether no key was dropped from the copy (same span and same number of keys).
fn owned_is_original(owned: &Spanned<DeValue<'_>>, original: &Spanned<DeValue<'_>>) -> bool {
    fn count(v: &DeValue<'_>) -> usize {
        match v {
            DeValue::Table(t) => t.len() + t.iter().map(|(_, v)| count(v.get_ref())).sum::<usize>(),
            DeValue::Array(a) => a.iter().map(|v| count(v.get_ref())).sum(),
            _ => 0,
        }
    }
    count(owned.get_ref()) == count(original.get_ref())
}

/// Drop the key `name` whose key span is `span`, wherever it sits in `value`.
fn remove_key_at(value: &mut Spanned<DeValue<'_>>, name: &str, span: &Range<usize>) -> bool {
    match value.get_mut() {
        DeValue::Table(table) => {
            if table
                .iter()
                .any(|(k, _)| k.get_ref().as_ref() == name && k.span() == *span)
            {
                return table.remove(name).is_some();
            }
            table.iter_mut().any(|(_, v)| remove_key_at(v, name, span))
        }
        DeValue::Array(items) => items.iter_mut().any(|v| remove_key_at(v, name, span)),
        _ => false,
    }
}

fn section_header(section: &str) -> String {
    match section {
        "tenant" | "app" | "route" | "backend" => format!("[[{section}]]"),
        "" => "the top level".into(),
        s if s.starts_with("tenant.") => format!("[{s}]"),
        s => format!("[{s}]"),
    }
}

/// Parse and check a configuration's text. `file` names it in diagnostics; relative paths
/// in it are taken relative to `base_dir`.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, Diagnostics> {
    let mut l = Loader {
        sink: Sink::new(file, text),
        base: base_dir,
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        l.sink
            .error(span, format!("invalid TOML: {}", e.message().trim()));
    }
    let doc = doc.into_inner();
    let mut sections: HashMap<&str, &Spanned<DeValue<'_>>> = HashMap::new();
    for (key, value) in doc.iter() {
        let name = key.get_ref().as_ref();
        match SECTIONS.iter().find(|s| **s == name) {
            Some(s) => {
                sections.insert(s, value);
            }
            None => {
                let help = nearest(name, SECTIONS)
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("the sections are: {}", SECTIONS.join(", ")));
                l.sink
                    .error_help(key.span(), format!("unknown section `{name}`"), help);
            }
        }
    }
    let array = |l: &mut Loader<'_>, name: &str| -> Vec<&Spanned<DeValue<'_>>> {
        let Some(v) = sections.get(name).copied() else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(items) => items.iter().collect(),
            other => {
                l.sink.error_help(
                    v.span(),
                    format!(
                        "`{name}` must be an array of tables, found a {}",
                        other.type_str()
                    ),
                    format!("write each entry as [[{name}]]"),
                );
                Vec::new()
            }
        }
    };

    let raw_node: RawNode = l.section(&sections, "node");
    let raw_listen: RawListen = l.section(&sections, "listen");
    let raw_tls: RawTls = l.section(&sections, "tls");
    let raw_limits: RawLimits = l.section(&sections, "limits");
    let raw_caps: RawLimits = l.section(&sections, "caps");
    let raw_registry: RawRegistry = l.section(&sections, "registry");
    let raw_tenants: Vec<RawTenant> = array(&mut l, "tenant")
        .into_iter()
        .filter_map(|v| l.read(v, "tenant"))
        .collect();
    let raw_apps: Vec<RawApp> = array(&mut l, "app")
        .into_iter()
        .filter_map(|v| l.read(v, "app"))
        .collect();
    let raw_backends: Vec<RawBackend> = array(&mut l, "backend")
        .into_iter()
        .filter_map(|v| l.read(v, "backend"))
        .collect();
    let raw_routes: Vec<(Range<usize>, RawRoute)> = array(&mut l, "route")
        .into_iter()
        .filter_map(|v| l.read(v, "route").map(|r| (v.span(), r)))
        .collect();

    // [node]
    let node = Node {
        name: raw_node
            .name
            .map_or_else(|| "outpost".to_string(), |n| n.into_inner()),
        data_dir: raw_node
            .data_dir
            .map_or_else(|| l.path("outpost-data"), |d| l.path(d.get_ref())),
    };

    // [listen]
    let https = l.addr(&raw_listen.https, "https");
    let http3 = l.addr(&raw_listen.http3, "http3");
    let http = l.addr(&raw_listen.http, "http");
    let admin = match l.addr(&raw_listen.admin, "admin") {
        Some(a) => Some(a),
        None if raw_listen.admin.is_none() => {
            Some((SocketAddr::from(([127, 0, 0, 1], 9901)), 0..0))
        }
        None => None,
    };
    let tcp: Vec<(&str, SocketAddr, Range<usize>)> =
        [("https", &https), ("http", &http), ("admin", &admin)]
            .into_iter()
            .filter_map(|(n, a)| a.as_ref().map(|(a, s)| (n, *a, s.clone())))
            .collect();
    for (i, (name_a, a, _)) in tcp.iter().enumerate() {
        for (name_b, b, span_b) in &tcp[i + 1..] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            // Port 0 asks the system for a free port: never a clash.
            if a.port() == b.port() && a.port() != 0 && overlap {
                let span = if span_b.is_empty() {
                    tcp[i].2.clone()
                } else {
                    span_b.clone()
                };
                l.sink.error_help(
                    span,
                    format!("listeners `{name_a}` and `{name_b}` both use TCP port {}", a.port()),
                    "give each TCP listener its own port (http3 is UDP and may share the https port)",
                );
            }
        }
    }

    let positive = |l: &mut Loader<'_>,
                    v: &Option<S<toml::Value>>,
                    field: &str,
                    default: u64,
                    max: u64|
     -> u64 {
        match l.count(v, field) {
            Some(0) | None if v.is_some() => {
                if let Some(v) = v.as_ref().filter(|v| v.get_ref().as_integer() == Some(0)) {
                    l.sink
                        .error(v.span(), format!("{field} must be at least 1"));
                }
                default
            }
            Some(n) if n > max => {
                if let Some(v) = v {
                    l.sink
                        .error(v.span(), format!("{field} {n} is above {max}"));
                }
                default
            }
            Some(n) => n,
            None => default,
        }
    };
    let max_connections = positive(
        &mut l,
        &raw_listen.max_connections,
        "max_connections",
        10_000,
        10_000_000,
    ) as u32;
    let max_streams = positive(&mut l, &raw_listen.max_streams, "max_streams", 100, 100_000) as u32;
    let nonzero = |l: &mut Loader<'_>,
                   v: &Option<S<toml::Value>>,
                   field: &str,
                   default: Duration|
     -> Duration {
        match l.duration(v, field) {
            Some(d) if d.is_zero() => {
                if let Some(v) = v {
                    l.sink
                        .error(v.span(), format!("{field} must be longer than 0"));
                }
                default
            }
            Some(d) => d,
            None => default,
        }
    };
    let header_timeout = nonzero(
        &mut l,
        &raw_listen.header_timeout,
        "header_timeout",
        Duration::from_secs(10),
    );
    let idle_timeout = nonzero(
        &mut l,
        &raw_listen.idle_timeout,
        "idle_timeout",
        Duration::from_secs(60),
    );
    let max_header_bytes = match l.size(&raw_listen.max_header_bytes, "max_header_bytes") {
        Some(n) if !(4096..=(1 << 20)).contains(&n) => {
            if let Some(v) = &raw_listen.max_header_bytes {
                l.sink.error_help(
                    v.span(),
                    format!("max_header_bytes {} is out of range", fmt_size(n)),
                    "use a size from 4KiB to 1MiB",
                );
            }
            64 << 10
        }
        Some(n) => n,
        None => 64 << 10,
    };

    // [tls]
    let tls = Tls {
        cert: raw_tls.cert.as_ref().map(|c| l.path(c.get_ref())),
        key: raw_tls.key.as_ref().map(|k| l.path(k.get_ref())),
        self_signed: raw_tls.self_signed.as_ref().is_some_and(|s| *s.get_ref()),
    };
    match (&raw_tls.cert, &raw_tls.key) {
        (Some(c), None) => l.sink.error_help(
            c.span(),
            "[tls] has a cert but no key",
            "add key = \"PATH\" (PEM private key)",
        ),
        (None, Some(k)) => l.sink.error_help(
            k.span(),
            "[tls] has a key but no cert",
            "add cert = \"PATH\" (PEM certificate chain)",
        ),
        _ => {}
    }
    let needs_tls = https.is_some() || http3.is_some();
    if needs_tls && tls.cert.is_none() && !tls.self_signed {
        let span = https
            .as_ref()
            .or(http3.as_ref())
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        l.sink.error_help(
            span,
            "an https/http3 listener needs a certificate, and [tls] has none",
            "set cert and key in [tls], or self_signed = true for a generated localhost certificate (development only)",
        );
    }

    // [limits] and [caps]
    let caps = l.limits(&raw_caps, &Limits::default_caps(), None, "[caps]");
    let limits = l.limits(&raw_limits, &Limits::defaults(), Some(&caps), "[limits]");

    // [registry]
    let registry = Registry {
        poll: l
            .duration(&raw_registry.poll, "poll")
            .unwrap_or(Duration::from_secs(5)),
        credentials_file: raw_registry
            .credentials_file
            .as_ref()
            .map(|p| l.path(p.get_ref())),
        credentials_env: raw_registry.credentials_env.map(|e| e.into_inner()),
        insecure: raw_registry
            .insecure
            .into_iter()
            .map(|h| h.into_inner())
            .collect(),
        max_module: l
            .size(&raw_registry.max_module, "max_module")
            .unwrap_or(64 << 20),
        notify_token_file: raw_registry
            .notify_token_file
            .as_ref()
            .map(|p| l.path(p.get_ref())),
    };

    // [[tenant]]
    let mut tenants = Vec::new();
    let mut tenant_seen: HashMap<String, Range<usize>> = HashMap::new();
    for raw in &raw_tenants {
        let Some(name) = l.unique_name(&raw.name, "tenant", &mut tenant_seen) else {
            continue;
        };
        let keys = raw
            .keys
            .iter()
            .filter_map(|k| match PublicKey::parse(k.get_ref()) {
                Ok(key) => Some(key),
                Err(e) => {
                    l.sink.error(k.span(), format!("tenant `{name}` key: {e}"));
                    None
                }
            })
            .collect();
        let what = format!("tenant `{name}`");
        let tenant_limits = l.limits(&raw.limits, &limits, Some(&caps), &what);
        let certs = raw
            .cert
            .iter()
            .map(|c| CertPair {
                cert: l.path(c.cert.get_ref()),
                key: l.path(c.key.get_ref()),
            })
            .collect();
        tenants.push(Tenant {
            name,
            keys,
            allow_unsigned: raw.allow_unsigned,
            limits: tenant_limits,
            certs,
        });
    }
    let tenant_names: Vec<&str> = tenant_seen.keys().map(String::as_str).collect();

    // [[backend]]
    let mut backends = Vec::new();
    let mut backend_seen: HashMap<String, Range<usize>> = HashMap::new();
    for raw in &raw_backends {
        let Some(name) = l.unique_name(&raw.name, "backend", &mut backend_seen) else {
            continue;
        };
        let tenant_name = raw.tenant.get_ref();
        if !tenant_seen.contains_key(tenant_name.as_str()) {
            let help = nearest(tenant_name, &tenant_names)
                .map(|t| format!("did you mean `{t}`?"))
                .unwrap_or_else(|| "add a [[tenant]] with this name, or fix the name".into());
            l.sink.error_help(
                raw.tenant.span(),
                format!("backend `{name}` belongs to unknown tenant `{tenant_name}`"),
                help,
            );
        }
        let url = match OriginUrl::parse(raw.url.get_ref()) {
            Ok(u) => Some(u),
            Err(e) => {
                l.sink
                    .error(raw.url.span(), format!("backend `{name}` url: {e}"));
                None
            }
        };
        let host_header = raw.host_header.as_ref().and_then(|h| {
            parse_host_header(h.get_ref())
                .map_err(|e| {
                    l.sink
                        .error(h.span(), format!("backend `{name}` host_header: {e}"));
                })
                .ok()
        });
        if let (Some(ca), Some(u)) = (&raw.ca_file, &url) {
            if u.scheme == crate::types::Scheme::Http {
                l.sink.error_help(
                    ca.span(),
                    format!("backend `{name}` has a ca_file but its url is http://"),
                    "use an https:// url, or remove ca_file",
                );
            }
        }
        let timeout = |l: &mut Loader<'_>,
                       v: &Option<S<toml::Value>>,
                       field: &str,
                       default: Duration| {
            match l.duration(v, field) {
                Some(d) if d.is_zero() || d > Duration::from_secs(300) => {
                    if let Some(v) = v {
                        l.sink.error_help(
                            v.span(),
                            format!(
                                "backend `{name}` {field} must be longer than 0 and at most 300s"
                            ),
                            format!("use a duration such as {field} = \"5s\""),
                        );
                    }
                    default
                }
                Some(d) => d,
                None => default,
            }
        };
        let connect_timeout = timeout(
            &mut l,
            &raw.connect_timeout,
            "connect_timeout",
            Duration::from_secs(5),
        );
        let first_byte_timeout = timeout(
            &mut l,
            &raw.first_byte_timeout,
            "first_byte_timeout",
            Duration::from_secs(15),
        );
        let max_connections = match l.count(&raw.max_connections, "max_connections") {
            Some(n) if n == 0 || n > 100_000 => {
                if let Some(v) = &raw.max_connections {
                    l.sink.error_help(
                        v.span(),
                        format!("backend `{name}` max_connections {n} is out of range"),
                        "allow from 1 to 100000 connections",
                    );
                }
                64
            }
            Some(n) => n as u32,
            None => 64,
        };
        let (Some(url), Ok(tenant)) = (url, Name::parse(tenant_name)) else {
            continue;
        };
        backends.push(Backend {
            name,
            tenant,
            url,
            host_header,
            ca_file: raw.ca_file.as_ref().map(|p| l.path(p.get_ref())),
            connect_timeout,
            first_byte_timeout,
            max_connections,
            allow_private: raw.allow_private,
        });
    }
    let backend_names: Vec<&str> = backend_seen.keys().map(String::as_str).collect();

    // [[app]]
    let mut apps = Vec::new();
    let mut app_seen: HashMap<String, Range<usize>> = HashMap::new();
    for raw in &raw_apps {
        let Some(name) = l.unique_name(&raw.name, "app", &mut app_seen) else {
            continue;
        };
        let tenant_name = raw.tenant.get_ref();
        let tenant = tenants.iter().find(|t| t.name.as_str() == tenant_name);
        if tenant.is_none() {
            let help = nearest(tenant_name, &tenant_names)
                .map(|t| format!("did you mean `{t}`?"))
                .unwrap_or_else(|| "add a [[tenant]] with this name, or fix the name".into());
            l.sink.error_help(
                raw.tenant.span(),
                format!("app `{name}` belongs to unknown tenant `{tenant_name}`"),
                help,
            );
        }
        let source = match Source::parse(raw.source.get_ref()) {
            Ok(s) => s,
            Err(e) => {
                l.sink
                    .error(raw.source.span(), format!("app `{name}` source: {e}"));
                continue;
            }
        };
        let source = match source {
            Source::File(p) => Source::File(l.path(&p.to_string_lossy())),
            other => other,
        };
        if !source.is_signed() && tenant.is_some_and(|t| !t.allow_unsigned) {
            l.sink.error_help(
                raw.source.span(),
                format!("app `{name}` runs an unsigned file: module, but tenant `{tenant_name}` does not allow unsigned apps"),
                format!("set allow_unsigned = true in tenant `{tenant_name}` (development and single-node use), or publish a signed bundle"),
            );
        }
        let host = match &raw.host {
            None => GuestHost::Auto,
            Some(h) => GuestHost::parse(h.get_ref()).unwrap_or_else(|e| {
                l.sink.error(h.span(), format!("app `{name}` host: {e}"));
                GuestHost::Auto
            }),
        };
        let mut app_backends: Vec<Name> = Vec::new();
        for b in &raw.backends {
            let wanted = b.get_ref();
            match backends.iter().find(|x| x.name.as_str() == wanted) {
                Some(found) if found.tenant.as_str() != tenant_name => l.sink.error_help(
                    b.span(),
                    format!(
                        "app `{name}` of tenant `{tenant_name}` names backend `{wanted}`, which belongs to tenant `{}`",
                        found.tenant
                    ),
                    "an app may use only its own tenant's backends",
                ),
                Some(found) if app_backends.contains(&found.name) => {
                    l.sink.error(
                        b.span(),
                        format!("app `{name}` lists backend `{wanted}` twice"),
                    );
                }
                Some(found) => app_backends.push(found.name.clone()),
                None if backend_seen.contains_key(wanted.as_str()) => {}
                None => {
                    let help = nearest(wanted, &backend_names)
                        .map(|t| format!("did you mean `{t}`?"))
                        .unwrap_or_else(|| {
                            "add a [[backend]] with this name, or fix the name".into()
                        });
                    l.sink.error_help(
                        b.span(),
                        format!("app `{name}` names unknown backend `{wanted}`"),
                        help,
                    );
                }
            }
        }
        let Ok(tenant) = Name::parse(tenant_name) else {
            continue;
        };
        apps.push(App {
            name,
            tenant,
            source,
            env: raw.env.clone(),
            args: raw.args.clone(),
            host,
            backends: app_backends,
        });
    }
    let app_names: Vec<&str> = app_seen.keys().map(String::as_str).collect();

    // [[route]]
    let mut routes = Vec::new();
    let mut route_seen: HashMap<(HostPattern, PathPrefix), Range<usize>> = HashMap::new();
    for (entry_span, raw) in &raw_routes {
        let host = HostPattern::parse(raw.host.get_ref()).map_err(|e| {
            l.sink.error(raw.host.span(), format!("route host: {e}"));
        });
        let path = match &raw.path {
            None => PathPrefix::parse("/").map_err(|_| ()),
            Some(p) => PathPrefix::parse(p.get_ref()).map_err(|e| {
                l.sink.error(p.span(), format!("route path: {e}"));
            }),
        };
        let app = raw.app.get_ref();
        if !app_seen.contains_key(app.as_str()) {
            let help = nearest(app, &app_names)
                .map(|a| format!("did you mean `{a}`?"))
                .unwrap_or_else(|| "add an [[app]] with this name, or fix the name".into());
            l.sink.error_help(
                raw.app.span(),
                format!("route to unknown app `{app}`"),
                help,
            );
            continue;
        }
        let (Ok(host), Ok(path)) = (host, path) else {
            continue;
        };
        let key = (host.clone(), path.clone());
        if let Some(first) = route_seen.get(&key) {
            let first = l.sink.pos(first);
            l.sink
                .error(
                    entry_span.clone(),
                    format!("a second route for host `{host}` and path `{path}`"),
                )
                .notes
                .push((first, "the first route for it is here".into()));
            continue;
        }
        route_seen.insert(key, entry_span.clone());
        let Ok(app) = Name::parse(app) else { continue };
        routes.push(Route { host, path, app });
    }

    l.sink.finish()?;
    Ok(Config {
        node,
        listen: Listen {
            https: https.map(|(a, _)| a),
            http3: http3.map(|(a, _)| a),
            http: http.map(|(a, _)| a),
            admin: admin.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)), |(a, _)| a),
            max_connections,
            max_streams,
            header_timeout,
            idle_timeout,
            max_header_bytes,
        },
        tls,
        limits,
        caps,
        registry,
        tenants,
        apps,
        routes,
        backends,
    })
}

/// Read and check a configuration file.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![crate::diag::Diagnostic {
            file: file.clone(),
            at: crate::diag::Position { line: 1, column: 1 },
            message: format!("cannot read the file: {e}"),
            help: None,
            notes: Vec::new(),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base)
}
