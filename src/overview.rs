//! The overview: every queue's and exchange's counters in one
//! serialisable snapshot ([`Broker::overview`](crate::Broker::overview)),
//! and, with feature `metrics`, their export through the `metrics` facade.

use serde::Serialize;

use crate::exchange::ExchangeKind;
use crate::queue::QueueStats;

/// One queue in the [`Overview`]. Counters count since the queue was
/// declared (with [`BrokerOptions::statistics`](crate::BrokerOptions::statistics)
/// on, the default; off, the message counters read 0); gauges are the
/// present state. At quiescence the counters add up:
/// `published = acknowledged + dead_lettered + dropped + expired + purged +
/// ready + delayed + unacknowledged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueOverview {
    /// The virtual host it is in.
    pub vhost: String,
    /// The queue.
    pub name: String,
    /// Messages the queue accepted.
    pub published: u64,
    /// Messages sent to consumers or taken by `get`.
    pub delivered: u64,
    /// Of those, deliveries of a message delivered before.
    pub redelivered: u64,
    /// Deliveries acknowledged, explicitly or as they were handed out
    /// (auto-ack).
    pub acknowledged: u64,
    /// Nacks and rejects with requeue.
    pub nacked: u64,
    /// Nacks and rejects without requeue.
    pub rejected: u64,
    /// Messages that left through the dead-letter exchange to a queue, for
    /// a reason other than expiry.
    pub dead_lettered: u64,
    /// Messages that left for a reason other than expiry and were not
    /// dead-lettered (no dead-letter exchange, or it failed them).
    pub dropped: u64,
    /// Messages that expired (dead-lettered or not).
    pub expired: u64,
    /// Messages removed by purges.
    pub purged: u64,
    /// Messages waiting for a consumer.
    pub ready: usize,
    /// Delayed messages not yet due.
    pub delayed: usize,
    /// Deliveries not yet settled.
    pub unacknowledged: usize,
    /// Consumers attached.
    pub consumers: usize,
    /// Body bytes of the ready and delayed messages.
    pub bytes: usize,
}

impl From<&QueueStats> for QueueOverview {
    fn from(stats: &QueueStats) -> Self {
        let counts = stats.message_stats.unwrap_or_default();
        let expired = stats.dead_lettered.expired + stats.dropped.expired;
        QueueOverview {
            vhost: crate::DEFAULT_VHOST.into(),
            name: stats.name.clone(),
            published: counts.published,
            delivered: counts.delivered + counts.fetched,
            redelivered: counts.redelivered,
            acknowledged: counts.acknowledged + counts.auto_acknowledged,
            nacked: counts.requeued,
            rejected: counts.rejected,
            dead_lettered: stats.dead_lettered.total() - stats.dead_lettered.expired,
            dropped: stats.dropped.total() - stats.dropped.expired,
            expired,
            purged: stats.messages_purged,
            ready: stats.messages_ready,
            delayed: stats.messages_delayed,
            unacknowledged: stats.messages_unacknowledged,
            consumers: stats.consumers,
            bytes: stats.ready_bytes,
        }
    }
}

/// One exchange in the [`Overview`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExchangeOverview {
    /// The virtual host it is in.
    pub vhost: String,
    /// The exchange.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
    /// Messages published to it (not counting those reaching it through
    /// another exchange): `routed + unroutable`.
    pub published: u64,
    /// Of those, messages that reached at least one queue (or were a
    /// duplicate there).
    pub routed: u64,
    /// Of those, messages that reached no queue.
    pub unroutable: u64,
}

/// Every queue and exchange with its counters: see
/// [`Broker::overview`](crate::Broker::overview).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// Queues, by name.
    pub queues: Vec<QueueOverview>,
    /// Exchanges, by name (the default exchange is `""`).
    pub exchanges: Vec<ExchangeOverview>,
    /// Whether the snapshot is consistent: no message moved between queues
    /// while it was read (see [`Broker::settle`](crate::Broker::settle)).
    /// Each queue's own figures are always read under its lock.
    pub consistent: bool,
    /// Links to RabbitMQ (feature `amqp`), by name: where each stands and
    /// what it has forwarded.
    pub links: Vec<LinkOverview>,
}

/// One link to RabbitMQ in the [`Overview`] (feature `amqp`: see
/// `bridge::Link`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LinkOverview {
    /// The link (`outbound 'queue' → exchange 'x'`, `inbound 'queue' → exchange 'x'`).
    pub name: String,
    /// `connecting`, `running`, `backoff` or `stopped`.
    pub state: &'static str,
    /// Messages forwarded and settled on both sides.
    pub forwarded: u64,
    /// Messages requeued (a negative confirm, a failed local publish).
    pub requeued: u64,
    /// Messages the other side could not take, dead-lettered locally.
    pub dead_lettered: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// The last failure (passwords taken out).
    pub last_error: Option<String>,
}

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl Overview {
    /// Records every figure through the [`metrics`] facade, for whatever
    /// exporter the application installed (Prometheus, StatsD, ...):
    /// counters `interoffice_queue_<counter>_total` and gauges
    /// `interoffice_queue_<gauge>` labelled `vhost` and `queue`, and
    /// `interoffice_exchange_<counter>_total` labelled `vhost` and `exchange`. Counters
    /// are set to their absolute value, so calling this periodically is
    /// enough.
    pub fn record_metrics(&self) {
        for q in &self.queues {
            let label = [("vhost", q.vhost.clone()), ("queue", q.name.clone())];
            for (name, value) in [
                ("interoffice_queue_published_total", q.published),
                ("interoffice_queue_delivered_total", q.delivered),
                ("interoffice_queue_redelivered_total", q.redelivered),
                ("interoffice_queue_acknowledged_total", q.acknowledged),
                ("interoffice_queue_nacked_total", q.nacked),
                ("interoffice_queue_rejected_total", q.rejected),
                ("interoffice_queue_dead_lettered_total", q.dead_lettered),
                ("interoffice_queue_dropped_total", q.dropped),
                ("interoffice_queue_expired_total", q.expired),
                ("interoffice_queue_purged_total", q.purged),
            ] {
                metrics::counter!(name, &label).absolute(value);
            }
            for (name, value) in [
                ("interoffice_queue_messages_ready", q.ready),
                ("interoffice_queue_messages_delayed", q.delayed),
                ("interoffice_queue_messages_unacknowledged", q.unacknowledged),
                ("interoffice_queue_consumers", q.consumers),
                ("interoffice_queue_bytes", q.bytes),
            ] {
                metrics::gauge!(name, &label).set(value as f64);
            }
        }
        for e in &self.exchanges {
            let label = [("vhost", e.vhost.clone()), ("exchange", e.name.clone())];
            metrics::counter!("interoffice_exchange_published_total", &label).absolute(e.published);
            metrics::counter!("interoffice_exchange_routed_total", &label).absolute(e.routed);
            metrics::counter!("interoffice_exchange_unroutable_total", &label).absolute(e.unroutable);
        }
        for l in &self.links {
            let label = [("link", l.name.clone())];
            metrics::counter!("interoffice_link_forwarded_total", &label).absolute(l.forwarded);
            metrics::counter!("interoffice_link_requeued_total", &label).absolute(l.requeued);
            metrics::counter!("interoffice_link_dead_lettered_total", &label).absolute(l.dead_lettered);
            metrics::counter!("interoffice_link_reconnects_total", &label).absolute(l.reconnects);
        }
    }
}
