//! `rkd-orch db rebuild`: the results database is derived, so it can be made again from
//! files alone — every committed cache entry (`result.json` + `manifest.json`) and each
//! recipe's snapshot of its stage bindings (`runs/recipes/<name>.json`, written by every
//! run). The old database is kept beside it as `results.sqlite.bak-<time>`.
//!
//! What only the database knew is not restored: the errors of failed stages and the history
//! of earlier invocations.

use std::fs;
use std::path::PathBuf;

use serde::Deserialize;

use crate::cache::{Lookup, MANIFEST_FILE};
use crate::recipe::Param;
use crate::run::RunsDir;
use crate::store::{Binding, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a recipe snapshot: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Snapshot {
    recipe: String,
    file: String,
    recipe_sha256: String,
    stages: Vec<SnapStage>,
}

#[derive(Deserialize)]
struct SnapStage {
    name: String,
    base: String,
    kind: String,
    run_kind: String,
    key: String,
    params: Vec<SnapParam>,
}

#[derive(Deserialize)]
struct SnapParam {
    origin: String,
    path: String,
    label: String,
    value: String,
    #[serde(default = "yes")]
    named: bool,
}

fn yes() -> bool {
    true
}

/// What the rebuild found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub entries: usize,
    pub corrupt: Vec<String>,
    pub recipes: usize,
    pub bindings: usize,
    pub backup: Option<PathBuf>,
}

pub fn rebuild(runs: &RunsDir) -> Result<Rebuilt, RebuildError> {
    let io =
        |what: &'static str, path: PathBuf| move |source| RebuildError::Io { what, path, source };
    let mut out = Rebuilt::default();
    let db = runs.db();
    if db.exists() {
        let backup = db.with_extension(format!("sqlite.bak-{}", crate::cache::unix_now()));
        fs::rename(&db, &backup).map_err(io("cannot move aside", db.clone()))?;
        for ext in ["sqlite-wal", "sqlite-shm"] {
            let side = db.with_extension(ext);
            if side.exists() {
                let _ = fs::rename(&side, backup.with_extension(format!("{ext}.bak")));
            }
        }
        out.backup = Some(backup);
    }
    let mut store = Store::open_rw(&db)?;
    let cache = runs.cache();
    let mut keys: Vec<String> = match fs::read_dir(cache.root()) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 32 && n.chars().all(|c| c.is_ascii_hexdigit()))
            .collect(),
        Err(_) => Vec::new(),
    };
    keys.sort();
    for key in keys {
        match cache.lookup(&key) {
            Lookup::Done(result) => {
                let path = cache.entry(&key).join(MANIFEST_FILE);
                let manifest = fs::read_to_string(&path).map_err(io("cannot read", path))?;
                store.ingest(&result, &manifest)?;
                out.entries += 1;
            }
            Lookup::Corrupt(why) => out.corrupt.push(format!("{key}: {why}")),
            Lookup::Missing => {}
        }
    }
    let mut snaps: Vec<PathBuf> = match fs::read_dir(runs.recipes()) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    snaps.sort();
    for path in snaps {
        let bytes = fs::read(&path).map_err(io("cannot read", path.clone()))?;
        let snap: Snapshot =
            serde_json::from_slice(&bytes).map_err(|source| RebuildError::Snapshot {
                path: path.clone(),
                source,
            })?;
        let invocation = store.begin_invocation(
            &snap.recipe,
            &snap.file,
            &snap.recipe_sha256,
            "rkd-orch db rebuild",
        )?;
        for s in &snap.stages {
            let params: Vec<Param> = s
                .params
                .iter()
                .map(|p| Param {
                    origin: p.origin.clone(),
                    path: p.path.clone(),
                    label: p.label.clone(),
                    value: p.value.clone(),
                    named: p.named,
                })
                .collect();
            store.bind_stage(
                &Binding {
                    recipe: &snap.recipe,
                    stage: &s.name,
                    base: &s.base,
                    kind: &s.run_kind,
                    declared_kind: &s.kind,
                    key: &s.key,
                    params: &params,
                },
                invocation,
            )?;
            out.bindings += 1;
        }
        store.finish_invocation(invocation, "rebuilt")?;
        out.recipes += 1;
    }
    Ok(out)
}
