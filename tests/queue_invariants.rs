//! Property-based tests of one queue's invariants (ARCHITECTURE.md, "Invariants"
//! and "The life of a message"): random sequences of publish, consume, receive,
//! settle, cancel, get, purge and connection close, checked against a model of
//! *which* messages exist and where — not of the dispatch algorithm.
//!
//! The model knows, for every published id, whether it is
//! - held by the test as an unsettled delivery (`held`, not a zombie),
//! - dead: acked, discarded, auto-acked, or known to be purged (`dead`),
//! - alive and somewhere in the queue: its ready store or a consumer's inbox
//!   (`certain`),
//! - or possibly purged (`pool`): a purge drops the ready messages but not those
//!   in consumer inboxes, and the model does not know which is which; it knows
//!   exactly how many of the pool are still alive (`pool_alive`), and learns
//!   which as they show up (or provably cannot).
//!
//! Checked after every step: ready + unacknowledged = live ids, the consumer
//! count, no id held twice, no settled id ever delivered again, prefetch (per
//! consumer and, through the counts, that nothing is ready while an open
//! consumer has credit), the redelivered flag (set iff the id was handed to
//! the application unsettled before), dispatch order (an id delivered after a
//! larger one must have re-entered the queue since), and that settling after
//! the connection closed fails and changes nothing. At the end everything is
//! released and the queue drained: exactly the live ids, in publish order.
//!
//! Plus one multi-threaded stress test with fixed seeds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use interoffice::{
    AckError, Broker, Connection, ConsumeError, ConsumeOptions, Consumer, Delivery, Message, QueueOptions,
    QueueStats, RecvTimeoutError, TryRecvError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

const QUEUE: &str = "q";
const MAX_OPEN_CONSUMERS: usize = 4;

fn body(id: u64) -> Message {
    Message::new(id.to_le_bytes().to_vec())
}

fn id_of(d: &Delivery) -> u64 {
    u64::from_le_bytes(d.body()[..8].try_into().expect("an 8-byte id"))
}

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    NackRequeue,
    NackDiscard,
    RejectRequeue,
    RejectDiscard,
    Drop,
}

impl Settle {
    fn requeues(self) -> bool {
        matches!(self, Settle::NackRequeue | Settle::RejectRequeue | Settle::Drop)
    }

    fn apply(self, d: Delivery) -> Result<(), AckError> {
        match self {
            Settle::Ack => d.ack(),
            Settle::NackRequeue => d.nack(true),
            Settle::NackDiscard => d.nack(false),
            Settle::RejectRequeue => d.reject(true),
            Settle::RejectDiscard => d.reject(false),
            Settle::Drop => {
                drop(d);
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish,
    Consume {
        on_second: bool,
        prefetch: u32,
        auto_ack: bool,
    },
    /// `try_recv` on consumer `consumer` (an index into every consumer made so far).
    Recv {
        consumer: Index,
    },
    Settle {
        held: Index,
        how: Settle,
    },
    Cancel {
        consumer: Index,
        by_drop: bool,
    },
    Get {
        on_second: bool,
        auto_ack: bool,
    },
    Purge,
    /// Close the second connection (`close()`, keeping the closed handle, or
    /// drop it and open a new one at once).
    CloseSecond {
        by_drop: bool,
    },
    Stats,
}

fn settle_strategy() -> impl Strategy<Value = Settle> {
    prop_oneof![
        3 => Just(Settle::Ack),
        2 => Just(Settle::NackRequeue),
        1 => Just(Settle::NackDiscard),
        1 => Just(Settle::RejectRequeue),
        1 => Just(Settle::RejectDiscard),
        2 => Just(Settle::Drop),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Publish),
        2 => (any::<bool>(), 0u32..=3, prop::bool::weighted(0.25))
            .prop_map(|(on_second, prefetch, auto_ack)| Op::Consume { on_second, prefetch, auto_ack }),
        6 => any::<Index>().prop_map(|consumer| Op::Recv { consumer }),
        5 => (any::<Index>(), settle_strategy()).prop_map(|(held, how)| Op::Settle { held, how }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(consumer, by_drop)| Op::Cancel { consumer, by_drop }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(on_second, auto_ack)| Op::Get { on_second, auto_ack }),
        1 => Just(Op::Purge),
        1 => any::<bool>().prop_map(|by_drop| Op::CloseSecond { by_drop }),
        1 => Just(Op::Stats),
    ]
}

// ---------------------------------------------------------------------------
// The harness: the real broker beside the model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Consumer(usize),
    Get,
}

struct Held {
    delivery: Delivery,
    id: u64,
    source: Source,
    /// Connection generation: 0 is the first connection, 1.. the second ones.
    conn: u64,
    /// Its connection closed: the message was requeued then, and settling
    /// this delivery must fail with `ConnectionClosed` and change nothing.
    zombie: bool,
}

struct ModelConsumer {
    handle: Option<Consumer>,
    conn: u64,
    prefetch: u32,
    auto_ack: bool,
    /// Neither cancelled nor closed with its connection.
    open: bool,
    /// Ids it handed out, in order, each with its `entry_lo` at that time.
    history: Vec<(u64, u64)>,
}

struct Harness {
    broker: Broker,
    first: Connection,
    second: Connection,
    second_gen: u64,
    second_closed: bool,
    consumers: Vec<ModelConsumer>,
    held: Vec<Held>,
    next_id: u64,
    step: u64,
    dead: HashSet<u64>,
    certain: BTreeSet<u64>,
    pool: BTreeSet<u64>,
    pool_alive: usize,
    /// Ids handed to the application unsettled at least once (consumer
    /// without auto-ack, or `get` without auto-ack): if seen again they must
    /// be flagged redelivered, and only they.
    handed: HashSet<u64>,
    /// Last step at which an id may have (re-)entered the ready store:
    /// an over-approximation (a cancel may requeue anything unheld).
    entry_hi: HashMap<u64, u64>,
    /// Last step at which an id is known to have entered the ready store:
    /// an under-approximation.
    entry_lo: HashMap<u64, u64>,
    /// Every id handed out (any source), in order, with its `entry_lo` then.
    obtained: Vec<(u64, u64)>,
}

type TestResult = Result<(), TestCaseError>;

#[derive(Debug, Clone, Copy)]
enum Via {
    Consumer(usize),
    Get,
}

impl Harness {
    fn new() -> Self {
        let broker = Broker::new();
        let first = broker.connect();
        first.declare_queue(QUEUE, QueueOptions::default()).expect("declare");
        let second = broker.connect();
        Harness {
            broker,
            first,
            second,
            second_gen: 1,
            second_closed: false,
            consumers: Vec::new(),
            held: Vec::new(),
            next_id: 0,
            step: 0,
            dead: HashSet::new(),
            certain: BTreeSet::new(),
            pool: BTreeSet::new(),
            pool_alive: 0,
            handed: HashSet::new(),
            entry_hi: HashMap::new(),
            entry_lo: HashMap::new(),
            obtained: Vec::new(),
        }
    }

    fn stats(&self) -> QueueStats {
        self.broker.queue_stats(QUEUE).expect("the queue exists")
    }

    fn open_consumers(&self) -> usize {
        self.consumers.iter().filter(|c| c.open).count()
    }

    fn held_live(&self) -> usize {
        self.held.iter().filter(|h| !h.zombie).count()
    }

    fn held_live_by(&self, k: usize) -> usize {
        self.held.iter().filter(|h| !h.zombie && h.source == Source::Consumer(k)).count()
    }

    fn alive_unheld(&self) -> usize {
        self.certain.len() + self.pool_alive
    }

    /// Anything not held may have just re-entered the ready store (a consumer
    /// was cancelled and its inbox, whose content the model does not know,
    /// went back).
    fn touch_unheld(&mut self) {
        for &id in self.certain.iter().chain(self.pool.iter()) {
            self.entry_hi.insert(id, self.step);
        }
    }

    /// `id` is known to have entered the ready store now.
    fn entered(&mut self, id: u64) {
        self.entry_hi.insert(id, self.step);
        self.entry_lo.insert(id, self.step);
    }

    fn normalize_pool(&mut self) {
        if self.pool_alive == 0 {
            self.dead.extend(std::mem::take(&mut self.pool));
        } else if self.pool.len() == self.pool_alive {
            self.certain.extend(std::mem::take(&mut self.pool));
            self.pool_alive = 0;
        }
    }

    fn reopen_second(&mut self) {
        self.second = self.broker.connect();
        self.second_gen += 1;
        self.second_closed = false;
    }

    /// A delivery of `id` was handed out: check it may be, and take it out
    /// of the queue in the model.
    fn obtain(&mut self, id: u64, redelivered: bool, via: Via) -> TestResult {
        prop_assert!(id < self.next_id, "id {} was never published", id);
        prop_assert!(
            !self.dead.contains(&id),
            "id {} reappeared after it was acked, discarded, auto-acked or purged (via {:?})",
            id,
            via
        );
        prop_assert!(
            !self.held.iter().any(|h| !h.zombie && h.id == id),
            "id {} delivered (via {:?}) while the test still holds it unsettled: duplicated",
            id,
            via
        );
        if !self.certain.remove(&id) {
            prop_assert!(self.pool.remove(&id), "id {} delivered (via {:?}) but not in the queue", id, via);
            prop_assert!(self.pool_alive > 0, "id {} delivered but the purge count says it is gone", id);
            self.pool_alive -= 1;
            self.normalize_pool();
        }
        // Property 4: redelivered iff handed to the application before.
        prop_assert_eq!(
            redelivered,
            self.handed.contains(&id),
            "redelivered flag of id {} (via {:?}); handed out before: {}",
            id,
            via,
            self.handed.contains(&id)
        );
        // Property 3: the ready store serves the smallest sequence number
        // first. If `a > id` was dispatched before `id`, then `id` (re-)entered
        // the ready store after `a` was dispatched.
        let hi = self.entry_hi[&id];
        let earlier: &[(u64, u64)] = match via {
            Via::Get => &self.obtained,
            Via::Consumer(k) => &self.consumers[k].history,
        };
        for &(a, a_lo) in earlier {
            prop_assert!(
                a < id || hi >= a_lo,
                "id {} handed out (via {:?}) after {} although it was in the queue before {} was \
                 dispatched and never re-entered it since (last entry step {} < {})",
                id,
                via,
                a,
                a,
                hi,
                a_lo
            );
        }
        let lo = self.entry_lo[&id];
        self.obtained.push((id, lo));
        if let Via::Consumer(k) = via {
            self.consumers[k].history.push((id, lo));
        }
        Ok(())
    }

    fn check(&self) -> TestResult {
        let s = self.stats();
        let held_live = self.held_live();
        let open = self.open_consumers();
        // Property 6.
        prop_assert_eq!(
            s.messages_ready + s.messages_unacknowledged,
            held_live + self.alive_unheld(),
            "ready + unacked vs live ids; stats {:?}, held {}, alive unheld {}",
            s,
            held_live,
            self.alive_unheld()
        );
        prop_assert_eq!(s.consumers, open, "consumer count; stats {:?}", s);
        prop_assert!(
            s.messages_unacknowledged >= held_live,
            "unacked {} below the {} deliveries the test holds",
            s.messages_unacknowledged,
            held_live
        );
        if open == 0 {
            prop_assert_eq!(
                s.messages_unacknowledged,
                held_live,
                "no consumer, so every unacked message is held by the test"
            );
        }
        // Credit (property 5 and ARCHITECTURE invariant 1), through the
        // counts: an open consumer's credit in use is its inbox plus what the
        // test holds from it, and never exceeds its prefetch; while messages
        // are ready, every open consumer is at its limit.
        let held_from_open = self
            .held
            .iter()
            .filter(|h| !h.zombie && matches!(h.source, Source::Consumer(k) if self.consumers[k].open))
            .count();
        let in_flight_open = s.messages_unacknowledged - (held_live - held_from_open);
        let open_consumers = self.consumers.iter().filter(|c| c.open);
        let unlimited = open_consumers.clone().any(|c| c.prefetch == 0);
        let limit: usize = open_consumers.map(|c| c.prefetch as usize).sum();
        if !unlimited {
            prop_assert!(
                in_flight_open <= limit,
                "open consumers use {} credits, above the sum of their prefetch {}; stats {:?}",
                in_flight_open,
                limit,
                s
            );
        }
        if s.messages_ready > 0 {
            prop_assert!(
                !unlimited && in_flight_open == limit,
                "{} messages ready while an open consumer has credit ({} of {} credits in use, unlimited: {})",
                s.messages_ready,
                in_flight_open,
                limit,
                unlimited
            );
        }
        // Property 2.
        let mut seen = HashSet::new();
        for h in self.held.iter().filter(|h| !h.zombie) {
            prop_assert!(seen.insert(h.id), "id {} held twice", h.id);
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> TestResult {
        self.step += 1;
        match *op {
            Op::Publish => {
                let id = self.next_id;
                self.next_id += 1;
                let routed = self.first.publish("", QUEUE, body(id)).expect("publish");
                prop_assert_eq!(routed.queues(), 1);
                self.certain.insert(id);
                self.entered(id);
            }
            Op::Consume { on_second, prefetch, auto_ack } => {
                let opts = ConsumeOptions { prefetch, auto_ack, ..Default::default() };
                if on_second && self.second_closed {
                    let err = self.second.consume(QUEUE, opts).map(|_| ()).unwrap_err();
                    prop_assert_eq!(err, ConsumeError::ConnectionClosed);
                    self.reopen_second();
                    return Ok(());
                }
                if self.open_consumers() >= MAX_OPEN_CONSUMERS {
                    return Ok(());
                }
                let (conn, conn_gen) =
                    if on_second { (&self.second, self.second_gen) } else { (&self.first, 0) };
                let handle = conn.consume(QUEUE, opts).expect("consume");
                self.consumers.push(ModelConsumer {
                    handle: Some(handle),
                    conn: conn_gen,
                    prefetch,
                    auto_ack,
                    open: true,
                    history: Vec::new(),
                });
            }
            Op::Recv { consumer } => {
                if self.consumers.is_empty() {
                    return Ok(());
                }
                let k = consumer.index(self.consumers.len());
                let c = &self.consumers[k];
                let Some(handle) = &c.handle else { return Ok(()) };
                match handle.try_recv() {
                    Ok(d) => {
                        prop_assert!(c.open, "consumer {} delivered after it was cancelled or closed", k);
                        let (auto_ack, prefetch) = (c.auto_ack, c.prefetch);
                        let id = id_of(&d);
                        self.obtain(id, d.redelivered(), Via::Consumer(k))?;
                        if auto_ack {
                            prop_assert!(!d.needs_settling());
                            prop_assert!(matches!(d.ack(), Err(AckError::AutoAck(_))));
                            self.dead.insert(id);
                        } else {
                            prop_assert!(d.needs_settling());
                            self.handed.insert(id);
                            self.held.push(Held {
                                delivery: d,
                                id,
                                source: Source::Consumer(k),
                                conn: self.consumers[k].conn,
                                zombie: false,
                            });
                            // Property 5.
                            let n = self.held_live_by(k);
                            prop_assert!(
                                prefetch == 0 || n <= prefetch as usize,
                                "consumer {} with prefetch {} holds {} unsettled deliveries",
                                k,
                                prefetch,
                                n
                            );
                        }
                    }
                    Err(TryRecvError::Empty) => {
                        prop_assert!(c.open, "a cancelled consumer's try_recv said Empty, not Closed");
                        // Invariant 1: nothing waits while a consumer has credit.
                        let has_credit =
                            c.auto_ack || c.prefetch == 0 || self.held_live_by(k) < c.prefetch as usize;
                        if has_credit {
                            let s = self.stats();
                            prop_assert_eq!(
                                s.messages_ready,
                                0,
                                "consumer {} has credit and an empty inbox while messages are ready",
                                k
                            );
                        }
                    }
                    Err(TryRecvError::Closed(e)) => {
                        prop_assert!(!c.open, "open consumer {} said closed: {:?}", k, e);
                    }
                }
            }
            Op::Settle { held, how } => {
                if self.held.is_empty() {
                    return Ok(());
                }
                let h = self.held.remove(held.index(self.held.len()));
                if h.zombie {
                    // Property 7.
                    let before = self.stats();
                    let result = how.apply(h.delivery);
                    if how != Settle::Drop {
                        prop_assert!(
                            matches!(result, Err(AckError::ConnectionClosed(_))),
                            "{:?} after the connection closed: {:?}",
                            how,
                            result
                        );
                    }
                    prop_assert_eq!(before, self.stats(), "settling after close changed the queue");
                } else {
                    let result = how.apply(h.delivery);
                    prop_assert!(result.is_ok(), "{:?} of id {}: {:?}", how, h.id, result);
                    if how.requeues() {
                        self.certain.insert(h.id);
                        self.entered(h.id);
                    } else {
                        self.dead.insert(h.id);
                    }
                }
            }
            Op::Cancel { consumer, by_drop } => {
                if self.consumers.is_empty() {
                    return Ok(());
                }
                let k = consumer.index(self.consumers.len());
                if self.consumers[k].handle.is_none() {
                    return Ok(());
                }
                let before = (!self.consumers[k].open).then(|| self.stats());
                let c = &mut self.consumers[k];
                if by_drop {
                    c.handle = None;
                } else if let Some(handle) = &c.handle {
                    handle.cancel();
                    prop_assert!(handle.is_cancelled());
                }
                c.open = false;
                if let Some(before) = before {
                    prop_assert_eq!(
                        before,
                        self.stats(),
                        "cancelling a cancelled consumer changed the queue"
                    );
                } else {
                    self.touch_unheld();
                }
            }
            Op::Get { on_second, auto_ack } => {
                if on_second && self.second_closed {
                    let err = self.second.get(QUEUE, auto_ack).map(|_| ()).unwrap_err();
                    prop_assert_eq!(err, ConsumeError::ConnectionClosed);
                    self.reopen_second();
                    return Ok(());
                }
                self.get(on_second, auto_ack)?;
            }
            Op::Purge => {
                let n = self.first.purge_queue(QUEUE).expect("purge");
                let alive = self.alive_unheld();
                prop_assert!(n <= alive, "purged {} but only {} messages were in the queue", n, alive);
                if self.open_consumers() == 0 {
                    prop_assert_eq!(n, alive, "no consumer: every message in the queue is ready");
                    self.dead.extend(std::mem::take(&mut self.certain));
                    self.dead.extend(std::mem::take(&mut self.pool));
                    self.pool_alive = 0;
                } else {
                    let certain = std::mem::take(&mut self.certain);
                    self.pool.extend(certain);
                    self.pool_alive = alive - n;
                    self.normalize_pool();
                }
            }
            Op::CloseSecond { by_drop } => {
                if self.second_closed {
                    return Ok(());
                }
                let conn_gen = self.second_gen;
                if by_drop {
                    let old = std::mem::replace(&mut self.second, self.broker.connect());
                    drop(old);
                    self.second_gen += 1;
                } else {
                    self.second.close();
                    prop_assert!(self.second.is_closed());
                    self.second_closed = true;
                }
                for c in self.consumers.iter_mut().filter(|c| c.conn == conn_gen) {
                    c.open = false;
                }
                let mut requeued = Vec::new();
                for h in self.held.iter_mut().filter(|h| h.conn == conn_gen && !h.zombie) {
                    h.zombie = true;
                    requeued.push(h.id);
                }
                for id in requeued {
                    self.certain.insert(id);
                    self.entered(id);
                }
                self.touch_unheld();
            }
            Op::Stats => {
                let via_conn = self.first.queue_stats(QUEUE).expect("stats");
                prop_assert_eq!(via_conn, self.stats());
            }
        }
        Ok(())
    }

    /// `get`; returns the id if a message came.
    fn get(&mut self, on_second: bool, auto_ack: bool) -> Result<Option<u64>, TestCaseError> {
        let (conn, conn_gen) = if on_second { (&self.second, self.second_gen) } else { (&self.first, 0) };
        let got = conn.get(QUEUE, auto_ack);
        let quiet = self.open_consumers() == 0;
        let d = match got {
            Ok(Some(d)) => d,
            Ok(None) => {
                if quiet {
                    prop_assert!(
                        self.alive_unheld() == 0,
                        "get found nothing, but no consumer is attached and {} messages should be ready",
                        self.alive_unheld()
                    );
                    self.normalize_pool();
                }
                return Ok(None);
            }
            Err(e) => return Err(TestCaseError::fail(format!("get: {e:?}"))),
        };
        let id = id_of(&d);
        if quiet {
            // With no consumer, every live message not held is ready, and get
            // returns the one with the smallest position (property 3).
            if let Some(&smallest) = self.certain.first() {
                prop_assert!(
                    id <= smallest,
                    "get returned {} while {} (earlier) was ready; no consumer attached",
                    id,
                    smallest
                );
            }
            let gone: Vec<u64> = self.pool.range(..id).copied().collect();
            for g in gone {
                self.pool.remove(&g);
                self.dead.insert(g);
            }
            self.normalize_pool();
        }
        self.obtain(id, d.redelivered(), Via::Get)?;
        if auto_ack {
            prop_assert!(!d.needs_settling());
            self.dead.insert(id);
        } else {
            prop_assert!(d.needs_settling());
            self.handed.insert(id);
            self.held.push(Held { delivery: d, id, source: Source::Get, conn: conn_gen, zombie: false });
        }
        Ok(Some(id))
    }

    /// Releases everything, then drains the queue: property 1 and the drain
    /// order of property 3.
    fn finish(&mut self) -> TestResult {
        self.step += 1;
        let held = std::mem::take(&mut self.held);
        for (i, h) in held.into_iter().enumerate() {
            if h.zombie {
                let result = h.delivery.nack(true);
                prop_assert!(matches!(result, Err(AckError::ConnectionClosed(_))), "{:?}", result);
            } else {
                if i % 2 == 0 {
                    drop(h.delivery);
                } else {
                    let result = h.delivery.nack(true);
                    prop_assert!(result.is_ok(), "{:?}", result);
                }
                self.certain.insert(h.id);
                self.entered(h.id);
            }
        }
        self.check()?;
        self.consumers.clear();
        self.touch_unheld();
        self.check()?;
        let old = std::mem::replace(&mut self.second, self.broker.connect());
        drop(old);
        self.check()?;
        let s = self.stats();
        prop_assert_eq!(
            (s.messages_unacknowledged, s.consumers),
            (0, 0),
            "after releasing everything: {:?}",
            s
        );

        let expected_certain = self.certain.clone();
        let (pool, pool_alive) = (self.pool.clone(), self.pool_alive);
        let mut drained = Vec::new();
        for _ in 0..=self.next_id {
            match self.get(false, true)? {
                Some(id) => drained.push(id),
                None => break,
            }
        }
        prop_assert!(
            drained.windows(2).all(|w| w[0] < w[1]),
            "the drain is not in publish order: {:?}",
            drained
        );
        let drained_set: BTreeSet<u64> = drained.iter().copied().collect();
        prop_assert!(
            expected_certain.is_subset(&drained_set),
            "lost: {:?}",
            &expected_certain - &drained_set
        );
        let extra: BTreeSet<u64> = &drained_set - &expected_certain;
        prop_assert!(extra.is_subset(&pool), "came back from nowhere: {:?}", &extra - &pool);
        prop_assert_eq!(extra.len(), pool_alive, "purged messages: the purge count disagrees");
        let s = self.stats();
        prop_assert_eq!((s.messages_ready, s.messages_unacknowledged, s.consumers), (0, 0, 0));
        Ok(())
    }
}

fn run_ops(ops: &[Op]) -> TestResult {
    let mut h = Harness::new();
    for (i, op) in ops.iter().enumerate() {
        h.run(op).map_err(|e| TestCaseError::fail(format!("step {i} ({op:?}): {e}")))?;
        h.check().map_err(|e| TestCaseError::fail(format!("after step {i} ({op:?}): {e}")))?;
    }
    h.finish().map_err(|e| TestCaseError::fail(format!("at the end: {e}")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn queue_invariants_hold_under_random_operations(ops in prop::collection::vec(op_strategy(), 0..=60)) {
        run_ops(&ops)?;
    }
}

// ---------------------------------------------------------------------------
// Multi-threaded stress

/// xorshift64*: a fixed-seed generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STRESS_IDS: usize = 5_000;
const STRESS_STEPS: usize = 3_000;

struct Shared {
    broker: Broker,
    acks: Vec<AtomicU32>,
    handed: Vec<AtomicBool>,
    acked: AtomicUsize,
    deadline: Instant,
    /// Set by a worker that panics, so the others stop rather than wait out the deadline.
    failed: AtomicBool,
}

/// Marks the run failed if its worker panics.
struct FailFlag<'a>(&'a AtomicBool);

impl Drop for FailFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Shared {
    /// A delivery arrived: check it against what the other threads did.
    fn note(&self, d: &Delivery) -> u64 {
        let id = id_of(d);
        assert!((id as usize) < STRESS_IDS, "unknown id {id}");
        assert_eq!(self.acks[id as usize].load(Ordering::SeqCst), 0, "id {id} delivered after its ack");
        let before = self.handed[id as usize].swap(true, Ordering::SeqCst);
        assert_eq!(d.redelivered(), before, "redelivered flag of id {id}");
        id
    }

    fn ack(&self, d: Delivery) {
        let id = id_of(&d);
        d.ack().expect("ack on an open connection");
        let n = self.acks[id as usize].fetch_add(1, Ordering::SeqCst);
        assert_eq!(n, 0, "id {id} acked twice");
        self.acked.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) -> bool {
        assert!(!self.failed.load(Ordering::SeqCst), "another worker failed");
        self.acked.load(Ordering::SeqCst) == STRESS_IDS
    }
}

fn stress_worker(shared: &Shared, seed: u64) {
    let _flag = FailFlag(&shared.failed);
    let mut rng = Rng::new(seed);
    let consume = |conn: &Connection, rng: &mut Rng| {
        let prefetch = rng.below(4) as u32;
        let consumer =
            conn.consume(QUEUE, ConsumeOptions { prefetch, ..Default::default() }).expect("consume");
        (consumer, prefetch)
    };
    let mut conn = shared.broker.connect();
    let (mut consumer, mut prefetch) = consume(&conn, &mut rng);
    let mut generation = 0u64;
    // Deliveries held unsettled, with the consumer generation that handed them out.
    let mut held: Vec<(Delivery, u64)> = Vec::new();
    let mut zombies: Vec<Delivery> = Vec::new();
    for _ in 0..STRESS_STEPS {
        if shared.done() {
            break;
        }
        assert!(Instant::now() < shared.deadline, "stress test timed out in the random phase");
        let pick = |held: &mut Vec<(Delivery, u64)>, rng: &mut Rng| {
            let i = rng.below(held.len() as u64) as usize;
            held.swap_remove(i).0
        };
        match rng.below(100) {
            0..40 => match consumer.recv_timeout(Duration::from_millis(1)) {
                Ok(d) => {
                    shared.note(&d);
                    held.push((d, generation));
                    let mine = held.iter().filter(|(_, g)| *g == generation).count();
                    assert!(
                        prefetch == 0 || mine <= prefetch as usize,
                        "prefetch {prefetch} exceeded: {mine}"
                    );
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("recv on an open consumer: {e:?}"),
            },
            40..65 if !held.is_empty() => shared.ack(pick(&mut held, &mut rng)),
            65..75 if !held.is_empty() => pick(&mut held, &mut rng).nack(true).expect("nack"),
            75..80 if !held.is_empty() => pick(&mut held, &mut rng).reject(true).expect("reject"),
            80..87 if !held.is_empty() => drop(pick(&mut held, &mut rng)),
            87..92 => {
                if rng.below(2) == 0 {
                    consumer.cancel();
                }
                let (c, p) = consume(&conn, &mut rng);
                consumer = c; // drops (cancels) the old one
                prefetch = p;
                generation += 1;
            }
            92..94 => {
                zombies.extend(held.drain(..).map(|(d, _)| d));
                drop(consumer);
                conn = shared.broker.connect(); // drops (closes) the old one
                let (c, p) = consume(&conn, &mut rng);
                consumer = c;
                prefetch = p;
                generation += 1;
            }
            _ => {}
        }
    }
    for z in zombies {
        assert!(matches!(z.ack(), Err(AckError::ConnectionClosed(_))), "ack after the connection closed");
    }
    for (d, _) in held {
        shared.ack(d);
    }
    while !shared.done() {
        assert!(
            Instant::now() < shared.deadline,
            "stress test timed out: {} of {} acked",
            shared.acked.load(Ordering::SeqCst),
            STRESS_IDS
        );
        match consumer.recv_timeout(Duration::from_millis(20)) {
            Ok(d) => {
                shared.note(&d);
                shared.ack(d);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("recv on an open consumer: {e:?}"),
        }
    }
}

#[test]
fn concurrent_consumers_ack_every_message_exactly_once() {
    for seed in [0x5EED_0001_u64, 0x5EED_0002] {
        let broker = Broker::new();
        let publisher = broker.connect();
        publisher.declare_queue(QUEUE, QueueOptions::default()).expect("declare");
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            acks: (0..STRESS_IDS).map(|_| AtomicU32::new(0)).collect(),
            handed: (0..STRESS_IDS).map(|_| AtomicBool::new(false)).collect(),
            acked: AtomicUsize::new(0),
            deadline: Instant::now() + Duration::from_secs(30),
            failed: AtomicBool::new(false),
        });
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || stress_worker(&shared, seed ^ ((t + 1) * 0x1000_0001)))
            })
            .collect();
        for id in 0..STRESS_IDS as u64 {
            publisher.publish("", QUEUE, body(id)).expect("publish");
            if id % 64 == 0 {
                std::thread::yield_now();
            }
        }
        for w in workers {
            w.join().expect("worker panicked");
        }
        let twice: Vec<usize> =
            (0..STRESS_IDS).filter(|&i| shared.acks[i].load(Ordering::SeqCst) != 1).collect();
        assert!(twice.is_empty(), "seed {seed:#x}: ids not acked exactly once: {twice:?}");
        let s = broker.queue_stats(QUEUE).expect("queue");
        assert_eq!((s.messages_ready, s.messages_unacknowledged), (0, 0), "seed {seed:#x}: {s:?}");
    }
}
