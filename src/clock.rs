//! Time as whole nanoseconds since a bucket's epoch, and the clocks a bucket can read.
//!
//! The pure cores work on `u64` nanoseconds so that they can live in an `AtomicU64`; the shells
//! convert at the edge. By default a bucket reads `tokio::time::Instant`, not `std`: that is
//! what lets `tokio::time::pause()` drive every test, because the clock that decides is the
//! clock that sleeps. [`Clock::Fast`] trades that for a cheaper read, and is opt-in.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// One instant per process that every admitted [`Reservation`] counts from, so that it can
/// carry its slot as a single `i64` instead of a bucket's epoch and an offset: a smaller
/// reservation is cheaper to build and move on every admit.
///
/// [`Reservation`]: crate::bucket::Reservation
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The process-wide origin of admitted reservations (see [`ORIGIN`]).
#[inline]
pub(crate) fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Signed nanoseconds from the process origin to `t`, if they fit in an `i64` (±292 years).
pub(crate) fn since_origin(t: Instant) -> Option<i64> {
    i64::try_from(Epoch(origin()).signed_nanos(t)).ok()
}

/// Which clock a bucket reads when it decides for a caller arriving "now".
///
/// Waiting always happens on tokio's timer, whichever clock decides.
///
/// ```
/// use tower_throttle::{bucket::{Bucket, Clock}, LocalBucket, Quota};
///
/// # #[cfg(feature = "fast-clock")] {
/// // With the `fast-clock` feature:
/// let bucket = LocalBucket::with_clock(Quota::per_second(100)?, Clock::Fast);
/// assert_eq!(bucket.clock(), Clock::Fast);
/// assert!(bucket.try_reserve_now(None).is_ok());
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Clock {
    /// `tokio::time::Instant::now()`, the default. Follows `tokio::time::pause()` and
    /// `advance()`, so tests of code behind the gate run in virtual time. Costs one
    /// `clock_gettime` per decision (about 25 ns on a typical VM).
    #[default]
    Tokio,
    /// The CPU's time-stamp counter, calibrated to nanoseconds by the
    /// [`quanta`](https://docs.rs/quanta) crate (a few nanoseconds per read; it falls back to
    /// the OS monotonic clock where no usable counter exists).
    ///
    /// It does **not** follow `tokio::time::pause()`: under paused time this clock keeps
    /// running in real time while tokio's stands still, so tests that rely on virtual time
    /// must use [`Clock::Tokio`]. Waits are still slept on tokio's timer.
    ///
    /// Needs the `fast-clock` feature (it adds the `quanta` dependency).
    #[cfg(feature = "fast-clock")]
    Fast,
}

/// A bucket's clock: its epoch in tokio time and, for [`Clock::Fast`], the counter it reads.
#[derive(Debug)]
pub(crate) struct BucketClock {
    epoch: Epoch,
    /// Nanoseconds from the process origin to `epoch`: bucket time plus this is the offset an
    /// admitted reservation carries.
    to_origin: i64,
    fast: Option<Fast>,
}

#[derive(Debug)]
struct Fast {
    clock: Counter,
    /// The counter's raw value at the epoch: bucket time is nanoseconds since it.
    anchor: u64,
    /// Tokio time minus counter time, in nanoseconds, as last measured. The two clocks are
    /// separate sources: CLOCK_MONOTONIC is slewed by NTP (up to a few hundred ppm) and the
    /// counter's calibration is not exact, so over hours they can drift apart by more than a
    /// timer tick. Every conversion to or from a tokio instant (waits, holds, snapshots: never
    /// the immediate admit) re-measures this, which keeps the mapping within microseconds.
    /// That is far below tokio's 1 ms timer resolution, so a wait computed on one clock and
    /// slept on the other is as accurate as the timer itself.
    skew: AtomicI64,
}

/// The time-stamp counter behind [`Clock::Fast`].
#[cfg(feature = "fast-clock")]
type Counter = quanta::Clock;

/// Without the `fast-clock` feature there is no counter: a `Fast` cannot exist, and the code
/// that reads one compiles to nothing.
#[cfg(not(feature = "fast-clock"))]
#[derive(Debug)]
enum Counter {}

#[cfg(not(feature = "fast-clock"))]
impl Counter {
    fn raw(&self) -> u64 {
        match *self {}
    }

    fn delta_as_nanos(&self, _: u64, _: u64) -> u64 {
        match *self {}
    }
}

impl BucketClock {
    pub(crate) fn new(kind: Clock) -> BucketClock {
        let fast = match kind {
            Clock::Tokio => None,
            #[cfg(feature = "fast-clock")]
            Clock::Fast => {
                // Calibration is process-wide and runs once (at most ~200 ms, the first time).
                let clock = quanta::Clock::new();
                let anchor = clock.raw();
                Some(Fast {
                    clock,
                    anchor,
                    skew: AtomicI64::new(0),
                })
            }
        };
        let epoch = Epoch::now();
        // Saturating: only a paused tokio clock advanced by centuries could get this far from
        // the origin, and then admitted reservations fall back to carrying an instant.
        let to_origin = Epoch(origin())
            .signed_nanos(epoch.0)
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let clock = BucketClock {
            epoch,
            to_origin,
            fast,
        };
        clock.resync();
        clock
    }

    pub(crate) fn kind(&self) -> Clock {
        match &self.fast {
            None => Clock::Tokio,
            #[cfg(feature = "fast-clock")]
            Some(_) => Clock::Fast,
            #[cfg(not(feature = "fast-clock"))]
            Some(f) => match f.clock {},
        }
    }

    /// Bucket time now from the fast clock; `None` for the tokio clock, whose callers read
    /// `Instant::now()` themselves (they need the instant as well as the nanoseconds).
    #[inline]
    pub(crate) fn fast_now(&self) -> Option<FastNow<'_>> {
        self.fast.as_ref().map(|f| FastNow {
            nanos: f.now(),
            fast: f,
            to_origin: self.to_origin,
        })
    }

    /// The caller's own `now` (bucket time `nanos`, exact) as nanoseconds since the process
    /// origin, when that fits in an `i64`.
    #[inline]
    pub(crate) fn admitted(&self, now: Instant, nanos: u64) -> Option<i64> {
        match self.fast {
            // Bucket time is tokio time since the epoch: exact, and one add.
            None => i64::try_from(nanos).ok()?.checked_add(self.to_origin),
            // Bucket time went through the skew, which another thread may re-measure: count
            // from `now` itself so that `at()` hands it back exactly.
            Some(_) => since_origin(now),
        }
    }

    /// The tokio instant of bucket time `nanos`.
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        match &self.fast {
            None => self.epoch.instant(nanos),
            Some(f) => self
                .epoch
                .shifted(i128::from(nanos) + i128::from(self.resync_fast(f))),
        }
    }

    /// Bucket time at tokio instant `t`, saturating into `u64`, and whether
    /// [`BucketClock::instant`] maps it back to `t` exactly (not so when it saturated).
    #[inline]
    pub(crate) fn offset(&self, t: Instant) -> (u64, bool) {
        match &self.fast {
            None => self.epoch.offset(t),
            Some(f) => {
                let n = self.epoch.signed_nanos(t) - i128::from(self.resync_fast(f));
                match u64::try_from(n) {
                    Ok(n) => (n, true),
                    Err(_) if n < 0 => (0, false),
                    Err(_) => (u64::MAX, false),
                }
            }
        }
    }

    /// [`BucketClock::offset`] without the exactness flag.
    #[inline]
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        self.offset(t).0
    }

    fn resync(&self) {
        if let Some(f) = &self.fast {
            self.resync_fast(f);
        }
    }

    fn resync_fast(&self, f: &Fast) -> i64 {
        let n = f.now();
        let t = self.epoch.signed_nanos(Instant::now());
        let skew = (t - i128::from(n)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        f.skew.store(skew, Ordering::Relaxed);
        skew
    }
}

/// A reading of a bucket's fast clock, holding on to the clock so that an admitted caller's
/// slot is converted without checking the clock kind again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastNow<'a> {
    /// Bucket time now.
    pub(crate) nanos: u64,
    fast: &'a Fast,
    to_origin: i64,
}

impl FastNow<'_> {
    /// Bucket time `nanos` as nanoseconds since the process origin, for an admitted caller: no
    /// clock read and no instant arithmetic (see [`Reservation::at`]); the last measured skew
    /// is close enough for a value nobody sleeps on.
    ///
    /// [`Reservation::at`]: crate::bucket::Reservation::at
    #[inline]
    pub(crate) fn admitted(&self, nanos: u64) -> i64 {
        // Bucket time stays below 2^63 ns (292 years) for any real process lifetime, and the
        // skew and the distance to the origin are differences of two such times: plain
        // arithmetic cannot overflow here.
        (nanos as i64)
            .wrapping_add(self.fast.skew.load(Ordering::Relaxed))
            .wrapping_add(self.to_origin)
    }
}

impl Fast {
    #[inline]
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.anchor, self.clock.raw())
    }
}

/// The instant a bucket was created; every stored time is an offset from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn now() -> Self {
        Epoch(Instant::now())
    }

    /// Nanoseconds from the epoch to `t`, saturating: an instant before the epoch is 0 and one
    /// more than 584 years later is `u64::MAX`, so no caller-supplied instant can panic here;
    /// and whether [`Epoch::instant`] maps the result back to exactly `t` (not so when it
    /// saturated). Lets the admit path hand back the caller's own `now` instead
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
            .unwrap_or_else(|| self.far_future())
    }

    /// Signed nanoseconds from the epoch to `t` (before the epoch is negative).
    fn signed_nanos(&self, t: Instant) -> i128 {
        match t.checked_duration_since(self.0) {
            Some(d) => d.as_nanos() as i128,
            None => -(self.0.duration_since(t).as_nanos() as i128),
        }
    }

    /// The epoch moved by a signed number of nanoseconds, saturating at representable instants.
    #[inline]
    fn shifted(&self, nanos: i128) -> Instant {
        if nanos >= 0 {
            self.instant(u64::try_from(nanos).unwrap_or(u64::MAX))
        } else {
            let back = Duration::from_nanos(u64::try_from(-nanos).unwrap_or(u64::MAX));
            self.0.checked_sub(back).unwrap_or(self.0)
        }
    }

    fn far_future(&self) -> Instant {
        later(self.0, FOREVER)
    }
}

/// How far "never" is: a wait this long or longer is as good as forever, and every instant
/// the crate computes stays representable.
const FOREVER: Duration = Duration::from_secs(86_400 * 365 * 100);

/// `at + wait`, saturating a century ahead. Every instant the crate moves forward by a
/// configured or server-given duration goes through here, so `Duration::MAX` in a setting or
/// `Retry-After: 18446744073709551615` from a server can never overflow (`Instant + Duration`
/// panics on overflow).
#[inline]
pub(crate) fn later(at: Instant, wait: Duration) -> Instant {
    match at.checked_add(wait.min(FOREVER)) {
        Some(t) => t,
        None => at,
    }
}

/// `base` moved by a signed number of nanoseconds, saturating at representable instants.
pub(crate) fn shift(base: Instant, nanos: i64) -> Instant {
    let d = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        later(base, d)
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

/// Nanoseconds in a `Duration`, saturating at `u64::MAX`.
#[inline]
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
        }
    }

    #[test]
    fn signed_shift_is_the_inverse_of_signed_nanos() {
        let epoch = Epoch::now();
        let later = epoch.0 + Duration::new(2, 5);
        assert_eq!(epoch.signed_nanos(later), 2_000_000_005);
        assert_eq!(epoch.shifted(2_000_000_005), later);
        if let Some(before) = epoch.0.checked_sub(Duration::from_millis(7)) {
            assert_eq!(epoch.signed_nanos(before), -7_000_000);
            assert_eq!(epoch.shifted(-7_000_000), before);
        }
    }

    #[cfg(feature = "fast-clock")]
    #[tokio::test(start_paused = true)]
    async fn fast_clock_maps_tokio_instants_through_the_measured_skew() {
        let clock = BucketClock::new(Clock::Fast);
        assert_eq!(clock.kind(), Clock::Fast);
        // Paused tokio time stands still while the counter runs: the mapping absorbs it.
        tokio::time::advance(Duration::from_secs(3)).await;
        let now = Instant::now();
        let fast = clock
            .fast_now()
            .expect("fast clock reads nanoseconds")
            .nanos;
        assert!(fast < 60_000_000_000, "bucket time starts at its epoch");
        // The counter moved by real time only (microseconds), tokio's by 3 s: a mapping through
        // the creation anchor alone would be 3 s off; the re-measured one is off by the real
        // time between the two reads.
        let gap = |a: Instant, b: Instant| a.max(b) - a.min(b);
        let err = gap(clock.instant(fast), now);
        assert!(err < Duration::from_millis(500), "error {err:?}");
        let (n, exact) = clock.offset(now);
        assert!(exact);
        let err = gap(
            clock.instant(n + 1_000_000_000),
            now + Duration::from_secs(1),
        );
        assert!(err < Duration::from_millis(500), "error {err:?}");
        assert!(BucketClock::new(Clock::Tokio).fast_now().is_none());
    }
}
