//! `Retry-After` (delta-seconds, three HTTP-date forms, against the response `Date`): any
//! header bytes and any clock give `None` or a wait within the cap, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_throttle::headers::retry_after;
use tower_throttle_fuzz::decode;

fuzz_target!(|data: &[u8]| {
    let input = decode(data);
    if let Some(wait) = retry_after(&input.headers, input.now, input.cap) {
        assert!(wait <= input.cap, "{wait:?} above the cap {:?}", input.cap);
    }
});
