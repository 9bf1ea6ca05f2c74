//! Priority queues (`max_priority`, `x-max-priority`): ready messages leave
//! highest priority first and FIFO within a priority; a priority above the
//! maximum counts as the maximum, a message without one as 0, and the
//! delivered `priority` property keeps the value it was published with. A
//! requeued message goes back ahead of later messages of its priority. A
//! queue without `max_priority` ignores priorities.

use interoffice::{
    Broker, Connection, ConsumeOptions, Consumer, DeclareError, Delivery, FieldTable, FieldValue, Message,
    QueueOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

/// Every ready message of `queue`, taken with auto-ack gets, in order.
fn take_all(conn: &Connection, queue: &str) -> Vec<Delivery> {
    std::iter::from_fn(|| conn.get(queue, true).unwrap()).collect()
}

/// Everything a consumer holds right now, without blocking. The deliveries
/// are returned unsettled: dropping them requeues them.
fn drain(consumer: &Consumer) -> Vec<Delivery> {
    std::iter::from_fn(|| consumer.try_recv().ok()).collect()
}

fn priority_queue(max: u8) -> QueueOptions {
    QueueOptions { max_priority: Some(max), ..Default::default() }
}

/// A message with `body` and, if given, `priority`.
fn msg(body: &str, priority: Option<u8>) -> Message {
    let m = Message::new(body.to_owned());
    match priority {
        Some(p) => m.with_priority(p),
        None => m,
    }
}

/// The burst of 30: message `m{i}` has priority `i % 7`, except that every
/// seventh (`i % 7 == 6`) has none.
fn burst() -> Vec<Message> {
    (0..30)
        .map(|i| {
            let p = i % 7;
            msg(&format!("m{i}"), (p != 6).then_some(p as u8))
        })
        .collect()
}

/// The burst's delivery order: priority 5 down to 0 (no priority counts as 0),
/// FIFO within each.
const BURST_ORDER: [&str; 30] = [
    "m5", "m12", "m19", "m26", // 5
    "m4", "m11", "m18", "m25", // 4
    "m3", "m10", "m17", "m24", // 3
    "m2", "m9", "m16", "m23", // 2
    "m1", "m8", "m15", "m22", "m29", // 1
    "m0", "m6", "m7", "m13", "m14", "m20", "m21", "m27", "m28", // 0 and none
];

#[test]
fn a_mixed_priority_burst_is_delivered_to_a_later_consumer_by_priority_then_fifo() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", priority_queue(5))?;
    for m in burst() {
        conn.publish("", "q", m)?;
    }
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 30);

    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let got = drain(&consumer);
    assert_eq!(bodies(&got), BURST_ORDER);
    // Each keeps the priority it was published with (none stays none).
    for d in &got {
        let i: u8 = body(d)[1..].parse()?;
        let want = (i % 7 != 6).then_some(i % 7);
        assert_eq!(d.properties().priority(), want, "{}", body(d));
        assert!(!d.redelivered());
    }
    for d in got {
        d.ack()?;
    }
    Ok(())
}

#[test]
fn a_mixed_priority_burst_is_returned_by_get_in_priority_then_fifo_order() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(5))?;
    for m in burst() {
        conn.publish("", "q", m)?;
    }
    assert_eq!(bodies(&take_all(&conn, "q")), BURST_ORDER);
    Ok(())
}

#[test]
fn a_consumer_with_prefetch_1_receives_a_backlog_in_priority_order() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(5))?;
    for m in burst() {
        conn.publish("", "q", m)?;
    }
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let mut got = Vec::new();
    for _ in 0..30 {
        let d = consumer.try_recv()?;
        got.push(body(&d));
        d.ack()?;
    }
    assert!(consumer.try_recv().is_err());
    assert_eq!(got, BURST_ORDER);
    Ok(())
}

#[test]
fn a_higher_priority_message_published_later_overtakes_ready_ones_of_lower_priority() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(10))?;
    conn.publish("", "q", msg("low-1", Some(1)))?;
    conn.publish("", "q", msg("low-2", Some(1)))?;
    let first = conn.get("q", true)?.expect("a ready message");
    assert_eq!(body(&first), "low-1");
    conn.publish("", "q", msg("urgent", Some(10)))?;
    conn.publish("", "q", msg("low-3", Some(1)))?;
    assert_eq!(bodies(&take_all(&conn, "q")), ["urgent", "low-2", "low-3"]);
    Ok(())
}

#[test]
fn priorities_above_the_maximum_count_as_the_maximum_and_keep_their_value() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(2))?;
    conn.publish("", "q", msg("one", Some(1)))?;
    conn.publish("", "q", msg("nine-a", Some(9)))?;
    conn.publish("", "q", msg("two-a", Some(2)))?;
    conn.publish("", "q", msg("max", Some(255)))?;
    conn.publish("", "q", msg("nine-b", Some(9)))?;
    conn.publish("", "q", msg("two-b", Some(2)))?;
    conn.publish("", "q", msg("none", None))?;

    let got = take_all(&conn, "q");
    assert_eq!(bodies(&got), ["nine-a", "two-a", "max", "nine-b", "two-b", "one", "none"]);
    let priorities: Vec<Option<u8>> = got.iter().map(|d| d.properties().priority()).collect();
    assert_eq!(priorities, [Some(9), Some(2), Some(255), Some(9), Some(2), Some(1), None]);
    Ok(())
}

#[test]
fn a_message_without_priority_counts_as_priority_0() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(3))?;
    conn.publish("", "q", msg("none-1", None))?;
    conn.publish("", "q", msg("zero-1", Some(0)))?;
    conn.publish("", "q", msg("one", Some(1)))?;
    conn.publish("", "q", msg("none-2", None))?;
    conn.publish("", "q", msg("zero-2", Some(0)))?;
    let got = take_all(&conn, "q");
    assert_eq!(bodies(&got), ["one", "none-1", "zero-1", "none-2", "zero-2"]);
    assert_eq!(got[1].properties().priority(), None, "no priority is not turned into Some(0)");
    assert_eq!(got[2].properties().priority(), Some(0));
    Ok(())
}

#[test]
fn a_queue_without_max_priority_ignores_priorities() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    for m in burst() {
        conn.publish("", "q", m)?;
    }
    let got = take_all(&conn, "q");
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&got), want);
    assert_eq!(got[5].properties().priority(), Some(5), "the property is still carried");
    Ok(())
}

#[test]
fn a_requeued_message_returns_ahead_of_later_messages_of_its_priority() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(5))?;
    conn.publish("", "q", msg("a", Some(3)))?;
    conn.publish("", "q", msg("b", Some(3)))?;
    conn.publish("", "q", msg("c", Some(1)))?;

    let a = conn.get("q", false)?.expect("a");
    let b = conn.get("q", false)?.expect("b");
    assert_eq!((body(&a), body(&b)), ("a".into(), "b".into()));
    conn.publish("", "q", msg("d", Some(3)))?;
    conn.publish("", "q", msg("e", Some(5)))?;
    conn.publish("", "q", msg("f", Some(1)))?;
    b.nack(true)?;
    a.nack(true)?;

    let got = take_all(&conn, "q");
    assert_eq!(bodies(&got), ["e", "a", "b", "d", "c", "f"]);
    let redelivered: Vec<bool> = got.iter().map(Delivery::redelivered).collect();
    assert_eq!(redelivered, [false, true, true, false, false, false]);
    assert_eq!(got[1].properties().priority(), Some(3));
    Ok(())
}

#[test]
fn a_requeued_message_of_an_above_max_priority_returns_ahead_of_later_ones_at_the_max() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(2))?;
    conn.publish("", "q", msg("x", Some(9)))?;
    conn.publish("", "q", msg("y", Some(2)))?;
    let x = conn.get("q", false)?.expect("x");
    assert_eq!(body(&x), "x");
    conn.publish("", "q", msg("z", Some(2)))?;
    drop(x); // a dropped, unsettled delivery is requeued
    let got = take_all(&conn, "q");
    assert_eq!(bodies(&got), ["x", "y", "z"]);
    assert_eq!(got[0].properties().priority(), Some(9));
    assert!(got[0].redelivered());
    Ok(())
}

#[test]
fn a_consumer_without_credit_leaves_new_messages_to_be_reordered_by_priority() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", priority_queue(5))?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    conn.publish("", "q", msg("first", Some(0)))?; // straight to the consumer
    conn.publish("", "q", msg("low", Some(1)))?;
    conn.publish("", "q", msg("high", Some(4)))?;
    conn.publish("", "q", msg("mid", Some(2)))?;
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = consumer.try_recv()?;
        got.push(body(&d));
        d.ack()?;
    }
    assert_eq!(got, ["first", "high", "mid", "low"]);
    Ok(())
}

#[test]
fn x_max_priority_as_an_argument_makes_a_priority_queue() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue(
        "q",
        QueueOptions { arguments: FieldTable::from([("x-max-priority", 3)]), ..Default::default() },
    )?;
    conn.publish("", "q", msg("p1", Some(1)))?;
    conn.publish("", "q", msg("p7", Some(7)))?;
    conn.publish("", "q", msg("p0", None))?;
    conn.publish("", "q", msg("p3", Some(3)))?;
    conn.publish("", "q", msg("p2", Some(2)))?;
    assert_eq!(bodies(&take_all(&conn, "q")), ["p7", "p3", "p2", "p1", "p0"]);

    // The field form of the same maximum is an equivalent redeclaration; another maximum is not.
    conn.declare_queue("q", priority_queue(3))?;
    let err = conn.declare_queue("q", priority_queue(4)).unwrap_err();
    assert!(
        matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("inequivalent arg 'x-max-priority'")),
        "{err:?}"
    );
    Ok(())
}

/// RabbitMQ accepts `x-max-priority = 0` (seen on RabbitMQ 3.10.8): a queue
/// without priorities, where every message is served in arrival order.
#[test]
fn max_priority_0_is_a_queue_without_priorities() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", priority_queue(0))?;
    conn.publish("", "q", msg("a", Some(0)))?;
    conn.publish("", "q", msg("b", Some(9)))?;
    conn.publish("", "q", msg("c", None))?;
    assert_eq!(bodies(&take_all(&conn, "q")), ["a", "b", "c"]);
    // Equivalent re-declaration by argument; none is inequivalent.
    let by_arg = QueueOptions { arguments: FieldTable::from([("x-max-priority", 0)]), ..Default::default() };
    conn.declare_queue("q", by_arg)?;
    let err = conn.declare_queue("q", QueueOptions::default()).unwrap_err();
    assert!(matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("x-max-priority")), "{err:?}");
    Ok(())
}

#[test]
fn x_max_priority_out_of_range_or_not_an_integer_is_refused() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    for value in [FieldValue::from(256), FieldValue::from(-1), FieldValue::from("5")] {
        let options = QueueOptions {
            arguments: FieldTable::from([("x-max-priority", value.clone())]),
            ..Default::default()
        };
        let err = conn.declare_queue("q", options).unwrap_err();
        assert!(
            matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("invalid arg 'x-max-priority'")),
            "{value}: {err:?}"
        );
    }
    assert!(broker.queue_stats("q").is_err());
    // 255 is the largest accepted.
    conn.declare_queue("q", priority_queue(255))?;
    conn.publish("", "q", msg("a", Some(200)))?;
    conn.publish("", "q", msg("b", Some(255)))?;
    assert_eq!(bodies(&take_all(&conn, "q")), ["b", "a"]);
    Ok(())
}
