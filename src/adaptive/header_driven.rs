//! [`HeaderDriven`]: the rate the server states in its rate-limit headers.

use std::time::Duration;

use tokio::time::Instant;

use super::aimd::Aimd;
use super::controller::{
    check_bounds, check_margin, clamp, lower_max, HeaderInfo, RateController, Signal,
};
use crate::ConfigError;

/// Sets the rate from the server's own rate-limit headers, and hands over to an inner
/// controller (AIMD by default) when they vanish.
///
/// With headers present the rate is `(1 - margin) x limit / window`: the window from
/// `RateLimit-Policy` (or HubSpot's interval) when the server states it, otherwise the longest
/// `reset` seen for that limit (a reset never exceeds the window it counts down). With only
/// `remaining` and `reset`, the rate spends what is left evenly: `remaining / reset`. A 429
/// while headers are present means the quota is shared with someone else: a share factor
/// (x0.7 per throttle event, at most one event per second, back to 1 by x1.05 per 20 successes)
/// scales the header rate down. After `stale_after` responses in a row without headers, the
/// inner controller takes over from the current rate.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_throttle::{adaptive::{HeaderInfo, RateController, Signal}, HeaderDriven};
///
/// let mut c = HeaderDriven::new(5.0, 0.5, 500.0)?;
/// let headers = HeaderInfo {
///     limit: Some(100.0),
///     remaining: Some(40.0),
///     reset: Some(Duration::from_secs(1)),
///     window: Some(Duration::from_secs(1)),
/// };
/// let rate = c.on_outcome(Instant::now(), &Signal::Success { headers: Some(headers) });
/// assert_eq!(rate, Some(98.0));
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct HeaderDriven {
    inner: Box<dyn RateController>,
    rate: f64,
    min: f64,
    max: f64,
    margin: f64,
    stale_after: u32,
    missing: u32,
    fresh: bool,
    share: f64,
    share_streak: u32,
    last_event: Option<Instant>,
    window_estimate: Option<(f64, Duration)>,
}

/// Checked builder for [`HeaderDriven`]. Defaults: start 1/s, min 0.1/s, max 1000/s, margin
/// 0.02, stale after 5 responses without headers, inner controller [`Aimd`] over the same
/// bounds.
#[derive(Debug)]
pub struct HeaderDrivenBuilder {
    start: f64,
    min: f64,
    max: f64,
    margin: f64,
    stale_after: u32,
    inner: Option<Box<dyn RateController>>,
}

impl HeaderDriven {
    /// Header-driven with AIMD fallback, starting at `start` and clamped to `[min, max]`.
    pub fn new(start: f64, min: f64, max: f64) -> Result<HeaderDriven, ConfigError> {
        HeaderDriven::builder()
            .start(start)
            .min(min)
            .max(max)
            .build()
    }

    /// A builder with the defaults listed on [`HeaderDrivenBuilder`].
    pub fn builder() -> HeaderDrivenBuilder {
        HeaderDrivenBuilder {
            start: 1.0,
            min: 0.1,
            max: 1000.0,
            margin: 0.02,
            stale_after: 5,
            inner: None,
        }
    }

    /// Whether the rate currently comes from headers (rather than the inner controller).
    pub fn headers_fresh(&self) -> bool {
        self.fresh
    }

    fn rate_from_headers(&mut self, h: &HeaderInfo) -> Option<f64> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let secs = |d: Duration| d.as_secs_f64();
        if let Some(limit) = h.limit.filter(|&l| positive(l)) {
            let window = match h.window.filter(|w| !w.is_zero()) {
                Some(w) => Some(w),
                None => {
                    // The longest reset seen for this limit approaches the window from below.
                    let longest = match (self.window_estimate, h.reset) {
                        (Some((l, w)), Some(r)) if l == limit => Some(w.max(r)),
                        (Some((l, w)), None) if l == limit => Some(w),
                        (_, r) => r,
                    };
                    if let Some(w) = longest {
                        self.window_estimate = Some((limit, w));
                    }
                    longest.filter(|w| !w.is_zero())
                }
            };
            if let Some(w) = window {
                return Some((1.0 - self.margin) * limit / secs(w));
            }
        }
        match (h.remaining, h.reset) {
            (Some(rem), Some(reset)) if rem.is_finite() && rem >= 0.0 && !reset.is_zero() => {
                Some(rem / secs(reset))
            }
            _ => None,
        }
    }
}

impl HeaderDrivenBuilder {
    /// The first rate.
    pub fn start(mut self, rate: f64) -> Self {
        self.start = rate;
        self
    }
    /// The lowest rate.
    pub fn min(mut self, rate: f64) -> Self {
        self.min = rate;
        self
    }
    /// The highest rate.
    pub fn max(mut self, rate: f64) -> Self {
        self.max = rate;
        self
    }
    /// Fraction kept below the stated limit, in [0, 0.5).
    pub fn margin(mut self, margin: f64) -> Self {
        self.margin = margin;
        self
    }
    /// Responses in a row without headers before the inner controller takes over (>= 1).
    pub fn stale_after(mut self, responses: u32) -> Self {
        self.stale_after = responses;
        self
    }
    /// The fallback controller (default: [`Aimd`] over the same start and bounds).
    pub fn inner(mut self, inner: impl RateController + 'static) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }
    /// Checks every value.
    pub fn build(self) -> Result<HeaderDriven, ConfigError> {
        check_bounds(self.start, self.min, self.max)?;
        check_margin(self.margin)?;
        if self.stale_after == 0 {
            return Err(ConfigError::Zero {
                name: "stale_after",
            });
        }
        let inner = match self.inner {
            Some(inner) => inner,
            None => Box::new(Aimd::new(self.start, self.min, self.max)?),
        };
        Ok(HeaderDriven {
            inner,
            rate: self.start,
            min: self.min,
            max: self.max,
            margin: self.margin,
            stale_after: self.stale_after,
            missing: 0,
            fresh: false,
            share: 1.0,
            share_streak: 0,
            last_event: None,
            window_estimate: None,
        })
    }
}

impl RateController for HeaderDriven {
    fn on_outcome(&mut self, now: Instant, signal: &Signal) -> Option<f64> {
        let old = self.rate;
        match signal {
            Signal::Transient => return None,
            Signal::Overloaded { .. } => {
                // Says nothing about the stated quota (nor that the headers vanished); the
                // fallback, when in charge, stops growing.
                if !self.fresh {
                    self.inner.on_outcome(now, signal);
                    self.rate = clamp(self.inner.rate(), self.min, self.max);
                }
                return (self.rate != old).then_some(self.rate);
            }
            _ => {}
        }
        let from_headers = signal.headers().and_then(|h| self.rate_from_headers(h));
        match from_headers {
            Some(header_rate) => {
                self.missing = 0;
                self.fresh = true;
                match signal {
                    Signal::Throttled { .. } => {
                        let new_event = self
                            .last_event
                            .is_none_or(|t| now.saturating_duration_since(t) >= EVENT_HOLD);
                        if new_event {
                            self.last_event = Some(now);
                            self.share = (self.share * 0.7).max(0.01);
                        }
                        self.share_streak = 0;
                    }
                    _ => {
                        self.share_streak += 1;
                        if self.share_streak >= 20 {
                            self.share_streak = 0;
                            self.share = (self.share * 1.05).min(1.0);
                        }
                    }
                }
                self.rate = clamp(header_rate * self.share, self.min, self.max);
            }
            None => {
                self.missing = self.missing.saturating_add(1);
                if self.fresh && self.missing >= self.stale_after {
                    self.fresh = false;
                    self.inner.reset(now, self.rate);
                }
                if self.fresh {
                    // A response or two without headers (a proxy's error page) is not a
                    // change of regime; keep the header rate.
                    return None;
                }
                self.inner.on_outcome(now, signal);
                self.rate = clamp(self.inner.rate(), self.min, self.max);
            }
        }
        (self.rate != old).then_some(self.rate)
    }

    fn rate(&self) -> f64 {
        self.rate
    }

    fn bounds(&self) -> (f64, f64) {
        (self.min, self.max)
    }

    fn reset(&mut self, now: Instant, rate: f64) {
        self.rate = clamp(rate, self.min, self.max);
        self.inner.reset(now, self.rate);
        self.fresh = false;
        self.missing = 0;
        self.share = 1.0;
    }

    fn limit_max(&mut self, max: f64) {
        lower_max((&mut self.min, &mut self.max), &mut self.rate, max);
        self.inner.limit_max(max);
    }
}

/// Throttles closer together than this after a cut are one congestion event: they are the
/// requests that were already in flight when the first 429 came back.
const EVENT_HOLD: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::controller::test_signals::{ok, throttled};

    /// From 5/s in [1, 500], taking the stated limit at its word.
    fn without_margin() -> HeaderDriven {
        HeaderDriven::builder()
            .start(5.0)
            .min(1.0)
            .max(500.0)
            .margin(0.0)
            .build()
            .unwrap()
    }

    #[test]
    fn header_rate_is_exact_and_falls_back_when_headers_vanish() {
        let now = Instant::now();
        let mut c = without_margin();
        let h = HeaderInfo {
            limit: Some(100.0),
            remaining: Some(0.0),
            reset: Some(Duration::from_secs(3)),
            window: Some(Duration::from_secs(10)),
        };
        let with = Signal::Success { headers: Some(h) };
        assert_eq!(c.on_outcome(now, &with), Some(10.0));
        assert!(c.headers_fresh());
        // Fixed-window style: only remaining and reset.
        let h = HeaderInfo {
            remaining: Some(30.0),
            reset: Some(Duration::from_secs(2)),
            ..HeaderInfo::default()
        };
        assert_eq!(
            c.on_outcome(now, &Signal::Success { headers: Some(h) }),
            Some(15.0)
        );
        // Four responses without headers keep the header rate; the fifth hands over to AIMD
        // from that rate, and AIMD moves it from there.
        for _ in 0..4 {
            assert_eq!(c.on_outcome(now, &ok()), None);
        }
        c.on_outcome(now, &ok());
        assert!(!c.headers_fresh());
        assert_eq!(c.on_outcome(now, &throttled()), Some(7.5));
    }

    #[test]
    fn header_window_is_estimated_from_the_longest_reset() {
        let now = Instant::now();
        let mut c = without_margin();
        for reset in [2, 10, 4] {
            let h = HeaderInfo {
                limit: Some(100.0),
                remaining: Some(50.0),
                reset: Some(Duration::from_secs(reset)),
                window: None,
            };
            c.on_outcome(now, &Signal::Success { headers: Some(h) });
        }
        assert_eq!(c.rate(), 10.0);
    }

    #[test]
    fn hostile_headers_stay_in_bounds() {
        let now = Instant::now();
        let mut c = HeaderDriven::new(5.0, 1.0, 50.0).unwrap();
        let cases = [
            (Some(f64::INFINITY), Some(1.0), Some(0), Some(0)),
            (Some(0.0), Some(0.0), Some(0), None),
            (Some(1e300), None, None, Some(1)),
            (None, Some(f64::NAN), Some(1), None),
            (None, Some(1e12), Some(1), None),
            (Some(-3.0), Some(-3.0), Some(u64::MAX), Some(u64::MAX)),
        ];
        for (limit, remaining, reset, window) in cases {
            let h = HeaderInfo {
                limit,
                remaining,
                reset: reset.map(Duration::from_secs),
                window: window.map(Duration::from_secs),
            };
            for s in [
                Signal::Success { headers: Some(h) },
                Signal::Throttled {
                    retry_after: Some(Duration::MAX),
                    headers: Some(h),
                },
            ] {
                c.on_outcome(now, &s);
                let r = c.rate();
                assert!((1.0..=50.0).contains(&r), "{h:?} -> {r}");
            }
        }
    }
}
