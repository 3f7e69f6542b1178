//! One interface over the two places bundles live: an OCI image layout directory and a
//! repository in an OCI distribution registry. Every read is size-capped and digest-checked
//! here, whatever the store, so callers only ever see verified bytes.

use futures_util::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::format::{
    check_blob, digest_of, BuiltBundle, Descriptor, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES,
};
use super::layout::Layout;
use super::registry::rejection;
use super::Rejection;

/// Where one repository's bundles are read from and pushed to.
pub enum Store {
    /// A repository as its own OCI image layout directory; reference names are tags.
    Layout(Layout),
    Registry {
        client: Client,
        auth: RegistryAuth,
        registry: String,
        repository: String,
    },
}

impl Store {
    pub fn describe(&self) -> String {
        match self {
            Store::Layout(l) => format!("layout {}", l.root().display()),
            Store::Registry {
                registry,
                repository,
                ..
            } => format!("{registry}/{repository}"),
        }
    }

    fn reference(&self, tag_or_digest: &str) -> Option<Reference> {
        match self {
            Store::Layout(_) => None,
            Store::Registry {
                registry,
                repository,
                ..
            } => Some(if tag_or_digest.starts_with("sha256:") {
                Reference::with_digest(registry.clone(), repository.clone(), tag_or_digest.into())
            } else {
                Reference::with_tag(registry.clone(), repository.clone(), tag_or_digest.into())
            }),
        }
    }

    /// The manifest digest a tag names now, or None when there is no such tag.
    pub async fn resolve(&self, tag: &str) -> Result<Option<String>, Rejection> {
        match (self, self.reference(tag)) {
            (Store::Layout(l), _) => Ok(l.resolve(tag)?.map(|d| d.digest)),
            (Store::Registry { client, auth, .. }, Some(r)) => {
                match client.fetch_manifest_digest(&r, auth).await {
                    Ok(d) if super::format::valid_digest(&d) => Ok(Some(d)),
                    Ok(d) => Err(Rejection::Manifest(format!(
                        "the registry named {tag} by the digest {d:?}, which is not sha256"
                    ))),
                    Err(e) => match rejection(e, &format!("tag {tag}")) {
                        Rejection::NotFound(_) => Ok(None),
                        other => Err(other),
                    },
                }
            }
            (Store::Registry { .. }, None) => Err(Rejection::Unreachable("no reference".into())),
        }
    }

    /// A manifest's bytes by digest, checked against it.
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>, Rejection> {
        let bytes = match (self, self.reference(digest)) {
            (Store::Layout(l), _) => l.read_blob(digest, None, MAX_MANIFEST_BYTES, false)?,
            (Store::Registry { client, auth, .. }, Some(r)) => {
                // oci-client reads a manifest whole; distribution itself refuses manifests
                // over 4 MiB, and the size is checked before the bytes are parsed.
                let (bytes, _) = client
                    .pull_manifest_raw(&r, auth, &[MANIFEST_MEDIA_TYPE])
                    .await
                    .map_err(|e| rejection(e, &format!("manifest {digest}")))?;
                bytes.to_vec()
            }
            (Store::Registry { .. }, None) => {
                return Err(Rejection::Unreachable("no reference".into()))
            }
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Rejection::TooLarge(format!(
                "manifest {digest} is {} bytes, over the {MAX_MANIFEST_BYTES}-byte cap",
                bytes.len()
            )));
        }
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(Rejection::Digest(format!(
                "manifest {digest} arrived as {actual}"
            )));
        }
        Ok(bytes)
    }

    /// A blob's bytes, never more than its descriptor's size (itself within a cap the
    /// caller checked), checked against its digest.
    pub async fn blob(&self, d: &Descriptor) -> Result<Vec<u8>, Rejection> {
        let bytes = match (self, self.reference(&d.digest)) {
            (Store::Layout(l), _) => l.read_blob(&d.digest, Some(d.size), d.size, false)?,
            (Store::Registry { client, .. }, Some(r)) => {
                let what = format!("blob {}", d.digest);
                let mut stream = client
                    .pull_blob_stream(&r, d.digest.as_str())
                    .await
                    .map_err(|e| rejection(e, &what))?;
                // A registry that announces another length than the manifest's (a truncated
                // or swapped blob) is refused before a byte is read.
                if stream.content_length.is_some_and(|n| n != d.size) {
                    return Err(Rejection::Digest(format!(
                        "{what}: the registry sends {} bytes, the manifest says {}",
                        stream.content_length.unwrap_or_default(),
                        d.size
                    )));
                }
                let mut bytes = Vec::with_capacity(d.size.min(64 << 20) as usize);
                while let Some(chunk) = stream.next().await {
                    // oci-client's verifying stream reports a digest mismatch as an I/O error
                    // after the last chunk: with every byte here, hashing them tells the two
                    // apart without reading its error text.
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) if bytes.len() as u64 == d.size => {
                            check_blob(d, &bytes)?;
                            return Err(Rejection::Unreachable(format!("{what}: {e}")));
                        }
                        Err(e) => return Err(Rejection::Unreachable(format!("{what}: {e}"))),
                    };
                    if bytes.len() as u64 + chunk.len() as u64 > d.size {
                        return Err(Rejection::Digest(format!(
                            "{what}: more bytes than the manifest's {}",
                            d.size
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                bytes
            }
            (Store::Registry { .. }, None) => {
                return Err(Rejection::Unreachable("no reference".into()))
            }
        };
        check_blob(d, &bytes)?;
        Ok(bytes)
    }

    /// Write a bundle (or signature artifact) and point `tag` at it.
    pub async fn push(&self, built: &BuiltBundle, tag: &str) -> Result<(), Rejection> {
        self.push_content(built).await?;
        self.tag(built, tag).await
    }

    /// Write a bundle's blobs and manifest without any tag naming it yet (so a tag can move
    /// only once the version's signature is in place).
    pub async fn push_content(&self, built: &BuiltBundle) -> Result<(), Rejection> {
        match (self, self.reference(&built.digest)) {
            (Store::Layout(l), _) => {
                for blob in &built.blobs {
                    l.write_blob(&blob.descriptor.digest, &blob.bytes)?;
                }
                l.write_blob(&built.digest, &built.manifest)
            }
            (Store::Registry { client, auth, .. }, Some(r)) => {
                client
                    .store_auth_if_needed(r.resolve_registry(), auth)
                    .await;
                for blob in &built.blobs {
                    let what = format!("pushing blob {}", blob.descriptor.digest);
                    let exists = client
                        .blob_exists(&r, &blob.descriptor.digest)
                        .await
                        .unwrap_or(false);
                    if !exists {
                        client
                            .push_blob(&r, blob.bytes.clone(), &blob.descriptor.digest)
                            .await
                            .map_err(|e| rejection(e, &what))?;
                    }
                }
                self.tag(built, &built.digest).await
            }
            (Store::Registry { .. }, None) => Err(Rejection::Unreachable("no reference".into())),
        }
    }

    /// Point `tag` at a manifest already pushed.
    pub async fn tag(&self, built: &BuiltBundle, tag: &str) -> Result<(), Rejection> {
        match (self, self.reference(tag)) {
            (Store::Layout(l), _) => l.set_ref(
                tag,
                &built.digest,
                built.manifest.len() as u64,
                Default::default(),
            ),
            (Store::Registry { client, auth, .. }, Some(r)) => {
                client
                    .store_auth_if_needed(r.resolve_registry(), auth)
                    .await;
                let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
                client
                    .push_manifest_raw(&r, built.manifest.clone(), content_type)
                    .await
                    .map_err(|e| rejection(e, "pushing the manifest"))?;
                Ok(())
            }
            (Store::Registry { .. }, None) => Err(Rejection::Unreachable("no reference".into())),
        }
    }

    /// The repository's tags.
    pub async fn tags(&self) -> Result<Vec<String>, Rejection> {
        match (self, self.reference("latest")) {
            (Store::Layout(l), _) => Ok(l
                .index()?
                .manifests
                .into_iter()
                .filter_map(|d| d.annotations?.remove(super::layout::REF_NAME))
                .collect()),
            (Store::Registry { client, auth, .. }, Some(r)) => {
                let mut tags = Vec::new();
                let mut last: Option<String> = None;
                // Pages of 1000, at most 100 pages: a repository is not a place for more.
                for _ in 0..100 {
                    let page = client
                        .list_tags(&r, auth, Some(1000), last.as_deref())
                        .await
                        .map_err(|e| rejection(e, "listing tags"))?;
                    let n = page.tags.len();
                    last = page.tags.last().cloned();
                    tags.extend(page.tags);
                    if n < 1000 {
                        break;
                    }
                }
                Ok(tags)
            }
            (Store::Registry { .. }, None) => Err(Rejection::Unreachable("no reference".into())),
        }
    }
}
