//! Model-based test of durability (GUARANTEES G36–G37): random sequences
//! of publishes (persistent and transient, to two durable queues), gets
//! settled every way, deliveries held across steps, purges, and restarts
//! of the broker, against a plain model of what must survive: after every
//! step the next message each `get` returns (body, redelivered flag,
//! delivery count) and the ready counts match the model.
//!
//! Small segments (4 KiB) and 400-byte bodies make the store seal, delete
//! and copy segments forward between restarts, so compaction is exercised
//! too; half the cases give the queues a memory budget of two bodies, so
//! most messages are paged out and read back. Cases: `INTEROFFICE_DURABLE_MODEL_CASES` (default 64).

#[path = "support/data_dir.rs"]
mod data_dir;

use std::collections::BTreeMap;

use interoffice::{
    Broker, BrokerOptions, Delivery, DeliveryMode, Message, QueueOptions, StoreOptions, SyncPolicy,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};

const QUEUES: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        persistent: bool,
    },
    /// `get`, then settle: 0 ack, 1 requeue, 2 reject, 3 hold.
    Get {
        queue: usize,
        how: u8,
    },
    /// Settles a held delivery: ack or requeue.
    Release {
        which: Index,
        ack: bool,
    },
    Purge {
        queue: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, proptest::bool::weighted(0.8)).prop_map(|(queue, persistent)| Op::Publish { queue, persistent }),
        5 => (0..2usize, 0..4u8).prop_map(|(queue, how)| Op::Get { queue, how }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(which, ack)| Op::Release { which, ack }),
        1 => (0..2usize).prop_map(|queue| Op::Purge { queue }),
        2 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Modelled {
    seq: u64,
    body: String,
    persistent: bool,
    redelivered: bool,
    deliveries: u32,
}

#[derive(Default)]
struct Model {
    /// Per queue, ready messages by position.
    ready: [BTreeMap<u64, Modelled>; 2],
    /// Held deliveries: (queue, message).
    held: Vec<(usize, Modelled)>,
    next_seq: [u64; 2],
}

impl Model {
    fn give_back(&mut self, queue: usize, mut m: Modelled) {
        m.redelivered = true;
        m.deliveries += 1;
        self.ready[queue].insert(m.seq, m);
    }

    fn restart(&mut self) {
        for (queue, m) in std::mem::take(&mut self.held) {
            self.give_back(queue, m);
        }
        for ready in &mut self.ready {
            ready.retain(|_, m| m.persistent);
        }
    }
}

/// With `paging`, a memory budget of two bodies: most messages are paged
/// out and read back from disk when they leave their queue.
fn options(paging: bool) -> BrokerOptions {
    let queue_memory_budget = if paging { 1000 } else { usize::MAX };
    BrokerOptions {
        store: StoreOptions { segment_bytes: 4096, sync: SyncPolicy::OsBuffered, queue_memory_budget },
        ..Default::default()
    }
}

fn check_delivery(d: &Delivery, m: &Modelled, step: usize) -> Result<(), TestCaseError> {
    let body = String::from_utf8(d.message().body().to_vec()).unwrap();
    prop_assert_eq!(&body[..12], &m.body[..12], "step {}", step);
    prop_assert_eq!(d.redelivered(), m.redelivered, "step {}: redelivered of {}", step, &m.body[..12]);
    prop_assert_eq!(d.delivery_count(), m.deliveries, "step {}: delivery count of {}", step, &m.body[..12]);
    Ok(())
}

fn run(ops: &[Op], paging: bool) -> Result<(), TestCaseError> {
    let dir = data_dir::DataDir::new("durable-model");
    let mut model = Model::default();
    let mut broker = Some(Broker::open(dir.path(), options(paging)).unwrap());
    let mut conn = Some(broker.as_ref().unwrap().connect());
    for name in QUEUES {
        conn.as_ref()
            .unwrap()
            .declare_queue(name, QueueOptions { durable: true, ..Default::default() })
            .unwrap();
    }
    let mut held: Vec<(usize, Delivery)> = Vec::new();
    let mut published = 0;
    for (step, op) in ops.iter().enumerate() {
        let c = conn.as_ref().unwrap();
        match op {
            Op::Publish { queue, persistent } => {
                let body = format!("m{published:05}-{}-{}", u8::from(*persistent), ".".repeat(400));
                published += 1;
                let mut msg = Message::new(body.clone());
                if *persistent {
                    msg = msg.with_delivery_mode(DeliveryMode::Persistent);
                }
                c.publish("", QUEUES[*queue], msg).unwrap();
                let seq = model.next_seq[*queue];
                model.next_seq[*queue] += 1;
                let m = Modelled { seq, body, persistent: *persistent, redelivered: false, deliveries: 0 };
                model.ready[*queue].insert(seq, m);
            }
            Op::Get { queue, how } => {
                let got = c.get(QUEUES[*queue], false).unwrap();
                let expected = model.ready[*queue].pop_first().map(|(_, m)| m);
                match (got, expected) {
                    (None, None) => {}
                    (Some(d), Some(m)) => {
                        check_delivery(&d, &m, step)?;
                        match how {
                            0 => d.ack().unwrap(),
                            1 => {
                                d.nack(true).unwrap();
                                model.give_back(*queue, m);
                            }
                            2 => d.reject(false).unwrap(),
                            _ => {
                                held.push((*queue, d));
                                model.held.push((*queue, m));
                            }
                        }
                    }
                    (got, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: got {:?}, model expected {:?}",
                            got.map(|d| d.message().body().len()),
                            expected.map(|m| m.body[..12].to_owned())
                        )));
                    }
                }
            }
            Op::Release { which, ack } => {
                if held.is_empty() {
                    continue;
                }
                let i = which.index(held.len());
                let (queue, d) = held.remove(i);
                let (_, m) = model.held.remove(i);
                if *ack {
                    d.ack().unwrap();
                } else {
                    d.nack(true).unwrap();
                    model.give_back(queue, m);
                }
            }
            Op::Purge { queue } => {
                c.purge_queue(QUEUES[*queue]).unwrap();
                model.ready[*queue].clear();
            }
            Op::Restart => {
                held.clear();
                // The old broker goes (and releases its directory) first.
                drop(conn.take());
                drop(broker.take());
                broker = Some(Broker::open(dir.path(), options(paging)).unwrap());
                conn = Some(broker.as_ref().unwrap().connect());
                model.restart();
                // After a restart the queues number afresh from their
                // highest position; the model keeps its own numbering,
                // which orders the same way.
            }
        }
        let b = broker.as_ref().unwrap();
        for (q, name) in QUEUES.iter().enumerate() {
            prop_assert_eq!(
                b.queue_stats(name).unwrap().messages_ready,
                model.ready[q].len(),
                "step {}: {:?}",
                step,
                op
            );
        }
    }
    // Every message left, in order, as the model says.
    drop(held);
    model.restart();
    let broker = {
        drop(conn);
        drop(broker);
        Broker::open(dir.path(), options(paging)).unwrap()
    };
    let c = broker.connect();
    for (q, name) in QUEUES.iter().enumerate() {
        for (_, m) in std::mem::take(&mut model.ready[q]) {
            let d = c
                .get(name, true)
                .unwrap()
                .ok_or_else(|| TestCaseError::fail(format!("{} lost", &m.body[..12])))?;
            check_delivery(&d, &m, usize::MAX)?;
        }
        prop_assert!(c.get(name, true).unwrap().is_none(), "queue {} holds more than the model", name);
    }
    Ok(())
}

#[test]
fn durable_queues_match_the_model_across_restarts() {
    let cases =
        std::env::var("INTEROFFICE_DURABLE_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::new(Config { cases, ..Config::default() });
    let case = (proptest::collection::vec(op(), 1..120), any::<bool>());
    runner.run(&case, |(ops, paging)| run(&ops, paging)).unwrap();
}
