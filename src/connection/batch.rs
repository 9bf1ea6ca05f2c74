//! Publishing many messages in one call.

use super::Connection;
use crate::access::grant::Grant;
use crate::broker::Broker;
use crate::error::{PublishBatchError, PublishError};
use crate::message::Message;
use crate::vhost::Vhost;
use crate::vhost::batch::BatchRouted;
use crate::vhost::publish::PublishOptions;

impl Connection {
    /// Publishes `messages` (routing key, message) to `exchange`, in order,
    /// as that many [`publish_with`](Self::publish_with) calls would — the
    /// same checks, routing and outcomes, each message on its own — but
    /// cheaper: routing runs once per distinct routing key (where it
    /// depends on the key alone), each queue reached takes its share of the
    /// batch under one hold of its lock, and a durable broker waits for one
    /// sync. While the memory alarm is on it waits once, before the batch.
    ///
    /// Each queue receives the batch's messages in batch order. Between
    /// queues there is no order (as between separate publishes): a queue
    /// may hold the whole batch before the next queue holds any of it. The
    /// topology is read when each distinct key is first routed: a binding
    /// made meanwhile may miss the rest of the batch.
    ///
    /// ```
    /// use interoffice::{Broker, Message, PublishOptions, QueueOptions};
    ///
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_queue("events", QueueOptions::default())?;
    /// let batch = (0..100).map(|i| ("events", Message::new(format!("event {i}"))));
    /// let routed = conn.publish_batch("", batch, PublishOptions::default())?;
    /// assert_eq!((routed.messages(), routed.queues()), (100, 100));
    /// assert_eq!(broker.queue_stats("events")?.messages_ready, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`PublishBatchError`], listing by index the messages that were not
    /// published, each with its [`PublishError`] holding the message; the
    /// others were published. A closed connection fails every message.
    pub fn publish_batch<K: AsRef<str>>(
        &self,
        exchange: &str,
        messages: impl IntoIterator<Item = (K, Message)>,
        options: PublishOptions,
    ) -> Result<BatchRouted, PublishBatchError> {
        let closed = self.is_closed();
        publish_batch(&self.broker, closed, &self.vhost, &self.grant, exchange, messages, options)
    }
}

/// [`Connection::publish_batch`] and `Publisher::publish_batch`: a closed
/// connection fails every message; the memory alarm is waited out once.
pub(super) fn publish_batch<K: AsRef<str>>(
    broker: &Broker,
    closed: bool,
    vhost: &Vhost,
    grant: &Grant,
    exchange: &str,
    messages: impl IntoIterator<Item = (K, Message)>,
    options: PublishOptions,
) -> Result<BatchRouted, PublishBatchError> {
    let mut messages = messages.into_iter().peekable();
    if closed {
        let failed = messages
            .enumerate()
            .map(|(index, (_, message))| {
                (index, PublishError::ConnectionClosed { message: Box::new(message) })
            })
            .collect();
        return Err(PublishBatchError { failed, routed: BatchRouted::default() });
    }
    if messages.peek().is_some() {
        broker.inner.core.wait_while_blocked();
    }
    vhost.publish_batch(grant, exchange, messages, options)
}
