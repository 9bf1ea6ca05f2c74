//! Settling: waiting until the bus is quiescent, for tests of service
//! interactions.
//!
//! The bus is quiescent when no queue holds a ready message (or, under the
//! system clock, a delayed one), no delivery is unsettled, and no message is
//! between a publish and its queues or between a queue and its dead-letter
//! exchange. Queues are read one at a time, each under its own lock, so the
//! reading alone is not one consistent picture: a message could leave a
//! queue not yet read for one already read. Every such move is bracketed by
//! the [`Activity`] counters — a publish counts from its start to its return,
//! a dead letter from the moment it leaves its queue (under that queue's
//! lock) to the end of its routing — and [`settle`] accepts a reading only if
//! nothing was in flight before it and nothing began or ended during it.
//!
//! Moves inside one queue (ready → consumer → settled or requeued, delayed →
//! ready) happen under that queue's lock and are never invisible: a
//! delivery counts as unacknowledged from the moment it is sent to a
//! consumer's inbox until it is settled.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::sync::{AtomicU64, Ordering};

/// Stripes of the activity counters: a publisher bumps the stripe of its own
/// thread, so publishers on different cores do not share a cache line.
const STRIPES: usize = 16;

/// One stripe: monotonic counts of moves begun and ended. Aligned to a
/// cache line pair (the prefetcher fetches lines in pairs).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Stripe {
    begun: AtomicU64,
    ended: AtomicU64,
}

/// Counts of messages in flight outside every queue: see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    stripes: [Stripe; STRIPES],
}

/// The stripe a thread uses, assigned round-robin at its first move.
pub(crate) fn stripe_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
    }
    INDEX.try_with(|i| *i).unwrap_or(0)
}

impl Activity {
    /// `n` moves begin. SeqCst: a reader that sees the effects of a move
    /// (a queue changed) must also see that it began.
    #[inline]
    pub(crate) fn begin(&self, n: u64) {
        self.stripes[stripe_index()].begun.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` moves ended.
    #[inline]
    pub(crate) fn end(&self, n: u64) {
        self.stripes[stripe_index()].ended.fetch_add(n, Ordering::SeqCst);
    }

    /// One move, ended when the guard drops (also when unwinding).
    #[inline]
    pub(crate) fn busy(&self) -> Busy<'_> {
        let index = stripe_index();
        let stripe = &self.stripes[index];
        stripe.begun.fetch_add(1, Ordering::SeqCst);
        Busy { stripe, index }
    }

    fn begun(&self) -> u64 {
        self.stripes.iter().map(|s| s.begun.load(Ordering::SeqCst)).fold(0, u64::wrapping_add)
    }

    fn ended(&self) -> u64 {
        self.stripes.iter().map(|s| s.ended.load(Ordering::SeqCst)).fold(0, u64::wrapping_add)
    }

    /// Runs `read` (the reading of every queue) and returns its result with
    /// the number of moves in flight: 0 if the reading is a consistent
    /// picture — nothing was in flight when it started and nothing began or
    /// ended while it ran — else at least 1.
    ///
    /// The counters only grow, so equal sums read twice mean no stripe
    /// changed in between: `begun` is read first and last, `ended` second
    /// and second to last, so both were constant for the whole of `read`,
    /// and equal to each other.
    pub(crate) fn consistent<R>(&self, read: impl FnOnce() -> R) -> (R, u64) {
        let begun = self.begun();
        let ended = self.ended();
        let result = read();
        let ended_after = self.ended();
        let begun_after = self.begun();
        if begun != ended || ended_after != ended || begun_after != begun {
            return (result, begun_after.wrapping_sub(ended_after).max(1));
        }
        (result, 0)
    }
}

/// A move in flight; ends it when dropped.
/// The stripe is looked up once, at the start: the publish path reuses
/// its index for its other per-thread counters.
pub(crate) struct Busy<'a> {
    stripe: &'a Stripe,
    index: usize,
}

impl Busy<'_> {
    /// This thread's stripe index, for other striped counters.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.stripe.ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// What one queue still holds that keeps the bus from being quiescent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PendingQueue {
    /// The virtual host it is in.
    pub vhost: String,
    /// The queue.
    pub name: String,
    /// Messages waiting for a consumer.
    pub ready: usize,
    /// Delayed messages (pending only under the system clock: see
    /// [`Broker::settle`](crate::Broker::settle)).
    pub delayed: usize,
    /// Deliveries not yet settled, by consumer tag; `basic.get` deliveries
    /// are listed under `"(get)"`, those of cancelled consumers under their
    /// tag.
    pub unacknowledged: Vec<(String, usize)>,
    /// Consumers attached: a queue with ready messages and none is waiting
    /// for a consumer that may never come.
    pub consumers: usize,
}

impl PendingQueue {
    /// All unacknowledged deliveries of the queue.
    pub fn unacknowledged_total(&self) -> usize {
        self.unacknowledged.iter().map(|(_, n)| n).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ready == 0 && self.delayed == 0 && self.unacknowledged.is_empty()
    }
}

impl fmt::Display for PendingQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The default vhost goes unsaid, as in RabbitMQ's own texts for `/`
        // users see most.
        if self.vhost.is_empty() || self.vhost == "/" {
            write!(f, "queue '{}':", self.name)?;
        } else {
            write!(f, "queue '{}' in vhost '{}':", self.name, self.vhost)?;
        }
        let mut parts = Vec::new();
        if self.ready > 0 {
            let consumers = match self.consumers {
                0 => " (no consumer)".to_owned(),
                1 => " (1 consumer)".to_owned(),
                n => format!(" ({n} consumers)"),
            };
            parts.push(format!("{} ready{consumers}", self.ready));
        }
        if self.delayed > 0 {
            parts.push(format!("{} delayed", self.delayed));
        }
        for (tag, n) in &self.unacknowledged {
            parts.push(format!("{n} unacknowledged by {tag}"));
        }
        write!(f, " {}", parts.join(", "))
    }
}

/// What kept the bus busy when a settle gave up: see
/// [`Broker::settle`](crate::Broker::settle).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Pending {
    /// Messages between a publish and its queues, or between a queue and
    /// its dead-letter exchange, at the last look (a publish still running
    /// on another thread, a handler publishing).
    pub in_flight: u64,
    /// Queues holding work, by name.
    pub queues: Vec<PendingQueue>,
    /// For a conversation's settle: messages of the conversation still held
    /// somewhere (in a queue, a consumer's hands, a reply on its way).
    pub conversation_messages: u64,
}

impl Pending {
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.in_flight == 0 && self.queues.is_empty() && self.conversation_messages == 0
    }
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if !std::mem::take(&mut first) {
                f.write_str("; ")?;
            }
            Ok::<(), fmt::Error>(())
        };
        for queue in &self.queues {
            sep(f)?;
            write!(f, "{queue}")?;
        }
        if self.conversation_messages > 0 {
            sep(f)?;
            write!(f, "{} message(s) of the conversation still held", self.conversation_messages)?;
        }
        if self.in_flight > 0 {
            sep(f)?;
            write!(f, "{} message(s) in flight between exchanges and queues", self.in_flight)?;
        }
        if first {
            f.write_str("nothing")?;
        }
        Ok(())
    }
}

/// Why a settle returned without the bus settling.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The timeout passed with work still pending.
    #[error("the bus did not settle within {waited:?}; still pending: {pending}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// What was still pending at the last look.
        pending: Pending,
    },
}

impl SettleError {
    /// What was still pending.
    pub fn pending(&self) -> &Pending {
        match self {
            SettleError::Timeout { pending, .. } => pending,
        }
    }
}

/// Polls `look` until it reports nothing pending or `timeout` passes.
/// `look` returns the pending work (empty when quiescent). Between looks it
/// spins briefly, then yields, then sleeps up to a millisecond: settling
/// usually takes microseconds, and a settle that waits for a slow handler
/// must not burn a core meanwhile.
pub(crate) fn wait_until_settled(
    timeout: Duration,
    mut look: impl FnMut() -> Pending,
) -> Result<(), SettleError> {
    let started = Instant::now();
    let deadline = started.checked_add(timeout);
    let mut round = 0_u32;
    loop {
        let pending = look();
        if pending.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(SettleError::Timeout { waited: now - started, pending });
        }
        round = round.saturating_add(1);
        match round {
            0..=32 => std::hint::spin_loop(),
            33..=64 => std::thread::yield_now(),
            _ => {
                let nap = Duration::from_micros(10u64 << (round - 64).min(7));
                let nap = match deadline {
                    Some(d) => nap.min(d.saturating_duration_since(now)),
                    None => nap,
                };
                std::thread::sleep(nap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_during_which_a_move_began_is_refused() {
        let activity = Activity::default();
        assert_eq!(activity.consistent(|| 7), (7, 0));
        assert_eq!(activity.consistent(|| activity.begin(1)), ((), 1));
        // Still in flight: refused however quiet the reading.
        assert_eq!(activity.consistent(|| ()), ((), 1));
        activity.end(1);
        assert_eq!(activity.consistent(|| ()), ((), 0));
        // A move that began and ended during the reading is refused too.
        assert_eq!(activity.consistent(|| drop(activity.busy())), ((), 1));
    }

    #[test]
    fn pending_lists_queues_and_consumers() {
        let pending = Pending {
            in_flight: 1,
            queues: vec![PendingQueue {
                vhost: "/".into(),
                name: "billing".into(),
                ready: 2,
                delayed: 0,
                unacknowledged: vec![("amq.ctag-1".into(), 3)],
                consumers: 0,
            }],
            conversation_messages: 0,
        };
        assert_eq!(
            pending.to_string(),
            "queue 'billing': 2 ready (no consumer), 3 unacknowledged by amq.ctag-1; \
             1 message(s) in flight between exchanges and queues"
        );
    }
}
