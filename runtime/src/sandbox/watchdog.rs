//! Wall-clock deadlines for running guests: one timer thread that interrupts a store whose
//! deadline passed, and keeps interrupting until the worker disarms it (an interrupt that lands
//! while the guest is inside a host call is not guaranteed to be seen).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmer::Interrupter;

const RETRY: Duration = Duration::from_millis(5);
/// While guests keep arming deadlines, the timer thread wakes at least this often on its own,
/// so an arm rarely has to wake it: a notification costs the arming thread a futex call and
/// the timer thread a context switch, and under load (a deadline armed for every inline run)
/// that was most of the watchdog's cost. After a whole tick in which nothing was armed, it
/// waits to be notified again. No deadline fires later for it: the thread still sleeps
/// towards the earliest one, and an arm whose deadline comes before the thread's next wake
/// notifies it. Half the inline slice, the shortest deadline armed under load: such an arm's
/// deadline comes after the thread's next wake unless its clock was read half a slice before
/// the thread's (with a whole slice, an arm that read the clock a moment before the thread
/// woke, or waited for the lock while it did, still notified it).
const TICK: Duration = super::inline::SLICE.checked_div(2).expect("two");
const _: () = assert!(!TICK.is_zero(), "a zero tick would spin");

/// Something else to do when a deadline passes (for hosts whose waits the interrupt cannot
/// end), called each time the interrupt is sent.
pub type OnFire = Arc<dyn Fn() + Send + Sync>;

struct Armed {
    interrupter: Interrupter,
    also: Option<OnFire>,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct Timers {
    next_id: u64,
    armed: BTreeMap<(Instant, u64), Armed>,
    /// What the timer thread sleeps towards (`None`: until notified).
    sleeping_until: Option<Instant>,
    /// Whether anything was armed since the timer thread last woke.
    armed_since_wake: bool,
    /// The last wake of the timer thread that found something armed since the one before: it
    /// ticks until a whole tick passed after it.
    busy_at: Option<Instant>,
    /// Times an arm notified the timer thread.
    notified: u64,
}

#[derive(Clone)]
pub struct Watchdog {
    shared: Arc<(Mutex<Timers>, Condvar)>,
}

/// Disarms its timer when dropped; says whether the deadline fired.
pub struct Guard {
    shared: Arc<(Mutex<Timers>, Condvar)>,
    key: (Instant, u64),
    fired: Arc<AtomicBool>,
}

impl Guard {
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// The flag `fired` reads, set (under the timers' lock) before each interrupt is sent.
    pub fn fired_flag(&self) -> &AtomicBool {
        &self.fired
    }

    /// Disarm, and tell whether the interrupt was ever sent: after this it never is (the
    /// flag is set under the timers' lock before sending, and disarming takes that lock).
    pub fn disarm(self) -> bool {
        let fired = self.fired.clone();
        drop(self);
        fired.load(Ordering::SeqCst)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut timers) = self.shared.0.lock() {
            if timers.armed.remove(&self.key).is_none() {
                // It fired and was re-armed for a retry under a later instant.
                let id = self.key.1;
                timers.armed.retain(|(_, other), _| *other != id);
            }
        }
    }
}

impl Watchdog {
    pub fn start() -> std::io::Result<Self> {
        let shared: Arc<(Mutex<Timers>, Condvar)> = Arc::default();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("outpost-watchdog".into())
            .spawn(move || run(&thread_shared))?;
        Ok(Self { shared })
    }

    pub fn arm(&self, deadline: Instant, interrupter: Interrupter) -> Guard {
        self.arm_with(deadline, interrupter, None)
    }

    /// `arm`, and call `also` each time the interrupt is sent.
    pub fn arm_with(
        &self,
        deadline: Instant,
        interrupter: Interrupter,
        also: Option<OnFire>,
    ) -> Guard {
        let fired = Arc::new(AtomicBool::new(false));
        let (lock, wake) = &*self.shared;
        let mut id = 0;
        if let Ok(mut timers) = lock.lock() {
            timers.next_id += 1;
            id = timers.next_id;
            // Waking the timer thread costs a context switch; it is needed only when this
            // deadline comes before the instant it already sleeps towards.
            let earliest = timers.sleeping_until;
            timers.armed.insert(
                (deadline, id),
                Armed {
                    interrupter,
                    also,
                    fired: fired.clone(),
                },
            );
            timers.armed_since_wake = true;
            if earliest.is_none_or(|e| deadline < e) {
                timers.notified += 1;
                wake.notify_one();
            }
        }
        Guard {
            shared: self.shared.clone(),
            key: (deadline, id),
            fired,
        }
    }
}

fn run(shared: &(Mutex<Timers>, Condvar)) {
    let (lock, wake) = shared;
    let Ok(mut timers) = lock.lock() else { return };
    loop {
        let now = Instant::now();
        let due = timers.armed.first_key_value().map(|(k, _)| *k);
        match due {
            Some(key) if key.0 <= now => {
                if let Some(armed) = timers.armed.remove(&key) {
                    armed.fired.store(true, Ordering::SeqCst);
                    armed.interrupter.interrupt();
                    if let Some(also) = &armed.also {
                        also();
                    }
                    timers.armed.insert((now + RETRY, key.1), armed);
                }
            }
            due => {
                if std::mem::take(&mut timers.armed_since_wake) {
                    timers.busy_at = Some(now);
                }
                // A wake towards a deadline can come soon after the last: ticking stops only
                // after a whole tick without an arm.
                let ticking = timers
                    .busy_at
                    .is_some_and(|busy| now.duration_since(busy) < TICK);
                let until = match (due, ticking) {
                    (Some((at, _)), true) => Some(at.min(now + TICK)),
                    (Some((at, _)), false) => Some(at),
                    (None, true) => Some(now + TICK),
                    (None, false) => None,
                };
                timers.sleeping_until = until;
                timers = match until {
                    Some(at) => match wake.wait_timeout(timers, at - now) {
                        Ok((t, _)) => t,
                        Err(_) => return,
                    },
                    None => match wake.wait(timers) {
                        Ok(t) => t,
                        Err(_) => return,
                    },
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::inline;
    use std::sync::atomic::AtomicU64;

    fn interrupter() -> Interrupter {
        wasmer::Store::default().interrupter()
    }

    fn notified(watchdog: &Watchdog) -> u64 {
        watchdog.shared.0.lock().map(|t| t.notified).unwrap_or(0)
    }

    /// Waits up to `within` for `done`.
    fn eventually(within: Duration, done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done()
    }

    #[test]
    fn a_deadline_fires_until_disarmed_and_a_later_one_waits() {
        let watchdog = Watchdog::start().expect("timer thread");
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let also: OnFire = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let later = watchdog.arm(Instant::now() + Duration::from_secs(60), interrupter());
        let soon = watchdog.arm_with(
            Instant::now() + Duration::from_millis(5),
            interrupter(),
            Some(also),
        );
        assert!(
            eventually(Duration::from_secs(10), || calls.load(Ordering::SeqCst)
                >= 2),
            "fired and retried: {} calls",
            calls.load(Ordering::SeqCst)
        );
        assert!(soon.disarm(), "the disarmed guard says it fired");
        let after = calls.load(Ordering::SeqCst);
        std::thread::sleep(RETRY * 3);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after,
            "disarmed: no more interrupts"
        );
        assert!(!later.fired(), "a deadline a minute away has not fired");
    }

    #[test]
    fn guests_arming_one_after_another_do_not_wake_the_timer_thread_each_time() {
        let watchdog = Watchdog::start().expect("timer thread");
        // Let the thread park: the first arm notifies it.
        std::thread::sleep(TICK * 3);
        let start = Instant::now();
        let (mut arms, mut gaps) = (0u64, 0u64);
        let mut last = start;
        while start.elapsed() < Duration::from_millis(200) {
            // A short run, then a wait for the next request: the thread mostly finds nothing
            // armed when it wakes.
            let now = Instant::now();
            let guard = watchdog.arm(now + inline::SLICE, interrupter());
            // A pause between two arms, or between reading the clock and arming.
            if now.duration_since(last) >= TICK || now.elapsed() >= TICK {
                gaps += 1;
            }
            last = now;
            drop(guard);
            arms += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        let notified = notified(&watchdog);
        // Without the ticks, every wake of the thread that finds nothing armed costs the next
        // arm a notification (about 140 in 200 ms here). With them, only the first arm and one
        // after each pause of a whole tick (this thread held off its core) may notify.
        assert!(
            notified <= 3 + gaps,
            "{notified} of {arms} arms notified the timer thread in 200 ms, with {gaps} pauses"
        );
        // Deadlines still fire while it ticks.
        let fired = watchdog.arm(Instant::now() + Duration::from_millis(3), interrupter());
        assert!(eventually(Duration::from_secs(10), || fired.fired()));
    }
}
