//! The results store: `runs/results.sqlite`, derived from the cache and written only by the
//! coordinator (one connection, WAL, busy timeout, IMMEDIATE write transactions), so that
//! readers — `rkd-orch results`, `sqlite3`, pandas — can query it while a run is going.
//!
//! The schema is documented in `docs/results.md`.

mod read;
pub mod schema;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::cache::RunsLayout;
use crate::plan::PlannedStage;
use crate::recipe::Param;
use crate::spec::StageResult;

pub use read::{
    EpochRows, Invocation, QueryError, QueryResult, Selection, SqlValue, StageRecord, StoredParam,
};

/// `PRAGMA user_version` of the schema this build writes: the number of migrations.
pub const SCHEMA_VERSION: i64 = schema::MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "results database {path} has schema version {found}, newer than this rkd-orch understands ({SCHEMA_VERSION}); use a newer rkd-orch"
    )]
    TooNew { path: String, found: i64 },
    #[error("no results database at {0}; run a recipe first (`rkd-orch run RECIPE`)")]
    Missing(String),
    #[error(
        "results database {0} is empty (no run has written it yet); run a recipe first \
         (`rkd-orch run RECIPE`)"
    )]
    Empty(String),
    #[error(
        "{path} is not an rkd-orch results database ({what}); it was left as it is. Point \
         --runs-dir at a runs directory, or move the file away: `rkd-orch run` or \
         `rkd-orch db rebuild` then create a new one"
    )]
    Foreign { path: String, what: String },
    #[error(
        "results database {path} is damaged ({source}); it is derived from the cache beside \
         it: `rkd-orch db rebuild --runs-dir DIR` makes it again, keeping this one as a backup"
    )]
    Damaged {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Whether a SQLite error means the database itself cannot be used (damaged, unreadable,
/// locked, the disk full) rather than that a statement is wrong.
pub fn is_database_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseCorrupt
                | NotADatabase
                | SystemIoFailure
                | CannotOpen
                | DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | ReadOnly
                | PermissionDenied
                | OutOfMemory
                | FileLockingProtocolFailed
                | NoLargeFileSupport
        )
    )
}

/// What a database file holds, judged before anything is written to it.
enum Contents {
    /// No tables and no version: a new (or zero-length) file.
    Empty,
    /// An rkd-orch database of this schema version.
    Ours(i64),
}

/// The tables every rkd-orch schema version has (version 1's).
const OUR_TABLES: [&str; 5] = [
    "invocations",
    "stages",
    "recipe_stages",
    "metrics",
    "epoch_metrics",
];

/// Reads the version and the table names, so that a file that is not ours is refused
/// before a migration adds rkd-orch's tables to it.
fn inspect(conn: &Connection, path: &str) -> Result<Contents, StoreError> {
    let wrap = sqlite_err(path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&wrap)?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(&wrap)?;
    let objects: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(&wrap)?;
    if version == 0 && objects == 0 {
        return Ok(Contents::Empty);
    }
    let missing: Vec<&str> = OUR_TABLES
        .iter()
        .copied()
        .filter(|t| !tables.iter().any(|have| have == t))
        .collect();
    // A newer rkd-orch may have any tables; a file with none cannot be another program's.
    if version > SCHEMA_VERSION && (missing.is_empty() || tables.is_empty()) {
        return Err(StoreError::TooNew {
            path: path.to_string(),
            found: version,
        });
    }
    if version <= 0 || !missing.is_empty() {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        let what = format!(
            "user_version {version}, tables [{}{}], no `{}` table",
            shown.join(", "),
            if tables.len() > shown.len() {
                ", …"
            } else {
                ""
            },
            missing.first().copied().unwrap_or(OUR_TABLES[0])
        );
        return Err(StoreError::Foreign {
            path: path.to_string(),
            what,
        });
    }
    Ok(Contents::Ours(version))
}

/// The cache beside the database `db` (both live in one runs directory).
fn cache_dir_of(db: &Path) -> PathBuf {
    RunsLayout::new(db.parent().unwrap_or(Path::new("."))).cache_root()
}

/// Wraps a rusqlite error with the database's path; a damaged file says how to remake it.
fn sqlite_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    move |source| match source.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => StoreError::Damaged {
            path: path.to_string(),
            source,
        },
        _ => StoreError::Sqlite {
            path: path.to_string(),
            source,
        },
    }
}

pub struct Store {
    conn: Connection,
    path: String,
    /// `cache/` beside the database (the layout of a runs directory, `runs/README.md`):
    /// where ingest finds artifact files to record their sizes.
    cache_dir: PathBuf,
}

/// What the coordinator records when it binds a stage of a plan: the stage's name in the
/// recipe, what it was declared as, and the swept parameters that made it.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub recipe: &'a str,
    /// The expanded name (`student[p=2,seed=1]`).
    pub stage: &'a str,
    /// The name declared under `stages:` (`student`).
    pub base: &'a str,
    /// The kind that runs (`train`, `distill`, `evaluate`, `transfer`).
    pub kind: &'a str,
    /// The declared kind (`self_distill` generations run as `distill`).
    pub declared_kind: &'a str,
    pub key: &'a str,
    /// Swept parameters, own and inherited (an evaluation carries those of its model).
    pub params: &'a [Param],
}

impl<'a> Binding<'a> {
    pub fn planned(recipe: &'a str, s: &'a PlannedStage) -> Self {
        Self {
            recipe,
            stage: &s.name,
            base: &s.base,
            kind: s.config.kind(),
            declared_kind: &s.kind,
            key: &s.key,
            params: &s.params,
        }
    }
}

/// What a run records about where its stages come from, besides the recipe's name.
#[derive(Debug, Clone, Copy)]
pub struct NewInvocation<'a> {
    pub recipe: &'a str,
    /// The recipe file as the user typed it.
    pub file: &'a str,
    /// Its absolute path, where it can be resolved (two spellings of one file are one file).
    pub path: Option<&'a str>,
    pub sha256: &'a str,
    pub command: &'a str,
    /// The `--set PATH=VALUE` arguments, as typed, in order; `None` where they are not
    /// known (a database rebuilt from the cache).
    pub sets: Option<&'a [String]>,
}

/// The recipe keys whose override changes the *scale* of an experiment — how long it
/// trains, how much data it sees, how many episodes estimate a metric — rather than what it
/// is: a run that `--set`s one of them is a *smoke* run, and its numbers are not the
/// recipe's. Any key ending in `_per_class` counts too (`train_per_class`,
/// `test_per_class`); a sampler's bare `per_class` (the batch's shape) does not.
pub const SCALE_KEYS: &[&str] = &[
    "epochs",
    "generations",
    "train_limit",
    "eval_limit",
    "test_limit",
    "episodes",
];

fn is_scale_key(key: &str) -> bool {
    SCALE_KEYS.contains(&key) || (key.len() > "_per_class".len() && key.ends_with("_per_class"))
}

/// Whether a YAML value sets a scale key anywhere inside it (`--set
/// 'data.fmnist={kind: fashion_mnist, train_limit: 500}'`).
fn sets_scale_key(node: &marked_yaml::Node) -> bool {
    match node {
        marked_yaml::Node::Mapping(m) => m
            .iter()
            .any(|(k, v)| is_scale_key(k.as_str()) || sets_scale_key(v)),
        marked_yaml::Node::Sequence(s) => s.iter().any(sets_scale_key),
        marked_yaml::Node::Scalar(_) => false,
    }
}

/// The `--set` arguments (`PATH=VALUE`, as typed) that change a scale key ([`SCALE_KEYS`]):
/// the last part of the path (`stages.*.epochs`, `data.fmnist.train_limit`, a matrix over
/// `epochs`), or a key inside a mapping value.
pub fn scale_overrides(sets: &[String]) -> Vec<&str> {
    sets.iter()
        .filter(|raw| match crate::recipe::SetArg::parse(raw, 0) {
            Ok(set) => {
                let last = set
                    .path
                    .last()
                    .map_or("", |p| p.rsplit('.').next().unwrap_or(p));
                is_scale_key(last) || sets_scale_key(&set.value)
            }
            // A run never records an argument that does not parse; an old row might.
            Err(_) => false,
        })
        .map(String::as_str)
        .collect()
}

/// A parameter value as a number where it is one (`2`, `0.5`, `1e-3`), for numeric
/// comparisons and axes; `None` for labels such as `superclass`.
pub fn numeric(value: &str) -> Option<f64> {
    value.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One row of the `results` view.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub recipe: String,
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub metric: String,
    pub value: f64,
    pub split: String,
}

impl Store {
    /// Opens (creating and migrating if needed) the database for writing: only the
    /// commands that write it (`run`, `db rebuild`) do this. A file that is not an rkd-orch
    /// database is refused before anything is written to it.
    pub fn open_rw(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let wrap = sqlite_err(&p);
        let conn = Connection::open(path).map_err(&wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&wrap)?;
        // Before `journal_mode`, which already writes to the file.
        inspect(&conn, &p)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&wrap)?;
        let mut store = Self {
            conn,
            path: p.clone(),
            cache_dir: cache_dir_of(path),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only: the connection cannot write
    /// (`SQLITE_OPEN_READ_ONLY`, and `PRAGMA query_only` as a second lock). In WAL mode it
    /// reads the last committed state while a run writes. Nothing is checked: see
    /// [`Store::open_for_reading`].
    pub fn open_ro(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        if !path.exists() {
            return Err(StoreError::Missing(p));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(&p))?;
        let store = Self {
            conn,
            path: p,
            cache_dir: cache_dir_of(path),
        };
        store.wrap(store.conn.busy_timeout(std::time::Duration::from_secs(10)))?;
        store.wrap(store.conn.pragma_update(None, "query_only", true))?;
        Ok(store)
    }

    /// Opens a database for the commands that only read it (`results`, `query`, `plot`,
    /// `report`, `export`, `status`, `plan`, `gc`), which never write it: read-only, and
    /// refused unless it is an rkd-orch database this build understands (an empty file
    /// says to run a recipe first). A database written by an older rkd-orch is copied into
    /// memory and the copy upgraded, so that it reads as a current one while the file stays
    /// as it was (the next `run` upgrades the file).
    pub fn open_for_reading(path: &Path) -> Result<Self, StoreError> {
        let ro = Self::open_ro(path)?;
        match inspect(&ro.conn, &ro.path)? {
            Contents::Empty => Err(StoreError::Empty(ro.path)),
            Contents::Ours(SCHEMA_VERSION) => Ok(ro),
            Contents::Ours(_) => {
                let wrap = sqlite_err(&ro.path);
                let mut mem = Connection::open_in_memory().map_err(&wrap)?;
                rusqlite::backup::Backup::new(&ro.conn, &mut mem)
                    .and_then(|b| b.run_to_completion(1000, std::time::Duration::ZERO, None))
                    .map_err(&wrap)?;
                let mut copy = Self {
                    conn: mem,
                    path: ro.path.clone(),
                    cache_dir: ro.cache_dir.clone(),
                };
                copy.migrate()?;
                copy.wrap(copy.conn.pragma_update(None, "query_only", true))?;
                Ok(copy)
            }
        }
    }

    /// The invocations still marked `running`: live runs, or runs that ended without
    /// closing theirs (killed, or the disk was full); see `run::close_abandoned`.
    pub fn running_invocations(&self) -> Result<Vec<i64>, StoreError> {
        self.wrap(
            self.conn
                .prepare("SELECT id FROM invocations WHERE status = 'running' ORDER BY id")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect()),
        )
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.wrap(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    fn wrap<T>(&self, r: rusqlite::Result<T>) -> Result<T, StoreError> {
        r.map_err(sqlite_err(&self.path))
    }

    /// Runs the migrations after the database's version, all in one transaction: a
    /// database is either upgraded completely or left as it was.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let wrap = sqlite_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&wrap)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&wrap)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
            });
        }
        for sql in &schema::MIGRATIONS[version.max(0) as usize..] {
            tx.execute_batch(sql).map_err(&wrap)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(&wrap)?;
        tx.commit().map_err(&wrap)
    }

    /// Records the start of a run without overrides (`db rebuild`, which restores bindings
    /// from files that do not say what a run overrode).
    pub fn begin_invocation(
        &self,
        recipe: &str,
        file: &str,
        sha: &str,
        command: &str,
    ) -> Result<i64, StoreError> {
        self.begin_run(&NewInvocation {
            recipe,
            file,
            path: None,
            sha256: sha,
            command,
            sets: None,
        })
    }

    /// Records the start of a run: the recipe file (as typed and absolute), its hash, the
    /// command line, every `--set` and whether one of them is a smoke override.
    pub fn begin_run(&self, inv: &NewInvocation) -> Result<i64, StoreError> {
        let sets = inv
            .sets
            .map(|s| serde_json::to_string(s).expect("strings serialise"));
        let smoke = inv.sets.map(|s| !scale_overrides(s).is_empty());
        self.wrap(self.conn.execute(
            "INSERT INTO invocations (recipe, recipe_file, recipe_sha256, command, engine_version, recipe_path, sets, smoke)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                inv.recipe,
                inv.file,
                inv.sha256,
                inv.command,
                env!("CARGO_PKG_VERSION"),
                inv.path,
                sets,
                smoke
            ],
        ))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_invocation(&self, id: i64, status: &str) -> Result<(), StoreError> {
        self.wrap(self.conn.execute(
            "UPDATE invocations SET status = ?2, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
            params![id, status],
        ))?;
        Ok(())
    }

    /// Records that a stage of a recipe is the stage with `key` (replacing an older key
    /// after the recipe changed), with its declared name and kind and its parameters.
    pub fn bind_stage(&mut self, b: &Binding, invocation: i64) -> Result<(), StoreError> {
        let wrap = sqlite_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&wrap)?;
        tx.execute(
            "INSERT INTO recipe_stages (recipe, stage, key, kind, invocation_id, base, declared_kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (recipe, stage) DO UPDATE SET key = excluded.key, kind = excluded.kind,
               invocation_id = excluded.invocation_id, base = excluded.base,
               declared_kind = excluded.declared_kind",
            params![b.recipe, b.stage, b.key, b.kind, invocation, b.base, b.declared_kind],
        )
        .map_err(&wrap)?;
        tx.execute(
            "DELETE FROM params WHERE recipe = ?1 AND stage = ?2",
            params![b.recipe, b.stage],
        )
        .map_err(&wrap)?;
        {
            // OR REPLACE: a parameter list never repeats (origin, path) — the expander
            // merges them — but a binding must not fail a run over it.
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO params
                       (recipe, stage, stage_key, position, origin, path, label, value, value_num)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(&wrap)?;
            for (i, p) in b.params.iter().enumerate() {
                ins.execute(params![
                    b.recipe,
                    b.stage,
                    b.key,
                    i as i64,
                    p.origin,
                    p.path,
                    p.label,
                    p.value,
                    numeric(&p.value)
                ])
                .map_err(&wrap)?;
            }
        }
        tx.commit().map_err(&wrap)
    }

    /// Ingests a finished stage's result (idempotent: re-ingesting replaces the rows).
    pub fn ingest(&mut self, result: &StageResult, manifest: &str) -> Result<(), StoreError> {
        let wrap = sqlite_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&wrap)?;
        tx.execute(
            "INSERT INTO stages (key, kind, manifest, status, wall_s, threads, device, checkpoint, error, finished_at)
             VALUES (?1, ?2, ?3, 'done', ?4, ?5, ?6, ?7, NULL, strftime('%Y-%m-%dT%H:%M:%SZ', ?8, 'unixepoch'))
             ON CONFLICT (key) DO UPDATE SET status = 'done', wall_s = excluded.wall_s, threads = excluded.threads,
               device = excluded.device, checkpoint = excluded.checkpoint, error = NULL, finished_at = excluded.finished_at",
            params![
                result.key,
                result.kind,
                manifest,
                result.wall_s,
                result.threads as i64,
                result.device,
                result.checkpoint,
                result.finished_unix as i64
            ],
        )
        .map_err(&wrap)?;
        tx.execute("DELETE FROM metrics WHERE key = ?1", params![result.key])
            .map_err(&wrap)?;
        tx.execute(
            "DELETE FROM epoch_metrics WHERE key = ?1",
            params![result.key],
        )
        .map_err(&wrap)?;
        tx.execute("DELETE FROM artifacts WHERE key = ?1", params![result.key])
            .map_err(&wrap)?;
        {
            let mut ins = tx
                .prepare("INSERT INTO metrics (key, name, value, split) VALUES (?1, ?2, ?3, ?4)")
                .map_err(&wrap)?;
            for m in &result.metrics {
                ins.execute(params![result.key, m.name, m.value, m.split])
                    .map_err(&wrap)?;
            }
            let mut ins = tx
                .prepare(
                    "INSERT INTO epoch_metrics (key, epoch, name, value) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&wrap)?;
            for e in &result.epochs {
                for (name, v) in &e.losses {
                    ins.execute(params![
                        result.key,
                        e.epoch as i64,
                        format!("loss/{name}"),
                        v
                    ])
                    .map_err(&wrap)?;
                }
            }
            let mut ins = tx
                .prepare("INSERT INTO artifacts (key, file, sha256, bytes) VALUES (?1, ?2, ?3, ?4)")
                .map_err(&wrap)?;
            let dir = self.cache_dir.join(&result.key);
            for (file, sha) in &result.artifacts {
                // The size is a convenience for people browsing; the checksum is the truth.
                let bytes = std::fs::metadata(dir.join(file))
                    .ok()
                    .map(|m| m.len() as i64);
                ins.execute(params![result.key, file, sha, bytes])
                    .map_err(&wrap)?;
            }
        }
        tx.commit().map_err(&wrap)
    }

    /// Records a failed stage (it has no cache entry, so this is the only trace besides its log).
    pub fn record_failure(
        &self,
        key: &str,
        kind: &str,
        manifest: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.wrap(self.conn.execute(
            "INSERT INTO stages (key, kind, manifest, status, error) VALUES (?1, ?2, ?3, 'failed', ?4)
             ON CONFLICT (key) DO UPDATE SET status = 'failed', error = excluded.error",
            params![key, kind, manifest, error],
        ))?;
        Ok(())
    }

    /// Rows of the `results` view for the current stages of one recipe (or all), in a
    /// stable order. Stages a recipe no longer has (bound by an older run) are left out.
    pub fn results(&self, recipe: Option<&str>) -> Result<Vec<ResultRow>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare(
            "SELECT recipe, stage, kind, stage_key, metric, value, split FROM results
             WHERE is_current AND (?1 IS NULL OR recipe = ?1)
             ORDER BY recipe, stage, metric",
        ))?;
        let rows = stmt.query_map(params![recipe], |r| {
            Ok(ResultRow {
                recipe: r.get(0)?,
                stage: r.get(1)?,
                kind: r.get(2)?,
                key: r.get(3)?,
                metric: r.get(4)?,
                value: r.get(5)?,
                split: r.get(6)?,
            })
        });
        let rows = self.wrap(rows)?;
        self.wrap(rows.collect())
    }

    /// The recipe's current stages in the order they were first bound (plan order), for
    /// laying out tables.
    pub fn recipe_stage_order(&self, recipe: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare(
            "SELECT stage FROM recipe_stages WHERE recipe = ?1
               AND invocation_id = (SELECT MAX(invocation_id) FROM recipe_stages WHERE recipe = ?1)
             ORDER BY rowid",
        ))?;
        let rows = self.wrap(stmt.query_map(params![recipe], |r| r.get(0)))?;
        self.wrap(rows.collect())
    }

    pub fn recipes(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.wrap(
            self.conn
                .prepare("SELECT recipe FROM recipe_stages GROUP BY recipe ORDER BY MIN(rowid)"),
        )?;
        let rows = self.wrap(stmt.query_map([], |r| r.get(0)))?;
        self.wrap(rows.collect())
    }

    /// The key a recipe's stage was last bound to, if any.
    pub fn bound_key(&self, recipe: &str, stage: &str) -> Result<Option<String>, StoreError> {
        self.wrap(
            self.conn
                .query_row(
                    "SELECT key FROM recipe_stages WHERE recipe = ?1 AND stage = ?2",
                    params![recipe, stage],
                    |r| r.get(0),
                )
                .optional(),
        )
    }

    /// Every key a stage of some recipe's latest run is bound to (what `gc` keeps; a stage
    /// that a recipe no longer has, or had under another name, is not kept).
    pub fn referenced_keys(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut stmt = self.wrap(
            self.conn
                .prepare("SELECT DISTINCT stage_key FROM stage_status WHERE is_current"),
        )?;
        let rows = self.wrap(stmt.query_map([], |r| r.get(0)))?;
        self.wrap(rows.collect())
    }

    /// `(status, error)` of a stage key, if it ever ran.
    pub fn stage_outcome(&self, key: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        self.wrap(
            self.conn
                .query_row(
                    "SELECT status, error FROM stages WHERE key = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional(),
        )
    }

    pub fn stage_status(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.wrap(
            self.conn
                .query_row(
                    "SELECT status FROM stages WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional(),
        )
    }
}

#[cfg(test)]
mod tests;
