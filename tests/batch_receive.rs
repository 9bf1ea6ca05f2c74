//! Receiving in batches (`Consumer::recv_batch`, `try_recv_batch`): the
//! same deliveries, in the same order, with the same bookkeeping as one by
//! one — prefetch still a hard bound, tags in order, acks and requeues as
//! usual, auto-ack credit released for the whole batch.

use interoffice::{Broker, ConsumeOptions, Message, QueueOptions, RecvError, TryRecvError};

fn body(d: &interoffice::Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

#[test]
fn a_batch_is_what_is_waiting_in_order_within_prefetch() {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 10, ..Default::default() }).unwrap();
    assert!(matches!(consumer.try_recv_batch(64), Err(TryRecvError::Empty)));
    for i in 0..25 {
        conn.publish("", "q", Message::new(format!("m{i}"))).unwrap();
    }
    let first = consumer.try_recv_batch(64).unwrap();
    assert_eq!(
        first.iter().map(body).collect::<Vec<_>>(),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let tags: Vec<u64> = first.iter().map(|d| d.delivery_tag()).collect();
    assert_eq!(tags, (1..=10).collect::<Vec<_>>());
    // Prefetch holds: nothing more until some are settled.
    assert!(matches!(consumer.try_recv_batch(64), Err(TryRecvError::Empty)));
    let mut first = first.into_iter();
    for d in first.by_ref().take(3) {
        d.ack().unwrap();
    }
    let more = consumer.try_recv_batch(2).unwrap();
    assert_eq!(more.iter().map(body).collect::<Vec<_>>(), ["m10", "m11"]);
    // The third credit freed already sent m12 to the inbox; a requeued m3
    // follows it there, flagged.
    first.next().unwrap().nack(true).unwrap();
    let again: Vec<(String, bool)> =
        consumer.recv_batch(64).unwrap().iter().map(|d| (body(d), d.redelivered())).collect();
    assert_eq!(again, [("m12".to_owned(), false), ("m3".to_owned(), true)]);
    let stats = conn.queue_stats("q").unwrap();
    assert_eq!(stats.messages_unacknowledged, 6 + 2 + 2);
}

#[test]
fn auto_ack_batches_release_their_credit_together() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer =
        conn.consume("q", ConsumeOptions { prefetch: 8, auto_ack: true, ..Default::default() }).unwrap();
    let n = 10_000;
    std::thread::scope(|s| {
        let publisher = broker.connect();
        s.spawn(move || {
            for i in 0..n {
                publisher.publish("", "q", Message::new(format!("{i}"))).unwrap();
            }
        });
        let mut next = 0;
        while next < n {
            let batch = consumer.recv_batch(64).unwrap();
            assert!(!batch.is_empty() && batch.len() <= 8, "prefetch bounds a batch: {}", batch.len());
            for d in batch {
                assert_eq!(body(&d), next.to_string());
                next += 1;
            }
        }
    });
    assert_eq!(conn.queue_stats("q").unwrap().messages_ready, 0);
}

#[test]
fn a_cancelled_consumer_hands_out_what_is_left_then_ends() {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions::default()).unwrap();
    conn.publish("", "q", Message::new("last")).unwrap();
    conn.delete_queue("q", Default::default()).unwrap();
    // The inbox still held one message when the queue went.
    match consumer.try_recv_batch(4) {
        Ok(batch) => assert_eq!(batch.len(), 1),
        Err(e) => assert!(matches!(e, TryRecvError::Closed(_)), "{e:?}"),
    }
    assert!(matches!(consumer.try_recv_batch(4), Err(TryRecvError::Closed(_))));
    assert!(matches!(consumer.recv_batch(4), Err(RecvError::QueueDeleted(_))));
}

#[test]
fn recv_batch_takes_at_least_one_and_at_most_max_whether_waiting_or_not() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    for i in 0..5 {
        conn.publish("", "q", Message::new(format!("m{i}"))).unwrap();
    }
    // Waiting already: taken straight from the inbox, `max` 0 counting as 1.
    let bodies = |batch: Vec<interoffice::Delivery>| batch.iter().map(body).collect::<Vec<_>>();
    assert_eq!(bodies(consumer.recv_batch(0).unwrap()), ["m0"]);
    assert_eq!(bodies(consumer.recv_batch(2).unwrap()), ["m1", "m2"]);
    assert_eq!(bodies(consumer.recv_batch(64).unwrap()), ["m3", "m4"]);
    // Nothing waiting: the receive waits for the first, and still takes
    // one at most when asked for none.
    std::thread::scope(|s| {
        let publisher = broker.connect();
        s.spawn(move || {
            for i in 5..7 {
                publisher.publish("", "q", Message::new(format!("m{i}"))).unwrap();
            }
        });
        assert_eq!(bodies(consumer.recv_batch(0).unwrap()), ["m5"]);
    });
    assert_eq!(bodies(consumer.recv_batch(64).unwrap()), ["m6"]);
}
