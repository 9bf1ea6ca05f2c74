//! # interoffice
//!
//! An embeddable, in-process message bus with the messaging model of
//! RabbitMQ / AMQP 0-9-1: exchanges, queues, bindings, acknowledgements,
//! prefetch and request/reply, with no network and no broker to run.
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
//! See `ARCHITECTURE.md` for the design and `README.md` for where
//! interoffice differs from RabbitMQ.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod connection;
mod consumer;
mod delivery;
mod error;
mod exchange;
mod field;
mod message;
mod queue;
mod sync;

pub use broker::{Broker, BrokerOptions, MAX_NAME_LEN, PublishOptions, Routed};
pub use connection::{Connection, DeleteExchangeOptions, DeleteQueueOptions};
pub use consumer::{ConsumeOptions, Consumer};
pub use delivery::Delivery;
pub use error::{
    AckError, BindError, ConsumeError, DeclareError, DeleteError, ErrorKind, PublishError, RecvError,
    RecvTimeoutError, TryRecvError,
};
pub use exchange::{BindingInfo, ExchangeKind, ExchangeOptions};
pub use field::{FieldTable, FieldValue};
pub use message::{DeliveryMode, Message, Properties};
pub use queue::{QueueOptions, QueueStats};

/// The README's code blocks, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
