//! Length limits (`max_length`, `max_length_bytes`) and what each
//! overflow mode does when a queue is full, as RabbitMQ applies them: on a
//! publish, and after a requeue.

use super::{Now, Overflow, Queue, QueueState, QueuedMessage, bump};
use crate::death::DeathReason;

/// What the length limits made of a new message.
pub(super) enum Room {
    /// It fits (maybe after dropping older messages).
    Made,
    /// The queue refuses it (reject-publish).
    Refused,
    /// It can never fit: dropped (dead-lettered) in place of the head.
    DroppedItself,
}

impl Queue {
    /// Applies the length limits before `msg` is added. With reject-publish
    /// the queue refuses it when full; with drop-head the oldest messages
    /// are taken out (to be dead-lettered) until it fits, and a message that
    /// cannot fit even in an empty queue is itself the head to drop: the
    /// publish was accepted, the message dead-lettered at once.
    pub(super) fn make_room(&self, state: &mut QueueState, msg: &QueuedMessage, now: &mut Now<'_>) -> Room {
        let (max_len, max_bytes) = (self.policy.max_length, self.policy.max_length_bytes);
        if max_len.is_none() && max_bytes.is_none() {
            return Room::Made;
        }
        let size = msg.body_len();
        let full = |state: &QueueState| {
            let len = state.held();
            let bytes = state.ready.bytes() + state.delayed.bytes();
            max_len.is_some_and(|max| len + 1 > max) || max_bytes.is_some_and(|max| bytes + size > max)
        };
        if !full(state) {
            return Room::Made;
        }
        match self.policy.overflow {
            Overflow::RejectPublish | Overflow::RejectPublishDlx => {
                bump(&self.figures.publishes_rejected);
                if self.policy.overflow == Overflow::RejectPublishDlx {
                    state.letters.push((msg.clone(), DeathReason::MaxLen));
                }
                Room::Refused
            }
            Overflow::DropHead => {
                while full(state) && self.drop_head(state, now) {}
                if full(state) {
                    // Too big for the queue even when empty: the new message
                    // is the head to drop.
                    state.letters.push((msg.clone(), DeathReason::MaxLen));
                    return Room::DroppedItself;
                }
                Room::Made
            }
        }
    }

    /// With drop-head, takes heads out (to be dead-lettered, `maxlen`)
    /// while the queue is over its limits — as RabbitMQ does after a
    /// requeue, which may take a queue past them (the reject-publish modes
    /// leave it so until consumers drain it, as RabbitMQ does too).
    pub(super) fn drop_head_over_limit(&self, state: &mut QueueState, now: &mut Now<'_>) {
        if self.policy.overflow != Overflow::DropHead {
            return;
        }
        let (max_len, max_bytes) = (self.policy.max_length, self.policy.max_length_bytes);
        let over = |state: &QueueState| {
            max_len.is_some_and(|max| state.held() > max)
                || max_bytes.is_some_and(|max| state.ready.bytes() + state.delayed.bytes() > max)
        };
        while over(state) && self.drop_head(state, now) {}
    }

    /// Takes the head out for a length limit — the first ready message, or
    /// else the first delayed one — to be dead-lettered `maxlen` (or
    /// expired, if its time has passed); false if the queue holds nothing.
    fn drop_head(&self, state: &mut QueueState, now: &mut Now<'_>) -> bool {
        let head = match state.ready.pop_first() {
            Some(head) => head,
            None => match state.delayed.pop_first() {
                Some(delayed) => delayed.msg,
                None => return false,
            },
        };
        if head.expired(now) {
            state.expire(self, head);
        } else {
            state.letters.push((head, DeathReason::MaxLen));
        }
        true
    }
}
