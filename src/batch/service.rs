use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::worker::{Client, Item, Origin, Worker};
use super::{BatchError, BatchFormat};
use crate::ReplayBody;

type WorkerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The worker is spawned by the first call rather than when the layer is applied, so a stack
/// can be built outside a runtime (in a constructor, a `lazy_static`) like any other.
struct Launch {
    started: AtomicBool,
    worker: Mutex<Option<WorkerFuture>>,
}

impl Launch {
    fn ensure_started(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = worker.take() {
            tokio::spawn(worker);
        }
        self.started.store(true, Ordering::Release);
    }
}

/// The service [`BatchLayer`](crate::BatchLayer) builds: each call submits one item and
/// resolves to that item's own response. Clones share one pending batch and one worker.
pub struct Batch<F> {
    config: Arc<Config<F>>,
    tx: mpsc::UnboundedSender<Item>,
    ids: Arc<AtomicU64>,
    launch: Arc<Launch>,
}

impl<F: BatchFormat> Batch<F> {
    pub(crate) fn new<S: Client<B>, B: ReplayBody>(inner: S, config: Config<F>) -> Self {
        let config = Arc::new(config);
        let (tx, rx) = mpsc::unbounded_channel();
        let worker: WorkerFuture = Box::pin(Worker::<S, F, B>::new(inner, config.clone(), rx));
        Batch {
            config,
            tx,
            ids: Arc::new(AtomicU64::new(0)),
            launch: Arc::new(Launch {
                started: AtomicBool::new(false),
                worker: Mutex::new(Some(worker)),
            }),
        }
    }

    /// Turns one request into a pending item, or says why it cannot be batched.
    fn submit<B: ReplayBody>(
        &self,
        req: http::Request<B>,
    ) -> Result<oneshot::Receiver<super::ItemOutcome>, BatchError> {
        let (head, body) = req.into_parts();
        let body = body.to_bytes().ok_or(BatchError::NotBuffered)?;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let encoded = self
            .config
            .format
            .encode_item(id, &head, &body)
            .map_err(|e| BatchError::Unencodable {
                reason: e.to_string(),
            })?;
        let alone = self.config.format.envelope().len_of(1, encoded.len());
        if alone > self.config.max_bytes {
            return Err(BatchError::ItemTooLarge {
                bytes: alone,
                max_bytes: self.config.max_bytes,
            });
        }
        let identity = self.config.format.identity(&head, &body).map(Arc::from);
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let item = Item {
            id,
            bytes: encoded,
            origin: Origin::of(&head),
            headers: head.headers,
            identity,
            due: crate::clock::later(now, self.config.linger),
            not_before: now,
            lane: 0,
            cap: usize::MAX,
            after: 0,
            batches: 0,
            retries: 0,
            attempts: 0,
            unsure: false,
            reply,
        };
        self.launch.ensure_started();
        self.tx.send(item).map_err(|_| BatchError::Closed)?;
        Ok(rx)
    }
}

impl<F, B> Service<http::Request<B>> for Batch<F>
where
    F: BatchFormat,
    B: ReplayBody,
{
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each item has a caller waiting on it, so the callers' own concurrency bounds what
        // is pending; readiness is decided per batch at the inner service.
        if self.tx.is_closed() {
            return Poll::Ready(Err(BatchError::Closed.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.submit(req) {
            Ok(rx) => ResponseFuture::waiting(rx),
            Err(err) => ResponseFuture::failed(err),
        }
    }
}

impl<F> Clone for Batch<F> {
    fn clone(&self) -> Self {
        Batch {
            config: self.config.clone(),
            tx: self.tx.clone(),
            ids: self.ids.clone(),
            launch: self.launch.clone(),
        }
    }
}

impl<F> fmt::Debug for Batch<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("config", &self.config)
            .field("started", &self.launch.started.load(Ordering::Relaxed))
            .finish()
    }
}
