//! Prints how each adaptive controller does against hidden limits, in virtual time.
//!
//! ```text
//! cargo run --example adaptive_table
//! ```
//!
//! Every run is 60 s of paused tokio time with 8 closed-loop workers and 20 ms latency, so
//! the whole table takes well under a second and is the same on every machine.

use tower_throttle::adaptive::sim::{self, secs, Report};
use tower_throttle::adaptive::{Aimd, Cubic, HeaderDriven, RateController};

const START: f64 = 5.0;
const MIN: f64 = 0.5;
const MAX: f64 = 1000.0;

/// A controller to compare, whether the server sends rate headers for it, and its factory.
type Entry = (&'static str, bool, fn() -> Box<dyn RateController>);

fn controllers() -> [Entry; 3] {
    [
        ("AIMD", false, || {
            Box::new(Aimd::new(START, MIN, MAX).unwrap())
        }),
        ("header-driven", true, || {
            Box::new(HeaderDriven::new(START, MIN, MAX).unwrap())
        }),
        ("cubic", false, || {
            Box::new(Cubic::new(START, MIN, MAX).unwrap())
        }),
    ]
}

fn row(controller: &str, r: &Report) {
    let drops: Vec<String> = r.under_after_drop.iter().map(|d| secs(*d)).collect();
    println!(
        "| {controller:<13} | {:<16} | {:>6.1}% | {:>6.1}% | {:>5.2}% | {:>8} | {:>8} | {:>8} | {:>6} / {:>6} / {:>5} |",
        r.name,
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    println!("| controller    | hidden limit     | goodput | (all)   | 429s   | converge | settled  | under after drop | sent / ok / 429 |");
    println!("|---------------|------------------|---------|---------|--------|----------|----------|------------------|-----------------|");
    for (name, headers, make) in controllers() {
        for scenario in sim::standard_scenarios(headers)? {
            let report = rt.block_on(async {
                let c = make();
                sim::run(&scenario, c).await
            })?;
            row(name, &report);
        }
    }
    Ok(())
}
