//! With feature `tracing`: spans and events for what the bus does —
//! declarations, deliveries and redeliveries, dead-lettering, unroutable
//! publishes, each handler's work — with the message's W3C trace context
//! (`traceparent`) and conversation id attached, so one request can be
//! followed across modules in any `tracing` subscriber. Without the
//! feature every function here is empty and compiles away. (Worker
//! failures and lost consumers are `tracing` warnings either way.)
//!
//! Levels: `trace` for each delivery, `debug` for declarations,
//! redeliveries and unroutable publishes, `info` for dead letters and the
//! handler span, `warn` for failures.

use crate::message::Message;

#[cfg(feature = "tracing")]
fn context(message: &Message) -> (&str, &str) {
    let text = |name: &str| message.header(name).and_then(crate::FieldValue::as_str).unwrap_or("");
    (text(crate::TRACEPARENT_HEADER), text(crate::CONVERSATION_ID_HEADER))
}

/// A declaration.
#[inline]
pub(crate) fn declared(_what: &str, _name: &str) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "interoffice", what = _what, name = _name, "declared");
}

/// A delivery handed to a consumer or `get`.
#[inline]
pub(crate) fn delivered(_queue: &str, _consumer: &str, _tag: u64, _redelivered: bool, _message: &Message) {
    #[cfg(feature = "tracing")]
    {
        let (traceparent, conversation) = context(_message);
        if _redelivered {
            tracing::debug!(target: "interoffice", queue = _queue, consumer = _consumer, delivery_tag = _tag, traceparent, conversation, "redelivered");
        } else {
            tracing::trace!(target: "interoffice", queue = _queue, consumer = _consumer, delivery_tag = _tag, traceparent, conversation, "delivered");
        }
    }
}

/// A message that left a queue for a dead-letter reason.
#[inline]
pub(crate) fn dead_lettered(_queue: &str, _reason: &str, _exchange: Option<&str>, _message: &Message) {
    #[cfg(feature = "tracing")]
    {
        let (traceparent, conversation) = context(_message);
        match _exchange {
            Some(dlx) => {
                tracing::info!(target: "interoffice", queue = _queue, reason = _reason, exchange = dlx, traceparent, conversation, "dead-lettered")
            }
            None => {
                tracing::info!(target: "interoffice", queue = _queue, reason = _reason, traceparent, conversation, "dropped (no dead-letter route)")
            }
        }
    }
}

/// A publish that reached no queue.
#[inline]
pub(crate) fn unroutable(_exchange: &str, _routing_key: &str, _returned: bool, _message: &Message) {
    #[cfg(feature = "tracing")]
    {
        let (traceparent, conversation) = context(_message);
        tracing::debug!(target: "interoffice", exchange = _exchange, routing_key = _routing_key, returned = _returned, traceparent, conversation, "unroutable");
    }
}

/// The span a worker's handler runs in, entered for its duration.
pub(crate) struct HandlerSpan {
    #[cfg(feature = "tracing")]
    _entered: tracing::span::EnteredSpan,
}

/// Enters the span of a handler working on `message` from `queue`.
#[inline]
pub(crate) fn handling(_queue: &str, _message: &Message) -> HandlerSpan {
    #[cfg(feature = "tracing")]
    {
        let (traceparent, conversation) = context(_message);
        let span = tracing::info_span!(target: "interoffice", "interoffice.handle", queue = _queue, traceparent, conversation);
        HandlerSpan { _entered: span.entered() }
    }
    #[cfg(not(feature = "tracing"))]
    HandlerSpan {}
}

/// The span of an async handler: entered around each poll of its future
/// (never held across an await, which would leak it to other tasks).
pub(crate) struct AsyncSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// The span of an async handler working on `message` from `queue`.
#[inline]
pub(crate) fn async_handling(_queue: &str, _message: &Message) -> AsyncSpan {
    #[cfg(feature = "tracing")]
    {
        let (traceparent, conversation) = context(_message);
        AsyncSpan {
            span: tracing::info_span!(target: "interoffice", "interoffice.handle", queue = _queue, traceparent, conversation),
        }
    }
    #[cfg(not(feature = "tracing"))]
    AsyncSpan {}
}

impl AsyncSpan {
    /// Runs `f` inside the span.
    #[inline]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(f)
        }
        #[cfg(not(feature = "tracing"))]
        f()
    }
}
