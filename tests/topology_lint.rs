//! `Broker::lint`: each kind of finding on a topology that has it, and a
//! clean topology that has none.

use std::time::Duration;

use interoffice::{
    Broker, Connection, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, LintFinding, QueueOptions,
    Severity,
};

fn broker() -> (Broker, Connection) {
    let broker = Broker::new();
    let conn = broker.connect();
    (broker, conn)
}

/// A queue bounded by a TTL, so it raises no "unbounded" finding.
fn bounded() -> QueueOptions {
    QueueOptions { message_ttl: Some(Duration::from_secs(60)), ..Default::default() }
}

#[test]
fn a_clean_topology_has_no_warnings() {
    let (broker, conn) = broker();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default()).unwrap();
    let dlq = QueueOptions { dead_letter_exchange: Some("dlx".into()), ..bounded() };
    conn.declare_queue("billing", dlq).unwrap();
    conn.declare_queue("parked", bounded()).unwrap();
    conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new()).unwrap();
    conn.bind_queue("parked", "dlx", "", FieldTable::new()).unwrap();
    let findings = broker.lint();
    assert!(findings.iter().all(|f| f.severity() == Severity::Info), "{findings:#?}");
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn exchanges_and_queues_without_bindings() {
    let (broker, conn) = broker();
    conn.declare_exchange("orphan", ExchangeKind::Direct, Default::default()).unwrap();
    conn.declare_queue("jobs", bounded()).unwrap();
    let findings = broker.lint();
    assert!(findings.contains(&LintFinding::ExchangeWithoutBindings { exchange: "orphan".into() }));
    assert!(findings.contains(&LintFinding::QueueWithoutBindings { queue: "jobs".into() }));
    // Warnings first.
    assert_eq!(findings[0].severity(), Severity::Warning);
    assert_eq!(
        LintFinding::ExchangeWithoutBindings { exchange: "orphan".into() }.to_string(),
        "exchange 'orphan' has no bindings: what is published to it is lost"
    );
}

#[test]
fn missing_dead_letter_and_alternate_exchanges() {
    let (broker, conn) = broker();
    conn.declare_queue("q", QueueOptions { dead_letter_exchange: Some("gone".into()), ..bounded() }).unwrap();
    let ae = ExchangeOptions { alternate_exchange: Some("nowhere".into()), ..Default::default() };
    conn.declare_exchange("x", ExchangeKind::Fanout, ae).unwrap();
    let findings = broker.lint();
    assert!(
        findings
            .contains(&LintFinding::MissingDeadLetterExchange { queue: "q".into(), exchange: "gone".into() })
    );
    assert!(findings.contains(&LintFinding::MissingAlternateExchange {
        exchange: "x".into(),
        alternate: "nowhere".into()
    }));
}

#[test]
fn a_dead_letter_cycle_without_rejection_is_found_once() {
    let (broker, conn) = broker();
    conn.declare_exchange("to-b", ExchangeKind::Fanout, Default::default()).unwrap();
    conn.declare_exchange("to-a", ExchangeKind::Fanout, Default::default()).unwrap();
    let ttl = Some(Duration::from_secs(5));
    conn.declare_queue(
        "a",
        QueueOptions { message_ttl: ttl, dead_letter_exchange: Some("to-b".into()), ..Default::default() },
    )
    .unwrap();
    conn.declare_queue(
        "b",
        QueueOptions {
            max_length: Some(10),
            dead_letter_exchange: Some("to-a".into()),
            ..Default::default()
        },
    )
    .unwrap();
    conn.bind_queue("b", "to-b", "", FieldTable::new()).unwrap();
    conn.bind_queue("a", "to-a", "", FieldTable::new()).unwrap();
    let cycles: Vec<LintFinding> =
        broker.lint().into_iter().filter(|f| matches!(f, LintFinding::DeadLetterCycle { .. })).collect();
    assert_eq!(cycles, [LintFinding::DeadLetterCycle { queues: vec!["a".into(), "b".into()] }]);
    assert!(cycles[0].to_string().starts_with("dead-letter cycle without a rejection: a → b → a"));

    // A retry loop where a consumer rejects is intended: no finding.
    let (broker, conn) = self::broker();
    conn.declare_exchange("retry", ExchangeKind::Fanout, Default::default()).unwrap();
    conn.declare_exchange("work", ExchangeKind::Fanout, Default::default()).unwrap();
    conn.declare_queue(
        "work-q",
        QueueOptions { dead_letter_exchange: Some("retry".into()), ..Default::default() },
    )
    .unwrap();
    conn.declare_queue(
        "retry-q",
        QueueOptions { message_ttl: ttl, dead_letter_exchange: Some("work".into()), ..Default::default() },
    )
    .unwrap();
    conn.bind_queue("retry-q", "retry", "", FieldTable::new()).unwrap();
    conn.bind_queue("work-q", "work", "", FieldTable::new()).unwrap();
    assert!(!broker.lint().iter().any(|f| matches!(f, LintFinding::DeadLetterCycle { .. })));
}

#[test]
fn an_alternate_exchange_loop() {
    let (broker, conn) = broker();
    let ae = |to: &str| ExchangeOptions { alternate_exchange: Some(to.into()), ..Default::default() };
    conn.declare_exchange("x", ExchangeKind::Direct, ae("y")).unwrap();
    conn.declare_exchange("y", ExchangeKind::Direct, ae("x")).unwrap();
    let loops: Vec<LintFinding> = broker
        .lint()
        .into_iter()
        .filter(|f| matches!(f, LintFinding::AlternateExchangeLoop { .. }))
        .collect();
    assert_eq!(loops, [LintFinding::AlternateExchangeLoop { exchanges: vec!["x".into(), "y".into()] }]);
}

#[test]
fn binding_keys_that_cannot_mean_what_they_say() {
    let (broker, conn) = broker();
    conn.declare_exchange("topic", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_exchange("direct", ExchangeKind::Direct, Default::default()).unwrap();
    conn.declare_queue("q", bounded()).unwrap();
    conn.bind_queue("q", "topic", "order*.created", FieldTable::new()).unwrap();
    conn.bind_queue("q", "topic", "audit.#.#", FieldTable::new()).unwrap();
    conn.bind_queue("q", "direct", "order.*", FieldTable::new()).unwrap();
    let problems: Vec<String> = broker
        .lint()
        .into_iter()
        .filter_map(|f| match f {
            LintFinding::SuspiciousBindingKey { key, problem, .. } => Some(format!("{key}: {problem}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        problems,
        [
            "order.*: a direct exchange compares keys whole: '*' and '#' are plain characters here",
            "audit.#.#: '#.#' matches what '#' matches: the second '#' adds nothing",
            "order*.created: 'order*' is matched literally: a wildcard must be a whole word ('*' or '#' between dots)",
        ]
    );
}

#[test]
fn shadowed_topic_and_headers_bindings() {
    let (broker, conn) = broker();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_exchange("by-region", ExchangeKind::Headers, Default::default()).unwrap();
    conn.declare_queue("q", bounded()).unwrap();
    conn.declare_queue("other", bounded()).unwrap();
    conn.bind_queue("q", "orders", "order.#", FieldTable::new()).unwrap();
    conn.bind_queue("q", "orders", "order.*.created", FieldTable::new()).unwrap();
    // The same key to another queue is not shadowing: it reaches another queue.
    conn.bind_queue("other", "orders", "order.*.created", FieldTable::new()).unwrap();
    let wide = FieldTable::new().with("x-match", "all").with("region", "eu");
    let narrow = FieldTable::new().with("x-match", "all").with("region", "eu").with("vip", true);
    conn.bind_queue("q", "by-region", "", wide).unwrap();
    conn.bind_queue("q", "by-region", "", narrow).unwrap();
    let shadowed: Vec<(String, String)> = broker
        .lint()
        .into_iter()
        .filter_map(|f| match f {
            LintFinding::ShadowedBinding { binding, shadowed_by, .. } => Some((binding, shadowed_by)),
            _ => None,
        })
        .collect();
    assert_eq!(shadowed.len(), 2, "{shadowed:?}");
    assert!(shadowed.contains(&("order.*.created".into(), "order.#".into())), "{shadowed:?}");
    assert!(shadowed.iter().any(|(b, by)| b.contains("vip") && !by.contains("vip")), "{shadowed:?}");
}

#[test]
fn a_queue_nothing_consumes_or_bounds() {
    let (broker, conn) = broker();
    conn.declare_queue("forever", QueueOptions::default()).unwrap();
    conn.declare_queue("consumed", QueueOptions::default()).unwrap();
    let _consumer = conn.consume("consumed", ConsumeOptions::default()).unwrap();
    let findings = broker.lint();
    assert!(findings.contains(&LintFinding::UnboundedQueueWithoutConsumers { queue: "forever".into() }));
    assert!(!findings.contains(&LintFinding::UnboundedQueueWithoutConsumers { queue: "consumed".into() }));
}
