//! A consumer's inbox: the deliveries a queue has sent it and it has not
//! received yet. One sender (the queue, under its lock), any number of
//! receiving threads (the consumer's handle is `Sync`).
//!
//! Two lanes, in order:
//!
//! - **The ring** (`ring.rs`): 16 slots, lock-free, one sender and one
//!   receiver at a time. A send goes here while it has room, nothing
//!   waits in the deque, and the receiver has not fallen behind: once the
//!   ring was full, sends keep to the deque until the receiver finds its
//!   inbox empty or takes at most a ring's worth from the deque. It is the
//!   lane of a consumer that keeps up, taking each message as it arrives. The deque made both sides write its lock's
//!   line, its header and its count for every message; each side's locked
//!   instruction then waited for those lines to come back from the other
//!   core. Here the sender writes a slot and the receiver only its own
//!   head. Measured against the deque alone (the development VM, an AMD
//!   EPYC with 2 cores, alternating `bench peers` runs): 1→1 1.8–2.5 →
//!   3.1–3.2 M/s; `examples/bench` direct ÷ raw 0.78 → 1.00–1.08;
//!   request/reply 188–200 k/s (p50 4.8–5.1 µs) → 218–219 k/s (4.4–4.5 µs);
//!   1→10 fanout +8%; 4→1→4 about 10% lower across full runs (medians
//!   4.0 → 3.6 M/s; see PERFORMANCE.md's eleventh-session figures). Keeping
//!   a receiver that fell behind on the deque (`Shared::ring_open`)
//!   measured 4→1→4 2.80–3.01 → 3.15–3.22 M/s in a C-only harness (slow
//!   placement; the deque alone 3.45–4.06), but no gain in `bench peers`
//!   (3.20–3.26 against 3.15–3.45), and fanout better than reopening the
//!   ring only on an empty inbox (twelfth session; see PERFORMANCE.md).
//! - **The deque**: a `VecDeque` under a mutex, for what arrives while the
//!   ring is full and for batches. Everything in it is younger than
//!   everything in the ring, so once it holds a message every send goes
//!   there until a receiver empties it. A receiver takes *everything*
//!   waiting in one hold of that mutex (swapping deques), then hands the
//!   messages out from its own buffer without touching the sender's cache
//!   lines again. Both deques keep their capacity, so a steady flow
//!   allocates nothing. A batch (`send_all`) goes to the deque in one hold
//!   of its lock: slot by slot through the ring measured slower for
//!   batches (A's batch row −6% to −20%).
//!
//! A receiver hands out its buffer first, then the ring, then the deque:
//! the order they were sent in.
//!
//! Why not a crossbeam channel, which the deque replaced: crossbeam's
//! unbounded channel allocates (and zeroes) a block per 31 messages, freed
//! on the other thread, and pays contended atomic operations per message
//! on each side (callgrind, 1→1 auto-ack: 11% more instructions per
//! message; a later try on an Intel Xeon, 21% slower). Nor crossbeam's
//! bounded `ArrayQueue` as the ring: the receiver writes each slot's
//! stamp back and both sides compare-and-swap an index, and 1→1 measured
//! 10–20% slower than the deque alone, batches 30% slower.
//!
//! Why not the ready store's chunked FIFO (`queue/segmented.rs`) as the
//! deque, which never copies as it grows: it was tried. A consumer
//! attaching to a million-message queue got its backlog 35% faster, but
//! then drained it 35% slower: its chunks, freed one by one amid the
//! messages' own frees, sent glibc's allocator into `malloc_consolidate`
//! over and over (`perf`; the instruction counts were equal). A backlog
//! this large is one allocation here, returned whole.
//!
//! Waiting: a receiver spins (polling the ring's next slot and the deque's
//! count, written under its lock) before parking on a condvar. A parking
//! receiver counts itself in `parked`, fences and looks once more; a
//! sender, after a ring push, fences and reads `parked` (after a deque
//! push it reads it under the lock): one of the two sees the other
//! (`tests/loom.rs` checks it). That fence is also the sender's half of
//! the async handshake of [`crate::wake`], so `send_from` issues it on
//! both lanes and the queue's check for waiting tasks adds none.

use std::collections::VecDeque;
use std::sync::atomic::fence;
use std::time::Instant;

#[cfg(test)]
use crossbeam_channel::SendError;
pub(crate) use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};

use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};

mod ring;

use ring::{Head, Ring, Tail};

/// Capacity (in messages) an inbox's buffers keep whatever the flow: more
/// is kept only while the flow needs it.
const KEEP_CAPACITY: usize = 4096;

/// Messages the ring holds before sends go to the locked deque: 1 KiB of
/// slots per consumer, a cache line each. 64 slots measured the same in
/// every `bench peers` scenario and `examples/bench` row, and fanout
/// slower (one drainer of ten queues: 4.9 against 5.4–6.0 M/s), and
/// would cost 4 KiB per consumer.
const RING: usize = 16;

/// An inbox: its sending and receiving ends.
pub(crate) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let (ring, tail, head) = ring::ring(RING);
    let shared = Arc::new(Shared {
        ring,
        state: Mutex::new(State { waiting: VecDeque::new(), receiver_gone: false }),
        available: Condvar::new(),
        len: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
        ring_open: AtomicBool::new(true),
    });
    (
        Sender { shared: Arc::clone(&shared), tail },
        Receiver { shared, taken: Mutex::new(Taken { buffer: VecDeque::new(), head }) },
    )
}

struct Shared<T> {
    /// Sent and not yet taken, while the receiver keeps up.
    ring: Arc<Ring<T>>,
    state: Mutex<State<T>>,
    available: Condvar,
    /// How many messages `state.waiting` holds: written under the lock,
    /// read without it by receivers deciding whether to take the lock, and
    /// by the sender deciding whether the ring may take a message (only
    /// while nothing waits in the deque, which comes after the ring).
    len: AtomicUsize,
    /// Receivers blocked on `available`: changed under the lock, read by
    /// the sender after a ring push (a fence between).
    parked: AtomicUsize,
    /// Set (under the lock) when the sender is dropped, after its last send.
    sender_gone: AtomicBool,
    /// Set (under the lock) when the receiver is dropped: read before a
    /// ring push. (A deque push reads `State::receiver_gone`, under the
    /// lock: reading this flag there instead, and dropping that field,
    /// measured 1→1 8–15% slower over nine alternating `bench peers`
    /// pairs, likely from the struct's layout, which that moved.)
    receiver_gone: AtomicBool,
    /// Whether a send may use the ring: cleared by the sender when it finds
    /// the ring full (the receiver has fallen behind), set again by a
    /// receiver that finds nothing left in either lane (it has caught up)
    /// or takes at most a ring's worth from the deque (it nearly has).
    /// A receiver that is behind takes the deque's messages in one swap,
    /// where the ring hands over a cache line per message, written on the
    /// sender's core and read on the receiver's; without this, the sender
    /// went back to the ring as soon as a receiver had emptied the deque,
    /// with that take's messages still to work through. Only a hint:
    /// order rests on `len` (the ring takes a message only while the
    /// deque is empty), whatever this says, so plain loads and stores.
    ring_open: AtomicBool,
}

struct State<T> {
    /// Sent while the ring was full, or behind such messages, and not yet
    /// taken: every message here is younger than every one in the ring.
    waiting: VecDeque<T>,
    /// The receiver is gone, as the atomic flag says, for a deque push.
    receiver_gone: bool,
}

/// The sending end, held by the queue (whose lock serialises its sends:
/// it takes `&mut self`).
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
    tail: Tail<T>,
}

impl<T> Sender<T> {
    /// Appends `msg`, or hands it back if the receiver is gone: the
    /// by-value form of [`send_from`](Self::send_from), for the tests.
    #[cfg(test)]
    pub(crate) fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        let mut msg = Some(msg);
        self.send_from(&mut msg);
        msg.map_or(Ok(()), |msg| Err(SendError(msg)))
    }

    /// Appends the message in `msg`, leaving `None`, or leaves it there if
    /// the receiver is gone: into the ring while it has room and nothing
    /// waits in the deque, else into the deque. Returns having issued a
    /// SeqCst fence after the message became visible, the sender's half of
    /// the async handshake (see [`crate::wake`]) as well as of parking.
    #[inline(always)]
    pub(crate) fn send_from(&mut self, msg: &mut Option<T>) {
        let shared = &*self.shared;
        if shared.len.load(Ordering::Acquire) == 0
            && shared.ring_open.load(Ordering::Relaxed)
            && !shared.receiver_gone.load(Ordering::Acquire)
        {
            let Some(value) = msg.take() else { return };
            match self.tail.push(value) {
                Ok(()) => {
                    fence(Ordering::SeqCst);
                    return self.wake_parked();
                }
                Err(back) => {
                    shared.ring_open.store(false, Ordering::Relaxed);
                    *msg = Some(back);
                }
            }
        }
        self.send_waiting(msg);
        fence(Ordering::SeqCst);
    }

    /// The ring is full, or the deque already holds messages: appends to
    /// the deque, under the lock.
    fn send_waiting(&self, msg: &mut Option<T>) {
        self.append_waiting(false, |waiting| {
            if let Some(msg) = msg.take() {
                waiting.push_back(msg);
            }
        });
    }

    /// Appends to the deque, in one hold of its lock, what `append` adds,
    /// publishes the new count and wakes parked receivers (all of them if
    /// `several` messages came, as many wake-ups as single sends would
    /// have made); false, appending nothing, if the receiver is gone.
    #[inline(always)]
    fn append_waiting(&self, several: bool, append: impl FnOnce(&mut VecDeque<T>)) -> bool {
        let mut state = self.shared.state.lock();
        if state.receiver_gone {
            return false;
        }
        append(&mut state.waiting);
        self.shared.len.store(state.waiting.len(), Ordering::Release);
        if self.shared.parked.load(Ordering::Relaxed) > 0 {
            if several {
                self.shared.available.notify_all();
            } else {
                self.shared.available.notify_one();
            }
        }
        true
    }

    /// After a ring push and a fence: wakes a parked receiver, if any.
    /// The fence orders the push before the read of `parked`, as a parking
    /// receiver's orders its count before its last look at the ring: one
    /// of the two sees the other.
    fn wake_parked(&self) {
        if self.shared.parked.load(Ordering::Relaxed) > 0 {
            let _state = self.shared.state.lock();
            self.shared.available.notify_one();
        }
    }

    /// Appends every message of `msgs`, in order, leaving `msgs` empty (its
    /// capacity kept, up to [`KEEP_CAPACITY`]); if the receiver is gone,
    /// leaves them in `msgs` and fails. Several go to the deque in one hold
    /// of its lock, whatever the ring holds (the deque comes after it): a
    /// slot per message measured slower for batches (`bench peers`, A
    /// batches −6% to −20%).
    pub(crate) fn send_all(&mut self, msgs: &mut Vec<T>) -> Result<(), ()> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(());
        }
        if msgs.len() == 1 {
            let mut msg = msgs.pop();
            self.send_from(&mut msg);
            return match msg {
                Some(msg) => {
                    msgs.push(msg);
                    Err(())
                }
                None => Ok(()),
            };
        }
        if !msgs.is_empty() && !self.append_waiting(true, |waiting| waiting.extend(msgs.drain(..))) {
            return Err(());
        }
        if msgs.capacity() > KEEP_CAPACITY {
            msgs.shrink_to(KEEP_CAPACITY);
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let _state = self.shared.state.lock();
        self.shared.sender_gone.store(true, Ordering::Release);
        if self.shared.parked.load(Ordering::Relaxed) > 0 {
            self.shared.available.notify_all();
        }
    }
}

/// The receiving end, held by the consumer.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The receivers' side, behind a lock that only receivers take, so
    /// uncontended in the usual single-threaded consumer: it makes them
    /// take from the ring one at a time.
    taken: Mutex<Taken<T>>,
}

/// What only receivers touch.
struct Taken<T> {
    /// Taken from the deque, in order, not yet handed out: older than
    /// anything the ring holds now.
    buffer: VecDeque<T>,
    /// The ring's reading end.
    head: Head<T>,
}

impl<T> Taken<T> {
    /// The next message: from the buffer, else the ring (the order they
    /// were sent in; the deque comes after both).
    fn next(&mut self) -> Option<T> {
        self.buffer.pop_front().or_else(|| self.head.pop())
    }
}

impl<T> Receiver<T> {
    /// The next message, if one is waiting: from this receiver's buffer,
    /// else the ring, else the deque (the order they were sent in).
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut taken = self.taken.lock();
        if let Some(msg) = taken.buffer.pop_front() {
            return Ok(msg);
        }
        // `gone` first: seen set, it makes the last send visible too, so
        // nothing sent is reported as disconnected. Then the deque's count
        // before the ring: a count seen above zero makes visible every
        // ring push before the deque's first message, so the ring is seen
        // empty only once those are taken (the ring comes first).
        let gone = self.shared.sender_gone.load(Ordering::Acquire);
        let waiting = self.shared.len.load(Ordering::Acquire);
        if let Some(msg) = taken.head.pop() {
            return Ok(msg);
        }
        if waiting == 0 {
            self.caught_up();
            return Err(if gone { TryRecvError::Disconnected } else { TryRecvError::Empty });
        }
        self.refill(&mut taken.buffer);
        taken.buffer.pop_front().ok_or(TryRecvError::Empty)
    }

    /// Appends `first` (if any) and then what is waiting to `into`, in
    /// order, until it holds `max` (a batch receive): from this receiver's
    /// buffer, then the ring, then the deque. Reserves what it finds
    /// before appending, so a batch is one allocation of its final size
    /// rather than a doubling series. True if nothing was appended
    /// because the sender is gone and nothing is left.
    pub(crate) fn take_up_to(&self, max: usize, first: Option<T>, into: &mut Vec<T>) -> bool {
        let mut taken = self.taken.lock();
        let target = max.max(into.len() + usize::from(first.is_some()));
        // The same order as `try_recv`: `gone`, then the deque's count,
        // then the ring.
        let gone = self.shared.sender_gone.load(Ordering::Acquire);
        let waiting = self.shared.len.load(Ordering::Acquire);
        let wanted = target - into.len() - usize::from(first.is_some());
        let buffered = taken.buffer.len().min(wanted);
        let found = buffered + taken.head.ready(wanted - buffered) + waiting;
        into.reserve_exact(wanted.min(found) + usize::from(first.is_some()));
        into.extend(first);
        while into.len() < target {
            match taken.next() {
                Some(msg) => into.push(msg),
                None => break,
            }
        }
        if into.len() < target {
            if waiting == 0 {
                self.caught_up();
            } else {
                self.refill(&mut taken.buffer);
                let n = taken.buffer.len().min(target - into.len());
                into.extend(taken.buffer.drain(..n));
            }
        }
        gone && into.is_empty()
    }

    /// This receiver found nothing in its buffer, the ring or the deque:
    /// sends may use the ring again (see `Shared::ring_open`). Written
    /// only when it changes, so a receiver polling an empty inbox leaves
    /// the line the sender reads alone.
    fn caught_up(&self) {
        if !self.shared.ring_open.load(Ordering::Relaxed) {
            self.shared.ring_open.store(true, Ordering::Relaxed);
        }
    }

    /// Moves everything waiting in the deque into `buffer`, which is empty,
    /// by swapping deques: one hold of the shared lock, nothing copied.
    fn refill(&self, buffer: &mut VecDeque<T>) {
        debug_assert!(buffer.is_empty(), "a refill swaps: anything in `buffer` would go back");
        let mut state = self.shared.state.lock();
        std::mem::swap(&mut state.waiting, buffer);
        self.shared.len.store(0, Ordering::Release);
        // A take of at most a ring's worth: the receiver is about to catch
        // up, so sends may use the ring again (see `Shared::ring_open`).
        if buffer.len() <= RING {
            self.caught_up();
        }
        // The sender's new (empty) deque is the one just drained: past
        // a burst, let its capacity go down to twice what this take
        // found, so a steady flow keeps its buffers and a burst's do
        // not stay. (Shrinking an empty deque copies nothing.)
        let keep = KEEP_CAPACITY.max(2 * buffer.len());
        if state.waiting.capacity() > 2 * keep {
            state.waiting.shrink_to(keep);
        }
    }

    /// Counts a receiver about to park and says whether it may: nothing
    /// arrived and the sender is still there. With the count made before
    /// this last look (the fence between), a send the look misses sees
    /// the count and wakes it.
    fn may_park(&self, state: &State<T>) -> bool {
        self.shared.parked.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        !self.shared.ring.is_ready()
            && state.waiting.is_empty()
            && !self.shared.sender_gone.load(Ordering::Acquire)
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
            if self.may_park(&state) {
                self.shared.available.wait(&mut state);
            }
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
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
            let may_park = self.may_park(&state);
            let timed_out = may_park && Instant::now() >= deadline;
            if may_park && !timed_out {
                let _timed_out = self.shared.available.wait_until(&mut state, deadline);
            }
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
            if timed_out {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }

    /// Takes every message left, in order (the consumer is leaving).
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut taken = self.taken.lock();
        let mut all: Vec<T> = std::iter::from_fn(|| taken.next()).collect();
        let mut state = self.shared.state.lock();
        all.extend(state.waiting.drain(..));
        self.shared.len.store(0, Ordering::Release);
        all
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("ring_ready", &self.shared.ring.is_ready())
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
        self.shared.receiver_gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
