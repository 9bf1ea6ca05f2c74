//! Fault injection, for resilience tests of the user's own services: drop,
//! duplicate or delay chosen messages on their way into queues (by queue,
//! routing key, or probability with a seed), and crash a connection
//! ([`Connection::crash`](crate::Connection::crash)), so a test can prove
//! its handlers are idempotent and retry-safe.
//!
//! Off by default, at the cost of one relaxed atomic load per enqueue.
//! Faults apply where a message enters a queue, so every figure stays
//! consistent: a dropped message never entered the queue (its publish still
//! counts it as routed, as a message lost by the network would be), a
//! duplicate is two messages in the queue, a delayed one waits as a delayed
//! message does.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::exchange::topic::pattern_matches;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// What a fault does to a message entering a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum FaultAction {
    /// The message does not enter the queue.
    Drop,
    /// The message enters the queue twice: its consumers see it twice.
    Duplicate,
    /// The message waits this long before it can be delivered (and then
    /// joins the tail of the queue).
    Delay(Duration),
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAction::Drop => f.write_str("dropped"),
            FaultAction::Duplicate => f.write_str("duplicated"),
            FaultAction::Delay(d) => write!(f, "delayed {d:?}"),
        }
    }
}

/// One fault rule: which messages, how often, what happens to them.
///
/// ```
/// use interoffice::{Fault, FaultAction};
/// // Every other message for `billing` (on average, reproducibly) arrives twice.
/// let fault = Fault { queue: Some("billing".into()), probability: 0.5, ..Fault::new(FaultAction::Duplicate) };
/// # drop(fault);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Only messages entering this queue; `None` for any queue.
    pub queue: Option<String>,
    /// Only messages whose routing key matches this topic pattern (`*` one
    /// word, `#` any number; a plain key matches itself); `None` for any key.
    pub routing_key: Option<String>,
    /// The chance a matching message is hit, from 0.0 to 1.0; drawn from
    /// the injector's seeded generator, so a test run is reproducible.
    pub probability: f64,
    /// At most this many messages are hit; `None` for no limit.
    pub limit: Option<u64>,
    /// What happens to them.
    pub action: FaultAction,
}

impl Fault {
    /// A rule hitting every message with `action`.
    pub fn new(action: FaultAction) -> Self {
        Fault { queue: None, routing_key: None, probability: 1.0, limit: None, action }
    }
}

/// A fault that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectedFault {
    /// The queue the message was entering.
    pub queue: String,
    /// Its routing key.
    pub routing_key: String,
    /// What was done.
    pub action: FaultAction,
}

#[derive(Debug, Default)]
struct Rules {
    rules: Vec<(Fault, u64)>,
    rng: u64,
    injected: Vec<InjectedFault>,
}

/// A broker's fault rules.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: AtomicBool,
    rules: Mutex<Rules>,
}

impl Faults {
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The fault to apply to a message with `routing_key` entering `queue`, if any.
    #[cold]
    pub(crate) fn decide(&self, queue: &str, routing_key: &str) -> Option<FaultAction> {
        let mut rules = self.rules.lock();
        let Rules { rules: list, rng, injected } = &mut *rules;
        for (fault, hits) in list.iter_mut() {
            if fault.queue.as_deref().is_some_and(|q| q != queue)
                || fault.routing_key.as_deref().is_some_and(|p| !pattern_matches(p, routing_key))
                || fault.limit.is_some_and(|limit| *hits >= limit)
            {
                continue;
            }
            // xorshift64: reproducible from the seed, draw by draw.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let draw = (*rng >> 11) as f64 / (1_u64 << 53) as f64;
            if draw < fault.probability {
                *hits += 1;
                injected.push(InjectedFault {
                    queue: queue.to_owned(),
                    routing_key: routing_key.to_owned(),
                    action: fault.action,
                });
                return Some(fault.action);
            }
        }
        None
    }
}

/// Injects faults into a broker: see [`Broker::inject_faults`](crate::Broker::inject_faults).
/// The rules stay until [`clear`](Self::clear) or until the injector is
/// dropped.
#[must_use = "the faults are cleared when the injector is dropped"]
pub struct FaultInjector {
    pub(crate) faults: Arc<Faults>,
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjector").field("injected", &self.injected().len()).finish()
    }
}

impl FaultInjector {
    pub(crate) fn new(faults: Arc<Faults>, seed: u64) -> Self {
        faults.rules.lock().rng = seed | 1;
        FaultInjector { faults }
    }

    /// Adds a rule (rules are tried in the order added; the first that
    /// hits applies).
    pub fn add(&self, fault: Fault) -> &Self {
        self.faults.rules.lock().rules.push((fault, 0));
        self.faults.active.store(true, Ordering::SeqCst);
        self
    }

    /// Removes every rule; what was injected stays listed.
    pub fn clear(&self) {
        self.faults.rules.lock().rules.clear();
        self.faults.active.store(false, Ordering::SeqCst);
    }

    /// The faults applied so far, in order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.faults.rules.lock().injected.clone()
    }
}

impl Drop for FaultInjector {
    fn drop(&mut self) {
        self.clear();
    }
}
