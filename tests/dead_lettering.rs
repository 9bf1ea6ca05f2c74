//! Dead-lettering: where a message goes when it leaves a queue unconsumed
//! (nacked or rejected without requeue, expired, over a length limit, past
//! the delivery limit). It is republished to the queue's dead-letter exchange
//! with its own routing key or the queue's `dead_letter_routing_key`, loses
//! its `expiration`, keeps everything else, and gains RabbitMQ's `x-death`
//! history and `x-first-death-*` headers. Cycles made only of automatic
//! deaths are dropped; a missing dead-letter exchange drops the message; the
//! queue's figures count every outcome. Time is a `ManualClock`: nothing here
//! sleeps.

use std::time::{Duration, UNIX_EPOCH};

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, DeathReason, Delivery, ExchangeKind, ExchangeOptions,
    FieldTable, FieldValue, ManualClock, Message, QueueOptions, QueueStats, ReasonCounts, TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A broker on a manual clock, and a connection to it.
fn setup() -> (ManualClock, Broker, Connection) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    (clock, broker, conn)
}

/// The broker clock's wall time, in whole seconds since the epoch: what
/// `x-death`'s `time` must say for a death happening now.
fn now_secs(clock: &ManualClock) -> u64 {
    clock.clock().system_time().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `options` with `dlx` as dead-letter exchange.
fn dead_letter_to(dlx: &str, options: QueueOptions) -> QueueOptions {
    QueueOptions { dead_letter_exchange: Some(dlx.into()), ..options }
}

/// Declares the fanout exchange `dlx` with the queue `dead` bound to it.
fn declare_fanout_dlx(conn: &Connection) -> Result {
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "", FieldTable::new())?;
    Ok(())
}

/// Declares the direct exchange `orders` and the queue `work` bound to it
/// with `order.created`, dead-lettering to `dlx`.
fn declare_orders_work(conn: &Connection, work: QueueOptions) -> Result {
    conn.declare_exchange("orders", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("work", dead_letter_to("dlx", work))?;
    conn.bind_queue("work", "orders", "order.created", FieldTable::new())?;
    Ok(())
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).unwrap_or_else(|e| panic!("{e}"))
}

fn ready(broker: &Broker, queue: &str) -> usize {
    stats(broker, queue).messages_ready
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

/// Takes one message from `queue` with `get`, unacknowledged.
fn take(conn: &Connection, queue: &str) -> Delivery {
    conn.get(queue, false).unwrap().unwrap_or_else(|| panic!("a message in '{queue}'"))
}

/// Every ready message of `queue`, taken with auto-ack gets, in order.
fn take_all(conn: &Connection, queue: &str) -> Vec<Delivery> {
    std::iter::from_fn(|| conn.get(queue, true).unwrap()).collect()
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

fn header_text<'a>(d: &'a Delivery, key: &str) -> Option<&'a str> {
    d.header(key).and_then(FieldValue::as_str)
}

/// `(queue, reason, count)` of every `x-death` entry, newest first.
fn deaths(d: &Delivery) -> Vec<(String, String, i64)> {
    x_death(d)
        .iter()
        .map(|e| {
            (
                text(e, "queue").expect("queue").to_owned(),
                text(e, "reason").expect("reason").to_owned(),
                e.get("count").and_then(FieldValue::as_i64).expect("count"),
            )
        })
        .collect()
}

fn death(queue: &str, reason: &str, count: i64) -> (String, String, i64) {
    (queue.to_owned(), reason.to_owned(), count)
}

/// `x-first-death-reason`, `-queue`, `-exchange`.
fn first_death(d: &Delivery) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        header_text(d, "x-first-death-reason"),
        header_text(d, "x-first-death-queue"),
        header_text(d, "x-first-death-exchange"),
    )
}

// ---------------------------------------------------------------------------
// Where a dead letter goes

#[test]
fn nack_without_requeue_dead_letters_to_the_dlx_with_the_original_routing_key() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_exchange("dlx", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "order.created", FieldTable::new())?;
    declare_orders_work(&conn, QueueOptions::default())?;

    conn.publish("orders", "order.created", Message::new("order 7"))?;
    take(&conn, "work").nack(false)?;

    let s = stats(&broker, "work");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    let dead = take(&conn, "dead");
    assert_eq!(body(&dead), "order 7");
    assert_eq!(dead.exchange(), "dlx");
    assert_eq!(dead.routing_key(), "order.created");
    assert!(!dead.redelivered());
    dead.ack()?;
    assert!(conn.get("dead", false)?.is_none());
    Ok(())
}

#[test]
fn reject_without_requeue_from_a_consumer_dead_letters_like_nack() -> Result {
    let (_clock, broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    declare_orders_work(&conn, QueueOptions::default())?;
    let consumer = conn.consume("work", ConsumeOptions { prefetch: 1, ..Default::default() })?;

    conn.publish("orders", "order.created", Message::new("bad order"))?;
    conn.publish("orders", "order.created", Message::new("good order"))?;
    let bad = consumer.try_recv()?;
    assert_eq!(body(&bad), "bad order");
    bad.reject(false)?;
    let good = consumer.try_recv()?;
    assert_eq!(body(&good), "good order");
    good.ack()?;
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)));

    let dead = take_all(&conn, "dead");
    assert_eq!(dead.iter().map(body).collect::<Vec<_>>(), ["bad order"]);
    assert_eq!(dead[0].exchange(), "dlx");
    assert_eq!(dead[0].routing_key(), "order.created");
    assert_eq!(deaths(&dead[0]), [death("work", "rejected", 1)]);
    let s = stats(&broker, "work");
    assert_eq!(s.dead_lettered, ReasonCounts { rejected: 1, ..Default::default() });
    assert_eq!(s.dropped.total(), 0);
    Ok(())
}

#[test]
fn a_dead_letter_routing_key_replaces_the_original_key_but_x_death_keeps_the_original() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_exchange("dlx", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("failed", QueueOptions::default())?;
    conn.declare_queue("by-original-key", QueueOptions::default())?;
    conn.bind_queue("failed", "dlx", "failed", FieldTable::new())?;
    conn.bind_queue("by-original-key", "dlx", "order.created", FieldTable::new())?;
    declare_orders_work(
        &conn,
        QueueOptions { dead_letter_routing_key: Some("failed".into()), ..Default::default() },
    )?;

    conn.publish("orders", "order.created", Message::new("m"))?;
    take(&conn, "work").reject(false)?;

    assert!(conn.get("by-original-key", false)?.is_none());
    let dead = take(&conn, "failed");
    assert_eq!(dead.exchange(), "dlx");
    assert_eq!(dead.routing_key(), "failed");
    let entry = &x_death(&dead)[0];
    assert_eq!(entry.get("routing-keys"), Some(&FieldValue::Array(vec![FieldValue::from("order.created")])));
    assert_eq!(text(entry, "exchange"), Some("orders"));
    Ok(())
}

#[test]
fn a_fanout_dead_letter_exchange_copies_the_dead_letter_to_every_bound_queue() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    for q in ["audit", "alerts"] {
        conn.declare_queue(q, QueueOptions::default())?;
        conn.bind_queue(q, "dlx", "ignored", FieldTable::new())?;
    }
    conn.declare_queue("work", dead_letter_to("dlx", QueueOptions::default()))?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(false)?;

    for q in ["audit", "alerts"] {
        let d = take(&conn, q);
        assert_eq!((body(&d).as_str(), d.exchange(), d.routing_key()), ("m", "dlx", "work"), "in {q}");
        assert_eq!(deaths(&d), [death("work", "rejected", 1)], "in {q}");
    }
    // One message left the queue, whatever the number of copies.
    assert_eq!(stats(&broker, "work").dead_lettered, ReasonCounts { rejected: 1, ..Default::default() });
    Ok(())
}

#[test]
fn a_topic_dead_letter_exchange_routes_by_pattern_on_the_original_key() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_exchange("dlx", ExchangeKind::Topic, ExchangeOptions::default())?;
    conn.declare_exchange("events", ExchangeKind::Topic, ExchangeOptions::default())?;
    conn.declare_queue("dead-orders", QueueOptions::default())?;
    conn.declare_queue("dead-invoices", QueueOptions::default())?;
    conn.bind_queue("dead-orders", "dlx", "order.#", FieldTable::new())?;
    conn.bind_queue("dead-invoices", "dlx", "invoice.*", FieldTable::new())?;
    conn.declare_queue("work", dead_letter_to("dlx", QueueOptions::default()))?;
    conn.bind_queue("work", "events", "#", FieldTable::new())?;

    conn.publish("events", "order.eu.created", Message::new("order"))?;
    conn.publish("events", "invoice.paid", Message::new("invoice"))?;
    conn.publish("events", "invoice.eu.paid", Message::new("matches nothing"))?;
    for _ in 0..3 {
        take(&conn, "work").nack(false)?;
    }

    let orders = take_all(&conn, "dead-orders");
    let invoices = take_all(&conn, "dead-invoices");
    assert_eq!(orders.iter().map(body).collect::<Vec<_>>(), ["order"]);
    assert_eq!(invoices.iter().map(body).collect::<Vec<_>>(), ["invoice"]);
    assert_eq!((orders[0].exchange(), orders[0].routing_key()), ("dlx", "order.eu.created"));
    assert_eq!((invoices[0].exchange(), invoices[0].routing_key()), ("dlx", "invoice.paid"));
    Ok(())
}

#[test]
fn the_default_exchange_as_dlx_with_a_routing_key_delivers_to_the_queue_of_that_name() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_queue("parking", QueueOptions::default())?;
    conn.declare_queue(
        "work",
        QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("parking".into()),
            ..Default::default()
        },
    )?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(false)?;

    let d = take(&conn, "parking");
    assert_eq!((d.exchange(), d.routing_key()), ("", "parking"));
    assert_eq!(text(&x_death(&d)[0], "exchange"), Some(""));
    assert_eq!(first_death(&d), (Some("rejected"), Some("work"), Some("")));
    Ok(())
}

// ---------------------------------------------------------------------------
// What a dead letter carries

#[test]
fn the_first_x_death_entry_records_count_reason_queue_exchange_keys_and_time_exactly() -> Result {
    let (clock, _broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    declare_orders_work(&conn, QueueOptions::default())?;
    conn.publish("orders", "order.created", Message::new("m"))?;
    let held = take(&conn, "work");
    clock.advance(secs(3600));
    let died_at = now_secs(&clock);
    held.nack(false)?;
    clock.advance(secs(5));

    let dead = take(&conn, "dead");
    let entries = x_death(&dead);
    assert_eq!(entries.len(), 1);
    let want = FieldTable::new()
        .with("count", FieldValue::I64(1))
        .with("reason", "rejected")
        .with("queue", "work")
        .with("exchange", "orders")
        .with("routing-keys", vec![FieldValue::from("order.created")])
        .with("time", FieldValue::Timestamp(died_at));
    assert_eq!(entries[0], want);
    assert_eq!(entries[0].get("count"), Some(&FieldValue::I64(1)));
    assert_eq!(entries[0].get("time"), Some(&FieldValue::Timestamp(died_at)));
    assert_eq!(first_death(&dead), (Some("rejected"), Some("work"), Some("orders")));
    for key in ["x-first-death-reason", "x-first-death-queue", "x-first-death-exchange"] {
        assert!(matches!(dead.header(key), Some(FieldValue::String(_))), "{key} is a string");
    }
    Ok(())
}

#[test]
fn dead_lettering_preserves_the_body_properties_and_other_headers() -> Result {
    let (_clock, _broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    declare_orders_work(&conn, QueueOptions::default())?;
    let original = Message::new(vec![0_u8, 159, 146, 150, 255])
        .with_message_id("msg-1")
        .with_correlation_id("corr-9")
        .with_content_type("application/octet-stream")
        .with_reply_to("replies")
        .with_app_id("billing")
        .with_kind("order.created")
        .with_timestamp(1_700_000_000)
        .with_priority(4)
        .with_header("tenant", "acme")
        .with_header("attempt", 3_i32)
        .with_header("tags", vec![FieldValue::from("a"), FieldValue::from("b")]);
    conn.publish("orders", "order.created", original.clone())?;
    take(&conn, "work").nack(false)?;

    let dead = take(&conn, "dead");
    assert_eq!(dead.body().as_ref(), original.body().as_ref());
    let mut got = dead.properties().clone();
    let mut want = original.properties().clone();
    let got_headers = got.headers_mut().take().expect("headers");
    let want_headers = want.headers_mut().take().unwrap();
    assert_eq!(got, want, "every property but the headers is unchanged");
    for (key, value) in want_headers.iter() {
        assert_eq!(got_headers.get(key), Some(value), "header {key}");
    }
    let mut keys: Vec<&str> = got_headers.iter().map(|(k, _)| k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempt",
            "tags",
            "tenant",
            "x-death",
            "x-first-death-exchange",
            "x-first-death-queue",
            "x-first-death-reason"
        ]
    );
    Ok(())
}

#[test]
fn dead_lettering_removes_the_expiration_and_records_it_as_original_expiration() -> Result {
    let (clock, broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    declare_orders_work(&conn, QueueOptions::default())?;
    conn.publish("orders", "order.created", Message::new("m").with_expiration(secs(60)))?;
    take(&conn, "work").nack(false)?;

    assert_eq!(ready(&broker, "dead"), 1);
    // Without its expiration the dead letter no longer expires.
    clock.advance(secs(120));
    assert_eq!(ready(&broker, "dead"), 1);
    assert_eq!(stats(&broker, "dead").messages_expired, 0);
    let dead = take(&conn, "dead");
    assert_eq!(dead.properties().expiration(), None);
    let entry = &x_death(&dead)[0];
    assert_eq!(entry.get("original-expiration"), Some(&FieldValue::String("60000".into())));
    assert_eq!(text(entry, "reason"), Some("rejected"));
    Ok(())
}

#[test]
fn a_dead_letter_without_an_expiration_has_no_original_expiration() -> Result {
    let (_clock, _broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    declare_orders_work(&conn, QueueOptions::default())?;
    conn.publish("orders", "order.created", Message::new("m"))?;
    take(&conn, "work").nack(false)?;
    let dead = take(&conn, "dead");
    assert_eq!(dead.properties().expiration(), None);
    assert!(!x_death(&dead)[0].contains_key("original-expiration"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Dying again

/// `work` dead-letters to the fanout `retry-x` -> `retry`, which holds
/// messages for 1 s and dead-letters them to the fanout `work-x` -> `work`.
fn declare_retry_chain(conn: &Connection) -> Result {
    conn.declare_exchange("retry-x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange("work-x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange("orders", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("work", dead_letter_to("retry-x", QueueOptions::default()))?;
    conn.declare_queue(
        "retry",
        dead_letter_to("work-x", QueueOptions { message_ttl: Some(secs(1)), ..Default::default() }),
    )?;
    conn.bind_queue("work", "orders", "order.created", FieldTable::new())?;
    conn.bind_queue("work", "work-x", "", FieldTable::new())?;
    conn.bind_queue("retry", "retry-x", "", FieldTable::new())?;
    Ok(())
}

#[test]
fn a_message_nacked_twice_into_the_same_retry_chain_shows_count_2_in_one_x_death_entry() -> Result {
    let (clock, broker, conn) = setup();
    declare_retry_chain(&conn)?;
    conn.publish("orders", "order.created", Message::new("flaky").with_message_id("m-1"))?;

    // First failure: work -> retry.
    take(&conn, "work").nack(false)?;
    assert_eq!((ready(&broker, "work"), ready(&broker, "retry")), (0, 1));

    // The retry delay passes: retry -> work.
    clock.advance(secs(1));
    assert_eq!((ready(&broker, "work"), ready(&broker, "retry")), (1, 0));
    let again = take(&conn, "work");
    assert_eq!(body(&again), "flaky");
    assert_eq!((again.exchange(), again.routing_key()), ("work-x", "order.created"));
    assert_eq!(deaths(&again), [death("retry", "expired", 1), death("work", "rejected", 1)]);

    // Second failure: work -> retry again.
    again.nack(false)?;
    assert_eq!((ready(&broker, "work"), ready(&broker, "retry")), (0, 1));
    let held = take(&conn, "retry");
    assert_eq!(body(&held), "flaky");
    assert_eq!((held.exchange(), held.routing_key()), ("retry-x", "order.created"));
    // One entry per (queue, reason): the work/rejected entry counted up and moved to the front.
    assert_eq!(deaths(&held), [death("work", "rejected", 2), death("retry", "expired", 1)]);
    let entries = x_death(&held);
    assert_eq!(entries[0].get("count"), Some(&FieldValue::I64(2)));
    assert_eq!(text(&entries[0], "exchange"), Some("orders"));
    assert_eq!(entries[0].get("routing-keys"), Some(&FieldValue::Array(vec!["order.created".into()])));
    assert_eq!(text(&entries[1], "exchange"), Some("retry-x"));
    // The first death is set once and never changes.
    assert_eq!(first_death(&held), (Some("rejected"), Some("work"), Some("orders")));
    assert_eq!(held.properties().message_id(), Some("m-1"));

    let (work, retry) = (stats(&broker, "work"), stats(&broker, "retry"));
    assert_eq!(work.dead_lettered, ReasonCounts { rejected: 2, ..Default::default() });
    assert_eq!(retry.dead_lettered, ReasonCounts { expired: 1, ..Default::default() });
    assert_eq!((work.dropped.total(), retry.dropped.total()), (0, 0));
    assert_eq!((work.dead_letter_failures, retry.dead_letter_failures), (0, 0));
    Ok(())
}

#[test]
fn a_retry_chain_keeps_counting_on_every_round() -> Result {
    let (clock, _broker, conn) = setup();
    declare_retry_chain(&conn)?;
    conn.publish("orders", "order.created", Message::new("flaky"))?;
    for round in 1..=4_i64 {
        take(&conn, "work").nack(false)?;
        clock.advance(secs(1));
        let back = take(&conn, "work");
        assert_eq!(deaths(&back), [death("retry", "expired", round), death("work", "rejected", round)]);
        back.nack(true)?;
    }
    Ok(())
}

#[test]
fn an_expiry_cycle_back_into_the_same_queue_drops_the_message_instead_of_looping() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue(
        "a",
        QueueOptions {
            message_ttl: Some(secs(1)),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("a".into()),
            ..Default::default()
        },
    )?;
    conn.publish("", "a", Message::new("m"))?;
    clock.advance(secs(1));

    let s = stats(&broker, "a");
    assert_eq!((s.messages_ready, s.messages_expired), (0, 1));
    assert_eq!(s.dropped, ReasonCounts { expired: 1, ..Default::default() });
    assert_eq!(s.dead_letter_failures, 1);
    assert_eq!(s.dead_lettered.total(), 0);
    clock.advance(secs(10));
    let s = stats(&broker, "a");
    assert_eq!((s.messages_ready, s.messages_expired, s.dead_letter_failures), (0, 1, 1));
    assert!(conn.get("a", false)?.is_none());
    Ok(())
}

#[test]
fn a_cycle_that_contains_a_rejection_is_allowed() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue(
        "a",
        QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("a".into()),
            ..Default::default()
        },
    )?;
    conn.publish("", "a", Message::new("m"))?;
    let first = take(&conn, "a");
    assert!(first.header("x-death").is_none());
    first.nack(false)?;

    let back = take(&conn, "a");
    assert_eq!(body(&back), "m");
    assert_eq!((back.exchange(), back.routing_key()), ("", "a"));
    assert_eq!(deaths(&back), [death("a", "rejected", 1)]);
    back.reject(false)?;

    let again = take(&conn, "a");
    assert_eq!(deaths(&again), [death("a", "rejected", 2)]);
    again.ack()?;
    let s = stats(&broker, "a");
    assert_eq!(s.dead_lettered, ReasonCounts { rejected: 2, ..Default::default() });
    assert_eq!((s.dropped.total(), s.dead_letter_failures, s.messages_ready), (0, 0, 0));
    Ok(())
}

#[test]
fn an_expiry_cycle_with_a_rejection_in_it_may_go_round_again() -> Result {
    let (clock, broker, conn) = setup();
    // a --expires--> b --rejected--> c --expires--> a --expires--> b ...
    let to = |target: &str, ttl: Option<Duration>| QueueOptions {
        message_ttl: ttl,
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some(target.into()),
        ..Default::default()
    };
    conn.declare_queue("a", to("b", Some(secs(1))))?;
    conn.declare_queue("b", to("c", None))?;
    conn.declare_queue("c", to("a", Some(secs(1))))?;
    conn.publish("", "a", Message::new("m"))?;

    clock.advance(secs(1));
    take(&conn, "b").nack(false)?;
    clock.advance(secs(1));
    assert_eq!((ready(&broker, "a"), ready(&broker, "b"), ready(&broker, "c")), (1, 0, 0));
    // Back in a, it expires into b again: b is in its history, but behind a
    // rejection (in b itself), so this is no automatic cycle.
    clock.advance(secs(1));
    assert_eq!((ready(&broker, "a"), ready(&broker, "b"), ready(&broker, "c")), (0, 1, 0));
    let d = take(&conn, "b");
    assert_eq!(deaths(&d), [death("a", "expired", 2), death("c", "expired", 1), death("b", "rejected", 1)]);
    assert_eq!(first_death(&d), (Some("expired"), Some("a"), Some("")));
    for q in ["a", "b", "c"] {
        let s = stats(&broker, q);
        assert_eq!((s.dropped.total(), s.dead_letter_failures), (0, 0), "queue {q}");
    }
    assert_eq!(stats(&broker, "a").dead_lettered, ReasonCounts { expired: 2, ..Default::default() });
    Ok(())
}

// ---------------------------------------------------------------------------
// When dead-lettering fails

#[test]
fn a_missing_dead_letter_exchange_drops_the_rejected_message_and_counts_it() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", dead_letter_to("no-such-exchange", QueueOptions::default()))?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(false)?;

    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 1, ..Default::default() });
    assert_eq!(s.dead_letter_failures, 1);
    assert_eq!(s.dead_lettered.total(), 0);
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    assert!(conn.get("work", false)?.is_none());
    // The broker is still fine.
    conn.publish("", "work", Message::new("next"))?;
    assert_eq!(body(&take(&conn, "work")), "next");
    Ok(())
}

#[test]
fn a_dead_letter_exchange_deleted_after_the_declaration_drops_and_counts() -> Result {
    let (_clock, broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    conn.declare_queue("work", dead_letter_to("dlx", QueueOptions::default()))?;
    conn.delete_exchange("dlx", Default::default())?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").reject(false)?;

    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 1, ..Default::default() });
    assert_eq!(s.dead_letter_failures, 1);
    assert_eq!(ready(&broker, "dead"), 0);
    Ok(())
}

#[test]
fn a_dead_letter_exchange_that_routes_nowhere_drops_and_counts() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_exchange("dlx", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "other-key", FieldTable::new())?;
    conn.declare_queue("work", dead_letter_to("dlx", QueueOptions::default()))?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(false)?;

    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 1, ..Default::default() });
    assert_eq!((s.dead_letter_failures, s.dead_lettered.total()), (1, 0));
    assert_eq!(ready(&broker, "dead"), 0);
    Ok(())
}

#[test]
fn without_a_dead_letter_exchange_a_rejected_message_is_dropped_but_not_a_failure() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("work", QueueOptions::default())?;
    conn.publish("", "work", Message::new("m"))?;
    take(&conn, "work").nack(false)?;
    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 1, ..Default::default() });
    assert_eq!((s.dead_letter_failures, s.dead_lettered.total()), (0, 0));
    assert!(conn.get("work", false)?.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------
// Figures

/// In `work` (message TTL 10 s, max length 3, delivery limit 0): rejects two
/// messages, sends one past the delivery limit, overflows one and lets three
/// expire. Bodies m1..m7 leave in that order.
fn every_reason(clock: &ManualClock, conn: &Connection) -> Result {
    conn.publish("", "work", Message::new("m1"))?;
    conn.publish("", "work", Message::new("m2"))?;
    take(conn, "work").nack(false)?;
    take(conn, "work").reject(false)?;
    conn.publish("", "work", Message::new("m3"))?;
    take(conn, "work").nack(true)?;
    for m in ["m4", "m5", "m6", "m7"] {
        conn.publish("", "work", Message::new(m))?;
    }
    clock.advance(secs(10));
    Ok(())
}

fn limited(options: QueueOptions) -> QueueOptions {
    QueueOptions { message_ttl: Some(secs(10)), max_length: Some(3), delivery_limit: Some(0), ..options }
}

#[test]
fn the_figures_count_dead_letters_by_reason() -> Result {
    let (clock, broker, conn) = setup();
    declare_fanout_dlx(&conn)?;
    conn.declare_queue("work", limited(dead_letter_to("dlx", QueueOptions::default())))?;
    every_reason(&clock, &conn)?;

    let s = stats(&broker, "work");
    let want = ReasonCounts { rejected: 2, expired: 3, maxlen: 1, delivery_limit: 1 };
    assert_eq!(s.dead_lettered, want);
    assert_eq!(s.dead_lettered.total(), 7);
    assert_eq!(s.dead_lettered.get(DeathReason::Rejected), 2);
    assert_eq!(s.dead_lettered.get(DeathReason::Expired), 3);
    assert_eq!(s.dead_lettered.get(DeathReason::MaxLen), 1);
    assert_eq!(s.dead_lettered.get(DeathReason::DeliveryLimit), 1);
    assert_eq!(s.dropped, ReasonCounts::default());
    assert_eq!((s.dead_letter_failures, s.messages_expired), (0, 3));
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));

    let dead = take_all(&conn, "dead");
    let got: Vec<(String, String)> = dead.iter().map(|d| (body(d), deaths(d)[0].1.clone())).collect();
    let want: Vec<(String, String)> = [
        ("m1", "rejected"),
        ("m2", "rejected"),
        ("m3", "delivery_limit"),
        ("m4", "maxlen"),
        ("m5", "expired"),
        ("m6", "expired"),
        ("m7", "expired"),
    ]
    .into_iter()
    .map(|(b, r)| (b.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(got, want);
    for d in &dead {
        assert_eq!(header_text(d, "x-first-death-queue"), Some("work"));
    }
    Ok(())
}

#[test]
fn without_a_dead_letter_exchange_the_figures_count_drops_by_reason() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", limited(QueueOptions::default()))?;
    every_reason(&clock, &conn)?;

    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 2, expired: 3, maxlen: 1, delivery_limit: 1 });
    assert_eq!(s.dropped.total(), 7);
    assert_eq!(s.dead_lettered, ReasonCounts::default());
    assert_eq!((s.dead_letter_failures, s.messages_expired), (0, 3));
    Ok(())
}

#[test]
fn with_a_missing_dead_letter_exchange_every_drop_is_a_failure() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("work", limited(dead_letter_to("missing", QueueOptions::default())))?;
    every_reason(&clock, &conn)?;

    let s = stats(&broker, "work");
    assert_eq!(s.dropped, ReasonCounts { rejected: 2, expired: 3, maxlen: 1, delivery_limit: 1 });
    assert_eq!((s.dead_letter_failures, s.dead_lettered.total()), (7, 0));
    Ok(())
}

#[test]
fn reason_counts_total_adds_every_reason() {
    let counts = ReasonCounts { rejected: 1, expired: 20, maxlen: 300, delivery_limit: 4000 };
    assert_eq!(counts.total(), 4321);
    assert_eq!(ReasonCounts::default().total(), 0);
    assert_eq!(counts.get(DeathReason::MaxLen), 300);
    let names: Vec<&str> =
        [DeathReason::Rejected, DeathReason::Expired, DeathReason::MaxLen, DeathReason::DeliveryLimit]
            .into_iter()
            .map(DeathReason::as_str)
            .collect();
    assert_eq!(names, ["rejected", "expired", "maxlen", "delivery_limit"]);
}
