//! The routing table of a topic exchange: RabbitMQ's `*` / `#` pattern rules,
//! stored as a persistent trie so a published snapshot can be read lock-free
//! while the next one is built.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::str::Split;
// std's `Arc` rather than `crate::sync::Arc` on purpose: the trie is immutable
// shared data, not a synchronisation primitive, and it needs `Arc::make_mut`.
use std::sync::Arc;

/// One trie node: the pattern prefix spelled by the edges from the root.
///
/// A node reached through a `hash` edge stands for a `#` and can consume any
/// number of further words while staying put; the matcher knows this from the
/// edge it came through, so the node itself carries no flag.
#[derive(Debug, Clone)]
struct Node<D> {
    /// Literal words, hashed so that a wide root (many bindings over a large
    /// vocabulary) costs one lookup per key word rather than a scan.
    words: HashMap<Box<str>, Arc<Node<D>>>,
    /// The `*` edge: exactly one word, whatever it is (even empty).
    star: Option<Arc<Node<D>>>,
    /// The `#` edge. Inserts collapse `#.#` to `#`, so the node at the end of
    /// this edge never has a `hash` child of its own: the matcher relies on it.
    hash: Option<Arc<Node<D>>>,
    /// Destinations bound under exactly this pattern.
    dests: Vec<D>,
}

impl<D> Node<D> {
    /// A node with no edges and no destinations, as created on insert.
    fn empty() -> Self {
        Node { words: HashMap::new(), star: None, hash: None, dests: Vec::new() }
    }

    /// Whether nothing is bound at or below this node, so it can be pruned.
    fn is_vacant(&self) -> bool {
        self.dests.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

/// Cheap to clone: nodes are `Arc`-shared, and `insert`/`remove` copy only the
/// path they change (`Arc::make_mut`), so a published snapshot stays valid
/// while a writer builds the next one. D is a destination id.
#[derive(Debug, Clone)]
pub(crate) struct TopicTrie<D> {
    /// The node for the empty pattern `""`; never pruned, so it is always there
    /// to start a match from.
    root: Arc<Node<D>>,
    /// Kept alongside the trie so that `len` does not walk it.
    len: usize,
}

impl<D: Clone + PartialEq> Default for TopicTrie<D> {
    /// The same as [`TopicTrie::new`], for containers that need `Default`.
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Clone + PartialEq> TopicTrie<D> {
    /// An empty table: matches nothing.
    pub(crate) fn new() -> Self {
        TopicTrie { root: Arc::new(Node::empty()), len: 0 }
    }

    /// Adds one binding of `dest` under `pattern`. The same pair may be added
    /// more than once — two bindings that differ only by arguments, or `a.#`
    /// and `a.#.#`, which collapse to one pattern — and each needs its own
    /// [`remove`](Self::remove): removing one binding must not silence the
    /// other. Routing reports such a destination more than once; the caller
    /// deduplicates.
    pub(crate) fn insert(&mut self, pattern: &str, dest: D) {
        let mut node = Arc::make_mut(&mut self.root);
        for word in pattern_words(pattern) {
            let child = match word {
                "*" => node.star.get_or_insert_with(|| Arc::new(Node::empty())),
                "#" => node.hash.get_or_insert_with(|| Arc::new(Node::empty())),
                literal => node.words.entry(Box::from(literal)).or_insert_with(|| Arc::new(Node::empty())),
            };
            node = Arc::make_mut(child);
        }
        node.dests.push(dest);
        self.len += 1;
    }

    /// Removes one binding of `dest` under `pattern`; false if absent. Prunes
    /// nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &str, dest: &D) -> bool {
        // Checked read-only first so a miss does not copy a shared path.
        if !self.find(pattern).is_some_and(|n| n.dests.contains(dest)) {
            return false;
        }
        let removed = remove_at(Arc::make_mut(&mut self.root), &mut pattern_words(pattern), dest);
        debug_assert!(removed, "find saw the binding, so removal must too");
        self.len -= 1;
        true
    }

    /// Number of (pattern, dest) pairs.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no binding is present, so routing can skip the walk entirely.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` once for each destination bound under a pattern that matches
    /// `routing_key`. A destination bound under several matching patterns may be
    /// reported more than once: the caller deduplicates.
    ///
    /// This is an NFA simulation, not a backtracking search: after each key
    /// word the state is the set of trie nodes whose pattern prefix matches the
    /// key so far, each node at most once, so the work is
    /// O(key words × active nodes) however many `#` a pattern holds. Nodes
    /// behind a `#` edge are sticky (a `#` swallows every later word), so they
    /// live in their own ever-growing set and only they need an identity check;
    /// every other active node has a single parent edge and so cannot be
    /// reached twice in one step.
    ///
    /// In the steady state this does not allocate: the node sets reuse a
    /// per-thread scratch buffer. A nested call from inside `f` (or the first
    /// call on a thread) simply works on fresh buffers.
    pub(crate) fn for_each_match(&self, routing_key: &str, mut f: impl FnMut(&D)) {
        if self.is_empty() {
            return;
        }
        let mut scratch = Scratch::take();
        let mut cur: Vec<&Node<D>> = recycle(scratch.cur);
        let mut next: Vec<&Node<D>> = recycle(scratch.next);
        let mut sticky: Vec<&Node<D>> = recycle(scratch.sticky);
        let seen = &mut scratch.seen;
        seen.clear();

        cur.push(&self.root);
        enter_hashes(&cur, &mut sticky, seen);
        for word in key_words(routing_key) {
            next.clear();
            for node in cur.iter().chain(sticky.iter()) {
                if let Some(child) = node.words.get(word) {
                    next.push(child);
                }
                if let Some(child) = &node.star {
                    next.push(child);
                }
            }
            std::mem::swap(&mut cur, &mut next);
            enter_hashes(&cur, &mut sticky, seen);
            if cur.is_empty() && sticky.is_empty() {
                break;
            }
        }
        for node in cur.iter().chain(sticky.iter()) {
            node.dests.iter().for_each(&mut f);
        }

        scratch.cur = recycle(cur);
        scratch.next = recycle(next);
        scratch.sticky = recycle(sticky);
        scratch.put_back();
    }

    /// The node spelled by `pattern`, if any binding passes through it.
    fn find(&self, pattern: &str) -> Option<&Node<D>> {
        let mut node = &*self.root;
        for word in pattern_words(pattern) {
            node = match word {
                "*" => node.star.as_deref()?,
                "#" => node.hash.as_deref()?,
                literal => node.words.get(literal)?,
            };
        }
        Some(node)
    }
}

/// Removes `dest` at the end of `words` below `node`, pruning children left
/// vacant on the way back up so that dead branches do not slow later matches.
fn remove_at<'w, D: Clone + PartialEq>(
    node: &mut Node<D>,
    words: &mut impl Iterator<Item = &'w str>,
    dest: &D,
) -> bool {
    let Some(word) = words.next() else {
        let Some(at) = node.dests.iter().position(|d| d == dest) else {
            return false;
        };
        // Order of destinations carries no meaning, so the cheap removal is fine.
        node.dests.swap_remove(at);
        return true;
    };
    match word {
        "*" => remove_in_slot(&mut node.star, words, dest),
        "#" => remove_in_slot(&mut node.hash, words, dest),
        literal => {
            let Some(child) = node.words.get_mut(literal) else {
                return false;
            };
            let removed = remove_at(Arc::make_mut(child), words, dest);
            if removed && child.is_vacant() {
                node.words.remove(literal);
            }
            removed
        }
    }
}

/// [`remove_at`] through a `*` or `#` edge, dropping the edge if left vacant.
fn remove_in_slot<'w, D: Clone + PartialEq>(
    slot: &mut Option<Arc<Node<D>>>,
    words: &mut impl Iterator<Item = &'w str>,
    dest: &D,
) -> bool {
    let Some(child) = slot else {
        return false;
    };
    let removed = remove_at(Arc::make_mut(child), words, dest);
    if removed && child.is_vacant() {
        *slot = None;
    }
    removed
}

/// Adds to `sticky` the `#` children of the freshly active nodes in `cur`:
/// a `#` may match zero words, so it is live as soon as its parent is. The
/// `seen` check is what keeps each `#` node in the set once, since its parent
/// may become active again at a later word.
fn enter_hashes<'n, D>(cur: &[&'n Node<D>], sticky: &mut Vec<&'n Node<D>>, seen: &mut HashSet<usize>) {
    for node in cur {
        if let Some(hash) = node.hash.as_deref()
            && seen.insert(std::ptr::from_ref(hash).addr())
        {
            sticky.push(hash);
        }
    }
}

/// The words of a routing key, without allocating. The empty key has no words
/// at all (so `*` cannot match it), while every other key keeps its empty
/// words (`a..b` is `a`, `""`, `b`).
fn key_words(key: &str) -> Split<'_, char> {
    let mut words = key.split('.');
    if key.is_empty() {
        // `"".split('.')` yields a single empty word; drop it so none remain.
        words.next();
    }
    words
}

/// The words of a binding pattern: split like a key, with runs of `#`
/// collapsed to one, which matches the same keys and keeps the trie free of
/// `#`-after-`#` edges that the matcher would otherwise need to chase.
fn pattern_words(pattern: &str) -> impl Iterator<Item = &str> {
    let mut after_hash = false;
    key_words(pattern).filter(move |&word| {
        let repeat = after_hash && word == "#";
        after_hash = word == "#";
        !repeat
    })
}

/// Reuses a vector's allocation for a vector of another element type.
///
/// `Vec<&'a Node<D>>` cannot be kept between calls (the lifetime and `D`
/// differ per call), but its buffer can: clearing and collecting through a
/// never-called `map` hits std's in-place collect whenever the two element
/// types share a layout (here: thin references and `usize`). If they did not,
/// the result would just be a new empty vector: still correct.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the vector was cleared")).collect()
}

/// Per-thread buffers for [`TopicTrie::for_each_match`], stored type-erased
/// (as addresses) because a thread-local cannot name `D` or a borrow.
#[derive(Default)]
struct Scratch {
    /// Buffer for the nodes active after the current word.
    cur: Vec<usize>,
    /// Buffer for the nodes being built for the next word.
    next: Vec<usize>,
    /// Buffer for the active `#` nodes.
    sticky: Vec<usize>,
    /// Addresses of `#` nodes already in the sticky set.
    seen: HashSet<usize>,
}

thread_local! {
    /// The buffers between calls; taken out (not borrowed) for the duration of
    /// a match so that a nested match from the callback cannot conflict.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Scratch {
    /// Takes this thread's buffers, or fresh ones if they are out already or
    /// the thread-local is being torn down.
    fn take() -> Self {
        SCRATCH.try_with(RefCell::take).unwrap_or_default()
    }

    /// Returns the buffers for the next call on this thread; dropped instead if
    /// the thread-local is already gone.
    fn put_back(self) {
        let _ = SCRATCH.try_with(|cell| *cell.borrow_mut() = self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The destinations matched by `key`, sorted and deduplicated.
    fn routes(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.for_each_match(key, |d| out.push(*d));
        out.sort_unstable();
        out.dedup();
        out
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
        go(&key_words(pattern).collect::<Vec<_>>(), &key_words(key).collect::<Vec<_>>())
    }

    #[test]
    fn key_and_pattern_words_keep_empty_words() {
        let words = |s| key_words(s).collect::<Vec<_>>();
        assert!(words("").is_empty());
        assert_eq!(words("a..b"), ["a", "", "b"]);
        assert_eq!(words(".a"), ["", "a"]);
        assert_eq!(words("a."), ["a", ""]);
        assert_eq!(words("."), ["", ""]);
        let pwords = |s| pattern_words(s).collect::<Vec<_>>();
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
        let a = trie.root.words.get("a").expect("a.# is still bound");
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
        assert!(Arc::ptr_eq(&original.root.words["x"], &copy.root.words["x"]));
        assert!(!Arc::ptr_eq(&original.root, &copy.root));
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
}
