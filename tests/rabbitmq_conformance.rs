//! Corners where interoffice used to differ from RabbitMQ (found by
//! replaying outcomes recorded from a real RabbitMQ), each now matching it:
//! timestamps in headers bindings, sender-selected distribution (`CC`,
//! `BCC`), `alternate-exchange` as an argument, quorum queues.

use interoffice::{
    Broker, ConsumeOptions, DeclareError, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Message,
    PublishError, PublishOptions, QueueOptions, QueueType,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn queues(conn: &interoffice::Connection, names: &[&str]) -> Result {
    for name in names {
        conn.declare_queue(name, QueueOptions::default())?;
    }
    Ok(())
}

fn ready(broker: &Broker, name: &str) -> usize {
    broker.queue_stats(name).map_or(0, |s| s.messages_ready)
}

#[test]
fn a_timestamp_header_matches_an_integer_binding_and_the_reverse() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("h", ExchangeKind::Headers, ExchangeOptions::default())?;
    queues(&conn, &["by-int", "by-ts"])?;
    conn.bind_queue("by-int", "h", "", FieldTable::from([("at", FieldValue::I64(1_700_000_000))]))?;
    conn.bind_queue("by-ts", "h", "", FieldTable::from([("at", FieldValue::Timestamp(1_700_000_001))]))?;
    conn.publish("h", "", Message::new("a").with_header("at", FieldValue::Timestamp(1_700_000_000)))?;
    conn.publish("h", "", Message::new("b").with_header("at", FieldValue::I32(1_700_000_001)))?;
    conn.publish("h", "", Message::new("c").with_header("at", FieldValue::from("1700000000")))?;
    assert_eq!((ready(&broker, "by-int"), ready(&broker, "by-ts")), (1, 1));
    Ok(())
}

#[test]
fn cc_and_bcc_route_as_extra_keys_and_bcc_is_removed() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("d", ExchangeKind::Direct, ExchangeOptions::default())?;
    queues(&conn, &["a", "b", "c", "dlq"])?;
    for (q, key) in [("a", "ka"), ("b", "kb"), ("c", "kc")] {
        conn.bind_queue(q, "d", key, FieldTable::new())?;
    }
    let message = Message::new("m")
        .with_header("CC", vec![FieldValue::from("kb"), FieldValue::I32(7), FieldValue::from("ka")])
        .with_header("BCC", vec![FieldValue::from("kc")]);
    let routed = conn.publish("d", "ka", message)?;
    assert_eq!(routed.queues(), 3, "each queue once, however many keys reach it");
    for q in ["a", "b", "c"] {
        let d = conn.get(q, true)?.expect("routed");
        assert!(d.header("BCC").is_none(), "BCC never reaches a queue");
        assert!(d.header("CC").is_some(), "CC stays");
        assert_eq!(d.routing_key(), "ka");
    }
    // Only CC: the publish key itself may route nowhere.
    let only_cc = Message::new("m").with_header("CC", vec![FieldValue::from("kb")]);
    assert_eq!(conn.publish_with("d", "none", only_cc, PublishOptions { mandatory: true })?.queues(), 1);
    // A CC that is not an array is refused, the message handed back.
    let bad = Message::new("m").with_header("CC", "kb");
    match conn.publish("d", "ka", bad) {
        Err(PublishError::InvalidHeader { header, message, .. }) => {
            assert_eq!(header, "CC");
            assert_eq!(message.body().as_ref(), b"m");
        }
        other => panic!("expected InvalidHeader, got {other:?}"),
    }
    Ok(())
}

#[test]
fn x_death_routing_keys_include_the_cc_keys() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("dlq", QueueOptions::default())?;
    let dlx = QueueOptions {
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("dlq".into()),
        ..Default::default()
    };
    conn.declare_queue("work", dlx)?;
    conn.publish("", "work", Message::new("m").with_header("CC", vec![FieldValue::from("elsewhere")]))?;
    conn.get("work", false)?.expect("ready").nack(false)?;
    let dead = conn.get("dlq", true)?.expect("dead-lettered");
    let death = dead.header("x-death").and_then(FieldValue::as_array).unwrap()[0].as_table().unwrap();
    let keys: Vec<&str> = death
        .get("routing-keys")
        .and_then(FieldValue::as_array)
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["work", "elsewhere"]);
    Ok(())
}

#[test]
fn alternate_exchange_as_an_argument_is_honoured_like_the_field() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("unrouted", ExchangeKind::Fanout, ExchangeOptions::default())?;
    queues(&conn, &["lost"])?;
    conn.bind_queue("lost", "unrouted", "", FieldTable::new())?;
    let by_arg = ExchangeOptions {
        arguments: FieldTable::from([("alternate-exchange", "unrouted")]),
        ..Default::default()
    };
    conn.declare_exchange("orders", ExchangeKind::Direct, by_arg.clone())?;
    conn.publish("orders", "nobody", Message::new("m"))?;
    assert_eq!(ready(&broker, "lost"), 1);
    // The two forms are the same declaration.
    let by_field = ExchangeOptions { alternate_exchange: Some("unrouted".into()), ..Default::default() };
    conn.declare_exchange("orders", ExchangeKind::Direct, by_field)?;
    conn.declare_exchange("orders", ExchangeKind::Direct, by_arg)?;
    // A conflict between them is refused.
    let conflict = ExchangeOptions {
        alternate_exchange: Some("a".into()),
        arguments: FieldTable::from([("alternate-exchange", "b")]),
        ..Default::default()
    };
    let err = conn.declare_exchange("other", ExchangeKind::Direct, conflict).unwrap_err();
    assert!(matches!(&err, DeclareError::PreconditionFailed(t) if t.contains("alternate-exchange")), "{err}");
    let unknown = ExchangeOptions { arguments: FieldTable::from([("x-foo", 1)]), ..Default::default() };
    assert!(conn.declare_exchange("other", ExchangeKind::Direct, unknown).is_err());
    Ok(())
}

fn quorum() -> QueueOptions {
    QueueOptions { durable: true, queue_type: QueueType::Quorum, ..Default::default() }
}

#[test]
fn a_quorum_queue_requeues_to_the_back_and_counts_deliveries() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", quorum())?;
    for body in ["a", "b", "c"] {
        conn.publish("", "q", Message::new(body))?;
    }
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let a = consumer.recv()?;
    assert!(a.header("x-delivery-count").is_none(), "no count on a first delivery");
    a.nack(true)?;
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = consumer.recv()?;
        order.push((d.body().clone(), d.header("x-delivery-count").and_then(FieldValue::as_i64)));
        d.ack()?;
    }
    assert_eq!(order, [("b".into(), None), ("c".into(), None), ("a".into(), Some(1))]);
    Ok(())
}

#[test]
fn quorum_queues_are_declared_as_rabbitmq_allows() -> Result {
    let conn = Broker::new().connect();
    let by_arg = QueueOptions {
        durable: true,
        arguments: FieldTable::from([("x-queue-type", "quorum")]),
        ..Default::default()
    };
    conn.declare_queue("q", by_arg)?;
    conn.declare_queue("q", quorum())?;
    let classic = QueueOptions { durable: true, ..Default::default() };
    assert!(conn.declare_queue("q", classic).is_err(), "another type is inequivalent");
    for refused in [
        QueueOptions { durable: false, ..quorum() },
        QueueOptions { exclusive: true, ..quorum() },
        QueueOptions { auto_delete: true, ..quorum() },
        QueueOptions { max_priority: Some(5), ..quorum() },
    ] {
        assert!(conn.declare_queue("r", refused.clone()).is_err(), "{refused:?}");
    }
    Ok(())
}

/// Seen on RabbitMQ 3.10.8: a dead letter without a dead-letter routing key
/// is re-routed with all its original routing keys, its `CC` keys included.
#[test]
fn a_dead_letter_is_re_routed_with_its_cc_keys_too() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("dlx", ExchangeKind::Direct, ExchangeOptions::default())?;
    queues(&conn, &["by-key", "by-cc"])?;
    conn.bind_queue("by-key", "dlx", "w", FieldTable::new())?;
    conn.bind_queue("by-cc", "dlx", "cc1", FieldTable::new())?;
    conn.declare_queue("w", QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() })?;
    conn.publish("", "w", Message::new("m").with_header("CC", vec![FieldValue::from("cc1")]))?;
    conn.get("w", false)?.expect("ready").nack(false)?;
    assert_eq!((ready(&broker, "by-key"), ready(&broker, "by-cc")), (1, 1));
    // With a dead-letter routing key, that key alone.
    let fixed = QueueOptions {
        dead_letter_exchange: Some("dlx".into()),
        dead_letter_routing_key: Some("w".into()),
        ..Default::default()
    };
    conn.declare_queue("w2", fixed)?;
    conn.publish("", "w2", Message::new("m").with_header("CC", vec![FieldValue::from("cc1")]))?;
    conn.get("w2", false)?.expect("ready").nack(false)?;
    assert_eq!((ready(&broker, "by-key"), ready(&broker, "by-cc")), (2, 1));
    Ok(())
}

/// `CC` keys travel with the message through exchange-to-exchange
/// bindings, and an exchange decides once, for all keys, whether to use its
/// alternate exchange (RabbitMQ 3.10.8, checked on the local broker; found
/// by `tests/rabbitmq_differential.rs`).
#[test]
fn all_routing_keys_are_matched_together_at_every_exchange() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("e0", ExchangeKind::Topic, ExchangeOptions::default())?;
    conn.declare_exchange("e1", ExchangeKind::Topic, ExchangeOptions::default())?;
    queues(&conn, &["q", "lost"])?;
    conn.bind_exchange("e1", "e0", "a", None)?;
    conn.bind_queue("q", "e1", "b", None)?;
    // Key `a` leads to e1; there key `b`, from CC, matches.
    let cc = FieldTable::from([("CC", FieldValue::Array(vec![FieldValue::from("b")]))]);
    assert_eq!(conn.publish("e0", "a", Message::new("m").with_headers(cc))?.queues(), 1);
    assert_eq!(ready(&broker, "q"), 1);

    conn.declare_exchange("unrouted", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.bind_queue("lost", "unrouted", "", None)?;
    let with_ae = ExchangeOptions { alternate_exchange: Some("unrouted".into()), ..Default::default() };
    conn.declare_exchange("front", ExchangeKind::Direct, with_ae)?;
    conn.bind_queue("q", "front", "known", None)?;
    // `other` matches nothing at 'front' but `known` does: no alternate.
    let cc = FieldTable::from([("CC", FieldValue::Array(vec![FieldValue::from("known")]))]);
    conn.publish("front", "other", Message::new("m").with_headers(cc))?;
    assert_eq!((ready(&broker, "q"), ready(&broker, "lost")), (2, 0));
    Ok(())
}
