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

use crate::sync::{AtomicU32, Ordering};

#[derive(Debug)]
pub(crate) struct Credit {
    /// The prefetch limit; 0 means none.
    prefetch: u32,
    /// Deliveries sent and not yet settled.
    in_flight: AtomicU32,
}

impl Credit {
    pub(crate) fn new(prefetch: u32) -> Self {
        Credit { prefetch, in_flight: AtomicU32::new(0) }
    }

    /// The prefetch limit (0: none).
    pub(crate) fn prefetch(&self) -> u32 {
        self.prefetch
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether one more delivery fits beside `staged` ones checked under
    /// the queue's lock but not yet taken (see [`take_n`](Self::take_n)).
    pub(crate) fn has_credit_beyond(&self, staged: usize) -> bool {
        self.prefetch == 0 || (self.in_flight() as usize).saturating_add(staged) < self.prefetch as usize
    }

    /// Takes one credit for a delivery. Only under the queue lock, after
    /// `has_credit_beyond`.
    pub(crate) fn take(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes `n` credits at once for deliveries the queue checked one by
    /// one (counting the ones before them) under the same hold of its lock.
    pub(crate) fn take_n(&self, n: u32) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` credits under the queue lock (a requeue, a send that
    /// failed, a consumer leaving): the caller dispatches itself.
    pub(crate) fn give_back(&self, n: u32) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    /// Releases `n` credits without the queue lock (a settle). True if the
    /// consumer was at its limit and no longer is: the caller must then take
    /// the queue lock and dispatch. `emptied` is true if nothing is left in
    /// flight.
    pub(crate) fn release(&self, n: u32) -> Released {
        let before = self.in_flight.fetch_sub(n, Ordering::AcqRel);
        Released {
            must_dispatch: self.prefetch != 0 && before >= self.prefetch && before - n < self.prefetch,
            emptied: before == n,
        }
    }
}

/// What a [`Credit::release`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// The consumer was full and has room again: dispatch under the lock.
    pub(crate) must_dispatch: bool,
    /// Nothing is left in flight.
    pub(crate) emptied: bool,
}
