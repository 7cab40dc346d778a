//! The machine-learning part: data, models, losses, metrics. Free of orchestration types
//! so that it can become a crate of its own.

pub mod cluster;
pub mod conv;
mod conv_ops;
pub mod data;
pub mod device;
pub mod layers;
pub mod loss;
pub mod matmul;
pub mod metric;
pub mod model;
pub mod optim;
pub mod probe;
pub mod rng;
pub mod sampler;
pub mod simd;
