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
//! Errors from this middleware arrive as [`reqwest_middleware::Error::Middleware`];
//! [`throttle_error`] finds the [`ThrottleError`] inside.
//!
//! Place it first (outermost) in the chain when other middleware should see every attempt,
//! last when they should see only final outcomes.

use std::fmt;
use std::future::poll_fn;
use std::time::SystemTime;

use ::reqwest::{Request, Response};
use http::Extensions;
use reqwest_middleware::{Error, Middleware, Next};
use tokio::time::Instant;

use crate::bucket::{Bucket, LocalBucket};
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::retry::{Attempts, RetryPolicy, Step};
use crate::{Limits, RateLimitLayer, ThrottleError};

/// A [`Middleware`] applying a shared rate limit and a 429-aware retry policy to a `reqwest`
/// client; see the [module docs](crate::reqwest).
///
/// Cloning shares the bucket, the concurrency cap and the retry budget. The final response
/// carries [`Attempts`] in its extensions.
pub struct ThrottleMiddleware<B: Bucket + Clone = LocalBucket, C = HttpClassifier> {
    gate: RateLimitLayer<B>,
    policy: Option<RetryPolicy<C>>,
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
            policy: Some(policy),
        }
    }
}

impl<B: Bucket + Clone, C> ThrottleMiddleware<B, C> {
    /// Retries with `policy`, attached to this middleware's bucket so a 429 holds it.
    pub fn with_retry<C2>(self, policy: RetryPolicy<C2>) -> ThrottleMiddleware<B, C2> {
        let policy = policy.with_bucket(self.gate.bucket().clone());
        ThrottleMiddleware {
            gate: self.gate,
            policy: Some(policy),
        }
    }

    /// Only the gate: every response, 429s included, goes straight back to the caller.
    pub fn without_retry(self) -> Self {
        ThrottleMiddleware {
            policy: None,
            ..self
        }
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        self.gate.bucket()
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
        }
    }
}

impl<B: Bucket + Clone, C: fmt::Debug> fmt::Debug for ThrottleMiddleware<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleMiddleware")
            .field("gate", &self.gate)
            .field("policy", &self.policy)
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

fn classify<C: Classify>(classifier: &C, result: &Result<Response, Error>) -> Outcome {
    match result {
        Ok(res) => classifier.classify_response(res.status(), res.headers(), SystemTime::now()),
        // `reqwest_middleware::Error` is `#[error(transparent)]`: its `source()` skips the
        // wrapped error, so hand the classifier the wrapped error itself.
        Err(Error::Reqwest(e)) => classifier.classify_error(e),
        Err(Error::Middleware(e)) => {
            let e: &(dyn std::error::Error + Send + Sync + 'static) = e.as_ref();
            classifier.classify_error(e)
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
            let mut result = next.clone().run(req, extensions).await;
            drop(permit);

            let Some(policy) = &mut policy else {
                return result;
            };
            let outcome = classify(policy.classifier(), &result);
            let delay = match policy.step(outcome, copy.is_some(), Instant::now()) {
                Step::Done => {
                    if let Ok(res) = &mut result {
                        res.extensions_mut().insert(Attempts(policy.attempts()));
                    }
                    return result;
                }
                Step::NotReplayable => {
                    let reason = match &result {
                        Ok(res) => format!("{} after attempt {}", res.status(), policy.attempts()),
                        Err(e) => format!("{e} after attempt {}", policy.attempts()),
                    };
                    tracing::warn!(%reason, "not retrying: request body cannot be replayed");
                    return Err(Error::middleware(ThrottleError::NotReplayable { reason }));
                }
                Step::Retry(delay) => delay,
            };
            policy.log_retry(delay, outcome, &url);
            // Release the connection before sleeping.
            drop(result);
            tokio::time::sleep(delay).await;
            req = copy.expect("a retry is only decided for a replayable request");
        }
    }
}
