//! The task that owns the inner service: it coalesces pending items, sends a batch when one
//! is due and the inner service is ready, and splits each answer back to the items.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

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

use super::layer::Config;
use super::{BatchError, BatchFormat, BatchInfo, BatchedItem, ItemOutcome, ItemResult};
use crate::classify::Classify;
use crate::retry::Attempts;
use crate::ReplayBody;

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
    /// When it (re)joined the pending queue: the linger is counted from here.
    pub(crate) since: Instant,
    /// Batches it has been sent in.
    pub(crate) batches: u32,
    /// HTTP attempts over all those batches (retries below included).
    pub(crate) attempts: u32,
    pub(crate) reply: oneshot::Sender<ItemOutcome>,
}

impl Item {
    fn answer(self, outcome: ItemOutcome) {
        // A dropped receiver means the caller gave up; there is no one left to tell.
        let _ = self.reply.send(outcome);
    }

    fn respond(self, result: ItemResult, extra: &HeaderMap) -> bool {
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
        let delivered = result.status.is_success();
        self.answer(Ok(res));
        delivered
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
    linger: Pin<Box<Sleep>>,
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
            linger: Box::pin(tokio::time::sleep_until(Instant::now())),
            _body: std::marker::PhantomData,
        }
    }

    /// Looks at the first batch's worth of the queue (withdrawn items dropped on the way) and
    /// says whether it is due: full by count or bytes, lingered long enough, or shutting down.
    fn plan(&mut self, now: Instant) -> Plan {
        while self.pending.front().is_some_and(|i| i.reply.is_closed()) {
            self.pending.pop_front();
            self.config.stats.add_cancelled(1);
        }
        let Some(front) = self.pending.front() else {
            return Plan::Idle;
        };
        let deadline = front.since + self.config.linger;
        if !self.open || now >= deadline {
            return Plan::SendNow;
        }
        let envelope = self.config.format.envelope();
        let (mut count, mut bytes) = (0usize, 0usize);
        for item in self.pending.iter() {
            if item.origin != front.origin || item.reply.is_closed() {
                continue;
            }
            if count == self.config.max_items
                || envelope.len_of(count + 1, bytes + item.bytes.len()) > self.config.max_bytes
            {
                return Plan::SendNow;
            }
            count += 1;
            bytes += item.bytes.len();
        }
        if count == self.config.max_items {
            Plan::SendNow
        } else {
            Plan::SendAt(deadline)
        }
    }

    /// Takes the first batch off the queue: items sharing the front item's origin, in order,
    /// up to the count and byte limits. Items for other origins keep their places.
    fn take_batch(&mut self) -> Vec<Item> {
        let envelope = self.config.format.envelope();
        let mut batch: Vec<Item> = Vec::new();
        let mut bytes = 0usize;
        let mut passed_over = Vec::new();
        while let Some(item) = self.pending.pop_front() {
            if item.reply.is_closed() {
                self.config.stats.add_cancelled(1);
                continue;
            }
            if batch
                .first()
                .is_some_and(|first| first.origin != item.origin)
            {
                passed_over.push(item);
                continue;
            }
            if batch.len() == self.config.max_items
                || envelope.len_of(batch.len() + 1, bytes + item.bytes.len())
                    > self.config.max_bytes
            {
                self.pending.push_front(item);
                break;
            }
            bytes += item.bytes.len();
            batch.push(item);
        }
        for item in passed_over.into_iter().rev() {
            self.pending.push_front(item);
        }
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
        req.extensions_mut().insert(info);
        Ok(req)
    }

    fn send(&mut self, mut items: Vec<Item>) {
        let req = match self.build_request(&items) {
            Ok(req) => req,
            Err(err) => {
                let reason = err.to_string();
                self.fail_all(items, |_| BatchError::Failed {
                    reason: format!("the batch request could not be built: {reason}"),
                });
                return;
            }
        };
        for item in &mut items {
            item.batches += 1;
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

    fn fail_all(&self, items: Vec<Item>, err: impl Fn(&Item) -> BatchError) {
        self.config.stats.add_failed(items.len());
        for item in items {
            let e = err(&item);
            item.answer(Err(e.into()));
        }
    }

    /// Splits one answer back to its items: delivered and final failures are answered,
    /// transient item failures rejoin the queue for a later batch.
    fn finish(&mut self, done: Done) {
        let Done { mut items, answer } = done;
        let (status, headers, attempts, body) = match answer {
            Ok(answer) => answer,
            Err(err) => {
                let reason = err.to_string();
                for item in &mut items {
                    item.attempts += 1;
                }
                self.fail_all(items, |item| BatchError::Failed {
                    reason: format!("batch of item {} failed: {reason}", item.id),
                });
                return;
            }
        };
        let attempts = attempts.map_or(1, |a| a.0);
        for item in &mut items {
            item.attempts += attempts;
        }
        if !status.is_success() {
            // The whole batch was refused (after the retries below, if any): every item
            // gets the batch's answer as its own, so a dead-letter layer above keeps each.
            self.config.stats.add_failed(items.len());
            for item in items {
                item.respond(ItemResult::new(status, body.clone()), &headers);
            }
            return;
        }
        let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
        let results = match self.config.format.decode(status, &body, &ids) {
            Ok(results) if results.len() == items.len() => results,
            Ok(results) => {
                let reason = format!("{} results for {} items", results.len(), items.len());
                self.fail_all(items, |_| BatchError::Undecodable {
                    status,
                    reason: reason.clone(),
                });
                return;
            }
            Err(err) => {
                let reason = err.to_string();
                self.fail_all(items, |_| BatchError::Undecodable {
                    status,
                    reason: reason.clone(),
                });
                return;
            }
        };
        let now = Instant::now();
        let empty = HeaderMap::new();
        for (mut item, result) in items.into_iter().zip(results) {
            let retry = self
                .config
                .classifier
                .classify_response(result.status, &empty, SystemTime::now())
                .is_retryable();
            if retry && item.batches < self.config.max_item_attempts && !item.reply.is_closed() {
                item.since = now;
                self.config.stats.add_rebatched(1);
                self.pending.push_back(item);
            } else if item.respond(result, &empty) {
                self.config.stats.add_delivered(1);
            } else {
                self.config.stats.add_failed(1);
            }
        }
    }
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
                        this.pending.push_back(item);
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
                    if this.linger.deadline() != deadline {
                        this.linger.as_mut().reset(deadline);
                    }
                    if this.linger.as_mut().poll(cx).is_ready() {
                        progressed = true;
                    }
                }
                Plan::SendNow if this.in_flight.len() < this.config.max_in_flight => {
                    match this.inner.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let batch = this.take_batch();
                            if !batch.is_empty() {
                                this.send(batch);
                            }
                            progressed = true;
                        }
                        Poll::Ready(Err(err)) => {
                            let reason = err.into().to_string();
                            let batch = this.take_batch();
                            this.fail_all(batch, |_| BatchError::Failed {
                                reason: format!("the inner service refused the batch: {reason}"),
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
