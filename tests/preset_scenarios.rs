//! Every preset through the whole stack (`Throttle::builder().limits(preset)`), in paused
//! time: one `429 Retry-After: 1`, then the next minute must run as fast as the preset allows,
//! within 5% of a run that never saw the 429 and, where the preset's shortest window is what
//! binds, within 5% of that window's rate. A hold that spent a daily allowance (the defect the
//! admission core fixed) turns the minute after one 429 into a trickle.
//!
//! Each of the builder's three stack shapes runs every preset: streaming (no timeout),
//! buffered (`.timeout(..)`, bodies read in full) and streaming with refusals' bodies
//! inspected (`.head_timeout(..).inspect_bodies(..)`), so neither reading bodies nor reading a
//! 429's body costs a preset its rate.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, ServiceExt};
use tower_throttle::{presets, Limits, Throttle};

#[derive(Debug, Clone, Copy)]
enum Stack {
    Streaming,
    Buffered,
    Inspected,
}

type Client = BoxCloneService<http::Request<Full<Bytes>>, http::StatusCode, BoxError>;

fn stack<S>(shape: Stack, limits: Limits, api: S) -> Client
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let builder = Throttle::builder().limits(limits);
    let secs = Duration::from_secs;
    match shape {
        Stack::Streaming => {
            BoxCloneService::new(builder.build(api).unwrap().map_response(|r| r.status()))
        }
        Stack::Buffered => BoxCloneService::new(
            builder
                .timeout(secs(30))
                .build(api)
                .unwrap()
                .map_response(|r| r.status()),
        ),
        Stack::Inspected => BoxCloneService::new(
            builder
                .head_timeout(secs(30))
                .inspect_bodies(secs(2))
                .build(api)
                .unwrap()
                .map_response(|r| r.status()),
        ),
    }
}

/// Callers in a closed loop, each answered after this long: concurrency-capped presets then
/// have a finite rate too.
const CALLERS: usize = 32;
const LATENCY: Duration = Duration::from_millis(10);

/// Calls that reached the API in `[0, 62 s)` and in `[2 s, 62 s)`, with or without one 429 at
/// the start.
async fn minute_after(shape: Stack, limits: Limits, with_429: bool) -> (usize, usize) {
    let start = Instant::now();
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let api = {
        let (arrivals, calls) = (arrivals.clone(), calls.clone());
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            arrivals.lock().unwrap().push(start.elapsed());
            async move {
                tokio::time::sleep(LATENCY).await;
                let mut res = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                if with_429 && n == 0 {
                    *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                    res.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let client = stack(shape, limits, api);
    let end = start + Duration::from_secs(62);
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    let req = http::Request::new(Full::new(Bytes::new()));
                    let _ = client.clone().oneshot(req).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    let total = arrivals.len();
    let after = arrivals
        .iter()
        .filter(|t| **t >= Duration::from_secs(2) && **t < Duration::from_secs(62))
        .count();
    (total, after)
}

async fn scenario(shape: Stack, name: &str, limits: Limits) {
    // Over the whole run, the 429 costs at most its hold: a delayed burst is not a lost one.
    let (control_total, control) = minute_after(shape, limits.clone(), false).await;
    let (total_429, after_429) = minute_after(shape, limits.clone(), true).await;
    let diff = control_total.abs_diff(total_429) as f64 / control_total as f64;
    assert!(
        diff <= 0.05,
        "{name} ({shape:?}): {total_429} calls in 62 s with one 429, {control_total} without it"
    );
    if let Some(short) = limits.quotas().first() {
        let paced = short.rate_per_second() * 60.0;
        // Where the shortest window binds (the control run is at its rate), the minute after
        // the 429 is at that rate too.
        let binds = (control as f64) >= 0.95 * paced
            && (control as f64) <= paced * 1.05 + f64::from(short.burst());
        if binds {
            let share = after_429 as f64 / paced;
            assert!(
                share >= 0.95,
                "{name} ({shape:?}): {after_429} calls in the minute after one 429, {paced:.0} is the short window's rate"
            );
        }
    }
    eprintln!(
        "{name} ({shape:?}): {after_429} calls in the minute after one 429 ({control} without)"
    );
}

async fn every_preset(shape: Stack) {
    let all = presets::all();
    assert!(all.len() >= 20, "every preset is in the list");
    for (name, limits) in all {
        scenario(shape, name, limits).await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_429_costs_every_preset_only_its_hold() {
    every_preset(Stack::Streaming).await;
}

#[tokio::test(start_paused = true)]
async fn one_429_costs_every_preset_only_its_hold_on_a_buffered_stack() {
    every_preset(Stack::Buffered).await;
}

#[tokio::test(start_paused = true)]
async fn one_429_costs_every_preset_only_its_hold_when_refusals_bodies_are_inspected() {
    every_preset(Stack::Inspected).await;
}
