//! Observing the bus: the events a [`Recorder`](crate::Recorder) or a
//! [`Broker::tap`](crate::Broker::tap) (RabbitMQ's firehose) sees — every
//! publish with where it went, every delivery, settle and dead letter.
//!
//! Off by default at the cost of one relaxed atomic load per hook: events
//! are built only while an observer is attached. They are emitted after the
//! queue locks are released, on the thread that did the work, in the order
//! that thread did it; an observer is user code, so it may call back into
//! the bus.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::death::DeathReason;
use crate::message::Message;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// What happened to a publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Enqueued in the queues listed in the event (maybe none: an
    /// unroutable message without `mandatory` is dropped).
    Routed,
    /// Reached no queue and was `mandatory`: handed back to the publisher
    /// (AMQP's basic.return).
    Returned,
    /// Refused by full queues (`x-overflow: reject-publish`), named here;
    /// the event's queues took it.
    Rejected(Vec<String>),
    /// Refused before routing (no such exchange, too large, a bad header):
    /// the error's text.
    Refused(String),
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum SettleOutcome {
    /// Acknowledged.
    Ack,
    /// Nacked or rejected with requeue (or dropped unsettled).
    Requeue,
    /// Nacked with a delayed requeue.
    RequeueAfter(Duration),
    /// Nacked or rejected without requeue: dead-lettered or dropped.
    Discard,
}

/// One thing the bus did, as an observer sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum Event {
    /// A message was published (by a client, a handler, or an RPC server's
    /// reply).
    Published {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The message, properties and body.
        message: Message,
        /// The queues it was enqueued in, in routing order.
        queues: Vec<String>,
        /// Queues that already held it (deduplication).
        duplicates: Vec<String>,
        /// What became of it.
        outcome: PublishOutcome,
    },
    /// A message was handed to a consumer (or taken by `get`).
    Delivered {
        /// The queue it came from.
        queue: String,
        /// The consumer's tag; `None` for `get`.
        consumer_tag: Option<String>,
        /// The delivery tag (0 when auto-acknowledged).
        delivery_tag: u64,
        /// Whether it was delivered before.
        redelivered: bool,
        /// The message.
        message: Message,
    },
    /// A delivery was settled.
    Settled {
        /// The queue it came from.
        queue: String,
        /// The consumer's tag; `None` for `get`.
        consumer_tag: Option<String>,
        /// The delivery tag.
        delivery_tag: u64,
        /// How.
        outcome: SettleOutcome,
        /// The message.
        message: Message,
    },
    /// A message left a queue without being consumed: rejected, expired,
    /// over a length limit, past the delivery limit.
    DeadLettered {
        /// The queue it left.
        queue: String,
        /// Why.
        reason: DeathReason,
        /// The dead-letter exchange it was republished to, if it reached a
        /// queue through it; `None` if it was dropped (no dead-letter
        /// exchange, or it routed the message nowhere).
        exchange: Option<String>,
        /// The message as it left (before its `x-death` was updated).
        message: Message,
    },
    /// An injected fault hit a message entering a queue (see
    /// [`Broker::inject_faults`](crate::Broker::inject_faults)).
    Fault {
        /// The queue.
        queue: String,
        /// The message's routing key.
        routing_key: String,
        /// What was done to it.
        action: crate::faults::FaultAction,
        /// The message.
        message: Message,
    },
    /// An RPC server ([`Connection::serve`](crate::Connection::serve))
    /// replied to a request.
    Replied {
        /// The queue the request came from.
        queue: String,
        /// The request's `reply_to`.
        reply_to: String,
        /// The request's correlation id.
        correlation_id: Option<String>,
        /// Whether the reply reached its caller.
        delivered: bool,
        /// The reply.
        message: Message,
    },
}

impl Event {
    /// The message the event is about.
    pub fn message(&self) -> &Message {
        match self {
            Event::Published { message, .. }
            | Event::Delivered { message, .. }
            | Event::Settled { message, .. }
            | Event::DeadLettered { message, .. }
            | Event::Fault { message, .. }
            | Event::Replied { message, .. } => message,
        }
    }

    /// The event's kind, as one word: `published`, `delivered`, `settled`,
    /// `dead-lettered`, `fault`, `replied`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Published { .. } => "published",
            Event::Delivered { .. } => "delivered",
            Event::Settled { .. } => "settled",
            Event::DeadLettered { .. } => "dead-lettered",
            Event::Fault { .. } => "fault",
            Event::Replied { .. } => "replied",
        }
    }
}

/// A body as a reader wants to see it: text if it is short UTF-8, else its size.
pub(crate) fn show_body(message: &Message) -> String {
    let body = message.body();
    // Text only if it reads as text: an encoded struct is bytes.
    let text =
        std::str::from_utf8(body).ok().filter(|t| !t.chars().any(|c| c.is_control() && !c.is_whitespace()));
    match text.ok_or(()) {
        Ok(text) if text.len() <= 40 => format!("{text:?}"),
        Ok(text) => {
            let cut = (0..=40).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            format!("{:?}… ({} bytes)", &text[..cut], body.len())
        }
        Err(_) => format!("<{} bytes>", body.len()),
    }
}

impl fmt::Display for Event {
    /// One line, free of times and generated names where it can be, so that
    /// the traces of two runs of a deterministic test compare equal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Published { exchange, routing_key, message, queues, duplicates, outcome } => {
                write!(f, "published to '{exchange}' with key '{routing_key}' {}", show_body(message))?;
                match outcome {
                    PublishOutcome::Routed if queues.is_empty() => f.write_str(" → unroutable, dropped")?,
                    PublishOutcome::Routed => write!(f, " → {}", queues.join(", "))?,
                    PublishOutcome::Returned => f.write_str(" → unroutable, returned")?,
                    PublishOutcome::Rejected(full) => {
                        write!(f, " → {}; refused by full {}", queues.join(", "), full.join(", "))?
                    }
                    PublishOutcome::Refused(why) => write!(f, " → refused: {why}")?,
                }
                if !duplicates.is_empty() {
                    write!(f, " (duplicate in {})", duplicates.join(", "))?;
                }
                Ok(())
            }
            Event::Delivered { queue, consumer_tag, delivery_tag, redelivered, message } => {
                let to = consumer_tag.as_deref().unwrap_or("get");
                write!(f, "delivered from '{queue}' to {to} #{delivery_tag} {}", show_body(message))?;
                if *redelivered {
                    f.write_str(" (redelivered)")?;
                }
                Ok(())
            }
            Event::Settled { queue, consumer_tag, delivery_tag, outcome, message } => {
                let by = consumer_tag.as_deref().unwrap_or("get");
                let how = match outcome {
                    SettleOutcome::Ack => "acked".to_owned(),
                    SettleOutcome::Requeue => "nacked (requeue)".to_owned(),
                    SettleOutcome::RequeueAfter(d) => format!("nacked (requeue after {d:?})"),
                    SettleOutcome::Discard => "rejected".to_owned(),
                };
                write!(f, "{how} in '{queue}' by {by} #{delivery_tag} {}", show_body(message))
            }
            Event::DeadLettered { queue, reason, exchange, message } => match exchange {
                Some(dlx) => {
                    write!(f, "dead-lettered from '{queue}' ({reason}) to '{dlx}' {}", show_body(message))
                }
                None => write!(f, "dropped from '{queue}' ({reason}) {}", show_body(message)),
            },
            Event::Fault { queue, routing_key, action, message } => {
                write!(f, "fault: {action} entering '{queue}' (key '{routing_key}') {}", show_body(message))
            }
            Event::Replied { queue, correlation_id, delivered, message, .. } => {
                let id = correlation_id.as_deref().unwrap_or("-");
                let lost = if *delivered { "" } else { " (undeliverable)" };
                write!(f, "replied from '{queue}' to correlation id {id} {}{lost}", show_body(message))
            }
        }
    }
}

/// An observer: called with every event and its sequence number, on the
/// thread that caused it.
pub(crate) type ObserverFn = dyn Fn(u64, &Event) + Send + Sync;

/// The observers attached to a broker.
#[derive(Default)]
pub(crate) struct Observers {
    /// Whether any is attached: the one load every hook pays.
    active: AtomicBool,
    /// Sequence numbers, taken when a thing happens (a publish starts, a
    /// delivery is handed out), so that events reported by different
    /// threads sort into the order they happened in: a publish before its
    /// deliveries, though its own report comes after routing.
    seq: AtomicU64,
    next_id: AtomicU64,
    /// The observers, swapped whole on attach and detach: emitting only
    /// loads the list (no lock, no allocation per event).
    list: arc_swap::ArcSwap<Vec<(u64, Arc<ObserverFn>)>>,
    /// Serialises attach and detach.
    writers: Mutex<()>,
}

impl fmt::Debug for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observers").field("active", &self.is_active()).finish_non_exhaustive()
    }
}

impl Observers {
    /// Whether events should be built at all.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The sequence number of something happening now.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Hands `event`, which happened at `seq`, to every observer. The list
    /// is copied out first: an observer runs without the bus's locks and
    /// may attach or detach.
    #[cold]
    pub(crate) fn emit(&self, seq: u64, event: Event) {
        let list = self.list.load_full();
        for (_, observer) in list.iter() {
            observer(seq, &event);
        }
    }

    /// Emits the event `make` builds, now, if anything observes.
    #[inline]
    pub(crate) fn emit_now(&self, make: impl FnOnce() -> Event) {
        if self.is_active() {
            let seq = self.next_seq();
            self.emit(seq, make());
        }
    }

    /// Attaches an observer; returns its id for [`detach`](Self::detach).
    pub(crate) fn attach(&self, observer: Arc<ObserverFn>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _writer = self.writers.lock();
        let mut list = (**self.list.load()).clone();
        list.push((id, observer));
        self.list.store(Arc::new(list));
        self.active.store(true, Ordering::SeqCst);
        id
    }

    pub(crate) fn detach(&self, id: u64) {
        let (removed, old) = {
            let _writer = self.writers.lock();
            let mut list = (**self.list.load()).clone();
            let removed = list.iter().position(|(i, _)| *i == id).map(|at| list.remove(at));
            self.active.store(!list.is_empty(), Ordering::SeqCst);
            (removed, self.list.swap(Arc::new(list)))
        };
        // The observer (user code) is dropped outside the lock.
        drop((removed, old));
    }
}

/// A firehose tap: while it lives, its function sees every event of the
/// broker (see [`Broker::tap`](crate::Broker::tap)). Dropping it detaches.
#[must_use = "the tap is detached when this handle is dropped"]
pub struct Tap {
    pub(crate) observers: Arc<Observers>,
    pub(crate) id: u64,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap").field("id", &self.id).finish()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.observers.detach(self.id);
    }
}
