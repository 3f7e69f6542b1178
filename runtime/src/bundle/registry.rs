//! Talking to OCI distribution registries through oci-client: the client (plain HTTP only for
//! registries the operator lists as insecure), registry credentials from a docker
//! `config.json` or an environment variable (never a flag or the node config), and the
//! mapping of oci-client's errors onto `Rejection`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use super::Rejection;

/// A client for these insecure (plain HTTP) registries; every other one is reached over HTTPS.
pub fn client(insecure: &[String]) -> Result<Client, String> {
    // reqwest's rustls without a provider panics unless one is installed process-wide; a
    // second install (already installed) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        connect_timeout: Some(Duration::from_secs(5)),
        read_timeout: Some(Duration::from_secs(30)),
        user_agent: concat!("outpost/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    // Client::new would fall back to a default client on error; try_from says why.
    Client::try_from(config).map_err(|e| format!("cannot create the registry client: {e}"))
}

/// Registry credentials by host, as a docker `config.json` holds them.
#[derive(Default, Clone)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
    any: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, only where they apply.
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("any", &self.any.is_some())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `https://host:port/v1/` and `host:port` name the same registry.
fn host_key(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_ascii_lowercase()
}

impl Credentials {
    /// A docker `config.json` document (`auths.<host>.auth` = base64 of `user:password`, or
    /// `username` and `password`).
    pub fn from_docker_config(bytes: &[u8]) -> Result<Self, String> {
        let config: DockerConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("not a docker config.json: {e}"))?;
        let mut by_host = HashMap::new();
        for (host, auth) in config.auths {
            let pair = match (auth.auth, auth.username, auth.password) {
                (Some(b64), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|_| format!("auths.{host}.auth is not base64"))?;
                    let text = String::from_utf8(raw)
                        .map_err(|_| format!("auths.{host}.auth is not UTF-8"))?;
                    let (u, p) = text
                        .split_once(':')
                        .ok_or_else(|| format!("auths.{host}.auth is not user:password"))?;
                    (u.to_string(), p.to_string())
                }
                (None, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            by_host.insert(host_key(&host), pair);
        }
        Ok(Self { by_host, any: None })
    }

    /// An environment variable's value: a docker config.json document, or `user:password`
    /// for every registry.
    pub fn from_env_value(value: &str) -> Result<Self, String> {
        if value.trim_start().starts_with('{') {
            return Self::from_docker_config(value.as_bytes());
        }
        let (u, p) = value
            .split_once(':')
            .ok_or_else(|| "expected USER:PASSWORD or a docker config.json document".to_string())?;
        Ok(Self {
            by_host: HashMap::new(),
            any: Some((u.to_string(), p.to_string())),
        })
    }

    /// From a file and/or an environment variable (the variable wins for hosts both name).
    pub fn load(file: Option<&Path>, env_var: Option<&str>) -> Result<Self, String> {
        let mut creds = match file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Self::from_docker_config(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Self::default(),
        };
        if let Some(var) = env_var {
            if let Ok(value) = std::env::var(var) {
                let from_env = Self::from_env_value(&value).map_err(|e| format!("${var}: {e}"))?;
                creds.by_host.extend(from_env.by_host);
                creds.any = from_env.any.or(creds.any);
            }
        }
        Ok(creds)
    }

    pub fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self.by_host.get(&host_key(registry)).or(self.any.as_ref()) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// What an oci-client error means for the version being fetched.
pub fn rejection(e: OciDistributionError, what: &str) -> Rejection {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            Rejection::NotFound(what.to_string())
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            Rejection::NotFound(what.to_string())
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|err| {
                matches!(
                    err.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            Rejection::NotFound(what.to_string())
        }
        OciDistributionError::DigestError(e) => Rejection::Digest(format!("{what}: {e}")),
        other => Rejection::Unreachable(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_and_env_credentials() {
        let json = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other":{"username":"a","password":"b"}}}"#;
        let c = Credentials::from_docker_config(json).expect("parse");
        assert!(
            matches!(c.auth_for("reg.example:5000"), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(matches!(c.auth_for("other"), RegistryAuth::Basic(u, _) if u == "a"));
        assert!(matches!(c.auth_for("nowhere"), RegistryAuth::Anonymous));
        let e = Credentials::from_env_value("x:y").expect("parse");
        assert!(matches!(e.auth_for("any"), RegistryAuth::Basic(u, _) if u == "x"));
        assert!(Credentials::from_env_value("nocolon").is_err());
        assert!(!format!("{c:?}").contains("pass"));
    }
}
