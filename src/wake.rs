//! The async receive handshake: tasks waiting for a consumer's inbox, and
//! the store-then-check protocol that wakes them without a lost wake-up.
//! Kept on its own, over the `sync` facade, so that `tests/loom.rs` can
//! model-check it exactly as the bus runs it.
//!
//! - A waiter (a `recv_async` poll) that found the inbox empty
//!   [`register`](WakerSet::register)s its waker — which sets `has_wakers`
//!   and then issues a SeqCst fence — and looks at the inbox again.
//! - A sender, after making a delivery visible in the inbox (or
//!   disconnecting it), calls [`take`](WakerSet::take): a SeqCst fence, then
//!   `has_wakers`; only if it is set does it lock and take the wakers, to
//!   wake once it holds no lock of the bus.
//!
//! The two fences order the store of each side before its load of the
//! other's: at least one side sees the other, so either the waiter's second
//! look finds the delivery or the sender finds the waker. Sync consumers
//! never register, so a send to them costs a fence and a load.

use std::task::Waker;

use crate::sync::{AtomicBool, Mutex, Ordering, fence};

#[derive(Debug, Default)]
pub(crate) struct WakerSet {
    wakers: Mutex<Vec<Waker>>,
    has_wakers: AtomicBool,
}

impl WakerSet {
    /// Registers a waiting task (once per task: a waker that would wake the
    /// same task is kept once). The caller must look at the inbox again
    /// afterwards.
    pub(crate) fn register(&self, waker: &Waker) {
        {
            let mut wakers = self.wakers.lock();
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
            self.has_wakers.store(true, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// Moves the registered wakers into `into`, to be woken by the caller
    /// once it holds no lock. Called after the change they wait for is
    /// visible.
    pub(crate) fn take(&self, into: &mut Vec<Waker>) {
        fence(Ordering::SeqCst);
        self.take_fenced(into);
    }

    /// [`take`](Self::take) for a caller that has issued the SeqCst fence
    /// itself, after making its change visible: the inbox, whose send
    /// fences for its own parked receivers, so that one fence serves both.
    pub(crate) fn take_fenced(&self, into: &mut Vec<Waker>) {
        if !self.has_wakers.load(Ordering::Relaxed) {
            return;
        }
        let mut wakers = self.wakers.lock();
        self.has_wakers.store(false, Ordering::Relaxed);
        into.append(&mut wakers);
    }
}
