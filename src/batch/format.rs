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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// The item's status: 2xx delivered, 429/5xx/408 worth sending again, other 4xx final.
    pub status: StatusCode,
    /// The item's result or error, as JSON.
    pub body: Bytes,
}

impl ItemResult {
    /// A result with this status and body.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        ItemResult {
            status,
            body: body.into(),
        }
    }

    /// `200 OK` with an empty JSON object.
    pub fn ok() -> Self {
        ItemResult::new(StatusCode::OK, Bytes::from_static(b"{}"))
    }
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
/// use tower_throttle::batch::{BatchFormat, Envelope, ItemResult};
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
///     fn decode(&self, _status: StatusCode, _body: &Bytes, ids: &[u64]) -> Result<Vec<ItemResult>, tower::BoxError> {
///         Ok(ids.iter().map(|_| ItemResult::ok()).collect())
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

    /// Splits a successful (2xx, including 207 Multi-Status) batch response into one result
    /// per item, in the order of `ids` (the ids given to [`encode_item`](Self::encode_item)).
    ///
    /// An error means the answer cannot be attributed to items; the layer then fails every
    /// item of the batch with [`BatchError::Undecodable`](super::BatchError::Undecodable)
    /// rather than guess (sending the batch again could deliver records twice).
    fn decode(
        &self,
        status: StatusCode,
        body: &Bytes,
        ids: &[u64],
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
}

/// Parses a body as JSON, naming the format in the error.
/// An item that goes into the batch as written; `empty` is the error for one with no body.
pub(crate) fn as_is(body: &Bytes, empty: &'static str) -> Result<Bytes, BoxError> {
    if body.is_empty() {
        return Err(empty.into());
    }
    Ok(body.clone())
}

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
