//! Fault injection: dropped, duplicated and delayed messages by queue,
//! routing key or seeded probability; a crashed connection. A handler using
//! `ProcessedIds` survives the duplicates; the same seed injects the same
//! faults; without rules nothing is touched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interoffice::{
    Broker, ConsumeOptions, Event, Fault, FaultAction, Message, ProcessedIds, QueueOptions, WorkerOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn a_fault_injected_duplicate_is_caught_by_processed_ids() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("payments", QueueOptions::default())?;
    let faults = broker.inject_faults(42);
    faults.add(Fault {
        queue: Some("payments".into()),
        probability: 0.5,
        ..Fault::new(FaultAction::Duplicate)
    });

    let seen = Arc::new(ProcessedIds::new(10_000));
    let charged = Arc::new(AtomicU64::new(0));
    let deliveries = Arc::new(AtomicU64::new(0));
    let (ids, count, handled) = (Arc::clone(&seen), Arc::clone(&charged), Arc::clone(&deliveries));
    let _worker = conn.worker("payments", WorkerOptions::default(), move |payment| {
        handled.fetch_add(1, Ordering::SeqCst);
        let id = payment.properties().message_id().ok_or("no message id")?;
        if ids.remember(id) {
            count.fetch_add(1, Ordering::SeqCst); // the side effect: charge once
        }
        Ok::<(), &str>(())
    })?;
    for n in 0..100 {
        conn.publish("", "payments", Message::new(format!("pay {n}")).with_message_id(format!("p-{n}")))?;
    }
    broker.settle(PATIENCE)?;
    let duplicates = faults.injected().len() as u64;
    assert!(duplicates > 20 && duplicates < 80, "about half were duplicated: {duplicates}");
    assert_eq!(deliveries.load(Ordering::SeqCst), 100 + duplicates, "each duplicate was delivered");
    assert_eq!(charged.load(Ordering::SeqCst), 100, "and caught: every payment charged once");
    Ok(())
}

#[test]
fn the_same_seed_injects_the_same_faults() -> Result {
    let run = |seed: u64| -> std::result::Result<Vec<String>, Box<dyn std::error::Error>> {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions::default())?;
        let faults = broker.inject_faults(seed);
        faults.add(Fault { probability: 0.3, ..Fault::new(FaultAction::Drop) });
        for n in 0..200 {
            conn.publish("", "q", Message::new(format!("{n}")))?;
        }
        let mut kept = Vec::new();
        while let Some(d) = conn.get("q", true)? {
            kept.push(String::from_utf8_lossy(d.body()).into_owned());
        }
        Ok(kept)
    };
    assert_eq!(run(7)?, run(7)?);
    assert_ne!(run(7)?, run(8)?);
    let kept = run(7)?.len();
    assert!(kept > 100 && kept < 180, "about 30% dropped: {kept} kept");
    Ok(())
}

#[test]
fn drops_follow_the_routing_key_and_are_recorded() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("events", interoffice::ExchangeKind::Topic, Default::default())?;
    conn.declare_queue("audit", QueueOptions::default())?;
    conn.bind_queue("audit", "events", "#", None)?;
    let recorder = broker.record();
    let faults = broker.inject_faults(1);
    faults.add(Fault { routing_key: Some("order.*.cancelled".into()), ..Fault::new(FaultAction::Drop) });
    let routed = conn.publish("events", "order.eu.cancelled", Message::new("lost"))?;
    assert_eq!(routed.queues(), 1, "counted as routed, as a loss downstream would be");
    conn.publish("events", "order.eu.created", Message::new("kept"))?;
    assert_eq!(broker.queue_stats("audit").unwrap().messages_ready, 1);
    assert!(
        recorder
            .trace()
            .contains(&"fault: dropped entering 'audit' (key 'order.eu.cancelled') \"lost\"".to_owned())
    );
    let events = recorder.events();
    assert!(matches!(events[0], Event::Published { .. }), "the publish comes first: {events:?}");
    assert!(matches!(events[1], Event::Fault { action: FaultAction::Drop, .. }), "{events:?}");
    drop(faults);
    conn.publish("events", "order.eu.cancelled", Message::new("after"))?;
    assert_eq!(
        broker.queue_stats("audit").unwrap().messages_ready,
        2,
        "dropping the injector clears its rules"
    );
    Ok(())
}

#[test]
fn a_delayed_message_waits_on_the_broker_clock() -> Result {
    let (broker, clock) = Broker::deterministic();
    let conn = broker.connect();
    conn.declare_queue("emails", QueueOptions::default())?;
    let worker = conn.worker("emails", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
    let faults = broker.inject_faults(3);
    faults.add(Fault { limit: Some(1), ..Fault::new(FaultAction::Delay(Duration::from_secs(30))) });
    conn.publish("", "emails", Message::new("late"))?;
    conn.publish("", "emails", Message::new("on time"))?;
    broker.settle(PATIENCE)?;
    assert_eq!(worker.stats().processed, 1, "the delayed one waits");
    clock.advance(Duration::from_secs(30));
    broker.settle(PATIENCE)?;
    assert_eq!(worker.stats().processed, 2);
    assert_eq!(faults.injected().len(), 1, "the limit held");
    Ok(())
}

#[test]
fn a_crashed_connection_gives_its_unacknowledged_work_to_others_and_publishes_its_will() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default())?;
    conn.declare_queue("obituaries", QueueOptions::default())?;
    for n in 0..3 {
        conn.publish("", "jobs", Message::new(format!("job {n}")))?;
    }
    let doomed = broker.connect();
    doomed.set_will("", "obituaries", Message::new("worker-1 died"))?;
    let consumer = doomed.consume("jobs", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    let held: Vec<_> = (0..3).map(|_| consumer.recv()).collect::<std::result::Result<_, _>>()?;
    doomed.crash();
    assert!(held.into_iter().all(|d| d.ack().is_err()), "the crashed connection's acks are refused");
    let taken: Arc<Mutex<Vec<bool>>> = Arc::default();
    let sink = Arc::clone(&taken);
    let _survivor = conn.worker("jobs", WorkerOptions::default(), move |d| {
        sink.lock().unwrap().push(d.redelivered());
        Ok::<(), String>(())
    })?;
    broker.settle_ignoring_unconsumed(PATIENCE)?;
    assert_eq!(*taken.lock().unwrap(), [true, true, true], "redone elsewhere, flagged redelivered");
    assert_eq!(conn.get("obituaries", true)?.unwrap().body().as_ref(), b"worker-1 died");
    Ok(())
}

#[test]
fn extreme_fault_rules_are_taken_as_meant_never_a_panic() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let faults = broker.inject_faults(0);
    // A NaN or negative chance never hits; one above 1 always does.
    faults.add(Fault { probability: f64::NAN, ..Fault::new(FaultAction::Drop) });
    faults.add(Fault { probability: -1.0, ..Fault::new(FaultAction::Drop) });
    faults.add(Fault { probability: 2.0, limit: Some(1), ..Fault::new(FaultAction::Delay(Duration::MAX)) });
    conn.publish("", "q", Message::new("far future"))?;
    conn.publish("", "q", Message::new("now"))?;
    let stats = broker.queue_stats("q")?;
    assert_eq!((stats.messages_delayed, stats.messages_ready), (1, 1));
    assert_eq!(faults.injected().len(), 1);
    Ok(())
}
