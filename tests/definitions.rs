//! Definitions in RabbitMQ's shape: a file written by RabbitMQ 3.10.8
//! (`tests/fixtures/rabbitmq-3.10.8-definitions.json`, exported from a real
//! broker with `rabbitmqctl export_definitions`) reads and writes back
//! unchanged, loads into a broker that then routes as RabbitMQ would, and
//! reports what interoffice does not model; export → load → export is
//! identical.

use std::time::Duration;

use interoffice::{
    Broker, Definitions, ExchangeKind, ExchangeOptions, FieldTable, Message, Overflow, QueueOptions,
    QueueType,
};

const RABBITMQ_FILE: &str = include_str!("fixtures/rabbitmq-3.10.8-definitions.json");

fn rabbitmq_definitions() -> Definitions {
    serde_json::from_str(RABBITMQ_FILE).expect("RabbitMQ's file parses")
}

#[test]
fn a_file_written_by_rabbitmq_reads_and_writes_back_in_the_same_shape() {
    let definitions = rabbitmq_definitions();
    let original: serde_json::Value = serde_json::from_str(RABBITMQ_FILE).unwrap();
    let written = serde_json::to_value(&definitions).unwrap();
    assert_eq!(written, original);
}

#[test]
fn a_file_written_by_rabbitmq_loads_and_routes() {
    let broker = Broker::new();
    let report = broker.load_definitions(&rabbitmq_definitions());
    assert!(report.refused.is_empty(), "{report:#?}");
    assert_eq!((report.exchanges, report.queues, report.bindings), (4, 5, 6));
    assert_eq!((report.vhosts, report.users, report.permissions), (0, 1, 1), "'/' was there already");
    assert!(report.not_modelled.is_empty(), "{report:#?}");
    // RabbitMQ's own hash of guest's password now guards guest.
    let guest = interoffice::ConnectOptions::default();
    broker.connect_with(guest.clone()).expect("RabbitMQ's hash of 'guest' verifies");
    let wrong =
        interoffice::ConnectOptions { credentials: interoffice::Credentials::password("Guest"), ..guest };
    assert!(broker.connect_with(wrong).is_err());
    let conn = broker.connect();
    let billing = conn.publish("io.shop", "order.eu.placed", Message::new("order")).unwrap();
    assert_eq!(billing.queues(), 1);
    assert_eq!(broker.explain_route("io.shop", "order.eu.placed", None).queues(), ["io.billing"]);
    // Unroutable on io.shop goes to its alternate exchange.
    assert_eq!(broker.explain_route("io.shop", "invoice", None).queues(), ["io.lost"]);
    let vip = FieldTable::new().with("region", "eu").with("vip", true);
    assert_eq!(broker.explain_route("io.shop", "order.x", Some(&vip)).queues(), ["io.eu"]);
    let shipping = broker.queue_stats("io.shipping").unwrap();
    assert_eq!(shipping.name, "io.shipping");
    let billing = broker.export_definitions().queues.into_iter().find(|q| q.name == "io.billing").unwrap();
    assert_eq!(serde_json::to_value(&billing.arguments).unwrap()["x-overflow"], "reject-publish");
}

#[test]
fn export_load_export_is_identical() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("unrouted", ExchangeKind::Fanout, Default::default()).unwrap();
    let ae =
        ExchangeOptions { alternate_exchange: Some("unrouted".into()), durable: true, ..Default::default() };
    conn.declare_exchange("shop", ExchangeKind::Topic, ae).unwrap();
    conn.declare_exchange(
        "later",
        ExchangeKind::Direct,
        ExchangeOptions { delayed: true, ..Default::default() },
    )
    .unwrap();
    conn.declare_exchange(
        "inner",
        ExchangeKind::Headers,
        ExchangeOptions { internal: true, ..Default::default() },
    )
    .unwrap();
    let options = QueueOptions {
        durable: true,
        message_ttl: Some(Duration::from_secs(60)),
        expires: Some(Duration::from_secs(3600)),
        max_length: Some(100),
        max_length_bytes: Some(1 << 20),
        overflow: Overflow::RejectPublishDlx,
        dead_letter_exchange: Some("unrouted".into()),
        dead_letter_routing_key: Some("dead".into()),
        max_priority: Some(9),
        single_active_consumer: true,
        ..Default::default()
    };
    conn.declare_queue("billing", options).unwrap();
    conn.declare_queue(
        "shipping",
        QueueOptions {
            queue_type: QueueType::Quorum,
            durable: true,
            delivery_limit: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    conn.declare_queue("mine", QueueOptions { exclusive: true, ..Default::default() }).unwrap();
    conn.bind_queue("billing", "shop", "order.*.placed", None).unwrap();
    conn.bind_exchange("inner", "shop", "order.#", None).unwrap();
    conn.bind_queue("shipping", "inner", "", FieldTable::new().with("x-match", "any").with("carrier", "dhl"))
        .unwrap();
    conn.bind_queue("mine", "shop", "#", None).unwrap();

    let first = broker.export_definitions();
    assert!(first.queues.iter().all(|q| q.name != "mine"), "exclusive queues belong to their connection");
    let json = serde_json::to_string_pretty(&first).unwrap();
    let copy = Broker::new();
    let report = copy.load_definitions(&serde_json::from_str(&json).unwrap());
    assert!(report.refused.is_empty(), "{report:#?}");
    assert!(report.not_modelled.is_empty(), "{report:#?}");
    let second = serde_json::to_string_pretty(&copy.export_definitions()).unwrap();
    assert_eq!(second, json);
    // And routing agrees.
    assert_eq!(
        copy.explain_route("shop", "order.eu.placed", None).queues(),
        broker
            .explain_route("shop", "order.eu.placed", None)
            .queues()
            .into_iter()
            .filter(|q| *q != "mine")
            .collect::<Vec<_>>()
    );
}

#[test]
fn what_cannot_be_loaded_is_refused_one_by_one_and_reported() {
    let file = r#"{
        "queues": [
            {"name": "ok", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}},
            {"name": "stream", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "stream"}},
            {"name": "aged", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-max-age": "1D"}},
            {"name": "elsewhere", "vhost": "tenant-a", "durable": true, "auto_delete": false, "arguments": {}}
        ],
        "exchanges": [{"name": "odd", "vhost": "/", "type": "x-consistent-hash", "durable": true, "auto_delete": false, "arguments": {}}],
        "bindings": [{"source": "amq.direct", "vhost": "/", "destination": "missing", "destination_type": "queue", "routing_key": "k", "arguments": {}}],
        "policies": [{"vhost": "/", "name": "ttl", "pattern": ".*", "apply-to": "queues", "definition": {"message-ttl": 1000}, "priority": 0}],
        "vhosts": [{"name": "/"}, {"name": "tenant-a"}]
    }"#;
    let broker = Broker::new();
    let report = broker.load_definitions(&serde_json::from_str(file).unwrap());
    assert_eq!(report.queues, 2, "'ok', and 'elsewhere' in the new vhost tenant-a");
    assert_eq!(report.vhosts, 1);
    assert_eq!(broker.vhost("tenant-a").unwrap().queue_names(), ["elsewhere"]);
    let refused = report.refused.join("\n");
    for expected in [
        "queue 'stream': ",
        "queue 'aged': ",
        "x-max-age",
        "exchange 'odd': unknown exchange type 'x-consistent-hash'",
        "binding 'amq.direct' → 'missing' [k]: ",
    ] {
        assert!(refused.contains(expected), "{expected} not in:\n{refused}");
    }
    assert_eq!(report.not_modelled, ["policies: 1 entry (not modelled; kept in the file, not applied)"]);
}

#[test]
fn hostile_definitions_are_refused_or_reported_never_a_panic() {
    let long = "x".repeat(300);
    let file = format!(
        r#"{{
        "queues": [
            {{"name": "{long}", "arguments": {{}}}},
            {{"name": "typed", "arguments": {{"x-max-length": "lots"}}}},
            {{"name": "negative", "arguments": {{"x-message-ttl": -5}}}},
            {{"name": "huge", "arguments": {{"x-expires": 9223372036854775807}}}},
            {{"name": "float", "arguments": {{"x-max-priority": 1.5}}}},
            {{"name": "nested", "arguments": {{"x-dead-letter-exchange": [[["deep"]]]}}}},
            {{"name": "quorum-nondurable", "type": "quorum", "durable": false, "arguments": {{}}}}
        ],
        "exchanges": [
            {{"name": "", "type": "direct"}},
            {{"name": "amq.direct", "type": "fanout"}},
            {{"name": "delayed-no-type", "type": "x-delayed-message", "arguments": {{}}}}
        ],
        "bindings": [
            {{"source": "amq.headers", "destination": "nowhere", "destination_type": "queue", "arguments": {{"x-match": 7}}}},
            {{"source": "amq.direct", "destination": "typed", "destination_type": "bucket"}}
        ]
    }}"#
    );
    let broker = Broker::new();
    let report = broker.load_definitions(&serde_json::from_str(&file).unwrap());
    assert_eq!(report.queues, 0, "{report:#?}");
    assert_eq!(report.refused.len(), 12, "{report:#?}");
    // Malformed JSON is serde's error, before the broker sees anything.
    assert!(serde_json::from_str::<Definitions>(r#"{"queues": [{"arguments": {}}]}"#).is_err());
    assert!(serde_json::from_str::<Definitions>(&"[".repeat(10_000)).is_err());
}
