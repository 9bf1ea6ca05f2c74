//! Deterministic mode: `Broker::deterministic` — a manual clock at a fixed
//! wall time, workers run inline by `settle`/`run_until_idle`/`call`, names
//! from a fixed seed — gives the same interleaving and the same recorded
//! trace on every run of a multi-module test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interoffice::{
    Broker, ConsumeOptions, DeathReason, ExchangeKind, FieldTable, Message, OnError, QueueOptions,
    WorkerOptions,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs of the same test (`INTEROFFICE_DETERMINISM_RUNS`, 100 by default).
fn runs() -> usize {
    std::env::var("INTEROFFICE_DETERMINISM_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// One run of a four-module shop: orders → billing (which asks the tax
/// service over RPC) → shipping (which fails once and retries after 30
/// s), a poison order dead-lettered to a parking lot, an audit queue whose
/// messages expire. Returns the whole record, every field of every event.
fn shop_run() -> Result<String> {
    let (broker, clock) = Broker::deterministic();
    let conn = Arc::new(broker.connect());
    conn.declare_exchange("shop", ExchangeKind::Topic, Default::default())?;
    conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())?;
    let dead_lettering = QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() };
    conn.declare_queue("orders", dead_lettering.clone())?;
    conn.declare_queue("billing", QueueOptions::default())?;
    conn.declare_queue("tax", QueueOptions::default())?;
    conn.declare_queue("shipping", QueueOptions::default())?;
    conn.declare_queue("parked", QueueOptions::default())?;
    conn.declare_queue(
        "audit",
        QueueOptions { message_ttl: Some(Duration::from_secs(60)), ..Default::default() },
    )?;
    conn.bind_queue("orders", "shop", "order.placed", FieldTable::new())?;
    conn.bind_queue("billing", "shop", "order.accepted", FieldTable::new())?;
    conn.bind_queue("shipping", "shop", "order.billed", FieldTable::new())?;
    conn.bind_queue("audit", "shop", "#", FieldTable::new())?;
    conn.bind_queue("parked", "dlx", "", FieldTable::new())?;
    // A generated name and tag, which must come out the same every run.
    let anonymous = conn.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
    let _tail = conn.consume(&anonymous, ConsumeOptions::default())?;

    let recorder = broker.record();
    let discard = WorkerOptions { threads: 2, on_error: OnError::Discard, ..Default::default() };
    let publisher = Arc::clone(&conn);
    let _orders = conn.worker("orders", discard, move |order| {
        if order.body().as_ref() == b"poison" {
            return Err("cannot parse".to_owned());
        }
        publisher
            .publish("shop", "order.accepted", Message::new(order.body().clone()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let publisher = Arc::clone(&conn);
    let _billing = conn.worker("billing", WorkerOptions::default(), move |bill| {
        let tax = publisher
            .call("", "tax", Message::new(bill.body().clone()), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        publisher
            .publish("shop", "order.billed", Message::new(tax.body().clone()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let _tax = conn.serve("tax", WorkerOptions::default(), |request| {
        Ok::<_, String>(Message::new(format!("{} taxed", String::from_utf8_lossy(request.body()))))
    })?;
    let attempts = Arc::new(AtomicU32::new(0));
    let retry =
        WorkerOptions { on_error: OnError::RequeueAfter(Duration::from_secs(30)), ..Default::default() };
    let _shipping = conn.worker("shipping", retry, move |_| {
        // The carrier is down the first time.
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 { Err("carrier down") } else { Ok(()) }
    })?;
    let parked: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&parked);
    let _parking = conn.worker("parked", WorkerOptions::default(), move |letter| {
        sink.lock().unwrap().push(String::from_utf8_lossy(letter.body()).into_owned());
        Ok::<(), String>(())
    })?;

    for order in ["order 1", "poison", "order 2"] {
        conn.publish("shop", "order.placed", Message::new(order))?;
    }
    broker.settle_ignoring_unconsumed(Duration::from_secs(5))?;
    clock.advance(Duration::from_secs(30));
    broker.settle_ignoring_unconsumed(Duration::from_secs(5))?;
    clock.advance(Duration::from_secs(60));
    broker.settle(Duration::from_secs(5))?;

    recorder.assert_dead_lettered("orders", DeathReason::Rejected);
    recorder.assert_replied("tax");
    recorder.assert_nacked("shipping");
    recorder.assert_expired("audit");
    assert_eq!(*parked.lock().unwrap(), ["poison"]);
    assert_eq!(recorder.count_published("shop", "order.billed"), 2);
    Ok(format!("{:#?}\n{}", recorder.events(), recorder.trace().join("\n")))
}

#[test]
fn the_same_test_gives_the_same_trace_every_run() -> Result {
    let first = shop_run()?;
    // The record holds generated names, correlation ids and x-death times.
    assert!(
        first.contains("amq.ctag-")
            && first.contains("amq.rabbitmq.reply-to.")
            && first.contains("Timestamp("),
        "{first}"
    );
    for run in 1..runs() {
        let again = shop_run()?;
        if again != first {
            let line = first.lines().zip(again.lines()).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "run {run} differs from the first at line {line}:\n first: {}\n again: {}",
                first.lines().nth(line).unwrap_or(""),
                again.lines().nth(line).unwrap_or("")
            );
        }
    }
    Ok(())
}

#[test]
fn workers_of_a_deterministic_broker_run_only_when_asked() -> Result {
    let (broker, _clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let worker = conn.worker("q", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
    conn.publish("", "q", Message::new("a"))?;
    conn.publish("", "q", Message::new("b"))?;
    assert_eq!(worker.stats().processed, 0, "no thread ran it");
    assert_eq!(broker.run_until_idle(), 2);
    assert_eq!(worker.stats().processed, 2);
    assert!(worker.is_running());
    let report = worker.shutdown();
    assert_eq!(report.processed, 2);
    conn.publish("", "q", Message::new("c"))?;
    assert_eq!(broker.run_until_idle(), 0, "a stopped worker runs nothing");
    Ok(())
}

#[test]
fn a_call_nobody_answers_in_a_deterministic_broker_times_out_instead_of_hanging() -> Result {
    let (broker, _clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_queue("silent", QueueOptions::default())?;
    let err = conn.call("", "silent", Message::new("hello?"), Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, interoffice::CallError::Timeout { .. }), "{err}");
    Ok(())
}
