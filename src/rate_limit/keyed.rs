use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::future::KeyedResponseFuture;
use crate::bucket::KeyedBucket;
use crate::metrics::Stats;
use crate::Limits;

/// Picks the bucket a request belongs to.
///
/// Implemented for every `Fn(&Req) -> K`; [`ByAuthority`] is the default for HTTP requests.
pub trait KeyFn<Req> {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

impl<Req, K, F> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// Keys an `http::Request` by its URI authority (`host:port`); requests without one share the
/// `None` bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAuthority;

impl<B> KeyFn<http::Request<B>> for ByAuthority {
    type Key = Option<Authority>;

    fn key(&self, req: &http::Request<B>) -> Option<Authority> {
        req.uri().authority().cloned()
    }
}

/// What [`Throttle::builder`](crate::Throttle::builder) keys its gate by, with
/// [`per_authority`](crate::ThrottleBuilder::per_authority) or
/// [`per_header`](crate::ThrottleBuilder::per_header).
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    Authority,
    Header(http::HeaderName),
}

/// The key of a request in a [`Throttle`](crate::Throttle) keyed per destination: its URI
/// authority, or the value of the header it is keyed by (`None` when absent: those requests
/// share one bucket).
///
/// Its `Debug` form never shows a header's value, which may be a credential (keying by
/// `Authorization` gives each API token its own limit): only its length and a hash keyed
/// per process.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DestinationKey(DestinationRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum DestinationRepr {
    Authority(Option<Authority>),
    Header(Option<http::HeaderValue>),
}

impl DestinationKey {
    /// The key of requests to `authority` (`host:port`), under
    /// [`per_authority`](crate::ThrottleBuilder::per_authority).
    pub fn authority(authority: Option<Authority>) -> DestinationKey {
        DestinationKey(DestinationRepr::Authority(authority))
    }

    /// The key of requests carrying `value` in the header the gate is keyed by, under
    /// [`per_header`](crate::ThrottleBuilder::per_header).
    pub fn header(value: Option<http::HeaderValue>) -> DestinationKey {
        DestinationKey(DestinationRepr::Header(value))
    }
}

impl fmt::Debug for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            DestinationRepr::Authority(a) => f.debug_tuple("Authority").field(a).finish(),
            DestinationRepr::Header(None) => f.write_str("Header(None)"),
            DestinationRepr::Header(Some(v)) => {
                // Keyed per process: the same value reads the same within one log, but the
                // hash of a credential is no fixed fingerprint to look up elsewhere.
                static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
                    std::sync::OnceLock::new();
                let hash = std::hash::BuildHasher::hash_one(
                    KEY.get_or_init(Default::default),
                    v.as_bytes(),
                );
                write!(f, "Header({} bytes, hash {hash:016x})", v.len())
            }
        }
    }
}

impl<B> KeyFn<http::Request<B>> for Destination {
    type Key = DestinationKey;

    fn key(&self, req: &http::Request<B>) -> DestinationKey {
        match self {
            Destination::Authority => DestinationKey::authority(req.uri().authority().cloned()),
            Destination::Header(name) => DestinationKey::header(req.headers().get(name).cloned()),
        }
    }
}

/// One rate limit per destination (host, workspace, token), keyed by a function of the
/// request.
///
/// `poll_ready` cannot see the request, so this variant is always ready and waits inside the
/// response future instead: `call` reserves the key's slot, the future sleeps until it, then
/// drives a clone of the inner service (`S: Clone`). Consequences: backpressure shows up as
/// slower futures rather than a pending `poll_ready`, and a `max_wait` refusal comes back
/// from the future. Dropping the future before its slot returns the slot.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_throttle::rate_limit::KeyedRateLimitLayer;
/// use tower_throttle::Quota;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(KeyedRateLimitLayer::per_authority(Quota::per_second(10)?))
///     .service(service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>("ok") }));
/// let req = http::Request::get("https://api.hubapi.com/crm/v3/objects").body(())?;
/// assert_eq!(svc.oneshot(req).await?, "ok");
/// # Ok(()) }
/// ```
pub struct KeyedRateLimitLayer<K, F> {
    bucket: KeyedBucket<K>,
    key_fn: F,
    max_wait: Option<Duration>,
    stats: Option<Stats>,
}

impl KeyedRateLimitLayer<Option<Authority>, ByAuthority> {
    /// One bucket per URI authority, each enforcing `limits`.
    pub fn per_authority(limits: impl Into<Limits>) -> Self {
        KeyedRateLimitLayer::new(limits, ByAuthority)
    }
}

impl<K: Hash + Eq + Clone, F> KeyedRateLimitLayer<K, F> {
    /// One bucket per `key_fn(&request)`, each enforcing `limits`.
    pub fn new(limits: impl Into<Limits>, key_fn: F) -> Self {
        KeyedRateLimitLayer::with_bucket(KeyedBucket::new(limits), key_fn)
    }

    /// One bucket per `key_fn(&request)`, kept in `bucket`: a [`KeyedBucket`] built
    /// elsewhere, for instance on the cheaper [`Clock::Fast`](crate::bucket::Clock::Fast), or shared
    /// with another layer or read by a metrics task (clones of a bucket share its keys).
    ///
    /// ```
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_throttle::bucket::KeyedBucket;
    /// use tower_throttle::rate_limit::KeyedRateLimitLayer;
    /// use tower_throttle::{bucket::Clock, Quota};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
    /// // `Clock::Fast` (feature `fast-clock`) reads the CPU's counter instead of tokio's clock.
    /// let per_tenant = KeyedBucket::with_clock(Quota::per_second(10)?, Clock::Tokio);
    /// let layer = KeyedRateLimitLayer::with_bucket(per_tenant.clone(), |tenant: &u32| *tenant);
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service(service_fn(|tenant: u32| async move { Ok::<_, std::convert::Infallible>(tenant) }));
    /// assert_eq!(svc.oneshot(7).await?, 7);
    /// assert_eq!(per_tenant.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn with_bucket(bucket: KeyedBucket<K>, key_fn: F) -> Self {
        KeyedRateLimitLayer {
            bucket,
            key_fn,
            max_wait: None,
            stats: None,
        }
    }

    /// Refuses a request whose key's slot is more than `max_wait` away.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Records every wait for a key's slot (count, total, longest) into `stats`.
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The shared per-key buckets.
    pub fn bucket(&self) -> &KeyedBucket<K> {
        &self.bucket
    }
}

impl<K, F: Clone> Clone for KeyedRateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            bucket: self.bucket.clone(),
            key_fn: self.key_fn.clone(),
            max_wait: self.max_wait,
            stats: self.stats.clone(),
        }
    }
}

impl<K, F> fmt::Debug for KeyedRateLimitLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("bucket", &self.bucket)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedRateLimitLayer<K, F> {
    type Service = KeyedRateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            bucket: self.bucket.clone(),
            key_fn: self.key_fn.clone(),
            max_wait: self.max_wait,
            stats: self.stats.clone(),
            _key: PhantomData,
        }
    }
}

/// The service built by [`KeyedRateLimitLayer`].
pub struct KeyedRateLimit<S, K, F> {
    inner: S,
    bucket: KeyedBucket<K>,
    key_fn: F,
    max_wait: Option<Duration>,
    stats: Option<Stats>,
    _key: PhantomData<fn() -> K>,
}

impl<S: Clone, K, F: Clone> Clone for KeyedRateLimit<S, K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            key_fn: self.key_fn.clone(),
            max_wait: self.max_wait,
            stats: self.stats.clone(),
            _key: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K, F> fmt::Debug for KeyedRateLimit<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl<S, K, F> KeyedRateLimit<S, K, F> {
    inner_accessors!();

    /// The shared per-key buckets.
    pub fn bucket(&self) -> &KeyedBucket<K> {
        &self.bucket
    }
}

impl<S, K, F, Req> Service<Req> for KeyedRateLimit<S, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: KeyFn<Req, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, Req, K>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The wait happens in the future, once the key is known; the inner service's own
        // readiness is awaited there too, on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_fn.key(&req);
        KeyedResponseFuture::new(
            self.bucket.clone(),
            key,
            self.max_wait,
            self.stats.clone(),
            self.inner.clone(),
            req,
        )
    }
}
