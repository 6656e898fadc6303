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
//! // HubSpot Free or Starter: 100 per rolling 10 s, paced, plus the daily allowance.
//! let limits = presets::hubspot();
//! assert_eq!(limits.quotas()[0].count(), 100);
//! let gate = RateLimitLayer::new(limits);
//!
//! // An Enterprise account: 190 per 10 s and 1,000,000 a day.
//! let bigger = presets::hubspot_tier(presets::HubSpotTier::Enterprise);
//! assert_eq!(bigger.quotas()[0].count(), 190);
//!
//! // Klaviyo's per-endpoint tiers: both windows at once.
//! let m = presets::klaviyo(presets::KlaviyoTier::M);
//! assert_eq!((m.quotas()[0].count(), m.quotas()[1].count()), (10, 150));
//!
//! // Every preset by name, e.g. to test them all.
//! assert!(presets::all().iter().any(|(name, _)| *name == "intercom"));
//! # let _ = gate;
//! ```
//!
//! The table in the README lists every preset with its vendor, limit, shape, the headers the
//! crate reads from that vendor, and its batch size.
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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};

use crate::classify::{HttpClassifier, Outcome};
use crate::{ConfigError, Limits, Quota};

#[cfg(test)]
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
/// HubSpot requests per rolling 10 seconds per app, Free and Starter accounts.
pub const HUBSPOT_PER_TEN_SECONDS: u32 = 100;
/// HubSpot requests per day per account, Free and Starter accounts.
pub const HUBSPOT_PER_DAY: u32 = 250_000;
/// HubSpot requests per rolling 10 seconds per app, Professional and Enterprise accounts.
pub const HUBSPOT_PRO_PER_TEN_SECONDS: u32 = 190;
/// HubSpot requests per day per account, Professional accounts.
pub const HUBSPOT_PROFESSIONAL_PER_DAY: u32 = 625_000;
/// HubSpot requests per day per account, Enterprise accounts.
pub const HUBSPOT_ENTERPRISE_PER_DAY: u32 = 1_000_000;
/// HubSpot requests per rolling 10 seconds per app with an API limit increase (any tier).
pub const HUBSPOT_INCREASED_PER_TEN_SECONDS: u32 = 250;
/// Daily requests each HubSpot API limit increase adds on top of the subscription's.
pub const HUBSPOT_INCREASE_PER_DAY: u32 = 1_000_000;
/// The most API limit increases a HubSpot account can buy.
pub const HUBSPOT_MAX_INCREASES: u8 = 2;
/// HubSpot's guideline (and its App Marketplace certification rule): requests answered with an
/// error stay under 5% of the day's requests. See [`HealthThresholds::hubspot`].
///
/// [`HealthThresholds::hubspot`]: crate::metrics::HealthThresholds::hubspot
pub const HUBSPOT_MAX_ERROR_RATIO: f64 = 0.05;
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

/// A daily allowance of `per_day` requests: [`Quota::daily`], the shape every preset here
/// uses for its daily window (never more than `per_day` in any 24 hours, no pacing inside it;
/// see [`Quota::allowance`] for the arithmetic and its price).
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
    Quota::daily(per_day)
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

/// HubSpot, Free and Starter accounts: 100 requests per rolling 10 seconds per app, paced one
/// every 100 ms, and a daily allowance of 250,000 per account (see [`daily_allowance`]).
/// [`hubspot_tier`] has the other tiers.
///
/// Published figures (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>,
/// read 2026-12-01): per 10 seconds per app, 100 on Free and Starter and 190 on Professional
/// and Enterprise; per day per account, 250,000, 625,000 and 1,000,000; each API limit
/// increase (at most two) raises the 10-second figure to 250 and adds 1,000,000 a day. The
/// daily limit resets at midnight in the account's time zone. HubSpot describes the
/// 10-second limit as a burst, but enforces it over a rolling window, so a client token bucket
/// with burst 100 at 10/s admits up to 199 in the first 10 s and earns 429s. The preset paces
/// instead (burst 1), which never exceeds 100 in any 10 s. HubSpot sends
/// `X-HubSpot-RateLimit-*` headers (the daily pair not to OAuth apps), and names the limit a
/// 429 hit in its body's `policyName` ([`hubspot_policy`]). Keep errors under 5% of the day's
/// requests ([`HUBSPOT_MAX_ERROR_RATIO`]; check a run with
/// [`HealthThresholds::hubspot`](crate::metrics::HealthThresholds::hubspot)).
///
/// A daily 429 holds every caller until the daily reset ([`hubspot_daily_wait`]) instead of
/// spending retries on it: the default [`HttpClassifier`] recognises it, from the body when
/// the stack buffers it (`Throttle::builder().timeout(..)`) or from the daily headers. Tell it
/// the account's zone with [`HttpClassifier::hubspot_utc_offset`] to wait for that midnight
/// rather than probe every quarter hour.
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

/// HubSpot with your account's figures: `per_ten_seconds` per rolling 10 s (paced) and
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

/// A HubSpot account's subscription tier, for [`hubspot_tier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HubSpotTier {
    /// Free and Starter: 100 per 10 s, 250,000 a day.
    FreeOrStarter,
    /// Professional: 190 per 10 s, 625,000 a day.
    Professional,
    /// Enterprise: 190 per 10 s, 1,000,000 a day.
    Enterprise,
}

impl HubSpotTier {
    /// (per 10 seconds per app, per day per account) without limit increases.
    pub const fn figures(self) -> (u32, u32) {
        match self {
            HubSpotTier::FreeOrStarter => (HUBSPOT_PER_TEN_SECONDS, HUBSPOT_PER_DAY),
            HubSpotTier::Professional => {
                (HUBSPOT_PRO_PER_TEN_SECONDS, HUBSPOT_PROFESSIONAL_PER_DAY)
            }
            HubSpotTier::Enterprise => (HUBSPOT_PRO_PER_TEN_SECONDS, HUBSPOT_ENTERPRISE_PER_DAY),
        }
    }
}

/// HubSpot at a tier's published figures (see [`hubspot`] for the source and the shape).
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::presets::{self, HubSpotTier};
///
/// let pro = presets::hubspot_tier(HubSpotTier::Professional);
/// assert_eq!((pro.quotas()[0].count(), pro.quotas()[0].period()), (190, Duration::from_secs(10)));
/// ```
pub fn hubspot_tier(tier: HubSpotTier) -> Limits {
    fixed_limits(hubspot_with_increases(tier, 0))
}

/// HubSpot at a tier with `increases` API limit increases bought (0 to
/// [`HUBSPOT_MAX_INCREASES`]): 250 per 10 s, and 1,000,000 a day more for each.
///
/// # Errors
/// [`ConfigError::OutOfRange`] for more than [`HUBSPOT_MAX_INCREASES`] increases.
pub fn hubspot_with_increases(tier: HubSpotTier, increases: u8) -> Result<Limits, ConfigError> {
    if increases > HUBSPOT_MAX_INCREASES {
        return Err(ConfigError::OutOfRange {
            name: "increases",
            value: f64::from(increases),
            expected: "0 to 2 (HubSpot sells at most two API limit increases)",
        });
    }
    let (mut per_ten_seconds, mut per_day) = tier.figures();
    if increases > 0 {
        per_ten_seconds = HUBSPOT_INCREASED_PER_TEN_SECONDS;
        per_day += HUBSPOT_INCREASE_PER_DAY * u32::from(increases);
    }
    hubspot_with(per_ten_seconds, per_day)
}

/// Which HubSpot limit a 429 hit, from its body's `policyName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HubSpotPolicy {
    /// The account's daily allowance (`"DAILY"`): nothing passes before the daily reset at
    /// midnight in the account's time zone ([`hubspot_daily_reset_in`]); retrying sooner only
    /// burns attempts.
    Daily,
    /// The per-app short window (`"SECONDLY"`, `"TEN_SECONDLY_ROLLING"`): back off as for any
    /// 429.
    Secondly,
    /// A policy name this crate does not know.
    Other,
}

/// The limit a HubSpot 429 body names, or `None` when the body is not HubSpot's JSON error.
///
/// HubSpot's 429 body is `{"status":"error","message":"You have reached your daily limit.",
/// "errorType":"RATE_LIMIT","policyName":"DAILY",...}`; `policyName` says daily or secondly.
/// The body is untrusted input: anything that is not a JSON object with a string
/// `policyName` gives `None`, never a panic.
///
/// [`HttpClassifier`]'s [`quota_reset`](crate::classify::Classify::quota_reset) reads it
/// from 429 bodies the retry policy can see (buffered, at most 16 KiB: what
/// [`Throttle::builder().timeout(..)`](crate::ThrottleBuilder::timeout) gives it), so a daily
/// 429 holds every caller until the reset ([`hubspot_daily_wait`]).
///
/// ```
/// use tower_throttle::presets::{hubspot_policy, HubSpotPolicy};
///
/// let body = br#"{"status":"error","errorType":"RATE_LIMIT","policyName":"DAILY"}"#;
/// assert_eq!(hubspot_policy(body), Some(HubSpotPolicy::Daily));
/// assert_eq!(hubspot_policy(b"<html>busy</html>"), None);
/// ```
pub fn hubspot_policy(body: &[u8]) -> Option<HubSpotPolicy> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = body.get("policyName")?.as_str()?;
    Some(match name.to_ascii_uppercase().as_str() {
        "DAILY" => HubSpotPolicy::Daily,
        "SECONDLY" | "TEN_SECONDLY_ROLLING" => HubSpotPolicy::Secondly,
        _ => HubSpotPolicy::Other,
    })
}

/// Whether a HubSpot response says the account's daily allowance is spent
/// (`X-HubSpot-RateLimit-Daily-Remaining: 0`).
///
/// A way to tell a daily 429 from a secondly one without the body, for private apps only:
/// HubSpot does not send the daily pair to OAuth apps, whose 429s only [`hubspot_policy`]
/// can tell apart.
///
/// ```
/// use http::HeaderMap;
/// use tower_throttle::presets::hubspot_daily_exhausted;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-hubspot-ratelimit-daily", "250000".parse().unwrap());
/// headers.insert("x-hubspot-ratelimit-daily-remaining", "0".parse().unwrap());
/// assert!(hubspot_daily_exhausted(&headers));
/// ```
pub fn hubspot_daily_exhausted(headers: &HeaderMap) -> bool {
    crate::headers::hubspot_daily(headers).is_some_and(|daily| daily.remaining == 0)
}

/// Time from `now` until HubSpot's next daily reset: midnight in a time zone `utc_offset`
/// ahead of UTC (negative for zones behind it; clamped to the ±14 h real zones span).
///
/// Never zero: a daily 429 means the allowance is spent until the *next* midnight. Measure
/// `now` with the server's clock where you have it (the response's `Date` header).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_throttle::presets::hubspot_daily_reset_in;
///
/// // 22:00 UTC; an account on UTC-5 (New York in winter) resets at 05:00 UTC.
/// let now = UNIX_EPOCH + Duration::from_secs(22 * 3600);
/// assert_eq!(hubspot_daily_reset_in(now, -5 * 3600), Duration::from_secs(7 * 3600));
/// ```
pub fn hubspot_daily_reset_in(now: SystemTime, utc_offset_secs: i32) -> Duration {
    const DAY_SECS: i64 = 86_400;
    const MAX_OFFSET: i64 = 14 * 3600;
    let offset = i64::from(utc_offset_secs).clamp(-MAX_OFFSET, MAX_OFFSET);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    // Reduced modulo a day before the offset is added, so no clock can overflow it.
    let into_utc_day = (since_epoch.as_secs() % DAY_SECS.unsigned_abs()) as i64;
    let into_local_day = (into_utc_day + offset).rem_euclid(DAY_SECS);
    let left = (DAY_SECS - into_local_day).unsigned_abs();
    Duration::from_secs(left) - Duration::from_nanos(u64::from(since_epoch.subsec_nanos()))
}

/// How long a daily HubSpot 429 should hold every caller: until the earliest instant the
/// account's allowance can be back, measured from `now` (the server's `Date` where known).
///
/// HubSpot resets the daily allowance at midnight in the account's time-zone setting
/// (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>), and no
/// API tells a client that setting. So:
///
/// * `utc_offset_secs: Some(offset)`: until the next local midnight
///   ([`hubspot_daily_reset_in`]). Within [`HUBSPOT_RESET_GRACE`] after a local midnight the
///   reset should already have happened, so the offset is taken to be stale (a daylight-saving
///   change, a wrong setting) and the wait is only until the next quarter hour, rather than a
///   whole day;
/// * `None` (unknown zone): until the next quarter hour of UTC. Every real time zone's
///   midnight falls on one, so the reset is noticed within 15 minutes, at the cost of at most
///   one refused probe per quarter hour (96 a day, far below HubSpot's 5% error guideline).
///
/// Never zero, and never more than a day.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_throttle::presets::hubspot_daily_wait;
///
/// // 23:50 UTC.
/// let now = UNIX_EPOCH + Duration::from_secs(23 * 3600 + 50 * 60);
/// assert_eq!(hubspot_daily_wait(now, Some(0)), Duration::from_secs(600));
/// // UTC-5: local 18:50, five hours and ten minutes to midnight.
/// assert_eq!(hubspot_daily_wait(now, Some(-5 * 3600)), Duration::from_secs(5 * 3600 + 600));
/// // Unknown zone: probe at the next quarter hour.
/// assert_eq!(hubspot_daily_wait(now, None), Duration::from_secs(600));
/// ```
pub fn hubspot_daily_wait(now: SystemTime, utc_offset_secs: Option<i32>) -> Duration {
    const QUARTER_HOUR: u64 = 15 * 60;
    let to_next_quarter = || {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let into_quarter = Duration::new(since_epoch.as_secs() % QUARTER_HOUR, 0)
            + Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
        Duration::from_secs(QUARTER_HOUR) - into_quarter
    };
    match utc_offset_secs {
        None => to_next_quarter(),
        Some(offset) => {
            let to_midnight = hubspot_daily_reset_in(now, offset);
            let since_midnight = Duration::from_secs(86_400).saturating_sub(to_midnight);
            if since_midnight < HUBSPOT_RESET_GRACE {
                to_next_quarter()
            } else {
                to_midnight
            }
        }
    }
}

/// How long after the expected local midnight a daily 429 is taken to mean the configured
/// time zone is off (see [`hubspot_daily_wait`]): two hours covers a daylight-saving shift.
pub const HUBSPOT_RESET_GRACE: Duration = Duration::from_secs(2 * 3600);

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

/// A Klaviyo endpoint's rate-limit tier, for [`klaviyo`]. Each endpoint's page in Klaviyo's
/// API reference names its tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KlaviyoTier {
    /// XS: 1 per second, 15 per minute.
    Xs,
    /// S: 3 per second, 60 per minute.
    S,
    /// M: 10 per second, 150 per minute.
    M,
    /// L: 75 per second, 700 per minute.
    L,
    /// XL: 350 per second, 3,500 per minute.
    Xl,
}

impl KlaviyoTier {
    /// (burst per second, steady per minute).
    pub const fn figures(self) -> (u32, u32) {
        match self {
            KlaviyoTier::Xs => (1, 15),
            KlaviyoTier::S => (3, 60),
            KlaviyoTier::M => (10, 150),
            KlaviyoTier::L => (75, 700),
            KlaviyoTier::Xl => (350, 3_500),
        }
    }
}

/// Klaviyo, one endpoint tier: its per-second ("burst") and per-minute ("steady") windows at
/// once, each paced.
///
/// Published figures (<https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling>,
/// read 2026-12-01): per account (per installed app for OAuth apps), fixed windows of 1 s and
/// 1 min, XS 1/s and 15/min, S 3/s and 60/min, M 10/s and 150/min, L 75/s and 700/min, XL
/// 350/s and 3,500/min; a 429 when either is exceeded. The steady window is the binding one
/// for a long job. Successful responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
/// `RateLimit-Reset` (seconds to go) for the steady window (the earlier IETF draft's split
/// fields, not `X-RateLimit-*`), and a 429 carries `Retry-After` instead.
pub fn klaviyo(tier: KlaviyoTier) -> Limits {
    let (per_second, per_minute) = tier.figures();
    Limits::new(fixed(Quota::per_second(per_second))).and(fixed(Quota::per_minute(per_minute)))
}

/// Braze `/users/track` requests per 3 seconds per workspace.
pub const BRAZE_USERS_TRACK_PER_THREE_SECONDS: u32 = 3_000;
/// Braze `/users/track`: at most this many events, and as many purchases and attributes, in
/// one request.
pub const BRAZE_USERS_TRACK_BATCH: usize = 75;
/// Braze requests per hour per workspace shared by the endpoints without a limit of their own.
pub const BRAZE_DEFAULT_PER_HOUR: u32 = 250_000;

/// Braze `/users/track`: 3,000 requests per 3 seconds, paced (one every millisecond).
///
/// Published figures (<https://www.braze.com/docs/api/api_limits/>, read 2026-12-01): per
/// workspace, 3,000 requests per three seconds, each with at most 75 events, 75 purchases and
/// 75 attributes ([`BRAZE_USERS_TRACK_BATCH`]); raised on request. Braze answers 429 with
/// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a Unix timestamp).
pub fn braze_users_track() -> Limits {
    Limits::new(fixed(Quota::new(
        BRAZE_USERS_TRACK_PER_THREE_SECONDS,
        Duration::from_secs(3),
    )))
}

/// Braze endpoints without a limit of their own: 250,000 requests per hour shared between
/// them, paced (about 69 per second). Same source as [`braze_users_track`]; endpoints with
/// their own figure (`/users/export/ids`, `/messages/send` for broadcasts, ...) need
/// `Limits::new(Quota::new(n, period)?)` with the figure of that table.
pub fn braze_default() -> Limits {
    Limits::new(fixed(Quota::per_hour(BRAZE_DEFAULT_PER_HOUR)))
}

/// Intercom requests per minute per private app.
pub const INTERCOM_PRIVATE_APP_PER_MINUTE: u32 = 10_000;
/// Intercom requests per minute per workspace, shared by its private apps.
pub const INTERCOM_WORKSPACE_PER_MINUTE: u32 = 25_000;

/// Intercom, one private app: 10,000 per minute, enforced in 10-second windows as 1,666 per
/// 10 s, paced.
///
/// Published figures (<https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting>,
/// read 2026-12-01): private apps 10,000 calls per minute per app and 25,000 per minute per
/// workspace. Intercom spreads a per-minute limit over 10-second windows (its answer on
/// <https://community.intercom.com/api-webhooks-23/what-is-the-current-api-rate-limit-218>:
/// 1,000 a minute is 166 per 10 seconds), so a burst of a minute's worth earns 429s; the preset
/// uses the per-10-second figure, rounded down. Intercom sends `X-RateLimit-Limit`,
/// `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a Unix timestamp).
pub fn intercom() -> Limits {
    fixed_limits(intercom_with(INTERCOM_PRIVATE_APP_PER_MINUTE))
}

/// Intercom at `per_minute`, spread over 10-second windows (`per_minute / 6` each, rounded
/// down so that six windows never exceed the minute).
///
/// # Errors
/// [`ConfigError::ZeroRate`] when `per_minute` is below 6.
pub fn intercom_with(per_minute: u32) -> Result<Limits, ConfigError> {
    Ok(Limits::new(Quota::new(
        per_minute / 6,
        Duration::from_secs(10),
    )?))
}

/// Twilio SendGrid: no client-side rate; the server says.
///
/// Published (<https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits>,
/// read 2026-12-01): every endpoint has its own number of requests per refresh period,
/// stated in `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a Unix
/// timestamp) on each response, with 429 beyond it; the page gives no figures. So the preset
/// sets no quota: pair it with an [`AdaptiveLayer`](crate::AdaptiveLayer), which reads those
/// headers, or use [`sendgrid_with`] once you know an endpoint's figure.
pub fn sendgrid() -> Limits {
    Limits::unlimited()
}

/// SendGrid at `count` requests per `period`, paced.
///
/// # Errors
/// As [`Quota::new`].
pub fn sendgrid_with(count: u32, period: Duration) -> Result<Limits, ConfigError> {
    Ok(Limits::new(Quota::new(count, period)?))
}

/// Iterable bulk event tracking (`/api/events/trackBulk`) requests per second per project.
pub const ITERABLE_BULK_TRACK_PER_SECOND: u32 = 10;

/// Iterable bulk event tracking: 10 requests per second per project, paced.
///
/// Iterable publishes a limit per endpoint and per project in its API reference; the figure
/// here is the one quoted for bulk event tracking in
/// <https://hookdeck.com/webhooks/platforms/how-to-solve-iterable-exceeded-rate-limit-for-webhooks>
/// (Iterable's own pages could not be read when this was written: check the endpoint's page
/// and use [`iterable_with`] for the others). Beyond it Iterable answers 429.
pub fn iterable_bulk_track() -> Limits {
    fixed_limits(iterable_with(ITERABLE_BULK_TRACK_PER_SECOND))
}

/// An Iterable endpoint at `per_second` requests per second per project, paced.
///
/// # Errors
/// [`ConfigError::ZeroRate`] when `per_second` is zero.
pub fn iterable_with(per_second: u32) -> Result<Limits, ConfigError> {
    Ok(Limits::new(Quota::per_second(per_second)?))
}

/// Segment HTTP Tracking API: the largest request body outside `/batch`, in bytes (32 KB).
pub const SEGMENT_MAX_REQUEST_BYTES: usize = 32_000;
/// Segment HTTP Tracking API: the largest `/batch` request body, in bytes (500 KB).
pub const SEGMENT_MAX_BATCH_BYTES: usize = 500_000;
/// Segment HTTP Tracking API: the most events in one `/batch` request.
pub const SEGMENT_MAX_BATCH_EVENTS: usize = 2_500;

/// Segment HTTP Tracking API: no rate limit, only sizes.
///
/// Published (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>,
/// read 2026-12-01): no hard rate limit (sources in aggregate above 60 million events per ten
/// minutes may be queued, not refused); a request body is at most 32 KB, a `/batch` body at
/// most 500 KB with at most 2,500 events of at most 32 KB each. Oversized requests are
/// answered 400, and extra events in a batch are dropped with a 200, so the sizes are what
/// to enforce ([`SEGMENT_MAX_REQUEST_BYTES`], [`SEGMENT_MAX_BATCH_BYTES`],
/// [`SEGMENT_MAX_BATCH_EVENTS`], as the batch layer's byte and count limits). KB is read as
/// 1,000 bytes, which is safe under either reading.
pub fn segment() -> Limits {
    Limits::unlimited()
}

/// Shopify REST Admin API bucket size per app per store.
pub const SHOPIFY_BUCKET: u32 = 40;
/// Shopify REST Admin API leak rate, requests per second.
pub const SHOPIFY_LEAK_PER_SECOND: u32 = 2;

/// Shopify REST Admin API: a token bucket of 40 refilled at 2 per second.
///
/// Published figures (<https://help.shopify.com/en/api/reference/rest-admin-api-rate-limits>,
/// read 2026-12-01): a leaky bucket per app and store, size 40, leaking 2 requests per
/// second; a request that finds it full is answered 429. Here the server's shape is a token
/// bucket, so the preset bursts as the bucket does (40 at once, then 2/s), which is exactly
/// what the server admits. Shopify reports the bucket in `X-Shopify-Shop-Api-Call-Limit:
/// 32/40` ([`HeaderFamily::Shopify`](crate::headers::HeaderFamily::Shopify)).
pub fn shopify() -> Limits {
    Limits::new(fixed(
        Quota::per_second(SHOPIFY_LEAK_PER_SECOND).and_then(|q| q.with_burst(SHOPIFY_BUCKET)),
    ))
}

/// The smallest Salesforce daily allowance the docs name (before per-licence additions).
const SALESFORCE_SMALLEST_DAILY: u32 = 15_000;

/// Every preset by a stable name, with default arguments where a preset takes some
/// (Salesforce at its smallest published allowance, 15,000 a day).
///
/// Presets without a quota (Mailchimp, SendGrid, Segment: concurrency only or no limit) are
/// included; check [`Limits::quotas`] before reading a rate from one.
///
/// ```
/// use tower_throttle::presets;
///
/// for (name, limits) in presets::all() {
///     for quota in limits.quotas() {
///         assert!(quota.rate_per_second() > 0.0, "{name}");
///     }
/// }
/// ```
pub fn all() -> Vec<(&'static str, Limits)> {
    vec![
        ("customerio_track", customerio_track()),
        ("customerio_transactional", customerio_transactional()),
        ("customerio_broadcasts", customerio_broadcasts()),
        ("hubspot", hubspot()),
        (
            "hubspot_professional",
            hubspot_tier(HubSpotTier::Professional),
        ),
        ("hubspot_enterprise", hubspot_tier(HubSpotTier::Enterprise)),
        (
            "hubspot_two_increases",
            fixed_limits(hubspot_with_increases(HubSpotTier::Enterprise, 2)),
        ),
        (
            "salesforce",
            fixed_limits(salesforce(SALESFORCE_SMALLEST_DAILY)),
        ),
        ("mailchimp", mailchimp()),
        ("ga4", ga4()),
        ("klaviyo_xs", klaviyo(KlaviyoTier::Xs)),
        ("klaviyo_s", klaviyo(KlaviyoTier::S)),
        ("klaviyo_m", klaviyo(KlaviyoTier::M)),
        ("klaviyo_l", klaviyo(KlaviyoTier::L)),
        ("klaviyo_xl", klaviyo(KlaviyoTier::Xl)),
        ("braze_users_track", braze_users_track()),
        ("braze_default", braze_default()),
        ("intercom", intercom()),
        ("sendgrid", sendgrid()),
        ("iterable_bulk_track", iterable_bulk_track()),
        ("segment", segment()),
        ("shopify", shopify()),
    ]
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
            (DAY, 125_000, 125_001)
        );
        assert_eq!(limits.concurrency(), None);
        assert_eq!(hubspot_with(0, 1), Err(ConfigError::ZeroRate));
        assert_eq!(hubspot_with(1, 0), Err(ConfigError::ZeroRate));
    }

    /// The figures of HubSpot's usage guidelines as read on 2026-12-01.
    #[test]
    fn hubspot_tiers_carry_the_published_figures() {
        let cases = [
            (HubSpotTier::FreeOrStarter, 0, 100, 250_000),
            (HubSpotTier::Professional, 0, 190, 625_000),
            (HubSpotTier::Enterprise, 0, 190, 1_000_000),
            (HubSpotTier::FreeOrStarter, 1, 250, 1_250_000),
            (HubSpotTier::Professional, 2, 250, 2_625_000),
            (HubSpotTier::Enterprise, 2, 250, 3_000_000),
        ];
        for (tier, increases, per_ten_seconds, per_day) in cases {
            let got = hubspot_with_increases(tier, increases).unwrap();
            assert_eq!(
                got,
                hubspot_with(per_ten_seconds, per_day).unwrap(),
                "{tier:?}"
            );
            let ten_s = got.quotas()[0];
            assert_eq!((ten_s.period(), ten_s.burst()), (TEN_S, 1));
        }
        assert_eq!(
            hubspot_tier(HubSpotTier::Enterprise),
            hubspot_with(190, 1_000_000).unwrap()
        );
        assert_eq!(hubspot(), hubspot_tier(HubSpotTier::FreeOrStarter));
        assert!(matches!(
            hubspot_with_increases(HubSpotTier::Enterprise, 3),
            Err(ConfigError::OutOfRange {
                name: "increases",
                ..
            })
        ));
    }

    #[test]
    fn hubspot_policy_reads_daily_and_secondly_bodies() {
        let daily = br#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c033cdaa-2c40-4a64-ae48-b4cec88dad24","policyName":"DAILY","requestId":"3d3e35b7"}"#;
        assert_eq!(hubspot_policy(daily), Some(HubSpotPolicy::Daily));
        let secondly =
            br#"{"status":"error","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
        assert_eq!(hubspot_policy(secondly), Some(HubSpotPolicy::Secondly));
        assert_eq!(
            hubspot_policy(br#"{"policyName":"secondly"}"#),
            Some(HubSpotPolicy::Secondly)
        );
        assert_eq!(
            hubspot_policy(br#"{"policyName":"MONTHLY"}"#),
            Some(HubSpotPolicy::Other)
        );
        let deep = "[".repeat(100_000);
        let hostile: &[&[u8]] = &[
            b"",
            b"null",
            b"[]",
            b"\"DAILY\"",
            br#"{"policyName":7}"#,
            br#"{"policyName":null}"#,
            br#"{"message":"You have reached your daily limit."}"#,
            br#"{"policyName":"DAILY""#,
            b"\xff\xfe",
            deep.as_bytes(),
        ];
        for body in hostile {
            assert_eq!(
                hubspot_policy(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn hubspot_daily_exhaustion_needs_the_whole_pair_at_zero() {
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            hubspot_daily_exhausted(&h)
        };
        let daily = "x-hubspot-ratelimit-daily";
        let left = "x-hubspot-ratelimit-daily-remaining";
        assert!(with(&[(daily, "250000"), (left, "0")]));
        assert!(!with(&[(daily, "250000"), (left, "1")]));
        // OAuth apps get no daily pair; a half pair or garbage says nothing.
        assert!(!with(&[]));
        assert!(!with(&[(left, "0")]));
        assert!(!with(&[(daily, "250000"), (left, "-0")]));
        assert!(!with(&[(daily, "x"), (left, "0")]));
        // The secondly pair at zero is a secondly 429, not a daily one.
        assert!(!with(&[
            ("x-hubspot-ratelimit-secondly", "19"),
            ("x-hubspot-ratelimit-secondly-remaining", "0"),
            (daily, "250000"),
            (left, "12"),
        ]));
    }

    #[test]
    fn hubspot_daily_wait_probes_quarter_hours_when_the_zone_is_unknown_or_stale() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let hour: u64 = 3600;
        let h: i32 = 3600;
        // 22:13:20.5 UTC: the next quarter hour is 22:15.
        let t = 1_700_000_000;
        assert_eq!(
            hubspot_daily_wait(at(t, 500_000_000), None),
            Duration::from_millis(99_500)
        );
        // On a quarter hour exactly: the next one, never zero.
        assert_eq!(
            hubspot_daily_wait(at(22 * hour, 0), None),
            Duration::from_secs(900)
        );
        // Known zone, far from midnight: the local midnight.
        assert_eq!(
            hubspot_daily_wait(at(t, 0), Some(-5 * h)),
            hubspot_daily_reset_in(at(t, 0), -5 * h)
        );
        // UTC+2 is at 00:13:20 local: the reset should have happened 13 minutes ago, so the
        // zone is stale (daylight saving): probe at 22:15 UTC, not in 23 h 46 min.
        assert_eq!(
            hubspot_daily_wait(at(t, 0), Some(2 * h)),
            Duration::from_secs(100)
        );
        // Just past the grace: the whole day again.
        assert_eq!(
            hubspot_daily_wait(at(2 * hour, 0), Some(0)),
            Duration::from_secs(22 * hour)
        );
        // Hostile clocks: never zero, never more than a day, never a panic.
        for now in [UNIX_EPOCH, at(u64::MAX / 4, 999_999_999)] {
            for offset in [None, Some(i32::MIN), Some(i32::MAX), Some(0)] {
                let wait = hubspot_daily_wait(now, offset);
                assert!(
                    !wait.is_zero() && wait <= DAY,
                    "{now:?} {offset:?}: {wait:?}"
                );
            }
        }
    }

    #[test]
    fn hubspot_daily_reset_is_the_next_local_midnight() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let hour = 3600;
        // 2023-11-14 22:13:20 UTC.
        let t = 1_700_000_000;
        let into_day = t % 86_400;
        assert_eq!(
            hubspot_daily_reset_in(at(t, 0), 0),
            Duration::from_secs(86_400 - into_day)
        );
        // UTC-5: local 17:13:20, so 6 h 46 min 40 s to go.
        assert_eq!(
            hubspot_daily_reset_in(at(t, 0), -5 * hour),
            Duration::from_secs(6 * 3600 + 46 * 60 + 40)
        );
        // UTC+2: local 00:13:20 next day, nearly a whole day to go.
        assert_eq!(
            hubspot_daily_reset_in(at(t, 0), 2 * hour),
            Duration::from_secs(86_400 - 13 * 60 - 20)
        );
        // Exactly midnight: the next one, never zero; fractions of a second are kept.
        assert_eq!(hubspot_daily_reset_in(at(86_400, 0), 0), DAY);
        assert_eq!(
            hubspot_daily_reset_in(at(86_399, 250_000_000), 0),
            Duration::from_millis(750)
        );
        // Hostile offsets and clocks: clamped, never a panic.
        assert_eq!(
            hubspot_daily_reset_in(at(t, 0), i32::MAX),
            hubspot_daily_reset_in(at(t, 0), 14 * hour)
        );
        assert_eq!(
            hubspot_daily_reset_in(at(t, 0), i32::MIN),
            hubspot_daily_reset_in(at(t, 0), -14 * hour)
        );
        assert_eq!(hubspot_daily_reset_in(UNIX_EPOCH, 0), DAY);
        if let Some(before) = UNIX_EPOCH.checked_sub(Duration::from_secs(5)) {
            assert_eq!(hubspot_daily_reset_in(before, 0), DAY);
        }
    }

    #[test]
    fn daily_reset_does_not_overflow_on_a_far_future_clock() {
        for secs in [u64::MAX / 2, i64::MAX as u64, u64::MAX] {
            let Some(far) = UNIX_EPOCH.checked_add(Duration::new(secs, 999_999_999)) else {
                continue;
            };
            for offset in [i32::MIN, -1, 0, 1, i32::MAX] {
                let left = hubspot_daily_reset_in(far, offset);
                assert!(!left.is_zero() && left <= DAY, "{secs} {offset}: {left:?}");
            }
        }
    }

    #[test]
    fn klaviyo_tiers_enforce_both_windows() {
        let cases = [
            (KlaviyoTier::Xs, 1, 15),
            (KlaviyoTier::S, 3, 60),
            (KlaviyoTier::M, 10, 150),
            (KlaviyoTier::L, 75, 700),
            (KlaviyoTier::Xl, 350, 3_500),
        ];
        for (tier, per_second, per_minute) in cases {
            let limits = klaviyo(tier);
            assert_eq!(
                limits.quotas(),
                &[
                    Quota::per_second(per_second).unwrap(),
                    Quota::per_minute(per_minute).unwrap()
                ],
                "{tier:?}"
            );
        }
        // Greedy callers for two minutes on XS: never more than 1 in a second or 15 in a
        // minute, whatever the semantics of the second window.
        let bucket = LocalBucket::new(klaviyo(KlaviyoTier::Xs));
        let start = Instant::now();
        let mut admitted = Vec::new();
        loop {
            let at = bucket.try_reserve(start, None).unwrap().at() - start;
            if at >= Duration::from_secs(120) {
                break;
            }
            admitted.push(at);
        }
        for (i, &t) in admitted.iter().enumerate() {
            let in_window = |w: Duration| admitted[i..].iter().take_while(|&&u| u < t + w).count();
            assert!(in_window(Duration::from_secs(1)) <= 1, "{t:?}");
            assert!(in_window(Duration::from_secs(60)) <= 15, "{t:?}");
        }
        assert!(admitted.len() >= 29, "{}", admitted.len());
    }

    #[test]
    fn braze_intercom_iterable_and_the_unlimited_presets() {
        let users_track = braze_users_track();
        let q = users_track.quotas()[0];
        assert_eq!(
            (q.count(), q.period(), q.burst()),
            (3_000, Duration::from_secs(3), 1)
        );
        assert_eq!(q.interval(), Duration::from_millis(1));
        assert_eq!(
            braze_default().quotas(),
            &[Quota::per_hour(250_000).unwrap()]
        );

        let q = intercom().quotas()[0];
        assert_eq!((q.count(), q.period()), (1_666, TEN_S));
        // 1,000 a minute is 166 per 10 s, as Intercom says; six windows never exceed it.
        assert_eq!(intercom_with(1_000).unwrap().quotas()[0].count(), 166);
        assert_eq!(intercom_with(5), Err(ConfigError::ZeroRate));

        assert_eq!(
            iterable_bulk_track().quotas(),
            &[Quota::per_second(10).unwrap()]
        );
        assert_eq!(iterable_with(0), Err(ConfigError::ZeroRate));

        for unlimited in [sendgrid(), segment()] {
            assert!(unlimited.quotas().is_empty());
            assert_eq!(unlimited.concurrency(), None);
        }
        assert_eq!(
            sendgrid_with(600, Duration::from_secs(60))
                .unwrap()
                .quotas()[0]
                .count(),
            600
        );
        assert_eq!(SEGMENT_MAX_BATCH_BYTES / SEGMENT_MAX_REQUEST_BYTES, 15);

        let q = shopify().quotas()[0];
        assert_eq!((q.burst(), q.interval()), (40, Duration::from_millis(500)));
    }

    #[test]
    fn all_lists_every_preset_once_by_a_unique_name() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(all.len(), 22);
        for (name, limits) in &all {
            for q in limits.quotas() {
                assert!(
                    q.rate_per_second().is_finite() && q.rate_per_second() > 0.0,
                    "{name}"
                );
            }
        }
        let find = |n: &str| {
            all.iter()
                .find(|(name, _)| *name == n)
                .map(|(_, l)| l.clone())
        };
        assert_eq!(find("klaviyo_l"), Some(klaviyo(KlaviyoTier::L)));
        assert_eq!(find("salesforce"), Some(salesforce(15_000).unwrap()));
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
