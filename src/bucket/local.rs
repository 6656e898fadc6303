//! The in-process bucket: the admission core's cells behind atomics, shared through an `Arc`.
//!
//! A single quota (the common case) lives in one `AtomicU64` updated with compare-and-swap:
//! one CAS per admitted request, no lock, no allocation. Several quotas must be admitted
//! together (a caller refused by the daily window must not consume a per-second slot), which
//! one CAS cannot do, so that case takes a short mutex; it is still allocation-free. Either
//! way the decision is [`core`](super::core)'s.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::core::{self, Cell, Epochs, Release};
use super::{interval_for_rate, Bucket, Reservation, Reserve, Snapshot};
use crate::clock::{duration_nanos, BucketClock, Clock};
use crate::sync::{AtomicU64, Mutex, MutexGuard, OwnLine};
use crate::{ConfigError, Limits, ThrottleError};

/// A token bucket in this process, shared by every clone.
///
/// Built from [`Limits`] (or a single [`Quota`](crate::Quota)); see the
/// [module docs](crate::bucket) for an example. The limits' concurrency cap, if any, lives in
/// the bucket too, so every layer built on it shares one cap.
#[derive(Clone)]
pub struct LocalBucket {
    inner: Arc<Inner>,
}

struct Inner {
    clock: BucketClock,
    limits: Limits,
    concurrency: Option<Arc<Semaphore>>,
    /// The shortest window's cell, which `set_rate` moves. Stored as two atomics read on every
    /// admit: a caller racing `set_rate` may pair the new interval with the old tolerance for
    /// one decision, which is within the change it is racing anyway.
    primary_interval: AtomicU64,
    primary_tolerance: AtomicU64,
    /// The shortest window as configured, for its burst in requests.
    configured: Option<Cell>,
    /// End of the latest hold in bucket nanoseconds (0: none). Waiters compare their slot to it.
    hold: AtomicU64,
    /// The hold and paced release after it, and whether one may apply (non-zero) mirrored in an
    /// atomic, so that the admit path sees "none" with one load and never takes the lock then.
    release: Mutex<Release>,
    release_at: AtomicU64,
    /// [`Epochs`] packed as `reslot << 32 | change`.
    epochs: AtomicU64,
    /// The shortest window's interval at the last re-slot ([`core::reslots`]), behind the lock
    /// that also orders concurrent rate changes.
    paced: Mutex<u64>,
    /// Wakes the waiters a raise re-slots.
    reslots: Arc<Notify>,
    cells: Cells,
}

enum Cells {
    /// No quota: only a concurrency cap (or nothing) applies.
    Unlimited,
    One(OwnLine<AtomicU64>),
    /// Several quotas, shortest period first, decided together under the lock.
    Many(OwnLine<Mutex<Windows>>),
}

struct Windows {
    cells: Vec<Cell>,
    tats: Vec<u64>,
}

fn unpack(packed: u64) -> Epochs {
    Epochs {
        change: packed as u32,
        reslot: (packed >> 32) as u32,
    }
}

fn pack(e: Epochs) -> u64 {
    u64::from(e.reslot) << 32 | u64::from(e.change)
}

impl LocalBucket {
    /// A bucket enforcing `limits`, starting full, deciding on tokio's clock
    /// ([`Clock::Tokio`], which follows `tokio::time::pause()`).
    pub fn new(limits: impl Into<Limits>) -> LocalBucket {
        LocalBucket::with_clock(limits, Clock::Tokio)
    }

    /// A bucket enforcing `limits`, starting full, that reads `clock` when a caller arrives
    /// "now" (through [`LocalBucket::try_reserve_now`] and the gate). [`Clock::Fast`] makes an
    /// admit several times cheaper but does not follow `tokio::time::pause()`; see [`Clock`].
    ///
    /// ```
    /// use tower_throttle::{bucket::Clock, LocalBucket, Quota, RateLimitLayer};
    ///
    /// // `Clock::Fast` with the `fast-clock` feature; `Clock::Tokio` is the default.
    /// let bucket = LocalBucket::with_clock(Quota::per_second(50)?, Clock::Tokio);
    /// let layer = RateLimitLayer::with_bucket(bucket);
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_clock(limits: impl Into<Limits>, clock: Clock) -> LocalBucket {
        let limits = limits.into();
        let all: Vec<Cell> = limits
            .quotas()
            .iter()
            .map(|q| Cell::new(q.interval_nanos(), q.burst()))
            .collect();
        let primary = all.first().copied().unwrap_or(Cell::new(1, 1));
        let cells = match all.len() {
            0 => Cells::Unlimited,
            1 => Cells::One(OwnLine(AtomicU64::new(0))),
            n => Cells::Many(OwnLine(Mutex::new(Windows {
                cells: all.clone(),
                tats: vec![0; n],
            }))),
        };
        LocalBucket {
            inner: Arc::new(Inner {
                clock: BucketClock::new(clock),
                concurrency: limits.concurrency().map(|n| Arc::new(Semaphore::new(n))),
                primary_interval: AtomicU64::new(primary.interval()),
                primary_tolerance: AtomicU64::new(primary.tolerance()),
                configured: all.first().copied(),
                hold: AtomicU64::new(0),
                release: Mutex::new(Release::default()),
                release_at: AtomicU64::new(0),
                epochs: AtomicU64::new(0),
                paced: Mutex::new(primary.interval()),
                reslots: Arc::new(Notify::new()),
                limits,
                cells,
            }),
        }
    }

    /// The limits this bucket was built with (the configured rates, not the current one).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The clock this bucket decides on.
    pub fn clock(&self) -> Clock {
        self.inner.clock.kind()
    }

    /// Restarts the bucket as if it had just sent a full burst at `now`: slots reserved ahead
    /// are forgotten (their callers re-slot elsewhere) and the shortest window has nothing left
    /// to burst, so it paces from `now`. The Redis bucket does this to its fallback when it
    /// switches source, so the two never add up.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn drain(&self, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let drained = |cell: &Cell, tat: u64, shortest: bool| {
            let kept = cell.rebase(cell, tat, now_n, false);
            if shortest {
                kept.max(now_n.saturating_add(cell.tolerance()))
            } else {
                kept
            }
        };
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let primary = inner.primary();
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(drained(&primary, t, true))
                });
            }
            Cells::Many(windows) => {
                let mut w = lock(windows);
                let Windows { cells, tats } = &mut *w;
                for (i, (cell, tat)) in cells.iter().zip(tats.iter_mut()).enumerate() {
                    *tat = drained(cell, *tat, i == 0);
                }
            }
        }
        inner.bump(true);
    }

    /// The change epoch a reservation made now would carry.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn epoch(&self) -> u32 {
        self.inner.epochs().change
    }

    /// Whether reservations made at `epoch` ([`LocalBucket::epoch`]) must re-slot: the Redis
    /// bucket re-slots its fallback's waiters through its own epochs.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_stale(&self, epoch: u32) -> bool {
        self.inner.epochs().is_stale(epoch)
    }

    /// [`Bucket::reserve`] without the `Reserve` wrapper: a local bucket never needs I/O.
    #[inline]
    pub fn try_reserve(
        &self,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        self.try_reserve_weighted(now, 1, max_wait)
    }

    /// [`Bucket::reserve_weighted`] without the `Reserve` wrapper.
    #[inline]
    pub fn try_reserve_weighted(
        &self,
        now: Instant,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let cost = cost.max(1);
        let (now_n, exact) = inner.clock.offset(now);
        let (slot, token, epoch) = inner.reserve_nanos(now_n, cost, max_wait)?;
        // An admitted caller (the hot path) goes at `now` itself; only a future slot needs an
        // instant built from nanoseconds.
        let r = if !exact {
            Reservation::new(inner.clock.instant(slot), token, epoch)
        } else if slot == now_n {
            Reservation::admitted_or(inner.clock.admitted(now, now_n), now, token, epoch)
        } else {
            Reservation::new(
                now.checked_add(Duration::from_nanos(slot - now_n))
                    .unwrap_or_else(|| inner.clock.instant(slot)),
                token,
                epoch,
            )
        };
        Ok(r.with_cost(cost))
    }

    /// [`LocalBucket::try_reserve`] for a caller arriving now, read from the bucket's
    /// [`Clock`]. On [`Clock::Fast`] an admit reads no tokio clock at all; only a caller that
    /// must wait gets its slot converted to a tokio instant to sleep on.
    // Always inlined: the fast-clock admit is then a few dozen instructions in the caller's own
    // code, with no call frame and no result written through memory, which on a path this
    // short is a measurable share (benches/gate.rs).
    #[inline(always)]
    pub fn try_reserve_now(
        &self,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        match inner.clock.fast_now() {
            None => self.try_reserve(Instant::now(), max_wait),
            Some(fast) => {
                let now_n = fast.nanos;
                let (slot, token, epoch) = inner.reserve_nanos(now_n, 1, max_wait)?;
                Ok(if slot == now_n {
                    Reservation::admitted_since_origin(fast.admitted(now_n), token, epoch)
                } else {
                    Reservation::new(inner.clock.instant(slot), token, epoch)
                })
            }
        }
    }
}

impl Inner {
    /// The decision in bucket time: the caller's slot, the token to cancel it with, and the
    /// change epoch it was made under. Nothing is reserved when refused.
    // Always inlined: called from the two admit entry points, and a call would pass the
    // result through memory, which on this path costs as much as the decision itself.
    #[inline(always)]
    fn reserve_nanos(
        &self,
        now_n: u64,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64, u32), ThrottleError> {
        // The single-quota cell at cost 1 is the fall-through and everything else one cold
        // call away: the common case then reads the cell kind once, keeps its state in
        // registers, and runs as straight-line code (taken branches cost front-end cycles next
        // to the clock read's microcode).
        // A paced release after a hold (rare, and short) is decided under its lock.
        let (Cells::One(tat), 1, 0) = (&self.cells, cost, self.release_at.load(Ordering::Relaxed))
        else {
            return self.reserve_other(now_n, cost, max_wait);
        };
        // No ceiling is the same as one that can never be exceeded: one comparison either way.
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let primary = self.primary();
        let epoch = self.epochs.load(Ordering::Relaxed) as u32;
        let mut current = tat.load(Ordering::Acquire);
        // Uncontended: this load, one compare-exchange, done.
        loop {
            let slot = primary.earliest(current, now_n, 1);
            if slot - now_n > limit {
                return Err(core::Refusal::TooLong(slot - now_n).error(1, max_wait));
            }
            let next = primary.after(current, slot, 1);
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok((slot, next, epoch)),
                Err(seen) => current = seen,
            }
        }
    }

    /// [`Inner::reserve_nanos`] for everything but one unit of a single quota with no release
    /// armed: several quotas, under the lock; a weighted request; a paced release after a hold;
    /// or no quota (a concurrency cap alone). Cold only in the sense of code layout: it keeps
    /// the single-quota path around it small enough to live in registers.
    #[cold]
    #[inline(never)]
    fn reserve_other(
        &self,
        now_n: u64,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64, u32), ThrottleError> {
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let cost64 = u64::from(cost);
        let refused = |r: core::Refusal| r.error(cost64, max_wait);
        let mut release = lock(&self.release);
        let mut next = *release;
        let decided = match &self.cells {
            // No quota: the release after a hold is the only thing a caller can wait for.
            Cells::Unlimited => {
                core::admit(&[], &mut [], &mut next, now_n, cost64, limit).map(|s| (s, 0))
            }
            Cells::One(tat) => {
                let cells = [self.primary()];
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let mut tats = [current];
                    next = *release;
                    let slot = match core::admit(&cells, &mut tats, &mut next, now_n, cost64, limit)
                    {
                        Ok(slot) => slot,
                        Err(r) => break Err(r),
                    };
                    match tat.compare_exchange_weak(
                        current,
                        tats[0],
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break Ok((slot, tats[0])),
                        Err(seen) => current = seen,
                    }
                }
            }
            Cells::Many(windows) => {
                let mut w = lock(windows);
                let Windows { cells, tats } = &mut *w;
                core::admit(cells, tats, &mut next, now_n, cost64, limit).map(|s| (s, tats[0]))
            }
        };
        let (slot, token) = decided.map_err(refused)?;
        *release = next;
        // Back to the lock-free path once the hold has passed and its pace stopped binding.
        if next.is_over(now_n) {
            self.release_at.store(0, Ordering::Release);
        }
        Ok((slot, token, self.epochs().change))
    }

    #[inline]
    fn primary(&self) -> Cell {
        Cell::from_parts(
            self.primary_interval.load(Ordering::Relaxed),
            self.primary_tolerance.load(Ordering::Relaxed),
        )
    }

    fn epochs(&self) -> Epochs {
        unpack(self.epochs.load(Ordering::Acquire))
    }

    fn bump(&self, cut: bool) {
        let _ = self
            .epochs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                let mut e = unpack(p);
                e.bump(cut);
                Some(pack(e))
            });
    }

    /// Bucket time now, on the bucket's own clock.
    fn now_nanos(&self) -> u64 {
        match self.clock.fast_now() {
            Some(fast) => fast.nanos,
            None => self.clock.nanos(Instant::now()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is plain numbers, each write complete before the next: a panic
    // elsewhere while holding the lock cannot have left it half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bucket for LocalBucket {
    fn reserve_weighted(&self, now: Instant, cost: u32, max_wait: Option<Duration>) -> Reserve {
        Reserve::Ready(self.try_reserve_weighted(now, cost, max_wait))
    }

    #[inline]
    fn reserve_now(&self, max_wait: Option<Duration>) -> Reserve {
        Reserve::Ready(self.try_reserve_now(max_wait))
    }

    fn cancel(&self, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let cost = u64::from(reservation.cost());
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                if inner.epochs().change != reservation.epoch() {
                    return;
                }
                let back = inner.primary().undo(reservation.token(), cost, now_n);
                // Fails when someone reserved after us: then the slot is forgotten, because
                // handing it back would let two callers share one instant.
                let _ = tat.compare_exchange(
                    reservation.token(),
                    back,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            Cells::Many(windows) => {
                let mut w = lock(windows);
                if inner.epochs().change != reservation.epoch() {
                    return;
                }
                let Windows { cells, tats } = &mut *w;
                core::cancel(cells, tats, reservation.token(), cost, now_n);
            }
        }
    }

    fn hold_until(&self, until: Instant) {
        // A floor under every later slot and a paced release after it; no window's state
        // moves (see `core`).
        let inner = &*self.inner;
        let until_n = inner.clock.nanos(until);
        let now_n = inner.now_nanos();
        let mut release = lock(&inner.release);
        *release = release.after_hold(&inner.primary(), now_n, until_n);
        if !release.is_over(now_n) {
            inner
                .release_at
                .store(release.floor.max(1), Ordering::Release);
        }
        inner.hold.fetch_max(until_n, Ordering::AcqRel);
    }

    fn held_until(&self, now: Instant) -> Option<Instant> {
        let inner = &*self.inner;
        let hold = inner.hold.load(Ordering::Acquire);
        (hold != 0 && hold > inner.clock.nanos(now)).then(|| inner.clock.instant(hold))
    }

    fn is_current(&self, reservation: &Reservation, now: Instant) -> bool {
        if self.inner.epochs().is_stale(reservation.epoch()) {
            return false;
        }
        !matches!(self.held_until(now), Some(hold) if hold > reservation.at())
    }

    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        let interval = interval_for_rate(per_second)?;
        let inner = &*self.inner;
        let Some(configured) = inner.configured else {
            return Ok(());
        };
        let new = configured.with_interval(interval);
        // Held to the end: two changes racing must not rebase from each other's old cell.
        let mut paced = lock(&inner.paced);
        let old = inner.primary();
        if new == old {
            return Ok(());
        }
        let reslot = core::reslots(*paced, old.interval(), new.interval());
        let raised = reslot && new.interval() < old.interval();
        let now_n = inner.now_nanos();
        // The new cell first: an admit racing the rebase then paces at the new rate behind the
        // old state, which is the conservative half of the race.
        inner
            .primary_tolerance
            .store(new.tolerance(), Ordering::Relaxed);
        inner
            .primary_interval
            .store(new.interval(), Ordering::Relaxed);
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(old.rebase(&new, t, now_n, !reslot))
                });
            }
            Cells::Many(windows) => {
                let mut w = lock(windows);
                w.tats[0] = old.rebase(&new, w.tats[0], now_n, !reslot);
                w.cells[0] = new;
            }
        }
        inner.bump(reslot);
        if reslot {
            *paced = new.interval();
        }
        if raised {
            // After the bump, so that a woken waiter finds its slot stale.
            inner.reslots.notify_waiters();
        }
        Ok(())
    }

    fn reslots(&self) -> Option<&Arc<Notify>> {
        // Without a quota there is no rate to change.
        self.inner
            .configured
            .is_some()
            .then_some(&self.inner.reslots)
    }

    fn rate(&self) -> f64 {
        1e9 / self.inner.primary_interval.load(Ordering::Relaxed) as f64
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let floor = {
            let release = lock(&inner.release);
            release.floor.max(release.at)
        };
        let (available, next_free) = match &inner.cells {
            Cells::Unlimited => (u64::MAX, now_n.max(floor)),
            Cells::One(tat) => {
                let cells = [inner.primary()];
                let tats = [tat.load(Ordering::Acquire)];
                (
                    core::available(&cells, &tats, now_n),
                    core::next_free(&cells, &tats, now_n, floor),
                )
            }
            Cells::Many(windows) => {
                let w = lock(windows);
                (
                    core::available(&w.cells, &w.tats, now_n),
                    core::next_free(&w.cells, &w.tats, now_n, floor),
                )
            }
        };
        // Nothing can go before the hold's end.
        let available = if floor > now_n { 0 } else { available };
        Snapshot {
            available,
            next_free: inner.clock.instant(next_free),
            rate_per_second: if matches!(inner.cells, Cells::Unlimited) {
                f64::INFINITY
            } else {
                self.rate()
            },
            held_until: self.held_until(now),
        }
    }

    fn concurrency(&self) -> Option<&Arc<Semaphore>> {
        self.inner.concurrency.as_ref()
    }
}

impl fmt::Debug for LocalBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The limits as the user wrote them and the run-time rate; not the cells' internals.
        f.debug_struct("LocalBucket")
            .field("limits", &self.inner.limits)
            .field("rate_per_second", &self.rate())
            .field("clock", &self.clock())
            .finish()
    }
}

#[cfg(all(test, feature = "fast-clock"))]
mod tests {
    use super::*;
    use crate::Quota;

    const MS: u64 = 1_000_000;

    /// The decision core on explicit bucket times: the same arithmetic both clocks feed.
    #[test]
    fn nanosecond_core_admits_the_burst_then_paces() {
        let bucket = LocalBucket::with_clock(
            Quota::per_second(10).unwrap().with_burst(3).unwrap(),
            Clock::Fast,
        );
        let inner = &*bucket.inner;
        let t0 = 5_000 * MS;
        for _ in 0..3 {
            let (slot, _, _) = inner.reserve_nanos(t0, 1, None).unwrap();
            assert_eq!(slot, t0);
        }
        assert_eq!(inner.reserve_nanos(t0, 1, None).unwrap().0, t0 + 100 * MS);
        assert_eq!(inner.reserve_nanos(t0, 1, None).unwrap().0, t0 + 200 * MS);
        // A ceiling below the next wait reserves nothing and reports the wait.
        match inner.reserve_nanos(t0, 1, Some(Duration::from_millis(250))) {
            Err(ThrottleError::WaitTooLong { wait, .. }) => {
                assert_eq!(wait, Duration::from_millis(300))
            }
            other => panic!("expected WaitTooLong, got {other:?}"),
        }
        // 300 ms later every reserved slot has passed: the next goes at once, then paced.
        let t1 = t0 + 300 * MS;
        assert_eq!(inner.reserve_nanos(t1, 1, None).unwrap().0, t1);
        assert_eq!(inner.reserve_nanos(t1, 1, None).unwrap().0, t1 + 100 * MS);
    }

    /// The burst is a number of requests, not a span of time: after `set_rate` the same three
    /// go at once, and the fourth waits one new interval.
    #[test]
    fn set_rate_keeps_the_burst_in_requests() {
        let bucket = LocalBucket::with_clock(
            Quota::per_second(10).unwrap().with_burst(3).unwrap(),
            Clock::Fast,
        );
        bucket.set_rate(1.0).unwrap();
        let inner = &*bucket.inner;
        let t0 = 5_000 * MS;
        for _ in 0..3 {
            assert_eq!(inner.reserve_nanos(t0, 1, None).unwrap().0, t0);
        }
        assert_eq!(inner.reserve_nanos(t0, 1, None).unwrap().0, t0 + 1_000 * MS);
        // And back up: a faster rate shrinks the tolerance with the interval.
        bucket.set_rate(100.0).unwrap();
        let t1 = t0 + 10_000 * MS;
        for _ in 0..3 {
            assert_eq!(inner.reserve_nanos(t1, 1, None).unwrap().0, t1);
        }
        assert_eq!(inner.reserve_nanos(t1, 1, None).unwrap().0, t1 + 10 * MS);
    }

    /// Real time, but counts only: a slow machine cannot make a paced slot immediate unless it
    /// stalls for a whole second between two lines.
    #[tokio::test]
    async fn fast_clock_admits_the_burst_then_hands_out_paced_future_slots() {
        let bucket = LocalBucket::with_clock(
            Quota::per_second(1).unwrap().with_burst(5).unwrap(),
            Clock::Fast,
        );
        let rs: Vec<Reservation> = (0..8)
            .map(|_| bucket.try_reserve_now(None).unwrap())
            .collect();
        let now = Instant::now();
        assert_eq!(rs.iter().filter(|r| r.is_admitted()).count(), 5);
        for pair in rs[4..].windows(2) {
            let gap = pair[1].at() - pair[0].at();
            assert!(
                gap > Duration::from_millis(900) && gap < Duration::from_millis(1_100),
                "paced slots one second apart, got {gap:?}"
            );
        }
        assert!(rs[5].at() > now, "a waiting slot is in tokio's future");
        let shed = bucket.try_reserve_now(Some(Duration::from_secs(1)));
        assert!(matches!(shed, Err(ThrottleError::WaitTooLong { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_clock_does_not_follow_paused_time_but_the_default_does() {
        let quota = Quota::per_second(1).unwrap();
        let fast = LocalBucket::with_clock(quota, Clock::Fast);
        let tokio = LocalBucket::new(quota);
        assert!(fast.try_reserve_now(None).unwrap().is_admitted());
        assert!(tokio.try_reserve_now(None).unwrap().is_admitted());
        tokio::time::advance(Duration::from_secs(5)).await;
        // Virtual time refilled the default bucket, not the one reading the real counter...
        assert!(tokio.try_reserve_now(None).unwrap().is_admitted());
        let waiting = fast.try_reserve_now(None).unwrap();
        assert!(!waiting.is_admitted());
        // ...whose wait is still expressed on tokio's timeline, about a second from now.
        let wait = waiting.at() - Instant::now();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_clock_hold_and_cancel_use_tokio_instants() {
        let bucket = LocalBucket::with_clock(Quota::per_second(10).unwrap(), Clock::Fast);
        let now = Instant::now();
        let until = now + Duration::from_secs(2);
        bucket.hold_until(until);
        let held = bucket.held_until(now).expect("hold in force");
        let err = held.max(until) - held.min(until);
        assert!(
            err < Duration::from_millis(100),
            "hold maps back, off by {err:?}"
        );
        let r = bucket.try_reserve_now(None).unwrap();
        let r_at = r.at();
        assert!(r_at >= held - Duration::from_millis(100));
        bucket.cancel(r, Instant::now());
        let again = bucket.try_reserve_now(None).unwrap();
        let err = again.at().max(r_at) - again.at().min(r_at);
        assert!(
            err < Duration::from_millis(100),
            "the returned slot is reused"
        );
    }
}
