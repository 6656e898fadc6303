//! The documented hyper stack against the mock server: retry above the shared gate, a
//! per-attempt timeout below it, `Full<Bytes>` bodies so every attempt can be replayed.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_throttle::mock::MockServer;
use tower_throttle::{
    backoff::{Backoff, Jitter},
    LocalBucket, Quota, RateLimitLayer, Throttle,
};
use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};

const TIMEOUT: Duration = Duration::from_millis(200);

fn backoff() -> Backoff {
    Backoff::builder()
        .base(Duration::from_millis(10))
        .max_retries(10)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// A server whose latency is uniform in 0..=300 ms, so about a third of the attempts outlive
/// the 200 ms timeout. The seed and one request at a time make the sequence reproducible.
async fn slow_server() -> MockServer {
    MockServer::builder()
        .latency_range(Duration::ZERO, Duration::from_millis(300))
        .seed(11)
        .start()
        .await
        .unwrap()
}

/// Sends `n` requests one after another; returns the attempts each took.
async fn send<S, R>(mut svc: S, server: &MockServer, n: usize) -> Vec<u32>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<R>>,
    S::Error: std::fmt::Debug,
{
    let mut attempts = Vec::new();
    for id in 0..n {
        // An Idempotency-Key makes a timed-out POST safe to resend (without one it would fail
        // as outcome unknown: `batch_truth::a_single_post_whose_answer_was_lost_is_not_resent`).
        let req = http::Request::post(server.uri("/v1/track"))
            .header("x-request-id", id.to_string())
            .header("idempotency-key", format!("track-{id}"))
            .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
        attempts.push(res.extensions().get::<Attempts>().unwrap().0);
    }
    attempts
}

fn check(server: &MockServer, attempts: &[u32]) {
    // Timeouts happened and were retried as transient failures, until every record arrived.
    assert!(attempts.iter().any(|&a| a > 1), "{attempts:?}");
    let stats = server.stats();
    assert_eq!(stats.distinct_ids, attempts.len() as u64);
    // The server decides before its latency, so a timed-out attempt was still received (and
    // accepted): an at-least-once delivery the request ids make visible.
    let total: u32 = attempts.iter().sum();
    assert_eq!(stats.received, u64::from(total));
    assert_eq!(
        stats.duplicate_ids,
        u64::from(total) - attempts.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_stack_retries_timeouts_layer_by_layer() {
    let server = slow_server().await;
    let bucket = LocalBucket::new(Quota::per_second(50).unwrap());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(backoff())
                .without_budget()
                .with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        // Below the gate: only the time on the wire counts, not the wait for a slot.
        .layer(TimeoutLayer::new(TIMEOUT))
        .service(client);
    let attempts = send(svc, &server, 12).await;
    check(&server, &attempts);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_stack_retries_timeouts_through_the_one_call_builder() {
    let server = slow_server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = Throttle::builder()
        .limits(Quota::per_second(50).unwrap())
        .retry(
            RetryPolicy::default()
                .with_backoff(backoff())
                .without_budget(),
        )
        .timeout(TIMEOUT)
        .build(client)
        .unwrap();
    let attempts = send(svc, &server, 12).await;
    check(&server, &attempts);
    server.shutdown().await;
}

/// Issue 13 item 3, over loopback: one client, two APIs, each limited to 10 per second. Keyed
/// per authority, each API gets its own bucket at its own limit: a server that limits harder
/// than we were told (5/s) answers 429s and its holds stay its own, while the other server
/// sees neither a 429 nor more than its limit, and every record reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_builder_per_authority_paces_two_servers_on_their_own_limits() {
    use tower_throttle::mock::ServerLimit;
    let strict = MockServer::builder()
        .limit(ServerLimit::sliding_window(5, Duration::from_secs(1)).unwrap())
        .start()
        .await
        .unwrap();
    // A little headroom over the client's pace: requests paced exactly at a sliding window's
    // limit arrive closer together than they were sent whenever the network delays one.
    let fair = MockServer::builder()
        .limit(ServerLimit::sliding_window(12, Duration::from_secs(1)).unwrap())
        .start()
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let throttle = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .retry(RetryPolicy::default().with_seed(5))
        .per_authority()
        .timeout(Duration::from_secs(5))
        .build(client)
        .unwrap();
    let mut calls = Vec::new();
    for id in 0..20 {
        for server in [&strict, &fair] {
            let req = http::Request::post(server.uri("/v1/track"))
                .header("x-request-id", id.to_string())
                .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
                .unwrap();
            calls.push(tokio::spawn(throttle.clone().oneshot(req)));
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    let (s, f) = (strict.stats(), fair.stats());
    assert_eq!((s.distinct_ids, f.distinct_ids), (20, 20));
    assert!(s.rate_limited > 0, "the strict server never refused: {s:?}");
    assert_eq!(f.rate_limited, 0, "{f:?}");
    assert!(fair.max_accepted_in_any_window(Duration::from_secs(1)) <= 11);
    assert_eq!(throttle.keyed_bucket().unwrap().len(), 2);
}
