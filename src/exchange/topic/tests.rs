use proptest::prelude::*;

use super::*;

/// The destinations matched by `key`, sorted and deduplicated.
fn routes(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
    let mut out = Vec::new();
    trie.for_each_match(key, |d| out.push(*d));
    out.sort_unstable();
    out.dedup();
    out
}

/// The child of `node` (a node of `trie`) through the literal edge `word`.
fn literal_child<'t>(trie: &TopicTrie<u32>, node: &'t Node<u32>, word: &str) -> Option<&'t Node<u32>> {
    let (_, key) = pack_first(word.as_bytes());
    node.words.get(&Probe::packed(trie.seed, word.as_bytes(), key))
}

/// Whether a trie holding only `pattern` routes `key`.
fn matches(pattern: &str, key: &str) -> bool {
    let mut trie = TopicTrie::new();
    trie.insert(pattern, 1);
    let hit = !routes(&trie, key).is_empty();
    assert_eq!(hit, reference(pattern, key), "reference disagrees on {pattern:?} / {key:?}");
    hit
}

/// A plain backtracking matcher over words, written for obviousness.
fn reference(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
        }
    }
    /// Zero words for the empty string, as the empty key has none.
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() { Vec::new() } else { s.split('.').collect() }
    }
    go(&words(pattern), &words(key))
}

#[test]
fn key_and_pattern_words_keep_empty_words() {
    let words = |s| key_words(s).map(|(w, _)| std::str::from_utf8(w).unwrap()).collect::<Vec<_>>();
    assert!(words("").is_empty());
    assert_eq!(words("a..b"), ["a", "", "b"]);
    assert_eq!(words(".a"), ["", "a"]);
    assert_eq!(words("a."), ["a", ""]);
    assert_eq!(words("."), ["", ""]);
    let pwords = |s| pattern_words(s).map(|(w, _)| std::str::from_utf8(w).unwrap()).collect::<Vec<_>>();
    assert_eq!(pwords("#.#"), ["#"]);
    assert_eq!(pwords("a.#.#.b.#"), ["a", "#", "b", "#"]);
    assert_eq!(pwords("#..#"), ["#", "", "#"]);
}

#[test]
fn empty_words_are_real_words() {
    assert!(matches("a..b", "a..b"));
    assert!(!matches("a..b", "a.b"));
    assert!(matches("a.*.b", "a..b"));
    assert!(matches(".a", ".a"));
    assert!(!matches(".a", "a"));
    assert!(matches("a.", "a."));
    assert!(!matches("a.", "a"));
    assert!(matches("*.*", "."));
    assert!(!matches("*", "."));
    assert!(matches(".", "."));
    assert!(matches("#", "."));
    assert!(matches("a.#", "a."));
}

#[test]
fn star_matches_exactly_one_possibly_empty_word() {
    assert!(matches("a.*", "a."));
    assert!(matches("a.*", "a.b"));
    assert!(!matches("a.*", "a"));
    assert!(!matches("a.*", "a.b.c"));
    assert!(matches("*", "x"));
    assert!(matches("*.b", ".b"));
    assert!(matches("*", "*"));
    assert!(matches("*", "#"));
}

#[test]
fn empty_key_has_zero_words() {
    assert!(matches("#", ""));
    assert!(matches("#.#", ""));
    assert!(matches("", ""));
    assert!(!matches("*", ""));
    assert!(!matches("*.#", ""));
    assert!(!matches("#.*", ""));
    assert!(!matches("", "a"));
    assert!(!matches("", "."));
    assert!(!matches("a", ""));
}

#[test]
fn star_hash_needs_at_least_one_word() {
    assert!(matches("*.#", "a"));
    assert!(matches("*.#", "a.b.c"));
    assert!(matches("*.#", "."));
    assert!(matches("#.*", "a"));
}

#[test]
fn hash_matches_zero_or_more_words_anywhere() {
    assert!(matches("a.#.b", "a.b"));
    assert!(matches("a.#.b", "a.x.b"));
    assert!(matches("a.#.b", "a.x.y.z.b"));
    assert!(!matches("a.#.b", "a.x.y"));
    assert!(matches("#.b", "b"));
    assert!(matches("#.b", "x.y.b"));
    assert!(!matches("#.b", "b.x"));
    assert!(matches("a.#", "a"));
    assert!(matches("a.#", "a.x.y"));
    assert!(!matches("a.#", "b.a"));
    assert!(matches("#", "anything.at.all"));
    assert!(matches("#.#", "a.b"));
    assert!(matches("a.#.#.b", "a.b"));
    assert!(matches("a.#.#.b", "a.x.y.b"));
}

#[test]
fn wildcard_characters_inside_words_are_literal() {
    assert!(matches("a*", "a*"));
    assert!(!matches("a*", "ab"));
    assert!(!matches("a*", "a"));
    assert!(matches("#b", "#b"));
    assert!(!matches("#b", "b"));
    assert!(!matches("#b", "x.b"));
    assert!(!matches("a.**", "a.b"));
    // A key's `*` or `#` is an ordinary word: only a wildcard or an equal
    // literal pattern word can match it.
    assert!(matches("a.*", "a.*"));
    assert!(!matches("a.b", "a.*"));
    assert!(!matches("a.b", "a.#"));
    assert!(matches("a.#", "a.#"));
}

#[test]
fn words_compare_as_exact_bytes() {
    assert!(!matches("A", "a"));
    assert!(!matches("a", "a "));
    assert!(!matches(" a", "a"));
    assert!(matches("a b.c", "a b.c"));
    assert!(matches("é.*", "é.ü"));
    assert!(!matches("é", "e\u{301}"));
}

#[test]
fn each_insert_of_the_same_binding_needs_its_own_remove() {
    let mut trie = TopicTrie::new();
    assert!(trie.is_empty());
    trie.insert("a.#", 1);
    // `#.#` collapses, so this is the same pattern bound a second time.
    trie.insert("a.#.#", 1);
    trie.insert("a.#", 2);
    trie.insert("a.*", 1);
    assert_eq!(trie.len(), 4);
    let mut hits = Vec::new();
    trie.for_each_match("a.b", |d| hits.push(*d));
    hits.sort_unstable();
    // Destination 1 is bound three times over matching patterns.
    assert_eq!(hits, [1, 1, 1, 2]);
    assert!(trie.remove("a.#.#", &1));
    let mut hits = Vec::new();
    trie.for_each_match("a.b.c", |d| hits.push(*d));
    hits.sort_unstable();
    assert_eq!(hits, [1, 2], "the other a.# binding of 1 still routes");
    assert!(trie.remove("a.#", &1));
    assert!(!trie.remove("a.#", &1));
    assert_eq!(trie.len(), 2);
}

#[test]
fn remove_prunes_and_stops_matching() {
    let mut trie = TopicTrie::new();
    trie.insert("a.*.c", 1);
    trie.insert("a.#", 2);
    trie.insert("", 3);
    assert!(!trie.remove("a.*.c", &9));
    assert!(!trie.remove("a.*", &1));
    assert!(!trie.remove("a.x.c", &1));
    assert!(trie.remove("a.*.c", &1));
    assert!(!trie.remove("a.*.c", &1));
    assert_eq!(routes(&trie, "a.b.c"), [2]);
    // The `a` node stays (it still leads to `#`), its `*` branch is gone.
    let a = literal_child(&trie, &trie.root, "a").expect("a.# is still bound");
    assert!(a.star.is_none());
    assert!(trie.remove("a.#.#", &2));
    assert!(trie.root.words.is_empty());
    assert!(routes(&trie, "a.b.c").is_empty());
    assert_eq!(routes(&trie, ""), [3]);
    assert!(trie.remove("", &3));
    assert!(trie.root.is_vacant());
    assert!(trie.is_empty());
    assert!(routes(&trie, "").is_empty());
}

#[test]
fn clones_are_independent_snapshots() {
    let mut original = TopicTrie::new();
    original.insert("a.*", 1);
    original.insert("#.b", 2);
    let mut copy = original.clone();
    copy.insert("a.*", 3);
    assert!(copy.remove("#.b", &2));
    copy.insert("a.b", 4);
    assert_eq!(routes(&original, "a.b"), [1, 2]);
    assert_eq!(routes(&copy, "a.b"), [1, 3, 4]);
    assert_eq!((original.len(), copy.len()), (2, 3));
    // And the other way round.
    assert!(original.remove("a.*", &1));
    assert_eq!(routes(&copy, "a.b"), [1, 3, 4]);
    assert_eq!(routes(&original, "a.b"), [2]);
}

#[test]
fn unchanged_branches_are_shared_after_insert() {
    let mut original = TopicTrie::new();
    original.insert("x.y", 1);
    let mut copy = original.clone();
    copy.insert("a.b", 2);
    // Edge arrays are the unit of sharing: the one below `x` is still
    // shared, the root's was copied.
    let below_x = |trie| {
        let x = literal_child(trie, &trie.root, "x").expect("x.y is bound");
        x.words.slots.as_ref().expect("x has the edge y")
    };
    assert!(Arc::ptr_eq(below_x(&original), below_x(&copy)));
    let root = |trie: &TopicTrie<u32>| trie.root.words.slots.clone().expect("the root has edges");
    assert!(!Arc::ptr_eq(&root(&original), &root(&copy)));
}

#[test]
fn many_hashes_do_not_blow_up() {
    // 20 `#` with an `a` between each pair: needs at least 19 `a` words.
    let pattern = vec!["#"; 20].join(".a.");
    let key = vec!["a"; 200].join(".");
    let miss = format!("{key}.b");
    let short = vec!["a"; 18].join(".");
    let mut trie = TopicTrie::new();
    trie.insert(&pattern, 1);
    trie.insert("#.a.#.a.#.a.#.a.#", 2);
    assert_eq!(routes(&trie, &key), [1, 2]);
    assert_eq!(routes(&trie, &miss), [1, 2]);
    assert_eq!(routes(&trie, &format!("{key}.b.c")), [1, 2]);
    assert_eq!(routes(&trie, &short), [2]);
    assert!(routes(&trie, "b.b.b").is_empty());
}

#[test]
fn nested_matching_from_the_callback_works() {
    let mut trie = TopicTrie::new();
    trie.insert("#", 1);
    trie.insert("a.#", 2);
    let mut inner = Vec::new();
    trie.for_each_match("a.b", |_| inner.push(routes(&trie, "a")));
    assert_eq!(inner, [vec![1, 2], vec![1, 2]]);
}

#[test]
fn recycled_buffers_keep_their_allocation() {
    let mut v: Vec<usize> = Vec::with_capacity(64);
    v.push(7);
    let node = Node::<u32>::empty();
    let mut refs: Vec<&Node<u32>> = recycle(v);
    assert!(refs.capacity() >= 64);
    refs.push(&node);
    let back: Vec<usize> = recycle(refs);
    assert!(back.is_empty() && back.capacity() >= 64);
}

#[test]
fn wide_literal_fanout() {
    let mut trie = TopicTrie::new();
    for i in 0..10_000u32 {
        trie.insert(&format!("w{}.w{}", i % 100, i / 100), i);
    }
    assert_eq!(trie.len(), 10_000);
    assert_eq!(routes(&trie, "w42.w7"), [742]);
    trie.insert("*.w7", 20_000);
    assert_eq!(routes(&trie, "w42.w7"), [742, 20_000]);
}

/// A tiny deterministic xorshift64 generator, so the test needs no crates.
struct XorShift(u64);

impl XorShift {
    /// The next value below `n`.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// A dot-joined string of 0..=max_words words from `vocab`; zero words
    /// gives the empty string.
    fn string(&mut self, vocab: &[&str], max_words: usize) -> String {
        let n = self.below(max_words + 1);
        (0..n).map(|_| vocab[self.below(vocab.len())]).collect::<Vec<_>>().join(".")
    }
}

#[test]
fn agrees_with_reference_matcher() {
    let pattern_vocab = ["", "*", "#", "a", "b"];
    let key_vocab = ["", "a", "b", "*", "#"];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let patterns: Vec<String> = (0..300).map(|_| rng.string(&pattern_vocab, 6)).collect();
    let keys: Vec<String> = (0..300).map(|_| rng.string(&key_vocab, 7)).collect();

    let mut trie = TopicTrie::new();
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(p, i);
    }
    // Remove a third again, so the check also covers pruned tries.
    let mut live = vec![true; patterns.len()];
    for (i, p) in patterns.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        assert!(trie.remove(p, &i));
        live[i] = false;
    }
    assert_eq!(trie.len(), live.iter().filter(|l| **l).count());

    let mut checked = 0;
    for key in &keys {
        let mut got = Vec::new();
        trie.for_each_match(key, |d| got.push(*d));
        got.sort_unstable();
        got.dedup();
        let want: Vec<usize> =
            (0..patterns.len()).filter(|&i| live[i] && reference(&patterns[i], key)).collect();
        assert_eq!(got, want, "key {key:?}");
        checked += patterns.len();
    }
    assert_eq!(checked, 90_000);

    // And pattern by pattern, with fresh single-binding tries.
    for _ in 0..3_000 {
        let p = rng.string(&pattern_vocab, 5);
        let k = rng.string(&key_vocab, 6);
        matches(&p, &k);
    }
}

#[test]
fn long_words_compare_whole() {
    // 14, 15 (the most packed whole), 16 and 17 bytes, then words that
    // share their first 15 or 16 bytes and differ after.
    let p14 = "abcdefghijklmn";
    let p15 = "abcdefghijklmno";
    let p16 = "abcdefghijklmnop";
    let q16 = "abcdefghijklmnoq";
    let p17 = "abcdefghijklmnopq";
    let long = "abcdefghijklmnopqrstuvwxyz-0123456789";
    let longer = "abcdefghijklmnopqrstuvwxyz-0123456789x";
    let words = [p14, p15, p16, q16, p17, long, longer];
    for (i, p) in words.iter().enumerate() {
        for (j, k) in words.iter().enumerate() {
            assert_eq!(matches(p, k), i == j, "{p} / {k}");
            assert_eq!(matches(&format!("{p}.*"), &format!("{k}.x")), i == j);
            assert_eq!(matches(&format!("#.{p}"), &format!("x.{k}")), i == j);
        }
    }
    let mut trie = TopicTrie::new();
    for (i, w) in words.iter().enumerate() {
        trie.insert(w, i as u32);
        trie.insert(&format!("{w}.{w}"), 100 + i as u32);
    }
    for (i, w) in words.iter().enumerate() {
        assert_eq!(routes(&trie, w), [i as u32]);
        assert_eq!(routes(&trie, &format!("{w}.{w}")), [100 + i as u32]);
    }
    assert!(trie.remove(p16, &2));
    assert!(!trie.remove(p16, &3));
    assert!(routes(&trie, p16).is_empty());
    assert_eq!(routes(&trie, q16), [3]);
}

#[test]
fn wide_nodes_keep_every_word_through_inserts_and_removes() {
    let words: Vec<String> = (0..600)
        .map(|i| if i % 3 == 0 { format!("a-rather-long-word-number-{i}") } else { format!("w{i}") })
        .collect();
    let mut trie = TopicTrie::new();
    for (i, w) in words.iter().enumerate() {
        trie.insert(w, i as u32);
        trie.insert(&format!("x.{w}"), i as u32);
    }
    for (i, w) in words.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
        assert!(trie.remove(w, &(i as u32)));
        assert!(trie.remove(&format!("x.{w}"), &(i as u32)));
    }
    for (i, w) in words.iter().enumerate() {
        let want: &[u32] = if i % 4 == 1 { &[] } else { &[i as u32] };
        assert_eq!(routes(&trie, w), want, "{w}");
        assert_eq!(routes(&trie, &format!("x.{w}")), want, "x.{w}");
    }
    assert!(routes(&trie, "w600").is_empty());
    assert!(routes(&trie, "a-rather-long-word-number-1").is_empty());
    assert_eq!(trie.len(), 2 * (600 - 150));
}

#[test]
fn more_active_nodes_than_the_stack_holds() {
    // Every mix of `a` and `*` over six words: all 64 are active at the
    // end of `a.a.a.a.a.a`, more than the stack buffers take, as are the
    // `#` nodes after each.
    let mut trie = TopicTrie::new();
    for mask in 0..64u32 {
        let words: Vec<&str> = (0..6).map(|bit| if mask >> bit & 1 == 1 { "*" } else { "a" }).collect();
        trie.insert(&words.join("."), mask);
        trie.insert(&format!("{}.#", words[..3].join(".")), 100 + (mask & 7));
    }
    let all: Vec<u32> = (0..64).chain(100..108).collect();
    // Twice: the second call reuses the grown per-thread buffers.
    for _ in 0..2 {
        assert_eq!(routes(&trie, "a.a.a.a.a.a"), all);
        assert_eq!(routes(&trie, "b.b.b.b.b.b"), [63, 107]);
        assert_eq!(routes(&trie, "a.a.a"), (100..108).collect::<Vec<_>>());
    }
    let mut hits = 0;
    trie.for_each_match("a.a.a.a.a.a", |_| hits += 1);
    assert_eq!(hits, 64 + 64, "each binding reported once");
}

/// Checks the invariants of a node's table: edges in home order, each
/// within `window` of its home, `len` counting them, room to spare.
fn check_table(words: &Words<u32>, seed: u64) {
    if words.is_empty() {
        assert_eq!((words.len, words.window), (0, 0));
        return;
    }
    let slots = words.slots();
    let capacity = words.capacity();
    assert!(capacity.is_power_of_two());
    assert!(2 * words.len as usize <= capacity, "{} edges in {capacity}", words.len);
    let mut last_home = 0;
    let mut len = 0;
    for (at, edge) in slots.iter().enumerate().filter(|(_, e)| !e.is_vacant()) {
        let home = edge.hash(seed) as usize & (capacity - 1);
        assert!(home <= at && at < home + words.window as usize, "slot {at}, home {home}");
        assert!(home >= last_home, "home order");
        last_home = home;
        len += 1;
    }
    assert_eq!(len, words.len);
}

#[test]
fn thousands_of_edges_on_one_node_through_inserts_and_removes() {
    let word = |i: usize| {
        if i.is_multiple_of(7) { format!("a-rather-long-user-name-{i}") } else { format!("user{i}") }
    };
    let n = 5_000;
    let mut trie = TopicTrie::new();
    // Snapshots taken along the way keep every table shared, as a broker's
    // published ones do, and must not change.
    let mut snapshots = Vec::new();
    for i in 0..n {
        trie.insert(&format!("{}.#", word(i)), i as u32);
        if i % 1_000 == 999 {
            snapshots.push((i + 1, trie.clone()));
        }
    }
    check_table(&trie.root.words, trie.seed);
    assert_eq!(trie.root.words.len as usize, n);
    for i in (0..n).step_by(37) {
        assert_eq!(routes(&trie, &format!("{}.x.y", word(i))), [i as u32]);
    }
    assert!(routes(&trie, &word(n)).is_empty());
    // Remove all but every tenth, in an order unrelated to the layout,
    // which shrinks the table on the way; then bind half of them again.
    let mut rng = XorShift(0x5DEE_CE66_D1CE_4E5B);
    let mut order: Vec<usize> = (0..n).filter(|i| i % 10 != 0).collect();
    for k in (1..order.len()).rev() {
        order.swap(k, rng.below(k + 1));
    }
    for (k, &i) in order.iter().enumerate() {
        assert!(trie.remove(&format!("{}.#", word(i)), &(i as u32)));
        if k % 500 == 0 {
            check_table(&trie.root.words, trie.seed);
            snapshots.push((usize::MAX, trie.clone()));
        }
    }
    check_table(&trie.root.words, trie.seed);
    assert!(trie.root.words.capacity() < 4 * n / 10, "the table shrank");
    for &i in order.iter().step_by(2) {
        trie.insert(&format!("{}.#", word(i)), i as u32);
    }
    check_table(&trie.root.words, trie.seed);
    let bound: std::collections::HashSet<usize> =
        (0..n).step_by(10).chain(order.iter().step_by(2).copied()).collect();
    assert_eq!(trie.len(), bound.len());
    for i in 0..n + 10 {
        let want: &[u32] = if bound.contains(&i) { &[i as u32] } else { &[] };
        assert_eq!(routes(&trie, &word(i)), want, "{}", word(i));
    }
    for (count, snapshot) in &snapshots {
        check_table(&snapshot.root.words, snapshot.seed);
        if *count != usize::MAX {
            assert_eq!(snapshot.len(), *count);
            assert_eq!(routes(snapshot, &word(count - 1)), [*count as u32 - 1]);
            assert!(routes(snapshot, &word(*count)).is_empty());
        }
    }
    // Everything removed: the root is empty again.
    for &i in &bound {
        assert!(trie.remove(&format!("{}.#", word(i)), &(i as u32)));
    }
    assert!(trie.root.is_vacant() && trie.is_empty());
}

/// Words for random patterns and keys: empty, wildcards, non-ASCII, and
/// words around the 15 bytes packed whole, some sharing that prefix.
const WORDS: [&str; 12] = [
    "",
    "a",
    "b",
    "*",
    "#",
    "é",
    "abcdefghijklmn",
    "abcdefghijklmno",
    "abcdefghijklmnop",
    "abcdefghijklmnoq",
    "abcdefghijklmnopqrstuvwxyz0123",
    "abcdefghijklmnopqrstuvwxyz0124",
];

/// A dot-joined string of up to `max` words from [`WORDS`].
fn dotted(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&WORDS[..]), 0..=max).prop_map(|words| words.join("."))
}

/// Whether `trie` reports, for `key`, each destination as many times as
/// `bindings` has bindings of it that the reference matcher accepts.
fn agrees(trie: &TopicTrie<u8>, bindings: &[(String, u8)], key: &str) -> Result<(), TestCaseError> {
    let mut got = Vec::new();
    trie.for_each_match(key, |d| got.push(*d));
    got.sort_unstable();
    let mut want: Vec<u8> = bindings.iter().filter(|(p, _)| reference(p, key)).map(|(_, d)| *d).collect();
    want.sort_unstable();
    prop_assert_eq!(got, want, "key {:?}", key);
    Ok(())
}

proptest! {
    #[test]
    fn random_tables_agree_with_the_reference_and_snapshots_stay_put(
        bindings in prop::collection::vec((dotted(6), 0..8u8), 0..40),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        keys in prop::collection::vec(dotted(7), 1..16),
    ) {
        let mut trie = TopicTrie::new();
        for (pattern, dest) in &bindings {
            trie.insert(pattern, *dest);
        }
        let snapshot = trie.clone();
        let mut live = bindings.clone();
        for index in removals {
            if live.is_empty() {
                break;
            }
            let (pattern, dest) = live.remove(index.index(live.len()));
            prop_assert!(trie.remove(&pattern, &dest));
        }
        prop_assert_eq!(trie.len(), live.len());
        for key in &keys {
            agrees(&trie, &live, key)?;
            agrees(&snapshot, &bindings, key)?;
        }
    }
}
