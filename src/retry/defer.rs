//! Handing a concurrency slot back while a retry waits out its backoff.
//!
//! A scheduler that runs a bounded number of requests at once ([`run_bulk`](crate::bulk),
//! the [`Queue`](crate::queue::Queue)) polls each request inside a task-local [`Slot`]. When
//! the retry policy decides to wait, its delay future finds that slot, gives it back (the
//! scheduler starts other work at once), sleeps, and then queues for a slot again before the
//! next attempt. Without this, a 1 s backoff idles a worker for 1 s, and 10% transient
//! failures cut a pipeline's throughput a hundredfold.
//!
//! The slot is task-local rather than a request extension so that it works for any request
//! type and through any layers in between; a layer that moves the request to another task
//! (a `Buffer`) simply hides it, and the retry then waits holding its slot, as before.

use std::sync::Arc;
use std::task::Context;

use tokio::time::Instant;

tokio::task_local! {
    static SLOT: Slot;
}

/// What polling for a slot again found.
pub(crate) enum Reacquire {
    /// The slot is held (again, or it was never given back).
    Held,
    /// Queued; the waker is registered.
    Pending,
    /// Queued, first in line, and the scheduler's interval window reopens at this instant:
    /// the caller sleeps until then and polls again.
    NotBefore(Instant),
}

/// One scheduler's side of a slot.
pub(crate) trait Lease: Send + Sync {
    /// Gives the slot back for a retry that will wait; `false` when the scheduler wants it
    /// kept (deferral off, or too many requests deferred already).
    fn release(&self) -> bool;

    /// Takes the slot back, or queues for it.
    fn poll_reacquire(&self, cx: &mut Context<'_>) -> Reacquire;
}

/// The slots the current request holds, outermost scheduler first (a queue inside a bulk run
/// holds one of each).
#[derive(Clone)]
pub(crate) struct Slot(Arc<[Arc<dyn Lease>]>);

impl Slot {
    /// `lease` inside whatever slots the current task already holds.
    pub(crate) fn nested(lease: Arc<dyn Lease>) -> Slot {
        let outer = current();
        let levels = outer
            .iter()
            .flat_map(|s| s.0.iter().cloned())
            .chain(std::iter::once(lease))
            .collect();
        Slot(levels)
    }

    /// Runs `fut` with this slot as the task's current one.
    pub(crate) fn scope<F: std::future::Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<Slot, F> {
        SLOT.scope(self, fut)
    }

    /// Gives back every level that agrees; whether any did.
    pub(crate) fn release(&self) -> bool {
        self.0.iter().fold(false, |any, l| l.release() | any)
    }

    /// Takes every level back, outermost first (the order they were first taken in).
    pub(crate) fn poll_reacquire(&self, cx: &mut Context<'_>) -> Reacquire {
        for lease in self.0.iter() {
            match lease.poll_reacquire(cx) {
                Reacquire::Held => {}
                other => return other,
            }
        }
        Reacquire::Held
    }
}

/// The slot of the request being polled, if a scheduler set one.
pub(crate) fn current() -> Option<Slot> {
    SLOT.try_with(Slot::clone).ok()
}
