//! Where a queue keeps its messages: the ready store (in delivery order,
//! with an index of expiry deadlines) and the delayed store (by due time).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::QueuedMessage;

/// A ready message's place: priority rank first (0 is served first), then
/// sequence number. A requeued message keeps its key, so it goes back to
/// its original position.
pub(super) type ReadyKey = (u8, u64);

/// The messages waiting to be delivered, in order.
///
/// A B-tree rather than a ring buffer: requeued messages go back to their
/// original position, priorities interleave, and an expired message can be
/// taken out from anywhere, each in O(log n); and it grows node by node
/// rather than by doubling and copying.
#[derive(Debug, Default)]
pub(super) struct ReadyStore {
    messages: BTreeMap<ReadyKey, QueuedMessage>,
    /// Deadlines of the messages that have one.
    expiry: BTreeSet<(Instant, ReadyKey)>,
    bytes: usize,
}

impl ReadyStore {
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Body bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn insert(&mut self, msg: QueuedMessage) {
        let key = msg.key();
        if let Some(at) = msg.expires_at {
            self.expiry.insert((at, key));
        }
        self.bytes += msg.body_len();
        let displaced = self.messages.insert(key, msg);
        debug_assert!(displaced.is_none(), "two messages at one position");
    }

    /// The next message to deliver.
    pub(super) fn pop_first(&mut self) -> Option<QueuedMessage> {
        let (_, msg) = self.messages.pop_first()?;
        self.forget(&msg);
        Some(msg)
    }

    fn forget(&mut self, msg: &QueuedMessage) {
        if let Some(at) = msg.expires_at {
            self.expiry.remove(&(at, msg.key()));
        }
        self.bytes -= msg.body_len();
    }

    /// The earliest expiry deadline of a ready message.
    pub(super) fn first_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|&(at, _)| at)
    }

    /// Takes out one message whose deadline is at or before `now`, wherever
    /// it is in the queue.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<QueuedMessage> {
        let &(at, key) = self.expiry.first()?;
        if at > now {
            return None;
        }
        self.expiry.pop_first();
        let msg = self.messages.remove(&key)?;
        self.bytes -= msg.body_len();
        Some(msg)
    }

    pub(super) fn clear(&mut self) -> usize {
        let n = self.messages.len();
        self.messages.clear();
        self.expiry.clear();
        self.bytes = 0;
        n
    }
}

/// A delayed message and the TTL it takes once visible.
#[derive(Debug)]
pub(super) struct Delayed {
    pub(super) msg: QueuedMessage,
    pub(super) ttl: Option<Duration>,
}

/// Messages not yet visible, by due time (then arrival order).
#[derive(Debug, Default)]
pub(super) struct DelayedStore {
    messages: BTreeMap<(Instant, u64), Delayed>,
    next_id: u64,
    bytes: usize,
}

impl DelayedStore {
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn insert(&mut self, due: Instant, delayed: Delayed) {
        self.bytes += delayed.msg.body_len();
        self.messages.insert((due, self.next_id), delayed);
        self.next_id += 1;
    }

    pub(super) fn first_due(&self) -> Option<Instant> {
        self.messages.first_key_value().map(|(&(at, _), _)| at)
    }

    /// The earliest delayed message, if due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Delayed> {
        if self.first_due()? > now {
            return None;
        }
        self.pop_first()
    }

    /// The delayed message due first, due or not.
    pub(super) fn pop_first(&mut self) -> Option<Delayed> {
        let (_, delayed) = self.messages.pop_first()?;
        self.bytes -= delayed.msg.body_len();
        Some(delayed)
    }

    pub(super) fn clear(&mut self) -> usize {
        let n = self.messages.len();
        self.messages.clear();
        self.bytes = 0;
        n
    }
}
