//! Compiled code lives as long as the app version that loaded it: a node that swaps versions
//! for months (or a fuzzer loading millions of modules) must not keep the code of every
//! module it ever loaded.

use std::process::Command;

use outpost::sandbox::{CompilerKind, Sandbox, SandboxConfig};

use crate::support::*;

const CHILD: &str = "OUTPOST_CODE_MEMORY_CHILD";
const NAME: &str = "engine::a_dropped_app_gives_back_its_compiled_code";

/// Bytes of this process's anonymous executable mappings: where compiled Wasm lives.
fn code_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let anonymous = f.len() == 5 && f[4] == "0";
            if !anonymous || !f[1].contains('x') {
                return None;
            }
            let (start, end) = f[0].split_once('-')?;
            Some(u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?)
        })
        .sum()
}

#[test]
fn a_dropped_app_gives_back_its_compiled_code() {
    if std::env::var_os(CHILD).is_none() {
        // In a process of its own, so that no other test's modules are counted.
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("run the test alone");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let data = TempDir::new("engine");
    let mut config = SandboxConfig::new(data.0.clone());
    config.compiler = CompilerKind::Singlepass;
    let sandbox = Sandbox::new(config).expect("sandbox");
    let module = |i: usize| {
        let wat = format!(
            r#"(module (memory (export "memory") 1) (func (export "_start") i32.const {i} drop))"#
        );
        wasmer::wat2wasm(wat.as_bytes()).expect("wat").into_owned()
    };
    for i in 0..4 {
        drop(sandbox.load("warm", &module(i), vec![], &[]).expect("load"));
    }
    let before = code_bytes();
    // Compiled, then the same modules again from the artifact cache.
    for _ in 0..2 {
        for i in 100..400 {
            let app = sandbox.load("app", &module(i), vec![], &[]).expect("load");
            drop(app);
        }
    }
    let after = code_bytes();
    assert!(
        after <= before + (64 << 10),
        "600 loads of dropped apps left {} KiB more executable memory ({before} -> {after} bytes)",
        (after.saturating_sub(before)) >> 10
    );
}
