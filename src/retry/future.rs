//! The future the retry policy waits on between attempts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::defer::{self, Reacquire, Slot};

pub use super::inspect::InspectFuture;

pin_project! {
    /// Waits until the next attempt is due. When the request runs under a scheduler with a
    /// concurrency cap ([`run_bulk`](crate::bulk::run_bulk), a
    /// [`QueueLayer`](crate::QueueLayer)), the wait gives the request's slot back and
    /// then queues for one again, so other requests run meanwhile.
    pub struct RetryDelay {
        #[pin]
        sleep: Sleep,
        slot: Option<Slot>,
    }
}

impl RetryDelay {
    pub(crate) fn new(until: Instant) -> Self {
        let slot = defer::current().filter(Slot::release);
        RetryDelay {
            sleep: tokio::time::sleep_until(until),
            slot,
        }
    }
}

impl Future for RetryDelay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let Some(slot) = this.slot.as_ref() else {
                return Poll::Ready(());
            };
            match slot.poll_reacquire(cx) {
                Reacquire::Held => return Poll::Ready(()),
                Reacquire::Pending => return Poll::Pending,
                Reacquire::NotBefore(at) => this.sleep.as_mut().reset(at),
            }
        }
    }
}

impl fmt::Debug for RetryDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryDelay")
            .field("until", &self.sleep.deadline())
            .field("slot_released", &self.slot.is_some())
            .finish()
    }
}
