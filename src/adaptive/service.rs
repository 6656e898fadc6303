use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;
use tower_service::Service;

use super::controller::{HeaderInfo, Signal};
use super::future::ResponseFuture;
use super::layer::{lock, AdaptiveLayer};
use crate::bucket::Bucket;
use crate::classify::{Classify, HttpClassifier, Outcome, MAX_BODY_INSPECTED};
use crate::headers::rate_limit_info;
use crate::retry::{seen_body, MIN_QUOTA_WAIT};

/// A service whose every response (or error) feeds a shared rate controller that sets the
/// shared bucket's rate; built by [`AdaptiveLayer`].
#[derive(Clone, Debug)]
pub struct Adaptive<S, B, C = HttpClassifier> {
    inner: S,
    cfg: AdaptiveLayer<B, C>,
}

impl<S, B: Bucket + Clone, C> Adaptive<S, B, C> {
    /// Wraps `inner`, sharing `layer`'s controller and bucket.
    pub fn new(inner: S, layer: AdaptiveLayer<B, C>) -> Self {
        Adaptive { inner, cfg: layer }
    }

    /// The current rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.cfg.rate()
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        &self.cfg.bucket
    }

    inner_accessors!();
}

impl<B: Bucket + Clone, C: Classify> AdaptiveLayer<B, C> {
    pub(crate) fn observe_response<T: 'static>(&self, response: &Response<T>) {
        self.observe_parts(response.status(), response.headers(), || {
            seen_body(response)
        });
    }

    /// Feeds one response, seen as its status, headers and (when buffered or inspected) body,
    /// to the controller and the bucket; shared with clients whose responses are not
    /// `http::Response` (the reqwest adapter).
    pub(crate) fn observe_parts(
        &self,
        status: StatusCode,
        headers_in: &HeaderMap,
        body: impl FnOnce() -> Option<Bytes>,
    ) {
        let wall = SystemTime::now();
        let outcome = self.classifier.classify_response(status, headers_in, wall);
        let headers = rate_limit_info(headers_in, wall).map(|i| HeaderInfo::from(&i));
        let (signal, hold) = match outcome {
            Outcome::Success => (Signal::Success { headers }, None),
            Outcome::RateLimited { retry_after } => {
                let retry_after = retry_after.map(|wait| self.cap_hold(wait));
                let body = body().filter(|b| b.len() <= MAX_BODY_INSPECTED);
                let spent = self
                    .classifier
                    .quota_reset(status, headers_in, body.as_deref(), wall)
                    .filter(|reset| *reset >= MIN_QUOTA_WAIT);
                match spent {
                    // A spent daily allowance says nothing about the short-window rate: a
                    // cut would only slow every caller once it is back. It is a pause (the
                    // retry policy holds the bucket until the reset), and the pause must not
                    // count as growth time either.
                    Some(reset) => (Signal::Overloaded { retry_after: reset }, retry_after),
                    None => (
                        Signal::Throttled {
                            retry_after,
                            headers,
                        },
                        retry_after,
                    ),
                }
            }
            // A 503 with `Retry-After`: the server asked every caller for a pause.
            Outcome::Transient => match self.classifier.transient_wait(status, headers_in, wall) {
                Some(wait) if !wait.is_zero() => {
                    let wait = self.cap_hold(wait);
                    (Signal::Overloaded { retry_after: wait }, Some(wait))
                }
                _ => (Signal::Transient, None),
            },
            // A 400 or 404 says nothing about the rate.
            Outcome::Permanent => return,
        };
        self.feed(&signal, hold);
    }

    pub(crate) fn observe_error(&self, err: &(dyn std::error::Error + 'static)) {
        if self.classifier.classify_error(err) == Outcome::Transient {
            self.feed(&Signal::Transient, None);
        }
    }

    /// The same cap as the retry policy's, so both hold the bucket alike.
    fn cap_hold(&self, wait: Duration) -> Duration {
        self.max_hold.map_or(wait, |cap| wait.min(cap))
    }

    /// Feeds `signal` to the controller and holds the bucket for `hold`, the server's capped
    /// wait (a spent quota's pause is longer than its hold: the retry policy holds for that).
    fn feed(&self, signal: &Signal, hold: Option<Duration>) {
        let now = Instant::now();
        let new_rate = lock(&self.controller).on_outcome(now, signal);
        if let Some(rate) = new_rate {
            // A controller keeps its rate finite and positive, so this cannot fail; if a
            // custom one breaks that promise, the bucket keeps its last good rate.
            if let Err(e) = self.bucket.set_rate(rate) {
                tracing::warn!(rate, error = %e, "adaptive controller returned an invalid rate");
            }
        }
        if let Some(wait) = hold {
            if self.hold_on_retry_after && !wait.is_zero() {
                if let Some(until) = now.checked_add(wait) {
                    self.bucket.hold_until(until);
                }
            }
        }
    }
}

impl<S, B, C, Req, T> Service<Req> for Adaptive<S, B, C>
where
    S: Service<Req, Response = Response<T>>,
    S::Error: Into<tower::BoxError>,
    B: Bucket + Clone,
    C: Classify,
    T: 'static,
{
    type Response = Response<T>;
    type Error = tower::BoxError;
    type Future = ResponseFuture<S::Future, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.cfg.clone())
    }
}
