//! [`Cubic`]: the AWS SDKs' CUBIC-shaped client rate limiter, kept for comparison.

use std::time::Duration;

use tokio::time::Instant;

use super::controller::{
    check_bounds, check_cruise, check_duration, check_margin, check_open, clamp, doubled,
    prober_rate_controller, Prober, Probing,
};
use crate::ConfigError;

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
/// use tower_throttle::{adaptive::RateController, Cubic};
///
/// let cubic = Cubic::builder().start(5.0).min(0.5).max(500.0).build()?;
/// assert_eq!(cubic.rate(), 5.0);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cubic {
    cfg: CubicConfig,
    p: Probing,
    phase: Phase,
    anchor: Option<f64>,
    cruise: Duration,
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
}

impl CubicBuilder {
    /// The first rate.
    pub fn start(mut self, rate: f64) -> Self {
        self.cfg.start = rate;
        self
    }
    /// The lowest rate.
    pub fn min(mut self, rate: f64) -> Self {
        self.cfg.min = rate;
        self
    }
    /// The highest rate.
    pub fn max(mut self, rate: f64) -> Self {
        self.cfg.max = rate;
        self
    }
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
    /// 429s within this time of a cut (or the server's `Retry-After`, if longer) are one
    /// event.
    pub fn event_hold(mut self, d: Duration) -> Self {
        self.cfg.event_hold = d;
        self
    }
    /// Window over which the accepted and sent rates are measured.
    pub fn measure_window(mut self, d: Duration) -> Self {
        self.cfg.measure_window = d;
        self
    }
    /// Checks every value.
    pub fn build(self) -> Result<Cubic, ConfigError> {
        let c = self.cfg;
        check_bounds(c.start, c.min, c.max)?;
        check_margin(c.margin)?;
        check_open("beta", c.beta, 0.0, 1.0 - c.margin)?;
        check_duration("recover", c.recover)?;
        check_cruise(c.cruise, c.max_cruise)?;
        check_duration("probe_doubling", c.probe_doubling)?;
        check_duration("measure_window", c.measure_window)?;
        Ok(Cubic {
            cfg: c,
            p: Probing::new(c.start, c.min, c.max, c.measure_window),
            phase: Phase::SlowStart {
                at: Duration::ZERO,
                from: c.start,
            },
            anchor: None,
            cruise: c.cruise,
        })
    }
}

prober_rate_controller!(Cubic);

impl Prober for Cubic {
    fn probing(&self) -> &Probing {
        &self.p
    }

    fn probing_mut(&mut self) -> &mut Probing {
        &mut self.p
    }

    fn target(&self) -> f64 {
        let g = self.p.growth;
        match self.phase {
            Phase::SlowStart { at, from } => {
                doubled(from, g.saturating_sub(at), self.cfg.probe_doubling / 4)
            }
            Phase::Recover { at, from, to } => {
                let x =
                    (g.saturating_sub(at).as_secs_f64() / self.cfg.recover.as_secs_f64()).min(1.0);
                to - (to - from) * (1.0 - x).powi(3)
            }
            Phase::Cruise { rate, .. } => rate,
            Phase::Probe { at, from } => {
                doubled(from, g.saturating_sub(at), self.cfg.probe_doubling)
            }
        }
    }

    fn advance_phase(&mut self) {
        let g = self.p.growth;
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
        if self.p.event.is_ongoing(now) {
            return;
        }
        // Accepted rate since sends resumed after the last hold: time spent held says
        // nothing about the limit.
        let measured = self.p.accepted.rate_since(now, self.p.event.resumed_at);
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
                let a = measured.map_or(self.p.rate, |m| m.min(self.p.rate));
                (a, old.is_some_and(|old| (a - old).abs() <= 0.1 * old))
            }
        };
        self.cruise = if stable {
            (self.cruise * 2).min(self.cfg.max_cruise)
        } else {
            self.cfg.cruise
        };
        let mut to = clamp((1.0 - self.cfg.margin) * anchor, self.p.min, self.p.max);
        if stable {
            // A probe found the same limit: keep the level that already worked for a whole
            // cruise, rather than one measured with the server's burst in it.
            if let Phase::Probe { from, .. } = self.phase {
                to = to.min(from);
            }
        }
        self.anchor = Some(anchor);
        let from = clamp(self.cfg.beta * anchor, self.p.min, to);
        self.p.rate = from;
        self.phase = Phase::Recover {
            at: self.p.growth,
            from,
            to,
        };
        self.p.event.begin(now, retry_after, self.cfg.event_hold);
    }

    fn on_overloaded(&mut self) {
        let g = self.p.growth;
        let rate = match self.phase {
            // The climb overloaded the server: back to the level it started from.
            Phase::Probe { from, .. } => from,
            Phase::SlowStart { .. } => self.p.rate,
            // Recovering towards, or at, a level that worked.
            Phase::Recover { .. } | Phase::Cruise { .. } => return,
        };
        self.p.rate = clamp(rate, self.p.min, self.p.max);
        self.phase = Phase::Cruise {
            rate: self.p.rate,
            until: g + self.cruise,
        };
    }

    fn restart(&mut self) {
        self.phase = Phase::Cruise {
            rate: self.p.rate,
            until: self.p.growth + self.cfg.cruise,
        };
        self.cruise = self.cfg.cruise;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::controller::test_signals::{ok, throttled};
    use crate::adaptive::RateController;

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
