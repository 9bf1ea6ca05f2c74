//! A module moved out of the monolith, behind a link through RabbitMQ.
//!
//! The shop (orders and billing) started as one process on one bus. Billing
//! has outgrown it: it now runs as its own process — here, its own `Broker`
//! on another thread, standing for another machine — and the two talk
//! through a real RabbitMQ. The modules' code does not change: `orders`
//! still publishes order events to its local exchange and still *calls*
//! billing for a quote; `billing` still consumes its local queue and still
//! serves quotes. Only the wiring does:
//!
//! - the shop's topology is carried over to RabbitMQ from the same
//!   definitions (`Bridge::declare_definitions`);
//! - in the shop, an outbound link forwards the `billing` queue to RabbitMQ
//!   (publisher confirms: acknowledged locally only once RabbitMQ has it);
//! - in billing's process, an inbound link brings RabbitMQ's `billing`
//!   queue into its local `billing` queue;
//! - quotes: the shop's calls go out (`Bridge::call_remote_service`), and
//!   billing answers RabbitMQ's callers (`Bridge::serve_remote_callers`).
//!
//! Run it with RabbitMQ on localhost (or `AMQP_URL` set):
//!
//! ```text
//! cargo run --example split_service --features amqp
//! ```

use std::error::Error;
use std::time::{Duration, Instant};

use interoffice::bridge::{Bridge, LinkOptions};
use interoffice::{Broker, Connection, ExchangeKind, ExchangeOptions, Message, QueueOptions, WorkerOptions};

type BoxError = Box<dyn Error + Send + Sync>;

/// The orders module: unchanged by the split.
mod orders {
    use super::*;

    pub const EXCHANGE: &str = "shop.events";

    pub fn declare(conn: &Connection) -> Result<(), BoxError> {
        conn.declare_exchange(EXCHANGE, ExchangeKind::Topic, ExchangeOptions::default())?;
        Ok(())
    }

    /// Places an order: asks billing for a quote, then announces the order.
    pub fn place(conn: &Connection, id: u32, item: &str) -> Result<String, BoxError> {
        let quote =
            conn.call("", super::billing::QUOTES, Message::new(item.to_owned()), Duration::from_secs(10))?;
        let quote = String::from_utf8_lossy(quote.body()).into_owned();
        let event =
            Message::new(format!("order {id}: {item} at {quote}")).with_message_id(format!("order-{id}"));
        conn.publish(EXCHANGE, "order.eu.created", event)?;
        Ok(quote)
    }
}

/// The billing module: unchanged by the split.
mod billing {
    use super::*;

    pub const QUEUE: &str = "billing";
    pub const QUOTES: &str = "billing.quotes";

    pub fn declare(conn: &Connection) -> Result<(), BoxError> {
        conn.declare_queue(QUEUE, QueueOptions::default())?;
        conn.bind_queue(QUEUE, super::orders::EXCHANGE, "order.*.created", None)?;
        conn.declare_queue(QUOTES, QueueOptions::default())?;
        Ok(())
    }

    /// Serves quotes and invoices orders until dropped.
    pub fn run(conn: &Connection) -> Result<(interoffice::Worker, interoffice::Worker), BoxError> {
        let quotes = conn.serve(QUOTES, WorkerOptions::default(), |request| {
            let item = String::from_utf8_lossy(request.body()).into_owned();
            let cents = 100 * item.len() as u64;
            Ok::<_, std::convert::Infallible>(Message::new(format!("{}.{:02} EUR", cents / 100, cents % 100)))
        })?;
        let invoices = conn.worker(QUEUE, WorkerOptions::default(), |order| {
            println!("billing: invoiced {}", String::from_utf8_lossy(order.body()));
            Ok::<(), String>(())
        })?;
        Ok((quotes, invoices))
    }
}

fn main() -> Result<(), BoxError> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    // The shop: orders, and what is left of billing — its queues.
    let shop = Broker::new();
    let shop_conn = shop.connect();
    orders::declare(&shop_conn)?;
    billing::declare(&shop_conn)?;

    // The same topology on RabbitMQ, from the same definitions.
    let shop_bridge = Bridge::connect(url.clone())?;
    let carried = shop_bridge.declare_definitions(&shop.export_definitions(), "/")?;
    println!(
        "carried over: {} exchanges, {} queues, {} bindings",
        carried.exchanges, carried.queues, carried.bindings
    );

    // Billing, in its own process: the same module code on its own bus.
    let billing_bus = Broker::new();
    let billing_conn = billing_bus.connect();
    orders::declare(&billing_conn)?;
    billing::declare(&billing_conn)?;
    let billing_bridge = Bridge::connect(url)?;
    let options = LinkOptions::default();
    let _orders_in =
        billing_bridge.link_inbound(&billing_conn, billing::QUEUE, "", Some(billing::QUEUE), options);
    let _quotes_served =
        billing_bridge.serve_remote_callers(&billing_conn, billing::QUOTES, billing::QUOTES, options)?;
    let _billing = billing::run(&billing_conn)?;

    // The shop's side of the wiring: its billing queue and quote calls go out.
    let _orders_out =
        shop_bridge.link_outbound(&shop_conn, billing::QUEUE, "", Some(billing::QUEUE), options)?;
    // The orders module calls `billing.quotes` as before: locally that queue
    // is now forwarded to RabbitMQ's `billing.quotes` (carried over above),
    // where billing's process answers.
    let _quotes_out =
        shop_bridge.call_remote_service(&shop_conn, billing::QUOTES, "", billing::QUOTES, options)?;

    for (id, item) in [(1, "teapot"), (2, "kettle"), (3, "cups")] {
        let quote = orders::place(&shop_conn, id, item)?;
        println!("orders: order {id} for a {item}, quoted {quote}");
    }

    // Wait until billing's process has invoiced all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    while billing_bus.queue_stats(billing::QUEUE)?.message_stats.is_none_or(|s| s.acknowledged < 3) {
        if Instant::now() > deadline {
            return Err("billing did not invoice the orders in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("done: three orders quoted and invoiced across the split");
    Ok(())
}
