//! Publishing a batch: every message passes the checks a single publish
//! passes, but the routing walk runs once per distinct routing key, and
//! each queue reached takes its share of the batch under one hold of its
//! lock, in batch order.
//!
//! Routing that reads more than the key (a headers exchange on the way, a
//! direct reply-to address, `CC`/`BCC` headers) is walked per message, in
//! its place in the batch: the messages before it are enqueued first, so
//! every queue still sees the batch in order. With observers or fault rules
//! active, each message takes the single-publish path (their events and
//! decisions are per message).

use std::hash::BuildHasher;

use crate::access::PublishGate;
use crate::dead_letter::Letter;
use crate::error::{PublishBatchError, PublishError};
use crate::exchange::Exchange;
use crate::hash::FastHashMap;
use crate::message::Message;
use crate::queue::{Address, Enqueued, Offer, PublishTiming, Queue};
use crate::routing::Tally;
use crate::sync::Arc;

use super::publish::{Prepared, PublishOptions, Stored};
use super::{ExchangeMap, Vhost};

/// What [`Connection::publish_batch`](crate::Connection::publish_batch) did
/// with the messages it published (those in
/// [`PublishBatchError::failed`] are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchRouted {
    messages: usize,
    queues: usize,
    duplicates: usize,
    unroutable: usize,
}

impl BatchRouted {
    /// How many messages were published (routed, or dropped as
    /// unroutable without `mandatory`).
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// How many enqueues they made, over all messages and queues.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// How many times a queue refused one as a duplicate `message_id`
    /// (see [`Routed::duplicates`](crate::Routed::duplicates)).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// How many reached no queue and were dropped (published without
    /// `mandatory`).
    pub fn unroutable(&self) -> usize {
        self.unroutable
    }

    fn count(&mut self, routed: crate::Routed) {
        self.messages += 1;
        self.queues += routed.queues();
        self.duplicates += routed.duplicates();
        if routed.queues() == 0 && routed.duplicates() == 0 {
            self.unroutable += 1;
        }
    }
}

/// The most pending entries a batch reserves before it has seen its
/// messages; a longer batch grows its buffer as it goes.
const PREALLOCATE_AT_MOST: usize = 4096;

/// A message of the batch waiting for its queues: its place in the batch,
/// its key, and the destinations its key resolved to.
struct Pending<'c, K> {
    index: usize,
    key: K,
    route: usize,
    offer: Offer<'c>,
    tally: Tally,
}

/// Each distinct key's route in a batch (`None`: it reads the message),
/// found without owning a copy of each key: their text goes into one
/// buffer and the map files each by its hash. (An owned key per distinct
/// key cost a batch of 64 distinct keys about 190 instructions a message.)
/// A hash two keys share is told apart by comparing the text; the second
/// key is then resolved every time rather than filed: correct, only
/// slower, and rare with 64-bit hashes.
#[derive(Default)]
struct KeyRoutes {
    text: String,
    /// Hash → where the key's text lies in `text`, and its route.
    by_hash: FastHashMap<u64, (usize, usize, Option<usize>)>,
}

impl KeyRoutes {
    fn hash(&self, key: &str) -> u64 {
        self.by_hash.hasher().hash_one(key)
    }

    /// The route filed for `key`, if any.
    fn get(&self, hash: u64, key: &str) -> Option<Option<usize>> {
        let &(start, end, route) = self.by_hash.get(&hash)?;
        (self.text.get(start..end) == Some(key)).then_some(route)
    }

    /// Files `key`'s route, unless another key holds its hash.
    fn insert(&mut self, hash: u64, key: &str, route: Option<usize>) {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.by_hash.entry(hash) {
            let start = self.text.len();
            self.text.push_str(key);
            entry.insert((start, self.text.len(), route));
        }
    }
}

/// The batch's running state.
struct Batch<'c, K> {
    routed: BatchRouted,
    failed: Vec<(usize, PublishError)>,
    /// Messages that reached a durable queue: their store position and the
    /// message, to hand back if the one sync at the end fails.
    durable: Vec<(usize, u64, Message, usize)>,
    letters: Vec<Letter>,
    pending: Vec<Pending<'c, K>>,
}

impl<K> Batch<'_, K> {
    fn settle(
        &mut self,
        index: usize,
        result: Result<crate::Routed, PublishError>,
        durable: Option<(u64, Message)>,
    ) {
        match result {
            Ok(routed) => {
                self.routed.count(routed);
                if let Some((lsn, message)) = durable {
                    self.durable.push((index, lsn, message, routed.queues()));
                }
            }
            Err(error) => self.failed.push((index, error)),
        }
    }
}

impl Vhost {
    /// Publishes `messages` (routing key, message) to `exchange`, in order.
    /// Taken straight from the caller's iterator: each key moves into its
    /// message's place in the batch, so the batch makes one buffer of its
    /// size, not three (buffers past glibc's thread cache cost about a
    /// thousand instructions each way).
    pub(crate) fn publish_batch<G: PublishGate + ?Sized, K: AsRef<str>>(
        &self,
        gate: &G,
        exchange: &str,
        messages: impl Iterator<Item = (K, Message)>,
        options: PublishOptions,
    ) -> Result<BatchRouted, PublishBatchError> {
        let exchanges = self.exchanges.load();
        let mut batch = Batch {
            routed: BatchRouted::default(),
            failed: Vec::new(),
            durable: Vec::new(),
            letters: Vec::new(),
            pending: Vec::new(),
        };
        let per_message = self.core.observers.is_active() || self.core.faults.is_active();
        match exchanges.get(exchange) {
            Some(start) if !per_message => {
                self.route_batch(gate, &exchanges, start, messages, options, &mut batch)
            }
            _ => {
                for (index, (key, message)) in messages.enumerate() {
                    let mut durable = None;
                    let result =
                        self.look_up_and_route(gate, exchange, key.as_ref(), message, options, &mut durable);
                    batch.settle(index, result, durable);
                }
            }
        }
        self.wait_durable(&mut batch);
        let Batch { routed, mut failed, .. } = batch;
        if failed.is_empty() {
            return Ok(routed);
        }
        failed.sort_by_key(|(index, _)| *index);
        Err(PublishBatchError { failed, routed })
    }

    /// The batch through exchange `start`: admitted one by one, routed once
    /// per distinct key, enqueued a queue at a time.
    #[allow(clippy::too_many_arguments)]
    fn route_batch<'c, G: PublishGate + ?Sized, K: AsRef<str>>(
        &'c self,
        gate: &G,
        exchanges: &ExchangeMap,
        start: &Exchange,
        messages: impl Iterator<Item = (K, Message)>,
        options: PublishOptions,
        batch: &mut Batch<'c, K>,
    ) {
        // Only this path holds messages pending, so only it reserves: the
        // iterator's own claim, bounded, since a lying size hint must not
        // make a huge (or impossible) allocation up front.
        batch.pending.reserve(messages.size_hint().0.min(PREALLOCATE_AT_MOST));
        let busy = self.core.activity.busy();
        let _publishing = self.core.store.as_ref().map(|store| store.syncer.publishing());
        // Each distinct key's destinations, or `None` where they depend on
        // the message; resolved on the key's first message.
        let mut routes: Vec<Vec<Arc<Queue>>> = Vec::new();
        // Each route's address, built once for all its messages' envelopes.
        let mut addresses: Vec<Address> = Vec::new();
        let mut resolved = KeyRoutes::default();
        for (index, (key, message)) in messages.enumerate() {
            let key_str = key.as_ref();
            let ttl = match self.admit(gate, &start.name, Some(start), key_str, &message) {
                Ok(ttl) => ttl,
                Err(refusal) => {
                    batch.failed.push((index, self.not_admitted(refusal, &start.name, key_str, message)));
                    continue;
                }
            };
            let mut message = message;
            let mut extra_keys = Vec::new();
            let delay = match self.prepare(start, &mut message, &mut extra_keys) {
                Ok(delay) => delay,
                Err(refusal) => {
                    batch.failed.push((index, self.refuse_prepared(start, key_str, refusal, message)));
                    continue;
                }
            };
            let prepared = Prepared { message, ttl, delay, extra_keys };
            let route = if !prepared.extra_keys.is_empty() {
                None
            } else if let Some(before) = batch.pending.last().filter(|p| p.key.as_ref() == key_str) {
                // A run of one key (the usual batch) skips hashing it.
                Some(before.route)
            } else {
                let hash = resolved.hash(key_str);
                match resolved.get(hash, key_str) {
                    Some(route) => route,
                    None => {
                        let route = self.resolve(exchanges, start, key_str, &prepared).map(|queues| {
                            routes.push(queues);
                            addresses.push(Address::shared(&start.name, key_str));
                            routes.len() - 1
                        });
                        resolved.insert(hash, key_str, route);
                        route
                    }
                }
            };
            match route {
                Some(route) => {
                    let Prepared { message, ttl, delay, .. } = prepared;
                    let fanout = routes[route].len() > 1;
                    let envelope = self.envelope_to(addresses[route].clone(), message, !fanout);
                    let mut timing = PublishTiming::new(&self.core.settings.clock, ttl, delay);
                    timing.fanout = fanout;
                    batch.pending.push(Pending {
                        index,
                        key,
                        route,
                        offer: Offer {
                            envelope: Some(envelope),
                            timing,
                            outcome: Enqueued::Gone,
                            sole: !fanout,
                        },
                        tally: Tally::default(),
                    });
                }
                None => {
                    // Everything before it first, so that queues see the batch in order.
                    self.enqueue_pending(start, &routes, options, busy.index(), batch);
                    let mut durable = None;
                    let result = self.route_prepared(
                        Some(exchanges),
                        start,
                        key_str,
                        prepared,
                        options,
                        busy.index(),
                        &mut durable,
                    );
                    batch.settle(index, result, durable);
                }
            }
        }
        self.enqueue_pending(start, &routes, options, busy.index(), batch);
    }

    /// The queues `key` reaches from `start`, walked once with the batch's
    /// first message of that key; `None` if the walk read more than the key.
    fn resolve(
        &self,
        exchanges: &ExchangeMap,
        start: &Exchange,
        key: &str,
        prepared: &Prepared,
    ) -> Option<Vec<Arc<Queue>>> {
        let probe = self.envelope(start, key, prepared.message.clone(), false);
        let mut queues = Vec::new();
        let reads = self.collect(Some(exchanges), start, key, &probe, &mut queues);
        if reads.message { None } else { Some(queues) }
    }

    /// Enqueues the pending messages, a queue at a time (each under one
    /// hold of its lock, in batch order), then settles each message.
    fn enqueue_pending<K: AsRef<str>>(
        &self,
        start: &Exchange,
        routes: &[Vec<Arc<Queue>>],
        options: PublishOptions,
        stripe: usize,
        batch: &mut Batch<'_, K>,
    ) {
        if batch.pending.is_empty() {
            return;
        }
        let pending = &mut batch.pending;
        // Each queue once, in the order first reached, with the routes
        // that lead to it.
        let mut queues: Vec<(&Arc<Queue>, Vec<usize>)> = Vec::new();
        let mut position: FastHashMap<u64, usize> = FastHashMap::default();
        let mut seen_routes: Vec<bool> = vec![false; routes.len()];
        for p in pending.iter() {
            if std::mem::replace(&mut seen_routes[p.route], true) {
                continue;
            }
            for queue in &routes[p.route] {
                let at = *position.entry(queue.id).or_insert_with(|| {
                    queues.push((queue, Vec::new()));
                    queues.len() - 1
                });
                queues[at].1.push(p.route);
            }
        }
        let distinct_routes = seen_routes.iter().filter(|s| **s).count();
        for (queue, via) in queues {
            // Reached by every route of the batch: all of it, no filtering.
            let all = via.len() == distinct_routes;
            let offers = pending.iter_mut().filter(|p| all || via.contains(&p.route));
            let mut offers: Vec<&mut Pending<'_, K>> = offers.collect();
            queue.enqueue_batch(offers.iter_mut().map(|p| &mut p.offer), &mut batch.letters);
            for p in offers {
                p.tally.count(p.offer.outcome, queue);
            }
        }
        if !batch.letters.is_empty() {
            crate::dead_letter::bury(std::mem::take(&mut batch.letters));
        }
        // Taken out and put back empty: its buffer serves the rest of the batch.
        let mut settled = std::mem::take(pending);
        // Counted on the exchange once for the lot, not once per message.
        let mut reached = 0;
        let count = settled.len() as u64;
        for p in settled.drain(..) {
            let Pending { index, key, offer, mut tally, .. } = p;
            reached += u64::from(tally.reached());
            let Some(envelope) = offer.envelope else {
                // Its sole queue took it as it is: accepted, nothing stored,
                // nothing to hand back.
                batch.settle(index, Ok(crate::Routed::of(&tally)), None);
                continue;
            };
            let stored = Stored { lsn: offer.timing.durable_lsn, error: offer.timing.store_error };
            let mut durable = None;
            let key = key.as_ref();
            let result =
                self.outcome_uncounted(start, key, envelope, &mut tally, stored, options, &mut durable);
            batch.settle(index, result, durable);
        }
        if self.core.settings.statistics {
            for (routed, n) in [(true, reached), (false, count - reached)] {
                if n > 0 {
                    start.counters.count(stripe, routed, n);
                }
            }
        }
        batch.pending = settled;
    }

    /// One wait for the whole batch's persistent copies; a failed sync
    /// hands each of them back.
    fn wait_durable<K>(&self, batch: &mut Batch<'_, K>) {
        let Some(lsn) = batch.durable.iter().map(|(_, lsn, ..)| *lsn).max() else { return };
        let Some(store) = self.core.store.as_ref() else { return };
        if let Err(error) = store.syncer.wait(store, lsn) {
            for (index, _, message, routed) in batch.durable.drain(..) {
                batch.routed.messages -= 1;
                batch.failed.push((
                    index,
                    PublishError::StoreFailed {
                        queues: Vec::new(),
                        routed,
                        error: error.clone(),
                        message: Box::new(message),
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRoutes;

    #[test]
    fn key_routes_tell_keys_apart_by_their_text_and_never_file_a_shared_hash_twice() {
        let mut routes = KeyRoutes::default();
        let a = routes.hash("orders.eu");
        assert_eq!(routes.get(a, "orders.eu"), None);
        routes.insert(a, "orders.eu", Some(0));
        assert_eq!(routes.get(a, "orders.eu"), Some(Some(0)));
        let b = routes.hash("orders.us");
        routes.insert(b, "orders.us", None);
        assert_eq!(routes.get(b, "orders.us"), Some(None), "a route that reads the message is filed too");
        // A second key under a taken hash (forged here: foldhash makes it rare)
        // is told apart by its text and is not filed over the first.
        assert_eq!(routes.get(a, "orders.uk"), None);
        routes.insert(a, "orders.uk", Some(7));
        assert_eq!(routes.get(a, "orders.uk"), None);
        assert_eq!(routes.get(a, "orders.eu"), Some(Some(0)));
        assert_eq!(routes.text, "orders.euorders.us");
    }
}
