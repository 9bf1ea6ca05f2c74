//! Dead-lettering: republishing a message that left a queue without being
//! consumed (rejected, expired, dropped by a length limit, past the delivery
//! limit) to the queue's dead-letter exchange, with RabbitMQ's `x-death`
//! history.
//!
//! Dead letters are collected under a queue's lock and routed here after it
//! is released. Routing a dead letter may make other messages dead letters
//! (a full queue dropping its head); they join the same work list rather
//! than recursing, so chains of any length run in constant stack.

use std::collections::VecDeque;
use std::time::UNIX_EPOCH;

use crate::death::DeathReason;
use crate::field::{FieldTable, FieldValue};
use crate::message::Message;
use crate::observe::Event;
use crate::queue::{Queue, QueuedMessage};
use crate::sync::Arc;

/// A message leaving `queue` for `reason`.
#[derive(Debug)]
pub(crate) struct Letter {
    queue: Arc<Queue>,
    msg: QueuedMessage,
    reason: DeathReason,
    /// Headers to add to the dead letter (a worker's `x-exception`).
    annotations: Option<Box<FieldTable>>,
}

impl Letter {
    /// A letter already counted in flight by its queue (see
    /// [`crate::settle`]); it ends the count when dropped, after routing.
    pub(crate) fn new(queue: &Arc<Queue>, msg: QueuedMessage, reason: DeathReason) -> Self {
        Letter { queue: Arc::clone(queue), msg, reason, annotations: None }
    }

    /// A letter that adds `annotations` to the dead letter's headers.
    pub(crate) fn annotated(
        queue: &Arc<Queue>,
        msg: QueuedMessage,
        reason: DeathReason,
        annotations: FieldTable,
    ) -> Self {
        Letter { queue: Arc::clone(queue), msg, reason, annotations: Some(Box::new(annotations)) }
    }
}

impl Drop for Letter {
    fn drop(&mut self) {
        self.queue.context.activity.end(1);
    }
}

/// Dead-letters every letter, and those they cause, in order.
pub(crate) fn bury(letters: Vec<Letter>) {
    let mut work: VecDeque<Letter> = letters.into();
    while let Some(mut letter) = work.pop_front() {
        if !letter.msg.page_in() {
            // A paged-out body that cannot be read back (counted by the
            // store): nothing to dead-letter.
            letter.queue.count_dead_letter(letter.reason, false, true);
            continue;
        }
        let queue = &letter.queue;
        let reason = letter.reason;
        let observers = &queue.context.observers;
        let seq = observers.is_active().then(|| observers.next_seq());
        let report = |exchange: Option<&str>| {
            crate::trace::dead_lettered(
                &queue.name,
                reason.as_str(),
                exchange,
                letter.msg.envelope.message(),
            );
            if let Some(seq) = seq {
                observers.emit(
                    seq,
                    Event::DeadLettered {
                        queue: queue.name.to_string(),
                        reason,
                        exchange: exchange.map(str::to_owned),
                        message: letter.msg.envelope.message().clone(),
                    },
                );
            }
        };
        let Some(dlx) = queue.policy.dead_letter_exchange.as_deref() else {
            queue.count_dead_letter(reason, false, false);
            report(None);
            continue;
        };
        let Some(broker) = queue.context.broker.upgrade() else {
            queue.count_dead_letter(reason, false, true);
            report(None);
            continue;
        };
        let envelope = &letter.msg.envelope;
        let now = queue.context.clock.system_time();
        let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut message = dead_letter_message(envelope.message(), reason, &queue.name, envelope, seconds);
        if let Some(annotations) = &letter.annotations
            && let Some(headers) = message.properties_mut().headers_mut().as_mut()
        {
            for (name, value) in annotations.iter() {
                headers.insert(name, value.clone());
            }
        }
        let forbidden = cycle_queues(&message, reason);
        let (key, cc) = match queue.policy.dead_letter_routing_key.as_deref() {
            Some(key) => (key, Vec::new()),
            // Its original routing keys: the one it was published with and
            // its CC keys, as RabbitMQ re-routes it.
            None => (envelope.routing_key(), cc_keys(&message)),
        };
        let routed = broker.route_dead_letter(dlx, key, message, &cc, &forbidden, &mut work);
        queue.count_dead_letter(reason, routed, !routed);
        report(routed.then_some(dlx));
    }
}

/// The message as republished: `expiration` removed (kept as
/// `original-expiration`), `x-death` updated, `x-first-death-*` set once.
fn dead_letter_message(
    original: &Message,
    reason: DeathReason,
    queue: &str,
    envelope: &crate::queue::Envelope,
    time: u64,
) -> Message {
    let mut message = original.clone();
    message.clear_delay();
    let properties = message.properties_mut();
    let expiration = properties.expiration().map(str::to_owned);
    properties.clear_expiration();
    let headers = properties.headers_mut().get_or_insert_with(FieldTable::new);
    // Our own bookkeeping header belongs to the queue the message leaves.
    headers.remove("x-delivery-count");

    let mut deaths: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| {
        d.as_table().is_some_and(|t| {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        })
    });
    let entry = match same.map(|i| deaths.remove(i)) {
        Some(FieldValue::Table(mut entry)) => {
            // The header came from a publisher: untrusted. A count that is
            // not a sane integer restarts at 0; the sum saturates.
            let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0).max(0);
            entry.insert("count", FieldValue::I64(count.saturating_add(1)));
            entry
        }
        _ => {
            let mut entry = FieldTable::new()
                .with("count", FieldValue::I64(1))
                .with("reason", reason.as_str())
                .with("queue", queue)
                .with("time", FieldValue::Timestamp(time))
                .with("exchange", envelope.exchange())
                .with("routing-keys", routing_keys(original, envelope.routing_key()));
            if let Some(expiration) = expiration {
                entry.insert("original-expiration", expiration);
            }
            entry
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", deaths);
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason", reason.as_str());
        headers.insert("x-first-death-queue", queue);
        headers.insert("x-first-death-exchange", envelope.exchange());
    }
    message
}

/// The string `CC` keys of a message (sender-selected distribution).
fn cc_keys(message: &Message) -> Vec<String> {
    message
        .header("CC")
        .and_then(FieldValue::as_array)
        .map(|cc| cc.iter().filter_map(FieldValue::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `routing-keys` of an `x-death` entry: the key it was published with,
/// then its `CC` keys (sender-selected distribution; `BCC` never reaches a
/// queue), as RabbitMQ records them.
fn routing_keys(message: &Message, routing_key: &str) -> Vec<FieldValue> {
    std::iter::once(routing_key.to_owned()).chain(cc_keys(message)).map(FieldValue::from).collect()
}

/// The queues this dead letter must not reach: those it already died in
/// with no rejection since (RabbitMQ's cycle detection). A message that was
/// rejected somewhere on the way was seen by a consumer, so it is not an
/// endless automatic loop.
fn cycle_queues(message: &Message, reason: DeathReason) -> Vec<String> {
    if reason == DeathReason::Rejected {
        return Vec::new();
    }
    let Some(deaths) = message.header("x-death").and_then(FieldValue::as_array) else {
        return Vec::new();
    };
    let mut queues = Vec::new();
    for death in deaths.iter().filter_map(FieldValue::as_table) {
        if death.get("reason").and_then(FieldValue::as_str) == Some(DeathReason::Rejected.as_str()) {
            break;
        }
        if let Some(queue) = death.get("queue").and_then(FieldValue::as_str) {
            queues.push(queue.to_owned());
        }
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Envelope;

    fn deaths(message: &Message) -> Vec<(String, String, i64)> {
        message
            .header("x-death")
            .and_then(FieldValue::as_array)
            .unwrap()
            .iter()
            .map(|d| {
                let t = d.as_table().unwrap();
                let s = |k: &str| t.get(k).and_then(FieldValue::as_str).unwrap().to_owned();
                (s("queue"), s("reason"), t.get("count").and_then(FieldValue::as_i64).unwrap())
            })
            .collect()
    }

    #[test]
    fn dying_again_in_the_same_queue_for_the_same_reason_counts_up_and_moves_to_the_front() {
        let env = Envelope::new("orders", "new", Message::new("m"));
        let once = dead_letter_message(env.message(), DeathReason::Rejected, "work", &env, 1);
        let env2 = Envelope::new("retry-x", "new", once);
        let twice = dead_letter_message(env2.message(), DeathReason::Expired, "retry", &env2, 2);
        let env3 = Envelope::new("work-x", "new", twice);
        let thrice = dead_letter_message(env3.message(), DeathReason::Rejected, "work", &env3, 3);
        assert_eq!(
            deaths(&thrice),
            [("work".into(), "rejected".into(), 2), ("retry".into(), "expired".into(), 1)]
        );
        assert_eq!(thrice.header("x-first-death-queue").and_then(FieldValue::as_str), Some("work"));
        assert_eq!(thrice.header("x-first-death-exchange").and_then(FieldValue::as_str), Some("orders"));
    }

    #[test]
    fn a_cycle_is_only_the_queues_died_in_since_the_last_rejection() {
        let env = Envelope::new("", "a", Message::new("m"));
        let rejected = dead_letter_message(env.message(), DeathReason::Rejected, "a", &env, 1);
        let env = Envelope::new("", "b", rejected);
        let expired = dead_letter_message(env.message(), DeathReason::Expired, "b", &env, 2);
        assert_eq!(cycle_queues(&expired, DeathReason::Expired), ["b"]);
        assert!(cycle_queues(&expired, DeathReason::Rejected).is_empty());
    }

    #[test]
    fn the_expiration_moves_to_original_expiration() {
        let env =
            Envelope::new("", "q", Message::new("m").with_expiration(std::time::Duration::from_secs(5)));
        let dead = dead_letter_message(env.message(), DeathReason::Expired, "q", &env, 1);
        assert_eq!(dead.properties().expiration(), None);
        let entry = dead.header("x-death").and_then(FieldValue::as_array).unwrap()[0].as_table().unwrap();
        assert_eq!(entry.get("original-expiration").and_then(FieldValue::as_str), Some("5000"));
    }
}
