//! With the real clock, time-based policies run on their own: a timer thread
//! expires and releases messages in queues nobody reads. (Every other
//! time-based test uses a `ManualClock`; these check the real thing, waiting
//! on deliveries with a generous timeout, never sleeping.)

use std::time::{Duration, Instant};

use interoffice::{Broker, ConsumeOptions, FieldValue, Message, QueueOptions};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// Far above the delays used, so a loaded machine cannot fail the tests.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn an_unread_queue_dead_letters_an_expired_message_on_its_own() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.declare_queue(
        "unread",
        QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("dead".into()),
            ..Default::default()
        },
    )?;
    let published = Instant::now();
    conn.publish("", "unread", Message::new("stale").with_expiration(Duration::from_millis(20)))?;
    let dead = conn.consume("dead", ConsumeOptions::default())?;
    let delivery = dead.recv_timeout(PATIENCE)?;
    assert!(published.elapsed() >= Duration::from_millis(20), "dead-lettered early");
    let death = delivery.header("x-death").and_then(FieldValue::as_array).and_then(|d| d[0].as_table());
    assert_eq!(death.and_then(|d| d.get("reason")).and_then(FieldValue::as_str), Some("expired"));
    assert_eq!(broker.queue_stats("unread").map(|s| s.messages_ready).ok(), Some(0));
    delivery.ack()?;
    Ok(())
}

#[test]
fn a_delayed_message_reaches_a_waiting_consumer_on_its_own_and_not_before_its_time() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("later", QueueOptions::default())?;
    let consumer = conn.consume("later", ConsumeOptions::default())?;
    let published = Instant::now();
    conn.publish("", "later", Message::new("now").with_delay(Duration::from_millis(30)))?;
    let delivery = consumer.recv_timeout(PATIENCE)?;
    assert!(published.elapsed() >= Duration::from_millis(30), "delivered early");
    assert_eq!(delivery.body().as_ref(), b"now");
    delivery.ack()?;
    Ok(())
}

#[test]
fn an_unused_queue_with_expires_is_deleted_on_its_own() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue(
        "short-lived",
        QueueOptions { expires: Some(Duration::from_millis(20)), ..Default::default() },
    )?;
    // Watch for the deletion through a consumer: deleting the queue cancels it.
    // Attaching resets the countdown, which starts again when it is cancelled.
    let watcher = conn.consume("short-lived", ConsumeOptions::default())?;
    watcher.cancel();
    let deadline = Instant::now() + PATIENCE;
    while broker.queue_stats("short-lived").is_ok() {
        assert!(Instant::now() < deadline, "queue never expired");
        std::thread::yield_now();
    }
    Ok(())
}
