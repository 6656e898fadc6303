//! Braze's user track endpoint (`POST /users/track`).

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower::BoxError;

use super::format::{self, BatchFormat, Envelope, ItemResult, Resend, Sent};
use crate::presets::BRAZE_USERS_TRACK_BATCH;

/// Braze's `/users/track`: one array of attributes, events or purchases objects per batch,
/// at most [`BRAZE_USERS_TRACK_BATCH`] of them, counted as one request against the endpoint's
/// 3,000 requests per 3 seconds ([`presets::braze_users_track`](crate::presets::braze_users_track)).
///
/// Each item's body is one object as Braze documents it (it must name its user by
/// `external_id`, `user_alias`, `braze_id`, `email` or `phone`). One kind per batch keeps
/// every plan's limit: Braze allows 75 of each kind per request, and plans counted in
/// monthly active users cap a request lower, so a batch of 75 objects of one kind is within
/// both.
///
/// A request with some bad objects is answered `201` with `errors` naming each by
/// `input_array` and `index`: only those fail (400); the others are delivered. A request
/// refused as a whole (a 400 naming no object) is split until the bad object is alone.
/// Attributes set a profile's state and are resent freely after a lost answer;
/// events and purchases would be recorded twice, so they are at-most-once
/// ([`Resend::Unsafe`]). Objects for the same user keep their order.
///
/// Source: <https://www.braze.com/docs/api/endpoints/user_data/post_user_track> (limits,
/// request and response shapes).
///
/// ```
/// use tower_throttle::batch::{BatchFormat, BrazeTrack, Resend};
///
/// let profiles = BrazeTrack::attributes();
/// assert_eq!(profiles.endpoint().1, "/users/track");
/// assert_eq!((profiles.max_items(), profiles.resend()), (75, Resend::Safe));
/// assert_eq!(BrazeTrack::events().resend(), Resend::Unsafe);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrazeTrack {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Attributes,
    Events,
    Purchases,
}

impl BrazeTrack {
    /// User attributes objects (`{"attributes": [...]}`).
    pub const fn attributes() -> Self {
        BrazeTrack {
            kind: Kind::Attributes,
        }
    }

    /// Event objects (`{"events": [...]}`).
    pub const fn events() -> Self {
        BrazeTrack { kind: Kind::Events }
    }

    /// Purchase objects (`{"purchases": [...]}`).
    pub const fn purchases() -> Self {
        BrazeTrack {
            kind: Kind::Purchases,
        }
    }

    fn array(&self) -> &'static str {
        match self.kind {
            Kind::Attributes => "attributes",
            Kind::Events => "events",
            Kind::Purchases => "purchases",
        }
    }
}

/// The fields a Braze object names its user by, in the order Braze documents them.
const USER_KEYS: [&str; 5] = ["external_id", "user_alias", "braze_id", "email", "phone"];

impl BatchFormat for BrazeTrack {
    fn max_items(&self) -> usize {
        BRAZE_USERS_TRACK_BATCH
    }

    fn max_bytes(&self) -> usize {
        usize::MAX
    }

    fn endpoint(&self) -> (Method, &str) {
        (Method::POST, "/users/track")
    }

    fn envelope(&self) -> Envelope {
        match self.kind {
            Kind::Attributes => Envelope::new(r#"{"attributes":["#, ",", "]}"),
            Kind::Events => Envelope::new(r#"{"events":["#, ",", "]}"),
            Kind::Purchases => Envelope::new(r#"{"purchases":["#, ",", "]}"),
        }
    }

    fn encode_item(&self, _id: u64, _head: &Parts, body: &Bytes) -> Result<Bytes, BoxError> {
        let object = format::json_object("Braze track", body)?;
        if !USER_KEYS.iter().any(|k| object.contains_key(*k)) {
            return Err("Braze track: an object must name its user (external_id, user_alias, braze_id, email or phone)".into());
        }
        Ok(format::to_bytes(&Value::Object(object)))
    }

    fn decode(
        &self,
        _status: StatusCode,
        body: &Bytes,
        items: &[Sent<'_>],
    ) -> Result<Vec<ItemResult>, BoxError> {
        let mut results = vec![ItemResult::ok(); items.len()];
        let answer: Value = format::json("Braze track", body)?;
        for error in answer
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let array = error.get("input_array").and_then(Value::as_str);
            let index = error
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok());
            match (array, index) {
                (Some(a), Some(i)) if a == self.array() && i < items.len() => {
                    results[i] = ItemResult::new(StatusCode::BAD_REQUEST, format::to_bytes(error));
                }
                // An error about another array or no object: nothing of ours to pin it on.
                _ => {
                    for result in results.iter_mut().filter(|r| r.status.is_success()) {
                        *result = ItemResult::unattributed(
                            StatusCode::BAD_REQUEST,
                            format::to_bytes(error),
                        );
                    }
                }
            }
        }
        Ok(results)
    }

    fn cost(&self, _items: usize, _bytes: usize) -> u32 {
        1
    }

    fn resend(&self) -> Resend {
        match self.kind {
            Kind::Attributes => Resend::Safe,
            Kind::Events | Kind::Purchases => Resend::Unsafe,
        }
    }

    fn identity(&self, _head: &Parts, body: &Bytes) -> Option<String> {
        let object: Value = serde_json::from_slice(body).ok()?;
        USER_KEYS
            .iter()
            .find_map(|k| object.get(*k).map(|v| format!("{k}={v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(encoded: &[Bytes]) -> Vec<Sent<'_>> {
        encoded
            .iter()
            .enumerate()
            .map(|(id, encoded)| Sent {
                id: id as u64,
                encoded,
            })
            .collect()
    }

    #[test]
    fn errors_name_objects_by_array_and_index() {
        let items = [Bytes::new(), Bytes::new(), Bytes::new()];
        let answer = Bytes::from_static(
            br#"{"message":"success","errors":[{"type":"invalid","input_array":"attributes","index":1}]}"#,
        );
        let results = BrazeTrack::attributes()
            .decode(StatusCode::CREATED, &answer, &sent(&items))
            .unwrap();
        let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(statuses, [200, 400, 200]);
        assert!(results.iter().all(ItemResult::is_attributed));
    }

    #[test]
    fn an_error_about_no_object_leaves_every_object_unattributed() {
        let items = [Bytes::new(), Bytes::new()];
        let answer = Bytes::from_static(br#"{"message":"success","errors":[{"type":"bad"}]}"#);
        let results = BrazeTrack::events()
            .decode(StatusCode::CREATED, &answer, &sent(&items))
            .unwrap();
        assert!(results.iter().all(|r| !r.is_attributed()));
    }

    #[test]
    fn an_object_without_a_user_is_refused_before_sending() {
        let head = http::Request::new(()).into_parts().0;
        let format = BrazeTrack::purchases();
        assert!(format
            .encode_item(1, &head, &Bytes::from_static(br#"{"product_id":"p"}"#))
            .is_err());
        let ok = format
            .encode_item(
                1,
                &head,
                &Bytes::from_static(br#"{"external_id":"u1","product_id":"p"}"#),
            )
            .unwrap();
        assert_eq!(
            format.identity(&head, &ok).as_deref(),
            Some(r#"external_id="u1""#)
        );
    }
}
