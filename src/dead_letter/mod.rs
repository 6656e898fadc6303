//! Dead letters: nothing is lost. Requests whose final outcome is a failure are kept in a
//! store, with credentials redacted, and can be [`replay`](crate::replay())ed later.
//!
//! [`DeadLetterLayer`] goes outermost, so it sees final outcomes only (after the retry layer
//! gave up). It copies each request before sending it (the body must be buffered:
//! [`ReplayBody`](crate::retry::ReplayBody)); when the response is a failure (not 2xx by default, or
//! [`failure_if`](DeadLetterLayer::failure_if)) or the call returns an error, it appends a
//! [`DeadLetter`] (method, URI, redacted headers, body, last status or error text, attempt
//! count, first and last attempt time) to a [`DeadLetterStore`] before handing the outcome
//! back, marked with [`DeadLettered`] (responses) or wrapped in [`DeadLetteredError`]
//! (errors). [`FileStore`](crate::FileStore) is the durable default; [`MemoryStore`] is for tests.
//!
//! **Credentials** (`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, and any
//! header added with [`redact_header`](DeadLetterLayer::redact_header)) are replaced with
//! `[REDACTED]` before the store sees the letter, and so are the values of secret query
//! parameters (`api_secret`, `key`, `hapikey`, `api_key`, and any added with
//! [`redact_query_param`](DeadLetterLayer::redact_query_param)), in the stored URI, in the
//! letter's error text, in the [`DeadLetteredError`] the caller gets and in the replay's
//! reports and logs. Replayed requests go out *without* them: re-add them in the service
//! stack (an auth layer) or with [`ReplayOptions::prepare`](crate::ReplayOptions::prepare)
//! ([`with_query_param`] for a query parameter). Credentials inside bodies are not touched.
//!
//! The attempt count is read from an [`Attempts`](crate::retry::Attempts) extension on the response (the retry layer
//! sets it); for an error, which has no extensions, from the count this crate's retry policy
//! below records on the request as it goes (so a transport error after five attempts says 5,
//! and the error keeps its own type); else from an `Attempts` on the request, and is 1
//! without any of them. Tower's
//! [`tower::retry`] has no dead-letter counterpart; this layer is that missing piece.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::{
//!     dead_letter::{DeadLetterStore, DeadLettered, MemoryStore}, DeadLetterLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let store = MemoryStore::new();
//! let svc = ServiceBuilder::new()
//!     .layer(DeadLetterLayer::new(store.clone()).redact_header("x-api-key".parse()?))
//!     .service(service_fn(|_req: Request<String>| async {
//!         let mut resp = Response::new(());
//!         *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         Ok::<_, std::convert::Infallible>(resp)
//!     }));
//!
//! let req = Request::post("https://api.example.com/v1/users")
//!     .header("x-api-key", "secret")
//!     .body(r#"{"id":1}"#.to_string())?;
//! let resp = svc.oneshot(req).await?;
//! assert_eq!(resp.status(), 503);
//! let id = resp.extensions().get::<DeadLettered>().unwrap().id;
//!
//! let letters = store.list().await?;
//! assert_eq!((letters[0].id, letters[0].status), (id, Some(503)));
//! assert_eq!(letters[0].headers, [("x-api-key".to_string(), "[REDACTED]".to_string())]);
//! # Ok(()) }
//! ```

#[cfg(feature = "file-store")]
pub(crate) mod file;
pub mod future;
pub(crate) mod layer;
mod record;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod replay;
pub(crate) mod service;
mod store;

use std::fmt;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
#[cfg(feature = "file-store")]
pub use file::{FileStoreError, DEFAULT_COMPACTION_THRESHOLD};
pub(crate) use layer::DeadLetterLayer;
pub(crate) use record::{redact_query, DEFAULT_REDACTED_QUERY};
pub use record::{with_query_param, DeadLetter, StoredBody, REDACTED};

/// The default secret query parameter names, as the redaction takes them (for logs outside
/// a dead-letter layer, which knows no user-named ones).
pub(crate) static DEFAULT_QUERY_SECRETS: std::sync::LazyLock<Box<[Box<str>]>> =
    std::sync::LazyLock::new(|| DEFAULT_REDACTED_QUERY.iter().map(|&n| n.into()).collect());
pub use replay::ReplayReport;
pub use service::DeadLetters;
pub use store::{DeadLetterStore, MemoryStore, StoreFuture};

use tower::BoxError;

/// Response extension: this failed response was stored as dead letter `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeadLettered {
    /// The letter's id in the store.
    pub id: u64,
}

/// The error of a failed call that was stored as dead letter `id`; the original error is its
/// [`source`](std::error::Error::source) (and [`into_source`](DeadLetteredError::into_source)).
///
/// Its `Display` and `Debug` redact the secret query parameters the layer redacts (a client
/// error often quotes the URL); the source itself is the client's error, untouched, so that
/// it can still be downcast.
pub struct DeadLetteredError {
    id: u64,
    source: BoxError,
    redact: std::sync::Arc<[Box<str>]>,
}

impl DeadLetteredError {
    /// The letter's id in the store.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The original error.
    pub fn source_ref(&self) -> &BoxError {
        &self.source
    }

    /// The original error.
    pub fn into_source(self) -> BoxError {
        self.source
    }

    /// Finds a `DeadLetteredError` in a boxed error (as returned by [`DeadLetters`]).
    pub fn find(err: &BoxError) -> Option<&DeadLetteredError> {
        err.downcast_ref()
    }
}

impl fmt::Display for DeadLetteredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = redact_query(&self.source.to_string(), &self.redact, false);
        write!(f, "{source} (stored as dead letter {})", self.id)
    }
}

impl fmt::Debug for DeadLetteredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = redact_query(&format!("{:?}", self.source), &self.redact, false);
        f.debug_struct("DeadLetteredError")
            .field("id", &self.id)
            .field("source", &format_args!("{source}"))
            .finish()
    }
}

impl std::error::Error for DeadLetteredError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
