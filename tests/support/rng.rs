//! A small, seeded generator for the tests' random cases: a failing case
//! is reproduced by its seed (xorshift64).

#![allow(dead_code)]

pub struct Rng(pub u64);

impl Rng {
    /// A generator for case `seed` (any value; 0 is mapped away from the
    /// all-zero state).
    pub fn for_case(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}
