use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use tokio::time::Instant;

use super::service::Batch;
use super::{BatchFormat, BatchStats};
use crate::backoff::Backoff;
use crate::bucket::Bucket;
use crate::classify::HttpClassifier;
use crate::{ConfigError, ReplayBody};

/// Everything a batch service and its worker read, fixed when the layer is applied.
pub(crate) struct Config<F> {
    pub(crate) format: Arc<F>,
    pub(crate) max_items: usize,
    pub(crate) max_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) max_item_attempts: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) classifier: HttpClassifier,
    pub(crate) backoff: Backoff,
    /// Holds the shared gate after an item-level 429 ([`BatchLayer::with_bucket`]).
    pub(crate) hold: Option<Hold>,
    pub(crate) stats: BatchStats,
}

/// Holds a bucket until an instant.
pub(crate) type Hold = Arc<dyn Fn(Instant) + Send + Sync>;

impl<F> Clone for Config<F> {
    fn clone(&self) -> Self {
        Config {
            format: self.format.clone(),
            max_items: self.max_items,
            max_bytes: self.max_bytes,
            linger: self.linger,
            max_item_attempts: self.max_item_attempts,
            max_in_flight: self.max_in_flight,
            classifier: self.classifier.clone(),
            backoff: self.backoff,
            hold: self.hold.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<F> fmt::Debug for Config<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("format", &std::any::type_name::<F>())
            .field("max_items", &self.max_items)
            .field("max_bytes", &self.max_bytes)
            .field("linger", &self.linger)
            .field("max_item_attempts", &self.max_item_attempts)
            .field("max_in_flight", &self.max_in_flight)
            .field("backoff", &self.backoff)
            .field("holds_gate", &self.hold.is_some())
            .finish()
    }
}

/// Coalesces per-record requests into vendor batch requests; see the
/// [module docs](crate::batch).
///
/// Defaults: the format's item and byte limits, a 20 ms linger, 3 sends per item at most
/// (a first send and two re-batchings of a transient per-item failure; splits of a batch to
/// find a bad record do not count), the format's
/// [`max_in_flight`](BatchFormat::max_in_flight) batches in flight at most (32 unless the
/// vendor allows fewer connections), the default
/// [`HttpClassifier`] to tell transient item statuses from final ones, and the default
/// [`Backoff`] before an item is sent again after a transient failure of its own (a 429's
/// `Retry-After` when the answer carries one).
///
/// Attach the gate's bucket with [`with_bucket`](BatchLayer::with_bucket) (or use
/// [`ThrottleBuilder::batch`](crate::ThrottleBuilder::batch), which does) so that a record
/// refused for the rate inside a multi-status answer holds every caller, as a refused batch
/// does.
///
/// `B` is the body type of the batch requests the inner service receives
/// (`Full<Bytes>` unless changed with [`with_body`](BatchLayer::with_body)).
///
/// Each service the layer builds owns its inner service in a worker task, spawned on the
/// tokio runtime of its first call (as `tower::buffer::Buffer` does, but lazily, so a stack
/// can be built outside a runtime); the service's clones share that worker and its pending
/// batch. The worker ends once every clone is dropped and the last batch is answered.
pub struct BatchLayer<F, B = Full<Bytes>> {
    config: Config<F>,
    _body: PhantomData<fn() -> B>,
}

impl<F: BatchFormat> BatchLayer<F, Full<Bytes>> {
    /// A layer batching for `format`, with the defaults listed on the type.
    pub fn new(format: F) -> Self {
        BatchLayer {
            config: Config {
                max_items: format.max_items().max(1),
                max_bytes: format.max_bytes(),
                max_in_flight: format.max_in_flight().max(1),
                format: Arc::new(format),
                linger: Duration::from_millis(20),
                max_item_attempts: 3,
                classifier: HttpClassifier::default(),
                backoff: Backoff::default(),
                hold: None,
                stats: BatchStats::default(),
            },
            _body: PhantomData,
        }
    }
}

impl<F: BatchFormat, B> BatchLayer<F, B> {
    /// At most `n` items per batch (1 to the format's own limit).
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0, [`ConfigError::OutOfRange`] above the format's limit.
    pub fn with_max_items(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::Zero { name: "max_items" });
        }
        let cap = self.config.format.max_items();
        if n > cap {
            return Err(ConfigError::OutOfRange {
                name: "max_items",
                value: n as f64,
                expected: "at most the format's max_items",
            });
        }
        self.config.max_items = n;
        Ok(self)
    }

    /// At most `n` body bytes per batch (below the format's own limit, and room for at
    /// least one byte of item inside the envelope).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] above the format's limit or too small for any item.
    pub fn with_max_bytes(mut self, n: usize) -> Result<Self, ConfigError> {
        let floor = self.config.format.envelope().len_of(1, 1);
        if n < floor || n > self.config.format.max_bytes() {
            return Err(ConfigError::OutOfRange {
                name: "max_bytes",
                value: n as f64,
                expected: "room for one item, and at most the format's max_bytes",
            });
        }
        self.config.max_bytes = n;
        Ok(self)
    }

    /// How long the oldest waiting item may wait for others before a partial batch is sent.
    /// Zero sends whatever has arrived as soon as the gate admits a batch.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    /// How many batches one item may go in: an item that fails with a transient status
    /// (429, 5xx, 408 by the classifier) inside a successful batch is re-batched until then,
    /// after which its last result is returned (and a dead-letter layer above keeps it).
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0.
    pub fn with_max_item_attempts(mut self, n: u32) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::Zero {
                name: "max_item_attempts",
            });
        }
        self.config.max_item_attempts = n;
        Ok(self)
    }

    /// At most `n` batches sent and not yet answered at once.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for 0.
    pub fn with_max_in_flight(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::Zero {
                name: "max_in_flight",
            });
        }
        self.config.max_in_flight = n;
        Ok(self)
    }

    /// Classifies item statuses (transient ones are re-batched); use the same classifier as
    /// the retry policy below so both agree.
    pub fn with_classifier(mut self, classifier: HttpClassifier) -> Self {
        self.config.classifier = classifier;
        self
    }

    /// How long an item waits before it is sent again after a transient failure of its own
    /// (a 5xx or 429 for that record inside a multi-status answer); use the retry policy's
    /// ([`RetryPolicy::backoff`](crate::RetryPolicy::backoff)) so both pace alike. A 429 with
    /// `Retry-After` waits that long instead.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The bucket of the gate below: a record refused for the rate inside a multi-status
    /// answer holds it until the answer's `Retry-After` (or the back-off), so every caller
    /// pauses, as a whole-batch 429 does through the retry policy.
    pub fn with_bucket<K: Bucket>(mut self, bucket: K) -> Self {
        self.config.hold = Some(Arc::new(move |until| bucket.hold_until(until)));
        self
    }

    /// Sends batch requests with body type `B2` (any [`ReplayBody`](crate::ReplayBody)).
    pub fn with_body<B2>(self) -> BatchLayer<F, B2> {
        BatchLayer {
            config: self.config,
            _body: PhantomData,
        }
    }

    /// Counters shared by every service this layer builds.
    pub fn stats(&self) -> BatchStats {
        self.config.stats.clone()
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.config.format
    }
}

impl<F: BatchFormat> From<F> for BatchLayer<F> {
    fn from(format: F) -> Self {
        BatchLayer::new(format)
    }
}

impl<F, B> Clone for BatchLayer<F, B> {
    fn clone(&self) -> Self {
        BatchLayer {
            config: self.config.clone(),
            _body: PhantomData,
        }
    }
}

impl<F, B> fmt::Debug for BatchLayer<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<F, B, S, RB> Layer<S> for BatchLayer<F, B>
where
    F: BatchFormat,
    B: ReplayBody,
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Service = Batch<F>;

    fn layer(&self, inner: S) -> Self::Service {
        Batch::new::<S, B>(inner, self.config.clone())
    }
}
