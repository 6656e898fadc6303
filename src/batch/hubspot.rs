//! HubSpot CRM batch endpoints (`/crm/v3/objects/{type}/batch/{create,update,upsert}`).

use std::collections::HashMap;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult, Resend, Sent};
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
/// statuses: `VALIDATION_ERROR` (and `INVALID_PARAMS`, `PROPERTY_DOESNT_EXIST`) 400,
/// `INVALID_AUTHENTICATION` 401, `MISSING_SCOPES` 403, `OBJECT_NOT_FOUND` 404, `CONFLICT` and
/// `OBJECT_ALREADY_EXISTS` 409, `RATE_LIMITS` 429 (which holds the gate and waits, as a
/// whole-batch 429 does), `INTERNAL_ERROR` 500, `SERVICE_UNAVAILABLE` 503, `TIMEOUT` 504. An
/// unknown category is final (400) unless the batch itself answered 429 or 5xx.
///
/// An input is delivered when a result names it, or when the answer names every failure it
/// counts (`numErrors`, else the `errors` listed) by trace id. An error that names its inputs
/// otherwise (`context.ids`) or not at all leaves the inputs that no result or traced error
/// names [unattributed](ItemResult::unattributed): the layer sends them again in smaller
/// batches until each answer is about one input, so only the failed input fails.
///
/// Upserts and updates are idempotent ([`Resend::Safe`]). A create is not: without
/// [`proven_by`](HubSpotBatch::proven_by) a create whose answer is lost fails with
/// [`ThrottleError::OutcomeUnknown`](crate::ThrottleError::OutcomeUnknown) (at-most-once).
/// With a unique property named, it is resent, and an input the resend finds already there
/// (`OBJECT_ALREADY_EXISTS`) is delivered. Upserts and updates keep the order of inputs with
/// the same `id` and `idProperty` ([`BatchFormat::identity`]).
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
    action: Action,
    /// The unique property a create is keyed by, if any.
    unique: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Upsert,
    Create,
    Update,
}

impl HubSpotBatch {
    /// `POST /crm/v3/objects/{object_type}/batch/upsert`.
    pub fn upsert(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, Action::Upsert)
    }

    /// `POST /crm/v3/objects/{object_type}/batch/create`.
    pub fn create(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, Action::Create)
    }

    /// `POST /crm/v3/objects/{object_type}/batch/update`.
    pub fn update(object_type: &str) -> Self {
        HubSpotBatch::action(object_type, Action::Update)
    }

    fn action(object_type: &str, action: Action) -> Self {
        let verb = match action {
            Action::Upsert => "upsert",
            Action::Create => "create",
            Action::Update => "update",
        };
        HubSpotBatch {
            path: format!("/crm/v3/objects/{object_type}/batch/{verb}"),
            action,
            unique: None,
        }
    }

    /// The value an input is known by (its `id`, or its unique property on a create), long
    /// enough not to match by accident.
    fn quoted_value(&self, encoded: &Bytes) -> Option<String> {
        let identity = self.identity(&http::Request::new(()).into_parts().0, encoded)?;
        let (_, value) = identity.split_once('=')?;
        (value.len() >= 3).then(|| value.to_owned())
    }

    /// For a create: the unique property (`email` for contacts, `domain` for companies, a
    /// custom unique property) every input sets. HubSpot then refuses a second create of the
    /// same record with `OBJECT_ALREADY_EXISTS`, so a batch whose answer was lost can be sent
    /// again: an input it finds already there was created by the lost attempt, and is
    /// delivered. Inputs with the same value keep their order. Without it a create is
    /// at-most-once. No effect on upserts and updates, which are idempotent already.
    ///
    /// ```
    /// use tower_throttle::batch::{BatchFormat, HubSpotBatch, Resend};
    ///
    /// assert_eq!(HubSpotBatch::create("contacts").resend(), Resend::Unsafe);
    /// assert_eq!(HubSpotBatch::create("contacts").proven_by("email").resend(), Resend::Provable);
    /// assert_eq!(HubSpotBatch::upsert("contacts").resend(), Resend::Safe);
    /// ```
    pub fn proven_by(mut self, property: impl Into<String>) -> Self {
        self.unique = Some(property.into());
        self
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
        let action = if path.ends_with("/create") {
            Action::Create
        } else if path.ends_with("/update") {
            Action::Update
        } else {
            Action::Upsert
        };
        Ok(HubSpotBatch {
            path,
            action,
            unique: None,
        })
    }
}

/// The status an input gets for a HubSpot error category, as HubSpot's error handling guide
/// lists them; `None` for a category it does not document.
fn category_status(category: &str) -> Option<StatusCode> {
    Some(match category {
        "VALIDATION_ERROR" | "INVALID_PARAMS" | "BAD_REQUEST" | "PROPERTY_DOESNT_EXIST" => {
            StatusCode::BAD_REQUEST
        }
        "INVALID_AUTHENTICATION" | "UNAUTHORIZED" => StatusCode::UNAUTHORIZED,
        "MISSING_SCOPES" | "FORBIDDEN" => StatusCode::FORBIDDEN,
        "OBJECT_NOT_FOUND" | "NOT_FOUND" => StatusCode::NOT_FOUND,
        "CONFLICT" | "OBJECT_ALREADY_EXISTS" => StatusCode::CONFLICT,
        "RATE_LIMITS" => StatusCode::TOO_MANY_REQUESTS,
        "INTERNAL_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
        "SERVICE_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "TIMEOUT" => StatusCode::GATEWAY_TIMEOUT,
        _ => return None,
    })
}

/// An error's status: its category's, or for an unknown category the batch's own when that
/// is worth another try (429, 5xx), else final.
fn error_status(error: &Value, batch: StatusCode) -> StatusCode {
    let category = error.get("category").and_then(Value::as_str).unwrap_or("");
    category_status(category).unwrap_or(
        if batch == StatusCode::TOO_MANY_REQUESTS || batch.is_server_error() {
            batch
        } else {
            StatusCode::BAD_REQUEST
        },
    )
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
        status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
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
        // Failures the answer counts, and those it pins on inputs by trace id.
        let errors = answer.get("errors").and_then(Value::as_array);
        let mut traced = 0u64;
        let mut loose: Vec<&Value> = Vec::new();
        for error in errors.into_iter().flatten() {
            let ids = error
                .get("context")
                .and_then(|c| c.get("objectWriteTraceId"))
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(trace_id).collect::<Vec<_>>())
                .unwrap_or_default();
            if ids.is_empty() {
                loose.push(error);
                continue;
            }
            let item = ItemResult::new(error_status(error, status), format::to_bytes(error));
            for id in ids {
                traced += 1;
                found.insert(id, item.clone());
            }
        }
        // A refusal of the whole batch names its culprit in prose ("Property values were not
        // valid: ... a@example.com ..."): an input whose identity the message quotes is it.
        if !status.is_success() && found.is_empty() {
            if let Some(message) = answer.get("message").and_then(Value::as_str) {
                for item in items {
                    let quoted = self
                        .quoted_value(item.encoded)
                        .is_some_and(|v| message.contains(v.as_str()));
                    if quoted {
                        found.insert(item.id, ItemResult::new(status, body.clone()));
                    }
                }
            }
        }
        let listed = errors.map_or(0, |e| e.len() as u64);
        let counted = answer
            .get("numErrors")
            .and_then(Value::as_u64)
            .unwrap_or(listed);
        let unaccounted = counted.saturating_sub(traced).max(loose.len() as u64);
        let unnamed = items.iter().filter(|i| !found.contains_key(&i.id)).count() as u64;
        // The failure an unnamed input may share: the first loose error, or the count alone.
        let loose_result = |attributed: bool| {
            let (code, body) = match loose.first() {
                Some(error) => (error_status(error, status), format::to_bytes(error)),
                None => (
                    StatusCode::BAD_REQUEST,
                    format::to_bytes(&serde_json::json!({
                        "status": "error",
                        "message": format!("{unaccounted} errors not tied to inputs"),
                    })),
                ),
            };
            if attributed {
                ItemResult::new(code, body)
            } else {
                ItemResult::unattributed(code, body)
            }
        };
        Ok(items
            .iter()
            .map(|item| match found.remove(&item.id) {
                Some(result) => result,
                None if unaccounted == 0 => ItemResult::ok(),
                // As many unnamed inputs as unnamed failures, all alike: each input failed so.
                None if unnamed == unaccounted && loose.len() <= 1 => loose_result(true),
                None => loose_result(false),
            })
            .collect())
    }

    fn resend(&self) -> Resend {
        match (self.action, &self.unique) {
            (Action::Create, None) => Resend::Unsafe,
            (Action::Create, Some(_)) => Resend::Provable,
            _ => Resend::Safe,
        }
    }

    fn applied_before(&self, result: &ItemResult) -> bool {
        result.status == StatusCode::CONFLICT
            && serde_json::from_slice::<Value>(&result.body).is_ok_and(|error| {
                error.get("category").and_then(Value::as_str) == Some("OBJECT_ALREADY_EXISTS")
            })
    }

    fn identity(&self, _head: &Parts, body: &Bytes) -> Option<String> {
        let input: Value = serde_json::from_slice(body).ok()?;
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match (self.action, &self.unique) {
            (Action::Create, Some(property)) => {
                let value = input.get("properties")?.get(property).and_then(text)?;
                Some(format!("{property}={value}"))
            }
            (Action::Create, None) => None,
            _ => {
                let id = input.get("id").and_then(text)?;
                let property = input
                    .get("idProperty")
                    .and_then(Value::as_str)
                    .unwrap_or("hs_object_id");
                Some(format!("{property}={id}"))
            }
        }
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
                &format::sent_ids(&[7, 8, 9, 10]),
            )
            .unwrap();
        let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
        // An unknown category in a 207 is final.
        assert_eq!(statuses, [200, 400, 400, 200]);
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
