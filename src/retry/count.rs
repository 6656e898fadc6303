//! The attempt count of a request whose outcome is an error.
//!
//! A final response carries [`Attempts`](super::Attempts) in its extensions, but an error has
//! no extensions, and wrapping it would hide its type from every caller that downcasts it
//! (`ThrottleError::from_box`, `hyper::Error`, a timeout's `Elapsed`). So a layer above the
//! retry layer that wants the count for errors too (the dead-letter layer) puts a shared cell
//! on the request; tower's retry copies the request's extensions onto every attempt, and the
//! policy writes the count into the cell after each one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Request extension: the retry policy records the attempts made so far in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptCell(Arc<AtomicU32>);

impl AttemptCell {
    pub(crate) fn record(&self, attempts: u32) {
        self.0.store(attempts, Ordering::Relaxed);
    }

    /// The attempts recorded, or `None` when no retry policy saw the request.
    pub(crate) fn get(&self) -> Option<u32> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}
