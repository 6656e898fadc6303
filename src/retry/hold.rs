//! Holding a keyed gate: the key of the refused request only.

use std::fmt;
use std::hash::Hash;

use tokio::time::Instant;

use crate::bucket::KeyedBucket;
use crate::rate_limit::KeyFn;

/// Something the policy can hold for one request's destination.
pub(crate) trait Hold: Send + Sync + fmt::Debug {
    fn hold(&self, head: &http::Request<()>, until: Instant);
}

/// A [`KeyedBucket`] and the key function of the gate that uses it.
pub(crate) struct KeyedHold<K, F> {
    bucket: KeyedBucket<K>,
    key_fn: F,
}

impl<K, F> KeyedHold<K, F> {
    pub(crate) fn new(bucket: KeyedBucket<K>, key_fn: F) -> Self {
        KeyedHold { bucket, key_fn }
    }
}

impl<K, F> Hold for KeyedHold<K, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: KeyFn<http::Request<()>, Key = K> + Send + Sync,
{
    fn hold(&self, head: &http::Request<()>, until: Instant) {
        self.bucket.hold_until(&self.key_fn.key(head), until);
    }
}

impl<K, F> fmt::Debug for KeyedHold<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHold")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}
