//! The response future of [`Queue`](super::Queue).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;
use tower::util::Oneshot;
use tower::BoxError;
use tower_service::Service;

use super::shared::{Key, Shared, TicketState};
use crate::retry::defer::{Lease, Reacquire, Slot};
use crate::ThrottleError;

pin_project! {
    /// Waits for the request's turn in the queue, then drives the inner service.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        ticket: Guard,
    }
}

/// Ends the ticket when the future is dropped.
struct Guard(Option<Arc<Ticket>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(ticket) = self.0.take() {
            ticket.end();
        }
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
        Running { #[pin] fut: TaskLocalFuture<Slot, Oneshot<S, Req>> },
        Done,
    }
}

/// Where a request stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its first start.
    Waiting,
    /// Holding a slot.
    Running,
    /// Its retry gave the slot back and is waiting out the delay.
    Deferred,
    /// Its retry queued for a slot again.
    Requeued,
    /// Finished or dropped; nothing held.
    Ended,
}

/// The request's place in the queue, shared between its future and the retry (through the
/// task-local [`Slot`]); ending it gives back whatever it holds.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    key: Key,
    phase: Mutex<Phase>,
}

impl Ticket {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request finished or its future was dropped.
    fn end(&self) {
        let mut phase = self.phase();
        match *phase {
            Phase::Waiting => self.shared.cancel(self.key),
            Phase::Running => self.shared.finish(),
            Phase::Deferred => self.shared.abandon_deferred(self.key, false),
            Phase::Requeued => self.shared.abandon_deferred(self.key, true),
            Phase::Ended => {}
        }
        *phase = Phase::Ended;
    }
}

impl Lease for Ticket {
    fn release(&self) -> bool {
        let mut phase = self.phase();
        if *phase == Phase::Running && self.shared.defer() {
            *phase = Phase::Deferred;
            true
        } else {
            false
        }
    }

    fn poll_reacquire(&self, cx: &mut Context<'_>) -> Reacquire {
        let mut phase = self.phase();
        if *phase == Phase::Deferred {
            if self.shared.requeue(self.key) {
                *phase = Phase::Running;
                return Reacquire::Held;
            }
            *phase = Phase::Requeued;
        }
        if *phase != Phase::Requeued {
            return Reacquire::Held;
        }
        match self.shared.poll_ticket(self.key, cx.waker()) {
            TicketState::Started => {
                self.shared.resumed();
                *phase = Phase::Running;
                Reacquire::Held
            }
            TicketState::Waiting(None) => Reacquire::Pending,
            TicketState::Waiting(Some(reopen)) => Reacquire::NotBefore(reopen),
        }
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn queued(shared: Arc<Shared>, key: Key, started: bool, svc: S, req: Req) -> Self {
        let ticket = Arc::new(Ticket {
            shared,
            key,
            phase: Mutex::new(if started {
                Phase::Running
            } else {
                Phase::Waiting
            }),
        });
        let state = if started {
            State::Running {
                fut: run(&ticket, svc, req),
            }
        } else {
            State::Waiting {
                call: Some((svc, req)),
                timer: None,
            }
        };
        ResponseFuture {
            state,
            ticket: Guard(Some(ticket)),
        }
    }

    pub(crate) fn refused(error: ThrottleError) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            ticket: Guard(None),
        }
    }
}

/// The inner call, polled with the ticket as the task's slot so a retry inside can hand it
/// back while it waits.
fn run<S: Service<Req>, Req>(
    ticket: &Arc<Ticket>,
    svc: S,
    req: Req,
) -> TaskLocalFuture<Slot, Oneshot<S, Req>> {
    let lease: Arc<dyn Lease> = ticket.clone();
    Slot::nested(lease).scope(Oneshot::new(svc, req))
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
                    let ticket = this.ticket.0.as_ref().expect("a waiting ticket");
                    match ticket.shared.poll_ticket(ticket.key, cx.waker()) {
                        TicketState::Started => {
                            *ticket.phase() = Phase::Running;
                            let (svc, req) = call.take().expect("polled after completion");
                            let fut = run(ticket, svc, req);
                            this.state.set(State::Running { fut });
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
                    if let Some(ticket) = this.ticket.0.take() {
                        ticket.end();
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
            .field("phase", &self.ticket.0.as_ref().map(|t| *t.phase()))
            .finish_non_exhaustive()
    }
}
