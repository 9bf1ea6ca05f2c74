//! Request/reply between the modules of one process, RabbitMQ-style.
//!
//! The **pricing** module serves the queue `pricing` with
//! `Connection::serve` on two threads: each request is a typed `Quote`
//! (decoded with `Delivery::decode`), each reply a typed `Price` (built with
//! `Message::encode`), sent back to the caller's direct reply-to address with
//! the request's correlation id. The **checkout** module then:
//!
//! - makes a typed blocking call with `call_typed`;
//! - makes twenty calls at once from four threads over one connection, each
//!   reply reaching its own caller;
//! - calls `inventory`, which nobody serves: `CallError::NoRoute` comes back
//!   at once, with the request inside, instead of after the timeout;
//! - calls `legacy-tax`, whose server holds the request and answers only
//!   after the 50 ms timeout has passed: the call fails with
//!   `CallError::Timeout`, and the late reply is dropped and counted in
//!   `rpc_stats().late_replies_dropped`.
//!
//! Finally the pricing server shuts down gracefully and reports what it did.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example rpc
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use interoffice::{
    Broker, CallError, ConsumeOptions, Delivery, Message, QueueOptions, WorkerOptions, WorkerReport,
};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn Error + Send + Sync>;

/// A bound on a hang for calls that should be answered at once.
const PATIENCE: Duration = Duration::from_secs(5);
/// The timeout of the call to the service that answers too late.
const SHORT: Duration = Duration::from_millis(50);
const THREADS: usize = 4;
const CALLS_PER_THREAD: u32 = 5;

/// What checkout asks pricing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    sku: String,
    quantity: u32,
}

/// What pricing answers: a price, or a business "no" (not an error of the
/// server, so the request is still acknowledged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Price {
    Priced { sku: String, quantity: u32, total_cents: u64, served_by: String },
    UnknownSku(String),
}

const CATALOGUE: [(&str, u64); 3] = [("tea", 450), ("scone", 275), ("teapot", 2_900)];

/// The pricing module's request handler: decode, look up, encode.
fn price(request: &Delivery) -> Result<Message, BoxError> {
    let quote: Quote = request.decode()?;
    let served_by = thread::current().name().unwrap_or("unnamed").to_owned();
    let answer = match CATALOGUE.iter().find(|(sku, _)| *sku == quote.sku) {
        Some((_, unit_cents)) => Price::Priced {
            total_cents: unit_cents * u64::from(quote.quantity),
            sku: quote.sku,
            quantity: quote.quantity,
            served_by,
        },
        None => Price::UnknownSku(quote.sku),
    };
    Ok(Message::encode(&answer)?)
}

fn main() -> Result<(), BoxError> {
    let broker = Broker::new();

    // --- pricing: an RPC server on two threads ---------------------------
    let pricing = broker.connect_named("pricing");
    pricing.declare_queue("pricing", QueueOptions::default())?;
    let server = pricing.serve("pricing", WorkerOptions { threads: 2, ..Default::default() }, price)?;
    println!("pricing: serving queue 'pricing' on 2 threads");

    // --- checkout: the client ----------------------------------------------
    let checkout = broker.connect_named("checkout");

    // 1. One typed, blocking call.
    let quote = Quote { sku: "teapot".into(), quantity: 2 };
    let answer: Price = checkout.call_typed("", "pricing", &quote, PATIENCE)?;
    println!("checkout: {quote:?} -> {answer:?}");
    let Price::Priced { total_cents, .. } = answer else {
        return Err(format!("pricing does not know teapots: {answer:?}").into());
    };
    assert_eq!(total_cents, 5_800);

    let unknown = Quote { sku: "samovar".into(), quantity: 1 };
    let answer: Price = checkout.call_typed("", "pricing", &unknown, PATIENCE)?;
    println!("checkout: {unknown:?} -> {answer:?}");
    assert_eq!(answer, Price::UnknownSku("samovar".into()));

    // 2. Concurrent calls from several threads over the one connection.
    let started = Instant::now();
    let served_by = thread::scope(|scope| -> Result<BTreeMap<String, u32>, BoxError> {
        let callers: Vec<_> = (0..THREADS)
            .map(|t| {
                let checkout = &checkout;
                scope.spawn(move || -> Result<Vec<String>, BoxError> {
                    let mut servers = Vec::new();
                    for i in 0..CALLS_PER_THREAD {
                        let (sku, unit_cents) = CATALOGUE[(t + i as usize) % CATALOGUE.len()];
                        // A quantity unique to this call, so a reply meant
                        // for another caller would show.
                        let quantity = 100 * t as u32 + i + 1;
                        let quote = Quote { sku: sku.into(), quantity };
                        match checkout.call_typed("", "pricing", &quote, PATIENCE)? {
                            Price::Priced { sku: s, quantity: q, total_cents, served_by }
                                if s == sku && q == quantity && total_cents == unit_cents * u64::from(q) =>
                            {
                                servers.push(served_by);
                            }
                            other => return Err(format!("{quote:?} got the reply {other:?}").into()),
                        }
                    }
                    Ok(servers)
                })
            })
            .collect();
        let mut served_by = BTreeMap::new();
        for caller in callers {
            for server in caller.join().expect("a caller thread panicked")? {
                *served_by.entry(server).or_insert(0) += 1;
            }
        }
        Ok(served_by)
    })?;
    let concurrent: u32 = served_by.values().sum();
    println!(
        "checkout: {concurrent} concurrent calls from {THREADS} threads over one connection, \
         each answered to its own caller in {:?}",
        started.elapsed()
    );
    for (thread, calls) in &served_by {
        println!("  {thread} answered {calls}");
    }
    assert_eq!(concurrent, THREADS as u32 * CALLS_PER_THREAD);

    // 3. A service nobody serves: no queue takes the request, so the call
    //    fails at once — not after the (long) timeout — and hands it back.
    let started = Instant::now();
    match checkout.call("", "inventory", Message::new("how many teapots?"), PATIENCE) {
        Err(CallError::NoRoute { exchange, routing_key, message }) => println!(
            "checkout: call to '{routing_key}' via exchange '{exchange}' -> NoRoute after {:?}; \
             got back '{}'",
            started.elapsed(),
            String::from_utf8_lossy(message.body())
        ),
        other => return Err(format!("expected NoRoute from 'inventory', got {other:?}").into()),
    }
    assert!(started.elapsed() < PATIENCE, "NoRoute waited for the timeout");

    // 4. A service that answers too late. Its server is a plain consumer that
    //    holds the request and answers only once the call has given up.
    let legacy = broker.connect_named("legacy-tax");
    legacy.declare_queue("legacy-tax", QueueOptions::default())?;
    let requests = legacy.consume("legacy-tax", ConsumeOptions::default())?;

    let started = Instant::now();
    let outcome = checkout.call("", "legacy-tax", Message::new("VAT on 58.00?"), SHORT);
    let waited = started.elapsed();
    println!("checkout: call to 'legacy-tax' with a {SHORT:?} timeout -> {outcome:?} after {waited:?}");
    assert_eq!(outcome.unwrap_err(), CallError::Timeout { timeout: SHORT });
    assert!(waited >= SHORT, "timed out early: {waited:?}");
    assert_eq!(checkout.rpc_stats().late_replies_dropped, 0);

    let request = requests.recv_timeout(PATIENCE)?;
    let props = request.properties();
    let correlation_id =
        props.correlation_id().map(str::to_owned).ok_or("the request has no correlation id")?;
    let reply_to = props.reply_to().map(str::to_owned).ok_or("the request has no reply_to")?;
    legacy.publish("", &reply_to, Message::new("11.60").with_correlation_id(correlation_id))?;
    request.ack()?;
    let stats = checkout.rpc_stats();
    println!(
        "legacy-tax: answered after all; checkout dropped it (late replies dropped: {}, calls in flight: {})",
        stats.late_replies_dropped, stats.calls_in_flight
    );
    assert_eq!(stats.late_replies_dropped, 1);
    assert_eq!(stats.calls_in_flight, 0);

    // 5. Clean shutdown: the server finishes what it is doing and stops; the
    //    connections close.
    let report = server.shutdown();
    drop(requests);
    legacy.close();
    checkout.close();
    let queue = broker.queue_stats("pricing")?;
    println!("pricing: shut down, {report:?}");
    println!(
        "summary: {} requests priced ({} concurrent), 1 NoRoute, 1 timeout, {} late reply dropped; \
         'pricing' has {} ready, {} unacked, {} consumers",
        report.processed,
        concurrent,
        stats.late_replies_dropped,
        queue.messages_ready,
        queue.messages_unacknowledged,
        queue.consumers
    );
    assert_eq!(
        report,
        WorkerReport {
            processed: 2 + u64::from(concurrent),
            failed: 0,
            panicked: 0,
            replies_undeliverable: 0,
            consumers_lost: 0,
            last_failures: Vec::new(),
        }
    );
    assert_eq!((queue.messages_ready, queue.messages_unacknowledged, queue.consumers), (0, 0, 0));
    Ok(())
}
