//! Runs the mock rate-limited API on its own, for trying clients by hand.
//!
//! ```text
//! cargo run --example mock_server --features mock -- --port 8080 --rate 10 --burst 20
//! cargo run --example mock_server --features mock -- --rate 100 --window 10 --fail-ratio 0.1
//! ```
//!
//! `--rate R --burst B`: token bucket, R per second, burst B.
//! `--rate N --window S`: sliding window, at most N in any S seconds.
//! `--rate` alone: sliding window of R per 1 s. No `--rate`: unlimited.
//! Prints the URL, then the counters every second; Ctrl-C stops it gracefully.

use std::time::Duration;

use tower_throttle::mock::{MockServer, RateHeaders, ServerLimit};

#[derive(Debug, Default)]
struct Args {
    port: u16,
    rate: Option<f64>,
    burst: Option<u32>,
    window_secs: Option<f64>,
    fail_ratio: f64,
    latency_ms: u64,
    seed: Option<u64>,
}

/// The command line; `--help` prints it and exits 0.
fn cli() -> clap::Command {
    use clap::{value_parser, Arg, Command};
    let opt = |name: &'static str, value: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name(value).help(help)
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
                "limit: R per second (sliding window of 1 s alone)",
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
            opt("fail-ratio", "F", "share of requests answered 503")
                .value_parser(value_parser!(f64))
                .default_value("0"),
        )
        .arg(
            opt("latency-ms", "MS", "added to every answer")
                .value_parser(value_parser!(u64))
                .default_value("0"),
        )
        .arg(opt("seed", "N", "seed of the 503 draws").value_parser(value_parser!(u64)))
}

fn parse_args() -> Args {
    let m = cli().get_matches();
    Args {
        port: *m.get_one("port").expect("has a default"),
        rate: m.get_one("rate").copied(),
        burst: m.get_one("burst").copied(),
        window_secs: m.get_one("window").copied(),
        fail_ratio: *m.get_one("fail-ratio").expect("has a default"),
        latency_ms: *m.get_one("latency-ms").expect("has a default"),
        seed: m.get_one("seed").copied(),
    }
}

fn limit(args: &Args) -> Result<ServerLimit, Box<dyn std::error::Error>> {
    Ok(match (args.rate, args.burst, args.window_secs) {
        (None, None, None) => ServerLimit::unlimited(),
        (Some(rate), Some(burst), None) => ServerLimit::token_bucket(rate, burst)?,
        (Some(rate), None, window) => {
            // A window counts whole requests; a fractional count would be silently floored.
            if rate.fract() != 0.0 || rate < 1.0 || rate > f64::from(u32::MAX) {
                return Err(format!("a window needs a whole --rate, got {rate}").into());
            }
            let secs = window.unwrap_or(1.0);
            let period =
                Duration::try_from_secs_f64(secs).map_err(|e| format!("--window {secs}: {e}"))?;
            ServerLimit::sliding_window(rate as u32, period)?
        }
        (None, _, _) => return Err("--burst and --window need --rate".into()),
        (Some(_), Some(_), Some(_)) => return Err("give --burst or --window, not both".into()),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let limit = limit(&args)?;
    let mut builder = MockServer::builder()
        .port(args.port)
        .limit(limit)
        .rate_headers(RateHeaders::Both)
        .fail_ratio(args.fail_ratio)
        .latency(Duration::from_millis(args.latency_ms));
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    let server = builder.start().await?;
    println!("mock API at {} ({limit})", server.url("/"));

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_accepted = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = server.stats();
                println!(
                    "received {:>8}  accepted {:>8} (+{:>5}/s)  429 {:>8}  503 {:>8}  in flight {:>4}",
                    s.received,
                    s.accepted,
                    s.accepted - last_accepted,
                    s.rate_limited,
                    s.failed,
                    s.in_flight,
                );
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
        "done: received {}, accepted {}, rate limited {}, failed {}",
        s.received, s.accepted, s.rate_limited, s.failed
    );
    Ok(())
}
