//! With feature `tracing`: the bus's spans and events — declarations,
//! deliveries, dead letters, handler spans, handler failures — carry the
//! message's W3C trace context, checked with a test subscriber. One test in
//! its own binary: `tracing` caches per call site whether anything listens,
//! and a test running without a subscriber on another thread would race it.
#![cfg(feature = "tracing")]

#[path = "support/trace_shop.rs"]
#[allow(dead_code)]
mod trace_shop;
use std::sync::{Arc, Mutex};

use std::future::Future;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};

use tracing::{Event, Metadata, Subscriber};

/// What the test subscriber saw: `span NAME k=v ...` and `event MESSAGE k=v ...`.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl Subscriber for Seen {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("interoffice")
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("span {}", span.metadata().name()));
        span.record(&mut fields);
        let mut seen = self.0.lock().unwrap();
        seen.push(fields.0);
        Id::from_u64(seen.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(format!("event {}", event.metadata().level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn spans_and_events_carry_the_trace_context() {
    let seen = Seen::default();
    tracing::subscriber::with_default(seen.clone(), trace_shop::run);
    let seen = seen.0.lock().unwrap().join("\n");
    let has = |needle: &str| assert!(seen.contains(needle), "no {needle:?} in:\n{seen}");
    has("event DEBUG message=declared what=queue name=in");
    has("event TRACE message=delivered queue=in");
    has(&format!("span interoffice.handle queue=in traceparent={}", trace_shop::PARENT));
    has(&format!(
        "event INFO message=dead-lettered queue=poison reason=rejected exchange=dlx traceparent={}",
        trace_shop::PARENT
    ));
    has("event WARN");
    has("message=interoffice: a worker's handler failed");
    an_async_handler_runs_in_its_span();
}

/// An async worker's handler runs in its span too. (Called from the one
/// test: see the file's docs.)
fn an_async_handler_runs_in_its_span() {
    let seen = Seen::default();
    tracing::subscriber::with_default(seen.clone(), || {
        let broker = interoffice::Broker::new();
        let conn = broker.connect();
        conn.declare_queue("async-in", Default::default()).unwrap();
        conn.publish("", "async-in", trace_shop::traced("x")).unwrap();
        let worker = conn
            .worker_async("async-in", Default::default(), async |_: &interoffice::Delivery| {
                tracing::info!(target: "interoffice", "inside the handler");
                Ok::<(), String>(())
            })
            .unwrap();
        let stop = worker.stop_handle();
        futures::executor::block_on(async {
            let run = worker.run();
            let mut run = std::pin::pin!(run);
            // One message: poll until it is handled, then stop.
            futures::future::poll_fn(|cx| {
                let polled = run.as_mut().poll(cx);
                if broker
                    .queue_stats("async-in")
                    .map(|s| s.messages_ready + s.messages_unacknowledged)
                    .unwrap_or(0)
                    == 0
                {
                    stop.stop();
                }
                polled
            })
            .await
        });
    });
    let seen = seen.0.lock().unwrap().join("\n");
    assert!(
        seen.contains(&format!("span interoffice.handle queue=async-in traceparent={}", trace_shop::PARENT)),
        "{seen}"
    );
    assert!(seen.contains("inside the handler"), "{seen}");
}
