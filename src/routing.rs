//! The routing pass: the state of routing one message through the exchange
//! graph (where it went, what is left to visit, what it made leave other
//! queues), the sets that make each queue and exchange count once, and
//! sender-selected distribution (`CC` / `BCC`). `Vhost::route` drives
//! it; this module holds no lock and reaches no further up than a queue's
//! `enqueue`.

use crate::dead_letter::Letter;
use crate::exchange::Exchange;
use crate::faults::FaultAction;
use crate::hash::FastHashSet;
use crate::message::Message;
use crate::queue::{Enqueued, Envelope, PublishTiming, Queue};
use crate::sync::Arc;
use smallvec::SmallVec;

/// The state of routing one message: where it went and what is left.
pub(crate) struct RoutingPass<'a> {
    pub(crate) envelope: &'a Arc<Envelope>,
    /// The envelope's routing key, kept as the publisher's `&str`: reading
    /// it back from the envelope would re-check its UTF-8 at every exchange.
    pub(crate) routing_key: &'a str,
    /// The other keys it is routed with, all at once (`CC`/`BCC`).
    pub(crate) extra_keys: &'a [String],
    pub(crate) timing: PublishTiming<'a>,
    /// Queues a dead letter must not reach (a cycle).
    pub(crate) forbidden: &'a [String],
    pub(crate) seen_queues: SeenSet<32>,
    pub(crate) seen_exchanges: SeenSet<4>,
    pub(crate) pending: Vec<Arc<Exchange>>,
    /// Where it went.
    pub(crate) tally: Tally,
    /// Messages the enqueues made leave their queues, to dead-letter.
    pub(crate) letters: Vec<Letter>,
    /// The names of the queues reached, kept only for observers.
    pub(crate) names: Option<ReachedNames>,
    /// A batch's resolving walk: the queues the key reaches are collected
    /// here instead of being enqueued in (see `vhost::batch`).
    /// (A borrowed `Vec`: one word to initialise on every publish.)
    pub(crate) collected: Option<&'a mut Vec<Arc<Queue>>>,
    /// The walk met routing that reads more than the key (a headers
    /// exchange, a direct reply-to address): what it collected holds for
    /// this message only.
    pub(crate) reads_message: bool,
    /// The walk matched the key somewhere (a direct or topic exchange, the
    /// default exchange). Without it — fanout exchanges only — what it
    /// collected holds for every key.
    pub(crate) reads_key: bool,
}

/// Where one message went: counts, and the queues that refused it.
///
/// Three words: refusals are rare, so their names are boxed, made on the
/// first refusal. Every publish writes, moves and drops its tally (a batch
/// keeps one per message), and two empty `Vec`s were 48 of its 64 bytes.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) enqueued: usize,
    pub(crate) duplicates: usize,
    refusals: Option<Box<Refusals>>,
}

/// The queues that refused a message.
#[derive(Debug, Default)]
struct Refusals {
    /// Queues that refused it because they are full.
    rejected: Vec<String>,
    /// Durable queues whose store could not take it.
    store_failed: Vec<String>,
}

impl Tally {
    /// Counts what `queue` did with the message.
    #[inline]
    pub(crate) fn count(&mut self, outcome: Enqueued, queue: &Queue) {
        match outcome {
            Enqueued::Accepted => self.enqueued += 1,
            Enqueued::Duplicate => self.duplicates += 1,
            Enqueued::Rejected => self.refusals().rejected.push(queue.name.to_string()),
            Enqueued::StoreFailed => self.refusals().store_failed.push(queue.name.to_string()),
            Enqueued::Gone => {}
        }
    }

    #[cold]
    fn refusals(&mut self) -> &mut Refusals {
        self.refusals.get_or_insert_default()
    }

    /// Whether some queue has it (or already had it: a duplicate).
    pub(crate) fn reached(&self) -> bool {
        self.enqueued > 0 || self.duplicates > 0
    }

    /// The queues that refused it because they are full.
    pub(crate) fn rejected(&self) -> &[String] {
        self.refusals.as_ref().map_or(&[], |r| &r.rejected)
    }

    /// The durable queues whose store could not take it.
    pub(crate) fn store_failed(&self) -> &[String] {
        self.refusals.as_ref().map_or(&[], |r| &r.store_failed)
    }

    /// [`rejected`](Self::rejected), taken out.
    pub(crate) fn take_rejected(&mut self) -> Vec<String> {
        self.refusals.as_mut().map(|r| std::mem::take(&mut r.rejected)).unwrap_or_default()
    }

    /// [`store_failed`](Self::store_failed), taken out.
    pub(crate) fn take_store_failed(&mut self) -> Vec<String> {
        self.refusals.as_mut().map(|r| std::mem::take(&mut r.store_failed)).unwrap_or_default()
    }
}

/// Where a message went, by queue name, for observers.
#[derive(Debug, Default)]
pub(crate) struct ReachedNames {
    pub(crate) enqueued: Vec<String>,
    pub(crate) duplicates: Vec<String>,
}

impl<'a> RoutingPass<'a> {
    pub(crate) fn new(
        envelope: &'a Arc<Envelope>,
        routing_key: &'a str,
        timing: PublishTiming<'a>,
        forbidden: &'a [String],
    ) -> Self {
        RoutingPass {
            envelope,
            routing_key,
            extra_keys: &[],
            timing,
            forbidden,
            seen_queues: SeenSet::new(),
            seen_exchanges: SeenSet::new(),
            pending: Vec::new(),
            tally: Tally::default(),
            letters: Vec::new(),
            names: None,
            collected: None,
            reads_message: false,
            reads_key: false,
        }
    }

    /// Enqueues in `queue` unless this message already reached it.
    pub(crate) fn enqueue(&mut self, queue: &Arc<Queue>) {
        if !self.seen_queues.insert(queue.id) {
            return;
        }
        if !self.forbidden.is_empty() && self.forbidden.iter().any(|q| **q == *queue.name) {
            return;
        }
        if let Some(collected) = self.collected.as_deref_mut() {
            collected.push(Arc::clone(queue));
            return;
        }
        let outcome = if queue.context.faults.is_active() {
            match self.inject(queue) {
                Some(outcome) => outcome,
                None => return,
            }
        } else {
            queue.enqueue(self.envelope, &mut self.timing, &mut self.letters)
        };
        self.tally.count(outcome, queue);
        if let Some(names) = &mut self.names {
            match outcome {
                Enqueued::Accepted => names.enqueued.push(queue.name.to_string()),
                Enqueued::Duplicate => names.duplicates.push(queue.name.to_string()),
                Enqueued::Rejected | Enqueued::Gone | Enqueued::StoreFailed => {}
            }
        }
    }

    /// Enqueues under the broker's fault rules; `None` if nothing is left
    /// to count (the message was dropped).
    #[cold]
    fn inject(&mut self, queue: &Arc<Queue>) -> Option<Enqueued> {
        let Some(action) = queue.context.faults.decide(&queue.name, self.routing_key) else {
            return Some(queue.enqueue(self.envelope, &mut self.timing, &mut self.letters));
        };
        queue.context.observers.emit_now(|| crate::observe::Event::Fault {
            queue: queue.name.to_string(),
            routing_key: self.routing_key.to_owned(),
            action,
            message: self.envelope.message().clone(),
        });
        match action {
            // Counted as routed, as a message lost downstream would be.
            FaultAction::Drop => {
                self.tally.enqueued += 1;
                None
            }
            FaultAction::Duplicate => {
                let first = queue.enqueue(self.envelope, &mut self.timing, &mut self.letters);
                let _second = queue.enqueue(self.envelope, &mut self.timing, &mut self.letters);
                Some(first)
            }
            FaultAction::Delay(delay) => {
                let own = self.timing.delay;
                self.timing.delay = Some(own.unwrap_or_default().max(delay)).filter(|d| !d.is_zero());
                let outcome = queue.enqueue(self.envelope, &mut self.timing, &mut self.letters);
                self.timing.delay = own;
                Some(outcome)
            }
        }
    }

    /// Schedules `exchange` unless this message already went through it.
    pub(crate) fn visit(&mut self, exchange: &Arc<Exchange>) {
        if self.seen_exchanges.insert(exchange.id) {
            self.pending.push(Arc::clone(exchange));
        }
    }
}

/// The routing keys of sender-selected distribution: the strings of the
/// `CC` and `BCC` headers (arrays of routing keys), as RabbitMQ reads them.
/// `BCC` is taken out of the message, so no queue sees it. A `CC` or `BCC`
/// that is not an array is refused, as RabbitMQ refuses it
/// (`unacceptable_type_in_header`); entries that are not strings are skipped.
/// Called only when [`has_sender_selected_keys`] found one of them.
#[cold]
pub(crate) fn sender_selected_keys(message: &mut Message) -> Result<Vec<String>, (String, String)> {
    let Some(headers) = message.headers() else { return Ok(Vec::new()) };
    let keys = read_sender_selected_keys(headers)?;
    if headers.contains_key("BCC")
        && let Some(headers) = message.properties_mut().headers_mut().as_mut()
    {
        headers.remove("BCC");
    }
    Ok(keys)
}

/// The routing keys of `CC` and `BCC` in `headers`, without touching them:
/// what [`sender_selected_keys`] reads, and what `explain_route` follows.
/// An error names the header that is not an array, and why.
pub(crate) fn read_sender_selected_keys(
    headers: &crate::FieldTable,
) -> Result<Vec<String>, (String, String)> {
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match headers.get(name) {
            None => {}
            Some(crate::FieldValue::Array(values)) => {
                keys.extend(values.iter().filter_map(|v| v.as_str()).map(str::to_owned))
            }
            Some(other) => {
                return Err((
                    name.to_owned(),
                    format!(
                        "unacceptable_type_in_header: expected an array of routing keys, got {}",
                        crate::queue::describe(other)
                    ),
                ));
            }
        }
    }
    Ok(keys)
}

/// Whether a message carries `CC` or `BCC`: on every publish with headers,
/// so it compares lengths before bytes and allocates nothing.
#[inline]
pub(crate) fn has_sender_selected_keys(headers: &crate::FieldTable) -> bool {
    // Names are sorted by their bytes: if the first starts after 'C' (the
    // usual lowercase header), neither "BCC" nor "CC" can be there.
    let mut names = headers.iter().map(|(name, _)| name);
    if names.next().and_then(|first| first.as_bytes().first()).is_some_and(|b| *b > b'C') {
        return false;
    }
    headers.iter().any(|(name, _)| match name.len() {
        2 => name == "CC",
        3 => name == "BCC",
        _ => false,
    })
}

/// A set of ids for one routing pass: inline while it holds at most `N`,
/// the usual case; beyond, a hash set borrowed from a per-thread spare, so a
/// topic key reaching dozens of queues does not allocate either (after the
/// thread's first such publish). `N` is 32 for queues: a publish initialises
/// the inline array (64 slots cost a 512-byte memset on every publish),
/// while a topic key reaching ~20 queues spilled out of 16 into the hash
/// set (8% of a topic publish).
pub(crate) struct SeenSet<const N: usize> {
    /// The ids, while at most `N`: inline, and never zeroed (a
    /// `SmallVec` leaves its unused slots uninitialised), so making a set
    /// costs a few stores, not `N`.
    inline: SmallVec<[u64; N]>,
    /// Every id, once more than `N` were seen.
    spilled: Option<FastHashSet<u64>>,
}

thread_local! {
    /// The spare hash set for [`SeenSet`]s that outgrow their inline array.
    static SPARE_IDS: std::cell::Cell<Option<FastHashSet<u64>>> = const { std::cell::Cell::new(None) };
}

impl<const N: usize> SeenSet<N> {
    #[inline]
    pub(crate) fn new() -> Self {
        SeenSet { inline: SmallVec::new(), spilled: None }
    }

    /// True if `id` was not in the set.
    #[inline]
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        if let Some(spilled) = &mut self.spilled {
            return spilled.insert(id);
        }
        if self.inline.contains(&id) {
            return false;
        }
        if self.inline.len() == N {
            let mut spilled = SPARE_IDS.take().unwrap_or_default();
            spilled.clear();
            spilled.extend(self.inline.iter().copied());
            spilled.insert(id);
            self.spilled = Some(spilled);
        } else {
            self.inline.push(id);
        }
        true
    }
}

impl<const N: usize> Drop for SeenSet<N> {
    fn drop(&mut self) {
        if let Some(spilled) = self.spilled.take() {
            // `try_with`: during thread teardown the spare may be gone.
            let _ = SPARE_IDS.try_with(|spare| spare.set(Some(spilled)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_set_switches_to_hash_set_and_stays_exact() {
        let mut seen = SeenSet::<16>::new();
        for id in 0..100 {
            assert!(seen.insert(id));
        }
        for id in 0..100 {
            assert!(!seen.insert(id));
        }
    }
}
