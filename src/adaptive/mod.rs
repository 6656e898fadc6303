//! Learn an unknown rate limit from what the server does, and drive the shared bucket with it.
//!
//! [`AdaptiveLayer`] sits between the retry layer and the gate, so it sees every attempt. Each
//! response (status and headers) or error becomes a [`Signal`] for a [`RateController`], whose
//! new rate goes to [`Bucket::set_rate`](crate::bucket::Bucket::set_rate); a 429 with `Retry-After`
//! also holds the shared bucket until then. Unlike `tower::limit::RateLimit`, whose rate is
//! fixed at construction, the rate here moves at run time and is shared by every clone.
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_throttle::{AdaptiveLayer, LocalBucket, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let bucket = LocalBucket::new(Quota::per_second(10)?);
//! let adaptive = AdaptiveLayer::probe(bucket.clone(), 10.0, 0.5, 500.0)?;
//! let svc = ServiceBuilder::new()
//!     .layer(adaptive.clone())
//!     .layer(RateLimitLayer::with_bucket(bucket))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(
//!             http::Response::builder().status(429).body(()).unwrap(),
//!         )
//!     }));
//! svc.oneshot(http::Request::new(())).await?;
//! // One 429 ends slow start: the rate is cut to beta x the rate it was sending at (no accepted
//! // rate measured yet).
//! assert_eq!(adaptive.rate(), 7.0);
//! # Ok(()) }
//! ```
//!
//! # Limits, classifier and `Retry-After` cap
//!
//! * **The configured limits are a ceiling.** [`AdaptiveLayer::new`] lowers the controller's
//!   `max` to the bucket's rate (its shortest window, as configured), so a controller built
//!   with the default `max` takes its bound from the limits; the bucket's longer windows keep
//!   applying as configured. A controller whose `min` is above the limits is a
//!   [`ConfigError::MinAboveMax`](crate::ConfigError::MinAboveMax).
//! * **One classifier and one cap with the retry layer.** With a retry layer above (it holds
//!   the same bucket on a 429), build the layer with
//!   [`with_retry_policy`](AdaptiveLayer::with_retry_policy): both then agree on what is a
//!   rate limit and cap `Retry-After` alike, so a hostile `Retry-After: 99999999999` holds the
//!   gate for the policy's cap and no longer. [`Throttle::builder`](crate::Throttle::builder)
//!   does this itself.
//! * **A 503 with `Retry-After` is a pause, not a limit.** The server asked every caller to
//!   wait ([`Classify::transient_wait`](crate::classify::Classify::transient_wait)): the layer holds the
//!   shared bucket for it, capped exactly like a 429's `Retry-After`, and feeds
//!   [`Signal::Overloaded`]. It is congestion, so no controller grows through it (a climb in
//!   progress returns to the level it started from, and the pause is not growth time), but it
//!   says nothing about the rate the server takes, so none cuts for it: a server shedding load
//!   for everyone would otherwise drive the rate down for good. A 503 without `Retry-After`
//!   stays [`Signal::Transient`] and moves nothing.
//!
//! # Controllers
//!
//! * [`Aimd`](crate::Aimd): x0.5 per 429, x1.1 after 10 successes in a row. The common recipe and the
//!   baseline. Every 429 of a burst halves again, and with the `Retry-After` hold each costs a
//!   pause, so it spends most of its time far below the limit.
//! * [`HeaderDriven`](crate::HeaderDriven): when the server states its quota (`RateLimit-*`, `X-RateLimit-*`,
//!   HubSpot), the rate is simply `limit / window` less a 2% margin, and `remaining / reset`
//!   when only those are given; AIMD takes over when the headers vanish. With headers it is
//!   exact, and it is the one to use.
//! * [`Probe`](crate::Probe): for servers that say nothing but 429, and the one to use then. See below.
//! * [`Cubic`](crate::Cubic): the AWS SDKs' CUBIC-shaped limiter with a burst of 429s counted as one event
//!   and the cut taken from the *accepted* rate. Kept for comparison: it beats AIMD but misses
//!   the targets, for the reasons given under the table.
//!
//! ## Why `Probe`
//!
//! With `Retry-After` honoured (by this layer, and by the retry layer above it in the real
//! stack, which holds the same bucket), every throttle event stops *all* traffic for the
//! server's `Retry-After`, and servers round it up to whole seconds: each event costs about a
//! second of the limit, 2% of a 50 s measurement, whatever the controller does next. Reaching
//! 90% is therefore a budget of a handful of events plus the gap kept below the limit, and
//! `Probe` is built to spend as few events as possible and learn the most from each:
//!
//! * It reads the rate it was **sending** at when refused (the bucket's own, known exactly)
//!   rather than a measured accepted rate, which lags a rising rate (72% of the limit at the
//!   end of slow start) and is inflated by a token bucket's burst right after a hold. Slow
//!   start ends at `max(accepted, 0.7 x sending)`, which brackets the limit from below,
//!   unless the server had been taking a **steady** rate for the whole last second: then the
//!   429 says it was saturated there, and slow start ends 1.25% under that reading. This is
//!   the common case against a small limit: the doubling overshoots it within the second,
//!   and `0.7 x` the rate sent (51.8/s against a limit of 37/s) would take two more holds to
//!   come down.
//! * The hold has already drained the server, so a level refused after it says how far over
//!   it is by **how long it survived**: a one-second window accepts `level` for
//!   `limit / level` seconds, a token bucket for `burst / excess` seconds. One reading steps
//!   down by an estimate; **two readings pin the limit** of either shape (`level x survived`
//!   is `burst + limit x survived` for a bucket, `limit` for a window), so a hidden leaky
//!   bucket costs three holds and is found within about 6 s when slow start ended on a
//!   bracket (from 60/s), one hold when it ended on a steady reading (from 20/s).
//! * Climbs above the level are slow (2% per second) and rare (after 15 s, doubling to 30 s
//!   while they find the same limit), and after a climb the rate returns **straight** to the
//!   level that worked: no dip and recovery curve.
//! * A level that had held for 10 s being refused means the **limit moved**: cut by 0.7, and
//!   again at each refusal until a level holds (each hold is one event), so a halved limit is
//!   under within two events. The next climb then waits 30 s.
//! * **Storms are not the limit.** A cut that did not make refusals rarer (a server that
//!   refuses any rate for a moment every few seconds) is undone, and such refusals cut nothing
//!   for 30 s: cutting there only gives away goodput, the Retry-After hold already paces it.
//!
//! A Vegas-style reading (accepted well below sent over a window means refusal) was considered
//! and not used: with the hold, a 429 stops sending at once, so the gap between sent and
//! accepted never builds up over a window; the time a level survives carries the same
//! information, one event sooner. The layer's hold is unchanged.
//!
//! # Simulation ([`sim`])
//!
//! `cargo run --release --example adaptive_table --features mock`: paused tokio time, 20 ms
//! latency, a server that rounds `Retry-After` up to whole seconds, the layer holding the gate
//! for it. The gate is modelled as the crate's bucket behaves: a cut, a hold or a raise of
//! more than an eighth re-slots callers already waiting ([`sim::SimGate`]). The four standard rows: 60 s, 8 closed-loop workers,
//! start 5/s, bounds [0.5, 1000]. The leaky-bucket rows: 37/s with a burst of 5, 20 workers,
//! 40 s, start 20/s or 60/s, bounds [1, 200]. The storm row: a 180/s bucket (burst 10) that
//! takes only 10/s for the last 600 ms of every 2 s (129/s on average), 20 workers, 60 s,
//! start 100/s. Goodput is accepted requests from 10 s to the end as % of what the hidden
//! limit allowed ("all": from 0 s); "converge": the first 1 s window at >= 90% of the hidden
//! rate; "settled": from when every 1 s window stays there; "under": after the drop at 30 s,
//! when the controller's rate went under the new limit for good. Header-driven runs with the
//! server sending `RateLimit-Limit/Remaining/Reset/Policy`, the others without.
//!
//! | controller    | hidden limit            | goodput | (all) | 429s  | converge | settled | under  |
//! |---------------|-------------------------|---------|-------|-------|----------|---------|--------|
//! | AIMD          | 10 per 1 s window       |  66.0%  | 65.3% | 1.01% | 9.2 s    | 57.9 s  |        |
//! | AIMD          | 37 per 1 s window       |  55.1%  | 48.7% | 1.10% | 19.1 s   | never   |        |
//! | AIMD          | 100/s, burst 5          |  37.9%  | 32.6% | 1.11% | never    | never   |        |
//! | AIMD          | 100/s -> 50/s at 30 s   |  41.3%  | 33.5% | 1.12% | 31.5 s   | never   | 29.4 s |
//! | AIMD          | 37/s burst 5, from 20/s |  62.3%  | 63.5% | 1.26% | 2.1 s    | never   |        |
//! | AIMD          | 37/s burst 5, from 60/s |  63.4%  | 62.0% | 1.40% | 1.2 s    | never   |        |
//! | AIMD          | storms                  |   5.3%  |  6.6% | 1.92% | 0.5 s    | never   |        |
//! | header-driven | 10 per 1 s window       |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   |        |
//! | header-driven | 37 per 1 s window       |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   |        |
//! | header-driven | 100/s, burst 5          |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   |        |
//! | header-driven | 100/s -> 50/s at 30 s   |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   | 0.1 s  |
//! | header-driven | 37/s burst 5, from 20/s |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   |        |
//! | header-driven | 37/s burst 5, from 60/s |  98.0%  | 98.0% | 0.00% | 0.0 s    | 0.0 s   |        |
//! | header-driven | storms                  |  20.4%  | 26.2% | 1.17% | 0.0 s    | 58.5 s  |        |
//! | cubic         | 10 per 1 s window       |  92.6%  | 91.2% | 0.55% | 0.5 s    | 33.2 s  |        |
//! | cubic         | 37 per 1 s window       |  89.8%  | 86.6% | 0.16% | 2.4 s    | 56.1 s  |        |
//! | cubic         | 100/s, burst 5          |  89.9%  | 83.4% | 0.08% | 14.9 s   | 47.7 s  |        |
//! | cubic         | 100/s -> 50/s at 30 s   |  84.6%  | 77.2% | 0.23% | 14.9 s   | 45.9 s  | 14.7 s |
//! | cubic         | 37/s burst 5, from 20/s |  90.2%  | 88.8% | 0.23% | 0.4 s    | 34.2 s  |        |
//! | cubic         | 37/s burst 5, from 60/s |  91.9%  | 86.5% | 0.39% | 2.6 s    | 36.2 s  |        |
//! | cubic         | storms                  |   7.3%  | 13.5% | 2.24% | 0.3 s    | 58.5 s  |        |
//! | probe         | 10 per 1 s window       |  94.2%  | 91.3% | 0.72% | 0.5 s    | 39.3 s  |        |
//! | probe         | 37 per 1 s window       |  96.8%  | 92.8% | 0.10% | 2.4 s    | 35.9 s  |        |
//! | probe         | 100/s, burst 5          |  94.2%  | 88.1% | 0.06% | 5.8 s    | 33.1 s  |        |
//! | probe         | 100/s -> 50/s at 30 s   |  90.7%  | 83.2% | 0.19% | 5.8 s    | 33.5 s  | 2.6 s  |
//! | probe         | 37/s burst 5, from 20/s |  95.9%  | 93.9% | 0.14% | 0.4 s    | 36.9 s  |        |
//! | probe         | 37/s burst 5, from 60/s |  99.9%  | 93.2% | 0.22% | 2.6 s    | 9.2 s   |        |
//! | probe         | the same, 0 ms, 20/s    |  95.9%  | 93.9% | 0.14% | 0.4 s    | 36.9 s  |        |
//! | probe         | the same, 0 ms, 60/s    | 100.0%  | 93.4% | 0.22% | 2.5 s    | 9.1 s   |        |
//! | probe         | storms                  |  63.2%  | 63.9% | 2.27% | 0.3 s    | 58.4 s  |        |
//!
//! `Probe` meets every target: at least 90% of the hidden rate with at most 2% of requests
//! answered 429, under the halved limit 2.6 s after the drop; against the leaky bucket with 20
//! callers, at least 95% after 10 s and 90% over the 40 s run from either start; through the
//! storms, 63.2% of the server's average capacity with 2.3% 429s (at most 80% is possible:
//! each storm costs the whole client a one-second hold). "Settled" is late in the 60 s rows
//! because a climb dips one 1 s window under 90% (the hold) about every 15-30 s; that is the
//! price of noticing a limit that went up. Cubic misses at 37/s, 100/s with bursts and the
//! halving: its slow start stops at the first 429 with a lagging accepted-rate measurement
//! (anchor about 72% of the limit), and the server's burst inflates the accepted rate
//! measured at a probe. Every controller but `Probe` collapses under storms: each cuts at
//! every storm, and a cut does not make the next storm any shorter (header-driven also takes
//! the storm's own headers, 10/s, at their word).
//!
//! The "0 ms" rows are the leaky bucket answering at once, as over loopback (the other
//! controllers' 0 ms rows, within 0.2 points of their 20 ms ones, are in BENCHMARKS.md). From 20/s the one hold of slow start finds the limit; the climb 30 s later
//! is refused within the run (the "settled" time), the price of noticing a limit that rose.
//!
//! The gate re-slots callers already waiting on a raise of more than an eighth, as on a cut
//! (see [`Bucket::set_rate`](crate::bucket::Bucket::set_rate)), and the simulation's gate does
//! the same. Since then the rate sent during slow start is the bucket's, not a second of slots
//! behind it: the 37/s window and the header-driven rows converge sooner, and a slow start that
//! ends on a ramp reading (100/s with bursts: 0.7 of the limit on average over its last second)
//! climbs again after a fifth of the cruise instead of all of it.
//!
//! Over loopback against the mock server configured the same way (`examples/goodput.rs`,
//! `Throttle::builder()` with the retry layer; BENCHMARKS.md has the runs), the leaky-bucket
//! rows give 92.8-94.2% of the limit over the 40 s and 95.7-100.3% after the first 10 s from
//! 20/s (thirteen runs on the final code), 93.5% and 100.1% from 60/s, with 0.14-0.22% 429s.

pub(crate) mod aimd;
mod controller;
pub(crate) mod cubic;
pub mod future;
pub(crate) mod header_driven;
pub(crate) mod layer;
pub(crate) mod probe;
mod service;
#[cfg(feature = "mock")]
pub mod sim;

// The layer and the controllers are at the crate root (one path each); the rest is here.
pub use aimd::AimdBuilder;
pub use controller::{HeaderInfo, RateController, Signal};
pub use cubic::CubicBuilder;
pub use header_driven::HeaderDrivenBuilder;
pub(crate) use layer::AdaptiveLayer;
pub use probe::ProbeBuilder;
pub use service::Adaptive;
