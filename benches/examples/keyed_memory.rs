//! Memory per key of a keyed limiter with 1,000,000 live keys: ours and governor's.
//!
//! Run: `cargo run --release -p tower-throttle-benches --example keyed_memory`
//!
//! Each contender runs in its own child process (this binary re-executed with its name), so
//! memory one of them freed cannot be reused by the next and flatter its number. Memory is the
//! growth of the resident set (`/proc/self/statm`, Linux only) across inserting the keys; it
//! includes the allocator's own overhead, which is what a user pays.

use std::num::NonZeroU32;
use std::process::Command;

use governor::{Quota as GQuota, RateLimiter};
use tokio::time::Instant;
use tower_throttle::bucket::KeyedBucket;
use tower_throttle::Quota;

const KEYS: u64 = 1_000_000;
const CONTENDERS: [&str; 3] = ["ours", "governor_dashmap", "governor_hashmap"];

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident field");
    // 4 KiB pages: every Linux target this crate is benchmarked on.
    pages * 4096
}

/// Inserts every key and returns resident growth in bytes. The rate is slow enough that no key
/// refills during the run, so our bucket's idle sweep keeps all of them: this is the worst case,
/// a million keys all active at once.
fn measure(which: &str) -> u64 {
    let before = rss_bytes();
    match which {
        "ours" => {
            let bucket = KeyedBucket::<u64>::new(Quota::per_hour(1).expect("quota"));
            let now = Instant::now();
            for k in 0..KEYS {
                bucket.reserve(&k, now, None).expect("admitted");
            }
            assert_eq!(bucket.len() as u64, KEYS, "no key may be evicted here");
            let grown = rss_bytes() - before;
            std::hint::black_box(&bucket);
            grown
        }
        "governor_dashmap" | "governor_hashmap" => {
            let quota = GQuota::per_hour(NonZeroU32::MIN);
            let grown;
            if which == "governor_dashmap" {
                let lim = RateLimiter::<u64, _, _>::dashmap(quota);
                for k in 0..KEYS {
                    lim.check_key(&k).expect("admitted");
                }
                assert_eq!(lim.len() as u64, KEYS);
                grown = rss_bytes() - before;
                std::hint::black_box(&lim);
            } else {
                let lim = RateLimiter::<u64, _, _>::hashmap(quota);
                for k in 0..KEYS {
                    lim.check_key(&k).expect("admitted");
                }
                assert_eq!(lim.len() as u64, KEYS);
                grown = rss_bytes() - before;
                std::hint::black_box(&lim);
            }
            grown
        }
        other => panic!("unknown contender {other}"),
    }
}

fn main() {
    if let Some(which) = std::env::args().nth(1) {
        println!("{}", measure(&which));
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!(
        "{:<20} {:>10} {:>14} {:>10}",
        "limiter", "keys", "RSS growth", "bytes/key"
    );
    for which in CONTENDERS {
        let out = Command::new(&exe).arg(which).output().expect("child runs");
        assert!(
            out.status.success(),
            "{which} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grown: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("child prints a number");
        println!(
            "{:<20} {:>10} {:>11.1} MiB {:>10.1}",
            which,
            KEYS,
            grown as f64 / (1024.0 * 1024.0),
            grown as f64 / KEYS as f64
        );
    }
}
