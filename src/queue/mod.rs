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

mod dedup;
mod durable;
mod limits;
mod options;
mod segmented;
mod store;

use std::task::Waker;
use std::time::{Duration, Instant};

use crate::inbox::{Receiver, Sender};
use parking_lot::MutexGuard;

pub use options::{DeduplicationWindow, Overflow, QueueOptions, QueueType};
pub(crate) use options::{InvalidArg, QueuePolicy, ToSide, describe, unknown_argument, wrong_type};

use self::dedup::RecentIds;
use self::limits::Room;
use self::store::{Delayed, DelayedStore, ReadyStore};
use crate::clock::{Clock, Deadline, MAX_DURATION, later};
use crate::consumer::ConsumerShared;
use crate::conversation::ConversationToken;
use crate::dead_letter::Letter;
use crate::death::{DeathReason, ReasonCounts};
use crate::durable::{Persisted, Placement, QueueJournal, StoreError};
use crate::error::{ConsumeError, RecvError};
use crate::field::{FieldTable, FieldValue};
use crate::flow::{FLOW_GRANULE, Flow, MESSAGE_OVERHEAD};
use crate::message::Message;
use crate::observe::Observers;
use crate::settle::{Activity, PendingQueue};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, Weak};
use crate::timer::{TimerTarget, Timers};

/// One side of an inequivalent declaration: the value as shown and
/// RabbitMQ's name for its type, or `None` when that side does not set it.
pub(crate) type Side = Option<(String, &'static str)>;

/// The first option that differs: `(argument, received, current)`.
pub(crate) type Difference = (String, Side, Side);

/// A field value as one side of a difference.
pub(crate) fn side(value: &FieldValue) -> Side {
    Some((value.to_string(), value.amqp_type()))
}

/// The end of RabbitMQ's `inequivalent arg` text: `received '20' but
/// current is '10'`, or, when one side does not set it, `received none but
/// current is the value '5' of type 'signedint'` (and the reverse).
pub(crate) fn inequivalent_phrase(received: &Side, current: &Side) -> String {
    match (received, current) {
        (Some((r, _)), Some((c, _))) => format!("received '{r}' but current is '{c}'"),
        (None, Some((c, t))) => format!("received none but current is the value '{c}' of type '{t}'"),
        (Some((r, t)), None) => format!("received the value '{r}' of type '{t}' but current is none"),
        (None, None) => "received none but current is none".to_owned(),
    }
}

/// The first key whose value differs between two argument tables.
pub(crate) fn table_difference(new: &FieldTable, old: &FieldTable) -> Option<Difference> {
    new.iter()
        .map(|(k, _)| k)
        .chain(old.iter().map(|(k, _)| k))
        .find(|k| new.get(k) != old.get(k))
        .map(|k| (k.to_owned(), new.get(k).and_then(side), old.get(k).and_then(side)))
}

/// Counts describing one queue at one moment.
///
/// The gauges (`messages_*`, `consumers`) are the present state; the
/// counters (`messages_expired` and below) count since the queue was
/// declared. Reading the figures first expires what is due, so an expired
/// message is never counted as ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Messages waiting for a consumer.
    pub messages_ready: usize,
    /// Delayed messages not yet due (not counted as ready).
    pub messages_delayed: usize,
    /// Messages delivered (or assigned to a consumer's inbox) and not yet settled.
    pub messages_unacknowledged: usize,
    /// Consumers attached.
    pub consumers: usize,
    /// Messages that expired in this queue (then dead-lettered or dropped).
    pub messages_expired: u64,
    /// Messages that left this queue through its dead-letter exchange and
    /// reached at least one queue, by reason.
    pub dead_lettered: ReasonCounts,
    /// Messages that left this queue for a dead-letter reason and were not
    /// dead-lettered: the queue has no dead-letter exchange, or it is
    /// missing, routed them nowhere, or would have made a cycle.
    pub dropped: ReasonCounts,
    /// Of the dropped: those that had a dead-letter exchange which failed
    /// them (missing, routed nowhere, cycle).
    pub dead_letter_failures: u64,
    /// Publishes refused because the queue was full (`RejectPublish`,
    /// `RejectPublishDlx`).
    pub publishes_rejected: u64,
    /// Publishes refused as duplicates by the deduplication window.
    pub duplicates_refused: u64,
    /// Messages removed by purges since the queue was declared.
    pub messages_purged: u64,
    /// Body bytes of the ready and delayed messages.
    pub ready_bytes: usize,
    /// Message rates' counters (RabbitMQ's `message_stats`), or `None` when
    /// the broker runs with [`BrokerOptions::statistics`](crate::BrokerOptions::statistics)
    /// off.
    pub message_stats: Option<MessageStats>,
}

/// How many messages went through a queue since it was declared: the
/// counters behind RabbitMQ's `message_stats` rates. Kept only while
/// [`BrokerOptions::statistics`](crate::BrokerOptions::statistics) is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MessageStats {
    /// Publishes the queue accepted (delayed ones included; duplicates and
    /// rejected publishes excluded).
    pub published: u64,
    /// Messages sent to consumers (RabbitMQ's `deliver` + `deliver_no_ack`).
    pub delivered: u64,
    /// Messages taken by `get` (RabbitMQ's `get` + `get_no_ack`).
    pub fetched: u64,
    /// Of the delivered and fetched: those delivered before (RabbitMQ's `redeliver`).
    pub redelivered: u64,
    /// Deliveries acknowledged explicitly (auto-ack deliveries are not).
    pub acknowledged: u64,
    /// Deliveries settled as they were handed out (auto-ack consumers and
    /// `get`s): RabbitMQ's `deliver_no_ack` + `get_no_ack`.
    pub auto_acknowledged: u64,
    /// Nacks and rejects with requeue (and delayed requeues).
    pub requeued: u64,
    /// Nacks and rejects without requeue (dead-lettered or dropped).
    pub rejected: u64,
}

/// What a publish leaves in every queue it reaches: the message with its
/// routing, shared by all those queues.
///
/// The exchange name and routing key are copied into the envelope rather
/// than sharing the exchange's `Arc<str>`: a refcount shared by every
/// publisher and consumer of an exchange would bounce its cache line between
/// cores on every message. They are stored inline when short, so a publish
/// makes one allocation (the envelope), not two.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// `exchange` followed by `routing_key`.
    names: Names,
    pub(crate) message: Message,
    /// What few envelopes carry (a followed conversation, a place in the
    /// store), boxed: it keeps the envelope at 88 bytes, its `Arc`
    /// allocation in the 112-byte glibc size class instead of 128. (When
    /// `Properties` took 264 bytes, this boxing made draining a million
    /// messages that own their properties 15–35% slower at an equal
    /// instruction count — `malloc_consolidate` and `unlink_chunk`, the
    /// heap's layout — so it was inline; with properties packed, fill-drain
    /// measured the same drain rate either way, three paired runs.)
    extras: Option<Box<Extras>>,
}

/// The rare parts of an [`Envelope`].
#[derive(Debug, Clone, Default)]
struct Extras {
    /// The conversation a test is waiting on, if the message belongs to
    /// one: the message counts as pending in it while this envelope lives.
    conversation: Option<ConversationToken>,
    /// A persistent message in a durable queue: its place in the store,
    /// removed from it when the last envelope sharing it is dropped. (A
    /// durable queue's envelope is its own, never shared with other queues.)
    durable: Option<Arc<Persisted>>,
}

/// Bytes of names stored inside the envelope; longer ones go to the heap.
/// 29 keeps [`Names`] at 32 bytes (tag, lengths and buffer) and the whole
/// `Arc<Envelope>` allocation at 104 bytes (a 112-byte glibc chunk): part of
/// the memory budget of a queued message (see ARCHITECTURE.md).
const INLINE_NAMES: usize = 29;

/// A string stored inline up to [`INLINE_NAMES`] bytes, else boxed, with
/// where the exchange name ends (names are at most 255 bytes, checked at
/// declare and publish).
#[derive(Debug, Clone)]
enum Names {
    Inline { len: u8, exchange_len: u8, bytes: [u8; INLINE_NAMES] },
    Heap { names: Box<str>, exchange_len: u8 },
}

impl Names {
    fn new(parts: [&str; 2]) -> Self {
        let len = parts[0].len() + parts[1].len();
        let exchange_len = parts[0].len() as u8;
        if len <= INLINE_NAMES {
            let mut bytes = [0; INLINE_NAMES];
            bytes[..parts[0].len()].copy_from_slice(parts[0].as_bytes());
            bytes[parts[0].len()..len].copy_from_slice(parts[1].as_bytes());
            Names::Inline { len: len as u8, exchange_len, bytes }
        } else {
            Names::Heap { names: parts.concat().into_boxed_str(), exchange_len }
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from two `str`s, so always UTF-8; the empty
            // fallback is unreachable and only avoids a panic path.
            Names::Inline { len, bytes, .. } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Names::Heap { names, .. } => names,
        }
    }

    fn exchange_len(&self) -> usize {
        match self {
            Names::Inline { exchange_len, .. } | Names::Heap { exchange_len, .. } => {
                usize::from(*exchange_len)
            }
        }
    }
}

impl Envelope {
    pub(crate) fn new(exchange: &str, routing_key: &str, message: Message) -> Self {
        Self::published(exchange, routing_key, message, None)
    }

    /// A published message's envelope, counted in a tracked conversation
    /// while it lives. Built in one expression, so that it is written
    /// once, in place: setting a field of a built envelope made the
    /// compiler build it on the stack and copy it, reading back bytes it
    /// had just written in smaller pieces (a store-forwarding stall on
    /// every publish).
    #[inline]
    pub(crate) fn published(
        exchange: &str,
        routing_key: &str,
        message: Message,
        token: Option<ConversationToken>,
    ) -> Self {
        debug_assert!(exchange.len() <= usize::from(u8::MAX), "exchange names are checked at declare");
        let extras = token.map(|token| Box::new(Extras { conversation: Some(token), durable: None }));
        Envelope { names: Names::new([exchange, routing_key]), message, extras }
    }

    pub(crate) fn exchange(&self) -> &str {
        self.names.as_str().get(..self.names.exchange_len()).unwrap_or_default()
    }

    pub(crate) fn routing_key(&self) -> &str {
        self.names.as_str().get(self.names.exchange_len()..).unwrap_or_default()
    }

    /// A copy for one queue whose message carries `x-delivery-count`.
    fn with_delivery_count(&self, count: u32) -> Arc<Envelope> {
        let mut message = self.message.clone();
        message
            .properties_mut()
            .headers_mut()
            .get_or_insert_with(FieldTable::new)
            .insert("x-delivery-count", FieldValue::I64(i64::from(count)));
        Arc::new(Envelope { names: self.names.clone(), message, extras: self.extras.clone() })
    }

    /// The same envelope with another body: a paged-out message's (empty),
    /// or its body read back.
    fn with_body(&self, body: bytes::Bytes) -> Arc<Envelope> {
        Arc::new(Envelope {
            names: self.names.clone(),
            message: self.message.with_body(body),
            extras: self.extras.clone(),
        })
    }

    /// This queue's own copy, tied to its place in the store.
    fn persisted(&self, durable: Persisted) -> Arc<Envelope> {
        Arc::new(Envelope {
            names: self.names.clone(),
            message: self.message.clone(),
            extras: Some(Box::new(Extras {
                conversation: self.extras.as_ref().and_then(|e| e.conversation.clone()),
                durable: Some(Arc::new(durable)),
            })),
        })
    }

    /// Ties a recovered envelope to its place in the store.
    fn set_durable(&mut self, durable: Arc<Persisted>) {
        self.extras.get_or_insert_default().durable = Some(durable);
    }

    /// Its place in the store, if it is a persistent message in a durable queue.
    pub(crate) fn durable(&self) -> Option<&Persisted> {
        self.extras.as_ref()?.durable.as_deref()
    }
}

/// One message in one queue. `seq` is its position: requeueing puts it back
/// there, ahead of everything published after it.
#[derive(Debug, Clone)]
pub(crate) struct QueuedMessage {
    pub(crate) seq: u64,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) redelivered: bool,
    /// Times it was delivered and came back.
    pub(crate) deliveries: u32,
    /// When it expires, if it has a TTL. Kept across requeues.
    /// (A `Deadline`, not an `Instant`: 8 bytes less per queued message.)
    expires: Option<Deadline>,
    /// Priority rank: 0 is served first.
    rank: u8,
    /// Its body is not in memory (a durable queue past its memory budget):
    /// read it back from the store before it leaves the queue.
    pub(crate) paged: bool,
}

impl QueuedMessage {
    /// A message of rank `rank` not yet placed (sequence 0, no expiry),
    /// never delivered.
    pub(crate) fn new(envelope: Arc<Envelope>, rank: u8) -> Self {
        QueuedMessage {
            seq: 0,
            envelope,
            redelivered: false,
            deliveries: 0,
            expires: None,
            rank,
            paged: false,
        }
    }

    fn key(&self) -> store::ReadyKey {
        (self.rank, self.seq)
    }

    /// When it expires, if it has a TTL.
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        self.expires.map(Deadline::instant)
    }

    pub(crate) fn set_expires_at(&mut self, at: Option<Instant>) {
        self.expires = at.map(Deadline::at);
    }

    /// The body's length, in memory or paged out.
    fn body_len(&self) -> usize {
        if self.paged {
            return self.envelope.durable().map_or(0, |d| d.body_len as usize);
        }
        self.envelope.message.body().len()
    }

    fn expired(&self, now: &mut Now<'_>) -> bool {
        self.expires_at().is_some_and(|at| at <= now.get())
    }
}

/// How many messages a timer wake-up releases or expires under one hold of
/// the queue lock.
const TIMER_BATCH: usize = 4096;

/// What a publish needs to know about time: read once, only if a policy
/// asks for it.
pub(crate) struct PublishTiming<'a> {
    now: Now<'a>,
    /// The message's own TTL (its `expiration`).
    pub(crate) ttl: Option<Duration>,
    /// How long it stays invisible.
    pub(crate) delay: Option<Duration>,
    /// The furthest store position a durable queue wrote this message to:
    /// what the publisher waits to be synced (0: none).
    pub(crate) durable_lsn: u64,
    /// Why a durable queue's store refused it, if one did.
    pub(crate) store_error: Option<Box<StoreError>>,
}

impl<'a> PublishTiming<'a> {
    pub(crate) fn new(clock: &'a Clock, ttl: Option<Duration>, delay: Option<Duration>) -> Self {
        PublishTiming {
            now: Now::new(clock),
            ttl,
            delay: delay.filter(|d| !d.is_zero()),
            durable_lsn: 0,
            store_error: None,
        }
    }
}

/// One message of a batch on its way into queues
/// ([`Queue::enqueue_batch`]): its envelope and timing, and what the last
/// queue offered it did with it.
pub(crate) struct Offer<'a> {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) timing: PublishTiming<'a>,
    pub(crate) outcome: Enqueued,
}

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

/// A consumer as the queue sees it: where to send, and its credit.
struct Slot {
    consumer: Arc<ConsumerShared>,
    inbox: Sender<QueuedMessage>,
    /// The consumer's prefetch limit (0: none), copied here: the credit
    /// count beside it in the consumer is written by the consumer on every
    /// receive, and without a limit the queue need not read that line.
    prefetch: u32,
    /// Sent while the queue was staging (a batch's enqueues), not yet in
    /// the inbox, and not yet counted in its credit: moved there, and the
    /// credit taken, in one hold of each before the queue's lock is
    /// released, so it is empty whenever the queue is unlocked.
    staged: Vec<QueuedMessage>,
}

impl Slot {
    /// Whether the consumer can take one more delivery, staged ones
    /// counted (see [`crate::credit`]).
    fn has_credit(&self) -> bool {
        self.prefetch == 0 || self.consumer.credit.has_credit_beyond(self.staged.len())
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

/// Monotonic counters, updated without the queue lock.
#[derive(Debug, Default)]
struct Figures {
    expired: AtomicU64,
    /// Bumped by the threads that ack (never by publishers), only with
    /// statistics on: counted here rather than under the queue lock, which
    /// an ack does not otherwise take.
    acknowledged: AtomicU64,
    /// Deliveries settled when handed out (auto-ack consumers, `get` with
    /// auto-ack), with statistics on; bumped by the receiving threads.
    auto_acknowledged: AtomicU64,
    /// Nacks and rejects with requeue (delayed included), with statistics on.
    requeued: AtomicU64,
    /// Nacks and rejects without requeue, with statistics on.
    rejected: AtomicU64,
    /// Messages removed by purges.
    purged: AtomicU64,
    dead_lettered: [AtomicU64; 4],
    dropped: [AtomicU64; 4],
    dead_letter_failures: AtomicU64,
    publishes_rejected: AtomicU64,
    duplicates_refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counters: &[AtomicU64; 4]) -> ReasonCounts {
    let get = |reason: DeathReason| counters[reason as usize].load(Ordering::Relaxed);
    ReasonCounts {
        rejected: get(DeathReason::Rejected),
        expired: get(DeathReason::Expired),
        maxlen: get(DeathReason::MaxLen),
        delivery_limit: get(DeathReason::DeliveryLimit),
    }
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
        message: msg.envelope.message.clone(),
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
        let outcome = self.enqueue_locked(&mut state, envelope, timing);
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
            offer.outcome = if state.deleted {
                Enqueued::Gone
            } else {
                self.enqueue_locked(&mut state, &offer.envelope, &mut offer.timing)
            };
        }
        state.flush_staged(self, &mut Now::new(&self.context.clock));
        if !state.letters.is_empty() {
            // In flight from here, under the lock, until each is routed.
            self.context.activity.begin(state.letters.len() as u64);
            letters.extend(state.letters.drain(..).map(|(msg, reason)| Letter::new(self, msg, reason)));
        }
        self.unlock(state);
    }

    #[inline]
    fn enqueue_locked(
        &self,
        state: &mut QueueState,
        envelope: &Arc<Envelope>,
        timing: &mut PublishTiming<'_>,
    ) -> Enqueued {
        let message_id = envelope.message.properties().message_id();
        if let (Some(recent), Some(id)) = (&mut state.recent_ids, message_id) {
            let now = recent.timed().then(|| timing.now.get());
            if recent.contains(id, now) {
                bump(&self.figures.duplicates_refused);
                return Enqueued::Duplicate;
            }
        }
        let envelope = match self.policy.delivery_limit {
            Some(_) => envelope.with_delivery_count(0),
            None => Arc::clone(envelope),
        };
        let rank = self.rank(&envelope.message);
        let ttl = match (self.policy.message_ttl, timing.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut msg = QueuedMessage::new(envelope, rank);

        if let Some(delay) = timing.delay {
            match self.make_room(state, &msg, &mut timing.now) {
                Room::Made => {
                    let due = later(timing.now.get(), delay);
                    if state.durable && !self.persist(&mut msg, timing, Some((due, ttl))) {
                        return Enqueued::StoreFailed;
                    }
                    state.delayed.insert(due, Delayed { msg, ttl });
                }
                Room::Refused => return Enqueued::Rejected,
                Room::DroppedItself => {}
            }
        } else {
            msg.seq = state.next_seq;
            msg.set_expires_at(ttl.map(|ttl| later(timing.now.get(), ttl)));
            if state.durable && !self.persist(&mut msg, timing, None) {
                return Enqueued::StoreFailed;
            }
            state.next_seq += 1;
            // Everything ready has already been offered to every consumer
            // with credit, so a new message can go straight to one if the
            // store is empty.
            let offered = if state.ready.is_empty() {
                state.offer(msg, self.policy.single_active_consumer)
            } else {
                Some(msg)
            };
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
                        Room::Refused => return Enqueued::Rejected,
                        Room::DroppedItself => {}
                    }
                }
            }
        }
        if let (Some(recent), Some(id)) = (&mut state.recent_ids, message_id) {
            let now = recent.timed().then(|| timing.now.get());
            recent.record(id, now);
        }
        if let Some(counts) = &mut state.counts {
            counts.published += 1;
        }
        self.reschedule(state);
        Enqueued::Accepted
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

    /// Counts a dead letter's fate.
    pub(crate) fn count_dead_letter(&self, reason: DeathReason, routed: bool, failed: bool) {
        if routed {
            bump(&self.figures.dead_lettered[reason as usize]);
        } else {
            bump(&self.figures.dropped[reason as usize]);
            if failed {
                bump(&self.figures.dead_letter_failures);
            }
        }
    }

    /// Registers a consumer and hands it what is waiting.
    pub(crate) fn add_consumer(
        &self,
        consumer: Arc<ConsumerShared>,
        inbox: Sender<QueuedMessage>,
    ) -> Result<(), ConsumeError> {
        self.with_state(|state, now| {
            if state.deleted {
                return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
            }
            let exclusive_held = state.consumers.iter().any(|s| s.consumer.exclusive);
            if exclusive_held || (consumer.exclusive && !state.consumers.is_empty()) {
                return Err(ConsumeError::AccessRefused(format!(
                    "queue '{}' in vhost '/' in exclusive use",
                    self.name
                )));
            }
            let prefetch = consumer.credit.prefetch();
            state.consumers.push(Slot { consumer, inbox, prefetch, staged: Vec::new() });
            state.priorities_changed();
            state.had_consumer = true;
            state.dispatch(self, now);
            Ok(())
        })
    }

    /// Takes a consumer out of the ring, in one step with everything that
    /// goes back to the queue: what sits in its inbox (never seen by the
    /// application: not flagged redelivered) and `unsettled`, its deliveries
    /// being returned (flagged). Doing both under one lock means the next
    /// consumer (single active consumer) receives them before anything newer.
    /// True if the queue is auto-delete and has just lost its last consumer.
    pub(crate) fn remove_consumer(
        &self,
        consumer: &Arc<ConsumerShared>,
        inbox: &Receiver<QueuedMessage>,
        unsettled: Vec<QueuedMessage>,
    ) -> bool {
        self.with_state(|state, now| {
            let removed = state.consumers.iter().position(|s| Arc::ptr_eq(&s.consumer, consumer));
            if let Some(index) = removed {
                drop(state.consumers.remove(index));
                consumer.take_wakers(&mut state.wakers);
                if state.cursor > index {
                    state.cursor -= 1;
                }
                if state.cursor >= state.consumers.len() {
                    state.cursor = 0;
                }
                state.priorities_changed();
                if state.consumers.is_empty() && self.policy.expires.is_some() {
                    state.last_used = Some(now.get());
                }
            }
            // Only the queue sends into the inbox, under this lock, and the
            // consumer is out of the ring: the inbox is complete.
            let pending: Vec<QueuedMessage> = inbox.drain();
            let returned = u32::try_from(pending.len() + unsettled.len()).unwrap_or(u32::MAX);
            for msg in unsettled {
                state.restore(self, msg, true, now);
            }
            for msg in pending {
                state.restore(self, msg, false, now);
            }
            consumer.credit.give_back(returned);
            if consumer.credit.in_flight() > 0 && !state.detached.iter().any(|c| Arc::ptr_eq(c, consumer)) {
                state.detached.push(Arc::clone(consumer));
            }
            self.drop_head_over_limit(state, now);
            state.dispatch(self, now);
            removed.is_some()
                && self.options.auto_delete
                && state.had_consumer
                && state.consumers.is_empty()
                && !state.deleted
        })
    }

    /// Puts messages back in their original positions. `returned` marks
    /// them as having reached the application (flagged redelivered, counted
    /// against the delivery limit). Their credit is returned to `consumer`
    /// (or to the `get` count), under the lock, so no dispatch can be missed.
    pub(crate) fn requeue(
        &self,
        msgs: impl IntoIterator<Item = QueuedMessage>,
        consumer: Option<&ConsumerShared>,
        returned: bool,
    ) {
        self.with_state(|state, now| {
            let mut count = 0;
            for msg in msgs {
                count += 1;
                state.restore(self, msg, returned, now);
            }
            self.drop_head_over_limit(state, now);
            match consumer {
                Some(c) => {
                    c.credit.give_back(count);
                    state.forget_if_settled(c);
                }
                None => state.get_unacked -= count as usize,
            }
            state.dispatch(self, now);
        });
    }

    /// Puts a returned message back after `delay`: invisible until then,
    /// then at the tail of the queue.
    pub(crate) fn requeue_after(
        &self,
        mut msg: QueuedMessage,
        delay: Duration,
        consumer: Option<&ConsumerShared>,
    ) {
        self.with_state(|state, now| {
            match consumer {
                Some(c) => {
                    c.credit.give_back(1);
                    state.forget_if_settled(c);
                }
                None => state.get_unacked -= 1,
            }
            if !state.deleted && state.count_return(self, &mut msg) {
                if delay.is_zero() {
                    state.restore(self, msg, false, now);
                    self.drop_head_over_limit(state, now);
                } else {
                    let at = now.get();
                    let due = later(at, delay.min(MAX_DURATION));
                    if state.durable
                        && let Some(durable) = msg.envelope.durable()
                    {
                        let due_ms = crate::durable::to_wall_ms(due, at);
                        durable.place(Placement::Delayed { due_ms, ttl_ms: None });
                    }
                    state.delayed.insert(due, Delayed { msg, ttl: None });
                }
            } else {
                // Deleted, or past the delivery limit (a copy is a letter):
                // its body is dropped after the lock is released.
                state.graveyard.push(msg);
            }
            state.dispatch(self, now);
        });
    }

    /// Returns credit for `n` settled deliveries of `consumer`, dispatching
    /// only if the consumer was at its prefetch limit: the only case in which
    /// a ready message may be waiting for this credit.
    pub(crate) fn release_credit(&self, consumer: &ConsumerShared, n: u32) {
        let released = consumer.credit.release(n);
        if released.must_dispatch {
            self.with_state(|state, now| state.dispatch(self, now));
        }
        if released.emptied && consumer.is_cancelled() {
            // The last delivery of a cancelled consumer: the queue no longer
            // needs it for its figures.
            self.with_state(|state, _| state.forget_if_settled(consumer));
        }
    }

    /// Counts a delivery settled as it was handed out, if statistics are on.
    pub(crate) fn count_auto_ack(&self) {
        if self.context.statistics {
            bump(&self.figures.auto_acknowledged);
        }
    }

    /// Counts a nack or reject, if statistics are on (acks count in `count_ack`).
    pub(crate) fn count_settle(&self, how: Settlement) {
        if self.context.statistics {
            match how {
                Settlement::Ack => {}
                Settlement::Requeue | Settlement::RequeueAfter(_) => bump(&self.figures.requeued),
                Settlement::Discard => bump(&self.figures.rejected),
            }
        }
    }

    /// Counts an explicit ack, if statistics are on.
    pub(crate) fn count_ack(&self) {
        if self.context.statistics {
            bump(&self.figures.acknowledged);
        }
    }

    /// Settles a delivery taken by `get`.
    pub(crate) fn settle_get(&self, msg: QueuedMessage, how: Settlement, annotations: Option<FieldTable>) {
        match how {
            Settlement::Requeue => self.requeue([msg], None, true),
            Settlement::RequeueAfter(delay) => self.requeue_after(msg, delay, None),
            Settlement::Ack => {
                self.state.lock().get_unacked -= 1;
                self.count_ack();
                drop(msg);
            }
            Settlement::Discard => {
                // Dead-lettered before it stops counting as unsettled, so
                // a settle never sees it nowhere.
                self.discard(msg, annotations);
                self.state.lock().get_unacked -= 1;
            }
        }
    }

    /// A message rejected without requeue: dead-lettered (reason
    /// `rejected`) or dropped. Called without the queue lock held.
    pub(crate) fn discard(&self, msg: QueuedMessage, annotations: Option<FieldTable>) {
        // Its holder still counts it unsettled: in flight before it stops.
        self.context.activity.begin(1);
        match (annotations, self.me.upgrade()) {
            (Some(annotations), Some(me)) => crate::dead_letter::bury(vec![Letter::annotated(
                &me,
                msg,
                DeathReason::Rejected,
                annotations,
            )]),
            _ => self.bury(vec![(msg, DeathReason::Rejected)]),
        }
    }

    /// basic.get: the next ready message, if any. With `track`, it counts as
    /// unacknowledged until settled.
    pub(crate) fn get(&self, track: bool) -> Result<Option<QueuedMessage>, ConsumeError> {
        self.with_state(|state, now| {
            if state.deleted {
                return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
            }
            if self.policy.expires.is_some() {
                state.last_used = Some(now.get());
            }
            state.catch_up(self, now);
            // Messages just released go to consumers with credit first, as
            // they would have had the timer fired a moment earlier.
            state.dispatch(self, now);
            let msg = loop {
                let Some(mut msg) = state.ready.pop_first() else { break None };
                if msg.page_in() {
                    break Some(msg);
                }
                // Unreadable (counted by the store): gone.
                state.graveyard.push(msg);
            };
            if msg.is_some() && track {
                state.get_unacked += 1;
            }
            if state.durable
                && let Some(durable) = msg.as_ref().and_then(|m| m.envelope.durable())
            {
                durable.delivered();
            }
            if let (Some(counts), Some(msg)) = (&mut state.counts, &msg) {
                counts.fetched += 1;
                counts.redelivered += u64::from(msg.redelivered);
            }
            Ok(msg)
        })
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

impl TimerTarget for Queue {
    /// The timers woke the queue: expire, release and delete what is due.
    fn on_timer(&self) {
        // Batches of `TIMER_BATCH` messages, each under the lock once.
        let expire_queue = loop {
            let step = self.with_state(|state, now| {
                state.timer_at = None;
                if state.deleted {
                    return Some(None);
                }
                let finished = state.catch_up_some(self, now, TIMER_BATCH);
                state.dispatch(self, now);
                if !finished {
                    return None;
                }
                let now = now.get();
                Some(state.idle_deadline(&self.policy).filter(|&at| at <= now).map(|_| now))
            });
            if let Some(outcome) = step {
                break outcome;
            }
        };
        if let Some(now) = expire_queue
            && let (Some(broker), Some(me)) = (self.context.broker.upgrade(), self.me.upgrade())
        {
            broker.expire_queue(&me, now);
        }
    }
}

impl Queue {
    /// Asks the timers for a wake-up at the queue's next deadline, unless
    /// one is already due earlier.
    fn reschedule(&self, state: &mut QueueState) {
        if state.deleted {
            return;
        }
        let next =
            [state.ready.first_deadline(), state.delayed.first_due(), state.idle_deadline(&self.policy)]
                .into_iter()
                .flatten()
                .min();
        if let Some(at) = next
            && state.timer_at.is_none_or(|t| at < t)
        {
            let me: Weak<dyn TimerTarget> = Weak::clone(&self.me) as Weak<dyn TimerTarget>;
            state.timer_at = Some(self.context.timers.schedule(me, self.id, at));
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let (ready, delayed, unacked, consumers, counts, ready_bytes) = self.with_state(|state, now| {
            state.bring_up_to_date(self, now);
            let in_flight: usize = state.holders().map(|c| c.credit.in_flight() as usize).sum();
            let counts = state.counts;
            (
                state.ready.len(),
                state.delayed.len(),
                in_flight + state.get_unacked,
                state.consumers.len(),
                counts,
                state.ready.bytes() + state.delayed.bytes(),
            )
        });
        let figures = &self.figures;
        QueueStats {
            name: self.name.to_string(),
            messages_ready: ready,
            messages_delayed: delayed,
            messages_unacknowledged: unacked,
            consumers,
            messages_expired: figures.expired.load(Ordering::Relaxed),
            dead_lettered: read(&figures.dead_lettered),
            dropped: read(&figures.dropped),
            dead_letter_failures: figures.dead_letter_failures.load(Ordering::Relaxed),
            publishes_rejected: figures.publishes_rejected.load(Ordering::Relaxed),
            duplicates_refused: figures.duplicates_refused.load(Ordering::Relaxed),
            messages_purged: figures.purged.load(Ordering::Relaxed),
            ready_bytes,
            message_stats: counts.map(|counts| MessageStats {
                acknowledged: figures.acknowledged.load(Ordering::Relaxed),
                auto_acknowledged: figures.auto_acknowledged.load(Ordering::Relaxed),
                requeued: figures.requeued.load(Ordering::Relaxed),
                rejected: figures.rejected.load(Ordering::Relaxed),
                ..counts
            }),
        }
    }

    /// What the queue holds that keeps the bus from settling: ready
    /// messages, delayed ones (only under the system clock: under a manual
    /// clock a delayed message waits for the test to advance it, and counts
    /// once it is due), and unsettled deliveries by consumer.
    pub(crate) fn pending(&self) -> PendingQueue {
        self.with_state(|state, now| {
            state.bring_up_to_date(self, now);
            let unacknowledged: Vec<(String, usize)> = state
                .holders()
                .map(|c| (c.tag.to_string(), c.credit.in_flight() as usize))
                .chain(std::iter::once(("(get)".to_owned(), state.get_unacked)))
                .filter(|(_, n)| *n > 0)
                .collect();
            PendingQueue {
                vhost: String::new(),
                name: self.name.to_string(),
                ready: state.ready.len(),
                delayed: if self.context.clock.is_manual() { 0 } else { state.delayed.len() },
                unacknowledged,
                consumers: state.consumers.len(),
            }
        })
    }

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

    /// Moves ready messages to consumers with credit until one side runs out.
    /// Afterwards either nothing is ready or no consumer has credit: the
    /// invariant `enqueue` relies on. Expired messages met on the way are
    /// taken out instead of delivered.
    fn dispatch(&mut self, queue: &Queue, now: &mut Now<'_>) {
        let single = queue.policy.single_active_consumer;
        while !self.ready.is_empty() {
            let Some(index) = self.next_with_credit(single) else { return };
            let Some(mut msg) = self.ready.pop_first() else { return };
            if msg.expired(now) {
                self.expire(queue, msg);
                continue;
            }
            if !msg.page_in() {
                self.graveyard.push(msg);
                continue;
            }
            if let Err(returned) = self.send_to(index, msg) {
                self.ready.insert(returned);
                return;
            }
        }
    }

    /// Offers one message to the next consumer with credit; gives it back if
    /// there is none.
    fn offer(&mut self, msg: QueuedMessage, single: bool) -> Option<QueuedMessage> {
        match self.next_with_credit(single) {
            Some(index) => self.send_to(index, msg).err(),
            None => Some(msg),
        }
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

    /// Recomputes whether consumer priorities matter.
    fn priorities_changed(&mut self) {
        let first = self.consumers.first().map(|s| s.consumer.priority);
        self.priorities_differ = self.consumers.iter().any(|s| Some(s.consumer.priority) != first);
    }

    /// The consumer to deliver to next: with a single active consumer, the
    /// first attached, if it has credit; otherwise the highest-priority
    /// consumer with credit, in round-robin order among equals.
    fn next_with_credit(&mut self, single: bool) -> Option<usize> {
        let n = self.consumers.len();
        if single {
            return self.consumers.first().filter(|s| s.has_credit()).map(|_| 0);
        }
        let ring = (0..n).map(|i| (self.cursor + i) % n);
        if !self.priorities_differ {
            return ring.into_iter().find(|&i| self.consumers[i].has_credit());
        }
        let mut best: Option<(i32, usize)> = None;
        for i in ring {
            let slot = &self.consumers[i];
            let consumer = &slot.consumer;
            if slot.has_credit() && best.is_none_or(|(p, _)| consumer.priority > p) {
                best = Some((consumer.priority, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Sends to consumer `index`, taking one credit. Only the queue sends, and
    /// always under its lock, so credit never overshoots the prefetch limit.
    fn send_to(&mut self, index: usize, msg: QueuedMessage) -> Result<(), QueuedMessage> {
        let slot = &mut self.consumers[index];
        if self.durable
            && let Some(durable) = msg.envelope.durable()
        {
            // Before the consumer can see it: a crash after it did brings
            // it back flagged redelivered.
            durable.delivered();
        }
        let redelivered = msg.redelivered;
        let sent = if self.staging {
            // Credit and wake-ups when the flush makes it visible.
            if slot.staged.is_empty() {
                self.staged_slots.push(index);
            }
            slot.staged.push(msg);
            Ok(())
        } else {
            slot.consumer.credit.take();
            slot.inbox.send(msg).inspect(|()| slot.consumer.take_wakers(&mut self.wakers))
        };
        match sent {
            Ok(()) => {
                if let Some(counts) = &mut self.counts {
                    counts.delivered += 1;
                    counts.redelivered += u64::from(redelivered);
                }
                self.cursor = (index + 1) % self.consumers.len();
                Ok(())
            }
            Err(returned) => {
                // The consumer's inbox is gone (it is being cancelled): take
                // it out of the ring rather than lose the message.
                let slot = &self.consumers[index];
                slot.consumer.credit.give_back(1);
                let gone = self.consumers.remove(index);
                gone.consumer.take_wakers(&mut self.wakers);
                if self.cursor >= self.consumers.len() {
                    self.cursor = 0;
                }
                self.priorities_changed();
                Err(returned.0)
            }
        }
    }

    /// Ends staging: each slot's staged messages take their credit in one
    /// step and go to its inbox in one hold of the inbox's lock, and then
    /// (the message visible first, as `wake` needs) its waiting tasks are
    /// collected to wake. (A slot's consumer owns the inbox's receiving
    /// end, so the inbox outlives the slot and cannot refuse; were it to,
    /// its messages would go back to their places in the queue.)
    ///
    /// A settle that released credit meanwhile saw a count without the
    /// staged messages, so it may have seen no need to dispatch where the
    /// count with them would have crossed the prefetch limit (see
    /// [`crate::credit`]): the queue dispatches here instead, with every
    /// credit taken.
    fn flush_staged(&mut self, queue: &Queue, now: &mut Now<'_>) {
        self.staging = false;
        if self.staged_slots.is_empty() {
            return;
        }
        let mut limited = false;
        for i in 0..self.staged_slots.len() {
            let slot = &mut self.consumers[self.staged_slots[i]];
            let n = u32::try_from(slot.staged.len()).unwrap_or(u32::MAX);
            limited |= slot.prefetch != 0;
            slot.consumer.credit.take_n(n);
            if slot.inbox.send_all(&mut slot.staged).is_ok() {
                slot.consumer.take_wakers(&mut self.wakers);
            } else {
                let returned = std::mem::take(&mut slot.staged);
                slot.consumer.credit.give_back(n);
                for msg in returned {
                    self.restore(queue, msg, false, now);
                }
            }
        }
        self.staged_slots.clear();
        if limited {
            self.dispatch(queue, now);
        }
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
        msg.redelivered = true;
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

    /// Releases delayed messages that are due (to the tail) and takes out
    /// expired ones.
    fn catch_up(&mut self, queue: &Queue, now: &mut Now<'_>) {
        self.catch_up_some(queue, now, usize::MAX);
    }

    /// [`catch_up`](Self::catch_up) for at most `limit` messages; true if it
    /// finished. The timer works in batches, releasing the queue lock in
    /// between, so a million messages expiring at once do not stall the
    /// queue's publishers for the whole of it.
    fn catch_up_some(&mut self, queue: &Queue, now: &mut Now<'_>, limit: usize) -> bool {
        if self.delayed.len() == 0 && self.ready.first_deadline().is_none() {
            return true;
        }
        let at = now.get();
        let mut left = limit;
        while left > 0
            && let Some(Delayed { mut msg, ttl }) = self.delayed.pop_due(at)
        {
            left -= 1;
            msg.seq = self.next_seq;
            self.next_seq += 1;
            if let Some(ttl) = ttl {
                msg.set_expires_at(Some(later(at, ttl)));
            }
            if self.durable
                && let Some(durable) = msg.envelope.durable()
            {
                let expires_ms = msg.expires_at().map(|e| crate::durable::to_wall_ms(e, at));
                durable.place(Placement::Ready { seq: msg.seq, expires_ms });
            }
            if msg.expired(now) {
                self.expire(queue, msg);
            } else {
                self.ready.insert(msg);
            }
        }
        while left > 0
            && let Some(msg) = self.ready.pop_expired(at)
        {
            left -= 1;
            self.expire(queue, msg);
        }
        left > 0
    }

    /// When an unused queue with `expires` is due for deletion.
    fn idle_deadline(&self, policy: &QueuePolicy) -> Option<Instant> {
        if !self.consumers.is_empty() {
            return None;
        }
        Some(later(self.last_used?, policy.expires?))
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
            .map(|m| (m.envelope.message.body().clone(), m.redelivered))
            .collect();
        assert_eq!(order, [("a".into(), true), ("b".into(), true), ("c".into(), false)]);
    }

    /// The per-message memory budget (≤ 56 bytes beyond a raw channel
    /// holding the same messages) rests on these sizes: an envelope
    /// allocation and a store entry. (An envelope of 81 to 88 bytes is a
    /// 112-byte glibc chunk with its `Arc` counts; one of 89 to 104 is 128.)
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_queued_message_stays_small() {
        assert!(std::mem::size_of::<Envelope>() <= 88, "{}", std::mem::size_of::<Envelope>());
        assert!(std::mem::size_of::<QueuedMessage>() <= 32, "{}", std::mem::size_of::<QueuedMessage>());
    }

    #[test]
    fn envelope_names_split_back_whether_inline_or_boxed() {
        for (exchange, key) in [
            ("", ""),
            ("orders", "order.created"),
            ("x".repeat(20).as_str(), "k".repeat(10).as_str()),
            ("x".repeat(20).as_str(), "k".repeat(11).as_str()),
            ("é".repeat(100).as_str(), "ключ.ü".repeat(20).as_str()),
        ] {
            let envelope = Envelope::new(exchange, key, Message::new("m"));
            assert_eq!((envelope.exchange(), envelope.routing_key()), (exchange, key));
            let inline = matches!(envelope.names, Names::Inline { .. });
            assert_eq!(inline, exchange.len() + key.len() <= INLINE_NAMES, "{exchange}/{key}");
            let copy = envelope.with_delivery_count(1);
            assert_eq!((copy.exchange(), copy.routing_key()), (exchange, key));
        }
    }
}
