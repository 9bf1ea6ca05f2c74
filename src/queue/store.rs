//! Where a queue keeps its messages: the ready store (in delivery order,
//! with an index of expiry deadlines) and the delayed store (by due time).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::QueuedMessage;
use super::segmented::Segmented;

/// A ready message's place: priority rank first (0 is served first), then
/// sequence number. A requeued message keeps its key, so it goes back to
/// its original position.
pub(super) type ReadyKey = (u8, u64);

/// The messages waiting to be delivered, in order of their keys.
///
/// Two parts: `tail`, a FIFO of messages in increasing key order, and
/// `sorted`, a B-tree of messages whose keys are all below the tail's. In a
/// queue without priorities every new message has the largest key yet, so
/// publishing is a push onto the tail and delivering a pop from its front;
/// a requeued message (always below the tail: it left from the front) goes
/// back to its position in the B-tree. A priority queue uses the tail while
/// keys keep increasing and moves it into the B-tree the first time a key
/// falls inside it. An expired message is found through the expiry index and
/// taken out of either part, in O(log n) plus, in the tail, a shift within
/// one chunk.
///
/// The tail is kept in chunks that are never grown ([`Segmented`]), not one
/// growing ring buffer, so that filling a queue never doubles a buffer and
/// copies every message across. Chunks start small and double up to 512
/// slots, and a drained queue frees all but a small one, so an idle queue
/// holds a few hundred bytes whatever it once held.
#[derive(Debug, Default)]
pub(super) struct ReadyStore {
    sorted: BTreeMap<ReadyKey, QueuedMessage>,
    tail: Segmented<QueuedMessage>,
    /// Deadlines of the messages that have one.
    expiry: BTreeSet<(Instant, ReadyKey)>,
    bytes: usize,
    /// Of `bytes`, those of paged-out messages (on disk, not in memory).
    paged_bytes: usize,
}

impl ReadyStore {
    pub(super) fn len(&self) -> usize {
        self.sorted.len() + self.tail.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sorted.is_empty() && self.tail.is_empty()
    }

    /// Body bytes held (paged out or not: what byte limits count).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Body bytes held in memory.
    pub(super) fn memory_bytes(&self) -> usize {
        self.bytes - self.paged_bytes
    }

    pub(super) fn insert(&mut self, msg: QueuedMessage) {
        let key = msg.key();
        if let Some(at) = msg.expires_at() {
            self.expiry.insert((at, key));
        }
        self.bytes += msg.body_len();
        if msg.paged() {
            self.paged_bytes += msg.body_len();
        }
        // Every key in `sorted` is below every key in `tail`, so the largest
        // key is the tail's last, or `sorted`'s only when the tail is empty:
        // the common publish never looks into the B-tree.
        debug_assert!(
            self.tail
                .front()
                .is_none_or(|first| self.sorted.last_key_value().is_none_or(|(k, _)| *k < first.key())),
            "the B-tree's keys stay below the tail's"
        );
        let last = match self.tail.back() {
            Some(last) => Some(last.key()),
            None => self.sorted.last_key_value().map(|(last, _)| *last),
        };
        if last.is_none_or(|last| last < key) {
            self.tail.push_back(msg);
            return;
        }
        if self.tail.front().is_some_and(|first| first.key() < key) {
            // Inside the tail's range (a priority queue): keep one order.
            for m in self.tail.drain() {
                self.sorted.insert(m.key(), m);
            }
        }
        let displaced = self.sorted.insert(key, msg);
        debug_assert!(displaced.is_none(), "two messages at one position");
    }

    /// The next message to deliver.
    pub(super) fn pop_first(&mut self) -> Option<QueuedMessage> {
        let msg = match self.sorted.pop_first() {
            Some((_, msg)) => msg,
            None => self.tail.pop_front()?,
        };
        self.forget(&msg);
        Some(msg)
    }

    fn forget(&mut self, msg: &QueuedMessage) {
        if let Some(at) = msg.expires_at() {
            self.expiry.remove(&(at, msg.key()));
        }
        self.bytes -= msg.body_len();
        if msg.paged() {
            self.paged_bytes -= msg.body_len();
        }
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
        let msg = match self.sorted.remove(&key) {
            Some(msg) => msg,
            None => {
                let at = self.tail.find_by_key(&key, QueuedMessage::key)?;
                self.tail.remove(at)?
            }
        };
        self.bytes -= msg.body_len();
        if msg.paged() {
            self.paged_bytes -= msg.body_len();
        }
        Some(msg)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::queue::Envelope;
    use crate::sync::Arc;

    fn msg(rank: u8, seq: u64, expires_at: Option<Instant>) -> QueuedMessage {
        let envelope = Arc::new(Envelope::new("", "q", Message::new(seq.to_string())));
        let mut msg = QueuedMessage::new(envelope, rank);
        msg.seq = seq;
        msg.set_expires_at(expires_at);
        msg
    }

    /// Now, from the clock, which fixes the deadlines' epoch first: an
    /// instant read before that clamps to the epoch, later than itself.
    fn now() -> Instant {
        crate::clock::Clock::system().now()
    }

    fn order(store: &mut ReadyStore) -> Vec<(u8, u64)> {
        std::iter::from_fn(|| store.pop_first()).map(|m| m.key()).collect()
    }

    #[test]
    fn requeued_and_prioritised_messages_come_out_in_key_order() {
        let mut store = ReadyStore::default();
        for seq in 5..8 {
            store.insert(msg(0, seq, None));
        }
        store.insert(msg(0, 3, None));
        store.insert(msg(0, 1, None));
        assert_eq!(order(&mut store), [(0, 1), (0, 3), (0, 5), (0, 6), (0, 7)]);

        for (rank, seq) in [(2, 10), (5, 11), (1, 12), (5, 13), (0, 14), (2, 15)] {
            store.insert(msg(rank, seq, None));
        }
        assert_eq!(store.len(), 6);
        assert_eq!(order(&mut store), [(0, 14), (1, 12), (2, 10), (2, 15), (5, 11), (5, 13)]);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn an_expired_message_is_taken_out_of_the_middle_of_either_part() {
        let now = now();
        let mut store = ReadyStore::default();
        store.insert(msg(0, 5, None));
        store.insert(msg(0, 6, Some(now)));
        store.insert(msg(0, 7, None));
        store.insert(msg(0, 2, Some(now)));
        assert_eq!(store.pop_expired(now).map(|m| m.seq), Some(2));
        assert_eq!(store.pop_expired(now).map(|m| m.seq), Some(6));
        assert!(store.pop_expired(now).is_none());
        assert_eq!(order(&mut store), [(0, 5), (0, 7)]);
    }

    #[test]
    fn expired_messages_leave_a_tail_of_many_chunks_from_anywhere() {
        let now = now();
        let mut store = ReadyStore::default();
        let n = 5 * super::super::segmented::CHUNK as u64;
        let expiring = |seq: u64| seq % 97 == 3;
        for seq in 0..n {
            store.insert(msg(0, seq, expiring(seq).then_some(now)));
        }
        let expired: Vec<u64> = std::iter::from_fn(|| store.pop_expired(now)).map(|m| m.seq).collect();
        assert_eq!(expired, (0..n).filter(|&s| expiring(s)).collect::<Vec<_>>());
        assert_eq!(store.len() as u64, n - expired.len() as u64);
        let rest: Vec<u64> = order(&mut store).into_iter().map(|(_, seq)| seq).collect();
        assert_eq!(rest, (0..n).filter(|&s| !expiring(s)).collect::<Vec<_>>());
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }
}
