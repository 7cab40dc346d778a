//! What one stage is: its resolved configuration (the part of a recipe that can change its
//! results), the spec the coordinator hands to a stage process, and what the stage writes back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ml::data::DataSpec;
pub use crate::ml::loss::Mining;
pub use crate::ml::metric::FewShotSpec;
use crate::ml::model::{ModelSpec, Tap};
use crate::ml::sampler::SamplerSpec;

/// A loss and its own parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "loss", rename_all = "snake_case")]
pub enum Loss {
    /// Triplet margin loss on the model's own embedding (a task loss; needs labels).
    Triplet { margin: f64, mining: Mining },
    /// Cross-entropy of the model's logits against the labels (a task loss).
    Ce,
    /// RKD distance loss against the teacher.
    RkdD,
    /// RKD angle loss against the teacher.
    RkdA,
    /// Similarity-preserving loss against the teacher.
    Sp,
    /// Correlation congruence against the teacher, under a kernel.
    Cc { kernel: Kernel },
    /// Hinton's knowledge distillation on logits, at a temperature.
    Kd { temperature: f64 },
}

/// The kernel of the correlation congruence loss.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kernel {
    /// The Gaussian RBF by its Taylor expansion of order `p` (the paper's form).
    Taylor { p: u32, gamma: f64 },
    /// The exact Gaussian RBF exp(−γ‖f̂_i − f̂_j‖²).
    Gaussian { gamma: f64 },
    /// The bilinear kernel f̂_i·f̂_j.
    Bilinear,
}

impl Loss {
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Triplet { .. } => "triplet",
            Loss::Ce => "ce",
            Loss::RkdD => "rkd_d",
            Loss::RkdA => "rkd_a",
            Loss::Sp => "sp",
            Loss::Cc { .. } => "cc",
            Loss::Kd { .. } => "kd",
        }
    }

    /// Whether the loss compares the student with a teacher.
    pub fn needs_teacher(&self) -> bool {
        !matches!(self, Loss::Triplet { .. } | Loss::Ce)
    }

    pub const NAMES: [&'static str; 7] = ["triplet", "ce", "rkd_d", "rkd_a", "sp", "cc", "kd"];
}

fn is_embedding(t: &Tap) -> bool {
    *t == Tap::Embedding
}

fn embedding() -> Tap {
    Tap::Embedding
}

/// One weighted term of a loss mix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LossTerm {
    #[serde(flatten)]
    pub loss: Loss,
    pub weight: f64,
    /// The output of both models the loss acts on. Omitted from the serialisation at its
    /// default so that adding the option kept every existing content key.
    #[serde(default = "embedding", skip_serializing_if = "is_embedding")]
    pub on: Tap,
    /// Use only this fraction of the relations, drawn at random at each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<f64>,
}

impl LossTerm {
    pub fn name(&self) -> &'static str {
        self.loss.name()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Adam with decoupled weight decay (AdamW; `weight_decay: 0` is plain Adam).
    Adam { lr: f64, weight_decay: f64 },
    /// Plain stochastic gradient descent.
    Sgd { lr: f64 },
}

/// Configuration of a stage that trains a model (`train`, or `distill` from a teacher).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataSpec,
    pub model: ModelSpec,
    /// The loss mix, sorted by term name so that the order in the recipe does not matter.
    pub loss: Vec<LossTerm>,
    pub optimizer: Optimizer,
    /// 0 saves the freshly initialised model: an "untrained network" baseline.
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// How batches are drawn. Omitted at its default (random) so that adding samplers kept
    /// every existing content key.
    #[serde(default, skip_serializing_if = "is_random")]
    pub sampler: SamplerSpec,
}

fn is_random(s: &SamplerSpec) -> bool {
    *s == SamplerSpec::Random
}

/// Configuration of an `evaluate` stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub data: DataSpec,
    /// `metric`: retrieval, clustering and few-shot on the unseen `eval_classes`;
    /// `classification`: top-1 on the test images of the training classes.
    pub protocol: Protocol,
    pub recall_at: Vec<usize>,
    /// NMI of a k-means clustering of the embeddings (metric protocol).
    pub nmi: bool,
    /// Nearest-prototype N-way K-shot episodes on the unseen classes (metric protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub few_shot: Option<FewShotSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Metric,
    Classification,
}

/// A linear classifier trained on a frozen model's embeddings: how linearly separable the
/// classes of another domain are in the embedding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
}

/// Configuration of a `transfer` stage: a trained model, untouched, on another data set or
/// domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// The target data set (its `eval_classes` are retrieved and probed).
    pub data: DataSpec,
    pub recall_at: Vec<usize>,
    pub probe: Option<Probe>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageConfig {
    Train(TrainConfig),
    Distill(TrainConfig),
    Evaluate(EvalConfig),
    Transfer(TransferConfig),
}

impl StageConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Train(_) => "train",
            StageConfig::Distill(_) => "distill",
            StageConfig::Evaluate(_) => "evaluate",
            StageConfig::Transfer(_) => "transfer",
        }
    }

    pub fn data(&self) -> &DataSpec {
        match self {
            StageConfig::Train(c) | StageConfig::Distill(c) => &c.data,
            StageConfig::Evaluate(c) => &c.data,
            StageConfig::Transfer(c) => &c.data,
        }
    }

    /// The training configuration of a stage that trains a model.
    pub fn training(&self) -> Option<&TrainConfig> {
        match self {
            StageConfig::Train(c) | StageConfig::Distill(c) => Some(c),
            StageConfig::Evaluate(_) | StageConfig::Transfer(_) => None,
        }
    }
}

/// Input roles: the edge labels of the stage graph.
pub const ROLE_TEACHER: &str = "teacher";
pub const ROLE_MODEL: &str = "model";

/// Everything a stage process needs, written as JSON by the coordinator.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StageSpec {
    pub key: String,
    /// The stage's name in its recipe (for messages only; not part of the key).
    pub name: String,
    pub config: StageConfig,
    /// Input role → the committed cache directory of the stage that provides it.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The content that was hashed into `key`; stored next to the artifacts.
    pub manifest: serde_json::Value,
    /// The cache root (`runs/cache`).
    pub cache_dir: PathBuf,
}

/// One final metric of a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    /// What the metric was measured on, e.g. `test/unseen-classes` or `train`.
    pub split: String,
}

/// Mean loss of each term over one epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    /// `total` and one entry per loss term (unweighted), averaged over the epoch's steps.
    pub losses: BTreeMap<String, f64>,
    pub wall_s: f64,
}

/// `result.json`: written last into a stage's directory; its presence (with checksums
/// that hold) is what makes a stage done.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StageResult {
    pub key: String,
    pub kind: String,
    pub metrics: Vec<Metric>,
    pub epochs: Vec<EpochRecord>,
    /// Artifact file name → SHA-256 of its bytes.
    pub artifacts: BTreeMap<String, String>,
    /// Which checkpoint the metrics describe. We report the last epoch and never select a
    /// checkpoint on the test split.
    pub checkpoint: String,
    pub wall_s: f64,
    pub threads: usize,
    pub device: String,
    pub engine_version: String,
    pub finished_unix: u64,
}

/// Progress events: one JSON object per line on a stage process's stdout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Epoch {
        epoch: usize,
        epochs: usize,
        losses: BTreeMap<String, f64>,
        wall_s: f64,
    },
    Metric {
        name: String,
        value: f64,
    },
    /// The stage resumed from a checkpoint: `epoch` epochs were restored and training goes
    /// on at `epoch + 1`.
    Resumed {
        epoch: usize,
    },
    /// The stage failed (or panicked) with this error; sent before it exits, because its log
    /// — where the error is also written — may be on a full disk.
    Failed {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_lines() {
        let line = serde_json::to_string(&Event::Resumed { epoch: 3 }).unwrap();
        assert_eq!(line, r#"{"event":"resumed","epoch":3}"#);
        // Like the other events: internally tagged, snake_case.
        let epoch = serde_json::to_string(&Event::Metric {
            name: "m".into(),
            value: 1.0,
        })
        .unwrap();
        assert!(epoch.starts_with(r#"{"event":"metric","#), "{epoch}");
        assert_eq!(
            serde_json::from_str::<Event>(&line).unwrap(),
            Event::Resumed { epoch: 3 }
        );
    }
}
