//! A deterministic simulation: a server with a hidden limit in tokio time, and a closed-loop
//! client that measures how well a controller finds it.
//!
//! Run it on a current-thread runtime with a paused clock (`#[tokio::test(start_paused =
//! true)]`, or `tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)`):
//! a 60 s run then takes milliseconds and gives the same numbers every time.
//!
//! ```
//! use std::time::Duration;
//! use tower_throttle::adaptive::sim::{self, HiddenLimit, Scenario};
//! use tower_throttle::Cubic;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = Scenario::new("37/s", HiddenLimit::sliding_window(37, Duration::from_secs(1))?)
//!     .with_duration(Duration::from_secs(20));
//! let report = sim::run(&scenario, Cubic::new(5.0, 0.5, 1000.0)?).await?;
//! assert!(report.throttled_pct < 5.0);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_service::Service;

use super::controller::RateController;
use super::AdaptiveLayer;
use crate::bucket::core;
use crate::bucket::{interval_for_rate, Bucket, Reservation, Reserve, Snapshot};
use crate::clock::{duration_nanos, later};
use crate::rate_limit::wait::{SlotWait, Woken};
use crate::server_limit::{Decision, Kind, ServerLimit, ServerLimiter};
use crate::ConfigError;

/// The limit the simulated server enforces and the client must discover: the mock server's
/// limiter, run in tokio time without sockets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiddenLimit(ServerLimit);

impl HiddenLimit {
    /// A token bucket: `rate` per second sustained, `burst` at once.
    pub fn token_bucket(rate: f64, burst: u32) -> Result<Self, ConfigError> {
        if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
            return Err(ConfigError::OutOfRange {
                name: "rate",
                value: rate,
                expected: "a finite rate in (0, 1e9] per second",
            });
        }
        ServerLimit::token_bucket(rate, burst).map(HiddenLimit)
    }

    /// A sliding window: at most `n` in any interval of length `period`.
    pub fn sliding_window(n: u32, period: Duration) -> Result<Self, ConfigError> {
        ServerLimit::sliding_window(n, period).map(HiddenLimit)
    }

    /// The sustained rate, requests per second.
    pub fn rate(&self) -> f64 {
        match self.0.kind {
            Kind::Bucket { rate_per_sec, .. } => rate_per_sec,
            Kind::Window { n, period_ns } => {
                f64::from(n) / Duration::from_nanos(period_ns).as_secs_f64()
            }
            // The constructors never build it.
            Kind::Unlimited => f64::INFINITY,
        }
    }

    /// The quota and whole-second window stated in the rate headers.
    fn policy(&self) -> (u64, u64) {
        match self.0.kind {
            Kind::Bucket { rate_per_sec, .. } => (rate_per_sec.floor().max(1.0) as u64, 1),
            Kind::Window { n, period_ns } => (
                u64::from(n),
                Duration::from_nanos(period_ns).as_secs_f64().ceil() as u64,
            ),
            Kind::Unlimited => (u64::MAX, 1),
        }
    }
}

impl fmt::Display for HiddenLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind {
            Kind::Bucket {
                rate_per_sec,
                burst,
                ..
            } => write!(f, "{rate_per_sec}/s burst {burst}"),
            Kind::Window { n, period_ns } => {
                write!(f, "{n} per {:?}", Duration::from_nanos(period_ns))
            }
            Kind::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// What the simulated server saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests received.
    pub received: u64,
    /// Answered 200.
    pub accepted: u64,
    /// Answered 429.
    pub throttled: u64,
    /// Answered 503 (outage windows).
    pub unavailable: u64,
}

/// Configures a [`SimServer`]. Defaults: 20 ms latency, `Retry-After` in whole seconds
/// (rounded up, as real servers send it), no rate headers, no outage.
#[derive(Debug, Clone)]
pub struct SimServerBuilder {
    limit: HiddenLimit,
    changes: Vec<(Duration, HiddenLimit)>,
    storms: Option<Storms>,
    outages: Vec<(Duration, Duration)>,
    latency: Duration,
    rate_headers: bool,
    retry_after: bool,
}

impl SimServerBuilder {
    /// From `at` (measured from the server's start) on, enforce `limit`; the limiter's state
    /// carries over when the shape stays the same.
    pub fn change_at(mut self, at: Duration, limit: HiddenLimit) -> Self {
        self.changes.push((at, limit));
        self.changes.sort_by_key(|(t, _)| *t);
        self
    }

    /// For the last `length` of every `every` (from the server's start), enforce `limit`
    /// instead: a periodic storm, such as a shared quota another tenant empties on a
    /// schedule. The limiter's state carries over when the shape stays the same.
    pub fn storms(mut self, every: Duration, length: Duration, limit: HiddenLimit) -> Self {
        self.storms = Some(Storms {
            every,
            length: length.min(every),
            limit,
        });
        self
    }

    /// Answers every request in `[from, to)` with `503`, consuming nothing.
    pub fn outage(mut self, from: Duration, to: Duration) -> Self {
        self.outages.push((from, to));
        self
    }

    /// Time between a request's decision and its response.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sends `RateLimit-Limit`, `-Remaining`, `-Reset` (whole seconds until full, rounded up)
    /// and `RateLimit-Policy: <q>;w=<secs>` on every 200 and 429.
    pub fn rate_headers(mut self, on: bool) -> Self {
        self.rate_headers = on;
        self
    }

    /// Whether 429s carry `Retry-After` (default `true`).
    pub fn retry_after(mut self, on: bool) -> Self {
        self.retry_after = on;
        self
    }

    /// The limit in force at `at`.
    pub fn limit_at(&self, at: Duration) -> HiddenLimit {
        if let Some(storm) = &self.storms {
            let every = storm.every.as_nanos().max(1);
            let phase = at.as_nanos() % every;
            if phase >= every - storm.length.as_nanos() {
                return storm.limit;
            }
        }
        self.changes
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or(self.limit, |(_, l)| *l)
    }

    /// Starts the server; its clock starts now.
    pub fn build(self) -> SimServer {
        SimServer {
            inner: Arc::new(Mutex::new(SimState {
                start: Instant::now(),
                limiter: ServerLimiter::new(self.limit.0),
                stats: SimStats::default(),
                accepted_at: Vec::new(),
                cfg: self,
            })),
        }
    }
}

/// A periodic change of limit; see [`SimServerBuilder::storms`].
#[derive(Debug, Clone, Copy)]
struct Storms {
    every: Duration,
    length: Duration,
    limit: HiddenLimit,
}

/// A tower service that enforces a [`HiddenLimit`] in tokio time and answers `200`, `429`
/// or `503`. Clones share one server.
#[derive(Clone)]
pub struct SimServer {
    inner: Arc<Mutex<SimState>>,
}

struct SimState {
    cfg: SimServerBuilder,
    start: Instant,
    limiter: ServerLimiter,
    stats: SimStats,
    accepted_at: Vec<Duration>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("SimServer")
            .field("config", &s.cfg)
            .field("stats", &s.stats)
            .finish()
    }
}

impl SimServer {
    /// A builder enforcing `limit` from the start.
    pub fn builder(limit: HiddenLimit) -> SimServerBuilder {
        SimServerBuilder {
            limit,
            changes: Vec::new(),
            storms: None,
            outages: Vec::new(),
            latency: Duration::from_millis(20),
            rate_headers: false,
            retry_after: true,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // Plain counters; a panicking test thread cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// When each accepted request arrived, from the server's start.
    pub fn accepted_at(&self) -> Vec<Duration> {
        self.lock().accepted_at.clone()
    }

    fn decide(&self) -> (Response<()>, Duration) {
        let mut s = self.lock();
        let at = Instant::now().saturating_duration_since(s.start);
        s.stats.received += 1;
        let latency = s.cfg.latency;
        let mut response = Response::new(());
        if s.cfg.outages.iter().any(|(a, b)| *a <= at && at < *b) {
            s.stats.unavailable += 1;
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return (response, latency);
        }
        let limit = s.cfg.limit_at(at);
        s.limiter.set_limit(limit.0);
        let decision = s.limiter.check(at);
        let (remaining, reset) = match decision {
            Decision::Accepted { remaining, reset } => {
                s.stats.accepted += 1;
                s.accepted_at.push(at);
                (remaining, reset)
            }
            Decision::Limited { retry_after, reset } => {
                s.stats.throttled += 1;
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                if s.cfg.retry_after {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(ceil_secs(retry_after)));
                }
                (0, reset)
            }
        };
        if s.cfg.rate_headers {
            let (q, w) = limit.policy();
            let h = response.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(q));
            h.insert("ratelimit-remaining", HeaderValue::from(remaining));
            h.insert("ratelimit-reset", HeaderValue::from(ceil_secs(reset)));
            if let Ok(v) = HeaderValue::from_str(&format!("{q};w={w}")) {
                h.insert("ratelimit-policy", v);
            }
        }
        (response, latency)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl<B> Service<Request<B>> for SimServer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let (response, latency) = self.decide();
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(response)
        })
    }
}

/// One simulated run: a server and a closed-loop client.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// A label for tables.
    pub name: String,
    /// The server.
    pub server: SimServerBuilder,
    /// Concurrent workers, each sending its next request as soon as the previous one is
    /// answered and the gate admits it (default 8).
    pub workers: usize,
    /// Virtual run time (default 60 s).
    pub duration: Duration,
    /// Goodput is measured from here to the end (default 10 s), so that it reports the rate
    /// held, not the search; the whole-run figure is reported too.
    pub warmup: Duration,
}

impl Scenario {
    /// A 60 s run against `limit` with the default server.
    pub fn new(name: impl Into<String>, limit: HiddenLimit) -> Self {
        Scenario {
            name: name.into(),
            server: SimServer::builder(limit),
            workers: 8,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
        }
    }

    /// Replaces the server configuration.
    pub fn with_server(mut self, f: impl FnOnce(SimServerBuilder) -> SimServerBuilder) -> Self {
        self.server = f(self.server);
        self
    }

    /// Sets the run time.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// Sets the number of workers.
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// The hidden rate at `at`.
    pub fn hidden_rate(&self, at: Duration) -> f64 {
        self.server.limit_at(at).rate()
    }
}

/// The numbers one run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Server counters.
    pub stats: SimStats,
    /// Accepted requests from the warmup to the end, as % of what the hidden limit allowed.
    pub goodput_pct: f64,
    /// The same over the whole run.
    pub goodput_all_pct: f64,
    /// Share of requests answered 429, %.
    pub throttled_pct: f64,
    /// First time a 1 s window's goodput reached 90% of the hidden rate.
    pub converge: Option<Duration>,
    /// First time from which every 1 s window (100 ms steps) stays at or above 90% of the
    /// hidden rate until the end.
    pub settled: Option<Duration>,
    /// For each drop of the hidden rate: how long after it the client's rate went under the
    /// new limit for good (`None`: never).
    pub under_after_drop: Vec<Option<Duration>>,
    /// Lowest and highest rate the controller set.
    pub rate_range: (f64, f64),
    /// `(time, rate)` every 100 ms.
    pub rate_samples: Vec<(Duration, f64)>,
}

const STEP: Duration = Duration::from_millis(100);

/// Runs `scenario` with `controller` driving an [`AdaptiveLayer`] over a [`SimGate`], and
/// measures it. Needs a paused tokio clock to be instant (it works, slowly, in real time too).
pub async fn run(
    scenario: &Scenario,
    controller: impl RateController + 'static,
) -> Result<Report, ConfigError> {
    let server = scenario.server.clone().build();
    let gate = SimGate::new();
    let layer = AdaptiveLayer::new(gate.clone(), controller)?;
    let start = Instant::now();
    let end = later(start, scenario.duration);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(server.clone());

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..scenario.workers {
        let mut svc = svc.clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            while Instant::now() < end {
                let (at, epoch) = gate.slot(Instant::now());
                gate.wait(at, epoch).await;
                if Instant::now() >= end {
                    break;
                }
                if !gate.start(epoch, at) {
                    // Cut or held while waiting: take a slot at the new pace.
                    continue;
                }
                let Ok(ready) = ServiceExt::<Request<()>>::ready(&mut svc).await else {
                    break;
                };
                let _ = ready.call(Request::new(())).await;
            }
        });
    }
    let sampler = {
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval_at(start, STEP);
            loop {
                let now = tick.tick().await;
                if now > end {
                    break samples;
                }
                samples.push((now - start, layer.rate()));
            }
        })
    };
    while tasks.join_next().await.is_some() {}
    let rate_samples = sampler.await.unwrap_or_default();
    Ok(report(scenario, &server, rate_samples))
}

/// The client's gate in the simulation: evenly paced slots (no burst), FIFO, re-slotted on a
/// rate change as the crate's bucket re-slots callers already waiting.
///
/// A hold, a cut, or a raise of more than an eighth (the bucket's own rule) starts a new
/// epoch: a caller whose slot was handed out under an older one takes a new slot, at the new
/// pace and after the hold. After a cut or a hold it finds out when it wakes, so a cut reaches
/// the backlog within one new interval; a raise wakes it at once ([`SimGate::reslots`]). A
/// smaller raise keeps the slots already handed out and paces the next ones at the new rate.
///
/// It implements [`Bucket`] so that an [`AdaptiveLayer`] drives it; the simulation's
/// workers take slots with its own methods.
#[derive(Clone, Debug)]
pub struct SimGate {
    inner: Arc<Mutex<GateState>>,
    reslots: Arc<Notify>,
}

#[derive(Debug)]
struct GateState {
    interval: Duration,
    /// The interval at the last re-slot.
    paced: Duration,
    /// The next free slot.
    next: Instant,
    hold: Option<Instant>,
    epoch: u64,
    /// The latest slot a caller started in.
    last_start: Option<Instant>,
}

impl SimGate {
    /// The gate before any controller drives it: no configured limit (a ceiling of 1e9/s), so
    /// the controller's own bounds apply.
    pub fn new() -> SimGate {
        SimGate {
            reslots: Arc::new(Notify::new()),
            inner: Arc::new(Mutex::new(GateState {
                interval: Duration::from_nanos(1),
                paced: Duration::from_nanos(1),
                next: Instant::now(),
                hold: None,
                epoch: 0,
                last_start: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Plain numbers, each update complete before the lock is released.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next slot for a caller arriving at `now`, and the epoch it was handed out in.
    pub fn slot(&self, now: Instant) -> (Instant, u64) {
        let mut s = self.lock();
        let mut at = s.next.max(now);
        if let Some(hold) = s.hold {
            at = at.max(hold);
        }
        s.next = later(at, s.interval);
        (at, s.epoch)
    }

    /// Sleeps until `at`, or until a raise voids the slot from `epoch` (then
    /// [`SimGate::start`] says to take a new one), as the crate's gate waits.
    pub async fn wait(&self, at: Instant, epoch: u64) {
        let mut wait = SlotWait::new(self, at);
        while std::future::poll_fn(|cx| wait.poll(cx)).await == Woken::Early {
            if self.lock().epoch != epoch {
                return;
            }
            wait.rearm(self);
        }
    }

    /// Starts the caller holding the slot `at` from `epoch`; `false` (take a new slot) when
    /// the epoch is stale.
    pub fn start(&self, epoch: u64, at: Instant) -> bool {
        let mut s = self.lock();
        if s.epoch != epoch {
            return false;
        }
        s.last_start = Some(s.last_start.map_or(at, |t| t.max(at)));
        true
    }
}

impl Default for SimGate {
    fn default() -> Self {
        SimGate::new()
    }
}

impl GateState {
    /// A new epoch: slots handed out so far are void and the schedule restarts one interval
    /// after the latest start (and after the hold).
    fn reslot(&mut self) {
        self.epoch += 1;
        let mut next = self
            .last_start
            .map_or(self.next, |t| later(t, self.interval));
        if let Some(hold) = self.hold {
            next = next.max(hold);
        }
        self.next = next;
    }
}

impl Bucket for SimGate {
    fn reserve_weighted(&self, now: Instant, cost: u32, _max_wait: Option<Duration>) -> Reserve {
        let (at, epoch) = self.slot(now);
        if cost > 1 {
            let mut st = self.lock();
            let extra = st.interval * (cost - 1);
            st.next = later(st.next, extra);
        }
        // The token carries the epoch the slot was handed out in (see `is_current`).
        Reserve::Ready(Ok(Reservation::new(at, epoch, 0).with_cost(cost.max(1))))
    }

    fn cancel(&self, _reservation: Reservation, _now: Instant) {}

    fn is_current(&self, reservation: &Reservation, _now: Instant) -> bool {
        let s = self.lock();
        s.epoch == reservation.token() && s.hold.is_none_or(|h| h <= reservation.at())
    }

    fn hold_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.hold.is_some_and(|h| h >= until) {
            return;
        }
        s.hold = Some(until);
        s.reslot();
    }

    fn held_until(&self, now: Instant) -> Option<Instant> {
        self.lock().hold.filter(|h| *h > now)
    }

    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        let interval = interval_for_rate(per_second)?;
        let mut s = self.lock();
        let (old, paced) = (duration_nanos(s.interval), duration_nanos(s.paced));
        s.interval = Duration::from_nanos(interval);
        if interval != old && core::reslots(paced, old, interval) {
            s.paced = s.interval;
            s.reslot();
            if interval < old {
                self.reslots.notify_waiters();
            }
        }
        Ok(())
    }

    fn reslots(&self) -> Option<&Arc<Notify>> {
        Some(&self.reslots)
    }

    fn rate(&self) -> f64 {
        1.0 / self.lock().interval.as_secs_f64()
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let s = self.lock();
        let next_free = s.hold.map_or(s.next, |h| h.max(s.next)).max(now);
        Snapshot {
            available: u64::from(next_free <= now),
            next_free,
            rate_per_second: 1.0 / s.interval.as_secs_f64(),
            held_until: s.hold.filter(|h| *h > now),
        }
    }
}

fn report(scenario: &Scenario, server: &SimServer, rate_samples: Vec<(Duration, f64)>) -> Report {
    let stats = server.stats();
    let accepted = server.accepted_at();
    let count = |a: Duration, b: Duration| {
        let lo = accepted.partition_point(|t| *t < a);
        let hi = accepted.partition_point(|t| *t < b);
        (hi - lo) as f64
    };
    // The hidden limit only changes at scheduled instants, so integrate it in 1 ms steps.
    let allowed = |a: Duration, b: Duration| {
        let mut total = 0.0;
        let mut t = a;
        let dt = Duration::from_millis(1);
        while t < b {
            total += scenario.hidden_rate(t) * dt.as_secs_f64();
            t += dt;
        }
        total
    };
    let end = scenario.duration;
    let pct = |a: Duration, b: Duration| 100.0 * count(a, b) / allowed(a, b).max(f64::MIN_POSITIVE);
    let mut windows = Vec::new();
    let mut s = Duration::ZERO;
    while s + Duration::from_secs(1) <= end {
        let e = s + Duration::from_secs(1);
        let need = 0.9 * scenario.hidden_rate(s).min(scenario.hidden_rate(e - STEP));
        windows.push((s, count(s, e) >= need));
        s += STEP;
    }
    let converge = windows.iter().find(|(_, ok)| *ok).map(|(s, _)| *s);
    let settled = match windows.iter().rposition(|(_, ok)| !ok) {
        None => Some(Duration::ZERO),
        Some(i) => windows.get(i + 1).map(|(s, _)| *s),
    };
    let mut under_after_drop = Vec::new();
    let mut previous = scenario.server.limit.rate();
    for (at, limit) in &scenario.server.changes {
        let new = limit.rate();
        if new < previous {
            let last_over = rate_samples
                .iter()
                .rposition(|(t, r)| *t >= *at && *r > new);
            let first_under = match last_over {
                None => rate_samples.iter().position(|(t, _)| *t >= *at),
                Some(i) => (i + 1 < rate_samples.len()).then_some(i + 1),
            };
            under_after_drop.push(first_under.map(|i| rate_samples[i].0.saturating_sub(*at)));
        }
        previous = new;
    }
    let rate_range = rate_samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, r)| {
            (lo.min(*r), hi.max(*r))
        });
    Report {
        name: scenario.name.clone(),
        stats,
        goodput_pct: pct(scenario.warmup.min(end), end),
        goodput_all_pct: pct(Duration::ZERO, end),
        throttled_pct: 100.0 * stats.throttled as f64 / (stats.received.max(1)) as f64,
        converge,
        settled,
        under_after_drop,
        rate_range,
        rate_samples,
    }
}

/// The four hidden limits of the table in the module docs: 10/s and 37/s sliding windows
/// (at most n in any second), 100/s token bucket with bursts of 5, and the same halving to
/// 50/s at 30 s. `rate_headers` makes the server send its rate-limit headers.
pub fn standard_scenarios(rate_headers: bool) -> Result<Vec<Scenario>, ConfigError> {
    let second = Duration::from_secs(1);
    let halved = HiddenLimit::token_bucket(50.0, 5)?;
    let s = vec![
        Scenario::new("10/s window", HiddenLimit::sliding_window(10, second)?),
        Scenario::new("37/s window", HiddenLimit::sliding_window(37, second)?),
        Scenario::new("100/s burst 5", HiddenLimit::token_bucket(100.0, 5)?),
        Scenario::new("100->50/s at 30s", HiddenLimit::token_bucket(100.0, 5)?)
            .with_server(|b| b.change_at(Duration::from_secs(30), halved)),
    ];
    Ok(s.into_iter()
        .map(|sc| sc.with_server(|b| b.rate_headers(rate_headers)))
        .collect())
}

/// The hidden leaky bucket users meet most: 37 requests/s with a burst of 5, `Retry-After` in
/// whole seconds, 20 closed-loop callers, 40 s (goodput from 10 s on, and over the whole run).
pub fn leaky_bucket() -> Result<Scenario, ConfigError> {
    Ok(Scenario::new(
        "37/s burst 5, 20 callers",
        HiddenLimit::token_bucket(37.0, 5)?,
    )
    .with_workers(20)
    .with_duration(Duration::from_secs(40)))
}

/// Periodic storms: a 180/s bucket (burst 10) that accepts only 10/s for the last 600 ms of
/// every 2 s (an average capacity of 129/s), 20 callers, 60 s. A cut does not make the next
/// storm any shorter, so the best a client can do is to keep its rate between storms.
pub fn periodic_storms() -> Result<Scenario, ConfigError> {
    let storm = HiddenLimit::token_bucket(10.0, 1)?;
    Ok(
        Scenario::new("storms 600 ms / 2 s", HiddenLimit::token_bucket(180.0, 10)?)
            .with_workers(20)
            .with_server(|b| b.storms(Duration::from_secs(2), Duration::from_millis(600), storm)),
    )
}

/// Formats a duration as seconds with one decimal, or `-` for `None`.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}
