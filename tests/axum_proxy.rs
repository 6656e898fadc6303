//! The axum example under test: many concurrent inbound requests share one outbound limit.
#![cfg(feature = "mock")]

#[allow(dead_code)]
#[path = "../examples/axum_proxy.rs"]
mod axum_proxy;

use std::time::Duration;

use axum::http::StatusCode;
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{Limits, Quota};

use axum_proxy::{app, hit, serve, upstream, AppState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_concurrent_inbound_requests_share_the_outbound_limit() {
    let api = MockServer::builder()
        .limit(ServerLimit::sliding_window(10, Duration::from_secs(1)).unwrap())
        .latency(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let limits = Limits::new(Quota::per_second(8).unwrap())
        .with_concurrency(3)
        .unwrap();
    let state = AppState {
        client: upstream(limits, Duration::from_secs(30)).unwrap(),
        api: api.url(""),
    };
    let (addr, server) = serve(app(state)).await.unwrap();

    let statuses = hit(addr, 30).await;

    // Every inbound request got an answer, and it was the API's 200.
    assert_eq!(statuses.len(), 30);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let stats = api.stats();
    assert_eq!((stats.distinct_ids, stats.duplicate_ids), (30, 0));
    // The API never saw more than the limit: no 429, at most 10 in any second, at most 3 at
    // once, although 30 inbound requests arrived together.
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!(api.max_accepted_in_any_window(Duration::from_secs(1)) <= 10);
    assert!(stats.max_in_flight <= 3, "{stats:?}");
    server.abort();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_requests_beyond_max_wait_are_shed_with_503() {
    let api = MockServer::builder().start().await.unwrap();
    let state = AppState {
        client: upstream(
            Limits::new(Quota::per_second(2).unwrap()),
            Duration::from_millis(600),
        )
        .unwrap(),
        api: api.url(""),
    };
    let (addr, server) = serve(app(state)).await.unwrap();
    let statuses = hit(addr, 6).await;
    // Slots at 0, 0.5 s (within max_wait); the rest would wait a second or more: shed.
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, shed), (2, 4), "{statuses:?}");
    assert_eq!(api.stats().received, 2);
    server.abort();
    api.shutdown().await;
}
