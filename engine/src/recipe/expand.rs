//! From the recipe as written to the stages that run: `--set` overrides, `defaults:`,
//! `matrix:` sweeps, `self_distill` generations, and the fan-out of every stage that uses a
//! swept one. All of it works on the YAML tree, so a value keeps the position where it was
//! written (in the recipe, or in a `--set` argument) and a problem with it is reported there.
//!
//! A stage that refers to a swept stage runs once per variant of it; a stage that refers to
//! several swept stages runs once per *compatible* combination of their variants (variants
//! that agree on every parameter they share, e.g. the same teacher seed), so `compare` stages
//! over a shared sweep do not multiply.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::rc::Rc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::diag::{self, Diagnostic, Pos};
use super::keys;
use super::InputRef;

/// One `--set PATH=VALUE` of the command line.
#[derive(Debug, Clone)]
pub struct SetArg {
    /// As the user typed it, for messages.
    pub raw: String,
    pub path: Vec<String>,
    pub value: Node,
}

impl SetArg {
    /// Parses `PATH=VALUE`; the value is YAML (`3`, `0.5`, `[1, 2]`, `{kind: sgd}`).
    /// `source` numbers the argument so that positions inside it are told apart.
    pub fn parse(raw: &str, source: usize) -> Result<SetArg, String> {
        let Some((path, value)) = raw.split_once('=') else {
            return Err(format!(
                "--set {raw}: expected PATH=VALUE, e.g. --set stages.teacher.epochs=2"
            ));
        };
        let path: Vec<String> = split_path(path.trim());
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(format!(
                "--set {raw}: the path before `=` is empty or has an empty part"
            ));
        }
        let doc = marked_yaml::parse_yaml(source, format!("v: {value}"))
            .map_err(|e| format!("--set {raw}: the value is not valid YAML ({e})"))?;
        let value = doc
            .as_mapping()
            .and_then(|m| m.get_node("v"))
            .cloned()
            .unwrap_or_else(|| Node::from(MarkedScalarNode::new(Span::new_blank(), "")));
        Ok(SetArg {
            raw: raw.to_string(),
            path,
            value,
        })
    }
}

/// Splits a dotted path; once it reaches a `matrix`, the rest is one key (matrix keys are
/// dotted paths themselves).
fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some((head, tail)) = rest.split_once('.') {
        out.push(head.to_string());
        rest = tail;
        if head == "matrix" {
            break;
        }
    }
    out.push(rest.to_string());
    out
}

/// A stage as it will run.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// Unique: the declared name, plus `[label=value,…]` for a variant.
    pub name: String,
    /// The name under `stages:`.
    pub base: String,
    /// Where the declared name is.
    pub pos: Pos,
    /// The stage's mapping with defaults, matrix values and the generation applied (built
    /// when first read: see [`VariantNode`]).
    pub node: VariantNode,
    pub params: Vec<Param>,
    /// References, resolved to expanded names.
    pub inputs: Vec<InputRef>,
}

/// One swept parameter of a variant: `label=value`, from stage `origin`'s matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub origin: String,
    /// The dotted path that was set (`loss.cc.p`, `seed`, `gen`).
    pub path: String,
    /// The short name used in the stage's name (`p`, `seed`, `gen`).
    pub label: String,
    pub value: String,
    /// Whether it appears in the stage's name: not when it comes from a reference to one
    /// exact variant (`model: "born[gen=3]"`), which does not fan out.
    pub named: bool,
}

/// A variant's mapping: its declared stage's (with `defaults:`, without `matrix:`), with the
/// variant's matrix values set and, for a self-distilled generation, its teacher's `model:`.
/// Built when first read, by deref: the expander checks each variant as it makes it, but the
/// parser reads the variants one at a time, so holding every variant's mapping at once (a few
/// KB each) would be most of the memory of a large sweep. The stages of a sweep share one
/// template and one expanded matrix.
#[derive(Debug, Clone)]
pub struct VariantNode {
    template: Rc<MarkedMappingNode>,
    matrix: Rc<Matrix>,
    /// Index into `matrix.combos`.
    combo: usize,
    model: Option<Rc<Node>>,
    built: OnceCell<MarkedMappingNode>,
}

impl VariantNode {
    fn build(&self) -> MarkedMappingNode {
        let mut node = (*self.template).clone();
        let mut unreported = Vec::new();
        for &c in self.matrix.combos[self.combo].iter() {
            let c = &self.matrix.choices[c];
            // Problems were reported when the variant was checked.
            set_path(&mut node, &c.path, c.value.clone(), "", &mut unreported);
        }
        if let Some(model) = &self.model {
            let key = MarkedScalarNode::new(*model.span(), "model");
            node.insert(key, (**model).clone());
        }
        node
    }

    /// One key's value, without keeping the mapping built for it.
    fn get_node(&self, key: &str) -> Option<Node> {
        match self.built.get() {
            Some(node) => node.get_node(key).cloned(),
            None => self.build().get_node(key).cloned(),
        }
    }
}

impl std::ops::Deref for VariantNode {
    type Target = MarkedMappingNode;

    fn deref(&self) -> &MarkedMappingNode {
        self.built.get_or_init(|| self.build())
    }
}

pub struct Expander<'d> {
    pub diags: &'d mut Vec<Diagnostic>,
}

fn err(diags: &mut Vec<Diagnostic>, span: &Span, message: impl Into<String>) {
    diags.push(Diagnostic {
        pos: span.into(),
        message: message.into(),
    });
}

/// Applies `--set` arguments to the recipe tree, in order.
pub fn apply_sets(root: &mut MarkedMappingNode, sets: &[SetArg], diags: &mut Vec<Diagnostic>) {
    for set in sets {
        let span = set.value.span().to_owned();
        // Messages are printed after `--set PATH=VALUE:` already.
        let what = "";
        let first = set.path[0].as_str();
        if !keys::TOP_KEYS.contains(&first) {
            err(
                diags,
                &span,
                format!(
                    "unknown top-level key `{first}`{}",
                    diag::hint(first, keys::TOP_KEYS)
                ),
            );
            continue;
        }
        // `stages.NAME` and `data.NAME` must exist (a typo must not create a new stage);
        // `stages.*.KEY` sets KEY on every stage whose kind accepts it.
        if matches!(first, "stages" | "data") && set.path.len() >= 3 {
            let Some(group) = root.get_mut(first).and_then(Node::as_mapping_mut) else {
                err(diags, &span, format!("the recipe has no `{first}:`"));
                continue;
            };
            let name = set.path[1].as_str();
            let rest = &set.path[2..];
            if name == "*" {
                let mut hits = 0;
                for (_, v) in group.iter_mut() {
                    let Some(m) = v.as_mapping_mut() else {
                        continue;
                    };
                    let accepts = first == "data"
                        || m.get_scalar("kind")
                            .and_then(|k| keys::stage_keys(k.as_str()))
                            .is_some_and(|ks| ks.contains(&rest[0].as_str()));
                    if accepts {
                        set_path(m, rest, set.value.clone(), what, diags);
                        hits += 1;
                    }
                }
                if hits == 0 {
                    err(
                        diags,
                        &span,
                        format!("no entry of `{first}:` accepts `{}`", rest[0]),
                    );
                }
                continue;
            }
            let names: Vec<String> = group.keys().map(|k| k.as_str().to_string()).collect();
            match group.get_mut(name).and_then(Node::as_mapping_mut) {
                Some(m) => set_path(m, rest, set.value.clone(), what, diags),
                None => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    err(
                        diags,
                        &span,
                        format!(
                            "no entry `{name}` under `{first}:`{}",
                            diag::hint(name, &names)
                        ),
                    );
                }
            }
            continue;
        }
        set_path(root, &set.path, set.value.clone(), what, diags);
    }
}

/// Sets `path` (relative to `m`) to `value`, creating mappings on the way. A loss term
/// written as a bare weight (`cc: 1.0`) becomes `{weight: 1.0}` when one of its options is
/// set, so that `loss.cc.p` can be swept whichever way the term was written.
fn set_path(
    m: &mut MarkedMappingNode,
    path: &[String],
    value: Node,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) {
    set_path_in(m, path, value, what, diags, false)
}

fn set_path_in(
    m: &mut MarkedMappingNode,
    path: &[String],
    value: Node,
    what: &str,
    diags: &mut Vec<Diagnostic>,
    in_loss: bool,
) {
    let key = path[0].as_str();
    if path.len() == 1 {
        let k = match m.keys().find(|k| k.as_str() == key) {
            Some(existing) => existing.clone(),
            None => MarkedScalarNode::new(value.span().to_owned(), key),
        };
        m.insert(k, value);
        return;
    }
    if !m.contains_key(key) {
        let span = value.span().to_owned();
        m.insert(
            MarkedScalarNode::new(span, key),
            Node::from(MarkedMappingNode::new_empty(span)),
        );
    }
    let child = m.get_mut(key).expect("inserted above");
    if in_loss {
        if let Node::Scalar(weight) = child {
            let span = *weight.span();
            let mut promoted = MarkedMappingNode::new_empty(span);
            promoted.insert(
                MarkedScalarNode::new(span, "weight"),
                Node::Scalar(weight.clone()),
            );
            *child = Node::from(promoted);
        }
    }
    match child.as_mapping_mut() {
        Some(cm) => set_path_in(cm, &path[1..], value, what, diags, key == "loss"),
        None => err(
            diags,
            &value.span().to_owned(),
            format!(
                "{what}{}`{key}` holds a single value or a list, so `{}` cannot be set inside it",
                if what.is_empty() { "" } else { ": " },
                path[1..].join(".")
            ),
        ),
    }
}

fn get_path<'n>(m: &'n MarkedMappingNode, path: &[String]) -> Option<&'n Node> {
    let n = m.get_node(&path[0])?;
    match path.len() {
        1 => Some(n),
        _ => get_path(n.as_mapping()?, &path[1..]),
    }
}

/// Merges `defaults:` into a stage's mapping: absent keys are inherited; present ones win,
/// except the mappings of [`keys::MERGED_MAPPINGS`], merged key by key when their kinds agree.
fn merge_defaults(stage: &mut MarkedMappingNode, defaults: &MarkedMappingNode, kind: &str) {
    for (k, dv) in defaults.iter() {
        if !keys::default_applies(k.as_str(), kind) {
            continue;
        }
        match stage.get_mut(k.as_str()) {
            None => {
                stage.insert(k.clone(), dv.clone());
            }
            Some(sv) if keys::MERGED_MAPPINGS.contains(&k.as_str()) => {
                let (Some(sm), Some(dm)) = (sv.as_mapping_mut(), dv.as_mapping()) else {
                    continue;
                };
                let kind_of =
                    |m: &MarkedMappingNode| m.get_scalar("kind").map(|s| s.as_str().to_string());
                let same_kind = match (kind_of(sm), kind_of(dm)) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                if same_kind {
                    for (dk, dvv) in dm.iter() {
                        if !sm.contains_key(dk.as_str()) {
                            sm.insert(dk.clone(), dvv.clone());
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// The default of `--max-stages`: the most stages one recipe may expand to. It bounds the
/// planner's time and memory (a few KB and tens of µs a stage), so that a matrix of 10^6
/// combinations or `generations: 1000000000000` is refused at its line instead of
/// exhausting memory; far more than a sweep that can actually be run.
pub const DEFAULT_MAX_STAGES: usize = 100_000;

thread_local! {
    static MAX_STAGES: Cell<usize> = const { Cell::new(DEFAULT_MAX_STAGES) };
}

/// Sets the limit on stages per recipe (the CLI's `--max-stages`) for recipes loaded on this
/// thread. A setting rather than a parameter, like the flag it comes from, so that every way
/// of loading a recipe enforces the same limit without threading it through the loader; per
/// thread, so that a test that lowers it does not change the others'.
pub fn set_max_stages(n: usize) {
    MAX_STAGES.with(|m| m.set(n));
}

/// The limit on stages per recipe now in force (see [`set_max_stages`]).
pub fn max_stages() -> usize {
    MAX_STAGES.with(Cell::get)
}

/// The hint that ends every message about the limit.
fn raise_hint(max: usize) -> String {
    format!("the limit is {max} stages per recipe; `--max-stages N` raises it")
}

/// One axis of a matrix.
struct Axis {
    /// How each value appears in stage names.
    shown: Vec<String>,
    path: Vec<String>,
    label: String,
    values: Vec<Node>,
}

/// One swept value of a matrix: the path it sets, its label, the value, and how the value
/// appears in stage names.
#[derive(Debug)]
struct Choice {
    path: Vec<String>,
    label: String,
    value: Node,
    shown: String,
}

/// A stage's matrix, expanded: every value once, and each combination as indices into
/// `choices` (one per swept key), so that a combination of a large sweep costs a few bytes
/// rather than a copy of its values.
#[derive(Debug)]
struct Matrix {
    choices: Vec<Choice>,
    combos: Vec<Box<[usize]>>,
}

impl Matrix {
    /// A stage without a matrix: one combination that sets nothing.
    fn single() -> Matrix {
        Matrix {
            choices: Vec::new(),
            combos: vec![Box::new([])],
        }
    }
}

/// How a value appears in a stage name: a scalar as written; a mapping by its keys
/// (`loss=rkd_d+rkd_a` for a mix); anything else by its 1-based position in the list
/// (`model=#2`).
fn value_label(node: &Node, index: usize) -> String {
    match node {
        Node::Scalar(s) => s.as_str().to_string(),
        Node::Mapping(m) if !m.is_empty() => {
            let keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
            keys.join("+")
        }
        _ => format!("#{}", index + 1),
    }
}

/// The names of a list of values: each as [`value_label`] shows it, or by its `kind` where it
/// is a mapping that has one; a name that two values would share gets their position
/// (`mlp#1`, `rkd_d+rkd_a#2`), so that every variant's name stays apart.
fn value_labels(values: &[Node]) -> Vec<String> {
    let base: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            match v
                .as_mapping()
                .and_then(|m| m.get_scalar("kind"))
                .map(|k| k.as_str())
            {
                Some(k) => k.to_string(),
                None => value_label(v, i),
            }
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (b, v) in base.iter().zip(values) {
        if v.as_scalar().is_none() {
            *count.entry(b.as_str()).or_default() += 1;
        }
    }
    base.iter()
        .zip(values)
        .enumerate()
        .map(|(i, (b, v))| match v.as_scalar() {
            None if count[b.as_str()] > 1 => format!("{b}#{}", i + 1),
            _ => b.clone(),
        })
        .collect()
}

fn same_value(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A readable short name for a swept path: its last part, or the one before a `kind` or
/// `weight` (`sampler.kind` → `sampler`, `loss.rkd_d.weight` → `rkd_d`).
fn short_label(path: &[String]) -> String {
    let last = path.last().map(String::as_str).unwrap_or("");
    if matches!(last, "kind" | "weight") && path.len() >= 2 {
        path[path.len() - 2].clone()
    } else {
        last.to_string()
    }
}

impl Expander<'_> {
    fn err(&mut self, span: &Span, message: impl Into<String>) {
        err(self.diags, span, message)
    }

    /// Reads a stage's `matrix:` into its combinations (None after reporting a problem).
    /// The entries of a matrix's `exclude:`/`include:` list, each a mapping; a list of
    /// another shape, or an entry that is not a mapping, is reported (and clears `ok`).
    fn entry_maps<'n>(
        &mut self,
        m: &'n MarkedMappingNode,
        key: &str,
        what: &str,
        [list_example, entry_example]: [&str; 2],
        ok: &mut bool,
    ) -> Vec<&'n MarkedMappingNode> {
        let Some(node) = m.get_node(key) else {
            return Vec::new();
        };
        let Some(entries) = node.as_sequence() else {
            self.err(
                node.span(),
                format!("{what}.{key}: expected a list of mappings like {list_example}"),
            );
            *ok = false;
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.iter() {
            match e.as_mapping() {
                Some(em) => out.push(em),
                None => {
                    self.err(
                        e.span(),
                        format!("{what}.{key}: each entry is a mapping like {entry_example}"),
                    );
                    *ok = false;
                }
            }
        }
        out
    }

    /// `at` is the `matrix` key, where problems with the matrix as a whole are reported.
    fn matrix(&mut self, node: &Node, at: &Span, kind: &str, what: &str) -> Option<Matrix> {
        let what = format!("{what}.matrix");
        let Some(m) = node.as_mapping() else {
            self.err(node.span(), format!("{what}: expected a mapping of dotted paths to lists, e.g. {{loss.cc.p: [1, 2, 3]}}"));
            return None;
        };
        let allowed = keys::stage_keys(kind).unwrap_or(&[]);
        let mut axes: Vec<Axis> = Vec::new();
        let mut ok = true;
        let check_path = |this: &mut Self, path: &[String], span: &Span| -> bool {
            let first = path[0].as_str();
            if matches!(first, "kind" | "matrix" | "description")
                || keys::reference_keys(kind).contains(&first)
                || first == "generations"
            {
                this.err(
                    span,
                    format!(
                        "{what}: `{first}` cannot be swept; declare one stage per value instead"
                    ),
                );
                return false;
            }
            if !allowed.contains(&first) {
                let sweepable: Vec<&str> = allowed
                    .iter()
                    .copied()
                    .filter(|k| !matches!(*k, "kind" | "matrix" | "description"))
                    .collect();
                this.err(
                    span,
                    format!(
                        "{what}: `{}` is not a key of a {kind} stage{}",
                        path.join("."),
                        diag::hint(first, &sweepable)
                    ),
                );
                return false;
            }
            true
        };
        for (k, v) in m.iter() {
            let key = k.as_str();
            if key == "exclude" || key == "include" {
                continue;
            }
            let path: Vec<String> = if key == "seeds" {
                vec!["seed".to_string()]
            } else {
                key.split('.').map(str::to_string).collect()
            };
            if path.iter().any(String::is_empty) {
                self.err(
                    k.span(),
                    format!("{what}: `{key}` is not a dotted path like loss.cc.p"),
                );
                ok = false;
                continue;
            }
            if key == "seeds" && !allowed.contains(&"seed") {
                self.err(
                    k.span(),
                    format!("{what}: a {kind} stage has no seed to repeat"),
                );
                ok = false;
                continue;
            }
            if !check_path(self, &path, k.span()) {
                ok = false;
                continue;
            }
            let Some(seq) = v.as_sequence() else {
                self.err(
                    v.span(),
                    format!("{what}.{key}: expected a list of values, e.g. [1, 2, 3]"),
                );
                ok = false;
                continue;
            };
            if seq.is_empty() {
                self.err(v.span(), format!("{what}.{key}: empty list, so the matrix has no combination; give at least one value"));
                ok = false;
                continue;
            }
            let values: Vec<Node> = seq.iter().cloned().collect();
            axes.push(Axis {
                shown: value_labels(&values),
                label: if key == "seeds" {
                    "seed".into()
                } else {
                    short_label(&path)
                },
                path,
                values,
            });
        }
        if m.is_empty() || (axes.is_empty() && ok && m.get_node("include").is_none()) {
            self.err(
                at,
                format!("{what}: empty matrix; give at least one path with a list of values"),
            );
            return None;
        }
        // Labels must tell the axes apart; where two share one, use their full paths.
        for i in 0..axes.len() {
            if axes
                .iter()
                .enumerate()
                .any(|(j, a)| j != i && a.label == axes[i].label)
            {
                axes[i].label = axes[i].path.join(".");
            }
        }
        let axis_of = |name: &str| {
            axes.iter()
                .position(|a| a.label == name || a.path.join(".") == name)
        };
        // exclude: each entry removes the combinations that match all of its values.
        let mut excludes: Vec<Vec<(usize, String, Span)>> = Vec::new();
        for em in self.entry_maps(
            m,
            "exclude",
            &what,
            ["[{p: 1, sampler: superclass}]", "{p: 1}"],
            &mut ok,
        ) {
            let mut conds = Vec::new();
            for (ek, ev) in em.iter() {
                match (axis_of(ek.as_str()), ev.as_scalar()) {
                    (Some(a), Some(s)) => conds.push((a, s.as_str().to_string(), *ev.span())),
                    (Some(_), None) => {
                        self.err(
                            ev.span(),
                            format!("{what}.exclude.{}: expected a single value", ek.as_str()),
                        );
                        ok = false;
                    }
                    (None, _) => {
                        let labels: Vec<&str> = axes.iter().map(|a| a.label.as_str()).collect();
                        self.err(
                            ek.span(),
                            format!(
                                "{what}.exclude: `{}` is not swept by this matrix{}",
                                ek.as_str(),
                                diag::hint(ek.as_str(), &labels)
                            ),
                        );
                        ok = false;
                    }
                }
            }
            excludes.push(conds);
        }
        // Every axis value is a choice, axis after axis: choice `offsets[a] + v` is value v of
        // axis a.
        let mut choices: Vec<Choice> = Vec::new();
        let mut offsets = Vec::with_capacity(axes.len());
        for axis in &axes {
            offsets.push(choices.len());
            for (v, shown) in axis.values.iter().zip(&axis.shown) {
                choices.push(Choice {
                    path: axis.path.clone(),
                    label: axis.label.clone(),
                    value: v.clone(),
                    shown: shown.clone(),
                });
            }
        }
        let mut includes: Vec<Box<[usize]>> = Vec::new();
        for em in self.entry_maps(
            m,
            "include",
            &what,
            ["[{p: 8, sampler: random}]", "{p: 8}"],
            &mut ok,
        ) {
            let mut combo = Vec::new();
            for (ik, iv) in em.iter() {
                let (path, label) = match axis_of(ik.as_str()) {
                    Some(a) => (axes[a].path.clone(), axes[a].label.clone()),
                    None => {
                        let path: Vec<String> = if ik.as_str() == "seeds" || ik.as_str() == "seed" {
                            vec!["seed".into()]
                        } else {
                            ik.as_str().split('.').map(str::to_string).collect()
                        };
                        if !check_path(self, &path, ik.span()) {
                            ok = false;
                            continue;
                        }
                        let label = short_label(&path);
                        (path, label)
                    }
                };
                combo.push(choices.len());
                choices.push(Choice {
                    path,
                    label,
                    value: iv.clone(),
                    shown: value_label(iv, includes.len()),
                });
            }
            includes.push(combo.into_boxed_slice());
        }
        if !ok {
            return None;
        }
        // The size of the product, checked before anything is built: a matrix of 10^6
        // combinations is refused here, not after exhausting memory.
        let max = max_stages();
        let product = axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .and_then(|n| n.checked_add(includes.len()));
        if product.is_none_or(|n| n > max) {
            let sizes: Vec<String> = axes.iter().map(|a| a.values.len().to_string()).collect();
            self.err(
                at,
                format!(
                    "{what}: {} combinations ({}{}) are more than one stage can expand to; {}",
                    product.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                    sizes.join(" × "),
                    if includes.is_empty() {
                        String::new()
                    } else {
                        format!(" + {} included", includes.len())
                    },
                    raise_hint(max)
                ),
            );
            return None;
        }
        // The cartesian product, first axis slowest, like nested loops in the written order:
        // combination c picks value (c / stride_a) % len_a of axis a.
        let mut combos: Vec<Box<[usize]>> = Vec::new();
        if !axes.is_empty() {
            let total = product.unwrap_or(0) - includes.len();
            combos.reserve(total);
            for c in 0..total {
                let mut rest = c;
                let mut combo = vec![0; axes.len()];
                for (a, axis) in axes.iter().enumerate().rev() {
                    combo[a] = offsets[a] + rest % axis.values.len();
                    rest /= axis.values.len();
                }
                combos.push(combo.into_boxed_slice());
            }
        }
        let mut used = vec![false; excludes.len()];
        combos.retain(|c| {
            let mut keep = true;
            for (i, conds) in excludes.iter().enumerate() {
                let hit = conds.iter().all(|(a, val, _)| {
                    choices[c[*a]]
                        .value
                        .as_scalar()
                        .is_some_and(|s| same_value(s.as_str(), val))
                });
                if hit && !conds.is_empty() {
                    used[i] = true;
                    keep = false;
                }
            }
            keep
        });
        for (i, conds) in excludes.iter().enumerate() {
            if !used[i] {
                let span = conds.first().map(|c| c.2).unwrap_or(*at);
                self.err(&span, format!("{what}.exclude: entry {} matches no combination; check its values against the lists", i + 1));
                ok = false;
            }
        }
        combos.extend(includes);
        if combos.is_empty() && ok {
            self.err(
                at,
                format!("{what}: every combination is excluded, so the stage would never run"),
            );
            return None;
        }
        ok.then_some(Matrix { choices, combos })
    }

    /// Expands every declared stage (applying `defaults`) into the stages that run.
    pub fn expand(
        &mut self,
        stages: &MarkedMappingNode,
        defaults: Option<&MarkedMappingNode>,
    ) -> Vec<Expanded> {
        struct Declared<'a> {
            name: &'a MarkedScalarNode,
            node: MarkedMappingNode,
            kind: Option<String>,
            /// (role, target as written, where).
            refs: Vec<(&'static str, String, Span)>,
            /// Whether each reference resolved (a stage with a broken reference is still
            /// checked, without it, so that all its problems are reported at once).
            ref_ok: Vec<bool>,
            /// Whether the stage's own mapping has `model:` (before `defaults:`).
            own_model: bool,
        }
        let mut declared: Vec<Declared> = Vec::new();
        for (k, v) in stages.iter() {
            let Some(m) = v.as_mapping() else {
                self.err(
                    v.span(),
                    format!(
                        "stages.{}: expected a mapping (`key: value` lines)",
                        k.as_str()
                    ),
                );
                continue;
            };
            let mut node = m.clone();
            let kind = m.get_scalar("kind").map(|s| s.as_str().to_string());
            if let (Some(d), Some(kind)) = (defaults, &kind) {
                merge_defaults(&mut node, d, kind);
            }
            let mut refs = Vec::new();
            for &role in kind.as_deref().map(keys::reference_keys).unwrap_or(&[]) {
                if let Some(n) = node.get_node(role) {
                    match n.as_scalar() {
                        Some(s) if !s.as_str().is_empty() => {
                            refs.push((role, s.as_str().to_string(), *n.span()))
                        }
                        _ => self.err(
                            n.span(),
                            format!("stages.{}.{role}: expected the name of a stage", k.as_str()),
                        ),
                    }
                }
            }
            let ref_ok = vec![true; refs.len()];
            declared.push(Declared {
                name: k,
                node,
                kind,
                refs,
                ref_ok,
                own_model: m.contains_key("model"),
            });
        }
        let index: HashMap<&str, usize> = declared
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        // The declared graph: an edge from each referenced stage to the stage using it.
        let mut graph: DiGraph<usize, (Span, usize)> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..declared.len()).map(|i| graph.add_node(i)).collect();
        let mut bad: Vec<(usize, usize)> = Vec::new();
        for (i, d) in declared.iter().enumerate() {
            for (r, (role, target, span)) in d.refs.iter().enumerate() {
                let what = format!("stages.{}.{role}", d.name.as_str());
                let base = target.split_once('[').map_or(target.as_str(), |x| x.0);
                match index.get(base) {
                    None => {
                        self.err(
                            span,
                            format!(
                                "{what}: no stage named `{target}`{}",
                                diag::hint(base, &names)
                            ),
                        );
                        bad.push((i, r));
                    }
                    Some(&j) if j == i => {
                        self.err(span, format!("{what}: a stage cannot use its own model"));
                        bad.push((i, r));
                    }
                    Some(&j) => {
                        if let Some(k) = &declared[j].kind {
                            if !keys::produces_model(k) && keys::stage_keys(k).is_some() {
                                self.err(span, format!("{what}: stage `{target}` is a{} {k} stage and produces no model; name a train, distill or self_distill stage", if k.starts_with('e') { "n" } else { "" }));
                                bad.push((i, r));
                                continue;
                            }
                        }
                        graph.add_edge(nodes[j], nodes[i], (*span, r));
                    }
                }
            }
        }
        // Report each cycle at the reference that closes it, then drop that reference so
        // that the rest of the recipe is still checked.
        while let Some(cycle) = find_cycle(&graph) {
            let names: Vec<&str> = cycle
                .iter()
                .map(|n| declared[graph[*n]].name.as_str())
                .collect();
            let last = cycle[cycle.len() - 1];
            let prev = cycle[cycle.len() - 2];
            let edge = graph.find_edge(prev, last).expect("a cycle's edge");
            let (span, r) = graph[edge];
            self.err(&span, format!(
                "stages form a cycle: {} (each stage needs the one before it); break it by removing one of these references",
                names.join(" → ")
            ));
            bad.push((graph[last], r));
            graph.remove_edge(edge);
        }
        for (i, r) in bad {
            declared[i].ref_ok[r] = false;
        }
        let order = super::file_ordered_topo(&graph);
        // Declared name → its variants (indices into `out`).
        let mut variants: Vec<Vec<usize>> = vec![Vec::new(); declared.len()];
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<Expanded> = Vec::new();
        for i in order {
            let d = &declared[i];
            let base = d.name.as_str();
            let what = format!("stages.{base}");
            let kind = d.kind.clone().unwrap_or_default();
            // Each reference's options: (variant index, its params).
            let mut joined: Vec<Joined> = vec![(Vec::new(), Vec::new())];
            let mut missing = false;
            for (r, (_, target, span)) in d.refs.iter().enumerate() {
                if !d.ref_ok[r] {
                    continue;
                }
                let options: Vec<usize> = if target.contains('[') {
                    match by_name.get(target) {
                        Some(&v) => vec![v],
                        None => {
                            let tbase = target.split_once('[').map_or("", |x| x.0);
                            let known: Vec<&str> = index
                                .get(tbase)
                                .map(|&j| {
                                    variants[j].iter().map(|&v| out[v].name.as_str()).collect()
                                })
                                .unwrap_or_default();
                            self.err(
                                span,
                                format!(
                                    "{what}.{}: `{tbase}` has no variant `{target}`{}",
                                    d.refs[r].0,
                                    if known.is_empty() {
                                        String::new()
                                    } else {
                                        format!("; its variants are {}", known.join(", "))
                                    }
                                ),
                            );
                            missing = true;
                            continue;
                        }
                    }
                } else {
                    variants[index[target.as_str()]].clone()
                };
                if options.is_empty() {
                    // The target failed to expand; its problem is reported already.
                    missing = true;
                    continue;
                }
                let exact = target.contains('[');
                let mut next = Vec::new();
                'join: for (params, chosen) in &joined {
                    for &o in &options {
                        let mut theirs = out[o].params.clone();
                        if exact {
                            theirs.iter_mut().for_each(|p| p.named = false);
                        }
                        if let Some(merged) = join(params, &theirs) {
                            let mut chosen = chosen.clone();
                            chosen.push((r, o));
                            next.push((merged, chosen));
                            // Bounded like the stages: each choice becomes at least one.
                            if next.len() > max_stages() {
                                break 'join;
                            }
                        }
                    }
                }
                joined = next;
            }
            if missing {
                continue;
            }
            let matrix_key = d
                .node
                .keys()
                .find(|k| k.as_str() == "matrix")
                .map(|k| *k.span());
            let matrix = match (d.node.get_node("matrix"), matrix_key) {
                (Some(mx), Some(at)) => match self.matrix(mx, &at, &kind, &what) {
                    Some(c) => c,
                    None => continue,
                },
                _ => Matrix::single(),
            };
            let max = max_stages();
            let generations = if kind == "self_distill" {
                match d.node.get_node("generations") {
                    None => {
                        self.err(d.name.span(), format!("{what}: missing `generations:` (how many students in the chain; generation g is taught by g − 1)"));
                        continue;
                    }
                    Some(n) => {
                        let text = n.as_scalar().map_or("", |s| s.as_str());
                        match text.parse::<usize>() {
                            Ok(g) if (1..=max).contains(&g) => g,
                            Ok(g) if g > max => {
                                self.err(
                                    n.span(),
                                    format!("{what}.generations: {g} generations are more than one stage can expand to; {}", raise_hint(max)),
                                );
                                continue;
                            }
                            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                                self.err(
                                    n.span(),
                                    format!("{what}.generations: {text} generations are more than one stage can expand to; {}", raise_hint(max)),
                                );
                                continue;
                            }
                            _ => {
                                self.err(
                                    n.span(),
                                    format!("{what}.generations: expected a whole number ≥ 1"),
                                );
                                continue;
                            }
                        }
                    }
                }
            } else {
                1
            };
            // How many stages this one becomes, checked before any is built.
            let count = joined
                .len()
                .checked_mul(matrix.combos.len())
                .and_then(|n| n.checked_mul(generations));
            if count.is_none_or(|n| n > max - out.len().min(max)) {
                self.err(
                    d.name.span(),
                    format!(
                        "{what}: expands to {} stages ({} variant{} of its inputs × {} combination{}{}), which with the {} before it is more than the recipe may have; {}",
                        count.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                        joined.len(),
                        if joined.len() == 1 { "" } else { "s" },
                        matrix.combos.len(),
                        if matrix.combos.len() == 1 { "" } else { "s" },
                        if generations > 1 { format!(" × {generations} generations") } else { String::new() },
                        out.len(),
                        raise_hint(max)
                    ),
                );
                continue;
            }
            out.reserve(count.unwrap_or(0));
            // Whether the stage itself says `model:` (written, set, or swept), rather than
            // inheriting it from `defaults:`.
            let own_model = d.own_model
                || matrix
                    .choices
                    .iter()
                    .any(|c| c.path.first().is_some_and(|p| p == "model"));
            // The stage without its matrix, cloned once: cloning the whole node for every
            // combination would copy every matrix value into every variant (quadratic).
            let mut bare = d.node.clone();
            bare.remove("matrix");
            let template = Rc::new(bare);
            let matrix = Rc::new(matrix);
            for (inherited, chosen) in &joined {
                for (combo_index, combo) in matrix.combos.iter().enumerate() {
                    let mut params = inherited.clone();
                    // The variant's mapping is built here to check it (only a matrix value
                    // can make it wrong), then dropped; `VariantNode` builds it again when
                    // the parser reads it.
                    let mut node = (!combo.is_empty()).then(|| (*template).clone());
                    for c in combo.iter().map(|&c| &matrix.choices[c]) {
                        let path = &c.path;
                        let node = node.as_mut().expect("built for a combination");
                        if let Some(set) =
                            get_path(node, path).filter(|n| Pos::from(n.span()).source > 0)
                        {
                            self.err(set.span(), format!(
                                "`{}` of stage `{base}` is swept by its matrix, which would override this value; set `stages.{base}.matrix.{}=[…]` instead",
                                path.join("."),
                                path.join(".")
                            ));
                        }
                        set_path(
                            node,
                            path,
                            c.value.clone(),
                            &format!("{what}.matrix"),
                            self.diags,
                        );
                        params.push(Param {
                            origin: base.to_string(),
                            path: path.join("."),
                            label: c.label.clone(),
                            value: c.shown.clone(),
                            named: true,
                        });
                    }
                    let mut inputs: Vec<InputRef> = chosen
                        .iter()
                        .map(|&(r, v)| InputRef {
                            role: d.refs[r].0,
                            stage: out[v].name.clone(),
                            pos: (&d.refs[r].2).into(),
                        })
                        .collect();
                    // A self-distilled student has its teacher's architecture unless the stage
                    // itself says otherwise: born-again generations keep the architecture, and
                    // a `defaults: model:` (meant for the recipe's other students) does not
                    // silently replace it.
                    let model = match chosen.first() {
                        Some(&(_, t)) if kind == "self_distill" && !own_model => {
                            out[t].node.get_node("model").map(Rc::new)
                        }
                        _ => None,
                    };
                    drop(node);
                    for g in 1..=generations {
                        let mut params = params.clone();
                        if kind == "self_distill" {
                            params.push(Param {
                                origin: base.to_string(),
                                path: "gen".into(),
                                label: "gen".into(),
                                value: g.to_string(),
                                named: true,
                            });
                        }
                        let name = variant_name(base, &params);
                        if let Some(&other) = by_name.get(&name) {
                            self.err(d.name.span(), format!("{what}: two variants are both named `{}` (from the matrix's include or repeated values); make them differ", out[other].name));
                            continue;
                        }
                        let idx = out.len();
                        out.push(Expanded {
                            name: name.clone(),
                            base: base.to_string(),
                            pos: d.name.span().into(),
                            node: VariantNode {
                                template: Rc::clone(&template),
                                matrix: Rc::clone(&matrix),
                                combo: combo_index,
                                model: model.clone(),
                                built: OnceCell::new(),
                            },
                            params,
                            inputs: inputs.clone(),
                        });
                        by_name.insert(name.clone(), idx);
                        variants[i].push(idx);
                        if kind == "self_distill" {
                            // The next generation is taught by this one.
                            if let Some(t) = inputs.iter_mut().find(|r| r.role == "teacher") {
                                t.stage = name;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// A compatible choice of variants for a stage's references: the merged parameters, and
/// (reference index, variant index) per reference.
type Joined = (Vec<Param>, Vec<(usize, usize)>);

/// Merges two parameter lists that agree on every parameter they share.
fn join(a: &[Param], b: &[Param]) -> Option<Vec<Param>> {
    let mut out = a.to_vec();
    for p in b {
        match a.iter().find(|q| q.origin == p.origin && q.path == p.path) {
            Some(q) if q.value != p.value => return None,
            Some(_) => {}
            None => out.push(p.clone()),
        }
    }
    Some(out)
}

/// `base[label=value,…]`; a label used by two origins is qualified with the origin.
fn variant_name(base: &str, params: &[Param]) -> String {
    let params: Vec<&Param> = params.iter().filter(|p| p.named).collect();
    if params.is_empty() {
        return base.to_string();
    }
    let parts: Vec<String> = params
        .iter()
        .map(|p| {
            let clash = params
                .iter()
                .any(|q| q.label == p.label && q.origin != p.origin);
            if clash && p.origin != base {
                format!("{}.{}={}", p.origin, p.label, p.value)
            } else {
                format!("{}={}", p.label, p.value)
            }
        })
        .collect();
    format!("{base}[{}]", parts.join(","))
}

/// One cycle of the graph, as a path that starts and ends at the same node.
fn find_cycle<E>(graph: &DiGraph<usize, E>) -> Option<Vec<NodeIndex>> {
    for scc in tarjan_scc(graph) {
        let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !cyclic {
            continue;
        }
        let mut path = vec![scc[0]];
        loop {
            let last = *path.last().unwrap();
            let next = graph
                .neighbors(last)
                .find(|n| scc.contains(n))
                .expect("a strongly connected component has an edge inside");
            if let Some(pos) = path.iter().position(|&n| n == next) {
                path.drain(..pos);
                path.push(next);
                return Some(path);
            }
            path.push(next);
        }
    }
    None
}
