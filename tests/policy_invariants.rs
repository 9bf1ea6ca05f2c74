//! Property-based tests of the queue policies together: random queues (length
//! limit and overflow, message TTL, priorities, delivery limit, a dead-letter
//! queue) under random publishes (priorities, TTLs, delays), gets settled in
//! every way (ack, requeue, discard, delayed requeue, drop) and clock
//! advances, checked against a model of time.
//!
//! Checked after every step:
//! - nothing lost, nothing made up: ready + delayed + acknowledged +
//!   dead-lettered = accepted publishes + dead-lettered copies of refused ones;
//! - the length limit always holds (ready + delayed);
//! - a message is never handed out before it is visible (its delay) nor at or
//!   after its expiry, and its delivery count is its number of returns;
//! - a message never goes past the delivery limit;
//! - every dead letter names a reason that could have happened to it.
//!
//! At the end the clock runs far ahead and the queue is drained: every
//! accepted message was acknowledged or dead-lettered exactly once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, Connection, Delivery, FieldValue, ManualClock, Message, Overflow, PublishError,
    QueueOptions,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const QUEUE: &str = "q";
const SINK: &str = "sink";

#[derive(Debug, Clone)]
struct Policy {
    max_length: Option<usize>,
    overflow: Overflow,
    message_ttl: Option<u64>,
    max_priority: Option<u8>,
    delivery_limit: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Discard,
    RequeueAfter(u64),
    Drop,
}

#[derive(Debug, Clone)]
enum Op {
    Publish { priority: Option<u8>, ttl: Option<u64>, delay: Option<u64> },
    Get(Settle),
    Advance(u64),
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop::option::of(0usize..6),
        prop_oneof![
            Just(Overflow::DropHead),
            Just(Overflow::RejectPublish),
            Just(Overflow::RejectPublishDlx)
        ],
        prop::option::of(0u64..60),
        prop::option::of(1u8..5),
        prop::option::of(0u32..3),
    )
        .prop_map(|(max_length, overflow, message_ttl, max_priority, delivery_limit)| Policy {
            max_length,
            overflow,
            message_ttl,
            max_priority,
            delivery_limit,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let settle = prop_oneof![
        3 => Just(Settle::Ack),
        2 => Just(Settle::Requeue),
        1 => Just(Settle::Discard),
        2 => (1u64..30).prop_map(Settle::RequeueAfter),
        1 => Just(Settle::Drop),
    ];
    prop_oneof![
        4 => (prop::option::of(0u8..7), prop::option::of(0u64..50), prop::option::of(1u64..40))
            .prop_map(|(priority, ttl, delay)| Op::Publish { priority, ttl, delay }),
        3 => settle.prop_map(Op::Get),
        2 => (0u64..30).prop_map(Op::Advance),
    ]
}

/// What the model knows about one accepted message.
#[derive(Debug)]
struct Known {
    /// Milliseconds since the start at which it becomes visible.
    visible_at: u64,
    /// Its TTL, counted from when it becomes visible the first time.
    ttl: Option<u64>,
    /// When it expires, once known (set when it first becomes visible).
    expires_at: Option<u64>,
    returns: u32,
}

struct Harness {
    clock: ManualClock,
    _broker: Broker,
    conn: Connection,
    policy: Policy,
    now: u64,
    next_id: u64,
    known: HashMap<u64, Known>,
    acked: HashSet<u64>,
    accepted: u64,
    refused: u64,
    refused_copies: u64,
}

fn id_of(d: &Delivery) -> u64 {
    u64::from_le_bytes(d.body()[..8].try_into().expect("an 8-byte id"))
}

fn reason_of(d: &Delivery) -> Option<String> {
    let deaths = d.header("x-death")?.as_array()?;
    deaths.first()?.as_table()?.get("reason")?.as_str().map(str::to_owned)
}

impl Harness {
    fn new(policy: Policy) -> Result<Self, TestCaseError> {
        let clock = ManualClock::new();
        let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
        let conn = broker.connect();
        conn.declare_queue(SINK, QueueOptions::default()).map_err(fail)?;
        conn.declare_queue(
            QUEUE,
            QueueOptions {
                max_length: policy.max_length,
                overflow: policy.overflow,
                message_ttl: policy.message_ttl.map(Duration::from_millis),
                max_priority: policy.max_priority,
                delivery_limit: policy.delivery_limit,
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some(SINK.into()),
                ..Default::default()
            },
        )
        .map_err(fail)?;
        Ok(Harness {
            clock,
            _broker: broker,
            conn,
            policy,
            now: 0,
            next_id: 0,
            known: HashMap::new(),
            acked: HashSet::new(),
            accepted: 0,
            refused: 0,
            refused_copies: 0,
        })
    }

    fn effective_ttl(&self, ttl: Option<u64>) -> Option<u64> {
        match (self.policy.message_ttl, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Publish { priority, ttl, delay } => {
                let id = self.next_id;
                self.next_id += 1;
                let mut msg = Message::new(id.to_le_bytes().to_vec());
                if let Some(p) = priority {
                    msg = msg.with_priority(p);
                }
                if let Some(ttl) = ttl {
                    msg = msg.with_expiration(Duration::from_millis(ttl));
                }
                if let Some(delay) = delay {
                    msg = msg.with_delay(Duration::from_millis(delay));
                }
                match self.conn.publish("", QUEUE, msg) {
                    Ok(routed) => {
                        prop_assert_eq!(routed.queues(), 1);
                        self.accepted += 1;
                        let visible_at = self.now + delay.unwrap_or(0);
                        let ttl = self.effective_ttl(ttl);
                        let expires_at = if delay.is_none() { ttl.map(|t| self.now + t) } else { None };
                        self.known.insert(id, Known { visible_at, ttl, expires_at, returns: 0 });
                    }
                    Err(PublishError::Rejected { message, routed, .. }) => {
                        prop_assert!(self.policy.overflow != Overflow::DropHead, "drop-head never refuses");
                        prop_assert_eq!(routed, 0);
                        prop_assert_eq!(u64::from_le_bytes(message.body()[..8].try_into().unwrap()), id);
                        self.refused += 1;
                        if self.policy.overflow == Overflow::RejectPublishDlx {
                            self.refused_copies += 1;
                        }
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
            Op::Advance(ms) => {
                self.clock.advance(Duration::from_millis(ms));
                self.now += ms;
            }
            Op::Get(settle) => {
                let Some(d) = self.conn.get(QUEUE, false).map_err(fail)? else { return Ok(()) };
                let id = id_of(&d);
                let now = self.now;
                let known = self.known.get_mut(&id).ok_or_else(|| fail(format!("unknown id {id}")))?;
                prop_assert!(
                    now >= known.visible_at,
                    "id {} handed out at {} before visible at {}",
                    id,
                    now,
                    known.visible_at
                );
                if known.expires_at.is_none() {
                    known.expires_at = known.ttl.map(|t| known.visible_at + t);
                }
                if let Some(at) = known.expires_at {
                    prop_assert!(now < at, "id {} handed out at {} but expired at {}", id, now, at);
                }
                prop_assert_eq!(d.delivery_count(), known.returns, "delivery count of {}", id);
                prop_assert_eq!(d.redelivered(), known.returns > 0);
                if let Some(limit) = self.policy.delivery_limit {
                    prop_assert!(known.returns <= limit);
                    let header = d.header("x-delivery-count").and_then(FieldValue::as_i64);
                    prop_assert_eq!(header, Some(i64::from(known.returns)));
                }
                match settle {
                    Settle::Ack => {
                        d.ack().map_err(fail)?;
                        self.acked.insert(id);
                    }
                    Settle::Requeue => {
                        known.returns += 1;
                        d.nack(true).map_err(fail)?;
                    }
                    Settle::Drop => {
                        known.returns += 1;
                        drop(d);
                    }
                    Settle::Discard => d.nack(false).map_err(fail)?,
                    Settle::RequeueAfter(ms) => {
                        known.returns += 1;
                        known.visible_at = now + ms;
                        d.nack_with_delay(Duration::from_millis(ms)).map_err(fail)?;
                    }
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let q = self.conn.queue_stats(QUEUE).map_err(fail)?;
        let sink = self.conn.queue_stats(SINK).map_err(fail)?;
        prop_assert_eq!(q.messages_unacknowledged, 0);
        if let Some(max) = self.policy.max_length {
            prop_assert!(q.messages_ready + q.messages_delayed <= max, "{:?} over {}", q, max);
        }
        let held =
            (q.messages_ready + q.messages_delayed + sink.messages_ready) as u64 + self.acked.len() as u64;
        prop_assert_eq!(held, self.accepted + self.refused_copies, "conservation: {:?} {:?}", q, sink);
        prop_assert_eq!(q.dead_letter_failures, 0);
        prop_assert_eq!(q.dropped.total(), 0, "everything has somewhere to go");
        prop_assert_eq!(q.dead_lettered.total(), sink.messages_ready as u64);
        Ok(())
    }

    fn finish(mut self) -> Result<(), TestCaseError> {
        // Far enough for every delay and TTL to pass.
        self.clock.advance(Duration::from_secs(3600));
        while let Some(d) = self.conn.get(QUEUE, false).map_err(fail)? {
            let id = id_of(&d);
            prop_assert!(self.known.get(&id).is_some_and(|k| k.ttl.is_none()), "id {} outlived its TTL", id);
            d.ack().map_err(fail)?;
            prop_assert!(self.acked.insert(id), "id {} acked twice", id);
        }
        let mut dead = HashSet::new();
        let mut copies = 0;
        while let Some(d) = self.conn.get(SINK, true).map_err(fail)? {
            let id = id_of(&d);
            let reason = reason_of(&d).ok_or_else(|| fail("a dead letter without x-death"))?;
            match self.known.get(&id) {
                None => {
                    prop_assert_eq!(reason.as_str(), "maxlen", "a refused publish's copy");
                    copies += 1;
                }
                Some(known) => {
                    prop_assert!(dead.insert(id), "id {} dead-lettered twice", id);
                    prop_assert!(!self.acked.contains(&id), "id {} both acked and dead-lettered", id);
                    let possible = match reason.as_str() {
                        "expired" => known.ttl.is_some(),
                        "maxlen" => self.policy.max_length.is_some(),
                        "delivery_limit" => self.policy.delivery_limit.is_some_and(|l| known.returns > l),
                        "rejected" => true,
                        other => return Err(fail(format!("unknown reason {other}"))),
                    };
                    prop_assert!(possible, "id {} dead-lettered as {} ({:?})", id, reason, known);
                }
            }
        }
        prop_assert_eq!(copies, self.refused_copies);
        let accounted: HashSet<u64> = self.acked.union(&dead).copied().collect();
        prop_assert_eq!(
            accounted.len() as u64,
            self.accepted,
            "every accepted message acked or dead-lettered"
        );
        Ok(())
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn queue_policies_lose_nothing_and_respect_time_and_limits(
        policy in policy_strategy(),
        ops in prop::collection::vec(op_strategy(), 0..=60),
    ) {
        let mut harness = Harness::new(policy)?;
        for op in &ops {
            harness.run(op)?;
        }
        harness.finish()?;
    }
}
