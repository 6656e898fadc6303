//! tower-throttle: call rate-limited HTTP APIs as fast as they allow, and no faster.
//!
//! Users of Customer.io, HubSpot, Salesforce, Mailchimp or GA4 want every record delivered at
//! the API's rate without writing sleeps, retry loops or queues. This crate gives them tower
//! layers that stack in one `ServiceBuilder`:
//!
//! ```rust,ignore
//! let client = ServiceBuilder::new()
//!     .layer(DeadLetterLayer::new(store))              // nothing is lost: final failures kept
//!     .layer(RetryLayer::new(policy.with_bucket(bucket.clone()))) // 429 -> Retry-After, 5xx -> backoff
//!     .layer(AdaptiveLayer::probe(bucket.clone(), start, min, max)?) // learns an unknown limit
//!     .layer(RateLimitLayer::with_bucket(bucket))      // the shared gate
//!     .layer(TimeoutLayer::new(Duration::from_secs(30))) // per attempt
//!     .service(hyper_client);
//! ```
//!
//! # Stacking order, and why
//!
//! * **Retry above the gate.** A retry is just another request at the gate, so a retry storm
//!   can never exceed the limit; and the retry policy holds the gate's *shared* bucket on a
//!   429 with `Retry-After`, so every caller pauses, not only the one that was refused.
//! * **Adaptive control between them** sees every attempt, and moves the bucket's rate.
//! * **Dead letters on top** see only final outcomes: what retries could not deliver.
//! * **Timeout below the gate**: time spent waiting for a slot is not a failure of the API.
//!
//! [`Throttle::builder`] builds the whole stack in one call (dead letters, adaptive control,
//! a timeout and stats are optional), and [`ServiceBuilderExt`] adds `.throttle(limits,
//! policy)`, `.retry_429(..)`, `.shared_rate_limit(..)`, `.adaptive(..)` and
//! `.dead_letters(..)` to `ServiceBuilder`; both wire one bucket into the gate, the retry hold
//! and the adaptive controller.
//!
//! # With hyper
//!
//! Use `hyper_util::client::legacy::Client<_, Full<Bytes>>`: a `Full<Bytes>` body is cloned
//! cheaply for each retry ([`retry::ReplayBody`]); a streaming body is sent once and a needed
//! retry becomes [`ThrottleError::NotReplayable`].
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_throttle::{presets, RetryPolicy, Throttle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let client = Throttle::builder()
//!     .limits(presets::hubspot())
//!     .retry(RetryPolicy::default())
//!     .timeout(Duration::from_secs(30))
//!     .build(hyper)?;
//! // `client` is `Clone + Send + Sync`: clone it into every task, or keep it in app state.
//! # let _ = client;
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! The crate root holds what a stack is built from: [`Throttle::builder`] and
//! [`ServiceBuilderExt`], the layers, [`Quota`] and [`Limits`], the adaptive controllers
//! ([`Probe`], [`Aimd`], [`Cubic`], [`HeaderDriven`]), [`run_bulk`], [`FileStore`] and
//! [`replay`], and the errors. Everything else has its one path in a module:
//!
//! | module | what it holds |
//! |---|---|
//! | [`rate_limit`] | [`RateLimitLayer`]'s service, the keyed and weighted gates |
//! | [`bucket`] | [`bucket::Bucket`], [`LocalBucket`], [`bucket::KeyedBucket`], [`bucket::Clock`]: where admit decisions are made |
//! | [`retry`] | [`RetryLayer`], [`RetryPolicy`]: 429-aware retry over `tower::retry`; [`retry::ReplayBody`], [`retry::Attempts`] |
//! | [`classify`] | [`classify::Outcome`], [`classify::Classify`], [`classify::HttpClassifier`]: what a response means |
//! | [`backoff`], [`headers`] | backoff schedules; `Retry-After` and rate-limit headers |
//! | [`adaptive`] | [`AdaptiveLayer`] and its rate controllers (AIMD, header-driven, Cubic, Probe); a deterministic simulation |
//! | [`batch`] | [`BatchLayer`]: records coalesced into vendor batch requests (HubSpot, Customer.io, Mailchimp, JSON array), split back per item |
//! | [`queue`] | [`QueueLayer`]: bounded queue, concurrency and interval caps, priorities, depth |
//! | [`timeout`] | [`timeout::BodyTimeoutLayer`]: a per-attempt timeout that covers reading the response body |
//! | [`dead_letter`] | [`DeadLetterLayer`], [`FileStore`], [`replay`]: nothing is lost |
//! | [`metrics`] | [`metrics::Stats`]: counters, gauges and a health check; the `metrics` facade |
//! | [`presets`] | ready [`Limits`] for Customer.io, HubSpot, Salesforce, Mailchimp, GA4 |
//!
//! # Feature flags
//!
//! | feature | enables |
//! |---|---|
//! | `mock` | `mock`: a real HTTP server that rate-limits like the vendors, for tests and examples |
//! | `reqwest` | `reqwest`: a `reqwest_middleware::Middleware` with the same gate, retry, adaptive control and dead letters |
//! | `metrics` | counters and gauges through the `metrics` facade |
//! | `redis` | `bucket::RedisBucket` and `dead_letter::RedisStore`: one limit and one dead-letter store for a fleet of processes |
//! | `file-store` (default) | `FileStore`: the embedded, durable dead-letter store (JSON lines, fsync) |
//! | `serde` | `Serialize`/`Deserialize` for `DeadLetter` (on with `file-store` and `redis`) |
//! | `fast-clock` | `Clock::Fast`: buckets read the CPU's time-stamp counter (through `quanta`) instead of tokio's clock |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[macro_use]
mod macros;

pub mod adaptive;
pub mod backoff;
pub mod batch;
mod body;
pub mod bucket;
mod builder;
mod bulk;
pub mod classify;
mod clock;
pub mod dead_letter;
mod error;
pub mod headers;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod presets;
pub mod queue;
mod quota;
pub mod rate_limit;
#[cfg(feature = "reqwest")]
pub mod reqwest;
pub mod retry;
pub mod timeout;
// The mock server's limiters, also used by the adaptive simulation (both feature `mock`).
#[cfg(feature = "mock")]
mod server_limit;
mod sync;

// Every Rust snippet of the README compiles as written (imports included) and, where it needs
// no server, runs: `cargo test --doc` fails on a README that drifts from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}

// The crate root holds what the README uses: the builder, the layers, the quota types, the
// controllers and the errors. Everything else has its one path in its module.
pub use adaptive::{
    aimd::Aimd, cubic::Cubic, header_driven::HeaderDriven, layer::AdaptiveLayer, probe::Probe,
};
pub use batch::layer::BatchLayer;
pub use bucket::local::LocalBucket;
pub use builder::{
    BatchBuilder, Batched, Buffered, Inspected, ServiceBuilderExt, Streamed, Throttle,
    ThrottleBuilder,
};
pub use bulk::{run_bulk, BulkOptions, BulkReport, JobOutcome, Progress};
#[cfg(feature = "file-store")]
pub use dead_letter::file::FileStore;
pub use dead_letter::layer::DeadLetterLayer;
pub use dead_letter::replay::{replay, ReplayOptions};
pub use error::{ConfigError, ThrottleError};
pub use queue::layer::QueueLayer;
pub use quota::{Limits, Quota};
pub use rate_limit::layer::RateLimitLayer;
pub use retry::{layer::RetryLayer, policy::RetryPolicy};

// Shorthands inside the crate only (and for its docs' links).
pub(crate) use rate_limit::RateLimit;
pub(crate) use retry::ReplayBody;
