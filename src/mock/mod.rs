//! A real HTTP/1.1 server that rate-limits the way MarTech APIs do (feature `mock`).
//!
//! Point a client (this crate's stack, a test, a benchmark, an example) at it and it answers
//! like Customer.io or HubSpot would: `200` while under the limit, `429 Too Many Requests`
//! with a `Retry-After` once over it, optional rate-limit headers, injected `503`s and latency.
//! Afterwards it tells you exactly what it saw, so a test can assert that the client never
//! burst past the limit and that every record arrived exactly once.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let server = MockServer::builder()
//!         .limit(ServerLimit::sliding_window(3, Duration::from_secs(10))?)
//!         .retry_after(RetryAfterFormat::Seconds)
//!         .start()
//!         .await?;
//!
//!     let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//!     let mut statuses = Vec::new();
//!     for _ in 0..5 {
//!         let resp = client.get(server.uri("/v1/track")).await?;
//!         statuses.push(resp.status().as_u16());
//!     }
//!     assert_eq!(statuses, [200, 200, 200, 429, 429]);
//!
//!     let stats = server.stats();
//!     assert_eq!((stats.received, stats.accepted, stats.rate_limited), (5, 3, 2));
//!     assert!(server.max_accepted_in_any_window(Duration::from_secs(10)) <= 3);
//!     server.shutdown().await;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```
//!
//! # Behaviour
//!
//! * **Limits** ([`ServerLimit`]): a sliding window (at most `n` in *any* interval of length
//!   `period`, exact) or a token bucket (rate and burst). One default limit is shared by every
//!   path without an override (a global, per-account limit); [`route_limit`] gives an exact
//!   path its own, independent limiter. Limits are per server, not per client or per key.
//!   [`MockServer::set_limit`] changes the limit while running.
//! * **429s** carry `Retry-After` as the time until the request would be accepted, rounded
//!   up to whole seconds, or as an HTTP-date with a matching `Date` header, or not at all
//!   ([`RetryAfterFormat`]). Refused requests consume nothing.
//! * **Rate headers** ([`RateHeaders`]): IETF `RateLimit-*`, `X-RateLimit-*`, both or none.
//! * **503s**: [`fail_ratio`] answers a seeded-random share of requests with `503` before the
//!   limit is consulted; a 503 consumes nothing.
//! * **Latency**: fixed or uniformly random, applied after the decision.
//! * Every request body is read completely before the decision; `200` bodies are small JSON
//!   objects echoing `x-request-id`.
//! * **Batch endpoints** ([`batch_route`]): a path that takes a vendor's batch body
//!   ([`BatchEndpoint`]: HubSpot, Customer.io, Mailchimp, a JSON array), refuses one over its
//!   item or byte limit (`400` / `413`, consuming nothing), counts an accepted batch as one
//!   request against the limit, and fails a seeded share of its items transiently
//!   ([`item_fail_ratio`]) or permanently ([`item_reject_ratio`]) in a `207 Multi-Status`
//!   answer of the vendor's form. Written items' record ids go through the same duplicate
//!   check as `x-request-id`s.
//! * Time is `tokio::time`, so the limits follow a paused test clock like the rest of the
//!   crate (the `HttpDate` form necessarily uses the wall clock).
//!
//! [`route_limit`]: MockServerBuilder::route_limit
//! [`fail_ratio`]: MockServerBuilder::fail_ratio
//! [`batch_route`]: MockServerBuilder::batch_route
//! [`item_fail_ratio`]: MockServerBuilder::item_fail_ratio
//! [`item_reject_ratio`]: MockServerBuilder::item_reject_ratio

mod answer;
mod batch;
mod config;
mod error;
mod mailchimp;
mod records;
mod server;
mod stats;

pub use crate::server_limit::{Decision, ServerLimit, ServerLimiter};
pub use batch::{
    BatchEndpoint, BatchShape, BRAZE_MAX_OBJECTS, MAILCHIMP_MAX_MEMBERS,
    MAILCHIMP_MAX_PENDING_BATCHES,
};
pub use config::{MockServerBuilder, RateHeaders, RetryAfterFormat, DEFAULT_SEED};
pub use error::StartError;
pub use records::RecordCounts;
pub use server::MockServer;
pub use stats::{max_in_any_window, MockStats, MAX_RECORDED};
