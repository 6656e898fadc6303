//! Learn an unknown rate limit from what the server does, and drive the shared bucket with it.
//!
//! TABLE_PLACEHOLDER

mod controller;
pub mod future;
mod layer;
mod service;
pub mod sim;

pub use controller::{
    Aimd, AimdBuilder, Cubic, CubicBuilder, HeaderDriven, HeaderDrivenBuilder, HeaderInfo,
    RateController, Signal,
};
pub use layer::AdaptiveLayer;
pub use service::Adaptive;
