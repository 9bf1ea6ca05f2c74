//! Settling: `Broker::settle` returns once the bus is quiescent — nothing
//! ready, nothing unsettled, nothing between exchanges and queues — and
//! otherwise fails listing what is pending. The stress test races it with
//! many publishing handlers and checks, each time it returns, that every
//! message caused by what was published before it has been handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, FieldValue,
    ManualClock, Message, OnError, QueueOptions, SettleError, WorkerOptions,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A bound on a hang, not a delay: settling takes microseconds.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn an_idle_bus_is_settled_at_once() -> Result {
    let broker = Broker::new();
    broker.connect().declare_queue("q", QueueOptions::default())?;
    broker.settle(Duration::ZERO)?;
    Ok(())
}

#[test]
fn a_queue_nobody_consumes_is_reported_with_its_count() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("billing", QueueOptions::default())?;
    conn.declare_queue("idle", QueueOptions::default())?;
    conn.publish("", "billing", Message::new("a"))?;
    conn.publish("", "billing", Message::new("b"))?;
    let err = broker.settle(Duration::from_millis(20)).unwrap_err();
    let SettleError::Timeout { pending, .. } = &err else { panic!("{err}") };
    assert_eq!(pending.queues.len(), 1);
    assert_eq!(pending.queues[0].name, "billing");
    assert_eq!(pending.queues[0].ready, 2);
    assert_eq!(pending.queues[0].consumers, 0);
    assert!(err.to_string().contains("queue 'billing': 2 ready (no consumer)"), "{err}");
    // Leaving unconsumed queues out, there is nothing to wait for.
    broker.settle_ignoring_unconsumed(Duration::ZERO)?;
    Ok(())
}

#[test]
fn an_unsettled_delivery_is_reported_with_its_consumer() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default())?;
    conn.publish("", "jobs", Message::new("a"))?;
    let consumer = conn
        .consume("jobs", ConsumeOptions { consumer_tag: Some("slow-worker".into()), ..Default::default() })?;
    let delivery = consumer.recv()?;
    let err = broker.settle(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.pending().queues[0].unacknowledged, [("slow-worker".to_owned(), 1)]);
    assert!(err.to_string().contains("1 unacknowledged by slow-worker"), "{err}");
    // Even when nothing consumes any more, an unsettled delivery counts.
    assert!(broker.settle_ignoring_unconsumed(Duration::ZERO).is_err());
    delivery.ack()?;
    broker.settle(PATIENCE)?;
    Ok(())
}

#[test]
fn under_a_manual_clock_a_delayed_message_is_pending_only_once_due() -> Result {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    conn.declare_queue("later", QueueOptions::default())?;
    conn.publish("", "later", Message::new("m").with_delay(Duration::from_secs(60)))?;
    broker.settle(Duration::ZERO)?;
    clock.advance(Duration::from_secs(60));
    let err = broker.settle(Duration::ZERO).unwrap_err();
    assert_eq!(err.pending().queues[0].ready, 1);
    Ok(())
}

#[test]
fn under_the_system_clock_a_delayed_message_is_pending() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("later", QueueOptions::default())?;
    conn.publish("", "later", Message::new("m").with_delay(Duration::from_secs(3600)))?;
    let err = broker.settle(Duration::ZERO).unwrap_err();
    assert_eq!(err.pending().queues[0].delayed, 1);
    Ok(())
}

#[test]
fn settle_waits_for_a_dead_letter_and_an_alternate_exchange_hop() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange("unrouted", ExchangeKind::Fanout, ExchangeOptions::default())?;
    let with_ae = ExchangeOptions { alternate_exchange: Some("unrouted".into()), ..Default::default() };
    conn.declare_exchange("orders", ExchangeKind::Direct, with_ae)?;
    let dead_lettering = QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() };
    conn.declare_queue("poison", dead_lettering)?;
    conn.declare_queue("parking-lot", QueueOptions::default())?;
    conn.declare_queue("lost-and-found", QueueOptions::default())?;
    conn.bind_queue("parking-lot", "dlx", "", FieldTable::new())?;
    conn.bind_queue("poison", "unrouted", "", FieldTable::new())?;
    conn.bind_queue("lost-and-found", "unrouted", "", FieldTable::new())?;

    let parked = Arc::new(AtomicU64::new(0));
    let found = Arc::new(AtomicU64::new(0));
    let discard = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
    let _poison = conn.worker("poison", discard, |_| Err::<(), _>("always fails"))?;
    let counter = Arc::clone(&parked);
    let _parking = conn.worker("parking-lot", WorkerOptions::default(), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?;
    let counter = Arc::clone(&found);
    let _found = conn.worker("lost-and-found", WorkerOptions::default(), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?;
    for n in 0..100 {
        conn.publish("orders", "no-such-key", Message::new(format!("{n}")))?;
    }
    broker.settle(PATIENCE)?;
    assert_eq!(parked.load(Ordering::SeqCst), 100);
    assert_eq!(found.load(Ordering::SeqCst), 100);
    Ok(())
}

/// The chain of the stress test: each handled message of depth below
/// `DEPTH` causes more, through a direct publish, an alternate exchange and
/// a dead-letter exchange.
const DEPTH: i64 = 3;

/// How many messages one root causes to be handled (itself included), by
/// the rules of [`chain_topology`]: a `hop` message causes a `hop` and an
/// `unrouted` one; an `unrouted` one causes a `poison` one, which is
/// rejected (not counted as handled) and dead-lettered to `parked`, which
/// causes a `hop`. Depth grows by one at each publish.
fn handled_per_root() -> u64 {
    fn hop(depth: i64) -> u64 {
        1 + if depth < DEPTH { hop(depth + 1) + unrouted(depth + 1) } else { 0 }
    }
    fn unrouted(depth: i64) -> u64 {
        1 + if depth < DEPTH { parked(depth + 1) } else { 0 }
    }
    fn parked(depth: i64) -> u64 {
        // The poison handler fails; the dead letter keeps its depth.
        1 + if depth < DEPTH { hop(depth + 1) } else { 0 }
    }
    hop(0)
}

fn depth(delivery: &interoffice::Delivery) -> i64 {
    delivery.header("depth").and_then(FieldValue::as_i64).unwrap_or(0)
}

fn child(depth: i64) -> Message {
    Message::new("child").with_header("depth", depth)
}

/// A child of `parent`: one deeper, of the same root.
fn child_of(parent: &interoffice::Delivery, depth: i64) -> Message {
    match parent.header("root") {
        Some(root) => child(depth).with_header("root", root.clone()),
        None => child(depth),
    }
}

/// Declares the chain's topology and starts its workers, counting handled
/// messages in `handled`.
fn chain_topology(conn: &Arc<Connection>, handled: &Arc<AtomicU64>) -> Result<Vec<interoffice::Worker>> {
    chain_topology_with(conn, handled, |_| {})
}

/// [`chain_topology`], calling `seen` on every handled message.
fn chain_topology_with(
    conn: &Arc<Connection>,
    handled: &Arc<AtomicU64>,
    seen: impl Fn(&interoffice::Delivery) + Send + Sync + 'static,
) -> Result<Vec<interoffice::Worker>> {
    let seen_all = Arc::new(seen);
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange("ae", ExchangeKind::Fanout, ExchangeOptions::default())?;
    let with_ae = ExchangeOptions { alternate_exchange: Some("ae".into()), ..Default::default() };
    conn.declare_exchange("events", ExchangeKind::Topic, with_ae)?;
    conn.declare_queue("hop", QueueOptions::default())?;
    conn.declare_queue("unrouted", QueueOptions::default())?;
    let dlq = QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() };
    conn.declare_queue("poison", dlq)?;
    conn.declare_queue("parked", QueueOptions::default())?;
    conn.bind_queue("unrouted", "ae", "", FieldTable::new())?;
    conn.bind_queue("parked", "dlx", "", FieldTable::new())?;
    conn.bind_queue("hop", "events", "hop.#", FieldTable::new())?;

    let options = WorkerOptions { threads: 2, prefetch: 4, ..Default::default() };
    let mut workers = Vec::new();
    let (publisher, counter, seen) = (Arc::clone(conn), Arc::clone(handled), Arc::clone(&seen_all));
    workers.push(conn.worker("hop", options.clone(), move |d| {
        let depth = depth(d);
        if depth < DEPTH {
            publisher.publish("events", "hop.next", child_of(d, depth + 1)).map_err(|e| e.to_string())?;
            publisher
                .publish("events", "nobody.binds.this", child_of(d, depth + 1))
                .map_err(|e| e.to_string())?;
        }
        seen(d);
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?);
    let (publisher, counter, seen) = (Arc::clone(conn), Arc::clone(handled), Arc::clone(&seen_all));
    workers.push(conn.worker("unrouted", options.clone(), move |d| {
        let depth = depth(d);
        if depth < DEPTH {
            publisher.publish("", "poison", child_of(d, depth + 1)).map_err(|e| e.to_string())?;
        }
        seen(d);
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?);
    let discard = WorkerOptions { on_error: OnError::Discard, ..options.clone() };
    workers.push(conn.worker("poison", discard, |_| Err::<(), _>("poison"))?);
    let (publisher, counter, seen) = (Arc::clone(conn), Arc::clone(handled), Arc::clone(&seen_all));
    workers.push(conn.worker("parked", options, move |d| {
        let depth = depth(d);
        if depth < DEPTH {
            publisher.publish("events", "hop.again", child_of(d, depth + 1)).map_err(|e| e.to_string())?;
        }
        seen(d);
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?);
    Ok(workers)
}

#[test]
fn settle_waits_for_a_chain_of_handlers_to_finish() -> Result {
    let broker = Broker::new();
    let conn = Arc::new(broker.connect());
    let handled = Arc::new(AtomicU64::new(0));
    let _workers = chain_topology(&conn, &handled)?;
    for _ in 0..20 {
        conn.publish("events", "hop.start", child(0))?;
    }
    broker.settle(PATIENCE)?;
    assert_eq!(handled.load(Ordering::SeqCst), 20 * handled_per_root());
    for name in broker.queue_names() {
        let stats = broker.queue_stats(&name).unwrap();
        assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0), "{name}");
    }
    Ok(())
}

/// Rounds of the race (`INTEROFFICE_SETTLE_ROUNDS`, 300 by default).
fn rounds() -> usize {
    std::env::var("INTEROFFICE_SETTLE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

/// The most roots the race publishes.
const MAX_ROOTS: usize = 1 << 20;

/// Publishers keep publishing roots while the test settles again and
/// again. Each time `settle` returns `Ok`, every root whose publish had
/// returned before `settle` was called must have been handled to the end of
/// its chain — through handlers publishing, an alternate exchange and a
/// dead-letter hop, all racing the settle: the checker counts handled
/// messages per root.
#[test]
fn settle_racing_publishers_and_handlers_never_returns_early() -> Result {
    let broker = Broker::new();
    let conn = Arc::new(broker.connect());
    let handled = Arc::new(AtomicU64::new(0));
    let per_root_done: Arc<Vec<AtomicU64>> = Arc::new((0..MAX_ROOTS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::clone(&per_root_done);
    let _workers = chain_topology_with(&conn, &handled, move |d| {
        if let Some(root) = d.header("root").and_then(FieldValue::as_i64) {
            done[root as usize].fetch_add(1, Ordering::SeqCst);
        }
    })?;
    let started = Arc::new(AtomicU64::new(0));
    let returned = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..3_u64)
        .map(|seed| {
            let (conn, started, stop) = (Arc::clone(&conn), Arc::clone(&started), Arc::clone(&stop));
            let returned = Arc::clone(&returned);
            thread::spawn(move || {
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                while !stop.load(Ordering::SeqCst) {
                    let root = started.fetch_add(1, Ordering::SeqCst);
                    if root as usize >= MAX_ROOTS {
                        break;
                    }
                    let message = child(0).with_header("root", root as i64);
                    conn.publish("events", "hop.root", message).unwrap();
                    // Roots are numbered as they start: `returned` counts
                    // those published, each counted once all lower ones
                    // are (so that every number below it has returned).
                    while returned
                        .compare_exchange(root, root + 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        // A publisher that panicked leaves its number
                        // unreturned: stop waiting once the test stops.
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::hint::spin_loop();
                    }
                    // Pacing, so the bus is sometimes quiet: a settle that
                    // never succeeds checks nothing.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    thread::sleep(Duration::from_micros(rng % 400));
                }
            })
        })
        .collect();
    let per_root = handled_per_root();
    let (mut settled, mut checked) = (0, 0_usize);
    // On a loaded machine the publishers may not have run yet: a settle of
    // an idle bus checks nothing, so wait for the first roots.
    let deadline = std::time::Instant::now() + PATIENCE;
    while returned.load(Ordering::SeqCst) < 10 {
        assert!(std::time::Instant::now() < deadline, "the publishers never published");
        thread::yield_now();
    }
    let mut round = 0;
    // At least `rounds()` rounds, and more until settle has returned `Ok`
    // 20 times with roots to check (a loaded machine may be busy for a
    // while), up to a cap.
    while round < rounds() || ((settled < 20 || checked == 0) && round < rounds() * 20) {
        round += 1;
        let before = (returned.load(Ordering::SeqCst) as usize).min(MAX_ROOTS);
        // Under constant publishing the bus may not be quiet: a timeout is
        // fine, an early return is not.
        if broker.settle(Duration::from_millis(5)).is_ok() {
            settled += 1;
            for root in checked..before {
                let done = per_root_done[root].load(Ordering::SeqCst);
                assert_eq!(
                    done, per_root,
                    "settle returned with root {root} handled {done} of {per_root} times"
                );
            }
            checked = checked.max(before);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    broker.settle(PATIENCE)?;
    let roots = (started.load(Ordering::SeqCst) as usize).min(MAX_ROOTS);
    assert_eq!(handled.load(Ordering::SeqCst), roots as u64 * per_root);
    assert!(checked > 0, "settle never returned Ok while publishers ran: the race checked nothing");
    eprintln!(
        "settle returned Ok in {settled} of {round} rounds while publishers ran; {checked} roots checked"
    );
    Ok(())
}
