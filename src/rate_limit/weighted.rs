//! The gate for requests that cost more than one unit: records, bytes or tokens.
//!
//! `poll_ready` cannot know what the next request costs, so this gate decides in `call`, from
//! the request's [`Cost`] extension, and waits in the response future: one reservation of the
//! whole cost, atomic across every window ([`Bucket::reserve_weighted`]), then the inner call
//! on a clone of the inner service (as [`KeyedRateLimit`](super::KeyedRateLimit) does).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::util::Oneshot;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::wait::{SlotWait, Woken};
use super::IntoLocalBucket;
use crate::bucket::{Bucket, LocalBucket, Reservation, Reserve, ReserveFuture};
use crate::RateLimitLayer;

/// What one request takes from the limit, as a request extension; read by
/// [`WeightedRateLimitLayer`]. A request without it costs 1.
///
/// ```
/// use tower_throttle::rate_limit::Cost;
///
/// let mut req = http::Request::new(());
/// // A batch of 75 objects against Braze's per-object limit.
/// req.extensions_mut().insert(Cost(75));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cost(pub u32);

/// A shared gate that admits each HTTP request at its [`Cost`], atomically across every
/// window of the bucket's limits, with the limits' concurrency cap.
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_throttle::rate_limit::{Cost, WeightedRateLimitLayer};
/// use tower_throttle::Quota;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower::BoxError> {
/// // 100 records per second, at most 100 at once.
/// let layer = WeightedRateLimitLayer::new(Quota::per_second(100)?.with_burst(100)?);
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) }));
/// let start = tokio::time::Instant::now();
/// for _ in 0..3 {
///     let mut req = http::Request::new(());
///     req.extensions_mut().insert(Cost(100));
///     svc.clone().oneshot(req).await?;
/// }
/// // Three batches of 100 records: at once, then one second apart.
/// assert_eq!(start.elapsed(), Duration::from_secs(2));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WeightedRateLimitLayer<B = LocalBucket> {
    // The shared gate's configuration; only what is admitted per request differs.
    gate: RateLimitLayer<B>,
}

impl WeightedRateLimitLayer<LocalBucket> {
    /// A layer with an in-process bucket enforcing `limits` (and their concurrency cap), or
    /// sharing a [`LocalBucket`] given instead, as [`RateLimitLayer::new`] does.
    pub fn new(limits: impl IntoLocalBucket) -> Self {
        WeightedRateLimitLayer {
            gate: RateLimitLayer::new(limits),
        }
    }
}

impl<B: Bucket + Clone> WeightedRateLimitLayer<B> {
    /// A layer over an existing bucket (shared with other layers, or on Redis); the cap of the
    /// bucket's limits comes with it.
    pub fn with_bucket(bucket: B) -> Self {
        WeightedRateLimitLayer {
            gate: RateLimitLayer::with_bucket(bucket),
        }
    }

    /// Refuses a request whose slot is more than `max_wait` away (nothing is reserved).
    pub fn with_max_wait(self, max_wait: Duration) -> Self {
        WeightedRateLimitLayer {
            gate: self.gate.with_max_wait(max_wait),
        }
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        self.gate.bucket()
    }
}

impl<S, B: Bucket + Clone> Layer<S> for WeightedRateLimitLayer<B> {
    type Service = WeightedRateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        WeightedRateLimit {
            inner,
            bucket: self.gate.bucket.clone(),
            max_wait: self.gate.max_wait,
            concurrency: self.gate.concurrency.clone(),
        }
    }
}

/// The service built by [`WeightedRateLimitLayer`].
#[derive(Clone)]
pub struct WeightedRateLimit<S, B = LocalBucket> {
    inner: S,
    bucket: B,
    max_wait: Option<Duration>,
    concurrency: Option<Arc<Semaphore>>,
}

impl<S: fmt::Debug, B: fmt::Debug> fmt::Debug for WeightedRateLimit<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedRateLimit")
            .field("inner", &self.inner)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl<S, B> WeightedRateLimit<S, B> {
    inner_accessors!();

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        &self.bucket
    }
}

impl<S, B, ReqB> Service<http::Request<ReqB>> for WeightedRateLimit<S, B>
where
    S: Service<http::Request<ReqB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    B: Bucket + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = WeightedFuture<S, http::Request<ReqB>, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The cost is only known in `call`: the wait happens in the future, and the inner
        // service's own readiness is awaited there too, on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let cost = req.extensions().get::<Cost>().map_or(1, |c| c.0.max(1));
        WeightedFuture {
            state: State::Start,
            permit_fut: self.concurrency.clone().map(|s| {
                Box::pin(async move { s.acquire_owned().await.ok() })
                    as Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>
            }),
            permit: None,
            reserving: None,
            slot: SlotGuard {
                bucket: self.bucket.clone(),
                held: None,
            },
            cost,
            max_wait: self.max_wait,
            call: Some((self.inner.clone(), req)),
        }
    }
}

/// Hands the slot back if the future is dropped before using it.
struct SlotGuard<B: Bucket> {
    bucket: B,
    held: Option<Reservation>,
}

impl<B: Bucket> Drop for SlotGuard<B> {
    fn drop(&mut self) {
        if let Some(r) = self.held.take() {
            self.bucket.cancel(r, Instant::now());
        }
    }
}

type PermitFuture = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Start,
        Reserve,
        Waiting { wait: SlotWait },
        Calling { #[pin] fut: Oneshot<S, Req> },
        Done,
    }
}

pin_project! {
    /// Response future of [`WeightedRateLimit`]: takes the in-flight permit (if capped),
    /// reserves the request's whole cost, sleeps until the slot (reserving again if a hold or a
    /// rate cut voided it), then drives the inner service.
    pub struct WeightedFuture<S, Req, B>
    where
        S: Service<Req>,
        B: Bucket,
    {
        #[pin]
        state: State<S, Req>,
        permit_fut: Option<PermitFuture>,
        permit: Option<OwnedSemaphorePermit>,
        // Behind a `Mutex` only so the future stays `Sync`; reached through `get_mut`.
        reserving: Option<Mutex<ReserveFuture>>,
        slot: SlotGuard<B>,
        cost: u32,
        max_wait: Option<Duration>,
        call: Option<(S, Req)>,
    }
}

impl<S, Req, B> Future for WeightedFuture<S, Req, B>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    B: Bucket,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let decided = match this.state.as_mut().project() {
                StateProj::Start => {
                    // The permit first, so a caller stuck behind the cap sits on no slot.
                    if let Some(fut) = this.permit_fut.as_mut() {
                        *this.permit = ready!(fut.as_mut().poll(cx));
                        *this.permit_fut = None;
                    }
                    this.state.set(State::Reserve);
                    continue;
                }
                StateProj::Reserve => match this.reserving.as_mut() {
                    Some(fut) => {
                        let fut = fut.get_mut().unwrap_or_else(PoisonError::into_inner);
                        let r = ready!(fut.as_mut().poll(cx));
                        *this.reserving = None;
                        r
                    }
                    None => match this.slot.bucket.reserve_weighted(
                        Instant::now(),
                        *this.cost,
                        *this.max_wait,
                    ) {
                        Reserve::Ready(r) => r,
                        Reserve::Pending(fut) => {
                            *this.reserving = Some(Mutex::new(fut));
                            continue;
                        }
                    },
                },
                StateProj::Waiting { wait } => {
                    let woken = ready!(wait.poll(cx));
                    let current = {
                        let r = this.slot.held.as_ref().expect("waiting implies a slot");
                        this.slot.bucket.is_current(r, Instant::now())
                    };
                    if current && woken == Woken::Early {
                        wait.rearm(&this.slot.bucket);
                        continue;
                    }
                    let r = this.slot.held.take().expect("waiting implies a slot");
                    if current {
                        let (svc, req) = this.call.take().expect("polled after completion");
                        this.state.set(State::Calling {
                            fut: Oneshot::new(svc, req),
                        });
                    } else {
                        // A hold or a rate change came while we waited: hand the slot back (exact
                        // when it is still the latest) and reserve again.
                        this.slot.bucket.cancel(r, Instant::now());
                        this.state.set(State::Reserve);
                    }
                    continue;
                }
                StateProj::Calling { fut } => {
                    let out = ready!(fut.poll(cx));
                    *this.permit = None;
                    this.state.set(State::Done);
                    return Poll::Ready(out.map_err(Into::into));
                }
                StateProj::Done => panic!("WeightedFuture polled after completion"),
            };
            match decided {
                Err(e) => {
                    *this.permit = None;
                    this.state.set(State::Done);
                    return Poll::Ready(Err(e.into()));
                }
                Ok(r) if r.at() <= Instant::now() => {
                    let (svc, req) = this.call.take().expect("polled after completion");
                    this.state.set(State::Calling {
                        fut: Oneshot::new(svc, req),
                    });
                }
                Ok(r) => {
                    let at = r.at();
                    this.slot.held = Some(r);
                    this.state.set(State::Waiting {
                        wait: SlotWait::new(&this.slot.bucket, at),
                    });
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, B: Bucket> fmt::Debug for WeightedFuture<S, Req, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedFuture")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}
