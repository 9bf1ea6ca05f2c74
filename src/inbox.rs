//! A consumer's inbox: the deliveries a queue has sent it and it has not
//! received yet. One sender (the queue, under its lock), any number of
//! receiving threads (the consumer's handle is `Sync`).
//!
//! Why not a crossbeam channel, which it replaced: crossbeam's unbounded
//! channel allocates (and zeroes) a block per 31 messages, freed on the
//! other thread, and pays contended atomic operations per message on each
//! side. Here the sender appends to a `VecDeque` under a mutex, and the
//! receiver takes *everything* waiting in one hold of that mutex (swapping
//! deques), then hands the messages out from its own buffer without
//! touching the sender's cache lines again. Both deques keep their
//! capacity, so a steady flow allocates nothing. (callgrind, 1→1 auto-ack:
//! 11% fewer instructions per message than the crossbeam inbox.)
//!
//! Why not the ready store's chunked FIFO (`queue/segmented.rs`), which
//! never copies as it grows: it was tried. A consumer attaching to a
//! million-message queue got its backlog 35% faster, but then drained it
//! 35% slower: its chunks, freed one by one amid the messages' own frees,
//! sent glibc's allocator into `malloc_consolidate` over and over (`perf`;
//! the instruction counts were equal). A backlog this large is one
//! allocation here, returned whole.
//!
//! Waiting: a receiver spins on a hint (an atomic count of what is
//! waiting, written under the lock) before parking on a condvar; the
//! sender notifies only if a receiver is parked. The async handshake of
//! [`crate::wake`] relies on the count being written before the sender's
//! fence: see there.

use std::collections::VecDeque;
use std::time::Instant;

#[cfg(test)]
use crossbeam_channel::SendError;
pub(crate) use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};

use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};

/// Capacity (in messages) an inbox's buffers keep whatever the flow: more
/// is kept only while the flow needs it.
const KEEP_CAPACITY: usize = 4096;

/// An inbox: its sending and receiving ends.
pub(crate) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { waiting: VecDeque::new(), receiver_gone: false, parked: 0 }),
        available: Condvar::new(),
        len: AtomicUsize::new(0),
        sender_gone: AtomicBool::new(false),
    });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared, taken: Mutex::new(VecDeque::new()) })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    available: Condvar,
    /// How many messages `state.waiting` holds: written under the lock,
    /// read without it by receivers deciding whether to take the lock.
    len: AtomicUsize,
    /// Set (under the lock) when the sender is dropped, after its last send.
    sender_gone: AtomicBool,
}

struct State<T> {
    /// Sent, not yet taken by a receiver.
    waiting: VecDeque<T>,
    receiver_gone: bool,
    /// Receivers blocked on `available`.
    parked: u32,
}

/// The sending end, held by the queue.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Appends `msg`, or hands it back if the receiver is gone: the
    /// by-value form of [`send_from`](Self::send_from), for the tests.
    #[cfg(test)]
    pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let mut msg = Some(msg);
        self.send_from(&mut msg);
        msg.map_or(Ok(()), |msg| Err(SendError(msg)))
    }

    /// Appends the message in `msg`, leaving `None`, or leaves it there if
    /// the receiver is gone. It is moved out only once the lock is held:
    /// a caller that has just built it does not copy it whole before the
    /// lock's atomic has let its stores reach the cache (see the queue's
    /// `send_from`).
    #[inline(always)]
    pub(crate) fn send_from(&self, msg: &mut Option<T>) {
        let mut state = self.shared.state.lock();
        if state.receiver_gone {
            return;
        }
        if let Some(msg) = msg.take() {
            state.waiting.push_back(msg);
        }
        self.shared.len.store(state.waiting.len(), Ordering::Release);
        if state.parked > 0 {
            self.shared.available.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Appends every message of `msgs`, in order, in one hold of the lock,
    /// leaving `msgs` empty (its capacity kept, up to [`KEEP_CAPACITY`]);
    /// if the receiver is gone, leaves them in `msgs` and fails.
    pub(crate) fn send_all(&self, msgs: &mut Vec<T>) -> Result<(), ()> {
        {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Err(());
            }
            let sent = msgs.len();
            state.waiting.extend(msgs.drain(..));
            self.shared.len.store(state.waiting.len(), Ordering::Release);
            // As many wake-ups as `send` would have made.
            if state.parked > 0 && sent > 1 {
                self.shared.available.notify_all();
            } else if state.parked > 0 {
                self.shared.available.notify_one();
            }
        }
        if msgs.capacity() > KEEP_CAPACITY {
            msgs.shrink_to(KEEP_CAPACITY);
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let state = self.shared.state.lock();
        self.shared.sender_gone.store(true, Ordering::Release);
        if state.parked > 0 {
            self.shared.available.notify_all();
        }
    }
}

/// The receiving end, held by the consumer.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Taken from `waiting`, in order, not yet handed out. Only receivers
    /// touch it, so its lock is uncontended in the usual single-threaded
    /// consumer.
    taken: Mutex<VecDeque<T>>,
}

impl<T> Receiver<T> {
    /// The next message, if one is waiting.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut taken = self.taken.lock();
        if let Some(msg) = taken.pop_front() {
            return Ok(msg);
        }
        // Without the shared lock, so that a spinning receiver leaves the
        // sender alone. `gone` first: seen set, it makes the last send's
        // count visible too, so nothing sent is reported as disconnected.
        let gone = self.shared.sender_gone.load(Ordering::Acquire);
        if self.shared.len.load(Ordering::Acquire) == 0 {
            return Err(if gone { TryRecvError::Disconnected } else { TryRecvError::Empty });
        }
        self.take_waiting(&mut taken).ok_or(TryRecvError::Empty)
    }

    /// Appends `first` (if any) and then what is waiting to `into`, in
    /// order, until it holds `max` (a batch receive): from this receiver's
    /// buffer, refilled from the shared deque once if that falls short.
    /// Reserves exactly what it appends, so a batch is one allocation of
    /// its final size rather than a doubling series. True if nothing was
    /// appended because the sender is gone and nothing is left.
    pub(crate) fn take_up_to(&self, max: usize, first: Option<T>, into: &mut Vec<T>) -> bool {
        let mut taken = self.taken.lock();
        let room = max.saturating_sub(into.len() + usize::from(first.is_some()));
        // The same order as `try_recv`: `gone` before the count.
        let gone = self.shared.sender_gone.load(Ordering::Acquire);
        if taken.len() < room && self.shared.len.load(Ordering::Acquire) > 0 {
            if taken.is_empty() {
                self.refill(&mut taken);
            } else {
                let mut state = self.shared.state.lock();
                taken.extend(state.waiting.drain(..));
                self.shared.len.store(0, Ordering::Release);
            }
        }
        let n = taken.len().min(room);
        into.reserve_exact(n + usize::from(first.is_some()));
        into.extend(first);
        into.extend(taken.drain(..n));
        gone && into.is_empty()
    }

    /// Moves everything waiting into `taken` (one hold of the shared lock)
    /// and returns the first of it.
    fn take_waiting(&self, taken: &mut VecDeque<T>) -> Option<T> {
        self.refill(taken);
        taken.pop_front()
    }

    /// Moves everything waiting into `taken`, which is empty, by swapping
    /// deques: one hold of the shared lock, nothing copied.
    fn refill(&self, taken: &mut VecDeque<T>) {
        debug_assert!(taken.is_empty(), "a refill swaps: anything in `taken` would go back");
        let mut state = self.shared.state.lock();
        std::mem::swap(&mut state.waiting, taken);
        self.shared.len.store(0, Ordering::Release);
        // The sender's new (empty) deque is the one just drained: past
        // a burst, let its capacity go down to twice what this take
        // found, so a steady flow keeps its buffers and a burst's do
        // not stay. (Shrinking an empty deque copies nothing.)
        let keep = KEEP_CAPACITY.max(2 * taken.len());
        if state.waiting.capacity() > 2 * keep {
            state.waiting.shrink_to(keep);
        }
    }

    /// Blocks until a message arrives or the sender is gone (and nothing is
    /// left).
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(msg) => return Ok(msg),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            let mut state = self.shared.state.lock();
            if state.waiting.is_empty() && !self.shared.sender_gone.load(Ordering::Acquire) {
                state.parked += 1;
                self.shared.available.wait(&mut state);
                state.parked -= 1;
            }
        }
    }

    /// [`recv`](Self::recv), giving up at `deadline`.
    pub(crate) fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        loop {
            match self.try_recv() {
                Ok(msg) => return Ok(msg),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let mut state = self.shared.state.lock();
            if state.waiting.is_empty() && !self.shared.sender_gone.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    return Err(RecvTimeoutError::Timeout);
                }
                state.parked += 1;
                let _timed_out = self.shared.available.wait_until(&mut state, deadline);
                state.parked -= 1;
            }
        }
    }

    /// Takes every message left, in order (the consumer is leaving).
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut taken = self.taken.lock();
        let mut all: Vec<T> = taken.drain(..).collect();
        let mut state = self.shared.state.lock();
        all.extend(state.waiting.drain(..));
        self.shared.len.store(0, Ordering::Release);
        all
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("waiting", &self.shared.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.state.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_come_out_in_order_across_takes() {
        let (tx, rx) = unbounded();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0));
        for i in 10..15 {
            tx.send(i).unwrap();
        }
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, (1..15).collect::<Vec<_>>());
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn disconnection_is_reported_only_once_everything_is_taken() {
        let (tx, rx) = unbounded();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv(), Err(RecvError));
        assert_eq!(rx.recv_deadline(Instant::now()), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn a_send_to_a_dropped_receiver_hands_the_message_back() {
        let (tx, rx) = unbounded();
        drop(rx);
        assert_eq!(tx.send(7), Err(SendError(7)));
    }

    #[test]
    fn a_batch_take_keeps_order_across_both_buffers_and_stops_at_max() {
        let (tx, rx) = unbounded();
        for i in 0..4 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0)); // 1..4 now buffered by the receiver
        for i in 4..10 {
            tx.send(i).unwrap();
        }
        let mut got = Vec::new();
        assert!(!rx.take_up_to(5, None, &mut got));
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert!(got.capacity() < 8, "one allocation of the batch's size, not a doubling series");
        let mut got = Vec::new();
        assert!(!rx.take_up_to(3, Some(100), &mut got));
        assert_eq!(got, [100, 6, 7]);
        let mut got = Vec::new();
        assert!(!rx.take_up_to(64, None, &mut got));
        assert_eq!(got, [8, 9]);
        assert!(!rx.take_up_to(64, None, &mut got), "empty, the sender still there");
        assert_eq!(got, [8, 9]);
        tx.send(10).unwrap();
        drop(tx);
        let mut got = Vec::new();
        assert!(!rx.take_up_to(64, None, &mut got), "what was sent before leaving comes first");
        assert_eq!(got, [10]);
        let mut got = Vec::new();
        assert!(rx.take_up_to(64, None, &mut got));
        assert!(got.is_empty());
        assert!(!rx.take_up_to(0, Some(7), &mut got), "a first message is always appended");
    }

    #[test]
    fn drain_takes_both_buffers_in_order() {
        let (tx, rx) = unbounded();
        for i in 0..4 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0));
        tx.send(4).unwrap();
        assert_eq!(rx.drain(), vec![1, 2, 3, 4]);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_parked_receiver_wakes_for_a_send_and_for_the_sender_leaving() {
        let (tx, rx) = unbounded::<u32>();
        std::thread::scope(|s| {
            let parked = || {
                while rx.shared.state.lock().parked == 0 {
                    std::thread::yield_now();
                }
            };
            let waiter = s.spawn(|| (rx.recv(), rx.recv()));
            parked();
            tx.send(5).unwrap();
            parked();
            drop(tx);
            assert_eq!(waiter.join().unwrap(), (Ok(5), Err(RecvError)));
        });
        let (_tx, rx) = unbounded::<u32>();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        assert_eq!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout));
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn many_messages_through_two_threads_arrive_once_in_order() {
        let (tx, rx) = unbounded::<u64>();
        let n = 200_000;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..n {
                    tx.send(i).unwrap();
                }
            });
            for i in 0..n {
                assert_eq!(rx.recv(), Ok(i));
            }
            assert_eq!(rx.recv(), Err(RecvError));
        });
    }
}
