//! Dispatch: the consumer ring as the queue sees it (a [`Slot`] per
//! consumer, in attach order), choosing the next consumer with credit
//! (strict round-robin among equals, consumer priorities, single active
//! consumer), and sending under the queue's lock, one message at a time or
//! staged for a batch. The credit protocol itself is [`crate::credit`].

use super::{Now, Queue, QueueState, QueuedMessage};
use crate::consumer::ConsumerShared;
use crate::inbox::Sender;
use crate::sync::Arc;

/// A consumer as the queue sees it: where to send, and its credit.
pub(super) struct Slot {
    pub(super) consumer: Arc<ConsumerShared>,
    pub(super) inbox: Sender<QueuedMessage>,
    /// The consumer's prefetch limit (0: none), copied here: the credit
    /// count beside it in the consumer is written by the consumer on every
    /// receive, and without a limit the queue need not read that line.
    pub(super) prefetch: u32,
    /// Sent while the queue was staging (a batch's enqueues), not yet in
    /// the inbox, and not yet counted in its credit: moved there, and the
    /// credit taken, in one hold of each before the queue's lock is
    /// released, so it is empty whenever the queue is unlocked.
    pub(super) staged: Vec<QueuedMessage>,
}

impl Slot {
    /// Whether the consumer can take one more delivery, staged ones
    /// counted (see [`crate::credit`]).
    fn has_credit(&self) -> bool {
        self.prefetch == 0 || self.consumer.credit.has_credit_beyond(self.staged.len())
    }
}
impl QueueState {
    /// Moves ready messages to consumers with credit until one side runs out.
    /// Afterwards either nothing is ready or no consumer has credit: the
    /// invariant `enqueue` relies on. Expired messages met on the way are
    /// taken out instead of delivered.
    pub(super) fn dispatch(&mut self, queue: &Queue, now: &mut Now<'_>) {
        let single = queue.policy.single_active_consumer;
        while !self.ready.is_empty() {
            let Some(index) = self.next_with_credit(single) else { return };
            let Some(mut msg) = self.ready.pop_first() else { return };
            if msg.expired(now) {
                self.expire(queue, msg);
                continue;
            }
            if !msg.page_in() {
                self.graveyard.push(msg);
                continue;
            }
            if let Err(returned) = self.send_to(index, msg) {
                self.ready.insert(returned);
                return;
            }
        }
    }

    /// Offers one message to the next consumer with credit; gives it back if
    /// there is none.
    pub(super) fn offer(&mut self, msg: QueuedMessage, single: bool) -> Option<QueuedMessage> {
        match self.next_with_credit(single) {
            Some(index) => self.send_to(index, msg).err(),
            None => Some(msg),
        }
    }

    /// Recomputes whether consumer priorities matter.
    pub(super) fn priorities_changed(&mut self) {
        let first = self.consumers.first().map(|s| s.consumer.priority);
        self.priorities_differ = self.consumers.iter().any(|s| Some(s.consumer.priority) != first);
    }

    /// The consumer to deliver to next: with a single active consumer, the
    /// first attached, if it has credit; otherwise the highest-priority
    /// consumer with credit, in round-robin order among equals.
    pub(super) fn next_with_credit(&mut self, single: bool) -> Option<usize> {
        let n = self.consumers.len();
        if single {
            return self.consumers.first().filter(|s| s.has_credit()).map(|_| 0);
        }
        // From the cursor round to just before it, without a division per
        // step (`perf`: the `div` was a third of this function's time).
        let start = if self.cursor < n { self.cursor } else { 0 };
        let ring = (start..n).chain(0..start);
        if !self.priorities_differ {
            return ring.into_iter().find(|&i| self.consumers[i].has_credit());
        }
        let mut best: Option<(i32, usize)> = None;
        for i in ring {
            let slot = &self.consumers[i];
            let consumer = &slot.consumer;
            if slot.has_credit() && best.is_none_or(|(p, _)| consumer.priority > p) {
                best = Some((consumer.priority, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Sends to consumer `index`, taking one credit. Only the queue sends, and
    /// always under its lock, so credit never overshoots the prefetch limit.
    pub(super) fn send_to(&mut self, index: usize, msg: QueuedMessage) -> Result<(), QueuedMessage> {
        if self.durable
            && let Some(durable) = msg.envelope.durable()
        {
            // Before the consumer can see it: a crash after it did brings
            // it back flagged redelivered.
            durable.delivered();
        }
        let mut msg = Some(msg);
        self.send_from(index, &mut msg);
        msg.map_or(Ok(()), Err)
    }

    /// [`send_to`](Self::send_to) for a message taken from `msg`, which
    /// is left `None` once sent and holds it still if the consumer's inbox
    /// refused it; a durable queue's caller has marked it delivered.
    ///
    /// The message is moved out of `msg` only inside the inbox: into a
    /// ring slot, or once the deque's lock is taken. A publish builds it
    /// and sends it at once, and copying it whole before the deque's lock
    /// read 16 bytes that two smaller stores had only just written: a
    /// store-forwarding stall, about half of `Queue::enqueue`'s time with
    /// one publisher fanning out to ten queues (`perf annotate`). The
    /// lock's atomic waits for those stores to reach the cache anyway, so
    /// a copy after it does not stall.
    #[inline(always)]
    pub(super) fn send_from(&mut self, index: usize, msg: &mut Option<QueuedMessage>) {
        if self.staging {
            if let Some(msg) = msg.take() {
                self.stage(index, msg);
            }
            return;
        }
        let slot = &mut self.consumers[index];
        let redelivered = msg.as_ref().is_some_and(QueuedMessage::redelivered);
        slot.consumer.credit.take();
        slot.inbox.send_from(msg);
        if msg.is_some() {
            self.remove_gone(index);
            return;
        }
        slot.consumer.take_wakers_after_send(&mut self.wakers);
        self.count_sent(index, redelivered);
    }

    /// [`send_to`](Self::send_to) while the queue is staging (a batch's
    /// enqueues): the message waits in the slot, and reaches the inbox,
    /// with its credit and wake-ups, in [`flush_staged`](Self::flush_staged).
    /// By value and inlined, so that a message built in the call is written
    /// straight into its place (no lock comes between its making and a
    /// copy here to let the stores that made it settle; see `send_from`).
    #[inline(always)]
    pub(super) fn stage(&mut self, index: usize, msg: QueuedMessage) {
        let redelivered = msg.redelivered();
        let slot = &mut self.consumers[index];
        if slot.staged.is_empty() {
            self.staged_slots.push(index);
        }
        slot.staged.push(msg);
        self.count_sent(index, redelivered);
    }

    /// A delivery to consumer `index` made: counted, and the round robin
    /// moved past it.
    #[inline(always)]
    fn count_sent(&mut self, index: usize, redelivered: bool) {
        if let Some(counts) = &mut self.counts {
            counts.delivered += 1;
            counts.redelivered += u64::from(redelivered);
        }
        self.cursor = if index + 1 < self.consumers.len() { index + 1 } else { 0 };
    }

    /// The consumer at `index` whose inbox refused a message (it is being
    /// cancelled): taken out of the ring, its credit for that message given
    /// back, rather than the message lost.
    #[cold]
    fn remove_gone(&mut self, index: usize) {
        let slot = &self.consumers[index];
        slot.consumer.credit.give_back(1);
        let gone = self.consumers.remove(index);
        gone.consumer.take_wakers(&mut self.wakers);
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        self.priorities_changed();
    }

    /// Ends staging: each slot's staged messages take their credit in one
    /// step and go to its inbox in one hold of the inbox's lock, and then
    /// (the message visible first, as `wake` needs) its waiting tasks are
    /// collected to wake. (A slot's consumer owns the inbox's receiving
    /// end, so the inbox outlives the slot and cannot refuse; were it to,
    /// its messages would go back to their places in the queue.)
    ///
    /// A settle that released credit meanwhile saw a count without the
    /// staged messages, so it may have seen no need to dispatch where the
    /// count with them would have crossed the prefetch limit (see
    /// [`crate::credit`]): the queue dispatches here instead, with every
    /// credit taken.
    pub(super) fn flush_staged(&mut self, queue: &Queue, now: &mut Now<'_>) {
        self.staging = false;
        if self.staged_slots.is_empty() {
            return;
        }
        let mut limited = false;
        for i in 0..self.staged_slots.len() {
            let slot = &mut self.consumers[self.staged_slots[i]];
            let n = u32::try_from(slot.staged.len()).unwrap_or(u32::MAX);
            limited |= slot.prefetch != 0;
            slot.consumer.credit.take_n(n);
            if slot.inbox.send_all(&mut slot.staged).is_ok() {
                slot.consumer.take_wakers(&mut self.wakers);
            } else {
                let returned = std::mem::take(&mut slot.staged);
                slot.consumer.credit.give_back(n);
                for msg in returned {
                    self.restore(queue, msg, false, now);
                }
            }
        }
        self.staged_slots.clear();
        if limited {
            self.dispatch(queue, now);
        }
    }
}
