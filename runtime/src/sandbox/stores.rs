//! A lean app's stores, kept between its requests.
//!
//! A request still gets a fresh instance: new memories, tables and globals, nothing left of
//! the last request. What it no longer gets is a new store around that instance: the store,
//! its host state and its host functions (one per import, each a store object that registers
//! its signature with the engine) are made once per app, tenant envelope and thread of work,
//! and rolled back after each request to what they were before its instance was made.
//!
//! Rolling back drops every object the request added (its instance, memories, tables,
//! globals, exported functions, tags, exceptions) in the order dropping the whole store would,
//! so the pooled memory goes back to its pool (and is scrubbed) exactly as before. Objects are
//! only ever appended to a store, and the ones below the mark (the host functions and their
//! environment) never point at anything above it. A handle the request took (its exports,
//! its memory in the host state) is dropped with it: the rollback happens after the run has
//! handed everything it produced elsewhere, and the host state is emptied first.
//!
//! A store whose run the watchdog interrupted is never kept: the interrupt is a signal sent
//! to the thread for the store's id, and a late one must not land in the next request's run.
//! Nor is one whose instantiation failed or whose run panicked (it is dropped on the way out).
//!
//! What a kept store holds between requests: its host functions, an empty host state, the
//! app version's engine (its compiled code) and the envelope's tunables. A thread keeps at most
//! `KEEP`; those of an app version no longer loaded go when the thread next takes or keeps a
//! store, or exits (guest threads exit after 30 s idle), so at most `KEEP` versions per thread
//! outlive their last request.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use wasmer::sys::vm::{
    StoreObject, StoreObjects, VMExceptionObj, VMExternObj, VMFunction, VMFunctionEnvironment,
    VMGlobal, VMInstance, VMMemory, VMTable, VMTag,
};
use wasmer::{AsStoreMut, Engine, Extern, FunctionEnv, Store};

use super::instantiate::HostImports;
use super::wasi::{Constructor, HostState};

/// At most this many idle stores are kept per thread, of any apps; the least recently used
/// goes first. Each holds a few small allocations and its app's engine, never a memory.
const KEEP: usize = 8;

/// Room kept in each of a store's object lists beyond what it holds between requests.
const SLACK: usize = 64;

/// A store with the host functions of one app linked, ready for its next instance.
pub struct Kept {
    /// The app whose host functions are linked (`Stores::id`), and whether it is still loaded.
    app: u64,
    alive: Weak<()>,
    /// The envelope whose tunables the store's engine carries.
    envelope: u64,
    pub store: Store,
    pub env: FunctionEnv<HostState>,
    /// The host functions, in the order of the module's imports.
    pub imports: HostImports,
    mark: Mark,
}

impl Kept {
    /// A new store of the app `of`, for `engine` (the app's, with the envelope's tunables),
    /// with one host function per constructor in `link`, sharing the host state `vacant` until
    /// a request puts its own in.
    pub fn new(
        of: &Stores,
        envelope: u64,
        engine: Engine,
        link: &[Constructor],
        vacant: HostState,
    ) -> Self {
        let mut store = Store::new(engine);
        let env = FunctionEnv::new(&mut store, vacant);
        let imports = HostImports::new(
            link.iter()
                .map(|ctor| Extern::Function(ctor(&mut store, &env)))
                .collect(),
        );
        let mark = Mark::of(store.objects_mut().as_sys_mut());
        Self {
            app: of.id,
            alive: Arc::downgrade(&of.alive),
            envelope,
            store,
            env,
            imports,
            mark,
        }
    }

    /// Drop everything a request added to the store, its host state first (replaced by
    /// `vacant`). Returns the request's host state.
    pub fn roll_back(&mut self, vacant: HostState) -> HostState {
        let state = std::mem::replace(self.env.as_mut(&mut self.store), vacant);
        self.mark.roll_back(self.store.objects_mut().as_sys_mut());
        state
    }
}

/// How many objects of each kind a store held when its host functions were linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    memories: usize,
    tables: usize,
    globals: usize,
    functions: usize,
    instances: usize,
    extern_objs: usize,
    exceptions: usize,
    tags: usize,
    function_environments: usize,
}

impl Mark {
    fn of(objects: &StoreObjects) -> Self {
        fn len<T: StoreObject>(objects: &StoreObjects) -> usize {
            T::list(objects).len()
        }
        Self {
            memories: len::<VMMemory>(objects),
            tables: len::<VMTable>(objects),
            globals: len::<VMGlobal>(objects),
            functions: len::<VMFunction>(objects),
            instances: len::<VMInstance>(objects),
            extern_objs: len::<VMExternObj>(objects),
            exceptions: len::<VMExceptionObj>(objects),
            tags: len::<VMTag>(objects),
            function_environments: len::<VMFunctionEnvironment>(objects),
        }
    }

    /// Truncate each list back to the mark, in the order wasmer drops a whole store's lists.
    fn roll_back(&self, objects: &mut StoreObjects) {
        // Each list is also given back the room a request grew it by (a guest throwing
        // exceptions in a loop adds one object per throw), beyond a little slack.
        fn cut<T: StoreObject>(objects: &mut StoreObjects, to: usize) {
            let list = T::list_mut(objects);
            list.truncate(to);
            list.shrink_to(to + SLACK);
        }
        cut::<VMMemory>(objects, self.memories);
        cut::<VMTable>(objects, self.tables);
        cut::<VMGlobal>(objects, self.globals);
        cut::<VMFunction>(objects, self.functions);
        cut::<VMInstance>(objects, self.instances);
        cut::<VMExternObj>(objects, self.extern_objs);
        cut::<VMExceptionObj>(objects, self.exceptions);
        cut::<VMTag>(objects, self.tags);
        cut::<VMFunctionEnvironment>(objects, self.function_environments);
    }
}

/// Which app a kept store belongs to: an id, and whether the app is still loaded.
pub struct Stores {
    id: u64,
    alive: Arc<()>,
}

impl Default for Stores {
    fn default() -> Self {
        static APPS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: APPS.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        }
    }
}

thread_local! {
    /// This thread's idle stores, least recently used first. A store never leaves the thread
    /// that made it (wasmer's stores are not `Send`).
    static IDLE: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

impl Stores {
    /// An idle store of this app made for `envelope` on this thread, if one is kept.
    pub fn take(&self, envelope: u64) -> Option<Kept> {
        let (found, stale) = IDLE.with(|idle| {
            let mut idle = idle.try_borrow_mut().ok()?;
            let found = idle
                .iter()
                .rposition(|kept| kept.app == self.id && kept.envelope == envelope)
                .map(|at| idle.remove(at));
            Some((found, self.sweep(&mut idle, envelope)))
        })?;
        // Dropped outside the borrow: a store's drop runs wasmer code.
        drop(stale);
        found
    }

    /// Keep `kept` (already rolled back) for this app's next request on this thread; the
    /// least recently used store goes if the thread keeps `KEEP` already.
    pub fn give_back(&self, kept: Kept) {
        let envelope = kept.envelope;
        let stale = IDLE.with(|idle| {
            let mut idle = idle.try_borrow_mut().ok()?;
            let mut stale = self.sweep(&mut idle, envelope);
            if idle.len() >= KEEP {
                stale.push(idle.remove(0));
            }
            idle.push(kept);
            Some(stale)
        });
        drop(stale);
    }

    /// Take out the stores no request will use again: those of apps no longer loaded, and
    /// this app's for another envelope (its tenant's limits were reloaded).
    fn sweep(&self, idle: &mut Vec<Kept>, envelope: u64) -> Vec<Kept> {
        let mut stale = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            let kept = &idle[i];
            if kept.alive.strong_count() == 0 || (kept.app == self.id && kept.envelope != envelope)
            {
                stale.push(idle.remove(i));
            } else {
                i += 1;
            }
        }
        stale
    }

    /// This app's idle stores on this thread.
    #[cfg(test)]
    pub fn idle_here(&self) -> usize {
        IDLE.with(|idle| idle.borrow().iter().filter(|k| k.app == self.id).count())
    }
}
