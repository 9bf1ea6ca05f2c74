//! The crash test: a child process publishes with confirms and consumes
//! with manual acks on several durable queues, and is killed with SIGKILL
//! at random moments; after every run a checker accounts for every
//! confirmed message (GUARANTEES G37).
//!
//! The child is this test binary itself, run with `--ignored --exact
//! crash_child` and the data directory in `INTEROFFICE_CRASH_CHILD`. It
//! writes what it attempts, what was confirmed and what it received to
//! per-thread log files (a write is in the OS's cache before the next
//! step, so a SIGKILL keeps it). The checker reads them all:
//! - **0 lost**: every confirmed message was received (the last run drains
//!   the queues without being killed);
//! - **0 unexpected**: everything received was attempted;
//! - **duplicates only flagged redelivered**: a message received again was
//!   flagged redelivered;
//! - **order kept per queue apart from redeliveries**: first receipts come
//!   in publish order.
//!
//! Runs: 50 by default; `INTEROFFICE_CRASH_RUNS=1000 cargo test --release
//! --test crash_recovery` for the long form. `INTEROFFICE_CRASH_SEED`
//! replays one sequence of kill times.

#[path = "support/data_dir.rs"]
mod data_dir;
#[path = "support/rng.rs"]
mod rng;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use interoffice::{Broker, BrokerOptions, ConsumeOptions, DeliveryMode, Message, QueueOptions};

const QUEUES: usize = 3;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn confirmed_messages_survive_sigkill_at_random_moments() {
    let runs = env_number("INTEROFFICE_CRASH_RUNS", 50);
    let seed = env_number("INTEROFFICE_CRASH_SEED", 0x1f0f_f1ce);
    let dir = data_dir::DataDir::new("crash");
    let data = dir.path().join("store");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut rng = rng::Rng::for_case(seed);
    let exe = std::env::current_exe().unwrap();
    for run in 0..runs {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("INTEROFFICE_CRASH_CHILD", &data)
            .env("INTEROFFICE_CRASH_LOGS", &logs)
            .env("INTEROFFICE_CRASH_RUN", run.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Some runs die while opening, most in the middle of the traffic.
        let wait = if rng.chance(10) { rng.below(20) } else { 30 + rng.below(250) };
        std::thread::sleep(Duration::from_millis(wait as u64));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the kill (it never does on its own): a
            // child that cannot run at all fails here rather than pass.
            panic!("run {run}: the child exited by itself");
        }
        if let Some(code) = status.code() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("run {run}: the child failed (exit {code}) before the kill:\n{err}");
        }
    }
    // A last run, not killed: drains every queue.
    let drained = drain(&data, &logs, runs);
    check(&logs, runs, drained);
}

/// Opens the store in this process and receives everything left, logging
/// it as run `run` would.
fn drain(data: &Path, logs: &Path, run: u64) -> usize {
    let broker = Broker::open(data, BrokerOptions::default()).expect("open after the last kill");
    let conn = broker.connect();
    let mut count = 0;
    for q in 0..QUEUES {
        let mut log = received_log(logs, run, q);
        let queue = format!("q{q}");
        if broker.queue_stats(&queue).is_err() {
            continue;
        }
        while let Some(d) = conn.get(&queue, false).unwrap() {
            let body = String::from_utf8(d.message().body().to_vec()).unwrap();
            writeln!(log, "{body} {}", u8::from(d.redelivered())).unwrap();
            d.ack().unwrap();
            count += 1;
        }
    }
    count
}

fn received_log(logs: &Path, run: u64, q: usize) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("received-{run}-{q}.log")))
        .unwrap()
}

/// (queue, run, seq) from a body "q:run:seq".
fn parse_body(body: &str) -> Option<(usize, u64, u64)> {
    let mut parts = body.split(':');
    let q = parts.next()?.parse().ok()?;
    let run = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((q, run, seq))
}

/// Complete lines of a log (a kill may cut the last one short).
fn lines(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    lines.pop(); // after the last '\n': empty, or cut short
    lines
}

/// A message received: (run, seq) and whether it was flagged redelivered.
type Receipt = ((u64, u64), bool);

fn check(logs: &Path, runs: u64, drained: usize) {
    let mut attempted: HashMap<(usize, u64, u64), ()> = HashMap::new();
    let mut confirmed: Vec<(usize, u64, u64)> = Vec::new();
    // Per queue, receipts in the order they happened (runs in order).
    let mut received: BTreeMap<usize, Vec<Receipt>> = BTreeMap::new();
    for run in 0..=runs {
        for q in 0..QUEUES {
            for line in lines(&logs.join(format!("attempted-{run}-{q}.log"))) {
                attempted.insert(parse_body(&line).expect("attempt line"), ());
            }
            for line in lines(&logs.join(format!("confirmed-{run}-{q}.log"))) {
                confirmed.push(parse_body(&line).expect("confirm line"));
            }
            for line in lines(&logs.join(format!("received-{run}-{q}.log"))) {
                let (body, flag) = line.rsplit_once(' ').expect("receipt line");
                let (queue, r, seq) = parse_body(body).expect("receipt body");
                assert_eq!(queue, q, "received from the wrong queue: {line}");
                received.entry(q).or_default().push(((r, seq), flag == "1"));
            }
        }
    }
    let mut seen: HashMap<(usize, u64, u64), usize> = HashMap::new();
    let mut unflagged_duplicates = Vec::new();
    let mut out_of_order = Vec::new();
    for (q, receipts) in &received {
        let mut last_first: Option<(u64, u64)> = None;
        for (key, redelivered) in receipts {
            let full = (*q, key.0, key.1);
            assert!(attempted.contains_key(&full), "unexpected: {full:?} was received but never published");
            let times = seen.entry(full).or_default();
            *times += 1;
            if *times > 1 && !*redelivered {
                unflagged_duplicates.push(full);
            }
            if *times == 1 && !*redelivered {
                if last_first.is_some_and(|last| last >= *key) {
                    out_of_order.push((full, last_first));
                }
                last_first = Some(*key);
            }
        }
    }
    let lost: Vec<_> = confirmed.iter().filter(|c| !seen.contains_key(c)).collect();
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "crash test: {runs} kills, {} confirmed, {} received ({duplicates} duplicates, {drained} at the end)",
        confirmed.len(),
        seen.len()
    );
    assert!(confirmed.len() as u64 >= runs, "the child confirmed too little to test anything");
    assert!(lost.is_empty(), "{} confirmed messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(unflagged_duplicates.is_empty(), "duplicates not flagged redelivered: {unflagged_duplicates:?}");
    assert!(
        out_of_order.is_empty(),
        "first deliveries out of order: {:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
}

/// The child: publishes and consumes until killed. Only runs inside the
/// crash test (see the module docs).
#[test]
#[ignore = "the child process of confirmed_messages_survive_sigkill_at_random_moments"]
fn crash_child() {
    let Ok(data) = std::env::var("INTEROFFICE_CRASH_CHILD") else { return };
    let logs = std::path::PathBuf::from(std::env::var("INTEROFFICE_CRASH_LOGS").unwrap());
    let run: u64 = std::env::var("INTEROFFICE_CRASH_RUN").unwrap().parse().unwrap();
    let broker = Broker::open(&data, BrokerOptions::default()).unwrap();
    let conn = broker.connect();
    for q in 0..QUEUES {
        conn.declare_queue(&format!("q{q}"), QueueOptions { durable: true, ..Default::default() }).unwrap();
    }
    std::thread::scope(|s| {
        for q in 0..QUEUES {
            let publisher = broker.connect();
            let logs = &logs;
            s.spawn(move || {
                let open = |kind: &str| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(logs.join(format!("{kind}-{run}-{q}.log")))
                        .unwrap()
                };
                let (mut attempted, mut confirmed) = (open("attempted"), open("confirmed"));
                for seq in 0.. {
                    let body = format!("{q}:{run}:{seq}");
                    attempted.write_all(format!("{body}\n").as_bytes()).unwrap();
                    let msg = Message::new(body.clone()).with_delivery_mode(DeliveryMode::Persistent);
                    publisher.publish("", &format!("q{q}"), msg).unwrap();
                    confirmed.write_all(format!("{body}\n").as_bytes()).unwrap();
                }
            });
            let consumer = broker.connect();
            s.spawn(move || {
                let mut log = received_log(logs, run, q);
                let sub = consumer
                    .consume(&format!("q{q}"), ConsumeOptions { prefetch: 16, ..Default::default() })
                    .unwrap();
                let mut rng = rng::Rng::for_case(run * 7 + q as u64);
                loop {
                    let d = sub.recv().unwrap();
                    let body = String::from_utf8(d.message().body().to_vec()).unwrap();
                    log.write_all(format!("{body} {}\n", u8::from(d.redelivered())).as_bytes()).unwrap();
                    if rng.chance(3) {
                        d.nack(true).unwrap();
                    } else {
                        d.ack().unwrap();
                    }
                }
            });
        }
    });
}
