//! Pure rate controllers: what the server did in, a new rate out. No clock reads, no I/O;
//! `now` is an argument, so every controller is unit-tested without a runtime.

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
}

impl Signal {
    /// The rate-limit headers carried by the response, if any.
    pub fn headers(&self) -> Option<&HeaderInfo> {
        match self {
            Signal::Success { headers } | Signal::Throttled { headers, .. } => headers.as_ref(),
            Signal::Transient => None,
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

/// The `start`, `min` and `max` setters that every controller builder has; the optional
/// `.field` path says where the builder keeps them (`rate_bound_setters!(.cfg)`).
macro_rules! rate_bound_setters {
    ($(.$path:ident)*) => {
        /// The first rate.
        pub fn start(mut self, rate: f64) -> Self {
            self$(.$path)*.start = rate;
            self
        }
        /// The lowest rate.
        pub fn min(mut self, rate: f64) -> Self {
            self$(.$path)*.min = rate;
            self
        }
        /// The highest rate.
        pub fn max(mut self, rate: f64) -> Self {
            self$(.$path)*.max = rate;
            self
        }
    };
}
pub(super) use rate_bound_setters;

/// The setters of the probing controllers' builders for how throttle events are grouped and
/// how rates are measured (fields `event_hold` and `measure_window` under the given path).
macro_rules! event_setters {
    ($(.$path:ident)*) => {
        /// 429s within this time of a cut (or the server's `Retry-After`, if longer) are one
        /// event.
        pub fn event_hold(mut self, d: Duration) -> Self {
            self$(.$path)*.event_hold = d;
            self
        }
        /// Window over which the accepted and sent rates are measured.
        pub fn measure_window(mut self, d: Duration) -> Self {
            self$(.$path)*.measure_window = d;
            self
        }
    };
}
pub(super) use event_setters;

/// One throttle event as the probing controllers ([`Cubic`], [`Probe`](super::Probe)) book
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
}

/// One attempt's outcome, as the probing controllers ([`Cubic`], [`Probe`](super::Probe))
/// book it.
pub(super) enum Observed {
    /// A 503 or timeout: not a rate limit, and no time passes for growth.
    Transient,
    /// A 429, with the server's `Retry-After` if any.
    Throttled(Option<Duration>),
    /// Accepted; carries the time since the previous outcome, during which growth runs.
    Accepted(Duration),
}

/// Records `signal` in the send and accept windows and says what it was. Growth time only
/// runs while the server is accepting, so an outage pauses a climb instead of letting it run
/// away.
pub(super) fn observe(
    now: Instant,
    signal: &Signal,
    last_seen: &mut Option<Instant>,
    sent: &mut Window,
    accepted: &mut Window,
) -> Observed {
    let dt = last_seen.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
    *last_seen = Some(now);
    match signal {
        Signal::Transient => Observed::Transient,
        Signal::Throttled { retry_after, .. } => {
            sent.record(now);
            Observed::Throttled(*retry_after)
        }
        Signal::Success { .. } => {
            sent.record(now);
            accepted.record(now);
            Observed::Accepted(dt)
        }
    }
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

// ---------------------------------------------------------------------------------------------
// AIMD

/// Additive-increase/multiplicative-decrease, the common recipe and the baseline: multiply by
/// `decrease` (0.5) on every 429, by `increase` (1.1) after `successes` (10) successes in a
/// row, clamped to `[min, max]`. Transient failures neither cut the rate nor break the streak.
///
/// ```
/// use tokio::time::Instant;
/// use tower_throttle::adaptive::{Aimd, RateController, Signal};
///
/// let mut aimd = Aimd::new(10.0, 1.0, 100.0)?;
/// let now = Instant::now();
/// let throttled = Signal::Throttled { retry_after: None, headers: None };
/// assert_eq!(aimd.on_outcome(now, &throttled), Some(5.0));
/// assert_eq!(aimd.on_outcome(now, &Signal::Transient), None);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    rate: f64,
    min: f64,
    max: f64,
    decrease: f64,
    increase: f64,
    successes: u32,
    streak: u32,
}

/// Checked builder for [`Aimd`]. Defaults: start 1/s, min 0.1/s, max 1000/s, decrease 0.5,
/// increase 1.1, successes 10.
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    start: f64,
    min: f64,
    max: f64,
    decrease: f64,
    increase: f64,
    successes: u32,
}

impl Aimd {
    /// AIMD with the default factors, starting at `start` and clamped to `[min, max]`.
    pub fn new(start: f64, min: f64, max: f64) -> Result<Aimd, ConfigError> {
        Aimd::builder().start(start).min(min).max(max).build()
    }

    /// A builder with the defaults listed on [`AimdBuilder`].
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            start: 1.0,
            min: 0.1,
            max: 1000.0,
            decrease: 0.5,
            increase: 1.1,
            successes: 10,
        }
    }
}

impl AimdBuilder {
    rate_bound_setters!();
    /// Factor applied on a 429, in (0, 1).
    pub fn decrease(mut self, factor: f64) -> Self {
        self.decrease = factor;
        self
    }
    /// Factor applied after a streak of successes, in (1, 10).
    pub fn increase(mut self, factor: f64) -> Self {
        self.increase = factor;
        self
    }
    /// Successes in a row before an increase, at least 1.
    pub fn successes(mut self, n: u32) -> Self {
        self.successes = n;
        self
    }
    /// Checks every value.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        check_bounds(self.start, self.min, self.max)?;
        check_open("decrease", self.decrease, 0.0, 1.0)?;
        check_open("increase", self.increase, 1.0, 10.0)?;
        if self.successes == 0 {
            return Err(ConfigError::Zero { name: "successes" });
        }
        Ok(Aimd {
            rate: self.start,
            min: self.min,
            max: self.max,
            decrease: self.decrease,
            increase: self.increase,
            successes: self.successes,
            streak: 0,
        })
    }
}

impl RateController for Aimd {
    fn on_outcome(&mut self, _now: Instant, signal: &Signal) -> Option<f64> {
        let old = self.rate;
        match signal {
            Signal::Success { .. } => {
                self.streak += 1;
                if self.streak >= self.successes {
                    self.streak = 0;
                    self.rate = clamp(self.rate * self.increase, self.min, self.max);
                }
            }
            Signal::Throttled { .. } => {
                self.streak = 0;
                self.rate = clamp(self.rate * self.decrease, self.min, self.max);
            }
            Signal::Transient => {}
        }
        (self.rate != old).then_some(self.rate)
    }

    fn rate(&self) -> f64 {
        self.rate
    }

    fn bounds(&self) -> (f64, f64) {
        (self.min, self.max)
    }

    fn reset(&mut self, _now: Instant, rate: f64) {
        self.rate = clamp(rate, self.min, self.max);
        self.streak = 0;
    }

    fn limit_max(&mut self, max: f64) {
        lower_max((&mut self.min, &mut self.max), &mut self.rate, max);
    }
}

// ---------------------------------------------------------------------------------------------
// Header-driven

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
/// use tower_throttle::adaptive::{HeaderDriven, HeaderInfo, RateController, Signal};
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
    rate_bound_setters!();
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
        if !(self.margin.is_finite() && (0.0..0.5).contains(&self.margin)) {
            return Err(ConfigError::OutOfRange {
                name: "margin",
                value: self.margin,
                expected: "a fraction in [0, 0.5)",
            });
        }
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
        if let Signal::Transient = signal {
            return None;
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
                            .map_or(true, |t| now.saturating_duration_since(t) >= EVENT_HOLD);
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

// ---------------------------------------------------------------------------------------------
// Cubic

/// A CUBIC-shaped controller (after the AWS SDKs' client rate limiter) that returns quickly to
/// the last rate that worked and probes rarely once the limit has proved stable.
///
/// * **Anchor from goodput.** On a throttle event the anchor (AWS's `last_max_rate`) is the
///   rate of *accepted* requests over the last `measure_window` (1 s, not counting time held
///   by a `Retry-After`), not the send rate:
///   while we are over the limit, the server accepts exactly its limit, so this measures the
///   limit itself. When the level it had settled on is refused (the limit went down), the
///   anchor comes down by at least the margin, or by `beta` when there is no fresh measurement.
/// * **One event per hold.** 429s within `event_hold` (1 s) or the server's `Retry-After`
///   after a cut are the requests already in flight: one congestion event, one cut.
/// * **Cubic recovery.** The rate drops to `beta x anchor` (0.7) and climbs back on a concave
///   cubic to `(1 - margin) x anchor` in `recover` (2 s): fast at first, flat on arrival.
/// * **Cruise, then probe.** It holds that rate for a cruise time that doubles each time a
///   probe finds the same limit again (within 10%, from 8 s up to 32 s; the level that
///   worked is then kept), then probes above it
///   exponentially (x2 per `probe_doubling`, 4 s). A probe costs one event, so a stable limit
///   costs fewer and fewer 429s.
/// * **Slow start.** Until the first throttle the rate doubles every `probe_doubling / 4`.
/// * Growth is limited to twice the measured send rate and only advances while successes
///   arrive, so a 30 s outage of 503s neither cuts nor inflates the rate.
///
/// ```
/// use tokio::time::Instant;
/// use tower_throttle::adaptive::{Cubic, RateController};
///
/// let cubic = Cubic::builder().start(5.0).min(0.5).max(500.0).build()?;
/// assert_eq!(cubic.rate(), 5.0);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cubic {
    cfg: CubicConfig,
    rate: f64,
    phase: Phase,
    /// Growth time: advances only while successes arrive.
    growth: Duration,
    last_seen: Option<Instant>,
    event: ThrottleEvent,
    anchor: Option<f64>,
    cruise: Duration,
    successes: Window,
    sent: Window,
}

#[derive(Debug, Clone, Copy)]
struct CubicConfig {
    start: f64,
    min: f64,
    max: f64,
    beta: f64,
    margin: f64,
    recover: Duration,
    cruise: Duration,
    max_cruise: Duration,
    probe_doubling: Duration,
    event_hold: Duration,
    measure_window: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Before the first throttle: exponential growth from `from`, starting at growth time `at`.
    SlowStart { at: Duration, from: f64 },
    /// Concave cubic from `from` to `to` over `recover`, starting at `at`.
    Recover { at: Duration, from: f64, to: f64 },
    /// Flat at `rate` until growth time `until`, then probe.
    Cruise { rate: f64, until: Duration },
    /// Exponential growth from `from`, starting at `at`.
    Probe { at: Duration, from: f64 },
}

/// Checked builder for [`Cubic`]. Defaults: start 1/s, min 0.1/s, max 1000/s, beta 0.7,
/// margin 0.03, recover 2 s, cruise 8 s doubling up to 32 s, probe doubling 4 s, event hold
/// 1 s, measure window 1 s.
#[derive(Debug, Clone)]
pub struct CubicBuilder {
    cfg: CubicConfig,
}

impl Cubic {
    /// Cubic with the defaults, starting at `start` and clamped to `[min, max]`.
    pub fn new(start: f64, min: f64, max: f64) -> Result<Cubic, ConfigError> {
        Cubic::builder().start(start).min(min).max(max).build()
    }

    /// A builder with the defaults listed on [`CubicBuilder`].
    pub fn builder() -> CubicBuilder {
        CubicBuilder {
            cfg: CubicConfig {
                start: 1.0,
                min: 0.1,
                max: 1000.0,
                beta: 0.7,
                margin: 0.03,
                recover: Duration::from_secs(2),
                cruise: Duration::from_secs(8),
                max_cruise: Duration::from_secs(32),
                probe_doubling: Duration::from_secs(4),
                event_hold: Duration::from_secs(1),
                measure_window: Duration::from_secs(1),
            },
        }
    }

    /// The last measured limit (accepted rate at the latest throttle event), if any.
    pub fn anchor(&self) -> Option<f64> {
        self.anchor
    }

    fn target(&self) -> f64 {
        let g = self.growth;
        let exp = |from: f64, since: Duration, doubling: Duration| {
            let t = g.saturating_sub(since).as_secs_f64() / doubling.as_secs_f64();
            // Capped so the power cannot overflow to infinity before the clamp.
            from * 2f64.powf(t.min(64.0))
        };
        match self.phase {
            Phase::SlowStart { at, from } => exp(from, at, self.cfg.probe_doubling / 4),
            Phase::Recover { at, from, to } => {
                let x =
                    (g.saturating_sub(at).as_secs_f64() / self.cfg.recover.as_secs_f64()).min(1.0);
                to - (to - from) * (1.0 - x).powi(3)
            }
            Phase::Cruise { rate, .. } => rate,
            Phase::Probe { at, from } => exp(from, at, self.cfg.probe_doubling),
        }
    }

    fn advance_phase(&mut self) {
        let g = self.growth;
        match self.phase {
            Phase::Recover { at, to, .. } if g >= at + self.cfg.recover => {
                self.phase = Phase::Cruise {
                    rate: to,
                    until: g + self.cruise,
                };
            }
            Phase::Cruise { rate, until } if g >= until => {
                self.phase = Phase::Probe { at: g, from: rate };
            }
            _ => {}
        }
    }

    fn on_throttle(&mut self, now: Instant, retry_after: Option<Duration>) {
        if self.event.is_ongoing(now) {
            return;
        }
        // Accepted rate since sends resumed after the last hold: time spent held says
        // nothing about the limit.
        let measured = self.successes.rate_since(now, self.event.resumed_at);
        let believed_failed = matches!(self.phase, Phase::Cruise { .. } | Phase::Recover { .. });
        let (anchor, stable) = match (self.anchor, believed_failed) {
            // The level we settled on was refused: the limit moved down. Trust a fresh
            // measurement, but always come down by at least the margin; with no measurement
            // (a 429 right after a hold), cut the belief by beta.
            (Some(old), true) => {
                let a = match measured {
                    Some(m) => m.min(old * (1.0 - self.cfg.margin)),
                    None => old * self.cfg.beta,
                };
                (a, false)
            }
            (old, _) => {
                let a = measured.map_or(self.rate, |m| m.min(self.rate));
                (a, old.is_some_and(|old| (a - old).abs() <= 0.1 * old))
            }
        };
        self.cruise = if stable {
            (self.cruise * 2).min(self.cfg.max_cruise)
        } else {
            self.cfg.cruise
        };
        let mut to = clamp((1.0 - self.cfg.margin) * anchor, self.cfg.min, self.cfg.max);
        if stable {
            // A probe found the same limit: keep the level that already worked for a whole
            // cruise, rather than one measured with the server's burst in it.
            if let Phase::Probe { from, .. } = self.phase {
                to = to.min(from);
            }
        }
        self.anchor = Some(anchor);
        let from = clamp(self.cfg.beta * anchor, self.cfg.min, to);
        self.rate = from;
        self.phase = Phase::Recover {
            at: self.growth,
            from,
            to,
        };
        self.event.begin(now, retry_after, self.cfg.event_hold);
    }
}

impl CubicBuilder {
    rate_bound_setters!(.cfg);
    /// Fraction of the anchor kept right after a throttle event, in (0, 1 - margin).
    pub fn beta(mut self, beta: f64) -> Self {
        self.cfg.beta = beta;
        self
    }
    /// Fraction kept below the measured limit while cruising, in [0, 0.5).
    pub fn margin(mut self, margin: f64) -> Self {
        self.cfg.margin = margin;
        self
    }
    /// Time to climb back from `beta x anchor` to the cruise rate.
    pub fn recover(mut self, d: Duration) -> Self {
        self.cfg.recover = d;
        self
    }
    /// First cruise time; it doubles while the limit stays put, up to `max_cruise`.
    pub fn cruise(mut self, first: Duration, max_cruise: Duration) -> Self {
        self.cfg.cruise = first;
        self.cfg.max_cruise = max_cruise;
        self
    }
    /// How fast a probe grows (it doubles in this time); slow start grows four times faster.
    pub fn probe_doubling(mut self, d: Duration) -> Self {
        self.cfg.probe_doubling = d;
        self
    }
    event_setters!(.cfg);
    /// Checks every value.
    pub fn build(self) -> Result<Cubic, ConfigError> {
        let c = self.cfg;
        check_bounds(c.start, c.min, c.max)?;
        if !(c.margin.is_finite() && (0.0..0.5).contains(&c.margin)) {
            return Err(ConfigError::OutOfRange {
                name: "margin",
                value: c.margin,
                expected: "a fraction in [0, 0.5)",
            });
        }
        check_open("beta", c.beta, 0.0, 1.0 - c.margin)?;
        check_duration("recover", c.recover)?;
        check_duration("cruise", c.cruise)?;
        check_duration("probe_doubling", c.probe_doubling)?;
        check_duration("measure_window", c.measure_window)?;
        if c.max_cruise < c.cruise {
            return Err(ConfigError::MinAboveMax {
                name: "cruise (seconds)",
                min: c.cruise.as_secs_f64(),
                max: c.max_cruise.as_secs_f64(),
            });
        }
        Ok(Cubic {
            cfg: c,
            rate: c.start,
            phase: Phase::SlowStart {
                at: Duration::ZERO,
                from: c.start,
            },
            growth: Duration::ZERO,
            last_seen: None,
            event: ThrottleEvent::default(),
            anchor: None,
            cruise: c.cruise,
            successes: Window::new(c.measure_window),
            sent: Window::new(c.measure_window),
        })
    }
}

impl RateController for Cubic {
    fn on_outcome(&mut self, now: Instant, signal: &Signal) -> Option<f64> {
        let old = self.rate;
        match observe(
            now,
            signal,
            &mut self.last_seen,
            &mut self.sent,
            &mut self.successes,
        ) {
            Observed::Transient => return None,
            Observed::Throttled(retry_after) => self.on_throttle(now, retry_after),
            Observed::Accepted(dt) => {
                self.growth += dt;
                self.advance_phase();
                let sent = self.sent.rate(now);
                self.rate =
                    grow_towards(self.target(), self.rate, sent, self.cfg.min, self.cfg.max);
            }
        }
        (self.rate != old).then_some(self.rate)
    }

    fn rate(&self) -> f64 {
        self.rate
    }

    fn bounds(&self) -> (f64, f64) {
        (self.cfg.min, self.cfg.max)
    }

    fn reset(&mut self, _now: Instant, rate: f64) {
        self.rate = clamp(rate, self.cfg.min, self.cfg.max);
        self.phase = Phase::Cruise {
            rate: self.rate,
            until: self.growth + self.cfg.cruise,
        };
        self.cruise = self.cfg.cruise;
        self.event.end_hold();
    }

    fn limit_max(&mut self, max: f64) {
        lower_max((&mut self.cfg.min, &mut self.cfg.max), &mut self.rate, max);
    }
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

    pub(super) fn record(&mut self, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Signal {
        Signal::Success { headers: None }
    }
    fn throttled() -> Signal {
        Signal::Throttled {
            retry_after: None,
            headers: None,
        }
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
    fn aimd_halves_per_429_and_grows_after_ten_successes() {
        let mut c = Aimd::new(8.0, 1.0, 10.0).unwrap();
        let now = Instant::now();
        assert_eq!(c.on_outcome(now, &throttled()), Some(4.0));
        for _ in 0..9 {
            assert_eq!(c.on_outcome(now, &ok()), None);
        }
        assert_eq!(c.on_outcome(now, &ok()), Some(4.4));
        for _ in 0..10 {
            c.on_outcome(now, &throttled());
        }
        assert_eq!(c.rate(), 1.0);
        for _ in 0..1000 {
            c.on_outcome(now, &ok());
        }
        assert_eq!(c.rate(), 10.0);
    }

    #[test]
    fn transient_is_not_a_rate_limit() {
        let now = Instant::now();
        let mut controllers: Vec<Box<dyn RateController>> = vec![
            Box::new(Aimd::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(Cubic::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(HeaderDriven::new(8.0, 1.0, 10.0).unwrap()),
            Box::new(super::super::Probe::new(8.0, 1.0, 10.0).unwrap()),
        ];
        for c in &mut controllers {
            for i in 0..1000 {
                let t = now + Duration::from_millis(i * 10);
                assert_eq!(c.on_outcome(t, &Signal::Transient), None, "{c:?}");
            }
            assert_eq!(c.rate(), 8.0);
        }
    }

    #[test]
    fn header_rate_is_exact_and_falls_back_when_headers_vanish() {
        let now = Instant::now();
        let mut c = HeaderDriven::builder()
            .start(5.0)
            .min(1.0)
            .max(500.0)
            .margin(0.0)
            .build()
            .unwrap();
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
        let mut c = HeaderDriven::builder()
            .start(5.0)
            .min(1.0)
            .max(500.0)
            .margin(0.0)
            .build()
            .unwrap();
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

    #[test]
    fn cubic_groups_a_burst_of_429s_into_one_event() {
        let start = Instant::now();
        let mut c = Cubic::new(50.0, 1.0, 500.0).unwrap();
        for i in 0..50 {
            c.on_outcome(start + Duration::from_millis(i * 20), &ok());
        }
        let t = start + Duration::from_secs(1);
        c.on_outcome(t, &throttled());
        let after_one = c.rate();
        for i in 0..10 {
            c.on_outcome(t + Duration::from_millis(i), &throttled());
        }
        assert_eq!(c.rate(), after_one);
        // The anchor is the accepted rate (50/s), and the cut is beta x anchor.
        let anchor = c.anchor().unwrap();
        assert!((anchor - 50.0).abs() <= 5.0, "{anchor}");
        assert!((after_one - 0.7 * anchor).abs() < 1e-9);
    }

    #[test]
    fn cubic_returns_to_the_last_good_rate_and_never_leaves_bounds() {
        let start = Instant::now();
        let mut c = Cubic::new(40.0, 2.0, 45.0).unwrap();
        let mut t = start;
        let step = Duration::from_millis(25);
        for round in 0..4000u32 {
            t += step;
            let s = if round % 700 == 699 {
                throttled()
            } else {
                ok()
            };
            c.on_outcome(t, &s);
            let r = c.rate();
            assert!((2.0..=45.0).contains(&r), "{r}");
            assert!(r.is_finite());
        }
    }
}
