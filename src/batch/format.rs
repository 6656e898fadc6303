//! The [`BatchFormat`] trait: how items become one request body and how the vendor's answer
//! splits back into one result per item.

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, StatusCode};
use tower::BoxError;

/// How the encoded items of a batch are framed into one body: `prefix`, the items joined by
/// `separator`, then `suffix`. Every vendor's batch body is a JSON array inside an object or
/// alone, so a fixed frame describes all of them, and the byte size of a batch is known
/// before it is built ([`Envelope::len`]).
///
/// ```
/// use tower_throttle::batch::Envelope;
///
/// let frame = Envelope::new(r#"{"inputs":["#, ",", "]}");
/// assert_eq!(frame.len(&[3, 3]), 11 + 3 + 1 + 3 + 2);
/// let body = frame.build(&["{\"a\":1}".into(), "{\"b\":2}".into()]);
/// assert_eq!(&body[..], br#"{"inputs":[{"a":1},{"b":2}]}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    prefix: &'static str,
    separator: &'static str,
    suffix: &'static str,
}

impl Envelope {
    /// A frame of `prefix`, items joined by `separator`, and `suffix`.
    pub const fn new(prefix: &'static str, separator: &'static str, suffix: &'static str) -> Self {
        Envelope {
            prefix,
            separator,
            suffix,
        }
    }

    /// A bare JSON array: `[a,b,c]`.
    pub const fn json_array() -> Self {
        Envelope::new("[", ",", "]")
    }

    /// The body's size in bytes for items of these encoded sizes.
    pub fn len(&self, item_sizes: &[usize]) -> usize {
        self.len_of(item_sizes.len(), item_sizes.iter().sum())
    }

    /// The body's size for `count` items whose encodings add up to `item_bytes`: the one
    /// place batch sizes are computed, so the byte limit checked while coalescing is the
    /// size of the body that is sent.
    pub(crate) fn len_of(&self, count: usize, item_bytes: usize) -> usize {
        self.prefix.len()
            + self.suffix.len()
            + item_bytes
            + self.separator.len() * count.saturating_sub(1)
    }

    /// The body for these encoded items.
    pub fn build(&self, items: &[Bytes]) -> Bytes {
        let sizes: usize = items.iter().map(Bytes::len).sum();
        let mut body = BytesMut::with_capacity(self.len_of(items.len(), sizes));
        body.extend_from_slice(self.prefix.as_bytes());
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(self.separator.as_bytes());
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(self.suffix.as_bytes());
        body.freeze()
    }
}

/// One item's share of a batch response: the status the vendor gave it and what it said.
///
/// The batch layer turns it into the item's own `http::Response`, so layers above (a
/// [`DeadLetterLayer`](crate::DeadLetterLayer), [`run_bulk`](crate::run_bulk)) see one
/// response per record as if it had been sent alone.
///
/// A result is either *attributed* (the vendor named this record: [`new`](Self::new),
/// [`ok`](Self::ok)) or *unattributed* ([`unattributed`](Self::unattributed)): the answer
/// reports failures it does not tie to records, and this record may be one of them. The
/// layer never reports an unattributed record delivered: it sends it again in smaller
/// batches (down to one record, whose answer is then its own), or, where a resend is not
/// safe, fails it with [`BatchError::Unattributed`](super::BatchError::Unattributed).
///
/// ```
/// use http::StatusCode;
/// use tower_throttle::batch::ItemResult;
///
/// assert!(ItemResult::ok().is_attributed());
/// let unsure = ItemResult::unattributed(StatusCode::BAD_REQUEST, r#"{"message":"1 error"}"#);
/// assert!(!unsure.is_attributed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// The item's status: 2xx delivered, 429/5xx/408 worth sending again, other 4xx final.
    pub status: StatusCode,
    /// The item's result or error, as JSON.
    pub body: Bytes,
    attributed: bool,
}

impl ItemResult {
    /// A result the vendor gave this record: this status and body.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        ItemResult {
            status,
            body: body.into(),
            attributed: true,
        }
    }

    /// `200 OK` with an empty JSON object.
    pub fn ok() -> Self {
        ItemResult::new(StatusCode::OK, Bytes::from_static(b"{}"))
    }

    /// The answer names a failure (`status`, `body`) that it does not tie to any record, and
    /// does not say this record succeeded either. If this record turns out to be alone in its
    /// batch, the failure is its own.
    pub fn unattributed(status: StatusCode, body: impl Into<Bytes>) -> Self {
        ItemResult {
            status,
            body: body.into(),
            attributed: false,
        }
    }

    /// Whether the vendor named this record in its answer.
    pub fn is_attributed(&self) -> bool {
        self.attributed
    }
}

/// One item of a batch, as [`BatchFormat::decode`] sees it: the id given to
/// [`encode_item`](BatchFormat::encode_item) and the bytes it returned, for vendors whose
/// answer names records by their content (Mailchimp's list batch-subscribe names members
/// by email address) rather than by an id the client chose.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    /// The item's id.
    pub id: u64,
    /// Its encoded form, as it went into the batch body.
    pub encoded: &'a Bytes,
}

/// Whether a batch may be sent again when the server may already have applied some of its
/// records: its answer was lost (a timeout, a connection reset after the request was
/// written), or it named failures it did not tie to records.
///
/// The batch layer marks each batch request with
/// [`Idempotent`](crate::retry::Idempotent)`(true)` only for [`Resend::Safe`], so the retry
/// layer below resends the others only after an answer proves nothing was applied (a 429, a
/// 503, a refused connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resend {
    /// Applying a record twice is the same as applying it once (an upsert, an update, an
    /// identify): at-least-once delivery, resent freely.
    Safe,
    /// A record applied twice would be applied twice (a create, an event), but the answer to a
    /// resend says which records the lost attempt already applied
    /// ([`BatchFormat::applied_before`]): resent by the batch layer itself, and a record the
    /// resend reports as already there is delivered.
    Provable,
    /// A record applied twice would be applied twice and nothing tells: at-most-once. A
    /// record whose outcome is unknown fails with
    /// [`ThrottleError::OutcomeUnknown`](crate::ThrottleError::OutcomeUnknown) and is kept by
    /// a dead-letter layer for reconciliation.
    Unsafe,
}

/// A vendor's batch endpoint: its limits, how one item is encoded, how items are framed,
/// and how the answer maps back to items.
///
/// Items reach the batch layer as ordinary per-record `http::Request`s; the format sees each
/// one's head and body once, when it is submitted, and returns the bytes it contributes to
/// the batch body. The layer does the rest (coalescing, limits, re-batching of failed items),
/// so a new vendor is a small impl of this trait:
///
/// ```
/// use bytes::Bytes;
/// use http::{request::Parts, Method, StatusCode};
/// use tower_throttle::batch::{BatchFormat, Envelope, ItemResult, Sent};
///
/// /// Braze's `/users/track`: up to 75 attributes objects per request.
/// #[derive(Debug)]
/// struct BrazeAttributes;
///
/// impl BatchFormat for BrazeAttributes {
///     fn max_items(&self) -> usize { 75 }
///     fn max_bytes(&self) -> usize { 4 * 1024 * 1024 }
///     fn endpoint(&self) -> (Method, &str) { (Method::POST, "/users/track") }
///     fn envelope(&self) -> Envelope { Envelope::new(r#"{"attributes":["#, ",", "]}") }
///     fn encode_item(&self, _id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, tower::BoxError> {
///         Ok(body.clone())
///     }
///     fn decode(&self, _status: StatusCode, _body: &Bytes, items: &[Sent<'_>]) -> Result<Vec<ItemResult>, tower::BoxError> {
///         Ok(items.iter().map(|_| ItemResult::ok()).collect())
///     }
///     // Braze counts objects, not calls.
///     fn cost(&self, items: usize, _bytes: usize) -> u32 { items as u32 }
/// }
/// assert_eq!(BrazeAttributes.cost(75, 10_000), 75);
/// ```
pub trait BatchFormat: Send + Sync + 'static {
    /// The most items the vendor accepts in one batch.
    fn max_items(&self) -> usize;

    /// The most body bytes the vendor accepts in one batch (`usize::MAX` when unstated).
    fn max_bytes(&self) -> usize;

    /// The batch request's method and path (with query, if any). Scheme and authority come
    /// from the items' URIs.
    fn endpoint(&self) -> (Method, &str);

    /// How encoded items are framed into the body.
    fn envelope(&self) -> Envelope;

    /// Encodes one item from its per-record request. `id` is unique among the items of one
    /// batch service: formats whose vendor echoes a client id per item (HubSpot's
    /// `objectWriteTraceId`, Mailchimp's `operation_id`) put it there to match results back.
    ///
    /// An error is returned to the item's caller at once; the item is never sent.
    fn encode_item(&self, id: u64, head: &Parts, body: &Bytes) -> Result<Bytes, BoxError>;

    /// Splits a batch response into one result per item, in the order of `items`. Called for every answer that is not the
    /// retry layer's business: a 2xx (207 Multi-Status included), and a final refusal (a 4xx
    /// other than 429 and 408), whose body may name the records it refused.
    ///
    /// Say only what the answer says: a record it names gets [`ItemResult::new`]; a record it
    /// neither names nor clears, while it reports failures it does not tie to records, gets
    /// [`ItemResult::unattributed`]. For a refusal, records the answer does not name are sent
    /// again in smaller batches (the refusal applied nothing), so only the records at fault
    /// fail.
    ///
    /// An error means the answer cannot be read at all. For a 2xx the layer then fails every
    /// item with [`BatchError::Undecodable`](super::BatchError::Undecodable) rather than
    /// guess (the records may have been applied); for a refusal it splits the batch.
    fn decode(
        &self,
        status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError>;

    /// What one batch of `items` items and `bytes` body bytes costs against the limit, in the
    /// limit's units. The default, 1, is right for vendors that count calls (HubSpot,
    /// Customer.io, Mailchimp); a vendor that counts records answers `items`, one that counts
    /// bytes answers `bytes`. The cost rides on the batch request as [`BatchInfo`].
    ///
    /// [`BatchInfo`]: super::BatchInfo
    fn cost(&self, items: usize, bytes: usize) -> u32 {
        let _ = (items, bytes);
        1
    }

    /// How many batches may be on the wire at once by default: the vendor's concurrency
    /// limit where it has one (Mailchimp allows 10 connections). The layer's
    /// [`with_max_in_flight`](crate::BatchLayer::with_max_in_flight) overrides it.
    fn max_in_flight(&self) -> usize {
        32
    }

    /// Whether the endpoint's batches may be sent again when their outcome is unknown. The
    /// default, [`Resend::Unsafe`], is at-most-once: right for any endpoint that creates
    /// records or appends events. Formats for upserts and updates answer [`Resend::Safe`].
    fn resend(&self) -> Resend {
        Resend::Unsafe
    }

    /// For [`Resend::Provable`] formats: whether `result`, the answer to a resend, says the
    /// record was already applied by the attempt whose answer was lost (HubSpot's
    /// `OBJECT_ALREADY_EXISTS` on a create keyed by a unique property). Asked only for
    /// records that went out in such an attempt; such a record is then delivered.
    fn applied_before(&self, result: &ItemResult) -> bool {
        let _ = result;
        false
    }

    /// The record's identity (a contact's email, a person's id), when the endpoint has one:
    /// two items with the same identity never share a batch, and a later one never goes out
    /// while an earlier one is unanswered (being retried), so updates of one record land in
    /// the order they were made. `None` (the default): no ordering between items.
    fn identity(&self, head: &Parts, body: &Bytes) -> Option<String> {
        let _ = (head, body);
        None
    }
}

/// An item that goes into the batch as written; `empty` is the error for one with no body.
pub(crate) fn as_is(body: &Bytes, empty: &'static str) -> Result<Bytes, BoxError> {
    if body.is_empty() {
        return Err(empty.into());
    }
    Ok(body.clone())
}

/// Parses a body as JSON, naming the format in the error.
pub(crate) fn json(what: &'static str, body: &[u8]) -> Result<serde_json::Value, BoxError> {
    serde_json::from_slice(body).map_err(|e| format!("{what}: response is not JSON: {e}").into())
}

/// Parses an item body that must be a JSON object.
pub(crate) fn json_object(
    what: &'static str,
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, BoxError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{what}: an item's body must be a JSON object").into()),
        Err(e) => Err(format!("{what}: an item's body is not JSON: {e}").into()),
    }
}

/// Serializes a JSON value that came from valid JSON; cannot fail.
pub(crate) fn to_bytes(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Items with these ids and no bytes, for decoders that match by id.
#[cfg(test)]
pub(crate) fn sent_ids(ids: &[u64]) -> Vec<Sent<'static>> {
    static EMPTY: Bytes = Bytes::new();
    ids.iter()
        .map(|&id| Sent {
            id,
            encoded: &EMPTY,
        })
        .collect()
}
