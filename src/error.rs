//! Typed errors.
//!
//! Two families: [`ConfigError`] is returned when something is *built* with values that cannot
//! work (a zero rate, a NaN factor, min above max); [`ThrottleError`] is what a running layer
//! hands back instead of a response (the caller would wait too long, the queue is full, a body
//! cannot be replayed). Services in this crate use [`tower::BoxError`] as their error type, as
//! tower's own middleware does, so a `ThrottleError` reaches the caller boxed: use
//! [`ThrottleError::from_box`] (or `downcast_ref`) to get it back.

use std::fmt;
use std::time::Duration;

/// A configuration value was rejected when a quota, policy or layer was built.
///
/// ```
/// use tower_throttle::{ConfigError, Quota};
///
/// assert_eq!(Quota::per_second(0).unwrap_err(), ConfigError::ZeroRate);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A quota allows zero requests.
    ZeroRate,
    /// A quota's period is zero.
    ZeroPeriod,
    /// A quota's burst is zero: nothing could ever be admitted.
    ZeroBurst,
    /// A rate so high that one request's interval rounds to zero nanoseconds, or values whose
    /// product overflows.
    Overflow {
        /// Which value overflowed.
        what: &'static str,
    },
    /// A [`Limits`](crate::Limits) with no quota in it.
    NoQuota,
    /// A number that must be finite and inside a range was not.
    OutOfRange {
        /// The parameter's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The accepted range, for the message.
        expected: &'static str,
    },
    /// A lower bound above its upper bound.
    MinAboveMax {
        /// The parameter's name.
        name: &'static str,
        /// The lower bound given.
        min: f64,
        /// The upper bound given.
        max: f64,
    },
    /// A required value was zero.
    Zero {
        /// The parameter's name.
        name: &'static str,
    },
    /// Anything else, with a sentence that says what to change.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroRate => {
                f.write_str("a quota must allow at least one request per period")
            }
            ConfigError::ZeroPeriod => f.write_str("a quota's period must be longer than zero"),
            ConfigError::ZeroBurst => f.write_str("a quota's burst must be at least 1"),
            ConfigError::Overflow { what } => {
                write!(
                    f,
                    "{what} is out of range: the interval per request would be zero or overflow"
                )
            }
            ConfigError::NoQuota => f.write_str("limits need at least one quota"),
            ConfigError::OutOfRange {
                name,
                value,
                expected,
            } => {
                write!(f, "{name} = {value} is invalid: expected {expected}")
            }
            ConfigError::MinAboveMax { name, min, max } => {
                write!(f, "{name}: minimum {min} is above maximum {max}")
            }
            ConfigError::Zero { name } => write!(f, "{name} must be greater than zero"),
            ConfigError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What a throttling layer returns instead of calling the inner service.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::ThrottleError;
///
/// let boxed: tower::BoxError = ThrottleError::WaitTooLong {
///     wait: Duration::from_secs(3),
///     max_wait: Duration::from_secs(1),
/// }
/// .into();
/// assert!(matches!(ThrottleError::from_box(&boxed), Some(ThrottleError::WaitTooLong { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottleError {
    /// The gate would have made this caller wait longer than its `max_wait`; nothing was
    /// reserved. Shed the request or try again after `wait`.
    WaitTooLong {
        /// How long the caller would have waited.
        wait: Duration,
        /// The configured ceiling.
        max_wait: Duration,
    },
    /// The queue already holds `capacity` waiting requests.
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A retry was due but the request body cannot be sent twice (a stream). The first
    /// attempt's outcome is in `reason`.
    NotReplayable {
        /// Why the request could not be retried.
        reason: String,
    },
    /// A request costs more units than some window of the limits can ever admit at once (its
    /// burst): it would wait forever. Split it (smaller batches) or raise that window's burst.
    CostTooHigh {
        /// The request's cost in units.
        cost: u64,
        /// The smallest burst among the windows.
        burst: u64,
    },
    /// A shared bucket (Redis) could not be reached and the layer is configured to fail closed.
    BucketUnavailable {
        /// What went wrong.
        reason: String,
    },
    /// The server refused the request because a long allowance (a daily quota) is spent, and
    /// it is back only after the request's retry deadline: nothing was retried. The shared
    /// bucket is held until then, so other requests do not spend attempts on it either.
    QuotaExhausted {
        /// How long until the allowance is back.
        wait: Duration,
        /// The response's status code.
        status: u16,
    },
    /// The request may have been applied by the server, but its answer was lost (a timeout
    /// or a connection reset after the request was written), and sending it again is not
    /// safe: the request is not idempotent (a `POST` without an `Idempotency-Key`, a batch
    /// `create`). It was not resent; reconcile it against the server (look the record up)
    /// before sending it again. A dead-letter layer keeps it marked
    /// [`outcome_unknown`](crate::dead_letter::DeadLetter::outcome_unknown).
    OutcomeUnknown {
        /// What happened to the attempt whose answer was lost.
        reason: String,
    },
}

impl ThrottleError {
    /// Finds a `ThrottleError` inside a boxed error returned by one of this crate's services.
    pub fn from_box(err: &tower::BoxError) -> Option<&ThrottleError> {
        err.downcast_ref::<ThrottleError>()
    }
}

impl fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleError::WaitTooLong { wait, max_wait } => write!(
                f,
                "rate limit: the next slot is {wait:?} away, more than max_wait {max_wait:?}; shed the request or raise max_wait"
            ),
            ThrottleError::QueueFull { capacity } => write!(
                f,
                "queue full: {capacity} requests already waiting; slow the producer or raise the capacity"
            ),
            ThrottleError::NotReplayable { reason } => write!(
                f,
                "request not retried because its body cannot be replayed ({reason}); send a buffered body (Bytes, Full) to get retries"
            ),
            ThrottleError::CostTooHigh { cost, burst } => write!(
                f,
                "rate limit: a request costing {cost} units can never be admitted, the smallest window burst is {burst}; split it or raise the burst"
            ),
            ThrottleError::BucketUnavailable { reason } => {
                write!(f, "shared rate-limit bucket unavailable (failing closed): {reason}")
            }
            ThrottleError::QuotaExhausted { wait, status } => write!(
                f,
                "quota exhausted ({status}): the allowance is back in {wait:?}, after the retry deadline; send it again then"
            ),
            ThrottleError::OutcomeUnknown { reason } => write!(
                f,
                "outcome unknown: the request may have been applied but its answer was lost ({reason}); it is not idempotent, so it was not resent: look it up before sending it again"
            ),
        }
    }
}

impl std::error::Error for ThrottleError {}
