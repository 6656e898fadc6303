//! A waiting caller's wake-up: its slot's timer, or the bucket voiding slots early.
//!
//! A rate raise voids slots paced at the slower rate before they come (see
//! [`Bucket::reslots`]); a caller that only slept until its slot would leave the new rate
//! unused for as long as the queue is. So a waiter sleeps on both, and on an early wake asks
//! the bucket whether its slot still stands.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::bucket::Bucket;

/// Why a [`SlotWait`] finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The slot's instant has come.
    Slot,
    /// The bucket voided slots early; the caller's may still stand.
    Early,
}

/// The timer and, when the bucket has one, its re-slot signal. Boxed, so a gate reuses both
/// allocations from one wait to the next.
pub(crate) struct SlotWait {
    sleep: Pin<Box<Sleep>>,
    reslot: Option<Pin<Box<OwnedNotified>>>,
    /// The signal has not fired since it was armed. It then stays registered from one wait to
    /// the next: a signal that fires after any of them wakes the caller to check its slot,
    /// which is all a fresh one would do, and keeping it saves a registration per wait.
    armed: bool,
}

impl SlotWait {
    /// Waits until `at`, or until `bucket` voids slots early.
    pub(crate) fn new<B: Bucket + ?Sized>(bucket: &B, at: Instant) -> SlotWait {
        let reslot = bucket.reslots().map(|n| Box::pin(listen(n)));
        SlotWait {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: reslot.is_some(),
            reslot,
        }
    }

    /// Waits for a new slot `at`, reusing the allocations (and the signal, if still armed).
    pub(crate) fn reset<B: Bucket + ?Sized>(&mut self, bucket: &B, at: Instant) {
        self.sleep.as_mut().reset(at);
        if !self.armed {
            self.rearm(bucket);
        }
    }

    /// Listens for the next early wake-up after one that left the slot standing. A signal
    /// created here counts every notification from now on, so none that comes before the
    /// next poll is missed; one that came between the reservation and this call is, and the
    /// caller then re-slots at its timer, as without the signal.
    pub(crate) fn rearm<B: Bucket + ?Sized>(&mut self, bucket: &B) {
        match (bucket.reslots(), &mut self.reslot) {
            (Some(n), Some(fut)) => fut.set(listen(n)),
            (Some(n), slot @ None) => *slot = Some(Box::pin(listen(n))),
            (None, slot) => *slot = None,
        }
        self.armed = self.reslot.is_some();
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Woken> {
        if let (Some(fut), true) = (&mut self.reslot, self.armed) {
            if fut.as_mut().poll(cx).is_ready() {
                self.armed = false;
                return Poll::Ready(Woken::Early);
            }
        }
        self.sleep.as_mut().poll(cx).map(|()| Woken::Slot)
    }
}

fn listen(notify: &Arc<Notify>) -> OwnedNotified {
    Arc::clone(notify).notified_owned()
}
