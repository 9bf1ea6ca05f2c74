//! A queue's figures: the public snapshot ([`QueueStats`], with RabbitMQ's
//! `message_stats` counters in [`MessageStats`]), the counters kept beside
//! the lock (bumped without it), and what keeps the bus from settling.

use super::{Queue, Settlement};
use crate::death::{DeathReason, ReasonCounts};
use crate::settle::PendingQueue;
use crate::sync::{AtomicU64, Ordering};

/// Counts describing one queue at one moment.
///
/// The gauges (`messages_*`, `consumers`) are the present state; the
/// counters (`messages_expired` and below) count since the queue was
/// declared. Reading the figures first expires what is due, so an expired
/// message is never counted as ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Messages waiting for a consumer.
    pub messages_ready: usize,
    /// Delayed messages not yet due (not counted as ready).
    pub messages_delayed: usize,
    /// Messages delivered (or assigned to a consumer's inbox) and not yet settled.
    pub messages_unacknowledged: usize,
    /// Consumers attached.
    pub consumers: usize,
    /// Messages that expired in this queue (then dead-lettered or dropped).
    pub messages_expired: u64,
    /// Messages that left this queue through its dead-letter exchange and
    /// reached at least one queue, by reason.
    pub dead_lettered: ReasonCounts,
    /// Messages that left this queue for a dead-letter reason and were not
    /// dead-lettered: the queue has no dead-letter exchange, or it is
    /// missing, routed them nowhere, or would have made a cycle.
    pub dropped: ReasonCounts,
    /// Of the dropped: those that had a dead-letter exchange which failed
    /// them (missing, routed nowhere, cycle).
    pub dead_letter_failures: u64,
    /// Publishes refused because the queue was full (`RejectPublish`,
    /// `RejectPublishDlx`).
    pub publishes_rejected: u64,
    /// Publishes refused as duplicates by the deduplication window.
    pub duplicates_refused: u64,
    /// Messages removed by purges since the queue was declared.
    pub messages_purged: u64,
    /// Body bytes of the ready and delayed messages.
    pub ready_bytes: usize,
    /// Message rates' counters (RabbitMQ's `message_stats`), or `None` when
    /// the broker runs with [`BrokerOptions::statistics`](crate::BrokerOptions::statistics)
    /// off.
    pub message_stats: Option<MessageStats>,
}

/// How many messages went through a queue since it was declared: the
/// counters behind RabbitMQ's `message_stats` rates. Kept only while
/// [`BrokerOptions::statistics`](crate::BrokerOptions::statistics) is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MessageStats {
    /// Publishes the queue accepted (delayed ones included; duplicates and
    /// rejected publishes excluded).
    pub published: u64,
    /// Messages sent to consumers (RabbitMQ's `deliver` + `deliver_no_ack`).
    pub delivered: u64,
    /// Messages taken by `get` (RabbitMQ's `get` + `get_no_ack`).
    pub fetched: u64,
    /// Of the delivered and fetched: those delivered before (RabbitMQ's `redeliver`).
    pub redelivered: u64,
    /// Deliveries acknowledged explicitly (auto-ack deliveries are not).
    pub acknowledged: u64,
    /// Deliveries settled as they were handed out (auto-ack consumers and
    /// `get`s): RabbitMQ's `deliver_no_ack` + `get_no_ack`.
    pub auto_acknowledged: u64,
    /// Nacks and rejects with requeue (and delayed requeues).
    pub requeued: u64,
    /// Nacks and rejects without requeue (dead-lettered or dropped).
    pub rejected: u64,
}

/// Monotonic counters, updated without the queue lock.
#[derive(Debug, Default)]
pub(super) struct Figures {
    pub(super) expired: AtomicU64,
    /// Bumped by the threads that ack (never by publishers), only with
    /// statistics on: counted here rather than under the queue lock, which
    /// an ack does not otherwise take.
    pub(super) acknowledged: AtomicU64,
    /// Deliveries settled when handed out (auto-ack consumers, `get` with
    /// auto-ack), with statistics on; bumped by the receiving threads.
    pub(super) auto_acknowledged: AtomicU64,
    /// Nacks and rejects with requeue (delayed included), with statistics on.
    pub(super) requeued: AtomicU64,
    /// Nacks and rejects without requeue, with statistics on.
    pub(super) rejected: AtomicU64,
    /// Messages removed by purges.
    pub(super) purged: AtomicU64,
    pub(super) dead_lettered: [AtomicU64; 4],
    pub(super) dropped: [AtomicU64; 4],
    pub(super) dead_letter_failures: AtomicU64,
    pub(super) publishes_rejected: AtomicU64,
    pub(super) duplicates_refused: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn read(counters: &[AtomicU64; 4]) -> ReasonCounts {
    let get = |reason: DeathReason| counters[reason as usize].load(Ordering::Relaxed);
    ReasonCounts {
        rejected: get(DeathReason::Rejected),
        expired: get(DeathReason::Expired),
        maxlen: get(DeathReason::MaxLen),
        delivery_limit: get(DeathReason::DeliveryLimit),
    }
}

impl Queue {
    /// Counts a dead letter's fate.
    pub(crate) fn count_dead_letter(&self, reason: DeathReason, routed: bool, failed: bool) {
        if routed {
            bump(&self.figures.dead_lettered[reason as usize]);
        } else {
            bump(&self.figures.dropped[reason as usize]);
            if failed {
                bump(&self.figures.dead_letter_failures);
            }
        }
    }

    /// Counts a delivery settled as it was handed out, if statistics are on.
    pub(crate) fn count_auto_ack(&self) {
        if self.context.statistics {
            bump(&self.figures.auto_acknowledged);
        }
    }

    /// Counts a nack or reject, if statistics are on (acks count in `count_ack`).
    pub(crate) fn count_settle(&self, how: Settlement) {
        if self.context.statistics {
            match how {
                Settlement::Ack => {}
                Settlement::Requeue | Settlement::RequeueAfter(_) => bump(&self.figures.requeued),
                Settlement::Discard => bump(&self.figures.rejected),
            }
        }
    }

    /// Counts an explicit ack, if statistics are on.
    pub(crate) fn count_ack(&self) {
        if self.context.statistics {
            bump(&self.figures.acknowledged);
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let (ready, delayed, unacked, consumers, counts, ready_bytes) = self.with_state(|state, now| {
            state.bring_up_to_date(self, now);
            let in_flight: usize = state.holders().map(|c| c.credit.in_flight() as usize).sum();
            let counts = state.counts;
            (
                state.ready.len(),
                state.delayed.len(),
                in_flight + state.get_unacked,
                state.consumers.len(),
                counts,
                state.ready.bytes() + state.delayed.bytes(),
            )
        });
        let figures = &self.figures;
        QueueStats {
            name: self.name.to_string(),
            messages_ready: ready,
            messages_delayed: delayed,
            messages_unacknowledged: unacked,
            consumers,
            messages_expired: figures.expired.load(Ordering::Relaxed),
            dead_lettered: read(&figures.dead_lettered),
            dropped: read(&figures.dropped),
            dead_letter_failures: figures.dead_letter_failures.load(Ordering::Relaxed),
            publishes_rejected: figures.publishes_rejected.load(Ordering::Relaxed),
            duplicates_refused: figures.duplicates_refused.load(Ordering::Relaxed),
            messages_purged: figures.purged.load(Ordering::Relaxed),
            ready_bytes,
            message_stats: counts.map(|counts| MessageStats {
                acknowledged: figures.acknowledged.load(Ordering::Relaxed),
                auto_acknowledged: figures.auto_acknowledged.load(Ordering::Relaxed),
                requeued: figures.requeued.load(Ordering::Relaxed),
                rejected: figures.rejected.load(Ordering::Relaxed),
                ..counts
            }),
        }
    }

    /// What the queue holds that keeps the bus from settling: ready
    /// messages, delayed ones (only under the system clock: under a manual
    /// clock a delayed message waits for the test to advance it, and counts
    /// once it is due), and unsettled deliveries by consumer.
    pub(crate) fn pending(&self) -> PendingQueue {
        self.with_state(|state, now| {
            state.bring_up_to_date(self, now);
            let unacknowledged: Vec<(String, usize)> = state
                .holders()
                .map(|c| (c.tag.to_string(), c.credit.in_flight() as usize))
                .chain(std::iter::once(("(get)".to_owned(), state.get_unacked)))
                .filter(|(_, n)| *n > 0)
                .collect();
            PendingQueue {
                vhost: String::new(),
                name: self.name.to_string(),
                ready: state.ready.len(),
                delayed: if self.context.clock.is_manual() { 0 } else { state.delayed.len() },
                unacknowledged,
                consumers: state.consumers.len(),
            }
        })
    }
}
