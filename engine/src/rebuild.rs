//! `rkd-orch db rebuild`: the results database is derived, so it can be made again from
//! files alone — every committed cache entry (`result.json` + `manifest.json`) and each
//! recipe's snapshot of its stage bindings (`runs/recipes/<name>.json`, written by every
//! run). The old database is kept beside it as `results.sqlite.bak-<time>` (`-<n>` added
//! when that name is taken), one file that opens as the old database did.
//!
//! What only the database knew is not restored: the errors of failed stages and the history
//! of earlier invocations.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::backup::Progress;
use rusqlite::{Connection, OpenFlags, MAIN_DB};

use crate::cache::{Lookup, MANIFEST_FILE};
use crate::recipe::Param;
use crate::run::{RunsDir, Snapshot};
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

/// What the rebuild found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub entries: usize,
    pub corrupt: Vec<String>,
    pub recipes: usize,
    pub bindings: usize,
    pub backup: Option<PathBuf>,
}

/// SQLite's companions of a database file `X`: `X-wal` (committed transactions not yet
/// copied into `X`, after a killed run) and `X-shm` (the WAL's index).
const SIDECARS: [&str; 2] = ["-wal", "-shm"];

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Moves the database `db` aside to a new `results.sqlite.bak-<time>[-n]` and returns its
/// path. SQLite's backup API copies what a reader sees, the WAL of a killed run included,
/// into one self-contained file. A database SQLite cannot read (damaged, or not a
/// database) is kept byte for byte instead: renamed with its `-wal` and `-shm` beside it
/// under the backup's name, which is where SQLite looks for them.
fn back_up(db: &Path) -> Result<PathBuf, RebuildError> {
    let dir = db.parent().unwrap_or(Path::new("."));
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    let stem = format!("{name}.bak-{}", crate::cache::unix_now());
    let backup = crate::cache::unique_path(dir, &stem, &SIDECARS);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RebuildError::Io { what, path, source }
    };
    let copied = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|src| src.backup(MAIN_DB, &backup, None::<fn(Progress)>));
    match copied {
        Ok(()) => {
            for path in
                std::iter::once(db.to_path_buf()).chain(SIDECARS.iter().map(|s| with_suffix(db, s)))
            {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("cannot remove", &path)(e))
                    }
                    _ => {}
                }
            }
        }
        Err(_) => {
            let _ = fs::remove_file(&backup); // what the failed copy may have created
            fs::rename(db, &backup).map_err(io("cannot move aside", db))?;
            for s in SIDECARS {
                let side = with_suffix(db, s);
                if side.exists() {
                    let to = with_suffix(&backup, s);
                    fs::rename(&side, &to).map_err(io("cannot move aside", &side))?;
                }
            }
        }
    }
    Ok(backup)
}

pub fn rebuild(runs: &RunsDir) -> Result<Rebuilt, RebuildError> {
    let io =
        |what: &'static str, path: PathBuf| move |source| RebuildError::Io { what, path, source };
    let mut out = Rebuilt::default();
    let db = runs.db();
    if db.exists() {
        out.backup = Some(back_up(&db)?);
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
        let snap = Snapshot::parse(&bytes).map_err(|source| RebuildError::Snapshot {
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
            let params: Vec<Param> = s.params.iter().map(Param::from).collect();
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
