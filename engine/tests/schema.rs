//! The shipped JSON Schema (`docs/recipe.schema.json`, what editors mark recipes red with)
//! against the engine: every shipped recipe and the test suite's own recipes are valid, and
//! recipes the engine refuses for a reason a schema can express are refused by it too.
//!
//! Recipes are read as an editor's YAML language server reads them (YAML 1.2 core schema:
//! `3` is an integer, `0.5` a number, `true` a boolean) by yaml-rust2, independently of the
//! engine's own loader, and validated by the `jsonschema` crate (draft 7, as declared).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => Number::from_f64(s.parse().expect("a YAML real parses"))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => panic!("unexpected mapping key {other:?}"),
                };
                m.insert(key, yaml_to_json(v));
            }
            Value::Object(m)
        }
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn recipe_json(text: &str) -> Value {
    let docs = YamlLoader::load_from_str(text).expect("the recipe is YAML");
    yaml_to_json(&docs[0])
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(root().join("docs/recipe.schema.json")).expect("the shipped schema"),
    )
    .expect("the schema is JSON");
    jsonschema::draft7::new(&schema).expect("the schema is a valid draft-07 schema")
}

fn errors(v: &jsonschema::Validator, recipe: &Value) -> Vec<String> {
    v.iter_errors(recipe)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn plan_exit(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
        .arg("plan")
        .arg(&path)
        .arg("--runs-dir")
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_recipe_is_valid_under_the_shipped_schema() {
    let v = validator();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let recipe = recipe_json(&std::fs::read_to_string(&path).unwrap());
        let errs = errors(&v, &recipe);
        assert!(
            errs.is_empty(),
            "{} fails docs/recipe.schema.json:\n{}",
            path.display(),
            errs.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} shipped recipes found");
}

/// A synthetic recipe the engine plans, and variants of it that the engine refuses at plan
/// time for reasons a JSON Schema can state (a key, a type, a range, an enum).
const GOOD: &str = r#"
name: schema_probe
data:
  syn: {kind: synthetic, classes: 6, dim: 8, train_per_class: 8, test_per_class: 4, eval_classes: []}
defaults:
  data: syn
  epochs: 1
  sampler: {kind: class_balanced, classes_per_batch: 2}
stages:
  t:
    kind: train
    model: {kind: mlp, hidden: [8], embedding: 4, classes: 3}
    loss: {ce: 1.0}
    batch_size: 16
  s:
    kind: distill
    teacher: t
    model: {kind: mlp, hidden: [8], embedding: 4, classes: 3}
    loss: {kd: {weight: 1.0, temperature: 4}, cc: {weight: 0.5, p: 2}}
    batch_size: 16
    matrix:
      loss.cc.p: [1, 2]
  e: {kind: evaluate, model: s, protocol: classification}
"#;

#[test]
fn the_schema_accepts_what_the_engine_plans_and_refuses_what_it_refuses() {
    let v = validator();
    let (code, err) = plan_exit(GOOD);
    assert_eq!(code, 0, "the probe recipe must plan: {err}");
    let errs = errors(&v, &recipe_json(GOOD));
    assert!(errs.is_empty(), "{}", errs.join("\n"));

    let bad: &[(&str, &str, &str)] = &[
        (
            "unknown top-level key",
            "name: schema_probe",
            "name: schema_probe\nnmae: x",
        ),
        (
            "unknown stage key",
            "batch_size: 16\n  s:",
            "batch_size: 16\n    epoch: 2\n  s:",
        ),
        ("unknown stage kind", "kind: distill", "kind: distil"),
        (
            "negative loss weight",
            "loss: {ce: 1.0}",
            "loss: {ce: -1.0}",
        ),
        ("unknown loss", "loss: {ce: 1.0}", "loss: {cee: 1.0}"),
        ("wrong type", "epochs: 1", "epochs: one"),
        (
            "batch below the minimum",
            "batch_size: 16\n  s:",
            "batch_size: 2\n  s:",
        ),
        ("Taylor order 0", "p: [1, 2]", "p: [0, 2]"),
        ("unknown data kind", "kind: synthetic", "kind: synthetc"),
        (
            "unknown sampler kind",
            "kind: class_balanced",
            "kind: balanced",
        ),
        (
            "unknown model key",
            "hidden: [8], embedding: 4, classes: 3}\n    loss: {ce",
            "hidden: [8], embeding: 4, classes: 3}\n    loss: {ce",
        ),
        ("empty loss", "loss: {ce: 1.0}", "loss: {}"),
        (
            "a recipe name that is a path",
            "name: schema_probe",
            "name: ../../tmp/victim",
        ),
        (
            "a stage name with a dot",
            "  e: {kind: evaluate",
            "  e.v: {kind: evaluate",
        ),
        (
            "a data set name with a slash",
            "  syn: {kind",
            "  s/yn: {kind",
        ),
        (
            "unknown protocol",
            "protocol: classification}",
            "protocol: classify}",
        ),
        (
            "a key of another stage kind",
            "kind: distill\n    teacher: t",
            "kind: distill\n    protocol: metric\n    teacher: t",
        ),
    ];
    for (what, from, to) in bad {
        assert!(
            GOOD.contains(from),
            "{what}: `{from}` not in the probe recipe"
        );
        let text = GOOD.replacen(from, to, 1);
        let (code, err) = plan_exit(&text);
        assert_eq!(code, 2, "{what}: the engine must refuse it (exit 2): {err}");
        assert!(
            !errors(&v, &recipe_json(&text)).is_empty(),
            "{what}: the engine refuses it ({}) but the schema accepts it",
            err.lines().next().unwrap_or("")
        );
    }
}
