//! Routing cost of the bus, measured side by side with a raw crossbeam channel.
//!
//! Every group holds a `raw_channel` baseline and the `bus` doing the same
//! work, in the same run, on the same messages, so each bus figure can be read
//! as a ratio to the channel:
//!
//! ```text
//! ratio = bus time / raw time = raw elements/s ÷ bus elements/s
//! ```
//!
//! 1.0 would mean the bus costs no more than handing an `Arc` through a
//! channel; 3.0 means three times the time per element. Compare ratios, not
//! absolute figures, between machines and runs.
//!
//! The message shape is shared by both sides: a 64-byte `Bytes` body, two
//! headers and a 4-word routing key. A pool of 1,024 distinct messages
//! (`Arc<Sample>`: routing key + `Message`) is built once and cycled through,
//! so no single refcount is hammered by every message:
//!
//! * the channel sends `Arc::clone(&pool[i % 1024])`: a pointer and one
//!   refcount increment, the cheapest honest way to hand a message to another
//!   thread, i.e. the channel's own cost;
//! * the bus publishes `pool[i % 1024].message.clone()`, because
//!   `Connection::publish` takes the message by value: the bus figure includes
//!   that clone (a copy of the headers table, a `Bytes` refcount bump) and its
//!   drop on the consumer thread. That is what sending costs through the
//!   bus's API; it is not pure routing.
//!
//! Messages are made inside the timed loop on purpose: a batch of 50,000
//! messages pre-built outside the timer (~60 MB) is freed cold, and on
//! glibc's malloc that alone costs ~700 ns per message, which would swamp the
//! channel. Even in the loop, the bus is largely bound by its per-message
//! allocations (the caller's message, the envelope, the boxed routing key)
//! being made on one thread and freed on another.
//!
//! Groups (criterion reports elements/s):
//!
//! * `direct_1to1_auto_ack`: one publisher thread publishes N messages
//!   through a direct exchange (1,024 keys bound to one queue) and one
//!   consumer thread (auto-ack, no prefetch limit) receives all N. Baseline:
//!   one thread sends N pool `Arc`s into an unbounded crossbeam channel,
//!   another receives them. Timed from the first publish until the consumer
//!   holds the N-th message; topology and consumer are set up once.
//! * `direct_1to1_manual_ack`: the same with a manual-ack consumer at prefetch
//!   1000 that acks each delivery. The baseline is the same raw channel, so
//!   this ratio against `direct_1to1_auto_ack`'s shows what acks cost.
//! * `fanout_1to10`: one publisher, a fanout exchange bound to 10 queues, one
//!   consumer per queue; elements are deliveries (N × 10). The machine has 2
//!   cores, so the 10 consumers are drained by [`FANOUT_CONSUMER_THREADS`]
//!   thread(s), each receiving message i from each of its consumers in turn.
//!   Baseline: 10 channels, each message's pool `Arc` cloned into each,
//!   drained the same way.
//! * `topic_publish_only_10k_bindings`: a topic exchange with 10,000 bindings
//!   (patterns of 1–5 words from a 100-word vocabulary, each word ~10 % `*`,
//!   ~1 % `#`; deterministic xorshift; spread over 100 queues) and no
//!   consumers; publish-only throughput of 4-word keys. The patterns are
//!   random, so a key reaches ~20 queues (mostly through the ~20 bare `#`
//!   bindings; setup prints the figure): each publish enqueues ~20 times
//!   where the channel sends once. Queues are purged between iterations,
//!   outside the timer. Baselines: `raw_channel` sends the same count into an
//!   unbounded channel (drained outside the timer); `naive_linear_scan`
//!   matches each key against all 10,000 patterns with a simple reference
//!   matcher (matching only, no enqueue), so `bus elements/s ÷
//!   naive_linear_scan elements/s` is a lower bound of the trie's speedup.
//!   Setup checks that the bus and the naive matcher route every pool key to
//!   the same number of queues.
//!
//! Run: `cargo bench --bench routing` (about a minute), or filter a group:
//! `cargo bench --bench routing -- fanout`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use crossbeam_channel::unbounded;
use interoffice::{
    Broker, Connection, ConsumeOptions, Consumer, ExchangeKind, ExchangeOptions, FieldTable, FieldValue,
    Message, QueueOptions,
};

/// Distinct messages in the pool.
const POOL: usize = 1024;
/// Body length in bytes.
const BODY_LEN: usize = 64;
/// Words in the topic vocabulary (routing keys use it too).
const VOCAB: usize = 100;
/// Words per routing key.
const KEY_WORDS: usize = 4;
/// Messages per timed iteration in the 1:1 groups.
const DIRECT_N: usize = 50_000;
/// Messages per timed iteration in the fanout group (deliveries: × `FANOUT_QUEUES`).
const FANOUT_N: usize = 10_000;
/// Queues bound to the fanout exchange.
const FANOUT_QUEUES: usize = 10;
/// Threads draining the fanout consumers (2-core machine: one publisher, one drainer).
const FANOUT_CONSUMER_THREADS: usize = 1;
/// Messages per timed iteration in the topic group.
const TOPIC_N: usize = 20_000;
/// Bindings on the topic exchange.
const TOPIC_BINDINGS: usize = 10_000;
/// Queues the topic bindings lead to.
const TOPIC_QUEUES: usize = 100;
/// Keys per iteration of the naive linear scan (it is slow).
const NAIVE_KEYS: usize = 256;

/// What the raw channel carries: the same message and its routing key.
struct Sample {
    routing_key: String,
    message: Message,
}

/// A tiny deterministic xorshift64 generator.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `VOCAB` distinct words: `w`, an index, 0–4 letters (e.g. `w17abc`).
fn vocabulary() -> Vec<String> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    (0..VOCAB)
        .map(|i| {
            let extra = rng.below(5);
            let mut w = format!("w{i}");
            w.extend((0..extra).map(|_| char::from(b'a' + rng.below(26) as u8)));
            w
        })
        .collect()
}

/// The message pool: `POOL` distinct messages with distinct bodies and keys.
fn pool(vocab: &[String]) -> Vec<Arc<Sample>> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..POOL)
        .map(|i| {
            let routing_key =
                (0..KEY_WORDS).map(|_| vocab[rng.below(vocab.len())].as_str()).collect::<Vec<_>>().join(".");
            let body: Vec<u8> = (0..BODY_LEN).map(|_| rng.next() as u8).collect();
            let headers = FieldTable::from([
                ("x-seq", FieldValue::I64(i as i64)),
                ("region", FieldValue::String(format!("region-{}", i % 8))),
            ]);
            Arc::new(Sample { routing_key, message: Message::new(Bytes::from(body)).with_headers(headers) })
        })
        .collect()
}

/// The first `n` messages of the endless cycle through the pool.
fn cycle(pool: &[Arc<Sample>], n: usize) -> impl Iterator<Item = &Arc<Sample>> {
    pool.iter().cycle().take(n)
}

/// Runs each of `consumers` on its own thread and `produce` on this one, all
/// released together; returns the time from the release until the last
/// consumer finished.
fn run_timed<P, C>(produce: P, consumers: Vec<C>) -> Duration
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

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
}

/// The raw 1:1 baseline: one thread sends `DIRECT_N` samples, another receives them.
fn bench_raw_1to1(group: &mut BenchmarkGroup<'_, WallTime>, pool: &[Arc<Sample>]) {
    let (tx, rx) = unbounded::<Arc<Sample>>();
    group.bench_function("raw_channel", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let tx = &tx;
                    let rx = &rx;
                    run_timed(
                        move || {
                            for sample in cycle(pool, DIRECT_N) {
                                tx.send(Arc::clone(sample)).expect("receiver alive");
                            }
                        },
                        vec![move || {
                            for _ in 0..DIRECT_N {
                                let sample = rx.recv().expect("sender alive");
                                black_box(sample.message.body().len());
                            }
                        }],
                    )
                })
                .sum()
        })
    });
}

/// A broker with a direct exchange `direct` whose every pool key leads to queue `q`.
fn direct_topology(pool: &[Arc<Sample>]) -> (Broker, Connection) {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("direct", ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    for sample in pool {
        conn.bind_queue("q", "direct", &sample.routing_key, FieldTable::new()).unwrap();
    }
    (broker, conn)
}

/// The bus 1:1: publish `DIRECT_N` through `direct`, the consumer receives them (and acks if manual).
fn bench_bus_1to1(group: &mut BenchmarkGroup<'_, WallTime>, pool: &[Arc<Sample>], options: ConsumeOptions) {
    let (_broker, conn) = direct_topology(pool);
    let manual = !options.auto_ack;
    let consumer = conn.consume("q", options).unwrap();
    // Sanity: the topology routes, so the timed loop cannot hang on a miss.
    let routed = conn.publish("direct", &pool[0].routing_key, pool[0].message.clone()).unwrap();
    assert_eq!(routed.queues(), 1);
    let d = consumer.recv_timeout(Duration::from_secs(5)).expect("routed message arrives");
    if manual {
        d.ack().unwrap();
    }
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let conn = &conn;
                    let consumer = &consumer;
                    run_timed(
                        move || {
                            for s in cycle(pool, DIRECT_N) {
                                conn.publish("direct", &s.routing_key, s.message.clone()).expect("publish");
                            }
                        },
                        vec![move || {
                            for _ in 0..DIRECT_N {
                                let d = consumer.recv().expect("consumer alive");
                                black_box(d.body().len());
                                if manual {
                                    d.ack().expect("ack");
                                }
                            }
                        }],
                    )
                })
                .sum()
        })
    });
}

fn direct_1to1_auto_ack(c: &mut Criterion, pool: &[Arc<Sample>]) {
    let mut group = c.benchmark_group("direct_1to1_auto_ack");
    configure(&mut group);
    group.throughput(Throughput::Elements(DIRECT_N as u64));
    bench_raw_1to1(&mut group, pool);
    bench_bus_1to1(&mut group, pool, ConsumeOptions { auto_ack: true, ..Default::default() });
    group.finish();
}

fn direct_1to1_manual_ack(c: &mut Criterion, pool: &[Arc<Sample>]) {
    let mut group = c.benchmark_group("direct_1to1_manual_ack");
    configure(&mut group);
    group.throughput(Throughput::Elements(DIRECT_N as u64));
    bench_raw_1to1(&mut group, pool);
    bench_bus_1to1(&mut group, pool, ConsumeOptions { prefetch: 1000, ..Default::default() });
    group.finish();
}

/// Splits `items` into `FANOUT_CONSUMER_THREADS` near-equal chunks.
fn per_thread<T>(items: &[T]) -> std::slice::Chunks<'_, T> {
    items.chunks(items.len().div_ceil(FANOUT_CONSUMER_THREADS))
}

fn fanout_1to10(c: &mut Criterion, pool: &[Arc<Sample>]) {
    let mut group = c.benchmark_group("fanout_1to10");
    configure(&mut group);
    group.throughput(Throughput::Elements((FANOUT_N * FANOUT_QUEUES) as u64));

    let (txs, rxs): (Vec<_>, Vec<_>) = (0..FANOUT_QUEUES).map(|_| unbounded::<Arc<Sample>>()).unzip();
    group.bench_function("raw_channel", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let txs = &txs;
                    let drainers = per_thread(&rxs)
                        .map(|rxs| {
                            move || {
                                for _ in 0..FANOUT_N {
                                    for rx in rxs {
                                        let sample = rx.recv().expect("sender alive");
                                        black_box(sample.message.body().len());
                                    }
                                }
                            }
                        })
                        .collect();
                    run_timed(
                        move || {
                            for sample in cycle(pool, FANOUT_N) {
                                for tx in txs {
                                    tx.send(Arc::clone(sample)).expect("receiver alive");
                                }
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
    let consumers: Vec<Consumer> = (0..FANOUT_QUEUES)
        .map(|i| {
            let name = format!("fq{i}");
            conn.declare_queue(&name, QueueOptions::default()).unwrap();
            conn.bind_queue(&name, "fanout", "", FieldTable::new()).unwrap();
            conn.consume(&name, ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap()
        })
        .collect();
    let routed = conn.publish("fanout", "", pool[0].message.clone()).unwrap();
    assert_eq!(routed.queues(), FANOUT_QUEUES);
    for consumer in &consumers {
        consumer.recv_timeout(Duration::from_secs(5)).expect("routed message arrives");
    }
    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let conn = &conn;
                    let drainers = per_thread(&consumers)
                        .map(|consumers| {
                            move || {
                                for _ in 0..FANOUT_N {
                                    for consumer in consumers {
                                        let d = consumer.recv().expect("consumer alive");
                                        black_box(d.body().len());
                                    }
                                }
                            }
                        })
                        .collect();
                    run_timed(
                        move || {
                            for s in cycle(pool, FANOUT_N) {
                                conn.publish("fanout", &s.routing_key, s.message.clone()).expect("publish");
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

/// `TOPIC_BINDINGS` patterns of 1–5 words: ~1 % `#`, ~10 % `*`, else a
/// vocabulary word; each with the index of the queue it leads to.
fn topic_patterns(vocab: &[String]) -> Vec<(String, usize)> {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    (0..TOPIC_BINDINGS)
        .map(|i| {
            let len = 1 + rng.below(5);
            let words: Vec<&str> = (0..len)
                .map(|_| match rng.below(1000) {
                    0..10 => "#",
                    10..110 => "*",
                    _ => vocab[rng.below(vocab.len())].as_str(),
                })
                .collect();
            (words.join("."), i % TOPIC_QUEUES)
        })
        .collect()
}

/// A reference topic router: every binding checked in turn.
struct NaiveRouter {
    bindings: Vec<(Vec<String>, usize)>,
}

impl NaiveRouter {
    fn new(patterns: &[(String, usize)]) -> Self {
        let bindings = patterns.iter().map(|(p, q)| (p.split('.').map(String::from).collect(), *q)).collect();
        NaiveRouter { bindings }
    }

    /// How many distinct queues `key` reaches.
    fn route(&self, key: &str) -> u32 {
        let words: Vec<&str> = key.split('.').collect();
        let mut queues = 0u128;
        for (pattern, queue) in &self.bindings {
            if topic_matches(pattern, &words) {
                queues |= 1u128 << queue;
            }
        }
        queues.count_ones()
    }
}

/// Whether pattern words `p` match key words `k`: `*` is one word, `#` zero or more.
fn topic_matches(p: &[String], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((w, rest)) if w == "#" => (0..=k.len()).any(|skip| topic_matches(rest, &k[skip..])),
        Some((w, rest)) if w == "*" => !k.is_empty() && topic_matches(rest, &k[1..]),
        Some((w, rest)) => k.first() == Some(&w.as_str()) && topic_matches(rest, &k[1..]),
    }
}

fn topic_publish_only_10k_bindings(c: &mut Criterion, pool: &[Arc<Sample>], vocab: &[String]) {
    let mut group = c.benchmark_group("topic_publish_only_10k_bindings");
    configure(&mut group);
    group.throughput(Throughput::Elements(TOPIC_N as u64));

    let (tx, rx) = unbounded::<Arc<Sample>>();
    group.bench_function("raw_channel", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    for sample in cycle(pool, TOPIC_N) {
                        tx.send(Arc::clone(sample)).expect("receiver alive");
                    }
                    let elapsed = start.elapsed();
                    rx.try_iter().for_each(drop);
                    elapsed
                })
                .sum()
        })
    });

    let patterns = topic_patterns(vocab);
    let queues: Vec<String> = (0..TOPIC_QUEUES).map(|i| format!("tq{i}")).collect();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("topic", ExchangeKind::Topic, ExchangeOptions::default()).unwrap();
    for queue in &queues {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    for (pattern, queue) in &patterns {
        conn.bind_queue(&queues[*queue], "topic", pattern, FieldTable::new()).unwrap();
    }
    // Sanity: the trie and the naive matcher agree on every pool key.
    let naive = NaiveRouter::new(&patterns);
    let mut reached = 0;
    for sample in pool {
        let routed = conn.publish("topic", &sample.routing_key, sample.message.clone()).unwrap();
        assert_eq!(routed.queues() as u32, naive.route(&sample.routing_key), "{}", sample.routing_key);
        reached += routed.queues();
    }
    for queue in &queues {
        conn.purge_queue(queue).unwrap();
    }
    eprintln!(
        "topic: {} distinct bindings; a key reaches {:.1} of {TOPIC_QUEUES} queues on average",
        broker.bindings().len(),
        reached as f64 / pool.len() as f64
    );

    group.bench_function("bus", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    for s in cycle(pool, TOPIC_N) {
                        conn.publish("topic", &s.routing_key, s.message.clone()).expect("publish");
                    }
                    let elapsed = start.elapsed();
                    for queue in &queues {
                        conn.purge_queue(queue).unwrap();
                    }
                    elapsed
                })
                .sum()
        })
    });

    group.throughput(Throughput::Elements(NAIVE_KEYS as u64));
    let keys: Vec<&str> = pool.iter().take(NAIVE_KEYS).map(|s| s.routing_key.as_str()).collect();
    group.bench_function("naive_linear_scan", |b| {
        b.iter(|| black_box(&keys).iter().map(|key| naive.route(key)).sum::<u32>())
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let vocab = vocabulary();
    let pool = pool(&vocab);
    direct_1to1_auto_ack(c, &pool);
    direct_1to1_manual_ack(c, &pool);
    fanout_1to10(c, &pool);
    topic_publish_only_10k_bindings(c, &pool, &vocab);
}

criterion_group!(routing, benches);
criterion_main!(routing);
