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

/// `plan --format json` of a recipe file: each stage's name and content key, in plan order.
fn plan_keys(env: &Env, recipe: &Path) -> Vec<(String, String)> {
    let out = env.cmd(&["plan", "--format", "json"], recipe);
    let (json, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    plan["stages"]
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

/// Runs `args` on `recipe`, which must be refused before anything is written (exit 2, no runs
/// directory), its first problem reported as `FILE:` + `first`; returns stderr.
fn refused(env: &Env, args: &[&str], recipe: &Path, first: &str) -> String {
    let out = env.cmd(args, recipe);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("{}:{first}", recipe.display())),
        "expected {first}\n{err}"
    );
    assert!(!env.runs().exists(), "{err}");
    err
}

/// What PyYAML writes for repeated objects: anchors, aliases and merge keys.
const ANCHORED: &str = r#"
name: same
data:
  syn: &syn {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16}
  shifted:
    <<: *syn
    seed: 9
stages:
  teacher:
    kind: train
    data: syn
    model: &model {hidden: [32], embedding: 8}
    loss: {triplet: 1}
    optimizer: &opt {kind: adam, lr: 0.003}
    epochs: &epochs 2
  student:
    kind: distill
    teacher: teacher
    data: syn
    model: *model
    loss: &rkd {rkd_d: 1, rkd_a: 2}
    optimizer: *opt
    epochs: *epochs
  shifted_student:
    <<: &distilled
      kind: distill
      teacher: teacher
      loss: *rkd
    data: shifted
    model: *model
  eval: {kind: evaluate, model: student, data: syn}
"#;

/// The same recipe written out.
const WRITTEN_OUT: &str = r#"
name: same
data:
  syn: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16}
  shifted: {kind: synthetic, classes: 8, dim: 16, train_per_class: 32, test_per_class: 16, seed: 9}
stages:
  teacher: {kind: train, data: syn, model: {hidden: [32], embedding: 8}, loss: {triplet: 1}, optimizer: {kind: adam, lr: 0.003}, epochs: 2}
  student: {kind: distill, teacher: teacher, data: syn, model: {hidden: [32], embedding: 8}, loss: {rkd_d: 1, rkd_a: 2}, optimizer: {kind: adam, lr: 0.003}, epochs: 2}
  shifted_student: {kind: distill, teacher: teacher, loss: {rkd_d: 1, rkd_a: 2}, data: shifted, model: {hidden: [32], embedding: 8}}
  eval: {kind: evaluate, model: student, data: syn}
"#;

#[test]
fn anchors_aliases_and_merge_keys_plan_like_the_written_out_recipe() {
    let env = Env::new();
    let anchored = plan_keys(&env, &env.recipe(ANCHORED));
    let written = plan_keys(&env, &env.recipe(WRITTEN_OUT));
    assert_eq!(anchored, written);
    assert_eq!(anchored.len(), 4, "{anchored:?}");
    // The merge really took `seed: 9` and the rest: the shifted data set is another data set.
    let without_seed = WRITTEN_OUT.replace(", seed: 9}", "}");
    assert_ne!(plan_keys(&env, &env.recipe(&without_seed)), written);

    // A problem in an aliased value is reported once, where the value is written: at the
    // anchor, not at each alias.
    let bad = ANCHORED.replace("&opt {kind: adam, lr: 0.003}", "&opt {kind: adam, lr: -1}");
    let err = refused(&env, &["plan"], &env.recipe(&bad), "14:38: stages.");
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(".optimizer.lr"))
        .collect();
    assert_eq!(problems.len(), 1, "{err}");
    assert!(
        problems[0].ends_with("must be a finite number > 0, found -1"),
        "{err}"
    );
}

#[test]
fn a_bom_is_read_past_and_a_second_document_is_refused_at_its_line() {
    let env = Env::new();
    let plain = plan_keys(&env, &env.recipe(WRITTEN_OUT));
    let bom = env.recipe(&format!("\u{feff}# a comment first{WRITTEN_OUT}"));
    assert_eq!(plan_keys(&env, &bom), plain);

    let r = env.recipe(&format!("{WRITTEN_OUT}---\nname: other\n"));
    let line = WRITTEN_OUT.lines().count() + 1;
    let at = format!("{line}:1: a second YAML document starts here");
    refused(&env, &["plan"], &r, &at);
}

#[test]
fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_node_bound() {
    let env = Env::new();
    // "Billion laughs": each level holds ten aliases of the one before; a9 would be 10⁹ nodes.
    let mut bomb =
        String::from("name: bomb\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    // l4 is 111,111 nodes, held twice (in the tree and for its aliases); its first copy
    // (line 7, column 10) passes 250,000.
    let at = "7:10: the recipe grows past 250000 YAML nodes here";
    refused(&env, &["run"], &env.recipe(&bomb), at);
}

#[test]
fn invalid_utf8_is_refused_with_its_byte_offset_and_position() {
    let env = Env::new();
    let r = env.dir.path().join("latin1.yaml");
    // "Fashion-MNIST, café" in Latin-1: é is the single byte 0xE9.
    let mut bytes = b"name: latin1\ndescription: caf".to_vec();
    bytes.push(0xE9);
    bytes.extend_from_slice(b"\ndata: {}\n");
    std::fs::write(&r, &bytes).unwrap();
    let at = "2:17: the recipe is not UTF-8 text: the byte at offset 29 (0xE9";
    refused(&env, &["plan"], &r, at);
}

#[test]
fn a_data_path_that_is_a_directory_is_refused_at_its_key() {
    let env = Env::new();
    let dir = env.dir.path().join("images");
    std::fs::create_dir(&dir).unwrap();
    let file = env.dir.path().join("labels");
    std::fs::write(&file, b"not read before plan").unwrap();
    let r = env.recipe(&format!(
        "data:\n  d:\n    kind: idx\n    train_images: {d}\n    train_labels: {f}\n    test_images: {f}\n    test_labels: {f}\n    train_classes: [0]\n    eval_classes: [1]\nstages:\n  t: {{kind: train, model: {{}}, loss: {{triplet: 1}}}}\n",
        d = dir.display(),
        f = file.display()
    ));
    let at = format!(
        "4:19: data.d.train_images: {} is a directory; expected the data file itself",
        dir.display()
    );
    refused(&env, &["plan"], &r, &at);
}

/// A recipe that runs in a moment, named by the line `name`.
fn tiny(name: &str) -> String {
    format!(
        "{name}\ndata:\n  syn: {{kind: synthetic, classes: 4, dim: 4, train_per_class: 4, test_per_class: 4}}\nstages:\n  t: {{kind: train, model: {{hidden: [4], embedding: 2}}, loss: {{triplet: 1}}, epochs: 0, batch_size: 4}}\n"
    )
}

#[test]
fn names_that_could_leave_the_runs_dir_are_refused_at_their_line_and_nothing_is_written() {
    let env = Env::new();
    // runs/recipes/<name>.json once replaced whatever `name` pointed at: here a file beside
    // the runs directory, reached by an absolute path and by `..`.
    let victim = env.dir.path().join("victim.json");
    std::fs::write(&victim, b"precious").unwrap();
    let abs = env.dir.path().join("victim").display().to_string();
    let long = "a".repeat(101);
    let shapes: Vec<(String, &str)> = vec![
        (format!("name: \"{abs}\""), "`/`"),
        (format!("name: \"/../../../../../../../..{abs}\""), "`/`"),
        ("name: ../../victim".into(), "`.`"),
        ("name: \"..\"".into(), "starts with `.`"),
        ("name: a/b".into(), "`/`"),
        ("name: 'a\\b'".into(), "contains `\\`"),
        ("name: \"a\\0b\"".into(), "control character"),
        ("name: \"\"".into(), "a name cannot be empty"),
        (format!("name: {long}"), "101 characters"),
        ("name: café".into(), "non-ASCII"),
        (
            "name: \"x\\u202Ey\"".into(),
            "non-ASCII character \\u{202e};",
        ),
        ("name: -rf".into(), "starts with `-`"),
    ];
    for (line, why) in &shapes {
        let err = refused(&env, &["run"], &env.recipe(&tiny(line)), "1:7: name: ");
        assert!(err.contains(why), "{line}: {err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{line}");
    }
    // Stage and data set names likewise, at their key; `.` is refused there (they are parts
    // of dotted paths such as `--set stages.NAME.epochs=1`).
    for (from, to, at) in [
        ("  t: {kind", "  \"../t\": {kind", "5:3: stage `../t`"),
        ("  t: {kind", "  \"t\\0\": {kind", "5:3: stage `t\\0`"),
        ("  syn: {", "  \"a.b\": {", "3:3: data set `a.b`"),
    ] {
        refused(
            &env,
            &["run"],
            &env.recipe(&tiny("name: ok").replace(from, to)),
            at,
        );
    }
    // A recipe without `name:` is named after its file, which must then make a valid name.
    let r = env.dir.path().join("my recipe.yaml");
    std::fs::write(&r, tiny("")).unwrap();
    // No line to point at: the message is about the file.
    let at = " the recipe is named after its file, but `my recipe`";
    refused(&env, &["run"], &r, at);
    // And a valid name runs, its snapshot inside the runs directory.
    let out = env.cmd(&["run", "-q"], &env.recipe(&tiny("name: v1.2-ok_name")));
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(env.runs().join("recipes/v1.2-ok_name.json").is_file());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn integers_are_range_checked_to_their_type_at_their_line() {
    let env = Env::new();
    let r = env.recipe(
        "data:\n  s: {kind: synthetic, classes: 4294967298}\n  t:\n    kind: synthetic\n    train_classes: [4294967296, 1]\n    eval_classes: [2, 3]\n  ok: {kind: synthetic}\nstages:\n  a: {kind: train, data: ok, model: {hidden: [18446744073709551616]}, loss: {triplet: 1}}\n",
    );
    let err = refused(&env, &["plan"], &r, "");
    let file = r.display();
    for want in [
        format!("{file}:2:33: data.s.classes: 4294967298 is too large; allowed: 2 to 4294967295"),
        format!("{file}:5:21: data.t.train_classes[0]: 4294967296 is too large; allowed: 0 to 4294967295"),
        format!("{file}:9:47: stages.a.model.hidden[0]: 18446744073709551616 is too large; allowed: 1 to 18446744073709551615"),
    ] {
        assert!(err.lines().any(|l| l == want), "{want}\n{err}");
    }
    // A product of two numbers of the recipe does not wrap around either (2³³ × 2³³ was 0,
    // "too few samples per batch").
    let r = env.recipe(
        "data:\n  s: {kind: synthetic}\nstages:\n  t0: {kind: train, model: {}, loss: {triplet: 1}}\n  t:\n    kind: distill\n    teacher: t0\n    model: {}\n    loss: {rkd_d: 1}\n    sampler: {kind: superclass, clusters: 1099511627776, classes_per_batch: 8589934592, per_class: 8589934592}\n",
    );
    let at = "10:100: stages.t.sampler: 8589934592 × 8589934592 samples per batch is more than this machine can count";
    refused(&env, &["plan"], &r, at);
    // Nor the size of a synthetic data set (this one had the stage killed for memory).
    let r = env.recipe(
        "data:\n  s: {kind: synthetic, classes: 4000000000, dim: 18446744073709551615}\nstages:\n  t: {kind: train, model: {}, loss: {triplet: 1}, epochs: 0}\n",
    );
    let at = "2:3: data.s: 4000000000 classes × (100 + 50) samples × 18446744073709551615 dimensions is more than the 4294967296 values (16 GiB) a synthetic data set may have";
    refused(&env, &["run"], &r, at);
}

#[test]
fn yaml_mistakes_get_a_hint_and_long_values_are_refused() {
    let env = Env::new();
    let cases = [
        (
            "data:\n  a: 1\n   b: 2\n",
            "3:5: invalid YAML: mapping values are not allowed in this context — line 3 is indented 3 spaces, more than line 2 (2), which already has a value",
        ),
        (
            "data:\n  a:\n    x: 1\n   b: 2\n",
            "4:5: invalid YAML: while parsing a block mapping, did not find expected key — line 4 is indented 3 spaces, but the lines above it start at 0, 2 or 4 spaces",
        ),
        (
            "data:\n\ta: 1\n",
            "2:2: invalid YAML: tabs disallowed within this context (block indentation) — line 2 has a tab character; YAML indents with spaces only",
        ),
    ];
    for (yaml, want) in cases {
        refused(&env, &["plan"], &env.recipe(yaml), want);
    }
    let long = env.recipe(&format!("description: {}\n", "x".repeat(5000)));
    let at = "1:14: a value of 5000 characters; values in a recipe are at most 4096";
    refused(&env, &["plan"], &long, at);
}
