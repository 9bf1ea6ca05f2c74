//! Routing behaviour through the public API: direct, default, fanout, topic and
//! headers exchanges, exchange-to-exchange bindings, alternate exchanges,
//! mandatory returns, publish refusals, unbinding and auto-delete, measured
//! against real RabbitMQ semantics (`RABBITMQ-SEMANTICS.md`).
//!
//! Every test builds its own broker, publishes, and reads what arrived with
//! `Connection::get` (auto-ack) or `Broker::queue_stats`.

use std::error::Error;

use bytes::Bytes;
use interoffice::{
    BindError, Broker, BrokerOptions, Connection, Delivery, ErrorKind, ExchangeKind, ExchangeOptions,
    FieldTable, FieldValue, Message, PublishError, PublishOptions, QueueOptions,
};

type TestResult = Result<(), Box<dyn Error>>;

fn mandatory() -> PublishOptions {
    PublishOptions { mandatory: true }
}

fn no_args() -> FieldTable {
    FieldTable::new()
}

fn declare_queues(conn: &Connection, names: &[&str]) -> Result<(), Box<dyn Error>> {
    for name in names {
        conn.declare_queue(name, QueueOptions::default())?;
    }
    Ok(())
}

fn declare(conn: &Connection, name: &str, kind: ExchangeKind) -> Result<(), Box<dyn Error>> {
    conn.declare_exchange(name, kind, ExchangeOptions::default())?;
    Ok(())
}

fn declare_with_ae(
    conn: &Connection,
    name: &str,
    kind: ExchangeKind,
    ae: &str,
) -> Result<(), Box<dyn Error>> {
    let options = ExchangeOptions { alternate_exchange: Some(ae.into()), ..Default::default() };
    conn.declare_exchange(name, kind, options)?;
    Ok(())
}

/// Takes every ready message of `queue`.
fn drain(conn: &Connection, queue: &str) -> Result<Vec<Delivery>, Box<dyn Error>> {
    let mut out = Vec::new();
    while let Some(delivery) = conn.get(queue, true)? {
        out.push(delivery);
    }
    Ok(out)
}

/// The bodies of every ready message of `queue`, as text, in order.
fn bodies(conn: &Connection, queue: &str) -> Result<Vec<String>, Box<dyn Error>> {
    Ok(drain(conn, queue)?.iter().map(|d| String::from_utf8_lossy(d.body()).into_owned()).collect())
}

fn ready(broker: &Broker, queue: &str) -> usize {
    broker.queue_stats(queue).expect("queue exists").messages_ready
}

/// Binds one queue to a fresh topic exchange under `pattern`, publishes each
/// key in turn, and returns the keys that reached the queue. Each publish's
/// `Routed` count is checked against what the queue really received.
fn topic_matches(pattern: &str, keys: &[&str]) -> Result<Vec<String>, Box<dyn Error>> {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "t", pattern, no_args())?;
    let mut matched = Vec::new();
    for key in keys {
        let routed = conn.publish("t", key, Message::new(key.to_string()))?;
        let got = drain(&conn, "q")?;
        assert_eq!(routed.queues(), got.len(), "pattern {pattern:?}, key {key:?}: Routed vs queue contents");
        assert!(got.len() <= 1, "pattern {pattern:?}, key {key:?}: delivered {} times", got.len());
        if let Some(delivery) = got.first() {
            assert_eq!(delivery.routing_key(), *key);
            assert_eq!(delivery.body().as_ref(), key.as_bytes());
            matched.push(key.to_string());
        }
    }
    Ok(matched)
}

/// Binds one queue to a fresh headers exchange with `arguments`, publishes a
/// message with `headers` under `routing_key`, and returns how many queues it
/// reached (checked against what the queue holds).
fn headers_routed_with_key(
    arguments: FieldTable,
    headers: Option<FieldTable>,
    routing_key: &str,
) -> Result<usize, Box<dyn Error>> {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "h", ExchangeKind::Headers)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "h", "binding-key", arguments)?;
    let mut message = Message::new("m");
    if let Some(headers) = headers {
        message = message.with_headers(headers);
    }
    let routed = conn.publish("h", routing_key, message)?;
    assert_eq!(routed.queues(), ready(&broker, "q"), "Routed vs queue contents");
    Ok(routed.queues())
}

fn headers_routed(arguments: FieldTable, headers: Option<FieldTable>) -> Result<usize, Box<dyn Error>> {
    headers_routed_with_key(arguments, headers, "")
}

// ----- direct ---------------------------------------------------------------

#[test]
fn direct_routes_on_an_exact_key_match() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "d", "order.created", no_args())?;
    assert_eq!(conn.publish("d", "order.created", Message::new("hit"))?.queues(), 1);
    for near_miss in ["order.Created", "order.created.", "order", "order.*", "#", ""] {
        assert_eq!(conn.publish("d", near_miss, Message::new("miss"))?.queues(), 0, "{near_miss:?}");
    }
    let got = drain(&conn, "q")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().as_ref(), b"hit");
    assert_eq!(got[0].routing_key(), "order.created");
    Ok(())
}

#[test]
fn direct_delivers_to_every_queue_bound_with_the_key() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q1", "q2", "other"])?;
    conn.bind_queue("q1", "d", "k", no_args())?;
    conn.bind_queue("q2", "d", "k", no_args())?;
    conn.bind_queue("other", "d", "not-k", no_args())?;
    assert_eq!(conn.publish("d", "k", Message::new("m"))?.queues(), 2);
    assert_eq!(bodies(&conn, "q1")?, ["m"]);
    assert_eq!(bodies(&conn, "q2")?, ["m"]);
    assert_eq!(ready(&broker, "other"), 0);
    Ok(())
}

#[test]
fn direct_without_a_matching_binding_routes_to_no_queue() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "d", "k", no_args())?;
    let routed = conn.publish("d", "unbound", Message::new("m"))?;
    assert_eq!(routed.queues(), 0);
    assert!(!routed.is_routed());
    assert_eq!(ready(&broker, "q"), 0);
    Ok(())
}

// ----- default exchange -------------------------------------------------------

#[test]
fn default_exchange_routes_to_the_queue_named_by_the_key() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_queues(&conn, &["jobs", "other"])?;
    assert_eq!(conn.publish("", "jobs", Message::new("m"))?.queues(), 1);
    let got = drain(&conn, "jobs")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].exchange(), "");
    assert_eq!(got[0].routing_key(), "jobs");
    assert_eq!(ready(&broker, "other"), 0);
    Ok(())
}

#[test]
fn default_exchange_with_an_unknown_queue_routes_nowhere() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_queues(&conn, &["jobs"])?;
    assert_eq!(conn.publish("", "no-such-queue", Message::new("m"))?.queues(), 0);
    assert_eq!(conn.publish("", "Jobs", Message::new("m"))?.queues(), 0);
    assert_eq!(ready(&broker, "jobs"), 0);
    Ok(())
}

#[test]
fn amq_default_is_not_publishable() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_queues(&conn, &["jobs"])?;
    let message = Message::new("m").with_header("h", 1);
    let err = conn.publish("amq.default", "jobs", message.clone()).unwrap_err();
    assert!(
        matches!(&err, PublishError::ExchangeNotFound { exchange, .. } if exchange == "amq.default"),
        "{err:?}"
    );
    assert_eq!(err.into_message(), message);
    assert_eq!(ready(&broker, "jobs"), 0);
    Ok(())
}

// ----- fanout -----------------------------------------------------------------

#[test]
fn fanout_ignores_the_routing_key() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "f", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "f", "bound-key", no_args())?;
    for key in ["bound-key", "something.else", ""] {
        assert_eq!(conn.publish("f", key, Message::new(key.to_string()))?.queues(), 1, "{key:?}");
    }
    assert_eq!(bodies(&conn, "q")?, ["bound-key", "something.else", ""]);
    Ok(())
}

#[test]
fn fanout_delivers_once_to_each_bound_queue() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "f", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q1", "q2", "q3", "unbound"])?;
    conn.bind_queue("q1", "f", "", no_args())?;
    conn.bind_queue("q1", "f", "second-binding", no_args())?;
    conn.bind_queue("q2", "f", "", no_args())?;
    conn.bind_queue("q3", "f", "x", no_args())?;
    assert_eq!(conn.publish("f", "k", Message::new("m"))?.queues(), 3);
    for q in ["q1", "q2", "q3"] {
        assert_eq!(bodies(&conn, q)?, ["m"], "{q}");
    }
    assert_eq!(ready(&broker, "unbound"), 0);
    Ok(())
}

// ----- topic ------------------------------------------------------------------

#[test]
fn topic_star_matches_an_empty_word() -> TestResult {
    assert_eq!(topic_matches("a.*", &["a.", "a.b"])?, ["a.", "a.b"]);
    Ok(())
}

#[test]
fn topic_star_does_not_match_zero_words() -> TestResult {
    assert_eq!(topic_matches("a.*", &["a", "a.b"])?, ["a.b"]);
    Ok(())
}

#[test]
fn topic_star_does_not_match_two_words() -> TestResult {
    assert_eq!(topic_matches("a.*", &["a.b.c", "a.b"])?, ["a.b"]);
    Ok(())
}

#[test]
fn topic_trailing_hash_matches_zero_words() -> TestResult {
    assert_eq!(topic_matches("a.#", &["a", "a.b.c", "b"])?, ["a", "a.b.c"]);
    Ok(())
}

#[test]
fn topic_inner_hash_matches_zero_words() -> TestResult {
    assert_eq!(topic_matches("a.#.b", &["a.b", "a.x.y.b", "a.x"])?, ["a.b", "a.x.y.b"]);
    Ok(())
}

#[test]
fn topic_empty_key_is_matched_by_hash() -> TestResult {
    assert_eq!(topic_matches("#", &[""])?, [""]);
    Ok(())
}

#[test]
fn topic_empty_key_is_matched_by_hash_hash() -> TestResult {
    assert_eq!(topic_matches("#.#", &[""])?, [""]);
    Ok(())
}

#[test]
fn topic_empty_key_is_matched_by_the_empty_pattern() -> TestResult {
    assert_eq!(topic_matches("", &["", "a", "."])?, [""]);
    Ok(())
}

#[test]
fn topic_empty_key_is_not_matched_by_star() -> TestResult {
    assert_eq!(topic_matches("*", &["", "a"])?, ["a"]);
    Ok(())
}

#[test]
fn topic_empty_key_is_not_matched_by_star_hash() -> TestResult {
    assert_eq!(topic_matches("*.#", &["", "a", "a.b"])?, ["a", "a.b"]);
    Ok(())
}

#[test]
fn topic_star_matches_an_empty_middle_word() -> TestResult {
    assert_eq!(topic_matches("a.*.b", &["a..b", "a.b", "a.x.b"])?, ["a..b", "a.x.b"]);
    Ok(())
}

#[test]
fn topic_star_matches_an_empty_leading_word() -> TestResult {
    assert_eq!(topic_matches("*.a", &[".a", "a", "x.a"])?, [".a", "x.a"]);
    Ok(())
}

#[test]
fn topic_star_inside_a_word_is_literal() -> TestResult {
    assert_eq!(topic_matches("a*", &["a*", "ab", "a", "a.b"])?, ["a*"]);
    Ok(())
}

#[test]
fn topic_hash_inside_a_word_is_literal() -> TestResult {
    assert_eq!(topic_matches("#b", &["#b", "b", "x.b", "xb"])?, ["#b"]);
    Ok(())
}

#[test]
fn topic_matching_is_case_sensitive() -> TestResult {
    assert_eq!(topic_matches("Order.*", &["order.x", "ORDER.x", "Order.x"])?, ["Order.x"]);
    Ok(())
}

// ----- headers ----------------------------------------------------------------

#[test]
fn headers_all_is_the_default_and_needs_every_argument() -> TestResult {
    let args = || FieldTable::new().with("a", 1).with("b", "two");
    let both = FieldTable::new().with("a", 1).with("b", "two").with("extra", true);
    assert_eq!(headers_routed(args(), Some(both))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1)))?, 0);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1).with("b", "three")))?, 0);
    assert_eq!(headers_routed(args(), None)?, 0);
    Ok(())
}

#[test]
fn headers_any_needs_one_argument() -> TestResult {
    let args = || FieldTable::new().with("x-match", "any").with("a", 1).with("b", "two");
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1)))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("b", "two").with("c", 3)))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 2).with("c", 3)))?, 0);
    assert_eq!(headers_routed(args(), None)?, 0);
    Ok(())
}

#[test]
fn headers_all_ignores_x_arguments() -> TestResult {
    let args = || FieldTable::new().with("x-match", "all").with("a", 1).with("x-k", "v");
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1)))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("x-k", "v")))?, 0);
    Ok(())
}

#[test]
fn headers_any_ignores_x_arguments() -> TestResult {
    let args = || FieldTable::new().with("x-match", "any").with("a", 1).with("x-k", "v");
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("x-k", "v")))?, 0);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1)))?, 1);
    Ok(())
}

#[test]
fn headers_all_with_x_matches_x_arguments_too() -> TestResult {
    let args = || FieldTable::new().with("x-match", "all-with-x").with("a", 1).with("x-k", "v");
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1)))?, 0);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1).with("x-k", "w")))?, 0);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("a", 1).with("x-k", "v")))?, 1);
    Ok(())
}

#[test]
fn headers_any_with_x_matches_an_x_argument_alone() -> TestResult {
    let args = || FieldTable::new().with("x-match", "any-with-x").with("x-k", "v");
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("x-k", "v")))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("x-k", "w")))?, 0);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("k", "v")))?, 0);
    Ok(())
}

#[test]
fn headers_void_binding_value_tests_presence_only() -> TestResult {
    let args = || FieldTable::new().with("k", FieldValue::Void);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("k", "anything")))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("k", 42)))?, 1);
    assert_eq!(headers_routed(args(), Some(FieldTable::new().with("j", "anything")))?, 0);
    assert_eq!(headers_routed(args(), None)?, 0);
    Ok(())
}

#[test]
fn headers_string_one_does_not_equal_integer_one() -> TestResult {
    let string_one = || FieldTable::new().with("k", "1");
    let int_one = || FieldTable::new().with("k", 1);
    assert_eq!(headers_routed(string_one(), Some(int_one()))?, 0);
    assert_eq!(headers_routed(int_one(), Some(string_one()))?, 0);
    assert_eq!(headers_routed(string_one(), Some(string_one()))?, 1);
    Ok(())
}

#[test]
fn headers_true_does_not_equal_integer_one() -> TestResult {
    let t = || FieldTable::new().with("k", true);
    let one = || FieldTable::new().with("k", 1);
    assert_eq!(headers_routed(t(), Some(one()))?, 0);
    assert_eq!(headers_routed(one(), Some(t()))?, 0);
    assert_eq!(headers_routed(t(), Some(t()))?, 1);
    Ok(())
}

#[test]
fn headers_int32_one_equals_int64_one() -> TestResult {
    let i32_one = || FieldTable::new().with("k", 1_i32);
    let i64_one = || FieldTable::new().with("k", 1_i64);
    assert_eq!(headers_routed(i32_one(), Some(i64_one()))?, 1);
    assert_eq!(headers_routed(i64_one(), Some(i32_one()))?, 1);
    assert_eq!(headers_routed(i32_one(), Some(FieldTable::new().with("k", 2_i64)))?, 0);
    Ok(())
}

#[test]
fn headers_string_equals_bytes_with_the_same_bytes() -> TestResult {
    let string = || FieldTable::new().with("k", "eu");
    let bytes = |b: &'static [u8]| FieldTable::new().with("k", Bytes::from_static(b));
    assert_eq!(headers_routed(string(), Some(bytes(b"eu")))?, 1);
    assert_eq!(headers_routed(bytes(b"eu"), Some(string()))?, 1);
    assert_eq!(headers_routed(string(), Some(bytes(b"us")))?, 0);
    Ok(())
}

#[test]
fn headers_all_without_arguments_matches_a_message_without_headers() -> TestResult {
    assert_eq!(headers_routed(no_args(), None)?, 1);
    assert_eq!(headers_routed(FieldTable::new().with("x-match", "all"), None)?, 1);
    assert_eq!(headers_routed(FieldTable::new().with("x-other", 1), Some(no_args()))?, 1);
    Ok(())
}

#[test]
fn headers_any_without_arguments_matches_nothing() -> TestResult {
    let any = || FieldTable::new().with("x-match", "any");
    assert_eq!(headers_routed(any(), None)?, 0);
    assert_eq!(headers_routed(any(), Some(FieldTable::new().with("a", 1)))?, 0);
    assert_eq!(headers_routed(any().with("x-k", "v"), Some(FieldTable::new().with("x-k", "v")))?, 0);
    Ok(())
}

#[test]
fn headers_routing_key_is_ignored() -> TestResult {
    let args = || FieldTable::new().with("a", 1);
    let headers = || Some(FieldTable::new().with("a", 1));
    assert_eq!(headers_routed_with_key(args(), headers(), "binding-key")?, 1);
    assert_eq!(headers_routed_with_key(args(), headers(), "another-key")?, 1);
    assert_eq!(headers_routed_with_key(args(), headers(), "")?, 1);
    assert_eq!(headers_routed_with_key(args(), Some(FieldTable::new().with("a", 2)), "binding-key")?, 0);
    Ok(())
}

#[test]
fn headers_invalid_x_match_is_refused_at_bind_time() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "h", ExchangeKind::Headers)?;
    declare_queues(&conn, &["q"])?;
    for bad in [FieldValue::from("some"), FieldValue::from("ALL"), FieldValue::from(1)] {
        let args = FieldTable::new().with("x-match", bad.clone()).with("a", 1);
        let err = conn.bind_queue("q", "h", "", args).unwrap_err();
        assert!(matches!(err, BindError::PreconditionFailed(_)), "x-match {bad:?}: {err:?}");
    }
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    let routed = conn.publish("h", "", Message::new("m").with_header("a", 1))?;
    assert_eq!(routed.queues(), 0);
    Ok(())
}

// ----- once per queue -------------------------------------------------------------

#[test]
fn message_reaching_a_queue_through_two_bindings_arrives_once() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "t", "a.*", no_args())?;
    conn.bind_queue("q", "t", "#.b", no_args())?;
    assert_eq!(conn.publish("t", "a.b", Message::new("m"))?.queues(), 1);
    assert_eq!(bodies(&conn, "q")?, ["m"]);
    Ok(())
}

#[test]
fn message_reaching_a_queue_through_two_exchange_paths_arrives_once() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "x", ExchangeKind::Fanout)?;
    declare(&conn, "y", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_exchange("y", "x", "", no_args())?;
    conn.bind_queue("q", "x", "", no_args())?;
    conn.bind_queue("q", "y", "", no_args())?;
    assert_eq!(conn.publish("x", "k", Message::new("m"))?.queues(), 1);
    assert_eq!(bodies(&conn, "q")?, ["m"]);
    Ok(())
}

#[test]
fn exchange_binding_cycle_terminates_and_delivers_once() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "a", ExchangeKind::Fanout)?;
    declare(&conn, "b", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["qa", "qb"])?;
    conn.bind_exchange("b", "a", "", no_args())?;
    conn.bind_exchange("a", "b", "", no_args())?;
    conn.bind_queue("qa", "a", "", no_args())?;
    conn.bind_queue("qb", "b", "", no_args())?;
    assert_eq!(conn.publish("a", "k", Message::new("from a"))?.queues(), 2);
    assert_eq!(conn.publish("b", "k", Message::new("from b"))?.queues(), 2);
    assert_eq!(bodies(&conn, "qa")?, ["from a", "from b"]);
    assert_eq!(bodies(&conn, "qb")?, ["from a", "from b"]);
    Ok(())
}

// ----- exchange-to-exchange ----------------------------------------------------------

#[test]
fn exchange_binding_routes_onward_with_the_original_routing_key() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "src", ExchangeKind::Topic)?;
    declare(&conn, "dst", ExchangeKind::Direct)?;
    declare_queues(&conn, &["eu", "us"])?;
    conn.bind_exchange("dst", "src", "order.#", no_args())?;
    conn.bind_queue("eu", "dst", "order.eu.new", no_args())?;
    conn.bind_queue("us", "dst", "order.us.new", no_args())?;
    assert_eq!(conn.publish("src", "order.eu.new", Message::new("m"))?.queues(), 1);
    assert_eq!(conn.publish("src", "invoice.eu.new", Message::new("m"))?.queues(), 0);
    let got = drain(&conn, "eu")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key(), "order.eu.new");
    assert_eq!(ready(&broker, "us"), 0);
    Ok(())
}

#[test]
fn delivery_through_an_exchange_binding_names_the_exchange_published_to() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "front", ExchangeKind::Fanout)?;
    declare(&conn, "back", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_exchange("back", "front", "", no_args())?;
    conn.bind_queue("q", "back", "", no_args())?;
    assert_eq!(conn.publish("front", "k", Message::new("m"))?.queues(), 1);
    let got = drain(&conn, "q")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].exchange(), "front");
    Ok(())
}

// ----- alternate exchange -------------------------------------------------------------

#[test]
fn alternate_exchange_receives_unroutable_messages() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "ae", ExchangeKind::Fanout)?;
    declare_with_ae(&conn, "main", ExchangeKind::Direct, "ae")?;
    declare_queues(&conn, &["bound", "unrouted"])?;
    conn.bind_queue("bound", "main", "k", no_args())?;
    conn.bind_queue("unrouted", "ae", "", no_args())?;
    assert_eq!(conn.publish("main", "k", Message::new("routed"))?.queues(), 1);
    assert_eq!(conn.publish("main", "other", Message::new("stray"))?.queues(), 1);
    assert_eq!(bodies(&conn, "bound")?, ["routed"]);
    let got = drain(&conn, "unrouted")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().as_ref(), b"stray");
    assert_eq!(got[0].routing_key(), "other");
    assert_eq!(got[0].exchange(), "main");
    Ok(())
}

#[test]
fn alternate_exchange_may_not_exist_yet_and_works_once_declared() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare_with_ae(&conn, "main", ExchangeKind::Direct, "later")?;
    declare_queues(&conn, &["unrouted"])?;
    assert_eq!(conn.publish("main", "k", Message::new("dropped"))?.queues(), 0);
    declare(&conn, "later", ExchangeKind::Fanout)?;
    conn.bind_queue("unrouted", "later", "", no_args())?;
    assert_eq!(conn.publish("main", "k", Message::new("caught"))?.queues(), 1);
    assert_eq!(bodies(&conn, "unrouted")?, ["caught"]);
    Ok(())
}

#[test]
fn exchange_reached_through_a_binding_uses_its_own_alternate_exchange() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "inner-ae", ExchangeKind::Fanout)?;
    declare_with_ae(&conn, "inner", ExchangeKind::Direct, "inner-ae")?;
    declare(&conn, "outer", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["inner-bound", "inner-unrouted"])?;
    conn.bind_exchange("inner", "outer", "", no_args())?;
    conn.bind_queue("inner-bound", "inner", "k", no_args())?;
    conn.bind_queue("inner-unrouted", "inner-ae", "", no_args())?;
    assert_eq!(conn.publish("outer", "other", Message::new("stray"))?.queues(), 1);
    assert_eq!(conn.publish("outer", "k", Message::new("routed"))?.queues(), 1);
    assert_eq!(bodies(&conn, "inner-unrouted")?, ["stray"]);
    assert_eq!(bodies(&conn, "inner-bound")?, ["routed"]);
    Ok(())
}

#[test]
fn alternate_exchange_that_routes_nowhere_still_returns_a_mandatory_message() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "ae", ExchangeKind::Fanout)?;
    declare_with_ae(&conn, "main", ExchangeKind::Direct, "ae")?;
    let message = Message::new("m").with_header("h", "v");
    let err = conn.publish_with("main", "k", message.clone(), mandatory()).unwrap_err();
    assert!(
        matches!(&err, PublishError::Unroutable { exchange, routing_key, .. }
            if exchange == "main" && routing_key == "k"),
        "{err:?}"
    );
    assert_eq!(err.into_message(), message);
    Ok(())
}

// ----- mandatory ---------------------------------------------------------------------------

#[test]
fn mandatory_unroutable_message_is_returned_with_its_body_and_headers() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "d", "k", no_args())?;
    let message = Message::new(vec![1_u8, 2, 3]).with_header("trace", "t-1").with_header("n", 7);
    let err = conn.publish_with("d", "nowhere", message.clone(), mandatory()).unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err:?}");
    let back = err.into_message();
    assert_eq!(back.body().as_ref(), [1, 2, 3]);
    assert_eq!(back.headers(), message.headers());
    assert_eq!(back, message);
    // A routable mandatory publish is not returned.
    assert_eq!(conn.publish_with("d", "k", Message::new("ok"), mandatory())?.queues(), 1);
    assert_eq!(bodies(&conn, "q")?, ["ok"]);
    Ok(())
}

#[test]
fn unroutable_message_without_mandatory_is_dropped_without_error() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "d", "k", no_args())?;
    let result = conn.publish_with("d", "nowhere", Message::new("m"), PublishOptions::default());
    assert!(matches!(result, Ok(routed) if routed.queues() == 0), "{result:?}");
    assert_eq!(ready(&broker, "q"), 0);
    Ok(())
}

// ----- refusals ----------------------------------------------------------------------------

#[test]
fn publishing_to_a_missing_exchange_hands_the_message_back() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let message = Message::new("m").with_header("h", 1);
    let err = conn.publish("no-such-exchange", "k", message.clone()).unwrap_err();
    assert!(
        matches!(&err, PublishError::ExchangeNotFound { exchange, .. } if exchange == "no-such-exchange"),
        "{err:?}"
    );
    assert_eq!(err.into_message(), message);
    Ok(())
}

#[test]
fn publishing_to_an_internal_exchange_is_refused() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let internal = ExchangeOptions { internal: true, ..Default::default() };
    conn.declare_exchange("inner", ExchangeKind::Fanout, internal)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "inner", "", no_args())?;
    let message = Message::new("m");
    let err = conn.publish("inner", "k", message.clone()).unwrap_err();
    assert!(
        matches!(&err, PublishError::InternalExchange { exchange, .. } if exchange == "inner"),
        "{err:?}"
    );
    assert_eq!(err.into_message(), message);
    assert_eq!(ready(&broker, "q"), 0);
    Ok(())
}

#[test]
fn internal_exchange_receives_through_an_exchange_binding() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let internal = ExchangeOptions { internal: true, ..Default::default() };
    conn.declare_exchange("inner", ExchangeKind::Fanout, internal)?;
    declare(&conn, "front", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_exchange("inner", "front", "k", no_args())?;
    conn.bind_queue("q", "inner", "", no_args())?;
    assert_eq!(conn.publish("front", "k", Message::new("m"))?.queues(), 1);
    assert_eq!(bodies(&conn, "q")?, ["m"]);
    Ok(())
}

#[test]
fn routing_key_over_255_bytes_is_refused_with_the_message_back() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "f", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "f", "", no_args())?;
    let longest = "k".repeat(255);
    assert_eq!(conn.publish("f", &longest, Message::new("fits"))?.queues(), 1);
    let message = Message::new("too long").with_header("h", 1);
    let err = conn.publish("f", &"k".repeat(256), message.clone()).unwrap_err();
    assert!(matches!(err, PublishError::InvalidRoutingKey { len: 256, .. }), "{err:?}");
    assert_eq!(err.into_message(), message);
    assert_eq!(bodies(&conn, "q")?, ["fits"]);
    Ok(())
}

#[test]
fn body_over_max_message_size_is_refused_with_the_message_back() -> TestResult {
    let broker = Broker::with_options(BrokerOptions { max_message_size: 16, ..Default::default() });
    let conn = broker.connect();
    declare_queues(&conn, &["q"])?;
    assert_eq!(conn.publish("", "q", Message::new(vec![0_u8; 16]))?.queues(), 1);
    let message = Message::new(vec![7_u8; 17]).with_header("h", 1);
    let err = conn.publish("", "q", message.clone()).unwrap_err();
    assert!(matches!(err, PublishError::TooLarge { size: 17, limit: 16, .. }), "{err:?}");
    assert_eq!(err.into_message(), message);
    assert_eq!(ready(&broker, "q"), 1);
    Ok(())
}

// ----- unbinding ----------------------------------------------------------------------------

#[test]
fn unbind_stops_routing() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "t", "a.#", no_args())?;
    assert_eq!(conn.publish("t", "a.b", Message::new("before"))?.queues(), 1);
    conn.unbind_queue("q", "t", "a.#", None)?;
    assert_eq!(conn.publish("t", "a.b", Message::new("after"))?.queues(), 0);
    assert_eq!(bodies(&conn, "q")?, ["before"]);
    Ok(())
}

#[test]
fn unbind_exchange_stops_routing() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "front", ExchangeKind::Direct)?;
    declare(&conn, "back", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_exchange("back", "front", "k", no_args())?;
    conn.bind_queue("q", "back", "", no_args())?;
    assert_eq!(conn.publish("front", "k", Message::new("before"))?.queues(), 1);
    conn.unbind_exchange("back", "front", "k", None)?;
    assert_eq!(conn.publish("front", "k", Message::new("after"))?.queues(), 0);
    assert_eq!(bodies(&conn, "q")?, ["before"]);
    Ok(())
}

#[test]
fn unbinding_a_binding_that_does_not_exist_is_ok() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "d", "k", no_args())?;
    conn.unbind_queue("q", "d", "never-bound", None)?;
    conn.unbind_queue("q", "d", "k", Some(&FieldTable::new().with("other", 1)))?;
    conn.unbind_exchange("d", "amq.direct", "k", None)?;
    assert_eq!(conn.publish("d", "k", Message::new("m"))?.queues(), 1);
    Ok(())
}

#[test]
fn binding_twice_then_unbinding_once_stops_routing() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "d", ExchangeKind::Direct)?;
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    for (exchange, key) in [("d", "k"), ("t", "k.#")] {
        conn.bind_queue("q", exchange, key, no_args())?;
        conn.bind_queue("q", exchange, key, no_args())?;
        assert_eq!(conn.publish(exchange, "k", Message::new("before"))?.queues(), 1, "{exchange}");
        conn.unbind_queue("q", exchange, key, None)?;
        assert_eq!(conn.publish(exchange, "k", Message::new("after"))?.queues(), 0, "{exchange}");
    }
    assert_eq!(bodies(&conn, "q")?, ["before", "before"]);
    Ok(())
}

#[test]
fn unbinding_one_of_two_topic_bindings_differing_by_arguments_keeps_the_other() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "t", "a.*", no_args())?;
    conn.bind_queue("q", "t", "a.*", FieldTable::new().with("tag", "second"))?;
    conn.unbind_queue("q", "t", "a.*", Some(&FieldTable::new().with("tag", "second")))?;
    assert_eq!(broker.bindings().iter().filter(|b| b.source == "t").count(), 1);
    assert_eq!(conn.publish("t", "a.b", Message::new("m"))?.queues(), 1);
    Ok(())
}

#[test]
fn unbinding_a_hash_hash_pattern_keeps_the_equivalent_hash_binding() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["q"])?;
    conn.bind_queue("q", "t", "a.#", no_args())?;
    conn.bind_queue("q", "t", "a.#.#", no_args())?;
    conn.unbind_queue("q", "t", "a.#.#", None)?;
    assert_eq!(broker.bindings().iter().filter(|b| b.source == "t").count(), 1);
    assert_eq!(conn.publish("t", "a.b", Message::new("m"))?.queues(), 1);
    Ok(())
}

// ----- bodies, auto-delete, concurrency --------------------------------------------------------

#[test]
fn fanout_shares_one_body_buffer_between_queues() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "f", ExchangeKind::Fanout)?;
    declare_queues(&conn, &["q1", "q2", "q3"])?;
    for q in ["q1", "q2", "q3"] {
        conn.bind_queue(q, "f", "", no_args())?;
    }
    let body = Bytes::from(vec![42_u8; 4096]);
    let original = body.as_ptr();
    assert_eq!(conn.publish("f", "", Message::new(body))?.queues(), 3);
    let mut pointers = Vec::new();
    for q in ["q1", "q2", "q3"] {
        let got = drain(&conn, q)?;
        assert_eq!(got.len(), 1, "{q}");
        assert_eq!(got[0].body().len(), 4096);
        pointers.push(got[0].body().as_ptr());
    }
    assert_eq!(pointers, [original; 3]);
    Ok(())
}

#[test]
fn auto_delete_exchange_is_deleted_when_its_last_binding_is_removed() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let auto_delete = ExchangeOptions { auto_delete: true, ..Default::default() };
    conn.declare_exchange("temp", ExchangeKind::Fanout, auto_delete.clone())?;
    declare_queues(&conn, &["q1", "q2"])?;
    conn.bind_queue("q1", "temp", "", no_args())?;
    conn.bind_queue("q2", "temp", "", no_args())?;
    conn.unbind_queue("q1", "temp", "", None)?;
    assert!(broker.exchange_names().contains(&"temp".to_owned()), "deleted with a binding left");
    assert_eq!(conn.publish("temp", "", Message::new("m"))?.queues(), 1);
    conn.unbind_queue("q2", "temp", "", None)?;
    assert!(!broker.exchange_names().contains(&"temp".to_owned()), "{:?}", broker.exchange_names());
    conn.declare_exchange("temp", ExchangeKind::Topic, auto_delete)?;
    Ok(())
}

#[test]
fn publishing_from_many_threads_routes_every_message() -> TestResult {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 10_000;
    let broker = Broker::new();
    let conn = broker.connect();
    declare(&conn, "t", ExchangeKind::Topic)?;
    declare_queues(&conn, &["a-only", "everything"])?;
    conn.bind_queue("a-only", "t", "a.*", no_args())?;
    conn.bind_queue("everything", "t", "#", no_args())?;
    let total_routed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let broker = &broker;
                s.spawn(move || {
                    let conn = broker.connect();
                    let mut routed = 0;
                    for i in 0..PER_THREAD {
                        let key = if i % 2 == 0 { "a.x" } else { "b.x" };
                        let message = Message::new(format!("{t}-{i}"));
                        routed += conn.publish("t", key, message).expect("publish").queues();
                    }
                    routed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("publisher thread")).sum()
    });
    assert_eq!(ready(&broker, "a-only"), THREADS * PER_THREAD / 2);
    assert_eq!(ready(&broker, "everything"), THREADS * PER_THREAD);
    assert_eq!(total_routed, THREADS * PER_THREAD * 3 / 2);
    Ok(())
}

#[test]
fn a_publisher_handle_routes_like_publishing_by_name_and_fails_once_its_exchange_is_deleted() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::default())?;
    declare_queues(&conn, &["eu"])?;
    conn.bind_queue("eu", "orders", "order.eu.*", FieldTable::new())?;
    let orders = conn.publisher("orders")?;
    assert_eq!(orders.exchange(), "orders");
    assert_eq!(orders.publish("order.eu.created", Message::new("1"))?.queues(), 1);
    assert_eq!(orders.publish("order.us.created", Message::new("2"))?.queues(), 0);
    let mandatory = PublishOptions { mandatory: true };
    let err = orders.publish_with("order.us.created", Message::new("3"), mandatory).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoRoute);
    let delivered = conn.get("eu", true)?.expect("routed");
    assert_eq!(delivered.exchange(), "orders");

    conn.delete_exchange("orders", Default::default())?;
    let err = orders.publish("order.eu.created", Message::new("4")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.into_message().body().as_ref(), b"4");

    assert_eq!(conn.publisher("missing").unwrap_err().kind(), ErrorKind::NotFound);
    let clone = conn.publisher("")?.clone();
    conn.close();
    assert_eq!(clone.publish("eu", Message::new("5")).unwrap_err().kind(), ErrorKind::ConnectionClosed);
    Ok(())
}
