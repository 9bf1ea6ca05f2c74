//! How a queue hands messages to consumers: FIFO, strict round-robin between
//! competing consumers, prefetch credit (fair dispatch), backlog delivery.

use std::time::Duration;

use interoffice::{
    Broker, ConsumeError, ConsumeOptions, Consumer, Delivery, Message, QueueOptions, TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

/// Everything a consumer holds right now, without blocking. The deliveries
/// are returned unsettled: dropping them requeues them.
fn drain(consumer: &Consumer) -> Vec<Delivery> {
    std::iter::from_fn(|| consumer.try_recv().ok()).collect()
}

/// The bodies of everything a consumer holds right now, acknowledged.
fn drain_acked(consumer: &Consumer) -> Vec<String> {
    drain(consumer)
        .into_iter()
        .map(|d| {
            let b = body(&d);
            d.ack().unwrap();
            b
        })
        .collect()
}

#[test]
fn four_consumers_without_prefetch_share_100_messages_in_round_robin_order() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let consumers: Vec<Consumer> = (0..4)
        .map(|_| conn.consume("work", ConsumeOptions::default()))
        .collect::<std::result::Result<_, _>>()?;
    for i in 0..100 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    for (c, consumer) in consumers.iter().enumerate() {
        let got = drain_acked(consumer);
        let want: Vec<String> = (0..25).map(|k| (c + 4 * k).to_string()).collect();
        assert_eq!(got, want, "consumer {c}");
    }
    Ok(())
}

#[test]
fn a_consumer_with_prefetch_1_that_never_acks_gets_exactly_one_message() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let stuck = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let busy = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    for i in 0..10 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    let held = stuck.recv()?;
    let mut others = Vec::new();
    for _ in 0..9 {
        let d = busy.recv_timeout(Duration::from_secs(5))?;
        others.push(body(&d));
        d.ack()?;
    }
    assert_eq!(body(&held), "0");
    assert_eq!(others, (1..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(matches!(stuck.try_recv(), Err(TryRecvError::Empty)));
    Ok(())
}

#[test]
fn prefetch_limits_unacknowledged_deliveries_and_an_ack_frees_credit() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("work", QueueOptions::default())?;
    for i in 0..5 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 2, ..Default::default() })?;
    let first = drain(&consumer);
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["0", "1"]);
    let stats = broker.queue_stats("work").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (3, 2));

    let mut first = first.into_iter();
    first.next().unwrap().ack()?;
    let next = drain(&consumer);
    assert_eq!(next.iter().map(body).collect::<Vec<_>>(), ["2"]);
    Ok(())
}

#[test]
fn a_slow_consumer_with_prefetch_does_not_hold_back_the_others() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let slow = conn.consume("work", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    let fast = conn.consume("work", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    for i in 0..100 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    let mut fast_count = 0;
    while let Ok(d) = fast.try_recv() {
        fast_count += 1;
        d.ack()?;
    }
    assert_eq!(drain(&slow).len(), 3);
    assert_eq!(fast_count, 97);
    Ok(())
}

#[test]
fn messages_published_while_no_consumer_exists_wait_and_arrive_in_order() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("inbox", QueueOptions::default())?;
    let producer = broker.connect();
    for i in 0..1000 {
        producer.publish("", "inbox", Message::new(i.to_string()))?;
    }
    assert_eq!(broker.queue_stats("inbox").unwrap().messages_ready, 1000);
    let consumer = conn.consume("inbox", ConsumeOptions::default())?;
    for i in 0..1000 {
        let d = consumer.recv()?;
        assert_eq!(body(&d), i.to_string());
        assert!(!d.redelivered());
        d.ack()?;
    }
    Ok(())
}

#[test]
fn a_consumer_attached_later_joins_the_round_robin() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let a = conn.consume("work", ConsumeOptions::default())?;
    conn.publish("", "work", Message::new("0"))?;
    let b = conn.consume("work", ConsumeOptions::default())?;
    for i in 1..5 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    // As in RabbitMQ, a consumer goes to the back of the line when it
    // receives, and a new consumer joins at the back: a, then b, alternating.
    assert_eq!(drain_acked(&a), ["0", "1", "3"]);
    assert_eq!(drain_acked(&b), ["2", "4"]);
    Ok(())
}

#[test]
fn get_returns_the_next_ready_message_while_a_consumer_holds_unacked_ones() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    for i in 0..3 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    let held = consumer.recv()?;
    let got = conn.get("work", true)?.expect("a ready message");
    assert_eq!((body(&held), body(&got)), ("0".into(), "1".into()));
    let last = conn.get("work", false)?.expect("a ready message");
    assert!(conn.get("work", false)?.is_none());
    last.ack()?;
    Ok(())
}

#[test]
fn get_on_an_empty_queue_returns_none() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("empty", QueueOptions::default())?;
    assert!(conn.get("empty", false)?.is_none());
    Ok(())
}

#[test]
fn publishing_never_blocks_on_a_consumer_that_does_not_read() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let idle = conn.consume("work", ConsumeOptions::default())?;
    for i in 0..50_000 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    assert_eq!(body(&idle.recv()?), "0");
    Ok(())
}

#[test]
fn an_exclusive_consumer_keeps_others_out_until_it_goes() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let owner = conn.consume("work", ConsumeOptions { exclusive: true, ..Default::default() })?;
    let refused = conn.consume("work", ConsumeOptions::default()).unwrap_err();
    assert!(matches!(refused, ConsumeError::AccessRefused(_)), "{refused}");
    drop(owner);
    let _next = conn.consume("work", ConsumeOptions::default())?;
    let refused = conn.consume("work", ConsumeOptions { exclusive: true, ..Default::default() }).unwrap_err();
    assert!(matches!(refused, ConsumeError::AccessRefused(_)), "{refused}");
    Ok(())
}

#[test]
fn auto_ack_prefetch_bounds_the_inbox_and_shares_the_rest() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let idle = conn.consume("work", ConsumeOptions { prefetch: 2, auto_ack: true, ..Default::default() })?;
    let reader =
        conn.consume("work", ConsumeOptions { prefetch: 2, auto_ack: true, ..Default::default() })?;
    for i in 0..10 {
        conn.publish("", "work", Message::new(i.to_string()))?;
    }
    let read: Vec<String> = std::iter::from_fn(|| reader.try_recv().ok()).map(|d| body(&d)).collect();
    assert_eq!(read.len(), 8);
    assert_eq!(drain(&idle).len(), 2);
    Ok(())
}

#[test]
fn recv_blocks_until_a_publish_from_another_thread_arrives() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let consumer = conn.consume("work", ConsumeOptions::default())?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let producer = broker.connect();
            producer.publish("", "work", Message::new("hello")).unwrap();
        });
        let d = consumer.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(body(&d), "hello");
    });
    Ok(())
}
