//! Publishing through a resolved exchange, and what a publish does while
//! the memory alarm is on.

use std::fmt;

use super::ConnectionShared;
use crate::access::grant::Grant;
use crate::broker::Broker;
use crate::error::PublishError;
use crate::message::Message;
use crate::sync::{Arc, Ordering};
use crate::vhost::Vhost;
use crate::vhost::publish::{PublishOptions, Routed};
use crate::vhost::route_cache::{RouteCache, Target};

/// A publisher bound to one exchange: see [`Connection::publisher`](crate::Connection::publisher).
/// Cheap to clone; `Send + Sync`.
///
/// It remembers the routes of the last few routing keys it published with
/// (until the topology changes), so a key used again skips the walk
/// through the exchange graph; a clone starts with none. Give each
/// publishing thread its own clone: two threads publishing through one
/// `Publisher` at the same moment are both served, but only one of them
/// from the cache.
pub struct Publisher {
    pub(super) exchange: Arc<crate::exchange::Exchange>,
    pub(super) connection: Arc<ConnectionShared>,
    pub(super) broker: Broker,
    pub(super) vhost: Arc<Vhost>,
    pub(super) grant: Arc<Grant>,
    pub(super) routes: RouteCache,
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            exchange: Arc::clone(&self.exchange),
            connection: Arc::clone(&self.connection),
            broker: self.broker.clone(),
            vhost: Arc::clone(&self.vhost),
            grant: Arc::clone(&self.grant),
            routes: RouteCache::default(),
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").field("exchange", &self.exchange.name).finish_non_exhaustive()
    }
}

impl Publisher {
    /// The exchange it publishes to.
    pub fn exchange(&self) -> &str {
        &self.exchange.name
    }

    /// Publishes `message` with `routing_key`, as
    /// [`Connection::publish`](crate::Connection::publish) does.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    #[inline]
    pub fn publish(&self, routing_key: &str, message: Message) -> Result<Routed, PublishError> {
        self.publish_with(routing_key, message, PublishOptions::default())
    }

    /// Publishes as [`Connection::try_publish`](crate::Connection::try_publish) does: fails with
    /// [`PublishError::Blocked`] rather than wait while the broker is over
    /// its memory high watermark.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn try_publish(&self, routing_key: &str, message: Message) -> Result<Routed, PublishError> {
        self.publish_when(routing_key, message, PublishOptions::default(), WhenBlocked::Fail)
    }

    /// Publishes with options, as [`Connection::publish_with`](crate::Connection::publish_with) does.
    ///
    /// # Errors
    ///
    /// [`PublishError`], handing the message back: no such exchange, an internal exchange, an invalid routing key, expiration or header, a body over the size limit, full queues that reject publishes, an unroutable `mandatory` message, the memory alarm (with `try_publish`), or a closed connection.
    pub fn publish_with(
        &self,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<Routed, PublishError> {
        self.publish_when(routing_key, message, options, WhenBlocked::Wait)
    }

    /// Publishes `messages` (routing key, message), in order, as
    /// [`Connection::publish_batch`](crate::Connection::publish_batch) does.
    ///
    /// # Errors
    ///
    /// [`PublishBatchError`](crate::PublishBatchError), listing by index the
    /// messages that were not published, each with its error holding it.
    pub fn publish_batch<K: AsRef<str>>(
        &self,
        messages: impl IntoIterator<Item = (K, Message)>,
        options: PublishOptions,
    ) -> Result<crate::BatchRouted, crate::PublishBatchError> {
        let closed = self.connection.closed.load(Ordering::Acquire);
        super::batch::publish_batch(
            &self.broker,
            closed,
            &self.vhost,
            &self.grant,
            &self.exchange.name,
            messages,
            options,
        )
    }

    #[inline]
    fn publish_when(
        &self,
        routing_key: &str,
        message: Message,
        options: PublishOptions,
        when_blocked: WhenBlocked,
    ) -> Result<Routed, PublishError> {
        if self.connection.closed.load(Ordering::Acquire) {
            return Err(PublishError::ConnectionClosed { message: Box::new(message) });
        }
        if !when_blocked.admits(&self.broker) {
            return Err(PublishError::Blocked { message: Box::new(message) });
        }
        if self.exchange.is_deleted() {
            // Deleted since the publisher was made, and maybe declared
            // again: publish by name, as `Connection::publish` would.
            return self.vhost.publish(&*self.grant, &self.exchange.name, routing_key, message, options);
        }
        let target = Target::Resolved(&self.exchange);
        self.vhost.publish_cached(&*self.grant, &self.routes, target, routing_key, message, options)
    }
}

/// What a publish does while the memory alarm is on.
#[derive(Debug, Clone, Copy)]
pub(super) enum WhenBlocked {
    /// Wait for it to clear (`publish`), as RabbitMQ blocks a connection.
    Wait,
    /// Fail with `PublishError::Blocked`, handing the message back (`try_publish`).
    Fail,
}

impl WhenBlocked {
    /// Waits out the memory alarm (`Wait`), or says whether it is on
    /// (`Fail`): false means the caller fails with `PublishError::Blocked`.
    /// The message stays with the caller rather than passing through a
    /// `Result` and back: a 40-byte value moved out and in again on every
    /// publish is the kind of copy that showed up as store-forwarding stalls
    /// on the publish path.
    pub(super) fn admits(self, broker: &Broker) -> bool {
        match self {
            WhenBlocked::Wait => {
                broker.inner.core.wait_while_blocked();
                true
            }
            WhenBlocked::Fail => !broker.inner.core.is_blocked(),
        }
    }
}
