//! Models: plain structs of tensors with a `forward`, parameters held in a `VarMap` so they
//! save to and load from safetensors.
//!
//! Three architectures: an MLP, a plain convnet and a CIFAR-style ResNet (the last two in
//! [`super::conv`]). Every model ends in the same head: a linear embedding (optionally
//! L2-normalised) and an optional linear classifier on the unnormalised embedding.

use std::path::Path;

use candle_core::{DType, Tensor, Var};

use crate::ml::device;
use candle_nn::{Linear, Module, VarMap};
use serde::{Deserialize, Serialize};

use super::conv::{Convnet, Resnet};
pub use super::layers::ModelMode;
use super::layers::ParamInit;
use super::rng::Rng;

/// The convnet's channel widths when a recipe does not give them.
pub const DEFAULT_CONVNET_CHANNELS: [usize; 2] = [32, 64];
/// The ResNet's first-stage width when a recipe does not give it (He et al.'s CIFAR nets).
pub const DEFAULT_RESNET_WIDTH: usize = 16;

fn default_convnet_channels() -> Vec<usize> {
    DEFAULT_CONVNET_CHANNELS.to_vec()
}

fn default_resnet_width() -> usize {
    DEFAULT_RESNET_WIDTH
}

/// The architecture, as a recipe states it.
///
/// JSON shapes (`classes` is omitted when absent, so that adding the field did not change
/// the content keys of models without a head):
/// - `{"kind":"mlp","hidden":[512,512],"embedding":128,"l2norm":true}`
/// - `{"kind":"convnet","channels":[32,64],"embedding":128,"l2norm":true,"classes":10}`
/// - `{"kind":"resnet","depth":20,"width":16,"embedding":128,"l2norm":false}`
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
    /// Per entry of `channels`: 3×3 conv (padding 1) → BatchNorm → ReLU → 2×2 max-pool;
    /// then global average pooling and the embedding head.
    Convnet {
        #[serde(default = "default_convnet_channels")]
        channels: Vec<usize>,
        embedding: usize,
        l2norm: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
    /// CIFAR-style ResNet (He et al. 2016, §4.2): `depth` = 6n+2, a 3×3 stem with `width`
    /// channels, three stages of n basic blocks of widths width, 2·width, 4·width (stride 2
    /// into stages 2 and 3, projection shortcuts there), global average pooling and the
    /// embedding head.
    Resnet {
        depth: usize,
        #[serde(default = "default_resnet_width")]
        width: usize,
        embedding: usize,
        l2norm: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
}

impl ModelSpec {
    pub fn embedding_dim(&self) -> usize {
        match self {
            ModelSpec::Mlp { embedding, .. }
            | ModelSpec::Convnet { embedding, .. }
            | ModelSpec::Resnet { embedding, .. } => *embedding,
        }
    }

    pub fn classes(&self) -> Option<usize> {
        match self {
            ModelSpec::Mlp { classes, .. }
            | ModelSpec::Convnet { classes, .. }
            | ModelSpec::Resnet { classes, .. } => *classes,
        }
    }

    pub fn l2norm(&self) -> bool {
        match self {
            ModelSpec::Mlp { l2norm, .. }
            | ModelSpec::Convnet { l2norm, .. }
            | ModelSpec::Resnet { l2norm, .. } => *l2norm,
        }
    }

    /// The widths of the `hidden1`, `hidden2`, … taps: an MLP's hidden layers, a convnet's
    /// blocks, a ResNet's three stages.
    pub fn hidden_widths(&self) -> Vec<usize> {
        match self {
            ModelSpec::Mlp { hidden, .. } => hidden.clone(),
            ModelSpec::Convnet { channels, .. } => channels.clone(),
            ModelSpec::Resnet { width, .. } => vec![*width, 2 * width, 4 * width],
        }
    }

    /// How many `hiddenN` taps the model has.
    pub fn hidden_taps(&self) -> usize {
        self.hidden_widths().len()
    }

    /// Checks what can be checked without the input's shape; the message names the field
    /// and says what would be valid, so a recipe parser can report it at the model's line.
    pub fn validate(&self) -> Result<(), String> {
        if self.embedding_dim() == 0 {
            return Err("`embedding` must be at least 1".into());
        }
        if self.classes() == Some(0) {
            return Err("`classes` must be at least 1 (or omitted for no classifier)".into());
        }
        match self {
            ModelSpec::Mlp { hidden, .. } => {
                if let Some(i) = hidden.iter().position(|&w| w == 0) {
                    return Err(format!("`hidden[{i}]` is 0; every layer needs a width ≥ 1"));
                }
            }
            ModelSpec::Convnet { channels, .. } => {
                if channels.is_empty() {
                    return Err(format!(
                        "`channels` is empty; a convnet needs at least one block, e.g. {:?}",
                        DEFAULT_CONVNET_CHANNELS
                    ));
                }
                if let Some(i) = channels.iter().position(|&c| c == 0) {
                    return Err(format!(
                        "`channels[{i}]` is 0; every block needs ≥ 1 channel"
                    ));
                }
            }
            ModelSpec::Resnet { depth, width, .. } => {
                if *depth < 8 || (depth - 2) % 6 != 0 {
                    let n = depth.saturating_sub(2) / 6;
                    let below = if n >= 1 {
                        format!("{} or ", 6 * n + 2)
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "resnet `depth` must be 6n+2 with n ≥ 1 (8, 14, 20, 32, 44, 56, 110, …); \
                         {depth} is not — try {below}{}",
                        6 * (n + 1) + 2
                    ));
                }
                if *width == 0 {
                    return Err(format!(
                        "resnet `width` must be at least 1 (He et al. use {DEFAULT_RESNET_WIDTH})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The outputs a loss can act on, with their widths.
    pub fn taps(&self) -> Vec<(Tap, usize)> {
        let mut taps = vec![(Tap::Embedding, self.embedding_dim())];
        if let Some(c) = self.classes() {
            taps.push((Tap::Logits, c));
        }
        taps.extend(
            self.hidden_widths()
                .into_iter()
                .enumerate()
                .map(|(i, w)| (Tap::Hidden(i + 1), w)),
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
    /// The n-th hidden feature (1-based), always a B × width matrix:
    /// - MLP: the activation of the n-th hidden layer, after its ReLU;
    /// - convnet: block n's output (after its max-pool), globally average-pooled;
    /// - ResNet: stage n's output (after its last block's ReLU), globally average-pooled
    ///   (so `hidden3` is the feature the embedding head reads).
    ///
    /// Pooling keeps relational losses on a B × C matrix, as they are defined.
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

/// The shape of one input sample. Data rows are flattened channel-major (C×H×W), the way
/// PyTorch's `x.view(B, -1)` lays out an NCHW batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    /// A flat vector of `dim` features (1×1×dim): what an MLP needs.
    pub fn flat(dim: usize) -> Self {
        Self {
            channels: 1,
            height: 1,
            width: dim,
        }
    }

    /// The number of features in a flattened row, c·h·w.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Guesses the image shape of rows of `dim` features: a square single-channel image when
    /// `dim` is a perfect square (784 → 1×28×28), a square RGB image when `dim / 3` is
    /// (3072 → 3×32×32), else a flat vector.
    ///
    /// A stopgap until the data splits carry their own shape (`Split::shape`): the guess is
    /// wrong for, e.g., a 16-feature table that is not a 4×4 image — harmless for an MLP,
    /// which only uses `dim()`.
    pub fn infer(dim: usize) -> Self {
        let square = |n: usize| {
            let s = n.isqrt();
            (n > 0 && s * s == n).then_some(s)
        };
        if let Some(s) = square(dim) {
            Self {
                channels: 1,
                height: s,
                width: s,
            }
        } else if let Some(s) = (dim % 3 == 0).then(|| square(dim / 3)).flatten() {
            Self {
                channels: 3,
                height: s,
                width: s,
            }
        } else {
            Self::flat(dim)
        }
    }
}

impl std::fmt::Display for InputShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// Why a model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model: {0}")]
    Spec(String),
    #[error("a {kind} cannot take {shape} inputs: {reason}")]
    Input {
        kind: &'static str,
        shape: InputShape,
        reason: String,
    },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A forward pass's outputs.
pub struct Outputs {
    pub embedding: Tensor,
    pub logits: Option<Tensor>,
    /// Hidden features, in layer/block/stage order; each B × width (see [`Tap::Hidden`]).
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
    /// c·h·w of the input. Always written, so that readers which predate `input_shape`
    /// (and checkpoints written before it existed, which have only this) keep working.
    pub input_dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<InputShape>,
}

impl ModelFile {
    /// The input shape; a checkpoint from before input shapes was an MLP on flat rows.
    pub fn input(&self) -> InputShape {
        self.input_shape
            .unwrap_or_else(|| InputShape::flat(self.input_dim))
    }
}

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_FILE: &str = "model.json";

/// Suffixes of the BatchNorm running statistics: saved with the weights, but not trained.
const BUFFER_SUFFIXES: [&str; 2] = [".running_mean", ".running_var"];

fn is_buffer(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The part of a model before its embedding head.
enum Body {
    /// Hidden layers `fc0 … fc{L-1}`, each followed by a ReLU.
    Mlp(Vec<Linear>),
    Convnet(Convnet),
    Resnet(Resnet),
}

pub struct Model {
    body: Body,
    head: Linear,
    classifier: Option<Linear>,
    l2norm: bool,
    input: InputShape,
    varmap: VarMap,
    file: ModelFile,
}

impl Model {
    /// Builds the model with weights drawn from `rng`, the way PyTorch initialises `Linear`
    /// and `Conv2d` (uniform in ±1/√fan_in) and `BatchNorm2d` (1, 0), so that results do not
    /// depend on candle's unseedable thread RNG.
    ///
    /// MLP parameters are `fc0 … fcL` (the last is the embedding head) and `classifier`,
    /// drawn in that order, as before conv models existed — so MLP weights for a seed are
    /// unchanged. Conv models name theirs like PyTorch (see [`super::conv`]), then `embed`
    /// and `classifier`.
    pub fn new(spec: &ModelSpec, input: InputShape, rng: &mut Rng) -> Result<Self, ModelError> {
        spec.validate().map_err(ModelError::Spec)?;
        check_input(spec, input)?;
        let varmap = VarMap::new();
        let (body, head, classifier) = {
            let mut vars = varmap.data().lock().expect("varmap lock");
            let mut init = ParamInit::new(&mut vars, rng);
            let (body, head) = match spec {
                ModelSpec::Mlp {
                    hidden, embedding, ..
                } => {
                    let mut dims = vec![input.dim()];
                    dims.extend_from_slice(hidden);
                    let mut layers = Vec::with_capacity(hidden.len());
                    for (l, w) in dims.windows(2).enumerate() {
                        layers.push(init.linear(&format!("fc{l}"), w[0], w[1])?);
                    }
                    let head = init.linear(
                        &format!("fc{}", hidden.len()),
                        dims[dims.len() - 1],
                        *embedding,
                    )?;
                    (Body::Mlp(layers), head)
                }
                ModelSpec::Convnet {
                    channels,
                    embedding,
                    ..
                } => {
                    let net = Convnet::new(&mut init, input.channels, channels)?;
                    let head = init.linear("embed", net.out_channels(), *embedding)?;
                    (Body::Convnet(net), head)
                }
                ModelSpec::Resnet {
                    depth,
                    width,
                    embedding,
                    ..
                } => {
                    let net = Resnet::new(&mut init, input.channels, *depth, *width)?;
                    let head = init.linear("embed", net.out_channels(), *embedding)?;
                    (Body::Resnet(net), head)
                }
            };
            let classifier = match spec.classes() {
                Some(c) => Some(init.linear("classifier", spec.embedding_dim(), c)?),
                None => None,
            };
            (body, head, classifier)
        };
        Ok(Self {
            body,
            head,
            classifier,
            l2norm: spec.l2norm(),
            input,
            varmap,
            file: ModelFile {
                spec: spec.clone(),
                input_dim: input.dim(),
                input_shape: Some(input),
            },
        })
    }

    /// Loads a model saved by [`Model::save`] (also one saved before input shapes existed).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MODEL_FILE);
        let file: ModelFile = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
        let input = file.input();
        anyhow::ensure!(
            input.dim() == file.input_dim,
            "{}: input_shape {input} has {} features but input_dim says {}",
            path.display(),
            input.dim(),
            file.input_dim
        );
        let mut model = Self::new(&file.spec, input, &mut Rng::new(0))?;
        // Overwrites every tensor in place, BatchNorm running statistics included (the
        // layers share the VarMap's storage).
        model.varmap.load(dir.join(WEIGHTS_FILE))?;
        Ok(model)
    }

    /// Writes every tensor (parameters and BatchNorm running statistics) to
    /// `model.safetensors` and the spec and input shape to `model.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.varmap.save(dir.join(WEIGHTS_FILE))?;
        std::fs::write(dir.join(MODEL_FILE), self.model_json()?)?;
        Ok(())
    }

    /// `model.json`: the [`ModelFile`] (what [`Model::load`] reads) plus, for people who
    /// rebuild the network elsewhere (a PyTorch module, numpy), the activation, which tensor
    /// is the embedding head and the classifier, and every tensor's name and shape. Load
    /// ignores these extra fields, so older files without them still load.
    fn model_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut v = serde_json::to_value(&self.file)?;
        let head = match &self.file.spec {
            ModelSpec::Mlp { hidden, .. } => format!("fc{}", hidden.len()),
            ModelSpec::Convnet { .. } | ModelSpec::Resnet { .. } => "embed".into(),
        };
        let tensors: Vec<serde_json::Value> = {
            let data = self.varmap.data().lock().expect("varmap lock");
            let mut named: Vec<_> = data.iter().collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            named
                .into_iter()
                .map(|(name, var)| {
                    serde_json::json!({
                        "name": name,
                        "shape": var.dims(),
                        "trained": !is_buffer(name),
                    })
                })
                .collect()
        };
        let o = v.as_object_mut().expect("a ModelFile is a JSON object");
        o.insert("activation".into(), "relu".into());
        o.insert("embedding_head".into(), head.into());
        if self.classifier.is_some() {
            o.insert("classifier".into(), "classifier".into());
        }
        o.insert("tensors".into(), tensors.into());
        Ok(serde_json::to_vec_pretty(&v)?)
    }

    /// The trainable parameters, sorted by name so that the optimiser sees them in a fixed
    /// order. BatchNorm running statistics are left out: they are updated by training
    /// forward passes, and an optimiser (weight decay included) must not touch them.
    pub fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut named: Vec<(&String, &Var)> =
            data.iter().filter(|(name, _)| !is_buffer(name)).collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// [`Model::vars`] with their names (for optimiser state saved by name).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut named: Vec<(String, Var)> = data
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// Writes every tensor (parameters and BatchNorm running statistics) to `path` as
    /// safetensors, without `model.json` (training checkpoints know their spec).
    pub fn save_weights(&self, path: &Path) -> candle_core::Result<()> {
        self.varmap.save(path)
    }

    /// Overwrites every tensor in place from a file written by [`Model::save_weights`] or
    /// [`Model::save`]. Tensors share storage with the layers and with the optimiser's
    /// `Var`s, so both see the loaded values. Fails if a tensor is missing or misshapen.
    pub fn load_weights(&mut self, path: &Path) -> candle_core::Result<()> {
        self.varmap.load(path)
    }

    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    pub fn input_shape(&self) -> InputShape {
        self.input
    }

    /// The embedding of a batch `x` (B × c·h·w).
    pub fn forward(&self, x: &Tensor, mode: ModelMode) -> candle_core::Result<Tensor> {
        Ok(self.forward_all(x, mode)?.embedding)
    }

    /// Every tap of a batch `x` (B × c·h·w, rows flattened channel-major). In
    /// [`ModelMode::Train`] BatchNorm layers normalise with batch statistics and update
    /// their running statistics (a side effect, even without a backward pass).
    pub fn forward_all(&self, x: &Tensor, mode: ModelMode) -> candle_core::Result<Outputs> {
        let (mut h, hidden) = match &self.body {
            Body::Mlp(layers) => {
                let mut h = x.clone();
                let mut hidden = Vec::with_capacity(layers.len());
                for layer in layers {
                    h = layer.forward(&h)?.relu()?;
                    hidden.push(h.clone());
                }
                (h, hidden)
            }
            Body::Convnet(net) => net.forward(&self.images(x)?, mode)?,
            Body::Resnet(net) => net.forward(&self.images(x)?, mode)?,
        };
        h = self.head.forward(&h)?;
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

    /// (B, c·h·w) → (B, C, H, W).
    fn images(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let InputShape {
            channels,
            height,
            width,
        } = self.input;
        x.reshape((b, channels, height, width))
    }

    /// Embeds every row of `x` (n × c·h·w) in chunks, in eval mode, without gradients.
    pub fn embed_all(&self, x: &[f32], n: usize, chunk: usize) -> candle_core::Result<Vec<f32>> {
        Ok(self.tap_all(x, n, chunk, &[Tap::Embedding])?.remove(0))
    }

    /// The outputs at `taps` of every row of `x` (n × c·h·w), computed in chunks in eval mode
    /// (so a row's output does not depend on its chunk) without gradients; one row-major
    /// n × width buffer per tap.
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
            let t = Tensor::from_slice(
                &x[start * dim..end * dim],
                (end - start, dim),
                &device::compute(),
            )?;
            let o = self.forward_all(&t, ModelMode::Eval)?;
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

    /// A copy of every tensor by name, running statistics included, sorted by name (for
    /// tests and tools).
    pub fn named_tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut named = data
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(named)
    }
}

/// Checks that `spec` can run on `input`-shaped samples, before any tensor is built.
pub fn check_input(spec: &ModelSpec, input: InputShape) -> std::result::Result<(), ModelError> {
    let err = |kind: &'static str, reason: String| ModelError::Input {
        kind,
        shape: input,
        reason,
    };
    if input.dim() == 0 {
        return Err(err(
            "model",
            "every side of the input must be at least 1".into(),
        ));
    }
    match spec {
        ModelSpec::Mlp { .. } => Ok(()),
        ModelSpec::Convnet { channels, .. } => {
            let k = channels.len();
            let need = (k < 32).then(|| 1usize << k);
            match need {
                Some(need) if input.height >= need && input.width >= need => Ok(()),
                _ => Err(err(
                    "convnet",
                    format!(
                        "its {k} blocks halve the image {k} times, which needs at least \
                         2^{k}×2^{k} pixels; use fewer `channels` entries (at most {})",
                        input.height.min(input.width).ilog2()
                    ),
                )),
            }
        }
        // Stride-2 convolutions take any side (ceil(side / 2) out).
        ModelSpec::Resnet { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests;
