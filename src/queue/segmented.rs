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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether `capacity` is a size a chunk is allocated at.
    fn is_chunk_size<const C: usize, const F: usize>(capacity: usize) -> bool {
        capacity == C || (capacity < C && capacity.is_multiple_of(F) && (capacity / F).is_power_of_two())
    }

    /// Asserts the invariants the type documents.
    fn check<T, const C: usize, const F: usize>(s: &Segmented<T, C, F>) {
        let lens = chunk_lens(s);
        assert_eq!(s.len, lens.iter().sum::<usize>(), "len against the chunks {lens:?}");
        assert_eq!(s.iter().count(), s.len);
        let all = [&s.front, &s.back].into_iter().chain(&s.middle).chain(&s.spare);
        for chunk in all.filter(|c| c.capacity() > 0) {
            let capacity = chunk.capacity();
            assert!(is_chunk_size::<C, F>(capacity), "a chunk of {capacity} slots: grown, or a wrong size");
        }
        let capacities = chunk_capacities(s);
        assert!(capacities.is_sorted(), "chunks smaller than the one before: {capacities:?}");
        assert!(s.spare.as_ref().is_none_or(VecDeque::is_empty), "the spare holds elements");
        assert!(s.middle.iter().all(|c| !c.is_empty()), "an empty chunk in the middle: {lens:?}");
        assert_eq!(s.back.is_empty(), s.len == 0, "an empty back in a sequence not empty");
        let behind_front: Vec<_> = s.middle.iter().chain([&s.back]).collect();
        for pair in behind_front.windows(2) {
            let smaller = pair[0].capacity().min(pair[1].capacity());
            assert!(
                pair[0].len() + pair[1].len() > smaller,
                "two neighbouring chunks would fit in the smaller: {lens:?} in {capacities:?}"
            );
        }
        assert!(s.len > 0 || !s.grown, "an empty sequence marked as holding more than its back chunk");
        if !s.grown {
            assert_eq!(
                (s.front.capacity(), s.middle.capacity(), s.spare.is_some()),
                (0, 0, false),
                "an empty sequence, or one never grown since, holds more than its back chunk"
            );
            assert!(s.back.capacity() <= 2 * F, "an empty sequence keeps a chunk of {}", s.back.capacity());
        }
    }

    /// The lengths of the chunks, first to last, without an empty `front`
    /// (the sequence then has one chunk, `back`).
    fn chunk_lens<T, const C: usize, const F: usize>(s: &Segmented<T, C, F>) -> Vec<usize> {
        let front = (!s.front.is_empty()).then_some(&s.front);
        front.into_iter().chain(&s.middle).chain([&s.back]).map(VecDeque::len).collect()
    }

    /// The capacities of the chunks, as `chunk_lens` lists them.
    fn chunk_capacities<T, const C: usize, const F: usize>(s: &Segmented<T, C, F>) -> Vec<usize> {
        let front = (!s.front.is_empty()).then_some(&s.front);
        front.into_iter().chain(&s.middle).chain([&s.back]).map(VecDeque::capacity).collect()
    }

    /// Chunks holding memory, the spare aside.
    fn held<T, const C: usize, const F: usize>(s: &Segmented<T, C, F>) -> usize {
        [&s.front, &s.back].into_iter().chain(&s.middle).filter(|c| c.capacity() > 0).count()
    }

    /// Heap bytes held: every chunk's slots, the spare's included, and the
    /// deque of chunks.
    fn heap_bytes<T, const C: usize, const F: usize>(s: &Segmented<T, C, F>) -> usize {
        let chunks = [&s.front, &s.back].into_iter().chain(&s.middle).chain(&s.spare);
        let slots: usize = chunks.map(VecDeque::capacity).sum();
        slots * size_of::<T>() + s.middle.capacity() * size_of::<VecDeque<T>>()
    }

    /// A sequence of `0..n`.
    fn filled<const C: usize, const F: usize>(n: u64) -> Segmented<u64, C, F> {
        let mut s = Segmented::default();
        for i in 0..n {
            s.push_back(i);
        }
        s
    }

    fn contents<const C: usize, const F: usize>(s: &Segmented<u64, C, F>) -> Vec<u64> {
        s.iter().copied().collect()
    }

    fn remove_key<const C: usize, const F: usize>(s: &mut Segmented<u64, C, F>, key: u64) -> Option<u64> {
        let at = s.find_by_key(&key, |&v| v)?;
        s.remove(at)
    }

    #[test]
    fn elements_come_out_in_order_across_many_chunk_boundaries() {
        let n = 10 * CHUNK as u64 + 7;
        let mut s: Segmented<u64> = filled(n);
        // 8 + 16 + .. + 256 = 504, then 10 chunks of 512 for the rest.
        assert_eq!(chunk_lens(&s).len(), 6 + 10);
        assert_eq!((s.len(), s.front(), s.back()), (n as usize, Some(&0), Some(&(n - 1))));
        check(&s);
        // Interleaved pushes and pops: one pop in three is a push.
        let mut expected = 0..;
        let mut next = n;
        for i in 0..2 * n {
            if i % 3 == 0 {
                s.push_back(next);
                next += 1;
            } else {
                assert_eq!(s.pop_front(), expected.next());
            }
            assert_eq!(s.len() as u64, next - expected.start);
        }
        check(&s);
        let rest: Vec<u64> = std::iter::from_fn(|| s.pop_front()).collect();
        assert_eq!(rest, (expected.start..next).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.pop_front(), None);
        assert_eq!((s.front(), s.back()), (None, None));
        check(&s);
    }

    #[test]
    fn chunks_double_from_the_first_size_up_to_the_largest() {
        let s = filled::<64, 4>(300);
        assert_eq!(chunk_capacities(&s), [4, 8, 16, 32, 64, 64, 64, 64]);
        assert_eq!(chunk_lens(&s), [4, 8, 16, 32, 64, 64, 64, 48]);
        assert_eq!(s.allocations, 8);
        check(&s);
        // First and largest sizes that are not powers of two.
        assert_eq!(chunk_capacities(&filled::<20, 3>(60)), [3, 6, 12, 20, 20]);
        let s: Segmented<u64> = filled(2_000);
        assert_eq!(&chunk_capacities(&s)[..8], [8, 16, 32, 64, 128, 256, 512, 512]);
        assert_eq!(chunk_capacities(&s).len(), 6 + 3);
        // A queue of a few messages holds the first chunk only.
        let few: Segmented<u64> = filled(3);
        assert_eq!((few.allocations, heap_bytes(&few)), (1, FIRST * 8));
    }

    #[test]
    fn a_queue_below_one_chunk_reuses_its_chunk_as_a_ring() {
        let mut s = Segmented::<u64, 16, 4>::default();
        for i in 0..1_000 {
            s.push_back(i);
            s.push_back(i);
            s.pop_front();
            s.pop_front();
        }
        assert!(s.is_empty());
        assert_eq!((s.allocations, held(&s)), (1, 1));
        check(&s);
    }

    #[test]
    fn a_queue_crossing_a_chunk_boundary_reuses_the_spare_chunk() {
        let mut s = filled::<4, 4>(4);
        assert_eq!(s.allocations, 1);
        // Between 4 and 5 elements: a new chunk each time the front one
        // empties, every fourth pop.
        for i in 4..1_004 {
            s.push_back(i);
            assert_eq!(s.pop_front(), Some(i - 4));
            check(&s);
        }
        assert_eq!(s.allocations, 2, "the emptied chunk must be reused, not freed and allocated again");
        assert_eq!(contents(&s), [1_000, 1_001, 1_002, 1_003]);
    }

    /// Pushes and pops at a steady length for a while, then checks that
    /// going on allocates nothing.
    fn steady<const C: usize, const F: usize>() {
        for depth in 1..3 * C as u64 {
            for pop_first in [false, true] {
                let mut s = filled::<C, F>(depth);
                let mut next = depth;
                let mut step = |s: &mut Segmented<u64, C, F>| {
                    if pop_first {
                        s.pop_front();
                    }
                    s.push_back(next);
                    next += 1;
                    if !pop_first {
                        s.pop_front();
                    }
                };
                // Long enough for every chunk of the filled sequence to
                // have been emptied and replaced.
                for _ in 0..depth + 2 * C as u64 {
                    step(&mut s);
                }
                let (warmed, chunks) = (s.allocations, chunk_capacities(&s));
                for _ in 0..4 * C {
                    step(&mut s);
                    check(&s);
                }
                assert_eq!(s.allocations, warmed, "length {depth}, popping first: {pop_first}, {chunks:?}");
                assert_eq!(s.len() as u64, depth);
            }
        }
    }

    #[test]
    fn a_queue_of_steady_length_allocates_nothing_once_its_chunks_exist() {
        steady::<4, 4>();
        steady::<16, 2>();
        steady::<12, 3>();
        steady::<64, 8>();
    }

    #[test]
    fn a_steady_queue_keeps_chunks_sized_for_its_length() {
        // About 20 elements in chunks from 8: never the largest chunk.
        let mut s = filled::<512, 8>(20);
        for i in 20..10_000 {
            s.push_back(i);
            s.pop_front();
        }
        assert!(chunk_capacities(&s).iter().all(|&c| c <= 32), "{:?}", chunk_capacities(&s));
        // The 32 that holds it now, the 16 before it as the spare, and a
        // deque of chunks that held one once.
        let bound = (16 + 32) * 8 + 4 * size_of::<VecDeque<u64>>();
        assert!(heap_bytes(&s) <= bound, "{} bytes", heap_bytes(&s));
        check(&s);
    }

    #[test]
    fn a_drained_queue_keeps_one_small_chunk_at_most() {
        // (elements held before draining, slots kept after)
        // From 58 on, the chunks are 8, 16, 32, 64 and more, and when one
        // element is left the chunks held are the last one and the spare,
        // the one before it, both of 32 or more: too large to keep, so the
        // last element moves to a new chunk of the first size.
        let kept = [(1, 8), (8, 8), (9, 16), (24, 16), (25, 16), (57, 16), (58, 8), (5_000, 8)];
        for (n, kept) in kept {
            let mut s: Segmented<u64> = filled(n);
            while s.pop_front().is_some() {}
            assert_eq!((held(&s), s.back.capacity()), (1, kept), "after {n}");
            assert_eq!(heap_bytes(&s), kept * 8, "after {n}");
            check(&s);
        }
        // Grown while popping: the chunks came and went.
        let mut s = Segmented::<u64>::default();
        for i in 0..100_000 {
            s.push_back(i);
            s.push_back(i);
            s.pop_front();
        }
        while s.pop_front().is_some() {}
        assert_eq!(heap_bytes(&s), 8 * 8);
        // Emptied by removals (with no last element to move, nothing is
        // kept), by clear and by drain.
        let mut s: Segmented<u64> = filled(3_000);
        for key in (0..3_000).rev() {
            assert_eq!(remove_key(&mut s, key), Some(key));
        }
        assert_eq!(heap_bytes(&s), 0);
        check(&s);
        let mut s: Segmented<u64> = filled(20);
        s.clear();
        assert_eq!(heap_bytes(&s), 16 * 8);
        check(&s);
        let mut s: Segmented<u64> = filled(3_000);
        s.drain().take(10).for_each(drop);
        assert_eq!(heap_bytes(&s), 16 * 8, "the chunk of 16 after the first one emptied");
        check(&s);
    }

    /// Fills `s` up to `top` elements and pops it down to `bottom`, five
    /// times: for each time, the chunks allocated, then the heap bytes held
    /// at `top` and at `bottom`.
    fn cycles(s: &mut Segmented<u64>, top: usize, bottom: usize) -> Vec<(usize, usize, usize)> {
        let mut next = 0;
        let mut per_cycle = Vec::new();
        for _ in 0..5 {
            let before = s.allocations;
            while s.len() < top {
                s.push_back(next);
                next += 1;
            }
            let full = heap_bytes(s);
            while s.len() > bottom {
                s.pop_front();
            }
            check(s);
            per_cycle.push((s.allocations - before, full, heap_bytes(s)));
        }
        per_cycle
    }

    #[test]
    fn a_queue_filled_and_drained_again_and_again_reuses_and_holds_no_more_each_time() {
        // 20 elements: chunks of 8 and 16. The 16 is kept when drained and
        // takes the first 16 elements of the next filling, then a 32.
        let mut s = Segmented::<u64>::default();
        let small = cycles(&mut s, 20, 0);
        assert_eq!(small[0], (2, (8 + 16) * 8, 16 * 8));
        assert!(small[1..].iter().all(|&c| c == (1, (16 + 32) * 8, 16 * 8)), "{small:?}");
        // 3,000: chunks of 8 to 256, then 5 of 512, all freed when drained
        // but a new 8 for the last element, which the next filling starts
        // with.
        let mut s = Segmented::<u64>::default();
        let large = cycles(&mut s, 3_000, 0);
        assert_eq!((large[0].0, large[0].2), (6 + 5 + 1, 8 * 8));
        assert!(large[1..].iter().all(|&c| c == (6 + 5, large[0].1, 8 * 8)), "{large:?}");
        // Between 3,000 and 1, never empty: the chunks stay at 512, and at
        // the bottom only the last one and the spare are held (and the deque
        // of chunks).
        let mut s = Segmented::<u64>::default();
        let never_empty = cycles(&mut s, 3_000, 1);
        assert!(never_empty[1..].iter().all(|&c| c == never_empty[1]), "{never_empty:?}");
        let (allocated, top, bottom) = never_empty[1];
        assert!(allocated <= 3_000 / 512, "{never_empty:?}");
        assert!(top <= large[0].1 + 2 * 512 * 8, "{never_empty:?}");
        assert!(bottom <= 2 * 512 * 8 + s.middle.capacity() * size_of::<VecDeque<u64>>(), "{never_empty:?}");
    }

    #[test]
    fn a_long_queue_popped_down_to_a_few_frees_its_deque_of_chunks() {
        let mut s = filled::<4, 1>(1_000);
        assert!(s.middle.capacity() >= 1_000 / 4 - 2);
        while s.len() > 3 {
            s.pop_front();
        }
        assert_eq!(s.middle.capacity(), 0);
        check(&s);
        // Between 3 and 40 elements, about 10 chunks: the deque is kept.
        let mut next = 1_000;
        for _ in 0..20 {
            while s.len() < 40 {
                s.push_back(next);
                next += 1;
            }
            while s.len() > 3 {
                s.pop_front();
            }
            assert!((1..=MIDDLE_KEPT).contains(&s.middle.capacity()), "{}", s.middle.capacity());
        }
    }

    #[test]
    fn removing_from_the_first_middle_and_last_chunks() {
        // Chunks of 4: [0 1 2 3] [4 5 6 7] [8 9 10 11] [12 13]
        let mut s = filled::<4, 4>(14);
        assert_eq!(remove_key(&mut s, 1), Some(1));
        assert_eq!(chunk_lens(&s), [3, 4, 4, 2]);
        assert_eq!(remove_key(&mut s, 13), Some(13));
        assert_eq!(chunk_lens(&s), [3, 4, 4, 1]);
        assert_eq!(remove_key(&mut s, 6), Some(6));
        assert_eq!(chunk_lens(&s), [3, 3, 4, 1]);
        assert_eq!(contents(&s), [0, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]);
        assert_eq!(remove_key(&mut s, 6), None, "already removed");
        assert_eq!(remove_key(&mut s, 14), None, "never there");
        assert_eq!(s.len(), 11);
        check(&s);
    }

    #[test]
    fn an_emptied_middle_chunk_is_removed() {
        let mut s = filled::<4, 4>(12);
        // Neighbours of 4 cannot take the middle chunk's elements in.
        for key in [4, 6, 5] {
            remove_key(&mut s, key);
            assert_eq!(chunk_lens(&s).len(), 3);
        }
        assert_eq!(remove_key(&mut s, 7), Some(7));
        assert_eq!(chunk_lens(&s), [4, 4]);
        assert_eq!(contents(&s), [0, 1, 2, 3, 8, 9, 10, 11]);
        assert!(s.spare.is_some(), "the removed chunk becomes the spare");
        check(&s);
    }

    #[test]
    fn a_middle_chunk_that_fits_beside_a_neighbour_is_merged_into_it() {
        let mut s = filled::<4, 4>(16);
        for key in [5, 6, 9, 10] {
            remove_key(&mut s, key);
        }
        // [0 1 2 3] [4 7] [8 11] [12..16] would break the pair rule: merged.
        assert_eq!(chunk_lens(&s), [4, 4, 4]);
        assert_eq!(contents(&s), [0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 14, 15]);
        check(&s);
        // The merged chunk is still in order for searching.
        assert_eq!(remove_key(&mut s, 11), Some(11));
        assert_eq!(remove_key(&mut s, 8), Some(8));
        check(&s);
    }

    #[test]
    fn a_chunk_is_merged_into_a_larger_one_after_it() {
        // Chunks of 2, 4 and 8: [0 1] [2 3 4 5] [6 .. 13]
        let mut s = filled::<8, 2>(14);
        assert_eq!((chunk_lens(&s), chunk_capacities(&s)), (vec![2, 4, 8], vec![2, 4, 8]));
        assert_eq!(remove_key(&mut s, 3), Some(3));
        assert_eq!(chunk_lens(&s), [2, 3, 8]);
        // 2 + 2 fit in the second chunk, not in the first: the first moves.
        assert_eq!(remove_key(&mut s, 2), Some(2));
        assert_eq!((chunk_lens(&s), chunk_capacities(&s)), (vec![4, 8], vec![4, 8]));
        assert_eq!(s.spare.as_ref().map(VecDeque::capacity), Some(2), "the emptied chunk is the spare");
        check(&s);
        // The last chunk, down to 4, can take the 4 before it.
        for key in 6..10 {
            remove_key(&mut s, key);
        }
        assert_eq!((chunk_lens(&s), chunk_capacities(&s)), (vec![8], vec![8]));
        assert_eq!(contents(&s), [0, 1, 4, 5, 10, 11, 12, 13]);
        assert_eq!(s.spare.as_ref().map(VecDeque::capacity), Some(4), "the larger emptied chunk");
        check(&s);
        assert_eq!(s.pop_front(), Some(0));
        assert_eq!(remove_key(&mut s, 13), Some(13));
        check(&s);
    }

    #[test]
    fn find_by_key_searches_across_chunks() {
        // Even keys 0, 2, .. 38 in chunks of 4.
        let mut s = Segmented::<u64, 4, 4>::default();
        for k in (0..40).step_by(2) {
            s.push_back(k);
        }
        for k in 0..40 {
            let found = s.find_by_key(&k, |&v| v);
            if k % 2 == 0 {
                let i = (k / 2) as usize;
                assert_eq!(found, Some(Position { chunk: i / 4, offset: i % 4 }), "key {k}");
            } else {
                assert_eq!(found, None, "key {k}");
            }
        }
        assert_eq!(s.find_by_key(&40, |&v| v), None);
        // After pops the first chunk is partly consumed.
        s.pop_front();
        assert_eq!(s.find_by_key(&0, |&v| v), None);
        assert_eq!(s.find_by_key(&2, |&v| v), Some(Position { chunk: 0, offset: 0 }));
        assert_eq!(s.find_by_key(&8, |&v| v), Some(Position { chunk: 1, offset: 0 }));
        assert_eq!(Segmented::<u64, 4, 4>::default().find_by_key(&0, |&v| v), None);
        // Chunks of 1, 2, 4, 8, 8: keys 0..23.
        let s = filled::<8, 1>(23);
        let starts = [0, 1, 3, 7, 15];
        for k in 0..23 {
            let chunk = starts.iter().rposition(|&start| start <= k).unwrap();
            let offset = (k - starts[chunk]) as usize;
            assert_eq!(s.find_by_key(&k, |&v| v), Some(Position { chunk, offset }), "key {k}");
        }
    }

    #[test]
    fn drain_takes_everything_in_order_and_leaves_a_small_chunk() {
        let mut s = filled::<16, 4>(10);
        let drained = s.drain();
        assert_eq!(drained.len(), 10);
        assert_eq!(drained.collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!((held(&s), s.back.capacity()), (1, 8));
        check(&s);
        s.push_back(10);
        assert_eq!(contents(&s), [10]);
    }

    #[test]
    fn a_drain_dropped_early_still_empties() {
        let mut s = filled::<4, 4>(10);
        assert_eq!(s.drain().take(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((s.len(), s.front()), (0, None));
        check(&s);
    }

    #[test]
    fn clear_drops_everything_and_keeps_one_small_chunk() {
        let mut s = filled::<4, 4>(10);
        for _ in 0..5 {
            s.pop_front();
        }
        assert!(s.spare.is_some());
        s.clear();
        assert_eq!((s.len(), s.front(), s.back()), (0, None, None));
        assert_eq!((held(&s), s.spare.is_some()), (1, false));
        check(&s);
        for i in 0..4 {
            s.push_back(i);
        }
        assert_eq!(s.allocations, 3, "the kept chunk takes the first chunk's worth");
        assert_eq!(contents(&s), [0, 1, 2, 3]);
    }

    #[test]
    fn clearing_an_empty_sequence_does_nothing() {
        let mut s = Segmented::<u64, 4, 4>::default();
        s.clear();
        assert!(s.is_empty() && held(&s) == 0);
        s.push_back(1);
        assert_eq!((s.len(), s.back()), (1, Some(&1)));
    }

    #[test]
    fn debug_lists_the_elements() {
        assert_eq!(format!("{:?}", filled::<2, 1>(5)), "[0, 1, 2, 3, 4]");
    }

    /// An operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        /// Push the next key, this much above the last.
        Push(u64),
        PopFront,
        /// Remove a key: an index into the keys pushed so far.
        Remove(usize),
        Clear,
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (1..4u64).prop_map(Op::Push),
            6 => Just(Op::PopFront),
            4 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::Clear),
            1 => Just(Op::Drain),
        ]
    }

    /// Runs `ops` on a `Segmented` and on a plain `VecDeque`, comparing them
    /// after each.
    fn against_model<const C: usize, const F: usize>(ops: &[Op]) {
        let mut s = Segmented::<u64, C, F>::default();
        let mut model = VecDeque::new();
        let mut next = 0;
        for op in ops {
            match *op {
                Op::Push(gap) => {
                    next += gap;
                    s.push_back(next);
                    model.push_back(next);
                }
                Op::PopFront => assert_eq!(s.pop_front(), model.pop_front()),
                Op::Remove(pick) => {
                    // Keys present and absent alike.
                    let key = pick as u64 % (next + 2);
                    let expected = model.binary_search(&key).ok().and_then(|i| model.remove(i));
                    assert_eq!(remove_key(&mut s, key), expected, "removing {key}");
                }
                Op::Clear => {
                    s.clear();
                    model.clear();
                }
                Op::Drain => {
                    assert!(s.drain().eq(model.drain(..)));
                }
            }
            assert_eq!((s.len(), s.is_empty()), (model.len(), model.is_empty()));
            assert_eq!((s.front(), s.back()), (model.front(), model.back()));
            check(&s);
        }
        assert!(s.iter().eq(model.iter()));
    }

    proptest! {
        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_1_to_16(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<16, 1>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_2_to_8(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<8, 2>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_3_to_7(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<7, 3>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_4(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<4, 4>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_1(ops in prop::collection::vec(op(), 0..200)) {
            against_model::<1, 1>(&ops);
        }
    }
}
