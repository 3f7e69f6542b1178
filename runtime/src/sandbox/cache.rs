//! The compiled-artifact cache on disk: one file per (module digest, engine fingerprint),
//! written atomically (unique temp file, fsync, rename) and authenticated with an HMAC under a
//! per-node secret, so a torn write, a tampered file or one planted by anyone who cannot read
//! the secret is a cache miss that gets recompiled, never native code loaded into the engine.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;

const MAGIC: &[u8; 8] = b"OPART\x02\0\0";
const TAG: usize = 32;
const HEADER: usize = MAGIC.len() + TAG;
/// The node's artifact key, in the data directory.
pub const KEY_FILE: &str = "artifact.key";
const KEY_BYTES: usize = 32;
/// Larger files are not read (a compiled module is a few times its Wasm, and modules are
/// capped far below this).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

pub struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
    key: hmac::Key,
    /// Loads and writes share it; a collection takes it alone, so it never removes a file
    /// between a load's use and its touch, or just after a write.
    collecting: std::sync::RwLock<()>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn refuse(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("{}: {why}", path.display()),
    )
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The data directory may be shared with root (`/var/lib`) but nobody else may write it, or
/// they could swap the cache directory or the key out from under us (a sticky directory
/// such as /tmp is fine: others cannot rename what we own there).
fn check_data_dir(dir: &Path) -> std::io::Result<()> {
    let meta = fs::metadata(dir)?;
    if meta.uid() != euid() && meta.uid() != 0 {
        return Err(refuse(
            dir,
            "owned by another user; refusing to keep artifacts there",
        ));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(refuse(
            dir,
            "writable by other users; refusing to keep artifacts there (chmod go-w)",
        ));
    }
    Ok(())
}

/// The cache directory itself: ours, a real directory (not a symlink to somewhere else) and
/// writable by nobody else.
fn check_cache_dir(dir: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(refuse(
            dir,
            "is a symlink; refusing to use it as the artifact cache",
        ));
    }
    if !meta.is_dir() {
        return Err(refuse(dir, "is not a directory"));
    }
    if meta.uid() != euid() {
        return Err(refuse(
            dir,
            "owned by another user; refusing to use it as the artifact cache",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(
            dir,
            "writable by other users; refusing to use it as the artifact cache (chmod go-w)",
        ));
    }
    Ok(())
}

/// Open a file without following a symlink at its name.
fn open_no_follow(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The node's artifact key: read if present (it must be ours, a regular file, readable by us
/// alone), created otherwise (random, 0600, by an exclusive link so two processes starting
/// at once end up with the same key).
fn load_or_create_key(data_dir: &Path) -> std::io::Result<hmac::Key> {
    let path = data_dir.join(KEY_FILE);
    let bytes = match read_key(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = [0u8; KEY_BYTES];
            getrandom::fill(&mut fresh)
                .map_err(|e| std::io::Error::other(format!("no randomness for the key: {e}")))?;
            // NamedTempFile creates its file 0600 with O_EXCL under a random name.
            let mut tmp = tempfile::Builder::new()
                .prefix(".artifact-key-")
                .tempfile_in(data_dir)?;
            tmp.write_all(&fresh)?;
            tmp.as_file().sync_all()?;
            match tmp.persist_noclobber(&path) {
                Ok(_) => {
                    sync_dir(data_dir);
                    tracing::info!(path = %path.display(), "created the node's artifact key");
                }
                // Another process created it first: use theirs.
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.error),
            }
            read_key(&path)?
        }
        Err(e) => return Err(e),
    };
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

fn read_key(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = open_no_follow(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => refuse(path, "is a symlink; refusing it as the artifact key"),
        _ => e,
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(path, "is not a regular file"));
    }
    if meta.uid() != euid() {
        return Err(refuse(
            path,
            "owned by another user; refusing it as the artifact key",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(
            path,
            &format!(
                "mode {:o} lets other users read or write it; refusing it as the artifact key (chmod 600)",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(KEY_BYTES);
    file.take(KEY_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() != KEY_BYTES {
        return Err(refuse(path, "is not an artifact key (wrong length)"));
    }
    Ok(bytes)
}

fn sync_dir(dir: &Path) {
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

impl ArtifactCache {
    /// The cache under `data_dir`, refusing directories and keys others could have written.
    pub fn open(data_dir: &Path, fingerprint: String) -> std::io::Result<Self> {
        fs::create_dir_all(data_dir)?;
        check_data_dir(data_dir)?;
        let dir = data_dir.join("artifacts");
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        check_cache_dir(&dir)?;
        let key = load_or_create_key(data_dir)?;
        Ok(Self {
            dir,
            fingerprint,
            key,
            collecting: std::sync::RwLock::new(()),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn path_for(&self, module_digest: &str) -> PathBuf {
        self.dir
            .join(format!("{module_digest}-{}.bin", self.fingerprint))
    }

    /// The key an artifact's tag is made with: derived from the node's key and the module
    /// digest and engine fingerprint, so a valid artifact of another module renamed to this
    /// one's name does not verify.
    fn key_for(&self, module_digest: &str) -> hmac::Key {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [
            &MAGIC[..],
            module_digest.as_bytes(),
            self.fingerprint.as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        hmac::Key::new(hmac::HMAC_SHA256, ctx.sign().as_ref())
    }

    /// The artifact bytes if present and authentic. Anything else is a miss, with the reason
    /// logged and the file removed so the recompiled artifact replaces it.
    pub fn get(&self, module_digest: &str) -> Option<Vec<u8>> {
        let _shared = self.collecting.read().unwrap_or_else(|e| e.into_inner());
        let path = self.path_for(module_digest);
        let bytes = match self.read_artifact(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read compiled artifact; recompiling");
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        // hmac::verify compares in constant time.
        let authentic = bytes.len() >= HEADER
            && &bytes[..MAGIC.len()] == MAGIC
            && hmac::verify(
                &self.key_for(module_digest),
                &bytes[HEADER..],
                &bytes[MAGIC.len()..HEADER],
            )
            .is_ok();
        if !authentic {
            tracing::warn!(
                path = %path.display(),
                "compiled artifact failed authentication (damaged, or not written by this node); removing it and recompiling"
            );
            let _ = fs::remove_file(&path);
            return None;
        }
        // A hit counts as a use: collection keeps what was used recently.
        if let Ok(file) = open_no_follow(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        let mut bytes = bytes;
        bytes.drain(..HEADER);
        Some(bytes)
    }

    fn read_artifact(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let file = open_no_follow(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        if meta.len() > MAX_ARTIFACT_BYTES {
            return Err(std::io::Error::other("larger than any artifact"));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_ARTIFACT_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Remove what no current version needs: artifacts of modules outside `keep` (module
    /// digests) that were neither written nor used within `grace`, artifacts of another engine
    /// fingerprint (this binary can never load them) and temp files a killed writer left, both
    /// once older than `grace`. Returns the files and bytes removed.
    pub fn collect(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> (usize, u64) {
        let _alone = self.collecting.write().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        let now = std::time::SystemTime::now();
        let suffix = format!("-{}.bin", self.fingerprint);
        let (mut files, mut bytes) = (0, 0);
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= grace);
            let needed = name
                .strip_suffix(&suffix)
                .is_some_and(|digest| keep.contains(digest));
            if meta.is_file() && old && !needed && fs::remove_file(entry.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
        if files > 0 {
            sync_dir(&self.dir);
        }
        (files, bytes)
    }

    pub fn put(&self, module_digest: &str, artifact: &[u8]) -> std::io::Result<()> {
        let _shared = self.collecting.read().unwrap_or_else(|e| e.into_inner());
        let path = self.path_for(module_digest);
        let tag = hmac::sign(&self.key_for(module_digest), artifact);
        // A fresh name per write (O_EXCL, 0600): nothing to race, no symlink to follow.
        let mut tmp = tempfile::Builder::new()
            .prefix(".artifact-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(tag.as_ref())?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        sync_dir(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_in(dir: &Path, fingerprint: &str) -> ArtifactCache {
        ArtifactCache::open(dir, fingerprint.into()).expect("open")
    }

    #[test]
    fn round_trips_and_drops_damaged_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(dir.path(), "fp");
        assert!(cache.get("abc").is_none());
        cache.put("abc", b"compiled bytes").expect("put");
        assert_eq!(cache.get("abc").as_deref(), Some(&b"compiled bytes"[..]));
        let path = cache.path_for("abc");
        for at in [0, MAGIC.len() + 3, HEADER + 2] {
            cache.put("abc", b"compiled bytes").expect("put");
            let mut bytes = fs::read(&path).expect("read");
            bytes[at] ^= 0x01;
            fs::write(&path, bytes).expect("write");
            assert!(
                cache.get("abc").is_none(),
                "a flipped byte at {at} is a miss"
            );
            assert!(!path.exists(), "the damaged file is removed");
        }
        // No temp files are left behind.
        let left: Vec<_> = fs::read_dir(dir.path().join("artifacts"))
            .expect("list")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn collection_keeps_what_is_used_and_drops_the_rest() {
        use std::collections::HashSet;
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(dir.path(), "fp");
        let artifacts = dir.path().join("artifacts");
        for digest in ["live", "old", "recent", "used"] {
            cache.put(digest, b"compiled").expect("put");
        }
        let other = artifacts.join("old-otherfp.bin");
        let leftover = artifacts.join(".artifact-x.tmp");
        for path in [&other, &leftover] {
            fs::write(path, b"x").expect("write");
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for name in [
            "live-fp.bin",
            "old-fp.bin",
            "used-fp.bin",
            "old-otherfp.bin",
            ".artifact-x.tmp",
        ] {
            let file = fs::File::options()
                .write(true)
                .open(artifacts.join(name))
                .expect("open");
            file.set_modified(hour_ago).expect("age");
        }
        // A load from the cache is a use.
        assert!(cache.get("used").is_some());
        let keep = HashSet::from(["live".to_string()]);
        let (files, _) = cache.collect(&keep, Duration::from_secs(600));
        assert_eq!(
            files, 3,
            "the unused old artifact, the other engine's and the leftover"
        );
        let mut left: Vec<_> = fs::read_dir(&artifacts)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["live-fp.bin", "recent-fp.bin", "used-fp.bin"]);
        // Once no version runs it, the old artifact goes; recently used ones stay until
        // their grace period is over.
        assert_eq!(
            cache.collect(&HashSet::new(), Duration::from_secs(600)).0,
            1
        );
        assert!(!artifacts.join("live-fp.bin").exists());
        assert_eq!(cache.collect(&HashSet::new(), Duration::ZERO).0, 2);
    }

    #[test]
    fn an_artifact_is_bound_to_its_digest_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(dir.path(), "fp");
        cache.put("one", b"artifact of one").expect("put");
        // A valid artifact of another module, under this one's name.
        fs::copy(cache.path_for("one"), cache.path_for("two")).expect("copy");
        assert!(
            cache.get("two").is_none(),
            "another digest's artifact is a miss"
        );
        // An artifact in the right format, checksummed as before, but not under this key.
        let forged = {
            let other = tempfile::tempdir().expect("tempdir");
            let foreign = cache_in(other.path(), "fp");
            foreign.put("one", b"planted native code").expect("put");
            fs::read(foreign.path_for("one")).expect("read")
        };
        fs::write(cache.path_for("one"), forged).expect("plant");
        assert!(
            cache.get("one").is_none(),
            "another node's artifact is a miss"
        );
        // The key survives a restart: what this node wrote still verifies.
        cache.put("one", b"artifact of one").expect("put");
        let reopened = cache_in(dir.path(), "fp");
        assert_eq!(
            reopened.get("one").as_deref(),
            Some(&b"artifact of one"[..])
        );
    }

    #[test]
    fn the_key_is_private_and_refused_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        cache_in(dir.path(), "fp");
        let key = dir.path().join(KEY_FILE);
        let meta = fs::metadata(&key).expect("key exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_BYTES as u64);
        let before = fs::read(&key).expect("read");
        cache_in(dir.path(), "fp");
        assert_eq!(
            fs::read(&key).expect("read"),
            before,
            "the key is created once"
        );

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("readable key");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");

        // A symlink in the key's place is not followed.
        fs::rename(&key, dir.path().join("elsewhere")).expect("move");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &key).expect("symlink");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("symlinked key");
        assert!(err.to_string().contains("symlink"), "{err}");

        fs::remove_file(&key).expect("remove");
        fs::write(&key, b"short").expect("write");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("short key");
        assert!(err.to_string().contains("wrong length"), "{err}");
    }

    #[test]
    fn a_cache_directory_others_can_write_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let artifacts = dir.path().join("artifacts");
        cache_in(dir.path(), "fp");
        assert_eq!(
            fs::metadata(&artifacts).expect("dir").permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&artifacts, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("world-writable");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        fs::set_permissions(&artifacts, fs::Permissions::from_mode(0o700)).expect("chmod");

        fs::rename(&artifacts, dir.path().join("real")).expect("move");
        std::os::unix::fs::symlink(dir.path().join("real"), &artifacts).expect("symlink");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("symlink");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        fs::remove_file(&artifacts).expect("unlink");

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ArtifactCache::open(dir.path(), "fp".into()).expect_err("data dir");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        cache_in(dir.path(), "fp");
    }

    #[test]
    fn an_artifact_name_that_is_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache_in(dir.path(), "fp");
        cache.put("abc", b"compiled bytes").expect("put");
        let real = dir.path().join("real.bin");
        fs::rename(cache.path_for("abc"), &real).expect("move");
        std::os::unix::fs::symlink(&real, cache.path_for("abc")).expect("symlink");
        assert!(cache.get("abc").is_none(), "a symlinked artifact is a miss");
        assert!(real.exists(), "its target is left alone");
        // put replaces the link itself, not the file it pointed to.
        cache.put("abc", b"new bytes").expect("put");
        assert_eq!(fs::read(&real).expect("read").len(), HEADER + 14);
        assert_eq!(cache.get("abc").as_deref(), Some(&b"new bytes"[..]));
    }
}
