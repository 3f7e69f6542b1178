//! Bringing one bundle version into the node's cache and proving it: `pull` copies what is
//! missing from a store into the cache (signature checked before any large blob is fetched),
//! `verify_cached` checks the whole version from the cache alone, which is also how a node
//! restarted without its registry proves what it serves.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use super::format::{
    check_bundle_manifest, check_signature_manifest, parse_config, signature_tag, BundleConfig,
    Caps, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
};
use super::layout::Layout;
use super::sign::verify_document;
use super::store::Store;
use super::Rejection;

/// A version proven from the cache: signed by one of the tenant's keys, every digest checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub digest: String,
    pub manifest_size: u64,
    pub signature: String,
    pub config: BundleConfig,
    pub module: Vec<u8>,
    /// The assets layer (a tar), when the bundle has one.
    pub assets: Option<bytes::Bytes>,
}

/// Time spent in each step of a pull, for the swap's log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct PullTimes {
    pub pull: Duration,
    pub verify: Duration,
}

async fn manifest_into_cache(
    store: &Store,
    cache: &Layout,
    digest: &str,
) -> Result<Vec<u8>, Rejection> {
    if let Ok(bytes) = cache.read_blob(digest, None, MAX_MANIFEST_BYTES, true) {
        return Ok(bytes);
    }
    let bytes = store.manifest(digest).await?;
    cache.write_blob(digest, &bytes)?;
    Ok(bytes)
}

/// Copy version `digest` and its signature from `store` into `cache`. Returns the signature
/// artifact's manifest digest. Refuses (before fetching the module) a manifest that breaks
/// the format or caps, and a version with no signature by one of `keys`.
pub async fn pull(
    store: &Store,
    cache: &Layout,
    digest: &str,
    keys: &[VerifyingKey],
    caps: Caps,
) -> Result<String, Rejection> {
    let manifest = manifest_into_cache(store, cache, digest).await?;
    let bundle = check_bundle_manifest(&manifest, caps)?;
    let sig_tag = signature_tag(digest);
    let sig_digest = store
        .resolve(&sig_tag)
        .await?
        .ok_or_else(|| Rejection::Unsigned(format!("{} tag {sig_tag}", store.describe())))?;
    let sig_manifest = manifest_into_cache(store, cache, &sig_digest).await?;
    let doc = check_signature_manifest(&sig_manifest)?;
    let doc_bytes = match cache.read_blob(&doc.digest, Some(doc.size), MAX_SIGNATURE_BYTES, true) {
        Ok(b) => b,
        Err(_) => {
            let b = store.blob(&doc).await?;
            cache.write_blob(&doc.digest, &b)?;
            b
        }
    };
    verify_document(&doc_bytes, digest, keys)?;
    for d in bundle.blobs() {
        if cache
            .read_blob(&d.digest, Some(d.size), d.size, true)
            .is_ok()
        {
            continue;
        }
        let bytes = store.blob(d).await?;
        cache.write_blob(&d.digest, &bytes)?;
    }
    Ok(sig_digest)
}

/// Prove version `digest` from the cache alone: manifest, signature artifact `signature`,
/// signature by one of `keys`, config and module blobs, each against its digest.
pub fn verify_cached(
    cache: &Layout,
    digest: &str,
    signature: &str,
    keys: &[VerifyingKey],
    caps: Caps,
) -> Result<Verified, Rejection> {
    let manifest = cache.read_blob(digest, None, MAX_MANIFEST_BYTES, true)?;
    let bundle = check_bundle_manifest(&manifest, caps)?;
    let sig_manifest = cache.read_blob(signature, None, MAX_MANIFEST_BYTES, true)?;
    let doc = check_signature_manifest(&sig_manifest)?;
    let doc_bytes = cache.read_blob(&doc.digest, Some(doc.size), MAX_SIGNATURE_BYTES, true)?;
    verify_document(&doc_bytes, digest, keys)?;
    let config_bytes = cache.read_blob(
        &bundle.config.digest,
        Some(bundle.config.size),
        bundle.config.size,
        true,
    )?;
    let config = parse_config(&config_bytes)?;
    let module = cache.read_blob(
        &bundle.wasm.digest,
        Some(bundle.wasm.size),
        bundle.wasm.size,
        true,
    )?;
    let assets = match &bundle.assets {
        Some(assets) => Some(bytes::Bytes::from(cache.read_blob(
            &assets.digest,
            Some(assets.size),
            assets.size,
            true,
        )?)),
        None => None,
    };
    Ok(Verified {
        digest: digest.to_string(),
        manifest_size: manifest.len() as u64,
        signature: signature.to_string(),
        config,
        module,
        assets,
    })
}

/// `pull` then `verify_cached`, timed.
pub async fn pull_and_verify(
    store: &Store,
    cache: &Layout,
    digest: &str,
    keys: &[VerifyingKey],
    caps: Caps,
) -> Result<(Verified, PullTimes), Rejection> {
    let started = Instant::now();
    let signature = pull(store, cache, digest, keys, caps).await?;
    let pulled = Instant::now();
    let verified = verify_cached(cache, digest, &signature, keys, caps)?;
    Ok((
        verified,
        PullTimes {
            pull: pulled - started,
            verify: pulled.elapsed(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::format::{build_bundle, build_signature_artifact};
    use super::super::sign::{generate, sign_document};
    use super::*;

    const CAPS: Caps = Caps {
        module: 1 << 20,
        assets: 1 << 20,
    };

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn layout_to_cache_then_offline_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Store::Layout(Layout::create(&dir.path().join("repo")).expect("layout"));
        let cache = Layout::create(&dir.path().join("cache")).expect("cache");
        let key = generate().expect("key");
        let other = generate().expect("key");
        let bundle = build_bundle(b"\0asm\x01\0\0\0".to_vec(), &BundleConfig::default(), None);
        rt().block_on(async {
            source.push(&bundle, "v1").await.expect("push");
            let digest = source.resolve("v1").await.expect("resolve").expect("tag");
            assert_eq!(digest, bundle.digest);
            let keys = [key.verifying_key()];
            let err = pull(&source, &cache, &digest, &keys, CAPS)
                .await
                .expect_err("unsigned");
            assert_eq!(err.reason(), "unsigned");
            let sig = build_signature_artifact(sign_document(&digest, &other));
            source
                .push(&sig, &signature_tag(&digest))
                .await
                .expect("push sig");
            let err = pull(&source, &cache, &digest, &keys, CAPS)
                .await
                .expect_err("other key");
            assert_eq!(err.reason(), "signature");
            let sig = build_signature_artifact(sign_document(&digest, &key));
            source
                .push(&sig, &signature_tag(&digest))
                .await
                .expect("push sig");
            let (v, _) = pull_and_verify(&source, &cache, &digest, &keys, CAPS)
                .await
                .expect("verified");
            assert_eq!(v.module, b"\0asm\x01\0\0\0");
            // Offline: the cache alone proves it, and only for the tenant's keys.
            let offline =
                verify_cached(&cache, &digest, &sig.digest, &keys, CAPS).expect("offline");
            assert_eq!(offline.digest, digest);
            assert!(
                verify_cached(&cache, &digest, &sig.digest, &[other.verifying_key()], CAPS)
                    .is_err()
            );
        });
    }
}
