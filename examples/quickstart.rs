//! The shortest useful stack: a shared gate and a 429-aware retry, against the mock server.
//!
//! The mock API allows 50 requests per second (sliding window), answers 429 with
//! `Retry-After` beyond that and fails 10% of requests with 503. The client opens with a
//! misconfigured burst, earns a few 429s, holds the shared bucket for everyone, and ends with
//! every record delivered.
//!
//! ```sh
//! cargo run --example quickstart --features mock
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{backoff::Backoff, LocalBucket, Quota, RateLimitLayer};
use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};

const RECORDS: usize = 300;

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(50, Duration::from_secs(1))?)
        .retry_after(RetryAfterFormat::Seconds)
        .fail_ratio(0.1)
        .start()
        .await?;
    println!("mock API at {}", server.url("/"));

    // 45/s paced, but with a burst of 45 a rolling-window server will refuse part of the opening.
    let bucket = LocalBucket::new(Quota::per_second(45)?.with_burst(45)?);
    let backoff = Backoff::builder()
        .base(Duration::from_millis(200))
        .build()?;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(backoff)
                .with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..RECORDS {
        let client = client.clone();
        let uri = server.uri("/v1/customers");
        tasks.spawn(async move {
            let req = http::Request::put(uri)
                .header("x-request-id", id.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))?;
            let res = client.oneshot(req).await?;
            let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
            Ok::<_, tower::BoxError>((res.status(), attempts))
        });
    }
    let (mut delivered, mut attempts) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (status, tries) = done??;
        delivered += usize::from(status.is_success());
        attempts += tries;
    }
    let elapsed = started.elapsed();
    let stats = server.stats();
    println!("delivered   {delivered}/{RECORDS} in {elapsed:.1?}");
    println!(
        "attempts    {attempts} ({:.2} per record)",
        f64::from(attempts) / RECORDS as f64
    );
    println!(
        "server saw  {} requests: {} accepted, {} answered 429, {} answered 503",
        stats.received, stats.accepted, stats.rate_limited, stats.failed
    );
    println!(
        "distinct ids accepted: {} (duplicates {})",
        stats.distinct_ids, stats.duplicate_ids
    );
    server.shutdown().await;
    assert_eq!(delivered, RECORDS, "every record must be delivered");
    Ok(())
}
