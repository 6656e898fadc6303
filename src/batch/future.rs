//! The future a batch service's call returns.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::oneshot;
use tower::BoxError;

use super::{BatchError, ItemOutcome};

/// Resolves to one item's response once its batch is answered. Dropping it before then
/// withdraws the item: it is removed from the pending batch, or, if its batch is already on
/// the wire, its result is discarded.
#[derive(Debug)]
pub struct ResponseFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Waiting(oneshot::Receiver<ItemOutcome>),
    Failed(Option<BatchError>),
}

impl ResponseFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<ItemOutcome>) -> Self {
        ResponseFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn failed(err: BatchError) -> Self {
        ResponseFuture {
            state: State::Failed(Some(err)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Full<Bytes>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Waiting(rx) => Pin::new(rx).poll(cx).map(|answer| match answer {
                Ok(outcome) => outcome,
                // The worker went away without answering (its runtime shut down).
                Err(_) => Err(BatchError::Closed.into()),
            }),
            State::Failed(err) => Poll::Ready(Err(err.take().unwrap_or(BatchError::Closed).into())),
        }
    }
}
