//! Reading the store for the result commands: stages with their parameters and metrics,
//! training curves, provenance, and arbitrary read-only SQL.
//!
//! Loading is a handful of set-oriented queries joined in memory (not one query per
//! stage), so that a database of 10,000 stages answers in tens of milliseconds.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::{params, Statement};

use super::{Store, StoreError};

/// One swept parameter of a stage, as stored in `params`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredParam {
    /// The stage whose matrix swept it (an evaluation inherits its model's parameters).
    pub origin: String,
    pub path: String,
    pub label: String,
    pub value: String,
    pub value_num: Option<f64>,
}

impl StoredParam {
    /// Seeds (`matrix: {seeds: [...]}` or a swept `seed`) are repetitions, not treatments:
    /// the result commands average over them.
    pub fn is_seed(&self) -> bool {
        self.path == "seed"
    }
}

/// A stage of a recipe with everything the result commands show about it.
#[derive(Debug, Clone)]
pub struct StageRecord {
    pub recipe: String,
    pub stage: String,
    pub base: String,
    pub kind: String,
    pub declared_kind: String,
    pub key: String,
    /// Bound by the recipe's latest run (false: a stage the recipe no longer has).
    pub current: bool,
    /// `done`, `failed`, or `None` when it has not finished (yet).
    pub status: Option<String>,
    pub wall_s: Option<f64>,
    pub device: Option<String>,
    pub params: Vec<StoredParam>,
    /// Final metrics, in name order.
    pub metrics: Vec<(String, f64)>,
}

impl StageRecord {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Which stages to load.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    /// One recipe, or all.
    pub recipe: Option<&'a str>,
    /// Load only this metric (faster on big databases); all when `None`.
    pub metric: Option<&'a str>,
    /// Also stages that older runs bound and the recipe no longer has.
    pub include_stale: bool,
}

/// The latest run of a recipe (the `recipes` view).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub recipe: String,
    pub id: i64,
    pub recipe_file: String,
    pub recipe_sha256: String,
    pub engine_version: String,
    pub command: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    /// The file's absolute path (`None` before schema version 3).
    pub recipe_path: Option<String>,
    /// The run's `--set` arguments as typed (`None`: not recorded, before schema version 3
    /// or by `db rebuild`).
    pub sets: Option<Vec<String>>,
}

impl Invocation {
    /// The `--set` arguments that change the scale ([`super::SCALE_KEYS`]): non-empty for
    /// a smoke run.
    pub fn smoke_sets(&self) -> Vec<&str> {
        self.sets
            .as_deref()
            .map(super::scale_overrides)
            .unwrap_or_default()
    }
}

/// Per-epoch values of a stage: (epoch, name, value), in epoch order.
pub type EpochRows = Vec<(i64, String, f64)>;

/// A SQLite value as it came out of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(usize),
}

#[derive(Debug, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "refused: `rkd-orch query` is read-only and this statement would change the database. \
         The database is derived from runs/cache/ (a run rebuilds it); to change it anyway use sqlite3"
    )]
    Write,
    #[error("bad SQL: {0}")]
    Sql(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn stale_clause(include_stale: bool) -> &'static str {
    if include_stale {
        "1"
    } else {
        "rs.invocation_id = lb.invocation_id"
    }
}

impl Store {
    /// The stages of a recipe (or all) in plan order, with parameters and metrics.
    pub fn stages(&self, sel: &Selection) -> Result<Vec<StageRecord>, StoreError> {
        let current = stale_clause(sel.include_stale);
        let sql = format!(
            "SELECT rs.recipe, rs.stage, COALESCE(rs.base, rs.stage), rs.kind,
                    COALESCE(rs.declared_kind, rs.kind), rs.key,
                    rs.invocation_id = lb.invocation_id, s.status, s.wall_s, s.device
             FROM recipe_stages rs
             JOIN latest_bindings lb ON lb.recipe = rs.recipe
             LEFT JOIN stages s ON s.key = rs.key
             WHERE (?1 IS NULL OR rs.recipe = ?1) AND {current}
             ORDER BY rs.rowid"
        );
        let mut stmt = self.wrap(self.conn.prepare(&sql))?;
        let mut out: Vec<StageRecord> = self.wrap(
            stmt.query_map(params![sel.recipe], |r| {
                Ok(StageRecord {
                    recipe: r.get(0)?,
                    stage: r.get(1)?,
                    base: r.get(2)?,
                    kind: r.get(3)?,
                    declared_kind: r.get(4)?,
                    key: r.get(5)?,
                    current: r.get(6)?,
                    status: r.get(7)?,
                    wall_s: r.get(8)?,
                    device: r.get(9)?,
                    params: Vec::new(),
                    metrics: Vec::new(),
                })
            })
            .and_then(|rows| rows.collect()),
        )?;
        // recipe → stage → index; looked up with borrowed column text, so that the tens of
        // thousands of parameter and metric rows allocate only what they keep.
        let mut index: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (i, s) in out.iter().enumerate() {
            index
                .entry(s.recipe.clone())
                .or_default()
                .insert(s.stage.clone(), i);
        }
        let find = |row: &rusqlite::Row| -> rusqlite::Result<Option<usize>> {
            let recipe = row.get_ref(0)?.as_str()?;
            let stage = row.get_ref(1)?.as_str()?;
            Ok(index.get(recipe).and_then(|m| m.get(stage)).copied())
        };

        // No ORDER BY: sorting 40,000 rows costs more than sorting each stage's handful.
        let mut stmt = self.wrap(self.conn.prepare(
            "SELECT recipe, stage, origin, path, label, value, value_num, position FROM params
             WHERE ?1 IS NULL OR recipe = ?1",
        ))?;
        let mut positions: Vec<Vec<i64>> = vec![Vec::new(); out.len()];
        let mut rows = self.wrap(stmt.query(params![sel.recipe]))?;
        while let Some(r) = self.wrap(rows.next())? {
            if let Some(i) = self.wrap(find(r))? {
                out[i].params.push(StoredParam {
                    origin: self.wrap(r.get(2))?,
                    path: self.wrap(r.get(3))?,
                    label: self.wrap(r.get(4))?,
                    value: self.wrap(r.get(5))?,
                    value_num: self.wrap(r.get(6))?,
                });
                positions[i].push(self.wrap(r.get(7))?);
            }
        }
        for (s, pos) in out.iter_mut().zip(positions) {
            if pos.windows(2).any(|w| w[0] > w[1]) {
                let mut both: Vec<(i64, StoredParam)> =
                    pos.into_iter().zip(std::mem::take(&mut s.params)).collect();
                both.sort_by_key(|(p, _)| *p);
                s.params = both.into_iter().map(|(_, p)| p).collect();
            }
        }

        // The name filter is spelled out (not `?2 IS NULL OR …`) so that SQLite looks each
        // stage's metric up by its primary key instead of scanning every metric.
        let sql = format!(
            "SELECT rs.recipe, rs.stage, m.name, m.value
             FROM recipe_stages rs JOIN metrics m ON m.key = rs.key{}
             WHERE ?1 IS NULL OR rs.recipe = ?1",
            if sel.metric.is_some() {
                " AND m.name = ?2"
            } else {
                ""
            }
        );
        let mut stmt = self.wrap(self.conn.prepare(&sql))?;
        let mut rows = match sel.metric {
            Some(m) => self.wrap(stmt.query(params![sel.recipe, m]))?,
            None => self.wrap(stmt.query(params![sel.recipe]))?,
        };
        while let Some(r) = self.wrap(rows.next())? {
            if let Some(i) = self.wrap(find(r))? {
                out[i]
                    .metrics
                    .push((self.wrap(r.get(2))?, self.wrap(r.get(3))?));
            }
        }
        for s in &mut out {
            s.metrics.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(out)
    }

    /// Every distinct final metric name of a recipe's current stages.
    pub fn metric_names(&self, recipe: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare(
            "SELECT DISTINCT metric FROM results WHERE is_current AND (?1 IS NULL OR recipe = ?1)
             ORDER BY metric",
        ))?;
        let rows = self.wrap(stmt.query_map(params![recipe], |r| r.get(0)))?;
        self.wrap(rows.collect())
    }

    /// Per-epoch values (`loss/total`, `loss/<term>`) of the given stage keys:
    /// key → [(epoch, name, value)] in epoch order.
    pub fn epoch_metrics(&self, keys: &[&str]) -> Result<HashMap<String, EpochRows>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare_cached(
            "SELECT epoch, name, value FROM epoch_metrics WHERE key = ?1 ORDER BY epoch, name",
        ))?;
        let mut out = HashMap::new();
        for key in keys {
            let rows: EpochRows = self.wrap(
                stmt.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(|rows| rows.collect()),
            )?;
            out.insert(key.to_string(), rows);
        }
        Ok(out)
    }

    /// The latest run of a recipe (the run its current stages were bound by).
    pub fn invocation(&self, recipe: &str) -> Result<Option<Invocation>, StoreError> {
        use rusqlite::OptionalExtension;
        // A database an older rkd-orch wrote (read without upgrading it) lacks the
        // version-3 columns: they read as not recorded.
        let v3 = if self.schema_version()? >= 3 {
            "recipe_path, sets"
        } else {
            "NULL, NULL"
        };
        let sql = format!(
            "SELECT recipe, invocation_id, recipe_file, recipe_sha256, engine_version,
                    command, started_at, finished_at, status, {v3}
             FROM recipes WHERE recipe = ?1"
        );
        let inv = self.wrap(
            self.conn
                .query_row(&sql, params![recipe], |r| {
                    Ok((
                        Invocation {
                            recipe: r.get(0)?,
                            id: r.get(1)?,
                            recipe_file: r.get(2)?,
                            recipe_sha256: r.get(3)?,
                            engine_version: r.get(4)?,
                            command: r.get(5)?,
                            started_at: r.get(6)?,
                            finished_at: r.get(7)?,
                            status: r.get(8)?,
                            recipe_path: r.get(9)?,
                            sets: None,
                        },
                        r.get::<_, Option<String>>(10)?,
                    ))
                })
                .optional(),
        )?;
        Ok(inv.map(|(mut inv, sets)| {
            // Written by `begin_run` as a JSON array of strings; anything else is unknown.
            inv.sets = sets.and_then(|j| serde_json::from_str(&j).ok());
            inv
        }))
    }

    /// The manifests (what was hashed into each key) of the given stage keys, as JSON.
    pub fn manifests(&self, keys: &[&str]) -> Result<HashMap<String, String>, StoreError> {
        let mut stmt = self.wrap(
            self.conn
                .prepare_cached("SELECT manifest FROM stages WHERE key = ?1"),
        )?;
        let mut out = HashMap::new();
        for key in keys {
            let m: Option<String> = self.wrap(rusqlite::OptionalExtension::optional(
                stmt.query_row(params![key], |r| r.get(0)),
            ))?;
            if let Some(m) = m {
                out.insert(key.to_string(), m);
            }
        }
        Ok(out)
    }

    /// Artifacts of the given stage keys: key → [(file, sha256, bytes)].
    #[allow(clippy::type_complexity)]
    pub fn artifacts(
        &self,
        keys: &[&str],
    ) -> Result<HashMap<String, Vec<(String, String, Option<i64>)>>, StoreError> {
        let mut stmt = self.wrap(self.conn.prepare_cached(
            "SELECT file, sha256, bytes FROM artifacts WHERE key = ?1 ORDER BY file",
        ))?;
        let mut out = HashMap::new();
        for key in keys {
            let rows: Vec<(String, String, Option<i64>)> = self.wrap(
                stmt.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(|rows| rows.collect()),
            )?;
            out.insert(key.to_string(), rows);
        }
        Ok(out)
    }

    /// Runs one read-only SQL statement. A statement that would write is refused before it
    /// runs (and the connection is read-only besides); several statements are refused too,
    /// so that nothing after the first is silently ignored.
    pub fn query(&self, sql: &str) -> Result<QueryResult, QueryError> {
        let mut stmt: Statement = self.conn.prepare(sql).map_err(|e| self.query_error(e))?;
        if !stmt.readonly() {
            return Err(QueryError::Write);
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let n = columns.len();
        let mut rows = stmt.query([]).map_err(|e| self.query_error(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.query_error(e))? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                let v = r.get_ref(i).map_err(|e| self.query_error(e))?;
                row.push(match v {
                    ValueRef::Null => SqlValue::Null,
                    ValueRef::Integer(i) => SqlValue::Integer(i),
                    ValueRef::Real(f) => SqlValue::Real(f),
                    ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => SqlValue::Blob(b.len()),
                });
            }
            out.push(row);
        }
        Ok(QueryResult { columns, rows: out })
    }
}

/// SQLite's own message (`no such column: x`), without rusqlite's wrapping.
impl Store {
    /// A failing statement is bad SQL (the user's to fix, exit 2) unless the database
    /// itself failed — damaged, unreadable, locked — which is a failure like any other
    /// store error (exit 1).
    fn query_error(&self, e: rusqlite::Error) -> QueryError {
        if super::is_database_failure(&e) {
            QueryError::Store(super::sqlite_err(&self.path)(e))
        } else {
            QueryError::Sql(sql_message(&e))
        }
    }
}

fn sql_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::SqlInputError { msg, offset, .. } => {
            format!("{msg} (at character {offset})")
        }
        rusqlite::Error::MultipleStatement => {
            "several statements; give one SELECT at a time".to_string()
        }
        other => other.to_string(),
    }
}
