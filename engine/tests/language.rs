//! The recipe language end to end through the real binary: a swept recipe with defaults,
//! samplers (superclass k-means included), a self-distillation chain and a transfer stage
//! with a linear probe, run for real on small synthetic data; `--set`, `plan` formats and
//! `schema`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::Connection;

const SWEEP: &str = r#"
name: lang
seed: 3
data:
  syn: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16}
  shifted: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16, seed: 9}
defaults:
  data: syn
  epochs: 2
  batch_size: 32
  optimizer: {kind: adam, lr: 0.003}
stages:
  teacher:
    kind: train
    model: {hidden: [32], embedding: 8, l2norm: true}
    loss: {triplet: 1}
    sampler: {kind: pk, p: 4, k: 8}
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 4}
    loss: {cc: 1, rkd_d: 1}
    sampler: {classes_per_batch: 4, clusters: 6}
    matrix:
      loss.cc.p: [1, 2]
      sampler.kind: [random, class_balanced, superclass]
      exclude:
        - {p: 2, sampler: random}
  born:
    kind: self_distill
    teacher: teacher
    generations: 2
    loss: {rkd_d: 1, rkd_a: 2}
  eval:
    kind: evaluate
    model: student
  eval_born:
    kind: evaluate
    model: born
  transfer:
    kind: transfer
    model: "born[gen=2]"
    data: shifted
    probe: {epochs: 5}
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn recipe(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("lang.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn cmd(&self, args: &[&str], recipe: &Path) -> Output {
        bin()
            .args(args)
            .arg(recipe)
            .arg("--runs-dir")
            .arg(self.runs())
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_swept_recipe_runs_every_variant_and_plan_explains_it() {
    let env = Env::new();
    let r = env.recipe(SWEEP);
    let (json, err) = text(&env.cmd(&["plan", "--format", "json"], &r));
    let plan: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {err}"));
    let stages = plan["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    // 1 teacher, 5 students (2 × 3 − 1 excluded), 2 generations, their evaluations, transfer.
    assert_eq!(stages.len(), 1 + 5 + 2 + 5 + 2 + 1, "{names:?}");
    assert!(
        names.contains(&"student[p=2,sampler=superclass]"),
        "{names:?}"
    );
    assert!(!names.contains(&"student[p=2,sampler=random]"), "{names:?}");
    let s = stages
        .iter()
        .find(|s| s["name"] == "student[p=1,sampler=class_balanced]")
        .unwrap();
    assert_eq!(s["params"]["p"], 1);
    assert_eq!(s["params"]["sampler"], "class_balanced");
    assert_eq!(s["kind"], "distill");
    assert_eq!(s["cached"], false);
    assert_eq!(s["reason"], "new");
    assert_eq!(s["inputs"][0]["stage"], "teacher");
    let (dot, _) = text(&env.cmd(&["plan", "--format", "dot"], &r));
    assert!(dot.starts_with("digraph \"lang\" {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 5 + 2 + 5 + 2 + 1, "{dot}");

    let out = env.cmd(&["run", "-j", "2", "--threads-per-job", "1"], &r);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let db = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let value = |stage: &str, metric: &str| -> f64 {
        db.query_row(
            "SELECT value FROM results WHERE recipe = 'lang' AND stage = ?1 AND metric = ?2",
            [stage, metric],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{stage} {metric}: {e}"))
    };
    for n in &names {
        if n.starts_with("eval") {
            let r1 = value(n, "recall@1");
            assert!((0.0..=1.0).contains(&r1), "{n}: {r1}");
        }
    }
    // The superclass students clustered the teacher's embeddings once and shared it.
    assert!(value("student[p=1,sampler=superclass]", "superclass/inertia") > 0.0);
    let derived: Vec<String> = std::fs::read_dir(env.runs().join("cache/derived"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let count = |prefix: &str, suffix: &str| {
        derived
            .iter()
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
            .count()
    };
    assert_eq!(count("kmeans-", ".json"), 1, "{derived:?}");
    // Each teacher's outputs are computed once and shared: one table for `teacher` (its five
    // students and the first generation), one for the first generation (the second's).
    assert_eq!(count("teacher-", ".safetensors"), 2, "{derived:?}");
    let logs = std::fs::read_dir(env.runs().join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .filter(|l| l.contains("teacher outputs: reusing"))
        .count();
    // Two stages start at a time (-j 2), so at most two compute the same table.
    assert!(logs >= 4, "{logs} stages reused a teacher table");
    // Transfer: retrieval and a linear probe on the other domain.
    let probe = value("transfer", "probe_top1");
    assert!(
        probe > 1.0 / 4.0,
        "probe accuracy {probe} is not above chance"
    );
    assert!(value("transfer", "recall@1") > 0.0);

    // Everything is cached now; a --set on one stage re-runs it and what depends on it.
    let (plan, _) = text(&env.cmd(&["plan", "--set", "stages.born.epochs=3"], &r));
    // Both generations, their evaluations and the transfer of the second.
    assert!(plan.contains("16 stages, 11 cached, 5 to run"), "{plan}");
    assert!(plan.contains("config changed: epochs 2 → 3"), "{plan}");
    assert!(plan.contains("input changed: model"), "{plan}");
}

#[test]
fn language_errors_exit_2_name_every_problem_and_write_nothing() {
    let env = Env::new();
    let bad = SWEEP
        .replace("loss.cc.p: [1, 2]", "loss.cc.p: [0, 2]")
        .replace("generations: 2", "generations: 0")
        .replace("model: \"born[gen=2]\"", "model: \"born[gen=7]\"");
    let r = env.recipe(&bad);
    let out = env.cmd(&["run", "--set", "stages.teacher.epoch=1"], &r);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let file = r.display().to_string();
    assert!(lines.contains(&format!("{file}:25:19: stages.student[p=0,sampler=random].loss.cc.p: must be at least 1, found 0").as_str()), "{stderr}");
    assert!(
        lines.contains(
            &format!("{file}:32:18: stages.born.generations: expected a whole number ≥ 1").as_str()
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--set stages.teacher.epoch=1: stages.teacher (train): unknown key `epoch`; did you mean `epochs`?"), "{stderr}");
    assert!(
        stderr.contains("error: recipe refused (4 problems); nothing was run"),
        "{stderr}"
    );
    assert!(
        !env.runs().exists(),
        "nothing may be written for a refused recipe"
    );
}

#[test]
fn schema_is_valid_json_and_the_shipped_copy_is_current() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "rkd-orch recipe");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipe.schema.json");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&shipped).unwrap()).unwrap();
    assert_eq!(
        on_disk, schema,
        "docs/recipe.schema.json is stale: regenerate it with `rkd-orch schema > docs/recipe.schema.json`"
    );
    // Every shipped recipe points editors at it, and plans.
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    for entry in std::fs::read_dir(recipes).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../docs/recipe.schema.json"),
            "{} lacks the schema comment",
            path.display()
        );
    }
}

#[test]
fn evaluate_protocols_nmi_few_shot_and_classification() {
    let env = Env::new();
    let r = env.recipe(
        r#"
name: protocols
data:
  syn: {kind: synthetic, classes: 10, dim: 16, train_per_class: 40, test_per_class: 30}
stages:
  clf:
    kind: train
    model: {hidden: [32], embedding: 8, classes: 5}
    loss: {ce: 1}
    epochs: 5
    batch_size: 25
  metric:
    kind: evaluate
    model: clf
    few_shot: {ways: 5, shots: 1, queries: 10, episodes: 100}
  classification: {kind: evaluate, model: clf, protocol: classification}
"#,
    );
    let out = env.cmd(&["run", "-q"], &r);
    assert!(out.status.success(), "{}", text(&out).1);
    let db = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let get = |stage: &str, metric: &str| -> (f64, String) {
        db.query_row(
            "SELECT value, split FROM results WHERE stage = ?1 AND metric = ?2",
            [stage, metric],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{stage} {metric}: {e}"))
    };
    let (nmi, split) = get("metric", "nmi");
    assert!(nmi > 0.0 && nmi <= 1.0, "{nmi}");
    assert_eq!(split, "test/unseen-classes");
    let (acc, _) = get("metric", "fewshot/5way1shot");
    let (ci, _) = get("metric", "fewshot/5way1shot/ci95");
    assert!(acc > 0.2 && ci > 0.0 && ci < 0.1, "{acc} ± {ci}");
    let (top1, split) = get("classification", "top1");
    assert_eq!(split, "test/seen-classes");
    assert!(
        top1 > 0.5,
        "a CE-trained classifier beats chance (0.2) on its own classes: {top1}"
    );
    assert_eq!(get("classification", "queries").0, 150.0);

    // The classification protocol needs a classifier head; metric-only keys are refused.
    let bad = env.recipe(
        "data:\n  syn: {kind: synthetic}\nstages:\n  t: {kind: train, model: {}, loss: {triplet: 1}, epochs: 0}\n  e: {kind: evaluate, model: t, protocol: classification, nmi: false}\n",
    );
    let (_, err) = text(&env.cmd(&["plan"], &bad));
    assert!(
        err.contains("stages.e.nmi: applies to the metric protocol, not to classification"),
        "{err}"
    );
}
