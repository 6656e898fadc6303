//! tower-throttle: call rate-limited HTTP APIs as fast as they allow, and no faster.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod backoff;
pub mod classify;
mod error;
pub mod headers;
#[cfg(feature = "mock")]
pub mod mock;

pub use error::{ConfigError, ThrottleError};
