//! Customer.io's Track API v2 batch endpoint (`POST /api/v2/batch`).

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult};

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
/// is published ([`CUSTOMERIO_MAX_ITEMS`] is ours). Per-item failures come back as a
/// `207 Multi-Status` whose `errors` name the failed entity by `batch_index` (its position in
/// the batch) with a `reason`, `field` and `message`; a reason of `internal` or
/// `unavailable` becomes 503 (tried again), `rate_limited` 429, anything else 400 (final).
///
/// Sources: <https://docs.customer.io/api/track/> ("Your request must be smaller than 500kb"
/// on `POST /api/v2/batch`) and
/// <https://docs.customer.io/release-notes/2023-01-10-track-v2-api/>; the multi-status form
/// is the one Customer.io's own Segment destination parses
/// (segmentio/action-destinations#3657).
///
/// ```
/// use tower_throttle::batch::{BatchFormat, CustomerIoBatch};
///
/// assert_eq!(CustomerIoBatch.endpoint().1, "/api/v2/batch");
/// assert!(CustomerIoBatch.max_bytes() < 500_000);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomerIoBatch;

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
        ids: &[u64],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let mut results = vec![ItemResult::ok(); ids.len()];
        if status != StatusCode::MULTI_STATUS {
            return Ok(results);
        }
        let answer = format::json("Customer.io batch", body)?;
        let errors = answer
            .get("errors")
            .and_then(Value::as_array)
            .ok_or("Customer.io batch: a 207 answer without an errors array")?;
        for error in errors {
            let index = error
                .get("batch_index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < ids.len())
                .ok_or("Customer.io batch: an error without a valid batch_index")?;
            let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
            results[index] = ItemResult::new(reason_status(reason), format::to_bytes(error));
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_back_by_batch_index() {
        let answer = br#"{"errors":[{"batch_index":1,"reason":"invalid","field":"identifiers","message":"missing id"},{"batch_index":2,"reason":"internal","message":"later"}]}"#;
        let results = CustomerIoBatch
            .decode(
                StatusCode::MULTI_STATUS,
                &Bytes::from_static(answer),
                &[5, 6, 7],
            )
            .unwrap();
        let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(statuses, [200, 400, 503]);
        let bad_index = br#"{"errors":[{"batch_index":3,"reason":"invalid"}]}"#;
        assert!(CustomerIoBatch
            .decode(
                StatusCode::MULTI_STATUS,
                &Bytes::from_static(bad_index),
                &[5, 6, 7]
            )
            .is_err());
    }
}
