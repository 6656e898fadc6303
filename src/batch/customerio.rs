//! Customer.io's Track API v2 batch endpoint (`POST /api/v2/batch`).

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult, Resend, Sent};

/// Customer.io's documented ceiling for one `/api/v2/batch` request: "smaller than 500kb".
/// Read as 500,000 bytes (the smaller of the two readings), minus one for "smaller than".
pub const CUSTOMERIO_MAX_BYTES: usize = 499_999;

/// Items per batch. Customer.io publishes no item count for `/api/v2/batch`, only the byte
/// ceiling; 1,000 keeps one rejected batch from failing an unbounded number of records.
pub const CUSTOMERIO_MAX_ITEMS: usize = 1_000;

/// Customer.io's Track API v2 batch: `{"batch": [...]}` of entity operations (identify a
/// person, track an event, change an object), each counted against the Track API's ~100
/// requests per second once per batch.
///
/// Each item's body is one v2 entity payload, sent as is, e.g.
/// `{"type":"person","identifiers":{"id":"42"},"action":"identify","attributes":{...}}`.
/// Limits: the request must be smaller than 500 KB ([`CUSTOMERIO_MAX_BYTES`]); no item count
/// is published ([`CUSTOMERIO_MAX_ITEMS`] is ours). Per-item failures come back as `errors`
/// naming the failed entity by `batch_index` (its position in the batch) with a `reason`,
/// `field` and `message`, in a `207 Multi-Status`, in a `200`, or in a refusal of the whole
/// batch; whatever the status, only the named entities fail. A reason of `internal` or
/// `unavailable` becomes 503 (tried again), `rate_limited` 429, anything else 400 (final).
///
/// Identifying a person or an object sets its state, so sending it twice is harmless, and
/// [`CustomerIoBatch::new`] resends a batch whose answer was lost ([`Resend::Safe`]); an
/// `event` sent twice is recorded twice, so for batches of events where a duplicate costs
/// more than a record kept for reconciliation use [`CustomerIoBatch::at_most_once`]. Entities
/// with the same `type` and `identifiers` keep their order.
///
/// Sources: <https://docs.customer.io/api/track/> ("Your request must be smaller than 500kb"
/// on `POST /api/v2/batch`) and
/// <https://docs.customer.io/release-notes/2023-01-10-track-v2-api/>; the multi-status form
/// is the one Customer.io's own Segment destination parses
/// (segmentio/action-destinations#3657).
///
/// ```
/// use tower_throttle::batch::{BatchFormat, CustomerIoBatch, Resend};
///
/// let people = CustomerIoBatch::new();
/// assert_eq!(people.endpoint().1, "/api/v2/batch");
/// assert!(people.max_bytes() < 500_000);
/// assert_eq!(CustomerIoBatch::at_most_once().resend(), Resend::Unsafe);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomerIoBatch {
    at_most_once: bool,
}

impl CustomerIoBatch {
    /// The batch endpoint, at-least-once: a batch whose answer was lost is sent again.
    pub const fn new() -> Self {
        CustomerIoBatch {
            at_most_once: false,
        }
    }

    /// The batch endpoint, at-most-once: a batch whose answer was lost is not sent again;
    /// each entity fails with [`ThrottleError::OutcomeUnknown`](crate::ThrottleError::OutcomeUnknown).
    pub const fn at_most_once() -> Self {
        CustomerIoBatch { at_most_once: true }
    }
}

fn reason_status(reason: &str) -> StatusCode {
    match reason {
        "internal" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl BatchFormat for CustomerIoBatch {
    fn max_items(&self) -> usize {
        CUSTOMERIO_MAX_ITEMS
    }

    fn max_bytes(&self) -> usize {
        CUSTOMERIO_MAX_BYTES
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, "/api/v2/batch")
    }

    fn envelope(&self) -> Envelope {
        Envelope::new(r#"{"batch":["#, ",", "]}")
    }

    fn encode_item(&self, _id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        format::as_is(
            body,
            "Customer.io batch: an item needs an entity payload as its body",
        )
    }

    fn decode(
        &self,
        status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let mut results = vec![ItemResult::ok(); items.len()];
        let answer: Option<Value> = serde_json::from_slice(body).ok();
        let errors = answer
            .as_ref()
            .and_then(|a| a.get("errors"))
            .and_then(Value::as_array);
        let Some(errors) = errors else {
            if status == StatusCode::MULTI_STATUS {
                return Err("Customer.io batch: a 207 answer without an errors array".into());
            }
            return Ok(results);
        };
        for error in errors {
            let index = error
                .get("batch_index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < items.len())
                .ok_or("Customer.io batch: an error without a valid batch_index")?;
            let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
            results[index] = ItemResult::new(reason_status(reason), format::to_bytes(error));
        }
        Ok(results)
    }

    fn resend(&self) -> Resend {
        if self.at_most_once {
            Resend::Unsafe
        } else {
            Resend::Safe
        }
    }

    fn identity(&self, _head: &Parts, body: &Bytes) -> Option<String> {
        let entity: Value = serde_json::from_slice(body).ok()?;
        let identifiers = entity.get("identifiers")?;
        let kind = entity
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("person");
        // serde_json keeps object keys sorted, so equal identifiers print alike.
        Some(format!("{kind}:{identifiers}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_back_by_batch_index() {
        let answer = br#"{"errors":[{"batch_index":1,"reason":"invalid","field":"identifiers","message":"missing id"},{"batch_index":2,"reason":"internal","message":"later"}]}"#;
        let results = CustomerIoBatch::new()
            .decode(
                StatusCode::MULTI_STATUS,
                &Bytes::from_static(answer),
                &format::sent_ids(&[5, 6, 7]),
            )
            .unwrap();
        let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(statuses, [200, 400, 503]);
        let bad_index = br#"{"errors":[{"batch_index":3,"reason":"invalid"}]}"#;
        assert!(CustomerIoBatch::new()
            .decode(
                StatusCode::MULTI_STATUS,
                &Bytes::from_static(bad_index),
                &format::sent_ids(&[5, 6, 7])
            )
            .is_err());
    }
}
