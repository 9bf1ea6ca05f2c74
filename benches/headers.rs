//! Headers routing with 100 bindings, publish only, beside the raw channel.
//!
//! The exchange holds [`BINDINGS`] bindings, binding `j` matching on
//! `region = region-(j % 10)` and `kind = kind-(j / 10)`, with `x-match: all`
//! for even `j` and `x-match: any` for odd `j`, leading to queue
//! `j % QUEUES`; no consumers. Each pool message carries one `region` and one
//! `kind` header (10 values each), so it matches at most one `all` binding
//! and ~10 `any` bindings (setup prints how many queues it reaches on
//! average).
//!
//! Group `headers_publish_only_100_bindings` (elements: messages), one
//! thread:
//!
//! * `raw_channel`: [`N`] pool messages sent into an unbounded channel
//!   (drained outside the timer).
//! * `bus`: the same [`N`] messages published to the headers exchange; the
//!   queues are purged between iterations, outside the timer.
//!
//! Run: `cargo bench --bench headers`.

mod common;

use common::{KINDS, Pool, REGIONS, Raw, bench_publish_only, configure};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{Broker, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, QueueOptions};

/// Messages per timed iteration.
const N: usize = 20_000;
/// Bindings on the headers exchange (each a distinct region × kind pair).
const BINDINGS: usize = REGIONS * KINDS;
/// Queues the bindings lead to.
const QUEUES: usize = 20;

fn headers_publish_only(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("headers_publish_only_100_bindings");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));

    let raw = Raw::new();
    bench_publish_only(&mut group, "raw_channel", N, |i| raw.send(pool.raw(i)), || raw.drain());

    let queues: Vec<String> = (0..QUEUES).map(|i| format!("hq{i}")).collect();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("headers", ExchangeKind::Headers, ExchangeOptions::default()).unwrap();
    for queue in &queues {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    for j in 0..BINDINGS {
        let args = FieldTable::from([
            ("x-match", FieldValue::String(if j % 2 == 0 { "all" } else { "any" }.into())),
            ("region", FieldValue::from(format!("region-{}", j % REGIONS))),
            ("kind", FieldValue::from(format!("kind-{}", j / REGIONS))),
        ]);
        conn.bind_queue(&queues[j % QUEUES], "headers", "", args).unwrap();
    }
    let purge = || {
        for queue in &queues {
            conn.purge_queue(queue).unwrap();
        }
    };
    let reached: usize =
        (0..pool.samples.len()).map(|i| conn.publish("headers", "", pool.message(i)).unwrap().queues()).sum();
    assert!(reached > 0, "no pool message routed");
    purge();
    eprintln!(
        "headers: {} bindings; a message reaches {:.1} of {QUEUES} queues on average",
        broker.bindings().len(),
        reached as f64 / pool.samples.len() as f64
    );

    bench_publish_only(
        &mut group,
        "bus",
        N,
        |i| {
            conn.publish("headers", pool.key(i), pool.message(i)).expect("publish");
        },
        purge,
    );
    group.finish();
}

criterion_group!(benches, headers_publish_only);
criterion_main!(benches);
