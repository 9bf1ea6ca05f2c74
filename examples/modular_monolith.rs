//! A modular monolith: three modules of one process that only talk through
//! the bus, as they would through RabbitMQ if they were ever split apart.
//!
//! - **orders** publishes `order.<region>.created` events to the topic
//!   exchange `events`.
//! - **billing** consumes `order.*.created` with two competing workers, a
//!   fast one and a slow one, both with `prefetch: 1`: fair dispatch sends
//!   work to whoever is free, so the fast worker takes most of it. Each
//!   order becomes an `invoice.created` event.
//! - **shipping** consumes `invoice.*`. Its first worker panics on its third
//!   invoice; the unacknowledged delivery dies with the thread and is
//!   requeued, and the replacement worker the supervisor starts receives it
//!   flagged `redelivered`.
//!
//! Each module declares its own queue and bindings and has its own
//! `Connection`. When both queues are drained the process shuts down and
//! checks that every order was invoiced and shipped exactly once.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example modular_monolith
//! ```

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use interoffice::{
    Broker, Connection, ConsumeOptions, Consumer, Delivery, ExchangeKind, ExchangeOptions, FieldTable,
    Message, PublishOptions, QueueOptions, RecvTimeoutError,
};

type BoxError = Box<dyn Error + Send + Sync>;

const EXCHANGE: &str = "events";
const ORDER_COUNT: u64 = 12;
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
/// How long a worker blocks before looking at the shutdown flag again.
const POLL: Duration = Duration::from_millis(20);

fn main() -> Result<(), BoxError> {
    let broker = Broker::new();
    broker.connect().declare_exchange(EXCHANGE, ExchangeKind::Topic, ExchangeOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));

    // Consumers first: each module declares its queue before starting, so no
    // event published afterwards can miss it.
    let shipping = shipping::start(&broker, Arc::clone(&stop))?;
    let billing = billing::start(&broker, Arc::clone(&stop))?;
    let published = orders::start(&broker, ORDER_COUNT).join().expect("orders panicked")?;

    // Billing acks an order only after publishing its invoice, and shipping
    // acks an invoice only after recording it, so once both queues hold
    // nothing ready or unacknowledged (checked in that order), all the work
    // is done.
    wait_until_drained(&broker, &[billing::QUEUE, shipping::QUEUE], Duration::from_secs(10))?;
    stop.store(true, Ordering::Relaxed);
    let billing = billing.join().expect("billing panicked")?;
    let shipping = shipping.join().expect("shipping supervisor panicked")?;

    let invoiced: BTreeSet<u64> = billing.fast.iter().chain(&billing.slow).copied().collect();
    let shipped: BTreeSet<u64> = shipping.shipments.iter().map(|s| s.order_id).collect();
    let redelivered = shipping.shipments.iter().filter(|s| s.redelivered).count();
    println!("summary:  {} orders published", published.len());
    println!(
        "summary:  billing fast worker invoiced {}, slow worker invoiced {}",
        billing.fast.len(),
        billing.slow.len()
    );
    println!(
        "summary:  {} orders invoiced, {} shipped ({} shipments, {} crash, {} redelivery)",
        invoiced.len(),
        shipped.len(),
        shipping.shipments.len(),
        shipping.crashes,
        redelivered
    );

    let all_orders: BTreeSet<u64> = published.into_iter().collect();
    assert_eq!(all_orders.len() as u64, ORDER_COUNT);
    assert_eq!(billing.fast.len() + billing.slow.len(), all_orders.len(), "an order was invoiced twice");
    assert_eq!(invoiced, all_orders);
    assert_eq!(shipping.shipments.len(), all_orders.len(), "an order was shipped twice");
    assert_eq!(shipped, all_orders);
    assert_eq!(shipping.crashes, 1);
    assert_eq!(redelivered, 1);
    assert!(billing.fast.len() > billing.slow.len(), "fair dispatch should favour the fast worker");
    Ok(())
}

/// Polls the queues' counters until none has a message ready or unacknowledged.
fn wait_until_drained(broker: &Broker, queues: &[&str], timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let drained = queues.iter().all(|name| {
            broker.queue_stats(name).is_ok_and(|s| s.messages_ready == 0 && s.messages_unacknowledged == 0)
        });
        if drained {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!("queues {queues:?} not drained after {timeout:?}").into())
}

/// The next delivery, or `None` once `stop` is set or the consumer is gone.
/// Polling keeps every worker loop bounded by the shutdown flag.
fn next_delivery(consumer: &Consumer, stop: &AtomicBool) -> Option<Delivery> {
    while !stop.load(Ordering::Relaxed) {
        match consumer.recv_timeout(POLL) {
            Ok(delivery) => return Some(delivery),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// The `order-id` header that every event of this system carries.
fn order_id(delivery: &Delivery) -> Option<u64> {
    let id = delivery.message().header("order-id")?.as_i64()?;
    u64::try_from(id).ok()
}

mod orders {
    use super::*;

    /// Publishes `count` orders from their own thread; returns their ids.
    pub fn start(broker: &Broker, count: u64) -> JoinHandle<Result<Vec<u64>, BoxError>> {
        let conn = broker.connect_named("orders");
        thread::spawn(move || {
            let mut published = Vec::new();
            for (id, region) in (1..=count).zip(REGIONS.iter().cycle()) {
                let total_cents = 1_000 + id * 250;
                let body = format!(r#"{{"order_id":{id},"region":"{region}","total_cents":{total_cents}}}"#);
                let message = Message::new(body)
                    .with_content_type("application/json")
                    .with_message_id(format!("order-{id}"))
                    .with_header("order-id", id)
                    .with_header("region", *region);
                let key = format!("order.{region}.created");
                // Printed first: billing may react before publish_with returns.
                println!("orders:   order {id} created, publishing {key}");
                // Mandatory: an order nobody bills is a wiring bug worth failing on.
                conn.publish_with(EXCHANGE, &key, message, PublishOptions { mandatory: true })?;
                published.push(id);
                // Orders trickle in rather than arriving all at once.
                thread::sleep(Duration::from_millis(8));
            }
            Ok(published)
        })
    }
}

mod billing {
    use super::*;

    pub const QUEUE: &str = "billing.orders";

    /// Which order ids each billing worker invoiced.
    pub struct Report {
        pub fast: Vec<u64>,
        pub slow: Vec<u64>,
    }

    pub fn start(
        broker: &Broker,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<Result<Report, BoxError>>, BoxError> {
        let conn = broker.connect_named("billing");
        conn.declare_queue(QUEUE, QueueOptions::default())?;
        conn.bind_queue(QUEUE, EXCHANGE, "order.*.created", FieldTable::new())?;
        Ok(thread::spawn(move || {
            // A Connection is Sync: both workers borrow the module's one.
            thread::scope(|s| {
                let fast = s.spawn(|| work(&conn, "fast", Duration::ZERO, &stop));
                let slow = s.spawn(|| work(&conn, "slow", Duration::from_millis(30), &stop));
                Ok(Report {
                    fast: fast.join().expect("fast billing worker panicked")?,
                    slow: slow.join().expect("slow billing worker panicked")?,
                })
            })
        }))
    }

    fn work(conn: &Connection, name: &str, pause: Duration, stop: &AtomicBool) -> Result<Vec<u64>, BoxError> {
        // prefetch 1: a busy worker is offered nothing more until it acks,
        // so the queue hands new orders to whichever worker is free.
        let consumer = conn.consume(QUEUE, ConsumeOptions { prefetch: 1, ..Default::default() })?;
        let mut invoiced = Vec::new();
        while let Some(delivery) = next_delivery(&consumer, stop) {
            let Some(id) = order_id(&delivery) else {
                // Requeueing a malformed event would only loop it forever.
                println!("billing:  [{name}] rejecting an order without an id");
                delivery.reject(false)?;
                continue;
            };
            thread::sleep(pause); // the slow worker's "work"
            let invoice = Message::new(format!(r#"{{"invoice":"INV-{id:04}","order_id":{id}}}"#))
                .with_content_type("application/json")
                .with_correlation_id(format!("order-{id}"))
                .with_header("order-id", id);
            println!("billing:  [{name}] order {id} -> INV-{id:04}, publishing invoice.created");
            conn.publish_with(EXCHANGE, "invoice.created", invoice, PublishOptions { mandatory: true })?;
            // Ack only once the invoice is out: a crash before this line
            // would redeliver the order rather than lose its invoice.
            delivery.ack()?;
            invoiced.push(id);
        }
        Ok(invoiced)
    }
}

mod shipping {
    use super::*;

    pub const QUEUE: &str = "shipping.invoices";
    /// Bounds the supervisor's restart loop.
    const MAX_WORKERS: usize = 3;

    pub struct Shipment {
        pub order_id: u64,
        pub redelivered: bool,
    }

    pub struct Report {
        pub shipments: Vec<Shipment>,
        pub crashes: usize,
    }

    pub fn start(
        broker: &Broker,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<Result<Report, BoxError>>, BoxError> {
        let conn = broker.connect_named("shipping");
        conn.declare_queue(QUEUE, QueueOptions::default())?;
        conn.bind_queue(QUEUE, EXCHANGE, "invoice.*", FieldTable::new())?;
        Ok(thread::spawn(move || supervise(Arc::new(conn), &stop)))
    }

    /// Runs one worker at a time and replaces it if it panics. The connection
    /// outlives the crashed worker: what requeues its invoice is the
    /// unsettled `Delivery` being dropped during the unwind.
    fn supervise(conn: Arc<Connection>, stop: &Arc<AtomicBool>) -> Result<Report, BoxError> {
        // The shipping module's "database": shared so a crashed worker's
        // shipments survive it.
        let ledger = Arc::new(Mutex::new(Vec::new()));
        let mut crashes = 0;
        for n in 1..=MAX_WORKERS {
            let crash_on = (n == 1).then_some(3);
            let worker = thread::spawn({
                let (conn, ledger, stop) = (Arc::clone(&conn), Arc::clone(&ledger), Arc::clone(stop));
                move || work(&conn, n, crash_on, &ledger, &stop)
            });
            match worker.join() {
                Ok(result) => {
                    result?;
                    let shipments = std::mem::take(&mut *ledger.lock().expect("ledger poisoned"));
                    return Ok(Report { shipments, crashes });
                }
                Err(panic) => {
                    crashes += 1;
                    let reason = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown");
                    println!("shipping: worker {n} crashed ({reason}); starting worker {}", n + 1);
                }
            }
        }
        Err(format!("shipping: gave up after {MAX_WORKERS} crashed workers").into())
    }

    fn work(
        conn: &Connection,
        n: usize,
        crash_on: Option<usize>,
        ledger: &Mutex<Vec<Shipment>>,
        stop: &AtomicBool,
    ) -> Result<(), BoxError> {
        let consumer = conn.consume(QUEUE, ConsumeOptions { prefetch: 1, ..Default::default() })?;
        let mut received = 0;
        while let Some(delivery) = next_delivery(&consumer, stop) {
            received += 1;
            let Some(id) = order_id(&delivery) else {
                println!("shipping: [worker {n}] rejecting an invoice without an order id");
                delivery.reject(false)?;
                continue;
            };
            if crash_on == Some(received) {
                // Before any side effect: had the crash come after recording
                // the shipment but before the ack, the redelivery would ship
                // the order twice, and the handler would have to deduplicate.
                panic!("label printer jammed on order {id}");
            }
            let redelivered = delivery.redelivered();
            ledger.lock().expect("ledger poisoned").push(Shipment { order_id: id, redelivered });
            delivery.ack()?;
            let flag = if redelivered { " (redelivered)" } else { "" };
            println!("shipping: [worker {n}] shipped order {id}{flag}");
        }
        Ok(())
    }
}
