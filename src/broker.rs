//! The broker: the topology registry and the publish path.
//!
//! Publishers read two maps (exchanges by name, queues by name), each an
//! immutable snapshot behind an `ArcSwap`, and each exchange's routing table,
//! also behind an `ArcSwap`: routing takes no lock at all. Topology changes
//! (declare, bind, delete) serialise on the registry mutex, build new
//! snapshots and swap them in.

use std::collections::{HashMap, HashSet};

/// Exchanges by name: a persistent map, so a topology change copies a path,
/// not the whole map, while publishers keep reading the previous version.
type ExchangeMap = FastImblMap<Arc<str>, Arc<Exchange>>;
/// Queues by name, likewise.
type QueueMap = FastImblMap<Arc<str>, Arc<Queue>>;
/// Direct reply-to addresses of connections, likewise.
type ReplyMap = FastImblMap<Arc<str>, Weak<ReplyEndpoint>>;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::clock::{Clock, MAX_DURATION, ManualClock};
use crate::connection::Connection;
use crate::conversation::{Conversation, Conversations};
use crate::dead_letter::Letter;
use crate::error::{BindError, ConsumeError, DeclareError, DeleteError, PublishError};
use crate::exchange::headers::HeadersMatcher;
use crate::exchange::{
    BindingInfo, Dest, Exchange, ExchangeKind, ExchangeOptions, Routes, compile_arguments,
};
use crate::explain::{ExchangeFacts, RouteExplanation, TopologyView};
use crate::faults::{FaultInjector, Faults};
use crate::field::FieldTable;
use crate::flow::{Flow, FlowStatus};
use crate::hash::FastImblMap;
use crate::lint::{LintFinding, QueueFacts};
use crate::message::Message;
use crate::observe::{Event, Observers, PublishOutcome, Tap};
use crate::overview::{ExchangeOverview, Overview, QueueOverview};
use crate::queue::{
    DeleteRefused, Envelope, PublishTiming, Queue, QueueContext, QueueOptions, QueueOwner, QueueStats, Side,
    inequivalent_phrase,
};
use crate::recorder::Recorder;
use crate::routing::{RoutingPass, SeenSet, has_sender_selected_keys, sender_selected_keys};
use crate::rpc::{DIRECT_REPLY_TO, ReplyEndpoint};
use crate::settle::{Activity, Pending, PendingQueue, SettleError, wait_until_settled};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, Weak};
use crate::timer::Timers;
use crate::worker::inline::InlineWorkers;

/// The longest name (of a queue or exchange) or routing key, in bytes: AMQP's short string.
pub const MAX_NAME_LEN: usize = 255;

/// Broker-wide settings.
///
/// ```
/// use interoffice::{Broker, BrokerOptions};
/// let broker = Broker::with_options(BrokerOptions { max_message_size: 1 << 20, ..Default::default() });
/// # drop(broker);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerOptions {
    /// The largest message body accepted, in bytes (RabbitMQ's
    /// `max_message_size`, 128 MiB by default).
    pub max_message_size: usize,
    /// The clock every time-based policy reads: the system clock by
    /// default, a [`ManualClock`](crate::ManualClock) in tests.
    pub clock: Clock,
    /// Whether queues keep message statistics ([`QueueStats::message_stats`]):
    /// counts of messages published, delivered, fetched, redelivered and
    /// acknowledged. On by default, as with RabbitMQ's management plugin;
    /// the cost of keeping them is measured in the benchmarks (README,
    /// "Benchmarks") and is within a few percent.
    ///
    /// [`QueueStats::message_stats`]: crate::QueueStats::message_stats
    pub statistics: bool,
    /// RabbitMQ's memory high watermark: past this many bytes held in
    /// queues (bodies plus 160 bytes a message, ready and delayed),
    /// publishing is blocked until consumers drain them — `publish` waits,
    /// `try_publish` fails with [`PublishError::Blocked`](crate::PublishError::Blocked),
    /// and [`Connection::flow_events`](crate::Connection::flow_events) tells.
    /// Off (`None`) by default: then nothing is counted and publishing never
    /// blocks; per-queue length limits still apply. See [`crate::FlowEvent`].
    pub memory_high_watermark: Option<usize>,
    /// Workers ([`Connection::worker`](crate::Connection::worker),
    /// [`Connection::serve`](crate::Connection::serve)) start no threads:
    /// their handlers run on the thread that calls
    /// [`Broker::run_until_idle`] or [`Broker::settle`], or that waits in a
    /// [`Connection::call`](crate::Connection::call) — one delivery at a
    /// time, workers in the order they started. Part of
    /// [`Broker::deterministic`]. Off by default. (An
    /// [`AsyncWorker`](crate::AsyncWorker) runs on the executor that polls
    /// it either way.)
    pub inline_workers: bool,
    /// The seed of generated names (`amq.gen-…` queues, `amq.ctag-…`
    /// consumer tags, reply-to addresses, conversation ids): with a seed,
    /// the same operations make the same names on every run. `None` (the
    /// default) seeds them at random, so they cannot be guessed.
    pub name_seed: Option<u64>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            max_message_size: 128 << 20,
            clock: Clock::system(),
            statistics: true,
            memory_high_watermark: None,
            inline_workers: false,
            name_seed: None,
        }
    }
}

impl BrokerOptions {
    /// The options of a deterministic broker on `clock`: workers run
    /// inline, generated names come from a fixed seed (see
    /// [`Broker::deterministic`]).
    pub fn deterministic(clock: &ManualClock) -> Self {
        BrokerOptions { clock: clock.clock(), inline_workers: true, name_seed: Some(0), ..Default::default() }
    }
}

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

/// The in-process broker: a cheap, cloneable handle (`Clone + Send + Sync`).
///
/// A broker starts with the default exchange `""` and `amq.direct`,
/// `amq.fanout`, `amq.topic`, `amq.headers` and `amq.match`. Everything else
/// is done through a [`Connection`].
///
/// ```
/// use interoffice::{Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions};
/// let broker = Broker::new();
/// let conn = broker.connect();
/// conn.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::default())?;
/// conn.declare_queue("billing", QueueOptions::default())?;
/// conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
/// let routed = conn.publish("orders", "order.eu.created", Message::new("42"))?;
/// assert_eq!(routed.queues(), 1);
/// let consumer = conn.consume("billing", ConsumeOptions::default())?;
/// let delivery = consumer.recv()?;
/// assert_eq!(delivery.routing_key(), "order.eu.created");
/// delivery.ack()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<BrokerInner>,
}

impl std::fmt::Debug for Broker {
    /// What a reader needs: how big the topology is and which clock it
    /// reads, not the routing tables.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("exchanges", &self.inner.exchanges.load().len())
            .field("queues", &self.inner.queues.load().len())
            .field("clock", &self.inner.options.clock)
            .finish_non_exhaustive()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    /// A broker with default options.
    pub fn new() -> Self {
        Broker::with_options(BrokerOptions::default())
    }

    /// A broker for tests that give the same result on every run: a
    /// [`ManualClock`] (returned, for the test to advance) starting at a
    /// fixed wall-clock time, no thread of the bus's own — timers fire when
    /// the clock is advanced, workers' handlers run when the test calls
    /// [`settle`](Self::settle) or [`run_until_idle`](Self::run_until_idle)
    /// — and generated names from a fixed seed. The same test then makes
    /// the same interleaving, and a [`Recorder`] the same trace, every run.
    ///
    /// ```
    /// use std::time::Duration;
    /// use interoffice::{Broker, Message, QueueOptions, WorkerOptions};
    ///
    /// let (broker, clock) = Broker::deterministic();
    /// let conn = broker.connect();
    /// conn.declare_queue("reminders", QueueOptions::default())?;
    /// let worker = conn.worker("reminders", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
    /// let recorder = broker.record();
    /// conn.publish("", "reminders", Message::new("call mum").with_delay(Duration::from_secs(3600)))?;
    /// broker.settle(Duration::from_secs(1))?; // not due yet: nothing to run
    /// assert_eq!(worker.stats().processed, 0);
    /// clock.advance(Duration::from_secs(3600));
    /// broker.settle(Duration::from_secs(1))?; // runs the handler, here
    /// assert_eq!(worker.stats().processed, 1);
    /// assert_eq!(recorder.trace().len(), 3); // published, delivered, acked
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deterministic() -> (Broker, ManualClock) {
        // 2026-01-01T00:00:00Z: any fixed instant will do.
        let clock = ManualClock::at(std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        (Broker::with_options(BrokerOptions::deterministic(&clock)), clock)
    }

    /// In a broker with [`inline_workers`](BrokerOptions::inline_workers),
    /// runs workers' handlers on this thread until none has a delivery
    /// waiting; returns how many ran. Without, does nothing and returns 0.
    pub fn run_until_idle(&self) -> usize {
        self.inner.inline_workers.as_ref().map_or(0, InlineWorkers::run_until_idle)
    }

    /// A broker with `options`.
    pub fn with_options(options: BrokerOptions) -> Self {
        let timers = Timers::new(options.clock.clone());
        let inner = Arc::new_cyclic(|me| BrokerInner {
            me: Weak::clone(me),
            exchanges: ArcSwap::from_pointee(ExchangeMap::default()),
            queues: ArcSwap::from_pointee(QueueMap::default()),
            replies: ArcSwap::from_pointee(ReplyMap::default()),
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            name_seed: {
                let seed = options.name_seed.unwrap_or_else(|| {
                    std::collections::hash_map::RandomState::new().hash_one(0x696e_7465_726f_6666_u64)
                });
                foldhash::fast::FixedState::with_seed(seed)
            },
            vhost: "/".into(),
            timers,
            flow: options.memory_high_watermark.map(|w| Arc::new(Flow::new(w))),
            activity: Arc::default(),
            conversations: Conversations::default(),
            observers: Arc::default(),
            inline_workers: options.inline_workers.then(InlineWorkers::default),
            faults: Arc::default(),
            options,
        });
        {
            let mut map = ExchangeMap::default();
            for (name, kind) in [
                ("", ExchangeKind::Direct),
                ("amq.direct", ExchangeKind::Direct),
                ("amq.fanout", ExchangeKind::Fanout),
                ("amq.topic", ExchangeKind::Topic),
                ("amq.headers", ExchangeKind::Headers),
                ("amq.match", ExchangeKind::Headers),
            ] {
                let options = ExchangeOptions { durable: true, ..Default::default() };
                let exchange = Exchange::new(name.into(), inner.id(), kind, options);
                map.insert(Arc::clone(&exchange.name), Arc::new(exchange));
            }
            inner.exchanges.store(Arc::new(map));
        }
        Broker { inner }
    }

    /// The clock the broker reads (see [`BrokerOptions::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.inner.options.clock
    }

    /// Opens a connection: a client's handle for declaring, publishing and
    /// consuming. Dropping it closes it.
    pub fn connect(&self) -> Connection {
        Connection::open(self.clone(), None)
    }

    /// Opens a connection with a name, shown in its `Debug` output.
    pub fn connect_named(&self, name: impl Into<String>) -> Connection {
        Connection::open(self.clone(), Some(name.into()))
    }

    /// Counts for queue `name`, as [`Connection::queue_stats`](crate::Connection::queue_stats)
    /// gives them (without its connection's checks).
    ///
    /// # Errors
    ///
    /// [`ConsumeError::NotFound`] if there is no such queue.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, ConsumeError> {
        match self.inner.queues.load().get(name) {
            Some(queue) => Ok(queue.stats()),
            None => Err(ConsumeError::NotFound(self.inner.no_queue(name))),
        }
    }

    /// The flow state: the memory the queues hold by the broker's estimate,
    /// the watermark, and whether publishing is blocked.
    ///
    /// ```
    /// use interoffice::{Broker, BrokerOptions, Message, PublishError, QueueOptions};
    ///
    /// let broker = Broker::with_options(BrokerOptions { memory_high_watermark: Some(1 << 20), ..Default::default() });
    /// let conn = broker.connect();
    /// conn.declare_queue("q", QueueOptions::default())?;
    /// conn.publish("", "q", Message::new(vec![0_u8; 2 << 20]))?; // 2 MiB: over the watermark
    /// assert!(broker.flow().blocked);
    /// assert!(matches!(conn.try_publish("", "q", Message::new("more")), Err(PublishError::Blocked { .. })));
    /// conn.purge_queue("q")?;
    /// assert!(!broker.flow().blocked);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flow(&self) -> FlowStatus {
        match &self.inner.flow {
            None => FlowStatus { used: 0, watermark: None, blocked: false },
            Some(flow) => FlowStatus {
                used: flow.used(),
                watermark: Some(flow.watermark()),
                blocked: flow.is_blocked(),
            },
        }
    }

    /// Waits until the bus is quiescent — no ready message in any queue, no
    /// delivery unsettled, no message between a publish and its queues (or
    /// on a dead-letter or alternate-exchange hop), so no worker handler
    /// running — and returns `Ok`; or, once `timeout` has passed, an error
    /// listing what is still pending (queue, count, consumer).
    ///
    /// For tests of service interactions: publish, settle, then assert on
    /// what happened, without guessing how long to sleep. Every publish
    /// that had returned before `settle` was called is done with when it
    /// returns `Ok`, and so is everything it caused; a publish still
    /// routing while `settle` reads counts as pending.
    ///
    /// Time: under the system clock a delayed message (or a retry waiting
    /// out its delay) is pending, so `settle` waits for it. Under a
    /// [`ManualClock`](crate::ManualClock) it is not pending until the clock
    /// reaches its time — time moves only when the test advances it — and
    /// then it is, like any ready message. A message with a TTL is pending
    /// while it waits in its queue; under a manual clock it leaves (expired,
    /// maybe dead-lettered) only when the clock passes its TTL.
    ///
    /// A queue holding messages that nothing consumes keeps the bus from
    /// settling: that is usually a test's mistake, and the error names the
    /// queue and says it has no consumer. Use
    /// [`settle_ignoring_unconsumed`](Self::settle_ignoring_unconsumed) to
    /// leave such queues out.
    ///
    /// # Errors
    ///
    /// [`SettleError::Timeout`], with what was pending at the last look.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use interoffice::{Broker, Message, QueueOptions, WorkerOptions};
    ///
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("emails", QueueOptions::default())?;
    /// let sent = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&sent);
    /// let _worker = conn.worker("emails", WorkerOptions::default(), move |_| {
    ///     counter.fetch_add(1, Ordering::SeqCst);
    ///     Ok::<(), String>(())
    /// })?;
    /// for n in 0..10 {
    ///     conn.publish("", "emails", Message::new(format!("welcome {n}")))?;
    /// }
    /// broker.settle(Duration::from_secs(10))?;
    /// assert_eq!(sent.load(Ordering::SeqCst), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn settle(&self, timeout: Duration) -> Result<(), SettleError> {
        self.settle_where(timeout, |_| true)
    }

    /// [`settle`](Self::settle), leaving out the queues with no consumer
    /// attached and no unsettled delivery: what they hold waits for a
    /// consumer, not for the bus.
    ///
    /// # Errors
    ///
    /// [`SettleError::Timeout`], with what was pending at the last look.
    pub fn settle_ignoring_unconsumed(&self, timeout: Duration) -> Result<(), SettleError> {
        self.settle_where(timeout, |queue| queue.consumers > 0 || queue.unacknowledged_total() > 0)
    }

    fn settle_where(
        &self,
        timeout: Duration,
        keep: impl Fn(&PendingQueue) -> bool,
    ) -> Result<(), SettleError> {
        wait_until_settled(timeout, || {
            self.run_until_idle();
            self.inner.pending(&keep)
        })
    }

    /// Starts following a new conversation: stamp its first message with
    /// [`Conversation::stamp`], then [`Conversation::settle`] waits for
    /// everything that message caused. The id is fresh and unguessable
    /// (`conv-` and 22 characters).
    pub fn conversation(&self) -> Conversation {
        let id = self.inner.generate_name("conv-");
        Conversation::follow(self, &id)
    }

    /// Follows the conversation `id` — one started elsewhere, whose id a
    /// message carries in [`CONVERSATION_ID_HEADER`](crate::CONVERSATION_ID_HEADER).
    /// Only messages enqueued from now on are counted.
    pub fn follow_conversation(&self, id: &str) -> Conversation {
        Conversation::follow(self, id)
    }

    /// Starts recording what the bus does, for a test's assertions: see
    /// [`Recorder`]. Recording stops when the recorder is dropped.
    pub fn record(&self) -> Recorder {
        Recorder::attach(self)
    }

    /// Taps the bus, as RabbitMQ's firehose tracer does: `observer` sees a
    /// copy of every publish (with the queues it reached), delivery, settle,
    /// dead letter and RPC reply, on the thread that did it, after the
    /// bus's locks are released. Detached when the [`Tap`] drops. While no
    /// tap or recorder is attached, each place that would report pays one
    /// relaxed atomic load (measured in the benchmarks).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use interoffice::{Broker, Event, Message, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("q", QueueOptions::default())?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// let tap = broker.tap(move |event| sink.lock().unwrap().push(event.to_string()));
    /// conn.publish("", "q", Message::new("hello"))?;
    /// drop(tap);
    /// conn.publish("", "q", Message::new("unseen"))?;
    /// assert_eq!(*seen.lock().unwrap(), ["published to '' with key 'q' \"hello\" → q"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tap(&self, observer: impl Fn(&Event) + Send + Sync + 'static) -> Tap {
        let observers = Arc::clone(&self.inner.observers);
        let id = observers.attach(Arc::new(move |_seq, event: &Event| observer(event)));
        Tap { observers, id }
    }

    /// Says, without publishing, where a message published to `exchange`
    /// with `routing_key` (and `headers`, for headers exchanges and `CC` /
    /// `BCC`) would go: each queue it would reach and the path to it
    /// (exchange → binding key or header rule → exchange → queue, alternate
    /// exchanges marked); for a message that would reach none, the nearest
    /// bindings that did not match and why. It walks the bindings as
    /// declared, as routing does, and agrees with it (a property test over
    /// random topologies checks that).
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, FieldTable, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    /// conn.declare_queue("billing", QueueOptions::default())?;
    /// conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
    ///
    /// let found = broker.explain_route("orders", "order.eu.created", None);
    /// assert_eq!(found.queues(), ["billing"]);
    /// assert_eq!(found.to_string(), "'orders' with key 'order.eu.created'\n  → billing: 'orders' [order.*.created] → 'billing'");
    ///
    /// let lost = broker.explain_route("orders", "order.created", None);
    /// assert!(!lost.is_routable());
    /// assert_eq!(lost.near_misses[0].why, "topic: pattern 'order.*.created' has 3 word(s), key 'order.created' has 2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn explain_route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> RouteExplanation {
        self.inner.topology_view().explain(exchange, routing_key, headers)
    }

    /// Checks the topology for what is probably a mistake: exchanges with
    /// no bindings, queues nothing binds to, dead-letter and alternate
    /// exchanges that do not exist, dead-letter cycles without a rejection,
    /// alternate-exchange loops, binding keys that cannot match what they
    /// seem to say, bindings shadowed by others, queues that nothing
    /// consumes and nothing bounds. Findings are values a test can assert
    /// on, most serious first (see [`LintFinding`]).
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, FieldTable, LintFinding, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    /// let dlq = QueueOptions { dead_letter_exchange: Some("dead-letters".into()), ..Default::default() };
    /// conn.declare_queue("billing", dlq)?;
    /// conn.bind_queue("billing", "orders", "order*", FieldTable::new())?;
    ///
    /// let findings = broker.lint();
    /// assert!(findings.contains(&LintFinding::MissingDeadLetterExchange {
    ///     queue: "billing".into(),
    ///     exchange: "dead-letters".into(),
    /// }));
    /// assert!(findings.iter().any(|f| f.to_string().contains("'order*' is matched literally")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lint(&self) -> Vec<LintFinding> {
        let view = self.inner.topology_view();
        let queues = self
            .inner
            .queues
            .load()
            .values()
            .map(|q| {
                let policy = &q.policy;
                let facts = QueueFacts {
                    consumers: q.stats().consumers,
                    dead_letter_exchange: policy.dead_letter_exchange.clone(),
                    dead_letter_routing_key: policy.dead_letter_routing_key.clone(),
                    dies_on_its_own: policy.message_ttl.is_some()
                        || policy.max_length.is_some()
                        || policy.max_length_bytes.is_some()
                        || policy.delivery_limit.is_some(),
                    bounded: policy.message_ttl.is_some()
                        || policy.max_length.is_some()
                        || policy.max_length_bytes.is_some()
                        || policy.expires.is_some(),
                };
                (q.name.to_string(), facts)
            })
            .collect();
        crate::lint::lint(&view, &queues)
    }

    /// Starts injecting faults, for resilience tests of the user's own
    /// services: add [`Fault`](crate::Fault) rules to drop, duplicate or
    /// delay chosen messages as they enter queues (by queue, routing key,
    /// or probability drawn from `seed`, so a run is reproducible). The
    /// rules go when the injector is dropped. Off by default: one relaxed
    /// atomic load per enqueue. See also [`Connection::crash`](crate::Connection::crash).
    ///
    /// ```
    /// use interoffice::{Broker, Fault, FaultAction, Message, ProcessedIds, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("payments", QueueOptions::default())?;
    /// let faults = broker.inject_faults(7);
    /// faults.add(Fault { queue: Some("payments".into()), ..Fault::new(FaultAction::Duplicate) });
    /// conn.publish("", "payments", Message::new("pay 10 EUR").with_message_id("p-1"))?;
    ///
    /// let seen = ProcessedIds::new(1000);
    /// let mut charged = 0;
    /// while let Some(delivery) = conn.get("payments", false)? {
    ///     seen.process(delivery, |_| { charged += 1; Ok::<(), String>(()) })?;
    /// }
    /// assert_eq!(charged, 1, "the duplicate was caught");
    /// assert_eq!(faults.injected().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject_faults(&self, seed: u64) -> FaultInjector {
        FaultInjector::new(Arc::clone(&self.inner.faults), seed)
    }

    /// Every queue's and exchange's counters and gauges in one snapshot
    /// (serialisable): published, routed, unroutable, delivered,
    /// redelivered, acknowledged, nacked, rejected, dead-lettered, expired,
    /// dropped, purged; ready, delayed, unacknowledged, consumers, bytes.
    /// The snapshot is read so that no message moved between queues while
    /// it was (retried a few times; [`Overview::consistent`] says whether
    /// it managed). Message counters need [`BrokerOptions::statistics`]
    /// (on by default). With feature `metrics`, `Overview::record_metrics`
    /// exports it.
    ///
    /// ```
    /// use interoffice::{Broker, Message, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("jobs", QueueOptions::default())?;
    /// conn.publish("", "jobs", Message::new("a"))?;
    /// conn.get("jobs", false)?.unwrap().ack()?;
    /// conn.publish("", "jobs", Message::new("b"))?;
    ///
    /// let overview = broker.overview();
    /// let jobs = overview.queues.iter().find(|q| q.name == "jobs").unwrap();
    /// assert_eq!((jobs.published, jobs.acknowledged, jobs.ready), (2, 1, 1));
    /// let default = overview.exchanges.iter().find(|e| e.name.is_empty()).unwrap();
    /// assert_eq!(default.routed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn overview(&self) -> Overview {
        let mut tries = 0;
        loop {
            tries += 1;
            let queues = self.inner.queues.load_full();
            let (stats, in_flight) = self
                .inner
                .activity
                .consistent(|| queues.values().map(|q| q.stats()).collect::<Vec<QueueStats>>());
            if in_flight == 0 || tries == 5 {
                let mut queues: Vec<QueueOverview> = stats.iter().map(QueueOverview::from).collect();
                queues.sort_by(|a, b| a.name.cmp(&b.name));
                let mut exchanges: Vec<ExchangeOverview> = self
                    .inner
                    .exchanges
                    .load()
                    .values()
                    .map(|e| {
                        let (routed, unroutable) = e.counters.read();
                        ExchangeOverview {
                            name: e.name.to_string(),
                            kind: e.kind,
                            published: routed + unroutable,
                            routed,
                            unroutable,
                        }
                    })
                    .collect();
                exchanges.sort_by(|a, b| a.name.cmp(&b.name));
                return Overview { queues, exchanges, consistent: in_flight == 0 };
            }
            std::thread::yield_now();
        }
    }

    /// The names of all queues, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.queues.load().keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// The names of all exchanges (including `""` and `amq.*`), sorted.
    pub fn exchange_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.exchanges.load().keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// Every binding, sorted by source, destination and key. The default
    /// exchange's implicit bindings are not listed.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let registry = self.inner.registry.lock();
        let mut out: Vec<BindingInfo> = registry
            .bindings
            .values()
            .flat_map(|entry| entry.args.iter().map(move |(arguments, _)| entry.info(arguments)))
            .collect();
        out.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(&b.source, &b.destination, &b.routing_key))
        });
        out
    }
}

/// Why a connection may not use a queue; converts into each operation's error.
#[derive(Debug)]
pub(crate) enum QueueRefusal {
    /// No such queue (the message names it as RabbitMQ does).
    NotFound(String),
    /// Exclusive to another connection (the queue's name).
    Locked(String),
}

macro_rules! from_queue_refusal {
    ($($error:ident),*) => {$(
        impl From<QueueRefusal> for $error {
            fn from(refusal: QueueRefusal) -> Self {
                match refusal {
                    QueueRefusal::NotFound(message) => $error::NotFound(message),
                    QueueRefusal::Locked(name) => $error::ResourceLocked(name),
                }
            }
        }
    )*};
}

from_queue_refusal!(BindError, DeleteError, ConsumeError);

/// Identity of a binding's destination, for the registry's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DestId {
    Queue(u64),
    Exchange(u64),
}

impl Dest {
    fn id(&self) -> DestId {
        match self {
            Dest::Queue(q) => DestId::Queue(q.id),
            Dest::Exchange(e) => DestId::Exchange(e.id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingKey {
    source: u64,
    dest: DestId,
    key: String,
}

/// All bindings from one source to one destination under one key; they
/// differ by arguments.
#[derive(Debug)]
struct BindingEntry {
    source: Arc<Exchange>,
    dest: Dest,
    key: String,
    args: Vec<(FieldTable, Option<HeadersMatcher>)>,
}

impl BindingEntry {
    /// The binding with `arguments` (one of `args`), as it is listed.
    fn info(&self, arguments: &FieldTable) -> BindingInfo {
        BindingInfo {
            source: self.source.name.to_string(),
            destination: match &self.dest {
                Dest::Queue(q) => q.name.to_string(),
                Dest::Exchange(e) => e.name.to_string(),
            },
            destination_is_exchange: matches!(self.dest, Dest::Exchange(_)),
            routing_key: self.key.clone(),
            arguments: arguments.clone(),
        }
    }
}

/// The writers' side of the topology: every binding, indexed by source and
/// by destination so that deleting a queue or exchange touches only its own
/// bindings. Only touched under the registry mutex.
#[derive(Debug, Default)]
struct Registry {
    bindings: HashMap<BindingKey, BindingEntry>,
    by_source: HashMap<u64, HashSet<BindingKey>>,
    by_dest: HashMap<DestId, HashSet<BindingKey>>,
    /// Bindings per source exchange id, counting argument variants (for
    /// `if_unused` and auto-delete).
    binding_count: HashMap<u64, usize>,
    /// Exclusive queues by owning connection, deleted when it closes.
    exclusive: HashMap<u64, Vec<Arc<Queue>>>,
}

impl Registry {
    /// The entry for `key`, created (and indexed) if new.
    fn entry(&mut self, key: BindingKey, source: &Arc<Exchange>, dest: &Dest) -> &mut BindingEntry {
        if !self.bindings.contains_key(&key) {
            self.by_source.entry(key.source).or_default().insert(key.clone());
            self.by_dest.entry(key.dest).or_default().insert(key.clone());
        }
        self.bindings.entry(key.clone()).or_insert_with(|| BindingEntry {
            source: Arc::clone(source),
            dest: dest.clone(),
            key: key.key,
            args: Vec::new(),
        })
    }

    /// Removes the entry for `key` and its index records.
    fn take(&mut self, key: &BindingKey) -> Option<BindingEntry> {
        let entry = self.bindings.remove(key)?;
        unindex(&mut self.by_source, key.source, key);
        unindex(&mut self.by_dest, key.dest, key);
        Some(entry)
    }

    /// Keys of every binding from source exchange `source`.
    fn keys_from(&self, source: u64) -> impl Iterator<Item = &BindingKey> {
        self.by_source.get(&source).into_iter().flatten()
    }

    /// Keys of every binding to `dest`.
    fn keys_to(&self, dest: DestId) -> impl Iterator<Item = &BindingKey> {
        self.by_dest.get(&dest).into_iter().flatten()
    }
}

/// Drops `key` from the index set under `id`, and the set once empty.
fn unindex<I: std::hash::Hash + Eq>(index: &mut HashMap<I, HashSet<BindingKey>>, id: I, key: &BindingKey) {
    if let Some(keys) = index.get_mut(&id) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(&id);
        }
    }
}

/// Routing changes to apply to one exchange's table in one swap.
struct RouteEdit {
    key: String,
    matcher: Option<HeadersMatcher>,
    dest: Dest,
    add: bool,
}

#[derive(Debug)]
pub(crate) struct BrokerInner {
    /// Itself, for the queues it creates (dead-lettering routes through it).
    me: Weak<BrokerInner>,
    exchanges: ArcSwap<ExchangeMap>,
    queues: ArcSwap<QueueMap>,
    replies: ArcSwap<ReplyMap>,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    name_seed: foldhash::fast::FixedState,
    vhost: Box<str>,
    /// The memory estimate and alarm, with a watermark set.
    pub(crate) flow: Option<Arc<Flow>>,
    /// Messages between a publish and its queues, or between queues: what
    /// [`Broker::settle`] must see to be sure. See [`crate::settle`].
    pub(crate) activity: Arc<Activity>,
    /// The conversations tests follow (see [`crate::conversation`]).
    pub(crate) conversations: Conversations,
    /// Recorders and taps (see [`crate::observe`]).
    pub(crate) observers: Arc<Observers>,
    /// In a deterministic broker, its workers, run by hand.
    pub(crate) inline_workers: Option<InlineWorkers>,
    /// Fault rules a test injected (see [`crate::faults`]).
    faults: Arc<Faults>,
    timers: Arc<Timers>,
    options: BrokerOptions,
}

fn check_name(name: &str) -> Result<(), DeclareError> {
    if name.len() > MAX_NAME_LEN {
        let mut cut = MAX_NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(DeclareError::InvalidName {
            name: format!("{}…", &name[..cut]),
            reason: "longer than 255 bytes",
        });
    }
    Ok(())
}

impl BrokerInner {
    pub(crate) fn clock(&self) -> &Clock {
        &self.options.clock
    }

    pub(crate) fn timers(&self) -> &Arc<Timers> {
        &self.timers
    }

    /// A new direct reply-to address, registered for routing.
    pub(crate) fn register_reply_endpoint(&self) -> Arc<ReplyEndpoint> {
        let _registry = self.registry.lock();
        let name = self.generate_name(&format!("{DIRECT_REPLY_TO}."));
        let endpoint = Arc::new(ReplyEndpoint::new(name, Weak::clone(&self.me)));
        let mut map = (**self.replies.load()).clone();
        map.insert(Arc::clone(&endpoint.name), Arc::downgrade(&endpoint));
        self.replies.store(Arc::new(map));
        endpoint
    }

    /// Takes a direct reply-to address out of routing.
    pub(crate) fn unregister_reply_endpoint(&self, name: &str) {
        let _registry = self.registry.lock();
        let mut map = (**self.replies.load()).clone();
        map.remove(name);
        self.replies.store(Arc::new(map));
    }

    /// A fresh id for a queue, exchange, consumer or connection.
    pub(crate) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh, unguessable name with `prefix` (`amq.gen-`, `amq.ctag-`),
    /// shaped like RabbitMQ's.
    pub(crate) fn generate_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let id = self.id();
        let bits = u128::from(self.name_seed.hash_one(id)) << 64 | u128::from(self.name_seed.hash_one(!id));
        let mut name = String::with_capacity(prefix.len() + 22);
        name.push_str(prefix);
        name.extend((0..22).map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char));
        name
    }

    /// Whether the memory alarm is on (never without a watermark).
    pub(crate) fn is_blocked(&self) -> bool {
        self.flow.as_ref().is_some_and(|flow| flow.is_blocked())
    }

    /// Waits while the memory alarm is on, as RabbitMQ blocks a publishing
    /// connection; returns at once without a watermark or alarm.
    pub(crate) fn wait_while_blocked(&self) {
        if let Some(flow) = &self.flow
            && flow.is_blocked()
        {
            flow.wait_unblocked();
        }
    }

    /// The topology as `explain_route` reads it: every exchange, queue and
    /// binding, read under the registry lock (one consistent version).
    pub(crate) fn topology_view(&self) -> TopologyView {
        let registry = self.registry.lock();
        let exchanges = self
            .exchanges
            .load()
            .values()
            .map(|e| {
                let facts = ExchangeFacts {
                    kind: e.kind,
                    internal: e.options.internal,
                    alternate: e.options.alternate_exchange.clone(),
                };
                (e.name.to_string(), facts)
            })
            .collect();
        let queues = self.queues.load().keys().map(|k| k.to_string()).collect();
        let mut bindings: HashMap<String, Vec<BindingInfo>> = HashMap::new();
        let mut entries: Vec<&BindingEntry> = registry.bindings.values().collect();
        entries.sort_by(|a, b| (&a.source.name, a.key.as_str()).cmp(&(&b.source.name, b.key.as_str())));
        for entry in entries {
            for (arguments, _) in &entry.args {
                bindings.entry(entry.source.name.to_string()).or_default().push(entry.info(arguments));
            }
        }
        TopologyView { exchanges, queues, bindings }
    }

    /// Every exchange, in no order.
    pub(crate) fn exchanges_snapshot(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.load().values().cloned().collect()
    }

    /// Every queue, in no order.
    pub(crate) fn queues_snapshot(&self) -> Vec<Arc<Queue>> {
        self.queues.load().values().cloned().collect()
    }

    /// One look for a settle: what is pending, read consistently (see
    /// [`crate::settle`]).
    pub(crate) fn pending(&self, keep: &impl Fn(&PendingQueue) -> bool) -> Pending {
        let queues = self.queues.load_full();
        let (queues, in_flight) = self.activity.consistent(|| {
            let mut pending: Vec<PendingQueue> =
                queues.values().map(|q| q.pending()).filter(|p| !p.is_empty() && keep(p)).collect();
            pending.sort_by(|a, b| a.name.cmp(&b.name));
            pending
        });
        Pending { in_flight, queues, ..Default::default() }
    }

    pub(crate) fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.load().get(name).cloned()
    }

    pub(crate) fn no_exchange(&self, name: &str) -> String {
        format!("no exchange '{name}' in vhost '{}'", self.vhost)
    }

    fn no_queue(&self, name: &str) -> String {
        format!("no queue '{name}' in vhost '{}'", self.vhost)
    }

    // ----- publish -------------------------------------------------------

    /// Routes and enqueues. Lock-free up to each queue's own lock.
    pub(crate) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let (message, ttl) = self
            .check(routing_key, message)
            .inspect_err(|e| self.report_refused(exchange, routing_key, e))?;
        let exchanges = self.exchanges.load();
        let Some(start) = exchanges.get(exchange) else {
            let error =
                PublishError::ExchangeNotFound { exchange: exchange.into(), message: Box::new(message) };
            self.report_refused(exchange, routing_key, &error);
            return Err(error);
        };
        self.publish_to(Some(&exchanges), start, routing_key, message, ttl, options)
    }

    /// Publishes through a pre-resolved exchange (a `Publisher`).
    pub(crate) fn publish_resolved(
        &self,
        start: &Exchange,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        let (message, ttl) = self
            .check(routing_key, message)
            .inspect_err(|e| self.report_refused(&start.name, routing_key, e))?;
        if start.is_deleted() {
            let error = PublishError::ExchangeNotFound {
                exchange: start.name.to_string(),
                message: Box::new(message),
            };
            self.report_refused(&start.name, routing_key, &error);
            return Err(error);
        }
        self.publish_to(None, start, routing_key, message, ttl, options)
    }

    /// Reports a publish refused before routing to the observers.
    fn report_refused(&self, exchange: &str, routing_key: &str, error: &PublishError) {
        self.observers.emit_now(|| Event::Published {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            message: error.message().clone(),
            queues: Vec::new(),
            duplicates: Vec::new(),
            outcome: PublishOutcome::Refused(error.to_string()),
        });
    }

    /// The checks every publish starts with; the message's own TTL.
    fn check(
        &self,
        routing_key: &str,
        message: Message,
    ) -> Result<(Message, Option<Duration>), PublishError> {
        if routing_key.len() > MAX_NAME_LEN {
            return Err(PublishError::InvalidRoutingKey {
                len: routing_key.len(),
                message: Box::new(message),
            });
        }
        let size = message.body().len();
        if size > self.options.max_message_size {
            let limit = self.options.max_message_size;
            return Err(PublishError::TooLarge { size, limit, message: Box::new(message) });
        }
        match message.properties().expiration.as_deref().map(parse_expiration) {
            None => Ok((message, None)),
            Some(Some(ttl)) => Ok((message, Some(ttl))),
            Some(None) => {
                let value = message.properties().expiration.clone().unwrap_or_default();
                Err(PublishError::InvalidExpiration { value, message: Box::new(message) })
            }
        }
    }

    /// Routes and enqueues from exchange `start`. Lock-free up to each
    /// queue's own lock.
    fn publish_to(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        routing_key: &str,
        mut message: Message,
        ttl: Option<Duration>,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        // In flight for `settle` from before the first enqueue to after the
        // last (a publish refused before routing enqueues nothing).
        let busy = self.activity.busy();
        if start.options.internal {
            let error = PublishError::InternalExchange {
                exchange: start.name.to_string(),
                message: Box::new(message),
            };
            self.report_refused(&start.name, routing_key, &error);
            return Err(error);
        }
        crate::conversation::stamp(&mut message);
        let mut delay = message.take_delay();
        if start.options.delayed
            && let Some(ms) = message.header("x-delay").and_then(crate::FieldValue::as_i64)
            && ms > 0
        {
            // A header from an untrusted publisher: clamped, like every delay.
            let header_delay = Duration::from_millis(ms.unsigned_abs()).min(MAX_DURATION);
            delay = Some(delay.unwrap_or_default().max(header_delay));
        }
        // Sender-selected distribution is rare: one pass over the header
        // names, comparing lengths first, before any string comparison.
        let extra_keys = if message.headers().is_some_and(has_sender_selected_keys) {
            match sender_selected_keys(&mut message) {
                Ok(keys) => keys,
                Err((header, reason)) => {
                    let error = PublishError::InvalidHeader { header, reason, message: Box::new(message) };
                    self.report_refused(&start.name, routing_key, &error);
                    return Err(error);
                }
            }
        } else {
            Vec::new()
        };
        let token = self.conversations.token_for(&message);
        let envelope = Arc::new(Envelope::new(&start.name, routing_key, message).in_conversation(token));
        let mut pass = RoutingPass::new(
            &envelope,
            routing_key,
            PublishTiming::new(&self.options.clock, ttl, delay),
            &[],
        );
        // Taken before routing, so the publish sorts before its deliveries.
        let seq = self.observers.is_active().then(|| {
            pass.names = Some(Default::default());
            self.observers.next_seq()
        });
        self.route_keys(exchanges, start, &mut pass, &extra_keys);
        let RoutingPass { enqueued, duplicates, rejected, letters, names, .. } = pass;
        if self.options.statistics {
            start.counters.count(busy.index(), enqueued > 0 || duplicates > 0);
        }
        if enqueued == 0 && duplicates == 0 {
            crate::trace::unroutable(&start.name, routing_key, options.mandatory, &envelope.message);
        }
        if let (Some(seq), Some(names)) = (seq, names) {
            let outcome = if !rejected.is_empty() {
                PublishOutcome::Rejected(rejected.clone())
            } else if enqueued == 0 && duplicates == 0 && options.mandatory {
                PublishOutcome::Returned
            } else {
                PublishOutcome::Routed
            };
            self.observers.emit(
                seq,
                Event::Published {
                    exchange: start.name.to_string(),
                    routing_key: routing_key.into(),
                    message: envelope.message.clone(),
                    queues: names.enqueued,
                    duplicates: names.duplicates,
                    outcome,
                },
            );
        }
        if !letters.is_empty() {
            crate::dead_letter::bury(letters);
        }
        let take_back = |envelope: Arc<Envelope>| {
            Box::new(Arc::try_unwrap(envelope).map_or_else(|shared| shared.message.clone(), |e| e.message))
        };
        if !rejected.is_empty() {
            return Err(PublishError::Rejected {
                queues: rejected,
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
        Ok(Routed { queues: enqueued, duplicates })
    }

    /// The exchange named `name`, for a `Publisher`.
    pub(crate) fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.load().get(name).cloned()
    }
}

impl QueueOwner for BrokerInner {
    /// Deletes a queue whose `expires` time has passed unused, unless it was
    /// used meanwhile.
    fn expire_queue(&self, queue: &Arc<Queue>, now: Instant) {
        let mut registry = self.registry.lock();
        let _used_meanwhile = self.remove_queue_if(&mut registry, queue, true, false, Some(now));
    }

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
        work: &mut std::collections::VecDeque<Letter>,
    ) -> bool {
        let exchanges = self.exchanges.load();
        let Some(start) = exchanges.get(dlx) else { return false };
        let token = self.conversations.token_for(&message);
        let envelope = Arc::new(Envelope::new(dlx, routing_key, message).in_conversation(token));
        let mut pass = RoutingPass::new(
            &envelope,
            routing_key,
            PublishTiming::new(&self.options.clock, None, None),
            forbidden,
        );
        self.route_keys(Some(&exchanges), start, &mut pass, extra_keys);
        work.extend(pass.letters);
        pass.enqueued > 0
    }
}

impl BrokerInner {
    /// Routes the pass's own key, then each of `extra_keys` (sender-selected
    /// distribution: a publish's `CC`/`BCC`, a dead letter's `CC`), as if the
    /// message were published with each; a queue reached by several keys
    /// gets it once, and each key walks the exchanges afresh.
    fn route_keys<'a>(
        &self,
        exchanges: Option<&ExchangeMap>,
        start: &Exchange,
        pass: &mut RoutingPass<'a>,
        extra_keys: &'a [String],
    ) {
        self.route(exchanges, start, pass);
        for key in extra_keys {
            pass.routing_key = key;
            pass.seen_exchanges = SeenSet::new();
            self.route(exchanges, start, pass);
        }
    }

    /// Walks the exchange graph from `start`, enqueueing in every queue
    /// reached, once per queue. Each exchange is visited once, so cycles
    /// end. An exchange whose own bindings match nothing hands the message
    /// to its alternate exchange.
    ///
    /// `exchanges` is the snapshot the caller already holds, if any: the map
    /// is only read for an alternate exchange, so a publish through a
    /// `Publisher` does not load it.
    fn route(&self, exchanges: Option<&ExchangeMap>, start: &Exchange, pass: &mut RoutingPass<'_>) {
        pass.seen_exchanges.insert(start.id);
        self.route_through(exchanges, start, pass);
        // Only exchange-to-exchange bindings and alternate exchanges fill
        // `pending`: the common single-exchange publish never allocates it.
        while let Some(next) = pass.pending.pop() {
            self.route_through(exchanges, &next, pass);
        }
    }

    /// One exchange's step of a routing pass.
    fn route_through(
        &self,
        exchanges: Option<&ExchangeMap>,
        exchange: &Exchange,
        pass: &mut RoutingPass<'_>,
    ) {
        let key = pass.routing_key;
        let mut matched = false;
        if exchange.is_default() {
            if let Some(queue) = self.queues.load().get(key) {
                matched = true;
                pass.enqueue(queue);
            } else if key.starts_with(DIRECT_REPLY_TO)
                && let Some(endpoint) = self.replies.load().get(key).and_then(Weak::upgrade)
            {
                // A reply to a direct reply-to address: straight to the call.
                matched = true;
                endpoint.deliver(pass.envelope);
                pass.enqueued += 1;
            }
        } else {
            exchange.routes.load().for_each_match(key, pass.envelope.message.headers(), |dest| {
                matched = true;
                match dest {
                    Dest::Queue(queue) => pass.enqueue(queue),
                    Dest::Exchange(next) => pass.visit(next),
                }
            });
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

    // ----- exchanges -----------------------------------------------------

    pub(crate) fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), DeclareError> {
        check_name(name)?;
        let _registry = self.registry.lock();
        if name.is_empty() {
            return Err(DeclareError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let options = if options.passive {
            options
        } else {
            options.resolved().map_err(|(arg, why)| {
                DeclareError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for exchange '{name}' in vhost '{}': {why}",
                    self.vhost
                ))
            })?
        };
        let existing = self.exchanges.load().get(name).cloned();
        if options.passive {
            return existing.map(|_| ()).ok_or_else(|| DeclareError::NotFound(self.no_exchange(name)));
        }
        // As RabbitMQ does, the reserved prefix only stops creating an
        // exchange: re-declaring `amq.direct` equivalently succeeds.
        if existing.is_none() && name.starts_with("amq.") {
            return Err(DeclareError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(current) = existing {
            let inequivalent = |arg: &str, received: &Side, now: &Side| {
                DeclareError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': {}",
                    self.vhost,
                    inequivalent_phrase(received, now)
                ))
            };
            if current.kind != kind {
                let kind_side = |k: ExchangeKind| Some((k.as_str().to_owned(), "longstr"));
                return Err(inequivalent("type", &kind_side(kind), &kind_side(current.kind)));
            }
            if let Some((arg, received, now)) = options.difference(&current.options) {
                return Err(inequivalent(&arg, &received, &now));
            }
            return Ok(());
        }
        let exchange = Arc::new(Exchange::new(name.into(), self.id(), kind, options));
        let mut map = (**self.exchanges.load()).clone();
        map.insert(Arc::clone(&exchange.name), exchange);
        self.exchanges.store(Arc::new(map));
        Ok(())
    }

    pub(crate) fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), DeleteError> {
        if name.is_empty() {
            return Err(DeleteError::AccessRefused("operation not permitted on the default exchange".into()));
        }
        if name.starts_with("amq.") {
            return Err(DeleteError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.vhost
            )));
        }
        let mut registry = self.registry.lock();
        // As in RabbitMQ since 3.2, deleting what does not exist succeeds.
        let Some(exchange) = self.exchanges.load().get(name).cloned() else { return Ok(()) };
        if if_unused && registry.binding_count.get(&exchange.id).copied().unwrap_or(0) > 0 {
            return Err(DeleteError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.vhost
            )));
        }
        self.remove_exchange(&mut registry, &exchange);
        Ok(())
    }

    /// Removes an exchange and every binding from or to it, then auto-deletes
    /// the sources that lost their last binding.
    fn remove_exchange(&self, registry: &mut Registry, exchange: &Arc<Exchange>) {
        let mut map = (**self.exchanges.load()).clone();
        if !map.get(&exchange.name).is_some_and(|e| Arc::ptr_eq(e, exchange)) {
            return;
        }
        map.remove(&exchange.name);
        self.exchanges.store(Arc::new(map));
        exchange.mark_deleted();
        let id = exchange.id;
        let keys: Vec<BindingKey> =
            registry.keys_from(id).chain(registry.keys_to(DestId::Exchange(id))).cloned().collect();
        self.remove_bindings(registry, keys);
        registry.binding_count.remove(&id);
        exchange.routes.store(Arc::new(Routes::empty(exchange.kind)));
    }

    // ----- queues --------------------------------------------------------

    pub(crate) fn declare_queue(
        &self,
        conn: u64,
        name: &str,
        options: QueueOptions,
    ) -> Result<String, DeclareError> {
        check_name(name)?;
        let mut registry = self.registry.lock();
        let queues = self.queues.load();
        if options.passive {
            let queue = queues.get(name).ok_or_else(|| DeclareError::NotFound(self.no_queue(name)))?;
            if !queue.accessible_by(conn) {
                return Err(DeclareError::ResourceLocked(name.into()));
            }
            return Ok(name.into());
        }
        let name = if name.is_empty() {
            loop {
                let candidate = self.generate_name("amq.gen-");
                if !queues.contains_key(candidate.as_str()) {
                    break candidate;
                }
            }
        } else if name.starts_with("amq.") {
            return Err(DeclareError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        } else {
            name.to_owned()
        };
        let policy = options.policy().map_err(|(arg, why)| {
            DeclareError::PreconditionFailed(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}': {why}",
                self.vhost
            ))
        })?;
        if let Some(current) = queues.get(name.as_str()) {
            // RabbitMQ checks exclusivity before the other options: a
            // mismatch either way is RESOURCE_LOCKED, not an inequivalent arg.
            if !current.accessible_by(conn) || options.exclusive != current.options.exclusive {
                return Err(DeclareError::ResourceLocked(name));
            }
            if let Some((arg, received, now)) = options.difference(&policy, &current.options, &current.policy)
            {
                return Err(DeclareError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': {}",
                    self.vhost,
                    inequivalent_phrase(&received, &now)
                )));
            }
            current.touch();
            return Ok(name);
        }
        let owner = options.exclusive.then_some(conn);
        let options = QueueOptions { passive: false, ..options };
        let context = QueueContext {
            statistics: self.options.statistics,
            clock: self.options.clock.clone(),
            timers: Arc::clone(&self.timers),
            broker: Weak::clone(&self.me) as Weak<dyn QueueOwner>,
            flow: self.flow.clone(),
            activity: Arc::clone(&self.activity),
            observers: Arc::clone(&self.observers),
            faults: Arc::clone(&self.faults),
        };
        let queue = Queue::new(name.as_str().into(), self.id(), options, policy, owner, context);
        if owner.is_some() {
            registry.exclusive.entry(conn).or_default().push(Arc::clone(&queue));
        }
        let mut map = (**queues).clone();
        map.insert(Arc::clone(&queue.name), queue);
        self.queues.store(Arc::new(map));
        Ok(name)
    }

    /// Looks a queue up for connection `conn`, refusing a missing queue or
    /// one exclusive to another connection.
    pub(crate) fn queue_for(&self, conn: u64, name: &str) -> Result<Arc<Queue>, QueueRefusal> {
        let queue = self.queue(name).ok_or_else(|| QueueRefusal::NotFound(self.no_queue(name)))?;
        if queue.accessible_by(conn) { Ok(queue) } else { Err(QueueRefusal::Locked(name.into())) }
    }

    pub(crate) fn delete_queue(
        &self,
        conn: u64,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, DeleteError> {
        let mut registry = self.registry.lock();
        let queue = match self.queue_for(conn, name) {
            Ok(queue) => queue,
            // As in RabbitMQ since 3.2, deleting what does not exist succeeds.
            Err(QueueRefusal::NotFound(_)) => return Ok(0),
            Err(locked) => return Err(locked.into()),
        };
        self.remove_queue(&mut registry, &queue, if_unused, if_empty).map_err(|refused| {
            let why = match refused {
                DeleteRefused::InUse | DeleteRefused::NotIdle => "in use",
                DeleteRefused::NotEmpty => "not empty",
            };
            DeleteError::PreconditionFailed(format!("queue '{name}' in vhost '{}' {why}", self.vhost))
        })
    }

    /// Deletes a queue (see [`Queue::delete_if`]) and takes it out of the
    /// topology; returns how many messages were ready.
    fn remove_queue(
        &self,
        registry: &mut Registry,
        queue: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, DeleteRefused> {
        self.remove_queue_if(registry, queue, if_unused, if_empty, None)
    }

    /// [`remove_queue`](Self::remove_queue), also refusing a queue with
    /// `expires` used since `expiring_at` minus its expiry.
    fn remove_queue_if(
        &self,
        registry: &mut Registry,
        queue: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
        expiring_at: Option<Instant>,
    ) -> Result<usize, DeleteRefused> {
        let mut map = (**self.queues.load()).clone();
        if !map.get(&queue.name).is_some_and(|q| Arc::ptr_eq(q, queue)) {
            return Ok(0);
        }
        // Marked first: a publisher still holding the old snapshot finds the
        // queue deleted and does not count it as routed.
        let dropped = queue.delete_if(if_unused, if_empty, expiring_at)?;
        map.remove(&queue.name);
        self.queues.store(Arc::new(map));
        let keys: Vec<BindingKey> = registry.keys_to(DestId::Queue(queue.id)).cloned().collect();
        self.remove_bindings(registry, keys);
        if let Some(owner) = queue.owner
            && let Some(owned) = registry.exclusive.get_mut(&owner)
        {
            owned.retain(|q| !Arc::ptr_eq(q, queue));
        }
        Ok(dropped)
    }

    /// Deletes an auto-delete queue whose last consumer just went, unless a
    /// new consumer came meanwhile (then `if_unused` refuses, and it stays).
    pub(crate) fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        let mut registry = self.registry.lock();
        let _still_used = self.remove_queue(&mut registry, queue, true, false);
    }

    /// Deletes the exclusive queues of connection `conn`, which is closing.
    pub(crate) fn delete_exclusive_queues(&self, conn: u64) {
        let mut registry = self.registry.lock();
        for queue in registry.exclusive.remove(&conn).unwrap_or_default() {
            let unconditional = self.remove_queue(&mut registry, &queue, false, false);
            debug_assert!(unconditional.is_ok());
        }
    }

    pub(crate) fn purge_queue(&self, conn: u64, name: &str) -> Result<usize, DeleteError> {
        let queue = self.queue_for(conn, name)?;
        Ok(queue.purge())
    }

    // ----- bindings ------------------------------------------------------

    /// Resolves both ends of a binding.
    fn binding_ends(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
    ) -> Result<(Arc<Exchange>, Dest), BindError> {
        if key.len() > MAX_NAME_LEN {
            return Err(BindError::InvalidName("binding key longer than 255 bytes"));
        }
        if source.is_empty() || (to_exchange && destination.is_empty()) {
            return Err(BindError::AccessRefused("operation not permitted on the default exchange".into()));
        }
        let exchanges = self.exchanges.load();
        let dest = if to_exchange {
            Dest::Exchange(
                exchanges
                    .get(destination)
                    .cloned()
                    .ok_or_else(|| BindError::NotFound(self.no_exchange(destination)))?,
            )
        } else {
            Dest::Queue(self.queue_for(conn, destination)?)
        };
        let source =
            exchanges.get(source).cloned().ok_or_else(|| BindError::NotFound(self.no_exchange(source)))?;
        Ok((source, dest))
    }

    pub(crate) fn bind(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), BindError> {
        let mut registry = self.registry.lock();
        let (source, dest) = self.binding_ends(conn, destination, to_exchange, source, key)?;
        let matcher = compile_arguments(source.kind, &arguments).map_err(BindError::PreconditionFailed)?;
        let binding_key = BindingKey { source: source.id, dest: dest.id(), key: key.to_owned() };
        let entry = registry.entry(binding_key, &source, &dest);
        if entry.args.iter().any(|(a, _)| *a == arguments) {
            return Ok(());
        }
        entry.args.push((arguments, matcher.clone()));
        *registry.binding_count.entry(source.id).or_default() += 1;
        apply_edits(&source, [RouteEdit { key: key.to_owned(), matcher, dest, add: true }]);
        Ok(())
    }

    pub(crate) fn unbind(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), BindError> {
        let mut registry = self.registry.lock();
        let (source, dest) = match self.binding_ends(conn, destination, to_exchange, source, key) {
            Ok(ends) => ends,
            // As in RabbitMQ since 3.2, removing what does not exist succeeds.
            Err(BindError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let binding_key = BindingKey { source: source.id, dest: dest.id(), key: key.to_owned() };
        let Some(entry) = registry.bindings.get_mut(&binding_key) else { return Ok(()) };
        let Some(index) = entry.args.iter().position(|(a, _)| a == arguments) else { return Ok(()) };
        let (_, matcher) = entry.args.remove(index);
        if entry.args.is_empty() {
            registry.take(&binding_key);
        }
        apply_edits(&source, [RouteEdit { key: key.to_owned(), matcher, dest, add: false }]);
        self.forget_bindings(&mut registry, &[(source, 1)]);
        Ok(())
    }

    /// Removes the bindings `keys`, updates the routing tables of their
    /// sources, and auto-deletes sources left with none.
    fn remove_bindings(&self, registry: &mut Registry, keys: Vec<BindingKey>) {
        let mut edits: HashMap<u64, (Arc<Exchange>, Vec<RouteEdit>)> = HashMap::new();
        for key in keys {
            // A key may be listed twice (an exchange bound to itself).
            let Some(entry) = registry.take(&key) else { continue };
            let (_, list) =
                edits.entry(entry.source.id).or_insert_with(|| (Arc::clone(&entry.source), Vec::new()));
            for (_, matcher) in entry.args {
                list.push(RouteEdit {
                    key: entry.key.clone(),
                    matcher,
                    dest: entry.dest.clone(),
                    add: false,
                });
            }
        }
        let mut removed = Vec::new();
        for (_, (source, list)) in edits {
            let n = list.len();
            apply_edits(&source, list);
            removed.push((source, n));
        }
        self.forget_bindings(registry, &removed);
    }

    /// Lowers binding counts; an auto-delete exchange that loses its last
    /// binding is deleted (which may cascade).
    fn forget_bindings(&self, registry: &mut Registry, removed: &[(Arc<Exchange>, usize)]) {
        for (source, n) in removed {
            let count = registry.binding_count.entry(source.id).or_default();
            *count = count.saturating_sub(*n);
            if *count == 0 && source.options.auto_delete {
                self.remove_exchange(registry, source);
            }
        }
    }
}

/// Applies edits to an exchange's routing table and publishes the result.
fn apply_edits(exchange: &Exchange, edits: impl IntoIterator<Item = RouteEdit>) {
    let mut routes = Routes::clone(&exchange.routes.load());
    for edit in edits {
        if edit.add {
            routes.add(&edit.key, edit.matcher, edit.dest);
        } else {
            routes.remove(&edit.key, edit.matcher.as_ref(), &edit.dest);
        }
    }
    exchange.routes.store(Arc::new(routes));
}

impl Drop for BrokerInner {
    fn drop(&mut self) {
        self.timers.shutdown();
        // Exchange bindings may form cycles of `Arc`s; empty every table so
        // they are freed.
        for exchange in self.exchanges.load().values() {
            exchange.routes.store(Arc::new(Routes::empty(exchange.kind)));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_unique_and_shaped_like_rabbitmqs() {
        let broker = Broker::new();
        let a = broker.inner.generate_name("amq.gen-");
        let b = broker.inner.generate_name("amq.gen-");
        assert_ne!(a, b);
        assert!(a.starts_with("amq.gen-") && a.len() == 30, "{a}");
    }
}
