//! tower-throttle: call rate-limited HTTP APIs as fast as they allow, and no faster.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod adaptive;
pub mod backoff;
mod body;
pub mod bucket;
pub mod bulk;
pub mod classify;
mod clock;
pub mod dead_letter;
mod error;
pub mod headers;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod queue;
mod quota;
pub mod rate_limit;
pub mod retry;
mod sync;

pub use adaptive::AdaptiveLayer;
pub use backoff::{Backoff, Jitter};
pub use body::ReplayBody;
pub use bucket::{Bucket, LocalBucket};
pub use bulk::{run_bulk, BulkOptions, BulkReport, JobOutcome, Progress};
pub use classify::{Classify, HttpClassifier, Outcome};
pub use dead_letter::{
    replay, DeadLetter, DeadLetterLayer, DeadLetterStore, FileStore, MemoryStore, ReplayOptions,
    ReplayReport,
};
pub use error::{ConfigError, ThrottleError};
pub use metrics::{Stats, StatsSnapshot};
pub use queue::{Priority, QueueHandle, QueueLayer};
pub use quota::{Limits, Quota};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use retry::{Attempts, RetryLayer, RetryPolicy};
