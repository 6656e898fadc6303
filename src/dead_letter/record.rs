//! The stored form of a failed request, its body, redaction and timestamps.

use std::io;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::ReplayBody;

/// The value that replaces a redacted header.
pub const REDACTED: &str = "[REDACTED]";

/// One request whose final outcome was a failure, as kept by a
/// [`DeadLetterStore`](super::DeadLetterStore).
///
/// Serialized as one JSON object (one line in a [`FileStore`](crate::FileStore)); the body is
/// text when it is valid UTF-8, base64 otherwise; times are RFC 3339 UTC with milliseconds.
/// Credential headers are already redacted (see [`DeadLetterLayer`](super::DeadLetterLayer)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct DeadLetter {
    /// Assigned by the store on [`append`](super::DeadLetterStore::append); unique within it.
    pub id: u64,
    /// HTTP method.
    pub method: String,
    /// Full request URI; secret query parameters read `[REDACTED]` (see
    /// [`DeadLetterLayer::redact_query_param`](super::DeadLetterLayer::redact_query_param)).
    pub uri: String,
    /// Request headers in order, `[name, value]`; credentials read `[REDACTED]`.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: StoredBody,
    /// Status of the last response, when the failure was a response.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub status: Option<u16>,
    /// Text of the last error (with its sources), when the failure was an error.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub error: Option<String>,
    /// Attempts made, for errors as for responses (see the [module docs](super); 1 when no
    /// retry layer counted them).
    pub attempts: u32,
    /// The request may have been applied: its answer was lost and it was not resent, because
    /// it is not idempotent ([`ThrottleError::OutcomeUnknown`](crate::ThrottleError::OutcomeUnknown)).
    /// Look the record up at the vendor before replaying it, or it may be applied twice.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub outcome_unknown: bool,
    /// When the request entered the dead-letter layer.
    #[cfg_attr(feature = "serde", serde(with = "rfc3339"))]
    pub first_attempt: SystemTime,
    /// When its final outcome came back.
    #[cfg_attr(feature = "serde", serde(with = "rfc3339"))]
    pub last_attempt: SystemTime,
}

impl DeadLetter {
    /// Rebuilds the request to send it again. Headers and query parameters whose value is
    /// `[REDACTED]` are left out: credentials must be added back by the service stack (an
    /// auth layer) or by [`ReplayOptions::prepare`](crate::ReplayOptions::prepare) (for a
    /// query parameter, with [`with_query_param`]).
    ///
    /// Fails with [`io::ErrorKind::InvalidData`] when a stored field is not a valid method,
    /// URI, header or base64 text (a hand-edited file).
    pub fn to_request<B: ReplayBody>(&self) -> io::Result<http::Request<B>> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("dead letter {}: invalid {what}: {e}", self.id),
            )
        };
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|e| invalid("method", &e))?;
        let uri: Uri = without_redacted_params(&self.uri)
            .parse()
            .map_err(|e| invalid("uri", &e))?;
        let mut req = http::Request::new(B::from_bytes(self.body.to_bytes()?));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (name, value) in &self.headers {
            if value == REDACTED {
                continue;
            }
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid("header", &e))?;
            let value = HeaderValue::from_str(value).map_err(|e| invalid("header", &e))?;
            req.headers_mut().append(name, value);
        }
        Ok(req)
    }
}

/// A stored request body: text when valid UTF-8 (readable in the file), base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum StoredBody {
    /// The body as UTF-8 text.
    Text(String),
    /// The body's bytes, standard base64 with padding.
    Base64(String),
}

impl StoredBody {
    /// Text when `bytes` are UTF-8, base64 otherwise.
    pub fn from_bytes(bytes: &[u8]) -> StoredBody {
        match std::str::from_utf8(bytes) {
            Ok(text) => StoredBody::Text(text.to_owned()),
            Err(_) => StoredBody::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The original bytes.
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            StoredBody::Text(t) => Ok(Bytes::from(t.clone())),
            StoredBody::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Header names whose values never reach a store, lower case.
pub(crate) const DEFAULT_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Query parameters whose values never reach a store: GA4 Measurement Protocol's
/// `api_secret`, Google APIs' `key`, HubSpot's legacy `hapikey`, Klaviyo's legacy `api_key`.
pub(crate) const DEFAULT_REDACTED_QUERY: [&str; 4] = ["api_secret", "key", "hapikey", "api_key"];

/// Whether the query parameter name `raw` (as written, maybe percent-encoded) is one of
/// `names` (ASCII case aside: `API_KEY=` is as secret as `api_key=`).
fn is_secret_param(raw: &str, names: &[Box<str>]) -> bool {
    let decoded = percent_decode(raw);
    names.iter().any(|n| n.eq_ignore_ascii_case(&decoded))
}

fn percent_decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with the value of every `name=value` query parameter named in `names` replaced by
/// `[REDACTED]`. In a URI (`in_uri`) a value ends at `&` or `#` only; in free text (an error
/// message quoting a URL) also at whitespace, quotes, brackets and commas, which end the URL
/// there. Parameters are found after `?`, `&` or `;`, so `monkey=1` is not `key`.
pub(crate) fn redact_query(text: &str, names: &[Box<str>], in_uri: bool) -> String {
    if names.is_empty() || !text.contains('=') {
        return text.to_owned();
    }
    let ends_value = |c: char| {
        matches!(c, '&' | '#')
            || (!in_uri
                && (c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ']' | '>' | ',' | '`')))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // In a URI only its query holds parameters; in free text any URL may start one.
    let mut in_query = false;
    while let Some(i) = rest.find(|c: char| matches!(c, '?' | '&' | ';') || (in_uri && c == '#')) {
        let sep = rest[i..].chars().next().unwrap_or('?');
        out.push_str(&rest[..=i]);
        rest = &rest[i + sep.len_utf8()..];
        if sep == '#' {
            break;
        }
        in_query |= sep == '?';
        if in_uri && !in_query {
            continue;
        }
        let name_end = rest
            .find(|c: char| c == '=' || c == '&' || c == '#' || (!in_uri && ends_value(c)))
            .unwrap_or(rest.len());
        if !rest[name_end..].starts_with('=') || !is_secret_param(&rest[..name_end], names) {
            continue;
        }
        out.push_str(&rest[..=name_end]);
        let value = &rest[name_end + 1..];
        let value_end = value.find(ends_value).unwrap_or(value.len());
        if value_end > 0 {
            out.push_str(REDACTED);
        }
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

/// `uri` without the query parameters whose stored value is `[REDACTED]` (they go out
/// without them, as redacted headers do).
pub(crate) fn without_redacted_params(uri: &str) -> std::borrow::Cow<'_, str> {
    let marker = format!("={REDACTED}");
    if !uri.contains(&marker) {
        return uri.into();
    }
    let (head, fragment) = match uri.find('#') {
        Some(i) => uri.split_at(i),
        None => (uri, ""),
    };
    let Some((path, query)) = head.split_once('?') else {
        return uri.into();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.ends_with(&marker))
        .collect();
    let mut out = path.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out.push_str(fragment);
    out.into()
}

/// The names of the query parameters `uri` holds redacted.
pub(crate) fn redacted_param_names(uri: &str) -> Vec<Box<str>> {
    let marker = format!("={REDACTED}");
    let query = uri.split('#').next().unwrap_or("");
    let Some((_, query)) = query.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.strip_suffix(&marker))
        .map(|name| percent_decode(name).into())
        .collect()
}

/// `uri` with the query parameter `name` set to `value` (replacing any already there), both
/// percent-encoded: how a [`replay`](crate::replay()) puts back a secret the store never
/// kept, from [`ReplayOptions::prepare`](crate::ReplayOptions::prepare).
///
/// ```
/// use tower_throttle::dead_letter::with_query_param;
///
/// let uri: http::Uri = "https://www.google-analytics.com/mp/collect?measurement_id=G-1".parse()?;
/// let uri = with_query_param(&uri, "api_secret", "s3cr3t/+")?;
/// assert_eq!(
///     uri.to_string(),
///     "https://www.google-analytics.com/mp/collect?measurement_id=G-1&api_secret=s3cr3t%2F%2B"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// When the result is not a valid URI (it always is for a valid `uri`).
pub fn with_query_param(uri: &Uri, name: &str, value: &str) -> Result<Uri, http::uri::InvalidUri> {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    let pair = format!("{}={}", encode(name), encode(value));
    let mut query: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| percent_decode(p.split('=').next().unwrap_or("")) != name)
        .map(str::to_owned)
        .collect();
    query.push(pair);
    let mut text = String::new();
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        text.push_str(scheme);
        text.push_str("://");
        text.push_str(authority.as_str());
    }
    text.push_str(uri.path());
    text.push('?');
    text.push_str(&query.join("&"));
    text.parse()
}

/// Headers as stored: in order, credentials replaced by `[REDACTED]`, values that are not
/// visible ASCII kept lossily as UTF-8.
pub(crate) fn redacted_headers(
    headers: &HeaderMap,
    redact: &[HeaderName],
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if redact.contains(name) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// RFC 3339 UTC timestamps with milliseconds (`2026-11-23T18:15:42.123Z`), written and read
/// without a date library.
#[cfg(feature = "serde")]
pub(crate) mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn format(t: SystemTime) -> String {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64);
        let (secs, milli) = (ms / 1000, ms % 1000);
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }

    pub(crate) fn parse(s: &str) -> Option<SystemTime> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            let part = s.get(r)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let milli = match (b.get(19), b.last()) {
            (Some(b'Z'), _) if b.len() == 20 => 0,
            (Some(b'.'), Some(b'Z')) if b.len() == 24 => num(20..23)?,
            _ => return None,
        };
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let days = days_from_civil(y as i64, mo as u32, d as u32);
        let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + sec;
        UNIX_EPOCH.checked_add(Duration::from_millis(secs.checked_mul(1000)? + milli))
    }

    // Howard Hinnant's algorithms for the proleptic Gregorian calendar.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = i64::from((m + 9) % 12);
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 UTC time: {s}")))
    }
}

/// Serde's test for leaving a false flag out of the record.
#[cfg(feature = "serde")]
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "serde")]
    use std::time::{Duration, UNIX_EPOCH};

    #[cfg(feature = "serde")]
    #[test]
    fn rfc3339_round_trips_at_millisecond_precision() {
        for ms in [
            0u64,
            1,
            999,
            86_399_999,
            951_782_400_000,
            1_795_461_342_123,
            4_102_444_800_000,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let s = rfc3339::format(t);
            assert_eq!(rfc3339::parse(&s), Some(t), "{s}");
        }
        assert_eq!(rfc3339::format(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year).
        assert_eq!(
            rfc3339::format(UNIX_EPOCH + Duration::from_millis(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339::parse("2026-11-23T18:15:42Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_457_742))
        );
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T18:15:42.12Z",
            "2026-11-23T18:15:42+01:00",
            "2026-1a-23T18:15:42Z",
        ] {
            assert_eq!(rfc3339::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bodies_are_text_when_utf8_else_base64() {
        assert_eq!(
            StoredBody::from_bytes(b"{\"a\":1}"),
            StoredBody::Text("{\"a\":1}".into())
        );
        let raw = [0xff, 0x00, 0x10];
        let stored = StoredBody::from_bytes(&raw);
        assert_eq!(stored, StoredBody::Base64("/wAQ".into()));
        assert_eq!(stored.to_bytes().unwrap(), Bytes::copy_from_slice(&raw));
        assert!(StoredBody::Base64("***".into()).to_bytes().is_err());
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn names(extra: &[&str]) -> Vec<Box<str>> {
        DEFAULT_REDACTED_QUERY
            .iter()
            .chain(extra)
            .map(|&n| n.into())
            .collect()
    }

    #[test]
    fn secret_query_values_are_redacted_and_nothing_else() {
        let n = names(&["token"]);
        for (uri, want) in [
            (
                "https://a.example/p?key=1",
                "https://a.example/p?key=[REDACTED]",
            ),
            (
                "https://a.example/p?a=1&Api_Key=2&b=3#key=4",
                "https://a.example/p?a=1&Api_Key=[REDACTED]&b=3#key=4",
            ),
            // Percent-encoded names are the same names; `monkey` is not `key`.
            (
                "/p?api%5Fsecret=x&monkey=1&token=",
                "/p?api%5Fsecret=[REDACTED]&monkey=1&token=",
            ),
            // Before the query, `;` and `&` are path characters.
            ("/a;key=1/b&key=2", "/a;key=1/b&key=2"),
            ("/p?x=1;key=2", "/p?x=1;key=[REDACTED]"),
            ("/p", "/p"),
        ] {
            assert_eq!(redact_query(uri, &n, true), want, "{uri}");
        }
        // In free text a URL ends at a space, a quote or a bracket.
        assert_eq!(
            redact_query("for url (https://a/p?hapikey=abc) after 3 tries", &n, false),
            "for url (https://a/p?hapikey=[REDACTED]) after 3 tries"
        );
        assert_eq!(
            redact_query("\"https://a/p?x=1&token=t\", key=value", &n, false),
            "\"https://a/p?x=1&token=[REDACTED]\", key=value"
        );
    }

    #[test]
    fn redacted_parameters_are_left_out_of_a_replay_and_put_back_by_name() {
        let stored = "https://a/p?a=1&api_secret=[REDACTED]&key=[REDACTED]#f";
        assert_eq!(without_redacted_params(stored), "https://a/p?a=1#f");
        assert_eq!(
            without_redacted_params("https://a/p?key=[REDACTED]"),
            "https://a/p"
        );
        assert_eq!(
            redacted_param_names(stored),
            vec![Box::<str>::from("api_secret"), "key".into()]
        );
        let uri: Uri = "https://a/p?a=1&key=old".parse().unwrap();
        assert_eq!(
            with_query_param(&uri, "key", "n e&w").unwrap().to_string(),
            "https://a/p?a=1&key=n%20e%26w"
        );
        let bare: Uri = "/p".parse().unwrap();
        assert_eq!(
            with_query_param(&bare, "k", "v").unwrap().to_string(),
            "/p?k=v"
        );
    }
}
