//! Deduplication: a queue with a deduplication window refuses a publish whose
//! `message_id` it accepted recently (not an error: `Routed::duplicates`
//! counts it), and the consumer-side `ProcessedIds` runs a handler once per
//! `message_id` however often the message arrives.

use std::cell::Cell;
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, DeduplicationWindow, Delivery, ExchangeKind, ExchangeOptions,
    FieldTable, ManualClock, Message, ProcessError, Processed, ProcessedIds, PublishOptions, QueueOptions,
    QueueStats, Routed,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// A broker on a manual clock, and a connection to it.
fn setup() -> (ManualClock, Broker, Connection) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    (clock, broker, conn)
}

fn window(max_ids: Option<usize>, duration: Option<Duration>) -> QueueOptions {
    QueueOptions {
        deduplication_window: Some(DeduplicationWindow { max_ids, duration }),
        ..Default::default()
    }
}

fn with_id(body: &str, id: &str) -> Message {
    Message::new(body.to_owned()).with_message_id(id)
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).expect("the queue exists")
}

/// (queues, duplicates) of a publish.
fn outcome(routed: Routed) -> (usize, usize) {
    (routed.queues(), routed.duplicates())
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

fn next(conn: &Connection, queue: &str) -> Delivery {
    conn.get(queue, false).unwrap().expect("a ready message")
}

#[test]
fn a_duplicate_message_id_inside_the_time_window_is_refused_and_accepted_once_it_is_over() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", window(None, Some(Duration::from_secs(10))))?;

    assert_eq!(outcome(conn.publish("", "q", with_id("first", "a"))?), (1, 0));
    clock.advance(Duration::from_millis(9_999));
    let routed = conn.publish("", "q", with_id("second", "a"))?;
    assert_eq!(outcome(routed), (0, 1));
    assert!(!routed.is_routed());
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.duplicates_refused), (1, 1));

    clock.advance(Duration::from_millis(1)); // 10 s after the first publish
    assert_eq!(outcome(conn.publish("", "q", with_id("third", "a"))?), (1, 0));
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.duplicates_refused), (2, 1));
    assert_eq!(get_all(&conn, "q"), ["first", "third"]);
    Ok(())
}

#[test]
fn the_time_window_counts_from_the_last_accepted_copy_not_from_refused_ones() -> Result {
    let (clock, broker, conn) = setup();
    conn.declare_queue("q", window(None, Some(Duration::from_secs(10))))?;
    conn.publish("", "q", with_id("1", "a"))?; // accepted at 0 s
    clock.advance(Duration::from_secs(5));
    assert_eq!(outcome(conn.publish("", "q", with_id("2", "a"))?), (0, 1)); // refused at 5 s
    clock.advance(Duration::from_secs(5));
    assert_eq!(outcome(conn.publish("", "q", with_id("3", "a"))?), (1, 0)); // 10 s: accepted
    clock.advance(Duration::from_secs(9));
    assert_eq!(outcome(conn.publish("", "q", with_id("4", "a"))?), (0, 1)); // 19 s: within 10 s of "3"
    assert_eq!(stats(&broker, "q").duplicates_refused, 2);
    assert_eq!(get_all(&conn, "q"), ["1", "3"]);
    Ok(())
}

#[test]
fn a_count_window_remembers_only_the_last_max_ids_accepted_ids() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", window(Some(2), None))?;
    let mut results = Vec::new();
    // Accepted ids after each step: [a], [a b], (a refused), [b c], [c a], (a refused), [a b].
    for id in ["a", "b", "a", "c", "a", "a", "b"] {
        results.push(outcome(conn.publish("", "q", with_id(id, id))?));
    }
    assert_eq!(results, [(1, 0), (1, 0), (0, 1), (1, 0), (1, 0), (0, 1), (1, 0)]);
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.duplicates_refused), (5, 2));
    assert_eq!(get_all(&conn, "q"), ["a", "b", "c", "a", "b"]);
    Ok(())
}

#[test]
fn the_window_remembers_ids_after_their_messages_were_consumed() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", window(Some(100), None))?;
    conn.publish("", "q", with_id("once", "a"))?;
    assert_eq!(get_all(&conn, "q"), ["once"]);
    assert_eq!(outcome(conn.publish("", "q", with_id("again", "a"))?), (0, 1));
    assert_eq!(stats(&broker, "q").messages_ready, 0);
    Ok(())
}

#[test]
fn messages_without_a_message_id_are_never_refused() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", window(Some(1), Some(Duration::from_secs(60))))?;
    for _ in 0..3 {
        assert_eq!(outcome(conn.publish("", "q", Message::new("same body"))?), (1, 0));
    }
    // Messages without an id do not push ids out of a count window.
    assert_eq!(outcome(conn.publish("", "q", with_id("with id", "a"))?), (1, 0));
    conn.publish("", "q", Message::new("no id"))?;
    conn.publish("", "q", Message::new("no id"))?;
    assert_eq!(outcome(conn.publish("", "q", with_id("with id again", "a"))?), (0, 1));
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.duplicates_refused), (6, 1));
    Ok(())
}

#[test]
fn a_queue_without_a_window_accepts_duplicates() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    assert_eq!(outcome(conn.publish("", "q", with_id("1", "a"))?), (1, 0));
    assert_eq!(outcome(conn.publish("", "q", with_id("2", "a"))?), (1, 0));
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.duplicates_refused), (2, 0));
    Ok(())
}

#[test]
fn deduplication_is_per_queue() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_exchange("fan", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("plain", QueueOptions::default())?;
    conn.declare_queue("deduped", window(Some(100), None))?;
    conn.bind_queue("plain", "fan", "", FieldTable::new())?;
    conn.bind_queue("deduped", "fan", "", FieldTable::new())?;

    assert_eq!(outcome(conn.publish("fan", "", with_id("1", "x"))?), (2, 0));
    assert_eq!(outcome(conn.publish("fan", "", with_id("2", "x"))?), (1, 1));
    assert_eq!(outcome(conn.publish("fan", "", with_id("3", "y"))?), (2, 0));

    let (plain, deduped) = (stats(&broker, "plain"), stats(&broker, "deduped"));
    assert_eq!((plain.messages_ready, plain.duplicates_refused), (3, 0));
    assert_eq!((deduped.messages_ready, deduped.duplicates_refused), (2, 1));
    assert_eq!(get_all(&conn, "plain"), ["1", "2", "3"]);
    assert_eq!(get_all(&conn, "deduped"), ["1", "3"]);

    // The same id is new to another queue with its own window.
    conn.declare_queue("other", window(Some(100), None))?;
    assert_eq!(outcome(conn.publish("", "other", with_id("4", "x"))?), (1, 0));
    Ok(())
}

#[test]
fn a_mandatory_duplicate_is_not_unroutable() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", window(Some(10), None))?;
    let mandatory = PublishOptions { mandatory: true };
    assert_eq!(outcome(conn.publish_with("", "q", with_id("1", "a"), mandatory)?), (1, 0));
    let second = conn.publish_with("", "q", with_id("2", "a"), mandatory);
    match second {
        Ok(routed) => assert_eq!(outcome(routed), (0, 1)),
        Err(e) => panic!("a duplicate is not an error: {e}"),
    }
    assert_eq!(stats(&broker, "q").duplicates_refused, 1);
    // A truly unroutable mandatory message still fails.
    assert!(conn.publish_with("", "nowhere", with_id("3", "a"), mandatory).is_err());
    Ok(())
}

#[test]
fn processed_ids_runs_the_handler_once_per_message_id() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", with_id("copy 1", "x"))?;
    conn.publish("", "q", with_id("copy 2", "x"))?;
    let ids = ProcessedIds::new(100);
    assert!(ids.is_empty());
    let runs = Cell::new(0);

    let first = ids.process(next(&conn, "q"), |d| {
        runs.set(runs.get() + 1);
        Ok::<_, String>(body(d))
    });
    assert!(matches!(&first, Ok(Processed::Done(b)) if b == "copy 1"));
    assert!(ids.contains("x"));
    assert_eq!(ids.len(), 1);

    let second = ids.process(next(&conn, "q"), |d| {
        runs.set(runs.get() + 1);
        Ok::<_, String>(body(d))
    });
    assert!(matches!(second, Ok(Processed::Duplicate)));
    assert_eq!(runs.get(), 1);
    assert_eq!(ids.len(), 1);

    // Both copies were acknowledged.
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn processed_ids_skips_a_redelivered_copy_of_a_processed_message() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", with_id("original", "x"))?;
    conn.publish("", "q", with_id("copy", "x"))?;
    let ids = ProcessedIds::new(100);
    let runs = Cell::new(0);
    let handler = |_: &Delivery| {
        runs.set(runs.get() + 1);
        Ok::<_, String>(())
    };

    assert!(matches!(ids.process(next(&conn, "q"), handler), Ok(Processed::Done(()))));
    // The copy is returned once unprocessed (say its worker gave up) and comes back redelivered.
    let copy = next(&conn, "q");
    assert_eq!(body(&copy), "copy");
    copy.nack(true)?;
    let again = next(&conn, "q");
    assert!(again.redelivered());
    assert!(matches!(ids.process(again, handler), Ok(Processed::Duplicate)));
    assert_eq!(runs.get(), 1);
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn a_failing_handler_requeues_the_message_and_runs_again_on_redelivery() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", with_id("job", "x"))?;
    let ids = ProcessedIds::new(100);
    let runs = Cell::new(0);

    let failed = ids.process(next(&conn, "q"), |_| {
        runs.set(runs.get() + 1);
        Err::<(), _>("database down".to_owned())
    });
    assert!(matches!(&failed, Err(ProcessError::Handler(e)) if e == "database down"));
    assert!(!ids.contains("x"), "a failed id is not remembered");
    assert!(ids.is_empty());
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (1, 0), "nacked with requeue");

    let retry = next(&conn, "q");
    assert!(retry.redelivered());
    let done = ids.process(retry, |d| {
        runs.set(runs.get() + 1);
        Ok::<_, String>(body(d))
    });
    assert!(matches!(&done, Ok(Processed::Done(b)) if b == "job"));
    assert_eq!(runs.get(), 2);
    assert!(ids.contains("x"));
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn processed_ids_forgets_the_oldest_id_beyond_its_capacity() -> Result {
    let (_clock, _broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    for id in ["a", "b", "c", "a", "c"] {
        conn.publish("", "q", with_id(id, id))?;
    }
    let ids = ProcessedIds::new(2);
    let ran = std::cell::RefCell::new(Vec::new());
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let r = ids.process(next(&conn, "q"), |d| {
            ran.borrow_mut().push(body(d));
            Ok::<_, String>(())
        });
        outcomes.push(matches!(r.expect("handler never fails"), Processed::Done(())));
    }
    // Remembered after each step: [a], [a b], [b c], then a is new again: [c a], and c is known.
    assert_eq!(outcomes, [true, true, true, true, false]);
    assert_eq!(*ran.borrow(), ["a", "b", "c", "a"]);
    assert_eq!(ids.len(), 2);
    assert!(ids.contains("c") && ids.contains("a"));
    assert!(!ids.contains("b"));
    Ok(())
}

#[test]
fn a_delivery_without_a_message_id_always_runs_the_handler() -> Result {
    let (_clock, broker, conn) = setup();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("same"))?;
    conn.publish("", "q", Message::new("same"))?;
    let ids = ProcessedIds::new(10);
    let runs = Cell::new(0);
    for _ in 0..2 {
        let r = ids.process(next(&conn, "q"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(7)
        });
        assert!(matches!(r, Ok(Processed::Done(7))));
    }
    assert_eq!(runs.get(), 2);
    assert!(ids.is_empty());
    assert_eq!(ids.len(), 0);
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn processed_ids_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<ProcessedIds>();
}
