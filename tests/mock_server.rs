//! The mock server over real loopback sockets, driven by hyper-util's legacy client.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_throttle::mock::{MockServer, RateHeaders, RetryAfterFormat, ServerLimit, StartError};
use tower_throttle::ConfigError;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn window(n: u32, secs: u64) -> ServerLimit {
    ServerLimit::sliding_window(n, Duration::from_secs(secs)).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

async fn send(client: &HttpClient, server: &MockServer, path: &str, id: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(server.uri(path))
        .header("content-type", "application/json");
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let payload = serde_json::json!({ "event": "signup", "id": id }).to_string();
    let resp = client
        .request(req.body(Full::new(Bytes::from(payload))).unwrap())
        .await
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).expect("JSON body"),
    }
}

async fn statuses(client: &HttpClient, server: &MockServer, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(client, server, path, None).await.status.as_u16());
    }
    out
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_adds_up(server: &MockServer) {
    let s = server.stats();
    assert_eq!(s.received, s.accepted + s.rate_limited + s.failed, "{s:?}");
}

#[tokio::test]
async fn burst_over_window_gets_429_with_delta_seconds() {
    let server = MockServer::builder()
        .limit(window(5, 10))
        .start()
        .await
        .unwrap();
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..8 {
        replies.push(send(&client, &server, "/v1/track", None).await);
    }
    let codes: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429, 429]);
    for r in &replies[5..] {
        // The first accept leaves the 10 s window at most 10 s from now: rounded up, 1..=10.
        let secs = header_u64(&r.headers, "retry-after");
        assert!((1..=10).contains(&secs), "Retry-After {secs}");
        assert_eq!(r.body["error"], "rate_limited");
        let ms = r.body["retry_after_ms"].as_u64().unwrap();
        assert!(
            ms <= secs * 1000 && ms > (secs - 1) * 1000,
            "{ms} ms vs {secs} s"
        );
    }
    let s = server.stats();
    assert_eq!(
        (s.received, s.accepted, s.rate_limited, s.failed),
        (8, 5, 3, 0)
    );
    assert_eq!(
        server.max_accepted_in_any_window(Duration::from_secs(10)),
        5
    );
}

#[tokio::test]
async fn retry_after_http_date_comes_with_date() {
    let server = MockServer::builder()
        .limit(window(1, 10))
        .retry_after(RetryAfterFormat::HttpDate)
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(statuses(&client, &server, "/", 1).await, [200]);
    let r = send(&client, &server, "/", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let date = |name: &str| {
        httpdate::parse_http_date(r.headers[name].to_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let gap = date("retry-after").duration_since(date("date")).unwrap();
    // Date truncated, target rounded up: at least the real wait (> 0), at most 10 s + 2 s.
    assert!(
        gap >= Duration::from_secs(1) && gap <= Duration::from_secs(12),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_can_be_omitted() {
    let server = MockServer::builder()
        .limit(window(1, 10))
        .retry_after(RetryAfterFormat::Omit)
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(statuses(&client, &server, "/", 2).await, [200, 429]);
    let r = send(&client, &server, "/", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.get("retry-after").is_none());
}

#[tokio::test]
async fn token_bucket_allows_burst_then_429() {
    // One token per 10 s: the burst of 3 is all this test can get.
    let server = MockServer::builder()
        .limit(ServerLimit::token_bucket(0.1, 3).unwrap())
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        statuses(&client, &server, "/", 5).await,
        [200, 200, 200, 429, 429]
    );
    let r = send(&client, &server, "/", None).await;
    let secs = header_u64(&r.headers, "retry-after");
    assert!((1..=10).contains(&secs), "Retry-After {secs}");
}

#[tokio::test]
async fn obeying_retry_after_is_accepted() {
    // Real time, but nothing depends on the machine's speed: whenever the 429 comes, waiting
    // its rounded-up Retry-After must be enough for the next request to pass.
    let server = MockServer::builder()
        .limit(window(2, 1))
        .start()
        .await
        .unwrap();
    let client = client();
    let limited = loop {
        let r = send(&client, &server, "/", None).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break r;
        }
        assert!(server.stats().accepted < 1000, "never limited");
    };
    let secs = header_u64(&limited.headers, "retry-after");
    assert_eq!(secs, 1, "anything under the 1 s window rounds up to 1 s");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert_eq!(
        send(&client, &server, "/", None).await.status,
        StatusCode::OK
    );
    assert_eq!(server.stats().rate_limited, 1);
}

#[tokio::test]
async fn concurrent_burst_never_exceeds_window_and_counters_add_up() {
    let server = MockServer::builder()
        .limit(window(20, 30))
        .start()
        .await
        .unwrap();
    let client = client();
    let server = std::sync::Arc::new(server);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (client, server) = (client.clone(), server.clone());
        tasks.spawn(async move { send(&client, &server, "/v1/batch", None).await.status });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        ok += usize::from(status.unwrap() == StatusCode::OK);
    }
    assert_eq!(ok, 20);
    let s = server.stats();
    assert_eq!((s.received, s.accepted, s.rate_limited), (200, 20, 180));
    assert_adds_up(&server);
    assert_eq!(
        server.max_accepted_in_any_window(Duration::from_secs(30)),
        20
    );
    assert!(s.max_in_flight >= 1 && s.in_flight == 0, "{s:?}");
}

async fn failure_pattern(seed: u64, ratio: f64, n: usize) -> (Vec<u16>, MockServer) {
    let server = MockServer::builder()
        .fail_ratio(ratio)
        .seed(seed)
        .start()
        .await
        .unwrap();
    let codes = statuses(&client(), &server, "/", n).await;
    (codes, server)
}

#[tokio::test]
async fn fail_ratio_is_reproducible_for_a_seed() {
    let (a, server) = failure_pattern(7, 0.3, 200).await;
    let (b, _) = failure_pattern(7, 0.3, 200).await;
    let (c, _) = failure_pattern(8, 0.3, 200).await;
    assert_eq!(a, b, "same seed, same outcomes");
    assert_ne!(a, c, "another seed, other outcomes");
    assert!(a.iter().all(|&s| s == 200 || s == 503));
    let failed = a.iter().filter(|&&s| s == 503).count() as u64;
    let s = server.stats();
    assert_eq!(
        (s.received, s.failed, s.accepted),
        (200, failed, 200 - failed)
    );
    assert!(failed > 0 && failed < 200);

    let (none, _) = failure_pattern(7, 0.0, 50).await;
    assert!(none.iter().all(|&s| s == 200));
    let (all, _) = failure_pattern(7, 1.0, 50).await;
    assert!(all.iter().all(|&s| s == 503));
}

#[tokio::test]
async fn injected_failures_do_not_consume_the_limit() {
    // Failure count for a seed does not depend on arrival order: it is the number of the
    // first N draws below the ratio. So compare against an unlimited twin.
    let (codes, _) = failure_pattern(42, 0.5, 40).await;
    let failed = codes.iter().filter(|&&s| s == 503).count() as u64;
    let server = MockServer::builder()
        .limit(window(10, 60))
        .fail_ratio(0.5)
        .seed(42)
        .start()
        .await
        .unwrap();
    statuses(&client(), &server, "/", 40).await;
    let s = server.stats();
    assert_eq!(s.failed, failed);
    assert_eq!(s.accepted, 10.min(40 - failed));
    assert_eq!(s.rate_limited, 40 - failed - s.accepted);
    assert_adds_up(&server);
}

#[tokio::test]
async fn rate_headers_are_present_and_consistent() {
    let server = MockServer::builder()
        .limit(window(4, 60))
        .rate_headers(RateHeaders::Both)
        .start()
        .await
        .unwrap();
    let client = client();
    for expected in [3, 2, 1, 0, 0] {
        let r = send(&client, &server, "/", None).await;
        for prefix in ["ratelimit", "x-ratelimit"] {
            let get = |what: &str| header_u64(&r.headers, &format!("{prefix}-{what}"));
            assert_eq!(get("limit"), 4);
            assert_eq!(get("remaining"), expected, "{prefix} after {:?}", r.status);
            assert!((1..=60).contains(&get("reset")));
        }
        assert_eq!(r.status == StatusCode::OK, r.body["ok"] == true);
    }
    assert_eq!(server.stats().rate_limited, 1);
}

#[tokio::test]
async fn rate_header_families_are_selectable() {
    for (which, ietf, x) in [
        (RateHeaders::None, false, false),
        (RateHeaders::Ietf, true, false),
        (RateHeaders::XRateLimit, false, true),
    ] {
        let server = MockServer::builder()
            .limit(window(4, 60))
            .rate_headers(which)
            .start()
            .await
            .unwrap();
        let r = send(&client(), &server, "/", None).await;
        assert_eq!(r.headers.contains_key("ratelimit-limit"), ietf, "{which:?}");
        assert_eq!(r.headers.contains_key("x-ratelimit-limit"), x, "{which:?}");
    }
    // Unlimited routes have nothing to report.
    let server = MockServer::builder()
        .rate_headers(RateHeaders::Both)
        .start()
        .await
        .unwrap();
    let r = send(&client(), &server, "/", None).await;
    assert!(!r.headers.contains_key("ratelimit-limit"));
}

#[tokio::test]
async fn set_limit_takes_effect_mid_run() {
    let server = MockServer::builder().start().await.unwrap();
    let client = client();
    assert_eq!(statuses(&client, &server, "/", 10).await, [200; 10]);
    server.set_limit(window(2, 60));
    assert_eq!(server.limit(), window(2, 60));
    assert_eq!(
        statuses(&client, &server, "/", 4).await,
        [200, 200, 429, 429]
    );
    server.set_limit(ServerLimit::unlimited());
    assert_eq!(statuses(&client, &server, "/", 3).await, [200; 3]);
    let s = server.stats();
    assert_eq!((s.accepted, s.rate_limited), (15, 2));
}

#[tokio::test]
async fn route_limits_are_independent_of_the_shared_default() {
    let server = MockServer::builder()
        .limit(window(2, 60))
        .route_limit("/v1/track", window(3, 60))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        statuses(&client, &server, "/v1/track", 4).await,
        [200, 200, 200, 429]
    );
    // Every other path shares the one default limiter.
    assert_eq!(statuses(&client, &server, "/a", 1).await, [200]);
    assert_eq!(statuses(&client, &server, "/b", 2).await, [200, 429]);
    assert_eq!(server.accepted_times_on("/v1/track").len(), 3);
    assert_eq!(server.accepted_times_on("/anything").len(), 2);
    assert_eq!(server.accepted_times().len(), 5);

    server.set_route_limit("/v1/identify", window(1, 60));
    assert_eq!(
        statuses(&client, &server, "/v1/identify", 2).await,
        [200, 429]
    );
}

#[tokio::test]
async fn request_ids_prove_delivery() {
    let server = MockServer::builder()
        .limit(window(100, 60))
        .start()
        .await
        .unwrap();
    let client = client();
    for i in 0..20 {
        let id = format!("rec-{i}");
        let r = send(&client, &server, "/v1/batch", Some(&id)).await;
        assert_eq!(r.body["request_id"], id.as_str());
        assert_eq!(r.body["seq"], i + 1);
    }
    send(&client, &server, "/v1/batch", Some("rec-3")).await;
    send(&client, &server, "/v1/batch", None).await;
    let s = server.stats();
    assert_eq!((s.distinct_ids, s.duplicate_ids, s.accepted), (20, 1, 22));
    let ids = server.accepted_ids();
    assert!((0..20).all(|i| ids.contains(&format!("rec-{i}"))));

    server.reset_stats();
    let s = server.stats();
    assert_eq!((s.received, s.accepted, s.distinct_ids), (0, 0, 0));
    assert!(server.accepted_times().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = std::sync::Arc::new(
        MockServer::builder()
            .latency(Duration::from_millis(300))
            .start()
            .await
            .unwrap(),
    );
    let addr = server.addr();
    let in_flight = {
        let server = server.clone();
        tokio::spawn(async move { send(&client(), &server, "/slow", None).await.status })
    };
    // Wait (by state, not by a guessed sleep) until the request is inside the handler.
    while server.stats().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    server.shutdown().await;
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    assert_eq!(server.stats().in_flight, 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // A second call returns at once.
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = MockServer::builder().start().await.unwrap();
    let addr = server.addr();
    drop(server);
    // The accept loop notices on its next poll; give it a few turns of the runtime.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "server still accepting after drop");
}

#[tokio::test]
async fn invalid_configuration_is_a_typed_error() {
    let err = MockServer::builder()
        .fail_ratio(1.5)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StartError::Config(ConfigError::OutOfRange {
            name: "fail_ratio",
            ..
        })
    ));
    let b = MockServer::builder().latency_range(Duration::from_secs(2), Duration::from_secs(1));
    assert!(matches!(b.check(), Err(ConfigError::MinAboveMax { .. })));
    let b = MockServer::builder().route_limit("v1/track", window(1, 1));
    assert!(matches!(b.check(), Err(ConfigError::Invalid(_))));
    assert!(MockServer::builder().fail_ratio(f64::NAN).check().is_err());
}

#[tokio::test]
async fn random_latency_does_not_change_failures() {
    let (plain, _) = failure_pattern(9, 0.4, 30).await;
    let server = MockServer::builder()
        .fail_ratio(0.4)
        .seed(9)
        .latency_range(Duration::ZERO, Duration::from_millis(3))
        .start()
        .await
        .unwrap();
    assert_eq!(statuses(&client(), &server, "/", 30).await, plain);
}

/// A second server on a taken port used to fail with `Os { code: 98, kind: AddrInUse, .. }`,
/// which names neither the address nor what to do.
#[tokio::test]
async fn bind_error_names_the_address_and_the_reason_not_os_code_98() {
    let first = MockServer::builder().start().await.unwrap();
    let taken = first.addr();
    let err = MockServer::builder().bind(taken).start().await.unwrap_err();
    let StartError::Bind { addr, ref source } = err else {
        panic!("expected a bind error, got {err}");
    };
    assert_eq!(addr, taken);
    assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(shown.contains(&taken.to_string()), "{shown}");
        assert!(shown.contains("already in use"), "{shown}");
        assert!(!shown.contains("Os {"), "{shown}");
    }
    // `?` into an `io::Result` keeps the kind and the message.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    assert!(io.to_string().contains(&taken.to_string()), "{io}");
    first.shutdown().await;
}
