//! Time-based expiry, driven by a `ManualClock`: per-message and per-queue
//! message TTL (the lower wins), what becomes of an expired message (never
//! handed out, dead-lettered with reason `expired`, or dropped and counted),
//! TTL 0, requeued messages keeping their expiry, and queue expiry
//! (`expires`). Nothing here sleeps: time moves only when a test advances it,
//! and every expiry due by then has happened when `advance` returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, DeclareError, Delivery, ErrorKind, ExchangeKind,
    ExchangeOptions, FieldTable, FieldValue, ManualClock, Message, PublishError, QueueOptions, QueueStats,
    TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A broker on a manual clock, and a connection to it.
fn setup() -> (ManualClock, Broker, Connection) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    (clock, broker, conn)
}

/// Declares the fanout exchange `dlx` and the queue `dead` bound to it.
fn declare_dlx(conn: &Connection) -> Result {
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "", FieldTable::new())?;
    Ok(())
}

/// `options` with `dlx` as dead-letter exchange.
fn with_dlx(options: QueueOptions) -> QueueOptions {
    QueueOptions { dead_letter_exchange: Some("dlx".into()), ..options }
}

fn ttl_queue(ttl: Duration) -> QueueOptions {
    QueueOptions { message_ttl: Some(ttl), ..Default::default() }
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).unwrap_or_else(|e| panic!("{e}"))
}

fn ready(broker: &Broker, queue: &str) -> usize {
    stats(broker, queue).messages_ready
}

fn exists(broker: &Broker, queue: &str) -> bool {
    let listed = broker.queue_names().iter().any(|n| n == queue);
    let has_stats = broker.queue_stats(queue).is_ok();
    assert_eq!(listed, has_stats, "queue_names and queue_stats disagree about '{queue}'");
    has_stats
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

/// Every ready message of `queue`, taken with auto-ack gets, in order.
fn take_all(conn: &Connection, queue: &str) -> Vec<Delivery> {
    std::iter::from_fn(|| conn.get(queue, true).unwrap()).collect()
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

/// The `x-death` entries of a dead-lettered delivery, newest first.
fn x_death(d: &Delivery) -> Vec<FieldTable> {
    d.header("x-death")
        .and_then(FieldValue::as_array)
        .expect("an x-death array header")
        .iter()
        .map(|entry| entry.as_table().expect("x-death entries are tables").clone())
        .collect()
}

fn text<'a>(table: &'a FieldTable, key: &str) -> Option<&'a str> {
    table.get(key).and_then(FieldValue::as_str)
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------
// Per-message and per-queue TTL

#[test]
fn a_per_message_ttl_expires_the_message_at_exactly_its_ttl_and_not_a_tick_earlier() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("m").with_expiration(ms(1000)))?;

    clock.advance(ms(999));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (1, 0));
    assert_eq!(conn.queue_stats("work")?.messages_ready, 1);

    clock.advance(ms(1));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 1));
    assert_eq!(conn.queue_stats("work")?.messages_ready, 0);
    assert!(conn.get("work", true)?.is_none());
    Ok(())
}

#[test]
fn a_queue_message_ttl_counts_from_when_each_message_entered_the_queue() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("early"))?;
    clock.advance(ms(400));
    conn.publish("", "work", Message::new("late"))?;

    clock.advance(ms(599)); // t = 999
    assert_eq!(ready(&broker, "work"), 2);
    clock.advance(ms(1)); // t = 1000: "early" is due
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (1, 1));
    clock.advance(ms(399)); // t = 1399
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1)); // t = 1400: "late" is due
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 2));
    Ok(())
}

#[test]
fn a_per_message_ttl_lower_than_the_queue_ttl_wins() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(10_000)))?;
    conn.publish("", "work", Message::new("m").with_expiration(ms(1000)))?;
    clock.advance(ms(999));
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    Ok(())
}

#[test]
fn a_queue_ttl_lower_than_the_per_message_ttl_wins() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("m").with_expiration(ms(10_000)))?;
    clock.advance(ms(999));
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    Ok(())
}

#[test]
fn an_expiration_property_set_by_hand_as_a_millisecond_string_is_honoured() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    let mut msg = Message::new("m");
    msg.properties_mut().set_expiration("250");
    conn.publish("", "work", msg)?;
    clock.advance(ms(249));
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    assert_eq!(ready(&broker, "work"), 0);
    Ok(())
}

#[test]
fn messages_without_any_ttl_never_expire() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("forever"))?;
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (1, 0));
    assert_eq!(bodies(&take_all(&conn, "work")), ["forever"]);
    Ok(())
}

// ---------------------------------------------------------------------------
// An expired message is never handed out

#[test]
fn get_returns_a_message_up_to_the_tick_before_it_expires_and_never_after() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("a"))?;
    conn.publish("", "work", Message::new("b"))?;
    clock.advance(ms(999));
    let a = conn.get("work", true)?.expect("'a' is still live at 999 ms");
    assert_eq!(body(&a), "a");
    clock.advance(ms(1));
    assert!(conn.get("work", true)?.is_none(), "'b' expired at 1000 ms");
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    Ok(())
}

#[test]
fn a_consumer_attached_after_a_message_expired_never_receives_it() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("stale"))?;
    clock.advance(ms(1000));
    conn.publish("", "work", Message::new("fresh"))?;

    let consumer = conn.consume("work", ConsumeOptions::default())?;
    let d = consumer.try_recv()?;
    assert_eq!(body(&d), "fresh");
    d.ack()?;
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 1));
    Ok(())
}

#[test]
fn a_message_that_expires_while_the_consumer_has_no_credit_is_never_delivered() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("held"))?;
    conn.publish("", "work", Message::new("short").with_expiration(ms(1000)))?;
    conn.publish("", "work", Message::new("long"))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let held = consumer.try_recv()?;
    assert_eq!(body(&held), "held");
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));

    clock.advance(ms(1000));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (1, 1, 1));

    held.ack()?;
    let next = consumer.try_recv()?;
    assert_eq!(body(&next), "long");
    next.ack()?;
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    Ok(())
}

#[test]
fn a_message_already_in_a_consumers_prefetch_window_is_delivered_after_its_ttl() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 5, ..Default::default() })?;
    conn.publish("", "work", Message::new("in flight"))?;
    clock.advance(ms(5000));
    let d = consumer.try_recv()?;
    assert_eq!(body(&d), "in flight");
    d.ack()?;
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 0));
    Ok(())
}

// ---------------------------------------------------------------------------
// Dead-lettering and dropping expired messages

#[test]
fn an_expired_message_in_a_queue_without_consumers_is_dead_lettered_when_the_clock_passes_its_expiry()
-> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_exchange("orders", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("work", with_dlx(ttl_queue(ms(1000))))?;
    conn.bind_queue("work", "orders", "new", FieldTable::new())?;
    conn.publish("orders", "new", Message::new("order 1").with_header("trace", "t-1"))?;

    clock.advance(ms(999));
    assert_eq!(ready(&broker, "dead"), 0);
    clock.advance(ms(1));
    // No get, no stats on "work" first: the timer alone dead-lettered it.
    assert_eq!(ready(&broker, "dead"), 1);

    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    assert_eq!((s.dead_lettered.expired, s.dead_lettered.total()), (1, 1));
    assert_eq!((s.dropped.total(), s.dead_letter_failures), (0, 0));

    let dead = conn.get("dead", true)?.expect("the dead-lettered message");
    assert_eq!(body(&dead), "order 1");
    assert_eq!(dead.exchange(), "dlx");
    assert_eq!(dead.routing_key(), "new");
    assert_eq!(dead.header("trace").and_then(FieldValue::as_str), Some("t-1"));
    let deaths = x_death(&dead);
    assert_eq!(deaths.len(), 1);
    let death = &deaths[0];
    assert_eq!(text(death, "reason"), Some("expired"));
    assert_eq!(text(death, "queue"), Some("work"));
    assert_eq!(text(death, "exchange"), Some("orders"));
    assert_eq!(death.get("routing-keys"), Some(&FieldValue::Array(vec![FieldValue::from("new")])));
    assert_eq!(death.get("count").and_then(FieldValue::as_i64), Some(1));
    assert_eq!(
        death.get("time"),
        Some(&FieldValue::Timestamp(epoch_secs(broker.clock().system_time()))),
        "x-death time is the broker clock's time at expiry"
    );
    assert!(death.get("original-expiration").is_none(), "no per-message TTL was set");
    assert_eq!(dead.header("x-first-death-reason").and_then(FieldValue::as_str), Some("expired"));
    assert_eq!(dead.header("x-first-death-queue").and_then(FieldValue::as_str), Some("work"));
    assert_eq!(dead.header("x-first-death-exchange").and_then(FieldValue::as_str), Some("orders"));
    Ok(())
}

#[test]
fn a_ttl_message_behind_a_head_without_ttl_still_expires_on_time() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(QueueOptions::default()))?;
    conn.publish("", "work", Message::new("head"))?;
    conn.publish("", "work", Message::new("tail").with_expiration(ms(1000)))?;

    clock.advance(ms(999));
    assert_eq!((ready(&broker, "work"), ready(&broker, "dead")), (2, 0));
    clock.advance(ms(1));
    assert_eq!(ready(&broker, "dead"), 1, "dead-lettered by the clock, behind a live head");
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired, s.dead_lettered.expired), (1, 1, 1));
    assert_eq!(bodies(&take_all(&conn, "work")), ["head"]);
    assert_eq!(bodies(&take_all(&conn, "dead")), ["tail"]);
    Ok(())
}

#[test]
fn expired_messages_are_dead_lettered_in_the_order_they_expire() -> Result {
    let (clock, _broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(QueueOptions::default()))?;
    conn.publish("", "work", Message::new("3s").with_expiration(ms(3000)))?;
    conn.publish("", "work", Message::new("1s").with_expiration(ms(1000)))?;
    conn.publish("", "work", Message::new("2s").with_expiration(ms(2000)))?;
    clock.advance(ms(10_000));
    assert_eq!(bodies(&take_all(&conn, "dead")), ["1s", "2s", "3s"]);
    Ok(())
}

#[test]
fn a_message_expiring_during_a_long_advance_is_stamped_with_its_own_expiry_time() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(ttl_queue(ms(1000))))?;
    let start = broker.clock().system_time();
    conn.publish("", "work", Message::new("m"))?;
    clock.advance(Duration::from_secs(100));
    let dead = conn.get("dead", true)?.expect("the dead-lettered message");
    let deaths = x_death(&dead);
    assert_eq!(
        deaths[0].get("time"),
        Some(&FieldValue::Timestamp(epoch_secs(start + ms(1000)))),
        "stamped when it expired (start + 1 s), not when advance ended (start + 100 s)"
    );
    Ok(())
}

#[test]
fn without_a_dead_letter_exchange_an_expired_message_is_discarded_and_counted_as_dropped() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("m"))?;
    clock.advance(ms(1000));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 1));
    assert_eq!((s.dropped.expired, s.dropped.total()), (1, 1));
    assert_eq!((s.dead_lettered.total(), s.dead_letter_failures), (0, 0));
    assert_eq!(broker.queue_names(), ["work"]);
    Ok(())
}

#[test]
fn an_expired_message_whose_dead_letter_exchange_is_missing_is_dropped_and_counted_as_a_failure() -> Result {
    let (clock, broker, conn) = setup();
    let options = QueueOptions { dead_letter_exchange: Some("nowhere".into()), ..ttl_queue(ms(1000)) };
    conn.declare_queue("work", options)?;
    conn.publish("", "work", Message::new("m"))?;
    clock.advance(ms(1000));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    assert_eq!((s.dropped.expired, s.dead_letter_failures, s.dead_lettered.total()), (1, 1, 0));
    Ok(())
}

#[test]
fn a_dead_lettered_expired_message_loses_its_expiration_and_x_death_keeps_the_original() -> Result {
    let (clock, _broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(ttl_queue(ms(2000))))?;
    conn.publish("", "work", Message::new("own ttl").with_expiration(ms(1500)).with_message_id("id-1"))?;
    conn.publish("", "work", Message::new("queue ttl"))?;
    clock.advance(ms(2000));

    let dead = take_all(&conn, "dead");
    assert_eq!(bodies(&dead), ["own ttl", "queue ttl"]);

    let own = &dead[0];
    assert_eq!(own.properties().expiration(), None);
    assert_eq!(own.properties().message_id(), Some("id-1"));
    assert_eq!(text(&x_death(own)[0], "original-expiration"), Some("1500"));
    assert_eq!(text(&x_death(own)[0], "reason"), Some("expired"));

    let queue = &dead[1];
    assert_eq!(queue.properties().expiration(), None);
    assert!(x_death(queue)[0].get("original-expiration").is_none());
    Ok(())
}

#[test]
fn a_dead_letter_cycle_made_only_of_expiries_drops_the_message() -> Result {
    let (clock, broker, conn) = setup();
    let to = |target: &str| QueueOptions {
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some(target.into()),
        ..ttl_queue(ms(1000))
    };
    conn.declare_queue("a", to("b"))?;
    conn.declare_queue("b", to("a"))?;
    conn.publish("", "a", Message::new("m"))?;

    clock.advance(ms(1000));
    assert_eq!((ready(&broker, "a"), ready(&broker, "b")), (0, 1));
    assert_eq!(stats(&broker, "a").dead_lettered.expired, 1);

    clock.advance(ms(1000));
    assert_eq!((ready(&broker, "a"), ready(&broker, "b")), (0, 0));
    let b = stats(&broker, "b");
    assert_eq!((b.messages_expired, b.dropped.expired, b.dead_letter_failures), (1, 1, 1));
    assert_eq!(b.dead_lettered.total(), 0);
    // Nothing comes round again.
    clock.advance(ms(10_000));
    assert_eq!((ready(&broker, "a"), ready(&broker, "b")), (0, 0));
    assert_eq!(stats(&broker, "a").messages_expired, 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// Requeued messages

#[test]
fn a_requeued_message_keeps_its_original_expiry() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    conn.publish("", "work", Message::new("m"))?;
    let held = conn.get("work", false)?.expect("a message");
    clock.advance(ms(600));
    held.nack(true)?;
    assert_eq!(ready(&broker, "work"), 1);

    clock.advance(ms(399)); // t = 999: 1000 ms after it entered, not after the requeue
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 1));
    Ok(())
}

#[test]
fn a_message_requeued_after_its_expiry_is_expired_and_not_redelivered() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(QueueOptions::default()))?;
    conn.publish("", "work", Message::new("m").with_expiration(ms(1000)))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let held = consumer.try_recv()?;

    clock.advance(ms(1500));
    // Held by the consumer: not expired while it is out.
    let s = stats(&broker, "work");
    assert_eq!((s.messages_unacknowledged, s.messages_expired), (1, 0));

    held.nack(true)?;
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)), "an expired message is not redelivered");
    assert_eq!(ready(&broker, "dead"), 1);
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 1));
    assert_eq!(s.dead_lettered.expired, 1);
    let dead = conn.get("dead", true)?.expect("the dead-lettered message");
    assert_eq!(text(&x_death(&dead)[0], "reason"), Some("expired"));
    Ok(())
}

// ---------------------------------------------------------------------------
// TTL 0

#[test]
fn a_message_with_ttl_0_is_delivered_when_a_consumer_with_credit_is_waiting() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("per-message", QueueOptions::default())?;
    conn.declare_queue("per-queue", ttl_queue(Duration::ZERO))?;
    for (queue, msg) in [
        ("per-message", Message::new("now").with_expiration(Duration::ZERO)),
        ("per-queue", Message::new("now")),
    ] {
        let consumer = conn.consume(queue, ConsumeOptions { prefetch: 1, ..Default::default() })?;
        conn.publish("", queue, msg)?;
        clock.advance(ms(10));
        let d = consumer.try_recv().map_err(|e| format!("{queue}: {e}"))?;
        assert_eq!(body(&d), "now");
        d.ack()?;
        let s = stats(&broker, queue);
        assert_eq!((s.messages_ready, s.messages_expired), (0, 0), "{queue}");
    }
    Ok(())
}

#[test]
fn a_message_with_ttl_0_expires_at_once_when_no_consumer_can_take_it() -> Result {
    let (_clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("work", with_dlx(QueueOptions::default()))?;

    // No consumer: dead-lettered by the publish itself, without the clock moving.
    conn.publish("", "work", Message::new("nobody").with_expiration(Duration::ZERO))?;
    assert_eq!(ready(&broker, "dead"), 1);
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired, s.dead_lettered.expired), (0, 1, 1));

    // A consumer without credit cannot take it at once either.
    conn.publish("", "work", Message::new("held"))?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let held = consumer.try_recv()?;
    conn.publish("", "work", Message::new("busy").with_expiration(Duration::ZERO))?;
    assert_eq!(ready(&broker, "dead"), 2);
    held.ack()?;
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged, s.messages_expired), (0, 0, 2));
    assert_eq!(bodies(&take_all(&conn, "dead")), ["nobody", "busy"]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Delayed messages

#[test]
fn the_ttl_of_a_delayed_message_counts_from_when_it_becomes_visible() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("later").with_delay(ms(2000)).with_expiration(ms(1000)))?;
    clock.advance(ms(1999));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_expired), (0, 1, 0));
    clock.advance(ms(1)); // t = 2000: visible
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_expired), (1, 0, 0));
    clock.advance(ms(999)); // t = 2999
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_expired), (1, 0, 0));
    clock.advance(ms(1)); // t = 3000
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_expired), (0, 0, 1));
    Ok(())
}

// ---------------------------------------------------------------------------
// Queue expiry

fn expiring(after: Duration) -> QueueOptions {
    QueueOptions { expires: Some(after), ..Default::default() }
}

#[test]
fn an_unused_queue_is_deleted_after_its_expires_period_and_not_a_tick_earlier() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    conn.declare_queue("keep", QueueOptions::default())?;
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    assert_eq!(broker.queue_names(), ["keep"]);
    assert!(conn.get("temp", true).is_err(), "the queue is gone");
    Ok(())
}

#[test]
fn a_consumer_keeps_an_expiring_queue_alive_and_the_countdown_starts_when_it_leaves() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    let consumer = conn.consume("temp", ConsumeOptions::default())?;
    clock.advance(ms(20_000));
    assert!(exists(&broker, "temp"));
    consumer.cancel();
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn a_get_resets_the_expiry_countdown() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    conn.publish("", "temp", Message::new("m"))?;
    clock.advance(ms(3000));
    assert_eq!(bodies(&take_all(&conn, "temp")), ["m"]);
    clock.advance(ms(4999)); // t = 7999: 4999 ms after the get
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn a_get_on_an_empty_queue_also_resets_the_expiry_countdown() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    clock.advance(ms(3000));
    assert!(conn.get("temp", true)?.is_none());
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn a_redeclare_resets_the_expiry_countdown() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    clock.advance(ms(3000));
    conn.declare_queue("temp", expiring(ms(5000)))?;
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn publishing_does_not_keep_an_expiring_queue_alive() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    clock.advance(ms(3000));
    conn.publish("", "temp", Message::new("m"))?;
    clock.advance(ms(1999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn an_expired_queue_drops_its_messages_without_dead_lettering_them() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    conn.declare_queue("temp", with_dlx(expiring(ms(5000))))?;
    conn.publish("", "temp", Message::new("a"))?;
    conn.publish("", "temp", Message::new("b").with_expiration(ms(60_000)))?;
    clock.advance(ms(5000));
    assert!(!exists(&broker, "temp"));
    assert_eq!(ready(&broker, "dead"), 0);
    clock.advance(ms(120_000));
    assert_eq!(ready(&broker, "dead"), 0, "no timer of the deleted queue dead-letters later");
    Ok(())
}

#[test]
fn a_queue_redeclared_after_it_expired_is_a_new_empty_queue() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("temp", expiring(ms(5000)))?;
    conn.publish("", "temp", Message::new("old"))?;
    clock.advance(ms(5000));
    assert!(!exists(&broker, "temp"));
    conn.declare_queue("temp", expiring(ms(5000)))?;
    assert_eq!(ready(&broker, "temp"), 0);
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

// ---------------------------------------------------------------------------
// The x-arguments form and declaration checks

#[test]
fn the_x_message_ttl_argument_works_like_message_ttl() -> Result {
    let (clock, broker, conn) = setup();
    declare_dlx(&conn)?;
    let arguments = FieldTable::from([
        ("x-message-ttl", FieldValue::from(1000)),
        ("x-dead-letter-exchange", FieldValue::from("dlx")),
    ]);
    conn.declare_queue("work", QueueOptions { arguments, ..Default::default() })?;
    conn.publish("", "work", Message::new("m"))?;
    clock.advance(ms(999));
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired, s.dead_lettered.expired), (0, 1, 1));
    assert_eq!(bodies(&take_all(&conn, "dead")), ["m"]);
    Ok(())
}

#[test]
fn the_x_message_ttl_argument_and_a_lower_per_message_ttl_the_lower_wins() -> Result {
    let (clock, broker, conn) = setup();
    let arguments = FieldTable::from([("x-message-ttl", 1000)]);
    conn.declare_queue("work", QueueOptions { arguments, ..Default::default() })?;
    conn.publish("", "work", Message::new("m").with_expiration(ms(300)))?;
    clock.advance(ms(299));
    assert_eq!(ready(&broker, "work"), 1);
    clock.advance(ms(1));
    assert_eq!(ready(&broker, "work"), 0);
    Ok(())
}

#[test]
fn the_x_expires_argument_works_like_expires() -> Result {
    let (clock, broker, conn) = setup();
    let arguments = FieldTable::from([("x-expires", 5000)]);
    conn.declare_queue("temp", QueueOptions { arguments, ..Default::default() })?;
    clock.advance(ms(4999));
    assert!(exists(&broker, "temp"));
    clock.advance(ms(1));
    assert!(!exists(&broker, "temp"));
    Ok(())
}

#[test]
fn a_message_ttl_field_and_an_x_message_ttl_argument_that_disagree_are_refused() {
    let (_clock, broker, conn) = setup();
    let options = QueueOptions {
        message_ttl: Some(ms(1000)),
        arguments: FieldTable::from([("x-message-ttl", 2000)]),
        ..Default::default()
    };
    let err = conn.declare_queue("work", options).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert!(!exists(&broker, "work"));
}

#[test]
fn invalid_ttl_and_expires_values_are_refused() {
    let (_clock, broker, conn) = setup();
    let cases = [
        ("x-expires", QueueOptions { expires: Some(Duration::ZERO), ..Default::default() }),
        ("x-expires", QueueOptions { arguments: FieldTable::from([("x-expires", 0)]), ..Default::default() }),
        (
            "x-message-ttl",
            QueueOptions { arguments: FieldTable::from([("x-message-ttl", -1)]), ..Default::default() },
        ),
        (
            "x-message-ttl",
            QueueOptions { arguments: FieldTable::from([("x-message-ttl", "soon")]), ..Default::default() },
        ),
    ];
    for (arg, options) in cases {
        match conn.declare_queue("q", options.clone()) {
            Err(DeclareError::PreconditionFailed(msg)) => {
                assert!(msg.contains(&format!("invalid arg '{arg}'")), "{options:?}: {msg}")
            }
            other => panic!("{options:?}: expected PreconditionFailed, got {other:?}"),
        }
        assert!(!exists(&broker, "q"));
    }
}

#[test]
fn redeclaring_with_another_message_ttl_is_refused_as_inequivalent() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    match conn.declare_queue("work", ttl_queue(ms(2000))) {
        Err(DeclareError::PreconditionFailed(msg)) => {
            assert!(msg.contains("inequivalent arg 'x-message-ttl'"), "{msg}")
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    conn.declare_queue("work", ttl_queue(ms(1000)))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Invalid expiration property

#[test]
fn an_invalid_expiration_string_is_refused_and_the_message_comes_back() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    for bad in ["soon", "-5", "", "1.5", "10s"] {
        let mut msg = Message::new(format!("body {bad}")).with_message_id("id");
        msg.properties_mut().set_expiration(bad);
        match conn.publish("", "work", msg.clone()) {
            Err(err @ PublishError::InvalidExpiration { .. }) => {
                assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{bad:?}");
                assert_eq!(err.message(), &msg, "{bad:?}");
                let PublishError::InvalidExpiration { value, message } = err else { unreachable!() };
                assert_eq!(value, bad);
                assert_eq!(*message, msg);
            }
            other => panic!("{bad:?}: expected InvalidExpiration, got {other:?}"),
        }
    }
    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 0));
    Ok(())
}

/// The timer expires in batches (releasing the queue lock in between, so a
/// mass expiry does not stall publishers); every message still expires, and
/// is dead-lettered, at its time.
#[test]
fn a_mass_expiry_is_complete_across_batches() {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    conn.declare_queue("dead", QueueOptions::default()).unwrap();
    let options = QueueOptions {
        message_ttl: Some(Duration::from_secs(1)),
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("dead".into()),
        ..Default::default()
    };
    conn.declare_queue("mass", options).unwrap();
    for n in 0..10_000_u32 {
        conn.publish("", "mass", Message::new(n.to_le_bytes().to_vec())).unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let (mass, dead) = (broker.queue_stats("mass").unwrap(), broker.queue_stats("dead").unwrap());
    assert_eq!((mass.messages_ready, mass.messages_expired, dead.messages_ready), (0, 10_000, 10_000));
    // In order: the dead-letter queue holds them as they were published.
    let first = conn.get("dead", true).unwrap().unwrap();
    assert_eq!(first.body().as_ref(), 0_u32.to_le_bytes());
}
