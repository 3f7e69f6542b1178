//! The inline path: a short guest run on the async thread that received its request, instead of
//! a hand-off to a pool thread and back (two thread wake-ups that cost more CPU than a small
//! guest itself). A request may run inline only when running it again from the start changes
//! nothing anyone can see:
//! - the lean host, no backends (a subrequest is a side effect), the whole body in hand (at
//!   most `BODY_MAX`), an instantiation that writes at most `INIT_BYTES_MAX`;
//! - nothing reaches the client before the guest ends (the response is held, up to
//!   `HELD_OUTPUT_MAX`);
//! - no host call waits (a sleep, a slow client): the first that would, ends the attempt;
//! - at most `SLICE` of wall time: the watchdog ends the attempt there in Wasm code, and host
//!   calls that loop over what a guest hands them check the slice where they check the
//!   deadline;
//! - no bulk memory or table operator dearer than `BULK_MAX` (it would run to its end in host
//!   code, past the slice): the first such operator ends the attempt before it runs.
//!
//! An attempt that hits any of these is discarded (its output, its log, its stderr) and the
//! request runs again from the start on a pool thread, under the deadline of the instant the
//! attempt started. Its app then stays off the inline path for a while (`FIRST_BACKOFF`,
//! doubled for each move in a row, up to `BACKOFF`), as does an app whose inline runs average
//! more than `MAX_AVERAGE_RUN` (for `BACKOFF`; each run counted up to `RUN_CLAMP`, so a run
//! preempted on a busy core does not count as a slow app): inline is for the short guests an edge serves
//! most. An async thread running a guest serves no connection meanwhile, so what bounds that
//! stall is the slice for one request, and the average for an app's stream of requests; a slow
//! or sleeping guest costs an async thread one slice per backoff. An inline run holds one of
//! its tenant's CPU slots like any other run, so a tenant's guests running at once, inline or
//! on the pool, stay within its slots; a request whose tenant has none free, or a queue, goes
//! to the pool as before.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest an inline attempt may run before it moves to a pool thread.
pub const SLICE: Duration = Duration::from_millis(2);
/// How long an app stays off the inline path after its inline runs averaged too long, and the
/// most it stays off after attempts that moved.
pub const BACKOFF: Duration = Duration::from_secs(10);
/// How long an app stays off the inline path after an attempt moved: doubled for each move in a
/// row (an inline run that completes resets it), up to `BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Inline runs averaging more than this (an exponential average) are better on a pool thread:
/// the hand-off they would save is a few microseconds.
pub const MAX_AVERAGE_RUN: Duration = Duration::from_micros(250);
/// What one run adds to the average at most. Runs are timed by the wall clock, and on a busy
/// core a short guest's run is sometimes preempted for milliseconds: without the clamp (and a
/// weight of 1/32) one such run took its app off the inline path for `BACKOFF`, and a node
/// under load could lose the path for good, ten seconds at a time. An app whose runs all take
/// `RUN_CLAMP` still leaves within about ten; one whose runs are short but preempted a quarter
/// of the time stays.
pub const RUN_CLAMP: Duration = Duration::from_millis(1);
/// Response bytes an inline attempt may hold before it moves (they are sent when it ends).
pub const HELD_OUTPUT_MAX: usize = 256 << 10;
/// Bytes an app's instantiation writes (data segments, tables' initial elements at 16 bytes
/// each) past which it never runs inline: instantiation runs no Wasm, so neither the slice nor
/// fuel can stop it.
pub const INIT_BYTES_MAX: u64 = 1 << 20;
/// The largest request body an inline attempt takes: a guest copies stdin in one host call.
pub const BODY_MAX: usize = 256 << 10;
/// The dearest bulk operator an inline attempt runs, in fuel (256 Ki units: a 4 MiB
/// `memory.fill` or `memory.copy`, or 256 Ki table elements); a dearer one moves the attempt
/// before it starts. A bulk operator runs in host code, where the slice's signal does not stop
/// it (`sandbox/signals.rs`).
pub const BULK_MAX: u64 = 256 << 10;

thread_local! {
    /// Set while this thread runs a guest inline.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Set when the inline attempt on this thread must move to a pool thread.
    static MOVE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread runs a guest inline now.
pub fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// A host call is about to wait, or the attempt ran out of its slice: inline, this ends the
/// attempt (the caller stops the guest with any failure; the attempt is discarded). False on a
/// pool thread, where the wait goes ahead.
pub fn must_move() -> bool {
    if active() {
        MOVE.with(|m| m.set(true));
        true
    } else {
        false
    }
}

/// Marks this thread as running a guest inline until dropped; says at the end whether the
/// attempt asked to move.
pub struct Attempt(());

impl Attempt {
    pub fn begin() -> Self {
        ACTIVE.with(|a| a.set(true));
        MOVE.with(|m| m.set(false));
        Self(())
    }

    /// End the attempt: true if it must run again on a pool thread.
    pub fn end(self) -> bool {
        MOVE.with(Cell::take)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
        MOVE.with(|m| m.set(false));
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// One app version's inline record: whether it may run inline now, and how long its inline
/// runs take.
#[derive(Debug, Default)]
pub struct AppRecord {
    /// Off the inline path until this instant (nanoseconds since the process's epoch).
    off_until: AtomicU64,
    /// Exponential average of inline run times, nanoseconds, from zero.
    average: AtomicU64,
    /// Attempts that moved since the last inline run that completed.
    moves: AtomicU64,
}

impl AppRecord {
    pub fn allowed(&self, now: Instant) -> bool {
        nanos_since_epoch(now) >= self.off_until.load(Ordering::Relaxed)
    }

    /// An attempt moved to a pool thread: off the inline path for a while, longer each time.
    pub fn moved(&self, now: Instant) {
        let moves = self.moves.fetch_add(1, Ordering::Relaxed).min(16);
        let off = FIRST_BACKOFF.saturating_mul(1 << moves).min(BACKOFF);
        self.off_until
            .store(nanos_since_epoch(now + off), Ordering::Relaxed);
    }

    /// An inline run completed in `took`.
    pub fn ran(&self, took: Duration, now: Instant) {
        self.moves.store(0, Ordering::Relaxed);
        let took = u64::try_from(took.min(RUN_CLAMP).as_nanos()).unwrap_or(u64::MAX);
        let old = self.average.load(Ordering::Relaxed);
        // Weight 1/32, from zero: a slow start (a cold memory, a first fault) or a preempted
        // run does not take an app off the path; about ten long runs in a row do.
        let new = old - old / 32 + took / 32;
        self.average.store(new, Ordering::Relaxed);
        if new > MAX_AVERAGE_RUN.as_nanos() as u64 {
            self.back_off(now);
        }
    }

    fn back_off(&self, now: Instant) {
        self.average.store(0, Ordering::Relaxed);
        self.off_until
            .store(nanos_since_epoch(now + BACKOFF), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_or_slow_app_stays_off_the_inline_path_for_the_backoff() {
        let now = Instant::now();
        let record = AppRecord::default();
        assert!(record.allowed(now));
        record.moved(now);
        assert!(!record.allowed(now + FIRST_BACKOFF / 2));
        assert!(record.allowed(now + FIRST_BACKOFF));
        record.moved(now);
        assert!(
            !record.allowed(now + FIRST_BACKOFF * 3 / 2),
            "the second move waits longer"
        );
        assert!(record.allowed(now + FIRST_BACKOFF * 2));
        for _ in 0..20 {
            record.moved(now);
        }
        assert!(!record.allowed(now + BACKOFF / 2));
        assert!(
            record.allowed(now + BACKOFF),
            "never longer than the backoff"
        );
        record.ran(Duration::from_micros(10), now);
        record.moved(now);
        assert!(
            record.allowed(now + FIRST_BACKOFF),
            "a completed run starts over"
        );

        let record = AppRecord::default();
        for _ in 0..100 {
            record.ran(Duration::from_micros(20), now);
        }
        assert!(record.allowed(now), "short runs stay inline");
        let mut runs = 0;
        while record.allowed(now) && runs < 100 {
            record.ran(Duration::from_millis(1), now);
            runs += 1;
        }
        assert!(!record.allowed(now), "long runs leave the inline path");
        assert!(runs <= 12, "within a few long runs, not {runs}");

        // Short runs of which every fifth was preempted for 5 ms (wall time) stay inline.
        let record = AppRecord::default();
        for i in 0..1_000 {
            let took = if i % 5 == 4 {
                Duration::from_millis(5)
            } else {
                Duration::from_micros(10)
            };
            record.ran(took, now);
        }
        assert!(
            record.allowed(now),
            "a preempted run now and then stays inline"
        );
    }

    #[test]
    fn an_attempt_moves_only_when_asked_and_only_inline() {
        assert!(!must_move(), "a pool thread's wait goes ahead");
        let attempt = Attempt::begin();
        assert!(active());
        assert!(!attempt.end(), "an attempt that asked nothing stays");
        assert!(!active());
        let attempt = Attempt::begin();
        assert!(must_move());
        assert!(attempt.end());
        assert!(!active());
        assert!(!must_move());
    }
}
