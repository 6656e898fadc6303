use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;
use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::gate::Gate;
use crate::bucket::{Bucket, LocalBucket};
use crate::metrics::Stats;
use crate::Limits;

/// A service gated by a shared bucket; built by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` reserves this handle's slot and resolves when it arrives; `call` uses it.
/// Dropping a ready (or waiting) handle without calling returns the slot. Errors are boxed:
/// the inner service's own, or a [`ThrottleError`](crate::ThrottleError).
#[derive(Debug, Clone)]
pub struct RateLimit<S, B: Bucket + Clone = LocalBucket> {
    inner: S,
    gate: Gate<B>,
}

impl<S> RateLimit<S, LocalBucket> {
    /// Wraps `inner` in a new in-process bucket enforcing `limits`. To share one bucket
    /// between several services, build them from one [`RateLimitLayer`](crate::RateLimitLayer)
    /// or clone this service.
    pub fn new(inner: S, limits: impl Into<Limits>) -> Self {
        let bucket = LocalBucket::new(limits);
        let cap = bucket.concurrency().cloned();
        RateLimit::from_parts(inner, bucket, None, cap, None)
    }
}

impl<S, B: Bucket + Clone> RateLimit<S, B> {
    pub(crate) fn from_parts(
        inner: S,
        bucket: B,
        max_wait: Option<Duration>,
        concurrency: Option<Arc<Semaphore>>,
        stats: Option<Stats>,
    ) -> Self {
        RateLimit {
            inner,
            gate: Gate::new(bucket, max_wait, concurrency.map(PollSemaphore::new), stats),
        }
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        self.gate.bucket()
    }

    inner_accessors!(into_inner: "The inner service; a slot this handle held is returned to the bucket.");
}

impl<S, B, Req> Service<Req> for RateLimit<S, B>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    B: Bucket + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.gate.poll_acquire(cx))?;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = self.gate.take();
        ResponseFuture::new(self.inner.call(req), permit)
    }
}
