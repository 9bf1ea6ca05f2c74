//! 1→10 fanout, beside 10 raw channels.
//!
//! Group `fanout_1to10` (elements: deliveries, [`N`] × [`QUEUES`]):
//!
//! * `raw_channel`: one thread sends a clone of each pool message's `Arc`
//!   into each of 10 unbounded channels (the bus shares its envelope between
//!   queues the same way: the body is never copied per queue).
//! * `bus`: one thread publishes to a fanout exchange bound to 10 queues,
//!   one auto-ack consumer per queue.
//!
//! The machine has 2 cores, so on both sides the 10 receivers are drained by
//! [`CONSUMER_THREADS`] thread(s), each taking message i from each of its
//! receivers in turn. Timed until every delivery is received.
//!
//! Run: `cargo bench --bench fanout`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Pool, Raw, configure, consume_raw, run_timed};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{
    Broker, ConsumeOptions, Consumer, ExchangeKind, ExchangeOptions, FieldTable, QueueOptions,
};

/// Messages published per timed iteration.
const N: usize = 10_000;
/// Queues (and raw channels) the messages fan out to.
const QUEUES: usize = 10;
/// Threads draining the receivers (2 cores: one publisher, one drainer).
const CONSUMER_THREADS: usize = 1;

/// Splits `items` into `CONSUMER_THREADS` near-equal chunks.
fn per_thread<T>(items: &[T]) -> std::slice::Chunks<'_, T> {
    items.chunks(items.len().div_ceil(CONSUMER_THREADS))
}

fn fanout_1to10(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("fanout_1to10");
    configure(&mut group);
    group.throughput(Throughput::Elements((N * QUEUES) as u64));

    let raws: Vec<Raw> = (0..QUEUES).map(|_| Raw::new()).collect();
    group.bench_function("raw_channel", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let drainers = per_thread(&raws)
                        .map(|raws| {
                            move || {
                                for _ in 0..N {
                                    raws.iter().for_each(|raw| consume_raw(raw.recv()));
                                }
                            }
                        })
                        .collect();
                    run_timed(
                        || {
                            for i in 0..N {
                                raws.iter().for_each(|raw| raw.send(pool.raw(i)));
                            }
                        },
                        drainers,
                    )
                })
                .sum()
        })
    });

    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("fanout", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    let consumers: Vec<Consumer> = (0..QUEUES)
        .map(|i| {
            let name = format!("fq{i}");
            conn.declare_queue(&name, QueueOptions::default()).unwrap();
            conn.bind_queue(&name, "fanout", "", FieldTable::new()).unwrap();
            conn.consume(&name, ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap()
        })
        .collect();
    assert_eq!(conn.publish("fanout", pool.key(0), pool.message(0)).unwrap().queues(), QUEUES);
    for consumer in &consumers {
        consumer.recv_timeout(Duration::from_secs(5)).expect("routed message arrives");
    }
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let drainers = per_thread(&consumers)
                        .map(|consumers| {
                            move || {
                                for _ in 0..N {
                                    for consumer in consumers {
                                        black_box(consumer.recv().expect("consumer alive").body().len());
                                    }
                                }
                            }
                        })
                        .collect();
                    run_timed(
                        || {
                            for i in 0..N {
                                conn.publish("fanout", pool.key(i), pool.message(i)).expect("publish");
                            }
                        },
                        drainers,
                    )
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, fanout_1to10);
criterion_main!(benches);
