//! `explain_route` agrees with real routing: on random topologies (direct,
//! fanout, topic and headers exchanges, exchange-to-exchange bindings,
//! alternate exchanges, internal exchanges) and random messages (keys,
//! headers, `CC` / `BCC`), the queues it says a message would reach are
//! those a publish reaches. `INTEROFFICE_EXPLAIN_CASES` topologies (1,000 by
//! default), each with several messages.

use std::collections::BTreeSet;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

use interoffice::{
    Broker, Event, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Message, QueueOptions,
};

const KEYS: &[&str] = &["a", "b", "a.b", "a.b.c", "b.a", "", "q0", "q1", "a.c", "x.y.z"];
const PATTERNS: &[&str] =
    &["a", "b", "a.b", "*.b", "a.#", "#", "", "a.*", "#.b", "*", "#.#", "*.*.c", "q0", "x.#.z"];

fn headers_rule(rng: &mut Rng) -> FieldTable {
    let mut rule = FieldTable::new();
    match rng.below(4) {
        0 => drop(rule.insert("x-match", "all")),
        1 => drop(rule.insert("x-match", "any")),
        2 => drop(rule.insert("x-match", "any-with-x")),
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
    rule
}

fn message_headers(rng: &mut Rng) -> Option<FieldTable> {
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
    if rng.chance(15) {
        let cc: Vec<FieldValue> = (0..rng.below(3)).map(|_| FieldValue::from(*rng.pick(KEYS))).collect();
        headers.insert(*rng.pick(&["CC", "BCC"]), cc);
    }
    Some(headers)
}

/// One random topology, then messages: explained, published, compared.
fn check_topology(seed: u64) {
    let mut rng = Rng::for_case(seed);
    let broker = Broker::new();
    let conn = broker.connect();
    let kinds = [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers];
    let exchanges: Vec<String> = (0..1 + rng.below(5)).map(|i| format!("e{i}")).collect();
    let queues: Vec<String> = (0..1 + rng.below(6)).map(|i| format!("q{i}")).collect();
    let mut kind_of = std::collections::HashMap::new();
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
    let recorder = broker.record();
    let mut starts: Vec<String> = exchanges.clone();
    starts.extend(["".to_owned(), "amq.topic".to_owned(), "missing".to_owned()]);
    for _ in 0..8 {
        let exchange = rng.pick(&starts).clone();
        let key = *rng.pick(KEYS);
        let headers = message_headers(&mut rng);
        let explained = broker.explain_route(&exchange, key, headers.as_ref());
        recorder.clear();
        let message = match &headers {
            Some(h) => Message::new("m").with_headers(h.clone()),
            None => Message::new("m"),
        };
        let published = conn.publish(&exchange, key, message);
        let context = || {
            format!(
                "seed {seed}: '{exchange}' key '{key}' headers {headers:?}\nexplained: {explained}\nbindings: {:#?}",
                broker.bindings()
            )
        };
        match published {
            Err(error) => {
                assert!(
                    explained.refused.is_some(),
                    "publish refused ({error}) but explained as routable: {}",
                    context()
                );
            }
            Ok(routed) => {
                assert!(
                    explained.refused.is_none(),
                    "publish accepted but explained as refused: {}",
                    context()
                );
                let events = recorder.events();
                let Some(Event::Published { queues: reached, .. }) = events.first() else {
                    panic!("no publish recorded: {}", context())
                };
                let reached: BTreeSet<&str> = reached.iter().map(String::as_str).collect();
                let said: BTreeSet<&str> = explained.queues().into_iter().collect();
                assert_eq!(said, reached, "{}", context());
                assert_eq!(routed.queues(), reached.len(), "{}", context());
                assert!(explained.near_misses.is_empty() || said.is_empty(), "{}", context());
            }
        }
        // Drain, so the next message's figures start from empty queues.
        for queue in &queues {
            conn.purge_queue(queue).unwrap();
        }
    }
}

fn cases() -> u64 {
    std::env::var("INTEROFFICE_EXPLAIN_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[test]
fn explain_route_agrees_with_routing_on_random_topologies() {
    for seed in 0..cases() {
        check_topology(seed);
    }
}

#[test]
fn an_unroutable_message_gets_its_nearest_misses_with_reasons() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_exchange("by-region", ExchangeKind::Headers, Default::default()).unwrap();
    conn.declare_queue("billing", QueueOptions::default()).unwrap();
    conn.declare_queue("eu", QueueOptions::default()).unwrap();
    conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new()).unwrap();
    conn.bind_queue("billing", "orders", "invoice.#", FieldTable::new()).unwrap();
    let rule = FieldTable::new().with("x-match", "all").with("region", "eu").with("vip", true);
    conn.bind_queue("eu", "by-region", "", rule).unwrap();

    let lost = broker.explain_route("orders", "order.eu.shipped", None);
    assert!(!lost.is_routable());
    assert_eq!(lost.near_misses[0].binding_key, "order.*.created");
    assert_eq!(
        lost.near_misses[0].why,
        "topic: word 3 of key 'order.eu.shipped' is 'shipped', pattern 'order.*.created' wants 'created'"
    );
    assert!(lost.to_string().starts_with("'orders' with key 'order.eu.shipped': unroutable\n  - 'orders' → 'billing' [order.*.created]: topic: word 3"), "{lost}");

    let headers = FieldTable::new().with("region", "us");
    let lost = broker.explain_route("by-region", "", Some(&headers));
    assert_eq!(
        lost.near_misses[0].why,
        "headers (x-match all): missing 'vip'; 'region' is \"us\", wants \"eu\""
    );

    let refused = broker.explain_route("nowhere", "k", None);
    assert_eq!(refused.refused.as_deref(), Some("no exchange 'nowhere' in vhost '/'"));
}

#[test]
fn the_path_shows_exchange_hops_and_alternate_exchanges() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("unrouted", ExchangeKind::Fanout, Default::default()).unwrap();
    let with_ae = ExchangeOptions { alternate_exchange: Some("unrouted".into()), ..Default::default() };
    conn.declare_exchange("front", ExchangeKind::Direct, with_ae).unwrap();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_queue("billing", QueueOptions::default()).unwrap();
    conn.declare_queue("lost", QueueOptions::default()).unwrap();
    conn.bind_exchange("orders", "front", "orders", FieldTable::new()).unwrap();
    conn.bind_queue("billing", "orders", "#", FieldTable::new()).unwrap();
    conn.bind_queue("lost", "unrouted", "", FieldTable::new()).unwrap();

    let found = broker.explain_route("front", "orders", None);
    assert_eq!(
        found.to_string(),
        "'front' with key 'orders'\n  → billing: 'front' [orders] → 'orders' [#] → 'billing'"
    );
    let found = broker.explain_route("front", "other", None);
    assert_eq!(
        found.to_string(),
        "'front' with key 'other'\n  → lost: 'front' [alternate exchange] → 'unrouted' [fanout] → 'lost'"
    );
    let with_cc = FieldTable::new().with("CC", vec![FieldValue::from("orders")]);
    // As RabbitMQ routes: all keys at once at each exchange. `orders`
    // matched at 'front', so its alternate exchange is not used for `other`.
    let found = broker.explain_route("front", "other", Some(&with_cc));
    assert_eq!(found.queues(), ["billing"]);
    assert_eq!(
        broker.connect().publish("front", "other", Message::new("m").with_headers(with_cc)).unwrap().queues(),
        1
    );
}

#[test]
fn a_cc_header_publishing_refuses_is_explained_as_refused() {
    let broker = Broker::new();
    broker.connect().declare_queue("q", QueueOptions::default()).unwrap();
    let bad = FieldTable::new().with("CC", "q");
    let explained = broker.explain_route("", "q", Some(&bad));
    assert!(
        explained.refused.as_deref().is_some_and(|r| r.contains("unacceptable_type_in_header")),
        "{explained}"
    );
    let refused = broker.connect().publish("", "q", Message::new("m").with_headers(bad));
    assert!(refused.is_err());
}
