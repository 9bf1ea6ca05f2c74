//! Typed messages: values encoded into bodies (bincode by default, MessagePack
//! and JSON behind features), the content type that says how, and decoding
//! that picks the codec by it. A body that does not decode is a typed error
//! that leaves the delivery unsettled, to be nacked or dead-lettered: never a
//! panic, never a lost message.

use std::collections::BTreeMap;

use interoffice::{
    Bincode, Broker, Codec, Connection, ConsumeOptions, DecodeError, EncodeError, Message, QueueOptions,
    TypedPublishError,
};
use serde::{Deserialize, Serialize};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Payment {
    Pending,
    Card { last4: String, amount_cents: u64 },
    Voucher(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    gift_wrap: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    lines: Vec<Line>,
    payment: Payment,
    discount_percent: Option<f64>,
    attributes: BTreeMap<String, i32>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Refund {
    order: u64,
    reason: String,
}

fn order() -> OrderPlaced {
    OrderPlaced {
        order: 42,
        customer: "Grace Hopper".into(),
        lines: vec![
            Line { sku: "TEA-01".into(), quantity: 2, gift_wrap: None },
            Line { sku: "MUG-07".into(), quantity: 1, gift_wrap: Some("blue".into()) },
        ],
        payment: Payment::Card { last4: "4242".into(), amount_cents: 1_999 },
        discount_percent: Some(12.5),
        attributes: BTreeMap::from([("loyalty".into(), 3), ("region".into(), -1)]),
    }
}

/// A connection with an empty queue `orders`.
fn setup() -> std::result::Result<(Broker, Connection), Box<dyn std::error::Error>> {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("orders", QueueOptions::default())?;
    Ok((broker, conn))
}

#[test]
fn a_struct_published_typed_is_consumed_and_decoded_equal_with_bincode() -> Result {
    let (_broker, conn) = setup()?;
    let routed = conn.publish_typed("", "orders", &order())?;
    assert_eq!(routed.queues(), 1);

    let consumer = conn.consume("orders", ConsumeOptions::default())?;
    let delivery = consumer.recv()?;
    assert_eq!(delivery.properties().content_type(), Some("application/x-bincode"));
    assert_eq!(delivery.decode::<OrderPlaced>()?, order());
    delivery.ack()?;
    Ok(())
}

#[test]
fn every_variant_of_a_nested_enum_survives_the_trip() -> Result {
    let (_broker, conn) = setup()?;
    let payments =
        [Payment::Pending, order().payment, Payment::Voucher(vec!["SPRING".into(), String::new()])];
    for payment in &payments {
        conn.publish_typed("", "orders", &OrderPlaced { payment: payment.clone(), ..order() })?;
    }
    let consumer = conn.consume("orders", ConsumeOptions::default())?;
    for payment in payments {
        let delivery = consumer.recv()?;
        assert_eq!(delivery.decode::<OrderPlaced>()?.payment, payment);
        delivery.ack()?;
    }
    Ok(())
}

#[test]
fn encoding_sets_the_content_type_and_leaves_other_properties_to_the_caller() -> Result {
    let msg = Message::encode(&order())?.with_message_id("order-42").with_priority(3);
    let properties = msg.properties();
    assert_eq!(properties.content_type(), Some(Bincode::CONTENT_TYPE));
    assert_eq!(properties.message_id(), Some("order-42"));
    assert_eq!(msg.body(), &Bincode::encode(&order())?);
    assert_eq!(Message::encode_with::<Bincode, _>(&order())?, Message::encode(&order())?);
    Ok(())
}

#[test]
fn a_malformed_body_is_a_typed_error_and_the_delivery_stays_unsettled_for_a_nack() -> Result {
    let (broker, conn) = setup()?;
    let garbage = Message::new(vec![0xff; 5]).with_content_type("application/x-bincode");
    conn.publish("", "orders", garbage)?;

    let consumer = conn.consume("orders", ConsumeOptions::default())?;
    let delivery = consumer.recv()?;
    let err = delivery.decode::<OrderPlaced>().unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed { content_type: "application/x-bincode", type_name, .. }
            if type_name.ends_with("OrderPlaced")),
        "{err:?}"
    );
    assert!(delivery.needs_settling());
    assert_eq!(broker.queue_stats("orders").unwrap().messages_unacknowledged, 1);

    delivery.nack(true)?;
    let again = consumer.recv()?;
    assert!(again.redelivered());
    assert_eq!(again.body().as_ref(), [0xff; 5]);
    again.reject(false)?;
    let stats = broker.queue_stats("orders").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn a_delivery_that_failed_to_decode_and_is_dropped_comes_back() -> Result {
    let (_broker, conn) = setup()?;
    conn.publish("", "orders", Message::new("{").with_content_type("application/x-bincode"))?;
    let consumer = conn.consume("orders", ConsumeOptions::default())?;
    {
        let delivery = consumer.recv()?;
        assert!(delivery.decode::<OrderPlaced>().is_err());
    }
    let again = consumer.recv()?;
    assert!(again.redelivered());
    assert_eq!(again.body().as_ref(), b"{");
    again.ack()?;
    Ok(())
}

#[test]
fn a_message_without_a_content_type_cannot_be_decoded_by_guess() -> Result {
    let (_broker, conn) = setup()?;
    conn.publish("", "orders", Message::new(Bincode::encode(&order())?))?;
    let delivery = conn.get("orders", false)?.ok_or("no message")?;
    assert_eq!(delivery.decode::<OrderPlaced>(), Err(DecodeError::MissingContentType));
    // The caller who knows the encoding says so.
    assert_eq!(delivery.decode_with::<Bincode, OrderPlaced>()?, order());
    delivery.ack()?;
    Ok(())
}

#[test]
fn an_unknown_content_type_is_unsupported_and_named_in_the_error() -> Result {
    let msg = Message::new("<order id='42'/>").with_content_type("application/xml");
    match msg.decode::<OrderPlaced>() {
        Err(DecodeError::UnsupportedContentType { content_type, hint: None }) => {
            assert_eq!(content_type, "application/xml");
        }
        other => panic!("expected an unsupported content type, got {other:?}"),
    }
    let shown = msg.decode::<OrderPlaced>().unwrap_err().to_string();
    assert!(shown.contains("application/xml"), "{shown}");
    Ok(())
}

#[test]
fn decoding_into_the_wrong_type_is_an_error_not_a_panic() -> Result {
    let refund = Message::encode(&Refund { order: 42, reason: "damaged in transit".into() })?;
    assert!(matches!(refund.decode::<OrderPlaced>(), Err(DecodeError::Malformed { .. })));
    assert!(matches!(refund.decode::<Vec<bool>>(), Err(DecodeError::Malformed { .. })));
    assert!(matches!(Message::encode(&order())?.decode::<Refund>(), Err(DecodeError::Malformed { .. })));
    assert!(matches!(Message::encode("")?.decode::<OrderPlaced>(), Err(DecodeError::Malformed { .. })));
    Ok(())
}

#[test]
fn bytes_after_a_bincode_value_make_the_body_malformed() -> Result {
    let mut body = Bincode::encode(&order())?.to_vec();
    body.push(0);
    let msg = Message::new(body).with_content_type("application/x-bincode");
    match msg.decode::<OrderPlaced>() {
        Err(DecodeError::Malformed { reason, .. }) => assert!(reason.contains("1 trailing byte"), "{reason}"),
        other => panic!("expected trailing bytes to be refused, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_value_the_codec_cannot_represent_is_an_encode_error_and_nothing_is_published() -> Result {
    /// A sequence whose length is not known up front, which bincode refuses.
    struct Unsized;
    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            serializer.collect_seq((0..3).filter(|n| n % 2 == 0))
        }
    }
    let (broker, conn) = setup()?;
    match conn.publish_typed("", "orders", &Unsized) {
        Err(TypedPublishError::Encode(EncodeError::Unencodable { content_type, type_name, .. })) => {
            assert_eq!(content_type, "application/x-bincode");
            assert!(type_name.ends_with("Unsized"), "{type_name}");
        }
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert_eq!(broker.queue_stats("orders").unwrap().messages_ready, 0);
    Ok(())
}

#[test]
fn a_typed_publish_that_fails_hands_the_encoded_message_back() -> Result {
    let (_broker, conn) = setup()?;
    match conn.publish_typed("no-such-exchange", "orders", &order()) {
        Err(TypedPublishError::Publish(err)) => {
            assert_eq!(err.into_message().decode::<OrderPlaced>()?, order());
        }
        other => panic!("expected a publish error, got {other:?}"),
    }
    Ok(())
}

#[cfg(feature = "json")]
mod json {
    use interoffice::Json;

    use super::*;

    #[test]
    fn a_json_message_is_decoded_by_its_content_type() -> Result {
        let (_broker, conn) = setup()?;
        let msg = Message::encode_with::<Json, _>(&order())?;
        assert_eq!(msg.properties().content_type(), Some("application/json"));
        assert!(std::str::from_utf8(msg.body())?.contains(r#""customer":"Grace Hopper""#));
        conn.publish("", "orders", msg)?;

        let consumer = conn.consume("orders", ConsumeOptions::default())?;
        let delivery = consumer.recv()?;
        assert_eq!(delivery.decode::<OrderPlaced>()?, order());
        delivery.ack()?;
        Ok(())
    }

    #[test]
    fn json_from_another_publisher_decodes_whatever_its_charset_parameter() -> Result {
        let body = r#"{"order": 7, "reason": "late"}"#;
        let msg = Message::new(body).with_content_type("application/json; charset=utf-8");
        assert_eq!(msg.decode::<Refund>()?, Refund { order: 7, reason: "late".into() });
        Ok(())
    }

    #[test]
    fn malformed_json_is_a_typed_error_and_the_delivery_can_be_nacked() -> Result {
        let (_broker, conn) = setup()?;
        conn.publish("", "orders", Message::new(r#"{"order": 7,"#).with_content_type("application/json"))?;
        let consumer = conn.consume("orders", ConsumeOptions::default())?;
        let delivery = consumer.recv()?;
        assert!(matches!(
            delivery.decode::<Refund>(),
            Err(DecodeError::Malformed { content_type: "application/json", .. })
        ));
        delivery.nack(true)?;
        assert!(consumer.recv()?.redelivered());
        Ok(())
    }
}

#[cfg(not(feature = "json"))]
#[test]
fn json_without_the_json_feature_says_which_feature_to_enable() {
    let msg = Message::new(r#"{"order": 7}"#).with_content_type("application/json");
    match msg.decode::<Refund>() {
        Err(DecodeError::UnsupportedContentType { hint: Some(hint), .. }) => {
            assert!(hint.contains("`json` feature"), "{hint}");
        }
        other => panic!("expected a hint to enable `json`, got {other:?}"),
    }
}

#[cfg(feature = "msgpack")]
mod msgpack {
    use interoffice::MsgPack;

    use super::*;

    #[test]
    fn a_msgpack_message_is_decoded_by_its_content_type() -> Result {
        let (_broker, conn) = setup()?;
        let msg = Message::encode_with::<MsgPack, _>(&order())?;
        assert_eq!(msg.properties().content_type(), Some("application/msgpack"));
        conn.publish("", "orders", msg)?;

        let consumer = conn.consume("orders", ConsumeOptions::default())?;
        let delivery = consumer.recv()?;
        assert_eq!(delivery.decode::<OrderPlaced>()?, order());
        delivery.ack()?;
        Ok(())
    }

    #[test]
    fn the_older_x_msgpack_content_type_is_read_too() -> Result {
        let body = MsgPack::encode(&order())?;
        let msg = Message::new(body).with_content_type("application/x-msgpack");
        assert_eq!(msg.decode::<OrderPlaced>()?, order());
        Ok(())
    }

    #[test]
    fn msgpack_decoded_as_bincode_is_malformed_not_misread() -> Result {
        let body = MsgPack::encode(&order())?;
        let mislabelled = Message::new(body).with_content_type("application/x-bincode");
        assert!(matches!(mislabelled.decode::<OrderPlaced>(), Err(DecodeError::Malformed { .. })));
        Ok(())
    }
}

#[cfg(not(feature = "msgpack"))]
#[test]
fn msgpack_without_the_msgpack_feature_says_which_feature_to_enable() {
    let msg = Message::new(vec![0x80]).with_content_type("application/msgpack");
    match msg.decode::<BTreeMap<String, u8>>() {
        Err(DecodeError::UnsupportedContentType { hint: Some(hint), .. }) => {
            assert!(hint.contains("`msgpack` feature"), "{hint}");
        }
        other => panic!("expected a hint to enable `msgpack`, got {other:?}"),
    }
}

#[cfg(feature = "json")]
#[test]
fn typed_publish_call_and_serve_work_with_any_codec() -> std::result::Result<(), Box<dyn std::error::Error>> {
    use interoffice::{Json, WorkerOptions};
    use std::time::Duration;
    let conn = interoffice::Broker::new().connect();
    conn.declare_queue("quotes", interoffice::QueueOptions::default())?;
    conn.declare_queue("log", interoffice::QueueOptions::default())?;
    let json = conn.typed::<Json>();
    let _server = json.serve("quotes", WorkerOptions::default(), |item: String| {
        Ok::<_, String>(format!("{item}: 12 EUR"))
    })?;
    let quote: String = json.call("", "quotes", "teapot", Duration::from_secs(5))?;
    assert_eq!(quote, "teapot: 12 EUR");
    json.publish("", "log", &vec![1, 2, 3])?;
    let logged = conn.get("log", true)?.expect("a message");
    assert_eq!(logged.properties().content_type(), Some("application/json"));
    assert_eq!(logged.body().as_ref(), b"[1,2,3]");
    // The bincode shortcut serves the same way.
    conn.declare_queue("double", interoffice::QueueOptions::default())?;
    let _double = conn.serve_typed("double", WorkerOptions::default(), |n: u32| Ok::<_, String>(n * 2))?;
    let doubled: u32 = conn.call_typed("", "double", &21_u32, Duration::from_secs(5))?;
    assert_eq!(doubled, 42);
    Ok(())
}
