//! The vendors' answers, built from the items of a batch and what the mock decided for each:
//! pure functions, so every shape is unit-tested without a socket.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::batch::{HubSpotAction, ItemVerdict, Parsed, BRAZE_ARRAYS};

/// HubSpot's answer: 200 `COMPLETE` with `results`, or 207 with `numErrors` and `errors`.
/// Upserts carry `new` on each result, as HubSpot's upsert does; creates and updates do not.
/// Source: <https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/batch/upsert-contacts>.
pub(crate) fn hubspot(
    items: &[Value],
    verdicts: &[ItemVerdict],
    action: HubSpotAction,
) -> (StatusCode, Value) {
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    for (item, verdict) in items.iter().zip(verdicts) {
        let trace = item
            .get("objectWriteTraceId")
            .cloned()
            .unwrap_or(Value::Null);
        let traced = |category: &str, message: String| {
            json!({"status": "error", "category": category, "message": message,
                   "context": {"objectWriteTraceId": [trace.clone()]}})
        };
        match *verdict {
            ItemVerdict::Ok { object_id, new } => {
                let mut result = json!({
                    "id": object_id.to_string(),
                    "objectWriteTraceId": trace,
                    "properties": item.get("properties").cloned().unwrap_or(json!({})),
                    "archived": false,
                });
                if action == HubSpotAction::Upsert {
                    result["new"] = json!(new);
                }
                results.push(result);
            }
            ItemVerdict::Rejected => errors.push(traced(
                "VALIDATION_ERROR",
                "Property values were not valid".into(),
            )),
            ItemVerdict::Failed => errors.push(traced(
                "INTERNAL_ERROR",
                "temporary failure, try again".into(),
            )),
            ItemVerdict::RateLimited => errors.push(traced(
                "RATE_LIMITS",
                "You have reached your secondly limit.".into(),
            )),
            ItemVerdict::Exists { object_id } => errors.push(traced(
                "OBJECT_ALREADY_EXISTS",
                format!("A record with this value already exists. Existing ID: {object_id}"),
            )),
            ItemVerdict::Unattributed { with_ids } => {
                let mut error = json!({"status": "error", "category": "INTERNAL_ERROR",
                                       "message": "an input could not be written"});
                // `ids` names the record by its id, never by the trace id, which is the
                // point: the client cannot tell which input this was.
                if let Some(id) = item.get("id").filter(|_| with_ids) {
                    error["context"] = json!({"ids": [id]});
                }
                errors.push(error);
            }
        }
    }
    let mut answer = json!({"status": "COMPLETE", "results": results});
    if errors.is_empty() {
        return (StatusCode::OK, answer);
    }
    answer["numErrors"] = json!(errors.len());
    answer["errors"] = Value::Array(errors);
    (StatusCode::MULTI_STATUS, answer)
}

/// Customer.io's answer: 200 `{}`, or `errors` by `batch_index` in a 207 (in a 200 when
/// `errors_in_ok`, which Customer.io also sends).
pub(crate) fn customerio(verdicts: &[ItemVerdict], errors_in_ok: bool) -> (StatusCode, Value) {
    let errors: Vec<Value> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, verdict)| {
            let reason = match verdict {
                ItemVerdict::Ok { .. } => return None,
                ItemVerdict::Rejected | ItemVerdict::Exists { .. } => "invalid",
                ItemVerdict::Failed | ItemVerdict::Unattributed { .. } => "internal",
                ItemVerdict::RateLimited => "rate_limited",
            };
            Some(
                json!({"batch_index": i, "reason": reason, "field": "identifiers",
                        "message": format!("entity {i}: {reason}")}),
            )
        })
        .collect();
    match (errors.is_empty(), errors_in_ok) {
        (true, _) => (StatusCode::OK, json!({})),
        (false, true) => (StatusCode::OK, json!({ "errors": errors })),
        (false, false) => (StatusCode::MULTI_STATUS, json!({ "errors": errors })),
    }
}

/// A JSON array of `{"status": ...}`, one per item.
pub(crate) fn json_array(verdicts: &[ItemVerdict]) -> (StatusCode, Value) {
    let failed = verdicts.iter().any(|v| !v.is_ok());
    let answers = verdicts
        .iter()
        .map(|verdict| match verdict {
            ItemVerdict::Ok { .. } => json!({"status": 200}),
            ItemVerdict::Rejected => json!({"status": 400, "error": "rejected"}),
            ItemVerdict::Exists { .. } => json!({"status": 409, "error": "exists"}),
            ItemVerdict::RateLimited => json!({"status": 429, "error": "rate_limited"}),
            ItemVerdict::Failed | ItemVerdict::Unattributed { .. } => {
                json!({"status": 503, "error": "unavailable"})
            }
        })
        .collect();
    let status = if failed {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::OK
    };
    (status, Value::Array(answers))
}

/// Braze's `/users/track` answer: 201 `success` with `<array>_processed` for each array the
/// request carried and non-fatal `errors` by `input_array` and `index`; 400 with the
/// errors when no object was valid.
/// Sources: <https://www.braze.com/docs/api/endpoints/user_data/post_user_track/>,
/// <https://braze.com/docs/api/errors>.
pub(crate) fn braze(parsed: &Parsed, verdicts: &[ItemVerdict]) -> (StatusCode, Value) {
    let mut processed = [0u64; 3];
    let mut errors = Vec::new();
    for (&(array, index), verdict) in parsed.origin.iter().zip(verdicts) {
        let slot = BRAZE_ARRAYS.iter().position(|a| *a == array).unwrap_or(0);
        if verdict.is_ok() {
            processed[slot] += 1;
        } else {
            errors
                .push(json!({"type": "object is not valid", "input_array": array, "index": index}));
        }
    }
    if processed.iter().all(|n| *n == 0) {
        let message =
            "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields.";
        return (
            StatusCode::BAD_REQUEST,
            json!({"message": message, "errors": errors}),
        );
    }
    let mut answer = Map::new();
    answer.insert("message".into(), json!("success"));
    for (array, n) in BRAZE_ARRAYS.iter().zip(processed) {
        if parsed.present.contains(array) {
            answer.insert(format!("{array}_processed"), json!(n));
        }
    }
    if !errors.is_empty() {
        answer.insert("errors".into(), Value::Array(errors));
    }
    (StatusCode::CREATED, Value::Object(answer))
}

/// Mailchimp's list batch-subscribe answer: always 200, members sorted into `new_members`,
/// `updated_members` and `errors` by `email_address`.
/// Source: <https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/>.
pub(crate) fn mailchimp_list(
    items: &[Value],
    verdicts: &[ItemVerdict],
    list_id: &str,
) -> (StatusCode, Value) {
    let (mut created, mut updated, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (item, verdict) in items.iter().zip(verdicts) {
        let email = item
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let member = || {
            json!({"email_address": email, "status": item.get("status").cloned().unwrap_or(json!("subscribed")),
                   "list_id": list_id})
        };
        let error = |error: String, code: &str| json!({"email_address": email, "error": error, "error_code": code});
        match *verdict {
            ItemVerdict::Ok { new: true, .. } => created.push(member()),
            ItemVerdict::Ok { new: false, .. } => updated.push(member()),
            ItemVerdict::Exists { .. } => errors.push(error(
                format!("{email} is already a list member, do you want to update? please provide update_existing:true in the request body"),
                "ERROR_CONTACT_EXISTS",
            )),
            _ => errors.push(error(
                format!("{email} looks fake or invalid, please enter a real email address."),
                "ERROR_GENERIC",
            )),
        }
    }
    let answer = json!({
        "total_created": created.len(), "total_updated": updated.len(), "error_count": errors.len(),
        "new_members": created, "updated_members": updated, "errors": errors,
    });
    (StatusCode::OK, answer)
}

/// One operation's result in a finished Mailchimp batch: `status_code`, `operation_id` and
/// `response`, the operation's answer body as a JSON string, as Mailchimp writes it.
pub(crate) fn mailchimp_result(item: &Value, verdict: &ItemVerdict) -> Value {
    let problem = |status: u16, title: &str, detail: String| {
        json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/",
               "title": title, "status": status, "detail": detail})
    };
    let email = item
        .get("body")
        .and_then(|b| match b {
            Value::String(s) => serde_json::from_str::<Value>(s).ok(),
            other => Some(other.clone()),
        })
        .and_then(|b| b.get("email_address").cloned())
        .unwrap_or(Value::Null);
    let (status, response) = match *verdict {
        ItemVerdict::Ok { object_id, .. } => (
            200,
            json!({"id": object_id.to_string(), "email_address": email}),
        ),
        ItemVerdict::Rejected => (
            400,
            problem(
                400,
                "Invalid Resource",
                "The resource submitted could not be validated.".into(),
            ),
        ),
        ItemVerdict::Exists { .. } => (
            400,
            problem(
                400,
                "Member Exists",
                format!(
                    "{} is already a list member. Use PUT to insert or update list members.",
                    email.as_str().unwrap_or("the member")
                ),
            ),
        ),
        ItemVerdict::RateLimited => (
            429,
            problem(
                429,
                "Too Many Requests",
                "You have exceeded the limit of 10 simultaneous connections.".into(),
            ),
        ),
        ItemVerdict::Failed | ItemVerdict::Unattributed { .. } => (
            500,
            problem(
                500,
                "Internal Server Error",
                "An unexpected internal error has occurred.".into(),
            ),
        ),
    };
    json!({"status_code": status, "operation_id": item.get("operation_id").cloned().unwrap_or(Value::Null),
           "response": response.to_string()})
}

/// The whole-batch refusal a vendor sends when one input is invalid, naming the bad value
/// in its text but not the input by index or trace id: `None` when no input's text contains
/// `marker`.
pub(crate) fn refusal(
    shape: super::BatchShape,
    items: &[Value],
    marker: &str,
) -> Option<(StatusCode, Value)> {
    use super::BatchShape::*;
    let (field, value) = items
        .iter()
        .find_map(|item| find_marked(item, "", marker))?;
    let body = match shape {
        HubSpot => {
            let detail = json!([{"isValid": false, "message": format!("{value} is invalid"),
                                 "error": "INVALID_EMAIL", "name": field}]);
            json!({"status": "error", "category": "VALIDATION_ERROR",
                   "message": format!("Property values were not valid: {detail}")})
        }
        CustomerIo => json!({"errors": [{"reason": "invalid", "field": field,
                                         "message": format!("{value} is not valid")}]}),
        Braze => json!({"message": format!("'{field}' is not valid: {value}")}),
        Mailchimp | MailchimpList => {
            json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/",
                   "title": "Invalid Resource", "status": 400,
                   "detail": format!("{value} looks fake or invalid, please enter a real email address.")})
        }
        JsonArray => {
            json!({"error": "invalid", "message": format!("{field}: {value} is not valid")})
        }
    };
    Some((StatusCode::BAD_REQUEST, body))
}

/// The first string under `value` that contains `marker`, with the name of its field.
fn find_marked(value: &Value, name: &str, marker: &str) -> Option<(String, String)> {
    match value {
        Value::String(s) if s.contains(marker) => Some((name.to_owned(), s.clone())),
        Value::Array(values) => values.iter().find_map(|v| find_marked(v, name, marker)),
        Value::Object(map) => map.iter().find_map(|(k, v)| find_marked(v, k, marker)),
        _ => None,
    }
}

impl ItemVerdict {
    pub(crate) fn is_ok(&self) -> bool {
        matches!(self, ItemVerdict::Ok { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::BatchShape;

    const OK: ItemVerdict = ItemVerdict::Ok {
        object_id: 7,
        new: true,
    };

    #[test]
    fn hubspot_207_traces_every_attributable_error_and_counts_them_all() {
        let items = [
            json!({"id": "a", "objectWriteTraceId": "0", "properties": {"x": 1}}),
            json!({"id": "b", "objectWriteTraceId": "1"}),
            json!({"id": "c", "objectWriteTraceId": "2"}),
            json!({"objectWriteTraceId": "3"}),
        ];
        let verdicts = [
            OK,
            ItemVerdict::RateLimited,
            ItemVerdict::Unattributed { with_ids: true },
            ItemVerdict::Unattributed { with_ids: true },
        ];
        let (status, body) = hubspot(&items, &verdicts, HubSpotAction::Upsert);
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!(body["numErrors"], 3);
        assert_eq!(
            body["results"],
            json!([{"id": "7", "objectWriteTraceId": "0", "properties": {"x": 1}, "archived": false, "new": true}])
        );
        assert_eq!(body["errors"][0]["category"], "RATE_LIMITS");
        assert_eq!(
            body["errors"][0]["context"],
            json!({"objectWriteTraceId": ["1"]})
        );
        assert_eq!(body["errors"][1]["context"], json!({"ids": ["c"]}));
        assert!(body["errors"][2].get("context").is_none());
        let (status, body) = hubspot(&items[..1], &[OK], HubSpotAction::Create);
        assert_eq!(status, StatusCode::OK);
        assert!(body["results"][0].get("new").is_none());
    }

    #[test]
    fn customerio_errors_ride_a_207_or_a_200() {
        let verdicts = [OK, ItemVerdict::Rejected];
        let (status, body) = customerio(&verdicts, false);
        assert_eq!(status, StatusCode::MULTI_STATUS);
        assert_eq!(
            body,
            json!({"errors": [{"batch_index": 1, "reason": "invalid", "field": "identifiers", "message": "entity 1: invalid"}]})
        );
        assert_eq!(customerio(&verdicts, true).0, StatusCode::OK);
        assert_eq!(customerio(&[OK], true), (StatusCode::OK, json!({})));
    }

    #[test]
    fn braze_counts_processed_objects_per_array_and_refuses_an_all_bad_request() {
        let parsed = Parsed {
            items: vec![json!({}), json!({}), json!({})],
            origin: vec![("attributes", 0), ("events", 0), ("events", 1)],
            present: vec!["attributes", "events"],
            update_existing: false,
        };
        let (status, body) = braze(&parsed, &[OK, ItemVerdict::Rejected, OK]);
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            body,
            json!({"message": "success", "attributes_processed": 1, "events_processed": 1,
                   "errors": [{"type": "object is not valid", "input_array": "events", "index": 0}]})
        );
        let all_bad = [ItemVerdict::Rejected; 3];
        assert_eq!(braze(&parsed, &all_bad).0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn mailchimp_list_sorts_members() {
        let items = [
            json!({"email_address": "a@x.io", "status": "subscribed"}),
            json!({"email_address": "b@x.io", "status": "subscribed"}),
            json!({"email_address": "c@x.io", "status": "subscribed"}),
        ];
        let verdicts = [
            OK,
            ItemVerdict::Ok {
                object_id: 8,
                new: false,
            },
            ItemVerdict::Exists { object_id: 9 },
        ];
        let (status, body) = mailchimp_list(&items, &verdicts, "l1");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                &body["total_created"],
                &body["total_updated"],
                &body["error_count"]
            ),
            (&json!(1), &json!(1), &json!(1))
        );
        assert_eq!(body["errors"][0]["error_code"], "ERROR_CONTACT_EXISTS");
        assert_eq!(body["updated_members"][0]["email_address"], "b@x.io");
    }

    #[test]
    fn mailchimp_results_carry_the_response_as_a_string() {
        let op = json!({"method": "POST", "path": "/lists/l1/members", "operation_id": "op-1",
                        "body": r#"{"email_address":"a@x.io"}"#});
        let result = mailchimp_result(&op, &ItemVerdict::Exists { object_id: 3 });
        assert_eq!(result["status_code"], 400);
        assert_eq!(result["operation_id"], "op-1");
        let response: Value = serde_json::from_str(result["response"].as_str().unwrap()).unwrap();
        assert_eq!(response["title"], "Member Exists");
    }

    #[test]
    fn a_marked_input_refuses_the_whole_batch_naming_only_its_value() {
        let items = [
            json!({"id": "1", "properties": {"email": "ok@x.io"}}),
            json!({"id": "2", "properties": {"email": "invalid-7@example.com"}}),
        ];
        let (status, body) = refusal(BatchShape::HubSpot, &items, "invalid").unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["category"], "VALIDATION_ERROR");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("Property values were not valid: ")
                && message.contains("invalid-7@example.com"),
            "{message}"
        );
        assert!(refusal(BatchShape::HubSpot, &items[..1], "invalid").is_none());
        let (_, body) = refusal(BatchShape::CustomerIo, &items, "invalid").unwrap();
        assert!(body["errors"][0].get("batch_index").is_none());
    }
}
