//! One bucket per key (a host, a workspace, an API token), with idle keys forgotten.
//!
//! A key whose every window has refilled (TAT at or before now) behaves exactly like a key
//! never seen, so forgetting it changes no decision: eviction is free of error, not a
//! heuristic. Sweeps are amortised over reservations (a shard is swept once it has served as
//! many reservations as it holds keys), so a map never grows past the keys active within one
//! window (the unbounded growth governor#171 reports). The map is split into shards, each
//! behind its own short mutex, so unrelated keys rarely contend.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{Gcra, Reservation};
use crate::clock::{duration_nanos, Epoch};
use crate::{Limits, ThrottleError};

const SHARDS: usize = 32;
const MIN_SWEEP_INTERVAL: usize = 1_024;

/// A set of independent buckets, one per key, all with the same [`Limits`].
///
/// ```
/// use tower_throttle::bucket::KeyedBucket;
/// use tower_throttle::Quota;
/// use tokio::time::Instant;
///
/// let per_host = KeyedBucket::new(Quota::per_second(1)?);
/// let now = Instant::now();
/// assert_eq!(per_host.reserve(&"api.hubapi.com", now, None)?.at(), now);
/// // Another host has its own bucket...
/// assert_eq!(per_host.reserve(&"track.customer.io", now, None)?.at(), now);
/// // ...while the first host's next caller waits a second.
/// let next = per_host.reserve(&"api.hubapi.com", now, None)?;
/// assert_eq!(next.at() - now, std::time::Duration::from_secs(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedBucket<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    epoch: Epoch,
    limits: Limits,
    cells: Vec<Gcra>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
}

struct Shard<K> {
    map: HashMap<K, Tats>,
    since_sweep: usize,
}

/// One TAT per window, inline for the common single window so a key costs one map entry.
enum Tats {
    One(u64),
    Many(Box<[u64]>),
}

impl Tats {
    fn as_slice_mut(&mut self) -> &mut [u64] {
        match self {
            Tats::One(t) => std::slice::from_mut(t),
            Tats::Many(ts) => ts,
        }
    }

    fn latest(&self) -> u64 {
        match self {
            Tats::One(t) => *t,
            Tats::Many(ts) => ts.iter().copied().max().unwrap_or(0),
        }
    }
}

impl<K> Inner<K> {
    /// State of a key never seen (or forgotten): every window full.
    fn fresh(&self) -> Tats {
        match self.cells.len() {
            1 => Tats::One(0),
            n => Tats::Many(vec![0; n].into_boxed_slice()),
        }
    }
}

impl<K> KeyedBucket<K> {
    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Clone for KeyedBucket<K> {
    fn clone(&self) -> Self {
        KeyedBucket {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for KeyedBucket<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBucket")
            .field("limits", &self.inner.limits)
            .field("keys", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedBucket<K> {
    /// Buckets enforcing `limits` for each key separately.
    pub fn new(limits: impl Into<Limits>) -> KeyedBucket<K> {
        let limits = limits.into();
        let cells = limits
            .quotas()
            .iter()
            .map(|q| Gcra::new(q.interval_nanos(), q.burst()))
            .collect();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    since_sweep: 0,
                })
            })
            .collect();
        KeyedBucket {
            inner: Arc::new(Inner {
                epoch: Epoch::now(),
                limits,
                cells,
                hasher: RandomState::new(),
                shards,
            }),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K>> {
        let i = (self.inner.hasher.hash_one(key) as usize) % SHARDS;
        // A shard is a map of plain numbers, never left half-updated: poisoning is harmless.
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves the next slot for `key`; see [`Bucket::reserve`](crate::Bucket::reserve).
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let now_n = inner.epoch.nanos(now);
        if inner.cells.is_empty() {
            return Ok(Reservation::new(now, 0, 0));
        }
        let mut shard = self.shard(key);
        shard.since_sweep += 1;
        if shard.since_sweep >= shard.map.len().max(MIN_SWEEP_INTERVAL) {
            shard.since_sweep = 0;
            shard.map.retain(|_, tats| tats.latest() > now_n);
        }
        let tats = match shard.map.get_mut(key) {
            Some(t) => t,
            None => shard
                .map
                .entry(key.clone())
                .or_insert_with(|| inner.fresh()),
        };
        let tats = tats.as_slice_mut();
        let slot = inner
            .cells
            .iter()
            .zip(tats.iter())
            .map(|(c, t)| c.earliest(*t, now_n))
            .max()
            .unwrap_or(now_n);
        if let Some(max_wait) = max_wait {
            if slot - now_n > duration_nanos(max_wait) {
                return Err(ThrottleError::WaitTooLong {
                    wait: Duration::from_nanos(slot - now_n),
                    max_wait,
                });
            }
        }
        for (c, t) in inner.cells.iter().zip(tats.iter_mut()) {
            *t = c.after(*t, slot);
        }
        Ok(Reservation::new(
            inner.epoch.instant(slot),
            tats[0],
            inner.cells[0].interval(),
        ))
    }

    /// Hands back an unused reservation for `key` (exact when it was the key's last one).
    pub fn cancel(&self, key: &K, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.epoch.nanos(now);
        let mut shard = self.shard(key);
        if let Some(tats) = shard.map.get_mut(key) {
            let tats = tats.as_slice_mut();
            if tats.first() == Some(&reservation.token()) {
                for (c, t) in inner.cells.iter().zip(tats.iter_mut()) {
                    *t = Gcra::undo(*t, c.interval(), now_n);
                }
            }
        }
    }

    /// Holds `key` until `until`; its next callers go paced after it. Callers of that key
    /// already waiting for an earlier slot keep it (unlike [`LocalBucket`](crate::LocalBucket),
    /// a keyed bucket stores no per-key hold, to stay small).
    pub fn hold_until(&self, key: &K, until: Instant) {
        let inner = &*self.inner;
        if inner.cells.is_empty() {
            return;
        }
        let until_n = inner.epoch.nanos(until);
        let mut shard = self.shard(key);
        let tats = shard
            .map
            .entry(key.clone())
            .or_insert_with(|| inner.fresh());
        for (c, t) in inner.cells.iter().zip(tats.as_slice_mut()) {
            *t = c.hold(*t, until_n);
        }
    }

    /// Forgets every key that has fully refilled at `now`; returns how many were dropped.
    /// Reservations sweep on their own; call this to reclaim memory after a burst of keys.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let now_n = self.inner.epoch.nanos(now);
        let mut dropped = 0;
        for shard in self.inner.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.map.len();
            shard.map.retain(|_, tats| tats.latest() > now_n);
            dropped += before - shard.map.len();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_without_changing_decisions() {
        let b = KeyedBucket::new(Quota::per_second(10).unwrap());
        let now = Instant::now();
        for k in 0..100u32 {
            b.reserve(&k, now, None).unwrap();
        }
        assert_eq!(b.len(), 100);
        assert_eq!(b.evict_idle(now), 0, "keys still owe their interval");
        let later = now + Duration::from_millis(100);
        assert_eq!(b.evict_idle(later), 100);
        assert!(b.is_empty());
        // A forgotten key starts full again, exactly as it would have been.
        assert_eq!(b.reserve(&7, later, None).unwrap().at(), later);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_sweep_so_memory_stays_bounded() {
        let b = KeyedBucket::new(Quota::per_second(1_000).unwrap());
        let start = Instant::now();
        // Each key is used once, 1 ms apart: at most a couple are ever still active.
        for k in 0..50_000u32 {
            b.reserve(&k, start + Duration::from_millis(u64::from(k)), None)
                .unwrap();
        }
        assert!(b.len() < SHARDS * MIN_SWEEP_INTERVAL, "len = {}", b.len());
    }

    #[tokio::test(start_paused = true)]
    async fn multi_window_keys_and_cancel() {
        let limits = Limits::new(Quota::per_second(10).unwrap()).and(Quota::per_minute(2).unwrap());
        let b = KeyedBucket::new(limits);
        let now = Instant::now();
        assert_eq!(b.reserve(&"a", now, None).unwrap().at(), now);
        let second = b.reserve(&"a", now, None).unwrap();
        assert_eq!(second.at() - now, Duration::from_secs(30));
        let second_at = second.at();
        b.cancel(&"a", second, now);
        let again = b.reserve(&"a", now, None).unwrap();
        assert_eq!(again.at(), second_at, "the returned slot is reused");
        let err = b
            .reserve(&"a", now, Some(Duration::from_secs(1)))
            .unwrap_err();
        assert!(matches!(err, ThrottleError::WaitTooLong { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn hold_applies_to_one_key_only() {
        let b = KeyedBucket::new(Quota::per_second(10).unwrap());
        let now = Instant::now();
        b.hold_until(&"x", now + Duration::from_secs(5));
        assert_eq!(
            b.reserve(&"x", now, None).unwrap().at() - now,
            Duration::from_secs(5)
        );
        assert_eq!(b.reserve(&"y", now, None).unwrap().at(), now);
    }
}
