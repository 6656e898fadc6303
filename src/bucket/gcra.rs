//! The generic cell rate algorithm, as pure arithmetic on nanosecond offsets.
//!
//! State is one number, the theoretical arrival time (TAT): the instant at which the bucket
//! would be exactly full again if nobody else came. A request may go at
//! `max(now, TAT - tolerance)`, and going moves TAT one interval further. Nothing here reads
//! a clock or touches memory shared with other threads; `local.rs` wraps it in atomics.

/// One quota's parameters: the interval between paced requests and the burst tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    /// `burst` requests may go at once; `interval` nanoseconds apart after that.
    #[inline]
    pub(crate) fn new(interval: u64, burst: u32) -> Gcra {
        let interval = interval.max(1);
        Gcra {
            interval,
            tolerance: Gcra::tolerance_for(interval, u64::from(burst.max(1)) - 1),
        }
    }

    /// A cell from parameters already known valid (`interval >= 1`, `tolerance` a whole number
    /// of intervals): the admit path rebuilds its cell from two atomics on every call, because
    /// `set_rate` may have moved them, and must not pay for the clamps and the multiply.
    #[inline]
    pub(crate) fn from_parts(interval: u64, tolerance: u64) -> Gcra {
        debug_assert!(interval >= 1);
        Gcra {
            interval,
            tolerance,
        }
    }

    /// The tolerance of `burst - 1` extra requests at `interval`.
    pub(crate) fn tolerance_for(interval: u64, extra_burst: u64) -> u64 {
        interval.saturating_mul(extra_burst)
    }

    #[inline]
    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }

    /// The earliest instant a request that arrives at `now` may go.
    #[inline]
    pub(crate) fn earliest(&self, tat: u64, now: u64) -> u64 {
        now.max(tat.saturating_sub(self.tolerance))
    }

    /// TAT after a request goes at `slot` (which is never before `earliest`).
    #[inline]
    pub(crate) fn after(&self, tat: u64, slot: u64) -> u64 {
        tat.max(slot).saturating_add(self.interval)
    }

    /// Admits a request at `now` or says when it could go; the classic non-waiting form.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn test_and_update(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let slot = self.earliest(tat, now);
        if slot > now {
            Err(slot)
        } else {
            Ok(self.after(tat, slot))
        }
    }

    /// TAT with the most recent reservation (made with `interval`) handed back. Only exact
    /// when that reservation was the last one: callers check that TAT still equals what it
    /// produced. Clamping at `now` stops a returned slot from ever adding burst capacity.
    pub(crate) fn undo(tat_after: u64, interval: u64, now: u64) -> u64 {
        tat_after.saturating_sub(interval).max(now)
    }

    /// TAT such that nobody goes before `until`, and the first ones after it go paced, not
    /// as one burst: the server that sent the 429 would reject a burst again.
    pub(crate) fn hold(&self, tat: u64, until: u64) -> u64 {
        tat.max(until.saturating_add(self.tolerance))
    }

    /// How many requests could go at `now` without waiting.
    pub(crate) fn available(&self, tat: u64, now: u64) -> u64 {
        let burst = self.tolerance / self.interval + 1;
        match (now.saturating_add(self.tolerance)).checked_sub(tat) {
            None => 0,
            Some(slack) => (slack / self.interval + 1).min(burst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_one_per_interval() {
        let g = Gcra::new(100 * MS, 5);
        let mut tat = 0;
        for _ in 0..5 {
            tat = g.test_and_update(tat, 0).expect("burst admits");
        }
        assert_eq!(g.test_and_update(tat, 0), Err(100 * MS));
        assert_eq!(g.test_and_update(tat, 99 * MS), Err(100 * MS));
        tat = g.test_and_update(tat, 100 * MS).unwrap();
        assert_eq!(g.test_and_update(tat, 100 * MS), Err(200 * MS));
    }

    #[test]
    fn reserve_ahead_slots_are_one_interval_apart() {
        let g = Gcra::new(10 * MS, 1);
        let mut tat = 0;
        let mut slots = Vec::new();
        for _ in 0..4 {
            let slot = g.earliest(tat, 0);
            tat = g.after(tat, slot);
            slots.push(slot);
        }
        assert_eq!(slots, vec![0, 10 * MS, 20 * MS, 30 * MS]);
    }

    #[test]
    fn hold_releases_paced_not_as_a_burst() {
        let g = Gcra::new(10 * MS, 10);
        let tat = g.hold(0, 1_000 * MS);
        assert_eq!(g.earliest(tat, 0), 1_000 * MS);
        let tat = g.after(tat, 1_000 * MS);
        assert_eq!(g.earliest(tat, 1_000 * MS), 1_010 * MS);
    }

    #[test]
    fn undo_never_adds_capacity_beyond_the_burst() {
        let g = Gcra::new(10 * MS, 3);
        // Reserved at 0 from a full bucket, then returned much later: still only 3 available.
        let after = g.after(0, 0);
        let back = Gcra::undo(after, g.interval(), 500 * MS);
        assert_eq!(g.available(back, 500 * MS), 3);
        // Returned at once: the bucket is as before.
        assert_eq!(Gcra::undo(after, g.interval(), 0), 0);
    }

    #[test]
    fn available_counts_tokens() {
        let g = Gcra::new(10 * MS, 4);
        assert_eq!(g.available(0, 0), 4);
        let tat = g.after(g.after(0, 0), 0);
        assert_eq!(g.available(tat, 0), 2);
        assert_eq!(g.available(tat, 10 * MS), 3);
        assert_eq!(g.available(u64::MAX, 0), 0);
        assert_eq!(g.available(0, u64::MAX), 4);
    }
}
