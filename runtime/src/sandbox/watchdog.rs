//! Wall-clock deadlines for running guests: one timer thread that interrupts a store whose
//! deadline passed, and keeps interrupting until the worker disarms it (an interrupt that lands
//! while the guest is inside a host call is not guaranteed to be seen).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmer::Interrupter;

const RETRY: Duration = Duration::from_millis(5);

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
            if earliest.is_none_or(|e| deadline < e) {
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
            Some((at, _)) => {
                timers.sleeping_until = Some(at);
                timers = match wake.wait_timeout(timers, at - now) {
                    Ok((t, _)) => t,
                    Err(_) => return,
                };
            }
            None => {
                timers.sleeping_until = None;
                timers = match wake.wait(timers) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            }
        }
    }
}
