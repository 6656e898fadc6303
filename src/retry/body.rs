//! Request bodies that can be sent more than once.

use bytes::Bytes;
use http_body_util::{Empty, Full};

/// A body the retry policy knows how to replay.
///
/// Buffered bodies (`Full<Bytes>`, `Bytes`, `String`, `Vec<u8>`, `Empty`) clone cheaply and are
/// replayed. A body that cannot be cloned at run time (a stream) answers `None` from
/// [`try_clone`](ReplayBody::try_clone): such a request is sent once, and if it needed a
/// retry the caller gets [`ThrottleError::NotReplayable`](crate::ThrottleError::NotReplayable)
/// saying why, rather than a silent failure (reqwest-middleware#44).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_throttle::retry::ReplayBody;
///
/// let body = Full::new(Bytes::from_static(b"{\"email\":\"a@example.com\"}"));
/// assert!(body.try_clone().is_some());
/// ```
pub trait ReplayBody: Sized {
    /// A copy to send again, or `None` when the body can be read only once.
    fn try_clone(&self) -> Option<Self>;

    /// A stand-in body, kept in place of a request that cannot be replayed so the policy can
    /// still report why it did not retry.
    fn placeholder() -> Self;
}

macro_rules! replay_by_clone {
    ($($ty:ty),* $(,)?) => {$(
        impl ReplayBody for $ty {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }

            fn placeholder() -> Self {
                <$ty>::default()
            }
        }
    )*};
}

replay_by_clone!(Full<Bytes>, Empty<Bytes>, Bytes, String, Vec<u8>, ());
