//! What every virtual host of a broker shares: its settings, clock and
//! timers, ids and generated names, the memory alarm, the settle counters,
//! the observers, the fault rules and the inline workers (the registry:
//! what a worker does when run is [`crate::worker`]'s).
//!
//! A lower layer than [`crate::vhost`]: a virtual host holds an
//! `Arc<Core>`, and nothing here knows about virtual hosts, connections or
//! access control.

use crate::durable::StoreError;
use std::hash::BuildHasher;

use crate::clock::Clock;
use crate::conversation::Conversations;
use crate::faults::Faults;
use crate::flow::Flow;
use crate::observe::Observers;
use crate::settle::Activity;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, Weak};
use crate::timer::Timers;

/// The settings the virtual hosts read (from
/// [`BrokerOptions`](crate::BrokerOptions)).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The largest message body accepted, in bytes.
    pub(crate) max_message_size: usize,
    /// The clock every time-based policy reads.
    pub(crate) clock: Clock,
    /// Whether queues keep message statistics.
    pub(crate) statistics: bool,
}

/// How the services start (from [`BrokerOptions`](crate::BrokerOptions)).
#[derive(Debug, Clone)]
pub(crate) struct Startup {
    pub(crate) settings: Settings,
    pub(crate) memory_high_watermark: Option<usize>,
    pub(crate) inline_workers: bool,
    pub(crate) name_seed: Option<u64>,
    /// The data directory's store, for a broker opened on one.
    pub(crate) store: Option<Arc<crate::durable::Store>>,
    /// Where the durable topology goes, with a store.
    pub(crate) topology_journal: Option<Arc<dyn TopologyJournal>>,
}

/// Where the durable topology is recorded, for a broker with a data
/// directory: the topology layer tells it every change, under its registry
/// lock and before the change is visible, so that nothing can be routed to
/// a durable queue the store does not know. Implemented by the broker (which
/// writes RabbitMQ definitions); the store itself knows only opaque entries.
pub(crate) trait TopologyJournal: Send + Sync + std::fmt::Debug {
    fn exchange_declared(&self, vhost: &str, exchange: &crate::exchange::Exchange) -> Result<(), StoreError>;
    fn exchange_deleted(&self, vhost: &str, name: &str);
    /// The queue's handle on the store if it is durable (exclusive queues
    /// never are); a queue the store recovered gets its old id back.
    fn queue_declared(
        &self,
        vhost: &str,
        name: &str,
        options: &crate::queue::QueueOptions,
        policy: &crate::queue::QueuePolicy,
    ) -> Result<Option<Arc<crate::durable::QueueJournal>>, StoreError>;
    fn queue_deleted(&self, vhost: &str, name: &str);
    /// Records the binding if both its ends are durable.
    fn bound(&self, vhost: &str, binding: &crate::exchange::BindingInfo) -> Result<(), StoreError>;
    fn unbound(&self, vhost: &str, binding: &crate::exchange::BindingInfo);
    /// A virtual host was added (kept even while it holds nothing durable).
    fn vhost_added(&self, vhost: &str) -> Result<(), StoreError>;
    fn vhost_deleted(&self, vhost: &str);
}

/// What a link to RabbitMQ tells the overview (see `bridge::Link`).
pub(crate) trait ReportsLink: Send + Sync {
    fn overview(&self) -> crate::overview::LinkOverview;
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
    pub(crate) settings: Settings,
    /// Links to RabbitMQ started on this broker's connections, while they live.
    links: Mutex<Vec<Weak<dyn ReportsLink>>>,
    /// The data directory's store (durable queues' persistent messages and
    /// the durable topology), for a broker opened on one.
    pub(crate) store: Option<Arc<crate::durable::Store>>,
    pub(crate) topology_journal: Option<Arc<dyn TopologyJournal>>,
}

impl Core {
    pub(crate) fn new(options: Startup) -> Self {
        Core {
            next_id: AtomicU64::new(1),
            name_seed: {
                let seed = options.name_seed.unwrap_or_else(|| {
                    std::collections::hash_map::RandomState::new().hash_one(0x696e_7465_726f_6666_u64)
                });
                foldhash::fast::FixedState::with_seed(seed)
            },
            timers: Timers::new(options.settings.clock.clone()),
            flow: options.memory_high_watermark.map(|w| Arc::new(Flow::new(w))),
            activity: Arc::default(),
            conversations: Conversations::default(),
            observers: Arc::default(),
            inline_workers: options.inline_workers.then(InlineWorkers::default),
            faults: Arc::default(),
            settings: options.settings,
            links: Mutex::default(),
            store: options.store,
            topology_journal: options.topology_journal,
        }
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.settings.clock
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

    /// Lists a link in the overview while it lives.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn register_link(&self, link: Weak<dyn ReportsLink>) {
        let mut links = self.links.lock();
        links.retain(|l| l.strong_count() > 0);
        links.push(link);
    }

    /// The live links' figures, by name.
    pub(crate) fn link_overviews(&self) -> Vec<crate::overview::LinkOverview> {
        let live: Vec<Arc<dyn ReportsLink>> = self.links.lock().iter().filter_map(Weak::upgrade).collect();
        let mut out: Vec<_> = live.iter().map(|l| l.overview()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
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

/// What the registry knows of a worker. A trait object with `Send + Sync`
/// spelled out: the broker holds its workers, which hold consumers, which
/// hold queues, which reach the broker again, and without the cut every
/// user's `Connection: Send` check would walk that loop structurally deep
/// enough to overflow the compiler's recursion limit.
pub(crate) trait RunOnce: Send + Sync {
    /// Handles one waiting delivery per consumer, in order; how many ran.
    fn run_once(&self) -> usize;
}

/// The workers of a deterministic broker, in the order they started.
#[derive(Debug, Default)]
pub(crate) struct InlineWorkers {
    list: Mutex<Vec<Weak<dyn RunOnce>>>,
}

impl InlineWorkers {
    pub(crate) fn register(&self, worker: &Arc<dyn RunOnce>) {
        self.list.lock().push(Arc::downgrade(worker));
    }

    /// Runs handlers until none has a delivery waiting; how many ran. Each
    /// round gives every worker one turn per consumer, in start order, so a
    /// chain of handlers interleaves the same way on every run.
    pub(crate) fn run_until_idle(&self) -> usize {
        let mut total = 0;
        loop {
            // Copied out: handlers run without the list's lock, and may
            // start or stop workers.
            let workers: Vec<Arc<dyn RunOnce>> = {
                let mut list = self.list.lock();
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let ran: usize = workers.iter().map(|w| w.run_once()).sum();
            if ran == 0 {
                return total;
            }
            total += ran;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_unique_and_shaped_like_rabbitmqs() {
        let settings = Settings { max_message_size: 1 << 20, clock: Clock::system(), statistics: true };
        let core = Core::new(Startup {
            settings,
            memory_high_watermark: None,
            inline_workers: false,
            name_seed: None,
            store: None,
            topology_journal: None,
        });
        let a = core.generate_name("amq.gen-");
        let b = core.generate_name("amq.gen-");
        assert_ne!(a, b);
        assert!(a.starts_with("amq.gen-") && a.len() == 30, "{a}");
    }
}
