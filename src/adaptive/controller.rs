//! What every rate controller shares: the [`RateController`] trait and the [`Signal`]s it is
//! fed, the checks of builder values, and the bookkeeping of the probing controllers
//! ([`Cubic`](super::Cubic) and [`Probe`](super::Probe)): throttle events, growth time,
//! measured rates and their one [`RateController`] implementation. Controllers are pure: no
//! clock reads, no I/O; `now` is an argument, so every one is unit-tested without a runtime.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::headers::RateLimitInfo;
use crate::ConfigError;

/// What one attempt told us about the server's limit.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Signal {
    /// The request was accepted (2xx/3xx), possibly with rate-limit headers.
    Success {
        /// The response's rate-limit headers, if it had any.
        headers: Option<HeaderInfo>,
    },
    /// The server refused the request because of its rate limit (a 429).
    Throttled {
        /// The server's `Retry-After`, already parsed and capped.
        retry_after: Option<Duration>,
        /// The response's rate-limit headers, if it had any.
        headers: Option<HeaderInfo>,
    },
    /// A failure that says nothing about the rate limit: a 503, a timeout, a reset
    /// connection. Controllers must not cut the rate for it.
    Transient,
    /// The server asked for a pause without refusing our rate: a 503 (or another transient
    /// status) with `Retry-After`
    /// ([`Classify::transient_wait`](crate::classify::Classify::transient_wait)), or a 429
    /// for a spent long allowance such as HubSpot's daily one
    /// ([`Classify::quota_reset`](crate::classify::Classify::quota_reset)), which says
    /// nothing about the short-window rate.
    /// It is congestion, not a reading of the limit: controllers do not cut the rate for it,
    /// but they stop growing (a climb in progress returns to the level it started from), and
    /// the pause is not growth time. The layer holds the shared bucket for the wait.
    Overloaded {
        /// The server's wait, already parsed and capped like a 429's `Retry-After`; for a
        /// spent allowance, the time until it is back (uncapped, as the retry policy holds).
        retry_after: Duration,
    },
}

impl Signal {
    /// The rate-limit headers carried by the response, if any.
    pub fn headers(&self) -> Option<&HeaderInfo> {
        match self {
            Signal::Success { headers } | Signal::Throttled { headers, .. } => headers.as_ref(),
            Signal::Transient | Signal::Overloaded { .. } => None,
        }
    }
}

/// The numbers a controller needs from a response's rate-limit headers.
///
/// Built from [`RateLimitInfo`] (see [`crate::headers::rate_limit_info`]) with `From`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeaderInfo {
    /// Requests allowed per window.
    pub limit: Option<f64>,
    /// Requests left in the current window.
    pub remaining: Option<f64>,
    /// Time until the quota is restored.
    pub reset: Option<Duration>,
    /// The window's length, when the server states it (`RateLimit-Policy: 100;w=10`).
    pub window: Option<Duration>,
}

impl From<&RateLimitInfo> for HeaderInfo {
    fn from(info: &RateLimitInfo) -> Self {
        // HubSpot's per-second pair is the window that throttles first when it is present.
        if let (None, Some(secondly)) = (info.limit, info.secondly) {
            return HeaderInfo {
                limit: Some(secondly.limit as f64),
                remaining: Some(secondly.remaining as f64),
                reset: None,
                window: Some(Duration::from_secs(1)),
            };
        }
        HeaderInfo {
            limit: info.limit.map(|n| n as f64),
            remaining: info.remaining.map(|n| n as f64),
            reset: info.reset,
            window: info.window,
        }
    }
}

/// Turns what the server does into a request rate. Implementations are pure: they read no
/// clock (`now` is passed in) and do no I/O.
///
/// Contract: [`rate`](RateController::rate) and every value returned by
/// [`on_outcome`](RateController::on_outcome) are finite and inside
/// [`bounds`](RateController::bounds); [`Signal::Transient`] is never read as a rate limit.
pub trait RateController: Send + fmt::Debug {
    /// Feeds one attempt's outcome; returns the new rate (requests per second) when it changed.
    fn on_outcome(&mut self, now: Instant, signal: &Signal) -> Option<f64>;

    /// The current rate, requests per second.
    fn rate(&self) -> f64;

    /// The `(min, max)` the rate is clamped to.
    fn bounds(&self) -> (f64, f64);

    /// Restarts from `rate` (clamped), forgetting the current cycle. Used when another
    /// controller hands over, e.g. when rate-limit headers vanish.
    fn reset(&mut self, now: Instant, rate: f64);

    /// Lowers the highest rate to `max` when it is above it: the configured limits are a
    /// ceiling ([`AdaptiveLayer::new`](super::AdaptiveLayer::new) passes the bucket's rate).
    /// The lowest and the current rate are clamped under it; a `max` at or above the current
    /// one changes nothing.
    fn limit_max(&mut self, max: f64);
}

/// A boxed controller is a controller, so a choice made at run time plugs in anywhere.
impl<C: RateController + ?Sized> RateController for Box<C> {
    fn on_outcome(&mut self, now: Instant, signal: &Signal) -> Option<f64> {
        (**self).on_outcome(now, signal)
    }
    fn rate(&self) -> f64 {
        (**self).rate()
    }
    fn bounds(&self) -> (f64, f64) {
        (**self).bounds()
    }
    fn reset(&mut self, now: Instant, rate: f64) {
        (**self).reset(now, rate)
    }
    fn limit_max(&mut self, max: f64) {
        (**self).limit_max(max)
    }
}

/// The arithmetic of [`RateController::limit_max`] for a controller's `(min, max, rate)`.
pub(super) fn lower_max(bounds: (&mut f64, &mut f64), rate: &mut f64, max: f64) {
    let (lo, hi) = bounds;
    if max.is_nan() || max <= 0.0 || max >= *hi {
        return;
    }
    *hi = max;
    *lo = lo.min(max);
    *rate = clamp(*rate, *lo, *hi);
}

pub(super) fn clamp(rate: f64, min: f64, max: f64) -> f64 {
    if rate.is_nan() {
        min
    } else {
        rate.clamp(min, max)
    }
}

/// One throttle event as the probing controllers ([`Cubic`](super::Cubic), [`Probe`](super::Probe)) book
/// it: 429s within a hold of the first are the same event, and sending resumes once the
/// server's `Retry-After` has passed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThrottleEvent {
    /// When sending resumed after the latest event: time spent held says nothing about the
    /// limit, so rates are measured from here.
    pub(super) resumed_at: Option<Instant>,
    ignore_until: Option<Instant>,
}

impl ThrottleEvent {
    /// True while a 429 at `now` belongs to the event already booked.
    pub(super) fn is_ongoing(&self, now: Instant) -> bool {
        self.ignore_until.is_some_and(|t| now < t)
    }

    /// Books a new event at `now`: sending resumes after `retry_after`, and 429s until then
    /// or for `hold`, whichever is longer, are part of it.
    pub(super) fn begin(&mut self, now: Instant, retry_after: Option<Duration>, hold: Duration) {
        let wait = retry_after.unwrap_or(Duration::ZERO);
        self.resumed_at = now.checked_add(wait);
        self.ignore_until = now.checked_add(wait.max(hold));
    }

    /// Lets the next 429 count as a new event at once (after a reset).
    pub(super) fn end_hold(&mut self) {
        self.ignore_until = None;
    }

    /// A server-told pause until `until`: sending resumes on a server that had a rest, as
    /// after a hold, so survival is measured from there.
    fn pause(&mut self, until: Option<Instant>) {
        self.resumed_at = until.or(self.resumed_at);
    }
}

/// The bookkeeping [`Cubic`](super::Cubic) and [`Probe`](super::Probe) share: the rate and
/// its bounds, growth time, the current throttle event and the measured rates.
#[derive(Debug, Clone)]
pub(super) struct Probing {
    pub(super) rate: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    /// Growth time: advances only while successes arrive.
    pub(super) growth: Duration,
    last_seen: Option<Instant>,
    pub(super) event: ThrottleEvent,
    pub(super) accepted: Window,
    pub(super) sent: Window,
}

impl Probing {
    pub(super) fn new(start: f64, min: f64, max: f64, measure_window: Duration) -> Probing {
        Probing {
            rate: start,
            min,
            max,
            growth: Duration::ZERO,
            last_seen: None,
            event: ThrottleEvent::default(),
            accepted: Window::new(measure_window),
            sent: Window::new(measure_window),
        }
    }

    /// Records `signal` in the send and accept windows and says what it was. Growth time only
    /// runs while the server is accepting, so an outage pauses a climb instead of letting it
    /// run away.
    fn observe(&mut self, now: Instant, signal: &Signal) -> Observed {
        let dt = self
            .last_seen
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        // Never backwards: the end of a server-told pause stays the start of growth.
        self.last_seen = Some(self.last_seen.map_or(now, |t| t.max(now)));
        match signal {
            Signal::Transient => Observed::Transient,
            Signal::Overloaded { retry_after } => {
                let until = now.checked_add(*retry_after);
                if let Some(until) = until {
                    self.last_seen = self.last_seen.max(Some(until));
                }
                self.event.pause(until);
                Observed::Overloaded
            }
            Signal::Throttled { retry_after, .. } => {
                self.sent.record(now);
                Observed::Throttled(*retry_after)
            }
            Signal::Success { .. } => {
                self.sent.record(now);
                self.accepted.record(now);
                Observed::Accepted(dt)
            }
        }
    }

    pub(super) fn bounds(&self) -> (f64, f64) {
        (self.min, self.max)
    }
}

/// One attempt's outcome, as [`Probing`] books it.
enum Observed {
    /// A 503 or timeout: not a rate limit, and no time passes for growth.
    Transient,
    /// A 429, with the server's `Retry-After` if any.
    Throttled(Option<Duration>),
    /// A server-told pause that is not a refusal of our rate ([`Signal::Overloaded`]).
    Overloaded,
    /// Accepted; carries the time since the previous outcome, during which growth runs.
    Accepted(Duration),
}

/// A controller built on [`Probing`]: its phases and its reading of a 429 are its own, the
/// rest is shared, and its [`RateController`] implementation is the one
/// [`prober_rate_controller!`] writes.
pub(super) trait Prober: Send + fmt::Debug {
    fn probing(&self) -> &Probing;
    fn probing_mut(&mut self) -> &mut Probing;
    /// The rate the current phase aims at, at the current growth time.
    fn target(&self) -> f64;
    /// Moves on when growth time has ended the current phase.
    fn advance_phase(&mut self);
    /// A 429 at `now`; the controller decides whether it starts a new event.
    fn on_throttle(&mut self, now: Instant, retry_after: Option<Duration>);
    /// A server-told pause ([`Signal::Overloaded`]): stop growing, without a cut.
    fn on_overloaded(&mut self);
    /// Restarts the phases from the rate, already clamped ([`RateController::reset`]).
    fn restart(&mut self);
    /// The bounds were lowered to a ceiling ([`RateController::limit_max`]).
    fn bounds_lowered(&mut self) {}
}

/// The [`RateController`] implementation of every [`Prober`], written once. (A macro, not a
/// blanket implementation: that would overlap the one for `Box<C>`.)
macro_rules! prober_rate_controller {
    ($t:ty) => {
        impl $crate::adaptive::RateController for $t {
            fn on_outcome(
                &mut self,
                now: ::tokio::time::Instant,
                signal: &$crate::adaptive::Signal,
            ) -> Option<f64> {
                $crate::adaptive::controller::prober_outcome(self, now, signal)
            }

            fn rate(&self) -> f64 {
                $crate::adaptive::controller::Prober::probing(self).rate
            }

            fn bounds(&self) -> (f64, f64) {
                $crate::adaptive::controller::Prober::probing(self).bounds()
            }

            fn reset(&mut self, _now: ::tokio::time::Instant, rate: f64) {
                $crate::adaptive::controller::prober_reset(self, rate);
            }

            fn limit_max(&mut self, max: f64) {
                $crate::adaptive::controller::prober_limit_max(self, max);
            }
        }
    };
}
pub(super) use prober_rate_controller;

/// [`RateController::on_outcome`] for every [`Prober`]: the bookkeeping is shared, the
/// phases are the controller's.
pub(super) fn prober_outcome<P: Prober>(c: &mut P, now: Instant, signal: &Signal) -> Option<f64> {
    let old = c.probing().rate;
    match c.probing_mut().observe(now, signal) {
        Observed::Transient => return None,
        Observed::Throttled(retry_after) => c.on_throttle(now, retry_after),
        Observed::Overloaded => c.on_overloaded(),
        Observed::Accepted(dt) => {
            c.probing_mut().growth += dt;
            c.advance_phase();
            let target = c.target();
            let p = c.probing_mut();
            let sent = p.sent.rate(now);
            p.rate = grow_towards(target, p.rate, sent, p.min, p.max);
        }
    }
    let rate = c.probing().rate;
    (rate != old).then_some(rate)
}

/// [`RateController::reset`] for every [`Prober`].
pub(super) fn prober_reset<P: Prober>(c: &mut P, rate: f64) {
    let p = c.probing_mut();
    p.rate = clamp(rate, p.min, p.max);
    p.event.end_hold();
    c.restart();
}

/// [`RateController::limit_max`] for every [`Prober`].
pub(super) fn prober_limit_max<P: Prober>(c: &mut P, max: f64) {
    let p = c.probing_mut();
    lower_max((&mut p.min, &mut p.max), &mut p.rate, max);
    c.bounds_lowered();
}

/// `from` doubled once per `doubling` of `elapsed`.
pub(super) fn doubled(from: f64, elapsed: Duration, doubling: Duration) -> f64 {
    // Capped so the power cannot overflow to infinity before the clamp.
    let doublings = (elapsed.as_secs_f64() / doubling.as_secs_f64()).min(64.0);
    from * 2f64.powf(doublings)
}

/// The next rate on the way to `target`, within [min, max] and never past twice the rate
/// actually sent: a rate nobody uses proves nothing.
pub(super) fn grow_towards(target: f64, rate: f64, sent: f64, min: f64, max: f64) -> f64 {
    let target = clamp(target, min, max);
    let cap = (2.0 * sent).max(rate);
    clamp(target.min(cap), min, max)
}

pub(super) fn check_bounds(start: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    for (name, value) in [("min", min), ("max", max), ("start", start)] {
        if !value.is_finite() || value <= 0.0 {
            return Err(ConfigError::OutOfRange {
                name,
                value,
                expected: "a finite rate above zero",
            });
        }
    }
    if min > max {
        return Err(ConfigError::MinAboveMax {
            name: "rate",
            min,
            max,
        });
    }
    if start < min || start > max {
        return Err(ConfigError::OutOfRange {
            name: "start",
            value: start,
            expected: "a rate inside [min, max]",
        });
    }
    Ok(())
}

pub(super) fn check_open(
    name: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
) -> Result<(), ConfigError> {
    if value.is_finite() && value > lo && value < hi {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name,
            value,
            expected: "a finite number inside its open range (see the builder's docs)",
        })
    }
}

pub(super) fn check_duration(name: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::Zero { name })
    } else {
        Ok(())
    }
}

/// A margin kept below a limit: a fraction in [0, 0.5).
pub(super) fn check_margin(margin: f64) -> Result<(), ConfigError> {
    if margin.is_finite() && (0.0..0.5).contains(&margin) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name: "margin",
            value: margin,
            expected: "a fraction in [0, 0.5)",
        })
    }
}

/// A first cruise time and the longest it may double to.
pub(super) fn check_cruise(first: Duration, max_cruise: Duration) -> Result<(), ConfigError> {
    check_duration("cruise", first)?;
    if max_cruise < first {
        return Err(ConfigError::MinAboveMax {
            name: "cruise (seconds)",
            min: first.as_secs_f64(),
            max: max_cruise.as_secs_f64(),
        });
    }
    Ok(())
}

/// Events in the last `span`, counted in ten buckets so memory stays fixed at any rate.
#[derive(Debug, Clone)]
pub(super) struct Window {
    span: Duration,
    buckets: VecDeque<(Instant, u32)>,
    first: Option<Instant>,
}

const BUCKETS: u32 = 10;

impl Window {
    pub(super) fn new(span: Duration) -> Window {
        Window {
            span,
            buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
            first: None,
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .buckets
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.span)
        {
            self.buckets.pop_front();
        }
    }

    fn record(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.expire(now);
        let width = self.span / BUCKETS;
        match self.buckets.back_mut() {
            Some((start, n)) if now.saturating_duration_since(*start) < width => *n += 1,
            _ => self.buckets.push_back((now, 1)),
        }
    }

    /// Events per second since `since` (at most the span), or `None` when that is under
    /// half the span: too short to mean anything.
    pub(super) fn rate_since(&mut self, now: Instant, since: Option<Instant>) -> Option<f64> {
        self.expire(now);
        let from = match (self.first, since) {
            (Some(f), Some(s)) => f.max(s),
            (Some(f), None) => f,
            (None, _) => return None,
        };
        let observed = now.saturating_duration_since(from).min(self.span);
        if observed < self.span / 2 {
            return None;
        }
        let count: u32 = self
            .buckets
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, n)| n)
            .sum();
        Some(f64::from(count) / observed.as_secs_f64())
    }

    /// Events per second over the whole span since `since`, unless they were still ramping
    /// up (the later half of the span more than 25% above the earlier), else `None`. A server
    /// that accepted a rate this steady for a whole span and then refused was saturated: the
    /// rate is its limit (a window's) or its sustained rate plus what was left of its burst
    /// (a bucket's, whose burst makes the earlier half the larger). An accepted rate that was
    /// still ramping up says only that the limit is above it.
    pub(super) fn steady_rate_since(
        &mut self,
        now: Instant,
        since: Option<Instant>,
    ) -> Option<f64> {
        self.expire(now);
        let from = match (self.first, since) {
            (Some(f), Some(s)) => f.max(s),
            (Some(f), None) => f,
            (None, _) => return None,
        };
        if now.saturating_duration_since(from) < self.span {
            return None;
        }
        let half = now.checked_sub(self.span / 2)?;
        let (mut early, mut late) = (0u32, 0u32);
        for (t, n) in &self.buckets {
            if *t < half {
                early += n;
            } else {
                late += n;
            }
        }
        (late > 0 && f64::from(late) <= 1.25 * f64::from(early))
            .then(|| f64::from(early + late) / self.span.as_secs_f64())
    }

    /// Events per second over the span (or since the first event, if that is shorter).
    pub(super) fn rate(&mut self, now: Instant) -> f64 {
        self.expire(now);
        let count: u32 = self.buckets.iter().map(|(_, n)| n).sum();
        let observed = self
            .first
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f))
            .min(self.span)
            .max(self.span / BUCKETS);
        f64::from(count) / observed.as_secs_f64()
    }
}

/// The signals the controllers' unit tests feed.
#[cfg(test)]
pub(super) mod test_signals {
    use super::*;

    pub(crate) fn ok() -> Signal {
        Signal::Success { headers: None }
    }

    /// A 429 with the server's `Retry-After`, if any.
    pub(crate) fn throttled_for(retry_after: Option<Duration>) -> Signal {
        Signal::Throttled {
            retry_after,
            headers: None,
        }
    }

    /// A 429 without `Retry-After`.
    pub(crate) fn throttled() -> Signal {
        throttled_for(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Aimd, Cubic, HeaderDriven, Probe};

    fn every_controller_at_8_per_second() -> Vec<Box<dyn RateController>> {
        vec![
            Box::new(Aimd::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(Cubic::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(HeaderDriven::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(Probe::new(8.0, 1.0, 10.0).unwrap()),
        ]
    }

    #[test]
    fn builders_reject_bad_values() {
        assert!(Aimd::new(f64::NAN, 1.0, 2.0).is_err());
        assert!(Aimd::new(1.0, 0.0, 2.0).is_err());
        assert!(Aimd::new(1.0, -1.0, 2.0).is_err());
        assert!(matches!(
            Aimd::new(1.0, 3.0, 2.0),
            Err(ConfigError::MinAboveMax { .. })
        ));
        assert!(Aimd::new(5.0, 1.0, 2.0).is_err());
        assert!(Aimd::builder().decrease(1.0).build().is_err());
        assert!(Aimd::builder().decrease(f64::NAN).build().is_err());
        assert!(Aimd::builder().increase(0.9).build().is_err());
        assert!(Aimd::builder().successes(0).build().is_err());
        assert!(Cubic::builder().beta(0.99).build().is_err());
        assert!(Cubic::builder().margin(-0.1).build().is_err());
        assert!(Cubic::builder().recover(Duration::ZERO).build().is_err());
        assert!(Cubic::builder()
            .cruise(Duration::from_secs(8), Duration::from_secs(4))
            .build()
            .is_err());
        assert!(Cubic::new(1.0, f64::INFINITY, f64::INFINITY).is_err());
        assert!(HeaderDriven::builder().margin(0.5).build().is_err());
        assert!(HeaderDriven::builder().stale_after(0).build().is_err());
    }

    #[test]
    fn transient_is_not_a_rate_limit() {
        let now = Instant::now();
        let mut controllers = every_controller_at_8_per_second();
        for c in &mut controllers {
            for i in 0..1000 {
                let t = now + Duration::from_millis(i * 10);
                assert_eq!(c.on_outcome(t, &Signal::Transient), None, "{c:?}");
            }
            assert_eq!(c.rate(), 8.0);
        }
    }

    /// Issue 15.3: a 503 with `Retry-After` is a server-told pause, not a refusal of our rate:
    /// no controller cuts for it, however often it comes.
    #[test]
    fn a_server_told_pause_is_never_a_cut() {
        let now = Instant::now();
        let mut controllers = every_controller_at_8_per_second();
        let pause = Signal::Overloaded {
            retry_after: Duration::from_secs(2),
        };
        for c in &mut controllers {
            for i in 0..100 {
                let t = now + Duration::from_millis(i * 100);
                c.on_outcome(t, &pause);
                assert!(c.rate() >= 8.0, "{c:?}");
            }
        }
    }
}
