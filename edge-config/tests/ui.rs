//! Golden files in the style of Spin's manifest tests: each invalid file sits beside the exact
//! rendered errors (`NAME.err`), each valid one beside its parsed form (`NAME.parsed`).
//! `OUTPOST_BLESS=1 cargo test -p edge-config --test ui` rewrites them; review the diff.

use std::path::{Path, PathBuf};

fn cases(dir: &str) -> Vec<PathBuf> {
    // Cargo's run-time value: right even when another checkout built this binary.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let dir = manifest_dir.join("tests/ui").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("ui dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check_golden(path: &Path, ext: &str, actual: &str, failures: &mut Vec<String>) {
    let golden = path.with_extension(ext);
    if std::env::var_os("OUTPOST_BLESS").is_some() {
        std::fs::write(&golden, actual).expect("bless");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            golden.display()
        ));
    }
}

fn parse(path: &Path) -> Result<edge_config::Config, edge_config::Diagnostics> {
    let text = std::fs::read_to_string(path).expect("read");
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    edge_config::parse(&text, &name, Path::new("/etc/outpost"))
}

#[test]
fn invalid_files_render_their_exact_errors() {
    let files = cases("invalid");
    assert!(files.len() >= 25, "only {} invalid cases", files.len());
    let mut failures = Vec::new();
    for path in files {
        match parse(&path) {
            Ok(_) => failures.push(format!("{} was accepted", path.display())),
            Err(diags) => check_golden(&path, "err", &format!("{diags}\n"), &mut failures),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn valid_files_parse_to_their_recorded_form() {
    let mut failures = Vec::new();
    for path in cases("valid") {
        match parse(&path) {
            Ok(config) => check_golden(&path, "parsed", &format!("{config:#?}\n"), &mut failures),
            Err(diags) => failures.push(format!("{} was refused:\n{diags}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
