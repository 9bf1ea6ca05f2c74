//! Restart round trips: what a broker on a data directory keeps across a
//! close and an open, feature by feature (GUARANTEES G36–G38).

#[path = "support/data_dir.rs"]
mod data_dir;

use std::time::Duration;

use data_dir::DataDir;
use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, DeduplicationWindow, DeliveryMode, ExchangeKind, ExchangeOptions,
    FieldValue, Message, OpenError, PublishOptions, QueueOptions, QueueType, StoreOptions, SyncPolicy,
};

fn durable() -> QueueOptions {
    QueueOptions { durable: true, ..Default::default() }
}

fn persistent(body: &str) -> Message {
    Message::new(body.to_owned()).with_delivery_mode(DeliveryMode::Persistent)
}

fn open(dir: &DataDir) -> Broker {
    Broker::open(dir.path(), BrokerOptions::default()).expect("open")
}

/// Bodies left in `queue`, taken with `get` and acked.
fn drain(broker: &Broker, queue: &str) -> Vec<String> {
    let conn = broker.connect();
    let mut bodies = Vec::new();
    while let Some(d) = conn.get(queue, false).expect("get") {
        bodies.push(String::from_utf8(d.message().body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    bodies
}

#[test]
fn durable_topology_and_persistent_messages_survive_and_the_rest_does_not() {
    let dir = DataDir::new("topology");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        let durable_x = ExchangeOptions { durable: true, ..Default::default() };
        conn.declare_exchange("orders", ExchangeKind::Topic, durable_x).unwrap();
        conn.declare_exchange("scratch", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
        conn.declare_queue("billing", durable()).unwrap();
        conn.declare_queue("cache", QueueOptions::default()).unwrap();
        conn.declare_queue("mine", QueueOptions { durable: true, exclusive: true, ..Default::default() })
            .unwrap();
        conn.bind_queue("billing", "orders", "order.#", None).unwrap();
        conn.bind_queue("cache", "orders", "order.#", None).unwrap();
        conn.bind_queue("billing", "amq.direct", "bill", None).unwrap();
        conn.publish("orders", "order.created", persistent("kept")).unwrap();
        conn.publish("orders", "order.created", Message::new("transient")).unwrap();
        conn.publish("amq.direct", "bill", persistent("kept too")).unwrap();
        assert_eq!(broker.queue_stats("billing").unwrap().messages_ready, 3);
    }
    let broker = open(&dir);
    let report = broker.recovery().expect("a broker on a data directory reports its recovery");
    assert_eq!(report.messages, 2, "{report:?}");
    assert!(report.truncations.is_empty() && report.refused.is_empty(), "{report:?}");
    assert!(broker.queue_stats("cache").is_err(), "a non-durable queue is gone");
    assert!(broker.queue_stats("mine").is_err(), "an exclusive queue is gone");
    let names = broker.exchange_names();
    assert!(names.iter().any(|n| n == "orders") && !names.iter().any(|n| n == "scratch"), "{names:?}");
    assert_eq!(drain(&broker, "billing"), ["kept", "kept too"]);
    // The bindings came back: both routes still lead to the queue.
    let conn = broker.connect();
    assert_eq!(conn.publish("orders", "order.paid", persistent("again")).unwrap().queues(), 1);
    assert_eq!(conn.publish("amq.direct", "bill", persistent("again")).unwrap().queues(), 1);
}

#[test]
fn acked_messages_stay_gone_and_the_rest_keep_their_order_and_counts() {
    let dir = DataDir::new("order");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue("q", durable()).unwrap();
        for i in 0..10 {
            conn.publish("", "q", persistent(&format!("m{i}"))).unwrap();
        }
        let consumer = conn.consume("q", ConsumeOptions { prefetch: 4, ..Default::default() }).unwrap();
        let first: Vec<_> = (0..4).map(|_| consumer.recv().unwrap()).collect();
        let mut first = first.into_iter();
        first.next().unwrap().ack().unwrap(); // m0 gone
        first.next().unwrap().nack(true).unwrap(); // m1 back, delivered once
        // m2 and m3 stay unacked: the connection's close returns them.
        let kept: Vec<_> = first.collect();
        drop(consumer);
        drop(kept);
        drop(conn);
    }
    let broker = open(&dir);
    let conn = broker.connect();
    let mut seen = Vec::new();
    while let Some(d) = conn.get("q", false).unwrap() {
        let body = String::from_utf8(d.message().body().to_vec()).unwrap();
        seen.push((body, d.redelivered(), d.delivery_count()));
        d.ack().unwrap();
    }
    // m1 was nacked once; m2 and m3 came back when the consumer went; m4
    // sat in its inbox, never seen by the application: not redelivered.
    let expected: Vec<(String, bool, u32)> = (1..10)
        .map(|i| {
            let seen = i <= 3;
            (format!("m{i}"), seen, u32::from(seen))
        })
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn ttl_deadlines_run_on_the_wall_clock_across_a_restart() {
    let dir = DataDir::new("ttl");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue("expired", durable()).unwrap();
        let with_dlx = QueueOptions {
            durable: true,
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("expired".into()),
            ..Default::default()
        };
        conn.declare_queue("short", with_dlx).unwrap();
        conn.declare_queue("long", durable()).unwrap();
        conn.publish("", "short", persistent("soon").with_expiration(Duration::from_millis(40))).unwrap();
        conn.publish("", "long", persistent("later").with_expiration(Duration::from_secs(3600))).unwrap();
    }
    // Time passes while no broker runs: it counts.
    std::thread::sleep(Duration::from_millis(80));
    let broker = open(&dir);
    assert_eq!(drain(&broker, "long"), ["later"]);
    assert!(drain(&broker, "short").is_empty());
    let conn = broker.connect();
    let letter = conn.get("expired", true).unwrap().expect("dead-lettered at open");
    let death = &letter.deaths()[0];
    assert_eq!((death.reason, death.queue.as_str()), (Some(interoffice::DeathReason::Expired), "short"));
}

#[test]
fn delayed_messages_stay_invisible_until_due_across_a_restart() {
    let dir = DataDir::new("delayed");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue("q", durable()).unwrap();
        conn.publish("", "q", persistent("in an hour").with_delay(Duration::from_secs(3600))).unwrap();
        conn.publish("", "q", persistent("in a moment").with_delay(Duration::from_millis(30))).unwrap();
        conn.publish("", "q", persistent("now")).unwrap();
        assert_eq!(broker.queue_stats("q").unwrap().messages_delayed, 2);
    }
    std::thread::sleep(Duration::from_millis(60));
    let broker = open(&dir);
    assert_eq!(drain(&broker, "q"), ["now", "in a moment"]);
    assert_eq!(broker.queue_stats("q").unwrap().messages_delayed, 1, "the hour is not up");
}

#[test]
fn priorities_keep_their_order_across_a_restart() {
    let dir = DataDir::new("priorities");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions { durable: true, max_priority: Some(9), ..Default::default() })
            .unwrap();
        for (body, priority) in [("low", 1), ("high", 9), ("mid", 5), ("high2", 9), ("none", 0)] {
            conn.publish("", "q", persistent(body).with_priority(priority)).unwrap();
        }
    }
    let broker = open(&dir);
    assert_eq!(drain(&broker, "q"), ["high", "high2", "mid", "low", "none"]);
}

#[test]
fn dead_letter_histories_survive_a_restart() {
    let dir = DataDir::new("xdeath");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue("dead", durable()).unwrap();
        let work = QueueOptions {
            durable: true,
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("dead".into()),
            ..Default::default()
        };
        conn.declare_queue("work", work).unwrap();
        conn.publish("", "work", persistent("poison")).unwrap();
        conn.get("work", false).unwrap().unwrap().reject(false).unwrap();
        assert_eq!(broker.queue_stats("dead").unwrap().messages_ready, 1);
    }
    let broker = open(&dir);
    assert!(drain(&broker, "work").is_empty(), "the rejected message left its queue for good");
    let letter = broker.connect().get("dead", true).unwrap().expect("the dead letter survived");
    let deaths = letter.deaths();
    assert_eq!(deaths.len(), 1);
    assert_eq!(deaths[0].reason, Some(interoffice::DeathReason::Rejected));
    assert_eq!((deaths[0].queue.as_str(), deaths[0].count), ("work", 1));
}

#[test]
fn delivery_counts_survive_a_restart() {
    let dir = DataDir::new("counts");
    {
        let broker = open(&dir);
        let conn = broker.connect();
        let quorum = QueueOptions {
            durable: true,
            queue_type: QueueType::Quorum,
            delivery_limit: Some(5),
            ..Default::default()
        };
        conn.declare_queue("q", quorum).unwrap();
        conn.publish("", "q", persistent("flaky")).unwrap();
        for _ in 0..3 {
            conn.get("q", false).unwrap().unwrap().nack(true).unwrap();
        }
    }
    let broker = open(&dir);
    let d = broker.connect().get("q", false).unwrap().unwrap();
    assert_eq!(d.delivery_count(), 3);
    assert!(d.redelivered());
    assert_eq!(d.message().header("x-delivery-count").and_then(FieldValue::as_i64), Some(3));
}

#[test]
fn deduplication_windows_survive_a_restart() {
    let dir = DataDir::new("dedup");
    let window = DeduplicationWindow { max_ids: Some(100), duration: None };
    {
        let broker = open(&dir);
        let conn = broker.connect();
        conn.declare_queue(
            "q",
            QueueOptions { durable: true, deduplication_window: Some(window), ..Default::default() },
        )
        .unwrap();
        conn.publish("", "q", persistent("first").with_message_id("order-1")).unwrap();
        conn.get("q", false).unwrap().unwrap().ack().unwrap();
    }
    let broker = open(&dir);
    let conn = broker.connect();
    let routed = conn.publish("", "q", persistent("again").with_message_id("order-1")).unwrap();
    assert_eq!(routed.duplicates(), 1, "order-1 is still inside the window after the restart");
    let fresh = conn.publish("", "q", persistent("new").with_message_id("order-2")).unwrap();
    assert_eq!(fresh.queues(), 1);
}

#[test]
fn a_directory_in_use_is_refused_and_free_again_once_closed() {
    let dir = DataDir::new("lock");
    let broker = open(&dir);
    match Broker::open(dir.path(), BrokerOptions::default()) {
        Err(OpenError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(broker);
    let _again = open(&dir);
}

#[test]
fn every_sync_policy_keeps_what_it_confirmed() {
    for sync in [
        SyncPolicy::EveryMessage,
        SyncPolicy::default(),
        SyncPolicy::Grouped { max_delay: Duration::from_millis(5), max_messages: 8 },
        SyncPolicy::OsBuffered,
    ] {
        let dir = DataDir::new("policies");
        let options =
            || BrokerOptions { store: StoreOptions { sync, ..Default::default() }, ..Default::default() };
        {
            let broker = Broker::open(dir.path(), options()).unwrap();
            let conn = broker.connect();
            conn.declare_queue("q", durable()).unwrap();
            std::thread::scope(|s| {
                for t in 0..4 {
                    let conn = broker.connect();
                    s.spawn(move || {
                        for i in 0..50 {
                            conn.publish("", "q", persistent(&format!("{t}-{i}"))).unwrap();
                        }
                    });
                }
            });
            let confirms: Vec<_> = (0..50)
                .map(|i| {
                    conn.publish_confirmed(
                        "",
                        "q",
                        persistent(&format!("async-{i}")),
                        PublishOptions::default(),
                    )
                })
                .collect();
            for confirm in confirms {
                futures::executor::block_on(confirm).unwrap();
            }
            let stats = broker.store_stats().unwrap();
            assert_eq!(stats.messages, 250, "{sync:?}");
            if sync != SyncPolicy::OsBuffered {
                assert!(stats.syncs > 0, "{sync:?}");
            }
        }
        let broker = Broker::open(dir.path(), options()).unwrap();
        let bodies = drain(&broker, "q");
        assert_eq!(bodies.len(), 250, "{sync:?}");
        for t in 0..4 {
            let mine: Vec<_> = bodies.iter().filter(|b| b.starts_with(&format!("{t}-"))).cloned().collect();
            let expected: Vec<_> = (0..50).map(|i| format!("{t}-{i}")).collect();
            assert_eq!(mine, expected, "{sync:?}: each publisher's order is kept");
        }
    }
}

#[test]
fn compaction_keeps_the_disk_proportional_to_what_is_queued() {
    let dir = DataDir::new("compaction");
    let options = || BrokerOptions {
        store: StoreOptions { segment_bytes: 64 * 1024, sync: SyncPolicy::OsBuffered, ..Default::default() },
        ..Default::default()
    };
    let body = "x".repeat(1000);
    {
        let broker = Broker::open(dir.path(), options()).unwrap();
        let conn = broker.connect();
        conn.declare_queue("q", durable()).unwrap();
        // One long-lived message at the very start pins the oldest segment.
        conn.publish("", "q", persistent("pinned")).unwrap();
        let pinned = conn.get("q", false).unwrap().unwrap();
        for round in 0..20 {
            for i in 0..100 {
                conn.publish("", "q", persistent(&format!("{round}-{i}-{body}"))).unwrap();
            }
            while let Some(d) = conn.get("q", false).unwrap() {
                d.ack().unwrap();
            }
        }
        let stats = broker.store_stats().unwrap();
        assert_eq!(stats.messages, 1);
        assert!(stats.disk_bytes < 4 * 64 * 1024, "2 MB written, 1 message live: {stats:?}");
        assert!(stats.compacted_segments >= 25 && stats.copied_records >= 1, "{stats:?}");
        drop(pinned); // unacked at close: comes back
    }
    let broker = Broker::open(dir.path(), options()).unwrap();
    let d = broker.connect().get("q", false).unwrap().unwrap();
    assert_eq!(d.message().body().as_ref(), b"pinned");
    assert!(d.redelivered());
}

#[test]
fn a_store_of_a_later_format_is_refused_clearly() {
    let dir = DataDir::new("version");
    {
        let broker = open(&dir);
        broker.connect().declare_queue("q", durable()).unwrap();
        broker.connect().publish("", "q", persistent("m")).unwrap();
    }
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 16)
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&segment, bytes).unwrap();
    match Broker::open(dir.path(), BrokerOptions::default()) {
        Err(e @ OpenError::UnsupportedVersion { found: 99, supported: 1, .. }) => {
            assert!(e.to_string().contains("store format 99"), "{e}");
        }
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_broker_without_a_data_directory_has_no_store() {
    let broker = Broker::new();
    assert!(broker.recovery().is_none() && broker.store_stats().is_none() && broker.data_dir().is_none());
    let conn = broker.connect();
    conn.declare_queue("q", durable()).unwrap();
    let confirm = conn.publish_confirmed("", "q", persistent("m"), PublishOptions::default());
    assert_eq!(confirm.wait().unwrap().queues(), 1);
}

#[test]
fn bodies_past_the_memory_budget_are_paged_out_and_read_back() {
    let dir = DataDir::new("paging");
    let options = || BrokerOptions {
        store: StoreOptions { queue_memory_budget: 8 * 1024, ..Default::default() },
        ..Default::default()
    };
    let body = |i: usize| format!("{i:04}{}", "x".repeat(1020));
    {
        let broker = Broker::open(dir.path(), options()).unwrap();
        let conn = broker.connect();
        conn.declare_queue("dead", durable()).unwrap();
        let q = QueueOptions {
            durable: true,
            max_length_bytes: Some(150 * 1024),
            overflow: interoffice::Overflow::RejectPublish,
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("dead".into()),
            ..Default::default()
        };
        conn.declare_queue("q", q).unwrap();
        for i in 0..150 {
            conn.publish("", "q", persistent(&body(i))).unwrap();
        }
        // Byte limits count paged-out bodies: the queue is full.
        let refused = conn.publish("", "q", persistent(&body(999))).unwrap_err();
        assert!(matches!(refused, interoffice::PublishError::Rejected { .. }), "{refused}");
        // Delivered through a consumer and through get, in order, whole.
        let consumer = conn.consume("q", ConsumeOptions { prefetch: 10, ..Default::default() }).unwrap();
        for i in 0..50 {
            let d = consumer.recv().unwrap();
            assert_eq!(d.message().body().as_ref(), body(i).as_bytes());
            d.ack().unwrap();
        }
        drop(consumer);
        for i in 50..60 {
            let d = conn.get("q", false).unwrap().unwrap();
            assert_eq!(d.message().body().as_ref(), body(i).as_bytes());
            d.ack().unwrap();
        }
        // A paged-out message dead-lettered carries its body.
        let d = conn.get("q", false).unwrap().unwrap();
        d.reject(false).unwrap();
        let letter = conn.get("dead", true).unwrap().unwrap();
        assert_eq!(letter.message().body().as_ref(), body(60).as_bytes());
        let stats = broker.store_stats().unwrap();
        assert!(stats.paged_in >= 50, "most bodies came back from disk: {stats:?}");
        assert_eq!(stats.unreadable, 0);
    }
    // After a restart the rest are paged out again, and read back whole.
    let broker = Broker::open(dir.path(), options()).unwrap();
    let conn = broker.connect();
    for i in 61..150 {
        let d = conn.get("q", false).unwrap().unwrap();
        assert_eq!(d.message().body().as_ref(), body(i).as_bytes(), "message {i}");
        d.ack().unwrap();
    }
    assert!(conn.get("q", false).unwrap().is_none());
    assert!(broker.store_stats().unwrap().paged_in >= 80);
}

#[test]
fn virtual_hosts_survive_and_a_deleted_one_stays_deleted() {
    let dir = DataDir::new("vhosts");
    {
        let broker = open(&dir);
        broker.add_vhost("empty").unwrap();
        broker.add_vhost("billing").unwrap();
        broker.add_vhost("gone").unwrap();
        let admin = |vhost: &str| {
            let credentials = interoffice::Credentials::password("guest");
            broker.connect_with(interoffice::ConnectOptions::new(vhost, "guest", credentials)).unwrap()
        };
        broker.set_permissions("guest", "billing", &interoffice::Permissions::full()).unwrap();
        broker.set_permissions("guest", "gone", &interoffice::Permissions::full()).unwrap();
        let billing = admin("billing");
        billing.declare_queue("invoices", durable()).unwrap();
        billing.publish("", "invoices", persistent("in billing")).unwrap();
        admin("gone").declare_queue("invoices", durable()).unwrap();
        broker.delete_vhost("gone").unwrap();
    }
    let broker = open(&dir);
    let mut names = broker.vhost_names();
    names.sort();
    assert_eq!(names, ["/", "billing", "empty"]);
    let billing = broker.vhost("billing").unwrap();
    assert_eq!(billing.queue_stats("invoices").unwrap().messages_ready, 1);
    assert!(broker.queue_stats("invoices").is_err(), "queues stay in their own vhost");
}

#[test]
fn hostile_store_options_and_paths_are_refused_never_a_panic_or_a_hang() {
    let dir = DataDir::new("hostile");
    let refused = |store: StoreOptions| {
        let options = BrokerOptions { store, ..Default::default() };
        match Broker::open(dir.path(), options) {
            Err(e @ OpenError::InvalidOptions(_)) => e.to_string(),
            other => panic!("expected InvalidOptions, got {:?}", other.map(|_| ())),
        }
    };
    let forever = SyncPolicy::Grouped { max_delay: Duration::MAX, max_messages: usize::MAX };
    assert!(refused(StoreOptions { sync: forever, ..Default::default() }).contains("max_delay"));
    let none = SyncPolicy::Grouped { max_delay: Duration::from_millis(1), max_messages: 0 };
    assert!(refused(StoreOptions { sync: none, ..Default::default() }).contains("max_messages"));
    assert!(refused(StoreOptions { segment_bytes: 0, ..Default::default() }).contains("segment_bytes"));
    assert!(
        refused(StoreOptions { segment_bytes: u64::MAX, ..Default::default() }).contains("segment_bytes")
    );
    // The longest delay allowed, and a budget of nothing: both work.
    let slow = SyncPolicy::Grouped { max_delay: interoffice::MAX_GROUP_DELAY, max_messages: usize::MAX };
    let options = BrokerOptions {
        store: StoreOptions { sync: slow, queue_memory_budget: 0, ..Default::default() },
        ..Default::default()
    };
    {
        let broker = Broker::open(dir.path(), options.clone()).unwrap();
        let conn = broker.connect();
        conn.declare_queue("q", durable()).unwrap();
        conn.publish("", "q", persistent("paged at once")).unwrap();
        let d = conn.get("q", false).unwrap().unwrap();
        assert_eq!(d.message().body().as_ref(), b"paged at once");
        d.ack().unwrap();
    }
    // A path that cannot be a directory.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    match Broker::open(file.join("store"), BrokerOptions::default()) {
        Err(e @ OpenError::Io { .. }) => assert!(e.to_string().contains("a-file"), "{e}"),
        other => panic!("expected an I/O error, got {:?}", other.map(|_| ())),
    }
}
