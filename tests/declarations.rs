//! Behaviour tests for declaring, checking, deleting and purging exchanges and
//! queues, for bindings, exclusive and auto-delete queues, consumer tags and
//! queue statistics, all through the public API and compared with what a real
//! RabbitMQ (AMQP 0-9-1) broker does (see `RABBITMQ-SEMANTICS.md`).

use std::error::Error;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use interoffice::{
    BindError, Broker, ConsumeError, ConsumeOptions, DeclareError, DeleteError, DeleteExchangeOptions,
    DeleteQueueOptions, ErrorKind, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions,
    RecvError, RecvTimeoutError,
};

type TestResult = Result<(), Box<dyn Error>>;

const BUILT_IN_EXCHANGES: [&str; 6] =
    ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"];

fn passive_exchange() -> ExchangeOptions {
    ExchangeOptions { passive: true, ..Default::default() }
}

fn passive_queue() -> QueueOptions {
    QueueOptions { passive: true, ..Default::default() }
}

fn max_length(n: i32) -> QueueOptions {
    QueueOptions { arguments: FieldTable::from([("x-max-length", n)]), ..Default::default() }
}

fn exclusive() -> QueueOptions {
    QueueOptions { exclusive: true, ..Default::default() }
}

fn auto_delete() -> QueueOptions {
    QueueOptions { auto_delete: true, ..Default::default() }
}

fn tagged(tag: &str) -> ConsumeOptions {
    ConsumeOptions { consumer_tag: Some(tag.into()), ..Default::default() }
}

/// True if the broker still has a queue named `name`.
fn queue_exists(broker: &Broker, name: &str) -> bool {
    broker.queue_stats(name).is_ok() && broker.queue_names().iter().any(|q| q == name)
}

/// `(source, destination, routing key)` of every binding, in the broker's order.
fn binding_triples(broker: &Broker) -> Vec<(String, String, String)> {
    broker.bindings().into_iter().map(|b| (b.source, b.destination, b.routing_key)).collect()
}

fn triple(source: &str, destination: &str, key: &str) -> (String, String, String) {
    (source.to_owned(), destination.to_owned(), key.to_owned())
}

// ----- built-in exchanges ----------------------------------------------------

#[test]
fn built_in_exchanges_exist_from_the_start() -> TestResult {
    let broker = Broker::new();
    let names = broker.exchange_names();
    for name in BUILT_IN_EXCHANGES {
        assert!(names.iter().any(|n| n == name), "{name:?} missing from {names:?}");
    }
    assert_eq!(names.len(), BUILT_IN_EXCHANGES.len(), "unexpected extra exchanges: {names:?}");
    let conn = broker.connect();
    for name in BUILT_IN_EXCHANGES.into_iter().filter(|n| !n.is_empty()) {
        conn.declare_exchange(name, ExchangeKind::Fanout, passive_exchange())?;
    }
    assert!(broker.bindings().is_empty(), "a fresh broker lists no bindings");
    Ok(())
}

#[test]
fn built_in_exchanges_route_by_their_kind() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "amq.direct", "k", FieldTable::new())?;
    conn.bind_queue("q", "amq.fanout", "ignored", FieldTable::new())?;
    conn.bind_queue("q", "amq.topic", "a.*", FieldTable::new())?;
    assert_eq!(conn.publish("", "q", Message::new("default"))?.queues(), 1);
    assert_eq!(conn.publish("amq.direct", "k", Message::new("direct"))?.queues(), 1);
    assert_eq!(conn.publish("amq.direct", "other", Message::new("direct"))?.queues(), 0);
    assert_eq!(conn.publish("amq.fanout", "anything", Message::new("fanout"))?.queues(), 1);
    assert_eq!(conn.publish("amq.topic", "a.b", Message::new("topic"))?.queues(), 1);
    assert_eq!(conn.publish("amq.topic", "a.b.c", Message::new("topic"))?.queues(), 0);
    assert_eq!(broker.queue_stats("q").map(|s| s.messages_ready).ok(), Some(4));
    Ok(())
}

/// RabbitMQ's `exchange.declare` handler calls `check_not_default_exchange`
/// for passive declarations too: `ACCESS_REFUSED - operation not permitted on
/// the default exchange`.
#[test]
fn passively_declaring_the_default_exchange_is_access_refused() {
    let conn = Broker::new().connect();
    let err = conn.declare_exchange("", ExchangeKind::Direct, passive_exchange()).unwrap_err();
    assert!(matches!(err, DeclareError::AccessRefused(_)), "{err:?}");
    assert_eq!(err.to_string(), "ACCESS_REFUSED - operation not permitted on the default exchange");
}

// ----- exchange declarations -------------------------------------------------

#[test]
fn redeclaring_an_exchange_with_equal_options_is_idempotent() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let options = ExchangeOptions {
        durable: true,
        alternate_exchange: Some("ae".into()),
        arguments: FieldTable::from([("custom", 1)]),
        ..Default::default()
    };
    conn.declare_exchange("x", ExchangeKind::Topic, options.clone())?;
    conn.declare_exchange("x", ExchangeKind::Topic, options.clone())?;
    broker.connect().declare_exchange("x", ExchangeKind::Topic, options)?;
    assert_eq!(broker.exchange_names().iter().filter(|n| *n == "x").count(), 1);
    Ok(())
}

#[test]
fn redeclaring_an_exchange_with_another_kind_names_the_difference() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default())?;
    let err = conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    assert_eq!(err.kind().reply_code(), 406);
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    // The exchange is unchanged: still direct.
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "x", "k", FieldTable::new())?;
    assert_eq!(conn.publish("x", "other", Message::new("m"))?.queues(), 0);
    assert_eq!(conn.publish("x", "k", Message::new("m"))?.queues(), 1);
    Ok(())
}

#[test]
fn redeclaring_an_exchange_with_another_option_names_the_difference() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default())?;

    let durable = ExchangeOptions { durable: true, ..Default::default() };
    let err = conn.declare_exchange("x", ExchangeKind::Direct, durable).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'"
    );

    let others = [
        ExchangeOptions { auto_delete: true, ..Default::default() },
        ExchangeOptions { internal: true, ..Default::default() },
        ExchangeOptions { alternate_exchange: Some("ae".into()), ..Default::default() },
        ExchangeOptions { arguments: FieldTable::from([("custom", 1)]), ..Default::default() },
    ];
    for options in others {
        let err = conn.declare_exchange("x", ExchangeKind::Direct, options.clone()).unwrap_err();
        assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{options:?}: {err:?}");
        assert!(err.to_string().contains("inequivalent arg '"), "{err}");
    }
    conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default())?;
    Ok(())
}

#[test]
fn passively_declaring_a_missing_exchange_is_not_found() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let err = conn.declare_exchange("nope", ExchangeKind::Direct, passive_exchange()).unwrap_err();
    assert!(matches!(err, DeclareError::NotFound(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.kind().reply_code(), 404);
    assert_eq!(err.to_string(), "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(!broker.exchange_names().iter().any(|n| n == "nope"), "a passive declare creates nothing");
    Ok(())
}

#[test]
fn passively_declaring_an_existing_exchange_ignores_its_options() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default())?;
    let passive = ExchangeOptions { passive: true, durable: true, internal: true, ..Default::default() };
    conn.declare_exchange("x", ExchangeKind::Headers, passive)?;
    Ok(())
}

#[test]
fn declaring_a_reserved_exchange_name_is_access_refused() {
    let broker = Broker::new();
    let conn = broker.connect();
    for name in ["amq.anything", "amq.other.thing", ""] {
        let err = conn.declare_exchange(name, ExchangeKind::Direct, ExchangeOptions::default()).unwrap_err();
        assert!(matches!(err, DeclareError::AccessRefused(_)), "{name:?}: {err:?}");
        assert_eq!(err.kind(), ErrorKind::AccessRefused);
        assert_eq!(err.kind().reply_code(), 403);
    }
    assert!(!broker.exchange_names().iter().any(|n| n == "amq.anything"));
}

#[test]
fn redeclaring_a_built_in_exchange_equivalently_succeeds_and_otherwise_names_the_difference() -> TestResult {
    let conn = Broker::new().connect();
    let durable = ExchangeOptions { durable: true, ..Default::default() };
    conn.declare_exchange("amq.direct", ExchangeKind::Direct, durable.clone())?;
    let err = conn.declare_exchange("amq.direct", ExchangeKind::Fanout, durable).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': \
         received 'fanout' but current is 'direct'"
    );
    Ok(())
}

#[test]
fn exchange_names_are_limited_to_255_bytes() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let longest = "x".repeat(255);
    conn.declare_exchange(&longest, ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange(&longest, ExchangeKind::Fanout, passive_exchange())?;
    assert!(broker.exchange_names().contains(&longest));

    // 256 bytes, but only 128 characters: the limit is in bytes.
    for name in ["x".repeat(256), "é".repeat(128)] {
        let err = conn.declare_exchange(&name, ExchangeKind::Fanout, ExchangeOptions::default()).unwrap_err();
        assert!(matches!(err, DeclareError::InvalidName { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert_eq!(err.kind().reply_code(), 402);
        assert!(!broker.exchange_names().contains(&name));
    }
    Ok(())
}

// ----- queue declarations ----------------------------------------------------

#[test]
fn redeclaring_a_queue_with_equal_options_is_idempotent_and_returns_its_name() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let options = QueueOptions { durable: true, ..max_length(10) };
    assert_eq!(conn.declare_queue("q", options.clone())?, "q");
    conn.publish("", "q", Message::new("kept"))?;
    assert_eq!(conn.declare_queue("q", options.clone())?, "q");
    assert_eq!(broker.connect().declare_queue("q", options)?, "q");
    assert_eq!(broker.queue_names(), ["q"]);
    assert_eq!(
        broker.queue_stats("q").map(|s| s.messages_ready).ok(),
        Some(1),
        "redeclaring keeps the messages"
    );
    Ok(())
}

#[test]
fn redeclaring_a_queue_with_other_arguments_names_the_difference() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_queue("q", max_length(10))?;
    let err = conn.declare_queue("q", max_length(20)).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    assert_eq!(err.kind().reply_code(), 406);
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'"
    );
    // Dropping the argument altogether is a difference too.
    let err = conn.declare_queue("q", QueueOptions::default()).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert!(err.to_string().contains("'x-max-length'"), "{err}");
    assert_eq!(conn.declare_queue("q", max_length(10))?, "q");
    Ok(())
}

#[test]
fn redeclaring_a_queue_with_other_durable_or_auto_delete_flags_names_the_difference() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;

    let err = conn.declare_queue("q", QueueOptions { durable: true, ..Default::default() }).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );

    let err = conn.declare_queue("q", auto_delete()).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    Ok(())
}

/// RabbitMQ checks the `exclusive` flag with `check_exclusive_access(Q, Owner,
/// strict)` before the other flags: a mismatch in either direction, even on
/// the owning connection, is `RESOURCE_LOCKED - cannot obtain exclusive access
/// to locked queue ...`, not an "inequivalent arg" precondition failure.
#[test]
fn redeclaring_a_queue_with_another_exclusive_flag_is_resource_locked() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_queue("shared", QueueOptions::default())?;
    let err = conn.declare_queue("shared", exclusive()).unwrap_err();
    assert!(matches!(err, DeclareError::ResourceLocked { .. }), "exclusive over shared: {err:?}");
    assert_eq!(err.kind().reply_code(), 405);

    conn.declare_queue("mine", exclusive())?;
    let err = conn.declare_queue("mine", QueueOptions::default()).unwrap_err();
    assert!(matches!(err, DeclareError::ResourceLocked { .. }), "shared over exclusive: {err:?}");
    assert_eq!(err.kind().reply_code(), 405);
    Ok(())
}

#[test]
fn passively_declaring_a_queue_checks_that_it_exists() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let err = conn.declare_queue("q", passive_queue()).unwrap_err();
    assert!(matches!(err, DeclareError::NotFound(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.kind().reply_code(), 404);
    assert_eq!(err.to_string(), "NOT_FOUND - no queue 'q' in vhost '/'");
    assert!(broker.queue_names().is_empty(), "a passive declare creates nothing");

    conn.declare_queue("q", max_length(10))?;
    // Passive ignores every other option.
    let passive = QueueOptions { passive: true, durable: true, ..max_length(99) };
    assert_eq!(conn.declare_queue("q", passive)?, "q");
    Ok(())
}

#[test]
fn passively_declaring_the_empty_queue_name_is_not_found() {
    // RabbitMQ's passive queue.declare looks the name up as given: `NOT_FOUND -
    // no queue '' in vhost '/'`. It must not generate a name either.
    let broker = Broker::new();
    let conn = broker.connect();
    let err = conn.declare_queue("", passive_queue()).unwrap_err();
    assert!(matches!(err, DeclareError::NotFound(_)), "{err:?}");
    assert_eq!(err.kind().reply_code(), 404);
    assert!(broker.queue_names().is_empty());
}

#[test]
fn declaring_the_empty_queue_name_generates_a_fresh_amq_gen_name_each_time() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let first = conn.declare_queue("", QueueOptions::default())?;
    let second = conn.declare_queue("", QueueOptions::default())?;
    assert!(first.starts_with("amq.gen-") && first.len() > "amq.gen-".len(), "{first}");
    assert!(second.starts_with("amq.gen-"), "{second}");
    assert_ne!(first, second);
    assert_eq!(broker.queue_names().len(), 2);
    assert!(queue_exists(&broker, &first) && queue_exists(&broker, &second));
    // The generated name is a real queue name.
    assert_eq!(conn.publish("", &first, Message::new("m"))?.queues(), 1);
    assert_eq!(conn.declare_queue(&first, passive_queue())?, first);
    Ok(())
}

#[test]
fn declaring_a_queue_name_with_the_amq_prefix_is_access_refused() {
    let broker = Broker::new();
    let conn = broker.connect();
    let err = conn.declare_queue("amq.q", QueueOptions::default()).unwrap_err();
    assert!(matches!(err, DeclareError::AccessRefused(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::AccessRefused);
    assert_eq!(err.kind().reply_code(), 403);
    assert_eq!(err.to_string(), "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'");
    assert!(broker.queue_names().is_empty());
}

#[test]
fn queue_names_are_limited_to_255_bytes() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    let longest = "q".repeat(255);
    assert_eq!(conn.declare_queue(&longest, QueueOptions::default())?, longest);
    assert_eq!(conn.publish("", &longest, Message::new("m"))?.queues(), 1);

    for name in ["q".repeat(256), "é".repeat(128)] {
        for options in [QueueOptions::default(), passive_queue()] {
            let err = conn.declare_queue(&name, options).unwrap_err();
            assert!(matches!(err, DeclareError::InvalidName { .. }), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert_eq!(err.kind().reply_code(), 402);
        }
    }
    assert_eq!(broker.queue_names(), [longest]);
    Ok(())
}

// ----- deleting queues -------------------------------------------------------

#[test]
fn deleting_a_queue_returns_the_number_of_ready_messages_dropped() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    for body in ["a", "b", "c"] {
        conn.publish("", "q", Message::new(body))?;
    }
    assert_eq!(conn.delete_queue("q", DeleteQueueOptions::default())?, 3);
    assert!(!queue_exists(&broker, "q"));
    assert_eq!(conn.publish("", "q", Message::new("late"))?.queues(), 0);

    conn.declare_queue("empty", QueueOptions::default())?;
    assert_eq!(conn.delete_queue("empty", DeleteQueueOptions::default())?, 0);
    Ok(())
}

#[test]
fn deleting_a_queue_if_unused_fails_while_a_consumer_is_attached() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let if_unused = DeleteQueueOptions { if_unused: true, ..Default::default() };

    let err = conn.delete_queue("q", if_unused).unwrap_err();
    assert!(matches!(err, DeleteError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    assert_eq!(err.kind().reply_code(), 406);
    assert_eq!(err.to_string(), "PRECONDITION_FAILED - queue 'q' in vhost '/' in use");
    assert!(queue_exists(&broker, "q"));

    drop(consumer);
    assert_eq!(conn.delete_queue("q", if_unused)?, 0);
    assert!(!queue_exists(&broker, "q"));
    Ok(())
}

#[test]
fn deleting_a_queue_if_empty_fails_while_messages_are_ready() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("m"))?;
    let if_empty = DeleteQueueOptions { if_empty: true, ..Default::default() };

    let err = conn.delete_queue("q", if_empty).unwrap_err();
    assert!(matches!(err, DeleteError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.kind().reply_code(), 406);
    assert_eq!(err.to_string(), "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty");
    assert_eq!(broker.queue_stats("q").map(|s| s.messages_ready).ok(), Some(1), "nothing was dropped");

    assert_eq!(conn.purge_queue("q")?, 1);
    assert_eq!(conn.delete_queue("q", if_empty)?, 0);
    assert!(!queue_exists(&broker, "q"));
    Ok(())
}

#[test]
fn deleting_a_queue_cancels_its_consumers() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    conn.delete_queue("q", DeleteQueueOptions::default())?;
    match consumer.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Closed(RecvError::QueueDeleted(name))) => assert_eq!(name, "q"),
        other => panic!("expected QueueDeleted, got {other:?}"),
    }
    assert_eq!(consumer.recv().unwrap_err(), RecvError::QueueDeleted("q".into()));
    Ok(())
}

#[test]
fn deleting_a_queue_removes_its_bindings() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "amq.direct", "k", FieldTable::new())?;
    conn.bind_queue("q", "amq.fanout", "", FieldTable::new())?;
    assert_eq!(broker.bindings().len(), 2);

    conn.delete_queue("q", DeleteQueueOptions::default())?;
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    assert_eq!(conn.publish("amq.direct", "k", Message::new("m"))?.queues(), 0);
    assert_eq!(conn.publish("amq.fanout", "", Message::new("m"))?.queues(), 0);

    // A new queue of the same name does not inherit the old bindings.
    conn.declare_queue("q", QueueOptions::default())?;
    assert_eq!(conn.publish("amq.direct", "k", Message::new("m"))?.queues(), 0);
    assert_eq!(conn.publish("amq.fanout", "", Message::new("m"))?.queues(), 0);
    assert!(broker.bindings().is_empty());
    Ok(())
}

/// As in RabbitMQ since 3.2 (`queue.delete` of a missing queue answers
/// `delete-ok` with a message count of 0), and as `delete_queue` documents.
#[test]
fn deleting_a_missing_queue_succeeds_and_returns_zero() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    assert_eq!(conn.delete_queue("nope", DeleteQueueOptions::default())?, 0);
    let strict = DeleteQueueOptions { if_unused: true, if_empty: true };
    assert_eq!(conn.delete_queue("nope", strict)?, 0);
    assert!(!queue_exists(&broker, "nope"), "deleting creates nothing");

    conn.declare_queue("q", QueueOptions::default())?;
    conn.publish("", "q", Message::new("m"))?;
    assert_eq!(conn.delete_queue("q", DeleteQueueOptions::default())?, 1);
    assert_eq!(conn.delete_queue("q", DeleteQueueOptions::default())?, 0, "a second delete is a no-op");
    Ok(())
}

// ----- deleting exchanges ----------------------------------------------------

#[test]
fn deleting_the_default_or_an_amq_exchange_is_access_refused() {
    let broker = Broker::new();
    let conn = broker.connect();
    for name in BUILT_IN_EXCHANGES.into_iter().chain(["amq.missing"]) {
        let err = conn.delete_exchange(name, DeleteExchangeOptions::default()).unwrap_err();
        assert!(matches!(err, DeleteError::AccessRefused(_)), "{name:?}: {err:?}");
        assert_eq!(err.kind(), ErrorKind::AccessRefused);
        assert_eq!(err.kind().reply_code(), 403);
    }
    let err = conn.delete_exchange("", DeleteExchangeOptions::default()).unwrap_err();
    assert_eq!(err.to_string(), "ACCESS_REFUSED - operation not permitted on the default exchange");
    assert_eq!(broker.exchange_names().len(), BUILT_IN_EXCHANGES.len());
}

#[test]
fn deleting_an_exchange_if_unused_fails_while_it_is_the_source_of_a_binding() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "x", "k", FieldTable::new())?;
    let if_unused = DeleteExchangeOptions { if_unused: true };

    let err = conn.delete_exchange("x", if_unused).unwrap_err();
    assert!(matches!(err, DeleteError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.kind().reply_code(), 406);
    assert_eq!(err.to_string(), "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use");
    assert_eq!(conn.publish("x", "k", Message::new("m"))?.queues(), 1, "the exchange still routes");

    conn.unbind_queue("q", "x", "k", None)?;
    conn.delete_exchange("x", if_unused)?;
    assert!(!broker.exchange_names().iter().any(|n| n == "x"));
    Ok(())
}

#[test]
fn deleting_an_exchange_if_unused_ignores_bindings_that_lead_to_it() -> TestResult {
    // RabbitMQ's if_unused looks at the bindings whose source is the exchange.
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("dest", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.bind_exchange("dest", "amq.fanout", "", FieldTable::new())?;
    conn.delete_exchange("dest", DeleteExchangeOptions { if_unused: true })?;
    assert!(!broker.exchange_names().iter().any(|n| n == "dest"));
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    Ok(())
}

#[test]
fn deleting_an_exchange_removes_its_bindings_in_both_directions() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("up", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_exchange("mid", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_exchange("mid", "up", "", FieldTable::new())?;
    conn.bind_queue("q", "mid", "", FieldTable::new())?;
    assert_eq!(conn.publish("up", "", Message::new("m"))?.queues(), 1);

    conn.delete_exchange("mid", DeleteExchangeOptions::default())?;
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    assert_eq!(conn.publish("up", "", Message::new("m"))?.queues(), 0);
    // "up" lost its only binding, so it is unused now.
    conn.delete_exchange("up", DeleteExchangeOptions { if_unused: true })?;

    // A new "mid" starts without bindings.
    conn.declare_exchange("mid", ExchangeKind::Fanout, ExchangeOptions::default())?;
    assert_eq!(conn.publish("mid", "", Message::new("m"))?.queues(), 0);
    assert_eq!(broker.queue_stats("q").map(|s| s.messages_ready).ok(), Some(1));
    Ok(())
}

/// As in RabbitMQ since 3.2 (`exchange.delete` of a missing exchange answers
/// `delete-ok`), and as `delete_exchange` documents.
#[test]
fn deleting_a_missing_exchange_succeeds() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.delete_exchange("nope", DeleteExchangeOptions::default())?;
    conn.delete_exchange("nope", DeleteExchangeOptions { if_unused: true })?;
    assert!(!broker.exchange_names().iter().any(|n| n == "nope"), "deleting creates nothing");

    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.delete_exchange("x", DeleteExchangeOptions::default())?;
    conn.delete_exchange("x", DeleteExchangeOptions::default())?;
    assert_eq!(broker.exchange_names().len(), BUILT_IN_EXCHANGES.len());
    Ok(())
}

// ----- bindings --------------------------------------------------------------

#[test]
fn binding_to_or_from_the_default_exchange_is_access_refused() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    let errors = [
        conn.bind_queue("q", "", "q", FieldTable::new()).unwrap_err(),
        conn.unbind_queue("q", "", "q", None).unwrap_err(),
        conn.bind_exchange("x", "", "k", FieldTable::new()).unwrap_err(),
        conn.bind_exchange("", "x", "k", FieldTable::new()).unwrap_err(),
        conn.unbind_exchange("", "x", "k", None).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, BindError::AccessRefused(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::AccessRefused);
        assert_eq!(err.kind().reply_code(), 403);
        assert_eq!(err.to_string(), "ACCESS_REFUSED - operation not permitted on the default exchange");
    }
    assert!(broker.bindings().is_empty());
    Ok(())
}

#[test]
fn binding_a_missing_queue_or_exchange_is_not_found() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default())?;
    let errors = [
        conn.bind_queue("missing", "x", "", FieldTable::new()).unwrap_err(),
        conn.bind_queue("q", "missing", "", FieldTable::new()).unwrap_err(),
        conn.bind_exchange("missing", "x", "", FieldTable::new()).unwrap_err(),
        conn.bind_exchange("x", "missing", "", FieldTable::new()).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, BindError::NotFound(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.kind().reply_code(), 404);
        assert!(err.to_string().contains("'missing' in vhost '/'"), "{err}");
    }
    assert!(broker.bindings().is_empty());
    assert!(!broker.exchange_names().iter().any(|n| n == "missing"));
    assert!(!queue_exists(&broker, "missing"));
    Ok(())
}

#[test]
fn bindings_lists_every_binding_and_reflects_unbinds() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("x", ExchangeKind::Headers, ExchangeOptions::default())?;
    conn.declare_exchange("y", ExchangeKind::Direct, ExchangeOptions::default())?;
    conn.declare_queue("q1", QueueOptions::default())?;
    conn.declare_queue("q2", QueueOptions::default())?;
    assert!(broker.bindings().is_empty(), "the default exchange's implicit bindings are not listed");

    let args = FieldTable::from([("x-match", "any")]).with("region", "eu");
    conn.bind_queue("q2", "x", "", args.clone())?;
    conn.bind_queue("q1", "y", "b", FieldTable::new())?;
    conn.bind_queue("q1", "y", "a", FieldTable::new())?;
    conn.bind_queue("q1", "y", "a", FieldTable::new())?; // binding twice is harmless
    conn.bind_exchange("y", "x", "", FieldTable::from([("x-match", "all")]))?;

    assert_eq!(
        binding_triples(&broker),
        [triple("x", "q2", ""), triple("x", "y", ""), triple("y", "q1", "a"), triple("y", "q1", "b")]
    );
    let listed = broker.bindings();
    assert_eq!(listed[0].arguments, args);
    assert!(!listed[0].destination_is_exchange);
    assert!(listed[1].destination_is_exchange);
    assert_eq!(listed[1].arguments, FieldTable::from([("x-match", "all")]));
    assert!(listed[2].arguments.is_empty());

    conn.unbind_queue("q1", "y", "a", None)?;
    // Other arguments name another binding: nothing is removed.
    conn.unbind_queue("q2", "x", "", None)?;
    assert_eq!(
        binding_triples(&broker),
        [triple("x", "q2", ""), triple("x", "y", ""), triple("y", "q1", "b")]
    );
    conn.unbind_queue("q2", "x", "", Some(&args))?;
    conn.unbind_exchange("y", "x", "", Some(&FieldTable::from([("x-match", "all")])))?;
    assert_eq!(binding_triples(&broker), [triple("y", "q1", "b")]);
    assert_eq!(conn.publish("y", "a", Message::new("m"))?.queues(), 0);
    assert_eq!(conn.publish("y", "b", Message::new("m"))?.queues(), 1);
    Ok(())
}

// ----- purge -----------------------------------------------------------------

#[test]
fn purging_a_queue_removes_ready_messages_only_and_returns_the_count() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    for body in ["first", "second", "third"] {
        conn.publish("", "q", Message::new(body))?;
    }
    let unacked = conn.get("q", false)?.expect("a ready message");
    assert_eq!(unacked.body().as_ref(), b"first");

    assert_eq!(conn.purge_queue("q")?, 2);
    let stats = conn.queue_stats("q")?;
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 1));
    assert_eq!(conn.purge_queue("q")?, 0);

    unacked.nack(true)?;
    assert_eq!(conn.queue_stats("q")?.messages_ready, 1, "the unacked message survived the purge");
    let again = conn.get("q", true)?.expect("the requeued message");
    assert_eq!(again.body().as_ref(), b"first");
    assert!(again.redelivered());
    assert!(conn.get("q", true)?.is_none());
    Ok(())
}

#[test]
fn purging_a_missing_queue_is_not_found() {
    let err = Broker::new().connect().purge_queue("nope").unwrap_err();
    assert!(matches!(err, DeleteError::NotFound(_)), "{err:?}");
    assert_eq!(err.kind().reply_code(), 404);
}

// ----- exclusive queues ------------------------------------------------------

#[test]
fn an_exclusive_queue_is_locked_for_other_connections() -> TestResult {
    let broker = Broker::new();
    let owner = broker.connect();
    let other = broker.connect();
    owner.declare_queue("excl", exclusive())?;
    owner.publish("", "excl", Message::new("m"))?;

    let consume = other.consume("excl", ConsumeOptions::default()).unwrap_err();
    let get = other.get("excl", true).unwrap_err();
    let stats = other.queue_stats("excl").unwrap_err();
    for err in [consume, get, stats] {
        assert!(matches!(err, ConsumeError::ResourceLocked { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::ResourceLocked);
        assert_eq!(err.kind().reply_code(), 405);
        assert_eq!(
            err.to_string(),
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. \
             It could be originally declared on another connection or the exclusive property value \
             does not match that of the original declaration."
        );
    }

    let purge = other.purge_queue("excl").unwrap_err();
    let delete = other.delete_queue("excl", DeleteQueueOptions::default()).unwrap_err();
    for err in [purge, delete] {
        assert!(matches!(err, DeleteError::ResourceLocked { .. }), "{err:?}");
        assert_eq!(err.kind().reply_code(), 405);
    }

    let bind = other.bind_queue("excl", "amq.fanout", "", FieldTable::new()).unwrap_err();
    let unbind = other.unbind_queue("excl", "amq.fanout", "", None).unwrap_err();
    for err in [bind, unbind] {
        assert!(matches!(err, BindError::ResourceLocked { .. }), "{err:?}");
        assert_eq!(err.kind().reply_code(), 405);
    }

    let passive = other.declare_queue("excl", passive_queue()).unwrap_err();
    let redeclare = other.declare_queue("excl", exclusive()).unwrap_err();
    let redeclare_shared = other.declare_queue("excl", QueueOptions::default()).unwrap_err();
    for err in [passive, redeclare, redeclare_shared] {
        assert!(matches!(err, DeclareError::ResourceLocked { .. }), "{err:?}");
        assert_eq!(err.kind().reply_code(), 405);
    }

    // Nothing was taken, purged or deleted; the owner still has full use.
    assert_eq!(owner.queue_stats("excl")?.messages_ready, 1);
    assert_eq!(owner.declare_queue("excl", exclusive())?, "excl");
    assert_eq!(owner.declare_queue("excl", passive_queue())?, "excl");
    owner.bind_queue("excl", "amq.fanout", "", FieldTable::new())?;
    assert_eq!(owner.get("excl", true)?.map(|d| d.body().clone()), Some("m".into()));
    Ok(())
}

#[test]
fn publishing_to_an_exclusive_queue_from_another_connection_works() -> TestResult {
    let broker = Broker::new();
    let owner = broker.connect();
    let other = broker.connect();
    owner.declare_queue("excl", exclusive())?;
    owner.bind_queue("excl", "amq.direct", "k", FieldTable::new())?;
    assert_eq!(other.publish("", "excl", Message::new("direct"))?.queues(), 1);
    assert_eq!(other.publish("amq.direct", "k", Message::new("bound"))?.queues(), 1);
    assert_eq!(owner.queue_stats("excl")?.messages_ready, 2);
    Ok(())
}

#[test]
fn an_exclusive_queue_is_deleted_when_its_connection_is_dropped() -> TestResult {
    let broker = Broker::new();
    let owner = broker.connect();
    let other = broker.connect();
    owner.declare_queue("excl", exclusive())?;
    owner.bind_queue("excl", "amq.fanout", "", FieldTable::new())?;
    owner.declare_queue("shared", QueueOptions::default())?;

    drop(owner);
    assert!(!queue_exists(&broker, "excl"));
    assert!(queue_exists(&broker, "shared"), "only exclusive queues go with the connection");
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    assert_eq!(other.publish("amq.fanout", "", Message::new("m"))?.queues(), 0);
    // The name is free again.
    assert_eq!(other.declare_queue("excl", exclusive())?, "excl");
    Ok(())
}

#[test]
fn an_exclusive_queue_is_deleted_when_its_connection_is_closed() -> TestResult {
    let broker = Broker::new();
    let owner = broker.connect();
    owner.declare_queue("excl", exclusive())?;
    let generated = owner.declare_queue("", exclusive())?;
    owner.close();
    assert!(!queue_exists(&broker, "excl"));
    assert!(!queue_exists(&broker, &generated));
    assert!(broker.queue_names().is_empty());
    Ok(())
}

// ----- auto-delete queues ----------------------------------------------------

#[test]
fn an_auto_delete_queue_survives_until_it_has_had_a_consumer() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("auto", auto_delete())?;
    conn.publish("", "auto", Message::new("m"))?;
    let delivery = conn.get("auto", false)?.expect("a message");
    delivery.ack()?;
    conn.purge_queue("auto")?;
    assert!(queue_exists(&broker, "auto"), "never had a consumer, so it stays");
    Ok(())
}

#[test]
fn an_auto_delete_queue_is_deleted_when_its_last_consumer_is_cancelled() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("auto", auto_delete())?;
    conn.bind_queue("auto", "amq.fanout", "", FieldTable::new())?;
    let consumer = conn.consume("auto", ConsumeOptions::default())?;
    assert!(queue_exists(&broker, "auto"));
    consumer.cancel();
    assert!(!queue_exists(&broker, "auto"));
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    assert_eq!(conn.publish("amq.fanout", "", Message::new("m"))?.queues(), 0);
    Ok(())
}

#[test]
fn an_auto_delete_queue_with_two_consumers_survives_the_first_cancel() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("auto", auto_delete())?;
    let first = conn.consume("auto", ConsumeOptions::default())?;
    // A consumer on another connection counts as well.
    let elsewhere = broker.connect();
    let second = elsewhere.consume("auto", ConsumeOptions::default())?;
    assert_eq!(broker.queue_stats("auto").map(|s| s.consumers).ok(), Some(2));
    drop(first);
    assert!(queue_exists(&broker, "auto"));
    assert_eq!(broker.queue_stats("auto").map(|s| s.consumers).ok(), Some(1));
    drop(second);
    assert!(!queue_exists(&broker, "auto"));
    Ok(())
}

// ----- consumer tags ---------------------------------------------------------

#[test]
fn a_duplicate_consumer_tag_on_the_same_connection_is_tag_in_use() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q1", QueueOptions::default())?;
    conn.declare_queue("q2", QueueOptions::default())?;
    let first = conn.consume("q1", tagged("worker"))?;
    assert_eq!(first.tag(), "worker");

    // Tags are per connection (AMQP: per channel), whatever the queue.
    for queue in ["q1", "q2"] {
        let err = conn.consume(queue, tagged("worker")).unwrap_err();
        assert!(matches!(err, ConsumeError::TagInUse(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::NotAllowed);
        assert_eq!(err.kind().reply_code(), 530);
        assert_eq!(err.to_string(), "NOT_ALLOWED - attempt to reuse consumer tag 'worker'");
    }
    assert_eq!(broker.queue_stats("q1").map(|s| s.consumers).ok(), Some(1));
    assert_eq!(broker.queue_stats("q2").map(|s| s.consumers).ok(), Some(0));

    // Another connection may use the same tag, and a cancelled tag is free again.
    let elsewhere = broker.connect();
    let _other = elsewhere.consume("q1", tagged("worker"))?;
    drop(first);
    let again = conn.consume("q2", tagged("worker"))?;
    assert_eq!(again.tag(), "worker");
    Ok(())
}

#[test]
fn generated_consumer_tags_start_with_amq_ctag() -> TestResult {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let a = conn.consume("q", ConsumeOptions::default())?;
    let b = conn.consume("q", ConsumeOptions::default())?;
    for tag in [a.tag(), b.tag()] {
        assert!(tag.starts_with("amq.ctag-") && tag.len() > "amq.ctag-".len(), "{tag}");
    }
    assert_ne!(a.tag(), b.tag());
    assert_eq!(a.queue(), "q");
    Ok(())
}

// ----- introspection ---------------------------------------------------------

#[test]
fn queue_stats_track_ready_unacknowledged_and_consumers() -> TestResult {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let counts = |name: &str| -> Result<(usize, usize, usize), Box<dyn Error>> {
        let seen = conn.queue_stats(name)?;
        let global = broker.queue_stats(name)?;
        assert_eq!(seen, global, "connection and broker disagree");
        assert_eq!(seen.name, name);
        Ok((seen.messages_ready, seen.messages_unacknowledged, seen.consumers))
    };
    assert_eq!(counts("q")?, (0, 0, 0));

    for body in ["1", "2", "3"] {
        conn.publish("", "q", Message::new(body))?;
    }
    assert_eq!(counts("q")?, (3, 0, 0));

    let got = conn.get("q", false)?.expect("message 1");
    assert_eq!(counts("q")?, (2, 1, 0));

    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    assert_eq!(counts("q")?, (1, 2, 1), "prefetch 1 takes one message");

    let delivery = consumer.recv_timeout(Duration::from_secs(10))?;
    assert_eq!(delivery.body().as_ref(), b"2");
    assert_eq!(counts("q")?, (1, 2, 1));
    delivery.ack()?;
    assert_eq!(counts("q")?, (0, 2, 1), "the ack frees credit for message 3");

    got.ack()?;
    assert_eq!(counts("q")?, (0, 1, 1));
    consumer.recv_timeout(Duration::from_secs(10))?.ack()?;
    assert_eq!(counts("q")?, (0, 0, 1));
    drop(consumer);
    assert_eq!(counts("q")?, (0, 0, 0));

    assert!(broker.queue_stats("missing").is_err());
    let err = conn.queue_stats("missing").unwrap_err();
    assert!(matches!(err, ConsumeError::NotFound(_)), "{err:?}");
    Ok(())
}

// ----- topology changes under load -------------------------------------------

#[test]
fn changing_bindings_while_publishing_routes_each_message_to_at_most_one_queue() -> TestResult {
    const ROUNDS: usize = 500;
    const MAX_PUBLISHES: usize = 200_000;
    let broker = Broker::new();
    let setup = broker.connect();
    setup.declare_exchange("t", ExchangeKind::Topic, ExchangeOptions::default())?;
    setup.declare_queue("q", QueueOptions::default())?;

    let done = AtomicBool::new(false);
    let routed_total = AtomicUsize::new(0);
    let start = Barrier::new(2);
    std::thread::scope(|scope| -> TestResult {
        let topology = scope.spawn(|| -> Result<(), String> {
            let conn = broker.connect();
            start.wait();
            let result = (|| -> Result<(), Box<dyn Error>> {
                for round in 0..ROUNDS {
                    let side = format!("side-{}", round % 4);
                    conn.declare_queue("q", QueueOptions::default())?;
                    conn.declare_exchange(&side, ExchangeKind::Fanout, ExchangeOptions::default())?;
                    // Several paths to the same queue: still one copy.
                    for key in ["a.b", "a.*", "#"] {
                        conn.bind_queue("q", "t", key, FieldTable::new())?;
                    }
                    conn.bind_exchange(&side, "t", "a.#", FieldTable::new())?;
                    conn.bind_queue("q", &side, "", FieldTable::new())?;
                    for key in ["a.b", "a.*", "#"] {
                        conn.unbind_queue("q", "t", key, None)?;
                    }
                    if round % 2 == 0 {
                        conn.unbind_exchange(&side, "t", "a.#", None)?;
                    }
                    conn.delete_exchange(&side, DeleteExchangeOptions::default())?;
                }
                Ok(())
            })();
            done.store(true, Ordering::Release);
            result.map_err(|e| e.to_string())
        });
        let publisher = scope.spawn(|| -> Result<usize, String> {
            let conn = broker.connect();
            start.wait();
            let mut published = 0;
            while published < MAX_PUBLISHES && !done.load(Ordering::Acquire) {
                let routed = conn.publish("t", "a.b", Message::new("m")).map_err(|e| e.to_string())?;
                assert!(routed.queues() <= 1, "routed to {} queues", routed.queues());
                routed_total.fetch_add(routed.queues(), Ordering::Relaxed);
                published += 1;
            }
            Ok(published)
        });
        topology.join().expect("topology thread panicked")?;
        publisher.join().expect("publisher thread panicked")?;
        Ok(())
    })?;

    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    assert_eq!(setup.publish("t", "a.b", Message::new("m"))?.queues(), 0);
    assert_eq!(
        broker.queue_stats("q").map(|s| s.messages_ready).ok(),
        Some(routed_total.load(Ordering::Relaxed)),
        "every routed message is in the queue exactly once"
    );
    Ok(())
}

#[test]
fn deleting_and_redeclaring_a_queue_while_publishing_routes_each_message_to_at_most_one_queue() -> TestResult
{
    const ROUNDS: usize = 500;
    const MAX_PUBLISHES: usize = 200_000;
    let broker = Broker::new();
    let done = AtomicBool::new(false);
    let start = Barrier::new(2);
    std::thread::scope(|scope| -> TestResult {
        let topology = scope.spawn(|| -> Result<(), String> {
            let conn = broker.connect();
            start.wait();
            let result = (|| -> Result<(), Box<dyn Error>> {
                for _ in 0..ROUNDS {
                    conn.declare_queue("q", QueueOptions::default())?;
                    conn.bind_queue("q", "amq.direct", "q", FieldTable::new())?;
                    conn.bind_queue("q", "amq.fanout", "", FieldTable::new())?;
                    conn.delete_queue("q", DeleteQueueOptions::default())?;
                }
                Ok(())
            })();
            done.store(true, Ordering::Release);
            result.map_err(|e| e.to_string())
        });
        let publisher = scope.spawn(|| -> Result<(), String> {
            let conn = broker.connect();
            start.wait();
            let mut published = 0;
            while published < MAX_PUBLISHES && !done.load(Ordering::Acquire) {
                for exchange in ["", "amq.direct", "amq.fanout"] {
                    let routed = conn.publish(exchange, "q", Message::new("m")).map_err(|e| e.to_string())?;
                    assert!(routed.queues() <= 1, "{exchange:?} routed to {} queues", routed.queues());
                    published += 1;
                }
            }
            Ok(())
        });
        topology.join().expect("topology thread panicked")?;
        publisher.join().expect("publisher thread panicked")?;
        Ok(())
    })?;
    assert!(broker.queue_names().is_empty());
    assert!(broker.bindings().is_empty(), "{:?}", broker.bindings());
    Ok(())
}
