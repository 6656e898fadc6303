//! Issue 29 item 2: every duration setting at 0, 1 ns, a day and `Duration::MAX`, driven
//! through a 429 with `Retry-After: 18446744073709551615`, a 503 and a timeout (and, with
//! Redis, an outage): a setting is refused when built with a typed `ConfigError`, or it
//! works; nothing panics ("overflow when adding duration to instant" was the bug, in the
//! retry policy, the queue's interval cap and the Redis bucket's fault handling).
//!
//! Paused time (except the Redis case, which talks to a real server), so a century of
//! backoff costs nothing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_throttle::backoff::Backoff;
use tower_throttle::classify::HttpClassifier;
use tower_throttle::{ConfigError, QueueLayer, Quota, RetryPolicy, Throttle};

const DAY: Duration = Duration::from_secs(86_400);
const VALUES: [Duration; 4] = [Duration::ZERO, Duration::from_nanos(1), DAY, Duration::MAX];

/// A server that answers, in turn: a 429 whose `Retry-After` is `u64::MAX` seconds, a 503
/// with the same, and nothing for as long as tokio can sleep (a timeout, when one is set;
/// else a timed-out connection, much later). Counts the calls.
fn hostile_server(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<()>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<String>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = match n % 3 {
                0 => 429,
                1 => 503,
                _ => {
                    tokio::time::sleep(Duration::MAX).await;
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            };
            let mut resp = Response::new(());
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            resp.headers_mut().insert(
                "retry-after",
                http::HeaderValue::from_static("18446744073709551615"),
            );
            Ok(resp)
        }
    })
}

/// The settings of one run: each is the default unless set.
#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    base: Option<Duration>,
    max_delay: Option<Duration>,
    retry_after_cap: Option<Duration>,
    deadline: Option<Duration>,
    max_wait: Option<Duration>,
    head_timeout: Option<Duration>,
}

impl Settings {
    fn all(d: Duration) -> Settings {
        Settings {
            base: Some(d),
            max_delay: Some(d),
            retry_after_cap: Some(d),
            deadline: Some(d),
            max_wait: Some(d),
            head_timeout: Some(d),
        }
    }

    /// Each setting alone at `d`, then all of them at once.
    fn table(d: Duration) -> Vec<Settings> {
        let one = Settings::default();
        vec![
            Settings {
                base: Some(d),
                max_delay: Some(d.max(Duration::from_secs(1))),
                ..one
            },
            Settings {
                max_delay: Some(d),
                base: Some(d.min(Duration::from_secs(1)).max(Duration::from_nanos(1))),
                ..one
            },
            Settings {
                retry_after_cap: Some(d),
                ..one
            },
            Settings {
                deadline: Some(d),
                ..one
            },
            Settings {
                max_wait: Some(d),
                ..one
            },
            Settings {
                head_timeout: Some(d),
                ..one
            },
            Settings::all(d),
        ]
    }

    fn policy(&self) -> Result<RetryPolicy, ConfigError> {
        let mut backoff = Backoff::builder();
        if let Some(base) = self.base {
            backoff = backoff.base(base);
        }
        if let Some(max) = self.max_delay {
            backoff = backoff.max_delay(max);
        }
        let mut classifier = HttpClassifier::default();
        if let Some(cap) = self.retry_after_cap {
            classifier = classifier.retry_after_cap(cap);
        }
        let mut policy = RetryPolicy::new(classifier)
            .with_backoff(backoff.build()?)
            .without_budget();
        if let Some(deadline) = self.deadline {
            policy = policy.with_deadline(deadline);
        }
        Ok(policy)
    }
}

/// Runs one request through the one-call builder's stack with `settings`; `Err` when the
/// settings were refused when built. The request ends (with a response or an error) after
/// at most five attempts.
async fn run(settings: Settings) -> Result<(), ConfigError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut builder = Throttle::builder()
        .limits(Quota::per_second(100)?)
        .retry(settings.policy()?);
    if let Some(max_wait) = settings.max_wait {
        builder = builder.max_wait(max_wait);
    }
    if let Some(timeout) = settings.head_timeout {
        builder = builder.head_timeout(timeout);
    }
    let client = builder.build(hostile_server(calls.clone()))?;
    // Two requests: the second meets whatever hold the first one's 429 set.
    for _ in 0..2 {
        let req = Request::post("https://api.example.com/v1/users")
            .body(String::from("{}"))
            .unwrap();
        let outcome: Result<Response<()>, BoxError> = client.clone().oneshot(req).await;
        if let Ok(resp) = &outcome {
            assert!(
                resp.status().is_client_error() || resp.status().is_server_error(),
                "{settings:?}: {resp:?}"
            );
        }
    }
    assert!(
        calls.load(Ordering::SeqCst) <= 10,
        "{settings:?}: at most 5 attempts a request"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn every_retry_setting_at_0_1ns_a_day_and_max_survives_a_hostile_server() {
    let mut refused = Vec::new();
    for d in VALUES {
        for settings in Settings::table(d) {
            if let Err(e) = run(settings).await {
                refused.push(format!("{settings:?}: {e}"));
            }
        }
    }
    // Only zero can be refused (a zero backoff base or timeout fails every request).
    for r in &refused {
        assert!(r.contains("Some(0ns)"), "refused: {r}");
    }
    assert!(!refused.is_empty(), "a zero base is refused");
}

/// The queue's interval cap at `Duration::MAX` panicked on the second request
/// (`queue/shared.rs`); at each value, two requests through a cap of one per interval both
/// finish, the second a saturated interval later.
#[tokio::test(start_paused = true)]
async fn the_queue_interval_cap_at_0_1ns_a_day_and_max_lets_the_second_request_through() {
    for d in VALUES {
        let layer = match QueueLayer::builder()
            .concurrency(1)
            .interval_cap(1, d)
            .build()
        {
            Ok(layer) => layer,
            Err(e) => {
                assert!(d.is_zero(), "{d:?} refused: {e}");
                continue;
            }
        };
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1, "{d:?}");
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2, "{d:?}");
        assert!(start.elapsed() >= d.min(DAY), "{d:?}: the cap held");
    }
}

#[cfg(feature = "redis")]
mod common;

/// The Redis bucket's settings at each value through an outage (the server killed), in both
/// fail modes: refused when built (with the typed error) or a typed answer (admitted by the
/// fallback, or `BucketUnavailable`), never a panic; a day of `retry_interval` keeps Redis
/// unasked, as configured.
#[cfg(feature = "redis")]
#[ignore = "needs redis-server on PATH; run: cargo test --all-features --tests -- --ignored"]
#[tokio::test]
async fn redis_bucket_settings_at_0_1ns_a_day_and_max_survive_an_outage() {
    use tower::Layer as _;
    use tower_throttle::bucket::{FailMode, RedisBucket};
    use tower_throttle::{Limits, RateLimitLayer, ThrottleError};

    let mut server = common::redis::RedisServer::start("redis_bucket_settings");
    let limits = Limits::new(Quota::per_second(1000).unwrap());
    let conn = RedisBucket::connection_manager(&server.url(), Duration::MAX)
        .await
        .expect("connects with a connection timeout of Duration::MAX");
    type Setter = fn(
        tower_throttle::bucket::RedisBucketBuilder,
        Duration,
    ) -> tower_throttle::bucket::RedisBucketBuilder;
    let setters: [(&str, Setter); 4] = [
        ("timeout", |b, d| b.timeout(d)),
        ("retry_interval", |b, d| b.retry_interval(d)),
        ("idle_ttl", |b, d| b.idle_ttl(d)),
        ("watch_interval", |b, d| b.watch_interval(d)),
    ];
    let mut buckets = Vec::new();
    for (name, set) in setters {
        for d in VALUES {
            for mode in [
                FailMode::Closed,
                FailMode::Open {
                    local: limits.clone(),
                },
            ] {
                let builder = set(RedisBucket::builder(limits.clone(), "durations"), d)
                    .fail_mode(mode.clone());
                match builder.build(conn.clone()) {
                    Ok(bucket) => buckets.push((name, d, mode, bucket)),
                    Err(
                        ConfigError::Zero { name: refused }
                        | ConfigError::OutOfRange { name: refused, .. },
                    ) => assert_eq!(refused, name, "{name} = {d:?}"),
                    Err(e) => panic!("{name} = {d:?}: unexpected {e}"),
                }
            }
        }
    }
    let ok = || service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    // Everything accepted works while Redis is up (a 1 ns timeout may fail the call: then
    // it is the configured fail mode's answer).
    for (name, d, mode, bucket) in &buckets {
        let svc = RateLimitLayer::with_bucket(bucket.clone()).layer(ok());
        let out = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(Request::new(())))
            .await
            .unwrap_or_else(|_| panic!("{name} = {d:?} ({mode:?}): no answer while up"));
        if let Err(e) = out {
            assert!(
                matches!(
                    ThrottleError::from_box(&e),
                    Some(ThrottleError::BucketUnavailable { .. })
                ),
                "{name} = {d:?}: {e}"
            );
        }
    }
    server.kill();
    for round in 0..3 {
        for (name, d, mode, bucket) in &buckets {
            let svc = RateLimitLayer::with_bucket(bucket.clone()).layer(ok());
            let out = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(Request::new(())))
                .await
                .unwrap_or_else(|_| {
                    panic!("{name} = {d:?} ({mode:?}), round {round}: no answer in 10 s")
                });
            match (mode, out) {
                (FailMode::Open { .. }, Ok(_)) => {}
                (_, Err(e)) => assert!(
                    matches!(
                        ThrottleError::from_box(&e),
                        Some(ThrottleError::BucketUnavailable { .. })
                    ),
                    "{name} = {d:?} ({mode:?}): {e}"
                ),
                (FailMode::Closed, Ok(_)) => panic!("{name} = {d:?}: admitted without Redis"),
            }
        }
    }
}
