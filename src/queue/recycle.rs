//! Envelope allocations handed back by the threads that let go of them to
//! the threads that publish: a pool of magazines, as in a slab allocator.
//!
//! Why: a publish allocates its envelope on the publisher's thread and the
//! consumer frees it on its own. With the system allocator that was the
//! largest single cost of a 1→1 publish (`perf`: a third of the publisher's
//! time in `_int_malloc`, which found its thread's cache empty every time
//! and took chunks back from the consumer's frees one by one, each a cache
//! line crossing between cores). Here a freed envelope stays allocated:
//! the thread dropping a delivery empties it (its message and extras are
//! let go at once, on that thread, under no lock of the bus) and keeps it
//! in a magazine of its own; a full magazine goes to a shared depot in one
//! step, and a publisher with none left takes a whole magazine from there.
//! Cache lines still cross, but the allocator's bookkeeping no longer does,
//! and the exchanges happen once per [`MAGAZINE`] envelopes.
//!
//! Bounded: a thread keeps at most two magazines, the depot [`DEPOT`] full
//! ones and as many emptied ones on their way back; past that, envelopes
//! (and emptied magazines) are freed as before. Nothing in a kept envelope
//! belongs to a broker (it is empty but for its names), so the pool is the
//! process's, shared by every broker in it.
//!
//! Only envelopes let go through a [`Delivery`](crate::Delivery) come back
//! (the common end of a message); the rarer ends — a purge, an expiry, a
//! dead letter, a deleted queue — free them as before.

use std::cell::RefCell;
use std::sync::LazyLock;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::{Address, Envelope};
use crate::conversation::ConversationToken;
use crate::message::Message;
use crate::sync::Arc;

/// Envelopes per magazine.
const MAGAZINE: usize = 32;

/// Full magazines the depot holds at most (2,048 envelopes, about 230 KB),
/// and emptied ones on their way back (256 bytes each).
const DEPOT: usize = 64;

type Magazine = Vec<Arc<Envelope>>;

/// Magazines on their way between threads, in bounded channels
/// (lock-free), so that no publish waits on another thread's lock: full
/// ones to the threads that publish, and the emptied ones back to the
/// threads that fill them. (Without the way back, every magazine's buffer
/// was allocated by the thread that filled it and freed by the one that
/// emptied it: `perf` of a batched 1→1 put 6% of the samples in that
/// `malloc` and the other arena's `_int_free`.)
struct Depot {
    full: Sender<Magazine>,
    taken: Receiver<Magazine>,
    emptied: Sender<Magazine>,
    to_fill: Receiver<Magazine>,
}

impl Depot {
    fn new(capacity: usize) -> Self {
        let (full, taken) = bounded(capacity);
        let (emptied, to_fill) = bounded(capacity);
        Depot { full, taken, emptied, to_fill }
    }

    /// An empty magazine with room for [`MAGAZINE`]: one sent back, else a
    /// new one.
    fn empty_magazine(&self) -> Magazine {
        self.to_fill.try_recv().unwrap_or_else(|_| Vec::with_capacity(MAGAZINE))
    }

    /// Sends an emptied magazine back to be filled again. Freed here
    /// instead when the way back is full, or when its buffer cannot hold a
    /// whole magazine (a thread's first, never allocated).
    fn send_back(&self, magazine: Magazine) {
        debug_assert!(magazine.is_empty());
        if magazine.capacity() >= MAGAZINE {
            let _ = self.emptied.try_send(magazine);
        }
    }
}

/// The process's depot.
static SHARED: LazyLock<Depot> = LazyLock::new(|| Depot::new(DEPOT));

/// This thread's magazines.
struct Local {
    /// Envelopes to publish with.
    spare: Magazine,
    /// Envelopes this thread let go of, filling up.
    returned: Magazine,
    /// Publishes left before the depot is looked at again, after it was
    /// found empty: a thread that only publishes (nothing comes back)
    /// looks once per [`MAGAZINE`] publishes, not on every one (an empty
    /// channel's `try_recv` costs a fence).
    skip_depot: u32,
}

impl Local {
    const fn new() -> Self {
        Local { spare: Vec::new(), returned: Vec::new(), skip_depot: 0 }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
}

/// An envelope to `address` holding `message`, in an `Arc`: in a kept
/// allocation if there is one, else a new one.
#[inline(always)]
pub(crate) fn fresh(address: Address, message: Message, token: Option<ConversationToken>) -> Arc<Envelope> {
    // `try_with`: a thread being torn down keeps nothing.
    let kept = LOCAL.try_with(|local| local.borrow_mut().take(&SHARED)).ok().flatten();
    reuse(kept, address, message, token)
}

/// Keeps `envelope`'s allocation for a later publish if nothing else holds
/// it: its contents are dropped now. Taken by value, so that the handle
/// being let go of becomes the kept one: cloning it and dropping the
/// original cost two locked instructions a delivery.
#[inline]
pub(crate) fn give_back(envelope: Arc<Envelope>) {
    // A plain load first, before the thread-local: a fanout's every
    // delivery but the last finds its envelope still shared. (`get_mut`
    // also writes the weak count, on the cache line the other consumers
    // are dropping their handles on.)
    if Arc::strong_count(&envelope) == 1 {
        let _ = LOCAL.try_with(|local| local.borrow_mut().give_back(envelope, &SHARED));
    }
}

/// An envelope to `address` holding `message`, written into `kept` if that
/// is unique (always, but for a handle still being dropped), else into a
/// new allocation.
///
/// Written field by field where it lies: building the envelope and then
/// moving it into the allocation made the compiler copy it through the
/// stack in pieces that did not line up with the stores that wrote them
/// (three store-forwarding stalls, most of this function's time).
#[inline(always)]
fn reuse(
    kept: Option<Arc<Envelope>>,
    address: Address,
    message: Message,
    token: Option<ConversationToken>,
) -> Arc<Envelope> {
    if let Some(mut kept) = kept
        && let Some(slot) = Arc::get_mut(&mut kept)
    {
        // Empty (see `empty`): nothing of a message is dropped here.
        slot.refill(address, message, token);
        return kept;
    }
    Arc::new(Envelope::addressed(address, message, token))
}

/// Starts fetching the lines of `envelope`'s allocation: its reference
/// counts (the two words before the value, in `std`'s `Arc`) and the
/// envelope itself. A wrong guess at that layout costs only the hint.
#[inline]
fn prefetch_allocation(envelope: &Arc<Envelope>) {
    let counts = 2 * std::mem::size_of::<usize>();
    let start = Arc::as_ptr(envelope).cast::<u8>().wrapping_sub(counts);
    crate::prefetch::lines(start, counts + std::mem::size_of::<Envelope>());
}

/// `envelope`, emptied, if nothing else holds it; else it is let go of
/// as it is.
fn empty(mut envelope: Arc<Envelope>) -> Option<Arc<Envelope>> {
    Arc::get_mut(&mut envelope)?.clear();
    Some(envelope)
}

impl Local {
    #[inline]
    fn take(&mut self, depot: &Depot) -> Option<Arc<Envelope>> {
        if let Some(kept) = self.spare.pop() {
            return Some(kept);
        }
        if self.skip_depot > 0 && self.returned.is_empty() {
            self.skip_depot -= 1;
            return None;
        }
        self.refill(depot)
    }

    /// `spare` is empty: what this thread let go of itself (a thread that
    /// publishes and consumes), else a magazine from the depot.
    #[cold]
    fn refill(&mut self, depot: &Depot) -> Option<Arc<Envelope>> {
        if !self.returned.is_empty() {
            std::mem::swap(&mut self.spare, &mut self.returned);
        } else {
            match depot.taken.try_recv() {
                Ok(magazine) => {
                    // Each envelope was last written on the core that let
                    // go of it: sent for all at once, their lines cross
                    // together rather than one per publish (`prefetch.rs`).
                    for envelope in &magazine {
                        prefetch_allocation(envelope);
                    }
                    depot.send_back(std::mem::replace(&mut self.spare, magazine));
                }
                Err(_) => self.skip_depot = MAGAZINE as u32 - 1,
            }
        }
        self.spare.pop()
    }

    /// Keeps `envelope` if it is unique and there is room: this thread's
    /// magazine, or a fresh one once the full one is in the depot. With
    /// the depot full too (a consumer draining a backlog no one publishes
    /// behind), it is let go of as before, untouched.
    fn give_back(&mut self, envelope: Arc<Envelope>, depot: &Depot) {
        if self.returned.len() >= MAGAZINE {
            if depot.full.is_full() {
                return;
            }
            let full = std::mem::replace(&mut self.returned, depot.empty_magazine());
            if let Err(full) = depot.full.try_send(full) {
                // Filled meanwhile by another thread: these are freed.
                drop(full.into_inner());
            }
        }
        if let Some(kept) = empty(envelope) {
            self.returned.push(kept);
        }
    }
}

/// What an envelope's message reads as while it waits to be reused. Never
/// read in practice: an empty envelope is in no queue and no delivery.
#[cold]
pub(crate) fn no_message() -> &'static Message {
    static EMPTY: LazyLock<Message> = LazyLock::new(Message::default);
    &EMPTY
}

/// What a delivery's envelope reads as once its drop has taken it. Never
/// read in practice: nothing reads a delivery being dropped.
#[cold]
pub(crate) fn no_envelope() -> &'static Envelope {
    static EMPTY: LazyLock<Envelope> = LazyLock::new(|| Envelope::new("", "", Message::default()));
    &EMPTY
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn envelope(body: impl Into<bytes::Bytes>) -> Envelope {
        Envelope::new("x", "k", Message::new(body))
    }

    /// A body that records being dropped.
    struct Owner(Arc<AtomicBool>);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            b"owned"
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_envelope_let_go_lets_go_of_its_message_at_once_and_is_reused() {
        let dropped = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(envelope(bytes::Bytes::from_owner(Owner(Arc::clone(&dropped)))));
        let at = Arc::as_ptr(&handle);
        let kept = empty(handle).expect("unique");
        assert!(dropped.load(Ordering::SeqCst), "the body is dropped when the envelope is kept");
        let reused = reuse(Some(kept), Address::new("x", "k"), Message::new("next"), None);
        assert_eq!(Arc::as_ptr(&reused), at, "the same allocation");
        assert_eq!(reused.message().body().as_ref(), b"next");
        assert_eq!((reused.exchange(), reused.routing_key()), ("x", "k"));
    }

    #[test]
    fn an_envelope_another_handle_holds_is_not_kept() {
        let handle = Arc::new(envelope("shared"));
        let other = Arc::clone(&handle);
        assert!(empty(handle).is_none());
        assert_eq!(other.message().body().as_ref(), b"shared", "left as it was");
    }

    #[test]
    fn a_kept_envelope_still_held_is_not_written_into() {
        let kept = empty(Arc::new(envelope("m"))).expect("unique");
        // A handle still held elsewhere: the allocation is not unique.
        let handle = Arc::clone(&kept);
        let fresh = reuse(Some(kept), Address::new("x", "k"), Message::new("next"), None);
        assert_ne!(Arc::as_ptr(&fresh), Arc::as_ptr(&handle));
        assert_eq!(fresh.message().body().as_ref(), b"next");
    }

    #[test]
    fn full_magazines_pass_between_threads_through_the_depot_and_no_further() {
        let depot = Depot::new(1);
        let (mut consumer, mut publisher) = (Local::new(), Local::new());
        let mut kept = Vec::new();
        for i in 0..3 * MAGAZINE {
            let handle = Arc::new(envelope(format!("m{i}")));
            let at = Arc::as_ptr(&handle);
            consumer.give_back(handle, &depot);
            if consumer.returned.last().map(Arc::as_ptr) == Some(at) {
                kept.push(at);
            }
        }
        // One magazine went to the depot (its capacity), the next filled
        // up; the rest found no room and were left alone.
        assert_eq!(kept.len(), 2 * MAGAZINE);
        assert_eq!((depot.taken.len(), consumer.returned.len()), (1, MAGAZINE));
        let mut reused = 0;
        while let Some(envelope) = publisher.take(&depot) {
            assert!(kept[..MAGAZINE].contains(&Arc::as_ptr(&envelope)), "the oldest magazine, whole");
            reused += 1;
        }
        assert_eq!(reused, MAGAZINE);
    }

    #[test]
    fn emptied_magazines_go_back_to_be_filled_again() {
        let depot = Depot::new(2);
        let (mut consumer, mut publisher) = (Local::new(), Local::new());
        let fill = |consumer: &mut Local| {
            for i in 0..MAGAZINE {
                consumer.give_back(Arc::new(envelope(format!("m{i}"))), &depot);
            }
        };
        fill(&mut consumer);
        let first = consumer.returned.as_ptr();
        fill(&mut consumer);
        fill(&mut consumer);
        assert_eq!(depot.taken.len(), 2, "two full magazines sent");
        for _ in 0..2 * MAGAZINE {
            assert!(publisher.take(&depot).is_some());
        }
        // Taking the second sent the first's buffer back (the publisher's
        // own first magazine, never allocated, was not sent).
        assert_eq!(depot.to_fill.len(), 1);
        let refilled = depot.empty_magazine();
        assert_eq!((refilled.as_ptr(), refilled.len()), (first, 0), "the same buffer, empty");
        assert_eq!(depot.empty_magazine().capacity(), MAGAZINE, "none left: a new one");
        depot.send_back(Vec::new());
        assert!(depot.to_fill.is_empty(), "a buffer with no room for a magazine is not sent back");
    }

    #[test]
    fn a_thread_that_publishes_and_consumes_reuses_its_own() {
        let depot = Depot::new(1);
        let mut both = Local::new();
        let handle = Arc::new(envelope("m"));
        let at = Arc::as_ptr(&handle);
        both.give_back(handle, &depot);
        let again = reuse(both.take(&depot), Address::new("x", "k"), Message::new("next"), None);
        assert_eq!(Arc::as_ptr(&again), at);
        assert!(depot.taken.is_empty());
    }
}
