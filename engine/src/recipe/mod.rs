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

// The parser, one element of the format per module, each adding its part to [`Parser`];
// `expand` (with `sets` and `matrix`) makes the stages that run from those declared.
mod data;
mod loss;
mod matrix;
mod model;
mod parser;
mod sampler;
mod sets;
mod stage;

use std::path::Path;

use marked_yaml::Node;
use sha2::{Digest, Sha256};

use crate::ml::data::hex;
use crate::spec::StageConfig;
pub use diag::{Diagnostic, Pos, RecipeError};
pub use expand::{Param, SetArg};
use keys::TOP_KEYS;
use parser::Parser;

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
        sets::apply_sets(m, sets, &mut p.diags);
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

/// The top level: `name:`, `seed:`, `data:` and `stages:`.
impl Parser {
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
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod expand_tests;
