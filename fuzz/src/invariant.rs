//! The contract between the two readers of the IETF rate-limit fields
//! (`tower_throttle::headers::ParseMode`), checked against an independent RFC 9651 verdict.
//!
//! Shared by the `rate_limit_info` fuzz target and the property test in `tests/headers.rs`
//! (which includes this file with `#[path]`), so both check the same thing.

use std::time::SystemTime;

use http::HeaderMap;
use tower_throttle::headers::{rate_limit_info_with, HeaderFamily, ParseMode, RateLimitInfo};

/// The structured fields the IETF families read.
pub const IETF_FIELDS: [&str; 5] = [
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
];

/// RFC 9651's verdict on one field value: it parses as a List or as a Dictionary.
pub fn rfc9651_accepts(value: &[u8]) -> bool {
    sfv::Parser::new(value).parse::<sfv::List>().is_ok()
        || sfv::Parser::new(value).parse::<sfv::Dictionary>().is_ok()
}

/// The field lines of `name` combined as RFC 9651 §4.2 says; `None` when there are none.
fn combined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let lines: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    (!lines.is_empty()).then(|| lines.join(&b", "[..]))
}

fn field_accepted(headers: &HeaderMap, name: &str) -> bool {
    combined(headers, name).is_some_and(|v| rfc9651_accepts(&v))
}

/// Every line of `name` is valid on its own and so is their combination (vacuously true for
/// an absent field). Only then does the lenient reader, which reads line by line, see the
/// same members as RFC 9651.
fn field_clean(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .all(|line| rfc9651_accepts(line.as_bytes()))
        && combined(headers, name).is_none_or(|v| rfc9651_accepts(&v))
}

/// Checks, for one response's headers:
///
/// 1. the strict reader reports nothing from a structured field that RFC 9651 rejects;
/// 2. where RFC 9651 accepts every structured field, line by line, the lenient reader reports
///    exactly what the strict one does.
pub fn check(headers: &HeaderMap, now: SystemTime) -> Result<(), String> {
    let strict = rate_limit_info_with(headers, now, ParseMode::Strict);
    let lenient = rate_limit_info_with(headers, now, ParseMode::Lenient);
    if let Some(info) = &strict {
        strict_sources_are_valid(headers, info)?;
    }
    if IETF_FIELDS.iter().all(|name| field_clean(headers, name)) && strict != lenient {
        return Err(format!(
            "readers disagree on RFC 9651-valid fields:\n  strict:  {strict:?}\n  lenient: {lenient:?}"
        ));
    }
    Ok(())
}

fn strict_sources_are_valid(headers: &HeaderMap, info: &RateLimitInfo) -> Result<(), String> {
    let need = |name: &str| {
        if field_accepted(headers, name) {
            Ok(())
        } else {
            Err(format!(
                "strict reader used `{name}`, which RFC 9651 rejects: {info:?}"
            ))
        }
    };
    match info.source {
        HeaderFamily::RateLimit => need("ratelimit")?,
        HeaderFamily::RateLimitSplit => {
            for (value, name) in [
                (info.remaining.is_some(), "ratelimit-remaining"),
                (info.reset.is_some(), "ratelimit-reset"),
            ] {
                if value {
                    need(name)?;
                }
            }
            if info.limit.is_some() && !field_accepted(headers, "ratelimit-limit") {
                need("ratelimit-policy")?;
            }
        }
        _ => return Ok(()),
    }
    if info.window.is_some() || info.quota_unit.is_some() {
        need("ratelimit-policy")?;
    }
    Ok(())
}
