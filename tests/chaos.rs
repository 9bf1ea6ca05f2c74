//! In-process chaos (GUARANTEES.md, G2–G7), checked by the rules of the
//! RabbitMQ Jepsen `total-queue` checker: producers and consumers on several
//! queues while consumers ack, nack, reject, drop deliveries, panic with a
//! delivery in hand, drop whole connections and cancel; messages expire
//! (real clock) and are dead-lettered, and producers are held back by the
//! memory alarm. At the end:
//!
//! - 0 lost: every published message was acked exactly once, in its queue or
//!   (rejected or expired) in the dead-letter queue;
//! - 0 unexpected: nothing was received that was not published;
//! - 0 duplicated without the redelivered flag: a message the application
//!   saw unflagged was never shown unflagged again (in the same queue);
//! - 0 double settlements: no message was acked twice;
//! - every queue is empty, nothing unacknowledged.
//!
//! `INTEROFFICE_CHAOS_MESSAGES` sets the size of each run (default
//! 1,000,000). A run in which no message is acked for 30 seconds stops and
//! reports what it lost rather than hang. For the long run:
//! `INTEROFFICE_CHAOS_MESSAGES=100000000 cargo test --release --test chaos -- --nocapture`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use interoffice::{Broker, BrokerOptions, ConsumeOptions, Delivery, Message, QueueOptions};

const QUEUES: [&str; 4] = ["q0", "q1", "q2", "q3"];
const DEAD: &str = "dead";
const SEEN_IN_QUEUE: u8 = 1;
const SEEN_IN_DEAD: u8 = 2;
const ACKED: u8 = 4;

fn messages(default: u64) -> u64 {
    std::env::var("INTEROFFICE_CHAOS_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small fast generator, seeded per thread, so runs differ in detail but
/// need no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What every thread records, and the checker reads at the end.
struct Ledger {
    states: Vec<AtomicU8>,
    acked: AtomicU64,
    unexpected: AtomicU64,
    duplicated: AtomicU64,
    double_acks: AtomicU64,
    injected: AtomicU64,
    started: std::time::Instant,
    /// Milliseconds since `started` of the last ack.
    last_progress: AtomicU64,
}

/// How long without a single ack before the run is declared stuck: a lost
/// message would otherwise make it wait for ever.
const STALL: Duration = Duration::from_secs(30);

impl Ledger {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Ledger {
            states: (0..n).map(|_| AtomicU8::new(0)).collect(),
            acked: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            double_acks: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            started: std::time::Instant::now(),
            last_progress: AtomicU64::new(0),
        })
    }

    /// The application sees `d`; false if it is not one of ours.
    fn saw(&self, d: &Delivery, dead: bool) -> Option<usize> {
        let Some(id) = d.body().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(state) = self.states.get(id as usize) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if !d.redelivered() {
            let bit = if dead { SEEN_IN_DEAD } else { SEEN_IN_QUEUE };
            if state.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
                self.duplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(id as usize)
    }

    fn ack(&self, id: usize, d: Delivery) {
        if d.ack().is_ok() {
            if self.states[id].fetch_or(ACKED, Ordering::AcqRel) & ACKED != 0 {
                self.double_acks.fetch_add(1, Ordering::Relaxed);
            }
            self.acked.fetch_add(1, Ordering::Release);
            self.last_progress.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Everything acked, or stuck (then the checker reports what is lost).
    fn done(&self) -> bool {
        let stuck = self.started.elapsed().as_millis() as u64
            > self.last_progress.load(Ordering::Relaxed) + STALL.as_millis() as u64;
        self.acked.load(Ordering::Acquire) >= self.states.len() as u64 || stuck
    }
}

/// Keeps the injected panics quiet; any other panic is reported as usual.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"chaos") {
                default(info);
            }
        }));
    });
}

/// The chaos broker runs under the memory alarm (GUARANTEES.md, G14): the
/// producers are held back once the queues hold 32 MiB, so the backlog (and
/// what an unlimited-prefetch consumer takes into its inbox and returns at
/// every crash) stays bounded at any run size.
fn topology() -> Broker {
    quiet_injected_panics();
    let broker =
        Broker::with_options(BrokerOptions { memory_high_watermark: Some(32 << 20), ..Default::default() });
    let conn = broker.connect();
    conn.declare_queue(DEAD, QueueOptions::default()).unwrap();
    for q in QUEUES {
        let options = QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(DEAD.into()),
            ..Default::default()
        };
        conn.declare_queue(q, options).unwrap();
    }
    broker
}

fn publish_all(broker: &Broker, producers: u64, n: u64) -> Vec<std::thread::JoinHandle<()>> {
    (0..producers)
        .map(|p| {
            let conn = broker.connect();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (p + 1));
                for id in (p..n).step_by(producers as usize) {
                    let mut message = Message::new(id.to_le_bytes().to_vec());
                    if rng.below(100) < 2 {
                        message = message.with_expiration(Duration::from_millis(rng.below(3)));
                    }
                    conn.publish("", QUEUES[(id % 4) as usize], message).unwrap();
                }
            })
        })
        .collect()
}

/// The checker, once everything is acked.
fn check(broker: &Broker, ledger: &Ledger, label: &str) {
    let n = ledger.states.len();
    let lost = ledger.states.iter().filter(|s| s.load(Ordering::Acquire) & ACKED == 0).count();
    let (unexpected, duplicated, double_acks) = (
        ledger.unexpected.load(Ordering::Relaxed),
        ledger.duplicated.load(Ordering::Relaxed),
        ledger.double_acks.load(Ordering::Relaxed),
    );
    println!(
        "{label}: {n} messages, {} crashes and cancellations injected; \
         lost {lost}, unexpected {unexpected}, duplicated without the flag {duplicated}, acked twice {double_acks}",
        ledger.injected.load(Ordering::Relaxed)
    );
    assert_eq!((lost, unexpected, duplicated, double_acks), (0, 0, 0, 0), "{label}");
    for q in QUEUES.iter().chain([&DEAD]) {
        let stats = broker.queue_stats(q).unwrap();
        assert_eq!(
            (stats.messages_ready, stats.messages_delayed, stats.messages_unacknowledged),
            (0, 0, 0),
            "{q}"
        );
    }
}

#[test]
fn sync_chaos_loses_nothing_and_duplicates_nothing() {
    let n = messages(1_000_000);
    let broker = topology();
    let ledger = Ledger::new(n);
    let stop = Arc::new(AtomicBool::new(false));
    let producers = publish_all(&broker, 2, n);

    let mut consumers = Vec::new();
    for t in 0..4_u64 {
        let (broker, ledger, stop) = (broker.clone(), Arc::clone(&ledger), Arc::clone(&stop));
        consumers.push(std::thread::spawn(move || {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (t + 1));
            while !stop.load(Ordering::Acquire) {
                // A fresh connection and consumer for a while, then chaos ends them.
                let conn = broker.connect();
                let dead = t == 0;
                // The busiest queue, usually; sometimes any.
                let busiest = QUEUES
                    .iter()
                    .max_by_key(|q| broker.queue_stats(q).map_or(0, |s| s.messages_ready))
                    .copied()
                    .unwrap_or(QUEUES[0]);
                let queue = match (dead, rng.below(4)) {
                    (true, _) => DEAD,
                    (false, 0) => QUEUES[rng.below(4) as usize],
                    _ => busiest,
                };
                let prefetch = [0, 1, 10, 100][rng.below(4) as usize] as u32;
                let consumer =
                    conn.consume(queue, ConsumeOptions { prefetch, ..Default::default() }).unwrap();
                let lifetime = 1 + rng.below(5_000);
                let mut held: Vec<(usize, Delivery)> = Vec::new();
                for _ in 0..lifetime {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(d) = consumer.recv_timeout(Duration::from_millis(2)) else { break };
                    let Some(id) = ledger.saw(&d, dead) else { continue };
                    let roll = if dead { 0 } else { rng.below(1_000) };
                    match roll {
                        0..=899 => ledger.ack(id, d),
                        900..=939 => drop(d.nack(true)),
                        940..=959 => drop(d.nack(false)),
                        960..=979 => {
                            ledger.injected.fetch_add(1, Ordering::Relaxed);
                            drop(d); // dropped unsettled: requeued
                        }
                        980..=989 => held.push((id, d)),
                        _ => {
                            ledger.injected.fetch_add(1, Ordering::Relaxed);
                            // A handler panicking with the delivery in hand.
                            let _ = catch_unwind(AssertUnwindSafe(move || {
                                let _in_hand = d;
                                panic!("chaos");
                            }));
                        }
                    }
                    // Settle some held deliveries late, in any order.
                    if held.len() > 3 {
                        let (id, d) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        ledger.ack(id, d);
                    }
                }
                ledger.injected.fetch_add(1, Ordering::Relaxed);
                match rng.below(3) {
                    // Connection dropped with deliveries held: all requeued.
                    0 => drop(conn),
                    // Consumer cancelled, held deliveries still settled.
                    1 => {
                        consumer.cancel();
                        for (id, d) in held.drain(..) {
                            ledger.ack(id, d);
                        }
                    }
                    _ => conn.close(),
                }
            }
        }));
    }
    for p in producers {
        p.join().unwrap();
    }
    // The run ends when every message is acked; the checker then looks.
    while !ledger.done() {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Release);
    for c in consumers {
        c.join().unwrap();
    }
    check(&broker, &ledger, "sync chaos");
}

#[test]
fn async_chaos_with_cancelled_futures_loses_nothing() {
    let n = messages(1_000_000);
    let broker = topology();
    let ledger = Ledger::new(n);
    let producers = publish_all(&broker, 1, n);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..4_u64 {
            let (broker, ledger) = (broker.clone(), Arc::clone(&ledger));
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0xA076_1D64_78BD_642F ^ (t + 1));
                while !ledger.done() {
                    let conn = broker.connect();
                    let dead = t == 0;
                    let queue = if dead { DEAD } else { QUEUES[rng.below(4) as usize] };
                    let prefetch = [1, 10, 100][rng.below(3) as usize];
                    let consumer =
                        conn.consume(queue, ConsumeOptions { prefetch, ..Default::default() }).unwrap();
                    for _ in 0..1 + rng.below(2_000) {
                        if ledger.done() {
                            break;
                        }
                        // A receive raced against a short timer: the future is
                        // dropped at a random point when the timer wins.
                        let wait = Duration::from_micros(rng.below(200));
                        let d = match tokio::time::timeout(wait, consumer.recv_async()).await {
                            Ok(Ok(d)) => d,
                            Ok(Err(_)) => break,
                            Err(_) => {
                                ledger.injected.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        let Some(id) = ledger.saw(&d, dead) else { continue };
                        match if dead { 0 } else { rng.below(100) } {
                            0..=89 => ledger.ack(id, d),
                            90..=94 => drop(d.nack(true)),
                            95..=96 => drop(d.nack(false)),
                            _ => {
                                ledger.injected.fetch_add(1, Ordering::Relaxed);
                                drop(d);
                            }
                        }
                    }
                    ledger.injected.fetch_add(1, Ordering::Relaxed);
                    drop(consumer);
                    drop(conn);
                    tokio::task::yield_now().await;
                }
            }));
        }
        // Queues no task reads are drained by this one, without chaos, once
        // everything is published.
        let (broker2, ledger2) = (broker.clone(), Arc::clone(&ledger));
        tasks.push(tokio::spawn(async move {
            tokio::task::spawn_blocking(move || {
                for p in producers {
                    p.join().unwrap();
                }
            })
            .await
            .unwrap();
            let conn = broker2.connect();
            let consumers: Vec<_> = QUEUES
                .iter()
                .map(|q| {
                    (conn.consume(q, ConsumeOptions { prefetch: 50, ..Default::default() }).unwrap(), false)
                })
                .chain([(conn.consume(DEAD, ConsumeOptions::default()).unwrap(), true)])
                .collect();
            while !ledger2.done() {
                for (c, dead) in &consumers {
                    while let Ok(d) = c.try_recv() {
                        if let Some(id) = ledger2.saw(&d, *dead) {
                            ledger2.ack(id, d);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }));
        for task in tasks {
            task.await.unwrap();
        }
    });
    check(&broker, &ledger, "async chaos");
}
