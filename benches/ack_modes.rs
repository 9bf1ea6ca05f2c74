//! 1→1 through a direct exchange in each acknowledgement mode, beside the
//! raw channel.
//!
//! Group `ack_modes_1to1` (elements: messages), all on the same topology
//! (direct exchange, 1,024 pool keys bound to one queue), one publisher
//! thread and one consumer thread:
//!
//! * `raw_channel`: the 1→1 raw baseline ([`N`] messages; see `common`).
//! * `raw_channel_message_clone`: the bus publisher's message clone alone,
//!   moved through the bare channel (the floor for the bus; see `common`).
//! * `bus_auto_ack`: an auto-ack consumer, no prefetch limit.
//! * `bus_auto_ack_statistics_off`: the same on a broker with
//!   `BrokerOptions::statistics` off.
//! * `bus_manual_prefetch_1000`: a manual-ack consumer at prefetch 1,000
//!   acking every delivery.
//! * `bus_manual_prefetch_1000_statistics_off`: the same with statistics off.
//! * `bus_manual_prefetch_1`: manual ack at prefetch 1: each message waits
//!   for the previous ack, so this measures the publish → deliver → ack →
//!   next-delivery hand-off; it moves [`N_PREFETCH_1`] messages per iteration.
//!
//! `bus_manual_* ÷ bus_auto_ack` is what acknowledgement costs; each ÷
//! `raw_channel` is the ratio to the channel. Every other `bus_*` runs with
//! statistics on (the default), so `bus_X ÷ bus_X_statistics_off` is the
//! throughput with statistics ÷ without (target ≥ 0.95): at prefetch 1,000
//! each message is counted three times (published, delivered, and
//! acknowledged on an atomic of the queue), auto-ack twice (published,
//! delivered). Criterion runs the two one after the other, not interleaved,
//! so a drift of the machine between them shows in the ratio either way;
//! `examples/bench.rs statistics` pairs them rep by rep in alternating order.
//!
//! Run: `cargo bench --bench ack_modes`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Pool, bench_raw_1to1, bench_raw_clone_1to1, configure, timed_pair};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, QueueOptions,
};

/// Messages per timed iteration (auto-ack, prefetch 1,000, raw).
const N: usize = 50_000;
/// Messages per timed iteration at prefetch 1 (a thread hand-off per message).
const N_PREFETCH_1: usize = 5_000;

/// The bus 1→1: publish `n` through a direct exchange, the consumer receives
/// them (and acks each if `options` is manual); the broker keeps message
/// statistics if `statistics`.
fn bench_bus(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    pool: &Pool,
    n: usize,
    options: ConsumeOptions,
    statistics: bool,
) {
    let broker = Broker::with_options(BrokerOptions { statistics, ..Default::default() });
    let conn = broker.connect();
    conn.declare_exchange("direct", ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    for sample in &pool.samples {
        conn.bind_queue("q", "direct", &sample.routing_key, FieldTable::new()).unwrap();
    }
    let manual = !options.auto_ack;
    let consumer = conn.consume("q", options).unwrap();
    for i in 0..pool.samples.len() {
        assert_eq!(conn.publish("direct", pool.key(i), pool.message(i)).unwrap().queues(), 1);
        let d = consumer.recv_timeout(Duration::from_secs(5)).expect("routed message arrives");
        if manual {
            d.ack().unwrap();
        }
    }
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_pair(
                iters,
                || {
                    for i in 0..n {
                        conn.publish("direct", pool.key(i), pool.message(i)).expect("publish");
                    }
                },
                || {
                    for _ in 0..n {
                        let d = consumer.recv().expect("consumer alive");
                        black_box(d.body().len());
                        if manual {
                            d.ack().expect("ack");
                        }
                    }
                },
            )
        })
    });
}

fn ack_modes(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("ack_modes_1to1");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));
    bench_raw_1to1(&mut group, "raw_channel", &pool, N);
    bench_raw_clone_1to1(&mut group, "raw_channel_message_clone", &pool, N);
    let auto_ack = ConsumeOptions { auto_ack: true, ..Default::default() };
    bench_bus(&mut group, "bus_auto_ack", &pool, N, auto_ack.clone(), true);
    bench_bus(&mut group, "bus_auto_ack_statistics_off", &pool, N, auto_ack, false);
    let prefetch_1000 = ConsumeOptions { prefetch: 1000, ..Default::default() };
    bench_bus(&mut group, "bus_manual_prefetch_1000", &pool, N, prefetch_1000.clone(), true);
    bench_bus(&mut group, "bus_manual_prefetch_1000_statistics_off", &pool, N, prefetch_1000, false);
    bench_bus(
        &mut group,
        "bus_manual_prefetch_1",
        &pool,
        N_PREFETCH_1,
        ConsumeOptions { prefetch: 1, ..Default::default() },
        true,
    );
    group.finish();
}

criterion_group!(benches, ack_modes);
criterion_main!(benches);
