//! A queue's time: the one timer wake-up it keeps at its next deadline
//! (a message's TTL, a delayed message coming due, the queue's own
//! `expires`), and what a wake-up does: releases due delayed messages,
//! expires what is past its TTL, deletes an idle queue.

use std::time::Instant;

use super::store::Delayed;
use super::{Now, Queue, QueuePolicy, QueueState};
use crate::clock::later;
use crate::durable::Placement;
use crate::sync::Weak;
use crate::timer::TimerTarget;

/// How many messages a timer wake-up releases or expires under one hold of
/// the queue lock.
const TIMER_BATCH: usize = 4096;

impl TimerTarget for Queue {
    /// The timers woke the queue: expire, release and delete what is due.
    fn on_timer(&self) {
        // Batches of `TIMER_BATCH` messages, each under the lock once.
        let expire_queue = loop {
            let step = self.with_state(|state, now| {
                state.timer_at = None;
                if state.deleted {
                    return Some(None);
                }
                let finished = state.catch_up_some(self, now, TIMER_BATCH);
                state.dispatch(self, now);
                if !finished {
                    return None;
                }
                let now = now.get();
                Some(state.idle_deadline(&self.policy).filter(|&at| at <= now).map(|_| now))
            });
            if let Some(outcome) = step {
                break outcome;
            }
        };
        if let Some(now) = expire_queue
            && let (Some(broker), Some(me)) = (self.context.broker.upgrade(), self.me.upgrade())
        {
            broker.expire_queue(&me, now);
        }
    }
}

impl Queue {
    /// Asks the timers for a wake-up at the queue's next deadline, unless
    /// one is already due earlier.
    pub(super) fn reschedule(&self, state: &mut QueueState) {
        if state.deleted {
            return;
        }
        let next =
            [state.ready.first_deadline(), state.delayed.first_due(), state.idle_deadline(&self.policy)]
                .into_iter()
                .flatten()
                .min();
        if let Some(at) = next
            && state.timer_at.is_none_or(|t| at < t)
        {
            let me: Weak<dyn TimerTarget> = Weak::clone(&self.me) as Weak<dyn TimerTarget>;
            state.timer_at = Some(self.context.timers.schedule(me, self.id, at));
        }
    }
}

impl QueueState {
    /// Releases delayed messages that are due (to the tail) and takes out
    /// expired ones.
    pub(super) fn catch_up(&mut self, queue: &Queue, now: &mut Now<'_>) {
        self.catch_up_some(queue, now, usize::MAX);
    }

    /// [`catch_up`](Self::catch_up) for at most `limit` messages; true if it
    /// finished. The timer works in batches, releasing the queue lock in
    /// between, so a million messages expiring at once do not stall the
    /// queue's publishers for the whole of it.
    pub(super) fn catch_up_some(&mut self, queue: &Queue, now: &mut Now<'_>, limit: usize) -> bool {
        if self.delayed.len() == 0 && self.ready.first_deadline().is_none() {
            return true;
        }
        let at = now.get();
        let mut left = limit;
        while left > 0
            && let Some(Delayed { mut msg, ttl }) = self.delayed.pop_due(at)
        {
            left -= 1;
            msg.seq = self.next_seq;
            self.next_seq += 1;
            if let Some(ttl) = ttl {
                msg.set_expires_at(Some(later(at, ttl)));
            }
            if self.durable
                && let Some(durable) = msg.envelope.durable()
            {
                let expires_ms = msg.expires_at().map(|e| crate::durable::to_wall_ms(e, at));
                durable.place(Placement::Ready { seq: msg.seq, expires_ms });
            }
            if msg.expired(now) {
                self.expire(queue, msg);
            } else {
                self.ready.insert(msg);
            }
        }
        while left > 0
            && let Some(msg) = self.ready.pop_expired(at)
        {
            left -= 1;
            self.expire(queue, msg);
        }
        left > 0
    }

    /// When an unused queue with `expires` is due for deletion.
    pub(super) fn idle_deadline(&self, policy: &QueuePolicy) -> Option<Instant> {
        if !self.consumers.is_empty() {
            return None;
        }
        Some(later(self.last_used?, policy.expires?))
    }
}
