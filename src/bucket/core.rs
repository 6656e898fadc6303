//! The admission core: every bucket (local, keyed, Redis) decides with this arithmetic.
//!
//! Pure: nanosecond offsets in, nanosecond offsets out; no clock, no I/O, no shared memory.
//! `local.rs` wraps it in atomics, `keyed.rs` in a sharded table, and the Redis script is the
//! same arithmetic in Lua, held to it by the property model in `tests/properties.rs` (run
//! against all three), not by reading the two side by side.
//!
//! # The model
//!
//! Each window of a [`Limits`](crate::Limits) is one GCRA cell: an interval `I` between paced
//! requests, a tolerance `τ = (burst - 1) * I`, and one number of state, the theoretical
//! arrival time (TAT). A request of cost `c` (units: requests, records, bytes) may go at
//! `max(now, TAT + (c - 1) * I - τ)` and moves TAT to `max(TAT, slot) + c * I`. Slots may lie in
//! the future: callers that must wait get distinct slots (reserve-ahead), so release is paced.
//!
//! * **Several windows** are admitted together: the slot is the latest any window allows, and
//!   only then does every window move. A caller refused (over `max_wait`, or a cost above a
//!   window's burst) changes nothing.
//! * **A hold is a floor, not a spend.** A hold until `u` arms a [`Release`]: no slot before
//!   `u`, then slots paced at the shortest window's interval, but never slower than spreading
//!   that window's burst over the hold's length, until the pace stops binding (a caller finds
//!   the window itself the later constraint), when it disarms. No TAT moves: a 2 s hold costs
//!   a daily allowance nothing, nor a single daily window its burst (the shape of
//!   `presets::salesforce`, whose burst of 50,000 is released within the hold's length again),
//!   while a window of 100 per 10 s resumes one request per 100 ms, not as a burst into a
//!   server that has just refused us.
//! * **A rate change is a rebase** of the shortest window. The part of its TAT that stands for
//!   requests already gone (at most one burst and the request that emptied it) is rescaled to
//!   the new interval, and callers reserved ahead are told to reserve again (the re-slot epoch
//!   of [`Epochs`]). On a cut they find out when they wake at their old slot, which comes
//!   sooner than any new one, so the slower pace reaches them within one new interval and they
//!   re-slot in their old order. On a raise their old slots come later than the new pace asks,
//!   so the bucket also wakes them early (the notify behind
//!   [`Bucket::reslots`](crate::bucket::Bucket::reslots)); a raise of an eighth or less
//!   ([`reslots`]) keeps TAT and the slots instead, since a controller that climbs a little on
//!   every response would otherwise wake every waiter on every response.
//! * **Cancel** is exact for the latest reservation (TAT still equals what it produced, and no
//!   rate change since); anything else is forgotten, never handed out twice.
//!
//! What the core leaves conservative: a caller re-slotted after a cut, or after a hold that
//! voided its slot, hands its slot back first, which is exact only for the latest reservation
//! (and not across a rate change); otherwise its first unit counts once more against the
//! longer windows, because it cannot be taken out of the middle of their schedules safely.
//! The loss is bounded by the callers waiting at that moment.

use std::time::Duration;

use crate::ThrottleError;

/// One window's parameters: the interval between paced units and the burst tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cell {
    interval: u64,
    tolerance: u64,
}

impl Cell {
    /// `burst` units may go at once; `interval` nanoseconds apart after that.
    #[inline]
    pub(crate) fn new(interval: u64, burst: u32) -> Cell {
        let interval = interval.max(1);
        Cell {
            interval,
            tolerance: Cell::tolerance_for(interval, u64::from(burst.max(1)) - 1),
        }
    }

    /// A cell from parameters already known valid (`interval >= 1`, `tolerance` a whole number
    /// of intervals): the admit path rebuilds its cell from two atomics on every call, because
    /// a rate change may have moved them, and must not pay for the clamps and the multiply.
    #[inline]
    pub(crate) fn from_parts(interval: u64, tolerance: u64) -> Cell {
        debug_assert!(interval >= 1);
        Cell {
            interval,
            tolerance,
        }
    }

    /// The tolerance of `extra_burst` units beyond the first at `interval`.
    pub(crate) fn tolerance_for(interval: u64, extra_burst: u64) -> u64 {
        interval.saturating_mul(extra_burst)
    }

    /// This cell at another interval, with the same burst in units.
    pub(crate) fn with_interval(&self, interval: u64) -> Cell {
        Cell::from_parts(
            interval.max(1),
            Cell::tolerance_for(interval.max(1), self.extra_burst()),
        )
    }

    #[inline]
    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }

    fn extra_burst(&self) -> u64 {
        self.tolerance / self.interval
    }

    /// Units that may go at once after an idle spell.
    pub(crate) fn burst(&self) -> u64 {
        self.extra_burst() + 1
    }

    /// The earliest instant `cost` units arriving at `now` may go.
    #[inline]
    pub(crate) fn earliest(&self, tat: u64, now: u64, cost: u64) -> u64 {
        let last = tat.saturating_add(self.interval.saturating_mul(cost - 1));
        now.max(last.saturating_sub(self.tolerance))
    }

    /// TAT after `cost` units go at `slot` (never before `earliest`).
    #[inline]
    pub(crate) fn after(&self, tat: u64, slot: u64, cost: u64) -> u64 {
        tat.max(slot)
            .saturating_add(self.interval.saturating_mul(cost))
    }

    /// TAT with the latest reservation (`cost` units) handed back. Only exact when that
    /// reservation was the last one: callers check that TAT still equals what it produced.
    /// Clamping at `now` stops a returned slot from ever adding burst capacity.
    #[inline]
    pub(crate) fn undo(&self, tat_after: u64, cost: u64, now: u64) -> u64 {
        tat_after
            .saturating_sub(self.interval.saturating_mul(cost))
            .max(now)
    }

    /// The TAT under the interval of `to` after a rate change at `now`.
    ///
    /// When the callers reserved ahead re-slot (`keep_ahead` false), only what one burst and
    /// the unit that emptied it account for is kept, rescaled to the new interval (rounded
    /// up): the new pace applies from the change on. Otherwise (a small raise) TAT stays as it
    /// is: the same units under a shorter interval never need a later TAT, so the state is
    /// conservative whatever delayed them (a hold, another window), and the reserved slots
    /// stand; the new pace applies from the next free instant.
    pub(crate) fn rebase(&self, to: &Cell, tat: u64, now: u64, keep_ahead: bool) -> u64 {
        let owed = tat.saturating_sub(now);
        if owed == 0 || keep_ahead {
            return tat;
        }
        let gone = owed.min(self.tolerance.saturating_add(self.interval));
        let scaled = (u128::from(gone) * u128::from(to.interval))
            .div_ceil(u128::from(self.interval))
            .min(u128::from(u64::MAX)) as u64;
        now.saturating_add(scaled)
    }

    /// How many units could go at `now` without waiting.
    pub(crate) fn available(&self, tat: u64, now: u64) -> u64 {
        match (now.saturating_add(self.tolerance)).checked_sub(tat) {
            None => 0,
            Some(slack) => (slack / self.interval + 1).min(self.burst()),
        }
    }
}

/// Why nothing was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The slot is this far (nanoseconds) away, more than the caller's ceiling.
    TooLong(u64),
    /// The cost exceeds the burst of some window: it could never go at once.
    TooCostly {
        /// The smallest burst among the windows.
        burst: u64,
    },
}

impl Refusal {
    /// The caller-facing error.
    #[cold]
    pub(crate) fn error(self, cost: u64, max_wait: Option<Duration>) -> ThrottleError {
        match self {
            Refusal::TooLong(wait) => ThrottleError::WaitTooLong {
                wait: Duration::from_nanos(wait),
                max_wait: max_wait.unwrap_or(Duration::MAX),
            },
            Refusal::TooCostly { burst } => ThrottleError::CostTooHigh { cost, burst },
        }
    }
}

/// A hold and the paced release after it: no slot before `floor` (the hold's end); from it,
/// slots no closer than `interval` while `at` binds: each admitted unit pushes `at` on, until a
/// caller's slot is set by the windows rather than by `at`, which disarms the pace (`at` 0).
/// The floor stays until it has passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Release {
    pub(crate) floor: u64,
    pub(crate) at: u64,
    pub(crate) interval: u64,
}

impl Release {
    /// Armed by a hold set at `now` until `until`: the shortest window's interval, or its burst
    /// spread over the hold's length if that is faster.
    pub(crate) fn after_hold(self, shortest: &Cell, now: u64, until: u64) -> Release {
        if until <= now {
            return self;
        }
        let spread = (until - now) / shortest.burst();
        Release {
            floor: self.floor.max(until),
            at: self.at.max(until),
            interval: shortest.interval().min(spread).max(1),
        }
    }

    /// True when nothing of it can apply at or after `now`.
    pub(crate) fn is_over(&self, now: u64) -> bool {
        self.at == 0 && self.floor <= now
    }

    /// The state after `cost` units went at `slot`, when the windows alone allowed `free`.
    #[inline]
    fn advance(self, slot: u64, free: u64, cost: u64) -> Release {
        if self.at == 0 || free >= self.at {
            Release { at: 0, ..self }
        } else {
            Release {
                at: slot.saturating_add(self.interval.saturating_mul(cost)),
                ..self
            }
        }
    }
}

/// Admits `cost` units at `now` across every window, no earlier than the release after a
/// hold, or refuses and changes nothing. `limit` is the longest acceptable wait in
/// nanoseconds. Returns the slot.
#[inline]
pub(crate) fn admit(
    cells: &[Cell],
    tats: &mut [u64],
    release: &mut Release,
    now: u64,
    cost: u64,
    limit: u64,
) -> Result<u64, Refusal> {
    debug_assert_eq!(cells.len(), tats.len());
    let mut slot = now;
    for (cell, tat) in cells.iter().zip(tats.iter()) {
        // One unit always fits a burst; only a weighted request pays for the division.
        if cost > 1 && cost > cell.burst() {
            return Err(Refusal::TooCostly {
                burst: cells.iter().map(Cell::burst).min().unwrap_or(0),
            });
        }
        slot = slot.max(cell.earliest(*tat, now, cost));
    }
    let free = slot;
    let slot = free.max(release.at).max(release.floor);
    if slot - now > limit {
        return Err(Refusal::TooLong(slot - now));
    }
    for (cell, tat) in cells.iter().zip(tats.iter_mut()) {
        *tat = cell.after(*tat, slot, cost);
    }
    *release = release.advance(slot, free, cost);
    Ok(slot)
}

/// Hands back the latest reservation of `cost` units, if `tats[0]` still shows it (`token`).
/// Returns whether it was taken back.
pub(crate) fn cancel(cells: &[Cell], tats: &mut [u64], token: u64, cost: u64, now: u64) -> bool {
    if tats.first() != Some(&token) {
        return false;
    }
    for (cell, tat) in cells.iter().zip(tats.iter_mut()) {
        *tat = cell.undo(*tat, cost, now);
    }
    true
}

/// How many units could go at `now` in every window at once.
pub(crate) fn available(cells: &[Cell], tats: &[u64], now: u64) -> u64 {
    cells
        .iter()
        .zip(tats)
        .map(|(c, t)| c.available(*t, now))
        .min()
        .unwrap_or(u64::MAX)
}

/// When the next single unit could go, no earlier than `floor`.
pub(crate) fn next_free(cells: &[Cell], tats: &[u64], now: u64, floor: u64) -> u64 {
    cells
        .iter()
        .zip(tats)
        .map(|(c, t)| c.earliest(*t, now, 1))
        .fold(now.max(floor), u64::max)
}

/// Whether a change of the shortest window's interval from `from` to `to` voids the slots of
/// callers already waiting. `paced` is the interval at the last re-slot: since then only
/// raises that did not re-slot happened (a cut always re-slots), so every waiting slot was
/// paced at an interval between `from` and `paced`.
///
/// A cut re-slots: slots paced at `from` are closer than `to` allows. A raise re-slots when it
/// is more than an eighth above the pace the waiters were slotted at: below that, waking them
/// all costs more than the at most one eighth of one queue's length they lose.
pub(crate) fn reslots(paced: u64, from: u64, to: u64) -> bool {
    to > from || u128::from(to) * 9 < u128::from(paced) * 8
}

/// A bucket's change counters, carried by every reservation it hands out.
///
/// `change` moves on every rate change: a cancel is exact only for a reservation made since
/// the last one. `reslot` takes `change`'s value on a rate change that [`reslots`]: a waiter whose
/// reservation is older must reserve again when it wakes. (Holds need no epoch: a waiter
/// compares its slot with the hold itself.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Epochs {
    pub(crate) change: u32,
    pub(crate) reslot: u32,
}

impl Epochs {
    /// After a hold or a rate change; `reslot` when waiters must reserve again.
    pub(crate) fn bump(&mut self, reslot: bool) {
        self.change = self.change.wrapping_add(1);
        if reslot {
            self.reslot = self.change;
        }
    }

    /// Whether a reservation made at `epoch` (a past `change`) must be made again. Counted with
    /// wrapping arithmetic: a waiter is never 2^31 changes old.
    pub(crate) fn is_stale(&self, epoch: u32) -> bool {
        (self.reslot.wrapping_sub(epoch) as i32) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const NONE: u64 = u64::MAX;

    #[test]
    fn burst_then_one_per_interval() {
        let cells = [Cell::new(100 * MS, 5)];
        let mut tats = [0];
        for _ in 0..5 {
            assert_eq!(
                admit(&cells, &mut tats, &mut Release::default(), 0, 1, 0),
                Ok(0)
            );
        }
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 1, 0),
            Err(Refusal::TooLong(100 * MS))
        );
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 100 * MS, 1, 0),
            Ok(100 * MS)
        );
        assert_eq!(
            admit(
                &cells,
                &mut tats,
                &mut Release::default(),
                100 * MS,
                1,
                NONE
            ),
            Ok(200 * MS)
        );
    }

    #[test]
    fn reserve_ahead_slots_are_one_interval_apart() {
        let cells = [Cell::new(10 * MS, 1)];
        let mut tats = [0];
        let slots: Vec<u64> = (0..4)
            .map(|_| admit(&cells, &mut tats, &mut Release::default(), 0, 1, NONE).unwrap())
            .collect();
        assert_eq!(slots, vec![0, 10 * MS, 20 * MS, 30 * MS]);
    }

    #[test]
    fn a_cost_takes_that_many_units_of_every_window_at_once() {
        let cells = [Cell::new(10 * MS, 10), Cell::new(100 * MS, 20)];
        let mut tats = [0, 0];
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 10, NONE),
            Ok(0)
        );
        assert_eq!(available(&cells, &tats, 0), 0);
        // Ten more: the short window refills in 100 ms.
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 10, NONE),
            Ok(100 * MS)
        );
        // The long window has spent its 20 less the one it earned back in 100 ms; the short
        // window is empty again and refills one unit per 10 ms.
        assert_eq!(available(&cells, &tats, 100 * MS), 0);
        assert_eq!(next_free(&cells, &tats, 100 * MS, 0), 110 * MS);
        // Two units: the long window has earned back only one by then.
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 100 * MS, 2, 0),
            Err(Refusal::TooLong(100 * MS))
        );
        // More than a window's burst can never go at once: refused, nothing spent.
        let before = tats;
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 11, NONE),
            Err(Refusal::TooCostly { burst: 10 })
        );
        assert_eq!(tats, before);
    }

    #[test]
    fn a_caller_refused_by_one_window_consumes_nothing_in_the_others() {
        let cells = [Cell::new(10 * MS, 1), Cell::new(1_000 * MS, 1)];
        let mut tats = [0, 0];
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 1, 0),
            Ok(0)
        );
        let before = tats;
        assert_eq!(
            admit(&cells, &mut tats, &mut Release::default(), 0, 1, 50 * MS),
            Err(Refusal::TooLong(1_000 * MS))
        );
        assert_eq!(tats, before);
    }

    #[test]
    fn a_hold_is_a_floor_that_spends_nothing_and_releases_paced() {
        let cells = [Cell::new(100 * MS, 10), Cell::new(1_000 * MS, 20_000)];
        let mut tats = [0, 0];
        let before = tats;
        let mut release = Release::default().after_hold(&cells[0], 0, 2_000 * MS);
        let slots: Vec<u64> = (0..3)
            .map(|_| admit(&cells, &mut tats, &mut release, 0, 1, NONE).unwrap())
            .collect();
        // Paced at the shortest window's interval from the hold's end, not its burst of 10.
        assert_eq!(slots, [2_000 * MS, 2_100 * MS, 2_200 * MS]);
        // Nothing was spent beyond the three units: the long window lost exactly three.
        assert_eq!(
            cells[1].available(tats[1], 2_200 * MS),
            cells[1].available(before[1], 2_200 * MS) - 3
        );
        // Once the windows are the later constraint, the pace disarms.
        assert_eq!(
            admit(&cells, &mut tats, &mut release, 5_000 * MS, 1, NONE),
            Ok(5_000 * MS)
        );
        assert!(release.is_over(5_000 * MS));
        // A daily allowance's burst is spread over the hold's length: 50,000 within 1 s.
        let daily = [Cell::new(1_728 * MS, 50_000)];
        let mut tat = [0];
        let mut release = Release::default().after_hold(&daily[0], 0, 1_000 * MS);
        let last = (0..50_000)
            .map(|_| admit(&daily, &mut tat, &mut release, 0, 1, NONE).unwrap())
            .last()
            .unwrap();
        assert!(last < 2_000 * MS, "{last}");
    }

    #[test]
    fn undo_never_adds_capacity_beyond_the_burst() {
        let cell = Cell::new(10 * MS, 3);
        let after = cell.after(0, 0, 1);
        let back = cell.undo(after, 1, 500 * MS);
        assert_eq!(cell.available(back, 500 * MS), 3);
        assert_eq!(cell.undo(after, 1, 0), 0);
        let cells = [cell];
        let mut tats = [0];
        admit(&cells, &mut tats, &mut Release::default(), 0, 1, NONE).unwrap();
        let token = tats[0];
        admit(&cells, &mut tats, &mut Release::default(), 0, 1, NONE).unwrap();
        assert!(
            !cancel(&cells, &mut tats, token, 1, 0),
            "not the latest: forgotten"
        );
        let latest = tats[0];
        assert!(cancel(&cells, &mut tats, latest, 1, 0));
    }

    #[test]
    fn a_rate_cut_forgets_the_backlog_and_paces_at_the_new_interval() {
        let old = Cell::new(10 * MS, 1);
        let new = old.with_interval(100 * MS);
        let mut tat = 0;
        for _ in 0..200 {
            tat = old.after(tat, old.earliest(tat, 0, 1), 1);
        }
        // 200 reserved 10 ms apart; at 5 ms one has gone, the rest were reserved ahead.
        let rebased = old.rebase(&new, tat, 5 * MS, false);
        assert_eq!(new.earliest(rebased, 5 * MS, 1), 5 * MS + 100 * MS);
        // On a raise the reserved-ahead slots stand: the next free instant is the one the old
        // rate had (just after the last of them), and the new pace follows.
        let faster = old.with_interval(MS);
        let kept = old.rebase(&faster, tat, 5 * MS, true);
        assert_eq!(faster.earliest(kept, 5 * MS, 1), 2_000 * MS);
        assert_eq!(faster.after(kept, 2_000 * MS, 1), 2_001 * MS);
    }

    #[test]
    fn a_raise_that_reslots_paces_the_waiters_at_the_new_interval() {
        let old = Cell::new(10 * MS, 1);
        let mut tat = 0;
        for _ in 0..200 {
            tat = old.after(tat, old.earliest(tat, 0, 1), 1);
        }
        // Ten times faster: the 199 reserved ahead re-slot one new interval apart from now,
        // behind the one that has gone, not behind the old schedule two seconds out.
        let faster = old.with_interval(MS);
        let rebased = old.rebase(&faster, tat, 5 * MS, false);
        let mut slots = Vec::new();
        let mut t = rebased;
        for _ in 0..3 {
            let slot = faster.earliest(t, 5 * MS, 1);
            slots.push(slot);
            t = faster.after(t, slot, 1);
        }
        assert_eq!(slots, [6 * MS, 7 * MS, 8 * MS]);
    }

    #[test]
    fn a_cut_or_a_raise_above_an_eighth_of_the_pace_reslots() {
        let paced = 90 * MS;
        // Any cut, however small.
        assert!(reslots(paced, 80 * MS, 80 * MS + 1));
        // Raises measured against the pace the waiters were slotted at, not the last step.
        assert!(!reslots(paced, 90 * MS, 80 * MS));
        assert!(reslots(paced, 81 * MS, 79 * MS));
        assert!(reslots(paced, 90 * MS, 45 * MS));
        // Extreme intervals do not overflow.
        assert!(reslots(u64::MAX, u64::MAX, 1));
        assert!(!reslots(u64::MAX, u64::MAX, u64::MAX));
    }

    #[test]
    fn a_rebase_keeps_the_burst_in_units() {
        let old = Cell::new(100 * MS, 4);
        let new = old.with_interval(1_000 * MS);
        assert_eq!(new.burst(), 4);
        // Idle bucket: still four at once after the change.
        let tat = old.rebase(&new, 0, 10_000 * MS, false);
        assert_eq!(new.available(tat, 10_000 * MS), 4);
        // Drained bucket: the next unit one new interval away.
        let mut drained = 10_000 * MS;
        for _ in 0..4 {
            drained = old.after(drained, 10_000 * MS, 1);
        }
        let tat = old.rebase(&new, drained, 10_000 * MS, false);
        assert_eq!(new.earliest(tat, 10_000 * MS, 1), 11_000 * MS);
    }

    #[test]
    fn epochs_mark_only_older_reservations_stale() {
        let mut e = Epochs::default();
        let before = e.change;
        e.bump(false);
        assert!(!e.is_stale(before), "a small raise or a hold keeps slots");
        let mid = e.change;
        e.bump(true);
        assert!(e.is_stale(before) && e.is_stale(mid));
        assert!(!e.is_stale(e.change));
        let mut wrapped = Epochs {
            change: u32::MAX,
            reslot: u32::MAX,
        };
        let old = wrapped.change;
        wrapped.bump(true);
        assert!(wrapped.is_stale(old));
    }
}
