//! One limit shared by a fleet of processes through Redis (feature `redis`); see
//! [`RedisBucket`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::core::Epochs;
use super::{interval_for_rate, Bucket, LocalBucket, Reservation, Reserve, Snapshot};
use crate::clock::{duration_nanos, later};
use crate::{ConfigError, Limits, Quota, ThrottleError};

/// The admission core ([`core`](super::core)) in Lua (`src/bucket/admit.lua`), atomic on the
/// server. Times are
/// microseconds of the server clock: a Lua number is a double, exact for integers below 2^53,
/// which microseconds since 1970 are (nanoseconds would not be). The property model in
/// `tests/properties.rs` runs against this script on a real server, as it does against the
/// in-process buckets, which is what keeps the two in step.
///
/// ARGV: want, cost, max_wait_us (-1: none), hold_rel_us (-1: none), set_iv_us (-1: none),
/// idle_ttl_ms, not_before_rel_us (-1: none; this request's own lower bound), quota count,
/// then per quota interval_us and burst (shortest window first).
/// Returns {now, hold, interval of the shortest window, refused slot or 0, re-slot counter,
/// slots...}.
///
/// Besides the windows' TATs, the hash keeps `piv`, the shortest interval at the last re-slot,
/// and `rs`, a counter moved by every rate change that voids waiting slots. The server decides
/// the re-slot, so every worker follows the same decision: one whose reply shows a new `rs`
/// re-slots its waiters. `rs` starts at the server's clock (microseconds) when the key is
/// created, so a key forgotten (expired, or lost in a restart) and created again never shows
/// a counter a worker has already seen: an older reply has a lower one.
const SCRIPT: &str = include_str!("admit.lua");

/// What a [`RedisBucket`] does while Redis cannot be reached (or answers too slowly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailMode {
    /// Keep admitting through an in-process [`LocalBucket`] enforcing `local`: choose a safe
    /// share of the fleet's limit, such as the limit divided by the number of workers
    /// ([`FailMode::open_share`]).
    Open {
        /// The limits each worker enforces on its own while Redis is unreachable.
        local: Limits,
    },
    /// Refuse every request with [`ThrottleError::BucketUnavailable`] until Redis is back.
    Closed,
}

impl FailMode {
    /// Fail open at `1 / workers` of `limits`: each quota's period is stretched `workers`
    /// times (so each worker paces at `workers` intervals) and its burst divided by `workers`
    /// (at least 1). Together the workers then stay within the fleet's limit plus about one
    /// request each.
    ///
    /// Errors: [`ConfigError::Zero`] for no workers, [`ConfigError::NoQuota`] for limits
    /// without a quota, [`ConfigError::Overflow`] if a stretched period overflows.
    ///
    /// ```
    /// use tower_throttle::bucket::FailMode;
    /// use tower_throttle::{Limits, Quota};
    ///
    /// let fleet = Limits::new(Quota::per_second(100)?.with_burst(8)?);
    /// let FailMode::Open { local } = FailMode::open_share(&fleet, 4)? else { unreachable!() };
    /// assert_eq!(local.quotas()[0].rate_per_second(), 25.0);
    /// assert_eq!(local.quotas()[0].burst(), 2);
    /// # Ok::<(), tower_throttle::ConfigError>(())
    /// ```
    pub fn open_share(limits: &Limits, workers: u32) -> Result<FailMode, ConfigError> {
        if workers == 0 {
            return Err(ConfigError::Zero { name: "workers" });
        }
        let mut share: Option<Limits> = None;
        for q in limits.quotas() {
            let period = q
                .period()
                .checked_mul(workers)
                .ok_or(ConfigError::Overflow { what: "period" })?;
            let quota = Quota::new(q.count(), period)?.with_burst((q.burst() / workers).max(1))?;
            share = Some(match share {
                None => Limits::new(quota),
                Some(l) => l.and(quota),
            });
        }
        let mut local = share.ok_or(ConfigError::NoQuota)?;
        if let Some(n) = limits.concurrency() {
            local = local.with_concurrency(n)?;
        }
        Ok(FailMode::Open { local })
    }
}

/// Counters of a [`RedisBucket`] (all workers' clones of one handle share them).
///
/// Round trips per request is `round_trips as f64 / reservations as f64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Calls to the Redis server (reservations, holds, rate changes), including failed ones.
    pub round_trips: u64,
    /// Reservations handed to callers, from any source.
    pub reservations: u64,
    /// Reservations served from the local lease, without a round trip.
    pub from_lease: u64,
    /// Slots the server granted to this worker.
    pub granted: u64,
    /// Leased slots discarded unused because they became too old (or fell inside a hold).
    pub expired: u64,
    /// Reservations decided without Redis because it was unreachable: admitted by the local
    /// fallback bucket ([`FailMode::Open`]) or refused ([`FailMode::Closed`]).
    pub fallbacks: u64,
    /// Server calls that failed or timed out.
    pub errors: u64,
    /// Re-slots of the fleet's rate this worker followed: a reply showed the server's re-slot
    /// counter moved (a cut, or a raise of more than an eighth, by any worker), so its waiters
    /// reserved again.
    pub reslots: u64,
}

#[derive(Debug, Default)]
struct Counters {
    round_trips: AtomicU64,
    reservations: AtomicU64,
    from_lease: AtomicU64,
    granted: AtomicU64,
    expired: AtomicU64,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    reslots: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The longest [`RedisBucketBuilder::idle_ttl`]: a year. Lua writes a number of 10^14 or more
/// in exponent form, which `PEXPIRE` refuses as "not an integer"; a year of milliseconds is
/// far below that, whatever hold the key also outlives.
pub const MAX_IDLE_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The longest [`RedisBucketBuilder::timeout`] and
/// [`retry_interval`](RedisBucketBuilder::retry_interval): a day. A server call allowed to
/// take longer, or an outage not probed for longer, is a mistake rather than a setting.
pub const MAX_REDIS_WAIT: Duration = Duration::from_secs(86_400);

/// Builds a [`RedisBucket`]; see [`RedisBucket::builder`].
#[derive(Debug, Clone)]
pub struct RedisBucketBuilder {
    limits: Limits,
    key: String,
    lease_size: u32,
    timeout: Duration,
    retry_interval: Duration,
    idle_ttl: Duration,
    fail_mode: FailMode,
    watch_interval: Duration,
}

impl RedisBucketBuilder {
    /// Slots taken per round trip and handed out locally (default 1: no leasing). Larger
    /// values cut round trips about `k` times; see [`RedisBucket`] ("Token
    /// leasing") for why the fleet still never exceeds limit + burst.
    pub fn lease_size(mut self, k: u32) -> Self {
        self.lease_size = k;
        self
    }

    /// The longest a server call may take before it counts as a failure (default 500 ms; at
    /// most [`MAX_REDIS_WAIT`], a day, or [`build`](Self::build) refuses it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long to stop asking Redis and use the [`FailMode`] before one
    /// caller probes again (default 1 s; at most [`MAX_REDIS_WAIT`], a day, or
    /// [`build`](Self::build) refuses it).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How long a key outlives its last meaningful state (default 60 s; from 1 ms to
    /// [`MAX_IDLE_TTL`], a year, or [`build`](Self::build) refuses it: the script sets the
    /// expiry in milliseconds through Lua's numbers, and Redis refuses a longer one as "not an
    /// integer", at run time, on every call). A stored run-time rate is forgotten with it.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// What to do while Redis is unreachable (default [`FailMode::Closed`]).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// While callers of this worker wait for slots further out than this, how often the bucket
    /// asks the server whether the fleet's rate or hold changed, when no reservation of its
    /// own has asked since (default 250 ms). A worker whose callers are all asleep makes no
    /// round trips of its own, so without this it would learn of another worker's raise (or
    /// hold) only when the first of them woke at its old slot. Shorter reaches waiting
    /// callers sooner, at up to one round trip per interval per waiting worker (a worker that
    /// reserves more often than that pays nothing); `Duration::MAX` (anything past a century)
    /// never watches. The watch
    /// runs only once the fleet's rate has been changed at run time ([`Bucket::set_rate`] on
    /// any worker, as adaptive control does): at a fixed rate no raise can come.
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Checks the configuration without connecting; [`build`](Self::build) returns the same
    /// errors.
    pub fn check(&self) -> Result<(), ConfigError> {
        let quotas = self.limits.quotas();
        if quotas.is_empty() {
            return Err(ConfigError::NoQuota);
        }
        if self.key.is_empty() {
            return Err(ConfigError::Invalid(
                "the Redis key prefix must not be empty: use e.g. the workspace id".into(),
            ));
        }
        if self.lease_size == 0 {
            return Err(ConfigError::Zero { name: "lease_size" });
        }
        if self.lease_size > 10_000 {
            return Err(ConfigError::OutOfRange {
                name: "lease_size",
                value: f64::from(self.lease_size),
                expected: "1 to 10000 slots per round trip",
            });
        }
        for (name, d) in [
            ("timeout", self.timeout),
            ("retry_interval", self.retry_interval),
            ("idle_ttl", self.idle_ttl),
            ("watch_interval", self.watch_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { name });
            }
        }
        // The key's expiry is set in whole milliseconds (PEXPIRE); timeouts and intervals may
        // be as short as a loopback server allows.
        if !(Duration::from_millis(1)..=MAX_IDLE_TTL).contains(&self.idle_ttl) {
            return Err(ConfigError::OutOfRange {
                name: "idle_ttl",
                value: self.idle_ttl.as_secs_f64(),
                expected: "at least 1 ms (Redis expires keys in whole milliseconds) and at \
                           most a year (Lua writes longer ones in a form PEXPIRE refuses)",
            });
        }
        for (name, d) in [
            ("timeout", self.timeout),
            ("retry_interval", self.retry_interval),
        ] {
            if d > MAX_REDIS_WAIT {
                return Err(ConfigError::OutOfRange {
                    name,
                    value: d.as_secs_f64(),
                    expected: "at most a day (86400 s)",
                });
            }
        }
        if let FailMode::Open { local } = &self.fail_mode {
            if local.quotas().is_empty() {
                return Err(ConfigError::NoQuota);
            }
        }
        Ok(())
    }

    /// The bucket, over a connection manager (see [`RedisBucket::connection_manager`] for one
    /// with reconnect settings that suit a rate limiter).
    ///
    /// Errors: [`ConfigError::NoQuota`] for limits without a quota (or a fail-open fallback
    /// without one), [`ConfigError::Invalid`] for an empty key, [`ConfigError::Zero`] for a
    /// zero lease size, timeout, retry interval, idle TTL or watch interval,
    /// [`ConfigError::OutOfRange`] for a lease size above 10,000, an idle TTL above
    /// [`MAX_IDLE_TTL`], or a timeout or retry interval above [`MAX_REDIS_WAIT`].
    pub fn build(self, conn: ConnectionManager) -> Result<RedisBucket, ConfigError> {
        self.check()?;
        let quotas = self.limits.quotas();
        let fallback = match self.fail_mode {
            FailMode::Closed => None,
            FailMode::Open { local } => Some(LocalBucket::new(local)),
        };
        let quota_args = quotas
            .iter()
            .map(|q| (micros_up(q.interval_nanos()), q.burst()))
            .collect();
        let primary = quotas[0].interval_nanos();
        let min_burst = quotas
            .iter()
            .map(|q| u64::from(q.burst()))
            .min()
            .unwrap_or(1);
        let min_other = quotas[1..]
            .iter()
            .map(Quota::interval_nanos)
            .min()
            .unwrap_or(u64::MAX);
        Ok(RedisBucket {
            inner: Arc::new(Inner {
                conn,
                script: Script::new(SCRIPT),
                key: format!("{}:gcra", self.key),
                quota_args,
                lease_size: self.lease_size,
                timeout: self.timeout,
                retry_interval: self.retry_interval,
                idle_ttl_ms: u64::try_from(self.idle_ttl.as_millis()).unwrap_or(u64::MAX),
                configured_primary: primary,
                primary_interval: AtomicU64::new(primary),
                min_other_interval: min_other,
                min_burst,
                fallback,
                limits: self.limits,
                state: Mutex::new(State::default()),
                counters: Counters::default(),
                reslots: Arc::new(Notify::new()),
                watch_interval: self.watch_interval,
            }),
        })
    }
}

/// A [`Bucket`] shared by every process that uses the same Redis key (feature `redis`).
///
/// Clones share one handle (one lease, one set of counters); separate handles, in this process
/// or others, share the limit through the server. The sections after the example describe
/// the algorithm, why token leasing cannot break the limit, and fault handling.
///
/// ```no_run
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_throttle::bucket::{FailMode, RedisBucket};
/// use tower_throttle::{Limits, Quota, RateLimitLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Workspace 42's API limit: 50 per second, shared by every worker of the fleet.
/// let limits = Limits::new(Quota::per_second(50)?);
/// let conn = RedisBucket::connection_manager("redis://127.0.0.1/", Duration::from_millis(500)).await?;
/// let bucket = RedisBucket::builder(limits.clone(), "workspace:42")
///     .lease_size(4) // one round trip per 4 requests
///     .fail_mode(FailMode::open_share(&limits, 4)?) // 4 workers: a quarter each without Redis
///     .build(conn)?;
///
/// let service = ServiceBuilder::new()
///     .layer(RateLimitLayer::with_bucket(bucket.clone()))
///     .service_fn(|req: u32| async move { Ok::<_, tower::BoxError>(req) });
/// # drop(service);
/// println!("{:?}", bucket.stats());
/// # Ok(())
/// # }
/// ```
///
/// # How a slot is decided
///
/// The script reads the server's clock (`TIME`), never a worker's, so clock skew between
/// workers does not matter. State is one hash per key: a theoretical arrival time (TAT) per
/// quota of the [`Limits`], the end of the current hold, and the run-time rate of the
/// shortest window. A caller gets `slot = max over quotas of max(now, TAT - tolerance)`, and
/// every quota's TAT moves past that slot, exactly like [`LocalBucket`]: several windows are
/// admitted together, and a caller refused by one consumes nothing from the others. Slots may
/// lie in the future (reserve-ahead): the local gate sleeps until then, so waiting callers
/// across the whole fleet are spread one interval apart. A refusal because of `max_wait`
/// reserves nothing. The hash gets a `PEXPIRE` of "until its state no longer matters" plus
/// [`idle_ttl`](RedisBucketBuilder::idle_ttl), so idle keys vanish.
///
/// A slot comes back in server time and becomes a local [`Instant`] as
/// `reply_instant + (slot - server_now)`. `server_now` was read between sending and receiving,
/// so using the instant the reply *arrived* maps every slot to a local instant no earlier than
/// the true one: a worker may go up to one round trip late, never early. A reservation's
/// [`token`](Reservation::token) is its slot on the server's clock, in microseconds since the
/// Unix epoch (for fallback reservations it is the local bucket's own value).
///
/// # Token leasing, and why it cannot break the limit
///
/// With [`lease_size`](RedisBucketBuilder::lease_size) `k > 1` one round trip reserves `k`
/// consecutive slots (the same arithmetic as `k` callers arriving at once) and the worker hands
/// them out locally, earliest first, behind a short mutex. The fleet's granted slots are still
/// exactly the slots a single GCRA would grant, so for a quota of `n` per `P` (interval
/// `I = P / n`) with burst `B`, any `m` granted slots inside a span shorter than `P` satisfy
/// `(m - B) * I < P`, i.e. at most `n + B - 1` slots per window.
///
/// Leasing only changes *when* a granted slot is used. A leased slot at `s` is used at
/// `max(s, taken)`, and it is discarded, never used, once it is older than a grace of half the
/// smallest interval of all quotas (`I / 2`). So every request goes at a time in `[s, s + g]`
/// with `g < I`. The requests inside any window `[t, t + P)` then hold slots inside
/// `(t - g, t + P)`, a span shorter than `P + I = (n + 1) * I`, so `(m - B) * I < (n + 1) * I`
/// and `m <= n + B`: **never more than limit + burst in any window**, whatever the lease size,
/// the number of workers or how they interleave. The other half of the interval is the margin
/// for what the argument cannot see: the round-trip error of the conversion above, timer
/// lateness and network jitter to the API. A stale slot is counted in
/// [`RedisStats::expired`]; it is capacity lost to the fleet, never capacity used twice.
///
/// An unused slot handed back with [`Bucket::cancel`] returns to the local lease (it is still
/// this worker's), and is used by the next local caller or expires.
///
/// # Holds and the adaptive rate
///
/// [`Bucket::hold_until`] voids this worker's leased slots before the hold and writes the hold
/// to the server, where it is a floor under every slot (it spends no window's allowance);
/// every worker's next round trip lands after it and brings the hold back, so [`Bucket::held_until`] (answered from that cached value) makes
/// sleeping callers elsewhere in the fleet queue again. A worker whose callers all sleep
/// makes no round trip until one wakes; under a run-time rate its watch (below) brings the
/// hold before their slots come. Slots a worker already leased before
/// the hold was set may still be used by that worker (at most `lease_size - 1`); use
/// `lease_size(1)` where holds must take effect on the very next request. Until the server
/// has acknowledged a hold, every reservation of this worker re-asserts it.
///
/// [`Bucket::set_rate`] stores the shortest window's interval on the server too, so the fleet
/// follows one adaptive rate; it is re-sent with each reservation until acknowledged, and
/// every reply refreshes [`Bucket::rate`]. The server also decides, by the rule the in-process
/// bucket uses, whether the change voids the slots of callers already waiting: a cut does, and
/// so does a raise of more than an eighth over the pace they were slotted at (a smaller raise
/// keeps every slot, so a controller climbing a little per response wakes nobody). Such a
/// re-slot moves a counter on the server that every reply carries, so every worker makes the
/// same decision, whichever worker changed the rate: it voids its leased and handed-back
/// slots, which were paced at the old rate, and makes its waiting callers re-slot; after a
/// raise it wakes them at once ([`Bucket::reslots`]), so the new pace reaches callers already
/// queued, not only new ones. A worker whose callers all sleep makes no round trips of its
/// own: once the fleet's rate has been changed at run time, while any waits more than
/// [`watch_interval`](RedisBucketBuilder::watch_interval) ahead it asks the server that often
/// (when no reservation has asked since), so a raise or a hold elsewhere reaches its waiters
/// within about one watch interval. Until then they keep slots the server has already
/// rebased away, so for that long the fleet may send up to one old-pace request per old
/// interval above the new pace. A cut made here re-slots this worker's waiters at once,
/// before the server answers.
///
/// # Faults
///
/// Every server call has a [`timeout`](RedisBucketBuilder::timeout), so a dead or stalled
/// server never hangs callers. A failed call is counted, logged with `tracing::warn!`, and the
/// bucket stops asking Redis for [`retry_interval`](RedisBucketBuilder::retry_interval); in the
/// meantime reservations follow the [`FailMode`]: a [`LocalBucket`] at a safe share of the
/// limit ([`FailMode::open_share`]), or [`ThrottleError::BucketUnavailable`]. After the interval
/// one caller probes Redis (the others keep falling back) and the bucket recovers on its
/// first success; the `redis` crate's `ConnectionManager` reconnects underneath, without a
/// restart. A restarted Redis has forgotten the state, so the first instants after recovery
/// may add one burst on top of what the fallback admitted.
#[derive(Clone)]
pub struct RedisBucket {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    script: Script,
    key: String,
    /// Per quota, shortest window first: interval in server microseconds and burst.
    quota_args: Vec<(u64, u32)>,
    lease_size: u32,
    timeout: Duration,
    retry_interval: Duration,
    idle_ttl_ms: u64,
    configured_primary: u64,
    /// Nanoseconds between paced requests of the shortest window, as last set or seen.
    primary_interval: AtomicU64,
    min_other_interval: u64,
    /// The smallest burst of the windows: a weighted request above it is refused locally.
    min_burst: u64,
    fallback: Option<LocalBucket>,
    limits: Limits,
    state: Mutex<State>,
    counters: Counters,
    /// Wakes this worker's waiters when a re-slot to a faster rate voids their slots.
    reslots: Arc<Notify>,
    watch_interval: Duration,
}

#[derive(Debug, Default)]
struct State {
    lease: Lease,
    /// A hold set here that the server has not acknowledged yet.
    hold_pending: Option<Instant>,
    /// The server's latest hold: its value in server microseconds, and as a local instant.
    hold_seen: Option<(u64, Instant)>,
    /// A rate set here (server microseconds) that the server has not acknowledged yet.
    rate_pending: Option<u64>,
    /// Set while Redis is considered down: no call before this instant.
    down_until: Option<Instant>,
    /// While one caller probes a Redis believed down: when that probe counts as lost (its
    /// future may be dropped before it answers, so the mark must expire on its own).
    probe_until: Option<Instant>,
    last_error: String,
    /// Set after Redis came back: until then server slots also pass the fallback bucket.
    recovering_until: Option<Instant>,
    /// Tags reservations: a re-slot of the fleet's rate, or a switch between the server and
    /// the fallback, makes older reservations stale so their callers re-slot from the source
    /// now in use.
    epochs: Epochs,
    /// The fleet's re-slot counter in the latest reply taken in.
    rs_seen: Option<u64>,
    /// The shortest interval (server microseconds) in the latest reply taken in: a re-slot to
    /// a shorter one wakes waiters early.
    server_iv: Option<u64>,
    /// When the latest reply arrived.
    last_reply: Option<Instant>,
    /// The latest server slot this worker was granted: callers may wait until then.
    ahead_until: Option<Instant>,
    /// Whether the watch task runs (see `Inner::watch`).
    watching: bool,
    /// Whether the fleet's rate was changed at run time, here or (seen in a reply) elsewhere:
    /// only then can a raise void waiting slots, so only then does the watch run.
    adaptive: bool,
}

/// Slots granted to this worker, earliest first.
#[derive(Debug, Default)]
struct Lease {
    slots: VecDeque<Leased>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leased {
    at: Instant,
    /// The slot in server microseconds, handed out as the reservation's token.
    server_us: u64,
}

/// What `Lease::take` found.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    Slot(Leased),
    TooFar(Duration),
    Empty,
}

impl Lease {
    /// The earliest slot still usable at `now`; older ones are discarded and counted in
    /// `expired`. A slot further than `max_wait` stays leased.
    fn take(
        &mut self,
        now: Instant,
        grace: Duration,
        max_wait: Option<Duration>,
        expired: &mut u64,
    ) -> Take {
        while let Some(front) = self.slots.front() {
            if later(front.at, grace) < now {
                self.slots.pop_front();
                *expired += 1;
            } else {
                break;
            }
        }
        match self.slots.front() {
            None => Take::Empty,
            Some(front) => {
                let wait = front.at.saturating_duration_since(now);
                if max_wait.is_some_and(|m| wait > m) {
                    Take::TooFar(wait)
                } else {
                    Take::Slot(self.slots.pop_front().expect("front exists"))
                }
            }
        }
    }

    /// Adds a slot in order (slots from concurrent round trips, or handed back, interleave).
    fn put(&mut self, slot: Leased) {
        let at = self.slots.partition_point(|s| s.at <= slot.at);
        self.slots.insert(at, slot);
    }

    /// Drops every slot (a rate cut voids them: they were paced at the old rate); returns how
    /// many.
    fn void_all(&mut self) -> u64 {
        let n = self.slots.len() as u64;
        self.slots.clear();
        n
    }

    /// Drops slots before `until` (a hold voids them); returns how many.
    fn void_before(&mut self, until: Instant) -> u64 {
        let n = self.slots.partition_point(|s| s.at < until);
        self.slots.drain(..n);
        n as u64
    }

    fn usable(&self, now: Instant, grace: Duration) -> impl Iterator<Item = &Leased> {
        self.slots.iter().filter(move |s| later(s.at, grace) >= now)
    }
}

/// One script reply.
#[derive(Debug)]
struct Reply {
    now: u64,
    hold: u64,
    primary_us: u64,
    refused: u64,
    /// The fleet's re-slot counter (see `SCRIPT`).
    rs: u64,
    slots: Vec<u64>,
}

impl Reply {
    fn parse(v: Vec<i64>) -> Result<Reply, String> {
        if v.len() < 5 || v.iter().any(|x| *x < 0) {
            return Err(format!(
                "unexpected reply from the rate-limit script: {v:?}"
            ));
        }
        let v: Vec<u64> = v.into_iter().map(|x| x as u64).collect();
        Ok(Reply {
            now: v[0],
            hold: v[1],
            primary_us: v[2],
            refused: v[3],
            rs: v[4],
            slots: v[5..].to_vec(),
        })
    }

    /// A server time as a local instant, given the instant the reply arrived.
    fn local(&self, server_us: u64, arrived: Instant) -> Instant {
        later(
            arrived,
            Duration::from_micros(server_us.saturating_sub(self.now)),
        )
    }
}

/// What a reply's re-slot counter says, against the last one this worker saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// The first reply: nothing of this worker's was slotted by the server yet.
    First,
    Same,
    /// The fleet re-slotted since (or the key was created again, which voids slots as much).
    Newer,
    /// A reply decided before one already taken in (concurrent round trips finish in any
    /// order): its slots predate the re-slot that one showed.
    Older,
}

fn follow(seen: Option<u64>, rs: u64) -> Follow {
    match seen {
        None => Follow::First,
        Some(seen) if rs == seen => Follow::Same,
        Some(seen) if rs > seen => Follow::Newer,
        Some(_) => Follow::Older,
    }
}

/// Whether requests go one per round trip, paced by the fallback: in the window after Redis
/// came back.
fn want_single(recovering_until: Option<Instant>, now: Instant) -> bool {
    recovering_until.is_some_and(|u| now < u)
}

/// Where a reservation came from: the server, or the fallback bucket while Redis was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Server,
    Fallback,
}

/// A reservation's epoch: the change generation in the high 31 bits, the source in the low bit.
fn tag(epochs: Epochs, source: Source) -> u32 {
    epochs.change << 1 | u32::from(source == Source::Fallback)
}

fn source(epoch: u32) -> Source {
    if epoch & 1 == 1 {
        Source::Fallback
    } else {
        Source::Server
    }
}

/// Whether a tagged reservation predates the last re-slot: [`Epochs::is_stale`] on tags, both
/// sides shifted alike so wrapping stays consistent.
fn stale(epochs: Epochs, tagged: u32) -> bool {
    ((epochs.reslot << 1).wrapping_sub(tagged & !1) as i32) > 0
}

fn micros_up(nanos: u64) -> u64 {
    nanos.div_ceil(1_000).max(1)
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update leaves the state consistent before anything that could panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisBucket {
    /// Starts building a bucket enforcing `limits` for every worker that uses `key` (for
    /// example the workspace id; the Redis key is `"{key}:gcra"`). Workers sharing a key must
    /// be built with the same limits.
    pub fn builder(limits: impl Into<Limits>, key: impl Into<String>) -> RedisBucketBuilder {
        RedisBucketBuilder {
            limits: limits.into(),
            key: key.into(),
            lease_size: 1,
            timeout: Duration::from_millis(500),
            retry_interval: Duration::from_secs(1),
            idle_ttl: Duration::from_secs(60),
            fail_mode: FailMode::Closed,
            watch_interval: Duration::from_millis(250),
        }
    }

    /// A connection manager for `url` set up for a rate limiter: every connection attempt and
    /// response bounded by `timeout`, and reconnection retried quickly (every 0.5 s at most)
    /// rather than with the `redis` crate's long default back-off, so a restarted server is
    /// used again within about a second. Fails if the first connection cannot be made.
    /// A `timeout` above [`MAX_REDIS_WAIT`] (a day) counts as a day.
    pub async fn connection_manager(
        url: &str,
        timeout: Duration,
    ) -> ::redis::RedisResult<ConnectionManager> {
        // The `redis` crate adds the timeout to an instant of its own.
        let timeout = timeout.min(MAX_REDIS_WAIT);
        let client = ::redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_factor(2)
            .set_max_delay(500)
            .set_number_of_retries(2)
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        ConnectionManager::new_with_config(client, config).await
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            round_trips: get(&c.round_trips),
            reservations: get(&c.reservations),
            from_lease: get(&c.from_lease),
            granted: get(&c.granted),
            expired: get(&c.expired),
            fallbacks: get(&c.fallbacks),
            errors: get(&c.errors),
            reslots: get(&c.reslots),
        }
    }

    /// The limits the bucket was built with (the configured rates, not the current one).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The Redis key holding the shared state.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Whether the bucket currently treats Redis as unreachable (and follows its [`FailMode`]).
    pub fn is_degraded(&self) -> bool {
        lock(&self.inner.state).down_until.is_some()
    }
}

impl Inner {
    /// Whether a caller waiting at `now` for a slot `at` would sleep past the next watch.
    fn beyond_watch(&self, at: Instant, now: Instant) -> bool {
        now.checked_add(self.watch_interval).is_some_and(|t| at > t)
    }

    /// How late a leased slot may still be used: half the smallest interval (see `RedisBucket`).
    fn grace(&self) -> Duration {
        let smallest = self
            .primary_interval
            .load(Ordering::Relaxed)
            .min(self.min_other_interval);
        Duration::from_nanos(smallest / 2)
    }

    /// A re-slot of the rate: a cut made here, one the server announced in a reply (a cut or
    /// a raise of more than an eighth, by any worker), or one of the fallback while it is the
    /// source. Waiters re-slot, and leased or handed-back slots are dropped, since both were
    /// paced at the old rate. Dropping is safe (the server counted those slots; they go
    /// unused). After a raise the waiters are woken at once: their old slots come later than
    /// the new pace asks.
    fn after_reslot(&self, st: &mut State, raised: bool) {
        st.epochs.bump(true);
        let voided = st.lease.void_all();
        bump(&self.counters.expired, voided);
        // Every slot granted so far is void: nobody waits for them any more.
        st.ahead_until = None;
        if raised {
            // After the bump, so that a woken waiter finds its slot stale.
            self.reslots.notify_waiters();
        }
    }

    /// A server slot handed to a caller; `stale` when it was decided before a re-slot this
    /// worker already followed, so that its caller re-slots when it wakes.
    fn reservation(&self, slot: Leased, st: &State, cost: u32, stale: bool) -> Reservation {
        bump(&self.counters.reservations, 1);
        let epochs = if stale {
            Epochs {
                change: st.epochs.reslot.wrapping_sub(1),
                reslot: 0,
            }
        } else {
            st.epochs
        };
        Reservation::new(slot.at, slot.server_us, tag(epochs, Source::Server)).with_cost(cost)
    }

    /// Notes a server slot handed to a caller here, and starts the watch if the caller waits
    /// for it longer than one watch interval.
    fn waits_until(self: &Arc<Self>, st: &mut State, at: Instant, now: Instant) {
        st.ahead_until = Some(st.ahead_until.map_or(at, |a| a.max(at)));
        if st.watching || !st.adaptive || !self.beyond_watch(at, now) {
            return;
        }
        // Without a runtime (a synchronous caller) nobody sleeps on a timer here either.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            st.watching = true;
            handle.spawn(Arc::clone(self).watch());
        }
    }

    /// Keeps this worker's waiters in step with the fleet while none of its own reservations
    /// asks the server: after a watch interval without a reply, one call that reserves nothing
    /// brings back the re-slot counter, the rate and the hold (and re-sends what is pending).
    /// Ends once no slot granted here lies more than one interval ahead, since a change seen
    /// later would reach no waiter before its slot anyway; the next far slot starts it again.
    async fn watch(self: Arc<Self>) {
        let every = self.watch_interval;
        let mut next = later(Instant::now(), every);
        loop {
            tokio::time::sleep_until(next).await;
            let now = Instant::now();
            let due = {
                let mut st = lock(&self.state);
                if !st.ahead_until.is_some_and(|a| self.beyond_watch(a, now)) {
                    st.watching = false;
                    return;
                }
                st.last_reply.map_or(now, |r| later(r, every))
            };
            if due <= now {
                Arc::clone(&self).push().await;
                // From the answer (or the failure): a down server is not asked in a loop.
                next = later(Instant::now(), every);
            } else {
                next = due;
            }
        }
    }

    fn fallback(
        &self,
        now: Instant,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Result<Reservation, ThrottleError> {
        bump(&self.counters.fallbacks, 1);
        match &self.fallback {
            Some(local) => {
                tracing::debug!(key = %self.key, "redis unavailable: reserving from the local fallback bucket");
                let r = local.try_reserve_weighted(now, cost, max_wait)?;
                bump(&self.counters.reservations, 1);
                let epochs = lock(&self.state).epochs;
                Ok(
                    Reservation::new(r.at(), r.token(), tag(epochs, Source::Fallback))
                        .with_cost(r.cost()),
                )
            }
            None => {
                let last = lock(&self.state).last_error.clone();
                Err(ThrottleError::BucketUnavailable {
                    reason: format!("redis key {}: {last}", self.key),
                })
            }
        }
    }

    /// One script call, bounded by the timeout.
    async fn call(
        &self,
        want: u32,
        cost: u32,
        max_wait: Option<Duration>,
        hold_rel_us: Option<u64>,
        set_iv_us: Option<u64>,
        not_before_rel_us: Option<u64>,
    ) -> Result<Reply, String> {
        bump(&self.counters.round_trips, 1);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(want)
            .arg(cost)
            .arg(max_wait.map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2)))
            .arg(hold_rel_us.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX / 2)))
            .arg(set_iv_us.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX / 2)))
            .arg(self.idle_ttl_ms)
            .arg(not_before_rel_us.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX / 2)))
            .arg(self.quota_args.len());
        for (interval, burst) in &self.quota_args {
            invocation.arg(*interval).arg(*burst);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
        {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(v)) => Reply::parse(v),
        }
    }

    fn failed(&self, error: String, now: Instant) {
        bump(&self.counters.errors, 1);
        let mode = if self.fallback.is_some() {
            "failing open to the local bucket"
        } else {
            "failing closed"
        };
        let mut st = lock(&self.state);
        tracing::warn!(
            key = %self.key,
            error = %error,
            retry_in = ?self.retry_interval,
            "redis rate-limit bucket unreachable; {mode}"
        );
        if st.down_until.is_none() {
            // Switching to the fallback: callers waiting on server slots re-slot from it, and it
            // starts drained (paced, no burst), so the two sources never add up.
            st.epochs.bump(true);
            if let Some(local) = &self.fallback {
                local.drain(now);
            }
        }
        st.down_until = Some(later(now, self.retry_interval));
        st.probe_until = None;
        st.last_error = error;
    }

    /// Takes in a successful reply: recovery, rate, hold, and the granted slots. Returns the
    /// reservation for the caller that made the round trip, if it wanted one.
    fn absorb(
        self: &Arc<Self>,
        reply: &Reply,
        arrived: Instant,
        sent_hold: Option<Instant>,
        sent_rate: Option<u64>,
        cost: u32,
        max_wait: Option<Duration>,
    ) -> Option<Result<Reservation, ThrottleError>> {
        let mut st = lock(&self.state);
        if st.down_until.take().is_some() {
            tracing::info!(key = %self.key, "redis rate-limit bucket reachable again");
            // Callers waiting on fallback slots re-slot from the server, and for as long as
            // another worker may still be on its fallback (its probe comes within a retry
            // interval), server slots pass the fallback too.
            st.epochs.bump(true);
            st.recovering_until = Some(later(
                arrived,
                self.retry_interval.saturating_add(self.timeout),
            ));
            if let Some(local) = &self.fallback {
                local.drain(arrived);
            }
        }
        st.probe_until = None;
        st.last_reply = Some(arrived);
        if sent_hold.is_some() && st.hold_pending == sent_hold {
            st.hold_pending = None;
        }
        if sent_rate.is_some() && st.rate_pending == sent_rate {
            st.rate_pending = None;
        }
        let followed = follow(st.rs_seen, reply.rs);
        if followed != Follow::Older {
            if st.rate_pending.is_none() && reply.primary_us > 0 {
                self.primary_interval
                    .store(reply.primary_us.saturating_mul(1_000), Ordering::Relaxed);
            }
            if followed == Follow::Newer {
                // The server re-slotted the fleet (this worker's change or another's): the
                // same decision for every worker, whoever made the change.
                bump(&self.counters.reslots, 1);
                let raised = st.server_iv.is_some_and(|iv| reply.primary_us < iv);
                self.after_reslot(&mut st, raised);
            }
            st.rs_seen = Some(reply.rs);
            st.server_iv = Some(reply.primary_us);
            st.adaptive |= reply.primary_us != self.quota_args[0].0;
        }
        let mut hold_local = None;
        if reply.hold > reply.now {
            // A hold keeps the instant it was first seen at, so that slots after it are
            // compared against one fixed value, not a conversion that moves with each reply.
            let local = match st.hold_seen {
                Some((us, local)) if us == reply.hold => local,
                _ => {
                    let local = reply.local(reply.hold, arrived);
                    st.hold_seen = Some((reply.hold, local));
                    let voided = st.lease.void_before(local);
                    bump(&self.counters.expired, voided);
                    local
                }
            };
            hold_local = Some(local);
        }
        if reply.refused != 0 {
            let wait = reply.local(reply.refused, arrived) - arrived;
            return Some(Err(ThrottleError::WaitTooLong {
                wait,
                max_wait: max_wait.unwrap_or(Duration::ZERO),
            }));
        }
        bump(&self.counters.granted, reply.slots.len() as u64);
        let leased = |server_us: u64| {
            let mut at = reply.local(server_us, arrived);
            if let Some(h) = hold_local.filter(|_| server_us >= reply.hold) {
                at = at.max(h);
            }
            Leased { at, server_us }
        };
        let older = followed == Follow::Older;
        if cost > 1 || older || want_single(st.recovering_until, arrived) {
            // A weighted slot, or one paced by the fallback, is the caller's alone: it never
            // joins the lease of single units. Nor do slots decided before a re-slot this
            // worker followed: the caller's re-slots when it wakes, the rest go unused.
            let first = leased(*reply.slots.first()?);
            bump(&self.counters.expired, reply.slots.len() as u64 - 1);
            if !older {
                self.waits_until(&mut st, first.at, arrived);
            }
            return Some(Ok(self.reservation(first, &st, cost, older)));
        }
        for &server_us in &reply.slots {
            st.lease.put(leased(server_us));
        }
        if reply.slots.is_empty() {
            return None;
        }
        let mut expired = 0;
        let taken = st.lease.take(arrived, self.grace(), None, &mut expired);
        bump(&self.counters.expired, expired);
        match taken {
            Take::Slot(slot) => {
                self.waits_until(&mut st, slot.at, arrived);
                Some(Ok(self.reservation(slot, &st, 1, false)))
            }
            // Unreachable: fresh slots are never stale at `arrived`; answer like a refusal.
            Take::TooFar(wait) => Some(Err(ThrottleError::WaitTooLong {
                wait,
                max_wait: max_wait.unwrap_or(Duration::ZERO),
            })),
            Take::Empty => None,
        }
    }

    /// A reservation that needs the server: one round trip for `lease_size` slots.
    async fn round_trip(
        self: Arc<Self>,
        cost: u32,
        max_wait: Option<Duration>,
        hold: Option<Instant>,
        rate: Option<u64>,
        not_before: Option<Instant>,
    ) -> Result<Reservation, ThrottleError> {
        let sent = Instant::now();
        let hold_rel = hold.map(|h| micros_up(duration_nanos(h.saturating_duration_since(sent))));
        let not_before_rel =
            not_before.map(|t| micros_up(duration_nanos(t.saturating_duration_since(sent))));
        // A weighted or paced-by-the-fallback request is the caller's alone: no lease.
        let want = if cost > 1 || not_before.is_some() {
            1
        } else {
            self.lease_size
        };
        match self
            .call(want, cost, max_wait, hold_rel, rate, not_before_rel)
            .await
        {
            Ok(reply) => {
                let arrived = Instant::now();
                match self.absorb(&reply, arrived, hold, rate, cost, max_wait) {
                    Some(result) => result,
                    None => self.fallback(arrived, cost, max_wait),
                }
            }
            Err(error) => {
                let now = Instant::now();
                self.failed(error, now);
                self.fallback(now, cost, max_wait)
            }
        }
    }

    /// Writes a hold or a rate to the server without reserving anything.
    async fn push(self: Arc<Self>) {
        let (hold, rate) = {
            let st = lock(&self.state);
            if st.down_until.is_some() {
                // The next reservation after recovery re-sends it.
                return;
            }
            (st.hold_pending, st.rate_pending)
        };
        let sent = Instant::now();
        let hold_rel = hold
            .filter(|h| *h > sent)
            .map(|h| micros_up(duration_nanos(h - sent)));
        match self.call(0, 1, None, hold_rel, rate, None).await {
            Ok(reply) => {
                self.absorb(&reply, Instant::now(), hold, rate, 1, None);
            }
            Err(error) => self.failed(error, Instant::now()),
        }
    }

    fn spawn_push(self: &Arc<Self>) {
        // Without a runtime (a synchronous caller) the next reservation carries the change.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(Arc::clone(self).push());
        }
    }
}

impl Bucket for RedisBucket {
    fn reserve_weighted(&self, now: Instant, cost: u32, max_wait: Option<Duration>) -> Reserve {
        let inner = &self.inner;
        let cost = cost.max(1);
        if u64::from(cost) > inner.min_burst {
            // Known without asking: no window could ever admit it at once.
            return Reserve::Ready(Err(ThrottleError::CostTooHigh {
                cost: u64::from(cost),
                burst: inner.min_burst,
            }));
        }
        let mut st = lock(&inner.state);
        let recovering = want_single(st.recovering_until, now) && st.down_until.is_none();
        if cost == 1 && !recovering {
            let mut expired = 0;
            let taken = st.lease.take(now, inner.grace(), max_wait, &mut expired);
            bump(&inner.counters.expired, expired);
            match taken {
                Take::Slot(slot) => {
                    bump(&inner.counters.from_lease, 1);
                    inner.waits_until(&mut st, slot.at, now);
                    return Reserve::Ready(Ok(inner.reservation(slot, &st, 1, false)));
                }
                Take::TooFar(wait) => {
                    // The server could only offer a later slot: refuse without a round trip.
                    return Reserve::Ready(Err(ThrottleError::WaitTooLong {
                        wait,
                        max_wait: max_wait.unwrap_or(Duration::ZERO),
                    }));
                }
                Take::Empty => {}
            }
        }
        match st.down_until {
            Some(until) if now < until || st.probe_until.is_some_and(|p| now < p) => {
                drop(st);
                return Reserve::Ready(inner.fallback(now, cost, max_wait));
            }
            // This caller probes; the others keep falling back until it answers.
            Some(_) => st.probe_until = Some(later(now, inner.timeout)),
            None => {}
        }
        let hold = st.hold_pending.filter(|h| *h > now);
        let rate = st.rate_pending;
        drop(st);
        // Just after Redis came back, other workers may still be on their fallback shares
        // until their own probe succeeds: a request then first takes this worker's share, and
        // the server schedules it no earlier than that, so the two sources never add up and
        // the server's schedule stays the fleet's real one.
        let not_before = match (&inner.fallback, recovering) {
            (Some(local), true) => match local.try_reserve_weighted(now, cost, max_wait) {
                Ok(r) => Some(r.at()),
                Err(e) => return Reserve::Ready(Err(e)),
            },
            _ => None,
        };
        Reserve::Pending(Box::pin(
            Arc::clone(inner).round_trip(cost, max_wait, hold, rate, not_before),
        ))
    }

    fn cancel(&self, reservation: Reservation, now: Instant) {
        let inner = &self.inner;
        if source(reservation.epoch()) == Source::Fallback {
            if let Some(local) = &inner.fallback {
                // Re-issued under the local bucket's own epoch: exact if it was its latest.
                let back = Reservation::new(reservation.at(), reservation.token(), local.epoch())
                    .with_cost(reservation.cost());
                local.cancel(back, now);
            }
            return;
        }
        // A weighted slot cannot be split into single units for the lease: it is forgotten.
        if reservation.cost() > 1 {
            return;
        }
        // Still this worker's slot: the next local caller may use it, within the same grace.
        if later(reservation.at(), inner.grace()) >= now {
            let mut st = lock(&inner.state);
            let voided = st
                .hold_pending
                .into_iter()
                .chain(st.hold_seen.map(|(_, at)| at))
                .any(|hold| reservation.at() < hold);
            if !voided && !stale(st.epochs, reservation.epoch()) {
                st.lease.put(Leased {
                    at: reservation.at(),
                    server_us: reservation.token(),
                });
            }
        }
    }

    fn is_current(&self, reservation: &Reservation, now: Instant) -> bool {
        if stale(lock(&self.inner.state).epochs, reservation.epoch()) {
            return false;
        }
        !matches!(self.held_until(now), Some(hold) if hold > reservation.at())
    }

    fn hold_until(&self, until: Instant) {
        let inner = &self.inner;
        {
            let mut st = lock(&inner.state);
            st.hold_pending = Some(st.hold_pending.map_or(until, |h| h.max(until)));
            let voided = st.lease.void_before(until);
            bump(&inner.counters.expired, voided);
        }
        if let Some(local) = &inner.fallback {
            local.hold_until(until);
        }
        inner.spawn_push();
    }

    fn held_until(&self, now: Instant) -> Option<Instant> {
        let inner = &self.inner;
        let st = lock(&inner.state);
        let fallback = inner.fallback.as_ref().and_then(|l| l.held_until(now));
        st.hold_pending
            .into_iter()
            .chain(st.hold_seen.map(|(_, at)| at))
            .chain(fallback)
            .filter(|h| *h > now)
            .max()
    }

    fn set_rate(&self, per_second: f64) -> Result<(), ConfigError> {
        let inner = &self.inner;
        let interval = interval_for_rate(per_second)?;
        let us = micros_up(interval);
        let new = us.saturating_mul(1_000);
        let before = inner.primary_interval.swap(new, Ordering::Relaxed);
        let fallback_reslot = match &inner.fallback {
            Some(local) => {
                // The fallback keeps its share: scale its rate by the same factor.
                let factor = inner.configured_primary as f64 / interval as f64;
                let local_rate = local.limits().quotas()[0].rate_per_second() * factor;
                let epoch = local.epoch();
                local.set_rate(local_rate)?;
                local.is_stale(epoch)
            }
            None => false,
        };
        {
            let mut st = lock(&inner.state);
            st.rate_pending = Some(us);
            st.adaptive = true;
            if new > before {
                // A cut re-slots here at once: the server re-slots too, and the reply that
                // says so re-slots once more, which is only conservative.
                inner.after_reslot(&mut st, false);
            } else if fallback_reslot && st.down_until.is_some() {
                // Waiters hold the fallback's slots, which its own rule voided; they re-slot
                // through this bucket's epochs and signal, the only ones a gate here sees.
                inner.after_reslot(&mut st, true);
            } else {
                // Whether a raise re-slots the fleet is the server's decision (the pace at its
                // last re-slot is kept there): the reply to the push below says.
                st.epochs.bump(false);
            }
        }
        inner.spawn_push();
        Ok(())
    }

    fn reslots(&self) -> Option<&Arc<Notify>> {
        Some(&self.inner.reslots)
    }

    fn rate(&self) -> f64 {
        1e9 / self.inner.primary_interval.load(Ordering::Relaxed) as f64
    }

    /// This worker's view without I/O: `available` and `next_free` describe its lease.
    fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = &self.inner;
        let (available, next_free) = {
            let st = lock(&inner.state);
            let grace = inner.grace();
            let available = st.lease.usable(now, grace).filter(|s| s.at <= now).count() as u64;
            let next = st
                .lease
                .usable(now, grace)
                .next()
                .map_or(now, |s| s.at.max(now));
            (available, next)
        };
        Snapshot {
            available,
            next_free,
            rate_per_second: self.rate(),
            held_until: self.held_until(now),
        }
    }
}

impl fmt::Debug for RedisBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisBucket")
            .field("key", &inner.key)
            .field("limits", &inner.limits)
            .field("lease_size", &inner.lease_size)
            .field("timeout", &inner.timeout)
            .field("fail_open", &inner.fallback.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn lease_hands_out_in_order_and_discards_stale_slots() {
        let t0 = Instant::now();
        let mut lease = Lease::default();
        for (i, off) in [30u64, 0, 10, 20].into_iter().enumerate() {
            lease.put(Leased {
                at: t0 + ms(off),
                server_us: i as u64,
            });
        }
        let mut expired = 0;
        let grace = ms(5);
        // At +16 ms: the slot at 0 is 16 ms old (stale), 10 is 6 ms old (stale), 20 is next.
        let got = lease.take(t0 + ms(16), grace, None, &mut expired);
        assert_eq!(expired, 2);
        assert!(matches!(got, Take::Slot(s) if s.at == t0 + ms(20)));
        // The next one is 14 ms away: over a 10 ms max_wait it stays leased.
        assert_eq!(
            lease.take(t0 + ms(16), grace, Some(ms(10)), &mut expired),
            Take::TooFar(ms(14))
        );
        assert!(matches!(
            lease.take(t0 + ms(16), grace, Some(ms(20)), &mut expired),
            Take::Slot(s) if s.at == t0 + ms(30)
        ));
        assert_eq!(lease.take(t0, grace, None, &mut expired), Take::Empty);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_voids_leased_slots_before_it() {
        let t0 = Instant::now();
        let mut lease = Lease::default();
        for off in [0, 10, 20, 30] {
            lease.put(Leased {
                at: t0 + ms(off),
                server_us: off,
            });
        }
        assert_eq!(lease.void_before(t0 + ms(20)), 2);
        assert_eq!(lease.slots.front().map(|s| s.at), Some(t0 + ms(20)));
    }

    #[test]
    fn replies_parse_and_convert_to_local_time_after_arrival() {
        assert!(Reply::parse(vec![1, 2, 3, 4]).is_err());
        assert!(Reply::parse(vec![1, 2, 3, 0, -5]).is_err());
        let r = Reply::parse(vec![1_000_000, 0, 20_000, 0, 7, 1_000_000, 1_020_000]).unwrap();
        assert_eq!(r.rs, 7);
        assert_eq!(r.slots, vec![1_000_000, 1_020_000]);
        let arrived = std::time::Instant::now().into();
        assert_eq!(r.local(1_020_000, arrived), arrived + ms(20));
        // A slot before the server's now (cannot happen) maps to the arrival, never earlier.
        assert_eq!(r.local(10, arrived), arrived);
    }

    /// Two round trips in flight finish in any order: the one decided before a re-slot must
    /// not make the worker re-slot again (twice) when it is taken in after the newer one.
    #[test]
    fn a_reply_older_than_one_taken_in_does_not_re_slot_again() {
        assert_eq!(follow(None, 5), Follow::First);
        assert_eq!(follow(Some(5), 5), Follow::Same);
        assert_eq!(follow(Some(5), 6), Follow::Newer);
        assert_eq!(follow(Some(6), 5), Follow::Older);
        // A key created again starts at the server's clock, above any counter seen before.
        assert_eq!(follow(Some(6), 1_700_000_000_000_000), Follow::Newer);
    }

    #[test]
    fn a_stale_tag_is_stale_at_once_and_a_fresh_one_is_not() {
        let mut e = Epochs::default();
        e.bump(true);
        e.bump(false);
        let stale_tag = tag(
            Epochs {
                change: e.reslot.wrapping_sub(1),
                reslot: 0,
            },
            Source::Server,
        );
        assert!(stale(e, stale_tag));
        assert!(!stale(e, tag(e, Source::Server)));
    }

    /// Issue 29 items 2 and 3: `idle_ttl(Duration::MAX)` passed `check()`, then every call
    /// failed at run time ("value is not an integer or out of range"); the other settings at
    /// `Duration::MAX` passed too and panicked on the first failure. What Redis (or sense)
    /// cannot take is refused when built; the largest accepted values are accepted.
    #[test]
    fn duration_settings_redis_cannot_take_are_refused_when_built() {
        let limits = Limits::new(Quota::per_second(10).unwrap());
        let b = || RedisBucket::builder(limits.clone(), "ws");
        for (name, builder) in [
            ("idle_ttl", b().idle_ttl(Duration::MAX)),
            (
                "idle_ttl",
                b().idle_ttl(MAX_IDLE_TTL + Duration::from_nanos(1)),
            ),
            ("idle_ttl", b().idle_ttl(Duration::from_nanos(1))),
            ("timeout", b().timeout(Duration::MAX)),
            ("retry_interval", b().retry_interval(Duration::MAX)),
            ("retry_interval", b().retry_interval(MAX_REDIS_WAIT + ms(1))),
        ] {
            assert!(
                matches!(builder.check(), Err(ConfigError::OutOfRange { name: n, .. }) if n == name),
                "{name}: {:?}",
                builder.check()
            );
        }
        for ok in [
            b().idle_ttl(MAX_IDLE_TTL),
            b().idle_ttl(ms(1)),
            b().timeout(MAX_REDIS_WAIT),
            b().retry_interval(MAX_REDIS_WAIT),
            b().timeout(Duration::from_nanos(1)),
            b().watch_interval(Duration::MAX),
            b().watch_interval(Duration::from_nanos(1)),
        ] {
            assert_eq!(ok.check(), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn builder_rejects_bad_configuration() {
        let limits = Limits::new(Quota::per_second(10).unwrap().with_burst(3).unwrap());
        let b = || RedisBucket::builder(limits.clone(), "ws");
        assert_eq!(b().check(), Ok(()));
        assert_eq!(
            RedisBucket::builder(Limits::unlimited(), "ws").check(),
            Err(ConfigError::NoQuota)
        );
        assert!(matches!(
            RedisBucket::builder(limits.clone(), "").check(),
            Err(ConfigError::Invalid(_))
        ));
        assert_eq!(
            b().lease_size(0).check(),
            Err(ConfigError::Zero { name: "lease_size" })
        );
        assert!(matches!(
            b().lease_size(10_001).check(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert_eq!(
            b().timeout(Duration::ZERO).check(),
            Err(ConfigError::Zero { name: "timeout" })
        );
        assert_eq!(
            b().watch_interval(Duration::ZERO).check(),
            Err(ConfigError::Zero {
                name: "watch_interval"
            })
        );
        assert_eq!(
            b().fail_mode(FailMode::Open {
                local: Limits::unlimited()
            })
            .check(),
            Err(ConfigError::NoQuota)
        );
        assert_eq!(
            FailMode::open_share(&limits, 0),
            Err(ConfigError::Zero { name: "workers" })
        );
        assert_eq!(
            FailMode::open_share(&Limits::unlimited(), 2),
            Err(ConfigError::NoQuota)
        );
        let FailMode::Open { local } = FailMode::open_share(&limits, 4).unwrap() else {
            panic!("open");
        };
        assert_eq!(local.quotas()[0].interval(), ms(400));
        assert_eq!(local.quotas()[0].burst(), 1);
    }

    /// A sub-millisecond timeout was refused as `Zero` ("must be greater than zero"): only the
    /// key's expiry is counted in whole milliseconds, and only it says so.
    #[test]
    fn a_sub_millisecond_timeout_is_accepted_and_the_real_bound_is_named() {
        let limits = Limits::new(Quota::per_second(10).unwrap());
        let b = || RedisBucket::builder(limits.clone(), "ws");
        assert_eq!(b().timeout(Duration::from_micros(500)).check(), Ok(()));
        assert_eq!(
            b().retry_interval(Duration::from_micros(500)).check(),
            Ok(())
        );
        let err = b()
            .idle_ttl(Duration::from_micros(500))
            .check()
            .unwrap_err();
        assert!(
            err.to_string().contains("at least 1 ms"),
            "the message names the bound: {err}"
        );
    }

    #[test]
    fn microseconds_round_up_so_the_server_never_paces_faster() {
        assert_eq!(micros_up(1), 1);
        assert_eq!(micros_up(1_000), 1);
        assert_eq!(micros_up(1_001), 2);
        assert_eq!(micros_up(333_333_334), 333_334);
    }
}
