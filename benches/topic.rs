//! Topic routing with 10,000 bindings, publish only, beside the raw channel
//! and a naive linear scan.
//!
//! The exchange holds [`BINDINGS`] patterns of 1–5 words, each word ~1 % `#`,
//! ~10 % `*`, else one of the 100 vocabulary words (deterministic xorshift),
//! spread over [`QUEUES`] queues with no consumers. Keys are the pool's
//! 4-word keys. The patterns are random, so a key reaches several queues
//! (mostly through the bare `#` bindings; setup prints the average): each
//! publish enqueues that many times where the channel sends once.
//!
//! Group `topic_publish_only_10k_bindings` (elements: messages), one thread:
//!
//! * `raw_channel`: [`N`] pool messages sent into an unbounded channel
//!   (drained outside the timer).
//! * `bus`: the same [`N`] messages published with their keys; the queues are
//!   purged between iterations, outside the timer.
//! * `naive_linear_scan`: [`NAIVE_KEYS`] keys each matched against all
//!   10,000 patterns by a simple reference matcher (matching only, no
//!   enqueue), so `bus ÷ naive_linear_scan` (elements/s) is a lower bound of
//!   the router's speedup over a scan.
//!
//! Setup checks that the bus and the naive matcher route every pool key to
//! the same number of queues.
//!
//! Run: `cargo bench --bench topic`.

mod common;

use std::hint::black_box;

use common::workload::{NaiveRouter, topic_patterns};
use common::{Pool, Raw, bench_publish_only, configure};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{Broker, ExchangeKind, ExchangeOptions, FieldTable, QueueOptions};

/// Messages per timed iteration.
const N: usize = 20_000;
/// Bindings on the topic exchange.
const BINDINGS: usize = 10_000;
/// Queues the bindings lead to.
const QUEUES: usize = 100;
/// Keys per iteration of the naive linear scan (it is slow).
const NAIVE_KEYS: usize = 256;

fn topic_publish_only_10k_bindings(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("topic_publish_only_10k_bindings");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));

    let raw = Raw::new();
    bench_publish_only(&mut group, "raw_channel", N, |i| raw.send(pool.raw(i)), || raw.drain());

    let patterns = topic_patterns(&pool.vocab, BINDINGS, QUEUES);
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("tq{i}")).collect();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("topic", ExchangeKind::Topic, ExchangeOptions::default()).unwrap();
    for queue in &queues {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    for (pattern, queue) in &patterns {
        conn.bind_queue(&queues[*queue], "topic", pattern, FieldTable::new()).unwrap();
    }
    let purge = || {
        for queue in &queues {
            conn.purge_queue(queue).unwrap();
        }
    };
    // Sanity: the bus and the naive matcher agree on every pool key.
    let naive = NaiveRouter::new(&patterns);
    let mut reached = 0;
    for (i, sample) in pool.samples.iter().enumerate() {
        let routed = conn.publish("topic", pool.key(i), pool.message(i)).unwrap();
        assert_eq!(routed.queues(), naive.route(&sample.routing_key, QUEUES).len(), "{}", sample.routing_key);
        reached += routed.queues();
    }
    purge();
    eprintln!(
        "topic: {} distinct bindings; a key reaches {:.1} of {QUEUES} queues on average",
        broker.bindings().len(),
        reached as f64 / pool.samples.len() as f64
    );

    bench_publish_only(
        &mut group,
        "bus",
        N,
        |i| {
            conn.publish("topic", pool.key(i), pool.message(i)).expect("publish");
        },
        purge,
    );

    group.throughput(Throughput::Elements(NAIVE_KEYS as u64));
    let keys: Vec<&str> = (0..NAIVE_KEYS).map(|i| pool.key(i)).collect();
    group.bench_function("naive_linear_scan", |b| {
        b.iter(|| black_box(&keys).iter().map(|key| naive.route(key, QUEUES).len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, topic_publish_only_10k_bindings);
criterion_main!(benches);
