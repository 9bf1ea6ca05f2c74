//! What a worker does when a handler fails: the error is kept (the last
//! few in the worker's report), told to an `on_failure` hook and to
//! `tracing`, written into an `x-exception` header when the message is
//! dead-lettered, and the message is settled per [`OnError`] — by default
//! retried with bounded exponential backoff and jitter on the broker's
//! clock, never in a hot loop.

use std::collections::VecDeque;
use std::fmt::{self, Display};
use std::hash::BuildHasher;
use std::time::Duration;

use serde::Serialize;

use crate::delivery::Delivery;
use crate::field::FieldTable;
use crate::sync::{Arc, Mutex};

/// The header a failed message carries when dead-lettered by a worker:
/// the handler's error, as text.
pub const EXCEPTION_HEADER: &str = "x-exception";
/// The header naming the error's type (`std::any::type_name`).
pub const EXCEPTION_TYPE_HEADER: &str = "x-exception-type";
/// The header naming the handler's type (`std::any::type_name`).
pub const EXCEPTION_HANDLER_HEADER: &str = "x-exception-handler";

/// How many failures a worker's report keeps.
pub(crate) const KEPT_FAILURES: usize = 16;

/// Bounded exponential backoff with jitter: the delay before the `n`th
/// retry (n from 0) is `initial × 2ⁿ`, at most `max`, scaled by a jitter
/// factor between ½ and 1 drawn from the delivery (so retries of many
/// messages that failed together spread out, and a deterministic test sees
/// the same delays every run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling to at most 60 s.
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The delay before retrying `delivery` (its `delivery_count` says how
    /// many times it came back already).
    pub fn delay_for(&self, delivery: &Delivery) -> Duration {
        let exponent = delivery.delivery_count().min(40);
        let base = self.initial.saturating_mul(1_u32 << exponent.min(31)).min(self.max);
        // Jitter from the delivery itself: stable for a given message and
        // attempt, different between messages.
        let seed = foldhash::fast::FixedState::with_seed(0x6a69_7474_6572);
        let id = delivery.properties().message_id().unwrap_or_default();
        let draw =
            seed.hash_one((id, delivery.routing_key(), delivery.delivery_count(), delivery.body().len()));
        let factor = 0.5 + (draw >> 11) as f64 / (1_u64 << 54) as f64;
        base.mul_f64(factor).min(self.max)
    }
}

/// What a worker does with a message whose handler returned an error.
///
/// A panic is not an error: a panicking handler's message is always
/// requeued (see [`Worker`](crate::Worker)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnError {
    /// Tried again after a delay that grows with each failure of the
    /// message ([`Backoff`]), on the broker's clock
    /// ([`Delivery::nack_with_delay`]): the default. The message joins the
    /// tail of its queue when due; a queue's
    /// [`delivery_limit`](crate::QueueOptions::delivery_limit) bounds the
    /// retries.
    Backoff(Backoff),
    /// Back to its original position in the queue, flagged redelivered
    /// (`nack(true)`), to be tried again at once. A handler that keeps
    /// failing then loops as fast as it can fail (thousands of times a
    /// second): choose it only with a delivery limit, or for failures that
    /// pass at once.
    Requeue,
    /// Rejected without requeue (`nack(false)`): dead-lettered if the queue
    /// has a dead-letter exchange — with the error in [`EXCEPTION_HEADER`]
    /// — else dropped (and counted in the queue's figures).
    Discard,
    /// Tried again after a fixed delay ([`Delivery::nack_with_delay`]).
    RequeueAfter(Duration),
}

impl Default for OnError {
    /// [`OnError::Backoff`] with [`Backoff::default`]: 100 ms doubling to 60 s.
    fn default() -> Self {
        OnError::Backoff(Backoff::default())
    }
}

impl OnError {
    pub(crate) fn settle(self, delivery: Delivery, failure: &HandlerFailure) {
        // A settle fails only when the connection closed first, and closing
        // has already requeued the message: nothing is left to do.
        let _ = match self {
            OnError::Requeue => delivery.nack(true),
            OnError::Discard => delivery.discard_annotated(failure.headers()),
            OnError::RequeueAfter(delay) => delivery.nack_with_delay(delay),
            OnError::Backoff(backoff) => {
                let delay = backoff.delay_for(&delivery);
                delivery.nack_with_delay(delay)
            }
        };
    }
}

/// A handler's failure, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HandlerFailure {
    /// The queue the message came from.
    pub queue: String,
    /// The message's `message_id`, if it has one.
    pub message_id: Option<String>,
    /// How many times the message had come back before this attempt.
    pub delivery_count: u32,
    /// The error, as its `Display` writes it.
    pub error: String,
    /// The error's type.
    pub error_type: &'static str,
    /// The handler's type.
    pub handler_type: &'static str,
}

impl HandlerFailure {
    pub(crate) fn new<F, E: Display>(delivery: &Delivery, error: &E) -> Self {
        HandlerFailure {
            queue: delivery.queue_name().unwrap_or_default(),
            message_id: delivery.properties().message_id().map(str::to_owned),
            delivery_count: delivery.delivery_count(),
            error: error.to_string(),
            error_type: std::any::type_name::<E>(),
            handler_type: std::any::type_name::<F>(),
        }
    }

    /// The headers a dead-lettered message carries about this failure.
    fn headers(&self) -> FieldTable {
        FieldTable::new()
            .with(EXCEPTION_HEADER, self.error.as_str())
            .with(EXCEPTION_TYPE_HEADER, self.error_type)
            .with(EXCEPTION_HANDLER_HEADER, self.handler_type)
    }
}

impl Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler failed on a message from '{}'", self.queue)?;
        if let Some(id) = &self.message_id {
            write!(f, " (message id {id})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Called with every failure of a worker's handler, on the worker's
/// thread, after the message is settled: see [`WorkerOptions::on_failure`](crate::WorkerOptions::on_failure).
#[derive(Clone)]
pub struct FailureHook(pub(crate) Arc<dyn Fn(&HandlerFailure) + Send + Sync>);

impl FailureHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(&HandlerFailure) + Send + Sync + 'static) -> Self {
        FailureHook(Arc::new(f))
    }
}

impl fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FailureHook")
    }
}

impl PartialEq for FailureHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The last failures of a worker, for its report.
#[derive(Debug, Default)]
pub(crate) struct Failures(Mutex<VecDeque<HandlerFailure>>);

impl Failures {
    pub(crate) fn record(&self, failure: HandlerFailure) {
        let mut kept = self.0.lock();
        if kept.len() == KEPT_FAILURES {
            kept.pop_front();
        }
        kept.push_back(failure);
    }

    pub(crate) fn last(&self) -> Vec<HandlerFailure> {
        self.0.lock().iter().cloned().collect()
    }
}
