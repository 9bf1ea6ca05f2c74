//! Queue length limits: `max_length` (messages) and `max_length_bytes` (body
//! bytes), with the three overflow behaviours: `DropHead` drops (or
//! dead-letters, reason `maxlen`) the oldest, `RejectPublish` refuses the new
//! message and hands it back, `RejectPublishDlx` refuses it and dead-letters a
//! copy. Only ready messages count: what a consumer holds does not. The limit
//! holds at every instant under concurrent publishers, and the `x-*` argument
//! forms behave as the typed fields.

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use interoffice::{
    Broker, Connection, ConsumeOptions, DeclareError, Delivery, ErrorKind, ExchangeKind, ExchangeOptions,
    FieldTable, FieldValue, Message, Overflow, PublishError, QueueOptions, QueueStats, Routed,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn stats(broker: &Broker, queue: &str) -> QueueStats {
    broker.queue_stats(queue).unwrap_or_else(|e| panic!("{e}"))
}

/// The bodies of every ready message of `queue`, taken with auto-ack gets, in order.
fn take_all(conn: &Connection, queue: &str) -> Vec<String> {
    std::iter::from_fn(|| conn.get(queue, true).unwrap()).map(|d| body(&d)).collect()
}

/// Every ready delivery of `queue`, taken with auto-ack gets, in order.
fn take_all_deliveries(conn: &Connection, queue: &str) -> Vec<Delivery> {
    std::iter::from_fn(|| conn.get(queue, true).unwrap()).collect()
}

/// Declares the fanout exchange `dlx` and the queue `dead` bound to it.
fn declare_dlx(conn: &Connection) -> Result {
    conn.declare_exchange("dlx", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("dead", QueueOptions::default())?;
    conn.bind_queue("dead", "dlx", "", FieldTable::new())?;
    Ok(())
}

fn limited(max_length: usize, overflow: Overflow) -> QueueOptions {
    QueueOptions { max_length: Some(max_length), overflow, ..Default::default() }
}

/// `options` with `dlx` as dead-letter exchange.
fn with_dlx(options: QueueOptions) -> QueueOptions {
    QueueOptions { dead_letter_exchange: Some("dlx".into()), ..options }
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

/// Expects a publish's result to be `PublishError::Rejected`; returns its
/// `queues`, `routed`, the message handed back and the error's kind.
fn expect_rejected(
    result: std::result::Result<Routed, PublishError>,
) -> (Vec<String>, usize, Message, ErrorKind) {
    match result {
        Err(err @ PublishError::Rejected { .. }) => {
            let kind = err.kind();
            let PublishError::Rejected { queues, routed, message } = err else { unreachable!() };
            (queues, routed, *message, kind)
        }
        other => panic!("expected PublishError::Rejected, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// DropHead

#[test]
fn max_length_3_with_drop_head_keeps_the_newest_three_of_six() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(3, Overflow::default()))?;
    for i in 1..=6 {
        let routed = conn.publish("", "q", Message::new(format!("m{i}")))?;
        assert_eq!(routed.queues(), 1, "a DropHead queue always takes the new message");
    }
    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 3);
    assert_eq!(s.dropped.maxlen, 3);
    assert_eq!(s.dropped.total(), 3);
    assert_eq!(s.dead_lettered.total(), 0);
    assert_eq!(s.dead_letter_failures, 0, "no DLX configured: not a dead-letter failure");
    assert_eq!(s.publishes_rejected, 0);
    assert_eq!(take_all(&conn, "q"), ["m4", "m5", "m6"]);
    Ok(())
}

#[test]
fn messages_dropped_by_drop_head_are_dead_lettered_oldest_first_with_reason_maxlen() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_dlx(&conn)?;
    conn.declare_queue("q", with_dlx(limited(3, Overflow::DropHead)))?;
    for i in 1..=6 {
        conn.publish("", "q", Message::new(format!("m{i}")).with_header("n", i))?;
    }

    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 3);
    assert_eq!(s.dead_lettered.maxlen, 3);
    assert_eq!(s.dead_lettered.total(), 3);
    assert_eq!(s.dropped.total(), 0, "dead-lettered messages are not counted as dropped");
    assert_eq!(stats(&broker, "dead").messages_ready, 3);

    let dead = take_all_deliveries(&conn, "dead");
    assert_eq!(dead.iter().map(body).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    for (i, d) in dead.iter().enumerate() {
        assert_eq!(d.exchange(), "dlx");
        assert_eq!(d.routing_key(), "q", "dead-lettered with its own routing key");
        assert_eq!(d.header("n").and_then(FieldValue::as_i64), Some(i as i64 + 1), "headers are kept");
        let deaths = x_death(d);
        assert_eq!(deaths.len(), 1);
        let death = &deaths[0];
        assert_eq!(text(death, "reason"), Some("maxlen"));
        assert_eq!(text(death, "queue"), Some("q"));
        assert_eq!(text(death, "exchange"), Some(""));
        assert_eq!(death.get("count").and_then(FieldValue::as_i64), Some(1));
        let keys = death.get("routing-keys").and_then(FieldValue::as_array).expect("routing-keys");
        assert_eq!(keys, [FieldValue::from("q")]);
        assert_eq!(d.header("x-first-death-reason").and_then(FieldValue::as_str), Some("maxlen"));
        assert_eq!(d.header("x-first-death-queue").and_then(FieldValue::as_str), Some("q"));
    }
    assert_eq!(take_all(&conn, "q"), ["m4", "m5", "m6"]);
    Ok(())
}

#[test]
fn max_length_bytes_counts_body_bytes() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions { max_length_bytes: Some(10), ..Default::default() })?;
    for b in ["aaaa", "bbbb", "cccc"] {
        conn.publish("", "q", Message::new(b))?;
    }
    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 2, "two 4-byte bodies fit in 10 bytes, three do not");
    assert_eq!(s.dropped.maxlen, 1);

    // A 9-byte body only fits alone: both 4-byte messages make room for it.
    conn.publish("", "q", Message::new("ddddddddd"))?;
    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 1);
    assert_eq!(s.dropped.maxlen, 3);
    assert_eq!(take_all(&conn, "q"), ["ddddddddd"]);
    Ok(())
}

#[test]
fn max_length_bytes_ignores_headers_and_other_properties() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions { max_length_bytes: Some(8), ..Default::default() })?;
    let big_headers = FieldTable::from([("padding", FieldValue::from("x".repeat(1000)))]);
    for b in ["aaaa", "bbbb"] {
        conn.publish("", "q", Message::new(b).with_headers(big_headers.clone()).with_message_id("id"))?;
    }
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.dropped.maxlen), (2, 0));
    assert_eq!(take_all(&conn, "q"), ["aaaa", "bbbb"]);
    Ok(())
}

#[test]
fn under_drop_head_a_body_larger_than_max_length_bytes_is_never_held_and_is_dead_lettered() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_dlx(&conn)?;
    conn.declare_queue("q", with_dlx(QueueOptions { max_length_bytes: Some(10), ..Default::default() }))?;
    // Drop-head never refuses a publish (RabbitMQ confirms it): the message
    // enters the queue and is dropped from it at once.
    let published = conn.publish("", "q", Message::new("big body of 20 bytes"));
    let s = stats(&broker, "q");
    assert_eq!(s.publishes_rejected, 0);
    assert_eq!((s.messages_ready, s.dead_lettered.maxlen), (0, 1));
    let dead = take_all_deliveries(&conn, "dead");
    assert_eq!(dead.iter().map(body).collect::<Vec<_>>(), ["big body of 20 bytes"]);
    assert_eq!(text(&x_death(&dead[0])[0], "reason"), Some("maxlen"));
    assert!(published.is_ok(), "a drop-head queue refused a publish: {published:?}");
    Ok(())
}

#[test]
fn max_length_0_with_drop_head_accepts_every_publish_and_dead_letters_it() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_dlx(&conn)?;
    conn.declare_queue("q", with_dlx(limited(0, Overflow::DropHead)))?;
    let results: Vec<bool> =
        ["a", "b"].into_iter().map(|b| conn.publish("", "q", Message::new(b)).is_ok()).collect();
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.dead_lettered.maxlen, s.publishes_rejected), (0, 2, 0));
    assert_eq!(take_all(&conn, "dead"), ["a", "b"]);
    assert_eq!(results, [true, true], "drop-head refused a publish it also dead-lettered");
    Ok(())
}

// ---------------------------------------------------------------------------
// RejectPublish

#[test]
fn reject_publish_refuses_new_messages_while_full_and_hands_each_one_back_intact() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(3, Overflow::RejectPublish))?;

    let total = 10;
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..total {
        let msg = Message::new(format!("m{i}"))
            .with_header("seq", i)
            .with_header("origin", "test")
            .with_message_id(format!("id-{i}"));
        match conn.publish("", "q", msg.clone()) {
            Ok(routed) => {
                assert_eq!(routed.queues(), 1);
                accepted += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::ResourceError, "{err}");
                assert_eq!(err.kind().reply_code(), 506);
                assert_eq!(err.message(), &msg);
                let PublishError::Rejected { ref queues, routed, .. } = err else {
                    panic!("expected PublishError::Rejected, got {err:?}");
                };
                assert_eq!(queues, &["q".to_owned()]);
                assert_eq!(routed, 0);
                let back = err.into_message();
                assert_eq!(back.body(), msg.body());
                assert_eq!(back.headers(), msg.headers());
                assert_eq!(back.properties().message_id(), Some(format!("id-{i}").as_str()));
                assert_eq!(back, msg, "the very message published comes back");
                rejected += 1;
            }
        }
    }
    assert_eq!(accepted + rejected, total);
    assert_eq!((accepted, rejected), (3, 7));

    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 3);
    assert_eq!(s.publishes_rejected, 7);
    assert_eq!(s.dropped.total(), 0, "RejectPublish drops nothing");
    assert_eq!(s.dead_lettered.total(), 0);
    assert_eq!(take_all(&conn, "q"), ["m0", "m1", "m2"], "the queue keeps the first three");
    Ok(())
}

#[test]
fn reject_publish_accepts_again_once_a_message_leaves() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(2, Overflow::RejectPublish))?;
    conn.publish("", "q", Message::new("a"))?;
    conn.publish("", "q", Message::new("b"))?;
    let (_, _, back, _) = expect_rejected(conn.publish("", "q", Message::new("c")));
    assert_eq!(back.body().as_ref(), b"c");

    let a = conn.get("q", false)?.expect("a ready message");
    assert_eq!(body(&a), "a");
    // "a" is unacknowledged now: only ready messages count toward the limit.
    conn.publish("", "q", Message::new("c"))?;
    let (_, _, back, _) = expect_rejected(conn.publish("", "q", Message::new("d")));
    assert_eq!(back.body().as_ref(), b"d");
    a.ack()?;

    assert_eq!(stats(&broker, "q").publishes_rejected, 2);
    assert_eq!(take_all(&conn, "q"), ["b", "c"]);
    Ok(())
}

#[test]
fn a_rejected_publish_says_how_many_other_queues_took_the_message() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("fan", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("full", limited(1, Overflow::RejectPublish))?;
    conn.declare_queue("open", QueueOptions::default())?;
    conn.bind_queue("full", "fan", "", FieldTable::new())?;
    conn.bind_queue("open", "fan", "", FieldTable::new())?;

    assert_eq!(conn.publish("fan", "", Message::new("first"))?.queues(), 2);
    let (queues, routed, back, kind) = expect_rejected(conn.publish("fan", "", Message::new("second")));
    assert_eq!(queues, ["full"]);
    assert_eq!(routed, 1);
    assert_eq!(kind, ErrorKind::ResourceError);
    assert_eq!(back.body().as_ref(), b"second");

    assert_eq!(take_all(&conn, "full"), ["first"]);
    assert_eq!(take_all(&conn, "open"), ["first", "second"]);
    assert_eq!(stats(&broker, "full").publishes_rejected, 1);
    assert_eq!(stats(&broker, "open").publishes_rejected, 0);
    Ok(())
}

#[test]
fn reject_publish_with_max_length_bytes_refuses_a_body_that_does_not_fit() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue(
        "q",
        QueueOptions { max_length_bytes: Some(10), overflow: Overflow::RejectPublish, ..Default::default() },
    )?;
    conn.publish("", "q", Message::new("aaaa"))?;
    conn.publish("", "q", Message::new("bbbb"))?;
    let (_, _, back, _) = expect_rejected(conn.publish("", "q", Message::new("cccc")));
    assert_eq!(back.body().as_ref(), b"cccc");
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.publishes_rejected, s.dropped.total()), (2, 1, 0));
    assert_eq!(take_all(&conn, "q"), ["aaaa", "bbbb"]);
    Ok(())
}

// ---------------------------------------------------------------------------
// RejectPublishDlx

#[test]
fn reject_publish_dlx_refuses_the_message_and_dead_letters_a_copy_with_reason_maxlen() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_dlx(&conn)?;
    conn.declare_queue("q", with_dlx(limited(2, Overflow::RejectPublishDlx)))?;
    conn.publish("", "q", Message::new("a"))?;
    conn.publish("", "q", Message::new("b"))?;

    let msg = Message::new("c").with_header("k", "v");
    let (queues, routed, back, kind) = expect_rejected(conn.publish("", "q", msg.clone()));
    assert_eq!((queues, routed, kind), (vec!["q".to_owned()], 0, ErrorKind::ResourceError));
    assert_eq!(back, msg, "the publisher gets its own message back, without x-death");
    assert!(back.header("x-death").is_none());

    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 2);
    assert_eq!(s.publishes_rejected, 1);
    assert_eq!(s.dead_lettered.maxlen, 1);
    assert_eq!(s.dropped.total(), 0);

    let dead = take_all_deliveries(&conn, "dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(body(&dead[0]), "c", "the refused message is dead-lettered, not the head");
    assert_eq!(dead[0].exchange(), "dlx");
    assert_eq!(dead[0].header("k").and_then(FieldValue::as_str), Some("v"));
    let deaths = x_death(&dead[0]);
    assert_eq!(deaths.len(), 1);
    assert_eq!(text(&deaths[0], "reason"), Some("maxlen"));
    assert_eq!(text(&deaths[0], "queue"), Some("q"));
    assert_eq!(take_all(&conn, "q"), ["a", "b"], "the queue keeps what it had");
    Ok(())
}

#[test]
fn reject_publish_dlx_without_a_dlx_just_refuses_and_counts_the_drop() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(1, Overflow::RejectPublishDlx))?;
    conn.publish("", "q", Message::new("a"))?;
    let (_, _, back, _) = expect_rejected(conn.publish("", "q", Message::new("b")));
    assert_eq!(back.body().as_ref(), b"b");
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.publishes_rejected), (1, 1));
    assert_eq!(s.dead_lettered.total(), 0);
    assert_eq!(take_all(&conn, "q"), ["a"]);
    Ok(())
}

// ---------------------------------------------------------------------------
// What counts toward the limit

#[test]
fn a_message_delivered_straight_to_a_waiting_consumer_does_not_count_toward_the_limit() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(1, Overflow::DropHead))?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    for i in 1..=5 {
        conn.publish("", "q", Message::new(format!("m{i}")))?;
    }
    let got: Vec<String> = std::iter::from_fn(|| consumer.try_recv().ok())
        .map(|d| {
            let b = body(&d);
            d.ack().unwrap();
            b
        })
        .collect();
    assert_eq!(got, ["m1", "m2", "m3", "m4", "m5"]);
    let s = stats(&broker, "q");
    assert_eq!((s.messages_ready, s.dropped.total()), (0, 0));
    Ok(())
}

#[test]
fn unacknowledged_messages_do_not_count_but_ready_ones_beyond_the_consumers_credit_do() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", limited(1, Overflow::DropHead))?;
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 2, ..Default::default() })?;
    for i in 1..=5 {
        conn.publish("", "q", Message::new(format!("m{i}")))?;
    }
    // m1, m2 fill the consumer's credit; m3, m4 are pushed out by the next.
    let s = stats(&broker, "q");
    assert_eq!((s.messages_unacknowledged, s.messages_ready, s.dropped.maxlen), (2, 1, 2));
    let held: Vec<Delivery> = std::iter::from_fn(|| consumer.try_recv().ok()).collect();
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["m1", "m2"]);
    for d in held {
        d.ack()?;
    }
    let last = consumer.try_recv()?;
    assert_eq!(body(&last), "m5");
    last.ack()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The limit under concurrent publishers

const THREADS: usize = 4;
const PER_THREAD: usize = 2_000;
/// Every this many publishes, a publisher lets the checker take a sample
/// before going on, so that samples are spread over the whole run.
const SAMPLE_EVERY: usize = 50;

struct RunOutcome {
    accepted: usize,
    rejected: usize,
    samples: usize,
    max_seen: usize,
    /// The first sample above the limit: `(sample number, messages_ready)`.
    violation: Option<(usize, usize)>,
}

/// Sets the flag down when dropped, also when the thread holding it panics.
struct Alive<'a>(&'a AtomicBool);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Four threads publish `PER_THREAD` messages each to a queue limited to 3
/// while a checker samples its figures until they are done. Every
/// `SAMPLE_EVERY` publishes a publisher waits (without sleeping) for the
/// checker to take one more sample, so the samples interleave with the
/// publishes however the threads are scheduled.
fn publish_concurrently(broker: &Broker, overflow: Overflow) -> RunOutcome {
    let conn = broker.connect();
    conn.declare_queue("q", limited(3, overflow)).unwrap();
    let done = AtomicBool::new(false);
    let checker_alive = AtomicBool::new(true);
    let samples_taken = AtomicUsize::new(0);
    let start = Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let _alive = Alive(&checker_alive);
            let conn = broker.connect();
            let (mut max_seen, mut violation) = (0, None);
            start.wait();
            loop {
                // Read the flag first so that one last sample follows the publishers' end.
                let finished = done.load(Ordering::Acquire);
                let st = conn.queue_stats("q").unwrap();
                assert_eq!(st.messages_unacknowledged, 0);
                let n = samples_taken.fetch_add(1, Ordering::AcqRel);
                if st.messages_ready > 3 && violation.is_none() {
                    violation = Some((n, st.messages_ready));
                }
                max_seen = max_seen.max(st.messages_ready);
                if finished {
                    return (n + 1, max_seen, violation);
                }
                std::thread::yield_now();
            }
        });
        let publishers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, samples_taken, checker_alive) = (&start, &samples_taken, &checker_alive);
                s.spawn(move || {
                    let conn = broker.connect();
                    let (mut accepted, mut rejected) = (0, 0);
                    start.wait();
                    for i in 0..PER_THREAD {
                        if i % SAMPLE_EVERY == 0 {
                            let seen = samples_taken.load(Ordering::Acquire);
                            while samples_taken.load(Ordering::Acquire) == seen
                                && checker_alive.load(Ordering::Acquire)
                            {
                                std::thread::yield_now();
                            }
                        }
                        let msg = Message::new(format!("{t}-{i}")).with_header("seq", i as i64);
                        match conn.publish("", "q", msg) {
                            Ok(routed) => {
                                assert_eq!(routed.queues(), 1);
                                accepted += 1;
                            }
                            Err(err) => {
                                assert_eq!(err.kind(), ErrorKind::ResourceError, "{err}");
                                assert!(matches!(err, PublishError::Rejected { .. }), "{err:?}");
                                let back = err.into_message();
                                assert_eq!(back.body().as_ref(), format!("{t}-{i}").as_bytes());
                                assert_eq!(back.header("seq").and_then(FieldValue::as_i64), Some(i as i64));
                                rejected += 1;
                            }
                        }
                    }
                    (accepted, rejected)
                })
            })
            .collect();
        let (mut accepted, mut rejected) = (0, 0);
        for p in publishers {
            let (a, r) = p.join().unwrap();
            accepted += a;
            rejected += r;
        }
        done.store(true, Ordering::Release);
        let (samples, max_seen, violation) = checker.join().unwrap();
        RunOutcome { accepted, rejected, samples, max_seen, violation }
    })
}

/// `"t-i"` as `(t, i)`.
fn parse_id(body: &str) -> (usize, usize) {
    let (t, i) = body.split_once('-').expect("a t-i body");
    (t.parse().unwrap(), i.parse().unwrap())
}

#[test]
fn a_drop_head_queue_limited_to_3_never_holds_more_than_3_under_four_publishing_threads() -> Result {
    let broker = Broker::new();
    let total = THREADS * PER_THREAD;
    let out = publish_concurrently(&broker, Overflow::DropHead);
    assert_eq!(out.violation, None, "(sample, messages_ready) above the limit of 3");
    assert!(out.samples > PER_THREAD / SAMPLE_EVERY, "only {} samples", out.samples);
    assert!(out.max_seen <= 3);
    assert_eq!((out.accepted, out.rejected), (total, 0), "DropHead accepts every publish");

    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 3);
    assert_eq!(s.dropped.maxlen, (total - 3) as u64);
    assert_eq!(s.publishes_rejected, 0);

    let conn = broker.connect();
    let left = take_all(&conn, "q");
    assert_eq!(left.len(), 3);
    let ids: Vec<(usize, usize)> = left.iter().map(|b| parse_id(b)).collect();
    // The newest message of all is at the tail, and drop-head never drops the tail:
    // it is some thread's last.
    assert_eq!(ids[2].1, PER_THREAD - 1, "the last survivor is a thread's final publish: {left:?}");
    // Each thread's messages keep their order.
    for t in 0..THREADS {
        let seqs: Vec<usize> = ids.iter().filter(|(tt, _)| *tt == t).map(|(_, i)| *i).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "thread {t} out of order: {left:?}");
    }
    Ok(())
}

#[test]
fn a_reject_publish_queue_limited_to_3_never_holds_more_than_3_under_four_publishing_threads() -> Result {
    let broker = Broker::new();
    let total = THREADS * PER_THREAD;
    let out = publish_concurrently(&broker, Overflow::RejectPublish);
    assert_eq!(out.violation, None, "(sample, messages_ready) above the limit of 3");
    assert!(out.samples > PER_THREAD / SAMPLE_EVERY, "only {} samples", out.samples);
    assert!(out.max_seen <= 3);
    assert_eq!(out.accepted + out.rejected, total, "every publish is accepted or handed back");
    assert_eq!(out.accepted, 3, "nothing leaves the queue, so exactly three are ever accepted");

    let s = stats(&broker, "q");
    assert_eq!(s.messages_ready, 3);
    assert_eq!(s.publishes_rejected, out.rejected as u64);
    assert_eq!(s.dropped.total(), 0);

    let conn = broker.connect();
    let left = take_all(&conn, "q");
    assert_eq!(left.len(), 3);
    let mut seen = std::collections::HashSet::new();
    for b in &left {
        let (t, i) = parse_id(b);
        assert!(t < THREADS && i < PER_THREAD, "{b}");
        assert!(seen.insert(b.clone()), "{b} twice");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Argument forms and declarations

#[test]
fn x_max_length_as_an_argument_limits_the_queue_like_the_field() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue(
        "q",
        QueueOptions { arguments: FieldTable::from([("x-max-length", 2)]), ..Default::default() },
    )?;
    for b in ["a", "b", "c", "d"] {
        conn.publish("", "q", Message::new(b))?;
    }
    assert_eq!(stats(&broker, "q").dropped.maxlen, 2);
    assert_eq!(take_all(&conn, "q"), ["c", "d"]);
    Ok(())
}

#[test]
fn x_overflow_reject_publish_as_an_argument_refuses_when_full() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue(
        "q",
        QueueOptions {
            arguments: FieldTable::from([
                ("x-max-length", FieldValue::from(2)),
                ("x-overflow", FieldValue::from("reject-publish")),
            ]),
            ..Default::default()
        },
    )?;
    conn.publish("", "q", Message::new("a"))?;
    conn.publish("", "q", Message::new("b"))?;
    let (queues, _, back, kind) = expect_rejected(conn.publish("", "q", Message::new("c")));
    assert_eq!((queues, kind), (vec!["q".to_owned()], ErrorKind::ResourceError));
    assert_eq!(back.body().as_ref(), b"c");
    assert_eq!(stats(&broker, "q").publishes_rejected, 1);
    assert_eq!(take_all(&conn, "q"), ["a", "b"]);
    Ok(())
}

#[test]
fn x_max_length_bytes_as_an_argument_counts_body_bytes() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue(
        "q",
        QueueOptions { arguments: FieldTable::from([("x-max-length-bytes", 10)]), ..Default::default() },
    )?;
    for b in ["aaaa", "bbbb", "cccc"] {
        conn.publish("", "q", Message::new(b))?;
    }
    assert_eq!(take_all(&conn, "q"), ["bbbb", "cccc"]);
    Ok(())
}

#[test]
fn redeclaring_with_a_different_max_length_is_a_precondition_failure_naming_x_max_length() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", limited(10, Overflow::DropHead))?;
    let err = conn.declare_queue("q", limited(20, Overflow::DropHead)).unwrap_err();
    let DeclareError::PreconditionFailed(ref text) = err else {
        panic!("expected PreconditionFailed, got {err:?}");
    };
    assert!(text.contains("inequivalent arg 'x-max-length'"), "{text}");
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);

    // Without a limit is just as inequivalent.
    let err = conn.declare_queue("q", QueueOptions::default()).unwrap_err();
    assert!(matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("x-max-length")), "{err:?}");

    // The same limit, as a field or as an argument, is equivalent.
    conn.declare_queue("q", limited(10, Overflow::DropHead))?;
    conn.declare_queue(
        "q",
        QueueOptions { arguments: FieldTable::from([("x-max-length", 10)]), ..Default::default() },
    )?;
    Ok(())
}

#[test]
fn redeclaring_with_a_different_overflow_is_a_precondition_failure_naming_x_overflow() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", limited(10, Overflow::RejectPublish))?;
    let err = conn.declare_queue("q", limited(10, Overflow::DropHead)).unwrap_err();
    assert!(matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("x-overflow")), "{err:?}");
    Ok(())
}

#[test]
fn a_field_and_an_argument_that_disagree_about_max_length_are_refused() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    let err = conn
        .declare_queue(
            "q",
            QueueOptions {
                max_length: Some(10),
                arguments: FieldTable::from([("x-max-length", 20)]),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("x-max-length")), "{err:?}");
    assert!(broker.queue_stats("q").is_err(), "a refused declaration creates nothing");
    Ok(())
}

#[test]
fn invalid_length_arguments_are_refused_with_the_argument_named() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    let cases: [(&str, FieldTable); 4] = [
        ("x-max-length", FieldTable::from([("x-max-length", -1)])),
        ("x-max-length", FieldTable::from([("x-max-length", "ten")])),
        ("x-max-length-bytes", FieldTable::from([("x-max-length-bytes", -5)])),
        ("x-overflow", FieldTable::from([("x-overflow", "drop-tail")])),
    ];
    for (arg, arguments) in cases {
        let err = conn.declare_queue("q", QueueOptions { arguments, ..Default::default() }).unwrap_err();
        let DeclareError::PreconditionFailed(ref text) = err else {
            panic!("{arg}: expected PreconditionFailed, got {err:?}");
        };
        assert!(text.contains(&format!("invalid arg '{arg}'")), "{arg}: {text}");
        assert!(broker.queue_stats("q").is_err());
    }
    Ok(())
}
