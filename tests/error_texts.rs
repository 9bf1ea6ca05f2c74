//! Error texts worded as RabbitMQ words them: each expected string below was
//! read off a real RabbitMQ 3.10.8 (through pika) for the same operation.

use interoffice::{
    Broker, ConsumeOptions, DeleteExchangeOptions, DeleteQueueOptions, ExchangeKind, ExchangeOptions,
    FieldTable, Message, QueueOptions,
};

#[test]
fn texts_match_rabbitmq() {
    let broker = Broker::new();
    let conn = broker.connect();
    let other = broker.connect();
    let text = |e: &dyn std::fmt::Display| e.to_string();

    assert_eq!(
        text(&conn.publish("nope", "k", Message::new("x")).unwrap_err()),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    conn.declare_exchange(
        "intx",
        ExchangeKind::Fanout,
        ExchangeOptions { internal: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(
        text(&conn.publish("intx", "k", Message::new("x")).unwrap_err()),
        "ACCESS_REFUSED - cannot publish to internal exchange 'intx' in vhost '/'"
    );

    other.declare_queue("exq", QueueOptions { exclusive: true, ..Default::default() }).unwrap();
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'exq' in vhost '/'. \
                  It could be originally declared on another connection or the exclusive property value \
                  does not match that of the original declaration.";
    assert_eq!(text(&conn.consume("exq", ConsumeOptions::default()).unwrap_err()), locked);
    assert_eq!(text(&conn.declare_queue("exq", QueueOptions::default()).unwrap_err()), locked);
    assert_eq!(text(&conn.delete_queue("exq", DeleteQueueOptions::default()).unwrap_err()), locked);
    assert_eq!(text(&conn.purge_queue("exq").unwrap_err()), locked);
    assert_eq!(text(&conn.bind_queue("exq", "amq.direct", "k", FieldTable::new()).unwrap_err()), locked);

    conn.declare_queue("full", QueueOptions::default()).unwrap();
    conn.publish("", "full", Message::new("x")).unwrap();
    let if_empty = DeleteQueueOptions { if_empty: true, ..Default::default() };
    assert_eq!(
        text(&conn.delete_queue("full", if_empty).unwrap_err()),
        "PRECONDITION_FAILED - queue 'full' in vhost '/' not empty"
    );
    let _consumer = conn.consume("full", ConsumeOptions::default()).unwrap();
    let if_unused = DeleteQueueOptions { if_unused: true, ..Default::default() };
    assert_eq!(
        text(&conn.delete_queue("full", if_unused).unwrap_err()),
        "PRECONDITION_FAILED - queue 'full' in vhost '/' in use"
    );
    let max5 = || QueueOptions { arguments: FieldTable::from([("x-max-length", 5)]), ..Default::default() };
    assert_eq!(
        text(&conn.declare_queue("full", max5()).unwrap_err()),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'full' in vhost '/': \
         received the value '5' of type 'signedint' but current is none"
    );
    conn.declare_queue("ml", max5()).unwrap();
    assert_eq!(
        text(&conn.declare_queue("ml", QueueOptions::default()).unwrap_err()),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'ml' in vhost '/': \
         received none but current is the value '5' of type 'signedint'"
    );
    assert_eq!(
        text(
            &conn
                .declare_queue("ml", QueueOptions { max_length: Some(20), ..Default::default() })
                .unwrap_err()
        ),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'ml' in vhost '/': \
         received '20' but current is '5'"
    );

    conn.declare_exchange("ae1", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    conn.bind_queue("ml", "ae1", "", FieldTable::new()).unwrap();
    assert_eq!(
        text(&conn.delete_exchange("ae1", DeleteExchangeOptions { if_unused: true }).unwrap_err()),
        "PRECONDITION_FAILED - exchange 'ae1' in vhost '/' in use"
    );
    assert_eq!(
        text(&conn.declare_exchange("ae1", ExchangeKind::Direct, ExchangeOptions::default()).unwrap_err()),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ae1' in vhost '/': \
         received 'direct' but current is 'fanout'"
    );
    let with_ae = ExchangeOptions { alternate_exchange: Some("z".into()), ..Default::default() };
    assert_eq!(
        text(&conn.declare_exchange("ae1", ExchangeKind::Fanout, with_ae).unwrap_err()),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'ae1' in vhost '/': \
         received the value 'z' of type 'longstr' but current is none"
    );
    assert_eq!(
        text(
            &conn.declare_exchange("amq.foo", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap_err()
        ),
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    );
    assert_eq!(
        text(&conn.delete_exchange("amq.direct", DeleteExchangeOptions::default()).unwrap_err()),
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
    assert_eq!(
        text(&conn.bind_queue("ml", "", "k", FieldTable::new()).unwrap_err()),
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    assert_eq!(
        text(&conn.declare_queue("amq.q", QueueOptions::default()).unwrap_err()),
        "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'"
    );
    assert_eq!(
        text(&conn.declare_queue("nope", QueueOptions { passive: true, ..Default::default() }).unwrap_err()),
        "NOT_FOUND - no queue 'nope' in vhost '/'"
    );
    assert_eq!(
        text(&conn.bind_queue("ml", "nope", "k", FieldTable::new()).unwrap_err()),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    let _plain = conn.consume("ml", ConsumeOptions::default()).unwrap();
    assert_eq!(
        text(&conn.consume("ml", ConsumeOptions { exclusive: true, ..Default::default() }).unwrap_err()),
        "ACCESS_REFUSED - queue 'ml' in vhost '/' in exclusive use"
    );
}

/// Invalid arguments: RabbitMQ's reason first (read off RabbitMQ 3.10.8),
/// then, where it helps, what was given.
#[test]
fn invalid_argument_texts_start_as_rabbitmqs() {
    let conn = Broker::new().connect();
    let declare = |args: FieldTable| {
        conn.declare_queue("q2", QueueOptions { arguments: args, ..Default::default() })
            .unwrap_err()
            .to_string()
    };
    let prefix =
        |arg: &str| format!("PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q2' in vhost '/': ");
    for (args, arg, reason) in [
        (FieldTable::from([("x-overflow", "drop-tail")]), "x-overflow", "invalid_overflow"),
        (FieldTable::from([("x-max-length", -1)]), "x-max-length", "{value_negative,-1}"),
        (FieldTable::from([("x-message-ttl", -1)]), "x-message-ttl", "{value_negative,-1}"),
        (FieldTable::from([("x-expires", 0)]), "x-expires", "{value_zero,0}"),
        (FieldTable::from([("x-max-priority", 256)]), "x-max-priority", "{max_value_exceeded,256}"),
        (
            FieldTable::from([("x-dead-letter-routing-key", "k")]),
            "x-dead-letter-routing-key",
            "routing_key_but_no_dlx_defined",
        ),
        (
            FieldTable::from([("x-single-active-consumer", "yes")]),
            "x-single-active-consumer",
            "{unacceptable_type,longstr}",
        ),
        (FieldTable::from([("x-expires", "1000")]), "x-expires", "expected integer, got longstr"),
        (
            FieldTable::from([("x-message-ttl", 1_099_511_627_776_i64)]),
            "x-message-ttl",
            "{value_too_large,1099511627776}",
        ),
    ] {
        let text = declare(args);
        assert!(text.starts_with(&format!("{}{reason}", prefix(arg))), "{text}");
    }
    conn.declare_exchange("hx", ExchangeKind::Headers, ExchangeOptions::default()).unwrap();
    conn.declare_queue("tq", QueueOptions::default()).unwrap();
    let err = conn.bind_queue("tq", "hx", "", FieldTable::from([("x-match", "foo")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"PRECONDITION_FAILED - Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x"#
    );
}

#[test]
fn invalid_expiration_texts_match_rabbitmq() {
    let conn = Broker::new().connect();
    conn.declare_queue("tq", QueueOptions::default()).unwrap();
    for (expiration, text) in [
        ("abc", "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"),
        (
            "1099511627776",
            "PRECONDITION_FAILED - invalid expiration '1099511627776': {value_too_large,1099511627776}",
        ),
    ] {
        let mut message = Message::new("x");
        message.properties_mut().set_expiration(expiration);
        assert_eq!(conn.publish("", "tq", message).unwrap_err().to_string(), text);
    }
}
