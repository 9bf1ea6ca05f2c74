//! Shared by every bench file (`mod common;`): the message pool, the raw
//! channel baseline and the producer/consumer timing harness.
//!
//! # The messages
//!
//! [`Pool`] holds [`POOL`] distinct pre-built messages: a 4-word routing key
//! (from a [`workload::VOCAB`]-word vocabulary), two headers (`region`, `kind`) and a
//! 64-byte `Bytes` body, each message also wrapped in its own `Arc`. Every
//! producer, raw or bus, cycles through the pool. Distinct messages mean
//! distinct refcounts: clones of one shared `Arc` would make every send
//! bounce one cache line between the cores and measure that instead of the
//! channel (`raw_baseline.rs` shows the difference).
//!
//! # The raw baseline
//!
//! The bus wraps each published message once in an `Arc` (its envelope) and
//! hands that to the queue's consumer through a crossbeam channel. The raw
//! baseline hands over `Arc::clone(&pool.arcs[i % POOL])` ([`Pool::raw`])
//! through a bare unbounded `crossbeam_channel` ([`Raw`]) and the consumer
//! thread drops it: a pointer and one refcount increment, the cheapest honest
//! way to move a message to another thread, i.e. the channel's own cost.
//! Fanout sends one `Arc` into each channel, as the bus shares its envelope
//! between queues.
//!
//! The bus publishes `pool.message(i)`, a clone of message `i % POOL`:
//! `Connection::publish` takes the message by value, and a `Message` clone
//! is two refcount increments (its properties and its body are shared), no
//! allocation. `direct.rs` and `raw_baseline.rs` also time that clone moved
//! through the bare channel (`raw_channel_message_clone`,
//! `pool_message_clone`): the floor for a caller who keeps its message.
//!
//! # Timing
//!
//! [`run_timed`] releases one producer (the calling thread) and its consumer
//! threads together and returns the time until the last consumer has
//! received its last message; [`timed_iters`] sums that over criterion's
//! iterations. Raw and bus groups use the same functions, so the only
//! difference between their figures is the bus.
#![allow(dead_code)] // Each bench file uses part of this module.

pub mod workload;
use workload::{XorShift, vocabulary};

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use crossbeam_channel::{Receiver, Sender, unbounded};
use interoffice::{FieldTable, FieldValue, Message};

/// Distinct messages in the pool.
pub const POOL: usize = 1024;
/// Body length in bytes.
pub const BODY_LEN: usize = 64;
/// Words per routing key.
pub const KEY_WORDS: usize = 4;
/// Distinct values of the `region` header (`region-0` …).
pub const REGIONS: usize = 10;
/// Distinct values of the `kind` header (`kind-0` …).
pub const KINDS: usize = 10;

/// What the raw channel carries: one pooled `Arc` per message, as the bus's envelope.
pub type RawMessage = Arc<Message>;

/// One pooled message and the routing key it is published with.
pub struct Sample {
    pub routing_key: String,
    pub message: Message,
}

/// The vocabulary and the [`POOL`] distinct messages.
pub struct Pool {
    pub vocab: Vec<String>,
    pub samples: Vec<Sample>,
    /// Each sample's message in its own `Arc`: what the raw channel sends.
    pub arcs: Vec<RawMessage>,
}

impl Pool {
    pub fn new() -> Self {
        let vocab = vocabulary();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let samples = (0..POOL)
            .map(|_| {
                let routing_key = (0..KEY_WORDS)
                    .map(|_| vocab[rng.below(vocab.len())].as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                let body: Vec<u8> = (0..BODY_LEN).map(|_| rng.next() as u8).collect();
                let headers = FieldTable::from([
                    ("region", FieldValue::from(format!("region-{}", rng.below(REGIONS)))),
                    ("kind", FieldValue::from(format!("kind-{}", rng.below(KINDS)))),
                ]);
                Sample { routing_key, message: Message::new(Bytes::from(body)).with_headers(headers) }
            })
            .collect::<Vec<Sample>>();
        let arcs = samples.iter().map(|s| Arc::new(s.message.clone())).collect();
        Pool { vocab, samples, arcs }
    }

    /// The routing key of message `i` (cycling).
    pub fn key(&self, i: usize) -> &str {
        &self.samples[i % POOL].routing_key
    }

    /// A clone of message `i` (cycling): what the bus side publishes.
    pub fn message(&self, i: usize) -> Message {
        self.samples[i % POOL].message.clone()
    }

    /// Message `i` (cycling) as the raw channel carries it: its own `Arc`, cloned.
    pub fn raw(&self, i: usize) -> RawMessage {
        Arc::clone(&self.arcs[i % POOL])
    }
}

/// A bare unbounded crossbeam channel: the raw baseline's queue.
pub struct Raw<T = RawMessage> {
    pub tx: Sender<T>,
    pub rx: Receiver<T>,
}

impl<T> Raw<T> {
    pub fn new() -> Self {
        let (tx, rx) = unbounded();
        Raw { tx, rx }
    }

    pub fn send(&self, item: T) {
        self.tx.send(item).expect("receiver alive");
    }

    pub fn recv(&self) -> T {
        self.rx.recv().expect("sender alive")
    }

    /// Drops whatever is queued (outside the timer).
    pub fn drain(&self) {
        self.rx.try_iter().for_each(drop);
    }
}

/// What a consumer does with a raw message: look at it, then drop it.
pub fn consume_raw(message: RawMessage) {
    black_box(message.body().len());
}

/// Runs each of `consumers` on its own thread and `produce` on this one, all
/// released together; returns the time from the release until the last
/// consumer finished.
pub fn run_timed<P, C>(produce: P, consumers: Vec<C>) -> Duration
where
    P: FnOnce(),
    C: FnOnce() + Send,
{
    let barrier = Barrier::new(consumers.len() + 1);
    thread::scope(|s| {
        let handles: Vec<_> = consumers
            .into_iter()
            .map(|consume| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    consume();
                    Instant::now()
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        produce();
        let end = handles.into_iter().map(|h| h.join().expect("consumer thread panicked")).max();
        end.unwrap_or_else(Instant::now).saturating_duration_since(start)
    })
}

/// `iters` runs of one producer (this thread) and one consumer thread, summed:
/// the body of a 1→1 `iter_custom`.
pub fn timed_pair<P, C>(iters: u64, produce: P, consume: C) -> Duration
where
    P: Fn(),
    C: Fn() + Sync,
{
    (0..iters).map(|_| run_timed(&produce, vec![&consume])).sum()
}

/// `iters` runs of `produce` alone on this thread, each followed by `reset`
/// outside the timer: the body of a publish-only `iter_custom`.
pub fn timed_publish_only<P, R>(iters: u64, produce: P, reset: R) -> Duration
where
    P: Fn(),
    R: Fn(),
{
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            produce();
            let elapsed = start.elapsed();
            reset();
            elapsed
        })
        .sum()
}

/// A publish-only benchmark on this thread: `publish(i)` for `i` in `0..n`
/// per iteration, then `reset` outside the timer (draining a channel,
/// purging queues).
pub fn bench_publish_only(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    publish: impl Fn(usize),
    reset: impl Fn(),
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| timed_publish_only(iters, || (0..n).for_each(&publish), &reset))
    });
}

/// The raw 1→1 baseline as a benchmark: `n` pool messages per iteration from
/// this thread to a consumer thread through one channel.
pub fn bench_raw_1to1(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, pool: &Pool, n: usize) {
    let raw = Raw::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_pair(
                iters,
                || (0..n).for_each(|i| raw.send(pool.raw(i))),
                || (0..n).for_each(|_| consume_raw(raw.recv())),
            )
        })
    });
}

/// The bus publisher's clone alone: `n` clones of pool messages (the clone
/// the bus side publishes) moved from this thread to a consumer thread
/// through one channel and dropped there: the raw channel fed exactly what
/// the bus is fed.
pub fn bench_raw_clone_1to1(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, pool: &Pool, n: usize) {
    let raw = Raw::<Message>::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_pair(
                iters,
                || (0..n).for_each(|i| raw.send(pool.message(i))),
                || (0..n).for_each(|_| drop(black_box(raw.recv()))),
            )
        })
    });
}

/// Short, flat-sampled groups: each iteration moves thousands of messages.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
}
