//! Compile and artifact-load time per module size: what a node spends between a verified
//! bundle and a servable app. For each module: the check plus a Cranelift (and singlepass)
//! compile into an empty artifact cache, then a fresh sandbox on the same data directory
//! loading it from the cache (HMAC check plus deserialize). Median of `ROUNDS` runs each.
//!
//! Usage: compile-times [ROUNDS] [EXTRA.wasm ...]
//! Modules: the WAT hello, any extra modules named (the bench script passes the Rust hello
//! guest), and generated code-heavy modules of about 1 MB and 10 MB (many functions of
//! integer arithmetic and branches, so their size is code, not data).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use outpost::sandbox::{CompilerKind, LoadSource, Sandbox, SandboxConfig};

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nhello\n")
  (data (i32.const 0) "\10\00\00\00\20\00\00\00")
  (func (export "_start") (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// A module of `functions` functions, each a chain of arithmetic and a branch over its
/// parameters: about 1 KB of code per function.
fn generated(functions: usize) -> Vec<u8> {
    let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
    for f in 0..functions {
        wat.push_str(&format!(
            "(func $f{f} (param i32 i32) (result i32) (local i32)\n"
        ));
        for k in 0..40 {
            wat.push_str(&format!(
                "local.get 0 i32.const {c} i32.add local.get 1 i32.xor local.set 2 \
                 local.get 2 i32.const {s} i32.shl local.get 0 i32.add local.set 0\n",
                c = f * 31 + k,
                s = k % 13
            ));
        }
        wat.push_str(
            "local.get 0 i32.const 0 i32.lt_s (if (result i32) (then local.get 1) (else local.get 2)))\n",
        );
    }
    wat.push_str("(func (export \"_start\")))\n");
    wasmer::wat2wasm(wat.as_bytes())
        .expect("generated module assembles")
        .into_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (compile, load from cache, artifact bytes) for one module and compiler.
fn measure(
    name: &str,
    bytes: &[u8],
    compiler: CompilerKind,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let (mut compile, mut load, mut artifact) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let dir = tempfile::tempdir()?;
        let config = |dir: &Path| {
            let mut c = SandboxConfig::new(dir.to_path_buf());
            c.compiler = compiler;
            c.compile_timeout = Duration::from_secs(600);
            c
        };
        let app = Sandbox::new(config(dir.path()))?.load(name, bytes, vec![], &[])?;
        anyhow::ensure!(app.source == LoadSource::Compiled, "{name}: not compiled");
        compile.push(app.load_time);
        let again = Sandbox::new(config(dir.path()))?.load(name, bytes, vec![], &[])?;
        anyhow::ensure!(
            again.source == LoadSource::Cache,
            "{name}: not from the cache"
        );
        load.push(again.load_time);
        artifact = std::fs::read_dir(dir.path().join("artifacts"))?
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
    }
    Ok((median(compile), median(load), artifact))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let mut modules = vec![(
        "WAT hello".to_string(),
        wasmer::wat2wasm(HELLO.as_bytes())?.into_owned(),
    )];
    for path in args {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        let name = Path::new(&path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        modules.push((name, bytes));
    }
    modules.push(("generated, ~1 MB".into(), generated(1_000)));
    modules.push(("generated, ~10 MB".into(), generated(10_000)));
    println!(
        "median of {rounds} rounds; each compile into an empty cache, each load by a fresh sandbox"
    );
    println!();
    println!("| module | Wasm size | Cranelift compile | artifact | load from cache | singlepass compile | load from cache |");
    println!("|---|---|---|---|---|---|---|");
    for (name, bytes) in &modules {
        let (cc, cl, size) = measure(name, bytes, CompilerKind::Cranelift, rounds)?;
        let (sc, sl, _) = measure(name, bytes, CompilerKind::Singlepass, rounds)?;
        println!(
            "| {name} | {} | {:.1} ms | {} | {:.2} ms | {:.1} ms | {:.2} ms |",
            human(bytes.len() as u64),
            ms(cc),
            human(size),
            ms(cl),
            ms(sc),
            ms(sl)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
