//! What the server saw: counters and the helpers tests assert with.

use std::time::Duration;

use super::records::RecordCounts;

/// How many accept times and distinct request ids the server keeps (per kind). Beyond this,
/// counters keep counting but new times and ids are not recorded, and
/// [`MockStats::records_dropped`] says how many were skipped.
pub const MAX_RECORDED: usize = 1_000_000;

/// A snapshot of the server's counters, from [`MockServer::stats`](super::MockServer::stats).
///
/// Once every response has been received,
/// `received == accepted + rate_limited + failed + invalid`, and for batch endpoints
/// `items_received == items_accepted + items_failed + items_rejected + items_rate_limited +
/// items_unattributed + items_refused_existing`.
///
/// [`records`](MockStats::records) counts what batch routes stored, by identity, so a test
/// can assert that no record was written twice ([`records_written_twice`] is 0) and that
/// every valid record was applied ([`records_applied`] equals the distinct valid records):
///
/// [`records_written_twice`]: MockStats::records_written_twice
/// [`records_applied`]: MockStats::records_applied
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockStats {
    /// Requests whose body was read completely (the ones that got a decision).
    pub received: u64,
    /// Requests the limit accepted (answered `2xx`, a batch's answer included, or withheld
    /// by [`timeout_after_apply`](super::MockServerBuilder::timeout_after_apply)).
    pub accepted: u64,
    /// Requests answered `429 Too Many Requests`.
    pub rate_limited: u64,
    /// Requests answered `503 Service Unavailable` by failure injection.
    pub failed: u64,
    /// Requests being handled right now (body read, decision or latency pending).
    pub in_flight: u64,
    /// The most requests ever handled at once since start or the last reset.
    pub max_in_flight: u64,
    /// Distinct `x-request-id` values among accepted requests.
    pub distinct_ids: u64,
    /// Accepted requests whose `x-request-id` had already been accepted before (a record
    /// delivered twice).
    pub duplicate_ids: u64,
    /// Accept times or ids not recorded because [`MAX_RECORDED`] was reached.
    pub records_dropped: u64,
    /// Batch requests answered `400` or `413` because they broke the endpoint's shape or
    /// limits (counted in `received`, not in `accepted`).
    pub invalid: u64,
    /// Items in accepted batch requests.
    pub items_received: u64,
    /// Items of accepted batches that were written (each distinct record id also counts in
    /// `distinct_ids`, a repeat in `duplicate_ids`).
    pub items_accepted: u64,
    /// Items failed transiently by [`item_fail_ratio`](super::MockServerBuilder::item_fail_ratio).
    pub items_failed: u64,
    /// Items rejected by [`item_reject_ratio`](super::MockServerBuilder::item_reject_ratio).
    pub items_rejected: u64,
    /// Items refused with a rate limit by
    /// [`item_rate_limit_ratio`](super::MockServerBuilder::item_rate_limit_ratio).
    pub items_rate_limited: u64,
    /// HubSpot inputs failed without naming them, by
    /// [`unattributed_error_ratio`](super::MockServerBuilder::unattributed_error_ratio).
    pub items_unattributed: u64,
    /// Creates refused because the identity was already stored (HubSpot
    /// `OBJECT_ALREADY_EXISTS`, Mailchimp "Member Exists" / `ERROR_CONTACT_EXISTS`).
    pub items_refused_existing: u64,
    /// Batches refused as a whole because an input carried the
    /// [`bad_input_marker`](super::MockServerBuilder::bad_input_marker) (also counted in
    /// `invalid`).
    pub bad_input_batches: u64,
    /// Batches applied whose answer was withheld by
    /// [`timeout_after_apply`](super::MockServerBuilder::timeout_after_apply) (counted in
    /// `accepted` as well: the server did the work).
    pub answers_withheld: u64,
    /// Mailchimp batches refused `429` because the route already had its
    /// [`max_pending`](super::BatchEndpoint::max_pending) batches pending (also counted in
    /// `rate_limited`).
    pub pending_refused: u64,
    /// The records of every batch route together (per route:
    /// [`MockServer::records_on`](super::MockServer::records_on)).
    pub records: RecordCounts,
}

impl MockStats {
    /// Distinct records the batch routes store now.
    pub fn records_applied(&self) -> u64 {
        self.records.applied
    }

    /// Identities written more than once: applied again by an idempotent route (upsert,
    /// update, identify, `PUT`), or created twice with the same content by a route without a
    /// unique key. A client that never resends an applied record keeps this at 0.
    pub fn records_written_twice(&self) -> u64 {
        self.records.written_twice
    }
}

/// The largest number of `times` inside any half-open interval `[t, t + window)`.
///
/// This is the same convention the sliding-window limit enforces, so for a server limited to
/// `n` per `period`, `max_in_any_window(&server.accepted_times(), period) <= n` always holds.
/// `times` need not be sorted (a sorted slice is not copied).
///
/// ```
/// use std::time::Duration;
/// use tower_throttle::mock::max_in_any_window;
///
/// let ms = Duration::from_millis;
/// let times = [ms(0), ms(5), ms(10), ms(100)];
/// assert_eq!(max_in_any_window(&times, ms(10)), 2); // 10 ms is outside [0, 10)
/// assert_eq!(max_in_any_window(&times, ms(11)), 3);
/// assert_eq!(max_in_any_window(&times, Duration::ZERO), 0);
/// ```
pub fn max_in_any_window(times: &[Duration], window: Duration) -> usize {
    if window.is_zero() {
        return 0;
    }
    let sorted;
    let times = if times.windows(2).all(|w| w[0] <= w[1]) {
        times
    } else {
        let mut copy = times.to_vec();
        copy.sort_unstable();
        sorted = copy;
        &sorted[..]
    };
    // Two pointers: for each right end, the left end is the first time still inside.
    let mut best = 0;
    let mut left = 0;
    for (right, &t) in times.iter().enumerate() {
        while t - times[left] >= window {
            left += 1;
        }
        best = best.max(right - left + 1);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_count_handles_unsorted_and_ties() {
        let ms = Duration::from_millis;
        assert_eq!(max_in_any_window(&[], ms(10)), 0);
        assert_eq!(max_in_any_window(&[ms(3), ms(3), ms(3)], ms(1)), 3);
        assert_eq!(
            max_in_any_window(&[ms(20), ms(0), ms(9), ms(10)], ms(10)),
            2
        );
        assert_eq!(
            max_in_any_window(&[ms(20), ms(0), ms(9), ms(10)], ms(11)),
            3
        );
    }
}
