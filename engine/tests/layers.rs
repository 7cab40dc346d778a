//! The layering rules of docs/architecture.md that hold today, checked over the source:
//! `ml/` imports nothing of the rest of the crate (it could become a crate of its own), and
//! no two of its modules import each other, directly or through others.
//!
//! Imports are read from `crate::…` and `super::…` paths in the source text, test code left
//! out (files named `tests.rs`/`*_tests.rs`, and everything from a `#[cfg(test)]` module on:
//! tests may look upward).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The non-test part of a source file.
fn production_code(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        // Comments may name other modules (doc links); only code counts.
        if !t.starts_with("//") {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    Some(kept)
}

/// `ml`'s top-level module a file belongs to (`ml/loss/cc.rs` → `loss`).
fn ml_module(path: &Path) -> String {
    let rel = path.strip_prefix(src().join("ml")).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every identifier that follows `prefix` in `code` (`crate::ml::model::X` → `ml`).
fn after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .filter(|(i, _)| {
            // A whole path segment: not `foo_crate::` or `mysuper::`.
            !code[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn ml_imports_nothing_but_itself_and_its_modules_form_no_cycle() {
    let mut files = Vec::new();
    rust_files(&src().join("ml"), &mut files);
    files.sort();
    assert!(files.len() > 10, "the ml sources were not found");
    let mut outside = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let Some(code) = production_code(path) else {
            continue;
        };
        let me = ml_module(path);
        let node = graph.entry(me.clone()).or_default();
        for first in after(&code, "crate::") {
            if first != "ml" {
                outside.push(format!("{}: crate::{first}", path.display()));
            }
        }
        let mut deps: Vec<&str> = after(&code, "crate::ml::");
        // `super::X` names a sibling from a top-level file of ml/, or the module's own
        // parent from a file inside one (`ml/loss/cc.rs`: `super::` is `loss` itself).
        let top_level = path.parent() == Some(src().join("ml").as_path());
        let is_mod_rs = path.file_name().is_some_and(|n| n == "mod.rs");
        if top_level || is_mod_rs && path.parent().unwrap().parent() == Some(&src().join("ml")) {
            deps.extend(after(&code, "super::"));
        }
        for dep in deps {
            if dep != me && dep != "super" && dep != "self" {
                node.insert(dep.to_string());
            }
        }
    }
    assert!(
        outside.is_empty(),
        "ml/ must import only ml/ (docs/architecture.md):\n{}",
        outside.join("\n")
    );
    // Only edges between ml's own modules (a `super::` path may also name an item).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    // Depth-first search for a cycle, reported as `a → b → a`.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle.join(" → "));
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for d in &graph[m] {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("modules of ml/ import each other: {cycle}\n{graph:#?}");
        }
    }
    // The layering the architecture page draws, bottom up: what the check saw.
    assert!(graph["simd"].is_empty(), "{:?}", graph["simd"]);
    assert!(!graph["conv"].contains("model"));
    assert!(!graph["metric"].contains("sampler"));
}

/// The crate's top-level module a file belongs to (`run/slots.rs` → `run`, `gc.rs` → `gc`).
fn crate_module(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// What each layer of the library may import (docs/architecture.md), bottom up. A module
/// missing from the table fails the test: a new one must say where it stands.
const LAYERS: &[(&str, &[&str])] = &[
    ("ml", &[]),
    ("text", &[]),
    ("spec", &["ml"]),
    ("recipe", &["spec", "ml"]),
    ("plan", &["recipe", "spec", "text", "ml"]),
    ("cache", &["spec", "ml"]),
    ("store", &["cache", "plan", "recipe", "spec", "ml"]),
    ("stage", &["cache", "spec", "ml"]),
    ("results", &["store", "recipe", "spec", "text", "ml"]),
    // The progress lines format metric values as the results table does.
    (
        "run",
        &[
            "results", "store", "cache", "plan", "recipe", "spec", "text", "ml",
        ],
    ),
    ("plot", &["results", "store", "ml"]),
    ("report", &["plot", "results", "store", "ml"]),
    ("gc", &["run", "store", "cache"]),
    (
        "rebuild",
        &["run", "store", "cache", "plan", "recipe", "spec", "ml"],
    ),
    ("lossbench", &["spec", "ml"]),
    (
        "exit",
        &[
            "rebuild",
            "gc",
            "lossbench",
            "report",
            "plot",
            "results",
            "run",
            "stage",
            "store",
            "cache",
            "plan",
            "recipe",
            "spec",
            "ml",
        ],
    ),
];

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for path in &files {
        let me = crate_module(path);
        // The binary's own files (main.rs and its cli/ modules) stand above every layer.
        if me == "main" || me == "lib" || me == "cli" {
            continue;
        }
        let Some(code) = production_code(path) else {
            continue;
        };
        let Some(ok) = allowed.get(me.as_str()) else {
            wrong.push(format!(
                "{}: module `{me}` has no row in LAYERS (tests/layers.rs, docs/architecture.md)",
                path.display()
            ));
            continue;
        };
        seen.insert(me.clone());
        for dep in after(&code, "crate::") {
            if dep != me && !ok.contains(&dep) {
                wrong.push(format!("{}: `{me}` imports crate::{dep}", path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering of docs/architecture.md:\n{}",
        wrong.join("\n")
    );
    assert!(
        seen.len() >= 12,
        "the crate's modules were not found: {seen:?}"
    );
    // The table itself is a DAG: a layer may import only layers listed before it.
    for (i, (m, deps)) in LAYERS.iter().enumerate() {
        for d in *deps {
            let at = LAYERS.iter().position(|(n, _)| n == d);
            assert!(
                at.is_some_and(|j| j < i),
                "LAYERS lists `{d}` under `{m}` but not before it"
            );
        }
    }
}
