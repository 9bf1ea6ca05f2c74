//! Links, like RabbitMQ's shovels: a local queue forwarded to a RabbitMQ
//! exchange (outbound), or a RabbitMQ queue forwarded into a local exchange
//! (inbound), each on its own AMQP connection, run as a task on the
//! bridge's runtime, reconnecting with exponential backoff and jitter.
//!
//! Nothing is lost: outbound, a local delivery is acknowledged only once
//! RabbitMQ confirmed the publish, and requeued (flagged redelivered) on a
//! negative confirm or a lost connection; inbound, a RabbitMQ delivery is
//! acknowledged only after the local publish succeeded. Duplicates come
//! only from redelivery and say so, carrying the header
//! [`REDELIVERED_HEADER`] on the side they arrive at (outbound, RabbitMQ's;
//! inbound, the local one).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable as AmqpTable;
use lapin::{Confirmation, PublisherConfirm};
use parking_lot::Mutex;

use super::convert::{from_amqp_message, to_amqp_properties};
use super::{AmqpUrl, redact};
use crate::connection::Connection;
use crate::consumer::ConsumeOptions;
use crate::delivery::Delivery;
use crate::error::PublishError;
use crate::field::FieldValue;
use crate::sync::Arc;

/// The header a link sets on a message it forwards again after its first
/// try may have arrived (a redelivery on the side it comes from): the
/// consumer on the other side can tell a possible duplicate, as it could
/// from `redelivered` on its own broker.
pub const REDELIVERED_HEADER: &str = "x-interoffice-redelivered";

/// How many times an outbound link tries a message (each failed try
/// returns it to its queue) before it gives up and dead-letters it locally.
pub const MAX_FORWARD_ATTEMPTS: u32 = 16;

/// How a link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkOptions {
    /// Messages in flight at once: outbound, local deliveries awaiting
    /// RabbitMQ's confirm; inbound, RabbitMQ's `basic.qos` prefetch.
    pub prefetch: u16,
    /// The first reconnect delay (before jitter); it doubles per failed try.
    pub reconnect_initial: Duration,
    /// The longest reconnect delay.
    pub reconnect_max: Duration,
}

impl Default for LinkOptions {
    /// Prefetch 256; reconnect after 100 ms, doubling to at most 30 s.
    fn default() -> Self {
        LinkOptions {
            prefetch: 256,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Opening its AMQP connection.
    Connecting,
    /// Forwarding.
    Running,
    /// Waiting to reconnect after a failure.
    Backoff,
    /// Stopped.
    Stopped,
}

/// A link's figures so far.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Where it stands now.
    pub state: LinkState,
    /// Messages forwarded and settled on both sides.
    pub forwarded: u64,
    /// Outbound: publishes RabbitMQ nacked (the local delivery requeued).
    /// Inbound: local publishes that failed (the RabbitMQ delivery requeued).
    pub requeued: u64,
    /// Messages the other side cannot take as they are (a header AMQP cannot
    /// carry, unroutable on RabbitMQ's side): rejected locally without
    /// requeue, so they go to the queue's dead-letter exchange if it has one.
    pub dead_lettered: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// The last failure, if any (passwords taken out).
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    state: AtomicU8,
    forwarded: AtomicU64,
    requeued: AtomicU64,
    dead_lettered: AtomicU64,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_state(&self, state: LinkState) {
        let code = match state {
            LinkState::Connecting => 0,
            LinkState::Running => 1,
            LinkState::Backoff => 2,
            LinkState::Stopped => 3,
        };
        self.state.store(code, Ordering::Release);
    }

    fn failed(&self, error: String) {
        *self.last_error.lock() = Some(error);
    }
}

/// A running link: see the module docs. Stopped when dropped (what it held
/// unsettled goes back to its queue).
pub struct Link {
    name: String,
    counters: Arc<Counters>,
    /// What the broker's overview reads, while the link lives.
    _report: Arc<Report>,
    /// The link as a definitions file would declare it, if it can be one.
    definition: Option<super::LinkDefinition>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("name", &self.name).field("stats", &self.stats()).finish()
    }
}

/// A link as the broker's overview reads it.
struct Report {
    name: String,
    counters: Arc<Counters>,
}

impl crate::core::ReportsLink for Report {
    fn overview(&self) -> crate::overview::LinkOverview {
        let stats = stats_of(&self.counters);
        crate::overview::LinkOverview {
            name: self.name.clone(),
            state: match stats.state {
                LinkState::Connecting => "connecting",
                LinkState::Running => "running",
                LinkState::Backoff => "backoff",
                LinkState::Stopped => "stopped",
            },
            forwarded: stats.forwarded,
            requeued: stats.requeued,
            dead_lettered: stats.dead_lettered,
            reconnects: stats.reconnects,
            last_error: stats.last_error,
        }
    }
}

/// A link's figures, read from its counters.
fn stats_of(c: &Counters) -> LinkStats {
    let state = match c.state.load(Ordering::Acquire) {
        0 => LinkState::Connecting,
        1 => LinkState::Running,
        2 => LinkState::Backoff,
        _ => LinkState::Stopped,
    };
    LinkStats {
        state,
        forwarded: c.forwarded.load(Ordering::Relaxed),
        requeued: c.requeued.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        reconnects: c.connections.load(Ordering::Relaxed).saturating_sub(1),
        last_error: c.last_error.lock().clone(),
    }
}

impl Link {
    /// What it is called (`outbound 'queue' → exchange 'x'`, `inbound 'queue' → exchange 'x'`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The link as a definitions file declares it (a shovel: write it with
    /// [`LinkDefinition::to_parameter`](super::LinkDefinition::to_parameter)
    /// into `Definitions::parameters`); `None` for the links of
    /// request/reply, which a shovel cannot express.
    pub fn definition(&self) -> Option<&super::LinkDefinition> {
        self.definition.as_ref()
    }

    /// The link with `definition` as the one it answers for (a link
    /// started from a definitions file keeps the shovel's own).
    pub(super) fn defined_as(mut self, definition: super::LinkDefinition) -> Link {
        self.definition = Some(definition);
        self
    }

    /// Its figures so far.
    pub fn stats(&self) -> LinkStats {
        stats_of(&self.counters)
    }

    /// Stops the link; what it held unsettled goes back to its queue.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.task.abort();
        self.counters.set_state(LinkState::Stopped);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The delay before reconnect attempt `attempt`: exponential, capped, with
/// ±50% jitter so that links do not reconnect in step.
fn backoff(options: &LinkOptions, attempt: u32) -> Duration {
    let base = options.reconnect_initial.saturating_mul(1_u32 << attempt.min(20)).min(options.reconnect_max);
    let jitter = {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(attempt);
        0.5 + (seed % 1000) as f64 / 1000.0
    };
    base.mul_f64(jitter).min(crate::clock::MAX_DURATION)
}

/// Where a forwarded message goes on the other side, by routing key.
#[derive(Debug, Clone)]
pub(super) enum KeyRule {
    /// Its own routing key.
    Own,
    /// This one.
    Fixed(String),
    /// A reply coming home to a local call: the call's direct reply-to
    /// address, read from its correlation id (`<address>.<n>`, as
    /// [`Connection::call`](crate::Connection::call) makes them).
    LocalCall,
    /// A local service's reply going back to a remote caller: the
    /// `reply_to` its request had, remembered by correlation id.
    Remembered(Arc<Replies>),
}

/// What a link does to a forwarded message's `reply_to`.
#[derive(Debug, Clone)]
pub(super) enum ReplyRule {
    /// Nothing.
    Keep,
    /// Outbound: a local call's direct reply-to address becomes this
    /// RabbitMQ queue, which a replies link brings home.
    LocalCallsTo(String),
    /// Inbound: the remote caller's `reply_to` is remembered under the
    /// correlation id, and the request's `reply_to` becomes this local
    /// queue, which an outbound link takes back.
    Remember(String, Arc<Replies>),
}

/// Remote callers' `reply_to`, by correlation id, while their requests are
/// served locally. Bounded: past [`MAX_REMEMBERED`] the oldest half goes.
#[derive(Debug, Default)]
pub(super) struct Replies {
    by_correlation: Mutex<std::collections::HashMap<String, (u64, String)>>,
    next: AtomicU64,
}

/// The most replies remembered at once.
const MAX_REMEMBERED: usize = 100_000;

impl Replies {
    fn remember(&self, correlation_id: &str, reply_to: &str) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut map = self.by_correlation.lock();
        if map.len() >= MAX_REMEMBERED {
            let cut = n.saturating_sub(MAX_REMEMBERED as u64 / 2);
            map.retain(|_, (at, _)| *at >= cut);
        }
        map.insert(correlation_id.to_owned(), (n, reply_to.to_owned()));
    }

    fn take(&self, correlation_id: &str) -> Option<String> {
        self.by_correlation.lock().remove(correlation_id).map(|(_, reply_to)| reply_to)
    }
}

/// What a link forwards to: the exchange on the other side, and the rules
/// for each message's routing key and `reply_to`.
#[derive(Debug, Clone)]
pub(super) struct Forward {
    pub(super) exchange: String,
    pub(super) key: KeyRule,
    pub(super) reply: ReplyRule,
}

impl Forward {
    /// To `exchange`, with each message's own routing key unless
    /// `routing_key` is given, `reply_to` untouched: a shovel's forwarding.
    pub(super) fn plain(exchange: &str, routing_key: Option<&str>) -> Forward {
        let key = routing_key.map_or(KeyRule::Own, |k| KeyRule::Fixed(k.to_owned()));
        Forward { exchange: exchange.to_owned(), key, reply: ReplyRule::Keep }
    }

    /// The routing key a shovel definition would give this link (`None`
    /// inside: the message's own), or `None` outside if a shovel cannot
    /// say what it does (the request/reply links).
    fn shovel_key(&self) -> Option<Option<String>> {
        match (&self.key, &self.reply) {
            (KeyRule::Own, ReplyRule::Keep) => Some(None),
            (KeyRule::Fixed(key), ReplyRule::Keep) => Some(Some(key.clone())),
            _ => None,
        }
    }

    /// The routing key for `message` (published with `own`), or why there is none.
    fn key_for(&self, own: &str, message: &crate::message::Message) -> Result<String, String> {
        let correlation = message.properties().correlation_id();
        match &self.key {
            KeyRule::Own => Ok(own.to_owned()),
            KeyRule::Fixed(key) => Ok(key.clone()),
            KeyRule::LocalCall => correlation
                .filter(|id| id.starts_with(crate::DIRECT_REPLY_TO))
                .and_then(|id| id.rsplit_once('.'))
                .map(|(address, _)| address.to_owned())
                .ok_or_else(|| format!("a reply without a local call's correlation id ({correlation:?})")),
            KeyRule::Remembered(replies) => correlation
                .and_then(|id| replies.take(id))
                .ok_or_else(|| format!("a reply to no remembered request (correlation id {correlation:?})")),
        }
    }

    /// `message` with its `reply_to` rewritten by the rule.
    fn rewrite_reply_to(&self, message: &mut crate::message::Message) {
        match &self.reply {
            ReplyRule::Keep => {}
            ReplyRule::LocalCallsTo(queue) => {
                if message.properties().reply_to().is_some_and(|r| r.starts_with(crate::DIRECT_REPLY_TO)) {
                    message.properties_mut().set_reply_to(queue);
                }
            }
            ReplyRule::Remember(outbox, replies) => {
                let properties = message.properties();
                if let (Some(reply_to), Some(id)) = (properties.reply_to(), properties.correlation_id()) {
                    let (reply_to, id) = (reply_to.to_owned(), id.to_owned());
                    replies.remember(&id, &reply_to);
                    message.properties_mut().set_reply_to(outbox);
                }
            }
        }
    }
}

pub(super) struct Spawn<'a> {
    pub(super) runtime: &'a tokio::runtime::Runtime,
    /// The local broker's services, where the link is listed.
    pub(super) core: Arc<crate::core::Core>,
    pub(super) url: AmqpUrl,
    pub(super) options: LinkOptions,
}

impl Spawn<'_> {
    fn start<F>(
        self,
        name: String,
        definition: Option<super::LinkDefinition>,
        run: impl FnOnce(AmqpUrl, LinkOptions, Arc<Counters>, Arc<AtomicBool>) -> F,
    ) -> Link
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let future = run(self.url, self.options, Arc::clone(&counters), Arc::clone(&stop));
        let task = self.runtime.spawn(future);
        let report = Arc::new(Report { name: name.clone(), counters: Arc::clone(&counters) });
        let weak: crate::sync::Weak<dyn crate::core::ReportsLink> =
            Arc::downgrade(&report) as crate::sync::Weak<dyn crate::core::ReportsLink>;
        self.core.register_link(weak);
        Link { name, counters, _report: report, definition, stop, task }
    }

    /// Outbound: local `queue` → RabbitMQ, as `forward` says.
    pub(super) fn outbound(
        self,
        local: &Connection,
        queue: &str,
        forward: Forward,
    ) -> Result<Link, crate::error::ConsumeError> {
        let consumer = local.consume(
            queue,
            ConsumeOptions { prefetch: u32::from(self.options.prefetch.max(1)), ..Default::default() },
        )?;
        let name = format!("outbound '{queue}' → exchange '{}'", forward.exchange);
        let definition = forward.shovel_key().map(|routing_key| super::LinkDefinition {
            name: name.clone(),
            vhost: local.vhost().to_owned(),
            direction: super::LinkDirection::Outbound {
                local_queue: queue.to_owned(),
                remote: self.url.clone(),
                remote_exchange: forward.exchange.clone(),
                routing_key,
            },
            options: self.options,
        });
        Ok(self.start(name, definition, move |url, options, counters, stop| async move {
            let mut attempt = 0;
            loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                counters.set_state(LinkState::Connecting);
                match open_confirm_channel(&url).await {
                    Ok((connection, channel)) => {
                        counters.connections.fetch_add(1, Ordering::Relaxed);
                        counters.set_state(LinkState::Running);
                        attempt = 0;
                        let error = pump_out(&consumer, &channel, &forward, &options, &counters).await;
                        counters.failed(redact(&error, &url));
                        let _closing = connection.close(200, "link reconnecting".into()).await;
                    }
                    Err(error) => counters.failed(error),
                }
                counters.set_state(LinkState::Backoff);
                tokio::time::sleep(backoff(&options, attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }))
    }
    /// Inbound: RabbitMQ `queue` → local, as `forward` says.
    pub(super) fn inbound(self, local: &Connection, queue: &str, forward: Forward) -> Link {
        let local = local.hold();
        let name = format!("inbound '{queue}' → exchange '{}'", forward.exchange);
        let definition = forward.shovel_key().map(|routing_key| super::LinkDefinition {
            name: name.clone(),
            vhost: local.vhost().to_owned(),
            direction: super::LinkDirection::Inbound {
                remote: self.url.clone(),
                remote_queue: queue.to_owned(),
                local_exchange: forward.exchange.clone(),
                routing_key,
            },
            options: self.options,
        });
        let queue = queue.to_owned();
        self.start(name, definition, move |url, options, counters, stop| async move {
            let mut attempt = 0;
            loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                counters.set_state(LinkState::Connecting);
                match open_consumer(&url, &queue, options.prefetch).await {
                    Ok((connection, consumer)) => {
                        counters.connections.fetch_add(1, Ordering::Relaxed);
                        counters.set_state(LinkState::Running);
                        attempt = 0;
                        let error = pump_in(consumer, &local, &forward, &counters).await;
                        counters.failed(redact(&error, &url));
                        let _closing = connection.close(200, "link reconnecting".into()).await;
                    }
                    Err(error) => counters.failed(error),
                }
                counters.set_state(LinkState::Backoff);
                tokio::time::sleep(backoff(&options, attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        })
    }
}

async fn open_confirm_channel(url: &AmqpUrl) -> Result<(lapin::Connection, lapin::Channel), String> {
    let connection = lapin::Connection::connect(url.secret(), lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", redact(&e.to_string(), url)))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
    Ok((connection, channel))
}

async fn open_consumer(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
) -> Result<(lapin::Connection, lapin::Consumer), String> {
    let connection = lapin::Connection::connect(url.secret(), lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", redact(&e.to_string(), url)))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    channel.basic_qos(prefetch.max(1), BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let consumer = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), AmqpTable::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, consumer))
}

/// Forwards local deliveries until the AMQP connection fails; returns why.
/// Up to `prefetch` publishes await their confirms at once; the local
/// delivery of each is settled by its confirm, in order.
async fn pump_out(
    consumer: &crate::consumer::Consumer,
    channel: &lapin::Channel,
    forward: &Forward,
    options: &LinkOptions,
    counters: &Counters,
) -> String {
    let exchange = forward.exchange.as_str();
    let window = usize::from(options.prefetch.max(1));
    let mut in_flight: VecDeque<(Delivery, PublisherConfirm)> = VecDeque::new();
    loop {
        // Take what is ready without waiting while the window has room;
        // wait for a delivery only when nothing is in flight.
        let next = if in_flight.is_empty() {
            match consumer.recv_async().await {
                Ok(delivery) => Some(delivery),
                Err(error) => return format!("the local consumer ended: {error}"),
            }
        } else if in_flight.len() < window {
            consumer.try_recv().ok()
        } else {
            None
        };
        match next {
            Some(delivery) => {
                if delivery.delivery_count() >= MAX_FORWARD_ATTEMPTS {
                    // Back in its queue every time its forwarding failed: a
                    // message RabbitMQ refuses by closing the channel (over
                    // its frame or size limits) would loop forever.
                    counters.failed(format!(
                        "message {:?} not taken by RabbitMQ after {MAX_FORWARD_ATTEMPTS} tries: dead-lettered locally",
                        delivery.message().properties().message_id()
                    ));
                    counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let _settled = delivery.reject(false);
                    continue;
                }
                let mut message = delivery.message().clone();
                if delivery.redelivered() {
                    message = message.with_header(REDELIVERED_HEADER, FieldValue::Bool(true));
                }
                let key = match forward.key_for(delivery.routing_key(), &message) {
                    Ok(key) => key,
                    Err(why) => {
                        counters.failed(why);
                        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        let _settled = delivery.reject(false);
                        continue;
                    }
                };
                forward.rewrite_reply_to(&mut message);
                let properties = match to_amqp_properties(message.properties()) {
                    Ok(properties) => properties,
                    Err(error) => {
                        counters.failed(error.to_string());
                        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        let _settled = delivery.reject(false);
                        continue;
                    }
                };
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                match channel
                    .basic_publish(exchange.into(), key.as_str().into(), options, message.body(), properties)
                    .await
                {
                    Ok(confirm) => in_flight.push_back((delivery, confirm)),
                    // Dropped unsettled, the delivery goes back to its queue.
                    Err(error) => return format!("publish failed: {error}"),
                }
            }
            None => {
                let Some((delivery, confirm)) = in_flight.pop_front() else { continue };
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => {
                        if delivery.ack().is_ok() {
                            counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Confirmation::Ack(Some(_returned))) => {
                        // Unroutable on RabbitMQ's side: the local dead-letter
                        // exchange takes it, as a local unroutable message would
                        // be refused rather than lost.
                        counters.failed(format!("unroutable on RabbitMQ: exchange '{exchange}'"));
                        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        let _settled = delivery.reject(false);
                    }
                    Ok(_) => {
                        counters.requeued.fetch_add(1, Ordering::Relaxed);
                        let _settled = delivery.nack(true);
                    }
                    Err(error) => return format!("confirm lost: {error}"),
                }
            }
        }
    }
}

/// Forwards RabbitMQ deliveries into the local exchange until the AMQP
/// connection fails; returns why.
async fn pump_in(
    mut consumer: lapin::Consumer,
    local: &Connection,
    forward: &Forward,
    counters: &Counters,
) -> String {
    let exchange = forward.exchange.as_str();
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await;
        let delivery = match next {
            None => return "RabbitMQ cancelled the consumer".into(),
            Some(Err(error)) => return format!("consume failed: {error}"),
            Some(Ok(delivery)) => delivery,
        };
        let mut message = match from_amqp_message(&delivery.data, &delivery.properties) {
            Ok(message) => message,
            Err(error) => {
                counters.failed(error.to_string());
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let reject = BasicNackOptions { requeue: false, ..Default::default() };
                if let Err(error) = delivery.nack(reject).await {
                    return format!("nack failed: {error}");
                }
                continue;
            }
        };
        if delivery.redelivered {
            // RabbitMQ delivered it before (its ack lost with a connection):
            // it may be here already.
            message = message.with_header(REDELIVERED_HEADER, FieldValue::Bool(true));
        }
        let key = match forward.key_for(delivery.routing_key.as_str(), &message) {
            Ok(key) => key,
            Err(why) => {
                counters.failed(why);
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let reject = BasicNackOptions { requeue: false, ..Default::default() };
                if let Err(error) = delivery.nack(reject).await {
                    return format!("nack failed: {error}");
                }
                continue;
            }
        };
        forward.rewrite_reply_to(&mut message);
        loop {
            match local.try_publish(exchange, &key, message) {
                Ok(_) => {
                    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                        return format!("ack failed: {error}");
                    }
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(PublishError::Blocked { message: back }) => {
                    // The local memory alarm: hold the delivery (RabbitMQ's
                    // prefetch stops the flow) until it clears.
                    message = *back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => {
                    counters.failed(error.to_string());
                    counters.requeued.fetch_add(1, Ordering::Relaxed);
                    let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                    if let Err(error) = delivery.nack(requeue).await {
                        return format!("nack failed: {error}");
                    }
                    // Not a hot loop against a local refusal.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}
