//! Mailchimp Marketing API batch operations (`POST /3.0/batches`).

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Map, Value};
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult, Resend, Sent};

/// Operations per `/3.0/batches` call: ours, not Mailchimp's. Mailchimp documents no
/// per-call operation count; its 500 is a cap on *pending* batches per account (a 429 beyond
/// it), which this layer cannot exceed with its at most 10 batches in flight. 500 keeps one
/// refused call from failing an unbounded number of records.
pub const MAILCHIMP_MAX_OPERATIONS: usize = 500;

/// Mailchimp's limit on simultaneous connections per account: the batch formats keep at most
/// this many batches in flight ([`BatchFormat::max_in_flight`]).
pub const MAILCHIMP_MAX_CONNECTIONS: usize = 10;

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
/// `GET /3.0/batches/{id}` until `finished`, then download its `response_body_url`, a
/// gzipped tar of per-operation results). So a successful call gives every item
/// `202 Accepted` with `{"batch_id", "operation_id"}` as body: *accepted, not yet known*,
/// which [`BatchStats::accepted`](super::BatchStats::accepted) and
/// [`BulkReport::accepted`](crate::BulkReport::accepted) count apart from delivered; match
/// the later per-operation results by `operation_id`. Where each record's outcome is needed
/// at once, use the synchronous [`MailchimpMembers`] for list members.
///
/// At most [`MAILCHIMP_MAX_CONNECTIONS`] batches are in flight. A lost answer is not
/// resent: the batch may be queued already, and its operations may create ([`Resend::Unsafe`]).
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

    fn max_in_flight(&self) -> usize {
        MAILCHIMP_MAX_CONNECTIONS
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
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let answer = format::json("Mailchimp batch", body)?;
        let batch_id = answer
            .get("id")
            .cloned()
            .ok_or("Mailchimp batch: the answer has no batch id")?;
        Ok(items
            .iter()
            .map(|item| {
                let receipt = serde_json::json!({
                    "batch_id": batch_id,
                    "operation_id": item.id.to_string(),
                });
                ItemResult::new(StatusCode::ACCEPTED, format::to_bytes(&receipt))
            })
            .collect())
    }
}

/// The most members Mailchimp's list batch-subscribe takes in one call.
pub const MAILCHIMP_MAX_MEMBERS: usize = 500;

/// Mailchimp's synchronous list batch-subscribe (`POST /3.0/lists/{list_id}`):
/// `{"members": [...], "update_existing": ..}`, at most [`MAILCHIMP_MAX_MEMBERS`] members,
/// answered at once with `new_members`, `updated_members` and `errors` naming each member by
/// `email_address`. Each item's body is one member object (`{"email_address": ..,
/// "status": "subscribed", "merge_fields": {..}}`); the item's request URI gives the
/// scheme and authority only.
///
/// [`upsert`](MailchimpMembers::upsert) (`update_existing: true`) is idempotent, resent
/// freely. [`subscribe`](MailchimpMembers::subscribe) adds new members only: a member a
/// resend finds already on the list (`ERROR_CONTACT_EXISTS`, "already a list member") was
/// added by the attempt whose answer was lost, and is delivered ([`Resend::Provable`]).
/// Members with the same address (case-insensitive) keep their order.
///
/// Source: <https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/>.
///
/// ```
/// use tower_throttle::batch::{BatchFormat, MailchimpMembers, Resend};
///
/// let list = MailchimpMembers::upsert("57afe96172")?;
/// assert_eq!(list.endpoint().1, "/3.0/lists/57afe96172");
/// assert_eq!((list.max_items(), list.resend()), (500, Resend::Safe));
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailchimpMembers {
    path: String,
    update_existing: bool,
}

impl MailchimpMembers {
    /// Adds or updates members of `list_id` (`update_existing: true`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`](crate::ConfigError::Invalid) for a list id that is empty or
    /// not alphanumeric.
    pub fn upsert(list_id: &str) -> Result<Self, crate::ConfigError> {
        MailchimpMembers::new(list_id, true)
    }

    /// Adds new members to `list_id` only (`update_existing: false`).
    ///
    /// # Errors
    /// As [`upsert`](Self::upsert).
    pub fn subscribe(list_id: &str) -> Result<Self, crate::ConfigError> {
        MailchimpMembers::new(list_id, false)
    }

    fn new(list_id: &str, update_existing: bool) -> Result<Self, crate::ConfigError> {
        if list_id.is_empty() || !list_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(crate::ConfigError::Invalid(format!(
                "Mailchimp list id {list_id:?} must be alphanumeric, as the audience settings show it"
            )));
        }
        Ok(MailchimpMembers {
            path: format!("/3.0/lists/{list_id}"),
            update_existing,
        })
    }
}

/// A member's address as Mailchimp matches it.
fn email_of(member: &Value) -> Option<String> {
    member
        .get("email_address")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

impl BatchFormat for MailchimpMembers {
    fn max_items(&self) -> usize {
        MAILCHIMP_MAX_MEMBERS
    }

    fn max_bytes(&self) -> usize {
        usize::MAX
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, &self.path)
    }

    fn envelope(&self) -> Envelope {
        if self.update_existing {
            Envelope::new(r#"{"members":["#, ",", r#"],"update_existing":true}"#)
        } else {
            Envelope::new(r#"{"members":["#, ",", r#"],"update_existing":false}"#)
        }
    }

    fn max_in_flight(&self) -> usize {
        MAILCHIMP_MAX_CONNECTIONS
    }

    fn encode_item(&self, _id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        let member = format::json_object("Mailchimp members", body)?;
        if email_of(&Value::Object(member.clone())).is_none() {
            return Err("Mailchimp members: a member needs an email_address".into());
        }
        Ok(format::to_bytes(&Value::Object(member)))
    }

    fn decode(
        &self,
        _status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let answer = format::json("Mailchimp members", body)?;
        let mut named: std::collections::HashMap<String, ItemResult> = Default::default();
        for list in ["new_members", "updated_members"] {
            for member in answer
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(email) = email_of(member) {
                    named.insert(
                        email,
                        ItemResult::new(StatusCode::OK, format::to_bytes(member)),
                    );
                }
            }
        }
        for error in answer
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(email) = email_of(error) {
                let exists =
                    error.get("error_code").and_then(Value::as_str) == Some("ERROR_CONTACT_EXISTS");
                let status = if exists {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::BAD_REQUEST
                };
                named.insert(email, ItemResult::new(status, format::to_bytes(error)));
            }
        }
        Ok(items
            .iter()
            .map(|item| {
                let email = serde_json::from_slice::<Value>(item.encoded)
                    .ok()
                    .as_ref()
                    .and_then(email_of);
                match email.and_then(|e| named.remove(&e)) {
                    Some(result) => result,
                    // Every member should be in one of the three lists: one that is not was
                    // neither confirmed nor refused.
                    None => ItemResult::unattributed(
                        StatusCode::BAD_GATEWAY,
                        r#"{"message":"the answer does not mention this member"}"#,
                    ),
                }
            })
            .collect())
    }

    fn resend(&self) -> Resend {
        if self.update_existing {
            Resend::Safe
        } else {
            Resend::Provable
        }
    }

    fn applied_before(&self, result: &ItemResult) -> bool {
        result.status == StatusCode::CONFLICT
    }

    fn identity(&self, _head: &Parts, body: &Bytes) -> Option<String> {
        email_of(&serde_json::from_slice(body).ok()?)
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
                &format::sent_ids(&[9]),
            )
            .unwrap();
        assert_eq!(receipts[0].status, StatusCode::ACCEPTED);
    }
}
