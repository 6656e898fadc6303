//! Exponential backoff with jitter, as a plain `Iterator<Item = Duration>`.
//!
//! Pure arithmetic: nothing here sleeps or reads a clock. The retry layer asks
//! [`Backoff::delay_for`] for the wait before each retry and sleeps with `tokio::time`; tests use
//! [`Backoff::iter_seeded`] to get the same sequence every run.
//!
//! ```
//! use std::time::Duration;
//! use tower_throttle::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::builder().jitter(Jitter::None).build()?;
//! let delays: Vec<Duration> = backoff.iter().collect();
//! assert_eq!(delays, [1, 2, 4, 8].map(Duration::from_secs));
//! # Ok::<(), tower_throttle::ConfigError>(())
//! ```

use std::iter::FusedIterator;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::ConfigError;

/// How randomness is mixed into each delay, so that clients throttled together do not retry
/// together.
///
/// `d` below is the exponential delay `base * factor^attempt`, already capped at `max_delay`;
/// `u` is uniform in `[0, 1)`. Every result is capped at `max_delay` again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// `d`: no randomness. Deterministic, and for the same reason prone to synchronised retries.
    None,
    /// `d * (1 + j * u)`: up to `j` (in `[0, 1]`) longer than the nominal delay, never shorter,
    /// so a server's minimum wait is always honoured.
    Proportional(f64),
    /// `u * d`: anywhere in `[0, d)`. Spreads load best, but may retry almost at once.
    Full,
    /// `d / 2 + u * d / 2`: at least half the nominal delay.
    Equal,
    /// AWS's "decorrelated jitter": `min(max_delay, base + u * (3 * prev - base))`, where `prev`
    /// is the previous delay (`base` before the first). `factor` is not used: the growth comes
    /// from the factor 3 of the published formula.
    Decorrelated,
}

/// Growth of the upper bound per step in [`Jitter::Decorrelated`], as published by AWS.
const DECORRELATED_GROWTH: f64 = 3.0;

/// An exponential backoff schedule: how long to wait before each retry, and how many retries.
///
/// The delay before retry `n` (counting from 0) is `base * factor^n`, capped at `max_delay`,
/// then jittered (see [`Jitter`]) and capped again. Defaults:
///
/// | setting       | default                       |
/// |---------------|-------------------------------|
/// | `base`        | 1 s                           |
/// | `factor`      | 2.0                           |
/// | `max_delay`   | 60 s                          |
/// | `max_retries` | 4                             |
/// | `jitter`      | `Jitter::Proportional(0.25)`  |
///
/// Values are checked by [`BackoffBuilder::build`], so a `Backoff` always holds a usable
/// configuration; no method panics or overflows, whatever the attempt number.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::backoff::{Backoff, Jitter};
///
/// let backoff = Backoff::builder()
///     .base(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5))
///     .max_retries(6)
///     .jitter(Jitter::Full)
///     .build()?;
///
/// // The same seed gives the same delays: handy in tests.
/// let a: Vec<_> = backoff.iter_seeded(7).collect();
/// let b: Vec<_> = backoff.iter_seeded(7).collect();
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 6);
/// assert!(a.iter().all(|d| *d <= Duration::from_secs(5)));
///
/// // A retry policy that counts attempts itself asks for one delay at a time.
/// let mut rng = rand::thread_rng();
/// assert!(backoff.delay_for(u32::MAX, &mut rng) <= Duration::from_secs(5));
///
/// // Invalid values are a typed error, not a panic.
/// assert!(Backoff::builder().factor(f64::NAN).build().is_err());
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    max_delay: Duration,
    max_retries: u32,
    jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// The default schedule (see the table in the type's docs).
    pub const fn new() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(60),
            max_retries: 4,
            jitter: Jitter::Proportional(0.25),
        }
    }

    /// A builder starting from the defaults.
    pub const fn builder() -> BackoffBuilder {
        BackoffBuilder {
            config: Backoff::new(),
        }
    }

    /// The delay before the first retry.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The growth per retry.
    pub const fn factor(&self) -> f64 {
        self.factor
    }

    /// No delay is longer than this.
    pub const fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// How many delays [`Backoff::iter`] yields.
    pub const fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The jitter strategy.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delays, at most [`max_retries`](Backoff::max_retries) of them, with randomness from a
    /// small generator seeded by the thread RNG (so the iterator is `Send` and can be held across
    /// `.await`, which `rand::rngs::ThreadRng` cannot).
    pub fn iter(&self) -> BackoffIter {
        self.iter_with(
            SmallRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| SmallRng::seed_from_u64(0)),
        )
    }

    /// The delays with a fixed seed: the same seed always gives the same sequence.
    pub fn iter_seeded(&self, seed: u64) -> BackoffIter {
        self.iter_with(SmallRng::seed_from_u64(seed))
    }

    fn iter_with(&self, rng: SmallRng) -> BackoffIter {
        BackoffIter {
            backoff: *self,
            rng,
            attempt: 0,
            prev: None,
        }
    }

    /// The exponential delay before retry `attempt` (0 is the first retry), capped, before
    /// jitter. Saturates at `max_delay` for any `attempt`, up to `u32::MAX`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        // f64 keeps this overflow-free: factor^attempt goes to infinity, and anything not below
        // the cap (infinity and NaN included) becomes the cap.
        let secs = self.base.as_secs_f64() * self.factor.powf(f64::from(attempt));
        capped(secs, self.max_delay)
    }

    /// The jittered delay before retry `attempt` (0 is the first retry), for a retry policy that
    /// counts attempts itself. Never above `max_delay`; never panics.
    ///
    /// Stateless, so [`Jitter::Decorrelated`] takes the previous *nominal* delay as its `prev`;
    /// use [`Backoff::next_delay`] with the delay actually slept to follow AWS's formula exactly.
    pub fn delay_for<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        self.next_delay(attempt, None, rng)
    }

    /// Like [`Backoff::delay_for`], with the previous delay actually used (`None` before the
    /// first retry, or when unknown). Only [`Jitter::Decorrelated`] looks at `prev`.
    pub fn next_delay<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        prev: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let cap = self.max_delay;
        let d = self.nominal(attempt);
        let ds = d.as_secs_f64();
        match self.jitter {
            Jitter::None => d,
            Jitter::Proportional(j) => capped(ds * (1.0 + j * rng.gen::<f64>()), cap),
            Jitter::Full => capped(ds * rng.gen::<f64>(), cap),
            Jitter::Equal => capped(ds / 2.0 + ds / 2.0 * rng.gen::<f64>(), cap),
            Jitter::Decorrelated => {
                let prev = match (prev, attempt) {
                    (Some(p), _) => p,
                    (None, 0) => self.base,
                    (None, n) => self.nominal(n - 1),
                };
                let lo = self.base.as_secs_f64();
                // `max` keeps the range non-empty when a caller passes a `prev` below base.
                let hi = (prev.as_secs_f64() * DECORRELATED_GROWTH).max(lo);
                capped(lo + (hi - lo) * rng.gen::<f64>(), cap)
            }
        }
    }
}

/// `secs` as a duration, at most `cap`; NaN, infinities and values too large for a `Duration`
/// give `cap`, negatives give zero.
fn capped(secs: f64, cap: Duration) -> Duration {
    if secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
}

/// Builds a [`Backoff`], checking every value. Start from [`Backoff::builder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffBuilder {
    config: Backoff,
}

impl BackoffBuilder {
    /// The delay before the first retry (default 1 s). Must be greater than zero and at most
    /// `max_delay`. Any larger value is accepted; a delay past a century waits a century (the
    /// crate's horizon for "never": no instant it computes can overflow).
    pub const fn base(mut self, base: Duration) -> Self {
        self.config.base = base;
        self
    }

    /// The growth per retry (default 2.0). Must be finite and at least 1.0.
    pub const fn factor(mut self, factor: f64) -> Self {
        self.config.factor = factor;
        self
    }

    /// The longest delay (default 60 s), also the cap on a server's `Retry-After` in the
    /// retry policy. `Duration::MAX` is accepted: a delay past a century waits a century.
    pub const fn max_delay(mut self, max_delay: Duration) -> Self {
        self.config.max_delay = max_delay;
        self
    }

    /// How many retries, and so how many delays (default 4). Zero means never retry.
    pub const fn max_retries(mut self, max_retries: u32) -> Self {
        self.config.max_retries = max_retries;
        self
    }

    /// The jitter strategy (default `Jitter::Proportional(0.25)`).
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `base`; [`ConfigError::OutOfRange`] for a `factor` that
    /// is NaN, infinite or below 1, or a proportional jitter outside `[0, 1]`;
    /// [`ConfigError::MinAboveMax`] when `base` is above `max_delay`.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let c = self.config;
        if c.base.is_zero() {
            return Err(ConfigError::Zero {
                name: "backoff base",
            });
        }
        // Written so NaN fails too.
        if !(c.factor.is_finite() && c.factor >= 1.0) {
            return Err(ConfigError::OutOfRange {
                name: "backoff factor",
                value: c.factor,
                expected: "a finite number >= 1.0",
            });
        }
        if let Jitter::Proportional(j) = c.jitter {
            if !(0.0..=1.0).contains(&j) {
                return Err(ConfigError::OutOfRange {
                    name: "proportional jitter",
                    value: j,
                    expected: "a number in [0, 1]",
                });
            }
        }
        if c.base > c.max_delay {
            return Err(ConfigError::MinAboveMax {
                name: "backoff base / max_delay (seconds)",
                min: c.base.as_secs_f64(),
                max: c.max_delay.as_secs_f64(),
            });
        }
        Ok(c)
    }
}

/// The delays of a [`Backoff`], from [`Backoff::iter`] or [`Backoff::iter_seeded`].
#[derive(Debug, Clone)]
pub struct BackoffIter {
    backoff: Backoff,
    rng: SmallRng,
    attempt: u32,
    prev: Option<Duration>,
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.attempt >= self.backoff.max_retries {
            return None;
        }
        let delay = self
            .backoff
            .next_delay(self.attempt, self.prev, &mut self.rng);
        self.attempt += 1;
        self.prev = Some(delay);
        Some(delay)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.backoff.max_retries.saturating_sub(self.attempt);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for BackoffIter {}
impl FusedIterator for BackoffIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    // proptest's prelude exports a different `Rng`; name ours explicitly.
    use rand::Rng;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn with(jitter: Jitter) -> Backoff {
        Backoff::builder().jitter(jitter).build().unwrap()
    }

    /// The nominal delays of the default schedule, computed here independently.
    const NOMINAL: [u64; 4] = [1, 2, 4, 8];

    #[test]
    fn defaults_match_the_docs() {
        let b = Backoff::default();
        assert_eq!(b.base(), secs(1));
        assert_eq!(b.factor(), 2.0);
        assert_eq!(b.max_delay(), secs(60));
        assert_eq!(b.max_retries(), 4);
        assert_eq!(b.jitter(), Jitter::Proportional(0.25));
        assert_eq!(Backoff::builder().build(), Ok(b));
    }

    #[test]
    fn no_jitter_is_exactly_exponential() {
        let got: Vec<_> = with(Jitter::None).iter().collect();
        assert_eq!(got, NOMINAL.map(secs));
    }

    #[test]
    fn no_jitter_hits_the_cap_and_stays_there() {
        let b = Backoff::builder()
            .jitter(Jitter::None)
            .max_retries(9)
            .build()
            .unwrap();
        let got: Vec<_> = b.iter().collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60].map(secs));
    }

    #[test]
    fn factor_one_is_constant() {
        let b = Backoff::builder()
            .factor(1.0)
            .jitter(Jitter::None)
            .base(secs(3))
            .build()
            .unwrap();
        assert!(b.iter().all(|d| d == secs(3)));
        assert_eq!(b.delay_for(u32::MAX, &mut rand::thread_rng()), secs(3));
    }

    #[test]
    fn zero_retries_yields_nothing() {
        let b = Backoff::builder().max_retries(0).build().unwrap();
        assert_eq!(b.iter().count(), 0);
        assert_eq!(b.iter().len(), 0);
    }

    #[test]
    fn iterator_is_exact_size_and_fused() {
        let mut it = with(Jitter::Full).iter_seeded(1);
        assert_eq!(it.len(), 4);
        it.next();
        assert_eq!(it.len(), 3);
        it.by_ref().for_each(drop);
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    /// Per strategy: bounds of step n given the nominal delay d and the previous delay.
    fn bounds(jitter: Jitter, n: usize, prev: Option<Duration>) -> (Duration, Duration) {
        let d = secs(NOMINAL[n]);
        match jitter {
            Jitter::None => (d, d),
            Jitter::Proportional(j) => (d, d.mul_f64(1.0 + j)),
            Jitter::Full => (Duration::ZERO, d),
            Jitter::Equal => (d / 2, d),
            Jitter::Decorrelated => (secs(1), (prev.unwrap_or(secs(1)) * 3).min(secs(60))),
        }
    }

    #[test]
    fn seeded_sequences_are_bounded_and_deterministic() {
        let strategies = [
            Jitter::None,
            Jitter::Proportional(0.25),
            Jitter::Proportional(1.0),
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ];
        for jitter in strategies {
            let b = with(jitter);
            for seed in [0, 1, 42, u64::MAX] {
                let a: Vec<_> = b.iter_seeded(seed).collect();
                let again: Vec<_> = b.iter_seeded(seed).collect();
                assert_eq!(a, again, "{jitter:?} seed {seed}: not deterministic");
                assert_eq!(a.len(), 4);
                let mut prev = None;
                for (n, d) in a.iter().enumerate() {
                    let (lo, hi) = bounds(jitter, n, prev);
                    assert!(
                        lo <= *d && *d <= hi,
                        "{jitter:?} seed {seed} step {n}: {d:?} not in [{lo:?}, {hi:?}]"
                    );
                    prev = Some(*d);
                }
            }
            if jitter != Jitter::None && jitter != Jitter::Decorrelated {
                let a: Vec<_> = b.iter_seeded(1).collect();
                let other: Vec<_> = b.iter_seeded(2).collect();
                assert_ne!(a, other, "{jitter:?}: different seeds gave the same delays");
            }
        }
    }

    /// A delay in seconds from (nominal delay, random draw, previous delay).
    type Formula = dyn Fn(f64, f64, f64) -> f64;

    /// The exact values under a fixed seed, recomputed here from the same random draws, so a
    /// change of formula (not just of bounds) is caught.
    #[test]
    fn seeded_values_follow_the_formulas() {
        let draws: Vec<f64> = {
            let mut rng = SmallRng::seed_from_u64(9);
            (0..4).map(|_| rng.gen::<f64>()).collect()
        };
        let expect = |f: &Formula| -> Vec<Duration> {
            let mut prev = 1.0;
            NOMINAL
                .iter()
                .zip(&draws)
                .map(|(d, u)| {
                    let v = f(*d as f64, *u, prev).min(60.0);
                    prev = v;
                    Duration::from_secs_f64(v)
                })
                .collect()
        };
        let cases: [(Jitter, &Formula); 4] = [
            (Jitter::Proportional(0.25), &|d, u, _| d * (1.0 + 0.25 * u)),
            (Jitter::Full, &|d, u, _| d * u),
            (Jitter::Equal, &|d, u, _| d / 2.0 + d / 2.0 * u),
            (Jitter::Decorrelated, &|_, u, prev| {
                1.0 + (prev * 3.0 - 1.0) * u
            }),
        ];
        for (jitter, f) in cases {
            let got: Vec<_> = with(jitter).iter_seeded(9).collect();
            let want = expect(f);
            for (g, w) in got.iter().zip(&want) {
                let diff = if g > w { *g - *w } else { *w - *g };
                // `prev` is rounded to whole nanoseconds between steps in the iterator, not here.
                assert!(
                    diff <= Duration::from_nanos(10),
                    "{jitter:?}: {got:?} != {want:?}"
                );
            }
        }
    }

    #[test]
    fn stateless_decorrelated_uses_nominal_prev() {
        let b = with(Jitter::Decorrelated);
        let mut rng = SmallRng::seed_from_u64(3);
        for attempt in 0..10 {
            let d = b.delay_for(attempt, &mut rng);
            let prev = if attempt == 0 {
                secs(1)
            } else {
                b.nominal(attempt - 1)
            };
            assert!(
                d >= secs(1) && d <= (prev * 3).min(secs(60)),
                "attempt {attempt}: {d:?}"
            );
        }
        // A previous delay below base cannot make the range empty.
        let d = b.next_delay(5, Some(Duration::from_millis(1)), &mut rng);
        assert_eq!(d, secs(1));
    }

    #[test]
    fn huge_attempts_saturate_at_the_cap() {
        let strategies = [
            Jitter::None,
            Jitter::Proportional(1.0),
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ];
        for jitter in strategies {
            for max_delay in [secs(60), Duration::MAX] {
                let b = Backoff::builder()
                    .factor(1e300)
                    .max_delay(max_delay)
                    .jitter(jitter)
                    .build()
                    .unwrap();
                let mut rng = SmallRng::seed_from_u64(0);
                for attempt in [30, 64, 1_000, i32::MAX as u32, u32::MAX - 1, u32::MAX] {
                    let d = b.delay_for(attempt, &mut rng);
                    assert!(d <= max_delay, "{jitter:?} attempt {attempt}: {d:?}");
                    let d = b.next_delay(attempt, Some(Duration::MAX), &mut rng);
                    assert!(
                        d <= max_delay,
                        "{jitter:?} attempt {attempt} prev MAX: {d:?}"
                    );
                }
                assert_eq!(b.nominal(u32::MAX), max_delay);
            }
        }
    }

    #[test]
    fn builder_rejects_bad_values() {
        let b = Backoff::builder;
        let cases: [(&str, BackoffBuilder); 13] = [
            ("zero base", b().base(Duration::ZERO)),
            ("NaN factor", b().factor(f64::NAN)),
            ("infinite factor", b().factor(f64::INFINITY)),
            ("negative infinite factor", b().factor(f64::NEG_INFINITY)),
            ("negative factor", b().factor(-2.0)),
            ("zero factor", b().factor(0.0)),
            ("shrinking factor", b().factor(0.5)),
            ("negative jitter", b().jitter(Jitter::Proportional(-0.1))),
            ("jitter above 1", b().jitter(Jitter::Proportional(1.5))),
            ("NaN jitter", b().jitter(Jitter::Proportional(f64::NAN))),
            (
                "infinite jitter",
                b().jitter(Jitter::Proportional(f64::INFINITY)),
            ),
            ("base above cap", b().base(secs(61))),
            ("zero cap", b().max_delay(Duration::ZERO)),
        ];
        for (name, builder) in cases {
            assert!(builder.build().is_err(), "{name} was accepted");
        }
        assert!(matches!(
            b().base(Duration::ZERO).build(),
            Err(ConfigError::Zero { .. })
        ));
        assert!(matches!(
            b().factor(f64::NAN).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().base(secs(61)).build(),
            Err(ConfigError::MinAboveMax { .. })
        ));
    }

    #[test]
    fn builder_accepts_edges() {
        let b = Backoff::builder;
        for builder in [
            b().factor(1.0),
            b().jitter(Jitter::Proportional(0.0)),
            b().jitter(Jitter::Proportional(1.0)),
            b().base(secs(60)),
            b().base(Duration::from_nanos(1)).max_delay(Duration::MAX),
            b().max_retries(u32::MAX),
        ] {
            assert!(builder.build().is_ok(), "{builder:?} was rejected");
        }
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            (0.0..=1.0f64).prop_map(Jitter::Proportional),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    prop_compose! {
        fn any_backoff()(
            base_ns in 1u64..=3_600_000_000_000,
            extra_ns in 0u64..=365 * 24 * 3_600_000_000_000,
            factor in 1.0..1e6f64,
            max_retries in 0u32..300,
            jitter in any_jitter(),
        ) -> Backoff {
            Backoff::builder()
                .base(Duration::from_nanos(base_ns))
                .max_delay(Duration::from_nanos(base_ns) + Duration::from_nanos(extra_ns))
                .factor(factor)
                .max_retries(max_retries)
                .jitter(jitter)
                .build()
                .unwrap()
        }
    }

    proptest! {
        #[test]
        fn no_delay_exceeds_the_cap_and_sums_never_overflow(b in any_backoff(), seed: u64) {
            let mut total = Duration::ZERO;
            let mut count = 0u32;
            for d in b.iter_seeded(seed) {
                prop_assert!(d <= b.max_delay());
                total = total.checked_add(d).expect("sum overflowed");
                count += 1;
            }
            prop_assert_eq!(count, b.max_retries());
            prop_assert!(total <= b.max_delay().saturating_mul(count));
        }

        #[test]
        fn any_attempt_is_capped(b in any_backoff(), attempt: u32, seed: u64, prev_ns: u64) {
            let mut rng = SmallRng::seed_from_u64(seed);
            prop_assert!(b.delay_for(attempt, &mut rng) <= b.max_delay());
            let prev = Some(Duration::from_nanos(prev_ns));
            prop_assert!(b.next_delay(attempt, prev, &mut rng) <= b.max_delay());
            prop_assert!(b.nominal(attempt) <= b.max_delay());
        }
    }
}
