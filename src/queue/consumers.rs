//! What passes between a queue and its consumers outside dispatch:
//! attaching and cancelling (everything a consumer held goes back in one
//! step), requeues, credit released by settles, settling `get`s, rejects,
//! and `basic.get` itself.

use super::*;

impl Queue {
    /// Registers a consumer and hands it what is waiting.
    pub(crate) fn add_consumer(
        &self,
        consumer: Arc<ConsumerShared>,
        inbox: Sender<QueuedMessage>,
    ) -> Result<(), ConsumeError> {
        self.with_state(|state, now| {
            if state.deleted {
                return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
            }
            let exclusive_held = state.consumers.iter().any(|s| s.consumer.exclusive);
            if exclusive_held || (consumer.exclusive && !state.consumers.is_empty()) {
                return Err(ConsumeError::AccessRefused(format!(
                    "queue '{}' in vhost '/' in exclusive use",
                    self.name
                )));
            }
            let prefetch = consumer.credit.prefetch();
            state.consumers.push(Slot { consumer, inbox, prefetch, staged: Vec::new() });
            state.priorities_changed();
            state.had_consumer = true;
            state.dispatch(self, now);
            Ok(())
        })
    }

    /// Takes a consumer out of the ring, in one step with everything that
    /// goes back to the queue: what sits in its inbox (never seen by the
    /// application: not flagged redelivered) and `unsettled`, its deliveries
    /// being returned (flagged). Doing both under one lock means the next
    /// consumer (single active consumer) receives them before anything newer.
    /// True if the queue is auto-delete and has just lost its last consumer.
    pub(crate) fn remove_consumer(
        &self,
        consumer: &Arc<ConsumerShared>,
        inbox: &Receiver<QueuedMessage>,
        unsettled: Vec<QueuedMessage>,
    ) -> bool {
        self.with_state(|state, now| {
            let removed = state.consumers.iter().position(|s| Arc::ptr_eq(&s.consumer, consumer));
            if let Some(index) = removed {
                drop(state.consumers.remove(index));
                consumer.take_wakers(&mut state.wakers);
                if state.cursor > index {
                    state.cursor -= 1;
                }
                if state.cursor >= state.consumers.len() {
                    state.cursor = 0;
                }
                state.priorities_changed();
                if state.consumers.is_empty() && self.policy.expires.is_some() {
                    state.last_used = Some(now.get());
                }
            }
            // Only the queue sends into the inbox, under this lock, and the
            // consumer is out of the ring: the inbox is complete.
            let pending: Vec<QueuedMessage> = inbox.drain();
            let returned = u32::try_from(pending.len() + unsettled.len()).unwrap_or(u32::MAX);
            for msg in unsettled {
                state.restore(self, msg, true, now);
            }
            for msg in pending {
                state.restore(self, msg, false, now);
            }
            consumer.credit.give_back(returned);
            if consumer.credit.in_flight() > 0 && !state.detached.iter().any(|c| Arc::ptr_eq(c, consumer)) {
                state.detached.push(Arc::clone(consumer));
            }
            self.drop_head_over_limit(state, now);
            state.dispatch(self, now);
            removed.is_some()
                && self.options.auto_delete
                && state.had_consumer
                && state.consumers.is_empty()
                && !state.deleted
        })
    }

    /// Puts messages back in their original positions. `returned` marks
    /// them as having reached the application (flagged redelivered, counted
    /// against the delivery limit). Their credit is returned to `consumer`
    /// (or to the `get` count), under the lock, so no dispatch can be missed.
    pub(crate) fn requeue(
        &self,
        msgs: impl IntoIterator<Item = QueuedMessage>,
        consumer: Option<&ConsumerShared>,
        returned: bool,
    ) {
        self.with_state(|state, now| {
            let mut count = 0;
            for msg in msgs {
                count += 1;
                state.restore(self, msg, returned, now);
            }
            self.drop_head_over_limit(state, now);
            match consumer {
                Some(c) => {
                    c.credit.give_back(count);
                    state.forget_if_settled(c);
                }
                None => state.get_unacked -= count as usize,
            }
            state.dispatch(self, now);
        });
    }

    /// Puts a returned message back after `delay`: invisible until then,
    /// then at the tail of the queue.
    pub(crate) fn requeue_after(
        &self,
        mut msg: QueuedMessage,
        delay: Duration,
        consumer: Option<&ConsumerShared>,
    ) {
        self.with_state(|state, now| {
            match consumer {
                Some(c) => {
                    c.credit.give_back(1);
                    state.forget_if_settled(c);
                }
                None => state.get_unacked -= 1,
            }
            if !state.deleted && state.count_return(self, &mut msg) {
                if delay.is_zero() {
                    state.restore(self, msg, false, now);
                    self.drop_head_over_limit(state, now);
                } else {
                    let at = now.get();
                    let due = later(at, delay.min(MAX_DURATION));
                    if state.durable
                        && let Some(durable) = msg.envelope.durable()
                    {
                        let due_ms = crate::durable::to_wall_ms(due, at);
                        durable.place(Placement::Delayed { due_ms, ttl_ms: None });
                    }
                    state.delayed.insert(due, Delayed { msg, ttl: None });
                }
            } else {
                // Deleted, or past the delivery limit (a copy is a letter):
                // its body is dropped after the lock is released.
                state.graveyard.push(msg);
            }
            state.dispatch(self, now);
        });
    }

    /// Returns credit for `n` settled deliveries of `consumer`, dispatching
    /// only if the consumer was at its prefetch limit: the only case in which
    /// a ready message may be waiting for this credit.
    pub(crate) fn release_credit(&self, consumer: &ConsumerShared, n: u32) {
        let released = consumer.credit.release(n);
        if released.must_dispatch {
            self.with_state(|state, now| state.dispatch(self, now));
        }
        if consumer.is_cancelled() && consumer.credit.in_flight() == 0 {
            // The last delivery of a cancelled consumer: the queue no longer
            // needs it for its figures.
            self.with_state(|state, _| state.forget_if_settled(consumer));
        }
    }

    /// Settles a delivery taken by `get`.
    pub(crate) fn settle_get(&self, msg: QueuedMessage, how: Settlement, annotations: Option<FieldTable>) {
        match how {
            Settlement::Requeue => self.requeue([msg], None, true),
            Settlement::RequeueAfter(delay) => self.requeue_after(msg, delay, None),
            Settlement::Ack => {
                self.state.lock().get_unacked -= 1;
                self.count_ack();
                drop(msg);
            }
            Settlement::Discard => {
                // Dead-lettered before it stops counting as unsettled, so
                // a settle never sees it nowhere.
                self.discard(msg, annotations);
                self.state.lock().get_unacked -= 1;
            }
        }
    }

    /// A message rejected without requeue: dead-lettered (reason
    /// `rejected`) or dropped. Called without the queue lock held.
    pub(crate) fn discard(&self, msg: QueuedMessage, annotations: Option<FieldTable>) {
        // Its holder still counts it unsettled: in flight before it stops.
        self.context.activity.begin(1);
        match (annotations, self.me.upgrade()) {
            (Some(annotations), Some(me)) => crate::dead_letter::bury(vec![Letter::annotated(
                &me,
                msg,
                DeathReason::Rejected,
                annotations,
            )]),
            _ => self.bury(vec![(msg, DeathReason::Rejected)]),
        }
    }

    /// basic.get: the next ready message, if any. With `track`, it counts as
    /// unacknowledged until settled.
    pub(crate) fn get(&self, track: bool) -> Result<Option<QueuedMessage>, ConsumeError> {
        self.with_state(|state, now| {
            if state.deleted {
                return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
            }
            if self.policy.expires.is_some() {
                state.last_used = Some(now.get());
            }
            state.catch_up(self, now);
            // Messages just released go to consumers with credit first, as
            // they would have had the timer fired a moment earlier.
            state.dispatch(self, now);
            let msg = loop {
                let Some(mut msg) = state.ready.pop_first() else { break None };
                if msg.page_in() {
                    break Some(msg);
                }
                // Unreadable (counted by the store): gone.
                state.graveyard.push(msg);
            };
            if msg.is_some() && track {
                state.get_unacked += 1;
            }
            if state.durable
                && let Some(durable) = msg.as_ref().and_then(|m| m.envelope.durable())
            {
                durable.delivered();
            }
            if let (Some(counts), Some(msg)) = (&mut state.counts, &msg) {
                counts.fetched += 1;
                counts.redelivered += u64::from(msg.redelivered());
            }
            Ok(msg)
        })
    }
}
