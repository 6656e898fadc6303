//! The synchronisation primitives the lock-free bucket uses, swapped for loom's under
//! `--cfg tower_throttle_loom` so that its model checker can explore every interleaving of the
//! bucket's compare-and-swap loops (`tests/loom.rs`). Otherwise they are plain `std` re-exports,
//! so the shim costs nothing.

#[cfg(tower_throttle_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(tower_throttle_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(tower_throttle_loom))]
pub(crate) use std::sync::atomic::AtomicU64;
#[cfg(not(tower_throttle_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
