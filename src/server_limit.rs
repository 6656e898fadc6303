//! Server-side limiters: the pure arithmetic the mock server enforces and the adaptive
//! simulation hides from its client (re-exported as `tower_throttle::mock::*` under the `mock`
//! feature; built without it for `adaptive::sim`).
//!
//! Nothing here reads a clock. Every method takes `now` as an offset from the limiter's own
//! epoch (the server uses the instant it started), so the limiters are unit-tested with
//! explicit times and can be reused by an in-process simulation that has no sockets.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::ConfigError;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The shape of limit a mock route enforces.
///
/// Two shapes, because real APIs use both and a client tuned for one can fail against the
/// other (a token bucket with rate 10/s and burst 100 admits 190 in 10 s, which a rolling
/// window of 100 per 10 s answers with 429s):
///
/// * [`ServerLimit::sliding_window`]: at most `n` requests accepted in *any* half-open
///   interval `[t, t + period)`, exactly (the server remembers every accept in the window).
/// * [`ServerLimit::token_bucket`]: nginx-style leaky bucket with rate `r` per second and
///   burst `b`: at most `b + r * t` accepted in any interval of length `t`.
///
/// [`ServerLimit::unlimited`] accepts everything (for throughput benchmarks).
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use std::time::Duration;
/// use tower_throttle::mock::ServerLimit;
///
/// let window = ServerLimit::sliding_window(100, Duration::from_secs(10)).unwrap();
/// assert_eq!(window.capacity(), Some(100));
/// let bucket = ServerLimit::token_bucket(10.0, 20).unwrap();
/// assert_eq!(bucket.capacity(), Some(20));
/// assert!(ServerLimit::token_bucket(0.0, 20).is_err());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimit {
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Unlimited,
    Window {
        n: u32,
        period_ns: u64,
    },
    Bucket {
        // Kept for Display and headers; the arithmetic uses the integer interval.
        rate_per_sec: f64,
        burst: u32,
        interval_ns: u64,
    },
}

impl ServerLimit {
    /// Accepts every request; no rate headers are sent.
    pub const fn unlimited() -> Self {
        ServerLimit {
            kind: Kind::Unlimited,
        }
    }

    /// At most `n` accepted requests in any interval of length `period`.
    ///
    /// Memory is proportional to `n` (one timestamp per accept still inside the window).
    ///
    /// # Errors
    /// [`ConfigError::ZeroRate`] if `n` is 0, [`ConfigError::ZeroPeriod`] if `period` is zero,
    /// [`ConfigError::Overflow`] if `period` does not fit in `u64` nanoseconds (about 584 years).
    pub fn sliding_window(n: u32, period: Duration) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::ZeroRate);
        }
        if period.is_zero() {
            return Err(ConfigError::ZeroPeriod);
        }
        let period_ns = u64::try_from(period.as_nanos())
            .map_err(|_| ConfigError::Overflow { what: "period" })?;
        Ok(ServerLimit {
            kind: Kind::Window { n, period_ns },
        })
    }

    /// A token bucket refilled at `rate_per_sec` tokens per second holding at most `burst`.
    ///
    /// The interval between tokens is `1 / rate_per_sec` rounded *down* to whole nanoseconds,
    /// so the server is never stricter than the stated rate: a client pacing at exactly that
    /// rate is never refused.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] if the rate is not finite and positive,
    /// [`ConfigError::ZeroBurst`] if `burst` is 0, [`ConfigError::Overflow`] if the rate is so
    /// high that a token's interval rounds to zero nanoseconds or so low that it overflows.
    pub fn token_bucket(rate_per_sec: f64, burst: u32) -> Result<Self, ConfigError> {
        if !rate_per_sec.is_finite() || rate_per_sec <= 0.0 {
            return Err(ConfigError::OutOfRange {
                name: "rate_per_sec",
                value: rate_per_sec,
                expected: "a finite number above 0",
            });
        }
        if burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        let interval = (NANOS_PER_SEC as f64 / rate_per_sec).floor();
        // `as` saturates; the explicit bound keeps u64::MAX itself out so the later sums
        // cannot wrap.
        if interval < 1.0 || interval >= u64::MAX as f64 {
            return Err(ConfigError::Overflow {
                what: "rate_per_sec",
            });
        }
        let interval_ns = interval as u64;
        interval_ns
            .checked_mul(u64::from(burst))
            .ok_or(ConfigError::Overflow { what: "burst" })?;
        Ok(ServerLimit {
            kind: Kind::Bucket {
                rate_per_sec,
                burst,
                interval_ns,
            },
        })
    }

    /// How many requests can be accepted at once from a fresh state (`n` for a window,
    /// `burst` for a bucket); `None` when unlimited. This is the value of the
    /// `RateLimit-Limit` / `X-RateLimit-Limit` headers.
    pub fn capacity(&self) -> Option<u64> {
        match self.kind {
            Kind::Unlimited => None,
            Kind::Window { n, .. } => Some(u64::from(n)),
            Kind::Bucket { burst, .. } => Some(u64::from(burst)),
        }
    }

    /// Whether this limit accepts everything.
    pub fn is_unlimited(&self) -> bool {
        matches!(self.kind, Kind::Unlimited)
    }
}

impl Default for ServerLimit {
    /// [`ServerLimit::unlimited`].
    fn default() -> Self {
        ServerLimit::unlimited()
    }
}

impl fmt::Display for ServerLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unlimited => f.write_str("unlimited"),
            Kind::Window { n, period_ns } => write!(
                f,
                "{n} per {:?} (sliding window)",
                Duration::from_nanos(*period_ns)
            ),
            Kind::Bucket {
                rate_per_sec,
                burst,
                ..
            } => write!(f, "{rate_per_sec}/s, burst {burst} (token bucket)"),
        }
    }
}

/// The answer of [`ServerLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request was admitted and has consumed its slot.
    Accepted {
        /// Further requests that would be accepted at this same instant.
        remaining: u64,
        /// Time until the limiter is back to full capacity.
        reset: Duration,
    },
    /// The request was refused; nothing was consumed.
    Limited {
        /// Time until a request would be accepted (never zero).
        retry_after: Duration,
        /// Time until the limiter is back to full capacity.
        reset: Duration,
    },
}

impl Decision {
    /// Whether the request was admitted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Decision::Accepted { .. })
    }
}

/// The state of one [`ServerLimit`]: call [`check`](ServerLimiter::check) once per request.
///
/// `now` must be measured from one fixed epoch; times that go backwards are treated as equal
/// to the latest time seen, so a refusal is never turned into an acceptance by a clock glitch.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use std::time::Duration;
/// use tower_throttle::mock::{Decision, ServerLimit, ServerLimiter};
///
/// let limit = ServerLimit::sliding_window(2, Duration::from_secs(10)).unwrap();
/// let mut limiter = ServerLimiter::new(limit);
/// let s = Duration::from_secs;
/// assert!(limiter.check(s(0)).is_accepted());
/// assert!(limiter.check(s(3)).is_accepted());
/// // The third in [0 s, 10 s) is refused until the first leaves the window.
/// assert_eq!(
///     limiter.check(s(4)),
///     Decision::Limited { retry_after: s(6), reset: s(9) }
/// );
/// assert!(limiter.check(s(10)).is_accepted());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServerLimiter {
    limit: ServerLimit,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Unlimited,
    Window {
        // Accept times (ns) still inside the window, oldest first; never more than n.
        accepted: VecDeque<u64>,
        latest: u64,
    },
    Bucket {
        // GCRA theoretical arrival time: when the bucket would be full again (ns).
        tat: u64,
        latest: u64,
    },
}

impl ServerLimiter {
    /// A limiter in its fresh state: full capacity available.
    pub fn new(limit: ServerLimit) -> Self {
        let state = match limit.kind {
            Kind::Unlimited => State::Unlimited,
            Kind::Window { .. } => State::Window {
                accepted: VecDeque::new(),
                latest: 0,
            },
            Kind::Bucket { .. } => State::Bucket { tat: 0, latest: 0 },
        };
        ServerLimiter { limit, state }
    }

    /// The limit this limiter enforces.
    pub fn limit(&self) -> &ServerLimit {
        &self.limit
    }

    /// Enforces `limit` from now on. The state carries over when the shape (window or bucket)
    /// stays the same, as a server changing its numbers would; otherwise it starts fresh.
    pub(crate) fn set_limit(&mut self, limit: ServerLimit) {
        if std::mem::discriminant(&limit.kind) == std::mem::discriminant(&self.limit.kind) {
            self.limit = limit;
        } else {
            *self = ServerLimiter::new(limit);
        }
    }

    /// Decides one request arriving at `now` (offset from the limiter's epoch), consuming a
    /// slot if it is accepted.
    pub fn check(&mut self, now: Duration) -> Decision {
        let now = saturating_nanos(now);
        match (&self.limit.kind, &mut self.state) {
            (Kind::Window { n, period_ns }, State::Window { accepted, latest }) => {
                let now = monotonic(latest, now);
                check_window(accepted, u64::from(*n), *period_ns, now)
            }
            (
                Kind::Bucket {
                    burst, interval_ns, ..
                },
                State::Bucket { tat, latest },
            ) => {
                let now = monotonic(latest, now);
                check_bucket(tat, u64::from(*burst), *interval_ns, now)
            }
            _ => Decision::Accepted {
                remaining: u64::MAX,
                reset: Duration::ZERO,
            },
        }
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn monotonic(latest: &mut u64, now: u64) -> u64 {
    *latest = (*latest).max(now);
    *latest
}

fn check_window(accepted: &mut VecDeque<u64>, n: u64, period: u64, now: u64) -> Decision {
    // Half-open window: an accept at t no longer counts at t + period.
    while accepted
        .front()
        .is_some_and(|&t| now.saturating_sub(t) >= period)
    {
        accepted.pop_front();
    }
    // The window is full again once the newest accept has left it.
    let reset_after = |accepted: &VecDeque<u64>| {
        accepted.back().map_or(Duration::ZERO, |&t| {
            Duration::from_nanos(t.saturating_add(period).saturating_sub(now))
        })
    };
    if (accepted.len() as u64) < n {
        accepted.push_back(now);
        Decision::Accepted {
            remaining: n - accepted.len() as u64,
            reset: reset_after(accepted),
        }
    } else {
        let oldest = accepted.front().copied().unwrap_or(now);
        Decision::Limited {
            retry_after: Duration::from_nanos(oldest.saturating_add(period) - now),
            reset: reset_after(accepted),
        }
    }
}

fn check_bucket(tat: &mut u64, burst: u64, interval: u64, now: u64) -> Decision {
    // GCRA: `tat` is when the bucket would be full again; a request may arrive up to
    // `tolerance` before it (that slack is the burst).
    let tolerance = interval * (burst - 1);
    let allow_at = tat.saturating_sub(tolerance);
    if now < allow_at {
        return Decision::Limited {
            retry_after: Duration::from_nanos(allow_at - now),
            reset: Duration::from_nanos(*tat - now),
        };
    }
    *tat = (*tat).max(now).saturating_add(interval);
    let debt = *tat - now;
    // Admission guarantees debt <= tolerance + interval, so this never underflows; each
    // whole interval of headroom is one more request that would pass right now.
    let remaining = (tolerance + interval - debt) / interval;
    Decision::Accepted {
        remaining,
        reset: Duration::from_nanos(debt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn window(n: u32, period: Duration) -> ServerLimiter {
        ServerLimiter::new(ServerLimit::sliding_window(n, period).unwrap())
    }

    fn bucket(rate: f64, burst: u32) -> ServerLimiter {
        ServerLimiter::new(ServerLimit::token_bucket(rate, burst).unwrap())
    }

    #[test]
    fn constructors_reject_invalid_values() {
        assert_eq!(
            ServerLimit::sliding_window(0, ms(1)),
            Err(ConfigError::ZeroRate)
        );
        assert_eq!(
            ServerLimit::sliding_window(1, Duration::ZERO),
            Err(ConfigError::ZeroPeriod)
        );
        assert_eq!(
            ServerLimit::sliding_window(1, Duration::MAX),
            Err(ConfigError::Overflow { what: "period" })
        );
        assert_eq!(
            ServerLimit::token_bucket(1.0, 0),
            Err(ConfigError::ZeroBurst)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                ServerLimit::token_bucket(bad, 1),
                Err(ConfigError::OutOfRange { .. })
            ));
        }
        assert_eq!(
            ServerLimit::token_bucket(2e9, 1),
            Err(ConfigError::Overflow {
                what: "rate_per_sec"
            })
        );
        assert_eq!(
            ServerLimit::token_bucket(1e-30, 1),
            Err(ConfigError::Overflow {
                what: "rate_per_sec"
            })
        );
        assert_eq!(
            ServerLimit::token_bucket(1e-9, u32::MAX),
            Err(ConfigError::Overflow { what: "burst" })
        );
    }

    #[test]
    fn window_admits_n_then_refuses_until_oldest_leaves() {
        let mut l = window(3, ms(1000));
        for t in [0, 100, 200] {
            assert!(l.check(ms(t)).is_accepted(), "t = {t}");
        }
        assert_eq!(
            l.check(ms(500)),
            Decision::Limited {
                retry_after: ms(500),
                reset: ms(700)
            }
        );
        // One nanosecond early is still inside the half-open window.
        assert!(!l.check(ms(1000) - Duration::from_nanos(1)).is_accepted());
        assert_eq!(
            l.check(ms(1000)),
            Decision::Accepted {
                remaining: 0,
                reset: ms(1000)
            }
        );
        assert!(!l.check(ms(1050)).is_accepted());
        assert!(l.check(ms(1100)).is_accepted());
    }

    #[cfg(feature = "mock")]
    #[test]
    fn window_is_exact_for_any_interval() {
        // Pseudo-random arrivals every 0..7 ms; afterwards no window of 50 ms holds more
        // than 5 accepts, and every refusal's retry_after is exactly when it would pass.
        let period = ms(50);
        let mut l = window(5, period);
        let mut accepted = Vec::new();
        let mut t = Duration::ZERO;
        let mut x: u64 = 12345;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += Duration::from_micros((x >> 33) % 7000);
            match l.check(t) {
                Decision::Accepted { .. } => accepted.push(t),
                Decision::Limited { retry_after, .. } => {
                    let mut probe = l.clone();
                    assert!(!probe
                        .check(t + retry_after - Duration::from_nanos(1))
                        .is_accepted());
                    assert!(probe.check(t + retry_after).is_accepted());
                }
            }
        }
        assert_eq!(crate::mock::max_in_any_window(&accepted, period), 5);
    }

    #[test]
    fn window_remaining_counts_down_and_recovers() {
        let mut l = window(3, ms(100));
        let remaining = |d: Decision| match d {
            Decision::Accepted { remaining, .. } => remaining,
            Decision::Limited { .. } => panic!("refused"),
        };
        assert_eq!(remaining(l.check(ms(0))), 2);
        assert_eq!(remaining(l.check(ms(10))), 1);
        assert_eq!(remaining(l.check(ms(20))), 0);
        // At 110 ms the first two have left the window.
        assert_eq!(remaining(l.check(ms(110))), 1);
    }

    #[test]
    fn bucket_allows_burst_then_paces_at_rate() {
        // 10/s: one token per 100 ms, burst 3.
        let mut l = bucket(10.0, 3);
        for expected in [2, 1, 0] {
            assert_eq!(
                l.check(ms(0)),
                Decision::Accepted {
                    remaining: expected,
                    reset: ms(100 * (3 - expected))
                }
            );
        }
        assert_eq!(
            l.check(ms(0)),
            Decision::Limited {
                retry_after: ms(100),
                reset: ms(300)
            }
        );
        assert_eq!(
            l.check(ms(40)),
            Decision::Limited {
                retry_after: ms(60),
                reset: ms(260)
            }
        );
        assert!(l.check(ms(100)).is_accepted());
        assert!(!l.check(ms(150)).is_accepted());
        assert!(l.check(ms(200)).is_accepted());
    }

    #[test]
    fn bucket_refills_to_burst_and_no_further() {
        let mut l = bucket(10.0, 3);
        for _ in 0..3 {
            assert!(l.check(ms(0)).is_accepted());
        }
        // After 10 s idle the bucket holds 3 tokens, not 100.
        let t = ms(10_000);
        for _ in 0..3 {
            assert!(l.check(t).is_accepted());
        }
        assert!(!l.check(t).is_accepted());
        // Half refilled: 150 ms later exactly one token is back.
        assert!(l.check(t + ms(150)).is_accepted());
        assert!(!l.check(t + ms(150)).is_accepted());
    }

    #[cfg(feature = "mock")]
    #[test]
    fn bucket_never_exceeds_burst_plus_rate_times_t() {
        let mut l = bucket(20.0, 4);
        let mut accepted = Vec::new();
        let mut t = Duration::ZERO;
        for i in 0..20_000u64 {
            t += Duration::from_micros((i * 7919) % 30_000);
            if let Decision::Limited { retry_after, .. } = l.check(t) {
                let mut probe = l.clone();
                assert!(!probe
                    .check(t + retry_after - Duration::from_nanos(1))
                    .is_accepted());
                assert!(probe.check(t + retry_after).is_accepted());
            } else {
                accepted.push(t);
            }
        }
        for span_ms in [1, 50, 100, 1000, 5000] {
            let span = ms(span_ms);
            let bound = 4 + (20 * span_ms).div_ceil(1000) as usize;
            assert!(
                crate::mock::max_in_any_window(&accepted, span) <= bound,
                "span {span_ms} ms"
            );
        }
    }

    #[test]
    fn bucket_pacing_exactly_at_rate_is_never_refused() {
        // 3/s does not divide a second evenly; the interval rounds down so exact pacing
        // (as a client computes it, in f64 seconds) always passes, even with burst 1.
        let mut l = bucket(3.0, 1);
        for i in 0..10_000u32 {
            let t = Duration::from_secs_f64(f64::from(i) / 3.0);
            assert!(l.check(t).is_accepted(), "request {i}");
        }
    }

    #[test]
    fn clock_going_backwards_does_not_refund() {
        let mut l = window(1, ms(100));
        assert!(l.check(ms(500)).is_accepted());
        assert_eq!(
            l.check(ms(0)),
            Decision::Limited {
                retry_after: ms(100),
                reset: ms(100)
            }
        );
        let mut b = bucket(1.0, 1);
        assert!(b.check(ms(5000)).is_accepted());
        assert!(!b.check(ms(0)).is_accepted());
    }

    #[test]
    fn set_limit_keeps_state_of_same_shape_only() {
        let mut l = bucket(10.0, 1);
        assert!(l.check(ms(0)).is_accepted());
        // Same shape: the debt from the first accept carries over to the new rate.
        l.set_limit(ServerLimit::token_bucket(5.0, 1).unwrap());
        assert!(!l.check(ms(50)).is_accepted());
        assert!(l.check(ms(100)).is_accepted());
        assert!(!l.check(ms(250)).is_accepted());
        // A new shape starts fresh.
        l.set_limit(ServerLimit::sliding_window(1, ms(1000)).unwrap());
        assert!(l.check(ms(250)).is_accepted());
        assert!(!l.check(ms(260)).is_accepted());
    }

    #[test]
    fn unlimited_accepts_everything() {
        let mut l = ServerLimiter::new(ServerLimit::unlimited());
        for _ in 0..1000 {
            assert!(l.check(Duration::ZERO).is_accepted());
        }
        assert_eq!(ServerLimit::unlimited().capacity(), None);
    }
}
