use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;
use tower::BoxError;

use super::future::RetryDelay;
use super::hold::{Hold, KeyedHold};
use super::inspect::InspectedBody;
use crate::backoff::Backoff;
use crate::body::ReplayBody;
use crate::bucket::{Bucket, KeyedBucket};
use crate::classify::{Classify, HttpClassifier, Outcome, MAX_BODY_INSPECTED};
use crate::clock::later;
use crate::metrics::Stats;
use crate::rate_limit::KeyFn;
use crate::{ConfigError, ThrottleError};

/// How many attempts a request took; inserted into the extensions of the final response.
///
/// ```
/// use tower_throttle::retry::Attempts;
///
/// let mut res = http::Response::new(());
/// res.extensions_mut().insert(Attempts(3));
/// assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);

/// Request extension: whether applying this request twice has the effect of applying it once.
///
/// When an attempt's answer is lost after the request was written (a timeout, a connection
/// reset), the server may have applied it. The policy resends such a request only when it is
/// idempotent: this extension when present, else a request carrying an `Idempotency-Key`
/// header, else an idempotent method by RFC 9110 (`GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`,
/// `TRACE`). A `POST` or `PATCH` is therefore at-most-once by default: it fails with
/// [`ThrottleError::OutcomeUnknown`] (kept by a dead-letter layer for reconciliation) instead
/// of being applied twice. Answers that prove nothing was applied (a 429, a 503, a refused
/// connection) are retried whatever the method.
///
/// ```
/// use tower_throttle::retry::Idempotent;
///
/// // An upsert sent as POST: safe to send twice.
/// let mut req = http::Request::post("https://api.example.com/v1/contacts/upsert").body(()).unwrap();
/// req.extensions_mut().insert(Idempotent(true));
/// assert!(Idempotent::of(&req));
/// assert!(!Idempotent::of(&http::Request::post("https://api.example.com/v1/events").body(()).unwrap()));
/// assert!(Idempotent::of(&http::Request::put("https://api.example.com/v1/contacts/7").body(()).unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Idempotent(pub bool);

impl Idempotent {
    /// Whether `req` may be sent again after an attempt whose outcome is unknown, by the
    /// rule above.
    pub fn of<B>(req: &http::Request<B>) -> bool {
        Idempotent::from_parts(req.method(), req.headers(), req.extensions())
    }

    /// The same rule from a request's parts (for clients whose request type is not
    /// `http::Request`, such as reqwest's).
    pub(crate) fn from_parts(
        method: &http::Method,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> bool {
        match extensions.get::<Idempotent>() {
            Some(Idempotent(marked)) => *marked,
            None => headers.contains_key("idempotency-key") || method.is_idempotent(),
        }
    }
}

/// Marks a request whose body could not be copied, so the policy can say why it stopped.
#[derive(Debug, Clone, Copy)]
struct NotCloned;

/// When the logical request started, carried on the copy kept for the retries. The start lives
/// on the request rather than the policy: tower's `Retry::call` calls `clone_request` on the
/// layer's long-lived policy, so anything stored there would leak into every later request.
#[derive(Debug, Clone, Copy)]
struct RequestStart(Instant);

/// A 429-aware [`tower::retry::Policy`] for `http::Request<B>` / `http::Response<R>`.
///
/// | outcome (see [`HttpClassifier`]) | what happens |
/// |---|---|
/// | success, or a permanent failure (other 4xx) | returned at once |
/// | 429 (or a 403 with a spent quota) with the server's wait: `Retry-After`, or a reset with 0 remaining (see [`HttpClassifier`]) | the shared bucket (if attached, and the request's key in a keyed one) is held until then, so every caller pauses; this request retries after it plus up to 10% (at most 1 s) jitter |
/// | 429 with no wait given | backoff with jitter |
/// | 429 for a spent long allowance (HubSpot's daily limit: [`Classify::quota_reset`]) | the shared bucket (and the key) is held until the allowance is back, uncapped (up to a day); the request retries after it without spending an attempt; if that is past its deadline, it ends at once with [`ThrottleError::QuotaExhausted`] |
/// | 503 (or another transient status) with `Retry-After` | as a 429 with `Retry-After` (held, waited), but drawn from the retry budget and not counted as a rate limit |
/// | 500/502/503/504/408, timeout, connection error | backoff with jitter, drawn from the retry budget |
/// | attempts, deadline or budget exhausted | the last response or error is returned, with [`Attempts`] in its extensions |
/// | body not replayable | no retry; a retryable failure becomes [`ThrottleError::NotReplayable`] |
///
/// Every wait but a spent quota's is capped at the backoff's `max_delay`. Nothing shared
/// changes for a retry that will not happen: the attempt limit, the deadline (counted from
/// each request's first attempt) and the budget are all checked before the bucket is held.
/// The one exception is a spent quota, which holds the bucket in any case: the server refuses
/// everything until then, so any request sent sooner would only spend an attempt.
///
/// To tell a spent quota, the classifier may need the 429's body (HubSpot names the policy
/// there). The policy reads a body it can see without waiting: a buffered one (`Full<Bytes>`,
/// as [`ThrottleBuilder::timeout`](crate::ThrottleBuilder::timeout) answers, `Bytes`,
/// `String`, `Vec<u8>`) of at most [`MAX_BODY_INSPECTED`](crate::classify::MAX_BODY_INSPECTED)
/// bytes, and hands it on untouched, or the bytes an
/// [`InspectBodyLayer`](super::InspectBodyLayer) below it read from a streaming body (its
/// [`InspectedBody`](super::InspectedBody) extension, looked at first). Below a streaming
/// client, put an `InspectBodyLayer` under the retry layer (it reads 429 bodies within a size
/// and time bound and keeps every body streaming), or a
/// [`BodyTimeoutLayer`](crate::timeout::BodyTimeoutLayer) to buffer every body; without
/// either the classifier has the headers only.
///
/// Under a scheduler with a concurrency cap ([`run_bulk`](crate::bulk::run_bulk), a
/// [`QueueLayer`](crate::QueueLayer) above this layer), the wait gives the request's
/// slot back, so other requests run while it waits (see [`RetryDelay`]).
///
/// Defaults: 4 retries (5 attempts), backoff 1 s base, factor 2, 60 s cap, 25% proportional
/// jitter (see [`Backoff`]); `Retry-After` capped at the backoff cap; no total deadline; a
/// budget that lets retries of transient failures add at most 20% to the request rate plus
/// 10 per second (Finagle's and Envoy's figure), shared by every clone. Rate-limited retries
/// do not draw from the budget: they are paced by the shared hold instead, and a budget would
/// turn a 429 storm the server asked us to wait out into lost records.
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::RetryPolicy;
/// use tower_throttle::{LocalBucket, Quota};
///
/// let bucket = LocalBucket::new(Quota::per_second(80)?);
/// let policy = RetryPolicy::default()
///     .with_bucket(bucket.clone())
///     .with_deadline(Duration::from_secs(300));
/// assert_eq!(policy.backoff().max_retries(), 4);
/// # Ok::<(), tower_throttle::ConfigError>(())
/// ```
pub struct RetryPolicy<C = HttpClassifier> {
    classifier: C,
    backoff: Backoff,
    deadline: Option<Duration>,
    budget: Option<Arc<TpsBudget>>,
    bucket: Option<Arc<dyn Bucket>>,
    keyed: Option<Arc<dyn Hold>>,
    seeds: Arc<AtomicU64>,
    stats: Option<Stats>,
    // Per-request state: tower clones the policy for every request.
    rng: SmallRng,
    attempt: u32,
    started: Option<Instant>,
    prev_delay: Option<Duration>,
    /// Retries that waited out a spent quota: they do not count against `max_retries`.
    quota_waits: u32,
}

impl Default for RetryPolicy<HttpClassifier> {
    fn default() -> Self {
        RetryPolicy::new(HttpClassifier::default())
    }
}

impl<C> RetryPolicy<C> {
    /// A policy with the default backoff and budget, classifying with `classifier`.
    pub fn new(classifier: C) -> Self {
        RetryPolicy::from_seed(classifier, rand::random())
    }

    fn from_seed(classifier: C, seed: u64) -> Self {
        RetryPolicy {
            classifier,
            backoff: Backoff::default(),
            deadline: None,
            budget: Some(Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2))),
            bucket: None,
            keyed: None,
            rng: SmallRng::seed_from_u64(seed),
            seeds: Arc::new(AtomicU64::new(seed)),
            stats: None,
            attempt: 0,
            started: None,
            prev_delay: None,
            quota_waits: 0,
        }
    }

    /// Uses `backoff` for delays and its `max_retries` for the attempt limit.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up once a retry would start more than `deadline` after the request's first
    /// attempt. The clock starts for each request when it is sent, not when the policy (or
    /// the layer holding it) was made. A deadline past a century is no deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A retry budget: at most `retry_percent` (0.0 to 1000.0) extra requests on top of the
    /// recent request rate, plus `min_per_sec` (below `i32::MAX`), measured over `ttl` (1 to
    /// 60 s).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for a value outside those ranges (tower's budget would
    /// panic on it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_throttle::{ConfigError, RetryPolicy};
    ///
    /// let policy = RetryPolicy::default().with_budget(Duration::from_secs(10), 5, 0.1)?;
    /// assert!(matches!(
    ///     RetryPolicy::default().with_budget(Duration::from_secs(10), u32::MAX, 0.2),
    ///     Err(ConfigError::OutOfRange { name: "min_per_sec", .. })
    /// ));
    /// # drop(policy);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn with_budget(
        mut self,
        ttl: Duration,
        min_per_sec: u32,
        retry_percent: f32,
    ) -> Result<Self, ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(ConfigError::OutOfRange {
                name: "budget ttl",
                value: ttl.as_secs_f64(),
                expected: "1 to 60 seconds",
            });
        }
        if !(0.0..=1000.0).contains(&retry_percent) {
            return Err(ConfigError::OutOfRange {
                name: "retry_percent",
                value: f64::from(retry_percent),
                expected: "0.0 to 1000.0",
            });
        }
        // tower's `TpsBudget::new` asserts this bound.
        if min_per_sec >= i32::MAX as u32 {
            return Err(ConfigError::OutOfRange {
                name: "min_per_sec",
                value: f64::from(min_per_sec),
                expected: "below 2147483647 (i32::MAX)",
            });
        }
        self.budget = Some(Arc::new(TpsBudget::new(ttl, min_per_sec, retry_percent)));
        Ok(self)
    }

    /// No retry budget: only attempts and the deadline bound retries.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The shared bucket to hold when a 429 carries `Retry-After`, so every caller of the API
    /// pauses, not only the one that was refused.
    pub fn with_bucket<B: Bucket>(mut self, bucket: B) -> Self {
        self.bucket = Some(Arc::new(bucket));
        self
    }

    /// A per-destination gate to hold as well: when the server names a wait (see
    /// [`with_bucket`](RetryPolicy::with_bucket)), the key of the refused request, computed
    /// with `key_fn`, is held in `bucket` until then, and every other key keeps flowing.
    /// Pass the bucket and key function of the
    /// [`KeyedRateLimitLayer`](crate::rate_limit::KeyedRateLimitLayer) below this layer
    /// (for instance [`ByAuthority`](crate::rate_limit::ByAuthority)), so a 429 from one host
    /// pauses that host only.
    ///
    /// The key function sees the request's method, URI, version, headers and extensions (as
    /// an `http::Request<()>`), so it must implement [`KeyFn`] for `http::Request<()>`: a key
    /// function generic over the body type, as `ByAuthority` is, serves both layers.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_throttle::rate_limit::{ByAuthority, KeyedRateLimitLayer};
    /// use tower_throttle::{RetryLayer, RetryPolicy};
    /// use tower_throttle::Quota;
    ///
    /// let gate = KeyedRateLimitLayer::per_authority(Quota::per_second(10)?);
    /// let policy = RetryPolicy::default().with_keyed_bucket(gate.bucket().clone(), ByAuthority);
    /// let _stack = ServiceBuilder::new().layer(RetryLayer::new(policy)).layer(gate);
    /// # Ok::<(), tower_throttle::ConfigError>(())
    /// ```
    pub fn with_keyed_bucket<K, F>(mut self, bucket: KeyedBucket<K>, key_fn: F) -> Self
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        F: KeyFn<http::Request<()>, Key = K> + Send + Sync + 'static,
    {
        self.keyed = Some(Arc::new(KeyedHold::new(bucket, key_fn)));
        self
    }

    /// Seeds the jitter, for reproducible tests. Each request still draws its own sequence.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self.seeds = Arc::new(AtomicU64::new(seed));
        self
    }

    /// Records every attempt's outcome and every retry into `stats` (this is where the
    /// 429 ratio of [`StatsSnapshot::health`](crate::metrics::StatsSnapshot::health) comes from).
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The backoff in use.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// How long to wait before the next attempt, and until when the server asked everyone
    /// to wait (a hold), or `None` to stop. `server_wait` is the wait a transient response
    /// named (a 503's `Retry-After`); a rate limit carries its own.
    ///
    /// Every reason to stop is checked before anything shared changes: a retry that will not
    /// happen draws nothing from the budget and sets no hold.
    fn next_delay(
        &mut self,
        outcome: Outcome,
        server_wait: Option<Duration>,
        now: Instant,
    ) -> Option<(Duration, Option<Instant>)> {
        let counted = self.attempt - self.quota_waits;
        if counted > self.backoff.max_retries() {
            return None;
        }
        let retry = counted - 1;
        let server_wait = match outcome {
            Outcome::Success | Outcome::Permanent => return None,
            Outcome::RateLimited { retry_after } => retry_after,
            Outcome::Transient => server_wait,
        }
        .map(|wait| wait.min(self.backoff.max_delay()));
        let delay = match server_wait {
            Some(wait) => self.spread_after(wait),
            None => self
                .backoff
                .next_delay(retry, self.prev_delay, &mut self.rng),
        };
        if let (Some(deadline), Some(started)) = (self.deadline, self.started) {
            if later(now, delay) > later(started, deadline) {
                tracing::debug!(attempt = self.attempt, ?delay, "retry deadline reached");
                return None;
            }
        }
        if outcome == Outcome::Transient {
            if let Some(budget) = &self.budget {
                if !budget.withdraw() {
                    tracing::debug!(attempt = self.attempt, "retry budget empty; not retrying");
                    return None;
                }
            }
        }
        let hold = server_wait
            .filter(|wait| !wait.is_zero())
            .map(|wait| later(now, wait));
        if let (Some(until), Some(bucket)) = (hold, &self.bucket) {
            bucket.hold_until(until);
        }
        self.prev_delay = Some(delay);
        Some((delay, hold))
    }

    /// A wait the server named, plus a little: the callers it refused then do not all return
    /// at the same instant.
    fn spread_after(&mut self, wait: Duration) -> Duration {
        let spread = (wait / 10).min(Duration::from_secs(1));
        wait.saturating_add(spread.mul_f64(self.rng.gen::<f64>()))
    }

    /// A spent quota (see [`Classify::quota_reset`]), back in `reset`. Unlike a short wait,
    /// the hold is set whether or not this request retries: the server refuses everything
    /// until then, so every request sent sooner would spend an attempt for nothing.
    fn quota_wait(
        &mut self,
        reset: Duration,
        status: u16,
        replayable: bool,
        now: Instant,
    ) -> (Step, Option<Instant>) {
        let reset = reset.min(MAX_QUOTA_WAIT);
        let until = later(now, reset);
        if let Some(bucket) = &self.bucket {
            bucket.hold_until(until);
        }
        if let (Some(deadline), Some(started)) = (self.deadline, self.started) {
            if until > later(started, deadline) {
                tracing::warn!(
                    ?reset,
                    "quota spent until after the retry deadline; giving up"
                );
                return (
                    Step::QuotaExhausted {
                        wait: reset,
                        status,
                    },
                    Some(until),
                );
            }
        }
        if !replayable {
            return (Step::NotReplayable, Some(until));
        }
        self.quota_waits += 1;
        let delay = self.spread_after(reset);
        if let Some(stats) = &self.stats {
            stats.record_retry(self.attempt + 1);
        }
        tracing::info!(?reset, "quota spent; holding every caller until it is back");
        (Step::Retry(delay), Some(until))
    }
}

/// The shortest wait treated as a spent quota rather than an ordinary rate limit (also by
/// the adaptive layer, which must not read a spent quota as a rate cut).
pub(crate) const MIN_QUOTA_WAIT: Duration = Duration::from_secs(1);

/// The longest a spent quota holds the bucket at a time (a daily allowance's longest wait);
/// a longer claim is probed again after it.
const MAX_QUOTA_WAIT: Duration = Duration::from_secs(86_400);

/// What one attempt came back as, read once by the classifier: shared by the tower `Policy`
/// and the reqwest middleware.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed {
    outcome: Outcome,
    /// A transient response's named wait (a 503's `Retry-After`).
    server_wait: Option<Duration>,
    /// A rate limit's spent quota, back in this long.
    quota_reset: Option<Duration>,
    /// The response's status; 0 for an error.
    status: u16,
}

impl Observed {
    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome
    }
}

/// What the policy decided after one attempt; shared by the tower `Policy` and the
/// reqwest middleware so both follow the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Return this outcome to the caller.
    Done,
    /// A retry was due, but the request cannot be sent again.
    NotReplayable,
    /// Try again after this delay.
    Retry(Duration),
    /// A quota is spent until after the deadline: end with
    /// [`ThrottleError::QuotaExhausted`].
    QuotaExhausted {
        /// Until the quota is back.
        wait: Duration,
        /// The refusing response's status.
        status: u16,
    },
}

impl<C> RetryPolicy<C> {
    /// Marks the start of a logical request (for the deadline); later calls keep the first.
    /// Call it on the per-request copy only.
    pub(crate) fn start(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// Attempts made so far by this (per-request) policy.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Reads a response: its outcome, a transient one's named wait, a rate limit's spent
    /// quota (`body` when it could be seen), and records it in the stats.
    pub(crate) fn observe_response(
        &self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: impl FnOnce() -> Option<bytes::Bytes>,
        now: SystemTime,
    ) -> Observed
    where
        C: Classify,
    {
        if let Some(stats) = &self.stats {
            stats.record_response(status);
        }
        let outcome = self.classifier.classify_response(status, headers, now);
        let (server_wait, quota_reset) = match outcome {
            Outcome::Transient => (self.classifier.transient_wait(status, headers, now), None),
            Outcome::RateLimited { .. } => {
                let body = body().filter(|b| b.len() <= MAX_BODY_INSPECTED);
                let reset = self
                    .classifier
                    .quota_reset(status, headers, body.as_deref(), now);
                (None, reset)
            }
            Outcome::Success | Outcome::Permanent => (None, None),
        };
        Observed {
            outcome,
            server_wait,
            quota_reset,
            status: status.as_u16(),
        }
    }

    /// Reads an error returned instead of a response, and records it in the stats.
    pub(crate) fn observe_error(&self, err: &(dyn std::error::Error + 'static)) -> Observed
    where
        C: Classify,
    {
        if let Some(stats) = &self.stats {
            stats.record_error();
        }
        Observed {
            outcome: self.classifier.classify_error(err),
            server_wait: None,
            quota_reset: None,
            status: 0,
        }
    }

    /// Whether a hold also needs the request's key (so the caller keeps its head).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn holds_keys(&self) -> bool {
        self.keyed.is_some()
    }

    /// Holds the refused request's key until `until`, when a keyed bucket is attached.
    pub(crate) fn hold_key(&self, until: Instant, head: impl FnOnce() -> http::Request<()>) {
        if let Some(keyed) = &self.keyed {
            keyed.hold(&head(), until);
        }
    }

    /// Records one attempt and decides what comes next, also returning the instant the shared
    /// bucket was held until (for the keyed hold, which needs the request: see
    /// [`hold_key`](Self::hold_key)). Holding and drawing from the budget happen here, and
    /// only when a retry will really be made, except for a spent quota (see `quota_wait`).
    pub(crate) fn decide(
        &mut self,
        observed: Observed,
        replayable: bool,
        now: Instant,
    ) -> (Step, Option<Instant>) {
        let Observed {
            outcome,
            server_wait,
            quota_reset,
            status,
        } = observed;
        self.attempt += 1;
        if self.attempt == 1 && outcome == Outcome::Success {
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
        }
        if !outcome.is_retryable() {
            return (Step::Done, None);
        }
        // A quota back within a second is a short window like any other: counted and capped,
        // so a classifier that answers zero cannot make retries free and endless.
        let quota_reset = quota_reset.filter(|reset| *reset >= MIN_QUOTA_WAIT);
        if let (Outcome::RateLimited { .. }, Some(reset)) = (outcome, quota_reset) {
            return self.quota_wait(reset, status, replayable, now);
        }
        if !replayable {
            return (Step::NotReplayable, None);
        }
        match self.next_delay(outcome, server_wait, now) {
            Some((delay, hold)) => {
                if let Some(stats) = &self.stats {
                    stats.record_retry(self.attempt + 1);
                }
                (Step::Retry(delay), hold)
            }
            None => (Step::Done, None),
        }
    }

    /// The error for a retry that was due but cannot be sent, naming what the last attempt
    /// came back as.
    pub(crate) fn not_replayable(&self, last: &dyn fmt::Display) -> ThrottleError {
        let reason = format!("{last} after attempt {}", self.attempt);
        tracing::warn!(%reason, "not retrying: request body cannot be replayed");
        ThrottleError::NotReplayable { reason }
    }

    pub(crate) fn log_retry(&self, delay: Duration, outcome: Outcome, uri: &dyn fmt::Display) {
        tracing::info!(
            attempt = self.attempt,
            max_attempts = self.backoff.max_retries() + 1,
            delay_ms = delay.as_millis() as u64,
            outcome = describe(outcome),
            uri = %crate::dead_letter::redact_query(
                &uri.to_string(),
                &crate::dead_letter::DEFAULT_QUERY_SECRETS,
                true
            ),
            "retrying request"
        );
    }
}

impl<C: Clone> Clone for RetryPolicy<C> {
    /// A fresh policy for one request: the configuration and the shared parts (budget,
    /// buckets, stats) are shared; attempts, deadline start and jitter are its own.
    fn clone(&self) -> Self {
        // Each clone serves one request and needs its own jitter draws: a shared sequence
        // would send every retry of a 429 burst at the same instant.
        let seed = self
            .seeds
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        RetryPolicy {
            classifier: self.classifier.clone(),
            backoff: self.backoff,
            deadline: self.deadline,
            budget: self.budget.clone(),
            bucket: self.bucket.clone(),
            keyed: self.keyed.clone(),
            seeds: self.seeds.clone(),
            stats: self.stats.clone(),
            rng: SmallRng::seed_from_u64(seed),
            attempt: 0,
            started: None,
            prev_delay: None,
            quota_waits: 0,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("classifier", &self.classifier)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .field("bucket", &self.bucket)
            .field("keyed", &self.keyed)
            .field("attempt", &self.attempt)
            .finish()
    }
}

fn describe(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::RateLimited { .. } => "rate limited (429)",
        Outcome::Transient => "transient failure",
        Outcome::Success => "success",
        Outcome::Permanent => "permanent failure",
    }
}

impl<C, B, R> Policy<http::Request<B>, http::Response<R>, BoxError> for RetryPolicy<C>
where
    C: Classify,
    B: ReplayBody,
    R: 'static,
{
    type Future = RetryDelay;

    fn retry(
        &mut self,
        req: &mut http::Request<B>,
        result: &mut Result<http::Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        let now = Instant::now();
        if let Some(start) = req.extensions().get::<RequestStart>() {
            self.start(start.0);
        }
        let observed = match result {
            Ok(res) => self.observe_response(
                res.status(),
                res.headers(),
                || seen_body(res),
                SystemTime::now(),
            ),
            Err(err) => self.observe_error(&**err),
        };
        let outcome = observed.outcome();
        // An answer lost after the request was written may hide an applied request: only an
        // idempotent one is sent again.
        let unknown = match result {
            Err(err) => crate::classify::outcome_unknown(&**err) && !Idempotent::of(req),
            Ok(_) => false,
        };
        let replayable = req.extensions().get::<NotCloned>().is_none() && !unknown;
        let (step, hold) = self.decide(observed, replayable, now);
        if let Some(cell) = req.extensions().get::<super::AttemptCell>() {
            cell.record(self.attempt);
        }
        if let Some(until) = hold {
            self.hold_key(until, || head_of(req));
        }
        match step {
            Step::Done => {
                if let Ok(res) = result {
                    res.extensions_mut().insert(Attempts(self.attempt));
                }
                None
            }
            Step::NotReplayable if unknown => {
                if let Err(err) = result {
                    let reason = format!("{err} after attempt {}", self.attempt);
                    tracing::warn!(%reason, uri = %req.uri(), "not retrying: outcome unknown and the request is not idempotent");
                    *result = Err(ThrottleError::OutcomeUnknown { reason }.into());
                }
                None
            }
            Step::NotReplayable => {
                let err = match result {
                    Ok(res) => self.not_replayable(&res.status()),
                    Err(err) => self.not_replayable(err),
                };
                *result = Err(err.into());
                None
            }
            Step::QuotaExhausted { wait, status } => {
                *result = Err(ThrottleError::QuotaExhausted { wait, status }.into());
                None
            }
            Step::Retry(delay) => {
                self.log_retry(delay, outcome, req.uri());
                Some(RetryDelay::new(later(now, delay)))
            }
        }
    }

    fn clone_request(&mut self, req: &http::Request<B>) -> Option<http::Request<B>> {
        // On the first attempt `self` is the layer's long-lived policy: nothing may be
        // stored on it. The start goes on the copy instead.
        let start = req
            .extensions()
            .get::<RequestStart>()
            .copied()
            .unwrap_or(RequestStart(Instant::now()));
        let body = match req.body().try_clone() {
            Some(body) => body,
            None => {
                // Keep a bodiless copy so `retry` runs and can say why it stops.
                let mut copy = http::Request::new(B::from_bytes(bytes::Bytes::new()));
                copy.extensions_mut().insert(NotCloned);
                copy.extensions_mut().insert(start);
                *copy.uri_mut() = req.uri().clone();
                *copy.method_mut() = req.method().clone();
                return Some(copy);
            }
        };
        let mut copy = http::Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        copy.extensions_mut().insert(start);
        Some(copy)
    }
}

/// The body the classifier may read: what [`InspectBody`](super::InspectBody) read below
/// (the one way a streaming body is seen), else a buffered body.
pub(crate) fn seen_body<R: 'static>(res: &http::Response<R>) -> Option<bytes::Bytes> {
    match res.extensions().get::<InspectedBody>() {
        Some(InspectedBody(bytes)) => Some(bytes.clone()),
        None => buffered_body(res.body()),
    }
}

/// A response body the policy can read without waiting or consuming it: the buffered types
/// (`Full<Bytes>`, which [`ThrottleBuilder::timeout`](crate::ThrottleBuilder::timeout)
/// answers with, `Bytes`, `String`, `Vec<u8>`). The policy is generic over the client's body
/// and cannot require more of it without refusing streaming clients, so it looks for these
/// by type; a streaming body is not read (the classifier still has the headers).
fn buffered_body<R: 'static>(body: &R) -> Option<bytes::Bytes> {
    let body = body as &dyn std::any::Any;
    if let Some(full) = body.downcast_ref::<http_body_util::Full<bytes::Bytes>>() {
        return full.to_bytes();
    }
    if let Some(bytes) = body.downcast_ref::<bytes::Bytes>() {
        return Some(bytes.clone());
    }
    // These two are copied, so only when small enough to be inspected at all.
    let small =
        |b: &[u8]| (b.len() <= MAX_BODY_INSPECTED).then(|| bytes::Bytes::copy_from_slice(b));
    if let Some(text) = body.downcast_ref::<String>() {
        return small(text.as_bytes());
    }
    body.downcast_ref::<Vec<u8>>().and_then(|v| small(v))
}

/// The request without its body, for a key function (only on a retry that holds).
fn head_of<B>(req: &http::Request<B>) -> http::Request<()> {
    let mut head = http::Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    *head.extensions_mut() = req.extensions().clone();
    head
}
