//! The coordinator loop with an in-process executor that pretends: stages "run" by
//! committing a result to the cache at once (or failing), so that the scheduling, ingest
//! and summary are exercised with no process at all — and a second executor is seen to plug
//! in with no change to the scheduler.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::run::executor::{Ended, Executor, Report};
use crate::run::slots::Slot;
use crate::run::Snapshot;
use crate::spec::{Metric, StageResult};

struct Pretend {
    cache: Cache,
    logs: PathBuf,
    /// Stages (by name) that fail.
    fail: Vec<&'static str>,
    reports: VecDeque<Report>,
    /// (stage, device) of each start.
    started: Vec<(String, String)>,
    signalled: Vec<(usize, i32)>,
}

impl Pretend {
    fn new(runs: &RunsDir, fail: &[&'static str]) -> Self {
        Pretend {
            cache: runs.cache(),
            logs: runs.logs(),
            fail: fail.to_vec(),
            reports: VecDeque::new(),
            started: Vec::new(),
            signalled: Vec::new(),
        }
    }
}

impl Executor for Pretend {
    fn start(&mut self, stage: usize, spec: &StageSpec, slot: &Slot) -> Result<(), RunError> {
        self.started.push((spec.name.clone(), slot.device()));
        if self.fail.contains(&spec.name.as_str()) {
            self.reports.push_back(Report::Event(
                stage,
                Event::Failed {
                    error: "pretended to fail".into(),
                },
            ));
            self.reports.push_back(Report::Exit(
                stage,
                Ended::Failure {
                    why: "stage process exited with status 1".into(),
                    nonfinite: false,
                },
            ));
            return Ok(());
        }
        let result = StageResult {
            key: spec.key.clone(),
            kind: spec.config.kind().to_string(),
            metrics: vec![Metric {
                name: "recall@1".into(),
                value: 0.5,
                split: "test".into(),
            }],
            epochs: Vec::new(),
            artifacts: BTreeMap::new(),
            checkpoint: "last".into(),
            wall_s: 0.0,
            threads: 1,
            device: slot.device(),
            engine_version: "test".into(),
            finished_unix: 0,
        };
        let tmp = self.cache.create_tmp(&spec.key).unwrap();
        self.cache
            .commit(tmp, &result, &spec.manifest.to_value())
            .unwrap();
        self.reports.push_back(Report::Event(
            stage,
            Event::Metric {
                name: "recall@1".into(),
                value: 0.5,
            },
        ));
        self.reports.push_back(Report::Exit(stage, Ended::Success));
        Ok(())
    }

    fn wait(&mut self, _timeout: Duration) -> Option<Report> {
        self.reports.pop_front()
    }

    fn signal(&mut self, stage: usize, signal: i32) {
        self.signalled.push((stage, signal));
    }

    fn log(&self, key: &str) -> PathBuf {
        self.logs.join(format!("{key}.log"))
    }

    fn log_tail(&self, _key: &str, _n: usize) -> Vec<String> {
        vec!["error: from the log".into()]
    }
}

const RECIPE: &str = "
data:
  syn: {kind: synthetic}
defaults: {epochs: 1, model: {hidden: [8], embedding: 4}, loss: {triplet: 1}}
stages:
  t: {kind: train, seed: 1}
  u: {kind: train, seed: 2}
  eval_t: {kind: evaluate, model: t}
  eval_u: {kind: evaluate, model: u}
";

fn plan() -> Plan {
    crate::plan::build(crate::recipe::parse("r.yaml", "r", RECIPE).unwrap()).unwrap()
}

fn opts(keep_going: bool) -> RunOptions {
    RunOptions {
        slots: vec![Slot::Cpu { threads: 1 }; 2],
        keep_going,
        retries: 0,
        mode: Mode::Quiet,
        grace_s: 10.0,
        sets: Vec::new(),
    }
}

#[test]
fn a_pretend_executor_runs_the_plan_and_the_results_are_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let runs = RunsDir::new(dir.path().join("runs"));
    let plan = plan();
    let mut exec = Pretend::new(&runs, &["u"]);
    let summary = run_with(&plan, &runs, &opts(true), "test", &mut exec).unwrap();
    assert_eq!(summary.ran, vec!["t", "eval_t"]);
    assert_eq!(
        summary.failed,
        vec![("u".to_string(), "pretended to fail".to_string())],
        "the error the stage reported, before its log's"
    );
    assert_eq!(summary.skipped, vec!["eval_u"]);
    assert!(summary.not_started.is_empty() && summary.cached.is_empty());
    let started: Vec<&str> = exec.started.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(started, vec!["t", "u", "eval_t"], "file order, two slots");
    assert!(exec.signalled.is_empty());

    // The database has what ran, the snapshot what the stages are bound to.
    let db = rusqlite::Connection::open(runs.db()).unwrap();
    let metrics: i64 = db
        .query_row("SELECT count(*) FROM metrics", [], |r| r.get(0))
        .unwrap();
    assert_eq!(metrics, 2, "one metric of each stage that ran");
    let snap = Snapshot::parse(&std::fs::read(runs.recipes().join("r.json")).unwrap()).unwrap();
    assert_eq!(snap, Snapshot::of(&plan));
    assert_eq!(snap.stages.len(), 4);

    // Again, nothing failing: what ran is cached, the rest runs.
    let mut exec = Pretend::new(&runs, &[]);
    let summary = run_with(&plan, &runs, &opts(false), "test", &mut exec).unwrap();
    assert_eq!(summary.cached, vec!["t", "eval_t"]);
    assert_eq!(summary.ran, vec!["u", "eval_u"]);
    assert!(summary.ok());
}

#[test]
fn without_keep_going_a_failure_leaves_independent_stages_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let runs = RunsDir::new(dir.path().join("runs"));
    let plan = plan();
    let mut exec = Pretend::new(&runs, &["t"]);
    let mut o = opts(false);
    o.slots.truncate(1);
    let summary = run_with(&plan, &runs, &o, "test", &mut exec).unwrap();
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.skipped, vec!["eval_t"]);
    assert_eq!(summary.not_started, vec!["u", "eval_u"]);
    assert_eq!(exec.started.len(), 1);
}
