//! Where guests run: a CPU lane per tenant and an elastic pool of threads. A running guest holds
//! one of its tenant's CPU slots and one thread; while it waits in a host call (a sleep, the
//! request body, a slow client) it gives the slot back and keeps only the thread. Each tenant
//! has as many slots as the node has cores and its own FIFO, so one tenant's queue never holds
//! up another's; between tenants with running guests the kernel's fair scheduler shares the
//! cores, preempting a spinning guest, which outpost itself cannot do.
//! It knows nothing of requests or Wasm: a job is a closure, run once or rejected.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How a job learns whether it runs or is turned away.
pub enum Start {
    /// It holds a CPU slot on a pool thread; it waited this long in its lane.
    Run(Duration),
    /// It waited in its lane longer than its lane allows; it must not run.
    Expired(Duration),
    /// No thread could be found for it.
    NoThread,
}

/// Work for the pool: called exactly once, on a pool thread or (to refuse it) wherever the
/// refusal is decided.
pub type Job = Box<dyn FnOnce(Start) + Send + 'static>;

struct Queued {
    job: Job,
    lane: Arc<Lane>,
    at: Instant,
}

/// A thread in a host call waiting to get its CPU slot back.
struct Resumer {
    /// WAITING, GRANTED or ABANDONED.
    state: AtomicU8,
    thread: Thread,
}

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Resumer {
    /// Hand it the slot; false if it stopped waiting (the slot stays with the caller).
    fn grant(&self) -> bool {
        let granted = self
            .state
            .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if granted {
            self.thread.unpark();
        }
        granted
    }
}

/// A request waiting on an async thread for a slot to run on that thread (`Pool::turn`).
struct Turn {
    /// WAITING, GRANTED or ABANDONED.
    state: AtomicU8,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Turn {
    /// Hand it the slot; false if it stopped waiting. The caller wakes it once it has let go
    /// of the lane's lock.
    fn grant(&self) -> bool {
        self.state
            .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

enum Waiter {
    New(Queued),
    Resume(Arc<Resumer>),
    Turn(Arc<Turn>),
}

struct LaneState {
    free: usize,
    queue: VecDeque<Waiter>,
}

/// One tenant's CPU slots and queue.
pub struct Lane {
    state: Mutex<LaneState>,
    /// New jobs waiting for a slot (for the queue-depth metric).
    waiting: AtomicUsize,
    /// A new job that waited longer than this is refused instead of run.
    max_wait: Duration,
}

impl Lane {
    pub fn new(slots: usize, max_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LaneState {
                free: slots.max(1),
                queue: VecDeque::new(),
            }),
            waiting: AtomicUsize::new(0),
            max_wait,
        })
    }

    /// How long a new job may wait for a slot before it is refused.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// New jobs waiting for a CPU slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        // The lock guards plain counters and queues: a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Give up a slot: it goes to the next waiter (a new job, returned for the caller to run
    /// or hand to a thread, or a resuming thread), else back to the free count. Jobs that
    /// waited too long are refused on the way.
    fn release(&self) -> Option<Queued> {
        let mut expired = Vec::new();
        let mut turn = None;
        let next = {
            let mut state = self.lock();
            loop {
                match state.queue.pop_front() {
                    Some(Waiter::New(q)) => {
                        self.waiting.fetch_sub(1, Ordering::Relaxed);
                        if q.at.elapsed() > self.max_wait {
                            expired.push(q);
                            continue;
                        }
                        break Some(q);
                    }
                    Some(Waiter::Resume(r)) => {
                        if r.grant() {
                            break None;
                        }
                    }
                    Some(Waiter::Turn(t)) => {
                        // An abandoned turn counted itself out and leaves the queue itself;
                        // one popped before it could is passed over.
                        if t.grant() {
                            self.waiting.fetch_sub(1, Ordering::Relaxed);
                            turn = Some(t);
                            break None;
                        }
                    }
                    None => {
                        state.free += 1;
                        break None;
                    }
                }
            }
        };
        if let Some(t) = turn {
            t.wake();
        }
        for q in expired {
            (q.job)(Start::Expired(q.at.elapsed()));
        }
        next
    }

    /// Take a free slot now, if there is one and no job waits for it (for a run on a thread
    /// outside the pool, which gives it back with `Pool::give_back`).
    pub(super) fn try_take(&self) -> bool {
        let mut state = self.lock();
        if state.free == 0 || !state.queue.is_empty() {
            return false;
        }
        state.free -= 1;
        true
    }

    /// Take a slot back after a wait, queueing behind the lane's other waiters; false if the
    /// deadline passed first.
    fn reacquire(&self, deadline: Instant) -> bool {
        let resumer = {
            let mut state = self.lock();
            if state.free > 0 && state.queue.is_empty() {
                state.free -= 1;
                return true;
            }
            let resumer = Arc::new(Resumer {
                state: AtomicU8::new(WAITING),
                thread: std::thread::current(),
            });
            state.queue.push_back(Waiter::Resume(resumer.clone()));
            resumer
        };
        loop {
            if resumer.state.load(Ordering::Acquire) == GRANTED {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                // Either we stop waiting, or the slot was granted just now and is ours.
                return resumer
                    .state
                    .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err();
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

/// `Pool::turn`'s future.
pub struct TurnWait {
    pool: Pool,
    lane: Arc<Lane>,
    turn: Option<Arc<Turn>>,
    done: bool,
}

impl std::future::Future for TurnWait {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = &mut *self;
        if this.done {
            return std::task::Poll::Ready(());
        }
        let turn = match &this.turn {
            Some(turn) => turn.clone(),
            None => {
                let mut state = this.lane.lock();
                if state.free > 0 && state.queue.is_empty() {
                    state.free -= 1;
                    this.done = true;
                    return std::task::Poll::Ready(());
                }
                let turn = Arc::new(Turn {
                    state: AtomicU8::new(WAITING),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                this.lane.waiting.fetch_add(1, Ordering::Relaxed);
                state.queue.push_back(Waiter::Turn(turn.clone()));
                this.turn = Some(turn);
                return std::task::Poll::Pending;
            }
        };
        // The waker goes in before the state is read: a grant after the read finds it.
        *turn.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if turn.state.load(Ordering::Acquire) == GRANTED {
            this.done = true;
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

impl Drop for TurnWait {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(turn) = &self.turn {
            let abandoned = turn
                .state
                .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if !abandoned {
                // Granted as it was dropped: the slot is ours, and nobody will use it.
                self.pool.give_back(&self.lane);
                return;
            }
            // Out of the queue now, with its waker (which keeps its task's memory alive): a
            // client that opens and drops requests must not grow the queue.
            let waker = turn.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.lane
                .lock()
                .queue
                .retain(|w| !matches!(w, Waiter::Turn(t) if Arc::ptr_eq(t, turn)));
            drop(waker);
            self.lane.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct PoolState {
    ready: VecDeque<Queued>,
    idle: usize,
    threads: usize,
}

struct PoolInner {
    state: Mutex<PoolState>,
    wake: Condvar,
    max_threads: usize,
    /// Threads kept even when idle.
    min_threads: usize,
}

/// The threads guests run on, started as needed up to a cap.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

const IDLE_EXIT: Duration = Duration::from_secs(30);

thread_local! {
    /// The lane whose slot this pool thread holds while its job runs.
    static HOLDING: RefCell<Option<Arc<Lane>>> = const { RefCell::new(None) };
}

impl Pool {
    pub fn new(min_threads: usize, max_threads: usize) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                state: Mutex::new(PoolState {
                    ready: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                }),
                wake: Condvar::new(),
                max_threads: max_threads.max(1),
                min_threads,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Give back a slot taken with `Lane::try_take`: to the lane's next job (on a thread of
    /// its own) or its free count.
    pub fn give_back(&self, lane: &Lane) {
        if let Some(next) = lane.release() {
            self.hand_to_thread(next);
        }
    }

    /// A slot of `lane` for a run on the calling async thread: at once if one is free and
    /// nobody waits for one, else after the lane's earlier waiters (in the same FIFO as the
    /// jobs). Dropped before it resolves, it gives up its place, or the slot if it was just
    /// granted; once resolved, the slot is the caller's until `give_back`.
    pub fn turn(&self, lane: &Arc<Lane>) -> TurnWait {
        TurnWait {
            pool: self.clone(),
            lane: lane.clone(),
            turn: None,
            done: false,
        }
    }

    /// Run `job` on a thread under a slot of `lane` its caller already holds (an inline
    /// attempt that moved, a turn that is not run inline).
    pub fn submit_held(&self, lane: &Arc<Lane>, job: Job) {
        self.hand_to_thread(Queued {
            job,
            lane: lane.clone(),
            at: Instant::now(),
        });
    }

    /// Run `job` under one of `lane`'s CPU slots: at once if one is free, else after the
    /// lane's earlier waiters.
    pub fn submit(&self, lane: &Arc<Lane>, job: Job) {
        let queued = Queued {
            job,
            lane: lane.clone(),
            at: Instant::now(),
        };
        {
            let mut state = lane.lock();
            if state.free == 0 {
                lane.waiting.fetch_add(1, Ordering::Relaxed);
                state.queue.push_back(Waiter::New(queued));
                return;
            }
            state.free -= 1;
        }
        self.hand_to_thread(queued);
    }

    /// A job that holds its slot goes to an idle thread, or a new one.
    fn hand_to_thread(&self, queued: Queued) {
        let spawn = {
            let mut state = self.lock();
            state.ready.push_back(queued);
            if state.idle > 0 {
                self.inner.wake.notify_one();
            }
            // Idle threads count until they wake and take a job: start another only when the
            // jobs waiting outnumber them. At the cap, a job runs when a thread is done.
            let spawn = state.ready.len() > state.idle && state.threads < self.inner.max_threads;
            if spawn {
                state.threads += 1;
            }
            spawn
        };
        if spawn {
            let pool = self.clone();
            let started = std::thread::Builder::new()
                .name("outpost-guest".into())
                .spawn(move || pool.thread_main());
            if let Err(e) = started {
                tracing::error!(error = %e, "could not start a guest thread");
                let orphan = {
                    let mut state = self.lock();
                    state.threads -= 1;
                    // With no thread at all nothing would ever take the job: refuse it.
                    if state.threads == 0 {
                        state.ready.pop_back()
                    } else {
                        None
                    }
                };
                if let Some(q) = orphan {
                    let lane = q.lane.clone();
                    (q.job)(Start::NoThread);
                    refuse_queued(&lane);
                }
            }
        }
    }

    fn thread_main(self) {
        self.adopt_current_thread();
        loop {
            let queued = {
                let mut state = self.lock();
                loop {
                    if let Some(q) = state.ready.pop_front() {
                        break Some(q);
                    }
                    state.idle += 1;
                    let (next, timeout) = self
                        .inner
                        .wake
                        .wait_timeout(state, IDLE_EXIT)
                        .unwrap_or_else(|e| e.into_inner());
                    state = next;
                    state.idle -= 1;
                    if timeout.timed_out()
                        && state.ready.is_empty()
                        && state.threads > self.inner.min_threads
                    {
                        state.threads -= 1;
                        break None;
                    }
                }
            };
            let Some(mut queued) = queued else { return };
            // Run jobs back to back while the finishing one hands its slot to a waiter of the
            // same lane: no thread switch between them.
            loop {
                let lane = queued.lane.clone();
                HOLDING.with(|h| *h.borrow_mut() = Some(lane.clone()));
                let waited = queued.at.elapsed();
                let job = queued.job;
                // A bug in one request must not take the thread (or the slot) with it.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    job(Start::Run(waited))
                }));
                if ran.is_err() {
                    tracing::error!("a request panicked on a guest thread; the thread goes on");
                }
                let held = HOLDING.with(|h| h.borrow_mut().take());
                match held.and_then(|lane| lane.release()) {
                    Some(next) => queued = next,
                    None => break,
                }
            }
        }
    }
}

/// Run `wait` (a host call's wait: a sleep, the request body, a slow client) without holding a
/// CPU slot, then take the slot back. Err if the deadline passed before a slot was free again;
/// the caller then fails the request without running more guest code. Outside a pool thread
/// (tests, `outpost run`'s direct calls) it just runs `wait`.
pub fn blocking<T>(deadline: Instant, wait: impl FnOnce() -> T) -> Result<T, T> {
    let Some(lane) = give_back() else {
        return Ok(wait());
    };
    let out = wait();
    if take_back(lane, deadline) {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Give this thread's CPU slot back (to its lane's next waiter, on a thread of its own); the
/// lane, to take a slot back from, if the thread held one.
fn give_back() -> Option<Arc<Lane>> {
    let lane = HOLDING.with(|h| h.borrow_mut().take())?;
    if let Some(next) = lane.release() {
        // The slot went to a queued job of this lane: it needs a thread of its own.
        POOL.with(|p| match p.borrow().as_ref() {
            Some(pool) => pool.hand_to_thread(next),
            None => {
                (next.job)(Start::NoThread);
                refuse_queued(&lane);
            }
        });
    }
    Some(lane)
}

/// Wait for a slot of `lane` again and hold it on this thread; false if the deadline passed.
fn take_back(lane: Arc<Lane>, deadline: Instant) -> bool {
    if lane.reacquire(deadline) {
        HOLDING.with(|h| *h.borrow_mut() = Some(lane));
        true
    } else {
        false
    }
}

/// `blocking` for a wait that is a future polled on this thread (wasix's host calls block on
/// their futures where the guest runs): the slot is given back when it is made and taken
/// back when it is dropped, done or not, on the thread that made it. Dropped elsewhere, the
/// slot stays given back and the guest runs on without one until its request ends.
pub struct Paused {
    lane: Option<Arc<Lane>>,
    deadline: Instant,
    thread: std::thread::ThreadId,
}

impl Paused {
    pub fn begin(deadline: Instant) -> Self {
        Self {
            lane: give_back(),
            deadline,
            thread: std::thread::current().id(),
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            if std::thread::current().id() == self.thread {
                // Past the deadline the watchdog stops the guest; nothing more to hold.
                take_back(lane, self.deadline);
            }
        }
    }
}

/// Give a slot back when there is no thread to run what waits for it: each job that would take
/// it is refused in turn (a resuming guest has its own thread and takes it).
fn refuse_queued(lane: &Lane) {
    while let Some(next) = lane.release() {
        (next.job)(Start::NoThread);
    }
}

thread_local! {
    /// The pool this thread belongs to, for handing over jobs from inside `blocking`.
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

impl Pool {
    /// Called on each pool thread as it starts.
    fn adopt_current_thread(&self) {
        POOL.with(|p| *p.borrow_mut() = Some(self.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn run_all(pool: &Pool, lane: &Arc<Lane>, n: usize, work: Duration) -> mpsc::Receiver<usize> {
        let (tx, rx) = mpsc::channel();
        for i in 0..n {
            let tx = tx.clone();
            pool.submit(
                lane,
                Box::new(move |start| {
                    if matches!(start, Start::Run(_)) {
                        std::thread::sleep(work);
                    }
                    let _ = tx.send(i);
                }),
            );
        }
        rx
    }

    #[test]
    fn a_lane_runs_at_most_its_slots_at_once_in_order() {
        let pool = Pool::new(0, 16);
        let lane = Lane::new(2, Duration::from_secs(10));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for i in 0..8 {
            let (running, most, tx) = (running.clone(), most.clone(), tx.clone());
            pool.submit(
                &lane,
                Box::new(move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(i);
                }),
            );
        }
        let order: Vec<usize> = (0..8)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("job ran"))
            .collect();
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than the lane's slots"
        );
        // FIFO within the lane: each pair starts before the next.
        assert!(order[..2].iter().all(|i| *i < 2), "{order:?}");
        assert!(order[6..].iter().all(|i| *i >= 6), "{order:?}");
    }

    #[test]
    fn a_full_lane_does_not_delay_another_lane() {
        let pool = Pool::new(0, 64);
        let busy = Lane::new(2, Duration::from_secs(10));
        let _busy = run_all(&pool, &busy, 20, Duration::from_millis(200));
        let other = Lane::new(2, Duration::from_secs(10));
        let started = Instant::now();
        let rx = run_all(&pool, &other, 1, Duration::ZERO);
        rx.recv_timeout(Duration::from_secs(10)).expect("ran");
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "waited {:?} behind another lane",
            started.elapsed()
        );
    }

    #[test]
    fn a_waiting_guest_gives_its_slot_to_the_next_job() {
        let pool = Pool::new(0, 16);
        let lane = Lane::new(1, Duration::from_secs(10));
        let (tx, rx) = mpsc::channel();
        let sleeper_tx = tx.clone();
        pool.submit(
            &lane,
            Box::new(move |_| {
                let deadline = Instant::now() + Duration::from_secs(10);
                let slept = blocking(deadline, || std::thread::sleep(Duration::from_millis(300)));
                let _ = sleeper_tx.send(("sleeper", slept.is_ok()));
            }),
        );
        pool.submit(
            &lane,
            Box::new(move |start| {
                let _ = tx.send(("quick", matches!(start, Start::Run(_))));
            }),
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).expect("first"),
            ("quick", true),
            "the quick job ran while the other slept"
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).expect("second"),
            ("sleeper", true)
        );
    }

    /// Poll a future once, with a waker that records whether it was woken.
    fn poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
        woken: &Arc<std::sync::atomic::AtomicBool>,
    ) -> std::task::Poll<F::Output> {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = std::task::Waker::from(Arc::new(Flag(woken.clone())));
        let mut cx = std::task::Context::from_waker(&waker);
        std::pin::Pin::new(future).poll(&mut cx)
    }

    #[test]
    fn a_turn_waits_in_the_lanes_order_and_gives_back_a_slot_it_no_longer_wants() {
        let pool = Pool::new(1, 4);
        let lane = Lane::new(1, Duration::from_secs(10));
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A free slot: the turn is at once.
        let mut free = pool.turn(&lane);
        assert!(poll_once(&mut free, &woken).is_ready());
        drop(free);
        // The slot is held (by that turn): a job, then a turn, wait in that order.
        let (tx, rx) = mpsc::channel();
        pool.submit(
            &lane,
            Box::new(move |start| {
                let _ = tx.send(matches!(start, Start::Run(_)));
            }),
        );
        let mut turn = pool.turn(&lane);
        assert!(poll_once(&mut turn, &woken).is_pending());
        assert_eq!(lane.waiting(), 2, "the job and the turn");
        pool.give_back(&lane);
        assert!(rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the job ran first"));
        // The job's thread gives the slot to the turn.
        let until = Instant::now() + Duration::from_secs(5);
        while !woken.load(Ordering::SeqCst) {
            assert!(Instant::now() < until, "the turn was never woken");
            std::thread::yield_now();
        }
        assert!(poll_once(&mut turn, &woken).is_ready());
        assert!(!lane.try_take(), "the turn holds the slot");
        pool.give_back(&lane);
        // A turn granted but dropped before it saw the grant gives the slot back.
        assert!(lane.try_take());
        let mut late = pool.turn(&lane);
        assert!(poll_once(&mut late, &woken).is_pending());
        pool.give_back(&lane);
        drop(late);
        assert!(
            lane.try_take(),
            "the granted, dropped turn gave its slot back"
        );
        // A turn dropped while waiting gives up its place: the slot goes to the free count.
        let mut gone = pool.turn(&lane);
        assert!(poll_once(&mut gone, &woken).is_pending());
        drop(gone);
        assert_eq!(lane.waiting(), 0, "a dropped turn leaves the queue at once");
        assert!(lane.lock().queue.is_empty());
        pool.give_back(&lane);
        assert!(lane.try_take(), "nobody holds the slot");
        assert_eq!(lane.waiting(), 0);
    }

    #[test]
    fn a_job_that_waited_past_its_lane_limit_is_refused() {
        let pool = Pool::new(0, 16);
        let lane = Lane::new(1, Duration::from_millis(50));
        let _first = run_all(&pool, &lane, 1, Duration::from_millis(200));
        let (tx, rx) = mpsc::channel();
        pool.submit(
            &lane,
            Box::new(move |start| {
                let _ = tx.send(matches!(start, Start::Expired(_)));
            }),
        );
        assert_eq!(lane.waiting(), 1);
        assert!(rx.recv_timeout(Duration::from_secs(5)).expect("answered"));
        assert_eq!(lane.waiting(), 0);
    }
}
