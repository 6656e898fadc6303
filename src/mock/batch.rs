//! Batch endpoints: the mock checks a batch's shape and limits like the vendor, and knows
//! which record each item writes. The answers themselves are built in `answer.rs`.

use http::StatusCode;
use serde_json::{json, Value};

use super::records::Write;
use crate::batch::{CUSTOMERIO_MAX_BYTES, HUBSPOT_MAX_INPUTS, MAILCHIMP_MAX_OPERATIONS};
use crate::ConfigError;

/// The most objects Braze's `/users/track` takes in one request on current plans: 75 in
/// total across `attributes`, `events` and `purchases` (older plans allowed 75 per array;
/// use [`BatchEndpoint::with_max_items`] for those).
/// Source: <https://braze.com/docs/api/api_limits>.
pub const BRAZE_MAX_OBJECTS: usize = 75;

/// The most batches Mailchimp keeps pending per user; one more is answered `429`.
/// Source: <https://mailchimp.com/developer/release-notes/batch-api-limit-now-considers-pending-batch-webhooks/>.
pub const MAILCHIMP_MAX_PENDING_BATCHES: usize = 500;

/// The most members one Mailchimp list batch-subscribe call (`POST /3.0/lists/{list_id}`)
/// takes.
pub const MAILCHIMP_MAX_MEMBERS: usize = 500;

/// Which vendor's batch body and answer a mock batch endpoint speaks; the same shapes as the
/// formats in [`crate::batch`]. The [module docs](super#batch-answers) list every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchShape {
    /// HubSpot CRM `batch/{upsert,create,update}`: `{"inputs": [...]}`; 200 with `results`,
    /// or 207 with `numErrors` and `errors` naming failed inputs by `objectWriteTraceId`.
    HubSpot,
    /// Customer.io `/api/v2/batch`: `{"batch": [...]}`; 200 `{}`, or 207 with `errors` by
    /// `batch_index`.
    CustomerIo,
    /// Mailchimp `/3.0/batches`: `{"operations": [...]}`; 200 with a batch `id` and
    /// `status: "pending"`; the operations' results come later from `GET {path}/{id}`.
    Mailchimp,
    /// `[...]`; 200 or 207 with an array of `{"status": ...}` of the same length.
    JsonArray,
    /// Braze `/users/track`: `{"attributes": [...], "events": [...], "purchases": [...]}`;
    /// 201 with `message: "success"` and the counts processed, non-fatal `errors` by
    /// `input_array` and `index`, 400 when nothing was valid.
    Braze,
    /// Mailchimp list batch-subscribe, `POST /3.0/lists/{list_id}`: `{"members": [...],
    /// "update_existing": bool}`; 200 with `new_members`, `updated_members` and `errors` by
    /// `email_address`.
    MailchimpList,
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
/// assert_eq!(BatchEndpoint::braze().max_items(), 75);
/// assert!(BatchEndpoint::json_array(0, 1_000).is_err());
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEndpoint {
    shape: BatchShape,
    max_items: usize,
    max_bytes: usize,
    max_pending: usize,
}

impl BatchEndpoint {
    const fn of(shape: BatchShape, max_items: usize, max_bytes: usize) -> Self {
        BatchEndpoint {
            shape,
            max_items,
            max_bytes,
            max_pending: MAILCHIMP_MAX_PENDING_BATCHES,
        }
    }

    /// HubSpot CRM batch: at most 100 inputs. The action is the path's last segment:
    /// `create` refuses an existing identity, `upsert` and `update` rewrite it (any other
    /// ending is served as an upsert).
    ///
    /// Sources: <https://developers.hubspot.com/docs/api-reference/error-handling>
    /// (multi-status answers, `objectWriteTraceId`).
    pub fn hubspot() -> Self {
        BatchEndpoint::of(BatchShape::HubSpot, HUBSPOT_MAX_INPUTS, usize::MAX)
    }

    /// Customer.io `/api/v2/batch`: smaller than 500 KB, no item count.
    ///
    /// Source: Customer.io's Track API v2 reference (`POST /api/v2/batch`: "smaller than
    /// 500kb"); Customer.io's own parser of its answers, a 207 or a 200 carrying `errors`, is
    /// <https://github.com/segmentio/action-destinations/pull/3657>.
    pub fn customerio() -> Self {
        BatchEndpoint::of(BatchShape::CustomerIo, usize::MAX, CUSTOMERIO_MAX_BYTES)
    }

    /// Mailchimp batch operations: at most 500 operations a call, at most
    /// [`MAILCHIMP_MAX_PENDING_BATCHES`] batches pending.
    ///
    /// Source: <https://mailchimp.com/developer/marketing/guides/run-async-requests-batch-endpoint/>.
    pub fn mailchimp() -> Self {
        BatchEndpoint::of(BatchShape::Mailchimp, MAILCHIMP_MAX_OPERATIONS, usize::MAX)
    }

    /// Mailchimp list batch-subscribe (`POST /3.0/lists/{list_id}`): at most 500 members.
    ///
    /// Source: <https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/>.
    pub fn mailchimp_list() -> Self {
        BatchEndpoint::of(BatchShape::MailchimpList, MAILCHIMP_MAX_MEMBERS, usize::MAX)
    }

    /// Braze `/users/track`: at most [`BRAZE_MAX_OBJECTS`] objects in total.
    ///
    /// Sources: <https://braze.com/docs/api/api_limits> (limits),
    /// <https://www.braze.com/docs/api/endpoints/user_data/post_user_track/> and
    /// <https://braze.com/docs/api/errors> (answers).
    pub fn braze() -> Self {
        BatchEndpoint::of(BatchShape::Braze, BRAZE_MAX_OBJECTS, usize::MAX)
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
        Ok(BatchEndpoint::of(
            BatchShape::JsonArray,
            max_items,
            max_bytes,
        ))
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

    /// The same endpoint with another cap on pending batches (Mailchimp only: a batch is
    /// pending until a status request has reported it `finished`).
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0.
    pub fn with_max_pending(self, max_pending: usize) -> Result<Self, ConfigError> {
        if max_pending == 0 {
            return Err(ConfigError::Zero {
                name: "max_pending",
            });
        }
        Ok(BatchEndpoint {
            max_pending,
            ..self
        })
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

    /// Batches that may be pending at once (Mailchimp).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// The batch's items, or the refusal the vendor would send.
    pub(crate) fn parse(&self, body: &[u8]) -> Result<Parsed, (StatusCode, String)> {
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
        let mut parsed = Parsed::default();
        match (self.shape, value) {
            (BatchShape::JsonArray, Value::Array(items)) => parsed.items = items,
            (BatchShape::Braze, Value::Object(mut map)) => {
                for array in BRAZE_ARRAYS {
                    match map.remove(array) {
                        Some(Value::Array(objects)) => {
                            parsed.present.push(array);
                            for (index, object) in objects.into_iter().enumerate() {
                                parsed.items.push(object);
                                parsed.origin.push((array, index));
                            }
                        }
                        None | Some(Value::Null) => {}
                        Some(_) => return Err(invalid(&format!("{array:?} must be an array"))),
                    }
                }
            }
            (shape, Value::Object(mut map)) => {
                let key = match shape {
                    BatchShape::HubSpot => "inputs",
                    BatchShape::CustomerIo => "batch",
                    BatchShape::Mailchimp => "operations",
                    BatchShape::MailchimpList => "members",
                    BatchShape::JsonArray | BatchShape::Braze => {
                        return Err(invalid("unexpected body shape"))
                    }
                };
                parsed.update_existing = map
                    .get("update_existing")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match map.remove(key) {
                    Some(Value::Array(items)) => parsed.items = items,
                    _ => return Err(invalid(&format!("expected an object with a {key:?} array"))),
                }
            }
            _ => return Err(invalid("unexpected body shape")),
        }
        if parsed.items.is_empty() {
            return Err(invalid("a batch needs at least one item"));
        }
        if parsed.items.len() > self.max_items {
            return Err(invalid(&format!(
                "{} items, more than the limit of {}",
                parsed.items.len(),
                self.max_items
            )));
        }
        Ok(parsed)
    }

    /// The record an item writes, for the duplicate check of `x-request-id`s.
    pub(crate) fn record_id(&self, item: &Value) -> Option<String> {
        let field = match self.shape {
            BatchShape::HubSpot | BatchShape::JsonArray => item.get("id"),
            BatchShape::CustomerIo => item
                .get("identifiers")
                .and_then(|ids| ids.get("id").or_else(|| ids.get("email"))),
            BatchShape::Mailchimp => item.get("path"),
            BatchShape::Braze => item.get("external_id"),
            BatchShape::MailchimpList => item.get("email_address"),
        }?;
        scalar(field)
    }

    /// What `item` of a batch to `path` writes, and under which identity.
    pub(crate) fn write_of(&self, path: &str, item: &Value, parsed: &Parsed, at: usize) -> Write {
        let content = || item.to_string();
        match self.shape {
            BatchShape::HubSpot => {
                let email = item
                    .pointer("/properties/email")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase);
                match (hubspot_action(path), item.get("id").and_then(scalar), email) {
                    (HubSpotAction::Create, _, Some(email)) => {
                        Write::Create(format!("email={email}"))
                    }
                    (HubSpotAction::Create, _, None) => Write::Append(content()),
                    (_, Some(id), _) => {
                        let property = item
                            .get("idProperty")
                            .and_then(Value::as_str)
                            .unwrap_or("hs_object_id");
                        Write::Put(format!("{property}={id}"))
                    }
                    (_, None, _) => Write::Append(content()),
                }
            }
            BatchShape::CustomerIo => {
                let action = item
                    .get("action")
                    .and_then(Value::as_str)
                    .unwrap_or("identify");
                let identity = item.get("identifiers").and_then(|ids| {
                    ["id", "email", "cio_id"]
                        .into_iter()
                        .find_map(|k| ids.get(k).and_then(scalar).map(|v| format!("{k}={v}")))
                });
                match identity {
                    // Events and page views are appended, not merged into the person.
                    Some(identity) if !matches!(action, "event" | "page" | "screen") => {
                        Write::Put(identity)
                    }
                    _ => Write::Append(content()),
                }
            }
            BatchShape::Braze => {
                let array = parsed.origin.get(at).map_or("attributes", |o| o.0);
                let identity = ["external_id", "braze_id", "email", "user_alias"]
                    .into_iter()
                    .find_map(|k| {
                        let v = item.get(k)?;
                        Some(format!(
                            "{k}={}",
                            scalar(v).unwrap_or_else(|| v.to_string())
                        ))
                    });
                match identity {
                    Some(identity) if array == "attributes" => Write::Put(identity),
                    _ => Write::Append(format!("{array}:{}", content())),
                }
            }
            BatchShape::Mailchimp => {
                let method = item.get("method").and_then(Value::as_str).unwrap_or("GET");
                let path = item.get("path").and_then(Value::as_str).unwrap_or_default();
                match method.to_ascii_uppercase().as_str() {
                    "GET" => Write::Read,
                    "POST" => match operation_email(item) {
                        Some(email) => Write::Create(format!("{path}|{email}")),
                        None => Write::Append(content()),
                    },
                    _ => Write::Put(path.to_owned()),
                }
            }
            BatchShape::MailchimpList => {
                let email = item
                    .get("email_address")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase);
                match email {
                    Some(email) if parsed.update_existing => Write::Put(email),
                    Some(email) => Write::Create(email),
                    None => Write::Append(content()),
                }
            }
            BatchShape::JsonArray => match item.get("id").and_then(scalar) {
                Some(id) => Write::Put(format!("id={id}")),
                None => Write::Append(content()),
            },
        }
    }

    /// Whether this shape can say, synchronously, that an item met `kind`; one it cannot
    /// express is applied instead, so a ratio never invents an answer the vendor never gives.
    pub(crate) fn speaks(&self, kind: Draw) -> bool {
        use BatchShape::*;
        match kind {
            Draw::Apply => true,
            Draw::Fail => matches!(self.shape, HubSpot | CustomerIo | JsonArray | Mailchimp),
            Draw::Reject => true,
            Draw::RateLimit => matches!(self.shape, HubSpot | CustomerIo | JsonArray | Mailchimp),
            Draw::Unattributed => self.shape == HubSpot,
        }
    }
}

/// The arrays of a Braze `/users/track` body, in the order the mock reads them.
pub(crate) const BRAZE_ARRAYS: [&str; 3] = ["attributes", "events", "purchases"];

/// A parsed batch body.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) items: Vec<Value>,
    /// Braze: which array each item came from and its index there.
    pub(crate) origin: Vec<(&'static str, usize)>,
    /// Braze: the arrays the body carried, so the answer counts only those.
    pub(crate) present: Vec<&'static str>,
    /// Mailchimp list batch-subscribe: whether existing members are updated.
    pub(crate) update_existing: bool,
}

/// What the item draw picked for one item, before the record store had its say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Draw {
    Apply,
    Fail,
    Reject,
    RateLimit,
    Unattributed,
}

/// What the mock decided for one item of an accepted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    /// Applied; `object_id` is the stored record's, `new` whether this write created it.
    Ok { object_id: u64, new: bool },
    /// A permanent failure (a validation error).
    Rejected,
    /// A transient failure.
    Failed,
    /// Refused with a rate limit (HubSpot `RATE_LIMITS`).
    RateLimited,
    /// Failed with an error that does not name the item (HubSpot only): its `context`
    /// carries the input's `ids` when `with_ids` and the input has an `id`, else nothing.
    Unattributed { with_ids: bool },
    /// A create of an identity already stored.
    Exists { object_id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubSpotAction {
    Create,
    Update,
    Upsert,
}

pub(crate) fn hubspot_action(path: &str) -> HubSpotAction {
    match path.rsplit('/').next() {
        Some("create") => HubSpotAction::Create,
        Some("update") => HubSpotAction::Update,
        _ => HubSpotAction::Upsert,
    }
}

/// A Mailchimp operation's member email, from its body (a JSON string, as Mailchimp wants it,
/// or an object).
fn operation_email(op: &Value) -> Option<String> {
    let body = op.get("body")?;
    let body = match body {
        Value::String(s) => serde_json::from_str(s).ok()?,
        other => other.clone(),
    };
    body.get("email_address")?.as_str().map(str::to_lowercase)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: BatchEndpoint, body: Value) -> Parsed {
        endpoint.parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn hubspot_identities_follow_the_action() {
        let e = BatchEndpoint::hubspot();
        let upsert = json!({"id": "A@x.io", "idProperty": "email", "properties": {}});
        let p = parse(e, json!({ "inputs": [upsert.clone()] }));
        let path = "/crm/v3/objects/contacts/batch/";
        assert_eq!(
            e.write_of(&format!("{path}upsert"), &upsert, &p, 0),
            Write::Put("email=A@x.io".into())
        );
        let create = json!({"properties": {"email": "B@x.io"}});
        assert_eq!(
            e.write_of(&format!("{path}create"), &create, &p, 0),
            Write::Create("email=b@x.io".into())
        );
        let anonymous = json!({"properties": {"name": "n"}});
        assert!(matches!(
            e.write_of(&format!("{path}create"), &anonymous, &p, 0),
            Write::Append(_)
        ));
    }

    #[test]
    fn braze_counts_objects_across_its_three_arrays() {
        let e = BatchEndpoint::braze().with_max_items(3).unwrap();
        let body = json!({"attributes": [{"external_id": "u1"}], "events": [{"external_id": "u1", "name": "e"}, {"external_id": "u2", "name": "e"}]});
        let p = parse(e, body);
        assert_eq!(p.origin, [("attributes", 0), ("events", 0), ("events", 1)]);
        assert_eq!(p.present, ["attributes", "events"]);
        assert_eq!(
            e.write_of("/users/track", &p.items[0], &p, 0),
            Write::Put("external_id=u1".into())
        );
        assert!(matches!(
            e.write_of("/users/track", &p.items[1], &p, 1),
            Write::Append(_)
        ));
        let four = json!({"attributes": [{}, {}], "purchases": [{}, {}]});
        assert_eq!(
            e.parse(four.to_string().as_bytes()).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn mailchimp_list_creates_unless_told_to_update() {
        let e = BatchEndpoint::mailchimp_list();
        let member = json!({"email_address": "M@x.io", "status": "subscribed"});
        let p = parse(e, json!({"members": [member.clone()]}));
        assert_eq!(
            e.write_of("/3.0/lists/l1", &member, &p, 0),
            Write::Create("m@x.io".into())
        );
        let p = parse(
            e,
            json!({"members": [member.clone()], "update_existing": true}),
        );
        assert_eq!(
            e.write_of("/3.0/lists/l1", &member, &p, 0),
            Write::Put("m@x.io".into())
        );
    }
}
