//! A per-attempt timeout that covers the response body, not only its head.
//!
//! [`tower::timeout::Timeout`] (what [`ThrottleBuilder::head_timeout`] uses) stops timing once
//! the inner service's future resolves, which for an HTTP client is when the status line and
//! headers have arrived. The body comes after, while the caller reads it: a server that sends
//! its headers at once and then drips 30 bytes at one byte per second holds the caller for
//! 29 s under a 5 s timeout, and no retry can help because the retry layer has already
//! returned.
//!
//! [`BodyTimeout`] reads the whole body inside the attempt, under the same deadline as the
//! head, and answers with the buffered body (`Full<Bytes>`). A slow body is then an attempt that
//! timed out ([`tower::timeout::error::Elapsed`], a transient failure the retry policy backs off
//! from), and what the caller receives is complete. It is what
//! [`ThrottleBuilder::timeout`] installs; use it for APIs whose responses fit in memory (JSON
//! answers, batch results), and [`ThrottleBuilder::head_timeout`] to stream large bodies.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::timeout::BodyTimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let api = service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, tower::BoxError>(http::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(BodyTimeoutLayer::new(Duration::from_secs(5))?)
//!     .service(api);
//! let res = svc.oneshot(http::Request::new(())).await?;
//! assert_eq!(res.into_body().collect().await?.to_bytes(), "{\"ok\":true}");
//! # Ok(()) }
//! ```
//!
//! [`ThrottleBuilder::head_timeout`]: crate::ThrottleBuilder::head_timeout
//! [`ThrottleBuilder::timeout`]: crate::ThrottleBuilder::timeout

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::timeout::error::Elapsed;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::ConfigError;

/// Applies [`BodyTimeout`]; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeoutLayer {
    timeout: Duration,
}

impl BodyTimeoutLayer {
    /// Fails an attempt whose head and body have not both arrived within `timeout`.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for a zero timeout, which would fail every request.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::Zero { name: "timeout" });
        }
        Ok(BodyTimeoutLayer { timeout })
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Calls the inner service and collects the response body, all within one timeout; answers
/// with the body buffered. Built by [`BodyTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct BodyTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> BodyTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        BodyTimeout { inner, timeout }
    }

    inner_accessors!();
}

impl<S, Req, B> Service<Req> for BodyTimeout<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The clock starts when the attempt is sent, as tower's `Timeout`'s does: below the
        // gate, time spent waiting for a slot does not count.
        ResponseFuture {
            sleep: tokio::time::sleep(self.timeout),
            state: State::Head {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// The response future of [`BodyTimeout`].
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        sleep: Sleep,
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Head { #[pin] fut: F },
        Body { parts: Option<http::response::Parts>, #[pin] collect: Collect<B> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<Full<Bytes>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // The work first: an answer complete at the deadline is still an answer.
            match this.state.as_mut().project() {
                StateProj::Head { fut } => match fut.poll(cx) {
                    Poll::Ready(Ok(res)) => {
                        let (parts, body) = res.into_parts();
                        this.state.set(State::Body {
                            parts: Some(parts),
                            collect: body.collect(),
                        });
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                },
                StateProj::Body { parts, collect } => match collect.poll(cx) {
                    Poll::Ready(Ok(collected)) => {
                        let parts = parts.take().expect("polled after completion");
                        let body = Full::new(collected.to_bytes());
                        return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                },
            }
            ready!(this.sleep.as_mut().poll(cx));
            return Poll::Ready(Err(Elapsed::new().into()));
        }
    }
}

impl<F, B: Body> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match &self.state {
            State::Head { .. } => "head",
            State::Body { .. } => "body",
        };
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.sleep.deadline())
            .field("phase", &phase)
            .finish()
    }
}
