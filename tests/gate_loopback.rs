//! The gate against a real server over loopback: a hyper-util client through
//! `RateLimitLayer` at 80/s never trips a server that enforces 100/s; without the gate the
//! same load earns many 429s.
#![cfg(feature = "mock")]

use std::time::Duration;

mod common;

use common::{client, send_all};
use tower::ServiceBuilder;
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{Quota, RateLimitLayer};

const REQUESTS: usize = 240;
const WORKERS: usize = 24;

async fn server() -> MockServer {
    MockServer::builder()
        .limit(ServerLimit::sliding_window(100, Duration::from_secs(1)).unwrap())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_at_80_per_second_earns_no_429_from_a_100_per_second_server() {
    let server = server().await;
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(Quota::per_second(80).unwrap()))
        .service(client());
    let statuses = send_all(svc, server.uri("/v1/track"), REQUESTS, WORKERS).await;
    assert_eq!(statuses.len(), REQUESTS);
    let stats = server.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert_eq!(stats.accepted, REQUESTS as u64);
    // Paced at 80/s; loopback and scheduling jitter can bunch a few arrivals, never 20.
    let peak = server.max_accepted_in_any_window(Duration::from_secs(1));
    assert!(peak <= 90, "peak {peak} in one second");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_load_without_the_gate_earns_many_429s() {
    let server = server().await;
    let statuses = send_all(client(), server.uri("/v1/track"), REQUESTS, WORKERS).await;
    let rejected = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert!(rejected >= 100, "only {rejected} 429s");
    assert_eq!(server.stats().rate_limited, rejected as u64);
    server.shutdown().await;
}
