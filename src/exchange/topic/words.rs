//! A trie node's literal words: each word packed into a [`Key`] and hashed
//! once per lookup ([`Probe`]), and a node's edges in a linear-probing
//! table read through a fixed window ([`Words`]).

use std::sync::Arc;

use super::Node;

/// Longest word packed whole into a [`Key`].
pub(super) const SHORT: usize = 15;

/// A word packed into two integers so that comparing it is two integer
/// compares, which compile to conditional moves rather than a branch or a
/// `memcmp` call: bytes 0–7 and 8–14 little-endian, and in the top byte the
/// length plus one, or `LONG` for a longer word (then only its first
/// [`SHORT`] bytes are packed and equal keys still need the whole word
/// compared). `[0, 0]` is no word's key, so it marks a vacant slot.
pub(super) type Key = [u64; 2];

/// The top byte of the [`Key`] of a word longer than [`SHORT`].
pub(super) const LONG: u64 = 0xFF;

/// Whether `key` packs a word longer than [`SHORT`] (only its first bytes).
#[inline(always)]
pub(super) fn is_long(key: Key) -> bool {
    key[1] >> 56 == LONG
}

/// The length of the first word of `bytes` (up to the first `.`) and its
/// [`Key`], in one pass: splitting a key and packing its words cost about as
/// much as the lookups of a word, so they share the loop.
#[inline(always)]
pub(super) fn pack_first(bytes: &[u8]) -> (usize, Key) {
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
pub(super) struct Probe<'k> {
    /// The packed form of `bytes`.
    key: Key,
    /// [`word_hash`] of `bytes`: picks the home slot.
    hash: u64,
    /// The word, for comparing long words.
    bytes: &'k [u8],
}

impl<'k> Probe<'k> {
    /// Prepares `word`, already packed into `key` (by [`key_words`](super::key_words) or
    /// [`pattern_words`](super::pattern_words)), for lookups in a trie with this `seed`.
    #[inline(always)]
    pub(super) fn packed(seed: u64, word: &'k [u8], key: Key) -> Self {
        Probe { key, hash: word_hash(seed, key, word), bytes: word }
    }

    /// Whether this is a word longer than [`SHORT`], which its key alone does
    /// not tell apart from others.
    #[inline(always)]
    pub(super) fn is_long(&self) -> bool {
        is_long(self.key)
    }
}

/// A literal edge (the word and, inline, the node it leads to), or a vacant
/// slot of a [`Words`] table.
#[derive(Debug, Clone)]
pub(super) struct Edge<D> {
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
    pub(super) fn vacant() -> Self {
        Edge { key: [0, 0], long: None, node: Node::empty() }
    }

    /// Whether this edge is for `probe`'s word.
    #[inline(always)]
    pub(super) fn matches(&self, probe: &Probe<'_>) -> bool {
        self.key == probe.key
            && (!probe.is_long() || self.long.as_deref().is_some_and(|w| **w == *probe.bytes))
    }

    /// Whether this is a vacant slot.
    pub(super) fn is_vacant(&self) -> bool {
        self.key == [0, 0]
    }

    /// The [`word_hash`] of the word, recomputed when the table is laid out
    /// anew rather than stored in every slot.
    pub(super) fn hash(&self, seed: u64) -> u64 {
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
pub(super) struct Words<D> {
    // The fields are the parent's and its tests' to read, not to write.
    /// The slots, `None` rather than empty; the unit of copy-on-write.
    pub(super) slots: Option<Arc<[Edge<D>]>>,
    /// Slots a lookup reads; 0 without edges.
    pub(super) window: u32,
    /// Occupied slots.
    pub(super) len: u32,
}

impl<D> Words<D> {
    /// No edges.
    pub(super) fn new() -> Self {
        Words { slots: None, window: 0, len: 0 }
    }

    /// The slots (empty without edges).
    pub(super) fn slots(&self) -> &[Edge<D>] {
        self.slots.as_deref().unwrap_or_default()
    }

    /// Whether the node has no literal edge.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_none()
    }

    /// The number of home slots, a power of two (0 without edges).
    pub(super) fn capacity(&self) -> usize {
        (self.slots().len() + 1).saturating_sub(self.window as usize)
    }

    /// The edges (occupied slots).
    pub(super) fn edges(&self) -> impl Iterator<Item = &Edge<D>> {
        self.slots().iter().filter(|edge| !edge.is_vacant())
    }

    /// The `window` slots where `probe`'s word would be, and where they start.
    #[inline(always)]
    pub(super) fn window(&self, probe: &Probe<'_>) -> (usize, &[Edge<D>]) {
        let slots = self.slots();
        let window = self.window as usize;
        // The capacity less one, as `slots.len() == capacity + window - 1`
        // (0 without edges, when both are 0 and the window is empty).
        let home = probe.hash as usize & (slots.len() - window);
        (home, &slots[home..home + window])
    }

    /// The slot of the edge for `probe`'s word.
    #[inline(always)]
    pub(super) fn position(&self, probe: &Probe<'_>) -> Option<usize> {
        let (home, window) = self.window(probe);
        let mut found = None;
        for (i, edge) in window.iter().enumerate() {
            found = if edge.matches(probe) { Some(home + i) } else { found };
        }
        found
    }

    /// The child for `probe`'s word.
    #[inline(always)]
    pub(super) fn get(&self, probe: &Probe<'_>) -> Option<&Node<D>> {
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
    pub(super) fn child_mut(&mut self, at: usize) -> &mut Node<D> {
        let slots = self.slots.as_mut().expect("a slot was found, so there are edges");
        &mut Arc::make_mut(slots)[at].node
    }

    /// The child for `probe`'s word, created empty if missing.
    pub(super) fn get_or_insert(&mut self, seed: u64, probe: &Probe<'_>) -> &mut Node<D> {
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
    pub(super) fn place(&mut self, seed: u64, hash: u64, edge: Edge<D>) -> usize {
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
    pub(super) fn remove(&mut self, seed: u64, at: usize) {
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
pub(super) fn word_hash(seed: u64, key: Key, word: &[u8]) -> u64 {
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
