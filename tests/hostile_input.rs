//! Hostile and extreme input: durations at their limits, publisher headers
//! that lie, floats that are not numbers, arguments the bus does not
//! implement. Each gets an error or a defined result, never a panic, a hang
//! or a silent drop (GUARANTEES.md, G9–G12). Every test here failed before
//! the fix it guards.

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, CallError, ConsumeError, ConsumeOptions, DeclareError, Delivery, ExchangeKind,
    ExchangeOptions, FieldTable, FieldValue, MAX_DURATION, ManualClock, Message, OnError, PublishError,
    QueueOptions, WorkerOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn manual() -> (ManualClock, Broker) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    (clock, broker)
}

fn precondition(err: &DeclareError, needle: &str) -> bool {
    matches!(err, DeclareError::PreconditionFailed(text) if text.contains(needle))
}

// ----- durations ----------------------------------------------------------

#[test]
fn typed_durations_past_ten_years_are_refused_at_declaration() {
    let conn = Broker::new().connect();
    let too_long = MAX_DURATION + Duration::from_millis(1);
    for (name, options) in [
        ("ttl", QueueOptions { message_ttl: Some(Duration::MAX), ..Default::default() }),
        ("ttl1", QueueOptions { message_ttl: Some(too_long), ..Default::default() }),
        ("exp", QueueOptions { expires: Some(Duration::MAX), ..Default::default() }),
        (
            "dedup",
            QueueOptions {
                deduplication_window: Some(interoffice::DeduplicationWindow {
                    max_ids: None,
                    duration: Some(Duration::MAX),
                }),
                ..Default::default()
            },
        ),
    ] {
        let err = conn.declare_queue(name, options).unwrap_err();
        assert!(precondition(&err, "value_too_large"), "{name}: {err}");
    }
    // The x- forms: RabbitMQ's limit exactly (seen on RabbitMQ 3.10.8).
    for arg in ["x-message-ttl", "x-expires"] {
        let over =
            QueueOptions { arguments: FieldTable::from([(arg, 315_360_000_001_i64)]), ..Default::default() };
        assert!(precondition(&conn.declare_queue("over", over).unwrap_err(), "value_too_large"));
        let at =
            QueueOptions { arguments: FieldTable::from([(arg, 315_360_000_000_i64)]), ..Default::default() };
        conn.declare_queue(&format!("at{arg}"), at).unwrap();
    }
    conn.declare_queue("max", QueueOptions { message_ttl: Some(MAX_DURATION), ..Default::default() })
        .unwrap();
}

#[test]
fn an_expiration_past_ten_years_is_refused_and_the_builder_clamps() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let mut message = Message::new("m");
    message.properties_mut().set_expiration("315360000001");
    match conn.publish("", "q", message) {
        Err(PublishError::InvalidExpiration { value, message }) => {
            assert_eq!(value, "315360000001");
            assert_eq!(message.body().as_ref(), b"m");
        }
        other => panic!("expected InvalidExpiration, got {other:?}"),
    }
    let clamped = Message::new("m").with_expiration(Duration::MAX);
    assert_eq!(clamped.properties().expiration(), Some("315360000000"));
    assert!(conn.publish("", "q", clamped)?.is_routed());
    Ok(())
}

#[test]
fn nack_with_delay_of_duration_max_keeps_the_message_and_the_clock_can_go_all_the_way() -> Result {
    let (clock, broker) = manual();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("m").with_delay(Duration::MAX))?;
    conn.publish("", "q", Message::new("n"))?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    consumer.recv()?.nack_with_delay(Duration::MAX)?;
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_delayed, stats.messages_unacknowledged), (0, 2, 0));
    // Saturating time: both fall due, on the way to the end of time.
    clock.advance(Duration::MAX);
    clock.advance(Duration::MAX);
    let mut bodies = Vec::new();
    while let Ok(d) = consumer.try_recv() {
        bodies.push(d.body().clone());
        d.ack()?;
    }
    bodies.sort();
    assert_eq!(bodies, ["m", "n"]);
    Ok(())
}

#[test]
fn an_x_delay_header_of_i64_max_is_clamped_not_a_panic() -> Result {
    let (clock, broker) = manual();
    let conn = broker.connect();
    conn.declare_exchange(
        "later",
        ExchangeKind::Fanout,
        ExchangeOptions { delayed: true, ..Default::default() },
    )?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "later", "", FieldTable::new())?;
    conn.publish("later", "", Message::new("m").with_header("x-delay", i64::MAX))?;
    assert_eq!(broker.queue_stats("q").unwrap().messages_delayed, 1);
    clock.advance(MAX_DURATION);
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
    Ok(())
}

#[test]
fn a_worker_retrying_after_duration_max_keeps_its_message_and_its_thread() -> Result {
    let (clock, broker) = manual();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let (seen, handled) = std::sync::mpsc::channel();
    let options = WorkerOptions { on_error: OnError::RequeueAfter(Duration::MAX), ..Default::default() };
    let worker = conn.worker("q", options, move |d: &Delivery| {
        seen.send(d.redelivered()).unwrap();
        if d.redelivered() { Ok(()) } else { Err("not yet") }
    })?;
    conn.publish("", "q", Message::new("m"))?;
    assert!(!handled.recv()?);
    // The first failure is settled (delayed) before the handler's next
    // delivery can exist; advancing releases it to the same worker.
    while broker.queue_stats("q").unwrap().messages_delayed == 0 {
        std::thread::yield_now();
    }
    clock.advance(Duration::MAX);
    assert!(handled.recv()?);
    let report = worker.shutdown();
    assert_eq!((report.processed, report.failed, report.panicked), (1, 1, 0));
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_delayed, stats.messages_unacknowledged), (0, 0, 0));
    Ok(())
}

/// With the system clock the timer thread survives a deadline ten years
/// out and keeps serving the short ones (it used to die of an overflow).
#[test]
fn the_timer_thread_keeps_working_after_a_far_deadline() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("far", QueueOptions { message_ttl: Some(MAX_DURATION), ..Default::default() })?;
    conn.publish("", "far", Message::new("far").with_delay(Duration::MAX))?;
    conn.declare_queue("near", QueueOptions::default())?;
    let consumer = conn.consume("near", ConsumeOptions::default())?;
    conn.publish("", "near", Message::new("soon").with_delay(Duration::from_millis(5)))?;
    let delivery = consumer.recv_timeout(Duration::from_secs(30))?;
    assert_eq!(delivery.body().as_ref(), b"soon");
    Ok(())
}

#[test]
fn a_call_with_a_zero_timeout_fails_at_once_on_a_manual_clock() -> Result {
    let (_clock, broker) = manual();
    let conn = broker.connect();
    conn.declare_queue("nobody-answers", QueueOptions::default())?;
    let err = conn.call("", "nobody-answers", Message::new("?"), Duration::ZERO).unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    let err =
        futures::executor::block_on(conn.call_async("", "nobody-answers", Message::new("?"), Duration::ZERO))
            .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    assert_eq!(conn.rpc_stats().calls_in_flight, 0);
    Ok(())
}

// ----- headers from publishers are untrusted -----------------------------

#[test]
fn a_hostile_x_death_count_saturates_and_the_message_is_dead_lettered() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("dlq", QueueOptions::default())?;
    conn.declare_queue(
        "q",
        QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("dlq".into()),
            ..Default::default()
        },
    )?;
    for count in [FieldValue::I64(i64::MAX), FieldValue::I64(-5), FieldValue::from("lots")] {
        let death = FieldTable::from([
            ("count", count.clone()),
            ("queue", FieldValue::from("q")),
            ("reason", FieldValue::from("rejected")),
        ]);
        let hostile = Message::new("m").with_header("x-death", vec![FieldValue::Table(death)]);
        conn.publish("", "q", hostile)?;
        let consumer = conn.consume("q", ConsumeOptions::default())?;
        consumer.recv()?.nack(false)?;
        drop(consumer);
        let dead = conn.get("dlq", false)?.expect("dead-lettered");
        let entry = dead.header("x-death").and_then(FieldValue::as_array).unwrap()[0].as_table().unwrap();
        let expected = if count == FieldValue::I64(i64::MAX) { i64::MAX } else { 1 };
        assert_eq!(entry.get("count").and_then(FieldValue::as_i64), Some(expected), "{count:?}");
        dead.ack()?;
    }
    let stats = conn.queue_stats("q")?;
    assert_eq!((stats.messages_unacknowledged, stats.dead_lettered.rejected), (0, 3));
    Ok(())
}

#[test]
fn nan_in_binding_arguments_is_one_binding_and_unbinds() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("h", ExchangeKind::Headers, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    let args = FieldTable::from([("x-match", FieldValue::from("any")), ("f", FieldValue::F64(f64::NAN))]);
    conn.bind_queue("q", "h", "", args.clone())?;
    conn.bind_queue("q", "h", "", args.clone())?;
    assert_eq!(broker.bindings().iter().filter(|b| b.source == "h").count(), 1);
    conn.unbind_queue("q", "h", "", Some(&args))?;
    assert_eq!(broker.bindings().iter().filter(|b| b.source == "h").count(), 0);
    // Declarations with NaN are equivalent to themselves.
    let nan = QueueOptions { arguments: FieldTable::from([("nan", f64::NAN)]), ..Default::default() };
    conn.declare_queue("n", nan.clone())?;
    conn.declare_queue("n", nan)?;
    Ok(())
}

// ----- arguments the bus does not implement are refused -------------------

#[test]
fn unimplemented_queue_arguments_are_refused_by_name() {
    let conn = Broker::new().connect();
    for (arg, value, needle) in [
        ("x-queue-type", FieldValue::from("stream"), "stream queues are not supported"),
        ("x-queue-type", FieldValue::from("bogus"), "unsupported queue type 'bogus'"),
        ("x-max-age", FieldValue::from("1D"), "invalid arg 'x-max-age'"),
        ("x-stream-max-segment-size-bytes", FieldValue::from(1), "not implemented"),
        ("x-foo", FieldValue::from(1), "invalid arg 'x-foo'"),
    ] {
        let options = QueueOptions { arguments: FieldTable::from([(arg, value)]), ..Default::default() };
        let err = conn.declare_queue("q", options).unwrap_err();
        assert!(precondition(&err, needle), "{arg}: {err}");
    }
    // Non-x arguments are the user's own, kept and compared; x-queue-mode is
    // accepted and has no effect, as in RabbitMQ 3.12+.
    let kept = FieldTable::from([("team", FieldValue::from("billing")), ("x-queue-mode", "lazy".into())]);
    conn.declare_queue("ok", QueueOptions { arguments: kept, ..Default::default() }).unwrap();
}

#[test]
fn a_string_where_a_number_belongs_is_named_as_a_string() {
    let conn = Broker::new().connect();
    let options =
        QueueOptions { arguments: FieldTable::from([("x-message-ttl", "1000")]), ..Default::default() };
    let err = conn.declare_queue("q", options).unwrap_err();
    assert!(precondition(&err, r#"expected integer, got longstr (the string "1000")"#), "{err}");
}

#[test]
fn consumer_arguments_are_checked() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    for (arg, value) in [("x-priority", FieldValue::from("high")), ("x-priority", FieldValue::I64(1 << 40))] {
        let options = ConsumeOptions { arguments: FieldTable::from([(arg, value)]), ..Default::default() };
        let err = conn.consume("q", options).unwrap_err();
        assert!(matches!(&err, ConsumeError::InvalidArgument(t) if t.contains("x-priority")), "{err}");
    }
    let unknown = ConsumeOptions { arguments: FieldTable::from([("x-credit", 5)]), ..Default::default() };
    assert!(matches!(conn.consume("q", unknown), Err(ConsumeError::InvalidArgument(_))));
    let fine = ConsumeOptions { arguments: FieldTable::from([("x-priority", 5)]), ..Default::default() };
    conn.consume("q", fine)?;
    Ok(())
}

#[test]
fn a_publisher_follows_its_exchange_when_it_is_declared_again() -> Result {
    let conn = Broker::new().connect();
    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    let publisher = conn.publisher("x")?;
    conn.delete_exchange("x", Default::default())?;
    assert!(matches!(publisher.publish("", Message::new("m")), Err(PublishError::ExchangeNotFound { .. })));
    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "x", "", FieldTable::new())?;
    assert_eq!(publisher.publish("", Message::new("m"))?.queues(), 1);
    Ok(())
}

// ----- workers on a temporary connection ----------------------------------

#[test]
fn a_server_on_a_temporary_connection_keeps_serving() -> Result {
    let broker = Broker::new();
    broker.connect().declare_queue("echo", QueueOptions::default())?;
    let server = broker.connect().serve("echo", WorkerOptions::default(), |d: &Delivery| {
        Ok::<_, String>(Message::new(d.body().clone()))
    })?;
    let reply = broker.connect().call("", "echo", Message::new("hi"), Duration::from_secs(30))?;
    assert_eq!(reply.body().as_ref(), b"hi");
    assert!(server.is_running());
    let report = server.shutdown();
    assert_eq!((report.processed, report.consumers_lost), (1, 0));
    Ok(())
}

#[test]
fn a_worker_whose_queue_is_deleted_says_so() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let worker = broker.connect().worker(
        "q",
        WorkerOptions { threads: 2, ..Default::default() },
        |_: &Delivery| Ok::<(), String>(()),
    )?;
    conn.delete_queue("q", Default::default())?;
    while worker.is_running() {
        std::thread::yield_now();
    }
    assert_eq!(worker.shutdown().consumers_lost, 2);
    Ok(())
}

/// Found by the `durations` fuzz target: at the end of a manual clock's
/// time, a message delayed past it made `advance` fire its timer for ever.
#[test]
fn advancing_past_the_end_of_a_manual_clocks_time_returns() -> Result {
    let (clock, broker) = manual();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    clock.advance(Duration::MAX);
    conn.publish("", "q", Message::new("m").with_delay(Duration::MAX))?;
    clock.advance(Duration::MAX);
    clock.advance(Duration::from_secs(1));
    assert_eq!(broker.queue_stats("q").unwrap().messages_delayed, 1, "past the end of time: never due");
    Ok(())
}

/// A consumer on a connection that was dropped at once fails loudly: its
/// first `recv` says the connection is closed, it does not wait for ever.
#[test]
fn a_consumer_on_a_temporary_connection_fails_loudly() -> Result {
    let broker = Broker::new();
    broker.connect().declare_queue("q", QueueOptions::default())?;
    let consumer = broker.connect().consume("q", ConsumeOptions::default())?;
    assert_eq!(consumer.recv().unwrap_err(), interoffice::RecvError::ConnectionClosed);
    assert_eq!(broker.queue_stats("q").unwrap().consumers, 0);
    Ok(())
}
