//! The queue's shared state: waiting tickets in priority order, the running count and the
//! start times of the rolling interval window. One short mutex; nothing awaits under it.
//!
//! The common case is cheap: a request that can start at once (a slot free, nobody waiting,
//! the window open) touches neither the ordered map nor the granted set, and the clock is
//! read only when an interval cap is configured (a clock read costs more than the rest of a
//! start on some virtual machines).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::later;
use crate::metrics::Stats;

/// Higher priority first, then arrival order.
pub(crate) type Key = (Reverse<i32>, u64);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) capacity: usize,
    pub(crate) concurrency: usize,
    pub(crate) interval: Option<(Duration, usize)>,
    /// At most this many started requests may give their slot back while a retry waits
    /// (0: none may).
    pub(crate) max_deferred: usize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Option<Stats>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    waiting: BTreeMap<Key, Option<Waker>>,
    /// Tickets started by `dispatch` whose futures have not yet noticed, with their start
    /// (`None` without an interval cap: nothing needs it).
    granted: HashMap<u64, Option<Instant>, BuildHasherDefault<SeqHasher>>,
    running: usize,
    /// The last `interval_cap` start times, oldest first.
    starts: VecDeque<Instant>,
    next_seq: u64,
    /// Started requests whose retry gave the slot back and has not taken one again.
    deferred: usize,
    /// Woken when a slot is free and nobody waits (the bulk runner pulling its next job).
    idle: Option<Waker>,
}

/// Hashes the sequence numbers of the granted set: unique integers, so one multiplication
/// spreads them (Fibonacci hashing) where SipHash would cost more than the rest of a start.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The tokio clock, read at most once per operation and only if something needs it.
struct LazyNow(Option<Instant>);

impl LazyNow {
    fn new() -> Self {
        LazyNow(None)
    }

    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// What `poll_ticket` found.
pub(crate) enum TicketState {
    Started,
    /// Still waiting; `Some(t)` when this ticket is first in line and only the interval cap
    /// holds it back until `t` (the caller arms a timer; nobody else does, so no herd).
    Waiting(Option<Instant>),
}

impl Shared {
    pub(crate) fn new(config: Config, stats: Option<Stats>) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            stats,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that could panic, so a poisoned lock
        // is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn size(&self) -> usize {
        self.lock().waiting.len()
    }

    pub(crate) fn pending(&self) -> usize {
        self.lock().running
    }

    /// Enqueues a ticket, or refuses it when `capacity` tickets already wait. Returns the key
    /// and whether it started at once.
    pub(crate) fn enqueue(&self, priority: i32) -> Result<(Key, bool), usize> {
        let mut wake = Vec::new();
        let mut now = LazyNow::new();
        let result = {
            let mut st = self.lock();
            // Start whatever can start first, so that a queue that only looks full because its
            // timer has not fired yet does not refuse.
            self.dispatch(&mut st, &mut now, false, &mut wake);
            let key = (Reverse(priority), st.next_seq);
            if st.waiting.is_empty()
                && st.running < self.config.concurrency
                && self.window_open(&mut st, &mut now)
            {
                // Nobody is ahead and nothing holds it back: start without a place in line.
                st.next_seq += 1;
                self.start(&mut st, &mut now);
                self.publish(&st);
                Ok((key, true))
            } else if st.waiting.len() >= self.config.capacity {
                Err(self.config.capacity)
            } else {
                st.next_seq += 1;
                st.waiting.insert(key, None);
                self.dispatch(&mut st, &mut now, false, &mut wake);
                let started = st.granted.remove(&key.1).is_some();
                self.publish(&st);
                Ok((key, started))
            }
        };
        wake.into_iter().for_each(Waker::wake);
        result
    }

    pub(crate) fn poll_ticket(&self, key: Key, waker: &Waker) -> TicketState {
        let mut wake = Vec::new();
        let mut now = LazyNow::new();
        let state = {
            let mut st = self.lock();
            self.dispatch(&mut st, &mut now, false, &mut wake);
            if st.granted.remove(&key.1).is_some() {
                self.publish(&st);
                TicketState::Started
            } else {
                let is_head = st.waiting.keys().next() == Some(&key);
                let reopen = if is_head && st.running < self.config.concurrency {
                    self.interval_reopens(&st, &mut now)
                } else {
                    None
                };
                if let Some(slot) = st.waiting.get_mut(&key) {
                    match slot {
                        Some(w) if w.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                }
                TicketState::Waiting(reopen)
            }
        };
        wake.into_iter().for_each(Waker::wake);
        state
    }

    /// A waiting or started-but-unnoticed ticket is dropped: its place (and, if it had been
    /// started, its concurrency slot and its interval start) goes to the next one.
    pub(crate) fn cancel(&self, key: Key) {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            if st.waiting.remove(&key).is_none() {
                if let Some(at) = st.granted.remove(&key.1) {
                    st.running -= 1;
                    if let Some(pos) = at.and_then(|at| st.starts.iter().rposition(|t| *t == at)) {
                        st.starts.remove(pos);
                    }
                }
            }
            self.dispatch(&mut st, &mut LazyNow::new(), true, &mut wake);
            self.publish(&st);
            self.wake_idle(&mut st, &mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// A started request finished (or its future was dropped).
    pub(crate) fn finish(&self) {
        self.release_slot(false);
    }

    /// A started request's retry gives its slot back while it waits, if deferral allows;
    /// [`requeue`](Self::requeue) and [`poll_ticket`](Self::poll_ticket) take one again.
    pub(crate) fn defer(&self) -> bool {
        self.release_slot(true)
    }

    fn release_slot(&self, deferring: bool) -> bool {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            if deferring {
                if st.deferred >= self.config.max_deferred {
                    return false;
                }
                st.deferred += 1;
            }
            st.running -= 1;
            self.dispatch(&mut st, &mut LazyNow::new(), true, &mut wake);
            self.publish(&st);
            self.wake_idle(&mut st, &mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
        true
    }

    /// A deferred request queues for a slot again, at its original place: same priority and
    /// arrival order, so it goes before work that arrived after it. It was admitted once, so
    /// the capacity does not apply.
    /// Returns `true` when it took a slot at once (nobody waiting, one free): then it has
    /// resumed, and there is nothing to poll.
    pub(crate) fn requeue(&self, key: Key) -> bool {
        let mut now = LazyNow::new();
        let mut st = self.lock();
        if st.waiting.is_empty()
            && st.running < self.config.concurrency
            && self.window_open(&mut st, &mut now)
        {
            self.start(&mut st, &mut now);
            st.deferred -= 1;
            self.publish(&st);
            return true;
        }
        st.waiting.insert(key, None);
        false
    }

    /// A deferred request took its slot again (`poll_ticket` said `Started`).
    pub(crate) fn resumed(&self) {
        self.lock().deferred -= 1;
    }

    /// A deferred request ended without taking a slot again; `requeued` when it was waiting
    /// for one.
    pub(crate) fn abandon_deferred(&self, key: Key, requeued: bool) {
        if requeued {
            self.cancel(key);
        }
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            st.deferred -= 1;
            self.wake_idle(&mut st, &mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether a new request would start at once (a slot is free and nobody waits); if not,
    /// `waker` is woken when that may have changed.
    pub(crate) fn poll_idle(&self, waker: &Waker) -> bool {
        let mut wake = Vec::new();
        let idle = {
            let mut st = self.lock();
            self.dispatch(&mut st, &mut LazyNow::new(), true, &mut wake);
            let idle = st.waiting.is_empty() && st.running < self.config.concurrency;
            if !idle {
                match &st.idle {
                    Some(w) if w.will_wake(waker) => {}
                    _ => st.idle = Some(waker.clone()),
                }
            }
            idle
        };
        wake.into_iter().for_each(Waker::wake);
        idle
    }

    fn wake_idle(&self, st: &mut State, wake: &mut Vec<Waker>) {
        if st.waiting.is_empty() && st.running < self.config.concurrency {
            wake.extend(st.idle.take());
        }
    }

    /// When the interval window lets the next start happen, if it is full now.
    fn interval_reopens(&self, st: &State, now: &mut LazyNow) -> Option<Instant> {
        let (interval, cap) = self.config.interval?;
        if st.starts.len() < cap {
            return None;
        }
        let reopen = st.starts.front().map(|t| later(*t, interval))?;
        (reopen > now.get()).then_some(reopen)
    }

    /// Whether the interval window admits a start now, forgetting the starts it has left
    /// behind. Always true without an interval cap (and then the clock is not read).
    fn window_open(&self, st: &mut State, now: &mut LazyNow) -> bool {
        let Some((interval, cap)) = self.config.interval else {
            return true;
        };
        if st.starts.len() >= cap {
            let now = now.get();
            while st.starts.len() >= cap
                && st
                    .starts
                    .front()
                    .is_some_and(|t| later(*t, interval) <= now)
            {
                st.starts.pop_front();
            }
        }
        st.starts.len() < cap
    }

    /// Takes a slot (and an interval start); returns the start time when one is kept.
    fn start(&self, st: &mut State, now: &mut LazyNow) -> Option<Instant> {
        st.running += 1;
        self.config.interval.map(|_| {
            let now = now.get();
            st.starts.push_back(now);
            now
        })
    }

    /// Starts waiting tickets in order while concurrency and the interval window allow.
    ///
    /// `wake_head`: when the window is full, wake the first waiter so it arms the timer. Off
    /// when the caller is a waiter's own poll (it arms its timer itself; waking it would spin).
    fn dispatch(&self, st: &mut State, now: &mut LazyNow, wake_head: bool, wake: &mut Vec<Waker>) {
        while st.running < self.config.concurrency && !st.waiting.is_empty() {
            if !self.window_open(st, now) {
                // Only the head's timer is needed. It may not have one: it became head
                // through a cancellation, or the concurrency cap held it until now.
                if wake_head {
                    if let Some(Some(w)) = st.waiting.values().next() {
                        wake.push(w.clone());
                    }
                }
                return;
            }
            let Some((key, waker)) = st.waiting.pop_first() else {
                return;
            };
            let at = self.start(st, now);
            st.granted.insert(key.1, at);
            if let Some(w) = waker {
                wake.push(w);
            }
        }
    }

    fn publish(&self, st: &State) {
        if let Some(stats) = &self.stats {
            stats.set_queue(st.waiting.len(), st.running);
        }
    }
}
