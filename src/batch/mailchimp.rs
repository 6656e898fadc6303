//! Mailchimp Marketing API batch operations (`POST /3.0/batches`).

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Map, Value};
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult};

/// The most operations Mailchimp's batch endpoint takes in one call (the seeds' figure).
pub const MAILCHIMP_MAX_OPERATIONS: usize = 500;

/// Mailchimp batch operations: `{"operations": [{"method", "path", "params", "body",
/// "operation_id"}, ...]}`, at most [`MAILCHIMP_MAX_OPERATIONS`].
///
/// Items are the per-record requests you would send without batching, e.g.
/// `PUT /3.0/lists/{list_id}/members/{md5(email)}` with the member as body: the format
/// turns each into one operation (method, path without the `/3.0` prefix, query pairs as
/// `params`, the body as a string, and a unique `operation_id`), the form the seeds write by
/// hand:
///
/// ```text
/// operations = [{'method': 'PUT', 'path': f'/lists/{list_id}/members/{hash}', 'body': json.dumps(...)}]
/// client.post('/batches', json={'operations': operations})
/// ```
///
/// Mailchimp runs a batch asynchronously: the call answers `200` with the batch's `id` and
/// `status: "pending"`, and the outcome of each operation is only available later (poll
/// `GET /3.0/batches/{id}` and download its `response_body_url`). So a successful call gives
/// every item `202 Accepted` with `{"batch_id", "operation_id"}` as body; match the later
/// per-operation results by `operation_id`.
///
/// ```
/// use tower_throttle::batch::{BatchFormat, MailchimpBatch};
///
/// assert_eq!(MailchimpBatch.endpoint().1, "/3.0/batches");
/// assert_eq!(MailchimpBatch.max_items(), 500);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailchimpBatch;

impl BatchFormat for MailchimpBatch {
    fn max_items(&self) -> usize {
        MAILCHIMP_MAX_OPERATIONS
    }

    fn max_bytes(&self) -> usize {
        usize::MAX
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, "/3.0/batches")
    }

    fn envelope(&self) -> Envelope {
        Envelope::new(r#"{"operations":["#, ",", "]}")
    }

    fn encode_item(&self, id: u64, head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        let path = head.uri.path();
        let path = path.strip_prefix("/3.0").unwrap_or(path);
        let mut op = Map::new();
        op.insert("method".into(), Value::String(head.method.as_str().into()));
        op.insert("path".into(), Value::String(path.into()));
        if let Some(query) = head.uri.query() {
            let params: Map<String, Value> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k.to_owned(), Value::String(v.to_owned()))
                })
                .collect();
            op.insert("params".into(), Value::Object(params));
        }
        if !body.is_empty() {
            let body = std::str::from_utf8(body)
                .map_err(|_| "Mailchimp batch: an operation's body must be UTF-8 JSON")?;
            op.insert("body".into(), Value::String(body.into()));
        }
        op.insert("operation_id".into(), Value::String(id.to_string()));
        Ok(format::to_bytes(&Value::Object(op)))
    }

    fn decode(
        &self,
        _status: StatusCode,
        body: &Bytes,
        ids: &[u64],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let answer = format::json("Mailchimp batch", body)?;
        let batch_id = answer
            .get("id")
            .cloned()
            .ok_or("Mailchimp batch: the answer has no batch id")?;
        Ok(ids
            .iter()
            .map(|id| {
                let receipt = serde_json::json!({
                    "batch_id": batch_id,
                    "operation_id": id.to_string(),
                });
                ItemResult::new(StatusCode::ACCEPTED, format::to_bytes(&receipt))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_put_becomes_one_operation() {
        let (head, ()) = http::Request::put(
            "https://us1.api.mailchimp.com/3.0/lists/abc/members/123?skip_merge_validation=true",
        )
        .body(())
        .unwrap()
        .into_parts();
        let op = MailchimpBatch
            .encode_item(9, &head, &Bytes::from_static(br#"{"email_address":"a@x"}"#))
            .unwrap();
        let op: Value = serde_json::from_slice(&op).unwrap();
        assert_eq!(op["method"], "PUT");
        assert_eq!(op["path"], "/lists/abc/members/123");
        assert_eq!(op["params"]["skip_merge_validation"], "true");
        assert_eq!(op["body"], r#"{"email_address":"a@x"}"#);
        assert_eq!(op["operation_id"], "9");
        let receipts = MailchimpBatch
            .decode(
                StatusCode::OK,
                &Bytes::from_static(br#"{"id":"b1","status":"pending"}"#),
                &[9],
            )
            .unwrap();
        assert_eq!(receipts[0].status, StatusCode::ACCEPTED);
    }
}
