//! The response future of [`Adaptive`](super::Adaptive).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::layer::AdaptiveLayer;
use crate::bucket::Bucket;
use crate::classify::{Classify, HttpClassifier};

pin_project! {
    /// Resolves to the inner response, after feeding it to the controller.
    pub struct ResponseFuture<F, B, C = HttpClassifier> {
        #[pin]
        inner: F,
        layer: AdaptiveLayer<B, C>,
    }
}

impl<F, B, C> ResponseFuture<F, B, C> {
    pub(crate) fn new(inner: F, layer: AdaptiveLayer<B, C>) -> Self {
        ResponseFuture { inner, layer }
    }
}

impl<F, B, C, T, E> Future for ResponseFuture<F, B, C>
where
    F: Future<Output = Result<Response<T>, E>>,
    E: Into<tower::BoxError>,
    B: Bucket + Clone,
    C: Classify,
    T: 'static,
{
    type Output = Result<Response<T>, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(response) => {
                this.layer.observe_response(&response);
                Poll::Ready(Ok(response))
            }
            Err(e) => {
                let e: tower::BoxError = e.into();
                this.layer.observe_error(&*e);
                Poll::Ready(Err(e))
            }
        }
    }
}

impl<F, B: fmt::Debug, C: fmt::Debug> fmt::Debug for ResponseFuture<F, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}
