//! A window into the running bus, for tests and operators: settling,
//! conversations, recording and tapping, where a message would go, lint
//! findings, fault injection, the overview and the flow state, and the
//! default virtual host's names, bindings and queue figures.

use std::time::Duration;

use super::Broker;
use crate::conversation::{Conversation, ConversationHost};
use crate::error::ConsumeError;
use crate::exchange::BindingInfo;
use crate::explain::RouteExplanation;
use crate::faults::FaultInjector;
use crate::field::FieldTable;
use crate::flow::FlowStatus;
use crate::lint::LintFinding;
use crate::observe::{Event, Tap};
use crate::overview::{ExchangeOverview, Overview, QueueOverview};
use crate::queue::{Queue, QueueStats};
use crate::recorder::Recorder;
use crate::settle::{Pending, PendingQueue, SettleError, wait_until_settled};
use crate::sync::Arc;

impl Broker {
    /// Counts for queue `name`, as [`Connection::queue_stats`](crate::Connection::queue_stats)
    /// gives them (without its connection's checks).
    ///
    /// # Errors
    ///
    /// [`ConsumeError::NotFound`] if there is no such queue.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, ConsumeError> {
        self.default_view().queue_stats(name)
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
        match &self.inner.core.flow {
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
            self.pending(&keep)
        })
    }

    /// Starts following a new conversation: stamp its first message with
    /// [`Conversation::stamp`], then [`Conversation::settle`] waits for
    /// everything that message caused. The id is fresh and unguessable
    /// (`conv-` and 22 characters).
    pub fn conversation(&self) -> Conversation {
        let id = self.inner.core.generate_name("conv-");
        self.follow(&id)
    }

    /// Follows the conversation `id` — one started elsewhere, whose id a
    /// message carries in [`CONVERSATION_ID_HEADER`](crate::CONVERSATION_ID_HEADER).
    /// Only messages enqueued from now on are counted.
    pub fn follow_conversation(&self, id: &str) -> Conversation {
        self.follow(id)
    }

    /// Starts recording what the bus does, for a test's assertions: see
    /// [`Recorder`]. Recording stops when the recorder is dropped.
    pub fn record(&self) -> Recorder {
        Recorder::attach(&self.inner.core.observers)
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
        let observers = Arc::clone(&self.inner.core.observers);
        let id = observers.attach(Arc::new(move |_seq, event: &Event| observer(event)));
        Tap { observers, id }
    }

    /// Says, without publishing, where a message published to `exchange` in
    /// the default virtual host ([`VirtualHost::explain_route`](crate::VirtualHost::explain_route) for others)
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
        self.default_view().explain_route(exchange, routing_key, headers)
    }

    /// Checks the default virtual host's topology ([`VirtualHost::lint`](crate::VirtualHost::lint)
    /// for others) for what is probably a mistake: exchanges with
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
        self.default_view().lint()
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
        FaultInjector::new(Arc::clone(&self.inner.core.faults), seed)
    }

    /// Every queue's and exchange's counters and gauges in one snapshot
    /// (serialisable): published, routed, unroutable, delivered,
    /// redelivered, acknowledged, nacked, rejected, dead-lettered, expired,
    /// dropped, purged; ready, delayed, unacknowledged, consumers, bytes.
    /// The snapshot is read so that no message moved between queues while
    /// it was (retried a few times; [`Overview::consistent`] says whether
    /// it managed). Message counters need [`BrokerOptions::statistics`](crate::BrokerOptions::statistics)
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
        let vhosts = self.vhosts();
        let mut tries = 0;
        loop {
            tries += 1;
            let queues: Vec<(&str, Vec<Arc<Queue>>)> =
                vhosts.iter().map(|v| (v.name(), v.queues_snapshot())).collect();
            let (stats, in_flight) = self.inner.core.activity.consistent(|| {
                queues
                    .iter()
                    .flat_map(|(vhost, queues)| queues.iter().map(move |q| (*vhost, q.stats())))
                    .collect::<Vec<(&str, QueueStats)>>()
            });
            if in_flight == 0 || tries == 5 {
                let mut queues: Vec<QueueOverview> = stats
                    .iter()
                    .map(|(vhost, stats)| QueueOverview {
                        vhost: (*vhost).into(),
                        ..QueueOverview::from(stats)
                    })
                    .collect();
                queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
                let mut exchanges: Vec<ExchangeOverview> = vhosts
                    .iter()
                    .flat_map(|v| v.exchanges_snapshot().into_iter().map(move |e| (v.name(), e)))
                    .map(|(vhost, e)| {
                        let (routed, unroutable) = e.counters.read();
                        ExchangeOverview {
                            vhost: vhost.into(),
                            name: e.name.to_string(),
                            kind: e.kind,
                            published: routed + unroutable,
                            routed,
                            unroutable,
                        }
                    })
                    .collect();
                exchanges.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
                let links = self.inner.core.link_overviews();
                return Overview { queues, exchanges, consistent: in_flight == 0, links };
            }
            std::thread::yield_now();
        }
    }

    /// The names of the default virtual host's queues, sorted (see
    /// [`vhost`](Self::vhost) for others).
    pub fn queue_names(&self) -> Vec<String> {
        self.default_view().queue_names()
    }

    /// The names of the default virtual host's exchanges (including `""`
    /// and `amq.*`), sorted.
    pub fn exchange_names(&self) -> Vec<String> {
        self.default_view().exchange_names()
    }

    /// The default virtual host's bindings, sorted by source, destination
    /// and key. The default exchange's implicit bindings are not listed.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        self.default_view().bindings()
    }

    /// One look for a settle: what is pending in every virtual host, read
    /// consistently (see [`crate::settle`]).
    pub(crate) fn pending(&self, keep: &impl Fn(&PendingQueue) -> bool) -> Pending {
        self.inner.pending(keep)
    }

    fn follow(&self, id: &str) -> Conversation {
        let tracker = self.inner.core.conversations.follow(id);
        Conversation::new(id, tracker, Arc::clone(&self.inner) as Arc<dyn ConversationHost>)
    }
}
