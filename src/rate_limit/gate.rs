//! The per-handle admission state machine shared by the gate services.
//!
//! A `Gate` belongs to one service handle (one clone); the bucket and the semaphore it points
//! at are shared by all of them. It reserves in `poll_ready`, so a caller that must wait owns
//! a future slot of its own and wakes exactly then (no polling loop, no herd), and it gives
//! the slot back when the handle is dropped before `call`.

use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::PollSemaphore;

use super::wait::{SlotWait, Woken};
use crate::bucket::{Bucket, Reservation, Reserve, ReserveFuture};
use crate::metrics::Stats;
use crate::ThrottleError;

pub(crate) struct Gate<B: Bucket> {
    bucket: B,
    max_wait: Option<Duration>,
    semaphore: Option<PollSemaphore>,
    permit: Option<OwnedSemaphorePermit>,
    stats: Option<Stats>,
    state: State,
    // Allocated the first time this handle has to wait, then reset in place.
    wait: Option<SlotWait>,
}

enum State {
    Idle,
    // Behind a `Mutex` only so the service stays `Sync` (axum state, `Arc`-shared clients):
    // it is reached through `get_mut`, never locked.
    Reserving(Mutex<ReserveFuture>),
    Waiting(Reservation),
    Ready(Reservation),
}

impl<B: Bucket + Clone> Gate<B> {
    pub(crate) fn new(
        bucket: B,
        max_wait: Option<Duration>,
        semaphore: Option<PollSemaphore>,
        stats: Option<Stats>,
    ) -> Self {
        Gate {
            bucket,
            max_wait,
            semaphore,
            stats,
            permit: None,
            state: State::Idle,
            wait: None,
        }
    }

    pub(crate) fn bucket(&self) -> &B {
        &self.bucket
    }

    /// Ready once this handle owns a slot that has arrived (and a concurrency permit, if capped).
    #[inline]
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ThrottleError>> {
        loop {
            match &mut self.state {
                State::Ready(_) => return Poll::Ready(Ok(())),
                State::Idle => {
                    // The permit comes first so that a caller stuck behind the concurrency cap
                    // does not sit on a rate slot that someone else could use.
                    if let (Some(sem), None) = (&mut self.semaphore, &self.permit) {
                        let permit = ready!(sem.poll_acquire(cx));
                        // The semaphore is owned by the layer and never closed.
                        self.permit = Some(permit.expect("concurrency semaphore closed"));
                    }
                    // The bucket reads its own clock: the gate never reads one on an admit.
                    match self.bucket.reserve_now(self.max_wait) {
                        Reserve::Ready(Ok(r)) if r.is_admitted() => {
                            self.state = State::Ready(r);
                            return Poll::Ready(Ok(()));
                        }
                        Reserve::Ready(result) => self.admit(result)?,
                        Reserve::Pending(fut) => self.state = State::Reserving(Mutex::new(fut)),
                    }
                }
                State::Reserving(fut) => {
                    let fut = fut.get_mut().unwrap_or_else(PoisonError::into_inner);
                    let result = ready!(fut.as_mut().poll(cx));
                    self.state = State::Idle;
                    self.admit(result)?;
                }
                State::Waiting(reservation) => {
                    let wait = self.wait.as_mut().expect("waiting implies a timer");
                    let woken = ready!(wait.poll(cx));
                    let now = Instant::now();
                    let current = self.bucket.is_current(reservation, now);
                    if current && woken == Woken::Early {
                        // Another caller's slots were voided, or ours came after the change.
                        wait.rearm(&self.bucket);
                        continue;
                    }
                    self.state = match std::mem::replace(&mut self.state, State::Idle) {
                        State::Waiting(r) if current => State::Ready(r),
                        // A 429 hold or a rate change came while we waited: our slot was taken
                        // under an older rate or before the hold, so we queue again. Handing
                        // it back first is exact when it is still the latest (then no window
                        // counts it twice), and a no-op otherwise.
                        State::Waiting(r) => {
                            self.bucket.cancel(r, now);
                            State::Idle
                        }
                        _ => unreachable!("state checked above"),
                    };
                }
            }
        }
    }

    /// Every outcome but an immediate admit: an error, a slot to wait for, or a slot from I/O
    /// (whose caller's "now" is only known after it).
    #[cold]
    fn admit(&mut self, result: Result<Reservation, ThrottleError>) -> Result<(), ThrottleError> {
        let reservation = result.inspect_err(|_| {
            // Shed callers give their concurrency permit back too.
            self.permit = None;
        })?;
        let now = Instant::now();
        if reservation.is_admitted() || reservation.at() <= now {
            self.state = State::Ready(reservation);
        } else {
            // Only waits are recorded: an immediate admit stays free of shared writes.
            if let Some(stats) = &self.stats {
                stats.record_gate_wait(reservation.at() - now);
            }
            match &mut self.wait {
                Some(wait) => wait.reset(&self.bucket, reservation.at()),
                None => self.wait = Some(SlotWait::new(&self.bucket, reservation.at())),
            }
            self.state = State::Waiting(reservation);
        }
        Ok(())
    }

    /// Consumes the slot acquired by `poll_acquire`; returns the concurrency permit to hold
    /// for the duration of the call.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<OwnedSemaphorePermit> {
        // Checked, then overwritten in place: the reservation is plain data, nothing to move.
        assert!(
            matches!(self.state, State::Ready(_)),
            "service called before poll_ready returned Ready"
        );
        self.state = State::Idle;
        self.permit.take()
    }
}

impl<B: Bucket + Clone> Clone for Gate<B> {
    fn clone(&self) -> Self {
        // A clone shares the bucket and the cap, never this handle's slot.
        Gate::new(
            self.bucket.clone(),
            self.max_wait,
            self.semaphore.clone(),
            self.stats.clone(),
        )
    }
}

impl<B: Bucket> Drop for Gate<B> {
    fn drop(&mut self) {
        if let State::Waiting(r) | State::Ready(r) = std::mem::replace(&mut self.state, State::Idle)
        {
            self.bucket.cancel(r, Instant::now());
        }
    }
}

impl<B: Bucket> std::fmt::Debug for Gate<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::Reserving(_) => "reserving",
            State::Waiting(_) => "waiting",
            State::Ready(_) => "ready",
        };
        f.debug_struct("Gate")
            .field("bucket", &self.bucket)
            .field("max_wait", &self.max_wait)
            .field("concurrency_cap", &self.semaphore.is_some())
            .field("state", &state)
            .finish()
    }
}
