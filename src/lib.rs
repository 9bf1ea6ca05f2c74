//! # interoffice
//!
//! An embeddable, in-process message bus with the messaging model of
//! RabbitMQ / AMQP 0-9-1: exchanges, queues, bindings, acknowledgements,
//! prefetch, dead-lettering and request/reply, with no network and no broker
//! to run. Consumers work from threads or from async code under any executor.
//!
//! ```
//! use interoffice::{Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions};
//!
//! let broker = Broker::new();
//! let conn = broker.connect();
//! conn.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::default())?;
//! conn.declare_queue("billing", QueueOptions::default())?;
//! conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
//!
//! conn.publish("orders", "order.eu.created", Message::new("order 42"))?;
//!
//! let consumer = conn.consume("billing", ConsumeOptions { prefetch: 10, ..Default::default() })?;
//! let delivery = consumer.recv()?;
//! assert_eq!(delivery.body().as_ref(), b"order 42");
//! delivery.ack()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Concepts
//!
//! | AMQP / RabbitMQ | here |
//! |---|---|
//! | broker, virtual host | [`Broker`] (one virtual host, `/`) |
//! | connection + channel | [`Connection`] |
//! | `exchange.declare` / `delete` | [`Connection::declare_exchange`], [`Connection::delete_exchange`] |
//! | `queue.declare` / `delete` / `purge` | [`Connection::declare_queue`], [`Connection::delete_queue`], [`Connection::purge_queue`] |
//! | `queue.bind`, `exchange.bind` | [`Connection::bind_queue`], [`Connection::bind_exchange`] |
//! | `basic.publish` (+ `mandatory`, `basic.return`) | [`Connection::publish`], [`Connection::publish_with`], [`PublishError::Unroutable`] |
//! | `basic.consume` (+ `basic.qos` prefetch) / `basic.cancel` | [`Connection::consume`], [`ConsumeOptions::prefetch`], [`Consumer::cancel`] |
//! | `basic.get` | [`Connection::get`] |
//! | (extensions) batches | [`Connection::publish_batch`], [`Consumer::recv_batch`], [`Consumer::try_recv_batch`] |
//! | `basic.ack` / `nack` / `reject` | [`Delivery::ack`], [`Delivery::nack`], [`Delivery::reject`] |
//! | field table | [`FieldTable`], [`FieldValue`], [`FieldString`] |
//! | `x-message-ttl`, `x-expires`, `x-max-length(-bytes)`, `x-overflow` | [`QueueOptions::message_ttl`], [`QueueOptions::expires`], [`QueueOptions::max_length`], [`QueueOptions::max_length_bytes`], [`Overflow`] |
//! | `x-dead-letter-exchange`, `x-dead-letter-routing-key`, `x-death` | [`QueueOptions::dead_letter_exchange`], [`QueueOptions::dead_letter_routing_key`], [`DeathReason`] |
//! | `x-max-priority`, `x-delivery-limit`, `x-single-active-consumer`, `x-priority` | [`QueueOptions::max_priority`], [`QueueOptions::delivery_limit`], [`QueueOptions::single_active_consumer`], [`ConsumeOptions::priority`] |
//! | delayed-message plugin (`x-delay`) | [`Message::with_delay`], [`ExchangeOptions::delayed`], [`Delivery::nack_with_delay`] |
//! | (extensions) time, deduplication | [`Clock`], [`ManualClock`], [`QueueOptions::deduplication_window`], [`ProcessedIds`] |
//! | RPC with `reply_to` / `correlation_id`, direct reply-to | [`Connection::call`], [`Connection::call_async`], [`Connection::call_typed`], [`Connection::serve`] |
//! | durable queues, persistent messages, publisher confirms | [`Broker::open`], [`StoreOptions`], [`SyncPolicy`], [`Connection::publish_confirmed`], [`Confirm`], [`Broker::recovery`] |
//! | (extensions) async, workers, typed payloads, last will | [`Consumer::recv_async`], [`Consumer::stream`], [`Connection::worker`], [`Connection::worker_async`], [`Codec`], [`Delivery::decode`], [`Connection::set_will`] |
//!
//! # Guarantees
//!
//! - Nothing is lost: a delivery dropped unsettled, a cancelled consumer's
//!   undelivered messages and every unsettled delivery of a closed connection
//!   go back to their queue, in their original position; a message that
//!   leaves a queue unconsumed (expired, over a limit, rejected, past the
//!   delivery limit) is dead-lettered or counted in the queue's figures.
//! - Nothing is duplicated: a message reaches a queue once per publish, and a
//!   delivery is settled once (settling takes it by value).
//! - Publishing takes no broker-wide lock and never blocks (on a broker with
//!   a data directory, a publish to a durable queue waits for its sync, per
//!   the [`SyncPolicy`]).
//! - With [`Broker::open`], durable queues and their persistent messages
//!   survive a crash of the process: nothing confirmed is lost, and a
//!   message delivered again after a crash is flagged redelivered.
//! - Bad input is an error, never a panic; a message that is not published
//!   comes back inside the [`PublishError`].
//!
//! See `ARCHITECTURE.md` for the design and `README.md` for where
//! interoffice differs from RabbitMQ.

// Denied, not forbidden: two modules allow it, each for a measured win,
// with why it is sound in their docs: `prefetch.rs` for one prefetch
// hint, `inbox/ring.rs` for the slots of the inbox's lock-free ring
// (model-checked by `tests/loom.rs`). Nothing else may.
#![deny(unsafe_code)]
#![warn(clippy::missing_errors_doc)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![recursion_limit = "256"]
#![warn(missing_docs)]

mod access;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod bridge;
mod broker;
mod clock;
mod codec;
mod connection;
mod consumer;
mod conversation;
mod core;
mod credit;
mod dead_letter;
mod death;
mod definitions;
mod delivery;
mod draw;
mod durable;
mod error;
mod exchange;
mod explain;
mod faults;
mod field;
mod flow;
mod hash;
mod idempotency;
mod inbox;
mod lint;
mod message;
mod observe;
mod overview;
mod prefetch;
mod properties;
mod queue;
mod recorder;
mod routing;
mod rpc;
mod settle;
mod similar;
mod sync;
mod timer;
mod trace;
mod typed;
mod vhost;
mod wake;
mod worker;

pub use access::{
    AccessRefused, AuthBackend, AuthBackendError, AuthenticatedUser, Credentials, DEFAULT_USER,
    IMPERSONATOR_TAG, InvalidPattern, Permission, Permissions, Refusal, Resource, TopicPermissions,
    UserError, UserInfo, UserStore,
};
pub use broker::{Broker, BrokerOptions, ConnectOptions, MAX_NAME_LEN};
pub use clock::{Clock, MAX_DURATION, ManualClock};
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use codec::Json;
#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
pub use codec::MsgPack;
pub use codec::{Bincode, Codec, DecodeError, EncodeError, TypedPublishError};
pub use connection::{Confirm, Connection, DeleteExchangeOptions, DeleteQueueOptions, Publisher};
pub use consumer::{ConsumeOptions, Consumer, Deliveries, IntoDeliveries, Recv};
pub use conversation::{
    CONVERSATION_ID_HEADER, Conversation, ConversationScope, INITIATOR_ID_HEADER, TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
};
pub use death::{Death, DeathReason, FirstDeath, ReasonCounts};
pub use definitions::{
    BindingDefinition, Definitions, ExchangeDefinition, JsonValue, LoadReport, PermissionDefinition,
    QueueDefinition, TopicPermissionDefinition, UserDefinition, VhostDefinition,
};
pub use delivery::Delivery;
pub use durable::{
    MAX_GROUP_DELAY, OpenError, RecoveryReport, StoreError, StoreOptions, StoreStats, SyncPolicy, Truncation,
};
pub use error::{
    AckError, BindError, ConnectError, ConsumeError, DeclareError, DeleteError, ErrorKind, PublishBatchError,
    PublishError, RecvError, RecvTimeoutError, TryRecvError,
};
pub use exchange::{BindingInfo, ExchangeKind, ExchangeOptions};
pub use explain::{Hop, NearMiss, Route, RouteExplanation, Via};
pub use faults::{Fault, FaultAction, FaultInjector, InjectedFault};
pub use field::{FieldString, FieldTable, FieldValue};
pub use flow::{FlowEvent, FlowStatus};
pub use idempotency::{ProcessError, Processed, ProcessedIds};
pub use lint::{LintFinding, Severity};
pub use message::{DeliveryMode, Message, Properties};
pub use observe::{Event, PublishOutcome, SettleOutcome, Tap};
pub use overview::{ExchangeOverview, LinkOverview, Overview, QueueOverview};
pub use queue::{DeduplicationWindow, MessageStats, Overflow, QueueOptions, QueueStats, QueueType};
pub use recorder::Recorder;
pub use rpc::{Call, CallError, DIRECT_REPLY_TO, RpcStats};
pub use settle::{Pending, PendingQueue, SettleError};
pub use typed::Typed;
pub use vhost::batch::BatchRouted;
pub use vhost::publish::{PublishOptions, Routed};
pub use vhost::{DEFAULT_VHOST, VirtualHost};
pub use worker::failure::{EXCEPTION_HANDLER_HEADER, EXCEPTION_HEADER, EXCEPTION_TYPE_HEADER};
pub use worker::{
    AsyncWorker, Backoff, FailureHook, HandlerFailure, OnError, StopHandle, Worker, WorkerOptions,
    WorkerReport,
};

/// The README's code blocks, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
