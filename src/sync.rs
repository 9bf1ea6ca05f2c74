//! The synchronisation primitives the crate uses, in one place.
//!
//! Everything concurrent goes through these names so that a model checker
//! (loom) can be swapped in behind them without touching the broker's logic.
//! The mutex is parking_lot's: no poisoning, so a panicking consumer thread
//! never wedges a queue for everyone else.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
pub(crate) use std::sync::{Arc, Weak};

pub(crate) use parking_lot::{Condvar, Mutex};
