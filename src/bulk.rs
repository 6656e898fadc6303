//! Push a stream of jobs through any service stack with bounded concurrency, progress
//! reports and a final count where every job is accounted for.
//!
//! [`run_bulk`] pulls requests from a [`Stream`] only as fast as `concurrency` slots free up
//! (so a stream of a million records never sits in memory), sends each through a clone of the
//! service (the shared gate, queue and dead-letter layers see them all), and decides each
//! job's outcome with a classifier. `succeeded + accepted + failed + dead_lettered ==
//! processed` holds in every [`Progress`] and in the [`BulkReport`].
//!
//! **Retries do not idle a slot.** With a [`RetryLayer`](crate::RetryLayer) in the stack, a
//! request waiting out its backoff (or a server's `Retry-After`) gives its slot back: the next
//! job starts meanwhile, and the retry queues for a slot again once its delay is over, ahead of
//! jobs not yet started. So 10% transient failures with a 1 s backoff do not cut throughput to
//! `concurrency` requests per second; at most [`max_deferred`](BulkOptions::max_deferred)
//! requests wait this way at once (beyond that a retry waits holding its slot, which keeps
//! memory bounded when every request is failing).
//!
//! The default classifier for HTTP ([`JobOutcome::classify_http`]): a response or error marked by the
//! [`DeadLetterLayer`](crate::DeadLetterLayer) is *dead-lettered*, a `202 Accepted` *accepted*
//! (taken by an asynchronous endpoint, such as Mailchimp's batches, outcome not yet known:
//! never counted as delivered), any other 2xx response *succeeded*, anything else *failed*.
//!
//! ```
//! use std::time::Duration;
//! use futures_util::stream;
//! use http::{Request, Response};
//! use tower::service_fn;
//! use tower_throttle::{run_bulk, BulkOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let api = service_fn(|_req: Request<String>| async {
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(()))
//! });
//! let jobs = stream::iter((0..100).map(|i| Request::new(format!("user-{i}"))));
//! let options = BulkOptions::default()
//!     .concurrency(10)
//!     .on_progress(|p| println!("{}/{:?} at {:.0}/s", p.processed, p.total, p.rate_per_sec));
//! let report = run_bulk(jobs, api, options).await;
//! assert_eq!((report.processed, report.succeeded), (100, 100));
//! assert_eq!(report.elapsed, Duration::from_secs(1));
//! # }
//! ```

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use crate::queue::shared::{Config, Shared};
use crate::queue::{NoPriority, Queue};

use crate::dead_letter::{DeadLettered, DeadLetteredError};

/// How one job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    /// Delivered.
    Succeeded,
    /// Accepted by an asynchronous endpoint (`202 Accepted`): queued at the vendor, its
    /// outcome not yet known.
    Accepted,
    /// Not delivered and not kept anywhere: the caller must act on it.
    Failed,
    /// Not delivered, but kept in a dead-letter store for replay.
    DeadLettered,
}

impl JobOutcome {
    /// The default classifier for HTTP stacks: dead-lettered when marked by the
    /// [`DeadLetterLayer`](crate::DeadLetterLayer), accepted on 202, succeeded on any other
    /// 2xx, failed otherwise.
    pub fn classify_http<B>(result: &Result<http::Response<B>, BoxError>) -> JobOutcome {
        match result {
            Ok(resp) if resp.extensions().get::<DeadLettered>().is_some() => {
                JobOutcome::DeadLettered
            }
            Ok(resp) if resp.status() == http::StatusCode::ACCEPTED => JobOutcome::Accepted,
            Ok(resp) if resp.status().is_success() => JobOutcome::Succeeded,
            Ok(_) => JobOutcome::Failed,
            Err(e) if DeadLetteredError::find(e).is_some() => JobOutcome::DeadLettered,
            Err(_) => JobOutcome::Failed,
        }
    }
}

/// Counts so far, handed to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Jobs finished (`succeeded + accepted + failed + dead_lettered`).
    pub processed: u64,
    /// Jobs delivered.
    pub succeeded: u64,
    /// Jobs accepted by an asynchronous endpoint, outcome not yet known.
    pub accepted: u64,
    /// Jobs failed and not kept.
    pub failed: u64,
    /// Jobs kept as dead letters.
    pub dead_lettered: u64,
    /// Jobs expected in all, when known ([`BulkOptions::total`] or an exact `size_hint`).
    pub total: Option<u64>,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Jobs finished per second since the start.
    pub rate_per_sec: f64,
    /// Time left at the current rate, when the total is known and the rate is not zero.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Jobs not finished yet, when the total is known.
    pub fn remaining(&self) -> Option<u64> {
        self.total.map(|t| t.saturating_sub(self.processed))
    }

    /// What is left, for a progress bar's message: `eta 1m20s` while the rate says at least
    /// a second, `3 left` once it says less but jobs are still out (the last of a run are
    /// usually retries waiting out a backoff, which a rate cannot predict: a bar that read
    /// `eta 0s` for ten seconds would be wrong), `done` at the end, `eta ?` without a total
    /// or a rate.
    pub fn eta_label(&self) -> String {
        match (self.remaining(), self.eta) {
            (Some(0), _) => "done".to_string(),
            (Some(left), Some(eta)) if eta < Duration::from_secs(1) => format!("{left} left"),
            (_, Some(eta)) => format!("eta {}", short_duration(eta)),
            (_, None) => "eta ?".to_string(),
        }
    }
}

/// One plain line for a log or a pipe (no terminal control codes), at most 80 columns for
/// runs of up to ten million jobs: `[1m05s] 6500/10000 65% 100/s 2 failed 1 dead-lettered
/// eta 35s`.
impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", short_duration(self.elapsed), self.processed)?;
        if let Some(total) = self.total {
            // Floored, so a run with jobs still out never reads 100%.
            let percent = (self.processed * 100).checked_div(total).unwrap_or(100);
            write!(f, "/{total} {percent}%")?;
        }
        write!(
            f,
            " {:.0}/s {} failed {} dead-lettered {}",
            self.rate_per_sec,
            self.failed,
            self.dead_lettered,
            self.eta_label()
        )
    }
}

/// `950ms`, `42s`, `1m05s`, `2h03m`: short enough for a progress line, rounded down (an ETA
/// shown as `1m05s` is at least that).
pub(crate) fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.subsec_millis()),
        1..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3_600, secs / 60 % 60),
    }
}

/// The result of [`run_bulk`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BulkReport {
    /// Jobs taken from the stream; all of them finished.
    pub processed: u64,
    /// Jobs delivered.
    pub succeeded: u64,
    /// Jobs accepted by an asynchronous endpoint (`202`), outcome not yet known: not
    /// delivered yet, and not lost.
    pub accepted: u64,
    /// Jobs failed and not kept.
    pub failed: u64,
    /// Jobs kept as dead letters.
    pub dead_lettered: u64,
    /// Wall time (tokio clock).
    pub elapsed: Duration,
    /// Achieved rate: jobs processed per second.
    pub rate_per_sec: f64,
}

/// Delivered and lost first, as a reader wants them: `10000 delivered, 0 lost (failed, not
/// kept), 0 dead-lettered, of 10000 in 1.17s (8551/s)`.
impl fmt::Display for BulkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} delivered, ", self.succeeded)?;
        if self.accepted > 0 {
            write!(f, "{} accepted (outcome not yet known), ", self.accepted)?;
        }
        write!(
            f,
            "{} lost (failed, not kept), {} dead-lettered, of {} in {:.2?} ({:.0}/s)",
            self.failed, self.dead_lettered, self.processed, self.elapsed, self.rate_per_sec
        )
    }
}

type Classifier<R> = Arc<dyn Fn(&Result<R, BoxError>) -> JobOutcome + Send + Sync>;
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

const DEFAULT_CONCURRENCY: usize = 16;
const DEFAULT_MAX_DEFERRED: usize = 4096;
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How [`run_bulk`] runs; `R` is the service's response type.
///
/// Defaults: 16 jobs in flight, up to 4,096 retries waiting without a slot, progress at most
/// every 100 ms (and once at the end), no callback, total from the stream's `size_hint` when
/// exact. `BulkOptions::default()` (HTTP responses) classifies with
/// [`JobOutcome::classify_http`]; [`BulkOptions::new`] takes any classifier.
pub struct BulkOptions<R> {
    concurrency: usize,
    max_deferred: usize,
    progress_interval: Duration,
    progress_every: Option<u64>,
    on_progress: Option<ProgressFn>,
    classify: Classifier<R>,
    total: Option<u64>,
}

impl<B: 'static> Default for BulkOptions<http::Response<B>> {
    fn default() -> Self {
        BulkOptions::new(JobOutcome::classify_http::<B>)
    }
}

impl<R> BulkOptions<R> {
    /// Options deciding each job's outcome with `classify`.
    pub fn new(
        classify: impl Fn(&Result<R, BoxError>) -> JobOutcome + Send + Sync + 'static,
    ) -> Self {
        BulkOptions {
            concurrency: DEFAULT_CONCURRENCY,
            max_deferred: DEFAULT_MAX_DEFERRED,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            progress_every: None,
            on_progress: None,
            classify: Arc::new(classify),
            total: None,
        }
    }

    /// Jobs in flight at once (0 counts as 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// At most `n` requests waiting out a retry delay without holding a slot (default
    /// 4,096; 0: a waiting retry keeps its slot). Each holds its request
    /// (the copy the retry layer keeps) in memory.
    pub fn max_deferred(mut self, n: usize) -> Self {
        self.max_deferred = n;
        self
    }

    /// Reports progress at most this often (checked as jobs finish).
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.progress_interval = every;
        self
    }

    /// Also reports progress every `n` finished jobs (0 disables).
    pub fn progress_every(mut self, n: u64) -> Self {
        self.progress_every = (n > 0).then_some(n);
        self
    }

    /// Called with the counts as the run progresses, and once at the end.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// The number of jobs, for the ETA (when the stream's `size_hint` cannot tell).
    pub fn total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }
}

impl<R> fmt::Debug for BulkOptions<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkOptions")
            .field("concurrency", &self.concurrency)
            .field("max_deferred", &self.max_deferred)
            .field("progress_interval", &self.progress_interval)
            .field("progress_every", &self.progress_every)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Counts {
    succeeded: u64,
    accepted: u64,
    failed: u64,
    dead_lettered: u64,
}

impl Counts {
    fn processed(&self) -> u64 {
        self.succeeded + self.accepted + self.failed + self.dead_lettered
    }

    fn progress(&self, total: Option<u64>, elapsed: Duration) -> Progress {
        let processed = self.processed();
        let rate = rate(processed, elapsed);
        let eta = match total {
            Some(t) if rate > 0.0 => {
                Duration::try_from_secs_f64(t.saturating_sub(processed) as f64 / rate).ok()
            }
            _ => None,
        };
        Progress {
            processed,
            succeeded: self.succeeded,
            accepted: self.accepted,
            failed: self.failed,
            dead_lettered: self.dead_lettered,
            total,
            elapsed,
            rate_per_sec: rate,
            eta,
        }
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Sends every request of `jobs` through a clone of `service`, at most
/// [`concurrency`](BulkOptions::concurrency) at a time, and returns the counts once the
/// stream is exhausted and every job has finished. See the [crate docs](crate).
pub async fn run_bulk<St, S, Req>(
    jobs: St,
    service: S,
    options: BulkOptions<S::Response>,
) -> BulkReport
where
    St: Stream<Item = Req>,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    let start = Instant::now();
    let total = options.total.or_else(|| match jobs.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo as u64),
        _ => None,
    });
    let mut counts = Counts::default();
    let mut last_report = start;
    // The slots are a queue's (one scheduler, one set of rules): a job starts only when a slot
    // is free and no deferred retry is waiting for one, so the stream is pulled lazily and a
    // retry goes before jobs not yet started.
    let shared = Shared::new(
        Config {
            capacity: usize::MAX,
            concurrency: options.concurrency,
            interval: None,
            max_deferred: options.max_deferred,
        },
        None,
    );
    let mut queue = Queue::from_parts(service, shared.clone(), NoPriority);
    let mut running = FuturesUnordered::new();
    let mut jobs = std::pin::pin!(jobs);
    let mut exhausted = false;
    loop {
        let next = poll_fn(|cx| {
            while !exhausted && shared.poll_idle(cx.waker()) {
                match jobs.as_mut().poll_next(cx) {
                    Poll::Ready(Some(req)) => running.push(queue.call(req)),
                    Poll::Ready(None) => exhausted = true,
                    Poll::Pending => break,
                }
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(result)) => Poll::Ready(Some(result)),
                Poll::Ready(None) if exhausted => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        let Some(result) = next else { break };
        match (options.classify)(&result) {
            JobOutcome::Succeeded => counts.succeeded += 1,
            JobOutcome::Accepted => counts.accepted += 1,
            JobOutcome::Failed => counts.failed += 1,
            JobOutcome::DeadLettered => counts.dead_lettered += 1,
        }
        if let Some(report) = &options.on_progress {
            let now = Instant::now();
            let by_count = options
                .progress_every
                .is_some_and(|n| counts.processed() % n == 0);
            if by_count || now.duration_since(last_report) >= options.progress_interval {
                last_report = now;
                report(&counts.progress(total, now.duration_since(start)));
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(report) = &options.on_progress {
        report(&counts.progress(total, elapsed));
    }
    BulkReport {
        processed: counts.processed(),
        succeeded: counts.succeeded,
        accepted: counts.accepted,
        failed: counts.failed,
        dead_lettered: counts.dead_lettered,
        elapsed,
        rate_per_sec: rate(counts.processed(), elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(processed: u64, total: Option<u64>, elapsed_ms: u64) -> Progress {
        Counts {
            succeeded: processed.saturating_sub(3),
            accepted: 0,
            failed: processed.min(2),
            dead_lettered: processed.min(3) - processed.min(2),
        }
        .progress(total, Duration::from_millis(elapsed_ms))
    }

    #[test]
    fn short_durations_round_down_and_stay_short() {
        let d = Duration::from_millis;
        assert_eq!(short_duration(d(950)), "950ms");
        assert_eq!(short_duration(d(1_999)), "1s");
        assert_eq!(short_duration(d(59_999)), "59s");
        assert_eq!(short_duration(d(65_000)), "1m05s");
        assert_eq!(short_duration(d(3_599_999)), "59m59s");
        assert_eq!(short_duration(d(7_380_000)), "2h03m");
        assert_eq!(short_duration(Duration::MAX).len(), 20);
    }

    #[test]
    fn plain_progress_line_has_count_rate_failures_and_eta() {
        // 6,500 of 10,000 in 65 s: 100/s, 35 s left.
        let p = progress(6_500, Some(10_000), 65_000);
        assert_eq!(
            p.to_string(),
            "[1m05s] 6500/10000 65% 100/s 2 failed 1 dead-lettered eta 35s"
        );
        // Without a total: no share, no ETA.
        let p = progress(6_500, None, 65_000);
        assert_eq!(
            p.to_string(),
            "[1m05s] 6500 100/s 2 failed 1 dead-lettered eta ?"
        );
    }

    #[test]
    fn progress_line_fits_in_80_columns_for_large_runs() {
        let p = Progress {
            processed: 9_999_998,
            succeeded: 9_800_000,
            accepted: 0,
            failed: 99_998,
            dead_lettered: 99_800,
            total: Some(9_999_999),
            elapsed: Duration::from_secs(3_599 * 3),
            rate_per_sec: 92_678.0,
            eta: Some(Duration::from_secs(3_599)),
        };
        let line = p.to_string();
        assert!(line.len() <= 80, "{} columns: {line}", line.len());
    }

    #[test]
    fn eta_does_not_sit_at_zero_while_jobs_are_still_out() {
        // 9,997 of 10,000 at 100/s says 30 ms left; the three are retries in a backoff.
        let p = progress(9_997, Some(10_000), 99_970);
        assert_eq!(p.eta_label(), "3 left");
        assert_eq!(progress(10_000, Some(10_000), 100_000).eta_label(), "done");
        assert_eq!(progress(9_000, Some(10_000), 90_000).eta_label(), "eta 10s");
        // Nothing finished yet: no rate, no guess.
        assert_eq!(progress(0, Some(10_000), 0).eta_label(), "eta ?");
        // 99.99% is not 100%.
        assert!(progress(9_999, Some(10_000), 99_990)
            .to_string()
            .contains("9999/10000 99%"));
    }

    #[test]
    fn report_line_shows_delivered_and_lost_first() {
        let report = BulkReport {
            processed: 10_000,
            succeeded: 9_990,
            accepted: 0,
            failed: 4,
            dead_lettered: 6,
            elapsed: Duration::from_millis(1_170),
            rate_per_sec: 8_547.0,
        };
        assert_eq!(
            report.to_string(),
            "9990 delivered, 4 lost (failed, not kept), 6 dead-lettered, of 10000 in 1.17s (8547/s)"
        );
    }
}
