//! Time as whole nanoseconds since a bucket's epoch, read from `tokio::time`.
//!
//! The pure cores work on `u64` nanoseconds so that they can live in an `AtomicU64`; the shells
//! convert at the edge. Reading `tokio::time::Instant` (not `std`) is what lets
//! `tokio::time::pause()` drive every test: the clock that decides is the clock that sleeps.

use std::time::Duration;
use tokio::time::Instant;

/// The instant a bucket was created; every stored time is an offset from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn now() -> Self {
        Epoch(Instant::now())
    }

    /// Nanoseconds from the epoch to `t`, saturating: an instant before the epoch is 0 and one
    /// more than 584 years later is `u64::MAX`, so no caller-supplied instant can panic here.
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.0
            .checked_add(Duration::from_nanos(nanos))
            // Only reachable for offsets centuries away; a far-future instant is the honest answer.
            .unwrap_or_else(|| self.0 + Duration::from_secs(86_400 * 365 * 100))
    }
}

/// Nanoseconds in a `Duration`, saturating at `u64::MAX`.
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
