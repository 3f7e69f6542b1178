//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`), as the image
//! spec defines it, so skopeo and other tools read what outpost writes. Every file is written
//! whole or not at all (temp file, fsync, rename, directory fsync); every blob read is checked
//! against its digest, so a torn or altered file is a miss, never content taken on trust.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{digest_of, valid_digest, Descriptor, MANIFEST_MEDIA_TYPE};
use super::Rejection;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// Write `bytes` to `path` so that a reader (or a crash) sees the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

impl Layout {
    /// Open a layout, creating an empty one if the directory holds none.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(root.join("blobs/sha256"))?;
        let layout = Self {
            root: root.to_path_buf(),
        };
        if !root.join("oci-layout").exists() {
            write_atomically(
                &root.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
        }
        if !root.join("index.json").exists() {
            layout.write_index(&Index {
                schema_version: 2,
                media_type: Some(INDEX_MEDIA_TYPE.into()),
                manifests: Vec::new(),
            })?;
        }
        Ok(layout)
    }

    /// Remove temporary files a killed writer left behind (never a blob: those are only
    /// ever created by rename, whole).
    pub fn remove_leftovers(&self) -> usize {
        let mut removed = 0;
        for dir in [self.root.clone(), self.root.join("blobs/sha256")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(".tmp-")
                    && fs::remove_file(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Open an existing layout without writing anything.
    pub fn open(root: &Path) -> Result<Self, Rejection> {
        if !root.join("oci-layout").is_file() {
            return Err(Rejection::NotFound(format!(
                "{} is not an OCI image layout (no oci-layout file)",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        // Only a validated digest becomes a path: a manifest cannot name `../` anything.
        valid_digest(digest).then(|| self.root.join("blobs/sha256").join(&digest[7..]))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_some_and(|p| p.is_file())
    }

    /// The blob's bytes, at most `cap` of them, checked against `digest` (and `size` when
    /// known). A file that does not match is removed when `heal` is set (the node's cache).
    pub fn read_blob(
        &self,
        digest: &str,
        size: Option<u64>,
        cap: u64,
        heal: bool,
    ) -> Result<Vec<u8>, Rejection> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| Rejection::Manifest(format!("{digest:?} is not a sha256 digest")))?;
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Rejection::NotFound(format!("blob {digest}")))
            }
            Err(e) => return Err(Rejection::Cache(format!("{}: {e}", path.display()))),
        };
        let mut bytes = Vec::new();
        file.take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Rejection::Cache(format!("{}: {e}", path.display())))?;
        if bytes.len() as u64 > cap {
            return Err(Rejection::TooLarge(format!(
                "blob {digest} is over the {cap}-byte cap"
            )));
        }
        let actual = digest_of(&bytes);
        if actual != digest || size.is_some_and(|s| s != bytes.len() as u64) {
            if heal {
                tracing::warn!(path = %path.display(), "removing a damaged blob from the cache");
                let _ = fs::remove_file(&path);
            }
            return Err(Rejection::Digest(format!(
                "blob {digest} on disk hashes to {actual}"
            )));
        }
        Ok(bytes)
    }

    /// Store a blob under its digest, refusing bytes that do not match it.
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), Rejection> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| Rejection::Manifest(format!("{digest:?} is not a sha256 digest")))?;
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(Rejection::Digest(format!(
                "blob {digest} arrived as {actual}"
            )));
        }
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, bytes)
            .map_err(|e| Rejection::Cache(format!("{}: {e}", path.display())))
    }

    pub fn index(&self) -> Result<Index, Rejection> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Rejection::NotFound(format!("{}", path.display()))
            } else {
                Rejection::Cache(format!("{}: {e}", path.display()))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Rejection::Manifest(format!("{}: {e}", path.display())))
    }

    fn write_index(&self, index: &Index) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(std::io::Error::other)?;
        write_atomically(&self.root.join("index.json"), &bytes)
    }

    /// The descriptor a reference name points at.
    pub fn resolve(&self, name: &str) -> Result<Option<Descriptor>, Rejection> {
        Ok(self.index()?.manifests.into_iter().find(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == name)
        }))
    }

    /// Point a reference name at a manifest (replacing what it named), holding an exclusive
    /// lock on the index so two writers do not lose each other's entries.
    pub fn set_ref(
        &self,
        name: &str,
        manifest_digest: &str,
        size: u64,
        extra: BTreeMap<String, String>,
    ) -> Result<(), Rejection> {
        let io = |e: std::io::Error| Rejection::Cache(format!("{}: {e}", self.root.display()));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".index.lock"))
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mut index = self.index()?;
        index.manifests.retain(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_none_or(|n| n != name)
        });
        let mut annotations = extra;
        annotations.insert(REF_NAME.into(), name.into());
        index.manifests.push(Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: manifest_digest.into(),
            size,
            annotations: Some(annotations),
        });
        self.write_index(&index).map_err(io)
    }

    /// Every blob file's digest and size, for garbage collection.
    pub fn blobs(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        let Ok(dir) = fs::read_dir(self.root.join("blobs/sha256")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let digest = format!("sha256:{name}");
                let meta = e.metadata().ok()?;
                valid_digest(&digest).then(|| {
                    (
                        digest,
                        meta.len(),
                        meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                    )
                })
            })
            .collect()
    }

    pub fn remove_blob(&self, digest: &str) {
        if let Some(p) = self.blob_path(digest) {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_and_refs_round_trip_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::create(dir.path()).expect("create");
        assert!(dir.path().join("oci-layout").is_file());
        let d = digest_of(b"hello");
        assert_eq!(
            layout
                .write_blob(&d, b"hellO")
                .expect_err("mismatch")
                .reason(),
            "digest"
        );
        layout.write_blob(&d, b"hello").expect("write");
        assert_eq!(
            layout.read_blob(&d, Some(5), 100, true).expect("read"),
            b"hello"
        );
        assert_eq!(
            layout
                .read_blob(&d, None, 2, true)
                .expect_err("cap")
                .reason(),
            "too_large"
        );
        layout.set_ref("v1", &d, 5, BTreeMap::new()).expect("ref");
        layout
            .set_ref("v1", &d, 5, BTreeMap::new())
            .expect("ref again");
        assert_eq!(layout.index().expect("index").manifests.len(), 1);
        assert_eq!(
            layout
                .resolve("v1")
                .expect("resolve")
                .expect("found")
                .digest,
            d
        );
        assert!(layout.resolve("v2").expect("resolve").is_none());
        fs::write(dir.path().join("blobs/sha256").join(&d[7..]), b"tampered").expect("write");
        assert_eq!(
            layout
                .read_blob(&d, None, 100, true)
                .expect_err("damaged")
                .reason(),
            "digest"
        );
        assert!(!layout.has_blob(&d), "a damaged cache blob is removed");
        assert!(layout.read_blob("sha256:../x", None, 100, true).is_err());
    }
}
