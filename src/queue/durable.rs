//! A durable queue's side of durability: writing a persistent message's
//! Publish record as it joins the queue, paging bodies out past the memory
//! budget and back in, and putting recovered messages back at open. The
//! store itself (`crate::durable`) knows nothing of queues.

use std::time::{Duration, Instant};

use super::store::Delayed;
use super::{Envelope, PublishTiming, Queue, QueueType, QueuedMessage};
use crate::durable::{MessageState, Persisted, Placement, QueueJournal, RecoveredMessage, StoreError};
use crate::message::Message;
use crate::sync::Arc;

impl QueuedMessage {
    /// Leaves only its place in the store in memory, with its properties
    /// and names.
    pub(super) fn page_out(&mut self) {
        if !self.paged() && self.envelope.durable().is_some() {
            self.envelope = self.envelope.with_body(bytes::Bytes::new());
            self.set_paged(true);
        }
    }

    /// Reads its body back from the store if it was paged out; false if it
    /// cannot be read (damaged on disk since: counted in the store's
    /// figures).
    pub(crate) fn page_in(&mut self) -> bool {
        if !self.paged() {
            return true;
        }
        let Some(durable) = self.envelope.durable() else { return false };
        match durable.read_body() {
            Ok(body) => {
                self.envelope = self.envelope.with_body(body);
                self.set_paged(false);
                true
            }
            Err(_) => false,
        }
    }
}

impl Queue {
    /// A durable queue's enqueue, out of the memory-only path: writes a
    /// persistent message's Publish record (ready, or delayed until `due`
    /// with its TTL still to start). False if the store refused it (the
    /// error is left in `timing`).
    #[cold]
    #[inline(never)]
    pub(super) fn persist(
        &self,
        msg: &mut QueuedMessage,
        timing: &mut PublishTiming<'_>,
        delayed: Option<(Instant, Option<Duration>)>,
    ) -> bool {
        let Some(journal) = self.context.journal.as_ref() else { return true };
        if msg.envelope.message().properties().delivery_mode() != Some(crate::DeliveryMode::Persistent) {
            return true;
        }
        let now = timing.now.get();
        let placement = match delayed {
            Some((due, ttl)) => {
                Placement::Delayed { due_ms: crate::durable::to_wall_ms(due, now), ttl_ms: ttl.map(millis) }
            }
            None => Placement::Ready {
                seq: msg.seq,
                expires_ms: msg.expires_at().map(|at| crate::durable::to_wall_ms(at, now)),
            },
        };
        match self.write_publish(journal, msg, placement, timing) {
            Ok(()) => true,
            Err(e) => {
                timing.store_error = Some(Box::new(e));
                false
            }
        }
    }

    /// Writes `msg`'s Publish record and gives it this queue's own envelope,
    /// tied to the record.
    fn write_publish(
        &self,
        journal: &Arc<QueueJournal>,
        msg: &mut QueuedMessage,
        placement: Placement,
        timing: &mut PublishTiming<'_>,
    ) -> Result<(), StoreError> {
        let envelope = &msg.envelope;
        let state = MessageState { placement, deliveries: msg.deliveries, redelivered: msg.redelivered() };
        let (persisted, lsn) = journal.publish(
            state,
            envelope.exchange(),
            envelope.routing_key(),
            envelope.message().properties(),
            envelope.message().body(),
        )?;
        msg.envelope = envelope.persisted(persisted);
        timing.durable_lsn = timing.durable_lsn.max(lsn);
        Ok(())
    }

    /// Puts back the persistent messages the store recovered for this
    /// queue, in their order, with their delivery counts; the ids of
    /// messages it accepted go back in its deduplication window.
    pub(crate) fn recover(&self, messages: Vec<RecoveredMessage>, ids: &[String]) {
        let Some(journal) = self.context.journal.clone() else { return };
        self.with_state(|state, now| {
            let at = now.get();
            if let Some(recent) = &mut state.recent_ids {
                for id in ids {
                    recent.record(id, Some(at));
                }
            }
            for recovered in messages {
                let body_len = recovered.body_len();
                // Past the memory budget, the body stays on disk: decided
                // before the envelope is made, so it is made once.
                let body = recovered.body().filter(|_| {
                    !matches!(recovered.state.placement, Placement::Ready { .. })
                        || state.memory_budget == usize::MAX
                        || state.ready.memory_bytes() + body_len <= state.memory_budget
                });
                let paged = body.is_none();
                let body = body.unwrap_or_default();
                let message = Message::from_shared(Arc::clone(&recovered.properties), body);
                let mut envelope = Envelope::new(recovered.exchange(), recovered.routing_key(), message);
                envelope.set_durable(Arc::new(Persisted::recovered(&journal, recovered.pid, body_len)));
                let mut envelope = Arc::new(envelope);
                let deliveries = recovered.state.deliveries;
                if self.policy.delivery_limit.is_some() || self.policy.queue_type == QueueType::Quorum {
                    envelope = envelope.with_delivery_count(deliveries);
                }
                let rank = self.rank(envelope.message());
                let mut msg = QueuedMessage::new(envelope, rank);
                msg.deliveries = deliveries;
                msg.set_redelivered(recovered.state.redelivered);
                msg.set_paged(paged);
                match recovered.state.placement {
                    Placement::Ready { seq, expires_ms } => {
                        msg.seq = seq;
                        msg.set_expires_at(expires_ms.map(|ms| crate::durable::from_wall_ms(ms, at)));
                        state.next_seq = state.next_seq.max(seq + 1);
                        state.ready.insert(msg);
                    }
                    Placement::Delayed { due_ms, ttl_ms } => {
                        let due = crate::durable::from_wall_ms(due_ms, at);
                        state.delayed.insert(due, Delayed { msg, ttl: ttl_ms.map(Duration::from_millis) });
                    }
                }
            }
            state.catch_up(self, now);
            state.dispatch(self, now);
        });
    }
}

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
