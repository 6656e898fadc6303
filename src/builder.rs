//! Ergonomics: [`ServiceBuilderExt`] for layer-by-layer stacks, and [`Throttle::builder`] for
//! the usual stack in one call.
//!
//! Both build the same thing: a [`RetryLayer`] above a [`RateLimitLayer`], the retry policy
//! holding the gate's bucket, so a retry goes back through the gate and a 429 with
//! `Retry-After` pauses every caller (see [the stacking order](crate::retry#stacking-order)).
//!
//! Layer by layer, with the extension trait:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_throttle::ServiceBuilderExt;
//! use tower_throttle::{presets, RetryPolicy};
//!
//! # fn client() -> tower::util::BoxCloneService<http::Request<http_body_util::Full<bytes::Bytes>>, http::Response<()>, tower::BoxError> { tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(())) })) }
//! let svc = ServiceBuilder::new()
//!     .throttle(presets::hubspot(), RetryPolicy::default()) // retry above gate, one bucket
//!     .timeout(Duration::from_secs(30))                      // per attempt (head only), below the gate
//!     .service(client());
//! # let _ = svc;
//! ```
//!
//! In one call, with the same result and a stable type to store:
//!
//! ```
//! # use std::time::Duration;
//! use tower_throttle::{presets, RetryPolicy, Throttle};
//!
//! # fn client() -> tower::util::BoxCloneService<http::Request<http_body_util::Full<bytes::Bytes>>, http::Response<()>, tower::BoxError> { tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(())) })) }
//! let client = Throttle::builder()
//!     .limits(presets::hubspot())
//!     .retry(RetryPolicy::default())
//!     .timeout(Duration::from_secs(30))
//!     .build(client())?;
//! # Ok::<(), tower_throttle::ConfigError>(())
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;
use tower::layer::util::Stack;
use tower::retry::Retry;
use tower::timeout::Timeout;
use tower::util::Either;
use tower::{BoxError, ServiceBuilder};
use tower_layer::Layer;
use tower_service::Service;

use bytes::Bytes;
use http_body_util::Full;

use crate::adaptive::{Adaptive, AdaptiveLayer, RateController};
use crate::batch::{Batch, BatchFormat, BatchStats};
use crate::bucket::{Bucket, KeyedBucket, LocalBucket};
use crate::classify::{Classify, HttpClassifier};
use crate::dead_letter::{DeadLetterLayer, DeadLetterStore, DeadLetters};
use crate::metrics::Stats;
use crate::rate_limit::{Destination, DestinationKey, KeyedRateLimit, KeyedRateLimitLayer};
use crate::retry::{InspectBody, InspectBodyLayer, ReplayBody, RetryLayer, RetryPolicy};
use crate::timeout::BodyTimeout;
use crate::{BatchLayer, ConfigError, Limits, RateLimit, RateLimitLayer};

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// This crate's layers as [`ServiceBuilder`] methods (sealed: implemented for
/// `ServiceBuilder` only).
///
/// The names avoid tower's own `rate_limit` and `retry`, which take different arguments and
/// would win method resolution.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_throttle::ServiceBuilderExt;
/// use tower_throttle::{LocalBucket, Quota, RetryPolicy};
///
/// let bucket = LocalBucket::new(Quota::per_second(80)?);
/// let builder = ServiceBuilder::new()
///     .retry_429(RetryPolicy::default().with_bucket(bucket.clone()))
///     .shared_rate_limit_bucket(bucket);
/// # let _ = builder;
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`RateLimitLayer`] with a new bucket for `limits` (and their concurrency cap).
    /// See [`crate::rate_limit`].
    fn shared_rate_limit(
        self,
        limits: impl Into<Limits>,
    ) -> ServiceBuilder<Stack<RateLimitLayer, L>>;

    /// Adds a [`RateLimitLayer`] over an existing bucket, shared with other stacks or with a
    /// retry policy. See [`crate::rate_limit`] and [`crate::bucket`].
    fn shared_rate_limit_bucket<B: Bucket + Clone>(
        self,
        bucket: B,
    ) -> ServiceBuilder<Stack<RateLimitLayer<B>, L>>;

    /// Adds a [`RetryLayer`]: 429s wait out `Retry-After`, transient failures back off. Put it
    /// above the rate limit and attach the same bucket with [`RetryPolicy::with_bucket`], or
    /// use [`throttle`](ServiceBuilderExt::throttle). See [`crate::retry`].
    fn retry_429<C>(self, policy: RetryPolicy<C>) -> ServiceBuilder<Stack<RetryLayer<C>, L>>;

    /// Adds an [`AdaptiveLayer`]: put it between the retry layer and the rate limit whose
    /// bucket it drives, so it sees every attempt. See [`crate::adaptive`].
    fn adaptive<B: Bucket + Clone>(
        self,
        layer: AdaptiveLayer<B>,
    ) -> ServiceBuilder<Stack<AdaptiveLayer<B>, L>>;

    /// Adds a [`DeadLetterLayer`]: outermost, so it keeps only final failures. See
    /// [`crate::dead_letter`].
    fn dead_letters(self, layer: DeadLetterLayer) -> ServiceBuilder<Stack<DeadLetterLayer, L>>;

    /// Adds both, in the right order and sharing one bucket: a [`RetryLayer`] whose policy
    /// holds the bucket of the [`RateLimitLayer`] below it. See [`crate::retry`] for why the
    /// order matters.
    fn throttle<C>(
        self,
        limits: impl Into<Limits>,
        policy: RetryPolicy<C>,
    ) -> ServiceBuilder<Stack<RateLimitLayer, Stack<RetryLayer<C>, L>>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn shared_rate_limit(
        self,
        limits: impl Into<Limits>,
    ) -> ServiceBuilder<Stack<RateLimitLayer, L>> {
        self.layer(RateLimitLayer::new(limits))
    }

    fn shared_rate_limit_bucket<B: Bucket + Clone>(
        self,
        bucket: B,
    ) -> ServiceBuilder<Stack<RateLimitLayer<B>, L>> {
        self.layer(RateLimitLayer::with_bucket(bucket))
    }

    fn retry_429<C>(self, policy: RetryPolicy<C>) -> ServiceBuilder<Stack<RetryLayer<C>, L>> {
        self.layer(RetryLayer::new(policy))
    }

    fn adaptive<B: Bucket + Clone>(
        self,
        layer: AdaptiveLayer<B>,
    ) -> ServiceBuilder<Stack<AdaptiveLayer<B>, L>> {
        self.layer(layer)
    }

    fn dead_letters(self, layer: DeadLetterLayer) -> ServiceBuilder<Stack<DeadLetterLayer, L>> {
        self.layer(layer)
    }

    fn throttle<C>(
        self,
        limits: impl Into<Limits>,
        policy: RetryPolicy<C>,
    ) -> ServiceBuilder<Stack<RateLimitLayer, Stack<RetryLayer<C>, L>>> {
        let gate = RateLimitLayer::new(limits);
        let policy = policy.with_bucket(gate.bucket().clone());
        self.layer(RetryLayer::new(policy)).layer(gate)
    }
}

/// The usual stack as one service: retry above a shared gate, with an optional per-attempt
/// timeout below the gate. Build it with [`Throttle::builder`].
///
/// The layers inside are private, so the type stays the same as features are added; its
/// response future is boxed (one allocation per request, not per attempt). Clones share the
/// bucket, the concurrency cap and the retry budget.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceExt};
/// use tower_throttle::retry::Attempts;
/// use tower_throttle::{Quota, RetryPolicy, Throttle};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let api = service_fn(|_req: http::Request<Full<Bytes>>| async {
///     Ok::<_, tower::BoxError>(http::Response::new(()))
/// });
/// let client = Throttle::builder()
///     .limits(Quota::per_second(10)?)
///     .retry(RetryPolicy::default())
///     .build(api)?;
///
/// let start = tokio::time::Instant::now();
/// for _ in 0..3 {
///     let res = client.clone().oneshot(http::Request::new(Full::new(Bytes::new()))).await?;
///     assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
/// }
/// // Three calls at 10/s: the third waits 200 ms for its slot.
/// assert_eq!(start.elapsed(), Duration::from_millis(200));
/// # Ok(()) }
/// ```
pub struct Throttle<S, C = HttpClassifier> {
    inner: Outer<S, C>,
    buckets: Buckets,
}

/// The bucket every request goes through, or one per destination.
#[derive(Clone, Debug)]
enum Buckets {
    Shared(LocalBucket),
    Keyed(KeyedBucket<DestinationKey>),
}

/// The gate: shared (with the adaptive layer above it when configured, classifying as the
/// retry policy does) or keyed per destination.
type Gated<S, C> = Either<
    Either<Adaptive<RateLimit<Attempt<S>>, LocalBucket, C>, RateLimit<Attempt<S>>>,
    KeyedRateLimit<Attempt<S>, DestinationKey, Destination>,
>;
/// Retry above the gate, with the dead-letter layer outermost when configured.
type Outer<S, C> =
    Either<DeadLetters<Retry<RetryPolicy<C>, Gated<S, C>>>, Retry<RetryPolicy<C>, Gated<S, C>>>;

impl Throttle<(), HttpClassifier> {
    /// A builder with no limits yet, the default [`RetryPolicy`], no timeout and no
    /// `max_wait`.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder {
            limits: None,
            retry: RetryPolicy::default(),
            timeout: None,
            max_wait: None,
            adaptive: None,
            dead_letters: None,
            stats: None,
            keyed: None,
            inspect: None,
            body: PhantomData,
        }
    }
}

/// [`ThrottleBuilder`] state: response bodies are passed through as the client returns them
/// (no timeout, or [`head_timeout`](ThrottleBuilder::head_timeout)).
#[derive(Debug, Clone, Copy)]
pub struct Streamed;

/// [`ThrottleBuilder`] state after [`timeout`](ThrottleBuilder::timeout): each attempt
/// reads the whole body within the timeout ([`BodyTimeout`]), and responses come back
/// buffered as `Full<Bytes>`.
#[derive(Debug, Clone, Copy)]
pub struct Buffered;

/// [`ThrottleBuilder`] state after [`inspect_bodies`](ThrottleBuilder::inspect_bodies):
/// bodies stream as in [`Streamed`], and the refusals whose bodies the classifier reads are
/// read first, within bounds ([`InspectBody`]).
#[derive(Debug, Clone, Copy)]
pub struct Inspected;

impl<S, C> Throttle<S, C> {
    /// The shared bucket: take a snapshot, change its rate, or gate another stack with it
    /// ([`RateLimitLayer::with_bucket`]). `None` when the gate is keyed per destination
    /// ([`keyed_bucket`](Self::keyed_bucket)).
    pub fn bucket(&self) -> Option<&LocalBucket> {
        match &self.buckets {
            Buckets::Shared(b) => Some(b),
            Buckets::Keyed(_) => None,
        }
    }

    /// The per-destination buckets, when built with
    /// [`per_authority`](ThrottleBuilder::per_authority) or
    /// [`per_header`](ThrottleBuilder::per_header).
    pub fn keyed_bucket(&self) -> Option<&KeyedBucket<DestinationKey>> {
        match &self.buckets {
            Buckets::Shared(_) => None,
            Buckets::Keyed(b) => Some(b),
        }
    }
}

impl<S: Clone, C: Clone> Clone for Throttle<S, C> {
    fn clone(&self) -> Self {
        Throttle {
            inner: self.inner.clone(),
            buckets: self.buckets.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Throttle<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, C, B, R> Service<http::Request<B>> for Throttle<S, C>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    C: Classify + Send + Sync + 'static,
    B: ReplayBody + Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<R>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(self.inner.call(req))
    }
}

/// Builds a [`Throttle`]; start from [`Throttle::builder`].
///
/// Only [`limits`](ThrottleBuilder::limits) is required; adaptive control, dead letters,
/// a timeout, load shedding and stats are optional, and the built type is the same whichever
/// are chosen.
///
/// The second parameter says what the timeout covers: [`Streamed`] (the default, and after
/// [`head_timeout`](ThrottleBuilder::head_timeout)) or [`Buffered`] (after
/// [`timeout`](ThrottleBuilder::timeout)), because it changes the response body type.
#[derive(Debug)]
#[must_use = "call .build(client) to get the service"]
pub struct ThrottleBuilder<C = HttpClassifier, T = Streamed> {
    limits: Option<Limits>,
    retry: RetryPolicy<C>,
    timeout: Option<Duration>,
    max_wait: Option<Duration>,
    // A mutex only to make the builder `Sync`; it is never contended.
    adaptive: Option<std::sync::Mutex<Box<dyn RateController>>>,
    dead_letters: Option<DeadLetterLayer>,
    stats: Option<Stats>,
    keyed: Option<Destination>,
    /// The time bound of [`inspect_bodies`](ThrottleBuilder::inspect_bodies).
    inspect: Option<Duration>,
    body: PhantomData<fn() -> T>,
}

impl<C, T> ThrottleBuilder<C, T> {
    /// The limits to enforce, for example a [preset](crate::presets). Required.
    pub fn limits(mut self, limits: impl Into<Limits>) -> Self {
        self.limits = Some(limits.into());
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]). Its bucket is replaced by the
    /// gate's, so a 429 holds the bucket every request goes through.
    pub fn retry<C2>(self, policy: RetryPolicy<C2>) -> ThrottleBuilder<C2, T> {
        self.rebuild(|_| policy)
    }

    /// The builder with another classifier or body state, the rest kept.
    fn rebuild<C2, T2>(
        self,
        retry: impl FnOnce(RetryPolicy<C>) -> RetryPolicy<C2>,
    ) -> ThrottleBuilder<C2, T2> {
        ThrottleBuilder {
            limits: self.limits,
            retry: retry(self.retry),
            timeout: self.timeout,
            max_wait: self.max_wait,
            adaptive: self.adaptive,
            dead_letters: self.dead_letters,
            stats: self.stats,
            keyed: self.keyed,
            inspect: self.inspect,
            body: PhantomData,
        }
    }

    /// Fails an attempt whose response, **body included**, has not arrived within
    /// `timeout` once sent (time waiting at the gate does not count). The timeout is a
    /// transient failure, retried with backoff.
    ///
    /// Each attempt reads the whole body ([`BodyTimeout`]), so a server that sends its
    /// headers and then drips the body cannot hold a caller past the timeout, and a slow body
    /// is retried like a slow head. Responses come back buffered (`http::Response<Full<Bytes>>`),
    /// which also lets the retry policy read a 429's body (HubSpot's daily refusal names its
    /// policy there: [`Classify::quota_reset`]).
    /// To stream bodies instead, use [`head_timeout`](ThrottleBuilder::head_timeout).
    pub fn timeout(self, timeout: Duration) -> ThrottleBuilder<C, Buffered> {
        let mut buffered = self.rebuild(|retry| retry);
        buffered.timeout = Some(timeout);
        buffered
    }

    /// Refuses at once, with [`ThrottleError::WaitTooLong`](crate::ThrottleError::WaitTooLong),
    /// a request whose slot is more than `max_wait` away (load shedding).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Lets `controller` move the shared bucket's rate from what the server answers (see
    /// [`adaptive`](crate::adaptive)); it sees every attempt, retries included. The limits
    /// stay a ceiling: the controller's `max` is lowered to the rate of their shortest
    /// window (so a controller built with the default `max` takes its bound from them), and
    /// it classifies with the retry policy's classifier and `Retry-After` cap, so a hostile
    /// header holds the gate no longer with adaptive control than without.
    pub fn adaptive(mut self, controller: impl RateController + 'static) -> Self {
        self.adaptive = Some(std::sync::Mutex::new(Box::new(controller)));
        self
    }

    /// Keeps every request whose final outcome is a failure in `store`, credentials
    /// redacted (see [`dead_letter`](crate::dead_letter)); outermost, so it sees final
    /// outcomes only.
    pub fn dead_letters(mut self, store: impl DeadLetterStore) -> Self {
        self.dead_letters = Some(DeadLetterLayer::new(store));
        self
    }

    /// Records gate waits, attempt outcomes, retries and dead letters into `stats`.
    pub fn stats(mut self, stats: Stats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Coalesces records into the vendor's batch calls ([`BatchLayer`]) above the stack:
    /// the batch layer sits above the retry layer and holds the same bucket, so a record
    /// refused for the rate inside a multi-status answer pauses every caller as a refused
    /// batch does, and re-batched records back off with the retry policy's
    /// [`backoff`](RetryPolicy::backoff). A dead-letter store given with
    /// [`dead_letters`](Self::dead_letters) goes above the batch layer and keeps each failed
    /// *record*. Pass a format, or a configured [`BatchLayer`].
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{service_fn, ServiceExt};
    /// use tower_throttle::batch::HubSpotBatch;
    /// use tower_throttle::{presets, RetryPolicy, Throttle};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// // A stand-in for HubSpot: every input upserted.
    /// let api = service_fn(|req: http::Request<Full<Bytes>>| async move {
    ///     assert_eq!(req.uri().path(), "/crm/v3/objects/contacts/batch/upsert");
    ///     let answer = Full::new(Bytes::from_static(br#"{"status":"COMPLETE","results":[]}"#));
    ///     Ok::<_, tower::BoxError>(http::Response::new(answer))
    /// });
    /// let client = Throttle::builder()
    ///     .limits(presets::hubspot())
    ///     .retry(RetryPolicy::default())
    ///     .batch(HubSpotBatch::upsert("contacts"))
    ///     .build(api)?;
    /// let contact = http::Request::post("https://api.hubapi.com/crm/v3/objects/contacts")
    ///     .body(Full::from(r#"{"id":"a@example.com","idProperty":"email","properties":{}}"#))?;
    /// assert_eq!(client.clone().oneshot(contact).await?.status(), 200);
    /// assert_eq!(client.batch_stats().batches(), 1);
    /// # Ok(()) }
    /// ```
    pub fn batch<F: BatchFormat>(self, batch: impl Into<BatchLayer<F>>) -> BatchBuilder<F, C, T> {
        BatchBuilder {
            throttle: self,
            batch: batch.into(),
        }
    }

    /// Gives each URI authority (`host:port`) its own bucket enforcing the limits, for one
    /// client calling several APIs (or several workspaces on their own hosts). A 429 holds only
    /// the destination that sent it, and the limits' concurrency cap applies per destination.
    ///
    /// A keyed gate waits in the response future, not in `poll_ready` (see
    /// [`KeyedRateLimitLayer`]); adaptive control, which learns one rate, cannot be combined
    /// with it (`build` says so).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{service_fn, ServiceExt};
    /// use tower_throttle::rate_limit::DestinationKey;
    /// use tower_throttle::{Quota, Throttle};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let api = service_fn(|_req: http::Request<Full<Bytes>>| async {
    ///     Ok::<_, tower::BoxError>(http::Response::new(()))
    /// });
    /// let client = Throttle::builder()
    ///     .limits(Quota::per_second(10)?)
    ///     .per_authority()
    ///     .build(api)?;
    ///
    /// let req = http::Request::get("https://api.hubapi.com/crm/v3/objects/contacts")
    ///     .body(Full::new(Bytes::new()))?;
    /// client.clone().oneshot(req).await?;
    /// let key = DestinationKey::authority(Some("api.hubapi.com".parse()?));
    /// assert_eq!(client.keyed_bucket().map(|b| b.len()), Some(1));
    /// assert!(client.keyed_bucket().unwrap().held_until(&key, tokio::time::Instant::now()).is_none());
    /// # Ok(()) }
    /// ```
    pub fn per_authority(mut self) -> Self {
        self.keyed = Some(Destination::Authority);
        self
    }

    /// Gives each value of the header `name` its own bucket enforcing the limits: a
    /// workspace, tenant or account header, or `Authorization` where the API limits each
    /// token (the values stay out of `Debug` output, see [`DestinationKey`]). Requests without
    /// the header share one bucket. As [`per_authority`](Self::per_authority) otherwise.
    pub fn per_header(mut self, name: http::HeaderName) -> Self {
        self.keyed = Some(Destination::Header(name));
        self
    }

    /// Checks the configuration and assembles the stack around `client`, with `head` as the
    /// tower timeout on each attempt.
    fn assemble<S>(self, client: S, head: Option<Duration>) -> Result<Throttle<S, C>, ConfigError>
    where
        C: Clone,
    {
        let limits = self.limits.ok_or_else(|| {
            ConfigError::Invalid(
                "Throttle::builder() needs limits: call .limits(presets::hubspot()) or \
                 .limits(Quota::per_second(n)?) before .build(client)"
                    .into(),
            )
        })?;
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::Invalid(
                "a zero timeout would fail every request: pass a positive duration to \
                 .timeout(..) or leave it out"
                    .into(),
            ));
        }
        let mut policy = self.retry;
        let mut dead_letters = self.dead_letters;
        if let Some(stats) = &self.stats {
            policy = policy.with_stats(stats.clone());
            dead_letters = dead_letters.map(|d| d.with_stats(stats.clone()));
        }
        let attempt = match head {
            Some(d) => Attempt::Timed(Timeout::new(client, d)),
            None => Attempt::Plain(client),
        };
        let (gated, policy, buckets) = match self.keyed {
            Some(destination) => {
                if self.adaptive.is_some() {
                    return Err(ConfigError::Invalid(
                        "adaptive control learns one rate, and a keyed gate has one per \
                         destination: drop .adaptive(..) or .per_authority()/.per_header(..)"
                            .into(),
                    ));
                }
                let bucket = KeyedBucket::new(limits);
                let mut gate =
                    KeyedRateLimitLayer::with_bucket(bucket.clone(), destination.clone());
                if let Some(max_wait) = self.max_wait {
                    gate = gate.with_max_wait(max_wait);
                }
                if let Some(stats) = self.stats {
                    gate = gate.with_stats(stats);
                }
                let policy = policy.with_keyed_bucket(bucket.clone(), destination);
                (
                    Either::Right(gate.layer(attempt)),
                    policy,
                    Buckets::Keyed(bucket),
                )
            }
            None => {
                let mut gate = RateLimitLayer::new(limits);
                if let Some(max_wait) = self.max_wait {
                    gate = gate.with_max_wait(max_wait);
                }
                if let Some(stats) = self.stats {
                    gate = gate.with_stats(stats);
                }
                let bucket = gate.bucket().clone();
                let gated = match self.adaptive {
                    Some(controller) => {
                        let controller = controller
                            .into_inner()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        Either::Left(
                            AdaptiveLayer::new(bucket.clone(), controller)?
                                .with_retry_policy(&policy)
                                .layer(gate.layer(attempt)),
                        )
                    }
                    None => Either::Right(gate.layer(attempt)),
                };
                let policy = policy.with_bucket(bucket.clone());
                (Either::Left(gated), policy, Buckets::Shared(bucket))
            }
        };
        let retry = Retry::new(policy, gated);
        let inner = match dead_letters {
            Some(layer) => Either::Left(layer.layer(retry)),
            None => Either::Right(retry),
        };
        Ok(Throttle { inner, buckets })
    }
}

impl<C> ThrottleBuilder<C, Streamed> {
    /// Fails an attempt whose response head (status and headers) has not arrived within
    /// `timeout` once sent; the body is not timed, and is streamed to the caller as the client
    /// returns it. This is [`tower::timeout::Timeout`] on each attempt. Prefer
    /// [`timeout`](ThrottleBuilder::timeout) unless bodies are too large to buffer.
    /// Add [`inspect_bodies`](ThrottleBuilder::inspect_bodies) for the retry policy to read
    /// a 429's body (HubSpot's daily refusal names its policy only there).
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Wraps `client`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when no limits were given, or a zero timeout;
    /// [`ConfigError::MinAboveMax`] when the adaptive controller's `min` is above the limits.
    pub fn build<S>(self, client: S) -> Result<Throttle<S, C>, ConfigError>
    where
        C: Clone,
    {
        let head = self.timeout;
        self.assemble(client, head)
    }

    /// Reads the body of each refusal whose body the retry policy's classifier reads
    /// ([`Classify::reads_body`]: for [`HttpClassifier`], HubSpot's 429, whose body tells a
    /// spent *daily* allowance from a secondly one), up to
    /// [`MAX_BODY_INSPECTED`](crate::classify::MAX_BODY_INSPECTED) bytes and `within` after
    /// the head, so the policy can hold until the allowance is back; other bodies still
    /// stream, untouched and not waited for. Without it a streaming stack tells a daily 429
    /// only from `X-HubSpot-RateLimit-Daily-Remaining`, which OAuth apps do not receive. A
    /// [`head_timeout`](ThrottleBuilder::head_timeout) also bounds this read. See
    /// [`InspectBodyLayer`]; responses come back as
    /// [`PrefixedBody`](crate::retry::PrefixedBody) around the client's body.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{service_fn, ServiceExt};
    /// use tower_throttle::{presets, Throttle};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let api = service_fn(|_req: http::Request<Full<Bytes>>| async {
    ///     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
    /// });
    /// let client = Throttle::builder()
    ///     .limits(presets::hubspot())
    ///     .head_timeout(Duration::from_secs(30))
    ///     .inspect_bodies(Duration::from_secs(2))
    ///     .build(api)?;
    /// let res = client.oneshot(http::Request::new(Full::new(Bytes::new()))).await?;
    /// assert_eq!(res.into_body().collect().await?.to_bytes(), "{}");
    /// # Ok(()) }
    /// ```
    pub fn inspect_bodies(self, within: Duration) -> ThrottleBuilder<C, Inspected> {
        let mut inspected = self.rebuild(|retry| retry);
        inspected.inspect = Some(within);
        inspected
    }
}

impl<C> ThrottleBuilder<C, Inspected> {
    /// As [`ThrottleBuilder::head_timeout`] before
    /// [`inspect_bodies`](ThrottleBuilder::inspect_bodies).
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Wraps `client`, reading refusals' bodies for the classifier within bounds.
    ///
    /// # Errors
    /// As [`build`](ThrottleBuilder::build) without inspection, and [`ConfigError::Zero`]
    /// for a zero `within`.
    pub fn build<S>(self, client: S) -> Result<Throttle<InspectBody<S>, C>, ConfigError>
    where
        C: Classify,
    {
        let within = self.inspect.unwrap_or(Duration::ZERO);
        let inspect =
            InspectBodyLayer::for_classifier(self.retry.classifier()).time_limit(within)?;
        let head = self.timeout;
        self.assemble(inspect.layer(client), head)
    }
}

impl<C> ThrottleBuilder<C, Buffered> {
    /// Wraps `client`, each attempt reading the whole response body within the
    /// [`timeout`](ThrottleBuilder::timeout).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when no limits were given, or a zero timeout;
    /// [`ConfigError::MinAboveMax`] when the adaptive controller's `min` is above the limits.
    pub fn build<S>(self, client: S) -> Result<Throttle<BodyTimeout<S>, C>, ConfigError>
    where
        C: Clone,
    {
        // `assemble` refuses a zero timeout before anything runs.
        let timeout = self.timeout.unwrap_or(Duration::ZERO);
        self.assemble(BodyTimeout::new(client, timeout), None)
    }
}

/// One attempt against the client, with or without a timeout; errors boxed either way.
#[derive(Clone, Debug)]
enum Attempt<S> {
    Timed(Timeout<S>),
    Plain(S),
}

impl<S, Req> Service<Req> for Attempt<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Attempt::Timed(s) => s.poll_ready(cx),
            Attempt::Plain(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Attempt::Timed(s) => AttemptFuture::Timed { f: s.call(req) },
            Attempt::Plain(s) => AttemptFuture::Plain { f: s.call(req) },
        }
    }
}

pin_project! {
    #[project = AttemptProj]
    enum AttemptFuture<F> {
        Timed { #[pin] f: tower::timeout::future::ResponseFuture<F> },
        Plain { #[pin] f: F },
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttemptProj::Timed { f } => f.poll(cx),
            AttemptProj::Plain { f } => f.poll(cx).map_err(Into::into),
        }
    }
}

/// [`ThrottleBuilder`] after [`batch`](ThrottleBuilder::batch): builds the usual stack with
/// a [`BatchLayer`] on top (and the dead-letter layer, if any, above that).
#[derive(Debug)]
#[must_use = "call .build(client) to get the service"]
pub struct BatchBuilder<F, C = HttpClassifier, T = Streamed> {
    throttle: ThrottleBuilder<C, T>,
    batch: BatchLayer<F>,
}

/// The usual stack with batching: records in, one response per record out. Build it with
/// [`ThrottleBuilder::batch`].
pub struct Batched<F> {
    inner: Either<DeadLetters<Batch<F>>, Batch<F>>,
    buckets: Buckets,
    stats: BatchStats,
}

impl<F> Batched<F> {
    /// The shared bucket, as [`Throttle::bucket`].
    pub fn bucket(&self) -> Option<&LocalBucket> {
        match &self.buckets {
            Buckets::Shared(b) => Some(b),
            Buckets::Keyed(_) => None,
        }
    }

    /// The batch layer's counters.
    pub fn batch_stats(&self) -> &BatchStats {
        &self.stats
    }
}

impl<F> Clone for Batched<F> {
    fn clone(&self) -> Self {
        Batched {
            inner: self.inner.clone(),
            buckets: self.buckets.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<F> fmt::Debug for Batched<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: BatchFormat, B: ReplayBody> Service<http::Request<B>> for Batched<F> {
    type Response = http::Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Full<Bytes>>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(self.inner.call(req))
    }
}

impl<F: BatchFormat, C, T> BatchBuilder<F, C, T> {
    /// Puts the batch layer over a built throttle: the throttle's bucket, the retry policy's
    /// back-off, the dead-letter layer above.
    fn assemble<S, R>(
        batch: BatchLayer<F>,
        dead_letters: Option<DeadLetterLayer>,
        throttle: Throttle<S, C>,
    ) -> Batched<F>
    where
        S: Service<http::Request<Full<Bytes>>, Response = http::Response<R>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        C: Classify + Send + Sync + 'static,
        R: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    {
        let buckets = throttle.buckets.clone();
        let batch = match &buckets {
            Buckets::Shared(bucket) => batch.with_bucket(bucket.clone()),
            // A keyed gate holds per destination; the records' own 429s back off.
            Buckets::Keyed(_) => batch,
        };
        let stats = batch.stats();
        let batched = batch.layer(throttle);
        let inner = match dead_letters {
            Some(layer) => Either::Left(layer.layer(batched)),
            None => Either::Right(batched),
        };
        Batched {
            inner,
            buckets,
            stats,
        }
    }

    /// The batch layer with the retry policy's back-off, and the dead-letter layer taken
    /// out of the throttle (it goes above the batch layer, to keep records, not batches).
    fn split(
        mut self,
    ) -> (
        ThrottleBuilder<C, T>,
        BatchLayer<F>,
        Option<DeadLetterLayer>,
    ) {
        let dead_letters = self.throttle.dead_letters.take();
        let batch = self.batch.with_backoff(*self.throttle.retry.backoff());
        (self.throttle, batch, dead_letters)
    }
}

impl<F: BatchFormat, C> BatchBuilder<F, C, Streamed> {
    /// Wraps `client`.
    ///
    /// # Errors
    /// As [`ThrottleBuilder::build`].
    pub fn build<S, R>(self, client: S) -> Result<Batched<F>, ConfigError>
    where
        S: Service<http::Request<Full<Bytes>>, Response = http::Response<R>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        C: Classify + Send + Sync + 'static,
        R: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    {
        let (throttle, batch, dead_letters) = self.split();
        Ok(Self::assemble(batch, dead_letters, throttle.build(client)?))
    }
}

impl<F: BatchFormat, C> BatchBuilder<F, C, Buffered> {
    /// Wraps `client`, each attempt reading the whole response within the timeout.
    ///
    /// # Errors
    /// As [`ThrottleBuilder::build`].
    pub fn build<S, R>(self, client: S) -> Result<Batched<F>, ConfigError>
    where
        S: Service<http::Request<Full<Bytes>>, Response = http::Response<R>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        C: Classify + Send + Sync + 'static,
        R: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
        R::Data: Into<Bytes>,
    {
        let (throttle, batch, dead_letters) = self.split();
        Ok(Self::assemble(batch, dead_letters, throttle.build(client)?))
    }
}
