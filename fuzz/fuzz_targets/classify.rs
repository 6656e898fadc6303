//! The classify path a response takes: status overrides, the built-in table and the capped
//! `Retry-After`, for any status and headers.
#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tower_throttle::classify::{Classify, HttpClassifier, Outcome};
use tower_throttle_fuzz::decode;

fuzz_target!(|data: &[u8]| {
    let input = decode(data);
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let classifier = HttpClassifier::new()
        .retry_after_cap(input.cap)
        // An API that throttles with 403, as some do: the override path.
        .status(
            StatusCode::FORBIDDEN,
            Outcome::RateLimited { retry_after: None },
        );
    let outcome = classifier.classify_response(status, &input.headers, input.now);
    match outcome {
        Outcome::RateLimited { retry_after } => {
            assert!(status.as_u16() == 429 || status == StatusCode::FORBIDDEN);
            assert!(retry_after.map_or(true, |d| d <= input.cap));
        }
        Outcome::Success => assert!(status.is_success() || status.is_redirection()),
        Outcome::Transient | Outcome::Permanent => {}
    }
});
