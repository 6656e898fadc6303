//! Cost of a caller that waits for its slot: ours, ours without the re-slot signal, and
//! `tower::limit::RateLimit`; and the cost of a raise that re-slots a queue of waiters.
//!
//! Run: `cargo bench -p tower-throttle-benches --bench wait -- --warm-up-time 1 --measurement-time 3`
//!
//! Every row runs on a current-thread runtime with tokio's clock paused, so a wait costs no
//! wall time: what is measured is the bookkeeping of waiting (the timer, and for ours the
//! re-slot signal `Bucket::reslots` that a raise fires), not the wait itself. Each limiter
//! allows one call per millisecond with no burst, so every call after the first waits.
//! governor is not in this file: its `until_ready` sleeps on `futures-timer`, which a paused
//! tokio clock does not move, so its rows would time the wait.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::limit::rate::Rate;
use tower::{Layer, Service, ServiceExt};
use tower_throttle::bucket::{Bucket, Reservation, Reserve, Snapshot};
use tower_throttle::{ConfigError, LocalBucket, Quota, RateLimitLayer};

// Only the no-op service is used here; the quotas far above the load are the admit benches'.
#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;
use support::Noop;

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn one_per_ms() -> Quota {
    Quota::new(1, Duration::from_millis(1)).expect("valid quota")
}

/// A local bucket that never signals waiters early: the gate then waits on its timer alone,
/// as before the signal existed.
#[derive(Clone)]
struct NoSignal(LocalBucket);

impl fmt::Debug for NoSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoSignal").field(&self.0).finish()
    }
}

impl Bucket for NoSignal {
    fn reserve_weighted(&self, now: Instant, cost: u32, max_wait: Option<Duration>) -> Reserve {
        self.0.reserve_weighted(now, cost, max_wait)
    }
    fn reserve_now(&self, max_wait: Option<Duration>) -> Reserve {
        self.0.reserve_now(max_wait)
    }
    fn cancel(&self, reservation: Reservation, now: Instant) {
        self.0.cancel(reservation, now);
    }
    fn hold_until(&self, until: Instant) {
        self.0.hold_until(until);
    }
    fn held_until(&self, now: Instant) -> Option<Instant> {
        self.0.held_until(now)
    }
    fn is_current(&self, reservation: &Reservation, now: Instant) -> bool {
        self.0.is_current(reservation, now)
    }
    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        self.0.set_rate(per_second)
    }
    fn rate(&self) -> f64 {
        self.0.rate()
    }
    fn snapshot(&self, now: Instant) -> Snapshot {
        self.0.snapshot(now)
    }
    fn reslots(&self) -> Option<&Arc<Notify>> {
        None
    }
}

/// `iters` calls through `svc`, each waiting for its slot, timed in wall time.
async fn waited_calls<S>(mut svc: S, iters: u64) -> Duration
where
    S: Service<()>,
    S::Error: fmt::Debug,
{
    let start = StdInstant::now();
    for _ in 0..iters {
        svc.ready().await.expect("ready");
        svc.call(()).await.expect("call");
    }
    start.elapsed()
}

fn wait_every_call(c: &mut Criterion) {
    let rt = paused();
    let mut g = c.benchmark_group("wait_every_call_1_thread");
    g.bench_function("ours/ready_call", |b| {
        b.iter_custom(|iters| {
            let svc = RateLimitLayer::new(one_per_ms()).layer(Noop);
            rt.block_on(waited_calls(svc, iters))
        })
    });
    g.bench_function("ours_without_signal/ready_call", |b| {
        b.iter_custom(|iters| {
            let svc =
                RateLimitLayer::with_bucket(NoSignal(LocalBucket::new(one_per_ms()))).layer(Noop);
            rt.block_on(waited_calls(svc, iters))
        })
    });
    g.bench_function("tower/ready_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // Built inside the runtime: it creates its timer at once.
                let rate = Rate::new(1, Duration::from_millis(1));
                waited_calls(tower::limit::RateLimit::new(Noop, rate), iters).await
            })
        })
    });
    g.finish();
}

const WAITERS: u64 = 1_000;

/// `WAITERS` callers queued at one per second, then a raise to a million per second: the wall
/// time from the raise until every caller went, per caller. With the signal they re-slot at
/// once; without it each sleeps to its old slot first (free in paused time, so this row shows
/// the bookkeeping only; the virtual time it costs is in `tests/admission_regressions.rs`).
async fn raise<B: Bucket + Clone>(bucket: B) -> Duration {
    let svc = RateLimitLayer::with_bucket(bucket.clone()).layer(Noop);
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    // Every task reserves and starts waiting.
    tokio::task::yield_now().await;
    let start = StdInstant::now();
    bucket.set_rate(1e6).expect("valid rate");
    for t in tasks {
        t.await.expect("task").expect("call");
    }
    start.elapsed() / WAITERS as u32
}

fn raise_with_waiters(c: &mut Criterion) {
    let rt = paused();
    let mut g = c.benchmark_group("raise_1000_waiters_per_waiter");
    let per_second = || Quota::per_second(1).expect("valid quota");
    g.bench_function("ours/reslot", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(raise(LocalBucket::new(per_second()))))
                .sum()
        })
    });
    g.bench_function("ours_without_signal/reslot_at_old_slot", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(raise(NoSignal(LocalBucket::new(per_second())))))
                .sum()
        })
    });
    g.finish();
}

criterion_group!(benches, wait_every_call, raise_with_waiters);
criterion_main!(benches);
