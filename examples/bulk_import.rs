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
//! cargo run --release --example bulk_import --features mock -- --faults
//! cargo run --release --example bulk_import --features mock -- --plot run.svg
//! ```
//!
//! `--faults` makes the mock answer batches the ways vendors do when things go wrong: errors
//! inside a 200, a whole batch refused for one bad user (one in `--bad-every` users has an
//! invalid email), an answer lost after the batch was applied. The summary says how many
//! *valid* users were dead-lettered: 0 is the claim.
//!
//! The mock API enforces `--rate` requests per second per workspace as a sliding window (like
//! Customer.io's Track API), for single and batch calls alike; answers 429 with `Retry-After`
//! beyond it; fails `--fail-ratio` of requests with 503 and, inside accepted batches,
//! `--item-fail-ratio` of the users transiently (a 207 naming them). `--plot FILE` writes a
//! picture of the run (records/s, 429s and 503s, the gate's and the adaptive rate, the limit)
//! as an SVG (`examples/support/plot.rs`).

#[path = "support/plot.rs"]
mod plot;

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{BatchEndpoint, MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{
    backoff::Backoff, bucket::Bucket as _, dead_letter::DeadLetterStore, metrics::Stats, run_bulk,
    AdaptiveLayer, BulkOptions, BulkReport, DeadLetterLayer, FileStore, LocalBucket, Progress,
    QueueLayer, Quota, RateLimitLayer, RetryLayer, RetryPolicy, Throttle,
};
use tower_throttle::{batch::CustomerIoBatch, BatchLayer};

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
    faults: bool,
    bad_every: u64,
    /// `--plot`: where the picture of the run goes.
    plot: Option<std::path::PathBuf>,
}

/// How often the plain progress line is printed when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The command line; `--help` prints it (and exits 0), a bad value names the flag.
fn cli() -> clap::Command {
    use clap::{value_parser, Arg, ArgAction, Command};
    let ratio = |s: &str| -> Result<f64, String> {
        let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
        (0.0..=1.0)
            .contains(&v)
            .then_some(v)
            .ok_or_else(|| "a share from 0 to 1".to_string())
    };
    Command::new("bulk_import")
        .about("Import users into a mock Customer.io-like API")
        .arg(
            Arg::new("count")
                .long("count")
                .value_name("N")
                .value_parser(value_parser!(u64).range(1..))
                .default_value("10000")
                .help("users to import"),
        )
        .arg(
            Arg::new("rate")
                .long("rate")
                .value_name("R")
                .value_parser(value_parser!(u32).range(1..))
                .default_value("100")
                .help("the mock API's limit, requests/s"),
        )
        .arg(
            Arg::new("batch-size")
                .long("batch-size")
                .value_name("B")
                .value_parser(value_parser!(usize))
                .default_value("100")
                .help("users per batch call"),
        )
        .arg(
            Arg::new("fail-ratio")
                .long("fail-ratio")
                .value_name("F")
                .value_parser(ratio)
                .default_value("0.02")
                .help("share of requests answered 503"),
        )
        .arg(
            Arg::new("item-fail-ratio")
                .long("item-fail-ratio")
                .value_name("F")
                .value_parser(ratio)
                .default_value("0.01")
                .help("share of users failed in a batch"),
        )
        .arg(
            Arg::new("faults")
                .long("faults")
                .action(ArgAction::SetTrue)
                .conflicts_with_all(["no-batch", "naive"])
                .help("vendor batch faults: errors in a 200, a batch refused for one bad user, lost answers"),
        )
        .arg(
            Arg::new("bad-every")
                .long("bad-every")
                .value_name("N")
                .value_parser(value_parser!(u64).range(1..))
                .default_value("20000")
                .help("with --faults: one user in N has an invalid email"),
        )
        .arg(
            Arg::new("no-batch")
                .long("no-batch")
                .action(ArgAction::SetTrue)
                .conflicts_with("naive")
                .help("one user per request, same stack"),
        )
        .arg(
            Arg::new("naive")
                .long("naive")
                .action(ArgAction::SetTrue)
                .help("the sleep-on-429 loop, one per request"),
        )
        .arg(
            Arg::new("plot")
                .long("plot")
                .value_name("FILE")
                .value_parser(value_parser!(std::path::PathBuf))
                .help("write a picture of the run as SVG (e.g. run.svg)"),
        )
}

fn parse_args() -> Args {
    let m = cli().get_matches();
    let mode = if m.get_flag("naive") {
        Mode::Naive
    } else if m.get_flag("no-batch") {
        Mode::OnePerRequest
    } else {
        Mode::Batched
    };
    Args {
        count: *m.get_one("count").expect("has a default"),
        rate: *m.get_one("rate").expect("has a default"),
        batch_size: *m.get_one("batch-size").expect("has a default"),
        fail_ratio: *m.get_one("fail-ratio").expect("has a default"),
        item_fail_ratio: *m.get_one("item-fail-ratio").expect("has a default"),
        mode,
        faults: m.get_flag("faults"),
        bad_every: *m.get_one("bad-every").expect("has a default"),
        plot: m.get_one("plot").cloned(),
    }
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

/// The same user as a v2 entity, the item of a `/api/v2/batch` call; `bad` users carry an
/// email the (faulty) mock refuses the whole batch for.
fn user_entity(server: &MockServer, id: u64, bad: bool) -> http::Request<Full<Bytes>> {
    let email = if bad {
        format!("invalid-{id}@example")
    } else {
        format!("user{id}@example.com")
    };
    http::Request::put(server.uri(&format!("/api/v1/customers/{id}")))
        .header("authorization", "Basic c2l0ZV9pZDphcGlfa2V5")
        .body(Full::new(Bytes::from(format!(
            "{{\"type\":\"person\",\"identifiers\":{{\"id\":\"{id}\"}},\"action\":\"identify\",\
             \"attributes\":{{\"email\":\"{email}\",\"plan\":\"pro\"}}}}"
        ))))
        .expect("valid request")
}

/// Whether user `id` is one of the invalid ones of a `--faults` run.
fn is_bad(args: &Args, id: u64) -> bool {
    args.faults && id % args.bad_every == args.bad_every / 2
}

/// A bar on a terminal; nothing when stdout is a pipe, a file or a CI log (the plain lines of
/// [`Reporter`] go there instead).
fn progress_bar(count: u64) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(count);
    // 24 + 1 + 11 + 1 + a message of at most about 40 columns: within 80 for 10,000 users.
    // The ETA is the message's (`Progress::eta_label`), not indicatif's, which reads "0s"
    // while the last retries wait out their backoff.
    bar.set_style(
        ProgressStyle::with_template("{bar:24} {pos}/{len} {msg}").expect("valid template"),
    );
    bar
}

/// Shows progress: the bar on a terminal, else a plain line every [`PLAIN_EVERY`] and at
/// the end.
#[derive(Clone)]
struct Reporter {
    bar: ProgressBar,
    plain: bool,
    /// When the last plain line was printed, and at what count.
    last_line: Arc<Mutex<Option<(Duration, u64)>>>,
}

impl Reporter {
    fn new(count: u64) -> Self {
        Reporter {
            bar: progress_bar(count),
            plain: !std::io::stdout().is_terminal(),
            last_line: Arc::default(),
        }
    }

    fn update(&self, p: &Progress) {
        self.bar.set_position(p.processed);
        self.bar.set_message(format!(
            "{:.0}/s {} failed {} dead-lettered {}",
            p.rate_per_sec,
            p.failed,
            p.dead_lettered,
            p.eta_label()
        ));
        if self.plain {
            let mut last = self.last_line.lock().expect("not poisoned");
            let (at, count) = last.unwrap_or_default();
            let due = p.elapsed.saturating_sub(at) >= PLAIN_EVERY;
            // The last job and the end of the run both report the final count: one line.
            let finished = p.remaining() == Some(0) && (last.is_none() || count != p.processed);
            if due || finished {
                *last = Some((p.elapsed, p.processed));
                println!("{p}");
            }
        }
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

/// What a run reports, whatever the mode.
struct Totals {
    delivered: u64,
    lost: u64,
    dead_lettered: u64,
    retries: u64,
    elapsed: Duration,
    /// What the mode has to say beyond the counts (batch calls, the adaptive rate, where
    /// the dead letters are), printed after them.
    notes: Vec<String>,
}

impl Totals {
    fn of(report: &BulkReport, retries: u64) -> Self {
        Totals {
            delivered: report.succeeded,
            lost: report.failed,
            dead_lettered: report.dead_lettered,
            retries,
            elapsed: report.elapsed,
            notes: Vec::new(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let args = parse_args();
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
        .item_fail_ratio(args.item_fail_ratio);
    let server = if args.faults {
        server
            .errors_in_ok_ratio(0.2)
            .bad_input_marker("invalid-")
            .timeout_after_apply(0.005, Duration::from_secs(60))
    } else {
        server
    };
    let server = server.start().await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let per_request = if args.mode == Mode::Batched {
        args.batch_size
    } else {
        1
    };
    // Two short lines rather than one of 130 columns.
    println!(
        "importing {} users into a mock API at {} requests/s (sliding window)",
        args.count, args.rate
    );
    println!(
        "{:.0}% of requests answered 503; {}",
        args.fail_ratio * 100.0,
        match args.mode {
            Mode::Batched if args.faults => format!(
                "batches of {}, {:.0}% of users failed in a batch; faults: errors in 20% of 200s, \
                 1 in {} users invalid, 0.5% of answers lost",
                args.batch_size,
                args.item_fail_ratio * 100.0,
                args.bad_every
            ),
            Mode::Batched => format!(
                "batches of {}, {:.0}% of users failed in a batch",
                args.batch_size,
                args.item_fail_ratio * 100.0
            ),
            Mode::OnePerRequest => "one user per request, full stack".into(),
            Mode::Naive => "the naive sleep-on-429 loop".into(),
        }
    );
    // `--plot`: the server's counters and the stack's rates, read while the import runs.
    let rates = plot::Rates::default();
    let read = || {
        let s = server.stats();
        let (gate_rate, adaptive_rate) = rates.read();
        plot::Counts {
            records: if args.mode == Mode::Batched {
                s.items_accepted
            } else {
                s.accepted
            },
            requests: s.received,
            rate_limited: s.rate_limited,
            unavailable: s.failed,
            gate_rate,
            adaptive_rate,
        }
    };
    let run = async {
        Ok::<_, tower::BoxError>(match args.mode {
            Mode::Batched => batched(&server, client, &args, &rates).await?,
            Mode::OnePerRequest => one_per_request(&server, client, &args, &rates).await?,
            Mode::Naive => naive(&server, client, args.count).await,
        })
    };
    let (totals, samples) = plot::record(args.plot.is_some(), read, run).await;
    let totals = totals?;
    let stats = server.stats();
    let secs = totals.elapsed.as_secs_f64();
    let records_per_sec = totals.delivered as f64 / secs;
    let bound = f64::from(args.rate) * per_request as f64;
    // Delivered and lost first: what a reader looks for.
    println!();
    println!("delivered        {}/{}", totals.delivered, args.count);
    println!("lost             {}", totals.lost);
    println!("dead letters     {}", totals.dead_lettered);
    println!("import time      {:.2?}", totals.elapsed);
    println!(
        "records/s        {records_per_sec:.0}, {:.1}% of the bound {bound:.0} ({} x {per_request})",
        100.0 * records_per_sec / bound,
        args.rate,
    );
    println!("retries          {}", totals.retries);
    println!(
        "server saw       {} requests: {} answered 429 ({:.2}%), {} answered 503",
        stats.received,
        stats.rate_limited,
        100.0 * stats.rate_limited as f64 / stats.received.max(1) as f64,
        stats.failed
    );
    if args.mode == Mode::Batched {
        println!(
            "users in batches {} ({} failed and re-batched), {} written, {} written twice",
            stats.items_received,
            stats.items_failed,
            stats.records_applied(),
            stats.records_written_twice()
        );
    }
    for note in &totals.notes {
        println!("{note}");
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "bulk_import: {} users, {} requests/s limit, {}",
            args.count,
            args.rate,
            match args.mode {
                Mode::Batched => format!("batches of {}", args.batch_size),
                Mode::OnePerRequest => "one user per request".into(),
                Mode::Naive => "naive sleep-on-429".into(),
            }
        );
        plot::Chart {
            title: &title,
            limit: f64::from(args.rate),
            records_bound: bound,
            samples: &samples,
        }
        .write(path)?;
        println!("plot             {}", path.display());
    }
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

/// Where the dead letters are, if any (else the file is removed).
async fn dead_letter_note(
    store: &FileStore,
    dir: &std::path::Path,
) -> Result<Option<String>, tower::BoxError> {
    let letters = store.len().await?;
    if letters > 0 {
        Ok(Some(format!(
            "dead letters in  {} (replay with tower_throttle::replay)",
            store.path().display()
        )))
    } else {
        let _ = std::fs::remove_dir_all(dir);
        Ok(None)
    }
}

fn bulk_options<B: 'static>(
    reporter: &Reporter,
    count: u64,
    concurrency: usize,
) -> BulkOptions<http::Response<B>> {
    let reporter = reporter.clone();
    BulkOptions::default()
        .concurrency(concurrency)
        .total(count)
        .on_progress(move |p| reporter.update(p))
}

/// Batches, through the one-call builder: dead letters per user above `.batch(..)`
/// (Customer.io v2 batches of `--batch-size`), retry holding the shared bucket for whole-batch
/// 429s and 503s, the gate at the known limit, a timeout per attempt.
async fn batched(
    server: &MockServer,
    client: HttpClient,
    args: &Args,
    rates: &plot::Rates,
) -> Result<Totals, tower::BoxError> {
    let (store, dir) = dead_letter_store().await?;
    let stats = Stats::new();
    // A known limit: pace at 95% of it, so latency jitter never puts one request too many
    // into the server's one-second window. Every call carries a whole batch, so no probing.
    let stack = Throttle::builder()
        .limits(Quota::per_second((args.rate * 19 / 20).max(1))?)
        .retry(
            RetryPolicy::default().with_backoff(
                Backoff::builder()
                    .base(Duration::from_millis(100))
                    .build()?,
            ),
        )
        // The mock answers within milliseconds on loopback: a batch silent for a quarter of a
        // second lost its answer (an upsert, so it is sent again).
        .timeout(Duration::from_millis(250))
        .stats(stats.clone())
        .dead_letters(store.clone())
        // Six sends per user: with 1% of users failed transiently in each batch, three sends
        // would lose one user in a million to bad luck.
        .batch(
            BatchLayer::new(CustomerIoBatch::new())
                .with_max_items(args.batch_size)?
                .with_max_item_attempts(6)?,
        )
        .build(client)?;
    let batch_stats = stack.batch_stats().clone();
    let gate = stack.bucket().expect("one shared bucket").clone();
    rates.set(move || (Some(gate.rate()), None));

    let reporter = Reporter::new(args.count);
    let jobs = stream::iter((0..args.count).map(|id| user_entity(server, id, is_bad(args, id))));
    // Enough users in flight to fill every batch the gate admits while others are answered.
    let concurrency = (args.batch_size * 20).max(64);
    let report = run_bulk(
        jobs,
        stack,
        bulk_options(&reporter, args.count, concurrency),
    )
    .await;
    reporter.finish();
    let mut totals = Totals::of(&report, stats.snapshot().retries());
    totals.notes.push(format!(
        "batch calls      {}, {} users re-batched, {} batches split to find a bad user",
        batch_stats.batches(),
        batch_stats.rebatched(),
        batch_stats.bisections()
    ));
    // A valid user in the dead letters is a user the vendor never refused: the claim is 0.
    let letters = store.list().await?;
    let valid = letters
        .iter()
        .filter(|l| !format!("{:?}", l.body).contains("invalid-"))
        .count();
    let bad = (0..args.count).filter(|&id| is_bad(args, id)).count();
    totals.notes.push(format!(
        "dead-lettered    {} invalid users (of {bad}), {valid} valid users",
        letters.len() - valid
    ));
    totals.notes.extend(dead_letter_note(&store, &dir).await?);
    Ok(totals)
}

/// One user per request: dead letters, retry holding the shared bucket, adaptive rate, the
/// gate, a queue.
async fn one_per_request(
    server: &MockServer,
    client: HttpClient,
    args: &Args,
    rates: &plot::Rates,
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
    let (gate, controller) = (bucket.clone(), adaptive.clone());
    rates.set(move || (Some(gate.rate()), Some(controller.rate())));
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

    let reporter = Reporter::new(args.count);
    let jobs = stream::iter((0..args.count).map(|id| user(server, id)));
    let report = run_bulk(jobs, stack, bulk_options(&reporter, args.count, 64)).await;
    reporter.finish();
    let snapshot = stats.snapshot();
    let mut totals = Totals::of(&report, snapshot.retries());
    totals.notes.push(format!(
        "adaptive rate    {:.1}/s at the end",
        adaptive.rate()
    ));
    totals.notes.push(format!(
        "run health       {}",
        if snapshot.health().is_healthy() {
            "healthy".to_string()
        } else {
            format!("{:?}", snapshot.health().issues())
        }
    ));
    totals.notes.extend(dead_letter_note(&store, &dir).await?);
    Ok(totals)
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
    // No bar to draw into a pipe or a log: a plain line every few seconds instead.
    let ticker = (!std::io::stdout().is_terminal()).then(|| {
        let (delivered, lost) = (delivered.clone(), lost.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(started + PLAIN_EVERY, PLAIN_EVERY);
            loop {
                let at = every.tick().await.duration_since(started);
                let (ok, gone) = (
                    delivered.load(Ordering::Relaxed),
                    lost.load(Ordering::Relaxed),
                );
                println!(
                    "[{}s] {}/{count} {:.0}/s {gone} lost",
                    at.as_secs(),
                    ok + gone,
                    (ok + gone) as f64 / at.as_secs_f64(),
                );
            }
        })
    });
    for t in tasks {
        let _ = t.await;
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    bar.finish();
    Totals {
        delivered: delivered.load(Ordering::Relaxed),
        lost: lost.load(Ordering::Relaxed),
        dead_lettered: 0,
        retries: retries.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        notes: Vec::new(),
    }
}
