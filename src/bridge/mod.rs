//! A bridge to a real RabbitMQ, for the day a module outgrows the process
//! (feature `amqp`, built on [`lapin`]): the same topology declared on
//! RabbitMQ from the same definitions. The bridge runs its AMQP connection
//! on a small tokio runtime of its own, so the application needs none; its
//! methods block the calling thread (do not call them from inside an async
//! task of a tokio runtime).
//!
//! Why lapin: the maintained, pure-Rust AMQP 0-9-1 client, with publisher
//! confirms, `basic.return` and RabbitMQ's extensions (exchange-to-exchange
//! bindings), on any of several runtimes.

mod convert;
mod link;
mod shovel;

use std::fmt;
use std::future::Future;

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::{Channel, Connection, ConnectionProperties};

pub use convert::{ConvertError, from_amqp_message, from_amqp_table, to_amqp_properties, to_amqp_table};
pub use link::{Link, LinkOptions, LinkState, LinkStats, MAX_FORWARD_ATTEMPTS, REDELIVERED_HEADER};
pub use shovel::{LinkDefinition, LinkDirection};

use crate::definitions::{BindingDefinition, Definitions, ExchangeDefinition, QueueDefinition};
use crate::field::FieldTable;
use crate::sync::Arc;

/// An AMQP URL with its password hidden, for `Debug`, errors and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// `url` (`amqp://user:password@host:port/vhost`).
    pub fn new(url: impl Into<String>) -> Self {
        AmqpUrl(url.into())
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.clone() };
        let authority_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
        match url[scheme_end..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &url[scheme_end..scheme_end + at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
                format!("{}{hidden}{}", &url[..scheme_end], &url[scheme_end + at..])
            }
            None => url.clone(),
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({:?})", self.redacted())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why the bridge failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// RabbitMQ could not be reached, or refused the login.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// Where (password hidden).
        url: String,
        /// Why.
        reason: String,
    },
    /// The bridge's own runtime could not start.
    #[error("the bridge's runtime could not start: {0}")]
    Runtime(String),
    /// An AMQP operation failed.
    #[error("{operation}: {reason}")]
    Amqp {
        /// What was being done.
        operation: String,
        /// RabbitMQ's or the client's reason.
        reason: String,
    },
}

/// What carrying a topology over did: how many of each were declared, and
/// what RabbitMQ refused, one by one, with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CarryOver {
    /// Exchanges declared (or found equivalent).
    pub exchanges: usize,
    /// Queues declared (or found equivalent).
    pub queues: usize,
    /// Bindings made.
    pub bindings: usize,
    /// What was refused, with why.
    pub refused: Vec<String>,
}

/// The two links of request/reply across the bridge: requests one way,
/// replies the other. Both stop when it is dropped.
#[derive(Debug)]
pub struct LinkPair {
    /// The link that carries requests.
    pub requests: Link,
    /// The link that carries replies.
    pub replies: Link,
}

/// A name suffix no other bridge of this or another process will make.
fn unique_suffix() -> String {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{seed:016x}")
}

/// A bridge to a real RabbitMQ: see the module docs. Its own AMQP
/// connection (for carrying topology over) is opened on first use and
/// again after it is lost; each link has its own.
///
/// Dropping it shuts its runtime down without waiting, so it may be
/// dropped anywhere, inside an async task too; its links stop with it.
pub struct Bridge {
    /// `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: Arc<Endpoint>,
}

/// The bridge's own AMQP connection and where it goes: shared with the
/// tasks of its async calls.
struct Endpoint {
    connection: parking_lot::Mutex<Option<Arc<Connection>>>,
    url: AmqpUrl,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.endpoint.connection.lock().as_ref().is_some_and(|c| c.status().connected());
        f.debug_struct("Bridge").field("url", &self.endpoint.url).field("connected", &connected).finish()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Endpoint {
    /// The connection, opened if there is none or it was lost. (Two calls
    /// racing may both connect; the later one is kept.)
    async fn connection(&self) -> Result<Arc<Connection>, BridgeError> {
        if let Some(connection) = self.connection.lock().as_ref().filter(|c| c.status().connected()) {
            return Ok(Arc::clone(connection));
        }
        let url = &self.url;
        let connection = Connection::connect(url.secret(), ConnectionProperties::default())
            .await
            .map_err(|e| BridgeError::Connect { url: url.redacted(), reason: redact(&e.to_string(), url) })?;
        let connection = Arc::new(connection);
        *self.connection.lock() = Some(Arc::clone(&connection));
        Ok(connection)
    }

    fn is_connected(&self) -> bool {
        self.connection.lock().as_ref().is_some_and(|c| c.status().connected())
    }

    async fn channel(&self) -> Result<Channel, BridgeError> {
        let connection = self.connection().await?;
        connection.create_channel().await.map_err(|e| self.amqp("channel.open", &e))
    }

    fn amqp(&self, operation: &str, error: &lapin::Error) -> BridgeError {
        BridgeError::Amqp { operation: operation.into(), reason: redact(&error.to_string(), &self.url) }
    }
}

impl Bridge {
    /// A bridge to RabbitMQ at `url` (`amqp://guest:guest@127.0.0.1:5672/%2f`),
    /// not connected yet: links started on it keep trying (backing off,
    /// visible in the broker's overview) until RabbitMQ is there.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Runtime`] if the bridge's runtime cannot start.
    pub fn new(url: impl Into<String>) -> Result<Bridge, BridgeError> {
        let url = AmqpUrl::new(url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("interoffice-amqp")
            .enable_all()
            .build()
            .map_err(|e| BridgeError::Runtime(e.to_string()))?;
        let endpoint = Arc::new(Endpoint { connection: parking_lot::Mutex::new(None), url });
        Ok(Bridge { runtime: Some(runtime), endpoint })
    }

    /// A bridge to RabbitMQ at `url`, connected now.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Connect`] if RabbitMQ is unreachable or refuses the
    /// login; [`BridgeError::Runtime`] if the runtime cannot start.
    pub fn connect(url: impl Into<String>) -> Result<Bridge, BridgeError> {
        let bridge = Bridge::new(url)?;
        bridge.block_on(bridge.endpoint.connection())?;
        Ok(bridge)
    }

    /// [`connect`](Self::connect) for async code, under any executor: the
    /// connection is opened on the bridge's own runtime.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_async(url: impl Into<String>) -> Result<Bridge, BridgeError> {
        let bridge = Bridge::new(url)?;
        let endpoint = Arc::clone(&bridge.endpoint);
        bridge.run(async move { endpoint.connection().await.map(drop) }).await?;
        Ok(bridge)
    }

    /// Where it is connected (password hidden).
    pub fn url(&self) -> &AmqpUrl {
        &self.endpoint.url
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the bridge")
    }

    /// Runs `future` on the bridge's runtime, blocking this thread.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// Runs `future` on the bridge's runtime; the returned future, awaited
    /// under any executor, gives its output.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, BridgeError>> + Send + 'static,
    ) -> impl Future<Output = Result<T, BridgeError>> + Send + 'static {
        let task = self.runtime().spawn(future);
        async move { task.await.map_err(|e| BridgeError::Runtime(e.to_string()))? }
    }

    fn channel(&self) -> Result<Channel, BridgeError> {
        self.block_on(self.endpoint.channel())
    }

    fn amqp(&self, operation: &str, error: &lapin::Error) -> BridgeError {
        self.endpoint.amqp(operation, error)
    }

    /// Starts an outbound link: messages from local `queue` (consumed
    /// through `local`) are published to RabbitMQ's `exchange` — with their
    /// own routing key, or `routing_key` — with publisher confirms; each
    /// local delivery is acknowledged only when RabbitMQ confirmed it,
    /// requeued on a negative confirm or a lost connection. The link has
    /// its own AMQP connection and reconnects by itself.
    ///
    /// # Errors
    ///
    /// [`ConsumeError`](crate::ConsumeError): `local` may not consume `queue`.
    pub fn link_outbound(
        &self,
        local: &crate::Connection,
        queue: &str,
        exchange: &str,
        routing_key: Option<&str>,
        options: LinkOptions,
    ) -> Result<Link, crate::ConsumeError> {
        self.spawn(local, options).outbound(local, queue, link::Forward::plain(exchange, routing_key))
    }

    /// Starts an inbound link: messages from RabbitMQ's `queue` are
    /// published into local `exchange` through `local` — with their own
    /// routing key, or `routing_key` — and acknowledged on RabbitMQ only
    /// after the local publish succeeded; `options.prefetch` bounds how many
    /// RabbitMQ hands over unacknowledged (backpressure). The link has its
    /// own AMQP connection and reconnects by itself.
    pub fn link_inbound(
        &self,
        local: &crate::Connection,
        queue: &str,
        exchange: &str,
        routing_key: Option<&str>,
        options: LinkOptions,
    ) -> Link {
        self.spawn(local, options).inbound(local, queue, link::Forward::plain(exchange, routing_key))
    }

    /// Lets local code call a service on RabbitMQ's side: requests
    /// published to local `queue` (with [`Connection::call`](crate::Connection::call),
    /// say) go to RabbitMQ's `exchange` with `routing_key`, their direct
    /// reply-to address swapped for a reply queue of the bridge's own on
    /// RabbitMQ (declared here, expiring a minute after its last use); the
    /// service's replies come home to each call by its correlation id.
    /// Both links run until the returned pair is dropped.
    ///
    /// # Errors
    ///
    /// [`BridgeError`]: the reply queue could not be declared, or `local`
    /// may not consume `queue`.
    pub fn call_remote_service(
        &self,
        local: &crate::Connection,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        options: LinkOptions,
    ) -> Result<LinkPair, BridgeError> {
        let reply_queue = format!("interoffice.replies.{}", unique_suffix());
        let channel = self.channel()?;
        let mut arguments = lapin::types::FieldTable::default();
        arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(60_000));
        self.block_on(channel.queue_declare(
            reply_queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            arguments,
        ))
        .map_err(|e| self.amqp("queue.declare (reply queue)", &e))?;
        let _closing = self.block_on(channel.close(200, "reply queue declared".into()));
        let requests = link::Forward {
            exchange: exchange.to_owned(),
            key: link::KeyRule::Fixed(routing_key.to_owned()),
            reply: link::ReplyRule::LocalCallsTo(reply_queue.clone()),
        };
        let outbound = self.spawn(local, options).outbound(local, queue, requests).map_err(|e| {
            BridgeError::Amqp { operation: format!("consume local '{queue}'"), reason: e.to_string() }
        })?;
        let replies = link::Forward {
            exchange: String::new(),
            key: link::KeyRule::LocalCall,
            reply: link::ReplyRule::Keep,
        };
        let inbound = self.spawn(local, options).inbound(local, &reply_queue, replies);
        Ok(LinkPair { requests: outbound, replies: inbound })
    }

    /// Lets callers on RabbitMQ's side call a local service: requests from
    /// RabbitMQ's `queue` are published into local `local_queue` (where
    /// [`Connection::serve`](crate::Connection::serve), say, answers them),
    /// their `reply_to` remembered by correlation id and swapped for a
    /// local reply queue of the bridge's own; the service's replies go back
    /// to each caller's `reply_to` on RabbitMQ (a queue, or RabbitMQ's
    /// direct reply-to). A reply whose request had no correlation id cannot
    /// be routed back: it is rejected locally, the reason kept.
    ///
    /// # Errors
    ///
    /// [`BridgeError`]: the local reply queue could not be declared.
    pub fn serve_remote_callers(
        &self,
        local: &crate::Connection,
        queue: &str,
        local_queue: &str,
        options: LinkOptions,
    ) -> Result<LinkPair, BridgeError> {
        let outbox = local
            .declare_queue("", crate::QueueOptions { exclusive: true, ..Default::default() })
            .map_err(|e| BridgeError::Amqp {
            operation: "declare local reply queue".into(),
            reason: e.to_string(),
        })?;
        let replies = Arc::new(link::Replies::default());
        let requests = link::Forward {
            exchange: String::new(),
            key: link::KeyRule::Fixed(local_queue.to_owned()),
            reply: link::ReplyRule::Remember(outbox.clone(), Arc::clone(&replies)),
        };
        let inbound = self.spawn(local, options).inbound(local, queue, requests);
        let back = link::Forward {
            exchange: String::new(),
            key: link::KeyRule::Remembered(replies),
            reply: link::ReplyRule::Keep,
        };
        let outbound = self.spawn(local, options).outbound(local, &outbox, back).map_err(|e| {
            BridgeError::Amqp { operation: "consume local reply queue".into(), reason: e.to_string() }
        })?;
        Ok(LinkPair { requests: inbound, replies: outbound })
    }

    /// Starts every link `definitions` declares (its shovels, see
    /// [`LinkDefinition`]) whose local virtual host is `local`'s, each on
    /// its own connection to the RabbitMQ its definition names. What cannot
    /// be a link is refused, one by one, with why.
    pub fn start_links(
        &self,
        local: &crate::Connection,
        definitions: &Definitions,
    ) -> (Vec<Link>, Vec<String>) {
        let (mut links, mut refused) = (Vec::new(), Vec::new());
        for parameter in &definitions.parameters {
            let definition = match LinkDefinition::from_parameter(parameter) {
                Ok(Some(definition)) if definition.vhost == local.vhost() => definition,
                Ok(_) => continue,
                Err(why) => {
                    refused.push(why);
                    continue;
                }
            };
            match &definition.direction {
                LinkDirection::Outbound { local_queue, remote, remote_exchange, routing_key } => {
                    let forward = link::Forward::plain(remote_exchange, routing_key.as_deref());
                    match self.spawn_to(local, remote, definition.options).outbound(
                        local,
                        local_queue,
                        forward,
                    ) {
                        Ok(link) => links.push(link.defined_as(definition.clone())),
                        Err(error) => refused.push(format!("shovel '{}': {error}", definition.name)),
                    }
                }
                LinkDirection::Inbound { remote, remote_queue, local_exchange, routing_key } => {
                    let forward = link::Forward::plain(local_exchange, routing_key.as_deref());
                    let link = self.spawn_to(local, remote, definition.options).inbound(
                        local,
                        remote_queue,
                        forward,
                    );
                    links.push(link.defined_as(definition.clone()));
                }
            }
        }
        (links, refused)
    }

    fn spawn(&self, local: &crate::Connection, options: LinkOptions) -> link::Spawn<'_> {
        self.spawn_to(local, &self.endpoint.url, options)
    }

    /// A link's start, to RabbitMQ at `url`, listed in `local`'s broker.
    fn spawn_to(&self, local: &crate::Connection, url: &AmqpUrl, options: LinkOptions) -> link::Spawn<'_> {
        let core = Arc::clone(&local.broker().inner.core);
        link::Spawn { runtime: self.runtime(), core, url: url.clone(), options }
    }

    /// Declares on RabbitMQ, in the connection's virtual host, the
    /// exchanges, queues and bindings of `definitions` that belong to local
    /// virtual host `vhost` — as RabbitMQ's own import would: exchanges,
    /// then queues (with their options as `x-` arguments), then bindings.
    /// What RabbitMQ refuses (an inequivalent existing object, an argument
    /// it does not know) is listed in the report, one by one; the rest is
    /// declared. Exclusive queues are not in definitions, so never carried.
    ///
    /// # Errors
    ///
    /// [`BridgeError`] if no channel can be opened at all (the connection is gone).
    pub fn declare_definitions(
        &self,
        definitions: &Definitions,
        vhost: &str,
    ) -> Result<CarryOver, BridgeError> {
        self.block_on(carry_over(&self.endpoint, definitions, vhost))
    }

    /// [`declare_definitions`](Self::declare_definitions) for async code,
    /// under any executor (the work runs on the bridge's own runtime).
    ///
    /// # Errors
    ///
    /// As [`declare_definitions`](Self::declare_definitions).
    pub fn declare_definitions_async(
        &self,
        definitions: Definitions,
        vhost: &str,
    ) -> impl Future<Output = Result<CarryOver, BridgeError>> + Send + 'static {
        let (endpoint, vhost) = (Arc::clone(&self.endpoint), vhost.to_owned());
        self.run(async move { carry_over(&endpoint, &definitions, &vhost).await })
    }
}

/// Declares `definitions`' topology of local `vhost` on RabbitMQ: see
/// [`Bridge::declare_definitions`].
async fn carry_over(
    endpoint: &Endpoint,
    definitions: &Definitions,
    vhost: &str,
) -> Result<CarryOver, BridgeError> {
    let mut report = CarryOver::default();
    let mut channel = endpoint.channel().await?;
    // Each declaration is tried again once on a fresh connection if the
    // connection (not the declaration) failed under it.
    macro_rules! declare {
        ($call:expr, $what:expr, $count:expr) => {{
            let mut outcome = $call(&channel).await;
            if outcome.is_err() && !endpoint.is_connected() {
                channel = endpoint.channel().await?;
                outcome = $call(&channel).await;
            }
            tally(endpoint, &mut channel, &mut report.refused, $what, outcome, $count).await?;
        }};
    }
    for exchange in definitions.exchanges.iter().filter(|e| e.vhost == vhost) {
        let what = format!("exchange '{}'", exchange.name);
        declare!(|c| declare_exchange(c, exchange, &endpoint.url), what, &mut report.exchanges);
    }
    for queue in definitions.queues.iter().filter(|q| q.vhost == vhost) {
        let what = format!("queue '{}'", queue.name);
        declare!(|c| declare_queue(c, queue, &endpoint.url), what, &mut report.queues);
    }
    for binding in definitions.bindings.iter().filter(|b| b.vhost == vhost) {
        let what =
            format!("binding '{}' → '{}' [{}]", binding.source, binding.destination, binding.routing_key);
        declare!(|c| bind(c, binding, &endpoint.url), what, &mut report.bindings);
    }
    let _closing = channel.close(200, "carried over".into()).await;
    Ok(report)
}

/// Counts a success, or records a refusal and reopens the channel
/// (RabbitMQ closes a channel on any refused declaration).
async fn tally(
    endpoint: &Endpoint,
    channel: &mut Channel,
    refused: &mut Vec<String>,
    what: String,
    outcome: Result<(), String>,
    count: &mut usize,
) -> Result<(), BridgeError> {
    match outcome {
        Ok(()) => *count += 1,
        Err(reason) => {
            refused.push(format!("{what}: {reason}"));
            if !channel.status().connected() {
                *channel = endpoint.channel().await?;
            }
        }
    }
    Ok(())
}

async fn declare_exchange(
    channel: &Channel,
    exchange: &ExchangeDefinition,
    url: &AmqpUrl,
) -> Result<(), String> {
    let arguments = table_of(&exchange.arguments)?;
    let kind = match exchange.kind.as_str() {
        "direct" => lapin::ExchangeKind::Direct,
        "fanout" => lapin::ExchangeKind::Fanout,
        "topic" => lapin::ExchangeKind::Topic,
        "headers" => lapin::ExchangeKind::Headers,
        other => lapin::ExchangeKind::Custom(other.into()),
    };
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        internal: exchange.internal,
        ..Default::default()
    };
    channel
        .exchange_declare(exchange.name.as_str().into(), kind, options, arguments)
        .await
        .map_err(|e| redact(&e.to_string(), url))
}

async fn declare_queue(channel: &Channel, queue: &QueueDefinition, url: &AmqpUrl) -> Result<(), String> {
    let mut arguments = queue.arguments.clone();
    if let Some(kind) = &queue.kind
        && kind != "classic"
    {
        arguments
            .entry("x-queue-type".into())
            .or_insert_with(|| crate::definitions::JsonValue::String(kind.clone()));
    }
    let arguments = table_of(&arguments)?;
    let options =
        QueueDeclareOptions { durable: queue.durable, auto_delete: queue.auto_delete, ..Default::default() };
    channel
        .queue_declare(queue.name.as_str().into(), options, arguments)
        .await
        .map(drop)
        .map_err(|e| redact(&e.to_string(), url))
}

async fn bind(channel: &Channel, binding: &BindingDefinition, url: &AmqpUrl) -> Result<(), String> {
    let arguments = table_of(&binding.arguments)?;
    let (destination, source, key) = (
        binding.destination.as_str().into(),
        binding.source.as_str().into(),
        binding.routing_key.as_str().into(),
    );
    let bound = match binding.destination_type.as_str() {
        "queue" => channel.queue_bind(destination, source, key, QueueBindOptions::default(), arguments).await,
        "exchange" => {
            channel.exchange_bind(destination, source, key, ExchangeBindOptions::default(), arguments).await
        }
        other => return Err(format!("unknown destination type '{other}'")),
    };
    bound.map_err(|e| redact(&e.to_string(), url))
}

/// Definitions arguments as an AMQP table.
fn table_of(
    arguments: &std::collections::BTreeMap<String, crate::definitions::JsonValue>,
) -> Result<lapin::types::FieldTable, String> {
    let table: FieldTable = crate::definitions::to_table(arguments);
    to_amqp_table(&table).map_err(|e| e.to_string())
}

/// `text` with the URL's password taken out, should a client error quote it.
fn redact(text: &str, url: &AmqpUrl) -> String {
    text.replace(url.secret(), &url.redacted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = AmqpUrl::new("amqp://app:s3cret@rabbit.internal:5672/%2f");
        assert_eq!(url.redacted(), "amqp://app:***@rabbit.internal:5672/%2f");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        assert_eq!(AmqpUrl::new("amqp://127.0.0.1:5672").redacted(), "amqp://127.0.0.1:5672");
        assert_eq!(AmqpUrl::new("amqp://app@host/v").redacted(), "amqp://app@host/v");
        assert_eq!(AmqpUrl::new("not a url").redacted(), "not a url");
    }

    #[test]
    fn an_unreachable_rabbitmq_is_a_typed_error_without_the_password() {
        // Port 1 on loopback: nothing listens there.
        let error = Bridge::connect("amqp://app:s3cret@127.0.0.1:1/%2f").unwrap_err();
        assert!(matches!(error, BridgeError::Connect { .. }), "{error}");
        assert!(!format!("{error} {error:?}").contains("s3cret"), "{error}");
    }
}
