//! QueueLayer: bounds, FIFO, priorities, interval caps (exact start times in paused time),
//! cancellation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_throttle::{metrics::Stats, ConfigError, ThrottleError};
use tower_throttle::{
    queue::{ByExtension, Priority, Queue},
    QueueLayer,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records (label, start offset) for every call, then takes `work` to answer.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    work: Duration,
    log: Arc<Mutex<Vec<(u32, Duration)>>>,
}

impl Recorder {
    fn new(work: Duration) -> Self {
        Recorder {
            start: Instant::now(),
            work,
            log: Arc::default(),
        }
    }

    fn log(&self) -> Vec<(u32, Duration)> {
        self.log.lock().unwrap().clone()
    }

    fn order(&self) -> Vec<u32> {
        self.log().into_iter().map(|(n, _)| n).collect()
    }

    fn times(&self) -> Vec<Duration> {
        self.log().into_iter().map(|(_, t)| t).collect()
    }
}

impl Service<u32> for Recorder {
    type Response = u32;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u32, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        self.log.lock().unwrap().push((n, self.start.elapsed()));
        let work = self.work;
        Box::pin(async move {
            tokio::time::sleep(work).await;
            Ok(n)
        })
    }
}

fn spawn_all<S>(svc: &S, ns: impl IntoIterator<Item = u32>) -> Vec<tokio::task::JoinHandle<u32>>
where
    S: Service<u32, Response = u32, Error = tower::BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    ns.into_iter()
        .map(|n| {
            let fut = svc.clone().oneshot(n);
            tokio::spawn(async move { fut.await.unwrap() })
        })
        .collect()
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<u32>>) {
    for h in handles {
        h.await.unwrap();
    }
}

#[test]
fn zero_capacity_concurrency_or_interval_is_a_config_error() {
    let zero = |name| ConfigError::Zero { name };
    assert_eq!(
        QueueLayer::builder().capacity(0).build().unwrap_err(),
        zero("capacity")
    );
    assert_eq!(
        QueueLayer::builder().concurrency(0).build().unwrap_err(),
        zero("concurrency")
    );
    assert_eq!(
        QueueLayer::builder()
            .interval_cap(5, Duration::ZERO)
            .build()
            .unwrap_err(),
        zero("interval")
    );
    assert_eq!(
        QueueLayer::builder()
            .interval_cap(0, ms(1000))
            .build()
            .unwrap_err(),
        zero("interval_cap")
    );
}

#[tokio::test(start_paused = true)]
async fn full_queue_refuses_at_once_and_running_requests_do_not_count() {
    let rec = Recorder::new(ms(100));
    let layer = QueueLayer::builder()
        .capacity(2)
        .concurrency(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(rec.clone());
    // 3 run, 2 wait.
    let handles = spawn_all(&svc, 0..5);
    tokio::task::yield_now().await;
    assert_eq!((handle.size(), handle.pending()), (2, 3));

    let t0 = Instant::now();
    let err = svc.clone().oneshot(99).await.unwrap_err();
    assert_eq!(t0.elapsed(), Duration::ZERO, "refusal must not wait");
    assert_eq!(
        ThrottleError::from_box(&err),
        Some(&ThrottleError::QueueFull { capacity: 2 })
    );
    join_all(handles).await;
    assert_eq!(rec.times(), [ms(0), ms(0), ms(0), ms(100), ms(100)]);
    assert_eq!((handle.size(), handle.pending()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn fifo_with_concurrency_one() {
    let rec = Recorder::new(ms(10));
    let svc = QueueLayer::builder()
        .concurrency(1)
        .build()
        .unwrap()
        .layer(rec.clone());
    join_all(spawn_all(&svc, 0..20)).await;
    assert_eq!(rec.order(), (0..20).collect::<Vec<_>>());
    let expected: Vec<_> = (0..20).map(|i| ms(10 * i)).collect();
    assert_eq!(rec.times(), expected);
}

#[tokio::test(start_paused = true)]
async fn priorities_run_highest_first_fifo_among_equals() {
    let rec = Recorder::new(ms(10));
    // Priority = n / 10: labels 0..9 have priority 0, 10..19 priority 1, 20..29 priority 2.
    let svc = QueueLayer::builder()
        .concurrency(1)
        .priority(|n: &u32| (*n / 10) as i32)
        .build()
        .unwrap()
        .layer(rec.clone());
    // 0 starts at once; the rest wait and are ordered by priority, then arrival.
    let handles = spawn_all(&svc, [0, 1, 11, 21, 2, 12, 22, 3]);
    join_all(handles).await;
    assert_eq!(rec.order(), [0, 21, 22, 11, 12, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn priority_from_request_extension() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let log = log.clone();
        tower::service_fn(move |req: http::Request<&'static str>| {
            log.lock().unwrap().push(*req.body());
            async {
                tokio::time::sleep(ms(5)).await;
                Ok::<_, Infallible>(())
            }
        })
    };
    let svc = QueueLayer::builder()
        .concurrency(1)
        .priority(ByExtension)
        .build()
        .unwrap()
        .layer(inner);
    let mut handles = Vec::new();
    for (body, prio) in [
        ("a", None),
        ("low", Some(-5)),
        ("b", None),
        ("urgent", Some(10)),
    ] {
        let mut req = http::Request::new(body);
        if let Some(p) = prio {
            req.extensions_mut().insert(Priority(p));
        }
        handles.push(tokio::spawn(svc.clone().oneshot(req)));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(*log.lock().unwrap(), ["a", "urgent", "b", "low"]);
}

#[tokio::test(start_paused = true)]
async fn interval_cap_exact_start_times() {
    // 2 starts per 1000 ms; requests are instant, so only the window paces them.
    let rec = Recorder::new(Duration::ZERO);
    let svc = QueueLayer::builder()
        .interval_cap(2, ms(1000))
        .build()
        .unwrap()
        .layer(rec.clone());
    join_all(spawn_all(&svc, 0..5)).await;
    assert_eq!(rec.times(), [ms(0), ms(0), ms(1000), ms(1000), ms(2000)]);
    assert_eq!(rec.order(), [0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn interval_cap_is_a_rolling_window() {
    // A fixed window would start #1 at 900 and #2, #3 at 1000 (3 starts within 100 ms, 4 in
    // the 1000 ms from 900). The rolling window never has more than 2 in any 1000 ms.
    let rec = Recorder::new(Duration::ZERO);
    let svc = QueueLayer::builder()
        .interval_cap(2, ms(1000))
        .build()
        .unwrap()
        .layer(rec.clone());
    let mut handles = spawn_all(&svc, [0]);
    tokio::time::sleep(ms(900)).await;
    handles.extend(spawn_all(&svc, [1, 2, 3]));
    join_all(handles).await;
    assert_eq!(rec.times(), [ms(0), ms(900), ms(1000), ms(1900)]);
}

#[tokio::test(start_paused = true)]
async fn eighty_per_second_with_concurrency_cap() {
    let rec = Recorder::new(ms(50));
    let layer = QueueLayer::builder()
        .capacity(1000)
        .concurrency(10)
        .interval_cap(80, ms(1000))
        .build()
        .unwrap();
    let svc = layer.layer(rec.clone());
    join_all(spawn_all(&svc, 0..400)).await;
    let times = rec.times();
    assert_eq!(times.len(), 400);
    // Never more than 80 starts in any 1000 ms.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < *t + ms(1000))
            .count();
        assert!(
            in_window <= 80,
            "{in_window} starts in the second from {t:?}"
        );
    }
    // 10 at a time, 50 ms each: 80 starts take 400 ms, then the window holds until 1000 ms.
    assert_eq!(times[79], ms(350));
    assert_eq!(times[80], ms(1000));
    assert_eq!(times[399], ms(4350));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_future_frees_its_place() {
    let rec = Recorder::new(ms(100));
    let layer = QueueLayer::builder()
        .capacity(1)
        .concurrency(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(rec.clone());

    let running = tokio::spawn(svc.clone().oneshot(0));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!((handle.size(), handle.pending()), (1, 1));
    assert!(svc.clone().oneshot(2).await.is_err(), "queue is full");

    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!((handle.size(), handle.pending()), (0, 1));

    // The freed place takes a new request, which runs right after the first.
    let next = tokio::spawn(svc.clone().oneshot(3));
    assert_eq!(running.await.unwrap().unwrap(), 0);
    assert_eq!(next.await.unwrap().unwrap(), 3);
    assert_eq!(rec.log(), [(0, ms(0)), (3, ms(100))]);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_running_future_frees_its_slot() {
    let rec = Recorder::new(ms(1000));
    let layer = QueueLayer::builder().concurrency(1).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(rec.clone());
    let first = tokio::spawn(svc.clone().oneshot(0));
    let second = tokio::spawn(svc.clone().oneshot(1));
    tokio::time::sleep(ms(10)).await;
    first.abort();
    assert_eq!(second.await.unwrap().unwrap(), 1);
    assert_eq!(rec.log(), [(0, ms(0)), (1, ms(10))]);
    assert_eq!((handle.size(), handle.pending()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_head_hands_the_timer_to_the_next() {
    // #0 fills the 1-per-second window; #1 waits as head with the timer; #2 behind it.
    let rec = Recorder::new(Duration::ZERO);
    let svc = QueueLayer::builder()
        .interval_cap(1, ms(1000))
        .build()
        .unwrap()
        .layer(rec.clone());
    let first = spawn_all(&svc, [0]);
    tokio::task::yield_now().await;
    let head = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let next = spawn_all(&svc, [2]);
    tokio::time::sleep(ms(300)).await;
    head.abort();
    join_all(first).await;
    join_all(next).await;
    assert_eq!(rec.log(), [(0, ms(0)), (2, ms(1000))]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_started_but_unpolled_future_returns_its_start() {
    // Capacity for one start per second. #1 is started when #0 finishes but dropped before
    // it runs: its start is given back, so #2 runs at once instead of a second later.
    let rec = Recorder::new(ms(10));
    let layer = QueueLayer::builder()
        .concurrency(1)
        .interval_cap(2, ms(1000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc: Queue<Recorder, _> = layer.layer(rec.clone());
    let mut first = tokio_test::task::spawn(svc.clone().oneshot(0));
    let mut second = tokio_test::task::spawn(svc.clone().oneshot(1));
    assert!(first.poll().is_pending());
    assert!(second.poll().is_pending());
    tokio::time::sleep(ms(10)).await;
    assert!(first.poll().is_ready());
    // #1 has been started by #0's completion; it has not noticed yet.
    assert_eq!((handle.size(), handle.pending()), (0, 1));
    drop(second);
    assert_eq!((handle.size(), handle.pending()), (0, 0));
    let third = svc.clone().oneshot(2).await.unwrap();
    assert_eq!(third, 2);
    assert_eq!(rec.log(), [(0, ms(0)), (2, ms(10))]);
}

#[tokio::test(start_paused = true)]
async fn stats_see_queue_size_and_pending() {
    let stats = Stats::new();
    let layer = QueueLayer::builder()
        .concurrency(2)
        .stats(stats.clone())
        .build()
        .unwrap();
    let svc = layer.layer(Recorder::new(ms(100)));
    let handles = spawn_all(&svc, 0..5);
    tokio::task::yield_now().await;
    let s = stats.snapshot();
    assert_eq!((s.queue_size, s.queue_pending), (3, 2));
    join_all(handles).await;
    let s = stats.snapshot();
    assert_eq!((s.queue_size, s.queue_pending), (0, 0));
}

// ----- Deferred retries (issue 16, item 4) -----

/// Answers `n` after 7 ms; the first call for each `n` in `fail_once` gets an error the retry
/// policy treats as transient. Logs (n, start) per call.
#[derive(Clone)]
struct FailsOnce {
    recorder: Recorder,
    fail_once: Arc<Mutex<Vec<u32>>>,
}

impl Service<http::Request<u32>> for FailsOnce {
    type Response = http::Response<u32>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<u32>) -> Self::Future {
        let n = *req.body();
        let fail = {
            let mut list = self.fail_once.lock().unwrap();
            let hit = list.iter().position(|m| *m == n);
            hit.map(|i| list.remove(i)).is_some()
        };
        let fut = self.recorder.call(n);
        Box::pin(async move {
            let n = fut.await.unwrap();
            let status = if fail { 503 } else { 200 };
            Ok(http::Response::builder().status(status).body(n).unwrap())
        })
    }
}

impl tower_throttle::retry::ReplayBody for Wrapped {
    fn to_bytes(&self) -> Option<bytes::Bytes> {
        Some(bytes::Bytes::copy_from_slice(&self.0.to_be_bytes()))
    }
    fn from_bytes(b: bytes::Bytes) -> Self {
        Wrapped(u32::from_be_bytes(b[..4].try_into().unwrap()))
    }
}

/// A replayable request body holding a job number.
#[derive(Debug, Clone, Copy)]
struct Wrapped(u32);

fn retry_queue(
    recorder: &Recorder,
    fail_once: Vec<u32>,
    defer: bool,
) -> (
    impl Service<
            http::Request<Wrapped>,
            Response = http::Response<u32>,
            Error = tower::BoxError,
            Future = impl Send,
        > + Clone,
    tower_throttle::queue::QueueHandle,
) {
    let queue = QueueLayer::builder()
        .capacity(1_000)
        .concurrency(1)
        .defer_retries(defer)
        .build()
        .unwrap();
    let handle = queue.handle();
    let backoff = tower_throttle::backoff::Backoff::builder()
        .jitter(tower_throttle::backoff::Jitter::None)
        .build()
        .unwrap();
    let inner = FailsOnce {
        recorder: recorder.clone(),
        fail_once: Arc::new(Mutex::new(fail_once)),
    };
    let svc = tower::ServiceBuilder::new()
        .layer(queue)
        .layer(tower_throttle::RetryLayer::new(
            tower_throttle::RetryPolicy::default()
                .with_backoff(backoff)
                .without_budget(),
        ))
        .map_request(|req: http::Request<Wrapped>| req.map(|w| w.0))
        .service(inner);
    (svc, handle)
}

fn job(n: u32) -> http::Request<Wrapped> {
    http::Request::new(Wrapped(n))
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_out_its_backoff_gives_its_queue_slot_back() {
    // Concurrency 1; request 0 fails once (1 s backoff), requests 1..=200 take 7 ms each.
    let recorder = Recorder::new(ms(7));
    let (svc, handle) = retry_queue(&recorder, vec![0], true);
    let handles: Vec<_> = (0..=200)
        .map(|n| tokio::spawn(svc.clone().oneshot(job(n))))
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    let log = recorder.log();
    let at = |n: u32| -> Vec<Duration> {
        log.iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, t)| *t)
            .collect()
    };
    // While 0 waited, the others ran; its retry (due 1.007 s) took the slot when the running
    // request (143, 1.001-1.008 s) finished, ahead of everything queued after it.
    assert_eq!(at(1), vec![ms(7)]);
    assert_eq!(at(0), vec![ms(0), ms(1_008)]);
    assert_eq!(at(143), vec![ms(1_001)]);
    assert_eq!(at(144), vec![ms(1_015)]);
    assert_eq!((handle.size(), handle.pending()), (0, 0));

    // Deferral off: the slot idles through the backoff, as before.
    let recorder = Recorder::new(ms(7));
    let (svc, _) = retry_queue(&recorder, vec![0], false);
    let handles: Vec<_> = (0..=3)
        .map(|n| tokio::spawn(svc.clone().oneshot(job(n))))
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        recorder.times(),
        vec![ms(0), ms(1_007), ms(1_014), ms(1_021), ms(1_028)]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_deferred_or_requeued_request_frees_its_place() {
    let recorder = Recorder::new(ms(7));
    let (svc, handle) = retry_queue(&recorder, vec![0, 1], true);
    // 0 fails and defers; drop it while deferred.
    let first = tokio::spawn(svc.clone().oneshot(job(0)));
    tokio::time::sleep(ms(10)).await;
    assert_eq!((handle.size(), handle.pending()), (0, 0));
    first.abort();
    let _ = first.await;
    assert_eq!((handle.size(), handle.pending()), (0, 0));

    // 1 fails and defers; 2 runs long enough for 1's retry to queue behind it; drop 1 then.
    let second = tokio::spawn(svc.clone().oneshot(job(1)));
    tokio::time::sleep(ms(8)).await;
    let blockers: Vec<_> = (10..160)
        .map(|n| tokio::spawn(svc.clone().oneshot(job(n))))
        .collect();
    tokio::time::sleep(ms(1_000)).await;
    // 1's retry (due at 1.017 s) is queued behind the running blocker.
    assert!(handle.size() > 0);
    second.abort();
    let _ = second.await;
    for b in blockers {
        assert_eq!(b.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!((handle.size(), handle.pending()), (0, 0));
    // Request 1 was attempted once and never again.
    assert_eq!(recorder.order().iter().filter(|n| **n == 1).count(), 1);
}
