//! Every rate-limit header family (IETF structured and split, `X-RateLimit-*`, HubSpot,
//! Shopify, Salesforce): any header bytes and any clock give `None` or a report, never a panic;
//! and the strict reader keeps its contract with RFC 9651 (`tower_throttle_fuzz::invariant`):
//! it never takes a value from a field an RFC 9651 parser rejects, and where every structured
//! field is valid the lenient reader reports exactly what the strict one does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_throttle::headers::rate_limit_info;
use tower_throttle_fuzz::{decode, invariant};

fuzz_target!(|data: &[u8]| {
    let input = decode(data);
    if let Some(info) = rate_limit_info(&input.headers, input.now) {
        // Formatting walks every field (policy names are copied from the input).
        let _ = format!("{info:?}");
    }
    if let Err(broken) = invariant::check(&input.headers, input.now) {
        panic!("{broken}\nheaders: {:?}", input.headers);
    }
});
