//! The bulk runner: counts that add up, throttled progress, bounded concurrency, and a run
//! against the mock server with injected 503s where every job is accounted for.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, BoxError};
use tower_throttle::{run_bulk, BulkOptions, JobOutcome, Progress};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn counts_add_up_and_progress_is_throttled() {
    // Job i answers after 10 ms: 2xx for most, 500 for every 7th, an error for every 11th.
    let api = service_fn(|req: Request<u32>| async move {
        tokio::time::sleep(ms(10)).await;
        let i = *req.body();
        if i.is_multiple_of(11) {
            return Err(BoxError::from("reset"));
        }
        let mut resp = Response::new(());
        if i.is_multiple_of(7) {
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        Ok(resp)
    });
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let options = {
        let seen = seen.clone();
        BulkOptions::default()
            .concurrency(5)
            .on_progress(move |p| seen.lock().unwrap().push(*p))
    };
    let jobs = stream::iter((1..=200).map(Request::new));
    let report = run_bulk(jobs, api, options).await;

    let errors = (1..=200).filter(|i| i % 11 == 0).count() as u64;
    let server_errors = (1..=200).filter(|i| i % 7 == 0 && i % 11 != 0).count() as u64;
    assert_eq!(report.processed, 200);
    assert_eq!(report.failed, errors + server_errors);
    assert_eq!(report.succeeded, 200 - errors - server_errors);
    assert_eq!(report.dead_lettered, 0);
    // 200 jobs, 5 at a time, 10 ms each.
    assert_eq!(report.elapsed, ms(400));
    assert_eq!(report.rate_per_sec, 500.0);

    let seen = seen.lock().unwrap();
    for p in seen.iter() {
        assert_eq!(p.processed, p.succeeded + p.failed + p.dead_lettered);
        assert_eq!(p.total, Some(200));
    }
    // Reports every 100 ms while running (100, 200, 300, 400 ms), then the final one.
    let times: Vec<Duration> = seen.iter().map(|p| p.elapsed).collect();
    assert_eq!(times, [ms(100), ms(200), ms(300), ms(400), ms(400)]);
    // The first job of the batch finishing at 100 ms triggers the report: 45 + 1 done.
    assert_eq!(seen[0].processed, 46);
    assert_eq!(seen[0].rate_per_sec, 460.0);
    assert_eq!(seen[0].eta, Duration::try_from_secs_f64(154.0 / 460.0).ok());
    let last = seen.last().unwrap();
    assert_eq!((last.processed, last.eta), (200, Some(Duration::ZERO)));
}

#[tokio::test(start_paused = true)]
async fn progress_every_n_items_and_custom_classifier() {
    let api = service_fn(|n: u32| async move { Ok::<_, Infallible>(n) });
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let options = {
        let seen = seen.clone();
        BulkOptions::new(|r: &Result<u32, BoxError>| match r {
            Ok(n) if n % 2 == 0 => JobOutcome::Succeeded,
            Ok(_) => JobOutcome::DeadLettered,
            Err(_) => JobOutcome::Failed,
        })
        .progress_interval(Duration::from_secs(3600))
        .progress_every(25)
        .on_progress(move |p| seen.lock().unwrap().push(p.processed))
    };
    // A stream without an exact size hint: no total, no ETA.
    let jobs = stream::iter(0..100u32).filter(|_| std::future::ready(true));
    let report = run_bulk(jobs, api, options).await;
    assert_eq!(
        (report.succeeded, report.dead_lettered, report.failed),
        (50, 50, 0)
    );
    assert_eq!(*seen.lock().unwrap(), [25, 50, 75, 100, 100]);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded_and_the_stream_is_pulled_lazily() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let pulled = Arc::new(AtomicUsize::new(0));
    let api = {
        let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
        service_fn(move |_: u32| {
            let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(ms(5)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        })
    };
    let jobs = {
        let pulled = pulled.clone();
        stream::iter(0..1000u32).inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
    };
    let options = BulkOptions::new(|_: &Result<(), BoxError>| JobOutcome::Succeeded).concurrency(8);
    let run = tokio::spawn(run_bulk(jobs, api, options));
    tokio::time::sleep(ms(1)).await;
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        8,
        "only as many jobs as slots"
    );
    let report = run.await.unwrap();
    assert_eq!(report.processed, 1000);
    assert_eq!(max_seen.load(Ordering::SeqCst), 8);
}

/// A server whose every call takes 7 ms (so that no retry falls due exactly when a call ends); `fails(id, call_number)` picks the 503s. Records
/// (id, start) per call.
#[derive(Clone)]
struct Flaky {
    start: tokio::time::Instant,
    log: Arc<Mutex<Vec<(u32, Duration)>>>,
    fails: fn(u32, usize) -> bool,
}

impl Flaky {
    fn new(fails: fn(u32, usize) -> bool) -> Self {
        Flaky {
            start: tokio::time::Instant::now(),
            log: Arc::default(),
            fails,
        }
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        let this = self.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let id: u32 = req.headers()["x-id"].to_str().unwrap().parse().unwrap();
            let fail = {
                let mut log = this.log.lock().unwrap();
                let n = log.iter().filter(|(i, _)| *i == id).count();
                log.push((id, this.start.elapsed()));
                (this.fails)(id, n)
            };
            async move {
                tokio::time::sleep(ms(7)).await;
                let status = if fail { 503 } else { 200 };
                Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
            }
        })
    }

    fn calls_of(&self, id: u32) -> Vec<Duration> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, t)| *t)
            .collect()
    }

    fn distinct_by(&self, t: Duration) -> usize {
        let log = self.log.lock().unwrap();
        let ids: std::collections::HashSet<u32> = log
            .iter()
            .filter(|(_, at)| *at <= t)
            .map(|(i, _)| *i)
            .collect();
        ids.len()
    }
}

/// Retries with an exact 1 s, 2 s, ... backoff and no budget.
fn retrying() -> tower_throttle::RetryLayer {
    let backoff = tower_throttle::backoff::Backoff::builder()
        .jitter(tower_throttle::backoff::Jitter::None)
        .build()
        .unwrap();
    tower_throttle::RetryLayer::new(
        tower_throttle::RetryPolicy::default()
            .with_backoff(backoff)
            .without_budget(),
    )
}

fn id_jobs(n: u32) -> impl futures_util::Stream<Item = Request<Full<Bytes>>> {
    stream::iter((0..n).map(|i| {
        Request::post("http://api.example/v1/users")
            .header("x-id", i.to_string())
            .body(Full::new(Bytes::from(format!("{{\"id\":{i}}}"))))
            .unwrap()
    }))
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_out_its_backoff_gives_its_bulk_slot_back() {
    // One slot, 200 jobs of 7 ms, job 0 answered 503 once (1 s backoff). Holding the slot
    // through the backoff made the run 2.4 s; handing it back, 1.4 s plus the retry's 7 ms.
    let server = Flaky::new(|id, n| id == 0 && n == 0);
    let stack = tower::ServiceBuilder::new()
        .layer(retrying())
        .service(server.service());
    let report = run_bulk(id_jobs(200), stack, BulkOptions::default().concurrency(1)).await;
    assert_eq!((report.processed, report.succeeded), (200, 200));
    assert_eq!(report.elapsed, ms(1_407));
    // The retry was due at 1.007 s, waited for the running job (143, 1.001-1.008 s) and went
    // before the jobs not yet started.
    assert_eq!(server.calls_of(0), vec![ms(0), ms(1_008)]);
    assert_eq!(server.calls_of(143), vec![ms(1_001)]);
    assert_eq!(server.calls_of(144), vec![ms(1_015)]);

    // With deferral off the old behaviour is back: the slot idles for the backoff.
    let server = Flaky::new(|id, n| id == 0 && n == 0);
    let stack = tower::ServiceBuilder::new()
        .layer(retrying())
        .service(server.service());
    let options = BulkOptions::default().concurrency(1).max_deferred(0);
    let report = run_bulk(id_jobs(200), stack, options).await;
    assert_eq!(report.succeeded, 200);
    assert_eq!(report.elapsed, ms(2_407));
}

#[tokio::test(start_paused = true)]
async fn deferred_retries_are_bounded_so_a_failing_run_does_not_pull_the_whole_stream() {
    // Everything fails, always: 5 attempts per job over 15 s. Two slots plus at most three
    // deferred retries: five jobs in progress, not the whole stream.
    let server = Flaky::new(|_, _| true);
    let stack = tower::ServiceBuilder::new()
        .layer(retrying())
        .service(server.service());
    let options = BulkOptions::default().concurrency(2).max_deferred(3);
    let run = tokio::spawn(run_bulk(id_jobs(1_000), stack, options));
    tokio::time::sleep(ms(500)).await;
    assert_eq!(server.distinct_by(ms(500)), 5);
    run.abort();
}

#[tokio::test(start_paused = true)]
async fn ten_percent_503s_through_retries_keep_every_slot_busy() {
    // 16 slots, 2,000 jobs of 7 ms, every tenth job refused once: busy slots finish the
    // first attempts in 2000 x 7 ms / 16 = 0.875 s; the retries come 1 s after each refusal,
    // so the run ends soon after the last of them. Holding slots through the backoffs took
    // about 13 s (each slot idle 1 s for each of its ~12 refusals).
    let server = Flaky::new(|id, n| id % 10 == 0 && n == 0);
    let stack = tower::ServiceBuilder::new()
        .layer(retrying())
        .service(server.service());
    let report = run_bulk(
        id_jobs(2_000),
        stack,
        BulkOptions::default().concurrency(16),
    )
    .await;
    assert_eq!((report.processed, report.succeeded), (2_000, 2_000));
    assert!(report.elapsed <= ms(2_000), "{:?}", report.elapsed);
    for id in (0..2_000).step_by(10) {
        assert_eq!(server.calls_of(id).len(), 2, "job {id}");
    }
}

#[cfg(feature = "mock")]
mod against_mock {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceBuilder;
    use tower_throttle::metrics::Stats;
    use tower_throttle::mock::MockServer;
    use tower_throttle::QueueLayer;
    use tower_throttle::{
        dead_letter::{DeadLetterStore, MemoryStore},
        DeadLetterLayer,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_with_ten_percent_503s_accounts_for_every_job() {
        const JOBS: u64 = 500;
        let server = MockServer::builder()
            .fail_ratio(0.1)
            .seed(7)
            .start()
            .await
            .unwrap();
        let store = MemoryStore::new();
        let stats = Stats::new();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let queue = QueueLayer::builder()
            .capacity(64)
            .concurrency(8)
            .stats(stats.clone())
            .build()
            .unwrap();
        let queue_handle = queue.handle();
        let stack = ServiceBuilder::new()
            .layer(DeadLetterLayer::new(store.clone()).with_stats(stats.clone()))
            .layer(queue)
            .service(client);
        let uri = server.uri("/v1/users");
        let jobs = stream::iter((0..JOBS).map(move |i| {
            Request::post(uri.clone())
                .header("x-request-id", format!("job-{i}"))
                .body(Full::new(Bytes::from(format!(r#"{{"id":{i}}}"#))))
                .unwrap()
        }));
        let last: Arc<Mutex<Option<Progress>>> = Arc::default();
        let options = {
            let last = last.clone();
            BulkOptions::default()
                .concurrency(32)
                .on_progress(move |p| *last.lock().unwrap() = Some(*p))
        };
        let report = run_bulk(jobs, stack, options).await;

        let mock = server.stats();
        assert_eq!(report.processed, JOBS);
        assert_eq!(
            report.succeeded + report.failed + report.dead_lettered,
            JOBS,
            "every job accounted for exactly"
        );
        assert_eq!(mock.received, JOBS);
        assert_eq!(report.succeeded, mock.accepted);
        assert_eq!(report.dead_lettered, mock.failed);
        assert_eq!(report.failed, 0);
        assert!(
            (25..=75).contains(&mock.failed),
            "about 10% injected 503s, got {}",
            mock.failed
        );
        // The store holds exactly the dead-lettered jobs, each once.
        let letters = store.list().await.unwrap();
        assert_eq!(letters.len() as u64, report.dead_lettered);
        assert!(letters.iter().all(|l| l.status == Some(503)));
        assert_eq!(stats.snapshot().dead_letters_written, report.dead_lettered);
        assert_eq!((queue_handle.size(), queue_handle.pending()), (0, 0));
        let last = last.lock().unwrap().expect("a final progress report");
        assert_eq!(last.processed, JOBS);
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_retries_over_loopback_deliver_every_job_once() {
        // 10% 503s on an unlimited server, 8 slots, retries handing their slot back: every
        // job delivered, none twice, about 1.1 attempts per job.
        const JOBS: u64 = 1_000;
        let server = MockServer::builder()
            .fail_ratio(0.1)
            .seed(3)
            .start()
            .await
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let backoff = tower_throttle::backoff::Backoff::builder()
            .base(ms(20))
            .build()
            .unwrap();
        let stack = ServiceBuilder::new()
            .layer(tower_throttle::RetryLayer::new(
                tower_throttle::RetryPolicy::default()
                    .with_backoff(backoff)
                    .without_budget(),
            ))
            .map_err(BoxError::from)
            .service(client);
        let uri = server.uri("/v1/users");
        let jobs = stream::iter((0..JOBS).map(move |i| {
            Request::post(uri.clone())
                .header("x-request-id", format!("job-{i}"))
                .body(Full::new(Bytes::from(format!(r#"{{"id":{i}}}"#))))
                .unwrap()
        }));
        let report = run_bulk(jobs, stack, BulkOptions::default().concurrency(8)).await;
        let mock = server.stats();
        assert_eq!((report.processed, report.succeeded), (JOBS, JOBS));
        assert_eq!(mock.distinct_ids, JOBS);
        assert_eq!(mock.accepted, JOBS, "a job was delivered twice");
        assert!(mock.failed > 0);
        assert!(
            mock.received as f64 <= JOBS as f64 * 1.15,
            "{} attempts for {JOBS} jobs",
            mock.received
        );
        server.shutdown().await;
    }
}
