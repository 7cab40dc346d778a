//! Models: plain structs of tensors with a `forward`, parameters held in a `VarMap` so they
//! save to and load from safetensors.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};
use serde::{Deserialize, Serialize};

use super::rng::Rng;

/// The architecture, as a recipe states it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully connected layers with ReLU, then a linear embedding head.
    Mlp {
        hidden: Vec<usize>,
        embedding: usize,
        /// L2-normalise the embedding (the RKD paper studies both).
        l2norm: bool,
    },
}

impl ModelSpec {
    pub fn embedding_dim(&self) -> usize {
        match self {
            ModelSpec::Mlp { embedding, .. } => *embedding,
        }
    }
}

/// What `model.json` next to `model.safetensors` says, so a checkpoint is self-describing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelFile {
    pub spec: ModelSpec,
    pub input_dim: usize,
}

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_FILE: &str = "model.json";

pub struct Model {
    layers: Vec<Linear>,
    l2norm: bool,
    varmap: VarMap,
    file: ModelFile,
}

impl Model {
    /// Builds the model with weights drawn from `rng`, the way PyTorch's `nn.Linear`
    /// initialises them (uniform in ±1/√fan_in for weights and biases), so that results do
    /// not depend on candle's unseedable thread RNG.
    pub fn new(spec: &ModelSpec, input_dim: usize, rng: &mut Rng) -> candle_core::Result<Self> {
        let ModelSpec::Mlp {
            hidden,
            embedding,
            l2norm,
        } = spec;
        let varmap = VarMap::new();
        let mut dims = vec![input_dim];
        dims.extend_from_slice(hidden);
        dims.push(*embedding);
        let mut layers = Vec::new();
        {
            let mut vars = varmap.data().lock().expect("varmap lock");
            for (l, w) in dims.windows(2).enumerate() {
                let (fan_in, fan_out) = (w[0], w[1]);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let mut draw = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                        .collect()
                };
                let weight = Var::from_tensor(&Tensor::from_vec(
                    draw(fan_in * fan_out),
                    (fan_out, fan_in),
                    &Device::Cpu,
                )?)?;
                let bias =
                    Var::from_tensor(&Tensor::from_vec(draw(fan_out), fan_out, &Device::Cpu)?)?;
                layers.push(Linear::new(
                    weight.as_tensor().clone(),
                    Some(bias.as_tensor().clone()),
                ));
                vars.insert(format!("fc{l}.weight"), weight);
                vars.insert(format!("fc{l}.bias"), bias);
            }
        }
        Ok(Self {
            layers,
            l2norm: *l2norm,
            varmap,
            file: ModelFile {
                spec: spec.clone(),
                input_dim,
            },
        })
    }

    /// Loads a model saved by [`Model::save`].
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file: ModelFile = serde_json::from_slice(&std::fs::read(dir.join(MODEL_FILE))?)?;
        let mut model = Self::new(&file.spec, file.input_dim, &mut Rng::new(0))?;
        model.varmap.load(dir.join(WEIGHTS_FILE))?;
        Ok(model)
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.varmap.save(dir.join(WEIGHTS_FILE))?;
        std::fs::write(dir.join(MODEL_FILE), serde_json::to_vec_pretty(&self.file)?)?;
        Ok(())
    }

    pub fn vars(&self) -> Vec<Var> {
        // Sorted by name so that the optimiser sees them in a fixed order.
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// The embedding of a batch `x` (B × input_dim).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        if self.l2norm {
            // torch's F.normalize: x / max(‖x‖, 1e-12).
            let norm = h.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            h = h.broadcast_div(&norm)?;
        }
        Ok(h)
    }

    /// Embeds every row of `x` (n × input_dim) in chunks, without gradients.
    pub fn embed_all(&self, x: &[f32], n: usize, chunk: usize) -> candle_core::Result<Vec<f32>> {
        let dim = self.file.input_dim;
        let mut out = Vec::with_capacity(n * self.file.spec.embedding_dim());
        for start in (0..n).step_by(chunk.max(1)) {
            let end = (start + chunk).min(n);
            let t =
                Tensor::from_slice(&x[start * dim..end * dim], (end - start, dim), &Device::Cpu)?;
            let e = self.forward(&t)?.detach();
            out.extend(e.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(l2: bool) -> ModelSpec {
        ModelSpec::Mlp {
            hidden: vec![16, 8],
            embedding: 4,
            l2norm: l2,
        }
    }

    #[test]
    fn same_seed_same_weights_and_save_load_roundtrip() {
        let x: Vec<f32> = (0..30).map(|v| (v as f32 * 0.37).sin()).collect();
        let a = Model::new(&spec(false), 10, &mut Rng::new(5)).unwrap();
        let b = Model::new(&spec(false), 10, &mut Rng::new(5)).unwrap();
        let ea = a.embed_all(&x, 3, 2).unwrap();
        assert_eq!(ea, b.embed_all(&x, 3, 2).unwrap());
        let c = Model::new(&spec(false), 10, &mut Rng::new(6)).unwrap();
        assert_ne!(ea, c.embed_all(&x, 3, 2).unwrap());

        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        let loaded = Model::load(dir.path()).unwrap();
        assert_eq!(loaded.embed_all(&x, 3, 3).unwrap(), ea);
        assert_eq!(a.vars().len(), 6);
    }

    #[test]
    fn l2norm_gives_unit_rows() {
        let m = Model::new(&spec(true), 10, &mut Rng::new(1)).unwrap();
        let x: Vec<f32> = (0..20).map(|v| v as f32 / 7.0).collect();
        let e = m.embed_all(&x, 2, 8).unwrap();
        for row in e.chunks(4) {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
    }
}
