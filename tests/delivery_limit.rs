//! Poison messages: a queue's delivery limit (`delivery_limit`,
//! `x-delivery-limit`, as RabbitMQ quorum queues). Every delivery from such a
//! queue carries `x-delivery-count` (0 on the first delivery); every return
//! counts (nack or reject with requeue, a delivery dropped unsettled, the
//! consumer's connection closing, `nack_with_delay`), and a message returned
//! more than the limit is dead-lettered with reason `delivery_limit`, or
//! dropped and counted without a dead-letter exchange. `delivery_count()`
//! counts returns in every queue, limited or not.

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, Delivery, ExchangeKind, ExchangeOptions, FieldTable,
    FieldValue, ManualClock, Message, QueueOptions, QueueStats, ReasonCounts, TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// A broker on a manual clock, and a connection to it.
fn setup() -> (ManualClock, Broker, Connection) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    (clock, broker, conn)
}

/// Declares the fanout exchange `dlx` with the queue `dead` bound to it.
fn declare_dlx(conn: &Connection) -> Result {
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "", FieldTable::new())?;
    Ok(())
}

/// A queue that dead-letters a message returned more than `limit` times to `dlx`.
fn limited_with_dlx(limit: u32) -> QueueOptions {
    QueueOptions {
        delivery_limit: Some(limit),
        dead_letter_exchange: Some("dlx".into()),
        ..Default::default()
    }
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).unwrap_or_else(|e| panic!("{e}"))
}

/// `(ready, unacknowledged)` of `queue`.
fn counts(broker: &Broker, queue: &str) -> (usize, usize) {
    let s = stats(broker, queue);
    (s.messages_ready, s.messages_unacknowledged)
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

/// The `x-delivery-count` header as an integer, if present.
fn header_count(d: &Delivery) -> Option<i64> {
    d.header("x-delivery-count").map(|v| v.as_i64().expect("x-delivery-count is an integer"))
}

/// Takes one message from `queue` with `get`, unacknowledged.
fn take(conn: &Connection, queue: &str) -> Delivery {
    conn.get(queue, false).unwrap().unwrap_or_else(|| panic!("a message in '{queue}'"))
}

/// `(reason, queue, count)` of the newest `x-death` entry.
fn last_death(d: &Delivery) -> (Option<String>, Option<String>, Option<i64>) {
    let deaths = d.header("x-death").and_then(FieldValue::as_array).expect("an x-death array header");
    let entry = deaths[0].as_table().expect("x-death entries are tables");
    let text = |k: &str| entry.get(k).and_then(FieldValue::as_str).map(str::to_owned);
    (text("reason"), text("queue"), entry.get("count").and_then(FieldValue::as_i64))
}

fn delivery_limit_death(queue: &str) -> (Option<String>, Option<String>, Option<i64>) {
    (Some("delivery_limit".into()), Some(queue.into()), Some(1))
}

#[test]
fn deliveries_carry_x_delivery_count_0_1_2_and_the_third_nack_dead_letters_the_message() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(2))?;
    conn.publish("", "work", Message::new("poison").with_message_id("p-1"))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = consumer.try_recv()?;
        assert_eq!(body(&d), "poison");
        seen.push((header_count(&d), d.delivery_count(), d.redelivered()));
        d.nack(true)?;
    }
    assert_eq!(seen, [(Some(0), 0, false), (Some(1), 1, true), (Some(2), 2, true)]);

    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(counts(&broker, "work"), (0, 0));
    let s = stats(&broker, "work");
    assert_eq!(s.dead_lettered, ReasonCounts { delivery_limit: 1, ..Default::default() });
    assert_eq!((s.dropped.total(), s.dead_letter_failures), (0, 0));

    let dead = take(&conn, "dead");
    assert_eq!(body(&dead), "poison");
    assert_eq!((dead.exchange(), dead.routing_key()), ("dlx", "work"));
    assert_eq!(dead.properties().message_id(), Some("p-1"));
    assert_eq!(last_death(&dead), delivery_limit_death("work"));
    assert_eq!(dead.header("x-first-death-reason").and_then(FieldValue::as_str), Some("delivery_limit"));
    assert_eq!(dead.header("x-first-death-queue").and_then(FieldValue::as_str), Some("work"));
    Ok(())
}

#[test]
fn reject_with_requeue_counts_as_a_return_like_nack() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(1))?;
    conn.publish("", "work", Message::new("poison"))?;
    let first = take(&conn, "work");
    assert_eq!(header_count(&first), Some(0));
    first.reject(true)?;
    let second = take(&conn, "work");
    assert_eq!(header_count(&second), Some(1));
    second.reject(true)?;
    assert!(conn.get("work", false)?.is_none());
    assert_eq!(stats(&broker, "work").dead_lettered.delivery_limit, 1);
    assert_eq!(last_death(&take(&conn, "dead")), delivery_limit_death("work"));
    Ok(())
}

#[test]
fn past_the_delivery_limit_without_a_dead_letter_exchange_the_message_is_dropped_and_counted() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions { delivery_limit: Some(2), ..Default::default() })?;
    conn.publish("", "work", Message::new("poison"))?;
    for expected in 0..3 {
        let d = take(&conn, "work");
        assert_eq!(header_count(&d), Some(expected));
        d.nack(true)?;
    }
    assert!(conn.get("work", false)?.is_none());
    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { delivery_limit: 1, ..Default::default() });
    assert_eq!(s.dropped.total(), 1);
    assert_eq!((s.dead_letter_failures, s.dead_lettered.total()), (0, 0));
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn a_message_acked_within_the_limit_is_never_dead_lettered() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(2))?;
    conn.publish("", "work", Message::new("flaky"))?;
    take(&conn, "work").nack(true)?;
    take(&conn, "work").nack(true)?;
    let last = take(&conn, "work");
    assert_eq!(header_count(&last), Some(2));
    last.ack()?;
    let s = stats(&broker, "work");
    assert_eq!((s.dead_lettered.total(), s.dropped.total()), (0, 0));
    assert_eq!(counts(&broker, "work"), (0, 0));
    assert_eq!(counts(&broker, "dead"), (0, 0));
    Ok(())
}

#[test]
fn a_rejection_without_requeue_in_a_limited_queue_is_reason_rejected() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(5))?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(true)?;
    take(&conn, "work").reject(false)?;
    let s = stats(&broker, "work");
    assert_eq!(s.dead_lettered, ReasonCounts { rejected: 1, ..Default::default() });
    let dead = take(&conn, "dead");
    assert_eq!(last_death(&dead), (Some("rejected".into()), Some("work".into()), Some(1)));
    Ok(())
}

#[test]
fn an_unsettled_delivery_that_is_dropped_counts_as_a_return() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(1))?;
    conn.publish("", "work", Message::new("poison"))?;

    let first = take(&conn, "work");
    assert_eq!((header_count(&first), first.delivery_count()), (Some(0), 0));
    drop(first);
    let second = take(&conn, "work");
    assert_eq!((header_count(&second), second.delivery_count()), (Some(1), 1));
    assert!(second.redelivered());
    drop(second);

    assert!(conn.get("work", false)?.is_none());
    assert_eq!(counts(&broker, "work"), (0, 0));
    assert_eq!(stats(&broker, "work").dead_lettered.delivery_limit, 1);
    assert_eq!(last_death(&take(&conn, "dead")), delivery_limit_death("work"));
    Ok(())
}

#[test]
fn a_consumer_delivery_dropped_unsettled_counts_as_a_return() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions { delivery_limit: Some(1), ..Default::default() })?;
    conn.publish("", "work", Message::new("poison"))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let first = consumer.try_recv()?;
    assert_eq!(header_count(&first), Some(0));
    drop(first);
    let second = consumer.try_recv()?;
    assert_eq!(header_count(&second), Some(1));
    drop(second);
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { delivery_limit: 1, ..Default::default() });
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn closing_the_consumers_connection_counts_as_a_return() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(1))?;
    conn.publish("", "work", Message::new("poison"))?;

    let worker = broker.connect();
    let consumer = worker.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let held = consumer.try_recv()?;
    assert_eq!((header_count(&held), held.delivery_count()), (Some(0), 0));
    worker.close();
    drop(held); // already returned by the close: dropping it returns nothing more
    drop(consumer);
    assert_eq!(counts(&broker, "work"), (1, 0));

    let worker = broker.connect();
    let consumer = worker.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let held = consumer.try_recv()?;
    assert_eq!((header_count(&held), held.delivery_count()), (Some(1), 1));
    assert!(held.redelivered());
    worker.close(); // the second return: past the limit
    drop(held);
    drop(consumer);

    assert_eq!(counts(&broker, "work"), (0, 0));
    assert!(conn.get("work", false)?.is_none());
    let s = stats(&broker, "work");
    assert_eq!(s.dead_lettered, ReasonCounts { delivery_limit: 1, ..Default::default() });
    assert_eq!(last_death(&take(&conn, "dead")), delivery_limit_death("work"));
    Ok(())
}

#[test]
fn every_kind_of_return_counts_towards_the_same_limit() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(3))?;
    conn.publish("", "work", Message::new("poison"))?;

    // 1: nack with requeue.
    let d = take(&conn, "work");
    assert_eq!(header_count(&d), Some(0));
    d.nack(true)?;
    // 2: dropped unsettled.
    let d = take(&conn, "work");
    assert_eq!(header_count(&d), Some(1));
    drop(d);
    // 3: the connection holding it closes.
    let worker = broker.connect();
    let d = worker.get("work", false)?.expect("a message");
    assert_eq!(header_count(&d), Some(2));
    worker.close();
    drop(d);
    // 4: nack with delay, past the limit once it is due.
    let d = take(&conn, "work");
    assert_eq!((header_count(&d), d.delivery_count()), (Some(3), 3));
    d.nack_with_delay(Duration::from_secs(5))?;
    clock.advance(Duration::from_secs(5));

    assert!(conn.get("work", false)?.is_none());
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_unacknowledged), (0, 0, 0));
    assert_eq!(s.dead_lettered, ReasonCounts { delivery_limit: 1, ..Default::default() });
    assert_eq!(last_death(&take(&conn, "dead")), delivery_limit_death("work"));
    Ok(())
}

#[test]
fn a_delivery_limit_of_zero_dead_letters_on_the_first_return() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", limited_with_dlx(0))?;
    conn.publish("", "work", Message::new("poison"))?;
    let d = take(&conn, "work");
    assert_eq!(header_count(&d), Some(0));
    d.nack(true)?;
    assert!(conn.get("work", false)?.is_none());
    assert_eq!(stats(&broker, "work").dead_lettered.delivery_limit, 1);
    assert_eq!(counts(&broker, "dead"), (1, 0));
    Ok(())
}

#[test]
fn each_message_has_its_own_delivery_count() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions { delivery_limit: Some(1), ..Default::default() })?;
    conn.publish("", "work", Message::new("a"))?;
    conn.publish("", "work", Message::new("b"))?;
    let a = take(&conn, "work");
    assert_eq!((body(&a).as_str(), header_count(&a)), ("a", Some(0)));
    a.nack(true)?;
    let a = take(&conn, "work");
    assert_eq!((body(&a).as_str(), header_count(&a)), ("a", Some(1)));
    a.ack()?;
    let b = take(&conn, "work");
    assert_eq!((body(&b).as_str(), header_count(&b), b.delivery_count()), ("b", Some(0), 0));
    b.ack()?;
    assert_eq!(stats(&broker, "work").dropped.total(), 0);
    Ok(())
}

#[test]
fn a_queue_without_a_delivery_limit_adds_no_header_but_still_counts_deliveries() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("m").with_header("tenant", "acme"))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;

    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = consumer.try_recv()?;
        assert_eq!(d.header("x-delivery-count"), None);
        assert_eq!(d.header("tenant").and_then(FieldValue::as_str), Some("acme"));
        seen.push((d.delivery_count(), d.redelivered()));
        d.nack(true)?;
    }
    assert_eq!(seen, [(0, false), (1, true), (2, true), (3, true), (4, true)]);
    let last = consumer.try_recv()?;
    assert_eq!(last.delivery_count(), 5);
    last.ack()?;
    let s = stats(&broker, "work");
    assert_eq!((s.dropped.total(), s.dead_lettered.total()), (0, 0));
    Ok(())
}

#[test]
fn without_a_delivery_limit_a_message_without_headers_gets_none() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(true)?;
    let d = take(&conn, "work");
    assert_eq!(d.delivery_count(), 1);
    assert!(d.headers().is_none_or(|h| !h.contains_key("x-delivery-count")));
    Ok(())
}

#[test]
fn the_x_delivery_limit_argument_sets_the_limit() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue(
        "work",
        QueueOptions {
            dead_letter_exchange: Some("dlx".into()),
            arguments: FieldTable::new().with("x-delivery-limit", 1_i64),
            ..Default::default()
        },
    )?;
    conn.publish("", "work", Message::new("poison"))?;
    let first = take(&conn, "work");
    assert_eq!((header_count(&first), first.delivery_count()), (Some(0), 0));
    first.nack(true)?;
    let second = take(&conn, "work");
    assert_eq!((header_count(&second), second.delivery_count()), (Some(1), 1));
    second.nack(true)?;

    assert!(conn.get("work", false)?.is_none());
    assert_eq!(
        stats(&broker, "work").dead_lettered,
        ReasonCounts { delivery_limit: 1, ..Default::default() }
    );
    assert_eq!(last_death(&take(&conn, "dead")), delivery_limit_death("work"));
    Ok(())
}

#[test]
fn the_x_delivery_limit_argument_accepts_any_integer_width() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue(
        "work",
        QueueOptions { arguments: FieldTable::new().with("x-delivery-limit", 0_i32), ..Default::default() },
    )?;
    conn.publish("", "work", Message::new("poison"))?;
    let d = take(&conn, "work");
    assert_eq!(header_count(&d), Some(0));
    d.nack(true)?;
    assert!(conn.get("work", false)?.is_none());
    assert_eq!(stats(&broker, "work").dropped.delivery_limit, 1);
    Ok(())
}

#[test]
fn the_x_delivery_limit_argument_and_the_field_must_agree() -> Result {
    let (_clock, _broker, conn) = setup();
    let both = |field: u32, arg: i64| QueueOptions {
        delivery_limit: Some(field),
        arguments: FieldTable::new().with("x-delivery-limit", arg),
        ..Default::default()
    };
    assert!(conn.declare_queue("agree", both(3, 3)).is_ok());
    let err = conn.declare_queue("disagree", both(3, 4)).unwrap_err();
    assert!(matches!(err, interoffice::DeclareError::PreconditionFailed(_)), "{err:?}");
    Ok(())
}
