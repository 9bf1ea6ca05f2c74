//! Differential conformance against a real RabbitMQ (feature `amqp`):
//! random topologies — direct, fanout, topic and headers exchanges,
//! exchange-to-exchange bindings, alternate exchanges, internal exchanges,
//! topic patterns with empty words, headers bindings with all four
//! `x-match` forms — are built on the local broker, carried over to
//! RabbitMQ through the bridge (`Bridge::declare_definitions`, from
//! `export_definitions`), and the same random messages (keys, headers,
//! `CC` / `BCC`) are published, `mandatory`, to both. Which queues receive
//! each message, and which come back unroutable or refused, must be
//! identical.
//!
//! Needs `INTEROFFICE_RABBITMQ_URL` (`.ci/run` sets it to the local
//! broker); skipped, saying so, without it. `INTEROFFICE_DIFFERENTIAL_CASES`
//! sets the number of topologies (200 by default).

#![cfg(feature = "amqp")]

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

#[path = "support/rabbitmq.rs"]
mod rabbitmq;
use rabbitmq::rabbitmq_url;

use interoffice::bridge::{Bridge, to_amqp_properties};
use interoffice::{
    Broker, Connection, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Message, PublishError,
    PublishOptions, QueueOptions,
};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};

fn cases() -> u64 {
    std::env::var("INTEROFFICE_DIFFERENTIAL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

const KEYS: &[&str] =
    &["a", "b", "a.b", "a.b.c", "b.a", "", "a..b", ".a", "a.", "a.c", "x.y.z", "..", "a.x.b"];
const PATTERNS: &[&str] = &[
    "a", "b", "a.b", "*.b", "a.#", "#", "", "a.*", "#.b", "*", "#.#", "*.*.c", "x.#.z", "a.*.b", "a..b",
    "*.", ".*", "#.", "a.#.b",
];

fn headers_rule(rng: &mut Rng) -> FieldTable {
    let mut rule = FieldTable::new();
    match rng.below(5) {
        0 => drop(rule.insert("x-match", "all")),
        1 => drop(rule.insert("x-match", "any")),
        2 => drop(rule.insert("x-match", "any-with-x")),
        3 => drop(rule.insert("x-match", "all-with-x")),
        _ => {}
    }
    if rng.chance(70) {
        rule.insert("h1", FieldValue::I64(rng.below(2) as i64 + 1));
    }
    if rng.chance(50) {
        rule.insert("h2", "x");
    }
    if rng.chance(20) {
        rule.insert("h3", FieldValue::Void);
    }
    if rng.chance(20) {
        rule.insert("x-tag", "t");
    }
    rule
}

fn message_headers(rng: &mut Rng, names: &[String]) -> Option<FieldTable> {
    if rng.chance(20) {
        return None;
    }
    let mut headers = FieldTable::new();
    if rng.chance(60) {
        headers.insert("h1", FieldValue::I64(rng.below(3) as i64));
    }
    if rng.chance(50) {
        headers.insert("h2", *rng.pick(&["x", "y"]));
    }
    if rng.chance(20) {
        headers.insert("h3", true);
    }
    if rng.chance(20) {
        headers.insert("x-tag", *rng.pick(&["t", "u"]));
    }
    if rng.chance(15) {
        let cc: Vec<FieldValue> = (0..rng.below(3))
            .map(|_| {
                if rng.chance(50) {
                    FieldValue::from(*rng.pick(KEYS))
                } else {
                    FieldValue::from(rng.pick(names).as_str())
                }
            })
            .collect();
        headers.insert(*rng.pick(&["CC", "BCC"]), cc);
    }
    Some(headers)
}

/// What became of one message: the queues it reached, or how it came back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Routed(BTreeSet<String>),
    Returned,
    Refused,
}

struct Scenario {
    seed: u64,
    exchanges: Vec<String>,
    queues: Vec<String>,
    /// (exchange, routing key, message)
    messages: Vec<(String, String, Message)>,
}

/// One random topology on `broker`, and the messages to publish.
fn build(seed: u64, conn: &Connection) -> Scenario {
    let mut rng = Rng::for_case(seed);
    let prefix = format!("io-diff-{seed}");
    let kinds = [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers];
    let exchanges: Vec<String> = (0..1 + rng.below(5)).map(|i| format!("{prefix}.e{i}")).collect();
    let queues: Vec<String> = (0..1 + rng.below(6)).map(|i| format!("{prefix}.q{i}")).collect();
    let mut kind_of = HashMap::new();
    for name in &exchanges {
        let kind = *rng.pick(&kinds);
        kind_of.insert(name.clone(), kind);
        let options = ExchangeOptions {
            alternate_exchange: rng.chance(30).then(|| rng.pick(&exchanges).clone()),
            internal: rng.chance(10),
            ..Default::default()
        };
        conn.declare_exchange(name, kind, options).unwrap();
    }
    for name in &queues {
        conn.declare_queue(name, QueueOptions::default()).unwrap();
    }
    for _ in 0..rng.below(12) {
        let source = rng.pick(&exchanges).clone();
        let arguments = if kind_of[&source] == ExchangeKind::Headers {
            headers_rule(&mut rng)
        } else {
            FieldTable::new()
        };
        let key = *rng.pick(PATTERNS);
        if rng.chance(25) {
            let dest = rng.pick(&exchanges).clone();
            conn.bind_exchange(&dest, &source, key, arguments).unwrap();
        } else {
            let dest = rng.pick(&queues).clone();
            conn.bind_queue(&dest, &source, key, arguments).unwrap();
        }
    }
    let mut starts: Vec<String> = exchanges.clone();
    starts.push(String::new());
    let messages = (0..8)
        .map(|n| {
            let exchange = rng.pick(&starts).clone();
            let key = if exchange.is_empty() && rng.chance(70) {
                rng.pick(&queues).clone()
            } else {
                (*rng.pick(KEYS)).to_owned()
            };
            let mut message = Message::new(format!("m{n}")).with_message_id(format!("{prefix}.m{n}"));
            if let Some(headers) = message_headers(&mut rng, &queues) {
                message = message.with_headers(headers);
            }
            (exchange, key, message)
        })
        .collect();
    Scenario { seed, exchanges, queues, messages }
}

/// Publishes every message locally and drains the queues.
fn run_locally(conn: &Connection, scenario: &Scenario) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    for (exchange, key, message) in &scenario.messages {
        let id = message.properties().message_id().map(str::to_owned).unwrap();
        let outcome =
            match conn.publish_with(exchange, key, message.clone(), PublishOptions { mandatory: true }) {
                Ok(_) => Outcome::Routed(BTreeSet::new()),
                Err(PublishError::Unroutable { .. }) => Outcome::Returned,
                Err(_) => Outcome::Refused,
            };
        outcomes.insert(id, outcome);
    }
    for queue in &scenario.queues {
        while let Some(delivery) = conn.get(queue, true).unwrap() {
            let id = delivery.message().properties().message_id().map(str::to_owned).unwrap();
            if let Some(Outcome::Routed(reached)) = outcomes.get_mut(&id) {
                reached.insert(queue.clone());
            }
        }
    }
    outcomes
}

/// A fresh channel with publisher confirms. After RabbitMQ refused a
/// publish (closing its channel), lapin may report that error on the
/// connection's next request: then the connection is opened afresh.
async fn confirm_channel(connection: &mut lapin::Connection, url: &str) -> lapin::Channel {
    let mut last = String::new();
    for _ in 0..3 {
        match connection.create_channel().await {
            Ok(channel) => match channel.confirm_select(ConfirmSelectOptions::default()).await {
                Ok(()) => return channel,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        *connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("lapin reconnects to RabbitMQ");
    }
    panic!("no channel on RabbitMQ after three tries: {last}");
}

/// The same on RabbitMQ, through lapin.
async fn run_on_rabbitmq(
    connection: &mut lapin::Connection,
    url: &str,
    scenario: &Scenario,
) -> BTreeMap<String, Outcome> {
    let mut channel = confirm_channel(connection, url).await;
    let mut outcomes = BTreeMap::new();
    for (exchange, key, message) in &scenario.messages {
        let id = message.properties().message_id().map(str::to_owned).unwrap();
        let properties = to_amqp_properties(message.properties()).unwrap();
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let published = channel
            .basic_publish(exchange.as_str().into(), key.as_str().into(), options, message.body(), properties)
            .await;
        let outcome = match published {
            Err(_) => Outcome::Refused,
            Ok(confirm) => match confirm.await {
                Ok(confirmation) if confirmation.is_ack() => match confirmation.take_message() {
                    Some(_) => Outcome::Returned,
                    None => Outcome::Routed(BTreeSet::new()),
                },
                _ => Outcome::Refused,
            },
        };
        if outcome == Outcome::Refused {
            // RabbitMQ closes the channel on a refused publish (an internal exchange).
            let _already_closed = channel.close(200, "refused".into()).await;
            channel = confirm_channel(connection, url).await;
        }
        outcomes.insert(id, outcome);
    }
    for queue in &scenario.queues {
        while let Some(got) =
            channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
        {
            let id = got.delivery.properties.message_id().as_ref().unwrap().as_str().to_owned();
            if let Some(Outcome::Routed(reached)) = outcomes.get_mut(&id) {
                reached.insert(queue.clone());
            }
        }
    }
    for queue in &scenario.queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
    for exchange in &scenario.exchanges {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
    }
    // Closed, or thousands of scenarios would run out of channels.
    let _closed = channel.close(200, "scenario done".into()).await;
    outcomes
}

#[test]
fn routing_matches_rabbitmq_on_random_topologies() {
    let Some(url) = rabbitmq_url() else { return };
    let bridge = Bridge::connect(url.clone()).expect("the bridge connects to RabbitMQ");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut connection = runtime
        .block_on(lapin::Connection::connect(&url, lapin::ConnectionProperties::default()))
        .expect("lapin connects to RabbitMQ");
    let (mut messages, mut routed, mut returned, mut refused) = (0, 0, 0, 0);
    for seed in 0..cases() {
        let broker = Broker::new();
        let conn = broker.connect();
        let scenario = build(seed, &conn);
        let carried = bridge.declare_definitions(&broker.export_definitions(), "/").expect("carry-over");
        assert!(
            carried.refused.is_empty(),
            "seed {seed}: RabbitMQ refused the topology: {:#?}",
            carried.refused
        );
        let local = run_locally(&conn, &scenario);
        let remote = runtime.block_on(run_on_rabbitmq(&mut connection, &url, &scenario));
        for (exchange, key, message) in &scenario.messages {
            let id = message.properties().message_id().map(str::to_owned).unwrap();
            assert_eq!(
                local[&id],
                remote[&id],
                "seed {}: message to '{exchange}' with key '{key}' headers {:?}\nbindings: {:#?}",
                scenario.seed,
                message.headers(),
                broker.bindings()
            );
            messages += 1;
            match &local[&id] {
                Outcome::Routed(_) => routed += 1,
                Outcome::Returned => returned += 1,
                Outcome::Refused => refused += 1,
            }
        }
    }
    eprintln!(
        "{} topologies, {messages} messages: {routed} routed, {returned} returned unroutable, {refused} refused — identical on both",
        cases()
    );
    assert!(routed > 0 && returned > 0, "the scenarios exercise both outcomes");
}
