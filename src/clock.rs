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
    #[inline]
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        self.offset(t).0
    }

    /// [`Epoch::nanos`], and whether [`Epoch::instant`] maps the result back to exactly `t`
    /// (not so when it saturated). Lets the admit path hand back the caller's own `now` instead
    /// of rebuilding an `Instant`, which costs a division and a normalising add.
    #[inline]
    pub(crate) fn offset(&self, t: Instant) -> (u64, bool) {
        match t.checked_duration_since(self.0) {
            // u64 arithmetic: `Duration::as_nanos` goes through u128.
            Some(d) => match d
                .as_secs()
                .checked_mul(1_000_000_000)
                .and_then(|n| n.checked_add(u64::from(d.subsec_nanos())))
            {
                Some(n) => (n, true),
                None => (u64::MAX, false),
            },
            None => (0, false),
        }
    }

    #[inline]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_round_trips_exactly_and_flags_saturation() {
        let epoch = Epoch::now();
        let later = epoch.0 + Duration::new(3, 123_456_789);
        assert_eq!(epoch.offset(later), (3_123_456_789, true));
        assert_eq!(epoch.instant(epoch.offset(later).0), later);
        assert_eq!(epoch.offset(epoch.0), (0, true));
        // Before the epoch saturates to 0, which maps back to the epoch, not to `t`.
        if let Some(before) = epoch.0.checked_sub(Duration::from_secs(1)) {
            assert_eq!(epoch.offset(before), (0, false));
            assert_eq!(epoch.nanos(before), 0);
        }
    }
}
