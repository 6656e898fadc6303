//! Goodput against the mock API, side by side: this crate's stack, a plain governor gate, and
//! the naive sleep-on-429 loop, in three scenarios. Prints a Markdown table (BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release -p tower-throttle-benches --example goodput        # 10 s per row
//! cargo run --release -p tower-throttle-benches --example goodput -- --secs 30
//! cargo run --release -p tower-throttle-benches --example goodput -- --secs 40 --scenario leaky20 --contender tower-throttle
//! cargo run --release -p tower-throttle-benches --example goodput -- --scenario hidden --contender tower-throttle --plot run.svg
//! ```
//!
//! * **known**: the server allows 100/s (token bucket, burst 10) and the client is told so.
//! * **hidden**: the server allows 100/s (sliding window) and the client is not told; ours
//!   learns it with the adaptive layer from a start of 20/s, governor is configured at a
//!   guess of 150/s, the naive loop has no gate.
//! * **503s**: as *known*, with 10% of requests failed with 503.
//! * **leaky from 20/s**, **leaky from 60/s**: a hidden leaky bucket of 37/s with a burst of
//!   5 and 20 workers; ours learns it with `Probe` started at 20/s or 60/s (bounds 1 to 200,
//!   limits 200/s), governor guesses 40/s. Run them for 40 s (`--secs 40`): the issue's
//!   targets are at least 95% after 10 s, 90% over the run, at most 2% 429s.
//!
//! Every contender runs 32 concurrent workers for `--secs`, each sending a request, handling
//! the answer, and sending the next. Goodput is delivered requests per second over the run
//! as a share of the server's limit (and the same from 10 s on, once an adaptive client has
//! found the limit); "lost" counts requests that ended without delivery. The run's elapsed
//! time includes the workers' last requests after the stop (a retry waiting out a hold there
//! adds up to a second), so each row also prints, on stderr, what the server accepted within
//! the run itself, as the simulation counts it.
//!
//! `--plot FILE.svg` writes a picture of each row (`examples/support/plot.rs`, shared with
//! `bulk_import`): with one row selected to `FILE.svg`, with several to `FILE-SCENARIO-CONTENDER.svg`.
//! Here every record is one request, and the adaptive controller's rate is the gate's.

#[path = "../../examples/support/plot.rs"]
mod plot;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{Quota as GovQuota, RateLimiter};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceExt};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{backoff::Backoff, retry::Attempts, Quota, RetryPolicy, Throttle};
use tower_throttle::{bucket::Bucket, Probe};

const LIMIT: u32 = 100;
const WORKERS: usize = 32;
const WARMUP: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Known,
    Hidden,
    Failures,
    Leaky20,
    Leaky60,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Known => "known limit",
            Scenario::Hidden => "hidden limit",
            Scenario::Failures => "known limit, 10% 503s",
            Scenario::Leaky20 => "leaky 37/s burst 5, from 20/s",
            Scenario::Leaky60 => "leaky 37/s burst 5, from 60/s",
        }
    }

    fn limit(self) -> f64 {
        match self {
            Scenario::Leaky20 | Scenario::Leaky60 => 37.0,
            _ => f64::from(LIMIT),
        }
    }

    fn workers(self) -> usize {
        match self {
            Scenario::Leaky20 | Scenario::Leaky60 => 20,
            _ => WORKERS,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Scenario::Known => "known",
            Scenario::Hidden => "hidden",
            Scenario::Failures => "503s",
            Scenario::Leaky20 => "leaky20",
            Scenario::Leaky60 => "leaky60",
        }
    }

    async fn server(self) -> Result<MockServer, BoxError> {
        let limit = match self {
            Scenario::Hidden => ServerLimit::sliding_window(LIMIT, Duration::from_secs(1))?,
            Scenario::Leaky20 | Scenario::Leaky60 => ServerLimit::token_bucket(37.0, 5)?,
            _ => ServerLimit::token_bucket(f64::from(LIMIT), 10)?,
        };
        let fail = if self == Scenario::Failures { 0.1 } else { 0.0 };
        Ok(MockServer::builder()
            .limit(limit)
            .retry_after(RetryAfterFormat::Seconds)
            .fail_ratio(fail)
            .start()
            .await?)
    }
}

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    /// Delivered once the first `WARMUP` had passed (what a long run converges to).
    delivered_warm: AtomicU64,
    lost: AtomicU64,
    attempts: AtomicU64,
}

fn request(uri: &http::Uri, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::post(uri.clone())
        .header("x-request-id", id.to_string())
        .body(Full::new(Bytes::from_static(b"{\"event\":\"signup\"}")))
        .expect("valid request")
}

/// Runs `WORKERS` closed-loop workers for `secs`; each calls `send` for one request and
/// returns (delivered, attempts).
async fn drive<F, Fut>(secs: u64, workers: usize, send: F) -> (Tally, Duration)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (bool, u64)> + Send,
{
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (tally, stop, next, send) = (tally.clone(), stop.clone(), next.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (ok, attempts) = send(id).await;
                tally.attempts.fetch_add(attempts, Ordering::Relaxed);
                if ok {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() >= WARMUP {
                        tally.delivered_warm.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("worker panicked");
    }
    let elapsed = started.elapsed();
    (Arc::try_unwrap(tally).unwrap_or_default(), elapsed)
}

/// The naive recipe: on 429 sleep `Retry-After` and try again; anything else is final.
async fn naive_send(client: HttpClient, uri: http::Uri, id: u64) -> (bool, u64) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client.clone().oneshot(request(&uri, id)).await {
            Ok(res) if res.status() == 429 => {
                let wait = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Ok(res) => return (res.status().is_success(), attempts),
            Err(_) => return (false, attempts),
        }
    }
}

/// With `GOODPUT_TRACE` set: the bucket's rate every 100 ms on stderr, where it changed, to see
/// how a run found its limit.
fn trace_rate<S, C>(stack: &Throttle<S, C>, secs: u64) {
    let Some(bucket) = stack.bucket().cloned() else {
        return;
    };
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut last = 0.0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while start.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let rate = bucket.rate();
            if (rate - last).abs() > 0.05 {
                eprintln!("trace {:.1} s: {rate:.1}/s", start.elapsed().as_secs_f64());
                last = rate;
            }
        }
    });
}

async fn row(
    scenario: Scenario,
    contender: &str,
    secs: u64,
    plot_to: Option<&Path>,
) -> Result<String, BoxError> {
    let server = scenario.server().await?;
    let uri = server.uri("/v1/track");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let rates = plot::Rates::default();
    let read = || {
        let s = server.stats();
        plot::Counts {
            records: s.accepted,
            requests: s.received,
            rate_limited: s.rate_limited,
            unavailable: s.failed,
            gate_rate: rates.read().0,
            adaptive_rate: None,
        }
    };
    let run = async {
        Ok::<_, BoxError>(match contender {
            "tower-throttle" => {
                let backoff = Backoff::builder()
                    .base(Duration::from_millis(100))
                    .build()?;
                let builder =
                    Throttle::builder().retry(RetryPolicy::default().with_backoff(backoff));
                let stack = match scenario {
                    // Told nothing: start low and let the adaptive layer find the limit.
                    Scenario::Hidden => builder
                        .limits(Quota::per_second(1_000)?)
                        .adaptive(Probe::new(20.0, 1.0, 1_000.0)?)
                        .build(client)?,
                    Scenario::Leaky20 | Scenario::Leaky60 => {
                        let start = if scenario == Scenario::Leaky20 {
                            20.0
                        } else {
                            60.0
                        };
                        builder
                            .limits(Quota::per_second(200)?)
                            .adaptive(Probe::new(start, 1.0, 200.0)?)
                            .build(client)?
                    }
                    _ => builder.limits(Quota::per_second(LIMIT)?).build(client)?,
                };
                if std::env::var_os("GOODPUT_TRACE").is_some() {
                    trace_rate(&stack, secs);
                }
                if let Some(bucket) = stack.bucket().cloned() {
                    rates.set(move || (Some(bucket.rate()), None));
                }
                drive(secs, scenario.workers(), move |id| {
                    let (stack, uri) = (stack.clone(), uri.clone());
                    async move {
                        match stack.oneshot(request(&uri, id)).await {
                            Ok(res) => {
                                let attempts =
                                    res.extensions().get::<Attempts>().map_or(1, |a| a.0);
                                (res.status().is_success(), u64::from(attempts))
                            }
                            Err(_) => (false, 1),
                        }
                    }
                })
                .await
            }
            "governor" => {
                let rate = match scenario {
                    Scenario::Hidden => 150,
                    Scenario::Leaky20 | Scenario::Leaky60 => 40,
                    _ => LIMIT,
                };
                rates.set(move || (Some(f64::from(rate)), None));
                let limiter = Arc::new(RateLimiter::direct(GovQuota::per_second(
                    NonZeroU32::new(rate).expect("non-zero"),
                )));
                drive(secs, scenario.workers(), move |id| {
                    let (client, uri, limiter) = (client.clone(), uri.clone(), limiter.clone());
                    async move {
                        limiter.until_ready().await;
                        naive_send(client, uri, id).await
                    }
                })
                .await
            }
            _ => {
                drive(secs, scenario.workers(), move |id| {
                    naive_send(client.clone(), uri.clone(), id)
                })
                .await
            }
        })
    };
    let (run, samples) = plot::record(plot_to.is_some(), read, run).await;
    let (tally, elapsed) = run?;
    if let Some(path) = plot_to {
        let title = format!("goodput: {} / {contender}", scenario.name());
        plot::Chart {
            title: &title,
            limit: scenario.limit(),
            records_bound: scenario.limit(),
            samples: &samples,
        }
        .write(path)?;
        eprintln!("plot: {}", path.display());
    }
    let stats = server.stats();
    let run = Duration::from_secs(secs);
    let in_run = server
        .accepted_times()
        .iter()
        .filter(|t| **t <= run)
        .count();
    eprintln!(
        "{} / {contender}: the server accepted {in_run} in the first {secs} s, {:.1}% of the limit",
        scenario.name(),
        100.0 * in_run as f64 / (scenario.limit() * secs as f64),
    );
    server.shutdown().await;
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let attempts = tally.attempts.load(Ordering::Relaxed).max(1);
    let goodput = delivered as f64 / elapsed.as_secs_f64();
    let warm = elapsed.saturating_sub(WARMUP).as_secs_f64();
    let warm_goodput = if warm > 0.0 {
        format!(
            "{:.1}%",
            100.0 * tally.delivered_warm.load(Ordering::Relaxed) as f64 / warm / scenario.limit()
        )
    } else {
        "-".to_string()
    };
    Ok(format!(
        "| {} | {} | {:.1}/s | {:.1}% | {} | {:.2}% | {} | {:.3} |",
        scenario.name(),
        contender,
        goodput,
        100.0 * goodput / scenario.limit(),
        warm_goodput,
        100.0 * stats.rate_limited as f64 / stats.received.max(1) as f64,
        tally.lost.load(Ordering::Relaxed),
        attempts as f64 / (delivered + tally.lost.load(Ordering::Relaxed)).max(1) as f64,
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let matches = clap::Command::new("goodput")
        .about("Goodput of the stacks against the mock API's known and hidden limits")
        .arg(
            clap::Arg::new("secs")
                .long("secs")
                .value_name("N")
                .value_parser(clap::value_parser!(u64).range(1..))
                .default_value("10")
                .help("seconds per row"),
        )
        .arg(
            clap::Arg::new("scenario")
                .long("scenario")
                .value_name("NAME")
                .value_parser(["known", "hidden", "503s", "leaky20", "leaky60"])
                .help("run one scenario only"),
        )
        .arg(
            clap::Arg::new("contender")
                .long("contender")
                .value_name("NAME")
                .value_parser(["tower-throttle", "governor", "naive"])
                .help("run one contender only"),
        )
        .arg(
            clap::Arg::new("plot")
                .long("plot")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("write a picture of each row as SVG (e.g. run.svg)"),
        )
        .get_matches();
    let plot_to: Option<PathBuf> = matches.get_one::<PathBuf>("plot").cloned();
    let secs: u64 = *matches.get_one("secs").expect("has a default");
    let only: Option<String> = matches.get_one::<String>("scenario").cloned();
    let contender_only: Option<String> = matches.get_one::<String>("contender").cloned();
    println!("{WORKERS} workers (20 for leaky rows), {secs} s per row, server limit {LIMIT}/s (37/s for leaky rows)\n");
    println!(
        "| scenario | contender | goodput | of limit | of limit after 10 s | 429s | lost | attempts/request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let all = [
        Scenario::Known,
        Scenario::Hidden,
        Scenario::Failures,
        Scenario::Leaky20,
        Scenario::Leaky60,
    ];
    let contenders = ["tower-throttle", "governor", "naive"];
    let rows: Vec<(Scenario, &str)> = all
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.flag()))
        .flat_map(|s| contenders.map(|c| (s, c)))
        .filter(|(_, c)| contender_only.as_deref().is_none_or(|o| o == *c))
        .collect();
    let several = rows.len() > 1;
    for (scenario, contender) in rows {
        // One file per row when several run: FILE-SCENARIO-CONTENDER.svg.
        let path = plot_to.as_ref().map(|p| {
            if several {
                let stem = p.file_stem().unwrap_or_default().to_string_lossy();
                let ext = p
                    .extension()
                    .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
                p.with_file_name(format!("{stem}-{}-{contender}{ext}", scenario.flag()))
            } else {
                p.clone()
            }
        });
        println!("{}", row(scenario, contender, secs, path.as_deref()).await?);
    }
    Ok(())
}
