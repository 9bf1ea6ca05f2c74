//! A first-in first-out sequence kept in chunks that are never grown: the
//! ready store's tail.
//!
//! A single growing `VecDeque` doubles its buffer whenever it is full and
//! copies every element across: filling a queue with a million messages
//! copies them again and again, leaves up to half the buffer unused, and
//! during a copy holds the old buffer too. Here elements live in chunks, each
//! allocated once at its final size and never grown, so a growing queue never
//! moves an element. Chunk sizes double, from [`FIRST`] slots up to [`CHUNK`],
//! so a queue holding a few messages holds a few slots, and a long queue
//! leaves unused at most the end of its last chunk.

use std::collections::VecDeque;
use std::fmt;
use std::mem;

/// The largest chunk, in slots.
///
/// Speed hardly depends on it from 64 up (a chunk change is one operation in
/// `CHUNK`). A long queue allocates one chunk per `CHUNK` messages (20 KiB of
/// 40-byte `QueuedMessage`s); a queue that never held 505 messages never
/// holds one (see [`FIRST`]).
pub(super) const CHUNK: usize = 512;

/// The first chunk, in slots: 320 bytes of 40-byte `QueuedMessage`s.
///
/// A queue holding a message holds at least this much, an idle one at most
/// twice this (see [`Segmented`]). Each new chunk doubles the last up to
/// [`CHUNK`]: 8, 16, .. 256, then 512s from the 505th message on: 7
/// allocations to reach `CHUNK`, where a `VecDeque` makes 8 (4 slots, then
/// doublings to 512), copying everything at each.
pub(super) const FIRST: usize = 8;

/// The most chunk headers an emptied deque of chunks keeps room for: a queue
/// going between two and a dozen or so chunks does not free and regrow it each
/// time it is down to two.
const MIDDLE_KEPT: usize = 16;

/// A FIFO of elements in chunks of `F` to `C` slots.
///
/// The chunks are `front`, then `middle`'s, then `back`. Pushes go to `back`
/// and pops come from `front`, both held here rather than behind the deque
/// of chunks, so the hot paths reach their chunk with no extra indirection.
/// A sequence in one chunk keeps it as `back` and pops from it while `front`
/// and `middle` are empty. An emptied `front` is replaced by the next chunk
/// (or freed if `back` is all that is left) only at the next pop, so a pop
/// does no work after taking its element, which lets it return the element
/// without extra copies.
///
/// A new chunk is allocated when `back` is full, with room for as many
/// elements as the sequence then holds: `F` doubled until it is more than the
/// length, at most `C`. Filling an empty sequence therefore allocates chunks
/// of `F`, `2F`, `4F`, .. `C`, `C`, ..; a sequence whose length stays about
/// the same stays at the chunk size for that length.
///
/// It holds these invariants (checked by the tests' `check`):
/// - every allocated chunk has a capacity of `F` times a power of two, or
///   `C`: allocated once at that size, never grown, so no element is ever
///   copied to make room;
/// - capacities do not decrease from `front` to `back` (a new chunk is at
///   least as large as the full one before it);
/// - `back` is empty only if the whole sequence is; no chunk in `middle` is
///   empty (`front` may be);
/// - two neighbouring chunks, `front` aside, hold more elements together than
///   the smaller of them can hold. Removals ([`Self::remove`]) could
///   otherwise leave many nearly empty chunks; with it the chunks hold at
///   most about twice the elements plus the last chunk. `front` is exempt
///   because `pop_front` empties it one element at a time;
/// - an empty sequence holds one chunk at most, of at most `2F` slots, as
///   `back`: nothing else (no spare, no allocated deque of chunks).
///
/// While the sequence is not empty, an emptied chunk is kept as a spare (the
/// larger one, if there are two), so a queue whose length stays about the
/// same reuses its chunks instead of freeing one and allocating one each
/// time it crosses a chunk boundary. When the sequence empties, all but one
/// small chunk is freed: an idle queue costs at most `2F` slots whatever it
/// once held (a `VecDeque` keeps all the capacity it grew to). So that the
/// pop of the last element has nothing left to do after taking it, the
/// freeing is done just before, and the element moved into the chunk kept,
/// or into a new chunk of `F` slots if none was small enough (the chunk the
/// next push would allocate).
pub(super) struct Segmented<T, const C: usize = CHUNK, const F: usize = FIRST> {
    /// The chunk `pop_front` takes from, once there are two or more.
    front: VecDeque<T>,
    /// The chunks between `front` and `back`. This deque of chunks still
    /// grows by doubling and copying, but it holds one 32-byte chunk header
    /// per `C` elements (2,000 headers, 64 KiB, for a million messages): what
    /// it copies is a small fraction of what a single deque of elements
    /// would. Freed when it empties, if it grew past [`MIDDLE_KEPT`]
    /// headers, so that a queue that held a million messages and now holds
    /// a few does not keep 64 KiB of headers.
    middle: VecDeque<VecDeque<T>>,
    /// The chunk `push_back` fills.
    back: VecDeque<T>,
    /// An emptied chunk kept for the next `push_back` that needs a chunk, so a
    /// queue longer than two chunks does not free a chunk each time it
    /// finishes one and allocate one each time it starts one.
    spare: Option<VecDeque<T>>,
    /// Elements held, kept so `len` need not walk the chunks.
    len: usize,
    /// Whether anything but `back` may be held: set when a full `back` is
    /// moved along, cleared when the sequence empties and frees the rest.
    /// While it is clear, the sequence holds one chunk of at most `2F` slots
    /// and nothing else, and a pop (from that chunk: the usual case of a
    /// queue whose consumers keep up) tests only this flag to know that there
    /// is nothing to prepare.
    grown: bool,
    /// Chunks allocated so far, for the tests to see chunks reused.
    #[cfg(test)]
    allocations: usize,
}

/// Where an element is, as found by [`Segmented::find_by_key`]: valid until
/// the sequence next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    /// The chunk: 0 is `front`, then `middle`'s, then `back`.
    chunk: usize,
    /// The index in the chunk.
    offset: usize,
}

impl<T, const C: usize, const F: usize> Default for Segmented<T, C, F> {
    fn default() -> Self {
        Self {
            front: VecDeque::new(),
            middle: VecDeque::new(),
            back: VecDeque::new(),
            spare: None,
            len: 0,
            grown: false,
            #[cfg(test)]
            allocations: 0,
        }
    }
}

impl<T: fmt::Debug, const C: usize, const F: usize> fmt::Debug for Segmented<T, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T, const C: usize, const F: usize> Segmented<T, C, F> {
    /// The largest chunk an empty sequence keeps, in slots: `2F`, so that a
    /// queue refilled with up to twice the first chunk's worth each time it
    /// drains allocates nothing, while an idle queue holds little.
    const KEPT: usize = 2 * F;

    /// Elements held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether no element is held.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element.
    pub(super) fn front(&self) -> Option<&T> {
        let next = || self.middle.front().unwrap_or(&self.back).front();
        self.front.front().or_else(next)
    }

    /// The last element.
    pub(super) fn back(&self) -> Option<&T> {
        self.back.back()
    }

    /// The elements, first to last.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.front.iter().chain(self.middle.iter().flatten()).chain(&self.back)
    }

    /// Appends `value` at the end.
    #[inline]
    pub(super) fn push_back(&mut self, value: T) {
        // The capacity, not a chunk size: a `back` never allocated has none,
        // and `VecDeque::push_back` would grow it.
        if self.back.len() < self.back.capacity() {
            self.back.push_back(value);
        } else {
            self.push_to_new_chunk(value);
        }
        self.len += 1;
    }

    /// Moves a full `back` along (or, in an empty sequence, replaces an
    /// unallocated one) and starts a chunk with `value`.
    #[cold]
    fn push_to_new_chunk(&mut self, value: T) {
        if !self.back.is_empty() {
            self.grown = true;
            let full = mem::take(&mut self.back);
            if self.front.is_empty() && self.middle.is_empty() {
                // The emptied `front`, if allocated, may be the new `back`.
                let emptied = mem::replace(&mut self.front, full);
                self.recycle(emptied);
            } else {
                self.middle.push_back(full);
            }
        }
        self.back = self.empty_chunk(Self::chunk_capacity(self.len + 1));
        self.back.push_back(value);
    }

    /// The capacity of a chunk started when the sequence reaches `len`
    /// elements: `F` doubled until it is at least `len`, at most `C`. When a
    /// chunk is started, the full chunk before it holds at most `len - 1`
    /// elements, so chunks double while a sequence grows from empty.
    fn chunk_capacity(len: usize) -> usize {
        const {
            assert!(F > 0, "a chunk must have room for an element");
            assert!(F <= C, "the first chunk cannot be larger than the largest");
        };
        let mut capacity = F;
        while capacity < len && capacity < C {
            capacity *= 2;
        }
        capacity.min(C)
    }

    /// An empty chunk of at least `capacity` slots: the spare if it is large
    /// enough, else a new one (and a smaller spare, which no later chunk
    /// could use, is freed).
    fn empty_chunk(&mut self, capacity: usize) -> VecDeque<T> {
        match self.spare.take() {
            Some(spare) if spare.capacity() >= capacity => spare,
            _ => {
                #[cfg(test)]
                {
                    self.allocations += 1;
                }
                VecDeque::with_capacity(capacity)
            }
        }
    }

    /// Takes out the first element.
    ///
    /// The inlined part pops from `front`, or from `back` when it is the only
    /// chunk, and does nothing after taking the element, which lets it return
    /// the element without extra copies: moving to the next chunk, and making
    /// the sequence lean before its last element goes, are done before, by
    /// [`Self::prepare_pop`].
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<T> {
        if self.front.is_empty() {
            // A sequence not grown since it was last empty has only `back`
            // (one test). A grown one may have a next chunk to move to, an
            // emptied `front` to free, or its last element to take.
            if self.grown && (!self.middle.is_empty() || self.front.capacity() != 0 || self.len == 1) {
                self.prepare_pop();
            }
            if self.front.is_empty() {
                let value = self.back.pop_front()?;
                self.len -= 1;
                return Some(value);
            }
        }
        let value = self.front.pop_front()?;
        self.len -= 1;
        Some(value)
    }

    /// Before [`Self::pop_front`] pops from an emptied `front` in a grown
    /// sequence: replaces `front` by the next chunk, or if `back` is all
    /// there is, frees it (or keeps it as the spare) rather than hold it
    /// until the next chunk. If one element is left (in `back`), frees all
    /// but one small chunk, which takes the element, so that the pop leaves
    /// the sequence as lean as [`Self::release`] does.
    #[cold]
    fn prepare_pop(&mut self) {
        if self.len != 1 {
            self.refill_front();
            return;
        }
        let last = self.back.pop_front();
        self.release();
        if let Some(last) = last {
            // Into the chunk kept, or if none was small enough, a first-size
            // chunk: the one the next push would have allocated.
            self.push_back(last);
        }
    }

    /// Replaces an emptied `front` by the first chunk of `middle`, if there
    /// is one. Once per chunk's worth of pops: out of the inlined hot path.
    #[cold]
    fn refill_front(&mut self) {
        let next = self.middle.pop_front().unwrap_or_default();
        let emptied = mem::replace(&mut self.front, next);
        self.recycle(emptied);
        if self.middle.is_empty() && self.middle.capacity() > MIDDLE_KEPT {
            self.middle = VecDeque::new();
        }
    }

    /// Keeps an emptied chunk as the spare if it is larger than the spare
    /// (freeing the spare), else frees it.
    fn recycle(&mut self, chunk: VecDeque<T>) {
        debug_assert!(chunk.is_empty());
        if chunk.capacity() > self.spare.as_ref().map_or(0, VecDeque::capacity) {
            self.spare = Some(chunk);
        }
    }

    /// Drops every element and frees every chunk but the largest of at most
    /// [`Self::KEPT`] slots, which stays as `back` (so a queue refilled after
    /// draining to a few messages does not allocate at once), and frees the
    /// deque of chunks.
    #[cold]
    fn release(&mut self) {
        let mut kept = VecDeque::new();
        let ends = [mem::take(&mut self.front), mem::take(&mut self.back)];
        let all = ends.into_iter().chain(self.spare.take()).chain(mem::take(&mut self.middle));
        for chunk in all {
            if chunk.capacity() <= Self::KEPT && chunk.capacity() > kept.capacity() {
                kept = chunk;
            }
        }
        kept.clear();
        self.back = kept;
        self.len = 0;
        self.grown = false;
    }

    /// Drops every element. As when the sequence drains, one small chunk is
    /// kept, if there is one, and the rest is freed.
    pub(super) fn clear(&mut self) {
        self.release();
    }

    /// Takes out every element, first to last. Like `VecDeque::drain(..)`,
    /// the sequence is empty once the iterator is dropped, even if it was not
    /// run to its end.
    pub(super) fn drain(&mut self) -> Drain<'_, T, C, F> {
        Drain { fifo: self }
    }

    /// Chunks, counting `front` even if empty.
    fn chunk_count(&self) -> usize {
        self.middle.len() + 2
    }

    /// Chunk `i` (0 is `front`).
    fn chunk(&self, i: usize) -> Option<&VecDeque<T>> {
        match i.checked_sub(1) {
            None => Some(&self.front),
            Some(m) if m < self.middle.len() => self.middle.get(m),
            Some(m) => (m == self.middle.len()).then_some(&self.back),
        }
    }

    /// Chunk `i` (0 is `front`), mutably.
    fn chunk_mut(&mut self, i: usize) -> Option<&mut VecDeque<T>> {
        match i.checked_sub(1) {
            None => Some(&mut self.front),
            Some(m) if m < self.middle.len() => self.middle.get_mut(m),
            Some(m) => (m == self.middle.len()).then_some(&mut self.back),
        }
    }

    /// Where the element whose key is `key` is, if there is one. The
    /// elements must be in increasing key order.
    ///
    /// A binary search for the chunk (by the key of its last element), then
    /// one within it: O(log n).
    pub(super) fn find_by_key<K: Ord>(&self, key: &K, mut f: impl FnMut(&T) -> K) -> Option<Position> {
        // An empty `front` would break the chunks' order: skip it.
        let (mut low, mut high) = (usize::from(self.front.is_empty()), self.chunk_count());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.chunk(mid)?.back().is_some_and(|last| f(last) < *key) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        let offset = self.chunk(low)?.binary_search_by_key(key, f).ok()?;
        Some(Position { chunk: low, offset })
    }

    /// Takes out the element at `at`, or returns `None` if there is none
    /// there.
    ///
    /// It shifts at most the elements of one chunk, then, if that chunk and a
    /// neighbour now fit in one of the two, moves one into the other (another
    /// chunk's worth at most) to keep the chunks from being left nearly
    /// empty.
    pub(super) fn remove(&mut self, at: Position) -> Option<T> {
        let value = self.chunk_mut(at.chunk)?.remove(at.offset)?;
        self.len -= 1;
        if self.len == 0 {
            self.release();
        } else {
            self.compact(at.chunk);
        }
        Some(value)
    }

    /// Restores the invariants after a removal from chunk `i`.
    fn compact(&mut self, i: usize) {
        let fit = |a: Option<&VecDeque<T>>, b: Option<&VecDeque<T>>| {
            // An empty `front` may have no allocation to take elements into;
            // an emptied chunk is removed below instead.
            let (Some(a), Some(b)) = (a, b) else { return false };
            let len = a.len() + b.len();
            !a.is_empty() && !b.is_empty() && (len <= a.capacity() || len <= b.capacity())
        };
        if self.chunk(i).is_some_and(VecDeque::is_empty) {
            self.remove_empty(i);
        } else if i > 0 && fit(self.chunk(i - 1), self.chunk(i)) {
            self.merge_pair(i - 1);
        } else if fit(self.chunk(i), self.chunk(i + 1)) {
            self.merge_pair(i);
        }
    }

    /// Moves the elements of chunks `i` and `i + 1`, which fit in one of
    /// them, into that one, which becomes chunk `i`, and removes the other.
    fn merge_pair(&mut self, i: usize) {
        let Some(next) = self.chunk_mut(i + 1) else { return };
        let mut next = mem::take(next);
        let Some(chunk) = self.chunk_mut(i) else { return };
        if chunk.len() + next.len() <= chunk.capacity() {
            // Fits in the capacity: `append` does not grow the chunk.
            chunk.append(&mut next);
        } else {
            debug_assert!(chunk.len() + next.len() <= next.capacity());
            // Likewise `push_front` below the capacity.
            while let Some(value) = chunk.pop_back() {
                next.push_front(value);
            }
            mem::swap(chunk, &mut next);
        }
        // `next` is now the emptied chunk: put it back to be removed.
        if let Some(slot) = self.chunk_mut(i + 1) {
            *slot = next;
        }
        self.remove_empty(i + 1);
    }

    /// Takes chunk `i`, just emptied, out of the sequence of chunks, in a
    /// sequence still holding elements. An empty `front` may stay: the next
    /// pop replaces it.
    fn remove_empty(&mut self, i: usize) {
        if i == 0 {
            return;
        }
        let emptied = if i <= self.middle.len() {
            self.middle.remove(i - 1)
        } else if let Some(last) = self.middle.pop_back() {
            Some(mem::replace(&mut self.back, last))
        } else {
            // `front` holds the rest: it becomes `back`.
            let rest = mem::take(&mut self.front);
            Some(mem::replace(&mut self.back, rest))
        };
        if let Some(emptied) = emptied {
            self.recycle(emptied);
        }
    }
}

/// The iterator of [`Segmented::drain`].
pub(super) struct Drain<'a, T, const C: usize, const F: usize> {
    fifo: &'a mut Segmented<T, C, F>,
}

impl<T, const C: usize, const F: usize> Iterator for Drain<'_, T, C, F> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        // Popping, rather than taking the chunks, leaves the sequence with its
        // small chunk, if it has one, to refill: a priority queue drains its
        // tail each time a key falls inside it, then starts a new tail.
        self.fifo.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.fifo.len, Some(self.fifo.len))
    }
}

impl<T, const C: usize, const F: usize> ExactSizeIterator for Drain<'_, T, C, F> {}

impl<T, const C: usize, const F: usize> Drop for Drain<'_, T, C, F> {
    fn drop(&mut self) {
        self.fifo.clear();
    }
}

#[cfg(test)]
mod tests;
