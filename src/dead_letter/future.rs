//! The response future of [`DeadLetters`](super::DeadLetters).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::layer::{Config, WriteFuture};
use super::service::Captured;
use super::{error_text, DeadLettered, DeadLetteredError};
use crate::retry::Attempts;
use crate::ThrottleError;

pin_project! {
    /// Drives the inner future; on a failure, writes the dead letter before resolving.
    pub struct ResponseFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
        config: Config,
    }
}

type Outcome<RB> = Result<http::Response<RB>, BoxError>;

pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        Calling { #[pin] fut: F, captured: Option<Captured> },
        Storing { store: WriteFuture, outcome: Option<Outcome<RB>> },
        Done,
    }
}

impl<F, RB> ResponseFuture<F, RB> {
    pub(crate) fn new(fut: F, captured: Captured, config: Config) -> Self {
        ResponseFuture {
            state: State::Calling {
                fut,
                captured: Some(captured),
            },
            config,
        }
    }
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Outcome<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut, captured } => {
                    let out = ready!(fut.poll(cx)).map_err(Into::into);
                    let captured = captured.take().expect("polled after completion");
                    let letter = match &out {
                        Ok(resp) if !(this.config.is_failure)(resp.status()) => {
                            this.state.set(State::Done);
                            return Poll::Ready(out);
                        }
                        Ok(resp) => captured.into_letter(
                            this.config,
                            Some(resp.status().as_u16()),
                            None,
                            resp.extensions().get::<Attempts>().map(|a| a.0),
                        ),
                        Err(e) => {
                            let mut letter = captured.into_letter(
                                this.config,
                                None,
                                Some(error_text(&**e)),
                                None,
                            );
                            letter.outcome_unknown = matches!(
                                ThrottleError::from_box(e),
                                Some(ThrottleError::OutcomeUnknown { .. })
                            );
                            letter
                        }
                    };
                    this.state.set(State::Storing {
                        store: this.config.write(letter),
                        outcome: Some(out),
                    });
                }
                StateProj::Storing { store, outcome } => {
                    let stored = ready!(store.as_mut().poll(cx));
                    let outcome = outcome.take().expect("polled after completion");
                    this.state.set(State::Done);
                    let Some(id) = stored else {
                        return Poll::Ready(outcome);
                    };
                    return Poll::Ready(match outcome {
                        Ok(mut resp) => {
                            resp.extensions_mut().insert(DeadLettered { id });
                            Ok(resp)
                        }
                        Err(source) => Err(Box::new(DeadLetteredError {
                            id,
                            source,
                            redact: this.config.redact_query.clone(),
                        }) as BoxError),
                    });
                }
                StateProj::Done => panic!("dead_letter::ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F, RB> fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
