//! Flow control: RabbitMQ's memory alarm for an in-process bus.
//!
//! With [`BrokerOptions::memory_high_watermark`](crate::BrokerOptions::memory_high_watermark)
//! set, the broker keeps an estimate of the memory its queues hold (message
//! bodies plus a fixed per-message overhead, ready and delayed). Past the
//! watermark the broker is *blocked*: [`Connection::publish`](crate::Connection::publish)
//! waits until it is not, [`Connection::try_publish`](crate::Connection::try_publish)
//! fails at once with [`PublishError::Blocked`](crate::PublishError::Blocked)
//! (handing the message back), and every connection's
//! [`flow_events`](crate::Connection::flow_events) receives
//! [`FlowEvent::Blocked`], then [`FlowEvent::Unblocked`] once consumers have
//! drained the queues below it — RabbitMQ's `connection.blocked` /
//! `connection.unblocked`.
//!
//! The estimate costs publishers nothing in the common case: each queue
//! counts its own bytes under its own lock, and reports to the broker-wide
//! total only when its count has moved by [`FLOW_GRANULE`] since its last
//! report, so the shared counter is written once per 64 KiB of change per
//! queue, not once per message. The total is therefore exact to within
//! 64 KiB per queue. Without a watermark nothing is counted at all.

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::sync::{AtomicBool, AtomicI64, Condvar, Mutex, Ordering};

/// How far a queue's held bytes move before it reports them to the broker.
pub(crate) const FLOW_GRANULE: i64 = 64 * 1024;

/// The memory a queued message is counted for beyond its body: the bus's
/// own structures (a 112-byte envelope allocation and a 32-byte store
/// entry) and a little of its properties.
pub(crate) const MESSAGE_OVERHEAD: usize = 160;

/// A change of the broker's flow state, as RabbitMQ's `connection.blocked`
/// and `connection.unblocked` notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowEvent {
    /// The queues hold more than the memory high watermark: publishing
    /// blocks (`publish`) or fails (`try_publish`) until it is unblocked.
    Blocked {
        /// The estimated bytes held when it blocked.
        used: usize,
        /// The watermark.
        watermark: usize,
    },
    /// Back below the watermark: publishing goes on.
    Unblocked,
}

/// The broker's flow state: see [`Broker::flow`](crate::Broker::flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FlowStatus {
    /// The estimated bytes the queues hold (bodies plus per-message
    /// overhead), exact to within 64 KiB per queue; 0 without a watermark.
    pub used: usize,
    /// The memory high watermark, if set.
    pub watermark: Option<usize>,
    /// Whether publishing is blocked.
    pub blocked: bool,
}

#[derive(Debug, Default)]
struct Listeners {
    senders: Vec<Sender<FlowEvent>>,
}

/// The broker-wide memory estimate and alarm.
#[derive(Debug)]
pub(crate) struct Flow {
    watermark: usize,
    used: AtomicI64,
    blocked: AtomicBool,
    /// Serialises alarm transitions and their notifications.
    listeners: Mutex<Listeners>,
    unblocked: Condvar,
}

impl Flow {
    pub(crate) fn new(watermark: usize) -> Self {
        Flow {
            watermark,
            used: AtomicI64::new(0),
            blocked: AtomicBool::new(false),
            listeners: Mutex::new(Listeners::default()),
            unblocked: Condvar::new(),
        }
    }

    pub(crate) fn watermark(&self) -> usize {
        self.watermark
    }

    /// The estimate, never negative.
    pub(crate) fn used(&self) -> usize {
        usize::try_from(self.used.load(Ordering::Acquire)).unwrap_or(0)
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// A queue's held bytes moved by `delta` since its last report.
    pub(crate) fn adjust(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let used = self.used.fetch_add(delta, Ordering::AcqRel).saturating_add(delta);
        let over = used > i64::try_from(self.watermark).unwrap_or(i64::MAX);
        if over != self.is_blocked() {
            self.transition();
        }
    }

    /// Sets the alarm to what the estimate says now, telling every listener
    /// of a change. Under the listeners' lock, so two racing reports cannot
    /// announce the same change twice or in the wrong order. Sending into a
    /// channel runs no user code.
    fn transition(&self) {
        let mut listeners = self.listeners.lock();
        let used = self.used();
        let over = used > self.watermark;
        if over == self.is_blocked() {
            return;
        }
        self.blocked.store(over, Ordering::Release);
        let event =
            if over { FlowEvent::Blocked { used, watermark: self.watermark } } else { FlowEvent::Unblocked };
        listeners.senders.retain(|s| s.send(event).is_ok());
        if !over {
            self.unblocked.notify_all();
        }
    }

    /// Waits until publishing is unblocked: what `publish` does while the
    /// alarm is on, as RabbitMQ blocks a publishing connection.
    pub(crate) fn wait_unblocked(&self) {
        let mut listeners = self.listeners.lock();
        while self.is_blocked() {
            self.unblocked.wait(&mut listeners);
        }
    }

    /// A receiver of every later flow event; told at once if blocked now.
    pub(crate) fn subscribe(&self) -> Receiver<FlowEvent> {
        let (sender, receiver) = unbounded();
        let mut listeners = self.listeners.lock();
        if self.is_blocked() {
            let _ = sender.send(FlowEvent::Blocked { used: self.used(), watermark: self.watermark });
        }
        listeners.senders.push(sender);
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_the_watermark_blocks_and_falling_below_unblocks_once_each() {
        let flow = Flow::new(100);
        let events = flow.subscribe();
        flow.adjust(60);
        flow.adjust(60);
        assert!(flow.is_blocked());
        flow.adjust(10);
        flow.adjust(-100);
        assert!(!flow.is_blocked());
        let seen: Vec<FlowEvent> = events.try_iter().collect();
        assert_eq!(seen, [FlowEvent::Blocked { used: 120, watermark: 100 }, FlowEvent::Unblocked]);
        flow.wait_unblocked();
    }
}
