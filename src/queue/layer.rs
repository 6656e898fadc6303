use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::shared::{Config, Shared};
use super::{NoPriority, Queue, QueueHandle};
use crate::metrics::Stats;
use crate::ConfigError;

/// Queues requests in front of a service: bounded, with a concurrency cap, an optional
/// per-interval cap and optional priorities. Every service built from one layer (and every
/// clone of those) shares one queue. Built by [`QueueLayer::builder`]; see the
/// [module docs](crate::queue) for an example.
pub struct QueueLayer<P = NoPriority> {
    shared: Arc<Shared>,
    priority: P,
}

impl QueueLayer<NoPriority> {
    /// A builder with the defaults listed on [`QueueBuilder`].
    pub fn builder() -> QueueBuilder<NoPriority> {
        QueueBuilder {
            capacity: DEFAULT_CAPACITY,
            concurrency: usize::MAX,
            interval: None,
            defer_retries: true,
            stats: None,
            priority: NoPriority,
        }
    }
}

impl<P> QueueLayer<P> {
    /// A handle reading the live `size` (waiting) and `pending` (running) counts.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Clone> Clone for QueueLayer<P> {
    fn clone(&self) -> Self {
        QueueLayer {
            shared: self.shared.clone(),
            priority: self.priority.clone(),
        }
    }
}

impl<P> fmt::Debug for QueueLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("config", &self.shared.config)
            .field("size", &self.shared.size())
            .field("pending", &self.shared.pending())
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone> Layer<S> for QueueLayer<P> {
    type Service = Queue<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Queue::from_parts(inner, self.shared.clone(), self.priority.clone())
    }
}

/// Default [`QueueBuilder::capacity`].
pub const DEFAULT_CAPACITY: usize = 1024;

/// Configures a [`QueueLayer`].
///
/// Defaults: capacity [`DEFAULT_CAPACITY`] waiting requests, no concurrency cap, no interval
/// cap, every request priority 0 ([`NoPriority`]), no [`Stats`]. Setters chain; values are
/// checked by [`build`](QueueBuilder::build).
#[derive(Debug)]
pub struct QueueBuilder<P = NoPriority> {
    capacity: usize,
    concurrency: usize,
    interval: Option<(Duration, usize)>,
    defer_retries: bool,
    stats: Option<Stats>,
    priority: P,
}

impl<P> QueueBuilder<P> {
    /// At most `capacity` requests wait; one more fails at once with
    /// [`ThrottleError::QueueFull`](crate::ThrottleError::QueueFull). Running requests do not
    /// count.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// At most `max_running` requests run at once (the inner service's futures in flight).
    pub fn concurrency(mut self, max_running: usize) -> Self {
        self.concurrency = max_running;
        self
    }

    /// At most `cap` requests start in any window of length `interval` (a rolling window, like
    /// p-queue's `intervalCap` but never `2 x cap` across a window boundary). A zero interval is
    /// refused when built; an interval past a century counts as a century.
    pub fn interval_cap(mut self, cap: usize, interval: Duration) -> Self {
        self.interval = Some((interval, cap));
        self
    }

    /// Whether a request whose retry waits out a backoff gives its concurrency slot back
    /// meanwhile (default `true`). This takes a [`RetryLayer`](crate::RetryLayer) *below* the
    /// queue: its delay hands the slot back, other requests start, and the retry queues again
    /// at its original place (its priority and arrival order) once the delay is over. A retry
    /// that starts again counts as a start for the interval cap, since it is one more request
    /// to the API. With `false`, a waiting retry keeps its slot, so a 1 s backoff idles it.
    pub fn defer_retries(mut self, enabled: bool) -> Self {
        self.defer_retries = enabled;
        self
    }

    /// Records queue size and pending into `stats`.
    pub fn stats(mut self, stats: Stats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Orders waiting requests by `priority` (higher first; FIFO among equals): a closure
    /// `Fn(&Req) -> i32` or [`ByExtension`](super::ByExtension) to read a
    /// [`Priority`](super::Priority) request extension.
    pub fn priority<P2>(self, priority: P2) -> QueueBuilder<P2> {
        QueueBuilder {
            capacity: self.capacity,
            concurrency: self.concurrency,
            interval: self.interval,
            defer_retries: self.defer_retries,
            stats: self.stats,
            priority,
        }
    }

    /// Checks the configuration: a zero capacity, concurrency, interval or interval cap is a
    /// [`ConfigError::Zero`].
    pub fn build(self) -> Result<QueueLayer<P>, ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::Zero { name: "capacity" });
        }
        if self.concurrency == 0 {
            return Err(ConfigError::Zero {
                name: "concurrency",
            });
        }
        if let Some((interval, cap)) = self.interval {
            if interval.is_zero() {
                return Err(ConfigError::Zero { name: "interval" });
            }
            if cap == 0 {
                return Err(ConfigError::Zero {
                    name: "interval_cap",
                });
            }
        }
        let config = Config {
            capacity: self.capacity,
            concurrency: self.concurrency,
            interval: self.interval,
            max_deferred: if self.defer_retries { usize::MAX } else { 0 },
        };
        Ok(QueueLayer {
            shared: Shared::new(config, self.stats),
            priority: self.priority,
        })
    }
}
