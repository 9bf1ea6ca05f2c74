//! What every virtual host of a broker shares: its settings, clock and
//! timers, ids and generated names, the memory alarm, the settle counters,
//! the observers, the fault rules and the inline workers.
//!
//! A lower layer than [`crate::vhost`]: a virtual host holds an
//! `Arc<Core>`, and nothing here knows about virtual hosts, connections or
//! access control.

use std::hash::BuildHasher;

use crate::access::AuthBackend;
use crate::clock::{Clock, ManualClock};
use crate::conversation::Conversations;
use crate::faults::Faults;
use crate::flow::Flow;
use crate::observe::Observers;
use crate::settle::Activity;
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::timer::Timers;
use crate::worker::inline::InlineWorkers;

/// Broker-wide settings.
///
/// ```
/// use interoffice::{Broker, BrokerOptions};
/// let broker = Broker::with_options(BrokerOptions { max_message_size: 1 << 20, ..Default::default() });
/// # drop(broker);
/// ```
#[derive(Clone)]
pub struct BrokerOptions {
    /// The largest message body accepted, in bytes (RabbitMQ's
    /// `max_message_size`, 128 MiB by default).
    pub max_message_size: usize,
    /// The clock every time-based policy reads: the system clock by
    /// default, a [`ManualClock`](crate::ManualClock) in tests.
    pub clock: Clock,
    /// Whether queues keep message statistics ([`QueueStats::message_stats`]):
    /// counts of messages published, delivered, fetched, redelivered and
    /// acknowledged. On by default, as with RabbitMQ's management plugin;
    /// the cost of keeping them is measured in the benchmarks (README,
    /// "Benchmarks") and is within a few percent.
    ///
    /// [`QueueStats::message_stats`]: crate::QueueStats::message_stats
    pub statistics: bool,
    /// RabbitMQ's memory high watermark: past this many bytes held in
    /// queues (bodies plus 160 bytes a message, ready and delayed),
    /// publishing is blocked until consumers drain them — `publish` waits,
    /// `try_publish` fails with [`PublishError::Blocked`](crate::PublishError::Blocked),
    /// and [`Connection::flow_events`](crate::Connection::flow_events) tells.
    /// Off (`None`) by default: then nothing is counted and publishing never
    /// blocks; per-queue length limits still apply. See [`crate::FlowEvent`].
    pub memory_high_watermark: Option<usize>,
    /// Workers ([`Connection::worker`](crate::Connection::worker),
    /// [`Connection::serve`](crate::Connection::serve)) start no threads:
    /// their handlers run on the thread that calls
    /// [`Broker::run_until_idle`] or [`Broker::settle`], or that waits in a
    /// [`Connection::call`](crate::Connection::call) — one delivery at a
    /// time, workers in the order they started. Part of
    /// [`Broker::deterministic`]. Off by default. (An
    /// [`AsyncWorker`](crate::AsyncWorker) runs on the executor that polls
    /// it either way.)
    pub inline_workers: bool,
    /// The seed of generated names (`amq.gen-…` queues, `amq.ctag-…`
    /// consumer tags, reply-to addresses, conversation ids): with a seed,
    /// the same operations make the same names on every run. `None` (the
    /// default) seeds them at random, so they cannot be guessed.
    pub name_seed: Option<u64>,
    /// Who decides access (see [`crate::access`]): `None` (the default)
    /// is the broker's built-in [`UserStore`](crate::UserStore), which
    /// [`Broker::add_user`](crate::Broker::add_user) and
    /// [`Broker::set_permissions`](crate::Broker::set_permissions) edit.
    pub auth_backend: Option<Arc<dyn AuthBackend>>,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("max_message_size", &self.max_message_size)
            .field("clock", &self.clock)
            .field("statistics", &self.statistics)
            .field("memory_high_watermark", &self.memory_high_watermark)
            .field("inline_workers", &self.inline_workers)
            .field("name_seed", &self.name_seed)
            .field("auth_backend", &self.auth_backend.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Equal when every setting is, and both use the built-in store or the
/// very same backend.
impl PartialEq for BrokerOptions {
    fn eq(&self, other: &Self) -> bool {
        self.max_message_size == other.max_message_size
            && self.clock == other.clock
            && self.statistics == other.statistics
            && self.memory_high_watermark == other.memory_high_watermark
            && self.inline_workers == other.inline_workers
            && self.name_seed == other.name_seed
            && match (&self.auth_backend, &other.auth_backend) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            }
    }
}

impl Eq for BrokerOptions {}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            max_message_size: 128 << 20,
            clock: Clock::system(),
            statistics: true,
            memory_high_watermark: None,
            inline_workers: false,
            name_seed: None,
            auth_backend: None,
        }
    }
}

impl BrokerOptions {
    /// The options of a deterministic broker on `clock`: workers run
    /// inline, generated names come from a fixed seed (see
    /// [`Broker::deterministic`]).
    pub fn deterministic(clock: &ManualClock) -> Self {
        BrokerOptions { clock: clock.clock(), inline_workers: true, name_seed: Some(0), ..Default::default() }
    }
}

/// The broker-wide services (see the module docs).
#[derive(Debug)]
pub(crate) struct Core {
    next_id: AtomicU64,
    name_seed: foldhash::fast::FixedState,
    /// The memory estimate and alarm, with a watermark set.
    pub(crate) flow: Option<Arc<Flow>>,
    /// Messages between a publish and its queues, or between queues: what
    /// [`Broker::settle`](crate::Broker::settle) must see to be sure. See
    /// [`crate::settle`].
    pub(crate) activity: Arc<Activity>,
    /// The conversations tests follow (see [`crate::conversation`]).
    pub(crate) conversations: Conversations,
    /// Recorders and taps (see [`crate::observe`]).
    pub(crate) observers: Arc<Observers>,
    /// In a deterministic broker, its workers, run by hand.
    pub(crate) inline_workers: Option<InlineWorkers>,
    /// Fault rules a test injected (see [`crate::faults`]).
    pub(crate) faults: Arc<Faults>,
    pub(crate) timers: Arc<Timers>,
    pub(crate) options: BrokerOptions,
}

impl Core {
    pub(crate) fn new(options: BrokerOptions) -> Self {
        Core {
            next_id: AtomicU64::new(1),
            name_seed: {
                let seed = options.name_seed.unwrap_or_else(|| {
                    std::collections::hash_map::RandomState::new().hash_one(0x696e_7465_726f_6666_u64)
                });
                foldhash::fast::FixedState::with_seed(seed)
            },
            timers: Timers::new(options.clock.clone()),
            flow: options.memory_high_watermark.map(|w| Arc::new(Flow::new(w))),
            activity: Arc::default(),
            conversations: Conversations::default(),
            observers: Arc::default(),
            inline_workers: options.inline_workers.then(InlineWorkers::default),
            faults: Arc::default(),
            options,
        }
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.options.clock
    }

    pub(crate) fn timers(&self) -> &Arc<Timers> {
        &self.timers
    }

    /// A fresh id for a queue, exchange, consumer or connection.
    pub(crate) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh, unguessable name with `prefix` (`amq.gen-`, `amq.ctag-`),
    /// shaped like RabbitMQ's.
    pub(crate) fn generate_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let id = self.id();
        let bits = u128::from(self.name_seed.hash_one(id)) << 64 | u128::from(self.name_seed.hash_one(!id));
        let mut name = String::with_capacity(prefix.len() + 22);
        name.push_str(prefix);
        name.extend((0..22).map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char));
        name
    }

    /// Whether the memory alarm is on (never without a watermark).
    pub(crate) fn is_blocked(&self) -> bool {
        self.flow.as_ref().is_some_and(|flow| flow.is_blocked())
    }

    /// Waits while the memory alarm is on, as RabbitMQ blocks a publishing
    /// connection; returns at once without a watermark or alarm.
    pub(crate) fn wait_while_blocked(&self) {
        if let Some(flow) = &self.flow
            && flow.is_blocked()
        {
            flow.wait_unblocked();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.timers.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_unique_and_shaped_like_rabbitmqs() {
        let core = Core::new(BrokerOptions::default());
        let a = core.generate_name("amq.gen-");
        let b = core.generate_name("amq.gen-");
        assert_ne!(a, b);
        assert!(a.starts_with("amq.gen-") && a.len() == 30, "{a}");
    }
}
