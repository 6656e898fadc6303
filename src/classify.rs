//! Deciding what a response or an error means for a retry: success, rate limited, worth
//! retrying, or final.
//!
//! [`Classify`] is the small trait the retry and adaptive layers call; [`HttpClassifier`] is the
//! default implementation, with per-status overrides and custom rules for APIs that throttle
//! with something other than 429. Unlike tower-http's classifiers, the verdict carries the
//! server's `Retry-After`, because pacing, not just retrying, is the point of this crate.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{Response, StatusCode};
//! use tower_throttle::classify::{Classify, HttpClassifier, Outcome};
//!
//! let classifier = HttpClassifier::new();
//! let response = Response::builder().status(429).header("retry-after", "3").body(()).unwrap();
//! assert_eq!(
//!     classifier.classify(&response, SystemTime::now()),
//!     Outcome::RateLimited { retry_after: Some(Duration::from_secs(3)) }
//! );
//!
//! let timeout = tower::timeout::error::Elapsed::new();
//! assert_eq!(classifier.classify_error(&timeout), Outcome::Transient);
//! ```

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode};

use crate::headers;
use crate::ThrottleError;

/// What a response or error means for the request that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The request succeeded (2xx, 3xx): nothing to retry.
    Success,
    /// The server asked us to slow down. `retry_after` is its `Retry-After`, already capped;
    /// `None` when it gave none (back off instead).
    RateLimited {
        /// How long the server asked us to wait.
        retry_after: Option<Duration>,
    },
    /// A failure that may pass on its own (a 503, a timeout, a reset connection): retry with
    /// backoff, without treating it as a rate limit.
    Transient,
    /// A failure retrying cannot fix (a 400, a 404, local load shedding): return it at once.
    Permanent,
}

impl Outcome {
    /// Whether a retry could help: [`Outcome::RateLimited`] or [`Outcome::Transient`].
    pub const fn is_retryable(&self) -> bool {
        matches!(self, Outcome::RateLimited { .. } | Outcome::Transient)
    }
}

/// Classifies responses and errors. Implement it to plug your own rules into the retry and
/// adaptive layers; [`HttpClassifier`] is the default.
///
/// `Clone` because tower's retry machinery clones its policy per request; keep clones cheap
/// (an `Arc` inside, as `HttpClassifier` does).
pub trait Classify: Clone {
    /// Classifies a response from its status and headers. `now` is only used to measure a
    /// `Retry-After` HTTP-date when the response has no valid `Date` header.
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Outcome;

    /// Classifies an error returned instead of a response (typically a `tower::BoxError`,
    /// passed as `&*err`).
    fn classify_error(&self, err: &(dyn Error + 'static)) -> Outcome;

    /// Classifies a whole response, whatever its body type.
    fn classify<B>(&self, response: &Response<B>, now: SystemTime) -> Outcome {
        self.classify_response(response.status(), response.headers(), now)
    }

    /// For a response classified [`Outcome::Transient`]: how long the server asked us to wait
    /// before sending again, if it said (a 503 with `Retry-After`, which RFC 9110 §10.2.3
    /// allows). The retry policy waits that long instead of backing off and holds the shared
    /// bucket until then, without counting it as a rate limit. The default: `None`.
    fn transient_wait(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Duration> {
        let _ = (status, headers, now);
        None
    }

    /// For a response classified [`Outcome::RateLimited`]: how long until the quota it hit is
    /// back, when that is a long allowance (a daily one) rather than a short window. `body`
    /// is the response body when the retry policy could see it without waiting (a buffered
    /// body of at most [`MAX_BODY_INSPECTED`] bytes; see [`RetryPolicy`](crate::RetryPolicy)).
    ///
    /// The retry policy then holds the shared bucket until then and does not retry before
    /// it, uncapped by the backoff's `max_delay` and without spending an attempt (a retry
    /// sooner would only be refused again), or, when that is past the request's deadline,
    /// ends the request at once with [`ThrottleError::QuotaExhausted`]. A wait under a
    /// second is treated as an ordinary rate limit. The default: `None`.
    fn quota_reset(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Duration> {
        let _ = (status, headers, body, now);
        None
    }

    /// Whether [`quota_reset`](Classify::quota_reset) may need the body of a response with
    /// this status. A streaming body is read for it only where this says so, by an
    /// [`InspectBodyLayer`](crate::retry::InspectBodyLayer) built with
    /// [`for_classifier`](crate::retry::InspectBodyLayer::for_classifier) (as
    /// [`ThrottleBuilder::inspect_bodies`](crate::ThrottleBuilder::inspect_bodies) does), so
    /// a classifier that never reads bodies costs streaming responses nothing. The default:
    /// 429s.
    fn reads_body(&self, status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
    }
}

/// The largest response body the retry policy hands to [`Classify::quota_reset`]: a
/// vendor's JSON error fits in far less, and anything larger is not parsed.
pub const MAX_BODY_INSPECTED: usize = 16 * 1024;

/// A rule consulted before the built-in table.
type CustomRule = dyn Fn(StatusCode, &HeaderMap) -> Option<Outcome> + Send + Sync;

/// Default cap on a `Retry-After`, matching the default backoff's `max_delay`.
const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Errors nested deeper than this are not inspected: a guard against a `source()` chain that
/// loops back on itself.
const MAX_SOURCE_DEPTH: usize = 64;

/// The default [`Classify`] implementation for HTTP.
///
/// Responses, checked in this order (the first rule that answers wins):
///
/// 1. custom rules added with [`HttpClassifier::custom`], in the order added;
/// 2. per-status overrides added with [`HttpClassifier::status`];
/// 3. the built-in table:
///
/// | status                          | outcome                                     |
/// |---------------------------------|---------------------------------------------|
/// | 2xx, 3xx                        | `Success`                                   |
/// | 429                             | `RateLimited`, with the server's wait if given (below) |
/// | 403 whose headers say the quota is spent (below) | `RateLimited`, likewise    |
/// | 408, 500, 502, 503, 504         | `Transient` (a 503's `Retry-After` is honoured: [`Classify::transient_wait`]) |
/// | any other status (incl. 1xx, 501, 505) | `Permanent`                          |
///
/// **The server's wait.** `Retry-After` (seconds or an HTTP-date) first; failing that, a
/// rate-limit header that reports nothing remaining together with a reset: the IETF
/// `RateLimit: "default";r=0;t=45` (or its earlier `RateLimit-Remaining` / `-Reset` fields) and
/// the de-facto `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (seconds to go, or a Unix
/// timestamp, as [`rate_limit_info`](crate::headers::rate_limit_info) tells apart). Without
/// either, `retry_after` is `None` and the policy backs off.
///
/// **403 as a rate limit** (on by default, [`HttpClassifier::rate_limited_403`] turns it off):
/// some APIs refuse a spent quota with 403 rather than 429. A 403 is read as a rate limit only
/// when its headers say so unambiguously: a rate-limit header family reporting 0 remaining
/// (GitHub's primary limit: `X-RateLimit-Remaining: 0` with an epoch `X-RateLimit-Reset`), a
/// `Retry-After` (GitHub's secondary limit), or Salesforce's `Sforce-Limit-Info:
/// api-usage=N/M` with `N >= M` (the header that accompanies `REQUEST_LIMIT_EXCEEDED`; the
/// error code itself is in the body, which a classifier of status and headers does not read).
/// Any other 403 (a missing permission) stays `Permanent`.
///
/// 408 is `Transient` because the server timed out waiting for our request, which says nothing
/// about the request itself, and RFC 9110 §15.5.9 lets the client repeat it. 1xx cannot be a
/// final response, so receiving one as such is a protocol error: `Permanent`.
///
/// A `RateLimited` verdict from any rule gets the response's `Retry-After` when the rule left
/// `retry_after` as `None`, and every `retry_after` is capped at
/// [`retry_after_cap`](HttpClassifier::retry_after_cap) (default 60 s), so an override such as
/// `.status(StatusCode::FORBIDDEN, Outcome::RateLimited { retry_after: None })` still honours the
/// server's wait.
///
/// Errors: the `source()` chain is walked (and the inner error of an `io::Error`), and the first
/// error recognised decides:
///
/// * this crate's [`ThrottleError`] (queue full, wait too long, ...): `Permanent`, because local
///   load shedding must not turn into retries;
/// * `tower::timeout::error::Elapsed`, `tokio::time::error::Elapsed`: `Transient`;
/// * `hyper::Error`: timeouts, closed channels, incomplete messages and canceled (never sent)
///   requests are `Transient`; parse and user errors `Permanent`; anything else defers to its
///   source;
/// * with the `mock` feature (which brings `hyper-util`), a legacy client error that
///   `is_connect()`: `Transient`. Without it the same error is still recognised through the
///   `io::Error` in its chain;
/// * with the `reqwest` feature, a `reqwest::Error` that `is_timeout()` or `is_connect()`:
///   `Transient`; anything else defers to its source;
/// * `std::io::Error` of kind `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`,
///   `TimedOut`, `BrokenPipe`, `UnexpectedEof`, `NotConnected` or `Interrupted`: `Transient`.
///
/// An error nothing recognises is `Permanent` by default (retrying what we do not understand
/// could repeat a non-idempotent side effect); change it with
/// [`HttpClassifier::unknown_errors`].
///
/// Cloning is one reference-count increment.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tower_throttle::classify::{Classify, HttpClassifier, Outcome};
///
/// let classifier = HttpClassifier::new()
///     // This API throttles with 403...
///     .status(StatusCode::FORBIDDEN, Outcome::RateLimited { retry_after: None })
///     // ...and says so in a header even on a 400.
///     .custom(|status, headers| {
///         (status == StatusCode::BAD_REQUEST && headers.contains_key("x-throttled"))
///             .then_some(Outcome::RateLimited { retry_after: None })
///     })
///     .retry_after_cap(Duration::from_secs(30));
///
/// let now = SystemTime::now();
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "120".parse().unwrap());
/// assert_eq!(
///     classifier.classify_response(StatusCode::FORBIDDEN, &headers, now),
///     Outcome::RateLimited { retry_after: Some(Duration::from_secs(30)) }
/// );
/// assert_eq!(
///     classifier.classify_response(StatusCode::NOT_FOUND, &headers, now),
///     Outcome::Permanent
/// );
/// ```
#[derive(Clone)]
pub struct HttpClassifier {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    retry_after_cap: Duration,
    statuses: Vec<(StatusCode, Outcome)>,
    custom: Vec<Arc<CustomRule>>,
    unknown_errors: Outcome,
    rate_limited_403: bool,
    hubspot_daily: bool,
    hubspot_utc_offset: Option<i32>,
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClassifier")
            .field("retry_after_cap", &self.inner.retry_after_cap)
            .field("statuses", &self.inner.statuses)
            .field("custom_rules", &self.inner.custom.len())
            .field("unknown_errors", &self.inner.unknown_errors)
            .field("rate_limited_403", &self.inner.rate_limited_403)
            .field("hubspot_daily", &self.inner.hubspot_daily)
            .field("hubspot_utc_offset", &self.inner.hubspot_utc_offset)
            .finish()
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// The built-in rules, a 60 s `Retry-After` cap, unknown errors `Permanent`.
    pub fn new() -> Self {
        HttpClassifier {
            inner: Arc::new(Inner {
                retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
                statuses: Vec::new(),
                custom: Vec::new(),
                unknown_errors: Outcome::Permanent,
                rate_limited_403: true,
                hubspot_daily: true,
                hubspot_utc_offset: None,
            }),
        }
    }

    /// Classifies `status` as `outcome`, before the built-in table. Setting the same status
    /// twice keeps the last.
    pub fn status(self, status: StatusCode, outcome: Outcome) -> Self {
        self.with(
            |c| match c.statuses.iter_mut().find(|(s, _)| *s == status) {
                Some(entry) => entry.1 = outcome,
                None => c.statuses.push((status, outcome)),
            },
        )
    }

    /// Changes the shared configuration, copying it first if another clone holds it.
    fn with(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// Adds a rule consulted before status overrides and the built-in table; `None` passes the
    /// response on. Rules run in the order they were added.
    pub fn custom<F>(self, rule: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> Option<Outcome> + Send + Sync + 'static,
    {
        self.with(|c| c.custom.push(Arc::new(rule)))
    }

    /// The longest `Retry-After` reported (default 60 s); longer or hostile values are capped.
    pub fn retry_after_cap(self, cap: Duration) -> Self {
        self.with(|c| c.retry_after_cap = cap)
    }

    /// The outcome for errors no rule recognises (default [`Outcome::Permanent`]).
    pub fn unknown_errors(self, outcome: Outcome) -> Self {
        self.with(|c| c.unknown_errors = outcome)
    }

    /// Whether a 403 whose headers say the quota is spent counts as a rate limit (default
    /// `true`; see the table above for exactly which headers).
    pub fn rate_limited_403(self, enabled: bool) -> Self {
        self.with(|c| c.rate_limited_403 = enabled)
    }

    /// Whether a HubSpot 429 for the *daily* allowance holds until the daily reset (default
    /// `true`; see [`Classify::quota_reset`]). It is recognised by its body's `policyName`
    /// (`"DAILY"`, [`hubspot_policy`](crate::presets::hubspot_policy)) when the body is seen,
    /// otherwise by `X-HubSpot-RateLimit-Daily-Remaining: 0` (sent to private apps only). A
    /// body naming another policy (`SECONDLY`, `TEN_SECONDLY_ROLLING`) is an ordinary 429.
    /// Other APIs do not send that body or header, so leaving it on costs them nothing.
    pub fn hubspot_daily(self, enabled: bool) -> Self {
        self.with(|c| c.hubspot_daily = enabled)
    }

    /// The HubSpot account's time zone, as seconds ahead of UTC (negative behind it), for
    /// the daily reset; unset, a daily 429 waits only until the next quarter hour and probes
    /// again (see [`hubspot_daily_wait`](crate::presets::hubspot_daily_wait) for why).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use http::{HeaderMap, StatusCode};
    /// use tower_throttle::classify::{Classify, HttpClassifier};
    ///
    /// let classifier = HttpClassifier::new().hubspot_utc_offset(-5 * 3600); // New York, winter
    /// let body = br#"{"status":"error","errorType":"RATE_LIMIT","policyName":"DAILY"}"#;
    /// let now = UNIX_EPOCH + Duration::from_secs(22 * 3600); // 22:00 UTC, 17:00 there
    /// let wait = classifier.quota_reset(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), Some(body), now);
    /// assert_eq!(wait, Some(Duration::from_secs(7 * 3600)));
    /// ```
    pub fn hubspot_utc_offset(self, utc_offset_secs: i32) -> Self {
        self.with(|c| c.hubspot_utc_offset = Some(utc_offset_secs))
    }

    /// The current `Retry-After` cap.
    pub fn get_retry_after_cap(&self) -> Duration {
        self.inner.retry_after_cap
    }

    fn builtin(&self, status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Outcome {
        match status.as_u16() {
            200..=399 => Outcome::Success,
            429 => Outcome::RateLimited { retry_after: None },
            403 if self.inner.rate_limited_403 && quota_spent(headers, now) => {
                Outcome::RateLimited { retry_after: None }
            }
            408 | 500 | 502 | 503 | 504 => Outcome::Transient,
            _ => Outcome::Permanent,
        }
    }
}

/// Whether a 403's headers say it refused a spent quota rather than a missing permission.
fn quota_spent(headers: &HeaderMap, now: SystemTime) -> bool {
    headers.contains_key(http::header::RETRY_AFTER)
        || headers::rate_limit_info(headers, now).is_some_and(|i| i.remaining == Some(0))
        || headers::salesforce_api_usage(headers).is_some_and(|u| u.remaining == 0)
}

impl Classify for HttpClassifier {
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Outcome {
        let inner = &*self.inner;
        let outcome = inner
            .custom
            .iter()
            .find_map(|rule| rule(status, headers))
            .or_else(|| {
                inner
                    .statuses
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map(|(_, o)| *o)
            })
            .unwrap_or_else(|| self.builtin(status, headers, now));
        match outcome {
            Outcome::RateLimited { retry_after } => {
                let cap = inner.retry_after_cap;
                Outcome::RateLimited {
                    retry_after: retry_after
                        .map(|d| d.min(cap))
                        .or_else(|| headers::retry_after(headers, now, cap))
                        .or_else(|| headers::exhausted_reset(headers, now).map(|d| d.min(cap))),
                }
            }
            other => other,
        }
    }

    /// A HubSpot daily 429 (see [`HttpClassifier::hubspot_daily`]): until the daily reset,
    /// measured from the server's `Date` when it sent one.
    fn quota_reset(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Duration> {
        use crate::presets::{self, HubSpotPolicy};
        if !self.inner.hubspot_daily || status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let daily = match body.and_then(presets::hubspot_policy) {
            Some(policy) => policy == HubSpotPolicy::Daily,
            None => presets::hubspot_daily_exhausted(headers),
        };
        daily.then(|| {
            presets::hubspot_daily_wait(
                headers::server_now(headers, now),
                self.inner.hubspot_utc_offset,
            )
        })
    }

    /// A 429 while [`hubspot_daily`](HttpClassifier::hubspot_daily) is on: the only body
    /// [`quota_reset`](Classify::quota_reset) reads.
    fn reads_body(&self, status: StatusCode) -> bool {
        self.inner.hubspot_daily && status == StatusCode::TOO_MANY_REQUESTS
    }

    /// A transient response's `Retry-After`, capped like a rate limit's.
    fn transient_wait(
        &self,
        _status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Duration> {
        headers::retry_after(headers, now, self.inner.retry_after_cap)
    }

    fn classify_error(&self, err: &(dyn Error + 'static)) -> Outcome {
        let mut current = Some(err);
        for _ in 0..MAX_SOURCE_DEPTH {
            let Some(e) = current else { break };
            if let Some(outcome) = classify_one(e) {
                return outcome;
            }
            current = match e.downcast_ref::<io::Error>() {
                // `io::Error::source` skips the wrapped error itself and returns *its* source,
                // so step into the wrapped error explicitly.
                Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
                None => e.source(),
            };
        }
        self.inner.unknown_errors
    }
}

/// Whether `err` leaves the request's outcome unknown: the request may have reached the
/// server and been applied, but its answer was lost (a timeout, a connection reset or closed
/// mid-exchange). Errors that prove the request never left (a refused connection, a failed
/// connect, a local refusal by this crate) and errors already saying so
/// ([`ThrottleError::OutcomeUnknown`]) are told apart here, once, for the retry policy and
/// the batch layer.
pub(crate) fn outcome_unknown(err: &(dyn Error + 'static)) -> bool {
    let mut current = Some(err);
    for _ in 0..MAX_SOURCE_DEPTH {
        let Some(e) = current else { break };
        if let Some(t) = e.downcast_ref::<ThrottleError>() {
            return matches!(t, ThrottleError::OutcomeUnknown { .. });
        }
        if let Some(sent) = sent_one(e) {
            return sent;
        }
        current = match e.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// For one error of a chain: `Some(true)` when the request may have been applied, `Some(false)`
/// when it provably was not sent, `None` to look at its source.
fn sent_one(e: &(dyn Error + 'static)) -> Option<bool> {
    if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
        return Some(true);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        // Canceled: the connection was gone before the request was dispatched.
        if h.is_canceled() {
            return Some(false);
        }
        return Some(h.is_timeout() || h.is_closed() || h.is_incomplete_message());
    }
    #[cfg(feature = "mock")]
    if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
        if h.is_connect() {
            return Some(false);
        }
        return None;
    }
    #[cfg(feature = "reqwest")]
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        if r.is_connect() {
            return Some(false);
        }
        if r.is_timeout() {
            return Some(true);
        }
        return None;
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        use io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused | NotConnected | AddrNotAvailable => Some(false),
            ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe | UnexpectedEof
            | Interrupted => Some(true),
            _ => None,
        };
    }
    None
}

/// The verdict on one error of a chain, or `None` to look at its source.
fn classify_one(e: &(dyn Error + 'static)) -> Option<Outcome> {
    if e.is::<ThrottleError>() {
        return Some(Outcome::Permanent);
    }
    if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
        return Some(Outcome::Transient);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_timeout() || h.is_closed() || h.is_incomplete_message() || h.is_canceled() {
            return Some(Outcome::Transient);
        }
        if h.is_parse() || h.is_parse_status() || h.is_user() {
            return Some(Outcome::Permanent);
        }
        return None;
    }
    #[cfg(feature = "mock")]
    if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
        if h.is_connect() {
            return Some(Outcome::Transient);
        }
        return None;
    }
    #[cfg(feature = "reqwest")]
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        // reqwest's own timeout and connect errors do not always carry a recognisable source.
        if r.is_timeout() || r.is_connect() {
            return Some(Outcome::Transient);
        }
        return None;
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        use io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe
            | UnexpectedEof | NotConnected | Interrupted => Some(Outcome::Transient),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    type Pairs = &'static [(&'static str, &'static str)];

    fn headers(pairs: Pairs) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const LIMITED: Outcome = Outcome::RateLimited { retry_after: None };

    fn limited(secs: u64) -> Outcome {
        Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    #[test]
    fn default_status_table() {
        use Outcome::*;
        let cases: &[(u16, Outcome)] = &[
            (100, Permanent),
            (101, Permanent),
            (200, Success),
            (201, Success),
            (204, Success),
            (299, Success),
            (301, Success),
            (304, Success),
            (399, Success),
            (400, Permanent),
            (401, Permanent),
            (403, Permanent),
            (404, Permanent),
            (408, Transient),
            (409, Permanent),
            (422, Permanent),
            (429, LIMITED),
            (451, Permanent),
            (499, Permanent),
            (500, Transient),
            (501, Permanent),
            (502, Transient),
            (503, Transient),
            (504, Transient),
            (505, Permanent),
            (507, Permanent),
            (599, Permanent),
            (600, Permanent),
            (999, Permanent),
        ];
        let c = HttpClassifier::new();
        for (code, want) in cases {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(
                c.classify_response(status, &HeaderMap::new(), now()),
                *want,
                "status {code}"
            );
        }
    }

    #[test]
    fn rate_limited_reads_and_caps_retry_after() {
        let c = HttpClassifier::new();
        let cases: &[(Pairs, Outcome)] = &[
            (&[("retry-after", "5")], limited(5)),
            (&[("retry-after", "600")], limited(60)),
            (&[("retry-after", "99999999999999999999999")], limited(60)),
            (&[("retry-after", "-1")], LIMITED),
            (&[("retry-after", "soon")], LIMITED),
            (
                &[("retry-after", "Tue, 14 Nov 2023 22:13:40 GMT")],
                limited(20),
            ),
            (
                &[("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT")],
                limited(0),
            ),
            (&[], LIMITED),
        ];
        for (h, want) in cases {
            let got = c.classify_response(StatusCode::TOO_MANY_REQUESTS, &headers(h), now());
            assert_eq!(got, *want, "{h:?}");
        }
        let c = c.retry_after_cap(Duration::from_secs(2));
        assert_eq!(c.get_retry_after_cap(), Duration::from_secs(2));
        let got = c.classify_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "5")]),
            now(),
        );
        assert_eq!(got, limited(2));
    }

    #[test]
    fn transient_statuses_stay_transient_and_report_retry_after() {
        let c = HttpClassifier::new();
        let h = headers(&[("retry-after", "5")]);
        let got = c.classify_response(StatusCode::SERVICE_UNAVAILABLE, &h, now());
        assert_eq!(got, Outcome::Transient);
        assert_eq!(
            c.transient_wait(StatusCode::SERVICE_UNAVAILABLE, &h, now()),
            Some(Duration::from_secs(5))
        );
        let h = headers(&[("retry-after", "600")]);
        assert_eq!(
            c.transient_wait(StatusCode::SERVICE_UNAVAILABLE, &h, now()),
            Some(Duration::from_secs(60)),
            "capped like a rate limit's"
        );
        assert_eq!(
            c.transient_wait(StatusCode::BAD_GATEWAY, &HeaderMap::new(), now()),
            None
        );
    }

    #[test]
    fn a_429_with_only_a_reset_hint_gets_that_wait() {
        let c = HttpClassifier::new();
        let epoch = 1_700_000_000u64;
        let cases: Vec<(Vec<(&str, String)>, Outcome)> = vec![
            (
                vec![("ratelimit", r#""default";r=0;t=45"#.into())],
                limited(45),
            ),
            (
                vec![
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", (epoch + 30).to_string()),
                ],
                limited(30),
            ),
            (
                vec![
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", "12".into()),
                ],
                limited(12),
            ),
            (
                vec![
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", "7".into()),
                ],
                limited(7),
            ),
            // Capped like Retry-After.
            (
                vec![("ratelimit", r#""default";r=0;t=4500"#.into())],
                limited(60),
            ),
            // Quota left: the reset is not a wait.
            (vec![("ratelimit", r#""default";r=3;t=45"#.into())], LIMITED),
            // Retry-After wins over a reset.
            (
                vec![
                    ("retry-after", "2".into()),
                    ("ratelimit", r#""default";r=0;t=45"#.into()),
                ],
                limited(2),
            ),
        ];
        for (pairs, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                h.append(*k, v.parse().unwrap());
            }
            assert_eq!(
                c.classify_response(StatusCode::TOO_MANY_REQUESTS, &h, now()),
                want,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn a_403_with_a_spent_quota_is_rate_limited() {
        let c = HttpClassifier::new();
        let epoch = 1_700_000_000u64;
        let github = [
            ("x-ratelimit-limit", "5000".to_string()),
            ("x-ratelimit-remaining", "0".to_string()),
            ("x-ratelimit-reset", (epoch + 20).to_string()),
        ];
        let mut h = HeaderMap::new();
        for (k, v) in &github {
            h.append(*k, v.parse().unwrap());
        }
        assert_eq!(
            c.classify_response(StatusCode::FORBIDDEN, &h, now()),
            limited(20)
        );
        let cases: &[(Pairs, Outcome)] = &[
            (&[("sforce-limit-info", "api-usage=5000/5000")], LIMITED),
            (&[("sforce-limit-info", "api-usage=5001/5000")], LIMITED),
            (
                &[("sforce-limit-info", "api-usage=18/5000")],
                Outcome::Permanent,
            ),
            (&[("retry-after", "60")], limited(60)),
            (&[("x-ratelimit-remaining", "10")], Outcome::Permanent),
            (&[], Outcome::Permanent),
        ];
        for (h, want) in cases {
            assert_eq!(
                c.classify_response(StatusCode::FORBIDDEN, &headers(h), now()),
                *want,
                "{h:?}"
            );
        }
        let off = c.rate_limited_403(false);
        let h = headers(&[("sforce-limit-info", "api-usage=5000/5000")]);
        assert_eq!(
            off.classify_response(StatusCode::FORBIDDEN, &h, now()),
            Outcome::Permanent
        );
    }

    #[test]
    fn overrides_custom_then_status_then_defaults() {
        let c = HttpClassifier::new()
            .status(StatusCode::FORBIDDEN, LIMITED)
            .status(StatusCode::CONFLICT, Outcome::Permanent)
            .status(StatusCode::CONFLICT, LIMITED)
            .status(StatusCode::SERVICE_UNAVAILABLE, Outcome::Permanent)
            .custom(|status, h| {
                (status == StatusCode::FORBIDDEN && h.contains_key("x-not-throttled"))
                    .then_some(Outcome::Permanent)
            })
            .custom(|_, h| h.contains_key("x-custom-wait").then_some(limited(7)))
            .custom(|_, h| h.contains_key("x-custom-wait").then_some(Outcome::Success));
        let cases: &[(u16, Pairs, Outcome)] = &[
            (403, &[], LIMITED),
            (403, &[("retry-after", "4")], limited(4)),
            (403, &[("x-not-throttled", "1")], Outcome::Permanent),
            (409, &[("retry-after", "3")], limited(3)),
            (503, &[], Outcome::Permanent),
            (200, &[("x-custom-wait", "1")], limited(7)),
            (
                200,
                &[("x-custom-wait", "1"), ("retry-after", "1")],
                limited(7),
            ),
            (200, &[], Outcome::Success),
            (404, &[], Outcome::Permanent),
            (429, &[("retry-after", "9")], limited(9)),
        ];
        for (code, h, want) in cases {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(
                c.classify_response(status, &headers(h), now()),
                *want,
                "status {code} {h:?}"
            );
        }
    }

    #[test]
    fn rule_supplied_retry_after_is_capped() {
        let c = HttpClassifier::new()
            .retry_after_cap(Duration::from_secs(10))
            .custom(|_, _| {
                Some(Outcome::RateLimited {
                    retry_after: Some(Duration::MAX),
                })
            });
        assert_eq!(
            c.classify_response(StatusCode::OK, &HeaderMap::new(), now()),
            limited(10)
        );
    }

    #[test]
    fn clones_share_config_and_builders_do_not_leak_into_clones() {
        let a = HttpClassifier::new();
        let b = a.clone().status(StatusCode::OK, Outcome::Permanent);
        assert_eq!(
            a.classify_response(StatusCode::OK, &HeaderMap::new(), now()),
            Outcome::Success
        );
        assert_eq!(
            b.classify_response(StatusCode::OK, &HeaderMap::new(), now()),
            Outcome::Permanent
        );
        let dbg = format!("{b:?}");
        assert!(
            dbg.contains("HttpClassifier") && dbg.contains("custom_rules"),
            "{dbg}"
        );
    }

    #[test]
    fn classifier_is_send_sync_clone_debug() {
        fn check<T: Send + Sync + Clone + fmt::Debug + Classify + 'static>() {}
        check::<HttpClassifier>();
    }

    #[test]
    fn works_for_any_body_type() {
        let c = HttpClassifier::new();
        let r = Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(String::from("slow down"))
            .unwrap();
        assert_eq!(c.classify(&r, now()), limited(1));
        let r = Response::builder().status(204).body(()).unwrap();
        assert_eq!(c.classify(&r, now()), Outcome::Success);
    }

    /// An error with an arbitrary source, to build chains.
    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<dyn Error + Send + Sync>>);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn wrap(e: impl Into<tower::BoxError>) -> tower::BoxError {
        Box::new(Wrap("wrapper", Some(e.into())))
    }

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "test")
    }

    fn classify(e: &tower::BoxError) -> Outcome {
        HttpClassifier::new().classify_error(&**e)
    }

    #[test]
    fn error_table() {
        use io::ErrorKind::*;
        use Outcome::*;
        let throttle = || ThrottleError::QueueFull { capacity: 1 };
        let cases: Vec<(&str, tower::BoxError, Outcome)> = vec![
            (
                "tower elapsed",
                Box::new(tower::timeout::error::Elapsed::new()),
                Transient,
            ),
            ("refused", Box::new(io(ConnectionRefused)), Transient),
            ("reset", Box::new(io(ConnectionReset)), Transient),
            ("aborted", Box::new(io(ConnectionAborted)), Transient),
            ("timed out", Box::new(io(TimedOut)), Transient),
            ("broken pipe", Box::new(io(BrokenPipe)), Transient),
            ("eof", Box::new(io(UnexpectedEof)), Transient),
            ("not connected", Box::new(io(NotConnected)), Transient),
            ("interrupted", Box::new(io(Interrupted)), Transient),
            ("not found", Box::new(io(NotFound)), Permanent),
            ("permission", Box::new(io(PermissionDenied)), Permanent),
            ("invalid data", Box::new(io(InvalidData)), Permanent),
            ("io other", Box::new(io(Other)), Permanent),
            ("queue full", Box::new(throttle()), Permanent),
            (
                "wait too long",
                Box::new(ThrottleError::WaitTooLong {
                    wait: Duration::from_secs(2),
                    max_wait: Duration::from_secs(1),
                }),
                Permanent,
            ),
            (
                "not replayable",
                Box::new(ThrottleError::NotReplayable {
                    reason: "stream".into(),
                }),
                Permanent,
            ),
            (
                "bucket down",
                Box::new(ThrottleError::BucketUnavailable {
                    reason: "redis".into(),
                }),
                Permanent,
            ),
            ("string error", "something odd".into(), Permanent),
            ("unknown wrapper", wrap("inner odd"), Permanent),
            (
                "wrapped elapsed",
                wrap(tower::timeout::error::Elapsed::new()),
                Transient,
            ),
            ("wrapped reset", wrap(io(ConnectionReset)), Transient),
            (
                "doubly wrapped reset",
                wrap(wrap(io(ConnectionReset))),
                Transient,
            ),
            ("wrapped throttle", wrap(throttle()), Permanent),
            (
                "boxed source",
                Box::new(Wrap("x", Some(Box::new(io(ConnectionReset))))),
                Transient,
            ),
            // The outermost recognised error decides.
            (
                "io wrapping elapsed",
                Box::new(io::Error::other(tower::timeout::error::Elapsed::new())),
                Transient,
            ),
            (
                "io wrapping reset",
                Box::new(io::Error::other(io(ConnectionReset))),
                Transient,
            ),
            (
                "io wrapping throttle",
                Box::new(io::Error::new(TimedOut, throttle())),
                Transient,
            ),
            (
                "io other wrapping throttle",
                Box::new(io::Error::other(throttle())),
                Permanent,
            ),
            (
                "wrapped io wrapping reset",
                wrap(io::Error::other(wrap(io(ConnectionReset)))),
                Transient,
            ),
        ];
        for (name, err, want) in &cases {
            assert_eq!(classify(err), *want, "{name}");
        }
    }

    #[test]
    fn unknown_errors_are_configurable() {
        let c = HttpClassifier::new().unknown_errors(Outcome::Transient);
        let e: tower::BoxError = "mystery".into();
        assert_eq!(c.classify_error(&*e), Outcome::Transient);
        let e: tower::BoxError = Box::new(ThrottleError::QueueFull { capacity: 1 });
        assert_eq!(c.classify_error(&*e), Outcome::Permanent);
    }

    /// An error whose source is itself: the walk must stop.
    #[derive(Debug)]
    struct Loop;

    impl fmt::Display for Loop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("loop")
        }
    }

    impl Error for Loop {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&Loop)
        }
    }

    #[test]
    fn cyclic_source_chain_terminates() {
        assert_eq!(
            HttpClassifier::new().classify_error(&Loop),
            Outcome::Permanent
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_elapsed_is_transient() {
        let err = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
            .await
            .unwrap_err();
        let c = HttpClassifier::new();
        assert_eq!(c.classify_error(&err), Outcome::Transient);
        assert_eq!(c.classify_error(&*wrap(err)), Outcome::Transient);
    }

    /// Sends one request over an in-memory connection whose server side answers `reply` (if
    /// any) and hangs up, and returns hyper's error.
    async fn hyper_error(reply: &'static [u8]) -> hyper::Error {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(hyper_util::rt::TokioIo::new(client))
        .await
        .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(reply).await;
        });
        let req = http::Request::get("/")
            .body(http_body_util::Empty::new())
            .unwrap();
        sender.send_request(req).await.unwrap_err()
    }

    #[tokio::test]
    async fn hyper_errors() {
        let c = HttpClassifier::new();

        let err = hyper_error(b"").await;
        assert!(err.is_incomplete_message(), "{err:?}");
        assert_eq!(c.classify_error(&err), Outcome::Transient);
        assert_eq!(c.classify_error(&*wrap(err)), Outcome::Transient);

        let err = hyper_error(b"NOT HTTP AT ALL\r\n\r\n").await;
        assert!(err.is_parse(), "{err:?}");
        assert_eq!(c.classify_error(&err), Outcome::Permanent);
    }

    #[test]
    fn hubspot_daily_quota_is_read_from_the_body_then_the_headers() {
        use std::time::UNIX_EPOCH;
        let c = HttpClassifier::new();
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        let daily = br#"{"errorType":"RATE_LIMIT","policyName":"DAILY"}"#.as_slice();
        let secondly = br#"{"errorType":"RATE_LIMIT","policyName":"SECONDLY"}"#.as_slice();
        let mut spent = HeaderMap::new();
        spent.insert("x-hubspot-ratelimit-daily", "250000".parse().unwrap());
        spent.insert("x-hubspot-ratelimit-daily-remaining", "0".parse().unwrap());
        let none = HeaderMap::new();
        // 23:50 UTC by the caller's clock...
        let now = UNIX_EPOCH + Duration::from_secs(23 * 3600 + 50 * 60);
        let ten_min = Some(Duration::from_secs(600));
        assert_eq!(c.quota_reset(too_many, &none, Some(daily), now), ten_min);
        // ...but the server's `Date` wins: 23:55, five minutes to the quarter hour.
        let mut dated = HeaderMap::new();
        dated.insert(
            http::header::DATE,
            "Thu, 01 Jan 1970 23:55:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            c.quota_reset(too_many, &dated, Some(daily), now),
            Some(Duration::from_secs(300))
        );
        // The body names the policy; headers only decide when there is no readable body.
        assert_eq!(c.quota_reset(too_many, &spent, Some(secondly), now), None);
        assert_eq!(c.quota_reset(too_many, &spent, None, now), ten_min);
        assert_eq!(
            c.quota_reset(too_many, &spent, Some(b"<html>"), now),
            ten_min
        );
        assert_eq!(c.quota_reset(too_many, &none, None, now), None);
        // Only a 429, and only when enabled.
        assert_eq!(
            c.quota_reset(StatusCode::SERVICE_UNAVAILABLE, &spent, Some(daily), now),
            None
        );
        let off = c.clone().hubspot_daily(false);
        assert_eq!(off.quota_reset(too_many, &spent, Some(daily), now), None);
        // A known zone: UTC-5 is at 18:50, so midnight there is 5 h 10 min away.
        let ny = c.hubspot_utc_offset(-5 * 3600);
        assert_eq!(
            ny.quota_reset(too_many, &none, Some(daily), now),
            Some(Duration::from_secs(5 * 3600 + 600))
        );
    }
}
