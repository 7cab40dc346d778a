//! `loss:`: the weighted terms of a training stage's loss.

use marked_yaml::{Node, Span};

use super::diag;
use super::parser::Parser;
use crate::ml::model::Tap;
use crate::spec::{Kernel, Loss, LossTerm, Mining};

pub(crate) const MINING_NAMES: [&str; 5] =
    ["random", "semi_hard", "hard", "all", "distance_weighted"];
pub(crate) const KERNEL_NAMES: [&str; 3] = ["taylor", "gaussian", "bilinear"];

impl Parser {
    pub(super) fn loss(&mut self, node: &Node, what: &str, distill: bool) -> Option<Vec<LossTerm>> {
        let m = self.mapping(node, what)?;
        if m.is_empty() {
            self.err(
                node.span(),
                format!(
                    "{what}: name at least one loss term ({})",
                    Loss::NAMES.join(", ")
                ),
            );
            return None;
        }
        let mut terms = Vec::new();
        let mut ok = true;
        for (k, v) in m.iter() {
            let name = k.as_str();
            let w = format!("{what}.{name}");
            if !Loss::NAMES.contains(&name) {
                self.err(
                    k.span(),
                    format!(
                        "{what}: unknown loss `{name}`{}",
                        diag::hint(name, &Loss::NAMES)
                    ),
                );
                ok = false;
                continue;
            }
            match self.term(name, v, k.span(), &w) {
                Some(t) if t.loss.needs_teacher() && !distill => {
                    self.err(
                        k.span(),
                        format!("{w}: `{name}` compares with a teacher; use `kind: distill` with `teacher: STAGE`"),
                    );
                    ok = false;
                }
                Some(t) => terms.push(t),
                None => ok = false,
            }
        }
        if ok && terms.iter().all(|t| t.weight == 0.0) {
            self.err(
                node.span(),
                format!("{what}: every weight is 0, so nothing would be learned"),
            );
            return None;
        }
        // Canonical order: the recipe's order of terms does not change the key.
        terms.sort_by(|a, b| a.name().cmp(b.name()));
        ok.then_some(terms)
    }

    /// One term: `name: WEIGHT` or `name: {weight: W, ...options}`. Records where its
    /// `on:` (or the term itself) is, for the checks that need the models.
    pub(super) fn term(
        &mut self,
        name: &str,
        node: &Node,
        at: &Span,
        what: &str,
    ) -> Option<LossTerm> {
        let default_on = if matches!(name, "kd" | "ce") {
            Tap::Logits
        } else {
            Tap::Embedding
        };
        self.term_pos.insert(what.to_string(), at.into());
        if node.as_scalar().is_some() {
            let weight = self.float(node, &format!("{what} (weight)"), 0.0, false)?;
            let loss = match name {
                "triplet" => Loss::Triplet {
                    margin: 0.2,
                    mining: Mining::SemiHard,
                },
                "ce" => Loss::Ce,
                "rkd_d" => Loss::RkdD,
                "rkd_a" => Loss::RkdA,
                "sp" => Loss::Sp,
                "cc" => Loss::Cc {
                    kernel: Kernel::Taylor { p: 2, gamma: 0.4 },
                },
                _ => Loss::Kd { temperature: 4.0 },
            };
            return Some(LossTerm {
                loss,
                weight,
                on: default_on,
                keep: None,
            });
        }
        let m = self.mapping(node, what)?;
        let allowed: &[&str] = match name {
            "triplet" => &["weight", "margin", "mining"],
            "ce" => &["weight"],
            "kd" => &["weight", "on", "temperature"],
            "cc" => &["weight", "on", "keep", "kernel", "p", "gamma"],
            _ => &["weight", "on", "keep"],
        };
        self.check_keys(m, allowed, what);
        let num =
            |p: &mut Self, key: &str, default: f64, min: f64, strict: bool| match m.get_node(key) {
                Some(n) => p.float(n, &format!("{what}.{key}"), min, strict),
                None => Some(default),
            };
        let weight = num(self, "weight", 1.0, 0.0, false);
        let on = match m.get_node("on") {
            Some(n) => {
                self.term_pos.insert(what.to_string(), n.span().into());
                let s = self.string(n, &format!("{what}.on"))?;
                let tap = Tap::parse(&s);
                if tap.is_none() {
                    self.err(
                        n.span(),
                        format!("{what}.on: unknown output `{s}`; expected embedding, logits or hiddenN (N ≥ 1)"),
                    );
                }
                tap
            }
            None => Some(default_on),
        };
        let keep = match m.get_node("keep") {
            Some(n) => match self.float(n, &format!("{what}.keep"), 0.0, true) {
                Some(k) if k <= 1.0 => Some(Some(k)),
                Some(k) => {
                    self.err(
                        n.span(),
                        format!("{what}.keep: a fraction of the relations in (0, 1], found {k}"),
                    );
                    None
                }
                None => None,
            },
            None => Some(None),
        };
        let loss = match name {
            "triplet" => {
                let margin = num(self, "margin", 0.2, 0.0, false);
                let mining = self
                    .choice(
                        m,
                        "mining",
                        at,
                        what,
                        "mining",
                        &MINING_NAMES,
                        Some("semi_hard"),
                    )
                    .map(|s| match s.as_str() {
                        "random" => Mining::Random,
                        "hard" => Mining::Hard,
                        "all" => Mining::All,
                        "distance_weighted" => Mining::DistanceWeighted,
                        _ => Mining::SemiHard,
                    });
                Loss::Triplet {
                    margin: margin?,
                    mining: mining?,
                }
            }
            "ce" => Loss::Ce,
            "rkd_d" => Loss::RkdD,
            "rkd_a" => Loss::RkdA,
            "sp" => Loss::Sp,
            "kd" => Loss::Kd {
                temperature: num(self, "temperature", 4.0, 0.0, true)?,
            },
            _ => {
                let kernel = self.choice(
                    m,
                    "kernel",
                    at,
                    what,
                    "kernel",
                    &KERNEL_NAMES,
                    Some("taylor"),
                );
                let gamma = num(self, "gamma", 0.4, 0.0, true);
                let p = self.uint_or(m, "p", what, 1, 2u32);
                let kernel = kernel?;
                for (key, applies) in [("p", kernel == "taylor"), ("gamma", kernel != "bilinear")] {
                    if let (Some(n), false) = (m.get_node(key), applies) {
                        self.err(
                            n.span(),
                            format!("{what}.{key}: does not apply to the `{kernel}` kernel"),
                        );
                    }
                }
                let kernel = match kernel.as_str() {
                    "taylor" => Kernel::Taylor {
                        p: p?,
                        gamma: gamma?,
                    },
                    "gaussian" => Kernel::Gaussian { gamma: gamma? },
                    _ => Kernel::Bilinear,
                };
                Loss::Cc { kernel }
            }
        };
        Some(LossTerm {
            loss,
            weight: weight?,
            on: on?,
            keep: keep?,
        })
    }
}
