//! Four OS processes share one limit through a real `redis-server`, which is SIGKILLed and
//! restarted under them; the mock server counts what the fleet sent in every 1 s window.
//!
//! The processes are the `fleet` example in its `--worker` mode (built by `cargo test` with
//! the other examples). Failing open at a quarter each, the fleet must never exceed the
//! limit plus one burst plus one request per process in any second, across the kill and the
//! restart, however many callers wait in each process.
#![cfg(all(feature = "redis", feature = "mock"))]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use tower_throttle::mock::MockServer;

const LIMIT: usize = 50;
const BURST: usize = 1;
const WORKERS: usize = 4;
const CALLERS: usize = 32;
const RUN_SECS: u64 = 12;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    path.pop();
    path.push("examples");
    path.push(name);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; run: cargo test --all-features --tests -- --ignored"]
async fn a_fleet_of_processes_stays_within_the_limit_across_a_redis_kill_and_restart() {
    let mut redis =
        RedisServer::start("a_fleet_of_processes_stays_within_the_limit_across_a_redis_kill");
    let worker = example("fleet");
    assert!(
        worker.exists(),
        "{} missing: build the examples (`cargo test --all-features` does)",
        worker.display()
    );
    let mock = MockServer::builder().start().await.expect("mock server");
    let key = format!("fleet-processes:{}", std::process::id());
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(&worker)
                .args(["--worker", &redis.url(), &mock.url("/v1/track"), &key])
                .args([
                    RUN_SECS.to_string(),
                    CALLERS.to_string(),
                    WORKERS.to_string(),
                ])
                .arg(LIMIT.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("worker process starts")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.spawn();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("worker exits"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for out in &outputs {
        assert!(out.status.success(), "worker failed: {out:?}");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }
    let times = mock.accepted_times();
    let mut per_half_second = vec![0usize; (RUN_SECS as usize + 2) * 2];
    for t in &times {
        if let Some(c) = per_half_second.get_mut((t.as_millis() / 500) as usize) {
            *c += 1;
        }
    }
    eprintln!("accepted per 0.5 s: {per_half_second:?}");
    let peak = mock.max_accepted_in_any_window(Duration::from_secs(1));
    let accepted = mock.stats().accepted as usize;
    eprintln!("peak {peak} in any 1 s, {accepted} accepted in {RUN_SECS} s");
    assert!(
        peak <= LIMIT + BURST + WORKERS,
        "{peak} requests in one second, over {LIMIT} + {BURST} + {WORKERS}"
    );
    // And the fleet kept working throughout: at least 70% of the limit over the run,
    // fallback and recovery included.
    assert!(
        accepted as f64 >= 0.7 * (LIMIT as u64 * RUN_SECS) as f64,
        "only {accepted} accepted"
    );
}
