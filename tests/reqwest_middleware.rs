//! The reqwest-middleware adapter against the mock server over loopback: the same pacing,
//! shared 429 hold, transient retries, typed refusals, adaptive control and dead letters as
//! the tower stack.
#![cfg(all(feature = "reqwest", feature = "mock"))]

use std::time::Duration;

mod common;

use bytes::Bytes;
use http_body_util::Full;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower_throttle::bucket::Bucket;
use tower_throttle::dead_letter::{
    DeadLetterStore, DeadLettered, MemoryStore, StoredBody, REDACTED,
};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
use tower_throttle::reqwest::{throttle_error, ThrottleMiddleware};
use tower_throttle::Aimd;
use tower_throttle::{
    backoff::{Backoff, Jitter},
    Quota, RateLimitLayer, ThrottleError,
};
use tower_throttle::{retry::Attempts, RetryPolicy};

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

/// Waits (in paused time) until the server has received `n` requests.
async fn received(server: &MockServer, n: u64) {
    while server.stats().received < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn reqwest_503_with_retry_after_waits_as_told_and_holds_the_shared_bucket() {
    // Before: the middleware classified the 503 without its `Retry-After`, backed off 1 ms
    // and set no hold, while the tower policy waited 5 s and held the bucket.
    let server = MockServer::builder()
        .fail_ratio(1.0)
        .unavailable_retry_after(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let mw = ThrottleMiddleware::new(Quota::per_second(50).unwrap()).with_retry(quick_retries(1));
    let client = client(mw.clone());
    let start = tokio::time::Instant::now();
    let url = server.url("/v1/track");
    let call = tokio::spawn(async move { client.get(url).send().await.unwrap() });

    received(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = mw.bucket().held_until(tokio::time::Instant::now());
    assert!(
        held.is_some_and(|until| until >= start + Duration::from_secs(5)),
        "{held:?}"
    );
    let res = call.await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let elapsed = start.elapsed();
    // The server's 5 s, plus at most 0.5 s of spread; not the 1 ms backoff.
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_millis(5_600),
        "{elapsed:?}"
    );
    assert_eq!(server.stats().received, 2);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reqwest_429_holds_the_refused_key_of_a_keyed_bucket() {
    // Before: `RetryPolicy::with_keyed_bucket` was ignored by the middleware, so a tower
    // stack sharing that keyed gate kept sending to the host that had just refused.
    use tower_throttle::rate_limit::{ByAuthority, KeyedRateLimitLayer};
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(1, Duration::from_secs(60)).unwrap())
        .retry_after(RetryAfterFormat::Seconds)
        .start()
        .await
        .unwrap();
    let keyed = KeyedRateLimitLayer::per_authority(Quota::per_second(10).unwrap());
    let policy = quick_retries(1).with_keyed_bucket(keyed.bucket().clone(), ByAuthority);
    let client = client(ThrottleMiddleware::new(Quota::per_second(50).unwrap()).with_retry(policy));

    let ok = client.get(server.url("/v1/track")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let now = tokio::time::Instant::now();
    let refused_key: Option<http::uri::Authority> = server
        .url("/")
        .parse::<http::Uri>()
        .unwrap()
        .authority()
        .cloned();
    assert_eq!(keyed.bucket().held_until(&refused_key, now), None);
    let url = server.url("/v1/track");
    let call = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    received(&server, 2).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let now = tokio::time::Instant::now();
    let held = keyed.bucket().held_until(&refused_key, now);
    assert!(
        held.is_some_and(|until| until >= now + Duration::from_secs(59)),
        "{held:?}"
    );
    let other: Option<http::uri::Authority> = Some("api.other.example".parse().unwrap());
    assert_eq!(keyed.bucket().held_until(&other, now), None);
    call.abort();
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reqwest_daily_quota_past_the_deadline_is_a_typed_error_at_once() {
    // A reqwest body is a stream, so the daily refusal is told by HubSpot's daily pair at 0
    // (private apps); the server's `Date` puts the reset ten minutes away.
    let mut headers = http::HeaderMap::new();
    headers.insert("date", "Wed, 02 Dec 2026 23:50:00 GMT".parse().unwrap());
    headers.insert("x-hubspot-ratelimit-daily", "250000".parse().unwrap());
    headers.insert("x-hubspot-ratelimit-daily-remaining", "0".parse().unwrap());
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(1, Duration::from_secs(600)).unwrap())
        .retry_after(RetryAfterFormat::Omit)
        .limited_answer(r#"{"status":"error"}"#, headers)
        .start()
        .await
        .unwrap();
    let policy = RetryPolicy::default().with_deadline(Duration::from_secs(60));
    let mw = ThrottleMiddleware::new(Quota::per_second(10).unwrap()).with_retry(policy);
    let client = client(mw.clone());
    assert_eq!(
        client.get(server.url("/")).send().await.unwrap().status(),
        200
    );

    let start = tokio::time::Instant::now();
    let err = client.get(server.url("/")).send().await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(
            throttle_error(&err),
            Some(ThrottleError::QuotaExhausted { wait, status: 429 }) if *wait == Duration::from_secs(600)
        ),
        "{err}"
    );
    // Every caller of the client is held until the reset.
    let held = mw.bucket().held_until(tokio::time::Instant::now());
    assert!(held.is_some_and(|until| until >= start + Duration::from_secs(599)));
    assert_eq!(server.stats().rate_limited, 1);
    server.shutdown().await;
}
