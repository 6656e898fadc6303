use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;
use tower_service::Service;

use super::controller::{HeaderInfo, Signal};
use super::future::ResponseFuture;
use super::layer::{lock, AdaptiveLayer};
use crate::bucket::Bucket;
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::headers::rate_limit_info;

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
    pub(crate) fn observe_response<T>(&self, response: &Response<T>) {
        self.observe_parts(response.status(), response.headers());
    }

    /// Feeds one response, seen as its status and headers, to the controller and the bucket;
    /// shared with clients whose responses are not `http::Response` (the reqwest adapter).
    pub(crate) fn observe_parts(&self, status: StatusCode, headers_in: &HeaderMap) {
        let wall = SystemTime::now();
        let outcome = self.classifier.classify_response(status, headers_in, wall);
        let headers = rate_limit_info(headers_in, wall).map(|i| HeaderInfo::from(&i));
        let signal = match outcome {
            Outcome::Success => Signal::Success { headers },
            Outcome::RateLimited { retry_after } => Signal::Throttled {
                retry_after: retry_after.map(|wait| self.cap_hold(wait)),
                headers,
            },
            // A 503 with `Retry-After`: the server asked every caller for a pause.
            Outcome::Transient => match self.classifier.transient_wait(status, headers_in, wall) {
                Some(wait) if !wait.is_zero() => Signal::Overloaded {
                    retry_after: self.cap_hold(wait),
                },
                _ => Signal::Transient,
            },
            // A 400 or 404 says nothing about the rate.
            Outcome::Permanent => return,
        };
        self.feed(&signal);
    }

    pub(crate) fn observe_error(&self, err: &(dyn std::error::Error + 'static)) {
        if self.classifier.classify_error(err) == Outcome::Transient {
            self.feed(&Signal::Transient);
        }
    }

    /// The same cap as the retry policy's, so both hold the bucket alike.
    fn cap_hold(&self, wait: Duration) -> Duration {
        self.max_hold.map_or(wait, |cap| wait.min(cap))
    }

    fn feed(&self, signal: &Signal) {
        let now = Instant::now();
        let new_rate = lock(&self.controller).on_outcome(now, signal);
        if let Some(rate) = new_rate {
            // A controller keeps its rate finite and positive, so this cannot fail; if a
            // custom one breaks that promise, the bucket keeps its last good rate.
            if let Err(e) = self.bucket.set_rate(rate) {
                tracing::warn!(rate, error = %e, "adaptive controller returned an invalid rate");
            }
        }
        let wait = match signal {
            Signal::Throttled {
                retry_after: Some(wait),
                ..
            }
            | Signal::Overloaded { retry_after: wait } => Some(*wait),
            _ => None,
        };
        if let Some(wait) = wait {
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
