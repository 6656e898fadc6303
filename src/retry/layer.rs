use tower::retry::Retry;
use tower_layer::Layer;

use super::RetryPolicy;
use crate::classify::HttpClassifier;

/// Retries requests with a [`RetryPolicy`]; see the [module docs](crate::retry).
///
/// The service it builds is [`tower::retry::Retry`]: each retry polls the inner service for
/// readiness again, so with a [`RateLimitLayer`](crate::RateLimitLayer) below this layer
/// every retry takes a fresh slot from the shared bucket.
#[derive(Debug, Clone)]
pub struct RetryLayer<C = HttpClassifier> {
    policy: RetryPolicy<C>,
}

impl<C> RetryLayer<C> {
    /// A layer retrying with `policy`.
    pub fn new(policy: RetryPolicy<C>) -> Self {
        RetryLayer { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy<C> {
        &self.policy
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<RetryPolicy<C>, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(self.policy.clone(), inner)
    }
}
