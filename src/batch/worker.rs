//! The task that owns the inner service: it coalesces pending items, sends a batch when one
//! is due and the inner service is ready, and splits each answer back to the items.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use http::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, TRANSFER_ENCODING,
};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::layer::Config;
use super::{
    BatchError, BatchFormat, BatchInfo, BatchedItem, ItemOutcome, ItemResult, Resend, Sent,
};
use crate::classify::{self, Classify, Outcome};
use crate::clock;
use crate::retry::{Attempts, Idempotent};
use crate::{ReplayBody, ThrottleError};

/// Where a batch goes and with which credentials: items that differ here never share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: Option<Scheme>,
    authority: Option<Authority>,
    authorization: Option<HeaderValue>,
}

impl Origin {
    pub(crate) fn of(head: &http::request::Parts) -> Self {
        Origin {
            scheme: head.uri.scheme().cloned(),
            authority: head.uri.authority().cloned(),
            authorization: head.headers.get(AUTHORIZATION).cloned(),
        }
    }
}

/// One submitted record, from its call until its answer.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) id: u64,
    pub(crate) bytes: Bytes,
    pub(crate) origin: Origin,
    pub(crate) headers: HeaderMap,
    /// The record's identity ([`BatchFormat::identity`]): items sharing one go out one at a
    /// time, in submission order.
    pub(crate) identity: Option<Arc<str>>,
    /// The latest it waits for others: its linger ends here.
    pub(crate) due: Instant,
    /// The earliest it may go: a back-off after a transient item failure.
    pub(crate) not_before: Instant,
    /// 0 for the common queue; each half of a split batch has a lane of its own, so it goes
    /// out as it is instead of mixing with new items.
    pub(crate) lane: u64,
    /// The most items of a batch it may go in: halved by each split.
    pub(crate) cap: usize,
    /// The second half of a split waits for the first half's answer (the lane named here):
    /// if that half goes through, the refusal's culprit is in this one, which is split again
    /// without being sent. 0: not waiting.
    pub(crate) after: u64,
    /// Batches it has been sent in.
    pub(crate) batches: u32,
    /// Times it was sent again after a transient failure of its own.
    pub(crate) retries: u32,
    /// HTTP attempts over all those batches (retries below included).
    pub(crate) attempts: u32,
    /// It went out in an attempt whose outcome is unknown ([`Resend::Provable`]).
    pub(crate) unsure: bool,
    pub(crate) reply: oneshot::Sender<ItemOutcome>,
}

impl Item {
    fn answer(self, outcome: ItemOutcome) {
        // A dropped receiver means the caller gave up; there is no one left to tell.
        let _ = self.reply.send(outcome);
    }

    fn respond(self, result: ItemResult, extra: &HeaderMap) {
        let mut res = http::Response::new(Full::new(result.body));
        *res.status_mut() = result.status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(wait) = extra.get(RETRY_AFTER) {
            res.headers_mut().insert(RETRY_AFTER, wait.clone());
        }
        res.extensions_mut().insert(Attempts(self.attempts));
        res.extensions_mut().insert(BatchedItem {
            batches: self.batches,
        });
        self.answer(Ok(res));
    }
}

type Answer = Result<(StatusCode, HeaderMap, Option<Attempts>, Bytes), BoxError>;

/// A batch on the wire: its items wait here for the answer.
struct Done {
    items: Vec<Item>,
    answer: Answer,
}

/// What the pending queue asks for now.
enum Plan {
    Idle,
    SendAt(Instant),
    SendNow,
}

/// The next batch the queue would send: positions in `pending`, whether it is full, and when
/// its linger ends.
struct Selection {
    picked: Vec<usize>,
    full: bool,
    due: Instant,
}

/// What the worker needs of the client under the batch layer: the bounds of
/// [`BatchLayer`](crate::BatchLayer)'s `Layer` impl, said once in a form the worker's impls can
/// name (its response body is an associated type, so it needs no parameter of its own).
pub(crate) trait Client<B>:
    Service<http::Request<B>, Response: Send, Future: Send + 'static, Error: Into<BoxError>>
    + Send
    + 'static
{
    /// The response body.
    type Body: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static;

    /// The response as `http::Response` (it already is one; this names its body type).
    fn response(res: Self::Response) -> http::Response<Self::Body>;
}

impl<S, B, RB> Client<B> for S
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = RB;

    fn response(res: http::Response<RB>) -> http::Response<RB> {
        res
    }
}

pub(crate) struct Worker<S, F, B> {
    inner: S,
    config: Arc<Config<F>>,
    rx: mpsc::UnboundedReceiver<Item>,
    open: bool,
    pending: VecDeque<Item>,
    in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>,
    wake: Pin<Box<Sleep>>,
    /// Unanswered items per identity, oldest first: only the oldest may be sent.
    order: HashMap<Arc<str>, VecDeque<u64>>,
    /// The most a batch may cost, learnt from the gate's
    /// [`CostTooHigh`](crate::ThrottleError::CostTooHigh) (its smallest burst).
    max_cost: u64,
    next_lane: u64,
    /// Lanes with a batch on the wire.
    lanes_in_flight: std::collections::HashSet<u64>,
    rng: SmallRng,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S: Client<B>, F: BatchFormat, B: ReplayBody> Worker<S, F, B> {
    pub(crate) fn new(inner: S, config: Arc<Config<F>>, rx: mpsc::UnboundedReceiver<Item>) -> Self {
        Worker {
            inner,
            config,
            rx,
            open: true,
            pending: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            wake: Box::pin(tokio::time::sleep_until(Instant::now())),
            order: HashMap::new(),
            max_cost: u64::MAX,
            next_lane: 1,
            lanes_in_flight: Default::default(),
            rng: SmallRng::from_entropy(),
            _body: std::marker::PhantomData,
        }
    }

    /// Takes a new item in, behind the earlier items of its identity.
    fn admit(&mut self, item: Item) {
        if let Some(identity) = &item.identity {
            self.order
                .entry(identity.clone())
                .or_default()
                .push_back(item.id);
        }
        self.pending.push_back(item);
    }

    /// Whether `item` is the oldest unanswered item of its identity.
    fn is_next(&self, item: &Item) -> bool {
        item.identity.as_ref().is_none_or(|identity| {
            self.order.get(identity).and_then(VecDeque::front) == Some(&item.id)
        })
    }

    /// Lets the next item of `item`'s identity go: `item` is answered or withdrawn.
    fn release(&mut self, item: &Item) {
        let Some(identity) = &item.identity else {
            return;
        };
        if let Some(queue) = self.order.get_mut(identity) {
            queue.retain(|&id| id != item.id);
            if queue.is_empty() {
                self.order.remove(identity);
            }
        }
    }

    /// Answers an item, freeing its identity and counting the outcome.
    fn settle(&mut self, item: Item, result: ItemResult, headers: &HeaderMap) {
        self.release(&item);
        let stats = &self.config.stats;
        if result.status == StatusCode::ACCEPTED {
            stats.add_accepted(1);
        } else if result.status.is_success() {
            stats.add_delivered(1);
        } else {
            stats.add_failed(1);
        }
        item.respond(result, headers);
    }

    /// Fails an item with an error of its own.
    fn fail(&mut self, item: Item, err: BoxError) {
        self.release(&item);
        self.config.stats.add_failed(1);
        item.answer(Err(err));
    }

    fn fail_all(&mut self, items: Vec<Item>, err: impl Fn(&Item) -> BoxError) {
        for item in items {
            let e = err(&item);
            self.fail(item, e);
        }
    }

    /// Drops items whose callers gave up before they were sent.
    fn withdraw_closed(&mut self) {
        if !self.pending.iter().any(|i| i.reply.is_closed()) {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for item in pending {
            if item.reply.is_closed() {
                self.release(&item);
                self.config.stats.add_cancelled(1);
            } else {
                self.pending.push_back(item);
            }
        }
    }

    /// The first batch's worth of the queue: items that may go now (their back-off over,
    /// the oldest of their identity), sharing the first one's origin and lane, in order, up
    /// to the count, byte, split and cost limits. Also the earliest end of a back-off, to
    /// wake for. The one place batch limits are applied, for planning and for sending.
    fn select(&self, now: Instant) -> (Option<Selection>, Option<Instant>) {
        let envelope = self.config.format.envelope();
        let mut picked: Vec<usize> = Vec::new();
        let mut first: Option<&Item> = None;
        let (mut bytes, mut cap) = (0usize, self.config.max_items);
        let mut backoff: Option<Instant> = None;
        let mut full = false;
        for (i, item) in self.pending.iter().enumerate() {
            if item.reply.is_closed() {
                continue;
            }
            if item.not_before > now {
                backoff = Some(backoff.map_or(item.not_before, |b| b.min(item.not_before)));
                continue;
            }
            if item.after != 0 || !self.is_next(item) {
                continue;
            }
            if let Some(first) = first {
                if item.origin != first.origin || item.lane != first.lane {
                    continue;
                }
            }
            let count = picked.len() + 1;
            let item_cap = cap.min(item.cap);
            let size = envelope.len_of(count, bytes + item.bytes.len());
            let over = count > item_cap
                || size > self.config.max_bytes
                || u64::from(self.config.format.cost(count, size)) > self.max_cost;
            if over && !picked.is_empty() {
                full = true;
                break;
            }
            first.get_or_insert(item);
            picked.push(i);
            bytes += item.bytes.len();
            cap = item_cap;
            if picked.len() >= cap {
                full = true;
                break;
            }
        }
        let selection = first.map(|first| Selection {
            picked,
            full,
            due: first.due,
        });
        (selection, backoff)
    }

    /// Whether the first batch is due: full, lingered long enough, or shutting down; else when
    /// to look again.
    fn plan(&mut self, now: Instant) -> Plan {
        self.withdraw_closed();
        self.release_orphans(now);
        let (selection, backoff) = self.select(now);
        match selection {
            Some(s) if s.full || !self.open || now >= s.due => Plan::SendNow,
            Some(s) => Plan::SendAt(backoff.map_or(s.due, |b| b.min(s.due))),
            None => backoff.map_or(Plan::Idle, Plan::SendAt),
        }
    }

    /// Takes the first batch off the queue; the items passed over keep their places.
    fn take_batch(&mut self, now: Instant) -> Vec<Item> {
        let (Some(selection), _) = self.select(now) else {
            return Vec::new();
        };
        // Back to front, so earlier positions stay valid; a `VecDeque` removes near either
        // end cheaply, which is where batches come from (new items at the front, items sent
        // again at the back).
        let mut batch: Vec<Item> = selection
            .picked
            .iter()
            .rev()
            .filter_map(|&i| self.pending.remove(i))
            .collect();
        batch.reverse();
        batch
    }

    fn build_request(&self, items: &[Item]) -> Result<http::Request<B>, BoxError> {
        let format = &self.config.format;
        let bodies: Vec<Bytes> = items.iter().map(|i| i.bytes.clone()).collect();
        let body = format.envelope().build(&bodies);
        let (method, path) = format.endpoint();
        let origin = &items[0].origin;
        let mut uri = http::Uri::builder();
        if let (Some(scheme), Some(authority)) = (&origin.scheme, &origin.authority) {
            uri = uri.scheme(scheme.clone()).authority(authority.clone());
        }
        let mut headers = items[0].headers.clone();
        for per_item in [CONTENT_LENGTH, TRANSFER_ENCODING] {
            headers.remove(per_item);
        }
        headers.remove("x-request-id");
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let info = BatchInfo {
            items: items.len(),
            bytes: body.len(),
            cost: format.cost(items.len(), body.len()),
        };
        let mut req = http::Request::new(B::from_bytes(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri.path_and_query(path).build()?;
        *req.headers_mut() = headers;
        // The weight a weighted gate below admits the batch at (`rate_limit::Cost`).
        req.extensions_mut()
            .insert(crate::rate_limit::Cost(info.cost));
        // Only a batch of upserts may be resent by the retry layer when its answer is lost;
        // the others are the batch layer's to settle (see `failed`).
        req.extensions_mut()
            .insert(Idempotent(format.resend() == Resend::Safe));
        req.extensions_mut().insert(info);
        Ok(req)
    }

    fn send(&mut self, mut items: Vec<Item>) {
        let req = match self.build_request(&items) {
            Ok(req) => req,
            Err(err) => {
                let reason = err.to_string();
                self.fail_all(items, |_| {
                    BatchError::Failed {
                        reason: format!("the batch request could not be built: {reason}"),
                    }
                    .into()
                });
                return;
            }
        };
        for item in &mut items {
            item.batches += 1;
        }
        if items[0].lane != 0 {
            self.lanes_in_flight.insert(items[0].lane);
        }
        self.config.stats.add_batch(items.len());
        let call = self.inner.call(req);
        self.in_flight.push(Box::pin(async move {
            let answer = match call.await.map_err(Into::into) {
                Ok(res) => {
                    let (parts, body) = S::response(res).into_parts();
                    match body.collect().await {
                        Ok(body) => Ok((
                            parts.status,
                            parts.headers,
                            parts.extensions.get::<Attempts>().copied(),
                            body.to_bytes(),
                        )),
                        Err(err) => Err(err.into()),
                    }
                }
                Err(err) => Err(err),
            };
            Done { items, answer }
        }));
    }

    /// Puts items back at the front of the queue, as a batch of their own of at most `cap`
    /// items, due now.
    fn requeue_lane(&mut self, items: Vec<Item>, cap: usize, now: Instant) -> u64 {
        let lane = self.next_lane;
        self.next_lane += 1;
        for mut item in items.into_iter().rev() {
            item.lane = lane;
            item.cap = cap.max(1);
            item.due = now;
            item.not_before = now;
            item.after = 0;
            self.pending.push_front(item);
        }
        lane
    }

    /// Takes the items waiting on `lane`'s answer out of the queue.
    fn held_by(&mut self, lane: u64) -> Vec<Item> {
        let mut held = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].after == lane {
                held.extend(self.pending.remove(i));
            } else {
                i += 1;
            }
        }
        held
    }

    /// Items waiting on a lane that will never answer (every item of it was withdrawn) go
    /// out on their own.
    fn release_orphans(&mut self, now: Instant) {
        let waiting: std::collections::HashSet<u64> = self
            .pending
            .iter()
            .filter(|i| i.after != 0)
            .map(|i| i.after)
            .collect();
        for lane in waiting {
            let alive = self.lanes_in_flight.contains(&lane)
                || self
                    .pending
                    .iter()
                    .any(|i| i.lane == lane && i.after == 0 && !i.reply.is_closed());
            if !alive {
                let held = self.held_by(lane);
                let cap = held.len();
                self.requeue_lane(held, cap, now);
            }
        }
    }

    /// Settles the half waiting on `lane` now that `lane`'s batch is answered: a batch that
    /// went through (`cleared`) proves the culprit is in the other half, which is split
    /// without being sent (a single record is always sent: the vendor has the last word).
    /// Otherwise the other half is a suspect of its own and goes out.
    fn settle_sibling(&mut self, lane: u64, cleared: bool, now: Instant) {
        if lane == 0 {
            return;
        }
        self.lanes_in_flight.remove(&lane);
        let held = self.held_by(lane);
        if held.is_empty() {
            return;
        }
        let whole = !self.pending.iter().any(|i| i.lane == lane);
        if cleared && whole && held.len() > 1 {
            // The items were counted as re-batched when they were split off.
            self.halve(held, now);
        } else {
            let cap = held.len();
            self.requeue_lane(held, cap, now);
        }
    }

    /// Splits items the answer did not settle into two halves sent on their own, so a bad
    /// record is found in about `log2(n)` rounds and the others are delivered.
    ///
    /// The first half goes out now; the second waits for its answer ([`settle_sibling`]),
    /// so when the first half goes through, the second is split again unsent: about one call
    /// per halving instead of two.
    ///
    /// [`settle_sibling`]: Self::settle_sibling
    fn split(&mut self, items: Vec<Item>, now: Instant) {
        self.config.stats.add_rebatched(items.len());
        self.halve(items, now);
    }

    fn halve(&mut self, mut items: Vec<Item>, now: Instant) {
        self.config.stats.add_bisections(1);
        let second = items.split_off(items.len().div_ceil(2));
        let half = items.len();
        let lane = self.requeue_lane(items, half, now);
        for mut item in second.into_iter().rev() {
            item.after = lane;
            item.lane = 0;
            self.pending.push_front(item);
        }
    }

    /// The batch came back without an answer (after the retries below, if any).
    fn failed(&mut self, mut items: Vec<Item>, err: BoxError, now: Instant) {
        if let Some(ThrottleError::CostTooHigh { burst, .. }) = throttle_error(&*err) {
            if items.len() > 1 {
                // Nothing was sent: the gate can never admit this much at once. Batches stay
                // within its burst from now on.
                self.max_cost = self.max_cost.min((*burst).max(1));
                for item in &mut items {
                    item.batches -= 1;
                }
                let cap = items.len();
                self.requeue_lane(items, cap, now);
                return;
            }
        }
        for item in &mut items {
            item.attempts += 1;
        }
        let reason = match throttle_error(&*err) {
            // Said already by the retry layer below: keep its words, not a wrapper of them.
            Some(ThrottleError::OutcomeUnknown { reason }) => reason.clone(),
            _ => err.to_string(),
        };
        if !classify::outcome_unknown(&*err) {
            self.fail_all(items, |item| {
                BatchError::Failed {
                    reason: format!("batch of item {} failed: {reason}", item.id),
                }
                .into()
            });
            return;
        }
        match self.config.format.resend() {
            // Upserts: the retry layer below has resent the batch as far as its policy goes.
            Resend::Safe => self.fail_all(items, |item| {
                BatchError::Failed {
                    reason: format!("batch of item {} failed: {reason}", item.id),
                }
                .into()
            }),
            Resend::Provable => {
                let mut again = Vec::new();
                for mut item in items {
                    if item.retries + 1 < self.config.max_item_attempts {
                        item.unsure = true;
                        again.push(Retry {
                            item,
                            wait: None,
                            limited: false,
                        });
                    } else {
                        self.fail(item, unknown(&reason));
                    }
                }
                self.retry_later(again, now);
            }
            Resend::Unsafe => self.fail_all(items, |_| unknown(&reason)),
        }
    }

    /// Sends items again after transient failures of their own in one answer. They share
    /// one wait (the longest the server asked for, else one back-off draw), so they go out
    /// together, with whatever else is pending then, instead of one call each.
    fn retry_later(&mut self, items: Vec<Retry>, now: Instant) {
        if items.is_empty() {
            return;
        }
        let asked = items.iter().filter_map(|r| r.wait).max();
        let limited = items.iter().any(|r| r.limited);
        let wait = asked.unwrap_or_else(|| {
            let retries = items.iter().map(|r| r.item.retries).min().unwrap_or(0);
            self.config.backoff.delay_for(retries, &mut self.rng)
        });
        let until = clock::later(now, wait);
        if limited {
            // A record refused for the rate holds everyone, as a refused batch does.
            if let Some(hold) = &self.config.hold {
                hold(until);
            }
        }
        self.config.stats.add_rebatched(items.len());
        // At the front: once their wait is over they are the oldest records, and fill the
        // next batch before newer ones, rather than trailing the run in part-filled batches.
        for Retry { mut item, .. } in items.into_iter().rev() {
            item.retries += 1;
            item.not_before = until;
            item.due = clock::later(until, self.config.linger);
            item.lane = 0;
            item.after = 0;
            item.cap = usize::MAX;
            self.pending.push_front(item);
        }
    }

    /// Settles one item by the vendor's result for it: delivered and final failures are
    /// answered; a transient failure is handed back to be sent again.
    fn resolve(&mut self, item: Item, result: ItemResult, headers: &HeaderMap) -> Option<Retry> {
        let format = &self.config.format;
        let result =
            if item.unsure && format.resend() == Resend::Provable && format.applied_before(&result)
            {
                ItemResult::new(StatusCode::OK, result.body)
            } else {
                result
            };
        let now = SystemTime::now();
        let outcome = self
            .config
            .classifier
            .classify_response(result.status, headers, now);
        let again = outcome.is_retryable()
            && item.retries + 1 < self.config.max_item_attempts
            && !item.reply.is_closed();
        if !again {
            self.settle(item, result, headers);
            return None;
        }
        let (wait, limited) = match outcome {
            Outcome::RateLimited { retry_after } => (retry_after, true),
            _ => (
                self.config
                    .classifier
                    .transient_wait(result.status, headers, now),
                false,
            ),
        };
        Some(Retry {
            item,
            wait,
            limited,
        })
    }

    /// Splits one answer back to its items.
    fn finish(&mut self, done: Done) {
        let Done { mut items, answer } = done;
        let now = Instant::now();
        let lane = items.first().map_or(0, |i| i.lane);
        let cleared = matches!(&answer, Ok((status, ..)) if status.is_success());
        self.settle_sibling(lane, cleared, now);
        let (status, headers, attempts, body) = match answer {
            Ok(answer) => answer,
            Err(err) => return self.failed(items, err, now),
        };
        let attempts = attempts.map_or(1, |a| a.0);
        for item in &mut items {
            item.attempts += attempts;
        }
        let outcome = self
            .config
            .classifier
            .classify_response(status, &headers, SystemTime::now());
        if !status.is_success() && outcome.is_retryable() {
            // A 429 or 5xx the retry layer below gave up on: every item gets the batch's
            // answer as its own, so a dead-letter layer above keeps each.
            for item in items {
                self.settle(item, ItemResult::new(status, body.clone()), &headers);
            }
            return;
        }
        // A final refusal applied nothing: what it does not pin on a record is sent again.
        let refused = !status.is_success();
        let alone = items.len() == 1;
        let sent: Vec<Sent<'_>> = items
            .iter()
            .map(|i| Sent {
                id: i.id,
                encoded: &i.bytes,
            })
            .collect();
        let decoded = self.config.format.decode(status, &body, &sent);
        drop(sent);
        let results = match decoded {
            Ok(results) if results.len() == items.len() => results,
            decoded => {
                if refused && !alone {
                    return self.split(items, now);
                }
                let reason = match decoded {
                    Ok(results) => format!("{} results for {} items", results.len(), items.len()),
                    Err(err) => err.to_string(),
                };
                if refused {
                    // One record refused as a whole: the refusal is its own.
                    let item = items.pop().expect("one item");
                    return self.settle(item, ItemResult::new(status, body), &headers);
                }
                self.fail_all(items, |_| {
                    BatchError::Undecodable {
                        status,
                        reason: reason.clone(),
                    }
                    .into()
                });
                return;
            }
        };
        let mut unsettled: Vec<(Item, ItemResult)> = Vec::new();
        let mut again = Vec::new();
        // A refusal that named the records at fault cleared the others: they go again as one
        // batch. Only a refusal that names none needs halving to find them.
        let named = refused
            && results
                .iter()
                .any(|r| r.is_attributed() && !r.status.is_success());
        for (item, result) in items.into_iter().zip(results) {
            if refused && result.status.is_success() {
                unsettled.push((item, ItemResult::new(status, body.clone())));
            } else if !result.is_attributed() && !alone {
                unsettled.push((item, result));
            } else {
                // The only record of its batch: whatever the answer says is about it.
                let result = ItemResult::new(result.status, result.body);
                again.extend(self.resolve(item, result, &headers));
            }
        }
        self.retry_later(again, now);
        if unsettled.is_empty() {
            return;
        }
        if alone {
            let (item, result) = unsettled.pop().expect("one item");
            let result = ItemResult::new(result.status, result.body);
            let again = self.resolve(item, result, &headers);
            return self.retry_later(again.into_iter().collect(), now);
        }
        if refused || self.config.format.resend() != Resend::Unsafe {
            let provable = self.config.format.resend() == Resend::Provable;
            let items = unsettled
                .into_iter()
                .map(|(mut item, _)| {
                    // Records a create may have applied: a resend that finds them there
                    // proves them delivered.
                    item.unsure |= provable && !refused;
                    item
                })
                .collect::<Vec<_>>();
            if named {
                let cap = items.len();
                self.requeue_lane(items, cap, now);
                return;
            }
            return self.split(items, now);
        }
        for (item, result) in unsettled {
            let reason = String::from_utf8_lossy(&result.body).into_owned();
            self.fail(
                item,
                BatchError::Unattributed {
                    status: result.status,
                    reason,
                }
                .into(),
            );
        }
    }
}

/// An item to send again, with the wait its own answer asked for.
struct Retry {
    item: Item,
    wait: Option<Duration>,
    /// Refused for the rate: the gate is held for the wait.
    limited: bool,
}

/// The error of an attempt whose answer was lost, for a record that is not resent.
fn unknown(reason: &str) -> BoxError {
    ThrottleError::OutcomeUnknown {
        reason: reason.to_owned(),
    }
    .into()
}

/// The first [`ThrottleError`] in an error's chain.
fn throttle_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ThrottleError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<ThrottleError>() {
            return Some(t);
        }
        current = e.source();
    }
    None
}

impl<S: Client<B>, F: BatchFormat, B: ReplayBody> Future for Worker<S, F, B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let mut progressed = false;
            while let Poll::Ready(Some(done)) = this.in_flight.poll_next_unpin(cx) {
                this.finish(done);
                progressed = true;
            }
            while this.open {
                match this.rx.poll_recv(cx) {
                    Poll::Ready(Some(item)) => {
                        this.admit(item);
                        progressed = true;
                    }
                    Poll::Ready(None) => {
                        this.open = false;
                        progressed = true;
                    }
                    Poll::Pending => break,
                }
            }
            match this.plan(Instant::now()) {
                Plan::Idle => {}
                Plan::SendAt(deadline) => {
                    if this.wake.deadline() != deadline {
                        this.wake.as_mut().reset(deadline);
                    }
                    if this.wake.as_mut().poll(cx).is_ready() {
                        progressed = true;
                    }
                }
                Plan::SendNow if this.in_flight.len() < this.config.max_in_flight => {
                    match this.inner.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let batch = this.take_batch(Instant::now());
                            if !batch.is_empty() {
                                this.send(batch);
                            }
                            progressed = true;
                        }
                        Poll::Ready(Err(err)) => {
                            let reason = err.into().to_string();
                            let batch = this.take_batch(Instant::now());
                            this.fail_all(batch, |_| {
                                BatchError::Failed {
                                    reason: format!(
                                        "the inner service refused the batch: {reason}"
                                    ),
                                }
                                .into()
                            });
                            progressed = true;
                        }
                        Poll::Pending => {}
                    }
                }
                // At the in-flight cap: an answer wakes us.
                Plan::SendNow => {}
            }
            if !this.open && this.pending.is_empty() && this.in_flight.is_empty() {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

// No field is ever polled through a pin (the sleep is boxed, the inner service is a plain
// `&mut`), so moving the worker is fine whatever `S` is.
impl<S, F, B> Unpin for Worker<S, F, B> {}
