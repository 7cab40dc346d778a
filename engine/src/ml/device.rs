//! Where tensors live. Every tensor the engine creates is placed through here, so the choice
//! of a stage's device is made in one place: today always the CPU (the hand-written kernels
//! — conv, batch norm, the relational losses — are CPU kernels); a GPU build chooses here.

use candle_core::Device;

/// The device a stage computes on: its parameters, batches and activations.
pub fn compute() -> Device {
    Device::Cpu
}

/// Host memory: tensors read from or written to files (checkpoints, teacher tables).
pub fn host() -> Device {
    Device::Cpu
}
