//! The in-process bucket: one GCRA cell per quota, shared through an `Arc`.
//!
//! A single quota (the common case) lives in one `AtomicU64` updated with compare-and-swap:
//! one CAS per admitted request, no lock, no allocation. Several quotas must be admitted
//! together (a caller refused by the daily window must not consume a per-second slot), which
//! one CAS cannot do, so that case takes a short mutex; it is still allocation-free.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{interval_for_rate, Bucket, Gcra, Reservation, Reserve, Snapshot};
use crate::clock::{duration_nanos, BucketClock, Clock};
use crate::sync::{AtomicU64, Mutex, MutexGuard, OwnLine};
use crate::{ConfigError, Limits, ThrottleError};

/// A token bucket in this process, shared by every clone.
///
/// Built from [`Limits`] (or a single [`Quota`](crate::Quota)); see the
/// [module docs](crate::bucket) for an example.
#[derive(Debug, Clone)]
pub struct LocalBucket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: BucketClock,
    limits: Limits,
    /// Burst of the shortest window less one; its interval is `primary_interval`, which
    /// `set_rate` moves (and keeps at least 1, as `Quota` does), and `primary_tolerance` follows
    /// it. The two are stored apart: a caller racing `set_rate` may pair the new interval with
    /// the old tolerance for one decision, which is within the change it is racing anyway.
    primary_extra_burst: u64,
    primary_interval: AtomicU64,
    primary_tolerance: AtomicU64,
    /// End of the latest hold in epoch nanoseconds (0: none). Waiters compare their slot to it.
    hold: AtomicU64,
    cells: Cells,
}

#[derive(Debug)]
enum Cells {
    /// No quota: only a concurrency cap (or nothing) applies.
    Unlimited,
    One(OwnLine<AtomicU64>),
    /// Several quotas; the `Vec` holds one TAT per quota, shortest period first.
    Many(OwnLine<Mutex<Vec<u64>>>),
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
    /// use tower_throttle::{Clock, LocalBucket, Quota, RateLimitLayer};
    ///
    /// let bucket = LocalBucket::with_clock(Quota::per_second(50)?, Clock::Fast);
    /// let layer = RateLimitLayer::with_bucket(bucket);
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_clock(limits: impl Into<Limits>, clock: Clock) -> LocalBucket {
        let limits = limits.into();
        // The cell every admit rebuilds from atomics, clamped as `Gcra::new` clamps it.
        let (primary, primary_extra_burst) =
            limits.quotas().first().map_or((Gcra::new(1, 1), 0), |q| {
                (
                    Gcra::new(q.interval_nanos(), q.burst()),
                    u64::from(q.burst().max(1)) - 1,
                )
            });
        let cells = match limits.quotas().len() {
            0 => Cells::Unlimited,
            1 => Cells::One(OwnLine(AtomicU64::new(0))),
            n => Cells::Many(OwnLine(Mutex::new(vec![0; n]))),
        };
        LocalBucket {
            inner: Arc::new(Inner {
                clock: BucketClock::new(clock),
                primary_extra_burst,
                primary_interval: AtomicU64::new(primary.interval()),
                primary_tolerance: AtomicU64::new(primary.tolerance()),
                hold: AtomicU64::new(0),
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

    /// [`Bucket::reserve`] without the `Reserve` wrapper: a local bucket never needs I/O.
    #[inline]
    pub fn try_reserve(
        &self,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let (now_n, exact) = inner.clock.offset(now);
        let (slot, token, interval) = inner.reserve_nanos(now_n, max_wait)?;
        // An admitted caller (the hot path) goes at `now` itself; only a future slot needs an
        // instant built from nanoseconds.
        Ok(if !exact {
            Reservation::new(inner.clock.instant(slot), token, interval)
        } else if slot == now_n {
            Reservation::admitted_or(inner.clock.admitted(now, now_n), now, token, interval)
        } else {
            Reservation::new(
                now.checked_add(Duration::from_nanos(slot - now_n))
                    .unwrap_or_else(|| inner.clock.instant(slot)),
                token,
                interval,
            )
        })
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
                let (slot, token, interval) = inner.reserve_nanos(now_n, max_wait)?;
                Ok(if slot == now_n {
                    Reservation::admitted_since_origin(fast.admitted(now_n), token, interval)
                } else {
                    Reservation::new(inner.clock.instant(slot), token, interval)
                })
            }
        }
    }
}

impl Inner {
    /// The decision in bucket time: the caller's slot, the token to cancel it with, and the
    /// interval it consumed. Nothing is reserved when the slot is more than `max_wait` away.
    // Always inlined: called from the two admit entry points, and a call would pass the
    // result through memory, which on this path costs as much as the decision itself.
    #[inline(always)]
    fn reserve_nanos(
        &self,
        now_n: u64,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64, u64), ThrottleError> {
        // The single-quota cell is the fall-through and everything else one cold call away: the
        // common case then reads the cell kind once, keeps its state in registers, and runs as
        // straight-line code (taken branches cost front-end cycles next to the clock read's
        // microcode).
        let Cells::One(tat) = &self.cells else {
            return self.reserve_other(now_n, max_wait);
        };
        // No ceiling is the same as one that can never be exceeded: one comparison either way.
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let primary = self.primary();
        let mut current = tat.load(Ordering::Acquire);
        // Uncontended: this load, one compare-exchange, done.
        loop {
            let slot = primary.earliest(current, now_n);
            if slot - now_n > limit {
                return Err(too_long(slot - now_n, max_wait));
            }
            let next = primary.after(current, slot);
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok((slot, next, primary.interval())),
                Err(seen) => current = seen,
            }
        }
    }

    /// [`Inner::reserve_nanos`] for buckets without exactly one quota: several quotas, under the
    /// lock, or none (a concurrency cap alone). Cold only in the sense of code layout: it keeps
    /// the single-quota path around it small enough to live in registers.
    #[cold]
    #[inline(never)]
    fn reserve_other(
        &self,
        now_n: u64,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64, u64), ThrottleError> {
        let primary = self.primary();
        let Cells::Many(tats) = &self.cells else {
            return Ok((now_n, 0, primary.interval()));
        };
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let mut tats = lock(tats);
        let slot = (0..tats.len())
            .map(|i| self.cell(i, &primary).earliest(tats[i], now_n))
            .max()
            .unwrap_or(now_n);
        if slot - now_n > limit {
            return Err(too_long(slot - now_n, max_wait));
        }
        for i in 0..tats.len() {
            tats[i] = self.cell(i, &primary).after(tats[i], slot);
        }
        Ok((slot, tats[0], primary.interval()))
    }

    #[inline]
    fn primary(&self) -> Gcra {
        Gcra::from_parts(
            self.primary_interval.load(Ordering::Relaxed),
            self.primary_tolerance.load(Ordering::Relaxed),
        )
    }

    /// Window `i`'s cell; window 0 follows the run-time rate.
    fn cell(&self, i: usize, primary: &Gcra) -> Gcra {
        if i == 0 {
            *primary
        } else {
            let q = &self.limits.quotas()[i];
            Gcra::new(q.interval_nanos(), q.burst())
        }
    }
}

#[cold]
fn too_long(wait: u64, max_wait: Option<Duration>) -> ThrottleError {
    ThrottleError::WaitTooLong {
        wait: Duration::from_nanos(wait),
        max_wait: max_wait.unwrap_or(Duration::MAX),
    }
}

fn lock(m: &Mutex<Vec<u64>>) -> MutexGuard<'_, Vec<u64>> {
    // The guarded data is a plain array of numbers that is never left half-written, so a
    // panic elsewhere while holding the lock cannot have broken it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bucket for LocalBucket {
    fn reserve(&self, now: Instant, max_wait: Option<Duration>) -> Reserve {
        Reserve::Ready(self.try_reserve(now, max_wait))
    }

    #[inline]
    fn reserve_now(&self, max_wait: Option<Duration>) -> Reserve {
        Reserve::Ready(self.try_reserve_now(max_wait))
    }

    fn cancel(&self, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let back = Gcra::undo(reservation.token, reservation.interval, now_n);
                // Fails when someone reserved after us: then the slot is forgotten, because
                // handing it back would let two callers share one instant.
                let _ = tat.compare_exchange(
                    reservation.token,
                    back,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            Cells::Many(tats) => {
                let mut tats = lock(tats);
                if tats[0] != reservation.token {
                    return;
                }
                tats[0] = Gcra::undo(reservation.token, reservation.interval, now_n);
                for (i, tat) in tats.iter_mut().enumerate().skip(1) {
                    let q = &inner.limits.quotas()[i];
                    *tat = Gcra::undo(*tat, q.interval_nanos(), now_n);
                }
            }
        }
    }

    fn hold_until(&self, until: Instant) {
        let inner = &*self.inner;
        let until_n = inner.clock.nanos(until);
        inner.hold.fetch_max(until_n, Ordering::AcqRel);
        let primary = inner.primary();
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(primary.hold(t, until_n))
                });
            }
            Cells::Many(tats) => {
                let mut tats = lock(tats);
                for i in 0..tats.len() {
                    tats[i] = inner.cell(i, &primary).hold(tats[i], until_n);
                }
            }
        }
    }

    fn held_until(&self, now: Instant) -> Option<Instant> {
        let inner = &*self.inner;
        let hold = inner.hold.load(Ordering::Acquire);
        (hold != 0 && hold > inner.clock.nanos(now)).then(|| inner.clock.instant(hold))
    }

    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        let interval = interval_for_rate(per_second)?;
        let inner = &*self.inner;
        inner.primary_tolerance.store(
            Gcra::tolerance_for(interval, inner.primary_extra_burst),
            Ordering::Relaxed,
        );
        inner.primary_interval.store(interval, Ordering::Relaxed);
        Ok(())
    }

    fn rate(&self) -> f64 {
        1e9 / self.inner.primary_interval.load(Ordering::Relaxed) as f64
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let primary = inner.primary();
        let tats: Vec<u64> = match &inner.cells {
            Cells::Unlimited => Vec::new(),
            Cells::One(tat) => vec![tat.load(Ordering::Acquire)],
            Cells::Many(tats) => lock(tats).clone(),
        };
        let mut available = u64::MAX;
        let mut next_free = now_n;
        for (i, tat) in tats.iter().enumerate() {
            let cell = inner.cell(i, &primary);
            available = available.min(cell.available(*tat, now_n));
            next_free = next_free.max(cell.earliest(*tat, now_n));
        }
        Snapshot {
            available,
            next_free: inner.clock.instant(next_free),
            rate_per_second: if tats.is_empty() {
                f64::INFINITY
            } else {
                self.rate()
            },
            held_until: self.held_until(now),
        }
    }
}

#[cfg(test)]
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
            let (slot, _, interval) = inner.reserve_nanos(t0, None).unwrap();
            assert_eq!((slot, interval), (t0, 100 * MS));
        }
        assert_eq!(inner.reserve_nanos(t0, None).unwrap().0, t0 + 100 * MS);
        assert_eq!(inner.reserve_nanos(t0, None).unwrap().0, t0 + 200 * MS);
        // A ceiling below the next wait reserves nothing and reports the wait.
        match inner.reserve_nanos(t0, Some(Duration::from_millis(250))) {
            Err(ThrottleError::WaitTooLong { wait, .. }) => {
                assert_eq!(wait, Duration::from_millis(300))
            }
            other => panic!("expected WaitTooLong, got {other:?}"),
        }
        // 300 ms later every reserved slot has passed: the next goes at once, then paced.
        let t1 = t0 + 300 * MS;
        assert_eq!(inner.reserve_nanos(t1, None).unwrap().0, t1);
        assert_eq!(inner.reserve_nanos(t1, None).unwrap().0, t1 + 100 * MS);
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
            assert_eq!(inner.reserve_nanos(t0, None).unwrap().0, t0);
        }
        assert_eq!(inner.reserve_nanos(t0, None).unwrap().0, t0 + 1_000 * MS);
        // And back up: a faster rate shrinks the tolerance with the interval.
        bucket.set_rate(100.0).unwrap();
        let t1 = t0 + 10_000 * MS;
        for _ in 0..3 {
            assert_eq!(inner.reserve_nanos(t1, None).unwrap().0, t1);
        }
        assert_eq!(inner.reserve_nanos(t1, None).unwrap().0, t1 + 10 * MS);
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
