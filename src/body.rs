//! Request bodies that can be sent more than once, and kept.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty, Full};

/// A request body the retry policy can replay and the dead-letter store can keep.
///
/// Buffered bodies (`Full<Bytes>`, `Empty<Bytes>`, `Bytes`, `String`, `Vec<u8>`, `()`) are
/// implemented. A body that can be read only once (a stream) answers `None` from
/// [`to_bytes`](ReplayBody::to_bytes) and [`try_clone`](ReplayBody::try_clone): such a request
/// is sent once, and if it needed a retry the caller gets
/// [`ThrottleError::NotReplayable`](crate::ThrottleError::NotReplayable) saying why, rather
/// than a silent failure (reqwest-middleware#44).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_throttle::retry::ReplayBody;
///
/// let body = Full::new(Bytes::from_static(b"{\"email\":\"a@example.com\"}"));
/// assert!(body.try_clone().is_some());
/// assert_eq!(body.to_bytes().unwrap(), Bytes::from_static(b"{\"email\":\"a@example.com\"}"));
/// ```
///
/// A retrying stack takes only such bodies, and says so at compile time: a `Full<Bytes>`
/// request goes through,
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{service_fn, BoxError, Service, ServiceBuilder};
/// use tower_throttle::{RetryLayer, RetryPolicy};
///
/// let mut svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(service_fn(|_: http::Request<Full<Bytes>>| async {
///         Ok::<_, BoxError>(http::Response::new(()))
///     }));
/// let _ = svc.call(http::Request::new(Full::from("{}")));
/// ```
///
/// while a body that can be read only once is refused with "a retrying stack needs a request
/// body it can send again" and what to do instead (with `.oneshot(..)` rustc reports only
/// that the method's bounds are not met: `Service::call` or a `Service` bound shows why):
///
/// ```compile_fail,E0277
/// use tower::{service_fn, BoxError, Service, ServiceBuilder};
/// use tower_throttle::{RetryLayer, RetryPolicy};
///
/// struct Stream; // a body that can be read once
/// let mut svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(service_fn(|_: http::Request<Stream>| async {
///         Ok::<_, BoxError>(http::Response::new(()))
///     }));
/// let _ = svc.call(http::Request::new(Stream));
/// ```
#[diagnostic::on_unimplemented(
    message = "a retrying stack needs a request body it can send again; `{Self}` is not one (`ReplayBody`)",
    label = "this stack retries, so its requests' body must implement `ReplayBody`",
    note = "build the client for `http_body_util::Full<bytes::Bytes>` \
            (`Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()`) and send \
            `Full::from(..)` bodies: they are cloned cheaply for each retry",
    note = "a body read from elsewhere (a proxied `Incoming`, a stream) can be collected into \
            `Full<Bytes>` first (`http_body_util::BodyExt::collect`), or implement \
            `ReplayBody` for it returning `None`: it is then sent once, and a retry it needed \
            ends in `ThrottleError::NotReplayable`"
)]
pub trait ReplayBody: Sized + Send + 'static {
    /// The body's bytes, without consuming it; `None` when it can be read only once.
    fn to_bytes(&self) -> Option<Bytes>;

    /// A body with these bytes (for replay from a store, and as the empty stand-in the retry
    /// policy keeps for a request it cannot copy).
    fn from_bytes(bytes: Bytes) -> Self;

    /// A copy to send again; the default rebuilds one from [`to_bytes`](ReplayBody::to_bytes).
    fn try_clone(&self) -> Option<Self> {
        self.to_bytes().map(Self::from_bytes)
    }
}

impl ReplayBody for Bytes {
    fn to_bytes(&self) -> Option<Bytes> {
        Some(self.clone())
    }
    fn from_bytes(bytes: Bytes) -> Self {
        bytes
    }
}

impl ReplayBody for Vec<u8> {
    fn to_bytes(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self))
    }
    fn from_bytes(bytes: Bytes) -> Self {
        bytes.to_vec()
    }
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for String {
    fn to_bytes(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self.as_bytes()))
    }
    fn from_bytes(bytes: Bytes) -> Self {
        // A String body was stored from a String, so it is valid UTF-8 unless the file was
        // edited; a lossy copy beats refusing to replay.
        String::from_utf8(bytes.to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for () {
    fn to_bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
    fn from_bytes(_: Bytes) -> Self {}
}

impl ReplayBody for Full<Bytes> {
    fn to_bytes(&self) -> Option<Bytes> {
        // A `Full` yields its one frame without waiting, so `now_or_never` always completes.
        self.clone()
            .collect()
            .now_or_never()
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
    }
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Empty<Bytes> {
    fn to_bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
    fn from_bytes(_: Bytes) -> Self {
        Empty::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_body_bytes_are_read_without_consuming() {
        let body = Full::new(Bytes::from_static(b"hello"));
        assert_eq!(body.to_bytes(), Some(Bytes::from_static(b"hello")));
        assert_eq!(body.to_bytes(), Some(Bytes::from_static(b"hello")));
        assert!(body.try_clone().is_some());
        assert_eq!(
            String::from_bytes(Bytes::from_static(b"\xffok")),
            "\u{fffd}ok"
        );
    }
}
