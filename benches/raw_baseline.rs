//! The raw crossbeam channel alone: why the benches cycle a pool of distinct
//! messages instead of cloning one shared `Arc`.
//!
//! Group `raw_channel_1to1` (elements: messages, [`N`] per iteration, one
//! producer thread, one consumer thread, unbounded channel):
//!
//! * `pool_arc_clone`: `Arc::clone` of each of the 1,024 pooled
//!   `Arc<Message>`s in turn: no allocation, and each refcount is touched
//!   once per 1,024 sends. The baseline every other bench uses.
//! * `shared_arc_clone`: `Arc::clone` of one `Arc<Message>` for every send:
//!   both threads hammer one refcount, whose cache line bounces between the
//!   cores on every send and drop.
//! * `pool_message_clone`: a clone of pool message `i % 1024` (two refcount
//!   increments: properties and body) moved through the channel and dropped
//!   on the consumer thread: what the bus publisher sends, since `publish`
//!   takes the message by value.
//! * `pool_arc_per_message`: the same clone wrapped in a fresh `Arc`, as the
//!   bus wraps each publish in an envelope.
//!
//! `shared_arc_clone ÷ pool_arc_clone` is the distortion a shared message
//! would bring into every ratio; `pool_message_clone ÷ pool_arc_clone` is
//! what the allocator (allocating on one thread, freeing on another) costs.
//!
//! Run: `cargo bench --bench raw_baseline`.

mod common;

use std::sync::Arc;

use common::{Pool, Raw, bench_raw_1to1, bench_raw_clone_1to1, configure, consume_raw, timed_pair};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use interoffice::Message;

/// Messages per timed iteration.
const N: usize = 50_000;

/// A 1→1 run sending `make(i)` for i in 0..N.
fn bench_send(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: impl Fn(usize) -> Arc<Message>) {
    let raw = Raw::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_pair(
                iters,
                || (0..N).for_each(|i| raw.send(make(i))),
                || (0..N).for_each(|_| consume_raw(raw.recv())),
            )
        })
    });
}

fn raw_channel_1to1(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("raw_channel_1to1");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));
    bench_raw_1to1(&mut group, "pool_arc_clone", &pool, N);
    bench_send(&mut group, "shared_arc_clone", |_| pool.raw(0));
    bench_raw_clone_1to1(&mut group, "pool_message_clone", &pool, N);
    bench_send(&mut group, "pool_arc_per_message", |i| Arc::new(pool.message(i)));
    group.finish();
}

criterion_group!(benches, raw_channel_1to1);
criterion_main!(benches);
