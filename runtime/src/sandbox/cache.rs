//! The compiled-artifact cache on disk: one file per (module digest, engine fingerprint),
//! written atomically (temp file, fsync, rename) and checksummed, so a crash or a torn write
//! is a cache miss, never a corrupt module loaded into the engine.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"OPART\x01\0\0";
const HEADER: usize = MAGIC.len() + 32;

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
}

impl ArtifactCache {
    pub fn open(data_dir: &Path, fingerprint: String) -> std::io::Result<Self> {
        let dir = data_dir.join("artifacts");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, fingerprint })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn path_for(&self, module_digest: &str) -> PathBuf {
        self.dir
            .join(format!("{module_digest}-{}.bin", self.fingerprint))
    }

    /// The artifact bytes if present and intact. A damaged file is removed.
    pub fn get(&self, module_digest: &str) -> Option<Vec<u8>> {
        let path = self.path_for(module_digest);
        let mut bytes = fs::read(&path).ok()?;
        let intact = bytes.len() >= HEADER
            && &bytes[..MAGIC.len()] == MAGIC
            && Sha256::digest(&bytes[HEADER..]).as_slice() == &bytes[MAGIC.len()..HEADER];
        if !intact {
            tracing::warn!(path = %path.display(), "removing damaged compiled artifact");
            let _ = fs::remove_file(&path);
            return None;
        }
        bytes.drain(..HEADER);
        Some(bytes)
    }

    pub fn put(&self, module_digest: &str, artifact: &[u8]) -> std::io::Result<()> {
        let path = self.path_for(module_digest);
        let tmp = self.dir.join(format!(
            ".{module_digest}-{}.{}.tmp",
            self.fingerprint,
            std::process::id()
        ));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(artifact))?;
        file.write_all(artifact)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_drops_damaged_files() {
        let dir = std::env::temp_dir().join(format!("outpost-cache-test-{}", std::process::id()));
        let cache = ArtifactCache::open(&dir, "fp".into()).expect("open");
        assert!(cache.get("abc").is_none());
        cache.put("abc", b"compiled bytes").expect("put");
        assert_eq!(cache.get("abc").as_deref(), Some(&b"compiled bytes"[..]));
        let path = cache.path_for("abc");
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).expect("write");
        assert!(cache.get("abc").is_none(), "a flipped byte is a miss");
        assert!(!path.exists(), "the damaged file is removed");
        let _ = fs::remove_dir_all(&dir);
    }
}
