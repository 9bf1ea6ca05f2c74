//! Durable queues, measured: persistent publishes of 1 KiB per sync
//! policy with 1, 4 and 16 publishers (throughput, publish latency p50/p99),
//! pipelined confirms, the restart time of a store holding many messages,
//! and disk bytes per queued message — beside RabbitMQ's persistent
//! messages to a durable queue with publisher confirms, in the same run
//! (through lapin; build with `--features amqp`, RabbitMQ at `AMQP_URL` or
//! the local default).
//!
//! ```text
//! cargo run --release --example durable_bench --features amqp -- [messages] [restart-messages]
//! ```
//!
//! Defaults: 20,000 messages per publish run, 1,000,000 for the restart.
//! The data directories go under `INTEROFFICE_BENCH_DIR` (default: the
//! system's temporary directory) and are removed afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use interoffice::{
    Broker, BrokerOptions, DeliveryMode, Message, PublishOptions, QueueOptions, StoreOptions, SyncPolicy,
};

const BODY: usize = 1024;
const WINDOW: usize = 256;
/// Blocking publishers per run: one, a few, many sharing each sync.
const PUBLISHERS: [usize; 3] = [1, 4, 16];

#[path = "support/figures.rs"]
mod support;
use support::{Figures, figures};

fn bench_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("INTEROFFICE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("interoffice-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn message() -> Message {
    Message::new(vec![7_u8; BODY]).with_delivery_mode(DeliveryMode::Persistent)
}

fn open(dir: &PathBuf, sync: SyncPolicy) -> Broker {
    let options = BrokerOptions { store: StoreOptions { sync, ..Default::default() }, ..Default::default() };
    Broker::open(dir, options).expect("open the data directory")
}

/// `publishers` threads publish `n` messages in all, each call blocking
/// until its message is durable per `sync`.
fn blocking_publishes(sync: SyncPolicy, publishers: usize, n: usize) -> (Figures, f64) {
    let dir = bench_dir("publish");
    let figures = {
        let broker = open(&dir, sync);
        broker
            .connect()
            .declare_queue("bench", QueueOptions { durable: true, ..Default::default() })
            .unwrap();
        let start = Instant::now();
        let latencies: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..publishers)
                .map(|_| {
                    let conn = broker.connect();
                    s.spawn(move || {
                        let mut latencies = Vec::with_capacity(n / publishers);
                        for _ in 0..n / publishers {
                            let t = Instant::now();
                            conn.publish("", "bench", message()).unwrap();
                            latencies.push(t.elapsed().as_nanos() as u64);
                        }
                        latencies
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let f = figures(latencies.len(), start.elapsed(), latencies);
        let syncs = broker.store_stats().unwrap().syncs.max(1);
        (f, n as f64 / syncs as f64)
    };
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

/// One publisher keeping `WINDOW` confirms in flight (`publish_confirmed`).
fn pipelined(sync: SyncPolicy, n: usize) -> Figures {
    let dir = bench_dir("pipelined");
    let figures = {
        let broker = open(&dir, sync);
        let conn = broker.connect();
        conn.declare_queue("bench", QueueOptions { durable: true, ..Default::default() }).unwrap();
        let start = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            in_flight.push_back((
                Instant::now(),
                conn.publish_confirmed("", "bench", message(), PublishOptions::default()),
            ));
            if in_flight.len() >= WINDOW {
                let (t, confirm) = in_flight.pop_front().unwrap();
                confirm.wait().unwrap();
                latencies.push(t.elapsed().as_nanos() as u64);
            }
        }
        for (t, confirm) in in_flight {
            confirm.wait().unwrap();
            latencies.push(t.elapsed().as_nanos() as u64);
        }
        figures(n, start.elapsed(), latencies)
    };
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

/// Fills a store with `n` queued messages, then times a restart.
fn restart(n: usize) -> (Duration, Duration, Duration, f64, u64) {
    let dir = bench_dir("restart");
    let fill = Instant::now();
    let bytes_per_message = {
        let broker = open(&dir, SyncPolicy::OsBuffered);
        let conn = broker.connect();
        conn.declare_queue("bench", QueueOptions { durable: true, ..Default::default() }).unwrap();
        let publisher = conn.publisher("").unwrap();
        for _ in 0..n {
            publisher.publish("bench", message()).unwrap();
        }
        let stats = broker.store_stats().unwrap();
        stats.disk_bytes as f64 / stats.messages as f64
    };
    let fill = fill.elapsed();
    // The first open right after the fill, then the median of three more.
    let mut opens = Vec::new();
    let mut ready = 0;
    for _ in 0..4 {
        let start = Instant::now();
        let broker = open(&dir, SyncPolicy::default());
        opens.push(start.elapsed());
        ready = broker.queue_stats("bench").unwrap().messages_ready as u64;
    }
    let first = opens.remove(0);
    opens.sort();
    // What an opened store keeps in memory: with the default budget (64 MiB
    // of bodies per queue) and with every body kept.
    for (name, budget) in [("default budget", None), ("no budget", Some(usize::MAX))] {
        let store = StoreOptions {
            queue_memory_budget: budget.unwrap_or(StoreOptions::default().queue_memory_budget),
            ..Default::default()
        };
        let broker = Broker::open(&dir, BrokerOptions { store, ..Default::default() }).unwrap();
        println!("  resident memory after opening ({name}): {}", rss());
        drop(broker);
    }
    let _ = std::fs::remove_dir_all(&dir);
    (fill, first, opens[1], bytes_per_message, ready)
}

/// The process's resident set (Linux), for the restart's memory.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l[6..].trim().to_owned()))
        .unwrap_or_else(|| "n/a".into())
}

#[cfg(feature = "amqp")]
mod rabbitmq {
    //! RabbitMQ: a durable queue, persistent messages, publisher confirms.

    use std::collections::VecDeque;
    use std::time::Instant;

    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    use super::{BODY, Figures, figures};

    const QUEUE: &str = "interoffice.durable-bench";

    fn properties() -> lapin::BasicProperties {
        lapin::BasicProperties::default().with_delivery_mode(2)
    }

    async fn fresh_queue(url: &str) {
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let _ = channel.queue_delete(QUEUE.into(), QueueDeleteOptions::default()).await;
        let channel = connection.create_channel().await.unwrap();
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(QUEUE.into(), durable, FieldTable::default()).await.unwrap();
    }

    /// `publishers` connections, each waiting for every confirm (`window`
    /// 1) or keeping `WINDOW` in flight.
    pub(super) fn publish(url: &str, publishers: usize, n: usize, window: usize) -> Figures {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            fresh_queue(url).await;
            let start = Instant::now();
            let tasks: Vec<_> = (0..publishers)
                .map(|_| {
                    let url = url.to_owned();
                    tokio::spawn(async move {
                        let connection =
                            lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                                .await
                                .unwrap();
                        let channel = connection.create_channel().await.unwrap();
                        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
                        let body = vec![7_u8; BODY];
                        let mut in_flight = VecDeque::new();
                        let mut latencies = Vec::with_capacity(n / publishers);
                        for _ in 0..n / publishers {
                            let t = Instant::now();
                            let confirm = channel
                                .basic_publish(
                                    "".into(),
                                    QUEUE.into(),
                                    BasicPublishOptions::default(),
                                    &body,
                                    properties(),
                                )
                                .await
                                .unwrap();
                            in_flight.push_back((t, confirm));
                            if in_flight.len() >= window {
                                let (t, confirm) = in_flight.pop_front().unwrap();
                                assert!(confirm.await.unwrap().is_ack());
                                latencies.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        for (t, confirm) in in_flight {
                            assert!(confirm.await.unwrap().is_ack());
                            latencies.push(t.elapsed().as_nanos() as u64);
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await.unwrap());
            }
            figures(latencies.len(), start.elapsed(), latencies)
        })
    }

    /// Removes the benchmark's queue.
    pub(super) fn clean_up(url: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let connection =
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
            let channel = connection.create_channel().await.unwrap();
            let _ = channel.queue_delete(QUEUE.into(), QueueDeleteOptions::default()).await;
        });
    }
}

fn row(name: &str, f: Figures) {
    println!("{name:<44} {:>10.0} {:>10.1?} {:>10.1?}", f.per_sec, f.p50, f.p99);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let restart_n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let grouped = SyncPolicy::default();
    println!("persistent publishes of {BODY} B to a durable queue, {n} per run");
    println!("{:<44} {:>10} {:>10} {:>10}", "run", "msg/s", "p50", "p99");
    let mut ours = Vec::new();
    for (name, sync) in [
        ("EveryMessage", SyncPolicy::EveryMessage),
        ("Grouped (default)", grouped),
        ("OsBuffered", SyncPolicy::OsBuffered),
    ] {
        for publishers in PUBLISHERS {
            let (f, per_sync) = blocking_publishes(sync, publishers, n);
            row(&format!("interoffice {name}, {publishers} publisher(s)"), f);
            if sync != SyncPolicy::OsBuffered {
                println!("{:<44} {per_sync:>10.1}", "  messages per sync");
            }
            ours.push((sync, publishers, f));
        }
    }
    let ours_pipelined = pipelined(grouped, n);
    row(&format!("interoffice Grouped, pipelined ({WINDOW} in flight)"), ours_pipelined);
    #[cfg(feature = "amqp")]
    {
        let url =
            std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let mut theirs = Vec::new();
        for publishers in PUBLISHERS {
            let f = rabbitmq::publish(&url, publishers, n.min(5_000 * publishers), 1);
            row(&format!("RabbitMQ confirms, {publishers} publisher(s)"), f);
            theirs.push(f);
        }
        let piped = rabbitmq::publish(&url, 1, n, WINDOW);
        row(&format!("RabbitMQ confirms, pipelined ({WINDOW} in flight)"), piped);
        rabbitmq::clean_up(&url);
        let grouped_at =
            |p: usize| ours.iter().find(|(s, q, _)| *s == grouped && *q == p).map(|(.., f)| f.per_sec);
        let ratios: Vec<String> = PUBLISHERS
            .iter()
            .zip(&theirs)
            .map(|(p, f)| format!("{p} publisher(s) {:.1}×", grouped_at(*p).unwrap_or_default() / f.per_sec))
            .collect();
        println!(
            "group commit ÷ RabbitMQ: {}, pipelined {:.1}×",
            ratios.join(", "),
            ours_pipelined.per_sec / piped.per_sec
        );
    }
    #[cfg(not(feature = "amqp"))]
    println!("RabbitMQ: not measured (build with --features amqp)");
    let (fill, first, median, bytes, ready) = restart(restart_n);
    println!(
        "restart with {ready} queued messages: open in {first:.2?} right after the fill, {median:.2?} (median of 3 more); filled in {fill:.1?}; disk {bytes:.0} B per queued message of {BODY} B"
    );
}
