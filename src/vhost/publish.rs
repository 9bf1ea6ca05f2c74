//! The publish path, top to bottom: the checks every message passes, the
//! walk through the exchange graph, the enqueue in each queue reached, and
//! what goes back to the publisher. Dead letters take the same walk from
//! their dead-letter exchange ([`QueueOwner::route_dead_letter`]).
//!
//! Lock-free up to each queue's own lock: the exchange and queue maps and
//! every routing table are snapshots read through `ArcSwap`. Access control
//! has already been decided by the connection (see [`crate::access`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::MAX_NAME_LEN;
use crate::access::{GateRefusal, PublishGate};
use crate::clock::MAX_DURATION;
use crate::dead_letter::Letter;
use crate::error::PublishError;
use crate::exchange::{Dest, Exchange, ExchangeKind};
use crate::message::Message;
use crate::observe::{Event, PublishOutcome};
use crate::queue::{Address, Envelope, PublishTiming, Queue, QueueOwner};
use crate::routing::{RoutingPass, Tally, has_sender_selected_keys, sender_selected_keys};
use crate::sync::{Arc, Weak};

use super::{DIRECT_REPLY_TO, ExchangeMap, Vhost};

/// Options of [`Connection::publish_with`](crate::Connection::publish_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Fail with [`PublishError::Unroutable`], handing the message back, if it
    /// reaches no queue (AMQP's basic.return). Without it an unroutable
    /// message is dropped and [`Routed::queues`] is 0.
    pub mandatory: bool,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    queues: usize,
    duplicates: usize,
}

impl Routed {
    /// What a publish that reached the queues `tally` counts returns.
    pub(super) fn of(tally: &Tally) -> Self {
        Routed { queues: tally.enqueued, duplicates: tally.duplicates }
    }

    /// How many queues the message was enqueued in.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// How many queues refused it as a duplicate: its `message_id` was
    /// accepted within their deduplication window. Not an error: the
    /// message is already there.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// Whether it reached at least one queue.
    pub fn is_routed(&self) -> bool {
        self.queues > 0
    }
}

impl Vhost {
    /// Publishes to exchange `exchange`: the message's own checks and the
    /// gate ([`admit`](Self::admit)), the lookup, then
    /// [`publish_to`](Self::publish_to).
    pub(crate) fn publish<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let mut durable = None;
        let routed = self.look_up_and_route(gate, exchange, routing_key, message, options, &mut durable)?;
        self.confirmed(routed, durable)
    }

    /// The lookup and the routing of [`publish`](Self::publish) and
    /// [`publish_deferred`](Self::publish_deferred).
    #[inline]
    pub(super) fn look_up_and_route<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        let exchanges = self.exchanges.load();
        let start = exchanges.get(exchange);
        let ttl = match self.admit(gate, exchange, start.map(|e| &**e), routing_key, &message) {
            Ok(ttl) => ttl,
            Err(refusal) => return Err(self.not_admitted(refusal, exchange, routing_key, message)),
        };
        let Some(start) = start else { return Err(self.not_found(exchange, routing_key, message)) };
        self.publish_to(Some(&exchanges), start, routing_key, message, ttl, options, durable)
    }

    /// A routed publish, once durable if it reached a durable queue.
    #[inline]
    pub(super) fn confirmed(
        &self,
        routed: Routed,
        durable: Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        match durable {
            None => Ok(routed),
            Some(durable) => self.confirm(routed, durable),
        }
    }

    /// Waits (blocking) until a publish's persistent copies are durable
    /// per the store's policy; a failed sync hands the message back.
    #[cold]
    #[inline(never)]
    fn confirm(&self, routed: Routed, (lsn, message): (u64, Message)) -> Result<Routed, PublishError> {
        let Some(store) = self.core.store.as_ref() else { return Ok(routed) };
        store.syncer.wait(store, lsn).map_err(|error| PublishError::StoreFailed {
            queues: Vec::new(),
            routed: routed.queues,
            error,
            message: Box::new(message),
        })?;
        Ok(routed)
    }

    /// [`publish`](Self::publish), returning before the message is durable:
    /// the caller waits on what [`Published::durable`] holds.
    pub(crate) fn publish_deferred<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let mut durable = None;
        let routed = self.look_up_and_route(gate, exchange, routing_key, message, options, &mut durable)?;
        Ok(Published { routed, durable })
    }

    /// Publishes through a pre-resolved exchange (a `Publisher`).
    pub(crate) fn publish_resolved<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        start: &Exchange,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let ttl = match self.admit(gate, &start.name, Some(start), routing_key, &message) {
            Ok(ttl) => ttl,
            Err(refusal) => return Err(self.not_admitted(refusal, &start.name, routing_key, message)),
        };
        if start.is_deleted() {
            return Err(self.not_found(&start.name, routing_key, message));
        }
        let mut durable = None;
        let routed = self.publish_to(None, start, routing_key, message, ttl, options, &mut durable)?;
        self.confirmed(routed, durable)
    }

    /// What every publish passes first: the message's own checks (its TTL
    /// comes back), then the gate — in RabbitMQ's order, both before a
    /// missing exchange is reported. The message is only borrowed: a
    /// refusal comes back as a [`NotAdmitted`] that the caller turns into
    /// its error with the message it still holds ([`Vhost::not_admitted`]),
    /// so a publish that passes does not move its message out and back in.
    #[inline]
    pub(super) fn admit<G: PublishGate + ?Sized>(
        &self,
        gate: &G,
        name: &str,
        exchange: Option<&Exchange>,
        routing_key: &str,
        message: &Message,
    ) -> Result<Option<Duration>, NotAdmitted> {
        let ttl = self.check(routing_key, message)?;
        gate.admit(name, exchange, routing_key, message).map_err(NotAdmitted::Gate)?;
        Ok(ttl)
    }

    /// A publish refused by [`admit`](Self::admit): its error, holding
    /// `message`, reported to the observers.
    #[cold]
    pub(super) fn not_admitted(
        &self,
        refusal: NotAdmitted,
        name: &str,
        routing_key: &str,
        message: Message,
    ) -> PublishError {
        let message = Box::new(message);
        let error = match refusal {
            NotAdmitted::RoutingKeyTooLong => {
                PublishError::InvalidRoutingKey { len: routing_key.len(), message }
            }
            NotAdmitted::TooLarge { size, limit } => PublishError::TooLarge { size, limit, message },
            NotAdmitted::InvalidExpiration => {
                let value = message.properties().expiration().map(str::to_owned).unwrap_or_default();
                PublishError::InvalidExpiration { value, message }
            }
            NotAdmitted::Gate(refusal) => refusal.into_error(*message),
        };
        self.refuse(name, routing_key, error)
    }

    /// No exchange `name` (any more): the error, reported, handing `message` back.
    #[cold]
    pub(super) fn not_found(&self, name: &str, routing_key: &str, message: Message) -> PublishError {
        let error = PublishError::ExchangeNotFound {
            exchange: name.into(),
            vhost: self.name.to_string(),
            message: Box::new(message),
        };
        self.refuse(name, routing_key, error)
    }

    /// Reports `error`, a publish refused before routing, and returns it.
    #[cold]
    fn refuse(&self, exchange: &str, routing_key: &str, error: PublishError) -> PublishError {
        self.report_refused(exchange, routing_key, &error);
        error
    }

    /// Reports a publish refused before routing to the observers.
    fn report_refused(&self, exchange: &str, routing_key: &str, error: &PublishError) {
        self.core.observers.emit_now(|| Event::Published {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            message: error.message().clone(),
            queues: Vec::new(),
            duplicates: Vec::new(),
            outcome: PublishOutcome::Refused(error.to_string()),
        });
    }

    /// The checks every publish starts with; the message's own TTL.
    #[inline]
    fn check(&self, routing_key: &str, message: &Message) -> Result<Option<Duration>, NotAdmitted> {
        if routing_key.len() > MAX_NAME_LEN {
            return Err(NotAdmitted::RoutingKeyTooLong);
        }
        let size = message.body().len();
        let limit = self.core.settings.max_message_size;
        if size > limit {
            return Err(NotAdmitted::TooLarge { size, limit });
        }
        match message.properties().expiration().map(parse_expiration) {
            None => Ok(None),
            Some(Some(ttl)) => Ok(Some(ttl)),
            Some(None) => Err(NotAdmitted::InvalidExpiration),
        }
    }

    /// Routes and enqueues from exchange `start`. Lock-free up to each
    /// queue's own lock. `durable` gets the store position a durable
    /// queue's copy reached (and the message, to hand back if the sync
    /// fails).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn publish_to(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        routing_key: &str,
        message: Message,
        ttl: Option<Duration>,
        options: PublishOptions,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        // In flight for `settle` from before the first enqueue to after the
        // last (a publish refused before routing enqueues nothing).
        let busy = self.core.activity.busy();
        // With a data directory: on its way to waiting for a sync, which a
        // group commit's leader waits for.
        let _publishing = self.core.store.as_ref().map(|store| store.syncer.publishing());
        let mut message = message;
        let mut extra_keys = Vec::new();
        let delay = match self.prepare(start, &mut message, &mut extra_keys) {
            Ok(delay) => delay,
            Err(refusal) => return Err(self.refuse_prepared(start, routing_key, refusal, message)),
        };
        let prepared = Prepared { message, ttl, delay, extra_keys };
        self.route_prepared(exchanges, start, routing_key, prepared, options, busy.index(), durable)
    }

    /// What a message passes on its way into the routing walk, after the
    /// checks and the gate: the exchange is not internal; the scope's
    /// conversation is stamped on it; its delay (its own, or `x-delay` on a
    /// delayed exchange) and its sender-selected keys are taken out.
    ///
    /// The message stays with the caller (a refusal comes back without
    /// it; [`refuse_prepared`](Self::refuse_prepared) makes the error):
    /// returning it inside a `Result` made every publish copy it through
    /// misaligned stack slots, stalling on store forwarding. The keys go
    /// into the caller's `extra_keys` (left empty, the usual case), and the
    /// rare work is out of line, for the same reason: returned in the
    /// result, the empty `Vec` was written by this function as it returned
    /// and read back whole by the caller, another stall (`perf annotate`:
    /// a sixth of `publish_cached`'s samples).
    #[inline(always)]
    pub(super) fn prepare(
        &self,
        start: &Exchange,
        message: &mut Message,
        extra_keys: &mut Vec<String>,
    ) -> Result<Option<Duration>, Unprepared> {
        if start.options.internal {
            return Err(Unprepared::Internal);
        }
        crate::conversation::stamp(message);
        let delay = message.take_delay();
        // Sender-selected distribution is rare: one pass over the header
        // names, comparing lengths first, before any string comparison.
        if start.options.delayed || message.headers().is_some_and(has_sender_selected_keys) {
            return prepare_rare(start, message, delay, extra_keys);
        }
        Ok(delay)
    }

    /// The error of a message [`prepare`](Self::prepare) refused, holding
    /// the message, reported.
    #[cold]
    pub(super) fn refuse_prepared(
        &self,
        start: &Exchange,
        routing_key: &str,
        refusal: Unprepared,
        message: Message,
    ) -> PublishError {
        let error = match refusal {
            Unprepared::Internal => PublishError::InternalExchange {
                exchange: start.name.to_string(),
                vhost: self.name.to_string(),
                message: Box::new(message),
            },
            Unprepared::InvalidHeader(parts) => {
                let (header, reason) = *parts;
                PublishError::InvalidHeader { header, reason, message: Box::new(message) }
            }
        };
        self.report_refused(&start.name, routing_key, &error);
        error
    }

    /// Wraps a prepared message in its envelope, counted in its
    /// conversation if a test follows it. With `reuse`, in an envelope a
    /// dropped delivery left, if the thread holds one (see
    /// `queue/recycle.rs`); without (a publish known to reach several
    /// queues, whose deliveries never hand it back — `PublishTiming::fanout`
    /// — or an envelope only walked, never delivered), a new allocation at
    /// once, without looking.
    #[inline(always)]
    pub(super) fn envelope(
        &self,
        start: &Exchange,
        routing_key: &str,
        message: Message,
        reuse: bool,
    ) -> Arc<Envelope> {
        self.envelope_to(Address::new(&start.name, routing_key), message, reuse)
    }

    /// [`envelope`](Self::envelope) to an address built before (a copy of
    /// a cached route's, of a batch's key's).
    #[inline(always)]
    pub(super) fn envelope_to(&self, address: Address, message: Message, reuse: bool) -> Arc<Envelope> {
        let token = self.core.conversations.token_for(&message);
        if reuse {
            crate::queue::recycle::fresh(address, message, token)
        } else {
            Arc::new(Envelope::addressed(address, message, token))
        }
    }

    /// The routing walk of one prepared message, then its outcome.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn route_prepared(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        routing_key: &str,
        prepared: Prepared,
        options: PublishOptions,
        stripe: usize,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        let Prepared { message, ttl, delay, extra_keys } = prepared;
        let envelope = self.envelope(start, routing_key, message, true);
        let walk = Walk { envelope, ttl, delay, extra_keys: &extra_keys };
        self.route_envelope(exchanges, start, routing_key, walk, options, stripe, durable)
    }

    /// The routing walk of one message in its envelope, then its outcome.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn route_envelope(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        routing_key: &str,
        walk: Walk<'_>,
        options: PublishOptions,
        stripe: usize,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        let Walk { envelope, ttl, delay, extra_keys } = walk;
        let mut pass = RoutingPass::new(
            &envelope,
            routing_key,
            PublishTiming::new(&self.core.settings.clock, ttl, delay),
            &[],
        );
        // Taken before routing, so the publish sorts before its deliveries.
        let seq = self.core.observers.is_active().then(|| {
            pass.names = Some(Default::default());
            self.core.observers.next_seq()
        });
        self.route_keys(exchanges, start, &mut pass, extra_keys);
        let RoutingPass { mut tally, letters, names, timing, .. } = pass;
        if let (Some(seq), Some(names)) = (seq, names) {
            let outcome = if !tally.rejected().is_empty() || !tally.store_failed().is_empty() {
                PublishOutcome::Rejected(
                    tally.rejected().iter().chain(tally.store_failed()).cloned().collect(),
                )
            } else if !tally.reached() && options.mandatory {
                PublishOutcome::Returned
            } else {
                PublishOutcome::Routed
            };
            self.core.observers.emit(
                seq,
                Event::Published {
                    exchange: start.name.to_string(),
                    routing_key: routing_key.into(),
                    message: envelope.message().clone(),
                    queues: names.enqueued,
                    duplicates: names.duplicates,
                    outcome,
                },
            );
        }
        if !letters.is_empty() {
            crate::dead_letter::bury(letters);
        }
        let stored = Stored { lsn: timing.durable_lsn, error: timing.store_error };
        self.outcome(start, routing_key, envelope, &mut tally, stored, options, stripe, durable)
    }

    /// What one routed message's publisher learns: counted on the
    /// exchange, then an error handing the message back (a durable queue's
    /// store failed, a full queue rejected it, or it was `mandatory` and
    /// reached nothing) or what it reached. `durable` gets its store
    /// position, if it has one to wait for.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn outcome(
        &self,
        start: &Exchange,
        routing_key: &str,
        envelope: Arc<Envelope>,
        tally: &mut Tally,
        stored: Stored,
        options: PublishOptions,
        stripe: usize,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        if self.core.settings.statistics {
            start.counters.count(stripe, tally.reached(), 1);
        }
        self.outcome_uncounted(start, routing_key, envelope, tally, stored, options, durable)
    }

    /// [`outcome`](Self::outcome) without counting the publish on the
    /// exchange: its caller does (a batch counts all of its messages at
    /// once). Apart from `outcome` on purpose: one function taking an
    /// optional stripe ran the same instructions (callgrind) but measured
    /// 1→1 slower in seven alternating pairs, which looks like code layout.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn outcome_uncounted(
        &self,
        start: &Exchange,
        routing_key: &str,
        envelope: Arc<Envelope>,
        tally: &mut Tally,
        stored: Stored,
        options: PublishOptions,
        durable: &mut Option<(u64, Message)>,
    ) -> Result<Routed, PublishError> {
        // The tally by reference: passed by value, the counts its caller had
        // just written were copied whole, stalling on store forwarding (a
        // third of this function's samples, `perf annotate`).
        let (enqueued, duplicates) = (tally.enqueued, tally.duplicates);
        if enqueued == 0 && duplicates == 0 {
            crate::trace::unroutable(&start.name, routing_key, options.mandatory, envelope.message());
        }
        let take_back = |envelope: Arc<Envelope>| {
            Box::new(
                Arc::try_unwrap(envelope)
                    .map_or_else(|shared| shared.message().clone(), Envelope::into_message),
            )
        };
        if !tally.store_failed().is_empty() {
            let error = stored.error.map_or(crate::StoreError::Io("unknown".into()), |e| *e);
            return Err(PublishError::StoreFailed {
                queues: tally.take_store_failed(),
                routed: enqueued,
                error,
                message: take_back(envelope),
            });
        }
        if !tally.rejected().is_empty() {
            return Err(PublishError::Rejected {
                queues: tally.take_rejected(),
                routed: enqueued,
                message: take_back(envelope),
            });
        }
        if enqueued == 0 && duplicates == 0 && options.mandatory {
            return Err(PublishError::Unroutable {
                exchange: start.name.to_string(),
                routing_key: routing_key.into(),
                message: take_back(envelope),
            });
        }
        if stored.lsn > 0 {
            *durable = Some((stored.lsn, envelope.message().clone()));
        }
        Ok(Routed::of(tally))
    }
}

/// What a collecting walk ([`Vhost::collect`]) read to find its queues.
pub(super) struct Reads {
    /// More than the key (a headers exchange, a direct reply-to address):
    /// the queues hold for this message only.
    pub(super) message: bool,
    /// The key (a direct or topic exchange, the default exchange). Neither
    /// (fanout exchanges only): the queues hold for any key.
    pub(super) key: bool,
}

/// Why [`Vhost::admit`] refused a message (its error is built by
/// [`Vhost::not_admitted`], with the message).
pub(super) enum NotAdmitted {
    /// The routing key is longer than [`MAX_NAME_LEN`].
    RoutingKeyTooLong,
    /// The body is over the broker's limit.
    TooLarge { size: usize, limit: usize },
    /// The `expiration` property is not a number of milliseconds.
    InvalidExpiration,
    /// Access control or `user_id` said no.
    Gate(GateRefusal),
}

/// Why [`Vhost::prepare`] refused a message.
pub(super) enum Unprepared {
    /// The exchange is internal: only exchange-to-exchange bindings reach it.
    Internal,
    /// A `CC` or `BCC` header that is not an array: the header and why.
    InvalidHeader(Box<(String, String)>),
}

/// A message past its checks, ready for the routing walk.
pub(super) struct Prepared {
    pub(super) message: Message,
    /// Its own TTL (`expiration`).
    pub(super) ttl: Option<Duration>,
    pub(super) delay: Option<Duration>,
    /// Its sender-selected keys (`CC`, `BCC`), routed with its own.
    pub(super) extra_keys: Vec<String>,
}

/// A message in its envelope, on its way into the routing walk.
pub(super) struct Walk<'k> {
    pub(super) envelope: Arc<Envelope>,
    pub(super) ttl: Option<Duration>,
    pub(super) delay: Option<Duration>,
    pub(super) extra_keys: &'k [String],
}

/// What the durable queues a message reached did with it.
pub(super) struct Stored {
    /// The furthest store position its records reached (0: none).
    pub(super) lsn: u64,
    /// Why a store refused it, if one did.
    pub(super) error: Option<Box<crate::StoreError>>,
}

/// A publish routed, and what it waits for to be durable.
pub(crate) struct Published {
    pub(crate) routed: Routed,
    /// The store position its persistent copies reached, and the message
    /// to hand back if the sync fails. `None`: nothing to wait for.
    pub(crate) durable: Option<(u64, Message)>,
}

/// What a queue may ask of its virtual host (see [`QueueOwner`]): to route
/// a dead letter — here, the same walk as a publish — and to delete it
/// (see [`topology`](super::topology)).
impl QueueOwner for Vhost {
    /// Republishes a dead letter to exchange `dlx` with `routing_key` and
    /// then each of `extra_keys` (its `CC` keys), skipping the queues in
    /// `forbidden` (a cycle). Messages this makes leave other queues join
    /// `work`. True if it reached at least one queue.
    fn route_dead_letter(
        &self,
        dlx: &str,
        routing_key: &str,
        message: Message,
        extra_keys: &[String],
        forbidden: &[String],
        work: &mut VecDeque<Letter>,
    ) -> bool {
        let exchanges = self.exchanges.load();
        let Some(start) = exchanges.get(dlx) else { return false };
        let token = self.core.conversations.token_for(&message);
        let envelope = Arc::new(Envelope::published(dlx, routing_key, message, token));
        let mut pass = RoutingPass::new(
            &envelope,
            routing_key,
            PublishTiming::new(&self.core.settings.clock, None, None),
            forbidden,
        );
        self.route_keys(Some(&exchanges), start, &mut pass, extra_keys);
        work.extend(pass.letters);
        pass.tally.enqueued > 0
    }

    fn expire_queue(&self, queue: &Arc<Queue>, now: Instant) {
        self.expire(queue, now);
    }

    fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        self.auto_delete(queue);
    }
}

impl Vhost {
    /// Routes with the pass's own key and `extra_keys` (sender-selected
    /// distribution: a publish's `CC`/`BCC`, a dead letter's `CC`) together,
    /// as RabbitMQ does: every exchange on the way matches all the keys at
    /// once, hands the message to each destination once, and uses its
    /// alternate exchange only if no key matched any of its bindings; an
    /// exchange reached through a binding routes with all the keys too.
    #[inline]
    pub(super) fn route_keys<'a>(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        pass: &mut RoutingPass<'a>,
        extra_keys: &'a [String],
    ) {
        pass.extra_keys = extra_keys;
        self.route(exchanges, start, pass);
    }

    /// A collecting walk (a batch's, a route cache's): the distinct queues
    /// `key` reaches from `start`, in the walk's order, into `queues`,
    /// enqueueing nothing; and what the walk read to find them.
    pub(super) fn collect(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        key: &str,
        envelope: &Arc<Envelope>,
        queues: &mut Vec<Arc<Queue>>,
    ) -> Reads {
        let timing = PublishTiming::new(&self.core.settings.clock, None, None);
        let mut pass = RoutingPass::new(envelope, key, timing, &[]);
        pass.collected = Some(queues);
        self.route_keys(exchanges, start, &mut pass, &[]);
        Reads { message: pass.reads_message, key: pass.reads_key }
    }

    /// Walks the exchange graph from `start`, enqueueing in every queue
    /// reached, once per queue. Each exchange is visited once, so cycles
    /// end. An exchange whose own bindings match nothing hands the message
    /// to its alternate exchange.
    ///
    /// `exchanges` is the snapshot the caller already holds, if any: the map
    /// is only read for an alternate exchange, so a publish through a
    /// `Publisher` does not load it.
    #[inline]
    fn route(&self, exchanges: Option<&ExchangeMap>, start: &Exchange, pass: &mut RoutingPass<'_>) {
        pass.seen_exchanges.insert(start.id);
        self.route_through(exchanges, start, pass);
        // Only exchange-to-exchange bindings and alternate exchanges fill
        // `pending`: the common single-exchange publish never allocates it.
        while let Some(next) = pass.pending.pop() {
            self.route_through(exchanges, &next, pass);
        }
    }

    /// One exchange's step of a routing pass: its bindings matched against
    /// every key of the pass (once, for kinds that do not read the key).
    #[inline]
    fn route_through(
        &self,
        exchanges: Option<&ExchangeMap>,
        exchange: &Exchange,
        pass: &mut RoutingPass<'_>,
    ) {
        let mut matched = self.route_key(exchange, pass, pass.routing_key);
        if !pass.extra_keys.is_empty() && matches!(exchange.kind, ExchangeKind::Direct | ExchangeKind::Topic)
        {
            for key in pass.extra_keys {
                matched |= self.route_key(exchange, pass, key);
            }
        }
        if !matched && let Some(name) = exchange.options.alternate_exchange.as_deref() {
            let alternate = match exchanges {
                Some(map) => map.get(name).cloned(),
                None => self.exchanges.load().get(name).cloned(),
            };
            if let Some(alternate) = alternate {
                pass.visit(&alternate);
            }
        }
    }

    /// `exchange`'s bindings matched against `key`; whether any matched.
    #[inline]
    fn route_key(&self, exchange: &Exchange, pass: &mut RoutingPass<'_>, key: &str) -> bool {
        let mut matched = false;
        if exchange.is_default() {
            pass.reads_key = true;
            if let Some(queue) = self.queues.load().get(key) {
                matched = true;
                pass.enqueue(queue);
            } else if key.starts_with(DIRECT_REPLY_TO) {
                if pass.collected.is_some() {
                    // An address's endpoint comes and goes with its
                    // connection, not with the topology: never collected,
                    // nor cached, even while nothing answers there.
                    pass.reads_message = true;
                } else if let Some(endpoint) = self.replies.load().get(key).and_then(Weak::upgrade) {
                    // A reply to a direct reply-to address: straight to the call.
                    matched = true;
                    endpoint.deliver(pass.envelope);
                    pass.tally.enqueued += 1;
                }
            }
        } else {
            match exchange.kind {
                ExchangeKind::Headers => pass.reads_message = true,
                ExchangeKind::Direct | ExchangeKind::Topic => pass.reads_key = true,
                ExchangeKind::Fanout => {}
            }
            exchange.routes.load().for_each_match(key, pass.envelope.message().headers(), |dest| {
                matched = true;
                match dest {
                    Dest::Queue(queue) => pass.enqueue(queue),
                    Dest::Exchange(next) => pass.visit(next),
                }
            });
        }
        matched
    }
}

/// [`Vhost::prepare`]'s rare work, out of line: a delayed exchange's
/// `x-delay` header (the longer of it and the message's own `delay`) and the
/// sender-selected keys (`CC`/`BCC`), put into `extra_keys`.
#[cold]
#[inline(never)]
fn prepare_rare(
    start: &Exchange,
    message: &mut Message,
    mut delay: Option<Duration>,
    extra_keys: &mut Vec<String>,
) -> Result<Option<Duration>, Unprepared> {
    if start.options.delayed
        && let Some(ms) = message.header("x-delay").and_then(crate::FieldValue::as_i64)
        && ms > 0
    {
        // A header from an untrusted publisher: clamped, like every delay.
        let header_delay = Duration::from_millis(ms.unsigned_abs()).min(MAX_DURATION);
        delay = Some(delay.unwrap_or_default().max(header_delay));
    }
    if message.headers().is_some_and(has_sender_selected_keys) {
        *extra_keys = sender_selected_keys(message)
            .map_err(|(header, reason)| Unprepared::InvalidHeader(Box::new((header, reason))))?;
    }
    Ok(delay)
}

/// A message's own TTL: its `expiration`, a non-negative integer of
/// milliseconds up to [`MAX_DURATION`] (RabbitMQ refuses more as
/// `value_too_large`). `None` if malformed or too large.
fn parse_expiration(value: &str) -> Option<Duration> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().map(Duration::from_millis).filter(|ttl| *ttl <= MAX_DURATION)
}
