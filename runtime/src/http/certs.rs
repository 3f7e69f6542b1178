//! Certificates: the node's default (from files, or generated for localhost in development),
//! tenants' certificates chosen by SNI for the hosts their routes serve, and a resolver that
//! TLS and QUIC share and that reload swaps atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use edge_config::{Config, HostPattern};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};

/// Read a PEM certificate chain and private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = {
        let pem =
            std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?
    };
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key_der: PrivateKeyDer<'static> = {
        let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            pem::Error::NoItemsFound => format!("{} holds no private key", key.display()),
            e => format!("{}: not a PEM private key: {e}", key.display()),
        })?
    };
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(Arc::new(certified))
}

/// A self-signed certificate for localhost (development only), with its PEM written to
/// `dir` so clients can trust it (`curl --cacert DIR/localhost.pem`).
pub fn self_signed(dir: &Path) -> Result<(Arc<CertifiedKey>, PathBuf), String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let pem_path = dir.join("localhost.pem");
    let tmp = dir.join(".localhost.pem.tmp");
    std::fs::write(&tmp, generated.cert.pem())
        .and_then(|_| std::fs::rename(&tmp, &pem_path))
        .map_err(|e| format!("cannot write {}: {e}", pem_path.display()))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| e.to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok((
        Arc::new(CertifiedKey::new(
            vec![generated.cert.der().clone()],
            signer,
        )),
        pem_path,
    ))
}

fn valid_for(key: &CertifiedKey, name: &str) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let (Ok(cert), Ok(server_name)) = (
        webpki::EndEntityCert::try_from(leaf),
        ServerName::try_from(name.to_string()),
    ) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// Which certificate answers which SNI name.
pub struct Certs {
    pub default: Arc<CertifiedKey>,
    by_host: Vec<(HostPattern, Arc<CertifiedKey>)>,
}

impl Certs {
    /// Each route's host is served with the first certificate of the route's tenant that is
    /// valid for it; other names get the node default.
    pub fn build(config: &Config, default: Arc<CertifiedKey>) -> Self {
        let mut by_host: Vec<(HostPattern, Arc<CertifiedKey>)> = Vec::new();
        for tenant in &config.tenants {
            let keys: Vec<Arc<CertifiedKey>> = tenant
                .certs
                .iter()
                .filter_map(|pair| match load_pair(&pair.cert, &pair.key) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::error!(tenant = %tenant.name, error = %e, "tenant certificate not loaded");
                        None
                    }
                })
                .collect();
            if keys.is_empty() {
                continue;
            }
            let hosts = config
                .routes
                .iter()
                .filter(|r| {
                    config
                        .apps
                        .iter()
                        .any(|a| a.name == r.app && a.tenant == tenant.name)
                })
                .map(|r| r.host.clone());
            for host in hosts {
                let probe = match &host {
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Wildcard(suffix) => format!("probe.{suffix}"),
                };
                match keys.iter().find(|k| valid_for(k, &probe)) {
                    Some(k) if !by_host.iter().any(|(h, _)| *h == host) => {
                        by_host.push((host, k.clone()))
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(tenant = %tenant.name, %host, "no tenant certificate covers this host; the node default answers")
                    }
                }
            }
        }
        Self { default, by_host }
    }

    pub fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.to_ascii_lowercase()) else {
            return self.default.clone();
        };
        self.by_host
            .iter()
            .find(|(h, _)| matches!(h, HostPattern::Exact(e) if *e == name))
            .or_else(|| {
                self.by_host
                    .iter()
                    .filter(|(h, _)| matches!(h, HostPattern::Wildcard(_)) && h.matches(&name))
                    .max_by_key(|(h, _)| h.to_string().len())
            })
            .map_or_else(|| self.default.clone(), |(_, k)| k.clone())
    }
}

/// The SNI resolver installed in the TLS and QUIC server configs.
pub struct SniResolver {
    pub certs: ArcSwap<Certs>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certs.load().for_name(hello.server_name()))
    }
}

/// rustls server configs for TCP (ALPN h2, http/1.1) and QUIC (h3), sharing one resolver and
/// session-resumption state.
pub fn server_configs(
    resolver: Arc<SniResolver>,
) -> Result<(Arc<rustls::ServerConfig>, rustls::ServerConfig), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tcp = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tcp.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tcp.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    tcp.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    let mut quic = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    quic.alpn_protocols = vec![b"h3".to_vec()];
    quic.max_early_data_size = u32::MAX;
    Ok((Arc::new(tcp), quic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_pem_pairs_and_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, generated.cert.pem()).expect("write");
        std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write");
        let pair = load_pair(&cert, &key).expect("a valid pair loads");
        assert_eq!(pair.cert.len(), 1);

        // A key file that holds only a certificate: no private key in it.
        let err = load_pair(&cert, &cert).expect_err("no key");
        assert!(err.ends_with("holds no private key"), "{err}");
        // A certificate file that holds only a key: no certificate in it.
        let err = load_pair(&key, &key).expect_err("no cert");
        assert!(err.ends_with("holds no certificate"), "{err}");
        // A PEM section with a body that is not base64.
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = load_pair(&broken, &key).expect_err("bad pem");
        assert!(err.contains("not a PEM certificate chain"), "{err}");
    }
}
