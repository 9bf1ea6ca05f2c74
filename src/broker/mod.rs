//! The broker: the front door. It holds the virtual hosts (each with its
//! own topology and routing, see [`crate::vhost`]), the users and the auth
//! backend (see [`Permission`](crate::Permission)), and the services they share (see
//! [`crate::core`]); it opens connections, and answers for the whole bus:
//! settling, recording, overview, faults.
//!
//! - [`tenancy`]: virtual hosts, users, permissions.
//! - [`observing`]: the window into the running bus.

mod durability;
mod observing;
mod tenancy;

use std::collections::BTreeMap;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access::grant::Grant;
use crate::access::{
    AccessRefused, AuthBackend, AuthenticatedUser, Credentials, DEFAULT_USER, Permissions, Refusal,
    Unrestricted, UserStore,
};
use crate::clock::{Clock, ManualClock};
use crate::connection::Connection;
use crate::conversation::{ConversationHost, Tracker};
use crate::core::InlineWorkers;
use crate::core::{Core, Settings, Startup};
use crate::error::ConnectError;
use crate::queue::Queue;
use crate::settle::{Pending, PendingQueue};
use crate::sync::{Arc, Mutex};
use crate::vhost::{DEFAULT_VHOST, Vhost, VirtualHost};

/// The longest name (of a queue or exchange) or routing key, in bytes: AMQP's short string.
pub const MAX_NAME_LEN: usize = 255;

/// Broker-wide settings.
///
/// ```
/// use interoffice::{Broker, BrokerOptions};
/// let broker = Broker::with_options(BrokerOptions { max_message_size: 1 << 20, ..Default::default() });
/// # drop(broker);
/// ```
#[derive(Clone)]
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
    /// the cost of keeping them is measured in the benchmarks (PERFORMANCE.md,
    /// "Statistics") and is within a few percent.
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
    /// Who decides access (see [`Permission`](crate::Permission)): `None` (the default)
    /// is the broker's built-in [`UserStore`](crate::UserStore), which
    /// [`Broker::add_user`](crate::Broker::add_user) and
    /// [`Broker::set_permissions`](crate::Broker::set_permissions) edit.
    pub auth_backend: Option<Arc<dyn AuthBackend>>,
    /// The data directory's settings, for [`Broker::open`] (ignored by a
    /// broker without one): the sync policy and the segment size.
    pub store: crate::StoreOptions,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("max_message_size", &self.max_message_size)
            .field("clock", &self.clock)
            .field("statistics", &self.statistics)
            .field("memory_high_watermark", &self.memory_high_watermark)
            .field("inline_workers", &self.inline_workers)
            .field("name_seed", &self.name_seed)
            .field("auth_backend", &self.auth_backend.as_ref().map(|_| "custom"))
            .field("store", &self.store)
            .finish()
    }
}

/// Equal when every setting is, and both use the built-in store or the
/// very same backend.
impl PartialEq for BrokerOptions {
    fn eq(&self, other: &Self) -> bool {
        self.max_message_size == other.max_message_size
            && self.clock == other.clock
            && self.statistics == other.statistics
            && self.memory_high_watermark == other.memory_high_watermark
            && self.inline_workers == other.inline_workers
            && self.name_seed == other.name_seed
            && self.store == other.store
            && match (&self.auth_backend, &other.auth_backend) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            }
    }
}

impl Eq for BrokerOptions {}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            max_message_size: 128 << 20,
            clock: Clock::system(),
            statistics: true,
            memory_high_watermark: None,
            inline_workers: false,
            name_seed: None,
            auth_backend: None,
            store: crate::StoreOptions::default(),
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

/// Virtual hosts by name.
type VhostMap = BTreeMap<Box<str>, Arc<Vhost>>;

/// Options of [`Broker::connect_with`]: where to connect, as whom.
/// The default is RabbitMQ's: virtual host `/`, user `guest`, password
/// `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The virtual host.
    pub vhost: String,
    /// The user.
    pub user: String,
    /// The user's credentials (never shown by `Debug`).
    pub credentials: Credentials,
    /// A name for the connection, shown in its `Debug` output.
    pub name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new(DEFAULT_VHOST, DEFAULT_USER, Credentials::password(DEFAULT_USER))
    }
}

impl ConnectOptions {
    /// To `vhost` as `user` with `credentials`, unnamed.
    pub fn new(vhost: &str, user: &str, credentials: Credentials) -> Self {
        ConnectOptions { vhost: vhost.into(), user: user.into(), credentials, name: None }
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
        let vhosts = self.inner.vhosts.load();
        f.debug_struct("Broker")
            .field("vhosts", &vhosts.len())
            .field("exchanges", &vhosts.values().map(|v| v.exchange_count()).sum::<usize>())
            .field("queues", &vhosts.values().map(|v| v.queue_count()).sum::<usize>())
            .field("clock", &self.inner.core.settings.clock)
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
    /// the same interleaving, and a [`Recorder`](crate::Recorder) the same trace, every run.
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
        self.inner.core.inline_workers.as_ref().map_or(0, InlineWorkers::run_until_idle)
    }

    /// A broker with `options`.
    pub fn with_options(options: BrokerOptions) -> Self {
        Broker::build(options, None, None)
    }

    /// A broker with `options`, and a data directory's store if it has one.
    fn build(
        options: BrokerOptions,
        store: Option<Arc<crate::durable::Store>>,
        topology_journal: Option<Arc<dyn crate::core::TopologyJournal>>,
    ) -> Self {
        let users = UserStore::new();
        let _fresh =
            users.add_user(DEFAULT_USER, Some(&Credentials::password(DEFAULT_USER)), &["administrator"]);
        let _fresh = users.set_permissions(DEFAULT_USER, DEFAULT_VHOST, &Permissions::full());
        let backend: Arc<dyn AuthBackend> = match &options.auth_backend {
            Some(backend) => Arc::clone(backend),
            None => Arc::new(users.clone()),
        };
        let settings = Settings {
            max_message_size: options.max_message_size,
            clock: options.clock,
            statistics: options.statistics,
        };
        let core = Arc::new(Core::new(Startup {
            settings,
            memory_high_watermark: options.memory_high_watermark,
            inline_workers: options.inline_workers,
            name_seed: options.name_seed,
            store,
            topology_journal,
        }));
        let default_vhost = Vhost::new(DEFAULT_VHOST, Arc::clone(&core));
        let mut vhosts = VhostMap::new();
        vhosts.insert(DEFAULT_VHOST.into(), Arc::clone(&default_vhost));
        let inner = Arc::new(BrokerInner {
            core,
            default_vhost,
            vhosts: ArcSwap::from_pointee(vhosts),
            vhosts_writer: Mutex::new(()),
            users,
            backend,
            recovery: Mutex::new(None),
        });
        Broker { inner }
    }

    /// The clock the broker reads (see [`BrokerOptions::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.inner.core.settings.clock
    }

    /// Opens a connection to the default virtual host `/` as the default
    /// user [`guest`](crate::DEFAULT_USER), without credentials: code in
    /// the process is trusted to be itself. What it may do is what the
    /// auth backend allows `guest` (by default, everything in `/`).
    /// Dropping it closes it.
    pub fn connect(&self) -> Connection {
        self.open_trusted(None)
    }

    /// Opens a connection with a name, shown in its `Debug` output.
    pub fn connect_named(&self, name: impl Into<String>) -> Connection {
        self.open_trusted(Some(name.into()))
    }

    fn open_trusted(&self, name: Option<String>) -> Connection {
        let user = self.inner.backend.trusted_user(DEFAULT_USER);
        let grant = Grant::new(user, DEFAULT_VHOST, Arc::clone(&self.inner.backend));
        Connection::open(self.clone(), Arc::clone(&self.inner.default_vhost), grant, name)
    }

    /// Opens a connection as `options.user`, authenticated with
    /// `options.credentials`, to virtual host `options.vhost` — as an AMQP
    /// client logs in. Every operation on it is then checked against the
    /// user's permissions there (see [`Permission`](crate::Permission)).
    ///
    /// # Errors
    ///
    /// [`ConnectError::AccessRefused`] for an unknown user or wrong
    /// credentials (not told apart) or a user without access to the
    /// virtual host; [`ConnectError::VhostNotFound`].
    ///
    /// ```
    /// use interoffice::{Broker, ConnectError, ConnectOptions, Credentials, Permissions};
    /// let broker = Broker::new();
    /// broker.add_vhost("shop")?;
    /// broker.add_user("billing", &Credentials::password("s3cret"), &[])?;
    /// broker.set_permissions("billing", "shop", &Permissions::new("^billing", "^billing", "^(billing|orders)"))?;
    ///
    /// let options = ConnectOptions::new("shop", "billing", Credentials::password("s3cret"));
    /// let conn = broker.connect_with(options.clone())?;
    /// assert_eq!(conn.user(), "billing");
    ///
    /// let wrong = ConnectOptions { credentials: Credentials::password("guess"), ..options };
    /// assert!(matches!(broker.connect_with(wrong), Err(ConnectError::AccessRefused(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(&self, options: ConnectOptions) -> Result<Connection, ConnectError> {
        let ConnectOptions { vhost, user, credentials, name } = options;
        let refused = |refusal| AccessRefused { user: user.clone(), vhost: vhost.clone(), refusal };
        let authenticated =
            self.inner.backend.authenticate(&user, &credentials).map_err(|_| refused(Refusal::Login))?;
        let Some(host) = self.inner.vhosts.load().get(vhost.as_str()).cloned() else {
            return Err(ConnectError::VhostNotFound(vhost));
        };
        let grant = Grant::new(authenticated, &vhost, Arc::clone(&self.inner.backend));
        grant.check_vhost()?;
        Ok(Connection::open(self.clone(), host, grant, name))
    }

    /// A connection to `vhost` that may do anything there: for the
    /// broker's own administrative acts (loading definitions).
    pub(crate) fn connect_as_administrator(&self, vhost: Arc<Vhost>, name: &str) -> Connection {
        let user = AuthenticatedUser { name: DEFAULT_USER.into(), tags: Vec::new() };
        let grant = Grant::new(user, vhost.name(), Arc::new(Unrestricted));
        Connection::open(self.clone(), vhost, grant, Some(name.into()))
    }

    /// The default virtual host's view (what the inspection methods read).
    fn default_view(&self) -> VirtualHost {
        VirtualHost { inner: Arc::clone(&self.inner.default_vhost) }
    }

    /// Every virtual host, in name order.
    pub(crate) fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.inner.vhosts.load().values().cloned().collect()
    }

    /// The virtual host `name`, if it exists.
    pub(crate) fn vhost_arc(&self, name: &str) -> Option<Arc<Vhost>> {
        self.inner.vhosts.load().get(name).cloned()
    }
}

/// The broker's shared state.
pub(crate) struct BrokerInner {
    pub(crate) core: Arc<Core>,
    pub(crate) default_vhost: Arc<Vhost>,
    vhosts: ArcSwap<VhostMap>,
    /// Serialises adding and deleting virtual hosts.
    vhosts_writer: Mutex<()>,
    pub(crate) users: UserStore,
    backend: Arc<dyn AuthBackend>,
    /// What opening the data directory did, for a broker on one.
    recovery: Mutex<Option<crate::RecoveryReport>>,
}

impl Drop for BrokerInner {
    /// The queues' messages are dropped next: with a store, that is a
    /// shutdown, not their removal. The store is synced and its directory
    /// released.
    fn drop(&mut self) {
        if let Some(store) = &self.core.store {
            store.close();
        }
    }
}

impl BrokerInner {
    /// One look for a settle: what is pending in every virtual host, read
    /// consistently (see [`crate::settle`]).
    pub(crate) fn pending(&self, keep: &impl Fn(&PendingQueue) -> bool) -> Pending {
        let queues: Vec<(Arc<Vhost>, Vec<Arc<Queue>>)> = self
            .vhosts
            .load()
            .values()
            .cloned()
            .map(|v| {
                let q = v.queues_snapshot();
                (v, q)
            })
            .collect();
        let (queues, in_flight) = self.core.activity.consistent(|| {
            let mut pending: Vec<PendingQueue> = queues
                .iter()
                .flat_map(|(vhost, queues)| {
                    queues.iter().map(move |q| PendingQueue { vhost: vhost.name().into(), ..q.pending() })
                })
                .filter(|p| !p.is_empty() && keep(p))
                .collect();
            pending.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
            pending
        });
        Pending { in_flight, queues, ..Default::default() }
    }
}

/// What a followed conversation needs of its broker.
impl ConversationHost for BrokerInner {
    fn run_inline_workers(&self) {
        if let Some(workers) = &self.core.inline_workers {
            workers.run_until_idle();
        }
    }

    fn consistent(&self, read: &dyn Fn() -> u64) -> (u64, u64) {
        self.core.activity.consistent(read)
    }

    fn pending_queues(&self) -> Vec<PendingQueue> {
        self.pending(&|_| true).queues
    }

    fn unfollow(&self, id: &str, tracker: &Arc<Tracker>) {
        self.core.conversations.unfollow(id, tracker);
    }
}

impl std::fmt::Debug for BrokerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerInner").field("vhosts", &self.vhosts.load().len()).finish_non_exhaustive()
    }
}
