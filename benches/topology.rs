//! Cost of topology changes: declaring, binding and deleting many queues.
//!
//! Publishers read immutable snapshots of the topology, so every change
//! builds a new one. These groups keep the cost of that visible: with
//! persistent structures a change costs O(log n), so n changes cost
//! O(n log n); a regression to copying whole tables shows up as a quadratic
//! jump between the 1,000 and 10,000 sizes (elements/s falling ~10×).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{Broker, DeleteQueueOptions, ExchangeKind, ExchangeOptions, FieldTable, QueueOptions};

fn topology(c: &mut Criterion) {
    let mut group = c.benchmark_group("topology_declare_bind_delete");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    for n in [1_000usize, 10_000] {
        let names: Vec<(String, String)> = (0..n).map(|i| (format!("q{i}"), format!("k{i}"))).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("direct", n), &names, |b, names| {
            b.iter(|| {
                let broker = Broker::new();
                let conn = broker.connect();
                conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
                for (queue, key) in names {
                    conn.declare_queue(queue, QueueOptions::default()).unwrap();
                    conn.bind_queue(queue, "x", key, FieldTable::new()).unwrap();
                }
                for (queue, _) in names {
                    conn.delete_queue(queue, DeleteQueueOptions::default()).unwrap();
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, topology);
criterion_main!(benches);
