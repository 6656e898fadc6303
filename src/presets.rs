//! Ready-made [`Limits`] for the APIs this crate's users call most.
//!
//! Every figure here is the vendor's *published* limit at the time of writing, and every one
//! is approximate: vendors change limits, raise them per contract, and share them between all
//! the apps of one account (a HubSpot portal, a Customer.io workspace), so another integration
//! may already be spending part of the same budget. Treat a preset as a safe starting point
//! and override it when you know better, either with the `*_with` functions below or by
//! building [`Limits`] yourself; nothing here is special-cased elsewhere in the crate.
//!
//! ```
//! use tower_throttle::{presets, RateLimitLayer};
//!
//! // HubSpot: 100 per rolling 10 s, paced, plus the daily allowance.
//! let limits = presets::hubspot();
//! assert_eq!(limits.quotas()[0].count(), 100);
//! let gate = RateLimitLayer::new(limits);
//!
//! // A portal on a higher tier: 190 per 10 s and 500,000 a day.
//! let bigger = presets::hubspot_with(190, 500_000)?;
//! assert_eq!(bigger.quotas()[0].count(), 190);
//! # let _ = gate;
//! # Ok::<(), tower_throttle::ConfigError>(())
//! ```
//!
//! # Shapes
//!
//! The vendors below enforce three shapes (see [the quota docs](crate::Quota) for the
//! arithmetic):
//!
//! * **rolling window** ("100 per 10 s": never more than 100 in *any* 10 s). A paced quota
//!   (burst 1, the default) is exactly safe against it, so the presets pace.
//! * **token bucket** (a rate and a burst). A paced quota at the same rate is also safe.
//! * **daily allowance** (a number of requests per 24 h). Pacing a daily figure evenly would
//!   throttle a job to one request every couple of seconds, so [`daily_allowance`] splits the
//!   allowance instead: half available at once, the rest earned back over the day, and never
//!   more than the allowance in any 24 hours.
//!
//! A concurrency cap ([`Limits::concurrency`]) is set where the vendor counts requests in
//! flight rather than (or as well as) requests per period.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::classify::{HttpClassifier, Outcome};
use crate::{ConfigError, Limits, Quota};

const DAY: Duration = Duration::from_secs(86_400);

/// Customer.io Track API requests per second per workspace (approximate, published).
pub const CUSTOMERIO_TRACK_PER_SECOND: u32 = 100;
/// Customer.io App API transactional messages per second per workspace (approximate).
pub const CUSTOMERIO_TRANSACTIONAL_PER_SECOND: u32 = 100;
/// Customer.io App API broadcast and query requests per second per workspace (approximate).
pub const CUSTOMERIO_BROADCASTS_PER_SECOND: u32 = 10;
/// The share of an approximate Customer.io limit the presets use (80%): the vendor says "~",
/// and other integrations of the workspace draw from the same budget.
pub const CUSTOMERIO_HEADROOM_PERCENT: u32 = 80;
/// HubSpot requests per rolling 10 seconds per portal (private apps, base tier).
pub const HUBSPOT_PER_TEN_SECONDS: u32 = 100;
/// HubSpot requests per day per portal (base tier).
pub const HUBSPOT_PER_DAY: u32 = 40_000;
/// Salesforce concurrent long-running requests (over 20 s) per org, production orgs.
pub const SALESFORCE_CONCURRENT_LONG_RUNNING: usize = 25;
/// Mailchimp Marketing API simultaneous connections per API key.
pub const MAILCHIMP_CONNECTIONS: usize = 10;
/// GA4 Data API (reporting) concurrent requests per property (standard property).
pub const GA4_CONCURRENT: usize = 10;
/// GA4 Data API (reporting) requests per day per property (standard property).
pub const GA4_PER_DAY: u32 = 10_000;

/// A quota for the presets' constants, which are valid by construction (unit-tested below).
fn fixed(result: Result<Quota, ConfigError>) -> Quota {
    result.expect("preset constants form a valid quota")
}

fn fixed_limits(result: Result<Limits, ConfigError>) -> Limits {
    result.expect("preset constants form valid limits")
}

fn headroom(published: u32) -> u32 {
    (published * CUSTOMERIO_HEADROOM_PERCENT / 100).max(1)
}

/// A daily allowance of `per_day` requests as a token bucket that never admits more than
/// `per_day` in any 24 hours, yet does not pace them one every `86_400 / per_day` seconds.
///
/// The bucket holds `ceil(per_day / 2)` requests at the start and refills
/// `floor(per_day / 2) + 1` per day. A bucket with burst `b` admits at most
/// `b - 1 + refill` in any interval of one refill period, which here is exactly `per_day`.
/// The price of the guarantee is the sustained rate: after the first half is spent, the
/// bucket earns back about half the allowance per day. A process that runs all day at a steady
/// rate is better served by the evenly paced [`Quota::per_day`].
///
/// This fits rolling 24-hour allowances (Salesforce) and is conservative for allowances that
/// reset at midnight (HubSpot, GA4): any interval is at most 24 hours of either.
///
/// ```
/// use tower_throttle::presets::daily_allowance;
///
/// let day = daily_allowance(40_000)?;
/// assert_eq!(day.burst(), 20_000);
/// assert_eq!(day.count(), 20_001);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
///
/// # Errors
/// [`ConfigError::ZeroRate`] when `per_day` is zero.
pub fn daily_allowance(per_day: u32) -> Result<Quota, ConfigError> {
    if per_day == 0 {
        return Err(ConfigError::ZeroRate);
    }
    let burst = per_day.div_ceil(2);
    let refill = per_day / 2 + 1;
    Quota::new(refill, DAY)?.with_burst(burst)
}

/// Customer.io Track API (`identify`, `track`, `trackAnonymous`, batch): 80 requests per
/// second, paced.
///
/// Published figure: about 100 requests per second per workspace, enforced as a rolling
/// (sliding) window and answered with 429 beyond it. The preset uses 80% of it
/// ([`CUSTOMERIO_HEADROOM_PERCENT`]) because the figure is approximate and shared by every
/// integration of the workspace; use [`customerio_track_with`] for another rate.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::presets;
///
/// let limits = presets::customerio_track();
/// assert_eq!(limits.quotas()[0].interval(), Duration::from_micros(12_500));
/// ```
pub fn customerio_track() -> Limits {
    Limits::new(fixed(Quota::per_second(headroom(
        CUSTOMERIO_TRACK_PER_SECOND,
    ))))
}

/// The Track API at `per_second` requests per second, paced (rolling-window safe).
///
/// # Errors
/// [`ConfigError::ZeroRate`] when `per_second` is zero.
pub fn customerio_track_with(per_second: u32) -> Result<Limits, ConfigError> {
    Ok(Limits::new(Quota::per_second(per_second)?))
}

/// Customer.io App API transactional messages (email, push): 80 requests per second, paced.
///
/// Published figure: about 100 requests per second per workspace, rolling window, 429 beyond
/// it; the preset keeps the same 80% headroom as [`customerio_track`]. Configure with
/// [`customerio_track_with`]-style limits: `Limits::new(Quota::per_second(n)?)`.
pub fn customerio_transactional() -> Limits {
    Limits::new(fixed(Quota::per_second(headroom(
        CUSTOMERIO_TRANSACTIONAL_PER_SECOND,
    ))))
}

/// Customer.io App API broadcasts and queries (segments, customers, activities): 8 requests
/// per second, paced.
///
/// Published figure: about 10 requests per second per workspace, rolling window, 429 beyond
/// it; 80% headroom as for the other Customer.io presets. Configure with
/// `Limits::new(Quota::per_second(n)?)`.
pub fn customerio_broadcasts() -> Limits {
    Limits::new(fixed(Quota::per_second(headroom(
        CUSTOMERIO_BROADCASTS_PER_SECOND,
    ))))
}

/// HubSpot (private apps, base tier): 100 requests per rolling 10 seconds, paced one every
/// 100 ms, and a daily allowance of 40,000 (see [`daily_allowance`]).
///
/// Published figures: 100 requests per 10 seconds and 40,000 per day per portal, shared by
/// every app of the portal; higher tiers and the API add-on raise both. HubSpot describes the
/// 10-second limit with a burst of 100, but enforces it over a rolling window, so a client
/// token bucket with burst 100 at 10/s admits up to 199 in the first 10 s and earns 429s.
/// The preset paces instead (burst 1), which never exceeds 100 in any 10 s. HubSpot answers
/// 429 with `X-HubSpot-RateLimit-*` headers, which the default classifier handles.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::presets;
///
/// let limits = presets::hubspot();
/// let ten_s = limits.quotas()[0];
/// assert_eq!((ten_s.count(), ten_s.period(), ten_s.burst()), (100, Duration::from_secs(10), 1));
/// ```
pub fn hubspot() -> Limits {
    fixed_limits(hubspot_with(HUBSPOT_PER_TEN_SECONDS, HUBSPOT_PER_DAY))
}

/// HubSpot with your portal's figures: `per_ten_seconds` per rolling 10 s (paced) and
/// `per_day` as a [`daily_allowance`].
///
/// # Errors
/// [`ConfigError::ZeroRate`] when either figure is zero.
pub fn hubspot_with(per_ten_seconds: u32, per_day: u32) -> Result<Limits, ConfigError> {
    Ok(
        Limits::new(Quota::new(per_ten_seconds, Duration::from_secs(10))?)
            .and(daily_allowance(per_day)?),
    )
}

/// Salesforce REST/SOAP APIs: at most 25 requests in flight, and `daily_requests` per rolling
/// 24 hours as a [`daily_allowance`].
///
/// Published figures: 25 concurrent *long-running* requests (those lasting over 20 s) per
/// production org, and a daily allowance that depends on the edition and the number of
/// licences (from 15,000 plus an amount per licence on smaller editions to 1,000,000 or more
/// on larger ones; read yours in Setup, "Company Information"), measured over a rolling
/// 24 hours. Capping every request at 25 in flight is conservative:
/// short requests do not count against the vendor's cap. Salesforce refuses over-limit calls
/// with `403 REQUEST_LIMIT_EXCEEDED` rather than 429; pair this preset with
/// [`salesforce_classifier`] so those are treated as rate limits.
///
/// ```
/// use tower_throttle::presets;
///
/// let limits = presets::salesforce(100_000)?;
/// assert_eq!(limits.concurrency(), Some(25));
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
///
/// # Errors
/// [`ConfigError::ZeroRate`] when `daily_requests` is zero.
pub fn salesforce(daily_requests: u32) -> Result<Limits, ConfigError> {
    Limits::new(daily_allowance(daily_requests)?)
        .with_concurrency(SALESFORCE_CONCURRENT_LONG_RUNNING)
}

/// A classifier for Salesforce: a `403` whose `Sforce-Limit-Info` header shows the org's API
/// usage at or above its allowance (`api-usage=15000/15000`) is a rate limit, not a
/// permission error.
///
/// Other 403s stay permanent (a missing permission does not pass with time), and everything
/// else follows [`HttpClassifier`]'s table. The classifier sees only status and headers, so a
/// `REQUEST_LIMIT_EXCEEDED` for *concurrent* requests, which shows only in the body, is not
/// recognised; the concurrency cap of [`salesforce`] is what prevents it.
///
/// ```
/// use std::time::SystemTime;
/// use http::{HeaderMap, StatusCode};
/// use tower_throttle::classify::{Classify, Outcome};
/// use tower_throttle::presets;
///
/// let classifier = presets::salesforce_classifier();
/// let mut headers = HeaderMap::new();
/// headers.insert("sforce-limit-info", "api-usage=15000/15000".parse().unwrap());
/// assert_eq!(
///     classifier.classify_response(StatusCode::FORBIDDEN, &headers, SystemTime::now()),
///     Outcome::RateLimited { retry_after: None }
/// );
/// assert_eq!(
///     classifier.classify_response(StatusCode::FORBIDDEN, &HeaderMap::new(), SystemTime::now()),
///     Outcome::Permanent
/// );
/// ```
pub fn salesforce_classifier() -> HttpClassifier {
    HttpClassifier::new().custom(|status, headers| {
        (status == StatusCode::FORBIDDEN && salesforce_usage_exhausted(headers))
            .then_some(Outcome::RateLimited { retry_after: None })
    })
}

/// Reads `Sforce-Limit-Info: api-usage=<used>/<allowed>`; true when `used >= allowed`.
fn salesforce_usage_exhausted(headers: &HeaderMap) -> bool {
    crate::headers::salesforce_usage(headers).is_some_and(|usage| usage.remaining == 0)
}

/// Mailchimp Marketing API: at most 10 requests in flight, no rate.
///
/// Published figure: 10 simultaneous connections per API key, no stated per-second limit;
/// an 11th concurrent request is answered 429. Configure with
/// `Limits::unlimited().with_concurrency(n)?`, adding a quota if you see 429s at high rates.
///
/// ```
/// use tower_throttle::presets;
///
/// let limits = presets::mailchimp();
/// assert!(limits.quotas().is_empty());
/// assert_eq!(limits.concurrency(), Some(10));
/// ```
pub fn mailchimp() -> Limits {
    fixed_limits(Limits::unlimited().with_concurrency(MAILCHIMP_CONNECTIONS))
}

/// GA4 Data API (reporting): at most 10 requests in flight and a daily allowance of 10,000
/// (see [`daily_allowance`]).
///
/// Published figures: 10 concurrent requests and 10,000 requests per day per standard
/// property (Analytics 360 properties get more); over-quota requests are answered 429
/// (`RESOURCE_EXHAUSTED`). The daily quota resets at midnight Pacific time; the allowance
/// here is conservative against that. GA4 also meters "tokens" per request, which a request
/// count cannot see. Configure with [`ga4_with`]. The Measurement Protocol (sending events)
/// has no such limit and needs no preset.
///
/// ```
/// use tower_throttle::presets;
///
/// let limits = presets::ga4();
/// assert_eq!(limits.concurrency(), Some(10));
/// ```
pub fn ga4() -> Limits {
    fixed_limits(ga4_with(GA4_CONCURRENT, GA4_PER_DAY))
}

/// GA4 reporting with your property's figures.
///
/// # Errors
/// [`ConfigError::Zero`] for a zero `concurrent`, [`ConfigError::ZeroRate`] for a zero
/// `per_day`.
pub fn ga4_with(concurrent: usize, per_day: u32) -> Result<Limits, ConfigError> {
    Limits::new(daily_allowance(per_day)?).with_concurrency(concurrent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classify;
    use crate::LocalBucket;
    use std::time::SystemTime;
    use tokio::time::Instant;

    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn customerio_presets_keep_twenty_percent_headroom() {
        let track = customerio_track();
        assert_eq!(track.quotas(), &[Quota::per_second(80).unwrap()]);
        assert_eq!(track.concurrency(), None);
        assert_eq!(
            customerio_transactional().quotas(),
            &[Quota::per_second(80).unwrap()]
        );
        assert_eq!(
            customerio_broadcasts().quotas(),
            &[Quota::per_second(8).unwrap()]
        );
        assert_eq!(customerio_track_with(95).unwrap().quotas()[0].count(), 95);
        assert_eq!(customerio_track_with(0), Err(ConfigError::ZeroRate));
    }

    #[test]
    fn hubspot_paces_the_ten_second_window_and_splits_the_daily_one() {
        let limits = hubspot();
        let [ten_s, day] = limits.quotas() else {
            panic!("two quotas expected: {limits:?}");
        };
        assert_eq!(
            (ten_s.count(), ten_s.period(), ten_s.burst()),
            (100, TEN_S, 1)
        );
        assert_eq!(ten_s.interval(), Duration::from_millis(100));
        assert_eq!(
            (day.period(), day.burst(), day.count()),
            (DAY, 20_000, 20_001)
        );
        assert_eq!(limits.concurrency(), None);
        assert_eq!(hubspot_with(0, 1), Err(ConfigError::ZeroRate));
        assert_eq!(hubspot_with(1, 0), Err(ConfigError::ZeroRate));
    }

    #[test]
    fn salesforce_caps_concurrency_and_takes_the_daily_number() {
        let limits = salesforce(15_000).unwrap();
        assert_eq!(limits.concurrency(), Some(25));
        assert_eq!(limits.quotas(), &[daily_allowance(15_000).unwrap()]);
        assert_eq!(salesforce(0), Err(ConfigError::ZeroRate));
    }

    #[test]
    fn mailchimp_and_ga4_cap_concurrency() {
        assert_eq!(
            mailchimp(),
            Limits::unlimited().with_concurrency(10).unwrap()
        );
        let ga4 = ga4();
        assert_eq!(ga4.concurrency(), Some(10));
        assert_eq!(ga4.quotas(), &[daily_allowance(10_000).unwrap()]);
        assert_eq!(
            ga4_with(0, 10),
            Err(ConfigError::Zero {
                name: "max_in_flight"
            })
        );
    }

    #[test]
    fn daily_allowance_splits_odd_and_tiny_figures() {
        assert_eq!(daily_allowance(0), Err(ConfigError::ZeroRate));
        let one = daily_allowance(1).unwrap();
        assert_eq!((one.burst(), one.count()), (1, 1));
        let odd = daily_allowance(7).unwrap();
        assert_eq!((odd.burst(), odd.count()), (4, 4));
    }

    /// Greedy callers for three days: the bucket never admits more than the allowance in
    /// any 24 hours, and does admit the first half at once.
    #[test]
    fn daily_allowance_never_exceeds_the_figure_in_any_day() {
        for per_day in [1, 2, 7, 1_000] {
            let bucket = LocalBucket::new(daily_allowance(per_day).unwrap());
            let start = Instant::now();
            let mut admitted = Vec::new();
            loop {
                let r = bucket.try_reserve(start, None).unwrap();
                let at = r.at() - start;
                if at >= DAY * 3 {
                    break;
                }
                admitted.push(at);
            }
            let immediate = admitted.iter().filter(|t| t.is_zero()).count();
            assert_eq!(immediate as u32, per_day.div_ceil(2), "per_day {per_day}");
            for (i, &t) in admitted.iter().enumerate() {
                let in_day = admitted[i..].iter().take_while(|&&u| u < t + DAY).count();
                assert!(
                    in_day as u32 <= per_day,
                    "per_day {per_day}: {in_day} from {t:?}"
                );
            }
        }
    }

    #[test]
    fn salesforce_classifier_reads_the_usage_header() {
        let c = salesforce_classifier();
        let now = SystemTime::now();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("sforce-limit-info", v.parse().unwrap());
            h
        };
        let limited = Outcome::RateLimited { retry_after: None };
        assert_eq!(
            c.classify_response(StatusCode::FORBIDDEN, &with("api-usage=15001/15000"), now),
            limited
        );
        assert_eq!(
            c.classify_response(
                StatusCode::FORBIDDEN,
                &with("per-app-api-usage=1/2, api-usage=9/9"),
                now
            ),
            limited
        );
        for v in ["api-usage=10/15000", "api-usage=garbage", "api-usage=/", ""] {
            assert_eq!(
                c.classify_response(StatusCode::FORBIDDEN, &with(v), now),
                Outcome::Permanent,
                "{v:?}"
            );
        }
        assert_eq!(
            c.classify_response(StatusCode::OK, &with("api-usage=9/9"), now),
            Outcome::Success
        );
        assert_eq!(
            c.classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), now),
            limited
        );
    }
}
