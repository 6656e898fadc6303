//! Batch endpoints: the mock checks a batch's shape and limits like the vendor, and answers
//! per item (with failures at configured ratios) in the vendor's multi-status form.

use http::StatusCode;
use serde_json::{json, Value};

use crate::batch::{CUSTOMERIO_MAX_BYTES, HUBSPOT_MAX_INPUTS, MAILCHIMP_MAX_OPERATIONS};
use crate::ConfigError;

/// Which vendor's batch body and answer a mock batch endpoint speaks; the same shapes as the
/// formats in [`crate::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchShape {
    /// `{"inputs": [...]}`; 200 with `results`, or 207 with `errors` naming each failed
    /// input's `objectWriteTraceId` (category `VALIDATION_ERROR` for rejected items,
    /// `INTERNAL_ERROR` for transient ones).
    HubSpot,
    /// `{"batch": [...]}`; 200 `{}`, or 207 with `errors` by `batch_index` (reason `invalid`
    /// for rejected items, `internal` for transient ones).
    CustomerIo,
    /// `{"operations": [...]}`; 200 with a batch `id` and `status: "pending"`. Mailchimp
    /// reports operations asynchronously, so item failure ratios do not apply.
    Mailchimp,
    /// `[...]`; 200 or 207 with an array of `{"status": ...}` of the same length.
    JsonArray,
}

/// A batch endpoint of the mock server: its shape and the limits it enforces. A batch over
/// `max_items` is answered `400`, over `max_bytes` `413`, either way before the rate limit is
/// consulted and without consuming it. An accepted batch counts as one request against the
/// route's limit, whatever its size.
///
/// ```
/// use tower_throttle::mock::{BatchEndpoint, BatchShape};
///
/// let hubspot = BatchEndpoint::hubspot();
/// assert_eq!((hubspot.shape(), hubspot.max_items()), (BatchShape::HubSpot, 100));
/// assert!(BatchEndpoint::json_array(0, 1_000).is_err());
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEndpoint {
    shape: BatchShape,
    max_items: usize,
    max_bytes: usize,
}

impl BatchEndpoint {
    /// HubSpot CRM batch: at most 100 inputs.
    pub fn hubspot() -> Self {
        BatchEndpoint {
            shape: BatchShape::HubSpot,
            max_items: HUBSPOT_MAX_INPUTS,
            max_bytes: usize::MAX,
        }
    }

    /// Customer.io `/api/v2/batch`: smaller than 500 KB, no item count.
    pub fn customerio() -> Self {
        BatchEndpoint {
            shape: BatchShape::CustomerIo,
            max_items: usize::MAX,
            max_bytes: CUSTOMERIO_MAX_BYTES,
        }
    }

    /// Mailchimp batch operations: at most 500 operations.
    pub fn mailchimp() -> Self {
        BatchEndpoint {
            shape: BatchShape::Mailchimp,
            max_items: MAILCHIMP_MAX_OPERATIONS,
            max_bytes: usize::MAX,
        }
    }

    /// A JSON array endpoint with these limits.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for a zero limit.
    pub fn json_array(max_items: usize, max_bytes: usize) -> Result<Self, ConfigError> {
        if max_items == 0 {
            return Err(ConfigError::Zero { name: "max_items" });
        }
        if max_bytes == 0 {
            return Err(ConfigError::Zero { name: "max_bytes" });
        }
        Ok(BatchEndpoint {
            shape: BatchShape::JsonArray,
            max_items,
            max_bytes,
        })
    }

    /// The same endpoint with another item limit (a stricter tier, say).
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0.
    pub fn with_max_items(self, max_items: usize) -> Result<Self, ConfigError> {
        if max_items == 0 {
            return Err(ConfigError::Zero { name: "max_items" });
        }
        Ok(BatchEndpoint { max_items, ..self })
    }

    /// The same endpoint with another byte limit.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0.
    pub fn with_max_bytes(self, max_bytes: usize) -> Result<Self, ConfigError> {
        if max_bytes == 0 {
            return Err(ConfigError::Zero { name: "max_bytes" });
        }
        Ok(BatchEndpoint { max_bytes, ..self })
    }

    /// The shape.
    pub fn shape(&self) -> BatchShape {
        self.shape
    }

    /// Items accepted per batch.
    pub fn max_items(&self) -> usize {
        self.max_items
    }

    /// Body bytes accepted per batch.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The batch's items, or the refusal the vendor would send.
    pub(crate) fn parse(&self, body: &[u8]) -> Result<Vec<Value>, (StatusCode, String)> {
        if body.len() > self.max_bytes {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "bytes": body.len(), "max_bytes": self.max_bytes})
                    .to_string(),
            ));
        }
        let invalid = |message: &str| {
            (
                StatusCode::BAD_REQUEST,
                json!({"status": "error", "category": "VALIDATION_ERROR", "message": message})
                    .to_string(),
            )
        };
        let value: Value = serde_json::from_slice(body).map_err(|_| invalid("body is not JSON"))?;
        let items = match (self.shape, value) {
            (BatchShape::JsonArray, Value::Array(items)) => items,
            (shape, Value::Object(mut map)) => {
                let key = match shape {
                    BatchShape::HubSpot => "inputs",
                    BatchShape::CustomerIo => "batch",
                    BatchShape::Mailchimp => "operations",
                    BatchShape::JsonArray => return Err(invalid("expected a JSON array")),
                };
                match map.remove(key) {
                    Some(Value::Array(items)) => items,
                    _ => return Err(invalid(&format!("expected an object with a {key:?} array"))),
                }
            }
            _ => return Err(invalid("unexpected body shape")),
        };
        if items.is_empty() {
            return Err(invalid("a batch needs at least one item"));
        }
        if items.len() > self.max_items {
            return Err(invalid(&format!(
                "{} items, more than the limit of {}",
                items.len(),
                self.max_items
            )));
        }
        Ok(items)
    }

    /// The record an item writes, for the duplicate check.
    pub(crate) fn record_id(&self, item: &Value) -> Option<String> {
        let field = match self.shape {
            BatchShape::HubSpot => item.get("id"),
            BatchShape::CustomerIo => item
                .get("identifiers")
                .and_then(|ids| ids.get("id").or_else(|| ids.get("email"))),
            BatchShape::Mailchimp => item.get("path"),
            BatchShape::JsonArray => item.get("id"),
        }?;
        match field {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Whether per-item failures can be reported synchronously.
    pub(crate) fn reports_items(&self) -> bool {
        self.shape != BatchShape::Mailchimp
    }

    /// The answer to an accepted batch whose items got these verdicts.
    pub(crate) fn answer(
        &self,
        items: &[Value],
        verdicts: &[ItemVerdict],
        seq: u64,
    ) -> (StatusCode, String) {
        let failed = verdicts.iter().any(|v| *v != ItemVerdict::Ok);
        let status = if failed {
            StatusCode::MULTI_STATUS
        } else {
            StatusCode::OK
        };
        let body = match self.shape {
            BatchShape::HubSpot => {
                let (mut results, mut errors) = (Vec::new(), Vec::new());
                for (item, verdict) in items.iter().zip(verdicts) {
                    let trace = item
                        .get("objectWriteTraceId")
                        .cloned()
                        .unwrap_or(Value::Null);
                    match verdict {
                        ItemVerdict::Ok => results.push(json!({
                            "id": item.get("id").cloned().unwrap_or(Value::Null),
                            "objectWriteTraceId": trace,
                            "properties": item.get("properties").cloned().unwrap_or(json!({})),
                        })),
                        ItemVerdict::Rejected => errors.push(json!({
                            "status": "error", "category": "VALIDATION_ERROR",
                            "message": "Property values were not valid",
                            "context": {"objectWriteTraceId": [trace]},
                        })),
                        ItemVerdict::Failed => errors.push(json!({
                            "status": "error", "category": "INTERNAL_ERROR",
                            "message": "temporary failure, try again",
                            "context": {"objectWriteTraceId": [trace]},
                        })),
                    }
                }
                let mut answer = json!({"status": "COMPLETE", "results": results});
                if failed {
                    answer["numErrors"] = json!(errors.len());
                    answer["errors"] = Value::Array(errors);
                }
                answer
            }
            BatchShape::CustomerIo => {
                let errors: Vec<Value> = verdicts
                    .iter()
                    .enumerate()
                    .filter_map(|(i, verdict)| {
                        let reason = match verdict {
                            ItemVerdict::Ok => return None,
                            ItemVerdict::Rejected => "invalid",
                            ItemVerdict::Failed => "internal",
                        };
                        Some(
                            json!({"batch_index": i, "reason": reason, "field": "identifiers",
                                    "message": format!("entity {i}: {reason}")}),
                        )
                    })
                    .collect();
                if failed {
                    json!({ "errors": errors })
                } else {
                    json!({})
                }
            }
            BatchShape::Mailchimp => json!({
                "id": format!("{seq:010x}"),
                "status": "pending",
                "total_operations": items.len(),
                "finished_operations": 0,
                "errored_operations": 0,
            }),
            BatchShape::JsonArray => Value::Array(
                verdicts
                    .iter()
                    .map(|verdict| match verdict {
                        ItemVerdict::Ok => json!({"status": 200}),
                        ItemVerdict::Rejected => json!({"status": 400, "error": "rejected"}),
                        ItemVerdict::Failed => json!({"status": 503, "error": "unavailable"}),
                    })
                    .collect(),
            ),
        };
        (status, body.to_string())
    }
}

/// What the mock decided for one item of an accepted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    Ok,
    /// A permanent failure (a validation error).
    Rejected,
    /// A transient failure.
    Failed,
}
