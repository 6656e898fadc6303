use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tower_layer::Layer;

use super::aimd::Aimd;
use super::controller::RateController;
use super::cubic::Cubic;
use super::header_driven::HeaderDriven;
use super::probe::Probe;
use super::service::Adaptive;
use crate::bucket::Bucket;
use crate::classify::HttpClassifier;
use crate::retry::RetryPolicy;
use crate::ConfigError;

/// The controller shared by a layer, every service it builds and their clones.
///
/// Locked once per response, never on the admit path (the gate reads the bucket's rate from
/// an atomic).
pub(crate) type SharedController = Arc<Mutex<Box<dyn RateController>>>;

pub(crate) fn lock(c: &SharedController) -> MutexGuard<'_, Box<dyn RateController>> {
    // A controller is a handful of numbers updated in one call; a panic elsewhere cannot leave
    // it in a state worse than one lost update.
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets a shared bucket's rate from what the server does; see the [module docs](super).
///
/// The bucket's rate when the layer is built (the rate of its shortest window, as configured)
/// is a **ceiling**: the controller's `max` is lowered to it, so adaptive control never sends
/// faster than the limits say, and the bucket's other windows keep applying as configured.
/// Build the bucket with the plan's published limit (or far above the load when there is
/// none), not with a placeholder.
///
/// Cloning the layer (or any service it built) shares the controller and the bucket.
#[derive(Clone)]
pub struct AdaptiveLayer<B, C = HttpClassifier> {
    pub(crate) bucket: B,
    pub(crate) controller: SharedController,
    pub(crate) classifier: C,
    pub(crate) hold_on_retry_after: bool,
    /// A cap on `Retry-After` on top of the classifier's own (the retry policy's backoff cap,
    /// when wired with [`AdaptiveLayer::with_retry_policy`]).
    pub(crate) max_hold: Option<Duration>,
}

impl<B: Bucket + Clone> AdaptiveLayer<B> {
    /// Drives `bucket` with `controller`: the controller's `max` is lowered to the bucket's
    /// configured rate (the ceiling), then the bucket's rate is set to the controller's.
    ///
    /// # Errors
    /// [`ConfigError::MinAboveMax`] when the controller's `min` is above the bucket's rate (it
    /// could never keep both promises); the bucket's own error if it refuses the rate.
    pub fn new(
        bucket: B,
        mut controller: impl RateController + 'static,
    ) -> Result<Self, ConfigError> {
        let ceiling = bucket.rate();
        let (min, _) = controller.bounds();
        if min > ceiling {
            return Err(ConfigError::MinAboveMax {
                name: "adaptive rate (controller min vs the configured limit)",
                min,
                max: ceiling,
            });
        }
        controller.limit_max(ceiling);
        bucket.set_rate(controller.rate())?;
        Ok(AdaptiveLayer {
            bucket,
            controller: Arc::new(Mutex::new(Box::new(controller))),
            classifier: HttpClassifier::new(),
            hold_on_retry_after: true,
            max_hold: None,
        })
    }

    /// [`Aimd`] with default factors: x0.5 per 429, x1.1 after 10 successes in a row.
    pub fn aimd(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, Aimd::new(start, min, max)?)
    }

    /// [`Probe`] with default parameters: the controller this crate recommends when the
    /// server sends no rate-limit headers.
    pub fn probe(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, Probe::new(start, min, max)?)
    }

    /// [`Cubic`] with default parameters.
    pub fn cubic(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, Cubic::new(start, min, max)?)
    }

    /// [`HeaderDriven`] with an AIMD fallback.
    pub fn header_driven(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, HeaderDriven::new(start, min, max)?)
    }
}

impl<B: Bucket + Clone, C> AdaptiveLayer<B, C> {
    /// Classifies responses with `classifier` instead of the default [`HttpClassifier`] (for
    /// APIs that throttle with a 403, say). With a retry layer above, prefer
    /// [`with_retry_policy`](Self::with_retry_policy), so both agree.
    pub fn with_classifier<C2>(self, classifier: C2) -> AdaptiveLayer<B, C2> {
        AdaptiveLayer {
            bucket: self.bucket,
            controller: self.controller,
            classifier,
            hold_on_retry_after: self.hold_on_retry_after,
            max_hold: self.max_hold,
        }
    }

    /// Classifies exactly as `policy` does and caps `Retry-After` as it does (the classifier's
    /// cap and the backoff's `max_delay`), so the retry layer and this one agree on what is a
    /// rate limit and on how long a hostile `Retry-After` may hold the shared bucket.
    /// [`Throttle::builder`](crate::Throttle::builder) wires this itself.
    pub fn with_retry_policy<C2: Clone>(self, policy: &RetryPolicy<C2>) -> AdaptiveLayer<B, C2> {
        let mut layer = self.with_classifier(policy.classifier().clone());
        layer.max_hold = Some(policy.backoff().max_delay());
        layer
    }

    /// Whether a 429 with `Retry-After` (or a 503 with one, [`Signal::Overloaded`](super::Signal::Overloaded))
    /// also holds the shared bucket until then (default `true`), so every caller pauses, not
    /// only the one that was refused. A retry layer
    /// above may do the same; holding twice is harmless, the later hold wins.
    pub fn with_retry_after_hold(mut self, hold: bool) -> Self {
        self.hold_on_retry_after = hold;
        self
    }

    /// The current rate, requests per second.
    pub fn rate(&self) -> f64 {
        lock(&self.controller).rate()
    }

    /// The shared bucket.
    pub fn bucket(&self) -> &B {
        &self.bucket
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<S, B: Bucket + Clone, C: Clone> Layer<S> for AdaptiveLayer<B, C> {
    type Service = Adaptive<S, B, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Adaptive::new(inner, self.clone())
    }
}

impl<B: fmt::Debug, C: fmt::Debug> fmt::Debug for AdaptiveLayer<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLayer")
            .field("bucket", &self.bucket)
            .field("controller", &self.controller)
            .field("classifier", &self.classifier)
            .field("hold_on_retry_after", &self.hold_on_retry_after)
            .field("max_hold", &self.max_hold)
            .finish()
    }
}
