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
use super::matrix::Matrix;
pub use super::sets::SetArg;
use super::sets::{get_path, merge_defaults, set_path};
use super::InputRef;

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

pub(super) fn err(diags: &mut Vec<Diagnostic>, span: &Span, message: impl Into<String>) {
    diags.push(Diagnostic {
        pos: span.into(),
        message: message.into(),
    });
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
pub(super) fn raise_hint(max: usize) -> String {
    format!("the limit is {max} stages per recipe; `--max-stages N` raises it")
}

impl Expander<'_> {
    pub(super) fn err(&mut self, span: &Span, message: impl Into<String>) {
        err(self.diags, span, message)
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
