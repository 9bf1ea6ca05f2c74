//! Cached routes: the queues a publisher's recent routing keys reached, so
//! that a key published again skips the walk through the exchange graph
//! (the name lookups, the routing tables, a topic trie, the sets that make
//! each queue count once) and goes straight to the queues' enqueues.
//!
//! Each [`Publisher`](crate::Publisher) and each connection (for publishes
//! by exchange name) has a [`RouteCache`] of its recent (exchange, key)
//! routes: eight at first, more for a publisher that uses more keys.
//!
//! **When a route holds.** A route is the list of distinct queues a walk
//! reached, in the walk's order, recorded with the virtual host's topology
//! epoch. Every store of what routing reads — the exchange map, the queue
//! map, any exchange's routing table — bumps the epoch after the store, and
//! a publish reads the epoch before it looks a route up (or, on a miss,
//! before it walks). A publish that reads the old epoch while a change is
//! being stored is ordered before that change, exactly as a walk that loaded
//! the old snapshot is; one that reads the new epoch sees the new snapshots
//! (acquire/release on the epoch). A queue deleted meanwhile refuses the
//! enqueue under its lock ([`Enqueued::Gone`](crate::queue::Enqueued::Gone)), as it does for a walk.
//!
//! **What is never cached.** A route that reads more than the exchange and
//! the key — a headers exchange on the way, a direct reply-to address,
//! whose endpoint comes and goes with its connection — is recorded as
//! "walk it": the message takes the full walk every time (a reply goes
//! straight to the endpoint registered for its address, looked up on each
//! publish, which is the only step of its walk that finds anything). A
//! message with
//! `CC`/`BCC` keys takes the full walk. With observers or fault rules
//! active every publish takes the full walk (their events and decisions are
//! per queue reached).
//!
//! **Growing.** A cache starts as one set of [`WAYS`] routes, scanned
//! whole. A publisher that uses more keys than that replaces live routes;
//! once it has replaced as many as the cache holds, or its hit rate falls
//! below about one lookup in five, the cache doubles its sets (emptied: the
//! routes refill as they are published again), each key's routes living in
//! the set its hash picks, up to [`MAX_SETS`] sets (2,048 routes). Routing
//! keys are often many — a key per tenant, per region, per entity type —
//! and a publisher cycling through 1,024 of them walked every publish
//! while the cache held eight: through a direct exchange, publishing alone
//! ran 2.7–3.1 M/s walking against 4.0–4.4 M/s grown (five alternating
//! pairs; `examples/bench direct`, which publishes that way, 2.8 → 3.6
//! M/s).
//!
//! **Routes for any key.** A walk through fanout exchanges only reads no
//! key: its queues hold for every key. Such a route is filed once, in one
//! of [`ANY_KEY`] slots beside the sets, and serves every key of its
//! exchange whose address fits inline in an envelope (each publish then
//! writes its own key into its envelope, allocating nothing). A publisher
//! giving a fanout exchange a new key each time (a message id, say) no
//! longer fills the cache with one route per key and walks when it
//! overflows: publishing alone to ten queues with a fresh short key each
//! time ran 1.28–1.43 M/s before and 1.42–1.68 M/s after (five alternating
//! pairs). A longer key keeps a route of its own, whose envelopes share one
//! copy of the names.
//!
//! **Thrashing.** A publisher with more keys than even the largest cache
//! holds would pay for recording routes it never reuses, and for scanning
//! slots that do not hold its key. A score follows the hit rate (a hit adds
//! [`HIT_GAIN`], a miss with every slot of its set current takes one off):
//! below `-`[`THRASH`] — fewer than about one hit in five lookups — with
//! the cache as large as it grows, only one publish in [`RETRY`] looks its
//! route up (a probe: a hit raises the score, a miss records the route),
//! and the others walk straight away. Recording costs a few reference
//! counts per queue on top of the walk, so a cache hitting one lookup in
//! five about pays for itself; past that it only gains. Below that, the
//! scan itself is a loss: publishing to 1,024 keys cycling through a
//! direct exchange ran 4.02 M/s scanning eight slots every time and 4.17
//! M/s probing (four alternating pairs; eight keys, all hits, unchanged),
//! before caches grew. A pattern that turns cacheable leaves the mode
//! through its probes' hits, within about a thousand publishes.
//!
//! **Memory.** A route holds its queues (and its exchange) by `Arc` until
//! it is replaced, the cache grows, or its publisher is dropped: a queue
//! deleted meanwhile keeps its empty structure alive that long (deleting it
//! purged its messages). A stale route is the first slot of its set the
//! next miss reuses. A cache of eight routes takes under a kilobyte; one
//! grown as far as it goes, about 230 KB (2,048 slots of 80 bytes and their
//! queue lists), which only a publisher that replaced thousands of live
//! routes reaches. An address too long to store inline is shared by the
//! route's envelopes, not copied into each (`Address::shared`).
//!
//! **Locking.** The cache's mutex is only ever *try*-locked: a publish
//! that finds it held (the same publisher used from two threads at once, or
//! from a waker that an enqueue ran) takes the full walk instead. So it is
//! held across the enqueues — where wakers run and evicted queues may drop
//! — without any thread ever waiting for it: it cannot block a publisher
//! or deadlock. The sync a durable publish waits for comes after it is
//! released.

use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::access::PublishGate;
use crate::durable::syncer::Publishing;
use crate::error::PublishError;
use crate::exchange::Exchange;
use crate::message::Message;
use crate::queue::{Address, Envelope, PublishTiming, Queue};
use crate::routing::Tally;
use crate::settle::Busy;
use crate::sync::{Arc, Ordering, Weak};

use super::publish::{PublishOptions, Routed, Stored, Walk};
use super::{DIRECT_REPLY_TO, ReplyTarget, Vhost};

/// Routes a cache holds at first, in one set scanned whole: enough for a
/// publisher that uses a handful of keys, few enough to scan on every
/// publish. A grown cache holds more sets of as many ways each.
const WAYS: usize = 8;
/// The most sets a cache grows to: 2,048 routes, about 230 KB with their
/// queue lists, held by a publisher that cycles through that many keys.
const MAX_SETS: usize = 256;
/// Slots, beyond the sets, for routes that read no key (fanout exchanges
/// only): each holds for every key its publisher uses whose address fits
/// inline. A longer key's envelope would need its own copy of the names,
/// which a route for that key alone shares among its envelopes instead
/// (measured: 1,024 long keys cycling through a fanout exchange published
/// 5% slower through a route for any key, copying each address).
const ANY_KEY: usize = 4;
/// What a hit adds to the score (a full miss takes one off).
const HIT_GAIN: i32 = 4;
/// The score's bounds: it reacts to a change of pattern within a few
/// dozen lookups.
const SCORE_LIMIT: i32 = 64;
/// Below `-THRASH` the cache is thrashing: few publishes look it up.
const THRASH: i32 = 16;
/// While thrashing, one publish in this many looks its route up.
const RETRY: u32 = 64;

/// The recently used routes of one publisher (see the module docs).
#[derive(Default)]
pub(crate) struct RouteCache {
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache").finish_non_exhaustive()
    }
}

/// The exchange a publish goes to.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A [`Publisher`](crate::Publisher)'s exchange, resolved when it was made.
    Resolved(&'a Arc<Exchange>),
    /// An exchange by name (`Connection::publish`).
    Named(&'a str),
}

impl Target<'_> {
    fn is(self, exchange: &Arc<Exchange>) -> bool {
        match self {
            Target::Resolved(resolved) => Arc::ptr_eq(resolved, exchange),
            Target::Named(name) => *exchange.name == *name,
        }
    }
}

/// The routes, in `sets` sets of [`WAYS`] slots each; a key's routes live
/// in the set its hash picks (the only set while there is one). After the
/// sets, [`ANY_KEY`] slots for routes that hold for any key.
struct Slots {
    slots: Vec<Option<Slot>>,
    /// Some slot for any key holds a route: lookups that miss their set
    /// look there too.
    any_key_routes: bool,
    /// The slot for any key the next replacement takes (round robin).
    next_any_key: usize,
    /// How many sets: a power of two, 1 until the cache grows.
    sets: usize,
    /// The way the next eviction takes in its set (round robin).
    next: usize,
    /// The hit-rate score (see the module docs).
    score: i32,
    /// Publishes counted while thrashing, to pick the probes.
    thrashing_publishes: u32,
    /// Live routes replaced since the cache last grew.
    evictions: usize,
    /// Picks a key's set once there are several.
    hasher: foldhash::fast::FixedState,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            any_key_routes: false,
            next_any_key: 0,
            sets: 1,
            next: 0,
            score: 0,
            thrashing_publishes: 0,
            evictions: 0,
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

/// One cached route.
struct Slot {
    /// The topology epoch it was walked in; it holds while that is current.
    epoch: u64,
    exchange: Arc<Exchange>,
    /// The exchange's name and the key, as every envelope of the route
    /// carries them (copied into each).
    address: Address,
    /// The distinct queues reached, in the walk's order.
    queues: Vec<Arc<Queue>>,
    /// The route reads the message: walk it every time.
    reads_message: bool,
    /// The route read no key (fanout exchanges only): it holds for every
    /// key, and sits in a slot for any key.
    any_key: bool,
}

impl Slots {
    /// The slots of `key`'s set: where its route is, or goes.
    #[inline]
    fn set_of(&self, key: &str) -> std::ops::Range<usize> {
        let set = if self.sets == 1 {
            0
        } else {
            use std::hash::BuildHasher;
            (self.hasher.hash_one(key) as usize) & (self.sets - 1)
        };
        set * WAYS..(set + 1) * WAYS
    }

    /// The slot holding `target`'s route for `key` in `epoch`.
    #[inline]
    fn find(&mut self, target: Target<'_>, key: &str, epoch: u64) -> Option<usize> {
        let set = self.set_of(key);
        let start = set.start;
        let ways = self.slots.get(set).unwrap_or_default();
        let found = ways
            .iter()
            .position(|s| {
                s.as_ref().is_some_and(|s| {
                    s.epoch == epoch && s.address.has_routing_key(key) && target.is(&s.exchange)
                })
            })
            .map(|way| start + way)
            .or_else(|| self.find_any_key(target, key, epoch))?;
        self.score = (self.score + HIT_GAIN).min(SCORE_LIMIT);
        Some(found)
    }

    /// The slot holding `target`'s route for any key in `epoch`, if `key`
    /// is short enough to use it (see [`ANY_KEY`]).
    #[inline]
    fn find_any_key(&self, target: Target<'_>, key: &str, epoch: u64) -> Option<usize> {
        if !self.any_key_routes {
            return None;
        }
        let slots = self.any_key_slots();
        let start = slots.start;
        let way = self.slots.get(slots)?.iter().position(|s| {
            s.as_ref().is_some_and(|s| {
                s.epoch == epoch && Address::fits_inline(&s.exchange.name, key) && target.is(&s.exchange)
            })
        })?;
        Some(start + way)
    }

    /// Where the slots for any key are, after the sets.
    fn any_key_slots(&self) -> std::ops::Range<usize> {
        self.sets * WAYS..self.sets * WAYS + ANY_KEY
    }

    /// Where a route for any key, walked in `epoch`, is recorded: an empty
    /// or stale slot first, else round robin.
    fn any_key_victim(&mut self, epoch: u64) -> usize {
        self.any_key_routes = true;
        let slots = self.any_key_slots();
        let way = match self.free_way(slots.clone(), epoch) {
            Some(way) => way,
            None => {
                let way = self.next_any_key;
                self.next_any_key = (way + 1) % ANY_KEY;
                way
            }
        };
        slots.start + way
    }

    /// The first way of `ways` that holds no route current in `epoch`
    /// (empty, or stale): where a new route goes without replacing one.
    fn free_way(&self, ways: std::ops::Range<usize>, epoch: u64) -> Option<usize> {
        let ways = self.slots.get(ways).unwrap_or_default();
        ways.iter().position(|s| s.as_ref().is_none_or(|s| s.epoch != epoch))
    }

    /// Empties slot `at` (its route was to be replaced by one that went
    /// to a slot for any key instead).
    fn vacate(&mut self, at: usize) {
        if let Some(place) = self.slots.get_mut(at) {
            *place = None;
        }
    }

    /// Whether this publish looks its route up: always, but while the
    /// cache is thrashing only one publish in [`RETRY`] (see the module
    /// docs); the others walk without scanning the slots.
    #[inline]
    fn probe(&mut self) -> bool {
        if self.score >= -THRASH {
            return true;
        }
        self.thrashing_publishes = self.thrashing_publishes.wrapping_add(1);
        self.thrashing_publishes.is_multiple_of(RETRY)
    }

    /// Where `key`'s route, missed in `epoch`, is recorded: an empty or
    /// stale slot of its set first, else the set's next way round robin —
    /// unless replacing a live route shows the cache too small (thrashing,
    /// or as many live routes replaced as it holds since it last grew):
    /// then it grows first (see the module docs).
    fn victim(&mut self, epoch: u64, key: &str) -> usize {
        if self.slots.is_empty() {
            self.slots.resize_with(self.sets * WAYS + ANY_KEY, || None);
        }
        let set = self.set_of(key);
        if let Some(way) = self.free_way(set.clone(), epoch) {
            return set.start + way;
        }
        self.evictions += 1;
        self.score = (self.score - 1).max(-SCORE_LIMIT);
        if (self.score < -THRASH || self.evictions >= self.sets * WAYS) && self.sets < MAX_SETS {
            self.grow();
            return self.victim(epoch, key);
        }
        let way = self.next;
        self.next = (way + 1) % WAYS;
        set.start + way
    }

    /// Twice the sets, empty: the routes refill as they are published
    /// again (their queues' handles are dropped here, as an eviction
    /// drops them).
    #[cold]
    fn grow(&mut self) {
        self.sets *= 2;
        self.slots.clear();
        self.slots.resize_with(self.sets * WAYS + ANY_KEY, || None);
        self.any_key_routes = false;
        self.evictions = 0;
        self.score = 0;
    }

    /// The queue buffer of slot `at`, emptied for the route about to
    /// replace it: recording a route allocates no buffer once the cache is
    /// warm.
    fn recycle(&mut self, at: usize) -> Vec<Arc<Queue>> {
        let Some(Some(slot)) = self.slots.get_mut(at) else { return Vec::new() };
        let mut queues = std::mem::take(&mut slot.queues);
        queues.clear();
        queues
    }

    fn install(&mut self, at: usize, slot: Slot) {
        if let Some(place) = self.slots.get_mut(at) {
            *place = Some(slot);
        }
    }

    /// The route in slot `at`, if it holds one (one that [`find`](Self::find)
    /// returned or [`install`](Self::install) filled always does).
    fn slot(&self, at: usize) -> Option<&Slot> {
        self.slots.get(at).and_then(Option::as_ref)
    }
}

impl Vhost {
    /// Publishes through `cache`: a key whose route it holds goes straight
    /// to its queues; any other walks the graph (and its route is recorded
    /// where it can be). Observes exactly what [`publish`](Self::publish)
    /// and [`publish_resolved`](Self::publish_resolved) do.
    pub(crate) fn publish_cached<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        cache: &RouteCache,
        target: Target<'_>,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let uncached = |message| self.publish_uncached(gate, target, routing_key, message, options);
        if self.core.observers.is_active() || self.core.faults.is_active() {
            return uncached(message);
        }
        let epoch = self.topology_epoch.load(Ordering::Acquire);
        let Some(mut slots) = cache.slots.try_lock() else { return uncached(message) };
        if !slots.probe() {
            drop(slots);
            return uncached(message);
        }
        if let Some(at) = slots.find(target, routing_key, epoch) {
            return self.publish_hit(gate, slots, at, target, routing_key, message, options);
        }
        let start = match target {
            Target::Resolved(exchange) => Arc::clone(exchange),
            Target::Named(name) => match self.exchanges.load().get(name) {
                Some(exchange) => Arc::clone(exchange),
                None => {
                    drop(slots);
                    return uncached(message);
                }
            },
        };
        let at = slots.victim(epoch, routing_key);
        self.publish_miss(gate, slots, at, epoch, start, routing_key, message, options)
    }

    /// A publish past its cache: walked, as if there were none.
    fn publish_uncached<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        target: Target<'_>,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        match target {
            Target::Resolved(exchange) => {
                self.publish_resolved(gate, exchange, routing_key, message, options)
            }
            Target::Named(name) => self.publish(gate, name, routing_key, message, options),
        }
    }

    /// A publish whose route slot `at` holds.
    #[allow(clippy::too_many_arguments)]
    fn publish_hit<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        slots: MutexGuard<'_, Slots>,
        at: usize,
        target: Target<'_>,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let Some(slot) = slots.slot(at) else {
            drop(slots);
            return self.publish_uncached(gate, target, routing_key, message, options);
        };
        let fanout = slot.queues.len() > 1;
        // A route for any key was recorded with another key: this
        // publish's envelope carries its own.
        let own;
        let address = if slot.any_key && !slot.address.has_routing_key(routing_key) {
            own = Address::new(&slot.exchange.name, routing_key);
            &own
        } else {
            &slot.address
        };
        let admitted = self.admit_to(gate, &slot.exchange, routing_key, address, message, fanout)?;
        let queues = (admitted.extra_keys.is_empty() && !slot.reads_message).then_some(&slot.queues[..]);
        let mut durable = None;
        let result = self.deliver(&slot.exchange, routing_key, admitted, queues, options, &mut durable);
        drop(slots);
        self.confirmed(result?, durable)
    }

    /// A publish whose route the cache does not hold: walked, and recorded
    /// in slot `at` (collected first, then enqueued from the record) unless
    /// this message's `CC`/`BCC` keys take it elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn publish_miss<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        mut slots: MutexGuard<'_, Slots>,
        at: usize,
        epoch: u64,
        start: Arc<Exchange>,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let address = Address::shared(&start.name, routing_key);
        let admitted = self.admit_to(gate, &start, routing_key, &address, message, false)?;
        let mut at = at;
        let recorded = admitted.extra_keys.is_empty() && {
            let mut queues = slots.recycle(at);
            let reads = self.collect(None, &start, routing_key, &admitted.envelope, &mut queues);
            let any_key = !reads.key && !reads.message && Address::fits_inline(&start.name, routing_key);
            if any_key {
                // Not this key's route but every key's: its slot, whose
                // queue buffer it took, keeps nothing.
                slots.vacate(at);
                at = slots.any_key_victim(epoch);
            }
            let exchange = Arc::clone(&start);
            let reads_message = reads.message;
            slots.install(at, Slot { epoch, exchange, address, queues, reads_message, any_key });
            !reads_message
        };
        // Recorded in slot `at` (if not, the walk below routes it anyway).
        let queues = recorded.then(|| slots.slot(at)).flatten().map(|slot| &slot.queues[..]);
        let mut durable = None;
        let result = self.deliver(&start, routing_key, admitted, queues, options, &mut durable);
        drop(slots);
        self.confirmed(result?, durable)
    }

    /// What a cached publish passes before its route: the checks and the
    /// gate, a deleted exchange, [`prepare`](Self::prepare); the message
    /// comes back in its envelope, with the guards a publish holds until
    /// its last enqueue (as in `publish_to`: in flight for `settle`, and on
    /// its way to a sync). `fanout`: its recorded route reaches several
    /// queues, so no kept envelope is looked for.
    #[inline(always)]
    fn admit_to<'v, G: PublishGate + ?Sized>(
        &'v self,
        gate: &G,
        start: &Exchange,
        routing_key: &str,
        address: &Address,
        message: Message,
        fanout: bool,
    ) -> Result<Admitted<'v>, PublishError> {
        let ttl = match self.admit(gate, &start.name, Some(start), routing_key, &message) {
            Ok(ttl) => ttl,
            Err(refusal) => return Err(self.not_admitted(refusal, &start.name, routing_key, message)),
        };
        let mut message = message;
        if start.is_deleted() {
            return Err(self.not_found(&start.name, routing_key, message));
        }
        let busy = self.core.activity.busy();
        let publishing = self.core.store.as_ref().map(|store| store.syncer.publishing());
        let mut extra_keys = Vec::new();
        let delay = match self.prepare(start, &mut message, &mut extra_keys) {
            Ok(delay) => delay,
            Err(refusal) => return Err(self.refuse_prepared(start, routing_key, refusal, message)),
        };
        let envelope = self.envelope_to(address.clone(), message, !fanout);
        Ok(Admitted { envelope, ttl, delay, extra_keys, busy, _publishing: publishing })
    }

    /// An admitted message into `queues`, its recorded route, or walked
    /// (`None`), then its outcome.
    #[inline(always)]
    fn deliver(
        &self,
        start: &Exchange,
        routing_key: &str,
        admitted: Admitted<'_>,
        queues: Option<&[Arc<Queue>]>,
        options: PublishOptions,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        let Admitted { envelope, ttl, delay, extra_keys, busy, _publishing } = admitted;
        let stripe = busy.index();
        match queues {
            Some(queues) => {
                let arrival = Arrival { envelope, ttl, delay, options, stripe };
                self.enqueue_cached(start, routing_key, queues, arrival, durable)
            }
            None => {
                if start.is_default() && extra_keys.is_empty() && routing_key.starts_with(DIRECT_REPLY_TO) {
                    let endpoint = self.replies.load().get(routing_key).and_then(Weak::upgrade);
                    if let Some(endpoint) = endpoint {
                        return self.reply(
                            start,
                            routing_key,
                            &*endpoint,
                            envelope,
                            options,
                            stripe,
                            durable,
                        );
                    }
                }
                let walk = Walk { envelope, ttl, delay, extra_keys: &extra_keys };
                self.route_envelope(None, start, routing_key, walk, options, stripe, durable)
            }
        }
    }

    /// A reply to the direct reply-to address `routing_key`, whose call
    /// `endpoint` waits on, given to it as the default exchange's step of a
    /// walk would: never a queue's name first (names under `amq.` are
    /// reserved to the server, which gives queues only `amq.gen-…` ones).
    /// Such a route reads the message, so it is recorded without queues,
    /// and its walk was a sixth of a request/reply round trip's
    /// instructions (callgrind). An address nothing answers at is walked
    /// as before (unroutable, or its exchange's alternate).
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        start: &Exchange,
        routing_key: &str,
        endpoint: &dyn ReplyTarget,
        envelope: Arc<Envelope>,
        options: PublishOptions,
        stripe: usize,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        endpoint.deliver(&envelope);
        let mut tally = Tally::default();
        tally.enqueued = 1;
        let stored = Stored { lsn: 0, error: None };
        self.outcome(start, routing_key, envelope, &mut tally, stored, options, stripe, durable)
    }

    /// Enqueues a message in the queues of its cached route, in order, then
    /// its outcome: what a walk reaching those queues does.
    #[inline]
    fn enqueue_cached(
        &self,
        start: &Exchange,
        routing_key: &str,
        queues: &[Arc<Queue>],
        arrival: Arrival,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        let Arrival { envelope, ttl, delay, options, stripe } = arrival;
        let mut timing = PublishTiming::new(&self.core.settings.clock, ttl, delay);
        timing.fanout = queues.len() > 1;
        let mut letters = Vec::new();
        let mut tally = Tally::default();
        for queue in queues {
            tally.count(queue.enqueue(&envelope, &mut timing, &mut letters), queue);
        }
        if !letters.is_empty() {
            crate::dead_letter::bury(letters);
        }
        let stored = Stored { lsn: timing.durable_lsn, error: timing.store_error };
        self.outcome(start, routing_key, envelope, &mut tally, stored, options, stripe, durable)
    }
}

/// A message past [`Vhost::admit_to`], and the guards it holds.
struct Admitted<'v> {
    envelope: Arc<Envelope>,
    ttl: Option<Duration>,
    delay: Option<Duration>,
    /// Its `CC`/`BCC` keys: routed with its own, by the walk.
    extra_keys: Vec<String>,
    busy: Busy<'v>,
    _publishing: Option<Publishing<'v>>,
}

/// A message in its envelope, with what its enqueues and outcome need.
struct Arrival {
    envelope: Arc<Envelope>,
    ttl: Option<Duration>,
    delay: Option<Duration>,
    options: PublishOptions,
    stripe: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ExchangeKind, ExchangeOptions};

    /// One lookup as a publish makes it: (hit, recorded).
    fn lookup(slots: &mut Slots, exchange: &Arc<Exchange>, key: &str, epoch: u64) -> (bool, bool) {
        if !slots.probe() {
            return (false, false);
        }
        if slots.find(Target::Resolved(exchange), key, epoch).is_some() {
            return (true, false);
        }
        let at = slots.victim(epoch, key);
        let queues = slots.recycle(at);
        let address = Address::shared(&exchange.name, key);
        let slot = Slot {
            epoch,
            exchange: Arc::clone(exchange),
            address,
            queues,
            reads_message: false,
            any_key: false,
        };
        slots.install(at, slot);
        (false, true)
    }

    fn exchange() -> Arc<Exchange> {
        Arc::new(Exchange::new("x".into(), 1, ExchangeKind::Direct, ExchangeOptions::default()))
    }

    /// Hits and recordings over `rounds` cycles through `keys` keys, and the
    /// cache after them.
    fn cycle_in(keys: usize, rounds: usize) -> (usize, usize, Slots) {
        let (mut slots, exchange) = (Slots::default(), exchange());
        let names: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
        let (mut hits, mut recorded) = (0, 0);
        for _ in 0..rounds {
            for name in &names {
                let (hit, new) = lookup(&mut slots, &exchange, name, 1);
                hits += usize::from(hit);
                recorded += usize::from(new);
            }
        }
        (hits, recorded, slots)
    }

    fn cycle(keys: usize, rounds: usize) -> (usize, usize) {
        let (hits, recorded, _) = cycle_in(keys, rounds);
        (hits, recorded)
    }

    #[test]
    fn as_many_keys_as_slots_are_recorded_once_and_then_always_hit() {
        assert_eq!(cycle(WAYS, 100), (WAYS * 99, WAYS));
        assert_eq!(cycle(1, 100), (99, 1));
        let (_, _, slots) = cycle_in(WAYS, 100);
        assert_eq!(slots.sets, 1, "no route was ever replaced: the cache did not grow");
    }

    #[test]
    fn a_cache_grows_to_hold_a_thousand_keys_then_nearly_always_hits() {
        let (hits_in_20, _, slots) = cycle_in(1024, 20);
        let (hits_in_21, _, _) = cycle_in(1024, 21);
        assert!(slots.sets > 1 && slots.sets <= MAX_SETS, "{} sets", slots.sets);
        // The last round, once grown: the few sets that hold more of the
        // cycle's keys than they have ways keep missing.
        let last_round = hits_in_21 - hits_in_20;
        assert!(last_round >= 1024 * 9 / 10, "{last_round} of 1024 hit");
    }

    #[test]
    fn a_key_cycle_far_longer_than_the_largest_cache_records_few_routes() {
        let keys = MAX_SETS * WAYS * 4;
        let (_, recorded, slots) = cycle_in(keys, 10);
        assert_eq!(slots.sets, MAX_SETS, "grown as far as it goes");
        // Growing records about twice the largest cache's routes; after
        // that, one in RETRY full misses, once thrashing is detected.
        let bound = 3 * MAX_SETS * WAYS + 10 * keys / RETRY as usize;
        assert!(recorded < bound, "{recorded} of {} recorded (bound {bound})", 10 * keys);
    }

    #[test]
    fn while_thrashing_one_publish_in_retry_looks_up_and_a_cacheable_pattern_ends_it() {
        let (mut slots, exchange) = (Slots::default(), exchange());
        let names: Vec<String> = (0..MAX_SETS * WAYS * 4).map(|k| format!("k{k}")).collect();
        for name in names.iter().cycle().take(4 * names.len()) {
            lookup(&mut slots, &exchange, name, 1);
        }
        assert!(slots.score < -THRASH, "a long key cycle thrashes");
        let looked_up = (0..RETRY * 10).filter(|_| slots.probe()).count();
        assert_eq!(looked_up, 10, "one publish in RETRY probes");
        // The publisher now uses one key: its probes hit and lift the score.
        let mut publishes = 0;
        while slots.score < -THRASH {
            lookup(&mut slots, &exchange, "k0", 1);
            publishes += 1;
            assert!(publishes <= 2_000, "still thrashing after {publishes} publishes of one key");
        }
        let hits = (0..100).filter(|_| lookup(&mut slots, &exchange, "k0", 1).0).count();
        assert_eq!(hits, 100, "out of the mode, every publish looks up and hits");
    }

    #[test]
    fn a_route_for_any_key_serves_every_key_of_its_exchange_and_only_its_own() {
        let (mut slots, fanout, other) = (Slots::default(), exchange(), exchange());
        // Recorded as a miss records a walk that read no key.
        let at = slots.victim(1, "k0");
        slots.vacate(at);
        let at = slots.any_key_victim(1);
        let address = Address::shared(&fanout.name, "k0");
        let exchange = Arc::clone(&fanout);
        slots.install(
            at,
            Slot { epoch: 1, exchange, address, queues: Vec::new(), reads_message: false, any_key: true },
        );
        for key in ["k0", "k1", "orders.created", ""] {
            assert_eq!(slots.find(Target::Resolved(&fanout), key, 1), Some(at), "{key}");
        }
        // A key too long for its address to be inline: left to a route of its
        // own, whose envelopes share one copy of the names.
        let long = "a.much.longer.routing.key.than.any.other";
        assert_eq!(slots.find(Target::Resolved(&fanout), long, 1), None);
        assert_eq!(slots.find(Target::Resolved(&other), "k0", 1), None, "another exchange");
        assert_eq!(slots.find(Target::Resolved(&fanout), "k0", 2), None, "a later epoch");
        assert_eq!(slots.slots.iter().flatten().count(), 1, "one route for every key");
        slots.grow();
        assert_eq!(slots.find(Target::Resolved(&fanout), "k1", 1), None, "growing empties it too");
    }

    #[test]
    fn a_topology_change_makes_every_route_stale() {
        let (mut slots, first) = (Slots::default(), exchange());
        assert_eq!(lookup(&mut slots, &first, "k", 1), (false, true));
        assert_eq!(lookup(&mut slots, &first, "k", 1), (true, false));
        assert_eq!(lookup(&mut slots, &first, "k", 2), (false, true));
        assert_eq!(slots.slots.iter().flatten().count(), 1, "the stale slot is reused");
        let other = exchange();
        assert_eq!(lookup(&mut slots, &other, "k", 2), (false, true), "another exchange, same name");
    }
}
