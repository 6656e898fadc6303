//! Response futures of the rate-limit services.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::BoxError;
use tower_service::Service;

use crate::bucket::{KeyedBucket, Reservation};
use crate::ThrottleError;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner future, holding the
    /// concurrency permit (if capped) until the response arrives.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, permit: Option<OwnedSemaphorePermit>) -> Self {
        ResponseFuture { inner, permit }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        // Free the in-flight slot as soon as the answer is in, not when the future is dropped.
        this.permit.take();
        Poll::Ready(out.map_err(Into::into))
    }
}

pin_project! {
    /// Response future of [`KeyedRateLimit`](super::KeyedRateLimit): sleeps until the key's
    /// slot, then drives the inner service.
    pub struct KeyedResponseFuture<S, Req, K>
    where
        S: Service<Req>,
        K: Hash,
        K: Eq,
        K: Clone,
    {
        #[pin]
        state: KeyedState<S, Req>,
        slot: SlotGuard<K>,
    }
}

pin_project! {
    #[project = KeyedStateProj]
    enum KeyedState<S, Req>
    where
        S: Service<Req>,
    {
        Refused { error: Option<ThrottleError> },
        Waiting { #[pin] sleep: Sleep, call: Option<(S, Req)> },
        Calling { #[pin] fut: Oneshot<S, Req> },
    }
}

/// Returns the key's slot if the future is dropped before the slot is used.
struct SlotGuard<K: Hash + Eq + Clone> {
    held: Option<(KeyedBucket<K>, K, Reservation)>,
}

impl<K: Hash + Eq + Clone> Drop for SlotGuard<K> {
    fn drop(&mut self) {
        if let Some((bucket, key, reservation)) = self.held.take() {
            bucket.cancel(&key, reservation, Instant::now());
        }
    }
}

impl<S: Service<Req>, Req, K: Hash + Eq + Clone> KeyedResponseFuture<S, Req, K> {
    pub(crate) fn waiting(
        bucket: KeyedBucket<K>,
        key: K,
        reservation: Reservation,
        svc: S,
        req: Req,
    ) -> Self {
        let at = reservation.at();
        KeyedResponseFuture {
            state: KeyedState::Waiting {
                sleep: tokio::time::sleep_until(at),
                call: Some((svc, req)),
            },
            slot: SlotGuard {
                held: Some((bucket, key, reservation)),
            },
        }
    }

    pub(crate) fn refused(error: ThrottleError) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Refused { error: Some(error) },
            slot: SlotGuard { held: None },
        }
    }
}

impl<S, Req, K> Future for KeyedResponseFuture<S, Req, K>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                KeyedStateProj::Refused { error } => {
                    let e = error.take().expect("polled after completion");
                    return Poll::Ready(Err(e.into()));
                }
                KeyedStateProj::Waiting { sleep, call } => {
                    ready!(sleep.poll(cx));
                    this.slot.held = None;
                    let (svc, req) = call.take().expect("polled after completion");
                    this.state.set(KeyedState::Calling {
                        fut: Oneshot::new(svc, req),
                    });
                }
                KeyedStateProj::Calling { fut } => {
                    return fut.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, K: Hash + Eq + Clone> std::fmt::Debug
    for KeyedResponseFuture<S, Req, K>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .finish_non_exhaustive()
    }
}
