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
//!   ([`BatchEndpoint`]: HubSpot, Customer.io, Braze, Mailchimp batches and list
//!   batch-subscribe, a JSON array; see [Batch answers](#batch-answers)), refuses one over its
//!   item or byte limit (`400` / `413`, consuming nothing), counts an accepted batch as one
//!   request against the limit, and fails a seeded share of its items transiently
//!   ([`item_fail_ratio`]) or permanently ([`item_reject_ratio`]) in a `207 Multi-Status`
//!   answer of the vendor's form, or injects the other answers of [Faults](#faults). Written items' record ids go through the same duplicate
//!   check as `x-request-id`s.
//! * **Records** ([`RecordCounts`]): batch routes store what they apply by identity, per
//!   concrete path, so [`MockStats::records_applied`], [`MockStats::records_written_twice`]
//!   and [`MockServer::records_on`] tell "every valid record applied once" from "written
//!   twice" and from "never applied".
//! * Time is `tokio::time`, so the limits follow a paused test clock like the rest of the
//!   crate (the `HttpDate` form necessarily uses the wall clock).
//!
//! # Batch answers
//!
//! Each [`BatchShape`] answers as its vendor documents (sources on each
//! [`BatchEndpoint`] constructor). `<t>` is the input's `objectWriteTraceId`.
//!
//! | shape | applied | failed items |
//! |---|---|---|
//! | HubSpot | `200 {"status":"COMPLETE","results":[{"id":"1001","objectWriteTraceId":"<t>","properties":{..},"archived":false,"new":true}]}` (`new` on upserts only) | `207` with `"numErrors":n,"errors":[{"status":"error","category":..,"message":..,"context":{"objectWriteTraceId":["<t>"]}}]`; categories `VALIDATION_ERROR` (rejected), `INTERNAL_ERROR` (transient), `RATE_LIMITS`, `OBJECT_ALREADY_EXISTS` (a `create` of a stored identity) |
//! | Customer.io | `200 {}` | `207 {"errors":[{"batch_index":1,"reason":"invalid","field":"identifiers","message":..}]}`, reasons `invalid`, `internal`, `rate_limited` |
//! | Braze | `201 {"message":"success","attributes_processed":n,..}` (one count per array sent) | the same `201` with `"errors":[{"type":..,"input_array":"events","index":0}]`; `400` with the errors when no object was valid |
//! | Mailchimp | `200 {"id":..,"status":"pending","total_operations":n,..}`; then `GET {path}/{id}`: `started` the first time, `finished` after, with `finished_operations`, `errored_operations` and `response_body_url` | in the results at `response_body_url`: `[{"status_code":400,"operation_id":..,"response":"<JSON text>"}]` |
//! | Mailchimp list | `200 {"new_members":[..],"updated_members":[..],"errors":[],"total_created":n,"total_updated":n,"error_count":0}` | in `errors`: `{"email_address":..,"error":..,"error_code":"ERROR_GENERIC"}` or `ERROR_CONTACT_EXISTS` |
//! | JSON array | `200 [{"status":200},..]` | `207` with `{"status":400,"error":..}` (or 409, 429, 503) in place |
//!
//! Real Mailchimp serves `response_body_url` as a gzipped tar archive of JSON files on its
//! storage; the mock serves the same per-operation objects as one plain JSON array, from
//! `GET {path}/{id}/results`, outside the limit. A batch is pending (toward the cap of
//! [`BatchEndpoint::max_pending`], [`MAILCHIMP_MAX_PENDING_BATCHES`] by default, beyond which
//! the call is answered `429`) until a status request has reported it `finished`. The mock
//! applies a batch's operations when it accepts it.
//!
//! Identities ([`MockServer::record_writes`]): HubSpot `upsert` and `update` by the input's
//! `id` with its `idProperty`, `create` by `properties.email` (else none: every create is a
//! new object); Customer.io by `identifiers` (`id`, `email`, `cio_id`), events appended;
//! Braze attributes by `external_id` (or `braze_id`, `email`, `user_alias`), events and
//! purchases appended; Mailchimp operations by path (`POST` by path and member email),
//! list members by email. An `update` of an identity the mock has not seen applies it, as if
//! the record had existed before.
//!
//! # Faults
//!
//! All deterministic for a [`seed`](MockServerBuilder::seed) and an arrival order; item
//! ratios are drawn per item from one stream, batch ratios per batch from another.
//!
//! | option | unit | what the client gets |
//! |---|---|---|
//! | [`item_fail_ratio`] | item | a transient item error |
//! | [`item_reject_ratio`] | item | a permanent item error |
//! | [`item_rate_limit_ratio`] (+ [`item_retry_after`]) | item | HubSpot `RATE_LIMITS` in a `207` (with `Retry-After`), not applied |
//! | [`unattributed_error_ratio`] | item | a HubSpot error with `context.ids` or no context, counted in `numErrors`, not applied, not in `results` |
//! | [`errors_in_ok_ratio`] | batch | a Customer.io `200` carrying `errors[]` |
//! | [`bad_input_marker`] | trigger | the whole batch `400` when any input's text holds the marker; nothing applied |
//! | [`timeout_after_apply`] | batch | applied, then silence for a given time |
//!
//! [`item_rate_limit_ratio`]: MockServerBuilder::item_rate_limit_ratio
//! [`item_retry_after`]: MockServerBuilder::item_retry_after
//! [`unattributed_error_ratio`]: MockServerBuilder::unattributed_error_ratio
//! [`errors_in_ok_ratio`]: MockServerBuilder::errors_in_ok_ratio
//! [`bad_input_marker`]: MockServerBuilder::bad_input_marker
//! [`timeout_after_apply`]: MockServerBuilder::timeout_after_apply
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
