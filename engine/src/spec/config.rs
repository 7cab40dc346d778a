//! The resolved configuration of each stage kind: the part of a recipe that can change a
//! stage's results, and so goes into its content key.

use serde::{Deserialize, Serialize};

use super::loss::LossTerm;
use crate::ml::data::DataSpec;
pub use crate::ml::metric::FewShotSpec;
use crate::ml::model::ModelSpec;
use crate::ml::sampler::SamplerSpec;

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
