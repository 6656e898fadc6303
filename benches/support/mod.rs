//! What the gate benchmark and the instruction-count example share: a no-op inner service and
//! limits far above any load, so every call is admitted and only the bookkeeping is measured.

use std::convert::Infallible;
use std::future::Ready;
use std::num::NonZeroU32;
use std::task::{Context, Poll};

use governor::Quota as GQuota;
use tower::Service;
use tower_throttle::Quota;

/// An inner service that does nothing, so only the gate is measured.
#[derive(Clone, Copy, Debug)]
pub struct Noop;

impl Service<()> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

/// Our quota, far above the load.
pub fn quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(u32::MAX))
        .expect("valid quota")
}

/// governor's quota, far above the load.
pub fn gquota() -> GQuota {
    GQuota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"))
        .allow_burst(NonZeroU32::MAX)
}
