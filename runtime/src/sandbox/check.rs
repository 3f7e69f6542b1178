//! Admission of a module before any compile: a pure pass over the bytes that refuses what is
//! not a WASI command outpost can run, naming the cause. It never compiles or allocates more
//! than the module's own import list.

use wasmer::wasmparser::{MemoryType, Parser, Payload, TableType, TypeRef, ValType};

use super::http_v1;
use super::wasi::{signature_of, WASI_P1};

/// How the module will be hosted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Every import is a WASI preview 1 call the lean in-process host implements.
    Lean,
    /// The module needs wasmer-wasix (WASIX calls, threads with an imported memory).
    Wasix,
}

/// Which host an app asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostChoice {
    /// Lean when every import allows it, wasix when the module needs it.
    #[default]
    Auto,
    Lean,
    Wasix,
}

/// Import namespaces only the wasix host provides.
const WASIX_MODULES: &[&str] = &["wasix_32v1", "wasix_64v1", "wasi"];

/// Which host module an import comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportModule {
    Wasi,
    /// `outpost_http_v1`: subrequests to the app's backends.
    HttpV1,
}

/// What the admission check learned about an acceptable module.
#[derive(Debug, Clone)]
pub struct ModuleShape {
    pub host: HostKind,
    /// Imported function names of the lean host, in import order.
    pub imports: Vec<(ImportModule, String)>,
    /// Bytes instantiation writes before any Wasm runs: data segments, and tables' initial
    /// elements and element segments at 16 bytes an element.
    pub init_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("the module is empty (0 bytes)")]
    Empty,
    #[error("the module is {size} bytes, over the {cap}-byte module size limit")]
    TooLarge { size: usize, cap: usize },
    #[error("not a WebAssembly module: it does not start with the \\0asm magic bytes")]
    NotWasm,
    #[error("the WebAssembly module is malformed or truncated: {0}")]
    Malformed(String),
    #[error(
        "it is a WebAssembly component, but outpost runs core modules built for wasm32-wasip1"
    )]
    Component,
    #[error("not a WASI command: it exports no `_start` function (a reactor or library module?); build it as a binary for wasm32-wasip1")]
    NoStart,
    #[error("imports `{module}`.`{name}`, which outpost does not provide (guests may import only wasi_snapshot_preview1 functions, or WASIX ones on the wasix host)")]
    ForeignImport { module: String, name: String },
    #[error("imports `{module}`.`{name}`, which only the wasix host provides, but the app asks for the lean host")]
    NeedsWasix { module: String, name: String },
    #[error(
        "imports `{module}`.`{name}` with signature {found}, but outpost provides it as {expected}"
    )]
    WrongSignature {
        module: String,
        name: String,
        found: String,
        expected: String,
    },
    #[error("uses {0}, which outpost does not run: a request runs on one thread with one linear memory of at most its tenant's memory limit; rebuild the module without it")]
    Unsupported(&'static str),
    #[error("imports `outpost_http_v1`.`{0}`, but the app declares no backends; list the backends it may reach in its [[app]] entry (backends = [\"NAME\"])")]
    UndeclaredOutbound(String),
    #[error("imports `outpost_http_v1`.`{0}` and needs the wasix host; subrequests are provided on the lean host only")]
    OutboundNeedsLean(String),
    #[error("declares the function type {found}, which wasmer cannot tell apart from the wasix host's function type {host} (both hash to {hash:#010x}); change the type, for example reorder or add a parameter")]
    SignatureCollision {
        found: String,
        host: String,
        hash: u32,
    },
    #[error(
        "the wasix host's function types could not be read to check the module's against them: {0}"
    )]
    HostTypes(String),
    #[error("imports a {kind} `{module}`.`{name}`; outpost provides only functions")]
    NonFunctionImport {
        kind: &'static str,
        module: String,
        name: String,
    },
}

const WASI_MODULE: &str = "wasi_snapshot_preview1";

fn sig_string(params: &[ValType], results: &[ValType]) -> String {
    let list = |tys: &[ValType]| {
        tys.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

/// Names of imports that start threads (wasi-threads, WASIX): refused, as outpost runs each
/// request on one thread under one deadline and one memory budget.
fn spawns_threads(name: &str) -> bool {
    name == "thread-spawn" || name.starts_with("thread_spawn")
}

/// Names of WASIX imports that run or load other code: processes (`proc_spawn*`,
/// `proc_exec*`, `proc_fork*`), dynamic libraries (`dlopen`, `dlsym`), closures (which wasix
/// builds as new modules) and green threads (`context_*`, each with a stack of its own). wasix
/// compiles what they load in its runtime's engine, shared by every tenant, outside the
/// request's fuel, deadline and memory limit; what they would run escapes them too.
fn loads_code(name: &str) -> Option<&'static str> {
    let prefixed = |prefix: &str| name.starts_with(prefix);
    if prefixed("proc_spawn") || prefixed("proc_exec") || prefixed("proc_fork") {
        Some("other processes (a proc_spawn, proc_exec or proc_fork import)")
    } else if name == "dlopen" || name == "dlsym" {
        Some("dynamic loading (a dlopen or dlsym import)")
    } else if prefixed("closure_") {
        Some("closures (a closure_* import: wasix compiles each as a new module)")
    } else if prefixed("context_") {
        Some("green threads (a context_* import: each context has a stack of its own)")
    } else {
        None
    }
}

/// A memory outpost can host: 32-bit, not shared (shared memories exist for threads, and
/// their waits are host waits no deadline interrupts).
fn check_memory(ty: &MemoryType) -> Result<(), CheckError> {
    if ty.memory64 {
        return Err(CheckError::Unsupported("a 64-bit memory (memory64)"));
    }
    if ty.shared {
        return Err(CheckError::Unsupported("a shared memory (threads)"));
    }
    Ok(())
}

fn check_table(ty: &TableType) -> Result<(), CheckError> {
    if ty.table64 {
        return Err(CheckError::Unsupported("a 64-bit table (memory64)"));
    }
    Ok(())
}

/// Check a module's bytes for an app that declares no backends.
pub fn check_module(
    bytes: &[u8],
    max_size: usize,
    choice: HostChoice,
) -> Result<ModuleShape, CheckError> {
    check_module_with(bytes, max_size, choice, false)
}

/// Check a module's bytes. Cheap: it reads section headers, the type and import sections and
/// the export names; function bodies are left to the compiler's validation. `outbound`: the
/// app declares backends, so it may import `outpost_http_v1`.
pub fn check_module_with(
    bytes: &[u8],
    max_size: usize,
    choice: HostChoice,
    outbound: bool,
) -> Result<ModuleShape, CheckError> {
    if bytes.is_empty() {
        return Err(CheckError::Empty);
    }
    if bytes.len() > max_size {
        return Err(CheckError::TooLarge {
            size: bytes.len(),
            cap: max_size,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CheckError::NotWasm);
    }
    let malformed = |e: wasmer::wasmparser::BinaryReaderError| CheckError::Malformed(e.to_string());
    let mut types: Vec<(Vec<ValType>, Vec<ValType>)> = Vec::new();
    let mut imports = Vec::new();
    let mut has_start = false;
    let mut saw_end = false;
    let mut needs_wasix: Option<(String, String)> = None;
    let mut memories = 0u32;
    let mut http_import: Option<String> = None;
    let mut init_bytes: u64 = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::Version {
                encoding: wasmer::wasmparser::Encoding::Component,
                ..
            } => {
                return Err(CheckError::Component);
            }
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.map_err(malformed)?;
                    types.push((ty.params().to_vec(), ty.results().to_vec()));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(malformed)?;
                    let (module, name) = (import.module.to_string(), import.name.to_string());
                    let type_index = match import.ty {
                        TypeRef::Func(i) | TypeRef::FuncExact(i) => i,
                        // A module linked to import its memory (wasix toolchains).
                        TypeRef::Memory(ty) if module == "env" && name == "memory" => {
                            check_memory(&ty)?;
                            memories += 1;
                            needs_wasix.get_or_insert((module, name));
                            continue;
                        }
                        TypeRef::Memory(_) => {
                            return Err(CheckError::NonFunctionImport {
                                kind: "memory",
                                module,
                                name,
                            })
                        }
                        TypeRef::Table(_) => {
                            return Err(CheckError::NonFunctionImport {
                                kind: "table",
                                module,
                                name,
                            })
                        }
                        TypeRef::Global(_) => {
                            return Err(CheckError::NonFunctionImport {
                                kind: "global",
                                module,
                                name,
                            })
                        }
                        TypeRef::Tag(_) => {
                            return Err(CheckError::NonFunctionImport {
                                kind: "tag",
                                module,
                                name,
                            })
                        }
                    };
                    if spawns_threads(&name) {
                        return Err(CheckError::Unsupported("threads (a thread-spawn import)"));
                    }
                    if let Some(what) = loads_code(&name) {
                        return Err(CheckError::Unsupported(what));
                    }
                    if WASIX_MODULES.contains(&module.as_str()) {
                        // wasix checks these itself when it links the instance.
                        needs_wasix.get_or_insert((module, name));
                        continue;
                    }
                    let (kind, wanted) = if module == http_v1::MODULE {
                        if !outbound {
                            return Err(CheckError::UndeclaredOutbound(name));
                        }
                        let Some(sig) = http_v1::signature_of(&name) else {
                            return Err(CheckError::ForeignImport { module, name });
                        };
                        http_import.get_or_insert(name.clone());
                        (ImportModule::HttpV1, sig)
                    } else if module == WASI_MODULE {
                        let Some(sig) = signature_of(&name) else {
                            needs_wasix.get_or_insert((module, name));
                            continue;
                        };
                        (ImportModule::Wasi, sig)
                    } else {
                        return Err(CheckError::ForeignImport { module, name });
                    };
                    let (want_params, want_results) = wanted;
                    let (params, results) = types.get(type_index as usize).ok_or_else(|| {
                        CheckError::Malformed(format!(
                            "import {name} names unknown type {type_index}"
                        ))
                    })?;
                    if params.as_slice() != want_params.as_slice()
                        || results.as_slice() != want_results.as_slice()
                    {
                        return Err(CheckError::WrongSignature {
                            module,
                            name,
                            found: sig_string(params, results),
                            expected: sig_string(&want_params, &want_results),
                        });
                    }
                    imports.push((kind, name));
                }
            }
            Payload::MemorySection(reader) => {
                for ty in reader {
                    check_memory(&ty.map_err(malformed)?)?;
                    memories += 1;
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let ty = table.map_err(malformed)?.ty;
                    check_table(&ty)?;
                    init_bytes = init_bytes.saturating_add(ty.initial.saturating_mul(16));
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    init_bytes =
                        init_bytes.saturating_add(data.map_err(malformed)?.data.len() as u64);
                }
            }
            Payload::ElementSection(reader) => {
                for element in reader {
                    let count = match element.map_err(malformed)?.items {
                        wasmer::wasmparser::ElementItems::Functions(r) => r.count(),
                        wasmer::wasmparser::ElementItems::Expressions(_, r) => r.count(),
                    };
                    init_bytes = init_bytes.saturating_add(u64::from(count).saturating_mul(16));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(malformed)?;
                    if export.name == "_start"
                        && export.kind == wasmer::wasmparser::ExternalKind::Func
                    {
                        has_start = true;
                    }
                }
            }
            // Every exception thrown is an object in the request's store, with its payload and
            // a native backtrace as deep as the guest's stack, kept until the request ends:
            // host memory the tenant's memory limit does not see (wasmer has no hook to charge
            // it). A throw needs a tag, declared here or imported (the import section, above,
            // refuses imported tags), so without tags no exception exists.
            Payload::TagSection(_) => {
                return Err(CheckError::Unsupported(
                    "exception handling (a tag section): each exception thrown holds host memory outside the tenant's memory limit until the request ends",
                ));
            }
            Payload::End(_) => saw_end = true,
            _ => {}
        }
    }
    if !saw_end {
        return Err(CheckError::Malformed("unexpected end of module".into()));
    }
    if memories > 1 {
        // The memory limit is one budget per instance; one memory keeps every host call's
        // view of the guest unambiguous.
        return Err(CheckError::Unsupported(
            "more than one memory (multi-memory)",
        ));
    }
    if !has_start {
        return Err(CheckError::NoStart);
    }
    debug_assert!(imports
        .iter()
        .all(|(m, n)| *m == ImportModule::HttpV1 || WASI_P1.iter().any(|f| f.0 == n)));
    let host = match (choice, needs_wasix) {
        (HostChoice::Lean, Some((module, name))) => {
            return Err(CheckError::NeedsWasix { module, name })
        }
        (HostChoice::Lean, None) | (HostChoice::Auto, None) => HostKind::Lean,
        (HostChoice::Wasix, _) | (HostChoice::Auto, Some(_)) => HostKind::Wasix,
    };
    if let (HostKind::Wasix, Some(name)) = (host, http_import) {
        return Err(CheckError::OutboundNeedsLean(name));
    }
    Ok(ModuleShape {
        host,
        imports,
        init_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(src: &str) -> Vec<u8> {
        wasmer::wat2wasm(src.as_bytes()).expect("wat").into_owned()
    }

    #[test]
    fn refuses_each_bad_shape_with_its_cause() {
        assert_eq!(
            check_module(b"", 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::Empty
        );
        assert_eq!(
            check_module(b"hello world, not wasm", 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::NotWasm
        );
        let good = wat(r#"(module (func (export "_start")))"#);
        assert!(check_module(&good, 1 << 20, HostChoice::Auto).is_ok());
        assert!(matches!(
            check_module(&good[..good.len() - 3], 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::Malformed(_)
        ));
        assert_eq!(
            check_module(&good, 4, HostChoice::Auto).unwrap_err(),
            CheckError::TooLarge {
                size: good.len(),
                cap: 4
            }
        );
        let reactor = wat(r#"(module (func (export "_initialize")))"#);
        assert_eq!(
            check_module(&reactor, 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::NoStart
        );
        let foreign = wat(
            r#"(module (import "env" "open_socket" (func (param i32) (result i32))) (func (export "_start")))"#,
        );
        assert_eq!(
            check_module(&foreign, 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::ForeignImport {
                module: "env".into(),
                name: "open_socket".into()
            }
        );
        let wasix = wat(
            r#"(module (import "wasix_32v1" "getcwd" (func (param i32 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#,
        );
        assert_eq!(
            check_module(&wasix, 1 << 20, HostChoice::Auto)
                .expect("wasix")
                .host,
            HostKind::Wasix
        );
        assert!(matches!(
            check_module(&wasix, 1 << 20, HostChoice::Lean).unwrap_err(),
            CheckError::NeedsWasix { .. }
        ));
        assert_eq!(
            check_module(&good, 1 << 20, HostChoice::Wasix)
                .expect("forced")
                .host,
            HostKind::Wasix
        );
        let wrong = wat(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32))) (func (export "_start")))"#,
        );
        let err = check_module(&wrong, 1 << 20, HostChoice::Auto).unwrap_err();
        assert!(err.to_string().contains("fd_write"), "{err}");
    }

    #[test]
    fn imports_that_run_or_load_other_code_are_refused() {
        for (module, name) in [
            ("wasix_32v1", "proc_spawn3"),
            ("wasix_32v1", "proc_exec"),
            ("wasix_64v1", "proc_fork"),
            ("wasix_32v1", "dlopen"),
            ("wasi", "dlsym"),
            ("wasix_32v1", "closure_prepare"),
            ("wasix_32v1", "context_create"),
        ] {
            let bytes = wat(&format!(
                r#"(module (import "{module}" "{name}" (func (param i32) (result i32))) (func (export "_start")))"#
            ));
            for host in [HostChoice::Auto, HostChoice::Wasix] {
                assert!(
                    matches!(
                        check_module(&bytes, 1 << 20, host),
                        Err(CheckError::Unsupported(_))
                    ),
                    "{module}.{name} on {host:?}"
                );
            }
        }
        let getpid = wat(
            r#"(module (import "wasix_32v1" "proc_id" (func (param i32) (result i32))) (func (export "_start")))"#,
        );
        assert!(check_module(&getpid, 1 << 20, HostChoice::Auto).is_ok());
    }

    #[test]
    fn exception_handling_is_refused_on_every_host() {
        let throws = wat(r#"(module
            (tag $t (param i64))
            (func (export "_start")
              (block $caught (result i64)
                (try_table (catch $t $caught) (throw $t (i64.const 1)))
                unreachable)
              drop))"#);
        let imported =
            wat(r#"(module (import "env" "t" (tag (param i32))) (func (export "_start")))"#);
        for host in [HostChoice::Auto, HostChoice::Lean, HostChoice::Wasix] {
            let err = check_module(&throws, 1 << 20, host).unwrap_err();
            assert!(
                matches!(err, CheckError::Unsupported(what) if what.starts_with("exception handling")),
                "{host:?}: {err}"
            );
            assert!(
                matches!(
                    check_module(&imported, 1 << 20, host).unwrap_err(),
                    CheckError::NonFunctionImport { kind: "tag", .. }
                        | CheckError::ForeignImport { .. }
                ),
                "{host:?}: an imported tag"
            );
        }
    }

    #[test]
    fn subrequest_imports_need_declared_backends_and_the_lean_host() {
        let fetcher = wat(
            r#"(module (import "outpost_http_v1" "send" (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#,
        );
        assert_eq!(
            check_module(&fetcher, 1 << 20, HostChoice::Auto).unwrap_err(),
            CheckError::UndeclaredOutbound("send".into())
        );
        let shape = check_module_with(&fetcher, 1 << 20, HostChoice::Auto, true).expect("declared");
        assert_eq!(shape.host, HostKind::Lean);
        assert_eq!(
            shape.imports,
            vec![(ImportModule::HttpV1, "send".to_string())]
        );
        assert_eq!(
            check_module_with(&fetcher, 1 << 20, HostChoice::Wasix, true).unwrap_err(),
            CheckError::OutboundNeedsLean("send".into())
        );
        let wrong = wat(
            r#"(module (import "outpost_http_v1" "send" (func (param i32) (result i32))) (func (export "_start")))"#,
        );
        assert!(matches!(
            check_module_with(&wrong, 1 << 20, HostChoice::Auto, true).unwrap_err(),
            CheckError::WrongSignature { .. }
        ));
        let unknown = wat(
            r#"(module (import "outpost_http_v1" "connect_anywhere" (func (param i32) (result i32))) (func (export "_start")))"#,
        );
        assert!(matches!(
            check_module_with(&unknown, 1 << 20, HostChoice::Auto, true).unwrap_err(),
            CheckError::ForeignImport { .. }
        ));
    }
}
