//! A deterministic shop whose messages carry a W3C trace context, shared
//! by `trace_context.rs` and `tracing_events.rs` (no tests of its own).

use std::time::Duration;

use interoffice::{
    Broker, ExchangeKind, FieldValue, Message, OnError, QueueOptions, TRACEPARENT_HEADER, TRACESTATE_HEADER,
    WorkerOptions,
};

pub const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn traced(body: &str) -> Message {
    Message::new(body.to_owned())
        .with_header(TRACEPARENT_HEADER, PARENT)
        .with_header(TRACESTATE_HEADER, "congo=t61rcWkgMzE")
}

pub fn header(message: &Message, name: &str) -> Option<String> {
    message.header(name).and_then(FieldValue::as_str).map(str::to_owned)
}

/// The deterministic shop: `in` → worker publishes to `out` and calls
/// `rpc`; `poison` dead-letters to `parked`. Returns what reached `out`,
/// the RPC reply and the dead letter.
pub fn run() -> (Message, Message, Message) {
    let (broker, _clock) = Broker::deterministic();
    let conn = std::sync::Arc::new(broker.connect());
    conn.declare_exchange("dlx", ExchangeKind::Fanout, Default::default()).unwrap();
    for queue in ["in", "out", "rpc", "parked", "replies"] {
        conn.declare_queue(queue, QueueOptions::default()).unwrap();
    }
    conn.declare_queue(
        "poison",
        QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() },
    )
    .unwrap();
    conn.bind_queue("parked", "dlx", "", None).unwrap();
    let _rpc = conn
        .serve("rpc", WorkerOptions::default(), |r| Ok::<_, String>(Message::new(r.body().clone())))
        .unwrap();
    let publisher = std::sync::Arc::clone(&conn);
    let _in = conn
        .worker("in", WorkerOptions::default(), move |d| {
            publisher.publish("", "out", Message::new("child")).map_err(|e| e.to_string())?;
            let reply = publisher
                .call("", "rpc", Message::new("ask"), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            publisher.publish("", "replies", reply.message().clone()).map_err(|e| e.to_string())?;
            let _ = d;
            Ok::<(), String>(())
        })
        .unwrap();
    let discard = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
    let _poison = conn.worker("poison", discard, |_| Err::<(), _>("no")).unwrap();
    conn.publish("", "in", traced("root")).unwrap();
    conn.publish("", "poison", traced("bad")).unwrap();
    broker.settle_ignoring_unconsumed(Duration::from_secs(5)).unwrap();
    let take = |q: &str| conn.get(q, true).unwrap().unwrap().message().clone();
    (take("out"), take("replies"), take("parked"))
}
