//! The deadline's signal may only stop a guest in the guest's own code.
//!
//! wasmer stops a running guest with a signal (SIGUSR1, sent by its `Interrupter`: the
//! watchdog's deadlines and the inline path's slices). Its handler acts on the signal whenever
//! the thread is on a guest's stack, which includes host code the guest called: outpost's host
//! functions, and wasmer's own library calls (raising a trap, growing a memory). There the
//! handler captures a backtrace (allocations, the unwinder's lock) and then jumps out of the
//! guest, abandoning the interrupted code midway. If that code held a lock, the thread deadlocks
//! in the handler, or leaves the lock held for good. Seen: a guest raising a trap from deep in
//! its stack (wasmer walks every frame, under libgcc's unwinder lock) when its inline slice
//! ended; the signal's own backtrace waited on that lock, and the async thread hung forever.
//!
//! So outpost's handler goes in front of wasmer's. A signal that lands in the code of any loaded
//! object (the outpost binary, libc, the unwinder, the vDSO: everything but the guests' compiled
//! code, which lives in anonymous mappings) is declined. wasmer's handler is shown the context
//! with its stack pointer off any guest stack, so it clears its pending interrupt (the next one
//! can be sent) and returns without acting. A signal that lands in compiled guest code goes to
//! wasmer's handler as before.
//!
//! A declined interrupt must still stop the guest: one that spends nearly all its time in
//! wasmer's library calls (a loop of `memory.fill`) would otherwise see every resend declined and run on until its fuel ran out. So while
//! a run's call is on this thread (`Running`), a declined interrupt whose deadline has passed
//! empties the guest's fuel: the next fuel check in its compiled code traps, and the run ends
//! as one stopped by its deadline. That write is safe: the thread is in host code, so no
//! compiled code is part-way through its own update of that global (the metering sequence
//! makes no calls). The fuel taken is kept (`Running::taken`), so the fuel the run reports is
//! what it used. Host calls check the deadline themselves; one bulk operator runs to its end
//! (bounded by the guest's memory; its fuel is charged by length before it runs).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
/// The executable ranges of every object loaded when the guard was installed: host code.
/// Taken once: outpost never unloads a library (were one unloaded and guest code later mapped
/// at its address, interrupts there would be declined, and the fuel takeover still stop it).
static HOST_CODE: OnceLock<Box<[(usize, usize)]>> = OnceLock::new();
/// wasmer's SIGUSR1 handler (a `sa_sigaction`), once the guard is installed in front of it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
static WASMER_HANDLER: AtomicUsize = AtomicUsize::new(0);

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
type SigAction = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

thread_local! {
    /// While a run's call is on this thread: its watchdog's flag (set before each interrupt).
    static FIRED: AtomicPtr<AtomicBool> = const { AtomicPtr::new(std::ptr::null_mut()) };
    /// And where its instance keeps its remaining fuel.
    static FUEL: AtomicPtr<i64> = const { AtomicPtr::new(std::ptr::null_mut()) };
    /// Fuel the guard took from the run.
    static TAKEN: AtomicI64 = const { AtomicI64::new(0) };
}

/// A run's call on this thread, as the guard sees it: while this lives, an interrupt declined
/// after `fired` was set empties the fuel at `fuel`. Both must outlive it.
pub struct Running(());

impl Running {
    /// # Safety
    /// `fuel` must point at the running instance's remaining-fuel global (8-byte aligned) and
    /// stay valid while the `Running` lives; only the guest's compiled code and this guard
    /// write it meanwhile.
    pub unsafe fn begin(fired: &AtomicBool, fuel: Option<NonNull<i64>>) -> Self {
        TAKEN.with(|t| t.store(0, Ordering::Relaxed));
        FUEL.with(|f| {
            f.store(
                fuel.map_or(std::ptr::null_mut(), NonNull::as_ptr),
                Ordering::Release,
            )
        });
        FIRED.with(|f| {
            f.store(
                fired as *const AtomicBool as *mut AtomicBool,
                Ordering::Release,
            )
        });
        Running(())
    }

    /// The fuel the guard took (0 if it took none).
    pub fn taken(self) -> u64 {
        drop(self);
        TAKEN.with(|t| t.swap(0, Ordering::Relaxed)).max(0) as u64
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        FIRED.with(|f| f.store(std::ptr::null_mut(), Ordering::Release));
        FUEL.with(|f| f.store(std::ptr::null_mut(), Ordering::Release));
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
/// A declined interrupt: if the running call's deadline (or slice) has passed, empty its fuel.
fn take_fuel() {
    let fired = FIRED.with(|f| f.load(Ordering::Acquire));
    // SAFETY: set by `Running::begin` from a flag that outlives the `Running`, and cleared
    // (first) when it ends; a signal handler runs on this same thread.
    if fired.is_null() || !unsafe { &*fired }.load(Ordering::SeqCst) {
        return;
    }
    let fuel = FUEL.with(|f| f.load(Ordering::Acquire));
    if fuel.is_null() {
        return;
    }
    // SAFETY: per `Running::begin`, the instance's fuel global, aligned and alive.
    let left = unsafe { AtomicI64::from_ptr(fuel) }.swap(0, Ordering::Relaxed);
    TAKEN.with(|t| t.fetch_add(left.max(0), Ordering::Relaxed));
}

/// Put the guard in front of wasmer's SIGUSR1 handler. wasmer installs its handlers when the
/// first store is made (`engine` makes one here), so call this before any guest runs; later
/// calls do nothing. False if the guard could not be installed (no wasmer handler found, or
/// a platform other than Linux on x86_64 or aarch64): guests then run under wasmer's handler
/// alone.
pub fn install(engine: &wasmer::Engine) -> bool {
    static ONCE: Once = Once::new();
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        ONCE.call_once(|| {
            drop(wasmer::Store::new(engine.clone()));
            // SAFETY: reads the loaded objects' program headers and swaps one signal handler;
            // nothing else changes SIGUSR1's handler in outpost.
            unsafe { install_once() }
        });
        WASMER_HANDLER.load(Ordering::Acquire) != 0
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        let _ = (&ONCE, engine);
        false
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
unsafe fn install_once() {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr hands valid program headers of a loaded object, and `data`
        // is the Vec passed below.
        unsafe {
            let ranges = &mut *(data as *mut Vec<(usize, usize)>);
            let info = &*info;
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                    let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                    ranges.push((start, start.wrapping_add(ph.p_memsz as usize)));
                }
            }
        }
        0
    }
    // SAFETY: `each` only reads what it is handed.
    unsafe {
        libc::dl_iterate_phdr(Some(each), &mut ranges as *mut _ as *mut libc::c_void);
    }
    if ranges.is_empty() || HOST_CODE.set(ranges.into_boxed_slice()).is_err() {
        return;
    }
    // SAFETY: plain sigaction calls on zeroed structs.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut current) != 0 {
            return;
        }
        let handler = current.sa_sigaction;
        if current.sa_flags & libc::SA_SIGINFO == 0
            || handler == libc::SIG_DFL
            || handler == libc::SIG_IGN
        {
            return;
        }
        WASMER_HANDLER.store(handler, Ordering::Release);
        let mut guarded = current;
        guarded.sa_sigaction = guard as SigAction as usize;
        if libc::sigaction(libc::SIGUSR1, &guarded, std::ptr::null_mut()) != 0 {
            WASMER_HANDLER.store(0, Ordering::Release);
        }
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
/// Whether `pc` is in the code of a loaded object (not a guest's compiled code).
fn in_host_code(pc: usize) -> bool {
    HOST_CODE.get().is_some_and(|ranges| {
        ranges
            .iter()
            .any(|&(start, end)| (start..end).contains(&pc))
    })
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
/// The program counter and a mutable stack pointer of a signal's context.
///
/// # Safety
/// `context` must be the `ucontext_t` the kernel handed a signal handler.
unsafe fn pc_and_sp(context: *mut libc::ucontext_t) -> (usize, *mut usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: per the caller, a valid ucontext_t.
    unsafe {
        let gregs = &mut (*context).uc_mcontext.gregs;
        (
            gregs[libc::REG_RIP as usize] as usize,
            &mut gregs[libc::REG_RSP as usize] as *mut i64 as *mut usize,
        )
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: per the caller, a valid ucontext_t.
    unsafe {
        let mcontext = &mut (*context).uc_mcontext;
        (
            mcontext.pc as usize,
            &mut mcontext.sp as *mut u64 as *mut usize,
        )
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
/// The SIGUSR1 handler in front of wasmer's. Async-signal-safe: atomics, a read of a slice
/// filled before it was installed, a copy on the stack.
extern "C" fn guard(signum: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let handler = WASMER_HANDLER.load(Ordering::Acquire);
    if handler == 0 || context.is_null() {
        return;
    }
    // SAFETY: `handler` is the sa_sigaction wasmer installed; `context` is the kernel's.
    unsafe {
        let wasmer: SigAction = std::mem::transmute::<usize, SigAction>(handler);
        let context = context as *mut libc::ucontext_t;
        let (pc, _) = pc_and_sp(context);
        if !in_host_code(pc) {
            wasmer(signum, info, context as *mut libc::c_void);
            return;
        }
        // Declined: wasmer sees a stack pointer on no guest stack, clears its pending
        // interrupt and returns without writing the context; the real one is put back.
        let (_, sp) = pc_and_sp(context);
        let real = *sp;
        *sp = 0;
        wasmer(signum, info, context as *mut libc::c_void);
        *sp = real;
        take_fuel();
    }
}
