//! `bench peers`: interoffice beside what a Rust user would pick instead —
//! crossbeam-channel, flume, kanal, tokio's mpsc and broadcast, and
//! messagebus — on four scenarios, contenders interleaved in one run, every
//! delivery counted at the receiving end:
//!
//! - **A** 1→1: one producer, one consumer;
//! - **B** 1→10 fanout: every message to ten consumers (deliveries/s);
//! - **C** 4 producers → 1 queue → 4 competing consumers;
//! - **D** request/reply, one caller (calls/s and the round trip's p50).
//!
//! A has four more interoffice rows: `recv_batch` on the consumer,
//! batches on both sides, the publishing half alone (one thread
//! publishing to a queue nobody consumes), which bounds what any 1→1 run
//! publishing one message at a time can reach: a peer's 1→1 above it is
//! out of reach without a cheaper publish, and the batches' publishing
//! half on one thread, which bounds the batch row the same way (see
//! [`bus::a_batch_publish_half`]).
//!
//! Every contender carries the same values: clones of 1,024 pooled
//! `interoffice::Message`s (a 64-byte body and two headers). A contender
//! that has no form of a scenario (tokio's mpsc has one consumer, its
//! broadcast no competing consumers; messagebus has one handler per
//! message type, so no fanout) shows `—`. messagebus's request/reply is
//! its own way: the request's handler returns a reply message, which the
//! bus routes to the reply's handler. The last line of the table is
//! interoffice ÷ the best peer (ratio of medians); below it, each
//! interoffice contender ÷ each peer paired within each rep (the median and
//! range of the reps' own ratios), the figure to hold a target against on a
//! machine whose speed drifts between reps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use interoffice::{Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldValue, Message, QueueOptions};

const POOL: usize = 1024;

fn pool() -> Vec<Message> {
    (0..POOL)
        .map(|i| {
            Message::new(vec![i as u8; 64])
                .with_header("tenant", FieldValue::from("acme"))
                .with_header("n", FieldValue::I64(i as i64))
        })
        .collect()
}

/// One measured run: units per second, and a latency if it has one.
#[derive(Clone, Copy)]
struct Run {
    per_sec: f64,
    p50: Option<Duration>,
}

fn rate(n: u64, elapsed: Duration) -> Run {
    Run { per_sec: n as f64 / elapsed.as_secs_f64(), p50: None }
}

fn check(what: &str, got: u64, want: u64) {
    assert_eq!(got, want, "{what}: {got} of {want} delivered");
}

// ---------------------------------------------------------------------------
// Channels with a blocking API (crossbeam, flume, kanal): one macro, three
// crates, the same code.

macro_rules! blocking_channel {
    ($name:ident, $krate:ident) => {
        mod $name {
            use super::*;

            pub(super) fn a(pool: &[Message], n: u64) -> Run {
                let (tx, rx) = $krate::unbounded();
                let start = Instant::now();
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for i in 0..n {
                            tx.send(pool[i as usize % POOL].clone()).unwrap();
                        }
                    });
                    let mut got = 0;
                    while got < n {
                        let _m: Message = rx.recv().unwrap();
                        got += 1;
                    }
                });
                rate(n, start.elapsed())
            }

            pub(super) fn b(pool: &[Message], n: u64, fan: usize) -> Run {
                let (txs, rxs): (Vec<_>, Vec<_>) = (0..fan).map(|_| $krate::unbounded()).unzip();
                let start = Instant::now();
                let got = AtomicU64::new(0);
                std::thread::scope(|s| {
                    for rx in rxs {
                        let got = &got;
                        s.spawn(move || {
                            for _ in 0..n {
                                let _m: Message = rx.recv().unwrap();
                            }
                            got.fetch_add(n, Ordering::Relaxed);
                        });
                    }
                    for i in 0..n {
                        let m = &pool[i as usize % POOL];
                        for tx in &txs {
                            tx.send(m.clone()).unwrap();
                        }
                    }
                });
                check(stringify!($name), got.into_inner(), n * fan as u64);
                rate(n * fan as u64, start.elapsed())
            }

            pub(super) fn c(pool: &[Message], n: u64, producers: usize, consumers: usize) -> Run {
                let (tx, rx) = $krate::unbounded::<Message>();
                let got = AtomicU64::new(0);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for p in 0..producers {
                        let tx = tx.clone();
                        s.spawn(move || {
                            for i in (p as u64..n).step_by(producers) {
                                tx.send(pool[i as usize % POOL].clone()).unwrap();
                            }
                        });
                    }
                    drop(tx);
                    for _ in 0..consumers {
                        let rx = rx.clone();
                        let got = &got;
                        s.spawn(move || {
                            let mut mine = 0;
                            while rx.recv().is_ok() {
                                mine += 1;
                            }
                            got.fetch_add(mine, Ordering::Relaxed);
                        });
                    }
                });
                check(stringify!($name), got.into_inner(), n);
                rate(n, start.elapsed())
            }

            pub(super) fn d(pool: &[Message], calls: u64) -> Run {
                let (tx, rx) = $krate::unbounded::<(Message, $krate::Sender<Message>)>();
                let mut latencies = Vec::with_capacity(calls as usize);
                let start = Instant::now();
                std::thread::scope(|s| {
                    s.spawn(move || {
                        while let Ok((request, reply)) = rx.recv() {
                            let _ = reply.send(request);
                        }
                    });
                    for i in 0..calls {
                        let (reply_tx, reply_rx) = $krate::bounded(1);
                        let t = Instant::now();
                        tx.send((pool[i as usize % POOL].clone(), reply_tx)).unwrap();
                        let _m: Message = reply_rx.recv().unwrap();
                        latencies.push(t.elapsed());
                    }
                    drop(tx);
                });
                latencies.sort_unstable();
                Run {
                    per_sec: calls as f64 / start.elapsed().as_secs_f64(),
                    p50: Some(latencies[latencies.len() / 2]),
                }
            }
        }
    };
}

blocking_channel!(crossbeam, crossbeam_channel);
blocking_channel!(flume_channel, flume);
blocking_channel!(kanal_channel, kanal);

/// The runtime the tokio and messagebus contenders run on: two workers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

// ---------------------------------------------------------------------------
// tokio: the producers on plain threads (unbounded and broadcast sends do
// not block), the receivers as tasks on a runtime of two workers.

mod tokio_channels {
    use super::*;
    use tokio::sync::{broadcast, mpsc, oneshot};

    pub(super) fn mpsc_a(pool: &[Message], n: u64) -> Run {
        let runtime = runtime();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let start = Instant::now();
        let consumer = runtime.spawn(async move {
            let mut got = 0;
            while got < n {
                rx.recv().await.unwrap();
                got += 1;
            }
            got
        });
        for i in 0..n {
            tx.send(pool[i as usize % POOL].clone()).unwrap();
        }
        let got = runtime.block_on(consumer).unwrap();
        check("tokio mpsc", got, n);
        rate(n, start.elapsed())
    }

    pub(super) fn mpsc_b(pool: &[Message], n: u64, fan: usize) -> Run {
        let runtime = runtime();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..fan).map(|_| mpsc::unbounded_channel::<Message>()).unzip();
        let start = Instant::now();
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                runtime.spawn(async move {
                    for _ in 0..n {
                        rx.recv().await.unwrap();
                    }
                    n
                })
            })
            .collect();
        for i in 0..n {
            let m = &pool[i as usize % POOL];
            for tx in &txs {
                tx.send(m.clone()).unwrap();
            }
        }
        let got: u64 = consumers.into_iter().map(|c| runtime.block_on(c).unwrap()).sum();
        check("tokio mpsc fanout", got, n * fan as u64);
        rate(got, start.elapsed())
    }

    /// Broadcast with room for the whole run, so no receiver lags.
    fn broadcast_fan(pool: &[Message], n: u64, fan: usize) -> Run {
        let runtime = runtime();
        let (tx, _) = broadcast::channel::<Message>(n as usize);
        let rxs: Vec<_> = (0..fan).map(|_| tx.subscribe()).collect();
        let start = Instant::now();
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                runtime.spawn(async move {
                    for _ in 0..n {
                        rx.recv().await.unwrap();
                    }
                    n
                })
            })
            .collect();
        for i in 0..n {
            tx.send(pool[i as usize % POOL].clone()).unwrap();
        }
        let got: u64 = consumers.into_iter().map(|c| runtime.block_on(c).unwrap()).sum();
        check("tokio broadcast", got, n * fan as u64);
        rate(got, start.elapsed())
    }

    pub(super) fn broadcast_a(pool: &[Message], n: u64) -> Run {
        broadcast_fan(pool, n, 1)
    }

    pub(super) fn broadcast_b(pool: &[Message], n: u64, fan: usize) -> Run {
        broadcast_fan(pool, n, fan)
    }

    pub(super) fn oneshot_d(pool: &[Message], calls: u64) -> Run {
        let runtime = runtime();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Message, oneshot::Sender<Message>)>();
        runtime.spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let _ = reply.send(request);
            }
        });
        let pool = pool.to_vec();
        runtime.block_on(async move {
            let mut latencies = Vec::with_capacity(calls as usize);
            let start = Instant::now();
            for i in 0..calls {
                let (reply_tx, reply_rx) = oneshot::channel();
                let t = Instant::now();
                tx.send((pool[i as usize % POOL].clone(), reply_tx)).unwrap();
                reply_rx.await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies.sort_unstable();
            Run {
                per_sec: calls as f64 / start.elapsed().as_secs_f64(),
                p50: Some(latencies[latencies.len() / 2]),
            }
        })
    }
}

// ---------------------------------------------------------------------------
// messagebus 0.15: a handler per message type, on tokio.

mod bus_crate {
    use super::*;
    use messagebus::{Bus, Context, DefaultBuilder, Handler, IntoMessages, VoidError};

    #[derive(Debug, Clone)]
    struct Letter(#[allow(dead_code)] Message);
    impl messagebus::Message for Letter {}

    struct Count(Arc<AtomicU64>);

    /// A messagebus handler: its message, what it returns, and what it
    /// does; an error is answered with nothing, and finalizing does nothing.
    macro_rules! handler {
        ($handler:ty, $msg:ty => $result:ty, |$this:ident, $m:ident| $body:expr) => {
            impl Handler<$msg> for $handler {
                type Result = $result;
                type Error = VoidError;

                async fn handle(
                    &mut self,
                    $m: $msg,
                    _ctx: Context,
                    _bus: Bus,
                ) -> Result<impl IntoMessages<Self::Result, Self::Error>, Self::Error> {
                    let $this = self;
                    Ok($body)
                }

                async fn handle_error(
                    &mut self,
                    _err: messagebus::Error,
                    _ctx: Context,
                    _bus: Bus,
                ) -> Result<impl IntoMessages<Self::Result, Self::Error> + Send + '_, Self::Error> {
                    Ok(None)
                }

                async fn finalize(self, _bus: Bus) -> Result<(), Self::Error> {
                    Ok(())
                }
            }
        };
    }

    handler!(Count, Letter => (), |this, _msg| {
        this.0.fetch_add(1, Ordering::Relaxed);
    });

    /// `producers` tasks send `n` messages in all to one handler type run
    /// by `tasks` tasks; waits until every one was handled.
    fn run(pool: &[Message], n: u64, producers: usize, tasks: u32) -> Run {
        let runtime = runtime();
        let pool = pool.to_vec();
        runtime.block_on(async move {
            let bus = Bus::new();
            let count = Arc::new(AtomicU64::new(0));
            let handled = Arc::clone(&count);
            let builder = DefaultBuilder::<Letter, _, _, _>::new(1024, move |_, _| {
                let handled = Arc::clone(&handled);
                async move { Ok(Count(handled)) }
            })
            .tasks(tasks);
            bus.register(builder).await;
            let pool = Arc::new(pool);
            let start = Instant::now();
            let senders: Vec<_> = (0..producers)
                .map(|p| {
                    let bus = bus.clone();
                    let pool = Arc::clone(&pool);
                    tokio::spawn(async move {
                        for i in (p as u64..n).step_by(producers) {
                            bus.send(Letter(pool[i as usize % POOL].clone())).await.unwrap();
                        }
                    })
                })
                .collect();
            for sender in senders {
                sender.await.unwrap();
            }
            while count.load(Ordering::Relaxed) < n {
                tokio::task::yield_now().await;
            }
            let elapsed = start.elapsed();
            bus.close().await;
            check("messagebus", count.load(Ordering::Relaxed), n);
            rate(n, elapsed)
        })
    }

    pub(super) fn a(pool: &[Message], n: u64) -> Run {
        run(pool, n, 1, 1)
    }

    /// Request/reply the messagebus way: the request's handler returns a
    /// reply message, which the bus routes to the reply's handler, which
    /// hands it to the waiting caller.
    #[derive(Debug, Clone)]
    struct Request(Message);
    impl messagebus::Message for Request {}

    #[derive(Debug, Clone)]
    struct Reply(Message);
    impl messagebus::Message for Reply {}

    struct Server;

    handler!(Server, Request => Reply, |_this, msg| Some(Reply(msg.0)));

    struct Caller(tokio::sync::mpsc::UnboundedSender<Message>);

    handler!(Caller, Reply => (), |this, msg| {
        let _ = this.0.send(msg.0);
    });

    pub(super) fn d(pool: &[Message], calls: u64) -> Run {
        let runtime = runtime();
        let pool = pool.to_vec();
        runtime.block_on(async move {
            let bus = Bus::new();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            bus.register(DefaultBuilder::<Request, _, _, _>::new(1024, |_, _| async { Ok(Server) })).await;
            bus.register(DefaultBuilder::<Reply, _, _, _>::new(1024, move |_, _| {
                let tx = tx.clone();
                async move { Ok(Caller(tx)) }
            }))
            .await;
            let mut latencies = Vec::with_capacity(calls as usize);
            let start = Instant::now();
            for i in 0..calls {
                let t = Instant::now();
                bus.send(Request(pool[i as usize % POOL].clone())).await.unwrap();
                rx.recv().await.unwrap();
                latencies.push(t.elapsed());
            }
            let elapsed = start.elapsed();
            bus.close().await;
            latencies.sort_unstable();
            Run { per_sec: calls as f64 / elapsed.as_secs_f64(), p50: Some(latencies[latencies.len() / 2]) }
        })
    }

    pub(super) fn c(pool: &[Message], n: u64, producers: usize, consumers: usize) -> Run {
        run(pool, n, producers, consumers as u32)
    }
}

// ---------------------------------------------------------------------------
// interoffice.

mod bus {
    use super::*;

    pub(super) fn a(pool: &[Message], n: u64) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("a", QueueOptions::default()).unwrap();
        let consumer = conn.consume("a", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap();
        let start = Instant::now();
        std::thread::scope(|s| {
            let publisher = broker.connect();
            s.spawn(move || {
                let publisher = publisher.publisher("").unwrap();
                for i in 0..n {
                    publisher.publish("a", pool[i as usize % POOL].clone()).unwrap();
                }
            });
            for _ in 0..n {
                consumer.recv().unwrap();
            }
        });
        rate(n, start.elapsed())
    }

    /// A's publishing half alone: one thread publishes `n` messages to a
    /// queue nobody consumes (timed until the last publish returns). No 1→1
    /// run whose producer publishes one message at a time can beat it, so
    /// it bounds what A can reach beside a peer's full 1→1 in the same rep.
    pub(super) fn a_publish_alone(pool: &[Message], n: u64) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("a", QueueOptions::default()).unwrap();
        let publisher = conn.publisher("").unwrap();
        let start = Instant::now();
        for i in 0..n {
            publisher.publish("a", pool[i as usize % POOL].clone()).unwrap();
        }
        let run = rate(n, start.elapsed());
        assert_eq!(conn.purge_queue("a").unwrap() as u64, n, "publish alone: every message queued");
        run
    }

    /// A, the consumer taking what is waiting in batches of up to 64; with
    /// `publish_batches`, the publisher sending batches of 64 too.
    pub(super) fn a_batch(pool: &[Message], n: u64, publish_batches: bool) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("a", QueueOptions::default()).unwrap();
        let options = ConsumeOptions { auto_ack: true, prefetch: 1024, ..Default::default() };
        let consumer = conn.consume("a", options).unwrap();
        let start = Instant::now();
        std::thread::scope(|s| {
            let publisher = broker.connect();
            s.spawn(move || {
                let publisher = publisher.publisher("").unwrap();
                let step = if publish_batches { 64 } else { 1 };
                let mut i = 0;
                while i < n {
                    let end = (i + step).min(n);
                    if publish_batches {
                        let batch = (i..end).map(|i| ("a", pool[i as usize % POOL].clone()));
                        publisher.publish_batch(batch, Default::default()).unwrap();
                    } else {
                        publisher.publish("a", pool[i as usize % POOL].clone()).unwrap();
                    }
                    i = end;
                }
            });
            let mut got = 0;
            while got < n {
                got += consumer.recv_batch(64).unwrap().len() as u64;
            }
        });
        rate(n, start.elapsed())
    }

    /// The batch row's publishing half at its cheapest: one thread
    /// publishes a batch of 64, then takes it with `recv_batch` itself,
    /// and only the publishes are timed. Everything stays in this core's
    /// cache (the envelopes come back to the thread that reuses them, and
    /// no line crosses to another core), so this is what the batched
    /// publish's own work costs; a two-thread run only adds to it. A peer's
    /// 1→1 above it cannot be reached by moving less between cores, only
    /// by a batched publish doing less.
    pub(super) fn a_batch_publish_half(pool: &[Message], n: u64) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("a", QueueOptions::default()).unwrap();
        let options = ConsumeOptions { auto_ack: true, prefetch: 1024, ..Default::default() };
        let consumer = conn.consume("a", options).unwrap();
        let publisher = conn.publisher("").unwrap();
        let (mut publishing, mut i) = (Duration::ZERO, 0);
        while i < n {
            let end = (i + 64).min(n);
            let batch = (i..end).map(|i| ("a", pool[i as usize % POOL].clone()));
            let start = Instant::now();
            publisher.publish_batch(batch, Default::default()).unwrap();
            publishing += start.elapsed();
            let got = consumer.recv_batch(64).unwrap().len() as u64;
            check("interoffice batch publishing half", got, end - i);
            i = end;
        }
        rate(n, publishing)
    }

    pub(super) fn b(pool: &[Message], n: u64, fan: usize) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_exchange("fan", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
        let consumers: Vec<_> = (0..fan)
            .map(|q| {
                let name = format!("b{q}");
                conn.declare_queue(&name, QueueOptions::default()).unwrap();
                conn.bind_queue(&name, "fan", "", None).unwrap();
                conn.consume(&name, ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap()
            })
            .collect();
        let got = AtomicU64::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for consumer in &consumers {
                let got = &got;
                s.spawn(move || {
                    for _ in 0..n {
                        consumer.recv().unwrap();
                    }
                    got.fetch_add(n, Ordering::Relaxed);
                });
            }
            let publisher = conn.publisher("fan").unwrap();
            for i in 0..n {
                publisher.publish("", pool[i as usize % POOL].clone()).unwrap();
            }
        });
        check("interoffice fanout", got.into_inner(), n * fan as u64);
        rate(n * fan as u64, start.elapsed())
    }

    pub(super) fn c(pool: &[Message], n: u64, producers: usize, consumers: usize) -> Run {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("c", QueueOptions::default()).unwrap();
        let subs: Vec<_> = (0..consumers)
            .map(|_| conn.consume("c", ConsumeOptions { auto_ack: true, ..Default::default() }).unwrap())
            .collect();
        let got = AtomicU64::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for p in 0..producers {
                let publisher = broker.connect();
                s.spawn(move || {
                    let publisher = publisher.publisher("").unwrap();
                    for i in (p as u64..n).step_by(producers) {
                        publisher.publish("c", pool[i as usize % POOL].clone()).unwrap();
                    }
                });
            }
            for sub in &subs {
                let got = &got;
                // A queue is never "disconnected": each consumer counts in
                // batches and, once the queue is idle a moment, adds what it
                // has and stops when every message is counted.
                s.spawn(move || {
                    let mut mine = 0;
                    loop {
                        match sub.recv_timeout(Duration::from_millis(1)) {
                            Ok(_) => {
                                mine += 1;
                                if mine == 256 {
                                    got.fetch_add(mine, Ordering::Relaxed);
                                    mine = 0;
                                }
                            }
                            Err(_) => {
                                got.fetch_add(mine, Ordering::Relaxed);
                                mine = 0;
                                if got.load(Ordering::Relaxed) >= n {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        check("interoffice competing", got.into_inner(), n);
        rate(n, start.elapsed())
    }

    pub(super) fn d(pool: &[Message], calls: u64) -> Run {
        let broker = Broker::new();
        let server = broker.connect();
        server.declare_queue("d", QueueOptions::default()).unwrap();
        let _worker = server
            .serve("d", Default::default(), |request| Ok::<_, String>(request.message().clone()))
            .unwrap();
        let caller = broker.connect();
        let mut latencies = Vec::with_capacity(calls as usize);
        let start = Instant::now();
        for i in 0..calls {
            let t = Instant::now();
            caller.call("", "d", pool[i as usize % POOL].clone(), Duration::from_secs(10)).unwrap();
            latencies.push(t.elapsed());
        }
        latencies.sort_unstable();
        Run {
            per_sec: calls as f64 / start.elapsed().as_secs_f64(),
            p50: Some(latencies[latencies.len() / 2]),
        }
    }
}

// ---------------------------------------------------------------------------

type Contender<'a> = (&'static str, Box<dyn Fn() -> Option<Run> + 'a>);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 { format!("{:.2} M", v / 1e6) } else { format!("{:.0} k", v / 1e3) }
}

/// Runs every contender `reps` times, interleaved, and prints the medians,
/// interoffice ÷ the best peer, and interoffice ÷ each peer paired within
/// each rep.
fn scenario(title: &str, unit: &str, reps: usize, contenders: Vec<Contender<'_>>) {
    let mut runs: Vec<Vec<Run>> = contenders.iter().map(|_| Vec::new()).collect();
    // Per rep, each contender's rate (`None`: no form of the scenario).
    let mut by_rep: Vec<Vec<Option<f64>>> = Vec::new();
    for rep in 0..reps {
        let mut this_rep = Vec::new();
        for (i, (name, run)) in contenders.iter().enumerate() {
            eprint!("\r{title}: rep {}/{reps}, {name}                    ", rep + 1);
            let r = run();
            this_rep.push(r.as_ref().map(|r| r.per_sec));
            if let Some(r) = r {
                runs[i].push(r);
            }
        }
        by_rep.push(this_rep);
    }
    eprint!("\r{:80}\r", "");
    println!("\n{title} ({unit}, median of {reps})");
    let medians: Vec<Option<(f64, Option<Duration>)>> = runs
        .iter()
        .map(|rs| {
            (!rs.is_empty()).then(|| {
                let p50 = rs.iter().filter_map(|r| r.p50).map(|d| d.as_nanos() as f64).collect::<Vec<_>>();
                let p50 = (!p50.is_empty()).then(|| Duration::from_nanos(median(p50) as u64));
                (median(rs.iter().map(|r| r.per_sec).collect()), p50)
            })
        })
        .collect();
    let ours = medians[0].map(|(v, _)| v).unwrap_or_default();
    let best = contenders
        .iter()
        .zip(&medians)
        .filter(|((name, _), _)| !name.starts_with("interoffice"))
        .filter_map(|(_, m)| m.map(|(v, _)| v))
        .fold(0.0, f64::max);
    for ((name, _), m) in contenders.iter().zip(&medians) {
        match m {
            Some((v, p50)) => {
                let p50 = p50.map_or(String::new(), |d| format!("  p50 {d:.1?}"));
                println!("  {name:<26} {:>10}{p50}", fmt_rate(*v));
            }
            None => println!("  {name:<26} {:>10}", "—"),
        }
    }
    println!("  interoffice ÷ best peer: {:.2}", ours / best);
    print_paired(&contenders, &by_rep);
}

/// Each interoffice contender ÷ each peer, as the median and range of the
/// ratios within each rep. This VM has slow phases that take every
/// contender of a rep down alike: a ratio within a rep cancels them, where
/// a ratio of medians taken over different reps does not.
fn print_paired(contenders: &[Contender<'_>], by_rep: &[Vec<Option<f64>>]) {
    let ours = |name: &str| name.starts_with("interoffice");
    let mut printed_heading = false;
    for (us, (our_name, _)) in contenders.iter().enumerate().filter(|(_, (name, _))| ours(name)) {
        let mut line = String::new();
        for (them, (name, _)) in contenders.iter().enumerate().filter(|(_, (name, _))| !ours(name)) {
            let ratios: Vec<f64> = by_rep
                .iter()
                .filter_map(|rep| Some(rep[us]? / rep[them]?))
                .filter(|r| r.is_finite())
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            line.push_str(&format!("\n      ÷ {name:<20} {:.2} ({lo:.2}–{hi:.2})", median(ratios)));
        }
        if line.is_empty() {
            continue;
        }
        if !printed_heading {
            println!("  paired within each rep (median of the reps' ratios, range):");
            printed_heading = true;
        }
        println!("    {our_name}{line}");
    }
}

/// `bench peers [--messages N] [--reps R] [--only ABCD]`.
pub fn main(args: &[String]) {
    let mut n: u64 = 1_000_000;
    let mut reps = 5;
    // `--only ABD`: the scenarios to run, by letter (default: all).
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--messages" => n = it.next().and_then(|v| v.parse().ok()).unwrap_or(n),
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            "--only" => only = it.next().cloned(),
            other => eprintln!("peers: ignoring '{other}'"),
        }
    }
    let pool = pool();
    let pool = pool.as_slice();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "peers: {n} messages (64-byte body + 2 headers, {POOL} pooled), {reps} reps interleaved, {cores} cores"
    );
    let fan = 10;
    let nb = n / 5;
    let calls = (n / 10).max(1000);
    let wanted = |letter: char| only.as_ref().is_none_or(|o| o.contains(letter));
    if wanted('A') {
        scenario(
            "A 1→1",
            "msg/s",
            reps,
            vec![
                ("interoffice", Box::new(|| Some(bus::a(pool, n)))),
                ("interoffice recv_batch", Box::new(|| Some(bus::a_batch(pool, n, false)))),
                ("interoffice batches", Box::new(|| Some(bus::a_batch(pool, n, true)))),
                ("interoffice publish alone", Box::new(|| Some(bus::a_publish_alone(pool, n)))),
                ("interoffice batch publishing", Box::new(|| Some(bus::a_batch_publish_half(pool, n)))),
                ("crossbeam-channel", Box::new(|| Some(crossbeam::a(pool, n)))),
                ("flume", Box::new(|| Some(flume_channel::a(pool, n)))),
                ("kanal", Box::new(|| Some(kanal_channel::a(pool, n)))),
                ("tokio mpsc", Box::new(|| Some(tokio_channels::mpsc_a(pool, n)))),
                ("tokio broadcast", Box::new(|| Some(tokio_channels::broadcast_a(pool, n)))),
                ("messagebus", Box::new(|| Some(bus_crate::a(pool, n)))),
            ],
        );
    }
    if wanted('B') {
        scenario(
            "B 1→10 fanout",
            "deliveries/s",
            reps,
            vec![
                ("interoffice", Box::new(|| Some(bus::b(pool, nb, fan)))),
                ("crossbeam-channel", Box::new(|| Some(crossbeam::b(pool, nb, fan)))),
                ("flume", Box::new(|| Some(flume_channel::b(pool, nb, fan)))),
                ("kanal", Box::new(|| Some(kanal_channel::b(pool, nb, fan)))),
                ("tokio mpsc", Box::new(|| Some(tokio_channels::mpsc_b(pool, nb, fan)))),
                ("tokio broadcast", Box::new(|| Some(tokio_channels::broadcast_b(pool, nb, fan)))),
                ("messagebus", Box::new(|| None)),
            ],
        );
    }
    if wanted('C') {
        scenario(
            "C 4 producers → 1 queue → 4 consumers",
            "msg/s",
            reps,
            vec![
                ("interoffice", Box::new(|| Some(bus::c(pool, n, 4, 4)))),
                ("crossbeam-channel", Box::new(|| Some(crossbeam::c(pool, n, 4, 4)))),
                ("flume", Box::new(|| Some(flume_channel::c(pool, n, 4, 4)))),
                ("kanal", Box::new(|| Some(kanal_channel::c(pool, n, 4, 4)))),
                ("tokio mpsc", Box::new(|| None)),
                ("tokio broadcast", Box::new(|| None)),
                ("messagebus", Box::new(|| Some(bus_crate::c(pool, n, 4, 4)))),
            ],
        );
    }
    if wanted('D') {
        scenario(
            "D request/reply, 1 caller",
            "calls/s",
            reps,
            vec![
                ("interoffice", Box::new(|| Some(bus::d(pool, calls)))),
                ("crossbeam-channel", Box::new(|| Some(crossbeam::d(pool, calls)))),
                ("flume", Box::new(|| Some(flume_channel::d(pool, calls)))),
                ("kanal", Box::new(|| Some(kanal_channel::d(pool, calls)))),
                ("tokio mpsc+oneshot", Box::new(|| Some(tokio_channels::oneshot_d(pool, calls)))),
                ("tokio broadcast", Box::new(|| None)),
                ("messagebus", Box::new(|| Some(bus_crate::d(pool, calls)))),
            ],
        );
    }
}
