//! Integration tests: the real `rkd-orch` binary, real child processes, a real SQLite file,
//! on small synthetic data (and small IDX files written here).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rusqlite::Connection;

const RECIPE: &str = r#"
name: tiny
seed: 1
data:
  syn:
    kind: synthetic
    classes: 8
    dim: 24
    train_per_class: 48
    test_per_class: 24
stages:
  teacher:
    kind: train
    model: {hidden: [32], embedding: 16, l2norm: true}
    loss: {triplet: {weight: 1.0, margin: 0.2, mining: semi_hard}}
    optimizer: {kind: adam, lr: 0.003}
    epochs: 3
    batch_size: 32
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 8}
    loss: {rkd_d: 1.0, rkd_a: 2.0}
    optimizer: {kind: adam, lr: 0.003}
    epochs: 3
    batch_size: 32
  eval_teacher: {kind: evaluate, model: teacher}
  eval_student: {kind: evaluate, model: student, recall_at: [1, 4]}
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
    fn recipe(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn cmd(&self, args: &[&str], recipe: &Path) -> Output {
        let mut c = bin();
        c.args(args).arg(recipe).arg("--runs-dir").arg(self.runs());
        c.output().unwrap()
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// (stage, metric) → value from the `results` view.
fn metrics(db: &Path) -> Vec<(String, String, f64)> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare(
            "SELECT stage, metric, value FROM results WHERE recipe = 'tiny' ORDER BY stage, metric",
        )
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn recall1(rows: &[(String, String, f64)], stage: &str) -> f64 {
    rows.iter()
        .find(|(s, m, _)| s == stage && m == "recall@1")
        .unwrap_or_else(|| panic!("no recall@1 for {stage} in {rows:?}"))
        .2
}

#[test]
fn runs_end_to_end_then_finds_everything_cached() {
    let env = Env::new();
    let recipe = env.recipe("tiny.yaml", RECIPE);
    let out = env.cmd(&["run"], &recipe);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("4 stages, 0 cached, 4 to run"), "{stderr}");
    assert!(stderr.contains("epoch 3/3"), "{stderr}");
    assert!(
        stdout.contains("recipe tiny") && stdout.contains("recall@1"),
        "{stdout}"
    );

    // The cache holds one committed directory per stage, no temporaries (besides `derived/`,
    // the teacher's outputs shared with its students).
    let cache: Vec<String> = std::fs::read_dir(env.runs().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "derived")
        .collect();
    assert_eq!(cache.len(), 4, "{cache:?}");
    assert!(cache.iter().all(|n| !n.contains(".tmp")));
    let teacher_dir = std::fs::read_dir(env.runs().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").exists())
        .find(|p| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap();
            m["config"]["kind"] == "train"
        })
        .unwrap();
    for f in ["model.json", "manifest.json", "result.json"] {
        assert!(teacher_dir.join(f).exists(), "{f}");
    }
    // The checkpoint is plain safetensors, readable without candle.
    let bytes = std::fs::read(teacher_dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["fc0.bias", "fc0.weight", "fc1.bias", "fc1.weight"]);
    assert_eq!(st.tensor("fc0.weight").unwrap().shape(), &[32, 24]);

    // SQLite has one row per final metric of each evaluate stage, plus the training losses.
    let db = env.runs().join("results.sqlite");
    let rows = metrics(&db);
    let evals: Vec<_> = rows
        .iter()
        .filter(|(s, m, _)| s.starts_with("eval") && m.starts_with("recall@"))
        .collect();
    assert_eq!(evals.len(), 4 + 2, "{rows:?}");
    let (t, s) = (
        recall1(&rows, "eval_teacher"),
        recall1(&rows, "eval_student"),
    );
    assert!((0.0..=1.0).contains(&t) && (0.0..=1.0).contains(&s));
    let c = Connection::open(&db).unwrap();
    let journal: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let epochs: i64 = c
        .query_row("SELECT COUNT(DISTINCT epoch) FROM epoch_metrics", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(epochs, 3);

    // Second run: nothing trains, same numbers.
    let started = Instant::now();
    let out = env.cmd(&["run"], &recipe);
    let (stdout2, stderr2) = text(&out);
    assert!(out.status.success(), "{stderr2}");
    assert!(
        stderr2.contains("4 stages, 4 cached, 0 to run"),
        "{stderr2}"
    );
    assert!(!stderr2.contains("started"), "{stderr2}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(metrics(&db), rows);
    assert_eq!(stdout2, stdout);

    // `plan` agrees, and `results` prints the same table by file or by name.
    let (plan, _) = text(&env.cmd(&["plan"], &recipe));
    assert!(plan.contains("4 stages, 4 cached, 0 to run"), "{plan}");
    assert_eq!(plan.matches("  cached").count(), 4, "{plan}");
    let (by_file, _) = text(&env.cmd(&["results"], &recipe));
    assert_eq!(by_file, stdout);
    let out = bin()
        .args(["results", "tiny", "--runs-dir"])
        .arg(env.runs())
        .output()
        .unwrap();
    assert_eq!(text(&out).0, stdout);
}

#[test]
fn results_are_identical_across_independent_runs() {
    let (a, b) = (Env::new(), Env::new());
    for env in [&a, &b] {
        let r = env.recipe("tiny.yaml", RECIPE);
        let out = env.cmd(&["run", "-q"], &r);
        assert!(out.status.success(), "{}", text(&out).1);
    }
    // Bit-identical: seeds come from the content key, not from a clock or a thread RNG.
    assert_eq!(
        metrics(&a.runs().join("results.sqlite")),
        metrics(&b.runs().join("results.sqlite"))
    );
}

#[test]
fn a_changed_stage_reruns_with_its_dependants_only() {
    let env = Env::new();
    let r = env.recipe("tiny.yaml", RECIPE);
    assert!(env.cmd(&["run", "-q"], &r).status.success());
    // Change the student: the teacher and its evaluation stay cached.
    let changed = env.recipe("tiny.yaml", &RECIPE.replace("rkd_a: 2.0", "rkd_a: 1.0"));
    let (plan, _) = text(&env.cmd(&["plan"], &changed));
    assert!(
        plan.contains("will run: config changed: loss.rkd_a.weight 2.0 → 1.0 (was "),
        "{plan}"
    );
    // The evaluation of the student will run because its input changed.
    assert!(
        plan.contains("will run: input changed: model (was "),
        "{plan}"
    );
    let out = env.cmd(&["run"], &changed);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4 stages, 2 cached, 2 to run"), "{stderr}");
}

#[test]
fn a_bad_recipe_exits_2_with_positions_and_writes_nothing() {
    let env = Env::new();
    let bad = RECIPE
        .replace(
            "epochs: 3\n    batch_size: 32\n  student",
            "epoch: 3\n    batch_size: 32\n  student",
        )
        .replace("teacher: teacher", "teacher: techer");
    let r = env.recipe("bad.yaml", &bad);
    for cmd in ["run", "plan"] {
        let out = env.cmd(&[cmd], &r);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let file = r.display().to_string();
        assert!(
            stderr.contains(&format!(
                "{file}:17:5: stages.teacher (train): unknown key `epoch`; did you mean `epochs`?"
            )),
            "{stderr}"
        );
        assert!(stderr.contains(&format!("{file}:21:14: stages.student.teacher: no stage named `techer`; did you mean `teacher`?")), "{stderr}");
        assert!(
            !env.runs().exists(),
            "nothing may be written for a refused recipe"
        );
    }
    // Usage errors are exit code 2 as well.
    let out = bin().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_nan_loss_fails_the_stage_with_epoch_and_step_and_caches_nothing() {
    let env = Env::new();
    // An absurd learning rate makes the student's loss overflow within a few steps.
    let nan = RECIPE.replace(
        "loss: {rkd_d: 1.0, rkd_a: 2.0}\n    optimizer: {kind: adam, lr: 0.003}",
        "loss: {rkd_d: 1.0, rkd_a: 2.0}\n    optimizer: {kind: sgd, lr: 1.0e30}",
    );
    let r = env.recipe("nan.yaml", &nan);
    let out = env.cmd(&["run"], &r);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("at epoch 1, step "), "{stderr}");
    assert!(stderr.contains("stage `student` failed"), "{stderr}");
    assert!(
        stderr.contains("eval_student") && stderr.contains("skipped"),
        "{stderr}"
    );
    // The teacher finished and is kept; the student left nothing behind; the independent
    // eval_teacher was not started after the failure.
    let entries = || -> Vec<String> {
        std::fs::read_dir(env.runs().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "derived")
            .collect()
    };
    assert_eq!(entries().len(), 1, "{:?}", entries());
    assert!(stderr.contains("--keep-going"), "{stderr}");

    // With --keep-going the independent branch finishes; the student fails the same way.
    let out = env.cmd(&["run", "--keep-going"], &r);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(entries().len(), 2, "{:?}", entries());
    let c = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let (status, error): (String, String) = c
        .query_row(
            "SELECT status, error FROM stages JOIN recipe_stages USING (key) WHERE stage = 'student'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("epoch 1, step"), "{error}");
}

#[test]
fn a_killed_run_keeps_finished_stages_and_resumes_to_the_same_results() {
    // A longer student so that there is time to kill the coordinator while it trains.
    let long = RECIPE.replace(
        "epochs: 3\n    batch_size: 32\n  eval",
        "epochs: 400\n    batch_size: 32\n  eval",
    );
    let env = Env::new();
    let r = env.recipe("tiny.yaml", &long);
    // In a process group of its own, so that the coordinator and its stage processes can be
    // killed together, as a power cut would.
    let mut child = bin()
        .arg("run")
        .arg(&r)
        .arg("--runs-dir")
        .arg(env.runs())
        .arg("-q")
        .process_group(0)
        .spawn()
        .unwrap();
    // Wait for the teacher's cache entry, then kill everything that runs.
    let cache = env.runs().join("cache");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A committed entry (not a `<key>.tmp-*` directory that is about to be renamed).
        let done = std::fs::read_dir(&cache)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().len() == 32 && e.path().join("result.json").exists())
            })
            .unwrap_or(false);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "teacher never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 -{}", child.id()))
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
    let committed = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().len() == 32 && e.path().join("result.json").exists())
        .count();
    assert!(
        committed < 4,
        "the run finished before it could be interrupted"
    );

    let out = env.cmd(&["run"], &r);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("teacher") && stderr.contains("cached"),
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.trim_start().starts_with("teacher ") && l.contains("started")),
        "the teacher must not train again:\n{stderr}"
    );
    let resumed = metrics(&env.runs().join("results.sqlite"));

    let fresh = Env::new();
    let r2 = fresh.recipe("tiny.yaml", &long);
    assert!(fresh.cmd(&["run", "-q"], &r2).status.success());
    assert_eq!(resumed, metrics(&fresh.runs().join("results.sqlite")));
}

#[test]
fn idx_files_load_as_fashion_mnist_and_as_idx() {
    use rkd_orch::ml::data::write_idx;
    let env = Env::new();
    let dir = env.dir.path().join("fm");
    std::fs::create_dir(&dir).unwrap();
    // 10 classes of 6×6 "images": a bright block whose position depends on the class.
    let make = |n: usize, seed: u64| {
        let mut imgs = Vec::with_capacity(n * 36);
        let mut labels = Vec::with_capacity(n);
        let mut s = seed;
        for i in 0..n {
            let c = (i % 10) as u8;
            labels.push(c);
            for p in 0..36u64 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (s >> 58) as u8; // 0..63
                let on = p as u8 % 10 == c || (p as u8 + 3) % 10 == c;
                imgs.push(if on { 180 + noise } else { noise });
            }
        }
        (imgs, labels)
    };
    let (ti, tl) = make(300, 1);
    let (vi, vl) = make(100, 2);
    write_idx(&dir.join("train-images-idx3-ubyte.gz"), &[300, 6, 6], &ti).unwrap();
    write_idx(&dir.join("train-labels-idx1-ubyte.gz"), &[300], &tl).unwrap();
    write_idx(&dir.join("t10k-images-idx3-ubyte"), &[100, 6, 6], &vi).unwrap();
    write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[100], &vl).unwrap();
    let d = dir.display();
    let recipe = format!(
        r#"
data:
  fm: {{kind: fashion-mnist, path: {d}}}
  raw:
    kind: idx
    train_images: {d}/train-images-idx3-ubyte.gz
    train_labels: {d}/train-labels-idx1-ubyte.gz
    test_images: {d}/t10k-images-idx3-ubyte
    test_labels: {d}/t10k-labels-idx1-ubyte
    train_classes: [0, 1, 2]
    eval_classes: [7, 8, 9]
stages:
  net: {{kind: train, data: fm, model: {{hidden: [16], embedding: 8}}, loss: {{triplet: 1}}, epochs: 2, batch_size: 30}}
  eval_fm: {{kind: evaluate, data: fm, model: net}}
  eval_raw: {{kind: evaluate, data: raw, model: net}}
"#
    );
    let r = env.recipe("idx.yaml", &recipe);
    let out = env.cmd(&["run"], &r);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("eval_fm") && stdout.contains("eval_raw"),
        "{stdout}"
    );
    // 50 test images of classes 5..9, and 30 of classes 7..9.
    let c = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let q: Vec<(String, f64)> = c
        .prepare("SELECT stage, value FROM results WHERE metric = 'queries' ORDER BY stage")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        q,
        vec![
            ("eval_fm".to_string(), 50.0),
            ("eval_raw".to_string(), 30.0)
        ]
    );
}

#[test]
fn every_shipped_recipe_is_valid() {
    // Needs Debian's dataset-fashion-mnist, which .ci/run installs.
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let env = Env::new();
    let mut n = 0;
    for e in std::fs::read_dir(&recipes).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let out = env.cmd(&["plan"], &p);
            assert!(out.status.success(), "{}: {}", p.display(), text(&out).1);
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn every_loss_trains_through_the_binary_and_logs_each_term() {
    let env = Env::new();
    let recipe = r#"
name: mix
data:
  syn: {kind: synthetic, classes: 8, dim: 24, train_per_class: 48, test_per_class: 24}
stages:
  teacher:
    kind: train
    model: {hidden: [32, 24], embedding: 16, classes: 4}
    loss: {triplet: {mining: distance_weighted}, ce: 0.5}
    epochs: 2
    batch_size: 32
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16, 12], embedding: 8, classes: 4}
    loss:
      rkd_d: {weight: 1.0, keep: 0.5}
      rkd_a: {weight: 2.0, keep: 0.25}
      sp: {weight: 10.0, on: hidden1}
      cc: {weight: 1.0, kernel: taylor, p: 3, gamma: 0.4, on: hidden2}
      kd: {weight: 0.5, temperature: 4}
      ce: 0.5
      triplet: {mining: all}
    epochs: 2
    batch_size: 32
  eval: {kind: evaluate, model: student}
"#;
    let r = env.recipe("mix.yaml", recipe);
    let out = env.cmd(&["run"], &r);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let c = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let terms: Vec<String> = c
        .prepare(
            "SELECT DISTINCT e.name FROM epoch_metrics e JOIN recipe_stages rs USING (key)
             WHERE rs.stage = 'student' ORDER BY e.name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        terms,
        [
            "loss/cc",
            "loss/ce",
            "loss/kd",
            "loss/rkd_a",
            "loss/rkd_d",
            "loss/sp",
            "loss/total",
            "loss/triplet"
        ]
    );
    // The weighted total is the weighted sum of the terms (per step, so also on average).
    let v = |name: &str| -> f64 {
        c.query_row(
            "SELECT e.value FROM epoch_metrics e JOIN recipe_stages rs USING (key)
             WHERE rs.stage = 'student' AND e.epoch = 2 AND e.name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let weighted = v("loss/rkd_d")
        + 2.0 * v("loss/rkd_a")
        + 10.0 * v("loss/sp")
        + v("loss/cc")
        + 0.5 * v("loss/kd")
        + 0.5 * v("loss/ce")
        + v("loss/triplet");
    assert!(
        (weighted - v("loss/total")).abs() < 1e-4 * v("loss/total").abs().max(1e-6),
        "{weighted} vs {}",
        v("loss/total")
    );
}

#[test]
fn a_loss_on_an_output_the_models_lack_is_refused_at_its_line() {
    let env = Env::new();
    let bad = RECIPE.replace(
        "loss: {rkd_d: 1.0, rkd_a: 2.0}",
        "loss: {rkd_d: 1.0, kd: {on: logits}, sp: {on: hidden3}}",
    );
    let r = env.recipe("bad.yaml", &bad);
    let out = env.cmd(&["run"], &r);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let f = r.display().to_string();
    assert!(stderr.contains(&format!("{f}:23:33: stages.student.loss.kd: the model of `student` has no `logits` output (give it `classes: N` for a classifier head)")), "{stderr}");
    assert!(
        stderr.contains("stages.student.loss.kd: the teacher `teacher` has no `logits` output"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages.student.loss.sp: the model of `student` has no `hidden3` output"),
        "{stderr}"
    );
    assert!(!env.runs().exists());
}

#[test]
fn loss_eval_reproduces_the_golden_file() {
    let golden = std::env::var("RKD_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/losses-public.json")
        });
    assert!(golden.exists(), "golden file missing: {}", golden.display());
    let env = Env::new();
    let out_path = env.dir.path().join("ours.json");
    let out = bin()
        .args(["loss", "eval", "--input"])
        .arg(&golden)
        .arg("--output")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let ours: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    let (ours, reference) = (
        ours["cases"].as_array().unwrap(),
        reference["cases"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), reference.len());
    for (o, r) in ours.iter().zip(reference) {
        assert_eq!(o["name"], r["name"]);
        let (vo, vr) = (o["value"].as_f64().unwrap(), r["value"].as_f64().unwrap());
        let tol = if r["name"].as_str().unwrap().starts_with("pub_n2/rkd_") {
            1e-12
        } else {
            1e-9 * vr.abs() + 1e-12
        };
        assert!((vo - vr).abs() <= tol, "{}: {vo} vs {vr}", r["name"]);
    }
    // Bad input: a clear error and exit code 2.
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"cases": [{"name": "x", "loss": "rkd_angel", "student": [[1.0]], "teacher": [[1.0]]}]}"#).unwrap();
    let out = bin()
        .args(["loss", "eval", "--input"])
        .arg(&bad)
        .arg("--output")
        .arg(&out_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("rkd_angel"), "{}", text(&out).1);
}

#[test]
fn every_shipped_recipe_runs_at_smoke_scale() {
    // The shipped recipes at a few hundred images and one epoch: every stage kind, sampler
    // and protocol they use runs end to end on the real Fashion-MNIST files.
    let env = Env::new();
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&recipes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    for r in names {
        let out = env.cmd(
            &[
                "run",
                "-q",
                "-j",
                "2",
                "--threads-per-job",
                "1",
                "--set",
                "stages.*.epochs=1",
                "--set",
                "data.*.train_limit=512",
                "--set",
                "data.*.eval_limit=300",
            ],
            &r,
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{}: {stderr}", r.display());
        assert!(stdout.contains("recipe "), "{}: {stdout}", r.display());
    }
}
