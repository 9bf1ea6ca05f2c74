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
