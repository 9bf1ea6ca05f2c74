//! 1→1 through a direct exchange, auto-ack, beside the raw channel.
//!
//! Group `direct_1to1_auto_ack` (elements: messages):
//!
//! * `raw_channel`: one thread sends [`N`] pool messages (a clone of each
//!   message's own `Arc`) through an unbounded crossbeam channel, another
//!   receives and drops them. The baseline of the ratio.
//! * `raw_channel_message_clone`: the same, but sending what the bus
//!   publisher sends: a clone of the `Message` (two refcount increments),
//!   moved and dropped on the consumer thread.
//! * `bus`: one thread publishes the same [`N`] clones to a direct exchange
//!   whose 1,024 bindings (one per pool key) all lead to queue `q`; an
//!   auto-ack consumer (no prefetch limit) on another thread receives them.
//!
//! Timed from the first send until the consumer holds the N-th message;
//! topology and consumer are set up once. Ratio = bus elements/s ÷
//! `raw_channel` elements/s.
//!
//! Group `direct_publish_only` (elements: messages), one thread, the same
//! direct exchange and 1,024 bindings, one queue with no consumer:
//!
//! * `raw_channel`: [`N`] pooled `Arc` clones sent into an unbounded channel
//!   (drained outside the timer).
//! * `raw_channel_message_clone`: the same with the bus publisher's message
//!   clone instead of the `Arc` clone.
//! * `bus_by_name`: `Connection::publish("direct", key, message)`, the
//!   exchange looked up by name on every publish.
//! * `bus_publisher_handle`: `Publisher::publish(key, message)` through a
//!   handle resolved once with `Connection::publisher("direct")`.
//!
//! The queue is purged between iterations, outside the timer.
//!
//! Run: `cargo bench --bench direct`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Pool, Raw, bench_publish_only, bench_raw_1to1, bench_raw_clone_1to1, configure, timed_pair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{
    Broker, Connection, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions,
};

/// Messages per timed iteration.
const N: usize = 50_000;

/// A broker with a direct exchange `direct` whose every pool key leads to queue `q`.
fn direct_topology(pool: &Pool) -> (Broker, Connection) {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("direct", ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    for sample in &pool.samples {
        conn.bind_queue("q", "direct", &sample.routing_key, FieldTable::new()).unwrap();
    }
    (broker, conn)
}

fn direct_1to1_auto_ack(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("direct_1to1_auto_ack");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));
    bench_raw_1to1(&mut group, "raw_channel", &pool, N);
    bench_raw_clone_1to1(&mut group, "raw_channel_message_clone", &pool, N);

    let (_broker, conn) = direct_topology(&pool);
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    // Sanity: every key routes, so the timed loop cannot hang on a miss.
    for i in 0..pool.samples.len() {
        assert_eq!(conn.publish("direct", pool.key(i), pool.message(i)).unwrap().queues(), 1);
        consumer.recv_timeout(Duration::from_secs(5)).expect("routed message arrives");
    }
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            timed_pair(
                iters,
                || {
                    for i in 0..N {
                        conn.publish("direct", pool.key(i), pool.message(i)).expect("publish");
                    }
                },
                || {
                    for _ in 0..N {
                        black_box(consumer.recv().expect("consumer alive").body().len());
                    }
                },
            )
        })
    });
    group.finish();
}

fn direct_publish_only(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("direct_publish_only");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));

    let raw = Raw::new();
    bench_publish_only(&mut group, "raw_channel", N, |i| raw.send(pool.raw(i)), || raw.drain());
    let raw_clone = Raw::<Message>::new();
    bench_publish_only(
        &mut group,
        "raw_channel_message_clone",
        N,
        |i| raw_clone.send(pool.message(i)),
        || raw_clone.drain(),
    );

    let (_broker, conn) = direct_topology(&pool);
    let purge = || {
        conn.purge_queue("q").unwrap();
    };
    for i in 0..pool.samples.len() {
        assert_eq!(conn.publish("direct", pool.key(i), pool.message(i)).unwrap().queues(), 1);
    }
    purge();
    bench_publish_only(
        &mut group,
        "bus_by_name",
        N,
        |i| {
            conn.publish("direct", pool.key(i), pool.message(i)).expect("publish");
        },
        purge,
    );
    let publisher = conn.publisher("direct").unwrap();
    bench_publish_only(
        &mut group,
        "bus_publisher_handle",
        N,
        |i| {
            publisher.publish(pool.key(i), pool.message(i)).expect("publish");
        },
        purge,
    );
    group.finish();
}

criterion_group!(benches, direct_1to1_auto_ack, direct_publish_only);
criterion_main!(benches);
