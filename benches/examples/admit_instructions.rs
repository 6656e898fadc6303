//! Instruction counts of the admit path, for `valgrind --tool=callgrind`: stable on a loaded
//! machine where wall-clock benchmarks are noisy.
//!
//! Run: `cargo build --release -p tower-throttle-benches --example admit_instructions`, then
//! for each contender
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='admit_instructions::measured*'
//! --callgrind-out-file=/dev/null target/release/examples/admit_instructions NAME 100000`;
//! the instructions collected divided by 100000 is the cost of one admit. Only the loop is
//! counted (not setup, nor quanta's one-off calibration). Under valgrind the OS clock is a
//! system call (no vDSO) whose kernel side is not counted: these are user-space instructions.

#[path = "../support/mod.rs"]
mod support;

use support::{gquota, quota, Noop};

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::noop_waker_ref;
use governor::clock::FakeRelativeClock;
use governor::{Quota as GQuota, RateLimiter};
use tokio::time::Instant;
use tower::limit::rate::Rate;
use tower::{Layer, Service};
use tower_throttle::bucket::KeyedBucket;
use tower_throttle::{bucket::Clock, rate_limit::RateLimit, LocalBucket, Quota, RateLimitLayer};

fn ready_call<S: Service<()>>(svc: &mut S, cx: &mut Context<'_>)
where
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(r) => r.expect("admitted"),
        Poll::Pending => panic!("never pending"),
    }
    let fut = pin!(svc.call(()));
    black_box(fut.poll(cx).is_ready());
}

/// The only code callgrind counts (see the module docs).
#[inline(never)]
fn measured(n: u64, mut admit: impl FnMut(u64)) {
    for i in 0..n {
        admit(i);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().expect("contender name");
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("iterations");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut cx = Context::from_waker(noop_waker_ref());
    match which.as_str() {
        "ours_try_reserve" => {
            let b = LocalBucket::new(quota());
            measured(n, |_| {
                black_box(&b.try_reserve(Instant::now(), None));
            });
        }
        "ours_fast_try_reserve_now" => {
            let b = LocalBucket::with_clock(quota(), Clock::Fast);
            measured(n, |_| {
                black_box(&b.try_reserve_now(None));
            });
        }
        "ours_fast_service" => {
            let mut svc =
                RateLimitLayer::with_bucket(LocalBucket::with_clock(quota(), Clock::Fast))
                    .layer(Noop);
            measured(n, |_| {
                ready_call(&mut svc, &mut cx);
            });
        }
        "ours_try_reserve_fixed_now" => {
            let b = LocalBucket::new(quota());
            let now = Instant::now();
            measured(n, |_| {
                black_box(&b.try_reserve(black_box(now), None));
            });
        }
        "ours_service" => {
            let mut svc = RateLimit::new(Noop, quota());
            measured(n, |_| {
                ready_call(&mut svc, &mut cx);
            });
        }
        "governor_check" => {
            let g = RateLimiter::direct(gquota());
            measured(n, |_| {
                black_box(&g.check());
            });
        }
        "governor_fake_clock" => {
            let g = RateLimiter::direct_with_clock(gquota(), FakeRelativeClock::default());
            measured(n, |_| {
                black_box(&g.check());
            });
        }
        "tower_service" => {
            let mut svc =
                tower::limit::RateLimit::new(Noop, Rate::new(u64::MAX, Duration::from_secs(1)));
            measured(n, |_| {
                ready_call(&mut svc, &mut cx);
            });
        }
        "ours_keyed" => {
            let b = KeyedBucket::<u64>::new(
                Quota::per_second(1).unwrap().with_burst(u32::MAX).unwrap(),
            );
            measured(n, |k| {
                black_box(&b.reserve(&(k % 10_000), Instant::now(), None));
            });
        }
        "ours_keyed_fast" => {
            let b = KeyedBucket::<u64>::with_clock(
                Quota::per_second(1).unwrap().with_burst(u32::MAX).unwrap(),
                Clock::Fast,
            );
            measured(n, |k| {
                black_box(&b.reserve_now(&(k % 10_000), None));
            });
        }
        "governor_keyed" => {
            let g = RateLimiter::<u64, _, _>::keyed(
                GQuota::per_second(NonZeroU32::MIN).allow_burst(NonZeroU32::MAX),
            );
            measured(n, |k| {
                black_box(&g.check_key(&(k % 10_000)));
            });
        }
        other => panic!("unknown contender {other}"),
    }
}
