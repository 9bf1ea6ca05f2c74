//! Waiting for durability: the sync policies, group commit, and the wakers
//! of publishes that wait without blocking.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Store, StoreError, SyncPolicy};

/// How long appends must pause before a group commit stops gathering:
/// a publisher that is not waiting yet may be about to.
const QUIET: Duration = Duration::from_micros(50);

#[derive(Debug, Default)]
struct SyncState {
    /// The highest log position someone waits for.
    requested: u64,
    /// Publishes waiting (blocked or polled).
    waiting: usize,
    wakers: Vec<(u64, Waker)>,
    /// Log ranges whose sync failed: their publishes fail.
    failures: Vec<(u64, u64, StoreError)>,
    stop: bool,
}

/// Syncs the log for the publishes that wait, per the policy.
#[derive(Debug)]
pub(crate) struct Syncer {
    policy: SyncPolicy,
    state: Mutex<SyncState>,
    /// Publishes blocked until their position is synced.
    done: Condvar,
    /// The sync thread, waiting for work.
    work: Condvar,
    synced: AtomicU64,
    /// Whether any sync ever failed: then a synced position no longer
    /// proves a publish durable without a look at the failures.
    failed_once: AtomicBool,
    /// Appended positions, mirrored for the gathering thread.
    pub(crate) appended: AtomicU64,
    syncs: AtomicU64,
    /// Serialises the syncs publishers do themselves (`EveryMessage`).
    own_sync: Mutex<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
            appended: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            own_sync: Mutex::new(()),
            thread: Mutex::new(None),
        }
    }

    /// Starts the sync thread (not for `OsBuffered`, which never syncs).
    pub(crate) fn start(&self, store: &Arc<Store>) {
        if self.policy == SyncPolicy::OsBuffered {
            return;
        }
        let store = Arc::downgrade(store);
        let spawned = std::thread::Builder::new().name("interoffice-sync".into()).spawn(move || run(&store));
        // Without the thread, blocking publishes under `EveryMessage` still
        // sync themselves; `Grouped` falls back to that too (see `wait`).
        *self.thread.lock() = spawned.ok();
    }

    /// Stops the sync thread, after failing nothing: every waiter is woken
    /// and finds its position synced by the close.
    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.work.notify_all();
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether `lsn` is synced and was not in a failed sync, without a lock
    /// when no sync ever failed.
    fn covered(&self, state: Option<&SyncState>, lsn: u64) -> Option<Result<(), StoreError>> {
        if self.failed_once.load(Ordering::Acquire) {
            let state = state?;
            if let Some(e) = Self::failure(state, lsn) {
                return Some(Err(e));
            }
        }
        (self.synced() >= lsn).then_some(Ok(()))
    }

    fn failure(state: &SyncState, lsn: u64) -> Option<StoreError> {
        state.failures.iter().find(|(from, to, _)| *from < lsn && lsn <= *to).map(|(.., e)| e.clone())
    }

    /// Blocks until log position `lsn` is durable per the policy.
    pub(crate) fn wait(&self, store: &Store, lsn: u64) -> Result<(), StoreError> {
        match self.policy {
            SyncPolicy::OsBuffered => Ok(()),
            SyncPolicy::EveryMessage => self.sync_myself(store, lsn),
            SyncPolicy::Grouped { .. } if self.thread.lock().is_none() => self.sync_myself(store, lsn),
            SyncPolicy::Grouped { .. } => {
                if let Some(outcome) = self.covered(None, lsn) {
                    return outcome;
                }
                let mut state = self.state.lock();
                state.requested = state.requested.max(lsn);
                state.waiting += 1;
                self.work.notify_one();
                let outcome = loop {
                    if let Some(outcome) = self.covered(Some(&state), lsn) {
                        break outcome;
                    }
                    if state.stop {
                        drop(state);
                        let outcome = self.sync_myself(store, lsn);
                        state = self.state.lock();
                        break outcome;
                    }
                    self.done.wait(&mut state);
                };
                state.waiting -= 1;
                outcome
            }
        }
    }

    /// For a publish that waits without blocking: ready once `lsn` is
    /// durable, else registers the waker.
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
        state.requested = state.requested.max(lsn);
        match state.wakers.iter_mut().find(|(at, w)| *at == lsn && w.will_wake(cx.waker())) {
            Some(_) => {}
            None => state.wakers.push((lsn, cx.waker().clone())),
        }
        self.work.notify_one();
        Poll::Pending
    }

    /// Syncs on the caller's thread, unless a sync begun after `lsn` was
    /// written covers it (concurrent callers queue on the lock and mostly
    /// find themselves covered: group commit without a thread).
    fn sync_myself(&self, store: &Store, lsn: u64) -> Result<(), StoreError> {
        let _one = self.own_sync.lock();
        if let Some(outcome) = self.covered(Some(&self.state.lock()), lsn) {
            return outcome;
        }
        self.sync_now(store).map(|_| ())
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
                let to = self.appended.load(Ordering::Acquire);
                self.failed_once.store(true, Ordering::Release);
                self.state.lock().failures.push((from, to, e.clone()));
            }
        }
        outcome
    }
}

/// The sync thread: waits for publishes waiting, gathers more while
/// appends keep coming (up to the policy's delay and count), syncs once for
/// all, wakes them.
fn run(store: &Weak<Store>) {
    loop {
        let Some(store) = store.upgrade() else { return };
        let syncer = &store.syncer;
        let (max_delay, max_messages) = match syncer.policy {
            SyncPolicy::Grouped { max_delay, max_messages } => (max_delay, max_messages.max(1)),
            _ => (Duration::ZERO, 1),
        };
        {
            let mut state = syncer.state.lock();
            while state.requested <= syncer.synced() && !state.stop {
                // Wakes now and then to let go of the store if it was dropped.
                if syncer.work.wait_for(&mut state, Duration::from_millis(100)).timed_out() {
                    drop(state);
                    if Arc::strong_count(&store) <= 1 {
                        return;
                    }
                    state = syncer.state.lock();
                }
            }
            if state.stop && state.requested <= syncer.synced() {
                return;
            }
            let first = Instant::now();
            loop {
                let pending = state.waiting + state.wakers.len();
                let elapsed = first.elapsed();
                if pending >= max_messages || elapsed >= max_delay || state.stop {
                    break;
                }
                let before = syncer.appended.load(Ordering::Acquire);
                let _ = syncer.work.wait_for(&mut state, QUIET.min(max_delay - elapsed));
                if syncer.appended.load(Ordering::Acquire) == before {
                    break;
                }
            }
        }
        let _ = syncer.sync_now(&store);
        let wakers = {
            let mut state = syncer.state.lock();
            let synced = syncer.synced();
            let failures = std::mem::take(&mut state.failures);
            let (ready, waiting): (Vec<_>, Vec<_>) = state.wakers.drain(..).partition(|(lsn, _)| {
                *lsn <= synced || failures.iter().any(|(from, to, _)| *from < *lsn && *lsn <= *to)
            });
            state.wakers = waiting;
            state.failures = failures;
            ready
        };
        syncer.done.notify_all();
        for (_, waker) in wakers {
            waker.wake();
        }
    }
}
