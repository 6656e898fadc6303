//! One regression test per defect of the admission-core issue, each named after what it pins,
//! through the layers users stack (paused tokio time; the inner service counts what reaches
//! it).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_throttle::bucket::KeyedBucket;
use tower_throttle::rate_limit::KeyedRateLimitLayer;
use tower_throttle::{
    bucket::Bucket, presets, Limits, LocalBucket, Quota, RateLimitLayer, Throttle,
};

/// Instants (from `start`) at which calls reached the inner service.
type Arrivals = Arc<Mutex<Vec<Duration>>>;

fn recorder(start: Instant) -> (Arrivals, impl Fn() -> Duration + Clone) {
    let log: Arrivals = Arc::default();
    (log, move || start.elapsed())
}

/// A gate of `quota` in front of a service that logs when each caller (by its number) reached
/// it, from the instant this was built.
fn logged_gate(quota: Quota) -> (Calls, LocalBucket, BoxCloneService<u32, (), BoxError>) {
    let start = Instant::now();
    let calls: Calls = Arc::default();
    let layer = RateLimitLayer::new(quota);
    let bucket = layer.bucket().clone();
    let svc = ServiceBuilder::new().layer(layer).service(service_fn({
        let calls = calls.clone();
        move |i: u32| {
            calls.lock().unwrap().push((start.elapsed(), i));
            async { Ok::<_, Infallible>(()) }
        }
    }));
    (calls, bucket, BoxCloneService::new(svc))
}

/// When each caller reached the inner service, in the order they did.
type Calls = Arc<Mutex<Vec<(Duration, u32)>>>;

fn times(calls: &Calls) -> Vec<Duration> {
    calls.lock().unwrap().iter().map(|(t, _)| *t).collect()
}

/// 1. A 429 hold spent every window's allowance: 150 requests through the HubSpot preset, the
/// first answered `429 Retry-After: 1`, took 645 s of virtual time instead of about 16 s.
#[tokio::test(start_paused = true)]
async fn a_429_hold_does_not_spend_the_daily_allowance() {
    let start = Instant::now();
    let (log, elapsed) = recorder(start);
    let calls = Arc::new(AtomicUsize::new(0));
    let api = {
        let (log, calls) = (log.clone(), calls.clone());
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            log.lock().unwrap().push(elapsed());
            async move {
                let mut res = http::Response::new(());
                if n == 0 {
                    *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                    res.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .build(api)
        .unwrap();
    let tasks: Vec<_> = (0..150)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(c.oneshot(http::Request::new(Full::new(Bytes::new()))))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    let took = start.elapsed();
    // 151 calls at 10/s after a 1 s hold: about 16 s, never minutes.
    assert!(took < Duration::from_secs(17), "took {took:?}");
    assert!(took >= Duration::from_secs(15), "took {took:?}");
    // And the hold is over: nothing of it lingers in the shared bucket.
    assert!(client
        .bucket()
        .unwrap()
        .held_until(Instant::now())
        .is_none());
}

/// 2. A rate cut did not reach callers already waiting: 200 callers at 100/s, then
/// `set_rate(10.0)`, and 100 calls still reached the inner service in the next second.
#[tokio::test(start_paused = true)]
async fn a_rate_cut_reaches_callers_already_waiting() {
    let (calls, bucket, svc) = logged_gate(Quota::per_second(100).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    // Every caller has reserved its slot, 10 ms apart; the first went at once.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    bucket.set_rate(10.0).unwrap();
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    let in_next_second = times(&calls)
        .iter()
        .filter(|t| **t > Duration::from_millis(1) && **t <= Duration::from_millis(1_002))
        .count();
    assert!(
        in_next_second <= 10,
        "{in_next_second} calls in the second after the cut"
    );
    for t in tasks {
        t.abort();
    }
}

/// A rate raise did not reach callers already waiting (issue 15): 200 callers at 10/s, then
/// `set_rate(100.0)`, and they still went 100 ms apart for 20 s, so a controller's slow start
/// saw its sent rate lag the bucket's.
#[tokio::test(start_paused = true)]
async fn a_rate_raise_reaches_callers_already_waiting() {
    let (calls, bucket, svc) = logged_gate(Quota::per_second(10).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    bucket.set_rate(100.0).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let sent = times(&calls);
    // The first went at once; the other 199 at the new pace from the raise: 10 ms apart, the
    // last about 2 s in, not 20 s.
    assert_eq!(sent.len(), 200);
    assert_eq!(sent[0], Duration::ZERO);
    assert_eq!(*sent.last().unwrap(), Duration::from_millis(1 + 10 * 199));
    // Never faster than the new rate.
    for pair in sent[1..].windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(10), "{pair:?}");
    }
    // Woken in the order they queued, they keep it: nobody's wait grew.
    let callers: Vec<u32> = calls.lock().unwrap().iter().map(|(_, i)| *i).collect();
    assert_eq!(callers, (0..200).collect::<Vec<_>>());
}

/// A handle keeps its re-slot signal from one wait to the next: one that has waited before
/// (and so reuses its timer) still wakes at once on a raise.
#[tokio::test(start_paused = true)]
async fn a_handle_that_waited_before_still_wakes_early_on_a_raise() {
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap());
    let bucket = layer.bucket().clone();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: u32| async { Ok::<_, Infallible>(()) }));
    // Two calls: the second waits 100 ms on this handle's timer and signal.
    for i in 0..2 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    let others: Vec<_> = (0..20)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    // This handle now queues behind the twenty: 2.1 s away at 10/s.
    let start = Instant::now();
    let mut ready = tokio_test::task::spawn(svc.ready());
    tokio_test::assert_pending!(ready.poll());
    bucket.set_rate(1_000.0).unwrap();
    assert!(
        ready.is_woken(),
        "the raise did not wake the waiting handle"
    );
    while ready.poll().is_pending() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(ready);
    assert!(
        start.elapsed() <= Duration::from_millis(25),
        "{:?}",
        start.elapsed()
    );
    for t in others {
        t.await.unwrap().unwrap();
    }
}

/// A raise of an eighth or less leaves the waiters' slots as they were: waking every waiter on
/// each small step of a climbing controller would cost more than the step gives.
#[tokio::test(start_paused = true)]
async fn a_small_rate_raise_keeps_the_slots_of_callers_already_waiting() {
    let start = Instant::now();
    let (calls, bucket, svc) = logged_gate(Quota::per_second(10).unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    bucket.set_rate(11.0).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let sent = times(&calls);
    let expected: Vec<Duration> = (0..20).map(|i| Duration::from_millis(100 * i)).collect();
    assert_eq!(sent, expected);
    // Two such steps add up to more than an eighth: the second re-slots the queue.
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    let from = start.elapsed();
    bucket.set_rate(12.0).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let last = *times(&calls).iter().max().unwrap();
    let interval = Duration::from_nanos((1e9_f64 / 12.0).ceil() as u64);
    // The first of them was one interval away; all twenty now go at the new pace (1.667 s),
    // not the old one (1.818 s).
    assert!(
        (last - from).abs_diff(interval * 20) < Duration::from_millis(1),
        "{:?}",
        last - from
    );
}

/// The weighted gate takes a raise at once too.
#[tokio::test(start_paused = true)]
async fn a_rate_raise_reaches_weighted_callers_already_waiting() {
    use tower_throttle::rate_limit::{Cost, WeightedRateLimitLayer};
    let layer = WeightedRateLimitLayer::new(Quota::per_second(10).unwrap().with_burst(10).unwrap());
    let bucket = layer.bucket().clone();
    let start = Instant::now();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_req: http::Request<()>| async {
                Ok::<_, Infallible>(())
            }));
    let weighted = |n: u32| {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Cost(n));
        req
    };
    svc.clone().oneshot(weighted(10)).await.unwrap();
    // Ten more units: a second away at 10/s.
    let waiting = tokio::spawn(svc.clone().oneshot(weighted(10)));
    tokio::task::yield_now().await;
    bucket.set_rate(100.0).unwrap();
    waiting.await.unwrap().unwrap();
    // A full burst went at 0, so the next ten need the burst's length at the new rate.
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// 3. A keyed limiter could not be held: a hold of one destination must pause that
/// destination's callers, including those already waiting, and leave the others flowing.
#[tokio::test(start_paused = true)]
async fn a_keyed_limiter_can_be_held_per_destination() {
    let start = Instant::now();
    let bucket = KeyedBucket::new(Quota::per_second(10).unwrap());
    let arrivals: Arc<Mutex<Vec<(u8, Duration)>>> = Arc::default();
    let svc = ServiceBuilder::new()
        .layer(KeyedRateLimitLayer::with_bucket(
            bucket.clone(),
            |k: &u8| *k,
        ))
        .service(service_fn({
            let arrivals = arrivals.clone();
            move |k: u8| {
                arrivals.lock().unwrap().push((k, start.elapsed()));
                async { Ok::<_, Infallible>(()) }
            }
        }));
    let tasks: Vec<_> = (0..10)
        .flat_map(|_| [0u8, 1])
        .map(|k| tokio::spawn(svc.clone().oneshot(k)))
        .collect();
    tokio::task::yield_now().await;
    // Destination 0 answered 429 Retry-After: 5 right after its first call.
    bucket.hold_until(&0, start + Duration::from_secs(5));
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    let of = |k: u8| arrivals.iter().filter(move |a| a.0 == k).map(|a| a.1);
    // Key 0: its first call, then nothing until the hold ends, then paced.
    let held: Vec<Duration> = of(0).collect();
    assert_eq!(held[0], Duration::ZERO);
    assert!(
        held[1..].iter().all(|t| *t >= Duration::from_secs(5)),
        "{held:?}"
    );
    assert_eq!(*held.last().unwrap(), Duration::from_millis(5_800));
    // Key 1 never noticed.
    assert_eq!(of(1).next_back().unwrap(), Duration::from_millis(900));
}

/// 4. `RateLimitLayer::with_bucket` dropped the concurrency cap of the limits its bucket was
/// built from (`Limits::unlimited().with_concurrency(1)` reached 2 in flight); the keyed layer
/// ignored it too.
#[tokio::test(start_paused = true)]
async fn with_bucket_keeps_the_concurrency_cap_of_the_limits() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        service_fn(move |_: u8| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        })
    };
    let limits = Limits::unlimited().with_concurrency(1).unwrap();
    let bucket = LocalBucket::new(limits.clone());
    // Two layers on one bucket share the one cap.
    let a = ServiceBuilder::new()
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(slow.clone());
    let b = ServiceBuilder::new()
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(slow.clone());
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    a.oneshot(0).await.unwrap()
                } else {
                    b.oneshot(0).await.unwrap()
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);

    // Keyed: the cap applies per key.
    peak.store(0, Ordering::SeqCst);
    let keyed = ServiceBuilder::new()
        .layer(KeyedRateLimitLayer::new(
            Limits::new(Quota::per_second(1_000).unwrap())
                .with_concurrency(1)
                .unwrap(),
            |k: &u8| *k,
        ))
        .service(slow);
    let start = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(keyed.clone().oneshot(i % 2)))
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Two keys, one in flight each: 3 rounds of 100 ms.
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

/// 5. The `Limits` doc example paced at the daily rate: 100 per 10 s and 40,000 per day
/// admitted 5 per 10 s. The documented shape (`Quota::daily`) admits the short window's 100.
#[tokio::test(start_paused = true)]
async fn the_limits_doc_example_runs_at_the_short_windows_rate() {
    let limits = Limits::new(Quota::new(100, Duration::from_secs(10)).unwrap())
        .and(Quota::daily(40_000).unwrap());
    let bucket = LocalBucket::new(limits);
    let now = Instant::now();
    let in_ten_seconds = (0..200)
        .map(|_| bucket.try_reserve(now, None).unwrap().at())
        .filter(|at| *at < now + Duration::from_secs(10))
        .count();
    assert_eq!(in_ten_seconds, 100);
    // And the allowance really caps the day: never more than 40,000 in any 24 hours.
    let day = Quota::daily(40_000).unwrap();
    assert!(u64::from(day.burst()) - 1 + u64::from(day.count()) <= 40_000);
}

/// 7. Keyed eviction did not free memory: a million idle keys stayed (and their memory with
/// them) while traffic ran on a few hot keys, because only shards with traffic were swept
/// and tables never shrank.
#[tokio::test(start_paused = true)]
async fn keyed_eviction_reaches_idle_shards_and_frees_their_memory() {
    let bucket = KeyedBucket::new(Quota::per_second(1_000).unwrap());
    let start = Instant::now();
    for k in 0..200_000u32 {
        bucket.reserve(&k, start, None).unwrap();
    }
    let full = bucket.capacity();
    assert!(full >= 200_000);
    // Everyone has refilled; traffic continues on ten hot keys only.
    let later = start + Duration::from_secs(1);
    for i in 0..600_000u32 {
        let now = later + Duration::from_micros(u64::from(i));
        let _ = bucket.reserve(&(1_000_000 + i % 10), now, None);
    }
    assert!(bucket.len() < 1_000, "{} keys left", bucket.len());
    assert!(
        bucket.capacity() < full / 20,
        "capacity {} of {full}",
        bucket.capacity()
    );
}

/// 3b. A keyed hold is a floor for that key and spends none of its windows; both a paced and
/// a bursty key resume one interval apart, not as a burst into the server that refused them.
#[tokio::test(start_paused = true)]
async fn a_keyed_hold_is_a_floor_that_resumes_paced() {
    let paced = KeyedBucket::new(Quota::per_second(10).unwrap());
    let bursty = KeyedBucket::new(Quota::per_second(10).unwrap().with_burst(5).unwrap());
    let now = Instant::now();
    let until = now + Duration::from_secs(2);
    paced.hold_until(&"a", until);
    bursty.hold_until(&"a", until);
    let slots = |b: &KeyedBucket<&str>| -> Vec<Duration> {
        (0..6)
            .map(|_| b.reserve(&"a", now, None).unwrap().at() - now)
            .collect()
    };
    let ms = |v: [u64; 6]| v.map(Duration::from_millis).to_vec();
    assert_eq!(
        slots(&paced),
        ms([2_000, 2_100, 2_200, 2_300, 2_400, 2_500])
    );
    assert_eq!(
        slots(&bursty),
        ms([2_000, 2_100, 2_200, 2_300, 2_400, 2_500])
    );
    // The bursty key's burst is still there once the pace has stopped binding.
    let later = now + Duration::from_secs(10);
    let burst = (0..5)
        .filter(|_| bursty.reserve(&"a", later, None).unwrap().at() == later)
        .count();
    assert_eq!(burst, 5);
}

/// 1b. A single daily window (the Salesforce preset) keeps its allowance through a hold: it
/// went from 50,000 available to 1 after a 1 s hold.
#[tokio::test(start_paused = true)]
async fn a_hold_keeps_a_single_daily_windows_allowance() {
    let bucket = LocalBucket::new(presets::salesforce(100_000).unwrap());
    let now = Instant::now();
    bucket.hold_until(now + Duration::from_secs(1));
    assert_eq!(
        bucket.snapshot(now).available,
        0,
        "nothing goes during the hold"
    );
    let after = now + Duration::from_secs(1);
    assert_eq!(bucket.snapshot(after).available, 50_000);
}

/// Weighted admission: a cost takes that many units of every window at once, and one above a
/// window's burst is refused with a typed error rather than waiting forever.
#[tokio::test(start_paused = true)]
async fn a_weighted_request_takes_its_cost_of_every_window() {
    let limits = Limits::new(Quota::per_second(100).unwrap().with_burst(100).unwrap())
        .and(Quota::per_minute(1_000).unwrap().with_burst(500).unwrap());
    let bucket = LocalBucket::new(limits);
    let now = Instant::now();
    assert_eq!(
        bucket.try_reserve_weighted(now, 100, None).unwrap().at(),
        now
    );
    let next = bucket.try_reserve_weighted(now, 100, None).unwrap();
    assert_eq!(next.at() - now, Duration::from_secs(1));
    assert_eq!(next.cost(), 100);
    let err = bucket.try_reserve_weighted(now, 101, None).unwrap_err();
    assert_eq!(
        err,
        tower_throttle::ThrottleError::CostTooHigh {
            cost: 101,
            burst: 100
        }
    );
    // Handed back at once, the latest weighted slot is as if never taken.
    let again = bucket.try_reserve_weighted(now, 50, None).unwrap();
    let at = again.at();
    bucket.cancel(again, now);
    assert_eq!(bucket.try_reserve_weighted(now, 50, None).unwrap().at(), at);
}

#[tokio::test(start_paused = true)]
async fn the_service_still_works_when_ready_is_polled_by_hand() {
    // Guard for the gate's re-slot path: a handle woken after a cut re-reserves and then
    // completes normally.
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap());
    let bucket = layer.bucket().clone();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|x: u32| async move { Ok::<_, Infallible>(x) }));
    svc.ready().await.unwrap();
    assert_eq!(svc.call(1).await.unwrap(), 1);
    let start = Instant::now();
    let mut fut = tokio_test::task::spawn(svc.ready());
    tokio_test::assert_pending!(fut.poll());
    bucket.set_rate(1.0).unwrap();
    drop(fut);
    svc.ready().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(svc.call(2).await.unwrap(), 2);
}

/// Weighted admission through the gate: each request at its cost, atomically across windows,
/// refused at once when it could never fit, and re-slotted behind a hold that came while it
/// waited.
#[tokio::test(start_paused = true)]
async fn the_weighted_gate_admits_each_request_at_its_cost() {
    use tower_throttle::rate_limit::{Cost, WeightedRateLimitLayer};
    let limits = Limits::new(Quota::per_second(100).unwrap().with_burst(100).unwrap())
        .and(Quota::per_minute(600).unwrap().with_burst(300).unwrap());
    let layer = WeightedRateLimitLayer::new(limits);
    let bucket = layer.bucket().clone();
    let start = Instant::now();
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let svc = ServiceBuilder::new().layer(layer).service(service_fn({
        let arrivals = arrivals.clone();
        move |_req: http::Request<()>| {
            arrivals.lock().unwrap().push(start.elapsed());
            async { Ok::<_, Infallible>(()) }
        }
    }));
    let weighted = |n: u32| {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Cost(n));
        req
    };
    // 100 at once, then the next 100 one second later.
    svc.clone().oneshot(weighted(100)).await.unwrap();
    svc.clone().oneshot(weighted(100)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // Above the shortest window's burst: refused with a typed error, nothing spent.
    let err = svc.clone().oneshot(weighted(101)).await.unwrap_err();
    assert!(matches!(
        tower_throttle::ThrottleError::from_box(&err),
        Some(tower_throttle::ThrottleError::CostTooHigh {
            cost: 101,
            burst: 100
        })
    ));
    // A third batch waits for its slot; a hold arrives meanwhile and pushes it past the hold.
    let waiting = tokio::spawn(svc.clone().oneshot(weighted(100)));
    tokio::task::yield_now().await;
    bucket.hold_until(Instant::now() + Duration::from_secs(5));
    waiting.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    assert_eq!(arrivals.lock().unwrap().len(), 3);
}
