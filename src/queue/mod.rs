//! A bounded request queue as tower middleware: what p-queue gives JavaScript users.
//!
//! [`QueueLayer`](crate::QueueLayer) holds requests in front of a service with a fixed capacity (one more fails
//! at once with [`ThrottleError::QueueFull`](crate::ThrottleError::QueueFull): memory never
//! grows without bound), runs at most `concurrency` of them at once, optionally starts at most
//! `interval_cap` per `interval`, and orders waiting requests by priority (higher first, FIFO
//! among equals). [`QueueHandle`] reads the live `size` (waiting) and `pending` (running).
//!
//! Waiting is async: a waiting request is a future parked on a waker, started by whichever
//! request finishes (no worker thread, no task per request). When only the interval window
//! holds the queue back, the first waiter alone sleeps until it reopens, so waiters are
//! started one by one, never woken as a herd.
//!
//! **Retries give their slot back.** With a [`RetryLayer`](crate::RetryLayer) *below* the queue,
//! a request waiting out its backoff (or a server's `Retry-After`) stops counting as running:
//! the next request starts, and the retry queues again at its original place (its priority and
//! arrival order) when the delay is over, so 10% transient failures do not idle the queue's
//! slots for a second each ([`QueueBuilder::defer_retries`]). While it queues again it counts
//! in `size`, beyond `capacity` if need be (it was admitted once).
//!
//! The interval cap is a **rolling window**: at most `interval_cap` starts in *any* span of
//! `interval`, which is what rolling-window servers enforce. p-queue's fixed windows can start
//! `2 x interval_cap` across a window boundary; this queue cannot.
//!
//! Unlike [`tower::limit::ConcurrencyLimit`] plus `tower::buffer::Buffer`, the bound is on
//! *waiting* requests and is shared by every clone without a background task, refusal is
//! immediate, and the wait is in the response future (the queue must see the request to know
//! its priority), so `poll_ready` is always ready.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::QueueLayer;
//! use tower_throttle::ThrottleError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let layer = QueueLayer::builder()
//!     .capacity(2)
//!     .concurrency(1)
//!     .interval_cap(80, Duration::from_secs(1))
//!     .build()?;
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|n: u32| async move {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     Ok::<_, std::convert::Infallible>(n)
//! }));
//!
//! let first = tokio::spawn(svc.clone().oneshot(1)); // runs
//! let second = tokio::spawn(svc.clone().oneshot(2)); // waits
//! let third = tokio::spawn(svc.clone().oneshot(3)); // waits
//! tokio::task::yield_now().await;
//! assert_eq!((handle.size(), handle.pending()), (2, 1));
//! // The queue is full: a fourth request is refused at once.
//! let err = svc.clone().oneshot(4).await.unwrap_err();
//! assert_eq!(ThrottleError::from_box(&err), Some(&ThrottleError::QueueFull { capacity: 2 }));
//!
//! assert_eq!(first.await??, 1);
//! assert_eq!(second.await??, 2);
//! assert_eq!(third.await??, 3);
//! assert_eq!((handle.size(), handle.pending()), (0, 0));
//! # Ok(()) }
//! ```

pub mod future;
pub(crate) mod layer;
mod service;
pub(crate) mod shared;

use std::fmt;
use std::sync::Arc;

pub use layer::{QueueBuilder, DEFAULT_CAPACITY};
pub use service::Queue;

use shared::Shared;

/// A request's priority as a request extension (`http::Request::extensions_mut().insert(..)`),
/// read by [`ByExtension`]. Higher runs first; requests without one have priority 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(pub i32);

/// How the queue finds a request's priority: higher runs first, FIFO among equals.
///
/// Implemented for closures `Fn(&Req) -> i32`, for [`NoPriority`] and for [`ByExtension`].
pub trait PriorityFn<Req> {
    /// The priority of `req`.
    fn priority(&self, req: &Req) -> i32;
}

impl<Req, F: Fn(&Req) -> i32> PriorityFn<Req> for F {
    fn priority(&self, req: &Req) -> i32 {
        self(req)
    }
}

/// Every request has priority 0: the queue is plain FIFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPriority;

impl<Req> PriorityFn<Req> for NoPriority {
    fn priority(&self, _req: &Req) -> i32 {
        0
    }
}

/// Reads the [`Priority`] extension of an `http::Request` (0 when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByExtension;

impl<B> PriorityFn<http::Request<B>> for ByExtension {
    fn priority(&self, req: &http::Request<B>) -> i32 {
        req.extensions().get::<Priority>().map_or(0, |p| p.0)
    }
}

/// A cloneable view of a queue's live counts.
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
}

impl QueueHandle {
    /// Requests waiting to start.
    pub fn size(&self) -> usize {
        self.shared.size()
    }

    /// Requests started and not finished.
    pub fn pending(&self) -> usize {
        self.shared.pending()
    }

    /// The configured capacity (waiting requests).
    pub fn capacity(&self) -> usize {
        self.shared.config.capacity
    }

    /// The configured concurrency cap (`usize::MAX` when uncapped).
    pub fn concurrency(&self) -> usize {
        self.shared.config.concurrency
    }
}

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHandle")
            .field("size", &self.size())
            .field("pending", &self.pending())
            .field("capacity", &self.capacity())
            .finish()
    }
}
