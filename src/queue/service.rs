use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::shared::Shared;
use super::{PriorityFn, QueueHandle};
use crate::ThrottleError;

/// The service built by [`QueueLayer`](crate::QueueLayer).
///
/// `poll_ready` is always ready: the queue needs the request (for its priority) before it can
/// order it, so the wait happens in the response future, which calls a clone of the inner
/// service once started (`S: Clone`). A full queue fails the future at once with
/// [`ThrottleError::QueueFull`]; dropping a waiting future frees its place.
pub struct Queue<S, P> {
    inner: S,
    shared: Arc<Shared>,
    priority: P,
}

impl<S, P> Queue<S, P> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, priority: P) -> Self {
        Queue {
            inner,
            shared,
            priority,
        }
    }

    /// A handle on the shared queue's counts.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            shared: self.shared.clone(),
        }
    }

    inner_accessors!();
}

impl<S: Clone, P: Clone> Clone for Queue<S, P> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            priority: self.priority.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Queue<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, P, Req> Service<Req> for Queue<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: PriorityFn<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let priority = self.priority.priority(&req);
        match self.shared.enqueue(priority) {
            Ok((key, started)) => {
                ResponseFuture::queued(self.shared.clone(), key, started, self.inner.clone(), req)
            }
            Err(capacity) => ResponseFuture::refused(ThrottleError::QueueFull { capacity }),
        }
    }
}
