//! `sampler:`: how a training stage draws its batches.

use marked_yaml::Node;

use super::diag;
use super::parser::Parser;
use crate::ml::sampler::SamplerSpec;

pub(crate) const SAMPLER_KINDS: &[&str] = &["random", "class_balanced", "superclass", "pk"];

impl Parser {
    /// `sampler: random`, or `{kind: class_balanced, classes_per_batch: K, per_class: N}`,
    /// `{kind: superclass, clusters: C, classes_per_batch: K, per_class: N}`, `{kind: pk, p, k}`.
    /// A balanced batch is K groups × N samples; N defaults to `batch_size / K`, and an
    /// explicit `batch_size` must agree with K × N.
    pub(super) fn sampler(
        &mut self,
        node: &Node,
        what: &str,
        batch_size: usize,
        batch_explicit: bool,
        n_classes: Option<usize>,
        distill: bool,
    ) -> Option<SamplerSpec> {
        if let Some(s) = node.as_scalar() {
            if s.as_str() == "random" {
                return Some(SamplerSpec::Random);
            }
            self.err(
                node.span(),
                format!(
                    "{what}: `{}` needs its batch shape; write e.g. {{kind: class_balanced, classes_per_batch: 8}}, {{kind: superclass, clusters: 10, classes_per_batch: 8}} or {{kind: pk, p: 8, k: 4}}{}",
                    s.as_str(),
                    diag::hint(s.as_str(), SAMPLER_KINDS)
                ),
            );
            return None;
        }
        let m = self.mapping(node, what)?;
        let kind = self.choice(m, "kind", node.span(), what, "sampler", SAMPLER_KINDS, None)?;
        let (groups_key, per_key): (&str, &str) = match kind.as_str() {
            "pk" => ("p", "k"),
            _ => ("classes_per_batch", "per_class"),
        };
        // Parameters of every sampler kind are accepted (and those of other kinds unused),
        // so that `sampler.kind: [random, class_balanced, superclass]` can be swept over one
        // `sampler:` mapping. Only what the chosen kind uses enters the content key.
        self.check_keys(
            m,
            &[
                "kind",
                "clusters",
                "classes_per_batch",
                "per_class",
                "p",
                "k",
            ],
            what,
        );
        if kind == "random" {
            return Some(SamplerSpec::Random);
        }
        if kind == "superclass" && !distill {
            self.err(
                node.span(),
                format!("{what}: superclass batches come from k-means on a teacher's embeddings; use it on a distill or self_distill stage"),
            );
            return None;
        }
        let groups: usize = match m.get_node(groups_key) {
            Some(n) => self.uint(n, &format!("{what}.{groups_key}"), 1)?,
            None => {
                self.err(
                    node.span(),
                    format!("{what}: missing `{groups_key}:` (groups per batch)"),
                );
                return None;
            }
        };
        let clusters = match (kind.as_str(), m.get_node("clusters")) {
            ("superclass", Some(n)) => Some(self.uint(n, &format!("{what}.clusters"), 2)?),
            ("superclass", None) => {
                self.err(
                    node.span(),
                    format!("{what}: missing `clusters:` (how many k-means superclasses)"),
                );
                return None;
            }
            _ => None,
        };
        let available = clusters.or(n_classes);
        if let Some(avail) = available.filter(|&a| groups > a) {
            let of = if clusters.is_some() {
                "clusters"
            } else {
                "training classes"
            };
            self.err(
                m.get_node(groups_key).map(|n| n.span()).unwrap_or(node.span()),
                format!("{what}.{groups_key}: {groups} groups per batch but there are only {avail} {of}; lower `{groups_key}`"),
            );
            return None;
        }
        let per = match m.get_node(per_key) {
            Some(n) => {
                let per: usize = self.uint(n, &format!("{what}.{per_key}"), 1)?;
                // Both factors come from the recipe: their product must not wrap around.
                if groups.checked_mul(per).is_none() {
                    self.err(
                        n.span(),
                        format!("{what}: {groups} × {per} samples per batch is more than this machine can count; lower `{groups_key}` or `{per_key}`"),
                    );
                    return None;
                }
                if batch_explicit && groups * per != batch_size {
                    self.err(
                        n.span(),
                        format!("{what}: {groups} × {per} = {} samples per batch, but batch_size is {batch_size}; drop one of them or make them agree", groups * per),
                    );
                    return None;
                }
                per
            }
            None => {
                if batch_size % groups != 0 || batch_size / groups < 2 {
                    self.err(
                        node.span(),
                        format!("{what}: batch_size {batch_size} does not split into {groups} groups of at least 2 samples; set `{per_key}:` or a batch_size that is a multiple of {groups}"),
                    );
                    return None;
                }
                batch_size / groups
            }
        };
        if groups * per < 3 {
            self.err(node.span(), format!("{what}: {groups} × {per} samples per batch is too few for a relational loss (at least 3)"));
            return None;
        }
        Some(match kind.as_str() {
            "pk" => SamplerSpec::Pk { p: groups, k: per },
            "superclass" => SamplerSpec::Superclass {
                clusters: clusters.expect("checked above"),
                classes_per_batch: groups,
                per_class: per,
            },
            _ => SamplerSpec::ClassBalanced {
                classes_per_batch: groups,
                per_class: per,
            },
        })
    }
}
