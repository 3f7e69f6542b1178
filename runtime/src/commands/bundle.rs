//! `outpost bundle push|inspect|list`: the tenant's side of bundles. Push checks the module
//! as the sandbox would, builds the bundle, signs its manifest digest and writes it to a
//! registry or an OCI image layout directory; inspect and list show versions and whether
//! their signatures verify. Registry credentials come from the environment or a file only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use edge_config::{Reference, Source};

use crate::bundle::format::{
    self, build_bundle, build_signature_artifact, check_signature_manifest, signature_tag,
    BundleConfig, Caps, MAX_SIGNATURE_BYTES,
};
use crate::bundle::layout::Layout;
use crate::bundle::registry::{self, Credentials};
use crate::bundle::sign::{self, SignatureDocument};
use crate::bundle::store::Store;
use crate::sandbox::check::check_module_with;
use crate::sandbox::{HostChoice, LoadError, SandboxConfig};

/// The environment variable holding registry credentials: `USER:PASSWORD`, or a docker
/// config.json document.
pub const CREDENTIALS_ENV: &str = "OUTPOST_REGISTRY_AUTH";

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Reach oci:// registries over plain HTTP (a registry on loopback, for development).
    #[arg(long)]
    pub insecure: bool,
    /// A docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json when present; OUTPOST_REGISTRY_AUTH overrides).
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build, sign and push a bundle; prints its manifest digest.
    Push {
        /// The module (a WASI command for wasm32-wasip1).
        module: PathBuf,
        /// oci://HOST[:PORT]/REPO:TAG or local:DIR:REPO:TAG (an OCI image layout at DIR/REPO).
        #[arg(long)]
        to: String,
        /// The tenant's secret key file (`outpost keygen`).
        #[arg(long)]
        key: PathBuf,
        /// KEY=VALUE for the app's environment.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// A directory packed as the bundle's assets layer.
        #[arg(long)]
        assets: Option<PathBuf>,
        /// Where the assets are mounted in the guest.
        #[arg(long, default_value = "/assets")]
        assets_mount: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Arguments for the guest.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Show a version's manifest, config, layers and signature status.
    Inspect {
        /// oci://HOST[:PORT]/REPO:TAG|@sha256:... or local:DIR:REPO:TAG|@sha256:...
        reference: String,
        /// A public key (ed25519:<base64>, or a file holding one) to verify the signature with.
        #[arg(long = "key")]
        keys: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a repository's tags with their digests and signature status.
    List {
        /// oci://HOST[:PORT]/REPO or local:DIR:REPO
        repository: String,
        #[arg(long = "key")]
        keys: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A parsed `--to` / reference: the store and, when given, the tag or digest.
struct Target {
    store: Store,
    reference: Option<Reference>,
    label: String,
}

fn credentials(args: &StoreArgs) -> anyhow::Result<Credentials> {
    let default_file = std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
        .filter(|p| p.is_file());
    let file = args.credentials_file.clone().or(default_file);
    Credentials::load(file.as_deref(), Some(CREDENTIALS_ENV)).map_err(|e| anyhow!(e))
}

fn parse_target(
    text: &str,
    args: &StoreArgs,
    want_reference: bool,
    create: bool,
) -> anyhow::Result<Target> {
    if let Some(rest) = text.strip_prefix("local:") {
        // local:DIR:REPO[:TAG|@DIGEST]; DIR may itself hold ':' so the split runs from the end.
        let (head, reference) = if let Some((head, digest)) = rest.split_once('@') {
            (head, Some(format!("@{digest}")))
        } else if want_reference {
            let (head, tag) = rest
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("{text:?}: expected local:DIR:REPO:TAG"))?;
            (head, Some(format!(":{tag}")))
        } else {
            (rest, None)
        };
        let (dir, repo) = head
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{text:?}: expected local:DIR:REPO:TAG"))?;
        let parsed = Source::parse(&format!(
            "local:{repo}{}",
            reference.as_deref().unwrap_or(":x")
        ))
        .map_err(|e| anyhow!("{text:?}: {e}"))?;
        let Source::Local { reference: r, .. } = parsed else {
            bail!("{text:?}: expected local:DIR:REPO:TAG");
        };
        let root = Path::new(dir).join(repo);
        let layout = if create {
            Layout::create(&root).with_context(|| format!("cannot create {}", root.display()))?
        } else {
            Layout::open(&root).map_err(|e| anyhow!("{e}"))?
        };
        return Ok(Target {
            store: Store::Layout(layout),
            reference: reference.map(|_| r),
            label: text.to_string(),
        });
    }
    if text.starts_with("oci://") {
        let with_ref = if want_reference {
            text.to_string()
        } else {
            format!("{text}:x")
        };
        let Source::Oci {
            registry,
            repository,
            reference,
        } = Source::parse(&with_ref).map_err(|e| anyhow!("{e}"))?
        else {
            bail!("{text:?}: expected oci://HOST[:PORT]/REPO:TAG");
        };
        let insecure = if args.insecure {
            vec![registry.clone()]
        } else {
            Vec::new()
        };
        let client = registry::client(&insecure).map_err(|e| anyhow!(e))?;
        let auth = credentials(args)?.auth_for(&registry);
        return Ok(Target {
            store: Store::Registry {
                client,
                auth,
                registry,
                repository,
            },
            reference: want_reference.then_some(reference),
            label: text.to_string(),
        });
    }
    bail!("{text:?} is not a bundle location; expected oci://HOST[:PORT]/REPO:TAG or local:DIR:REPO:TAG")
}

fn public_keys(keys: &[String]) -> anyhow::Result<Vec<VerifyingKey>> {
    keys.iter()
        .map(|k| {
            let text = if k.starts_with("ed25519:") {
                k.clone()
            } else {
                std::fs::read_to_string(k)
                    .with_context(|| format!("cannot read the public key file {k}"))?
                    .lines()
                    .find(|l| l.starts_with("ed25519:"))
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{k} holds no ed25519:<base64> public key"))?
            };
            sign::parse_public_key(&text).map_err(|e| anyhow!("{k}: {e}"))
        })
        .collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A directory as an assets tar, and the tree a node will index from it (regular files and
/// directories only, within the tree's caps): a push never carries assets a node refuses.
pub(crate) fn assets_tar(
    dir: &Path,
    mount: &str,
) -> anyhow::Result<(Vec<u8>, crate::sandbox::assets::Assets)> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    let tar = builder
        .into_inner()
        .context("cannot finish the assets tar")?;
    let assets = crate::sandbox::assets::Assets::from_tar(mount, bytes::Bytes::from(tar.clone()))
        .map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    Ok((tar, assets))
}

pub fn bundle(args: BundleArgs) -> anyhow::Result<()> {
    match args.command {
        BundleCommand::Push {
            module,
            to,
            key,
            env,
            assets,
            assets_mount,
            store,
            args,
        } => push(module, &to, &key, env, assets, assets_mount, &store, args),
        BundleCommand::Inspect {
            reference,
            keys,
            store,
        } => inspect(&reference, &keys, &store),
        BundleCommand::List {
            repository,
            keys,
            store,
        } => list(&repository, &keys, &store),
    }
}

#[allow(clippy::too_many_arguments)]
fn push(
    module: PathBuf,
    to: &str,
    key: &Path,
    env: Vec<String>,
    assets: Option<PathBuf>,
    assets_mount: String,
    store: &StoreArgs,
    args: Vec<String>,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
    // The very check the daemon's sandbox applies, so a push never publishes what no node runs.
    // Subrequest imports pass here: whether the app may use them is the node config's say.
    let max = SandboxConfig::new(PathBuf::new()).max_module_bytes;
    check_module_with(&bytes, max, HostChoice::Auto, true)
        .map_err(|e| anyhow!("{}: {}", module.display(), LoadError::Check(e)))?;
    let key = sign::read_key_file(key).map_err(|e| anyhow!(e))?;
    let mut env_map = BTreeMap::new();
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {kv:?}: expected KEY=VALUE"))?;
        env_map.insert(k.to_string(), v.to_string());
    }
    let tar = assets
        .as_deref()
        .map(|dir| assets_tar(dir, &assets_mount).map(|(tar, _)| tar))
        .transpose()?;
    let config = BundleConfig {
        args,
        env: env_map,
        assets_mount: tar.as_ref().map(|_| assets_mount),
    };
    let built = build_bundle(bytes, &config, tar);
    let target = parse_target(to, store, true, true)?;
    let Some(Reference::Tag(tag)) = &target.reference else {
        bail!("{to:?}: push needs a tag (…:TAG), not a digest");
    };
    let signature = build_signature_artifact(sign::sign_document(&built.digest, &key));
    runtime()?
        .block_on(async {
            // Content, then its signature, then the tag: a node that resolves the tag always
            // finds the signature in place.
            target.store.push_content(&built).await?;
            target
                .store
                .push(&signature, &signature_tag(&built.digest))
                .await?;
            target.store.tag(&built, tag).await
        })
        .map_err(|e| anyhow!("{}: {e}", target.label))?;
    eprintln!(
        "pushed {} ({} bytes of Wasm) signed by {}",
        target.label,
        built.blobs[1].bytes.len(),
        sign::public_key_text(&key.verifying_key())
    );
    println!("{}", built.digest);
    Ok(())
}

/// The signature status line of a version.
async fn signature_status(store: &Store, digest: &str, keys: &[VerifyingKey]) -> String {
    let sig_tag = signature_tag(digest);
    let sig_digest = match store.resolve(&sig_tag).await {
        Ok(Some(d)) => d,
        Ok(None) => return "unsigned".into(),
        Err(e) => return format!("signature unreadable: {e}"),
    };
    let doc = async {
        let m = store.manifest(&sig_digest).await?;
        let d = check_signature_manifest(&m)?;
        if d.size > MAX_SIGNATURE_BYTES {
            return Err(crate::bundle::Rejection::TooLarge("signature".into()));
        }
        store.blob(&d).await
    }
    .await;
    let doc = match doc {
        Ok(doc) => doc,
        Err(e) => return format!("signature unreadable: {e}"),
    };
    let signers = serde_json::from_slice::<SignatureDocument>(&doc)
        .map(|d| {
            d.signatures
                .into_iter()
                .map(|s| s.key)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if keys.is_empty() {
        return format!("signed by {signers} (not verified: no --key given)");
    }
    match sign::verify_document(&doc, digest, keys) {
        Ok(k) => format!("signature verified: {}", sign::public_key_text(&k)),
        Err(e) => format!("NOT VERIFIED: {e}"),
    }
}

fn inspect(reference: &str, keys: &[String], store_args: &StoreArgs) -> anyhow::Result<()> {
    let keys = public_keys(keys)?;
    let target = parse_target(reference, store_args, true, false)?;
    runtime()?.block_on(async {
        let store = &target.store;
        let digest = match &target.reference {
            Some(Reference::Digest(d)) => d.clone(),
            Some(Reference::Tag(t)) => store
                .resolve(t)
                .await
                .map_err(|e| anyhow!("{e}"))?
                .ok_or_else(|| anyhow!("{reference}: no such tag"))?,
            None => bail!("{reference}: name a tag or digest"),
        };
        let manifest = store.manifest(&digest).await.map_err(|e| anyhow!("{e}"))?;
        println!("digest: {digest}");
        let value: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| anyhow!("the manifest is not JSON: {e}"))?;
        println!(
            "manifest:\n{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        let caps = Caps {
            module: u64::MAX,
            assets: u64::MAX,
        };
        match format::check_bundle_manifest(&manifest, caps) {
            Ok(bundle) => {
                match store.blob(&bundle.config).await {
                    Ok(bytes) => println!(
                        "config:\n{}",
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| serde_json::to_string_pretty(&v).ok())
                            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
                    ),
                    Err(e) => println!("config: unreadable: {e}"),
                }
                for layer in bundle.blobs().skip(1) {
                    println!(
                        "layer: {} {} {} bytes",
                        layer.media_type, layer.digest, layer.size
                    );
                }
            }
            Err(e) => println!("not a valid outpost bundle: {e}"),
        }
        println!(
            "signature: {}",
            signature_status(store, &digest, &keys).await
        );
        Ok(())
    })
}

fn list(repository: &str, keys: &[String], store_args: &StoreArgs) -> anyhow::Result<()> {
    let keys = public_keys(keys)?;
    let target = parse_target(repository, store_args, false, false)?;
    runtime()?.block_on(async {
        let store = &target.store;
        let mut tags = store.tags().await.map_err(|e| anyhow!("{e}"))?;
        tags.retain(|t| !(t.starts_with("sha256-") && t.ends_with(".sig")));
        tags.sort();
        for tag in tags {
            match store.resolve(&tag).await {
                Ok(Some(digest)) => println!(
                    "{tag}\t{digest}\t{}",
                    signature_status(store, &digest, &keys).await
                ),
                Ok(None) => println!("{tag}\t-\tgone"),
                Err(e) => println!("{tag}\t-\t{e}"),
            }
        }
        Ok(())
    })
}
