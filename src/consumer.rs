//! Consumers: a queue's deliveries, pushed into the consumer's own inbox and
//! handed to the application by `recv`.

use crate::hash::FastHashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::inbox::{Receiver, RecvTimeoutError as ChannelTimeout, TryRecvError as ChannelTryRecv};

use crate::credit::Credit;
use crate::delivery::{Delivery, Holder};
use crate::error::{AckError, ConsumeError, RecvError, RecvTimeoutError, TryRecvError};
use crate::field::FieldTable;
use crate::observe::Event;
use crate::queue::{Queue, QueueOwner, QueuedMessage, Settlement};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering, OwnLine, spin_wait};
use crate::wake::WakerSet;

/// Options of [`Connection::consume`](crate::Connection::consume).
///
/// ```
/// use interoffice::ConsumeOptions;
/// let fair = ConsumeOptions { prefetch: 1, ..Default::default() };
/// assert!(!fair.auto_ack);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumeOptions {
    /// The most unsettled deliveries this consumer holds at once; 0 means no
    /// limit. With a limit, a slow consumer stops receiving while the others
    /// take the rest (fair dispatch).
    ///
    /// For auto-ack consumers RabbitMQ ignores prefetch; interoffice uses it
    /// to bound the consumer's inbox (deliveries not yet received), which
    /// gives the same fair dispatch to auto-ack consumers.
    pub prefetch: u32,
    /// Deliveries count as settled when handed to the application (AMQP `no-ack`).
    pub auto_ack: bool,
    /// The only consumer of the queue: refused if it has others, and others
    /// are refused while this one is attached.
    pub exclusive: bool,
    /// The consumer tag; generated (`amq.ctag-…`) when `None`.
    pub consumer_tag: Option<String>,
    /// The consumer's priority (`x-priority`, also read from `arguments`):
    /// while a higher-priority consumer of the queue has prefetch credit, it
    /// receives every message; consumers of equal priority share round-robin.
    pub priority: i32,
    /// Other arguments, kept for a bridge to a real broker.
    pub arguments: FieldTable,
}

impl ConsumeOptions {
    /// The effective priority: the field, else `x-priority`.
    pub(crate) fn effective_priority(&self) -> i32 {
        if self.priority != 0 {
            return self.priority;
        }
        self.arguments
            .get("x-priority")
            .and_then(crate::FieldValue::as_i64)
            .map_or(0, |p| i32::try_from(p).unwrap_or(if p < 0 { i32::MIN } else { i32::MAX }))
    }

    /// Refuses arguments that are invalid or that the bus does not
    /// implement: `x-priority` must be an integer that fits 32 bits (and
    /// agree with the field if both are set); any other `x-` argument is
    /// refused, never ignored. Other arguments are kept as they are.
    pub(crate) fn validate(&self) -> Result<(), ConsumeError> {
        for (name, value) in self.arguments.iter() {
            if name == "x-priority" {
                let priority = value.as_i64().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| {
                    ConsumeError::InvalidArgument(format!(
                        "invalid arg 'x-priority': expected a 32-bit integer, got {}",
                        crate::queue::describe(value)
                    ))
                })?;
                if self.priority != 0 && self.priority != priority {
                    return Err(ConsumeError::InvalidArgument(format!(
                        "invalid arg 'x-priority': the option says {} but the argument says {priority}",
                        self.priority
                    )));
                }
            } else if name.starts_with("x-") {
                let (name, why) = crate::queue::unknown_argument(name);
                return Err(ConsumeError::InvalidArgument(format!("invalid arg '{name}': {why}")));
            }
        }
        Ok(())
    }
}

/// How long a blocking `recv` spins before parking the thread.
const RECV_SPIN: Duration = Duration::from_micros(50);

/// Deliveries handed to the application and not yet settled, by tag.
#[derive(Debug, Default)]
struct Unsettled {
    next_tag: u64,
    entries: FastHashMap<u64, QueuedMessage>,
    /// Set when the connection closes: everything was requeued, and later
    /// settles report it.
    closed: bool,
}

/// The part of a consumer shared by its handle, its queue (which sends into
/// its inbox) and the deliveries it handed out (which settle through it).
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    pub(crate) tag: Arc<str>,
    pub(crate) queue: Arc<Queue>,
    pub(crate) auto_ack: bool,
    pub(crate) exclusive: bool,
    pub(crate) priority: i32,
    /// Deliveries sent to the inbox and not yet settled, against the
    /// prefetch limit: see [`crate::credit`].
    pub(crate) credit: Credit,
    inbox: Receiver<QueuedMessage>,
    unsettled: Mutex<Unsettled>,
    cancelled: AtomicBool,
    cancel_reason: Mutex<Option<RecvError>>,
    /// Tasks waiting in `recv_async` / a stream: see [`crate::wake`]. The
    /// queue reads it for every send, so it keeps off the lines the
    /// consumer writes for every receive (`inbox`, `unsettled`).
    wakers: OwnLine<WakerSet>,
}

impl ConsumerShared {
    pub(crate) fn new(
        tag: Arc<str>,
        queue: Arc<Queue>,
        options: &ConsumeOptions,
        inbox: Receiver<QueuedMessage>,
    ) -> Self {
        ConsumerShared {
            tag,
            queue,
            auto_ack: options.auto_ack,
            exclusive: options.exclusive,
            priority: options.effective_priority(),
            credit: Credit::new(options.prefetch),
            inbox,
            unsettled: Mutex::new(Unsettled::default()),
            cancelled: AtomicBool::new(false),
            cancel_reason: Mutex::new(None),
            wakers: OwnLine::default(),
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Records why the consumer ended; the first reason wins.
    pub(crate) fn set_cancelled(&self, reason: RecvError) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel_reason.lock().get_or_insert(reason);
    }

    /// Wakes the tasks waiting for this consumer's inbox: something was sent
    /// into it, or it was disconnected. Called after the change.
    ///
    /// With `poll_recv` this is the classic store-then-check handshake: the
    /// sender makes its message visible, then checks `has_wakers`; a waiter
    /// sets `has_wakers`, then checks the inbox. The SeqCst fences on both
    /// sides mean at least one of them sees the other, so no wake-up is lost.
    pub(crate) fn wake(&self) {
        let mut wakers = Vec::new();
        self.take_wakers(&mut wakers);
        for waker in wakers {
            waker.wake();
        }
    }

    /// The handshake of [`wake`](Self::wake) without the waking: moves the
    /// waiting tasks' wakers into `into`, for a caller holding a queue lock
    /// to wake once it has released it (a waker is user code).
    pub(crate) fn take_wakers(&self, into: &mut Vec<Waker>) {
        self.wakers.take(into);
    }

    /// [`take_wakers`](Self::take_wakers) right after a send into the
    /// inbox, which issued the handshake's fence (see `inbox::Sender::send_from`).
    pub(crate) fn take_wakers_after_send(&self, into: &mut Vec<Waker>) {
        self.wakers.take_fenced(into);
    }

    /// One poll of an async receive. A delivery is taken from the inbox and
    /// handed out in the same call, so a future dropped between polls holds
    /// nothing: cancellation-safe.
    fn poll_recv(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<Result<Delivery, RecvError>> {
        if let Some(ready) = self.try_take() {
            return Poll::Ready(ready);
        }
        self.wakers.register(cx.waker());
        match self.try_take() {
            Some(ready) => Poll::Ready(ready),
            None => Poll::Pending,
        }
    }

    /// The next delivery if one is waiting, or why there will be none.
    fn try_take(self: &Arc<Self>) -> Option<Result<Delivery, RecvError>> {
        match self.inbox.try_recv() {
            Ok(msg) => Some(self.hand_out(msg)),
            Err(ChannelTryRecv::Empty) => None,
            Err(ChannelTryRecv::Disconnected) => Some(Err(self.reason())),
        }
    }

    fn reason(&self) -> RecvError {
        self.cancel_reason.lock().clone().unwrap_or(RecvError::ConnectionClosed)
    }

    /// Cancels the consumer: out of the queue's ring, and what sits in its
    /// inbox goes back to the queue (never seen by the application, so not
    /// flagged redelivered). Deliveries already handed out stay settle-able.
    /// True if the queue should now be auto-deleted.
    pub(crate) fn cancel(self: &Arc<Self>, reason: RecvError) -> bool {
        self.cancel_returning(reason, Vec::new())
    }

    /// Cancels, returning `unsettled` to the queue in the same step.
    fn cancel_returning(self: &Arc<Self>, reason: RecvError, unsettled: Vec<QueuedMessage>) -> bool {
        if self.cancelled.swap(true, Ordering::AcqRel) {
            if !unsettled.is_empty() {
                self.queue.requeue(unsettled, Some(self), true);
            }
            return false;
        }
        self.cancel_reason.lock().get_or_insert(reason);
        self.queue.remove_consumer(self, &self.inbox, unsettled)
    }

    /// The connection closed: cancels the consumer and requeues every
    /// delivery handed out and not settled, in one step, so that the next
    /// consumer receives them before anything newer. Later settles of them
    /// fail with `ConnectionClosed`. True if the queue should now be
    /// auto-deleted.
    pub(crate) fn close(self: &Arc<Self>) -> bool {
        let entries: Vec<QueuedMessage> = {
            let mut unsettled = self.unsettled.lock();
            unsettled.closed = true;
            let mut entries: Vec<(u64, QueuedMessage)> = unsettled.entries.drain().collect();
            entries.sort_unstable_by_key(|(tag, _)| *tag);
            entries.into_iter().map(|(_, m)| m).collect()
        };
        self.cancel_returning(RecvError::ConnectionClosed, entries)
    }

    /// Turns an inbox entry into a delivery for the application.
    fn hand_out(self: &Arc<Self>, msg: QueuedMessage) -> Result<Delivery, RecvError> {
        if self.auto_ack {
            self.report_delivery(&msg, 0);
            self.queue.count_auto_ack();
            self.queue.release_credit(self, 1);
            return Ok(Delivery::from_queued(msg, 0, None));
        }
        let mut unsettled = self.unsettled.lock();
        if unsettled.closed {
            drop(unsettled);
            self.queue.requeue([msg], Some(self), false);
            return Err(self.reason());
        }
        unsettled.next_tag += 1;
        let tag = unsettled.next_tag;
        let handed_out = msg.clone();
        unsettled.entries.insert(tag, msg);
        drop(unsettled);
        let delivery = Delivery::from_queued(handed_out, tag, Some(Holder::Consumer(Arc::clone(self))));
        self.queue.context.observers.emit_now(|| Event::Delivered {
            queue: self.queue.name.to_string(),
            consumer_tag: Some(self.tag.to_string()),
            delivery_tag: tag,
            redelivered: delivery.redelivered(),
            message: delivery.message().clone(),
        });
        crate::trace::delivered(&self.queue.name, &self.tag, tag, delivery.redelivered(), delivery.message());
        Ok(delivery)
    }

    /// Reports an auto-ack delivery to the observers.
    /// Turns inbox entries into deliveries, as [`hand_out`](Self::hand_out)
    /// does one by one, but paying once for what a batch shares: one
    /// release of credit (so at most one dispatch under the queue lock) for
    /// auto-ack consumers, one hold of the unsettled lock otherwise.
    fn hand_out_batch(self: &Arc<Self>, msgs: Vec<QueuedMessage>) -> Result<Vec<Delivery>, RecvError> {
        let n = msgs.len();
        if self.auto_ack {
            let deliveries: Vec<Delivery> = msgs
                .into_iter()
                .map(|msg| {
                    self.report_delivery(&msg, 0);
                    self.queue.count_auto_ack();
                    Delivery::from_queued(msg, 0, None)
                })
                .collect();
            self.queue.release_credit(self, u32::try_from(n).unwrap_or(u32::MAX));
            return Ok(deliveries);
        }
        let mut unsettled = self.unsettled.lock();
        if unsettled.closed {
            drop(unsettled);
            self.queue.requeue(msgs, Some(self), false);
            return Err(self.reason());
        }
        let mut deliveries = Vec::with_capacity(n);
        for msg in msgs {
            unsettled.next_tag += 1;
            let tag = unsettled.next_tag;
            let handed_out = msg.clone();
            unsettled.entries.insert(tag, msg);
            let holder = Some(Holder::Consumer(Arc::clone(self)));
            deliveries.push(Delivery::from_queued(handed_out, tag, holder));
        }
        drop(unsettled);
        for delivery in &deliveries {
            self.queue.context.observers.emit_now(|| Event::Delivered {
                queue: self.queue.name.to_string(),
                consumer_tag: Some(self.tag.to_string()),
                delivery_tag: delivery.delivery_tag(),
                redelivered: delivery.redelivered(),
                message: delivery.message().clone(),
            });
            crate::trace::delivered(
                &self.queue.name,
                &self.tag,
                delivery.delivery_tag(),
                delivery.redelivered(),
                delivery.message(),
            );
        }
        Ok(deliveries)
    }

    fn report_delivery(&self, msg: &QueuedMessage, tag: u64) {
        crate::trace::delivered(&self.queue.name, &self.tag, tag, msg.redelivered(), msg.envelope.message());
        self.queue.context.observers.emit_now(|| Event::Delivered {
            queue: self.queue.name.to_string(),
            consumer_tag: Some(self.tag.to_string()),
            delivery_tag: tag,
            redelivered: msg.redelivered(),
            message: msg.envelope.message().clone(),
        });
    }

    /// Settles delivery `tag`.
    /// Settles delivery `tag`; a discarded message's dead letter gets
    /// `annotations` among its headers.
    pub(crate) fn settle_annotated(
        &self,
        tag: u64,
        how: Settlement,
        annotations: Option<FieldTable>,
    ) -> Result<(), AckError> {
        let msg = {
            let mut unsettled = self.unsettled.lock();
            match unsettled.entries.remove(&tag) {
                Some(msg) => msg,
                None => return Err(AckError::ConnectionClosed(tag)),
            }
        };
        crate::queue::report_settle(&self.queue, Some(&self.tag), tag, how, &msg);
        self.queue.count_settle(how);
        match how {
            Settlement::Ack => {
                self.queue.count_ack();
                self.queue.release_credit(self, 1);
            }
            Settlement::Discard => {
                self.queue.discard(msg, annotations);
                self.queue.release_credit(self, 1);
            }
            Settlement::Requeue => self.queue.requeue([msg], Some(self), true),
            Settlement::RequeueAfter(delay) => self.queue.requeue_after(msg, delay, Some(self)),
        }
        Ok(())
    }
}

/// A subscription to a queue: receives its deliveries.
///
/// Created by [`Connection::consume`](crate::Connection::consume). Dropping it
/// (or calling [`cancel`](Consumer::cancel)) cancels the subscription: what
/// the queue had sent to this consumer but `recv` had not yet returned goes
/// back to the queue; deliveries already returned stay settle-able, as after
/// AMQP's basic.cancel.
///
/// ```
/// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
/// let conn = Broker::new().connect();
/// conn.declare_queue("jobs", QueueOptions::default())?;
/// conn.publish("", "jobs", Message::new("one"))?;
/// let consumer = conn.consume("jobs", ConsumeOptions::default())?;
/// let delivery = consumer.recv()?;
/// assert_eq!(delivery.body().as_ref(), b"one");
/// delivery.ack()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Consumer {
    shared: Arc<ConsumerShared>,
    broker: Arc<dyn QueueOwner>,
}

impl std::fmt::Debug for Consumer {
    /// Its tag, queue and mode, and how many deliveries it holds: not the
    /// queue and broker behind it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.shared;
        f.debug_struct("Consumer")
            .field("tag", &&*shared.tag)
            .field("queue", &&*shared.queue.name)
            .field("auto_ack", &shared.auto_ack)
            .field("prefetch", &shared.credit.prefetch())
            .field("holding", &shared.credit.in_flight())
            .field("cancelled", &shared.is_cancelled())
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(shared: Arc<ConsumerShared>, broker: Arc<dyn QueueOwner>) -> Self {
        Consumer { shared, broker }
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.shared.tag
    }

    /// The queue consumed from.
    pub fn queue(&self) -> &str {
        &self.shared.queue.name
    }

    /// Waits for the next delivery. Fails once the consumer is cancelled (its
    /// queue deleted, its connection closed) and nothing is left in its inbox.
    ///
    /// # Errors
    ///
    /// [`RecvError`]: the consumer was cancelled, its queue deleted, or its connection closed.
    pub fn recv(&self) -> Result<Delivery, RecvError> {
        // Spin briefly before parking: in process, the next message is often
        // microseconds away, and waking a parked thread costs several (a
        // request/reply round trip pays it twice).
        if let Some(received) = spin_wait(RECV_SPIN, || self.shared.try_take()) {
            return received;
        }
        match self.shared.inbox.recv() {
            Ok(msg) => self.shared.hand_out(msg),
            Err(_) => Err(self.shared.reason()),
        }
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError`]: nothing arrived in time, or the consumer ended.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        // What is waiting first: a busy consumer finds its next message
        // here, and a clock read costs as much as the take (two of them per
        // call were 5% of a 4 → 1 → 4 run's samples).
        if let Some(ready) = self.shared.try_take() {
            return Ok(ready?);
        }
        let now = Instant::now();
        match now.checked_add(timeout) {
            Some(deadline) => self.wait_until(now, deadline),
            None => self.recv().map_err(RecvTimeoutError::from),
        }
    }

    /// Like [`recv`](Self::recv), waiting until `deadline`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError`]: nothing arrived in time, or the consumer ended.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Delivery, RecvTimeoutError> {
        // What is waiting first, without reading the clock.
        if let Some(ready) = self.shared.try_take() {
            return Ok(ready?);
        }
        self.wait_until(Instant::now(), deadline)
    }

    /// Nothing was waiting at `now`: spin, as `recv` does (at most until
    /// `deadline`), then park until `deadline`.
    fn wait_until(&self, now: Instant, deadline: Instant) -> Result<Delivery, RecvTimeoutError> {
        let spin = deadline.saturating_duration_since(now).min(RECV_SPIN);
        if let Some(received) = spin_wait(spin, || self.shared.try_take()) {
            return Ok(received?);
        }
        match self.shared.inbox.recv_deadline(deadline) {
            Ok(msg) => Ok(self.shared.hand_out(msg)?),
            Err(ChannelTimeout::Timeout) => Err(RecvTimeoutError::Timeout),
            Err(ChannelTimeout::Disconnected) => Err(self.shared.reason().into()),
        }
    }

    /// The next delivery if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing is waiting; [`TryRecvError::Closed`] when the consumer has ended.
    pub fn try_recv(&self) -> Result<Delivery, TryRecvError> {
        match self.shared.inbox.try_recv() {
            Ok(msg) => Ok(self.shared.hand_out(msg)?),
            Err(ChannelTryRecv::Empty) => Err(TryRecvError::Empty),
            Err(ChannelTryRecv::Disconnected) => Err(self.shared.reason().into()),
        }
    }

    /// Every delivery waiting, up to `max`, without blocking: one hold of
    /// the consumer's bookkeeping for all of them (one credit release with
    /// auto-ack, one lock of the unsettled deliveries otherwise), in order.
    /// Prefetch bounds it as it bounds [`recv`](Self::recv): at most the
    /// prefetch limit is ever waiting.
    ///
    /// ```
    /// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("jobs", QueueOptions::default())?;
    /// let consumer = conn.consume("jobs", ConsumeOptions { prefetch: 100, ..Default::default() })?;
    /// for i in 0..10 {
    ///     conn.publish("", "jobs", Message::new(format!("job {i}")))?;
    /// }
    /// let batch = consumer.try_recv_batch(64)?;
    /// assert_eq!(batch.len(), 10);
    /// for delivery in batch {
    ///     delivery.ack()?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing is waiting; [`TryRecvError::Closed`] when the consumer has ended.
    pub fn try_recv_batch(&self, max: usize) -> Result<Vec<Delivery>, TryRecvError> {
        let mut msgs = Vec::new();
        if self.shared.inbox.take_up_to(max, None, &mut msgs) {
            return Err(self.shared.reason().into());
        }
        if msgs.is_empty() {
            return Err(TryRecvError::Empty);
        }
        Ok(self.shared.hand_out_batch(msgs)?)
    }

    /// Blocks until a delivery is waiting, then takes it and whatever else
    /// is waiting, up to `max` (at least one, even for a `max` of 0): the
    /// batch form of [`recv`](Self::recv), with the bookkeeping of
    /// [`try_recv_batch`](Self::try_recv_batch).
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the consumer has ended and nothing is left.
    pub fn recv_batch(&self, max: usize) -> Result<Vec<Delivery>, RecvError> {
        // What is waiting already is moved straight from the inbox's buffer.
        // Received apart first, a message was copied twice more on its way
        // into the batch, and the first of those copies read what the
        // receive had only just written: a store-forwarding stall, most of
        // the batch's extend (`perf annotate`).
        let mut msgs = Vec::new();
        if self.shared.inbox.take_up_to(max.max(1), None, &mut msgs) {
            return Err(self.shared.reason());
        }
        if !msgs.is_empty() {
            return self.shared.hand_out_batch(msgs);
        }
        let first = {
            let spun = spin_wait(RECV_SPIN, || match self.shared.inbox.try_recv() {
                Ok(msg) => Some(Ok(msg)),
                Err(ChannelTryRecv::Disconnected) => Some(Err(self.shared.reason())),
                Err(ChannelTryRecv::Empty) => None,
            });
            match spun {
                Some(first) => first?,
                None => self.shared.inbox.recv().map_err(|_| self.shared.reason())?,
            }
        };
        self.shared.inbox.take_up_to(max, Some(first), &mut msgs);
        self.shared.hand_out_batch(msgs)
    }

    /// Waits for the next delivery without blocking a thread: the async form
    /// of [`recv`](Self::recv). Runtime-agnostic (tokio, smol,
    /// `futures::executor`, ...): the task is woken by the publish that
    /// makes a delivery available, and costs nothing while it waits.
    ///
    /// **Cancellation-safe:** a delivery is taken from the consumer only in
    /// the poll that returns it, so dropping the future at any point loses
    /// nothing — the message stays for the next receive (or goes back to the
    /// queue when the consumer is cancelled). Sync and async receives may be
    /// mixed, on one consumer or on one queue.
    ///
    /// ```
    /// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("jobs", QueueOptions::default())?;
    /// let consumer = conn.consume("jobs", ConsumeOptions::default())?;
    /// conn.publish("", "jobs", Message::new("one"))?;
    /// let delivery = futures::executor::block_on(consumer.recv_async())?;
    /// assert_eq!(delivery.body().as_ref(), b"one");
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_async(&self) -> Recv<'_> {
        Recv { consumer: &self.shared }
    }

    /// The deliveries as a [`futures_core::Stream`], borrowing the consumer;
    /// it ends when the consumer is cancelled. Cancellation-safe like
    /// [`recv_async`](Self::recv_async).
    pub fn stream(&self) -> Deliveries<'_> {
        Deliveries { consumer: &self.shared }
    }

    /// The deliveries as a [`futures_core::Stream`] that owns the consumer
    /// (dropping the stream cancels it).
    pub fn into_stream(self) -> IntoDeliveries {
        IntoDeliveries { consumer: self }
    }

    /// A blocking iterator over deliveries; it ends when the consumer is cancelled.
    pub fn iter(&self) -> impl Iterator<Item = Delivery> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// Cancels the consumer (AMQP basic.cancel), as dropping it does: what
    /// the queue had sent to it but `recv` had not returned goes back to the
    /// queue, and a `recv` blocked on another thread returns
    /// [`RecvError::Cancelled`]. Deliveries already returned stay settle-able.
    /// Cancelling twice does nothing.
    pub fn cancel(&self) {
        if self.shared.cancel(RecvError::Cancelled) {
            self.broker.auto_delete_queue(&self.shared.queue);
        }
    }

    /// Whether the consumer is cancelled (by [`cancel`](Self::cancel), its
    /// queue's deletion or its connection's close).
    pub fn is_cancelled(&self) -> bool {
        self.shared.is_cancelled()
    }
}

/// The future of [`Consumer::recv_async`]. Dropping it loses nothing.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    consumer: &'a Arc<ConsumerShared>,
}

impl Future for Recv<'_> {
    type Output = Result<Delivery, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.consumer.poll_recv(cx)
    }
}

/// The stream of [`Consumer::stream`]: deliveries until the consumer is
/// cancelled.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct Deliveries<'a> {
    consumer: &'a Arc<ConsumerShared>,
}

impl Stream for Deliveries<'_> {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.consumer.poll_recv(cx).map(Result::ok)
    }
}

/// The stream of [`Consumer::into_stream`], owning its consumer.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct IntoDeliveries {
    consumer: Consumer,
}

impl IntoDeliveries {
    /// The consumer the stream reads.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }
}

impl Stream for IntoDeliveries {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.consumer.shared.poll_recv(cx).map(Result::ok)
    }
}

impl<'a> IntoIterator for &'a Consumer {
    type Item = Delivery;
    type IntoIter = Box<dyn Iterator<Item = Delivery> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel();
    }
}
