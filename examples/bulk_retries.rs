//! Retries that do not idle the pipeline: `run_bulk` against the mock API with no limit and
//! 10% injected 503s, the raw client side by side with the retry stack (deferred retries on,
//! and off as before), plus a known-limit row. Prints a Markdown table (BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example bulk_retries --features mock             # 5 s per row
//! cargo run --release --example bulk_retries --features mock -- --secs 10 --rounds 3
//! ```
//!
//! Each row streams jobs (distinct `x-request-id`s) into [`run_bulk`] with 64 slots for
//! `--secs`, then lets the jobs in flight finish. "delivered/s in window" counts the 2xx
//! answers that came back during the window, per second: the steady rate of the pipeline.
//! "end to end" divides every delivery by the whole run, including the tail of retries that
//! were still waiting out a backoff when the stream ended (the default policy's 1 s, 2 s, 4 s,
//! ... with 25% jitter; a request refused four times in a row waits 15 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder};
use tower_throttle::bulk::{classify_http, run_bulk, BulkOptions, JobOutcome};
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{Quota, RateLimitLayer, RetryLayer, RetryPolicy};

const SLOTS: usize = 64;

struct Row {
    name: &'static str,
    jobs: u64,
    delivered: u64,
    in_window: u64,
    window: Duration,
    elapsed: Duration,
    server_received: u64,
    server_distinct: u64,
}

/// Runs jobs for `window` through `svc` and counts.
async fn run<S>(
    name: &'static str,
    server: &MockServer,
    svc: S,
    window: Duration,
    max_deferred: usize,
) -> Row
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone,
    S::Error: Into<BoxError>,
{
    let start = Instant::now();
    let in_window = Arc::new(AtomicU64::new(0));
    let counter = in_window.clone();
    let options = BulkOptions::new(move |r: &Result<http::Response<_>, BoxError>| {
        let outcome = classify_http(r);
        if outcome == JobOutcome::Succeeded && start.elapsed() <= window {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    })
    .concurrency(SLOTS)
    .max_deferred(max_deferred);
    let uri = server.uri("/v1/track");
    let jobs = stream::unfold(0u64, move |i| {
        let uri = uri.clone();
        async move {
            (start.elapsed() < window).then(|| {
                let req = http::Request::post(uri)
                    .header("x-request-id", i.to_string())
                    .body(Full::new(Bytes::from(format!("{{\"id\":{i}}}"))))
                    .expect("valid request");
                (req, i + 1)
            })
        }
    });
    let report = run_bulk(jobs, svc, options).await;
    let stats = server.stats();
    Row {
        name,
        jobs: report.processed,
        delivered: report.succeeded,
        in_window: in_window.load(Ordering::Relaxed),
        window,
        elapsed: start.elapsed(),
        server_received: stats.received,
        server_distinct: stats.distinct_ids,
    }
}

async fn unlimited_with_failures() -> MockServer {
    MockServer::builder()
        .fail_ratio(0.1)
        .seed(7)
        .start()
        .await
        .expect("mock server")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut secs = 5u64;
    let mut rounds = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().ok_or("--secs N")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            other => {
                return Err(
                    format!("unknown argument {other}; usage: [--secs N] [--rounds N]").into(),
                )
            }
        }
    }
    let window = Duration::from_secs(secs);
    let client = || Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let retry = || RetryLayer::new(RetryPolicy::default());
    let mut rows = Vec::new();

    // The machine's load moves the raw rate between runs, so raw and deferred alternate and
    // each deferred row is compared with the raw row just before it.
    let deferred = tower_throttle::bulk::DEFAULT_MAX_DEFERRED;
    for _ in 0..rounds {
        let server = unlimited_with_failures().await;
        rows.push(run("raw client", &server, client(), window, 0).await);
        server.shutdown().await;

        let server = unlimited_with_failures().await;
        let stack = ServiceBuilder::new()
            .layer(retry())
            .map_err(BoxError::from)
            .service(client());
        rows.push(run("retry, deferred retries", &server, stack, window, deferred).await);
        server.shutdown().await;
    }

    // The retry layer's own cost: the same pair with no failures at all.
    let clean = || MockServer::builder().seed(7).start();
    let server = clean().await?;
    rows.push(run("raw client, no 503s", &server, client(), window, 0).await);
    server.shutdown().await;
    let server = clean().await?;
    let stack = ServiceBuilder::new()
        .layer(retry())
        .map_err(BoxError::from)
        .service(client());
    rows.push(run("retry, no 503s", &server, stack, window, deferred).await);
    server.shutdown().await;

    let server = unlimited_with_failures().await;
    let stack = ServiceBuilder::new()
        .layer(retry())
        .map_err(BoxError::from)
        .service(client());
    rows.push(run("retry, slot held (before)", &server, stack, window, 0).await);
    server.shutdown().await;

    let limit = 200u32;
    let mut known = Vec::new();
    for fail_ratio in [0.0, 0.1] {
        let server = MockServer::builder()
            .limit(ServerLimit::token_bucket(f64::from(limit), 10)?)
            .fail_ratio(fail_ratio)
            .seed(7)
            .start()
            .await?;
        let stack = ServiceBuilder::new()
            .layer(retry())
            .layer(RateLimitLayer::new(Quota::per_second(limit)?))
            .map_err(BoxError::from)
            .service(client());
        let name = if fail_ratio > 0.0 {
            "known limit 200/s, 10% 503s, retry + gate"
        } else {
            "known limit 200/s, retry + gate"
        };
        rows.push(run(name, &server, stack, window, deferred).await);
        known.push((name, server.stats()));
        server.shutdown().await;
    }

    println!(
        "| contender | jobs | delivered | delivered/s in window | of the raw row before | end to end | wall | server saw (distinct) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut raw_rate = f64::NAN;
    for r in &rows {
        let rate = r.in_window as f64 / r.window.as_secs_f64();
        if r.name.starts_with("raw client") {
            raw_rate = rate;
        }
        println!(
            "| {} | {} | {} ({:.3}%) | {:.0}/s | {:.1}% | {:.0}/s | {:.2} s | {} ({}) |",
            r.name,
            r.jobs,
            r.delivered,
            100.0 * r.delivered as f64 / r.jobs.max(1) as f64,
            rate,
            100.0 * rate / raw_rate,
            r.delivered as f64 / r.elapsed.as_secs_f64(),
            r.elapsed.as_secs_f64(),
            r.server_received,
            r.server_distinct,
        );
    }
    let known_rows = &rows[rows.len() - known.len()..];
    for (row, (name, stats)) in known_rows.iter().zip(&known) {
        println!(
            "\n{name}: delivered {:.1}% of {limit}/s in the window, {} answered 429",
            100.0 * row.in_window as f64 / row.window.as_secs_f64() / f64::from(limit),
            stats.rate_limited,
        );
    }
    Ok(())
}
