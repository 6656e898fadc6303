//! One bucket per key (a host, a workspace, an API token), with idle keys forgotten.
//!
//! A key whose every window has refilled (TAT at or before now) behaves exactly like a key
//! never seen, so forgetting it changes no decision: eviction is free of error, not a
//! heuristic. Sweeps are amortised over reservations (a shard is swept once it has served as
//! many reservations as it holds keys), so a map never grows past the keys active within one
//! window (the unbounded growth governor#171 reports). The map is split into shards, each
//! behind its own short mutex, so unrelated keys rarely contend.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use tokio::time::Instant;

use super::{Gcra, Reservation};
use crate::clock::{duration_nanos, BucketClock, Clock};
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
    clock: BucketClock,
    limits: Limits,
    cells: Vec<Gcra>,
    // SipHash with a random key: keys (hosts, tenants) can come from outside, so the map must
    // not be open to collision flooding. Hashed once per call: the hash picks the shard and
    // is handed to the shard's table as is.
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
}

struct Shard<K> {
    table: Table<K>,
    since_sweep: usize,
}

/// Keys and their TATs. One window (the common case) stores a bare `u64` per key, so an entry
/// is the key plus eight bytes; several windows store one boxed slice per key.
enum Table<K> {
    One(HashTable<(K, u64)>),
    Many(HashTable<(K, Box<[u64]>)>),
}

/// A key's TATs, one per window.
trait Tats {
    /// State of a key never seen (or forgotten): every window full.
    fn fresh(windows: usize) -> Self;
    fn as_slice_mut(&mut self) -> &mut [u64];
    /// When the key will have fully refilled.
    fn latest(&self) -> u64;
}

impl Tats for u64 {
    #[inline]
    fn fresh(_: usize) -> Self {
        0
    }
    #[inline]
    fn as_slice_mut(&mut self) -> &mut [u64] {
        std::slice::from_mut(self)
    }
    #[inline]
    fn latest(&self) -> u64 {
        *self
    }
}

impl Tats for Box<[u64]> {
    fn fresh(windows: usize) -> Self {
        vec![0; windows].into_boxed_slice()
    }
    fn as_slice_mut(&mut self) -> &mut [u64] {
        self
    }
    fn latest(&self) -> u64 {
        self.iter().copied().max().unwrap_or(0)
    }
}

/// The shard a hash belongs to. hashbrown places an entry by the hash's low bits and tags it
/// with the top seven, so the shard takes bits from the middle: every key in one shard would
/// otherwise share those bits, and collide in its table.
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize % SHARDS
}

impl<K: Hash + Eq + Clone> Shard<K> {
    /// Hands `f` the key's TATs, creating them if the key is new or was forgotten. With
    /// `sweep_at` (a reservation's now) it first sweeps, now and then (amortised over calls).
    #[inline]
    fn with_tats<R>(
        &mut self,
        key: &K,
        hash: u64,
        inner: &Inner<K>,
        sweep_at: Option<u64>,
        f: impl FnOnce(&mut [u64]) -> R,
    ) -> R {
        if let Some(now_n) = sweep_at {
            self.since_sweep += 1;
            if self.since_sweep >= self.table.len().max(MIN_SWEEP_INTERVAL) {
                self.since_sweep = 0;
                self.table.retain_active(now_n);
            }
        }
        let windows = inner.cells.len();
        match &mut self.table {
            Table::One(t) => f(entry(t, key, hash, &inner.hasher, windows).as_slice_mut()),
            Table::Many(t) => f(entry(t, key, hash, &inner.hasher, windows).as_slice_mut()),
        }
    }

    fn get_mut(&mut self, key: &K, hash: u64) -> Option<&mut [u64]> {
        match &mut self.table {
            Table::One(t) => t
                .find_mut(hash, |(k, _)| k == key)
                .map(|(_, v)| v.as_slice_mut()),
            Table::Many(t) => t
                .find_mut(hash, |(k, _)| k == key)
                .map(|(_, v)| v.as_slice_mut()),
        }
    }
}

#[inline]
fn entry<'a, K: Hash + Eq + Clone, T: Tats>(
    table: &'a mut HashTable<(K, T)>,
    key: &K,
    hash: u64,
    hasher: &RandomState,
    windows: usize,
) -> &'a mut T {
    match table.entry(hash, |(k, _)| k == key, |(k, _)| hasher.hash_one(k)) {
        Entry::Occupied(e) => &mut e.into_mut().1,
        Entry::Vacant(v) => &mut v.insert((key.clone(), T::fresh(windows))).into_mut().1,
    }
}

impl<K> Table<K> {
    fn len(&self) -> usize {
        match self {
            Table::One(t) => t.len(),
            Table::Many(t) => t.len(),
        }
    }

    /// Forgets keys that have fully refilled at `now_n`; returns how many.
    fn retain_active(&mut self, now_n: u64) -> usize {
        let before = self.len();
        match self {
            Table::One(t) => t.retain(|(_, tat)| tat.latest() > now_n),
            Table::Many(t) => t.retain(|(_, tats)| tats.latest() > now_n),
        }
        before - self.len()
    }
}

impl<K> KeyedBucket<K> {
    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).table.len())
            .sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The clock this bucket decides on.
    pub fn clock(&self) -> Clock {
        self.inner.clock.kind()
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
            .field("clock", &self.clock())
            .field("keys", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedBucket<K> {
    /// Buckets enforcing `limits` for each key separately, deciding on tokio's clock.
    pub fn new(limits: impl Into<Limits>) -> KeyedBucket<K> {
        KeyedBucket::with_clock(limits, Clock::Tokio)
    }

    /// Buckets enforcing `limits` for each key separately, reading `clock` for callers that
    /// arrive "now" ([`KeyedBucket::reserve_now`]); see [`Clock`] for the trade-off.
    pub fn with_clock(limits: impl Into<Limits>, clock: Clock) -> KeyedBucket<K> {
        let limits = limits.into();
        let cells: Vec<Gcra> = limits
            .quotas()
            .iter()
            .map(|q| Gcra::new(q.interval_nanos(), q.burst()))
            .collect();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    table: if cells.len() == 1 {
                        Table::One(HashTable::new())
                    } else {
                        Table::Many(HashTable::new())
                    },
                    since_sweep: 0,
                })
            })
            .collect();
        KeyedBucket {
            inner: Arc::new(Inner {
                clock: BucketClock::new(clock),
                limits,
                cells,
                hasher: RandomState::new(),
                shards,
            }),
        }
    }

    /// The key's hash and its locked shard.
    #[inline]
    fn shard(&self, key: &K) -> (u64, MutexGuard<'_, Shard<K>>) {
        let hash = self.inner.hasher.hash_one(key);
        // A shard is a map of plain numbers, never left half-updated: poisoning is harmless.
        let shard = self.inner.shards[shard_of(hash)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (hash, shard)
    }

    /// The decision in bucket time for `key`: its slot and the token to cancel it with.
    #[inline]
    fn reserve_nanos(
        &self,
        key: &K,
        now_n: u64,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64), ThrottleError> {
        let inner = &*self.inner;
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let (hash, mut shard) = self.shard(key);
        shard.with_tats(key, hash, inner, Some(now_n), |tats| {
            let slot = inner
                .cells
                .iter()
                .zip(tats.iter())
                .map(|(c, t)| c.earliest(*t, now_n))
                .max()
                .unwrap_or(now_n);
            if slot - now_n > limit {
                return Err(ThrottleError::WaitTooLong {
                    wait: Duration::from_nanos(slot - now_n),
                    max_wait: max_wait.unwrap_or(Duration::MAX),
                });
            }
            for (c, t) in inner.cells.iter().zip(tats.iter_mut()) {
                *t = c.after(*t, slot);
            }
            Ok((slot, tats[0]))
        })
    }

    /// Reserves the next slot for `key`; see [`Bucket::reserve`](crate::Bucket::reserve).
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let Some(first) = inner.cells.first() else {
            return Ok(Reservation::admitted(now, 0, 0));
        };
        let (now_n, exact) = inner.clock.offset(now);
        let (slot, token) = self.reserve_nanos(key, now_n, max_wait)?;
        Ok(if !exact {
            Reservation::new(inner.clock.instant(slot), token, first.interval())
        } else if slot == now_n {
            Reservation::admitted_or(
                inner.clock.admitted(now, now_n),
                now,
                token,
                first.interval(),
            )
        } else {
            Reservation::new(
                now.checked_add(Duration::from_nanos(slot - now_n))
                    .unwrap_or_else(|| inner.clock.instant(slot)),
                token,
                first.interval(),
            )
        })
    }

    /// [`KeyedBucket::reserve`] for a caller arriving now, read from the bucket's [`Clock`].
    pub fn reserve_now(
        &self,
        key: &K,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let (Some(fast), Some(first)) = (inner.clock.fast_now(), inner.cells.first()) else {
            return self.reserve(key, Instant::now(), max_wait);
        };
        let now_n = fast.nanos;
        let (slot, token) = self.reserve_nanos(key, now_n, max_wait)?;
        Ok(if slot == now_n {
            Reservation::admitted_since_origin(fast.admitted(now_n), token, first.interval())
        } else {
            Reservation::new(inner.clock.instant(slot), token, first.interval())
        })
    }

    /// Hands back an unused reservation for `key` (exact when it was the key's last one).
    pub fn cancel(&self, key: &K, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let (hash, mut shard) = self.shard(key);
        if let Some(tats) = shard.get_mut(key, hash) {
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
        let until_n = inner.clock.nanos(until);
        let (hash, mut shard) = self.shard(key);
        shard.with_tats(key, hash, inner, None, |tats| {
            for (c, t) in inner.cells.iter().zip(tats.iter_mut()) {
                *t = c.hold(*t, until_n);
            }
        });
    }

    /// Forgets every key that has fully refilled at `now`; returns how many were dropped.
    /// Reservations sweep on their own; call this to reclaim memory after a burst of keys.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let now_n = self.inner.clock.nanos(now);
        self.inner
            .shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .table
                    .retain_active(now_n)
            })
            .sum()
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

    #[test]
    fn one_hash_spreads_keys_over_every_shard() {
        let b = KeyedBucket::new(Quota::per_hour(1).unwrap());
        let now = Instant::now();
        for k in 0..4_096u32 {
            b.reserve(&k, now, None).unwrap();
        }
        let sizes: Vec<usize> = b
            .inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap().table.len())
            .collect();
        assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 4_096);
    }

    #[tokio::test]
    async fn fast_clock_keys_admit_their_burst_then_wait() {
        let b = KeyedBucket::with_clock(
            Quota::per_second(1).unwrap().with_burst(2).unwrap(),
            Clock::Fast,
        );
        assert_eq!(b.clock(), Clock::Fast);
        let a: Vec<bool> = (0..3)
            .map(|_| b.reserve_now(&"a", None).unwrap().is_admitted())
            .collect();
        assert_eq!(a, [true, true, false]);
        assert!(b.reserve_now(&"b", None).unwrap().is_admitted());
        let shed = b.reserve_now(&"a", Some(Duration::from_millis(100)));
        assert!(matches!(shed, Err(ThrottleError::WaitTooLong { .. })));
    }
}
