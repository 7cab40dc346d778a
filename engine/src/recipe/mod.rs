//! Recipes: the YAML a user writes. Parsed from a YAML tree that keeps every node's position,
//! so that each problem — unknown key, wrong type, out-of-range value, dangling reference —
//! is reported at its line and column, all of them in one report, before anything runs.
//!
//! The reference for the format is `docs/recipes.md`.

pub mod diag;
pub mod expand;
pub mod keys;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};
use num_traits::{PrimInt, Unsigned};
use sha2::{Digest, Sha256};

use crate::ml::data::{hex, CifarLabels, DataSource, DataSpec, Transform, DEBIAN_FASHION_MNIST};
use crate::ml::model::{InputShape, ModelSpec, Tap};
use crate::ml::sampler::SamplerSpec;
use crate::spec::{
    EvalConfig, FewShotSpec, Kernel, Loss, LossTerm, Mining, Optimizer, Probe, Protocol,
    StageConfig, TrainConfig, TransferConfig, ROLE_TEACHER,
};
pub use diag::{Diagnostic, Pos, RecipeError};
pub use expand::{Param, SetArg};

/// A parsed and validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub file: String,
    pub name: String,
    /// SHA-256 of the recipe's bytes (provenance only; keys do not depend on it).
    pub source_sha256: String,
    /// Stages in the order of the file.
    pub stages: Vec<StageDecl>,
}

#[derive(Debug, Clone)]
pub struct StageDecl {
    /// Unique in the recipe: the declared name, with `[label=value,…]` for a variant.
    pub name: String,
    /// The name as declared under `stages:`.
    pub base: String,
    /// The declared kind (`self_distill` generations run as `distill` stages).
    pub kind: String,
    pub pos: Pos,
    pub config: StageConfig,
    /// References to other stages: the edges of the DAG.
    pub inputs: Vec<InputRef>,
    /// The swept parameters that made this variant (empty for a plain stage).
    pub params: Vec<Param>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub role: &'static str,
    pub stage: String,
    pub pos: Pos,
}

/// Reads and validates a recipe file.
pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
    load_with(path, &[])
}

/// Reads and validates a recipe file with `--set` overrides applied.
pub fn load_with(path: &Path, sets: &[SetArg]) -> Result<Recipe, RecipeError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        RecipeError::single(
            &file,
            Pos::default(),
            format!("cannot read the recipe: {e}"),
        )
    })?;
    let text = yaml::utf8(bytes).map_err(|d| RecipeError::new(&file, vec![d]))?;
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe".into());
    parse_with(&file, &default_name, &text, sets)
}

/// Parses recipe text; `file` is used in messages and `default_name` when `name:` is absent.
pub fn parse(file: &str, default_name: &str, text: &str) -> Result<Recipe, RecipeError> {
    parse_with(file, default_name, text, &[])
}

/// Parses recipe text with `--set` overrides applied to it first.
pub fn parse_with(
    file: &str,
    default_name: &str,
    text: &str,
    sets: &[SetArg],
) -> Result<Recipe, RecipeError> {
    let sources: Vec<String> = sets.iter().map(|s| format!("--set {}", s.raw)).collect();
    let root = yaml::load(text).map_err(|d| RecipeError::new(file, vec![d]))?;
    let mut p = Parser {
        diags: Vec::new(),
        term_pos: Default::default(),
    };
    let mut root = root;
    if let Some(m) = root.as_mapping_mut() {
        expand::apply_sets(m, sets, &mut p.diags);
    }
    let recipe = p.recipe(&root, file, default_name, text);
    if p.diags.is_empty() {
        Ok(recipe.expect("a recipe without diagnostics is complete"))
    } else {
        Err(RecipeError::with_sources(file, sources, p.diags))
    }
}

/// A topological order that, among the stages that are ready, always takes the one written
/// first in the recipe (Kahn's algorithm with a min-heap), so that plans and progress read
/// in the order the user wrote.
pub(crate) fn file_ordered_topo<E>(graph: &petgraph::graph::DiGraph<usize, E>) -> Vec<usize> {
    use petgraph::graph::NodeIndex;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| {
            graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(|n| Reverse(n.index()))
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(graph[NodeIndex::new(i)]);
        for next in graph.neighbors(NodeIndex::new(i)) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next.index()));
            }
        }
    }
    order
}

use keys::{STAGE_KINDS, TOP_KEYS};

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
pub(crate) const SAMPLER_KINDS: &[&str] = &["random", "class_balanced", "superclass", "pk"];
pub(crate) const MODEL_KEYS: &[&str] = &[
    "kind",
    "hidden",
    "channels",
    "depth",
    "width",
    "embedding",
    "l2norm",
    "classes",
];
pub(crate) const MODEL_KINDS: &[&str] = &["mlp", "convnet", "resnet"];
pub(crate) const OPT_KINDS: &[&str] = &["adam", "sgd"];
pub(crate) const MINING_NAMES: [&str; 5] =
    ["random", "semi_hard", "hard", "all", "distance_weighted"];
pub(crate) const KERNEL_NAMES: [&str; 3] = ["taylor", "gaussian", "bilinear"];

/// A declared data set, before stages refer to it.
struct DataDecl {
    name: String,
    spec: DataSpec,
}

/// What every stage of a recipe may refer to.
struct StageContext<'a> {
    data: &'a [DataDecl],
    recipe_seed: u64,
}

struct Parser {
    diags: Vec<Diagnostic>,
    /// `stages.NAME.loss.TERM` → where to report a problem with the term's output.
    term_pos: std::collections::HashMap<String, Pos>,
}

impl Parser {
    fn err(&mut self, span: &Span, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            pos: span.into(),
            message: message.into(),
        });
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.err(
                node.span(),
                format!("{what}: expected a mapping (`key: value` lines)"),
            );
        }
        m
    }

    /// Reports every key of `m` that is not in `allowed`.
    fn check_keys(&mut self, m: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    key.span(),
                    format!(
                        "{what}: unknown key `{}`{}",
                        key.as_str(),
                        diag::hint(key.as_str(), allowed)
                    ),
                );
            }
        }
    }

    /// `key:` of `m`, which must be one of `allowed` (`default` when absent, or an error
    /// at `at` when there is no default).
    #[allow(clippy::too_many_arguments)]
    fn choice(
        &mut self,
        m: &MarkedMappingNode,
        key: &str,
        at: &Span,
        what: &str,
        noun: &str,
        allowed: &[&str],
        default: Option<&str>,
    ) -> Option<String> {
        let Some(n) = m.get_node(key) else {
            if default.is_none() {
                self.err(
                    at,
                    format!("{what}: missing `{key}:` (one of {})", allowed.join(", ")),
                );
            }
            return default.map(str::to_string);
        };
        let v = self.string(n, &format!("{what}.{key}"))?;
        if allowed.contains(&v.as_str()) {
            Some(v)
        } else {
            self.err(
                n.span(),
                format!(
                    "{what}.{key}: unknown {noun} `{v}`{}",
                    diag::hint(&v, allowed)
                ),
            );
            None
        }
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str, expected: &str) -> Option<&'n str> {
        match node.as_scalar() {
            Some(s) => Some(s.as_str()),
            None => {
                self.err(
                    node.span(),
                    format!("{what}: expected {expected}, found a {}", shape(node)),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.scalar(node, what, "a name")?;
        if s.is_empty() {
            self.err(
                node.span(),
                format!("{what}: expected a name, found nothing"),
            );
            return None;
        }
        Some(s.to_string())
    }

    /// A name value (`name:`), checked like every name ([`keys::check_name`]).
    fn name(&mut self, node: &Node, what: &str, dots: bool) -> Option<String> {
        let s = self.scalar(node, what, "a name")?;
        match keys::check_name(s, dots) {
            Ok(()) => Some(s.to_string()),
            Err(e) => {
                self.err(node.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A declared stage or data set name (a mapping key).
    fn check_name(&mut self, key: &marked_yaml::types::MarkedScalarNode, noun: &str) {
        if let Err(e) = keys::check_name(key.as_str(), false) {
            self.err(key.span(), format!("{noun} {e}"));
        }
    }

    /// A whole number ≥ `min` that fits the type it is read into: `classes: 4294967298` is
    /// an error at its line, never 2 (u32 wrap-around).
    fn uint<T: PrimInt + Unsigned>(&mut self, node: &Node, what: &str, min: u64) -> Option<T> {
        let max = T::max_value().to_u64().unwrap_or(u64::MAX);
        let s = self.scalar(node, what, "a whole number")?;
        let too_large = || format!("{what}: {s} is too large; allowed: {min} to {max}");
        match s.parse::<u64>() {
            Ok(v) if v < min => {
                self.err(
                    node.span(),
                    format!("{what}: must be at least {min}, found {v}"),
                );
                None
            }
            Ok(v) => match T::from(v) {
                Some(t) => Some(t),
                None => {
                    self.err(node.span(), too_large());
                    None
                }
            },
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                self.err(node.span(), too_large());
                None
            }
            Err(_) => {
                self.err(
                    node.span(),
                    format!("{what}: expected a whole number ≥ {min}, found `{s}`"),
                );
                None
            }
        }
    }

    /// `key:` of `m` as [`Parser::uint`], or `default` when absent.
    fn uint_or<T: PrimInt + Unsigned>(
        &mut self,
        m: &MarkedMappingNode,
        key: &str,
        what: &str,
        min: u64,
        default: T,
    ) -> Option<T> {
        match m.get_node(key) {
            Some(n) => self.uint(n, &format!("{what}.{key}"), min),
            None => Some(default),
        }
    }

    /// A finite float in `[min, ∞)` (or `(min, ∞)` when `strict`).
    fn float(&mut self, node: &Node, what: &str, min: f64, strict: bool) -> Option<f64> {
        let s = self.scalar(node, what, "a number")?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && (v > min || (!strict && v == min)) => Some(v),
            Ok(v) => {
                let bound = if strict { ">" } else { "≥" };
                self.err(
                    node.span(),
                    format!("{what}: must be a finite number {bound} {min}, found {v}"),
                );
                None
            }
            Err(_) => {
                self.err(
                    node.span(),
                    format!("{what}: expected a number, found `{s}`"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let s = self.scalar(node, what, "true or false")?;
        match s {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.err(
                    node.span(),
                    format!("{what}: expected true or false, found `{s}`"),
                );
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        node: &Node,
        what: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Some(seq) = node.as_sequence() else {
            self.err(
                node.span(),
                format!(
                    "{what}: expected a list like [1, 2], found a {}",
                    shape(node)
                ),
            );
            return None;
        };
        let mut out = Vec::with_capacity(seq.len());
        let mut ok = true;
        for (i, n) in seq.iter().enumerate() {
            match item(self, n, &format!("{what}[{i}]")) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn recipe(
        &mut self,
        root: &Node,
        file: &str,
        default_name: &str,
        text: &str,
    ) -> Option<Recipe> {
        let top = self.mapping(root, "recipe")?;
        self.check_keys(top, TOP_KEYS, "recipe");
        let name = match top.get_node("name") {
            Some(n) => self.name(n, "name", true),
            None => match keys::check_name(default_name, true) {
                Ok(()) => Some(default_name.to_string()),
                Err(e) => {
                    // No line to point at: the name comes from the file's name.
                    self.diags.push(Diagnostic {
                        pos: Pos::default(),
                        message: format!("the recipe is named after its file, but {e}; add a `name:` line or rename the file"),
                    });
                    None
                }
            },
        };
        let seed = match top.get_node("seed") {
            Some(n) => self.uint::<u64>(n, "seed", 0),
            None => Some(0),
        };
        if let Some(n) = top.get_node("description") {
            self.scalar(n, "description", "text");
        }
        let data = match top.get_node("data") {
            Some(n) => self.data_sets(n),
            None => {
                self.err(
                    root.span(),
                    "recipe: missing `data:` (the named data sets stages train and evaluate on)",
                );
                Vec::new()
            }
        };
        let stages = match top.get_node("stages") {
            Some(n) => self.stages(n, top.get_node("defaults"), &data, seed.unwrap_or(0)),
            None => {
                self.err(
                    root.span(),
                    "recipe: missing `stages:` (the named stages to run)",
                );
                Vec::new()
            }
        };
        Some(Recipe {
            file: file.to_string(),
            name: name?,
            source_sha256: hex(&Sha256::digest(text.as_bytes())),
            stages,
        })
    }

    fn data_sets(&mut self, node: &Node) -> Vec<DataDecl> {
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

    fn data_set(&mut self, node: &Node, at: &Span, what: &str) -> Option<DataSpec> {
        let m = self.mapping(node, what)?;
        self.check_keys(m, DATA_KEYS, what);
        let kind = self.choice(m, "kind", at, what, "data set kind", DATA_KINDS, None)?;
        // Keys that belong to other kinds of data set.
        let own: &[&str] = match kind.as_str() {
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
        let path_of = |p: &mut Self, key: &str| -> Option<PathBuf> {
            match m.get_node(key) {
                Some(n) => p.string(n, &format!("{what}.{key}")).map(PathBuf::from),
                None => {
                    p.err(
                        at,
                        format!("{what}: missing `{key}:` (path of an IDX file)"),
                    );
                    None
                }
            }
        };
        let (source, n_classes) = match kind.as_str() {
            "fashion-mnist" => {
                let path = match m.get_node("path") {
                    Some(n) => PathBuf::from(self.string(n, &format!("{what}.path"))?),
                    None => PathBuf::from(DEBIAN_FASHION_MNIST),
                };
                (DataSource::FashionMnist { path }, Some(10))
            }
            "cifar10" | "cifar100" => {
                let Some(n) = m.get_node("path") else {
                    self.err(
                        at,
                        format!("{what}: missing `path:` (the directory of the CIFAR binary version, e.g. cifar-10-batches-bin)"),
                    );
                    return None;
                };
                let path = PathBuf::from(self.string(n, &format!("{what}.path"))?);
                let source = if kind == "cifar10" {
                    DataSource::Cifar10 { path }
                } else {
                    let labels = self.choice(
                        m,
                        "labels",
                        at,
                        what,
                        "label set",
                        &["fine", "coarse"],
                        Some("fine"),
                    )?;
                    DataSource::Cifar100 {
                        path,
                        labels: if labels == "fine" {
                            CifarLabels::Fine
                        } else {
                            CifarLabels::Coarse
                        },
                    }
                };
                let n_classes = source.n_classes();
                (source, n_classes)
            }
            "idx" => (
                DataSource::Idx {
                    train_images: path_of(self, "train_images")?,
                    train_labels: path_of(self, "train_labels")?,
                    test_images: path_of(self, "test_images")?,
                    test_labels: path_of(self, "test_labels")?,
                },
                None,
            ),
            _ => {
                let classes = self.uint_or(m, "classes", what, 2, 10u32);
                let dim = self.uint_or(m, "dim", what, 1, 32usize);
                let train_per_class = self.uint_or(m, "train_per_class", what, 1, 100usize);
                let test_per_class = self.uint_or(m, "test_per_class", what, 1, 50usize);
                let seed = self.uint_or(m, "seed", what, 0, 0u64);
                let (classes, dim) = (classes?, dim?);
                let (train_per_class, test_per_class) = (train_per_class?, test_per_class?);
                // The stage generates classes × samples × dim floats: a size past the bound
                // (or past any number) is refused here, not as a panic or an out-of-memory
                // kill inside the stage.
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
                (
                    DataSource::Synthetic {
                        classes,
                        dim,
                        train_per_class,
                        test_per_class,
                        seed: seed?,
                    },
                    Some(classes),
                )
            }
        };
        self.check_files(m, at, what, &source);
        let classes_of = |p: &mut Self, key: &str, default: Option<Vec<u32>>| -> Option<Vec<u32>> {
            match m.get_node(key) {
                Some(n) => {
                    let v = p.list(n, &format!("{what}.{key}"), |p, n, w| {
                        p.uint::<u32>(n, w, 0)
                    })?;
                    // `eval_classes: []` declares a data set for the classification
                    // protocol only (no unseen classes); training needs classes.
                    if v.is_empty() && key == "train_classes" {
                        p.err(n.span(), format!("{what}.{key}: list at least one class"));
                        return None;
                    }
                    if let Some(bad) = n_classes.and_then(|nc| v.iter().find(|&&c| c >= nc)) {
                        p.err(
                            n.span(),
                            format!(
                                "{what}.{key}: class {bad} does not exist (classes are 0..{})",
                                n_classes.unwrap() - 1
                            ),
                        );
                        return None;
                    }
                    Some(v)
                }
                None => match default {
                    Some(d) => Some(d),
                    None => {
                        p.err(
                            at,
                            format!("{what}: missing `{key}:` (a list of class labels)"),
                        );
                        None
                    }
                },
            }
        };
        // Default protocol: train on the first half of the classes, evaluate on the rest.
        let halves = n_classes.map(|nc| {
            (
                (0..nc / 2).collect::<Vec<_>>(),
                (nc / 2..nc).collect::<Vec<_>>(),
            )
        });
        let train_classes = classes_of(self, "train_classes", halves.as_ref().map(|h| h.0.clone()));
        let eval_classes = classes_of(self, "eval_classes", halves.map(|h| h.1));
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
        let limit = |p: &mut Self, key: &str| -> Option<Option<usize>> {
            match m.get_node(key) {
                Some(n) => p.uint(n, &format!("{what}.{key}"), 2).map(Some),
                None => Some(None),
            }
        };
        let train_limit = limit(self, "train_limit");
        let eval_limit = limit(self, "eval_limit");
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

    /// Files must be there now, not halfway through a sweep, and be files that can be read:
    /// `plan` fingerprints them, and a directory or a pipe would fail (or hang) it with no
    /// position in the recipe. Each problem is reported at the key that names the file.
    fn check_files(&mut self, m: &MarkedMappingNode, at: &Span, what: &str, source: &DataSource) {
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
    fn transform(&mut self, node: &Node, what: &str, source: &DataSource) -> Option<Transform> {
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

    fn stages(
        &mut self,
        node: &Node,
        defaults: Option<&Node>,
        data: &[DataDecl],
        seed: u64,
    ) -> Vec<StageDecl> {
        let Some(m) = self.mapping(node, "stages") else {
            return Vec::new();
        };
        if m.is_empty() {
            self.err(node.span(), "stages: declare at least one stage");
        }
        for k in m.keys() {
            self.check_name(k, "stage");
        }
        let defaults = defaults.and_then(|d| {
            let dm = self.mapping(d, "defaults")?;
            self.check_keys(dm, &keys::default_keys(), "defaults");
            Some(dm)
        });
        let expanded = expand::Expander {
            diags: &mut self.diags,
        }
        .expand(m, defaults);
        let ctx = StageContext {
            data,
            recipe_seed: seed,
        };
        let mut out = Vec::with_capacity(expanded.len());
        for e in expanded {
            let what = format!("stages.{}", e.name);
            let at = *m
                .keys()
                .find(|k| k.as_str() == e.base)
                .map(|k| k.span())
                .expect("expanded from a declared stage");
            if let Some((kind, config)) = self.stage(&e.node, &at, &what, &ctx) {
                out.push(StageDecl {
                    name: e.name,
                    base: e.base,
                    kind,
                    pos: e.pos,
                    config,
                    inputs: e.inputs,
                    params: e.params,
                });
            }
        }
        self.check_outputs(&out);
        out
    }

    /// Checks that every loss term acts on an output both of its models have: this needs the
    /// teacher's model, so it runs once every stage is parsed.
    fn check_outputs(&mut self, stages: &[StageDecl]) {
        // By name through a map: a linear search per stage made long chains quadratic.
        let by_name: std::collections::HashMap<&str, &StageDecl> =
            stages.iter().map(|s| (s.name.as_str(), s)).collect();
        let model_of = |name: &str| {
            by_name
                .get(name)
                .and_then(|s| s.config.training().map(|c| &c.model))
        };
        for s in stages {
            let (StageConfig::Train(cfg) | StageConfig::Distill(cfg)) = &s.config else {
                continue;
            };
            let teacher = s
                .inputs
                .iter()
                .find(|r| r.role == ROLE_TEACHER)
                .and_then(|r| model_of(&r.stage).map(|m| (r.stage.as_str(), m)));
            for term in &cfg.loss {
                let what = format!("stages.{}.loss.{}", s.name, term.name());
                let pos = self.term_pos.get(&what).copied().unwrap_or(s.pos);
                let mut problems = Vec::new();
                let explain = |tap: Tap, model: &crate::ml::model::ModelSpec| match tap {
                    Tap::Logits => "give it `classes: N` for a classifier head".to_string(),
                    Tap::Hidden(_) => match model.hidden_taps() {
                        0 => "it has no hidden layer".to_string(),
                        1 => "it has one hidden layer, hidden1".to_string(),
                        h => format!("its hidden layers are hidden1..hidden{h}"),
                    },
                    Tap::Embedding => String::new(),
                };
                let student_dim = cfg.model.tap_dim(term.on);
                if student_dim.is_none() {
                    problems.push(format!(
                        "{what}: the model of `{}` has no `{}` output ({})",
                        s.name,
                        term.on,
                        explain(term.on, &cfg.model)
                    ));
                }
                if let (true, Some((tname, tmodel))) = (term.loss.needs_teacher(), teacher) {
                    let teacher_dim = tmodel.tap_dim(term.on);
                    match teacher_dim {
                        None => problems.push(format!(
                            "{what}: the teacher `{tname}` has no `{}` output ({})",
                            term.on,
                            explain(term.on, tmodel)
                        )),
                        Some(td) if matches!(term.loss, Loss::Kd { .. }) && student_dim.is_some_and(|sd| sd != td) => {
                            problems.push(format!(
                                "{what}: the student has {} classes and the teacher `{tname}` {td}; KD compares class distributions of the same size",
                                student_dim.unwrap_or(0)
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if matches!(term.loss, Loss::Ce) {
                    let n = cfg.data.train_classes.len();
                    if student_dim.is_some_and(|c| c != n) {
                        problems.push(format!(
                            "{what}: the model has {} classes but the data set trains on {n} (`classes: {n}`)",
                            student_dim.unwrap_or(0)
                        ));
                    }
                }
                for message in problems {
                    self.diags.push(Diagnostic { pos, message });
                }
            }
        }
    }

    /// One stage as it runs (references already resolved by the expansion).
    fn stage(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        ctx: &StageContext,
    ) -> Option<(String, StageConfig)> {
        let kind = self.choice(m, "kind", at, what, "stage kind", STAGE_KINDS, None)?;
        let allowed = keys::stage_keys(&kind).expect("checked by choice");
        self.check_keys(m, allowed, &format!("{what} ({kind})"));
        if let Some(n) = m.get_node("description") {
            self.scalar(n, &format!("{what}.description"), "text");
        }
        for &role in keys::reference_keys(&kind) {
            if m.get_node(role).is_none() {
                let purpose = if role == "teacher" {
                    "the stage whose model teaches this one"
                } else {
                    "the stage whose model is evaluated"
                };
                self.err(at, format!("{what}: missing `{role}:` ({purpose})"));
            }
        }
        if kind == "transfer" && m.get_node("data").is_none() {
            self.err(
                at,
                format!(
                    "{what}: missing `data:` (the data set or domain the model is transferred to)"
                ),
            );
            return None;
        }
        let data_spec = self.data_ref(m, at, what, ctx.data);
        let recall_at = |p: &mut Self| match m.get_node("recall_at") {
            Some(n) => p.list(n, &format!("{what}.recall_at"), |p, n, w| {
                p.uint::<usize>(n, w, 1)
            }),
            None => Some(vec![1, 2, 4, 8]),
        };
        let unseen_needed = match kind.as_str() {
            "evaluate" => m
                .get_scalar("protocol")
                .is_none_or(|p| p.as_str() == "metric"),
            "transfer" => true,
            _ => false,
        };
        if let (true, Some(d)) = (unseen_needed, &data_spec) {
            if d.eval_classes.is_empty() {
                let at = m.get_node("data").map_or(at, |n| n.span());
                self.err(
                    at,
                    format!("{what}: its data set has no `eval_classes`, so there are no unseen classes to retrieve; use `protocol: classification` or give the data set eval_classes"),
                );
            }
        }
        let config = match kind.as_str() {
            "evaluate" => {
                let protocol = self.choice(
                    m,
                    "protocol",
                    at,
                    what,
                    "protocol",
                    &["metric", "classification"],
                    Some("metric"),
                );
                let nmi = match m.get_node("nmi") {
                    Some(n) => self.boolean(n, &format!("{what}.nmi")),
                    None => Some(true),
                };
                let few_shot = match m.get_node("few_shot") {
                    Some(n) => self.few_shot(n, &format!("{what}.few_shot")).map(Some),
                    None => Some(None),
                };
                let protocol = match protocol?.as_str() {
                    "classification" => Protocol::Classification,
                    _ => Protocol::Metric,
                };
                if protocol == Protocol::Classification {
                    for key in ["recall_at", "nmi", "few_shot"] {
                        if let Some(n) = m.get_node(key) {
                            self.err(n.span(), format!("{what}.{key}: applies to the metric protocol, not to classification"));
                        }
                    }
                }
                StageConfig::Evaluate(EvalConfig {
                    recall_at: recall_at(self)?,
                    nmi: nmi?,
                    few_shot: few_shot?,
                    protocol,
                    data: data_spec?,
                })
            }
            "transfer" => {
                let probe = match m.get_node("probe") {
                    Some(n) => self.probe(n, &format!("{what}.probe")).map(Some),
                    None => Some(None),
                };
                StageConfig::Transfer(TransferConfig {
                    recall_at: recall_at(self)?,
                    probe: probe?,
                    data: data_spec?,
                })
            }
            _ => {
                let distill = kind != "train";
                let seed = stage_seed(m, self, what, ctx.recipe_seed);
                let cfg = self.train_config(m, at, what, data_spec, seed, distill);
                if distill {
                    StageConfig::Distill(cfg?)
                } else {
                    StageConfig::Train(cfg?)
                }
            }
        };
        Some((kind, config))
    }

    fn data_ref(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        data: &[DataDecl],
    ) -> Option<DataSpec> {
        let names: Vec<&str> = data.iter().map(|d| d.name.as_str()).collect();
        match m.get_node("data") {
            Some(n) => {
                let target = self.string(n, &format!("{what}.data"))?;
                match data.iter().find(|d| d.name == target) {
                    Some(d) => Some(d.spec.clone()),
                    None => {
                        self.err(
                            n.span(),
                            format!(
                                "{what}.data: no data set named `{target}`{}",
                                diag::hint(&target, &names)
                            ),
                        );
                        None
                    }
                }
            }
            None if data.len() == 1 => Some(data[0].spec.clone()),
            None => {
                if !data.is_empty() {
                    self.err(
                        at,
                        format!("{what}: missing `data:` (one of {})", names.join(", ")),
                    );
                }
                None
            }
        }
    }

    fn train_config(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        data: Option<DataSpec>,
        seed: Option<u64>,
        distill: bool,
    ) -> Option<TrainConfig> {
        let model = match m.get_node("model") {
            Some(n) => self.model(
                n,
                &format!("{what}.model"),
                data.as_ref().and_then(|d| d.source.shape()),
            ),
            None => {
                self.err(at, format!("{what}: missing `model:` (e.g. {{kind: mlp, hidden: [256], embedding: 64}})"));
                None
            }
        };
        let loss = match m.get_node("loss") {
            Some(n) => self.loss(n, &format!("{what}.loss"), distill),
            None => {
                self.err(at, format!("{what}: missing `loss:` (e.g. {{rkd_d: 1.0, rkd_a: 2.0}} or {{triplet: 1.0}})"));
                None
            }
        };
        let optimizer = match m.get_node("optimizer") {
            Some(n) => self.optimizer(n, &format!("{what}.optimizer")),
            None => Some(Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            }),
        };
        let epochs = self.uint_or(m, "epochs", what, 0, 10usize);
        let batch_node = m.get_node("batch_size");
        let batch_size = self.uint_or(m, "batch_size", what, 3, 128usize);
        let n_train_classes = data.as_ref().map(|d| d.train_classes.len());
        let sampler = match (m.get_node("sampler"), batch_size) {
            (Some(n), Some(bs)) => self.sampler(
                n,
                &format!("{what}.sampler"),
                bs,
                batch_node.is_some(),
                n_train_classes,
                distill,
            ),
            (None, _) => Some(SamplerSpec::Random),
            (Some(_), None) => None,
        };
        let sampler = sampler?;
        Some(TrainConfig {
            data: data?,
            model: model?,
            loss: loss?,
            optimizer: optimizer?,
            epochs: epochs?,
            batch_size: sampler.batch_size(batch_size?),
            seed: seed?,
            sampler,
        })
    }

    /// `sampler: random`, or `{kind: class_balanced, classes_per_batch: K, per_class: N}`,
    /// `{kind: superclass, clusters: C, classes_per_batch: K, per_class: N}`, `{kind: pk, p, k}`.
    /// A balanced batch is K groups × N samples; N defaults to `batch_size / K`, and an
    /// explicit `batch_size` must agree with K × N.
    fn sampler(
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

    /// A model, checked against the shape of the data it will see when that is known
    /// without reading files (a ResNet cannot halve a 1×1 "image" of synthetic features).
    fn model(
        &mut self,
        node: &Node,
        what: &str,
        input: Option<(usize, usize, usize)>,
    ) -> Option<ModelSpec> {
        let m = self.mapping(node, what)?;
        let kind = self.choice(
            m,
            "kind",
            node.span(),
            what,
            "model",
            MODEL_KINDS,
            Some("mlp"),
        )?;
        let own: &[&str] = match kind.as_str() {
            "mlp" => &["hidden"],
            "convnet" => &["channels"],
            _ => &["depth", "width"],
        };
        let allowed: Vec<&str> = ["kind", "embedding", "l2norm", "classes"]
            .iter()
            .chain(own)
            .copied()
            .collect();
        self.check_keys(m, &allowed, &format!("{what} ({kind})"));
        let widths = |p: &mut Self, key: &str, default: Vec<usize>| match m.get_node(key) {
            Some(n) => p.list(n, &format!("{what}.{key}"), |p, n, w| {
                p.uint::<usize>(n, w, 1)
            }),
            None => Some(default),
        };
        let embedding = self.uint_or(m, "embedding", what, 1, 128usize);
        let l2norm = match m.get_node("l2norm") {
            Some(n) => self.boolean(n, &format!("{what}.l2norm")),
            None => Some(false),
        };
        let classes = match m.get_node("classes") {
            Some(n) => self.uint(n, &format!("{what}.classes"), 2).map(Some),
            None => Some(None),
        };
        let spec = match kind.as_str() {
            "mlp" => {
                let hidden = widths(self, "hidden", vec![256]);
                ModelSpec::Mlp {
                    hidden: hidden?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
            "convnet" => {
                let channels = widths(self, "channels", vec![32, 64]);
                ModelSpec::Convnet {
                    channels: channels?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
            _ => {
                let depth = match m.get_node("depth") {
                    Some(n) => self.uint(n, &format!("{what}.depth"), 1),
                    None => {
                        self.err(
                            node.span(),
                            format!("{what}: missing `depth:` (6n+2: 8, 14, 20, 32, …)"),
                        );
                        None
                    }
                };
                let width = self.uint_or(m, "width", what, 1, 16usize);
                ModelSpec::Resnet {
                    depth: depth?,
                    width: width?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
        };
        if let Err(e) = spec.validate() {
            let at = m.get_node("depth").map_or(node.span(), |n| n.span());
            self.err(at, format!("{what}: {e}"));
            return None;
        }
        if let Some((c, h, w)) = input {
            let shape = InputShape {
                channels: c,
                height: h,
                width: w,
            };
            if let Err(e) = crate::ml::model::check_input(&spec, shape) {
                self.err(node.span(), format!("{what}: {e}"));
                return None;
            }
        }
        Some(spec)
    }

    fn loss(&mut self, node: &Node, what: &str, distill: bool) -> Option<Vec<LossTerm>> {
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
    fn term(&mut self, name: &str, node: &Node, at: &Span, what: &str) -> Option<LossTerm> {
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

    /// `few_shot: {ways: 5, shots: 1, queries: 15, episodes: 600}` (those are the defaults).
    fn few_shot(&mut self, node: &Node, what: &str) -> Option<FewShotSpec> {
        let m = self.mapping(node, what)?;
        self.check_keys(m, &["ways", "shots", "queries", "episodes"], what);
        let ways = self.uint_or(m, "ways", what, 2, 5usize);
        let shots = self.uint_or(m, "shots", what, 1, 1usize);
        let queries = self.uint_or(m, "queries", what, 1, 15usize);
        let episodes = self.uint_or(m, "episodes", what, 1, 600usize);
        Some(FewShotSpec {
            ways: ways?,
            shots: shots?,
            queries: queries?,
            episodes: episodes?,
        })
    }

    /// `probe: true` (the defaults) or `probe: {epochs, lr, batch_size}`.
    fn probe(&mut self, node: &Node, what: &str) -> Option<Probe> {
        let defaults = Probe {
            epochs: 20,
            lr: 0.01,
            batch_size: 256,
        };
        if node.as_scalar().is_some() {
            return match self.boolean(node, what)? {
                true => Some(defaults),
                false => {
                    self.err(
                        node.span(),
                        format!("{what}: leave `probe:` out to skip the linear probe"),
                    );
                    None
                }
            };
        }
        let m = self.mapping(node, what)?;
        self.check_keys(m, &["epochs", "lr", "batch_size"], what);
        let epochs = self.uint_or(m, "epochs", what, 1, defaults.epochs);
        let lr = match m.get_node("lr") {
            Some(n) => self.float(n, &format!("{what}.lr"), 0.0, true),
            None => Some(defaults.lr),
        };
        let batch_size = self.uint_or(m, "batch_size", what, 1, defaults.batch_size);
        Some(Probe {
            epochs: epochs?,
            lr: lr?,
            batch_size: batch_size?,
        })
    }

    fn optimizer(&mut self, node: &Node, what: &str) -> Option<Optimizer> {
        let m = self.mapping(node, what)?;
        let kind = self.choice(
            m,
            "kind",
            node.span(),
            what,
            "optimizer",
            OPT_KINDS,
            Some("adam"),
        )?;
        let allowed: &[&str] = if kind == "adam" {
            &["kind", "lr", "weight_decay"]
        } else {
            &["kind", "lr"]
        };
        self.check_keys(m, allowed, &format!("{what} ({kind})"));
        let lr = match m.get_node("lr") {
            Some(n) => self.float(n, &format!("{what}.lr"), 0.0, true),
            None => Some(if kind == "adam" { 1e-3 } else { 0.01 }),
        };
        if kind == "adam" {
            let weight_decay = match m.get_node("weight_decay") {
                Some(n) => self.float(n, &format!("{what}.weight_decay"), 0.0, false),
                None => Some(0.0),
            };
            Some(Optimizer::Adam {
                lr: lr?,
                weight_decay: weight_decay?,
            })
        } else {
            Some(Optimizer::Sgd { lr: lr? })
        }
    }
}

/// The stage's `seed:`, defaulting to the recipe's.
fn stage_seed(m: &MarkedMappingNode, p: &mut Parser, what: &str, recipe_seed: u64) -> Option<u64> {
    p.uint_or(m, "seed", what, 0, recipe_seed)
}

fn shape(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "single value",
        Node::Mapping(_) => "mapping",
        Node::Sequence(_) => "list",
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod expand_tests;
