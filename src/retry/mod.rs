//! Retrying with respect for the server: 429s wait out `Retry-After` for everyone, transient
//! failures back off with jitter, other 4xx never retry.
//!
//! [`RetryLayer`] builds tower's own [`Retry`](tower::retry::Retry) service around a
//! [`RetryPolicy`]: the retry loop lives in a future (no thread sleeps, no recursion), and the
//! policy reads the whole response, so it sees `Retry-After` (delta-seconds or HTTP-date,
//! capped) rather than only an error string (reqwest-middleware#146).
//!
//! # Stacking order
//!
//! ```text
//! DeadLetterLayer     sees final outcomes only
//!   RetryLayer        one logical request, several attempts
//!     AdaptiveLayer   sees every attempt, moves the bucket's rate
//!       RateLimitLayer  every attempt, first or retry, takes a slot from the shared bucket
//!         InspectBodyLayer  (streaming clients) reads a 429's body for the policy, within bounds
//!           client
//! ```
//!
//! Retry above the gate is what makes a retry storm impossible: a retry is just another
//! request at the gate. Attach the gate's bucket to the policy ([`RetryPolicy::with_bucket`])
//! and a 429 with `Retry-After` holds the *shared* bucket, so every task pauses until then and
//! resumes paced, instead of the refused task alone sleeping while the others keep hitting the
//! server (the thundering herd of the naive sleep-on-429 loop).
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::{retry::Attempts, RetryLayer, RetryPolicy};
//! use tower_throttle::{LocalBucket, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let bucket = LocalBucket::new(Quota::per_second(80)?);
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! // A server that refuses the first call with "429, come back in 2 s".
//! let api = service_fn(move |_req: http::Request<Full<Bytes>>| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 429 } else { 200 };
//!         Ok::<_, tower::BoxError>(
//!             http::Response::builder().status(status).header("retry-after", "2").body(())?,
//!         )
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::default().with_bucket(bucket.clone())))
//!     .layer(RateLimitLayer::with_bucket(bucket))
//!     .service(api);
//!
//! let start = tokio::time::Instant::now();
//! let req = http::Request::post("https://track.customer.io/api/v1/customers/42")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let res = client.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! assert!(start.elapsed() >= Duration::from_secs(2));
//! # Ok(()) }
//! ```

//!
//! # A spent daily allowance (HubSpot)
//!
//! HubSpot refuses both its ten-secondly and its daily limit with a plain 429 and no
//! `Retry-After`; only the body's `policyName` tells them apart (and, for private apps only,
//! `X-HubSpot-RateLimit-Daily-Remaining: 0`). A daily refusal holds every caller until the
//! daily reset ([`Classify::quota_reset`](crate::classify::Classify::quota_reset)) instead of
//! burning retries on a server that will refuse them all day. What the policy needs is to see
//! the body:
//!
//! | stack | the 429's body is read by |
//! |---|---|
//! | `Throttle::builder().timeout(..)` (buffered) | the policy itself (a `Full<Bytes>` body) |
//! | `Throttle::builder().head_timeout(..)`, or no timeout (streaming) | nothing, unless `.inspect_bodies(within)` is added ([`ThrottleBuilder::inspect_bodies`](crate::ThrottleBuilder::inspect_bodies)) |
//! | your own `ServiceBuilder` over a streaming client | an [`InspectBodyLayer`] below the [`RetryLayer`] |
//! | the reqwest middleware ([`ThrottleMiddleware`](crate::reqwest::ThrottleMiddleware)) | the middleware itself, within an [`InspectBodyLayer`]'s bounds ([`with_inspect_time_limit`](crate::reqwest::ThrottleMiddleware::with_inspect_time_limit)); the caller gets the same bytes |
//!
//! A body larger than [`MAX_BODY_INSPECTED`](crate::classify::MAX_BODY_INSPECTED), slower
//! than the inspection's time bound, or failing is handed on whole and read as a plain 429.

mod count;
pub(crate) mod defer;
pub mod future;
mod hold;
mod inspect;
pub(crate) mod layer;
pub(crate) mod policy;

pub use crate::body::ReplayBody;
pub(crate) use count::AttemptCell;
pub use inspect::{InspectBody, InspectBodyLayer, InspectedBody, PrefixedBody};
pub(crate) use layer::RetryLayer;
pub(crate) use policy::RetryPolicy;
pub(crate) use policy::{seen_body, MIN_QUOTA_WAIT};
pub use policy::{Attempts, Idempotent};
#[cfg(feature = "reqwest")]
pub(crate) use policy::{Observed, Step};
