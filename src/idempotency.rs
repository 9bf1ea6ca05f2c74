//! The consumer-side half of deduplication: remember which message ids were
//! processed, so a handler runs once per id even when a message comes twice
//! (redelivered after a lost ack, or published twice).

use std::collections::{HashSet, VecDeque};

use thiserror::Error;

use crate::delivery::Delivery;
use crate::error::AckError;
use crate::sync::Mutex;

/// What [`ProcessedIds::process`] did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The handler ran and succeeded; the delivery was acknowledged.
    Done(T),
    /// The id was processed before: the handler did not run, and the
    /// delivery was acknowledged.
    Duplicate,
}

/// Why [`ProcessedIds::process`] failed.
#[derive(Debug, Error)]
pub enum ProcessError<E> {
    /// The handler failed; the delivery was nacked with requeue and its id
    /// is not remembered, so it runs again when redelivered.
    #[error("the handler failed: {0}")]
    Handler(E),
    /// Settling the delivery failed (its connection closed: it was requeued).
    #[error(transparent)]
    Settle(#[from] AckError),
}

#[derive(Debug, Default)]
struct Remembered {
    ids: HashSet<Box<str>>,
    order: VecDeque<Box<str>>,
}

/// A bounded memory of processed message ids: the idempotent-consumer
/// pattern. Share one (it is `Sync`) between the threads consuming a queue.
///
/// An id is remembered when its handler starts, and forgotten again if the
/// handler fails, so a copy arriving while the first is still being handled
/// is treated as a duplicate. Once more than `capacity` ids are remembered,
/// the oldest is forgotten. Deliveries without a `message_id` always run.
///
/// ```
/// use interoffice::{Broker, ConsumeOptions, Message, Processed, ProcessedIds, QueueOptions};
///
/// let conn = Broker::new().connect();
/// conn.declare_queue("payments", QueueOptions::default())?;
/// // The publisher retried after a lost confirmation: the same payment twice.
/// conn.publish("", "payments", Message::new("pay 10").with_message_id("p-1"))?;
/// conn.publish("", "payments", Message::new("pay 10").with_message_id("p-1"))?;
///
/// let seen = ProcessedIds::new(10_000);
/// let consumer = conn.consume("payments", ConsumeOptions::default())?;
/// let mut charged = 0;
/// for _ in 0..2 {
///     let outcome = seen.process(consumer.recv()?, |_| {
///         charged += 10;
///         Ok::<_, std::io::Error>(())
///     })?;
///     println!("{outcome:?}");
/// }
/// assert_eq!(charged, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ProcessedIds {
    capacity: usize,
    inner: Mutex<Remembered>,
}

impl ProcessedIds {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        ProcessedIds { capacity: capacity.max(1), inner: Mutex::new(Remembered::default()) }
    }

    /// Runs `handler` on `delivery` unless its `message_id` was processed
    /// before, and settles it: acked after success or for a duplicate,
    /// nacked with requeue after a failure.
    ///
    /// # Errors
    ///
    /// [`ProcessError`]: the handler failed (the delivery is nacked with requeue), or settling failed.
    pub fn process<T, E>(
        &self,
        delivery: Delivery,
        handler: impl FnOnce(&Delivery) -> Result<T, E>,
    ) -> Result<Processed<T>, ProcessError<E>> {
        let id = delivery.properties().message_id().map(str::to_owned);
        if let Some(id) = &id
            && !self.remember(id)
        {
            delivery.ack()?;
            return Ok(Processed::Duplicate);
        }
        match handler(&delivery) {
            Ok(value) => {
                delivery.ack()?;
                Ok(Processed::Done(value))
            }
            Err(error) => {
                if let Some(id) = &id {
                    self.forget(id);
                }
                delivery.nack(true)?;
                Err(ProcessError::Handler(error))
            }
        }
    }

    /// Records `id` as processed; false if it already was.
    pub fn remember(&self, id: &str) -> bool {
        let mut inner = self.inner.lock();
        if !inner.ids.insert(id.into()) {
            return false;
        }
        inner.order.push_back(id.into());
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.ids.remove(&oldest);
            }
        }
        true
    }

    /// Forgets `id`, so a message with it runs again.
    pub fn forget(&self, id: &str) {
        let mut inner = self.inner.lock();
        if inner.ids.remove(id) {
            inner.order.retain(|x| **x != *id);
        }
    }

    /// Whether `id` is remembered as processed.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().ids.contains(id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_id_is_forgotten_past_capacity() {
        let seen = ProcessedIds::new(2);
        assert!(seen.remember("a") && seen.remember("b") && seen.remember("c"));
        assert!(!seen.contains("a"));
        assert!(seen.contains("b") && seen.contains("c"));
        assert!(!seen.remember("c"));
        assert_eq!(seen.len(), 2);
    }
}
