//! The plan: the recipe's stages as a DAG (petgraph), in dependency order, each with its
//! content key.
//!
//! A key is the SHA-256 of a manifest that holds everything that can change a stage's
//! results — its kind, its fully resolved configuration (seed included), the fingerprint of
//! its data's *content*, the keys of its inputs, and [`CACHE_VERSION`] — and nothing that
//! cannot: not the stage's name, not the recipe's file name, comments or key order, not
//! where the data files live. The manifest is stored next to the artifacts.

pub mod render;

use std::collections::HashMap;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::ml::data::DataError;
use crate::recipe::{Param, Recipe, RecipeError, StageDecl};
use crate::spec::StageConfig;

pub use crate::spec::{Manifest, CACHE_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("cannot fingerprint data set: {0}")]
    Data(#[from] DataError),
}

#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub name: String,
    /// The name declared under `stages:` (the same as `name` unless swept).
    pub base: String,
    /// The declared kind (`self_distill` generations run as `distill`).
    pub kind: String,
    /// The swept parameters that made this variant.
    pub params: Vec<Param>,
    pub key: String,
    pub config: StageConfig,
    /// (role, index into `Plan::stages`) of each input.
    pub inputs: Vec<(String, usize)>,
    /// Exactly what was hashed into `key`.
    pub manifest: Manifest,
}

impl PlannedStage {
    pub fn short_key(&self) -> &str {
        &self.key[..12]
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub recipe: String,
    pub file: String,
    pub recipe_sha256: String,
    /// In the recipe's order.
    pub stages: Vec<PlannedStage>,
    /// Indices into `stages`, inputs before the stages that use them.
    pub order: Vec<usize>,
}

impl Plan {
    /// Indices of the stages that use stage `i`'s output.
    pub fn dependants(&self, i: usize) -> Vec<usize> {
        (0..self.stages.len())
            .filter(|&j| self.stages[j].inputs.iter().any(|(_, s)| *s == i))
            .collect()
    }
}

/// Plans a parsed recipe. It takes the recipe by value and moves each stage's configuration
/// into the plan, so that a large recipe is not held twice. Linear in the number of stages:
/// names are resolved through one hash map, data fingerprints computed once per source.
pub fn build(recipe: Recipe) -> Result<Plan, PlanError> {
    let index: HashMap<&str, usize> = recipe
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..recipe.stages.len())
        .map(|i| graph.add_node(i))
        .collect();
    // The recipe parser has already reported dangling references and refused cycles.
    let inputs: Vec<Vec<(String, usize)>> = recipe
        .stages
        .iter()
        .map(|s| {
            s.inputs
                .iter()
                .filter_map(|r| Some((r.role.to_string(), *index.get(r.stage.as_str())?)))
                .collect()
        })
        .collect();
    drop(index);
    for (i, ins) in inputs.iter().enumerate() {
        for &(_, src) in ins {
            graph.add_edge(nodes[src], nodes[i], ());
        }
    }
    assert!(
        toposort(&graph, None).is_ok(),
        "a parsed recipe has no cycle"
    );
    let order = crate::recipe::file_ordered_topo(&graph);
    drop(graph);

    let Recipe {
        name: recipe_name,
        file,
        source_sha256,
        stages: decls,
    } = recipe;
    let mut fingerprints: HashMap<String, String> = HashMap::new();
    let mut keys: Vec<Option<String>> = vec![None; decls.len()];
    let mut decls: Vec<Option<StageDecl>> = decls.into_iter().map(Some).collect();
    let mut inputs: Vec<Option<Vec<(String, usize)>>> = inputs.into_iter().map(Some).collect();
    let mut stages: Vec<Option<PlannedStage>> = (0..decls.len()).map(|_| None).collect();
    for &i in &order {
        let decl = decls[i].take().expect("each stage planned once");
        let inputs = inputs[i].take().expect("each stage planned once");
        let mut input_keys = std::collections::BTreeMap::new();
        for (role, src) in &inputs {
            input_keys.insert(role.clone(), keys[*src].clone().expect("inputs first"));
        }
        let source = &decl.config.data().source;
        let source_id = serde_json::to_string(source).expect("serialisable");
        let fp = match fingerprints.get(&source_id) {
            Some(fp) => fp.clone(),
            None => {
                let fp = source.fingerprint()?;
                fingerprints.insert(source_id, fp.clone());
                fp
            }
        };
        let manifest = Manifest::new(&decl.config, &fp, &input_keys);
        let key = manifest.key();
        keys[i] = Some(key.clone());
        stages[i] = Some(PlannedStage {
            name: decl.name,
            base: decl.base,
            kind: decl.kind,
            params: decl.params,
            key,
            config: decl.config,
            inputs,
            manifest,
        });
    }
    Ok(Plan {
        recipe: recipe_name,
        file,
        recipe_sha256: source_sha256,
        stages: stages
            .into_iter()
            .map(|s| s.expect("every stage planned"))
            .collect(),
        order,
    })
}

/// Why a stage that is not cached will run, comparing its manifest with the one of the key
/// the same stage had last time (`previous`, if the database and the cache still have it).
pub fn why_run(
    manifest: &Manifest,
    previous_key: Option<&str>,
    previous: Option<&Value>,
) -> String {
    let Some(old_key) = previous_key else {
        return "new".into();
    };
    let short = &old_key[..12.min(old_key.len())];
    let Some(old) = previous else {
        return format!("changed (was {short})");
    };
    let manifest = manifest.to_value();
    if old["cache_version"] != manifest["cache_version"] {
        return format!("engine cache version changed (was {short})");
    }
    let mut paths = Vec::new();
    diff_paths(
        &old["config"],
        &manifest["config"],
        String::new(),
        &mut paths,
    );
    if !paths.is_empty() {
        let more = if paths.len() > 3 {
            format!(" and {} more", paths.len() - 3)
        } else {
            String::new()
        };
        paths.truncate(3);
        return format!("config changed: {}{more} (was {short})", paths.join(", "));
    }
    let mut roles = Vec::new();
    if let (Some(a), Some(b)) = (old["inputs"].as_object(), manifest["inputs"].as_object()) {
        for (role, key) in b {
            if a.get(role) != Some(key) {
                roles.push(role.clone());
            }
        }
    }
    if !roles.is_empty() {
        return format!("input changed: {} (was {short})", roles.join(", "));
    }
    format!("changed (was {short})")
}

fn is_mix(v: &[Value]) -> bool {
    v.iter()
        .all(|t| t.get("loss").is_some_and(Value::is_string))
}

/// The dotted paths where two JSON values differ, with the old and new value of leaves.
fn diff_paths(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_paths(p, q, sub, out),
                    (p, q) => out.push(format!(
                        "{sub} {} → {}",
                        p.map_or("(none)".into(), Value::to_string),
                        q.map_or("(none)".into(), Value::to_string)
                    )),
                }
            }
        }
        // A loss mix is a list of terms: compare them by name (`loss.rkd_a.weight`).
        (Value::Array(x), Value::Array(y)) if is_mix(x) && is_mix(y) => {
            let by_name = |v: &Vec<Value>| -> serde_json::Map<String, Value> {
                v.iter()
                    .map(|t| (t["loss"].as_str().unwrap_or("?").to_string(), t.clone()))
                    .collect()
            };
            diff_paths(
                &Value::Object(by_name(x)),
                &Value::Object(by_name(y)),
                at,
                out,
            )
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_paths(p, q, format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{at} {a} → {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
