//! The loss terms a recipe can mix: each loss with its own parameters, and a weighted term.
//!
//! [`DECLS`] declares every loss once — its name, what it is, its options with their types,
//! ranges and defaults, whether it compares with a teacher — and the recipe parser (defaults,
//! allowed keys, messages), the JSON Schema of recipes and `rkd-orch loss bench` read it. The
//! [`Loss`] enum is the parsed form: [`LossDecl::build`] makes one from option values.

use serde::{Deserialize, Serialize};

/// The kernel of the correlation congruence loss: the one `ml::loss::cc` computes, serialised
/// as `{"kind": "taylor", "p": 2, "gamma": 0.4}` (its serde form is part of content keys).
pub use crate::ml::loss::CcKernel as Kernel;
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

/// What one option of a loss takes, and its default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptionType {
    /// A finite number ≥ `min` (> `min` when `strict`).
    Number {
        min: f64,
        strict: bool,
        default: f64,
    },
    /// A whole number ≥ `min`.
    Whole { min: u32, default: u32 },
    /// One of `names`.
    Name {
        names: &'static [&'static str],
        default: &'static str,
    },
}

/// One option of a loss term (besides `weight`, `on` and `keep`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOption {
    pub key: &'static str,
    pub ty: OptionType,
    /// For the schema (none where the key says it).
    pub description: Option<&'static str>,
    /// `Some((key, values))`: the option applies only while option `key` is one of `values`
    /// (CC's `p` to the Taylor kernel); given otherwise, it is an error.
    pub applies: Option<(&'static str, &'static [&'static str])>,
}

/// A value given to (or defaulted for) a [`LossOption`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptionValue {
    Number(f64),
    Whole(u32),
    Name(&'static str),
}

/// The declaration of one loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossDecl {
    /// Its name in recipes and in [`Loss`]'s serialisation.
    pub name: &'static str,
    pub summary: &'static str,
    /// The paper (and the implementation its semantics follow).
    pub reference: &'static str,
    /// Its name in the golden vectors and the reference benchmarks, where that differs.
    pub golden_name: Option<&'static str>,
    /// It compares the student with a teacher (needs a `distill` stage).
    pub teacher: bool,
    /// It is a task loss, computed from labels.
    pub task: bool,
    /// The output it acts on unless `on:` says otherwise.
    pub default_on: Tap,
    /// `on:` may choose the output.
    pub on: bool,
    /// `keep:` may mask its relations.
    pub keep: bool,
    pub options: &'static [LossOption],
}

pub const MINING_NAMES: [&str; 5] = ["random", "semi_hard", "hard", "all", "distance_weighted"];
pub const KERNEL_NAMES: [&str; 3] = ["taylor", "gaussian", "bilinear"];

/// Every loss a recipe can name, in the order messages list them.
pub const DECLS: [LossDecl; 7] = [
    LossDecl {
        name: "triplet",
        summary: "triplet margin loss on the model's own embedding",
        reference: "Schroff et al., FaceNet, CVPR 2015 (torch F.triplet_margin_loss)",
        golden_name: None,
        teacher: false,
        task: true,
        default_on: Tap::Embedding,
        on: false,
        keep: false,
        options: &[
            LossOption {
                key: "margin",
                ty: OptionType::Number {
                    min: 0.0,
                    strict: false,
                    default: 0.2,
                },
                description: None,
                applies: None,
            },
            LossOption {
                key: "mining",
                ty: OptionType::Name {
                    names: &MINING_NAMES,
                    default: "semi_hard",
                },
                description: None,
                applies: None,
            },
        ],
    },
    LossDecl {
        name: "ce",
        summary: "cross-entropy of the model's logits against the labels",
        reference: "torch F.cross_entropy",
        golden_name: None,
        teacher: false,
        task: true,
        default_on: Tap::Logits,
        on: false,
        keep: false,
        options: &[],
    },
    LossDecl {
        name: "rkd_d",
        summary: "RKD distance-wise loss against the teacher",
        reference: "Park et al., Relational Knowledge Distillation, CVPR 2019 (lenscloth/RKD RkdDistance)",
        golden_name: Some("rkd_distance"),
        teacher: true,
        task: false,
        default_on: Tap::Embedding,
        on: true,
        keep: true,
        options: &[],
    },
    LossDecl {
        name: "rkd_a",
        summary: "RKD angle-wise loss against the teacher",
        reference: "Park et al., Relational Knowledge Distillation, CVPR 2019 (lenscloth/RKD RKdAngle)",
        golden_name: Some("rkd_angle"),
        teacher: true,
        task: false,
        default_on: Tap::Embedding,
        on: true,
        keep: true,
        options: &[],
    },
    LossDecl {
        name: "sp",
        summary: "similarity-preserving loss against the teacher",
        reference: "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019 (RepDistiller Similarity)",
        golden_name: None,
        teacher: true,
        task: false,
        default_on: Tap::Embedding,
        on: true,
        keep: true,
        options: &[],
    },
    LossDecl {
        name: "cc",
        summary: "correlation congruence against the teacher, under a kernel",
        reference: "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019 (KD-Zoo CC)",
        golden_name: None,
        teacher: true,
        task: false,
        default_on: Tap::Embedding,
        on: true,
        keep: true,
        options: &[
            LossOption {
                key: "kernel",
                ty: OptionType::Name {
                    names: &KERNEL_NAMES,
                    default: "taylor",
                },
                description: None,
                applies: None,
            },
            LossOption {
                key: "p",
                ty: OptionType::Whole { min: 1, default: 2 },
                description: Some("Taylor order of the Gaussian kernel"),
                applies: Some(("kernel", &["taylor"])),
            },
            LossOption {
                key: "gamma",
                ty: OptionType::Number {
                    min: 0.0,
                    strict: true,
                    default: 0.4,
                },
                description: None,
                applies: Some(("kernel", &["taylor", "gaussian"])),
            },
        ],
    },
    LossDecl {
        name: "kd",
        summary: "Hinton's knowledge distillation on logits, at a temperature",
        reference: "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015 (RepDistiller DistillKL)",
        golden_name: None,
        teacher: true,
        task: false,
        default_on: Tap::Logits,
        on: true,
        keep: false,
        options: &[LossOption {
            key: "temperature",
            ty: OptionType::Number {
                min: 0.0,
                strict: true,
                default: 4.0,
            },
            description: None,
            applies: None,
        }],
    },
];

/// The declaration named `name`, if any.
pub fn decl(name: &str) -> Option<&'static LossDecl> {
    DECLS.iter().find(|d| d.name == name)
}

impl LossOption {
    pub fn default(&self) -> OptionValue {
        match self.ty {
            OptionType::Number { default, .. } => OptionValue::Number(default),
            OptionType::Whole { default, .. } => OptionValue::Whole(default),
            OptionType::Name { default, .. } => OptionValue::Name(default),
        }
    }
}

impl LossDecl {
    /// The keys a term of this loss may have, in the order messages list them.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = vec!["weight"];
        keys.extend(self.on.then_some("on"));
        keys.extend(self.keep.then_some("keep"));
        keys.extend(self.options.iter().map(|o| o.key));
        keys
    }

    /// The loss with its options: `value(key)` where it gives one, the default elsewhere.
    pub fn build(&self, value: impl Fn(&str) -> Option<OptionValue>) -> Loss {
        let get = |key: &str| -> OptionValue {
            let option = self
                .options
                .iter()
                .find(|o| o.key == key)
                .expect("a declared option");
            value(key).unwrap_or_else(|| option.default())
        };
        let number = |key: &str| match get(key) {
            OptionValue::Number(v) => v,
            other => unreachable!("{}.{key} is a number, not {other:?}", self.name),
        };
        let whole = |key: &str| match get(key) {
            OptionValue::Whole(v) => v,
            other => unreachable!("{}.{key} is a whole number, not {other:?}", self.name),
        };
        let name = |key: &str| match get(key) {
            OptionValue::Name(v) => v,
            other => unreachable!("{}.{key} is a name, not {other:?}", self.name),
        };
        match self.name {
            "triplet" => Loss::Triplet {
                margin: number("margin"),
                mining: match name("mining") {
                    "random" => Mining::Random,
                    "hard" => Mining::Hard,
                    "all" => Mining::All,
                    "distance_weighted" => Mining::DistanceWeighted,
                    _ => Mining::SemiHard,
                },
            },
            "ce" => Loss::Ce,
            "rkd_d" => Loss::RkdD,
            "rkd_a" => Loss::RkdA,
            "sp" => Loss::Sp,
            "cc" => Loss::Cc {
                kernel: match name("kernel") {
                    "taylor" => Kernel::Taylor {
                        p: whole("p"),
                        gamma: number("gamma"),
                    },
                    "gaussian" => Kernel::Gaussian {
                        gamma: number("gamma"),
                    },
                    _ => Kernel::Bilinear,
                },
            },
            "kd" => Loss::Kd {
                temperature: number("temperature"),
            },
            other => unreachable!("no loss `{other}` is declared"),
        }
    }

    /// The loss with every option at its default.
    pub fn defaults(&self) -> Loss {
        self.build(|_| None)
    }
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

    /// The declaration of this loss.
    pub fn decl(&self) -> &'static LossDecl {
        decl(self.name()).expect("every loss is declared")
    }

    /// Whether the loss compares the student with a teacher.
    pub fn needs_teacher(&self) -> bool {
        self.decl().teacher
    }

    pub const NAMES: [&'static str; DECLS.len()] = {
        let mut names = [""; DECLS.len()];
        let mut i = 0;
        while i < DECLS.len() {
            names[i] = DECLS[i].name;
            i += 1;
        }
        names
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The variant ↔ name maps ([`Loss::name`], [`LossDecl::build`], serde's tag) agree, and
    /// the defaults are the ones every content key so far was made with.
    #[test]
    fn every_declared_loss_builds_itself_and_serialises_under_its_name() {
        for d in &DECLS {
            let loss = d.defaults();
            assert_eq!(loss.name(), d.name);
            let json = serde_json::to_value(&loss).unwrap();
            assert_eq!(json["loss"], d.name);
            assert_eq!(serde_json::from_value::<Loss>(json).unwrap(), loss);
            assert!(!(d.teacher && d.task), "{}", d.name);
        }
        assert_eq!(
            Loss::NAMES,
            ["triplet", "ce", "rkd_d", "rkd_a", "sp", "cc", "kd"]
        );
        assert_eq!(
            serde_json::to_string(&decl("cc").unwrap().defaults()).unwrap(),
            r#"{"loss":"cc","kernel":{"kind":"taylor","p":2,"gamma":0.4}}"#
        );
        assert_eq!(
            serde_json::to_string(&decl("triplet").unwrap().defaults()).unwrap(),
            r#"{"loss":"triplet","margin":0.2,"mining":"semi_hard"}"#
        );
        assert_eq!(
            serde_json::to_string(&decl("kd").unwrap().defaults()).unwrap(),
            r#"{"loss":"kd","temperature":4.0}"#
        );
        for (kernel, json) in [
            (
                Kernel::Gaussian { gamma: 0.5 },
                r#"{"kind":"gaussian","gamma":0.5}"#,
            ),
            (Kernel::Bilinear, r#"{"kind":"bilinear"}"#),
        ] {
            assert_eq!(serde_json::to_string(&kernel).unwrap(), json);
        }
    }

    #[test]
    fn the_keys_of_a_term_list_weight_on_keep_then_the_options() {
        assert_eq!(
            decl("cc").unwrap().keys(),
            ["weight", "on", "keep", "kernel", "p", "gamma"]
        );
        assert_eq!(
            decl("triplet").unwrap().keys(),
            ["weight", "margin", "mining"]
        );
        assert_eq!(decl("kd").unwrap().keys(), ["weight", "on", "temperature"]);
        assert_eq!(decl("ce").unwrap().keys(), ["weight"]);
        assert_eq!(decl("sp").unwrap().keys(), ["weight", "on", "keep"]);
    }
}
