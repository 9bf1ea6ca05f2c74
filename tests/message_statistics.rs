//! Message statistics (`QueueStats::message_stats`): what each counter
//! counts, and that turning statistics off keeps none and changes nothing
//! else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, DeduplicationWindow, ExchangeKind, ExchangeOptions, FieldTable,
    Message, MessageStats, Overflow, QueueOptions,
};

fn broker(statistics: bool) -> Broker {
    Broker::with_options(BrokerOptions { statistics, ..Default::default() })
}

fn stats(broker: &Broker, queue: &str) -> MessageStats {
    broker.queue_stats(queue).unwrap().message_stats.expect("statistics are on by default")
}

fn manual(prefetch: u32) -> ConsumeOptions {
    ConsumeOptions { prefetch, ..Default::default() }
}

#[test]
fn statistics_are_on_by_default_and_start_at_zero() {
    let broker = Broker::new();
    broker.connect().declare_queue("q", QueueOptions::default()).unwrap();
    assert_eq!(stats(&broker, "q"), MessageStats::default());
}

#[test]
fn publishes_deliveries_redeliveries_and_acks_are_counted() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    for i in 0..3 {
        conn.publish("", "q", Message::new(format!("m{i}"))).unwrap();
    }
    let consumer = conn.consume("q", manual(1)).unwrap();
    consumer.recv().unwrap().nack(true).unwrap(); // m0 back, redelivered next
    let again = consumer.recv().unwrap();
    assert!(again.redelivered());
    again.ack().unwrap();
    consumer.recv().unwrap().reject(false).unwrap(); // m1: rejected is not acked
    consumer.recv().unwrap().ack().unwrap(); // m2

    let s = stats(&broker, "q");
    assert_eq!(s.published, 3);
    assert_eq!(s.delivered, 4);
    assert_eq!(s.redelivered, 1);
    assert_eq!(s.acknowledged, 2);
    assert_eq!(s.fetched, 0);
}

#[test]
fn auto_ack_deliveries_are_delivered_not_acknowledged() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    conn.publish("", "q", Message::new("m")).unwrap();
    consumer.recv().unwrap();
    let s = stats(&broker, "q");
    assert_eq!((s.published, s.delivered, s.acknowledged), (1, 1, 0));
}

#[test]
fn gets_count_as_fetched_and_their_acks_as_acknowledged() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    for _ in 0..3 {
        conn.publish("", "q", Message::new("m")).unwrap();
    }
    conn.get("q", false).unwrap().unwrap().ack().unwrap();
    conn.get("q", false).unwrap().unwrap().nack(true).unwrap();
    let redelivered = conn.get("q", true).unwrap().unwrap();
    assert!(redelivered.redelivered());
    assert!(conn.get("q", true).unwrap().is_some());
    assert!(conn.get("q", true).unwrap().is_none());
    let s = stats(&broker, "q");
    assert_eq!((s.fetched, s.redelivered, s.acknowledged, s.delivered), (4, 1, 1, 0));
}

#[test]
fn each_queue_a_publish_reaches_counts_it_once() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("fan", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    for q in ["a", "b"] {
        conn.declare_queue(q, QueueOptions::default()).unwrap();
        conn.bind_queue(q, "fan", "", FieldTable::new()).unwrap();
    }
    // A second binding of "a" must not count the message twice.
    conn.bind_queue("a", "fan", "other", FieldTable::new()).unwrap();
    conn.publish("fan", "", Message::new("m")).unwrap();
    assert_eq!(stats(&broker, "a").published, 1);
    assert_eq!(stats(&broker, "b").published, 1);
}

#[test]
fn refused_publishes_are_not_counted_as_published() {
    let broker = Broker::new();
    let conn = broker.connect();
    let full = QueueOptions { max_length: Some(1), overflow: Overflow::RejectPublish, ..Default::default() };
    conn.declare_queue("full", full).unwrap();
    conn.publish("", "full", Message::new("1")).unwrap();
    assert!(conn.publish("", "full", Message::new("2")).is_err());
    let dedup = QueueOptions {
        deduplication_window: Some(DeduplicationWindow { max_ids: Some(10), duration: None }),
        ..Default::default()
    };
    conn.declare_queue("dedup", dedup).unwrap();
    for _ in 0..2 {
        conn.publish("", "dedup", Message::new("m").with_message_id("id-1")).unwrap();
    }
    assert_eq!(stats(&broker, "full").published, 1);
    assert_eq!(stats(&broker, "dedup").published, 1);
}

#[test]
fn with_statistics_off_no_counts_are_kept_and_nothing_else_changes() {
    let run = |statistics: bool| {
        let broker = broker(statistics);
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions::default()).unwrap();
        for i in 0..4 {
            conn.publish("", "q", Message::new(format!("m{i}"))).unwrap();
        }
        let consumer = conn.consume("q", manual(3)).unwrap();
        let first = consumer.recv().unwrap();
        first.ack().unwrap();
        let second = consumer.recv().unwrap();
        second.nack(true).unwrap();
        let bodies: Vec<_> = (0..3).map(|_| consumer.recv().unwrap()).collect();
        let order: Vec<_> = bodies.iter().map(|d| (d.body().clone(), d.redelivered())).collect();
        bodies.into_iter().for_each(|d| d.ack().unwrap());
        let queue_stats = broker.queue_stats("q").unwrap();
        (order, queue_stats.messages_ready, queue_stats.messages_unacknowledged, queue_stats.message_stats)
    };
    let (on_order, on_ready, on_unacked, on_stats) = run(true);
    let (off_order, off_ready, off_unacked, off_stats) = run(false);
    assert_eq!(on_order, off_order);
    assert_eq!((on_ready, on_unacked), (off_ready, off_unacked));
    assert_eq!(off_stats, None);
    let on = on_stats.unwrap();
    assert_eq!((on.published, on.delivered, on.redelivered, on.acknowledged), (4, 5, 1, 4));
}

#[test]
fn counts_stay_exact_with_publishers_and_consumers_on_many_threads() {
    const PER_PUBLISHER: usize = 2_500;
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumers: Vec<_> = (0..3).map(|_| conn.consume("q", manual(10)).unwrap()).collect();
    let total = 3 * PER_PUBLISHER as u64;
    let acked = AtomicU64::new(0);
    std::thread::scope(|s| {
        for consumer in &consumers {
            let acked = &acked;
            s.spawn(move || {
                // Consumers share the work unevenly: each stops once all are acked.
                while acked.load(Ordering::SeqCst) < total {
                    let Ok(delivery) = consumer.recv_timeout(Duration::from_millis(10)) else { continue };
                    // Every fifth is requeued once: redeliveries count too.
                    if !delivery.redelivered() && delivery.body()[0] % 5 == 0 {
                        delivery.nack(true).unwrap();
                    } else {
                        delivery.ack().unwrap();
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        for p in 0..3_u8 {
            let conn = &conn;
            s.spawn(move || {
                for i in 0..PER_PUBLISHER {
                    conn.publish("", "q", Message::new(vec![(i % 251) as u8, p])).unwrap();
                }
            });
        }
    });
    let requeued = 3 * (0..PER_PUBLISHER).filter(|i| (i % 251) % 5 == 0).count() as u64;
    let s = stats(&broker, "q");
    assert_eq!((s.published, s.acknowledged), (total, total));
    assert_eq!((s.delivered, s.redelivered), (total + requeued, requeued));
    assert_eq!(broker.queue_stats("q").unwrap().messages_unacknowledged, 0);
}
