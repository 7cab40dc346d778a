//! `matrix:`: the axes a stage is swept over, their `exclude:`/`include:` entries, and the
//! combinations that become its variants.

use std::collections::HashMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::diag;
use super::expand::{max_stages, raise_hint, Expander};
use super::keys;

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
pub(super) struct Choice {
    pub(super) path: Vec<String>,
    pub(super) label: String,
    pub(super) value: Node,
    pub(super) shown: String,
}

/// A stage's matrix, expanded: every value once, and each combination as indices into
/// `choices` (one per swept key), so that a combination of a large sweep costs a few bytes
/// rather than a copy of its values.
#[derive(Debug)]
pub(super) struct Matrix {
    pub(super) choices: Vec<Choice>,
    pub(super) combos: Vec<Box<[usize]>>,
}

impl Matrix {
    /// A stage without a matrix: one combination that sets nothing.
    pub(super) fn single() -> Matrix {
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

    /// Reads a stage's `matrix:` into its combinations (None after reporting a problem).
    /// `at` is the `matrix` key, where problems with the matrix as a whole are reported.
    pub(super) fn matrix(
        &mut self,
        node: &Node,
        at: &Span,
        kind: &str,
        what: &str,
    ) -> Option<Matrix> {
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
}
