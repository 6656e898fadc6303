//! Soak with faults: the whole stack (retry over the shared gate over a timeout over hyper)
//! driven at the mock server's limit, with 10% injected 503s and random latency, for
//! `SOAK_SECS` seconds (default 5, the CI version):
//!
//! ```sh
//! SOAK_SECS=600 cargo test --release --all-features --test soak -- --nocapture
//! ```
//!
//! It asserts that nothing is lost (every request ends as exactly one outcome the caller
//! sees, and every success was recorded by the server exactly once), that memory stays flat
//! (resident set growth over the second half within a small allowance), and that open
//! connections do not grow (file descriptors at the end no more than at the middle, plus
//! slack; the server never sees more requests at once than there are workers).
#![cfg(feature = "mock")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{
    backoff::{Backoff, Jitter},
    LocalBucket, Quota, RateLimitLayer,
};
use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};

/// The server's limit and the client's configured rate: the client runs at the limit.
const RATE: u32 = 200;
/// Closed-loop workers: enough to keep the gate busy through 20 ms of latency and backoffs.
const WORKERS: u64 = 32;
/// Resident-set growth allowed over the second half: a fixed slack (allocator arenas, table
/// doublings) plus what the mock server itself keeps per accepted request (its id set and
/// accept log, which the assertions read). A leak in the stack of even a few hundred bytes a
/// request exceeds this in the 10-minute run.
const RSS_SLACK: u64 = 8 << 20;
const RSS_PER_ACCEPTED: u64 = 256;
/// File descriptors the end may have beyond the middle (a connection being replaced).
const FD_SLACK: usize = 8;

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux), or `None` elsewhere.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Open file descriptors (sockets included), from `/proc/self/fd`.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Status(u16, u32),
    Error,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_at_the_limit_with_503s_and_latency_loses_nothing() {
    let secs = soak_secs();
    let server = MockServer::builder()
        .limit(ServerLimit::token_bucket(f64::from(RATE), 10).unwrap())
        .fail_ratio(0.1)
        .latency_range(Duration::from_millis(1), Duration::from_millis(20))
        .seed(0x50a4)
        .start()
        .await
        .unwrap();
    let uri = server.uri("/v1/track");

    let bucket = LocalBucket::new(Quota::per_second(RATE).unwrap());
    let backoff = Backoff::builder()
        .base(Duration::from_millis(20))
        .max_delay(Duration::from_secs(1))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(backoff)
                .with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(common::client());

    let next_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<HashMap<u64, Final>>> = Arc::default();
    let started = tokio::time::Instant::now();
    let (rss_start, fds_start) = (rss(), open_fds());

    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (svc, uri) = (svc.clone(), uri.clone());
        let (next_id, stop, outcomes) = (next_id.clone(), stop.clone(), outcomes.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let req = http::Request::post(uri.clone())
                    .header("x-request-id", id.to_string())
                    .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
                    .unwrap();
                let outcome = match svc.clone().oneshot(req).await {
                    Ok(res) => {
                        let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
                        Final::Status(res.status().as_u16(), attempts)
                    }
                    Err(_) => Final::Error,
                };
                let previous = outcomes.lock().unwrap().insert(id, outcome);
                assert!(previous.is_none(), "request {id} ended twice");
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(secs) / 2).await;
    let (rss_mid, fds_mid) = (rss(), open_fds());
    let accepted_mid = server.stats().accepted;
    tokio::time::sleep(Duration::from_secs(secs) - Duration::from_secs(secs) / 2).await;
    let (rss_end, fds_end) = (rss(), open_fds());
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();

    let issued = next_id.load(Ordering::Relaxed);
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let stats = server.stats();
    let delivered = server.accepted_ids();
    let ok = outcomes
        .values()
        .filter(|o| matches!(o, Final::Status(200, _)))
        .count() as u64;
    let attempts: u64 = outcomes
        .values()
        .map(|o| match o {
            Final::Status(_, a) => u64::from(*a),
            Final::Error => 1,
        })
        .sum();
    let not_ok: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Final::Status(200, _)))
        .collect();
    println!(
        "soak {secs}s ({elapsed:.1?}): {issued} requests, {ok} delivered, {} returned as failures \
         {not_ok:?}; server: {} received, {} accepted ({:.1}/s), {} 429, {} 503, max in flight {}; \
         attempts {attempts} ({:.3} per request)",
        not_ok.len(),
        stats.received,
        stats.accepted,
        stats.accepted as f64 / elapsed.as_secs_f64(),
        stats.rate_limited,
        stats.failed,
        stats.max_in_flight,
        attempts as f64 / issued as f64,
    );
    println!(
        "rss start/mid/end: {rss_start:?}/{rss_mid:?}/{rss_end:?} bytes; \
         fds start/mid/end: {fds_start:?}/{fds_mid:?}/{fds_end:?}"
    );

    // Nothing lost: every request issued ended exactly once (the insert above checks "once"),
    // every success reached the server exactly once, and whatever did not succeed came back
    // to its caller (the dead-letter layer's input), none silently dropped.
    assert_eq!(outcomes.len() as u64, issued);
    for (id, o) in outcomes.iter() {
        if matches!(o, Final::Status(200, _)) {
            assert!(delivered.contains(&id.to_string()), "{id} succeeded unseen");
        }
    }
    assert_eq!(stats.duplicate_ids, 0, "a request was delivered twice");
    assert_eq!(stats.records_dropped, 0);
    assert_eq!(stats.distinct_ids, stats.accepted);
    assert!(stats.accepted >= ok);
    // Five attempts at a 10% failure rate: a final failure is a 1-in-100,000 event.
    assert!(
        not_ok.len() as u64 <= 1 + issued / 1_000,
        "{} final failures",
        not_ok.len()
    );
    // At the limit: attempts go at close to the rate (the gate is the bottleneck), retries
    // stay within the budget the design allows.
    let attempt_rate = stats.received as f64 / elapsed.as_secs_f64();
    assert!(
        attempt_rate >= 0.8 * f64::from(RATE),
        "{attempt_rate:.1} attempts/s at a limit of {RATE}/s"
    );
    assert!(
        attempts as f64 <= 1.15 * issued as f64,
        "{attempts} attempts for {issued} requests"
    );

    // Connections: bounded by the workers, and not growing.
    assert!(stats.max_in_flight <= WORKERS, "{stats:?}");
    if let (Some(mid), Some(end)) = (fds_mid, fds_end) {
        assert!(end <= mid + FD_SLACK, "open fds grew from {mid} to {end}");
    }
    // Memory: flat over the second half, beyond what the mock records per request.
    if let (Some(mid), Some(end)) = (rss_mid, rss_end) {
        let allowance = RSS_SLACK + RSS_PER_ACCEPTED * (stats.accepted - accepted_mid);
        assert!(
            end.saturating_sub(mid) <= allowance,
            "rss grew {} bytes over the second half (allowance {allowance})",
            end.saturating_sub(mid)
        );
    }
    server.shutdown().await;
}
