//! `rkd-orch gc`: frees the disk space of cache entries that no recipe in the database
//! refers to any more (old configurations, abandoned sweeps), with their logs and specs,
//! plus leftovers of killed processes. Entries that some recipe's stage is bound to are never
//! touched, nor anything a live process is writing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::layout::{self, is_key, CacheName};
use crate::cache::RunsLayout;
use crate::run::lock::KeyLock;
use crate::store::{Store, StoreError};

/// Something `gc` removes (or would remove, with `--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage {
    pub path: PathBuf,
    pub bytes: u64,
    pub why: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn size_of(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// What `gc` would remove from `runs`.
pub fn find(runs: &RunsLayout) -> Result<Vec<Garbage>, GcError> {
    // gc writes files, not the database: reading it is enough (and never migrates it).
    let store = Store::open_for_reading(&runs.db())?;
    let keep: BTreeSet<String> = store.referenced_keys()?;
    let locked = |key: &str| KeyLock::is_held(&runs.locks(), key);
    let mut out = Vec::new();
    let cache_root = runs.cache_root();
    let rd = match fs::read_dir(&cache_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(GcError::Io {
                path: cache_root,
                source,
            })
        }
    };
    let mut push = |path: PathBuf, why| {
        out.push(Garbage {
            bytes: size_of(&path),
            path,
            why,
        })
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        match CacheName::parse(&name) {
            CacheName::Entry(key) if !keep.contains(key) && !locked(key) => {
                push(path, "no recipe refers to it")
            }
            // A stage process that died before committing.
            CacheName::Tmp { key, pid } if pid.is_some_and(|p| !pid_alive(p)) && !locked(key) => {
                push(path, "left by a killed stage")
            }
            CacheName::Checkpoints(key) if !keep.contains(key) && !locked(key) => {
                push(path, "checkpoints of a stage no recipe refers to")
            }
            // Shared artifacts of one teacher, dropped with it.
            CacheName::Derived => {
                for f in fs::read_dir(&path).into_iter().flatten().flatten() {
                    let fname = f.file_name().to_string_lossy().into_owned();
                    if let Some(t) = layout::teacher_of_derived(&fname) {
                        if !keep.contains(t) && !locked(t) {
                            push(f.path(), "derived from a teacher no recipe refers to");
                        }
                    }
                }
            }
            CacheName::Corrupt => push(path, "quarantined corrupt entries"),
            _ => {}
        }
    }
    // Logs and specs of keys that are gone or going.
    let gone: BTreeSet<String> = out
        .iter()
        .filter_map(|g| g.path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| is_key(n))
        .collect();
    for dir in [runs.logs(), runs.specs()] {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(key) = RunsLayout::key_of_log_or_spec(&name) {
                    let orphan = gone.contains(key)
                        || (is_key(key)
                            && !keep.contains(key)
                            && !layout::entry(&cache_root, key).exists());
                    if orphan && !locked(key) {
                        out.push(Garbage {
                            bytes: size_of(&e.path()),
                            path: e.path(),
                            why: "log or spec of a removed stage",
                        });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes what [`find`] found; returns what was removed.
pub fn collect(runs: &RunsLayout) -> Result<Vec<Garbage>, GcError> {
    let found = find(runs)?;
    for g in &found {
        let r = if g.path.is_dir() {
            fs::remove_dir_all(&g.path)
        } else {
            fs::remove_file(&g.path)
        };
        if let Err(source) = r {
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(GcError::Io {
                    path: g.path.clone(),
                    source,
                });
            }
        }
    }
    Ok(found)
}
