use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderName;
use http::StatusCode;
use tower_layer::Layer;

use super::record::{DEFAULT_REDACTED, DEFAULT_REDACTED_QUERY};
use super::{DeadLetter, DeadLetterStore, DeadLetters};
use crate::metrics::Stats;

pub(crate) type FailureFn = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn DeadLetterStore>,
    pub(crate) redact: Arc<[HeaderName]>,
    /// Query parameter names whose values are redacted, in the URI and in error texts.
    pub(crate) redact_query: Arc<[Box<str>]>,
    pub(crate) is_failure: FailureFn,
    pub(crate) stats: Option<Stats>,
}

/// Resolves to the letter's id once it is stored, or `None` when the store failed (logged
/// and counted).
pub(crate) type WriteFuture = Pin<Box<dyn Future<Output = Option<u64>> + Send>>;

impl Config {
    /// Appends `letter` to the store, counting and logging the result: the one write path
    /// of the tower layer and the reqwest adapter.
    pub(crate) fn write(&self, letter: DeadLetter) -> WriteFuture {
        let store = self.store.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            match store.append(letter).await {
                Ok(id) => {
                    if let Some(s) = &stats {
                        s.record_dead_letter();
                    }
                    tracing::debug!(id, "dead letter written");
                    Some(id)
                }
                Err(e) => {
                    if let Some(s) = &stats {
                        s.record_dead_letter_failure();
                    }
                    tracing::error!(error = %e, "dead letter could not be written; the request is lost");
                    None
                }
            }
        })
    }
}

/// Keeps every request whose final outcome is a failure in a [`DeadLetterStore`]. Put it
/// outermost, so it sees only final outcomes (after retries). See the
/// [module docs](crate::dead_letter) for an example.
///
/// Defaults: a response is a failure when its status is not 2xx; every error is a failure;
/// `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` are redacted, and so
/// are the query parameters `api_secret`, `key`, `hapikey` and `api_key`.
#[derive(Clone)]
pub struct DeadLetterLayer {
    pub(crate) config: Config,
}

impl DeadLetterLayer {
    /// A layer writing to `store` (pass a clone, or an `Arc`, to keep a handle for
    /// [`replay`](crate::replay())).
    pub fn new(store: impl DeadLetterStore) -> DeadLetterLayer {
        DeadLetterLayer {
            config: Config {
                store: Arc::new(store),
                redact: DEFAULT_REDACTED
                    .iter()
                    .map(|n| HeaderName::from_static(n))
                    .collect(),
                redact_query: DEFAULT_REDACTED_QUERY.iter().map(|&n| n.into()).collect(),
                is_failure: Arc::new(|s: StatusCode| !s.is_success()),
                stats: None,
            },
        }
    }

    /// Also redacts `name` (e.g. `x-api-key`) before anything is written.
    pub fn redact_header(mut self, name: HeaderName) -> DeadLetterLayer {
        let mut names = self.config.redact.to_vec();
        if !names.contains(&name) {
            names.push(name);
        }
        self.config.redact = names.into();
        self
    }

    /// Also redacts the query parameter `name` (e.g. `token`, `access_token`) before anything
    /// is written: its value reads `[REDACTED]` in the stored URI, in the letter's error text,
    /// and in the [`DeadLetteredError`](super::DeadLetteredError) the caller gets. `api_secret`
    /// (GA4), `key` (Google APIs), `hapikey` (HubSpot) and `api_key` (Klaviyo) are redacted by
    /// default. Names match ignoring ASCII case. A replay sends the request without the
    /// parameter: put it back with [`with_query_param`](super::with_query_param) in
    /// [`ReplayOptions::prepare`](crate::ReplayOptions::prepare).
    pub fn redact_query_param(mut self, name: &str) -> DeadLetterLayer {
        let mut names = self.config.redact_query.to_vec();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.into());
        }
        self.config.redact_query = names.into();
        self
    }

    /// Decides which response statuses are failures (default: not 2xx). For example, keep
    /// `404`s out of the store with `|s| !s.is_success() && s != StatusCode::NOT_FOUND`.
    pub fn failure_if(
        mut self,
        is_failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> DeadLetterLayer {
        self.config.is_failure = Arc::new(is_failure);
        self
    }

    /// Counts written (and failed) dead letters in `stats`.
    pub fn with_stats(mut self, stats: Stats) -> DeadLetterLayer {
        self.config.stats = Some(stats);
        self
    }
}

impl fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("redact", &self.config.redact)
            .field("redact_query", &self.config.redact_query)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetters<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetters::from_parts(inner, self.config.clone())
    }
}
