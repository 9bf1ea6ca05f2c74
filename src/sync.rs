//! The synchronisation primitives the crate uses, in one place.
//!
//! Everything concurrent goes through these names so that a model checker
//! (loom) can be swapped in behind them without touching the broker's logic:
//! `tests/loom.rs` compiles the protocols that need checking (`credit.rs`,
//! `wake.rs`, `inbox/ring.rs`) against a `sync` module of its own that maps these names to
//! loom's types. (crossbeam's channels and parking_lot's internals are not
//! model-checked; the protocols around them are.)
//! The mutex is parking_lot's: no poisoning, so a panicking consumer thread
//! never wedges a queue for everyone else.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering, fence};
pub(crate) use std::sync::{Arc, Weak};

pub(crate) use parking_lot::{Condvar, Mutex};

/// An `UnsafeCell` with loom's access API (`with_mut` hands out a raw
/// pointer for the duration of a closure), so that under `tests/loom.rs`
/// every access is checked for a data race.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer to the value; what `f` may do with it is
    /// the caller's proof to make.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Runs a unit test of a protocol module: here, directly; under
/// `tests/loom.rs`, which compiles those modules against its own facade,
/// inside a loom model.
#[cfg(test)]
pub(crate) fn model(test: impl Fn()) {
    test();
}

/// A value on a cache line of its own (128 bytes: adjacent-line prefetch
/// pairs lines on x86), so that writes to its neighbours leave it alone:
/// for what one thread writes per message and another reads or writes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub(crate) T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// How long [`spin_wait`] spins without yielding the CPU: enough for an
/// in-process hand-off (a request/reply round trip takes about 2 µs on the
/// development VM, its server's wait for the next request half of that).
/// Longer, a waiting thread keeps its core from the threads that would end
/// the wait wherever threads outnumber cores: busy for the first 25 µs (half
/// of a consumer's 50), four producers and four consumers on two cores ran
/// 3.7 M/s; busy for 2 µs, then yielding, 4.7 M/s (eight interleaved runs
/// each; a 1→10 fanout +3%, request/reply and 1→1 unchanged).
pub(crate) const BUSY_SPIN: std::time::Duration = std::time::Duration::from_micros(2);

/// Spins for up to `limit` waiting for `poll` to give a value: busy for the
/// first [`BUSY_SPIN`] (or half of `limit`, if less), then yielding the CPU
/// between polls; past its first 16 polls, it yields from then on if half
/// the process's cores' worth of threads were waiting already. For waits
/// that are usually microseconds long (an in-process reply, the next
/// message), where parking the thread and waking it again would cost more
/// than the wait. `None` if `poll` gave nothing in time: then park.
///
/// Polls once before reading the clock, and reads it only every 16 spins:
/// a clock read costs about as much as a poll, and a busy consumer finds
/// its next message on the first poll (reading the clock there took 14% of
/// a 1→1 run's time). Busy-spinning rather than yielding from the start:
/// a `sched_yield` is a system call of about a microsecond, and yielding
/// after 64 spins made scheduling half of a request/reply round trip.
pub(crate) fn spin_wait<T>(limit: std::time::Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    if let Some(value) = poll() {
        return Some(value);
    }
    let start = std::time::Instant::now();
    // Counted among the spinning threads only once the wait outlasts its
    // first 16 polls: a consumer at its publisher's heels finds its next
    // message sooner, and two locked instructions per message on that
    // path cost a 1→1 run 8% (`examples/bench` direct).
    let mut spinning: Option<Spinning> = None;
    let mut busy = true;
    for spins in 0_u32.. {
        if busy {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        if let Some(value) = poll() {
            return Some(value);
        }
        if spins % 16 == 15 {
            let elapsed = start.elapsed();
            if elapsed >= limit {
                break;
            }
            let may_busy =
                spinning.get_or_insert_with(|| Spinning::enter(&SPINNING, busy_spinners())).may_busy;
            busy = may_busy && elapsed < (limit / 2).min(BUSY_SPIN);
        }
    }
    None
}

/// Threads in [`spin_wait`] past its first 16 polls, process-wide.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// One thread's place among the [`SPINNING`] ones, given up on drop (also
/// when a poll unwinds).
struct Spinning {
    count: &'static AtomicUsize,
    /// Whether this wait may spin busily: only while at most half of the
    /// cores' worth of threads are waiting, so that waiters never take every
    /// core from the threads they wait for. (Ten consumers of a 1→10 fanout
    /// on two cores, each spinning busily for its 2 µs whenever it ran dry,
    /// took a third of the samples from the one publisher.)
    may_busy: bool,
}

impl Spinning {
    /// Counts a thread in `count`; it may spin busily if fewer than `busy`
    /// were there before it.
    fn enter(count: &'static AtomicUsize, busy: usize) -> Self {
        let before = count.fetch_add(1, Ordering::Relaxed);
        Spinning { count, may_busy: before < busy }
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many threads may spin busily at once: half the cores this process
/// may use, at least one.
fn busy_spinners() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_busy_spinners_may_spin_busily_and_leaving_makes_room() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let first = Spinning::enter(&COUNT, 2);
        let second = Spinning::enter(&COUNT, 2);
        let third = Spinning::enter(&COUNT, 2);
        assert_eq!((first.may_busy, second.may_busy, third.may_busy), (true, true, false));
        drop((first, third));
        let fourth = Spinning::enter(&COUNT, 2);
        assert!(fourth.may_busy, "with one waiter left, a second may spin busily again");
        drop((second, fourth));
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_wait_whose_poll_panics_leaves_the_count_as_it_found_it() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let unwound = std::panic::catch_unwind(|| {
            let _place = Spinning::enter(&COUNT, 1);
            panic!("a poll panicked");
        });
        assert!(unwound.is_err());
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn spin_wait_gives_what_the_poll_gives_or_none_in_time() {
        let mut polls = 0;
        let got = spin_wait(std::time::Duration::from_secs(5), || {
            polls += 1;
            (polls == 40).then_some(polls)
        });
        assert_eq!(got, Some(40), "past the first 16 polls, counted, and still polling");
        assert_eq!(spin_wait(std::time::Duration::from_micros(20), || None::<()>), None);
        assert!(busy_spinners() >= 1);
    }
}
