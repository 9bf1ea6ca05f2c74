//! Virtual hosts: each owns a topology — exchanges, queues, bindings,
//! direct reply-to addresses — and routes within it. Nothing routes
//! between virtual hosts; names in one never collide with names in another.
//!
//! Publishers read two maps (exchanges by name, queues by name), each an
//! immutable snapshot behind an `ArcSwap`, and each exchange's routing
//! table, also behind an `ArcSwap`: routing takes no lock at all. Topology
//! changes (declare, bind, delete) serialise on the virtual host's registry
//! mutex, build new snapshots and swap them in.
//!
//! - [`publish`]: the publish path, top to bottom, and routing.
//! - [`topology`]: declaring and deleting exchanges and queues, binding.
//! - [`registry`]: the bindings, indexed, and edits to routing tables.
//!
//! Access control is not here: a connection asks [`crate::access`] before
//! it calls in, so a virtual host never knows who is asking.

pub(crate) mod batch;
pub(crate) mod publish;
mod registry;
pub(crate) mod route_cache;
pub(crate) mod topology;

use std::collections::HashMap;

use arc_swap::ArcSwap;

use crate::core::Core;
use crate::error::ConsumeError;
use crate::exchange::{BindingInfo, Exchange, ExchangeKind, ExchangeOptions, Routes};
use crate::explain::{ExchangeFacts, RouteExplanation, TopologyView};
use crate::field::FieldTable;
use crate::hash::FastImblMap;
use crate::lint::{LintFinding, QueueFacts};
use crate::queue::Envelope;
use crate::queue::{Queue, QueueStats};
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, Weak};

use registry::{BindingEntry, Registry};

/// Exchanges by name: a persistent map, so a topology change copies a path,
/// not the whole map, while publishers keep reading the previous version.
pub(crate) type ExchangeMap = FastImblMap<Arc<str>, Arc<Exchange>>;
/// Queues by name, likewise.
pub(crate) type QueueMap = FastImblMap<Arc<str>, Arc<Queue>>;
/// Direct reply-to addresses of connections, likewise.
type ReplyMap = FastImblMap<Arc<str>, Weak<dyn ReplyTarget>>;

/// The prefix of direct reply-to addresses, as in RabbitMQ.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Where a reply to a direct reply-to address goes: a connection's waiting
/// calls ([`crate::rpc`]), seen from routing through this one method.
pub(crate) trait ReplyTarget: Send + Sync + std::fmt::Debug {
    /// A reply was published to this address.
    fn deliver(&self, envelope: &Arc<Envelope>);
}

/// The name of the default virtual host, which every broker has.
pub const DEFAULT_VHOST: &str = "/";

/// One virtual host's topology and routing (see the module docs).
#[derive(Debug)]
pub(crate) struct Vhost {
    /// Itself, for the queues it creates (dead-lettering routes through it).
    me: Weak<Vhost>,
    name: Box<str>,
    exchanges: ArcSwap<ExchangeMap>,
    queues: ArcSwap<QueueMap>,
    replies: ArcSwap<ReplyMap>,
    registry: Mutex<Registry>,
    /// Bumped after every store of the exchange map, the queue map or a
    /// routing table: a cached route (see [`route_cache`]) holds while it
    /// is unchanged.
    topology_epoch: AtomicU64,
    /// Set once by `delete_vhost`: connections to it are closed.
    deleted: AtomicBool,
    pub(crate) core: Arc<Core>,
}

impl Vhost {
    /// A virtual host named `name` with the standard exchanges: the default
    /// exchange `""`, `amq.direct`, `amq.fanout`, `amq.topic`,
    /// `amq.headers` and `amq.match`.
    pub(crate) fn new(name: &str, core: Arc<Core>) -> Arc<Vhost> {
        let vhost = Arc::new_cyclic(|me| Vhost {
            me: Weak::clone(me),
            name: name.into(),
            exchanges: ArcSwap::from_pointee(ExchangeMap::default()),
            queues: ArcSwap::from_pointee(QueueMap::default()),
            replies: ArcSwap::from_pointee(ReplyMap::default()),
            registry: Mutex::new(Registry::default()),
            topology_epoch: AtomicU64::new(1),
            deleted: AtomicBool::new(false),
            core,
        });
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
            let exchange = Exchange::new(name.into(), vhost.core.id(), kind, options);
            map.insert(Arc::clone(&exchange.name), Arc::new(exchange));
        }
        vhost.exchanges.store(Arc::new(map));
        vhost
    }

    /// Records a change of what routing reads (after it is stored): every
    /// cached route of this virtual host is stale from here.
    pub(super) fn topology_changed(&self) {
        self.topology_epoch.fetch_add(1, Ordering::Release);
    }

    /// The virtual host's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether `delete_vhost` took it away.
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Deletes every queue (cancelling their consumers) and exchange, and
    /// marks the virtual host deleted, so its connections see it closed.
    pub(crate) fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        let mut registry = self.registry.lock();
        for queue in self.queues_snapshot() {
            let _unconditional = self.remove_queue(&mut registry, &queue, false, false);
        }
        for exchange in self.exchanges_snapshot() {
            self.remove_exchange(&mut registry, &exchange);
        }
    }

    /// A fresh direct reply-to address (`amq.rabbitmq.reply-to.…`).
    pub(crate) fn generate_reply_address(&self) -> String {
        self.core.generate_name(&format!("{DIRECT_REPLY_TO}."))
    }

    /// Routes replies published to `address` to `target`.
    pub(crate) fn register_reply_target(&self, address: Arc<str>, target: Weak<dyn ReplyTarget>) {
        let _registry = self.registry.lock();
        let mut map = (**self.replies.load()).clone();
        map.insert(address, target);
        self.replies.store(Arc::new(map));
    }

    /// Takes a direct reply-to address out of routing.
    pub(crate) fn unregister_reply_target(&self, name: &str) {
        let _registry = self.registry.lock();
        let mut map = (**self.replies.load()).clone();
        map.remove(name);
        self.replies.store(Arc::new(map));
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

    pub(crate) fn exchange_count(&self) -> usize {
        self.exchanges.load().len()
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queues.load().len()
    }

    pub(crate) fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.load().get(name).cloned()
    }

    /// The exchange named `name`, for a `Publisher`.
    pub(crate) fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.load().get(name).cloned()
    }

    pub(crate) fn no_exchange(&self, name: &str) -> String {
        format!("no exchange '{name}' in vhost '{}'", self.name)
    }

    pub(crate) fn no_queue(&self, name: &str) -> String {
        format!("no queue '{name}' in vhost '{}'", self.name)
    }

    /// Every binding, sorted by source, destination and key.
    pub(crate) fn bindings(&self) -> Vec<BindingInfo> {
        let registry = self.registry.lock();
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

impl Drop for Vhost {
    fn drop(&mut self) {
        // Exchange bindings may form cycles of `Arc`s; empty every table so
        // they are freed.
        for exchange in self.exchanges.load().values() {
            exchange.routes.store(Arc::new(Routes::empty(exchange.kind)));
        }
    }
}

/// A view of one virtual host, for inspection: its queues, exchanges and
/// bindings, the path a message would take, and lint findings. Get one with
/// [`Broker::vhost`](crate::Broker::vhost); the broker's own inspection
/// methods read the default virtual host `/`.
///
/// ```
/// use interoffice::{Broker, ConnectOptions, Permissions, QueueOptions};
/// let broker = Broker::new();
/// broker.add_vhost("billing")?;
/// broker.set_permissions("guest", "billing", &Permissions::full())?;
/// let conn = broker.connect_with(ConnectOptions { vhost: "billing".into(), ..Default::default() })?;
/// conn.declare_queue("invoices", QueueOptions::default())?;
/// assert_eq!(broker.vhost("billing").unwrap().queue_names(), ["invoices"]);
/// assert!(broker.queue_names().is_empty(), "the default vhost has no queue 'invoices'");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct VirtualHost {
    pub(crate) inner: Arc<Vhost>,
}

impl std::fmt::Debug for VirtualHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualHost")
            .field("name", &self.inner.name)
            .field("exchanges", &self.inner.exchanges.load().len())
            .field("queues", &self.inner.queues.load().len())
            .finish_non_exhaustive()
    }
}

impl VirtualHost {
    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Counts for queue `name`, as [`Connection::queue_stats`](crate::Connection::queue_stats)
    /// gives them (without its connection's checks).
    ///
    /// # Errors
    ///
    /// [`ConsumeError::NotFound`] if there is no such queue.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, ConsumeError> {
        match self.inner.queue(name) {
            Some(queue) => Ok(queue.stats()),
            None => Err(ConsumeError::NotFound(self.inner.no_queue(name))),
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
        self.inner.bindings()
    }

    /// Where a message would go: see [`Broker::explain_route`](crate::Broker::explain_route).
    pub fn explain_route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> RouteExplanation {
        self.inner.topology_view().explain(exchange, routing_key, headers)
    }

    /// What is probably a mistake in this virtual host's topology: see
    /// [`Broker::lint`](crate::Broker::lint).
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
}
