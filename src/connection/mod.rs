//! Connections: a client's handle on the broker, and what closes with it.
//!
//! - [`calls`]: request/reply (`call`, `call_async`, typed calls).
//! - [`publisher`]: `Publisher`, a handle on one resolved exchange.

mod batch;
mod calls;
mod confirm;
mod publisher;

pub use confirm::Confirm;
pub use publisher::Publisher;
use publisher::WhenBlocked;

use std::fmt;

use crate::access::grant::Grant;
use crate::access::{Permission, Resource};
use crate::broker::Broker;
use crate::consumer::{ConsumeOptions, Consumer, ConsumerShared};
use crate::delivery::{Delivery, GetStore};
use crate::error::{BindError, ConsumeError, DeclareError, DeleteError, PublishError};
use crate::exchange::{ExchangeKind, ExchangeOptions};
use crate::field::FieldTable;
use crate::flow::FlowEvent;
use crate::message::Message;
use crate::queue::{QueueOptions, QueueStats};
use crate::rpc::ReplyEndpoint;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering, Weak};
use crate::vhost::Vhost;
use crate::vhost::publish::{PublishOptions, Routed};
use crate::vhost::route_cache::{RouteCache, Target};

/// Options of [`Connection::delete_queue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteQueueOptions {
    /// Refuse (`PreconditionFailed`) if the queue has consumers.
    pub if_unused: bool,
    /// Refuse (`PreconditionFailed`) if the queue has ready messages.
    pub if_empty: bool,
}

/// Options of [`Connection::delete_exchange`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteExchangeOptions {
    /// Refuse (`PreconditionFailed`) if the exchange is the source of any binding.
    pub if_unused: bool,
}

/// What outlives a `Connection` handle: what its consumers and deliveries
/// need to know about it.
#[derive(Debug)]
pub(crate) struct ConnectionShared {
    pub(crate) id: u64,
    name: Option<String>,
    /// Set once by `close` (or drop); every operation checks it first.
    closed: AtomicBool,
    /// Live `Connection` handles: the user's, plus one held by each worker,
    /// server or async worker started on it. Dropping the last closes it.
    handles: AtomicUsize,
    /// Every consumer opened on this connection whose shared state is still
    /// alive (cancelled ones may still have deliveries to requeue on close).
    /// The same lock orders `consume` against `close`.
    consumers: Mutex<ConsumerList>,
    gets: Arc<GetStore>,
    /// The direct reply-to address, made on the first call.
    replies: Mutex<Option<Arc<ReplyEndpoint>>>,
    /// Published if the connection is dropped without `close`.
    will: Mutex<Option<Will>>,
    /// The routes of its last few publishes by exchange name.
    routes: RouteCache,
}

/// A last-will message: where to publish it and what.
#[derive(Debug)]
struct Will {
    exchange: String,
    routing_key: String,
    message: Message,
}

#[derive(Debug, Default)]
struct ConsumerList {
    closed: bool,
    list: Vec<Weak<ConsumerShared>>,
}

/// A client's connection to the broker: declares topology, publishes,
/// consumes. `Send + Sync`: share it between threads by reference or `Arc`.
///
/// [`close`](Connection::close) — or dropping it — closes it: its consumers
/// are cancelled, every delivery it holds unsettled is requeued (flagged
/// redelivered), and its exclusive queues are deleted. Operations on a closed
/// connection fail with a `ConnectionClosed` error.
///
/// AMQP multiplexes channels over a connection; here a connection is both:
/// open several connections where you would open several channels.
///
/// ```
/// use interoffice::{Broker, ExchangeKind, ExchangeOptions, FieldTable, Message, PublishError,
///                   PublishOptions, QueueOptions};
/// let broker = Broker::new();
/// let conn = broker.connect();
/// conn.declare_exchange("audit", ExchangeKind::Fanout, ExchangeOptions::default())?;
///
/// // Nothing is bound yet: a mandatory publish hands the message back.
/// let mandatory = PublishOptions { mandatory: true };
/// match conn.publish_with("audit", "", Message::new("login"), mandatory) {
///     Err(PublishError::Unroutable { message, .. }) => assert_eq!(message.body().as_ref(), b"login"),
///     other => panic!("expected a return, got {other:?}"),
/// }
///
/// let queue = conn.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
/// conn.bind_queue(&queue, "audit", "", FieldTable::new())?;
/// assert_eq!(conn.publish_with("audit", "", Message::new("login"), mandatory)?.queues(), 1);
///
/// conn.close(); // the exclusive queue goes with the connection
/// assert!(broker.queue_stats(&queue).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection {
    shared: Arc<ConnectionShared>,
    broker: Broker,
    /// The virtual host it is connected to.
    vhost: Arc<Vhost>,
    /// Its user's standing: every operation asks here first.
    grant: Arc<Grant>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("name", &self.shared.name)
            .field("user", &self.grant.user())
            .field("vhost", &self.vhost.name())
            .finish()
    }
}

impl Connection {
    pub(crate) fn open(broker: Broker, vhost: Arc<Vhost>, grant: Grant, name: Option<String>) -> Self {
        let shared = Arc::new(ConnectionShared {
            id: broker.inner.core.id(),
            name,
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            consumers: Mutex::new(ConsumerList::default()),
            gets: Arc::new(GetStore::default()),
            replies: Mutex::new(None),
            will: Mutex::new(None),
            routes: RouteCache::default(),
        });
        Connection { shared, broker, vhost, grant: Arc::new(grant) }
    }

    /// Another handle on this connection, for a worker or server that must
    /// keep it open while it runs: the connection closes when the last
    /// handle is dropped (or at once, on an explicit `close`).
    pub(crate) fn hold(&self) -> Connection {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Connection {
            shared: Arc::clone(&self.shared),
            broker: self.broker.clone(),
            vhost: Arc::clone(&self.vhost),
            grant: Arc::clone(&self.grant),
        }
    }

    /// The connection's id, unique within its broker.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The name given at [`Broker::connect_named`], if any.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// The broker this connection belongs to.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The user it is connected as.
    pub fn user(&self) -> &str {
        self.grant.user()
    }

    /// The virtual host it is connected to.
    pub fn vhost(&self) -> &str {
        self.vhost.name()
    }

    /// Declares an exchange, or checks an existing one: idempotent when the
    /// kind and options are equal, [`DeclareError::PreconditionFailed`] naming
    /// the first difference otherwise. With `options.passive`, only checks
    /// that it exists. Names starting with `amq.` are reserved.
    ///
    /// # Errors
    ///
    /// [`DeclareError`]: an invalid name, an argument refused or not implemented, a declaration inequivalent to the existing one, a passive declaration of something missing, an exclusive queue of another connection, or a closed connection.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), DeclareError> {
        self.check_open(DeclareError::ConnectionClosed)?;
        let resource = Resource::exchange(name);
        if options.passive {
            self.grant.check_any(resource)?;
        } else {
            self.grant.check(Permission::Configure, resource.clone())?;
            if let Some(alternate) = options.alternate_exchange_name() {
                self.grant.check(Permission::Read, resource)?;
                self.grant.check(Permission::Write, Resource::exchange(&alternate))?;
            }
        }
        self.vhost
            .declare_exchange(name, kind, options)
            .inspect(|()| crate::trace::declared("exchange", name))
    }

    /// Deletes an exchange and every binding from or to it. Deleting an
    /// exchange that does not exist succeeds, as in RabbitMQ.
    ///
    /// # Errors
    ///
    /// [`DeleteError`]: no such queue or exchange, its `if_unused`/`if_empty` condition not met, an exclusive queue of another connection, or a closed connection.
    pub fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<(), DeleteError> {
        self.check_open(DeleteError::ConnectionClosed)?;
        self.grant.check(Permission::Configure, Resource::exchange(name))?;
        self.vhost.delete_exchange(name, options.if_unused)
    }

    /// Declares a queue, or checks an existing one, and returns its name.
    /// `""` asks for a fresh server-generated name (`amq.gen-…`). Idempotent
    /// when the options are equal; [`DeclareError::PreconditionFailed`] naming
    /// the first difference otherwise. Names starting with `amq.` are reserved.
    ///
    /// # Errors
    ///
    /// [`DeclareError`]: an invalid name, an argument refused or not implemented, a declaration inequivalent to the existing one, a passive declaration of something missing, an exclusive queue of another connection, or a closed connection.
    pub fn declare_queue(&self, name: &str, options: QueueOptions) -> Result<String, DeclareError> {
        self.check_open(DeclareError::ConnectionClosed)?;
        if options.passive {
            self.grant.check_any(Resource::queue(name))?;
            return self.vhost.declare_queue(self.shared.id, name, options, false);
        }
        // A server-named queue is checked under the name it will have, as
        // RabbitMQ checks it: a user needs configure on `amq.gen-…`.
        let (name, server_named) =
            if name.is_empty() { (self.vhost.generate_queue_name(), true) } else { (name.to_owned(), false) };
        self.grant.check(Permission::Configure, Resource::queue(&name))?;
        if let Some(dlx) = options.dead_letter_exchange_name() {
            self.grant.check(Permission::Read, Resource::queue(&name))?;
            self.grant.check(Permission::Write, Resource::exchange(&dlx))?;
        }
        self.vhost
            .declare_queue(self.shared.id, &name, options, server_named)
            .inspect(|n| crate::trace::declared("queue", n))
    }

    /// Deletes a queue: its consumers are cancelled and its messages dropped.
    /// Returns how many messages were ready. Deleting a queue that does not
    /// exist succeeds and returns 0, as in RabbitMQ.
    ///
    /// # Errors
    ///
    /// [`DeleteError`]: no such queue or exchange, its `if_unused`/`if_empty` condition not met, an exclusive queue of another connection, or a closed connection.
    pub fn delete_queue(&self, name: &str, options: DeleteQueueOptions) -> Result<usize, DeleteError> {
        self.check_open(DeleteError::ConnectionClosed)?;
        self.grant.check(Permission::Configure, Resource::queue(name))?;
        self.vhost.delete_queue(self.shared.id, name, options.if_unused, options.if_empty)
    }

    /// Drops every ready message of a queue (not the unacknowledged ones);
    /// returns how many.
    ///
    /// # Errors
    ///
    /// [`DeleteError`]: no such queue or exchange, its `if_unused`/`if_empty` condition not met, an exclusive queue of another connection, or a closed connection.
    pub fn purge_queue(&self, name: &str) -> Result<usize, DeleteError> {
        self.check_open(DeleteError::ConnectionClosed)?;
        self.grant.check(Permission::Read, Resource::queue(name))?;
        self.vhost.purge_queue(self.shared.id, name)
    }

    /// Counts for a queue this connection may use.
    ///
    /// # Errors
    ///
    /// [`ConsumeError`]: no such queue, an exclusive queue or consumer elsewhere, a consumer tag in use, an invalid argument, or a closed connection.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, ConsumeError> {
        self.check_open(ConsumeError::ConnectionClosed)?;
        self.grant.check_any(Resource::queue(name))?;
        Ok(self.vhost.queue_for(self.shared.id, name)?.stats())
    }

    /// Binds queue `queue` to exchange `exchange` with binding key `key` (a
    /// pattern for topic exchanges) and `arguments` (what a headers exchange
    /// matches): a [`FieldTable`], or `None` for none. Binding twice is
    /// harmless.
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, FieldTable, QueueOptions};
    /// let conn = Broker::new().connect();
    /// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    /// conn.declare_exchange("by-region", ExchangeKind::Headers, Default::default())?;
    /// conn.declare_queue("billing", QueueOptions::default())?;
    /// conn.bind_queue("billing", "orders", "order.*.created", None)?;
    /// conn.bind_queue("billing", "by-region", "", FieldTable::new().with("region", "eu"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`BindError`]: no such queue or exchange, an exclusive queue of
    /// another connection, invalid headers arguments, a closed connection.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: impl Into<Option<FieldTable>>,
    ) -> Result<(), BindError> {
        self.check_open(BindError::ConnectionClosed)?;
        self.check_binding(Resource::queue(queue), exchange, key)?;
        let arguments = arguments.into().unwrap_or_default();
        self.vhost.bind(self.shared.id, queue, false, exchange, key, arguments)
    }

    /// Removes a binding made by [`bind_queue`](Self::bind_queue) with the
    /// same key and arguments. Removing a binding that does not exist (or
    /// whose queue or exchange does not) succeeds, as in RabbitMQ.
    ///
    /// # Errors
    ///
    /// [`BindError`]: no such queue or exchange, an exclusive queue of another connection, invalid headers arguments, or a closed connection.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: Option<&FieldTable>,
    ) -> Result<(), BindError> {
        self.check_open(BindError::ConnectionClosed)?;
        self.check_binding(Resource::queue(queue), exchange, key)?;
        let none = FieldTable::new();
        self.vhost.unbind(self.shared.id, queue, false, exchange, key, arguments.unwrap_or(&none))
    }

    /// Binds exchange `destination` to exchange `source`: what `source`
    /// routes under `key` also goes through `destination`.
    ///
    /// # Errors
    ///
    /// [`BindError`]: no such queue or exchange, an exclusive queue of another connection, invalid headers arguments, or a closed connection.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: impl Into<Option<FieldTable>>,
    ) -> Result<(), BindError> {
        self.check_open(BindError::ConnectionClosed)?;
        self.check_binding(Resource::exchange(destination), source, key)?;
        let arguments = arguments.into().unwrap_or_default();
        self.vhost.bind(self.shared.id, destination, true, source, key, arguments)
    }

    /// Removes an exchange-to-exchange binding.
    ///
    /// # Errors
    ///
    /// [`BindError`]: no such queue or exchange, an exclusive queue of another connection, invalid headers arguments, or a closed connection.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: Option<&FieldTable>,
    ) -> Result<(), BindError> {
        self.check_open(BindError::ConnectionClosed)?;
        self.check_binding(Resource::exchange(destination), source, key)?;
        let none = FieldTable::new();
        self.vhost.unbind(self.shared.id, destination, true, source, key, arguments.unwrap_or(&none))
    }

    /// What binding needs (RabbitMQ's order): write on the destination,
    /// read on the source, and the topic read permission on the binding
    /// key if the source is a topic exchange.
    fn check_binding(&self, destination: Resource, source: &str, key: &str) -> Result<(), BindError> {
        self.grant.check(Permission::Write, destination)?;
        self.grant.check(Permission::Read, Resource::exchange(source))?;
        if let Some(exchange) = self.vhost.exchange(source) {
            self.grant.check_topic(Permission::Read, source, exchange.kind, key)?;
        }
        Ok(())
    }

    /// Publishes `message` to `exchange` with `routing_key`. Never blocks,
    /// unless the broker has a
    /// [memory high watermark](crate::BrokerOptions::memory_high_watermark)
    /// and its queues are past it: then it waits until consumers drain them,
    /// as RabbitMQ blocks a publishing connection ([`try_publish`](Self::try_publish)
    /// fails instead). A module that publishes from inside its own handler
    /// while holding deliveries should use `try_publish`, as with RabbitMQ.
    /// A message that reaches no queue is dropped and the result says 0
    /// queues; use [`publish_with`](Self::publish_with) and `mandatory` to
    /// get it back instead.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<Routed, PublishError> {
        self.publish_with(exchange, routing_key, message, PublishOptions::default())
    }

    /// Publishes with options. Every error hands the message back.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        self.publish_when(exchange, routing_key, message, options, WhenBlocked::Wait)
    }

    /// Publishes, waiting out the memory alarm or failing on it.
    fn publish_when(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
        when_blocked: WhenBlocked,
    ) -> Result<Routed, PublishError> {
        if self.is_closed() {
            return Err(PublishError::ConnectionClosed { message: Box::new(message) });
        }
        if !when_blocked.admits(&self.broker) {
            return Err(PublishError::Blocked { message: Box::new(message) });
        }
        let target = Target::Named(exchange);
        self.vhost.publish_cached(&*self.grant, &self.shared.routes, target, routing_key, message, options)
    }

    /// Publishes as [`publish_with`](Self::publish_with) does — routed now,
    /// in order with this connection's other publishes — but returns before
    /// the message is durable: the [`Confirm`] resolves once it is, per the
    /// broker's [`SyncPolicy`](crate::SyncPolicy) (RabbitMQ's asynchronous
    /// publisher confirms). Many publishes in flight share each sync. With
    /// nothing to wait for it resolves at once.
    ///
    /// ```
    /// # use interoffice::{Broker, BrokerOptions, DeliveryMode, Message, PublishOptions, QueueOptions};
    /// # let dir = std::env::temp_dir().join(format!("interoffice-confirm-doc-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let broker = Broker::open(&dir, BrokerOptions::default())?;
    /// let conn = broker.connect();
    /// conn.declare_queue("jobs", QueueOptions { durable: true, ..Default::default() })?;
    /// let confirms: Vec<_> = (0..100)
    ///     .map(|i| {
    ///         let job = Message::new(format!("job {i}")).with_delivery_mode(DeliveryMode::Persistent);
    ///         conn.publish_confirmed("", "jobs", job, PublishOptions::default())
    ///     })
    ///     .collect();
    /// for confirm in confirms {
    ///     futures::executor::block_on(confirm)?; // or confirm.wait()
    /// }
    /// # drop(conn); drop(broker); std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Confirm {
        if self.is_closed() {
            return Confirm::done(Err(PublishError::ConnectionClosed { message: Box::new(message) }));
        }
        self.broker.inner.core.wait_while_blocked();
        match self.vhost.publish_deferred(&*self.grant, exchange, routing_key, message, options) {
            Err(e) => Confirm::done(Err(e)),
            Ok(published) => match (published.durable, &self.broker.inner.core.store) {
                (Some((lsn, message)), Some(store)) => {
                    Confirm::waiting(Arc::clone(store), lsn, published.routed, message)
                }
                _ => Confirm::done(Ok(published.routed)),
            },
        }
    }

    /// Publishes as [`publish`](Self::publish) does, but never waits: while
    /// the broker is over its
    /// [memory high watermark](crate::BrokerOptions::memory_high_watermark)
    /// it fails at once with [`PublishError::Blocked`], handing the message
    /// back.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<Routed, PublishError> {
        self.try_publish_with(exchange, routing_key, message, PublishOptions::default())
    }

    /// [`try_publish`](Self::try_publish) with options.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn try_publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        self.publish_when(exchange, routing_key, message, options, WhenBlocked::Fail)
    }

    /// The broker's flow events from now on: [`FlowEvent::Blocked`] when its
    /// queues pass the
    /// [memory high watermark](crate::BrokerOptions::memory_high_watermark),
    /// [`FlowEvent::Unblocked`] when they are back below it (RabbitMQ's
    /// `connection.blocked` / `connection.unblocked`). If blocked now, the
    /// first event says so. Without a watermark, nothing is ever sent.
    pub fn flow_events(&self) -> crossbeam_channel::Receiver<FlowEvent> {
        match &self.broker.inner.core.flow {
            Some(flow) => flow.subscribe(),
            None => crossbeam_channel::never(),
        }
    }

    /// Starts consuming from `queue`.
    ///
    /// # Errors
    ///
    /// [`ConsumeError`]: no such queue, an exclusive queue or consumer elsewhere, a consumer tag in use, an invalid argument, or a closed connection.
    pub fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, ConsumeError> {
        options.validate()?;
        let queue = self.queue_for(queue)?;
        let mut consumers = self.shared.consumers.lock();
        if consumers.closed {
            return Err(ConsumeError::ConnectionClosed);
        }
        consumers.list.retain(|c| c.strong_count() > 0);
        let tag: Arc<str> = match &options.consumer_tag {
            Some(tag) => {
                let in_use = consumers
                    .list
                    .iter()
                    .filter_map(Weak::upgrade)
                    .any(|c| !c.is_cancelled() && *c.tag == **tag);
                if in_use {
                    return Err(ConsumeError::TagInUse(tag.clone()));
                }
                tag.as_str().into()
            }
            None => self.broker.inner.core.generate_name("amq.ctag-").into(),
        };
        let (sender, inbox) = crate::inbox::unbounded();
        let shared = Arc::new(ConsumerShared::new(tag, Arc::clone(&queue), &options, inbox));
        queue.add_consumer(Arc::clone(&shared), sender)?;
        consumers.list.push(Arc::downgrade(&shared));
        Ok(Consumer::new(shared, Arc::clone(&self.vhost) as Arc<dyn crate::queue::QueueOwner>))
    }

    /// AMQP basic.get: takes the next ready message of `queue`, if any, even
    /// while consumers are attached. Unless `auto_ack`, the delivery must be
    /// settled like a consumer's.
    ///
    /// # Errors
    ///
    /// [`ConsumeError`]: no such queue, an exclusive queue or consumer elsewhere, a consumer tag in use, an invalid argument, or a closed connection.
    pub fn get(&self, queue: &str, auto_ack: bool) -> Result<Option<Delivery>, ConsumeError> {
        // `queue_for` refuses a closed connection; a close racing this call
        // is caught by `GetStore::hold`, which requeues the message.
        let queue = self.queue_for(queue)?;
        let Some(msg) = queue.get(!auto_ack)? else { return Ok(None) };
        if auto_ack {
            let delivery = Delivery::from_queued(msg, 0, None);
            crate::delivery::report_get(&queue, &delivery);
            queue.count_auto_ack();
            return Ok(Some(delivery));
        }
        self.shared.gets.hold(&queue, msg).map(Some).ok_or(ConsumeError::ConnectionClosed)
    }

    /// Queue `name` for consuming or getting: read permission on it.
    fn queue_for(&self, name: &str) -> Result<Arc<crate::queue::Queue>, ConsumeError> {
        self.check_open(ConsumeError::ConnectionClosed)?;
        self.grant.check(Permission::Read, Resource::queue(name))?;
        Ok(self.vhost.queue_for(self.shared.id, name)?)
    }

    /// A publisher bound to one exchange, resolved once: publishing through
    /// it skips looking the exchange up by name. Fails with
    /// [`DeclareError::NotFound`] if there is no such exchange, as a passive
    /// declaration does. If the exchange is deleted later, its publishes fail with
    /// [`PublishError::ExchangeNotFound`] until an exchange of that name is
    /// declared again, which it then publishes to (looked up by name on each
    /// publish from then on, as [`publish`](Self::publish) does). It publishes as this connection
    /// (and fails once it is closed).
    ///
    /// It remembers the queues its last few routing keys reached, so a key
    /// used again skips the routing walk; a route is dropped the moment the
    /// topology changes, so it is never stale (GUARANTEES G42).
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions};
    /// let conn = Broker::new().connect();
    /// conn.declare_exchange("orders", ExchangeKind::Direct, ExchangeOptions::default())?;
    /// conn.declare_queue("billing", QueueOptions::default())?;
    /// conn.bind_queue("billing", "orders", "created", FieldTable::new())?;
    ///
    /// let orders = conn.publisher("orders")?;
    /// for n in 0..3 {
    ///     orders.publish("created", Message::new(format!("order {n}")))?;
    /// }
    /// assert_eq!(conn.queue_stats("billing")?.messages_ready, 3);
    ///
    /// // A binding made now counts for the very next publish.
    /// conn.declare_queue("audit", QueueOptions::default())?;
    /// conn.bind_queue("audit", "orders", "created", FieldTable::new())?;
    /// assert_eq!(orders.publish("created", Message::new("order 3"))?.queues(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`DeclareError`]: an invalid name, an argument refused or not implemented, a declaration inequivalent to the existing one, a passive declaration of something missing, an exclusive queue of another connection, or a closed connection.
    pub fn publisher(&self, exchange: &str) -> Result<Publisher, DeclareError> {
        self.check_open(DeclareError::ConnectionClosed)?;
        self.grant.check(Permission::Write, Resource::exchange(exchange))?;
        let vhost = &self.vhost;
        let resolved =
            vhost.exchange(exchange).ok_or_else(|| DeclareError::NotFound(vhost.no_exchange(exchange)))?;
        Ok(Publisher {
            exchange: resolved,
            connection: Arc::clone(&self.shared),
            broker: self.broker.clone(),
            vhost: Arc::clone(&self.vhost),
            grant: Arc::clone(&self.grant),
            routes: RouteCache::default(),
        })
    }

    /// Leaves a last will: `message`, published to `exchange` with
    /// `routing_key` if this connection is dropped without
    /// [`close`](Self::close) — including by a thread unwinding from a panic.
    /// A clean `close` discards it. Setting a will again replaces it.
    ///
    /// ```
    /// use interoffice::{Broker, ConsumeOptions, Message, QueueOptions};
    /// let broker = Broker::new();
    /// let monitor = broker.connect();
    /// monitor.declare_queue("obituaries", QueueOptions::default())?;
    ///
    /// let billing = broker.connect_named("billing");
    /// billing.set_will("", "obituaries", Message::new("billing is gone"))?;
    /// let worker = std::thread::spawn(move || {
    ///     let _conn = billing; // owned by the thread...
    ///     panic!("billing crashed"); // ...which dies without closing it
    /// });
    /// assert!(worker.join().is_err());
    ///
    /// let will = monitor.get("obituaries", true)?.expect("the will was published");
    /// assert_eq!(will.body().as_ref(), b"billing is gone");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn set_will(&self, exchange: &str, routing_key: &str, message: Message) -> Result<(), PublishError> {
        if self.is_closed() {
            return Err(PublishError::ConnectionClosed { message: Box::new(message) });
        }
        if let Err(refused) = self.grant.check(Permission::Write, Resource::exchange(exchange)) {
            return Err(PublishError::NotPermitted { refused, message: Box::new(message) });
        }
        let will = Will { exchange: exchange.to_owned(), routing_key: routing_key.to_owned(), message };
        *self.shared.will.lock() = Some(will);
        Ok(())
    }

    /// Removes the last will, if any, and returns its message.
    pub fn clear_will(&self) -> Option<Message> {
        self.shared.will.lock().take().map(|w| w.message)
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.vhost.is_deleted()
    }

    fn check_open<E>(&self, error: E) -> Result<(), E> {
        if self.is_closed() { Err(error) } else { Ok(()) }
    }

    /// Closes the connection: cancels its consumers (a `recv` blocked on
    /// another thread returns [`RecvError::ConnectionClosed`](crate::RecvError::ConnectionClosed)), requeues every
    /// delivery it holds unsettled, flagged redelivered, fails its waiting
    /// calls with [`CallError::ConnectionClosed`](crate::CallError::ConnectionClosed), and deletes its exclusive
    /// queues. A clean close does not publish the last will. Closing twice
    /// does nothing; dropping closes too (publishing the will first).
    pub fn close(&self) {
        self.shared.will.lock().take();
        self.shut_down();
    }

    /// Closes the connection as if its module had crashed: its last will is
    /// published (if it has one), then everything a [`close`](Self::close)
    /// does happens — unsettled deliveries requeued and flagged
    /// redelivered, consumers cancelled, exclusive queues deleted — even
    /// while workers still hold the connection. For resilience tests: a
    /// handler's work that was not acknowledged is done again elsewhere.
    pub fn crash(&self) {
        self.publish_will();
        self.shut_down();
    }

    /// Publishes the last will, if there is one and the connection is
    /// open. Nobody is left to hand an error to: an unroutable will is
    /// dropped, as a will with no subscriber is in MQTT.
    fn publish_will(&self) {
        let will = self.shared.will.lock().take();
        if let Some(will) = will
            && !self.is_closed()
        {
            let _ = self.vhost.publish(
                &*self.grant,
                &will.exchange,
                &will.routing_key,
                will.message,
                PublishOptions::default(),
            );
        }
    }

    fn shut_down(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // The endpoint stays, closed, so its figures can still be read.
        let endpoint = self.shared.replies.lock().clone();
        if let Some(endpoint) = endpoint {
            self.vhost.unregister_reply_target(&endpoint.name);
            endpoint.close();
        }
        let consumers = {
            let mut consumers = self.shared.consumers.lock();
            consumers.closed = true;
            std::mem::take(&mut consumers.list)
        };
        for consumer in consumers.iter().filter_map(Weak::upgrade) {
            if consumer.close() {
                crate::queue::QueueOwner::auto_delete_queue(&*self.vhost, &consumer.queue);
            }
        }
        self.shared.gets.close();
        self.vhost.delete_exclusive_queues(self.shared.id);
    }
}

impl Drop for Connection {
    /// Dropping a connection without [`close`](Connection::close) — a
    /// module that stopped without saying goodbye, or a thread unwinding
    /// from a panic — publishes its last will, then closes it.
    fn drop(&mut self) {
        // A worker or server started on this connection still holds it.
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) > 1 {
            return;
        }
        self.publish_will();
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Connection>();
        check::<Broker>();
        check::<Consumer>();
        check::<Delivery>();
    }
}
