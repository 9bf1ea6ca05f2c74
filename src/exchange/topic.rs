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

/// Longest word packed whole into a [`Key`].
const SHORT: usize = 15;

/// A word packed into two integers so that comparing it is two integer
/// compares, which compile to conditional moves rather than a branch or a
/// `memcmp` call: bytes 0–7 and 8–14 little-endian, and in the top byte the
/// length plus one, or `LONG` for a longer word (then only its first
/// [`SHORT`] bytes are packed and equal keys still need the whole word
/// compared). `[0, 0]` is no word's key, so it marks a vacant slot.
type Key = [u64; 2];

/// The top byte of the [`Key`] of a word longer than [`SHORT`].
const LONG: u64 = 0xFF;

/// Whether `key` packs a word longer than [`SHORT`] (only its first bytes).
#[inline(always)]
fn is_long(key: Key) -> bool {
    key[1] >> 56 == LONG
}

/// The length of the first word of `bytes` (up to the first `.`) and its
/// [`Key`], in one pass: splitting a key and packing its words cost about as
/// much as the lookups of a word, so they share the loop.
#[inline(always)]
fn pack_first(bytes: &[u8]) -> (usize, Key) {
    let mut key = [0, 0];
    let mut len = 0;
    for &b in bytes {
        if b == b'.' {
            break;
        }
        // Shifts rather than a copy into a padded buffer, which would compile
        // to a `memcpy` call costing more than the rest of the lookup.
        if len < SHORT {
            key[len / 8] |= u64::from(b) << (8 * (len % 8));
        }
        len += 1;
    }
    let tag = if len <= SHORT { len as u64 + 1 } else { LONG };
    key[1] |= tag << 56;
    (len, key)
}

/// One key (or pattern) word, prepared once for the lookups in every active
/// node.
struct Probe<'k> {
    /// The packed form of `bytes`.
    key: Key,
    /// [`word_hash`] of `bytes`: picks the home slot.
    hash: u64,
    /// The word, for comparing long words.
    bytes: &'k [u8],
}

impl<'k> Probe<'k> {
    /// Prepares `word`, already packed into `key` (by [`key_words`] or
    /// [`pattern_words`]), for lookups in a trie with this `seed`.
    #[inline(always)]
    fn packed(seed: u64, word: &'k [u8], key: Key) -> Self {
        Probe { key, hash: word_hash(seed, key, word), bytes: word }
    }

    /// Whether this is a word longer than [`SHORT`], which its key alone does
    /// not tell apart from others.
    #[inline(always)]
    fn is_long(&self) -> bool {
        is_long(self.key)
    }
}

/// A literal edge (the word and, inline, the node it leads to), or a vacant
/// slot of a [`Words`] table.
#[derive(Debug, Clone)]
struct Edge<D> {
    /// The packed form of the word; `[0, 0]` in a vacant slot.
    key: Key,
    /// The whole word if it is longer than [`SHORT`]; boxed twice so that
    /// the pointer is thin.
    long: Option<Box<Box<[u8]>>>,
    /// The node for the pattern prefix extended by the word.
    node: Node<D>,
}

impl<D> Edge<D> {
    /// A slot no probe matches.
    fn vacant() -> Self {
        Edge { key: [0, 0], long: None, node: Node::empty() }
    }

    /// Whether this edge is for `probe`'s word.
    #[inline(always)]
    fn matches(&self, probe: &Probe<'_>) -> bool {
        self.key == probe.key
            && (!probe.is_long() || self.long.as_deref().is_some_and(|w| **w == *probe.bytes))
    }

    /// Whether this is a vacant slot.
    fn is_vacant(&self) -> bool {
        self.key == [0, 0]
    }

    /// The [`word_hash`] of the word, recomputed when the table is laid out
    /// anew rather than stored in every slot.
    fn hash(&self, seed: u64) -> u64 {
        word_hash(seed, self.key, self.long.as_deref().map_or(&[], |w| w))
    }
}

/// A node's literal edges in a table where the matcher finds a word without
/// a branch that depends on the word.
///
/// Linear probing without wrap-around: an edge sits at or after its home slot
/// `hash & (capacity - 1)` (capacity a power of two, at least twice the edges
/// when laid out), and the table runs `window - 1` slots past the capacity so
/// that no probe run wraps. `window` is at least the longest distance of an
/// edge from its home plus one, so a lookup reads exactly `window` slots from
/// the home slot (one to a few) and keeps the one whose key matches: the same
/// instructions hit or miss, where an early-exit probe loop mispredicted about
/// once per active node.
///
/// The edges stay in home order (Robin Hood order), which is the layout with
/// the least longest distance from home that linear probing allows; inserts
/// and removes keep that order by shifting the one run of edges they touch,
/// so changing a shared table costs one copy of it, and the table is laid out
/// anew (hashing and sorting every edge) only when it doubles or shrinks.
#[derive(Debug, Clone)]
struct Words<D> {
    /// The slots, `None` rather than empty; the unit of copy-on-write.
    slots: Option<Arc<[Edge<D>]>>,
    /// Slots a lookup reads; 0 without edges.
    window: u32,
    /// Occupied slots.
    len: u32,
}

impl<D> Words<D> {
    /// No edges.
    fn new() -> Self {
        Words { slots: None, window: 0, len: 0 }
    }

    /// The slots (empty without edges).
    fn slots(&self) -> &[Edge<D>] {
        self.slots.as_deref().unwrap_or_default()
    }

    /// Whether the node has no literal edge.
    fn is_empty(&self) -> bool {
        self.slots.is_none()
    }

    /// The number of home slots, a power of two (0 without edges).
    fn capacity(&self) -> usize {
        (self.slots().len() + 1).saturating_sub(self.window as usize)
    }

    /// The edges (occupied slots).
    fn edges(&self) -> impl Iterator<Item = &Edge<D>> {
        self.slots().iter().filter(|edge| !edge.is_vacant())
    }

    /// The `window` slots where `probe`'s word would be, and where they start.
    #[inline(always)]
    fn window(&self, probe: &Probe<'_>) -> (usize, &[Edge<D>]) {
        let slots = self.slots();
        let window = self.window as usize;
        // The capacity less one, as `slots.len() == capacity + window - 1`
        // (0 without edges, when both are 0 and the window is empty).
        let home = probe.hash as usize & (slots.len() - window);
        (home, &slots[home..home + window])
    }

    /// The slot of the edge for `probe`'s word.
    #[inline(always)]
    fn position(&self, probe: &Probe<'_>) -> Option<usize> {
        let (home, window) = self.window(probe);
        let mut found = None;
        for (i, edge) in window.iter().enumerate() {
            found = if edge.matches(probe) { Some(home + i) } else { found };
        }
        found
    }

    /// The child for `probe`'s word.
    #[inline(always)]
    fn get(&self, probe: &Probe<'_>) -> Option<&Node<D>> {
        let (_, window) = self.window(probe);
        if probe.is_long() {
            return window.iter().find(|edge| edge.matches(probe)).map(|edge| &edge.node);
        }
        // Keys are unique within a table, so the last hit is the only one.
        let mut found = None;
        for edge in window {
            found = if edge.key == probe.key { Some(&edge.node) } else { found };
        }
        found
    }
}

impl<D: Clone> Words<D> {
    /// The child in slot `at`, for changing: copies the table first if
    /// another snapshot shares it.
    fn child_mut(&mut self, at: usize) -> &mut Node<D> {
        let slots = self.slots.as_mut().expect("a slot was found, so there are edges");
        &mut Arc::make_mut(slots)[at].node
    }

    /// The child for `probe`'s word, created empty if missing.
    fn get_or_insert(&mut self, seed: u64, probe: &Probe<'_>) -> &mut Node<D> {
        let at = match self.position(probe) {
            Some(at) => at,
            None => {
                let long = probe.is_long().then(|| Box::new(Box::from(probe.bytes)));
                let edge = Edge { key: probe.key, long, node: Node::empty() };
                if 2 * (self.len as usize + 1) > self.capacity() {
                    let edges = self.edges().cloned().chain([edge]).collect();
                    self.lay_out(seed, edges);
                    self.position(probe).expect("just inserted")
                } else {
                    self.place(seed, probe.hash, edge)
                }
            }
        };
        self.child_mut(at)
    }

    /// Puts `edge` (whose word hashes to `hash`) into a table with room for
    /// it, in home order: it takes the slot of the first edge homed after
    /// it, or the first vacant slot, and the run of edges from there to the
    /// next vacant slot moves up one. Returns its slot.
    fn place(&mut self, seed: u64, hash: u64, edge: Edge<D>) -> usize {
        let mask = self.capacity() - 1;
        let home = hash as usize & mask;
        let slots = self.slots();
        let home_of = |e: &Edge<D>| e.hash(seed) as usize & mask;
        // `at`: where the edge goes; `gap`: the vacant slot (or the end) that
        // the run from `at` moves up into.
        let mut at = home;
        while at < slots.len() && !slots[at].is_vacant() && home_of(&slots[at]) <= home {
            at += 1;
        }
        let mut window = self.window as usize;
        window = window.max(at - home + 1);
        let mut gap = at;
        while gap < slots.len() && !slots[gap].is_vacant() {
            // Moving up one makes this edge one slot further from home.
            window = window.max(gap + 1 - home_of(&slots[gap]) + 1);
            gap += 1;
        }
        let len = mask + window;
        if len == slots.len() && gap < len {
            let slots = Arc::make_mut(self.slots.as_mut().expect("a table with room has slots"));
            slots[at..=gap].rotate_right(1);
            slots[at] = edge;
        } else {
            // The window grew: a new, longer table, written in one pass.
            let tail = slots.get(gap + 1..).unwrap_or_default();
            let table: Arc<[Edge<D>]> = slots[..at]
                .iter()
                .cloned()
                .chain([edge])
                .chain(slots[at..gap].iter().cloned())
                .chain(tail.iter().cloned())
                .chain(std::iter::repeat_with(Edge::vacant))
                .take(len)
                .collect();
            self.slots = Some(table);
            self.window = window as u32;
        }
        self.len += 1;
        at
    }

    /// Drops the edge in slot `at`: the displaced edges after it move down
    /// one (backward-shift deletion), so home order and every distance from
    /// home hold. `window` stays as it was, an upper bound. Only a table left
    /// an eighth full is laid out anew, smaller.
    fn remove(&mut self, seed: u64, at: usize) {
        self.len -= 1;
        // The last edge gone falls in here too, and `lay_out` of no edges
        // leaves an empty table.
        if 8 * (self.len as usize) < self.capacity() {
            let slots = self.slots();
            let edges =
                slots[..at].iter().chain(&slots[at + 1..]).filter(|e| !e.is_vacant()).cloned().collect();
            self.lay_out(seed, edges);
            return;
        }
        let mask = self.capacity() - 1;
        let slots = Arc::make_mut(self.slots.as_mut().expect("an edge is removed, so there are edges"));
        let mut end = at + 1;
        while end < slots.len() && !slots[end].is_vacant() && slots[end].hash(seed) as usize & mask < end {
            end += 1;
        }
        slots[at..end].rotate_left(1);
        slots[end - 1] = Edge::vacant();
    }

    /// Replaces the table with one holding `edges`, at the capacity for
    /// their number and with the tightest `window`.
    fn lay_out(&mut self, seed: u64, edges: Vec<Edge<D>>) {
        if edges.is_empty() {
            *self = Words::new();
            return;
        }
        let len = edges.len();
        let capacity = (len * 2).next_power_of_two();
        let mut homed: Vec<(usize, Edge<D>)> =
            edges.into_iter().map(|edge| (edge.hash(seed) as usize & (capacity - 1), edge)).collect();
        // Placed in home order, each edge takes the first free slot at or
        // after its home: the layout Robin Hood hashing converges to, whose
        // longest distance from home (so `window`) is the least that linear
        // probing allows, as first-come-first-served minimises the longest
        // wait of unit jobs.
        homed.sort_unstable_by_key(|&(home, _)| home);
        let mut slots = Vec::with_capacity(capacity + homed.len());
        let mut window = 1;
        for (home, edge) in homed {
            while slots.len() < home {
                slots.push(Edge::vacant());
            }
            window = window.max(slots.len() - home + 1);
            slots.push(edge);
        }
        slots.resize_with(capacity + window - 1, Edge::vacant);
        self.slots = Some(slots.into());
        self.window = window as u32;
        self.len = len as u32;
    }
}

/// The hash of one word, under a trie's `seed`, from its [`Key`] and, for a
/// long word, its bytes (a short word's key is the whole word).
///
/// A folded multiply (the construction of wyhash and foldhash): a few
/// nanoseconds, where SipHash costs tens and was paid per active node. The
/// trade-off is HashDoS resistance: this is not a keyed PRF, only seeded per
/// trie from std's `RandomState`, so a binding set cannot be built offline to
/// collide, but someone who can bind many words and time routing might still
/// find collisions. They would widen one node's window, up to a scan of that
/// node on each lookup, and never change a result (keys and long words are
/// compared exactly). Bindings come from the embedding program, not from the
/// network, so speed wins here.
#[inline(always)]
fn word_hash(seed: u64, key: Key, word: &[u8]) -> u64 {
    /// Odd constants with well-spread bits (from wyhash).
    const M0: u64 = 0xA076_1D64_78BD_642F;
    /// See `M0`.
    const M1: u64 = 0xE703_7ED1_A0B4_28DB;
    /// The 128-bit product's halves xored: every input bit reaches the low
    /// bits, which pick the slot.
    fn fold(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }
    let mut h = fold(seed ^ key[0], M0);
    if is_long(key) {
        // The key holds the first bytes only: hash the rest too.
        for chunk in word[SHORT..].chunks(8) {
            h = fold(h ^ chunk.iter().rev().fold(0, |acc, &b| acc << 8 | u64::from(b)), M0);
        }
        h ^= word.len() as u64;
    }
    fold(h ^ key[1], M1)
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
    /// The [`word_hash`] seed of every node; clones share nodes, so they keep it.
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
mod tests {
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
}
