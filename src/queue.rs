//! Queues: the ready store, the consumer ring, and dispatch.
//!
//! A queue's state sits behind one mutex that only this queue's publishers,
//! its dispatch and its slow paths take; no lock is shared between queues.
//! Deliveries leave the queue through each consumer's own channel (its
//! inbox), so a consumer receiving a delivery never touches the queue lock.

use std::collections::{BTreeMap, VecDeque};

use crossbeam_channel::Sender;

use crate::consumer::ConsumerShared;
use crate::error::ConsumeError;
use crate::field::FieldTable;
use crate::message::Message;
use crate::sync::{Arc, Mutex, Ordering};

/// Options of [`Connection::declare_queue`](crate::Connection::declare_queue).
///
/// ```
/// use interoffice::QueueOptions;
/// let opts = QueueOptions { exclusive: true, ..Default::default() };
/// assert!(!opts.auto_delete);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOptions {
    /// Only check that the queue exists (and may be used by this connection);
    /// every other option is ignored.
    pub passive: bool,
    /// Recorded and compared on re-declaration, for a bridge to a real broker;
    /// interoffice keeps every queue in memory either way.
    pub durable: bool,
    /// The queue belongs to the declaring connection: other connections cannot
    /// consume from, bind, purge or delete it (publishing to it still works),
    /// and it is deleted when that connection closes.
    pub exclusive: bool,
    /// Delete the queue when its last consumer goes (once it has had one).
    pub auto_delete: bool,
    /// Other arguments (`x-*`), compared on re-declaration.
    pub arguments: FieldTable,
}

impl QueueOptions {
    /// The first option that differs, as RabbitMQ's "inequivalent arg" names
    /// it: `(name, received, current)`.
    pub(crate) fn difference(&self, current: &QueueOptions) -> Option<(String, String, String)> {
        let flag = |name: &str, new: bool, old: bool| {
            (new != old).then(|| (name.to_owned(), new.to_string(), old.to_string()))
        };
        flag("durable", self.durable, current.durable)
            .or_else(|| flag("exclusive", self.exclusive, current.exclusive))
            .or_else(|| flag("auto_delete", self.auto_delete, current.auto_delete))
            .or_else(|| table_difference(&self.arguments, &current.arguments))
    }
}

/// The first key whose value differs between two argument tables.
pub(crate) fn table_difference(new: &FieldTable, old: &FieldTable) -> Option<(String, String, String)> {
    let show = |v: Option<&crate::FieldValue>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    new.iter()
        .map(|(k, _)| k)
        .chain(old.iter().map(|(k, _)| k))
        .find(|k| new.get(k) != old.get(k))
        .map(|k| (k.to_owned(), show(new.get(k)), show(old.get(k))))
}

/// Counts describing one queue at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Messages waiting for a consumer.
    pub messages_ready: usize,
    /// Messages delivered (or assigned to a consumer's inbox) and not yet settled.
    pub messages_unacknowledged: usize,
    /// Consumers attached.
    pub consumers: usize,
}

/// What a publish leaves in every queue it reaches: the message with its
/// routing, shared by all those queues.
///
/// The exchange name and routing key are copied into one allocation of the
/// envelope's own rather than sharing the exchange's `Arc<str>`: a refcount
/// shared by every publisher and consumer of an exchange would bounce its
/// cache line between cores on every message.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// `exchange` followed by `routing_key`.
    names: Box<str>,
    exchange_len: usize,
    pub(crate) message: Message,
}

impl Envelope {
    pub(crate) fn new(exchange: &str, routing_key: &str, message: Message) -> Self {
        let mut names = String::with_capacity(exchange.len() + routing_key.len());
        names.push_str(exchange);
        names.push_str(routing_key);
        Envelope { names: names.into_boxed_str(), exchange_len: exchange.len(), message }
    }

    pub(crate) fn exchange(&self) -> &str {
        &self.names[..self.exchange_len]
    }

    pub(crate) fn routing_key(&self) -> &str {
        &self.names[self.exchange_len..]
    }
}

/// One message in one queue. `seq` is its position: requeueing puts it back
/// there, ahead of everything published after it.
#[derive(Debug, Clone)]
pub(crate) struct QueuedMessage {
    pub(crate) seq: u64,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) redelivered: bool,
}

/// The messages waiting in a queue, in order.
///
/// Fresh messages are appended to `fresh`. A requeued message always has a
/// smaller `seq` than every fresh one (it was taken from the front, and the
/// front only moves forward), so requeued messages live in their own ordered
/// map and are always served first.
#[derive(Debug, Default)]
struct ReadyStore {
    requeued: BTreeMap<u64, QueuedMessage>,
    fresh: VecDeque<QueuedMessage>,
}

impl ReadyStore {
    fn len(&self) -> usize {
        self.requeued.len() + self.fresh.len()
    }

    fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.fresh.is_empty()
    }

    fn push(&mut self, msg: QueuedMessage) {
        self.fresh.push_back(msg);
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        debug_assert!(self.fresh.front().is_none_or(|f| f.seq > msg.seq));
        self.requeued.insert(msg.seq, msg);
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        match self.requeued.pop_first() {
            Some((_, msg)) => Some(msg),
            None => self.fresh.pop_front(),
        }
    }

    fn clear(&mut self) -> usize {
        let n = self.len();
        self.requeued.clear();
        self.fresh.clear();
        n
    }
}

/// A consumer as the queue sees it: where to send, and its credit.
struct Slot {
    consumer: Arc<ConsumerShared>,
    inbox: Sender<QueuedMessage>,
}

struct QueueState {
    ready: ReadyStore,
    next_seq: u64,
    consumers: Vec<Slot>,
    /// Index of the consumer to try first: strict round-robin.
    cursor: usize,
    /// Cancelled consumers still holding unsettled deliveries, for the figures.
    detached: Vec<Arc<ConsumerShared>>,
    /// Deliveries taken by `get` and not yet settled.
    get_unacked: usize,
    had_consumer: bool,
    deleted: bool,
}

/// Why [`Queue::delete_if`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteRefused {
    /// `if_unused`, and the queue has consumers.
    InUse,
    /// `if_empty`, and the queue has ready messages.
    NotEmpty,
}

/// How a settled delivery leaves the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Acknowledged: gone.
    Ack,
    /// Put back in its original position, flagged redelivered.
    Requeue,
    /// Rejected without requeue: discarded (dead-lettering hooks in here).
    Discard,
}

/// A queue. Shared (`Arc`) by the routing tables that reach it, its consumers
/// and the deliveries it handed out.
pub(crate) struct Queue {
    pub(crate) name: Arc<str>,
    pub(crate) id: u64,
    pub(crate) options: QueueOptions,
    /// The connection an exclusive queue belongs to.
    pub(crate) owner: Option<u64>,
    state: Mutex<QueueState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(name: Arc<str>, id: u64, options: QueueOptions, owner: Option<u64>) -> Self {
        Queue {
            name,
            id,
            options,
            owner,
            state: Mutex::new(QueueState {
                ready: ReadyStore::default(),
                next_seq: 0,
                consumers: Vec::new(),
                cursor: 0,
                detached: Vec::new(),
                get_unacked: 0,
                had_consumer: false,
                deleted: false,
            }),
        }
    }

    /// Whether connection `conn` may use the queue (exclusive queues belong to one).
    pub(crate) fn accessible_by(&self, conn: u64) -> bool {
        self.owner.is_none_or(|owner| owner == conn)
    }

    /// Adds a routed message. False if the queue was deleted after the routing
    /// snapshot was taken: the message did not reach it.
    pub(crate) fn enqueue(&self, envelope: &Arc<Envelope>) -> bool {
        let mut state = self.state.lock();
        if state.deleted {
            return false;
        }
        let msg = QueuedMessage { seq: state.next_seq, envelope: Arc::clone(envelope), redelivered: false };
        state.next_seq += 1;
        // Everything ready has already been offered to every consumer with
        // credit, so a new message can go straight to one if the store is empty.
        if state.ready.is_empty() {
            if let Some(msg) = state.offer(msg) {
                state.ready.push(msg);
            }
        } else {
            state.ready.push(msg);
        }
        true
    }

    /// Registers a consumer and hands it what is waiting.
    pub(crate) fn add_consumer(
        &self,
        consumer: Arc<ConsumerShared>,
        inbox: Sender<QueuedMessage>,
    ) -> Result<(), ConsumeError> {
        let mut state = self.state.lock();
        if state.deleted {
            return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
        }
        let exclusive_held = state.consumers.iter().any(|s| s.consumer.exclusive);
        if exclusive_held || (consumer.exclusive && !state.consumers.is_empty()) {
            return Err(ConsumeError::AccessRefused(format!("queue '{}' in exclusive use", self.name)));
        }
        state.consumers.push(Slot { consumer, inbox });
        state.had_consumer = true;
        state.dispatch();
        Ok(())
    }

    /// Unregisters a consumer (dropping the queue's sender, so the consumer's
    /// `recv` ends once its inbox is drained). True if the queue is
    /// auto-delete and has just lost its last consumer.
    pub(crate) fn remove_consumer(&self, consumer: &Arc<ConsumerShared>) -> bool {
        let mut state = self.state.lock();
        let Some(index) = state.consumers.iter().position(|s| Arc::ptr_eq(&s.consumer, consumer)) else {
            return false;
        };
        state.consumers.remove(index);
        if state.cursor > index {
            state.cursor -= 1;
        }
        if consumer.in_flight.load(Ordering::Acquire) > 0 {
            state.detached.push(Arc::clone(consumer));
        }
        self.options.auto_delete && state.had_consumer && state.consumers.is_empty() && !state.deleted
    }

    /// Puts messages back in their original positions. `flag` marks them
    /// redelivered (they reached the application); messages that never left
    /// a consumer's inbox keep their flag. Their credit is returned to
    /// `consumer`, under the lock, so no dispatch can be missed.
    pub(crate) fn requeue(
        &self,
        msgs: impl IntoIterator<Item = QueuedMessage>,
        consumer: Option<&ConsumerShared>,
        flag: bool,
    ) {
        let mut state = self.state.lock();
        let mut count = 0;
        for mut msg in msgs {
            count += 1;
            if !state.deleted {
                msg.redelivered |= flag;
                state.ready.requeue(msg);
            }
        }
        match consumer {
            Some(c) => {
                c.in_flight.fetch_sub(count, Ordering::AcqRel);
            }
            None => state.get_unacked -= count as usize,
        }
        state.dispatch();
    }

    /// Returns credit for `n` settled deliveries of `consumer`, dispatching
    /// only if the consumer was at its prefetch limit: the only case in which
    /// a ready message may be waiting for this credit.
    pub(crate) fn release_credit(&self, consumer: &ConsumerShared, n: u32) {
        let before = consumer.in_flight.fetch_sub(n, Ordering::AcqRel);
        if consumer.prefetch != 0 && before >= consumer.prefetch && before - n < consumer.prefetch {
            self.state.lock().dispatch();
        }
    }

    /// Settles a delivery taken by `get`.
    pub(crate) fn settle_get(&self, msg: QueuedMessage, how: Settlement) {
        match how {
            Settlement::Requeue => self.requeue([msg], None, true),
            Settlement::Ack => self.state.lock().get_unacked -= 1,
            Settlement::Discard => {
                self.state.lock().get_unacked -= 1;
                self.discard(msg);
            }
        }
    }

    /// A message rejected without requeue leaves the queue here. This is
    /// where dead-lettering will route it to the queue's dead-letter
    /// exchange; until then it is dropped, as RabbitMQ drops it from a queue
    /// without one. Called without the queue lock held, so routing a dead
    /// letter may take other queues' locks.
    pub(crate) fn discard(&self, msg: QueuedMessage) {
        drop(msg);
    }

    /// basic.get: the next ready message, if any. With `track`, it counts as
    /// unacknowledged until settled.
    pub(crate) fn get(&self, track: bool) -> Result<Option<QueuedMessage>, ConsumeError> {
        let mut state = self.state.lock();
        if state.deleted {
            return Err(ConsumeError::NotFound(format!("no queue '{}'", self.name)));
        }
        let msg = state.ready.pop();
        if msg.is_some() && track {
            state.get_unacked += 1;
        }
        Ok(msg)
    }

    /// Removes every ready message; returns how many.
    pub(crate) fn purge(&self) -> usize {
        self.state.lock().ready.clear()
    }

    /// Marks the queue deleted, drops its ready messages and cancels its
    /// consumers; returns the number of ready messages dropped. With
    /// `if_unused` / `if_empty` it refuses instead when the queue has
    /// consumers / ready messages. The check and the deletion happen under
    /// one lock, so a consumer attaching meanwhile cannot be deleted under.
    pub(crate) fn delete_if(&self, if_unused: bool, if_empty: bool) -> Result<usize, DeleteRefused> {
        let (dropped, slots) = {
            let mut state = self.state.lock();
            if state.deleted {
                return Ok(0);
            }
            if if_unused && !state.consumers.is_empty() {
                return Err(DeleteRefused::InUse);
            }
            if if_empty && !state.ready.is_empty() {
                return Err(DeleteRefused::NotEmpty);
            }
            state.deleted = true;
            (state.ready.clear(), std::mem::take(&mut state.consumers))
        };
        for slot in &slots {
            slot.consumer.set_cancelled(crate::error::RecvError::QueueDeleted(self.name.to_string()));
        }
        Ok(dropped)
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let mut state = self.state.lock();
        state.detached.retain(|c| c.in_flight.load(Ordering::Acquire) > 0);
        let in_flight: usize = state
            .consumers
            .iter()
            .map(|s| &s.consumer)
            .chain(state.detached.iter())
            .map(|c| c.in_flight.load(Ordering::Acquire) as usize)
            .sum();
        QueueStats {
            name: self.name.to_string(),
            messages_ready: state.ready.len(),
            messages_unacknowledged: in_flight + state.get_unacked,
            consumers: state.consumers.len(),
        }
    }

    #[cfg(test)]
    fn lock(&self) -> parking_lot::MutexGuard<'_, QueueState> {
        self.state.lock()
    }
}

impl QueueState {
    /// Moves ready messages to consumers with credit until one side runs out.
    /// Afterwards either nothing is ready or no consumer has credit: the
    /// invariant `enqueue` relies on.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some(index) = self.next_with_credit() else { return };
            let Some(msg) = self.ready.pop() else { return };
            if let Err(returned) = self.send_to(index, msg) {
                self.ready.requeue(returned);
                return;
            }
        }
    }

    /// Offers one message to the next consumer with credit; gives it back if
    /// there is none.
    fn offer(&mut self, msg: QueuedMessage) -> Option<QueuedMessage> {
        match self.next_with_credit() {
            Some(index) => self.send_to(index, msg).err(),
            None => Some(msg),
        }
    }

    /// The next consumer in round-robin order that may take a delivery.
    fn next_with_credit(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        (0..n).map(|i| (self.cursor + i) % n).find(|&i| self.consumers[i].consumer.has_credit())
    }

    /// Sends to consumer `index`, taking one credit. Only the queue sends, and
    /// always under its lock, so credit never overshoots the prefetch limit.
    fn send_to(&mut self, index: usize, msg: QueuedMessage) -> Result<(), QueuedMessage> {
        let slot = &self.consumers[index];
        slot.consumer.in_flight.fetch_add(1, Ordering::AcqRel);
        match slot.inbox.send(msg) {
            Ok(()) => {
                self.cursor = (index + 1) % self.consumers.len();
                Ok(())
            }
            Err(returned) => {
                // The consumer's inbox is gone (it is being cancelled): take
                // it out of the ring rather than lose the message.
                slot.consumer.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.consumers.remove(index);
                if self.cursor >= self.consumers.len() {
                    self.cursor = 0;
                }
                Err(returned.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> QueuedMessage {
        let envelope = Arc::new(Envelope::new("", "q", Message::new(seq.to_string())));
        QueuedMessage { seq, envelope, redelivered: false }
    }

    #[test]
    fn requeued_messages_come_first_in_seq_order() {
        let mut store = ReadyStore::default();
        for seq in 5..8 {
            store.push(msg(seq));
        }
        store.requeue(msg(3));
        store.requeue(msg(1));
        let order: Vec<u64> = std::iter::from_fn(|| store.pop()).map(|m| m.seq).collect();
        assert_eq!(order, [1, 3, 5, 6, 7]);
    }

    #[test]
    fn enqueue_into_deleted_queue_is_refused() {
        let q = Queue::new(Arc::from("q"), 1, QueueOptions::default(), None);
        assert!(q.enqueue(&msg(0).envelope));
        assert_eq!(q.delete_if(false, true), Err(DeleteRefused::NotEmpty));
        assert_eq!(q.delete_if(true, false), Ok(1));
        assert_eq!(q.delete_if(true, true), Ok(0));
        assert!(!q.enqueue(&msg(1).envelope));
        assert!(q.lock().deleted);
    }

    #[test]
    fn inequivalent_options_name_the_argument() {
        let current =
            QueueOptions { arguments: FieldTable::from([("x-max-length", 10)]), ..Default::default() };
        let new = QueueOptions { arguments: FieldTable::from([("x-max-length", 20)]), ..Default::default() };
        assert_eq!(new.difference(&current), Some(("x-max-length".into(), "20".into(), "10".into())));
        assert_eq!(current.difference(&current.clone()), None);
    }
}
