//! Settling deliveries: ack, nack and reject, requeue to the original
//! position, requeue on drop, auto-ack, and settling after a cancel.

use std::time::Duration;

use interoffice::{AckError, Broker, ConsumeOptions, Delivery, Message, QueueOptions, TryRecvError};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn queue_with(conn: &interoffice::Connection, n: usize) -> Result {
    conn.declare_queue("q", QueueOptions::default())?;
    for i in 0..n {
        conn.publish("", "q", Message::new(i.to_string()))?;
    }
    Ok(())
}

#[test]
fn ack_removes_the_message_for_good() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 1)?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let d = consumer.recv()?;
    assert_eq!(broker.queue_stats("q").unwrap().messages_unacknowledged, 1);
    d.ack()?;
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    drop(consumer);
    assert!(conn.get("q", true)?.is_none());
    Ok(())
}

#[test]
fn nack_with_requeue_puts_the_message_back_in_its_original_position_flagged_redelivered() -> Result {
    let conn = Broker::new().connect();
    queue_with(&conn, 5)?;
    let first = conn.get("q", false)?.unwrap();
    let second = conn.get("q", false)?.unwrap();
    assert!(!first.redelivered());
    second.nack(true)?;
    first.nack(true)?;
    let order: Vec<(String, bool)> =
        std::iter::from_fn(|| conn.get("q", true).unwrap()).map(|d| (body(&d), d.redelivered())).collect();
    assert_eq!(
        order,
        [("0", true), ("1", true), ("2", false), ("3", false), ("4", false)].map(|(b, r)| (b.to_string(), r))
    );
    Ok(())
}

#[test]
fn reject_with_requeue_is_a_single_nack() -> Result {
    let conn = Broker::new().connect();
    queue_with(&conn, 2)?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let d = consumer.recv()?;
    d.reject(true)?;
    let again = consumer.recv()?;
    assert_eq!((body(&again), again.redelivered()), ("0".into(), true));
    again.ack()?;
    Ok(())
}

#[test]
fn nack_or_reject_without_requeue_discards_the_message() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 2)?;
    conn.get("q", false)?.unwrap().nack(false)?;
    conn.get("q", false)?.unwrap().reject(false)?;
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn a_delivery_dropped_unsettled_is_requeued_flagged_redelivered() -> Result {
    let conn = Broker::new().connect();
    queue_with(&conn, 2)?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    drop(consumer.recv()?);
    let d = consumer.recv()?;
    assert_eq!((body(&d), d.redelivered()), ("0".into(), true));
    Ok(())
}

#[test]
fn a_thread_that_panics_holding_a_delivery_loses_nothing() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 3)?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let crashed = std::thread::scope(|s| {
        s.spawn(|| {
            let d = consumer.recv().unwrap();
            assert_eq!(body(&d), "0");
            panic!("handler crashed while holding {}", body(&d));
        })
        .join()
    });
    assert!(crashed.is_err());
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = consumer.recv_timeout(Duration::from_secs(5))?;
        got.push((body(&d), d.redelivered()));
        d.ack()?;
    }
    assert_eq!(got, [("0".into(), true), ("1".into(), false), ("2".into(), false)]);
    Ok(())
}

#[test]
fn dropping_a_consumer_mid_stream_requeues_its_unacked_messages_first_in_line() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 10)?;
    let first = conn.consume("q", ConsumeOptions { prefetch: 4, ..Default::default() })?;
    let (a, b) = (first.recv()?, first.recv()?);
    a.ack()?;
    // `b` was handed out, `2` and `3` were still in the consumer's inbox.
    drop(b);
    drop(first);
    let second = conn.consume("q", ConsumeOptions::default())?;
    let mut got = Vec::new();
    for _ in 0..9 {
        let d = second.recv()?;
        got.push((body(&d), d.redelivered()));
        d.ack()?;
    }
    let want: Vec<(String, bool)> = (1..10).map(|i| (i.to_string(), i == 1)).collect();
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn cancelling_requeues_what_was_assigned_but_handed_out_deliveries_stay_settleable() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 5)?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    let (d0, d1) = (consumer.recv()?, consumer.recv()?);
    consumer.cancel();
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged, stats.consumers), (3, 2, 0));
    d0.ack()?;
    d1.nack(true)?;
    let rest: Vec<(String, bool)> =
        std::iter::from_fn(|| conn.get("q", true).unwrap()).map(|d| (body(&d), d.redelivered())).collect();
    // 1 was nacked back; 2 never reached the application, so it is not
    // flagged redelivered.
    assert_eq!(
        rest,
        [("1", true), ("2", false), ("3", false), ("4", false)].map(|(b, r)| (b.to_string(), r))
    );
    Ok(())
}

#[test]
fn auto_ack_deliveries_need_no_settling_and_refuse_an_ack() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    queue_with(&conn, 2)?;
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() })?;
    let d = consumer.recv()?;
    assert!(!d.needs_settling());
    assert_eq!(d.ack(), Err(AckError::AutoAck(0)));
    drop(consumer.recv()?);
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn delivery_tags_are_distinct_and_increase_per_consumer() -> Result {
    let conn = Broker::new().connect();
    queue_with(&conn, 3)?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let tags: Vec<u64> = (0..3)
        .map(|_| consumer.recv().unwrap())
        .map(|d| {
            let t = d.delivery_tag();
            d.ack().unwrap();
            t
        })
        .collect();
    assert_eq!(tags, [1, 2, 3]);
    Ok(())
}

#[test]
fn settling_after_the_connection_closed_is_an_error_and_the_message_is_requeued_once() -> Result {
    let broker = Broker::new();
    let owner = broker.connect();
    queue_with(&owner, 1)?;
    let conn = broker.connect();
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let d = consumer.recv()?;
    let got = conn.get("q", false)?;
    assert!(got.is_none());
    drop(conn);
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
    assert_eq!(d.ack(), Err(AckError::ConnectionClosed(1)));
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Closed(_))));
    let again = owner.get("q", true)?.unwrap();
    assert!(again.redelivered());
    assert!(owner.get("q", true)?.is_none());
    Ok(())
}

#[test]
fn a_requeued_message_goes_to_the_next_consumer_with_credit() -> Result {
    let conn = Broker::new().connect();
    queue_with(&conn, 0)?;
    let a = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let b = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    conn.publish("", "q", Message::new("x"))?;
    let d = a.recv()?;
    d.nack(true)?;
    // Round-robin moved on to `b`.
    let again = b.recv_timeout(Duration::from_secs(5))?;
    assert_eq!((body(&again), again.redelivered()), ("x".into(), true));
    again.ack()?;
    assert!(matches!(a.try_recv(), Err(TryRecvError::Empty)));
    Ok(())
}
