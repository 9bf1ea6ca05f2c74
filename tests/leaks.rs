//! Nothing leaks (GUARANTEES.md, G15): churning connections, consumers and
//! queues, and request/reply calls, leave the heap flat, and every message
//! body the bus accepted is dropped exactly once.
//!
//! Memory is measured with a counting global allocator (live bytes), not
//! RSS. The scenarios run one after another in a single test, so no other
//! test of this binary allocates meanwhile. `INTEROFFICE_LEAK_CYCLES` sets
//! the cycles per scenario (default 100,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, DeleteQueueOptions, ManualClock, Message, Overflow,
    PublishOptions, QueueOptions,
};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only an atomic (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn cycles() -> usize {
    std::env::var("INTEROFFICE_LEAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Runs `cycle` a tenth of the cycles to warm up (maps and stores reach
/// their working size), then all of them; the heap may not grow by more
/// than `slack` bytes over the second run.
fn stays_flat(name: &str, slack: i64, mut cycle: impl FnMut(usize)) {
    let n = cycles();
    for i in 0..n / 10 {
        cycle(i);
    }
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        cycle(i);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    println!("{name}: {n} cycles, heap grew by {grown} bytes");
    assert!(grown < slack, "{name}: the heap grew by {grown} bytes over {n} cycles");
}

/// Counts the drops of message bodies the test made.
struct Counted {
    drops: Arc<AtomicU64>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        b"counted"
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn churn_leaves_the_heap_flat_and_every_body_is_dropped_once() {
    // Consumer churn: consume, take one, drop the consumer, ack. Each cycle
    // used to leave its consumer in the queue's detached list for good.
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("churn", QueueOptions::default()).unwrap();
    stays_flat("consumer churn", 256 * 1024, |_| {
        conn.publish("", "churn", Message::new("m")).unwrap();
        let consumer = conn.consume("churn", ConsumeOptions { prefetch: 1, ..Default::default() }).unwrap();
        let delivery = consumer.recv().unwrap();
        drop(consumer);
        delivery.ack().unwrap();
    });
    assert_eq!(broker.queue_stats("churn").unwrap().messages_unacknowledged, 0);

    // Connection churn: an exclusive queue, a consumer, a delivery left
    // unsettled, then the connection dropped.
    stays_flat("connection churn", 256 * 1024, |_| {
        let c = broker.connect();
        let q = c.declare_queue("", QueueOptions { exclusive: true, ..Default::default() }).unwrap();
        c.publish("", &q, Message::new("m")).unwrap();
        let consumer = c.consume(&q, ConsumeOptions::default()).unwrap();
        let _unsettled = consumer.recv().unwrap();
    });
    assert_eq!(broker.queue_names(), ["churn"]);

    // Queue churn: queues deleted while a timer is pending (a TTL an hour
    // away on a manual clock) used to keep it, and their memory, until it fired.
    let clock = ManualClock::new();
    let timed = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = timed.connect();
    let ttl = QueueOptions { message_ttl: Some(Duration::from_secs(3600)), ..Default::default() };
    stays_flat("queue churn", 256 * 1024, |i| {
        let name = format!("q{}", i % 4);
        conn.declare_queue(&name, ttl.clone()).unwrap();
        conn.publish("", &name, Message::new("m")).unwrap();
        conn.delete_queue(&name, DeleteQueueOptions::default()).unwrap();
    });

    // Every accepted body is dropped exactly once, whatever its end: acked,
    // rejected to a dead-letter queue and purged, expired, purged, deleted.
    let drops = Arc::new(AtomicU64::new(0));
    let body = || Bytes::from_owner(Counted { drops: Arc::clone(&drops) });
    let conn = timed.connect();
    conn.declare_queue("dlq", QueueOptions::default()).unwrap();
    let dead_lettering = QueueOptions {
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("dlq".into()),
        ..Default::default()
    };
    conn.declare_queue("work", dead_lettering).unwrap();
    let consumer = conn.consume("work", ConsumeOptions::default()).unwrap();
    let mut accepted = 0;
    for i in 0..1_000 {
        conn.publish("", "work", Message::new(body())).unwrap();
        accepted += 1;
        let d = consumer.recv().unwrap();
        match i % 4 {
            0 => d.ack().unwrap(),
            1 => d.nack(false).unwrap(),
            2 => d.nack(true).unwrap(),
            _ => drop(d),
        }
    }
    drop(consumer);
    conn.publish("", "work", Message::new(body()).with_expiration(Duration::from_secs(1))).unwrap();
    accepted += 1;
    clock.advance(Duration::from_secs(1));
    conn.purge_queue("dlq").unwrap();
    conn.delete_queue("work", DeleteQueueOptions::default()).unwrap();
    assert_eq!(drops.load(Ordering::Relaxed), accepted);

    // A batch hands a queue it reaches alone the envelope itself: kept,
    // kept as a copy (a delivery limit), or handed back in the batch's
    // error by a full queue, every body is still dropped once.
    let full = QueueOptions { max_length: Some(5), overflow: Overflow::RejectPublish, ..Default::default() };
    conn.declare_queue("full", full).unwrap();
    conn.declare_queue("limited", QueueOptions { delivery_limit: Some(2), ..Default::default() }).unwrap();
    let (before, mut made, mut refused) = (drops.load(Ordering::Relaxed), 0, 0);
    for round in 0..100 {
        let batch: Vec<_> = (0..8).map(|i| (["full", "limited"][i % 2], Message::new(body()))).collect();
        made += 8;
        if let Err(error) = conn.publish_batch("", batch, PublishOptions::default()) {
            refused += error.failed.len();
        }
        if round % 3 == 2 {
            conn.purge_queue("full").unwrap();
        }
    }
    assert!(refused > 0, "the full queue refused some");
    conn.purge_queue("full").unwrap();
    conn.purge_queue("limited").unwrap();
    assert_eq!(drops.load(Ordering::Relaxed) - before, made);

    // Request/reply: a request through the caller's route cache, its reply
    // straight to the caller's endpoint, a reply to a call already over
    // (counted, dropped), and replies to an address whose connection
    // closed (unroutable, handed back): the heap stays flat and every body
    // is dropped once.
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("echo", QueueOptions::default()).unwrap();
    let _worker = server
        .serve("echo", Default::default(), |request| Ok::<_, String>(request.message().clone()))
        .unwrap();
    let caller = broker.connect();
    stays_flat("calls", 256 * 1024, |_| {
        let reply = caller.call("", "echo", Message::new("q"), Duration::from_secs(60)).unwrap();
        assert_eq!(reply.body().as_ref(), b"q");
    });
    let before = drops.load(Ordering::Relaxed);
    let mut made = 0;
    for _ in 0..100 {
        let caller = broker.connect();
        let reply = caller.call("", "echo", Message::new(body()), Duration::from_secs(60)).unwrap();
        made += 1;
        let reply_to = reply.properties().reply_to().unwrap().to_owned();
        server.publish("", &reply_to, Message::new(body())).unwrap();
        made += 1;
        drop((reply, caller));
        let gone = PublishOptions { mandatory: true };
        let error = server.publish_with("", &reply_to, Message::new(body()), gone).unwrap_err();
        made += 1;
        drop(error);
    }
    assert_eq!(drops.load(Ordering::Relaxed) - before, made);
}
