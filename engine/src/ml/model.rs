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
        /// A linear classifier head on the (unnormalised) embedding, giving `logits`.
        /// Omitted from the serialisation when absent so that models without a head keep
        /// their content keys.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
}

impl ModelSpec {
    pub fn embedding_dim(&self) -> usize {
        match self {
            ModelSpec::Mlp { embedding, .. } => *embedding,
        }
    }

    /// The outputs a loss can act on, with their widths.
    pub fn taps(&self) -> Vec<(Tap, usize)> {
        let ModelSpec::Mlp {
            hidden,
            embedding,
            classes,
            ..
        } = self;
        let mut taps = vec![(Tap::Embedding, *embedding)];
        if let Some(c) = classes {
            taps.push((Tap::Logits, *c));
        }
        taps.extend(
            hidden
                .iter()
                .enumerate()
                .map(|(i, w)| (Tap::Hidden(i + 1), *w)),
        );
        taps
    }

    pub fn tap_dim(&self, tap: Tap) -> Option<usize> {
        self.taps()
            .into_iter()
            .find(|(t, _)| *t == tap)
            .map(|(_, d)| d)
    }
}

/// A named output of a model that a loss can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tap {
    /// The embedding (L2-normalised if the model says so).
    Embedding,
    /// The classifier head's output.
    Logits,
    /// The activation of the n-th hidden layer (1-based), after its ReLU.
    Hidden(usize),
}

impl Tap {
    pub fn parse(s: &str) -> Option<Tap> {
        match s {
            "embedding" => Some(Tap::Embedding),
            "logits" => Some(Tap::Logits),
            _ => s
                .strip_prefix("hidden")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .map(Tap::Hidden),
        }
    }
}

impl std::fmt::Display for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tap::Embedding => write!(f, "embedding"),
            Tap::Logits => write!(f, "logits"),
            Tap::Hidden(n) => write!(f, "hidden{n}"),
        }
    }
}

// Serialised as its name ("embedding", "logits", "hidden2"), the way recipes write it.
impl Serialize for Tap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Tap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tap::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown tap `{s}` (embedding, logits, hiddenN)"))
        })
    }
}

/// A forward pass's outputs.
pub struct Outputs {
    pub embedding: Tensor,
    pub logits: Option<Tensor>,
    /// Hidden activations, in layer order.
    pub hidden: Vec<Tensor>,
}

impl Outputs {
    pub fn tap(&self, tap: Tap) -> Option<&Tensor> {
        match tap {
            Tap::Embedding => Some(&self.embedding),
            Tap::Logits => self.logits.as_ref(),
            Tap::Hidden(n) => self.hidden.get(n - 1),
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
    classifier: Option<Linear>,
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
            classes,
        } = spec;
        let varmap = VarMap::new();
        let mut dims = vec![input_dim];
        dims.extend_from_slice(hidden);
        dims.push(*embedding);
        let mut layers = Vec::new();
        let classifier;
        {
            let mut vars = varmap.data().lock().expect("varmap lock");
            let mut linear = |name: String, fan_in: usize, fan_out: usize| {
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
                let layer = Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
                vars.insert(format!("{name}.weight"), weight);
                vars.insert(format!("{name}.bias"), bias);
                candle_core::Result::Ok(layer)
            };
            for (l, w) in dims.windows(2).enumerate() {
                layers.push(linear(format!("fc{l}"), w[0], w[1])?);
            }
            classifier = match classes {
                Some(c) => Some(linear("classifier".into(), *embedding, *c)?),
                None => None,
            };
        }
        Ok(Self {
            layers,
            classifier,
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
        Ok(self.forward_all(x)?.embedding)
    }

    /// Every tap of a batch `x` (B × input_dim).
    pub fn forward_all(&self, x: &Tensor) -> candle_core::Result<Outputs> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        let mut hidden = Vec::with_capacity(last);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
                hidden.push(h.clone());
            }
        }
        let logits = match &self.classifier {
            Some(c) => Some(c.forward(&h)?),
            None => None,
        };
        if self.l2norm {
            // torch's F.normalize: x / max(‖x‖, 1e-12).
            let norm = h.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            h = h.broadcast_div(&norm)?;
        }
        Ok(Outputs {
            embedding: h,
            logits,
            hidden,
        })
    }

    /// Embeds every row of `x` (n × input_dim) in chunks, without gradients.
    pub fn embed_all(&self, x: &[f32], n: usize, chunk: usize) -> candle_core::Result<Vec<f32>> {
        Ok(self.tap_all(x, n, chunk, &[Tap::Embedding])?.remove(0))
    }

    /// The outputs at `taps` of every row of `x` (n × input_dim), computed in chunks without
    /// gradients; one row-major n × width buffer per tap.
    pub fn tap_all(
        &self,
        x: &[f32],
        n: usize,
        chunk: usize,
        taps: &[Tap],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let dim = self.file.input_dim;
        let mut out: Vec<Vec<f32>> = taps
            .iter()
            .map(|t| Vec::with_capacity(n * self.file.spec.tap_dim(*t).unwrap_or(0)))
            .collect();
        for start in (0..n).step_by(chunk.max(1)) {
            let end = (start + chunk).min(n);
            let t =
                Tensor::from_slice(&x[start * dim..end * dim], (end - start, dim), &Device::Cpu)?;
            let o = self.forward_all(&t)?;
            for (buf, tap) in out.iter_mut().zip(taps) {
                let v = o.tap(*tap).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the model has no `{tap}` output"))
                })?;
                buf.extend(
                    v.detach()
                        .flatten_all()?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?,
                );
            }
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
            classes: None,
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

#[cfg(test)]
mod tap_tests {
    use super::*;

    #[test]
    fn taps_have_the_declared_widths_and_names_roundtrip() {
        let spec = ModelSpec::Mlp {
            hidden: vec![12, 6],
            embedding: 4,
            l2norm: true,
            classes: Some(3),
        };
        let m = Model::new(&spec, 5, &mut Rng::new(2)).unwrap();
        let x: Vec<f32> = (0..10).map(|v| v as f32 / 10.0).collect();
        let taps = [Tap::Embedding, Tap::Logits, Tap::Hidden(1), Tap::Hidden(2)];
        let out = m.tap_all(&x, 2, 1, &taps).unwrap();
        for (buf, tap) in out.iter().zip(taps) {
            assert_eq!(buf.len(), 2 * spec.tap_dim(tap).unwrap(), "{tap}");
            assert_eq!(Tap::parse(&tap.to_string()), Some(tap));
        }
        assert_eq!(Tap::parse("hidden0"), None);
        assert!(m.tap_all(&x, 2, 1, &[Tap::Hidden(3)]).is_err());
        // Hidden activations come after the ReLU.
        assert!(out[2].iter().all(|v| *v >= 0.0));
        // A model without a head serialises as before (its content key is unchanged).
        let plain = ModelSpec::Mlp {
            hidden: vec![8],
            embedding: 4,
            l2norm: false,
            classes: None,
        };
        assert!(!serde_json::to_string(&plain).unwrap().contains("classes"));
    }
}
