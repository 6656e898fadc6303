//! The reqwest-middleware adapter against the mock server over loopback: the same pacing,
//! shared 429 hold, transient retries, typed refusals, adaptive control and dead letters as
//! the tower stack.
#![cfg(all(feature = "reqwest", feature = "mock"))]

use std::time::Duration;

mod common;

use common::hubspot::{self, head, DAILY, SECONDLY, TEN_TO_MIDNIGHT, TO_RESET};
use common::scripted::{self, chunk, Script};

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
    // A body that names no policy: the daily refusal is told by HubSpot's daily pair at 0
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

// HubSpot's daily refusal told from its body (issue 17, the reqwest gap).

/// A portal of an OAuth app: `allowance` requests per ten minutes, refused with `body`, a
/// `Date` and an `x-trace` header.
async fn portal(allowance: u32, body: impl Into<Bytes>) -> MockServer {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-trace", "refusal-1".parse().unwrap());
    hubspot::portal(allowance, TO_RESET, body, headers).await
}

#[tokio::test(start_paused = true)]
async fn reqwest_daily_429_without_the_daily_header_holds_until_the_daily_reset() {
    // Before: the middleware handed the classifier no body, so without the private-app
    // header the daily 429 was a secondly one: backed off, refused again each time, and
    // handed back as a 429 within seconds while the allowance was still spent.
    let server = portal(1, DAILY).await;
    let mw = ThrottleMiddleware::new(tower_throttle::presets::hubspot())
        .with_retry(RetryPolicy::default().with_seed(7));
    let client = client(mw.clone());
    let url = server.url("/crm/v3/objects/contacts");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let start = tokio::time::Instant::now();
    let call = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    received(&server, 2).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Every caller of the client is held until the reset, not only the refused one.
    let held = mw.bucket().held_until(tokio::time::Instant::now());
    assert!(
        held.is_some_and(|until| until >= start + TO_RESET),
        "{held:?}"
    );
    let res = call.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert!(
        elapsed >= TO_RESET && elapsed < TO_RESET + Duration::from_secs(3),
        "{elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.rate_limited), (2, 1), "{stats:?}");
    server.shutdown().await;
}

/// The adaptive controller reads the body the middleware read for the retry policy: a spent
/// daily allowance says nothing about the short-window rate, so it is no cut (AIMD would
/// halve on an ordinary 429).
#[tokio::test(start_paused = true)]
async fn reqwest_daily_429_told_by_its_body_is_not_an_adaptive_rate_cut() {
    let server = portal(1, DAILY).await;
    let mw = ThrottleMiddleware::new(Quota::per_second(50).unwrap())
        .with_retry(RetryPolicy::default().with_seed(7))
        .with_adaptive(Aimd::new(20.0, 1.0, 50.0).unwrap())
        .unwrap();
    let client = client(mw.clone());
    let url = server.url("/crm/v3/objects/contacts");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let before = mw.bucket().rate();
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.stats().rate_limited, 1);
    assert!(
        mw.bucket().rate() >= before,
        "cut from {before} to {}",
        mw.bucket().rate()
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reqwest_daily_429_told_by_its_body_past_the_deadline_is_quota_exhausted_at_once() {
    let server = portal(1, DAILY).await;
    let policy = RetryPolicy::default().with_deadline(Duration::from_secs(60));
    let mw = ThrottleMiddleware::new(tower_throttle::presets::hubspot()).with_retry(policy);
    let client = client(mw.clone());
    let url = server.url("/crm/v3/objects/contacts");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let start = tokio::time::Instant::now();
    let err = client.get(&url).send().await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(
            throttle_error(&err),
            Some(ThrottleError::QuotaExhausted { wait, status: 429 }) if *wait == TO_RESET
        ),
        "{err}"
    );
    let held = mw.bucket().held_until(tokio::time::Instant::now());
    assert!(held.is_some_and(|until| until >= start + TO_RESET - Duration::from_secs(1)));
    assert_eq!(server.stats().rate_limited, 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reqwest_final_429_hands_the_caller_its_status_headers_url_and_body_unchanged() {
    let server = portal(1, SECONDLY).await;
    let mw =
        ThrottleMiddleware::new(tower_throttle::presets::hubspot()).with_retry(quick_retries(0));
    let client = client(mw);
    let url = server.url("/crm/v3/objects/contacts?limit=10");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.url().as_str(), url);
    assert_eq!(res.headers()["x-trace"], "refusal-1");
    assert_eq!(res.headers()["date"], TEN_TO_MIDNIGHT);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert!(
        res.remote_addr().is_some(),
        "the connection's extensions are kept"
    );
    assert_eq!(res.content_length(), Some(SECONDLY.len() as u64));
    assert_eq!(res.bytes().await.unwrap(), SECONDLY);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reqwest_daily_429_body_larger_than_the_bound_is_handed_on_whole_as_a_plain_429() {
    let mut large = DAILY.trim_end_matches('}').to_owned();
    large.push_str(&format!(r#","padding":"{}"}}"#, "x".repeat(40 * 1024)));
    let server = portal(1, large.clone()).await;
    let mw =
        ThrottleMiddleware::new(tower_throttle::presets::hubspot()).with_retry(quick_retries(0));
    let portal_client = client(mw.clone());
    let url = server.url("/crm/v3/objects/contacts");
    assert_eq!(portal_client.get(&url).send().await.unwrap().status(), 200);

    let start = tokio::time::Instant::now();
    let res = portal_client.get(&url).send().await.unwrap();
    // Not read as daily (too large to parse): no hold to the reset, back at once.
    assert_eq!(res.status(), 429);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(mw
        .bucket()
        .held_until(start + TO_RESET - Duration::from_secs(1))
        .is_none());
    assert_eq!(res.text().await.unwrap(), large);
    server.shutdown().await;

    // Chunked, so no length says in advance that it is too large: the bound is found while
    // reading, and the caller gets the bytes read followed by the rest of the stream.
    let pieces: Vec<_> = large
        .as_bytes()
        .chunks(4096)
        .map(|piece| (Duration::ZERO, piece))
        .collect();
    let url = scripted(chunked("429 Too Many Requests", &pieces)).await;
    let mw =
        ThrottleMiddleware::new(tower_throttle::presets::hubspot()).with_retry(quick_retries(0));
    let start = tokio::time::Instant::now();
    let res = client(mw).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(res.text().await.unwrap(), large);
}

/// A scripted server (for bodies that arrive late, which the mock server does not send), as
/// the URL the tests call.
async fn scripted(script: Script) -> String {
    let addr = scripted::scripted(script).await;
    format!("http://{addr}/crm/v3/objects/contacts")
}

/// A chunked answer: the head, then `pieces` each after its wait, then the last chunk.
fn chunked(status: &str, pieces: &[(Duration, &[u8])]) -> Script {
    let mut script = vec![(Duration::ZERO, head(status, "transfer-encoding: chunked"))];
    script.extend(pieces.iter().map(|(wait, data)| (*wait, chunk(data))));
    script.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    script
}

#[tokio::test(start_paused = true)]
async fn reqwest_daily_429_body_slower_than_the_time_bound_is_handed_on_whole_at_the_bound() {
    let (first, second) = DAILY.as_bytes().split_at(40);
    let url = scripted(chunked(
        "429 Too Many Requests",
        &[(Duration::ZERO, first), (Duration::from_secs(5), second)],
    ))
    .await;
    let mw = ThrottleMiddleware::new(tower_throttle::presets::hubspot())
        .with_retry(quick_retries(0))
        .with_inspect_time_limit(Duration::from_secs(1))
        .unwrap();
    let start = tokio::time::Instant::now();
    let res = client(mw).get(&url).send().await.unwrap();
    // Handed on at the 1 s bound, not at 5 s (when the body ends), nor held to the reset.
    assert_eq!(res.status(), 429);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(res.url().as_str(), url);
    assert_eq!(res.bytes().await.unwrap(), DAILY);
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn reqwest_200_is_handed_on_at_once_without_waiting_for_its_body() {
    let url = scripted(chunked(
        "200 OK",
        &[
            (Duration::ZERO, b"{\"id\":"),
            (Duration::from_secs(60), b"\"42\"}"),
        ],
    ))
    .await;
    let mw = ThrottleMiddleware::new(tower_throttle::presets::hubspot())
        .with_inspect_time_limit(Duration::from_secs(30))
        .unwrap();
    let start = tokio::time::Instant::now();
    let res = client(mw).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(res.text().await.unwrap(), "{\"id\":\"42\"}");
    assert!(start.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn reqwest_429_body_that_fails_mid_way_passes_its_error_to_the_caller() {
    // Promises 500 bytes, sends 40 and hangs up.
    let url = scripted(vec![
        (
            Duration::ZERO,
            head("429 Too Many Requests", "content-length: 500"),
        ),
        (Duration::ZERO, DAILY.as_bytes()[..40].to_vec()),
    ])
    .await;
    let mw =
        ThrottleMiddleware::new(tower_throttle::presets::hubspot()).with_retry(quick_retries(0));
    let res = client(mw).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    let err = res
        .bytes()
        .await
        .expect_err("the body's error reaches the caller");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
}
