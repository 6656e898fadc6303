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
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::batch::{BatchEndpoint, ItemVerdict};
use super::config::{MockServerBuilder, RateHeaders, RetryAfterFormat};
use super::error::StartError;
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
    batch_routes: HashMap<String, BatchEndpoint>,
    item_fail_ratio: f64,
    item_reject_ratio: f64,
    limited_answer: Option<(Bytes, HeaderMap)>,
    unavailable_retry_after: Option<Duration>,
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
    items: ItemCounts,
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
            items: ItemCounts::default(),
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
            batch_routes: cfg.batch_routes.into_iter().collect(),
            item_fail_ratio: cfg.item_fail_ratio,
            item_reject_ratio: cfg.item_reject_ratio,
            limited_answer: cfg.limited_answer,
            unavailable_retry_after: cfg.unavailable_retry_after,
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
    /// reset does not hand out a fresh burst), and times stay measured from the start.
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
        self.shutdown.send_replace(true);
        let mut done = self.done.clone();
        // Err means the accept loop is gone, which is what we are waiting for anyway.
        let _ = done.wait_for(|d| *d).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
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
    /// Decides each item of an accepted batch and records the written ones.
    fn answer_batch(
        &self,
        endpoint: &BatchEndpoint,
        items: &[serde_json::Value],
        seq: u64,
    ) -> (StatusCode, String) {
        let mut state = self.lock();
        let state = &mut *state;
        let draw = endpoint.reports_items() && self.item_fail_ratio + self.item_reject_ratio > 0.0;
        let verdicts: Vec<ItemVerdict> = items
            .iter()
            .map(|item| {
                state.items.received += 1;
                let roll = if draw {
                    state.item_rng.gen::<f64>()
                } else {
                    1.0
                };
                if roll < self.item_fail_ratio {
                    state.items.failed += 1;
                    ItemVerdict::Failed
                } else if roll < self.item_fail_ratio + self.item_reject_ratio {
                    state.items.rejected += 1;
                    ItemVerdict::Rejected
                } else {
                    state.items.accepted += 1;
                    if let Some(id) = endpoint.record_id(item) {
                        state.record_id(id);
                    }
                    ItemVerdict::Ok
                }
            })
            .collect();
        endpoint.answer(items, &verdicts, seq)
    }
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
    shared.received.fetch_add(1, Ordering::AcqRel);
    let batch = shared.batch_routes.get(parts.uri.path());
    let items = match batch.map(|endpoint| endpoint.parse(&body)) {
        Some(Err((status, answer))) => {
            shared.invalid.fetch_add(1, Ordering::AcqRel);
            return json(status, answer);
        }
        Some(Ok(items)) => Some(items),
        None => None,
    };
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (outcome, latency) = shared.decide(parts.uri.path(), request_id.clone());
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
            let mut resp = match (batch, items) {
                (Some(endpoint), Some(items)) => {
                    let (status, answer) = shared.answer_batch(endpoint, &items, seq);
                    json(status, answer)
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
