//! Import users into a Customer.io-like API through the whole stack, with a progress bar and
//! a final report; `--naive` runs the classic sleep-on-429 loop instead, for comparison.
//!
//! ```sh
//! cargo run --release --example bulk_import --features mock
//! cargo run --release --example bulk_import --features mock -- --naive
//! cargo run --release --example bulk_import --features mock -- --count 2000 --rate 50 --fail-ratio 0.05
//! ```
//!
//! The mock API enforces `--rate` requests per second per workspace as a sliding window (like
//! Customer.io's Track API), answers 429 with `Retry-After` beyond it and fails
//! `--fail-ratio` of requests with 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{
    run_bulk, AdaptiveLayer, Backoff, BulkOptions, DeadLetterLayer, DeadLetterStore, FileStore,
    LocalBucket, QueueLayer, Quota, RateLimitLayer, RetryLayer, RetryPolicy, Stats,
};

struct Args {
    count: u64,
    rate: u32,
    fail_ratio: f64,
    naive: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        count: 10_000,
        rate: 100,
        fail_ratio: 0.02,
        naive: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--fail-ratio" => {
                args.fail_ratio = value()?.parse().map_err(|e| format!("--fail-ratio: {e}"))?
            }
            "--naive" => args.naive = true,
            "-h" | "--help" => {
                return Err(
                    "usage: bulk_import [--count N] [--rate R] [--fail-ratio F] [--naive]".into(),
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn user(server: &MockServer, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::put(server.uri(&format!("/api/v1/customers/{id}")))
        .header("authorization", "Basic c2l0ZV9pZDphcGlfa2V5")
        .header("content-type", "application/json")
        .header("x-request-id", id.to_string())
        .body(Full::new(Bytes::from(format!(
            "{{\"email\":\"user{id}@example.com\",\"plan\":\"pro\"}}"
        ))))
        .expect("valid request")
}

fn progress_bar(count: u64) -> ProgressBar {
    let bar = ProgressBar::new(count);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    bar
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let args = parse_args()?;
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(
            args.rate,
            Duration::from_secs(1),
        )?)
        .retry_after(RetryAfterFormat::Seconds)
        .fail_ratio(args.fail_ratio)
        .start()
        .await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!(
        "importing {} users into a mock API limited to {}/s (sliding window), {:.0}% 503s: {}",
        args.count,
        args.rate,
        args.fail_ratio * 100.0,
        if args.naive {
            "naive sleep-on-429 loop"
        } else {
            "tower-throttle stack"
        }
    );
    let started = std::time::Instant::now();
    let (delivered, lost, dead_lettered, retries) = if args.naive {
        naive(&server, client, args.count).await
    } else {
        throttled(&server, client, &args).await?
    };
    let elapsed = started.elapsed();
    let stats = server.stats();
    println!();
    println!("delivered        {delivered}/{}", args.count);
    println!("lost             {lost}");
    println!("dead letters     {dead_lettered}");
    println!("retries          {retries}");
    println!(
        "server saw       {} requests: {} answered 429, {} answered 503",
        stats.received, stats.rate_limited, stats.failed
    );
    println!(
        "429 share        {:.2}% of requests",
        100.0 * stats.rate_limited as f64 / stats.received.max(1) as f64
    );
    println!(
        "achieved rate    {:.1}/s delivered vs a limit of {}/s ({:.1}%)",
        delivered as f64 / elapsed.as_secs_f64(),
        args.rate,
        100.0 * delivered as f64 / elapsed.as_secs_f64() / f64::from(args.rate)
    );
    println!("wall time        {elapsed:.1?}");
    server.shutdown().await;
    Ok(())
}

/// The full stack: dead letters, retry holding the shared bucket, adaptive rate, the gate,
/// a queue.
async fn throttled(
    server: &MockServer,
    client: HttpClient,
    args: &Args,
) -> Result<(u64, u64, u64, u64), tower::BoxError> {
    let dir = std::env::temp_dir().join(format!("tower-throttle-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(FileStore::open(dir.join("dead_letters.jsonl")).await?);
    let stats = Stats::new();
    // Start at 80% of the published limit, as Customer.io recommends; evenly paced, so the
    // sliding window never sees a burst.
    let client_rate = (args.rate * 4 / 5).max(1);
    let bucket = LocalBucket::new(Quota::per_second(client_rate)?);
    // The adaptive layer starts there and learns the real limit from the 429s it earns.
    let adaptive = AdaptiveLayer::probe(
        bucket.clone(),
        f64::from(client_rate),
        1.0,
        f64::from(args.rate) * 2.0,
    )?;
    let stack = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()).with_stats(stats.clone()))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(
                    Backoff::builder()
                        .base(Duration::from_millis(250))
                        .build()?,
                )
                .with_bucket(bucket.clone())
                .with_stats(stats.clone()),
        ))
        .layer(adaptive.clone())
        .layer(RateLimitLayer::with_bucket(bucket).with_stats(stats.clone()))
        .layer(
            QueueLayer::builder()
                .capacity(1_024)
                .concurrency(64)
                .stats(stats.clone())
                .build()?,
        )
        .service(client);

    let bar = progress_bar(args.count);
    let bar_cb = bar.clone();
    let jobs = stream::iter((0..args.count).map(|id| user(server, id)));
    let options = BulkOptions::default()
        .concurrency(64)
        .total(args.count)
        .on_progress(move |p| {
            bar_cb.set_position(p.processed);
            bar_cb.set_message(format!(
                "{:.0}/s, {} failed, {} dead-lettered",
                p.rate_per_sec, p.failed, p.dead_lettered
            ));
        });
    let report = run_bulk(jobs, stack, options).await;
    bar.finish();
    let snapshot = stats.snapshot();
    println!("\nadaptive rate at the end: {:.1}/s", adaptive.rate());
    let letters = store.len().await?;
    println!(
        "\nrun health: {}",
        if snapshot.health().is_healthy() {
            "healthy".to_string()
        } else {
            format!("{:?}", snapshot.health().issues())
        }
    );
    if letters > 0 {
        println!(
            "{letters} dead letters kept in {} (replay with tower_throttle::replay)",
            store.path().display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((
        report.succeeded,
        report.failed,
        report.dead_lettered,
        snapshot.retries(),
    ))
}

/// The recipe users come from: N workers, each sleeping on its own when it sees a 429 and
/// trying again; a 503 is given up on.
async fn naive(server: &MockServer, client: HttpClient, count: u64) -> (u64, u64, u64, u64) {
    const WORKERS: u64 = 64;
    let next = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(count);
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (next, delivered, lost, retries) = (
            next.clone(),
            delivered.clone(),
            lost.clone(),
            retries.clone(),
        );
        let (client, bar) = (client.clone(), bar.clone());
        let server_req = {
            let base = server.uri("/");
            move |id: u64| {
                let mut req = http::Request::put(format!("{base}api/v1/customers/{id}"))
                    .header("x-request-id", id.to_string())
                    .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
                    .expect("valid request");
                req.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                req
            }
        };
        tasks.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= count {
                    break;
                }
                loop {
                    match client.clone().oneshot(server_req(id)).await {
                        Ok(res) if res.status() == 429 => {
                            let wait = res
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(60);
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                        Ok(res) if res.status().is_success() => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        _ => {
                            lost.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish();
    (
        delivered.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        0,
        retries.load(Ordering::Relaxed),
    )
}
