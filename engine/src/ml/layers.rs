//! What every layer is built with: the seeded parameter initialiser (PyTorch's init, drawn
//! from our own generator) and the train/eval mode a forward pass runs in. Layers build
//! themselves from these (`Conv::init`, `BatchNorm::init` in [`super::conv`]); the model
//! assembles the layers, so nothing here knows of models.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::ml::device;
use candle_nn::Linear;

use super::rng::Rng;

/// Whether a forward pass trains or evaluates. Only BatchNorm cares: training normalises
/// with the batch's statistics and updates the running ones; evaluation uses the running
/// statistics, so an output does not depend on the rest of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelMode {
    Train,
    Eval,
}

/// Creates a model's tensors in the `VarMap`, drawing from our seeded `Rng` in construction
/// order (candle's own initialisers use the unseedable thread RNG).
pub(crate) struct ParamInit<'a> {
    vars: &'a mut HashMap<String, Var>,
    rng: &'a mut Rng,
}

impl<'a> ParamInit<'a> {
    pub(crate) fn new(vars: &'a mut HashMap<String, Var>, rng: &'a mut Rng) -> Self {
        Self { vars, rng }
    }

    fn insert(&mut self, name: String, t: Tensor) -> candle_core::Result<Tensor> {
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        let previous = self.vars.insert(name.clone(), var);
        // Two layers with one name would silently share a checkpoint slot.
        assert!(previous.is_none(), "duplicate parameter name {name}");
        Ok(t)
    }

    /// Uniform in ±bound, as PyTorch's default (Kaiming-uniform, a = √5) init of `Linear`
    /// and `Conv2d` weights and biases with bound = 1/√fan_in.
    pub(crate) fn uniform(
        &mut self,
        name: String,
        dims: &[usize],
        bound: f64,
    ) -> candle_core::Result<Tensor> {
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| ((self.rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let t = Tensor::from_vec(values, dims, &device::compute())?;
        self.insert(name, t)
    }

    pub(crate) fn constant(
        &mut self,
        name: String,
        n: usize,
        value: f32,
    ) -> candle_core::Result<Tensor> {
        let t = Tensor::from_vec(vec![value; n], n, &device::compute())?;
        self.insert(name, t)
    }

    /// `name.weight` (fan_out × fan_in) then `name.bias`, both ±1/√fan_in.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        fan_in: usize,
        fan_out: usize,
    ) -> candle_core::Result<Linear> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = self.uniform(format!("{name}.weight"), &[fan_out, fan_in], bound)?;
        let bias = self.uniform(format!("{name}.bias"), &[fan_out], bound)?;
        Ok(Linear::new(weight, Some(bias)))
    }
}
