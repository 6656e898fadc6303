//! Counters and gauges for a throttled run: a cheap [`Stats`] handle read as a snapshot in
//! code, emitted through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`)
//! and as `tracing` events.
//!
//! `Stats` is decoupled from the layers: a layer takes an optional handle (`with_stats`) and
//! records into it; nothing requires one. Every record is a relaxed atomic operation (no lock,
//! no allocation unless the `metrics` feature is on and a recorder is installed).
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower_throttle::metrics::{HealthIssue, Stats};
//!
//! let stats = Stats::new();
//! for _ in 0..90 {
//!     stats.record_response(StatusCode::OK);
//! }
//! for _ in 0..10 {
//!     stats.record_response(StatusCode::TOO_MANY_REQUESTS);
//! }
//! stats.record_gate_wait(Duration::from_millis(40));
//!
//! let snap = stats.snapshot();
//! assert_eq!((snap.requests(), snap.rate_limited), (100, 10));
//! assert_eq!(snap.gate_wait_max, Duration::from_millis(40));
//! // 10% of requests were 429s: more than the 5% a well-paced client should see.
//! let health = snap.health();
//! assert!(!health.is_healthy());
//! assert!(matches!(health.issues()[0], HealthIssue::TooMany429s { .. }));
//! ```
//!
//! # Metric names (feature `metrics`)
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_throttle_requests_total` | counter | `class` (`success`, `client_error`, `rate_limited`, `server_error`, `error`), `destination` when given |
//! | `tower_throttle_retries_total` | counter | `attempt` (2, 3, ... ; `9+`) |
//! | `tower_throttle_dead_letters_total` | counter | `op` (`written`, `removed`, `write_failed`) |
//! | `tower_throttle_queue_size` / `tower_throttle_queue_pending` | gauge | |
//! | `tower_throttle_adaptive_rate` | gauge | requests per second |
//! | `tower_throttle_gate_wait_seconds` | histogram | |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// Retries are counted per attempt number 2..=9; later attempts share the last bucket.
pub const RETRY_BUCKETS: usize = 8;

/// Outcome class of one request, as counted by [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeClass {
    /// 1xx, 2xx or 3xx.
    Success,
    /// 4xx other than 429.
    ClientError,
    /// 429 Too Many Requests.
    RateLimited,
    /// 5xx.
    ServerError,
    /// No response: a transport error, a timeout, a refusal by a layer.
    Error,
}

impl OutcomeClass {
    /// The class of a response status.
    pub fn of_status(status: StatusCode) -> OutcomeClass {
        if status == StatusCode::TOO_MANY_REQUESTS {
            OutcomeClass::RateLimited
        } else if status.is_server_error() {
            OutcomeClass::ServerError
        } else if status.is_client_error() {
            OutcomeClass::ClientError
        } else {
            OutcomeClass::Success
        }
    }

    /// The label used for this class in metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::ClientError => "client_error",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::ServerError => "server_error",
            OutcomeClass::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_class: [AtomicU64; 5],
    retries: [AtomicU64; RETRY_BUCKETS],
    dead_letters_written: AtomicU64,
    dead_letters_removed: AtomicU64,
    dead_letter_write_failures: AtomicU64,
    queue_size: AtomicU64,
    queue_pending: AtomicU64,
    // f64 bits; 0 means "never set" (a rate of exactly 0 is not a valid adaptive rate).
    adaptive_rate: AtomicU64,
    gate_waits: AtomicU64,
    gate_wait_nanos_sum: AtomicU64,
    gate_wait_nanos_max: AtomicU64,
}

/// Shared run statistics; clones record into the same counters. See the
/// [module docs](self) for an example.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Inner>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stats").field(&self.snapshot()).finish()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    /// Fresh counters, all zero.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Counts a request's final or intermediate outcome by class.
    pub fn record_outcome(&self, class: OutcomeClass) {
        self.inner.by_class[class.index()].fetch_add(1, Relaxed);
        tracing::trace!(class = class.as_str(), "request outcome");
        #[cfg(feature = "metrics")]
        ::metrics::counter!("tower_throttle_requests_total", "class" => class.as_str())
            .increment(1);
    }

    /// Counts a request by class and by destination (the `destination` label exists only in
    /// the `metrics` facade; the snapshot aggregates all destinations).
    pub fn record_outcome_for(&self, destination: &str, class: OutcomeClass) {
        self.inner.by_class[class.index()].fetch_add(1, Relaxed);
        tracing::trace!(class = class.as_str(), destination, "request outcome");
        #[cfg(feature = "metrics")]
        ::metrics::counter!(
            "tower_throttle_requests_total",
            "class" => class.as_str(),
            "destination" => destination.to_owned()
        )
        .increment(1);
    }

    /// Counts a response by its status class.
    pub fn record_response(&self, status: StatusCode) {
        self.record_outcome(OutcomeClass::of_status(status));
    }

    /// Counts a request that ended without a response.
    pub fn record_error(&self) {
        self.record_outcome(OutcomeClass::Error);
    }

    /// Counts a retry; `attempt` is the number of the attempt about to be sent (2 for the first
    /// retry). Attempts 0 and 1 are not retries and are ignored.
    pub fn record_retry(&self, attempt: u32) {
        if attempt < 2 {
            return;
        }
        let idx = usize::try_from(attempt - 2)
            .unwrap_or(usize::MAX)
            .min(RETRY_BUCKETS - 1);
        self.inner.retries[idx].fetch_add(1, Relaxed);
        tracing::debug!(attempt, "retry");
        #[cfg(feature = "metrics")]
        {
            const LABELS: [&str; RETRY_BUCKETS] = ["2", "3", "4", "5", "6", "7", "8", "9+"];
            ::metrics::counter!("tower_throttle_retries_total", "attempt" => LABELS[idx])
                .increment(1);
        }
    }

    /// Counts a dead letter written to a store.
    pub fn record_dead_letter(&self) {
        self.inner.dead_letters_written.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!("tower_throttle_dead_letters_total", "op" => "written").increment(1);
    }

    /// Counts a dead letter removed after a successful replay.
    pub fn record_dead_letter_removed(&self) {
        self.inner.dead_letters_removed.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!("tower_throttle_dead_letters_total", "op" => "removed").increment(1);
    }

    /// Counts a dead letter that could not be written (the store failed).
    pub fn record_dead_letter_failure(&self) {
        self.inner.dead_letter_write_failures.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!("tower_throttle_dead_letters_total", "op" => "write_failed")
            .increment(1);
    }

    /// Sets the queue gauges: `size` requests waiting, `pending` running.
    pub fn set_queue(&self, size: usize, pending: usize) {
        let (size, pending) = (size as u64, pending as u64);
        self.inner.queue_size.store(size, Relaxed);
        self.inner.queue_pending.store(pending, Relaxed);
        #[cfg(feature = "metrics")]
        {
            ::metrics::gauge!("tower_throttle_queue_size").set(size as f64);
            ::metrics::gauge!("tower_throttle_queue_pending").set(pending as f64);
        }
    }

    /// Sets the current adaptive rate (requests per second). Non-finite or non-positive values
    /// are ignored.
    pub fn set_adaptive_rate(&self, per_second: f64) {
        if !(per_second.is_finite() && per_second > 0.0) {
            return;
        }
        self.inner
            .adaptive_rate
            .store(per_second.to_bits(), Relaxed);
        tracing::debug!(rate = per_second, "adaptive rate");
        #[cfg(feature = "metrics")]
        ::metrics::gauge!("tower_throttle_adaptive_rate").set(per_second);
    }

    /// Records how long one caller waited in the rate-limit gate.
    pub fn record_gate_wait(&self, wait: Duration) {
        let n = nanos(wait);
        self.inner.gate_waits.fetch_add(1, Relaxed);
        self.inner.gate_wait_nanos_sum.fetch_add(n, Relaxed);
        self.inner.gate_wait_nanos_max.fetch_max(n, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::histogram!("tower_throttle_gate_wait_seconds").record(wait.as_secs_f64());
    }

    /// A consistent-enough copy of every counter (each is read atomically; the set is not).
    pub fn snapshot(&self) -> StatsSnapshot {
        let i = &self.inner;
        let class = |c: OutcomeClass| i.by_class[c.index()].load(Relaxed);
        let rate = f64::from_bits(i.adaptive_rate.load(Relaxed));
        StatsSnapshot {
            success: class(OutcomeClass::Success),
            client_error: class(OutcomeClass::ClientError),
            rate_limited: class(OutcomeClass::RateLimited),
            server_error: class(OutcomeClass::ServerError),
            error: class(OutcomeClass::Error),
            retries_by_attempt: std::array::from_fn(|k| i.retries[k].load(Relaxed)),
            dead_letters_written: i.dead_letters_written.load(Relaxed),
            dead_letters_removed: i.dead_letters_removed.load(Relaxed),
            dead_letter_write_failures: i.dead_letter_write_failures.load(Relaxed),
            queue_size: i.queue_size.load(Relaxed),
            queue_pending: i.queue_pending.load(Relaxed),
            adaptive_rate: (rate > 0.0).then_some(rate),
            gate_waits: i.gate_waits.load(Relaxed),
            gate_wait_sum: Duration::from_nanos(i.gate_wait_nanos_sum.load(Relaxed)),
            gate_wait_max: Duration::from_nanos(i.gate_wait_nanos_max.load(Relaxed)),
        }
    }
}

/// A copy of the counters of a [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests answered 1xx-3xx.
    pub success: u64,
    /// Requests answered 4xx other than 429.
    pub client_error: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Requests answered 5xx.
    pub server_error: u64,
    /// Requests that ended without a response.
    pub error: u64,
    /// Retries by attempt number: index 0 is attempt 2, the last index attempts 9 and later.
    pub retries_by_attempt: [u64; RETRY_BUCKETS],
    /// Dead letters written.
    pub dead_letters_written: u64,
    /// Dead letters removed after replay.
    pub dead_letters_removed: u64,
    /// Dead letters that could not be written.
    pub dead_letter_write_failures: u64,
    /// Requests waiting in the queue.
    pub queue_size: u64,
    /// Requests the queue has started and that have not finished.
    pub queue_pending: u64,
    /// The adaptive rate last reported, if any.
    pub adaptive_rate: Option<f64>,
    /// Callers that waited in the gate.
    pub gate_waits: u64,
    /// Total time spent waiting in the gate.
    pub gate_wait_sum: Duration,
    /// Longest single wait in the gate.
    pub gate_wait_max: Duration,
}

impl StatsSnapshot {
    /// All requests counted, every class.
    pub fn requests(&self) -> u64 {
        self.success + self.client_error + self.rate_limited + self.server_error + self.error
    }

    /// All retries counted, every attempt number.
    pub fn retries(&self) -> u64 {
        self.retries_by_attempt.iter().sum()
    }

    /// Share of requests answered 429, `0.0` when nothing was counted.
    pub fn rate_limited_ratio(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            n => self.rate_limited as f64 / n as f64,
        }
    }

    /// Checks the run against the default thresholds ([`HealthThresholds::default`]).
    pub fn health(&self) -> Health {
        self.health_with(&HealthThresholds::default())
    }

    /// Checks the run against `thresholds`.
    pub fn health_with(&self, thresholds: &HealthThresholds) -> Health {
        let mut issues = Vec::new();
        let requests = self.requests();
        let ratio = self.rate_limited_ratio();
        if requests >= thresholds.min_requests && ratio > thresholds.max_429_ratio {
            issues.push(HealthIssue::TooMany429s {
                rate_limited: self.rate_limited,
                requests,
                ratio,
            });
        }
        if let Some(max) = thresholds.max_error_ratio {
            // Transport errors never reached the API, so they are neither its requests nor its
            // error responses.
            let errors = self.client_error + self.rate_limited + self.server_error;
            let responses = errors + self.success;
            let ratio = if responses == 0 {
                0.0
            } else {
                errors as f64 / responses as f64
            };
            if responses >= thresholds.min_requests && ratio > max {
                issues.push(HealthIssue::TooManyErrorResponses {
                    errors,
                    responses,
                    ratio,
                });
            }
        }
        if self.dead_letters_written > 0 && self.dead_letters_removed == 0 {
            issues.push(HealthIssue::DeadLettersOnlyGrow {
                written: self.dead_letters_written,
            });
        }
        if self.dead_letter_write_failures > 0 {
            issues.push(HealthIssue::DeadLetterWritesFailed {
                failures: self.dead_letter_write_failures,
            });
        }
        Health { issues }
    }
}

/// Limits used by [`StatsSnapshot::health_with`].
///
/// Defaults: `max_429_ratio` 0.05 (5% of requests), `min_requests` 20 (fewer requests say
/// nothing about a ratio), no `max_error_ratio`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthThresholds {
    /// Largest acceptable share of 429 responses.
    pub max_429_ratio: f64,
    /// The ratios are judged only from this many requests on.
    pub min_requests: u64,
    /// Largest acceptable share of error responses of any kind (4xx, 429, 5xx), for APIs that
    /// police all errors (see [`HealthThresholds::hubspot`]); `None` to not check.
    pub max_error_ratio: Option<f64>,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            max_429_ratio: 0.05,
            min_requests: 20,
            max_error_ratio: None,
        }
    }
}

impl HealthThresholds {
    /// For a HubSpot stack: HubSpot asks that requests answered with an error (429 or any
    /// other) stay under 5% of the day's requests, and certifies marketplace apps only if
    /// they do ([`HUBSPOT_MAX_ERROR_RATIO`](crate::presets::HUBSPOT_MAX_ERROR_RATIO)). Both
    /// the 429 share and the error share are held to that figure. Judge a snapshot that
    /// covers a day (or [`Stats`] reset daily) to match HubSpot's accounting.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_throttle::metrics::{HealthIssue, HealthThresholds, Stats};
    ///
    /// let stats = Stats::new();
    /// for _ in 0..94 {
    ///     stats.record_response(StatusCode::OK);
    /// }
    /// for _ in 0..6 {
    ///     stats.record_response(StatusCode::BAD_REQUEST); // not a 429, still counted
    /// }
    /// let health = stats.snapshot().health_with(&HealthThresholds::hubspot());
    /// assert!(matches!(health.issues(), [HealthIssue::TooManyErrorResponses { errors: 6, .. }]));
    /// ```
    pub const fn hubspot() -> Self {
        HealthThresholds {
            max_429_ratio: crate::presets::HUBSPOT_MAX_ERROR_RATIO,
            min_requests: 20,
            max_error_ratio: Some(crate::presets::HUBSPOT_MAX_ERROR_RATIO),
        }
    }
}

/// The verdict of [`StatsSnapshot::health`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Health {
    issues: Vec<HealthIssue>,
}

impl Health {
    /// No issue found.
    pub fn is_healthy(&self) -> bool {
        self.issues.is_empty()
    }

    /// What is wrong, most important first.
    pub fn issues(&self) -> &[HealthIssue] {
        &self.issues
    }
}

/// One reason a run is unhealthy.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HealthIssue {
    /// The client is pacing too fast (or the limit is misconfigured): the API refused more
    /// than the threshold's share of requests.
    TooMany429s {
        /// 429 responses.
        rate_limited: u64,
        /// All requests.
        requests: u64,
        /// `rate_limited / requests`.
        ratio: f64,
    },
    /// More than the threshold's share of requests were answered with an error status (see
    /// [`HealthThresholds::max_error_ratio`]).
    TooManyErrorResponses {
        /// 4xx (429 included) and 5xx responses.
        errors: u64,
        /// All responses (requests that failed before a response are not counted).
        responses: u64,
        /// `errors / responses`.
        ratio: f64,
    },
    /// Dead letters were written and none was ever removed: nothing replays them.
    DeadLettersOnlyGrow {
        /// Dead letters written.
        written: u64,
    },
    /// The dead-letter store failed to write some records; those requests are lost.
    DeadLetterWritesFailed {
        /// Failed writes.
        failures: u64,
    },
}

impl fmt::Display for HealthIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthIssue::TooMany429s {
                rate_limited,
                requests,
                ratio,
            } => write!(
                f,
                "{rate_limited} of {requests} requests ({:.1}%) were rate limited; lower the quota or enable the adaptive layer",
                ratio * 100.0
            ),
            HealthIssue::TooManyErrorResponses {
                errors,
                responses,
                ratio,
            } => write!(
                f,
                "{errors} of {responses} responses ({:.1}%) were errors; the API's guideline is lower",
                ratio * 100.0
            ),
            HealthIssue::DeadLettersOnlyGrow { written } => write!(
                f,
                "{written} dead letters written and none replayed; run dead_letter::replay"
            ),
            HealthIssue::DeadLetterWritesFailed { failures } => {
                write!(f, "{failures} dead letters could not be written")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bucketed_by_attempt() {
        let stats = Stats::new();
        stats.record_retry(1); // not a retry
        stats.record_retry(2);
        stats.record_retry(2);
        stats.record_retry(3);
        stats.record_retry(40);
        stats.record_retry(u32::MAX);
        let s = stats.snapshot();
        assert_eq!(s.retries_by_attempt, [2, 1, 0, 0, 0, 0, 0, 2]);
        assert_eq!(s.retries(), 5);
    }

    #[test]
    fn classes_and_gauges() {
        let stats = Stats::new();
        let clone = stats.clone();
        for code in [200, 204, 302, 400, 404, 429, 500, 503] {
            clone.record_response(StatusCode::from_u16(code).unwrap());
        }
        clone.record_error();
        clone.set_queue(7, 3);
        clone.set_adaptive_rate(f64::NAN);
        assert_eq!(stats.snapshot().adaptive_rate, None);
        clone.set_adaptive_rate(42.5);
        clone.record_gate_wait(Duration::from_millis(10));
        clone.record_gate_wait(Duration::from_millis(30));
        let s = stats.snapshot();
        assert_eq!(
            (
                s.success,
                s.client_error,
                s.rate_limited,
                s.server_error,
                s.error
            ),
            (3, 2, 1, 2, 1)
        );
        assert_eq!((s.queue_size, s.queue_pending), (7, 3));
        assert_eq!(s.adaptive_rate, Some(42.5));
        assert_eq!(s.gate_waits, 2);
        assert_eq!(s.gate_wait_sum, Duration::from_millis(40));
        assert_eq!(s.gate_wait_max, Duration::from_millis(30));
    }

    #[test]
    fn health_flags_429s_only_above_threshold_and_sample() {
        let stats = Stats::new();
        // 1 of 10: a ratio of 10% but too few requests to judge.
        stats.record_response(StatusCode::TOO_MANY_REQUESTS);
        for _ in 0..9 {
            stats.record_response(StatusCode::OK);
        }
        assert!(stats.snapshot().health().is_healthy());
        // 1 of 20 = exactly 5%: not above the threshold.
        for _ in 0..10 {
            stats.record_response(StatusCode::OK);
        }
        assert!(stats.snapshot().health().is_healthy());
        stats.record_response(StatusCode::TOO_MANY_REQUESTS);
        let health = stats.snapshot().health();
        assert!(matches!(
            health.issues(),
            [HealthIssue::TooMany429s {
                rate_limited: 2,
                requests: 21,
                ..
            }]
        ));
    }

    #[test]
    fn hubspot_health_counts_every_error_response_against_five_percent() {
        let stats = Stats::new();
        for _ in 0..95 {
            stats.record_response(StatusCode::OK);
        }
        stats.record_response(StatusCode::TOO_MANY_REQUESTS);
        stats.record_response(StatusCode::BAD_REQUEST);
        stats.record_response(StatusCode::NOT_FOUND);
        stats.record_response(StatusCode::INTERNAL_SERVER_ERROR);
        stats.record_response(StatusCode::BAD_GATEWAY);
        // 5 of 100: at the guideline, not above it; the default check sees only one 429.
        let snap = stats.snapshot();
        assert!(snap.health_with(&HealthThresholds::hubspot()).is_healthy());
        assert!(snap.health().is_healthy());
        stats.record_response(StatusCode::BAD_REQUEST);
        let snap = stats.snapshot();
        assert_eq!(
            snap.health_with(&HealthThresholds::hubspot()).issues(),
            &[HealthIssue::TooManyErrorResponses {
                errors: 6,
                responses: 101,
                ratio: 6.0 / 101.0
            }]
        );
        assert!(snap.health().is_healthy());
        // Transport errors never reached HubSpot: they neither count as its errors nor dilute
        // the share.
        for _ in 0..50 {
            stats.record_error();
        }
        assert!(matches!(
            stats
                .snapshot()
                .health_with(&HealthThresholds::hubspot())
                .issues(),
            [HealthIssue::TooManyErrorResponses { responses: 101, .. }]
        ));
    }

    #[test]
    fn health_flags_a_store_that_only_grows() {
        let stats = Stats::new();
        stats.record_dead_letter();
        assert_eq!(
            stats.snapshot().health().issues(),
            &[HealthIssue::DeadLettersOnlyGrow { written: 1 }]
        );
        stats.record_dead_letter_removed();
        assert!(stats.snapshot().health().is_healthy());
    }
}
