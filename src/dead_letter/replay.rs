//! Re-sending stored dead letters at a controlled rate, at least once.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt as _};
use http::StatusCode;
use tokio::time::Instant;
use tower::{BoxError, ServiceExt as _};
use tower_service::Service;

use super::record::redacted_param_names;
use super::{error_text, redact_query, DeadLetterStore, DEFAULT_REDACTED_QUERY};
use crate::ReplayBody;
use crate::{Quota, RateLimit};

/// Letters read from the store at a time.
const REPLAY_PAGE: usize = 256;

type PrepareFn = Arc<dyn Fn(&mut http::request::Parts) + Send + Sync>;
type SuccessFn = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// How [`replay`] re-sends dead letters.
///
/// Defaults besides the rate: every letter (`max` none), one request at a time, success is a
/// 2xx response, no `prepare` hook.
#[derive(Clone)]
pub struct ReplayOptions {
    rate: Quota,
    max: Option<usize>,
    concurrency: usize,
    prepare: Option<PrepareFn>,
    is_success: SuccessFn,
}

impl ReplayOptions {
    /// Replays at most `rate` (through a [`RateLimit`] gate of its own: put the replay
    /// service behind your shared gate instead to share the API's limit with live traffic).
    pub fn new(rate: Quota) -> ReplayOptions {
        ReplayOptions {
            rate,
            max: None,
            concurrency: 1,
            prepare: None,
            is_success: Arc::new(|s: StatusCode| s.is_success()),
        }
    }

    /// Replays at most `max` letters (oldest first), leaving the rest for a later run.
    pub fn max(mut self, max: usize) -> ReplayOptions {
        self.max = Some(max);
        self
    }

    /// Up to `n` replayed requests in flight (default 1; 0 counts as 1). Needs a `Clone`
    /// service, as every request goes through its own clone.
    pub fn concurrency(mut self, n: usize) -> ReplayOptions {
        self.concurrency = n.max(1);
        self
    }

    /// Adjusts each request before it is sent: stored requests have their credentials
    /// redacted (and left out), so add them back here, or in the service stack.
    pub fn prepare(
        mut self,
        f: impl Fn(&mut http::request::Parts) + Send + Sync + 'static,
    ) -> ReplayOptions {
        self.prepare = Some(Arc::new(f));
        self
    }

    /// Decides which response statuses count as delivered (default: 2xx).
    pub fn success_if(
        mut self,
        f: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> ReplayOptions {
        self.is_success = Arc::new(f);
        self
    }
}

impl fmt::Debug for ReplayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("rate", &self.rate)
            .field("max", &self.max)
            .field("concurrency", &self.concurrency)
            .field("prepare", &self.prepare.is_some())
            .finish_non_exhaustive()
    }
}

/// What a [`replay`] run did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Letters sent.
    pub attempted: usize,
    /// Letters delivered and removed from the store.
    pub delivered: usize,
    /// Letters that failed again (they stay in the store), with the reason.
    pub failed: Vec<(u64, String)>,
    /// Letters in the store after the run.
    pub remaining: usize,
    /// Wall time of the run (tokio clock).
    pub elapsed: Duration,
}

/// Re-sends the letters in `store`, oldest first, through `service` at `options`' rate, and
/// removes each one only after it was delivered.
///
/// At-least-once: a letter is removed after its success, so a crash (or a dropped replay
/// future) between the two sends it again next time, and a crash before the success loses
/// nothing. Requests that fail again stay stored, unchanged. An `Err` means the store
/// failed (reading or removing); letters delivered up to then are removed.
///
/// ```
/// use http::{Request, Response};
/// use tower::service_fn;
/// use tower_throttle::{dead_letter::{DeadLetterStore, MemoryStore}, replay, ReplayOptions};
/// use tower_throttle::Quota;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// // ... a DeadLetterLayer wrote failed requests into `store` ...
/// let api = service_fn(|_req: Request<String>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(()))
/// });
/// let options = ReplayOptions::new(Quota::per_second(10)?).prepare(|parts| {
///     parts.headers.insert("authorization", "Bearer fresh-token".parse().unwrap());
/// });
/// let report = replay(&store, api, options).await?;
/// assert_eq!(report.remaining, 0);
/// # Ok(()) }
/// ```
pub async fn replay<St, S, B, RB>(
    store: &St,
    service: S,
    options: ReplayOptions,
) -> io::Result<ReplayReport>
where
    St: DeadLetterStore + ?Sized,
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    let start = Instant::now();
    let gate = RateLimit::new(service, options.rate);
    let mut report = ReplayReport::default();
    let mut budget = options.max.unwrap_or(usize::MAX);
    // Page by id: letters that fail again stay behind the cursor, delivered ones are removed
    // behind it, and only one page of letters is in memory at a time.
    let mut after = 0;
    while budget > 0 {
        let page = store.list_page(after, budget.min(REPLAY_PAGE)).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        budget -= page.len();
        report.attempted += page.len();
        let sends = page.into_iter().map(|letter| {
            let gate = gate.clone();
            let options = &options;
            async move {
                // What `prepare` put back must not reach the report or the log when the
                // request fails again and its error quotes the URL.
                let secret: Vec<Box<str>> = DEFAULT_REDACTED_QUERY
                    .iter()
                    .map(|&n| n.into())
                    .chain(redacted_param_names(&letter.uri))
                    .collect();
                let req = match letter.to_request::<B>() {
                    Ok(req) => req,
                    Err(e) => return (letter.id, Err(e.to_string())),
                };
                let (mut parts, body) = req.into_parts();
                if let Some(prepare) = &options.prepare {
                    prepare(&mut parts);
                }
                let req = http::Request::from_parts(parts, body);
                let outcome = match gate.oneshot(req).await {
                    Ok(resp) if (options.is_success)(resp.status()) => Ok(()),
                    Ok(resp) => Err(format!("HTTP {}", resp.status())),
                    Err(e) => Err(redact_query(&error_text(&*e), &secret, false)),
                };
                (letter.id, outcome)
            }
        });
        let mut results = stream::iter(sends).buffer_unordered(options.concurrency);
        while let Some((id, outcome)) = results.next().await {
            match outcome {
                Ok(()) => {
                    store.remove(id).await?;
                    report.delivered += 1;
                }
                Err(reason) => {
                    tracing::debug!(id, %reason, "replayed dead letter failed again");
                    report.failed.push((id, reason));
                }
            }
        }
    }
    report.failed.sort_unstable_by_key(|(id, _)| *id);
    report.remaining = store.len().await?;
    report.elapsed = start.elapsed();
    Ok(report)
}
