//! The response future of [`Queue`](super::Queue).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::BoxError;
use tower_service::Service;

use super::shared::{Key, Shared, TicketState};
use crate::ThrottleError;

pin_project! {
    /// Waits for the request's turn in the queue, then drives the inner service.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        ticket: Ticket,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Refused { error: Option<ThrottleError> },
        Waiting { call: Option<(S, Req)>, timer: Option<Pin<Box<Sleep>>> },
        Running { #[pin] fut: Oneshot<S, Req> },
        Done,
    }
}

/// The future's place in the queue; dropping it gives back whatever it holds.
struct Ticket {
    shared: Option<Arc<Shared>>,
    key: Key,
    running: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            if self.running {
                shared.finish();
            } else {
                shared.cancel(self.key);
            }
        }
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn queued(shared: Arc<Shared>, key: Key, started: bool, svc: S, req: Req) -> Self {
        let state = if started {
            State::Running {
                fut: Oneshot::new(svc, req),
            }
        } else {
            State::Waiting {
                call: Some((svc, req)),
                timer: None,
            }
        };
        ResponseFuture {
            state,
            ticket: Ticket {
                shared: Some(shared),
                key,
                running: started,
            },
        }
    }

    pub(crate) fn refused(error: ThrottleError) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            ticket: Ticket {
                shared: None,
                key: (std::cmp::Reverse(0), 0),
                running: false,
            },
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let e = error.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(e.into()));
                }
                StateProj::Waiting { call, timer } => {
                    let shared = this.ticket.shared.as_ref().expect("a waiting ticket");
                    match shared.poll_ticket(this.ticket.key, cx.waker(), Instant::now()) {
                        TicketState::Started => {
                            this.ticket.running = true;
                            let (svc, req) = call.take().expect("polled after completion");
                            this.state.set(State::Running {
                                fut: Oneshot::new(svc, req),
                            });
                        }
                        TicketState::Waiting(None) => return Poll::Pending,
                        TicketState::Waiting(Some(reopen)) => {
                            // First in line, held only by the interval window: this future
                            // alone sleeps until it reopens. The timer is allocated once.
                            match timer {
                                Some(t) => t.as_mut().reset(reopen),
                                None => *timer = Some(Box::pin(tokio::time::sleep_until(reopen))),
                            }
                            let t = timer.as_mut().expect("set above");
                            ready!(t.as_mut().poll(cx));
                        }
                    }
                }
                StateProj::Running { fut } => {
                    let out = ready!(fut.poll(cx));
                    // Free the running slot as soon as the answer is in.
                    if let Some(shared) = this.ticket.shared.take() {
                        shared.finish();
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(out.map_err(Into::into));
                }
                StateProj::Done => panic!("queue::ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("running", &self.ticket.running)
            .finish_non_exhaustive()
    }
}
