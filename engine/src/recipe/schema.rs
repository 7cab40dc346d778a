//! The JSON Schema of recipes (`rkd-orch schema`), for editors that complete and check YAML
//! as it is typed (VS Code's YAML extension reads the `# yaml-language-server: $schema=…`
//! comment at the top of a recipe). Built from the same key tables as the parser.

use serde_json::{json, Value};

use super::data::{DATA_KEYS, DATA_KINDS, TRANSFORM_KINDS};
use super::keys::{self, STAGE_KINDS, TOP_KEYS};
use super::model::{MODEL_KEYS, MODEL_KINDS};
use super::sampler::SAMPLER_KINDS;
use super::stage::OPT_KINDS;
use crate::spec::{self, LossDecl, OptionType};

/// [`keys::check_name`] as a pattern (`dots`: recipe names may hold `.`).
fn name_pattern(dots: bool) -> String {
    let dot = if dots { "." } else { "" };
    format!(
        "^[A-Za-z0-9][A-Za-z0-9_{dot}-]{{0,{}}}$",
        keys::NAME_MAX_CHARS - 1
    )
}

fn uint(min: u64, description: &str) -> Value {
    json!({"type": "integer", "minimum": min, "description": description})
}

fn number(description: &str) -> Value {
    json!({"type": "number", "description": description})
}

/// A JSON Schema bound: a whole one as an integer (`"minimum": 0`, as written by hand before
/// the loss table), so that the schema's text did not change.
fn bound(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// A loss term: a bare weight, or a mapping with its options, as [`spec::DECLS`] declares it.
fn term(decl: &LossDecl) -> Value {
    let mut props = serde_json::Map::new();
    props.insert(
        "weight".into(),
        json!({"type": "number", "minimum": 0, "description": "weight of the term in the mix"}),
    );
    if decl.on {
        props.insert("on".into(), json!({"type": "string", "pattern": "^(embedding|logits|hidden[1-9][0-9]*)$", "description": "the output both models are compared on"}));
    }
    if decl.keep {
        props.insert("keep".into(), json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "fraction of the relations used at each step"}));
    }
    for o in decl.options {
        let mut p = match o.ty {
            OptionType::Number {
                min,
                strict,
                default,
            } => {
                let min_key = if strict {
                    "exclusiveMinimum"
                } else {
                    "minimum"
                };
                json!({"type": "number", min_key: bound(min), "default": default})
            }
            OptionType::Whole { min, default } => {
                json!({"type": "integer", "minimum": min, "default": default})
            }
            OptionType::Name { names, default } => json!({"enum": names, "default": default}),
        };
        if let Some(d) = o.description {
            p["description"] = json!(d);
        }
        props.insert(o.key.into(), p);
    }
    json!({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "object", "properties": props, "additionalProperties": false}
    ]})
}

/// Adds `path` (and every dotted path below it, through mappings and the mapping branch of
/// an `anyOf`) to `out` as a matrix axis: a non-empty list of values of that key's type.
fn dotted_paths(path: &str, schema: &Value, out: &mut serde_json::Map<String, Value>) {
    out.insert(
        path.to_string(),
        json!({"type": "array", "minItems": 1, "items": schema}),
    );
    let branches: Vec<&Value> = match schema.get("anyOf").and_then(Value::as_array) {
        Some(b) => b.iter().collect(),
        None => vec![schema],
    };
    for branch in branches {
        if let Some(props) = branch.get("properties").and_then(Value::as_object) {
            for (key, sub) in props {
                dotted_paths(&format!("{path}.{key}"), sub, out);
            }
        }
    }
}

pub fn json_schema() -> Value {
    let terms: serde_json::Map<String, Value> = spec::DECLS
        .iter()
        .map(|d| (d.name.to_string(), term(d)))
        .collect();
    let model = json!({
        "type": "object",
        "properties": {
            "kind": {"enum": MODEL_KINDS, "default": "mlp"},
            "hidden": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [256], "description": "mlp: hidden layer widths"},
            "channels": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [32, 64], "description": "convnet: channels of each conv-BN-ReLU-pool block"},
            "depth": {"type": "integer", "minimum": 8, "description": "resnet: 6n+2 (8, 14, 20, 32, …)"},
            "width": {"type": "integer", "minimum": 1, "default": 16, "description": "resnet: channels of the first stage"},
            "embedding": uint(1, "embedding size (default 128)"),
            "l2norm": {"type": "boolean", "default": false},
            "classes": uint(2, "classifier head with this many classes (gives `logits`)"),
        },
        "propertyNames": {"enum": MODEL_KEYS},
    });
    let optimizer = json!({
        "type": "object",
        "properties": {
            "kind": {"enum": OPT_KINDS, "default": "adam"},
            "lr": {"type": "number", "exclusiveMinimum": 0},
            "weight_decay": {"type": "number", "minimum": 0},
        },
        "additionalProperties": false,
    });
    let probe = json!({"anyOf": [
        {"type": "boolean"},
        {"type": "object", "properties": {
            "epochs": uint(1, "default 20"), "lr": number("default 0.01"), "batch_size": uint(1, "default 256")
        }, "additionalProperties": false}
    ]});
    // `kind` is not required here: a stage may take it from `defaults:` or sweep it
    // (`matrix: {sampler.kind: [...]}`), and the parser reports a missing one at its line.
    let sampler = json!({"anyOf": [
        {"const": "random"},
        {"type": "object", "properties": {
            "kind": {"enum": SAMPLER_KINDS},
            "classes_per_batch": uint(1, "class_balanced/superclass: groups per batch"),
            "per_class": uint(1, "samples per group (default batch_size / classes_per_batch)"),
            "clusters": uint(2, "superclass: k of the k-means on the teacher's embeddings"),
            "p": uint(1, "pk: classes per batch"),
            "k": uint(1, "pk: samples per class"),
        }, "additionalProperties": false}
    ]});
    let stage_props = json!({
        "kind": {"enum": STAGE_KINDS},
        "description": {"type": "string"},
        "teacher": {"type": "string", "description": "the stage whose model teaches this one"},
        "generations": uint(1, "self_distill: length of the chain of students"),
        "data": {"type": "string", "description": "a data set declared under `data:`"},
        "model": {"anyOf": [{"type": "string", "description": "evaluate/transfer: the stage whose model is used"}, model]},
        "loss": {"type": "object", "properties": terms, "additionalProperties": false, "minProperties": 1},
        "optimizer": optimizer,
        "sampler": sampler,
        "epochs": uint(0, "0 keeps the freshly initialised model"),
        "batch_size": uint(3, "default 128"),
        "seed": uint(0, "default: the recipe's seed"),
        "recall_at": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [1, 2, 4, 8]},
        "probe": probe,
        "protocol": {"enum": ["metric", "classification"], "default": "metric"},
        "nmi": {"type": "boolean", "default": true},
        "few_shot": {"type": "object", "properties": {
            "ways": uint(2, "classes per episode (default 5)"),
            "shots": uint(1, "support samples per class (default 1)"),
            "queries": uint(1, "query samples per class (default 15)"),
            "episodes": uint(1, "default 600"),
        }, "additionalProperties": false},
    });
    // A swept path takes a list of what the key itself takes, so `loss.cc.p: [0, 2]` is
    // marked as the parser marks it. Paths not listed (none the parser accepts) stay open.
    let mut swept = serde_json::Map::new();
    swept.insert(
        "seeds".into(),
        json!({"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}),
    );
    swept.insert(
        "exclude".into(),
        json!({"type": "array", "items": {"type": "object"}}),
    );
    swept.insert(
        "include".into(),
        json!({"type": "array", "items": {"type": "object"}}),
    );
    for (key, sub) in stage_props.as_object().expect("stage properties") {
        if key != "kind" && key != "description" {
            dotted_paths(key, sub, &mut swept);
        }
    }
    let matrix = json!({
        "type": "object",
        "description": "dotted paths to lists of values; the stage runs once per combination",
        "properties": swept,
        "additionalProperties": {"type": "array", "minItems": 1},
    });
    let mut stage_props = stage_props;
    stage_props["matrix"] = matrix;
    // Per kind, only that kind's keys.
    let per_kind: Vec<Value> = STAGE_KINDS
        .iter()
        .map(|k| {
            json!({
                "if": {"properties": {"kind": {"const": k}}},
                "then": {"propertyNames": {"enum": keys::stage_keys(k).unwrap_or(&[])}}
            })
        })
        .collect();
    let stage = json!({
        "type": "object",
        "required": ["kind"],
        "properties": stage_props,
        "additionalProperties": false,
        "allOf": per_kind,
    });
    let defaults_props: serde_json::Map<String, Value> = keys::default_keys()
        .into_iter()
        .map(|k| (k.to_string(), stage_props[k].clone()))
        .collect();
    let data_set = json!({
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"enum": DATA_KINDS},
            "path": {"type": "string", "description": "fashion-mnist: directory of the IDX files"},
            "train_images": {"type": "string"}, "train_labels": {"type": "string"},
            "test_images": {"type": "string"}, "test_labels": {"type": "string"},
            "classes": uint(2, "synthetic: number of classes"),
            "dim": uint(1, "synthetic: features per sample"),
            "train_per_class": uint(1, "synthetic"),
            "test_per_class": uint(1, "synthetic"),
            "seed": uint(0, "synthetic: generator seed"),
            "train_classes": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            "eval_classes": {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": "classes held out for retrieval; [] = the classification protocol (test on the training classes)"},
            "train_limit": uint(2, "keep the first N training samples"),
            "eval_limit": uint(2, "keep the first N evaluation samples"),
            "labels": {"enum": ["fine", "coarse"], "description": "cifar100: 100 classes or 20 superclasses"},
            "transforms": {"type": "array", "items": {"anyOf": [
                {"const": "invert"},
                {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"enum": TRANSFORM_KINDS},
                    "degrees": number("rotate: angle, counter-clockwise"),
                    "std": number("noise: standard deviation on the [0, 1] pixel scale"),
                    "fraction": number("subsample: share of samples kept, in (0, 1]"),
                    "seed": uint(0, "noise/subsample"),
                }, "additionalProperties": false}
            ]}},
        },
        "propertyNames": {"enum": DATA_KEYS},
    });
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://rkd-orch.invalid/recipe.schema.json",
        "title": "rkd-orch recipe",
        "type": "object",
        "required": ["data", "stages"],
        "properties": {
            "name": {"type": "string", "pattern": name_pattern(true), "description": "the recipe's name in the results (default: the file name)"},
            "description": {"type": "string"},
            "seed": uint(0, "seed of every stage that does not set its own"),
            "data": {"type": "object", "additionalProperties": data_set, "minProperties": 1, "propertyNames": {"pattern": name_pattern(false)}},
            "defaults": {"type": "object", "properties": defaults_props, "additionalProperties": false},
            "stages": {"type": "object", "additionalProperties": stage, "minProperties": 1, "propertyNames": {"pattern": name_pattern(false)}},
        },
        "propertyNames": {"enum": TOP_KEYS},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema and the parser share their key tables; this checks nothing was left out
    /// of the hand-written property types.
    #[test]
    fn every_key_the_parser_accepts_has_a_type_in_the_schema() {
        let s = json_schema();
        let stage = &s["properties"]["stages"]["additionalProperties"];
        for kind in STAGE_KINDS {
            for key in keys::stage_keys(kind).unwrap() {
                assert!(stage["properties"].get(*key).is_some(), "stage key {key}");
            }
        }
        for key in DATA_KEYS {
            let ds = &s["properties"]["data"]["additionalProperties"]["properties"];
            assert!(ds.get(*key).is_some(), "data key {key}");
        }
        for key in MODEL_KEYS {
            assert!(
                stage["properties"]["model"]["anyOf"][1]["properties"]
                    .get(*key)
                    .is_some(),
                "model key {key}"
            );
        }
        for key in keys::default_keys() {
            assert!(s["properties"]["defaults"]["properties"].get(key).is_some());
        }
        for name in spec::Loss::NAMES {
            assert!(stage["properties"]["loss"]["properties"]
                .get(name)
                .is_some());
        }
    }
}
