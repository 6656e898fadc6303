//! Every rate-limit header family (IETF structured and split, `X-RateLimit-*`, HubSpot): any
//! header bytes and any clock give `None` or a report, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_throttle::headers::rate_limit_info;
use tower_throttle_fuzz::decode;

fuzz_target!(|data: &[u8]| {
    let input = decode(data);
    if let Some(info) = rate_limit_info(&input.headers, input.now) {
        // Formatting walks every field (policy names are copied from the input).
        let _ = format!("{info:?}");
    }
});
