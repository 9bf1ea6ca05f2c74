//! Trace propagation: a W3C `traceparent`/`tracestate` travels from a
//! publish to its delivery, into what a handler publishes, into an RPC
//! reply and into a dead letter. (With feature `tracing`, the bus's spans
//! and events carry it: `tests/tracing_events.rs`.)

#[path = "support/trace_shop.rs"]
mod trace_shop;

use interoffice::{TRACEPARENT_HEADER, TRACESTATE_HEADER};
use trace_shop::{PARENT, header, run};

#[test]
fn the_trace_context_travels_through_handlers_replies_and_dead_letters() {
    let (child, reply, dead) = run();
    for message in [&child, &reply, &dead] {
        assert_eq!(header(message, TRACEPARENT_HEADER).as_deref(), Some(PARENT), "{message:?}");
        assert_eq!(header(message, TRACESTATE_HEADER).as_deref(), Some("congo=t61rcWkgMzE"));
    }
}
