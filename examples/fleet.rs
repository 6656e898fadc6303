//! Four workers sharing one API limit through Redis, against the mock server.
//!
//! ```text
//! cargo run --release --example fleet --features redis,mock
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example fleet --features redis,mock
//! ```
//!
//! Without `REDIS_URL` the example starts its own `redis-server` (from PATH) on a free port.
//!
//! `fleet --worker <redis-url> <api-url> <key> <seconds> <callers> <workers> <limit>` runs one
//! worker as its own process (the fleet test `tests/fleet_processes.rs` starts four of them and
//! kills Redis under them): `callers` concurrent callers sharing `limit` per second with the
//! other `workers - 1` processes, failing open at a `1 / workers` share.
//! Each worker has its own `RedisBucket` handle and connection (as separate processes would)
//! and runs several concurrent callers through `RateLimitLayer`. The mock server enforces the
//! limit as a rolling window, so any burst past it shows up as a 429. The run is repeated with
//! token leasing off and on, with the clients at the limit and a little below it, then admit
//! latency is measured with a limit far above the load.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_throttle::bucket::{FailMode, RedisBucket, Reserve};
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::{bucket::Bucket, Limits, Quota, RateLimitLayer};

const LIMIT: u32 = 50;
const WORKERS: usize = 4;
const CALLERS_PER_WORKER: usize = 4;
const RUN: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `redis-server` this example started; killed when dropped.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis_url() -> Result<(String, Option<OwnRedis>), BoxError> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok((url, None));
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server ({e}); install it or set REDIS_URL"))?;
    let own = OwnRedis(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..100 {
        if client.get_multiplexed_async_connection().await.is_ok() {
            return Ok((url, Some(own)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("redis-server did not come up".into())
}

async fn worker_bucket(
    url: &str,
    limits: &Limits,
    key: &str,
    lease: u32,
) -> Result<RedisBucket, BoxError> {
    let conn = RedisBucket::connection_manager(url, Duration::from_millis(500)).await?;
    Ok(RedisBucket::builder(limits.clone(), key)
        .lease_size(lease)
        .fail_mode(FailMode::open_share(limits, WORKERS as u32)?)
        .build(conn)?)
}

async fn run_fleet(url: &str, lease: u32, client_rate: u32) -> Result<(), BoxError> {
    let mock = MockServer::builder()
        .limit(ServerLimit::sliding_window(LIMIT, Duration::from_secs(1))?)
        .start()
        .await?;
    let limits = Limits::new(Quota::per_second(client_rate)?);
    let key = format!("fleet-example:{}:{lease}:{client_rate}", std::process::id());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut buckets = Vec::new();
    let mut tasks = Vec::new();
    let start = Instant::now();
    let deadline = start + RUN;
    for _ in 0..WORKERS {
        let bucket = worker_bucket(url, &limits, &key, lease).await?;
        let svc = ServiceBuilder::new()
            .layer(RateLimitLayer::with_bucket(bucket.clone()))
            .service(client.clone());
        buckets.push(bucket);
        for _ in 0..CALLERS_PER_WORKER {
            let svc = svc.clone();
            let uri = mock.uri("/v1/track");
            tasks.push(tokio::spawn(async move {
                loop {
                    let mut svc = svc.clone();
                    svc.ready().await?;
                    if Instant::now() >= deadline {
                        return Ok::<_, tower::BoxError>(());
                    }
                    let req = http::Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
                    svc.call(req).await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let stats = mock.stats();
    let (mut round_trips, mut reservations, mut fallbacks) = (0, 0, 0);
    for b in &buckets {
        let s = b.stats();
        round_trips += s.round_trips;
        reservations += s.reservations;
        fallbacks += s.fallbacks;
    }
    let achieved = stats.accepted as f64 / RUN.as_secs_f64();
    println!(
        "client quota {client_rate}/s, lease {lease:>2}: {achieved:6.2} req/s accepted of {LIMIT} ({:5.1}%), \
         {} x 429, peak {} in any 1 s, {:.3} round trips per request, {fallbacks} fallbacks",
        100.0 * achieved / f64::from(LIMIT),
        stats.rate_limited,
        mock.max_accepted_in_any_window(Duration::from_secs(1)),
        round_trips as f64 / reservations as f64,
    );
    mock.shutdown().await;
    Ok(())
}

/// Time to a decision (not the wait for the slot), with a limit far above the load.
async fn admit_latency(url: &str, lease: u32) -> Result<(), BoxError> {
    let limits = Limits::new(Quota::per_second(1_000_000)?);
    let key = format!("fleet-example-latency:{}:{lease}", std::process::id());
    let bucket = worker_bucket(url, &limits, &key, lease).await?;
    let n = 5_000;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let r = match bucket.reserve(Instant::now(), None) {
            Reserve::Ready(r) => r,
            Reserve::Pending(f) => f.await,
        };
        times.push(t.elapsed());
        r?;
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / n as u32;
    let s = bucket.stats();
    println!(
        "admit latency, lease {lease:>2}: mean {mean:?}, p50 {:?}, p99 {:?}; {:.3} round trips per request",
        times[n / 2],
        times[n * 99 / 100],
        s.round_trips as f64 / s.reservations as f64
    );
    Ok(())
}

/// One worker process: `callers` callers through one `RedisBucket` for `seconds`; prints how
/// many requests it sent.
async fn worker(args: &[String]) -> Result<(), BoxError> {
    let [url, api, key, seconds, callers, workers, limit] = args else {
        return Err("usage: fleet --worker <redis-url> <api-url> <key> <seconds> <callers> <workers> <limit>".into());
    };
    let limits = Limits::new(Quota::per_second(limit.parse()?)?);
    let workers: u32 = workers.parse()?;
    let conn = RedisBucket::connection_manager(url, Duration::from_millis(200)).await?;
    let bucket = RedisBucket::builder(limits.clone(), key.as_str())
        .timeout(Duration::from_millis(200))
        .retry_interval(Duration::from_millis(500))
        .fail_mode(FailMode::open_share(&limits, workers)?)
        .build(conn)?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(client);
    let uri: http::Uri = api.parse()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds.parse()?);
    // Each switch between Redis and the fallback, on stderr, for the fleet test's log.
    let watched = bucket.clone();
    tokio::spawn(async move {
        let mut degraded = false;
        loop {
            if watched.is_degraded() != degraded {
                degraded = !degraded;
                eprintln!(
                    "worker {}: {} at {:?}",
                    std::process::id(),
                    if degraded { "fallback" } else { "redis" },
                    started.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let tasks: Vec<_> = (0..callers.parse::<usize>()?)
        .map(|_| {
            let (svc, uri) = (svc.clone(), uri.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                loop {
                    let mut svc = svc.clone();
                    if svc.ready().await.is_err() {
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return sent;
                    }
                    let req = http::Request::get(uri.clone())
                        .body(Full::new(Bytes::new()))
                        .expect("a valid request");
                    if svc.call(req).await.is_ok() {
                        sent += 1;
                    }
                }
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    println!("sent {sent} {:?}", bucket.stats());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        return worker(&args[2..]).await;
    }
    let (url, _own) = redis_url().await?;
    println!(
        "{WORKERS} workers x {CALLERS_PER_WORKER} callers sharing {LIMIT} req/s through {url} for {RUN:?}"
    );
    // At exactly the server's limit, loopback jitter now and then puts 51 arrivals in one
    // second and earns a 429; a few percent of margin removes them.
    for (lease, client_rate) in [(1, LIMIT), (4, LIMIT), (1, LIMIT - 2), (4, LIMIT - 2)] {
        run_fleet(&url, lease, client_rate).await?;
    }
    for lease in [1, 16] {
        admit_latency(&url, lease).await?;
    }
    Ok(())
}
