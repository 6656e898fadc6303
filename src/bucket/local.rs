//! The in-process bucket: one GCRA cell per quota, shared through an `Arc`.
//!
//! A single quota (the common case) lives in one `AtomicU64` updated with compare-and-swap:
//! one CAS per admitted request, no lock, no allocation. Several quotas must be admitted
//! together (a caller refused by the daily window must not consume a per-second slot), which
//! one CAS cannot do, so that case takes a short mutex; it is still allocation-free.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{interval_for_rate, Bucket, Gcra, Reservation, Reserve, Snapshot};
use crate::clock::{duration_nanos, Epoch};
use crate::sync::{AtomicU64, Mutex, MutexGuard};
use crate::{ConfigError, Limits, ThrottleError};

/// A token bucket in this process, shared by every clone.
///
/// Built from [`Limits`] (or a single [`Quota`](crate::Quota)); see the
/// [module docs](crate::bucket) for an example.
#[derive(Debug, Clone)]
pub struct LocalBucket {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Epoch,
    limits: Limits,
    /// Burst of the shortest window; its interval is `primary_interval`, which `set_rate` moves.
    primary_burst: u32,
    primary_interval: AtomicU64,
    /// End of the latest hold in epoch nanoseconds (0: none). Waiters compare their slot to it.
    hold: AtomicU64,
    cells: Cells,
}

#[derive(Debug)]
enum Cells {
    /// No quota: only a concurrency cap (or nothing) applies.
    Unlimited,
    One(AtomicU64),
    /// Several quotas; the `Vec` holds one TAT per quota, shortest period first.
    Many(Mutex<Vec<u64>>),
}

impl LocalBucket {
    /// A bucket enforcing `limits`, starting full.
    pub fn new(limits: impl Into<Limits>) -> LocalBucket {
        let limits = limits.into();
        let (primary_burst, primary_interval) = limits
            .quotas()
            .first()
            .map_or((1, 1), |q| (q.burst(), q.interval_nanos()));
        let cells = match limits.quotas().len() {
            0 => Cells::Unlimited,
            1 => Cells::One(AtomicU64::new(0)),
            n => Cells::Many(Mutex::new(vec![0; n])),
        };
        LocalBucket {
            inner: Arc::new(Inner {
                epoch: Epoch::now(),
                primary_burst,
                primary_interval: AtomicU64::new(primary_interval),
                hold: AtomicU64::new(0),
                limits,
                cells,
            }),
        }
    }

    /// The limits this bucket was built with (the configured rates, not the current one).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// [`Bucket::reserve`] without the `Reserve` wrapper: a local bucket never needs I/O.
    pub fn try_reserve(
        &self,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        let inner = &*self.inner;
        let (now_n, now_exact) = inner.epoch.offset(now);
        let max_wait_n = max_wait.map(duration_nanos);
        let primary = inner.primary();
        let too_long = |slot: u64| -> Result<(), ThrottleError> {
            match (max_wait, max_wait_n) {
                (Some(max_wait), Some(limit)) if slot - now_n > limit => {
                    Err(ThrottleError::WaitTooLong {
                        wait: Duration::from_nanos(slot - now_n),
                        max_wait,
                    })
                }
                _ => Ok(()),
            }
        };
        let (slot, token) = match &inner.cells {
            Cells::Unlimited => (now_n, 0),
            Cells::One(tat) => {
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let slot = primary.earliest(current, now_n);
                    too_long(slot)?;
                    let next = primary.after(current, slot);
                    match tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break (slot, next),
                        Err(seen) => current = seen,
                    }
                }
            }
            Cells::Many(tats) => {
                let mut tats = lock(tats);
                let slot = (0..tats.len())
                    .map(|i| inner.cell(i, &primary).earliest(tats[i], now_n))
                    .max()
                    .unwrap_or(now_n);
                too_long(slot)?;
                for i in 0..tats.len() {
                    tats[i] = inner.cell(i, &primary).after(tats[i], slot);
                }
                (slot, tats[0])
            }
        };
        // An admitted caller (the hot path) goes at `now` itself; only a future slot needs an
        // instant built from nanoseconds. Same value either way when `now_exact`.
        let at = if now_exact && slot == now_n {
            now
        } else {
            inner.epoch.instant(slot)
        };
        Ok(Reservation::new(at, token, primary.interval()))
    }
}

impl Inner {
    #[inline]
    fn primary(&self) -> Gcra {
        Gcra::new(
            self.primary_interval.load(Ordering::Relaxed),
            self.primary_burst,
        )
    }

    /// Window `i`'s cell; window 0 follows the run-time rate.
    fn cell(&self, i: usize, primary: &Gcra) -> Gcra {
        if i == 0 {
            *primary
        } else {
            let q = &self.limits.quotas()[i];
            Gcra::new(q.interval_nanos(), q.burst())
        }
    }
}

fn lock(m: &Mutex<Vec<u64>>) -> MutexGuard<'_, Vec<u64>> {
    // The guarded data is a plain array of numbers that is never left half-written, so a
    // panic elsewhere while holding the lock cannot have broken it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bucket for LocalBucket {
    fn reserve(&self, now: Instant, max_wait: Option<Duration>) -> Reserve {
        Reserve::Ready(self.try_reserve(now, max_wait))
    }

    fn cancel(&self, reservation: Reservation, now: Instant) {
        let inner = &*self.inner;
        let now_n = inner.epoch.nanos(now);
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let back = Gcra::undo(reservation.token, reservation.interval, now_n);
                // Fails when someone reserved after us: then the slot is forgotten, because
                // handing it back would let two callers share one instant.
                let _ = tat.compare_exchange(
                    reservation.token,
                    back,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            Cells::Many(tats) => {
                let mut tats = lock(tats);
                if tats[0] != reservation.token {
                    return;
                }
                tats[0] = Gcra::undo(reservation.token, reservation.interval, now_n);
                for (i, tat) in tats.iter_mut().enumerate().skip(1) {
                    let q = &inner.limits.quotas()[i];
                    *tat = Gcra::undo(*tat, q.interval_nanos(), now_n);
                }
            }
        }
    }

    fn hold_until(&self, until: Instant) {
        let inner = &*self.inner;
        let until_n = inner.epoch.nanos(until);
        inner.hold.fetch_max(until_n, Ordering::AcqRel);
        let primary = inner.primary();
        match &inner.cells {
            Cells::Unlimited => {}
            Cells::One(tat) => {
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(primary.hold(t, until_n))
                });
            }
            Cells::Many(tats) => {
                let mut tats = lock(tats);
                for i in 0..tats.len() {
                    tats[i] = inner.cell(i, &primary).hold(tats[i], until_n);
                }
            }
        }
    }

    fn held_until(&self, now: Instant) -> Option<Instant> {
        let inner = &*self.inner;
        let hold = inner.hold.load(Ordering::Acquire);
        (hold != 0 && hold > inner.epoch.nanos(now)).then(|| inner.epoch.instant(hold))
    }

    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        let interval = interval_for_rate(per_second)?;
        self.inner
            .primary_interval
            .store(interval, Ordering::Relaxed);
        Ok(())
    }

    fn rate(&self) -> f64 {
        1e9 / self.inner.primary_interval.load(Ordering::Relaxed) as f64
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = &*self.inner;
        let now_n = inner.epoch.nanos(now);
        let primary = inner.primary();
        let tats: Vec<u64> = match &inner.cells {
            Cells::Unlimited => Vec::new(),
            Cells::One(tat) => vec![tat.load(Ordering::Acquire)],
            Cells::Many(tats) => lock(tats).clone(),
        };
        let mut available = u64::MAX;
        let mut next_free = now_n;
        for (i, tat) in tats.iter().enumerate() {
            let cell = inner.cell(i, &primary);
            available = available.min(cell.available(*tat, now_n));
            next_free = next_free.max(cell.earliest(*tat, now_n));
        }
        Snapshot {
            available,
            next_free: inner.epoch.instant(next_free),
            rate_per_second: if tats.is_empty() {
                f64::INFINITY
            } else {
                self.rate()
            },
            held_until: self.held_until(now),
        }
    }
}
