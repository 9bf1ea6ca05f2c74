//! Time: the clock a broker reads, real or driven by hand.
//!
//! Every time-based policy (message TTL, queue expiry, delayed delivery, the
//! deduplication window) reads the broker's [`Clock`]. The system clock is the
//! default; a [`ManualClock`] only moves when a test advances it, and fires
//! every timer that falls due on the way before `advance` returns, so
//! time-based tests need no `sleep` and give the same result on every run.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::{Arc, AtomicU64, Mutex, Ordering, Weak};
use crate::timer::Timers;

/// The longest duration the bus accepts for a message TTL, a queue's
/// `expires`, a delay or a deduplication window: ten years
/// (315,360,000,000 ms), RabbitMQ's own limit (it refuses a longer
/// `x-message-ttl`, `x-expires` or `expiration` with `value_too_large`).
///
/// Declarations with a longer duration are refused; builders that take a
/// `Duration` ([`Message::with_expiration`](crate::Message::with_expiration),
/// [`Message::with_delay`](crate::Message::with_delay),
/// [`Delivery::nack_with_delay`](crate::Delivery::nack_with_delay),
/// [`OnError::RequeueAfter`](crate::OnError::RequeueAfter)) clamp to it, so
/// `Duration::MAX` reads as "as long as possible".
pub const MAX_DURATION: Duration = Duration::from_millis(315_360_000_000);

/// `at + by`, saturating: an instant past what `Instant` can hold becomes
/// the latest one it can (found by halving), never a panic. Every deadline
/// the bus computes goes through here.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    let mut by = by;
    loop {
        if let Some(t) = at.checked_add(by) {
            return t;
        }
        by /= 2;
    }
}

/// The instant every [`Deadline`] counts from: set by the first clock read
/// in the process, so every instant a clock hands out is at or after it.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An instant in 8 bytes rather than `Option<Instant>`'s 16: nanoseconds
/// since [`epoch`], plus one so that `Option<Deadline>` is 8 bytes too. A
/// queued message carries one (its expiry), so this is 8 bytes less for
/// every message in every queue. Exact for every instant a clock gives
/// (nanosecond resolution, 584 years of range; the bus's deadlines are at
/// most [`MAX_DURATION`] ahead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Deadline(std::num::NonZeroU64);

impl Deadline {
    /// `at`, clamped to the representable range (instants before the epoch
    /// cannot come from a clock).
    pub(crate) fn at(at: Instant) -> Deadline {
        let nanos = u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX);
        Deadline(std::num::NonZeroU64::new(nanos.saturating_add(1)).unwrap_or(std::num::NonZeroU64::MAX))
    }

    /// The instant again.
    pub(crate) fn instant(self) -> Instant {
        later(epoch(), Duration::from_nanos(self.0.get() - 1))
    }
}

/// The source of time of a broker, set in
/// [`BrokerOptions::clock`](crate::BrokerOptions::clock).
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Broker, BrokerOptions, ManualClock};
///
/// let clock = ManualClock::new();
/// let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
/// let before = broker.clock().now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(broker.clock().now() - before, Duration::from_secs(5));
/// ```
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<ManualState>>,
}

impl Clock {
    /// The system clock: real time.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// The current instant, for deadlines.
    pub fn now(&self) -> Instant {
        match &self.manual {
            None => {
                epoch();
                Instant::now()
            }
            Some(manual) => manual.now(),
        }
    }

    /// The current wall-clock time, for timestamps (`x-death`'s `time`).
    pub fn system_time(&self) -> SystemTime {
        match &self.manual {
            None => SystemTime::now(),
            Some(manual) => manual.wall_base.checked_add(manual.elapsed()).unwrap_or(manual.wall_base),
        }
    }

    /// Whether this clock is driven by hand.
    pub(crate) fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Lets the clock fire `timers` when it is advanced by hand.
    pub(crate) fn register(&self, timers: &Arc<Timers>) {
        if let Some(manual) = &self.manual {
            let mut list = manual.timers.lock();
            list.retain(|t| t.strong_count() > 0);
            list.push(Arc::downgrade(timers));
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(manual) => write!(f, "Clock::Manual(+{:?})", manual.elapsed()),
        }
    }
}

impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.manual, &other.manual) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Clock {}

struct ManualState {
    base: Instant,
    wall_base: SystemTime,
    /// Nanoseconds advanced so far: read without a lock.
    offset_nanos: AtomicU64,
    /// The brokers' timer services this clock drives.
    timers: Mutex<Vec<Weak<Timers>>>,
    /// Serialises `advance` calls, so two advancing threads cannot fire
    /// timers out of time order.
    advancing: Mutex<()>,
}

impl ManualState {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }

    fn now(&self) -> Instant {
        later(self.base, self.elapsed())
    }

    /// The furthest this clock can go: `u64::MAX` nanoseconds (about 584
    /// years) past its start. A deadline beyond it never fires.
    fn end_of_time(&self) -> Instant {
        later(self.base, Duration::from_nanos(u64::MAX))
    }

    fn set(&self, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_max(nanos, Ordering::AcqRel);
    }
}

/// A clock that moves only when told to, for deterministic tests.
///
/// Clones share one time. [`advance`](Self::advance) fires every timer that
/// falls due on the way (message expiry, delayed messages, queue expiry), in
/// time order and on the calling thread, before it returns.
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Broker, BrokerOptions, ManualClock, Message, QueueOptions};
///
/// let clock = ManualClock::new();
/// let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
/// let conn = broker.connect();
/// conn.declare_queue("q", QueueOptions { message_ttl: Some(Duration::from_secs(60)), ..Default::default() })?;
/// conn.publish("", "q", Message::new("short-lived"))?;
/// clock.advance(Duration::from_secs(59));
/// assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ManualClock {
    state: Arc<ManualState>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").field("elapsed", &self.elapsed()).finish()
    }
}

impl ManualClock {
    /// A clock standing at the present moment.
    pub fn new() -> Self {
        ManualClock::at(SystemTime::now())
    }

    /// A clock starting at wall-clock time `wall`, which
    /// [`Clock::system_time`] reports (in `x-death` times, say) and which
    /// advances with the clock: for traces that are the same on every run.
    pub fn at(wall: SystemTime) -> Self {
        ManualClock {
            state: Arc::new(ManualState {
                base: {
                    epoch();
                    Instant::now()
                },
                wall_base: wall,
                offset_nanos: AtomicU64::new(0),
                timers: Mutex::new(Vec::new()),
                advancing: Mutex::new(()),
            }),
        }
    }

    /// The [`Clock`] to give a broker.
    pub fn clock(&self) -> Clock {
        Clock { manual: Some(Arc::clone(&self.state)) }
    }

    /// The current instant.
    pub fn now(&self) -> Instant {
        self.state.now()
    }

    /// How far the clock was advanced in total.
    pub fn elapsed(&self) -> Duration {
        self.state.elapsed()
    }

    /// Moves time forward by `by`. Each timer due by the new time fires at
    /// its own instant (the clock stops there while it runs), earliest first,
    /// so a chain of expiries resolves as it would in real time.
    ///
    /// Time saturates: advancing by `Duration::MAX` moves the clock as far
    /// as it can go (about 584 years in all) and fires everything due by
    /// then; a deadline beyond that never fires.
    pub fn advance(&self, by: Duration) {
        let _one_at_a_time = self.state.advancing.lock();
        // Capped at the end of this clock's time: a deadline past it would
        // otherwise be "due" by the target yet never reached by the clock,
        // and fire for ever.
        let target = later(self.state.now(), by).min(self.state.end_of_time());
        loop {
            let timers: Vec<Arc<Timers>> =
                self.state.timers.lock().iter().filter_map(Weak::upgrade).collect();
            let next = timers.iter().filter_map(|t| t.next_deadline()).min();
            match next {
                Some(at) if at <= target => {
                    self.state.set(at);
                    for t in &timers {
                        t.fire_due(at);
                    }
                }
                _ => break,
            }
        }
        self.state.set(target);
    }
}

impl From<ManualClock> for Clock {
    fn from(clock: ManualClock) -> Self {
        clock.clock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_gives_back_the_instant_it_was_made_from() {
        let clock = Clock::system();
        let now = clock.now();
        for by in [Duration::ZERO, Duration::from_nanos(1), Duration::from_millis(1500), MAX_DURATION] {
            let at = later(now, by);
            assert_eq!(Deadline::at(at).instant(), at);
        }
        assert!(Deadline::at(now) < Deadline::at(later(now, Duration::from_nanos(1))));
        assert_eq!(std::mem::size_of::<Option<Deadline>>(), 8);
    }

    #[test]
    fn a_manual_clock_s_instants_are_deadlines_too() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        let start = clock.now();
        manual.advance(Duration::from_secs(3));
        let at = clock.now();
        assert_eq!(Deadline::at(at).instant(), at);
        assert_eq!(Deadline::at(at).instant() - start, Duration::from_secs(3));
    }
}
