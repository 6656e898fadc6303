//! BatchLayer in paused time against in-process fakes: coalescing by count, bytes and linger,
//! cancellation, partial failure and re-batching, whole-batch failures, and the
//! 100,000-contact HubSpot sync.
// The HubSpot sync below needs the mock feature's server limiter; its imports go unused without it.
#![cfg_attr(not(feature = "mock"), allow(unused_imports))]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_throttle::backoff::{Backoff, Jitter};
#[cfg(feature = "mock")]
use tower_throttle::mock::{ServerLimit, ServerLimiter};
use tower_throttle::{
    batch::{BatchError, BatchInfo, BatchedItem, HubSpotBatch, JsonArrayBatch},
    BatchLayer,
};
use tower_throttle::{
    dead_letter::{DeadLetterStore, MemoryStore},
    DeadLetterLayer,
};
use tower_throttle::{presets, ConfigError, LocalBucket, Quota, RateLimitLayer};
use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};
use tower_throttle::{run_bulk, BulkOptions};

type Req = http::Request<Full<Bytes>>;
type Res = http::Response<Full<Bytes>>;

/// One batch as the fake saw it: when, which item ids, and the request's `BatchInfo`.
#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    ids: Vec<u64>,
    info: Option<BatchInfo>,
    host: Option<String>,
}

/// A JSON-array batch endpoint whose per-item statuses come from `rule(id, times seen)`, and
/// whose whole-batch answer can be overridden per call number by `batch_rule`.
#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Mutex<HashMap<u64, u32>>>,
    start: Instant,
}

impl Fake {
    fn new() -> Self {
        Fake {
            seen: Arc::default(),
            counts: Arc::default(),
            start: Instant::now(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn service(
        &self,
        rule: impl Fn(u64, u32) -> u16 + Send + Sync + 'static,
        batch_rule: impl Fn(usize) -> Option<(u16, &'static str)> + Send + Sync + 'static,
    ) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send + 'static
    {
        let this = self.clone();
        let rule = Arc::new(rule);
        let batch_rule = Arc::new(batch_rule);
        service_fn(move |req: Req| {
            let (this, rule, batch_rule) = (this.clone(), rule.clone(), batch_rule.clone());
            async move {
                let info = req.extensions().get::<BatchInfo>().copied();
                let host = req.uri().host().map(str::to_owned);
                let body = req.into_body().collect().await?.to_bytes();
                let items: Vec<Value> = serde_json::from_slice(&body)?;
                let ids: Vec<u64> = items.iter().map(|i| i["id"].as_u64().unwrap()).collect();
                let call = {
                    let mut seen = this.seen.lock().unwrap();
                    seen.push(Seen {
                        at: this.start.elapsed(),
                        ids: ids.clone(),
                        info,
                        host,
                    });
                    seen.len() - 1
                };
                if let Some((status, answer)) = batch_rule(call) {
                    let mut res = http::Response::new(Full::from(answer));
                    *res.status_mut() = http::StatusCode::from_u16(status)?;
                    res.headers_mut().insert("retry-after", "2".parse()?);
                    return Ok(res);
                }
                let statuses: Vec<u16> = {
                    let mut counts = this.counts.lock().unwrap();
                    ids.iter()
                        .map(|id| {
                            let n = counts.entry(*id).or_default();
                            *n += 1;
                            rule(*id, *n)
                        })
                        .collect()
                };
                let all_ok = statuses.iter().all(|s| *s == 200);
                let answer: Vec<Value> = statuses.iter().map(|s| json!({ "status": s })).collect();
                let mut res = http::Response::new(Full::from(serde_json::to_vec(&answer)?));
                *res.status_mut() = if all_ok {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::MULTI_STATUS
                };
                Ok::<_, BoxError>(res)
            }
        })
    }
}

fn all_ok(_: u64, _: u32) -> u16 {
    200
}

fn no_override(_: usize) -> Option<(u16, &'static str)> {
    None
}

fn item(id: u64) -> Req {
    item_to("https://api.example.com", id)
}

fn item_to(origin: &str, id: u64) -> Req {
    http::Request::post(format!("{origin}/v1/things/{id}"))
        .header("x-request-id", id.to_string())
        .body(Full::from(format!(r#"{{"id":{id}}}"#)))
        .unwrap()
}

fn array(max_items: usize) -> JsonArrayBatch {
    JsonArrayBatch::new("/v1/things/batch", max_items, 1 << 20).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn coalesces_up_to_max_items_then_lingers_for_the_rest() {
    let fake = Fake::new();
    let client = ServiceBuilder::new()
        .layer(
            BatchLayer::new(array(10))
                .with_max_items(3)
                .unwrap()
                .with_linger(Duration::from_secs(1)),
        )
        .service(fake.service(all_ok, no_override));
    let calls = (0..7).map(|id| client.clone().oneshot(item(id)));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 200));
    let seen = fake.seen();
    let shape: Vec<(Duration, Vec<u64>)> = seen.iter().map(|s| (s.at, s.ids.clone())).collect();
    assert_eq!(
        shape,
        [
            (ms(0), vec![0, 1, 2]),
            (ms(0), vec![3, 4, 5]),
            (Duration::from_secs(1), vec![6]),
        ]
    );
    assert_eq!(
        seen[0].info,
        Some(BatchInfo {
            items: 3,
            bytes: r#"[{"id":0},{"id":1},{"id":2}]"#.len(),
            cost: 1
        })
    );
}

#[tokio::test(start_paused = true)]
async fn coalesces_up_to_max_bytes() {
    let fake = Fake::new();
    // `[{"id":1},{"id":2}]` is 19 bytes; a third item would make it 28.
    let client = ServiceBuilder::new()
        .layer(
            BatchLayer::new(array(100))
                .with_max_bytes(27)
                .unwrap()
                .with_linger(Duration::from_secs(1)),
        )
        .service(fake.service(all_ok, no_override));
    let calls = (1..=5).map(|id| client.clone().oneshot(item(id)));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 200));
    let batches: Vec<Vec<u64>> = fake.seen().into_iter().map(|s| s.ids).collect();
    assert_eq!(batches, [vec![1, 2], vec![3, 4], vec![5]]);
    assert!(fake.seen().iter().all(|s| s.info.unwrap().bytes <= 27));
}

#[tokio::test(start_paused = true)]
async fn linger_counts_from_the_oldest_waiting_item() {
    let fake = Fake::new();
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(100)).with_linger(ms(50)))
        .service(fake.service(all_ok, no_override));
    let first = tokio::spawn(client.clone().oneshot(item(1)));
    tokio::time::sleep(ms(30)).await;
    let second = tokio::spawn(client.clone().oneshot(item(2)));
    tokio::time::sleep(ms(30)).await;
    let third = tokio::spawn(client.clone().oneshot(item(3)));
    for handle in [first, second, third] {
        assert_eq!(handle.await.unwrap().unwrap().status(), 200);
    }
    let shape: Vec<(Duration, Vec<u64>)> = fake.seen().into_iter().map(|s| (s.at, s.ids)).collect();
    assert_eq!(shape, [(ms(50), vec![1, 2]), (ms(110), vec![3])]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_item_is_removed_from_the_pending_batch() {
    let fake = Fake::new();
    let layer = BatchLayer::new(array(100)).with_linger(ms(100));
    let stats = layer.stats();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(fake.service(all_ok, no_override));
    let keep = tokio::spawn(client.clone().oneshot(item(1)));
    let dropped = tokio::spawn(client.clone().oneshot(item(2)));
    let keep_too = tokio::spawn(client.clone().oneshot(item(3)));
    tokio::time::sleep(ms(10)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(keep.await.unwrap().unwrap().status(), 200);
    assert_eq!(keep_too.await.unwrap().unwrap().status(), 200);
    let batches: Vec<Vec<u64>> = fake.seen().into_iter().map(|s| s.ids).collect();
    assert_eq!(batches, [vec![1, 3]]);
    assert_eq!((stats.cancelled(), stats.delivered()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_item_does_not_count_toward_max_items() {
    let fake = Fake::new();
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(2)).with_linger(Duration::from_secs(5)))
        .service(fake.service(all_ok, no_override));
    let dropped = tokio::spawn(client.clone().oneshot(item(1)));
    tokio::task::yield_now().await;
    dropped.abort();
    let _ = dropped.await;
    let b = tokio::spawn(client.clone().oneshot(item(2)));
    let c = tokio::spawn(client.clone().oneshot(item(3)));
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert_eq!(c.await.unwrap().unwrap().status(), 200);
    let shape: Vec<(Duration, Vec<u64>)> = fake.seen().into_iter().map(|s| (s.at, s.ids)).collect();
    // Full with the two live items, so sent at once rather than after the 5 s linger.
    assert_eq!(shape, [(ms(0), vec![2, 3])]);
}

#[tokio::test(start_paused = true)]
async fn transient_item_failures_back_off_then_are_rebatched() {
    let fake = Fake::new();
    // Item 1 fails once with 503; everything else is delivered.
    let rule = |id: u64, n: u32| if id == 1 && n == 1 { 503 } else { 200 };
    let backoff = Backoff::builder()
        .base(Duration::from_secs(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let layer = BatchLayer::new(array(3))
        .with_linger(ms(10))
        .with_backoff(backoff);
    let stats = layer.stats();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(fake.service(rule, no_override));
    let calls = (0..5).map(|id| client.clone().oneshot(item(id)));
    let results = futures_util::future::join_all(calls).await;
    let responses: Vec<Res> = results.into_iter().map(Result::unwrap).collect();
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(
        responses[1].extensions().get::<BatchedItem>(),
        Some(&BatchedItem { batches: 2 })
    );
    assert_eq!(
        responses[1].extensions().get::<Attempts>(),
        Some(&Attempts(2))
    );
    assert_eq!(
        responses[0].extensions().get::<BatchedItem>(),
        Some(&BatchedItem { batches: 1 })
    );
    let batches: Vec<(Duration, Vec<u64>)> =
        fake.seen().into_iter().map(|s| (s.at, s.ids)).collect();
    // Only the failed item went out again, after its back-off and a linger for company (the
    // others did not wait).
    assert_eq!(
        batches,
        [
            (ms(0), vec![0, 1, 2]),
            (ms(10), vec![3, 4]),
            (ms(1_010), vec![1])
        ]
    );
    assert_eq!(
        (stats.rebatched(), stats.delivered(), stats.failed()),
        (1, 5, 0)
    );
    assert_eq!(stats.items_sent(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_item_failure_answers_that_item_alone_and_is_not_resent() {
    let fake = Fake::new();
    let rule = |id: u64, _| if id == 2 { 400 } else { 200 };
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(10)).with_linger(ms(10)))
        .service(fake.service(rule, no_override));
    let calls = (0..4).map(|id| client.clone().oneshot(item(id)));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 400, 200]);
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_item_failure_gives_up_after_max_item_attempts() {
    let fake = Fake::new();
    let rule = |id: u64, _| if id == 0 { 503 } else { 200 };
    let client = ServiceBuilder::new()
        .layer(
            BatchLayer::new(array(10))
                .with_linger(ms(10))
                .with_max_item_attempts(3)
                .unwrap(),
        )
        .service(fake.service(rule, no_override));
    let res = client.oneshot(item(0)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.extensions().get::<BatchedItem>(),
        Some(&BatchedItem { batches: 3 })
    );
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_whole_batch_429_holds_the_gate_and_the_same_batch_is_sent_again() {
    let fake = Fake::new();
    let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
    let api = fake.service(all_ok, |call| {
        (call == 0).then_some((429, r#"{"error":"slow down"}"#))
    });
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(10)).with_linger(ms(10)))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_bucket(bucket.clone())
                .with_seed(7),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(api);
    let calls = (0..4).map(|id| client.clone().oneshot(item(id)));
    let responses: Vec<Res> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(responses.iter().all(|r| r.status() == 200));
    assert!(responses
        .iter()
        .all(|r| r.extensions().get::<Attempts>() == Some(&Attempts(2))));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].ids, seen[1].ids);
    // Retry-After: 2, counted from the refused attempt.
    assert!(
        seen[1].at >= seen[0].at + Duration::from_secs(2),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_every_record_is_split_until_each_answer_is_its_own() {
    let fake = Fake::new();
    let api = fake.service(all_ok, |_| Some((400, r#"{"error":"bad batch"}"#)));
    let layer = BatchLayer::new(array(10)).with_linger(ms(10));
    let stats = layer.stats();
    let client = ServiceBuilder::new().layer(layer).service(api);
    let calls = (0..3).map(|id| client.clone().oneshot(item(id)));
    for res in futures_util::future::join_all(calls).await {
        let res = res.unwrap();
        assert_eq!(res.status(), 400);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"bad batch"}"#);
    }
    let mut batches: Vec<Vec<u64>> = fake.seen().into_iter().map(|s| s.ids).collect();
    // [0 1 2] refused: split into [0 1] and [2]; [0 1] refused: split again. Halves in
    // flight together may reach the server in either order.
    batches.sort();
    assert_eq!(
        batches,
        [vec![0], vec![0, 1], vec![0, 1, 2], vec![1], vec![2]]
    );
    assert_eq!(stats.bisections(), 2);
    assert_eq!(stats.failed(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_success_is_not_sent_again() {
    let fake = Fake::new();
    let api = fake.service(all_ok, |_| Some((207, "not json")));
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(10)).with_linger(ms(10)))
        .service(api);
    let err = client.oneshot(item(1)).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<BatchError>(),
        Some(BatchError::Undecodable { .. })
    ));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_item_too_large_for_any_batch_is_refused_at_once() {
    let fake = Fake::new();
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(10)).with_max_bytes(8).unwrap())
        .service(fake.service(all_ok, no_override));
    let err = client.oneshot(item(123)).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<BatchError>(),
        Some(&BatchError::ItemTooLarge {
            bytes: 12,
            max_bytes: 8
        })
    );
    assert!(fake.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn items_for_different_hosts_never_share_a_batch() {
    let fake = Fake::new();
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(array(10)).with_linger(ms(10)))
        .service(fake.service(all_ok, no_override));
    let calls = [
        item_to("https://a.example.com", 1),
        item_to("https://b.example.com", 2),
        item_to("https://a.example.com", 3),
    ]
    .map(|req| client.clone().oneshot(req));
    for res in futures_util::future::join_all(calls).await {
        assert_eq!(res.unwrap().status(), 200);
    }
    let mut batches: Vec<(Option<String>, Vec<u64>)> =
        fake.seen().into_iter().map(|s| (s.host, s.ids)).collect();
    batches.sort();
    assert_eq!(
        batches,
        [
            (Some("a.example.com".into()), vec![1, 3]),
            (Some("b.example.com".into()), vec![2])
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dead_letters_keep_each_permanently_failed_item_on_its_own() {
    let fake = Fake::new();
    let rule = |id: u64, _| if id % 2 == 1 { 400 } else { 200 };
    let store = MemoryStore::new();
    let client = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()))
        .layer(BatchLayer::new(array(10)).with_linger(ms(10)))
        .service(fake.service(rule, no_override));
    let calls = (0..4).map(|id| client.clone().oneshot(item(id)));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, [200, 400, 200, 400]);
    let letters = store.list().await.unwrap();
    let mut bodies: Vec<String> = letters
        .iter()
        .map(|l| String::from_utf8(l.body.to_bytes().unwrap().to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"id":1}"#, r#"{"id":3}"#]);
    assert!(letters
        .iter()
        .all(|l| l.uri.ends_with("/v1/things/1") || l.uri.ends_with("/v1/things/3")));
}

#[test]
fn invalid_batch_settings_are_config_errors() {
    let layer = || BatchLayer::new(HubSpotBatch::upsert("contacts"));
    assert_eq!(
        layer().with_max_items(0).unwrap_err(),
        ConfigError::Zero { name: "max_items" }
    );
    assert!(matches!(
        layer().with_max_items(101).unwrap_err(),
        ConfigError::OutOfRange {
            name: "max_items",
            ..
        }
    ));
    assert!(layer().with_max_bytes(5).is_err());
    assert!(layer().with_max_item_attempts(0).is_err());
    assert!(layer().with_max_in_flight(0).is_err());
    assert!(JsonArrayBatch::new("/x", 10, 2).is_err());
}

#[cfg(feature = "mock")]
/// A HubSpot-shaped portal: a rolling 100 per 10 s (the server's own limiter), and per-input
/// failures: every 97th contact fails transiently the first time, every 1,000th is invalid.
fn hubspot_portal(
    written: Arc<Mutex<Vec<String>>>,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send + 'static
{
    let limiter = Arc::new(Mutex::new(ServerLimiter::new(
        ServerLimit::sliding_window(100, Duration::from_secs(10)).unwrap(),
    )));
    let tries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let start = Instant::now();
    service_fn(move |req: Req| {
        let (limiter, tries, written) = (limiter.clone(), tries.clone(), written.clone());
        async move {
            if !limiter.lock().unwrap().check(start.elapsed()).is_accepted() {
                let res = http::Response::builder()
                    .status(429)
                    .header("retry-after", "1")
                    .body(Full::from(r#"{"category":"RATE_LIMITS"}"#))?;
                return Ok(res);
            }
            let body = req.into_body().collect().await?.to_bytes();
            let batch: Value = serde_json::from_slice(&body)?;
            let inputs = batch["inputs"].as_array().ok_or("no inputs")?;
            assert!(inputs.len() <= 100);
            let (mut results, mut errors) = (Vec::new(), Vec::new());
            for input in inputs {
                let email = input["id"].as_str().ok_or("no id")?.to_owned();
                let n: u64 = email
                    .trim_start_matches('c')
                    .split('@')
                    .next()
                    .unwrap()
                    .parse()?;
                let attempt = {
                    let mut tries = tries.lock().unwrap();
                    let t = tries.entry(email.clone()).or_default();
                    *t += 1;
                    *t
                };
                let trace = input["objectWriteTraceId"].clone();
                if n.is_multiple_of(1_000) {
                    errors.push(json!({"status": "error", "category": "VALIDATION_ERROR",
                        "message": "invalid", "context": {"objectWriteTraceId": [trace]}}));
                } else if n.is_multiple_of(97) && attempt == 1 {
                    errors.push(json!({"status": "error", "category": "INTERNAL_ERROR",
                        "message": "later", "context": {"objectWriteTraceId": [trace]}}));
                } else {
                    written.lock().unwrap().push(email);
                    results.push(json!({"id": n.to_string(), "objectWriteTraceId": trace}));
                }
            }
            let status = if errors.is_empty() { 200 } else { 207 };
            let answer = json!({"status": "COMPLETE", "results": results, "errors": errors});
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(status)
                    .body(Full::from(serde_json::to_vec(&answer)?))?,
            )
        }
    })
}

#[cfg(feature = "mock")]
#[tokio::test(start_paused = true)]
async fn hubspot_sync_of_100k_contacts_takes_at_most_110_virtual_seconds() {
    const CONTACTS: u64 = 100_000;
    let written = Arc::new(Mutex::new(Vec::new()));
    let bucket = LocalBucket::new(presets::hubspot());
    let store = MemoryStore::new();
    let batching = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let stats = batching.stats();
    let client = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()))
        .layer(batching)
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_bucket(bucket.clone())
                .with_seed(1),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(hubspot_portal(written.clone()));
    let contacts = stream::iter((1..=CONTACTS).map(|n| {
        let body = format!(
            r#"{{"id":"c{n}@example.com","idProperty":"email","properties":{{"plan":"pro"}}}}"#
        );
        http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
            .header("authorization", "Bearer pat-na1-secret")
            .body(Full::from(body))
            .unwrap()
    }));
    let start = Instant::now();
    let report = run_bulk(contacts, client, BulkOptions::default().concurrency(5_000)).await;
    let elapsed = start.elapsed();

    let invalid = CONTACTS / 1_000;
    assert_eq!(report.processed, CONTACTS);
    assert_eq!(report.succeeded, CONTACTS - invalid, "{report:?}");
    assert_eq!(report.dead_lettered, invalid);
    assert_eq!(report.failed, 0);
    let written = written.lock().unwrap().clone();
    let distinct: HashSet<&String> = written.iter().collect();
    assert_eq!(
        written.len() as u64,
        CONTACTS - invalid,
        "a contact was written twice"
    );
    assert_eq!(distinct.len(), written.len());
    assert_eq!(store.len().await.unwrap() as u64, invalid);
    assert!(elapsed <= Duration::from_secs(110), "took {elapsed:?}");
    // 1,000 full batches plus a few for the re-batched contacts (each waits out its back-off,
    // so the last of them go out in part-filled batches).
    assert!(stats.batches() <= 1_025, "{} batches", stats.batches());
    assert_eq!(stats.rebatched(), CONTACTS / 97 - CONTACTS / 97_000);
    println!(
        "100,000 contacts in {elapsed:?} of virtual time, {} batches, {} re-batched",
        stats.batches(),
        stats.rebatched()
    );
}
