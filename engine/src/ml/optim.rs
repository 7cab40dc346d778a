//! Optimisers whose state can be saved and restored, for checkpoints.
//!
//! candle_nn's `AdamW` keeps its step counter and moments private, so a checkpoint could not
//! capture it. [`AdamW`] here is a copy of candle_nn 0.11's update, operation for operation
//! and in the same order (so the same f32 roundings happen): every existing result, whose
//! cache key says nothing about which implementation trained it, stays bit for bit what it
//! was. A test compares the two over several steps; re-check it when upgrading candle.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::ml::device;

/// What can go wrong restoring an optimiser's state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimiser state has no `{0}` (saved for a different model or optimiser?)")]
    Missing(String),
    #[error("optimiser state has `{0}`, which this optimiser does not know (saved for a different model or optimiser?)")]
    Unexpected(String),
    #[error("optimiser state `{name}` has shape {saved:?}, the parameter has {current:?}")]
    Shape {
        name: String,
        saved: Vec<usize>,
        current: Vec<usize>,
    },
    #[error("optimiser state: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The step counter's name in a saved state.
const STEP: &str = "step";
/// Prefixes of the moments' names in a saved state (PyTorch's names for them).
const FIRST: &str = "exp_avg.";
const SECOND: &str = "exp_avg_sq.";

/// AdamW's hyper-parameters, with candle_nn's (and PyTorch's) defaults.
#[derive(Clone, Debug)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct AdamVar {
    name: String,
    var: Var,
    first_moment: Var,
    second_moment: Var,
}

/// Adam with decoupled weight decay, bit-identical to candle_nn 0.11's `AdamW`.
pub struct AdamW {
    vars: Vec<AdamVar>,
    step_t: usize,
    params: AdamWParams,
}

impl AdamW {
    /// `vars` by name (names key the saved state). Like candle's, non-float vars are skipped.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> candle_core::Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                let (shape, dtype, device) = (var.shape(), var.dtype(), var.device());
                Ok(AdamVar {
                    first_moment: Var::zeros(shape, dtype, device)?,
                    second_moment: Var::zeros(shape, dtype, device)?,
                    name,
                    var,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            step_t: 0,
            params,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step_t
    }

    /// candle_nn 0.11 `AdamW::step`, verbatim in its arithmetic: scalars are computed in
    /// f64 and every tensor operation is the same one, in the same order, as there.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step_t += 1;
        let lr = self.params.lr;
        let lambda = self.params.weight_decay;
        let lr_lambda = lr * lambda;
        let beta1 = self.params.beta1;
        let beta2 = self.params.beta2;
        let scale_m = 1f64 / (1f64 - beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - beta2.powi(self.step_t as i32));
        for var in &self.vars {
            let theta = &var.var;
            let m = &var.first_moment;
            let v = &var.second_moment;
            if let Some(g) = grads.get(theta) {
                let next_m = ((m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
                let next_v = ((v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let m_hat = (&next_m * scale_m)?;
                let v_hat = (&next_v * scale_v)?;
                let next_theta = (theta.as_tensor() * (1f64 - lr_lambda))?;
                let adjusted_grad = (m_hat / (v_hat.sqrt()? + self.params.eps)?)?;
                let next_theta = (next_theta - (adjusted_grad * lr)?)?;
                m.set(&next_m)?;
                v.set(&next_v)?;
                theta.set(&next_theta)?;
            }
        }
        Ok(())
    }
}

/// Plain SGD, as candle_nn 0.11's `SGD` (no momentum, hence no state but the step count).
pub struct Sgd {
    vars: Vec<Var>,
    lr: f64,
    step_t: usize,
}

impl Sgd {
    pub fn new(vars: Vec<(String, Var)>, lr: f64) -> Self {
        Self {
            vars: vars
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| v.dtype().is_float())
                .collect(),
            lr,
            step_t: 0,
        }
    }

    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step_t += 1;
        for var in &self.vars {
            if let Some(grad) = grads.get(var) {
                var.set(&var.sub(&(grad * self.lr)?)?)?;
            }
        }
        Ok(())
    }
}

/// The training loop's optimiser, whichever it is.
pub enum Optim {
    AdamW(AdamW),
    Sgd(Sgd),
}

impl Optim {
    pub fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        let grads = loss.backward()?;
        match self {
            Optim::AdamW(o) => o.step(&grads),
            Optim::Sgd(o) => o.step(&grads),
        }
    }

    pub fn steps(&self) -> usize {
        match self {
            Optim::AdamW(o) => o.step_t,
            Optim::Sgd(o) => o.step_t,
        }
    }

    /// Every tensor of the state, by name: `step` (I64, one element) and, for AdamW,
    /// `exp_avg.<var>` and `exp_avg_sq.<var>` for every parameter.
    pub fn state_tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert(
            STEP.to_string(),
            Tensor::new(&[self.steps() as i64], &device::host())?,
        );
        if let Optim::AdamW(o) = self {
            for v in &o.vars {
                out.insert(
                    format!("{FIRST}{}", v.name),
                    v.first_moment.as_tensor().copy()?,
                );
                out.insert(
                    format!("{SECOND}{}", v.name),
                    v.second_moment.as_tensor().copy()?,
                );
            }
        }
        Ok(out)
    }

    /// Writes the state as safetensors (readable with numpy/PyTorch tools).
    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        candle_core::safetensors::save(&self.state_tensors()?, path)
    }

    /// Restores a state written by [`Optim::save`] for the same parameters. All of it is
    /// checked before anything is set, so a refused state leaves the optimiser untouched.
    pub fn load(&mut self, path: &Path) -> Result<(), OptimError> {
        let saved = candle_core::safetensors::load(path, &device::host())?;
        self.restore(saved)
    }

    pub fn restore(&mut self, mut saved: HashMap<String, Tensor>) -> Result<(), OptimError> {
        let step = saved
            .remove(STEP)
            .ok_or_else(|| OptimError::Missing(STEP.into()))?;
        let step = step.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        let step = match step.as_slice() {
            [s] if *s >= 0 => *s as usize,
            _ => return Err(OptimError::Missing(format!("{STEP} (a single count)"))),
        };
        let mut moments = Vec::new();
        if let Optim::AdamW(o) = self {
            for v in &o.vars {
                for (prefix, target) in [(FIRST, &v.first_moment), (SECOND, &v.second_moment)] {
                    let name = format!("{prefix}{}", v.name);
                    let t = saved
                        .remove(&name)
                        .ok_or_else(|| OptimError::Missing(name.clone()))?;
                    if t.dims() != target.dims() {
                        return Err(OptimError::Shape {
                            name,
                            saved: t.dims().to_vec(),
                            current: target.dims().to_vec(),
                        });
                    }
                    moments.push((target.clone(), t.to_dtype(target.dtype())?));
                }
            }
        }
        if let Some(extra) = saved.into_keys().min() {
            return Err(OptimError::Unexpected(extra));
        }
        for (target, t) in moments {
            target.set(&t)?;
        }
        match self {
            Optim::AdamW(o) => o.step_t = step,
            Optim::Sgd(o) => o.step_t = step,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::model::{InputShape, Model, ModelMode, ModelSpec};
    use crate::ml::rng::Rng;
    use candle_nn::Optimizer as _;

    fn model(seed: u64) -> Model {
        let spec = ModelSpec::Mlp {
            hidden: vec![24, 16],
            embedding: 8,
            l2norm: true,
            classes: Some(3),
        };
        Model::new(&spec, InputShape::flat(12), &mut Rng::new(seed)).unwrap()
    }

    /// A loss touching every parameter (embedding and logits), from a fixed batch per step.
    fn loss(m: &Model, step: u64) -> Tensor {
        let mut r = Rng::new(100 + step);
        let x: Vec<f32> = (0..16 * 12).map(|_| r.normal() as f32).collect();
        let x = Tensor::from_vec(x, (16, 12), &device::compute()).unwrap();
        let out = m.forward_all(&x, ModelMode::Train).unwrap();
        let e = out.embedding.sqr().unwrap().sum_all().unwrap();
        let l = out.logits.unwrap().sin().unwrap().sum_all().unwrap();
        (e + l).unwrap()
    }

    fn bits(m: &Model) -> Vec<(String, Vec<u32>)> {
        m.named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (n, v.into_iter().map(f32::to_bits).collect())
            })
            .collect()
    }

    #[test]
    fn our_adamw_matches_candles_bit_for_bit_with_and_without_weight_decay() {
        for (lr, wd) in [(1e-3, 0.0), (3e-3, 0.01), (0.05, 0.5)] {
            let (a, b) = (model(5), model(5));
            assert_eq!(bits(&a), bits(&b));
            let mut theirs = candle_nn::AdamW::new(
                a.vars(),
                candle_nn::ParamsAdamW {
                    lr,
                    weight_decay: wd,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut ours = Optim::AdamW(
                AdamW::new(
                    b.named_vars(),
                    AdamWParams {
                        lr,
                        weight_decay: wd,
                        ..Default::default()
                    },
                )
                .unwrap(),
            );
            for step in 0..12 {
                theirs.backward_step(&loss(&a, step)).unwrap();
                ours.backward_step(&loss(&b, step)).unwrap();
                assert_eq!(bits(&a), bits(&b), "lr {lr} wd {wd} step {step}");
            }
            assert_ne!(bits(&a), bits(&model(5)), "the weights must have moved");
        }
    }

    #[test]
    fn our_sgd_matches_candles_bit_for_bit() {
        let (a, b) = (model(6), model(6));
        let mut theirs = candle_nn::SGD::new(a.vars(), 0.01).unwrap();
        let mut ours = Optim::Sgd(Sgd::new(b.named_vars(), 0.01));
        for step in 0..5 {
            theirs.backward_step(&loss(&a, step)).unwrap();
            ours.backward_step(&loss(&b, step)).unwrap();
        }
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn a_saved_state_resumes_adamw_exactly_and_a_foreign_one_is_refused() {
        let params = AdamWParams {
            lr: 0.01,
            weight_decay: 0.05,
            ..Default::default()
        };
        // Uninterrupted: 8 steps.
        let a = model(7);
        let mut oa = Optim::AdamW(AdamW::new(a.named_vars(), params.clone()).unwrap());
        for s in 0..8 {
            oa.backward_step(&loss(&a, s)).unwrap();
        }
        // Interrupted after 3: weights and state saved, everything dropped, then restored
        // into a fresh model and optimiser.
        let dir = tempfile::tempdir().unwrap();
        {
            let b = model(7);
            let mut ob = Optim::AdamW(AdamW::new(b.named_vars(), params.clone()).unwrap());
            for s in 0..3 {
                ob.backward_step(&loss(&b, s)).unwrap();
            }
            b.save_weights(&dir.path().join("w.safetensors")).unwrap();
            ob.save(&dir.path().join("o.safetensors")).unwrap();
        }
        let mut c = model(999);
        let mut oc = Optim::AdamW(AdamW::new(c.named_vars(), params.clone()).unwrap());
        c.load_weights(&dir.path().join("w.safetensors")).unwrap();
        oc.load(&dir.path().join("o.safetensors")).unwrap();
        assert_eq!(oc.steps(), 3);
        for s in 3..8 {
            oc.backward_step(&loss(&c, s)).unwrap();
        }
        assert_eq!(bits(&a), bits(&c));

        // The state of an SGD run, or of another architecture, is not applied.
        let sgd = Optim::Sgd(Sgd::new(c.named_vars(), 0.1));
        sgd.save(&dir.path().join("sgd.safetensors")).unwrap();
        let err = oc.load(&dir.path().join("sgd.safetensors")).unwrap_err();
        assert!(matches!(err, OptimError::Missing(_)), "{err}");
        let mut sgd = sgd;
        let err = sgd.load(&dir.path().join("o.safetensors")).unwrap_err();
        assert!(matches!(err, OptimError::Unexpected(_)), "{err}");
        let other = Model::new(
            &ModelSpec::Mlp {
                hidden: vec![24, 15],
                embedding: 8,
                l2norm: true,
                classes: Some(3),
            },
            InputShape::flat(12),
            &mut Rng::new(1),
        )
        .unwrap();
        let mut oo = Optim::AdamW(AdamW::new(other.named_vars(), params).unwrap());
        let before = oo.state_tensors().unwrap()["step"]
            .to_vec1::<i64>()
            .unwrap();
        let err = oo.load(&dir.path().join("o.safetensors")).unwrap_err();
        assert!(matches!(err, OptimError::Shape { .. }), "{err}");
        // Refused as a whole: nothing was set.
        assert_eq!(oo.steps(), 0);
        assert_eq!(before, vec![0]);
    }
}
