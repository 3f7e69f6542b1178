//! Garbage collection of the node's cache layout: blobs no recorded app version reaches
//! (manifest, config, layers, signature artifact) and older than a grace period are removed;
//! index entries of apps no longer configured go first. Recently written blobs are kept so a
//! pull in progress never loses what it just fetched.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::format::{Manifest, MAX_MANIFEST_BYTES};
use super::layout::{Layout, REF_NAME};

/// What a collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
}

fn reach(cache: &Layout, digest: &str, keep: &mut HashSet<String>) {
    keep.insert(digest.to_string());
    let Ok(bytes) = cache.read_blob(digest, None, MAX_MANIFEST_BYTES, false) else {
        return;
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
        return;
    };
    keep.insert(m.config.digest);
    keep.extend(m.layers.into_iter().map(|l| l.digest));
}

/// Collect garbage. `apps` are the configured app names; `grace` protects recent blobs.
pub fn collect(
    cache: &Layout,
    apps: &HashSet<String>,
    grace: Duration,
    signature_annotation: &str,
) -> Collected {
    let Ok(index) = cache.index() else {
        return Collected::default();
    };
    let mut keep = HashSet::new();
    for entry in &index.manifests {
        let Some(notes) = &entry.annotations else {
            continue;
        };
        let app = notes
            .get(REF_NAME)
            .and_then(|n| n.strip_prefix("apps/"))
            .unwrap_or_default();
        if !apps.contains(app) {
            continue;
        }
        reach(cache, &entry.digest, &mut keep);
        if let Some(sig) = notes.get(signature_annotation) {
            reach(cache, sig, &mut keep);
        }
    }
    let now = SystemTime::now();
    let mut collected = Collected::default();
    for (digest, size, modified) in cache.blobs() {
        let old = now.duration_since(modified).unwrap_or_default() >= grace;
        if old && !keep.contains(&digest) {
            cache.remove_blob(&digest);
            collected.blobs += 1;
            collected.bytes += size;
        }
    }
    collected
}

#[cfg(test)]
mod tests {
    use super::super::format::{build_bundle, BundleConfig};
    use super::*;

    #[test]
    fn keeps_what_apps_serve_and_drops_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Layout::create(dir.path()).expect("cache");
        let served = build_bundle(b"\0asm\x01\0\0\0".to_vec(), &BundleConfig::default(), None);
        let old = build_bundle(b"\0asm\x01\0\0\0 ".to_vec(), &BundleConfig::default(), None);
        for b in [&served, &old] {
            for blob in &b.blobs {
                cache
                    .write_blob(&blob.descriptor.digest, &blob.bytes)
                    .expect("blob");
            }
            cache.write_blob(&b.digest, &b.manifest).expect("manifest");
        }
        cache
            .set_ref(
                "apps/shop",
                &served.digest,
                served.manifest.len() as u64,
                Default::default(),
            )
            .expect("ref");
        let apps = HashSet::from(["shop".to_string()]);
        // Within the grace period nothing goes.
        assert_eq!(
            collect(&cache, &apps, Duration::from_secs(3600), "sig").blobs,
            0
        );
        let gone = collect(&cache, &apps, Duration::ZERO, "sig");
        // The old version's manifest and Wasm layer (its config blob is shared).
        assert_eq!(gone.blobs, 2);
        assert!(
            cache.has_blob(&served.digest) && cache.has_blob(&served.blobs[1].descriptor.digest)
        );
        assert!(!cache.has_blob(&old.digest));
        // An app no longer configured releases its version.
        assert_eq!(
            collect(&cache, &HashSet::new(), Duration::ZERO, "sig").blobs,
            3
        );
    }
}
