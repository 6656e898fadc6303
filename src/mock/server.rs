//! The hyper accept loop, the request handler and the handle tests hold.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, DATE, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answer;
use super::batch::{hubspot_action, BatchEndpoint, BatchShape, Draw, ItemVerdict, Parsed};
use super::config::{MockServerBuilder, RateHeaders, RetryAfterFormat};
use super::error::StartError;
use super::mailchimp::Jobs;
use super::records::{Applied, RecordCounts, Records};
use super::stats::{max_in_any_window, MockStats, MAX_RECORDED};
use crate::server_limit::{Decision, ServerLimit, ServerLimiter};

/// A running mock API server; see the [module docs](super) for an example.
///
/// Dropping it shuts the server down in the background (no new connections; in-flight
/// requests finish); [`shutdown`](MockServer::shutdown) does the same and waits for it.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// Limit group 0 is the default limiter; route overrides get 1, 2, ... in creation order.
type Group = u32;
const DEFAULT_GROUP: Group = 0;

#[derive(Debug)]
struct Shared {
    // tokio's clock, so the limits and the latency sleeps run on the same time source.
    start: Instant,
    retry_after: RetryAfterFormat,
    rate_headers: RateHeaders,
    fail_ratio: f64,
    latency: (Duration, Duration),
    received: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    invalid: AtomicU64,
    addr: SocketAddr,
    batch_routes: HashMap<String, BatchEndpoint>,
    // Routes with `{name}` segments, tried in order after the exact ones.
    batch_patterns: Vec<(Vec<String>, BatchEndpoint)>,
    item_fail_ratio: f64,
    item_reject_ratio: f64,
    item_rate_limit_ratio: f64,
    item_retry_after: Option<Duration>,
    unattributed_error_ratio: f64,
    errors_in_ok_ratio: f64,
    bad_input_marker: Option<String>,
    timeout_after_apply: (f64, Duration),
    limited_answer: Option<(Bytes, HeaderMap)>,
    unavailable_retry_after: Option<Duration>,
    bad_input_batches: AtomicU64,
    answers_withheld: AtomicU64,
    pending_refused: AtomicU64,
    // Woken whenever a request ends or an answer is withheld, for `wait_for`.
    changed: Notify,
    // Ends withheld answers' silence at shutdown, so a graceful shutdown does not wait it out.
    closing: CancellationToken,
    // One lock for decisions and records: the critical section is short and never awaits,
    // and deciding and recording under the same lock keeps accept times in order.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    default: ServerLimiter,
    routes: HashMap<String, (Group, ServerLimiter)>,
    next_group: Group,
    fail_rng: SmallRng,
    latency_rng: SmallRng,
    item_rng: SmallRng,
    // Per-batch draws (errors in a 200, withheld answers) from their own stream, so turning
    // them on does not move any item's verdict.
    batch_rng: SmallRng,
    items: ItemCounts,
    records: HashMap<String, Records>,
    jobs: HashMap<String, Jobs>,
    next_object_id: u64,
    unattributed_seen: u64,
    accepted_times: Vec<(Duration, Group)>,
    ids: HashSet<String>,
    duplicate_ids: u64,
    records_dropped: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct ItemCounts {
    received: u64,
    accepted: u64,
    failed: u64,
    rejected: u64,
    rate_limited: u64,
    unattributed: u64,
    refused_existing: u64,
}

impl State {
    /// Records an accepted request's id, counting a repeat as a duplicate.
    fn record_id(&mut self, id: String) {
        if self.ids.contains(&id) {
            self.duplicate_ids += 1;
        } else if self.ids.len() < MAX_RECORDED {
            self.ids.insert(id);
        } else {
            self.records_dropped += 1;
        }
    }

    fn group_of(&self, path: &str) -> Group {
        self.routes.get(path).map_or(DEFAULT_GROUP, |(g, _)| *g)
    }

    fn set_route(&mut self, path: String, limit: ServerLimit) {
        let limiter = ServerLimiter::new(limit);
        if let Some(route) = self.routes.get_mut(&path) {
            route.1 = limiter;
        } else {
            self.next_group += 1;
            self.routes.insert(path, (self.next_group, limiter));
        }
    }
}

enum Outcome {
    Accepted {
        capacity: Option<u64>,
        remaining: u64,
        reset: Duration,
        seq: u64,
    },
    Limited {
        capacity: Option<u64>,
        retry_after: Duration,
        reset: Duration,
    },
    Failed,
}

impl MockServer {
    /// A builder with the defaults listed on [`MockServerBuilder`].
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::new()
    }

    pub(crate) async fn start(cfg: MockServerBuilder) -> Result<MockServer, StartError> {
        let asked = cfg.addr;
        let bind_error = |source| StartError::Bind {
            addr: asked,
            source,
        };
        let listener = TcpListener::bind(cfg.addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let mut state = State {
            default: ServerLimiter::new(cfg.limit),
            routes: HashMap::new(),
            next_group: DEFAULT_GROUP,
            fail_rng: SmallRng::seed_from_u64(cfg.seed),
            // A separate stream so that turning latency on does not change which requests
            // fail for a given seed.
            latency_rng: SmallRng::seed_from_u64(cfg.seed ^ 0x9E37_79B9_7F4A_7C15),
            // And another for items, so enabling batch routes does not move the 503s.
            item_rng: SmallRng::seed_from_u64(cfg.seed ^ 0xB47C_4ED1_7E45_0001),
            batch_rng: SmallRng::seed_from_u64(cfg.seed ^ 0x0BA7_C4ED_5EED_0002),
            items: ItemCounts::default(),
            records: HashMap::new(),
            jobs: HashMap::new(),
            next_object_id: 1_000,
            unattributed_seen: 0,
            accepted_times: Vec::new(),
            ids: HashSet::new(),
            duplicate_ids: 0,
            records_dropped: 0,
        };
        for (path, limit) in cfg.routes {
            state.set_route(path, limit);
        }
        let shared = Arc::new(Shared {
            start: Instant::now(),
            retry_after: cfg.retry_after,
            rate_headers: cfg.rate_headers,
            fail_ratio: cfg.fail_ratio,
            latency: cfg.latency,
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            addr,
            batch_patterns: cfg
                .batch_routes
                .iter()
                .filter(|(p, _)| p.contains('{'))
                .map(|(p, e)| (p.split('/').map(str::to_owned).collect(), *e))
                .collect(),
            batch_routes: cfg
                .batch_routes
                .into_iter()
                .filter(|(p, _)| !p.contains('{'))
                .collect(),
            item_fail_ratio: cfg.item_fail_ratio,
            item_reject_ratio: cfg.item_reject_ratio,
            item_rate_limit_ratio: cfg.item_rate_limit_ratio,
            item_retry_after: cfg.item_retry_after,
            unattributed_error_ratio: cfg.unattributed_error_ratio,
            errors_in_ok_ratio: cfg.errors_in_ok_ratio,
            bad_input_marker: cfg.bad_input_marker,
            timeout_after_apply: cfg.timeout_after_apply,
            limited_answer: cfg.limited_answer,
            unavailable_retry_after: cfg.unavailable_retry_after,
            bad_input_batches: AtomicU64::new(0),
            answers_withheld: AtomicU64::new(0),
            pending_refused: AtomicU64::new(0),
            changed: Notify::new(),
            closing: CancellationToken::new(),
            state: Mutex::new(state),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx, done_tx));
        tracing::debug!(%addr, "mock server listening");
        Ok(MockServer {
            addr,
            shared,
            shutdown: shutdown_tx,
            done: done_rx,
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`; a missing leading `/` is added.
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.addr)
    }

    /// [`url`](MockServer::url) as an [`http::Uri`].
    ///
    /// # Panics
    /// If `path` contains characters not allowed in a URI.
    pub fn uri(&self, path: &str) -> http::Uri {
        self.url(path)
            .parse()
            .expect("path must be a valid URI path")
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        let s = &self.shared;
        let state = self.shared.lock();
        MockStats {
            received: s.received.load(Ordering::Acquire),
            accepted: s.accepted.load(Ordering::Acquire),
            rate_limited: s.rate_limited.load(Ordering::Acquire),
            failed: s.failed.load(Ordering::Acquire),
            in_flight: s.in_flight.load(Ordering::Acquire),
            max_in_flight: s.max_in_flight.load(Ordering::Acquire),
            distinct_ids: state.ids.len() as u64,
            duplicate_ids: state.duplicate_ids,
            records_dropped: state.records_dropped,
            invalid: s.invalid.load(Ordering::Acquire),
            items_received: state.items.received,
            items_accepted: state.items.accepted,
            items_failed: state.items.failed,
            items_rejected: state.items.rejected,
            items_rate_limited: state.items.rate_limited,
            items_unattributed: state.items.unattributed,
            items_refused_existing: state.items.refused_existing,
            bad_input_batches: s.bad_input_batches.load(Ordering::Acquire),
            answers_withheld: s.answers_withheld.load(Ordering::Acquire),
            pending_refused: s.pending_refused.load(Ordering::Acquire),
            records: state
                .records
                .values()
                .fold(RecordCounts::default(), |mut sum, r| {
                    sum += r.counts();
                    sum
                }),
        }
    }

    /// The record counts of the batch route serving exactly `path` (a concrete path, such
    /// as `/crm/v3/objects/contacts/batch/create`, even when the route was given as a
    /// pattern); all zero for a path that stored nothing.
    pub fn records_on(&self, path: &str) -> RecordCounts {
        self.shared
            .lock()
            .records
            .get(path)
            .map(Records::counts)
            .unwrap_or_default()
    }

    /// Every identity stored by the batch route serving exactly `path`, with how many times
    /// it was written. Identities read `property=value` for HubSpot upserts and updates
    /// (`email=a@example.com`, `hs_object_id=17`), `email=<lowercase>` for HubSpot creates,
    /// `id=..` / `email=..` / `cio_id=..` for Customer.io, `external_id=u1` for Braze
    /// attributes, the lowercase email for Mailchimp lists, the operation's path for
    /// Mailchimp `PUT`/`PATCH` operations, `id=..` for JSON arrays; items without a unique
    /// key are stored under their JSON text.
    pub fn record_writes(&self, path: &str) -> HashMap<String, u32> {
        self.shared
            .lock()
            .records
            .get(path)
            .map(Records::writes)
            .unwrap_or_default()
    }

    /// Waits until `done` holds for the counters, checking after every request the server
    /// finishes (and every answer it starts withholding); returns the stats that satisfied
    /// it. Lets a test wait for the server's side of an exchange without sleeping.
    pub async fn wait_for(&self, mut done: impl FnMut(&MockStats) -> bool) -> MockStats {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change between the check and the await is
            // not missed.
            notified.as_mut().enable();
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            notified.await;
        }
    }

    /// When each accepted request was decided, as offsets from the server's start, in order
    /// (at most [`MAX_RECORDED`]).
    pub fn accepted_times(&self) -> Vec<Duration> {
        self.shared
            .lock()
            .accepted_times
            .iter()
            .map(|&(t, _)| t)
            .collect()
    }

    /// Like [`accepted_times`](MockServer::accepted_times), restricted to the requests that
    /// drew from the same limiter as `path`: the route's own if it has an override, otherwise
    /// every request to any path without an override.
    pub fn accepted_times_on(&self, path: &str) -> Vec<Duration> {
        let state = self.shared.lock();
        let group = state.group_of(path);
        state
            .accepted_times
            .iter()
            .filter(|&&(_, g)| g == group)
            .map(|&(t, _)| t)
            .collect()
    }

    /// The most requests accepted (across all routes) in any half-open interval of length
    /// `window`; see [`max_in_any_window`].
    pub fn max_accepted_in_any_window(&self, window: Duration) -> usize {
        max_in_any_window(&self.accepted_times(), window)
    }

    /// The distinct `x-request-id` values of accepted requests (at most [`MAX_RECORDED`]).
    pub fn accepted_ids(&self) -> HashSet<String> {
        self.shared.lock().ids.clone()
    }

    /// The limit currently shared by routes without an override.
    pub fn limit(&self) -> ServerLimit {
        *self.shared.lock().default.limit()
    }

    /// Replaces the default limit while running (a hidden limit that changes mid-run). The
    /// new limiter starts with full capacity; requests already decided are not revisited.
    pub fn set_limit(&self, limit: ServerLimit) {
        self.shared.lock().default = ServerLimiter::new(limit);
    }

    /// Adds or replaces the override for `path` while running; it starts with full capacity.
    ///
    /// # Panics
    /// If `path` does not start with `/` (it could never match).
    pub fn set_route_limit(&self, path: &str, limit: ServerLimit) {
        assert!(path.starts_with('/'), "route {path:?} must start with '/'");
        self.shared.lock().set_route(path.to_owned(), limit);
    }

    /// Zeroes the counters and forgets recorded times and ids. Limiter state is kept (a
    /// reset does not hand out a fresh burst), and so are the batch routes' stored records
    /// and Mailchimp batches (the vendor's data does not vanish); times stay measured from
    /// the start.
    pub fn reset_stats(&self) {
        let s = &self.shared;
        let mut state = s.lock();
        state.items = ItemCounts::default();
        for counter in [
            &s.received,
            &s.accepted,
            &s.rate_limited,
            &s.failed,
            &s.invalid,
            &s.bad_input_batches,
            &s.answers_withheld,
            &s.pending_refused,
        ] {
            counter.store(0, Ordering::Release);
        }
        s.max_in_flight
            .store(s.in_flight.load(Ordering::Acquire), Ordering::Release);
        state.accepted_times.clear();
        state.ids.clear();
        state.duplicate_ids = 0;
        state.records_dropped = 0;
    }

    /// Stops accepting connections, lets in-flight requests finish (idle keep-alive
    /// connections are closed), and returns when every connection is closed. Calling it again
    /// returns at once.
    pub async fn shutdown(&self) {
        self.shared.closing.cancel();
        self.shutdown.send_replace(true);
        let mut done = self.done.clone();
        // Err means the accept loop is gone, which is what we are waiting for anyway.
        let _ = done.wait_for(|d| *d).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shared.closing.cancel();
        self.shutdown.send_replace(true);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that
        // matters for a test server; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decide(&self, path: &str, request_id: Option<String>) -> (Outcome, Duration) {
        let mut state = self.lock();
        let latency = match self.latency {
            (min, max) if min == max => min,
            (min, max) => state.latency_rng.gen_range(min..=max),
        };
        if self.fail_ratio > 0.0 && state.fail_rng.gen::<f64>() < self.fail_ratio {
            self.failed.fetch_add(1, Ordering::AcqRel);
            return (Outcome::Failed, latency);
        }
        let now = self.start.elapsed();
        let state = &mut *state;
        let (group, limiter) = match state.routes.get_mut(path) {
            Some((group, limiter)) => (*group, limiter),
            None => (DEFAULT_GROUP, &mut state.default),
        };
        let capacity = limiter.limit().capacity();
        let outcome = match limiter.check(now) {
            Decision::Limited { retry_after, reset } => {
                self.rate_limited.fetch_add(1, Ordering::AcqRel);
                Outcome::Limited {
                    capacity,
                    retry_after,
                    reset,
                }
            }
            Decision::Accepted { remaining, reset } => {
                if state.accepted_times.len() < MAX_RECORDED {
                    state.accepted_times.push((now, group));
                } else {
                    state.records_dropped += 1;
                }
                if let Some(id) = request_id {
                    state.record_id(id);
                }
                Outcome::Accepted {
                    capacity,
                    remaining,
                    reset,
                    // Counted under the lock, so `seq` numbers accepts in decision order and a
                    // snapshot never sees an accept time without its count.
                    seq: self.accepted.fetch_add(1, Ordering::AcqRel) + 1,
                }
            }
        };
        (outcome, latency)
    }
}

impl Shared {
    /// The batch route serving `path`: the exact one, else the first pattern that matches.
    fn batch_endpoint(&self, path: &str) -> Option<&BatchEndpoint> {
        if let Some(endpoint) = self.batch_routes.get(path) {
            return Some(endpoint);
        }
        let segments: Vec<&str> = path.split('/').collect();
        self.batch_patterns
            .iter()
            .find(|(pattern, _)| {
                pattern.len() == segments.len()
                    && pattern.iter().zip(&segments).all(|(p, s)| {
                        p == s || (p.starts_with('{') && p.ends_with('}') && !s.is_empty())
                    })
            })
            .map(|(_, endpoint)| endpoint)
    }

    /// `(route, id, results)` when `path` is `{route}/{id}` or `{route}/{id}/results` of a
    /// Mailchimp batch route.
    fn mailchimp_job<'p>(&self, path: &'p str) -> Option<(&'p str, &'p str, bool)> {
        let (rest, results) = match path.strip_suffix("/results") {
            Some(rest) => (rest, true),
            None => (path, false),
        };
        let (route, id) = rest.rsplit_once('/')?;
        let endpoint = self.batch_routes.get(route)?;
        (endpoint.shape() == BatchShape::Mailchimp && !id.is_empty())
            .then_some((route, id, results))
    }

    /// Holds one of the route's pending places for a batch about to be decided; false when
    /// all are taken.
    fn reserve_pending(&self, route: &str, max_pending: usize) -> bool {
        self.lock()
            .jobs
            .entry(route.to_owned())
            .or_default()
            .reserve(max_pending)
    }

    fn release_pending(&self, route: &str) {
        if let Some(jobs) = self.lock().jobs.get_mut(route) {
            jobs.release();
        }
    }

    /// Decides each item of an accepted batch, applies the written ones to the route's
    /// records, and builds the vendor's answer.
    fn answer_batch(
        &self,
        path: &str,
        endpoint: &BatchEndpoint,
        parsed: &Parsed,
        seq: u64,
    ) -> BatchAnswer {
        let mut state = self.lock();
        let state = &mut *state;
        // In this order, so a seed gives the same failures and rejections as before the
        // later kinds existed.
        let shares = [
            (Draw::Fail, self.item_fail_ratio),
            (Draw::Reject, self.item_reject_ratio),
            (Draw::RateLimit, self.item_rate_limit_ratio),
            (Draw::Unattributed, self.unattributed_error_ratio),
        ];
        let drawing = shares.iter().any(|(_, share)| *share > 0.0);
        let mut verdicts = Vec::with_capacity(parsed.items.len());
        for (at, item) in parsed.items.iter().enumerate() {
            state.items.received += 1;
            let mut draw = Draw::Apply;
            if drawing {
                let roll = state.item_rng.gen::<f64>();
                let mut edge = 0.0;
                for (kind, share) in shares {
                    edge += share;
                    if roll < edge {
                        draw = kind;
                        break;
                    }
                }
            }
            if !endpoint.speaks(draw) {
                draw = Draw::Apply;
            }
            let verdict = match draw {
                Draw::Apply => {
                    let write = endpoint.write_of(path, item, parsed, at);
                    let records = state.records.entry(path.to_owned()).or_default();
                    match records.apply(write, &mut state.next_object_id) {
                        Applied::Stored { object_id, new } => ItemVerdict::Ok { object_id, new },
                        Applied::Read => ItemVerdict::Ok {
                            object_id: 0,
                            new: false,
                        },
                        Applied::Exists { object_id } => ItemVerdict::Exists { object_id },
                    }
                }
                Draw::Fail => ItemVerdict::Failed,
                Draw::Reject => ItemVerdict::Rejected,
                Draw::RateLimit => ItemVerdict::RateLimited,
                Draw::Unattributed => {
                    state.unattributed_seen += 1;
                    ItemVerdict::Unattributed {
                        with_ids: state.unattributed_seen % 2 == 1,
                    }
                }
            };
            let counter = match verdict {
                ItemVerdict::Ok { .. } => {
                    if let Some(id) = endpoint.record_id(item) {
                        state.record_id(id);
                    }
                    &mut state.items.accepted
                }
                ItemVerdict::Failed => &mut state.items.failed,
                ItemVerdict::Rejected => &mut state.items.rejected,
                ItemVerdict::RateLimited => &mut state.items.rate_limited,
                ItemVerdict::Unattributed { .. } => &mut state.items.unattributed,
                ItemVerdict::Exists { .. } => &mut state.items.refused_existing,
            };
            *counter += 1;
            verdicts.push(verdict);
        }
        let any_failed = verdicts.iter().any(|v| !v.is_ok());
        let (status, body) = match endpoint.shape() {
            BatchShape::HubSpot => answer::hubspot(&parsed.items, &verdicts, hubspot_action(path)),
            BatchShape::CustomerIo => {
                let in_ok = any_failed
                    && self.errors_in_ok_ratio > 0.0
                    && state.batch_rng.gen::<f64>() < self.errors_in_ok_ratio;
                answer::customerio(&verdicts, in_ok)
            }
            BatchShape::JsonArray => answer::json_array(&verdicts),
            BatchShape::Braze => answer::braze(parsed, &verdicts),
            BatchShape::MailchimpList => {
                let list_id = path.rsplit('/').next().unwrap_or_default();
                answer::mailchimp_list(&parsed.items, &verdicts, list_id)
            }
            BatchShape::Mailchimp => {
                let results = parsed
                    .items
                    .iter()
                    .zip(&verdicts)
                    .map(|(item, verdict)| answer::mailchimp_result(item, verdict))
                    .collect();
                let jobs = state.jobs.entry(path.to_owned()).or_default();
                (StatusCode::OK, jobs.submit(format!("{seq:010x}"), results))
            }
        };
        // A Mailchimp submission is answered before its operations are reported, so its
        // 200 carries no item-level wait.
        let retry_after = self.item_retry_after.filter(|_| {
            endpoint.shape() != BatchShape::Mailchimp
                && verdicts.contains(&ItemVerdict::RateLimited)
        });
        let (ratio, silence) = self.timeout_after_apply;
        let withhold = (ratio > 0.0 && state.batch_rng.gen::<f64>() < ratio).then_some(silence);
        BatchAnswer {
            status,
            body: body.to_string(),
            retry_after,
            withhold,
        }
    }

    /// `GET {route}/{id}` of a Mailchimp route.
    fn batch_status(&self, route: &str, id: &str) -> (StatusCode, String) {
        let url = format!("http://{}{route}/{id}/results", self.addr);
        let status = self
            .lock()
            .jobs
            .get_mut(route)
            .and_then(|jobs| jobs.status(id, url));
        match status {
            Some(status) => (StatusCode::OK, status.to_string()),
            None => not_found(),
        }
    }
}

/// What an accepted batch is answered, and whether the answer is withheld first.
struct BatchAnswer {
    status: StatusCode,
    body: String,
    retry_after: Option<Duration>,
    withhold: Option<Duration>,
}

fn not_found() -> (StatusCode, String) {
    let body = serde_json::json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/",
                                  "title": "Resource Not Found", "status": 404,
                                  "detail": "The requested resource could not be found."});
    (StatusCode::NOT_FOUND, body.to_string())
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let conn_shutdown = shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone(), conn_shutdown.clone()));
                }
                Err(err) => {
                    // Typically EMFILE; pausing keeps a full fd table from spinning a core.
                    tracing::warn!(%err, "mock server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow with every client.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    done.send_replace(true);
    tracing::debug!("mock server stopped");
}

/// Resolves once shutdown is requested, or once the `MockServer` is gone without saying so.
async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than in the caller.
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Small responses on a keep-alive connection: Nagle would add delayed-ACK stalls.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = signalled(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "mock server: connection ended with an error");
    }
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let _in_flight = InFlight::enter(shared);
    let (parts, body) = req.into_parts();
    // The whole body is read before deciding, as an API would parse it first.
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            tracing::debug!(%err, "mock server: could not read request body");
            return json(StatusCode::BAD_REQUEST, r#"{"error":"bad_body"}"#.into());
        }
    };
    let path = parts.uri.path();
    let job = (parts.method == http::Method::GET)
        .then(|| shared.mailchimp_job(path))
        .flatten();
    if let Some((route, id, true)) = job {
        // Real Mailchimp serves results from storage outside the API: no limit, no count.
        let results = shared
            .lock()
            .jobs
            .get(route)
            .and_then(|jobs| jobs.results(id));
        let (status, body) = results.map_or_else(not_found, |r| (StatusCode::OK, r.to_string()));
        return json(status, body);
    }
    shared.received.fetch_add(1, Ordering::AcqRel);
    let batch = match job {
        Some(_) => None,
        None => shared.batch_endpoint(path),
    };
    let parsed = match batch.map(|endpoint| endpoint.parse(&body)) {
        Some(Err((status, answer))) => {
            shared.invalid.fetch_add(1, Ordering::AcqRel);
            return json(status, answer);
        }
        Some(Ok(parsed)) => Some(parsed),
        None => None,
    };
    if let (Some(endpoint), Some(parsed), Some(marker)) =
        (batch, &parsed, shared.bad_input_marker.as_deref())
    {
        if let Some((status, answer)) = answer::refusal(endpoint.shape(), &parsed.items, marker) {
            shared.invalid.fetch_add(1, Ordering::AcqRel);
            shared.bad_input_batches.fetch_add(1, Ordering::AcqRel);
            return json(status, answer.to_string());
        }
    }
    let pending_route = batch.filter(|e| e.shape() == BatchShape::Mailchimp);
    if let Some(endpoint) = pending_route {
        if !shared.reserve_pending(path, endpoint.max_pending()) {
            shared.rate_limited.fetch_add(1, Ordering::AcqRel);
            shared.pending_refused.fetch_add(1, Ordering::AcqRel);
            let body = serde_json::json!({
                "type": "https://mailchimp.com/developer/marketing/docs/errors/",
                "title": "Too Many Requests", "status": 429,
                "detail": format!("You have more than {} pending batches.", endpoint.max_pending()),
            });
            return json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
        }
    }
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (outcome, latency) = shared.decide(path, request_id.clone());
    if pending_route.is_some() && !matches!(outcome, Outcome::Accepted { .. }) {
        shared.release_pending(path);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match outcome {
        Outcome::Failed => {
            let mut resp = json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"unavailable"}"#.into(),
            );
            if let Some(wait) = shared.unavailable_retry_after {
                retry_after_header(resp.headers_mut(), RetryAfterFormat::Seconds, wait);
            }
            resp
        }
        Outcome::Accepted {
            capacity,
            remaining,
            reset,
            seq,
        } => {
            let mut resp = match (batch, parsed, job) {
                (Some(endpoint), Some(parsed), _) => {
                    let answer = shared.answer_batch(path, endpoint, &parsed, seq);
                    if let Some(silence) = answer.withhold {
                        shared.answers_withheld.fetch_add(1, Ordering::AcqRel);
                        shared.changed.notify_waiters();
                        tokio::select! {
                            () = tokio::time::sleep(silence) => {}
                            () = shared.closing.cancelled() => {}
                        }
                    }
                    let mut resp = json(answer.status, answer.body);
                    if let Some(wait) = answer.retry_after {
                        retry_after_header(resp.headers_mut(), RetryAfterFormat::Seconds, wait);
                    }
                    resp
                }
                (_, _, Some((route, id, _))) => {
                    let (status, body) = shared.batch_status(route, id);
                    json(status, body)
                }
                _ => {
                    let body =
                        serde_json::json!({ "ok": true, "seq": seq, "request_id": request_id });
                    json(StatusCode::OK, body.to_string())
                }
            };
            if let Some(capacity) = capacity {
                rate_headers(
                    resp.headers_mut(),
                    shared.rate_headers,
                    capacity,
                    remaining,
                    reset,
                );
            }
            resp
        }
        Outcome::Limited {
            capacity,
            retry_after,
            reset,
        } => {
            let body = serde_json::json!({
                "error": "rate_limited",
                "retry_after_ms": u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            });
            let mut resp = json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
            let headers = resp.headers_mut();
            retry_after_header(headers, shared.retry_after, retry_after);
            if let Some(capacity) = capacity {
                rate_headers(headers, shared.rate_headers, capacity, 0, reset);
            }
            if let Some((body, extra)) = &shared.limited_answer {
                *resp.body_mut() = Full::new(body.clone());
                for (name, value) in extra {
                    resp.headers_mut().insert(name, value.clone());
                }
            }
            resp
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whole seconds, rounded up: a client that waits this long is never early.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn retry_after_header(headers: &mut HeaderMap, format: RetryAfterFormat, wait: Duration) {
    match format {
        RetryAfterFormat::Omit => {}
        RetryAfterFormat::Seconds => {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
        }
        RetryAfterFormat::HttpDate => {
            let now = SystemTime::now();
            // HTTP-dates have one-second resolution: truncate `Date`, round the target up, so
            // `Retry-After - Date` is never shorter than the real wait.
            let target = now
                .checked_add(wait)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|since| UNIX_EPOCH + Duration::from_secs(ceil_secs(since)));
            if let Some(target) = target {
                let date = httpdate::fmt_http_date(now);
                let retry_at = httpdate::fmt_http_date(target);
                if let (Ok(date), Ok(retry_at)) = (
                    HeaderValue::from_str(&date),
                    HeaderValue::from_str(&retry_at),
                ) {
                    headers.insert(DATE, date);
                    headers.insert(RETRY_AFTER, retry_at);
                }
            }
        }
    }
}

fn rate_headers(
    headers: &mut HeaderMap,
    which: RateHeaders,
    capacity: u64,
    remaining: u64,
    reset: Duration,
) {
    let values = [capacity, remaining, ceil_secs(reset)].map(HeaderValue::from);
    if which.ietf() {
        for (name, value) in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
            .into_iter()
            .zip(values.clone())
        {
            headers.insert(name, value);
        }
    }
    if which.x_rate_limit() {
        for (name, value) in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
        .into_iter()
        .zip(values)
        {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }

    #[test]
    fn http_date_retry_after_is_never_early() {
        let mut headers = HeaderMap::new();
        let wait = Duration::from_millis(1500);
        retry_after_header(&mut headers, RetryAfterFormat::HttpDate, wait);
        let parse = |name| httpdate::parse_http_date(headers[name].to_str().unwrap()).unwrap();
        let gap = parse(RETRY_AFTER).duration_since(parse(DATE)).unwrap();
        assert!(
            gap >= wait && gap <= wait + Duration::from_secs(2),
            "{gap:?}"
        );
    }

    #[test]
    fn omit_sends_nothing() {
        let mut headers = HeaderMap::new();
        retry_after_header(&mut headers, RetryAfterFormat::Omit, Duration::from_secs(3));
        assert!(headers.is_empty());
    }
}
