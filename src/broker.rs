//! The broker: the front door. It holds the virtual hosts (each with its
//! own topology and routing, see [`crate::vhost`]), the users and the auth
//! backend (see [`Permission`](crate::Permission)), and the services they share (see
//! [`crate::core`]); it opens connections, and answers for the whole bus:
//! settling, recording, overview, faults.

use std::collections::BTreeMap;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access::grant::Grant;
use crate::access::{
    AccessRefused, AuthBackend, AuthenticatedUser, Credentials, DEFAULT_USER, Permissions, Refusal,
    TopicPermissions, Unrestricted, UserError, UserStore,
};
use crate::clock::{Clock, ManualClock};
use crate::connection::Connection;
use crate::conversation::{Conversation, ConversationHost, Tracker};
use crate::core::InlineWorkers;
use crate::core::{Core, Settings, Startup};
use crate::error::{ConnectError, ConsumeError};
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
    /// Who decides access (see [`Permission`](crate::Permission)): `None` (the default)
    /// is the broker's built-in [`UserStore`](crate::UserStore), which
    /// [`Broker::add_user`](crate::Broker::add_user) and
    /// [`Broker::set_permissions`](crate::Broker::set_permissions) edit.
    pub auth_backend: Option<Arc<dyn AuthBackend>>,
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
        self.inner.core.inline_workers.as_ref().map_or(0, InlineWorkers::run_until_idle)
    }

    /// A broker with `options`.
    pub fn with_options(options: BrokerOptions) -> Self {
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

    /// Adds virtual host `name`, with the standard exchanges. Nobody but
    /// users given permissions there ([`set_permissions`](Self::set_permissions))
    /// may connect to it.
    ///
    /// # Errors
    ///
    /// [`UserError::VhostExists`], or an invalid name.
    pub fn add_vhost(&self, name: &str) -> Result<(), UserError> {
        crate::access::check_name(name)?;
        let _writer = self.inner.vhosts_writer.lock();
        let mut map = VhostMap::clone(&self.inner.vhosts.load());
        if map.contains_key(name) {
            return Err(UserError::VhostExists(name.into()));
        }
        map.insert(name.into(), Vhost::new(name, Arc::clone(&self.inner.core)));
        self.inner.vhosts.store(Arc::new(map));
        Ok(())
    }

    /// Deletes virtual host `name`: every queue in it (its messages, its
    /// consumers cancelled), every exchange, every permission there. Its
    /// connections are closed, as RabbitMQ closes them. The default
    /// virtual host cannot be deleted ([`UserError::DefaultVhost`]):
    /// [`connect`](Self::connect) uses it.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::DefaultVhost`].
    pub fn delete_vhost(&self, name: &str) -> Result<(), UserError> {
        if name == DEFAULT_VHOST {
            return Err(UserError::DefaultVhost);
        }
        let removed = {
            let _writer = self.inner.vhosts_writer.lock();
            let mut map = VhostMap::clone(&self.inner.vhosts.load());
            let removed = map.remove(name).ok_or_else(|| UserError::NoSuchVhost(name.into()))?;
            self.inner.vhosts.store(Arc::new(map));
            removed
        };
        removed.delete();
        self.inner.users.forget_vhost(name);
        Ok(())
    }

    /// A view of virtual host `name`, for inspection.
    pub fn vhost(&self, name: &str) -> Option<VirtualHost> {
        self.inner.vhosts.load().get(name).map(|inner| VirtualHost { inner: Arc::clone(inner) })
    }

    /// The names of all virtual hosts, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        self.inner.vhosts.load().keys().map(|k| k.to_string()).collect()
    }

    /// The built-in users and permissions (whether or not a custom
    /// [`AuthBackend`] decides): add users, set permissions and topic
    /// permissions, list them.
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }

    /// Adds user `name` with a password (stored as a salted hash, compared
    /// in constant time) and `tags` (see [`IMPERSONATOR_TAG`](crate::IMPERSONATOR_TAG)).
    /// A new user has no permissions anywhere.
    ///
    /// # Errors
    ///
    /// [`UserError::UserExists`], or an invalid name.
    pub fn add_user(&self, name: &str, credentials: &Credentials, tags: &[&str]) -> Result<(), UserError> {
        self.inner.users.add_user(name, Some(credentials), tags)
    }

    /// Deletes user `name` and its permissions. Its open connections keep
    /// their identity but lose every permission at their next operation.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn delete_user(&self, name: &str) -> Result<(), UserError> {
        self.inner.users.delete_user(name)
    }

    /// Sets `user`'s permissions in virtual host `vhost` (see
    /// [`Permissions`]). Takes effect for the next operation of every
    /// connection, open ones included.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`], or a pattern
    /// that does not compile.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: &Permissions,
    ) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.set_permissions(user, vhost, permissions)
    }

    /// Removes `user`'s permissions in `vhost`, and so its access to it.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`].
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.clear_permissions(user, vhost)
    }

    /// Sets `user`'s topic permissions on one topic exchange in `vhost`
    /// (see [`TopicPermissions`]).
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`], or a pattern
    /// that does not compile.
    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: &TopicPermissions,
    ) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.set_topic_permissions(user, vhost, permissions)
    }

    fn require_vhost(&self, vhost: &str) -> Result<(), UserError> {
        if self.inner.vhosts.load().contains_key(vhost) {
            Ok(())
        } else {
            Err(UserError::NoSuchVhost(vhost.into()))
        }
    }

    /// A connection to `vhost` that may do anything there: for the
    /// broker's own administrative acts (loading definitions).
    pub(crate) fn connect_as_administrator(&self, vhost: Arc<Vhost>, name: &str) -> Connection {
        let user = AuthenticatedUser { name: DEFAULT_USER.into(), tags: Vec::new() };
        let grant = Grant::new(user, vhost.name(), Arc::new(Unrestricted));
        Connection::open(self.clone(), vhost, grant, Some(name.into()))
    }

    fn follow(&self, id: &str) -> Conversation {
        let tracker = self.inner.core.conversations.follow(id);
        Conversation::new(id, tracker, Arc::clone(&self.inner) as Arc<dyn ConversationHost>)
    }

    /// The default virtual host's view (what the inspection methods read).
    fn default_view(&self) -> VirtualHost {
        VirtualHost { inner: Arc::clone(&self.inner.default_vhost) }
    }

    /// Every virtual host, in name order.
    pub(crate) fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.inner.vhosts.load().values().cloned().collect()
    }

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
    /// the default virtual host ([`VirtualHost::explain_route`] for others)
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

    /// Checks the default virtual host's topology ([`VirtualHost::lint`]
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
                return Overview { queues, exchanges, consistent: in_flight == 0 };
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
