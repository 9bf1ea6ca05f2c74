//! A five-minute tour of interoffice: the AMQP 0-9-1 model, in process.
//!
//! It declares a topic exchange `orders` and a queue `billing` bound to it
//! with `order.*.created`, publishes two orders with headers, and consumes
//! them with a prefetch limit: one is acknowledged, the other is
//! negatively acknowledged with requeue and comes back flagged
//! `redelivered`. It then prints the queue's counters and shows that a
//! `mandatory` publish nobody is bound for hands the message back inside
//! `PublishError::Unroutable` instead of dropping it.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use interoffice::{
    Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Message, PublishError,
    PublishOptions, QueueOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The broker is the whole "server"; a connection is one client's handle on it.
    let broker = Broker::new();
    let conn = broker.connect_named("quickstart");

    conn.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::default())?;
    conn.declare_queue("billing", QueueOptions::default())?;
    conn.bind_queue("billing", "orders", "order.*.created", FieldTable::new())?;
    println!("declared topic exchange 'orders' -> queue 'billing' on 'order.*.created'");

    for (id, region) in [(1_i64, "eu"), (2, "us")] {
        let message = Message::new(format!("order {id}"))
            .with_content_type("text/plain")
            .with_header("order-id", id)
            .with_header("region", region);
        let key = format!("order.{region}.created");
        let routed = conn.publish("orders", &key, message)?;
        println!("published order {id} as '{key}' to {} queue(s)", routed.queues());
    }

    // prefetch: 10 lets both orders sit unacknowledged with this consumer at once.
    let consumer = conn.consume("billing", ConsumeOptions { prefetch: 10, ..Default::default() })?;
    let timeout = Duration::from_secs(1);

    let first = consumer.recv_timeout(timeout)?;
    println!(
        "received '{}' via '{}', headers {}, redelivered={}",
        String::from_utf8_lossy(first.body()),
        first.routing_key(),
        first.headers().map(ToString::to_string).unwrap_or_default(),
        first.redelivered(),
    );
    first.ack()?;
    println!("  -> ack: done with it, it leaves the queue");

    let second = consumer.recv_timeout(timeout)?;
    println!(
        "received '{}' (region {}), redelivered={}",
        String::from_utf8_lossy(second.body()),
        second.message().header("region").and_then(FieldValue::as_str).unwrap_or("?"),
        second.redelivered()
    );
    second.nack(true)?;
    println!("  -> nack(requeue): back to the head of the queue");

    let again = consumer.recv_timeout(timeout)?;
    println!(
        "received '{}' again, redelivered={}",
        String::from_utf8_lossy(again.body()),
        again.redelivered()
    );
    assert!(again.redelivered());

    // Counters are read at any moment, from any thread, without a connection.
    let stats = broker.queue_stats("billing")?;
    println!(
        "stats while holding it: ready={} unacked={} consumers={}",
        stats.messages_ready, stats.messages_unacknowledged, stats.consumers
    );
    again.ack()?;
    let stats = broker.queue_stats("billing")?;
    println!(
        "stats after the ack:    ready={} unacked={} consumers={}",
        stats.messages_ready, stats.messages_unacknowledged, stats.consumers
    );

    // Nothing is bound for cancellations. A plain publish would drop the
    // message silently (Routed::queues() == 0); mandatory hands it back.
    let cancel = Message::new("order 2").with_header("order-id", 2_i64);
    let mandatory = PublishOptions { mandatory: true };
    match conn.publish_with("orders", "order.us.cancelled", cancel, mandatory) {
        Err(PublishError::Unroutable { exchange, routing_key, message }) => println!(
            "mandatory publish to '{exchange}' with '{routing_key}' reached no queue; got back '{}'",
            String::from_utf8_lossy(message.body())
        ),
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("a cancellation was routed, yet nothing is bound for it".into()),
    }

    Ok(())
}
