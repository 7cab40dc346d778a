//! The result commands on a real database written by a real run of the binary: a small
//! sweep (p × sampler × two seeds) on synthetic data, then `results` (pivots, formats,
//! comparisons), `query`, `plot`, `report` and `export` as a researcher would use them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::Connection;
use serde_json::Value;

const SWEEP: &str = r#"
name: sweep
seed: 5
data:
  syn: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16}
defaults:
  data: syn
  epochs: 3
  batch_size: 32
  optimizer: {kind: adam, lr: 0.003}
stages:
  teacher:
    kind: train
    model: {hidden: [32], embedding: 8, l2norm: true}
    loss: {triplet: 1}
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 4}
    loss: {cc: 1, rkd_d: 1}
    sampler: {classes_per_batch: 4}
    matrix:
      loss.cc.p: [1, 2]
      sampler.kind: [random, class_balanced]
      seeds: [0, 1]
  eval:
    kind: evaluate
    model: student
  eval_teacher: {kind: evaluate, model: teacher}
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
}

struct Env {
    dir: tempfile::TempDir,
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

impl Env {
    /// A runs directory holding the sweep, run for real.
    fn run() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = env.rkd(
            &["run", "-q", "-j", "2", "--threads-per-job", "1"],
            &[&env.recipe(SWEEP)],
        );
        assert!(out.status.success(), "{}", text(&out).1);
        env
    }
    fn recipe(&self, body: &str) -> String {
        let p = self.dir.path().join("sweep.yaml");
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn db(&self) -> Connection {
        Connection::open(self.runs().join("results.sqlite")).unwrap()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `rkd-orch ARGS... EXTRA... --runs-dir RUNS`.
    fn rkd(&self, args: &[&str], extra: &[&str]) -> Output {
        bin()
            .args(args)
            .args(extra)
            .arg("--runs-dir")
            .arg(self.runs())
            .output()
            .unwrap()
    }
    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.rkd(args, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}:\n{stdout}\n{stderr}");
        stdout
    }
    /// recall@1 of every eval variant: (p, sampler, seed, value).
    fn recalls(&self) -> Vec<(String, String, String, f64)> {
        let c = self.db();
        let mut s = c
            .prepare(
                "SELECT p.value, s.value, d.value, r.value FROM results r
                 JOIN params p ON p.recipe = r.recipe AND p.stage = r.stage AND p.path = 'loss.cc.p'
                 JOIN params s ON s.recipe = r.recipe AND s.stage = r.stage AND s.path = 'sampler.kind'
                 JOIN params d ON d.recipe = r.recipe AND d.stage = r.stage AND d.path = 'seed'
                 WHERE r.metric = 'recall@1' AND r.base = 'eval'",
            )
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0);
    (m, var.sqrt())
}

#[test]
fn schema_v3_records_params_artifacts_overrides_and_views() {
    let env = Env::run();
    let c = env.db();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    // The run of the file as written: no override, not a smoke run.
    let (sets, smoke): (String, i64) = c
        .query_row(
            "SELECT sets, smoke FROM recipes WHERE recipe = 'sweep'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sets.as_str(), smoke), ("[]", 0));
    // The documented example: every stage with p = 2 (4 students and their 4 evaluations).
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM params WHERE path = 'loss.cc.p' AND value = '2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 8);
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM params WHERE path = 'loss.cc.p' AND value_num = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 8);
    // Evaluations inherit their model's parameters; the declared name and kind are kept.
    let (base, kind, origin): (String, String, String) = c
        .query_row(
            "SELECT rs.base, rs.declared_kind, p.origin FROM recipe_stages rs
             JOIN params p ON p.recipe = rs.recipe AND p.stage = rs.stage
             WHERE rs.stage = 'eval[p=1,sampler=random,seed=0]' AND p.path = 'seed'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (base.as_str(), kind.as_str(), origin.as_str()),
        ("eval", "evaluate", "student")
    );
    // Artifacts with their sizes; stage status with timings; one current recipe.
    let (files, bytes): (i64, i64) = c
        .query_row(
            "SELECT COUNT(*), MIN(bytes) FROM artifacts WHERE file = 'model.safetensors'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(files, 9, "the teacher and 8 students");
    assert!(bytes > 100);
    let done: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM stage_status WHERE recipe = 'sweep' AND status = 'done' AND wall_s > 0 AND device = 'cpu'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done, 18);
    let stages: i64 = c
        .query_row(
            "SELECT stages FROM recipes WHERE recipe = 'sweep'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stages, 18);
    // Training curves, each loss term separately.
    let terms: Vec<String> = c
        .prepare(
            "SELECT DISTINCT term FROM training_curves WHERE stage LIKE 'student%' ORDER BY term",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(terms, ["cc", "rkd_d", "total"]);
    let epochs: i64 = c
        .query_row(
            "SELECT value FROM stage_config WHERE stage_key = (SELECT key FROM recipe_stages WHERE stage = 'teacher') AND path = 'epochs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(epochs, 3);
}

#[test]
fn results_pivot_is_mean_and_std_over_seeds_in_every_format() {
    let env = Env::run();
    let recalls = env.recalls();
    assert_eq!(recalls.len(), 8);
    let cell = |p: &str, s: &str| -> Vec<f64> {
        recalls
            .iter()
            .filter(|r| r.0 == p && r.1 == s)
            .map(|r| r.3)
            .collect()
    };
    let table = env.ok(&[
        "results", "sweep", "--metric", "recall@1", "--by", "p", "--by", "sampler",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "sweep: recall@1, mean ± std over seed (n = 2 per cell); * best (higher is better)"
    );
    assert!(
        lines[1].starts_with("p \\ sampler")
            && lines[1].contains("random")
            && lines[1].contains("class_balanced")
    );
    let (m, s) = mean_std(&cell("2", "class_balanced"));
    let shown = format!("{m:.4} ± {s:.4}");
    assert!(
        lines[4].starts_with('2') && lines[4].contains(&shown),
        "{table}\n{shown}"
    );
    assert_eq!(
        lines[3..5].iter().filter(|l| l.contains(" *")).count(),
        1,
        "exactly one best cell:\n{table}"
    );
    assert!(
        table.contains("left out (they lack a --by parameter): eval_teacher"),
        "{table}"
    );

    // JSON: the numbers at full precision and the stages behind each cell.
    let json: Value = serde_json::from_str(&env.ok(&[
        "results", "sweep", "--metric", "recall@1", "--by", "p", "--by", "sampler", "--format",
        "json",
    ]))
    .unwrap();
    let cells = json["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let mut best = (f64::MIN, String::new());
    for c in cells {
        let (p, s) = (
            c["p"].to_string(),
            c["sampler"].as_str().unwrap().to_string(),
        );
        let (m, sd) = mean_std(&cell(&p, &s));
        assert!((c["mean"].as_f64().unwrap() - m).abs() < 1e-12, "{c}");
        assert!((c["std"].as_f64().unwrap() - sd).abs() < 1e-12, "{c}");
        assert_eq!(c["n"], 2);
        assert_eq!(c["stages"].as_array().unwrap().len(), 2);
        if m > best.0 {
            best = (m, format!("{p}/{s}"));
        }
    }
    let marked: Vec<String> = cells
        .iter()
        .filter(|c| c["best"] == true)
        .map(|c| format!("{}/{}", c["p"], c["sampler"].as_str().unwrap()))
        .collect();
    assert_eq!(marked, [best.1]);

    // CSV for pandas: one row per cell; Markdown: the best in bold.
    let csv = env.ok(&[
        "results", "sweep", "--metric", "recall@1", "--by", "p", "--by", "sampler", "--format",
        "csv",
    ]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "recipe,metric,p,sampler,mean,std,n,best,stages,stage_keys,smoke,overrides"
    );
    assert_eq!(rows.len(), 5);
    let md = env.ok(&[
        "results", "sweep", "--metric", "recall@1", "--by", "p", "--by", "sampler", "--format",
        "markdown",
    ]);
    assert!(
        md.contains("| p \\ sampler | random | class_balanced |"),
        "{md}"
    );
    assert_eq!(
        md.matches("**").count(),
        2 + 2 + 2,
        "caption, legend and the best cell:\n{md}"
    );

    // A parameter that still varies inside the cells is refused, with what to do.
    let out = env.rkd(
        &["results", "sweep", "--metric", "recall@1", "--by", "p"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out)
            .1
            .contains("add it to --by, or keep one with --where sampler=VALUE"),
        "{}",
        text(&out).1
    );
    let one = env.ok(&["results", "sweep", "--by", "p", "--where", "sampler=random"]);
    assert!(one.lines().nth(1).unwrap().starts_with("p "), "{one}");
    let out = env.rkd(
        &["results", "sweep", "--metric", "recall@9", "--by", "p"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains(
            "metrics: loss/cc, loss/rkd_d, loss/total, loss/triplet, nmi, queries, recall@1"
        ),
        "{}",
        text(&out).1
    );

    // Without --metric/--by the table is the one `run` printed, in any format.
    let plain = env.ok(&["results", "sweep"]);
    assert!(plain.starts_with("recipe sweep\nstage "), "{plain}");
    let csv = env.ok(&["results", "sweep", "--format", "csv"]);
    assert!(
        csv.starts_with(
            "recipe,stage,kind,stage_key,smoke,overrides,recall@1,recall@2,recall@4,recall@8,nmi,queries,loss/total\n"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 18);

    // Two stages side by side.
    let cmp = env.ok(&[
        "results",
        "sweep",
        "--compare",
        "eval[p=1,sampler=random,seed=0]",
        "eval_teacher",
    ]);
    assert!(
        cmp.lines().any(|l| l.starts_with("recall@1")
            && (l.ends_with(" A") || l.ends_with(" B") || l.ends_with(" ="))),
        "{cmp}"
    );
    let out = env.rkd(
        &["results", "sweep", "--compare", "eval", "eval_teacher"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("has 8 variants, name one"),
        "{}",
        text(&out).1
    );
}

#[test]
fn a_shrunk_sweep_leaves_the_tables_and_two_recipes_compare() {
    let env = Env::run();
    // The recipe now sweeps p = 1 only: the p = 2 stages are no longer part of it.
    let shrunk = SWEEP.replace("loss.cc.p: [1, 2]", "loss.cc.p: [1]");
    let out = env.rkd(&["run", "-q"], &[&env.recipe(&shrunk)]);
    assert!(out.status.success(), "{}", text(&out).1);
    let t = env.ok(&["results", "sweep", "--by", "p", "--by", "sampler"]);
    assert!(!t.lines().any(|l| l.starts_with("2 ")), "{t}");
    let stale: i64 = env
        .db()
        .query_row(
            "SELECT COUNT(*) FROM results WHERE NOT is_current AND metric = 'recall@1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, 4, "kept, but marked");
    // The same stages under another recipe name compare as identical.
    let renamed = shrunk.replace("name: sweep", "name: sweep2");
    let out = env.rkd(&["run", "-q"], &[&env.recipe(&renamed)]);
    assert!(out.status.success(), "{}", text(&out).1);
    let cmp = env.ok(&["results", "--compare", "sweep", "sweep2"]);
    assert!(
        cmp.starts_with("A = recipe sweep, B = recipe sweep2"),
        "{cmp}"
    );
    assert!(
        cmp.lines()
            .filter(|l| l.starts_with("eval"))
            .all(|l| l.ends_with("same stage")),
        "{cmp}"
    );
}

#[test]
fn query_is_read_only_with_clear_errors() {
    let env = Env::run();
    let t = env.ok(&["query", "SELECT stage, round(value, 4) AS r1 FROM results WHERE metric = 'recall@1' AND stage = 'eval_teacher'"]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["stage", "r1"]
    );
    assert!(lines[2].starts_with("eval_teacher"));
    let j: Value = serde_json::from_str(&env.ok(&[
        "query",
        "SELECT COUNT(*) AS n, 'x' AS s, NULL AS z FROM params",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        j[0]["n"], 48,
        "3 parameters of 8 students and 8 evaluations: {j}"
    );
    assert!(j[0]["z"].is_null());
    let csv = env.ok(&[
        "query",
        "SELECT path, COUNT(*) AS n FROM params GROUP BY path ORDER BY path",
        "--format",
        "csv",
    ]);
    assert_eq!(csv, "path,n\nloss.cc.p,16\nsampler.kind,16\nseed,16\n");

    for sql in [
        "DELETE FROM metrics",
        "UPDATE stages SET status = 'x'",
        "DROP VIEW results",
        "INSERT INTO params SELECT * FROM params",
    ] {
        let out = env.rkd(&["query", sql], &[]);
        assert_eq!(out.status.code(), Some(2), "{sql}");
        assert!(text(&out).1.contains("read-only"), "{}", text(&out).1);
    }
    let out = env.rkd(&["query", "SELECT nope FROM results"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("bad SQL: no such column: nope"),
        "{}",
        text(&out).1
    );
    let n: i64 = env
        .db()
        .query_row("SELECT COUNT(*) FROM metrics", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0, "nothing was deleted");
    // No database: a failure that says what to do.
    let out = bin()
        .args(["query", "SELECT 1", "--runs-dir"])
        .arg(env.path("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("run a recipe first"),
        "{}",
        text(&out).1
    );
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn plots_are_valid_png_and_svg_that_name_their_stages() {
    let env = Env::run();
    let keys: Vec<String> = env
        .db()
        .prepare("SELECT stage_key FROM results WHERE base = 'eval' AND metric = 'recall@1'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(keys.len(), 8);

    let png = env.path("sweep.png");
    let out = env.ok(&[
        "plot",
        "sweep",
        "--metric",
        "recall@1",
        "--x",
        "p",
        "--by",
        "sampler",
        "-o",
        png.to_str().unwrap(),
    ]);
    for k in &keys {
        assert!(
            out.contains(k.as_str()),
            "the command lists the stages it drew:\n{out}"
        );
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(png_size(&bytes), (1100, 680));
    assert!(
        bytes.len() > 20_000,
        "a real picture, not an empty canvas: {} bytes",
        bytes.len()
    );
    let meta = String::from_utf8_lossy(&bytes);
    assert!(
        keys.iter().all(|k| meta.contains(k.as_str())),
        "every key in the PNG's text chunk"
    );
    if let Ok(dir) = std::env::var("RKD_PLOT_DIR") {
        // For looking at the figures by eye.
        std::fs::copy(&png, Path::new(&dir).join("sweep.png")).unwrap();
    }

    // The same figure as SVG, with defaults (x: the first swept parameter, lines: the rest).
    let svg_path = env.path("sweep.svg");
    env.ok(&[
        "plot",
        "sweep",
        "-o",
        svg_path.to_str().unwrap(),
        "--size",
        "900x600",
    ]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg width=\"900\" height=\"600\""),
        "{}",
        &svg[..100]
    );
    for needle in [
        "sweep: recall@1 vs p",
        "p (loss.cc.p)",
        "recall@1 (mean ± std over seed)",
        "\nrandom\n",
        "\nclass_balanced\n",
        "<desc>rkd-orch",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
    assert!(keys.iter().all(|k| svg.contains(k.as_str())));

    // Training curves and recall@K.
    for (args, name) in [
        (
            vec!["--curves", "--stage", "student", "--where", "p=1"],
            "curves.png",
        ),
        (
            vec!["--curves", "--stage", "student[p=2,sampler=random,seed=1]"],
            "terms.png",
        ),
        (
            vec!["--recall", "--by", "p", "--by", "sampler"],
            "recall.png",
        ),
        (
            vec!["--recall", "--stage", "eval_teacher"],
            "recall-teacher.svg",
        ),
    ] {
        let path = env.path(name);
        let mut a = vec!["plot", "sweep", "-o", path.to_str().unwrap()];
        a.extend(args);
        env.ok(&a);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 5_000, "{name}: {} bytes", bytes.len());
        if name.ends_with(".png") {
            assert_eq!(png_size(&bytes), (1100, 680));
        }
        if let Ok(dir) = std::env::var("RKD_PLOT_DIR") {
            std::fs::copy(&path, Path::new(&dir).join(name)).unwrap();
        }
    }
    // Mistakes are usage errors that say what to type.
    let bad = env.path("x.pdf");
    let out = env.rkd(&["plot", "sweep", "-o", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains(".png or .svg"));
    let out = env.rkd(
        &[
            "plot",
            "sweep",
            "--x",
            "gamma",
            "-o",
            env.path("x.png").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("parameters: stage, p, sampler, seed"),
        "{}",
        text(&out).1
    );
}

#[test]
fn report_is_one_self_contained_page_that_traces_every_number() {
    let env = Env::run();
    let out = env.ok(&["report", "sweep"]);
    let path = PathBuf::from(out.trim());
    assert_eq!(path, env.runs().join("reports/sweep.html"));
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: inline SVG figures, nothing fetched.
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<script")
    );
    assert!(
        html.matches("<svg").count() >= 4,
        "sweep, recall@K of the sweep, recall@K, curves"
    );
    let c = env.db();
    let (sha, file): (String, String) = c
        .query_row(
            "SELECT recipe_sha256, recipe_file FROM recipes WHERE recipe = 'sweep'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(html.contains(&sha) && html.contains(&file));
    let keys: Vec<String> = c
        .prepare("SELECT key FROM recipe_stages WHERE recipe = 'sweep'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for k in &keys {
        assert!(
            html.contains(k.as_str()),
            "stage key {k} missing from the report"
        );
    }
    let fingerprint: String = c
        .query_row(
            "SELECT json_extract(manifest, '$.config.data.source.fingerprint') FROM stages LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(html.contains(&fingerprint), "data fingerprint");
    assert!(
        html.contains("<code>student.seed</code> ∈ {0, 1}"),
        "swept seeds"
    );
    assert!(
        html.contains("mean ± std over seed (n = 2 per cell)"),
        "the pivot"
    );
    assert!(html.contains("Figure 1.") && html.contains("From 8 stages (names and content keys)"));
    assert!(html.contains(&format!("rkd-orch {}", env!("CARGO_PKG_VERSION"))));
    // --output elsewhere, by recipe file.
    let other = env.path("out/report.html");
    let recipe = env.recipe(SWEEP);
    env.ok(&["report", &recipe, "-o", other.to_str().unwrap()]);
    assert!(other.exists());
    let out = env.rkd(&["report", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("recipes: sweep"), "{}", text(&out).1);
}

#[test]
fn export_is_one_row_per_stage_and_metric_with_parameter_columns() {
    let env = Env::run();
    let n_results: usize = env
        .db()
        .query_row("SELECT COUNT(*) FROM results", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize;
    let csv = env.ok(&["export", "--format", "csv"]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "recipe",
            "stage",
            "base",
            "kind",
            "declared_kind",
            "stage_key",
            "metric",
            "value",
            "split",
            "smoke",
            "overrides",
            "p",
            "sampler",
            "seed"
        ]
    );
    assert_eq!(lines.count(), n_results);
    assert!(
        csv.contains(",eval_teacher,eval_teacher,evaluate,evaluate,"),
        "{csv}"
    );
    let out = env.path("all.json");
    env.ok(&[
        "export",
        "sweep",
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(rows.len(), n_results);
    let r = rows
        .iter()
        .find(|r| {
            r["stage"] == "eval[p=2,sampler=class_balanced,seed=1]" && r["metric"] == "recall@1"
        })
        .unwrap();
    assert_eq!(
        (r["p"].as_i64(), r["seed"].as_i64(), r["sampler"].as_str()),
        (Some(2), Some(1), Some("class_balanced"))
    );
    let recalls = env.recalls();
    let expected = recalls
        .iter()
        .find(|x| x.0 == "2" && x.1 == "class_balanced" && x.2 == "1")
        .unwrap()
        .3;
    assert_eq!(r["value"].as_f64(), Some(expected));
    assert!(rows
        .iter()
        .any(|r| r["stage"] == "teacher" && r["p"].is_null()));
}

#[test]
fn the_database_is_readable_while_a_run_writes_it() {
    let env = Env::run();
    // A longer student, so that the run is still writing while we read.
    let long = SWEEP
        .replace("loss.cc.p: [1, 2]", "loss.cc.p: [3]")
        .replace(
            "sampler: {classes_per_batch: 4}\n",
            "sampler: {classes_per_batch: 4}\n    epochs: 1000\n",
        );
    let mut child = bin()
        .args(["run", "-q", "-j", "1"])
        .arg(env.recipe(&long))
        .arg("--runs-dir")
        .arg(env.runs())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut reads = 0;
    while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 60 {
        let out = env.rkd(
            &[
                "query",
                "SELECT COUNT(*) AS n FROM stage_status WHERE recipe = 'sweep'",
                "--format",
                "csv",
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "a read failed during the run: {}",
            text(&out).1
        );
        let out = env.rkd(&["results", "sweep"], &[]);
        assert!(out.status.success(), "{}", text(&out).1);
        reads += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        reads >= 2,
        "the run ended before it could be read ({reads} reads)"
    );
}
