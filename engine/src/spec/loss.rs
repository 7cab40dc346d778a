//! The loss terms a recipe can mix: each loss with its own parameters, and a weighted term.

use serde::{Deserialize, Serialize};

pub use crate::ml::loss::Mining;
use crate::ml::model::Tap;

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
