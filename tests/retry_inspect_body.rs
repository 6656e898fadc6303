//! A HubSpot daily 429 told from its body on a *streaming* stack (the hyper client's
//! `Incoming` body, no buffering timeout), through [`InspectBodyLayer`] over loopback in
//! paused time: the daily refusal holds until the reset; bodies too large, too slow or
//! failing are handed on whole (or with their error) and read as plain 429s; other
//! responses are not waited for.
#![cfg(feature = "mock")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_throttle::mock::MockServer;
use tower_throttle::retry::{Attempts, InspectBody, InspectBodyLayer, InspectedBody};
use tower_throttle::{backoff::Backoff, classify::HttpClassifier, presets, RetryPolicy, Throttle};

mod common;

use common::hubspot::{self, head, post, DAILY, TO_RESET};
use common::scripted::{chunk, scripted, Script};

/// The portal of an OAuth app, refusing with the daily body once `allowance` is spent.
async fn portal(allowance: u32, window: Duration) -> MockServer {
    hubspot::portal(allowance, window, DAILY, HeaderMap::new()).await
}

/// Sends `n` requests at once; each one's final status and attempts, and when it ended.
async fn send<S, R>(client: S, server: &MockServer, n: usize) -> Vec<((u16, u32), Duration)>
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<R>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    let ends = hubspot::send(client, server, n).await;
    ends.into_iter().map(|(r, at)| (r.unwrap(), at)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_daily_429_on_a_streaming_stack_holds_until_the_daily_reset() {
    // Before: the policy saw `Incoming`, not a buffered body, and no private-app header,
    // so the daily 429 was a secondly one: backed off 1-2-4-8 s, refused again each time,
    // and handed back as a 429 within seconds while the allowance was still spent.
    let server = portal(5, TO_RESET).await;
    let streaming = Throttle::builder()
        .limits(presets::hubspot())
        .retry(RetryPolicy::default().with_seed(7))
        .head_timeout(Duration::from_secs(10))
        .build(common::client())
        .unwrap();
    let before = send(streaming, &server, 8).await;
    assert!(
        before.iter().any(|((status, _), _)| *status == 429),
        "{before:?}"
    );
    assert!(server.stats().rate_limited > 3, "{:?}", server.stats());
    server.shutdown().await;

    let server = portal(5, TO_RESET).await;
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .retry(RetryPolicy::default().with_seed(7))
        .head_timeout(Duration::from_secs(10))
        .inspect_bodies(Duration::from_secs(2))
        .build(common::client())
        .unwrap();
    let results = send(client, &server, 8).await;
    assert!(
        results.iter().all(|((status, _), _)| *status == 200),
        "{results:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.accepted, 8);
    // One refusal: its hold reached every caller before their slots came up.
    assert_eq!(stats.rate_limited, 1, "{stats:?}");
    let late = results.iter().filter(|(_, t)| *t >= TO_RESET).count();
    assert_eq!(
        late, 3,
        "the refused one and the two behind it: {results:?}"
    );
    assert!(results
        .iter()
        .all(|(_, t)| *t < TO_RESET + Duration::from_secs(3)));
    server.shutdown().await;
}

/// A keyed gate (a bucket per destination) with refusals' bodies inspected: one portal's
/// daily refusal holds that portal's callers until the reset, and only them.
#[tokio::test(start_paused = true)]
async fn a_daily_429_on_a_keyed_streaming_stack_holds_only_its_destination() {
    let refusing = portal(1, TO_RESET).await;
    let other = MockServer::builder().start().await.unwrap();
    let client = Throttle::builder()
        .limits(presets::hubspot())
        .per_authority()
        .retry(RetryPolicy::default().with_seed(7))
        .head_timeout(Duration::from_secs(10))
        .inspect_bodies(Duration::from_secs(2))
        .build(common::client())
        .unwrap();
    let uri = refusing.uri("/crm/v3/objects/contacts");
    let ok = client.clone().oneshot(post(uri.clone(), 0)).await.unwrap();
    assert_eq!(ok.status(), 200);

    let start = Instant::now();
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.oneshot(post(uri, 1)).await.unwrap() }
    });
    while refusing.stats().rate_limited == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elsewhere = client
        .oneshot(post(other.uri("/crm/v3/objects/contacts"), 2))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the other destination waited for the refusing one's reset: {:?}",
        start.elapsed()
    );
    let res = held.await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(start.elapsed() >= TO_RESET - Duration::from_secs(1));
    assert_eq!(refusing.stats().rate_limited, 1);
    assert_eq!(other.stats().accepted, 1);
    refusing.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_users_own_service_builder_stack_reads_the_daily_body_through_the_layer() {
    let server = portal(1, TO_RESET).await;
    let bucket = tower_throttle::LocalBucket::new(presets::hubspot());
    let policy = RetryPolicy::default()
        .with_deadline(Duration::from_secs(60))
        .with_bucket(bucket.clone());
    let client = ServiceBuilder::new()
        .layer(tower_throttle::RetryLayer::new(policy))
        .layer(tower_throttle::RateLimitLayer::with_bucket(bucket))
        .layer(InspectBodyLayer::new())
        .service(common::client());
    let uri = server.uri("/crm/v3/objects/contacts");
    let ok = client.clone().oneshot(post(uri.clone(), 0)).await.unwrap();
    assert_eq!(ok.status(), 200);
    // Told from the body: past the deadline, so it ends at once, typed.
    let start = Instant::now();
    let err = client.oneshot(post(uri, 1)).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(
            tower_throttle::ThrottleError::from_box(&err),
            Some(tower_throttle::ThrottleError::QuotaExhausted { status: 429, .. })
        ),
        "{err}"
    );
    server.shutdown().await;
}

const CHUNKED: &str = "transfer-encoding: chunked";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn get(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}/crm/v3/objects/contacts"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The stack without retries: a daily 429 told from the body would still hold (a quota wait
/// spends no attempt), a plain one comes back at once.
fn no_retries() -> Throttle<InspectBody<Client<HttpConnector, Full<Bytes>>>> {
    Throttle::builder()
        .limits(presets::hubspot())
        .retry(
            RetryPolicy::default().with_backoff(Backoff::builder().max_retries(0).build().unwrap()),
        )
        .inspect_bodies(Duration::from_secs(2))
        .build(common::client())
        .unwrap()
}

/// Every frame of `body` up to its end or its error.
async fn frames<B>(body: B) -> (Vec<u8>, Option<B::Error>)
where
    B: Body + Unpin,
{
    let mut body = body;
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(bytes) = frame.into_data() {
                    data.extend_from_slice(bytes::Buf::chunk(&bytes));
                }
            }
            Err(e) => return (data, Some(e)),
        }
    }
    (data, None)
}

#[tokio::test(start_paused = true)]
async fn a_daily_429_body_larger_than_the_bound_streams_on_whole_and_is_a_plain_429() {
    // Chunked, so no length says in advance that it is too large: the layer reads past the
    // bound, then hands on what it read followed by the rest.
    let mut whole = DAILY.trim_end_matches('}').to_owned();
    whole.push_str(&format!(r#","padding":"{}"}}"#, "x".repeat(40 * 1024)));
    let mut script: Script = vec![(Duration::ZERO, head("429 Too Many Requests", CHUNKED))];
    for piece in whole.as_bytes().chunks(4096) {
        script.push((Duration::ZERO, chunk(piece)));
    }
    script.push((Duration::ZERO, LAST_CHUNK.to_vec()));
    let addr = scripted(script).await;

    let start = Instant::now();
    let res = no_retries().oneshot(get(addr)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert!(res.extensions().get::<InspectedBody>().is_none());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let (data, err) = frames(res.into_body()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(data, whole.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_daily_429_body_slower_than_the_time_bound_streams_on_whole_and_is_a_plain_429() {
    let (first, second) = DAILY.as_bytes().split_at(40);
    let addr = scripted(vec![
        (Duration::ZERO, head("429 Too Many Requests", CHUNKED)),
        (Duration::ZERO, chunk(first)),
        (Duration::from_secs(5), chunk(second)),
        (Duration::ZERO, LAST_CHUNK.to_vec()),
    ])
    .await;

    let start = Instant::now();
    let res = no_retries().oneshot(get(addr)).await.unwrap();
    // Handed on at the 2 s bound, not at 5 s (when the body ends), nor held to the reset.
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<InspectedBody>().is_none());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let (data, err) = frames(res.into_body()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(data, DAILY.as_bytes());
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_429_body_that_fails_mid_way_passes_its_error_to_the_caller() {
    // Promises 500 bytes, sends 40 and hangs up.
    let addr = scripted(vec![
        (
            Duration::ZERO,
            head("429 Too Many Requests", "content-length: 500"),
        ),
        (Duration::ZERO, DAILY.as_bytes()[..40].to_vec()),
    ])
    .await;
    let res = ServiceBuilder::new()
        .layer(InspectBodyLayer::new())
        .service(common::client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<InspectedBody>().is_none());
    let (data, err) = frames(res.into_body()).await;
    // hyper's own error for a connection closed mid-body, as the client alone would give.
    let err = err.expect("the body's error reaches the caller");
    assert_eq!(err.to_string(), "error reading a body from connection");
    assert_eq!(data, &DAILY.as_bytes()[..data.len()]);
}

#[tokio::test(start_paused = true)]
async fn a_200_is_handed_on_at_once_without_waiting_for_its_body() {
    let addr = scripted(vec![
        (Duration::ZERO, head("200 OK", CHUNKED)),
        (Duration::ZERO, chunk(b"{\"id\":")),
        (Duration::from_secs(60), chunk(b"\"42\"}")),
        (Duration::ZERO, LAST_CHUNK.to_vec()),
    ])
    .await;
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(
            InspectBodyLayer::new()
                .time_limit(Duration::from_secs(30))
                .unwrap(),
        )
        .service(common::client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(res.extensions().get::<InspectedBody>().is_none());
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "{\"id\":\"42\"}"
    );
    assert!(start.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_429_is_not_waited_for_when_the_classifier_reads_no_body() {
    let addr = scripted(vec![
        (Duration::ZERO, head("429 Too Many Requests", CHUNKED)),
        (Duration::ZERO, chunk(&DAILY.as_bytes()[..40])),
        (Duration::from_secs(60), chunk(&DAILY.as_bytes()[40..])),
        (Duration::ZERO, LAST_CHUNK.to_vec()),
    ])
    .await;
    let layer = InspectBodyLayer::for_classifier(&HttpClassifier::new().hubspot_daily(false));
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(layer)
        .service(common::client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), DAILY);
}

#[tokio::test(start_paused = true)]
async fn a_whole_daily_body_is_recorded_and_handed_on_unchanged() {
    let addr = scripted(vec![
        (Duration::ZERO, head("429 Too Many Requests", CHUNKED)),
        (Duration::ZERO, chunk(&DAILY.as_bytes()[..40])),
        (Duration::from_millis(500), chunk(&DAILY.as_bytes()[40..])),
        (Duration::ZERO, LAST_CHUNK.to_vec()),
    ])
    .await;
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .layer(InspectBodyLayer::new())
        .service(common::client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        res.extensions().get::<InspectedBody>(),
        Some(&InspectedBody(Bytes::from_static(DAILY.as_bytes())))
    );
    assert_eq!(res.body().size_hint().exact(), Some(DAILY.len() as u64));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), DAILY);
}
