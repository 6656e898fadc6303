//! Cost of the admit decision: ours against `governor` and `tower::limit::RateLimit`.
//!
//! Every limiter is configured far above the load (1e9 per second with a burst of `u32::MAX`),
//! so each call is admitted and what is measured is the bookkeeping, never a wait.
//!
//! Run: `cargo bench -p tower-throttle-benches --bench gate -- --warm-up-time 1 --measurement-time 3`
//!
//! Each group shows ours on both clocks: `ours/*` is the default `Clock::Tokio` and
//! `ours_fast/*` is `Clock::Fast` (quanta's TSC read, the clock governor uses), next to
//! `governor/check` and `tower/*`.
//!
//! How a row is timed, the same for every contender:
//! - Single-thread rows run in one loop, [`drive`], timed as a whole (criterion's
//!   `iter_custom`). With criterion's `iter` the loop around each closure is generated anew
//!   for every row, and on this path (about 30 cycles, most of them the clock read) that
//!   layout alone moved identical work by up to 3 ns between rows.
//! - Each result is observed where it lies (`black_box(&result)`), not moved into `black_box`:
//!   a move copies the whole result type, which would charge a limiter for the size of its
//!   error type rather than for its decision. Ours returns a 40-byte
//!   `Result<Reservation, ThrottleError>` (a slot that can be handed back); governor's `Ok`
//!   is a tag. Moved, ours costs about 1.4 ns more than shown.
//! - The `clock/*` rows are the floor: an admit cannot cost less than reading its clock. On a
//!   VM where the TSC read costs 9.5 ns, ours with the fast clock and governor both sit on it,
//!   the decision hidden behind the read; the instruction counts in
//!   `examples/admit_instructions.rs` tell them apart.
//!
//! About the default clock: it reads `tokio::time::Instant::now()`. This crate enables tokio's
//! `test-util` (as the main crate's dev-dependencies do), which routes that call through the
//! runtime's pausable clock; a user's release build does not have `test-util`. tokio short-cuts the pausable path with one atomic
//! load while no clock has ever been paused (true in this process), so here it costs an
//! `std::time::Instant::now()` plus that load. The `clock/*` rows show the read on its own and
//! the `*_fixed_now` rows isolate the bucket arithmetic and compare-and-swap from it. governor's
//! default clock is `quanta` (a scaled TSC read), so `governor/check` and ours differ in clock
//! source too; `governor/check_fake_clock` uses governor's own atomic fake clock for the same
//! isolation.

#[path = "support/mod.rs"]
mod support;

use support::{gquota, quota, Noop};

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::task::noop_waker_ref;
use governor::clock::FakeRelativeClock;
use governor::{Quota as GQuota, RateLimiter};
use tokio::time::Instant;
use tower::limit::rate::Rate;
use tower::{Layer, Service, ServiceExt};
use tower_throttle::bucket::KeyedBucket;
use tower_throttle::{
    bucket::Clock, rate_limit::RateLimit, Limits, LocalBucket, Quota, RateLimitLayer,
};

const KEYS: u64 = 10_000;

/// Two windows, both far above the load: forces the mutex path.
fn two_windows() -> Limits {
    let hourly = Quota::per_hour(u32::MAX)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota");
    Limits::new(quota()).and(hourly)
}

fn tower_rate() -> Rate {
    Rate::new(u64::MAX, Duration::from_secs(1))
}

/// `poll_ready` then `call` then one poll of the response future, as a tower caller does.
fn ready_call<S>(svc: &mut S, cx: &mut Context<'_>)
where
    S: Service<()>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(r) => r.expect("admitted"),
        Poll::Pending => panic!("limit is far above the load: never pending"),
    }
    let fut = pin!(svc.call(()));
    black_box(fut.poll(cx).is_ready());
}

/// Our gate on a fast-clock bucket, as a user builds it.
fn fast_service() -> RateLimit<Noop> {
    RateLimitLayer::with_bucket(LocalBucket::with_clock(quota(), Clock::Fast)).layer(Noop)
}

/// Fails loudly if a configuration would make a contender wait: then it would not be an admit
/// benchmark.
fn check_every_call_is_admitted(rt: &tokio::runtime::Runtime) {
    let _guard = rt.enter();
    let mut cx = Context::from_waker(noop_waker_ref());
    let ours = LocalBucket::new(quota());
    let fast = LocalBucket::with_clock(quota(), Clock::Fast);
    let two = LocalBucket::new(two_windows());
    let fixed = Instant::now();
    let gov = RateLimiter::direct(gquota());
    for _ in 0..100_000 {
        let now = Instant::now();
        assert!(ours.try_reserve(now, None).expect("admit").at() <= now);
        assert!(ours.try_reserve(fixed, None).expect("admit").at() <= fixed);
        assert!(two.try_reserve(now, None).expect("admit").at() <= now);
        assert!(fast.try_reserve_now(None).is_ok());
        assert!(gov.check().is_ok());
    }
    let mut svc = RateLimit::new(Noop, quota());
    let mut fast_svc = fast_service();
    let mut tower_svc = tower::limit::RateLimit::new(Noop, tower_rate());
    for _ in 0..100_000 {
        ready_call(&mut svc, &mut cx);
        ready_call(&mut fast_svc, &mut cx);
        ready_call(&mut tower_svc, &mut cx);
    }
}

/// `iters` calls of `admit` in one loop, timed as a whole: the driver every single-thread row
/// runs in (see the module docs for why not criterion's `iter`).
#[inline(never)]
fn drive(iters: u64, mut admit: impl FnMut()) -> Duration {
    let start = StdInstant::now();
    for _ in 0..iters {
        admit();
    }
    start.elapsed()
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    check_every_call_is_admitted(&rt);
    // tower's RateLimit creates its Sleep up front and needs a runtime for it.
    let _guard = rt.enter();
    let mut cx = Context::from_waker(noop_waker_ref());

    let mut g = c.benchmark_group("admit_1_thread");
    // One row: `name`, timed by `drive` around `admit`.
    macro_rules! row {
        ($name:expr, $admit:expr) => {
            g.bench_function($name, |b| b.iter_custom(|n| drive(n, $admit)))
        };
    }

    row!("clock/tokio_instant_now", || {
        black_box(Instant::now());
    });
    row!("clock/std_instant_now", || {
        black_box(StdInstant::now());
    });
    let q = quanta::Clock::new();
    row!("clock/quanta_now", || {
        black_box(q.now());
    });

    let ours = LocalBucket::new(quota());
    row!("ours/try_reserve", || {
        black_box(&ours.try_reserve(Instant::now(), None));
    });
    let ours = LocalBucket::new(quota());
    row!("ours/try_reserve_now", || {
        black_box(&ours.try_reserve_now(None));
    });
    let fast = LocalBucket::with_clock(quota(), Clock::Fast);
    row!("ours_fast/try_reserve_now", || {
        black_box(&fast.try_reserve_now(None));
    });
    let ours = LocalBucket::new(quota());
    let now = Instant::now();
    row!("ours/try_reserve_fixed_now", || {
        black_box(&ours.try_reserve(black_box(now), None));
    });
    let two = LocalBucket::new(two_windows());
    row!("ours/two_windows_try_reserve", || {
        black_box(&two.try_reserve(Instant::now(), None));
    });
    let two = LocalBucket::new(two_windows());
    row!("ours/two_windows_try_reserve_fixed_now", || {
        black_box(&two.try_reserve(black_box(now), None));
    });
    let mut svc = RateLimit::new(Noop, quota());
    row!("ours/service_ready_call", || ready_call(&mut svc, &mut cx));
    let mut fast_svc = fast_service();
    row!("ours_fast/service_ready_call", || {
        ready_call(&mut fast_svc, &mut cx)
    });

    let gov = RateLimiter::direct(gquota());
    row!("governor/check", || {
        black_box(&gov.check());
    });
    let gov_fake = RateLimiter::direct_with_clock(gquota(), FakeRelativeClock::default());
    row!("governor/check_fake_clock", || {
        black_box(&gov_fake.check());
    });

    let mut tower_svc = tower::limit::RateLimit::new(Noop, tower_rate());
    row!("tower/ratelimit_ready_call", || {
        ready_call(&mut tower_svc, &mut cx)
    });
    g.finish();
}

/// Runs `make()` on each of two threads, then `iters` admits of what it returned on both at
/// once; returns wall time / 2, so criterion reports wall time per admit across both threads.
fn two_threads<M, A>(iters: u64, make: M) -> Duration
where
    M: Fn() -> A + Sync,
    A: FnMut(),
{
    let barrier = Barrier::new(2);
    let spans: Vec<(StdInstant, StdInstant)> = thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut admit = make();
                    barrier.wait();
                    let start = StdInstant::now();
                    for _ in 0..iters {
                        admit();
                    }
                    (start, StdInstant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("two spans");
    let end = spans.iter().map(|s| s.1).max().expect("two spans");
    (end - start) / 2
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_2_threads_shared");

    let ours = LocalBucket::new(quota());
    g.bench_function("ours/try_reserve", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let ours = ours.clone();
                move || {
                    black_box(&ours.try_reserve(Instant::now(), None));
                }
            })
        })
    });
    let fast = LocalBucket::with_clock(quota(), Clock::Fast);
    g.bench_function("ours_fast/try_reserve_now", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let fast = fast.clone();
                move || {
                    black_box(&fast.try_reserve_now(None));
                }
            })
        })
    });
    let two = LocalBucket::new(two_windows());
    g.bench_function("ours/two_windows_try_reserve", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let two = two.clone();
                move || {
                    black_box(&two.try_reserve(Instant::now(), None));
                }
            })
        })
    });
    // Each thread builds its own service from one layer (a service is Send, not Sync), so
    // both share one bucket, exactly as clones of one service would.
    let layer = RateLimitLayer::new(quota());
    g.bench_function("ours/service_ready_call", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let mut svc = layer.layer(Noop);
                move || ready_call(&mut svc, &mut Context::from_waker(noop_waker_ref()))
            })
        })
    });
    let layer = RateLimitLayer::with_bucket(LocalBucket::with_clock(quota(), Clock::Fast));
    g.bench_function("ours_fast/service_ready_call", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let mut svc = layer.layer(Noop);
                move || ready_call(&mut svc, &mut Context::from_waker(noop_waker_ref()))
            })
        })
    });

    let gov = Arc::new(RateLimiter::direct(gquota()));
    g.bench_function("governor/check", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let gov = Arc::clone(&gov);
                move || {
                    black_box(&gov.check());
                }
            })
        })
    });

    // tower's RateLimit keeps its state in the service value, so two threads can only share
    // one limit through a Buffer (a channel to a worker task). That is what tower users must
    // do, so it is measured, on a two-worker runtime, with one task per worker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    g.bench_function("tower/buffer_ratelimit_ready_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let svc = tower::buffer::Buffer::new(
                    tower::limit::RateLimit::new(Noop, tower_rate()),
                    1024,
                );
                let start = StdInstant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let mut svc = svc.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                svc.ready()
                                    .await
                                    .expect("ready")
                                    .call(())
                                    .await
                                    .expect("call");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed() / 2
            })
        })
    });
    g.finish();
}

/// Per-key limit 1 per second with a burst of `u32::MAX`: every call is admitted, yet a key
/// never refills between visits, so it stays in our map (not evicted and re-created).
fn quota_keys_stay() -> (Quota, GQuota) {
    let ours = Quota::per_second(1)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota");
    let gov = GQuota::per_second(NonZeroU32::MIN).allow_burst(NonZeroU32::MAX);
    (ours, gov)
}

fn keyed(c: &mut Criterion) {
    // Two shapes. `refilled`: the rate is so far above the load that each key has fully
    // refilled before its next visit, so our sweep forgets it and the next call re-creates it
    // (governor never forgets, so it only looks it up). `active`: keys stay owed, nothing is
    // evicted, both sides pay a lookup.
    let (ours_stay, gov_stay) = quota_keys_stay();
    for (shape, ours_q, gov_q) in [
        ("refilled", quota(), gquota()),
        ("active", ours_stay, gov_stay),
    ] {
        let mut g = c.benchmark_group(format!("keyed_10k_keys_round_robin_{shape}"));
        let ours = KeyedBucket::<u64>::new(ours_q);
        let mut k = 0u64;
        g.bench_function("ours/reserve", |b| {
            b.iter(|| {
                k = (k + 1) % KEYS;
                black_box(ours.reserve(&k, Instant::now(), None)).ok();
            })
        });
        let fast = KeyedBucket::<u64>::with_clock(ours_q, Clock::Fast);
        g.bench_function("ours_fast/reserve_now", |b| {
            b.iter(|| {
                k = (k + 1) % KEYS;
                black_box(fast.reserve_now(&k, None)).ok();
            })
        });
        let gov = RateLimiter::<u64, _, _>::keyed(gov_q);
        g.bench_function("governor/check_key_dashmap", |b| {
            b.iter(|| {
                k = (k + 1) % KEYS;
                black_box(gov.check_key(&k)).ok();
            })
        });
        let gov = RateLimiter::<u64, _, _>::hashmap(gov_q);
        g.bench_function("governor/check_key_hashmap", |b| {
            b.iter(|| {
                k = (k + 1) % KEYS;
                black_box(gov.check_key(&k)).ok();
            })
        });
        g.finish();
    }
}

criterion_group!(benches, single_thread, contended, keyed);
criterion_main!(benches);
