//! A lean-host instance per request without what wasmer's `Instance::new_by_index` builds for
//! every instance and a run never reads: a map of every export by name (each exported function
//! and global wrapped in a new store object), a copy of the import list and a store check per
//! import. The few exports a run uses are located once per module (`Entries`), and only those
//! are wrapped per request.
//!
//! It takes the same two steps wasmer's own instantiation takes (`Artifact::instantiate`, then
//! `Artifact::finish_instantiation`) and leaves the instance in the store the same way. What
//! wasmer adds around them (the store context host calls look for, the interrupt registration)
//! matters only while guest code runs inside instantiation, and none does here: the metering
//! pass turns a module's start function into an export the sandbox calls under the request's
//! deadline (`metering::START_EXPORT`), and a module that still declares one is instantiated
//! by wasmer (`Entries::direct` is false).

use wasmer::sys::vm::{StoreHandle, VMExtern};
use wasmer::sys::Tunables;
use wasmer::{
    AsStoreMut, AsStoreRef, ExportError, ExportIndex, Extern, Function, Instance,
    InstantiationError, Memory, Module, Store, VMExternToExtern,
};

use super::metering::{self, Fuel};

/// Where a module's exports that a run uses are: found once, when the app is loaded.
#[derive(Debug, Clone)]
pub struct Entries {
    /// `_start`, or why it cannot be called (the message wasmer's lookup would give).
    start: Result<ExportIndex, String>,
    /// The start function the metering pass moved to an export.
    metering_start: Option<ExportIndex>,
    remaining: Option<ExportIndex>,
    exhausted: Option<ExportIndex>,
    bulk_max: Option<ExportIndex>,
    /// The export `memory`, else the one memory the module exports under another name.
    memory: Option<ExportIndex>,
    /// Whether `instantiate` may do without wasmer's instantiation (see the module's comment).
    direct: bool,
}

impl Entries {
    pub fn of(module: &Module) -> Self {
        let info = module.info();
        let function = |name: &str| match info.exports.get(name) {
            Some(index @ ExportIndex::Function(_)) => Ok(*index),
            Some(_) => Err(ExportError::IncompatibleType.to_string()),
            None => Err(ExportError::Missing(name.to_string()).to_string()),
        };
        let global = |name: &str| match info.exports.get(name) {
            Some(index @ ExportIndex::Global(_)) => Some(*index),
            _ => None,
        };
        let memory = match info.exports.get("memory") {
            Some(index @ ExportIndex::Memory(_)) => Some(*index),
            _ => info
                .exports
                .values()
                .find(|index| matches!(index, ExportIndex::Memory(_)))
                .copied(),
        };
        Self {
            start: function("_start"),
            metering_start: function(metering::START_EXPORT).ok(),
            remaining: global(metering::REMAINING),
            exhausted: global(metering::EXHAUSTED),
            bulk_max: global(metering::BULK_MAX),
            memory,
            direct: info.start_function.is_none() && module.sys_artifact().is_some(),
        }
    }
}

/// What a run uses of its instance.
pub struct Linked {
    /// `_start`, or why it cannot be called.
    pub start: Result<Function, String>,
    pub metering_start: Option<Function>,
    pub fuel: Fuel,
    pub memory: Option<Memory>,
    /// Where the instance keeps its remaining fuel (an i64), for the signal guard to empty
    /// (`signals::Running`).
    pub fuel_cell: Option<std::ptr::NonNull<i64>>,
}

/// Where a global keeps its value: the first 8 bytes of its 16-byte definition, which lives
/// (in the instance, for an instance's own global) as long as the global does.
fn cell_of(store: &mut impl AsStoreMut, global: &wasmer::Global) -> Option<std::ptr::NonNull<i64>> {
    match Extern::Global(global.clone()).to_vm_extern().unwrap_sys() {
        VMExtern::Global(handle) => Some(
            handle
                .get(store.objects_mut().as_sys_mut())
                .vmglobal()
                .cast::<i64>(),
        ),
        _ => None,
    }
}

impl Linked {
    /// The same, from an instance wasmer made (its exports looked up by name).
    pub fn of_instance(store: &mut impl AsStoreMut, instance: &Instance) -> Self {
        let exports = &instance.exports;
        let remaining = exports.get_global(metering::REMAINING).ok().cloned();
        let memory = exports.get_memory("memory").ok().cloned().or_else(|| {
            exports.iter().find_map(|(_, export)| match export {
                Extern::Memory(memory) => Some(memory.clone()),
                _ => None,
            })
        });
        Self {
            start: exports
                .get_function("_start")
                .cloned()
                .map_err(|e| e.to_string()),
            metering_start: exports.get_function(metering::START_EXPORT).ok().cloned(),
            fuel_cell: remaining.as_ref().and_then(|g| cell_of(store, g)),
            fuel: Fuel::new(
                remaining,
                exports.get_global(metering::EXHAUSTED).ok().cloned(),
                exports.get_global(metering::BULK_MAX).ok().cloned(),
            ),
            memory,
        }
    }
}

/// The host functions a store's instances are linked to, in the order of the module's
/// imports, with the handles wasmer's instantiation takes, made once per store.
pub struct HostImports {
    externs: Vec<Extern>,
    vm: Vec<VMExtern>,
}

impl HostImports {
    pub fn new(externs: Vec<Extern>) -> Self {
        let vm = externs
            .iter()
            .map(|import| import.to_vm_extern().unwrap_sys())
            .collect();
        Self { externs, vm }
    }
}

/// A new instance of `module` in `store`, linked to `imports` (made in the same store). Its
/// memories and tables come from `tunables`, which must be those of the store's engine
/// (`App::store_engine` sets them from the same envelope).
// wasmer's own error type, as `Instance::new_by_index` returns it (wasmer allows the same lint).
#[allow(clippy::result_large_err)]
pub fn instantiate(
    store: &mut Store,
    tunables: &dyn Tunables,
    module: &Module,
    entries: &Entries,
    imports: &HostImports,
) -> Result<Linked, InstantiationError> {
    let artifact = match module.sys_artifact() {
        Some(artifact) if entries.direct => artifact,
        _ => {
            let instance = Instance::new_by_index(store, module, &imports.externs)?;
            return Ok(Linked::of_instance(store, &instance));
        }
    };
    if !artifact.allocated() {
        return Err(InstantiationError::DifferentArchOS);
    }
    // Handles from another store would be read as this store's (wasmer checks the same).
    if imports
        .externs
        .iter()
        .any(|import| !import.is_from_store(store))
    {
        return Err(InstantiationError::DifferentStores);
    }
    let signal_handler = store.as_store_ref().signal_handler();
    // SAFETY: every import is from this store (checked above), the resolver checks their
    // number and types against the module's, and the objects are the store's own.
    let mut handle =
        unsafe { artifact.instantiate(tunables, &imports.vm, store.objects_mut().as_sys_mut()) }?;
    // SAFETY: `handle` is the instance `Artifact::instantiate` just made from this artifact.
    // With no start function, this only initializes tables and memories: no guest code runs
    // (which would need the store context wasmer installs around it).
    let finished =
        unsafe { artifact.finish_instantiation(tunables.vmconfig(), signal_handler, &mut handle) };
    let found = finished.map(|()| {
        let mut find = |index: Option<ExportIndex>| index.map(|i| handle.lookup_by_declaration(i));
        let metering_start = find(entries.metering_start);
        let remaining = find(entries.remaining);
        let exhausted = find(entries.exhausted);
        let bulk_max = find(entries.bulk_max);
        let memory = find(entries.memory);
        let start = entries
            .start
            .clone()
            .map(|i| handle.lookup_by_declaration(i));
        (
            start,
            metering_start,
            remaining,
            exhausted,
            bulk_max,
            memory,
        )
    });
    // Kept in the store whatever happened, as wasmer does: a partly initialized instance may
    // already be referred to from elsewhere in the store.
    StoreHandle::new(store.objects_mut().as_sys_mut(), handle);
    let (start, metering_start, remaining, exhausted, bulk_max, memory) = found?;
    let start = start.and_then(|e| match e.to_extern(store) {
        Extern::Function(f) => Ok(f),
        _ => Err(ExportError::IncompatibleType.to_string()),
    });
    let function = |store: &mut Store, e: Option<VMExtern>| match e.map(|e| e.to_extern(store)) {
        Some(Extern::Function(f)) => Some(f),
        _ => None,
    };
    let global = |store: &mut Store, e: Option<VMExtern>| match e.map(|e| e.to_extern(store)) {
        Some(Extern::Global(g)) => Some(g),
        _ => None,
    };
    let metering_start = function(store, metering_start);
    let remaining = global(store, remaining);
    let fuel_cell = remaining.as_ref().and_then(|g| cell_of(store, g));
    let fuel = Fuel::new(remaining, global(store, exhausted), global(store, bulk_max));
    let memory = match memory.map(|e| e.to_extern(store)) {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    };
    Ok(Linked {
        start,
        metering_start,
        fuel,
        memory,
        fuel_cell,
    })
}
