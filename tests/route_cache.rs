//! Cached routes (GUARANTEES.md, G42): a `Publisher` and a connection
//! remember the queues their recent routing keys reached, and that never
//! changes what a publish does. A proptest interleaves publishes with
//! topology changes (binds, unbinds, deleted and redeclared queues and
//! exchanges, an exchange-to-exchange binding into a headers exchange) on
//! twin brokers: one publishes through the caches, the other has a
//! recorder attached, which makes every publish walk the exchange graph.

use std::sync::mpsc;

use interoffice::{
    Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldValue, Message, PublishError, PublishOptions,
    Publisher, QueueOptions,
};
use proptest::prelude::*;

#[path = "support/twin_topology.rs"]
mod twin_topology;

const QUEUES: [&str; 4] = ["q_a", "q_b", "q_red", "q_alt"];
const KEYS: [&str; 8] = ["a.b", "a.c", "x.y", "h.z", "q_a", "q_b", "k", "none"];

/// Topic `t` (alternate exchange `alt`), headers `h`, direct `d`, fanout
/// `f` (whose routes read no key until it is bound to `d`).
fn topology(broker: &Broker) {
    let conn = broker.connect();
    for q in QUEUES {
        conn.declare_queue(q, QueueOptions::default()).unwrap();
    }
    twin_topology::topic_alternate_and_headers(&conn);
    conn.declare_exchange("d", ExchangeKind::Direct, ExchangeOptions::default()).unwrap();
    conn.bind_queue("q_a", "t", "a.*", None).unwrap();
    conn.bind_queue("q_b", "d", "k", None).unwrap();
    conn.declare_exchange("f", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    conn.bind_queue("q_red", "f", "", None).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Publish { exchange: &'static str, key: &'static str, through_publisher: bool, red: bool, cc: bool },
    Bind { queue: &'static str, exchange: &'static str, key: &'static str },
    Unbind { queue: &'static str, exchange: &'static str, key: &'static str },
    BindHeaders,
    UnbindHeaders,
    RedeclareQueue(&'static str),
    DeleteQueue(&'static str),
    RedeclareDirect,
    DeleteDirect,
    BindFanoutToDirect,
    UnbindFanoutToDirect,
}

fn op() -> impl Strategy<Value = Op> {
    let exchange = prop::sample::select(vec!["t", "d", "", "f"]);
    let key = prop::sample::select(KEYS.to_vec());
    let queue = prop::sample::select(QUEUES.to_vec());
    prop_oneof![
        8 => (exchange.clone(), key.clone(), any::<bool>(), prop::bool::weighted(0.3), prop::bool::weighted(0.1))
            .prop_map(|(exchange, key, through_publisher, red, cc)| Op::Publish { exchange, key, through_publisher, red, cc }),
        1 => (queue.clone(), exchange.clone(), key.clone()).prop_map(|(queue, exchange, key)| Op::Bind { queue, exchange, key }),
        1 => (queue.clone(), exchange, key).prop_map(|(queue, exchange, key)| Op::Unbind { queue, exchange, key }),
        1 => Just(Op::BindHeaders),
        1 => Just(Op::UnbindHeaders),
        1 => queue.clone().prop_map(Op::RedeclareQueue),
        1 => queue.prop_map(Op::DeleteQueue),
        1 => Just(Op::RedeclareDirect),
        1 => Just(Op::DeleteDirect),
        1 => Just(Op::BindFanoutToDirect),
        1 => Just(Op::UnbindFanoutToDirect),
    ]
}

/// What an operation did, comparable across the twins.
#[derive(Debug, PartialEq)]
enum Outcome {
    Routed { queues: usize, duplicates: usize },
    Failed(String),
    Done,
}

fn outcome<T>(result: Result<T, impl std::fmt::Display>) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// One twin: a connection, and a publisher per exchange made at the start.
struct Twin {
    broker: Broker,
    conn: interoffice::Connection,
    publishers: Vec<(&'static str, Publisher)>,
}

impl Twin {
    fn new(recorded: bool) -> (Twin, Option<interoffice::Recorder>) {
        let broker = Broker::new();
        let recorder = recorded.then(|| broker.record());
        topology(&broker);
        let conn = broker.connect();
        let publishers = ["t", "d", "", "f"].map(|e| (e, conn.publisher(e).unwrap())).to_vec();
        (Twin { broker, conn, publishers }, recorder)
    }

    fn apply(&self, i: usize, op: &Op) -> Outcome {
        let conn = &self.conn;
        match *op {
            Op::Publish { exchange, key, through_publisher, red, cc } => {
                let mut m = Message::new(format!("m{i}"));
                if red {
                    m = m.with_header("color", "red");
                }
                if cc {
                    m = m.with_header("CC", FieldValue::Array(vec![FieldValue::from("a.cc")]));
                }
                let options = PublishOptions { mandatory: i.is_multiple_of(3) };
                let result = if through_publisher {
                    let publisher = &self.publishers.iter().find(|(e, _)| *e == exchange).unwrap().1;
                    publisher.publish_with(key, m, options)
                } else {
                    conn.publish_with(exchange, key, m, options)
                };
                match result {
                    Ok(r) => Outcome::Routed { queues: r.queues(), duplicates: r.duplicates() },
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
            Op::Bind { queue, exchange, key } => outcome(conn.bind_queue(queue, exchange, key, None)),
            Op::Unbind { queue, exchange, key } => outcome(conn.unbind_queue(queue, exchange, key, None)),
            Op::BindHeaders => outcome(conn.bind_exchange("h", "t", "h.*", None)),
            Op::UnbindHeaders => outcome(conn.unbind_exchange("h", "t", "h.*", None)),
            Op::RedeclareQueue(q) => match conn.delete_queue(q, Default::default()) {
                Ok(_) => outcome(conn.declare_queue(q, QueueOptions::default())),
                Err(e) => Outcome::Failed(e.to_string()),
            },
            Op::DeleteQueue(q) => outcome(conn.delete_queue(q, Default::default())),
            Op::RedeclareDirect => {
                let _ = conn.delete_exchange("d", Default::default());
                let declared = outcome(conn.declare_exchange("d", ExchangeKind::Direct, Default::default()));
                let _ = conn.bind_queue("q_b", "d", "k", None);
                declared
            }
            Op::DeleteDirect => outcome(conn.delete_exchange("d", Default::default())),
            Op::BindFanoutToDirect => outcome(conn.bind_exchange("d", "f", "", None)),
            Op::UnbindFanoutToDirect => outcome(conn.unbind_exchange("d", "f", "", None)),
        }
    }

    fn contents(&self) -> Vec<(&'static str, Option<Vec<String>>)> {
        QUEUES
            .iter()
            .map(|q| {
                let mut bodies = Vec::new();
                loop {
                    match self.conn.get(q, true) {
                        Ok(Some(d)) => bodies.push(String::from_utf8(d.body().to_vec()).unwrap()),
                        Ok(None) => break (*q, Some(bodies)),
                        Err(_) => break (*q, None),
                    }
                }
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn cached_routes_do_what_walking_the_graph_does(ops in prop::collection::vec(op(), 1..80)) {
        let (cached, _) = Twin::new(false);
        let (walked, recorder) = Twin::new(true);
        for (i, op) in ops.iter().enumerate() {
            let (got, want) = (cached.apply(i, op), walked.apply(i, op));
            prop_assert_eq!(got, want, "op {}: {:?}", i, op);
        }
        prop_assert_eq!(cached.contents(), walked.contents());
        // The reference really walked: it recorded every publish.
        let publishes = ops.iter().filter(|op| matches!(op, Op::Publish { .. })).count();
        let recorded = recorder.unwrap().events().iter()
            .filter(|e| matches!(e, interoffice::Event::Published { .. })).count();
        prop_assert_eq!(recorded, publishes);
        drop(cached.broker);
    }
}

#[test]
fn a_binding_made_before_a_publish_starts_is_seen_by_a_cached_route() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, Default::default()).unwrap();
    conn.declare_queue("first", QueueOptions::default()).unwrap();
    conn.bind_queue("first", "x", "k", None).unwrap();
    let publisher = conn.publisher("x").unwrap();
    let (cached_tx, cached_rx) = mpsc::channel::<()>();
    let (bound_tx, bound_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    std::thread::scope(|s| {
        s.spawn(move || {
            // The route of "k" is cached on another thread, then used again
            // after the bind (ordered by the channels).
            for _ in 0..100 {
                assert_eq!(publisher.publish("k", Message::new("before")).unwrap().queues(), 1);
            }
            cached_tx.send(()).unwrap();
            bound_rx.recv().unwrap();
            done_tx.send(publisher.publish("k", Message::new("after")).unwrap().queues()).unwrap();
        });
        cached_rx.recv().unwrap();
        conn.declare_queue("second", QueueOptions::default()).unwrap();
        conn.bind_queue("second", "x", "k", None).unwrap();
        bound_tx.send(()).unwrap();
        assert_eq!(done_rx.recv().unwrap(), 2);
    });
    assert_eq!(conn.get("second", true).unwrap().unwrap().body().as_ref(), b"after");
}

#[test]
fn a_cache_grown_to_a_thousand_keys_routes_every_key_by_the_current_topology() {
    // Far more keys than a cache starts with: it grows to hold them (its
    // routes spread over sets by key), and a rebind still reaches all.
    let keys: Vec<String> = (0..1000).map(|k| format!("tenant.{k}.order.created")).collect();
    let conn = Broker::new().connect();
    conn.declare_exchange("x", ExchangeKind::Direct, Default::default()).unwrap();
    for queue in ["even", "odd"] {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    for key in &keys {
        conn.bind_queue("even", "x", key, None).unwrap();
    }
    let publisher = conn.publisher("x").unwrap();
    for _ in 0..3 {
        for key in &keys {
            assert_eq!(publisher.publish(key, Message::new("before")).unwrap().queues(), 1);
            assert_eq!(conn.publish("x", key, Message::new("before")).unwrap().queues(), 1);
        }
    }
    assert_eq!(conn.purge_queue("even").unwrap(), 6000);
    for key in keys.iter().skip(1).step_by(2) {
        conn.unbind_queue("even", "x", key, None).unwrap();
        conn.bind_queue("odd", "x", key, None).unwrap();
    }
    for key in &keys {
        assert_eq!(publisher.publish(key, Message::new(key.clone())).unwrap().queues(), 1);
        assert_eq!(conn.publish("x", key, Message::new(key.clone())).unwrap().queues(), 1);
    }
    for (queue, parity) in [("even", 0), ("odd", 1)] {
        for (k, key) in keys.iter().enumerate().filter(|(k, _)| k % 2 == parity) {
            for _ in 0..2 {
                let delivery = conn.get(queue, true).unwrap().unwrap_or_else(|| panic!("{key} in {queue}"));
                assert_eq!(delivery.body().as_ref(), key.as_bytes(), "key {k} in {queue}");
            }
        }
        assert!(conn.get(queue, true).unwrap().is_none(), "nothing else in {queue}");
    }
}

#[test]
fn a_fanout_route_serves_every_key_and_each_message_keeps_its_own_key() {
    let conn = Broker::new().connect();
    conn.declare_exchange("f", ExchangeKind::Fanout, Default::default()).unwrap();
    conn.declare_exchange("d", ExchangeKind::Direct, Default::default()).unwrap();
    for queue in ["all", "keyed"] {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    conn.bind_queue("all", "f", "", None).unwrap();
    let publisher = conn.publisher("f").unwrap();
    let key = |k: usize| format!("orders.eu-west-1.order.{k}.created");
    // More distinct keys than the largest cache holds: a fanout's route
    // reads none of them.
    for k in 0..3_000 {
        assert_eq!(publisher.publish(&key(k), Message::new(key(k))).unwrap().queues(), 1);
    }
    // Bound on to a direct exchange, the fanout's route reads the key.
    conn.bind_exchange("d", "f", "", None).unwrap();
    conn.bind_queue("keyed", "d", &key(7), None).unwrap();
    for k in 0..20 {
        let expected = if k == 7 { 2 } else { 1 };
        assert_eq!(publisher.publish(&key(k), Message::new(key(k))).unwrap().queues(), expected, "key {k}");
        assert_eq!(conn.publish("f", &key(k), Message::new(key(k))).unwrap().queues(), expected, "key {k}");
    }
    conn.unbind_exchange("d", "f", "", None).unwrap();
    for k in 0..20 {
        assert_eq!(publisher.publish(&key(k), Message::new(key(k))).unwrap().queues(), 1, "key {k}");
    }
    // Every message carries the key it was published with.
    let mut all = 0;
    while let Some(delivery) = conn.get("all", true).unwrap() {
        assert_eq!(delivery.routing_key().as_bytes(), delivery.body().as_ref());
        assert_eq!(delivery.exchange(), "f");
        all += 1;
    }
    assert_eq!(all, 3_000 + 40 + 20);
    for _ in 0..2 {
        let delivery = conn.get("keyed", true).unwrap().unwrap();
        assert_eq!(delivery.routing_key(), key(7));
    }
    assert!(conn.get("keyed", true).unwrap().is_none());
}

#[test]
fn a_queue_deleted_and_declared_again_gets_the_next_cached_publish() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let publisher = conn.publisher("").unwrap();
    for via_connection in [false, true] {
        let publish = |m: &str| match via_connection {
            true => conn.publish("", "q", Message::new(m.to_owned())),
            false => publisher.publish("q", Message::new(m.to_owned())),
        };
        assert_eq!(publish("old").unwrap().queues(), 1);
        conn.delete_queue("q", Default::default()).unwrap();
        assert_eq!(publish("lost").unwrap().queues(), 0);
        conn.declare_queue("q", QueueOptions::default()).unwrap();
        assert_eq!(publish("new").unwrap().queues(), 1);
        assert_eq!(conn.get("q", true).unwrap().unwrap().body().as_ref(), b"new");
    }
}

#[test]
fn an_unbound_key_is_unroutable_at_once_and_mandatory_hands_it_back() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, Default::default()).unwrap();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    conn.bind_queue("q", "x", "k", None).unwrap();
    let publisher = conn.publisher("x").unwrap();
    assert_eq!(publisher.publish("k", Message::new("1")).unwrap().queues(), 1);
    conn.unbind_queue("q", "x", "k", None).unwrap();
    let mandatory = PublishOptions { mandatory: true };
    let error = publisher.publish_with("k", Message::new("2"), mandatory).unwrap_err();
    assert!(matches!(&error, PublishError::Unroutable { .. }), "{error}");
    assert_eq!(error.into_message().body().as_ref(), b"2");
}

#[test]
fn one_publisher_shared_by_threads_delivers_every_message_once() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    let publisher = conn.publisher("").unwrap();
    const THREADS: usize = 4;
    const EACH: usize = 5_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let publisher = &publisher;
            s.spawn(move || {
                for i in 0..EACH {
                    let key = if i % 7 == 0 { "nowhere" } else { "q" };
                    let routed = publisher.publish(key, Message::new(format!("{t}:{i}"))).unwrap();
                    assert_eq!(routed.queues(), usize::from(key == "q"));
                }
            });
        }
    });
    let mut seen = std::collections::HashSet::new();
    let expected = THREADS * (EACH - EACH.div_ceil(7));
    for _ in 0..expected {
        let d = consumer.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(seen.insert(d.body().to_vec()), "delivered twice");
    }
    assert!(consumer.try_recv().is_err());
}

#[test]
fn request_reply_through_caching_connections_gets_every_reply() {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("rpc", QueueOptions::default()).unwrap();
    let client = broker.connect();
    let _worker = server
        .serve("rpc", interoffice::WorkerOptions::default(), |request| {
            Ok::<_, std::convert::Infallible>(Message::new(request.body().to_vec()))
        })
        .unwrap();
    // The client publishes each request by name (cached), the server each
    // reply to a direct reply-to address, which is walked every time.
    for i in 0..20 {
        let reply =
            client.call("", "rpc", Message::new(format!("{i}")), std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(reply.body().as_ref(), format!("{i}").as_bytes());
    }
}

/// Publishers on other threads never use a route a bind or an unbind has
/// made stale. The phase counts up by one per step: a multiple of 4 while
/// `second` is unbound, 2 more while it is bound, odd while a bind or an
/// unbind is under way. A publish that ran entirely inside one even phase
/// (read before and after it) reached both queues if `second` was bound
/// then, and only `first` if not.
#[test]
fn concurrent_binds_and_unbinds_are_never_missed_by_cached_routes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    const PUBLISHERS: usize = 2;
    const FLIPS: u64 = 300;
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, Default::default()).unwrap();
    for q in ["first", "second"] {
        conn.declare_queue(q, QueueOptions { max_length: Some(16), ..Default::default() }).unwrap();
    }
    conn.bind_queue("first", "x", "k", None).unwrap();
    let (phase, checked, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    // Set by a publisher thread that ends, even by a failed assertion, so
    // that the main thread stops waiting for it.
    struct Ended<'a>(&'a AtomicBool);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let ended = AtomicBool::new(false);
    // Lets the publishers use the phase's routes a while.
    let settle = || {
        let (seen, start) = (checked.load(Ordering::Relaxed), Instant::now());
        while checked.load(Ordering::Relaxed) < seen + 8
            && !ended.load(Ordering::Acquire)
            && start.elapsed() < Duration::from_secs(10)
        {
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|s| {
        for _ in 0..PUBLISHERS {
            let (phase, checked, stop, publisher) = (&phase, &checked, &stop, conn.publisher("x").unwrap());
            let ended = &ended;
            s.spawn(move || {
                let _ended = Ended(ended);
                while !stop.load(Ordering::Acquire) {
                    let before = phase.load(Ordering::Acquire);
                    let queues = publisher.publish("k", Message::new("m")).unwrap().queues();
                    if before % 2 == 0 && phase.load(Ordering::Acquire) == before {
                        let bound = before % 4 == 2;
                        assert_eq!(queues, 1 + usize::from(bound), "phase {before}");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for flip in 0..FLIPS {
            if ended.load(Ordering::Acquire) {
                break;
            }
            settle();
            phase.store(4 * flip + 1, Ordering::Release);
            conn.bind_queue("second", "x", "k", None).unwrap();
            phase.store(4 * flip + 2, Ordering::Release);
            settle();
            phase.store(4 * flip + 3, Ordering::Release);
            conn.unbind_queue("second", "x", "k", None).unwrap();
            phase.store(4 * flip + 4, Ordering::Release);
        }
        stop.store(true, Ordering::Release);
    });
    assert!(checked.into_inner() >= FLIPS, "the publishers checked too few publishes");
}
