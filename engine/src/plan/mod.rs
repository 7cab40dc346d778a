//! The plan: the recipe's stages as a DAG (petgraph), in dependency order, each with its
//! content key.
//!
//! A key is the SHA-256 of a manifest that holds everything that can change a stage's
//! results — its kind, its fully resolved configuration (seed included), the fingerprint of
//! its data's *content*, the keys of its inputs, and [`CACHE_VERSION`] — and nothing that
//! cannot: not the stage's name, not the recipe's file name, comments or key order, not
//! where the data files live. The manifest is stored next to the artifacts.

use std::collections::HashMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ml::data::{hex, DataError};
use crate::recipe::{Diagnostic, Recipe, RecipeError};
use crate::stage::spec::StageConfig;

/// Bump to invalidate every cached stage (e.g. when training semantics change).
pub const CACHE_VERSION: u32 = 1;

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
    pub key: String,
    pub config: StageConfig,
    /// (role, index into `Plan::stages`) of each input.
    pub inputs: Vec<(String, usize)>,
    /// Exactly what was hashed into `key`.
    pub manifest: Value,
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

pub fn build(recipe: &Recipe) -> Result<Plan, PlanError> {
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
    for (i, s) in recipe.stages.iter().enumerate() {
        for input in &s.inputs {
            // The recipe parser has already reported dangling references.
            if let Some(&src) = index.get(input.stage.as_str()) {
                graph.add_edge(nodes[src], nodes[i], ());
            }
        }
    }
    if toposort(&graph, None).is_err() {
        return Err(cycle_error(recipe, &graph).into());
    }
    let order = file_ordered_topo(&graph);

    let mut fingerprints: HashMap<String, String> = HashMap::new();
    let mut keys: Vec<Option<String>> = vec![None; recipe.stages.len()];
    let mut stages: Vec<Option<PlannedStage>> = vec![None; recipe.stages.len()];
    for &i in &order {
        let decl = &recipe.stages[i];
        let inputs: Vec<(String, usize)> = decl
            .inputs
            .iter()
            .map(|r| (r.role.to_string(), index[r.stage.as_str()]))
            .collect();
        let mut input_keys = serde_json::Map::new();
        for (role, src) in &inputs {
            input_keys.insert(
                role.clone(),
                json!(keys[*src].clone().expect("inputs first")),
            );
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
        let manifest = manifest(&decl.config, &fp, Value::Object(input_keys));
        let key = key_of(&manifest);
        keys[i] = Some(key.clone());
        stages[i] = Some(PlannedStage {
            name: decl.name.clone(),
            key,
            config: decl.config.clone(),
            inputs,
            manifest,
        });
    }
    Ok(Plan {
        recipe: recipe.name.clone(),
        file: recipe.file.clone(),
        recipe_sha256: recipe.source_sha256.clone(),
        stages: stages
            .into_iter()
            .map(|s| s.expect("every stage planned"))
            .collect(),
        order,
    })
}

/// A topological order that, among the stages that are ready, always takes the one written
/// first in the recipe (Kahn's algorithm with a min-heap), so that plans and progress read
/// in the order the user wrote.
fn file_ordered_topo(graph: &DiGraph<usize, ()>) -> Vec<usize> {
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

/// The manifest of a stage: its configuration with the data *location* replaced by the
/// data's content fingerprint.
pub fn manifest(config: &StageConfig, data_fingerprint: &str, inputs: Value) -> Value {
    let mut cfg = serde_json::to_value(config).expect("serialisable config");
    if let Some(data) = cfg.get_mut("data").and_then(Value::as_object_mut) {
        let kind = data["source"]["kind"].clone();
        data.insert(
            "source".into(),
            json!({"kind": kind, "fingerprint": data_fingerprint}),
        );
    }
    json!({
        "cache_version": CACHE_VERSION,
        "config": cfg,
        "inputs": inputs,
    })
}

/// serde_json's maps are sorted, so the serialisation is canonical.
pub fn key_of(manifest: &Value) -> String {
    let bytes = serde_json::to_vec(manifest).expect("serialisable manifest");
    hex(&Sha256::digest(&bytes))[..32].to_string()
}

/// Finds one cycle and reports it as `a → b → a` at the reference that closes it.
fn cycle_error(recipe: &Recipe, graph: &DiGraph<usize, ()>) -> RecipeError {
    let mut diagnostics = Vec::new();
    for scc in tarjan_scc(graph) {
        let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !cyclic {
            continue;
        }
        // Walk edges inside the component until a node repeats.
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
                break;
            }
            path.push(next);
        }
        let names: Vec<&str> = path
            .iter()
            .map(|n| recipe.stages[graph[*n]].name.as_str())
            .collect();
        // Point at the reference in the stage that closes the cycle.
        let closing = &recipe.stages[graph[path[path.len() - 1]]];
        let prev = names[names.len() - 2];
        let pos = closing
            .inputs
            .iter()
            .find(|r| r.stage == prev)
            .map(|r| r.pos)
            .unwrap_or(closing.pos);
        diagnostics.push(Diagnostic {
            pos,
            message: format!(
                "stages form a cycle: {} (each stage needs the one before it); break it by removing one of these references",
                names.join(" → ")
            ),
        });
    }
    RecipeError::new(&recipe.file, diagnostics)
}

#[cfg(test)]
mod tests;
