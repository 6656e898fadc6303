//! The one-call builder and the `ServiceBuilder` extension: one bucket shared by the gate and
//! the retry hold, helpful errors, and the auto traits users rely on.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_throttle::bucket::{KeyedBucket, Snapshot};
use tower_throttle::classify::Outcome;
use tower_throttle::rate_limit::DestinationKey;
use tower_throttle::ServiceBuilderExt;
use tower_throttle::{
    backoff::Backoff, bucket::Bucket, classify::HttpClassifier, presets, rate_limit::RateLimit,
    ConfigError, Limits, LocalBucket, Quota, RateLimitLayer, RetryPolicy, Throttle,
    ThrottleBuilder, ThrottleError,
};
use tower_throttle::{retry::Attempts, RetryLayer};

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn assert_send_sync<T: Send + Sync + 'static>() {}
fn assert_debug<T: Debug>() {}

/// Fails to compile if a type users store in shared state (axum state, `Arc`, statics) loses
/// `Send`, `Sync` or `'static`, or `Debug`.
#[test]
fn main_types_are_send_sync_static_and_debug() {
    assert_send_sync::<Quota>();
    assert_send_sync::<Limits>();
    assert_send_sync::<LocalBucket>();
    assert_send_sync::<KeyedBucket<String>>();
    assert_send_sync::<Snapshot>();
    assert_send_sync::<RateLimitLayer>();
    assert_send_sync::<RateLimit<HyperClient>>();
    assert_send_sync::<RetryLayer>();
    assert_send_sync::<RetryPolicy>();
    assert_send_sync::<HttpClassifier>();
    assert_send_sync::<Backoff>();
    assert_send_sync::<Outcome>();
    assert_send_sync::<ThrottleError>();
    assert_send_sync::<ConfigError>();
    assert_send_sync::<ThrottleBuilder>();
    assert_send_sync::<Throttle<HyperClient>>();
    assert_send_sync::<tower::retry::Retry<RetryPolicy, RateLimit<HyperClient>>>();
    #[cfg(feature = "reqwest")]
    assert_send_sync::<tower_throttle::reqwest::ThrottleMiddleware>();

    assert_debug::<RateLimit<HyperClient>>();
    assert_debug::<Throttle<HyperClient>>();
    assert_debug::<ThrottleBuilder>();
    assert_debug::<RetryLayer>();
    #[cfg(feature = "reqwest")]
    assert_debug::<tower_throttle::reqwest::ThrottleMiddleware>();
}

#[test]
fn builder_errors_say_what_to_do() {
    let api = service_fn(|_: http::Request<Full<Bytes>>| async {
        Ok::<_, tower::BoxError>(http::Response::new(()))
    });
    let err = Throttle::builder().build(api).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(".limits("), "{msg}");
    let err = Throttle::builder()
        .limits(presets::mailchimp())
        .timeout(Duration::ZERO)
        .build(api)
        .unwrap_err();
    assert!(err.to_string().contains("positive duration"), "{err}");
}

type Seen = Arc<Mutex<Vec<(u32, Duration)>>>;

/// An API that answers its first call with `429, Retry-After: 2` and everything else with
/// 200, recording (caller id, time) of every call.
fn api_429_once(
    start: Instant,
    seen: Seen,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<()>,
    Error = tower::BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: http::Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let id: u32 = req.headers()["x-id"].to_str()?.parse()?;
            let mut seen = seen.lock().unwrap();
            seen.push((id, start.elapsed()));
            let status = if seen.len() == 1 { 429 } else { 200 };
            Ok(http::Response::builder()
                .status(status)
                .header("retry-after", "2")
                .body(())?)
        }
    })
}

fn request(id: u32) -> http::Request<Full<Bytes>> {
    http::Request::post("http://api.test/v1/track")
        .header("x-id", id.to_string())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// A second caller that did nothing wrong still waits out the first caller's 429: the
/// builder wired one bucket into the gate and the retry hold.
async fn second_caller_waits_out_the_hold<S>(client: S, start: Instant, seen: Seen)
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<()>,
            Error = tower::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let first = tokio::spawn(client.clone().oneshot(request(1)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = client.oneshot(request(2)).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(second.extensions().get::<Attempts>(), Some(&Attempts(1)));
    let seen = seen.lock().unwrap().clone();
    let second_at = seen.iter().find(|(id, _)| *id == 2).unwrap().1;
    assert!(second_at >= Duration::from_secs(2), "{seen:?}");
    assert!(start.elapsed() < Duration::from_secs(4), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn throttle_builder_shares_one_bucket_between_gate_and_retry_hold() {
    let start = Instant::now();
    let seen = Seen::default();
    let client = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .retry(RetryPolicy::default().with_seed(1))
        .head_timeout(Duration::from_secs(30))
        .build(api_429_once(start, seen.clone()))
        .unwrap();
    assert!(client.bucket().unwrap().held_until(start).is_none());
    second_caller_waits_out_the_hold(client, start, seen).await;
}

#[tokio::test(start_paused = true)]
async fn service_builder_ext_throttle_shares_one_bucket_too() {
    let start = Instant::now();
    let seen = Seen::default();
    let client = ServiceBuilder::new()
        .throttle(
            Quota::per_second(10).unwrap(),
            RetryPolicy::default().with_seed(1),
        )
        .service(api_429_once(start, seen.clone()));
    second_caller_waits_out_the_hold(client, start, seen).await;
}

#[tokio::test(start_paused = true)]
async fn throttle_builder_max_wait_sheds_with_a_typed_error() {
    let start = Instant::now();
    let client = Throttle::builder()
        .limits(Quota::per_second(1).unwrap())
        .max_wait(Duration::from_millis(100))
        .build(api_429_once(start, Seen::default()))
        .unwrap();
    // The first call takes the only slot (and earns the 429, so it holds the bucket too).
    let pending = tokio::spawn(client.clone().oneshot(request(1)));
    tokio::task::yield_now().await;
    let err = client.oneshot(request(2)).await.unwrap_err();
    assert!(
        matches!(
            ThrottleError::from_box(&err),
            Some(ThrottleError::WaitTooLong { .. })
        ),
        "{err}"
    );
    pending.abort();
}

#[tokio::test(start_paused = true)]
async fn throttle_builder_wires_adaptive_control_dead_letters_and_stats() {
    use tower_throttle::Aimd;
    use tower_throttle::{
        dead_letter::{DeadLetterStore, MemoryStore},
        metrics::Stats,
    };

    // The API throttles the first call without Retry-After, then answers 404 to id 2.
    let calls = Arc::new(Mutex::new(0u32));
    let api = {
        let calls = calls.clone();
        service_fn(move |req: http::Request<Full<Bytes>>| {
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            async move {
                let status = match (n, req.uri().path()) {
                    (1, _) => 429,
                    (_, "/2") => 404,
                    _ => 200,
                };
                Ok::<_, tower::BoxError>(http::Response::builder().status(status).body(())?)
            }
        })
    };
    let store = Arc::new(MemoryStore::new());
    let stats = Stats::new();
    let client = Throttle::builder()
        .limits(Quota::per_second(100).unwrap())
        .retry(
            RetryPolicy::default().with_backoff(
                Backoff::builder()
                    .base(Duration::from_millis(10))
                    .build()
                    .unwrap(),
            ),
        )
        .adaptive(Aimd::new(100.0, 1.0, 200.0).unwrap())
        .dead_letters(store.clone())
        .stats(stats.clone())
        .build(api)
        .unwrap();
    let ok = client
        .clone()
        .oneshot(
            http::Request::put("http://api.example/1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // The 429 went through the adaptive layer: AIMD halved the shared bucket's rate.
    assert_eq!(client.bucket().unwrap().rate(), 50.0);
    let missing = client
        .clone()
        .oneshot(
            http::Request::put("http://api.example/2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].uri, "http://api.example/2");
    let snap = stats.snapshot();
    assert_eq!(snap.requests(), 3);
    assert_eq!(snap.retries(), 1);
}

type HostSeen = Arc<Mutex<Vec<(String, Duration)>>>;

/// An API behind two hosts: the first call to `a.test` is answered `429, Retry-After: 2`,
/// everything else 200 after `latency`; every call is recorded as (host, time).
fn two_hosts(
    start: Instant,
    seen: HostSeen,
    latency: Duration,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<()>,
    Error = tower::BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: http::Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let host = req.uri().host().unwrap_or_default().to_string();
            let first_a = {
                let mut seen = seen.lock().unwrap();
                seen.push((host.clone(), start.elapsed()));
                host == "a.test" && seen.iter().filter(|(h, _)| h == "a.test").count() == 1
            };
            tokio::time::sleep(latency).await;
            Ok(http::Response::builder()
                .status(if first_a { 429 } else { 200 })
                .header("retry-after", "2")
                .body(())?)
        }
    })
}

fn to(host: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{host}/v1/track"))
        .header("authorization", format!("Bearer secret-token-of-{host}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn times(seen: &HostSeen, host: &str) -> Vec<Duration> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(h, _)| h == host)
        .map(|(_, t)| *t)
        .collect()
}

/// Issue 13 item 3: `Throttle::builder()` had no keyed gate, so a stack calling several APIs
/// either shared one limit across them or lost the shared hold. Keyed per authority, a 429
/// holds only the destination that sent it, and each destination is paced on its own.
#[tokio::test(start_paused = true)]
async fn throttle_builder_per_authority_holds_only_the_destination_that_sent_the_429() {
    let start = Instant::now();
    let seen = HostSeen::default();
    let client = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .retry(RetryPolicy::default().with_seed(3))
        .per_authority()
        .build(two_hosts(start, seen.clone(), Duration::ZERO))
        .unwrap();
    assert!(client.bucket().is_none());
    let first = tokio::spawn(client.clone().oneshot(to("a.test")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keyed = client.keyed_bucket().unwrap();
    let key = |h: &str| DestinationKey::authority(Some(h.parse().unwrap()));
    let now = Instant::now();
    assert_eq!(
        keyed.held_until(&key("a.test"), now),
        Some(start + Duration::from_secs(2))
    );
    assert_eq!(keyed.held_until(&key("b.test"), now), None);
    let mut calls = Vec::new();
    for _ in 0..10 {
        calls.push(tokio::spawn(client.clone().oneshot(to("a.test"))));
        calls.push(tokio::spawn(client.clone().oneshot(to("b.test"))));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(first.await.unwrap().unwrap().status(), 200);

    let a = times(&seen, "a.test");
    let b = times(&seen, "b.test");
    // b is neither held by a's 429 nor paced behind a's callers: 10 at 10/s from 0.5 s.
    assert_eq!(b.len(), 10);
    assert_eq!(b[0], Duration::from_millis(500));
    assert!(*b.last().unwrap() <= Duration::from_millis(1_400), "{b:?}");
    // a: the 429 at 0, then nothing before the hold's end at 2 s, then paced again.
    assert_eq!(a.len(), 12);
    assert_eq!(a[0], Duration::ZERO);
    assert!(a[1..].iter().all(|t| *t >= Duration::from_secs(2)), "{a:?}");
    assert_eq!(client.keyed_bucket().unwrap().len(), 2);
}

/// The limits' concurrency cap applies per destination under a keyed gate.
#[tokio::test(start_paused = true)]
async fn throttle_builder_per_authority_caps_concurrency_per_destination() {
    let start = Instant::now();
    let seen = HostSeen::default();
    let client = Throttle::builder()
        .limits(Limits::unlimited().with_concurrency(1).unwrap())
        .per_authority()
        .build(two_hosts(start, seen.clone(), Duration::from_millis(100)))
        .unwrap();
    let calls: Vec<_> = ["b.test", "b.test", "c.test", "c.test"]
        .into_iter()
        .map(|h| tokio::spawn(client.clone().oneshot(to(h))))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // One in flight per host, the two hosts side by side.
    let ms = |v: Vec<Duration>| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
    assert_eq!(ms(times(&seen, "b.test")), [0, 100]);
    assert_eq!(ms(times(&seen, "c.test")), [0, 100]);
}

/// Keyed by a header (here the API token), each value gets its own limit, and the key's
/// `Debug` output (bucket dumps, logs) never shows the credential.
#[tokio::test(start_paused = true)]
async fn throttle_builder_per_header_keys_by_value_and_keeps_it_out_of_debug() {
    let start = Instant::now();
    let seen = HostSeen::default();
    let stats = tower_throttle::metrics::Stats::new();
    let client = Throttle::builder()
        .limits(Quota::per_second(1).unwrap())
        .per_header(http::header::AUTHORIZATION)
        .stats(stats.clone())
        .build(two_hosts(start, seen.clone(), Duration::ZERO))
        .unwrap();
    // Two tokens on one host: neither waits for the other.
    client.clone().oneshot(to("b.test")).await.unwrap();
    client.clone().oneshot(to("c.test")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The same token again waits its own second; the wait is in the stats.
    client.clone().oneshot(to("b.test")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(stats.snapshot().gate_wait_max, Duration::from_secs(1));
    let dump = format!("{:?}", client.keyed_bucket().unwrap());
    let key = format!(
        "{:?}",
        DestinationKey::header(Some("Bearer secret-token-of-b.test".parse().unwrap()))
    );
    assert!(
        !dump.contains("secret") && !key.contains("secret"),
        "{dump} {key}"
    );
    assert!(key.contains("29 bytes"), "{key}");
}

#[test]
fn throttle_builder_refuses_adaptive_control_with_a_keyed_gate() {
    let api = service_fn(|_: http::Request<Full<Bytes>>| async {
        Ok::<_, tower::BoxError>(http::Response::new(()))
    });
    let err = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .adaptive(tower_throttle::Aimd::new(5.0, 1.0, 10.0).unwrap())
        .per_authority()
        .build(api)
        .unwrap_err();
    assert!(err.to_string().contains("keyed gate"), "{err}");
}
