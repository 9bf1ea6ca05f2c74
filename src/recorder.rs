//! The recorder: a test's record of what the bus did, and assertions over
//! it that fail by listing what *was* seen, the closest candidates first.

use std::fmt::Write as _;

use crate::death::DeathReason;
use crate::exchange::topic::pattern_matches;
use crate::message::Message;
use crate::observe::{Event, ObserverFn, Observers, PublishOutcome, SettleOutcome, Tap};
use crate::similar::distance;
use crate::sync::{Arc, Mutex};

/// How many candidates a failed assertion lists.
const SHOWN: usize = 10;

/// Captures, in order, everything a broker does while it is attached:
/// publishes (exchange, key, properties, body, which queues they reached or
/// why they reached none), deliveries, acks, nacks and rejects, dead
/// letters (with their reason), expiries, returns and RPC replies. Created
/// by [`Broker::record`](crate::Broker::record); dropping it detaches it. Costs nothing while no
/// recorder (or tap) is attached.
///
/// Assertions panic with a message listing what was seen instead, the
/// closest candidates first, and return the matching message so its body
/// can be checked or decoded:
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Broker, DeathReason, ExchangeKind, FieldTable, Message, OnError, QueueOptions, WorkerOptions};
///
/// let broker = Broker::new();
/// let conn = broker.connect();
/// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
/// conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())?;
/// conn.declare_queue("billing", QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() })?;
/// conn.declare_queue("parked", QueueOptions::default())?;
/// conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
/// conn.bind_queue("parked", "dlx", "", FieldTable::new())?;
/// let options = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
/// let _billing = conn.worker("billing", options, |order| match order.body().as_ref() {
///     b"free lunch" => Err("refused"),
///     _ => Ok(()),
/// })?;
///
/// let recorder = broker.record();
/// conn.publish("orders", "order.eu.created", Message::new("order 42"))?;
/// conn.publish("orders", "order.us.created", Message::new("free lunch"))?;
/// broker.settle_ignoring_unconsumed(Duration::from_secs(10))?;
///
/// let order = recorder.assert_published("orders", "order.*.created");
/// assert_eq!(order.body().as_ref(), b"order 42");
/// recorder.assert_acked("billing");
/// let refused = recorder.assert_dead_lettered("billing", DeathReason::Rejected);
/// assert_eq!(refused.body().as_ref(), b"free lunch");
/// recorder.assert_none_published("orders", "order.*.cancelled");
/// assert_eq!(recorder.count_published("orders", "order.#"), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the recorder stops recording when dropped"]
pub struct Recorder {
    events: Arc<Mutex<Vec<(u64, Event)>>>,
    _tap: Tap,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("events", &self.events.lock().len()).finish()
    }
}

impl Recorder {
    pub(crate) fn attach(observers: &Arc<Observers>) -> Recorder {
        let events: Arc<Mutex<Vec<(u64, Event)>>> = Arc::default();
        let sink = Arc::clone(&events);
        let observer: Arc<ObserverFn> = Arc::new(move |seq, event: &Event| {
            sink.lock().push((seq, event.clone()));
        });
        let observers = Arc::clone(observers);
        let id = observers.attach(observer);
        Recorder { events, _tap: Tap { observers, id } }
    }

    /// Everything recorded so far, in the order it happened: by the moment
    /// each thing happened (a publish before the deliveries it caused, even
    /// when another thread reported them first).
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().clone();
        events.sort_by_key(|(seq, _)| *seq);
        events.into_iter().map(|(_, event)| event).collect()
    }

    /// The record as lines of text, one per event (see `Event`'s
    /// `Display`): what a deterministic test compares between runs, and
    /// what a failing test prints.
    pub fn trace(&self) -> Vec<String> {
        self.events().iter().map(ToString::to_string).collect()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        self.events.lock().clear();
    }

    /// The messages published to `exchange` with a routing key matching
    /// `pattern` (topic syntax: `*` one word, `#` any number; a plain key
    /// matches itself), in order.
    pub fn published(&self, exchange: &str, pattern: &str) -> Vec<Message> {
        self.events()
            .into_iter()
            .filter(|e| is_publish(e, exchange, pattern))
            .map(|e| e.message().clone())
            .collect()
    }

    /// How many messages were published to `exchange` with a key matching `pattern`.
    pub fn count_published(&self, exchange: &str, pattern: &str) -> usize {
        self.events().iter().filter(|e| is_publish(e, exchange, pattern)).count()
    }

    /// The bodies of the messages published to `exchange` with a key
    /// matching `pattern`, decoded by their content type (see
    /// [`Message::decode`]).
    ///
    /// # Errors
    ///
    /// The first [`DecodeError`](crate::DecodeError).
    pub fn decode_published<T: serde::de::DeserializeOwned>(
        &self,
        exchange: &str,
        pattern: &str,
    ) -> Result<Vec<T>, crate::DecodeError> {
        self.published(exchange, pattern).iter().map(Message::decode).collect()
    }

    /// Asserts that a message was published to `exchange` with a key
    /// matching `pattern`; returns the first.
    ///
    /// # Panics
    ///
    /// If none was, listing the publishes seen, closest first.
    #[track_caller]
    pub fn assert_published(&self, exchange: &str, pattern: &str) -> Message {
        self.expect(
            &format!("a publish to '{exchange}' with a key matching '{pattern}'"),
            |e| is_publish(e, exchange, pattern),
            |e| publish_distance(e, exchange, pattern),
        )
    }

    /// Asserts that exactly `times` messages were published to `exchange`
    /// with a key matching `pattern`; returns them.
    ///
    /// # Panics
    ///
    /// If the count differs, listing the publishes seen, closest first.
    #[track_caller]
    pub fn assert_published_times(&self, exchange: &str, pattern: &str, times: usize) -> Vec<Message> {
        let found = self.published(exchange, pattern);
        if found.len() != times {
            let what = format!(
                "expected {times} publish(es) to '{exchange}' with a key matching '{pattern}', found {}",
                found.len()
            );
            self.fail(&what, |e| publish_distance(e, exchange, pattern));
        }
        found
    }

    /// Asserts that no message was published to `exchange` with a key
    /// matching `pattern`.
    ///
    /// # Panics
    ///
    /// If one was, listing those that were.
    #[track_caller]
    pub fn assert_none_published(&self, exchange: &str, pattern: &str) {
        let events = self.events();
        let found: Vec<&Event> = events.iter().filter(|e| is_publish(e, exchange, pattern)).collect();
        if !found.is_empty() {
            let mut text = format!(
                "expected no publish to '{exchange}' with a key matching '{pattern}', but saw {}:",
                found.len()
            );
            for event in found.iter().take(SHOWN) {
                let _ = write!(text, "\n  - {event}");
            }
            panic!("{text}");
        }
    }

    /// Asserts that a publish reached queue `queue`; returns the first such message.
    ///
    /// # Panics
    ///
    /// If none did, listing the publishes seen, closest first.
    #[track_caller]
    pub fn assert_routed_to(&self, queue: &str) -> Message {
        self.expect(
            &format!("a publish routed to queue '{queue}'"),
            |e| matches!(e, Event::Published { queues, .. } if queues.iter().any(|q| q == queue)),
            |e| match e {
                Event::Published { queues, .. } => {
                    queues.iter().map(|q| distance(q, queue)).min().unwrap_or(usize::MAX / 2)
                }
                _ => usize::MAX,
            },
        )
    }

    /// Asserts that a message published to `exchange` with a key matching
    /// `pattern` reached no queue (dropped, or returned if `mandatory`).
    ///
    /// # Panics
    ///
    /// If none did, listing the publishes seen, closest first.
    #[track_caller]
    pub fn assert_unroutable(&self, exchange: &str, pattern: &str) -> Message {
        self.expect(
            &format!("an unroutable publish to '{exchange}' with a key matching '{pattern}'"),
            |e| {
                is_publish(e, exchange, pattern)
                    && matches!(e, Event::Published { queues, duplicates, .. } if queues.is_empty() && duplicates.is_empty())
            },
            |e| publish_distance(e, exchange, pattern),
        )
    }

    /// Asserts that a `mandatory` message published to `exchange` with a key
    /// matching `pattern` was returned (AMQP's basic.return).
    ///
    /// # Panics
    ///
    /// If none was, listing the publishes seen, closest first.
    #[track_caller]
    pub fn assert_returned(&self, exchange: &str, pattern: &str) -> Message {
        self.expect(
            &format!("a returned publish to '{exchange}' with a key matching '{pattern}'"),
            |e| {
                is_publish(e, exchange, pattern)
                    && matches!(e, Event::Published { outcome: PublishOutcome::Returned, .. })
            },
            |e| publish_distance(e, exchange, pattern),
        )
    }

    /// Asserts that a message was delivered from `queue` (to a consumer or `get`).
    ///
    /// # Panics
    ///
    /// If none was, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_delivered(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "a delivery", |e| matches!(e, Event::Delivered { .. }))
    }

    /// Asserts that a delivery from `queue` was acknowledged.
    ///
    /// # Panics
    ///
    /// If none was, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_acked(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "an ack", |e| settled_as(e, |o| o == SettleOutcome::Ack))
    }

    /// Asserts that a delivery from `queue` was nacked or rejected *with*
    /// requeue (or with a delayed requeue).
    ///
    /// # Panics
    ///
    /// If none was, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_nacked(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "a nack with requeue", |e| {
            settled_as(e, |o| matches!(o, SettleOutcome::Requeue | SettleOutcome::RequeueAfter(_)))
        })
    }

    /// Asserts that a delivery from `queue` was nacked or rejected
    /// *without* requeue.
    ///
    /// # Panics
    ///
    /// If none was, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_rejected(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "a reject without requeue", |e| {
            settled_as(e, |o| o == SettleOutcome::Discard)
        })
    }

    /// Asserts that a message left `queue` for `reason` and reached a
    /// queue through its dead-letter exchange.
    ///
    /// # Panics
    ///
    /// If none did, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_dead_lettered(&self, queue: &str, reason: DeathReason) -> Message {
        self.expect_in_queue(
            queue,
            &format!("a dead letter ({reason})"),
            |e| matches!(e, Event::DeadLettered { reason: r, exchange: Some(_), .. } if *r == reason),
        )
    }

    /// Asserts that a message left `queue` for `reason` and was dropped: no
    /// dead-letter exchange, or one that routed it nowhere.
    ///
    /// # Panics
    ///
    /// If none did, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_dropped(&self, queue: &str, reason: DeathReason) -> Message {
        self.expect_in_queue(
            queue,
            &format!("a message dropped ({reason})"),
            |e| matches!(e, Event::DeadLettered { reason: r, exchange: None, .. } if *r == reason),
        )
    }

    /// Asserts that a message expired in `queue` (dead-lettered or dropped).
    ///
    /// # Panics
    ///
    /// If none did, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_expired(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "an expiry", |e| {
            matches!(e, Event::DeadLettered { reason: DeathReason::Expired, .. })
        })
    }

    /// Asserts that the RPC server on `queue` replied to a request.
    ///
    /// # Panics
    ///
    /// If it did not, listing what was seen, closest first.
    #[track_caller]
    pub fn assert_replied(&self, queue: &str) -> Message {
        self.expect_in_queue(queue, "a reply", |e| matches!(e, Event::Replied { .. }))
    }

    #[track_caller]
    fn expect_in_queue(&self, queue: &str, what: &str, kind: impl Fn(&Event) -> bool) -> Message {
        self.expect(
            &format!("{what} in queue '{queue}'"),
            |e| kind(e) && event_queue(e) == Some(queue),
            |e| {
                // The right kind in the wrong queue first, then anything in this queue.
                let queue_distance = event_queue(e).map_or(usize::MAX / 4, |q| distance(q, queue));
                if kind(e) { queue_distance } else { queue_distance.saturating_add(1000) }
            },
        )
    }

    #[track_caller]
    fn expect(
        &self,
        what: &str,
        wanted: impl Fn(&Event) -> bool,
        closeness: impl Fn(&Event) -> usize,
    ) -> Message {
        let events = self.events();
        match events.iter().find(|e| wanted(e)) {
            Some(event) => event.message().clone(),
            None => self.fail(&format!("expected {what}"), closeness),
        }
    }

    #[track_caller]
    fn fail(&self, what: &str, closeness: impl Fn(&Event) -> usize) -> ! {
        let events = self.events();
        let mut ranked: Vec<(usize, usize, &Event)> =
            events.iter().enumerate().map(|(i, e)| (closeness(e), i, e)).collect();
        ranked.sort_by_key(|(score, i, _)| (*score, *i));
        let mut text = format!("{what}; ");
        if events.is_empty() {
            text.push_str("nothing was recorded");
        } else {
            let _ = write!(text, "saw {} event(s), closest first:", events.len());
            for (_, _, event) in ranked.iter().take(SHOWN) {
                let _ = write!(text, "\n  - {event}");
            }
            if events.len() > SHOWN {
                let _ = write!(text, "\n  … and {} more", events.len() - SHOWN);
            }
        }
        panic!("{text}");
    }
}

fn is_publish(event: &Event, exchange: &str, pattern: &str) -> bool {
    matches!(event, Event::Published { exchange: e, routing_key, outcome, .. }
        if e == exchange && pattern_matches(pattern, routing_key) && !matches!(outcome, PublishOutcome::Refused(_)))
}

fn settled_as(event: &Event, outcome: impl Fn(SettleOutcome) -> bool) -> bool {
    matches!(event, Event::Settled { outcome: o, .. } if outcome(*o))
}

fn event_queue(event: &Event) -> Option<&str> {
    match event {
        Event::Delivered { queue, .. }
        | Event::Settled { queue, .. }
        | Event::DeadLettered { queue, .. }
        | Event::Fault { queue, .. }
        | Event::Replied { queue, .. } => Some(queue),
        Event::Published { .. } => None,
    }
}

/// How far a publish is from the one wanted: another exchange counts more
/// than any key difference; other events come last.
fn publish_distance(event: &Event, exchange: &str, pattern: &str) -> usize {
    match event {
        Event::Published { exchange: e, routing_key, .. } => {
            let key =
                if pattern_matches(pattern, routing_key) { 0 } else { 1 + distance(routing_key, pattern) };
            key + if e == exchange { 0 } else { 1000 }
        }
        _ => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("billing", "billing"), 0);
        assert_eq!(distance("biling", "billing"), 1);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn topic_patterns_match_word_by_word() {
        assert!(pattern_matches("order.*.created", "order.eu.created"));
        assert!(!pattern_matches("order.*.created", "order.created"));
        assert!(pattern_matches("order.#", "order"));
        assert!(pattern_matches("#", ""));
        assert!(!pattern_matches("*", ""));
        assert!(pattern_matches("#.created", "a.b.created"));
        assert!(pattern_matches("plain", "plain"));
    }
}
