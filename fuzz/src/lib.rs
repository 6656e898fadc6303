//! Turns fuzz input into the values the targets feed the crate.
//!
//! The input is text so that the corpus stays readable: a first line of numbers (`now` in
//! seconds since the Unix epoch, a cap in milliseconds, a status), then one `name: value`
//! header per line. Values are kept byte for byte (after the first space), so the fuzzer can
//! put anything a server could send into them; lines that are not a valid header are skipped,
//! as `http` would refuse them before they reach a parser.

pub mod invariant;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The numbers of the first line and the headers after it.
#[derive(Debug)]
pub struct Input {
    /// The caller's clock.
    pub now: SystemTime,
    /// A `Retry-After` cap.
    pub cap: Duration,
    /// A status code for the classifier (any `u16`; invalid ones are skipped by the target).
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
}

fn number(field: Option<&[u8]>) -> Option<i128> {
    std::str::from_utf8(field?).ok()?.trim().parse().ok()
}

/// Decodes `data`; never fails (missing numbers take defaults).
pub fn decode(data: &[u8]) -> Input {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut fields = first.split(|b| *b == b' ');
    let now_secs = number(fields.next()).unwrap_or(1_700_000_000);
    let cap_ms = number(fields.next()).unwrap_or(60_000);
    let status = number(fields.next()).unwrap_or(429);

    // Clocks before 1970 and far in the future are legal inputs: a skewed host.
    let offset = Duration::from_secs(now_secs.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    let now = if now_secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
    .unwrap_or(UNIX_EPOCH);
    let cap = Duration::from_millis(cap_ms.clamp(0, i128::from(u64::MAX)) as u64);
    let status = status.clamp(0, i128::from(u16::MAX)) as u16;

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    Input {
        now,
        cap,
        status,
        headers,
    }
}
