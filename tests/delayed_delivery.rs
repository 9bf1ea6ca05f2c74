//! Delayed delivery: messages published with a delay (or through a delayed
//! exchange with an `x-delay` header) and deliveries returned with
//! `nack_with_delay` stay invisible in their queues until the broker's clock
//! reaches their due time, then join the tail of the queue. Everything here
//! runs on a `ManualClock`: time moves only when a test advances it.

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, Consumer, Delivery, ExchangeKind, ExchangeOptions,
    FieldTable, FieldValue, ManualClock, Message, Overflow, PublishError, PublishOptions, QueueOptions,
    QueueStats, TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const TICK: Duration = Duration::from_millis(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A broker on a manual clock, and a connection to it.
fn setup() -> (ManualClock, Broker, Connection) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    (clock, broker, conn)
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).expect("the queue exists")
}

/// (ready, delayed, unacknowledged) of a queue.
fn counts(broker: &Broker, queue: &str) -> (usize, usize, usize) {
    let s = stats(broker, queue);
    (s.messages_ready, s.messages_delayed, s.messages_unacknowledged)
}

/// The bodies of every ready message of `queue`, taken with `get` and acknowledged.
fn get_all(conn: &Connection, queue: &str) -> Vec<String> {
    std::iter::from_fn(|| conn.get(queue, false).unwrap())
        .map(|d| {
            let b = body(&d);
            d.ack().unwrap();
            b
        })
        .collect()
}

fn assert_nothing_for(consumer: &Consumer) {
    match consumer.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(d) => panic!("delivered early: {:?} (delivery count {})", body(&d), d.delivery_count()),
        Err(e) => panic!("consumer closed: {e}"),
    }
}

#[test]
fn a_delayed_message_is_invisible_one_tick_before_its_time_and_delivered_at_it() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let routed = conn.publish("", "q", Message::new("later").with_delay(secs(5)))?;
    assert_eq!(routed.queues(), 1);
    assert_nothing_for(&consumer);

    clock.advance(secs(5) - TICK);
    assert_nothing_for(&consumer);
    assert!(conn.get("q", false)?.is_none(), "get must not see a delayed message");
    let s = stats(&broker, "q");
    assert_eq!((s.messages_delayed, s.messages_ready, s.messages_unacknowledged), (1, 0, 0));
    assert_eq!(s.consumers, 1);

    clock.advance(TICK);
    let d = consumer.try_recv().expect("due now: delivered before advance returned");
    assert_eq!(body(&d), "later");
    assert!(!d.redelivered());
    assert_eq!(d.delivery_count(), 0);
    assert_eq!(counts(&broker, "q"), (0, 0, 1));
    d.ack()?;
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    assert_nothing_for(&consumer);
    Ok(())
}

#[test]
fn a_message_knows_its_delay() {
    assert_eq!(Message::new("x").with_delay(secs(5)).delay(), Some(secs(5)));
    assert_eq!(Message::new("x").delay(), None);
}

#[test]
fn a_delayed_message_is_counted_as_delayed_and_joins_the_tail_when_due() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("d1").with_delay(secs(1)))?;
    conn.publish("", "q", Message::new("m1"))?;
    conn.publish("", "q", Message::new("m2"))?;
    assert_eq!(counts(&broker, "q"), (2, 1, 0));

    clock.advance(secs(1));
    assert_eq!(counts(&broker, "q"), (3, 0, 0));
    assert_eq!(get_all(&conn, "q"), ["m1", "m2", "d1"]);
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    Ok(())
}

#[test]
fn a_message_that_falls_due_goes_behind_messages_published_after_it() -> Result {
    let (clock, _broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("m1"))?;
    conn.publish("", "q", Message::new("d1").with_delay(secs(2)))?;
    clock.advance(secs(1));
    conn.publish("", "q", Message::new("m2"))?;
    clock.advance(secs(1));
    conn.publish("", "q", Message::new("m3"))?;
    assert_eq!(get_all(&conn, "q"), ["m1", "m2", "d1", "m3"]);
    Ok(())
}

#[test]
fn several_delayed_messages_are_released_in_due_time_order() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("3s").with_delay(secs(3)))?;
    conn.publish("", "q", Message::new("1s").with_delay(secs(1)))?;
    conn.publish("", "q", Message::new("2s").with_delay(secs(2)))?;
    conn.publish("", "q", Message::new("1.5s").with_delay(ms(1500)))?;
    assert_eq!(counts(&broker, "q"), (0, 4, 0));

    // All at once: the queue holds them in the order they fell due.
    clock.advance(secs(3));
    assert_eq!(counts(&broker, "q"), (4, 0, 0));
    assert_eq!(get_all(&conn, "q"), ["1s", "1.5s", "2s", "3s"]);
    Ok(())
}

#[test]
fn a_consumer_receives_delayed_messages_one_by_one_as_each_falls_due() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    conn.publish("", "q", Message::new("c").with_delay(secs(3)))?;
    conn.publish("", "q", Message::new("a").with_delay(secs(1)))?;
    conn.publish("", "q", Message::new("b").with_delay(secs(2)))?;
    for (step, want) in ["a", "b", "c"].into_iter().enumerate() {
        clock.advance(secs(1) - TICK);
        assert_nothing_for(&consumer);
        assert_eq!(stats(&broker, "q").messages_delayed, 3 - step);
        clock.advance(TICK);
        let d = consumer.try_recv().unwrap_or_else(|e| panic!("{want} due at {}s: {e}", step + 1));
        assert_eq!(body(&d), want);
        d.ack()?;
        assert_nothing_for(&consumer);
    }
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    Ok(())
}

#[test]
fn a_message_with_a_zero_delay_is_delivered_at_once() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("first"))?;
    let routed = conn.publish("", "q", Message::new("now").with_delay(Duration::ZERO))?;
    assert_eq!(routed.queues(), 1);
    assert_eq!(counts(&broker, "q"), (2, 0, 0));
    assert_eq!(get_all(&conn, "q"), ["first", "now"]);
    Ok(())
}

#[test]
fn a_mandatory_delayed_message_to_an_unroutable_key_fails_at_once() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    let mandatory = PublishOptions { mandatory: true };
    let err = conn
        .publish_with("", "nowhere", Message::new("lost?").with_delay(secs(5)), mandatory)
        .expect_err("unroutable at publish time, not when due");
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
    assert_eq!(err.into_message().body().as_ref(), b"lost?");

    // A routable mandatory delayed message is accepted at once, delivered later.
    let routed = conn.publish_with("", "q", Message::new("kept").with_delay(secs(5)), mandatory)?;
    assert_eq!(routed.queues(), 1);
    assert_eq!(counts(&broker, "q"), (0, 1, 0));
    clock.advance(secs(5));
    assert_eq!(get_all(&conn, "q"), ["kept"]);
    Ok(())
}

#[test]
fn a_delayed_exchange_delays_a_message_by_its_x_delay_header() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_exchange(
        "later",
        ExchangeKind::Direct,
        ExchangeOptions { delayed: true, ..Default::default() },
    )?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "later", "k", FieldTable::new())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;

    let routed = conn.publish("later", "k", Message::new("in 2s").with_header("x-delay", 2000i64))?;
    assert_eq!(routed.queues(), 1);
    assert_eq!(counts(&broker, "q"), (0, 1, 0));
    clock.advance(ms(1999));
    assert_nothing_for(&consumer);
    assert_eq!(counts(&broker, "q"), (0, 1, 0));
    clock.advance(TICK);
    let d = consumer.try_recv().expect("due after 2000 ms");
    assert_eq!(body(&d), "in 2s");
    assert_eq!(d.exchange(), "later");
    assert_eq!(d.routing_key(), "k");
    d.ack()?;

    // Without the header a delayed exchange routes as usual.
    conn.publish("later", "k", Message::new("plain"))?;
    assert_eq!(body(&consumer.try_recv().expect("not delayed")), "plain");
    Ok(())
}

#[test]
fn the_x_delay_header_does_not_delay_on_a_normal_exchange() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_exchange("normal", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "normal", "k", FieldTable::new())?;
    conn.publish("normal", "k", Message::new("now").with_header("x-delay", 2000i64))?;
    conn.publish("", "q", Message::new("direct").with_header("x-delay", 2000i64))?;
    assert_eq!(counts(&broker, "q"), (2, 0, 0));
    let got = conn.get("q", false)?.expect("delivered at once");
    assert_eq!(body(&got), "now");
    assert_eq!(got.header("x-delay").and_then(FieldValue::as_i64), Some(2000));
    got.ack()?;
    assert_eq!(get_all(&conn, "q"), ["direct"]);
    Ok(())
}

#[test]
fn a_retry_with_exponential_backoff_redelivers_exactly_when_each_delay_ends() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("jobs", QueueOptions::default())?;
    let consumer = conn.consume("jobs", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    conn.publish("", "jobs", Message::new("flaky job"))?;

    let mut d = consumer.try_recv().expect("delivered at once");
    assert_eq!(body(&d), "flaky job");
    assert!(!d.redelivered());
    assert_eq!(d.delivery_count(), 0);

    let backoff = [secs(1), secs(2), secs(4)];
    for (attempt, delay) in backoff.into_iter().enumerate() {
        d.nack_with_delay(delay)?;
        assert_nothing_for(&consumer);
        assert_eq!(counts(&broker, "jobs"), (0, 1, 0), "after nack_with_delay #{}", attempt + 1);
        assert!(conn.get("jobs", false)?.is_none());

        clock.advance(delay - TICK);
        assert_nothing_for(&consumer);
        assert_eq!(counts(&broker, "jobs"), (0, 1, 0), "one tick before retry #{}", attempt + 1);

        clock.advance(TICK);
        d = consumer.try_recv().unwrap_or_else(|e| panic!("retry #{} due: {e}", attempt + 1));
        assert_eq!(body(&d), "flaky job");
        assert!(d.redelivered(), "retry #{}", attempt + 1);
        assert_eq!(d.delivery_count(), attempt as u32 + 1);
        assert_eq!(counts(&broker, "jobs"), (0, 0, 1));
    }
    assert_eq!(clock.elapsed(), secs(7));

    d.ack()?; // the fourth attempt succeeds
    assert_eq!(counts(&broker, "jobs"), (0, 0, 0));
    clock.advance(secs(60));
    assert_nothing_for(&consumer);
    assert_eq!(counts(&broker, "jobs"), (0, 0, 0));
    Ok(())
}

#[test]
fn a_message_nacked_with_delay_goes_behind_the_messages_already_waiting() -> Result {
    let (clock, _broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    for b in ["a", "b", "c"] {
        conn.publish("", "q", Message::new(b))?;
    }
    let a = conn.get("q", false)?.expect("a");
    assert_eq!(body(&a), "a");
    a.nack_with_delay(secs(1))?;
    clock.advance(secs(1));
    conn.publish("", "q", Message::new("d"))?;
    assert_eq!(get_all(&conn, "q"), ["b", "c", "a", "d"]);
    Ok(())
}

#[test]
fn nack_with_delay_counts_as_a_return_for_the_delivery_limit() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.declare_queue(
        "work",
        QueueOptions {
            delivery_limit: Some(1),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("dead".into()),
            ..Default::default()
        },
    )?;
    let consumer = conn.consume("work", ConsumeOptions::default())?;
    conn.publish("", "work", Message::new("poison"))?;

    let first = consumer.try_recv().expect("first delivery");
    assert_eq!(first.delivery_count(), 0);
    assert_eq!(first.header("x-delivery-count").and_then(FieldValue::as_i64), Some(0));
    first.nack_with_delay(secs(1))?;
    clock.advance(secs(1));
    let second = consumer.try_recv().expect("one return is within the limit");
    assert_eq!(second.delivery_count(), 1);
    assert_eq!(second.header("x-delivery-count").and_then(FieldValue::as_i64), Some(1));
    assert!(second.redelivered());
    second.nack_with_delay(secs(1))?; // the second return is past the limit

    clock.advance(secs(1));
    assert_nothing_for(&consumer);
    assert_eq!(counts(&broker, "work"), (0, 0, 0));
    let s = stats(&broker, "work");
    assert_eq!(s.dead_lettered.delivery_limit, 1);
    assert_eq!(s.dropped.total(), 0);

    let dead = conn.get("dead", false)?.expect("dead-lettered");
    assert_eq!(body(&dead), "poison");
    let death = dead.header("x-death").and_then(FieldValue::as_array).expect("x-death");
    let entry = death[0].as_table().expect("x-death entries are tables");
    assert_eq!(entry.get("reason").and_then(FieldValue::as_str), Some("delivery_limit"));
    assert_eq!(entry.get("queue").and_then(FieldValue::as_str), Some("work"));
    dead.ack()?;
    Ok(())
}

#[test]
fn nack_with_delay_past_the_delivery_limit_without_a_dead_letter_exchange_drops_the_message() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions { delivery_limit: Some(1), ..Default::default() })?;
    conn.publish("", "work", Message::new("poison"))?;
    conn.get("work", false)?.expect("first").nack_with_delay(secs(1))?;
    clock.advance(secs(1));
    let second = conn.get("work", false)?.expect("second");
    assert_eq!(second.delivery_count(), 1);
    second.nack_with_delay(secs(1))?;
    clock.advance(secs(1));
    assert!(conn.get("work", false)?.is_none());
    assert_eq!(counts(&broker, "work"), (0, 0, 0));
    let s = stats(&broker, "work");
    assert_eq!(s.dropped.delivery_limit, 1);
    assert_eq!(s.dead_lettered.total(), 0);
    Ok(())
}

#[test]
fn delayed_messages_outlive_the_connection_that_published_them() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    let publisher = broker.connect();
    publisher.publish("", "q", Message::new("one").with_delay(secs(1)))?;
    publisher.publish("", "q", Message::new("two").with_delay(secs(2)))?;
    publisher.close();
    drop(publisher);
    assert_eq!(counts(&broker, "q"), (0, 2, 0));

    clock.advance(secs(2));
    assert_eq!(counts(&broker, "q"), (2, 0, 0));
    assert_eq!(get_all(&conn, "q"), ["one", "two"]);
    Ok(())
}

#[test]
fn a_message_nacked_with_delay_survives_the_close_of_the_consumers_connection() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("retry me"))?;
    let worker = broker.connect();
    let consumer = worker.consume("q", ConsumeOptions::default())?;
    consumer.try_recv().expect("delivered").nack_with_delay(secs(3))?;
    worker.close();
    drop(consumer);
    assert_eq!(counts(&broker, "q"), (0, 1, 0));

    clock.advance(secs(3) - TICK);
    assert!(conn.get("q", false)?.is_none());
    clock.advance(TICK);
    let d = conn.get("q", false)?.expect("due");
    assert_eq!(body(&d), "retry me");
    assert!(d.redelivered());
    assert_eq!(d.delivery_count(), 1);
    d.ack()?;
    Ok(())
}

#[test]
fn purging_a_queue_removes_its_delayed_messages_too() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("r1"))?;
    conn.publish("", "q", Message::new("r2"))?;
    for i in 1..=3 {
        conn.publish("", "q", Message::new(format!("d{i}")).with_delay(secs(i)))?;
    }
    assert_eq!(counts(&broker, "q"), (2, 3, 0));

    assert_eq!(conn.purge_queue("q")?, 5);
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    clock.advance(secs(10));
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    assert!(conn.get("q", false)?.is_none());
    Ok(())
}

#[test]
fn a_delayed_message_with_a_ttl_starts_its_ttl_when_it_becomes_visible() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("short").with_delay(secs(5)).with_expiration(secs(1)))?;
    clock.advance(secs(5));
    assert_eq!(counts(&broker, "q"), (1, 0, 0));
    clock.advance(secs(1) - TICK);
    assert_eq!(counts(&broker, "q"), (1, 0, 0));
    clock.advance(TICK);
    assert_eq!(counts(&broker, "q"), (0, 0, 0));
    assert_eq!(stats(&broker, "q").messages_expired, 1);
    assert!(conn.get("q", false)?.is_none());
    Ok(())
}

#[test]
fn delayed_messages_count_towards_the_queue_length_limit() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue(
        "q",
        QueueOptions { max_length: Some(2), overflow: Overflow::RejectPublish, ..Default::default() },
    )?;
    conn.publish("", "q", Message::new("d1").with_delay(secs(1)))?;
    conn.publish("", "q", Message::new("d2").with_delay(secs(1)))?;
    let err = conn.publish("", "q", Message::new("one too many")).expect_err("the queue is full");
    assert!(matches!(err, PublishError::Rejected { .. }), "{err}");
    assert_eq!(counts(&broker, "q"), (0, 2, 0));
    assert_eq!(stats(&broker, "q").publishes_rejected, 1);
    Ok(())
}
