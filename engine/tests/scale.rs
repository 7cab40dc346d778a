//! Recipes at the edges of size, through the real binary: expansion limits refused at their
//! line before anything is built or written, `--max-stages`, and names and cells longer than
//! any format width (65,535) printed by every command that aligns columns.

#[path = "support/measured.rs"]
mod measured;

use std::path::PathBuf;
use std::process::{Command, Output};

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
        let p = self.dir.path().join("r.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bin();
        c.args(args).arg("--runs-dir").arg(self.runs());
        c
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const DATA: &str = "data:
  syn: {kind: synthetic, classes: 8, dim: 12, train_per_class: 12, test_per_class: 6}
";

/// A training stage swept over `seeds` seeds, each evaluated: 2 × seeds stages.
fn sweep(seeds: usize) -> String {
    let list: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "name: sweep
{DATA}stages:
  net:
    kind: train
    model: {{hidden: [8], embedding: 4}}
    loss: {{triplet: 1}}
    matrix:
      seeds: [{}]
  eval:
    kind: evaluate
    model: net
",
        list.join(", ")
    )
}

#[test]
fn a_huge_matrix_or_chain_is_refused_at_its_line_in_bounded_memory() {
    let env = Env::new();
    let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let matrix = sweep(1).replace(
        "      seeds: [0]\n",
        &format!(
            "      seeds: [{}]\n      epochs: [{}]\n",
            values.join(", "),
            values.join(", ")
        ),
    );
    let chain = format!(
        "name: chain
{DATA}stages:
  t: {{kind: train, model: {{hidden: [8], embedding: 4}}, loss: {{triplet: 1}}}}
  born:
    kind: self_distill
    teacher: t
    loss: {{rkd_d: 1}}
    generations: 1000000000000
"
    );
    for (recipe, at, what) in [
        (
            &matrix,
            "9:5",
            "stages.net.matrix: 1000000 combinations (1000 × 1000)",
        ),
        (&chain, "10:18", "stages.born.generations: 1000000000000"),
    ] {
        let r = env.recipe(recipe);
        for command in ["plan", "run"] {
            let m = measured::run(env.cmd(&[command]).arg(&r));
            let stderr = String::from_utf8_lossy(&m.stderr);
            assert_eq!(m.status.code(), Some(2), "{command}: {stderr}");
            assert!(
                stderr.starts_with(&format!("{}:{at}: {what}", r.display())),
                "{command}: {stderr}"
            );
            assert!(stderr.contains("`--max-stages N` raises it"), "{stderr}");
            // Refused before anything was built: the planner's own size, not the sweep's.
            assert!(m.max_rss_kib < 200 * 1024, "{} KiB", m.max_rss_kib);
            assert!(!env.runs().exists(), "{command} wrote the runs directory");
        }
    }
}

#[test]
fn max_stages_bounds_the_fan_out_of_plan_and_run() {
    let env = Env::new();
    // 150 seeds and their 150 evaluations: 300 stages.
    let r = env.recipe(&sweep(150));
    let out = env
        .cmd(&["plan", "--max-stages", "299"])
        .arg(&r)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}:11:3: stages.eval: expands to 150 stages (150 variants of its inputs × 1 combination), which with the 150 before it is more than the recipe may have; the limit is 299 stages per recipe",
            r.display()
        )),
        "{stderr}"
    );
    let out = env
        .cmd(&["run", "--max-stages", "299"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(!env.runs().exists(), "run wrote the runs directory");
    // A matrix larger than the limit is refused at the matrix, whatever follows it.
    let out = env
        .cmd(&["plan", "--max-stages", "100"])
        .arg(&r)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(
        stderr.starts_with(&format!(
            "{}:9:5: stages.net.matrix: 150 combinations",
            r.display()
        )),
        "{stderr}"
    );
    let out = env
        .cmd(&["plan", "--max-stages", "300", "--format", "json"])
        .arg(&r)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["stages"].as_array().unwrap().len(), 300);
}

/// Names that need YAML's explicit-key form (`? KEY`): implicit keys stop at 1024 characters.
fn long_name(c: char) -> String {
    std::iter::repeat_n(c, 70_000).collect()
}

/// A printed cell wider than `format!`'s width limit (65,535) used to panic (exit 101). Stage
/// names are now at most 100 characters (refused at their line), so the wide cells left are
/// the ones SQL makes; every aligned column goes through one padding helper either way.
#[test]
fn names_and_cells_longer_than_any_format_width_are_printed() {
    let env = Env::new();
    let (net, eval) = (long_name('n'), long_name('e'));
    let r = env.recipe(&format!(
        "name: long
{DATA}stages:
  ? {net}
  : {{kind: train, model: {{hidden: [8], embedding: 4}}, loss: {{triplet: 1}}, epochs: 1, batch_size: 16}}
  ? {eval}
  : {{kind: evaluate, model: {net}}}
"
    ));
    for args in [&["plan"][..], &["run"], &["status"]] {
        let out = env.cmd(args).arg(&r).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            &stderr[..stderr.len().min(500)]
        );
        // The first limit it meets: a scalar of 70,000 characters (names are ≤ 100).
        assert!(
            stderr.starts_with(&format!("{}:5:5:", r.display()))
                && stderr.contains("values in a recipe are at most 4096"),
            "{args:?}: {}",
            &stderr[..stderr.len().min(500)]
        );
    }
    assert!(
        !env.runs().exists(),
        "a refused recipe wrote the runs directory"
    );
    // A real database for `query` to read.
    let small = env.recipe(&format!(
        "name: small\n{DATA}stages:\n  net: {{kind: train, model: {{hidden: [8], embedding: 4}}, loss: {{triplet: 1}}, epochs: 1, batch_size: 16}}\n"
    ));
    let out = env.cmd(&["run"]).arg(&small).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let out = env
        .cmd(&["query", "SELECT printf('%.70000c', 'x') AS wide, 1 AS n"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{}",
        &stderr[..stderr.len().min(2000)]
    );
    assert!(stdout.contains(&long_name('x')), "query");
}
