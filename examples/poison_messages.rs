//! Keeping a queue healthy under failure: retries with backoff, a delivery
//! limit for poison messages, a dead-letter queue, a TTL and a length limit —
//! all on a manual clock, so the run is instant and the same every time.
//!
//! A payment worker charges cards through a flaky gateway. Transient failures
//! are retried with exponential backoff (`nack_with_delay`); a malformed
//! payment fails every time and, past the queue's delivery limit, lands in
//! `payments.dead` with RabbitMQ's `x-death` history; a burst over the
//! queue's length limit is refused back to the publisher instead of being
//! lost; and a payment nobody handled within its TTL expires into the
//! dead-letter queue too.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example poison_messages
//! ```

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, ConsumeOptions, Delivery, FieldValue, ManualClock, Message, Overflow,
    PublishError, QueueOptions,
};

fn first_death(delivery: &Delivery) -> String {
    let Some(death) = delivery.header("x-death").and_then(FieldValue::as_array).and_then(|d| d.first())
    else {
        return "no x-death".into();
    };
    let field =
        |k: &str| death.as_table().and_then(|t| t.get(k)).map(ToString::to_string).unwrap_or_default();
    format!("reason {} in queue {} (count {})", field("reason"), field("queue"), field("count"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect_named("payments");

    conn.declare_queue("payments.dead", QueueOptions::default())?;
    conn.declare_queue(
        "payments",
        QueueOptions {
            delivery_limit: Some(3),
            max_length: Some(5),
            overflow: Overflow::RejectPublish,
            message_ttl: Some(Duration::from_secs(60)),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("payments.dead".into()),
            ..Default::default()
        },
    )?;

    // A burst of seven payments into a queue that holds five: two come back.
    let mut refused = Vec::new();
    for id in 1..=7 {
        let payment = Message::new(format!("payment {id}")).with_message_id(format!("p-{id}"));
        match conn.publish("", "payments", payment) {
            Ok(_) => {}
            Err(PublishError::Rejected { message, .. }) => refused.push(*message),
            Err(other) => return Err(other.into()),
        }
    }
    println!("queue full: {} payments handed back to the publisher, none lost", refused.len());
    assert_eq!(refused.len(), 2);

    let worker = conn.consume("payments", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let mut settled = 0;
    let mut gateway_calls = 0;
    // Payments 1-3 go through at once; 4 fails twice before it goes through;
    // 5 is malformed and fails every time, until the delivery limit takes it
    // out of the queue.
    let poisoned = || broker.queue_stats("payments").map_or(0, |s| s.dead_lettered.delivery_limit);
    while settled < 4 || poisoned() == 0 {
        let delivery = match worker.try_recv() {
            Ok(delivery) => delivery,
            Err(_) => {
                // Nothing visible: let time pass until the next retry is due.
                clock.advance(Duration::from_secs(1));
                continue;
            }
        };
        gateway_calls += 1;
        let body = String::from_utf8_lossy(delivery.body()).into_owned();
        let attempt = delivery.delivery_count();
        let ok = match body.as_str() {
            "payment 4" => attempt >= 2,
            "payment 5" => false,
            _ => true,
        };
        if ok {
            println!("{body}: charged on attempt {}", attempt + 1);
            delivery.ack()?;
            settled += 1;
        } else {
            let backoff = Duration::from_secs(1 << attempt);
            println!("{body}: gateway error on attempt {}, retrying in {backoff:?}", attempt + 1);
            delivery.nack_with_delay(backoff)?;
        }
    }
    // A late payment nobody handles: its TTL runs out.
    drop(worker);
    conn.publish("", "payments", Message::new("payment 8"))?;
    clock.advance(Duration::from_secs(60));

    println!("gateway called {gateway_calls} times");
    while let Some(dead) = conn.get("payments.dead", false)? {
        println!("dead letter: {} — {}", String::from_utf8_lossy(dead.body()), first_death(&dead));
        dead.ack()?;
    }
    let stats = broker.queue_stats("payments").expect("declared above");
    println!(
        "payments: {} ready, {} expired, dead-lettered {:?}, {} publishes rejected",
        stats.messages_ready, stats.messages_expired, stats.dead_lettered, stats.publishes_rejected
    );
    assert_eq!(stats.dead_lettered.delivery_limit, 1);
    assert_eq!(stats.dead_lettered.expired, 1);
    assert_eq!(stats.publishes_rejected, 2);
    Ok(())
}
