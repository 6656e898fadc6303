//! One bucket per key (a host, a workspace, an API token), with idle keys forgotten.
//!
//! Every key decides with the admission core ([`core`](super::core)), exactly as a
//! [`LocalBucket`](crate::LocalBucket) does: several windows at once, weighted costs, holds
//! that are a floor and spend nothing. A 429 from one destination holds that
//! destination only ([`KeyedBucket::hold_until`]); callers of that key already waiting for an
//! earlier slot re-slot behind the hold when they wake.
//!
//! A key whose every window has refilled (TAT at or before now) behaves exactly like a key
//! never seen, so forgetting it changes no decision: eviction is free of error, not a
//! heuristic. Two sweeps keep memory bounded (governor#171 reports the unbounded growth):
//! a shard is swept once it has served as many reservations as it holds keys, and each such
//! sweep also sweeps the next shard of a round-robin over all of them, so shards that no longer
//! get traffic are reached too, with work bounded per reservation (amortised). A large table
//! shrinks when most of it is free, so memory is returned, not just reused. [`KeyedBucket::evict_idle`] sweeps everything at once (call it
//! from a timer after a burst of one-off keys).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::core::{self, Cell, Release};
use super::Reservation;
use crate::clock::{duration_nanos, BucketClock, Clock};
use crate::{Limits, ThrottleError};

const SHARDS: usize = 32;
const MIN_SWEEP_INTERVAL: usize = 1_024;
/// A swept table shrinks only above this many slots (and when mostly free): small tables that
/// empty and refill in turn keep their memory rather than reallocating every sweep.
const SHRINK_ABOVE: usize = 1_024;

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
    cells: Vec<Cell>,
    // SipHash with a random key: keys (hosts, tenants) can come from outside, so the map must
    // not be open to collision flooding. Hashed once per call: the hash picks the shard and
    // is handed to the shard's table as is.
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
    /// The next shard the round-robin sweep visits: each time a shard sweeps itself, it also
    /// sweeps this one, so shards without traffic are reached too, with no shared write on
    /// the admit path.
    cursor: AtomicUsize,
    /// Holds in force, by key: only keys a server refused are here, so it stays small.
    holds: Mutex<HashMap<K, (u64, Release)>>,
    /// How many entries `holds` has (expired ones included until the next hold prunes them):
    /// while zero, an admit never touches the map.
    held_keys: AtomicUsize,
    /// Per-key in-flight caps, when the limits carry one; a key's entry lives while a permit or
    /// a waiter does.
    caps: Option<(usize, Caps<K>)>,
}

/// Each key's in-flight semaphore, while a permit or a waiter needs it.
type Caps<K> = Mutex<HashMap<K, Arc<Semaphore>>>;

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
    /// Hands `f` the key's TATs, creating them if the key is new or was forgotten, after
    /// sweeping the shard now and then (amortised over reservations at `now_n`). Returns `f`'s
    /// result and whether the shard swept itself.
    #[inline]
    fn with_tats<R>(
        &mut self,
        key: &K,
        hash: u64,
        inner: &Inner<K>,
        now_n: u64,
        f: impl FnOnce(&mut [u64]) -> R,
    ) -> (R, bool) {
        self.since_sweep += 1;
        let swept = self.since_sweep >= self.table.len().max(MIN_SWEEP_INTERVAL);
        if swept {
            self.sweep(now_n, inner);
        }
        let windows = inner.cells.len();
        let out = match &mut self.table {
            Table::One(t) => f(entry(t, key, hash, &inner.hasher, windows).as_slice_mut()),
            Table::Many(t) => f(entry(t, key, hash, &inner.hasher, windows).as_slice_mut()),
        };
        (out, swept)
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

    /// Forgets keys that have fully refilled at `now_n` and gives memory back; returns how
    /// many keys went.
    fn sweep(&mut self, now_n: u64, inner: &Inner<K>) -> usize {
        self.since_sweep = 0;
        self.table.retain_active(now_n, &inner.hasher)
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

/// Drops idle entries, then shrinks the table when three quarters of it are free.
fn retain_and_shrink<K: Hash, T: Tats>(
    table: &mut HashTable<(K, T)>,
    now_n: u64,
    hasher: &RandomState,
) -> usize {
    let before = table.len();
    table.retain(|(_, tats)| tats.latest() > now_n);
    if table.capacity() > SHRINK_ABOVE && table.capacity() > 4 * table.len() {
        table.shrink_to(2 * table.len(), |(k, _)| hasher.hash_one(k));
    }
    before - table.len()
}

impl<K> Table<K> {
    fn len(&self) -> usize {
        match self {
            Table::One(t) => t.len(),
            Table::Many(t) => t.len(),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Table::One(t) => t.capacity(),
            Table::Many(t) => t.capacity(),
        }
    }
}

impl<K: Hash> Table<K> {
    /// Forgets keys that have fully refilled at `now_n`; returns how many.
    fn retain_active(&mut self, now_n: u64, hasher: &RandomState) -> usize {
        match self {
            Table::One(t) => retain_and_shrink(t, now_n, hasher),
            Table::Many(t) => retain_and_shrink(t, now_n, hasher),
        }
    }
}

impl<K> KeyedBucket<K> {
    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Table slots allocated across all shards (at least [`KeyedBucket::len`]): what memory
    /// the keys occupy, which sweeps give back.
    pub fn capacity(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).table.capacity())
            .sum()
    }

    /// The clock this bucket decides on.
    pub fn clock(&self) -> Clock {
        self.inner.clock.kind()
    }

    /// The limits every key gets.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Shards, holds and caps are maps of plain values, never left half-updated: poisoning is
    // harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> KeyedBucket<K> {
    /// Buckets enforcing `limits` for each key separately, deciding on tokio's clock.
    pub fn new(limits: impl Into<Limits>) -> KeyedBucket<K> {
        KeyedBucket::with_clock(limits, Clock::Tokio)
    }

    /// Buckets enforcing `limits` for each key separately, reading `clock` for callers that
    /// arrive "now" ([`KeyedBucket::reserve_now`]); see [`Clock`] for the trade-off. A
    /// concurrency cap in `limits` applies per key ([`KeyedBucket::acquire`]).
    pub fn with_clock(limits: impl Into<Limits>, clock: Clock) -> KeyedBucket<K> {
        let limits = limits.into();
        let cells: Vec<Cell> = limits
            .quotas()
            .iter()
            .map(|q| Cell::new(q.interval_nanos(), q.burst()))
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
                caps: limits
                    .concurrency()
                    .map(|n| (n, Mutex::new(HashMap::new()))),
                limits,
                cells,
                hasher: RandomState::new(),
                shards,
                cursor: AtomicUsize::new(0),
                holds: Mutex::new(HashMap::new()),
                held_keys: AtomicUsize::new(0),
            }),
        }
    }

    /// The key's hash and its locked shard.
    #[inline]
    fn shard(&self, key: &K) -> (u64, MutexGuard<'_, Shard<K>>) {
        let hash = self.inner.hasher.hash_one(key);
        (hash, lock(&self.inner.shards[shard_of(hash)]))
    }

    /// After a shard swept itself, sweeps the next shard in turn (once the caller's own lock
    /// is released: one lock at a time).
    #[cold]
    fn round_robin(&self, now_n: u64) {
        let inner = &*self.inner;
        let next = inner.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        lock(&inner.shards[next]).sweep(now_n, inner);
    }

    /// The decision in bucket time for `key`: its slot and the token to cancel it with.
    #[inline]
    fn reserve_nanos(
        &self,
        key: &K,
        now_n: u64,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<(u64, u64), ThrottleError> {
        let inner = &*self.inner;
        let limit = max_wait.map_or(u64::MAX, duration_nanos);
        let cost = u64::from(cost.max(1));
        // A held key's paced release is read and written under the holds lock, taken before the
        // shard's (always in that order); while no key is held, admits never touch it.
        let mut holds = (inner.held_keys.load(Ordering::Acquire) > 0).then(|| lock(&inner.holds));
        let mut release = holds
            .as_ref()
            .and_then(|h| h.get(key))
            .map_or(Release::default(), |h| h.1);
        let (hash, mut shard) = self.shard(key);
        let (decided, swept) = shard.with_tats(key, hash, inner, now_n, |tats| {
            core::admit(&inner.cells, tats, &mut release, now_n, cost, limit)
                .map(|slot| (slot, tats[0]))
                .map_err(|r| r.error(cost, max_wait))
        });
        drop(shard);
        if let (Ok(_), Some(holds)) = (&decided, holds.as_mut()) {
            if let Some(h) = holds.get_mut(key) {
                h.1 = release;
                // A hold that is over leaves the map, so that once none is left admits stop
                // taking its lock.
                if release.is_over(now_n) {
                    holds.remove(key);
                    inner.held_keys.store(holds.len(), Ordering::Release);
                }
            }
        }
        drop(holds);
        if swept {
            self.round_robin(now_n);
        }
        decided
    }

    /// Reserves the next slot for `key`; see [`Bucket::reserve`](crate::bucket::Bucket::reserve).
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        self.reserve_weighted(key, now, 1, max_wait)
    }

    /// Reserves `cost` units of every window for `key`; see
    /// [`Bucket::reserve_weighted`](crate::bucket::Bucket::reserve_weighted).
    pub fn reserve_weighted(
        &self,
        key: &K,
        now: Instant,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        if inner.cells.is_empty() {
            return Ok(Reservation::admitted(now, 0, 0));
        }
        let (now_n, exact) = inner.clock.offset(now);
        let (slot, token) = self.reserve_nanos(key, now_n, cost, max_wait)?;
        let r = if !exact {
            Reservation::new(inner.clock.instant(slot), token, 0)
        } else if slot == now_n {
            Reservation::admitted_or(inner.clock.admitted(now, now_n), now, token, 0)
        } else {
            Reservation::new(
                now.checked_add(Duration::from_nanos(slot - now_n))
                    .unwrap_or_else(|| inner.clock.instant(slot)),
                token,
                0,
            )
        };
        Ok(r.with_cost(cost.max(1)))
    }

    /// [`KeyedBucket::reserve`] for a caller arriving now, read from the bucket's [`Clock`].
    pub fn reserve_now(
        &self,
        key: &K,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        self.reserve_weighted_now(key, 1, max_wait)
    }

    /// [`KeyedBucket::reserve_weighted`] for a caller arriving now.
    pub fn reserve_weighted_now(
        &self,
        key: &K,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let Some(fast) = inner.clock.fast_now().filter(|_| !inner.cells.is_empty()) else {
            return self.reserve_weighted(key, Instant::now(), cost, max_wait);
        };
        let now_n = fast.nanos;
        let (slot, token) = self.reserve_nanos(key, now_n, cost, max_wait)?;
        let r = if slot == now_n {
            Reservation::admitted_since_origin(fast.admitted(now_n), token, 0)
        } else {
            Reservation::new(inner.clock.instant(slot), token, 0)
        };
        Ok(r.with_cost(cost.max(1)))
    }

    /// Hands back an unused reservation for `key` (exact when it was the key's last one).
    pub fn cancel(&self, key: &K, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let (hash, mut shard) = self.shard(key);
        if let Some(tats) = shard.get_mut(key, hash) {
            core::cancel(
                &inner.cells,
                tats,
                reservation.token(),
                u64::from(reservation.cost()),
                now_n,
            );
        }
    }

    /// Holds `key` until `until`: nobody of that key goes before it; after it the key's
    /// windows release as they would have (see [`Bucket::hold_until`](crate::bucket::Bucket::hold_until)).
    /// Other keys are untouched, and no window of the key spends anything. Callers of that key
    /// already waiting for an earlier slot re-slot behind the hold when they wake
    /// ([`KeyedBucket::is_current`]).
    pub fn hold_until(&self, key: &K, until: Instant) {
        let inner = &*self.inner;
        let until_n = inner.clock.nanos(until);
        let now_n = inner.clock.nanos(Instant::now());
        let shortest = inner.cells.first().copied().unwrap_or(Cell::new(1, 1));
        let mut holds = lock(&inner.holds);
        // Finished holds go first (over, and their release disarmed): the map holds only keys
        // refused recently.
        holds.retain(|_, h| !h.1.is_over(now_n));
        let h = holds.entry(key.clone()).or_insert((0, Release::default()));
        *h = (h.0.max(until_n), h.1.after_hold(&shortest, now_n, until_n));
        inner.held_keys.store(holds.len(), Ordering::Release);
    }

    /// The end of `key`'s hold, if one is in force at `now`.
    pub fn held_until(&self, key: &K, now: Instant) -> Option<Instant> {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        let hold = lock(&inner.holds).get(key)?.0;
        (hold > now_n).then(|| inner.clock.instant(hold))
    }

    /// Whether a caller of `key` holding `reservation` may still go at its slot: false when a
    /// hold of that key began since and covers the slot (the caller reserves again).
    pub fn is_current(&self, key: &K, reservation: &Reservation, now: Instant) -> bool {
        !matches!(self.held_until(key, now), Some(h) if h > reservation.at())
    }

    /// Waits for one of `key`'s in-flight permits when the limits carry a concurrency cap
    /// (each key has its own); `None` at once when they do not. Hold the permit while the
    /// request is in flight.
    pub async fn acquire(&self, key: &K) -> Option<KeyedPermit<K>> {
        let (cap, map) = self.inner.caps.as_ref()?;
        let semaphore = Arc::clone(
            lock(map)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(*cap))),
        );
        // The semaphore lives as long as this bucket, which never closes it.
        let permit = semaphore.acquire_owned().await.ok()?;
        Some(KeyedPermit {
            permit: Some(permit),
            bucket: self.clone(),
            key: key.clone(),
        })
    }

    /// Forgets every key that has fully refilled at `now`; returns how many were dropped, and
    /// gives their memory back. Reservations sweep on their own; call this from a timer to
    /// reclaim memory promptly after a burst of one-off keys.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let inner = &*self.inner;
        let now_n = inner.clock.nanos(now);
        inner
            .shards
            .iter()
            .map(|shard| lock(shard).sweep(now_n, inner))
            .sum()
    }
}

/// A key's in-flight permit from [`KeyedBucket::acquire`]; dropping it frees the slot (and the
/// key's cap entry once nobody holds or waits for it).
pub struct KeyedPermit<K: Hash + Eq + Clone> {
    permit: Option<OwnedSemaphorePermit>,
    bucket: KeyedBucket<K>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for KeyedPermit<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Some((cap, map)) = &self.bucket.inner.caps {
            let mut map = lock(map);
            // Only the map's own reference left and every permit back: nobody waits on it.
            if map
                .get(&self.key)
                .is_some_and(|s| Arc::strong_count(s) == 1 && s.available_permits() == *cap)
            {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedPermit<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPermit").finish_non_exhaustive()
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
    async fn hold_applies_to_one_key_only_and_voids_its_earlier_slots() {
        let b = KeyedBucket::new(Quota::per_second(10).unwrap());
        let now = Instant::now();
        b.reserve(&"x", now, None).unwrap();
        let waiting = b.reserve(&"x", now, None).unwrap();
        assert!(b.is_current(&"x", &waiting, now));
        b.hold_until(&"x", now + Duration::from_secs(5));
        assert!(
            !b.is_current(&"x", &waiting, now),
            "the hold voids the earlier slot"
        );
        assert_eq!(
            b.reserve(&"x", now, None).unwrap().at() - now,
            Duration::from_secs(5)
        );
        assert_eq!(b.held_until(&"x", now), Some(now + Duration::from_secs(5)));
        assert_eq!(b.held_until(&"y", now), None);
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

    #[cfg(feature = "fast-clock")]
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
