//! The results store: `runs/results.sqlite`, derived from the cache and written only by the
//! coordinator (one connection, WAL, busy timeout, IMMEDIATE write transactions), so that
//! readers — `rkd-orch results`, `sqlite3`, pandas — can query it while a run is going.
//!
//! The schema is documented in `docs/results.md`.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::stage::spec::StageResult;

/// `PRAGMA user_version` of the schema this build writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = r#"
CREATE TABLE invocations (
    id             INTEGER PRIMARY KEY,
    recipe         TEXT NOT NULL,
    recipe_file    TEXT NOT NULL,
    recipe_sha256  TEXT NOT NULL,
    command        TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    started_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at    TEXT,
    status         TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE stages (
    key            TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    status         TEXT NOT NULL,
    wall_s         REAL,
    threads        INTEGER,
    device         TEXT,
    checkpoint     TEXT,
    error          TEXT,
    finished_at    TEXT
);
CREATE TABLE recipe_stages (
    recipe         TEXT NOT NULL,
    stage          TEXT NOT NULL,
    key            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    invocation_id  INTEGER NOT NULL REFERENCES invocations(id),
    PRIMARY KEY (recipe, stage)
);
CREATE INDEX recipe_stages_key ON recipe_stages(key);
CREATE TABLE metrics (
    key            TEXT NOT NULL,
    name           TEXT NOT NULL,
    value          REAL NOT NULL,
    split          TEXT NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE TABLE epoch_metrics (
    key            TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    name           TEXT NOT NULL,
    value          REAL NOT NULL,
    PRIMARY KEY (key, epoch, name)
);
CREATE VIEW results AS
    SELECT rs.recipe, rs.stage, rs.kind, rs.key AS stage_key,
           m.name AS metric, m.value, m.split
    FROM recipe_stages rs JOIN metrics m ON m.key = rs.key;
"#;

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
}

/// Wraps a rusqlite error with the database's path.
fn sqlite_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_string(),
        source,
    }
}

pub struct Store {
    conn: Connection,
    path: String,
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
    /// Opens (creating and migrating if needed) the database for writing.
    pub fn open_rw(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let wrap = sqlite_err(&p);
        let conn = Connection::open(path).map_err(&wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&wrap)?;
        let mut store = Self {
            conn,
            path: p.clone(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only.
    pub fn open_ro(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        if !path.exists() {
            return Err(StoreError::Missing(p));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| StoreError::Sqlite {
                path: p.clone(),
                source,
            },
        )?;
        let store = Self { conn, path: p };
        store.wrap(store.conn.busy_timeout(std::time::Duration::from_secs(10)))?;
        Ok(store)
    }

    fn wrap<T>(&self, r: rusqlite::Result<T>) -> Result<T, StoreError> {
        r.map_err(sqlite_err(&self.path))
    }

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
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(&wrap)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(&wrap)?;
        tx.commit().map_err(&wrap)
    }

    pub fn begin_invocation(
        &self,
        recipe: &str,
        file: &str,
        sha: &str,
        command: &str,
    ) -> Result<i64, StoreError> {
        self.wrap(self.conn.execute(
            "INSERT INTO invocations (recipe, recipe_file, recipe_sha256, command, engine_version) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![recipe, file, sha, command, env!("CARGO_PKG_VERSION")],
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

    /// Records that `stage` of `recipe` is the stage with `key` (replacing an older key
    /// after the recipe changed).
    pub fn bind_stage(
        &self,
        recipe: &str,
        stage: &str,
        key: &str,
        kind: &str,
        invocation: i64,
    ) -> Result<(), StoreError> {
        self.wrap(self.conn.execute(
            "INSERT INTO recipe_stages (recipe, stage, key, kind, invocation_id) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (recipe, stage) DO UPDATE SET key = excluded.key, kind = excluded.kind, invocation_id = excluded.invocation_id",
            params![recipe, stage, key, kind, invocation],
        ))?;
        Ok(())
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

    /// Rows of the `results` view for one recipe (or all), in a stable order.
    pub fn results(&self, recipe: Option<&str>) -> Result<Vec<ResultRow>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare(
            "SELECT r.recipe, r.stage, r.kind, r.stage_key, r.metric, r.value, r.split
             FROM results r JOIN invocations i ON i.id = (SELECT invocation_id FROM recipe_stages rs WHERE rs.recipe = r.recipe AND rs.stage = r.stage)
             WHERE ?1 IS NULL OR r.recipe = ?1
             ORDER BY r.recipe, i.id, r.stage, r.metric",
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

    /// The recipe's stages in the order they were bound, for laying out tables.
    pub fn recipe_stage_order(&self, recipe: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.wrap(
            self.conn
                .prepare("SELECT stage FROM recipe_stages WHERE recipe = ?1 ORDER BY rowid"),
        )?;
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

    /// Every key some recipe's stage is bound to (what `gc` keeps).
    pub fn referenced_keys(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare("SELECT DISTINCT key FROM recipe_stages"))?;
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
mod tests {
    use super::*;
    use crate::stage::spec::{EpochRecord, Metric};
    use std::collections::BTreeMap;

    fn result(key: &str, r1: f64) -> StageResult {
        StageResult {
            key: key.into(),
            kind: "evaluate".into(),
            metrics: vec![Metric {
                name: "recall@1".into(),
                value: r1,
                split: "test/unseen-classes".into(),
            }],
            epochs: vec![EpochRecord {
                epoch: 1,
                losses: BTreeMap::from([("total".to_string(), 0.5)]),
                wall_s: 1.0,
            }],
            artifacts: BTreeMap::new(),
            checkpoint: "last_epoch".into(),
            wall_s: 2.0,
            threads: 1,
            device: "cpu".into(),
            engine_version: "t".into(),
            finished_unix: 1_700_000_000,
        }
    }

    #[test]
    fn ingest_is_idempotent_and_rebinding_follows_the_recipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let mut s = Store::open_rw(&path).unwrap();
        let inv = s.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
        s.ingest(&result("k1", 0.5), "{}").unwrap();
        s.ingest(&result("k1", 0.5), "{}").unwrap();
        s.bind_stage("q", "eval", "k1", "evaluate", inv).unwrap();
        let rows = s.results(Some("q")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, 0.5);

        // The recipe changed: the stage name now points at a new key.
        s.ingest(&result("k2", 0.75), "{}").unwrap();
        s.bind_stage("q", "eval", "k2", "evaluate", inv).unwrap();
        let rows = s.results(None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].key.as_str(), rows[0].value), ("k2", 0.75));
        s.finish_invocation(inv, "ok").unwrap();
        drop(s);

        // Reopening keeps the schema version and the data; read-only works alongside.
        let s = Store::open_rw(&path).unwrap();
        let ro = Store::open_ro(&path).unwrap();
        assert_eq!(ro.results(Some("q")).unwrap().len(), 1);
        assert_eq!(ro.stage_status("k1").unwrap().as_deref(), Some("done"));
        drop(s);
    }

    #[test]
    fn a_newer_schema_is_refused_and_a_missing_db_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Store::open_rw(&path).err().unwrap().to_string();
        assert!(e.contains("newer"), "{e}");
        let e = Store::open_ro(&dir.path().join("none.sqlite"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("run a recipe first"), "{e}");
    }
}
