//! Linear memories for guests: a per-tenant page cap and a pool of recycled reservations.
//! Owns the mmap'd address ranges behind every guest memory; it never decides request outcomes,
//! it only refuses growth past the cap (the guest then sees `memory.grow` return -1).

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use wasmer::sys::vm::{
    LinearMemory, MemoryError, MemoryStyle, VMConfig, VMMemory, VMMemoryDefinition, VMTable,
    VMTableDefinition,
};
use wasmer::sys::Tunables;
use wasmer::{MemoryType, Pages, TableStyle, TableType, WASM_PAGE_SIZE};

const OS_PAGE: usize = 4096;

thread_local! {
    /// Set when a `memory.grow` on this thread was refused by the cap, so a trap that follows
    /// can be reported as the memory limit rather than a plain trap.
    static GROW_DENIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a grow was refused on this thread since the last call; resets the flag.
pub fn take_grow_denied() -> bool {
    GROW_DENIED.with(|flag| flag.replace(false))
}

thread_local! {
    /// Set while a guest runs on this thread with nothing but this thread touching its memory
    /// (the lean host): its memory's pages can then be accounted by this thread's page faults.
    static FAULTS_ACCOUNT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, memories created on this thread are watched through the thread's page-fault
/// count: a guest whose run faulted in no page left the slot's resident pages as they were, so
/// its scrub zeroes the pages known resident without scanning for new ones.
pub struct FaultAccounting(());

impl FaultAccounting {
    /// Only for guests whose memory no other thread touches.
    pub fn begin() -> Self {
        FAULTS_ACCOUNT.with(|flag| flag.set(true));
        Self(())
    }
}

impl Drop for FaultAccounting {
    fn drop(&mut self) {
        FAULTS_ACCOUNT.with(|flag| flag.set(false));
    }
}

/// Page faults (minor and major) the calling thread has taken. Faults taken by the kernel on
/// the thread's behalf while copying to or from its memory count too; only `get_user_pages`
/// (direct I/O, `process_vm_writev`, ptrace), which outpost never points at guest memory, does
/// not.
fn thread_faults() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    Some((usage.ru_minflt as u64).wrapping_add(usage.ru_majflt as u64))
}

thread_local! {
    /// This thread's page faults as last read (by a watch's end). A watch starts from it
    /// instead of reading again: the count only grows, so a start taken earlier than the
    /// memory's creation can only see more faults than the memory's user took, which costs a
    /// scan, never a missed page. One `getrusage` per request instead of two.
    static LAST_FAULTS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// A memory's page-fault watch: the thread it was created on and that thread's faults then
/// (or earlier: `LAST_FAULTS`).
#[derive(Debug, Clone, Copy)]
struct Watch {
    thread: std::thread::ThreadId,
    faults: u64,
}

impl Watch {
    fn start() -> Option<Watch> {
        if !FAULTS_ACCOUNT.with(|flag| flag.get()) {
            return None;
        }
        let faults = match LAST_FAULTS.with(|last| last.get()) {
            Some(faults) => faults,
            None => thread_faults()?,
        };
        Some(Watch {
            thread: std::thread::current().id(),
            faults,
        })
    }

    /// True if no page was faulted in on the watched thread since the watch started, and this
    /// is that thread.
    fn no_new_pages(&self) -> bool {
        if std::thread::current().id() != self.thread {
            return false;
        }
        let now = thread_faults();
        LAST_FAULTS.with(|last| last.set(now));
        now == Some(self.faults)
    }
}
/// Host bytes one table element costs: wasmer keeps a table in a `Vec` of pointer-sized
/// elements, which may hold up to twice its length in capacity after growing.
const TABLE_ELEMENT_BYTES: u64 = 16;
/// Elements a table may grow by past its declared minimum (whatever maximum it declares).
const TABLE_GROWTH_ELEMENTS: u32 = 65_536;

/// What one instance may still take in host memory for its linear memories and tables: the
/// tenant's memory limit covers the whole instance, however many memories and tables the
/// module declares. Charged when a memory or table is created and when a memory grows; never
/// refunded (the budget lives as long as the instance), so what was charged is the peak.
#[derive(Debug)]
pub struct InstanceBudget {
    cap: u64,
    used: std::sync::atomic::AtomicU64,
}

impl InstanceBudget {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Take `bytes` from the budget; false (and nothing taken) if they do not fit.
    fn charge(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.cap)
            })
            .is_ok()
    }

    /// Bytes charged so far: the instance's peak memory.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }
}

thread_local! {
    /// The budget of the instance being created on this thread (see `BudgetScope`).
    static BUDGET: std::cell::RefCell<Option<Arc<InstanceBudget>>> =
        const { std::cell::RefCell::new(None) };
}

/// While alive, memories and tables created on this thread are charged to `budget`.
pub struct BudgetScope(());

impl BudgetScope {
    pub fn enter(budget: &Arc<InstanceBudget>) -> Self {
        BUDGET.with(|b| *b.borrow_mut() = Some(budget.clone()));
        Self(())
    }
}

impl Drop for BudgetScope {
    fn drop(&mut self) {
        BUDGET.with(|b| *b.borrow_mut() = None);
    }
}

/// The budget to charge a memory or table being created now: the instance's, or, outside an
/// instance's scope, a budget of the engine's own cap for this object alone.
fn current_budget(cap: u64) -> Arc<InstanceBudget> {
    BUDGET
        .with(|b| b.borrow().clone())
        .unwrap_or_else(|| InstanceBudget::new(cap))
}

/// Above this many accessible bytes a recycled memory is handed back to the kernel whole
/// instead of being zeroed page by page. It also bounds what idle pooled memories keep
/// resident (this much per idle slot), so a burst of large guests does not leave the node's
/// RSS high.
const ZERO_IN_PLACE_MAX: usize = 4 << 20;
/// Wasm stack for each call into a guest; deep recursion past it traps as a stack overflow.
const GUEST_STACK_BYTES: usize = 1 << 20;

/// Every guest memory is a static 4 GiB heap plus wasmer's offset guard, so compiled code can
/// elide bounds checks; the reservation costs address space only.
fn reservation_bytes() -> usize {
    MemoryStyle::static_bound().bytes().0 + MemoryStyle::static_offset_guard_size() as usize
}

/// One reserved address range, with `accessible` bytes at its start readable and writable.
/// Invariant: every byte outside the range in use by a live memory is zero (an idle slot is
/// scrubbed before it is pooled), so growing into resident pages never exposes old data.
#[derive(Debug)]
struct Slot {
    base: NonNull<u8>,
    accessible: usize,
    /// The runs of resident pages (offset, length) the last scan found, and the accessible
    /// size it scanned; `None` until a first scan.
    resident: Option<(Vec<(usize, usize)>, usize)>,
    /// Transparent huge pages are off for this range (see `reserve`).
    no_thp: bool,
}

// SAFETY: a slot is a plain address range owned by exactly one holder at a time (the pool or
// one guest memory); nothing in it is tied to a thread.
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl Slot {
    fn reserve() -> Result<Slot, MemoryError> {
        // SAFETY: an anonymous PROT_NONE mapping touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reservation_bytes(),
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Region(format!(
                "reserving guest memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| MemoryError::Region("mmap returned null".into()))?;
        // No transparent huge pages: a fault would make 2 MiB resident (and to be scrubbed) at
        // once, and khugepaged could make pages resident with no fault on the guest's thread,
        // which the scrub's fault accounting relies on. A slot whose advice failed is always
        // scanned.
        // SAFETY: advice on our own fresh reservation.
        let no_thp = unsafe { libc::madvise(ptr, reservation_bytes(), libc::MADV_NOHUGEPAGE) } == 0;
        Ok(Slot {
            base,
            accessible: 0,
            resident: None,
            no_thp,
        })
    }

    /// Make exactly the first `bytes` of the slot accessible; the rest traps on access.
    fn set_accessible(&mut self, bytes: usize) -> Result<(), MemoryError> {
        let (start, len, prot) = if bytes > self.accessible {
            (
                self.accessible,
                bytes - self.accessible,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        } else if bytes < self.accessible {
            (bytes, self.accessible - bytes, libc::PROT_NONE)
        } else {
            return Ok(());
        };
        // SAFETY: [start, start+len) lies inside this slot's reservation, which we own.
        let rc = unsafe { libc::mprotect(self.base.as_ptr().add(start).cast(), len, prot) };
        if rc != 0 {
            return Err(MemoryError::Region(format!(
                "mprotect guest memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        // Shrinking happens only to an idle, scrubbed slot, so the pages leaving the accessible
        // range are already zero: they stay resident, ready for the next larger memory.
        self.accessible = bytes;
        Ok(())
    }

    /// Drop the pages of a range so it reads back as zero; false if the kernel refused, and
    /// then the range may still hold a guest's data.
    #[must_use]
    fn discard(&self, start: usize, len: usize) -> bool {
        // SAFETY: inside our reservation; MADV_DONTNEED on private anonymous memory makes the
        // range read back as zero.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(start).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        rc == 0
    }

    /// Return the accessible range to all zeroes. Resident pages are cleared in place (cheaper
    /// than refaulting them on the next request); pages that are not resident are discarded,
    /// since a non-resident page may be a swapped-out page with old contents (swap can be
    /// turned on at any time, so it is never assumed off).
    ///
    /// `no_new_pages`: the memory's user faulted in no page since the slot was last scrubbed
    /// (see `Watch`), so the resident pages are exactly those the last scan found, at the same
    /// accessible size: only those are cleared, without scanning again. This holds with swap
    /// too: a known page swapped out since is swapped back in by the clearing write, and a page
    /// outside the known runs was zero and non-resident at the last scan and, with no fault,
    /// was not touched since.
    ///
    /// Ok(whether it scanned), or Err if a range could not be cleared: such a slot must never
    /// be reused.
    fn scrub(&mut self, no_new_pages: bool) -> Result<bool, ()> {
        let len = self.accessible;
        if len == 0 {
            return Ok(false);
        }
        if no_new_pages && self.no_thp {
            if let Some((runs, scanned)) = &self.resident {
                if *scanned == len {
                    for &(off, run) in runs {
                        // SAFETY: the run lies in the accessible (read-write) range, which no
                        // instance uses now.
                        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(off), 0, run) };
                    }
                    return Ok(false);
                }
            }
        }
        self.resident = None;
        if len > ZERO_IN_PLACE_MAX {
            if !self.discard(0, len) {
                return Err(());
            }
            self.resident = Some((Vec::new(), len));
            return Ok(true);
        }
        let pages = len / OS_PAGE;
        let mut resident = vec![0u8; pages];
        // SAFETY: the range is mapped (accessible) and `resident` has one byte per page.
        let rc =
            unsafe { libc::mincore(self.base.as_ptr().cast(), len, resident.as_mut_ptr().cast()) };
        if rc != 0 {
            if !self.discard(0, len) {
                return Err(());
            }
            self.resident = Some((Vec::new(), len));
            return Ok(true);
        }
        let mut runs = Vec::new();
        let mut page = 0;
        while page < pages {
            let is_resident = resident[page] & 1 == 1;
            let run_start = page;
            while page < pages && (resident[page] & 1 == 1) == is_resident {
                page += 1;
            }
            let (off, run) = (run_start * OS_PAGE, (page - run_start) * OS_PAGE);
            if is_resident {
                // SAFETY: the run is accessible (read-write) memory that no instance uses now.
                unsafe { std::ptr::write_bytes(self.base.as_ptr().add(off), 0, run) };
                runs.push((off, run));
            } else if !self.discard(off, run) {
                return Err(());
            }
        }
        self.resident = Some((runs, len));
        Ok(true)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: unmapping the reservation we mapped in `reserve`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), reservation_bytes()) };
    }
}

/// Idle memory reservations shared by every engine handle of a sandbox.
#[derive(Debug)]
pub struct MemoryPool {
    idle: Mutex<Vec<Slot>>,
    max_idle: usize,
    /// Scrubs that scanned for resident pages (the others cleared the pages known resident).
    scans: std::sync::atomic::AtomicU64,
    /// Slots that could not be scrubbed and were unmapped instead of reused.
    unscrubbed: std::sync::atomic::AtomicU64,
}

impl MemoryPool {
    pub fn new(max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            scans: std::sync::atomic::AtomicU64::new(0),
            unscrubbed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// An idle slot whose accessible size is closest to `bytes` (resizing a slot costs an
    /// mprotect and, growing, page faults), or a new reservation.
    fn take(&self, bytes: usize) -> Result<Slot, MemoryError> {
        let slot = self.idle.lock().ok().and_then(|mut idle| {
            let best = idle
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.accessible.abs_diff(bytes))
                .map(|(i, _)| i)?;
            Some(idle.swap_remove(best))
        });
        match slot {
            Some(slot) => Ok(slot),
            None => Slot::reserve(),
        }
    }

    fn give_back(&self, mut slot: Slot, watch: Option<Watch>) {
        match slot.scrub(watch.is_some_and(|w| w.no_new_pages())) {
            Ok(scanned) => {
                if scanned {
                    self.scans
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(()) => {
                // Unmapped instead (the slot's drop): the next memory gets fresh pages.
                tracing::warn!("a guest memory could not be scrubbed; it is unmapped, not reused");
                self.unscrubbed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(slot);
            }
        }
    }

    /// Scrubs so far that scanned for resident pages.
    pub fn scans(&self) -> u64 {
        self.scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of reservations waiting for reuse.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

/// A guest's linear memory backed by a pooled slot; returned to the pool, zeroed, on drop.
#[derive(Debug)]
struct PooledMemory {
    slot: Option<Slot>,
    pool: Arc<MemoryPool>,
    ty: MemoryType,
    size: Pages,
    maximum: Pages,
    definition: NonNull<VMMemoryDefinition>,
    /// Page faults on the creating thread, when its guest's memory is touched by it alone.
    watch: Option<Watch>,
    budget: Arc<InstanceBudget>,
}

// SAFETY: the memory is used by one store at a time; the definition pointer points into that
// store's instance, which owns this memory.
unsafe impl Send for PooledMemory {}
unsafe impl Sync for PooledMemory {}

impl PooledMemory {
    fn base(&self) -> *mut u8 {
        self.slot
            .as_ref()
            .map_or(std::ptr::null_mut(), |s| s.base.as_ptr())
    }

    fn publish(&mut self) {
        let base = self.base();
        // SAFETY: wasmer hands us a valid definition location owned by the instance.
        unsafe {
            let def = self.definition.as_mut();
            def.base = base;
            def.current_length = self.size.bytes().0;
        }
    }
}

impl LinearMemory for PooledMemory {
    fn ty(&self) -> MemoryType {
        let mut ty = self.ty;
        ty.minimum = self.size;
        ty
    }

    fn size(&self) -> Pages {
        self.size
    }

    fn style(&self) -> MemoryStyle {
        MemoryStyle::Static
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let previous = self.size;
        let fail = || MemoryError::CouldNotGrow {
            current: previous,
            attempted_delta: delta,
        };
        let wanted = previous.checked_add(delta).ok_or_else(fail)?;
        if wanted > self.maximum {
            GROW_DENIED.with(|flag| flag.set(true));
            return Err(fail());
        }
        if delta.0 == 0 {
            return Ok(previous);
        }
        if !self.budget.charge(delta.bytes().0 as u64) {
            GROW_DENIED.with(|flag| flag.set(true));
            return Err(fail());
        }
        let slot = self.slot.as_mut().ok_or_else(fail)?;
        slot.set_accessible(wanted.bytes().0)?;
        self.size = wanted;
        self.publish();
        Ok(previous)
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.definition
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::MemoryNotShared)
    }

    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::UnsupportedOperation {
            message: "pooled guest memories are not copied".into(),
        })
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.give_back(slot, self.watch);
        }
    }
}

/// Engine tunables for one memory cap: static memories from the shared pool, at most
/// `max_pages` pages each, and a fixed guest stack.
pub struct CappedTunables {
    max_bytes: u64,
    max_pages: Pages,
    pool: Arc<MemoryPool>,
    vmconfig: VMConfig,
}

impl Clone for CappedTunables {
    fn clone(&self) -> Self {
        Self::new(self.max_bytes, self.pool.clone())
    }
}

impl CappedTunables {
    pub fn new(max_bytes: u64, pool: Arc<MemoryPool>) -> Self {
        let pages = (max_bytes / WASM_PAGE_SIZE as u64).min(u64::from(Pages::max_value().0));
        Self {
            max_bytes,
            max_pages: Pages(pages as u32),
            pool,
            vmconfig: VMConfig {
                wasm_stack_size: Some(GUEST_STACK_BYTES),
            },
        }
    }

    fn capped(&self, ty: &MemoryType) -> Result<MemoryType, MemoryError> {
        if ty.shared {
            // The module check refuses shared memories; one is never made.
            return Err(MemoryError::Generic(
                "shared memories are not supported".into(),
            ));
        }
        if ty.minimum > self.max_pages {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: self.max_pages,
            });
        }
        let mut capped = *ty;
        capped.maximum = Some(ty.maximum.map_or(self.max_pages, |m| m.min(self.max_pages)));
        Ok(capped)
    }
}

impl CappedTunables {
    /// A table's type with its maximum capped, charged to the instance's budget at that
    /// maximum (its growth happens inside wasmer, where it cannot be charged).
    fn charge_table(&self, ty: &TableType) -> Result<TableType, String> {
        let growth_cap = ty.minimum.saturating_add(TABLE_GROWTH_ELEMENTS);
        let maximum = ty.maximum.map_or(growth_cap, |m| m.min(growth_cap));
        let mut capped = *ty;
        capped.maximum = Some(maximum.max(ty.minimum));
        let bytes = u64::from(maximum.max(ty.minimum)) * TABLE_ELEMENT_BYTES;
        if !current_budget(self.max_bytes).charge(bytes) {
            GROW_DENIED.with(|flag| flag.set(true));
            return Err(format!(
                "a table of {} elements needs {bytes} bytes, over the memory limit of {} bytes",
                ty.minimum, self.max_bytes
            ));
        }
        Ok(capped)
    }
}

impl Tunables for CappedTunables {
    fn memory_style(&self, _memory: &MemoryType) -> MemoryStyle {
        MemoryStyle::Static
    }

    fn table_style(&self, _table: &TableType) -> TableStyle {
        TableStyle::CallerChecksSignature
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        // A memory the host makes for a module that imports one (the wasix host): charged
        // whole up to its maximum, as its growth is not seen here.
        let capped = self.capped(ty)?;
        let maximum = capped.maximum.unwrap_or(self.max_pages);
        if !current_budget(self.max_bytes).charge(maximum.bytes().0 as u64) {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: maximum,
                max_allowed: self.max_pages,
            });
        }
        VMMemory::new(&capped, style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let capped = self.capped(ty)?;
        let budget = current_budget(self.max_bytes);
        if !budget.charge(capped.minimum.bytes().0 as u64) {
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: capped.minimum,
                max_allowed: self.max_pages,
            });
        }
        if !matches!(style, MemoryStyle::Static) {
            return Err(MemoryError::Generic(
                "guest memories are static; another style was asked for".into(),
            ));
        }
        let mut slot = self.pool.take(capped.minimum.bytes().0)?;
        // Watched from before the slot is first touched (resizing only changes protection).
        let watch = Watch::start();
        slot.set_accessible(capped.minimum.bytes().0)?;
        let mut memory = PooledMemory {
            slot: Some(slot),
            pool: self.pool.clone(),
            ty: capped,
            size: capped.minimum,
            maximum: capped.maximum.unwrap_or(self.max_pages),
            definition: vm_definition_location,
            watch,
            budget,
        };
        memory.publish();
        let boxed: Box<dyn LinearMemory + Send + Sync + 'static> = Box::new(memory);
        Ok(VMMemory::from_custom(boxed))
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        VMTable::new(&self.charge_table(ty)?, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        let capped = self.charge_table(ty)?;
        // SAFETY: forwarded from our caller's contract.
        unsafe { VMTable::from_definition(&capped, style, vm_definition_location) }
    }

    fn vmconfig(&self) -> &VMConfig {
        &self.vmconfig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_slot_reads_zero_and_shrinks_access() {
        let pool = MemoryPool::new(2);
        let mut slot = pool.take(0).expect("reserve");
        slot.set_accessible(4 * WASM_PAGE_SIZE).expect("grow");
        // SAFETY: the first four wasm pages were just made accessible.
        unsafe {
            std::ptr::write_bytes(slot.base.as_ptr(), 0xAB, 3 * WASM_PAGE_SIZE);
        }
        let base = slot.base;
        pool.give_back(slot, None);
        assert_eq!(pool.idle(), 1);
        let mut again = pool.take(WASM_PAGE_SIZE).expect("reuse");
        assert_eq!(again.base, base, "the idle slot is reused");
        // SAFETY: still accessible: 4 pages.
        let bytes = unsafe { std::slice::from_raw_parts(again.base.as_ptr(), 4 * WASM_PAGE_SIZE) };
        assert!(
            bytes.iter().all(|b| *b == 0),
            "recycled memory reads back zero"
        );
        again.set_accessible(WASM_PAGE_SIZE).expect("shrink");
        assert_eq!(again.accessible, WASM_PAGE_SIZE);
    }

    /// The scrub that trusts the thread's fault count: pages known resident are cleared without
    /// a scan; a page faulted in since, or another thread, means a scan.
    #[test]
    fn scrub_without_new_faults_clears_known_pages_and_new_faults_rescan() {
        let read_all_zero = |slot: &Slot| {
            // SAFETY: `accessible` bytes from the base are readable.
            let bytes = unsafe { std::slice::from_raw_parts(slot.base.as_ptr(), slot.accessible) };
            bytes.iter().all(|b| *b == 0)
        };
        let size = 2 * WASM_PAGE_SIZE;
        let pool = MemoryPool::new(1);
        let mut slot = pool.take(size).expect("reserve");
        slot.set_accessible(size).expect("accessible");
        // SAFETY: inside the accessible range.
        unsafe { std::ptr::write_bytes(slot.base.as_ptr(), 0xAB, 3 * OS_PAGE) };
        pool.give_back(slot, None);
        assert_eq!(pool.scans(), 1, "the first scrub scans");

        let _accounting = FaultAccounting::begin();
        for round in 0..3 {
            let slot = pool.take(size).expect("reuse");
            assert!(read_all_zero(&slot), "round {round}");
            let watch = Watch::start();
            // Pages the scan found resident: written without a fault.
            // SAFETY: inside the accessible range.
            unsafe { std::ptr::write_bytes(slot.base.as_ptr().add(OS_PAGE), 0xCD, 2 * OS_PAGE) };
            pool.give_back(slot, watch);
        }
        let slot = pool.take(size).expect("reuse");
        assert!(read_all_zero(&slot));
        assert_eq!(pool.scans(), 1, "no page faulted in: no scan");

        // A page never touched before faults in: the scrub must find it.
        let watch = Watch::start();
        // SAFETY: inside the accessible range.
        unsafe { *slot.base.as_ptr().add(size - 1) = 0xEF };
        pool.give_back(slot, watch);
        assert_eq!(pool.scans(), 2, "a new page means a scan");
        let slot = pool.take(size).expect("reuse");
        assert!(read_all_zero(&slot));

        // Given back on another thread: the fault count says nothing there.
        let watch = Watch::start();
        // SAFETY: inside the accessible range.
        unsafe { *slot.base.as_ptr() = 0x11 };
        let pool = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    pool.give_back(slot, watch);
                    pool
                })
                .join()
                .expect("thread")
        });
        assert_eq!(pool.scans(), 3, "another thread means a scan");
        let slot = pool.take(size).expect("reuse");
        assert!(read_all_zero(&slot));
    }
}
