//! Model-based state-machine test (GUARANTEES.md, G2–G7): random sequences
//! of operations run against the broker and, step by step, against a plain
//! sequential reference model of what RabbitMQ's rules say must happen — one
//! queue with a random TTL and length limit dead-lettering into a second,
//! reached directly or through an exchange it is bound to and unbound from,
//! competing consumers with prefetch, settlement of every kind, delayed
//! requeues, `get`, purge, cancel, connection close, deleting and
//! re-declaring the queue (while its consumers and `get`s still hold
//! deliveries) and a manual clock.
//!
//! Everything runs on one thread with a `ManualClock`, so the broker is
//! deterministic and the model predicts it exactly: which message each
//! `try_recv` and `get` returns (id and redelivered flag), every count of
//! `queue_stats` after every step, what purge returns, which settles fail,
//! and at the end the dead-letter queue's contents.
//!
//! Cases: `INTEROFFICE_MODEL_CASES` (default 1,000), each up to 200 steps;
//! `INTEROFFICE_MODEL_CASES=100000` for a long run.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, ConsumeOptions, Consumer, Delivery, ExchangeKind, ExchangeOptions,
    FieldTable, ManualClock, Message, Overflow, QueueOptions,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};

const WORK: &str = "work";
const DLQ: &str = "dlq";
const MAX_CONSUMERS: usize = 3;

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy)]
enum How {
    Ack,
    Requeue,
    Discard,
    Drop,
    RequeueAfter(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// Through the default exchange, or through the fanout exchange `x`
    /// (unroutable unless `work` is bound to it).
    Publish {
        ttl: Option<u64>,
        delay: Option<u64>,
        via_x: bool,
    },
    /// Binds `work` to `x`, or unbinds it.
    Rebind,
    /// Deletes `work` and declares it again: its consumers end, and what
    /// they and `get` still hold belongs to the deleted queue.
    DeleteAndRedeclare,
    Consume {
        prefetch: u32,
    },
    Recv {
        consumer: Index,
    },
    Settle {
        held: Index,
        how: How,
    },
    Cancel {
        consumer: Index,
    },
    Get {
        auto_ack: bool,
    },
    Purge,
    Advance {
        ms: u64,
    },
    /// Advances to the model's next deadline exactly, or to just before it:
    /// the instants where an off-by-one in expiry shows.
    AdvanceToDeadline {
        just_before: bool,
    },
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        4 => Just(How::Ack),
        2 => Just(How::Requeue),
        2 => Just(How::Discard),
        1 => Just(How::Drop),
        1 => (0_u64..40).prop_map(How::RequeueAfter),
    ];
    prop_oneof![
        6 => (
            prop::option::weighted(0.3, 0_u64..60),
            prop::option::weighted(0.2, 0_u64..60),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(ttl, delay, via_x)| Op::Publish { ttl, delay, via_x }),
        1 => Just(Op::Rebind),
        1 => Just(Op::DeleteAndRedeclare),
        2 => (0_u32..4).prop_map(|prefetch| Op::Consume { prefetch }),
        6 => any::<Index>().prop_map(|consumer| Op::Recv { consumer }),
        5 => (any::<Index>(), how).prop_map(|(held, how)| Op::Settle { held, how }),
        1 => any::<Index>().prop_map(|consumer| Op::Cancel { consumer }),
        2 => any::<bool>().prop_map(|auto_ack| Op::Get { auto_ack }),
        1 => Just(Op::Purge),
        3 => (1_u64..50).prop_map(|ms| Op::Advance { ms }),
        2 => any::<bool>().prop_map(|just_before| Op::AdvanceToDeadline { just_before }),
        1 => Just(Op::Close),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    queue_ttl: Option<u64>,
    max_length: Option<usize>,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::option::weighted(0.3, 5_u64..80),
        prop::option::weighted(0.3, 1_usize..6),
        prop::collection::vec(op(), 1..200),
    )
        .prop_map(|(queue_ttl, max_length, ops)| Scenario { queue_ttl, max_length, ops })
}

// ---------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone)]
struct MMsg {
    id: u64,
    seq: u64,
    /// Milliseconds since the start, by the manual clock.
    expires_at: Option<u64>,
    redelivered: bool,
}

#[derive(Debug)]
struct MDelayed {
    msg: MMsg,
    /// The TTL that starts when it becomes visible.
    ttl: Option<u64>,
}

#[derive(Debug)]
struct MConsumer {
    prefetch: u32,
    in_flight: u32,
    inbox: VecDeque<MMsg>,
    /// The connection generation it was opened on.
    generation: u32,
    /// The incarnation of `work` it consumes from.
    queue_gen: u32,
}

#[derive(Debug)]
struct MHeld {
    msg: MMsg,
    /// The consumer it came from, or `None` for a `get`.
    consumer: Option<usize>,
    generation: u32,
    queue_gen: u32,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    queue_ttl: Option<u64>,
    max_length: Option<usize>,
    ready: BTreeMap<u64, MMsg>,
    delayed: BTreeMap<(u64, u64), MDelayed>,
    next_seq: u64,
    next_delayed: u64,
    consumers: Vec<MConsumer>,
    /// Open consumers, in attach order: the round-robin ring.
    ring: Vec<usize>,
    cursor: usize,
    held: Vec<MHeld>,
    get_unacked: usize,
    dead: Vec<u64>,
    generation: u32,
    /// Incarnations of `work`: bumped by each delete and re-declare.
    queue_gen: u32,
    bound_to_x: bool,
}

impl Model {
    fn expired(&self, msg: &MMsg) -> bool {
        msg.expires_at.is_some_and(|at| at <= self.now)
    }

    fn held_count(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    fn has_credit(&self, c: usize) -> bool {
        let c = &self.consumers[c];
        c.prefetch == 0 || c.in_flight < c.prefetch
    }

    fn next_with_credit(&self) -> Option<usize> {
        let n = self.ring.len();
        (0..n).map(|i| (self.cursor + i) % n).find(|&i| self.has_credit(self.ring[i]))
    }

    fn send_to(&mut self, index: usize, msg: MMsg) {
        let c = self.ring[index];
        self.consumers[c].in_flight += 1;
        self.consumers[c].inbox.push_back(msg);
        self.cursor = (index + 1) % self.ring.len();
    }

    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some(index) = self.next_with_credit() else { return };
            let Some((_, msg)) = self.ready.pop_first() else { return };
            if self.expired(&msg) {
                self.dead.push(msg.id);
                continue;
            }
            self.send_to(index, msg);
        }
    }

    /// Drop-head: makes room for one more; false if the message itself
    /// cannot fit (then it is dead-lettered in place of the head).
    fn make_room(&mut self, msg: &MMsg) -> bool {
        let Some(max) = self.max_length else { return true };
        while self.held_count() + 1 > max && self.drop_head() {}
        if self.held_count() + 1 > max {
            self.dead.push(msg.id);
            return false;
        }
        true
    }

    /// Drop-head after a requeue, as RabbitMQ does: heads go while the
    /// queue holds more than its limit.
    fn drop_heads_over_limit(&mut self) {
        let Some(max) = self.max_length else { return };
        while self.held_count() > max && self.drop_head() {}
    }

    /// The head (first ready, else first delayed) leaves for the
    /// dead-letter queue, expired or not; false if there is none.
    fn drop_head(&mut self) -> bool {
        let head = match self.ready.pop_first() {
            Some((_, head)) => head,
            None => match self.delayed.pop_first() {
                Some((_, d)) => d.msg,
                None => return false,
            },
        };
        self.dead.push(head.id);
        true
    }

    fn publish(&mut self, id: u64, ttl: Option<u64>, delay: Option<u64>) {
        let ttl = match (self.queue_ttl, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut msg = MMsg { id, seq: 0, expires_at: None, redelivered: false };
        match delay.filter(|d| *d > 0) {
            Some(delay) => {
                if self.make_room(&msg) {
                    self.next_delayed += 1;
                    self.delayed.insert((self.now + delay, self.next_delayed), MDelayed { msg, ttl });
                }
            }
            None => {
                msg.seq = self.next_seq;
                self.next_seq += 1;
                msg.expires_at = ttl.map(|ttl| self.now + ttl);
                let offered = if self.ready.is_empty() {
                    match self.next_with_credit() {
                        Some(index) => {
                            self.send_to(index, msg);
                            None
                        }
                        None => Some(msg),
                    }
                } else {
                    Some(msg)
                };
                if let Some(msg) = offered {
                    if self.expired(&msg) {
                        self.dead.push(msg.id);
                    } else if self.make_room(&msg) {
                        self.ready.insert(msg.seq, msg);
                    }
                }
            }
        }
    }

    fn restore(&mut self, mut msg: MMsg, returned: bool) {
        if returned {
            msg.redelivered = true;
        }
        if self.expired(&msg) {
            self.dead.push(msg.id);
        } else {
            self.ready.insert(msg.seq, msg);
        }
    }

    fn catch_up(&mut self) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let MDelayed { mut msg, ttl } = entry.remove();
            msg.seq = self.next_seq;
            self.next_seq += 1;
            if let Some(ttl) = ttl {
                msg.expires_at = Some(self.now + ttl);
            }
            if self.expired(&msg) {
                self.dead.push(msg.id);
            } else {
                self.ready.insert(msg.seq, msg);
            }
        }
        // The expiry index: by deadline, then position.
        let mut expired: Vec<(u64, u64)> = self
            .ready
            .values()
            .filter(|m| self.expired(m))
            .map(|m| (m.expires_at.unwrap_or_default(), m.seq))
            .collect();
        expired.sort_unstable();
        for (_, seq) in expired {
            if let Some(msg) = self.ready.remove(&seq) {
                self.dead.push(msg.id);
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let expiry = self.ready.values().filter_map(|m| m.expires_at).min();
        let due = self.delayed.keys().next().map(|(due, _)| *due);
        [expiry, due].into_iter().flatten().min()
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        while let Some(at) = self.next_deadline().filter(|at| *at <= target) {
            self.now = self.now.max(at);
            self.catch_up();
            self.dispatch();
        }
        self.now = target;
    }

    fn get(&mut self, auto_ack: bool) -> Option<MMsg> {
        self.catch_up();
        self.dispatch();
        let (_, msg) = self.ready.pop_first()?;
        if !auto_ack {
            self.get_unacked += 1;
        }
        Some(msg)
    }

    fn release(&mut self, consumer: Option<usize>) {
        match consumer {
            Some(c) => self.consumers[c].in_flight -= 1,
            None => self.get_unacked -= 1,
        }
    }

    fn settle(&mut self, held: MHeld, how: How) {
        match how {
            How::Ack => {
                self.release(held.consumer);
                self.dispatch();
            }
            How::Discard => {
                self.dead.push(held.msg.id);
                self.release(held.consumer);
                self.dispatch();
            }
            How::Requeue | How::Drop => {
                self.restore(held.msg, true);
                self.drop_heads_over_limit();
                self.release(held.consumer);
                self.dispatch();
            }
            How::RequeueAfter(delay) => {
                self.release(held.consumer);
                let mut msg = held.msg;
                msg.redelivered = true;
                if delay == 0 {
                    self.restore(msg, false);
                    self.drop_heads_over_limit();
                } else {
                    self.next_delayed += 1;
                    self.delayed.insert((self.now + delay, self.next_delayed), MDelayed { msg, ttl: None });
                }
                self.dispatch();
            }
        }
    }

    /// Takes consumer `c` out of the ring and returns what it held: its
    /// unsettled deliveries (flagged) first, then its inbox (unflagged).
    fn remove_consumer(&mut self, c: usize, unsettled: Vec<MMsg>) {
        if let Some(index) = self.ring.iter().position(|&r| r == c) {
            self.ring.remove(index);
            if self.cursor > index {
                self.cursor -= 1;
            }
            if self.cursor >= self.ring.len() {
                self.cursor = 0;
            }
        }
        let pending: Vec<MMsg> = self.consumers[c].inbox.drain(..).collect();
        self.consumers[c].in_flight -= (unsettled.len() + pending.len()) as u32;
        for msg in unsettled {
            self.restore(msg, true);
        }
        for msg in pending {
            self.restore(msg, false);
        }
        self.drop_heads_over_limit();
        self.dispatch();
    }

    fn is_open(&self, c: usize) -> bool {
        self.ring.contains(&c)
    }

    fn unacked(&self) -> usize {
        let live = self.consumers.iter().filter(|c| c.queue_gen == self.queue_gen);
        live.map(|c| c.in_flight as usize).sum::<usize>() + self.get_unacked
    }

    /// Deletes `work` (returning how many it held) and starts a new one.
    fn delete_and_redeclare(&mut self) -> usize {
        let held = self.held_count();
        self.ready.clear();
        self.delayed.clear();
        self.ring.clear();
        self.cursor = 0;
        self.get_unacked = 0;
        self.next_seq = 0;
        self.queue_gen += 1;
        self.bound_to_x = false;
        held
    }

    /// Settles a delivery of a deleted `work`: a discard still dead-letters
    /// (through the old queue's policy); anything that would requeue it
    /// drops it.
    fn settle_orphan(&mut self, held: &MHeld, how: How) {
        if let Some(c) = held.consumer {
            self.consumers[c].in_flight -= 1;
        }
        if matches!(how, How::Discard) {
            self.dead.push(held.msg.id);
        }
    }
}

// ---------------------------------------------------------------------------
// Running a scenario

struct Real {
    clock: ManualClock,
    broker: Broker,
    conn: Connection,
    consumers: Vec<Consumer>,
    held: Vec<Delivery>,
}

fn work_options(scenario: &Scenario) -> QueueOptions {
    QueueOptions {
        message_ttl: scenario.queue_ttl.map(Duration::from_millis),
        max_length: scenario.max_length,
        overflow: Overflow::DropHead,
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some(DLQ.into()),
        ..Default::default()
    }
}

fn id_of(d: &Delivery) -> u64 {
    u64::from_le_bytes(d.body()[..8].try_into().expect("an 8-byte id"))
}

fn run(scenario: &Scenario) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let conn = broker.connect();
    conn.declare_queue(DLQ, QueueOptions::default()).unwrap();
    conn.declare_queue(WORK, work_options(scenario)).unwrap();
    conn.declare_exchange("x", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    let mut real = Real { clock, broker, conn, consumers: Vec::new(), held: Vec::new() };
    let mut model =
        Model { queue_ttl: scenario.queue_ttl, max_length: scenario.max_length, ..Default::default() };
    let mut next_id = 0_u64;

    for (step, op) in scenario.ops.iter().enumerate() {
        let at = |what: &str| format!("step {step} ({op:?}): {what}");
        match *op {
            Op::Publish { ttl, delay, via_x } => {
                next_id += 1;
                let mut message = Message::new(next_id.to_le_bytes().to_vec());
                if let Some(ttl) = ttl {
                    message = message.with_expiration(Duration::from_millis(ttl));
                }
                if let Some(delay) = delay {
                    message = message.with_delay(Duration::from_millis(delay));
                }
                let routed = if via_x {
                    real.conn.publish("x", "", message).unwrap()
                } else {
                    real.conn.publish("", WORK, message).unwrap()
                };
                let reaches = !via_x || model.bound_to_x;
                prop_assert_eq!(routed.queues(), usize::from(reaches), "{}", at("routed"));
                if reaches {
                    model.publish(next_id, ttl, delay);
                }
            }
            Op::Rebind => {
                if model.bound_to_x {
                    real.conn.unbind_queue(WORK, "x", "", None).unwrap();
                } else {
                    real.conn.bind_queue(WORK, "x", "", FieldTable::new()).unwrap();
                }
                model.bound_to_x = !model.bound_to_x;
            }
            Op::DeleteAndRedeclare => {
                let dropped = real.conn.delete_queue(WORK, Default::default()).unwrap();
                prop_assert_eq!(dropped, model.delete_and_redeclare(), "{}", at("delete count"));
                real.conn.declare_queue(WORK, work_options(scenario)).unwrap();
            }
            Op::Consume { prefetch } => {
                if model.ring.len() >= MAX_CONSUMERS {
                    continue;
                }
                let options = ConsumeOptions { prefetch, ..Default::default() };
                real.consumers.push(real.conn.consume(WORK, options).unwrap());
                model.consumers.push(MConsumer {
                    prefetch,
                    in_flight: 0,
                    inbox: VecDeque::new(),
                    generation: model.generation,
                    queue_gen: model.queue_gen,
                });
                model.ring.push(model.consumers.len() - 1);
                model.dispatch();
            }
            Op::Recv { consumer } => {
                if real.consumers.is_empty() {
                    continue;
                }
                let c = consumer.index(real.consumers.len());
                let got = real.consumers[c].try_recv().ok();
                let mut expected = model.consumers[c].inbox.pop_front();
                if expected.is_some() && model.consumers[c].generation != model.generation {
                    // Left in the inbox of a consumer of a deleted queue when
                    // its connection closed: taking it requeues it into the
                    // deleted queue (gone), and the receive fails.
                    model.consumers[c].in_flight -= 1;
                    expected = None;
                }
                let seen = got.as_ref().map(|d| (id_of(d), d.redelivered()));
                prop_assert_eq!(seen, expected.as_ref().map(|m| (m.id, m.redelivered)), "{}", at("recv"));
                if let (Some(d), Some(msg)) = (got, expected) {
                    real.held.push(d);
                    model.held.push(MHeld {
                        msg,
                        consumer: Some(c),
                        generation: model.consumers[c].generation,
                        queue_gen: model.consumers[c].queue_gen,
                    });
                }
            }
            Op::Settle { held, how } => {
                if real.held.is_empty() {
                    continue;
                }
                let h = held.index(real.held.len());
                let delivery = real.held.swap_remove(h);
                let entry = model.held.swap_remove(h);
                let zombie = entry.generation != model.generation;
                let outcome = match how {
                    How::Ack => delivery.ack(),
                    How::Requeue => delivery.nack(true),
                    How::Discard => delivery.nack(false),
                    How::Drop => {
                        drop(delivery);
                        Ok(())
                    }
                    How::RequeueAfter(ms) => delivery.nack_with_delay(Duration::from_millis(ms)),
                };
                if zombie {
                    // Its connection closed and requeued it: a settle fails
                    // (a drop does nothing) and changes nothing.
                    prop_assert!(matches!(how, How::Drop) || outcome.is_err(), "{}", at("zombie settle"));
                } else if entry.queue_gen != model.queue_gen {
                    prop_assert!(outcome.is_ok(), "{}", at("settle of a deleted queue's delivery"));
                    model.settle_orphan(&entry, how);
                } else {
                    prop_assert!(outcome.is_ok(), "{}", at("settle"));
                    model.settle(entry, how);
                }
            }
            Op::Cancel { consumer } => {
                if real.consumers.is_empty() {
                    continue;
                }
                let c = consumer.index(real.consumers.len());
                real.consumers[c].cancel();
                if model.is_open(c) {
                    model.remove_consumer(c, Vec::new());
                }
            }
            Op::Get { auto_ack } => {
                let got = real.conn.get(WORK, auto_ack).unwrap();
                let expected = model.get(auto_ack);
                let seen = got.as_ref().map(|d| (id_of(d), d.redelivered()));
                prop_assert_eq!(seen, expected.as_ref().map(|m| (m.id, m.redelivered)), "{}", at("get"));
                if let (Some(d), Some(msg), false) = (got, expected, auto_ack) {
                    real.held.push(d);
                    model.held.push(MHeld {
                        msg,
                        consumer: None,
                        generation: model.generation,
                        queue_gen: model.queue_gen,
                    });
                }
            }
            Op::Purge => {
                let purged = real.conn.purge_queue(WORK).unwrap();
                prop_assert_eq!(purged, model.held_count(), "{}", at("purge count"));
                model.ready.clear();
                model.delayed.clear();
            }
            Op::Advance { ms } => {
                real.clock.advance(Duration::from_millis(ms));
                model.advance(ms);
            }
            Op::AdvanceToDeadline { just_before } => {
                let Some(at) = model.next_deadline() else { continue };
                let ms = (at - model.now).saturating_sub(u64::from(just_before));
                real.clock.advance(Duration::from_millis(ms));
                model.advance(ms);
            }
            Op::Close => {
                real.conn.close();
                // Every consumer of the connection, in attach order: its
                // unsettled deliveries (by tag) and its inbox go back.
                let generation = model.generation;
                for c in 0..model.consumers.len() {
                    if model.consumers[c].generation != generation {
                        continue;
                    }
                    if model.consumers[c].queue_gen != model.queue_gen {
                        // A consumer of a deleted queue: what it holds goes
                        // back to that queue, which drops it.
                        let orphans = model
                            .held
                            .iter()
                            .filter(|h| h.consumer == Some(c) && h.generation == generation)
                            .count();
                        model.consumers[c].in_flight -= orphans as u32;
                        continue;
                    }
                    let unsettled: Vec<MMsg> = model
                        .held
                        .iter()
                        .filter(|h| h.consumer == Some(c) && h.generation == generation)
                        .map(|h| h.msg.clone())
                        .collect();
                    if model.is_open(c) {
                        model.remove_consumer(c, unsettled);
                    } else if !unsettled.is_empty() {
                        // A cancelled consumer's deliveries go back as one
                        // requeue, which trims a drop-head queue; with none,
                        // nothing is requeued and nothing trimmed (a queue a
                        // delayed requeue took past its limit stays so).
                        model.consumers[c].in_flight -= unsettled.len() as u32;
                        for msg in unsettled {
                            model.restore(msg, true);
                        }
                        model.drop_heads_over_limit();
                        model.dispatch();
                    }
                }
                let gets: Vec<MMsg> = model
                    .held
                    .iter()
                    .filter(|h| {
                        h.consumer.is_none() && h.generation == generation && h.queue_gen == model.queue_gen
                    })
                    .map(|h| h.msg.clone())
                    .collect();
                for msg in gets {
                    model.get_unacked -= 1;
                    model.restore(msg, true);
                    model.drop_heads_over_limit();
                    model.dispatch();
                }
                model.generation += 1;
                real.conn = real.broker.connect();
            }
        }
        // After every step, every figure agrees.
        let work = real.broker.queue_stats(WORK).unwrap();
        let dlq = real.broker.queue_stats(DLQ).unwrap();
        prop_assert_eq!(
            (work.messages_ready, work.messages_delayed, work.messages_unacknowledged, work.consumers),
            (model.ready.len(), model.delayed.len(), model.unacked(), model.ring.len()),
            "{}",
            at("work figures (ready, delayed, unacked, consumers)")
        );
        prop_assert_eq!(dlq.messages_ready, model.dead.len(), "{}", at("dead letters"));
        for (c, consumer) in model.consumers.iter().enumerate() {
            if consumer.prefetch > 0 {
                prop_assert!(consumer.in_flight <= consumer.prefetch, "{}", at(&format!("prefetch of {c}")));
            }
        }
    }

    // At the end the dead-letter queue holds exactly the model's dead, and
    // settling everything then draining leaves exactly the live messages.
    let mut dead: Vec<u64> =
        std::iter::from_fn(|| real.conn.get(DLQ, true).unwrap()).map(|d| id_of(&d)).collect();
    dead.sort_unstable();
    let mut expected = model.dead.clone();
    expected.sort_unstable();
    prop_assert_eq!(dead, expected, "dead-letter queue contents");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("INTEROFFICE_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000)
}

proptest! {
    #![proptest_config(Config { cases: cases(), max_shrink_iters: 10_000, ..Config::default() })]

    #[test]
    fn the_broker_behaves_as_the_reference_model(scenario in scenario()) {
        run(&scenario)?;
    }
}
