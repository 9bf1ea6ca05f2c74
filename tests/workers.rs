//! Workers: a handler over a queue's deliveries on threads of its own
//! (`Connection::worker`), as a future on the caller's executor
//! (`Connection::worker_async`), and the RPC server on top
//! (`Connection::serve`): settling by the handler's outcome, surviving
//! panics, sharing work, and shutting down without losing anything.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;
use interoffice::{
    Backoff, Broker, BrokerOptions, Connection, ConsumeOptions, Delivery, ManualClock, Message, OnError,
    QueueOptions, QueueStats, WorkerOptions, WorkerReport,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// How long a test waits for something that should happen at once before
/// declaring it lost (a bound on a hang, not a delay).
const PATIENCE: Duration = Duration::from_secs(10);

/// What a deliberate panic in a handler says, so the panic hook can keep
/// those quiet and still print every other panic (a failing assertion).
const DELIBERATE: &str = "deliberate panic in a handler";

/// Installs, once per test binary, a panic hook that silences the handlers'
/// deliberate panics and passes everything else to the default hook.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|m| m.starts_with(DELIBERATE)) {
                default(info);
            }
        }));
    });
}

/// A report's counts, without the failures it kept (checked on their own).
fn counts(report: WorkerReport) -> WorkerReport {
    WorkerReport { last_failures: Vec::new(), ..report }
}

/// The errors a report kept, oldest first.
fn errors(report: &WorkerReport) -> Vec<&str> {
    report.last_failures.iter().map(|f| f.error.as_str()).collect()
}

fn setup(queue: &str) -> Connection {
    let conn = Broker::new().connect();
    conn.declare_queue(queue, QueueOptions::default()).unwrap();
    conn
}

/// A broker on a manual clock, and a connection to it.
fn setup_manual(queue: &str) -> (ManualClock, Connection) {
    let clock = ManualClock::new();
    let conn = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() }).connect();
    conn.declare_queue(queue, QueueOptions::default()).unwrap();
    (clock, conn)
}

fn publish_numbered(conn: &Connection, queue: &str, n: u64) {
    for i in 0..n {
        conn.publish("", queue, Message::new(i.to_string())).unwrap();
    }
}

fn number(d: &Delivery) -> u64 {
    std::str::from_utf8(d.body()).unwrap().parse().unwrap()
}

fn stats(conn: &Connection, queue: &str) -> QueueStats {
    conn.broker().queue_stats(queue).unwrap_or_else(|e| panic!("{e}"))
}

/// `(ready, unacknowledged)` of `queue`.
fn ready_unacked(conn: &Connection, queue: &str) -> (usize, usize) {
    let s = stats(conn, queue);
    (s.messages_ready, s.messages_unacknowledged)
}

/// Waits until `condition` holds, for things that cannot be awaited (a
/// counter another thread bumps after settling).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::yield_now();
    }
}

/// The next event a handler reported.
fn next<T>(events: &Receiver<T>) -> T {
    events.recv_timeout(PATIENCE).expect("the handler reported nothing")
}

/// A gate handlers wait at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let (_open, timeout) = self.opened.wait_timeout_while(open, PATIENCE, |open| !*open).unwrap();
        assert!(!timeout.timed_out(), "the gate was never opened");
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

// ---------------------------------------------------------------------------
// Sync workers
// ---------------------------------------------------------------------------

#[test]
fn a_handler_that_panics_on_every_third_message_still_processes_all_of_them_the_panicking_ones_redelivered()
-> Result {
    quiet_deliberate_panics();
    let conn = setup("jobs");
    publish_numbered(&conn, "jobs", 30);

    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let (done, finished) = mpsc::channel();
    let seen = Arc::clone(&attempts);
    let options = WorkerOptions { threads: 3, ..Default::default() };
    let worker = conn.worker("jobs", options, move |d: &Delivery| {
        let n = number(d);
        let attempt = {
            let mut attempts = seen.lock().unwrap();
            let attempt = attempts.entry(n).or_insert(0);
            *attempt += 1;
            *attempt
        };
        if attempt == 1 && n.is_multiple_of(3) {
            panic!("{DELIBERATE}: message {n}");
        }
        done.send((n, d.redelivered())).unwrap();
        Ok::<(), String>(())
    })?;

    let mut succeeded: Vec<(u64, bool)> = (0..30).map(|_| next(&finished)).collect();
    let report = worker.shutdown();
    succeeded.sort_unstable();

    let numbers: Vec<u64> = succeeded.iter().map(|&(n, _)| n).collect();
    assert_eq!(numbers, (0..30).collect::<Vec<_>>(), "each message processed successfully exactly once");
    for &(n, redelivered) in &succeeded {
        assert_eq!(
            redelivered,
            n.is_multiple_of(3),
            "message {n}: redelivered iff its handler panicked before"
        );
    }
    let attempts = attempts.lock().unwrap();
    assert!(attempts.iter().all(|(&n, &a)| a == if n.is_multiple_of(3) { 2 } else { 1 }), "{attempts:?}");
    assert_eq!(report, WorkerReport { processed: 30, failed: 0, panicked: 10, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

#[test]
fn several_threads_share_the_work_each_named_after_the_queue() -> Result {
    let conn = setup("jobs");
    let gate = Arc::new(Gate::default());
    let (started, names) = mpsc::channel();
    let (done, finished) = mpsc::channel();
    let held = Arc::clone(&gate);
    let worker =
        conn.worker("jobs", WorkerOptions { threads: 4, ..Default::default() }, move |d: &Delivery| {
            started.send(thread::current().name().map(str::to_owned)).unwrap();
            held.wait();
            done.send(number(d)).unwrap();
            Ok::<(), String>(())
        })?;
    publish_numbered(&conn, "jobs", 40);

    // Nobody finishes before the gate opens, so four handlers running at
    // once means four threads, each holding one message (prefetch 1).
    let first_four: HashSet<Option<String>> = (0..4).map(|_| next(&names)).collect();
    let expected: HashSet<Option<String>> =
        (0..4).map(|n| Some(format!("interoffice-worker-jobs-{n}"))).collect();
    assert_eq!(first_four, expected);
    assert_eq!(ready_unacked(&conn, "jobs"), (36, 4));

    gate.open();
    let mut all: Vec<u64> = (0..40).map(|_| next(&finished)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert_eq!(worker.shutdown().processed, 40);
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

#[test]
fn zero_threads_means_one() -> Result {
    let conn = setup("jobs");
    let (done, finished) = mpsc::channel();
    let worker =
        conn.worker("jobs", WorkerOptions { threads: 0, ..Default::default() }, move |d: &Delivery| {
            done.send(number(d)).unwrap();
            Ok::<(), String>(())
        })?;
    assert_eq!(stats(&conn, "jobs").consumers, 1);
    publish_numbered(&conn, "jobs", 3);
    assert_eq!((0..3).map(|_| next(&finished)).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(worker.shutdown().processed, 3);
    Ok(())
}

#[test]
fn a_handler_error_with_requeue_puts_the_message_back_for_another_try() -> Result {
    let conn = setup("jobs");
    let (attempted, attempts) = mpsc::channel();
    let worker = conn.worker("jobs", WorkerOptions::default(), move |d: &Delivery| {
        attempted.send((d.redelivered(), d.delivery_count())).unwrap();
        if d.redelivered() { Ok(()) } else { Err("not yet") }
    })?;
    conn.publish("", "jobs", Message::new("x"))?;

    assert_eq!(next(&attempts), (false, 0));
    assert_eq!(next(&attempts), (true, 1));
    let report = worker.shutdown();
    assert_eq!(errors(&report), ["not yet"]);
    assert_eq!(counts(report), WorkerReport { processed: 1, failed: 1, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

#[test]
fn a_handler_error_with_discard_dead_letters_the_message() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("jobs.dead", QueueOptions::default())?;
    conn.declare_queue(
        "jobs",
        QueueOptions {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("jobs.dead".into()),
            ..Default::default()
        },
    )?;
    let options = WorkerOptions { on_error: OnError::Discard, ..Default::default() };
    let worker = conn.worker("jobs", options, |d: &Delivery| match d.body().as_ref() {
        b"bad" => Err("cannot parse"),
        _ => Ok(()),
    })?;
    conn.publish("", "jobs", Message::new("bad"))?;
    conn.publish("", "jobs", Message::new("good"))?;

    let dead = conn.consume("jobs.dead", ConsumeOptions::default())?;
    let letter = dead.recv_timeout(PATIENCE)?;
    assert_eq!(letter.body().as_ref(), b"bad");
    assert_eq!(letter.header("x-first-death-reason").and_then(|v| v.as_str()), Some("rejected"));
    letter.ack()?;

    wait_until("both messages are settled", || worker.stats().processed + worker.stats().failed == 2);
    assert_eq!(counts(worker.shutdown()), WorkerReport { processed: 1, failed: 1, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    assert_eq!(stats(&conn, "jobs").dead_lettered.rejected, 1);
    Ok(())
}

#[test]
fn a_handler_error_with_requeue_after_retries_once_the_delay_has_passed() -> Result {
    let (clock, conn) = setup_manual("jobs");
    let delay = Duration::from_secs(30);
    let (attempted, attempts) = mpsc::channel();
    let options = WorkerOptions { on_error: OnError::RequeueAfter(delay), ..Default::default() };
    let worker = conn.worker("jobs", options, move |d: &Delivery| {
        attempted.send(d.delivery_count()).unwrap();
        if d.delivery_count() == 0 { Err("the mail server is down") } else { Ok(()) }
    })?;
    conn.publish("", "jobs", Message::new("welcome"))?;

    assert_eq!(next(&attempts), 0);
    wait_until("the failure is settled", || worker.stats().failed == 1);
    let s = stats(&conn, "jobs");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_unacknowledged), (0, 1, 0));

    clock.advance(delay - Duration::from_millis(1));
    assert_eq!(stats(&conn, "jobs").messages_delayed, 1, "not due yet");
    assert!(attempts.try_recv().is_err());

    clock.advance(Duration::from_millis(1));
    assert_eq!(next(&attempts), 1);
    wait_until("the retry is settled", || worker.stats().processed == 1);
    assert_eq!(counts(worker.shutdown()), WorkerReport { processed: 1, failed: 1, ..Default::default() });
    let s = stats(&conn, "jobs");
    assert_eq!((s.messages_ready, s.messages_delayed, s.messages_unacknowledged), (0, 0, 0));
    Ok(())
}

#[test]
fn a_message_that_always_panics_its_handler_is_dead_lettered_once_the_delivery_limit_is_reached() -> Result {
    quiet_deliberate_panics();
    let conn = Broker::new().connect();
    conn.declare_queue("jobs.dead", QueueOptions::default())?;
    conn.declare_queue(
        "jobs",
        QueueOptions {
            delivery_limit: Some(2),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some("jobs.dead".into()),
            ..Default::default()
        },
    )?;
    let (attempted, attempts) = mpsc::channel();
    let worker = conn.worker("jobs", WorkerOptions::default(), move |d: &Delivery| {
        attempted.send(d.delivery_count()).unwrap();
        if d.body().as_ref() == b"poison" {
            panic!("{DELIBERATE}: poison");
        }
        Ok::<(), String>(())
    })?;
    conn.publish("", "jobs", Message::new("poison"))?;
    conn.publish("", "jobs", Message::new("fine"))?;

    let dead = conn.consume("jobs.dead", ConsumeOptions::default())?;
    let letter = dead.recv_timeout(PATIENCE)?;
    assert_eq!(letter.body().as_ref(), b"poison");
    assert_eq!(letter.header("x-first-death-reason").and_then(|v| v.as_str()), Some("delivery_limit"));
    letter.ack()?;

    wait_until("the good message is processed", || worker.stats().processed == 1);
    // Delivered with counts 0, 1 and 2; the third return is past the limit.
    let report = worker.shutdown();
    assert_eq!(report, WorkerReport { processed: 1, panicked: 3, ..Default::default() });
    let mut seen: Vec<u32> = attempts.try_iter().collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 0, 1, 2]);
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

#[test]
fn shutdown_waits_for_the_running_handler_and_loses_nothing() -> Result {
    let conn = setup("jobs");
    publish_numbered(&conn, "jobs", 6);
    let gate = Arc::new(Gate::default());
    let (started, running) = mpsc::channel();
    let held = Arc::clone(&gate);
    // Prefetch 3: one message in the handler, two waiting in the inbox.
    let options = WorkerOptions { prefetch: 3, ..Default::default() };
    let worker = conn.worker("jobs", options, move |d: &Delivery| {
        started.send(number(d)).unwrap();
        held.wait();
        Ok::<(), String>(())
    })?;
    assert_eq!(next(&running), 0);
    assert_eq!(ready_unacked(&conn, "jobs"), (3, 3));

    let stopping = thread::spawn(move || worker.shutdown());
    // The consumer is cancelled first: the two unreceived messages go back
    // while the running handler still holds its own.
    wait_until("the worker's consumer is cancelled", || stats(&conn, "jobs").consumers == 0);
    assert_eq!(ready_unacked(&conn, "jobs"), (5, 1));
    assert!(!stopping.is_finished(), "shutdown returned while a handler was still running");

    gate.open();
    let report = stopping.join().unwrap();
    assert_eq!(report, WorkerReport { processed: 1, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "jobs"), (5, 0), "the running message acked, the rest back in the queue");
    assert!(running.try_recv().is_err(), "no handler started after shutdown");

    // The messages left are intact, in order, and not flagged redelivered:
    // no handler saw them.
    let consumer = conn.consume("jobs", ConsumeOptions::default())?;
    for n in 1..6 {
        let d = consumer.recv_timeout(PATIENCE)?;
        assert_eq!((number(&d), d.redelivered()), (n, false));
        d.ack()?;
    }
    Ok(())
}

#[test]
fn dropping_a_worker_shuts_it_down() -> Result {
    let conn = setup("jobs");
    let (done, finished) = mpsc::channel();
    let worker =
        conn.worker("jobs", WorkerOptions { threads: 2, ..Default::default() }, move |d: &Delivery| {
            done.send(number(d)).unwrap();
            Ok::<(), String>(())
        })?;
    publish_numbered(&conn, "jobs", 2);
    let _ = (next(&finished), next(&finished));
    drop(worker);
    assert_eq!(stats(&conn, "jobs").consumers, 0);
    // Dropping does not wait (Drop never blocks): the handlers that just
    // ran settle on their own threads, moments later.
    let deadline = Instant::now() + PATIENCE;
    while stats(&conn, "jobs").messages_unacknowledged > 0 && Instant::now() < deadline {
        thread::yield_now();
    }
    conn.publish("", "jobs", Message::new("later"))?;
    assert_eq!(ready_unacked(&conn, "jobs"), (1, 0));
    Ok(())
}

#[test]
fn closing_the_connection_stops_the_worker() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default())?;
    let worker =
        conn.worker("jobs", WorkerOptions { threads: 2, ..Default::default() }, |_: &Delivery| {
            Ok::<(), String>(())
        })?;
    assert_eq!(broker.queue_stats("jobs").unwrap().consumers, 2);
    conn.close();
    assert_eq!(broker.queue_stats("jobs").unwrap().consumers, 0);
    broker.connect().publish("", "jobs", Message::new("nobody takes this"))?;
    assert_eq!(broker.queue_stats("jobs").unwrap().messages_ready, 1);
    // Not stopped by its owner: the report says the worker lost its consumers.
    assert_eq!(worker.shutdown(), WorkerReport { consumers_lost: 2, ..Default::default() });
    Ok(())
}

#[test]
fn a_worker_on_a_missing_queue_or_a_closed_connection_is_refused() {
    let conn = setup("jobs");
    let handler = |_: &Delivery| Ok::<(), String>(());
    assert!(conn.worker("nope", WorkerOptions::default(), handler).is_err());
    conn.close();
    assert!(conn.worker("jobs", WorkerOptions::default(), handler).is_err());
    assert!(
        conn.serve("jobs", WorkerOptions::default(), |_: &Delivery| Ok::<_, String>(Message::new("")))
            .is_err()
    );
}

#[test]
fn the_default_options_are_one_thread_prefetch_one_and_backoff() {
    assert_eq!(
        WorkerOptions::default(),
        WorkerOptions {
            threads: 1,
            prefetch: 1,
            on_error: OnError::Backoff(Backoff::default()),
            on_failure: None
        }
    );
    assert_eq!(
        Backoff::default(),
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(60) }
    );
}

// ---------------------------------------------------------------------------
// Async workers
// ---------------------------------------------------------------------------

/// Yields once to the executor: the handler really suspends, under any
/// executor, without depending on one.
#[derive(Default)]
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn an_async_worker_runs_under_tokio_current_thread_settling_errors_and_panics_and_stops() -> Result {
    quiet_deliberate_panics();
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let conn = setup("jobs");
    let (done, mut finished) = futures::channel::mpsc::unbounded();
    let panicked_once = Arc::new(AtomicBool::new(false));
    let failed_once = Arc::new(AtomicBool::new(false));
    let worker = conn.worker_async("jobs", WorkerOptions::default(), async move |d: &Delivery| {
        let n = number(d);
        tokio::task::yield_now().await;
        if n == 3 && !panicked_once.swap(true, Ordering::SeqCst) {
            panic!("{DELIBERATE}: message {n}");
        }
        if n == 5 && !failed_once.swap(true, Ordering::SeqCst) {
            return Err(format!("message {n} fails once"));
        }
        done.unbounded_send((n, d.redelivered())).unwrap();
        Ok(())
    })?;
    let stop = worker.stop_handle();

    let (mut got, report) = rt.block_on(async {
        // tokio::spawn needs the run future to be Send: it is, since the
        // handler's futures are.
        let running = tokio::spawn(worker.run());
        publish_numbered(&conn, "jobs", 10);
        let mut got = Vec::new();
        while got.len() < 10 {
            got.push(finished.next().await.expect("the worker ended early"));
        }
        stop.stop();
        (got, running.await.unwrap())
    });
    got.sort_unstable();
    let expected: Vec<(u64, bool)> = (0..10).map(|n| (n, n == 3 || n == 5)).collect();
    assert_eq!(got, expected);
    assert_eq!((report.processed, report.failed, report.panicked), (10, 1, 1));
    assert_eq!(report.last_failures.len(), 1, "{report:?}");
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

#[test]
fn an_async_worker_runs_under_futures_executor_and_stops_from_another_thread() -> Result {
    let conn = setup("jobs");
    let (seen, handled) = mpsc::channel();
    let options = WorkerOptions { on_error: OnError::Discard, prefetch: 2, ..Default::default() };
    // A handler whose future is not Send is fine off tokio::spawn.
    let local = std::rc::Rc::new(());
    let worker = conn.worker_async("jobs", options, async move |d: &Delivery| {
        let _not_send = std::rc::Rc::clone(&local);
        YieldOnce::default().await;
        seen.send(number(d)).unwrap();
        if number(d).is_multiple_of(2) { Ok(()) } else { Err("odd") }
    })?;
    let stop = worker.stop_handle();
    publish_numbered(&conn, "jobs", 4);
    let operator = thread::spawn(move || {
        let got: Vec<u64> = (0..4).map(|_| next(&handled)).collect();
        stop.stop();
        got
    });
    let report = futures::executor::block_on(worker.run());
    assert_eq!(operator.join().unwrap(), [0, 1, 2, 3]);
    assert_eq!(errors(&report), ["odd", "odd"]);
    assert_eq!(counts(report), WorkerReport { processed: 2, failed: 2, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    assert_eq!(stats(&conn, "jobs").dropped.rejected, 2, "discarded with no dead-letter exchange");
    Ok(())
}

#[test]
fn an_async_worker_stopped_before_it_runs_handles_nothing_and_returns_its_messages() -> Result {
    let conn = setup("jobs");
    publish_numbered(&conn, "jobs", 3);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let worker = conn.worker_async(
        "jobs",
        WorkerOptions { prefetch: 10, ..Default::default() },
        async move |_: &Delivery| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        },
    )?;
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 3), "sent to the worker's consumer");
    let stop = worker.stop_handle();
    stop.stop();
    stop.clone().stop(); // twice does nothing
    assert_eq!(futures::executor::block_on(worker.run()), WorkerReport::default());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(ready_unacked(&conn, "jobs"), (3, 0));
    stop.stop(); // after the worker is gone: nothing
    Ok(())
}

#[test]
fn several_async_workers_on_one_runtime_share_a_queue() -> Result {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let conn = setup("jobs");
    let (done, mut finished) = futures::channel::mpsc::unbounded();
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    for w in 0..3u64 {
        let done = done.clone();
        let worker = conn.worker_async("jobs", WorkerOptions::default(), async move |d: &Delivery| {
            tokio::task::yield_now().await;
            done.unbounded_send((w, number(d))).unwrap();
            Ok::<(), String>(())
        })?;
        stops.push(worker.stop_handle());
        runs.push(worker);
    }
    let reports = rt.block_on(async {
        let tasks: Vec<_> = runs.into_iter().map(|w| tokio::spawn(w.run())).collect();
        publish_numbered(&conn, "jobs", 30);
        let mut by_worker = HashMap::<u64, u64>::new();
        for _ in 0..30 {
            let (w, _) = finished.next().await.unwrap();
            *by_worker.entry(w).or_default() += 1;
        }
        assert_eq!(by_worker.len(), 3, "every worker took a share: {by_worker:?}");
        stops.iter().for_each(|s| s.stop());
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await.unwrap());
        }
        reports
    });
    assert_eq!(reports.iter().map(|r| r.processed).sum::<u64>(), 30);
    assert_eq!(ready_unacked(&conn, "jobs"), (0, 0));
    Ok(())
}

// ---------------------------------------------------------------------------
// RPC server
// ---------------------------------------------------------------------------

/// An echo server that upper-cases the request, failing once on `fail-once`.
fn upper_case_server(conn: &Connection) -> interoffice::Worker {
    let failed = AtomicBool::new(false);
    conn.serve("rpc", WorkerOptions::default(), move |request: &Delivery| {
        let body = std::str::from_utf8(request.body()).map_err(|e| e.to_string())?;
        if body == "fail-once" && !failed.swap(true, Ordering::SeqCst) {
            return Err("not now".to_string());
        }
        Ok(Message::new(body.to_uppercase()).with_correlation_id("set by the handler"))
    })
    .unwrap()
}

#[test]
fn a_server_replies_to_the_reply_to_queue_with_the_requests_correlation_id() -> Result {
    let conn = setup("rpc");
    let replies = conn.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
    let server = upper_case_server(&conn);
    let inbox = conn.consume(&replies, ConsumeOptions::default())?;

    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        let request = Message::new(*word).with_reply_to(&replies).with_correlation_id(format!("call-{i}"));
        conn.publish("", "rpc", request)?;
    }
    for (i, word) in ["ONE", "TWO", "THREE"].iter().enumerate() {
        let reply = inbox.recv_timeout(PATIENCE)?;
        assert_eq!(reply.body().as_ref(), word.as_bytes());
        assert_eq!(reply.properties().correlation_id(), Some(format!("call-{i}").as_str()));
        reply.ack()?;
    }
    // Without a correlation id on the request, the handler's own stays.
    conn.publish("", "rpc", Message::new("four").with_reply_to(&replies))?;
    let reply = inbox.recv_timeout(PATIENCE)?;
    assert_eq!(reply.properties().correlation_id(), Some("set by the handler"));
    reply.ack()?;

    assert_eq!(server.shutdown(), WorkerReport { processed: 4, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "rpc"), (0, 0));
    Ok(())
}

#[test]
fn a_request_without_reply_to_is_handled_and_acknowledged() -> Result {
    let conn = setup("rpc");
    let replies = conn.declare_queue("replies", QueueOptions::default())?;
    let server = upper_case_server(&conn);
    conn.publish("", "rpc", Message::new("fire and forget").with_correlation_id("c"))?;
    conn.publish("", "rpc", Message::new("marker").with_reply_to(&replies))?;

    // Requests are handled in order by one thread: once the marker's reply
    // is here, the first request is done.
    let reply = conn.consume(&replies, ConsumeOptions::default())?.recv_timeout(PATIENCE)?;
    assert_eq!(reply.body().as_ref(), b"MARKER");
    reply.ack()?;
    assert_eq!(server.shutdown(), WorkerReport { processed: 2, ..Default::default() });
    assert_eq!(ready_unacked(&conn, "rpc"), (0, 0));
    assert_eq!(ready_unacked(&conn, "replies"), (0, 0), "no reply for the fire-and-forget request");
    Ok(())
}

#[test]
fn a_server_handler_error_requeues_the_request_and_sends_no_reply_until_it_succeeds() -> Result {
    let conn = setup("rpc");
    let replies = conn.declare_queue("replies", QueueOptions::default())?;
    let server = upper_case_server(&conn);
    conn.publish("", "rpc", Message::new("fail-once").with_reply_to(&replies).with_correlation_id("c-1"))?;

    let inbox = conn.consume(&replies, ConsumeOptions::default())?;
    let reply = inbox.recv_timeout(PATIENCE)?;
    assert_eq!(reply.body().as_ref(), b"FAIL-ONCE");
    assert_eq!(reply.properties().correlation_id(), Some("c-1"));
    reply.ack()?;
    assert_eq!(counts(server.shutdown()), WorkerReport { processed: 1, failed: 1, ..Default::default() });
    assert!(inbox.try_recv().is_err(), "exactly one reply: none for the failed attempt");
    assert_eq!(ready_unacked(&conn, "rpc"), (0, 0));
    Ok(())
}

#[test]
fn a_reply_to_a_queue_that_is_gone_is_counted_and_the_request_still_acknowledged() -> Result {
    let conn = setup("rpc");
    let replies = conn.declare_queue("replies", QueueOptions::default())?;
    let server = upper_case_server(&conn);
    conn.publish("", "rpc", Message::new("nobody listens").with_reply_to("gone"))?;
    conn.publish("", "rpc", Message::new("marker").with_reply_to(&replies))?;

    let reply = conn.consume(&replies, ConsumeOptions::default())?.recv_timeout(PATIENCE)?;
    assert_eq!(reply.body().as_ref(), b"MARKER");
    reply.ack()?;
    assert_eq!(
        server.shutdown(),
        WorkerReport { processed: 2, replies_undeliverable: 1, ..Default::default() }
    );
    assert_eq!(ready_unacked(&conn, "rpc"), (0, 0));
    Ok(())
}

/// `Drop` never blocks: dropping a worker whose handler is still running
/// returns at once; the handler finishes on its own thread and its message
/// is settled as the handler says, on a connection the thread kept open.
#[test]
fn dropping_a_worker_does_not_wait_for_its_running_handler() -> Result {
    let broker = Broker::new();
    broker.connect().declare_queue("slow", QueueOptions::default())?;
    let (started, running) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let worker = broker.connect().worker("slow", WorkerOptions::default(), move |_: &Delivery| {
        started.send(()).unwrap();
        released.lock().unwrap().recv().unwrap();
        Ok::<(), String>(())
    })?;
    broker.connect().publish("", "slow", Message::new("m"))?;
    running.recv()?;
    drop(worker); // returns while the handler is blocked
    release.send(())?;
    let deadline = Instant::now() + PATIENCE;
    while broker.queue_stats("slow").unwrap().messages_unacknowledged > 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    let stats = broker.queue_stats("slow").unwrap();
    assert_eq!((stats.messages_ready, stats.consumers), (0, 0), "acked, not requeued");
    Ok(())
}
