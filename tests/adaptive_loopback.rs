//! One confirmation over real loopback sockets against the mock server (a few seconds of real
//! time). Assertions are on counts and ratios, never on timings.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, RateHeaders, ServerLimit};
use tower_throttle::{bucket::Bucket, AdaptiveLayer, LocalBucket, Quota, RateLimitLayer};

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
