//! Allocation counts on the publish path, with a counting global allocator
//! (`unsafe`, as a `GlobalAlloc` must be: it only forwards to the system
//! allocator and counts).
//!
//! Routing a message allocates nothing per publish: not the topic matcher,
//! not the set of queues already reached, not the enqueue (once the queues'
//! stores have grown). The only allocation is the envelope every publish
//! needs: the shared message and its routing names (inline when short) —
//! and not even that once deliveries are being dropped: their envelopes'
//! allocations are kept and reused (`queue/recycle.rs`), and so are the
//! magazines they travel in between a consuming and a publishing thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use interoffice::{Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only a thread-local `Cell` (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A deterministic pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn routing_through_a_topic_exchange_with_10000_bindings_allocates_only_the_envelope() {
    let conn = Broker::new().connect();
    conn.declare_exchange("t", ExchangeKind::Topic, ExchangeOptions::default()).unwrap();
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for q in 0..200 {
        conn.declare_queue(&format!("q{q}"), QueueOptions::default()).unwrap();
    }
    for _ in 0..10_000 {
        let len = 1 + rng.below(5);
        let pattern: Vec<&str> = (0..len)
            .map(|_| match rng.below(100) {
                0 => "#",
                1..=10 => "*",
                _ => words[rng.below(100) as usize].as_str(),
            })
            .collect();
        let queue = format!("q{}", rng.below(200));
        conn.bind_queue(&queue, "t", &pattern.join("."), FieldTable::new()).unwrap();
    }
    let keys: Vec<String> = (0..64)
        .map(|_| (0..4).map(|_| words[rng.below(100) as usize].as_str()).collect::<Vec<_>>().join("."))
        .collect();
    let publisher = conn.publisher("t").unwrap();
    let messages: Vec<Message> = (0..2_000).map(|i| Message::new(vec![i as u8; 64])).collect();
    // Warm up: thread-local matcher scratch, the queues' stores.
    let mut routed = 0;
    for (i, m) in messages.iter().take(1_000).enumerate() {
        routed += publisher.publish(&keys[i % keys.len()], m.clone()).unwrap().queues();
    }
    assert!(routed > 1_000, "the keys must reach queues for this to measure anything: {routed}");
    let batch: Vec<Message> = messages[1_000..].to_vec();
    let before = allocations();
    for (i, m) in batch.into_iter().enumerate() {
        publisher.publish(&keys[i % keys.len()], m).unwrap();
    }
    let per_publish = (allocations() - before) as f64 / 1_000.0;
    // One: the envelope's `Arc` (its routing names are inline, the message
    // shares the caller's properties and body). The queues' stores, still
    // growing during the measured publishes, add a new chunk now and then.
    assert!(per_publish <= 1.1, "{per_publish} allocations per publish");
}

#[test]
fn a_publish_reuses_the_envelope_of_a_delivery_dropped_before_it() {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    conn.declare_queue("m", QueueOptions::default()).unwrap();
    let manual = conn.consume("m", ConsumeOptions { prefetch: 10, ..Default::default() }).unwrap();
    let publisher = conn.publisher("").unwrap();
    let message = Message::new(vec![7_u8; 64]);
    let cycle = || {
        publisher.publish("q", message.clone()).unwrap();
        drop(consumer.try_recv().unwrap());
        publisher.publish("m", message.clone()).unwrap();
        manual.try_recv().unwrap().ack().unwrap();
    };
    // Warm up: the inboxes' buffers, the unsettled map.
    for _ in 0..1_000 {
        cycle();
    }
    let before = allocations();
    for _ in 0..10_000 {
        cycle();
    }
    let per_cycle = (allocations() - before) as f64 / 10_000.0;
    // An auto-ack publish and delivery: none. A manual-ack one: none either
    // (its envelope comes back when the acked delivery is dropped).
    assert!(per_cycle < 0.01, "{per_cycle} allocations per two publishes and deliveries");
}

#[test]
fn names_too_long_to_be_inline_are_shared_by_a_routes_publishes_not_copied_into_each() {
    // 13 + 33 bytes of names: past what an envelope holds inline.
    let (exchange, key) = ("orders.events", "order.created.eu-west-1.priority");
    let conn = Broker::new().connect();
    conn.declare_exchange(exchange, ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    conn.bind_queue("q", exchange, key, FieldTable::new()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    let publisher = conn.publisher(exchange).unwrap();
    let message = Message::new(vec![7_u8; 64]);
    let single = || {
        publisher.publish(key, message.clone()).unwrap();
        drop(consumer.try_recv().unwrap());
    };
    let batch = || {
        let batch = (0..64).map(|_| (key, message.clone()));
        publisher.publish_batch(batch, Default::default()).unwrap();
        for _ in 0..64 {
            drop(consumer.try_recv().unwrap());
        }
    };
    // Warm up: the inbox, the cached route, the batch's buffers.
    for _ in 0..1_000 {
        single();
        batch();
    }
    let before = allocations();
    for _ in 0..10_000 {
        single();
    }
    let per_publish = (allocations() - before) as f64 / 10_000.0;
    // The route's address is built once, when the route is cached; each
    // envelope counts a reference to it (a copy of the names was one
    // allocation a publish, freed by whichever thread dropped the delivery).
    assert!(per_publish < 0.01, "{per_publish} allocations per publish through a cached route");
    let before = allocations();
    for _ in 0..1_000 {
        batch();
    }
    // A batch builds each distinct key's address once: a handful of
    // buffers per batch (its routes, its pending messages, about 16), none
    // per message (a copy of the names each was one more per message).
    let per_message = (allocations() - before) as f64 / 64_000.0;
    assert!(per_message < 0.5, "{per_message} allocations per batched message");
}

#[test]
fn a_consuming_thread_reuses_the_magazines_its_kept_envelopes_travel_in() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    const MESSAGES: usize = 100_000;
    const WARM_UP: usize = 20_000;
    let message = Message::new(vec![7_u8; 64]);
    let publishing = {
        let connection = broker.connect();
        std::thread::spawn(move || {
            let publisher = connection.publisher("").unwrap();
            for _ in 0..MESSAGES {
                publisher.publish("q", message.clone()).unwrap();
            }
        })
    };
    let receive =
        || consumer.recv_timeout(std::time::Duration::from_secs(30)).expect("the publisher went on");
    for _ in 0..WARM_UP {
        drop(receive());
    }
    let before = allocations();
    for _ in WARM_UP..MESSAGES {
        drop(receive());
    }
    let per_thousand = (allocations() - before) as f64 * 1_000.0 / (MESSAGES - WARM_UP) as f64;
    publishing.join().unwrap();
    // The envelopes this thread keeps go to the publisher 32 to a magazine;
    // each magazine it starts is one the publisher emptied and sent back,
    // not a new allocation (one per 32 deliveries, 31 per thousand, when
    // every magazine was allocated here and freed there).
    assert!(per_thousand < 5.0, "{per_thousand} allocations per thousand deliveries on the consuming thread");
}

#[test]
fn a_call_writes_its_correlation_id_and_reply_address_in_one_allocation() {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("echo", QueueOptions::default()).unwrap();
    let _worker = server
        .serve("echo", Default::default(), |request| Ok::<_, String>(request.message().clone()))
        .unwrap();
    let caller = broker.connect();
    let request = Message::new(vec![7_u8; 64]).with_content_type("application/octet-stream");
    let call = || {
        let reply = caller.call("", "echo", request.clone(), std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(reply.body().len(), 64);
    };
    // Warm up: the reply endpoint, the calls' map, the route, kept envelopes.
    for _ in 0..1_000 {
        call();
    }
    let before = allocations();
    for _ in 0..2_000 {
        call();
    }
    let per_call = (allocations() - before) as f64 / 2_000.0;
    // On the caller's thread: the correlation id, the request's own
    // properties (its clone shares the original's until they change) with
    // a copy of their text, that text written anew with the two values
    // (once, not once for each: one allocation more a call), and the
    // call's record. The envelope is a kept one: the replies dropped here
    // left theirs.
    assert!(per_call <= 5.05, "{per_call} allocations per call on the caller's thread");
}

#[test]
fn a_string_header_of_up_to_24_bytes_takes_no_allocation_of_its_own() {
    use interoffice::FieldValue;
    // Allocations made while the value is built from `text` and the
    // message is built around it.
    let build = |value: &dyn Fn() -> FieldValue| {
        let before = allocations();
        let message =
            Message::new(vec![7_u8; 64]).with_header("n", FieldValue::I64(1)).with_header("region", value());
        assert_eq!(message.headers().map(FieldTable::len), Some(2));
        allocations() - before
    };
    let (short, edge, long) = ("region-eu-west-1", "x".repeat(24), "y".repeat(25));
    // The body, the properties and the header table: the same three
    // whether the second header is an integer or a string of up to 24 bytes.
    let with_integer = build(&|| FieldValue::I64(7));
    assert_eq!(build(&|| FieldValue::from(short)), with_integer, "a short string is stored inline");
    assert_eq!(build(&|| FieldValue::from(edge.as_str())), with_integer, "24 bytes still fit inline");
    // Past 24 bytes the value has a buffer of its own: one allocation.
    assert_eq!(build(&|| FieldValue::from(long.as_str())), with_integer + 1, "a longer string is copied out");
    // A `String` of that length hands its buffer over rather than being copied.
    assert_eq!(build(&|| FieldValue::from(long.clone())), with_integer + 1, "the clone's buffer, kept");
}
