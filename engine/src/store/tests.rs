use std::collections::BTreeMap;

use super::*;
use crate::spec::{EpochRecord, Metric};

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
        artifacts: BTreeMap::from([("model.json".to_string(), "ab".repeat(32))]),
        checkpoint: "last_epoch".into(),
        wall_s: 2.0,
        threads: 1,
        device: "cpu".into(),
        engine_version: "t".into(),
        finished_unix: 1_700_000_000,
    }
}

fn param(origin: &str, path: &str, label: &str, value: &str) -> Param {
    Param {
        origin: origin.into(),
        path: path.into(),
        label: label.into(),
        value: value.into(),
        named: true,
    }
}

fn bind(s: &mut Store, recipe: &str, stage: &str, key: &str, params: &[Param], inv: i64) {
    let base = stage.split('[').next().unwrap();
    s.bind_stage(
        &Binding {
            recipe,
            stage,
            base,
            kind: "evaluate",
            declared_kind: "evaluate",
            key,
            params,
        },
        inv,
    )
    .unwrap();
}

#[test]
fn ingest_is_idempotent_and_rebinding_follows_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let mut s = Store::open_rw(&path).unwrap();
    let inv = s.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
    s.ingest(&result("k1", 0.5), "{}").unwrap();
    s.ingest(&result("k1", 0.5), "{}").unwrap();
    bind(&mut s, "q", "eval", "k1", &[], inv);
    let rows = s.results(Some("q")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, 0.5);

    // The recipe changed: the stage name now points at a new key.
    s.ingest(&result("k2", 0.75), "{}").unwrap();
    bind(&mut s, "q", "eval", "k2", &[], inv);
    let rows = s.results(None).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].key.as_str(), rows[0].value), ("k2", 0.75));
    s.finish_invocation(inv, "ok").unwrap();
    drop(s);

    // Reopening keeps the schema version and the data; read-only works alongside.
    let s = Store::open_rw(&path).unwrap();
    let ro = Store::open_ro(&path).unwrap();
    assert_eq!(ro.schema_version().unwrap(), SCHEMA_VERSION);
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
    let e = Store::open_for_reading(&path).err().unwrap().to_string();
    assert!(e.contains("newer"), "{e}");
    let e = Store::open_ro(&dir.path().join("none.sqlite"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("run a recipe first"), "{e}");
}

#[test]
fn params_and_artifacts_are_recorded_and_rebinding_replaces_params() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    // An artifact file where the store expects the cache (its size is recorded).
    std::fs::create_dir_all(dir.path().join("cache/k1")).unwrap();
    std::fs::write(dir.path().join("cache/k1/model.json"), b"{\"x\": 1}").unwrap();
    let mut s = Store::open_rw(&path).unwrap();
    let inv = s.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
    s.ingest(&result("k1", 0.5), "{\"config\": {\"seed\": 3}}")
        .unwrap();
    let ps = [
        param("teacher", "seed", "seed", "0"),
        param("student", "loss.cc.p", "p", "2"),
        param("student", "sampler.kind", "sampler", "superclass"),
    ];
    bind(
        &mut s,
        "q",
        "eval[seed=0,p=2,sampler=superclass]",
        "k1",
        &ps,
        inv,
    );
    bind(
        &mut s,
        "q",
        "eval[seed=0,p=2,sampler=superclass]",
        "k1",
        &ps,
        inv,
    );
    let c = &s.conn;
    let rows: Vec<(String, String, Option<f64>)> = c
        .prepare(
            "SELECT path, value, value_num FROM params WHERE stage_key = 'k1' ORDER BY position",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            ("seed".into(), "0".into(), Some(0.0)),
            ("loss.cc.p".into(), "2".into(), Some(2.0)),
            ("sampler.kind".into(), "superclass".into(), None)
        ]
    );
    // The documented example query uses the (path, value) index.
    let plan: String = c
        .query_row(
            "EXPLAIN QUERY PLAN SELECT stage_key FROM params WHERE path = 'loss.cc.p' AND value = '2'",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("params_path_value"), "{plan}");
    let (file, bytes): (String, i64) = c
        .query_row(
            "SELECT file, bytes FROM artifacts WHERE key = 'k1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((file.as_str(), bytes), ("model.json", 8));
    let seed: i64 = c
        .query_row(
            "SELECT value FROM stage_config WHERE stage_key = 'k1' AND path = 'seed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seed, 3);

    // Loaded back as a stage record, in order.
    let recs = s.stages(&Selection::default()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].base, "eval");
    assert_eq!(recs[0].params.len(), 3);
    assert!(recs[0].params[0].is_seed());
    assert_eq!(recs[0].metric("recall@1"), Some(0.5));

    // A later run with fewer parameters replaces them; a stage it no longer has is stale.
    let inv2 = s.begin_invocation("q", "q.yaml", "abd", "run").unwrap();
    bind(
        &mut s,
        "q",
        "eval[seed=0,p=2,sampler=superclass]",
        "k1",
        &ps[..1],
        inv2,
    );
    let recs = s.stages(&Selection::default()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].params.len(), 1);
    s.ingest(&result("k3", 0.1), "{}").unwrap();
    bind(&mut s, "q", "old", "k3", &[], inv);
    assert_eq!(s.stages(&Selection::default()).unwrap().len(), 1);
    let all = s
        .stages(&Selection {
            include_stale: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(!all.iter().find(|r| r.stage == "old").unwrap().current);
    assert_eq!(s.results(Some("q")).unwrap().len(), 1);
}

#[test]
fn a_version_1_database_is_read_as_is_and_upgraded_in_place_by_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    // A database as rkd-orch 0.1 (schema 1) left it.
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(schema::V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO invocations (recipe, recipe_file, recipe_sha256, command, engine_version)
               VALUES ('q', 'q.yaml', 'abc', 'run', '0.1.0');
             INSERT INTO stages (key, kind, manifest, status) VALUES ('k1', 'evaluate', '{}', 'done');
             INSERT INTO recipe_stages VALUES ('q', 'eval[p=2]', 'k1', 'evaluate', 1);
             INSERT INTO metrics VALUES ('k1', 'recall@1', 0.25, 'test');",
        )
        .unwrap();
    }
    // The read commands read an upgraded copy in memory; the file keeps its version.
    let s = Store::open_for_reading(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let on_disk: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(on_disk, 1);
    let recs = s.stages(&Selection::default()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].base.as_str(), recs[0].declared_kind.as_str()),
        ("eval", "evaluate")
    );
    assert_eq!(recs[0].metric("recall@1"), Some(0.25));
    assert!(
        recs[0].params.is_empty(),
        "v1 had no params; a rerun fills them"
    );
    let rows = s.results(None).unwrap();
    assert_eq!(rows.len(), 1);
    drop(s);
    // Writing works after the upgrade, and reopening does not migrate twice.
    let mut s = Store::open_rw(&path).unwrap();
    let inv = s.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
    bind(
        &mut s,
        "q",
        "eval[p=2]",
        "k1",
        &[param("eval", "loss.cc.p", "p", "2")],
        inv,
    );
    assert_eq!(s.stages(&Selection::default()).unwrap()[0].params.len(), 1);
}

#[test]
fn readers_see_committed_rows_while_a_writer_holds_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let mut w = Store::open_rw(&path).unwrap();
    let inv = w.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
    w.ingest(&result("k1", 0.5), "{}").unwrap();
    bind(&mut w, "q", "eval", "k1", &[], inv);
    // The writer is in the middle of a transaction (as during an ingest).
    w.conn
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM metrics;")
        .unwrap();
    let r = Store::open_for_reading(&path).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(r.results(Some("q")).unwrap().len(), 1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "a reader must not wait"
    );
    w.conn.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn query_is_read_only_and_explains_bad_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let mut w = Store::open_rw(&path).unwrap();
    let inv = w.begin_invocation("q", "q.yaml", "abc", "run").unwrap();
    w.ingest(&result("k1", 0.5), "{}").unwrap();
    bind(&mut w, "q", "eval", "k1", &[], inv);
    drop(w);
    let s = Store::open_for_reading(&path).unwrap();
    let q = s
        .query("SELECT stage, value, NULL AS n, 3 AS i FROM results")
        .unwrap();
    assert_eq!(q.columns, ["stage", "value", "n", "i"]);
    assert_eq!(
        q.rows,
        [vec![
            SqlValue::Text("eval".into()),
            SqlValue::Real(0.5),
            SqlValue::Null,
            SqlValue::Integer(3)
        ]]
    );
    for write in [
        "DELETE FROM metrics",
        "INSERT INTO metrics VALUES ('k', 'x', 1, 's')",
        "DROP TABLE metrics",
        "PRAGMA user_version = 7",
    ] {
        assert!(matches!(s.query(write), Err(QueryError::Write)), "{write}");
    }
    let e = s.query("SELEC 1").err().unwrap();
    assert!(matches!(e, QueryError::Sql(_)), "{e}");
    let e = s
        .query("SELECT nope FROM results")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no such column: nope"), "{e}");
    let e = s.query("SELECT 1; DELETE FROM metrics").err().unwrap();
    assert!(matches!(e, QueryError::Sql(_)), "{e}");
    assert_eq!(s.results(None).unwrap().len(), 1);
}
