//! Every way a server says when to come back, honoured by the retry policy in paused time:
//! the IETF `RateLimit` reset, `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`, a 503's
//! `Retry-After`, a 403 that reports a spent quota, and RFC 850 dates read by RFC 9110's rule.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_throttle::headers::retry_after;
use tower_throttle::{
    backoff::{Backoff, Jitter},
    bucket::Bucket,
    LocalBucket, Quota, RateLimitLayer,
};
use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn req() -> http::Request<Full<Bytes>> {
    http::Request::post("http://api.example/v1/track")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

type Calls = Arc<Mutex<Vec<Duration>>>;

/// A server whose window is closed for the first `closed` of virtual time: until then it
/// answers `status` with the headers `hint(time left)`, then 200. Records call times.
fn closed_window(
    closed: Duration,
    status: u16,
    hint: impl Fn(Duration) -> Vec<(&'static str, String)> + Send + Sync + 'static,
) -> (
    impl tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<()>,
            Error = BoxError,
            Future = impl Send,
        > + Clone,
    Calls,
) {
    let start = Instant::now();
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let hint = Arc::new(hint);
    let svc = service_fn(move |_req: http::Request<Full<Bytes>>| {
        let at = start.elapsed();
        log.lock().unwrap().push(at);
        let hint = hint.clone();
        async move {
            let mut res = http::Response::builder();
            if at < closed {
                res = res.status(status);
                for (k, v) in hint(closed - at) {
                    res = res.header(k, v);
                }
            }
            Ok::<_, BoxError>(res.body(()).unwrap())
        }
    });
    (svc, calls)
}

/// An epoch reset in whole seconds, rounded up as servers do (the window opens at that second,
/// not before; wall time goes on while tokio's is paused).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn exact() -> Backoff {
    Backoff::builder().jitter(Jitter::None).build().unwrap()
}

/// Sends one request through retry + gate on `bucket`, checking it is delivered in two
/// attempts, the retry at `wait` (within the whole second an epoch reset can round, plus its
/// 10% / 1 s spread), and that the shared bucket was held until then.
async fn waits_out<S>(svc: S, calls: Calls, wait: Duration)
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<()>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let start = Instant::now();
    let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_backoff(exact())
                .with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(svc);
    let call = tokio::spawn(client.oneshot(req()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let held = bucket.held_until(Instant::now());
    assert!(
        held.is_some_and(|h| h >= start + wait - secs(1) && h <= start + wait + secs(1)),
        "held until {:?}, wanted about {wait:?}",
        held.map(|h| h - start)
    );
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let spread = (wait / 10).min(secs(1));
    assert!(
        calls[1] >= wait - secs(1) && calls[1] <= wait + secs(1) + spread,
        "retried at {:?}, wanted {wait:?}",
        calls[1]
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_only_a_ratelimit_reset_waits_for_it_and_holds_the_bucket() {
    // Before: RateLimited { retry_after: None }, backoff 1-2-4-8 s, dead-lettered after 15 s
    // while the 45 s window was still closed.
    let (svc, calls) = closed_window(secs(45), 429, |left| {
        vec![(
            "ratelimit",
            format!(r#""default";r=0;t={}"#, left.as_secs_f64().ceil()),
        )]
    });
    waits_out(svc, calls, secs(45)).await;
}

#[tokio::test(start_paused = true)]
async fn a_429_with_x_ratelimit_remaining_zero_and_an_epoch_reset_waits_for_it() {
    let (svc, calls) = closed_window(secs(30), 429, |left| {
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + left;
        vec![
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", ceil_secs(reset).to_string()),
        ]
    });
    waits_out(svc, calls, secs(30)).await;
}

#[tokio::test(start_paused = true)]
async fn a_403_with_a_spent_github_quota_is_rate_limited_and_waits_for_the_reset() {
    // Before: a 403 was permanent, whatever its headers said.
    let (svc, calls) = closed_window(secs(20), 403, |left| {
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + left;
        vec![
            ("x-ratelimit-limit", "5000".into()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", ceil_secs(reset).to_string()),
        ]
    });
    waits_out(svc, calls, secs(20)).await;
}

#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_waits_for_it_and_holds_the_bucket() {
    // Before: treated as plain transient and retried after about 1 s.
    let (svc, calls) = closed_window(secs(40), 503, |left| {
        vec![("retry-after", left.as_secs().to_string())]
    });
    waits_out(svc, calls, secs(40)).await;
}

#[tokio::test(start_paused = true)]
async fn a_reset_hint_is_capped_by_the_policy() {
    let (svc, calls) = closed_window(secs(10), 429, |_| {
        vec![("ratelimit", r#""default";r=0;t=3600"#.into())]
    });
    let backoff = Backoff::builder()
        .jitter(Jitter::None)
        .max_delay(secs(10))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default().with_backoff(backoff),
        ))
        .service(svc);
    assert_eq!(client.oneshot(req()).await.unwrap().status(), 200);
    let calls = calls.lock().unwrap().clone();
    assert!(calls[1] >= secs(10) && calls[1] <= secs(11), "{calls:?}");
}

// ----- RFC 850 dates (RFC 9110 §5.6.7) -----

const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `t` in the obsolete RFC 850 form, `Sunday, 06-Nov-94 08:49:37 GMT`.
fn rfc850(t: SystemTime) -> String {
    // `Sun, 06 Nov 1994 08:49:37 GMT` -> `Sunday, 06-Nov-94 08:49:37 GMT`
    let imf = httpdate::fmt_http_date(t);
    let days = t.duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let weekday = WEEKDAYS[(days % 7) as usize];
    let (day, month, year, time) = (&imf[5..7], &imf[8..11], &imf[14..16], &imf[17..25]);
    format!("{weekday}, {day}-{month}-{year} {time} GMT")
}

/// `"YYYY-MM-DD hh:mm:ss"` UTC as a `SystemTime` (days-from-civil, so no weekday to get
/// right by hand).
fn at(date: &str) -> SystemTime {
    let n: Vec<i64> = date
        .split(['-', ' ', ':'])
        .map(|p| p.parse().unwrap())
        .collect();
    let (y, m, d) = (n[0] - i64::from(n[1] <= 2), n[1], n[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n[3] * 3_600 + n[4] * 60 + n[5];
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

fn wait_for(value: &str, now: SystemTime) -> Option<Duration> {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", value.parse().unwrap());
    retry_after(&headers, now, Duration::MAX)
}

#[test]
fn rfc850_two_digit_years_follow_rfc9110s_fifty_year_rule() {
    let now = at("2026-12-01 12:00:00");
    assert_eq!(
        rfc850(at("1994-11-06 08:49:37")),
        "Sunday, 06-Nov-94 08:49:37 GMT"
    );

    // `14-Nov-73` is 2073 in 2026 (47 years ahead), not 1973 (httpdate's pivot at 70).
    let future = at("2073-11-14 00:00:00");
    assert_eq!(
        wait_for(&rfc850(future), now),
        Some(future.duration_since(now).unwrap())
    );

    // `99` would be 73 years ahead: more than 50, so the past century (1999), a past date.
    let past = at("1999-12-01 00:00:00");
    assert_eq!(wait_for(&rfc850(past), now), Some(Duration::ZERO));

    // Both sides of the boundary: exactly 50 years ahead is not *more* than 50...
    let edge = at("2076-12-01 12:00:00");
    assert_eq!(
        wait_for(&rfc850(edge), now),
        Some(edge.duration_since(now).unwrap())
    );
    // ...one second later is, and means 1976.
    let beyond = at("1976-12-01 12:00:01");
    assert_eq!(wait_for(&rfc850(beyond), now), Some(Duration::ZERO));
    let beyond_as_2076 = rfc850(at("2076-12-01 12:00:01"));
    assert_eq!(
        wait_for(&beyond_as_2076, now),
        None,
        "read as 1976, its weekday no longer matches, so the date is invalid"
    );

    // Years just ahead and just behind stay in this century.
    let soon = at("2027-12-01 12:00:00");
    assert_eq!(wait_for(&rfc850(soon), now), Some(secs(365 * 86_400)));
    let recent = at("2025-12-01 12:00:00");
    assert_eq!(wait_for(&rfc850(recent), now), Some(Duration::ZERO));

    // Later in the century the window slides: from 2090, `10` is 2110 (20 years ahead).
    let late = at("2090-12-01 00:00:00");
    let ahead = at("2110-12-01 00:00:00");
    assert_eq!(
        wait_for(&rfc850(ahead), late),
        Some(ahead.duration_since(late).unwrap())
    );

    // The IMF-fixdate and asctime forms are unaffected, and garbage stays garbage.
    assert_eq!(
        wait_for(&httpdate::fmt_http_date(future), now),
        Some(future.duration_since(now).unwrap())
    );
    assert_eq!(wait_for("Sunday, 06-Nov-9x 08:49:37 GMT", now), None);
    assert_eq!(wait_for("Sunday, 31-Feb-94 08:49:37 GMT", now), None);
}

#[test]
fn hostile_rfc850_lookalikes_give_none_never_a_panic() {
    let now = at("2026-12-01 12:00:00");
    for value in [
        "Sunday, 06-\u{e9}v-94 08:49:37 GMT",
        "Sunday, \u{e9}\u{e9}-Nov-94 08:49:3 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMTX",
        "Sunday, 06-Nov-94 08:4\u{e9}37 GMT",
        "Sunday, 06-Nov-94 25:49:37 GMT",
        "Sunday, ",
        "Sunday, 06-Nov-94",
        "Funday, 06-Nov-94 08:49:37 GMT",
    ] {
        assert_eq!(wait_for(value, now), None, "{value}");
    }
    // Any clock, even far from today.
    let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
    assert_eq!(wait_for("Sunday, 06-Nov-94 08:49:37 GMT", far), None);
    assert!(wait_for("Sunday, 06-Nov-94 08:49:37 GMT", UNIX_EPOCH).is_some());
}

#[tokio::test(start_paused = true)]
async fn waiting_out_a_spent_daily_quota_spends_no_retry() {
    // HubSpot's daily pair at 0 on a 429 (private apps; no body needed): the policy holds
    // for the reset twice (the server was still refusing at the first probe), yet one retry
    // is all this policy allows, and it is still there for the request once the quota is back.
    let calls: Calls = Arc::default();
    let api = {
        let calls = calls.clone();
        let start = Instant::now();
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            let mut seen = calls.lock().unwrap();
            seen.push(start.elapsed());
            let n = seen.len();
            async move {
                let mut res = http::Response::builder();
                if n <= 2 {
                    res = res
                        .status(429)
                        .header("date", "Wed, 02 Dec 2026 23:59:00 GMT")
                        .header("x-hubspot-ratelimit-daily", "250000")
                        .header("x-hubspot-ratelimit-daily-remaining", "0");
                }
                Ok::<_, BoxError>(res.body(())?)
            }
        })
    };
    let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
    let policy = RetryPolicy::default()
        .with_backoff(Backoff::builder().max_retries(1).build().unwrap())
        .with_bucket(bucket.clone());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(RateLimitLayer::with_bucket(bucket.clone()))
        .service(api);
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    // Each refusal holds until the next quarter hour by the server's clock (23:59, so a
    // minute), the zone being unknown.
    assert!(calls[1] >= secs(60) && calls[1] <= secs(62), "{calls:?}");
    assert!(calls[2] - calls[1] >= secs(60), "{calls:?}");
}

/// Says every 429 is a quota back at once: a classifier bug that must not make retries free.
#[derive(Clone, Debug)]
struct QuotaBackAtOnce(tower_throttle::classify::HttpClassifier);

impl tower_throttle::classify::Classify for QuotaBackAtOnce {
    fn classify_response(
        &self,
        status: http::StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> tower_throttle::classify::Outcome {
        self.0.classify_response(status, headers, now)
    }

    fn classify_error(
        &self,
        err: &(dyn std::error::Error + 'static),
    ) -> tower_throttle::classify::Outcome {
        self.0.classify_error(err)
    }

    fn quota_reset(
        &self,
        _: http::StatusCode,
        _: &HeaderMap,
        _: Option<&[u8]>,
        _: SystemTime,
    ) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

#[tokio::test(start_paused = true)]
async fn a_quota_reset_of_zero_is_an_ordinary_429_counted_against_the_attempts() {
    let calls: Calls = Arc::default();
    let api = {
        let calls = calls.clone();
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            calls.lock().unwrap().push(Duration::ZERO);
            async { Ok::<_, BoxError>(http::Response::builder().status(429).body(())?) }
        })
    };
    let policy = RetryPolicy::new(QuotaBackAtOnce(Default::default()))
        .with_backoff(Backoff::builder().max_retries(2).build().unwrap());
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(api);
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(calls.lock().unwrap().len(), 3);
}
