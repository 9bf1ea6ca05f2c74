//! `Broker::overview`: per-queue and per-exchange counters that add up at
//! quiescence — published = acknowledged + dead-lettered + dropped +
//! expired + purged + ready + delayed + unacknowledged — under random
//! publishes, settles, expiries, limits, dead-lettering and purges; and,
//! with feature `metrics`, their export through the `metrics` facade.

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, ExchangeKind, ManualClock, Message, Overflow, Overview, QueueOptions,
};

/// A small seeded generator: a failing case is reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn check_adds_up(overview: &Overview, seed: u64) {
    assert!(overview.consistent);
    for q in &overview.queues {
        let accounted = q.acknowledged
            + q.dead_lettered
            + q.dropped
            + q.expired
            + q.purged
            + (q.ready + q.delayed + q.unacknowledged) as u64;
        assert_eq!(q.published, accounted, "seed {seed}: {q:#?}");
    }
}

fn cases() -> u64 {
    std::env::var("INTEROFFICE_OVERVIEW_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

#[test]
fn the_counters_add_up_at_quiescence() {
    for seed in 0..cases() {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let clock = ManualClock::new();
        let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
        let conn = broker.connect();
        conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default()).unwrap();
        let dead = |o: QueueOptions| QueueOptions { dead_letter_exchange: Some("dlx".into()), ..o };
        conn.declare_queue(
            "ttl",
            dead(QueueOptions { message_ttl: Some(Duration::from_secs(5)), ..Default::default() }),
        )
        .unwrap();
        conn.declare_queue("short", dead(QueueOptions { max_length: Some(3), ..Default::default() }))
            .unwrap();
        let reject =
            QueueOptions { max_length: Some(2), overflow: Overflow::RejectPublish, ..Default::default() };
        conn.declare_queue("full", reject).unwrap();
        conn.declare_queue("limited", QueueOptions { delivery_limit: Some(1), ..Default::default() })
            .unwrap();
        conn.declare_queue("parked", QueueOptions::default()).unwrap();
        conn.bind_queue("parked", "dlx", "", None).unwrap();
        let queues = ["ttl", "short", "full", "limited", "parked"];
        let mut held = Vec::new();
        for _ in 0..rng.below(200) {
            let queue = queues[rng.below(queues.len() as u64) as usize];
            match rng.below(10) {
                0..=3 => {
                    let mut message = Message::new("m");
                    if rng.below(4) == 0 {
                        message = message.with_delay(Duration::from_secs(rng.below(10)));
                    }
                    let _ = conn.publish("", queue, message);
                }
                4 => drop(conn.get(queue, true).unwrap()),
                5 | 6 => {
                    if let Some(d) = conn.get(queue, false).unwrap() {
                        match rng.below(4) {
                            0 => d.ack().unwrap(),
                            1 => d.nack(true).unwrap(),
                            2 => d.reject(false).unwrap(),
                            _ => held.push(d),
                        }
                    }
                }
                7 => {
                    if !held.is_empty() {
                        let d = held.swap_remove(rng.below(held.len() as u64) as usize);
                        if rng.below(2) == 0 { d.ack().unwrap() } else { drop(d) }
                    }
                }
                8 => drop(conn.purge_queue(queue).unwrap()),
                _ => clock.advance(Duration::from_secs(rng.below(4))),
            }
        }
        check_adds_up(&broker.overview(), seed);
        drop(held);
        check_adds_up(&broker.overview(), seed);
    }
}

#[test]
fn exchanges_count_routed_and_unroutable_publishes() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("orders", ExchangeKind::Topic, Default::default()).unwrap();
    conn.declare_queue("billing", QueueOptions::default()).unwrap();
    conn.bind_queue("billing", "orders", "order.#", None).unwrap();
    conn.publish("orders", "order.created", Message::new("a")).unwrap();
    conn.publish("orders", "invoice.sent", Message::new("b")).unwrap();
    let overview = broker.overview();
    let orders = overview.exchanges.iter().find(|e| e.name == "orders").unwrap();
    assert_eq!((orders.published, orders.routed, orders.unroutable), (2, 1, 1));
    let json = serde_json::to_value(&overview).unwrap();
    assert_eq!(
        json["exchanges"].as_array().unwrap().iter().find(|e| e["name"] == "orders").unwrap()["kind"],
        "topic"
    );
    assert_eq!(json["queues"][0]["ready"], 1);
}

#[cfg(feature = "metrics")]
#[test]
fn the_overview_is_exported_through_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default()).unwrap();
    conn.publish("", "jobs", Message::new("a")).unwrap();
    metrics::with_local_recorder(&recorder, || broker.overview().record_metrics());
    let found: Vec<(String, Vec<String>, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect();
    assert!(
        found.iter().any(|(name, labels, value)| name == "interoffice_queue_messages_ready"
            && labels == &["vhost=/".to_owned(), "queue=jobs".to_owned()]
            && *value == DebugValue::Gauge(1.0.into())),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(name, _, value)| name == "interoffice_queue_published_total"
            && *value == DebugValue::Counter(1)),
        "{found:?}"
    );
}
