//! The runner's own cost per job, without a network: `run_bulk` with 64 slots over 200,000
//! jobs answered at once by an in-process service, so what is measured is the scheduler, the
//! queue, the retry layer and the deferral path, not hyper or the kernel. Run it under
//! callgrind for a count that the machine's load does not move:
//!
//! ```sh
//! cargo build --release --example bulk_overhead
//! valgrind --tool=callgrind target/release/examples/bulk_overhead deferred   # instructions / 200,000
//! target/release/examples/bulk_overhead raw                                  # ns per job
//! ```
//!
//! Modes: `raw` (the service alone), `clean` (a `RetryLayer`, no failures), `deferred` (10%
//! of jobs answered 503 once, retried after 1 ms with their slot given back), `queue` (as
//! `deferred`, with a `QueueLayer` of 64 between the runner and the retry layer, so a retry
//! gives back both slots).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::Full;
use tower::{service_fn, BoxError, ServiceBuilder};
use tower_throttle::{
    backoff::{Backoff, Jitter},
    QueueLayer, RetryLayer, RetryPolicy,
};
use tower_throttle::{run_bulk, BulkOptions, BulkReport};

const JOBS: u64 = 200_000;
const SLOTS: usize = 64;

type Req = http::Request<Full<Bytes>>;

fn jobs() -> impl futures_util::Stream<Item = Req> {
    stream::iter((0..JOBS).map(|i| {
        http::Request::post("http://api.example/v1/users")
            .header("x-id", i.to_string())
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request")
    }))
}

/// Answers at once; with `fail`, every tenth job's first attempt is a 503.
fn api(
    fail: bool,
) -> impl tower::Service<Req, Response = http::Response<()>, Error = BoxError, Future = impl Send> + Clone
{
    let attempts: Arc<Vec<AtomicU8>> = Arc::new((0..JOBS).map(|_| AtomicU8::new(0)).collect());
    service_fn(move |req: Req| {
        let attempts = attempts.clone();
        async move {
            let id: usize = req.headers()["x-id"].to_str()?.parse()?;
            let n = attempts[id].fetch_add(1, Ordering::Relaxed);
            let mut res = http::Response::new(());
            if fail && id.is_multiple_of(10) && n == 0 {
                *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, BoxError>(res)
        }
    })
}

fn retry() -> Result<RetryLayer, BoxError> {
    let backoff = Backoff::builder()
        .base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .build()?;
    Ok(RetryLayer::new(
        RetryPolicy::default()
            .with_backoff(backoff)
            .without_budget(),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let matches = clap::Command::new("bulk_overhead")
        .about("run_bulk's own cost per job against an in-process service")
        .arg(
            clap::Arg::new("mode")
                .value_parser(["raw", "clean", "deferred", "queue"])
                .required(true)
                .help("what sits between the runner and the service"),
        )
        .get_matches();
    let mode = matches.get_one::<String>("mode").expect("required");
    let options = || BulkOptions::default().concurrency(SLOTS);
    let start = Instant::now();
    let report: BulkReport = match mode.as_str() {
        "raw" => run_bulk(jobs(), api(false), options()).await,
        "clean" => {
            let stack = ServiceBuilder::new().layer(retry()?).service(api(false));
            run_bulk(jobs(), stack, options()).await
        }
        "deferred" => {
            let stack = ServiceBuilder::new().layer(retry()?).service(api(true));
            run_bulk(jobs(), stack, options()).await
        }
        _ => {
            let queue = QueueLayer::builder()
                .capacity(1_024)
                .concurrency(SLOTS)
                .build()?;
            let stack = ServiceBuilder::new()
                .layer(queue)
                .layer(retry()?)
                .service(api(true));
            run_bulk(jobs(), stack, options()).await
        }
    };
    assert_eq!(report.succeeded, JOBS, "every job delivered");
    println!(
        "{mode}: {:.0} ns per job",
        start.elapsed().as_nanos() as f64 / JOBS as f64
    );
    Ok(())
}
