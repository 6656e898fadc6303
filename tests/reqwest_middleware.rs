//! The reqwest-middleware adapter against the mock server over loopback: the same pacing,
//! shared 429 hold, transient retries, typed refusals, adaptive control and dead letters as
//! the tower stack.
#![cfg(all(feature = "reqwest", feature = "mock"))]

use std::time::Duration;

mod common;

use bytes::Bytes;
use http_body_util::Full;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower_throttle::adaptive::Aimd;
use tower_throttle::bucket::Bucket;
use tower_throttle::dead_letter::{
    DeadLetterStore, DeadLettered, MemoryStore, StoredBody, REDACTED,
};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::reqwest::{throttle_error, ThrottleMiddleware};
use tower_throttle::retry::{Attempts, RetryPolicy};
use tower_throttle::{Backoff, Jitter, Quota, RateLimitLayer, ThrottleError};

fn client(mw: ThrottleMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(mw).build()
}

/// Sends `n` POSTs with distinct `x-request-id`s from `workers` tasks; returns the final
/// statuses and attempt counts.
async fn send_all(
    client: ClientWithMiddleware,
    url: String,
    n: usize,
    workers: usize,
) -> Vec<(u16, u32)> {
    common::fan_out(n, workers, move |id| {
        let req = client
            .post(&url)
            .header("x-request-id", id.to_string())
            .body(format!("{{\"id\":{id}}}"));
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), common::attempts(res.extensions()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_paced_client_never_exceeds_a_rolling_window() {
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(10, Duration::from_secs(1)).unwrap())
        .start()
        .await
        .unwrap();
    // 8/s: pacing at exactly the server's figure would let loopback jitter put an 11th
    // request into some window now and then (the retry would absorb it, but this test is
    // about the gate alone).
    let mw = ThrottleMiddleware::new(Quota::per_second(8).unwrap()).without_retry();
    let results = send_all(client(mw), server.url("/v1/track"), 20, 20).await;
    assert!(results.iter().all(|&(s, _)| s == 200), "{results:?}");
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.rate_limited), (20, 0));
    assert!(server.max_accepted_in_any_window(Duration::from_secs(1)) <= 10);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_429_storm_holds_the_shared_bucket_and_every_record_arrives() {
    // Server 40/s burst 10; client paced at 40/s but misconfigured with burst 40.
    let server = common::storm_server().await;
    let mw = ThrottleMiddleware::new(Quota::per_second(40).unwrap().with_burst(40).unwrap());
    let results = send_all(client(mw), server.url("/v1/track"), 120, 40).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let stats = server.stats();
    assert_eq!((stats.distinct_ids, stats.duplicate_ids), (120, 0));
    assert!(stats.rate_limited > 0);
    // After the shared hold everyone resumes paced: no second round of 429s.
    assert!(stats.rate_limited <= 32, "{stats:?}");
    assert!(results.iter().all(|(_, a)| *a <= 2), "{results:?}");
    let attempts: u32 = results.iter().map(|(_, a)| a).sum();
    assert_eq!(u64::from(attempts), stats.received);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_injected_503s_are_retried_until_delivered() {
    let server = MockServer::builder()
        .fail_ratio(0.2)
        .seed(7)
        .start()
        .await
        .unwrap();
    let backoff = Backoff::builder()
        .base(Duration::from_millis(10))
        .jitter(Jitter::Full)
        .max_retries(8)
        .build()
        .unwrap();
    let mw = ThrottleMiddleware::new(Quota::per_second(500).unwrap()).with_retry(
        RetryPolicy::default()
            .with_backoff(backoff)
            .without_budget(),
    );
    let results = send_all(client(mw), server.url("/v1/track"), 100, 10).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let stats = server.stats();
    assert!(stats.failed > 0);
    assert_eq!(stats.distinct_ids, 100);
    let attempts: u32 = results.iter().map(|(_, a)| a).sum();
    assert_eq!(u64::from(attempts), stats.received);
    server.shutdown().await;
}

#[tokio::test]
async fn reqwest_streaming_body_that_needs_a_retry_is_not_replayable() {
    let server = MockServer::builder().fail_ratio(1.0).start().await.unwrap();
    let client = client(ThrottleMiddleware::new(Quota::per_second(100).unwrap()));
    let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"{}")));
    let err = client
        .post(server.url("/v1/import"))
        .body(body)
        .send()
        .await
        .unwrap_err();
    match throttle_error(&err) {
        Some(ThrottleError::NotReplayable { reason }) => {
            assert!(reason.contains("503"), "{reason}")
        }
        other => panic!("expected NotReplayable, got {other:?} from {err}"),
    }
    assert_eq!(server.stats().received, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn reqwest_max_wait_refuses_with_a_typed_error_and_sends_nothing() {
    let server = MockServer::builder().start().await.unwrap();
    let layer =
        RateLimitLayer::new(Quota::per_second(1).unwrap()).with_max_wait(Duration::from_millis(50));
    let client = client(ThrottleMiddleware::from_layer(layer));
    let res = client.get(server.url("/v1/track")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    // The next slot is a second away, more than max_wait.
    let err = client
        .get(server.url("/v1/track"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            throttle_error(&err),
            Some(ThrottleError::WaitTooLong { .. })
        ),
        "{err}"
    );
    assert_eq!(server.stats().received, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn reqwest_429_cuts_the_adaptive_rate_and_holds_the_bucket() {
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(1, Duration::from_secs(60)).unwrap())
        .retry_after(RetryAfterFormat::Seconds)
        .start()
        .await
        .unwrap();
    let mw = ThrottleMiddleware::new(Quota::per_second(50).unwrap())
        .without_retry()
        .with_adaptive(Aimd::new(20.0, 1.0, 50.0).unwrap())
        .unwrap();
    assert_eq!(mw.bucket().rate(), 20.0);
    let client = client(mw.clone());

    let ok = client.get(server.url("/v1/track")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        mw.bucket().rate(),
        20.0,
        "one success does not raise AIMD's rate"
    );
    let limited = client.get(server.url("/v1/track")).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    // AIMD halves on a 429; the controller drives the middleware's own bucket.
    assert_eq!(mw.bucket().rate(), 10.0);
    assert_eq!(mw.adaptive_rate(), Some(10.0));
    // The server's Retry-After holds the shared bucket.
    assert!(mw
        .bucket()
        .held_until(tokio::time::Instant::now())
        .is_some());
    assert_eq!(server.stats().rate_limited, 1);
    server.shutdown().await;
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    let backoff = Backoff::builder()
        .base(Duration::from_millis(1))
        .max_retries(max_retries)
        .build()
        .unwrap();
    RetryPolicy::default()
        .with_backoff(backoff)
        .without_budget()
}

#[tokio::test]
async fn reqwest_exhausted_retries_end_in_the_dead_letter_store_redacted() {
    let server = MockServer::builder().fail_ratio(1.0).start().await.unwrap();
    let store = MemoryStore::new();
    let mw = ThrottleMiddleware::new(Quota::per_second(1000).unwrap())
        .with_retry(quick_retries(2))
        .with_dead_letters(store.clone());
    let client = client(mw);
    let url = server.url("/v1/import");

    let res = client
        .post(&url)
        .header("authorization", "Bearer s3cret")
        .header("x-request-id", "42")
        .body(r#"{"id":42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let id = res.extensions().get::<DeadLettered>().expect("marked").id;

    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.id, id);
    assert_eq!(
        (letter.method.as_str(), letter.uri.as_str()),
        ("POST", url.as_str())
    );
    assert_eq!((letter.status, letter.attempts), (Some(503), 3));
    assert_eq!(letter.error, None);
    assert_eq!(letter.body, StoredBody::Text(r#"{"id":42}"#.into()));
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some(REDACTED));
    assert_eq!(header("x-request-id"), Some("42"));
    assert!(!format!("{letters:?}").contains("s3cret"));
    assert_eq!(server.stats().received, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn reqwest_successes_are_not_dead_lettered_and_errors_are() {
    let ok_server = MockServer::builder().start().await.unwrap();
    let failing = MockServer::builder().fail_ratio(1.0).start().await.unwrap();
    let store = MemoryStore::new();
    let mw = ThrottleMiddleware::new(Quota::per_second(1000).unwrap())
        .with_retry(quick_retries(2))
        .with_dead_letters(store.clone());
    let client = client(mw);

    let res = client.get(ok_server.url("/v1/track")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.extensions().get::<DeadLettered>().is_none());
    assert!(store.is_empty().await.unwrap());

    // A streaming body that needed a retry: the error is returned unchanged, and stored.
    let body = reqwest::Body::wrap(Full::new(Bytes::from_static(b"{}")));
    let err = client
        .post(failing.url("/v1/import"))
        .header("cookie", "session=s3cret")
        .body(body)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        throttle_error(&err),
        Some(ThrottleError::NotReplayable { .. })
    ));
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].status, letters[0].attempts), (None, 1));
    let error = letters[0].error.as_deref().unwrap();
    assert!(error.contains("503"), "{error}");
    assert_eq!(
        letters[0].headers,
        [("cookie".to_string(), REDACTED.to_string())]
    );
    // A streaming body is gone once sent: stored empty.
    assert_eq!(letters[0].body, StoredBody::Text(String::new()));
    ok_server.shutdown().await;
    failing.shutdown().await;
}
