//! A consumer's credit: how many deliveries it holds against its prefetch
//! limit. The protocol that makes prefetch a hard bound with no lost
//! dispatch, kept small and on its own so that `tests/loom.rs` can
//! model-check it (through the `sync` facade) exactly as the queue runs it:
//!
//! - only the queue *takes* credit, under its lock, after checking there is
//!   some — so credit never overshoots the limit (a batch checks each
//!   delivery counting the ones before it, and takes their credit together
//!   before releasing the lock, then dispatches: a settle meanwhile saw the
//!   lower count and may have skipped its dispatch);
//! - a settle *releases* credit without the lock; if the release left the
//!   limit (the consumer was full), the settler must take the queue lock and
//!   dispatch, since a ready message may be waiting for exactly this credit.
//!
//! Either the dispatcher sees the freed credit, or the settler's dispatch
//! sees the ready message: no message is stranded while the consumer has
//! room.
//!
//! Two counters, not one: deliveries *sent* (written by the queue alone,
//! under its lock) and deliveries *ended* (settled, or given back), each on
//! a cache line of its own; what is in flight is their difference. With
//! one counter, the publisher's increment and the consumer's decrement
//! wrote the same line for every message, and each stalled on the other:
//! in a 1→1 run the increment alone was 17% of the publisher's time.
//!
//! Split, each side keeps to its own line in the steady state:
//! - the queue checks credit against the last `ended` it read (a lower
//!   bound: `ended` only grows), and reads the consumer's line again only
//!   when that stale count says the consumer is full;
//! - when the fresh count says so too, the queue sets a *waiting* flag in
//!   `ended` with a compare-and-swap, and leaves the message ready;
//! - a settle adds to `ended` with one read-modify-write, whose previous
//!   value tells whether the flag was set: if it was, the settler clears
//!   it and dispatches under the lock.
//!
//! The flag and the count share one atomic, so the queue's flagging and a
//! settle are ordered one way or the other: either the queue's swap sees
//! the settle's count (and sends), or the settle sees the flag (and
//! dispatches). Read-modify-writes on one location, not fences: loom models
//! them exactly.

use crate::sync::{AtomicU64, Ordering, OwnLine};

/// In `ended`: the queue found the consumer full with a message to send
/// (set under the queue's lock; cleared by the settle that sees it, or by
/// the queue when it finds room again).
const WAITING: u64 = 1 << 63;

/// The queue's side: written only under the queue's lock.
#[derive(Debug, Default)]
struct SentSide {
    /// Deliveries sent, ever.
    sent: AtomicU64,
    /// The count of `ended` as this side last read it: a lower bound.
    ended_seen: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Credit {
    /// The prefetch limit; 0 means none.
    prefetch: u32,
    queue_side: OwnLine<SentSide>,
    /// Deliveries ended, ever (settled without the lock, or given back
    /// under it), never more than `sent`; and the [`WAITING`] flag.
    ended: OwnLine<AtomicU64>,
}

impl Credit {
    pub(crate) fn new(prefetch: u32) -> Self {
        Credit { prefetch, queue_side: OwnLine::default(), ended: OwnLine(AtomicU64::new(0)) }
    }

    /// The prefetch limit (0: none).
    pub(crate) fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// Deliveries sent and not yet ended. `ended` is read first: every
    /// delivery it counts was sent before it ended, and that send is
    /// visible once its end is, so the difference is never negative.
    pub(crate) fn in_flight(&self) -> u32 {
        let ended = self.ended.0.load(Ordering::Acquire) & !WAITING;
        let sent = self.queue_side.0.sent.load(Ordering::Acquire);
        u32::try_from(sent.saturating_sub(ended)).unwrap_or(u32::MAX)
    }

    /// Whether one more delivery fits beside `staged` ones checked under
    /// the queue's lock but not yet taken (see [`take_n`](Self::take_n)).
    /// Only under the queue lock. False only once the waiting flag is set,
    /// so that the settle freeing the credit dispatches.
    pub(crate) fn has_credit_beyond(&self, staged: usize) -> bool {
        if self.prefetch == 0 {
            return true;
        }
        let side = &self.queue_side.0;
        let sent = side.sent.load(Ordering::Relaxed);
        let fits = |ended: u64| {
            let in_flight = sent.saturating_sub(ended).saturating_add(staged as u64);
            in_flight < u64::from(self.prefetch)
        };
        if fits(side.ended_seen.load(Ordering::Relaxed)) {
            return true;
        }
        let mut current = self.ended.0.load(Ordering::Acquire);
        loop {
            if fits(current & !WAITING) {
                side.ended_seen.store(current & !WAITING, Ordering::Relaxed);
                if current & WAITING != 0 {
                    // Room came back without a settle seeing the flag (a
                    // give-back, or a settle between the read and the swap):
                    // no settle owes a dispatch now.
                    self.ended.0.fetch_and(!WAITING, Ordering::AcqRel);
                }
                return true;
            }
            if current & WAITING != 0 {
                // Set by this queue; outside this lock only a settle clears
                // it, and that settle then dispatches, after this lock is
                // released.
                return false;
            }
            match self.ended.0.compare_exchange_weak(
                current,
                current | WAITING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return false,
                Err(now) => current = now,
            }
        }
    }

    /// Takes one credit for a delivery. Only under the queue lock, after
    /// `has_credit_beyond`.
    pub(crate) fn take(&self) {
        self.take_n(1);
    }

    /// Takes `n` credits at once for deliveries the queue checked one by
    /// one (counting the ones before them) under the same hold of its lock.
    pub(crate) fn take_n(&self, n: u32) {
        // The queue's lock serialises every writer of `sent`: a load and a
        // store, not a read-modify-write.
        let sent = &self.queue_side.0.sent;
        sent.store(sent.load(Ordering::Relaxed) + u64::from(n), Ordering::Release);
    }

    /// Gives back `n` credits under the queue lock (a requeue, a send that
    /// failed, a consumer leaving): the caller dispatches itself.
    pub(crate) fn give_back(&self, n: u32) {
        self.ended.0.fetch_add(u64::from(n), Ordering::AcqRel);
    }

    /// Releases `n` credits without the queue lock (a settle). True if the
    /// queue found the consumer full with a message to send: the caller
    /// must then take the queue lock and dispatch.
    pub(crate) fn release(&self, n: u32) -> Released {
        let before = self.ended.0.fetch_add(u64::from(n), Ordering::AcqRel);
        let must_dispatch = before & WAITING != 0;
        if must_dispatch {
            // Cleared before the dispatch: a queue that finds the consumer
            // full after it sets the flag again, for the next settle.
            self.ended.0.fetch_and(!WAITING, Ordering::AcqRel);
        }
        Released { must_dispatch }
    }
}

/// What a [`Credit::release`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// The queue found the consumer full with a message to send, and this
    /// settle freed credit: dispatch under the lock.
    pub(crate) must_dispatch: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    // Through the facade: under `tests/loom.rs`, which compiles this file
    // too, loom's atomics work only inside a model.
    use crate::sync::model;

    #[test]
    fn without_a_limit_credit_is_counted_and_never_flagged() {
        model(|| {
            let credit = Credit::new(0);
            for _ in 0..5 {
                assert!(credit.has_credit_beyond(usize::MAX));
                credit.take();
            }
            credit.take_n(3);
            assert_eq!(credit.in_flight(), 8);
            assert_eq!(credit.release(2), Released { must_dispatch: false });
            credit.give_back(1);
            assert_eq!(credit.in_flight(), 5);
        });
    }

    #[test]
    fn a_full_consumer_is_flagged_and_the_next_settle_alone_dispatches() {
        model(|| {
            let credit = Credit::new(2);
            assert!(credit.has_credit_beyond(0));
            credit.take();
            assert!(credit.has_credit_beyond(0));
            assert!(!credit.has_credit_beyond(1), "a staged delivery counts");
            credit.take();
            assert!(!credit.has_credit_beyond(0));
            assert_eq!(credit.in_flight(), 2, "the flag is not counted");
            assert_eq!(credit.release(1), Released { must_dispatch: true });
            assert_eq!(credit.in_flight(), 1);
            assert_eq!(
                credit.release(1),
                Released { must_dispatch: false },
                "the first settle cleared the flag"
            );
            assert!(credit.has_credit_beyond(1));
        });
    }

    #[test]
    fn a_stale_count_is_refreshed_before_the_consumer_is_called_full() {
        model(|| {
            let credit = Credit::new(1);
            credit.take();
            // Settled where the queue did not look: its last read says full.
            assert_eq!(credit.release(1), Released { must_dispatch: false });
            assert!(credit.has_credit_beyond(0), "the live count shows the room");
            credit.take();
            assert!(!credit.has_credit_beyond(0));
            // A give-back under the lock frees the credit as a settle does.
            credit.give_back(1);
            assert!(credit.has_credit_beyond(0));
            assert_eq!(credit.in_flight(), 0);
            credit.take();
            assert_eq!(
                credit.release(1),
                Released { must_dispatch: false },
                "the room found cleared the flag"
            );
        });
    }
}
