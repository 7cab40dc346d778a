//! The SQL surface of `runs/results.sqlite`, as an ordered list of migrations.
//!
//! Every database — a new one included — is brought to the current version by running the
//! migrations after its `PRAGMA user_version` in order, inside one IMMEDIATE transaction.
//! A new database therefore takes exactly the path an old one does, so the upgrade path is
//! exercised by every test that opens a store. Migrations are append-only: a released one
//! is never edited (the tests rebuild a version-1 database from [`V1`] to check the upgrade).
//! The documented surface (tables, views, columns) is in `docs/results.md`; columns are only
//! ever added, so `SELECT *` users see new columns appear on the right.

/// Version 1: invocations, stages, the recipe → key bindings, final and per-epoch metrics.
pub const V1: &str = r#"
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

/// Version 2: swept parameters, artifacts, the declared name and kind of each stage, which
/// bindings are current, and views for recipes, stage status and training curves.
///
/// Version-1 rows get their declared name from the stage name (the part before `[`) and
/// their declared kind from the kind that ran; their parameters and artifacts appear when
/// the recipe is run again (every stage is cached, so that takes seconds).
pub const V2: &str = r#"
ALTER TABLE recipe_stages ADD COLUMN base TEXT;
ALTER TABLE recipe_stages ADD COLUMN declared_kind TEXT;
UPDATE recipe_stages SET
    base = CASE WHEN instr(stage, '[') > 0 THEN substr(stage, 1, instr(stage, '[') - 1)
                ELSE stage END,
    declared_kind = kind;
CREATE INDEX recipe_stages_invocation ON recipe_stages(recipe, invocation_id);

CREATE TABLE params (
    recipe         TEXT NOT NULL,
    stage          TEXT NOT NULL,
    stage_key      TEXT NOT NULL,
    position       INTEGER NOT NULL,
    origin         TEXT NOT NULL,
    path           TEXT NOT NULL,
    label          TEXT NOT NULL,
    value          TEXT NOT NULL,
    value_num      REAL,
    PRIMARY KEY (recipe, stage, origin, path)
);
CREATE INDEX params_path_value ON params(path, value);
CREATE INDEX params_label_value ON params(label, value);
CREATE INDEX params_stage_key ON params(stage_key);

CREATE TABLE artifacts (
    key            TEXT NOT NULL,
    file           TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    bytes          INTEGER,
    PRIMARY KEY (key, file)
);

-- The stages bound by a recipe's latest run are its current plan; older bindings are
-- stages the recipe no longer has (kept: their rows are still in the cache).
CREATE VIEW latest_bindings AS
    SELECT recipe, MAX(invocation_id) AS invocation_id FROM recipe_stages GROUP BY recipe;

DROP VIEW results;
CREATE VIEW results AS
    SELECT rs.recipe, rs.stage, rs.kind, rs.key AS stage_key,
           m.name AS metric, m.value, m.split,
           rs.base, rs.declared_kind, rs.invocation_id,
           rs.invocation_id = lb.invocation_id AS is_current
    FROM recipe_stages rs
    JOIN metrics m ON m.key = rs.key
    JOIN latest_bindings lb ON lb.recipe = rs.recipe;

CREATE VIEW recipes AS
    SELECT i.recipe, i.id AS invocation_id, i.recipe_file, i.recipe_sha256,
           i.engine_version, i.command, i.started_at, i.finished_at, i.status,
           (SELECT COUNT(*) FROM recipe_stages rs
             WHERE rs.recipe = lb.recipe AND rs.invocation_id = lb.invocation_id) AS stages
    FROM latest_bindings lb JOIN invocations i ON i.id = lb.invocation_id;

CREATE VIEW stage_status AS
    SELECT rs.recipe, rs.stage, rs.base, rs.declared_kind, rs.kind, rs.key AS stage_key,
           rs.invocation_id = lb.invocation_id AS is_current,
           COALESCE(s.status, 'not run') AS status,
           s.wall_s, s.threads, s.device, s.checkpoint, s.finished_at, s.error
    FROM recipe_stages rs
    JOIN latest_bindings lb ON lb.recipe = rs.recipe
    LEFT JOIN stages s ON s.key = rs.key;

CREATE VIEW training_curves AS
    SELECT rs.recipe, rs.stage, rs.key AS stage_key, e.epoch, e.name,
           substr(e.name, 6) AS term, e.value,
           rs.invocation_id = lb.invocation_id AS is_current
    FROM recipe_stages rs
    JOIN epoch_metrics e ON e.key = rs.key
    JOIN latest_bindings lb ON lb.recipe = rs.recipe;

-- Every leaf of each stage's resolved configuration (`loss[0].kernel.p`, `seed`, ...),
-- straight from the manifest that was hashed into its key.
CREATE VIEW stage_config AS
    SELECT s.key AS stage_key, substr(j.fullkey, 10) AS path, j.value
    FROM stages s, json_tree(s.manifest, '$.config') j
    WHERE j.type NOT IN ('object', 'array');
"#;

/// Version 3: what each run changed from its recipe file, so that results can say where
/// they come from. `recipe_path` is the file's absolute path (`recipe_file` is as typed, so
/// two spellings of one file cannot be told from two files); `sets` is a JSON array of the
/// run's `--set PATH=VALUE` arguments, in order (`[]`: none); `smoke` is 1 when one of them
/// changes a scale key (epochs, data limits, …: `store::SCALE_KEYS`). The `recipes` and
/// `results` views gain them on the right.
///
/// Older rows have NULL in all three: what they overrode was not recorded.
pub const V3: &str = r#"
ALTER TABLE invocations ADD COLUMN recipe_path TEXT;
ALTER TABLE invocations ADD COLUMN sets TEXT;
ALTER TABLE invocations ADD COLUMN smoke INTEGER;

DROP VIEW recipes;
CREATE VIEW recipes AS
    SELECT i.recipe, i.id AS invocation_id, i.recipe_file, i.recipe_sha256,
           i.engine_version, i.command, i.started_at, i.finished_at, i.status,
           (SELECT COUNT(*) FROM recipe_stages rs
             WHERE rs.recipe = lb.recipe AND rs.invocation_id = lb.invocation_id) AS stages,
           i.recipe_path, i.sets, i.smoke
    FROM latest_bindings lb JOIN invocations i ON i.id = lb.invocation_id;

DROP VIEW results;
CREATE VIEW results AS
    SELECT rs.recipe, rs.stage, rs.kind, rs.key AS stage_key,
           m.name AS metric, m.value, m.split,
           rs.base, rs.declared_kind, rs.invocation_id,
           rs.invocation_id = lb.invocation_id AS is_current,
           i.smoke
    FROM recipe_stages rs
    JOIN metrics m ON m.key = rs.key
    JOIN latest_bindings lb ON lb.recipe = rs.recipe
    LEFT JOIN invocations i ON i.id = rs.invocation_id;
"#;

/// The migrations, in order: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];
