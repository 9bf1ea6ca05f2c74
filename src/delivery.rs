//! Deliveries: a message handed to the application, and how it is settled.

use crate::hash::FastHashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::consumer::ConsumerShared;
use crate::error::AckError;
use crate::field::FieldTable;
use crate::message::{Message, Properties};
use crate::queue::{Envelope, Queue, QueuedMessage, Settlement};
use crate::sync::{Arc, Mutex};

/// Who settles a delivery.
#[derive(Debug)]
pub(crate) enum Holder {
    /// A consumer's delivery.
    Consumer(Arc<ConsumerShared>),
    /// A delivery taken by `get` on a connection.
    Get(Arc<GetStore>),
}

/// A message delivered to the application, from a [`Consumer`](crate::Consumer)
/// or [`Connection::get`](crate::Connection::get).
///
/// Unless it was auto-acknowledged, a delivery must be settled: [`ack`],
/// [`nack`] or [`reject`]. Each takes the delivery by value, so it cannot be
/// settled twice. A delivery dropped unsettled (for instance by a panicking
/// thread) is requeued in its original position, flagged redelivered: nothing
/// is lost.
///
/// [`ack`]: Delivery::ack
/// [`nack`]: Delivery::nack
/// [`reject`]: Delivery::reject
///
/// ```
/// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
/// let conn = Broker::new().connect();
/// conn.declare_queue("jobs", QueueOptions::default())?;
/// conn.publish("", "jobs", Message::new("resize image 7"))?;
/// conn.publish("", "jobs", Message::new("resize image 8"))?;
/// let consumer = conn.consume("jobs", ConsumeOptions { prefetch: 1, ..Default::default() })?;
///
/// let first = consumer.recv()?;
/// first.nack(true)?; // not now: back to its place at the head of the queue
///
/// let again = consumer.recv()?;
/// assert_eq!(again.body().as_ref(), b"resize image 7");
/// assert!(again.redelivered());
/// again.ack()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Delivery {
    /// `None` only while it is dropped: taken, not cloned, to be kept for
    /// reuse (`queue/recycle.rs`).
    envelope: Option<Arc<Envelope>>,
    /// Its publish is known to have reached other queues too: dropped, it
    /// does not try to keep the envelope for reuse (`queue/recycle.rs`).
    fanout: bool,
    tag: u64,
    redelivered: bool,
    delivery_count: u32,
    holder: Option<Holder>,
}

impl Delivery {
    /// A queued message handed out as delivery `tag` (0 with no holder:
    /// settled as it was handed out).
    #[inline]
    pub(crate) fn from_queued(msg: QueuedMessage, tag: u64, holder: Option<Holder>) -> Self {
        let (fanout, redelivered) = (msg.fanout(), msg.redelivered());
        let envelope = Some(msg.envelope);
        Delivery { envelope, fanout, tag, redelivered, delivery_count: msg.deliveries, holder }
    }

    /// A message that never sat in a queue (a reply taken straight to its
    /// call): settled as it is handed out, delivered for the first time.
    pub(crate) fn unqueued(envelope: Arc<Envelope>) -> Self {
        let envelope = Some(envelope);
        Delivery { envelope, fanout: false, tag: 0, redelivered: false, delivery_count: 0, holder: None }
    }

    #[inline]
    fn envelope(&self) -> &Envelope {
        match &self.envelope {
            Some(envelope) => envelope,
            None => crate::queue::recycle::no_envelope(),
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        self.envelope().message().body()
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        self.envelope().message()
    }

    /// The message's properties.
    pub fn properties(&self) -> &Properties {
        self.envelope().message().properties()
    }

    /// The message's headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.envelope().message().headers()
    }

    /// One header's value.
    pub fn header(&self, key: &str) -> Option<&crate::FieldValue> {
        self.envelope().message().header(key)
    }

    /// The exchange the message was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.envelope().exchange()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.envelope().routing_key()
    }

    /// Whether the message was delivered before and not acknowledged.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times this message was delivered before and came back
    /// (nacked or rejected with requeue, dropped unsettled, its connection
    /// closed, [`nack_with_delay`](Self::nack_with_delay)): 0 on the first
    /// delivery. In a queue with a delivery limit it is also the
    /// `x-delivery-count` header.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// The delivery tag: unique among the unsettled deliveries of its consumer
    /// (or of its connection's `get`s); 0 for auto-acknowledged deliveries.
    pub fn delivery_tag(&self) -> u64 {
        self.tag
    }

    /// The message's dead-letter history (`x-death`), most recent first:
    /// each queue it died in, why and how often. Empty for a message that
    /// was never dead-lettered.
    ///
    /// ```
    /// use interoffice::{Broker, DeathReason, ExchangeKind, QueueOptions, Message};
    /// let conn = Broker::new().connect();
    /// conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())?;
    /// conn.declare_queue("work", QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() })?;
    /// conn.declare_queue("parked", QueueOptions::default())?;
    /// conn.bind_queue("parked", "dlx", "", None)?;
    /// conn.publish("", "work", Message::new("poison"))?;
    /// conn.get("work", false)?.unwrap().reject(false)?;
    ///
    /// let parked = conn.get("parked", false)?.unwrap();
    /// let deaths = parked.deaths();
    /// assert_eq!((deaths[0].queue.as_str(), deaths[0].reason, deaths[0].count), ("work", Some(DeathReason::Rejected), 1));
    /// assert_eq!(parked.first_death().unwrap().queue, "work");
    /// parked.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deaths(&self) -> Vec<crate::Death> {
        crate::death::deaths(self.message())
    }

    /// Where the message died first (`x-first-death-queue`, `-reason`,
    /// `-exchange`), if it was ever dead-lettered.
    pub fn first_death(&self) -> Option<crate::FirstDeath> {
        crate::death::first_death(self.message())
    }

    /// The conversation the message belongs to, if it carries one (see
    /// [`Conversation`](crate::Conversation)).
    pub fn conversation_id(&self) -> Option<&str> {
        self.header(crate::CONVERSATION_ID_HEADER).and_then(crate::FieldValue::as_str)
    }

    /// Enters this delivery's conversation on the current thread: until the
    /// guard drops, every message published from this thread that names no
    /// conversation of its own carries this one's id (and this message's
    /// `message_id` as its initiator). Workers and RPC servers do this for
    /// their handlers; a plain consumer calls it around its handling.
    ///
    /// ```
    /// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("orders", QueueOptions::default())?;
    /// conn.declare_queue("billing", QueueOptions::default())?;
    /// let conversation = broker.conversation();
    /// conn.publish("", "orders", conversation.stamp(Message::new("order 42")))?;
    ///
    /// let orders = conn.consume("orders", ConsumeOptions::default())?;
    /// let order = orders.recv()?;
    /// {
    ///     let _scope = order.enter_conversation();
    ///     conn.publish("", "billing", Message::new("bill 42"))?;
    /// }
    /// order.ack()?;
    /// let bill = conn.get("billing", true)?.expect("a bill");
    /// assert_eq!(bill.conversation_id(), Some(conversation.id()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enter_conversation(&self) -> crate::ConversationScope {
        crate::conversation::enter(self.message())
    }

    /// The queue it came from, while it is unsettled (an auto-ack delivery
    /// does not keep it).
    pub(crate) fn queue_name(&self) -> Option<String> {
        match &self.holder {
            None => None,
            Some(Holder::Consumer(consumer)) => Some(consumer.queue.name.to_string()),
            Some(Holder::Get(store)) => {
                store.inner.lock().entries.get(&self.tag).map(|(queue, _)| queue.name.to_string())
            }
        }
    }

    /// Whether this delivery still has to be settled.
    pub fn needs_settling(&self) -> bool {
        self.holder.is_some()
    }

    /// Acknowledges: the message is done with and leaves the queue.
    ///
    /// # Errors
    ///
    /// [`AckError`]: an auto-acknowledged delivery (nothing to settle), or its connection closed first (the message was requeued).
    pub fn ack(mut self) -> Result<(), AckError> {
        self.settle(Settlement::Ack)
    }

    /// Negative acknowledgement. With `requeue`, the message goes back to its
    /// original position in the queue, flagged redelivered; without, it is
    /// discarded.
    ///
    /// # Errors
    ///
    /// [`AckError`]: an auto-acknowledged delivery (nothing to settle), or its connection closed first (the message was requeued).
    pub fn nack(mut self, requeue: bool) -> Result<(), AckError> {
        self.settle(if requeue { Settlement::Requeue } else { Settlement::Discard })
    }

    /// Negative acknowledgement with a delayed requeue, for retries with
    /// backoff without a retry-queue topology: the message is invisible for
    /// `delay` (counted in [`QueueStats::messages_delayed`](crate::QueueStats)),
    /// then joins the tail of its queue, flagged redelivered. It counts as a
    /// return against the queue's delivery limit. (An interoffice extension.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use interoffice::{Broker, BrokerOptions, ConsumeOptions, ManualClock, Message, QueueOptions};
    ///
    /// let clock = ManualClock::new();
    /// let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    /// let conn = broker.connect();
    /// conn.declare_queue("emails", QueueOptions::default())?;
    /// conn.publish("", "emails", Message::new("welcome"))?;
    /// let consumer = conn.consume("emails", ConsumeOptions::default())?;
    ///
    /// consumer.recv()?.nack_with_delay(Duration::from_secs(30))?; // the mail server is down
    /// assert!(consumer.try_recv().is_err());
    /// clock.advance(Duration::from_secs(30));
    /// let retry = consumer.try_recv()?;
    /// assert_eq!(retry.delivery_count(), 1);
    /// retry.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AckError`]: an auto-acknowledged delivery (nothing to settle), or its connection closed first (the message was requeued).
    pub fn nack_with_delay(mut self, delay: Duration) -> Result<(), AckError> {
        self.settle(Settlement::RequeueAfter(delay))
    }

    /// AMQP basic.reject: the same as [`nack`](Self::nack) for one message.
    ///
    /// # Errors
    ///
    /// [`AckError`]: an auto-acknowledged delivery (nothing to settle), or its connection closed first (the message was requeued).
    pub fn reject(self, requeue: bool) -> Result<(), AckError> {
        self.nack(requeue)
    }

    fn settle(&mut self, how: Settlement) -> Result<(), AckError> {
        self.settle_annotated(how, None)
    }

    /// Rejects without requeue, adding `annotations` to the dead letter's
    /// headers (a worker's `x-exception`).
    pub(crate) fn discard_annotated(mut self, annotations: FieldTable) -> Result<(), AckError> {
        self.settle_annotated(Settlement::Discard, Some(annotations))
    }

    fn settle_annotated(&mut self, how: Settlement, annotations: Option<FieldTable>) -> Result<(), AckError> {
        match self.holder.take() {
            None => Err(AckError::AutoAck(self.tag)),
            Some(Holder::Consumer(consumer)) => consumer.settle_annotated(self.tag, how, annotations),
            Some(Holder::Get(store)) => store.settle(self.tag, how, annotations),
        }
    }
}

impl std::fmt::Debug for Delivery {
    /// What a reader of a failing test needs: where it came from, its
    /// tags and flags, a summary of its properties and its body's size —
    /// not the bus's internals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties = self.properties();
        let mut out = f.debug_struct("Delivery");
        out.field("exchange", &self.exchange())
            .field("routing_key", &self.routing_key())
            .field("delivery_tag", &self.tag)
            .field("redelivered", &self.redelivered);
        if self.delivery_count > 0 {
            out.field("delivery_count", &self.delivery_count);
        }
        if let Some(id) = properties.message_id() {
            out.field("message_id", &id);
        }
        if let Some(id) = properties.correlation_id() {
            out.field("correlation_id", &id);
        }
        if let Some(kind) = properties.content_type() {
            out.field("content_type", &kind);
        }
        if let Some(headers) = self.headers().filter(|h| !h.is_empty()) {
            let names: Vec<&str> = headers.iter().map(|(name, _)| name).collect();
            out.field("headers", &names);
        }
        out.field("body", &format_args!("{}", crate::observe::show_body(self.message())))
            .field("settled", &self.holder.is_none())
            .finish()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.holder.is_some() {
            // Already requeued if the connection closed first; nothing else can fail.
            let _ = self.settle(Settlement::Requeue);
        }
        // After the settle: its requeue (or a dead letter it caused) may
        // still hold the envelope, and then it is not kept.
        if !self.fanout
            && let Some(envelope) = self.envelope.take()
        {
            crate::queue::recycle::give_back(envelope);
        }
    }
}

/// Reports a delivery taken by `get` to the queue's observers.
pub(crate) fn report_get(queue: &Queue, delivery: &Delivery) {
    crate::trace::delivered(&queue.name, "(get)", delivery.tag, delivery.redelivered, delivery.message());
    queue.context.observers.emit_now(|| crate::observe::Event::Delivered {
        queue: queue.name.to_string(),
        consumer_tag: None,
        delivery_tag: delivery.tag,
        redelivered: delivery.redelivered,
        message: delivery.message().clone(),
    });
}

#[derive(Debug, Default)]
struct GetEntries {
    next_tag: u64,
    entries: FastHashMap<u64, (Arc<Queue>, QueuedMessage)>,
    closed: bool,
}

/// The unsettled deliveries a connection took with `get`.
#[derive(Debug, Default)]
pub(crate) struct GetStore {
    inner: Mutex<GetEntries>,
}

impl GetStore {
    /// Records a delivery taken from `queue`; `None` if the connection closed
    /// meanwhile (the message is then requeued).
    pub(crate) fn hold(self: &Arc<Self>, queue: &Arc<Queue>, msg: QueuedMessage) -> Option<Delivery> {
        let mut inner = self.inner.lock();
        if inner.closed {
            drop(inner);
            queue.requeue([msg], None, false);
            return None;
        }
        inner.next_tag += 1;
        let tag = inner.next_tag;
        let handed_out = msg.clone();
        inner.entries.insert(tag, (Arc::clone(queue), msg));
        drop(inner);
        let delivery = Delivery::from_queued(handed_out, tag, Some(Holder::Get(Arc::clone(self))));
        report_get(queue, &delivery);
        Some(delivery)
    }

    fn settle(&self, tag: u64, how: Settlement, annotations: Option<FieldTable>) -> Result<(), AckError> {
        let entry = self.inner.lock().entries.remove(&tag);
        let (queue, msg) = entry.ok_or(AckError::ConnectionClosed(tag))?;
        crate::queue::report_settle(&queue, None, tag, how, &msg);
        queue.count_settle(how);
        queue.settle_get(msg, how, annotations);
        Ok(())
    }

    /// Requeues everything unsettled: the connection is closing.
    pub(crate) fn close(&self) {
        let entries: Vec<_> = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            inner.entries.drain().map(|(_, e)| e).collect()
        };
        for (queue, msg) in entries {
            queue.requeue([msg], None, true);
        }
    }
}
