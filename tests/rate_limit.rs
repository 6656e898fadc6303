//! Paced admission through `RateLimitLayer`, checked slot by slot in paused tokio time.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_throttle::{
    bucket::Bucket, rate_limit::RateLimit, Limits, Quota, RateLimitLayer, ThrottleError,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Answers every request with the request itself, at once.
#[derive(Debug, Clone, Copy)]
struct Echo<T = u32>(std::marker::PhantomData<fn(T)>);

impl<T> Service<T> for Echo<T> {
    type Response = T;
    type Error = Infallible;
    type Future = std::future::Ready<Result<T, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: T) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

fn echo() -> Echo {
    Echo(std::marker::PhantomData)
}

/// Offsets from `start` at which each of `n` sequential calls went through.
async fn sequential_offsets<S>(svc: &mut S, n: u32, start: Instant) -> Vec<Duration>
where
    S: Service<u32, Error = tower::BoxError>,
{
    let mut out = Vec::new();
    for i in 0..n {
        svc.ready().await.unwrap();
        out.push(start.elapsed());
        let _ = svc.call(i).await;
    }
    out
}

#[tokio::test(start_paused = true)]
async fn burst_of_five_then_one_every_100ms() {
    let quota = Quota::per_second(10).unwrap().with_burst(5).unwrap();
    let mut svc = RateLimit::new(echo(), quota);
    let start = Instant::now();
    let got = sequential_offsets(&mut svc, 9, start).await;
    let want: Vec<Duration> = [0, 0, 0, 0, 0, 100, 200, 300, 400].map(ms).to_vec();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_bucket() {
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap());
    let mut a = ServiceBuilder::new().layer(layer.clone()).service(echo());
    let mut b = a.clone();
    let mut c = layer.layer_into(echo());
    let start = Instant::now();
    let mut got = Vec::new();
    for _ in 0..2 {
        for svc in [&mut a, &mut b, &mut c] {
            svc.ready().await.unwrap();
            got.push(start.elapsed());
            svc.call(0).await.unwrap();
        }
    }
    assert_eq!(got, [0, 100, 200, 300, 400, 500].map(ms).to_vec());
}

trait LayerInto {
    fn layer_into<S>(&self, s: S) -> RateLimit<S>;
}
impl LayerInto for RateLimitLayer {
    fn layer_into<S>(&self, s: S) -> RateLimit<S> {
        tower::Layer::layer(self, s)
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_released_one_interval_apart_in_fifo_order() {
    // Regression for tower#454 (only the last waiter woken) and for herds (all at once).
    let svc = RateLimit::new(echo(), Quota::per_second(20).unwrap());
    let start = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..8u32 {
        let mut svc = svc.clone();
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            svc.ready().await.unwrap();
            log.lock().unwrap().push((i, start.elapsed()));
            svc.call(i).await.unwrap();
        }));
        // Let task i reserve before task i+1 exists, so FIFO order is well defined.
        tokio::task::yield_now().await;
    }
    for h in handles {
        h.await.unwrap();
    }
    let got = log.lock().unwrap().clone();
    let want: Vec<(u32, Duration)> = (0..8u32).map(|i| (i, ms(50 * u64::from(i)))).collect();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn two_windows_at_once() {
    // 10/s with burst 10, and 20 per minute with burst 20: twenty go in the first second,
    // then the minute window paces one every 3 s.
    let limits = Limits::new(Quota::per_second(10).unwrap().with_burst(10).unwrap())
        .and(Quota::per_minute(20).unwrap().with_burst(20).unwrap());
    let mut svc = RateLimit::new(echo(), limits);
    let start = Instant::now();
    let got = sequential_offsets(&mut svc, 23, start).await;
    let mut want = vec![ms(0); 10];
    want.extend((1..=10).map(|i| ms(100 * i)));
    want.extend([ms(3_000), ms(6_000), ms(9_000)]);
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn a_refused_caller_consumes_no_slot_of_any_window() {
    let limits = Limits::new(Quota::per_second(10).unwrap())
        .and(Quota::per_minute(2).unwrap().with_burst(2).unwrap());
    let layer = RateLimitLayer::new(limits).with_max_wait(ms(500));
    let mut svc = tower::Layer::layer(&layer, echo());
    let start = Instant::now();
    svc.ready().await.unwrap();
    svc.call(0).await.unwrap();
    svc.ready().await.unwrap();
    svc.call(1).await.unwrap();
    assert_eq!(start.elapsed(), ms(100));
    // The minute window (rate 1 per 30 s, burst 2) is spent: its next slot is at 30 s.
    let err = svc.ready().await.map(|_| ()).unwrap_err();
    let err = ThrottleError::from_box(&err).expect("typed error");
    assert_eq!(
        err,
        &ThrottleError::WaitTooLong {
            wait: Duration::from_secs(30) - ms(100),
            max_wait: ms(500),
        }
    );
    // Nothing was reserved: the per-second window still admits at its own pace.
    let snap = layer.bucket().snapshot(Instant::now());
    assert_eq!(snap.next_free - start, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn hold_until_pauses_waiters_already_scheduled_then_releases_paced() {
    let svc = RateLimit::new(
        echo(),
        Quota::per_second(10).unwrap().with_burst(3).unwrap(),
    );
    let bucket = svc.bucket().clone();
    let start = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..6u32 {
        let mut svc = svc.clone();
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            svc.ready().await.unwrap();
            log.lock().unwrap().push(start.elapsed());
            svc.call(i).await.unwrap();
        }));
        tokio::task::yield_now().await;
    }
    // Three went at once (the burst); three wait for 100, 200, 300 ms. A 429 arrives at 50 ms
    // saying "come back in 2 s".
    tokio::time::sleep(ms(50)).await;
    bucket.hold_until(start + Duration::from_secs(2));
    for h in handles {
        h.await.unwrap();
    }
    let got = log.lock().unwrap().clone();
    assert_eq!(got, [0, 0, 0, 2_000, 2_100, 2_200].map(ms).to_vec());
    assert_eq!(bucket.held_until(Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn a_ready_handle_dropped_without_call_returns_its_slot() {
    let svc = RateLimit::new(echo(), Quota::per_second(1).unwrap());
    let start = Instant::now();
    let mut first = svc.clone();
    first.ready().await.unwrap();
    drop(first);
    let mut second = svc.clone();
    second.ready().await.unwrap();
    assert_eq!(start.elapsed(), ms(0), "the dropped slot was handed back");
    second.call(1).await.unwrap();
    // And it was not handed out twice: the next caller waits a full interval.
    let mut third = svc.clone();
    third.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_handle_dropped_returns_its_future_slot() {
    let svc = RateLimit::new(echo(), Quota::per_second(1).unwrap());
    let start = Instant::now();
    let mut a = svc.clone();
    a.ready().await.unwrap();
    a.call(0).await.unwrap();
    let mut waiting = task::spawn(svc.clone().ready_oneshot());
    assert_pending!(waiting.poll());
    drop(waiting);
    let mut b = svc.clone();
    b.ready().await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "b got the slot at 1 s, not 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_slot_is_not_returned_over_later_reservations() {
    let svc = RateLimit::new(echo(), Quota::per_second(1).unwrap());
    let start = Instant::now();
    let mut a = svc.clone();
    a.ready().await.unwrap();
    a.call(0).await.unwrap();
    let mut w1 = task::spawn(svc.clone().ready_oneshot()); // slot 1 s
    assert_pending!(w1.poll());
    let mut w2 = task::spawn(svc.clone().ready_oneshot()); // slot 2 s
    assert_pending!(w2.poll());
    drop(w1);
    // w2 keeps 2 s; the slot at 1 s is forgotten rather than reissued at 2 s to someone else.
    let mut c = svc.clone();
    c.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_ready_ok!(w2.poll());
}

#[tokio::test(start_paused = true)]
async fn max_wait_sheds_instead_of_queueing() {
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap()).with_max_wait(ms(250));
    let svc = tower::Layer::layer(&layer, echo());
    // Three handles take the slots at 0, 100 and 200 ms, all within max_wait, and keep them.
    let mut handles: Vec<_> = (0..3).map(|_| svc.clone()).collect();
    let mut polls: Vec<_> = handles.iter_mut().map(|s| task::spawn(s.ready())).collect();
    for p in &mut polls {
        let _ = p.poll();
    }
    let mut s = svc.clone();
    let err = s.ready().await.map(|_| ()).unwrap_err();
    assert_eq!(
        ThrottleError::from_box(&err),
        Some(&ThrottleError::WaitTooLong {
            wait: ms(300),
            max_wait: ms(250)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_cap_holds_callers_until_a_response_completes() {
    let limits = Limits::unlimited().with_concurrency(2).unwrap();
    let (inner, mut handle) = tower_test::mock::pair::<u32, u32>();
    let svc = RateLimit::new(inner, limits);
    handle.allow(10);
    let mut c1 = svc.clone();
    let mut c2 = svc.clone();
    let mut c3 = svc.clone();
    c1.ready().await.unwrap();
    let f1 = c1.call(1);
    c2.ready().await.unwrap();
    let _f2 = c2.call(2);
    let mut r3 = task::spawn(c3.ready());
    assert_pending!(r3.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    send.send_response(10);
    assert_eq!(f1.await.unwrap(), 10);
    assert!(r3.is_woken());
    assert_ready_ok!(r3.poll());
}

#[tokio::test(start_paused = true)]
async fn rate_can_change_at_run_time() {
    let mut svc = RateLimit::new(echo(), Quota::per_second(10).unwrap());
    let start = Instant::now();
    let first = sequential_offsets(&mut svc, 2, start).await;
    assert_eq!(first, vec![ms(0), ms(100)]);
    svc.bucket().set_rate(2.0).unwrap();
    let rest = sequential_offsets(&mut svc, 2, start).await;
    // The cut applies from the last call on: one new interval (500 ms) after it, not the
    // slot the old rate had promised at 200 ms.
    assert_eq!(rest, vec![ms(600), ms(1_100)]);
    assert!(svc.bucket().set_rate(f64::NAN).is_err());
    assert!(svc.bucket().set_rate(0.0).is_err());
    assert!(svc.bucket().set_rate(-1.0).is_err());
    assert_eq!(svc.bucket().rate(), 2.0);
}

#[tokio::test(start_paused = true)]
async fn snapshot_reports_tokens_and_next_slot() {
    let layer = RateLimitLayer::new(Quota::per_second(10).unwrap().with_burst(3).unwrap());
    let mut svc = tower::Layer::layer(&layer, echo());
    let now = Instant::now();
    assert_eq!(layer.bucket().snapshot(now).available, 3);
    svc.ready().await.unwrap();
    svc.call(0).await.unwrap();
    let snap = layer.bucket().snapshot(now);
    assert_eq!(snap.available, 2);
    assert_eq!(snap.next_free, now);
    assert_eq!(snap.rate_per_second, 10.0);
    assert_eq!(snap.held_until, None);
}

mod keyed {
    use super::*;
    use tower_throttle::rate_limit::KeyedRateLimitLayer;

    fn req(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).unwrap()
    }

    fn http_echo() -> Echo<http::Request<()>> {
        Echo(std::marker::PhantomData)
    }

    #[tokio::test(start_paused = true)]
    async fn each_authority_has_its_own_limit_and_waits_in_the_future() {
        let layer = KeyedRateLimitLayer::per_authority(Quota::per_second(2).unwrap());
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service(http_echo());
        let start = Instant::now();
        let a1 = svc.clone().oneshot(req("http://a.example/1"));
        let a2 = svc.clone().oneshot(req("http://a.example/2"));
        let b1 = svc.clone().oneshot(req("http://b.example/1"));
        let timed = |f| async move {
            let r: Result<http::Request<()>, tower::BoxError> = f.await;
            (r.unwrap(), start.elapsed())
        };
        let (a1, a2, b1) = tokio::join!(timed(a1), timed(a2), timed(b1));
        assert_eq!(a1.1, ms(0));
        assert_eq!(a2.1, ms(500));
        assert_eq!(b1.1, ms(0));
        assert_eq!(layer.bucket().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_future_returns_the_keys_slot() {
        let layer = KeyedRateLimitLayer::per_authority(Quota::per_second(1).unwrap());
        let svc = ServiceBuilder::new().layer(layer).service(http_echo());
        let start = Instant::now();
        svc.clone().oneshot(req("http://a.example/")).await.unwrap();
        let mut waiting = task::spawn(svc.clone().oneshot(req("http://a.example/")));
        assert_pending!(waiting.poll());
        drop(waiting);
        svc.clone().oneshot(req("http://a.example/")).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_refusal_comes_back_from_the_future() {
        let layer = KeyedRateLimitLayer::new(Quota::per_second(1).unwrap(), |r: &u32| *r % 2)
            .with_max_wait(ms(10));
        let svc = ServiceBuilder::new().layer(layer).service(echo());
        svc.clone().oneshot(2).await.unwrap();
        let err = svc.clone().oneshot(4).await.unwrap_err();
        assert!(matches!(
            ThrottleError::from_box(&err),
            Some(ThrottleError::WaitTooLong { .. })
        ));
        // Another key is unaffected.
        assert_eq!(svc.clone().oneshot(3).await.unwrap(), 3);
    }

    /// Real time (the fast clock does not follow a paused tokio), but counts only: the next
    /// slot of a key is a whole second away, far beyond the 10 ms ceiling.
    #[cfg(feature = "fast-clock")]
    #[tokio::test]
    async fn a_fast_clock_keyed_bucket_drives_the_layer() {
        let bucket = tower_throttle::bucket::KeyedBucket::with_clock(
            Quota::per_second(1).unwrap(),
            tower_throttle::bucket::Clock::Fast,
        );
        let layer = KeyedRateLimitLayer::with_bucket(bucket.clone(), |r: &u32| *r % 2)
            .with_max_wait(ms(10));
        let svc = ServiceBuilder::new().layer(layer.clone()).service(echo());
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
        let err = svc.clone().oneshot(4).await.unwrap_err();
        assert!(matches!(
            ThrottleError::from_box(&err),
            Some(ThrottleError::WaitTooLong { wait, .. }) if *wait > ms(900)
        ));
        assert_eq!(svc.clone().oneshot(3).await.unwrap(), 3);
        // The layer decided on the very bucket it was given.
        assert_eq!(bucket.clock(), tower_throttle::bucket::Clock::Fast);
        assert_eq!(bucket.len(), 2);
        assert_eq!(layer.bucket().len(), 2);
    }
}
