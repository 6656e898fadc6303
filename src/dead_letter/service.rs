use std::fmt;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderMap, Method, Uri};
use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::record::{redact_query, redacted_headers};
use super::{DeadLetter, StoredBody};
use crate::retry::{AttemptCell, Attempts};
use crate::ReplayBody;

/// The service built by [`DeadLetterLayer`](super::DeadLetterLayer).
///
/// `call` copies the request (method, URI, headers, body bytes) before sending it; when the
/// outcome is a failure, the copy is redacted and appended to the store *before* the
/// response future resolves, and the outcome is marked: a response gets a
/// [`DeadLettered`](super::DeadLettered) extension, an error is wrapped in
/// [`DeadLetteredError`](super::DeadLetteredError). If the store itself fails, the outcome is
/// returned unmarked and the failure is logged (and counted in [`Stats`](crate::metrics::Stats)).
#[derive(Clone)]
pub struct DeadLetters<S> {
    inner: S,
    config: Config,
}

impl<S> DeadLetters<S> {
    pub(crate) fn from_parts(inner: S, config: Config) -> Self {
        DeadLetters { inner, config }
    }

    inner_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for DeadLetters<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The copy of a request kept until its outcome is known. Headers are redacted only on
/// failure, so the success path pays for a clone of the header map and the body handle.
pub(crate) struct Captured {
    method: Method,
    uri: CapturedUri,
    headers: HeaderMap,
    body: bytes::Bytes,
    attempts: Option<u32>,
    /// Filled in by a retry policy below, for outcomes that are errors.
    pub(crate) cell: Option<AttemptCell>,
    first_attempt: SystemTime,
}

/// The request target as the client holds it: tower stacks carry an `http::Uri`, reqwest a
/// `url::Url` (kept as its text, since a URL that is not a valid `Uri` is still worth keeping).
pub(crate) enum CapturedUri {
    Http(Uri),
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    Text(String),
}

impl Captured {
    /// Starts the clock for `first_attempt`.
    pub(crate) fn new(
        method: Method,
        uri: CapturedUri,
        headers: HeaderMap,
        body: bytes::Bytes,
        attempts: Option<u32>,
    ) -> Captured {
        Captured {
            method,
            uri,
            headers,
            body,
            attempts,
            cell: None,
            first_attempt: SystemTime::now(),
        }
    }

    pub(crate) fn into_letter(
        self,
        config: &Config,
        status: Option<u16>,
        error: Option<String>,
        attempts: Option<u32>,
    ) -> DeadLetter {
        DeadLetter {
            id: 0,
            method: self.method.to_string(),
            uri: match self.uri {
                CapturedUri::Http(uri) => {
                    redact_query(&uri.to_string(), &config.redact_query, true)
                }
                CapturedUri::Text(text) => redact_query(&text, &config.redact_query, true),
            },
            headers: redacted_headers(&self.headers, &config.redact),
            body: StoredBody::from_bytes(&self.body),
            status,
            // Client errors quote the URL ("error sending request for url (...)").
            error: error.map(|e| redact_query(&e, &config.redact_query, false)),
            attempts: attempts
                .or_else(|| self.cell.as_ref().and_then(AttemptCell::get))
                .or(self.attempts)
                .unwrap_or(1),
            outcome_unknown: false,
            first_attempt: self.first_attempt,
            last_attempt: SystemTime::now(),
        }
    }
}

impl<S, B, RB> Service<http::Request<B>> for DeadLetters<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let cell = AttemptCell::default();
        req.extensions_mut().insert(cell.clone());
        let mut captured = Captured::new(
            req.method().clone(),
            CapturedUri::Http(req.uri().clone()),
            req.headers().clone(),
            // A body that can be read only once is stored empty: it is gone once sent.
            req.body().to_bytes().unwrap_or_default(),
            req.extensions().get::<Attempts>().map(|a| a.0),
        );
        captured.cell = Some(cell);
        ResponseFuture::new(self.inner.call(req), captured, self.config.clone())
    }
}
