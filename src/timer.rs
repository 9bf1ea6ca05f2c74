//! Timers: wake a queue when its next deadline (a message expiry, a delayed
//! message falling due, its own expiry) comes, whether or not anyone reads
//! it; time out an RPC call.
//!
//! Each target (a queue, a call) keeps at most one pending wake-up here, for
//! its earliest deadline; a queue woken does everything due and schedules
//! the next one.
//! With the system clock one thread per broker (started on first use) sleeps
//! until the earliest deadline; with a [`ManualClock`](crate::ManualClock)
//! there is no thread: `advance` fires the timers on the caller's thread.
//!
//! Lock order: a queue's lock may be held while scheduling here; the timer
//! lock is never held while a queue is called.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use crate::clock::Clock;
use crate::sync::{Arc, Condvar, Mutex, Weak};

/// Something the timers wake.
pub(crate) trait TimerTarget: Send + Sync {
    /// Its deadline came (the clock reads at least the scheduled instant).
    fn on_timer(&self);
}

#[derive(Default)]
struct TimerState {
    /// Pending wake-ups in time order: `(deadline, target id)`.
    due: BTreeSet<(Instant, u64)>,
    /// Each target's one pending wake-up, by target id.
    by_target: HashMap<u64, (Instant, Weak<dyn TimerTarget>)>,
    thread_started: bool,
    shutdown: bool,
}

/// A broker's timer service.
pub(crate) struct Timers {
    clock: Clock,
    state: Mutex<TimerState>,
    wake: Condvar,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers").field("pending", &self.state.lock().due.len()).finish()
    }
}

impl Timers {
    pub(crate) fn new(clock: Clock) -> Arc<Self> {
        let timers =
            Arc::new(Timers { clock, state: Mutex::new(TimerState::default()), wake: Condvar::new() });
        timers.clock.register(&timers);
        timers
    }

    /// Asks for `target` (id `id`, unique per broker) to be woken at `at`,
    /// unless it is already to be woken earlier. Returns the instant it will
    /// be woken at.
    pub(crate) fn schedule(self: &Arc<Self>, target: Weak<dyn TimerTarget>, id: u64, at: Instant) -> Instant {
        let mut state = self.state.lock();
        if state.shutdown {
            return at;
        }
        if let Some((current, _)) = state.by_target.get(&id) {
            if *current <= at {
                return *current;
            }
            let current = *current;
            state.due.remove(&(current, id));
        }
        state.by_target.insert(id, (at, target));
        state.due.insert((at, id));
        let earliest = state.due.first().is_some_and(|&(first, _)| first == at);
        if !self.clock.is_manual() {
            if !state.thread_started {
                state.thread_started = true;
                let timers = Arc::clone(self);
                let spawned =
                    std::thread::Builder::new().name("interoffice-timers".into()).spawn(move || {
                        // `run` returns only at shutdown; should it ever panic, it
                        // is reported and started again rather than leaving the
                        // broker without timers.
                        while let Err(panic) = catch_unwind(AssertUnwindSafe(|| Arc::clone(&timers).run())) {
                            tracing::error!(
                                panic = panic_message(&*panic),
                                "interoffice: the timer thread panicked; restarting it"
                            );
                        }
                    });
                if spawned.is_err() {
                    // Without the thread, expiry still happens lazily whenever
                    // the queue is used; try again on the next schedule.
                    state.thread_started = false;
                }
            } else if earliest {
                self.wake.notify_one();
            }
        }
        at
    }

    /// Forgets the pending wake-up of target `id`.
    pub(crate) fn cancel(&self, id: u64) {
        let mut state = self.state.lock();
        if let Some((at, _)) = state.by_target.remove(&id) {
            state.due.remove(&(at, id));
        }
    }

    /// The earliest pending wake-up.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.state.lock().due.first().map(|&(at, _)| at)
    }

    /// Wakes every target whose deadline is at or before `now`.
    pub(crate) fn fire_due(&self, now: Instant) {
        let due: Vec<Arc<dyn TimerTarget>> = {
            let mut state = self.state.lock();
            let mut out = Vec::new();
            while let Some(&(at, id)) = state.due.first() {
                if at > now {
                    break;
                }
                state.due.pop_first();
                if let Some((_, target)) = state.by_target.remove(&id)
                    && let Some(target) = target.upgrade()
                {
                    out.push(target);
                }
            }
            out
        };
        for target in due {
            // A panic in one target (a bug) must not take the timers down
            // with it: every later expiry, delay and call timeout of the
            // broker depends on them. It is reported, and the rest fire.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target.on_timer())) {
                tracing::error!(panic = panic_message(&*panic), "interoffice: a timer target panicked");
            }
        }
    }

    /// Stops the timer thread: the broker is gone.
    pub(crate) fn shutdown(&self) {
        let mut state = self.state.lock();
        state.shutdown = true;
        state.due.clear();
        state.by_target.clear();
        self.wake.notify_all();
    }

    /// The timer thread (system clock only).
    fn run(self: Arc<Self>) {
        let mut state = self.state.lock();
        loop {
            if state.shutdown {
                return;
            }
            let now = self.clock.now();
            match state.due.first().map(|&(at, _)| at) {
                Some(at) if at <= now => {
                    drop(state);
                    self.fire_due(now);
                    state = self.state.lock();
                }
                Some(at) => {
                    self.wake.wait_until(&mut state, at);
                }
                None => self.wake.wait(&mut state),
            }
        }
    }
}

/// The text of a panic payload, for reports.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string panic payload)")
}
