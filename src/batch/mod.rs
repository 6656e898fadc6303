//! Batching: many records, one request. [`BatchLayer`](crate::BatchLayer) coalesces per-record requests into a
//! vendor's batch request (at most N items, at most B body bytes, at most a linger time),
//! sends it through the layers below as *one* request, and splits the answer back so each
//! caller gets its own record's response.
//!
//! HubSpot's batch endpoints take 100 records per call and count as one call: at 100 calls
//! per 10 s that is 1,000 records per second instead of 10, and a 100,000-contact sync takes
//! about 100 s instead of 10,000 s. tower has no batching middleware; tower's `Buffer` queues
//! requests for one worker but still sends them one by one.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::{batch::HubSpotBatch, BatchLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // A stand-in for HubSpot: it rejects the input whose trace id is "1" (the second item).
//! let api = service_fn(|req: http::Request<Full<Bytes>>| async move {
//!     assert_eq!(req.uri().path(), "/crm/v3/objects/contacts/batch/upsert");
//!     let body = req.into_body().collect().await?.to_bytes();
//!     let inputs: serde_json::Value = serde_json::from_slice(&body)?;
//!     assert_eq!(inputs["inputs"].as_array().unwrap().len(), 3); // one request, three records
//!     let answer = r#"{"status":"COMPLETE","results":[],"errors":[{"status":"error",
//!         "category":"VALIDATION_ERROR","message":"invalid email",
//!         "context":{"objectWriteTraceId":["1"]}}]}"#;
//!     Ok::<_, tower::BoxError>(http::Response::builder().status(207).body(Full::new(Bytes::from(answer)))?)
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BatchLayer::new(HubSpotBatch::upsert("contacts")).with_linger(Duration::from_millis(50)))
//!     .service(api);
//!
//! let contact = |email: &str| {
//!     let body = format!(r#"{{"id":"{email}","idProperty":"email","properties":{{}}}}"#);
//!     http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
//!         .body(Full::from(body))
//!         .unwrap()
//! };
//! let (a, b, c) = tokio::join!(
//!     client.clone().oneshot(contact("a@example.com")),
//!     client.clone().oneshot(contact("not an email")),
//!     client.clone().oneshot(contact("c@example.com")),
//! );
//! // Each caller gets its own record's outcome.
//! assert_eq!([a?.status(), b?.status(), c?.status()].map(|s| s.as_u16()), [200, 400, 200]);
//! # Ok(()) }
//! ```
//!
//! # Stacking
//!
//! ```text
//! DeadLetterLayer      per item: a record that failed for good is kept on its own
//!   BatchLayer         records -> batches; answers split per record, refusals bisected
//!     RetryLayer       per batch: a 429 holds the shared gate, the same batch is sent again
//!       RateLimitLayer the batch takes one slot (WeightedRateLimitLayer: its cost)
//!         client
//! ```
//!
//! * **Each record's outcome is what the vendor said about it.** The [`BatchFormat`] splits
//!   every answer that is not the retry layer's business (a 2xx, a 207 Multi-Status, a 200
//!   that names failed items, a final 4xx) into one [`ItemResult`] per record. A record the
//!   answer names is answered with its own status and body: delivered at once, failed for
//!   good (the dead-letter layer above keeps that record alone), or, when transient (429,
//!   5xx, 408 by the classifier), sent again after the policy's back-off (a 429's
//!   `Retry-After`, which also holds the shared gate when the layer has the bucket), at most
//!   [`with_max_item_attempts`](crate::BatchLayer::with_max_item_attempts) sends in all.
//! * **Nothing is reported delivered that the vendor did not confirm.** An answer that counts
//!   failures it does not pin on records leaves the records it does not clear
//!   [unattributed](ItemResult::unattributed); a batch refused as a whole (a final 4xx, which
//!   applied nothing) leaves every record it does not name unsettled. Unsettled records are
//!   split into halves sent on their own, recursively, paced through the gate, until each
//!   answer is about one record: one bad record among 100 costs about `log2(100) = 7` extra
//!   calls and the other 99 are delivered ([`BatchStats::bisections`]). Where a resend is not
//!   safe ([`Resend::Unsafe`]) unattributed records of a 2xx fail with
//!   [`BatchError::Unattributed`] instead.
//! * **Whole-batch 429 and 5xx** are the retry layer's business: it sits below, holds the
//!   shared bucket on `Retry-After`, and sends the *same* batch again (a buffered, replayable
//!   [`ReplayBody`](crate::ReplayBody)). If it still fails, every record gets that final
//!   answer and is dead-lettered one by one.
//! * **At-least-once or at-most-once, per format.** A batch whose answer was lost (a timeout,
//!   a reset after it was written) may have been applied. Formats say what a resend does
//!   ([`BatchFormat::resend`]): upserts and updates ([`Resend::Safe`]: HubSpot upsert and
//!   update, Customer.io identify, Braze attributes, Mailchimp members upsert) are resent by
//!   the retry layer; creates and events ([`Resend::Unsafe`]: HubSpot create, Braze events
//!   and purchases, Mailchimp's `/batches`) are not, and each record fails with
//!   [`ThrottleError::OutcomeUnknown`](crate::ThrottleError::OutcomeUnknown), which the
//!   dead-letter layer keeps marked for reconciliation; a create keyed by a unique property
//!   ([`Resend::Provable`]: [`HubSpotBatch::proven_by`], [`MailchimpMembers::subscribe`]) is
//!   resent, and a record the resend finds already there is delivered. Single requests follow
//!   the same rule by method ([`Idempotent`](crate::retry::Idempotent)).
//! * **Accepted is not delivered.** An asynchronous endpoint's receipt (Mailchimp's
//!   `/batches`) answers each record `202 Accepted`, counted apart
//!   ([`BatchStats::accepted`], [`BulkReport::accepted`](crate::BulkReport::accepted)).
//! * **One record, one order.** Records with the same identity ([`BatchFormat::identity`]: a
//!   contact's email, a person's identifiers) never share a batch, and a later one waits
//!   until the earlier one is answered, retries included, so updates land in order.
//! * **Within the gate's burst.** A batch the weighted gate below can never admit
//!   ([`ThrottleError::CostTooHigh`](crate::ThrottleError::CostTooHigh)) is not sent: the
//!   layer learns the gate's burst and cuts batches to fit it.
//! * **Cancellation.** Dropping an item's future withdraws it: it never goes out if its batch
//!   has not been sent, and it no longer counts toward any batch's limits.
//!
//! [`Throttle::builder().batch(format)`](crate::ThrottleBuilder::batch) builds this stack in
//! one call, with the shared bucket and the retry policy's back-off wired in.
//!
//! * **Origins.** Items are grouped by scheme, authority and `Authorization` header; a batch
//!   carries the headers of its first item (minus `Content-Length` and `x-request-id`).
//!
//! # Cost
//!
//! Every batch request carries a [`BatchInfo`] extension with its item count, body bytes and
//! [`BatchFormat::cost`] (1 for vendors that count calls), and the same cost as a
//! [`Cost`](crate::rate_limit::Cost), which a
//! [`WeightedRateLimitLayer`](crate::rate_limit::WeightedRateLimitLayer) below admits the batch
//! at, atomically across every window (limits that count records or objects, as Braze's do).

mod braze;
mod customerio;
mod format;
pub mod future;
mod hubspot;
mod json_array;
pub(crate) mod layer;
mod mailchimp;
mod service;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tower::BoxError;

pub use braze::BrazeTrack;
pub use customerio::{CustomerIoBatch, CUSTOMERIO_MAX_BYTES, CUSTOMERIO_MAX_ITEMS};
pub use format::{BatchFormat, Envelope, ItemResult, Resend, Sent};
pub use hubspot::{HubSpotBatch, HUBSPOT_MAX_INPUTS};
pub use json_array::JsonArrayBatch;
pub use mailchimp::{
    MailchimpBatch, MailchimpMembers, MAILCHIMP_MAX_CONNECTIONS, MAILCHIMP_MAX_MEMBERS,
    MAILCHIMP_MAX_OPERATIONS,
};
pub use service::Batch;

/// What an item's caller receives.
pub(crate) type ItemOutcome = Result<http::Response<Full<Bytes>>, BoxError>;

/// Request extension on every batch request: its size and what it costs against the limit.
///
/// ```
/// use tower_throttle::batch::BatchInfo;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(BatchInfo { items: 100, bytes: 9_000, cost: 1 });
/// assert_eq!(req.extensions().get::<BatchInfo>().map(|b| b.cost), Some(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchInfo {
    /// Items in the batch.
    pub items: usize,
    /// Body bytes.
    pub bytes: usize,
    /// [`BatchFormat::cost`] of this batch, in the limit's units.
    pub cost: u32,
}

/// Response extension on every item's response: how many batches it went in (more than one
/// when it was re-batched after a transient failure). The item's total HTTP attempts are in
/// its [`Attempts`](crate::retry::Attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchedItem {
    /// Batches the item was sent in.
    pub batches: u32,
}

/// Why an item got no response of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    /// The item's body is a stream; batching needs its bytes.
    NotBuffered,
    /// The format could not encode the item (for HubSpot: a body that is not a JSON object).
    Unencodable {
        /// The format's reason.
        reason: String,
    },
    /// The item alone, in its envelope, exceeds the batch byte limit.
    ItemTooLarge {
        /// Its size in an envelope of its own.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The batch's answer was a success but could not be split into items. Not retried: the
    /// records may have been delivered.
    Undecodable {
        /// The batch's status.
        status: StatusCode,
        /// What was wrong with it.
        reason: String,
    },
    /// The answer reported failures it did not tie to records, this record is among those it
    /// did not clear, and the endpoint is not safe to send it to again
    /// ([`Resend::Unsafe`]): it may or may not have been applied. Never reported delivered.
    Unattributed {
        /// The batch's status.
        status: StatusCode,
        /// The failure the answer reported, as the vendor wrote it.
        reason: String,
    },
    /// The batch failed without a response (the inner service's error, after its retries).
    Failed {
        /// The inner error.
        reason: String,
    },
    /// The batch worker is gone (its runtime shut down).
    Closed,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::NotBuffered => f.write_str(
                "batch: the item's body is a stream; send a buffered body (Bytes, Full) to batch it",
            ),
            BatchError::Unencodable { reason } => write!(f, "batch: item not encodable: {reason}"),
            BatchError::ItemTooLarge { bytes, max_bytes } => write!(
                f,
                "batch: the item alone takes {bytes} bytes, more than the batch limit of {max_bytes}"
            ),
            BatchError::Undecodable { status, reason } => write!(
                f,
                "batch answered {status} but could not be split into items ({reason}); not retried, the records may have been delivered"
            ),
            BatchError::Unattributed { status, reason } => write!(
                f,
                "batch answered {status} with failures it did not tie to records, and this one may be among them ({reason}); not resent, since the endpoint is not idempotent: look the record up before sending it again"
            ),
            BatchError::Failed { reason } => write!(f, "batch failed: {reason}"),
            BatchError::Closed => f.write_str("batch worker is gone (its runtime shut down)"),
        }
    }
}

impl std::error::Error for BatchError {}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    items_sent: AtomicU64,
    rebatched: AtomicU64,
    delivered: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    bisections: AtomicU64,
}

/// Counters of a [`BatchLayer`](crate::BatchLayer) (every service it built), read at any time.
///
/// At rest, every submitted item is counted once in `delivered + accepted + failed + cancelled`;
/// `items_sent` counts each time an item went out, so `items_sent - rebatched` is the number
/// of items sent at least once.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    counters: Arc<Counters>,
}

macro_rules! counter {
    ($($(#[$doc:meta])* $name:ident, $add:ident;)*) => {
        impl BatchStats {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> u64 {
                    self.counters.$name.load(Ordering::Relaxed)
                }

                pub(crate) fn $add(&self, n: usize) {
                    self.counters.$name.fetch_add(n as u64, Ordering::Relaxed);
                }
            )*
        }
    };
}

counter! {
    /// Batch requests sent (retries below this layer not counted).
    batches, add_batches;
    /// Item sends, a re-batched item counted each time.
    items_sent, add_items_sent;
    /// Items put back in the queue after a transient item failure.
    rebatched, add_rebatched;
    /// Items answered with a 2xx other than 202.
    delivered, add_delivered;
    /// Items answered `202 Accepted`: taken by an asynchronous endpoint (Mailchimp's
    /// `/batches`), outcome not yet known. Not counted as delivered.
    accepted, add_accepted;
    /// Items answered with a failure (a non-2xx status or an error).
    failed, add_failed;
    /// Items withdrawn by their callers before they were sent.
    cancelled, add_cancelled;
    /// Batches split in two because their answer did not settle every record (a whole-batch
    /// refusal caused by some of them, or failures not tied to records).
    bisections, add_bisections;
}

impl BatchStats {
    pub(crate) fn add_batch(&self, items: usize) {
        self.add_batches(1);
        self.add_items_sent(items);
    }
}
