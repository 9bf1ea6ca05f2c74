//! Benchmark a topology shape on interoffice, beside a raw crossbeam channel
//! measured in the same process.
//!
//! ```text
//! cargo run --release --example bench -- [SCENARIO...] [--messages N] [--producers P]
//!     [--consumers C] [--bindings B] [--reps R] [--json]
//! ```
//!
//! `--help` lists the scenarios and what each option means for each.
//!
//! # How it measures
//!
//! * **The same messages on both sides.** A pool of 1,024 distinct messages
//!   is built once: a 4-word routing key (from a 100-word vocabulary), two
//!   headers (`x-sent-at`, the send time, and `region`) and a 64-byte `Bytes`
//!   body. Every send, raw or bus, clones the next pool message (two refcount
//!   increments: `Message` shares its properties and body), one in 16 also
//!   writes the send time into its `x-sent-at` header (which copies that
//!   message's properties), and hands it over: the bus gets it by value in
//!   `Connection::publish`, the raw channel gets it in an `Arc` (one per
//!   message, as the bus wraps each message in one envelope; a fanout shares
//!   that `Arc` between its channels as the bus shares its envelope between
//!   queues; the channels between threads hold at most 1,024 messages, see
//!   `RAW_CAPACITY`). The receiving thread reads the header to measure latency and
//!   drops the message, on both sides. So the per-message work outside the
//!   transport is the same, and the ratio is the bus's cost over a channel.
//! * **Paired runs.** Each repetition runs the raw baseline then the bus,
//!   back to back, with the same threads and the same messages; the ratio
//!   `bus ÷ raw` is taken per pair, and the table gives the median and the
//!   min–max of those ratios (core placement on a small VM moves raw
//!   throughput by ±30%, a pair moves together). One short unmeasured pair
//!   warms each case up.
//! * **statistics** pairs the bus with itself: direct-manual's bus (manual
//!   acks at prefetch 1,000, where statistics count the most: a publish, a
//!   delivery and an ack per message) on a broker with
//!   `BrokerOptions::statistics` off, as the baseline, beside the same on a
//!   second broker with it on, so its ratio is the throughput with
//!   statistics ÷ without (the performance target is ≥ 0.95). Odd reps run
//!   off then on, even reps on then off, so that an advantage of running
//!   first or second cancels in the median; a note gives the median of
//!   each order apart.
//! * **Throughput** runs from the moment every thread is released to the
//!   last delivery (or, publish-only, the last publish; the queues are
//!   emptied between timed batches, outside the time). **Latency** is
//!   publish → delivery under full load, queueing included, over all
//!   repetitions; for rpc it is the round trip of one call. **Peak RSS** is
//!   the high-water mark of the process during the bus's runs (Linux:
//!   `/proc/self/status`, reset through `/proc/self/clear_refs` before each
//!   run; "n/a" elsewhere). fill-drain runs each side in a fresh child
//!   process, so its memory figures start from a clean heap.
//! * **Correctness.** Every run checks that every message published was
//!   received — counted per queue, and checked against what `publish` said
//!   it routed — so a broken bus cannot look fast; a run that stops making
//!   progress for 10 s fails (exit code 1). direct, direct-manual, headers
//!   and statistics also check the queue's `message_stats`: moved by exactly
//!   the run's publishes, deliveries and acks when statistics are on, `None`
//!   when off (a counter that skips work must not look cheap).
//!
//! # Reading the output
//!
//! `bus÷raw` is the bus's throughput as a fraction of the raw channel's in
//! the same rep: 1.0 means the bus costs no more than cloning (and sampling)
//! and sending the message through a bare channel; 0.5 means it moves half as
//! many. In statistics the `raw` column is the bus without statistics and the
//! `bus` column the bus with them (a line under the heading says so), so 1.0
//! means statistics are free. Read the ratio, not the absolute figures,
//! across machines; a wide min–max means a noisy machine (other processes on
//! the cores), so rerun with more `--reps`. The notes under the table give
//! what does not fit a column: the raw channel's own latency and memory, how
//! many queues a topic key reaches and how much faster than a linear scan the
//! bus routes it, the two-publisher scaling factor (2.0 = publishing does not
//! serialise), and fill-drain's bytes per queued message (RSS growth ÷ N: in
//! total, beyond the body and the headers' keys and values, and beyond what
//! the same messages cost queued in a raw channel). `--json` prints the same
//! figures, one object per scenario with a `results` array (one entry per
//! table line), plus the per-rep throughputs, for tracking over time; each
//! entry names its `baseline` and `measured` sides (`raw_*` and `bus_*`
//! figures), and statistics adds its ratios by order
//! (`ratio_median_off_first`, …).

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError as ChannelEmpty, bounded, unbounded};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use interoffice::{
    Broker, BrokerOptions, ConnectOptions, Connection, ConsumeOptions, Consumer, Credentials, Delivery,
    ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Message, MessageStats, Permissions, QueueOptions,
    TopicPermissions, TryRecvError, WorkerOptions,
};
use serde_json::{Value, json};

/// The generated workload the criterion benches use too: one copy of the
/// vocabulary, the topic patterns and the naive router.
#[path = "../benches/common/workload.rs"]
mod workload;

/// `bench peers`: the bus beside crossbeam-channel, flume, kanal, tokio and
/// messagebus (see its module docs).
#[path = "support/peers.rs"]
mod peers;
use workload::{NaiveRouter, XorShift, topic_patterns, vocabulary};

const USAGE: &str = "\
Benchmark interoffice beside a raw crossbeam channel measured in the same process.

usage: cargo run --release --example bench -- [SCENARIO...] [OPTIONS]

scenarios (default: all of them, in this order):
  direct          P -> C through a direct exchange to one queue, auto-ack (default 1 -> 1)
  direct-manual   the same with manual acks, prefetch 1,000
  fanout          a fanout exchange to B queues (default 10), drained by C threads (default 1)
  topic           B topic bindings (default 10,000; patterns of 1-5 words from 100 words,
                  10% '*', 1% '#') over 100 queues, keys of 4 words: publish-only, then
                  with every queue consumed by C threads (default 1)
  headers         a headers exchange with B bindings (default 100) to one queue, C consumers
  two-publishers  P publishers (default 2) each to its own queue, beside 1 publisher:
                  does routing serialise? (publish-only; reports the scaling factor)
  rpc             round trips, Connection::call -> Connection::serve
  firehose        the cost of an attached tap (Broker::tap, the recorder's hook): direct-manual's
                  bus without a tap beside the same bus with a no-op tap
  statistics      the cost of statistics: direct-manual's bus (default 1 -> 1) on a broker
                  with BrokerOptions::statistics off, beside it on; ratio on / off (target
                  >= 0.95); odd reps run off then on, even reps on then off
  fill-drain      fill one queue with N messages (default 1,000,000), then drain it:
                  memory per queued message

  peers           (alone, first) the bus beside crossbeam-channel, flume, kanal, tokio
                  mpsc/broadcast and messagebus on 1->1, 1->10 fanout, 4->1->4 competing
                  consumers and request/reply; options --messages N (default 1,000,000),
                  --reps R (default 5), --only ABCD (the scenarios to run, by letter)

options:
  --messages N    messages per run (default 200,000; rpc 20,000; fill-drain 1,000,000)
  --producers P   publisher threads (default 1; two-publishers 2, and at least 2)
  --consumers C   consumer threads (default 1): competing consumers of the one queue in
                  direct, direct-manual, headers and statistics; threads sharing the queues
                  in fanout and topic (not used by two-publishers, rpc, fill-drain)
  --bindings B    fanout: queues; topic: patterns; headers: bindings (others: not used)
  --reps R        paired repetitions, raw channel then bus (default 5; statistics: bus
                  without then with statistics, or with then without, in turn)
  --json          print one JSON object per scenario (a line each) instead of the table
  -h, --help      print this text

The table: throughput (median of the reps) of the raw channel and of the bus, the ratio
bus / raw (median, and min-max of the paired reps), publish -> delivery latency of the bus
under full load (p50, p99, p999; rpc: the round trip), and the bus's peak RSS. For
statistics the raw column is the bus with statistics off, the bus column with them on.
";

/// Distinct messages in the pool.
const POOL: usize = 1024;
/// Body length in bytes.
const BODY_LEN: usize = 64;
/// Words per routing key.
const KEY_WORDS: usize = 4;
/// Distinct values of the `region` header.
const REGIONS: usize = 100;
/// The header holding the send time, in nanoseconds since the run's epoch.
const STAMP: &str = "x-sent-at";
/// The `x-sent-at` of a pooled message that was sent without a stamp.
const UNSTAMPED: i64 = -1;
/// The other header.
const REGION: &str = "region";
/// Capacity of the raw channels between threads. Bounded, so the baseline
/// stays in its fast regime: unbounded, a raw consumer doing the same
/// per-message work as its producer can fall behind, then works through cold
/// messages at half speed while the backlog grows, and the bus (whose
/// slower publisher lets its consumer keep up) would look faster than the
/// channel. Bounded, the baseline is the channel at its best.
const RAW_CAPACITY: usize = 1024;
/// Queues the topic bindings lead to.
const TOPIC_QUEUES: usize = 100;
/// Publish-only runs empty their queues after every batch of this many, outside the time.
const BATCH: usize = 4096;
/// Keys routed by the naive linear scan the topic trie is compared with.
const NAIVE_KEYS: usize = 256;
/// A run that makes no progress for this long fails.
const STALL: Duration = Duration::from_secs(10);
/// How often the coordinating thread looks at the counters.
const TICK: Duration = Duration::from_millis(5);
/// An rpc call waiting longer than this fails the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Direct,
    DirectManual,
    Fanout,
    Topic,
    Headers,
    TwoPublishers,
    Rpc,
    Statistics,
    Firehose,
    Permissions,
    FillDrain,
}

impl Scenario {
    const ALL: [Scenario; 11] = [
        Scenario::Direct,
        Scenario::DirectManual,
        Scenario::Fanout,
        Scenario::Topic,
        Scenario::Headers,
        Scenario::TwoPublishers,
        Scenario::Rpc,
        Scenario::Statistics,
        Scenario::Firehose,
        Scenario::Permissions,
        Scenario::FillDrain,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::DirectManual => "direct-manual",
            Scenario::Fanout => "fanout",
            Scenario::Topic => "topic",
            Scenario::Headers => "headers",
            Scenario::TwoPublishers => "two-publishers",
            Scenario::Rpc => "rpc",
            Scenario::Statistics => "statistics",
            Scenario::Firehose => "firehose",
            Scenario::Permissions => "permissions",
            Scenario::FillDrain => "fill-drain",
        }
    }

    fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Bus,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Bus => "bus",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    scenarios: Vec<Scenario>,
    messages: Option<u64>,
    producers: Option<usize>,
    consumers: Option<usize>,
    bindings: Option<usize>,
    reps: usize,
    json: bool,
}

#[derive(Debug)]
enum Cli {
    Help,
    Run(Config),
    /// Internal: one fill-drain measurement in a fresh process.
    FillDrainChild {
        side: Side,
        messages: u64,
    },
}

/// Hidden option: run one side of fill-drain and print its figures.
const CHILD_FLAG: &str = "--fill-drain-child";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Cli, String> {
    use lexopt::prelude::*;
    let mut config = Config {
        scenarios: Vec::new(),
        messages: None,
        producers: None,
        consumers: None,
        bindings: None,
        reps: 5,
        json: false,
    };
    let mut child = None;
    let mut parser = lexopt::Parser::from_args(args);
    let text = |parser: &mut lexopt::Parser| -> Result<String, String> {
        parser.value().and_then(|v| v.string()).map_err(|e| e.to_string())
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Long("json") => config.json = true,
            Long("messages") => {
                config.messages = Some(count("--messages", &text(&mut parser)?, 100_000_000)?)
            }
            Long("producers") => {
                config.producers = Some(count("--producers", &text(&mut parser)?, 256)? as usize)
            }
            Long("consumers") => {
                config.consumers = Some(count("--consumers", &text(&mut parser)?, 256)? as usize)
            }
            Long("bindings") => {
                config.bindings = Some(count("--bindings", &text(&mut parser)?, 1_000_000)? as usize)
            }
            Long("reps") => config.reps = count("--reps", &text(&mut parser)?, 1_000)? as usize,
            Long(flag) if flag == &CHILD_FLAG[2..] => {
                child = match text(&mut parser)?.as_str() {
                    "raw" => Some(Side::Raw),
                    "bus" => Some(Side::Bus),
                    other => return Err(format!("{CHILD_FLAG}: expected raw or bus, got '{other}'")),
                }
            }
            Value(name) => {
                let name = name.string().map_err(|e| e.to_string())?;
                match name.as_str() {
                    "all" => config.scenarios.extend(Scenario::ALL),
                    name => match Scenario::parse(name) {
                        Some(s) => config.scenarios.push(s),
                        None => {
                            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                            return Err(format!(
                                "unknown scenario '{name}' (one of: {}, all)",
                                names.join(", ")
                            ));
                        }
                    },
                }
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    if let Some(side) = child {
        let messages = config.messages.ok_or_else(|| format!("{CHILD_FLAG} needs --messages"))?;
        return Ok(Cli::FillDrainChild { side, messages });
    }
    if config.scenarios.is_empty() {
        config.scenarios.extend(Scenario::ALL);
    }
    let mut seen = Vec::new();
    config.scenarios.retain(|s| {
        let first = !seen.contains(s);
        seen.push(*s);
        first
    });
    Ok(Cli::Run(config))
}

/// A whole number from 1 to `max`; `_` and `,` may group digits.
fn count(flag: &str, text: &str, max: u64) -> Result<u64, String> {
    let digits: String = text.chars().filter(|c| !matches!(c, '_' | ',')).collect();
    match digits.parse::<u64>() {
        Ok(0) => Err(format!("{flag} must be at least 1")),
        Ok(n) if n > max => Err(format!("{flag} must be at most {max}, got {n}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{flag}: '{text}' is not a whole number")),
    }
}

// ---------------------------------------------------------------------------
// Messages

/// One pooled message and the routing key it is published with.
struct Sample {
    key: String,
    message: Message,
}

/// The pool: `POOL` distinct messages with distinct bodies and keys.
fn build_pool(vocab: &[String]) -> Vec<Sample> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..POOL)
        .map(|i| {
            let key =
                (0..KEY_WORDS).map(|_| vocab[rng.below(vocab.len())].as_str()).collect::<Vec<_>>().join(".");
            let body: Vec<u8> = (0..BODY_LEN).map(|_| rng.next() as u8).collect();
            let headers = FieldTable::from([
                (STAMP, FieldValue::I64(UNSTAMPED)),
                (REGION, FieldValue::from(format!("region-{}", i % REGIONS))),
            ]);
            Sample { key, message: Message::new(Bytes::from(body)).with_headers(headers) }
        })
        .collect()
}

/// One message in this many is stamped with its send time (see [`stamped`]).
const STAMP_EVERY: u32 = 16;

thread_local! {
    /// Sends made by this thread, to pick the ones [`stamped`] stamps.
    static SENDS: Cell<u32> = const { Cell::new(0) };
}

/// A clone of `sample`'s message — what every send sends — one in
/// [`STAMP_EVERY`] stamped with the time since `epoch` in its `x-sent-at`
/// header. A clone is two refcount increments; stamping changes the
/// properties, so it copies them (copy-on-write): sampling keeps that copy
/// off most sends, on both sides alike, while a few thousand stamps per run
/// still give the latency percentiles.
#[inline]
fn stamped(sample: &Sample, epoch: Instant) -> Message {
    let mut message = sample.message.clone();
    let n = SENDS.with(|sends| {
        let n = sends.get();
        sends.set(n.wrapping_add(1));
        n
    });
    if n.is_multiple_of(STAMP_EVERY) {
        let now = epoch.elapsed().as_nanos() as i64;
        if let Some(FieldValue::I64(sent)) =
            message.properties_mut().headers_mut().as_mut().and_then(|h| h.get_mut(STAMP))
        {
            *sent = now;
        }
    }
    message
}

/// The logical size of a message's headers: key bytes plus value bytes.
fn header_bytes(message: &Message) -> usize {
    message.headers().map_or(0, |h| {
        h.iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        FieldValue::String(s) => s.len(),
                        FieldValue::Bytes(b) => b.len(),
                        _ => 8,
                    }
            })
            .sum()
    })
}

/// The share of `n` messages of producer `p` of `np`.
fn share(n: u64, p: usize, np: usize) -> u64 {
    n / np as u64 + u64::from((p as u64) < n % np as u64)
}

/// The part of `items` producer `p` of `np` cycles through (each producer
/// its own messages, so producers share no refcount).
fn part<T>(items: &[T], p: usize, np: usize) -> &[T] {
    if items.len() < np {
        return items;
    }
    let len = items.len() / np;
    &items[p * len..(p + 1) * len]
}

// ---------------------------------------------------------------------------
// Latency histogram

/// Latency in nanoseconds: an HDR histogram, 3 significant digits, from
/// 1 ns to an hour (longer is recorded as an hour: a run that slow has
/// already failed its stall check).
#[derive(Clone)]
struct Histogram(hdrhistogram::Histogram<u64>);

impl Histogram {
    fn new() -> Self {
        // Fixed bounds: `saturating_record` clamps rather than grows, and a
        // histogram that grows would allocate in the measured loop.
        Histogram(
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap_or_else(|e| fatal(e)),
        )
    }

    #[inline]
    fn record(&mut self, v: u64) {
        self.0.saturating_record(v);
    }

    fn merge(&mut self, other: &Histogram) {
        if let Err(e) = self.0.add(&other.0) {
            fatal(format_args!("merging latencies: {e}"));
        }
    }

    fn total(&self) -> u64 {
        self.0.len()
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q))
    }
}

// ---------------------------------------------------------------------------
// Memory

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), on Linux.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Peak memory of one run.
#[derive(Debug, Clone, Copy)]
struct Mem {
    /// High-water mark of the resident set during the run.
    peak: u64,
    /// Resident set when the run started.
    base: u64,
    /// Whether the high-water mark could not be reset before the run (it is then the process's).
    process_wide: bool,
}

struct MemProbe {
    reset: bool,
    base: Option<u64>,
}

impl MemProbe {
    fn start() -> MemProbe {
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        MemProbe { reset, base: status_bytes("VmRSS") }
    }

    fn finish(&self) -> Option<Mem> {
        let base = self.base?;
        Some(Mem { peak: status_bytes("VmHWM")?.max(base), base, process_wide: !self.reset })
    }
}

fn max_mem(a: Option<Mem>, b: Option<Mem>) -> Option<Mem> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.peak > a.peak { b } else { a }),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------
// Progress and failure

/// The progress line on stderr (indicatif draws and clears it, at most a
/// few times a second); `None` once cleared for good.
static BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// The progress line's text, set by the main thread.
struct Progress {
    label: RefCell<String>,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|e| fatal(e)));
        *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        Progress { label: RefCell::new(String::new()) }
    }

    fn set(&self, label: String) {
        Self::draw(label.clone());
        *self.label.borrow_mut() = label;
    }

    fn show(&self, done: u64, total: u64) {
        Self::draw(format!("{}: {done}/{total}", self.label.borrow()));
    }

    fn draw(line: String) {
        if let Some(bar) = BAR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.set_message(line);
        }
    }
}

/// Clears the progress line for good.
fn clear_progress() {
    if let Some(bar) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        bar.finish_and_clear();
    }
}

/// Fails the whole benchmark: a broken bus must not produce figures.
fn fatal(message: impl std::fmt::Display) -> ! {
    clear_progress();
    eprintln!("\nbench failed: {message}");
    std::process::exit(1)
}

// ---------------------------------------------------------------------------
// The harness

/// A counter owned by one thread (written with plain stores), on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

impl Slot {
    #[inline]
    fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a producer thread reports.
#[derive(Default)]
struct Produced {
    /// Deliveries its publishes routed (as the bus counted them) or its sends made.
    routed: u64,
    /// Publish-only: the time spent publishing, emptying the queues excluded.
    busy: Option<Duration>,
}

/// What a consumer thread reports.
struct Received {
    count: u64,
    hist: Histogram,
    last: Option<Instant>,
    unstamped: u64,
}

impl Received {
    fn new() -> Self {
        Received { count: 0, hist: Histogram::new(), last: None, unstamped: 0 }
    }

    /// Counts a delivery of `message` now and records its latency.
    #[inline]
    fn record(&mut self, message: &Message, epoch: Instant) {
        let now = Instant::now();
        let now_ns = now.duration_since(epoch).as_nanos() as u64;
        match message.header(STAMP).and_then(FieldValue::as_i64) {
            Some(UNSTAMPED) => {}
            Some(sent) => self.hist.record(now_ns.saturating_sub(sent as u64)),
            None => self.unstamped += 1,
        }
        self.count += 1;
        self.last = Some(now);
    }
}

type ProducerJob<'a> = Box<dyn FnOnce(&Slot) -> Produced + Send + 'a>;
type ConsumerJob<'a> = Box<dyn FnOnce(&Slot) -> Received + Send + 'a>;

/// The figures of one run.
struct Outcome {
    elapsed: Duration,
    /// The longest publish-only busy time of the producers.
    busy: Duration,
    received: u64,
    routed: u64,
    hist: Histogram,
    mem: Option<Mem>,
}

/// Runs every producer and consumer on its own thread, all released
/// together, while this thread draws the progress line, watches for a stall,
/// and calls `all_received` once the consumers have counted `expected`
/// deliveries (the bus's consumers block in `recv` until cancelled). With no
/// consumers, `expected` counts what the producers send.
fn run_threads(
    progress: &Progress,
    expected: u64,
    producers: Vec<ProducerJob<'_>>,
    consumers: Vec<ConsumerJob<'_>>,
    all_received: &dyn Fn(),
) -> Outcome {
    let (np, nc) = (producers.len(), consumers.len());
    let pslots: Vec<Slot> = (0..np).map(|_| Slot::default()).collect();
    let cslots: Vec<Slot> = (0..nc).map(|_| Slot::default()).collect();
    let finished = AtomicUsize::new(0);
    let barrier = Barrier::new(np + nc + 1);
    let probe = MemProbe::start();
    thread::scope(|s| {
        let (barrier, finished) = (&barrier, &finished);
        let producers: Vec<_> = producers
            .into_iter()
            .zip(&pslots)
            .map(|(job, slot)| {
                s.spawn(move || {
                    barrier.wait();
                    let produced = job(slot);
                    let end = Instant::now();
                    finished.fetch_add(1, Ordering::Release);
                    (produced, end)
                })
            })
            .collect();
        let consumers: Vec<_> = consumers
            .into_iter()
            .zip(&cslots)
            .map(|(job, slot)| {
                s.spawn(move || {
                    barrier.wait();
                    let received = job(slot);
                    finished.fetch_add(1, Ordering::Release);
                    received
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let watched = if nc > 0 { &cslots } else { &pslots };
        let (mut notified, mut last_done, mut last_change) = (false, u64::MAX, start);
        while finished.load(Ordering::Acquire) < np + nc {
            thread::sleep(TICK);
            let done: u64 = watched.iter().map(Slot::get).sum();
            if done != last_done {
                (last_done, last_change) = (done, Instant::now());
            } else if last_change.elapsed() > STALL {
                fatal(format_args!(
                    "no progress for {} s at {done} of {expected} messages: messages were lost",
                    STALL.as_secs()
                ));
            }
            if nc > 0 && !notified && done >= expected {
                notified = true;
                all_received();
            }
            progress.show(done, expected);
        }
        let mut out = Outcome {
            elapsed: Duration::ZERO,
            busy: Duration::ZERO,
            received: 0,
            routed: 0,
            hist: Histogram::new(),
            mem: probe.finish(),
        };
        let mut end = start;
        for handle in producers {
            let (produced, done) = handle.join().unwrap_or_else(|_| fatal("a producer thread panicked"));
            out.routed += produced.routed;
            out.busy = out.busy.max(produced.busy.unwrap_or_default());
            if nc == 0 {
                end = end.max(done);
            }
        }
        for handle in consumers {
            let received = handle.join().unwrap_or_else(|_| fatal("a consumer thread panicked"));
            if received.unstamped > 0 {
                fatal(format_args!("{} deliveries lost their {STAMP} header", received.unstamped));
            }
            out.received += received.count;
            out.hist.merge(&received.hist);
            end = end.max(received.last.unwrap_or(start));
        }
        out.elapsed = end.saturating_duration_since(start).max(Duration::from_nanos(1));
        out
    })
}

fn per_sec(count: u64, time: Duration) -> f64 {
    count as f64 / time.as_secs_f64().max(1e-9)
}

fn check(what: &str, got: u64, want: u64) {
    if got != want {
        fatal(format_args!("{what}: got {got}, expected {want}"));
    }
}

/// Checks that the bus's queues hold nothing after a run.
fn check_empty(broker: &Broker, queues: &[String]) {
    for q in queues {
        if let Ok(stats) = broker.queue_stats(q)
            && (stats.messages_ready > 0 || stats.messages_unacknowledged > 0)
        {
            fatal(format_args!(
                "queue {q} still holds {} ready and {} unacknowledged messages after the run",
                stats.messages_ready, stats.messages_unacknowledged
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Results

/// What a row's baseline is unless said otherwise.
const RAW_BASELINE: &str = "raw channel";

/// One line of the table: a case measured in paired reps.
struct Row {
    scenario: &'static str,
    case: String,
    unit: &'static str,
    messages: u64,
    producers: usize,
    consumers: usize,
    bindings: Option<usize>,
    /// What the `raw` figures measure: the raw channel, except in statistics.
    baseline: &'static str,
    /// What the `bus` figures measure.
    measured: &'static str,
    /// What the columns mean when not raw and bus, said under the table's heading.
    legend: Option<String>,
    raw: Vec<f64>,
    bus: Vec<f64>,
    raw_hist: Option<Histogram>,
    bus_hist: Option<Histogram>,
    raw_mem: Option<Mem>,
    bus_mem: Option<Mem>,
    /// Extra figures: (JSON key, JSON value).
    extra: Vec<(&'static str, Value)>,
    /// Extra figures for the notes under the table.
    notes: Vec<String>,
}

impl Row {
    fn new(scenario: Scenario, case: String, unit: &'static str, messages: u64) -> Row {
        Row {
            scenario: scenario.name(),
            case,
            unit,
            messages,
            producers: 1,
            consumers: 1,
            bindings: None,
            baseline: RAW_BASELINE,
            measured: "bus",
            legend: None,
            raw: Vec::new(),
            bus: Vec::new(),
            raw_hist: None,
            bus_hist: None,
            raw_mem: None,
            bus_mem: None,
            extra: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records one pair: `count` events per run.
    fn pair(&mut self, raw: &Outcome, bus: &Outcome, count: u64, latency: bool) {
        self.raw.push(per_sec(count, raw.elapsed));
        self.bus.push(per_sec(count, bus.elapsed));
        self.add_latency_and_mem(raw, bus, latency);
    }

    /// Records one publish-only pair: throughput over the producers' busy time.
    fn pair_busy(&mut self, raw: &Outcome, bus: &Outcome, count: u64) {
        self.raw.push(per_sec(count, raw.busy));
        self.bus.push(per_sec(count, bus.busy));
        self.add_latency_and_mem(raw, bus, false);
    }

    fn add_latency_and_mem(&mut self, raw: &Outcome, bus: &Outcome, latency: bool) {
        if latency {
            self.raw_hist.get_or_insert_with(Histogram::new).merge(&raw.hist);
            self.bus_hist.get_or_insert_with(Histogram::new).merge(&bus.hist);
        }
        self.raw_mem = max_mem(self.raw_mem, raw.mem);
        self.bus_mem = max_mem(self.bus_mem, bus.mem);
    }

    fn ratios(&self) -> Vec<f64> {
        self.bus.iter().zip(&self.raw).map(|(b, r)| b / r).collect()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ns(ns: Option<u64>) -> String {
    let Some(ns) = ns else { return "—".into() };
    let v = ns as f64;
    if v < 1e3 {
        format!("{ns} ns")
    } else if v < 1e6 {
        format!("{:.1} µs", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

fn fmt_mem(mem: Option<Mem>) -> String {
    match mem {
        Some(m) => {
            format!("{:.0} MiB{}", m.peak as f64 / (1 << 20) as f64, if m.process_wide { "*" } else { "" })
        }
        None => "n/a".into(),
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 { format!("{r:.1}") } else { format!("{r:.2}") }
}

fn print_table(rows: &[Row], config: &Config) {
    let profile =
        if cfg!(debug_assertions) { "debug build (use --release for real figures)" } else { "release" };
    println!(
        "interoffice bench: {} CPUs ({}), {profile}; {} paired reps, raw channel then bus",
        cpus(),
        cpu_model(),
        config.reps
    );
    println!("throughput: median of the reps; bus÷raw: median (min–max) of the paired ratios");
    println!("latency: the bus's publish → delivery under full load, queueing included (rpc: round trip)");
    for row in rows {
        if let Some(legend) = &row.legend {
            println!("{}: {legend}", row.case);
        }
    }
    println!();
    let label = |row: &Row| {
        if row.unit == "msg" { row.case.clone() } else { format!("{} ({})", row.case, row.unit) }
    };
    let w = rows.iter().map(|r| label(r).chars().count()).max().unwrap_or(0).max(8);
    let header = format!(
        "{:<w$} {:>10} {:>10} {:>20} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "raw /s", "bus /s", "bus÷raw (min–max)", "p50", "p99", "p999", "peak RSS"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for row in rows {
        let ratios = row.ratios();
        let (lo, hi) = min_max(&ratios);
        let ratio = format!("{} ({}–{})", fmt_ratio(median(&ratios)), fmt_ratio(lo), fmt_ratio(hi));
        let q = |p| row.bus_hist.as_ref().and_then(|h| h.quantile(p));
        println!(
            "{:<w$} {:>10} {:>10} {:>20} {:>9} {:>9} {:>9} {:>9}",
            label(row),
            fmt_rate(median(&row.raw)),
            fmt_rate(median(&row.bus)),
            ratio,
            fmt_ns(q(0.5)),
            fmt_ns(q(0.99)),
            fmt_ns(q(0.999)),
            fmt_mem(row.bus_mem),
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            let mut notes = row.notes.clone();
            let latency = row.raw_hist.as_ref().map(|h| {
                format!(
                    "latency p50 {}, p99 {}, p999 {}; ",
                    fmt_ns(h.quantile(0.5)),
                    fmt_ns(h.quantile(0.99)),
                    fmt_ns(h.quantile(0.999))
                )
            });
            let baseline = match row.baseline {
                RAW_BASELINE => format!("{RAW_BASELINE} "),
                other => format!("{other}: "),
            };
            notes.push(format!("{baseline}{}peak RSS {}", latency.unwrap_or_default(), fmt_mem(row.raw_mem)));
            notes.into_iter().map(move |n| format!("  {}: {n}", row.case))
        })
        .collect();
    if rows.iter().any(|r| r.bus_mem.is_some_and(|m| m.process_wide)) {
        println!("* the process's peak (its high-water mark could not be reset)");
    }
    if !notes.is_empty() {
        println!();
        println!("notes:");
        for n in notes {
            println!("{n}");
        }
    }
}

/// A JSON number, rounded to 3 decimals (`null` when not finite).
fn json_num(v: f64) -> Value {
    if v.is_finite() { json!((v * 1000.0).round() / 1000.0) } else { Value::Null }
}

fn json_str(s: &str) -> Value {
    json!(s)
}

fn json_list(values: &[f64]) -> Value {
    values.iter().map(|&v| json_num(v)).collect()
}

fn json_latency(h: Option<&Histogram>) -> Value {
    match h {
        Some(h) if h.total() > 0 => json!({
            "p50": h.quantile(0.5),
            "p99": h.quantile(0.99),
            "p999": h.quantile(0.999),
            "count": h.total(),
        }),
        _ => Value::Null,
    }
}

fn json_mem(mem: Option<Mem>) -> Value {
    match mem {
        Some(m) => {
            json!({"peak_rss_bytes": m.peak, "start_rss_bytes": m.base, "process_wide": m.process_wide})
        }
        None => Value::Null,
    }
}

/// One JSON object per scenario (a line each): the machine, and its result lines.
fn print_json(rows: &[Row], config: &Config) {
    for scenario in &config.scenarios {
        let results: Vec<Value> =
            rows.iter().filter(|r| r.scenario == scenario.name()).map(json_row).collect();
        let line = json!({
            "scenario": scenario.name(),
            "reps": config.reps,
            "cpus": cpus(),
            "cpu": cpu_model(),
            "release": !cfg!(debug_assertions),
            "results": results,
        });
        println!("{line}");
    }
}

/// One result line as a JSON object.
fn json_row(row: &Row) -> Value {
    let ratios = row.ratios();
    let (lo, hi) = min_max(&ratios);
    let mut o = json!({
        "case": row.case,
        "unit": row.unit,
        "messages": row.messages,
        "producers": row.producers,
        "consumers": row.consumers,
        "bindings": row.bindings,
        "baseline": row.baseline,
        "measured": row.measured,
        "raw_per_sec": json_num(median(&row.raw)),
        "bus_per_sec": json_num(median(&row.bus)),
        "raw_per_sec_reps": json_list(&row.raw),
        "bus_per_sec_reps": json_list(&row.bus),
        "ratio_median": json_num(median(&ratios)),
        "ratio_min": json_num(lo),
        "ratio_max": json_num(hi),
        "latency_ns": json_latency(row.bus_hist.as_ref()),
        "raw_latency_ns": json_latency(row.raw_hist.as_ref()),
        "memory": json_mem(row.bus_mem),
        "raw_memory": json_mem(row.raw_mem),
    });
    for (key, value) in &row.extra {
        o[*key] = value.clone();
    }
    o
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------------------------------------------------------------------------
// Scenarios

struct Bench {
    config: Config,
    vocab: Vec<String>,
    pool: Vec<Sample>,
    epoch: Instant,
    progress: Progress,
}

/// A broker and a connection for setting up a scenario's topology.
fn topology() -> (Broker, Connection) {
    let broker = Broker::new();
    let conn = broker.connect();
    (broker, conn)
}

/// One queue behind an exchange, on a broker of its own, with the
/// connections that publish to it and consume from it: the bus side of
/// direct, direct-manual and headers, both sides of statistics.
struct SingleQueue {
    broker: Broker,
    /// Whether `broker` keeps message statistics.
    statistics: bool,
    queue: String,
    exchange: &'static str,
    options: ConsumeOptions,
    /// headers: the bindings (others: `None`).
    bindings: Option<usize>,
    /// The pool messages that route to the queue.
    usable: Vec<usize>,
    publishers: Vec<Connection>,
    consumer_conn: Connection,
}

impl SingleQueue {
    fn message_stats(&self) -> Option<MessageStats> {
        let stats = self.broker.queue_stats(&self.queue);
        stats.unwrap_or_else(|e| fatal(format_args!("{e}"))).message_stats
    }
}

fn or_fail<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| fatal(format_args!("{what}: {e}")))
}

impl Bench {
    fn messages(&self, default: u64) -> u64 {
        self.config.messages.unwrap_or(default)
    }

    /// The raw side of a publish-only case: `threads` producers, each
    /// sending its share of `n` pool messages into a channel of its own in
    /// batches, emptied between batches outside the time.
    fn raw_publish_only(&self, threads: usize, n: u64) -> Outcome {
        let (epoch, pool) = (self.epoch, &self.pool);
        let indices: Vec<usize> = (0..pool.len()).collect();
        let indices = &indices;
        let producers: Vec<ProducerJob> = (0..threads)
            .map(|p| {
                let (part, count) = (part(indices, p, threads), share(n, p, threads));
                Box::new(move |slot: &Slot| {
                    let (tx, rx) = unbounded::<RawMessage>();
                    let (mut busy, mut sent) = (Duration::ZERO, 0u64);
                    let mut it = part.iter().cycle().take(count as usize);
                    while sent < count {
                        let start = Instant::now();
                        for &i in it.by_ref().take(BATCH) {
                            if tx.send(Arc::new(stamped(&pool[i], epoch))).is_err() {
                                fatal("raw channel closed");
                            }
                            sent += 1;
                        }
                        busy += start.elapsed();
                        rx.try_iter().for_each(drop);
                        slot.set(sent);
                    }
                    Produced { routed: sent, busy: Some(busy) }
                }) as ProducerJob
            })
            .collect();
        run_threads(&self.progress, n, producers, Vec::new(), &|| {})
    }

    /// Runs `raw` then `bus` for each rep (after one small warm-up pair), labelling the progress line.
    fn paired(
        &self,
        case: &str,
        n: u64,
        mut raw: impl FnMut(u64) -> Outcome,
        mut bus: impl FnMut(u64) -> Outcome,
        mut record: impl FnMut(&Outcome, &Outcome, u64),
    ) {
        let warm = (n / 10).max(1);
        self.progress.set(format!("{case}: warm-up raw"));
        raw(warm);
        self.progress.set(format!("{case}: warm-up bus"));
        bus(warm);
        for rep in 1..=self.config.reps {
            self.progress.set(format!("{case}: rep {rep}/{} raw", self.config.reps));
            let r = raw(n);
            self.progress.set(format!("{case}: rep {rep}/{} bus", self.config.reps));
            let b = bus(n);
            record(&r, &b, n);
        }
    }

    fn run(&self, scenario: Scenario) -> Vec<Row> {
        match scenario {
            Scenario::Direct => vec![self.single_queue(scenario)],
            Scenario::DirectManual => vec![self.single_queue(scenario)],
            Scenario::Headers => vec![self.single_queue(scenario)],
            Scenario::Fanout => vec![self.fanout()],
            Scenario::Topic => self.topic(),
            Scenario::TwoPublishers => self.two_publishers(),
            Scenario::Rpc => vec![self.rpc()],
            Scenario::Statistics => vec![self.statistics()],
            Scenario::Firehose => vec![self.firehose()],
            Scenario::Permissions => vec![self.permissions()],
            Scenario::FillDrain => self.fill_drain(),
        }
    }

    /// direct, direct-manual, headers: P publishers, C competing consumers of one queue.
    fn single_queue(&self, scenario: Scenario) -> Row {
        let (np, nc) = (self.config.producers.unwrap_or(1), self.config.consumers.unwrap_or(1));
        let n = self.messages(200_000);
        let (exchange, kind, options, case) = match scenario {
            Scenario::Direct => (
                "bench.direct",
                ExchangeKind::Direct,
                ConsumeOptions { auto_ack: true, ..Default::default() },
                { format!("direct {np}→{nc} auto-ack") },
            ),
            Scenario::DirectManual => (
                "bench.direct",
                ExchangeKind::Direct,
                ConsumeOptions { prefetch: 1000, ..Default::default() },
                format!("direct {np}→{nc} manual ack, prefetch 1000"),
            ),
            _ => {
                let b = self.config.bindings.unwrap_or(100);
                (
                    "bench.headers",
                    ExchangeKind::Headers,
                    ConsumeOptions { auto_ack: true, ..Default::default() },
                    format!("headers {b} bindings, {np}→{nc} auto-ack"),
                )
            }
        };
        let setup = self.single_queue_setup(BrokerOptions::default(), exchange, kind, options, np, &case);
        let (epoch, pool, usable) = (self.epoch, &self.pool, &setup.usable);

        let raw = |n: u64| {
            let (tx, rx) = bounded::<RawMessage>(RAW_CAPACITY);
            let producers: Vec<ProducerJob> = (0..np)
                .map(|p| {
                    let tx = tx.clone();
                    let (mine, count) = (part(usable, p, np), share(n, p, np));
                    Box::new(move |slot: &Slot| {
                        for (k, &i) in mine.iter().cycle().take(count as usize).enumerate() {
                            if tx.send(Arc::new(stamped(&pool[i], epoch))).is_err() {
                                fatal("raw channel closed");
                            }
                            if k % 1024 == 0 {
                                slot.set(k as u64);
                            }
                        }
                        Produced { routed: count, busy: None }
                    }) as ProducerJob
                })
                .collect();
            drop(tx);
            let consumers: Vec<ConsumerJob> = (0..nc)
                .map(|_| {
                    let rx = rx.clone();
                    Box::new(move |slot: &Slot| {
                        let mut r = Received::new();
                        while let Ok(m) = rx.recv() {
                            r.record(&m, epoch);
                            slot.set(r.count);
                        }
                        r
                    }) as ConsumerJob
                })
                .collect();
            drop(rx);
            let out = run_threads(&self.progress, n, producers, consumers, &|| {});
            check("raw messages received", out.received, n);
            out
        };
        let bus = |n: u64| self.single_queue_bus(&setup, nc, n);

        let mut row = Row::new(scenario, case.clone(), "msg", n);
        (row.producers, row.consumers, row.bindings) = (np, nc, setup.bindings);
        self.paired(&case, n, raw, bus, |r, b, n| row.pair(r, b, n, true));
        row
    }

    /// One queue behind `exchange` (every pool key bound to it; headers: B
    /// bindings on `region`), on a broker of its own with `broker_options`.
    fn single_queue_setup(
        &self,
        broker_options: BrokerOptions,
        exchange: &'static str,
        kind: ExchangeKind,
        options: ConsumeOptions,
        np: usize,
        case: &str,
    ) -> SingleQueue {
        let statistics = broker_options.statistics;
        let broker = Broker::with_options(broker_options);
        let conn = broker.connect();
        let queue = "bench.queue".to_owned();
        or_fail("declare queue", conn.declare_queue(&queue, QueueOptions::default()));
        or_fail("declare exchange", conn.declare_exchange(exchange, kind, ExchangeOptions::default()));
        let bindings = if kind == ExchangeKind::Headers {
            // Binding j matches region-j (x-match all); past the pool's regions they never match.
            let b = self.config.bindings.unwrap_or(100);
            for j in 0..b {
                let args = FieldTable::from([
                    ("x-match", FieldValue::from("all")),
                    (REGION, FieldValue::from(format!("region-{j}"))),
                ]);
                or_fail("bind", conn.bind_queue(&queue, exchange, "", args));
            }
            Some(b)
        } else {
            for s in &self.pool {
                or_fail("bind", conn.bind_queue(&queue, exchange, &s.key, FieldTable::new()));
            }
            None
        };
        // The messages that route (with fewer than 100 headers bindings, not all do).
        let usable: Vec<usize> = (0..self.pool.len())
            .filter(|&i| {
                let routed = or_fail(
                    "publish",
                    conn.publish(exchange, &self.pool[i].key, self.pool[i].message.clone()),
                );
                routed.queues() == 1
            })
            .collect();
        or_fail("purge", conn.purge_queue(&queue));
        if usable.is_empty() {
            fatal(format_args!("{case}: no pool message routes to the queue"));
        }
        let publishers: Vec<Connection> = (0..np).map(|_| broker.connect()).collect();
        let consumer_conn = broker.connect();
        SingleQueue {
            broker,
            statistics,
            queue,
            exchange,
            options,
            bindings,
            usable,
            publishers,
            consumer_conn,
        }
    }

    /// One bus run of `n` messages through `setup`'s queue to `nc` competing
    /// consumers, checked: every message routed and received, the queue
    /// empty after, and its `message_stats` (if kept) moved by exactly what
    /// the run did.
    fn single_queue_bus(&self, setup: &SingleQueue, nc: usize, n: u64) -> Outcome {
        let SingleQueue { queue, exchange, options, usable, publishers, consumer_conn, .. } = setup;
        let np = publishers.len();
        let (epoch, pool) = (self.epoch, &self.pool);
        let manual = !options.auto_ack;
        let before = setup.message_stats();
        let consumers: Vec<Consumer> =
            (0..nc).map(|_| or_fail("consume", consumer_conn.consume(queue, options.clone()))).collect();
        let producers: Vec<ProducerJob> = publishers
            .iter()
            .enumerate()
            .map(|(p, conn)| {
                let (mine, count) = (part(usable, p, np), share(n, p, np));
                Box::new(move |slot: &Slot| {
                    let mut routed = 0;
                    for (k, &i) in mine.iter().cycle().take(count as usize).enumerate() {
                        let s = &pool[i];
                        routed +=
                            or_fail("publish", conn.publish(exchange, &s.key, stamped(s, epoch))).queues();
                        if k % 1024 == 0 {
                            slot.set(k as u64);
                        }
                    }
                    Produced { routed: routed as u64, busy: None }
                }) as ProducerJob
            })
            .collect();
        let jobs: Vec<ConsumerJob> = consumers
            .iter()
            .map(|c| {
                Box::new(move |slot: &Slot| {
                    let mut r = Received::new();
                    while let Ok(d) = c.recv() {
                        r.record(d.message(), epoch);
                        if manual {
                            or_fail("ack", d.ack());
                        }
                        slot.set(r.count);
                    }
                    r
                }) as ConsumerJob
            })
            .collect();
        let out =
            run_threads(&self.progress, n, producers, jobs, &|| consumers.iter().for_each(Consumer::cancel));
        check("bus messages routed", out.routed, n);
        check("bus messages received", out.received, n);
        check_empty(&setup.broker, std::slice::from_ref(queue));
        // A broken counter must not look fast (nor one kept while switched off look free).
        match (setup.statistics, before, setup.message_stats()) {
            (false, None, None) => {}
            (true, Some(before), Some(after)) => {
                let acked = if manual { n } else { 0 };
                for (what, was, is, want) in [
                    ("message_stats.published", before.published, after.published, n),
                    ("message_stats.delivered", before.delivered, after.delivered, n),
                    ("message_stats.acknowledged", before.acknowledged, after.acknowledged, acked),
                    ("message_stats.fetched", before.fetched, after.fetched, 0),
                    ("message_stats.redelivered", before.redelivered, after.redelivered, 0),
                ] {
                    check(what, is.wrapping_sub(was), want);
                }
            }
            (on, before, after) => fatal(format_args!(
                "statistics {}, but message_stats went from {before:?} to {after:?}",
                if on { "on" } else { "off" }
            )),
        }
        out
    }

    /// statistics: direct-manual's bus without statistics beside the same
    /// bus with them, each on a broker of its own, in alternating order.
    fn statistics(&self) -> Row {
        let (np, nc) = (self.config.producers.unwrap_or(1), self.config.consumers.unwrap_or(1));
        let n = self.messages(200_000);
        let case = format!("statistics: direct {np}→{nc} manual ack, prefetch 1000");
        let setup = |statistics| {
            self.single_queue_setup(
                BrokerOptions { statistics, ..Default::default() },
                "bench.direct",
                ExchangeKind::Direct,
                ConsumeOptions { prefetch: 1000, ..Default::default() },
                np,
                &case,
            )
        };
        let (off, on) = (setup(false), setup(true));
        let mut row = Row::new(Scenario::Statistics, case.clone(), "msg", n);
        (row.producers, row.consumers) = (np, nc);
        (row.baseline, row.measured) = ("bus, statistics off", "bus, statistics on");
        row.legend = Some(
            "raw /s is the bus with statistics off, bus /s with them on, so bus÷raw is \
             on ÷ off (1.0 = free; target ≥ 0.95)"
                .into(),
        );
        let (off_first, on_first) = self.alternating_pairs(&mut row, &case, (&off, &on), nc, n);
        let by_order = |ratios: &[f64]| match ratios.len() {
            0 => "no pairs".to_owned(),
            k => format!("{} ({k} pair{})", fmt_ratio(median(ratios)), if k == 1 { "" } else { "s" }),
        };
        row.notes.push(format!(
            "on ÷ off by order: off then on {}, on then off {}",
            by_order(&off_first),
            by_order(&on_first)
        ));
        row.notes.push(
            "every run checks message_stats: exact counts (published, delivered, acknowledged) with \
             statistics on, None with them off"
                .into(),
        );
        row.extra.push(("order", json_str("alternating: odd reps off then on, even reps on then off")));
        row.extra.push(("ratio_median_off_first", json_num(median(&off_first))));
        row.extra.push(("ratio_median_on_first", json_num(median(&on_first))));
        row.extra.push(("ratio_reps_off_first", json_list(&off_first)));
        row.extra.push(("ratio_reps_on_first", json_list(&on_first)));
        row
    }

    /// Warms up, then runs the paired reps of one bus without (`off`) and
    /// with (`on`) a feature, `nc` consumers and `n` messages a run, and
    /// records them in `row`. Running second in a pair can help (warm
    /// caches and allocator) or hurt (the first run's leftovers): odd reps
    /// run off then on, even reps on then off, so the median does not lean
    /// on one order. Returns the on ÷ off ratios by order (off first, on
    /// first).
    fn alternating_pairs(
        &self,
        row: &mut Row,
        case: &str,
        (off, on): (&SingleQueue, &SingleQueue),
        nc: usize,
        n: u64,
    ) -> (Vec<f64>, Vec<f64>) {
        let run = |side: &SingleQueue, label: String, n: u64| {
            self.progress.set(label);
            self.single_queue_bus(side, nc, n)
        };
        let warm = (n / 10).max(1);
        run(off, format!("{case}: warm-up off"), warm);
        run(on, format!("{case}: warm-up on"), warm);
        let (mut off_first, mut on_first) = (Vec::new(), Vec::new());
        let reps = self.config.reps;
        for rep in 1..=reps {
            let label = |side: &str| format!("{case}: rep {rep}/{reps} {side}");
            let (f, o) = if rep % 2 == 1 {
                let f = run(off, label("off"), n);
                (f, run(on, label("on"), n))
            } else {
                let o = run(on, label("on"), n);
                (run(off, label("off"), n), o)
            };
            row.pair(&f, &o, n, true);
            let ratio = per_sec(n, o.elapsed) / per_sec(n, f.elapsed);
            if rep % 2 == 1 { off_first.push(ratio) } else { on_first.push(ratio) }
        }
        (off_first, on_first)
    }

    /// firehose: direct-manual's bus with no tap (the raw column) beside
    /// the same bus with a no-op tap attached (the bus column): what a
    /// tap or recorder costs while attached. Detached, the hooks are a
    /// relaxed load each, inside every other scenario's figures.
    fn firehose(&self) -> Row {
        let (np, nc) = (self.config.producers.unwrap_or(1), self.config.consumers.unwrap_or(1));
        let n = self.messages(200_000);
        let case = format!("firehose: direct {np}→{nc} manual ack, prefetch 1000");
        let setup = || {
            self.single_queue_setup(
                BrokerOptions::default(),
                "bench.direct",
                ExchangeKind::Direct,
                ConsumeOptions { prefetch: 1000, ..Default::default() },
                np,
                &case,
            )
        };
        let (off, on) = (setup(), setup());
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        let _tap = on.broker.tap(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut row = Row::new(Scenario::Firehose, case.clone(), "msg", n);
        (row.producers, row.consumers) = (np, nc);
        (row.baseline, row.measured) = ("bus, no tap", "bus, tap attached");
        row.legend = Some("raw /s is the bus with no tap, bus /s with a no-op tap attached".into());
        self.alternating_pairs(&mut row, &case, (&off, &on), nc, n);
        let events = seen.load(Ordering::Relaxed);
        row.notes.push(format!("the tap saw {events} events (publish, delivery, settle of each message)"));
        row.extra.push(("tap_events", json!(events)));
        row
    }

    /// permissions: a topic exchange 1→1 manual ack, published and
    /// consumed as the default user `guest` (the raw column) beside the
    /// same bus used by least-privilege users (the bus column): a
    /// publisher with write on the exchange only and a topic permission
    /// matched against every routing key, a consumer with read on the
    /// queue only. Both go through the connection's cached decision; the
    /// least-privilege side also matches the topic pattern per publish.
    fn permissions(&self) -> Row {
        let (np, nc) = (self.config.producers.unwrap_or(1), self.config.consumers.unwrap_or(1));
        let n = self.messages(200_000);
        let case = format!("permissions: topic {np}→{nc} manual ack, prefetch 1000");
        let setup = || {
            self.single_queue_setup(
                BrokerOptions::default(),
                "bench.topic",
                ExchangeKind::Topic,
                ConsumeOptions { prefetch: 1000, ..Default::default() },
                np,
                &case,
            )
        };
        let off = setup();
        let mut on = setup();
        let broker = on.broker.clone();
        or_fail("add user", broker.add_user("publisher", &Credentials::password("p"), &[]));
        or_fail("add user", broker.add_user("consumer", &Credentials::password("c"), &[]));
        or_fail(
            "set permissions",
            broker.set_permissions("publisher", "/", &Permissions::new("", "^bench\\.topic$", "")),
        );
        let topic =
            TopicPermissions { exchange: "bench.topic".into(), write: ".".into(), read: String::new() };
        or_fail("set topic permissions", broker.set_topic_permissions("publisher", "/", &topic));
        or_fail(
            "set permissions",
            broker.set_permissions("consumer", "/", &Permissions::new("", "", "^bench\\.queue$")),
        );
        let login = |user: &str, password: &str| {
            or_fail(
                "connect",
                broker.connect_with(ConnectOptions::new("/", user, Credentials::password(password))),
            )
        };
        on.publishers = (0..np).map(|_| login("publisher", "p")).collect();
        on.consumer_conn = login("consumer", "c");
        let mut row = Row::new(Scenario::Permissions, case.clone(), "msg", n);
        (row.producers, row.consumers) = (np, nc);
        (row.baseline, row.measured) = ("bus as guest", "bus as least-privilege users");
        row.legend = Some(
            "raw /s is the bus used as guest (full rights), bus /s the same bus used by a publisher \
             with write on the exchange and a topic permission, and a consumer with read on the queue"
                .into(),
        );
        self.alternating_pairs(&mut row, &case, (&off, &on), nc, n);
        row
    }

    /// fanout: P publishers, a fanout exchange to B queues, drained by C threads in turn.
    fn fanout(&self) -> Row {
        let (np, b) = (self.config.producers.unwrap_or(1), self.config.bindings.unwrap_or(10));
        let nd = self.config.consumers.unwrap_or(1).min(b);
        let n = self.messages(200_000);
        let (broker, conn) = topology();
        or_fail(
            "declare",
            conn.declare_exchange("bench.fanout", ExchangeKind::Fanout, ExchangeOptions::default()),
        );
        let queues: Vec<String> = (0..b).map(|j| format!("bench.fanout.{j}")).collect();
        for q in &queues {
            or_fail("declare queue", conn.declare_queue(q, QueueOptions::default()));
            or_fail("bind", conn.bind_queue(q, "bench.fanout", "", FieldTable::new()));
        }
        let consumer_conn = broker.connect();
        let options = ConsumeOptions { auto_ack: true, ..Default::default() };
        let consumers: Vec<Consumer> =
            queues.iter().map(|q| or_fail("consume", consumer_conn.consume(q, options.clone()))).collect();
        let publishers: Vec<Connection> = (0..np).map(|_| broker.connect()).collect();
        let (epoch, pool) = (self.epoch, &self.pool);
        let indices: Vec<usize> = (0..pool.len()).collect();
        let indices = &indices;
        // Drainer d takes queues d, d + nd, ...: each queue gets every message, so it
        // receives n from each of its queues in turn.
        let mine = |d: usize| (d..b).step_by(nd);

        let raw = |n: u64| {
            let (txs, rxs) = channels(b);
            let producers: Vec<ProducerJob> = (0..np)
                .map(|p| {
                    let txs = txs.clone();
                    let (part, count) = (part(indices, p, np), share(n, p, np));
                    Box::new(move |slot: &Slot| {
                        for (k, &i) in part.iter().cycle().take(count as usize).enumerate() {
                            let m = Arc::new(stamped(&pool[i], epoch));
                            for tx in &txs {
                                if tx.send(Arc::clone(&m)).is_err() {
                                    fatal("raw channel closed");
                                }
                            }
                            if k % 1024 == 0 {
                                slot.set(k as u64);
                            }
                        }
                        Produced { routed: count * b as u64, busy: None }
                    }) as ProducerJob
                })
                .collect();
            drop(txs);
            let consumers: Vec<ConsumerJob> = (0..nd)
                .map(|d| {
                    let rxs: Vec<Receiver<RawMessage>> = mine(d).map(|j| rxs[j].clone()).collect();
                    Box::new(move |slot: &Slot| {
                        let mut r = Received::new();
                        for _ in 0..n {
                            for rx in &rxs {
                                let m = rx.recv().unwrap_or_else(|_| fatal("raw channel closed early"));
                                r.record(&m, epoch);
                            }
                            slot.set(r.count);
                        }
                        r
                    }) as ConsumerJob
                })
                .collect();
            let out = run_threads(&self.progress, n * b as u64, producers, consumers, &|| {});
            check("raw deliveries", out.received, n * b as u64);
            out
        };

        let bus = |n: u64| {
            let producers: Vec<ProducerJob> = publishers
                .iter()
                .enumerate()
                .map(|(p, conn)| {
                    let (part, count) = (part(indices, p, np), share(n, p, np));
                    Box::new(move |slot: &Slot| {
                        let mut routed = 0;
                        for (k, &i) in part.iter().cycle().take(count as usize).enumerate() {
                            let s = &pool[i];
                            routed +=
                                or_fail("publish", conn.publish("bench.fanout", &s.key, stamped(s, epoch)))
                                    .queues();
                            if k % 1024 == 0 {
                                slot.set(k as u64);
                            }
                        }
                        Produced { routed: routed as u64, busy: None }
                    }) as ProducerJob
                })
                .collect();
            let jobs: Vec<ConsumerJob> = (0..nd)
                .map(|d| {
                    let mine: Vec<&Consumer> = mine(d).map(|j| &consumers[j]).collect();
                    Box::new(move |slot: &Slot| {
                        let mut r = Received::new();
                        for _ in 0..n {
                            for c in &mine {
                                let d = or_fail("recv", c.recv());
                                r.record(d.message(), epoch);
                            }
                            slot.set(r.count);
                        }
                        r
                    }) as ConsumerJob
                })
                .collect();
            let out = run_threads(&self.progress, n * b as u64, producers, jobs, &|| {});
            check("bus deliveries routed", out.routed, n * b as u64);
            check("bus deliveries received", out.received, n * b as u64);
            check_empty(&broker, &queues);
            out
        };

        let case = format!("fanout {np}→{b} queues, {nd} drainer{}", if nd == 1 { "" } else { "s" });
        let mut row = Row::new(Scenario::Fanout, case.clone(), "deliveries", n);
        (row.producers, row.consumers, row.bindings) = (np, nd, Some(b));
        self.paired(&case, n, raw, bus, |r, bu, n| row.pair(r, bu, n * b as u64, true));
        row.extra.push(("deliveries_per_run", json!(n * b as u64)));
        row
    }

    /// topic: B bindings over 100 queues; publish-only, then with every queue consumed.
    fn topic(&self) -> Vec<Row> {
        let np = self.config.producers.unwrap_or(1);
        let b = self.config.bindings.unwrap_or(10_000);
        let nq = TOPIC_QUEUES.min(b);
        let nd = self.config.consumers.unwrap_or(1).min(nq);
        let n = self.messages(200_000);
        let (broker, conn) = topology();
        or_fail(
            "declare",
            conn.declare_exchange("bench.topic", ExchangeKind::Topic, ExchangeOptions::default()),
        );
        let queues: Vec<String> = (0..nq).map(|j| format!("bench.topic.{j}")).collect();
        for q in &queues {
            or_fail("declare queue", conn.declare_queue(q, QueueOptions::default()));
        }
        self.progress.set(format!("topic: binding {b} patterns"));
        let patterns = topic_patterns(&self.vocab, b, nq);
        for (pattern, q) in &patterns {
            or_fail("bind", conn.bind_queue(&queues[*q], "bench.topic", pattern, FieldTable::new()));
        }
        // Where each pool key goes, by the naive matcher; the bus must agree.
        let naive = NaiveRouter::new(&patterns);
        let routes: Vec<Vec<usize>> = self.pool.iter().map(|s| naive.route(&s.key, nq)).collect();
        for (s, route) in self.pool.iter().zip(&routes) {
            let routed = or_fail("publish", conn.publish("bench.topic", &s.key, s.message.clone()));
            if routed.queues() != route.len() {
                fatal(format_args!(
                    "topic key {}: the bus routed to {} queues, the naive matcher to {}",
                    s.key,
                    routed.queues(),
                    route.len()
                ));
            }
        }
        for q in &queues {
            or_fail("purge", conn.purge_queue(q));
        }
        let fan = routes.iter().map(Vec::len).sum::<usize>() as f64 / routes.len() as f64;
        let keys: Vec<&str> = self.pool.iter().cycle().take(NAIVE_KEYS).map(|s| s.key.as_str()).collect();
        self.progress.set("topic: naive linear scan".into());
        let start = Instant::now();
        let matched: usize = keys.iter().map(|k| std::hint::black_box(naive.route(k, nq)).len()).sum();
        let naive_rate = per_sec(keys.len() as u64, start.elapsed());
        std::hint::black_box(matched);

        let publishers: Vec<Connection> = (0..np).map(|_| broker.connect()).collect();
        let (epoch, pool, routes) = (self.epoch, &self.pool, &routes);
        let indices: Vec<usize> = (0..pool.len()).collect();
        let indices = &indices;
        let routed_total = |n: u64| -> u64 {
            (0..np)
                .map(|p| {
                    let part = part(indices, p, np);
                    part.iter()
                        .cycle()
                        .take(share(n, p, np) as usize)
                        .map(|&i| routes[i].len() as u64)
                        .sum::<u64>()
                })
                .sum()
        };

        // Publish-only: the raw side sends each message once into its own channel.
        let raw_publish = |n: u64| self.raw_publish_only(np, n);
        let bus_publish = |n: u64| {
            let producers: Vec<ProducerJob> = publishers
                .iter()
                .enumerate()
                .map(|(p, conn)| {
                    let (part, count) = (part(indices, p, np), share(n, p, np));
                    let queues = &queues;
                    Box::new(move |slot: &Slot| {
                        let mut busy = Duration::ZERO;
                        let (mut sent, mut routed) = (0u64, 0u64);
                        let mut it = part.iter().cycle().take(count as usize);
                        while sent < count {
                            let start = Instant::now();
                            for &i in it.by_ref().take(BATCH) {
                                let s = &pool[i];
                                routed += or_fail(
                                    "publish",
                                    conn.publish("bench.topic", &s.key, stamped(s, epoch)),
                                )
                                .queues() as u64;
                                sent += 1;
                            }
                            busy += start.elapsed();
                            for q in queues {
                                or_fail("purge", conn.purge_queue(q));
                            }
                            slot.set(sent);
                        }
                        Produced { routed, busy: Some(busy) }
                    }) as ProducerJob
                })
                .collect();
            let out = run_threads(&self.progress, n, producers, Vec::new(), &|| {});
            check("bus deliveries routed", out.routed, routed_total(n));
            out
        };
        let case =
            format!("topic {b} bindings, {np} publisher{}, no consumer", if np == 1 { "" } else { "s" });
        let mut publish_row = Row::new(Scenario::Topic, case.clone(), "publishes", n);
        (publish_row.producers, publish_row.consumers, publish_row.bindings) = (np, 0, Some(b));
        self.paired(&case, n, raw_publish, bus_publish, |r, bu, n| publish_row.pair_busy(r, bu, n));
        let speedup = median(&publish_row.bus) / naive_rate;
        publish_row.notes.push(format!(
            "a key reaches {fan:.1} of {nq} queues on average; the raw side sends each message once"
        ));
        publish_row.notes.push(format!(
            "a naive linear scan of the {b} patterns routes {} keys/s: the bus publishes {speedup:.0}× faster",
            fmt_rate(naive_rate)
        ));
        publish_row.extra.push(("queues_per_key", json_num(fan)));
        publish_row.extra.push(("naive_scan_keys_per_sec", json_num(naive_rate)));
        publish_row.extra.push(("speedup_over_naive_scan", json_num(speedup)));

        // With consumers: every queue consumed, drained by nd threads polling their queues.
        let consumer_conn = broker.connect();
        let options = ConsumeOptions { auto_ack: true, ..Default::default() };
        let consumers: Vec<Consumer> =
            queues.iter().map(|q| or_fail("consume", consumer_conn.consume(q, options.clone()))).collect();
        let expected_per_queue = |n: u64| -> Vec<u64> {
            let mut per_queue = vec![0u64; nq];
            for p in 0..np {
                for &i in part(indices, p, np).iter().cycle().take(share(n, p, np) as usize) {
                    for &q in &routes[i] {
                        per_queue[q] += 1;
                    }
                }
            }
            per_queue
        };
        let mine = |d: usize| (d..nq).step_by(nd);
        let raw_consume = |n: u64| {
            let expected = expected_per_queue(n);
            let total: u64 = expected.iter().sum();
            let (txs, rxs) = channels(nq);
            let producers: Vec<ProducerJob> = (0..np)
                .map(|p| {
                    let txs = txs.clone();
                    let (part, count) = (part(indices, p, np), share(n, p, np));
                    Box::new(move |slot: &Slot| {
                        let mut routed = 0;
                        for (k, &i) in part.iter().cycle().take(count as usize).enumerate() {
                            let m = Arc::new(stamped(&pool[i], epoch));
                            for &q in &routes[i] {
                                if txs[q].send(Arc::clone(&m)).is_err() {
                                    fatal("raw channel closed");
                                }
                            }
                            routed += routes[i].len() as u64;
                            if k % 1024 == 0 {
                                slot.set(k as u64);
                            }
                        }
                        Produced { routed, busy: None }
                    }) as ProducerJob
                })
                .collect();
            drop(txs);
            let jobs: Vec<ConsumerJob> = (0..nd)
                .map(|d| {
                    let mine: Vec<(Receiver<RawMessage>, u64)> =
                        mine(d).map(|q| (rxs[q].clone(), expected[q])).collect();
                    Box::new(move |slot: &Slot| {
                        poll_drain(slot, epoch, &mine, |rx| match rx.try_recv() {
                            Ok(m) => Some(m),
                            Err(ChannelEmpty::Empty) => None,
                            Err(ChannelEmpty::Disconnected) => fatal("raw channel closed early"),
                        })
                    }) as ConsumerJob
                })
                .collect();
            let out = run_threads(&self.progress, total, producers, jobs, &|| {});
            check("raw deliveries", out.received, total);
            out
        };
        let bus_consume = |n: u64| {
            let expected = expected_per_queue(n);
            let total: u64 = expected.iter().sum();
            let producers: Vec<ProducerJob> = publishers
                .iter()
                .enumerate()
                .map(|(p, conn)| {
                    let (part, count) = (part(indices, p, np), share(n, p, np));
                    Box::new(move |slot: &Slot| {
                        let mut routed = 0;
                        for (k, &i) in part.iter().cycle().take(count as usize).enumerate() {
                            let s = &pool[i];
                            routed +=
                                or_fail("publish", conn.publish("bench.topic", &s.key, stamped(s, epoch)))
                                    .queues() as u64;
                            if k % 1024 == 0 {
                                slot.set(k as u64);
                            }
                        }
                        Produced { routed, busy: None }
                    }) as ProducerJob
                })
                .collect();
            let jobs: Vec<ConsumerJob> = (0..nd)
                .map(|d| {
                    let mine: Vec<(&Consumer, u64)> = mine(d).map(|q| (&consumers[q], expected[q])).collect();
                    Box::new(move |slot: &Slot| {
                        poll_drain(slot, epoch, &mine, |c| match c.try_recv() {
                            Ok(d) => Some(DeliveryRef(d)),
                            Err(TryRecvError::Empty) => None,
                            Err(e) => fatal(format_args!("try_recv: {e}")),
                        })
                    }) as ConsumerJob
                })
                .collect();
            let out = run_threads(&self.progress, total, producers, jobs, &|| {});
            check("bus deliveries routed", out.routed, total);
            check("bus deliveries received", out.received, total);
            check_empty(&broker, &queues);
            out
        };
        let case =
            format!("topic {b} bindings, {np}→{nq} queues, {nd} drainer{}", if nd == 1 { "" } else { "s" });
        let mut consume_row = Row::new(Scenario::Topic, case.clone(), "deliveries", n);
        (consume_row.producers, consume_row.consumers, consume_row.bindings) = (np, nd, Some(b));
        let deliveries = routed_total(n);
        self.paired(&case, n, raw_consume, bus_consume, |r, bu, _| {
            consume_row.pair(r, bu, r.received.max(bu.received), true)
        });
        consume_row.notes.push(format!(
            "{deliveries} deliveries per run ({fan:.1} per message); the raw side sends each to the same queues"
        ));
        consume_row.extra.push(("deliveries_per_run", json!(deliveries)));
        vec![publish_row, consume_row]
    }

    /// two-publishers: publish-only, 1 publisher to 1 queue beside P publishers each to its own.
    fn two_publishers(&self) -> Vec<Row> {
        let np = self.config.producers.unwrap_or(2).max(2);
        let n = self.messages(200_000);
        let (broker, conn) = topology();
        or_fail(
            "declare",
            conn.declare_exchange("bench.two", ExchangeKind::Direct, ExchangeOptions::default()),
        );
        let queues: Vec<String> = (0..np).map(|p| format!("bench.two.{p}")).collect();
        let keys: Vec<String> = (0..np).map(|p| format!("publisher-{p}")).collect();
        for (q, k) in queues.iter().zip(&keys) {
            or_fail("declare queue", conn.declare_queue(q, QueueOptions::default()));
            or_fail("bind", conn.bind_queue(q, "bench.two", k, FieldTable::new()));
        }
        let publishers: Vec<Connection> = (0..np).map(|_| broker.connect()).collect();
        let (epoch, pool) = (self.epoch, &self.pool);
        let indices: Vec<usize> = (0..pool.len()).collect();
        let (indices, queues, keys, publishers) = (&indices, &queues, &keys, &publishers);

        let raw = |threads: usize, n: u64| self.raw_publish_only(threads, n);
        let bus = |threads: usize, n: u64| {
            let producers: Vec<ProducerJob> = (0..threads)
                .map(|p| {
                    let (part, count) = (part(indices, p, threads), share(n, p, threads));
                    let (conn, key, queue) = (&publishers[p], keys[p].as_str(), queues[p].as_str());
                    Box::new(move |slot: &Slot| {
                        let (mut busy, mut sent, mut routed) = (Duration::ZERO, 0u64, 0u64);
                        let mut it = part.iter().cycle().take(count as usize);
                        while sent < count {
                            let start = Instant::now();
                            for &i in it.by_ref().take(BATCH) {
                                routed += or_fail(
                                    "publish",
                                    conn.publish("bench.two", key, stamped(&pool[i], epoch)),
                                )
                                .queues() as u64;
                                sent += 1;
                            }
                            busy += start.elapsed();
                            or_fail("purge", conn.purge_queue(queue));
                            slot.set(sent);
                        }
                        Produced { routed, busy: Some(busy) }
                    }) as ProducerJob
                })
                .collect();
            let out = run_threads(&self.progress, n, producers, Vec::new(), &|| {});
            check("bus messages routed", out.routed, n);
            out
        };

        let one_case = "two-publishers: 1 publisher → 1 queue".to_owned();
        let many_case = format!("two-publishers: {np} publishers → {np} queues");
        let mut one = Row::new(Scenario::TwoPublishers, one_case.clone(), "publishes", n);
        (one.producers, one.consumers) = (1, 0);
        let mut many = Row::new(Scenario::TwoPublishers, many_case.clone(), "publishes", n);
        (many.producers, many.consumers) = (np, 0);
        // Four runs per rep, each case paired raw then bus.
        let warm = (n / 10).max(1);
        self.progress.set("two-publishers: warm-up".into());
        for threads in [1, np] {
            raw(threads, warm);
            bus(threads, warm);
        }
        for rep in 1..=self.config.reps {
            let reps = self.config.reps;
            self.progress.set(format!("two-publishers: rep {rep}/{reps} raw, 1 publisher"));
            let r1 = raw(1, n);
            self.progress.set(format!("two-publishers: rep {rep}/{reps} bus, 1 publisher"));
            let b1 = bus(1, n);
            self.progress.set(format!("two-publishers: rep {rep}/{reps} raw, {np} publishers"));
            let rn = raw(np, n);
            self.progress.set(format!("two-publishers: rep {rep}/{reps} bus, {np} publishers"));
            let bn = bus(np, n);
            one.pair_busy(&r1, &b1, n);
            many.pair_busy(&rn, &bn, n);
        }
        let scaling = |a: &[f64], b: &[f64]| -> Vec<f64> { b.iter().zip(a).map(|(b, a)| b / a).collect() };
        let bus_scaling = scaling(&one.bus, &many.bus);
        let raw_scaling = scaling(&one.raw, &many.raw);
        let (blo, bhi) = min_max(&bus_scaling);
        let (rlo, rhi) = min_max(&raw_scaling);
        many.notes.push(format!(
            "scaling {np} publishers ÷ 1: bus {}× ({}–{}), raw channel {}× ({}–{}); {np}× = no serialisation",
            fmt_ratio(median(&bus_scaling)),
            fmt_ratio(blo),
            fmt_ratio(bhi),
            fmt_ratio(median(&raw_scaling)),
            fmt_ratio(rlo),
            fmt_ratio(rhi),
        ));
        many.extra.push(("bus_scaling_median", json_num(median(&bus_scaling))));
        many.extra.push(("bus_scaling_min", json_num(blo)));
        many.extra.push(("bus_scaling_max", json_num(bhi)));
        many.extra.push(("raw_scaling_median", json_num(median(&raw_scaling))));
        many.extra.push(("bus_scaling_reps", json_list(&bus_scaling)));
        vec![one, many]
    }

    /// rpc: sequential round trips from one caller thread to one server thread.
    fn rpc(&self) -> Row {
        let n = self.messages(20_000);
        let (broker, conn) = topology();
        or_fail("declare queue", conn.declare_queue("bench.rpc", QueueOptions::default()));
        let server = broker.connect();
        let worker = or_fail(
            "serve",
            server.serve("bench.rpc", WorkerOptions::default(), |request: &Delivery| {
                Ok::<_, Infallible>(reply_to(request.message()))
            }),
        );
        let client = broker.connect();
        let (epoch, pool) = (self.epoch, &self.pool);

        let raw = |n: u64| {
            let (req_tx, req_rx) = unbounded::<RawMessage>();
            let (rep_tx, rep_rx) = unbounded::<RawMessage>();
            let server: ProducerJob = Box::new(move |_slot: &Slot| {
                let mut served = 0;
                while let Ok(request) = req_rx.recv() {
                    let reply = Arc::new(reply_to(&request));
                    drop(request);
                    if rep_tx.send(reply).is_err() {
                        fatal("raw reply channel closed");
                    }
                    served += 1;
                }
                Produced { routed: served, busy: None }
            });
            let caller: ConsumerJob = Box::new(move |slot: &Slot| {
                let mut r = Received::new();
                for s in pool.iter().cycle().take(n as usize) {
                    let start = Instant::now();
                    if req_tx.send(Arc::new(stamped(s, epoch))).is_err() {
                        fatal("raw request channel closed");
                    }
                    let reply = rep_rx.recv().unwrap_or_else(|_| fatal("raw reply channel closed"));
                    let end = Instant::now();
                    if reply.body() != s.message.body() {
                        fatal("raw rpc: wrong reply");
                    }
                    r.hist.record((end - start).as_nanos() as u64);
                    (r.count, r.last) = (r.count + 1, Some(end));
                    slot.set(r.count);
                }
                r
            });
            let out = run_threads(&self.progress, n, vec![server], vec![caller], &|| {});
            check("raw round trips", out.received, n);
            out
        };
        let bus = |n: u64| {
            let client = &client;
            let caller: ConsumerJob = Box::new(move |slot: &Slot| {
                let mut r = Received::new();
                for s in pool.iter().cycle().take(n as usize) {
                    let start = Instant::now();
                    let reply =
                        or_fail("call", client.call("", "bench.rpc", stamped(s, epoch), CALL_TIMEOUT));
                    let end = Instant::now();
                    if reply.body() != s.message.body() {
                        fatal("rpc: wrong reply");
                    }
                    r.hist.record((end - start).as_nanos() as u64);
                    (r.count, r.last) = (r.count + 1, Some(end));
                    slot.set(r.count);
                }
                r
            });
            let out = run_threads(&self.progress, n, Vec::new(), vec![caller], &|| {});
            check("bus round trips", out.received, n);
            out
        };
        let case = "rpc call → serve, 1 caller".to_owned();
        let mut row = Row::new(Scenario::Rpc, case.clone(), "round trips", n);
        self.paired(&case, n, raw, bus, |r, b, n| row.pair(r, b, n, true));
        let report = worker.shutdown();
        if report.failed + report.panicked + report.replies_undeliverable > 0 {
            fatal(format_args!("rpc server: {report:?}"));
        }
        row
    }

    /// fill-drain: each side in a fresh child process (a clean heap for the memory figures).
    fn fill_drain(&self) -> Vec<Row> {
        let n = self.messages(1_000_000);
        let payload = BODY_LEN as f64
            + self.pool.iter().map(|s| header_bytes(&s.message)).sum::<usize>() as f64
                / self.pool.len() as f64;
        let mut fill = Row::new(Scenario::FillDrain, format!("fill-drain: fill 1 queue with {n}"), "msg", n);
        let mut drain = Row::new(Scenario::FillDrain, format!("fill-drain: drain {n}"), "msg", n);
        (fill.consumers, drain.producers) = (0, 0);
        let (mut raw_bytes, mut bus_bytes) = (Vec::new(), Vec::new());
        let mut in_process = false;
        let mut measure = |side: Side, label: String| -> FillDrain {
            self.progress.set(label);
            match fill_drain_child(side, n) {
                Ok(figures) => figures,
                Err(e) => {
                    if !in_process {
                        clear_progress();
                        eprintln!("fill-drain: no child process ({e}); measuring in this process");
                        in_process = true;
                    }
                    fill_drain_once(side, n, &self.pool)
                }
            }
        };
        for rep in 1..=self.config.reps {
            let reps = self.config.reps;
            let r = measure(Side::Raw, format!("fill-drain {n}: rep {rep}/{reps} raw (child process)"));
            let b = measure(Side::Bus, format!("fill-drain {n}: rep {rep}/{reps} bus (child process)"));
            fill.raw.push(per_sec(n, r.fill));
            fill.bus.push(per_sec(n, b.fill));
            drain.raw.push(per_sec(n, r.drain));
            drain.bus.push(per_sec(n, b.drain));
            for (row, side) in [(&mut fill, &r), (&mut drain, &r)] {
                row.raw_mem = max_mem(row.raw_mem, side.mem);
            }
            for (row, side) in [(&mut fill, &b), (&mut drain, &b)] {
                row.bus_mem = max_mem(row.bus_mem, side.mem);
            }
            if let Some(x) = r.bytes_per_message(n) {
                raw_bytes.push(x);
            }
            if let Some(x) = b.bytes_per_message(n) {
                bus_bytes.push(x);
            }
        }
        if bus_bytes.is_empty() || raw_bytes.is_empty() {
            fill.notes.push("memory per queued message: n/a (no /proc/self/status)".into());
        } else {
            let (bus, raw) = (median(&bus_bytes), median(&raw_bytes));
            fill.notes.push(format!(
                "memory per queued message (RSS growth ÷ {n}, median): bus {bus:.0} B, {:.0} B beyond its \
                 body and headers ({payload:.0} B); raw channel {raw:.0} B, {:.0} B beyond; bus − raw {:.0} B",
                bus - payload,
                raw - payload,
                bus - raw
            ));
            fill.extra.push(("bus_bytes_per_message", json_num(bus)));
            fill.extra.push(("bus_overhead_bytes_per_message", json_num(bus - payload)));
            fill.extra.push(("raw_bytes_per_message", json_num(raw)));
            fill.extra.push(("raw_overhead_bytes_per_message", json_num(raw - payload)));
            fill.extra.push(("payload_bytes_per_message", json_num(payload)));
            fill.extra.push(("bus_minus_raw_bytes_per_message", json_num(bus - raw)));
        }
        if in_process {
            fill.notes.push("measured in this process: memory figures include reused heap".into());
        }
        vec![fill, drain]
    }
}

/// What the raw channel carries: one `Arc` per message, as the bus's envelope.
type RawMessage = Arc<Message>;

/// `n` raw channels of `RAW_CAPACITY`.
fn channels(n: usize) -> (Vec<Sender<RawMessage>>, Vec<Receiver<RawMessage>>) {
    (0..n).map(|_| bounded(RAW_CAPACITY)).unzip()
}

/// The rpc server's work, the same on both sides: the request's body back.
fn reply_to(request: &Message) -> Message {
    Message::new(request.body().clone())
}

/// Drains `queues` (each with the count it will receive) by polling them in turn.
fn poll_drain<Q, M: AsRef<Message>>(
    slot: &Slot,
    epoch: Instant,
    queues: &[(Q, u64)],
    try_recv: impl Fn(&Q) -> Option<M>,
) -> Received {
    let mut r = Received::new();
    let mut left: Vec<u64> = queues.iter().map(|(_, n)| *n).collect();
    let mut remaining: u64 = left.iter().sum();
    let mut idle = 0u32;
    while remaining > 0 {
        let mut got = 0;
        for ((queue, _), left) in queues.iter().zip(left.iter_mut()) {
            // At most a batch per visit, so that one busy queue does not starve the others.
            while *left > 0 && got < 256 {
                let Some(m) = try_recv(queue) else { break };
                r.record(m.as_ref(), epoch);
                *left -= 1;
                got += 1;
            }
        }
        remaining -= got;
        slot.set(r.count);
        if got > 0 {
            idle = 0;
        } else {
            idle += 1;
            if idle < 100 {
                thread::yield_now();
            } else {
                thread::sleep(Duration::from_micros(50));
            }
        }
    }
    r
}

impl AsRef<Message> for DeliveryRef {
    fn as_ref(&self) -> &Message {
        self.0.message()
    }
}

/// A delivery seen as its message (for `poll_drain`).
struct DeliveryRef(Delivery);

/// The figures of one fill-drain side.
#[derive(Debug)]
struct FillDrain {
    fill: Duration,
    drain: Duration,
    rss_before: Option<u64>,
    rss_filled: Option<u64>,
    mem: Option<Mem>,
}

impl FillDrain {
    fn bytes_per_message(&self, n: u64) -> Option<f64> {
        Some(self.rss_filled?.saturating_sub(self.rss_before?) as f64 / n as f64)
    }
}

/// Runs one side of fill-drain in a child process and reads its figures.
fn fill_drain_child(side: Side, n: u64) -> Result<FillDrain, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args([CHILD_FLAG, side.name(), "--messages", &n.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        fatal(format_args!("the fill-drain child process ({}) failed: {}", side.name(), output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| format!("unexpected child output '{text}'"))
    };
    let opt = |i: usize| -> Result<Option<u64>, String> { Ok(Some(num(i)?).filter(|&v| v != u64::MAX)) };
    let (fill, drain) = (Duration::from_nanos(num(0)?), Duration::from_nanos(num(1)?));
    let (rss_before, rss_filled, peak) = (opt(2)?, opt(3)?, opt(4)?);
    let mem = peak.map(|peak| Mem { peak, base: rss_before.unwrap_or(0), process_wide: false });
    Ok(FillDrain { fill, drain, rss_before, rss_filled, mem })
}

/// The child's side: measures and prints `fill_ns drain_ns rss_before rss_filled peak`.
fn fill_drain_child_main(side: Side, n: u64) -> ExitCode {
    let pool = build_pool(&vocabulary());
    let f = fill_drain_once(side, n, &pool);
    let or_max = |v: Option<u64>| v.unwrap_or(u64::MAX);
    println!(
        "{} {} {} {} {}",
        f.fill.as_nanos(),
        f.drain.as_nanos(),
        or_max(f.rss_before),
        or_max(f.rss_filled),
        or_max(f.mem.map(|m| m.peak))
    );
    ExitCode::SUCCESS
}

/// Fills one queue (or channel) with `n` messages, each with a body of its
/// own, from this thread, then drains it from this thread.
fn fill_drain_once(side: Side, n: u64, pool: &[Sample]) -> FillDrain {
    let epoch = Instant::now();
    // Each queued message owns its body, so the memory figure includes it.
    let own = |s: &Sample| {
        let (properties, body) = stamped(s, epoch).into_parts();
        Message::with_properties(Bytes::copy_from_slice(&body), properties)
    };
    let probe = MemProbe::start();
    let messages = pool.iter().cycle().take(n as usize);
    match side {
        Side::Raw => {
            let (tx, rx) = unbounded::<RawMessage>();
            let start = Instant::now();
            for s in messages {
                if tx.send(Arc::new(own(s))).is_err() {
                    fatal("raw channel closed");
                }
            }
            let fill = start.elapsed();
            let rss_filled = status_bytes("VmRSS");
            let start = Instant::now();
            let mut r = Received::new();
            for _ in 0..n {
                let m = rx.try_recv().unwrap_or_else(|_| fatal("raw channel lost a message"));
                r.record(&m, epoch);
            }
            let drain = start.elapsed();
            check("raw messages drained", r.count, n);
            FillDrain { fill, drain, rss_before: probe.base, rss_filled, mem: probe.finish() }
        }
        Side::Bus => {
            let (broker, conn) = topology();
            or_fail("declare queue", conn.declare_queue("bench.fill", QueueOptions::default()));
            let start = Instant::now();
            for s in messages {
                let routed = or_fail("publish", conn.publish("", "bench.fill", own(s)));
                if routed.queues() != 1 {
                    fatal("fill: a message was not queued");
                }
            }
            let fill = start.elapsed();
            let rss_filled = status_bytes("VmRSS");
            let ready = broker.queue_stats("bench.fill").map_or(0, |s| s.messages_ready as u64);
            check("messages queued", ready, n);
            let start = Instant::now();
            let consumer = or_fail(
                "consume",
                conn.consume("bench.fill", ConsumeOptions { auto_ack: true, ..Default::default() }),
            );
            let mut r = Received::new();
            for _ in 0..n {
                let d = consumer.recv_timeout(STALL).unwrap_or_else(|e| fatal(format_args!("drain: {e}")));
                r.record(d.message(), epoch);
            }
            let drain = start.elapsed();
            check("bus messages drained", r.count, n);
            check_empty(&broker, &["bench.fill".to_owned()]);
            FillDrain { fill, drain, rss_before: probe.base, rss_filled, mem: probe.finish() }
        }
    }
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "peers") {
        peers::main(&args[1..]);
        return ExitCode::SUCCESS;
    }
    let config = match parse_args(args) {
        Ok(Cli::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Cli::FillDrainChild { side, messages }) => return fill_drain_child_main(side, messages),
        Ok(Cli::Run(config)) => config,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "usage: cargo run --release --example bench -- [SCENARIO...] [OPTIONS]  (--help for more)"
            );
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; run with --release for figures worth reading");
    }
    let vocab = vocabulary();
    let pool = build_pool(&vocab);
    let bench =
        Bench { config: config.clone(), vocab, pool, epoch: Instant::now(), progress: Progress::new() };
    let started = Instant::now();
    let mut rows = Vec::new();
    for &scenario in &config.scenarios {
        rows.extend(bench.run(scenario));
    }
    clear_progress();
    if config.json {
        print_json(&rows, &config);
    } else {
        print_table(&rows, &config);
        println!();
        let count = config.scenarios.len();
        let plural = if count == 1 { "" } else { "s" };
        println!("({count} scenario{plural} in {:.1} s)", started.elapsed().as_secs_f64());
    }
    ExitCode::SUCCESS
}
