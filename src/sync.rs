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

/// A value on cache lines of its own.
///
/// A bucket's state is written by every admit, from every core; its configuration (interval,
/// burst, clock calibration) is only read. Sharing one line would make each admit fetch the
/// line twice under contention: once to read the configuration after another core's write,
/// once more to own it for the compare-and-swap. 128 bytes because x86 prefetches lines in
/// adjacent pairs, so a 64-byte neighbour still bounces.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub(crate) T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
