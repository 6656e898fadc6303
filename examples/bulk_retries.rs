//! Retries that do not idle the pipeline: `run_bulk` against the mock API with no limit and
//! 10% injected 503s, the raw client side by side with the retry stack (deferred retries on,
//! and off as before), plus a known-limit row. Prints a Markdown table (BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example bulk_retries --features mock             # 5 s per row
//! cargo run --release --example bulk_retries --features mock -- --secs 10 --rounds 3
//! cargo run --release --example bulk_retries --features mock -- --rounds 7 --pairs-only
//! ```
//!
//! Each row streams jobs (distinct `x-request-id`s) into [`run_bulk`] with 64 slots for
//! `--secs`, then lets the jobs in flight finish. "delivered/s in window" counts the 2xx
//! answers that came back during the window, per second: the steady rate of the pipeline.
//! "end to end" divides every delivery by the whole run, including the tail of retries that
//! were still waiting out a backoff when the stream ended (the default policy's 1 s, 2 s, 4 s,
//! ... with 25% jitter; a request refused four times in a row waits 15 s). "CPU per delivery"
//! is the process's CPU time over the row (client and mock server) per delivered job: the
//! rates move with whatever else the machine runs, the CPU cost much less. The summary gives
//! the median and range of the deferred rows against the raw row before each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder};
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{run_bulk, BulkOptions, JobOutcome};
use tower_throttle::{Quota, RateLimitLayer, RetryLayer, RetryPolicy};

const SLOTS: usize = 64;
const KNOWN_LIMIT: u32 = 200;
const RAW: &str = "raw client";
const DEFERRED: &str = "retry, deferred retries";

struct Row {
    name: &'static str,
    jobs: u64,
    delivered: u64,
    in_window: u64,
    window: Duration,
    elapsed: Duration,
    /// Process CPU time over the row, when the platform tells.
    cpu: Option<Duration>,
    server_received: u64,
    server_distinct: u64,
    /// The known-limit rows: answers 429.
    rate_limited: Option<u64>,
}

impl Row {
    fn window_rate(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64()
    }

    /// Microseconds of CPU (client and server) per delivered job: unlike the rates, barely
    /// moved by what else the machine runs.
    fn cpu_per_delivery(&self) -> Option<f64> {
        self.cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.delivered.max(1) as f64)
    }
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
    let cpu_before = cpu_time();
    let start = Instant::now();
    let in_window = Arc::new(AtomicU64::new(0));
    let counter = in_window.clone();
    let options = BulkOptions::new(move |r: &Result<http::Response<_>, BoxError>| {
        let outcome = JobOutcome::classify_http(r);
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
        cpu: cpu_time()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before)),
        server_received: stats.received,
        server_distinct: stats.distinct_ids,
        rate_limited: None,
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

/// The command line; `--help` prints it.
fn cli() -> clap::Command {
    use clap::{value_parser, Arg, ArgAction, Command};
    Command::new("bulk_retries")
        .about("run_bulk with 10% injected 503s: the raw client beside the retry stack")
        .arg(
            Arg::new("secs")
                .long("secs")
                .value_name("N")
                .value_parser(value_parser!(u64).range(1..))
                .default_value("5")
                .help("seconds of jobs streamed per row"),
        )
        .arg(
            Arg::new("rounds")
                .long("rounds")
                .value_name("N")
                .value_parser(value_parser!(usize))
                .default_value("1")
                .help("raw / deferred pairs, alternating (the summary takes their median)"),
        )
        .arg(
            Arg::new("pairs-only")
                .long("pairs-only")
                .action(ArgAction::SetTrue)
                .help("only the raw / deferred pairs: no clean, slot-held or known-limit rows"),
        )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let matches = cli().get_matches();
    let secs: u64 = *matches.get_one("secs").expect("has a default");
    let rounds: usize = *matches.get_one("rounds").expect("has a default");
    let pairs_only = matches.get_flag("pairs-only");
    let window = Duration::from_secs(secs);
    let client = || Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let retry = || RetryLayer::new(RetryPolicy::default());
    let mut rows = Vec::new();

    // The machine's load moves the raw rate between runs, so raw and deferred alternate and
    // each deferred row is compared with the raw row just before it.
    // `BulkOptions`' default `max_deferred`.
    let deferred = 4096;
    for _ in 0..rounds {
        let server = unlimited_with_failures().await;
        rows.push(run(RAW, &server, client(), window, 0).await);
        server.shutdown().await;

        let server = unlimited_with_failures().await;
        let stack = ServiceBuilder::new()
            .layer(retry())
            .map_err(BoxError::from)
            .service(client());
        rows.push(run(DEFERRED, &server, stack, window, deferred).await);
        server.shutdown().await;
    }

    if !pairs_only {
        extra_rows(&mut rows, window, deferred).await?;
    }
    print_table(&rows);
    summary(&rows);
    Ok(())
}

/// The retry layer's own cost with no failures, the old slot-holding behaviour, and the
/// known-limit runs.
async fn extra_rows(
    rows: &mut Vec<Row>,
    window: Duration,
    deferred: usize,
) -> Result<(), BoxError> {
    let client = || Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let retry = || RetryLayer::new(RetryPolicy::default());
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

    for fail_ratio in [0.0, 0.1] {
        let server = MockServer::builder()
            .limit(ServerLimit::token_bucket(f64::from(KNOWN_LIMIT), 10)?)
            .fail_ratio(fail_ratio)
            .seed(7)
            .start()
            .await?;
        let stack = ServiceBuilder::new()
            .layer(retry())
            .layer(RateLimitLayer::new(Quota::per_second(KNOWN_LIMIT)?))
            .map_err(BoxError::from)
            .service(client());
        let name = if fail_ratio > 0.0 {
            "known limit 200/s, 10% 503s, retry + gate"
        } else {
            "known limit 200/s, retry + gate"
        };
        let mut row = run(name, &server, stack, window, deferred).await;
        row.rate_limited = Some(server.stats().rate_limited);
        rows.push(row);
        server.shutdown().await;
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "| contender | jobs | delivered | delivered/s in window | of the raw row before | end to end | wall | CPU per delivery | server saw (distinct) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut raw_rate = f64::NAN;
    for r in rows {
        let rate = r.window_rate();
        if r.name.starts_with("raw client") {
            raw_rate = rate;
        }
        let of_raw = if r.rate_limited.is_some() {
            String::new()
        } else {
            format!("{:.1}%", 100.0 * rate / raw_rate)
        };
        let cpu = r
            .cpu_per_delivery()
            .map_or_else(|| "n/a".to_string(), |us| format!("{us:.0} us"));
        println!(
            "| {} | {} | {} ({:.3}%) | {:.0}/s | {of_raw} | {:.0}/s | {:.2} s | {cpu} | {} ({}) |",
            r.name,
            r.jobs,
            r.delivered,
            100.0 * r.delivered as f64 / r.jobs.max(1) as f64,
            rate,
            r.delivered as f64 / r.elapsed.as_secs_f64(),
            r.elapsed.as_secs_f64(),
            r.server_received,
            r.server_distinct,
        );
    }
    for r in rows {
        if let Some(limited) = r.rate_limited {
            println!(
                "\n{}: delivered {:.1}% of {KNOWN_LIMIT}/s in the window, {limited} answered 429",
                r.name,
                100.0 * r.window_rate() / f64::from(KNOWN_LIMIT),
            );
        }
    }
}

/// The deferred rows against the raw row just before each: median and range over the
/// rounds, of the delivered rate and of the CPU each delivery took.
fn summary(rows: &[Row]) {
    let mut rate = Vec::new();
    let mut cpu = Vec::new();
    for pair in rows.windows(2) {
        let (raw, deferred) = (&pair[0], &pair[1]);
        if raw.name != RAW || deferred.name != DEFERRED {
            continue;
        }
        rate.push(deferred.window_rate() / raw.window_rate());
        if let (Some(d), Some(r)) = (deferred.cpu_per_delivery(), raw.cpu_per_delivery()) {
            cpu.push(d / r);
        }
    }
    let describe = |name: &str, v: &mut Vec<f64>| {
        if v.is_empty() {
            return;
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        println!(
            "\n{name}, deferred / raw over {} rounds: median {:.1}%, range {:.1}%-{:.1}%",
            v.len(),
            100.0 * median,
            100.0 * v[0],
            100.0 * v[v.len() - 1],
        );
    };
    describe("delivered/s in window", &mut rate);
    describe("CPU per delivery", &mut cpu);
}

/// User plus system CPU time of this process (client and mock server alike), from
/// `/proc/self/stat` in clock ticks of 10 ms; `None` where there is no procfs.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
