//! The retry policy in paused time against scripted servers: exact delays, what is and is not
//! retried, and the bounds (attempts, deadline, budget, replayability).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_throttle::{
    backoff::{Backoff, Jitter},
    bucket::Bucket,
    classify::{HttpClassifier, Outcome},
    LocalBucket, Quota, RateLimitLayer, ThrottleError,
};
use tower_throttle::{
    retry::{Attempts, ReplayBody},
    RetryLayer, RetryPolicy,
};

type Reply = Result<http::Response<()>, BoxError>;

/// A server that plays `script` in order (then answers 200) and records when each call came.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Reply>>>,
    calls: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

fn status(code: u16) -> Reply {
    Ok(http::Response::builder().status(code).body(()).unwrap())
}

fn with_retry_after(code: u16, value: &str) -> Reply {
    Ok(http::Response::builder()
        .status(code)
        .header("retry-after", value)
        .body(())
        .unwrap())
}

impl Scripted {
    fn new(script: Vec<Reply>) -> Self {
        Scripted {
            script: Arc::new(Mutex::new(script.into())),
            calls: Arc::default(),
            start: Instant::now(),
        }
    }

    fn service<B: Send + 'static>(
        &self,
    ) -> impl Service<
        http::Request<B>,
        Response = http::Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        let this = self.clone();
        service_fn(move |_req: http::Request<B>| {
            let this = this.clone();
            async move {
                this.calls.lock().unwrap().push(this.start.elapsed());
                let next = this.script.lock().unwrap().pop_front();
                next.unwrap_or_else(|| status(200))
            }
        })
    }

    fn calls(&self) -> Vec<Duration> {
        self.calls.lock().unwrap().clone()
    }
}

/// An event that is safe to send twice (its `Idempotency-Key`), so every failure here may be
/// retried; without the key a lost answer is final (`a_timed_out_post_without_a_key_is_not_resent`).
fn req() -> http::Request<Full<Bytes>> {
    http::Request::post("http://api.example/v1/track")
        .header("idempotency-key", "track-1")
        .body(Full::new(Bytes::from_static(b"{\"id\":1}")))
        .unwrap()
}

fn exact_backoff() -> Backoff {
    Backoff::builder().jitter(Jitter::None).build().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially() {
    let server = Scripted::new(vec![
        status(503),
        status(502),
        Err("connection reset".into()),
        status(200),
    ]);
    // A connection reset arrives as an io::Error in real clients; use one so it classifies.
    server.script.lock().unwrap()[2] = Err(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    let policy = RetryPolicy::default().with_backoff(exact_backoff());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(4)));
    assert_eq!(server.calls(), vec![secs(0), secs(1), secs(3), secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_are_within_the_proportional_band() {
    let server = Scripted::new(vec![status(503), status(503), status(503)]);
    let policy = RetryPolicy::default().with_seed(7);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    svc.oneshot(req()).await.unwrap();
    let calls = server.calls();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let nominal = secs(1 << i);
        assert!(
            *gap >= nominal && *gap <= nominal.mul_f64(1.25),
            "retry {i}: {gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_retry_after_and_holds_the_shared_bucket() {
    let server = Scripted::new(vec![with_retry_after(429, "5")]);
    let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
    let policy = RetryPolicy::default().with_bucket(bucket.clone());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(server.service());
    let start = Instant::now();
    let call = tokio::spawn(svc.clone().oneshot(req()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // While the refused request waits, the whole bucket is held: other callers wait too.
    assert_eq!(bucket.held_until(Instant::now()), Some(start + secs(5)));
    let other = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(other.status(), 200);
    assert!(
        start.elapsed() >= secs(5),
        "the second caller waited for the hold"
    );
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let calls = server.calls();
    assert_eq!(calls.len(), 3);
    // The retry came after Retry-After plus at most 10% jitter.
    assert!(calls
        .iter()
        .skip(1)
        .all(|t| *t >= secs(5) && *t <= Duration::from_millis(5_600)));
}

#[tokio::test(start_paused = true)]
async fn a_429_with_an_http_date_in_the_past_retries_promptly() {
    let server = Scripted::new(vec![with_retry_after(429, "Wed, 21 Oct 2015 07:28:00 GMT")]);
    let policy = RetryPolicy::default().with_backoff(exact_backoff());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    svc.oneshot(req()).await.unwrap();
    assert_eq!(server.calls(), vec![secs(0), secs(0)]);
}

#[tokio::test(start_paused = true)]
async fn hostile_retry_after_is_capped_at_max_delay() {
    let server = Scripted::new(vec![with_retry_after(429, "99999999999")]);
    let backoff = Backoff::builder()
        .jitter(Jitter::None)
        .max_delay(secs(30))
        .build()
        .unwrap();
    let policy = RetryPolicy::default().with_backoff(backoff);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    svc.oneshot(req()).await.unwrap();
    let calls = server.calls();
    assert!(calls[1] >= secs(30) && calls[1] <= secs(33), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_backs_off() {
    let server = Scripted::new(vec![status(429), status(429)]);
    let policy = RetryPolicy::default().with_backoff(exact_backoff());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    svc.oneshot(req()).await.unwrap();
    assert_eq!(server.calls(), vec![secs(0), secs(1), secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn other_4xx_are_returned_after_one_attempt() {
    for code in [400u16, 401, 403, 404, 409, 422] {
        let server = Scripted::new(vec![status(code)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryPolicy::default()))
            .service(server.service());
        let res = svc.oneshot(req()).await.unwrap();
        assert_eq!(res.status().as_u16(), code);
        assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
        assert_eq!(server.calls().len(), 1, "status {code} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_403_can_be_declared_a_rate_limit() {
    let server = Scripted::new(vec![with_retry_after(403, "2")]);
    let classifier = HttpClassifier::new().status(
        http::StatusCode::FORBIDDEN,
        Outcome::RateLimited { retry_after: None },
    );
    let policy = RetryPolicy::new(classifier).with_backoff(exact_backoff());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    let retry_at = server.calls()[1];
    assert!(
        retry_at >= secs(2) && retry_at <= Duration::from_millis(2_200),
        "{retry_at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_return_the_last_response() {
    let server = Scripted::new((0..10).map(|_| status(503)).collect());
    let policy = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .without_budget();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(5)));
    assert_eq!(
        server.calls(),
        vec![secs(0), secs(1), secs(3), secs(7), secs(15)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries_that_would_start_too_late() {
    let server = Scripted::new((0..10).map(|_| status(503)).collect());
    let policy = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .with_deadline(secs(5));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(server.calls(), vec![secs(0), secs(1), secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_returns_the_last_response() {
    let server = Scripted::new((0..10).map(|_| status(503)).collect());
    let policy = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .with_budget(secs(10), 0, 0.0)
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(server.calls().len(), 1);
    assert!(RetryPolicy::default().with_budget(secs(0), 1, 0.2).is_err());
    assert!(RetryPolicy::default()
        .with_budget(secs(10), 1, -1.0)
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_every_request() {
    // Two retries in reserve, none earned back: five requests fail at the same instant and
    // only two of them may retry; the other three return after one attempt.
    let server = Scripted::new((0..100).map(|_| status(503)).collect());
    let policy = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .with_budget(secs(1), 2, 0.0)
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    let futs: Vec<_> = (0..5).map(|_| svc.clone().oneshot(req())).collect();
    let mut single = 0;
    for res in futures_util::future::join_all(futs).await {
        let res = res.unwrap();
        assert_eq!(res.status(), 503);
        if res.extensions().get::<Attempts>() == Some(&Attempts(1)) {
            single += 1;
        }
    }
    assert_eq!(
        single, 3,
        "the budget let more than two requests retry at once"
    );
}

/// A body that can be read only once, like a stream.
#[derive(Default)]
struct OneShotBody;

impl ReplayBody for OneShotBody {
    fn to_bytes(&self) -> Option<Bytes> {
        None
    }

    fn from_bytes(_: Bytes) -> Self {
        OneShotBody
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_not_retried_and_says_why() {
    let server = Scripted::new(vec![status(503)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()))
        .service(server.service::<OneShotBody>());
    let err = svc
        .oneshot(
            http::Request::post("http://api.example/")
                .body(OneShotBody)
                .unwrap(),
        )
        .await
        .unwrap_err();
    match ThrottleError::from_box(&err) {
        Some(ThrottleError::NotReplayable { reason }) => {
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("expected NotReplayable, got {other:?} ({err})"),
    }
    assert_eq!(server.calls().len(), 1);

    // A success with such a body is simply returned.
    let server = Scripted::new(vec![]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()))
        .service(server.service::<OneShotBody>());
    let res = svc
        .oneshot(
            http::Request::post("http://api.example/")
                .body(OneShotBody)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried() {
    let server = Scripted::new(vec![Err(Box::new(tower::timeout::error::Elapsed::new()))]);
    let policy = RetryPolicy::default().with_backoff(exact_backoff());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 200);
    assert_eq!(server.calls(), vec![secs(0), secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_post_without_a_key_is_not_resent() {
    let server = Scripted::new(vec![Err(Box::new(tower::timeout::error::Elapsed::new()))]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_backoff(exact_backoff()),
        ))
        .service(server.service());
    let mut post = req();
    post.headers_mut().remove("idempotency-key");
    let err = svc.oneshot(post).await.unwrap_err();
    assert!(matches!(
        ThrottleError::from_box(&err),
        Some(ThrottleError::OutcomeUnknown { .. })
    ));
    assert_eq!(server.calls(), vec![secs(0)]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_whatever_the_method() {
    let server = Scripted::new(vec![Err(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )))]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_backoff(exact_backoff()),
        ))
        .service(server.service());
    let mut post = req();
    post.headers_mut().remove("idempotency-key");
    assert_eq!(svc.oneshot(post).await.unwrap().status(), 200);
    assert_eq!(server.calls(), vec![secs(0), secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn local_shedding_is_not_retried() {
    let server = Scripted::new(vec![]);
    let layer =
        RateLimitLayer::new(Quota::per_second(1).unwrap()).with_max_wait(Duration::from_millis(1));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(layer)
        .service(server.service());
    svc.clone().oneshot(req()).await.unwrap();
    let err = svc.clone().oneshot(req()).await.unwrap_err();
    assert!(matches!(
        ThrottleError::from_box(&err),
        Some(ThrottleError::WaitTooLong { .. })
    ));
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_go_back_through_the_gate() {
    // 1 per second, and the first two attempts fail with a 503 that asks for no wait:
    // retries still take their own slots.
    let server = Scripted::new(vec![status(503), status(503)]);
    let backoff = Backoff::builder()
        .base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_backoff(backoff),
        ))
        .layer(RateLimitLayer::new(Quota::per_second(1).unwrap()))
        .service(server.service());
    svc.oneshot(req()).await.unwrap();
    assert_eq!(server.calls(), vec![secs(0), secs(1), secs(2)]);
}

// ----- Regression tests: issue 14 (retry) and 13 (keyed holds). -----

#[tokio::test(start_paused = true)]
async fn deadline_counts_from_each_request_not_the_first() {
    // One long-lived layer: the first request at 0 s, the second two minutes later. With a
    // deadline on the long-lived policy, the second inherited the first's start and came back
    // as its 503, not retried.
    let server = Scripted::new(vec![status(200), status(503)]);
    let policy = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .with_deadline(secs(30));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.service());
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);
    tokio::time::sleep(secs(120)).await;
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(server.calls(), vec![secs(0), secs(120), secs(121)]);
}

#[tokio::test(start_paused = true)]
async fn deadline_is_checked_before_the_budget_and_the_hold() {
    // A budget with one retry in reserve, shared by two layers; the first layer's deadline
    // is too short for any retry. Its refusals must neither spend the budget nor hold the
    // bucket.
    let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
    let base = RetryPolicy::default()
        .with_backoff(exact_backoff())
        .with_budget(secs(1), 1, 0.0)
        .unwrap()
        .with_bucket(bucket.clone());
    let short = ServiceBuilder::new()
        .layer(RetryLayer::new(
            base.clone().with_deadline(Duration::from_millis(500)),
        ))
        .service(Scripted::new(vec![status(503), with_retry_after(429, "5")]).service());
    let res = short.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    let res = short.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(
        bucket.held_until(Instant::now()),
        None,
        "a 429 that will not be retried set the shared hold"
    );

    let server = Scripted::new(vec![status(503)]);
    let res = ServiceBuilder::new()
        .layer(RetryLayer::new(base))
        .service(server.service())
        .oneshot(req())
        .await
        .unwrap();
    assert_eq!(
        res.extensions().get::<Attempts>(),
        Some(&Attempts(2)),
        "the budget's one retry was spent by a request that did not retry"
    );
}

#[test]
fn budget_min_per_sec_u32_max_is_a_config_error() {
    // tower's TpsBudget asserts min_per_sec < i32::MAX; this used to panic inside it.
    for min in [u32::MAX, i32::MAX as u32] {
        match RetryPolicy::default().with_budget(secs(10), min, 0.2) {
            Err(tower_throttle::ConfigError::OutOfRange { name, .. }) => {
                assert_eq!(name, "min_per_sec")
            }
            other => panic!("{min}: {other:?}"),
        }
    }
    assert!(RetryPolicy::default()
        .with_budget(secs(10), i32::MAX as u32 - 1, 0.2)
        .is_ok());
    assert!(RetryPolicy::default()
        .with_budget(secs(10), 10, f32::NAN)
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_429_from_one_host_holds_that_host_only() {
    use tower_throttle::rate_limit::{ByAuthority, KeyedRateLimitLayer};

    let start = Instant::now();
    let calls: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let log = calls.clone();
    let api = service_fn(move |req: http::Request<Full<Bytes>>| {
        let host = req.uri().host().unwrap().to_owned();
        let mut log = log.lock().unwrap();
        let first_to_a = host == "a.example" && log.iter().all(|(h, _)| h != "a.example");
        log.push((host, start.elapsed()));
        async move {
            let res = if first_to_a {
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "5")
            } else {
                http::Response::builder().status(200)
            };
            Ok::<_, BoxError>(res.body(()).unwrap())
        }
    });
    let gate = KeyedRateLimitLayer::per_authority(Quota::per_second(10).unwrap());
    let policy = RetryPolicy::default().with_keyed_bucket(gate.bucket().clone(), ByAuthority);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(gate)
        .service(api);
    let to = |host: &str| {
        http::Request::post(format!("http://{host}/v1/track"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };

    let refused = tokio::spawn(svc.clone().oneshot(to("a.example")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Host B keeps flowing while A is held...
    for _ in 0..3 {
        svc.clone().oneshot(to("b.example")).await.unwrap();
    }
    assert!(
        start.elapsed() < secs(1),
        "B was held: {:?}",
        start.elapsed()
    );
    // ...and a new request to A waits for A's hold.
    let res = svc.clone().oneshot(to("a.example")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(start.elapsed() >= secs(5), "{:?}", start.elapsed());
    let res = refused.await.unwrap().unwrap();
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));

    let calls = calls.lock().unwrap().clone();
    let b: Vec<_> = calls.iter().filter(|(h, _)| h == "b.example").collect();
    assert!(b.iter().all(|(_, t)| *t < secs(1)), "{calls:?}");
    let a_after: Vec<_> = calls
        .iter()
        .filter(|(h, _)| h == "a.example")
        .skip(1)
        .collect();
    assert_eq!(a_after.len(), 2);
    assert!(a_after.iter().all(|(_, t)| *t >= secs(5)), "{calls:?}");
}
