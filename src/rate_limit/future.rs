//! Response futures of the rate-limit services.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::BoxError;
use tower_service::Service;

use crate::bucket::{KeyedBucket, KeyedPermit, Reservation};
use crate::metrics::Stats;
use crate::ThrottleError;

pub use super::weighted::WeightedFuture;

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

type Acquire<K> = Pin<Box<dyn Future<Output = Option<KeyedPermit<K>>> + Send>>;

pin_project! {
    /// Response future of [`KeyedRateLimit`](super::KeyedRateLimit): takes the key's in-flight
    /// permit (when its limits carry a cap), sleeps until the key's slot (re-slotting if a hold
    /// of that key voided it meanwhile), then drives the inner service.
    pub struct KeyedResponseFuture<S, Req, K>
    where
        S: Service<Req>,
        K: Hash,
        K: Eq,
        K: Clone,
    {
        #[pin]
        state: KeyedState<S, Req>,
        acquiring: Option<Acquire<K>>,
        slot: SlotGuard<K>,
        permit: Option<KeyedPermit<K>>,
        call: Option<(S, Req)>,
        max_wait: Option<Duration>,
        stats: Option<Stats>,
    }
}

pin_project! {
    #[project = KeyedStateProj]
    enum KeyedState<S, Req>
    where
        S: Service<Req>,
    {
        Refused { error: Option<ThrottleError> },
        Acquiring,
        Reserving,
        Waiting { #[pin] sleep: Sleep },
        Calling { #[pin] fut: Oneshot<S, Req> },
    }
}

/// The key's bucket, and the slot to return if the future is dropped before using it.
struct SlotGuard<K: Hash + Eq + Clone> {
    bucket: KeyedBucket<K>,
    key: K,
    held: Option<Reservation>,
}

impl<K: Hash + Eq + Clone> Drop for SlotGuard<K> {
    fn drop(&mut self) {
        if let Some(reservation) = self.held.take() {
            self.bucket.cancel(&self.key, reservation, Instant::now());
        }
    }
}

impl<S: Service<Req>, Req, K: Hash + Eq + Clone + Send + Sync + 'static>
    KeyedResponseFuture<S, Req, K>
{
    pub(crate) fn new(
        bucket: KeyedBucket<K>,
        key: K,
        max_wait: Option<Duration>,
        stats: Option<Stats>,
        svc: S,
        req: Req,
    ) -> Self {
        // A cap is taken before the slot, so a caller stuck behind it sits on no rate slot.
        let acquiring: Option<Acquire<K>> = bucket.limits().concurrency().map(|_| {
            let (b, k) = (bucket.clone(), key.clone());
            Box::pin(async move { b.acquire(&k).await }) as Acquire<K>
        });
        KeyedResponseFuture {
            state: if acquiring.is_some() {
                KeyedState::Acquiring
            } else {
                KeyedState::Reserving
            },
            acquiring,
            slot: SlotGuard {
                bucket,
                key,
                held: None,
            },
            permit: None,
            call: Some((svc, req)),
            max_wait,
            stats,
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
                KeyedStateProj::Acquiring => {
                    let fut = this.acquiring.as_mut().expect("acquiring implies a future");
                    *this.permit = ready!(fut.as_mut().poll(cx));
                    *this.acquiring = None;
                    this.state.set(KeyedState::Reserving);
                }
                KeyedStateProj::Reserving => {
                    let guard = &mut *this.slot;
                    let now = Instant::now();
                    let reserved = guard.bucket.reserve_now(&guard.key, *this.max_wait);
                    if let (Ok(r), Some(stats)) = (&reserved, this.stats.as_ref()) {
                        stats.record_gate_wait(r.at().saturating_duration_since(now));
                    }
                    match reserved {
                        Ok(r) if r.is_admitted() || r.at() <= now => {
                            let (svc, req) = this.call.take().expect("polled after completion");
                            this.state.set(KeyedState::Calling {
                                fut: Oneshot::new(svc, req),
                            });
                        }
                        Ok(r) => {
                            let at = r.at();
                            guard.held = Some(r);
                            this.state.set(KeyedState::Waiting {
                                sleep: tokio::time::sleep_until(at),
                            });
                        }
                        Err(e) => {
                            *this.permit = None;
                            this.state.set(KeyedState::Refused { error: Some(e) });
                        }
                    }
                }
                KeyedStateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    let guard = &mut *this.slot;
                    let r = guard.held.take().expect("waiting implies a slot");
                    if guard.bucket.is_current(&guard.key, &r, Instant::now()) {
                        let (svc, req) = this.call.take().expect("polled after completion");
                        this.state.set(KeyedState::Calling {
                            fut: Oneshot::new(svc, req),
                        });
                    } else {
                        // A hold of this key came while we slept: the old slot is void. Handed
                        // back first, exact when it is still the key's latest.
                        guard.bucket.cancel(&guard.key, r, Instant::now());
                        this.state.set(KeyedState::Reserving);
                    }
                }
                KeyedStateProj::Calling { fut } => {
                    let out = ready!(fut.poll(cx));
                    // The in-flight slot is free as soon as the answer is in.
                    *this.permit = None;
                    return Poll::Ready(out.map_err(Into::into));
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
