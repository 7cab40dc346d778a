//! `data:`: the named data sets, their files and their domain-shift transforms.

use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::diag;
use super::parser::Parser;
use crate::ml::data::{CifarLabels, DataSource, DataSpec, Transform, DEBIAN_FASHION_MNIST};

pub(crate) const DATA_KEYS: &[&str] = &[
    "kind",
    "path",
    "train_images",
    "train_labels",
    "test_images",
    "test_labels",
    "classes",
    "dim",
    "train_per_class",
    "test_per_class",
    "seed",
    "train_classes",
    "eval_classes",
    "train_limit",
    "eval_limit",
    "labels",
    "transforms",
];
/// The most values (f32) a synthetic data set may generate: 16 GiB.
const MAX_SYNTHETIC_FLOATS: usize = 1 << 32;
/// The keys of an `idx` data set's four files, in the order of `DataSource::files`.
const IDX_FILE_KEYS: [&str; 4] = ["train_images", "train_labels", "test_images", "test_labels"];
pub(crate) const DATA_KINDS: &[&str] =
    &["fashion-mnist", "idx", "cifar10", "cifar100", "synthetic"];
pub(crate) const TRANSFORM_KINDS: &[&str] = &["invert", "rotate", "noise", "subsample"];

/// A declared data set, before stages refer to it.
pub(super) struct DataDecl {
    pub(super) name: String,
    pub(super) spec: DataSpec,
}

impl Parser {
    pub(super) fn data_sets(&mut self, node: &Node) -> Vec<DataDecl> {
        let Some(m) = self.mapping(node, "data") else {
            return Vec::new();
        };
        if m.is_empty() {
            self.err(node.span(), "data: declare at least one data set");
        }
        let mut out = Vec::new();
        for (k, v) in m.iter() {
            self.check_name(k, "data set");
            let what = format!("data.{}", k.as_str());
            if let Some(spec) = self.data_set(v, k.span(), &what) {
                out.push(DataDecl {
                    name: k.as_str().to_string(),
                    spec,
                });
            }
        }
        out
    }

    pub(super) fn data_set(&mut self, node: &Node, at: &Span, what: &str) -> Option<DataSpec> {
        let m = self.mapping(node, what)?;
        self.check_keys(m, DATA_KEYS, what);
        let kind = self.choice(m, "kind", at, what, "data set kind", DATA_KINDS, None)?;
        self.foreign_keys(m, what, &kind);
        let (source, n_classes) = self.data_source(m, at, what, &kind)?;
        self.check_files(m, at, what, &source);
        let (train_classes, eval_classes) = self.class_split(m, at, what, n_classes);
        let train_limit = self.limit(m, what, "train_limit");
        let eval_limit = self.limit(m, what, "eval_limit");
        let transforms = match m.get_node("transforms") {
            Some(n) => self.list(n, &format!("{what}.transforms"), |p, n, w| {
                p.transform(n, w, &source)
            }),
            None => Some(Vec::new()),
        };
        Some(DataSpec {
            source,
            train_classes: train_classes?,
            eval_classes: eval_classes?,
            train_limit: train_limit?,
            eval_limit: eval_limit?,
            transforms: transforms?,
        })
    }

    /// Reports the keys that belong to other kinds of data set.
    fn foreign_keys(&mut self, m: &MarkedMappingNode, what: &str, kind: &str) {
        let own: &[&str] = match kind {
            "fashion-mnist" | "cifar10" => &["path"],
            "cifar100" => &["path", "labels"],
            "idx" => &IDX_FILE_KEYS,
            "synthetic" => &[
                "classes",
                "dim",
                "train_per_class",
                "test_per_class",
                "seed",
            ],
            _ => unreachable!("checked by choice"),
        };
        let common = [
            "kind",
            "train_classes",
            "eval_classes",
            "train_limit",
            "eval_limit",
            "transforms",
        ];
        for key in m.keys() {
            let k = key.as_str();
            if DATA_KEYS.contains(&k) && !own.contains(&k) && !common.contains(&k) {
                self.err(
                    key.span(),
                    format!("{what}: `{k}` does not apply to a `{kind}` data set"),
                );
            }
        }
    }

    /// Where a data set's samples come from, and its number of classes where that is known
    /// without reading its files.
    fn data_source(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        kind: &str,
    ) -> Option<(DataSource, Option<u32>)> {
        match kind {
            "fashion-mnist" => {
                let path = match m.get_node("path") {
                    Some(n) => PathBuf::from(self.string(n, &format!("{what}.path"))?),
                    None => PathBuf::from(DEBIAN_FASHION_MNIST),
                };
                Some((DataSource::FashionMnist { path }, Some(10)))
            }
            "cifar10" | "cifar100" => {
                let source = self.cifar_source(m, at, what, kind)?;
                let n_classes = source.n_classes();
                Some((source, n_classes))
            }
            "idx" => Some((self.idx_source(m, at, what)?, None)),
            _ => self.synthetic_source(m, at, what),
        }
    }

    fn cifar_source(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        kind: &str,
    ) -> Option<DataSource> {
        let Some(n) = m.get_node("path") else {
            self.err(
                at,
                format!("{what}: missing `path:` (the directory of the CIFAR binary version, e.g. cifar-10-batches-bin)"),
            );
            return None;
        };
        let path = PathBuf::from(self.string(n, &format!("{what}.path"))?);
        if kind == "cifar10" {
            return Some(DataSource::Cifar10 { path });
        }
        let labels = self.choice(
            m,
            "labels",
            at,
            what,
            "label set",
            &["fine", "coarse"],
            Some("fine"),
        )?;
        Some(DataSource::Cifar100 {
            path,
            labels: if labels == "fine" {
                CifarLabels::Fine
            } else {
                CifarLabels::Coarse
            },
        })
    }

    /// The four files of an `idx` data set; the first one missing is reported.
    fn idx_source(&mut self, m: &MarkedMappingNode, at: &Span, what: &str) -> Option<DataSource> {
        let mut path_of = |key: &str| -> Option<PathBuf> {
            match m.get_node(key) {
                Some(n) => self.string(n, &format!("{what}.{key}")).map(PathBuf::from),
                None => {
                    self.err(
                        at,
                        format!("{what}: missing `{key}:` (path of an IDX file)"),
                    );
                    None
                }
            }
        };
        Some(DataSource::Idx {
            train_images: path_of("train_images")?,
            train_labels: path_of("train_labels")?,
            test_images: path_of("test_images")?,
            test_labels: path_of("test_labels")?,
        })
    }

    fn synthetic_source(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
    ) -> Option<(DataSource, Option<u32>)> {
        let classes = self.uint_or(m, "classes", what, 2, 10u32);
        let dim = self.uint_or(m, "dim", what, 1, 32usize);
        let train_per_class = self.uint_or(m, "train_per_class", what, 1, 100usize);
        let test_per_class = self.uint_or(m, "test_per_class", what, 1, 50usize);
        let seed = self.uint_or(m, "seed", what, 0, 0u64);
        let (classes, dim) = (classes?, dim?);
        let (train_per_class, test_per_class) = (train_per_class?, test_per_class?);
        // The stage generates classes × samples × dim floats: a size past the bound (or past
        // any number) is refused here, not as a panic or an out-of-memory kill inside the
        // stage.
        let floats = train_per_class
            .checked_add(test_per_class)
            .and_then(|n| n.checked_mul(classes as usize))
            .and_then(|n| n.checked_mul(dim));
        if floats.is_none_or(|n| n > MAX_SYNTHETIC_FLOATS) {
            self.err(
                at,
                format!("{what}: {classes} classes × ({train_per_class} + {test_per_class}) samples × {dim} dimensions is more than the {MAX_SYNTHETIC_FLOATS} values (16 GiB) a synthetic data set may have; lower them"),
            );
            return None;
        }
        Some((
            DataSource::Synthetic {
                classes,
                dim,
                train_per_class,
                test_per_class,
                seed: seed?,
            },
            Some(classes),
        ))
    }

    /// `train_classes:` and `eval_classes:`, by default the first half of the classes and the
    /// rest; the two must not overlap.
    #[allow(clippy::type_complexity)]
    fn class_split(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        n_classes: Option<u32>,
    ) -> (Option<Vec<u32>>, Option<Vec<u32>>) {
        let halves = n_classes.map(|nc| {
            (
                (0..nc / 2).collect::<Vec<_>>(),
                (nc / 2..nc).collect::<Vec<_>>(),
            )
        });
        let train_classes = self.classes(
            m,
            at,
            what,
            "train_classes",
            n_classes,
            halves.as_ref().map(|h| h.0.clone()),
        );
        let eval_classes =
            self.classes(m, at, what, "eval_classes", n_classes, halves.map(|h| h.1));
        if let (Some(t), Some(e)) = (&train_classes, &eval_classes) {
            let overlap: Vec<u32> = t.iter().filter(|c| e.contains(c)).copied().collect();
            if !overlap.is_empty() {
                self.err(
                    at,
                    format!(
                        "{what}: train_classes and eval_classes share {overlap:?}; the metric-learning protocol evaluates on classes unseen in training"
                    ),
                );
            }
        }
        (train_classes, eval_classes)
    }

    /// A list of class labels (`key:`), each one of the data set's classes where their number
    /// is known; `default` where the key is absent.
    fn classes(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        key: &str,
        n_classes: Option<u32>,
        default: Option<Vec<u32>>,
    ) -> Option<Vec<u32>> {
        let Some(n) = m.get_node(key) else {
            if default.is_none() {
                self.err(
                    at,
                    format!("{what}: missing `{key}:` (a list of class labels)"),
                );
            }
            return default;
        };
        let v = self.list(n, &format!("{what}.{key}"), |p, n, w| {
            p.uint::<u32>(n, w, 0)
        })?;
        // `eval_classes: []` declares a data set for the classification protocol only (no
        // unseen classes); training needs classes.
        if v.is_empty() && key == "train_classes" {
            self.err(n.span(), format!("{what}.{key}: list at least one class"));
            return None;
        }
        if let Some((nc, bad)) =
            n_classes.and_then(|nc| v.iter().find(|&&c| c >= nc).map(|b| (nc, b)))
        {
            self.err(
                n.span(),
                format!(
                    "{what}.{key}: class {bad} does not exist (classes are 0..{})",
                    nc - 1
                ),
            );
            return None;
        }
        Some(v)
    }

    /// `train_limit:` or `eval_limit:`: keep the first N samples (at least 2).
    fn limit(&mut self, m: &MarkedMappingNode, what: &str, key: &str) -> Option<Option<usize>> {
        match m.get_node(key) {
            Some(n) => self.uint(n, &format!("{what}.{key}"), 2).map(Some),
            None => Some(None),
        }
    }

    /// Files must be there now, not halfway through a sweep, and be files that can be read:
    /// `plan` fingerprints them, and a directory or a pipe would fail (or hang) it with no
    /// position in the recipe. Each problem is reported at the key that names the file.
    pub(super) fn check_files(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        source: &DataSource,
    ) {
        let files = source.files();
        let keys: Vec<&str> = match source {
            DataSource::Idx { .. } => IDX_FILE_KEYS.to_vec(),
            _ => vec!["path"; files.len()],
        };
        let span_of = |key: &str| m.get_node(key).map_or(at, |n| n.span());
        if let Some(dir) = m.get_node("path").and_then(|n| n.as_scalar()) {
            if Path::new(dir.as_str()).is_file() {
                self.err(
                    span_of("path"),
                    format!("{what}.path: {} is a file; `path:` is the directory that holds the data set's files", dir.as_str()),
                );
                return;
            }
        }
        let mut missing: Vec<(&str, String)> = Vec::new();
        for (&key, file) in keys.iter().zip(&files) {
            let shown = file.display();
            let problem = match std::fs::metadata(file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing.push((key, shown.to_string()));
                    None
                }
                Err(e) => Some(format!("cannot read {shown}: {e}")),
                Ok(md) if md.is_dir() => Some(format!(
                    "{shown} is a directory; expected the data file itself"
                )),
                Ok(md) if !md.is_file() => Some(format!(
                    "{shown} is not a regular file (a pipe or a device cannot be fingerprinted); copy the data into a file"
                )),
                Ok(_) => std::fs::File::open(file)
                    .err()
                    .map(|e| format!("cannot read {shown}: {e}")),
            };
            if let Some(problem) = problem {
                self.err(span_of(key), format!("{what}.{key}: {problem}"));
            }
        }
        let fix = if matches!(source, DataSource::FashionMnist { .. }) {
            " (install Debian's `dataset-fashion-mnist` package, or point `path:` at a directory with the IDX files)"
        } else {
            ""
        };
        let mut reported: Vec<&str> = Vec::new();
        for (key, _) in &missing {
            if reported.contains(key) {
                continue;
            }
            reported.push(key);
            let names: Vec<&str> = missing
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, f)| f.as_str())
                .collect();
            // `path:` names a directory of several files; the keys of an idx set one each.
            let whose = if *key == "path" {
                String::new()
            } else {
                format!(".{key}")
            };
            self.err(
                span_of(key),
                format!(
                    "{what}{whose}: data files not found: {}{fix}",
                    names.join(", ")
                ),
            );
        }
    }

    /// One domain-shift transform: `invert`, or `{kind: rotate, degrees: 30}` and the like.
    pub(super) fn transform(
        &mut self,
        node: &Node,
        what: &str,
        source: &DataSource,
    ) -> Option<Transform> {
        let t = if let Some(s) = node.as_scalar() {
            match s.as_str() {
                "invert" => Transform::Invert,
                other => {
                    let example = match other {
                        "rotate" => "{kind: rotate, degrees: 30}",
                        "noise" => "{kind: noise, std: 0.1}",
                        "subsample" => "{kind: subsample, fraction: 0.5}",
                        _ => "",
                    };
                    let message = if example.is_empty() {
                        format!(
                            "{what}: unknown transform `{other}`{}",
                            diag::hint(other, TRANSFORM_KINDS)
                        )
                    } else {
                        format!("{what}: `{other}` needs parameters; write e.g. {example}")
                    };
                    self.err(node.span(), message);
                    return None;
                }
            }
        } else {
            let m = self.mapping(node, what)?;
            let kind = self.choice(
                m,
                "kind",
                node.span(),
                what,
                "transform",
                TRANSFORM_KINDS,
                None,
            )?;
            let allowed: &[&str] = match kind.as_str() {
                "invert" => &["kind"],
                "rotate" => &["kind", "degrees"],
                "noise" => &["kind", "std", "seed"],
                _ => &["kind", "fraction", "seed"],
            };
            self.check_keys(m, allowed, &format!("{what} ({kind})"));
            let need = |p: &mut Self, key: &str, example: &str| match m.get_node(key) {
                Some(n) => p.float(n, &format!("{what}.{key}"), f64::MIN, false),
                None => {
                    p.err(
                        node.span(),
                        format!("{what}: missing `{key}:` (e.g. {example})"),
                    );
                    None
                }
            };
            let seed = |p: &mut Self| p.uint_or(m, "seed", what, 0, 0u64);
            match kind.as_str() {
                "invert" => Transform::Invert,
                "rotate" => Transform::Rotate {
                    degrees: need(self, "degrees", "degrees: 30")?,
                },
                "noise" => Transform::Noise {
                    std: need(self, "std", "std: 0.1")?,
                    seed: seed(self)?,
                },
                _ => Transform::Subsample {
                    fraction: need(self, "fraction", "fraction: 0.5")?,
                    seed: seed(self)?,
                },
            }
        };
        if let Err(reason) = t.check(source) {
            self.err(node.span(), format!("{what}: {reason}"));
            return None;
        }
        Some(t)
    }
}
