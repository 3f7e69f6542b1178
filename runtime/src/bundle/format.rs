//! The bundle format as pure functions over bytes: building a bundle's blobs and manifest, and
//! checking a manifest someone else produced (media types, digests, size caps) before any blob
//! it names is fetched. No I/O here; docs/bundles.md is the written form of these rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Rejection;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.outpost.bundle.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.outpost.bundle.config.v1+json";
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
pub const ASSETS_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.outpost.signature.v1";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.outpost.signature.v1+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_BLOB: &[u8] = b"{}";

/// Largest manifest, config blob and signature blob accepted (they are small JSON documents).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 10;
pub const MAX_CONFIG_BYTES: u64 = 256 << 10;
pub const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether a string is a digest this implementation accepts: `sha256:` and 64 lowercase hex
/// digits. Anything else is refused before it is used as a file name or in a URL.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The tag a bundle's signature is stored under: `sha256-<hex>.sig` (cosign's naming).
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            annotations: None,
        }
    }
}

/// An OCI image manifest (the fields outpost reads and writes; others are ignored on read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The bundle's config blob: how the module is run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// Arguments after the app's name.
    #[serde(default)]
    pub args: Vec<String>,
    /// The app's environment (the node's config may override single variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the assets layer is mounted in the guest's filesystem, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets_mount: Option<String>,
}

/// A blob and its descriptor.
#[derive(Debug, Clone)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            descriptor: Descriptor::of(media_type, &bytes),
            bytes,
        }
    }
}

/// Everything a push writes for one bundle: blobs first, then the manifest.
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    pub blobs: Vec<Blob>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

fn manifest_bytes(m: &Manifest) -> Vec<u8> {
    // Serializing plain structs with string keys cannot fail.
    serde_json::to_vec(m).unwrap_or_default()
}

/// Build a bundle from a module, its run settings and an optional assets tar. Deterministic:
/// the same inputs give the same manifest digest.
pub fn build_bundle(
    module: Vec<u8>,
    config: &BundleConfig,
    assets_tar: Option<Vec<u8>>,
) -> BuiltBundle {
    let config_blob = Blob::new(
        CONFIG_MEDIA_TYPE,
        serde_json::to_vec(config).unwrap_or_default(),
    );
    let wasm = Blob::new(WASM_MEDIA_TYPE, module);
    let mut layers = vec![wasm.descriptor.clone()];
    let mut blobs = vec![config_blob.clone(), wasm];
    if let Some(tar) = assets_tar {
        let assets = Blob::new(ASSETS_MEDIA_TYPE, tar);
        layers.push(assets.descriptor.clone());
        blobs.push(assets);
    }
    let manifest = manifest_bytes(&Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        artifact_type: Some(BUNDLE_ARTIFACT_TYPE.into()),
        config: config_blob.descriptor,
        layers,
        annotations: None,
    });
    let digest = digest_of(&manifest);
    BuiltBundle {
        blobs,
        manifest,
        digest,
    }
}

/// The signature artifact for a signature document: an empty config and one layer.
pub fn build_signature_artifact(document: Vec<u8>) -> BuiltBundle {
    let empty = Blob::new(EMPTY_MEDIA_TYPE, EMPTY_BLOB.to_vec());
    let doc = Blob::new(SIGNATURE_MEDIA_TYPE, document);
    let manifest = manifest_bytes(&Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        artifact_type: Some(SIGNATURE_ARTIFACT_TYPE.into()),
        config: empty.descriptor.clone(),
        layers: vec![doc.descriptor.clone()],
        annotations: None,
    });
    let digest = digest_of(&manifest);
    BuiltBundle {
        blobs: vec![empty, doc],
        manifest,
        digest,
    }
}

/// Size caps applied to a bundle before its blobs are fetched.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub module: u64,
    pub assets: u64,
}

/// A checked bundle manifest: what to fetch and how big each part may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleManifest {
    pub config: Descriptor,
    pub wasm: Descriptor,
    pub assets: Option<Descriptor>,
}

impl BundleManifest {
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        [&self.config, &self.wasm]
            .into_iter()
            .chain(self.assets.as_ref())
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, Rejection> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Rejection::TooLarge(format!(
            "the manifest is {} bytes, over the {MAX_MANIFEST_BYTES}-byte cap",
            bytes.len()
        )));
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        Rejection::Manifest(format!(
            "the manifest is not an OCI image manifest in JSON: {e}"
        ))
    })?;
    if m.schema_version != 2 {
        return Err(Rejection::Manifest(format!(
            "schemaVersion is {}, expected 2",
            m.schema_version
        )));
    }
    if let Some(mt) = &m.media_type {
        if mt != MANIFEST_MEDIA_TYPE {
            return Err(Rejection::Manifest(format!(
                "mediaType is {mt:?}, expected {MANIFEST_MEDIA_TYPE:?}"
            )));
        }
    }
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !valid_digest(&d.digest) {
            return Err(Rejection::Manifest(format!(
                "{:?} is not a sha256 digest",
                d.digest
            )));
        }
    }
    Ok(m)
}

/// Check a bundle manifest's bytes: JSON, the bundle artifact type, exactly one Wasm layer, at
/// most one assets layer, nothing else, every size within its cap.
pub fn check_bundle_manifest(bytes: &[u8], caps: Caps) -> Result<BundleManifest, Rejection> {
    let m = parse_manifest(bytes)?;
    if m.artifact_type.as_deref() != Some(BUNDLE_ARTIFACT_TYPE) {
        return Err(Rejection::Manifest(format!(
            "artifactType is {:?}, expected {BUNDLE_ARTIFACT_TYPE:?} (is this an outpost bundle?)",
            m.artifact_type.as_deref().unwrap_or("")
        )));
    }
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(Rejection::Manifest(format!(
            "the config's mediaType is {:?}, expected {CONFIG_MEDIA_TYPE:?}",
            m.config.media_type
        )));
    }
    if m.config.size > MAX_CONFIG_BYTES {
        return Err(Rejection::TooLarge(format!(
            "the config blob is {} bytes, over the {MAX_CONFIG_BYTES}-byte cap",
            m.config.size
        )));
    }
    let mut wasm = None;
    let mut assets = None;
    for layer in &m.layers {
        let (slot, cap, what) = match layer.media_type.as_str() {
            WASM_MEDIA_TYPE => (&mut wasm, caps.module, "Wasm"),
            ASSETS_MEDIA_TYPE => (&mut assets, caps.assets, "assets"),
            other => {
                return Err(Rejection::Layer(format!(
                    "a layer has mediaType {other:?}; a bundle holds one {WASM_MEDIA_TYPE:?} layer and at most one {ASSETS_MEDIA_TYPE:?} layer"
                )))
            }
        };
        if slot.is_some() {
            return Err(Rejection::Layer(format!("more than one {what} layer")));
        }
        if layer.size > cap {
            return Err(Rejection::TooLarge(format!(
                "the {what} layer is {} bytes, over the {cap}-byte cap",
                layer.size
            )));
        }
        *slot = Some(layer.clone());
    }
    let wasm = wasm.ok_or_else(|| Rejection::Layer(format!("no {WASM_MEDIA_TYPE:?} layer")))?;
    Ok(BundleManifest {
        config: m.config,
        wasm,
        assets,
    })
}

/// Check a signature artifact's manifest and return the descriptor of its signature document.
pub fn check_signature_manifest(bytes: &[u8]) -> Result<Descriptor, Rejection> {
    let m = parse_manifest(bytes)
        .map_err(|e| Rejection::Signature(format!("the signature artifact: {e}")))?;
    if m.artifact_type.as_deref() != Some(SIGNATURE_ARTIFACT_TYPE) {
        return Err(Rejection::Signature(format!(
            "the signature artifact's artifactType is {:?}, expected {SIGNATURE_ARTIFACT_TYPE:?}",
            m.artifact_type.as_deref().unwrap_or("")
        )));
    }
    let doc = m
        .layers
        .iter()
        .find(|l| l.media_type == SIGNATURE_MEDIA_TYPE)
        .ok_or_else(|| {
            Rejection::Signature("the signature artifact holds no signature document".into())
        })?;
    if doc.size > MAX_SIGNATURE_BYTES {
        return Err(Rejection::TooLarge(format!(
            "the signature document is {} bytes, over the {MAX_SIGNATURE_BYTES}-byte cap",
            doc.size
        )));
    }
    Ok(doc.clone())
}

/// Parse a config blob (already digest-checked).
pub fn parse_config(bytes: &[u8]) -> Result<BundleConfig, Rejection> {
    serde_json::from_slice(bytes)
        .map_err(|e| Rejection::Manifest(format!("the bundle config is not valid: {e}")))
}

/// Refuse bytes whose digest is not the one their descriptor names.
pub fn check_blob(descriptor: &Descriptor, bytes: &[u8]) -> Result<(), Rejection> {
    let actual = digest_of(bytes);
    if bytes.len() as u64 != descriptor.size || actual != descriptor.digest {
        return Err(Rejection::Digest(format!(
            "blob {} ({} bytes) arrived as {actual} ({} bytes)",
            descriptor.digest,
            descriptor.size,
            bytes.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        module: 1 << 20,
        assets: 1 << 20,
    };

    fn module() -> Vec<u8> {
        b"\0asm\x01\0\0\0".to_vec()
    }

    #[test]
    fn a_built_bundle_checks_and_is_deterministic() {
        let config = BundleConfig {
            args: vec!["-v".into()],
            env: [("K".to_string(), "V".to_string())].into(),
            assets_mount: None,
        };
        let a = build_bundle(module(), &config, None);
        let b = build_bundle(module(), &config, None);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest, digest_of(&a.manifest));
        let checked = check_bundle_manifest(&a.manifest, CAPS).expect("valid");
        assert_eq!(checked.wasm.digest, digest_of(&module()));
        assert!(checked.assets.is_none());
        for blob in &a.blobs {
            check_blob(&blob.descriptor, &blob.bytes).expect("blob digest");
        }
        assert_eq!(parse_config(&a.blobs[0].bytes).expect("config"), config);
        let with_assets = build_bundle(module(), &config, Some(vec![0; 1024]));
        assert!(check_bundle_manifest(&with_assets.manifest, CAPS)
            .expect("valid")
            .assets
            .is_some());
    }

    #[test]
    fn refusals_name_their_reason() {
        let reason = |bytes: &[u8]| {
            check_bundle_manifest(bytes, CAPS)
                .expect_err("refused")
                .reason()
        };
        assert_eq!(reason(b"not json"), "manifest");
        let good = build_bundle(module(), &BundleConfig::default(), None);
        let mut m: Manifest = serde_json::from_slice(&good.manifest).expect("parse");
        let edit = |f: &dyn Fn(&mut Manifest)| {
            let mut m = m.clone();
            f(&mut m);
            serde_json::to_vec(&m).expect("json")
        };
        assert_eq!(reason(&edit(&|m| m.artifact_type = None)), "manifest");
        assert_eq!(
            reason(&edit(&|m| m.layers[0].media_type = "text/plain".into())),
            "layer"
        );
        assert_eq!(
            reason(&edit(&|m| m.layers[0].size = (1 << 20) + 1)),
            "too_large"
        );
        assert_eq!(reason(&edit(&|m| m.layers.clear())), "layer");
        assert_eq!(
            reason(&edit(
                &|m| m.layers[0].digest = "sha256:../../etc/passwd".into()
            )),
            "manifest"
        );
        m.layers.push(m.layers[0].clone());
        assert_eq!(reason(&serde_json::to_vec(&m).expect("json")), "layer");
        let d = Descriptor::of(WASM_MEDIA_TYPE, b"abc");
        assert_eq!(
            check_blob(&d, b"abd").expect_err("mismatch").reason(),
            "digest"
        );
    }

    #[test]
    fn signature_tag_follows_cosign() {
        let d = digest_of(b"x");
        let tag = signature_tag(&d);
        assert!(tag.starts_with("sha256-") && tag.ends_with(".sig"));
        assert_eq!(tag.len(), "sha256-".len() + 64 + 4);
    }
}
