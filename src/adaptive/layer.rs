use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tower_layer::Layer;

use super::controller::{Aimd, Cubic, HeaderDriven, RateController};
use super::service::Adaptive;
use crate::bucket::Bucket;
use crate::classify::HttpClassifier;
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
/// Cloning the layer (or any service it built) shares the controller and the bucket.
#[derive(Clone)]
pub struct AdaptiveLayer<B> {
    pub(crate) bucket: B,
    pub(crate) controller: SharedController,
    pub(crate) classifier: HttpClassifier,
    pub(crate) hold_on_retry_after: bool,
}

impl<B: Bucket + Clone> AdaptiveLayer<B> {
    /// Drives `bucket` with `controller`; the bucket's rate is set to the controller's now.
    pub fn new(bucket: B, controller: impl RateController + 'static) -> Result<Self, ConfigError> {
        bucket.set_rate(controller.rate())?;
        Ok(AdaptiveLayer {
            bucket,
            controller: Arc::new(Mutex::new(Box::new(controller))),
            classifier: HttpClassifier::new(),
            hold_on_retry_after: true,
        })
    }

    /// [`Aimd`] with default factors: x0.5 per 429, x1.1 after 10 successes in a row.
    pub fn aimd(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, Aimd::new(start, min, max)?)
    }

    /// [`Cubic`] with default parameters: the controller this crate recommends.
    pub fn cubic(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, Cubic::new(start, min, max)?)
    }

    /// [`HeaderDriven`] with an AIMD fallback.
    pub fn header_driven(bucket: B, start: f64, min: f64, max: f64) -> Result<Self, ConfigError> {
        AdaptiveLayer::new(bucket, HeaderDriven::new(start, min, max)?)
    }

    /// Classifies responses with `classifier` instead of the default [`HttpClassifier`] (for
    /// APIs that throttle with a 403, say).
    pub fn with_classifier(mut self, classifier: HttpClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Whether a 429 with `Retry-After` also holds the shared bucket until then (default
    /// `true`), so every caller pauses, not only the one that was refused. A retry layer
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
}

impl<S, B: Bucket + Clone> Layer<S> for AdaptiveLayer<B> {
    type Service = Adaptive<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Adaptive::new(inner, self.clone())
    }
}

impl<B: fmt::Debug> fmt::Debug for AdaptiveLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLayer")
            .field("bucket", &self.bucket)
            .field("controller", &self.controller)
            .field("hold_on_retry_after", &self.hold_on_retry_after)
            .finish()
    }
}
