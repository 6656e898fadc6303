//! Quotas (n requests per period, with a burst) and [`Limits`] (several quotas at once).
//!
//! Two shapes of server limit exist in the wild and the difference decides whether a client
//! earns 429s:
//!
//! * **Rolling windows** ("100 per 10 s": never more than 100 in *any* 10 s, as Customer.io and
//!   HubSpot enforce). A quota built with [`Quota::new`] / [`Quota::per_second`] and the default
//!   burst of 1 paces requests one interval apart and so never admits more than `n` in any
//!   half-open interval of length `period`: it is safe against a rolling window.
//! * **Token buckets** (rate `r`, burst `b`, as nginx and many gateways enforce). Raising the
//!   burst with [`Quota::with_burst`] lets `b` requests go at once after an idle spell; in any
//!   interval of length `t` at most `b - 1 + ceil(r * t)` are admitted. Against a rolling-window
//!   server a burst above 1 can overshoot (a rate of 10/s with burst 100 admits 190 in the
//!   first 10 s), which is the trap governor's users keep falling into.
//!
//! [`Limits`] admits a request only when every quota in it does, atomically: a request
//! refused by a daily quota does not consume a slot of the per-second one.

use std::time::Duration;

use crate::clock::duration_nanos;
use crate::ConfigError;

/// `count` requests per `period`, released one `period / count` apart, plus a burst.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::Quota;
///
/// // Customer.io's Track API allows ~100/s per workspace; stay at 80/s, evenly paced.
/// let track = Quota::per_second(80)?;
/// assert_eq!(track.interval(), Duration::from_micros(12_500));
///
/// // A token-bucket server: 100 per 10 s with a burst of 100.
/// let bursty = Quota::new(100, Duration::from_secs(10))?.with_burst(100)?;
/// assert_eq!(bursty.burst(), 100);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
    interval_nanos: u64,
}

/// The quota as written: `count` per `period` (with `burst` when above 1), or the
/// `allowance` of [`Quota::allowance`] / [`Quota::daily`], never the derived interval.
impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Quota");
        let allowance = self.window_allowance();
        if self.burst > 1 && Quota::allowance_shape(allowance) == Some((self.count, self.burst)) {
            return d
                .field("allowance", &allowance)
                .field("period", &self.period)
                .finish();
        }
        d.field("count", &self.count).field("period", &self.period);
        if self.burst > 1 {
            d.field("burst", &self.burst);
        }
        d.finish()
    }
}

impl Quota {
    /// `count` requests per `period`, burst 1 (evenly paced, rolling-window safe).
    ///
    /// Errors: [`ConfigError::ZeroRate`], [`ConfigError::ZeroPeriod`], or
    /// [`ConfigError::Overflow`] when the per-request interval would be below one nanosecond.
    pub fn new(count: u32, period: Duration) -> Result<Quota, ConfigError> {
        if count == 0 {
            return Err(ConfigError::ZeroRate);
        }
        if period.is_zero() {
            return Err(ConfigError::ZeroPeriod);
        }
        let period_nanos = duration_nanos(period);
        if period_nanos == u64::MAX {
            return Err(ConfigError::Overflow { what: "period" });
        }
        // Rounding the interval up means rounding the rate down: never faster than asked.
        let interval_nanos = period_nanos.div_ceil(u64::from(count));
        if period_nanos < u64::from(count) {
            return Err(ConfigError::Overflow { what: "rate" });
        }
        Ok(Quota {
            count,
            period,
            burst: 1,
            interval_nanos,
        })
    }

    /// `count` requests per second.
    pub fn per_second(count: u32) -> Result<Quota, ConfigError> {
        Quota::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Result<Quota, ConfigError> {
        Quota::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u32) -> Result<Quota, ConfigError> {
        Quota::new(count, Duration::from_secs(3_600))
    }

    /// `count` requests per day (24 h rolling), **evenly paced**: 40,000 per day is one every
    /// 2.16 s. That is what a process spreading a daily budget over the day wants; as the
    /// second window beside a short one it slows everything to that pace. For a daily
    /// allowance that the short window may spend as it needs, use [`Quota::daily`].
    pub fn per_day(count: u32) -> Result<Quota, ConfigError> {
        Quota::new(count, Duration::from_secs(86_400))
    }

    /// An allowance of `count` requests in any `period`, with no pacing inside it: the shape of
    /// a daily or hourly API budget beside a short rate window.
    ///
    /// As a token bucket it holds `ceil(count / 2)` requests at the start and refills
    /// `floor(count / 2) + 1` per period. A bucket with burst `b` admits at most
    /// `b - 1 + refill` in any interval of one refill period, which here is exactly `count`:
    /// never more than the allowance in any period, rolling or reset at midnight. The price of
    /// the guarantee is the sustained rate: after the first half is spent the bucket earns back
    /// about half the allowance per period. [`Quota::count`] and [`Quota::burst`] report the
    /// bucket (refill and burst), not `count`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_throttle::Quota;
    ///
    /// let hourly = Quota::allowance(1_000, Duration::from_secs(3_600))?;
    /// assert_eq!((hourly.burst(), hourly.count()), (500, 501));
    /// # Ok::<(), tower_throttle::ConfigError>(())
    /// ```
    ///
    /// Errors: [`ConfigError::ZeroRate`] for a zero count, and those of [`Quota::new`].
    pub fn allowance(count: u32, period: Duration) -> Result<Quota, ConfigError> {
        let (paced, burst) =
            Quota::allowance_shape(u64::from(count)).ok_or(ConfigError::ZeroRate)?;
        Quota::new(paced, period)?.with_burst(burst)
    }

    /// The (count, burst) that spend `allowance` per period at most, half of it at once.
    fn allowance_shape(allowance: u64) -> Option<(u32, u32)> {
        let n = u32::try_from(allowance).ok().filter(|n| *n > 0)?;
        Some((n / 2 + 1, n.div_ceil(2)))
    }

    /// The most this quota admits in any window of its period: `count + burst - 1`.
    fn window_allowance(&self) -> u64 {
        u64::from(self.count) + u64::from(self.burst) - 1
    }

    /// [`Quota::allowance`] over 24 hours: a daily budget that never paces the short window.
    pub fn daily(count: u32) -> Result<Quota, ConfigError> {
        Quota::allowance(count, Duration::from_secs(86_400))
    }

    /// Allows `burst` requests at once after an idle spell (token-bucket shape).
    ///
    /// Errors: [`ConfigError::ZeroBurst`], or [`ConfigError::Overflow`] when
    /// `burst x interval` does not fit in 584 years.
    pub fn with_burst(self, burst: u32) -> Result<Quota, ConfigError> {
        if burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        self.interval_nanos
            .checked_mul(u64::from(burst))
            .ok_or(ConfigError::Overflow { what: "burst" })?;
        Ok(Quota { burst, ..self })
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Requests that may go at once after an idle spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time between two paced requests, rounded up to the nanosecond.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos)
    }

    /// Requests per second as a float (for display and adaptive control).
    pub fn rate_per_second(&self) -> f64 {
        1e9 / self.interval_nanos as f64
    }

    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval_nanos
    }
}

/// Several quotas enforced together, plus an optional cap on requests in flight.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::{Limits, Quota};
///
/// // 100 per 10 s and an allowance of 40,000 per day, both at once. `Quota::daily` is the
/// // allowance shape: the 10 s window sets the pace, the day only caps the total.
/// // (`Quota::per_day` would pace one request every 2.16 s.)
/// let limits = Limits::new(Quota::new(100, Duration::from_secs(10))?)
///     .and(Quota::daily(40_000)?)
///     .with_concurrency(10)?;
/// assert_eq!(limits.quotas().len(), 2);
/// assert_eq!(limits.concurrency(), Some(10));
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
///
/// The concurrency cap travels with the limits: a [`LocalBucket`](crate::LocalBucket) or
/// [`KeyedBucket`](crate::bucket::KeyedBucket) built from them enforces it (per key for the
/// latter) in every layer built on that bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    // Sorted by period, shortest first: the shortest window is the one adaptive control drives.
    quotas: Vec<Quota>,
    concurrency: Option<usize>,
}

impl Limits {
    /// Limits made of one quota.
    pub fn new(quota: Quota) -> Limits {
        Limits {
            quotas: vec![quota],
            concurrency: None,
        }
    }

    /// No rate limit at all; useful with [`Limits::with_concurrency`] alone (Mailchimp limits
    /// connections, not rate).
    pub fn unlimited() -> Limits {
        Limits {
            quotas: Vec::new(),
            concurrency: None,
        }
    }

    /// Adds a quota; a request must satisfy every one. A longer window beside a short one is
    /// usually an allowance ([`Quota::daily`], [`Quota::allowance`]), not a pace.
    pub fn and(mut self, quota: Quota) -> Limits {
        let at = self
            .quotas
            .partition_point(|q| q.period() <= quota.period());
        self.quotas.insert(at, quota);
        self
    }

    /// Caps the number of requests in flight (started and not yet answered).
    pub fn with_concurrency(mut self, max_in_flight: usize) -> Result<Limits, ConfigError> {
        if max_in_flight == 0 {
            return Err(ConfigError::Zero {
                name: "max_in_flight",
            });
        }
        self.concurrency = Some(max_in_flight);
        Ok(self)
    }

    /// The quotas, shortest period first.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// The cap on requests in flight, if any.
    pub fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }
}

impl From<Quota> for Limits {
    fn from(quota: Quota) -> Limits {
        Limits::new(quota)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 item 9: the HubSpot preset printed `count: 125001 ... burst: 125000` and the
    /// derived interval, not the 250,000 per day it was written as.
    #[test]
    fn debug_shows_the_quota_as_written() {
        let daily = Quota::daily(250_000).unwrap();
        assert_eq!(
            format!("{daily:?}"),
            "Quota { allowance: 250000, period: 86400s }"
        );
        let paced = Quota::new(100, Duration::from_secs(10)).unwrap();
        assert_eq!(format!("{paced:?}"), "Quota { count: 100, period: 10s }");
        let bucket = Quota::per_second(10).unwrap().with_burst(100).unwrap();
        assert_eq!(
            format!("{bucket:?}"),
            "Quota { count: 10, period: 1s, burst: 100 }"
        );
        assert!(!format!("{:?}", crate::presets::hubspot()).contains("interval"));
    }

    #[test]
    fn rejects_invalid_quotas_with_typed_errors() {
        assert_eq!(Quota::per_second(0), Err(ConfigError::ZeroRate));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(ConfigError::ZeroPeriod));
        assert_eq!(
            Quota::new(2, Duration::from_nanos(1)),
            Err(ConfigError::Overflow { what: "rate" })
        );
        assert_eq!(
            Quota::new(1, Duration::MAX),
            Err(ConfigError::Overflow { what: "period" })
        );
        let q = Quota::per_second(10).unwrap();
        assert_eq!(q.with_burst(0), Err(ConfigError::ZeroBurst));
        let slow = Quota::new(1, Duration::from_secs(86_400 * 365 * 100)).unwrap();
        assert_eq!(
            slow.with_burst(u32::MAX),
            Err(ConfigError::Overflow { what: "burst" })
        );
        assert_eq!(
            Limits::unlimited().with_concurrency(0),
            Err(ConfigError::Zero {
                name: "max_in_flight"
            })
        );
    }

    #[test]
    fn interval_rounds_up_so_the_rate_never_exceeds_the_quota() {
        let q = Quota::new(3, Duration::from_secs(1)).unwrap();
        assert_eq!(q.interval(), Duration::from_nanos(333_333_334));
        assert!(q.interval() * 3 >= Duration::from_secs(1));
        assert_eq!(
            Quota::per_second(80).unwrap().interval(),
            Duration::from_micros(12_500)
        );
    }

    #[test]
    fn limits_keep_the_shortest_window_first() {
        let day = Quota::per_day(40_000).unwrap();
        let ten_s = Quota::new(100, Duration::from_secs(10)).unwrap();
        let limits = Limits::new(day).and(ten_s);
        assert_eq!(limits.quotas(), &[ten_s, day]);
    }
}
