//! Prints how each adaptive controller does against hidden limits, in virtual time.
//!
//! ```text
//! cargo run --release --example adaptive_table --features mock
//! ```
//!
//! Every run is paused tokio time (60 s, or 40 s for the leaky bucket) with closed-loop
//! workers and 20 ms latency, so the whole table takes a few seconds and is the same on every
//! machine.

use std::time::Duration;

use tower_throttle::adaptive::sim::{self, secs, Report, Scenario};
use tower_throttle::{adaptive::RateController, Aimd, Cubic, HeaderDriven, Probe};

/// A controller to compare, whether the server sends rate headers for it, and its factory
/// taking `(start, min, max)`.
type Entry = (
    &'static str,
    bool,
    fn(f64, f64, f64) -> Box<dyn RateController>,
);

fn controllers() -> [Entry; 4] {
    [
        ("AIMD", false, |s, lo, hi| {
            Box::new(Aimd::new(s, lo, hi).unwrap())
        }),
        ("header-driven", true, |s, lo, hi| {
            Box::new(HeaderDriven::new(s, lo, hi).unwrap())
        }),
        ("cubic", false, |s, lo, hi| {
            Box::new(Cubic::new(s, lo, hi).unwrap())
        }),
        ("probe", false, |s, lo, hi| {
            Box::new(Probe::new(s, lo, hi).unwrap())
        }),
    ]
}

fn row(controller: &str, label: &str, r: &Report) {
    let drops: Vec<String> = r.under_after_drop.iter().map(|d| secs(*d)).collect();
    println!(
        "| {controller:<13} | {label:<32} | {:>6.1}% | {:>6.1}% | {:>5.2}% | {:>8} | {:>8} | {:>8} | {:>6} / {:>6} / {:>5} |",
        r.goodput_pct,
        r.goodput_all_pct,
        r.throttled_pct,
        secs(r.converge),
        secs(r.settled),
        if drops.is_empty() { "n/a".to_owned() } else { drops.join(",") },
        r.stats.received,
        r.stats.accepted,
        r.stats.throttled,
    );
}

/// A row label, its scenario and the controller's `(start, min, max)` for it.
type Row = (String, Scenario, f64, f64, f64);

/// Every scenario of the table with the controller's `(start, min, max)` for it.
fn scenarios(headers: bool) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let mut all: Vec<Row> = sim::standard_scenarios(headers)?
        .into_iter()
        .map(|s| (s.name.clone(), s, 5.0, 0.5, 1000.0))
        .collect();
    let leaky = sim::leaky_bucket()?.with_server(|b| b.rate_headers(headers));
    for start in [20.0, 60.0] {
        all.push((
            format!("{}, from {start}/s", leaky.name),
            leaky.clone(),
            start,
            1.0,
            200.0,
        ));
    }
    // Loopback has no latency: the same bucket with answers at once.
    let instant = leaky.clone().with_server(|b| b.latency(Duration::ZERO));
    for start in [20.0, 60.0] {
        all.push((
            format!("{}, from {start}/s, 0 ms", leaky.name),
            instant.clone(),
            start,
            1.0,
            200.0,
        ));
    }
    let storms = sim::periodic_storms()?.with_server(|b| b.rate_headers(headers));
    all.push((
        format!("{}, from 100/s", storms.name),
        storms,
        100.0,
        1.0,
        1000.0,
    ));
    Ok(all)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let only = std::env::args().nth(1);
    println!("| controller    | hidden limit                     | goodput | (all)   | 429s   | converge | settled  | under after drop | sent / ok / 429 |");
    println!("|---------------|----------------------------------|---------|---------|--------|----------|----------|------------------|-----------------|");
    for (name, headers, make) in controllers() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        for (label, scenario, start, min, max) in scenarios(headers)? {
            let report = rt.block_on(sim::run(&scenario, make(start, min, max)))?;
            row(name, &label, &report);
        }
    }
    Ok(())
}
