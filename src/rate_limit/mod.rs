//! The shared token-bucket gate as tower middleware.
//!
//! [`RateLimitLayer`](crate::RateLimitLayer) turns a bucket into a `poll_ready` gate: readiness reserves the next
//! slot (waiting callers each get their own slot, one interval apart, so they are released in
//! order and never as a herd), `call` uses it, and a ready handle dropped without `call` gives
//! it back. Unlike [`tower::limit::RateLimit`], the state is not per instance: every clone
//! and every service the layer builds share one bucket, so no `Buffer` is needed to make a
//! limit global, and the limit is a bucket with burst and several windows rather than a
//! fixed window. A run-time rate change ([`Bucket::set_rate`](crate::bucket::Bucket::set_rate),
//! which the adaptive layer drives) reaches callers already waiting: after a cut they re-slot
//! when their slot comes, after a raise of more than an eighth they are woken at once.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = RateLimitLayer::new(Quota::per_second(10)?).with_max_wait(Duration::from_secs(30));
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) }));
//!
//! let start = tokio::time::Instant::now();
//! // Two clones, one limit: the second call waits for the next slot, 100 ms later.
//! assert_eq!(svc.clone().oneshot(1).await?, 2);
//! assert_eq!(svc.clone().oneshot(2).await?, 4);
//! assert_eq!(start.elapsed(), Duration::from_millis(100));
//! # Ok(()) }
//! ```
//!
//! [`KeyedRateLimitLayer`] keeps one bucket per destination; read its docs for how waiting
//! differs when the key comes from the request. [`WeightedRateLimitLayer`] admits each request
//! at its [`Cost`] (records, bytes, tokens), for limits that count more than calls.

pub mod future;
mod gate;
mod keyed;
pub(crate) mod layer;
mod service;
pub(crate) mod wait;
mod weighted;

pub(crate) use keyed::Destination;
pub use keyed::{ByAuthority, DestinationKey, KeyFn, KeyedRateLimit, KeyedRateLimitLayer};
pub use layer::IntoLocalBucket;
pub use service::RateLimit;
pub use weighted::{Cost, WeightedRateLimit, WeightedRateLimitLayer};
