//! Model checking of the bus's two hand-rolled concurrency protocols with
//! loom (GUARANTEES.md, G6 and the async half of G10): every interleaving
//! of the threads below, under the C11 memory model, is explored.
//!
//! The protocol modules are compiled here from the crate's own source
//! (`src/credit.rs`, `src/wake.rs`, `src/inbox/ring.rs`), against a `sync` module that maps the
//! crate's facade names to loom's types — so what is checked is the code the
//! bus runs, not a copy. What they protect (the consumer's inbox, whose
//! message count is written before the sender's fence; the queue's data) is modelled by loom types of the same ordering strength.
//!
//! - `credit`: prefetch is never exceeded, and a ready message is never
//!   stranded while its consumer has room (the settle / dispatch race).
//! - `wake`: an async receiver that parks is always woken by a send that
//!   raced its registration (the store-then-check handshake with SeqCst
//!   fences), and a receiver never misses a delivery.
//! - `ring` (`src/inbox/ring.rs`, the inbox's lock-free lane and one of the
//!   crate's two `unsafe` modules): every value passes once, in order,
//!   through a lap of the ring with no data race on a slot (loom's
//!   `UnsafeCell` checks each access); what is left unread is dropped once;
//!   and a receiver about to park either sees a racing push or is seen by
//!   its sender (the inbox's parking handshake, over the ring).

#![allow(dead_code)]

/// The crate's `sync` facade, on loom.
mod sync {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

    /// A protocol module's own unit tests, inside a model.
    pub fn model(test: impl Fn() + Sync + Send + 'static) {
        loom::model(test);
    }

    /// The crate's cache-line padding, as it is.
    #[derive(Debug, Default)]
    #[repr(align(128))]
    pub struct OwnLine<T>(pub T);

    impl<T> std::ops::Deref for OwnLine<T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.0
        }
    }

    /// parking_lot's locking shape (no poisoning) over loom's mutex.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

#[path = "../src/credit.rs"]
mod credit;

#[path = "../src/wake.rs"]
mod wake;

#[path = "../src/inbox/ring.rs"]
mod ring;

use std::sync::Arc as StdArc;
use std::task::{Wake, Waker};

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use credit::Credit;
use sync::Mutex;
use wake::WakerSet;

/// A queue as the credit protocol sees it: ready messages behind the queue
/// lock, one consumer's credit, and what the consumer received.
struct Queue {
    ready: Mutex<u32>,
    credit: Credit,
    received: AtomicU32,
}

impl Queue {
    /// `QueueState::dispatch`: under the lock, while something is ready and
    /// the consumer has credit, send.
    fn dispatch(&self) {
        self.dispatch_locked(&mut self.ready.lock());
    }

    /// The dispatch loop, the lock already held.
    fn dispatch_locked(&self, ready: &mut u32) {
        while *ready > 0 && self.credit.has_credit_beyond(0) {
            *ready -= 1;
            self.credit.take();
            self.received.fetch_add(1, Ordering::AcqRel);
            assert!(self.credit.in_flight() <= self.credit.prefetch(), "prefetch exceeded");
        }
    }

    /// `Queue::enqueue`: offered straight to the consumer if nothing is
    /// ready and it has credit, else stored.
    fn publish(&self) {
        let mut ready = self.ready.lock();
        if *ready == 0 && self.credit.has_credit_beyond(0) {
            self.credit.take();
            self.received.fetch_add(1, Ordering::AcqRel);
        } else {
            *ready += 1;
        }
        assert!(self.credit.in_flight() <= self.credit.prefetch(), "prefetch exceeded");
    }

    /// `Queue::enqueue_batch` with staging: each message checked counting
    /// the ones staged before it, their credit taken together, then a
    /// dispatch (`QueueState::flush_staged`), all in one hold of the lock.
    fn publish_batch(&self, n: u32) {
        let mut ready = self.ready.lock();
        let mut staged = 0_u32;
        for _ in 0..n {
            if *ready == 0 && self.credit.has_credit_beyond(staged as usize) {
                staged += 1;
            } else {
                *ready += 1;
            }
        }
        self.credit.take_n(staged);
        self.received.fetch_add(staged, Ordering::AcqRel);
        assert!(self.credit.in_flight() <= self.credit.prefetch(), "prefetch exceeded");
        self.dispatch_locked(&mut ready);
    }

    /// A settle: release without the lock; dispatch if the release left the limit.
    fn settle(&self) {
        if self.credit.release(1).must_dispatch {
            self.dispatch();
        }
    }
}

#[test]
fn credit_never_overshoots_and_no_message_is_stranded() {
    loom::model(|| {
        let queue =
            Arc::new(Queue { ready: Mutex::new(0), credit: Credit::new(1), received: AtomicU32::new(0) });
        // The consumer already holds one delivery (at its limit).
        queue.publish();
        let publisher = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || {
                queue.publish();
                queue.publish();
            })
        };
        let consumer = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || {
                // Settles the delivery it holds, racing the publishes.
                queue.settle();
            })
        };
        publisher.join().unwrap();
        consumer.join().unwrap();
        // Nothing is stranded: with credit free, nothing may be ready.
        let ready = *queue.ready.lock();
        assert!(
            ready == 0 || !queue.credit.has_credit_beyond(0),
            "a message is ready while the consumer has room"
        );
        assert_eq!(queue.received.load(Ordering::Acquire) + ready, 3);
    });
}

#[test]
fn a_batch_taking_its_credit_at_once_never_overshoots_nor_strands() {
    loom::model(|| {
        let queue =
            Arc::new(Queue { ready: Mutex::new(0), credit: Credit::new(2), received: AtomicU32::new(0) });
        // The consumer holds one delivery: one credit left.
        queue.publish();
        let publisher = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || queue.publish_batch(3))
        };
        let consumer = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || queue.settle())
        };
        publisher.join().unwrap();
        consumer.join().unwrap();
        let ready = *queue.ready.lock();
        assert!(
            ready == 0 || !queue.credit.has_credit_beyond(0),
            "a message is ready while the consumer has room"
        );
        assert!(queue.credit.in_flight() <= 2);
        assert_eq!(queue.received.load(Ordering::Acquire) + ready, 4);
    });
}

#[test]
fn two_settles_racing_a_publisher_at_the_limit_strand_nothing() {
    // The waiting flag: set by the queue's swap when it finds the consumer
    // full, cleared by the one settle that sees it. Two settles race a
    // publish; whichever order, nothing may stay ready with room free.
    // Three threads: bounded preemptions keep the search to seconds.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let queue =
            Arc::new(Queue { ready: Mutex::new(0), credit: Credit::new(2), received: AtomicU32::new(0) });
        // The consumer holds two deliveries: at its limit.
        queue.publish();
        queue.publish();
        let publisher = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || queue.publish())
        };
        let settlers: Vec<_> = (0..2)
            .map(|_| {
                let queue = Arc::clone(&queue);
                loom::thread::spawn(move || queue.settle())
            })
            .collect();
        publisher.join().unwrap();
        for settler in settlers {
            settler.join().unwrap();
        }
        let ready = *queue.ready.lock();
        assert!(
            ready == 0 || !queue.credit.has_credit_beyond(0),
            "a message is ready while the consumer has room"
        );
        assert_eq!(ready, 0, "two settles freed room for the publish");
        assert_eq!(queue.credit.in_flight(), 1);
        assert_eq!(queue.received.load(Ordering::Acquire), 3);
    });
}

/// A waker that records it was woken.
struct Flag(std::sync::atomic::AtomicBool);

impl Wake for Flag {
    fn wake(self: StdArc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_parked_receiver_is_always_woken_or_sees_the_delivery() {
    loom::model(|| {
        let inbox = Arc::new(AtomicBool::new(false));
        let wakers = Arc::new(WakerSet::default());
        let flag = StdArc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = Waker::from(StdArc::clone(&flag));

        let sender = {
            let (inbox, wakers) = (Arc::clone(&inbox), Arc::clone(&wakers));
            loom::thread::spawn(move || {
                // The queue sends into the inbox, then (after its lock) wakes.
                inbox.store(true, Ordering::Release);
                let mut to_wake = Vec::new();
                wakers.take(&mut to_wake);
                for waker in to_wake {
                    waker.wake();
                }
            })
        };
        // `poll_recv`: look, register, look again.
        let ready = inbox.load(Ordering::Acquire) || {
            wakers.register(&waker);
            inbox.load(Ordering::Acquire)
        };
        sender.join().unwrap();
        if !ready {
            assert!(
                flag.0.load(std::sync::atomic::Ordering::SeqCst),
                "parked and never woken: a lost wake-up"
            );
        }
    });
}

/// Two tasks waiting on one consumer (two `recv_async` futures polled from
/// different threads) and one send: each either sees the delivery on its
/// second look or is woken.
#[test]
fn every_registered_task_is_woken_or_sees_the_delivery() {
    loom::model(|| {
        let inbox = Arc::new(AtomicBool::new(false));
        let wakers = Arc::new(WakerSet::default());
        let flags: Vec<_> =
            (0..2).map(|_| StdArc::new(Flag(std::sync::atomic::AtomicBool::new(false)))).collect();
        let waiter = {
            let (inbox, wakers, flag) = (Arc::clone(&inbox), Arc::clone(&wakers), StdArc::clone(&flags[1]));
            loom::thread::spawn(move || {
                inbox.load(Ordering::Acquire) || {
                    wakers.register(&Waker::from(flag));
                    inbox.load(Ordering::Acquire)
                }
            })
        };
        let sender = {
            let (inbox, wakers) = (Arc::clone(&inbox), Arc::clone(&wakers));
            loom::thread::spawn(move || {
                inbox.store(true, Ordering::Release);
                let mut to_wake = Vec::new();
                wakers.take(&mut to_wake);
                to_wake.into_iter().for_each(Waker::wake);
            })
        };
        let here = inbox.load(Ordering::Acquire) || {
            wakers.register(&Waker::from(StdArc::clone(&flags[0])));
            inbox.load(Ordering::Acquire)
        };
        let there = waiter.join().unwrap();
        sender.join().unwrap();
        for (ready, flag) in [(here, &flags[0]), (there, &flags[1])] {
            assert!(
                ready || flag.0.load(std::sync::atomic::Ordering::SeqCst),
                "a registered task was never woken"
            );
        }
    });
}

/// The inbox's ring, two slots, three values: the producer laps the
/// consumer, waiting (yielding) while the ring is full, and the consumer
/// gets every value once, in order. loom checks every slot access against
/// the stamp and head orderings for a data race.
#[test]
fn the_ring_passes_every_value_once_in_order_across_a_lap() {
    loom::model(|| {
        let (_ring, mut tail, mut head) = ring::ring::<StdArc<u32>>(2);
        let producer = loom::thread::spawn(move || {
            for i in 0..3 {
                let mut value = StdArc::new(i);
                while let Err(back) = tail.push(value) {
                    value = back;
                    loom::thread::yield_now();
                }
            }
        });
        for i in 0..3 {
            loop {
                if let Some(value) = head.pop() {
                    assert_eq!(*value, i, "out of order");
                    break;
                }
                loom::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(head.pop().is_none(), "a value came out twice");
    });
}

/// A value read on one thread while the ring is dropped on another: what
/// was pushed and never read is dropped once, what was read is not dropped
/// again.
#[test]
fn the_ring_drops_what_was_never_read_once() {
    loom::model(|| {
        let token = StdArc::new(());
        let (ring_, mut tail, mut head) = ring::ring::<StdArc<()>>(2);
        tail.push(StdArc::clone(&token)).unwrap();
        tail.push(StdArc::clone(&token)).unwrap();
        let reader = loom::thread::spawn(move || drop(head.pop()));
        drop((ring_, tail));
        reader.join().unwrap();
        assert_eq!(StdArc::strong_count(&token), 1, "a value leaked or was dropped twice");
    });
}

/// The inbox's parking handshake over the ring (`inbox::Sender::send_from`
/// and `Receiver::may_park`): the sender pushes, fences and reads the
/// parked count; a receiver that found nothing counts itself parked,
/// fences and looks at the ring once more. Either that look finds the
/// value or the sender sees the count and wakes it: never both missed.
#[test]
fn a_receiver_about_to_park_sees_the_push_or_is_seen() {
    loom::model(|| {
        let (ring_, mut tail, _head) = ring::ring::<u32>(2);
        let parked = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let sender = {
            let parked = Arc::clone(&parked);
            loom::thread::spawn(move || {
                tail.push(7).unwrap();
                loom::sync::atomic::fence(Ordering::SeqCst);
                parked.load(Ordering::Relaxed) > 0
            })
        };
        parked.fetch_add(1, Ordering::Relaxed);
        loom::sync::atomic::fence(Ordering::SeqCst);
        let saw_it = ring_.is_ready();
        let woken = sender.join().unwrap();
        assert!(saw_it || woken, "parked with a message in the ring and never woken");
    });
}
