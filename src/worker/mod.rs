//! Workers: a handler run over a queue's deliveries, settling each by what the
//! handler returned, and the RPC server built on them.
//!
//! - [`Connection::worker`] runs a synchronous handler on threads of its own,
//!   one consumer per thread.
//! - [`Connection::worker_async`] runs an async handler as one future that the
//!   caller drives on their executor; it spawns nothing.
//! - [`Connection::serve`] is a worker whose handler answers requests: its
//!   reply goes to the request's `reply_to`, carrying its `correlation_id`.
//!
//! Every form settles the same way: the handler's `Ok` acknowledges, its
//! `Err` settles as [`WorkerOptions::on_error`] says, and a panic in the
//! handler is caught, the message requeued (flagged redelivered) and the
//! worker carries on. A message that panics its handler every time is
//! therefore retried for ever unless its queue has a
//! [`delivery_limit`](crate::QueueOptions::delivery_limit), which
//! dead-letters it once reached: poison messages are the queue's policy, not
//! the worker's.

use std::fmt::{self, Display};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};

use crate::connection::Connection;
use crate::consumer::{ConsumeOptions, Consumer};
use crate::delivery::Delivery;
use crate::error::{ConsumeError, RecvError};
use crate::message::Message;
use crate::sync::{Arc, AtomicU64, Ordering, Weak};
use crate::vhost::publish::PublishOptions;

pub(crate) mod failure;
pub(crate) mod inline;

use self::failure::Failures;
pub use self::failure::{Backoff, FailureHook, HandlerFailure, OnError};

use self::inline::InlineWorker;

/// Options of [`Connection::worker`], [`Connection::worker_async`] and
/// [`Connection::serve`].
///
/// ```
/// use std::time::Duration;
/// use interoffice::{OnError, WorkerOptions};
///
/// let options = WorkerOptions { threads: 4, on_error: OnError::RequeueAfter(Duration::from_secs(5)), ..Default::default() };
/// assert_eq!(options.prefetch, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// How many threads run the handler, each with its own consumer (0 is
    /// taken as 1). An async worker has one consumer whatever this says: run
    /// several for concurrency.
    pub threads: usize,
    /// The prefetch of each consumer ([`ConsumeOptions::prefetch`]): how many
    /// deliveries it holds unsettled at once. The default, 1, gives the
    /// fairest dispatch — a busy thread takes nothing more until it is done —
    /// and leaves nothing waiting in a consumer's inbox; more saves a little
    /// per message. 0 means no limit, which lets one consumer take
    /// everything.
    pub prefetch: u32,
    /// What becomes of a message whose handler returned an error: by
    /// default, retried with exponential backoff ([`OnError::Backoff`]).
    pub on_error: OnError,
    /// Called with each handler failure (after the message is settled), on
    /// the worker's thread: to log, count or alert. Failures are also kept
    /// in [`WorkerReport::last_failures`] and emitted as `tracing` warnings.
    pub on_failure: Option<FailureHook>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { threads: 1, prefetch: 1, on_error: OnError::default(), on_failure: None }
    }
}

/// What a worker did: counts of handler outcomes.
///
/// Each message handled counts once per delivery, so a message that failed
/// twice and then succeeded counts 2 in `failed` and 1 in `processed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerReport {
    /// Deliveries whose handler returned `Ok` (acknowledged).
    pub processed: u64,
    /// Deliveries whose handler returned `Err` (settled per [`OnError`]).
    pub failed: u64,
    /// Deliveries whose handler panicked (requeued).
    pub panicked: u64,
    /// Of the `processed` requests of an RPC server ([`Connection::serve`]),
    /// those whose reply could not be published — its `reply_to` named no
    /// queue, the queue refused it, the reply was invalid. The request was
    /// acknowledged all the same: whoever asked has gone.
    pub replies_undeliverable: u64,
    /// Consumers of the worker that ended without being stopped: their
    /// queue was deleted or their connection closed. Each is also reported
    /// as a `tracing` warning. A worker whose consumers all ended handles
    /// nothing more: see [`Worker::is_running`].
    pub consumers_lost: u64,
    /// The last handler failures (at most 16), oldest first: what the
    /// handler's errors said, not only how many there were.
    pub last_failures: Vec<HandlerFailure>,
}

/// The counters behind a [`WorkerReport`], shared by a worker's threads.
#[derive(Debug, Default)]
struct Counts {
    processed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    replies_undeliverable: AtomicU64,
    consumers_lost: AtomicU64,
    failures: Failures,
}

impl Counts {
    fn report(&self) -> WorkerReport {
        WorkerReport {
            processed: self.processed.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            panicked: self.panicked.load(Ordering::Acquire),
            replies_undeliverable: self.replies_undeliverable.load(Ordering::Acquire),
            consumers_lost: self.consumers_lost.load(Ordering::Acquire),
            last_failures: self.failures.last(),
        }
    }

    /// A worker's consumer ended: unless it was stopped, that is a worker
    /// silently dead, so it is counted and reported.
    fn ended(&self, queue: &str, reason: &RecvError) {
        if *reason != RecvError::Cancelled {
            Counts::add(&self.consumers_lost);
            tracing::warn!(queue, %reason, "interoffice: a worker's consumer ended without being stopped");
        }
    }

    fn add(counter: &AtomicU64) {
        // Release pairs with the Acquire in `report`: whoever sees the count
        // also sees the settle made before it.
        counter.fetch_add(1, Ordering::Release);
    }
}

/// How one handler call went, before settling.
enum Handled {
    /// `Ok`, and any reply was published.
    Done,
    /// `Ok`, but the reply could not be published.
    ReplyUndeliverable,
    /// `Err`.
    Failed(HandlerFailure),
}

/// Settles `delivery` by how its handler went and counts it. Counting comes
/// after settling, so a count seen by [`Worker::stats`] is already reflected
/// in the queue's figures.
fn settle(
    delivery: Delivery,
    handled: thread::Result<Handled>,
    on_error: OnError,
    counts: &Counts,
    hook: Option<&FailureHook>,
) {
    // A failed ack means the connection closed first and requeued the
    // message; the handler's outcome is counted regardless, as it happened.
    match handled {
        Ok(Handled::Done) => {
            let _ = delivery.ack();
            Counts::add(&counts.processed);
        }
        Ok(Handled::ReplyUndeliverable) => {
            let _ = delivery.ack();
            Counts::add(&counts.processed);
            Counts::add(&counts.replies_undeliverable);
        }
        Ok(Handled::Failed(failure)) => {
            on_error.settle(delivery, &failure);
            tracing::warn!(
                queue = %failure.queue,
                message_id = failure.message_id.as_deref().unwrap_or(""),
                error = %failure.error,
                "interoffice: a worker's handler failed"
            );
            if let Some(hook) = hook {
                (hook.0)(&failure);
            }
            counts.failures.record(failure);
            Counts::add(&counts.failed);
        }
        Err(_panic) => {
            let _ = delivery.nack(true);
            Counts::add(&counts.panicked);
        }
    }
}

/// A handler running on threads of its own, started by
/// [`Connection::worker`] or [`Connection::serve`].
///
/// Each thread (named `interoffice-worker-<queue>-<n>`, `n` from 0) has its
/// own consumer on the connection that started the worker, so closing that
/// connection stops the worker too (the deliveries it held are requeued, as
/// for any consumer of a closed connection).
///
/// [`shutdown`](Worker::shutdown) stops it gracefully: the consumers are
/// cancelled, which sends back to the queue whatever the queue had sent them
/// that no handler had taken yet; every handler already running finishes
/// and settles its message; then the threads are joined. Nothing is lost and
/// nothing is left unsettled. It waits for as long as the running handlers
/// take. Dropping the worker stops it the same way but does not wait (`Drop`
/// never blocks): handlers already running finish and settle on their own
/// threads, which then end.
///
/// The worker holds its connection open while any of its threads runs, so a
/// worker started on a temporary connection (`broker.connect().worker(..)`)
/// keeps working; the connection closes when the last handle on it goes.
///
/// A panic in the handler is caught: its message is requeued, counted in
/// [`WorkerReport::panicked`], and the thread takes the next one. (The panic
/// hook still runs, so the panic is printed as usual.)
///
/// ```
/// use std::convert::Infallible;
/// use interoffice::{Broker, Delivery, Message, QueueOptions, WorkerOptions};
///
/// let conn = Broker::new().connect();
/// conn.declare_queue("thumbnails", QueueOptions::default())?;
/// let (done, finished) = std::sync::mpsc::channel();
/// let worker = conn.worker("thumbnails", WorkerOptions { threads: 2, ..Default::default() }, move |d: &Delivery| {
///     done.send(d.body().clone()).unwrap();
///     Ok::<(), Infallible>(())
/// })?;
///
/// conn.publish("", "thumbnails", Message::new("cat.jpg"))?;
/// assert_eq!(finished.recv()?.as_ref(), b"cat.jpg");
/// assert_eq!(worker.shutdown().processed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "dropping a Worker stops it"]
pub struct Worker {
    consumers: Vec<Arc<Consumer>>,
    threads: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
    /// An RPC server's connection for replies, closed once the threads are
    /// joined (nothing publishes on it after that).
    replies: Option<Arc<Connection>>,
    /// A handle on the connection the worker consumes on, so that it stays
    /// open while the worker runs even if the caller's handle is dropped
    /// (`broker.connect().worker(..)`). Each thread holds it too, so it
    /// outlives a dropped worker until its last handler has settled.
    connection: Arc<Connection>,
    /// In a deterministic broker: the worker, run by hand instead of by
    /// `threads` (see [`inline`]).
    inline: Option<Arc<InlineWorker>>,
}

impl Worker {
    /// The counts so far. A delivery is counted once it is settled.
    pub fn stats(&self) -> WorkerReport {
        self.counts.report()
    }

    /// Whether any of the worker's threads still takes messages: false once
    /// every consumer has ended (shut down, queue deleted, connection closed).
    pub fn is_running(&self) -> bool {
        match &self.inline {
            Some(inline) => inline.is_running(),
            None => self.threads.iter().any(|t| !t.is_finished()),
        }
    }

    /// Stops gracefully — no new messages, every running handler finishes and
    /// settles, the threads are joined — and returns the final counts.
    /// Dropping the worker stops it without waiting.
    pub fn shutdown(mut self) -> WorkerReport {
        self.stop();
        self.join();
        self.counts.report()
    }

    /// Cancels every consumer before joining any thread, so that all of
    /// them stop taking messages at once rather than one after another.
    fn stop(&mut self) {
        for consumer in &self.consumers {
            consumer.cancel();
        }
    }

    fn join(&mut self) {
        let me = thread::current().id();
        for thread in self.threads.drain(..) {
            // A handler that drops its own worker must not join itself: that
            // would never return. Its thread ends once the handler does.
            if thread.thread().id() != me {
                // Handler panics are caught, so a thread can only have died
                // of a panic in a panic payload's destructor: nothing to report.
                let _ = thread.join();
            }
        }
        if let Some(replies) = &self.replies {
            replies.close();
        }
    }
}

impl Drop for Worker {
    /// Stops the worker without waiting for running handlers: their threads
    /// hold the connection (and an RPC server's reply connection) until they
    /// have settled, then end.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Connection {
    /// Runs `handler` over the deliveries of `queue` on
    /// [`options.threads`](WorkerOptions::threads) threads, each with its own
    /// consumer on this connection (manual acknowledgement, prefetch
    /// [`options.prefetch`](WorkerOptions::prefetch)).
    ///
    /// The handler's `Ok` acknowledges the message; its `Err` settles it as
    /// [`options.on_error`](WorkerOptions::on_error) says; a panic is caught
    /// and the message requeued. The error itself is not kept: `E` only has
    /// to be printable, so that `anyhow`-style and `Box<dyn Error>` handlers
    /// fit. See [`Worker`] for stopping it.
    ///
    /// ```
    /// use interoffice::{Broker, Delivery, Message, OnError, QueueOptions, WorkerOptions};
    ///
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("invoices.dead", QueueOptions::default())?;
    /// conn.declare_queue("invoices", QueueOptions {
    ///     dead_letter_exchange: Some(String::new()),
    ///     dead_letter_routing_key: Some("invoices.dead".into()),
    ///     ..Default::default()
    /// })?;
    /// let options = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
    /// let worker = conn.worker("invoices", options, |d: &Delivery| match d.body().as_ref() {
    ///     b"" => Err("an empty invoice"),
    ///     _ => Ok(()),
    /// })?;
    ///
    /// conn.publish("", "invoices", Message::new(""))?;
    /// let dead = conn.consume("invoices.dead", Default::default())?.recv()?;
    /// assert_eq!(dead.header("x-first-death-reason").and_then(|v| v.as_str()), Some("rejected"));
    /// assert_eq!(worker.shutdown().failed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`consume`](Self::consume): the queue does not exist, is exclusive
    /// to another connection, or this connection is closed.
    ///
    /// # Panics
    ///
    /// If a thread cannot be spawned, as [`std::thread::spawn`] does (the
    /// threads already started are stopped first).
    pub fn worker<F, E>(
        &self,
        queue: &str,
        options: WorkerOptions,
        handler: F,
    ) -> Result<Worker, ConsumeError>
    where
        F: Fn(&Delivery) -> Result<(), E> + Send + Sync + 'static,
        E: Display,
    {
        self.spawn_worker(queue, options, None, move |delivery: &Delivery| match handler(delivery) {
            Ok(()) => Handled::Done,
            Err(error) => Handled::Failed(HandlerFailure::new::<F, E>(delivery, &error)),
        })
    }

    /// An RPC server: runs `handler` over the requests arriving in `queue`,
    /// as [`worker`](Self::worker) does, and publishes each reply.
    ///
    /// When the handler returns `Ok(reply)` and the request has a
    /// `reply_to`, the reply is published to the default exchange with
    /// routing key `reply_to` — a queue, or a direct reply-to name — with the
    /// request's `correlation_id` set on it (when the request has one); then
    /// the request is acknowledged. A request without `reply_to` is handled
    /// and acknowledged all the same, its reply dropped (fire and forget).
    /// The handler's `Err` settles the request per
    /// [`options.on_error`](WorkerOptions::on_error) and sends no reply; a
    /// panic requeues it.
    ///
    /// Replies go out through a connection of the server's own (named
    /// `interoffice-rpc-server-<queue>`), closed at shutdown. A reply that
    /// cannot be published — its `reply_to` names no queue any more, the
    /// queue refuses it — is not an error of the server: the request is
    /// acknowledged (whoever asked has gone) and counted in
    /// [`WorkerReport::replies_undeliverable`].
    ///
    /// ```
    /// use interoffice::{Broker, Delivery, Message, QueueOptions, WorkerOptions};
    ///
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("prices", QueueOptions::default())?;
    /// let server = conn.serve("prices", WorkerOptions::default(), |request: &Delivery| {
    ///     let item = std::str::from_utf8(request.body()).map_err(|e| e.to_string())?;
    ///     Ok::<_, String>(Message::new(format!("{item}: 42 EUR")))
    /// })?;
    ///
    /// let replies = conn.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
    /// conn.publish("", "prices", Message::new("teapot").with_reply_to(&replies).with_correlation_id("c-1"))?;
    /// let reply = conn.consume(&replies, Default::default())?.recv()?;
    /// assert_eq!(reply.body().as_ref(), b"teapot: 42 EUR");
    /// assert_eq!(reply.properties().correlation_id(), Some("c-1"));
    /// server.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`consume`](Self::consume).
    ///
    /// # Panics
    ///
    /// If a thread cannot be spawned, as [`std::thread::spawn`] does.
    pub fn serve<F, E>(&self, queue: &str, options: WorkerOptions, handler: F) -> Result<Worker, ConsumeError>
    where
        F: Fn(&Delivery) -> Result<Message, E> + Send + Sync + 'static,
        E: Display,
    {
        let replies = Arc::new(self.broker().connect_named(format!("interoffice-rpc-server-{queue}")));
        let publisher = Arc::clone(&replies);
        self.spawn_worker(queue, options, Some(replies), move |request: &Delivery| match handler(request) {
            Ok(reply) => publish_reply(&publisher, request, reply),
            Err(error) => Handled::Failed(HandlerFailure::new::<F, E>(request, &error)),
        })
    }

    /// Runs an async `handler` over the deliveries of `queue`, one at a time,
    /// from one consumer on this connection (manual acknowledgement, prefetch
    /// [`options.prefetch`](WorkerOptions::prefetch); `options.threads` does
    /// not apply). Settles as [`worker`](Self::worker) does, a panic while
    /// polling the handler's future included.
    ///
    /// Nothing is spawned: the returned [`AsyncWorker`] does nothing until
    /// its [`run`](AsyncWorker::run) future is driven on the caller's
    /// executor — awaited, `block_on`, or `tokio::spawn` (which needs the
    /// handler's futures to be `Send`). For concurrency, start several and
    /// run them side by side: each has its own consumer, and the queue
    /// shares the messages between them. [`AsyncWorker::stop_handle`] stops
    /// one from elsewhere.
    ///
    /// ```
    /// use interoffice::{Broker, Delivery, Message, QueueOptions, WorkerOptions};
    ///
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("emails", QueueOptions::default())?;
    /// conn.publish("", "emails", Message::new("welcome"))?;
    ///
    /// let (sent, outbox) = std::sync::mpsc::channel();
    /// let worker = conn.worker_async("emails", WorkerOptions::default(), async move |d: &Delivery| {
    ///     sent.send(d.body().clone()).unwrap(); // an SMTP call would be awaited here
    ///     Ok::<(), String>(())
    /// })?;
    /// let stop = worker.stop_handle();
    /// let operator = std::thread::spawn(move || {
    ///     let first = outbox.recv().unwrap();
    ///     stop.stop(); // the handler running now finishes, then `run` returns
    ///     first
    /// });
    /// let report = futures::executor::block_on(worker.run());
    /// assert_eq!(operator.join().unwrap().as_ref(), b"welcome");
    /// assert_eq!(report.processed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`consume`](Self::consume).
    pub fn worker_async<F, E>(
        &self,
        queue: &str,
        options: WorkerOptions,
        handler: F,
    ) -> Result<AsyncWorker<F>, ConsumeError>
    where
        F: AsyncFn(&Delivery) -> Result<(), E>,
        E: Display,
    {
        let consumer = self.consume(queue, consume_options(&options))?;
        Ok(AsyncWorker {
            consumer: Arc::new(consumer),
            handler,
            on_error: options.on_error,
            on_failure: options.on_failure,
            _connection: self.hold(),
        })
    }

    /// Starts the threads of a worker whose handler, wrapped as `step`,
    /// tells how each delivery went.
    fn spawn_worker<S>(
        &self,
        queue: &str,
        options: WorkerOptions,
        replies: Option<Arc<Connection>>,
        step: S,
    ) -> Result<Worker, ConsumeError>
    where
        S: Fn(&Delivery) -> Handled + Send + Sync + 'static,
    {
        let threads = options.threads.max(1);
        // Every consumer first: a refused consume starts no thread at all.
        let consumers = (0..threads)
            .map(|_| self.consume(queue, consume_options(&options)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut worker = Worker {
            consumers,
            threads: Vec::with_capacity(threads),
            counts: Arc::default(),
            replies,
            connection: Arc::new(self.hold()),
            inline: None,
        };
        if let Some(inline_workers) = &self.broker().inner.core.inline_workers {
            // Deterministic: no threads; handlers run when the test asks.
            let step: Arc<inline::Step> = Arc::new(step);
            let inline = Arc::new(InlineWorker::new(
                worker.consumers.clone(),
                step,
                options.on_error,
                options.on_failure.clone(),
                Arc::clone(&worker.counts),
            ));
            inline_workers.register(&(Arc::clone(&inline) as Arc<dyn crate::core::RunOnce>));
            worker.inline = Some(inline);
            return Ok(worker);
        }
        let step = Arc::new(step);
        for (n, consumer) in worker.consumers.iter().enumerate() {
            let (consumer, step, counts) =
                (Arc::clone(consumer), Arc::clone(&step), Arc::clone(&worker.counts));
            let connection = Arc::clone(&worker.connection);
            let on_error = options.on_error;
            let hook = options.on_failure.clone();
            // A queue name may hold a NUL byte, which a thread name may not.
            let name = format!("interoffice-worker-{queue}-{n}").replace('\0', "\u{FFFD}");
            let spawned = thread::Builder::new().name(name).spawn(move || {
                // Ends when the consumer is cancelled: shutdown, the
                // connection closed, the queue deleted.
                loop {
                    match consumer.recv() {
                        Ok(delivery) => {
                            let handled = {
                                // What the handler publishes carries on its conversation.
                                let _scope = crate::conversation::enter(delivery.message());
                                let _span = crate::trace::handling(consumer.queue(), delivery.message());
                                catch_unwind(AssertUnwindSafe(|| step(&delivery)))
                            };
                            // Settling is the bus's code, but a panic there
                            // must not kill the thread silently either: the
                            // delivery, if not settled, is requeued by its drop.
                            if catch_unwind(AssertUnwindSafe(|| {
                                settle(delivery, handled, on_error, &counts, hook.as_ref())
                            }))
                            .is_err()
                            {
                                Counts::add(&counts.panicked);
                            }
                        }
                        Err(reason) => {
                            counts.ended(consumer.queue(), &reason);
                            break;
                        }
                    }
                }
                drop(connection);
            });
            // On failure `worker` is dropped while unwinding, which stops the
            // threads already started.
            worker.threads.push(spawned.unwrap_or_else(|e| panic!("failed to spawn a worker thread: {e}")));
        }
        Ok(worker)
    }
}

fn consume_options(options: &WorkerOptions) -> ConsumeOptions {
    ConsumeOptions { prefetch: options.prefetch, ..Default::default() }
}

/// Publishes an RPC server's reply to `request`, if it asked for one.
fn publish_reply(replies: &Connection, request: &Delivery, mut reply: Message) -> Handled {
    let Some(reply_to) = request.properties().reply_to() else {
        return Handled::Done;
    };
    // A reply that carries the id already (an echo of the request) keeps
    // its properties shared rather than copying them to write the same id.
    if let Some(id) = request.properties().correlation_id()
        && reply.properties().correlation_id() != Some(id)
    {
        reply.properties_mut().set_correlation_id(id);
    }
    let observers = Arc::clone(&replies.broker().inner.core.observers);
    let seq = observers.is_active().then(|| (observers.next_seq(), reply.clone()));
    // Mandatory, so that a reply queue that is gone is an error rather than
    // a reply silently routed nowhere.
    let handled = match replies.publish_with("", reply_to, reply, PublishOptions { mandatory: true }) {
        Ok(_) => Handled::Done,
        Err(_) => Handled::ReplyUndeliverable,
    };
    if let Some((seq, reply)) = seq {
        observers.emit(
            seq,
            crate::observe::Event::Replied {
                queue: request.queue_name().unwrap_or_default(),
                reply_to: reply_to.to_owned(),
                correlation_id: request.properties().correlation_id().map(str::to_owned),
                delivered: matches!(handled, Handled::Done),
                message: reply,
            },
        );
    }
    handled
}

/// An async handler over one consumer, started by
/// [`Connection::worker_async`]: drive [`run`](AsyncWorker::run) on any
/// executor.
///
/// Dropping it, or the `run` future, cancels its consumer: what the queue
/// had sent it goes back, and a delivery being handled at that moment is
/// requeued (flagged redelivered), as any delivery dropped unsettled.
#[must_use = "an AsyncWorker does nothing until its run future is awaited"]
pub struct AsyncWorker<F> {
    consumer: Arc<Consumer>,
    handler: F,
    on_error: OnError,
    on_failure: Option<FailureHook>,
    /// Keeps the connection open while the worker exists (see [`Worker`]).
    _connection: Connection,
}

impl<F> fmt::Debug for AsyncWorker<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWorker")
            .field("consumer", &self.consumer)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl<F> AsyncWorker<F> {
    /// A handle that stops this worker from anywhere (another task or
    /// thread), before or while it runs.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { consumer: Arc::downgrade(&self.consumer) }
    }

    /// Handles deliveries one at a time until the worker is stopped (by a
    /// [`StopHandle`]) or its consumer otherwise ends (its connection
    /// closed, its queue deleted); returns the counts.
    ///
    /// Stopping is graceful: the handler running at that moment finishes
    /// and its message is settled, then `run` returns. Messages the consumer
    /// held but had not handed out go back to the queue.
    pub async fn run<E>(self) -> WorkerReport
    where
        F: AsyncFn(&Delivery) -> Result<(), E>,
        E: Display,
    {
        let counts = Counts::default();
        loop {
            let delivery = match self.consumer.recv_async().await {
                Ok(delivery) => delivery,
                Err(reason) => {
                    counts.ended(self.consumer.queue(), &reason);
                    break;
                }
            };
            let handled = {
                // What the handler publishes carries on its conversation:
                // the scope is entered around each poll, never across one.
                let scope = crate::conversation::ScopeOf::of(delivery.message());
                let span = crate::trace::async_handling(self.consumer.queue(), delivery.message());
                // Calling may panic as well as polling: an `AsyncFn` need not
                // be an async closure.
                let called = span.in_scope(|| {
                    crate::conversation::within(scope.as_ref(), || {
                        catch_unwind(AssertUnwindSafe(|| (self.handler)(&delivery)))
                    })
                });
                match called {
                    Ok(future) => CatchUnwind { future: pin!(future), scope, span }.await,
                    Err(panic) => Err(panic),
                }
            };
            let handled = handled.map(|result| match result {
                Ok(()) => Handled::Done,
                Err(error) => Handled::Failed(HandlerFailure::new::<F, E>(&delivery, &error)),
            });
            settle(delivery, handled, self.on_error, &counts, self.on_failure.as_ref());
        }
        counts.report()
    }
}

/// Polls a future inside `catch_unwind`, so that a panic while it runs
/// becomes an `Err` carrying the panic instead of unwinding through the
/// executor. The future is not polled again after a panic.
struct CatchUnwind<'a, Fut> {
    future: Pin<&'a mut Fut>,
    /// The conversation the handler publishes in, entered around each poll.
    scope: Option<crate::conversation::ScopeOf>,
    /// The handler's span (feature `tracing`), entered around each poll.
    span: crate::trace::AsyncSpan,
}

impl<Fut: Future> Future for CatchUnwind<'_, Fut> {
    type Output = thread::Result<Fut::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let future = this.future.as_mut();
        let (scope, span) = (this.scope.as_ref(), &this.span);
        let polled = span.in_scope(|| {
            crate::conversation::within(scope, || catch_unwind(AssertUnwindSafe(|| future.poll(cx))))
        });
        match polled {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Stops an [`AsyncWorker`] from anywhere: [`stop`](StopHandle::stop)
/// cancels its consumer. `Clone + Send + Sync`.
#[derive(Debug, Clone)]
pub struct StopHandle {
    // Weak, so that a handle kept around does not keep a finished worker's
    // consumer (and the messages in its inbox) alive.
    consumer: Weak<Consumer>,
}

impl StopHandle {
    /// Stops the worker: it takes no new message, finishes the one being
    /// handled, and its `run` returns. Stopping twice, or a worker already
    /// finished, does nothing.
    pub fn stop(&self) {
        if let Some(consumer) = self.consumer.upgrade() {
            consumer.cancel();
        }
    }
}
