//! Queues: the ready store, the consumer ring, dispatch, and the policies
//! (TTL, limits, dead-lettering, priorities, delays, deduplication).
//!
//! A queue's state sits behind one mutex that only this queue's publishers,
//! its dispatch and its slow paths take; no lock is shared between queues.
//! Deliveries leave the queue through each consumer's own channel (its
//! inbox), so a consumer receiving a delivery never touches the queue lock.
//!
//! Messages that must be dead-lettered are collected under the lock and
//! routed after it is released (see [`crate::dead_letter`]), so a dead
//! letter may reach any queue, this one included, without lock nesting.

mod consumers;
mod dedup;
mod dispatch;
mod durable;
mod enqueue;
mod envelope;
mod limits;
mod options;
pub(crate) mod recycle;
mod segmented;
mod stats;
mod store;
mod timing;

use std::task::Waker;
use std::time::{Duration, Instant};

use crate::inbox::{Receiver, Sender};
use parking_lot::MutexGuard;

pub(crate) use enqueue::{Enqueued, Offer, PublishTiming};
pub(crate) use envelope::{Address, Envelope, QueuedMessage};
pub use options::{DeduplicationWindow, Overflow, QueueOptions, QueueType};
pub(crate) use options::{
    Difference, InvalidArg, QueuePolicy, Side, ToSide, describe, inequivalent_phrase, table_difference,
    unknown_argument, wrong_type,
};
pub use stats::{MessageStats, QueueStats};

use self::dispatch::Slot;
use self::stats::{Figures, bump};

use self::dedup::RecentIds;
use self::store::{Delayed, DelayedStore, ReadyStore};
use crate::clock::{Clock, MAX_DURATION, later};
use crate::consumer::ConsumerShared;
use crate::dead_letter::Letter;
use crate::death::DeathReason;
use crate::durable::{Placement, QueueJournal};
use crate::error::{ConsumeError, RecvError};
use crate::field::FieldTable;
use crate::flow::{FLOW_GRANULE, Flow, MESSAGE_OVERHEAD};
use crate::message::Message;
use crate::observe::Observers;
use crate::settle::Activity;
use crate::sync::{Arc, Mutex, Ordering, Weak};
use crate::timer::Timers;

/// The clock, read at most once per operation.
struct Now<'a> {
    clock: &'a Clock,
    at: Option<Instant>,
}

impl<'a> Now<'a> {
    fn new(clock: &'a Clock) -> Self {
        Now { clock, at: None }
    }

    fn get(&mut self) -> Instant {
        *self.at.get_or_insert_with(|| self.clock.now())
    }
}

struct QueueState {
    /// Whether the queue is durable in a broker with a data directory:
    /// only then can a message carry a place in the store, and the paths
    /// below look at its envelope for one.
    durable: bool,
    /// Body bytes of ready messages kept in memory before new persistent
    /// ones are paged out (`usize::MAX`: no paging; every non-durable queue).
    memory_budget: usize,
    ready: ReadyStore,
    delayed: DelayedStore,
    next_seq: u64,
    /// In attach order (single active consumer takes the first).
    consumers: Vec<Slot>,
    /// Whether consumers have different priorities (else plain round-robin).
    priorities_differ: bool,
    /// Index of the consumer to try first: strict round-robin.
    cursor: usize,
    /// Cancelled consumers still holding unsettled deliveries, for the figures.
    detached: Vec<Arc<ConsumerShared>>,
    /// Deliveries taken by `get` and not yet settled.
    get_unacked: usize,
    had_consumer: bool,
    deleted: bool,
    /// Last consumer gone, `get` or re-declaration, for `expires`.
    last_used: Option<Instant>,
    recent_ids: Option<RecentIds>,
    /// The wake-up asked of the timers, if any.
    timer_at: Option<Instant>,
    /// Messages to dead-letter once the lock is released.
    letters: Vec<(QueuedMessage, DeathReason)>,
    /// The counters kept under the lock (all but `acknowledged`), if
    /// statistics are on.
    counts: Option<MessageStats>,
    /// Wakers of async consumers to wake once the lock is released: a
    /// waker is user code, and may call back into the bus.
    wakers: Vec<Waker>,
    /// Messages that left the queue for good, to drop once the lock is
    /// released: the last reference to a body runs its owner's destructor,
    /// which is user code.
    graveyard: Vec<QueuedMessage>,
    /// What the queue last reported to the broker's memory estimate.
    reported_bytes: i64,
    /// Whether sends are staged in their slot (see [`Slot::staged`]) for
    /// one inbox lock per consumer, instead of one per message.
    staging: bool,
    /// The slots holding staged messages, in the order first staged to.
    staged_slots: Vec<usize>,
}

/// Why [`Queue::delete_if`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteRefused {
    /// `if_unused`, and the queue has consumers.
    InUse,
    /// `if_empty`, and the queue has ready messages.
    NotEmpty,
    /// Expiry, and the queue was used meanwhile.
    NotIdle,
}

/// How a settled delivery leaves the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Acknowledged: gone.
    Ack,
    /// Put back in its original position, flagged redelivered.
    Requeue,
    /// Put back after a delay, at the tail, flagged redelivered.
    RequeueAfter(Duration),
    /// Rejected without requeue: dead-lettered or dropped.
    Discard,
}

/// What a queue shares with its broker.
#[derive(Debug, Clone)]
pub(crate) struct QueueContext {
    /// Whether to keep [`MessageStats`].
    pub(crate) statistics: bool,
    pub(crate) clock: Clock,
    pub(crate) timers: Arc<Timers>,
    /// The broker, through the narrow interface a queue needs of it.
    pub(crate) broker: Weak<dyn QueueOwner>,
    /// The broker's memory estimate, with a memory high watermark set.
    pub(crate) flow: Option<Arc<Flow>>,
    /// The broker's count of messages between queues (dead letters leaving
    /// this one count from under its lock): see [`crate::settle`].
    pub(crate) activity: Arc<Activity>,
    /// The broker's observers (a recorder, a tap): see [`crate::observe`].
    pub(crate) observers: Arc<Observers>,
    /// The broker's fault rules (off unless a test injects some).
    pub(crate) faults: Arc<crate::faults::Faults>,
    /// A durable queue's handle on the broker's store, if it has a data
    /// directory: its persistent messages are written there.
    pub(crate) journal: Option<Arc<QueueJournal>>,
}

/// Reports a settle to the observers of `queue`, if any.
#[inline]
pub(crate) fn report_settle(
    queue: &Queue,
    consumer_tag: Option<&str>,
    delivery_tag: u64,
    how: Settlement,
    msg: &QueuedMessage,
) {
    queue.context.observers.emit_now(|| crate::observe::Event::Settled {
        queue: queue.name.to_string(),
        consumer_tag: consumer_tag.map(str::to_owned),
        delivery_tag,
        outcome: match how {
            Settlement::Ack => crate::observe::SettleOutcome::Ack,
            Settlement::Requeue => crate::observe::SettleOutcome::Requeue,
            Settlement::RequeueAfter(delay) => crate::observe::SettleOutcome::RequeueAfter(delay),
            Settlement::Discard => crate::observe::SettleOutcome::Discard,
        },
        message: msg.envelope.message().clone(),
    });
}

/// What a queue needs of the broker that owns it, and no more: a lower
/// layer reaches up only through this. (A trait object, with `Send + Sync`
/// spelled out, also cuts the loop broker → exchanges → queues → broker
/// that every `Send` check of a user's type would otherwise walk.)
pub(crate) trait QueueOwner: Send + Sync + std::fmt::Debug {
    /// Republishes a dead letter: see `Vhost::route_dead_letter`.
    fn route_dead_letter(
        &self,
        dlx: &str,
        routing_key: &str,
        message: Message,
        extra_keys: &[String],
        forbidden: &[String],
        work: &mut std::collections::VecDeque<Letter>,
    ) -> bool;

    /// Deletes `queue`, unused since before `now`, for its `expires`.
    fn expire_queue(&self, queue: &Arc<Queue>, now: Instant);

    /// Deletes auto-delete `queue`, whose last consumer just went, unless a
    /// new consumer came meanwhile.
    fn auto_delete_queue(&self, queue: &Arc<Queue>);
}

/// A queue. Shared (`Arc`) by the routing tables that reach it, its consumers
/// and the deliveries it handed out.
pub(crate) struct Queue {
    pub(crate) name: Arc<str>,
    pub(crate) id: u64,
    pub(crate) options: QueueOptions,
    pub(crate) policy: QueuePolicy,
    /// The connection an exclusive queue belongs to.
    pub(crate) owner: Option<u64>,
    pub(crate) context: QueueContext,
    me: Weak<Queue>,
    figures: Figures,
    state: Mutex<QueueState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(
        name: Arc<str>,
        id: u64,
        options: QueueOptions,
        policy: QueuePolicy,
        owner: Option<u64>,
        context: QueueContext,
    ) -> Arc<Self> {
        let last_used = policy.expires.map(|_| context.clock.now());
        let statistics = context.statistics;
        let recent_ids = policy.deduplication_window.map(RecentIds::new);
        let durable = context.journal.is_some();
        let memory_budget = context.journal.as_ref().map_or(usize::MAX, |j| j.memory_budget());
        let queue = Arc::new_cyclic(|me| Queue {
            name,
            id,
            options,
            policy,
            owner,
            context,
            me: Weak::clone(me),
            figures: Figures::default(),
            state: Mutex::new(QueueState {
                durable,
                memory_budget,
                ready: ReadyStore::default(),
                delayed: DelayedStore::default(),
                next_seq: 0,
                consumers: Vec::new(),
                priorities_differ: false,
                cursor: 0,
                detached: Vec::new(),
                get_unacked: 0,
                had_consumer: false,
                deleted: false,
                last_used,
                recent_ids,
                timer_at: None,
                letters: Vec::new(),
                counts: statistics.then(MessageStats::default),
                wakers: Vec::new(),
                graveyard: Vec::new(),
                reported_bytes: 0,
                staging: false,
                staged_slots: Vec::new(),
            }),
        });
        if queue.policy.expires.is_some() {
            let mut state = queue.state.lock();
            queue.reschedule(&mut state);
        }
        queue
    }

    /// Reports the queue's held memory to the broker's estimate when it has
    /// moved by a granule (or the queue emptied), so the shared counter is
    /// written rarely: see [`crate::flow`].
    fn account(&self, state: &mut QueueState) {
        let Some(flow) = &self.context.flow else { return };
        let held = state.ready.memory_bytes() + state.delayed.bytes() + state.held() * MESSAGE_OVERHEAD;
        let held = i64::try_from(held).unwrap_or(i64::MAX);
        let delta = held - state.reported_bytes;
        if delta.abs() >= FLOW_GRANULE || (held == 0 && delta != 0) {
            state.reported_bytes = held;
            flow.adjust(delta);
        }
    }

    /// Releases the queue lock, then runs what must not run under it:
    /// wakes the async consumers it sent to and drops the messages that
    /// left. Every path that may have collected either ends here (directly,
    /// or through `with_state`); purge and delete drop what they swapped out
    /// themselves, after unlocking.
    #[inline]
    fn unlock(&self, mut state: MutexGuard<'_, QueueState>) {
        if self.context.flow.is_some() {
            self.account(&mut state);
        }
        if state.wakers.is_empty() && state.graveyard.is_empty() {
            return;
        }
        self.unlock_slow(state);
    }

    /// The rare half of [`unlock`](Self::unlock): something to wake or drop.
    #[cold]
    fn unlock_slow(&self, mut state: MutexGuard<'_, QueueState>) {
        let wakers = std::mem::take(&mut state.wakers);
        let graveyard = std::mem::take(&mut state.graveyard);
        drop(state);
        for waker in wakers {
            waker.wake();
        }
        drop(graveyard);
    }

    /// Whether connection `conn` may use the queue (exclusive queues belong to one).
    pub(crate) fn accessible_by(&self, conn: u64) -> bool {
        self.owner.is_none_or(|owner| owner == conn)
    }

    /// The priority rank of a message in this queue: 0 is served first.
    fn rank(&self, message: &Message) -> u8 {
        match self.policy.max_priority {
            None => 0,
            Some(max) => max - message.properties().priority().unwrap_or(0).min(max),
        }
    }

    /// Runs `f` on the locked state, then dead-letters what it left behind
    /// (after unlocking).
    fn with_state<R>(&self, f: impl FnOnce(&mut QueueState, &mut Now<'_>) -> R) -> R {
        let (result, letters) = {
            let mut state = self.state.lock();
            let mut now = Now::new(&self.context.clock);
            let result = f(&mut state, &mut now);
            self.reschedule(&mut state);
            let letters = std::mem::take(&mut state.letters);
            if !letters.is_empty() {
                // In flight from here, under the lock, until each is routed.
                self.context.activity.begin(letters.len() as u64);
            }
            self.unlock(state);
            (result, letters)
        };
        self.bury(letters);
        result
    }

    /// Dead-letters (or drops, and counts) messages that left the queue,
    /// already counted in flight (each [`Letter`] ends its count).
    fn bury(&self, letters: Vec<(QueuedMessage, DeathReason)>) {
        if letters.is_empty() {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            self.context.activity.end(letters.len() as u64);
            return;
        };
        crate::dead_letter::bury(
            letters.into_iter().map(|(msg, reason)| Letter::new(&me, msg, reason)).collect(),
        );
    }

    /// Restarts the `expires` countdown: the queue was re-declared.
    pub(crate) fn touch(&self) {
        if self.policy.expires.is_some() {
            self.with_state(|state, now| state.last_used = Some(now.get()));
        }
    }

    /// Removes every ready and delayed message; returns how many. The
    /// stores are swapped out under the lock (constant time, whatever the
    /// queue holds) and the messages dropped after it is released, so a
    /// purge of millions does not stall publishers.
    pub(crate) fn purge(&self) -> usize {
        let mut state = self.state.lock();
        let (count, held) = state.take_held();
        self.reschedule(&mut state);
        self.account(&mut state);
        drop(state);
        drop(held);
        self.figures.purged.fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// Marks the queue deleted, drops its messages and cancels its
    /// consumers; returns the number of messages dropped. With `if_unused` /
    /// `if_empty` it refuses instead when the queue has consumers / messages;
    /// with `idle_since_before`, when it was used since then (expiry). The
    /// check and the deletion happen under one lock, so a consumer attaching
    /// meanwhile cannot be deleted under.
    pub(crate) fn delete_if(
        &self,
        if_unused: bool,
        if_empty: bool,
        expiring_at: Option<Instant>,
    ) -> Result<usize, DeleteRefused> {
        let (dropped, slots) = {
            let mut state = self.state.lock();
            if state.deleted {
                return Ok(0);
            }
            if if_unused && !state.consumers.is_empty() {
                return Err(DeleteRefused::InUse);
            }
            if if_empty && state.held() > 0 {
                return Err(DeleteRefused::NotEmpty);
            }
            if let Some(now) = expiring_at
                && state.idle_deadline(&self.policy).is_none_or(|at| at > now)
            {
                return Err(DeleteRefused::NotIdle);
            }
            state.deleted = true;
            if let Some(journal) = &self.context.journal {
                journal.mark_deleted();
            }
            // The pending wake-up goes too: a deleted queue keeps nothing.
            if state.timer_at.take().is_some() {
                self.context.timers.cancel(self.id);
            }
            let (count, held) = state.take_held();
            self.account(&mut state);
            let consumers = std::mem::take(&mut state.consumers);
            self.unlock(state);
            drop(held);
            (count, consumers)
        };
        let consumers: Vec<Arc<ConsumerShared>> = slots.into_iter().map(|slot| slot.consumer).collect();
        for consumer in consumers {
            consumer.set_cancelled(RecvError::QueueDeleted(self.name.to_string()));
            // Its inbox is now disconnected: waiting tasks must see it.
            consumer.wake();
        }
        Ok(dropped)
    }
}

impl Queue {
    #[cfg(test)]
    fn lock(&self) -> parking_lot::MutexGuard<'_, QueueState> {
        self.state.lock()
    }
}

impl QueueState {
    /// Before the queue's figures are read: releases and expires what is
    /// due, dispatches what that made ready, and forgets cancelled
    /// consumers that hold nothing any more.
    fn bring_up_to_date(&mut self, queue: &Queue, now: &mut Now<'_>) {
        self.catch_up(queue, now);
        self.dispatch(queue, now);
        self.detached.retain(|c| c.credit.in_flight() > 0);
    }

    /// Every consumer that may hold deliveries: attached, then cancelled
    /// ones still holding some.
    fn holders(&self) -> impl Iterator<Item = &Arc<ConsumerShared>> {
        self.consumers.iter().map(|s| &s.consumer).chain(self.detached.iter())
    }

    /// Drops a cancelled consumer from `detached` once it holds nothing, so
    /// that consumer churn leaves nothing behind.
    fn forget_if_settled(&mut self, consumer: &ConsumerShared) {
        if consumer.is_cancelled() && consumer.credit.in_flight() == 0 {
            self.detached.retain(|c| !std::ptr::eq(Arc::as_ptr(c), consumer));
        }
    }

    /// Messages the queue holds, ready and delayed: what length limits,
    /// purge and `if_empty` count.
    fn held(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Takes out every ready and delayed message: how many, and the stores
    /// holding them, for the caller to drop after unlocking.
    fn take_held(&mut self) -> (usize, (ReadyStore, DelayedStore)) {
        let count = self.held();
        (count, (std::mem::take(&mut self.ready), std::mem::take(&mut self.delayed)))
    }

    /// Puts a message that just joined the queue in the ready store; a
    /// durable queue past its memory budget keeps only its place in the
    /// store (its body is read back when it leaves).
    fn insert_new(&mut self, mut msg: QueuedMessage) {
        if self.memory_budget < usize::MAX && self.ready.memory_bytes() + msg.body_len() > self.memory_budget
        {
            msg.page_out();
        }
        self.ready.insert(msg);
    }

    /// Takes out an expired message: counted, and dead-lettered once the
    /// lock is released.
    fn expire(&mut self, queue: &Queue, msg: QueuedMessage) {
        bump(&queue.figures.expired);
        self.letters.push((msg, DeathReason::Expired));
    }

    /// Counts a return against the delivery limit. False if the message is
    /// past it (then it is queued for dead-lettering); else flags it
    /// redelivered and, with a limit, updates its `x-delivery-count`.
    fn count_return(&mut self, queue: &Queue, msg: &mut QueuedMessage) -> bool {
        msg.set_redelivered(true);
        msg.deliveries = msg.deliveries.saturating_add(1);
        if let Some(limit) = queue.policy.delivery_limit
            && msg.deliveries > limit
        {
            self.letters.push((msg.clone(), DeathReason::DeliveryLimit));
            return false;
        }
        if queue.policy.delivery_limit.is_some() || queue.policy.queue_type == QueueType::Quorum {
            msg.envelope = msg.envelope.with_delivery_count(msg.deliveries);
        }
        true
    }

    /// Puts a message back in its original position (see [`Queue::requeue`]).
    /// A message past its expiry or delivery limit leaves instead; in a
    /// deleted queue it is dropped.
    fn restore(&mut self, queue: &Queue, mut msg: QueuedMessage, returned: bool, now: &mut Now<'_>) {
        if self.durable
            && !returned
            && let Some(durable) = msg.envelope.durable()
        {
            durable.undelivered();
        }
        if self.deleted || (returned && !self.count_return(queue, &mut msg)) {
            self.graveyard.push(msg);
            return;
        }
        if msg.expired(now) {
            self.expire(queue, msg);
            return;
        }
        if returned && queue.policy.queue_type == QueueType::Quorum {
            // A quorum queue returns a message to its back, not its place.
            msg.seq = self.next_seq;
            self.next_seq += 1;
            if self.durable
                && let Some(durable) = msg.envelope.durable()
            {
                let at = now.get();
                let expires_ms = msg.expires_at().map(|e| crate::durable::to_wall_ms(e, at));
                durable.place(Placement::Ready { seq: msg.seq, expires_ms });
            }
        }
        self.ready.insert(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> QueueContext {
        let clock = Clock::system();
        QueueContext {
            statistics: true,
            timers: Timers::new(clock.clone()),
            clock,
            broker: Weak::<crate::vhost::Vhost>::new(),
            flow: None,
            activity: Arc::default(),
            observers: Arc::default(),
            faults: Arc::default(),
            journal: None,
        }
    }

    fn queue() -> Arc<Queue> {
        Queue::new(Arc::from("q"), 1, QueueOptions::default(), QueuePolicy::default(), None, context())
    }

    fn envelope(body: &str) -> Arc<Envelope> {
        Arc::new(Envelope::new("", "q", Message::new(body.to_owned())))
    }

    #[test]
    fn enqueue_into_deleted_queue_is_refused() {
        let q = queue();
        let clock = Clock::system();
        let mut letters = Vec::new();
        let mut timing = PublishTiming::new(&clock, None, None);
        assert_eq!(q.enqueue(&envelope("a"), &mut timing, &mut letters), Enqueued::Accepted);
        assert_eq!(q.delete_if(false, true, None), Err(DeleteRefused::NotEmpty));
        assert_eq!(q.delete_if(true, false, None), Ok(1));
        assert_eq!(q.delete_if(true, true, None), Ok(0));
        assert_eq!(q.enqueue(&envelope("b"), &mut timing, &mut letters), Enqueued::Gone);
        assert!(q.lock().deleted);
        assert!(letters.is_empty());
    }

    #[test]
    fn requeued_messages_go_back_to_their_position() {
        let q = queue();
        let clock = Clock::system();
        let mut letters = Vec::new();
        for body in ["a", "b", "c"] {
            q.enqueue(&envelope(body), &mut PublishTiming::new(&clock, None, None), &mut letters);
        }
        let a = q.get(true).unwrap().unwrap();
        let b = q.get(true).unwrap().unwrap();
        q.requeue([b, a], None, true);
        let order: Vec<_> = std::iter::from_fn(|| q.get(false).unwrap())
            .map(|m| (m.envelope.message().body().clone(), m.redelivered()))
            .collect();
        assert_eq!(order, [("a".into(), true), ("b".into(), true), ("c".into(), false)]);
    }
}
