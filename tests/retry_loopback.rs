//! The retry policy against the mock server over loopback: a 429 storm is waited out by the
//! whole fleet of tasks at once, injected 503s are all delivered, exhausted budgets return.
#![cfg(feature = "mock")]

use std::time::Duration;

mod common;

use common::{client, send_all};
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{
    backoff::{Backoff, Jitter},
    LocalBucket, Quota, RateLimitLayer,
};
use tower_throttle::{RetryLayer, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_waited_out_by_everyone_and_every_request_succeeds() {
    // The server: 40/s with a burst of 10. The client: paced at 40/s, but misconfigured with a
    // burst of 40, so it opens with a storm of 429s.
    let server = common::storm_server().await;
    let bucket = LocalBucket::new(Quota::per_second(40).unwrap().with_burst(40).unwrap());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(client());
    let results = send_all(svc, server.uri("/v1/track"), 120, 40).await;

    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let stats = server.stats();
    assert_eq!(stats.distinct_ids, 120);
    // The opening storm is refused once; after the hold everyone resumes paced, so the storm
    // does not repeat (a herd would earn a second round of 429s).
    assert!(stats.rate_limited > 0);
    assert!(stats.rate_limited <= 32, "429s after the hold: {stats:?}");
    assert!(
        results.iter().all(|(_, attempts)| *attempts <= 2),
        "{results:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_503s_are_all_delivered() {
    let server = MockServer::builder()
        .limit(ServerLimit::token_bucket(500.0, 50).unwrap())
        .fail_ratio(0.1)
        .seed(42)
        .start()
        .await
        .unwrap();
    let backoff = Backoff::builder()
        .base(Duration::from_millis(20))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_backoff(backoff),
        ))
        .layer(RateLimitLayer::new(Quota::per_second(400).unwrap()))
        .service(client());
    let results = send_all(svc, server.uri("/v1/track"), 400, 16).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let stats = server.stats();
    assert_eq!(stats.distinct_ids, 400);
    assert_eq!(stats.duplicate_ids, 0);
    assert!(stats.failed > 0);
    let attempts: u32 = results.iter().map(|(_, a)| a).sum();
    assert_eq!(u64::from(attempts), stats.received);
    assert!(
        f64::from(attempts) <= 400.0 * 1.15,
        "{attempts} attempts for 400 requests"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_returns_the_last_response() {
    let server = MockServer::builder().fail_ratio(1.0).start().await.unwrap();
    let backoff = Backoff::builder()
        .base(Duration::from_millis(5))
        .build()
        .unwrap();
    let policy = RetryPolicy::default()
        .with_backoff(backoff)
        .with_budget(Duration::from_secs(10), 1, 0.0)
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(client().map_err(tower::BoxError::from));
    let results = send_all(svc, server.uri("/v1/track"), 20, 1).await;
    assert!(results.iter().all(|(s, _)| *s == 503));
    // Ten retries in reserve (1/s x 10 s), none earned: 20 first attempts plus at most 10.
    let received = server.stats().received;
    assert!((20..=30).contains(&received), "{received}");
    server.shutdown().await;
}
