//! Buckets: where the admit decision is made, shared by every clone of a service.
//!
//! [`Bucket`] is the contract: reserve a slot (possibly in the future), hand an unused slot
//! back, hold everyone until an instant, change the rate at run time, read a snapshot.
//! [`LocalBucket`] is the in-process implementation; [`KeyedBucket`] keeps one bucket per key
//! (per host, per workspace) and forgets idle keys.
//!
//! ```
//! use tower_throttle::{bucket::Bucket, LocalBucket, Quota};
//! use tokio::time::Instant;
//!
//! let bucket = LocalBucket::new(Quota::per_second(10)?.with_burst(2)?);
//! let now = Instant::now();
//! let first = bucket.try_reserve(now, None)?;
//! let second = bucket.try_reserve(now, None)?;
//! let third = bucket.try_reserve(now, None)?;
//! assert_eq!(first.at(), now);
//! assert_eq!(second.at(), now);
//! // The third caller gets its own slot 100 ms later: callers that must wait are spread out.
//! assert_eq!(third.at() - now, std::time::Duration::from_millis(100));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod core;
mod keyed;
pub(crate) mod local;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, Semaphore};

use crate::{ConfigError, ThrottleError};

#[cfg(feature = "redis")]
pub use self::redis::{
    FailMode, RedisBucket, RedisBucketBuilder, RedisStats, MAX_IDLE_TTL, MAX_REDIS_WAIT,
};
pub use crate::clock::Clock;
pub use keyed::{KeyedBucket, KeyedPermit};
pub(crate) use local::LocalBucket;

/// A slot handed out by a bucket: the caller may start at [`Reservation::at`].
///
/// Give an unused reservation back with [`Bucket::cancel`], which consumes it: a reservation
/// is not `Clone`, so it cannot be handed back twice (a second return could free a slot that
/// another caller already holds).
///
/// ```compile_fail
/// use tower_throttle::{bucket::Bucket, LocalBucket, Quota};
/// let bucket = LocalBucket::new(Quota::per_second(10).unwrap());
/// let now = tokio::time::Instant::now();
/// let slot = bucket.try_reserve(now, None).unwrap();
/// bucket.cancel(slot, now);
/// bucket.cancel(slot, now); // moved: a slot is returned at most once
/// ```
pub struct Reservation {
    when: When,
    // What the bucket's state became when this slot was taken: a cancel is exact only if
    // nobody reserved since, which `token` lets the bucket check.
    token: u64,
    // The bucket's change counter when the slot was taken (see `Bucket::is_current`).
    epoch: u32,
    // Units taken: 1 for a plain request, more for a weighted one.
    cost: u32,
}

/// When a reservation's caller may go. 16 bytes (`Admitted` lives beside the niche in
/// `Instant`'s nanoseconds), so a whole reservation is four words: it is built and moved on
/// every admit, where each extra word showed up in the cost.
#[derive(Clone, Copy)]
enum When {
    /// A slot the caller must compare with its own clock (possibly in the future).
    At(Instant),
    /// The bucket decided, at its own "now", that the caller goes at once; the slot is
    /// nanoseconds since the process origin ([`crate::clock::origin`]). The gate then skips
    /// reading the clock again, and nobody pays for building an `Instant` unless `at()` asks.
    Admitted(i64),
}

impl Reservation {
    /// Builds a reservation of one unit; bucket implementations outside this crate use
    /// `token` and `epoch` as they need (they are handed back untouched on cancel).
    pub fn new(at: Instant, token: u64, epoch: u32) -> Reservation {
        Reservation {
            when: When::At(at),
            token,
            epoch,
            cost: 1,
        }
    }

    /// The same reservation, standing for `cost` units.
    pub fn with_cost(mut self, cost: u32) -> Reservation {
        self.cost = cost;
        self
    }

    /// A reservation whose caller may go at once (`at` is the bucket's now). An instant too
    /// far from the process origin to count in nanoseconds stays a plain slot at `at`, which
    /// the gate admits all the same after comparing it with its clock.
    pub(crate) fn admitted(at: Instant, token: u64, epoch: u32) -> Reservation {
        Reservation::admitted_or(crate::clock::since_origin(at), at, token, epoch)
    }

    /// An admitted reservation at `since_origin` nanoseconds past the process origin, or a
    /// plain slot at `at` when that did not fit.
    #[inline]
    pub(crate) fn admitted_or(
        since_origin: Option<i64>,
        at: Instant,
        token: u64,
        epoch: u32,
    ) -> Reservation {
        Reservation {
            when: match since_origin {
                Some(n) => When::Admitted(n),
                None => When::At(at),
            },
            token,
            epoch,
            cost: 1,
        }
    }

    /// [`Reservation::admitted`] with the slot already counted from the process origin.
    #[inline]
    pub(crate) fn admitted_since_origin(nanos: i64, token: u64, epoch: u32) -> Reservation {
        Reservation {
            when: When::Admitted(nanos),
            token,
            epoch,
            cost: 1,
        }
    }

    /// True when the bucket itself decided the caller goes at once.
    #[inline]
    pub(crate) fn is_admitted(&self) -> bool {
        matches!(self.when, When::Admitted(_))
    }

    /// When the caller may go.
    #[inline]
    pub fn at(&self) -> Instant {
        match self.when {
            When::At(at) => at,
            When::Admitted(n) => crate::clock::shift(crate::clock::origin(), n),
        }
    }

    /// The bucket's own bookkeeping value stored at reserve time.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The bucket's change counter when the slot was taken.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The units this reservation took.
    pub fn cost(&self) -> u32 {
        self.cost
    }
}

impl PartialEq for Reservation {
    fn eq(&self, other: &Self) -> bool {
        self.at() == other.at()
            && self.token == other.token
            && self.epoch == other.epoch
            && self.cost == other.cost
    }
}

impl Eq for Reservation {}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("at", &self.at())
            .field("token", &self.token)
            .field("epoch", &self.epoch)
            .field("cost", &self.cost)
            .finish()
    }
}

/// A reservation that needs I/O (a round trip to Redis) before it is known.
pub type ReserveFuture = Pin<Box<dyn Future<Output = Result<Reservation, ThrottleError>> + Send>>;

/// The answer to [`Bucket::reserve`]: known at once (in-process buckets, leased tokens) or
/// after I/O.
pub enum Reserve {
    /// Decided without I/O.
    Ready(Result<Reservation, ThrottleError>),
    /// Decided when the future completes.
    Pending(ReserveFuture),
}

impl fmt::Debug for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Reserve::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A point-in-time view of a bucket, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Requests that could start right now without waiting.
    pub available: u64,
    /// When the next caller would get its slot.
    pub next_free: Instant,
    /// Current paced rate of the shortest window, in requests per second.
    pub rate_per_second: f64,
    /// Set while a hold (from a 429) is in force.
    pub held_until: Option<Instant>,
}

/// The contract every bucket keeps, in-process or shared through Redis.
///
/// Implementations are handles: cloning one shares the same state. The arithmetic behind every
/// method is the admission core's (see `src/bucket/core.rs` and the crate's DESIGN notes):
/// several windows admitted atomically, holds that never spend a window's allowance, rate
/// changes that reach callers already waiting.
pub trait Bucket: Send + Sync + fmt::Debug + 'static {
    /// Reserves the next free slot for a caller arriving at `now`. If that slot is more than
    /// `max_wait` away, nothing is reserved and the error says how long the wait would be.
    fn reserve(&self, now: Instant, max_wait: Option<Duration>) -> Reserve {
        self.reserve_weighted(now, 1, max_wait)
    }

    /// [`Bucket::reserve`] for a request that costs `cost` units (records, bytes, tokens) of
    /// every window at once. A cost above some window's burst is refused with
    /// [`ThrottleError::CostTooHigh`]; a cost of 0 counts as 1.
    fn reserve_weighted(&self, now: Instant, cost: u32, max_wait: Option<Duration>) -> Reserve;

    /// [`Bucket::reserve`] for a caller arriving now, as told by the bucket's own clock; this
    /// is what the gate calls. The default reads `tokio::time::Instant::now()`; a bucket with
    /// a clock of its own (a [`LocalBucket`] built with [`Clock::Fast`]) overrides it.
    fn reserve_now(&self, max_wait: Option<Duration>) -> Reserve {
        let now = Instant::now();
        match self.reserve(now, max_wait) {
            Reserve::Ready(Ok(r)) if !r.is_admitted() && r.at() <= now => {
                let at = r.at();
                let cost = r.cost;
                Reserve::Ready(Ok(
                    Reservation::admitted(at, r.token, r.epoch).with_cost(cost)
                ))
            }
            other => other,
        }
    }

    /// Hands back a reservation that will not be used. Exact when nobody reserved after it
    /// (and the rate did not change since); otherwise the slot is forgotten (never admitted
    /// twice).
    fn cancel(&self, reservation: Reservation, now: Instant);

    /// Makes every caller wait until `until`, including those already waiting for an earlier
    /// slot (they re-slot behind it when they wake). A hold is a floor, not a spend: no
    /// window's allowance is used by it. After it, a window paced one request per interval
    /// releases waiters one interval apart; a token-bucket window releases what it holds. A
    /// later hold extends an earlier one.
    fn hold_until(&self, until: Instant);

    /// The end of the current hold, if one is set and `now` has not passed it.
    fn held_until(&self, now: Instant) -> Option<Instant>;

    /// Whether a caller that reserved `reservation` earlier may still go at its slot. False
    /// when, since it was taken, a hold began that covers the slot, or the rate changed enough
    /// to re-slot (its slot was paced at the old rate; see [`Bucket::set_rate`]), or (Redis)
    /// the bucket switched between the server and its fallback: the caller then hands nothing
    /// back and reserves again. The gate asks on every wake-up, so a cut reaches callers
    /// already waiting within one new interval, and on every [`Bucket::reslots`] signal.
    fn is_current(&self, reservation: &Reservation, now: Instant) -> bool {
        !matches!(self.held_until(now), Some(hold) if hold > reservation.at())
    }

    /// Changes the rate of the shortest window at run time (requests per second). The change
    /// applies to callers already waiting too: after a cut they re-slot when they wake (see
    /// [`Bucket::is_current`]); after a raise of more than an eighth they are woken at once
    /// through [`Bucket::reslots`] and re-slot at the new pace.
    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError>;

    /// Notified when callers already waiting should ask [`Bucket::is_current`] before their
    /// slot comes: a rate raise voided slots paced at the slower rate, and waiting for them
    /// would leave the new rate unused for as long as the queue is. A gate waits on this and
    /// on its timer; `None` (the default) means slots are never voided early, so the timer is
    /// enough. A caller that misses a notification still re-slots at its old slot.
    fn reslots(&self) -> Option<&Arc<Notify>> {
        None
    }

    /// The current rate of the shortest window, in requests per second.
    fn rate(&self) -> f64;

    /// A view of the bucket at `now`.
    fn snapshot(&self, now: Instant) -> Snapshot;

    /// The cap on requests in flight that came with the bucket's [`Limits`](crate::Limits),
    /// shared by every layer built on this bucket (a limit belongs to the workspace, not to a
    /// handle).
    fn concurrency(&self) -> Option<&Arc<Semaphore>> {
        None
    }
}

/// Converts a rate in requests per second to a whole-nanosecond interval, rounded up so that
/// the rate is never exceeded.
pub(crate) fn interval_for_rate(per_second: f64) -> Result<u64, ConfigError> {
    if !per_second.is_finite() || per_second <= 0.0 {
        return Err(ConfigError::OutOfRange {
            name: "rate",
            value: per_second,
            expected: "a finite number of requests per second above zero",
        });
    }
    let nanos = (1e9 / per_second).ceil();
    if nanos < 1.0 {
        return Err(ConfigError::Overflow { what: "rate" });
    }
    // Rates below one per 584 years saturate rather than wrap.
    Ok(if nanos >= u64::MAX as f64 {
        u64::MAX
    } else {
        nanos as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four words: built and moved on every admit.
    #[test]
    fn a_reservation_is_four_words() {
        assert_eq!(std::mem::size_of::<Reservation>(), 32);
    }

    #[test]
    fn an_admitted_reservation_hands_back_its_instant_exactly() {
        let now = Instant::now();
        for at in [now, now + Duration::new(5, 7)]
            .into_iter()
            .chain(now.checked_sub(Duration::new(3, 11)))
        {
            let r = Reservation::admitted(at, 4, 9);
            assert!(r.is_admitted());
            assert_eq!(r.at(), at);
            assert_eq!(r, Reservation::new(at, 4, 9));
            assert_eq!((r.token(), r.epoch(), r.cost()), (4, 9, 1));
        }
    }
}
