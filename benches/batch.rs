//! Records per second through a rate limit: the batch path (`BatchLayer`, 100 records per
//! call) against one record per request through the same stack and against the naive
//! sleep-on-429 loop, in one criterion run against the same mock API.
//!
//! Run: `cargo bench -p tower-throttle-benches --bench batch`
//!
//! The mock allows 1,000 requests per second (sliding window), for single and batch calls
//! alike; each sample imports 2,000 records, and criterion's throughput is records per
//! second. The bound is the limit times the records per request: 1,000/s one by one,
//! 100,000/s in batches of 100.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use futures_util::stream;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_throttle::mock::{BatchEndpoint, MockServer, ServerLimit};
use tower_throttle::{batch::CustomerIoBatch, BatchLayer};
use tower_throttle::{
    run_bulk, BulkOptions, LocalBucket, Quota, RateLimitLayer, RetryLayer, RetryPolicy,
};

const RECORDS: u64 = 2_000;
const LIMIT: u32 = 1_000;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn single(uri: &str, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::put(format!("{uri}/api/v1/customers/{id}"))
        .header("x-request-id", id.to_string())
        .body(Full::from(format!(
            r#"{{"type":"person","identifiers":{{"id":"{id}"}},"action":"identify","attributes":{{"plan":"pro"}}}}"#
        )))
        .expect("valid request")
}

/// The limit, paced at 95% so the server's window never sees one too many.
fn bucket() -> LocalBucket {
    LocalBucket::new(Quota::per_second(LIMIT * 19 / 20).expect("valid quota"))
}

async fn batched(client: &HttpClient, base: &str) -> u64 {
    let bucket = bucket();
    let stack = ServiceBuilder::new()
        .layer(
            BatchLayer::new(CustomerIoBatch::new())
                .with_max_items(100)
                .expect("valid"),
        )
        .layer(RetryLayer::new(
            RetryPolicy::default().with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(client.clone());
    let jobs = stream::iter((0..RECORDS).map(|id| single(base, id)));
    run_bulk(jobs, stack, BulkOptions::default().concurrency(2_000))
        .await
        .succeeded
}

async fn one_per_request(client: &HttpClient, base: &str) -> u64 {
    let bucket = bucket();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(client.clone());
    let jobs = stream::iter((0..RECORDS).map(|id| single(base, id)));
    run_bulk(jobs, stack, BulkOptions::default().concurrency(64))
        .await
        .succeeded
}

/// 64 workers, each sleeping out its own `Retry-After` on a 429.
async fn naive(client: &HttpClient, base: &str) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let workers = (0..64).map(|_| {
        let (next, delivered, client, base) = (
            next.clone(),
            delivered.clone(),
            client.clone(),
            base.to_owned(),
        );
        tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= RECORDS {
                    break;
                }
                loop {
                    match client.request(single(&base, id)).await {
                        Ok(res) if res.status() == 429 => {
                            let wait = res
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(1);
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                        Ok(res) if res.status().is_success() => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        _ => break,
                    }
                }
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        let _ = worker.await;
    }
    delivered.load(Ordering::Relaxed)
}

fn records_per_second(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(
            MockServer::builder()
                .limit(ServerLimit::sliding_window(LIMIT, Duration::from_secs(1)).expect("valid"))
                .batch_route("/api/v2/batch", BatchEndpoint::customerio())
                .start(),
        )
        .expect("mock server");
    let base = server.url("");
    let base = base.trim_end_matches('/').to_owned();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let mut group = c.benchmark_group("import_2000_records_at_1000_requests_per_second");
    group.throughput(Throughput::Elements(RECORDS));
    // Seconds per sample for the unbatched contenders: the same iteration count per sample
    // keeps the run to minutes.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.warm_up_time(Duration::from_secs(1));
    macro_rules! contender {
        ($name:literal, $run:ident) => {
            group.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (client, base) = (client.clone(), base.clone());
                    async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let delivered = $run(&client, &base).await;
                            assert!(delivered > 0);
                        }
                        start.elapsed()
                    }
                })
            });
        };
    }
    contender!("batches_of_100", batched);
    contender!("one_per_request", one_per_request);
    contender!("naive_sleep_on_429", naive);
    group.finish();
    let stats = server.stats();
    println!(
        "server: {} requests, {} answered 429, {} items in batches",
        stats.received, stats.rate_limited, stats.items_received
    );
    rt.block_on(server.shutdown());
}

criterion_group!(benches, records_per_second);
criterion_main!(benches);
