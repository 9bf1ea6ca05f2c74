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
use crate::core::RunOnce;
use crate::delivery::Delivery;
use crate::error::TryRecvError;
use crate::sync::{Arc, AtomicBool, Ordering};

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
