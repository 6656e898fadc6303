//! tower-throttle: call rate-limited HTTP APIs as fast as they allow, and no faster.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod backoff;
pub mod bucket;
pub mod classify;
mod clock;
mod error;
pub mod headers;
#[cfg(feature = "mock")]
pub mod mock;
mod quota;
pub mod rate_limit;
pub mod retry;
mod sync;

pub use backoff::{Backoff, Jitter};
pub use bucket::{Bucket, LocalBucket};
pub use classify::{Classify, HttpClassifier, Outcome};
pub use error::{ConfigError, ThrottleError};
pub use quota::{Limits, Quota};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use retry::{RetryLayer, RetryPolicy};
