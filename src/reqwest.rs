//! The same gate and retry policy for [`reqwest`] clients, as a
//! [`reqwest_middleware::Middleware`] (feature `reqwest`).
//!
//! [`ThrottleMiddleware`] does, inside one middleware, what the tower stack does with two
//! layers: every attempt (first or retry) takes a slot from the shared bucket and waits for it
//! with a `tokio` timer, then goes down the middleware chain; the response is classified by
//! the same [`Classify`] rules, a 429 with `Retry-After` holds the *shared*
//! bucket so every request of the client pauses, and transient failures back off with jitter
//! under the same attempt limit, deadline and budget as [`RetryPolicy`]. Requests are replayed
//! with [`reqwest::Request::try_clone`]; a streaming body cannot be, and a request that needed
//! a retry then fails with [`ThrottleError::NotReplayable`] (reqwest-middleware#44) instead of
//! silently returning the first failure.
//!
//! Each attempt is decided by the retry policy's own code, so everything in the
//! [`RetryPolicy`] table holds here too: a 503's `Retry-After` is waited out and holds the
//! bucket, a policy's [keyed bucket](RetryPolicy::with_keyed_bucket) is held for the refused
//! request's key, a spent daily quota holds until it is back (or ends at once with
//! [`ThrottleError::QuotaExhausted`] past the deadline), the policy's stats are recorded, and
//! under a scheduler with a concurrency cap a waiting retry gives its slot back.
//!
//! A refusal whose body the classifier reads ([`Classify::reads_body`]: HubSpot's 429, whose
//! `policyName` tells a spent daily allowance from a secondly one) is read first, within the
//! bounds of an [`InspectBodyLayer`] (at most
//! [`MAX_BODY_INSPECTED`](crate::classify::MAX_BODY_INSPECTED) bytes, within 2 s by default:
//! [`with_inspect_time_limit`](ThrottleMiddleware::with_inspect_time_limit)), so an OAuth
//! app's daily 429, which lacks the private apps' daily header, holds until the reset here
//! too. The caller gets the same status, headers, url, extensions and body bytes (a body
//! read whole is also in the extensions as [`InspectedBody`]); a body larger or slower than
//! the bounds is handed on as the bytes read followed by the rest of the stream, and read as
//! a plain 429. Other responses are not waited for.
//!
//! Unlike `reqwest-retry`, the retry decision sees the whole response, including
//! `Retry-After` as seconds or an HTTP-date (reqwest-middleware#146), and the gate paces every
//! attempt so retries cannot exceed the limit.
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use tower_throttle::reqwest::ThrottleMiddleware;
//! use tower_throttle::{presets, RetryPolicy};
//!
//! let throttle = ThrottleMiddleware::new(presets::customerio_track())
//!     .with_retry(RetryPolicy::default());
//! let bucket = throttle.bucket().clone(); // for snapshots, or to share with a tower stack
//! let client = ClientBuilder::new(reqwest::Client::new()).with(throttle).build();
//! # let _ = (client, bucket);
//! ```
//!
//! [`with_adaptive`](ThrottleMiddleware::with_adaptive) adds the adaptive controller of
//! [`AdaptiveLayer`] (fed by every attempt) and
//! [`with_dead_letters`](ThrottleMiddleware::with_dead_letters) the dead-letter store of
//! [`DeadLetterLayer`] (fed by final failures), each through the same code as the tower layer.
//!
//! Errors from this middleware arrive as [`reqwest_middleware::Error::Middleware`];
//! [`throttle_error`] finds the [`ThrottleError`] inside.
//!
//! Place it first (outermost) in the chain when other middleware should see every attempt,
//! last when they should see only final outcomes.

use std::fmt;
use std::future::poll_fn;
use std::time::{Duration, SystemTime};

use ::reqwest::{Request, Response, ResponseBuilderExt};
use bytes::Bytes;
use http::Extensions;
use reqwest_middleware::{Error, Middleware, Next};
use tokio::time::Instant;

use crate::adaptive::{AdaptiveLayer, RateController};
use crate::bucket::{Bucket, LocalBucket};
use crate::classify::{Classify, HttpClassifier};
use crate::dead_letter::layer::Config as DeadLetterConfig;
use crate::dead_letter::service::{Captured, CapturedUri};
use crate::dead_letter::{error_text, DeadLetterLayer, DeadLetterStore, DeadLettered};
use crate::retry::future::RetryDelay;
use crate::retry::{
    Attempts, Idempotent, InspectBodyLayer, InspectedBody, Observed, RetryPolicy, Step,
};
use crate::{ConfigError, Limits, RateLimitLayer, ThrottleError};

/// A [`Middleware`] applying a shared rate limit and a 429-aware retry policy to a `reqwest`
/// client; see the [module docs](crate::reqwest).
///
/// Cloning shares the bucket, the concurrency cap and the retry budget. The final response
/// carries [`Attempts`] in its extensions.
pub struct ThrottleMiddleware<B: Bucket + Clone = LocalBucket, C = HttpClassifier> {
    gate: RateLimitLayer<B>,
    policy: Option<RetryPolicy<C>>,
    /// The retry policy's classifier, kept when retrying is turned off, so the adaptive layer
    /// always classifies (and caps `Retry-After`) as the retry policy it is paired with does.
    classifier: C,
    adaptive: Option<AdaptiveLayer<B, C>>,
    dead_letters: Option<DeadLetterConfig>,
    /// The bounds of a refusal's body read; which bodies are read is the classifier's call.
    inspect: InspectBodyLayer,
}

impl ThrottleMiddleware<LocalBucket, HttpClassifier> {
    /// A middleware with a new bucket enforcing `limits` (and their concurrency cap), retrying
    /// with [`RetryPolicy::default`] attached to that bucket.
    pub fn new(limits: impl Into<Limits>) -> Self {
        ThrottleMiddleware::from_layer(RateLimitLayer::new(limits))
    }
}

impl<B: Bucket + Clone> ThrottleMiddleware<B, HttpClassifier> {
    /// A middleware gated by an existing [`RateLimitLayer`]: a tower stack built from the same
    /// layer and this client then share one bucket and one concurrency cap. Retries with
    /// [`RetryPolicy::default`] attached to that bucket.
    pub fn from_layer(gate: RateLimitLayer<B>) -> Self {
        let policy = RetryPolicy::default().with_bucket(gate.bucket().clone());
        ThrottleMiddleware {
            gate,
            classifier: policy.classifier().clone(),
            policy: Some(policy),
            adaptive: None,
            dead_letters: None,
            inspect: InspectBodyLayer::new(),
        }
    }
}

impl<B: Bucket + Clone, C> ThrottleMiddleware<B, C> {
    /// Retries with `policy`, attached to this middleware's bucket so a 429 holds it.
    pub fn with_retry<C2: Classify>(self, policy: RetryPolicy<C2>) -> ThrottleMiddleware<B, C2> {
        let policy = policy.with_bucket(self.gate.bucket().clone());
        let adaptive = self.adaptive.map(|a| a.with_retry_policy(&policy));
        ThrottleMiddleware {
            gate: self.gate,
            classifier: policy.classifier().clone(),
            policy: Some(policy),
            adaptive,
            dead_letters: self.dead_letters,
            inspect: self.inspect,
        }
    }

    /// Only the gate: every response, 429s included, goes straight back to the caller.
    pub fn without_retry(self) -> Self {
        ThrottleMiddleware {
            policy: None,
            ..self
        }
    }

    /// Lets `controller` set the shared bucket's rate from what the server does, exactly as
    /// an [`AdaptiveLayer`] in a tower stack: every attempt's outcome (first or retry; status
    /// and rate-limit headers, or a transient error) is fed to it, each new rate goes to
    /// [`Bucket::set_rate`], and a 429 with `Retry-After` holds the bucket. A refusal by the
    /// gate itself (nothing was sent) is not fed. The bucket's rate is set to the
    /// controller's now; that fails with [`ConfigError`] when the bucket refuses it.
    ///
    /// ```
    /// use tower_throttle::Aimd;
    /// use tower_throttle::bucket::Bucket;
    /// use tower_throttle::reqwest::ThrottleMiddleware;
    /// use tower_throttle::Quota;
    ///
    /// # fn main() -> Result<(), tower_throttle::ConfigError> {
    /// // Start at 20/s; halve on a 429, grow back slowly, never below 1/s or above 50/s.
    /// let throttle = ThrottleMiddleware::new(Quota::per_second(50)?)
    ///     .with_adaptive(Aimd::new(20.0, 1.0, 50.0)?)?;
    /// assert_eq!(throttle.bucket().rate(), 20.0);
    /// # Ok(()) }
    /// ```
    pub fn with_adaptive(
        self,
        controller: impl RateController + 'static,
    ) -> Result<Self, ConfigError>
    where
        C: Classify,
    {
        let layer = AdaptiveLayer::new(self.gate.bucket().clone(), controller)?;
        // One classifier and one `Retry-After` cap with the retry policy, here as in the tower
        // stack: a hostile `Retry-After` holds the bucket no longer with adaptive control.
        let layer = match &self.policy {
            Some(policy) => layer.with_retry_policy(policy),
            None => layer.with_classifier(self.classifier.clone()),
        };
        Ok(ThrottleMiddleware {
            adaptive: Some(layer),
            ..self
        })
    }

    /// Keeps every request whose final outcome (after retries) is a failure in `store`, as a
    /// [`DeadLetterLayer`] outermost in a tower stack would, with its defaults: a response
    /// that is not 2xx, or any error (including this middleware's own refusals), is
    /// appended as a [`DeadLetter`](crate::dead_letter::DeadLetter) with `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie` redacted, before the outcome goes
    /// back. A stored response carries a [`DeadLettered`] extension; an error is returned
    /// unchanged (so `reqwest_middleware::Error::Reqwest` stays matchable) and the letter's
    /// id is logged. A streaming body is stored empty. For other redactions, failure rules
    /// or stats, use [`with_dead_letter_layer`](Self::with_dead_letter_layer).
    ///
    /// ```
    /// use tower_throttle::dead_letter::MemoryStore;
    /// use tower_throttle::reqwest::ThrottleMiddleware;
    /// use tower_throttle::Quota;
    ///
    /// # fn main() -> Result<(), tower_throttle::ConfigError> {
    /// let store = MemoryStore::new(); // clones share the letters
    /// let throttle = ThrottleMiddleware::new(Quota::per_second(10)?).with_dead_letters(store.clone());
    /// # let _ = throttle;
    /// # Ok(()) }
    /// ```
    pub fn with_dead_letters(self, store: impl DeadLetterStore) -> Self {
        self.with_dead_letter_layer(DeadLetterLayer::new(store))
    }

    /// [`with_dead_letters`](Self::with_dead_letters) with the store, redacted headers,
    /// failure rule and stats of `layer` (which may also serve a tower stack).
    pub fn with_dead_letter_layer(self, layer: DeadLetterLayer) -> Self {
        ThrottleMiddleware {
            dead_letters: Some(layer.config),
            ..self
        }
    }

    /// Waits at most `limit` after the head for the body of a refusal the classifier reads
    /// ([`Classify::reads_body`]), as [`InspectBodyLayer::time_limit`] does below a tower
    /// retry layer (default 2 s); a slower body is handed on as it streams, and the refusal
    /// is read from its headers.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for zero, which would never read a body.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_throttle::{presets, reqwest::ThrottleMiddleware};
    ///
    /// # fn main() -> Result<(), tower_throttle::ConfigError> {
    /// let throttle = ThrottleMiddleware::new(presets::hubspot())
    ///     .with_inspect_time_limit(Duration::from_millis(500))?;
    /// assert!(ThrottleMiddleware::new(presets::hubspot())
    ///     .with_inspect_time_limit(Duration::ZERO)
    ///     .is_err());
    /// # let _ = throttle;
    /// # Ok(()) }
    /// ```
    pub fn with_inspect_time_limit(self, limit: Duration) -> Result<Self, ConfigError> {
        Ok(ThrottleMiddleware {
            inspect: self.inspect.time_limit(limit)?,
            ..self
        })
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        self.gate.bucket()
    }

    /// The current rate of the adaptive controller, if one was added with
    /// [`with_adaptive`](Self::with_adaptive).
    pub fn adaptive_rate(&self) -> Option<f64> {
        self.adaptive.as_ref().map(AdaptiveLayer::rate)
    }

    /// The retry policy, if retrying.
    pub fn policy(&self) -> Option<&RetryPolicy<C>> {
        self.policy.as_ref()
    }
}

impl<B: Bucket + Clone, C: Clone> Clone for ThrottleMiddleware<B, C> {
    fn clone(&self) -> Self {
        ThrottleMiddleware {
            gate: self.gate.clone(),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            adaptive: self.adaptive.clone(),
            dead_letters: self.dead_letters.clone(),
            inspect: self.inspect,
        }
    }
}

impl<B: Bucket + Clone, C: fmt::Debug> fmt::Debug for ThrottleMiddleware<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleMiddleware")
            .field("gate", &self.gate)
            .field("policy", &self.policy)
            .field("adaptive", &self.adaptive)
            .field("dead_letters", &self.dead_letters.is_some())
            .field("inspect", &self.inspect)
            .finish()
    }
}

/// The [`ThrottleError`] inside an error returned by a client using [`ThrottleMiddleware`]
/// (a refused wait, a body that could not be replayed), if that is what it is.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::{reqwest::throttle_error, ThrottleError};
///
/// let err = reqwest_middleware::Error::middleware(ThrottleError::WaitTooLong {
///     wait: Duration::from_secs(5),
///     max_wait: Duration::from_secs(1),
/// });
/// assert!(matches!(throttle_error(&err), Some(ThrottleError::WaitTooLong { .. })));
/// ```
pub fn throttle_error(err: &Error) -> Option<&ThrottleError> {
    match err {
        Error::Middleware(e) => e.downcast_ref::<ThrottleError>(),
        Error::Reqwest(_) => None,
    }
}

/// The error inside a `reqwest_middleware::Error`: it is `#[error(transparent)]`, so its
/// `source()` skips the wrapped error; classifiers and error texts need the wrapped one.
fn inner_error(err: &Error) -> &(dyn std::error::Error + 'static) {
    match err {
        Error::Reqwest(e) => e,
        Error::Middleware(e) => {
            let e: &(dyn std::error::Error + Send + Sync + 'static) = e.as_ref();
            e
        }
    }
}

/// The policy's reading of one attempt, as the tower `Policy` reads it: the body it may see
/// is the one [`read_body`] recorded, as below a tower retry layer.
fn observe<C: Classify>(policy: &RetryPolicy<C>, result: &Result<Response, Error>) -> Observed {
    match result {
        Ok(res) => policy.observe_response(
            res.status(),
            res.headers(),
            || inspected(res),
            SystemTime::now(),
        ),
        Err(e) => policy.observe_error(inner_error(e)),
    }
}

/// The body [`read_body`] recorded, for the policy and the controller alike.
fn inspected(res: &Response) -> Option<Bytes> {
    res.extensions().get::<InspectedBody>().map(|b| b.0.clone())
}

/// `res` with its body read within `bounds` by the inspect layer's own code: a whole body is
/// recorded as [`InspectedBody`] and handed on as those bytes; a larger, slower or failing
/// one as the bytes read followed by the rest of the stream (or its error). Status, version,
/// headers, extensions and url are kept.
async fn read_body(bounds: &InspectBodyLayer, res: Response) -> Response {
    let url = res.url().clone();
    let res = match bounds.read(http::Response::from(res)).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    let (mut parts, body) = res.into_parts();
    let body = match parts.extensions.get::<InspectedBody>() {
        // Buffered, so `bytes()` and `content_length()` answer as for the original.
        Some(InspectedBody(bytes)) => ::reqwest::Body::from(bytes.clone()),
        None => ::reqwest::Body::wrap(body),
    };
    // The conversion back takes the url from an extension only reqwest's builder can set.
    if let Some(with_url) = http::response::Builder::new().url(url).extensions_ref() {
        parts.extensions.extend(with_url.clone());
    }
    Response::from(http::Response::from_parts(parts, body))
}

/// The request without its body, for the keyed hold's key function.
fn head_of(req: &Request, extensions: &Extensions) -> http::Request<()> {
    let mut head = http::Request::new(());
    *head.method_mut() = req.method().clone();
    if let Ok(uri) = req.url().as_str().parse() {
        *head.uri_mut() = uri;
    }
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    *head.extensions_mut() = extensions.clone();
    head
}

// Called from `Middleware::handle` only, so with its bounds.
impl<B: Bucket + Clone, C: Classify + Send + Sync + 'static> ThrottleMiddleware<B, C> {
    fn observe(&self, result: &Result<Response, Error>) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        match result {
            // A refusal's body was read (within bounds) before this, when the retry policy
            // needs it: the controller reads the same bytes.
            Ok(res) => adaptive.observe_parts(res.status(), res.headers(), || inspected(res)),
            Err(e) => adaptive.observe_error(inner_error(e)),
        }
    }

    /// Stores the final outcome when it is a failure; a stored response is marked.
    async fn dead_letter(
        &self,
        captured: Option<Captured>,
        attempts: Option<u32>,
        result: &mut Result<Response, Error>,
    ) {
        let (Some(config), Some(captured)) = (&self.dead_letters, captured) else {
            return;
        };
        let letter = match &*result {
            Ok(res) if !(config.is_failure)(res.status()) => return,
            Ok(res) => captured.into_letter(config, Some(res.status().as_u16()), None, attempts),
            Err(e) => {
                captured.into_letter(config, None, Some(error_text(inner_error(e))), attempts)
            }
        };
        let Some(id) = config.write(letter).await else {
            return;
        };
        match result {
            Ok(res) => {
                res.extensions_mut().insert(DeadLettered { id });
            }
            Err(e) => {
                // reqwest's errors quote the URL, secret query parameters included.
                let error =
                    crate::dead_letter::redact_query(&e.to_string(), &config.redact_query, false);
                tracing::warn!(id, %error, "request failed; stored as a dead letter");
            }
        }
    }

    /// The gate and retry loop: every attempt until the policy is done.
    async fn attempts(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        mut policy: Option<&mut RetryPolicy<C>>,
    ) -> reqwest_middleware::Result<Response> {
        let mut req = req;
        loop {
            let copy = match policy {
                Some(_) => req.try_clone(),
                None => None,
            };
            let mut gate = self.gate.gate();
            poll_fn(|cx| gate.poll_acquire(cx))
                .await
                .map_err(Error::middleware)?;
            let permit = gate.take();
            let url = req.url().clone();
            // Kept only when a hold would need the request's key: the request is moved below.
            let head = policy
                .as_deref()
                .filter(|p| p.holds_keys())
                .map(|_| head_of(&req, extensions));
            let idempotent = Idempotent::from_parts(req.method(), req.headers(), extensions);
            let mut result = next.clone().run(req, extensions).await;
            // Only with a policy to read it: without one the body is the caller's alone.
            let reads_body = policy
                .as_deref()
                .zip(result.as_ref().ok())
                .is_some_and(|(p, res)| p.classifier().reads_body(res.status()));
            if reads_body {
                result = match result {
                    Ok(res) => Ok(read_body(&self.inspect, res).await),
                    err => err,
                };
            }
            drop(permit);
            self.observe(&result);

            let Some(policy) = policy.as_deref_mut() else {
                return result;
            };
            let observed = observe(policy, &result);
            let outcome = observed.outcome();
            let now = Instant::now();
            // As in the tower stack: an answer lost after the request was written is only
            // worth a resend for an idempotent request.
            let unknown = match &result {
                Err(e) => crate::classify::outcome_unknown(inner_error(e)) && !idempotent,
                Ok(_) => false,
            };
            let (step, hold) = policy.decide(observed, copy.is_some() && !unknown, now);
            if let (Some(until), Some(head)) = (hold, head) {
                policy.hold_key(until, || head);
            }
            let delay = match step {
                Step::Done => {
                    if let Ok(res) = &mut result {
                        res.extensions_mut().insert(Attempts(policy.attempts()));
                    }
                    return result;
                }
                Step::NotReplayable if unknown => {
                    let reason = match &result {
                        Err(e) => format!("{e} after attempt {}", policy.attempts()),
                        Ok(res) => res.status().to_string(),
                    };
                    return Err(Error::middleware(ThrottleError::OutcomeUnknown { reason }));
                }
                Step::NotReplayable => {
                    let err = match &result {
                        Ok(res) => policy.not_replayable(&res.status()),
                        Err(e) => policy.not_replayable(e),
                    };
                    return Err(Error::middleware(err));
                }
                Step::QuotaExhausted { wait, status } => {
                    return Err(Error::middleware(ThrottleError::QuotaExhausted {
                        wait,
                        status,
                    }));
                }
                Step::Retry(delay) => delay,
            };
            policy.log_retry(delay, outcome, &url);
            // Release the connection before sleeping.
            drop(result);
            // As in the tower stack: under a scheduler with a concurrency cap, the wait gives
            // the request's slot back.
            RetryDelay::new(crate::clock::later(now, delay)).await;
            req = copy.expect("a retry is only decided for a replayable request");
        }
    }
}

#[async_trait::async_trait]
impl<B, C> Middleware for ThrottleMiddleware<B, C>
where
    B: Bucket + Clone,
    C: Classify + Send + Sync + 'static,
{
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // A per-request copy, as tower does: its own attempt count, deadline and jitter draws.
        let mut policy = self.policy.clone();
        if let Some(p) = &mut policy {
            p.start(Instant::now());
        }
        let captured = self.dead_letters.as_ref().map(|_| capture(&req));
        let mut result = self.attempts(req, extensions, next, policy.as_mut()).await;
        let attempts = policy.as_ref().map(RetryPolicy::attempts);
        self.dead_letter(captured, attempts, &mut result).await;
        result
    }
}

/// The request as a dead letter would keep it (body bytes only when buffered).
fn capture(req: &Request) -> Captured {
    let body = req
        .body()
        .and_then(|b| b.as_bytes())
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    Captured::new(
        req.method().clone(),
        CapturedUri::Text(req.url().as_str().to_owned()),
        req.headers().clone(),
        body,
        None,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::classify::Outcome;
    use crate::Aimd;
    use crate::Quota;

    fn hostile_429() -> Result<Response, Error> {
        let res = http::Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "99999999999")
            .body(Vec::<u8>::new())
            .unwrap();
        Ok(Response::from(res))
    }

    fn aimd() -> Aimd {
        Aimd::new(8.0, 1.0, 10.0).unwrap()
    }

    /// Regression (issue 15, reqwest): `with_adaptive` classified with a default
    /// [`HttpClassifier`] and its 60 s `Retry-After` cap, so a hostile `Retry-After` held the
    /// bucket for 60 s behind a retry policy capped at 3 s, and a status the policy's
    /// classifier reads as a rate limit (a 403 here) did not cut the rate. The adaptive layer
    /// now classifies with the retry policy's classifier, in whichever order they are added.
    #[tokio::test(start_paused = true)]
    async fn with_adaptive_classifies_with_the_retry_policys_classifier_not_a_default_one() {
        let cap = Duration::from_secs(3);
        let classifier = HttpClassifier::new().retry_after_cap(cap).status(
            StatusCode::FORBIDDEN,
            Outcome::RateLimited { retry_after: None },
        );
        let policy = || RetryPolicy::new(classifier.clone());
        let quota = || Quota::per_second(20).unwrap();
        let wirings = [
            ThrottleMiddleware::new(quota())
                .with_retry(policy())
                .with_adaptive(aimd())
                .unwrap(),
            ThrottleMiddleware::new(quota())
                .with_adaptive(aimd())
                .unwrap()
                .with_retry(policy()),
            ThrottleMiddleware::new(quota())
                .with_retry(policy())
                .without_retry()
                .with_adaptive(aimd())
                .unwrap(),
        ];
        for (i, mw) in wirings.into_iter().enumerate() {
            let now = Instant::now();
            mw.observe(&hostile_429());
            let held = mw.bucket().held_until(now).expect("a 429 holds the bucket");
            assert_eq!(held - now, cap, "wiring {i}");
            assert_eq!(mw.adaptive_rate(), Some(4.0), "wiring {i}");
            let forbidden = http::Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(Vec::<u8>::new())
                .unwrap();
            mw.observe(&Ok(Response::from(forbidden)));
            assert_eq!(
                mw.adaptive_rate(),
                Some(2.0),
                "wiring {i}: a 403 is a rate limit"
            );
        }
    }
}
