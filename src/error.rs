//! Errors, one enum per operation.
//!
//! Each carries an AMQP-like [`ErrorKind`] (see `kind()`) and a message worded
//! as RabbitMQ words it, so that what users know from a real broker reads the
//! same here. Errors from publishing hand the message back.

use thiserror::Error;

use crate::access::AccessRefused;
use crate::message::Message;

/// The AMQP 0-9-1 class of an error, with its reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 312 `NO_ROUTE`: a mandatory message reached no queue.
    NoRoute,
    /// 311 `CONTENT_TOO_LARGE`: the message is larger than the broker accepts.
    ContentTooLarge,
    /// 320 `CONNECTION_FORCED`: the connection is closed.
    ConnectionClosed,
    /// 403 `ACCESS_REFUSED`: the operation is not allowed on that object.
    AccessRefused,
    /// 404 `NOT_FOUND`: the object does not exist.
    NotFound,
    /// 405 `RESOURCE_LOCKED`: another connection owns the exclusive queue.
    ResourceLocked,
    /// 406 `PRECONDITION_FAILED`: the object is not in the required state, or
    /// a declaration differs from the existing object.
    PreconditionFailed,
    /// 402 `INVALID_PATH`-like: a name or routing key is not acceptable.
    InvalidName,
    /// 530 `NOT_ALLOWED`: e.g. reusing a consumer tag.
    NotAllowed,
    /// A queue is full and refuses publishes (AMQP resource-error, 506).
    ResourceError,
}

impl ErrorKind {
    /// The AMQP reply code.
    pub fn reply_code(self) -> u16 {
        match self {
            ErrorKind::NoRoute => 312,
            ErrorKind::ContentTooLarge => 311,
            ErrorKind::ConnectionClosed => 320,
            ErrorKind::InvalidName => 402,
            ErrorKind::AccessRefused => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::ResourceLocked => 405,
            ErrorKind::PreconditionFailed => 406,
            ErrorKind::NotAllowed => 530,
            ErrorKind::ResourceError => 506,
        }
    }
}

/// Why [`Broker::connect_with`](crate::Broker::connect_with) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Authentication failed (an unknown user or wrong credentials, not
    /// told apart), or the user may not enter the virtual host.
    #[error(transparent)]
    AccessRefused(#[from] AccessRefused),
    /// No virtual host of that name.
    #[error("NOT_ALLOWED - vhost '{0}' not found")]
    VhostNotFound(String),
}

impl ConnectError {
    /// The AMQP class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::AccessRefused(_) => ErrorKind::AccessRefused,
            ConnectError::VhostNotFound(_) => ErrorKind::NotAllowed,
        }
    }
}

/// Why a declaration (`declare_exchange`, `declare_queue`) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeclareError {
    /// The name is too long or otherwise unusable.
    #[error("invalid name '{name}': {reason}")]
    InvalidName {
        /// The rejected name (cut to 300 bytes at most).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The name is reserved (`amq.*`, the default exchange).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// A passive declaration named an object that does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The object exists with other options, or an argument is invalid.
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The queue is exclusive to another connection.
    #[error(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    )]
    ResourceLocked {
        /// The queue.
        queue: String,
        /// Its virtual host.
        vhost: String,
    },
    /// The connection's user lacks a permission the operation needs
    /// (see [`Permission`](crate::Permission)).
    #[error(transparent)]
    NotPermitted(#[from] AccessRefused),
    /// The broker's data directory could not record the change (a full
    /// disk, an I/O error): nothing was changed.
    #[error("RESOURCE_ERROR - the store could not record it: {0}")]
    StoreFailed(crate::StoreError),
    /// The connection is closed.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// Why binding or unbinding failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BindError {
    /// The routing key is too long.
    #[error("invalid routing key: {0}")]
    InvalidName(&'static str),
    /// The default exchange cannot be bound to or from.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// The source or destination does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The arguments are invalid (e.g. an unknown `x-match`).
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The queue is exclusive to another connection.
    #[error(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    )]
    ResourceLocked {
        /// The queue.
        queue: String,
        /// Its virtual host.
        vhost: String,
    },
    /// The connection's user lacks a permission the operation needs
    /// (see [`Permission`](crate::Permission)).
    #[error(transparent)]
    NotPermitted(#[from] AccessRefused),
    /// The broker's data directory could not record the binding (a full
    /// disk, an I/O error): nothing was changed.
    #[error("RESOURCE_ERROR - the store could not record it: {0}")]
    StoreFailed(crate::StoreError),
    /// The connection is closed.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// Why deleting or purging failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The default exchange and `amq.*` exchanges cannot be deleted.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// The object does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// `if_unused` or `if_empty` did not hold.
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The queue is exclusive to another connection.
    #[error(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    )]
    ResourceLocked {
        /// The queue.
        queue: String,
        /// Its virtual host.
        vhost: String,
    },
    /// The connection's user lacks a permission the operation needs
    /// (see [`Permission`](crate::Permission)).
    #[error(transparent)]
    NotPermitted(#[from] AccessRefused),
    /// The connection is closed.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// Why `consume` or `get` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The queue does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The queue is exclusive to another connection.
    #[error(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    )]
    ResourceLocked {
        /// The queue.
        queue: String,
        /// Its virtual host.
        vhost: String,
    },
    /// Another consumer holds the queue exclusively, or this one asked for
    /// exclusivity on a queue that already has consumers.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// The connection already has a consumer with that tag.
    #[error("NOT_ALLOWED - attempt to reuse consumer tag '{0}'")]
    TagInUse(String),
    /// A consumer argument is invalid (`x-priority` not an integer) or not
    /// implemented by interoffice (refused rather than ignored).
    #[error("PRECONDITION_FAILED - {0}")]
    InvalidArgument(String),
    /// The connection's user lacks a permission the operation needs
    /// (see [`Permission`](crate::Permission)).
    #[error(transparent)]
    NotPermitted(#[from] AccessRefused),
    /// The connection is closed.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// Why some messages of a
/// [`Connection::publish_batch`](crate::Connection::publish_batch) were not
/// published. The others were: each message of a batch succeeds or fails
/// on its own, as separate publishes would. Each failure hands its message
/// back inside its [`PublishError`], with the message's index in the batch.
#[derive(Debug, Clone, PartialEq, Error)]
#[error(
    "{} message{} of the batch {} not published ({} were); the first, at index {}: {}",
    failed.len(),
    if failed.len() == 1 { "" } else { "s" },
    if failed.len() == 1 { "was" } else { "were" },
    routed.messages(),
    failed.first().map_or(0, |(index, _)| *index),
    failed.first().map_or_else(String::new, |(_, error)| error.to_string()),
)]
pub struct PublishBatchError {
    /// The messages not published, by their index in the batch, in order:
    /// each error holds its message.
    pub failed: Vec<(usize, PublishError)>,
    /// What the published ones did.
    pub routed: crate::BatchRouted,
}

impl PublishBatchError {
    /// Takes the messages that were not published back, in batch order.
    pub fn into_messages(self) -> Vec<Message> {
        self.failed.into_iter().map(|(_, error)| error.into_message()).collect()
    }
}

/// Why a publish failed. Every variant hands the message back: see
/// [`PublishError::into_message`].
///
/// Converting the error with `?` into a boxed error keeps the message inside
/// it, but out of reach: `match` on the error (or call `into_message`) where
/// the message matters, e.g. to retry it or store it elsewhere.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No exchange has that name.
    #[error("NOT_FOUND - no exchange '{exchange}' in vhost '{vhost}'")]
    ExchangeNotFound {
        /// The exchange named.
        exchange: String,
        /// The virtual host.
        vhost: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The exchange is internal: it only takes messages from other exchanges.
    #[error("ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '{vhost}'")]
    InternalExchange {
        /// The exchange named.
        exchange: String,
        /// The virtual host.
        vhost: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// A mandatory message reached no queue (AMQP's basic.return).
    #[error("NO_ROUTE - message to exchange '{exchange}' with routing key '{routing_key}' reached no queue")]
    Unroutable {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The routing key is longer than 255 bytes.
    #[error("invalid routing key: longer than 255 bytes ({len} bytes)")]
    InvalidRoutingKey {
        /// The key's length in bytes.
        len: usize,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The body is larger than the broker's `max_message_size`.
    #[error("CONTENT_TOO_LARGE - message body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The broker's limit.
        limit: usize,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// Queues with `Overflow::RejectPublish(Dlx)` at their length limit
    /// refused the message (RabbitMQ's negative publisher confirm). Other
    /// queues it was routed to may have taken it: `routed` counts them.
    #[error("RESOURCE_ERROR - queue(s) {queues:?} full: message rejected (taken by {routed} other queue(s))")]
    Rejected {
        /// The queues that refused it.
        queues: Vec<String>,
        /// How many queues took it nonetheless.
        routed: usize,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// Durable queues could not write the persistent message to their
    /// store (a full disk, an I/O error), or the store could not sync it
    /// per its [`SyncPolicy`](crate::SyncPolicy). The message is handed
    /// back. Other queues it was routed to may have taken it: `routed`
    /// counts them. When the sync failed (`queues` empty), the message was
    /// written and may still be delivered from memory, but it is not
    /// durable: treat it as RabbitMQ's negative confirm.
    #[error(
        "RESOURCE_ERROR - store could not take the message for queue(s) {queues:?} ({error}; taken by {routed} other queue(s))"
    )]
    StoreFailed {
        /// The durable queues that refused it (empty if the sync failed).
        queues: Vec<String>,
        /// How many queues took it nonetheless.
        routed: usize,
        /// What the store said.
        error: crate::StoreError,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The `expiration` property is not a non-negative integer of
    /// milliseconds, or exceeds [`MAX_DURATION`](crate::MAX_DURATION).
    #[error("PRECONDITION_FAILED - invalid expiration '{value}': {}", expiration_reason(value))]
    InvalidExpiration {
        /// The expiration given.
        value: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The broker is over its memory high watermark and the caller asked
    /// not to wait ([`Connection::try_publish`](crate::Connection::try_publish)).
    #[error("RESOURCE_ERROR - publishing is blocked: the queues hold more than the memory high watermark")]
    Blocked {
        /// The message, handed back.
        message: Box<Message>,
    },
    /// A header the bus reads is malformed: `CC` or `BCC` (sender-selected
    /// distribution) that is not an array of routing keys.
    #[error("PRECONDITION_FAILED - invalid header '{header}': {reason}")]
    InvalidHeader {
        /// The header's name.
        header: String,
        /// What is wrong with it.
        reason: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The connection's user may not publish there: no write permission on
    /// the exchange, or no topic permission for the routing key.
    #[error("{refused}")]
    NotPermitted {
        /// What was refused, to whom, where.
        refused: AccessRefused,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The message's `user_id` names another user than the connection's
    /// (and the user lacks the `impersonator` tag). RabbitMQ answers this
    /// with `PRECONDITION_FAILED`, worded as here.
    #[error("PRECONDITION_FAILED - user_id property set to '{claimed}' but authenticated user was '{user}'")]
    UserIdMismatch {
        /// The `user_id` the message carried.
        claimed: String,
        /// The connection's user.
        user: String,
        /// The message, handed back.
        message: Box<Message>,
    },
    /// The connection is closed.
    #[error("the connection is closed")]
    ConnectionClosed {
        /// The message, handed back.
        message: Box<Message>,
    },
}

impl PublishError {
    /// The message that was not published.
    pub fn message(&self) -> &Message {
        match self {
            PublishError::ExchangeNotFound { message, .. }
            | PublishError::InternalExchange { message, .. }
            | PublishError::Unroutable { message, .. }
            | PublishError::InvalidRoutingKey { message, .. }
            | PublishError::TooLarge { message, .. }
            | PublishError::Rejected { message, .. }
            | PublishError::StoreFailed { message, .. }
            | PublishError::InvalidExpiration { message, .. }
            | PublishError::InvalidHeader { message, .. }
            | PublishError::NotPermitted { message, .. }
            | PublishError::UserIdMismatch { message, .. }
            | PublishError::Blocked { message }
            | PublishError::ConnectionClosed { message } => message,
        }
    }

    /// Takes the message back.
    pub fn into_message(self) -> Message {
        match self {
            PublishError::ExchangeNotFound { message, .. }
            | PublishError::InternalExchange { message, .. }
            | PublishError::Unroutable { message, .. }
            | PublishError::InvalidRoutingKey { message, .. }
            | PublishError::TooLarge { message, .. }
            | PublishError::Rejected { message, .. }
            | PublishError::StoreFailed { message, .. }
            | PublishError::InvalidExpiration { message, .. }
            | PublishError::InvalidHeader { message, .. }
            | PublishError::NotPermitted { message, .. }
            | PublishError::UserIdMismatch { message, .. }
            | PublishError::Blocked { message }
            | PublishError::ConnectionClosed { message } => *message,
        }
    }

    /// The AMQP class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PublishError::ExchangeNotFound { .. } => ErrorKind::NotFound,
            PublishError::InternalExchange { .. } => ErrorKind::AccessRefused,
            PublishError::Unroutable { .. } => ErrorKind::NoRoute,
            PublishError::InvalidRoutingKey { .. } => ErrorKind::InvalidName,
            PublishError::TooLarge { .. } => ErrorKind::ContentTooLarge,
            PublishError::Rejected { .. }
            | PublishError::StoreFailed { .. }
            | PublishError::Blocked { .. } => ErrorKind::ResourceError,
            PublishError::InvalidExpiration { .. }
            | PublishError::InvalidHeader { .. }
            | PublishError::UserIdMismatch { .. } => ErrorKind::PreconditionFailed,
            PublishError::NotPermitted { .. } => ErrorKind::AccessRefused,
            PublishError::ConnectionClosed { .. } => ErrorKind::ConnectionClosed,
        }
    }
}

/// Why a consumer stopped: returned by [`Consumer::recv`](crate::Consumer::recv)
/// once the consumer is cancelled and its inbox is empty.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The consumer was cancelled with [`Consumer::cancel`](crate::Consumer::cancel).
    #[error("the consumer was cancelled")]
    Cancelled,
    /// The queue was deleted.
    #[error("queue '{0}' was deleted")]
    QueueDeleted(String),
    /// The consumer's connection was closed.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// Why [`Consumer::try_recv`](crate::Consumer::try_recv) returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TryRecvError {
    /// No delivery is waiting right now.
    #[error("no delivery is waiting")]
    Empty,
    /// The consumer is cancelled.
    #[error(transparent)]
    Closed(#[from] RecvError),
}

/// Why [`Consumer::recv_timeout`](crate::Consumer::recv_timeout) returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecvTimeoutError {
    /// No delivery arrived in time.
    #[error("no delivery arrived in time")]
    Timeout,
    /// The consumer is cancelled.
    #[error(transparent)]
    Closed(#[from] RecvError),
}

/// Why settling a delivery (ack, nack, reject) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AckError {
    /// The delivery was auto-acknowledged: there is nothing to settle
    /// (RabbitMQ answers `PRECONDITION_FAILED - unknown delivery tag`).
    #[error("PRECONDITION_FAILED - unknown delivery tag {0} (the delivery was auto-acknowledged)")]
    AutoAck(u64),
    /// The connection closed first; the message was requeued then.
    #[error("the connection is closed: delivery {0} was requeued when it closed")]
    ConnectionClosed(u64),
}

macro_rules! kinds {
    ($ty:ident { $($pat:pat => $kind:ident),* $(,)? }) => {
        impl $ty {
            /// The AMQP class of the error.
            pub fn kind(&self) -> ErrorKind {
                #[allow(clippy::enum_glob_use)]
                use $ty::*;
                match self {
                    $($pat => ErrorKind::$kind,)*
                }
            }
        }
    };
}

kinds!(DeclareError {
    InvalidName { .. } => InvalidName, AccessRefused(_) => AccessRefused, NotFound(_) => NotFound,
    PreconditionFailed(_) => PreconditionFailed, ResourceLocked { .. } => ResourceLocked,
    NotPermitted(_) => AccessRefused, ConnectionClosed => ConnectionClosed,
    StoreFailed(_) => ResourceError,
});
kinds!(BindError {
    InvalidName(_) => InvalidName, AccessRefused(_) => AccessRefused, NotFound(_) => NotFound,
    PreconditionFailed(_) => PreconditionFailed, ResourceLocked { .. } => ResourceLocked,
    NotPermitted(_) => AccessRefused, ConnectionClosed => ConnectionClosed,
    StoreFailed(_) => ResourceError,
});
kinds!(DeleteError {
    AccessRefused(_) => AccessRefused, NotFound(_) => NotFound,
    PreconditionFailed(_) => PreconditionFailed, ResourceLocked { .. } => ResourceLocked,
    NotPermitted(_) => AccessRefused, ConnectionClosed => ConnectionClosed,
});
kinds!(ConsumeError {
    NotFound(_) => NotFound, ResourceLocked { .. } => ResourceLocked, AccessRefused(_) => AccessRefused,
    TagInUse(_) => NotAllowed, InvalidArgument(_) => PreconditionFailed, NotPermitted(_) => AccessRefused,
    ConnectionClosed => ConnectionClosed,
});

/// RabbitMQ's reason for refusing an `expiration` (as 3.10.8 words it).
fn expiration_reason(value: &str) -> String {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(value) {
        format!("{{value_too_large,{value}}}")
    } else if value.strip_prefix('-').is_some_and(digits) {
        format!("{{value_negative,{value}}}")
    } else {
        "no_integer".to_owned()
    }
}
