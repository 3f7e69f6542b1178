//! `outpost keygen --out KEYFILE`: a tenant's ed25519 signing key. The secret key file is
//! written 0600 and never replaces an existing file; the public key is printed in the form
//! the node config's `[[tenant]] keys` takes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::bundle::sign;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let key = sign::generate().map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    sign::write_key_file(&args.out, &key).with_context(|| {
        if args.out.exists() {
            format!(
                "{} already exists; outpost never overwrites a key (remove it first if you mean to)",
                args.out.display()
            )
        } else {
            format!("cannot write {}", args.out.display())
        }
    })?;
    eprintln!(
        "secret key written to {} (keep it private; add the public key below to the tenant's keys)",
        args.out.display()
    );
    println!("{}", sign::public_key_text(&key.verifying_key()));
    Ok(())
}
