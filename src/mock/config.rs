//! The builder: every knob of the mock server, checked before anything is bound.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::batch::BatchEndpoint;
use super::error::StartError;
use super::server::MockServer;
use crate::server_limit::ServerLimit;
use crate::ConfigError;

/// How a 429 says when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryAfterFormat {
    /// `Retry-After: <delta-seconds>`, the wait rounded *up* to whole seconds so a client that
    /// obeys it is not refused again (unless another client took the slot). The default.
    #[default]
    Seconds,
    /// `Retry-After: <HTTP-date>`, rounded up to the next whole second, together with a
    /// `Date` header (the server's wall clock, truncated), so a client can compute the wait
    /// from the pair without trusting its own clock.
    HttpDate,
    /// No `Retry-After` at all, like servers that leave clients to back off on their own.
    Omit,
}

/// Which rate-limit headers accompany 200 and 429 responses of limited routes.
///
/// All families carry the same three values: `Limit` (the limit's
/// [`capacity`](ServerLimit::capacity)), `Remaining` (requests that would still be accepted at
/// this instant) and `Reset` (whole seconds, rounded up, until the limit is back to full
/// capacity; a delta, not an epoch time). Unlimited routes never send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateHeaders {
    /// No rate headers (Customer.io style). The default.
    #[default]
    None,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft
    /// `ratelimit-headers`).
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// Both families.
    Both,
}

impl RateHeaders {
    pub(crate) fn ietf(self) -> bool {
        matches!(self, RateHeaders::Ietf | RateHeaders::Both)
    }

    pub(crate) fn x_rate_limit(self) -> bool {
        matches!(self, RateHeaders::XRateLimit | RateHeaders::Both)
    }
}

/// The seed used when [`MockServerBuilder::seed`] is not called: runs are reproducible by
/// default.
pub const DEFAULT_SEED: u64 = 0x5EED_0F7A_11ED;

/// Configures and starts a [`MockServer`]; get one from [`MockServer::builder`].
///
/// Defaults: bound to `127.0.0.1:0` (a free port), [`ServerLimit::unlimited`], no route
/// overrides, [`RetryAfterFormat::Seconds`], [`RateHeaders::None`], no injected failures,
/// no latency, seed [`DEFAULT_SEED`].
///
/// Setters never fail so they chain; the values are checked by
/// [`check`](MockServerBuilder::check) and again by [`start`](MockServerBuilder::start).
#[derive(Debug, Clone)]
pub struct MockServerBuilder {
    pub(crate) addr: SocketAddr,
    pub(crate) limit: ServerLimit,
    pub(crate) routes: Vec<(String, ServerLimit)>,
    pub(crate) retry_after: RetryAfterFormat,
    pub(crate) rate_headers: RateHeaders,
    pub(crate) fail_ratio: f64,
    pub(crate) seed: u64,
    pub(crate) latency: (Duration, Duration),
    pub(crate) batch_routes: Vec<(String, BatchEndpoint)>,
    pub(crate) item_fail_ratio: f64,
    pub(crate) item_reject_ratio: f64,
    pub(crate) limited_answer: Option<(bytes::Bytes, http::HeaderMap)>,
    pub(crate) unavailable_retry_after: Option<Duration>,
    pub(crate) item_rate_limit_ratio: f64,
    pub(crate) item_retry_after: Option<Duration>,
    pub(crate) unattributed_error_ratio: f64,
    pub(crate) errors_in_ok_ratio: f64,
    pub(crate) bad_input_marker: Option<String>,
    pub(crate) timeout_after_apply: (f64, Duration),
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        MockServerBuilder {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            limit: ServerLimit::unlimited(),
            routes: Vec::new(),
            retry_after: RetryAfterFormat::Seconds,
            rate_headers: RateHeaders::None,
            fail_ratio: 0.0,
            seed: DEFAULT_SEED,
            latency: (Duration::ZERO, Duration::ZERO),
            batch_routes: Vec::new(),
            item_fail_ratio: 0.0,
            item_reject_ratio: 0.0,
            limited_answer: None,
            unavailable_retry_after: None,
            item_rate_limit_ratio: 0.0,
            item_retry_after: None,
            unattributed_error_ratio: 0.0,
            errors_in_ok_ratio: 0.0,
            bad_input_marker: None,
            timeout_after_apply: (0.0, Duration::ZERO),
        }
    }
}

impl MockServerBuilder {
    /// The defaults listed on the type.
    pub fn new() -> Self {
        Self::default()
    }

    /// The limit shared by every route without its own override: all such paths draw from
    /// *one* limiter, as a per-workspace API limit does.
    pub fn limit(mut self, limit: ServerLimit) -> Self {
        self.limit = limit;
        self
    }

    /// Gives requests whose path is exactly `path` (no prefix matching, query ignored) their
    /// own limiter, independent of the default one. Calling it twice for one path keeps the
    /// last limit.
    pub fn route_limit(mut self, path: impl Into<String>, limit: ServerLimit) -> Self {
        let path = path.into();
        self.routes.retain(|(p, _)| *p != path);
        self.routes.push((path, limit));
        self
    }

    /// How 429 responses carry `Retry-After`.
    pub fn retry_after(mut self, format: RetryAfterFormat) -> Self {
        self.retry_after = format;
        self
    }

    /// Which rate-limit headers to send.
    pub fn rate_headers(mut self, headers: RateHeaders) -> Self {
        self.rate_headers = headers;
        self
    }

    /// Answers this share of requests (0.0 to 1.0) with `503 Service Unavailable`, drawn from
    /// the seeded RNG in arrival order.
    ///
    /// The draw happens *before* the limit is consulted, and a 503 consumes nothing: it
    /// stands for a server that failed before doing the work, so a client retrying it does
    /// not pay twice against the limit. A request that draws a failure gets 503 even if it
    /// would also have been rate limited.
    pub fn fail_ratio(mut self, ratio: f64) -> Self {
        self.fail_ratio = ratio;
        self
    }

    /// Seeds the RNGs of failure injection and random latency (two independent streams, so
    /// adding latency does not change which requests fail). The same seed and the same
    /// arrival order give the same outcomes.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Delays every response by `latency` (after the decision; the limit sees arrival time).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = (latency, latency);
        self
    }

    /// Delays every response by a uniformly random time in `min..=max`.
    pub fn latency_range(mut self, min: Duration, max: Duration) -> Self {
        self.latency = (min, max);
        self
    }

    /// Serves `path` (query ignored) as a batch endpoint of this shape and these limits.
    /// A segment written `{name}` matches any one segment, so
    /// `"/crm/v3/objects/{type}/batch/upsert"` serves every object type and
    /// `"/3.0/lists/{list_id}"` every list; each concrete path keeps its own records. An
    /// exact path wins over a pattern. A Mailchimp route at `P` also answers `GET P/{id}`
    /// (the batch's status) and `GET P/{id}/results`.
    ///
    /// It draws from the default limiter unless [`route_limit`](Self::route_limit) gives
    /// the same (concrete) path its own; either way one batch is one request against the
    /// limit.
    pub fn batch_route(mut self, path: impl Into<String>, endpoint: BatchEndpoint) -> Self {
        let path = path.into();
        self.batch_routes.retain(|(p, _)| *p != path);
        self.batch_routes.push((path, endpoint));
        self
    }

    /// Fails this share (0.0 to 1.0) of the items of accepted batches *transiently* (HubSpot
    /// `INTERNAL_ERROR`, Customer.io `internal`, a 503 in a JSON array), in a `207` answer,
    /// or a `500` operation result of a Mailchimp batch. Braze and Mailchimp list
    /// batch-subscribe report no transient item failure, so their drawn items are applied.
    /// Drawn per item from its own seeded stream, after the batch's limit decision.
    pub fn item_fail_ratio(mut self, ratio: f64) -> Self {
        self.item_fail_ratio = ratio;
        self
    }

    /// Rejects this share (0.0 to 1.0) of the items of accepted batches *permanently* (a
    /// validation error, 400), in the vendor's per-item form (a `207`, Braze's non-fatal
    /// `errors`, Mailchimp's `errors` or a `400` operation result). Drawn from the same stream as
    /// [`item_fail_ratio`](Self::item_fail_ratio); the item shares (this one, that one,
    /// [`item_rate_limit_ratio`](Self::item_rate_limit_ratio) and
    /// [`unattributed_error_ratio`](Self::unattributed_error_ratio)) must add up to at most 1.
    pub fn item_reject_ratio(mut self, ratio: f64) -> Self {
        self.item_reject_ratio = ratio;
        self
    }

    /// **Item-level 429s**: refuses this share (0.0 to 1.0, per item) of the items of accepted
    /// batches with a rate limit, in a `207`: HubSpot category `RATE_LIMITS` (traced by
    /// `objectWriteTraceId`), Customer.io reason `rate_limited`, `{"status": 429}` in a JSON
    /// array, a `429` operation result on Mailchimp. Refused items are not applied. Braze and
    /// Mailchimp list batch-subscribe have no such answer and apply the item instead.
    pub fn item_rate_limit_ratio(mut self, ratio: f64) -> Self {
        self.item_rate_limit_ratio = ratio;
        self
    }

    /// Sends `Retry-After` (whole seconds, rounded up) on every `207` that refuses an item
    /// with [`item_rate_limit_ratio`](Self::item_rate_limit_ratio).
    pub fn item_retry_after(mut self, wait: Duration) -> Self {
        self.item_retry_after = Some(wait);
        self
    }

    /// **Unattributed HubSpot errors**: fails this share (0.0 to 1.0, per input) of the
    /// inputs of HubSpot batches with an error that does not name them by
    /// `objectWriteTraceId`: alternately one whose `context` is `{"ids": [<the input's id>]}`
    /// (or no context, for an input without an `id`) and one with no context at all. Each
    /// counts in `numErrors`; the input is neither applied nor in `results`. Other shapes
    /// apply the item instead.
    pub fn unattributed_error_ratio(mut self, ratio: f64) -> Self {
        self.unattributed_error_ratio = ratio;
        self
    }

    /// **Customer.io 200 with errors**: answers this share (0.0 to 1.0, per batch) of the
    /// Customer.io batches that have failed items `200 OK` with the same `errors` array
    /// instead of `207`. Batches without failed items are unaffected (always `200 {}`).
    pub fn errors_in_ok_ratio(mut self, ratio: f64) -> Self {
        self.errors_in_ok_ratio = ratio;
        self
    }

    /// **A whole-batch 400 from one bad input**: a batch any of whose inputs has a string
    /// value containing `marker` (say `"invalid"`, in `invalid-7@example.com`) is refused as
    /// a whole with the vendor's `400`, naming the bad value in its text but not the input by
    /// index or trace id: HubSpot `{"status":"error","category":"VALIDATION_ERROR",
    /// "message":"Property values were not valid: [...invalid-7@example.com...]"}`,
    /// Customer.io `{"errors":[{"reason":"invalid","field":..,"message":..}]}` (no
    /// `batch_index`), Braze `{"message":"'email' is not valid: ..."}`, Mailchimp's problem
    /// document (`"title":"Invalid Resource"`). Nothing of the batch is applied; like the
    /// other `400`s it is answered before the limit and consumes nothing. A batch without a
    /// marked input is served normally, so a client that bisects converges on the bad one.
    pub fn bad_input_marker(mut self, marker: impl Into<String>) -> Self {
        self.bad_input_marker = Some(marker.into());
        self
    }

    /// **A timeout after applying**: for this share (0.0 to 1.0, per accepted batch) of
    /// batches, applies the batch (records stored, items counted) and then keeps the
    /// connection silent for `silence` before answering; give a `silence` longer than the
    /// client's timeout so the client sees a timeout for a batch the server did apply.
    /// Shutting the server down ends the silence.
    pub fn timeout_after_apply(mut self, ratio: f64, silence: Duration) -> Self {
        self.timeout_after_apply = (ratio, silence);
        self
    }

    /// Answers 429s with `body` instead of the default JSON, and adds `headers` to them
    /// (replacing any of the same name, `Date` included): a vendor's error shape, such as
    /// HubSpot's `{"policyName":"DAILY",...}`. `Retry-After` and the rate headers are sent as
    /// configured unless `headers` replaces them.
    ///
    /// ```
    /// use tower_throttle::mock::MockServer;
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-hubspot-ratelimit-daily-remaining", "0".parse().unwrap());
    /// let builder = MockServer::builder()
    ///     .limited_answer(r#"{"status":"error","policyName":"DAILY"}"#, headers);
    /// # let _ = builder;
    /// ```
    pub fn limited_answer(
        mut self,
        body: impl Into<bytes::Bytes>,
        headers: http::HeaderMap,
    ) -> Self {
        self.limited_answer = Some((body.into(), headers));
        self
    }

    /// Sends `Retry-After` (whole seconds, rounded up) with the injected 503s of
    /// [`fail_ratio`](Self::fail_ratio), as RFC 9110 allows: a server in maintenance saying
    /// when it can take requests again.
    pub fn unavailable_retry_after(mut self, wait: Duration) -> Self {
        self.unavailable_retry_after = Some(wait);
        self
    }

    /// Binds to this address instead of `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds to `127.0.0.1:port` (0 picks a free port).
    pub fn port(mut self, port: u16) -> Self {
        self.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self
    }

    pub(crate) fn item_ratio_sum(&self) -> f64 {
        self.item_fail_ratio
            + self.item_reject_ratio
            + self.item_rate_limit_ratio
            + self.unattributed_error_ratio
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for a ratio outside `0.0..=1.0` (or NaN), or item
    /// ratios that add up to more than 1,
    /// [`ConfigError::MinAboveMax`] for a latency range whose minimum is above its maximum,
    /// [`ConfigError::Invalid`] for a route that does not start with `/`.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.fail_ratio) {
            return Err(ConfigError::OutOfRange {
                name: "fail_ratio",
                value: self.fail_ratio,
                expected: "a number from 0.0 to 1.0",
            });
        }
        for (name, ratio) in [
            ("item_fail_ratio", self.item_fail_ratio),
            ("item_reject_ratio", self.item_reject_ratio),
            ("item_rate_limit_ratio", self.item_rate_limit_ratio),
            ("unattributed_error_ratio", self.unattributed_error_ratio),
            ("errors_in_ok_ratio", self.errors_in_ok_ratio),
            ("timeout_after_apply", self.timeout_after_apply.0),
            ("the item ratios together", self.item_ratio_sum()),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ConfigError::OutOfRange {
                    name,
                    value: ratio,
                    expected: "a number from 0.0 to 1.0",
                });
            }
        }
        let (min, max) = self.latency;
        if min > max {
            return Err(ConfigError::MinAboveMax {
                name: "latency",
                min: min.as_secs_f64(),
                max: max.as_secs_f64(),
            });
        }
        let paths = self.routes.iter().map(|(p, _)| p);
        if let Some(path) = paths
            .chain(self.batch_routes.iter().map(|(p, _)| p))
            .find(|p| !p.starts_with('/'))
        {
            return Err(ConfigError::Invalid(format!(
                "route {path:?} must be an absolute path starting with '/'"
            )));
        }
        if self.bad_input_marker.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "bad_input_marker must not be empty (it would match every batch)".into(),
            ));
        }
        Ok(())
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// [`StartError::Config`] with the [`ConfigError`] from
    /// [`check`](MockServerBuilder::check), or [`StartError::Bind`] naming the address that
    /// could not be bound and why (converts into an `io::Error` for `?` in an `io::Result`).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<MockServer, StartError> {
        self.check()?;
        MockServer::start(self).await
    }
}
