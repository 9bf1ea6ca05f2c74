//! The inbox's lock-free lane: a bounded single-producer, single-consumer
//! ring, the one place besides [`crate::prefetch`] that uses `unsafe`.
//!
//! Why it exists: with the consumer keeping up (taking each message as it
//! arrives), a locked deque made both sides write the lock's line, the
//! deque's header and the count for every message, and each side's locked
//! instruction waited for those lines to come back from the other core.
//! Here the sender writes only a slot (value and stamp, one cache line)
//! and the receiver only its own `head`, which the sender reads once per
//! lap at most; the receiver's polling reads the slot it waits for and
//! writes nothing the sender writes.
//!
//! One [`Tail`] and one [`Head`] exist per ring ([`ring`] makes them
//! together and neither is `Clone`); pushing takes `&mut Tail` and popping
//! `&mut Head`, so the exclusivity the protocol needs is the borrow
//! checker's to prove. The `unsafe` is confined to the slot's value cell:
//!
//! - a slot at position `p` (index `p % N`) holds a value exactly while its
//!   stamp is `p + 1` and the head has not passed `p`;
//! - the producer writes position `p` only once the head has passed
//!   `p - N` (it read `head` with `Acquire` after the consumer's `Release`
//!   store that followed its read of that slot), then publishes the value
//!   with a `Release` store of the stamp;
//! - the consumer reads position `p` only after an `Acquire` load of the
//!   stamp saw `p + 1`, and moves the value out before its `Release` store
//!   of the head frees the slot.
//!
//! So a value is written once, read (moved out) once, and never touched by
//! both sides at the same time; `Drop` drops what was written and not read.
//! `tests/loom.rs` compiles this module against loom (the cells through
//! loom's checked `UnsafeCell`, by way of the `sync` facade) and checks a
//! lap of the ring, the drop, and the inbox's parking handshake over it.
//! What the ring bought is measured in the inbox's module docs (1→1 auto-ack
//! +35–70% on the development VM).

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

/// One slot, alone on its cache line: the sender writing one slot never
/// takes the line of a slot the receiver is reading.
#[repr(align(64))]
struct Slot<T> {
    /// `p + 1` once the value for position `p` is written.
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The consumer's published position, on its own line.
#[repr(align(64))]
struct Published(AtomicUsize);

/// The ring both ends share.
pub(super) struct Ring<T> {
    /// A power of two of them, so that a position's slot is `position &
    /// mask`: a `%` by the run-time length compiled to a division on every
    /// push and pop (and positions wrapping past `usize::MAX` stay in step).
    slots: Box<[Slot<T>]>,
    mask: usize,
    /// The next position the consumer reads: every position before it has
    /// been read, and its slot may be written again.
    head: Published,
}

// SAFETY: values of `T` move from the producer's thread to the consumer's
// (so `T: Send`), and the slot protocol above gives each value one owner
// at a time; the ring itself is shared through `Arc` by the two ends.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above: `&Ring` is used by the two ends, which touch a value
// only through their exclusive `Tail` and `Head`.
unsafe impl<T: Send> Sync for Ring<T> {}

/// A ring of at least `capacity` slots (the next power of two, at least
/// one) and its two ends.
pub(super) fn ring<T>(capacity: usize) -> (Arc<Ring<T>>, Tail<T>, Head<T>) {
    let capacity = capacity.max(1).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| Slot { stamp: AtomicUsize::new(0), value: UnsafeCell::new(MaybeUninit::uninit()) })
        .collect();
    let ring = Arc::new(Ring { slots, mask: capacity - 1, head: Published(AtomicUsize::new(0)) });
    let tail = Tail { ring: Arc::clone(&ring), next: 0, free_until: capacity };
    let head = Head { ring: Arc::clone(&ring), next: 0 };
    (ring, tail, head)
}

impl<T> Ring<T> {
    /// The slot of `position`.
    #[inline(always)]
    fn slot(&self, position: usize) -> &Slot<T> {
        &self.slots[position & self.mask]
    }

    /// Whether the value for `position` has been written (its stamp, read
    /// with `Acquire`, says `position + 1`): then it may be read.
    #[inline(always)]
    fn written(&self, position: usize) -> bool {
        self.slot(position).stamp.load(Ordering::Acquire) == position.wrapping_add(1)
    }

    /// Whether a value waits at the consumer's position. Reads atomics
    /// only: for a receiver deciding whether it may park.
    pub(super) fn is_ready(&self) -> bool {
        let head = self.head.0.load(Ordering::Acquire);
        self.written(head)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: both ends are gone (the last `Arc`'s drop ordered
        // their writes before this), so plain loads see their last ones.
        let head = self.head.0.load(Ordering::Relaxed);
        for slot in self.slots.iter() {
            // Written and not read: its stamp is past the head (a read
            // one's stamp is at most the head).
            if slot.stamp.load(Ordering::Relaxed) > head {
                // SAFETY: the stamp says this slot holds a written value
                // that the consumer never moved out, and `&mut self` means
                // neither end can touch it now.
                slot.value.with_mut(|value| unsafe { (*value).assume_init_drop() });
            }
        }
    }
}

/// The producer's end: the only one that writes values.
pub(super) struct Tail<T> {
    ring: Arc<Ring<T>>,
    /// The next position to write.
    next: usize,
    /// Positions before this are known free (from the last read of `head`).
    free_until: usize,
}

impl<T> Tail<T> {
    /// Writes `value` into the next slot, or hands it back if the ring is
    /// full.
    #[inline]
    pub(super) fn push(&mut self, value: T) -> Result<(), T> {
        let ring = &*self.ring;
        if self.next == self.free_until {
            // One read of the consumer's line per lap at most.
            self.free_until = ring.head.0.load(Ordering::Acquire).wrapping_add(ring.slots.len());
            if self.next == self.free_until {
                return Err(value);
            }
        }
        let slot = ring.slot(self.next);
        // SAFETY: position `next` is below `free_until`, so the consumer
        // has moved out the value of position `next - N` (its `Release`
        // store of `head`, read above with `Acquire`, came after), and it
        // reads this slot only once the stamp below says `next + 1`.
        slot.value.with_mut(|cell| unsafe { (*cell).write(value) });
        self.next = self.next.wrapping_add(1);
        slot.stamp.store(self.next, Ordering::Release);
        Ok(())
    }
}

/// The consumer's end: the only one that reads values.
pub(super) struct Head<T> {
    ring: Arc<Ring<T>>,
    /// The next position to read.
    next: usize,
}

impl<T> Head<T> {
    /// Moves out the value at the next position, if it has been written.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<T> {
        let ring = &*self.ring;
        if !ring.written(self.next) {
            return None;
        }
        let slot = ring.slot(self.next);
        // SAFETY: the stamp (read with `Acquire`, after the producer's
        // `Release` store that followed its write) says position `next`
        // holds a written value; only this end reads, once, and the
        // producer does not write the slot again until `head` passes it.
        let value = slot.value.with_mut(|cell| unsafe { (*cell).assume_init_read() });
        self.next = self.next.wrapping_add(1);
        ring.head.0.store(self.next, Ordering::Release);
        Some(value)
    }

    /// How many values wait from the next position on, counting up to
    /// `limit` (at most the ring's size): the stamps of the slots a batch
    /// is about to read, so the lines this touches are touched anyway.
    pub(super) fn ready(&self, limit: usize) -> usize {
        let ring = &*self.ring;
        (0..limit.min(ring.slots.len()))
            .take_while(|&i| {
                let at = self.next.wrapping_add(i);
                ring.written(at)
            })
            .count()
    }
}
