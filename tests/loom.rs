//! Model checking of the lock-free bucket with loom: every interleaving of the
//! compare-and-swap loops of two or three threads is explored.
//!
//! ```sh
//! RUSTFLAGS="--cfg tower_throttle_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
//! ```
//!
//! Time is passed explicitly (`try_reserve(now, ..)`), so no runtime or clock is involved in a
//! decision: the only nondeterminism loom sees is the order of the atomic operations.
#![cfg(tower_throttle_loom)]

use std::time::Duration;

use loom::sync::Mutex;
use loom::thread;
use tokio::time::Instant;
use tower_throttle::bucket::Reservation;
use tower_throttle::{bucket::Bucket, Limits, LocalBucket, Quota};

const T: Duration = Duration::from_millis(100);

/// The GCRA guarantee on a set of admitted slots, with interval `t` and burst `b`: at most
/// `b - 1 + ceil(w / t)` slots in any half-open window of length `w`. On sorted slots that is
/// `s[j] - s[i] >= (j - i + 1 - b) * t` for every `i < j`.
fn assert_paced(slots: &[Instant], t: Duration, burst: u32) {
    let mut s = slots.to_vec();
    s.sort();
    for i in 0..s.len() {
        for j in i + 1..s.len() {
            let k = (j - i + 1) as u32;
            if k > burst {
                assert!(
                    s[j] - s[i] >= t * (k - burst),
                    "{k} slots within {:?} (burst {burst}, interval {t:?}): {s:?}",
                    s[j] - s[i],
                );
            }
        }
    }
}

fn quota(burst: u32) -> Quota {
    Quota::new(10, Duration::from_secs(1))
        .unwrap()
        .with_burst(burst)
        .unwrap()
}

/// Three threads reserve at once from a bucket with burst 2: whatever the interleaving, two go
/// now and one an interval later (never three now, never a slot wasted).
#[test]
fn concurrent_reservations_never_exceed_the_burst() {
    loom::model(|| {
        let bucket = LocalBucket::new(quota(2));
        let now = Instant::now();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let bucket = bucket.clone();
                thread::spawn(move || bucket.try_reserve(now, None).unwrap().at())
            })
            .collect();
        let mut slots = vec![bucket.try_reserve(now, None).unwrap().at()];
        slots.extend(handles.into_iter().map(|h| h.join().unwrap()));
        slots.sort();
        assert_eq!(slots, vec![now, now, now + T]);
    });
}

/// Threads that read the clock at different instants (one of them "late", as after a
/// preemption between reading the clock and reserving) still never get slots that break the
/// quota, in any order of their compare-and-swaps.
#[test]
fn reservations_with_skewed_clocks_keep_the_pacing() {
    loom::model(|| {
        let bucket = LocalBucket::new(quota(2));
        let base = Instant::now();
        let nows = [
            base + Duration::from_millis(150),
            base + Duration::from_millis(30),
        ];
        let handles: Vec<_> = nows
            .into_iter()
            .map(|now| {
                let bucket = bucket.clone();
                thread::spawn(move || {
                    let a = bucket.try_reserve(now, None).unwrap().at();
                    let b = bucket.try_reserve(now, None).unwrap().at();
                    assert!(a >= now && b >= now);
                    [a, b]
                })
            })
            .collect();
        let mut slots = vec![bucket.try_reserve(base, None).unwrap().at()];
        for h in handles {
            slots.extend(h.join().unwrap());
        }
        assert_paced(&slots, T, 2);
    });
}

/// A refused reservation (`max_wait` exceeded) consumes nothing, even when it races admitted
/// ones.
#[test]
fn refusals_race_admissions_without_consuming() {
    loom::model(|| {
        let bucket = LocalBucket::new(quota(1));
        let now = Instant::now();
        let other = bucket.clone();
        let h = thread::spawn(move || other.try_reserve(now, Some(Duration::ZERO)).ok());
        let mine = bucket.try_reserve(now, Some(Duration::ZERO)).ok();
        let theirs = h.join().unwrap();
        // Exactly one of the two gets the single slot at `now`; the other is refused and the
        // next slot is still the one right after it.
        assert_eq!(mine.is_some() as u8 + theirs.is_some() as u8, 1);
        assert_eq!(bucket.try_reserve(now, None).unwrap().at(), now + T);
    });
}

/// A reservation cancelled while another thread reserves: either the cancel comes first and
/// the other thread reuses the slot, or the reserve comes first and the cancelled slot is
/// forgotten. Never do two live reservations share the slot.
#[test]
fn cancel_racing_reserve_never_admits_twice() {
    loom::model(|| {
        let bucket = LocalBucket::new(quota(1));
        let now = Instant::now();
        let cancelled = bucket.try_reserve(now, None).unwrap();
        assert_eq!(cancelled.at(), now);

        let b1 = bucket.clone();
        let canceller = thread::spawn(move || b1.cancel(cancelled, now));
        let b2 = bucket.clone();
        let reserver = thread::spawn(move || b2.try_reserve(now, None).unwrap().at());
        canceller.join().unwrap();
        let raced = reserver.join().unwrap();
        let after = bucket.try_reserve(now, None).unwrap().at();

        let live = [raced, after];
        assert_paced(&live, T, 1);
        // Work-conserving when the cancel won, one interval lost at most when it lost.
        assert!(raced == now || raced == now + T, "{raced:?}");
        assert_eq!(after, raced + T);
    });
}

/// Two holders of reservations cancel them concurrently with a third thread reserving: the live
/// reservations still respect the quota, with every cancel either exact or forgotten.
#[test]
fn concurrent_cancels_and_reserve_keep_the_quota() {
    loom::model(|| {
        let bucket = LocalBucket::new(quota(2));
        let now = Instant::now();
        let live = std::sync::Arc::new(Mutex::new(Vec::new()));
        let first = bucket.try_reserve(now, None).unwrap();
        let second = bucket.try_reserve(now, None).unwrap();
        let third = bucket.try_reserve(now, None).unwrap();
        live.lock().unwrap().push(first.at());

        let cancel = |r: Reservation| {
            let bucket = bucket.clone();
            thread::spawn(move || bucket.cancel(r, now))
        };
        let c2 = cancel(second);
        let c3 = cancel(third);
        let b = bucket.clone();
        let l = live.clone();
        let reserver = thread::spawn(move || {
            let at = b.try_reserve(now, None).unwrap().at();
            l.lock().unwrap().push(at);
        });
        c2.join().unwrap();
        c3.join().unwrap();
        reserver.join().unwrap();
        let mut live = live.lock().unwrap().clone();
        live.push(bucket.try_reserve(now, None).unwrap().at());
        live.push(bucket.try_reserve(now, None).unwrap().at());
        assert_paced(&live, T, 2);
    });
}

/// Several windows take the mutex path: two threads reserving at once get distinct slots that
/// keep both windows, and neither consumes the other's capacity.
#[test]
fn multi_window_reservations_hold_every_window() {
    loom::model(|| {
        let limits = Limits::new(quota(2)).and(Quota::per_minute(3).unwrap());
        let bucket = LocalBucket::new(limits);
        let now = Instant::now();
        let other = bucket.clone();
        let h = thread::spawn(move || other.try_reserve(now, None).unwrap().at());
        let mut slots = vec![bucket.try_reserve(now, None).unwrap().at()];
        slots.push(h.join().unwrap());
        slots.push(bucket.try_reserve(now, None).unwrap().at());
        slots.sort();
        // Per second: burst 2 at `now`; per minute: 3 at most, 20 s apart beyond a burst of 1.
        assert_eq!(
            slots,
            vec![
                now,
                now + Duration::from_secs(20),
                now + Duration::from_secs(40)
            ]
        );
    });
}
