//! Fuel: a compile-time middleware that charges every Wasm operator one unit, checked at the end
//! of each basic block, bulk memory and table operators in proportion to their length, and the
//! per-request accessors for the budget. It also takes the module's start function out of
//! instantiation, so the sandbox runs it under the request's fuel and deadline.
//! It owns only the globals and the export it adds to each module; the limit comes from the
//! caller.

use std::sync::Mutex;

use wasmer::sys::{FunctionMiddleware, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{
    AsStoreMut, ExportIndex, Global, GlobalInit, GlobalType, LocalFunctionIndex, ModuleInfo,
    Mutability, Type, Value,
};
use wasmer_types::MiddlewareError;

/// Part of the engine fingerprint: bump when the cost model, the globals or the exports change.
pub const FUEL_MODEL: &str = "fuel-v3-bulk-by-length-start-exported-bulk-max";
pub const REMAINING: &str = "outpost_fuel_remaining";
pub const EXHAUSTED: &str = "outpost_fuel_exhausted";
/// The most one bulk operator may cost (in fuel); a dearer one stops the guest before it runs
/// (`EXHAUSTED` reads `BULK_STOPPED`). Unlimited unless the sandbox lowers it for a run.
pub const BULK_MAX: &str = "outpost_bulk_max";
/// `EXHAUSTED` after the guest ran out of fuel.
const OUT_OF_FUEL: i32 = 1;
/// `EXHAUSTED` after a bulk operator dearer than `BULK_MAX` stopped the guest.
const BULK_STOPPED: i32 = 2;
/// The module's start function, exported under this name instead of run by instantiation.
pub const START_EXPORT: &str = "outpost_start";
/// Fuel for anything that runs before the request's budget is set: nothing should (the start
/// function no longer runs at instantiation), so the initial budget is zero.
const INITIAL_FUEL: i64 = 0;
/// Bulk memory operators cost one unit per this many bytes (2^4 = 16: about what a plain
/// loop would cost per byte moved, so a fill is no cheaper than the loop it replaces per unit
/// of time), table operators one unit per element.
const MEMORY_BYTES_SHIFT: i64 = 4;

/// The fuel middleware. One value serves many modules because the sandbox compiles one
/// module at a time (its compile lock); the global indices are those of the module in flight.
#[derive(Debug, Default)]
pub struct FuelMetering {
    globals: Mutex<Option<Globals>>,
}

/// The indices of the globals the middleware added to the module being compiled.
#[derive(Debug, Clone, Copy)]
struct Globals {
    remaining: u32,
    exhausted: u32,
    /// Holds a bulk operator's length while it is charged.
    scratch: u32,
    bulk_max: u32,
}

impl ModuleMiddleware for FuelMetering {
    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let globals = self
            .globals
            .lock()
            .ok()
            .and_then(|g| *g)
            .unwrap_or(Globals {
                remaining: u32::MAX,
                exhausted: u32::MAX,
                scratch: u32::MAX,
                bulk_max: u32::MAX,
            });
        Box::new(FunctionFuel {
            globals,
            block_cost: 0,
        })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let remaining = info
            .globals
            .push(GlobalType::new(Type::I64, Mutability::Var));
        info.global_initializers
            .push(GlobalInit::I64Const(INITIAL_FUEL));
        info.exports
            .insert(REMAINING.to_string(), ExportIndex::Global(remaining));
        let exhausted = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports
            .insert(EXHAUSTED.to_string(), ExportIndex::Global(exhausted));
        let scratch = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        let bulk_max = info
            .globals
            .push(GlobalType::new(Type::I64, Mutability::Var));
        // -1: the largest unsigned cost, no limit.
        info.global_initializers.push(GlobalInit::I64Const(-1));
        info.exports
            .insert(BULK_MAX.to_string(), ExportIndex::Global(bulk_max));
        // The start function would run inside instantiation, before the request's fuel is
        // set and its deadline armed; the sandbox calls it through this export instead.
        if let Some(start) = info.start_function.take() {
            info.exports
                .insert(START_EXPORT.to_string(), ExportIndex::Function(start));
        }
        let mut globals = self
            .globals
            .lock()
            .map_err(|_| MiddlewareError::new("fuel", "metering state poisoned"))?;
        *globals = Some(Globals {
            remaining: remaining.as_u32(),
            exhausted: exhausted.as_u32(),
            scratch: scratch.as_u32(),
            bulk_max: bulk_max.as_u32(),
        });
        Ok(())
    }
}

#[derive(Debug)]
struct FunctionFuel {
    globals: Globals,
    block_cost: u64,
}

/// For a bulk operator, how its length (the i32 on top of the stack) converts to fuel: the
/// right shift applied to it.
fn bulk_shift(op: &Operator) -> Option<i64> {
    match op {
        Operator::MemoryFill { .. } | Operator::MemoryCopy { .. } | Operator::MemoryInit { .. } => {
            Some(MEMORY_BYTES_SHIFT)
        }
        Operator::TableFill { .. } | Operator::TableCopy { .. } | Operator::TableInit { .. } => {
            Some(0)
        }
        _ => None,
    }
}

/// Operators that end a basic block (a branch leaves it, or another branch can land after it).
fn ends_block(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Loop { .. }
            | Operator::End
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::BrIf { .. }
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::Return
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
    )
}

impl<'a> FunctionMiddleware<'a> for FunctionFuel {
    fn feed(
        &mut self,
        op: Operator<'a>,
        state: &mut MiddlewareReaderState<'a>,
    ) -> Result<(), MiddlewareError> {
        // Charge the operator before the check so a call cannot run ahead of its own cost.
        self.block_cost += 1;
        let g = self.globals;
        if ends_block(&op) {
            let cost = self.block_cost as i64;
            charge(state, g, &[Operator::I64Const { value: cost }]);
            self.block_cost = 0;
        }
        if let Some(shift) = bulk_shift(&op) {
            // The length is the operand on top of the stack: keep a copy in the scratch global,
            // stop the guest if the operator costs more than `BULK_MAX`, and charge it, all
            // before the operator runs.
            state.extend([
                Operator::GlobalSet {
                    global_index: g.scratch,
                },
                Operator::GlobalGet {
                    global_index: g.scratch,
                },
            ]);
            let cost = [
                Operator::GlobalGet {
                    global_index: g.scratch,
                },
                Operator::I64ExtendI32U,
                Operator::I64Const { value: shift },
                Operator::I64ShrU,
            ];
            state.extend(cost.iter().cloned());
            state.extend([
                Operator::GlobalGet {
                    global_index: g.bulk_max,
                },
                Operator::I64GtU,
                Operator::If {
                    blockty: BlockType::Empty,
                },
                Operator::I32Const {
                    value: BULK_STOPPED,
                },
                Operator::GlobalSet {
                    global_index: g.exhausted,
                },
                Operator::Unreachable,
                Operator::End,
            ]);
            charge(state, g, &cost);
        }
        state.push_operator(op);
        Ok(())
    }
}

/// Emit: if remaining < cost { exhausted = OUT_OF_FUEL; unreachable } remaining -= cost, where `cost` is
/// the operators that push the (i64) cost.
fn charge<'a>(state: &mut MiddlewareReaderState<'a>, g: Globals, cost: &[Operator<'a>]) {
    state.push_operator(Operator::GlobalGet {
        global_index: g.remaining,
    });
    state.extend(cost.iter().cloned());
    state.extend([
        Operator::I64LtU,
        Operator::If {
            blockty: BlockType::Empty,
        },
        Operator::I32Const { value: OUT_OF_FUEL },
        Operator::GlobalSet {
            global_index: g.exhausted,
        },
        Operator::Unreachable,
        Operator::End,
        Operator::GlobalGet {
            global_index: g.remaining,
        },
    ]);
    state.extend(cost.iter().cloned());
    state.extend([
        Operator::I64Sub,
        Operator::GlobalSet {
            global_index: g.remaining,
        },
    ]);
}

/// An instance's fuel globals.
pub struct Fuel {
    remaining: Option<Global>,
    exhausted: Option<Global>,
    bulk_max: Option<Global>,
}

impl Fuel {
    pub fn new(
        remaining: Option<Global>,
        exhausted: Option<Global>,
        bulk_max: Option<Global>,
    ) -> Self {
        Self {
            remaining,
            exhausted,
            bulk_max,
        }
    }

    /// Give the instance a fresh budget.
    pub fn set(&self, store: &mut impl AsStoreMut, fuel: u64) -> bool {
        self.remaining
            .as_ref()
            .is_some_and(|g| g.set(store, Value::I64(fuel as i64)).is_ok())
    }

    /// Stop the guest before any bulk operator costing more than `max`.
    pub fn limit_bulk(&self, store: &mut impl AsStoreMut, max: u64) -> bool {
        self.bulk_max
            .as_ref()
            .is_some_and(|g| g.set(store, Value::I64(max as i64)).is_ok())
    }

    fn stopped(&self, store: &mut impl AsStoreMut) -> i32 {
        self.exhausted
            .as_ref()
            .and_then(|g| g.get(store).i32())
            .unwrap_or(0)
    }

    /// Fuel left, and whether the guest ran out.
    pub fn left(&self, store: &mut impl AsStoreMut) -> (u64, bool) {
        let exhausted = self.stopped(store) == OUT_OF_FUEL;
        let remaining = self
            .remaining
            .as_ref()
            .and_then(|g| g.get(store).i64())
            .unwrap_or(0) as u64;
        (if exhausted { 0 } else { remaining }, exhausted)
    }

    /// Whether a bulk operator over the `limit_bulk` stopped the guest.
    pub fn bulk_stopped(&self, store: &mut impl AsStoreMut) -> bool {
        self.stopped(store) == BULK_STOPPED
    }
}
