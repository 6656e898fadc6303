//! Import users into a Customer.io-like API. By default through batches (`BatchLayer`, 100
//! users per `/api/v2/batch` call), with `--no-batch` one user per request through the same
//! stack, with `--naive` the classic sleep-on-429 loop; each run prints records per second
//! against the bound (limit x batch size).
//!
//! ```sh
//! cargo run --release --example bulk_import --features mock
//! cargo run --release --example bulk_import --features mock -- --no-batch
//! cargo run --release --example bulk_import --features mock -- --naive
//! cargo run --release --example bulk_import --features mock -- --count 50000 --rate 50 --batch-size 200
//! ```
//!
//! The mock API enforces `--rate` requests per second per workspace as a sliding window (like
//! Customer.io's Track API), for single and batch calls alike; answers 429 with `Retry-After`
//! beyond it; fails `--fail-ratio` of requests with 503 and, inside accepted batches,
//! `--item-fail-ratio` of the users transiently (a 207 naming them).

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
use tower_throttle::batch::{BatchLayer, CustomerIoBatch};
use tower_throttle::mock::{BatchEndpoint, MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{
    run_bulk, AdaptiveLayer, Backoff, BulkOptions, BulkReport, DeadLetterLayer, DeadLetterStore,
    FileStore, LocalBucket, QueueLayer, Quota, RateLimitLayer, RetryLayer, RetryPolicy, Stats,
};

const USAGE: &str = "\
usage: bulk_import [--count N] [--rate R] [--batch-size B] [--fail-ratio F]
                   [--item-fail-ratio F] [--no-batch | --naive]

  --count N            users to import (default 10000)
  --rate R             the mock API's limit, requests per second (default 100)
  --batch-size B       users per batch call (default 100)
  --fail-ratio F       share of requests answered 503 (default 0.02)
  --item-fail-ratio F  share of users in a batch failed transiently (default 0.01)
  --no-batch           one user per request, through the same stack
  --naive              the sleep-on-429 loop, one user per request
  -h, --help           this text";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Batched,
    OnePerRequest,
    Naive,
}

struct Args {
    count: u64,
    rate: u32,
    batch_size: usize,
    fail_ratio: f64,
    item_fail_ratio: f64,
    mode: Mode,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        count: 10_000,
        rate: 100,
        batch_size: 100,
        fail_ratio: 0.02,
        item_fail_ratio: 0.01,
        mode: Mode::Batched,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n\n{USAGE}"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--count" => args.count = value()?.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = value()?.parse().map_err(|e| bad(&e))?,
            "--batch-size" => args.batch_size = value()?.parse().map_err(|e| bad(&e))?,
            "--fail-ratio" => args.fail_ratio = value()?.parse().map_err(|e| bad(&e))?,
            "--item-fail-ratio" => args.item_fail_ratio = value()?.parse().map_err(|e| bad(&e))?,
            "--no-batch" => args.mode = Mode::OnePerRequest,
            "--naive" => args.mode = Mode::Naive,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One user as the v1 API takes it: `PUT /api/v1/customers/{id}`.
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

/// The same user as a v2 entity, the item of a `/api/v2/batch` call.
fn user_entity(server: &MockServer, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::put(server.uri(&format!("/api/v1/customers/{id}")))
        .header("authorization", "Basic c2l0ZV9pZDphcGlfa2V5")
        .body(Full::new(Bytes::from(format!(
            "{{\"type\":\"person\",\"identifiers\":{{\"id\":\"{id}\"}},\"action\":\"identify\",\
             \"attributes\":{{\"email\":\"user{id}@example.com\",\"plan\":\"pro\"}}}}"
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

/// What a run reports, whatever the mode.
struct Totals {
    delivered: u64,
    lost: u64,
    dead_lettered: u64,
    retries: u64,
    elapsed: Duration,
}

impl Totals {
    fn of(report: &BulkReport, retries: u64) -> Self {
        Totals {
            delivered: report.succeeded,
            lost: report.failed,
            dead_lettered: report.dead_lettered,
            retries,
            elapsed: report.elapsed,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let args = match parse_args()? {
        Some(args) => args,
        None => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(
            args.rate,
            Duration::from_secs(1),
        )?)
        .batch_route(
            "/api/v2/batch",
            BatchEndpoint::customerio().with_max_items(args.batch_size)?,
        )
        .retry_after(RetryAfterFormat::Seconds)
        .fail_ratio(args.fail_ratio)
        .item_fail_ratio(args.item_fail_ratio)
        .start()
        .await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let per_request = if args.mode == Mode::Batched {
        args.batch_size
    } else {
        1
    };
    println!(
        "importing {} users into a mock API limited to {}/s (sliding window), {:.0}% 503s: {}",
        args.count,
        args.rate,
        args.fail_ratio * 100.0,
        match args.mode {
            Mode::Batched => format!(
                "batches of {} (BatchLayer), {:.0}% of users failed inside a batch",
                args.batch_size,
                args.item_fail_ratio * 100.0
            ),
            Mode::OnePerRequest => "one user per request (full stack)".into(),
            Mode::Naive => "naive sleep-on-429 loop".into(),
        }
    );
    let totals = match args.mode {
        Mode::Batched => batched(&server, client, &args).await?,
        Mode::OnePerRequest => one_per_request(&server, client, &args).await?,
        Mode::Naive => naive(&server, client, args.count).await,
    };
    let stats = server.stats();
    let secs = totals.elapsed.as_secs_f64();
    let records_per_sec = totals.delivered as f64 / secs;
    let bound = f64::from(args.rate) * per_request as f64;
    println!();
    println!("delivered        {}/{}", totals.delivered, args.count);
    println!("lost             {}", totals.lost);
    println!("dead letters     {}", totals.dead_lettered);
    println!("retries          {}", totals.retries);
    println!(
        "server saw       {} requests: {} answered 429, {} answered 503",
        stats.received, stats.rate_limited, stats.failed
    );
    if args.mode == Mode::Batched {
        println!(
            "                 {} users in batches ({} failed transiently and re-batched), {} written, {} written twice",
            stats.items_received, stats.items_failed, stats.items_accepted, stats.duplicate_ids
        );
    }
    println!(
        "429 share        {:.2}% of requests",
        100.0 * stats.rate_limited as f64 / stats.received.max(1) as f64
    );
    println!(
        "records/s        {records_per_sec:.0} delivered vs a bound of {bound:.0} ({} req/s x {per_request} per request): {:.1}%",
        args.rate,
        100.0 * records_per_sec / bound
    );
    println!("import time      {:.2?}", totals.elapsed);
    server.shutdown().await;
    Ok(())
}

/// Dead letters in a temporary file, kept only if something is in them.
async fn dead_letter_store() -> Result<(Arc<FileStore>, std::path::PathBuf), tower::BoxError> {
    let dir = std::env::temp_dir().join(format!("tower-throttle-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(FileStore::open(dir.join("dead_letters.jsonl")).await?);
    Ok((store, dir))
}

async fn report_dead_letters(
    store: &FileStore,
    dir: &std::path::Path,
) -> Result<(), tower::BoxError> {
    let letters = store.len().await?;
    if letters > 0 {
        println!(
            "{letters} dead letters kept in {} (replay with tower_throttle::replay)",
            store.path().display()
        );
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn bulk_options<B: 'static>(
    bar: &ProgressBar,
    count: u64,
    concurrency: usize,
) -> BulkOptions<http::Response<B>> {
    let bar = bar.clone();
    BulkOptions::default()
        .concurrency(concurrency)
        .total(count)
        .on_progress(move |p| {
            bar.set_position(p.processed);
            bar.set_message(format!(
                "{:.0}/s, {} failed, {} dead-lettered",
                p.rate_per_sec, p.failed, p.dead_lettered
            ));
        })
}

/// Batches: dead letters per user, `BatchLayer` (Customer.io v2 batches of `--batch-size`),
/// retry holding the shared bucket for whole-batch 429s and 503s, the gate at the known limit.
async fn batched(
    server: &MockServer,
    client: HttpClient,
    args: &Args,
) -> Result<Totals, tower::BoxError> {
    let (store, dir) = dead_letter_store().await?;
    let stats = Stats::new();
    // A known limit: pace at 95% of it, so latency jitter never puts one request too many
    // into the server's one-second window. Every call carries a whole batch, so no probing.
    let bucket = LocalBucket::new(Quota::per_second((args.rate * 19 / 20).max(1))?);
    let batching = BatchLayer::new(CustomerIoBatch).with_max_items(args.batch_size)?;
    let batch_stats = batching.stats();
    let stack = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()).with_stats(stats.clone()))
        .layer(batching)
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(
                    Backoff::builder()
                        .base(Duration::from_millis(100))
                        .build()?,
                )
                .with_bucket(bucket.clone())
                .with_stats(stats.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket).with_stats(stats.clone()))
        .service(client);

    let bar = progress_bar(args.count);
    let jobs = stream::iter((0..args.count).map(|id| user_entity(server, id)));
    // Enough users in flight to fill every batch the gate admits while others are answered.
    let concurrency = (args.batch_size * 20).max(64);
    let report = run_bulk(jobs, stack, bulk_options(&bar, args.count, concurrency)).await;
    bar.finish();
    println!(
        "\n{} batch calls, {} users re-batched after a transient failure",
        batch_stats.batches(),
        batch_stats.rebatched()
    );
    report_dead_letters(&store, &dir).await?;
    Ok(Totals::of(&report, stats.snapshot().retries()))
}

/// One user per request: dead letters, retry holding the shared bucket, adaptive rate, the
/// gate, a queue.
async fn one_per_request(
    server: &MockServer,
    client: HttpClient,
    args: &Args,
) -> Result<Totals, tower::BoxError> {
    let (store, dir) = dead_letter_store().await?;
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
    let jobs = stream::iter((0..args.count).map(|id| user(server, id)));
    let report = run_bulk(jobs, stack, bulk_options(&bar, args.count, 64)).await;
    bar.finish();
    let snapshot = stats.snapshot();
    println!("\nadaptive rate at the end: {:.1}/s", adaptive.rate());
    println!(
        "run health: {}",
        if snapshot.health().is_healthy() {
            "healthy".to_string()
        } else {
            format!("{:?}", snapshot.health().issues())
        }
    );
    report_dead_letters(&store, &dir).await?;
    Ok(Totals::of(&report, snapshot.retries()))
}

/// The recipe users come from: N workers, each sleeping on its own when it sees a 429 and
/// trying again; a 503 is given up on.
async fn naive(server: &MockServer, client: HttpClient, count: u64) -> Totals {
    const WORKERS: u64 = 64;
    let started = tokio::time::Instant::now();
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
    Totals {
        delivered: delivered.load(Ordering::Relaxed),
        lost: lost.load(Ordering::Relaxed),
        dead_lettered: 0,
        retries: retries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}
