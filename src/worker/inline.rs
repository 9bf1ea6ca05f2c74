//! Workers of a deterministic broker: no threads of their own; their
//! handlers run on the thread that asks for it ([`Broker::run_until_idle`],
//! [`Broker::settle`], a `call` waiting for its reply), one delivery at a
//! time, workers in the order they were started. With a manual clock and
//! no thread of the bus's own, the same test makes the same interleaving on
//! every run.
//!
//! [`Broker::run_until_idle`]: crate::Broker::run_until_idle
//! [`Broker::settle`]: crate::Broker::settle

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{Counts, FailureHook, Handled, OnError, settle};
use crate::consumer::Consumer;
use crate::delivery::Delivery;
use crate::error::TryRecvError;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering, Weak};

/// A handler as a worker runs it: how each delivery went.
pub(super) type Step = dyn Fn(&Delivery) -> Handled + Send + Sync;

/// One worker run by hand.
pub(crate) struct InlineWorker {
    pub(super) consumers: Vec<Arc<Consumer>>,
    pub(super) step: Arc<Step>,
    pub(super) on_error: OnError,
    pub(super) on_failure: Option<FailureHook>,
    pub(super) counts: Arc<Counts>,
    /// Set while one of its handlers runs: a handler that waits for a reply
    /// pumps the other workers, never its own (it handles one at a time,
    /// as a thread would).
    busy: AtomicBool,
    /// Per consumer: its end was reported (once, as a thread reports it).
    ended: Vec<AtomicBool>,
}

impl std::fmt::Debug for InlineWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineWorker").field("consumers", &self.consumers).finish_non_exhaustive()
    }
}

impl InlineWorker {
    pub(super) fn new(
        consumers: Vec<Arc<Consumer>>,
        step: Arc<Step>,
        on_error: OnError,
        on_failure: Option<FailureHook>,
        counts: Arc<Counts>,
    ) -> Self {
        let ended = consumers.iter().map(|_| AtomicBool::new(false)).collect();
        InlineWorker { consumers, step, on_error, on_failure, counts, busy: AtomicBool::new(false), ended }
    }

    /// Whether any consumer still takes messages.
    pub(super) fn is_running(&self) -> bool {
        self.consumers.iter().any(|c| !c.is_cancelled())
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

impl RunOnce for InlineWorker {
    fn run_once(&self) -> usize {
        if self.busy.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let mut ran = 0;
        for (consumer, ended) in self.consumers.iter().zip(&self.ended) {
            if ended.load(Ordering::Acquire) {
                continue;
            }
            match consumer.try_recv() {
                Ok(delivery) => {
                    ran += 1;
                    let handled = {
                        let _scope = crate::conversation::enter(delivery.message());
                        let _span = crate::trace::handling(consumer.queue(), delivery.message());
                        catch_unwind(AssertUnwindSafe(|| (self.step)(&delivery)))
                    };
                    if catch_unwind(AssertUnwindSafe(|| {
                        settle(delivery, handled, self.on_error, &self.counts, self.on_failure.as_ref())
                    }))
                    .is_err()
                    {
                        Counts::add(&self.counts.panicked);
                    }
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Closed(reason)) => {
                    ended.store(true, Ordering::Release);
                    self.counts.ended(consumer.queue(), &reason);
                }
            }
        }
        self.busy.store(false, Ordering::Release);
        ran
    }
}

/// The workers of a deterministic broker, in the order they started.
#[derive(Debug, Default)]
pub(crate) struct InlineWorkers {
    list: Mutex<Vec<Weak<dyn RunOnce>>>,
}

impl InlineWorkers {
    pub(crate) fn register(&self, worker: &Arc<InlineWorker>) {
        let worker: Arc<dyn RunOnce> = Arc::clone(worker) as Arc<dyn RunOnce>;
        self.list.lock().push(Arc::downgrade(&worker));
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
