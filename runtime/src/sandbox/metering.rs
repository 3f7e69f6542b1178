//! Fuel: a compile-time middleware that charges every Wasm operator one unit, checked at the end
//! of each basic block, and the per-request accessors for the budget.
//! It owns only the two globals it adds to each module; the limit itself comes from the caller.

use std::sync::Mutex;

use wasmer::sys::{FunctionMiddleware, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{
    AsStoreMut, ExportIndex, GlobalInit, GlobalType, Instance, LocalFunctionIndex, ModuleInfo,
    Mutability, Type, Value,
};
use wasmer_types::MiddlewareError;

/// Part of the engine fingerprint: bump when the cost model or the globals change.
pub const FUEL_MODEL: &str = "fuel-v1-unit-per-op";
const REMAINING: &str = "outpost_fuel_remaining";
const EXHAUSTED: &str = "outpost_fuel_exhausted";
/// Budget for a module's start function, which runs before a request's budget can be set.
pub const START_FUEL: u64 = 10_000_000;

/// The fuel middleware. One value serves many modules because the sandbox compiles one
/// module at a time (its compile lock); the global indices are those of the module in flight.
#[derive(Debug, Default)]
pub struct FuelMetering {
    globals: Mutex<Option<(u32, u32)>>,
}

impl ModuleMiddleware for FuelMetering {
    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let (remaining, exhausted) = self
            .globals
            .lock()
            .ok()
            .and_then(|g| *g)
            .unwrap_or((u32::MAX, u32::MAX));
        Box::new(FunctionFuel {
            remaining,
            exhausted,
            block_cost: 0,
        })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let remaining = info
            .globals
            .push(GlobalType::new(Type::I64, Mutability::Var));
        info.global_initializers
            .push(GlobalInit::I64Const(START_FUEL as i64));
        info.exports
            .insert(REMAINING.to_string(), ExportIndex::Global(remaining));
        let exhausted = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports
            .insert(EXHAUSTED.to_string(), ExportIndex::Global(exhausted));
        let mut globals = self
            .globals
            .lock()
            .map_err(|_| MiddlewareError::new("fuel", "metering state poisoned"))?;
        *globals = Some((remaining.as_u32(), exhausted.as_u32()));
        Ok(())
    }
}

#[derive(Debug)]
struct FunctionFuel {
    remaining: u32,
    exhausted: u32,
    block_cost: u64,
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
        if ends_block(&op) {
            let cost = self.block_cost as i64;
            state.extend([
                Operator::GlobalGet {
                    global_index: self.remaining,
                },
                Operator::I64Const { value: cost },
                Operator::I64LtU,
                Operator::If {
                    blockty: BlockType::Empty,
                },
                Operator::I32Const { value: 1 },
                Operator::GlobalSet {
                    global_index: self.exhausted,
                },
                Operator::Unreachable,
                Operator::End,
                Operator::GlobalGet {
                    global_index: self.remaining,
                },
                Operator::I64Const { value: cost },
                Operator::I64Sub,
                Operator::GlobalSet {
                    global_index: self.remaining,
                },
            ]);
            self.block_cost = 0;
        }
        state.push_operator(op);
        Ok(())
    }
}

/// Give the instance a fresh budget.
pub fn set_fuel(store: &mut impl AsStoreMut, instance: &Instance, fuel: u64) -> bool {
    instance
        .exports
        .get_global(REMAINING)
        .map(|g| g.set(store, Value::I64(fuel as i64)).is_ok())
        .unwrap_or(false)
}

/// Fuel left, and whether the guest ran out.
pub fn fuel_left(store: &mut impl AsStoreMut, instance: &Instance) -> (u64, bool) {
    let exhausted = instance
        .exports
        .get_global(EXHAUSTED)
        .ok()
        .and_then(|g| g.get(store).i32())
        .unwrap_or(0)
        != 0;
    let remaining = instance
        .exports
        .get_global(REMAINING)
        .ok()
        .and_then(|g| g.get(store).i64())
        .unwrap_or(0) as u64;
    (if exhausted { 0 } else { remaining }, exhausted)
}
