//! Batch truth: every record's outcome is what the vendor said about that record, through the
//! one-call builder (`Throttle::builder().batch(..)`), on paused time.
//!
//! The vendor here is an in-process HubSpot portal that keeps its records, so each test can
//! say what the server applied as well as what each caller heard. Each test is named after the
//! bug it pins; the loopback scenarios against the mock server are in `batch_loopback.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceExt};

use tower_throttle::batch::{
    BatchError, BatchFormat, BrazeTrack, CustomerIoBatch, Envelope, HubSpotBatch, ItemResult,
    MailchimpMembers, Sent,
};
use tower_throttle::dead_letter::{DeadLetterStore, MemoryStore};
use tower_throttle::rate_limit::WeightedRateLimitLayer;
use tower_throttle::retry::Idempotent;
use tower_throttle::{BatchLayer, Quota, RetryPolicy, Throttle, ThrottleError};

type Req = http::Request<Full<Bytes>>;
type Res = http::Response<Full<Bytes>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the portal does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Applied.
    Ok,
    /// Refused, named by trace id (`VALIDATION_ERROR`).
    Invalid,
    /// Refused, named only by `context.ids`: the error does not say which input it was.
    Loose,
    /// Refused `INTERNAL_ERROR` the first `n` times it is seen, then applied.
    Transient(u32),
    /// Refused `RATE_LIMITS` the first `n` times it is seen, then applied.
    Limited(u32),
    /// Makes HubSpot refuse its whole batch with a 400 naming it in prose only.
    Poison,
    /// Makes HubSpot refuse its whole batch with a 400 that does not name it at all.
    QuietPoison,
}

#[derive(Debug, Default)]
struct Portal {
    fates: HashMap<String, Fate>,
    /// Times each record was applied (created, or upserted).
    applied: HashMap<String, u32>,
    /// Times each record was seen in a batch.
    seen: HashMap<String, u32>,
    /// The records of each batch, in the order the portal saw the batches.
    batches: Vec<Vec<String>>,
    /// `batch/create` semantics: a second create of a record is `OBJECT_ALREADY_EXISTS`.
    create: bool,
    /// Answers still to lose after applying (the client times out).
    lose: u32,
    /// Every record applied, in order.
    log: Vec<String>,
    /// When each batch arrived.
    at: Vec<Duration>,
}

type Shared = Arc<Mutex<Portal>>;

fn key_of(input: &Value, create: bool) -> String {
    let v = if create {
        &input["properties"]["email"]
    } else {
        &input["id"]
    };
    v.as_str().unwrap_or_default().to_owned()
}

/// A HubSpot portal: `POST .../batch/{upsert,create}` answered per the records' fates.
fn portal(
    portal: Shared,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send + 'static
{
    let start = Instant::now();
    service_fn(move |req: Req| {
        let portal = portal.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            let batch: Value = serde_json::from_slice(&body)?;
            let inputs = batch["inputs"].as_array().ok_or("no inputs")?.clone();
            let (status, answer, lose) = {
                let mut p = portal.lock().unwrap();
                let create = p.create;
                let keys: Vec<String> = inputs.iter().map(|i| key_of(i, create)).collect();
                p.batches.push(keys.clone());
                p.at.push(start.elapsed());
                let poison = keys.iter().find_map(|k| match p.fates.get(k) {
                    Some(Fate::Poison) => Some(format!("Property values were not valid: {k}")),
                    Some(Fate::QuietPoison) => Some("Property values were not valid".to_owned()),
                    _ => None,
                });
                if let Some(message) = poison {
                    let answer = json!({"status": "error", "category": "VALIDATION_ERROR",
                        "message": message});
                    (400, answer, false)
                } else {
                    let (mut results, mut errors) = (Vec::new(), Vec::new());
                    for (input, key) in inputs.iter().zip(&keys) {
                        let trace = input["objectWriteTraceId"].clone();
                        let seen = {
                            let s = p.seen.entry(key.clone()).or_default();
                            *s += 1;
                            *s
                        };
                        let traced = |category: &str| {
                            json!({"status": "error", "category": category, "message": key,
                                "context": {"objectWriteTraceId": [trace.clone()]}})
                        };
                        match p.fates.get(key).copied().unwrap_or(Fate::Ok) {
                            Fate::Invalid => errors.push(traced("VALIDATION_ERROR")),
                            Fate::Loose => errors.push(json!({"status": "error",
                                "category": "VALIDATION_ERROR", "message": "invalid email",
                                "context": {"ids": [key]}})),
                            Fate::Transient(n) if seen <= n => {
                                errors.push(traced("INTERNAL_ERROR"))
                            }
                            Fate::Limited(n) if seen <= n => errors.push(traced("RATE_LIMITS")),
                            _ if create && p.applied.contains_key(key) => {
                                errors.push(traced("OBJECT_ALREADY_EXISTS"))
                            }
                            _ => {
                                *p.applied.entry(key.clone()).or_default() += 1;
                                let seq = input["properties"]["seq"].as_u64();
                                p.log.push(match seq {
                                    Some(n) => format!("{key}#{n}"),
                                    None => key.clone(),
                                });
                                results.push(json!({"id": key, "objectWriteTraceId": trace}));
                            }
                        }
                    }
                    let status = if errors.is_empty() { 200 } else { 207 };
                    let answer = json!({"status": "COMPLETE", "results": results,
                        "numErrors": errors.len(), "errors": errors});
                    let lose = p.lose > 0;
                    p.lose = p.lose.saturating_sub(1);
                    (status, answer, lose)
                }
            };
            if lose {
                // Applied, and the answer never comes: the client's timeout decides.
                tokio::time::sleep(Duration::from_secs(3_600)).await;
            }
            let mut res = http::Response::new(Full::from(serde_json::to_vec(&answer)?));
            *res.status_mut() = http::StatusCode::from_u16(status)?;
            if status == 207 && answer["errors"].to_string().contains("RATE_LIMITS") {
                res.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("2"));
            }
            Ok::<_, BoxError>(res)
        }
    })
}

fn shared(fates: &[(&str, Fate)]) -> Shared {
    Arc::new(Mutex::new(Portal {
        fates: fates.iter().map(|(k, f)| ((*k).to_owned(), *f)).collect(),
        ..Portal::default()
    }))
}

fn upsert(email: &str) -> Req {
    http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
        .body(Full::from(format!(
            r#"{{"id":"{email}","idProperty":"email","properties":{{}}}}"#
        )))
        .unwrap()
}

fn create(email: &str) -> Req {
    http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
        .body(Full::from(format!(
            r#"{{"properties":{{"email":"{email}"}}}}"#
        )))
        .unwrap()
}

/// The usual stack through the one-call builder: 100 calls/s, a 5 s timeout per attempt,
/// dead letters kept, batching on top.
fn stack<F: BatchFormat>(
    portal: Shared,
    batch: BatchLayer<F>,
    store: &MemoryStore,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone {
    Throttle::builder()
        .limits(Quota::per_second(100).unwrap())
        .retry(RetryPolicy::default().with_seed(7))
        .timeout(Duration::from_secs(5))
        .dead_letters(store.clone())
        .batch(batch.with_linger(ms(10)))
        .build(self::portal(portal))
        .unwrap()
}

async fn send_all<S>(client: S, reqs: Vec<Req>) -> Vec<Result<Res, BoxError>>
where
    S: Service<Req, Response = Res, Error = BoxError> + Clone,
{
    let calls = reqs.into_iter().map(|r| client.clone().oneshot(r));
    futures_util::future::join_all(calls).await
}

/// The first error of type `E` in `err`'s chain (the dead-letter layer wraps what it stores).
fn find<E: std::error::Error + 'static>(err: &BoxError) -> Option<&E> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn status(r: &Result<Res, BoxError>) -> u16 {
    r.as_ref().map_or(0, |r| r.status().as_u16())
}

fn emails(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}@example.com")).collect()
}

#[tokio::test(start_paused = true)]
async fn an_unattributed_hubspot_error_is_never_reported_delivered() {
    let all = emails(20);
    let portal = shared(&[(all[13].as_str(), Fate::Loose)]);
    let store = MemoryStore::new();
    let batch = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let stats = batch.stats();
    let client = stack(portal.clone(), batch, &store);
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    for (i, r) in out.iter().enumerate() {
        // Only the record the loose error was about fails; the others are delivered.
        assert_eq!(status(r), if i == 13 { 400 } else { 200 }, "record {i}");
    }
    {
        let p = portal.lock().unwrap();
        assert_eq!(p.applied.len(), 19);
        assert!(
            p.applied.values().all(|&n| n == 1),
            "a record written twice"
        );
        // One failure not tied to an input, and one input neither result nor error names: that
        // input is the failure, no resend needed.
        assert_eq!(stats.bisections(), 0);
        assert_eq!(p.batches.len(), 1);
    }
    assert_eq!(store.len().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_with_no_context_is_pinned_only_by_splitting() {
    // Two loose failures in one batch: no count can tell which inputs they were.
    let all = emails(8);
    let portal = shared(&[
        (all[2].as_str(), Fate::Loose),
        (all[5].as_str(), Fate::Loose),
    ]);
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::upsert("contacts")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    let statuses: Vec<u16> = out.iter().map(status).collect();
    assert_eq!(statuses, [200, 200, 400, 200, 200, 400, 200, 200]);
    assert_eq!(portal.lock().unwrap().applied.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn one_invalid_input_fails_alone_and_the_other_99_are_delivered() {
    // HubSpot's refusal quotes the bad value: that input fails, the 99 go again at once.
    let all = emails(100);
    let portal = shared(&[(all[41].as_str(), Fate::Poison)]);
    let store = MemoryStore::new();
    let batch = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let stats = batch.stats();
    let client = stack(portal.clone(), batch, &store);
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    for (i, r) in out.iter().enumerate() {
        assert_eq!(status(r), if i == 41 { 400 } else { 200 }, "record {i}");
    }
    {
        let p = portal.lock().unwrap();
        assert_eq!(p.applied.len(), 99);
        assert!(p.applied.values().all(|&n| n == 1));
        assert_eq!(
            p.batches.len(),
            2,
            "{:?}",
            p.batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    assert_eq!(stats.bisections(), 0);
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 1, "only the bad record is dead-lettered");
    assert!(format!("{:?}", letters[0].body).contains(&all[41]));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_that_names_no_input_is_bisected_down_to_it() {
    let all = emails(100);
    let portal = shared(&[(all[41].as_str(), Fate::QuietPoison)]);
    let store = MemoryStore::new();
    let batch = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let stats = batch.stats();
    let client = stack(portal.clone(), batch, &store);
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    for (i, r) in out.iter().enumerate() {
        assert_eq!(status(r), if i == 41 { 400 } else { 200 }, "record {i}");
    }
    {
        let p = portal.lock().unwrap();
        assert_eq!(p.applied.len(), 99);
        assert!(p.applied.values().all(|&n| n == 1));
        let sizes: Vec<usize> = p.batches.iter().map(Vec::len).collect();
        let with_bad = p.batches.iter().filter(|b| b.contains(&all[41])).count();
        // A half that goes through proves the culprit is in its sibling, which is split
        // again unsent; a refused half sends its sibling as a suspect of its own. 12 calls
        // where sending both halves of every halving would take 15.
        assert_eq!(with_bad, 5, "{sizes:?}");
        assert_eq!(p.batches.len(), 12, "{sizes:?}");
    }
    // Halving 100 down to the bad record: 7 rounds, each splitting the half that holds it.
    assert_eq!(stats.bisections(), 7);
    assert_eq!(store.len().await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_of_a_create_is_not_resent() {
    let all = emails(5);
    let portal = shared(&[]);
    {
        let mut p = portal.lock().unwrap();
        p.create = true;
        p.lose = 1;
    }
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::create("contacts")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| create(e)).collect()).await;
    for r in &out {
        let err = r.as_ref().unwrap_err();
        assert!(
            matches!(
                find::<ThrottleError>(err),
                Some(ThrottleError::OutcomeUnknown { .. })
            ),
            "{err}"
        );
    }
    {
        let p = portal.lock().unwrap();
        assert_eq!(p.batches.len(), 1, "the batch was sent once");
        assert_eq!(p.applied.len(), 5);
    }
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 5);
    assert!(letters.iter().all(|l| l.outcome_unknown), "{letters:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_of_a_create_proven_by_email_is_resent_and_found_delivered() {
    let all = emails(5);
    let portal = shared(&[]);
    {
        let mut p = portal.lock().unwrap();
        p.create = true;
        p.lose = 1;
    }
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::create("contacts").proven_by("email")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| create(e)).collect()).await;
    assert!(out.iter().all(|r| status(r) == 200), "{out:?}");
    {
        let p = portal.lock().unwrap();
        assert_eq!(p.batches.len(), 2, "sent, answer lost, sent again");
        assert!(p.applied.values().all(|&n| n == 1), "created twice");
    }
    assert_eq!(store.len().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_of_an_upsert_is_resent() {
    let all = emails(5);
    let portal = shared(&[]);
    portal.lock().unwrap().lose = 1;
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::upsert("contacts")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    assert!(out.iter().all(|r| status(r) == 200), "{out:?}");
    // Upserting twice is upserting once: at-least-once is the right trade here.
    assert_eq!(portal.lock().unwrap().batches.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_single_post_whose_answer_was_lost_is_not_resent() {
    let attempts = Arc::new(Mutex::new(0u32));
    let api = {
        let attempts = attempts.clone();
        service_fn(move |_req: Req| {
            let attempts = attempts.clone();
            async move {
                *attempts.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let store = MemoryStore::new();
    let client = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .timeout(Duration::from_secs(1))
        .dead_letters(store.clone())
        .build(api)
        .unwrap();
    let post = || {
        http::Request::post("https://api.example.com/v1/events")
            .body(Full::from("{}"))
            .unwrap()
    };
    let err = client.clone().oneshot(post()).await.unwrap_err();
    assert!(err.to_string().contains("outcome unknown"), "{err}");
    assert_eq!(*attempts.lock().unwrap(), 1);
    assert!(store.list().await.unwrap()[0].outcome_unknown);

    // Marked idempotent (or with an Idempotency-Key), it is retried like a GET.
    let mut marked = post();
    marked.extensions_mut().insert(Idempotent(true));
    let _ = client.clone().oneshot(marked).await.unwrap_err();
    assert!(*attempts.lock().unwrap() > 2);
}

#[tokio::test(start_paused = true)]
async fn an_item_level_429_holds_the_shared_gate_and_waits_its_retry_after() {
    let all = emails(10);
    let portal = shared(&[(all[3].as_str(), Fate::Limited(1))]);
    let store = MemoryStore::new();
    let client = Throttle::builder()
        .limits(Quota::per_second(100).unwrap())
        .retry(RetryPolicy::default().with_seed(7))
        .timeout(Duration::from_secs(5))
        .dead_letters(store.clone())
        .batch(BatchLayer::new(HubSpotBatch::upsert("contacts")).with_linger(ms(10)))
        .build(portal_service(&portal))
        .unwrap();
    let out = send_all(client.clone(), all.iter().map(|e| upsert(e)).collect()).await;
    assert!(out.iter().all(|r| status(r) == 200));
    let p = portal.lock().unwrap();
    // The refused record went again only after the 207's Retry-After: 2.
    assert_eq!(p.batches.len(), 2);
    assert!(p.at[1] >= p.at[0] + Duration::from_secs(2), "{:?}", p.at);
}

fn portal_service(
    p: &Shared,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send + 'static
{
    portal(p.clone())
}

#[tokio::test(start_paused = true)]
async fn an_item_level_429_pauses_other_callers_too() {
    let all = emails(3);
    let portal = shared(&[(all[0].as_str(), Fate::Limited(1))]);
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::upsert("contacts")),
        &store,
    );
    let first = client.clone().oneshot(upsert(&all[0]));
    let later = async {
        // Sent after the refusal: the gate is held until the Retry-After.
        tokio::time::sleep(ms(100)).await;
        let start = Instant::now();
        let r = client.clone().oneshot(upsert(&all[1])).await;
        (r, start.elapsed())
    };
    let (a, (b, waited)) = tokio::join!(first, later);
    assert_eq!(status(&a), 200);
    assert_eq!(status(&b), 200);
    assert!(waited >= Duration::from_millis(1_800), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_hubspot_category_in_a_207_is_final() {
    let format = HubSpotBatch::upsert("contacts");
    let answer = Bytes::from_static(
        br#"{"status":"COMPLETE","results":[],"numErrors":1,"errors":[{"category":"SOMETHING_NEW","context":{"objectWriteTraceId":["0"]}}]}"#,
    );
    let enc = Bytes::new();
    let sent = [Sent {
        id: 0,
        encoded: &enc,
    }];
    let r = format
        .decode(http::StatusCode::MULTI_STATUS, &answer, &sent)
        .unwrap();
    assert_eq!(r[0].status, 400);
    // In a batch answered 503 it is worth another try.
    let r = format
        .decode(http::StatusCode::SERVICE_UNAVAILABLE, &answer, &sent)
        .unwrap();
    assert_eq!(r[0].status, 503);
}

#[tokio::test(start_paused = true)]
async fn transient_item_failures_back_off_with_the_policy() {
    let all = emails(4);
    let portal = shared(&[(all[1].as_str(), Fate::Transient(1))]);
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::upsert("contacts")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| upsert(e)).collect()).await;
    assert!(out.iter().all(|r| status(r) == 200));
    let p = portal.lock().unwrap();
    assert_eq!(p.batches.len(), 2);
    // Not one linger later: the policy's back-off (a jittered 1 s base) first.
    assert!(p.at[1] - p.at[0] >= ms(100), "{:?}", p.at);
}

#[tokio::test(start_paused = true)]
async fn updates_of_one_contact_never_share_a_batch_and_keep_their_order() {
    // Three updates of one contact, the first refused once (transient), among others.
    let portal = shared(&[("same@example.com", Fate::Transient(1))]);
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::upsert("contacts")),
        &store,
    );
    let update = |email: &str, seq: u32| {
        http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
            .body(Full::from(format!(
                r#"{{"id":"{email}","idProperty":"email","properties":{{"seq":{seq}}}}}"#
            )))
            .unwrap()
    };
    let mut reqs = Vec::new();
    for seq in 0..3 {
        reqs.push(update("same@example.com", seq));
        reqs.push(update(&format!("other{seq}@example.com"), seq));
    }
    let out = send_all(client, reqs).await;
    assert!(out.iter().all(|r| status(r) == 200), "{out:?}");
    let p = portal.lock().unwrap();
    for batch in &p.batches {
        let same = batch.iter().filter(|k| *k == "same@example.com").count();
        assert!(same <= 1, "two updates of one contact in {batch:?}");
    }
    // The first update was refused once and sent again; the later two waited for it.
    let order: Vec<&String> = p.log.iter().filter(|k| k.starts_with("same@")).collect();
    assert_eq!(
        order,
        [
            "same@example.com#0",
            "same@example.com#1",
            "same@example.com#2"
        ]
    );
}

/// A Braze-like format that counts every object against the limit.
#[derive(Debug)]
struct PerObject;

impl BatchFormat for PerObject {
    fn max_items(&self) -> usize {
        75
    }
    fn max_bytes(&self) -> usize {
        usize::MAX
    }
    fn endpoint(&self) -> (http::Method, &str) {
        (http::Method::POST, "/users/track")
    }
    fn envelope(&self) -> Envelope {
        Envelope::new(r#"{"attributes":["#, ",", "]}")
    }
    fn encode_item(
        &self,
        _id: u64,
        _head: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Bytes, BoxError> {
        Ok(body.clone())
    }
    fn decode(
        &self,
        _status: http::StatusCode,
        _body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        Ok(items.iter().map(|_| ItemResult::ok()).collect())
    }
    fn cost(&self, items: usize, _bytes: usize) -> u32 {
        items as u32
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_costing_more_than_the_gate_burst_is_cut_to_fit() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let api = {
        let sizes = sizes.clone();
        service_fn(move |req: Req| {
            let sizes = sizes.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                let v: Value = serde_json::from_slice(&body)?;
                sizes
                    .lock()
                    .unwrap()
                    .push(v["attributes"].as_array().unwrap().len());
                let answer = Full::new(Bytes::from_static(br#"{"message":"success"}"#));
                Ok::<_, BoxError>(http::Response::new(answer))
            }
        })
    };
    // 50 objects per second with a burst of 50: a batch of 75 could never be admitted.
    let gate = WeightedRateLimitLayer::new(Quota::per_second(50).unwrap().with_burst(50).unwrap());
    let client = tower::ServiceBuilder::new()
        .layer(BatchLayer::new(PerObject).with_linger(ms(10)))
        .layer(gate)
        .service(api);
    let reqs: Vec<Req> = (0..150)
        .map(|i| {
            http::Request::post("https://rest.iad-01.braze.com/users/track")
                .body(Full::from(format!(r#"{{"external_id":"u{i}"}}"#)))
                .unwrap()
        })
        .collect();
    let out = send_all(client, reqs).await;
    assert!(
        out.iter().all(|r| status(r) == 200),
        "{:?}",
        out.iter().find(|r| r.is_err())
    );
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), 150);
    assert!(sizes.iter().all(|&n| n <= 50), "{sizes:?}");
}

#[test]
fn customerio_errors_in_a_200_fail_only_the_named_items() {
    let answer = Bytes::from_static(
        br#"{"errors":[{"batch_index":1,"reason":"invalid","field":"identifiers","message":"missing id"}]}"#,
    );
    let enc = Bytes::new();
    let sent: Vec<Sent<'_>> = (0..3).map(|id| Sent { id, encoded: &enc }).collect();
    let r = CustomerIoBatch::new()
        .decode(http::StatusCode::OK, &answer, &sent)
        .unwrap();
    let statuses: Vec<u16> = r.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 400, 200]);
}

#[test]
fn mailchimp_members_errors_fail_only_those_members() {
    let list = MailchimpMembers::upsert("abc123").unwrap();
    let head = http::Request::new(()).into_parts().0;
    let items: Vec<Bytes> = ["a@x.com", "B@x.com", "c@x.com"]
        .iter()
        .map(|e| {
            list.encode_item(
                0,
                &head,
                &Bytes::from(format!(r#"{{"email_address":"{e}"}}"#)),
            )
            .unwrap()
        })
        .collect();
    let sent: Vec<Sent<'_>> = items
        .iter()
        .enumerate()
        .map(|(id, encoded)| Sent {
            id: id as u64,
            encoded,
        })
        .collect();
    let answer = Bytes::from_static(
        br#"{"new_members":[{"email_address":"a@x.com"}],"updated_members":[],"errors":[{"email_address":"b@x.com","error":"looks fake","error_code":"ERROR_GENERIC"}],"error_count":1}"#,
    );
    let r = list.decode(http::StatusCode::OK, &answer, &sent).unwrap();
    assert_eq!(r[0].status, 200);
    assert_eq!(r[1].status, 400);
    // Not mentioned at all: neither delivered nor refused.
    assert!(!r[2].is_attributed());
    assert_eq!(list.identity(&head, &items[1]).as_deref(), Some("b@x.com"));
}

#[test]
fn braze_track_is_one_kind_of_object_per_batch() {
    assert_eq!(BrazeTrack::events().max_items(), 75);
    assert_eq!(
        BrazeTrack::attributes()
            .envelope()
            .build(&[Bytes::from_static(b"{}")]),
        Bytes::from_static(br#"{"attributes":[{}]}"#)
    );
}

#[tokio::test(start_paused = true)]
async fn unattributed_records_of_a_create_are_failed_typed_not_delivered() {
    // A create answered with a loose error among several inputs cannot be split safely
    // without a unique property: those records fail with a typed error, never 200.
    let all = emails(4);
    let portal = shared(&[
        (all[0].as_str(), Fate::Loose),
        (all[1].as_str(), Fate::Loose),
    ]);
    portal.lock().unwrap().create = true;
    let store = MemoryStore::new();
    let client = stack(
        portal.clone(),
        BatchLayer::new(HubSpotBatch::create("contacts")),
        &store,
    );
    let out = send_all(client, all.iter().map(|e| create(e)).collect()).await;
    assert_eq!(status(&out[2]), 200);
    assert_eq!(status(&out[3]), 200);
    for r in &out[..2] {
        let err = r.as_ref().unwrap_err();
        assert!(
            matches!(
                find::<BatchError>(err),
                Some(BatchError::Unattributed { .. })
            ),
            "{err}"
        );
    }
    assert_eq!(store.len().await.unwrap(), 2);
}

// The property: whatever each record's fate, however the records are batched and lingered,
// and whichever callers give up, every caller that waits gets exactly one answer, and it is
// its record's truth; no upsert is applied twice by us.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_caller_hears_its_records_truth(
        fates in proptest::collection::vec(
            prop_oneof![
                6 => Just(Fate::Ok),
                1 => Just(Fate::Invalid),
                1 => Just(Fate::Loose),
                1 => (1u32..3).prop_map(Fate::Transient),
                1 => (1u32..2).prop_map(Fate::Limited),
                1 => Just(Fate::Poison),
                1 => Just(Fate::QuietPoison),
            ],
            1..60,
        ),
        max_items in 1usize..40,
        linger_ms in 0u64..50,
        cancel in proptest::collection::vec(any::<bool>(), 60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let keys = emails(fates.len());
            let pairs: Vec<(&str, Fate)> =
                keys.iter().map(String::as_str).zip(fates.iter().copied()).collect();
            let portal = shared(&pairs);
            let store = MemoryStore::new();
            let batch = BatchLayer::new(HubSpotBatch::upsert("contacts"))
                .with_max_items(max_items)
                .unwrap()
                .with_linger(ms(linger_ms));
            let client = stack(portal.clone(), batch, &store);
            let calls = keys.iter().enumerate().map(|(i, k)| {
                let call = client.clone().oneshot(upsert(k));
                let give_up = cancel[i] && i % 7 == 3;
                async move {
                    if give_up {
                        // Dropped before the batch can go: withdrawn.
                        let _ = tokio::time::timeout(Duration::ZERO, call).await;
                        None
                    } else {
                        Some(call.await)
                    }
                }
            });
            let out = futures_util::future::join_all(calls).await;
            let p = portal.lock().unwrap();
            for (i, (fate, answer)) in fates.iter().zip(&out).enumerate() {
                let Some(answer) = answer else { continue };
                let want = match fate {
                    Fate::Ok => 200,
                    Fate::Invalid | Fate::Loose | Fate::Poison | Fate::QuietPoison => 400,
                    // Three sends per record at most: failing twice then succeeding is fine.
                    Fate::Transient(n) | Fate::Limited(n) if *n < 3 => 200,
                    Fate::Transient(_) => 500,
                    Fate::Limited(_) => 429,
                };
                assert_eq!(status(answer), want, "record {i} {fate:?}: {answer:?}");
            }
            assert!(p.applied.values().all(|&n| n == 1), "an upsert applied twice: {:?}", p.applied);
            for (i, fate) in fates.iter().enumerate() {
                let applied = p.applied.contains_key(&keys[i]);
                let delivered = out[i].as_ref().is_some_and(|r| status(r) == 200);
                // Nobody hears "delivered" for a record the portal does not hold.
                if delivered {
                    assert!(applied, "record {i} {fate:?} reported delivered, never applied");
                }
            }
        });
    }
}

// Creates whose answers are lost: nothing is created twice, and a record is reported
// delivered or "outcome unknown" exactly when the portal holds it.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_create_of_unknown_outcome_is_never_sent_twice(
        records in 1usize..50,
        max_items in 1usize..20,
        lose in 0u32..4,
        proven in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let keys = emails(records);
            let portal = shared(&[]);
            {
                let mut p = portal.lock().unwrap();
                p.create = true;
                p.lose = lose;
            }
            let format = if proven {
                HubSpotBatch::create("contacts").proven_by("email")
            } else {
                HubSpotBatch::create("contacts")
            };
            let store = MemoryStore::new();
            let batch = BatchLayer::new(format).with_max_items(max_items).unwrap();
            let client = stack(portal.clone(), batch, &store);
            let out = send_all(client, keys.iter().map(|k| create(k)).collect()).await;
            let p = portal.lock().unwrap();
            assert!(p.applied.values().all(|&n| n == 1), "created twice: {:?}", p.applied);
            for (key, answer) in keys.iter().zip(&out) {
                let held = p.applied.contains_key(key);
                match answer {
                    Ok(res) => {
                        assert_eq!(res.status(), 200);
                        assert!(held, "{key} delivered, never created");
                    }
                    Err(err) => {
                        // A provable create is resent until its third send: it fails only
                        // when the answers of all three are lost.
                        assert!(!(proven && lose < 3), "a provable create failed: {err}");
                        assert!(
                            matches!(find::<ThrottleError>(err), Some(ThrottleError::OutcomeUnknown { .. })),
                            "{err}"
                        );
                        assert!(held, "{key} reported unknown, but the lost answer's batch was applied");
                    }
                }
            }
        });
    }
}
