//! A spent daily allowance (HubSpot's `policyName: "DAILY"` 429) through the whole
//! `Throttle::builder()` stack against the mock server, in paused time: every caller holds
//! until the daily reset instead of burning its retries in seconds and being dead-lettered;
//! past a deadline it ends at once; a secondly 429 and hostile bodies behave as plain 429s.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{service_fn, BoxError, ServiceExt};
use tower_throttle::dead_letter::{DeadLetterStore, DeadLetteredError, MemoryStore};
use tower_throttle::mock::MockServer;
use tower_throttle::retry::Attempts;
use tower_throttle::{backoff::Backoff, presets, RetryPolicy, Throttle, ThrottleError};

mod common;

use common::hubspot::{self, post, send, DAILY, SECONDLY, TO_RESET};

async fn portal(allowance: u32, window: Duration, body: impl Into<Bytes>) -> MockServer {
    hubspot::portal(allowance, window, body, HeaderMap::new()).await
}

#[tokio::test(start_paused = true)]
async fn hubspot_daily_429_holds_until_the_daily_reset() {
    // Before: the 429 named no wait, so the request backed off 1-2-4-8 s, was refused five
    // times within 16 s and was dead-lettered while the allowance was still spent, and every
    // other caller kept spending attempts on it.
    let server = portal(5, TO_RESET, DAILY).await;
    let store = MemoryStore::new();
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .dead_letters(store.clone())
        .timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();

    let results = send(client, &server, 8).await;

    let stats = server.stats();
    assert!(
        results.iter().all(|(r, _)| matches!(r, Ok((200, _)))),
        "{results:?}"
    );
    assert_eq!(stats.accepted, 8);
    // One refusal: the hold reached every caller before its slot came up.
    assert_eq!(stats.rate_limited, 1, "{stats:?}");
    assert!(store.list().await.unwrap().is_empty());
    // The refused request came back once, after the reset (plus at most 1 s of spread), and
    // the waiting spent no attempt but that one.
    let late: Vec<_> = results.iter().filter(|(_, t)| *t >= TO_RESET).collect();
    assert_eq!(
        late.len(),
        3,
        "the refused one and the two behind it: {results:?}"
    );
    assert!(results
        .iter()
        .all(|(_, t)| *t < TO_RESET + Duration::from_secs(3)));
    assert_eq!(
        results
            .iter()
            .filter(|(r, _)| matches!(r, Ok((200, 2))))
            .count(),
        1
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_daily_429_past_the_deadline_ends_at_once_as_a_typed_error_and_a_dead_letter() {
    let server = portal(1, TO_RESET, DAILY).await;
    let store = MemoryStore::new();
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .retry(RetryPolicy::default().with_deadline(Duration::from_secs(60)))
        .dead_letters(store.clone())
        .timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();
    let ok = client
        .clone()
        .oneshot(post(server.uri("/crm/v3/objects/contacts"), 0))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let start = Instant::now();
    let err = client
        .clone()
        .oneshot(post(server.uri("/crm/v3/objects/contacts"), 1))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let err = err
        .downcast_ref::<DeadLetteredError>()
        .expect("stored as a dead letter")
        .source_ref();
    match ThrottleError::from_box(err) {
        Some(ThrottleError::QuotaExhausted { wait, status: 429 }) => {
            assert!(
                *wait > TO_RESET - Duration::from_secs(1) && *wait <= TO_RESET,
                "{wait:?}"
            )
        }
        other => panic!("expected QuotaExhausted, got {other:?} ({err})"),
    }
    assert_eq!(store.list().await.unwrap().len(), 1);
    // The shared bucket is held all the same: the next caller waits for the reset rather
    // than spending a request on a refusal.
    let res = client
        .oneshot(post(server.uri("/crm/v3/objects/contacts"), 2))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(start.elapsed() >= TO_RESET - Duration::from_secs(1));
    assert_eq!(server.stats().rate_limited, 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_secondly_429_backs_off_as_before() {
    let server = portal(2, Duration::from_secs(3), SECONDLY).await;
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();
    let results = send(client, &server, 4).await;
    assert!(
        results.iter().all(|(r, _)| matches!(r, Ok((200, _)))),
        "{results:?}"
    );
    // Backoff, not a daily hold.
    assert!(
        results.iter().all(|(_, t)| *t < Duration::from_secs(30)),
        "{results:?}"
    );
    assert!(server.stats().rate_limited >= 1);
    server.shutdown().await;
}

/// A daily refusal the policy must not read: too large, or not JSON.
async fn uninspected_is_a_plain_429(body: Bytes) {
    let server = portal(1, Duration::from_secs(3), body.clone()).await;
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();
    let start = Instant::now();
    let results = send(client.clone(), &server, 2).await;
    assert!(
        results.iter().all(|(r, _)| matches!(r, Ok((200, _)))),
        "{results:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );

    // With no retries left, the 429 comes back to the caller with its body whole.
    let no_retries = Throttle::builder()
        .limits(presets::hubspot())
        .retry(
            RetryPolicy::default().with_backoff(Backoff::builder().max_retries(0).build().unwrap()),
        )
        .timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();
    let _ = no_retries
        .clone()
        .oneshot(post(server.uri("/crm/v3/objects/contacts"), 10))
        .await
        .unwrap();
    let res = no_retries
        .oneshot(post(server.uri("/crm/v3/objects/contacts"), 11))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), body);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_huge_daily_429_body_is_not_parsed_and_is_handed_on_whole() {
    // Valid JSON naming the daily policy, padded past the 16 KiB the policy reads.
    let mut body = DAILY.trim_end_matches('}').to_owned();
    body.push_str(&format!(r#","padding":"{}"}}"#, "x".repeat(1 << 20)));
    uninspected_is_a_plain_429(Bytes::from(body)).await;
}

#[tokio::test(start_paused = true)]
async fn a_malformed_daily_429_body_is_a_plain_429() {
    uninspected_is_a_plain_429(Bytes::from_static(br#"{"policyName":"DAILY","#)).await;
}

#[tokio::test(start_paused = true)]
async fn a_429_body_that_never_ends_times_out_and_is_retried() {
    // Headers at once, then a body that never completes: the attempt times out (a transient
    // failure), so the caller is neither stalled nor misled into a daily hold.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let api = {
        let calls = calls.clone();
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let body: http_body_util::combinators::BoxBody<Bytes, BoxError> = if n == 0 {
                    let prefix = futures_util::stream::iter([Ok::<_, BoxError>(
                        http_body::Frame::data(Bytes::from_static(br#"{"policyName":"DAI"#)),
                    )]);
                    let stall = futures_util::stream::pending();
                    http_body_util::StreamBody::new(futures_util::StreamExt::chain(prefix, stall))
                        .boxed()
                } else {
                    Full::new(Bytes::from_static(b"{}"))
                        .map_err(Into::into)
                        .boxed()
                };
                let status = if n == 0 { 429 } else { 200 };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(body)?)
            }
        })
    };
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .timeout(Duration::from_secs(5))
        .build(api)
        .unwrap();
    let start = Instant::now();
    let req = http::Request::new(Full::new(Bytes::new()));
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    // 5 s of timeout and about 1 s of backoff, not 10 minutes.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}
