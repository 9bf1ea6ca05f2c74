//! Request/reply round trips between two threads, beside a raw ping-pong.
//!
//! Group `rpc_round_trip` (elements: round trips, [`N`] per iteration, one
//! at a time):
//!
//! * `raw_channel`: the client thread sends a pool message (a clone of its
//!   `Arc`) on a request channel; a server thread receives it and sends it
//!   back on a reply channel; the client waits for the reply before the next
//!   request: a bare ping-pong between two threads.
//! * `bus`: `Connection::call` through the default exchange to a queue served
//!   by `Connection::serve` (one worker thread, prefetch 1) whose handler
//!   answers with a new message holding the request's body.
//!
//! Time per round trip = criterion's time per iteration ÷ [`N`].
//!
//! Run: `cargo bench --bench rpc`.

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use common::{Pool, Raw, configure};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interoffice::{Broker, Message, QueueOptions, WorkerOptions};

/// Round trips per timed iteration.
const N: usize = 2_000;
/// How long a bus call may wait for its reply.
const TIMEOUT: Duration = Duration::from_secs(5);

fn rpc_round_trip(c: &mut Criterion) {
    let pool = Pool::new();
    let mut group = c.benchmark_group("rpc_round_trip");
    configure(&mut group);
    group.throughput(Throughput::Elements(N as u64));

    let requests: Raw = Raw::new();
    let replies: Raw = Raw::new();
    thread::scope(|s| {
        let (server_rx, server_tx) = (requests.rx.clone(), replies.tx.clone());
        s.spawn(move || {
            for request in server_rx {
                server_tx.send(request).expect("client alive");
            }
        });
        group.bench_function("raw_channel", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for i in 0..N {
                        requests.send(pool.raw(i));
                        black_box(replies.recv().body().len());
                    }
                }
                start.elapsed()
            })
        });
        // Ends the server thread: its request channel is disconnected.
        drop(requests);
    });

    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("rpc", QueueOptions::default()).unwrap();
    let _service = server
        .serve("rpc", WorkerOptions::default(), |request| {
            Ok::<_, Infallible>(Message::new(request.body().clone()))
        })
        .unwrap();
    let client = broker.connect();
    let reply = client.call("", "rpc", pool.message(0), TIMEOUT).expect("server answers");
    assert_eq!(reply.body(), pool.samples[0].message.body());
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..N {
                    let reply = client.call("", "rpc", pool.message(i), TIMEOUT).expect("call");
                    black_box(reply.body().len());
                }
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, rpc_round_trip);
criterion_main!(benches);
