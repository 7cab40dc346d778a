//! Which run a recipe's results come from, through the real binary on small synthetic
//! recipes: a copy that keeps another file's `name:` warns (and `--name` keeps both), every
//! run records its file and `--set`s, smoke runs are marked wherever results are shown, a
//! recipe without sweeps still has a figure, and what the progress and the summary say.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::Connection;
use serde_json::Value;

/// A teacher and its evaluation, each repeated with two seeds; nothing else is swept.
const RECIPE: &str = r#"
name: first
seed: 3
data:
  syn: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16}
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
    matrix:
      seeds: [0, 1]
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 4}
    loss: {rkd_d: 1}
  eval_teacher: {kind: evaluate, model: teacher}
  eval_student: {kind: evaluate, model: student}
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn recipe(&self, name: &str, body: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }
    fn runs(&self) -> PathBuf {
        self.path("runs")
    }
    fn db(&self) -> Connection {
        Connection::open(self.runs().join("results.sqlite")).unwrap()
    }
    /// `rkd-orch ARGS... --runs-dir RUNS`.
    fn rkd(&self, args: &[&str]) -> Output {
        bin()
            .args(args)
            .arg("--runs-dir")
            .arg(self.runs())
            .output()
            .unwrap()
    }
    /// A command that must succeed: (stdout, stderr).
    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.rkd(args);
        let (o, e) = text(&out);
        assert!(out.status.success(), "{args:?}:\n{o}\n{e}");
        (o, e)
    }
}

fn keys(plan_json: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(plan_json).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_copy_that_keeps_the_name_warns_and_name_keeps_both() {
    let env = Env::new();
    let first = env.recipe("first.yaml", RECIPE);
    env.ok(&["run", "-q", &first]);
    // Editing the same file is how a recipe evolves: no warning.
    let edited = env.recipe("first.yaml", &RECIPE.replace("epochs: 2", "epochs: 3"));
    let (_, e) = env.ok(&["run", "-q", &edited]);
    assert!(!e.contains("warning"), "{e}");
    env.ok(&["run", "-q", &env.recipe("first.yaml", RECIPE)]);

    // A copy with other content under the same name: the warning says how to keep both.
    let copy = env.recipe("copy.yaml", &RECIPE.replace("lr: 0.003", "lr: 0.001"));
    let (_, plan_err) = env.ok(&["plan", &copy]);
    assert!(
        plan_err.contains("warning: recipe name `first` was last run from"),
        "{plan_err}"
    );
    // --name keeps the copy beside the original, and is no part of the content keys.
    let (named, _) = env.ok(&["plan", &copy, "--name", "mine", "--format", "json"]);
    let (unnamed, _) = env.ok(&["plan", &copy, "--format", "json"]);
    assert_eq!(keys(&named), keys(&unnamed));
    assert_eq!(
        serde_json::from_str::<Value>(&named).unwrap()["recipe"],
        "mine"
    );
    let (_, e) = env.ok(&["run", "-q", &copy, "--name", "mine"]);
    assert!(!e.contains("warning"), "{e}");
    let (both, _) = env.ok(&["results"]);
    assert!(
        both.contains("recipe first\n") && both.contains("recipe mine\n"),
        "{both}"
    );
    // `results FILE --name NAME` reads the named results.
    let (mine, _) = env.ok(&["results", &copy, "--name", "mine"]);
    assert!(mine.starts_with("recipe mine\n"), "{mine}");

    let (_, e) = env.ok(&["run", "-q", &copy]);
    assert!(
        e.contains(&format!(
            "warning: recipe name `first` was last run from {first} (other content, sha256 "
        )) && e.contains("change `name:` in")
            && e.contains("--name NAME"),
        "{e}"
    );
    // Under --json, the warning is an event (and stderr stays quiet).
    let out = env.rkd(&["run", "--json", &first]);
    assert!(out.status.success());
    let (o, e) = text(&out);
    let warning: Value = o
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "warning")
        .unwrap_or_else(|| panic!("no warning event:\n{o}"));
    assert_eq!(warning["kind"], "recipe_name_taken");
    assert_eq!(warning["previous_file"], copy.as_str());
    assert!(warning["text"].as_str().unwrap().contains("--name"));
    assert!(e.is_empty(), "{e}");

    // A name that could not name a file is refused before anything runs.
    let out = env.rkd(&["run", &first, "--name", "../x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("--name: `../x` is not a valid name"),
        "{}",
        text(&out).1
    );

    // Each run records its file (as typed and absolute), its hash and its --sets.
    let (path, sets): (String, String) = env
        .db()
        .query_row(
            "SELECT recipe_path, sets FROM invocations WHERE recipe = 'mine'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        Path::new(&path),
        std::fs::canonicalize(&copy).unwrap().as_path()
    );
    assert_eq!(sets, "[]");
}

#[test]
fn smoke_runs_are_marked_in_results_pivots_plots_report_and_export() {
    let env = Env::new();
    let r = env.recipe("first.yaml", RECIPE);
    env.ok(&[
        "run",
        "-q",
        &r,
        "--set",
        "stages.*.epochs=1",
        "--set",
        "data.syn.train_limit=128",
        "--set",
        "stages.student.loss.rkd_d=2",
    ]);
    let (sets, smoke, in_results): (String, i64, i64) = env
        .db()
        .query_row(
            "SELECT sets, smoke, (SELECT MIN(smoke) FROM results WHERE recipe = 'first' AND is_current)
             FROM recipes WHERE recipe = 'first'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&sets).unwrap(),
        [
            "stages.*.epochs=1",
            "data.syn.train_limit=128",
            "stages.student.loss.rkd_d=2"
        ]
    );
    assert_eq!((smoke, in_results), (1, 1));

    let marker = "smoke run #1: --set 'stages.*.epochs=1' --set data.syn.train_limit=128 --set stages.student.loss.rkd_d=2";
    let (table, _) = env.ok(&["results", "first"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "recipe first");
    assert!(lines[1].starts_with(marker), "{table}");
    let (csv, _) = env.ok(&["results", "first", "--format", "csv"]);
    assert!(
        csv.starts_with("recipe,stage,kind,stage_key,smoke,overrides,recall@1"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().contains(",true,--set 'stages.*.epochs=1' --set data.syn.train_limit=128 --set stages.student.loss.rkd_d=2,"),
        "{csv}"
    );
    let (pivot, _) = env.ok(&["results", "first", "--metric", "recall@1", "--by", "stage"]);
    assert!(pivot.lines().nth(1).unwrap().starts_with(marker), "{pivot}");
    let (json, _) = env.ok(&[
        "results", "first", "--metric", "recall@1", "--by", "stage", "--format", "json",
    ]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["smoke"], true);
    assert_eq!(json["sets"][0], "stages.*.epochs=1");
    let (export, _) = env.ok(&["export", "--format", "json"]);
    let export: Vec<Value> = serde_json::from_str(&export).unwrap();
    assert!(export.iter().all(|r| r["smoke"] == true), "{export:?}");

    let svg = env.path("f.svg");
    env.ok(&["plot", "first", "-o", svg.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("smoke run #1"), "the figure says so");
    let (out, _) = env.ok(&["report", "first"]);
    let html = std::fs::read_to_string(out.trim()).unwrap();
    assert!(
        html.contains("<p class=\"banner smoke\">smoke run #1: --set 'stages.*.epochs=1'"),
        "{}",
        &html[..html.len().min(3000)]
    );

    // The full-scale run replaces the marker; a run of the file as written has none.
    env.ok(&["run", "-q", &r]);
    let (table, _) = env.ok(&["results", "first"]);
    assert!(!table.contains("smoke"), "{table}");
    let (csv, _) = env.ok(&["results", "first", "--format", "csv"]);
    assert!(csv.lines().nth(1).unwrap().contains(",false,,"), "{csv}");
    // Other overrides are shown, without the marker.
    env.ok(&["run", "-q", &r, "--set", "stages.student.loss.rkd_d=2"]);
    let (table, _) = env.ok(&["results", "first"]);
    assert_eq!(
        table.lines().nth(1).unwrap(),
        "run #3 with --set stages.student.loss.rkd_d=2"
    );
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn a_recipe_without_sweeps_plots_the_metric_per_stage() {
    let env = Env::new();
    let r = env.recipe("first.yaml", RECIPE);
    env.ok(&["run", "-q", &r]);
    let png = env.path("per-stage.png");
    let (out, _) = env.ok(&["plot", "first", "-o", png.to_str().unwrap()]);
    assert!(out.starts_with(&format!("{}: first: recall@1 per stage", png.display())));
    // Both evaluations of each seed are drawn (their mean ± std over the seeds).
    for s in [
        "eval_teacher[seed=0]",
        "eval_teacher[seed=1]",
        "eval_student[seed=0]",
        "eval_student[seed=1]",
    ] {
        assert!(out.contains(s), "{out}");
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(png_size(&bytes), (1100, 680));
    if let Ok(dir) = std::env::var("RKD_PLOT_DIR") {
        std::fs::copy(&png, Path::new(&dir).join("per-stage.png")).unwrap();
    }
    let svg = env.path("per-stage.svg");
    env.ok(&[
        "plot",
        "first",
        "--metric",
        "nmi",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    for needle in [
        "first: nmi per stage",
        "nmi (mean ± std over seed)",
        "\neval_teacher\n",
        "\neval_student\n",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
    // Each dot carries its number.
    assert!(svg.matches(" ± ").count() >= 3, "values beside the dots");
}

#[test]
fn progress_prints_counts_as_integers_and_the_report_numbers_its_tables_without_gaps() {
    let env = Env::new();
    let r = env.recipe("first.yaml", RECIPE);
    let (_, e) = env.ok(&["run", &r]);
    let counts: Vec<&str> = e
        .lines()
        .filter_map(|l| l.split("queries = ").nth(1))
        .collect();
    assert_eq!(counts.len(), 4, "{e}");
    assert!(
        counts.iter().all(|c| c.parse::<u64>().is_ok()),
        "counts print as integers: {counts:?}"
    );
    assert!(
        e.contains("recall@1 = 0."),
        "rates keep their decimals: {e}"
    );

    let (out, _) = env.ok(&["report", "first"]);
    let html = std::fs::read_to_string(out.trim()).unwrap();
    // The numbers a reader sees: those outside closed disclosures.
    let mut seen = Vec::new();
    let mut closed = 0usize;
    let mut rest = html.as_str();
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        if rest.starts_with("<details open") {
        } else if rest.starts_with("<details") {
            closed += 1;
        } else if rest.starts_with("</details>") {
            closed = closed.saturating_sub(1);
        } else if let Some(n) = rest.strip_prefix("<b>Table ") {
            let num: usize = n[..n.find('.').unwrap()].parse().unwrap();
            assert_eq!(closed, 0, "Table {num} is hidden in a closed <details>");
            seen.push(num);
        }
        rest = &rest[1..];
    }
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(seen, (1..=seen.len()).collect::<Vec<_>>());
}

#[test]
fn stages_an_early_failure_kept_from_starting_are_not_started_not_skipped() {
    let env = Env::new();
    // The student's loss overflows; its evaluation depends on it (skipped), the teacher's
    // evaluation does not (never started, without --keep-going).
    let nan = RECIPE
        .replace("name: first", "name: nan")
        .replace("    matrix:\n      seeds: [0, 1]\n", "")
        .replace(
            "    loss: {rkd_d: 1}\n",
            "    loss: {rkd_d: 1.0, rkd_a: 2.0}\n    optimizer: {kind: sgd, lr: 1.0e30}\n",
        );
    let r = env.recipe("nan.yaml", &nan);
    let out = env.rkd(&["run", "--json", "-j", "1", &r]);
    assert_eq!(out.status.code(), Some(1));
    let (o, _) = text(&out);
    let summary: Value = o
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "summary")
        .unwrap();
    assert_eq!(summary["skipped"], serde_json::json!(["eval_student"]));
    assert_eq!(summary["not_started"], serde_json::json!(["eval_teacher"]));
    let out = env.rkd(&["run", "-j", "1", &r]);
    assert_eq!(out.status.code(), Some(1));
    let (_, e) = text(&out);
    assert!(
        e.contains("nan: 0 ran, 1 cached, 1 failed, 1 skipped, 1 not started in"),
        "{e}"
    );
}
