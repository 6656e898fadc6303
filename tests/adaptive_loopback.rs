//! One confirmation over real loopback sockets against the mock server (a few seconds of real
//! time). Assertions are on counts and ratios, never on timings.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, RateHeaders, ServerLimit};
use tower_throttle::retry::InspectBody;
use tower_throttle::timeout::BodyTimeout;
use tower_throttle::{
    bucket::Bucket, AdaptiveLayer, LocalBucket, Probe, Quota, RateLimitLayer, Throttle,
};

mod common;

use common::hubspot::{self, DAILY, SECONDLY, TO_RESET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_driven_finds_the_mock_servers_limit_over_loopback() {
    let limit = 20;
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(limit, Duration::from_secs(1)).unwrap())
        .rate_headers(RateHeaders::Ietf)
        .start()
        .await
        .unwrap();
    // No published limit: the bucket's quota is far above the load, so only the controller's
    // bounds apply (the quota is adaptive control's ceiling).
    let bucket = LocalBucket::new(Quota::per_second(1000).unwrap());
    let adaptive = AdaptiveLayer::header_driven(bucket.clone(), 5.0, 0.5, 1000.0).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(adaptive.clone())
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(client);

    let run_for = Duration::from_secs(3);
    let end = Instant::now() + run_for;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut svc = svc.clone();
        let uri = server.uri("/v1/track");
        tasks.spawn(async move {
            loop {
                let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                    .await
                    .unwrap();
                if Instant::now() >= end {
                    break;
                }
                let req = Request::post(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                ready.call(req).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    let stats = server.stats();
    // The first response's headers set the rate: no request was ever refused and the server
    // never saw more than its limit in any second. The slots the other workers reserved at the
    // starting rate (5/s, up to 0.6 s ahead) are the only loss, hence 75% over a 3 s run.
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!(server.max_accepted_in_any_window(Duration::from_secs(1)) <= limit as usize);
    let expected = f64::from(limit) * run_for.as_secs_f64();
    assert!(
        stats.accepted as f64 >= 0.75 * expected,
        "{stats:?}, expected about {expected}"
    );
    assert!((adaptive.rate() - 0.98 * f64::from(limit)).abs() < 1e-9);
    // The bucket stores a whole-nanosecond interval, rounded so the rate is never exceeded.
    assert!(bucket.rate() <= adaptive.rate() && bucket.rate() > 0.999 * adaptive.rate());
    server.shutdown().await;
}

/// Sends `n` requests one after another through `client`; the shared bucket's rate after
/// the `n - 1`th and after the last.
async fn rate_before_and_after_the_last<T, RB>(
    bucket: LocalBucket,
    client: T,
    server: &MockServer,
    n: usize,
) -> (f64, f64)
where
    T: tower::Service<Request<Full<Bytes>>, Response = http::Response<RB>> + Clone,
    T::Error: std::fmt::Debug,
{
    let mut before = bucket.rate();
    for i in 0..n {
        if i + 1 == n {
            before = bucket.rate();
        }
        let req = Request::post(server.uri("/crm/v3/objects/contacts"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    (before, bucket.rate())
}

fn hubspot_client() -> Throttle<BodyTimeout<Client<HttpConnector, Full<Bytes>>>> {
    Throttle::builder()
        .limits(Quota::per_second(20).unwrap())
        .timeout(Duration::from_secs(10))
        .adaptive(Probe::new(10.0, 1.0, 20.0).unwrap())
        .build(Client::builder(TokioExecutor::new()).build_http())
        .unwrap()
}

/// The same stack streaming its bodies, a refusal's body read by the inspect layer.
fn streaming_hubspot_client() -> Throttle<InspectBody<Client<HttpConnector, Full<Bytes>>>> {
    Throttle::builder()
        .limits(Quota::per_second(20).unwrap())
        .head_timeout(Duration::from_secs(10))
        .inspect_bodies(Duration::from_secs(2))
        .adaptive(Probe::new(10.0, 1.0, 20.0).unwrap())
        .build(Client::builder(TokioExecutor::new()).build_http())
        .unwrap()
}

/// Before: the adaptive layer read HubSpot's daily 429 as an ordinary one and cut the rate
/// (to 0.7x in slow start), although a spent daily allowance says nothing about the
/// short-window rate and the retry policy already holds the bucket until the reset.
#[tokio::test(start_paused = true)]
async fn a_daily_quota_429_is_not_a_rate_cut() {
    let client = hubspot_client();
    daily_429_is_no_cut(client.bucket().unwrap().clone(), client).await;
}

/// Five requests, then a sixth the portal refuses with the daily body: it is held until the
/// reset and then accepted, and the controller's rate is not cut.
async fn daily_429_is_no_cut<T, RB>(bucket: LocalBucket, client: T)
where
    T: tower::Service<Request<Full<Bytes>>, Response = http::Response<RB>> + Clone,
    T::Error: std::fmt::Debug,
{
    let server = hubspot::portal(5, TO_RESET, DAILY, http::HeaderMap::new()).await;
    let start = Instant::now();
    let (before, after) = rate_before_and_after_the_last(bucket, client, &server, 6).await;
    assert_eq!(server.stats().rate_limited, 1);
    assert!(start.elapsed() >= TO_RESET - Duration::from_secs(1));
    assert!(after >= before - 1e-9, "cut from {before} to {after}");
    server.shutdown().await;
}

/// As above on a streaming stack: the controller reads the body the inspect layer read for
/// the retry policy, so a daily 429 is no cut there either.
#[tokio::test(start_paused = true)]
async fn a_daily_quota_429_on_a_streaming_stack_is_not_a_rate_cut() {
    let client = streaming_hubspot_client();
    daily_429_is_no_cut(client.bucket().unwrap().clone(), client).await;
}

/// The same stack still cuts for a short-window 429: the test above could fail.
#[tokio::test(start_paused = true)]
async fn a_secondly_429_through_the_same_stack_is_a_rate_cut() {
    let server = hubspot::portal(5, Duration::from_secs(2), SECONDLY, http::HeaderMap::new()).await;
    let client = hubspot_client();
    let bucket = client.bucket().unwrap().clone();
    let (before, after) = rate_before_and_after_the_last(bucket, client, &server, 6).await;
    assert!(server.stats().rate_limited >= 1);
    assert!(after < 0.8 * before, "no cut: {before} to {after}");
    server.shutdown().await;
}
