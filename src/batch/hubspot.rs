//! HubSpot CRM batch endpoints (`/crm/v3/objects/{type}/batch/{create,update,upsert}`).

use std::collections::HashMap;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult};
use crate::ConfigError;

/// The most inputs HubSpot's CRM batch endpoints accept in one request.
pub const HUBSPOT_MAX_INPUTS: usize = 100;

/// HubSpot's CRM object batch endpoints: `{"inputs": [...]}`, at most
/// [`HUBSPOT_MAX_INPUTS`] inputs, one API call per batch whatever its size.
///
/// Each item's body is one input object as HubSpot documents it (for an upsert,
/// `{"id": "a@example.com", "idProperty": "email", "properties": {...}}`). To match results
/// back, the format sets each input's `objectWriteTraceId` (overwriting one you set): HubSpot
/// echoes it on every result and on every error's `context.objectWriteTraceId`, which is how
/// a `207 Multi-Status` answer names the inputs that failed. Error categories become item
/// statuses: `VALIDATION_ERROR` 400, `MISSING_SCOPES` 403, `OBJECT_NOT_FOUND` 404,
/// `CONFLICT` and `OBJECT_ALREADY_EXISTS` 409, `RATE_LIMITS` 429, any other category 500
/// (so it is tried again in a later batch). Items neither result nor error mentions are
/// delivered when the batch succeeded.
///
/// Sources: <https://developers.hubspot.com/docs/api-reference/error-handling> (multi-status
/// responses and `objectWriteTraceId`), and the seeds' figure "batch endpoints accept up to
/// 100 records per request and count as a single API call".
///
/// ```
/// use tower_throttle::batch::{BatchFormat, HubSpotBatch};
///
/// let contacts = HubSpotBatch::upsert("contacts");
/// assert_eq!(contacts.endpoint().1, "/crm/v3/objects/contacts/batch/upsert");
/// assert_eq!(contacts.max_items(), 100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpotBatch {
    path: String,
}

impl HubSpotBatch {
    /// `POST /crm/v3/objects/{object_type}/batch/upsert`.
    pub fn upsert(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, "upsert")
    }

    /// `POST /crm/v3/objects/{object_type}/batch/create`.
    pub fn create(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, "create")
    }

    /// `POST /crm/v3/objects/{object_type}/batch/update`.
    pub fn update(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, "update")
    }

    fn action(object_type: &str, action: &str) -> Self {
        HubSpotBatch {
            path: format!("/crm/v3/objects/{object_type}/batch/{action}"),
        }
    }

    /// Another batch endpoint of the same shape (a newer API version, say).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `path` does not start with `/`.
    pub fn at_path(path: impl Into<String>) -> Result<Self, ConfigError> {
        let path = path.into();
        if !path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "HubSpot batch path {path:?} must start with '/'"
            )));
        }
        Ok(HubSpotBatch { path })
    }
}

/// The status an item gets for a HubSpot error category.
fn category_status(category: &str) -> StatusCode {
    match category {
        "VALIDATION_ERROR" => StatusCode::BAD_REQUEST,
        "MISSING_SCOPES" => StatusCode::FORBIDDEN,
        "OBJECT_NOT_FOUND" => StatusCode::NOT_FOUND,
        "CONFLICT" | "OBJECT_ALREADY_EXISTS" => StatusCode::CONFLICT,
        "RATE_LIMITS" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn trace_id(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

impl BatchFormat for HubSpotBatch {
    fn max_items(&self) -> usize {
        HUBSPOT_MAX_INPUTS
    }

    fn max_bytes(&self) -> usize {
        usize::MAX
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, &self.path)
    }

    fn envelope(&self) -> Envelope {
        Envelope::new(r#"{"inputs":["#, ",", "]}")
    }

    fn encode_item(&self, id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        let mut input = format::json_object("HubSpot batch", body)?;
        input.insert("objectWriteTraceId".into(), Value::String(id.to_string()));
        Ok(format::to_bytes(&Value::Object(input)))
    }

    fn decode(
        &self,
        _status: StatusCode,
        body: &Bytes,
        ids: &[u64],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let answer = format::json("HubSpot batch", body)?;
        let mut found: HashMap<u64, ItemResult> = HashMap::new();
        if let Some(results) = answer.get("results").and_then(Value::as_array) {
            for result in results {
                if let Some(id) = result.get("objectWriteTraceId").and_then(trace_id) {
                    found.insert(
                        id,
                        ItemResult::new(StatusCode::OK, format::to_bytes(result)),
                    );
                }
            }
        }
        if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
            for error in errors {
                let status =
                    category_status(error.get("category").and_then(Value::as_str).unwrap_or(""));
                let traced = error
                    .get("context")
                    .and_then(|c| c.get("objectWriteTraceId"))
                    .and_then(Value::as_array);
                for id in traced.into_iter().flatten().filter_map(trace_id) {
                    found.insert(id, ItemResult::new(status, format::to_bytes(error)));
                }
            }
        }
        Ok(ids
            .iter()
            .map(|id| found.remove(id).unwrap_or_else(ItemResult::ok))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn inputs_carry_the_trace_id_and_errors_map_back_by_it() {
        let format = HubSpotBatch::upsert("contacts");
        let item = format
            .encode_item(
                7,
                &head(),
                &Bytes::from_static(br#"{"id":"a@x","idProperty":"email"}"#),
            )
            .unwrap();
        let input: Value = serde_json::from_slice(&item).unwrap();
        assert_eq!(input["objectWriteTraceId"], "7");
        assert_eq!(input["id"], "a@x");

        let answer = serde_json::json!({
            "status": "COMPLETE",
            "results": [{"id": "101", "objectWriteTraceId": "7"}],
            "numErrors": 2,
            "errors": [
                {"status": "error", "category": "VALIDATION_ERROR", "message": "bad email",
                 "context": {"objectWriteTraceId": ["8"]}},
                {"status": "error", "category": "SOMETHING_NEW", "message": "try later",
                 "context": {"objectWriteTraceId": ["9"]}}
            ]
        });
        let results = format
            .decode(
                StatusCode::MULTI_STATUS,
                &format::to_bytes(&answer),
                &[7, 8, 9, 10],
            )
            .unwrap();
        let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(statuses, [200, 400, 500, 200]);
        assert!(std::str::from_utf8(&results[1].body)
            .unwrap()
            .contains("bad email"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_before_sending() {
        let format = HubSpotBatch::create("deals");
        assert!(format
            .encode_item(1, &head(), &Bytes::from_static(b"[1,2]"))
            .is_err());
        assert!(HubSpotBatch::at_path("crm/v4").is_err());
    }
}
