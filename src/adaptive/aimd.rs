//! [`Aimd`]: the common recipe, and the baseline the other controllers are measured against.

use tokio::time::Instant;

use super::controller::{check_bounds, check_open, clamp, lower_max, RateController, Signal};
use crate::ConfigError;

/// Additive-increase/multiplicative-decrease, the common recipe and the baseline: multiply by
/// `decrease` (0.5) on every 429, by `increase` (1.1) after `successes` (10) successes in a
/// row, clamped to `[min, max]`. Transient failures neither cut the rate nor break the streak.
///
/// ```
/// use tokio::time::Instant;
/// use tower_throttle::{adaptive::{RateController, Signal}, Aimd};
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
            // A server-told pause is not a refusal: no cut, but no increase right after it.
            Signal::Overloaded { .. } => self.streak = 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::controller::test_signals::{ok, throttled};

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
}
