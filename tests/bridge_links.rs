//! Links through a real RabbitMQ (feature `amqp`): outbound (a local queue
//! to a RabbitMQ exchange, with publisher confirms) and inbound (a RabbitMQ
//! queue into a local exchange), every property and header intact both
//! ways; and with the connection closed from RabbitMQ's side mid-stream,
//! nothing is lost and duplicates say so.
//!
//! Needs `INTEROFFICE_RABBITMQ_URL` (`.ci/run` sets it); skipped, saying
//! so, without it. The forced-disconnect tests also need `rabbitmqctl` on
//! the machine (it is, where RabbitMQ runs locally); skipped without. They
//! close every connection the broker has: two test runs against one
//! RabbitMQ at once would cut each other's (cargo runs test binaries one
//! after another, and this file's tests one at a time).

#![cfg(feature = "amqp")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[path = "support/rabbitmq.rs"]
mod rabbitmq;
use rabbitmq::rabbitmq_url;

use interoffice::bridge::{
    Bridge, LinkOptions, LinkState, REDELIVERED_HEADER, from_amqp_message, to_amqp_properties,
};
use interoffice::{Broker, DeliveryMode, FieldTable, FieldValue, Message, QueueOptions};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};

/// The tests of this file run one at a time: two of them close every
/// connection RabbitMQ has, which would cut the others' too.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A lapin connection and channel for the test's own view of RabbitMQ.
struct Peer {
    runtime: tokio::runtime::Runtime,
    channel: lapin::Channel,
    _connection: lapin::Connection,
}

impl Peer {
    fn connect(url: &str) -> Peer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let connection = runtime
            .block_on(lapin::Connection::connect(url, lapin::ConnectionProperties::default()))
            .unwrap();
        let channel = runtime.block_on(connection.create_channel()).unwrap();
        Peer { runtime, channel, _connection: connection }
    }

    fn fresh_queue(&self, name: &str) {
        let _ = self.runtime.block_on(self.channel.queue_delete(name.into(), QueueDeleteOptions::default()));
        self.runtime
            .block_on(self.channel.queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                Default::default(),
            ))
            .unwrap();
    }

    fn delete_queue(&self, name: &str) {
        let _ = self.runtime.block_on(self.channel.queue_delete(name.into(), QueueDeleteOptions::default()));
    }

    fn publish(&self, queue: &str, message: &Message) {
        let properties = to_amqp_properties(message.properties()).unwrap();
        self.runtime
            .block_on(async {
                self.channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        message.body(),
                        properties,
                    )
                    .await
            })
            .unwrap();
    }

    /// Everything in `queue` now, as interoffice messages.
    fn drain(&self, queue: &str) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(got) = self
            .runtime
            .block_on(self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .unwrap()
        {
            out.push(from_amqp_message(&got.delivery.data, &got.delivery.properties).unwrap());
        }
        out
    }
}

/// Waits (polling, with a deadline) until `done` holds.
fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rich_message(n: usize) -> Message {
    Message::new(format!("body {n}"))
        .with_message_id(format!("m-{n}"))
        .with_correlation_id(format!("c-{n}"))
        .with_reply_to("replies")
        .with_content_type("application/octet-stream")
        .with_delivery_mode(DeliveryMode::Persistent)
        .with_priority(3)
        .with_timestamp(1_700_000_000)
        .with_headers(FieldTable::new().with("n", FieldValue::I64(n as i64)).with(
            "x-death",
            vec![FieldValue::Table(FieldTable::new().with("count", 1_i64).with("reason", "rejected"))],
        ))
}

#[test]
fn outbound_and_inbound_links_carry_every_message_with_its_properties() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let peer = Peer::connect(&url);
    let bridge = Bridge::connect(url.clone()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("to-rabbit", QueueOptions::default()).unwrap();
    conn.declare_queue("from-rabbit", QueueOptions::default()).unwrap();
    peer.fresh_queue("io-link-out");
    peer.fresh_queue("io-link-in");

    let outbound =
        bridge.link_outbound(&conn, "to-rabbit", "", Some("io-link-out"), LinkOptions::default()).unwrap();
    let inbound = bridge.link_inbound(&conn, "io-link-in", "", Some("from-rabbit"), LinkOptions::default());
    // A link made in code can be written into a definitions file too.
    let shovel = outbound.definition().expect("an outbound link is a shovel").to_parameter();
    let written = serde_json::to_value(&shovel).unwrap();
    assert_eq!(written["value"]["src-queue"], "to-rabbit");
    assert_eq!(written["value"]["dest-exchange-key"], "io-link-out");
    const N: usize = 500;
    for n in 0..N {
        conn.publish("", "to-rabbit", rich_message(n)).unwrap();
        peer.publish("io-link-in", &rich_message(n));
    }
    eventually("the outbound link forwarded everything", Duration::from_secs(30), || {
        outbound.stats().forwarded == N as u64
    });
    eventually("the inbound link forwarded everything", Duration::from_secs(30), || {
        broker.queue_stats("from-rabbit").unwrap().messages_ready == N
    });
    let stats = broker.queue_stats("to-rabbit").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0), "acknowledged once confirmed");

    let arrived = peer.drain("io-link-out");
    assert_eq!(arrived.len(), N);
    for (n, message) in arrived.iter().enumerate() {
        assert_eq!(message.properties(), rich_message(n).properties(), "message {n}, outbound");
        assert_eq!(message.body(), rich_message(n).body());
    }
    for n in 0..N {
        let delivery = conn.get("from-rabbit", true).unwrap().unwrap();
        assert_eq!(delivery.message().properties(), rich_message(n).properties(), "message {n}, inbound");
    }
    assert_eq!(inbound.stats().forwarded, N as u64);
    assert_eq!(inbound.stats().state, LinkState::Running);
    // The broker's overview lists its links, with their state and figures.
    let links = broker.overview().links;
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["inbound 'io-link-in' → exchange ''", "outbound 'to-rabbit' → exchange ''"]);
    assert!(links.iter().all(|l| l.state == "running" && l.forwarded == N as u64), "{links:?}");
    drop((outbound, inbound));
    assert!(broker.overview().links.is_empty(), "a stopped link leaves the overview");
    peer.delete_queue("io-link-out");
    peer.delete_queue("io-link-in");
}

#[test]
fn an_outbound_message_rabbitmq_cannot_take_is_dead_lettered_locally() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let peer = Peer::connect(&url);
    let bridge = Bridge::connect(url.clone()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("parked", QueueOptions::default()).unwrap();
    let options = QueueOptions {
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("parked".into()),
        ..Default::default()
    };
    conn.declare_queue("to-rabbit", options).unwrap();
    peer.fresh_queue("io-link-dlx");
    let link =
        bridge.link_outbound(&conn, "to-rabbit", "", Some("io-link-dlx"), LinkOptions::default()).unwrap();
    // A u64 above i64::MAX has no AMQP field type; a missing RabbitMQ
    // exchange makes it unroutable there.
    conn.publish("", "to-rabbit", Message::new("huge").with_header("n", FieldValue::U64(u64::MAX))).unwrap();
    conn.publish("", "to-rabbit", Message::new("fine")).unwrap();
    eventually("both settled", Duration::from_secs(30), || {
        link.stats().forwarded + link.stats().dead_lettered == 2
    });
    assert_eq!(link.stats().dead_lettered, 1);
    let parked = conn.get("parked", true).unwrap().expect("dead-lettered locally, not lost");
    assert_eq!(parked.body().as_ref(), b"huge");
    assert!(link.stats().last_error.unwrap().contains("u64"), "the reason is kept");
    assert_eq!(peer.drain("io-link-dlx").len(), 1);
    drop(link);
    peer.delete_queue("io-link-dlx");
}

fn close_all_rabbitmq_connections() -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "interoffice test: forced disconnect"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn closing_the_connection_from_rabbitmqs_side_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    if std::process::Command::new("rabbitmqctl").arg("status").output().is_err() {
        eprintln!("skipped: rabbitmqctl is not on this machine");
        return;
    }
    let bridge = Bridge::connect(url.clone()).unwrap();
    {
        let peer = Peer::connect(&url);
        peer.fresh_queue("io-link-chaos");
    }
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("to-rabbit", QueueOptions::default()).unwrap();
    // A small window keeps the stream going long enough to cut it mid-way.
    let options =
        LinkOptions { prefetch: 4, reconnect_initial: Duration::from_millis(50), ..Default::default() };
    const N: usize = 20_000;
    for n in 0..N {
        conn.publish("", "to-rabbit", Message::new(format!("{n}")).with_message_id(n.to_string())).unwrap();
    }
    let link = bridge.link_outbound(&conn, "to-rabbit", "", Some("io-link-chaos"), options).unwrap();
    eventually("some forwarded", Duration::from_secs(30), || link.stats().forwarded > 500);
    assert!(close_all_rabbitmq_connections(), "rabbitmqctl close_all_connections");
    let at_close = link.stats().forwarded;
    assert!(at_close < N as u64, "the connection was cut mid-stream ({at_close} of {N} forwarded)");
    eventually("everything forwarded after the reconnect", Duration::from_secs(120), || {
        let stats = broker.queue_stats("to-rabbit").unwrap();
        stats.messages_ready == 0
            && stats.messages_unacknowledged == 0
            && link.stats().state == LinkState::Running
    });
    assert!(link.stats().reconnects >= 1, "{:?}", link.stats());
    let peer = Peer::connect(&url);
    let arrived = peer.drain("io-link-chaos");
    let ids: BTreeSet<usize> =
        arrived.iter().map(|m| m.properties().message_id().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), N, "every message reached RabbitMQ: 0 lost");
    // A message sent twice (its first confirm lost with the connection) says so.
    let mut seen = BTreeSet::new();
    for message in &arrived {
        let id = message.properties().message_id().map(str::to_owned).unwrap();
        if !seen.insert(id.clone()) {
            assert_eq!(
                message.header(REDELIVERED_HEADER),
                Some(&FieldValue::Bool(true)),
                "duplicate {id} not flagged"
            );
        }
    }
    eprintln!(
        "{N} messages, {} duplicates (flagged), {} reconnects",
        arrived.len() - N,
        link.stats().reconnects
    );
    drop(link);
    peer.delete_queue("io-link-chaos");
}

#[test]
fn closing_the_inbound_connection_from_rabbitmqs_side_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    if std::process::Command::new("rabbitmqctl").arg("status").output().is_err() {
        eprintln!("skipped: rabbitmqctl is not on this machine");
        return;
    }
    const N: usize = 20_000;
    {
        let peer = Peer::connect(&url);
        peer.fresh_queue("io-link-chaos-in");
        for n in 0..N {
            peer.publish("io-link-chaos-in", &Message::new(format!("{n}")).with_message_id(n.to_string()));
        }
        peer.runtime.block_on(peer.channel.close(200, "published".into())).unwrap();
    }
    let bridge = Bridge::connect(url.clone()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("from-rabbit", QueueOptions::default()).unwrap();
    let options =
        LinkOptions { prefetch: 4, reconnect_initial: Duration::from_millis(50), ..Default::default() };
    let link = bridge.link_inbound(&conn, "io-link-chaos-in", "", Some("from-rabbit"), options);
    eventually("some forwarded", Duration::from_secs(30), || link.stats().forwarded > 500);
    assert!(close_all_rabbitmq_connections(), "rabbitmqctl close_all_connections");
    let at_close = link.stats().forwarded;
    assert!(at_close < N as u64, "the connection was cut mid-stream ({at_close} of {N} forwarded)");
    eventually("everything forwarded after the reconnect", Duration::from_secs(120), || {
        broker.queue_stats("from-rabbit").unwrap().messages_ready >= N
            && link.stats().state == LinkState::Running
    });
    let mut ids = BTreeSet::new();
    let mut duplicates = 0;
    while let Some(delivery) = conn.get("from-rabbit", true).unwrap() {
        let id = delivery.message().properties().message_id().map(str::to_owned).unwrap();
        if !ids.insert(id.clone()) {
            duplicates += 1;
            assert_eq!(
                delivery.message().header(REDELIVERED_HEADER),
                Some(&FieldValue::Bool(true)),
                "duplicate {id} not flagged"
            );
        }
    }
    assert_eq!(ids.len(), N, "every message reached the local queue: 0 lost");
    assert!(link.stats().reconnects >= 1, "{:?}", link.stats());
    eprintln!("{N} messages in, {duplicates} duplicates (flagged), {} reconnects", link.stats().reconnects);
    drop(link);
    Peer::connect(&url).delete_queue("io-link-chaos-in");
}

/// The next message of a lapin consumer, waiting at most `timeout`.
async fn next_delivery(
    consumer: &mut lapin::Consumer,
    timeout: Duration,
) -> Option<lapin::message::Delivery> {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *consumer).poll_next(cx));
    tokio::time::timeout(timeout, next).await.ok().flatten().and_then(Result::ok)
}

#[test]
fn a_local_call_is_answered_by_a_service_on_rabbitmqs_side() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let peer = Peer::connect(&url);
    peer.fresh_queue("io-rpc-remote");
    // The remote service: answers "rate EUR" with "1.08", by reply_to and
    // correlation id, as any RabbitMQ RPC server does.
    let channel = peer.channel.clone();
    let service = peer.runtime.spawn(async move {
        let mut requests = channel
            .basic_consume(
                "io-rpc-remote".into(),
                "".into(),
                lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap();
        while let Some(request) = next_delivery(&mut requests, Duration::from_secs(30)).await {
            let reply_to = request.properties.reply_to().clone().unwrap();
            let mut properties = lapin::BasicProperties::default();
            if let Some(id) = request.properties.correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            let answer = format!("{} = 1.08", String::from_utf8_lossy(&request.data));
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    answer.as_bytes(),
                    properties,
                )
                .await
                .unwrap();
        }
    });
    let bridge = Bridge::connect(url.clone()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("rates", QueueOptions::default()).unwrap();
    let _links =
        bridge.call_remote_service(&conn, "rates", "", "io-rpc-remote", LinkOptions::default()).unwrap();
    for currency in ["EUR", "GBP", "CHF"] {
        let reply = conn.call("", "rates", Message::new(currency), Duration::from_secs(30)).unwrap();
        assert_eq!(reply.body().as_ref(), format!("{currency} = 1.08").as_bytes());
    }
    service.abort();
    peer.delete_queue("io-rpc-remote");
}

#[test]
fn a_caller_on_rabbitmqs_side_is_answered_by_a_local_service() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let peer = Peer::connect(&url);
    peer.fresh_queue("io-rpc-in");
    let bridge = Bridge::connect(url.clone()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("prices", QueueOptions::default()).unwrap();
    let _service = conn
        .serve("prices", interoffice::WorkerOptions::default(), |request| {
            let item = String::from_utf8_lossy(request.body()).into_owned();
            Ok::<_, std::convert::Infallible>(Message::new(format!("{item}: 12.50")))
        })
        .unwrap();
    let _links = bridge.serve_remote_callers(&conn, "io-rpc-in", "prices", LinkOptions::default()).unwrap();
    // The remote caller uses RabbitMQ's own direct reply-to.
    let answers = peer.runtime.block_on(async {
        let mut replies = peer
            .channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap();
        let mut answers = Vec::new();
        for (n, item) in ["teapot", "kettle"].into_iter().enumerate() {
            let properties = lapin::BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(format!("remote-{n}").into());
            peer.channel
                .basic_publish(
                    "".into(),
                    "io-rpc-in".into(),
                    BasicPublishOptions::default(),
                    item.as_bytes(),
                    properties,
                )
                .await
                .unwrap();
            let reply = next_delivery(&mut replies, Duration::from_secs(30)).await.expect("a reply in time");
            assert_eq!(
                reply.properties.correlation_id().as_ref().map(|c| c.as_str().to_owned()),
                Some(format!("remote-{n}"))
            );
            answers.push(String::from_utf8_lossy(&reply.data).into_owned());
        }
        answers
    });
    assert_eq!(answers, ["teapot: 12.50", "kettle: 12.50"]);
    peer.delete_queue("io-rpc-in");
}

#[test]
fn a_link_to_an_unreachable_rabbitmq_backs_off_visibly_and_loses_nothing() {
    // Needs no RabbitMQ: port 1 on loopback has nothing listening.
    let bridge = Bridge::new("amqp://app:s3cret@127.0.0.1:1/%2f").unwrap();
    let declared = bridge.declare_definitions(&interoffice::Definitions::default(), "/");
    assert!(
        matches!(declared, Err(interoffice::bridge::BridgeError::Connect { .. })),
        "a typed error: {declared:?}"
    );
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("to-rabbit", QueueOptions::default()).unwrap();
    conn.publish("", "to-rabbit", Message::new("waiting")).unwrap();
    let link = bridge.link_outbound(&conn, "to-rabbit", "", None, LinkOptions::default()).unwrap();
    eventually("the link backs off", Duration::from_secs(10), || link.stats().last_error.is_some());
    let overview = broker.overview();
    let shown = &overview.links[0];
    assert!(matches!(shown.state, "backoff" | "connecting"), "{shown:?}");
    let error = shown.last_error.clone().unwrap();
    assert!(error.contains("cannot connect") && !error.contains("s3cret"), "{error}");
    assert!(!format!("{bridge:?} {link:?}").contains("s3cret"));
    drop(link);
    // Stopped, the link hands back what it held: nothing lost.
    eventually("the message is back in its queue", Duration::from_secs(10), || {
        let stats = broker.queue_stats("to-rabbit").unwrap();
        (stats.messages_ready, stats.messages_unacknowledged) == (1, 0)
    });
}

#[test]
fn the_bridge_works_from_async_code_under_any_executor() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("io-async-carried", QueueOptions::default()).unwrap();
    // Not tokio: futures' own executor.
    let bridge = futures::executor::block_on(async {
        let bridge = Bridge::connect_async(url.clone()).await.unwrap();
        let report = bridge.declare_definitions_async(broker.export_definitions(), "/").await.unwrap();
        assert_eq!(report.queues, 1, "{report:?}");
        bridge
    });
    // Dropped inside a tokio task, the bridge does not panic.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move { drop(bridge) });
    Peer::connect(&url).delete_queue("io-async-carried");
}

#[test]
fn links_declared_as_shovels_in_a_definitions_file_start_and_forward() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(url) = rabbitmq_url() else { return };
    let peer = Peer::connect(&url);
    peer.fresh_queue("io-shovel-out");
    peer.fresh_queue("io-shovel-in");
    let file = format!(
        r#"{{
        "queues": [
            {{"name": "to-rabbit", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {{}}}},
            {{"name": "from-rabbit", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {{}}}}
        ],
        "parameters": [
            {{"component": "shovel", "name": "out", "vhost": "/", "value": {{
                "src-uri": "amqp://", "src-queue": "to-rabbit",
                "dest-uri": "{url}", "dest-queue": "io-shovel-out", "ack-mode": "on-confirm", "prefetch-count": 16}}}},
            {{"component": "shovel", "name": "in", "vhost": "/", "value": {{
                "src-uri": "{url}", "src-queue": "io-shovel-in",
                "dest-uri": "amqp://", "dest-exchange": "", "dest-exchange-key": "from-rabbit"}}}},
            {{"component": "shovel", "name": "fire-and-forget", "vhost": "/", "value": {{
                "src-uri": "amqp://", "src-queue": "to-rabbit",
                "dest-uri": "{url}", "dest-queue": "x", "ack-mode": "no-ack"}}}}
        ]
    }}"#
    );
    let definitions: interoffice::Definitions = serde_json::from_str(&file).unwrap();
    let broker = Broker::new();
    let report = broker.load_definitions(&definitions);
    assert!(report.refused.is_empty(), "{report:?}");
    let conn = broker.connect();
    let bridge = Bridge::new(url.clone()).unwrap();
    let (links, refused) = bridge.start_links(&conn, &definitions);
    assert_eq!(links.len(), 2);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("fire-and-forget") && refused[0].contains("ack-mode 'no-ack'"),
        "{refused:?}"
    );
    conn.publish("", "to-rabbit", Message::new("out")).unwrap();
    peer.publish("io-shovel-in", &Message::new("in"));
    eventually("both shovelled", Duration::from_secs(30), || {
        broker.queue_stats("from-rabbit").unwrap().messages_ready == 1
            && links.iter().map(|l| l.stats().forwarded).sum::<u64>() == 2
    });
    assert_eq!(peer.drain("io-shovel-out").len(), 1);
    // Each link answers for the shovel it came from, which writes back.
    for (link, name) in links.iter().zip(["out", "in"]) {
        let definition = link.definition().expect("a shovel");
        assert_eq!(definition.name, name);
        let again = interoffice::bridge::LinkDefinition::from_parameter(&definition.to_parameter()).unwrap();
        assert_eq!(again.as_ref(), Some(definition));
    }
    drop(links);
    peer.delete_queue("io-shovel-out");
    peer.delete_queue("io-shovel-in");
}
