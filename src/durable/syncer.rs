//! Waiting for durability: the sync policies, group commit, and the wakers
//! of publishes that wait without blocking.
//!
//! Group commit is leader/follower: a publish that finds its position not
//! yet synced and no sync running leads one; publishes that arrive while it
//! runs wait for the next, which one of them leads, covering all of them.
//! Under `Grouped` a leader first gathers: it waits while other publishes
//! are still on their way to waiting (counted in `publishing`), or while
//! fewer wait than the last sync covered (concurrent publishers come back
//! together), up to the policy's delay and count — so concurrent
//! publishers share one sync, and a lone publisher syncs at once. Publishes that wait without blocking
//! ([`Confirm`](crate::Confirm)) are served the same way by a sync thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{Store, StoreError, SyncPolicy};

/// How long a gathering leader waits at a time for a publish on its way.
const QUIET: Duration = Duration::from_micros(50);

#[derive(Debug, Default)]
struct SyncState {
    /// Publishes blocked waiting.
    waiting: usize,
    /// Publishes waiting without blocking.
    wakers: Vec<(u64, Waker)>,
    /// Whether a sync (or its gathering) is running.
    syncing: bool,
    /// How many publishes the last sync covered: a gathering leader
    /// expects as many again (concurrent publishers come back together).
    last_group: usize,
    /// Log ranges whose sync failed: their publishes fail.
    failures: Vec<(u64, u64, StoreError)>,
    stop: bool,
}

/// Syncs the log for the publishes that wait, per the policy.
#[derive(Debug)]
pub(crate) struct Syncer {
    policy: SyncPolicy,
    state: Mutex<SyncState>,
    /// Publishes blocked until a sync ends.
    done: Condvar,
    /// A gathering leader, and the sync thread, waiting for work.
    work: Condvar,
    synced: AtomicU64,
    /// Whether any sync ever failed: then a synced position no longer
    /// proves a publish durable without a look at the failures.
    failed_once: AtomicBool,
    /// Publishes routing now, which may be about to wait: a gathering
    /// leader waits for them.
    publishing: AtomicUsize,
    syncs: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Counts a publish as on its way to waiting while it lives.
pub(crate) struct Publishing<'a>(&'a Syncer);

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.0.publishing.fetch_sub(1, Ordering::AcqRel);
        // A leader gathering may be waiting for this one.
        self.0.work.notify_all();
    }
}

impl Syncer {
    pub(crate) fn new(policy: SyncPolicy) -> Syncer {
        Syncer {
            policy,
            state: Mutex::default(),
            done: Condvar::new(),
            work: Condvar::new(),
            synced: AtomicU64::new(0),
            failed_once: AtomicBool::new(false),
            publishing: AtomicUsize::new(0),
            syncs: AtomicU64::new(0),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread that syncs for publishes waiting without blocking
    /// (none for `OsBuffered`, which never syncs).
    pub(crate) fn start(&self, store: &Arc<Store>) {
        if self.policy == SyncPolicy::OsBuffered {
            return;
        }
        let store = Arc::downgrade(store);
        let spawned = std::thread::Builder::new().name("interoffice-sync".into()).spawn(move || run(&store));
        *self.thread.lock() = spawned.ok();
    }

    /// Stops the sync thread; a publish still waiting without blocking
    /// then fails (the store is closing).
    pub(crate) fn stop(&self) {
        let wakers = {
            let mut state = self.state.lock();
            state.stop = true;
            std::mem::take(&mut state.wakers)
        };
        self.work.notify_all();
        self.done.notify_all();
        for (_, waker) in wakers {
            waker.wake();
        }
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Counts a publish as on its way, until the guard drops.
    pub(crate) fn publishing(&self) -> Publishing<'_> {
        self.publishing.fetch_add(1, Ordering::AcqRel);
        Publishing(self)
    }

    fn failure(state: &SyncState, lsn: u64) -> Option<StoreError> {
        state.failures.iter().find(|(from, to, _)| *from < lsn && lsn <= *to).map(|(.., e)| e.clone())
    }

    /// Whether `lsn` is settled: synced (and not in a failed sync), or in
    /// a failed one. Without a lock when no sync ever failed.
    fn covered(&self, state: Option<&SyncState>, lsn: u64) -> Option<Result<(), StoreError>> {
        if self.failed_once.load(Ordering::Acquire) {
            let state = state?;
            if let Some(e) = Self::failure(state, lsn) {
                return Some(Err(e));
            }
        }
        (self.synced() >= lsn).then_some(Ok(()))
    }

    /// Blocks until log position `lsn` is durable per the policy.
    pub(crate) fn wait(&self, store: &Store, lsn: u64) -> Result<(), StoreError> {
        match self.policy {
            SyncPolicy::OsBuffered => Ok(()),
            SyncPolicy::EveryMessage => self.lead_or_follow(store, lsn, false),
            SyncPolicy::Grouped { .. } => self.lead_or_follow(store, lsn, true),
        }
    }

    fn lead_or_follow(&self, store: &Store, lsn: u64, gather: bool) -> Result<(), StoreError> {
        if let Some(outcome) = self.covered(None, lsn) {
            return outcome;
        }
        let mut state = self.state.lock();
        state.waiting += 1;
        self.work.notify_all();
        let outcome = loop {
            if let Some(outcome) = self.covered(Some(&state), lsn) {
                break outcome;
            }
            if state.syncing {
                self.done.wait(&mut state);
                continue;
            }
            state = self.lead(store, state, gather);
        };
        state.waiting -= 1;
        outcome
    }

    /// Runs one sync as its leader: gathers (if asked), syncs without the
    /// lock, then wakes everyone it covered.
    fn lead<'a>(
        &'a self,
        store: &Store,
        mut state: MutexGuard<'a, SyncState>,
        gather: bool,
    ) -> MutexGuard<'a, SyncState> {
        state.syncing = true;
        if gather && let SyncPolicy::Grouped { max_delay, max_messages } = self.policy {
            let first = Instant::now();
            loop {
                let pending = state.waiting + state.wakers.len();
                let elapsed = first.elapsed();
                let more_coming = pending < state.last_group || self.publishing.load(Ordering::Acquire) > 0;
                if pending >= max_messages.max(1) || elapsed >= max_delay || !more_coming || state.stop {
                    break;
                }
                let _ = self.work.wait_for(&mut state, QUIET.min(max_delay - elapsed));
            }
        }
        let group = state.waiting + state.wakers.len();
        drop(state);
        let _ = self.sync_now(store);
        let mut state = self.state.lock();
        state.syncing = false;
        state.last_group = group;
        let synced = self.synced();
        let failures = std::mem::take(&mut state.failures);
        let (ready, waiting): (Vec<_>, Vec<_>) = state.wakers.drain(..).partition(|(lsn, _)| {
            *lsn <= synced || failures.iter().any(|(from, to, _)| *from < *lsn && *lsn <= *to)
        });
        state.wakers = waiting;
        state.failures = failures;
        self.done.notify_all();
        if ready.is_empty() {
            return state;
        }
        // A waker is user code: never under the lock.
        drop(state);
        for (_, waker) in ready {
            waker.wake();
        }
        self.state.lock()
    }

    /// For a publish that waits without blocking: ready once `lsn` is
    /// durable, else registers the waker for the sync thread.
    pub(crate) fn poll(&self, lsn: u64, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        if self.policy == SyncPolicy::OsBuffered {
            return Poll::Ready(Ok(()));
        }
        if let Some(outcome) = self.covered(None, lsn) {
            return Poll::Ready(outcome);
        }
        let mut state = self.state.lock();
        if let Some(outcome) = self.covered(Some(&state), lsn) {
            return Poll::Ready(outcome);
        }
        if state.stop || self.thread.lock().is_none() {
            return Poll::Ready(Err(StoreError::Io("the store is closed".into())));
        }
        if !state.wakers.iter().any(|(at, w)| *at == lsn && w.will_wake(cx.waker())) {
            state.wakers.push((lsn, cx.waker().clone()));
        }
        self.work.notify_all();
        Poll::Pending
    }

    /// Writes out and syncs; records the outcome.
    fn sync_now(&self, store: &Store) -> Result<u64, StoreError> {
        let from = self.synced();
        let outcome = store.write_out().and_then(|target| {
            store.sync_handle().sync_data().map_err(|e| StoreError::from_io(&e))?;
            Ok(target)
        });
        self.syncs.fetch_add(1, Ordering::Relaxed);
        match &outcome {
            Ok(target) => {
                self.synced.fetch_max(*target, Ordering::AcqRel);
            }
            Err(e) => {
                let to = store.appended();
                self.failed_once.store(true, Ordering::Release);
                self.state.lock().failures.push((from, to, e.clone()));
            }
        }
        outcome
    }
}

/// The sync thread: leads a sync whenever a publish waits without
/// blocking and no blocked publish is leading one.
fn run(store: &Weak<Store>) {
    loop {
        let Some(store) = store.upgrade() else { return };
        let syncer = &store.syncer;
        let mut state = syncer.state.lock();
        loop {
            if state.stop {
                return;
            }
            let synced = syncer.synced();
            if !state.syncing && state.wakers.iter().any(|(lsn, _)| *lsn > synced) {
                break;
            }
            // Wakes now and then to let go of a store that was dropped.
            if syncer.work.wait_for(&mut state, Duration::from_millis(100)).timed_out()
                && Arc::strong_count(&store) <= 1
            {
                return;
            }
        }
        drop(syncer.lead(&store, state, true));
    }
}
