//! Request/reply: the client side of RPC over the bus.
//!
//! A call publishes the request with a fresh `correlation_id` and a
//! `reply_to` naming the connection's direct reply-to address, a
//! pseudo-queue like RabbitMQ's `amq.rabbitmq.reply-to` that needs no
//! declaration: a reply published to the default exchange with that name as
//! its routing key goes straight to the waiting call, matched by correlation
//! id. Calls from many threads and tasks share one address per connection.
//! The server side is [`Connection::serve`](crate::Connection::serve).

use crate::hash::FastHashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::codec::{DecodeError, EncodeError};
use crate::delivery::Delivery;
use crate::error::{ErrorKind, PublishError};
use crate::message::Message;
use crate::queue::Envelope;
use crate::sync::{Arc, AtomicBool, AtomicU64, Condvar, Mutex, Ordering, Weak, spin_wait};
use crate::timer::TimerTarget;
use crate::vhost::publish::{PublishOptions, Routed};
use crate::vhost::{ReplyTarget, Vhost};

pub use crate::vhost::DIRECT_REPLY_TO;

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply came within the timeout. A reply arriving later is dropped
    /// and counted ([`RpcStats::late_replies_dropped`]).
    #[error("no reply within {timeout:?}")]
    Timeout {
        /// The timeout of the call.
        timeout: Duration,
    },
    /// The request reached no queue: nobody serves it. Reported at once,
    /// not after the timeout.
    #[error("NO_ROUTE - request to exchange '{exchange}' with routing key '{routing_key}' reached no queue")]
    NoRoute {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The request, handed back.
        message: Box<Message>,
    },
    /// The request could not be published (it is inside the error).
    #[error(transparent)]
    Publish(PublishError),
    /// The calling connection closed while the call waited (or before).
    #[error("the connection is closed")]
    ConnectionClosed,
    /// A typed request could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A typed reply could not be decoded.
    #[error("the reply could not be decoded: {0}")]
    Decode(#[from] DecodeError),
}

impl CallError {
    /// The AMQP-like kind of the error; `None` for timeouts and codec errors.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            CallError::NoRoute { .. } => Some(ErrorKind::NoRoute),
            CallError::Publish(e) => Some(e.kind()),
            CallError::ConnectionClosed => Some(ErrorKind::ConnectionClosed),
            CallError::Timeout { .. } | CallError::Encode(_) | CallError::Decode(_) => None,
        }
    }
}

/// How long a blocking call spins for its reply before parking.
const SPIN: Duration = Duration::from_micros(50);

/// Figures of a connection's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RpcStats {
    /// Calls waiting for their reply.
    pub calls_in_flight: usize,
    /// Replies that arrived for no waiting call (after its timeout, or for
    /// a call whose future was dropped) and were dropped.
    pub late_replies_dropped: u64,
}

#[derive(Debug, Default)]
struct CallState {
    outcome: Option<Result<Delivery, CallError>>,
    waker: Option<Waker>,
}

/// One call waiting for its reply.
#[derive(Debug)]
pub(crate) struct PendingCall {
    /// Its id with the broker's timers, where they watch it (`scheduled`).
    timer_id: u64,
    /// Its number with its endpoint, the end of its correlation id.
    number: u64,
    timeout: Duration,
    /// When it times out, on the broker's clock.
    deadline: Instant,
    /// Whether the broker's timers watch its deadline. A blocking call on
    /// the system clock watches it itself while it waits (scheduling and
    /// cancelling a timer cost as much as a routing pass); an async call, or
    /// one on a manual clock, needs the timers.
    scheduled: bool,
    /// Whether the broker runs its workers inline: a blocking wait runs
    /// them. Kept here so that other waits do not upgrade `endpoint` and
    /// its broker (two reference counts the replying thread writes too).
    runs_workers: bool,
    endpoint: Weak<ReplyEndpoint>,
    state: Mutex<CallState>,
    ready: Condvar,
    /// Whether the call is done: its outcome is in `state` (until taken), or
    /// it failed. Written only under `state`'s lock; read there, and by a
    /// waiter spinning for its reply without the lock, which the completing
    /// thread would otherwise have to wrest from it.
    answered: AtomicBool,
    /// Set once the endpoint took it out of its pending calls (a reply
    /// came, or the connection closed): [`PendingCall::finish`] then need
    /// not look for it. Only a hint: unset, `finish` looks and finds nothing.
    unregistered: AtomicBool,
}

impl PendingCall {
    /// Sets the outcome unless there is one already; false if there was.
    fn complete(&self, outcome: Result<Delivery, CallError>) -> bool {
        let waker = {
            let mut state = self.state.lock();
            if self.answered.load(Ordering::Relaxed) {
                return false;
            }
            state.outcome = Some(outcome);
            self.answered.store(true, Ordering::Release);
            state.waker.take()
        };
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    fn wait(&self) -> Result<Delivery, CallError> {
        if self.runs_workers
            && let Some(broker) = self.endpoint.upgrade().and_then(|e| e.broker.upgrade())
        {
            return self.wait_running_workers(&broker);
        }
        // An in-process round trip takes microseconds: spin briefly before
        // parking, to save the wake-up of a parked thread when the reply is
        // quick.
        spin_wait(SPIN, || self.answered.load(Ordering::Acquire).then_some(()));
        let mut state = self.state.lock();
        loop {
            if let Some(outcome) = state.outcome.take() {
                return outcome;
            }
            if self.answered.load(Ordering::Relaxed) {
                return Err(CallError::ConnectionClosed);
            }
            if self.scheduled {
                self.ready.wait(&mut state);
            } else if Instant::now() >= self.deadline {
                self.answered.store(true, Ordering::Release);
                return Err(CallError::Timeout { timeout: self.timeout });
            } else {
                let _timed_out = self.ready.wait_until(&mut state, self.deadline);
            }
        }
    }

    /// Waits in a broker whose workers run inline: runs them (the server
    /// among them) on this thread until the reply is there. If none has
    /// anything to do, the reply can only come from another thread, or
    /// never: waits for it a slice of real time at a time, up to the call's
    /// timeout in real time — the manual clock cannot move while its test
    /// thread waits here.
    fn wait_running_workers(&self, broker: &Vhost) -> Result<Delivery, CallError> {
        let deadline = std::time::Instant::now().checked_add(self.timeout);
        loop {
            let ran = broker.core.inline_workers.as_ref().map_or(0, |w| w.run_until_idle());
            let mut state = self.state.lock();
            if let Some(outcome) = state.outcome.take() {
                return outcome;
            }
            if self.answered.load(Ordering::Relaxed) {
                return Err(CallError::ConnectionClosed);
            }
            if ran == 0 {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    self.answered.store(true, Ordering::Release);
                    return Err(CallError::Timeout { timeout: self.timeout });
                }
                self.ready.wait_for(&mut state, Duration::from_millis(1));
            }
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Delivery, CallError>> {
        let mut state = self.state.lock();
        if let Some(outcome) = state.outcome.take() {
            return Poll::Ready(outcome);
        }
        if self.answered.load(Ordering::Relaxed) {
            return Poll::Ready(Err(CallError::ConnectionClosed));
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The caller is done with the call (answered, timed out, or gave up):
    /// later replies for it are late.
    fn finish(&self) {
        if let Some(endpoint) = self.endpoint.upgrade() {
            if !self.unregistered.load(Ordering::Relaxed) {
                endpoint.pending.lock().remove(&self.number);
            }
            if self.scheduled
                && let Some(broker) = endpoint.broker.upgrade()
            {
                broker.core.timers().cancel(self.timer_id);
            }
        }
    }
}

impl TimerTarget for PendingCall {
    fn on_timer(&self) {
        self.complete(Err(CallError::Timeout { timeout: self.timeout }));
    }
}

/// A connection's direct reply-to address and its waiting calls.
#[derive(Debug)]
pub(crate) struct ReplyEndpoint {
    pub(crate) name: Arc<str>,
    broker: Weak<Vhost>,
    pending: Mutex<FastHashMap<u64, Arc<PendingCall>>>,
    next_correlation: AtomicU64,
    late_replies: AtomicU64,
    closed: AtomicBool,
}

impl ReplyTarget for ReplyEndpoint {
    fn deliver(&self, envelope: &Arc<Envelope>) {
        self.deliver_reply(envelope);
    }
}

impl ReplyEndpoint {
    /// A new direct reply-to address in `vhost`, registered for routing.
    pub(crate) fn register(vhost: &Arc<Vhost>) -> Arc<ReplyEndpoint> {
        let endpoint = Arc::new(ReplyEndpoint::new(vhost.generate_reply_address(), Arc::downgrade(vhost)));
        let target: Weak<dyn ReplyTarget> = Arc::downgrade(&endpoint) as Weak<dyn ReplyTarget>;
        vhost.register_reply_target(Arc::clone(&endpoint.name), target);
        endpoint
    }

    fn new(name: String, broker: Weak<Vhost>) -> Self {
        ReplyEndpoint {
            name: name.into(),
            broker,
            pending: Mutex::new(FastHashMap::default()),
            next_correlation: AtomicU64::new(1),
            late_replies: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// A reply came: hand it to its call, or count it as late.
    fn deliver_reply(&self, envelope: &Arc<Envelope>) {
        let call = envelope
            .message()
            .properties()
            .correlation_id()
            .and_then(|id| call_number(&self.name, id))
            .and_then(|number| self.pending.lock().remove(&number));
        let delivered = call.is_some_and(|call| {
            call.unregistered.store(true, Ordering::Relaxed);
            let reply = Delivery::unqueued(Arc::clone(envelope));
            call.complete(Ok(reply))
        });
        if !delivered {
            self.late_replies.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fails every waiting call: the connection closed.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let calls: Vec<Arc<PendingCall>> = self.pending.lock().drain().map(|(_, c)| c).collect();
        for call in calls {
            call.unregistered.store(true, Ordering::Relaxed);
            call.complete(Err(CallError::ConnectionClosed));
        }
    }

    pub(crate) fn stats(&self) -> RpcStats {
        RpcStats {
            calls_in_flight: self.pending.lock().len(),
            late_replies_dropped: self.late_replies.load(Ordering::Relaxed),
        }
    }

    /// Registers a call and publishes its request through `publish` (the
    /// caller's connection, with its route cache: walking the exchanges for
    /// every request was a third of a call's instructions). `blocking`: the
    /// caller waits on its own thread (see [`PendingCall::scheduled`]).
    pub(crate) fn start(
        self: &Arc<Self>,
        broker: &Vhost,
        mut message: Message,
        timeout: Duration,
        blocking: bool,
        publish: impl FnOnce(Message, PublishOptions) -> Result<Routed, PublishError>,
    ) -> Result<Arc<PendingCall>, CallError> {
        let n = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let correlation_id = correlation_id(&self.name, n);
        let clock = broker.core.clock();
        let deadline = crate::clock::later(clock.now(), timeout);
        let scheduled = !blocking || clock.is_manual() || broker.core.inline_workers.is_some();
        let properties = message.properties_mut();
        properties.set_call(&correlation_id, &self.name);
        let call = Arc::new(PendingCall {
            // The broker's id counter is a line other threads write: a
            // call the timers do not watch needs no id with them.
            timer_id: if scheduled { broker.core.id() } else { 0 },
            runs_workers: broker.core.inline_workers.is_some(),
            number: n,
            timeout,
            deadline,
            scheduled,
            endpoint: Arc::downgrade(self),
            state: Mutex::new(CallState::default()),
            ready: Condvar::new(),
            answered: AtomicBool::new(false),
            unregistered: AtomicBool::new(false),
        });
        // Registered before publishing: a fast server may answer before
        // `publish` returns.
        {
            let mut pending = self.pending.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(CallError::ConnectionClosed);
            }
            pending.insert(n, Arc::clone(&call));
        }
        if scheduled {
            let target: Weak<dyn TimerTarget> = Arc::downgrade(&call) as Weak<dyn TimerTarget>;
            broker.core.timers().schedule(target, call.timer_id, deadline);
        }
        match publish(message, PublishOptions { mandatory: true }) {
            Ok(_) => {
                // A deadline already reached (a zero timeout) fails at once,
                // whatever the clock: a manual clock has no thread to fire
                // it, and waiting for the next `advance` could be forever. A
                // reply that came during the publish still wins.
                if broker.core.clock().now() >= deadline {
                    call.on_timer();
                }
                Ok(call)
            }
            Err(error) => {
                call.finish();
                Err(match error {
                    PublishError::Unroutable { exchange, routing_key, message } => {
                        CallError::NoRoute { exchange, routing_key, message }
                    }
                    other => CallError::Publish(other),
                })
            }
        }
    }
}

/// `{endpoint}.{n}`, written without the formatting machinery (which took
/// a tenth of a call's instructions).
fn correlation_id(endpoint: &str, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(endpoint.len() + 1 + digits.len() - at);
    id.push_str(endpoint);
    id.push('.');
    id.extend(digits[at..].iter().map(|&d| char::from(d)));
    id
}

/// The number of the call whose correlation id `id` is, if it is one of
/// `endpoint`'s: exactly the form [`correlation_id`] writes, so that no
/// other text (a leading zero, a sign) finds a call.
fn call_number(endpoint: &str, id: &str) -> Option<u64> {
    let digits = id.strip_prefix(endpoint)?.strip_prefix('.')?;
    let canonical = match digits.as_bytes() {
        [] => false,
        [b'0'] => true,
        [first, rest @ ..] => *first != b'0' && first.is_ascii_digit() && rest.iter().all(u8::is_ascii_digit),
    };
    if canonical { digits.parse().ok() } else { None }
}

/// Waits for a started call's reply, blocking.
pub(crate) fn wait(call: &PendingCall) -> Result<Delivery, CallError> {
    let outcome = call.wait();
    call.finish();
    outcome
}

/// The future of [`Connection::call_async`](crate::Connection::call_async).
///
/// The request is published when the future is created; the future waits
/// for the reply. Dropping it gives up the call: a reply arriving later is
/// dropped and counted, never delivered elsewhere.
#[derive(Debug)]
#[must_use = "the reply is only received if the future is awaited"]
pub struct Call {
    state: CallFutureState,
}

#[derive(Debug)]
enum CallFutureState {
    Waiting(Arc<PendingCall>),
    Failed(Option<CallError>),
}

impl Call {
    pub(crate) fn waiting(call: Arc<PendingCall>) -> Self {
        Call { state: CallFutureState::Waiting(call) }
    }

    pub(crate) fn failed(error: CallError) -> Self {
        Call { state: CallFutureState::Failed(Some(error)) }
    }
}

impl Future for Call {
    type Output = Result<Delivery, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            CallFutureState::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(CallError::ConnectionClosed)))
            }
            CallFutureState::Waiting(call) => {
                let outcome = call.poll(cx);
                if outcome.is_ready() {
                    call.finish();
                }
                outcome
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let CallFutureState::Waiting(call) = &self.state {
            call.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_the_endpoint_a_dot_and_the_number() {
        for n in [0, 1, 9, 10, 42, 1_000_000, u64::MAX] {
            let id = correlation_id("amq.rabbitmq.reply-to.x", n);
            assert_eq!(id, format!("amq.rabbitmq.reply-to.x.{n}"));
            assert_eq!(call_number("amq.rabbitmq.reply-to.x", &id), Some(n), "read back");
        }
    }

    #[test]
    fn only_the_exact_form_of_an_endpoints_id_names_a_call() {
        let endpoint = "amq.rabbitmq.reply-to.x";
        for id in [
            "amq.rabbitmq.reply-to.x.07",
            "amq.rabbitmq.reply-to.x.+7",
            "amq.rabbitmq.reply-to.x.",
            "amq.rabbitmq.reply-to.x7",
            "amq.rabbitmq.reply-to.y.7",
            "amq.rabbitmq.reply-to.x.7 ",
            "amq.rabbitmq.reply-to.x.٧",
            "amq.rabbitmq.reply-to.x.18446744073709551616",
            "7",
            "",
        ] {
            assert_eq!(call_number(endpoint, id), None, "{id:?}");
        }
        assert_eq!(call_number(endpoint, "amq.rabbitmq.reply-to.x.0"), Some(0));
    }
}
