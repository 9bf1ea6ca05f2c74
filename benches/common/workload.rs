//! The generated workload shared by the criterion benches (`mod common`)
//! and `examples/bench.rs` (through `#[path]`): a deterministic random
//! generator, the word vocabulary, the topic patterns and a naive topic
//! router to check and compare against. One copy, so both tools measure
//! the same topology.
#![allow(dead_code)] // Each user takes part of this module.

/// Words in the vocabulary routing keys and topic patterns are drawn from.
pub const VOCAB: usize = 100;

/// A tiny deterministic xorshift64 generator.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `VOCAB` distinct words: `w`, an index, 0–4 letters (e.g. `w17abc`).
pub fn vocabulary() -> Vec<String> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    (0..VOCAB)
        .map(|i| {
            let extra = rng.below(5);
            let mut w = format!("w{i}");
            w.extend((0..extra).map(|_| char::from(b'a' + rng.below(26) as u8)));
            w
        })
        .collect()
}

/// `count` patterns of 1–5 words: ~1 % `#`, ~10 % `*`, else a vocabulary
/// word; each with the index of the queue (of `queues`) it leads to.
pub fn topic_patterns(vocab: &[String], count: usize, queues: usize) -> Vec<(String, usize)> {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    (0..count)
        .map(|i| {
            let len = 1 + rng.below(5);
            let words: Vec<&str> = (0..len)
                .map(|_| match rng.below(1000) {
                    0..10 => "#",
                    10..110 => "*",
                    _ => vocab[rng.below(vocab.len())].as_str(),
                })
                .collect();
            (words.join("."), i % queues)
        })
        .collect()
}

/// A reference topic router: every binding checked in turn.
pub struct NaiveRouter {
    bindings: Vec<(Vec<String>, usize)>,
}

impl NaiveRouter {
    pub fn new(patterns: &[(String, usize)]) -> Self {
        let bindings = patterns.iter().map(|(p, q)| (p.split('.').map(String::from).collect(), *q)).collect();
        NaiveRouter { bindings }
    }

    /// The distinct queues (of `queues`) `key` reaches. A binding to a queue
    /// already reached is not matched again.
    pub fn route(&self, key: &str, queues: usize) -> Vec<usize> {
        let words: Vec<&str> = key.split('.').collect();
        let mut hit = vec![false; queues];
        for (pattern, queue) in &self.bindings {
            if !hit[*queue] && topic_matches(pattern, &words) {
                hit[*queue] = true;
            }
        }
        hit.iter().enumerate().filter(|(_, h)| **h).map(|(q, _)| q).collect()
    }
}

/// Whether pattern words `p` match key words `k`: `*` is one word, `#` zero or more.
fn topic_matches(p: &[String], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((w, rest)) if w == "#" => (0..=k.len()).any(|skip| topic_matches(rest, &k[skip..])),
        Some((w, rest)) if w == "*" => !k.is_empty() && topic_matches(rest, &k[1..]),
        Some((w, rest)) => k.first() == Some(&w.as_str()) && topic_matches(rest, &k[1..]),
    }
}
