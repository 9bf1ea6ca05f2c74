//! The recorder: it captures publishes (with where they went), deliveries,
//! settles, dead letters, expiries, returns and replies in order; each
//! assertion passes on what happened and, on what did not, fails with a
//! message listing what was seen, closest first. A tap sees the same events.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, DeathReason, Event, ExchangeKind, FieldTable, ManualClock,
    Message, PublishOptions, PublishOutcome, QueueOptions, Recorder, WorkerOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const PATIENCE: Duration = Duration::from_secs(30);

/// The panic message of `f`, which must panic.
fn failure(f: impl FnOnce()) -> String {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or("");
            if !text.starts_with("expected") {
                default(info);
            }
        }));
    });
    let panic = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion should have failed");
    panic.downcast_ref::<String>().cloned().unwrap_or_default()
}

/// One of the recorder's assertions, to try on a record.
type Assertion = Box<dyn Fn(&Recorder)>;

/// A shop: `orders` (topic) routes `order.*.created` to `billing`, which
/// dead-letters to `parked` through `dlx`; `audit` has a 1 s TTL and no
/// dead-letter exchange.
fn shop()
-> std::result::Result<(Broker, interoffice::Connection, Recorder, ManualClock), Box<dyn std::error::Error>> {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())?;
    conn.declare_queue(
        "billing",
        QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() },
    )?;
    conn.declare_queue("parked", QueueOptions::default())?;
    conn.declare_queue(
        "audit",
        QueueOptions { message_ttl: Some(Duration::from_secs(1)), ..Default::default() },
    )?;
    conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
    conn.bind_queue("audit", "orders", "#", FieldTable::new())?;
    conn.bind_queue("parked", "dlx", "", FieldTable::new())?;
    let recorder = broker.record();
    Ok((broker, conn, recorder, clock))
}

#[test]
fn the_recorder_captures_the_life_of_messages_in_order() -> Result {
    let (_broker, conn, recorder, clock) = shop()?;
    conn.publish("orders", "order.eu.created", Message::new("order 1"))?;
    let billing = conn
        .consume("billing", ConsumeOptions { consumer_tag: Some("biller".into()), ..Default::default() })?;
    billing.recv()?.ack()?;
    conn.publish("orders", "order.us.created", Message::new("order 2"))?;
    billing.recv()?.reject(false)?;
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        recorder.trace(),
        [
            "published to 'orders' with key 'order.eu.created' \"order 1\" → billing, audit",
            "delivered from 'billing' to biller #1 \"order 1\"",
            "acked in 'billing' by biller #1 \"order 1\"",
            "published to 'orders' with key 'order.us.created' \"order 2\" → billing, audit",
            "delivered from 'billing' to biller #2 \"order 2\"",
            "rejected in 'billing' by biller #2 \"order 2\"",
            "dead-lettered from 'billing' (rejected) to 'dlx' \"order 2\"",
            "dropped from 'audit' (expired) \"order 1\"",
            "dropped from 'audit' (expired) \"order 2\"",
        ]
    );
    recorder.assert_published("orders", "order.*.created");
    recorder.assert_routed_to("audit");
    recorder.assert_delivered("billing");
    recorder.assert_acked("billing");
    recorder.assert_rejected("billing");
    assert_eq!(recorder.assert_dead_lettered("billing", DeathReason::Rejected).body().as_ref(), b"order 2");
    recorder.assert_expired("audit");
    recorder.assert_dropped("audit", DeathReason::Expired);
    recorder.assert_published_times("orders", "order.#", 2);
    assert_eq!(recorder.count_published("orders", "#"), 2);
    recorder.assert_none_published("orders", "order.*.cancelled");
    Ok(())
}

#[test]
fn assert_published_lists_the_closest_publishes_first() -> Result {
    let (_broker, conn, recorder, _) = shop()?;
    conn.publish("orders", "invoice.sent", Message::new("a"))?;
    conn.publish("orders", "order.eu.cancelled", Message::new("b"))?;
    conn.publish("amq.topic", "order.eu.created", Message::new("c"))?;
    let text = failure(|| {
        recorder.assert_published("orders", "order.*.created");
    });
    assert!(text.starts_with("expected a publish to 'orders' with a key matching 'order.*.created'; saw 3 event(s), closest first:"), "{text}");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert!(lines[0].contains("'orders' with key 'order.eu.cancelled'"), "{text}");
    assert!(lines[1].contains("'orders' with key 'invoice.sent'"), "{text}");
    assert!(lines[2].contains("'amq.topic' with key 'order.eu.created'"), "{text}");
    Ok(())
}

#[test]
fn assert_published_times_and_none_published_say_what_they_found() -> Result {
    let (_broker, conn, recorder, _) = shop()?;
    conn.publish("orders", "order.eu.created", Message::new("one"))?;
    let text = failure(|| {
        recorder.assert_published_times("orders", "order.#", 2);
    });
    assert!(
        text.contains("expected 2 publish(es) to 'orders' with a key matching 'order.#', found 1"),
        "{text}"
    );
    assert!(text.contains("\"one\""), "{text}");
    let text = failure(|| recorder.assert_none_published("orders", "order.*.created"));
    assert!(
        text.contains("expected no publish to 'orders' with a key matching 'order.*.created', but saw 1:"),
        "{text}"
    );
    assert!(text.contains("order.eu.created"), "{text}");
    Ok(())
}

#[test]
fn queue_assertions_list_what_happened_in_the_queue_and_its_neighbours() -> Result {
    let (_broker, conn, recorder, _) = shop()?;
    conn.publish("orders", "order.eu.created", Message::new("order 1"))?;
    conn.get("billing", false)?.expect("a message").ack()?;
    let text = failure(|| {
        recorder.assert_rejected("billing");
    });
    assert!(text.starts_with("expected a reject without requeue in queue 'billing'"), "{text}");
    assert!(text.contains("acked in 'billing' by get #1 \"order 1\""), "{text}");

    let cases: Vec<(&str, Assertion)> = vec![
        ("expected an ack in queue 'bi11ing'", Box::new(|r: &Recorder| drop(r.assert_acked("bi11ing")))),
        (
            "expected a nack with requeue in queue 'billing'",
            Box::new(|r: &Recorder| drop(r.assert_nacked("billing"))),
        ),
        (
            "expected a delivery in queue 'parked'",
            Box::new(|r: &Recorder| drop(r.assert_delivered("parked"))),
        ),
        (
            "expected a dead letter (maxlen) in queue 'billing'",
            Box::new(|r: &Recorder| drop(r.assert_dead_lettered("billing", DeathReason::MaxLen))),
        ),
        (
            "expected a message dropped (rejected) in queue 'billing'",
            Box::new(|r: &Recorder| drop(r.assert_dropped("billing", DeathReason::Rejected))),
        ),
        ("expected an expiry in queue 'audit'", Box::new(|r: &Recorder| drop(r.assert_expired("audit")))),
        ("expected a reply in queue 'billing'", Box::new(|r: &Recorder| drop(r.assert_replied("billing")))),
        (
            "expected a publish routed to queue 'parked'",
            Box::new(|r: &Recorder| drop(r.assert_routed_to("parked"))),
        ),
        (
            "expected an unroutable publish to 'orders'",
            Box::new(|r: &Recorder| drop(r.assert_unroutable("orders", "order.#"))),
        ),
        (
            "expected a returned publish to 'orders'",
            Box::new(|r: &Recorder| drop(r.assert_returned("orders", "#"))),
        ),
    ];
    for (expected, assertion) in cases {
        let text = failure(|| assertion(&recorder));
        assert!(text.starts_with(expected), "{expected}: {text}");
        // Every failure lists what was seen.
        assert!(text.contains("saw 3 event(s), closest first:"), "{text}");
        assert!(text.contains("published to 'orders' with key 'order.eu.created' \"order 1\""), "{text}");
    }
    // The ack in 'billing' is closest to an ack in 'bi11ing'.
    let text = failure(|| drop(recorder.assert_acked("bi11ing")));
    assert!(text.lines().nth(1).unwrap().contains("acked in 'billing'"), "{text}");
    Ok(())
}

#[test]
fn an_empty_record_says_so() {
    let broker = Broker::new();
    let recorder = broker.record();
    let text = failure(|| drop(recorder.assert_published("orders", "#")));
    assert_eq!(text, "expected a publish to 'orders' with a key matching '#'; nothing was recorded");
}

#[test]
fn returns_unroutables_and_refusals_are_recorded() -> Result {
    let (_broker, conn, recorder, _) = shop()?;
    conn.publish("amq.direct", "nobody", Message::new("lost"))?;
    let _ =
        conn.publish_with("amq.direct", "nobody", Message::new("back"), PublishOptions { mandatory: true });
    let _ = conn.publish("no-such-exchange", "k", Message::new("refused"));
    assert_eq!(recorder.assert_unroutable("amq.direct", "nobody").body().as_ref(), b"lost");
    assert_eq!(recorder.assert_returned("amq.direct", "nobody").body().as_ref(), b"back");
    let events = recorder.events();
    assert!(
        matches!(&events[2], Event::Published { outcome: PublishOutcome::Refused(why), .. } if why.contains("no exchange 'no-such-exchange'"))
    );
    assert_eq!(recorder.count_published("no-such-exchange", "#"), 0, "a refused publish is not a publish");
    Ok(())
}

#[test]
fn replies_are_recorded_and_bodies_decode() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("prices", QueueOptions::default())?;
    let recorder = broker.record();
    let _server = conn.serve("prices", WorkerOptions::default(), |request| {
        let item: String = request.decode().map_err(|e| e.to_string())?;
        Message::encode(&(item.len() as u32 * 100)).map_err(|e| e.to_string())
    })?;
    let reply = conn.call("", "prices", Message::encode(&"widget".to_owned())?, PATIENCE)?;
    assert_eq!(reply.decode::<u32>()?, 600);
    drop(reply);
    broker.settle(PATIENCE)?;
    assert_eq!(recorder.assert_replied("prices").decode::<u32>()?, 600);
    assert_eq!(recorder.decode_published::<String>("", "prices")?, ["widget"]);
    Ok(())
}

#[test]
fn a_tap_sees_every_event_and_a_recorder_stops_when_dropped() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let tap = broker.tap(move |event| sink.lock().unwrap().push(event.kind().to_owned()));
    let recorder = broker.record();
    conn.publish("", "q", Message::new("m"))?;
    conn.get("q", false)?.unwrap().nack(true)?;
    drop(recorder);
    conn.get("q", true)?;
    drop(tap);
    conn.publish("", "q", Message::new("unseen"))?;
    assert_eq!(*seen.lock().unwrap(), ["published", "delivered", "settled", "delivered"]);
    Ok(())
}
