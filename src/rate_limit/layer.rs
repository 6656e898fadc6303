use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use tokio_util::sync::PollSemaphore;

use super::gate::Gate;
use super::RateLimit;
use crate::bucket::{Bucket, LocalBucket};
use crate::metrics::Stats;
use crate::{ConfigError, Limits};

/// Applies a shared rate limit (and optional concurrency cap) to a service.
///
/// Every service this layer builds, and every clone of those services, draws from the same
/// bucket and the same concurrency cap: an API limit belongs to the workspace, not to one
/// handle. See the [module docs](crate::rate_limit) for an example.
#[derive(Clone)]
pub struct RateLimitLayer<B = LocalBucket> {
    pub(super) bucket: B,
    pub(super) max_wait: Option<Duration>,
    pub(super) concurrency: Option<Arc<Semaphore>>,
    stats: Option<Stats>,
}

impl RateLimitLayer<LocalBucket> {
    /// A layer with an in-process bucket enforcing `limits` (and their concurrency cap, if any):
    /// a [`Quota`](crate::Quota), [`Limits`] or a preset. Given a [`LocalBucket`] instead, the
    /// layer shares that bucket (as [`with_bucket`](RateLimitLayer::with_bucket) does, which
    /// also takes keyed and Redis buckets).
    ///
    /// ```
    /// use tower_throttle::{Quota, LocalBucket, RateLimitLayer};
    ///
    /// # fn main() -> Result<(), tower_throttle::ConfigError> {
    /// let own = RateLimitLayer::new(Quota::per_second(80)?); // a new bucket
    /// let bucket = LocalBucket::new(Quota::per_second(80)?);
    /// let shared = RateLimitLayer::new(bucket.clone()); // this bucket, shared with the retry hold
    /// # let _ = (own, shared);
    /// # Ok(()) }
    /// ```
    pub fn new(limits: impl IntoLocalBucket) -> Self {
        RateLimitLayer::with_bucket(limits.into_local_bucket())
    }
}

/// What [`RateLimitLayer::new`] takes: limits (anything `Into<Limits>`: a [`Quota`](crate::Quota),
/// [`Limits`], a preset), for which it makes a new bucket, or a [`LocalBucket`] (or a reference
/// to one), which it shares.
///
/// Other buckets ([`KeyedBucket`](crate::bucket::KeyedBucket),
/// `RedisBucket`, your own [`Bucket`]) go to [`RateLimitLayer::with_bucket`]; passing one to
/// `new` fails with "`From<...>` is not implemented for `Limits`".
pub trait IntoLocalBucket {
    /// The bucket the layer's gate decides with.
    fn into_local_bucket(self) -> LocalBucket;
}

impl<L: Into<Limits>> IntoLocalBucket for L {
    fn into_local_bucket(self) -> LocalBucket {
        LocalBucket::new(self)
    }
}

impl IntoLocalBucket for LocalBucket {
    fn into_local_bucket(self) -> LocalBucket {
        self
    }
}

impl IntoLocalBucket for &LocalBucket {
    fn into_local_bucket(self) -> LocalBucket {
        self.clone()
    }
}

impl<B: Bucket + Clone> RateLimitLayer<B> {
    /// A layer over an existing bucket: share one bucket between several stacks, or use a
    /// Redis bucket for a fleet. The concurrency cap of the limits the bucket was built from
    /// comes with it, shared by every layer on that bucket.
    pub fn with_bucket(bucket: B) -> Self {
        RateLimitLayer {
            concurrency: bucket.concurrency().cloned(),
            bucket,
            max_wait: None,
            stats: None,
        }
    }

    /// Fails at once with [`ThrottleError::WaitTooLong`](crate::ThrottleError::WaitTooLong)
    /// instead of waiting longer than `max_wait` for a slot (load shedding). Nothing is
    /// reserved for a refused caller.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Caps requests in flight across every service built by this layer, in place of the cap
    /// that came with the bucket's limits.
    pub fn with_concurrency(mut self, max_in_flight: usize) -> Result<Self, ConfigError> {
        if max_in_flight == 0 {
            return Err(ConfigError::Zero {
                name: "max_in_flight",
            });
        }
        self.concurrency = Some(Arc::new(Semaphore::new(max_in_flight)));
        Ok(self)
    }

    /// Records every wait in the gate (count, total, longest) into `stats`.
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The shared bucket (for snapshots, `hold_until`, `set_rate`).
    pub fn bucket(&self) -> &B {
        &self.bucket
    }

    /// A fresh admission handle on this layer's bucket and cap, for adapters that are not
    /// tower services (the reqwest middleware).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn gate(&self) -> Gate<B> {
        Gate::new(
            self.bucket.clone(),
            self.max_wait,
            self.concurrency.clone().map(PollSemaphore::new),
            self.stats.clone(),
        )
    }
}

impl<S, B: Bucket + Clone> Layer<S> for RateLimitLayer<B> {
    type Service = RateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_parts(
            inner,
            self.bucket.clone(),
            self.max_wait,
            self.concurrency.clone(),
            self.stats.clone(),
        )
    }
}

impl<B: fmt::Debug> fmt::Debug for RateLimitLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("bucket", &self.bucket)
            .field("max_wait", &self.max_wait)
            .field(
                "concurrency_available",
                &self.concurrency.as_ref().map(|s| s.available_permits()),
            )
            .finish()
    }
}
