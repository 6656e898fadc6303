//! A generic batch endpoint taking a JSON array of items.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult, Sent};
use crate::ConfigError;

/// Any endpoint that takes `[item, item, ...]` and, for partial failures, answers
/// `207 Multi-Status` with an array of the same length whose elements carry a numeric
/// `status` (absent means 200).
///
/// Item bodies are sent as is. A 2xx answer other than 207 that is not such an array means
/// every item was delivered.
///
/// ```
/// use tower_throttle::batch::{BatchFormat, JsonArrayBatch};
///
/// let events = JsonArrayBatch::new("/v1/events/bulk", 250, 1 << 20)?;
/// assert_eq!((events.max_items(), events.max_bytes()), (250, 1 << 20));
/// assert!(JsonArrayBatch::new("/v1/events/bulk", 0, 1 << 20).is_err());
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonArrayBatch {
    path: String,
    max_items: usize,
    max_bytes: usize,
}

impl JsonArrayBatch {
    /// `POST path` with at most `max_items` items and `max_bytes` body bytes per batch.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for a zero limit, [`ConfigError::Invalid`] for a path that does
    /// not start with `/`, or a byte limit too small for even an empty array.
    pub fn new(
        path: impl Into<String>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Self, ConfigError> {
        let path = path.into();
        if max_items == 0 {
            return Err(ConfigError::Zero { name: "max_items" });
        }
        if max_bytes == 0 {
            return Err(ConfigError::Zero { name: "max_bytes" });
        }
        if max_bytes <= Envelope::json_array().len(&[]) {
            return Err(ConfigError::Invalid(format!(
                "max_bytes {max_bytes} leaves no room for an item inside []"
            )));
        }
        if !path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "batch path {path:?} must start with '/'"
            )));
        }
        Ok(JsonArrayBatch {
            path,
            max_items,
            max_bytes,
        })
    }
}

impl BatchFormat for JsonArrayBatch {
    fn max_items(&self) -> usize {
        self.max_items
    }

    fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, &self.path)
    }

    fn envelope(&self) -> Envelope {
        Envelope::json_array()
    }

    fn encode_item(&self, _id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        format::as_is(body, "JSON array batch: an item needs a JSON body")
    }

    fn decode(
        &self,
        status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let elements = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(elements)) if elements.len() == items.len() => elements,
            _ if status != StatusCode::MULTI_STATUS => {
                return Ok(vec![ItemResult::ok(); items.len()])
            }
            _ => {
                return Err(format!(
                    "JSON array batch: a 207 answer must be an array of {} results",
                    items.len()
                )
                .into())
            }
        };
        elements
            .iter()
            .map(|element| {
                let code = element.get("status").and_then(Value::as_u64).unwrap_or(200);
                let status = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| format!("JSON array batch: invalid item status {code}"))?;
                Ok(ItemResult::new(status, format::to_bytes(element)))
            })
            .collect()
    }
}
