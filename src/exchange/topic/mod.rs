//! The routing table of a topic exchange: RabbitMQ's `*` / `#` pattern rules,
//! stored as a persistent trie so a published snapshot can be read lock-free
//! while the next one is built.
//!
//! Matching a key visits a few dozen nodes (10,000 random bindings keep about
//! seven active per key word), and what each visit costs is mostly branch
//! mispredictions and cache misses, not arithmetic: whether a node has the
//! word or a `*` edge is a coin toss, and the nodes are megabytes apart. So
//! each key word is hashed and packed once for all the nodes it is looked up
//! in; a lookup reads a fixed window of slots with no branch on what it finds
//! (see [`Words`]); a node's literal children live inline in its edge array
//! (the copy-on-write unit is that array), so the slot that matches a word
//! also holds the child's own edges and flags; and the walk works on borrowed
//! nodes in stack buffers, with no reference count or thread-local touched.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::ptr;
// std's `Arc` rather than `crate::sync::Arc` on purpose: the trie is immutable
// shared data, not a synchronisation primitive, and it needs `Arc::make_mut`.
use std::sync::Arc;

use crate::hash::FastHashSet;

mod words;

use words::{Key, Probe, Words, pack_first};

/// One trie node: the pattern prefix spelled by the edges from the root.
///
/// A node reached through a `hash` edge stands for a `#` and can consume any
/// number of further words while staying put; the matcher knows this from the
/// edge it came through, so the node itself carries no flag.
///
/// Seven words and cheap to clone (reference counts only), because the
/// children of a literal edge live inline in their parent's edge array.
#[derive(Debug, Clone)]
struct Node<D> {
    /// Literal words, hashed so that a wide root (many bindings over a large
    /// vocabulary) costs one probe per key word rather than a scan.
    words: Words<D>,
    /// The `*` edge: exactly one word, whatever it is (even empty).
    star: Option<Arc<Node<D>>>,
    /// The `#` edge. Inserts collapse `#.#` to `#`, so the node at the end of
    /// this edge never has a `hash` child of its own: the matcher relies on it.
    hash: Option<Arc<Node<D>>>,
    /// Destinations bound under exactly this pattern; `None` rather than
    /// empty. Shared, so that cloning a node (as copying its parent's edge
    /// array does) copies no destination.
    dests: Option<Arc<[D]>>,
}

impl<D> Node<D> {
    /// A node with no edges and no destinations, as created on insert.
    fn empty() -> Self {
        Node { words: Words::new(), star: None, hash: None, dests: None }
    }

    /// Whether nothing is bound at or below this node, so it can be pruned.
    fn is_vacant(&self) -> bool {
        self.dests.is_none() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    /// The destinations bound under exactly this pattern.
    fn dests(&self) -> &[D] {
        self.dests.as_deref().unwrap_or_default()
    }
}

/// Cheap to clone: edge arrays and `*`/`#` nodes are `Arc`-shared, and
/// `insert`/`remove` copy only those on the path they change
/// (`Arc::make_mut`), so a published snapshot stays valid while a writer
/// builds the next one. D is a destination id.
#[derive(Debug, Clone)]
pub(crate) struct TopicTrie<D> {
    /// The node for the empty pattern `""`; never pruned, so it is always there
    /// to start a match from.
    root: Node<D>,
    /// Kept alongside the trie so that `len` does not walk it.
    len: usize,
    /// The [`word_hash`](words::word_hash) seed of every node; clones share nodes, so they keep it.
    seed: u64,
}

impl<D: Clone + PartialEq> Default for TopicTrie<D> {
    /// The same as [`TopicTrie::new`], for containers that need `Default`.
    fn default() -> Self {
        Self::new()
    }
}

/// Nodes [`TopicTrie::for_each_match`] tracks on the stack per set (current,
/// next) before it falls back to per-thread buffers. A 4-word key over
/// 10,000 random bindings peaks around a dozen; the fallback is for tables
/// with many wildcard prefixes.
const INLINE_ACTIVE: usize = 32;
/// Sticky (`#`) nodes tracked on the stack, deduplicated by a linear scan.
const INLINE_STICKY: usize = 16;

impl<D: Clone + PartialEq> TopicTrie<D> {
    /// An empty table: matches nothing.
    pub(crate) fn new() -> Self {
        TopicTrie { root: Node::empty(), len: 0, seed: RandomState::new().hash_one(0_u64) }
    }

    /// Adds one binding of `dest` under `pattern`. The same pair may be added
    /// more than once — two bindings that differ only by arguments, or `a.#`
    /// and `a.#.#`, which collapse to one pattern — and each needs its own
    /// [`remove`](Self::remove): removing one binding must not silence the
    /// other. Routing reports such a destination more than once; the caller
    /// deduplicates.
    pub(crate) fn insert(&mut self, pattern: &str, dest: D) {
        let mut node = &mut self.root;
        for (word, key) in pattern_words(pattern) {
            node = match word {
                b"*" => Arc::make_mut(node.star.get_or_insert_with(|| Arc::new(Node::empty()))),
                b"#" => Arc::make_mut(node.hash.get_or_insert_with(|| Arc::new(Node::empty()))),
                literal => node.words.get_or_insert(self.seed, &Probe::packed(self.seed, literal, key)),
            };
        }
        node.dests = Some(node.dests().iter().cloned().chain([dest]).collect());
        self.len += 1;
    }

    /// Removes one binding of `dest` under `pattern`; false if absent. Prunes
    /// nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &str, dest: &D) -> bool {
        // Checked read-only first so a miss does not copy a shared path.
        if !self.find(pattern).is_some_and(|n| n.dests().contains(dest)) {
            return false;
        }
        let removed = remove_at(&mut self.root, self.seed, &mut pattern_words(pattern), dest);
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
    /// This is an NFA simulation, not a backtracking search (see [`walk`]), so
    /// the work is O(key words × active nodes) however many `#` a pattern
    /// holds. Nothing is reported until the walk is done, which lets a walk
    /// that outgrows its buffers start over with bigger ones.
    ///
    /// It does not allocate: the node sets live on the stack, or, for a table
    /// whose keys keep more nodes active, in per-thread buffers that keep
    /// their size between calls. A nested call from inside `f` (or the first
    /// big one on a thread) simply works on fresh buffers.
    pub(crate) fn for_each_match(&self, routing_key: &str, mut f: impl FnMut(&D)) {
        if self.is_empty() {
            return;
        }
        let root = &self.root;
        let mut report = |node: &Node<D>| node.dests().iter().for_each(&mut f);
        let mut sets = [[root; INLINE_ACTIVE]; 2];
        let [cur, next] = &mut sets;
        let mut sticky = [root; INLINE_STICKY];
        if walk(root, self.seed, routing_key, [cur, next], &mut sticky, None, &mut report) {
            return;
        }

        let mut scratch = Scratch::take();
        let mut cur: Vec<&Node<D>> = recycle(scratch.cur);
        let mut next: Vec<&Node<D>> = recycle(scratch.next);
        let mut sticky: Vec<&Node<D>> = recycle(scratch.sticky);
        // Start from what the last big walk on this thread needed; double
        // until the walk fits (a few retries, the first time only).
        let mut size = cur.capacity().max(next.capacity()).max(sticky.capacity()).max(2 * INLINE_ACTIVE);
        loop {
            for set in [&mut cur, &mut next, &mut sticky] {
                set.resize(size, root);
            }
            scratch.seen.clear();
            let sets = [&mut cur[..], &mut next[..]];
            if walk(root, self.seed, routing_key, sets, &mut sticky, Some(&mut scratch.seen), &mut report) {
                break;
            }
            size *= 2;
        }
        scratch.cur = recycle(cur);
        scratch.next = recycle(next);
        scratch.sticky = recycle(sticky);
        scratch.put_back();
    }

    /// The node spelled by `pattern`, if any binding passes through it.
    fn find(&self, pattern: &str) -> Option<&Node<D>> {
        let mut node = &self.root;
        for (word, key) in pattern_words(pattern) {
            node = match word {
                b"*" => node.star.as_deref()?,
                b"#" => node.hash.as_deref()?,
                literal => node.words.get(&Probe::packed(self.seed, literal, key))?,
            };
        }
        Some(node)
    }
}

/// The NFA walk of [`TopicTrie::for_each_match`]: calls `report` on each node
/// whose pattern matches `key` and returns true, or returns false without
/// reporting anything if `sets` or `sticky` was too small.
///
/// After each key word the state is the set of trie nodes whose pattern
/// prefix matches the key so far, each node at most once: the current set of
/// `sets` plus the sticky set. Nodes behind a `#` edge are sticky (a `#`
/// swallows every later word), so they live in their own ever-growing set and
/// only they need an identity check; every other active node has a single
/// parent edge and so cannot be reached twice in one step. That check is a
/// scan of `sticky`, or `seen` (addresses) when given, for sets too big to
/// scan.
///
/// The references are `&Node`, not `Arc` clones, so the walk touches no
/// reference count, and each key word is hashed once for all active nodes.
fn walk<'n, D>(
    root: &'n Node<D>,
    seed: u64,
    key: &str,
    sets: [&mut [&'n Node<D>]; 2],
    sticky: &mut [&'n Node<D>],
    mut seen: Option<&mut FastHashSet<usize>>,
    report: &mut impl FnMut(&'n Node<D>),
) -> bool {
    let [mut cur, mut next] = sets;
    cur[0] = root;
    let mut live = 1;
    let mut stuck = 0;
    if enter_hashes(&cur[..live], sticky, &mut stuck, seen.as_deref_mut()).is_none() {
        return false;
    }
    for (word, packed) in key_words(key) {
        let probe = Probe::packed(seed, word, packed);
        if next.len() < 2 * (live + stuck) {
            return false;
        }
        let mut end = 0;
        // Both slots written whatever is found, and counted only if found:
        // whether a node has the word or a `*` edge is a coin toss a branch
        // predictor loses, and a data dependency does not.
        let mut step = |node: &'n Node<D>| {
            let literal = node.words.get(&probe);
            next[end] = literal.unwrap_or(root);
            end += usize::from(literal.is_some());
            let star = node.star.as_deref();
            next[end] = star.unwrap_or(root);
            end += usize::from(star.is_some());
        };
        // Two loops rather than a chained iterator, which tests which half
        // it is in at every node.
        cur[..live].iter().for_each(|&node| step(node));
        sticky[..stuck].iter().for_each(|&node| step(node));
        std::mem::swap(&mut cur, &mut next);
        live = end;
        if enter_hashes(&cur[..live], sticky, &mut stuck, seen.as_deref_mut()).is_none() {
            return false;
        }
        if live == 0 && stuck == 0 {
            break;
        }
    }
    cur[..live].iter().for_each(|&node| report(node));
    sticky[..stuck].iter().for_each(|&node| report(node));
    true
}

/// Adds to `sticky[..*stuck]` the `#` children of the freshly active nodes
/// `fresh`: a `#` may match zero words, so it is live as soon as its parent
/// is. Its parent may become active again at a later word, hence the identity
/// check (through `seen` when given). `None` if `sticky` is full.
fn enter_hashes<'n, D>(
    fresh: &[&'n Node<D>],
    sticky: &mut [&'n Node<D>],
    stuck: &mut usize,
    mut seen: Option<&mut FastHashSet<usize>>,
) -> Option<()> {
    for node in fresh {
        if let Some(hash) = node.hash.as_deref() {
            let new = match seen.as_deref_mut() {
                Some(seen) => seen.insert(ptr::from_ref(hash).addr()),
                None => !sticky[..*stuck].iter().any(|s| ptr::eq(*s, hash)),
            };
            if new {
                *sticky.get_mut(*stuck)? = hash;
                *stuck += 1;
            }
        }
    }
    Some(())
}

/// Removes `dest` at the end of `words` below `node`, pruning children left
/// vacant on the way back up so that dead branches do not slow later matches.
fn remove_at<'w, D: Clone + PartialEq>(
    node: &mut Node<D>,
    seed: u64,
    words: &mut impl Iterator<Item = (&'w [u8], Key)>,
    dest: &D,
) -> bool {
    let Some((word, key)) = words.next() else {
        let dests = node.dests();
        let Some(at) = dests.iter().position(|d| d == dest) else {
            return false;
        };
        let rest: Arc<[D]> = dests[..at].iter().chain(&dests[at + 1..]).cloned().collect();
        node.dests = (!rest.is_empty()).then_some(rest);
        return true;
    };
    match word {
        b"*" => remove_in_slot(&mut node.star, seed, words, dest),
        b"#" => remove_in_slot(&mut node.hash, seed, words, dest),
        literal => {
            let Some(at) = node.words.position(&Probe::packed(seed, literal, key)) else {
                return false;
            };
            let child = node.words.child_mut(at);
            let removed = remove_at(child, seed, words, dest);
            if removed && child.is_vacant() {
                node.words.remove(seed, at);
            }
            removed
        }
    }
}

/// [`remove_at`] through a `*` or `#` edge, dropping the edge if left vacant.
fn remove_in_slot<'w, D: Clone + PartialEq>(
    slot: &mut Option<Arc<Node<D>>>,
    seed: u64,
    words: &mut impl Iterator<Item = (&'w [u8], Key)>,
    dest: &D,
) -> bool {
    let Some(child) = slot else {
        return false;
    };
    let removed = remove_at(Arc::make_mut(child), seed, words, dest);
    if removed && child.is_vacant() {
        *slot = None;
    }
    removed
}

/// The words of a routing key, as bytes, each with its [`Key`], without
/// allocating. The empty key has no words at all (so `*` cannot match it),
/// while every other key keeps its empty words (`a..b` is `a`, `""`, `b`).
///
/// A byte loop rather than `str::split`, whose `memchr` set-up costs more
/// than it saves on words a few bytes long.
#[inline(always)]
fn key_words(key: &str) -> impl Iterator<Item = (&[u8], Key)> {
    let mut rest = (!key.is_empty()).then_some(key.as_bytes());
    std::iter::from_fn(move || {
        let words = rest?;
        let (len, packed) = pack_first(words);
        // Past the dot, or `None` if the word ran to the end.
        rest = words.get(len + 1..);
        Some((&words[..len], packed))
    })
}

/// The words of a binding pattern, split and packed as [`key_words`] does,
/// with runs of `#` collapsed to one, which matches the same keys and keeps
/// the trie free of `#`-after-`#` edges that the matcher would otherwise
/// need to chase.
fn pattern_words(pattern: &str) -> impl Iterator<Item = (&[u8], Key)> {
    let mut after_hash = false;
    key_words(pattern).filter(move |&(word, _)| {
        let repeat = after_hash && word == b"#";
        after_hash = word == b"#";
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

/// Per-thread buffers for the walks that outgrow the stack, stored
/// type-erased (as addresses) because a thread-local cannot name `D` or a
/// borrow.
#[derive(Default)]
struct Scratch {
    /// Buffer for the nodes active after the current word.
    cur: Vec<usize>,
    /// Buffer for the nodes being found for the next word.
    next: Vec<usize>,
    /// Buffer for the active `#` nodes.
    sticky: Vec<usize>,
    /// Addresses of `#` nodes already in the sticky set.
    seen: FastHashSet<usize>,
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

/// Whether topic `pattern` matches `routing_key`, word by word: the
/// reference definition (`*` is one word, `#` zero or more), for the
/// recorder's assertions, `explain_route` and the lint, which match one key
/// against one pattern and need no table.
pub(crate) fn pattern_matches(pattern: &str, routing_key: &str) -> bool {
    // An empty key or pattern is no words at all, as RabbitMQ splits them.
    let words = |s: &str| -> Vec<String> {
        if s.is_empty() { Vec::new() } else { s.split('.').map(str::to_owned).collect() }
    };
    let (pattern, key) = (words(pattern), words(routing_key));
    // matched[j]: the pattern's words so far match the key's first j words.
    let mut matched = vec![false; key.len() + 1];
    matched[0] = true;
    for word in &pattern {
        let mut next = vec![false; key.len() + 1];
        for j in 0..=key.len() {
            if *word == "#" {
                // Zero words, or one more word than a shorter match.
                next[j] = matched[j] || (j > 0 && next[j - 1]);
            } else if j > 0 {
                next[j] = matched[j - 1] && (word == "*" || *word == key[j - 1]);
            }
        }
        matched = next;
    }
    matched[key.len()]
}

#[cfg(test)]
mod tests;
