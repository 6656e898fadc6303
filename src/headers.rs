//! Parsing of the headers servers use to say "slow down": `Retry-After` and the rate-limit
//! header families.
//!
//! Everything here is pure: no I/O, no clock reads. The caller passes `now`, so the same
//! function serves the tower shells (which read the clock once per response) and unit tests.
//!
//! Headers arrive from servers we do not control, so every parser here treats its input as
//! hostile: huge numbers, negative numbers, fractions, garbage, empty values, non-UTF-8 bytes and
//! repeated fields give `None` (or a value capped by the caller), never a panic or an overflow.
//!
//! The IETF fields are read leniently by default and strictly on request ([`ParseMode`]); see
//! [`rate_limit_info_with`] for the difference and why lenient is the default.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::HeaderMap;
//! use tower_throttle::headers::{rate_limit_info, retry_after, HeaderFamily};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "7".parse().unwrap());
//! headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
//!
//! let now = SystemTime::now();
//! assert_eq!(retry_after(&headers, now, Duration::from_secs(60)), Some(Duration::from_secs(7)));
//! let info = rate_limit_info(&headers, now).unwrap();
//! assert_eq!(info.source, HeaderFamily::XRateLimit);
//! assert_eq!(info.remaining, Some(0));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::{self, general_purpose::GeneralPurpose, DecodePaddingMode};
use base64::Engine as _;
use http::header::{HeaderMap, DATE, RETRY_AFTER};

/// RFC 9651 §4.2.7: parsers should accept missing padding and non-zero trailing bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How long to wait according to the response's `Retry-After` header, at most `cap`.
///
/// Both forms of RFC 9110 §10.2.3 are understood:
///
/// * delta-seconds (`Retry-After: 120`): digits only. A number too large for `u64` saturates and
///   is then capped; a sign, a fraction or anything else makes the value invalid.
/// * an HTTP-date in any of the three formats of RFC 9110 §5.6.7 (IMF-fixdate, RFC 850,
///   asctime). The date is measured against the response's own `Date` header when that is present
///   and valid, because both were written by the same (server) clock and our clock may be skewed;
///   otherwise against `now`. A date in the past gives `Some(Duration::ZERO)`.
///
/// `Retry-After` is a singleton field, but proxies sometimes duplicate it. The first field line
/// that parses wins and lines that do not parse are skipped; the same rule picks the `Date` line.
/// Returns `None` when no line parses.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use http::HeaderMap;
/// use tower_throttle::headers::retry_after;
///
/// let cap = Duration::from_secs(60);
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT".parse().unwrap());
/// assert_eq!(retry_after(&headers, now, cap), Some(Duration::from_secs(30)));
///
/// headers.insert("retry-after", "99999999999".parse().unwrap());
/// assert_eq!(retry_after(&headers, now, cap), Some(cap));
///
/// headers.insert("retry-after", "-1".parse().unwrap());
/// assert_eq!(retry_after(&headers, now, cap), None);
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let wait = headers
        .get_all(RETRY_AFTER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| parse_retry_after(v, headers, now))?;
    Some(wait.min(cap))
}

fn parse_retry_after(value: &str, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = trim_ows(value);
    if let Some(secs) = parse_digits_saturating(value) {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value, now)?;
    Some(
        at.duration_since(server_now(headers, now))
            .unwrap_or(Duration::ZERO),
    )
}

/// The server's clock when it answered (its `Date` header), or `now` without a valid one: a
/// wait the server names as an instant is measured against the clock that named it.
pub(crate) fn server_now(headers: &HeaderMap, now: SystemTime) -> SystemTime {
    headers
        .get_all(DATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| parse_http_date(trim_ows(v), now))
        .unwrap_or(now)
}

/// An HTTP-date in any of RFC 9110's three formats, with the two-digit year of the obsolete
/// RFC 850 format read by RFC 9110 §5.6.7: a year that would put the timestamp more than 50
/// years after `now` means the most recent past year with those two digits.
///
/// (`httpdate` alone pivots at 70, which from 2020 on reads `73` as 1973 where the rule says
/// 2073.)
pub(crate) fn parse_http_date(value: &str, now: SystemTime) -> Option<SystemTime> {
    match rfc850_with_full_year(value, now) {
        Some(imf) => httpdate::parse_http_date(&imf).ok(),
        None => httpdate::parse_http_date(value).ok(),
    }
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("Monday", "Mon"),
    ("Tuesday", "Tue"),
    ("Wednesday", "Wed"),
    ("Thursday", "Thu"),
    ("Friday", "Fri"),
    ("Saturday", "Sat"),
    ("Sunday", "Sun"),
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Rewrites `Sunday, 06-Nov-94 08:49:37 GMT` as the IMF-fixdate it means at `now`
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), or `None` when `value` is not in that form. The rewritten
/// date is then validated by `httpdate`, weekday included.
fn rfc850_with_full_year(value: &str, now: SystemTime) -> Option<String> {
    let (weekday, rest) = value.split_once(", ")?;
    let short = WEEKDAYS.iter().find(|(long, _)| *long == weekday)?.1;
    // `06-Nov-94 08:49:37 GMT`
    let b = rest.as_bytes();
    // ASCII first: the slices below are byte ranges, and hostile input may be any UTF-8.
    if !rest.is_ascii() || b.len() != 22 || b[2] != b'-' || b[6] != b'-' || !rest.ends_with(" GMT")
    {
        return None;
    }
    let (day, month, yy, time) = (&rest[0..2], &rest[3..6], &rest[7..9], &rest[10..18]);
    let mon = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let yy = u32::try_from(parse_digits(yy)?).ok()?;
    let day_n = u32::try_from(parse_digits(day)?).ok()?;
    let hms: Vec<u32> = time
        .split(':')
        .map(|p| parse_digits(p).and_then(|n| u32::try_from(n).ok()))
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    let year = rfc850_year(yy, (mon, day_n, h, m, sec), now);
    Some(format!("{short}, {day} {month} {year:04} {time} GMT"))
}

/// The full year of a two-digit `yy` at `now`: the latest year ending in `yy` whose timestamp
/// (`rest` = month, day, hour, minute, second) is at most 50 years after `now`.
fn rfc850_year(yy: u32, rest: (u32, u32, u32, u32, u32), now: SystemTime) -> u32 {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (now_year, now_rest) = civil(now_secs);
    let limit = (now_year + 50, now_rest);
    // Candidates from the century after now's downwards; the first not beyond the limit wins.
    let base = (now_year / 100 + 1) * 100 + yy;
    (0..3)
        .map(|i| base - 100 * i)
        .find(|&year| (year, rest) <= limit)
        .unwrap_or(base - 200)
}

/// Year and (month, day, hour, minute, second) of a Unix time in seconds (UTC, proleptic
/// Gregorian; Howard Hinnant's days-to-civil algorithm).
fn civil(secs: u64) -> (u32, (u32, u32, u32, u32, u32)) {
    let days = secs / 86_400;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, s) = (tod / 3_600, tod / 60 % 60, tod % 60);
    (
        u32::try_from(year).unwrap_or(u32::MAX - 200),
        (month as u32, day as u32, h as u32, m as u32, s as u32),
    )
}

/// How long until the quota comes back, when the response's rate-limit headers say none is
/// left: the `reset` of [`rate_limit_info`] when its `remaining` is 0 (the IETF
/// `RateLimit: "default";r=0;t=45`, or `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`
/// as seconds to go or a Unix timestamp). `None` when quota remains or no reset is given.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_throttle::headers::exhausted_reset;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""default";r=0;t=45"#.parse().unwrap());
/// assert_eq!(exhausted_reset(&headers, SystemTime::now()), Some(Duration::from_secs(45)));
/// ```
pub fn exhausted_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let info = rate_limit_info(headers, now)?;
    (info.remaining == Some(0)).then_some(info.reset).flatten()
}

/// Salesforce's `Sforce-Limit-Info: api-usage=N/M` (N calls used of M in the rolling 24 h),
/// as a [`Usage`] with `remaining = M - N` (0 when over). `None` when absent or malformed.
///
/// ```
/// use http::HeaderMap;
/// use tower_throttle::headers::{salesforce_api_usage, Usage};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("sforce-limit-info", "api-usage=18/5000".parse().unwrap());
/// assert_eq!(salesforce_api_usage(&headers), Some(Usage { limit: 5000, remaining: 4982 }));
/// ```
pub fn salesforce_api_usage(headers: &HeaderMap) -> Option<Usage> {
    let value = first_str(headers, "sforce-limit-info")?;
    let usage = value
        .split(',')
        .map(trim_ows)
        .find_map(|part| part.strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    let (used, limit) = (
        parse_digits(trim_ows(used))?,
        parse_digits(trim_ows(limit))?,
    );
    Some(Usage {
        limit,
        remaining: limit.saturating_sub(used),
    })
}

/// Which header family a [`RateLimitInfo`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderFamily {
    /// The IETF structured `RateLimit` field (draft-ietf-httpapi-ratelimit-headers), in either
    /// its dictionary form (`limit=100, remaining=50, reset=5`) or its current list form
    /// (`"default";r=50;t=5`), with `RateLimit-Policy` for the quota and window.
    RateLimit,
    /// The earlier drafts' separate fields `RateLimit-Limit`, `RateLimit-Remaining`,
    /// `RateLimit-Reset` (with `RateLimit-Policy` when present).
    RateLimitSplit,
    /// The de-facto `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// HubSpot's `X-HubSpot-RateLimit-*` fields.
    HubSpot,
    /// Shopify's `X-Shopify-Shop-Api-Call-Limit: 32/40` (requests in the leaky bucket / its
    /// size), read as a limit of 40 with 8 remaining.
    Shopify,
    /// Salesforce's `Sforce-Limit-Info: api-usage=18/5000` (calls in the last 24 hours / the
    /// org's allowance), reported as [`RateLimitInfo::daily`] only: read as a limit per window,
    /// a daily allowance would pace a rate controller to one request every 17 s.
    Salesforce,
}

/// What a quota counts, from the IETF `qu` parameter of `RateLimit-Policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaUnit {
    /// Requests (the draft's default when `qu` is absent).
    Requests,
    /// Bytes of content (`qu="content-bytes"`).
    ContentBytes,
    /// Requests in flight (`qu="concurrent-requests"`).
    ConcurrentRequests,
    /// A unit this crate does not know.
    Unknown,
}

impl QuotaUnit {
    fn from_param(value: Option<&Bare>) -> QuotaUnit {
        match value.and_then(Bare::name) {
            None | Some("requests") => QuotaUnit::Requests,
            Some("content-bytes") => QuotaUnit::ContentBytes,
            Some("concurrent-requests") => QuotaUnit::ConcurrentRequests,
            Some(_) => QuotaUnit::Unknown,
        }
    }
}

/// How strictly [`rate_limit_info_with`] reads the IETF structured fields (`RateLimit`,
/// `RateLimit-Policy`, `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`).
///
/// The other families (`X-RateLimit-*`, HubSpot, Shopify, Salesforce) are not structured
/// fields and are read the same way in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ParseMode {
    /// Member by member: a malformed member is skipped and the rest of the field is kept;
    /// uppercase keys, integers beyond 15 digits, a space before `;`, a trailing comma and
    /// trailing garbage are tolerated. The default, because the servers that send these
    /// fields get such details wrong, and ignoring a whole field over a stray comma throws
    /// away the `r=0` that would have paced us, which costs a round of 429s; reading a
    /// malformed member wrongly costs nothing, since no value is guessed.
    #[default]
    Lenient,
    /// RFC 9651 exactly, through the [`sfv`](https://docs.rs/sfv) parser: the field lines of
    /// one name are joined with commas and parsed as a List (the current draft) or else as a
    /// Dictionary (drafts 06 and 07); if that fails, the whole field is ignored, as RFC 9651
    /// §4.2 and the draft ("Malformed RateLimit header fields MUST be ignored") require. For
    /// conformance testing, and for callers who would rather lose a field than misread one.
    Strict,
}

/// A limit and how much of it is left, for a window reported beside the main one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Requests allowed in the window.
    pub limit: u64,
    /// Requests left in the current window.
    pub remaining: u64,
}

/// What a response's rate-limit headers say about the caller's quota.
///
/// Fields a family does not carry (or that did not parse) are `None`. Counts that do not fit in
/// a `u64` are dropped rather than saturated, since a made-up count would mislead a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// The header family the main fields came from.
    pub source: HeaderFamily,
    /// Requests allowed per window.
    pub limit: Option<u64>,
    /// Requests left in the current window.
    pub remaining: Option<u64>,
    /// Time until the window resets (or the quota is restored), measured from `now`.
    pub reset: Option<Duration>,
    /// The window's length, where the family states it (`RateLimit-Policy`'s `w`, HubSpot's
    /// `Interval-Milliseconds`).
    pub window: Option<Duration>,
    /// The policy's name in the current IETF list form (`"default"` in
    /// `RateLimit: "default";r=50;t=5`).
    pub policy: Option<String>,
    /// HubSpot's per-second pair (`X-HubSpot-RateLimit-Secondly` / `-Secondly-Remaining`).
    pub secondly: Option<Usage>,
    /// A daily pair (`X-HubSpot-RateLimit-Daily` / `-Daily-Remaining`, or Salesforce's
    /// 24-hour `api-usage`). Read whichever family won, because no other family reports a
    /// daily window.
    pub daily: Option<Usage>,
    /// What the reported policy counts (IETF `qu`), when its `RateLimit-Policy` item is known.
    pub quota_unit: Option<QuotaUnit>,
    /// The partition key (IETF `pk`, a byte sequence) of the reported policy.
    pub partition_key: Option<Vec<u8>>,
}

impl RateLimitInfo {
    fn new(source: HeaderFamily) -> Self {
        RateLimitInfo {
            source,
            limit: None,
            remaining: None,
            reset: None,
            window: None,
            policy: None,
            secondly: None,
            daily: None,
            quota_unit: None,
            partition_key: None,
        }
    }

    fn has_any(&self) -> bool {
        self.limit.is_some()
            || self.remaining.is_some()
            || self.reset.is_some()
            || self.window.is_some()
            || self.secondly.is_some()
            || self.daily.is_some()
    }
}

/// Reads the rate-limit headers of a response.
///
/// Families are tried in this order, and the first that yields at least one usable value wins
/// (a family whose fields are all garbage falls through to the next):
///
/// 1. [`HeaderFamily::RateLimit`]: standardised semantics, and the only family that can name
///    several policies at once.
/// 2. [`HeaderFamily::RateLimitSplit`]: the same semantics from earlier drafts.
/// 3. [`HeaderFamily::HubSpot`], [`HeaderFamily::Shopify`], [`HeaderFamily::Salesforce`]:
///    vendor families whose meaning is documented exactly.
/// 4. [`HeaderFamily::XRateLimit`]: the most common and the least well defined (its reset is
///    seconds-to-go on some APIs and a Unix timestamp on others).
///
/// When the list form of `RateLimit` names several policies, the one with the fewest units
/// remaining (then the longest reset) is reported, since that is the one that will throttle
/// first; its quota, window, unit and partition key come from the `RateLimit-Policy` item of
/// the same name. Policies that count requests are preferred: a remaining count of bytes
/// (`qu="content-bytes"`) is not comparable with one of requests, so such a policy is reported
/// only when no request-counting one is present (and [`RateLimitInfo::quota_unit`] says so).
///
/// `X-RateLimit-Reset` values up to ten years are seconds-to-go (Klaviyo-style); larger
/// values are a Unix timestamp in seconds (Intercom, SendGrid, Braze), and values of 10^11 or
/// more a Unix timestamp in milliseconds (the two ranges cannot overlap for dates after 1973).
/// An HTTP-date (Segment's Public API) is accepted too. Timestamps are measured against `now`;
/// a timestamp in the past gives a reset of zero. Fractional seconds are accepted there only.
///
/// Equivalent to [`rate_limit_info_with`] in [`ParseMode::Lenient`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_throttle::headers::{rate_limit_info, HeaderFamily};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""default";r=50;t=5"#.parse().unwrap());
/// headers.insert("ratelimit-policy", r#""default";q=100;w=10"#.parse().unwrap());
///
/// let info = rate_limit_info(&headers, SystemTime::now()).unwrap();
/// assert_eq!(info.source, HeaderFamily::RateLimit);
/// assert_eq!(info.limit, Some(100));
/// assert_eq!(info.remaining, Some(50));
/// assert_eq!(info.reset, Some(Duration::from_secs(5)));
/// assert_eq!(info.window, Some(Duration::from_secs(10)));
/// ```
pub fn rate_limit_info(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitInfo> {
    rate_limit_info_with(headers, now, ParseMode::Lenient)
}

/// [`rate_limit_info`] with the IETF structured fields read in `mode`.
///
/// In [`ParseMode::Strict`] a field RFC 9651 rejects (an uppercase key `Limit=1`, a 16-digit
/// integer, a space before `;`, a trailing comma, trailing garbage) is ignored whole, and
/// the next family is tried, as if the field were absent. On a field RFC 9651 accepts, both
/// modes report the same thing (the `rate_limit_info` fuzz target checks this).
///
/// ```
/// use std::time::SystemTime;
/// use http::HeaderMap;
/// use tower_throttle::headers::{rate_limit_info_with, ParseMode};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""default";r=5;t=30,"#.parse().unwrap()); // trailing comma
///
/// let now = SystemTime::now();
/// let lenient = rate_limit_info_with(&headers, now, ParseMode::Lenient).unwrap();
/// assert_eq!(lenient.remaining, Some(5));
/// assert_eq!(rate_limit_info_with(&headers, now, ParseMode::Strict), None);
/// ```
pub fn rate_limit_info_with(
    headers: &HeaderMap,
    now: SystemTime,
    mode: ParseMode,
) -> Option<RateLimitInfo> {
    let daily = hubspot_daily(headers);
    let mut info = ietf_structured(headers, mode)
        .or_else(|| ietf_split(headers, mode))
        .or_else(|| hubspot(headers))
        .or_else(|| shopify(headers))
        .or_else(|| salesforce(headers))
        .or_else(|| x_ratelimit(headers, now))
        .or_else(|| {
            // A response with nothing but HubSpot's daily pair is still worth reporting.
            daily.map(|_| RateLimitInfo::new(HeaderFamily::HubSpot))
        })?;
    info.daily = info.daily.or(daily);
    Some(info)
}

fn ietf_structured(headers: &HeaderMap, mode: ParseMode) -> Option<RateLimitInfo> {
    let members = sf_members(headers, "ratelimit", mode);
    let policies = sf_members(headers, "ratelimit-policy", mode);
    let mut info = RateLimitInfo::new(HeaderFamily::RateLimit);

    if members.iter().any(|m| m.key.is_some()) {
        // Dictionary form (drafts 06-07): `limit=100, remaining=50, reset=5`. As in RFC 9651
        // dictionaries, the last member of a name decides, and a bare `limit` means `limit=?1`.
        for m in &members {
            let (key, value) = match (&m.key, &m.value) {
                (Some(k), v) => (k.as_str(), v.int()),
                (None, Bare::Token(k)) => (k.as_str(), None),
                _ => continue,
            };
            match key {
                "limit" => info.limit = value,
                "remaining" => info.remaining = value,
                "reset" => info.reset = value.map(Duration::from_secs),
                _ => {}
            }
        }
        apply_unnamed_policy(&mut info, &policies);
    } else {
        // List form (draft 08 on): `"default";r=50;t=5`, one item per policy.
        let policy_of = |m: &Member| {
            let name = m.value.name()?;
            policies
                .iter()
                .filter(|p| p.key.is_none())
                .find(|p| p.value.name() == Some(name))
        };
        let unit_of = |m: &Member| policy_of(m).map(|p| QuotaUnit::from_param(p.param_value("qu")));
        let tightness = |m: &&Member| {
            (
                m.param("r").unwrap_or(u64::MAX),
                std::cmp::Reverse(m.param("t")),
            )
        };
        let candidates = || {
            members
                .iter()
                .filter(|m| m.key.is_none())
                .filter(|m| m.param("r").is_some() || m.param("t").is_some())
        };
        let tightest = candidates()
            .filter(|m| unit_of(m).unwrap_or(QuotaUnit::Requests) == QuotaUnit::Requests)
            .min_by_key(tightness)
            .or_else(|| candidates().min_by_key(tightness))?;
        info.remaining = tightest.param("r");
        info.reset = tightest.param("t").map(Duration::from_secs);
        info.policy = tightest.value.name().map(str::to_owned);
        info.partition_key = tightest.bytes_param("pk").map(<[u8]>::to_vec);
        if let Some(p) = policy_of(tightest) {
            info.limit = p.param("q");
            info.window = p.param("w").filter(|w| *w > 0).map(Duration::from_secs);
            info.quota_unit = unit_of(tightest);
            info.partition_key = info
                .partition_key
                .or_else(|| p.bytes_param("pk").map(<[u8]>::to_vec));
        }
    }
    info.has_any().then_some(info)
}

/// Fills limit and window from an unnamed `RateLimit-Policy: 100;w=10, 1000;w=3600`: the item
/// whose quota equals the reported limit, else the first.
fn apply_unnamed_policy(info: &mut RateLimitInfo, policies: &[Member]) {
    let items: Vec<(u64, Option<u64>)> = policies
        .iter()
        .filter(|p| p.key.is_none())
        .filter_map(|p| Some((p.value.int()?, p.param("w").filter(|w| *w > 0))))
        .collect();
    let chosen = match info.limit {
        Some(limit) => items.iter().find(|(q, _)| *q == limit).or(items.first()),
        None => items.first(),
    };
    if let Some((q, w)) = chosen {
        info.limit = info.limit.or(Some(*q));
        info.window = w.map(Duration::from_secs);
    }
}

fn ietf_split(headers: &HeaderMap, mode: ParseMode) -> Option<RateLimitInfo> {
    let first_int = |name: &str| {
        sf_members(headers, name, mode)
            .iter()
            .find_map(|m| match (&m.key, &m.value) {
                (None, Bare::Int(n)) => Some(*n),
                _ => None,
            })
    };
    let mut info = RateLimitInfo::new(HeaderFamily::RateLimitSplit);
    info.limit = first_int("ratelimit-limit");
    info.remaining = first_int("ratelimit-remaining");
    info.reset = first_int("ratelimit-reset").map(Duration::from_secs);
    if info.limit.is_none() && info.remaining.is_none() && info.reset.is_none() {
        return None;
    }
    apply_unnamed_policy(&mut info, &sf_members(headers, "ratelimit-policy", mode));
    Some(info)
}

fn hubspot(headers: &HeaderMap) -> Option<RateLimitInfo> {
    let mut info = RateLimitInfo::new(HeaderFamily::HubSpot);
    info.limit = header_u64(headers, "x-hubspot-ratelimit-max");
    info.remaining = header_u64(headers, "x-hubspot-ratelimit-remaining");
    info.window =
        header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis);
    info.secondly = hubspot_pair(
        headers,
        "x-hubspot-ratelimit-secondly",
        "x-hubspot-ratelimit-secondly-remaining",
    );
    // The daily pair alone does not make this family win over X-RateLimit-*: it is merged into
    // whichever family wins by `rate_limit_info`.
    (info.limit.is_some()
        || info.remaining.is_some()
        || info.window.is_some()
        || info.secondly.is_some())
    .then_some(info)
}

/// HubSpot's `X-HubSpot-RateLimit-Daily` / `-Daily-Remaining` pair (absent for OAuth apps).
pub(crate) fn hubspot_daily(headers: &HeaderMap) -> Option<Usage> {
    hubspot_pair(
        headers,
        "x-hubspot-ratelimit-daily",
        "x-hubspot-ratelimit-daily-remaining",
    )
}

fn hubspot_pair(headers: &HeaderMap, limit: &str, remaining: &str) -> Option<Usage> {
    Some(Usage {
        limit: header_u64(headers, limit)?,
        remaining: header_u64(headers, remaining)?,
    })
}

/// `X-Shopify-Shop-Api-Call-Limit: <in bucket>/<bucket size>`.
fn shopify(headers: &HeaderMap) -> Option<RateLimitInfo> {
    let (used, size) = first_str(headers, "x-shopify-shop-api-call-limit").and_then(used_of)?;
    let mut info = RateLimitInfo::new(HeaderFamily::Shopify);
    info.limit = Some(size);
    info.remaining = Some(size.saturating_sub(used));
    Some(info)
}

fn salesforce(headers: &HeaderMap) -> Option<RateLimitInfo> {
    let mut info = RateLimitInfo::new(HeaderFamily::Salesforce);
    info.daily = Some(salesforce_usage(headers)?);
    Some(info)
}

/// The org-wide `api-usage=<used>/<allowed>` of `Sforce-Limit-Info` (the line may also carry
/// `per-app-api-usage=17/250(appName=...)`, which is per connected app and not the org's).
pub(crate) fn salesforce_usage(headers: &HeaderMap) -> Option<Usage> {
    headers
        .get_all("sforce-limit-info")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| trim_ows(part).strip_prefix("api-usage="))
        .find_map(used_of)
        .map(|(used, limit)| Usage {
            limit,
            remaining: limit.saturating_sub(used),
        })
}

/// `<used>/<limit>`, both plain integers (optional whitespace around each).
fn used_of(value: &str) -> Option<(u64, u64)> {
    let (used, limit) = value.split_once('/')?;
    Some((
        parse_digits(trim_ows(used))?,
        parse_digits(trim_ows(limit))?,
    ))
}

/// Ten years in seconds: a reset this far away is not a countdown, so it must be a timestamp.
const EPOCH_THRESHOLD_SECS: u64 = 10 * 365 * 24 * 60 * 60;
/// From here on a timestamp is in milliseconds (10^11 s is the year 5138; 10^11 ms is 1973).
const EPOCH_MILLIS_THRESHOLD: u64 = 100_000_000_000;

fn x_ratelimit(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitInfo> {
    let mut info = RateLimitInfo::new(HeaderFamily::XRateLimit);
    info.limit = header_u64(headers, "x-ratelimit-limit");
    info.remaining = header_u64(headers, "x-ratelimit-remaining");
    info.reset = first_str(headers, "x-ratelimit-reset").and_then(|v| x_reset(v, now));
    info.has_any().then_some(info)
}

fn x_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = trim_ows(value);
    if let Ok(at) = httpdate::parse_http_date(value) {
        return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
    }
    let value = parse_decimal(value)?;
    let secs = value.as_secs();
    if secs <= EPOCH_THRESHOLD_SECS {
        return Some(value);
    }
    let at = if secs < EPOCH_MILLIS_THRESHOLD {
        value
    } else {
        // Millisecond timestamps carry no meaningful fraction; reinterpret the integer part.
        Duration::from_millis(secs)
    };
    // Measured on durations since the epoch, not with `SystemTime + Duration`, which panics on
    // overflow. A clock set before 1970 counts as the epoch itself.
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Some(at.saturating_sub(since_epoch))
}

// ---------------------------------------------------------------------------------------------
// Small lexical helpers.

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\t')
}

fn first_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(name).iter().find_map(|v| v.to_str().ok())
}

/// The first line of `name` that is a plain non-negative integer fitting in `u64`.
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| parse_digits(trim_ows(v)))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Digits only; `None` on anything else, including overflow.
fn parse_digits(s: &str) -> Option<u64> {
    if !all_digits(s) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Digits only; saturates at `u64::MAX` instead of failing, for values that are capped later.
fn parse_digits_saturating(s: &str) -> Option<u64> {
    if !all_digits(s) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// `digits [ "." digits ]` as a duration in seconds; fractions beyond nanoseconds are dropped.
fn parse_decimal(s: &str) -> Option<Duration> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let secs = parse_digits(int)?;
    let nanos = match frac {
        None => 0,
        Some(f) if all_digits(f) => f
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(9)
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')),
        Some(_) => return None,
    };
    Some(Duration::new(secs, nanos))
}

// ---------------------------------------------------------------------------------------------
// Two readers of RFC 9651 structured-field lists and dictionaries into the same `Member`s, so
// that one interpretation (above) serves both modes. The lenient one is deliberately small and
// forgiving: it understands what rate-limit fields use (integers, strings, tokens, byte
// sequences, parameters) and skips a malformed member instead of rejecting the whole field,
// which is what a client wants from a server it cannot fix. The strict one is `sfv`.

#[derive(Debug, Clone, PartialEq)]
enum Bare {
    /// A non-negative integer that fits in `u64`.
    Int(u64),
    Str(String),
    /// Case kept: a token is a value (a policy name), not a key.
    Token(String),
    Bytes(Vec<u8>),
    /// Anything else (negative or decimal numbers, booleans, dates, display strings).
    Other,
}

impl Bare {
    fn int(&self) -> Option<u64> {
        match self {
            Bare::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// A policy's name: a string, or a token for servers that forget the quotes.
    fn name(&self) -> Option<&str> {
        match self {
            Bare::Str(s) | Bare::Token(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Member {
    /// `Some` for dictionary members (`key=value`).
    key: Option<String>,
    value: Bare,
    params: Vec<(String, Bare)>,
}

impl Member {
    /// The last parameter of this name, as in RFC 9651, where a repeated key overrides.
    fn param_value(&self, name: &str) -> Option<&Bare> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn param(&self, name: &str) -> Option<u64> {
        self.param_value(name).and_then(Bare::int)
    }

    fn bytes_param(&self, name: &str) -> Option<&[u8]> {
        match self.param_value(name)? {
            Bare::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

fn sf_members(headers: &HeaderMap, name: &str, mode: ParseMode) -> Vec<Member> {
    match mode {
        ParseMode::Lenient => sf_list(headers, name),
        ParseMode::Strict => sf_strict(headers, name).unwrap_or_default(),
    }
}

/// All lines of `name` joined with commas (RFC 9651 §4.2), parsed as a List, else as a
/// Dictionary; `None` when neither parses (or a line is not even ASCII).
fn sf_strict(headers: &HeaderMap, name: &str) -> Option<Vec<Member>> {
    let mut joined = String::new();
    for (i, line) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            joined.push_str(", ");
        }
        joined.push_str(line.to_str().ok()?);
    }
    if let Ok(list) = sfv::Parser::new(&joined).parse::<sfv::List>() {
        return Some(
            list.iter()
                .filter_map(|entry| match entry {
                    sfv::ListEntry::Item(item) => Some(member_of(None, item)),
                    sfv::ListEntry::InnerList(_) => None,
                })
                .collect(),
        );
    }
    let dict = sfv::Parser::new(&joined).parse::<sfv::Dictionary>().ok()?;
    Some(
        dict.iter()
            .map(|(key, entry)| match entry {
                sfv::ListEntry::Item(item) => member_of(Some(key.as_str()), item),
                sfv::ListEntry::InnerList(_) => Member {
                    key: Some(key.as_str().to_owned()),
                    value: Bare::Other,
                    params: Vec::new(),
                },
            })
            .collect(),
    )
}

fn member_of(key: Option<&str>, item: &sfv::Item) -> Member {
    Member {
        key: key.map(str::to_owned),
        value: bare_of(&item.bare_item),
        params: item
            .params
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), bare_of(v)))
            .collect(),
    }
}

fn bare_of(item: &sfv::BareItem) -> Bare {
    match item {
        sfv::BareItem::Integer(n) => u64::try_from(i64::from(*n)).map_or(Bare::Other, Bare::Int),
        sfv::BareItem::String(s) => Bare::Str(s.as_str().to_owned()),
        sfv::BareItem::Token(t) => Bare::Token(t.as_str().to_owned()),
        sfv::BareItem::ByteSequence(b) => Bare::Bytes(b.clone()),
        _ => Bare::Other,
    }
}

/// All lines of `name`, each parsed on its own so that one broken line cannot swallow the
/// next (an unterminated string would, were they joined). Non-UTF-8 lines are skipped.
fn sf_list(headers: &HeaderMap, name: &str) -> Vec<Member> {
    let mut out = Vec::new();
    for line in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        let mut p = Parser {
            s: line.as_bytes(),
            i: 0,
        };
        loop {
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if let Some(m) = p.member() {
                out.push(m);
            }
            p.skip_past_comma();
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// Moves past the next comma outside a string, so a malformed member is skipped whole.
    fn skip_past_comma(&mut self) {
        let mut in_str = false;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'\\' if in_str => self.i += 1,
                b'"' => in_str = !in_str,
                b',' if !in_str => return,
                _ => {}
            }
        }
    }

    fn member(&mut self) -> Option<Member> {
        let first = self.bare()?;
        let (key, value) = match first {
            Bare::Token(ref t) if self.peek() == Some(b'=') => {
                self.i += 1;
                (Some(t.to_ascii_lowercase()), self.bare()?)
            }
            other => (None, other),
        };
        let mut params = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() != Some(b';') {
                break;
            }
            self.i += 1;
            self.skip_ws();
            let Some(Bare::Token(k)) = self.bare() else {
                break;
            };
            let k = k.to_ascii_lowercase();
            let v = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare().unwrap_or(Bare::Other)
            } else {
                Bare::Other
            };
            params.push((k, v));
        }
        Some(Member { key, value, params })
    }

    fn bare(&mut self) -> Option<Bare> {
        match self.peek()? {
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => Some(self.number()),
            c if c.is_ascii_alphabetic() || c == b'*' => Some(self.token()),
            b':' => Some(self.bytes()),
            b'@' => {
                self.i += 1;
                self.number();
                Some(Bare::Other)
            }
            b'%' => {
                self.i += 1;
                (self.peek() == Some(b'"')).then(|| self.string())??;
                Some(Bare::Other)
            }
            b'?' => {
                self.take_while(|c| c != b',' && c != b';');
                Some(Bare::Other)
            }
            _ => None,
        }
    }

    /// `:base64:`, decoded as `sfv` decodes (padding optional, trailing bits allowed).
    fn bytes(&mut self) -> Bare {
        self.i += 1; // opening colon
        let start = self.i;
        self.take_while(|c| c != b':' && c != b',' && c != b';');
        let raw = &self.s[start..self.i];
        if self.peek() != Some(b':') {
            return Bare::Other;
        }
        self.i += 1;
        BASE64.decode(raw).map_or(Bare::Other, Bare::Bytes)
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn number(&mut self) -> Bare {
        let raw = self.take_while(|c| c == b'-' || c == b'.' || c.is_ascii_digit());
        let Ok(raw) = std::str::from_utf8(raw) else {
            return Bare::Other;
        };
        match raw.strip_prefix('-') {
            // `-0` is zero in RFC 9651; any other negative number is of no use here.
            Some(neg) => match parse_digits(neg) {
                Some(0) => Bare::Int(0),
                _ => Bare::Other,
            },
            None => parse_digits(raw).map_or(Bare::Other, Bare::Int),
        }
    }

    fn token(&mut self) -> Bare {
        let raw =
            self.take_while(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c));
        Bare::Token(String::from_utf8_lossy(raw).into_owned())
    }

    fn string(&mut self) -> Option<Bare> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(Bare::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const CAP: Duration = Duration::from_secs(60);
    /// Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110.
    const T0: u64 = 784_111_777;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Header lines as (name, raw bytes), so tests can send bytes `&str` cannot hold.
    type Pairs<'a> = &'a [(&'a str, &'a [u8])];

    fn map(pairs: Pairs<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn retry_after_table() {
        let cases: &[(&str, Pairs<'_>, Option<Duration>)] = &[
            ("delta", &[("retry-after", b"120")], Some(CAP)),
            ("delta under cap", &[("retry-after", b"7")], secs(7)),
            ("zero", &[("retry-after", b"0")], secs(0)),
            ("leading zeros", &[("retry-after", b"007")], secs(7)),
            (
                "surrounding whitespace",
                &[("retry-after", b" \t5\t ")],
                secs(5),
            ),
            (
                "huge fits u64",
                &[("retry-after", b"99999999999")],
                Some(CAP),
            ),
            (
                "u64::MAX",
                &[("retry-after", b"18446744073709551615")],
                Some(CAP),
            ),
            (
                "u64::MAX + 1",
                &[("retry-after", b"18446744073709551616")],
                Some(CAP),
            ),
            (
                "forty digits",
                &[("retry-after", b"9999999999999999999999999999999999999999")],
                Some(CAP),
            ),
            ("negative", &[("retry-after", b"-5")], None),
            ("plus sign", &[("retry-after", b"+5")], None),
            ("fraction", &[("retry-after", b"1.5")], None),
            ("exponent", &[("retry-after", b"1e3")], None),
            ("garbage", &[("retry-after", b"soon")], None),
            ("empty", &[("retry-after", b"")], None),
            ("blank", &[("retry-after", b"   ")], None),
            ("inner space", &[("retry-after", b"1 2")], None),
            ("list", &[("retry-after", b"1, 2")], None),
            ("non-utf8", &[("retry-after", b"\xff\xfe")], None),
            ("missing", &[], None),
            (
                "first valid wins",
                &[("retry-after", b"3"), ("retry-after", b"9")],
                secs(3),
            ),
            (
                "invalid skipped",
                &[("retry-after", b"junk"), ("retry-after", b"9")],
                secs(9),
            ),
            (
                "non-utf8 skipped",
                &[("retry-after", b"\xff"), ("retry-after", b"4")],
                secs(4),
            ),
            (
                "imf-fixdate",
                &[("retry-after", b"Sun, 06 Nov 1994 08:50:07 GMT")],
                secs(30),
            ),
            (
                "rfc850",
                &[("retry-after", b"Sunday, 06-Nov-94 08:50:07 GMT")],
                secs(30),
            ),
            (
                "asctime",
                &[("retry-after", b"Sun Nov  6 08:50:07 1994")],
                secs(30),
            ),
            (
                "date now",
                &[("retry-after", b"Sun, 06 Nov 1994 08:49:37 GMT")],
                secs(0),
            ),
            (
                "date in the past",
                &[("retry-after", b"Sun, 06 Nov 1994 08:00:00 GMT")],
                secs(0),
            ),
            (
                "date far past",
                &[("retry-after", b"Thu, 01 Jan 1970 00:00:00 GMT")],
                secs(0),
            ),
            (
                "date far future",
                &[("retry-after", b"Fri, 31 Dec 9999 23:59:59 GMT")],
                Some(CAP),
            ),
            (
                "date impossible",
                &[("retry-after", b"Sun, 31 Feb 1994 08:50:07 GMT")],
                None,
            ),
            (
                "date garbage",
                &[("retry-after", b"Sun, 06 Nov 1994 99:99:99 GMT")],
                None,
            ),
            (
                "date against server Date",
                &[
                    ("retry-after", b"Sun, 06 Nov 1994 08:50:07 GMT"),
                    ("date", b"Sun, 06 Nov 1994 08:49:57 GMT"),
                ],
                secs(10),
            ),
            (
                "server Date after target",
                &[
                    ("retry-after", b"Sun, 06 Nov 1994 08:50:07 GMT"),
                    ("date", b"Sun, 06 Nov 1994 09:00:00 GMT"),
                ],
                secs(0),
            ),
            (
                "invalid Date falls back to now",
                &[
                    ("retry-after", b"Sun, 06 Nov 1994 08:50:07 GMT"),
                    ("date", b"yesterday"),
                ],
                secs(30),
            ),
            (
                "delta ignores Date",
                &[
                    ("retry-after", b"5"),
                    ("date", b"Sun, 06 Nov 1994 08:00:00 GMT"),
                ],
                secs(5),
            ),
        ];
        for (name, headers, want) in cases {
            let got = retry_after(&map(headers), at(T0), CAP);
            assert_eq!(got, *want, "case {name:?}");
        }
    }

    #[test]
    fn retry_after_respects_small_and_zero_caps() {
        let h = map(&[("retry-after", b"120")]);
        assert_eq!(retry_after(&h, at(T0), Duration::from_secs(1)), secs(1));
        assert_eq!(retry_after(&h, at(T0), Duration::ZERO), secs(0));
        assert_eq!(retry_after(&h, at(T0), Duration::MAX), secs(120));
        let h = map(&[("retry-after", b"99999999999999999999999")]);
        assert_eq!(retry_after(&h, at(T0), Duration::MAX), secs(u64::MAX));
    }

    #[test]
    fn retry_after_with_now_at_extremes() {
        let h = map(&[("retry-after", b"Sun, 06 Nov 1994 08:50:07 GMT")]);
        assert_eq!(retry_after(&h, UNIX_EPOCH, CAP), Some(CAP));
        assert_eq!(retry_after(&h, at(u64::from(u32::MAX) * 4), CAP), secs(0));
        if let Some(before_epoch) = UNIX_EPOCH.checked_sub(Duration::from_secs(1_000)) {
            assert_eq!(retry_after(&h, before_epoch, CAP), Some(CAP));
        }
    }

    fn info(pairs: &[(&str, &[u8])], now: u64) -> Option<RateLimitInfo> {
        rate_limit_info(&map(pairs), at(now))
    }

    /// (limit, remaining, reset seconds, window seconds)
    type Core = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);
    type Expected = Option<(HeaderFamily, Core)>;

    fn core(i: &RateLimitInfo) -> Core {
        (
            i.limit,
            i.remaining,
            i.reset.map(|d| d.as_secs()),
            i.window.map(|d| d.as_secs()),
        )
    }

    #[test]
    fn rate_limit_info_table() {
        use HeaderFamily::*;
        let now = 1_700_000_000;
        let cases: &[(&str, Pairs<'_>, Expected)] = &[
            ("nothing", &[], None),
            (
                "ietf dictionary",
                &[("ratelimit", b"limit=100, remaining=50, reset=5")],
                Some((RateLimit, (Some(100), Some(50), Some(5), None))),
            ),
            (
                "ietf dictionary with unnamed policy",
                &[
                    ("ratelimit", b"limit=100, remaining=50, reset=5"),
                    ("ratelimit-policy", b"100;w=10"),
                ],
                Some((RateLimit, (Some(100), Some(50), Some(5), Some(10)))),
            ),
            (
                "unnamed policy matched by quota",
                &[
                    ("ratelimit", b"limit=1000, remaining=3, reset=50"),
                    ("ratelimit-policy", b"100;w=10, 1000;w=3600"),
                ],
                Some((RateLimit, (Some(1000), Some(3), Some(50), Some(3600)))),
            ),
            (
                "ietf dictionary split over lines",
                &[
                    ("ratelimit", b"limit=100"),
                    ("ratelimit", b"remaining=0, reset=9"),
                ],
                Some((RateLimit, (Some(100), Some(0), Some(9), None))),
            ),
            (
                "ietf dictionary with a bad member",
                &[("ratelimit", b"limit=-1, remaining=\"x\", reset=5")],
                Some((RateLimit, (None, None, Some(5), None))),
            ),
            (
                "ietf list form",
                &[
                    ("ratelimit", b"\"default\";r=50;t=5"),
                    ("ratelimit-policy", b"\"default\";q=100;w=10"),
                ],
                Some((RateLimit, (Some(100), Some(50), Some(5), Some(10)))),
            ),
            (
                "ietf list form without policy",
                &[("ratelimit", b"\"default\";r=50;t=5")],
                Some((RateLimit, (None, Some(50), Some(5), None))),
            ),
            (
                "ietf list form, tightest policy wins",
                &[
                    ("ratelimit", b"\"burst\";r=40;t=1, \"daily\";r=2;t=7200"),
                    (
                        "ratelimit-policy",
                        b"\"burst\";q=50;w=1, \"daily\";q=1000;w=86400",
                    ),
                ],
                Some((RateLimit, (Some(1000), Some(2), Some(7200), Some(86400)))),
            ),
            (
                "ietf list form, comma inside a name",
                &[
                    ("ratelimit", b"\"a,b\";r=1;t=2"),
                    ("ratelimit-policy", b"\"a,b\";q=3;w=4"),
                ],
                Some((RateLimit, (Some(3), Some(1), Some(2), Some(4)))),
            ),
            (
                "ietf garbage falls through",
                &[
                    ("ratelimit", b"@@garbage;;;"),
                    ("x-ratelimit-remaining", b"4"),
                ],
                Some((XRateLimit, (None, Some(4), None, None))),
            ),
            (
                "ietf huge integer dropped",
                &[("ratelimit", b"limit=99999999999999999999999, remaining=1")],
                Some((RateLimit, (None, Some(1), None, None))),
            ),
            (
                "split fields",
                &[
                    ("ratelimit-limit", b"100"),
                    ("ratelimit-remaining", b"99"),
                    ("ratelimit-reset", b"30"),
                    ("ratelimit-policy", b"100;w=60"),
                ],
                Some((RateLimitSplit, (Some(100), Some(99), Some(30), Some(60)))),
            ),
            (
                "split limit with inline policy",
                &[
                    ("ratelimit-limit", b"10, 10;w=1, 50;w=60"),
                    ("ratelimit-remaining", b"1"),
                ],
                Some((RateLimitSplit, (Some(10), Some(1), None, None))),
            ),
            (
                "x-ratelimit delta reset",
                &[
                    ("x-ratelimit-limit", b"60"),
                    ("x-ratelimit-remaining", b"0"),
                    ("x-ratelimit-reset", b"42"),
                ],
                Some((XRateLimit, (Some(60), Some(0), Some(42), None))),
            ),
            (
                "x-ratelimit ten years is still a delta",
                &[("x-ratelimit-reset", b"315360000")],
                Some((XRateLimit, (None, None, Some(315_360_000), None))),
            ),
            (
                "x-ratelimit epoch reset",
                &[("x-ratelimit-reset", b"1700000090")],
                Some((XRateLimit, (None, None, Some(90), None))),
            ),
            (
                "x-ratelimit fractional epoch reset",
                &[("x-ratelimit-reset", b"1700000090.750")],
                Some((XRateLimit, (None, None, Some(90), None))),
            ),
            (
                "x-ratelimit epoch millis reset",
                &[("x-ratelimit-reset", b"1700000012000")],
                Some((XRateLimit, (None, None, Some(12), None))),
            ),
            (
                "x-ratelimit epoch in the past",
                &[("x-ratelimit-reset", b"1600000000")],
                Some((XRateLimit, (None, None, Some(0), None))),
            ),
            (
                "x-ratelimit u64::MAX reset",
                &[
                    ("x-ratelimit-reset", b"18446744073709551615"),
                    ("x-ratelimit-limit", b"1"),
                ],
                Some((
                    XRateLimit,
                    (Some(1), None, Some(u64::MAX / 1000 - now), None),
                )),
            ),
            (
                "x-ratelimit hostile values",
                &[
                    ("x-ratelimit-limit", b"-1"),
                    ("x-ratelimit-remaining", b"99999999999999999999999"),
                    ("x-ratelimit-reset", b"1.2.3"),
                ],
                None,
            ),
            (
                "x-ratelimit non-utf8 then valid",
                &[
                    ("x-ratelimit-remaining", b"\xff"),
                    ("x-ratelimit-remaining", b"8"),
                ],
                Some((XRateLimit, (None, Some(8), None, None))),
            ),
            (
                "x-ratelimit empty and fraction",
                &[
                    ("x-ratelimit-limit", b""),
                    ("x-ratelimit-remaining", b"2.5"),
                ],
                None,
            ),
            (
                "hubspot",
                &[
                    ("x-hubspot-ratelimit-max", b"100"),
                    ("x-hubspot-ratelimit-remaining", b"97"),
                    ("x-hubspot-ratelimit-interval-milliseconds", b"10000"),
                ],
                Some((HubSpot, (Some(100), Some(97), None, Some(10)))),
            ),
            (
                "hubspot beats x-ratelimit",
                &[
                    ("x-hubspot-ratelimit-max", b"100"),
                    ("x-ratelimit-limit", b"5"),
                ],
                Some((HubSpot, (Some(100), None, None, None))),
            ),
            (
                "ietf beats split beats everything",
                &[
                    ("ratelimit", b"limit=1"),
                    ("ratelimit-limit", b"2"),
                    ("x-hubspot-ratelimit-max", b"3"),
                    ("x-ratelimit-limit", b"4"),
                ],
                Some((RateLimit, (Some(1), None, None, None))),
            ),
            (
                "split beats hubspot",
                &[("ratelimit-limit", b"2"), ("x-hubspot-ratelimit-max", b"3")],
                Some((RateLimitSplit, (Some(2), None, None, None))),
            ),
        ];
        for (name, headers, want) in cases {
            let got = info(headers, now);
            let got = got.as_ref().map(|i| (i.source, core(i)));
            assert_eq!(got, *want, "case {name:?}");
        }
    }

    #[test]
    fn ietf_list_reports_policy_name() {
        let i = info(&[("ratelimit", b"\"default\";r=50;t=5")], T0).unwrap();
        assert_eq!(i.policy.as_deref(), Some("default"));
        let i = info(&[("ratelimit", b"limit=1")], T0).unwrap();
        assert_eq!(i.policy, None);
    }

    #[test]
    fn hubspot_secondly_and_daily() {
        let h: &[(&str, &[u8])] = &[
            ("x-hubspot-ratelimit-max", b"190"),
            ("x-hubspot-ratelimit-remaining", b"189"),
            ("x-hubspot-ratelimit-interval-milliseconds", b"10000"),
            ("x-hubspot-ratelimit-secondly", b"19"),
            ("x-hubspot-ratelimit-secondly-remaining", b"18"),
            ("x-hubspot-ratelimit-daily", b"250000"),
            ("x-hubspot-ratelimit-daily-remaining", b"249900"),
        ];
        let i = info(h, T0).unwrap();
        assert_eq!(i.source, HeaderFamily::HubSpot);
        assert_eq!(
            i.secondly,
            Some(Usage {
                limit: 19,
                remaining: 18
            })
        );
        assert_eq!(
            i.daily,
            Some(Usage {
                limit: 250_000,
                remaining: 249_900
            })
        );
        assert_eq!(i.window, Some(Duration::from_millis(10_000)));
    }

    #[test]
    fn hubspot_daily_is_merged_and_needs_both_halves() {
        let i = info(
            &[
                ("x-ratelimit-remaining", b"3"),
                ("x-hubspot-ratelimit-daily", b"500"),
                ("x-hubspot-ratelimit-daily-remaining", b"1"),
            ],
            T0,
        )
        .unwrap();
        assert_eq!(i.source, HeaderFamily::XRateLimit);
        assert_eq!(
            i.daily,
            Some(Usage {
                limit: 500,
                remaining: 1
            })
        );

        let i = info(
            &[
                ("x-hubspot-ratelimit-daily", b"500"),
                ("x-hubspot-ratelimit-daily-remaining", b"1"),
            ],
            T0,
        )
        .unwrap();
        assert_eq!(i.source, HeaderFamily::HubSpot);
        assert_eq!(
            i.daily,
            Some(Usage {
                limit: 500,
                remaining: 1
            })
        );

        assert_eq!(info(&[("x-hubspot-ratelimit-daily", b"500")], T0), None);
        assert_eq!(
            info(
                &[
                    ("x-hubspot-ratelimit-daily", b"500"),
                    ("x-hubspot-ratelimit-daily-remaining", b"-1")
                ],
                T0
            ),
            None
        );
    }

    #[test]
    fn structured_field_reader_never_panics_on_odd_input() {
        let inputs: &[&[u8]] = &[
            b"",
            b",,,,",
            b"\"",
            b"\"unterminated;r=1",
            b"\"esc\\",
            b"a=",
            b"a=;b",
            b";;;;",
            b"=1",
            b"-",
            b"--1",
            b"1.",
            b"?1;r=2",
            b":YWJj:;r=2",
            b"limit=1;w",
            b"x;r=99999999999999999999999;t=1",
            b"\t limit = 1",
        ];
        for input in inputs {
            let h = map(&[("ratelimit", input), ("ratelimit-policy", input)]);
            let _ = rate_limit_info(&h, at(T0));
            let _ = retry_after(&map(&[("retry-after", input)]), at(T0), CAP);
        }
        let h = map(&[("ratelimit", b"x;r=99999999999999999999999;t=1")]);
        assert_eq!(rate_limit_info(&h, at(T0)).and_then(|i| i.reset), secs(1));
    }

    #[test]
    fn decimal_parser() {
        assert_eq!(parse_decimal("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_decimal("2"), secs(2));
        assert_eq!(parse_decimal("0.0000000019"), Some(Duration::from_nanos(1)));
        assert_eq!(parse_decimal("1."), None);
        assert_eq!(parse_decimal(".5"), None);
        assert_eq!(parse_decimal("-1.5"), None);
    }
}
