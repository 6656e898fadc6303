//! Properties of the buckets for random quotas and random arrival schedules, checked against a
//! reference model written from the quota's guarantee rather than from the GCRA state.
//!
//! Time is passed explicitly to `try_reserve`, so no runtime is involved: an arrival schedule
//! is a list of offsets from an instant taken after the bucket was built.
//!
//! The guarantee (`src/quota.rs`): with interval `T` (= period / count, rounded up) and burst
//! `b`, at most `b - 1 + ceil(w / T)` requests are admitted in any half-open window of length
//! `w`; for `w = period` that is at most `count + b - 1`, and with burst 1 at most `count`.
//! On the sorted admitted slots it reads `s[j] - s[i] >= (j - i + 1 - b) * T`.
//!
//! The reference model admits each caller FIFO at the earliest instant that is not before its
//! arrival, not before the previous caller's slot, and keeps that bound for every quota
//! against everything admitted so far. The bucket must agree with it exactly: never later
//! (work-conserving) and never earlier (the bound).

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_throttle::bucket::{KeyedBucket, Reservation};
use tower_throttle::{bucket::Bucket, Limits, LocalBucket, Quota, ThrottleError};

/// A quota as (count, period in ms, burst), kept small enough that windows overlap often.
fn quota() -> impl Strategy<Value = Quota> {
    (1u32..=20, 1u64..=2_000, 1u32..=5).prop_map(|(count, period_ms, burst)| {
        Quota::new(count, Duration::from_millis(period_ms))
            .unwrap()
            .with_burst(burst)
            .unwrap()
    })
}

/// One caller: the gap since the previous arrival, its `max_wait`, and whether it cancels its
/// reservation (and how long after arriving, capped at the next arrival).
#[derive(Debug, Clone)]
struct Arrival {
    gap: Duration,
    max_wait: Option<Duration>,
    cancel_after: Option<Duration>,
    key: u8,
}

fn arrival(cancels: bool) -> impl Strategy<Value = Arrival> {
    let gap = prop_oneof![
        3 => Just(Duration::ZERO),
        3 => (0u64..50_000_000).prop_map(Duration::from_nanos),
        2 => (0u64..2_000).prop_map(Duration::from_millis),
    ];
    let max_wait = prop_oneof![
        3 => Just(None),
        1 => (0u64..1_000).prop_map(|ms| Some(Duration::from_millis(ms))),
    ];
    let cancel = if cancels {
        prop_oneof![
            4 => Just(None),
            1 => (0u64..3_000).prop_map(|ms| Some(Duration::from_millis(ms))),
        ]
        .boxed()
    } else {
        Just(None).boxed()
    };
    (gap, max_wait, cancel, 0u8..4).prop_map(|(gap, max_wait, cancel_after, key)| Arrival {
        gap,
        max_wait,
        cancel_after,
        key,
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap()
}

/// The reference: admitted slots (nanoseconds from the schedule's start) and the quotas.
#[derive(Debug, Clone)]
struct Model {
    quotas: Vec<(u64, u64)>, // (interval, burst)
    slots: Vec<u64>,
}

impl Model {
    fn new(quotas: &[Quota]) -> Model {
        Model {
            quotas: quotas
                .iter()
                .map(|q| (nanos(q.interval()), u64::from(q.burst())))
                .collect(),
            slots: Vec::new(),
        }
    }

    /// The earliest FIFO slot at or after `arrival` that keeps every quota's bound.
    fn earliest(&self, arrival: u64) -> u64 {
        let n = self.slots.len() as u64;
        let mut slot = arrival.max(self.slots.last().copied().unwrap_or(0));
        for &(interval, burst) in &self.quotas {
            for (j, &s) in self.slots.iter().enumerate() {
                // The new slot and slots j..n make n - j + 1 admissions in [s, slot].
                let k = n - j as u64 + 1;
                if k > burst {
                    slot = slot.max(s + (k - burst) * interval);
                }
            }
        }
        slot
    }

    /// What the bucket should answer: `Ok(slot)` (and record it) or `Err(())` when the wait
    /// exceeds `max_wait`.
    fn reserve(&mut self, arrival: u64, max_wait: Option<Duration>) -> Result<u64, ()> {
        let slot = self.earliest(arrival);
        if max_wait.is_some_and(|m| slot - arrival > nanos(m)) {
            return Err(());
        }
        self.slots.push(slot);
        Ok(slot)
    }
}

/// Checks the quota's guarantee on a set of admitted slots: the pairwise GCRA bound, and the
/// plain "at most count + burst - 1 in any period" a rolling-window server enforces.
fn assert_within(slots: &[u64], q: &Quota) -> Result<(), TestCaseError> {
    let mut s = slots.to_vec();
    s.sort_unstable();
    let (t, b) = (nanos(q.interval()), u64::from(q.burst()));
    for i in 0..s.len() {
        for j in i + 1..s.len() {
            let k = (j - i + 1) as u64;
            if k > b {
                prop_assert!(
                    s[j] - s[i] >= (k - b) * t,
                    "{k} admissions within {} ns for {q:?}",
                    s[j] - s[i]
                );
            }
        }
    }
    let period = nanos(q.period());
    let limit = u64::from(q.count()) + b - 1;
    let mut lo = 0;
    for hi in 0..s.len() {
        while s[hi] - s[lo] >= period {
            lo += 1;
        }
        prop_assert!(
            (hi - lo + 1) as u64 <= limit,
            "{} admissions in one period of {q:?}",
            hi - lo + 1
        );
    }
    Ok(())
}

/// 512 cases per property, or `PROPTEST_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

fn offset(base: Instant, r: &Reservation) -> u64 {
    nanos(r.at() - base)
}

/// Runs `schedule` through a `LocalBucket` built from `quotas`, checking every answer against
/// the model, and returns the admitted slots.
fn run_local(quotas: &[Quota], schedule: &[Arrival]) -> Result<Vec<u64>, TestCaseError> {
    let mut limits = Limits::new(quotas[0]);
    for q in &quotas[1..] {
        limits = limits.and(*q);
    }
    let bucket = LocalBucket::new(limits.clone());
    let base = Instant::now();
    // The model takes the quotas in the bucket's order (shortest period first); the bound
    // does not depend on the order, but this keeps the debug output comparable.
    let mut model = Model::new(limits.quotas());
    let mut now = 0u64;
    let mut last_slot = 0u64;
    for (i, a) in schedule.iter().enumerate() {
        now += nanos(a.gap);
        let got = bucket.try_reserve(base + Duration::from_nanos(now), a.max_wait);
        match (got, a.cancel_after) {
            (Ok(r), Some(after)) => {
                // Handed back before the next caller arrives: it must be as if it never came.
                let next_gap = schedule.get(i + 1).map_or(after, |n| n.gap);
                let at = now + nanos(after.min(next_gap));
                prop_assert_eq!(
                    offset(base, &r),
                    model.earliest(now),
                    "cancelled caller {}",
                    i
                );
                bucket.cancel(r, base + Duration::from_nanos(at));
            }
            (Ok(r), None) => {
                let slot = offset(base, &r);
                prop_assert_eq!(Ok(slot), model.reserve(now, a.max_wait), "caller {}", i);
                prop_assert!(
                    slot >= last_slot,
                    "FIFO: caller {} got {} before {}",
                    i,
                    slot,
                    last_slot
                );
                last_slot = slot;
            }
            (Err(ThrottleError::WaitTooLong { wait, max_wait }), _) => {
                prop_assert!(wait > max_wait);
                prop_assert_eq!(Err(()), model.reserve(now, a.max_wait), "caller {}", i);
                prop_assert_eq!(nanos(wait), model.earliest(now) - now);
            }
            (Err(e), _) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        }
    }
    for q in quotas {
        assert_within(&model.slots, q)?;
    }
    Ok(model.slots)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// (a) + (c): one quota; every admission at exactly the reference's slot, and the slots
    /// keep the bound in every window.
    #[test]
    fn one_quota_admits_exactly_the_reference_slots(
        q in quota(),
        schedule in prop::collection::vec(arrival(false), 1..150),
    ) {
        run_local(&[q], &schedule)?;
    }

    /// (b): two quotas (the mutex path) hold together, and the caller still gets the earliest
    /// slot both allow.
    #[test]
    fn two_quotas_hold_together(
        q1 in quota(),
        q2 in quota(),
        schedule in prop::collection::vec(arrival(false), 1..150),
    ) {
        run_local(&[q1, q2], &schedule)?;
    }

    /// (d): a reservation cancelled before the next caller arrives leaves no trace: everyone
    /// after it gets exactly the slot they would have had if it never came.
    #[test]
    fn cancelling_the_last_reservation_restores_the_previous_behaviour(
        quotas in prop::collection::vec(quota(), 1..=2),
        schedule in prop::collection::vec(arrival(true), 1..150),
    ) {
        run_local(&quotas, &schedule)?;
    }

    /// The keyed bucket behaves as an independent reference model per key, including idle
    /// eviction (which must change no decision) and cancels.
    #[test]
    fn keyed_bucket_matches_a_model_per_key(
        quotas in prop::collection::vec(quota(), 1..=2),
        schedule in prop::collection::vec(arrival(true), 1..200),
        evict_every in 1usize..20,
    ) {
        let mut limits = Limits::new(quotas[0]);
        for q in &quotas[1..] {
            limits = limits.and(*q);
        }
        let bucket = KeyedBucket::new(limits.clone());
        let base = Instant::now();
        let mut models = vec![Model::new(limits.quotas()); 4];
        let mut now = 0u64;
        for (i, a) in schedule.iter().enumerate() {
            now += nanos(a.gap);
            let at = base + Duration::from_nanos(now);
            if i % evict_every == 0 {
                bucket.evict_idle(at);
            }
            let model = &mut models[usize::from(a.key)];
            let got = bucket.reserve(&a.key, at, a.max_wait);
            match (got, a.cancel_after) {
                (Ok(r), Some(after)) => {
                    let next_gap = schedule.get(i + 1).map_or(after, |n| n.gap);
                    prop_assert_eq!(offset(base, &r), model.earliest(now));
                    let back = base + Duration::from_nanos(now + nanos(after.min(next_gap)));
                    bucket.cancel(&a.key, r, back);
                }
                (Ok(r), None) => {
                    prop_assert_eq!(Ok(offset(base, &r)), model.reserve(now, a.max_wait), "caller {}", i);
                }
                (Err(ThrottleError::WaitTooLong { .. }), _) => {
                    prop_assert_eq!(Err(()), model.reserve(now, a.max_wait), "caller {}", i);
                }
                (Err(e), _) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
        }
        for model in &models {
            for q in &quotas {
                assert_within(&model.slots, q)?;
            }
        }
    }
}

/// The bound is tight: a bucket with burst `b` that is saturated from the start admits exactly
/// `count + b - 1` in its first period, so the property above is not vacuous.
#[test]
fn the_window_bound_is_reached() {
    let q = Quota::new(10, Duration::from_secs(1))
        .unwrap()
        .with_burst(3)
        .unwrap();
    let bucket = LocalBucket::new(q);
    let base = Instant::now();
    let first_period = (0..100)
        .map(|_| bucket.try_reserve(base, None).unwrap().at() - base)
        .filter(|d| *d < Duration::from_secs(1))
        .count();
    assert_eq!(first_period, 10 + 3 - 1);
}
