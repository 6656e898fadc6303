//! Runs the mock rate-limited API on its own, for trying clients by hand.
//!
//! ```text
//! cargo run --example mock_server --features mock
//! cargo run --example mock_server --features mock -- --port 8080 --rate 10 --burst 20
//! cargo run --example mock_server --features mock -- --rate 100 --window 10 --fail-ratio 0.1
//! cargo run --example mock_server --features mock -- --unattributed-ratio 0.05 --bad-input-marker invalid
//! ```
//!
//! With no options it enforces Customer.io's published Track API limit, 100 requests per
//! second, answering `429` with `Retry-After`, so a client pointed at it meets what the crate
//! is for. `--rate R --burst B`: token bucket, R per second, burst B. `--rate N --window S`:
//! sliding window, at most N in any S seconds. `--rate` alone: sliding window of R per 1 s.
//! `--unlimited`: no limit.
//!
//! Every vendor batch route is served on its usual path and answers in the vendor's shape:
//! HubSpot `/crm/v3/objects/{type}/batch/{upsert,create,update}`, Customer.io
//! `/api/v2/batch`, Braze `/users/track`, Mailchimp `/3.0/batches` (then
//! `GET /3.0/batches/{id}` and its results) and `/3.0/lists/{list_id}`. Any other path
//! answers `200 {"ok":true,...}`. The fault flags (`--help` lists them) inject each answer
//! shape a client must get right.
//!
//! Prints the URL and the limit, then a line of counters whenever they changed (nothing
//! while idle); Ctrl-C stops it gracefully.

use std::time::Duration;

use tower_throttle::mock::{BatchEndpoint, MockServer, MockStats, RateHeaders, ServerLimit};
use tower_throttle::presets::CUSTOMERIO_TRACK_PER_SECOND;

#[derive(Debug, Default)]
struct Args {
    port: u16,
    rate: Option<f64>,
    burst: Option<u32>,
    window_secs: Option<f64>,
    unlimited: bool,
    fail_ratio: f64,
    latency_ms: u64,
    seed: Option<u64>,
    item_fail_ratio: f64,
    item_reject_ratio: f64,
    item_429_ratio: f64,
    item_retry_after_secs: Option<u64>,
    unattributed_ratio: f64,
    errors_in_ok_ratio: f64,
    bad_input_marker: Option<String>,
    timeout_ratio: f64,
    silence_secs: u64,
}

/// The command line; `--help` prints it and exits 0.
fn cli() -> clap::Command {
    use clap::{value_parser, Arg, ArgAction, Command};
    let opt = |name: &'static str, value: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name(value).help(help)
    };
    let ratio = |name: &'static str, help: &'static str| {
        opt(name, "F", help)
            .value_parser(value_parser!(f64))
            .default_value("0")
    };
    Command::new("mock_server")
        .about("The mock rate-limited API on its own, for trying clients by hand")
        .arg(
            opt("port", "P", "port to listen on (0: any free one)")
                .value_parser(value_parser!(u16))
                .default_value("0"),
        )
        .arg(
            opt(
                "rate",
                "R",
                "limit: R per second (sliding window of 1 s alone); default: Customer.io's 100/s",
            )
            .value_parser(value_parser!(f64)),
        )
        .arg(
            opt("burst", "B", "with --rate: a token bucket with this burst")
                .value_parser(value_parser!(u32))
                .conflicts_with("window"),
        )
        .arg(
            opt(
                "window",
                "SECS",
                "with --rate: at most R in any SECS seconds",
            )
            .value_parser(value_parser!(f64)),
        )
        .arg(
            Arg::new("unlimited")
                .long("unlimited")
                .action(ArgAction::SetTrue)
                .conflicts_with_all(["rate", "burst", "window"])
                .help("no limit at all"),
        )
        .arg(ratio("fail-ratio", "share of requests answered 503"))
        .arg(
            opt("latency-ms", "MS", "added to every answer")
                .value_parser(value_parser!(u64))
                .default_value("0"),
        )
        .arg(opt("seed", "N", "seed of every draw").value_parser(value_parser!(u64)))
        .arg(ratio(
            "item-fail-ratio",
            "share of batch items failed transiently",
        ))
        .arg(ratio(
            "item-reject-ratio",
            "share of batch items rejected permanently",
        ))
        .arg(ratio(
            "item-429-ratio",
            "share of batch items refused with a rate limit (HubSpot RATE_LIMITS) in a 207",
        ))
        .arg(
            opt(
                "item-retry-after-secs",
                "SECS",
                "Retry-After on 207s that carry item-level rate limits",
            )
            .value_parser(value_parser!(u64)),
        )
        .arg(ratio(
            "unattributed-ratio",
            "share of HubSpot inputs failed by an error without objectWriteTraceId",
        ))
        .arg(ratio(
            "errors-in-ok-ratio",
            "share of Customer.io batches with failed items answered 200 (not 207)",
        ))
        .arg(opt(
            "bad-input-marker",
            "TEXT",
            "a batch with an input containing TEXT is refused as a whole with 400",
        ))
        .arg(ratio(
            "timeout-after-apply-ratio",
            "share of batches applied and then left unanswered for --silence-secs",
        ))
        .arg(
            opt(
                "silence-secs",
                "SECS",
                "how long a withheld answer stays silent",
            )
            .value_parser(value_parser!(u64))
            .default_value("120"),
        )
}

fn parse_args() -> Args {
    let m = cli().get_matches();
    let ratio = |name: &str| *m.get_one::<f64>(name).expect("has a default");
    Args {
        port: *m.get_one("port").expect("has a default"),
        rate: m.get_one("rate").copied(),
        burst: m.get_one("burst").copied(),
        window_secs: m.get_one("window").copied(),
        unlimited: m.get_flag("unlimited"),
        fail_ratio: ratio("fail-ratio"),
        latency_ms: *m.get_one("latency-ms").expect("has a default"),
        seed: m.get_one("seed").copied(),
        item_fail_ratio: ratio("item-fail-ratio"),
        item_reject_ratio: ratio("item-reject-ratio"),
        item_429_ratio: ratio("item-429-ratio"),
        item_retry_after_secs: m.get_one("item-retry-after-secs").copied(),
        unattributed_ratio: ratio("unattributed-ratio"),
        errors_in_ok_ratio: ratio("errors-in-ok-ratio"),
        bad_input_marker: m.get_one::<String>("bad-input-marker").cloned(),
        timeout_ratio: ratio("timeout-after-apply-ratio"),
        silence_secs: *m.get_one("silence-secs").expect("has a default"),
    }
}

/// The limit asked for, and a line saying where it comes from.
fn limit(args: &Args) -> Result<(ServerLimit, &'static str), Box<dyn std::error::Error>> {
    Ok(match (args.rate, args.burst, args.window_secs) {
        _ if args.unlimited => (ServerLimit::unlimited(), "--unlimited"),
        (None, None, None) => (
            ServerLimit::sliding_window(CUSTOMERIO_TRACK_PER_SECOND, Duration::from_secs(1))?,
            "Customer.io's published Track API limit; --rate or --unlimited to change it",
        ),
        (Some(rate), Some(burst), None) => (ServerLimit::token_bucket(rate, burst)?, "--rate"),
        (Some(rate), None, window) => {
            // A window counts whole requests; a fractional count would be silently floored.
            if rate.fract() != 0.0 || rate < 1.0 || rate > f64::from(u32::MAX) {
                return Err(format!("a window needs a whole --rate, got {rate}").into());
            }
            let secs = window.unwrap_or(1.0);
            let period =
                Duration::try_from_secs_f64(secs).map_err(|e| format!("--window {secs}: {e}"))?;
            (ServerLimit::sliding_window(rate as u32, period)?, "--rate")
        }
        (None, _, _) => return Err("--burst and --window need --rate".into()),
        (Some(_), Some(_), Some(_)) => return Err("give --burst or --window, not both".into()),
    })
}

/// The counters a status line shows; a line is printed only when one of them moved.
fn counters(s: &MockStats) -> [u64; 9] {
    [
        s.received,
        s.accepted,
        s.rate_limited,
        s.failed,
        s.invalid,
        s.items_received,
        s.records_applied(),
        s.records_written_twice(),
        s.answers_withheld,
    ]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let (limit, why) = limit(&args)?;
    let hubspot = BatchEndpoint::hubspot();
    let mut builder = MockServer::builder()
        .port(args.port)
        .limit(limit)
        .rate_headers(RateHeaders::Both)
        .fail_ratio(args.fail_ratio)
        .latency(Duration::from_millis(args.latency_ms))
        .batch_route("/crm/v3/objects/{type}/batch/upsert", hubspot)
        .batch_route("/crm/v3/objects/{type}/batch/create", hubspot)
        .batch_route("/crm/v3/objects/{type}/batch/update", hubspot)
        .batch_route("/api/v2/batch", BatchEndpoint::customerio())
        .batch_route("/users/track", BatchEndpoint::braze())
        .batch_route("/3.0/batches", BatchEndpoint::mailchimp())
        .batch_route("/3.0/lists/{list_id}", BatchEndpoint::mailchimp_list())
        .item_fail_ratio(args.item_fail_ratio)
        .item_reject_ratio(args.item_reject_ratio)
        .item_rate_limit_ratio(args.item_429_ratio)
        .unattributed_error_ratio(args.unattributed_ratio)
        .errors_in_ok_ratio(args.errors_in_ok_ratio)
        .timeout_after_apply(args.timeout_ratio, Duration::from_secs(args.silence_secs));
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    if let Some(secs) = args.item_retry_after_secs {
        builder = builder.item_retry_after(Duration::from_secs(secs));
    }
    if let Some(marker) = &args.bad_input_marker {
        builder = builder.bad_input_marker(marker.clone());
    }
    let server = builder.start().await?;
    println!("mock API at {}", server.url("/"));
    let retry_after = if limit.is_unlimited() {
        ""
    } else {
        "; 429s carry Retry-After"
    };
    println!("limit: {limit} ({why}){retry_after}");
    println!(
        "batch routes: /crm/v3/objects/{{type}}/batch/{{upsert,create,update}}, /api/v2/batch, \
         /users/track, /3.0/batches, /3.0/lists/{{list_id}}"
    );

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = counters(&server.stats());
    let mut last_accepted = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = server.stats();
                let now = counters(&s);
                if now == last {
                    continue;
                }
                println!(
                    "received {:>8}  accepted {:>8} (+{:>5})  429 {:>8}  503 {:>8}  400 {:>6}  \
                     records {:>8} (twice {:>4})  withheld {:>4}  in flight {:>4}",
                    s.received,
                    s.accepted,
                    s.accepted - last_accepted,
                    s.rate_limited,
                    s.failed,
                    s.invalid,
                    s.records_applied(),
                    s.records_written_twice(),
                    s.answers_withheld,
                    s.in_flight,
                );
                last = now;
                last_accepted = s.accepted;
            }
            res = tokio::signal::ctrl_c() => {
                res?;
                break;
            }
        }
    }
    println!("shutting down");
    server.shutdown().await;
    let s = server.stats();
    println!(
        "done: received {}, accepted {}, rate limited {}, failed {}, records applied {} ({} written twice)",
        s.received,
        s.accepted,
        s.rate_limited,
        s.failed,
        s.records_applied(),
        s.records_written_twice()
    );
    Ok(())
}
