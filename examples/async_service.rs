//! The same bus from async code, under a multi-threaded tokio runtime.
//!
//! Five modules of one shop share a broker; nothing they do blocks a runtime
//! thread while it waits:
//!
//! - **pricing** serves the queue `pricing` on two threads of its own
//!   (`Connection::serve`), answering typed `Basket`s with typed `Total`s.
//! - **checkout** prices six baskets at once: six `call_async` requests are
//!   in flight together and joined with `futures::future::join_all`. Each
//!   priced order is published as an `order.placed` event to the topic
//!   exchange `events`.
//! - **emails** is an async worker (`Connection::worker_async`) run as a
//!   tokio task; it "sends" a confirmation for every `order.placed` (an
//!   awaited SMTP call in real life), publishes `email.sent`, and is stopped
//!   with its `StopHandle` once every confirmation is out.
//! - **audit** is an async consumer task reading every event of the shop
//!   through `Consumer::into_stream` until it sees `shop.closed`.
//! - **fraud-check** is a task holding a connection with a last will
//!   (`set_will`). It panics on the fourth order; tokio drops the task, the
//!   connection goes with it, and its will reaches the **monitor** task,
//!   which waits for it with `recv_async().await`. The order it was checking
//!   goes back to its queue, with those it had not reached, for a
//!   replacement. (A panic hook prints that deliberate panic as one line on
//!   stderr.)
//!
//! Finally the shop closes: the audit task ends, the pricing server shuts
//! down gracefully and every connection is closed.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example async_service
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use interoffice::{
    Broker, ConsumeOptions, Delivery, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions,
    WorkerOptions, WorkerReport,
};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn Error + Send + Sync>;

const EVENTS: &str = "events";
/// A bound on a hang for calls that should be answered at once.
const PATIENCE: Duration = Duration::from_secs(5);
const ORDERS: u32 = 6;
/// The order fraud-check chokes on.
const FATAL_ORDER: u32 = 4;
/// How fraud-check's panic message starts, so the panic hook can tell it apart.
const DELIBERATE: &str = "fraud-check: deliberate crash";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Basket {
    order: u32,
    lines: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Total {
    order: u32,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u32,
    cents: u64,
    email: String,
}

fn unit_cents(sku: &str) -> Option<u64> {
    match sku {
        "tea" => Some(450),
        "scone" => Some(275),
        "teapot" => Some(2_900),
        _ => None,
    }
}

/// The pricing module's handler (a plain function: it runs on the server's
/// threads, not on the runtime).
fn price(request: &Delivery) -> Result<Message, BoxError> {
    let basket: Basket = request.decode()?;
    let mut cents = 0;
    for (sku, quantity) in &basket.lines {
        cents += unit_cents(sku).ok_or_else(|| format!("unknown sku '{sku}'"))? * u64::from(*quantity);
    }
    Ok(Message::encode(&Total { order: basket.order, cents })?)
}

/// Prints the deliberate crash as one line, without a backtrace whatever
/// `RUST_BACKTRACE` says; any other panic (a failed assertion) as usual.
fn quiet_deliberate_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match info.payload().downcast_ref::<String>() {
        Some(message) if message.starts_with(DELIBERATE) => eprintln!("panicked: {message}"),
        _ => default(info),
    }));
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.body()).into_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    quiet_deliberate_panic();
    let broker = Broker::new();
    let setup = broker.connect_named("setup");
    setup.declare_exchange(EVENTS, ExchangeKind::Topic, ExchangeOptions::default())?;
    for (queue, key) in [("emails", "order.placed"), ("fraud-check", "order.placed"), ("audit", "#")] {
        setup.declare_queue(queue, QueueOptions::default())?;
        setup.bind_queue(queue, EVENTS, key, FieldTable::new())?;
    }
    setup.declare_queue("obituaries", QueueOptions::default())?;
    setup.declare_queue("pricing", QueueOptions::default())?;
    setup.close();

    // --- monitor: waits for a module's last will -------------------------
    let monitor = broker.connect_named("monitor");
    let obituaries = monitor.consume("obituaries", ConsumeOptions::default())?;
    let monitor_task = tokio::spawn(async move {
        let will = obituaries.recv_async().await?;
        let obituary = text(&will);
        will.ack()?;
        println!("monitor: received a last will: '{obituary}'");
        Ok::<_, BoxError>(obituary)
    });

    // --- audit: every event, as a stream, until the shop closes ----------
    let audit = broker.connect_named("audit");
    let mut events =
        audit.consume("audit", ConsumeOptions { prefetch: 16, ..Default::default() })?.into_stream();
    let audit_task = tokio::spawn(async move {
        let mut log = Vec::new();
        while let Some(event) = events.next().await {
            let key = event.routing_key().to_owned();
            event.ack()?;
            if key == "shop.closed" {
                println!("audit: shop closed, {} events logged", log.len());
                return Ok(log);
            }
            log.push(key);
        }
        Err::<Vec<String>, BoxError>("the audit stream ended before the shop closed".into())
    });

    // --- fraud-check: a module that crashes, leaving a will --------------
    let fraud = broker.connect_named("fraud-check");
    fraud.set_will("", "obituaries", Message::new("fraud-check died without closing its connection"))?;
    let fraud_task = tokio::spawn(async move {
        let conn = fraud; // owned by the task: it goes when the task does
        let orders = conn.consume("fraud-check", ConsumeOptions { prefetch: 1, ..Default::default() })?;
        while let Ok(delivery) = orders.recv_async().await {
            let placed: OrderPlaced = delivery.decode()?;
            if placed.order == FATAL_ORDER {
                panic!("{DELIBERATE} on order {}", placed.order);
            }
            println!("fraud-check: order {} looks fine", placed.order);
            delivery.ack()?;
        }
        Ok::<(), BoxError>(())
    });

    // --- emails: an async worker on a tokio task --------------------------
    let emails = Arc::new(broker.connect_named("emails"));
    let (sent, mut outbox) = futures::channel::mpsc::unbounded();
    let publisher = Arc::clone(&emails);
    let worker = emails.worker_async(
        "emails",
        WorkerOptions::default(),
        async move |d: &Delivery| -> Result<(), BoxError> {
            let placed: OrderPlaced = d.decode()?;
            tokio::task::yield_now().await; // the SMTP call would be awaited here
            let note = format!("confirmation of order {} sent to {}", placed.order, placed.email);
            println!("emails: {note}");
            publisher.publish(EVENTS, "email.sent", Message::new(note))?;
            sent.unbounded_send(placed.order)?;
            Ok(())
        },
    )?;
    let stop_emails = worker.stop_handle();
    let emails_task = tokio::spawn(worker.run());

    // --- pricing: a served queue (threads of its own) ---------------------
    let pricing = broker.connect_named("pricing");
    let server = pricing.serve("pricing", WorkerOptions { threads: 2, ..Default::default() }, price)?;

    // --- checkout: concurrent async calls, then events ---------------------
    let checkout = broker.connect_named("checkout");
    let baskets: Vec<Basket> = (1..=ORDERS)
        .map(|order| Basket {
            order,
            lines: vec![("tea".into(), order), ("scone".into(), 2), ("teapot".into(), order % 2)],
        })
        .collect();
    // Each call is published when created: all six are in flight at once.
    let calls = baskets
        .iter()
        .map(|basket| Ok(checkout.call_async("", "pricing", Message::encode(basket)?, PATIENCE)))
        .collect::<Result<Vec<_>, BoxError>>()?;
    println!("checkout: {} pricing calls in flight at once", calls.len());
    let replies = join_all(calls).await;
    let mut totals = Vec::new();
    for (basket, reply) in baskets.iter().zip(replies) {
        let total: Total = reply?.decode()?;
        let expected = 450 * u64::from(basket.order) + 2 * 275 + 2_900 * u64::from(basket.order % 2);
        assert_eq!(total, Total { order: basket.order, cents: expected }, "a reply reached the wrong call");
        println!("checkout: order {} costs {}.{:02}", total.order, total.cents / 100, total.cents % 100);
        totals.push(total);
    }
    for total in &totals {
        let placed = OrderPlaced {
            order: total.order,
            cents: total.cents,
            email: format!("customer{}@example.com", total.order),
        };
        let routed = checkout.publish_typed(EVENTS, "order.placed", &placed)?;
        assert_eq!(routed.queues(), 3, "emails, fraud-check and audit each get the event");
    }

    // Every confirmation out: stop the email worker. Stopping is graceful.
    let mut confirmed: Vec<u32> = (&mut outbox).take(ORDERS as usize).collect().await;
    confirmed.sort_unstable();
    println!("emails: {} confirmations sent; stopping the worker", confirmed.len());
    stop_emails.stop();
    let email_report = emails_task.await?;
    assert_eq!(confirmed, (1..=ORDERS).collect::<Vec<_>>());
    assert_eq!(email_report, WorkerReport { processed: u64::from(ORDERS), ..Default::default() });

    // The crash and the will.
    let crash = fraud_task.await;
    assert!(crash.as_ref().is_err_and(|e| e.is_panic()), "fraud-check should have panicked: {crash:?}");
    println!("main: the fraud-check task ended in a panic, its connection dropped without close");
    let obituary = monitor_task.await??;
    assert!(obituary.starts_with("fraud-check died"));

    // Close the shop: the audit log ends with the events before this one.
    checkout.publish(EVENTS, "shop.closed", Message::new(""))?;
    let log = audit_task.await??;
    let placed_events = log.iter().filter(|k| *k == "order.placed").count();
    let email_events = log.iter().filter(|k| *k == "email.sent").count();
    assert_eq!(
        (placed_events, email_events, log.len()),
        (ORDERS as usize, ORDERS as usize, 2 * ORDERS as usize)
    );

    // Shut down: the RPC server's threads are joined off the runtime.
    let pricing_report = tokio::task::spawn_blocking(move || server.shutdown()).await?;
    for conn in [&checkout, &pricing, &monitor, &audit, &*emails] {
        conn.close();
    }
    let fraud_queue = broker.queue_stats("fraud-check")?;
    let emails_queue = broker.queue_stats("emails")?;
    println!(
        "summary: {ORDERS} orders priced by {ORDERS} concurrent call_async calls: pricing {pricing_report:?}"
    );
    println!("summary: {} confirmations e-mailed: emails {email_report:?}", confirmed.len());
    println!(
        "summary: {} events audited ({placed_events} order.placed, {email_events} email.sent)",
        log.len()
    );
    println!(
        "summary: 1 crash reported by its last will; {} orders wait in 'fraud-check' for a replacement",
        fraud_queue.messages_ready
    );
    println!("summary: done in {:?}", started.elapsed());
    assert_eq!(pricing_report, WorkerReport { processed: u64::from(ORDERS), ..Default::default() });
    assert_eq!((emails_queue.messages_ready, emails_queue.messages_unacknowledged), (0, 0));
    // The order it crashed on was requeued with the ones it never reached.
    assert_eq!(
        (fraud_queue.messages_ready, fraud_queue.messages_unacknowledged),
        ((ORDERS - FATAL_ORDER + 1) as usize, 0)
    );
    Ok(())
}
