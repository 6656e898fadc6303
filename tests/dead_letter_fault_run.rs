//! 10,000 requests through the whole stack (dead letters over retry over the shared gate over
//! a per-attempt timeout) against the mock server over loopback, with 10% injected 503s,
//! 429 storms, 1-20 ms latency and requests that time out: every request ends exactly once,
//! as a delivery the server saw once, a dead letter stored once, or an error returned.
#![cfg(all(feature = "mock", feature = "file-store"))]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{service_fn, ServiceExt as _};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::{
    backoff::{Backoff, Jitter},
    Quota, RetryPolicy, Throttle,
};
use tower_throttle::{
    dead_letter::{DeadLetterStore, DeadLettered, DeadLetteredError},
    FileStore,
};

const REQUESTS: u64 = 10_000;
const WORKERS: usize = 64;
/// The server's rate, and the client's a little below it: paced, but with a burst far above
/// the server's, so the client opens with a 429 storm (and every storm holds everyone for the
/// whole-second `Retry-After`).
const RATE: u32 = 2_000;
const CLIENT_RATE: u32 = 1_600;
const SERVER_BURST: u32 = 20;
const CLIENT_BURST: u32 = 300;
/// Generous next to 20 ms of latency, so only the black-holed attempts time out (a response
/// the server sent but the client gave up on would be delivered twice: at-least-once).
const TIMEOUT: Duration = Duration::from_millis(1_000);

/// Requests whose every attempt is black-holed (they time out and are dead-lettered), and
/// requests whose first attempt only is (they time out once and are retried).
fn always_hangs(id: u64) -> bool {
    id % 499 == 5
}
fn first_attempt_hangs(id: u64) -> bool {
    id % 211 == 3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Delivered,
    DeadLettered(u64),
    Error,
}

fn request_id(headers: &http::HeaderMap) -> u64 {
    headers["x-request-id"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_under_faults_each_end_exactly_once() {
    let server_limit = ServerLimit::token_bucket(f64::from(RATE), SERVER_BURST).unwrap();
    let server = MockServer::builder()
        .limit(server_limit)
        .retry_after(RetryAfterFormat::Seconds)
        .fail_ratio(0.1)
        .latency_range(Duration::from_millis(1), Duration::from_millis(20))
        .seed(0xfa17)
        .start()
        .await
        .unwrap();
    let server = Arc::new(server);
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("dead_letters.jsonl"))
        .await
        .unwrap();

    // Below the timeout: an attempt that never reaches the server (a black-holed connection),
    // so the server's view of each id stays exact.
    let hung_once = Arc::new(Mutex::new(HashSet::new()));
    let client = common::client();
    let api = service_fn(move |req: http::Request<Full<Bytes>>| {
        let id = request_id(req.headers());
        let hang =
            always_hangs(id) || (first_attempt_hangs(id) && hung_once.lock().unwrap().insert(id));
        let client = client.clone();
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            client.request(req).await
        }
    });
    let backoff = Backoff::builder()
        .base(Duration::from_millis(10))
        .max_delay(Duration::from_millis(1_500))
        .max_retries(2)
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let throttle = Throttle::builder()
        .limits(
            Quota::per_second(CLIENT_RATE)
                .unwrap()
                .with_burst(CLIENT_BURST)
                .unwrap(),
        )
        .retry(RetryPolicy::default().with_backoff(backoff))
        .timeout(TIMEOUT)
        .dead_letters(store.clone())
        .build(api)
        .unwrap();

    // Two more storms mid-run: the server's limit drops to a tenth for 250 ms.
    let storms = {
        let server = server.clone();
        tokio::spawn(async move {
            for at in [2_000, 4_000] {
                tokio::time::sleep(Duration::from_millis(at / 2)).await;
                server.set_limit(ServerLimit::token_bucket(f64::from(RATE) / 10.0, 5).unwrap());
                tokio::time::sleep(Duration::from_millis(250)).await;
                server.set_limit(server_limit);
            }
        })
    };

    let started = tokio::time::Instant::now();
    let uri = server.uri("/v1/records");
    // Workers take the next id from a shared counter, so the slow (black-holed) requests
    // do not pile up behind one worker.
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (throttle, uri, next) = (throttle.clone(), uri.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ended = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= REQUESTS {
                    break ended;
                }
                let req = http::Request::post(uri.clone())
                    .header("x-request-id", id.to_string())
                    .body(Full::new(Bytes::from(format!("{{\"record\":{id}}}"))))
                    .unwrap();
                let outcome = match throttle.clone().oneshot(req).await {
                    Ok(res) => match res.extensions().get::<DeadLettered>() {
                        Some(d) => Final::DeadLettered(d.id),
                        None if res.status().is_success() => Final::Delivered,
                        None => Final::Error,
                    },
                    Err(e) => match DeadLetteredError::find(&e) {
                        Some(d) => Final::DeadLettered(d.id()),
                        None => Final::Error,
                    },
                };
                ended.push((id, outcome));
            }
        }));
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    storms.await.unwrap();

    let mut by_id = BTreeMap::new();
    for (id, outcome) in &outcomes {
        assert!(
            by_id.insert(*id, *outcome).is_none(),
            "request {id} ended twice"
        );
    }
    assert_eq!(by_id.len() as u64, REQUESTS, "every request ended");
    let count = |f: fn(&Final) -> bool| by_id.values().filter(|o| f(o)).count() as u64;
    let delivered = count(|o| *o == Final::Delivered);
    let dead = count(|o| matches!(o, Final::DeadLettered(_)));
    let errors = count(|o| *o == Final::Error);
    assert_eq!(delivered + dead + errors, REQUESTS);

    // The server saw every delivered id once, and no other id.
    let stats = server.stats();
    assert_eq!(stats.duplicate_ids, 0, "{stats:?}");
    let delivered_ids: BTreeSet<String> = by_id
        .iter()
        .filter(|(_, o)| **o == Final::Delivered)
        .map(|(id, _)| id.to_string())
        .collect();
    let accepted: BTreeSet<String> = server.accepted_ids().into_iter().collect();
    assert_eq!(accepted, delivered_ids);

    // The store holds every dead-lettered request once, under the id the caller was given.
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len() as u64, dead);
    let mut stored = BTreeMap::new();
    for letter in &letters {
        let id: u64 = letter
            .headers
            .iter()
            .find(|(name, _)| name == "x-request-id")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!(
            stored.insert(id, letter.id).is_none(),
            "request {id} stored twice"
        );
    }
    for (id, outcome) in &by_id {
        match outcome {
            Final::DeadLettered(letter) => assert_eq!(stored.get(id), Some(letter), "request {id}"),
            _ => assert!(!stored.contains_key(id), "request {id} ended twice"),
        }
    }
    // The faults happened, and the black-holed requests ended as dead letters.
    assert!(stats.failed > REQUESTS / 20, "{stats:?}");
    assert!(stats.rate_limited > 0, "no 429 storm: {stats:?}");
    for id in (0..REQUESTS).filter(|id| always_hangs(*id)) {
        assert!(
            matches!(by_id[&id], Final::DeadLettered(_)),
            "request {id}: {:?}",
            by_id[&id]
        );
    }
    eprintln!(
        "{REQUESTS} requests in {elapsed:?}: {delivered} delivered, {dead} dead-lettered, {errors} errors; server {stats:?}"
    );
}
