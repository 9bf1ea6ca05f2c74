//! Testing your services: a unit test of an order → billing → shipping
//! interaction, written with interoffice's test toolkit.
//!
//! - a deterministic broker: a manual clock, no thread of its own, the same
//!   interleaving on every run;
//! - `settle` instead of sleeps, and a causal settle for one order;
//! - a recorder and its assertions;
//! - `explain_route` and `lint` for the topology;
//! - a fault-injected duplicate, caught by `ProcessedIds`.
//!
//! `cargo run --example testing` runs the scenario and prints its trace;
//! `cargo test --example testing` runs it as the tests below (so does the
//! plain `cargo test`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use interoffice::{
    Broker, Connection, ExchangeKind, Fault, FaultAction, FieldTable, Message, OnError, ProcessedIds,
    QueueOptions, Recorder, WorkerOptions,
};
use serde::{Deserialize, Serialize};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u32,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderBilled {
    order: u32,
    invoice: String,
}

/// The application's topology, as production declares it.
fn declare(conn: &Connection) -> Result {
    conn.declare_exchange("shop", ExchangeKind::Topic, Default::default())?;
    conn.declare_exchange("shop.dead", ExchangeKind::Fanout, Default::default())?;
    let dead_letters = QueueOptions { dead_letter_exchange: Some("shop.dead".into()), ..Default::default() };
    conn.declare_queue("billing", dead_letters.clone())?;
    conn.declare_queue("shipping", dead_letters)?;
    conn.declare_queue(
        "shop.parked",
        QueueOptions { message_ttl: Some(Duration::from_secs(86_400)), ..Default::default() },
    )?;
    conn.bind_queue("billing", "shop", "order.placed", FieldTable::new())?;
    conn.bind_queue("shipping", "shop", "order.billed", FieldTable::new())?;
    conn.bind_queue("shop.parked", "shop.dead", "", FieldTable::new())?;
    Ok(())
}

/// The billing and shipping modules, as production starts them. Billing
/// charges each order once, whatever the bus redelivers (`ProcessedIds`);
/// shipping counts parcels.
fn start_modules(
    conn: &Arc<Connection>,
    charges: &Arc<AtomicU32>,
    parcels: &Arc<AtomicU32>,
) -> Result<Vec<interoffice::Worker>> {
    let processed = Arc::new(ProcessedIds::new(10_000));
    let (publisher, charges) = (Arc::clone(conn), Arc::clone(charges));
    let refuse = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
    let billing = conn.worker("billing", refuse, move |delivery| -> std::result::Result<(), String> {
        let placed: OrderPlaced = delivery.decode().map_err(|e| e.to_string())?;
        if placed.amount_cents == 0 {
            return Err(format!("order {} has no amount", placed.order));
        }
        let id = format!("order-{}", placed.order);
        if processed.remember(&id) {
            charges.fetch_add(1, Ordering::SeqCst);
            let billed = OrderBilled { order: placed.order, invoice: format!("INV-{}", placed.order) };
            let message = Message::encode(&billed)
                .map_err(|e| e.to_string())?
                .with_message_id(format!("billed-{}", placed.order));
            publisher.publish("shop", "order.billed", message).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    let parcels = Arc::clone(parcels);
    let shipping = conn.worker("shipping", WorkerOptions::default(), move |delivery| {
        let billed: OrderBilled = delivery.decode().map_err(|e| e.to_string())?;
        assert!(billed.invoice.starts_with("INV-"));
        parcels.fetch_add(1, Ordering::SeqCst);
        Ok::<(), String>(())
    })?;
    Ok(vec![billing, shipping])
}

/// The scenario: three orders, one duplicated by an injected fault, one
/// that billing refuses. Returns the recorder for the caller to inspect.
fn order_to_shipping() -> Result<(Recorder, u32, u32)> {
    let (broker, _clock) = Broker::deterministic();
    let conn = Arc::new(broker.connect());
    declare(&conn)?;

    let (charges, parcels) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let _modules = start_modules(&conn, &charges, &parcels)?;
    // The topology, checked before anything is published.
    let route = broker.explain_route("shop", "order.placed", None);
    assert_eq!(route.queues(), ["billing"], "{route}");
    assert!(broker.lint().iter().all(|f| f.severity() == interoffice::Severity::Info), "{:?}", broker.lint());

    let recorder = broker.record();
    let faults = broker.inject_faults(1);
    faults.add(Fault { queue: Some("billing".into()), limit: Some(1), ..Fault::new(FaultAction::Duplicate) });

    let conversation = broker.conversation();
    let first = OrderPlaced { order: 1, amount_cents: 4_200 };
    conn.publish("shop", "order.placed", conversation.stamp(Message::encode(&first)?))?;
    conversation.settle(Duration::from_secs(5))?; // order 1, its duplicate, its bill, its parcel

    conn.publish("shop", "order.placed", Message::encode(&OrderPlaced { order: 2, amount_cents: 990 })?)?;
    conn.publish("shop", "order.placed", Message::encode(&OrderPlaced { order: 3, amount_cents: 0 })?)?;
    broker.settle_ignoring_unconsumed(Duration::from_secs(5))?;
    Ok((recorder, charges.load(Ordering::SeqCst), parcels.load(Ordering::SeqCst)))
}

fn main() -> Result {
    let (recorder, charges, parcels) = order_to_shipping()?;
    for line in recorder.trace() {
        println!("{line}");
    }
    println!("charged {charges} orders, shipped {parcels} parcels");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use interoffice::DeathReason;

    #[test]
    fn an_order_is_billed_once_and_shipped_even_when_delivered_twice() -> Result {
        let (recorder, charges, parcels) = order_to_shipping()?;
        assert_eq!(recorder.assert_published_times("shop", "order.placed", 3).len(), 3);
        // The duplicate reached billing twice, and was charged once.
        assert_eq!(
            recorder.events().iter().filter(|e| matches!(e, interoffice::Event::Fault { .. })).count(),
            1
        );
        assert_eq!(charges, 2);
        assert_eq!(parcels, 2);
        let billed: Vec<OrderBilled> = recorder.decode_published("shop", "order.billed")?;
        assert_eq!(billed.iter().map(|b| b.order).collect::<Vec<_>>(), [1, 2]);
        // The order without an amount was refused and parked.
        let refused: OrderPlaced =
            recorder.assert_dead_lettered("billing", DeathReason::Rejected).decode()?;
        assert_eq!(refused.order, 3);
        recorder.assert_none_published("shop", "order.cancelled");
        Ok(())
    }

    #[test]
    fn the_scenario_is_the_same_every_run() -> Result {
        let trace = order_to_shipping()?.0.trace();
        for _ in 0..10 {
            assert_eq!(order_to_shipping()?.0.trace(), trace);
        }
        Ok(())
    }
}
