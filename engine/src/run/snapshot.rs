//! `runs/recipes/<recipe>.json`: what a recipe's stages are bound to (names, kinds, keys,
//! inputs, swept parameters), written by every run so that `rkd-orch db rebuild` can restore
//! the bindings from files alone. One type, written here and read back by
//! [`crate::rebuild`].
//!
//! Fields are declared in alphabetical order: the files were first written through an
//! untyped (sorted) JSON map, and this keeps them byte for byte as they were.

use std::fs;

use serde::{Deserialize, Serialize};

use super::{io, RunError, RunsDir};
use crate::plan::Plan;
use crate::recipe::Param;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The recipe file, as typed.
    pub file: String,
    pub recipe: String,
    pub recipe_sha256: String,
    /// In dependency order.
    pub stages: Vec<SnapshotStage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SnapshotStage {
    /// The name declared under `stages:`.
    pub base: String,
    #[serde(default)]
    pub inputs: Vec<SnapshotInput>,
    pub key: String,
    /// The declared kind (`self_distill`).
    pub kind: String,
    pub name: String,
    pub params: Vec<SnapshotParam>,
    /// The kind it runs as (`distill`).
    pub run_kind: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SnapshotInput {
    pub role: String,
    /// The name of the stage that provides it.
    pub stage: String,
}

/// A swept parameter: [`Param`], as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SnapshotParam {
    pub label: String,
    /// Snapshots written before parameters could be unnamed have no `named`: they were all
    /// named.
    #[serde(default = "yes")]
    pub named: bool,
    pub origin: String,
    pub path: String,
    pub value: String,
}

fn yes() -> bool {
    true
}

impl From<&Param> for SnapshotParam {
    fn from(p: &Param) -> Self {
        SnapshotParam {
            label: p.label.clone(),
            named: p.named,
            origin: p.origin.clone(),
            path: p.path.clone(),
            value: p.value.clone(),
        }
    }
}

impl From<&SnapshotParam> for Param {
    fn from(p: &SnapshotParam) -> Self {
        Param {
            origin: p.origin.clone(),
            path: p.path.clone(),
            label: p.label.clone(),
            value: p.value.clone(),
            named: p.named,
        }
    }
}

impl Snapshot {
    pub fn of(plan: &Plan) -> Self {
        let stages = plan
            .order
            .iter()
            .map(|&i| {
                let s = &plan.stages[i];
                SnapshotStage {
                    base: s.base.clone(),
                    inputs: s
                        .inputs
                        .iter()
                        .map(|(role, src)| SnapshotInput {
                            role: role.clone(),
                            stage: plan.stages[*src].name.clone(),
                        })
                        .collect(),
                    key: s.key.clone(),
                    kind: s.kind.clone(),
                    name: s.name.clone(),
                    params: s.params.iter().map(SnapshotParam::from).collect(),
                    run_kind: s.config.kind().to_string(),
                }
            })
            .collect();
        Snapshot {
            file: plan.file.clone(),
            recipe: plan.recipe.clone(),
            recipe_sha256: plan.recipe_sha256.clone(),
            stages,
        }
    }

    /// Parses a snapshot file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Writes `plan`'s snapshot to `runs/recipes/<recipe>.json`, by rename.
pub fn write_snapshot(plan: &Plan, runs: &RunsDir) -> Result<(), RunError> {
    let dir = runs.recipes();
    // The file is named after the recipe, so only a checked name may make it (the parser
    // refuses any other; this keeps a plan built some other way inside `runs/recipes/`).
    if let Err(why) = crate::recipe::keys::check_name(&plan.recipe, true) {
        return Err(RunError::Io {
            what: "refusing to name a snapshot after the recipe in",
            path: dir,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        });
    }
    fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let path = runs.snapshot(&plan.recipe);
    let tmp = dir.join(format!(".{}.json.tmp-{}", plan.recipe, std::process::id()));
    let bytes = serde_json::to_vec_pretty(&Snapshot::of(plan)).expect("serialisable");
    fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot as the untyped writer made it (keys sorted), one parameter without
    /// `named` as the first snapshots had.
    const WRITTEN: &str = r#"{
  "file": "r.yaml",
  "recipe": "r",
  "recipe_sha256": "abc",
  "stages": [
    {
      "base": "t",
      "inputs": [],
      "key": "k0",
      "kind": "train",
      "name": "t[seed=1]",
      "params": [
        {
          "label": "seed",
          "named": false,
          "origin": "t",
          "path": "seed",
          "value": "1"
        }
      ],
      "run_kind": "train"
    },
    {
      "base": "s",
      "inputs": [
        {
          "role": "teacher",
          "stage": "t[seed=1]"
        }
      ],
      "key": "k1",
      "kind": "self_distill",
      "name": "s",
      "params": [],
      "run_kind": "distill"
    }
  ]
}"#;

    #[test]
    fn the_file_reads_back_and_writes_byte_for_byte() {
        let snap = Snapshot::parse(WRITTEN.as_bytes()).unwrap();
        assert_eq!(snap.stages[1].inputs[0].stage, "t[seed=1]");
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&snap).unwrap()).unwrap(),
            WRITTEN
        );
        let param = Param::from(&snap.stages[0].params[0]);
        assert!(!param.named);
        assert_eq!(SnapshotParam::from(&param), snap.stages[0].params[0]);
    }

    #[test]
    fn old_snapshots_without_named_or_inputs_still_read() {
        let old = r#"{"recipe": "r", "file": "r.yaml", "recipe_sha256": "abc",
            "stages": [{"name": "a", "base": "a", "kind": "train", "run_kind": "train",
            "key": "k", "params": [{"origin": "a", "path": "seed", "label": "seed",
            "value": "1"}]}]}"#;
        let snap = Snapshot::parse(old.as_bytes()).unwrap();
        assert!(snap.stages[0].params[0].named, "named by default");
        assert!(snap.stages[0].inputs.is_empty());
    }
}
