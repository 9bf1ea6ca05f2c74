//! A message's way into a queue: [`Queue::enqueue`] for one publish,
//! [`Queue::enqueue_batch`] for a batch's share, both through
//! `enqueue_locked` under the queue's lock (the order of its steps is in
//! ARCHITECTURE.md, "Enqueue"), and what each tells its caller.

use std::time::Duration;

use super::limits::Room;
use super::stats::bump;
use super::store::Delayed;
use super::{Envelope, Now, Overflow, Queue, QueueState, QueuedMessage};
use crate::clock::{Clock, later};
use crate::dead_letter::Letter;
use crate::durable::StoreError;
use crate::sync::Arc;

/// What a publish needs to know about time: read once, only if a policy
/// asks for it.
pub(crate) struct PublishTiming<'a> {
    pub(super) now: Now<'a>,
    /// The message's own TTL (its `expiration`).
    pub(crate) ttl: Option<Duration>,
    /// How long it stays invisible.
    pub(crate) delay: Option<Duration>,
    /// The furthest store position a durable queue wrote this message to:
    /// what the publisher waits to be synced (0: none).
    pub(crate) durable_lsn: u64,
    /// Why a durable queue's store refused it, if one did.
    pub(crate) store_error: Option<Box<StoreError>>,
    /// The publish is known to reach several queues (a cached route, or a
    /// batch's, of more than one): its deliveries do not look at the
    /// envelope's reference count to keep it for reuse (see [`recycle`](super::recycle)),
    /// a cache line the other queues' consumers are writing. False where
    /// it is not known (a walk): a delivery then looks, and keeps the
    /// envelope if it was the last to hold it.
    pub(crate) fanout: bool,
}

impl<'a> PublishTiming<'a> {
    #[inline]
    pub(crate) fn new(clock: &'a Clock, ttl: Option<Duration>, delay: Option<Duration>) -> Self {
        PublishTiming {
            now: Now::new(clock),
            ttl,
            delay: delay.filter(|d| !d.is_zero()),
            durable_lsn: 0,
            store_error: None,
            fanout: false,
        }
    }
}

/// One message of a batch on its way into queues
/// ([`Queue::enqueue_batch`]): its envelope and timing, and what the last
/// queue offered it did with it.
pub(crate) struct Offer<'a> {
    /// `None` once a sole queue has taken it as it is.
    pub(crate) envelope: Option<Arc<Envelope>>,
    pub(crate) timing: PublishTiming<'a>,
    pub(crate) outcome: Enqueued,
    /// Offered to one queue only: handed over rather than cloned, so that
    /// the publisher neither counts the handle up nor, once the batch is
    /// enqueued, down on a line the consumer may be reading.
    pub(crate) sole: bool,
}

/// What became of a message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Taken (maybe straight to a consumer, maybe dead-lettered at once).
    Accepted,
    /// Refused as a duplicate `message_id`.
    Duplicate,
    /// Refused: the queue is full and rejects publishes.
    Rejected,
    /// The queue was deleted after the routing snapshot was taken.
    Gone,
    /// A durable queue's store could not take the persistent message (the
    /// error is left in the [`PublishTiming`]).
    StoreFailed,
}

impl Queue {
    /// Offers a routed message. Messages this makes leave the queue (dropped
    /// from the head by a length limit, or expired at once) are added to
    /// `letters`, for the caller to dead-letter once routing is done.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        envelope: &Arc<Envelope>,
        timing: &mut PublishTiming<'_>,
        letters: &mut Vec<Letter>,
    ) -> Enqueued {
        let mut state = self.state.lock();
        if state.deleted {
            return Enqueued::Gone;
        }
        // The handle that may come back is a clone of the caller's: its
        // drop only counts down.
        let (outcome, _back) = self.enqueue_locked(&mut state, Arc::clone(envelope), timing);
        if !state.letters.is_empty() {
            // In flight from here, under the lock, until each is routed.
            self.context.activity.begin(state.letters.len() as u64);
            letters.extend(state.letters.drain(..).map(|(msg, reason)| Letter::new(self, msg, reason)));
        }
        self.unlock(state);
        outcome
    }

    /// Offers a batch's messages, in order, under one hold of the lock:
    /// each as [`enqueue`](Self::enqueue) would, its outcome left in
    /// [`Offer::outcome`].
    pub(crate) fn enqueue_batch<'a, 'c: 'a>(
        self: &Arc<Self>,
        offers: impl Iterator<Item = &'a mut Offer<'c>>,
        letters: &mut Vec<Letter>,
    ) {
        let mut state = self.state.lock();
        // A consumer's share of the batch reaches its inbox in one hold of
        // the inbox's lock: sent one by one, the publisher and a consumer
        // taking from the inbox fought over that lock on every message
        // (`perf`: half a batched 1→1 run in the inbox's send and receive).
        state.staging = true;
        for offer in offers {
            if state.deleted {
                offer.outcome = Enqueued::Gone;
                continue;
            }
            // A sole queue takes the envelope itself (see `Offer::sole`);
            // what comes back goes back into the offer, never dropped here.
            let envelope = if offer.sole { offer.envelope.take() } else { offer.envelope.clone() };
            let Some(envelope) = envelope else {
                // Taken by another queue: never, as a sole offer goes to
                // one queue. Counted as not reaching this one.
                debug_assert!(false, "a sole offer was offered twice");
                offer.outcome = Enqueued::Gone;
                continue;
            };
            let (outcome, back) = self.enqueue_locked(&mut state, envelope, &mut offer.timing);
            offer.outcome = outcome;
            if offer.sole {
                offer.envelope = back;
            }
        }
        state.flush_staged(self, &mut Now::new(&self.context.clock));
        if !state.letters.is_empty() {
            // In flight from here, under the lock, until each is routed.
            self.context.activity.begin(state.letters.len() as u64);
            letters.extend(state.letters.drain(..).map(|(msg, reason)| Letter::new(self, msg, reason)));
        }
        self.unlock(state);
    }

    /// Offers `envelope`, which the queue keeps if it takes it as it is.
    /// The handle comes back (`Some`) from a queue that did not take it (a
    /// duplicate, full, a failed store) or that keeps another handle (a
    /// copy with a delivery count; a clone where a durable or
    /// deduplicating queue reads it after placing it): where the caller
    /// handed over its only handle, it needs it for its error or outcome.
    /// Never dropped here, so the last handle is not dropped under the lock.
    #[inline]
    fn enqueue_locked(
        &self,
        state: &mut QueueState,
        envelope: Arc<Envelope>,
        timing: &mut PublishTiming<'_>,
    ) -> (Enqueued, Option<Arc<Envelope>>) {
        if let (Some(recent), Some(id)) =
            (&mut state.recent_ids, envelope.message().properties().message_id())
        {
            let now = recent.timed().then(|| timing.now.get());
            if recent.contains(id, now) {
                bump(&self.figures.duplicates_refused);
                return (Enqueued::Duplicate, Some(envelope));
            }
        }
        let (envelope, back) = match self.policy.delivery_limit {
            Some(_) => (envelope.with_delivery_count(0), Some(envelope)),
            None if state.durable || state.recent_ids.is_some() => (Arc::clone(&envelope), Some(envelope)),
            None => (envelope, None),
        };
        let rank = self.rank(envelope.message());
        let ttl = match (self.policy.message_ttl, timing.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(delay) = timing.delay {
            // Placed (its sequence, its expiry) when it becomes due.
            let mut msg = QueuedMessage::placed(envelope, rank, 0, None, timing.fanout);
            match self.make_room(state, &msg, &mut timing.now) {
                Room::Made => {
                    let due = later(timing.now.get(), delay);
                    if state.durable && !self.persist(&mut msg, timing, Some((due, ttl))) {
                        return (Enqueued::StoreFailed, back);
                    }
                    state.delayed.insert(due, Delayed { msg, ttl });
                }
                Room::Refused => return (Enqueued::Rejected, Some(back.unwrap_or(msg.envelope))),
                Room::DroppedItself => {}
            }
        } else {
            let expires = ttl.map(|ttl| later(timing.now.get(), ttl));
            let single = self.policy.single_active_consumer;
            // Everything ready has already been offered to every consumer
            // with credit, so a new message can go straight to one if the
            // store is empty. (A durable queue stores it first; for why
            // the message is sent from an `Option`, see `send_from`.)
            let straight = !state.durable && state.ready.is_empty();
            let (seq, fanout) = (state.next_seq, timing.fanout);
            let placed = move || QueuedMessage::placed(envelope, rank, seq, expires, fanout);
            let left = match if straight { state.next_with_credit(single) } else { None } {
                Some(index) if state.staging => {
                    state.stage(index, placed());
                    None
                }
                Some(index) => {
                    let mut msg = Some(placed());
                    state.send_from(index, &mut msg);
                    msg
                }
                None => Some(placed()),
            };
            let offered = match left {
                Some(mut msg) if !straight => {
                    if state.durable && !self.persist(&mut msg, timing, None) {
                        return (Enqueued::StoreFailed, back);
                    }
                    if state.ready.is_empty() { state.offer(msg, single) } else { Some(msg) }
                }
                left => left,
            };
            state.next_seq += 1;
            if let Some(msg) = offered {
                if msg.expired(&mut timing.now) {
                    // TTL 0, or a TTL already passed: no consumer took it at once.
                    state.expire(self, msg);
                } else if self.policy.overflow == Overflow::DropHead && self.policy.max_priority.is_some() {
                    // RabbitMQ's order: in first, then the head goes while
                    // over the limits — in a priority queue the head may be
                    // the message just published. (In a FIFO queue the new
                    // message is the tail, so making room first is the same,
                    // and keeps a delayed message's place.)
                    state.insert_new(msg);
                    self.drop_head_over_limit(state, &mut timing.now);
                } else {
                    match self.make_room(state, &msg, &mut timing.now) {
                        Room::Made => state.insert_new(msg),
                        Room::Refused => return (Enqueued::Rejected, Some(back.unwrap_or(msg.envelope))),
                        Room::DroppedItself => {}
                    }
                }
            }
        }
        // A deduplicating queue kept the handle back for this.
        let message_id = back.as_ref().and_then(|e| e.message().properties().message_id());
        if let (Some(recent), Some(id)) = (&mut state.recent_ids, message_id) {
            let now = recent.timed().then(|| timing.now.get());
            recent.record(id, now);
        }
        if let Some(counts) = &mut state.counts {
            counts.published += 1;
        }
        // Only a deadline this message brought can be earlier than the
        // wake-up already asked for: an expiry or a due time. (The idle
        // `expires` countdown does not move on a publish; a message dropped
        // to make room only removes deadlines.) About 35 instructions a
        // publish saved where neither applies.
        if ttl.is_some() || timing.delay.is_some() {
            self.reschedule(state);
        }
        (Enqueued::Accepted, back)
    }
}
