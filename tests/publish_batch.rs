//! Publishing in batches (`Connection::publish_batch`): a batch does what
//! the same publishes one by one would do — the same outcome per message,
//! the same queue contents in the same order — over every kind of routing
//! (topic, an exchange-to-exchange binding into a headers exchange, an
//! alternate exchange, `CC`, the default exchange), limits, deduplication
//! and refusals. A proptest compares the two on twin brokers.

use interoffice::{
    Broker, BrokerOptions, DeduplicationWindow, DeliveryMode, FieldValue, Message, Overflow,
    PublishBatchError, PublishError, PublishOptions, QueueOptions,
};
use proptest::prelude::*;

#[path = "support/data_dir.rs"]
mod data_dir;
#[path = "support/twin_topology.rs"]
mod twin_topology;
use data_dir::DataDir;

const QUEUES: [&str; 6] = ["q_a", "q_b", "q_all", "q_red", "q_alt", "q_dedup"];
const MAX_SIZE: usize = 64;

fn broker() -> Broker {
    Broker::with_options(BrokerOptions { max_message_size: MAX_SIZE, ..Default::default() })
}

/// Topic `t` (alternate exchange `alt`) → queues, and → headers exchange `h`
/// for keys `h.*`; a small reject-publish queue; one with a delivery limit;
/// a deduplicating one (alone reached by `a.c.d`: a batch hands a queue
/// reached alone its envelope, which each of these gives back).
fn topology(broker: &Broker) {
    let conn = broker.connect();
    for q in QUEUES {
        let options = match q {
            "q_b" => {
                QueueOptions { max_length: Some(3), overflow: Overflow::RejectPublish, ..Default::default() }
            }
            // A queue that keeps a copy of each message (its delivery count).
            "q_all" => QueueOptions { delivery_limit: Some(5), ..Default::default() },
            "q_dedup" => QueueOptions {
                deduplication_window: Some(DeduplicationWindow { max_ids: Some(100), duration: None }),
                ..Default::default()
            },
            _ => QueueOptions::default(),
        };
        conn.declare_queue(q, options).unwrap();
    }
    twin_topology::topic_alternate_and_headers(&conn);
    conn.bind_queue("q_a", "t", "a.*", None).unwrap();
    conn.bind_queue("q_b", "t", "*.b", None).unwrap();
    conn.bind_queue("q_all", "t", "x.#", None).unwrap();
    conn.bind_queue("q_dedup", "t", "a.#", None).unwrap();
    conn.bind_exchange("h", "t", "h.*", None).unwrap();
}

/// One message of a generated batch.
#[derive(Debug, Clone)]
struct Spec {
    key: &'static str,
    id: Option<u8>,
    color: Option<&'static str>,
    cc: bool,
    oversized: bool,
    bad_expiration: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec![
            "a.b", "a.c", "a.c.d", "x.y", "h.z", "z.b", "none", "q_a", "q_b", "nowhere",
        ]),
        prop::option::weighted(0.3, 0u8..4),
        prop::option::weighted(0.4, prop::sample::select(vec!["red", "blue"])),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(key, id, color, cc, oversized, bad_expiration)| Spec {
            key,
            id,
            color,
            cc,
            oversized,
            bad_expiration,
        })
}

fn message(i: usize, spec: &Spec) -> Message {
    let body = if spec.oversized { "x".repeat(MAX_SIZE + 1) } else { format!("m{i}") };
    let mut m = Message::new(body);
    if let Some(id) = spec.id {
        m = m.with_message_id(format!("id{id}"));
    }
    if let Some(color) = spec.color {
        m = m.with_header("color", color);
    }
    if spec.cc {
        m = m.with_header("CC", FieldValue::Array(vec![FieldValue::from("x.cc")]));
    }
    if spec.bad_expiration {
        m.properties_mut().set_expiration("soon");
    }
    m
}

/// What a publish did, comparable across the two ways.
#[derive(Debug, PartialEq)]
enum Outcome {
    Routed { queues: usize, duplicates: usize },
    Failed { error: String, body: Vec<u8> },
}

fn failed(error: PublishError) -> Outcome {
    let text = error.to_string();
    Outcome::Failed { error: text, body: error.into_message().body().to_vec() }
}

fn contents(broker: &Broker) -> Vec<(&'static str, Vec<String>)> {
    let conn = broker.connect();
    QUEUES
        .iter()
        .map(|q| {
            let mut bodies = Vec::new();
            while let Some(d) = conn.get(q, true).unwrap() {
                bodies.push(String::from_utf8(d.body().to_vec()).unwrap());
            }
            (*q, bodies)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_batch_does_what_the_same_publishes_one_by_one_do(
        specs in prop::collection::vec(spec(), 0..40),
        default_exchange in prop::bool::weighted(0.2),
        mandatory in any::<bool>(),
    ) {
        let exchange = if default_exchange { "" } else { "t" };
        let options = PublishOptions { mandatory };
        let (one_by_one, batched) = (broker(), broker());
        topology(&one_by_one);
        topology(&batched);

        let conn = one_by_one.connect();
        let expected: Vec<Outcome> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| match conn.publish_with(exchange, s.key, message(i, s), options) {
                Ok(r) => Outcome::Routed { queues: r.queues(), duplicates: r.duplicates() },
                Err(e) => failed(e),
            })
            .collect();

        let conn = batched.connect();
        let items: Vec<_> = specs.iter().enumerate().map(|(i, s)| (s.key, message(i, s))).collect();
        let (routed, mut failures) = match conn.publish_batch(exchange, items, options) {
            Ok(routed) => (routed, Vec::new()),
            Err(PublishBatchError { failed, routed }) => (routed, failed),
        };
        prop_assert!(failures.windows(2).all(|w| w[0].0 < w[1].0), "failures in batch order");
        let mut failures = failures.drain(..).peekable();
        let (mut messages, mut queues, mut duplicates, mut unroutable) = (0, 0, 0, 0);
        for (i, want) in expected.iter().enumerate() {
            match failures.next_if(|(index, _)| *index == i) {
                Some((_, error)) => prop_assert_eq!(&failed(error), want, "message {}", i),
                None => {
                    let Outcome::Routed { queues: q, duplicates: d } = want else {
                        return Err(TestCaseError::fail(format!("message {i}: published in the batch, {want:?} alone")));
                    };
                    messages += 1;
                    queues += q;
                    duplicates += d;
                    unroutable += usize::from(*q == 0 && *d == 0);
                }
            }
        }
        prop_assert_eq!(
            (routed.messages(), routed.queues(), routed.duplicates(), routed.unroutable()),
            (messages, queues, duplicates, unroutable)
        );
        prop_assert_eq!(contents(&batched), contents(&one_by_one));
        // Counted on the exchange as the publishes one by one were (a batch
        // counts its messages in one step).
        prop_assert_eq!(batched.overview().exchanges, one_by_one.overview().exchanges);
    }
}

#[test]
fn a_batch_to_one_queue_arrives_whole_and_in_order() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer =
        conn.consume("q", interoffice::ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
    let routed = conn
        .publish_batch("", (0..1000).map(|i| ("q", Message::new(format!("{i}")))), PublishOptions::default())
        .unwrap();
    assert_eq!((routed.messages(), routed.queues(), routed.unroutable()), (1000, 1000, 0));
    for i in 0..1000 {
        assert_eq!(consumer.recv().unwrap().body().as_ref(), format!("{i}").as_bytes());
    }
    let empty: Vec<(&str, Message)> = Vec::new();
    assert_eq!(conn.publish_batch("", empty, PublishOptions::default()).unwrap().messages(), 0);
}

/// An iterator whose size hint claims more than it holds (here: as many as
/// `usize` can count). The batch must not believe it up front: reserving
/// for the claim would be a capacity-overflow panic.
struct Boastful<I>(I);

impl<I: Iterator> Iterator for Boastful<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[test]
fn a_batch_whose_iterator_overstates_its_length_is_published_in_full() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let batch = Boastful((0..10).map(|i| ("q", Message::new(format!("{i}")))));
    let routed = conn.publish_batch("", batch, PublishOptions::default()).unwrap();
    assert_eq!((routed.messages(), routed.queues()), (10, 10));
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 10);
    let publisher = conn.publisher("").unwrap();
    let batch = Boastful((0..5).map(|i| ("q", Message::new(format!("{i}")))));
    assert_eq!(publisher.publish_batch(batch, PublishOptions::default()).unwrap().messages(), 5);
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 15);
}

#[test]
fn a_closed_connection_hands_every_message_back() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let publisher = conn.publisher("").unwrap();
    conn.close();
    let batch = (0..3).map(|i| ("q", Message::new(format!("{i}"))));
    let error = conn.publish_batch("", batch.clone(), PublishOptions::default()).unwrap_err();
    assert_eq!(error.failed.len(), 3);
    assert!(error.failed.iter().all(|(_, e)| matches!(e, PublishError::ConnectionClosed { .. })));
    assert_eq!(
        error.to_string(),
        "3 messages of the batch were not published (0 were); the first, at index 0: the connection is closed"
    );
    let bodies: Vec<_> = error.into_messages().iter().map(|m| m.body().to_vec()).collect();
    assert_eq!(bodies, [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(publisher.publish_batch(batch, PublishOptions::default()).unwrap_err().failed.len(), 3);
}

#[test]
fn a_missing_exchange_fails_each_message_with_its_own_error() {
    let conn = Broker::new().connect();
    let error =
        conn.publish_batch("nope", [("k", Message::new("a"))], PublishOptions::default()).unwrap_err();
    assert!(matches!(&error.failed[..], [(0, PublishError::ExchangeNotFound { .. })]));
}

#[test]
fn observers_see_each_message_of_a_batch() {
    let broker = Broker::new();
    let recorder = broker.record();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let publisher = conn.publisher("").unwrap();
    publisher
        .publish_batch((0..5).map(|i| ("q", Message::new(format!("{i}")))), PublishOptions::default())
        .unwrap();
    let published =
        recorder.events().iter().filter(|e| matches!(e, interoffice::Event::Published { .. })).count();
    assert_eq!(published, 5);
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 5);
}

#[test]
fn a_durable_batch_is_there_after_a_restart() {
    let dir = DataDir::new("publish-batch");
    {
        let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let conn = broker.connect();
        conn.declare_queue("jobs", QueueOptions { durable: true, ..Default::default() }).unwrap();
        let batch = (0..200)
            .map(|i| ("jobs", Message::new(format!("job {i}")).with_delivery_mode(DeliveryMode::Persistent)));
        assert_eq!(conn.publish_batch("", batch, PublishOptions::default()).unwrap().queues(), 200);
    }
    let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    let conn = broker.connect();
    for i in 0..200 {
        let d = conn.get("jobs", true).unwrap().unwrap();
        assert_eq!(d.body().as_ref(), format!("job {i}").as_bytes());
    }
    assert!(conn.get("jobs", true).unwrap().is_none());
}
