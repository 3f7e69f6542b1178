//! Tenant signing: ed25519 keys (the secret key file `outpost keygen` writes, the public key in
//! the config's `ed25519:<base64>` form) and the signature document over a manifest digest.
//! Pure apart from reading and writing the key file.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::Rejection;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// First word of a secret key file, so a file of another kind is recognised as such.
const KEY_FILE_TAG: &str = "outpost-ed25519-secret-key-v1";

/// What is signed: a domain-separation prefix, then the manifest digest as text. The prefix
/// keeps an outpost signature from meaning anything to another protocol using the same key.
pub fn signed_message(manifest_digest: &str) -> Vec<u8> {
    format!("outpost-bundle-v1 {manifest_digest}").into_bytes()
}

/// `ed25519:<base64>`, the form tenants' keys take in the node config.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("ed25519:{}", B64.encode(key.as_bytes()))
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let b64 = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or_else(|| "expected ed25519:<base64 of 32 bytes>".to_string())?;
    let bytes = B64
        .decode(b64)
        .map_err(|e| format!("the key is not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "an ed25519 public key is 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// A fresh key from the OS's CSPRNG.
pub fn generate() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Write a secret key file readable by its owner only; an existing file is never replaced.
pub fn write_key_file(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{KEY_FILE_TAG} {}", B64.encode(key.to_bytes()))?;
    writeln!(file, "{}", public_key_text(&key.verifying_key()))?;
    file.sync_all()
}

pub fn read_key_file(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix(KEY_FILE_TAG))
        .ok_or_else(|| {
            format!(
                "{} is not an outpost secret key file (see `outpost keygen`)",
                path.display()
            )
        })?;
    let bytes = B64
        .decode(secret.trim())
        .map_err(|_| format!("{}: the secret key is not base64", path.display()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{}: the secret key is not 32 bytes", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The signature document stored in a bundle's signature artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignatureDocument {
    /// The manifest digest signed.
    pub manifest: String,
    pub signatures: Vec<KeySignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySignature {
    /// `ed25519:<base64>` of the public key.
    pub key: String,
    /// base64 of the 64-byte signature over `signed_message(manifest)`.
    pub signature: String,
}

pub fn sign_document(manifest_digest: &str, key: &SigningKey) -> Vec<u8> {
    let sig = key.sign(&signed_message(manifest_digest));
    let doc = SignatureDocument {
        manifest: manifest_digest.to_string(),
        signatures: vec![KeySignature {
            key: public_key_text(&key.verifying_key()),
            signature: B64.encode(sig.to_bytes()),
        }],
    };
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Check a signature document against the manifest digest and the keys allowed to sign it.
/// Returns the key that signed.
pub fn verify_document(
    document: &[u8],
    manifest_digest: &str,
    keys: &[VerifyingKey],
) -> Result<VerifyingKey, Rejection> {
    let doc: SignatureDocument = serde_json::from_slice(document)
        .map_err(|e| Rejection::Signature(format!("the signature document is not valid: {e}")))?;
    if doc.manifest != manifest_digest {
        return Err(Rejection::Signature(format!(
            "the signature is for {}, not for {manifest_digest}",
            doc.manifest
        )));
    }
    let message = signed_message(manifest_digest);
    let mut seen = Vec::new();
    for entry in &doc.signatures {
        let Ok(key) = parse_public_key(&entry.key) else {
            continue;
        };
        seen.push(entry.key.clone());
        if !keys.contains(&key) {
            continue;
        }
        let Ok(bytes) = B64.decode(&entry.signature) else {
            continue;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            continue;
        };
        if key.verify_strict(&message, &sig).is_ok() {
            return Ok(key);
        }
        return Err(Rejection::Signature(format!(
            "the signature by {} does not verify",
            entry.key
        )));
    }
    Err(Rejection::Signature(if seen.is_empty() {
        "the signature document holds no signature".into()
    } else {
        format!(
            "signed by {}, which is not a key of the app's tenant",
            seen.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_refusals() {
        let key = generate().expect("key");
        let other = generate().expect("key");
        let digest = super::super::format::digest_of(b"manifest");
        let doc = sign_document(&digest, &key);
        let tenant = [key.verifying_key()];
        assert_eq!(
            verify_document(&doc, &digest, &tenant).expect("verifies"),
            key.verifying_key()
        );
        let other_digest = super::super::format::digest_of(b"other");
        assert_eq!(
            verify_document(&doc, &other_digest, &tenant)
                .expect_err("wrong manifest")
                .reason(),
            "signature"
        );
        let by_other = sign_document(&digest, &other);
        let err = verify_document(&by_other, &digest, &tenant).expect_err("other key");
        assert!(
            err.to_string().contains("not a key of the app's tenant"),
            "{err}"
        );
        // A signature copied under the tenant's key name does not verify.
        let mut forged: SignatureDocument = serde_json::from_slice(&by_other).expect("json");
        forged.signatures[0].key = public_key_text(&key.verifying_key());
        let forged = serde_json::to_vec(&forged).expect("json");
        assert!(verify_document(&forged, &digest, &tenant).is_err());
        assert!(verify_document(b"{", &digest, &tenant).is_err());
    }

    #[test]
    fn key_file_round_trip_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let key = generate().expect("key");
        write_key_file(&path, &key).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_key_file(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
        assert!(write_key_file(&path, &generate().expect("key")).is_err());
        let text = public_key_text(&key.verifying_key());
        assert_eq!(parse_public_key(&text).expect("parse"), key.verifying_key());
    }
}
