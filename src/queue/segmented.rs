//! A first-in first-out sequence kept in fixed-size chunks: the ready
//! store's tail.
//!
//! A single growing `VecDeque` doubles its buffer whenever it is full and
//! copies every element across: filling a queue with a million messages
//! copies them again and again, leaves up to half the buffer unused, and
//! during a copy holds the old buffer too. Here elements live in chunks of
//! [`CHUNK`] slots, each allocated once at its full size and never grown, so a
//! growing queue never moves an element and leaves unused at most the end of
//! its last chunk.

use std::collections::VecDeque;
use std::fmt;
use std::mem;

/// Slots per chunk.
///
/// Speed hardly depends on it from 64 up (a chunk change is one operation in
/// `CHUNK`). What sets it: growing allocates one chunk per `CHUNK` messages,
/// and at 512 that is no more often than a `VecDeque` doubles in the
/// publish-path allocation test (at 256 it is over that test's budget),
/// while a chunk (20 KiB of 40-byte `QueuedMessage`s) is what a queue that
/// ever held a message keeps, so it should be no larger than needed.
pub(super) const CHUNK: usize = 512;

/// A FIFO of elements in chunks of `C` slots.
///
/// The chunks are `front`, then `middle`'s, then `back`. Pushes go to `back`
/// and pops come from `front`, both held here rather than behind the deque
/// of chunks, so the hot paths reach their chunk with no extra indirection.
/// A sequence in one chunk keeps it as `back` and pops from it while `front`
/// and `middle` are empty. An emptied `front` is replaced by the next chunk
/// only at the next pop, so a pop does no work after taking its element,
/// which lets it return the element without extra copies.
///
/// It holds these invariants (checked by the tests' `check`):
/// - every allocated chunk has a capacity of exactly `C`: allocated once,
///   never grown, so no element is ever copied to make room;
/// - `back` is empty only if the whole sequence is; no chunk in `middle` is
///   empty (`front` may be);
/// - two neighbouring chunks, `front` aside, hold more than `C` elements
///   together. Removals ([`Self::remove`]) could otherwise leave many nearly
///   empty chunks; with it the chunks hold at most about twice the elements,
///   like a `VecDeque` just after a doubling. `front` is exempt because
///   `pop_front` empties it one element at a time.
///
/// Emptied chunks are kept for reuse, up to three: `back`, `front` until the
/// next pop replaces it, and one spare. So a queue whose length stays about
/// the same reuses its chunks instead of freeing one and allocating one each
/// time it crosses a chunk boundary, and a drained queue keeps at most three
/// chunks (a `VecDeque` keeps all the capacity it grew to).
pub(super) struct Segmented<T, const C: usize = CHUNK> {
    /// The chunk `pop_front` takes from, once there are two or more.
    front: VecDeque<T>,
    /// The chunks between `front` and `back`. This deque of chunks still
    /// grows by doubling and copying, but it holds one 32-byte chunk header
    /// per `C` elements (2,000 headers, 64 KiB, for a million messages): what
    /// it copies is a small fraction of what a single deque of elements
    /// would.
    middle: VecDeque<VecDeque<T>>,
    /// The chunk `push_back` fills.
    back: VecDeque<T>,
    /// An emptied chunk kept for the next `push_back` that needs a chunk, so a
    /// queue longer than two chunks does not free a chunk each time it
    /// finishes one and allocate one each time it starts one.
    spare: Option<VecDeque<T>>,
    /// Elements held, kept so `len` need not walk the chunks.
    len: usize,
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

impl<T, const C: usize> Default for Segmented<T, C> {
    fn default() -> Self {
        Self {
            front: VecDeque::new(),
            middle: VecDeque::new(),
            back: VecDeque::new(),
            spare: None,
            len: 0,
            #[cfg(test)]
            allocations: 0,
        }
    }
}

impl<T: fmt::Debug, const C: usize> fmt::Debug for Segmented<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T, const C: usize> Segmented<T, C> {
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
        // The capacity, not `C`: a `back` never allocated has none, and
        // `VecDeque::push_back` would grow it.
        if self.back.len() < self.back.capacity() {
            self.back.push_back(value);
        } else {
            self.push_to_new_chunk(value);
        }
        self.len += 1;
    }

    /// Moves a full `back` along and starts a chunk with `value`.
    #[cold]
    fn push_to_new_chunk(&mut self, value: T) {
        if !self.back.is_empty() {
            if self.front.is_empty() && self.middle.is_empty() {
                // The emptied `front`, if allocated, becomes the new `back`.
                mem::swap(&mut self.front, &mut self.back);
            } else {
                let full = mem::take(&mut self.back);
                self.middle.push_back(full);
            }
        }
        if self.back.capacity() != C {
            self.back = self.empty_chunk();
        }
        self.back.push_back(value);
    }

    /// An empty chunk: the spare if there is one, else a new one.
    fn empty_chunk(&mut self) -> VecDeque<T> {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        const { assert!(C > 0, "a chunk must have room for an element") };
        #[cfg(test)]
        {
            self.allocations += 1;
        }
        VecDeque::with_capacity(C)
    }

    /// Takes out the first element.
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<T> {
        if self.front.is_empty() {
            if self.middle.is_empty() {
                let value = self.back.pop_front()?;
                self.len -= 1;
                return Some(value);
            }
            self.refill_front();
        }
        let value = self.front.pop_front()?;
        self.len -= 1;
        Some(value)
    }

    /// Replaces an emptied `front` by the first chunk of `middle`. Once per
    /// `C` pops: out of the inlined hot path.
    #[cold]
    fn refill_front(&mut self) {
        let next = self.middle.pop_front().unwrap_or_default();
        let emptied = mem::replace(&mut self.front, next);
        self.recycle(emptied);
    }

    /// Keeps an emptied chunk as the spare if there is none.
    fn recycle(&mut self, chunk: VecDeque<T>) {
        debug_assert!(chunk.is_empty());
        if self.spare.is_none() && chunk.capacity() == C {
            self.spare = Some(chunk);
        }
    }

    /// Drops every element. One chunk is kept, as `VecDeque::clear` keeps its
    /// buffer, so that refilling a purged queue does not allocate at once.
    pub(super) fn clear(&mut self) {
        self.front = VecDeque::new();
        self.middle = VecDeque::new();
        self.back.clear();
        self.spare = None;
        self.len = 0;
    }

    /// Takes out every element, first to last. Like `VecDeque::drain(..)`,
    /// the sequence is empty once the iterator is dropped, even if it was not
    /// run to its end.
    pub(super) fn drain(&mut self) -> Drain<'_, T, C> {
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
    /// neighbour now fit in one, moves one into the other (another chunk's
    /// worth at most) to keep the chunks from being left nearly empty.
    pub(super) fn remove(&mut self, at: Position) -> Option<T> {
        let value = self.chunk_mut(at.chunk)?.remove(at.offset)?;
        self.len -= 1;
        self.compact(at.chunk);
        Some(value)
    }

    /// Restores the invariants after a removal from chunk `i`.
    fn compact(&mut self, i: usize) {
        let len = self.chunk(i).map_or(0, VecDeque::len);
        // An empty `front` may have no allocation to take elements into.
        let fits = |c: Option<&VecDeque<T>>| c.is_some_and(|c| !c.is_empty() && c.len() + len <= C);
        if len == 0 {
            self.remove_empty(i);
        } else if i > 0 && fits(self.chunk(i - 1)) {
            self.merge_next_into(i - 1);
        } else if fits(self.chunk(i + 1)) {
            self.merge_next_into(i);
        }
    }

    /// Moves the elements of chunk `i + 1` to the end of chunk `i`, which has
    /// room for them all, and removes the emptied chunk.
    fn merge_next_into(&mut self, i: usize) {
        let Some(next) = self.chunk_mut(i + 1) else { return };
        let mut next = mem::take(next);
        if let Some(chunk) = self.chunk_mut(i) {
            // Fits in the capacity: `append` does not grow the chunk.
            debug_assert!(chunk.len() + next.len() <= chunk.capacity());
            chunk.append(&mut next);
        }
        if let Some(slot) = self.chunk_mut(i + 1) {
            *slot = next;
        }
        self.remove_empty(i + 1);
    }

    /// Takes chunk `i`, just emptied, out of the sequence of chunks. An empty
    /// `front` may stay: the next pop replaces it.
    fn remove_empty(&mut self, i: usize) {
        if i == 0 {
            return;
        }
        if i <= self.middle.len() {
            if let Some(emptied) = self.middle.remove(i - 1) {
                self.recycle(emptied);
            }
        } else if let Some(last) = self.middle.pop_back() {
            let emptied = mem::replace(&mut self.back, last);
            self.recycle(emptied);
        } else {
            // `front` holds the rest, if anything: it becomes `back`, and
            // the emptied `back` the (empty) `front`.
            mem::swap(&mut self.front, &mut self.back);
        }
    }
}

/// The iterator of [`Segmented::drain`].
pub(super) struct Drain<'a, T, const C: usize> {
    fifo: &'a mut Segmented<T, C>,
}

impl<T, const C: usize> Iterator for Drain<'_, T, C> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        // Popping, rather than taking the chunks, leaves the sequence with a
        // chunk to refill: a priority queue drains its tail each time a key
        // falls inside it, then starts a new tail.
        self.fifo.pop_front()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.fifo.len, Some(self.fifo.len))
    }
}

impl<T, const C: usize> ExactSizeIterator for Drain<'_, T, C> {}

impl<T, const C: usize> Drop for Drain<'_, T, C> {
    fn drop(&mut self) {
        self.fifo.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Asserts the invariants the type documents.
    fn check<T, const C: usize>(s: &Segmented<T, C>) {
        let lens = chunk_lens(s);
        assert_eq!(s.len, lens.iter().sum::<usize>(), "len against the chunks {lens:?}");
        assert_eq!(s.iter().count(), s.len);
        let all = [&s.front, &s.back].into_iter().chain(&s.middle).chain(&s.spare);
        for chunk in all.filter(|c| c.capacity() > 0) {
            assert_eq!(chunk.capacity(), C, "a chunk grew or was allocated at the wrong size");
        }
        assert!(s.spare.as_ref().is_none_or(VecDeque::is_empty), "the spare holds elements");
        assert!(s.middle.iter().all(|c| !c.is_empty()), "an empty chunk in the middle: {lens:?}");
        assert_eq!(s.back.is_empty(), s.len == 0, "an empty back in a sequence not empty");
        let behind_front: Vec<usize> = s.middle.iter().chain([&s.back]).map(VecDeque::len).collect();
        for pair in behind_front.windows(2) {
            assert!(pair[0] + pair[1] > C, "two neighbouring chunks would fit in one: {lens:?}");
        }
    }

    /// The lengths of the chunks, first to last, without an empty `front`
    /// (the sequence then has one chunk, `back`).
    fn chunk_lens<T, const C: usize>(s: &Segmented<T, C>) -> Vec<usize> {
        let front = (!s.front.is_empty()).then_some(&s.front);
        front.into_iter().chain(&s.middle).chain([&s.back]).map(VecDeque::len).collect()
    }

    /// Chunks holding memory, the spare aside.
    fn held<T, const C: usize>(s: &Segmented<T, C>) -> usize {
        [&s.front, &s.back].into_iter().chain(&s.middle).filter(|c| c.capacity() > 0).count()
    }

    /// A sequence of `0..n`.
    fn filled<const C: usize>(n: u64) -> Segmented<u64, C> {
        let mut s = Segmented::default();
        for i in 0..n {
            s.push_back(i);
        }
        s
    }

    fn contents<const C: usize>(s: &Segmented<u64, C>) -> Vec<u64> {
        s.iter().copied().collect()
    }

    fn remove_key<const C: usize>(s: &mut Segmented<u64, C>, key: u64) -> Option<u64> {
        let at = s.find_by_key(&key, |&v| v)?;
        s.remove(at)
    }

    #[test]
    fn elements_come_out_in_order_across_many_chunk_boundaries() {
        let n = 10 * CHUNK as u64 + 7;
        let mut s: Segmented<u64> = filled(n);
        assert_eq!(chunk_lens(&s).len(), 11);
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
    fn a_queue_below_one_chunk_reuses_its_chunk_as_a_ring() {
        let mut s = Segmented::<u64, 4>::default();
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
        let mut s = filled::<4>(4);
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

    #[test]
    fn a_queue_of_steady_length_allocates_nothing_once_its_chunks_exist() {
        for depth in 1..20 {
            for pop_first in [false, true] {
                let mut s = filled::<4>(depth);
                let mut next = depth;
                let mut step = |s: &mut Segmented<u64, 4>| {
                    if pop_first {
                        s.pop_front();
                    }
                    s.push_back(next);
                    next += 1;
                    if !pop_first {
                        s.pop_front();
                    }
                };
                for _ in 0..8 {
                    step(&mut s);
                }
                let warmed = s.allocations;
                for _ in 0..100 {
                    step(&mut s);
                    check(&s);
                }
                assert_eq!(s.allocations, warmed, "length {depth}, popping first: {pop_first}");
            }
        }
    }

    #[test]
    fn a_drained_queue_keeps_three_chunks_at_most_and_refills_them() {
        let mut s = filled::<4>(13);
        assert_eq!(s.allocations, 4);
        while s.pop_front().is_some() {
            check(&s);
        }
        assert_eq!(held(&s) + usize::from(s.spare.is_some()), 3);
        for i in 0..12 {
            s.push_back(i);
        }
        assert_eq!(s.allocations, 4, "refilling must reuse the kept chunks");
        assert_eq!(contents(&s), (0..12).collect::<Vec<_>>());
        check(&s);
    }

    #[test]
    fn removing_from_the_first_middle_and_last_chunks() {
        // Chunks of 4: [0 1 2 3] [4 5 6 7] [8 9 10 11] [12 13]
        let mut s = filled::<4>(14);
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
        let mut s = filled::<4>(12);
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
        let mut s = filled::<4>(16);
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
    fn find_by_key_searches_across_chunks() {
        // Even keys 0, 2, .. 38 in chunks of 4.
        let mut s = Segmented::<u64, 4>::default();
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
        assert_eq!(Segmented::<u64, 4>::default().find_by_key(&0, |&v| v), None);
    }

    #[test]
    fn drain_takes_everything_in_order_and_leaves_a_chunk() {
        let mut s = filled::<4>(10);
        let drained = s.drain();
        assert_eq!(drained.len(), 10);
        assert_eq!(drained.collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(held(&s), 1);
        check(&s);
        s.push_back(10);
        assert_eq!(contents(&s), [10]);
    }

    #[test]
    fn a_drain_dropped_early_still_empties() {
        let mut s = filled::<4>(10);
        assert_eq!(s.drain().take(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((s.len(), s.front()), (0, None));
        check(&s);
    }

    #[test]
    fn clear_drops_everything_and_keeps_one_chunk() {
        let mut s = filled::<4>(10);
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
        let mut s = Segmented::<u64, 4>::default();
        s.clear();
        assert!(s.is_empty() && held(&s) == 0);
        s.push_back(1);
        assert_eq!((s.len(), s.back()), (1, Some(&1)));
    }

    #[test]
    fn debug_lists_the_elements() {
        assert_eq!(format!("{:?}", filled::<2>(5)), "[0, 1, 2, 3, 4]");
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
    fn against_model<const C: usize>(ops: &[Op]) {
        let mut s = Segmented::<u64, C>::default();
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
        fn behaves_as_a_vecdeque_in_chunks_of_4(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<4>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_1(ops in prop::collection::vec(op(), 0..200)) {
            against_model::<1>(&ops);
        }

        #[test]
        fn behaves_as_a_vecdeque_in_chunks_of_7(ops in prop::collection::vec(op(), 0..400)) {
            against_model::<7>(&ops);
        }
    }
}
