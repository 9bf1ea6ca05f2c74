//! What a new user tripped on, building a four-module app from the README:
//! handler errors that vanished, a default retry that hot-looped, reading
//! dead letters by hand, a `Debug` that dumped internals, binding without
//! arguments, stats that disagreed and did not serialise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use interoffice::{
    Broker, ConsumeOptions, DeathReason, EXCEPTION_HEADER, EXCEPTION_TYPE_HEADER, ExchangeKind, FailureHook,
    FieldValue, Message, OnError, QueueOptions, WorkerOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn a_failing_handler_with_default_options_backs_off_instead_of_hot_looping() -> Result {
    let (broker, clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_queue("emails", QueueOptions::default())?;
    let worker = conn.worker("emails", WorkerOptions::default(), |_| Err::<(), _>("smtp down"))?;
    conn.publish("", "emails", Message::new("welcome").with_message_id("m-1"))?;
    broker.run_until_idle();
    assert_eq!(worker.stats().failed, 1, "one failure, then it waits");
    broker.run_until_idle();
    assert_eq!(worker.stats().failed, 1, "nothing more until the backoff passes");
    // Attempts come at growing intervals: 100 ms doubling, with jitter in [½, 1].
    let mut waited = Vec::new();
    for attempt in 1..=6_u32 {
        let mut step = Duration::ZERO;
        while worker.stats().failed == u64::from(attempt) {
            clock.advance(Duration::from_millis(10));
            step += Duration::from_millis(10);
            broker.run_until_idle();
            assert!(step <= Duration::from_secs(60), "attempt {attempt} never came");
        }
        waited.push(step);
    }
    for (n, step) in waited.iter().enumerate() {
        let base = Duration::from_millis(100) * (1 << n);
        assert!(
            *step >= base / 2 && *step <= base + Duration::from_millis(10),
            "retry {n}: {step:?} vs {base:?}"
        );
    }
    assert_eq!(worker.stats().last_failures.last().map(|f| f.error.as_str()), Some("smtp down"));
    Ok(())
}

#[test]
fn a_discarded_message_carries_the_handlers_error_and_the_hook_hears_of_it() -> Result {
    let (broker, _clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())?;
    conn.declare_queue(
        "orders",
        QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() },
    )?;
    conn.declare_queue("parked", QueueOptions::default())?;
    conn.bind_queue("parked", "dlx", "", None)?;
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let options = WorkerOptions {
        on_error: OnError::Discard,
        on_failure: Some(FailureHook::new(move |failure| sink.lock().unwrap().push(failure.to_string()))),
        ..Default::default()
    };
    let worker = conn.worker("orders", options, |order| match order.body().as_ref() {
        b"" => Err(format!("order {} is empty", order.properties().message_id().unwrap_or("?"))),
        _ => Ok(()),
    })?;
    conn.publish("", "orders", Message::new("").with_message_id("o-7"))?;
    broker.settle_ignoring_unconsumed(Duration::from_secs(5))?;

    let parked = conn.get("parked", false)?.expect("dead-lettered");
    assert_eq!(parked.header(EXCEPTION_HEADER).and_then(FieldValue::as_str), Some("order o-7 is empty"));
    assert_eq!(
        parked.header(EXCEPTION_TYPE_HEADER).and_then(FieldValue::as_str),
        Some("alloc::string::String")
    );
    assert!(
        parked
            .header("x-exception-handler")
            .and_then(FieldValue::as_str)
            .is_some_and(|h| h.contains("closure"))
    );
    assert_eq!(
        *heard.lock().unwrap(),
        ["handler failed on a message from 'orders' (message id o-7): order o-7 is empty"]
    );
    let report = worker.shutdown();
    assert_eq!(report.last_failures[0].message_id.as_deref(), Some("o-7"));
    // The death history reads as data.
    let deaths = parked.deaths();
    assert_eq!(deaths.len(), 1);
    assert_eq!(
        (deaths[0].queue.as_str(), deaths[0].reason, deaths[0].count),
        ("orders", Some(DeathReason::Rejected), 1)
    );
    assert_eq!(deaths[0].exchange, "");
    assert_eq!(deaths[0].routing_keys, ["orders"]);
    assert!(deaths[0].time.is_some());
    let first = parked.first_death().expect("x-first-death-*");
    assert_eq!((first.queue.as_str(), first.reason), ("orders", Some(DeathReason::Rejected)));
    parked.ack()?;
    Ok(())
}

#[test]
fn a_deliverys_debug_shows_what_a_user_needs() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("hello").with_message_id("m-1").with_header("tenant", "acme"))?;
    let delivery = conn.consume("q", ConsumeOptions::default())?.recv()?;
    let shown = format!("{delivery:?}");
    assert_eq!(
        shown,
        "Delivery { exchange: \"\", routing_key: \"q\", delivery_tag: 1, redelivered: false, message_id: \"m-1\", \
         headers: [\"tenant\"], body: \"hello\", settled: false }"
    );
    delivery.ack()?;
    Ok(())
}

#[test]
fn binding_without_arguments_and_stats_that_agree_and_serialise() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, Default::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "x", "k", None)?;
    conn.bind_exchange("amq.direct", "x", "k", None)?;
    conn.unbind_exchange("amq.direct", "x", "k", None)?;
    conn.publish("x", "k", Message::new("m"))?;
    assert_eq!(broker.queue_stats("q")?, conn.queue_stats("q")?);
    let missing = broker.queue_stats("nope").unwrap_err();
    assert_eq!(missing, conn.queue_stats("nope").unwrap_err());
    assert_eq!(missing.to_string(), "NOT_FOUND - no queue 'nope' in vhost '/'");
    let json = serde_json::to_value(broker.queue_stats("q")?)?;
    assert_eq!(json["messages_ready"], 1);
    let worker = conn.worker("q", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
    let report = serde_json::to_value(worker.stats())?;
    assert!(report.get("last_failures").is_some());
    serde_json::to_value(broker.flow())?;
    serde_json::to_value(conn.rpc_stats())?;
    serde_json::to_value(broker.bindings())?;
    Ok(())
}

#[test]
fn debug_of_messages_consumers_and_brokers_shows_what_matters() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let message = Message::new("hi").with_message_id("m-1");
    assert_eq!(format!("{message:?}"), "Message { body: \"hi\", message_id: \"m-1\" }");
    assert_eq!(format!("{:?}", Message::new(vec![0_u8, 1, 2])), "Message { body: <3 bytes> }");
    let consumer = conn.consume(
        "q",
        ConsumeOptions { consumer_tag: Some("c1".into()), prefetch: 5, ..Default::default() },
    )?;
    assert_eq!(
        format!("{consumer:?}"),
        "Consumer { tag: \"c1\", queue: \"q\", auto_ack: false, prefetch: 5, holding: 0, cancelled: false }"
    );
    assert_eq!(
        format!("{broker:?}"),
        "Broker { vhosts: 1, exchanges: 6, queues: 1, clock: Clock::System, .. }"
    );
    Ok(())
}

#[test]
fn an_extreme_backoff_is_clamped_never_a_panic() -> Result {
    let (broker, clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let backoff = interoffice::Backoff { initial: Duration::MAX, max: Duration::MAX };
    let options = WorkerOptions { on_error: OnError::Backoff(backoff), ..Default::default() };
    let worker = conn.worker("q", options, |_| Err::<(), _>("always"))?;
    conn.publish("", "q", Message::new("m"))?;
    broker.run_until_idle();
    assert_eq!(worker.stats().failed, 1);
    assert_eq!(broker.queue_stats("q")?.messages_delayed, 1, "waiting, at most ten years");
    clock.advance(interoffice::MAX_DURATION);
    broker.run_until_idle();
    assert_eq!(worker.stats().failed, 2, "and retried once that has passed");
    Ok(())
}
