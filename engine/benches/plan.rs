//! Planning speed: a recipe whose matrices expand to 10,050 stages (50 teacher seeds ×
//! 10 Taylor orders × 10 kernel widths of CC students, each evaluated), timed through the
//! library (parse + expand + validate + keys) and through the CLI (`rkd-orch plan --format
//! json` on an empty runs directory, which also looks up every key in the cache).
//!
//! Before those, a scaling table, each row one `rkd-orch plan` of a generated recipe
//! with its wall time and the process's peak RSS (`wait4`): independent stages (a `seeds`
//! sweep of one training stage), a sweep with one dependant (each variant evaluated), and a
//! `self_distill` chain. The targets (docs/engine.md, "Limits and scale"): 100,000 stages in
//! < 3 s and < 500 MB; a 10,000-point sweep with its dependant (20,000 stages) within 2× the
//! time of 20,000 independent stages.
//!
//!   cargo bench --bench plan
//!   PLAN_BENCH_MAX=20000 cargo bench --bench plan        # rows of at most 20,000 stages
//!   PLAN_BENCH_BIN=/path/to/old/rkd-orch cargo bench --bench plan   # measure another build

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[path = "../tests/support/measured.rs"]
mod measured;

fn recipe() -> String {
    let seeds: Vec<String> = (0..50).map(|s| s.to_string()).collect();
    let gammas: Vec<String> = (1..=10).map(|g| format!("{:.2}", g as f64 * 0.1)).collect();
    format!(
        "name: plan-bench
data:
  syn: {{kind: synthetic, classes: 10, dim: 32}}
defaults:
  epochs: 2
  optimizer: {{kind: adam, lr: 0.001}}
stages:
  teacher:
    kind: train
    model: {{hidden: [64], embedding: 16}}
    loss: {{triplet: 1}}
    matrix:
      seeds: [{}]
  student:
    kind: distill
    teacher: teacher
    model: {{hidden: [32], embedding: 8}}
    loss: {{cc: 1, rkd_d: 1}}
    matrix:
      loss.cc.p: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
      loss.cc.gamma: [{}]
  eval:
    kind: evaluate
    model: student
",
        seeds.join(", "),
        gammas.join(", ")
    )
}

/// `points` training stages, seeds 0..points; with `dependant`, each one evaluated too.
fn sweep(points: usize, dependant: bool) -> String {
    let seeds: Vec<String> = (0..points).map(|s| s.to_string()).collect();
    let mut text = format!(
        "name: sweep
data:
  syn: {{kind: synthetic, classes: 10, dim: 32}}
stages:
  net:
    kind: train
    model: {{hidden: [16], embedding: 8}}
    loss: {{triplet: 1}}
    matrix:
      seeds: [{}]
",
        seeds.join(", ")
    );
    if dependant {
        text.push_str("  eval:\n    kind: evaluate\n    model: net\n");
    }
    text
}

/// A teacher and a self-distillation chain of `generations` students.
fn chain(generations: usize) -> String {
    format!(
        "name: chain
data:
  syn: {{kind: synthetic, classes: 10, dim: 32}}
stages:
  t:
    kind: train
    model: {{hidden: [16], embedding: 8}}
    loss: {{triplet: 1}}
  born:
    kind: self_distill
    teacher: t
    generations: {generations}
    loss: {{rkd_d: 1}}
"
    )
}

/// One `plan` of `text` (the text format, counted line by line and not kept): (stages,
/// seconds, peak RSS in MiB).
fn plan_cli(bin: &Path, dir: &Path, text: &str) -> (usize, f64, f64) {
    let path = dir.join("scale.yaml");
    std::fs::write(&path, text).expect("write recipe");
    let m = measured::run_counting(
        Command::new(bin)
            .args(["plan", "--runs-dir"])
            .arg(dir.join("runs"))
            .arg(&path),
    );
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    // A summary line and a header, then one line per stage.
    let stages = m.stdout_lines.saturating_sub(2);
    (stages, m.wall.as_secs_f64(), m.max_rss_kib as f64 / 1024.0)
}

fn scaling(bin: &Path, dir: &Path) {
    let max: usize = std::env::var("PLAN_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rows: Vec<(&str, usize, String)> = Vec::new();
    for n in [1_000, 10_000, 20_000, 50_000, 100_000] {
        rows.push(("independent (seeds sweep)", n, sweep(n, false)));
    }
    for points in [500, 5_000, 10_000, 50_000] {
        rows.push((
            "sweep + evaluate dependant",
            2 * points,
            sweep(points, true),
        ));
    }
    // 99,999 generations and their teacher: the default limit of 100,000 stages exactly.
    for g in [1_000, 10_000, 50_000, 99_999] {
        rows.push(("self_distill chain", g + 1, chain(g)));
    }
    println!("\n| recipe | stages | plan time (s) | peak RSS (MiB) |");
    println!("| --- | ---: | ---: | ---: |");
    let mut indep_20k = None;
    let mut dep_20k = None;
    for (what, n, text) in rows {
        if n > max {
            continue;
        }
        let (stages, secs, mib) = plan_cli(bin, dir, &text);
        assert_eq!(stages, n, "{what}");
        println!("| {what} | {stages} | {secs:.2} | {mib:.0} |");
        match (
            what.starts_with("independent"),
            what.starts_with("sweep"),
            n,
        ) {
            (true, _, 20_000) => indep_20k = Some(secs),
            (_, true, 20_000) => dep_20k = Some(secs),
            _ => {}
        }
    }
    if let (Some(i), Some(d)) = (indep_20k, dep_20k) {
        println!(
            "\n10,000-point sweep with its dependant (20,000 stages): {d:.2} s = {:.2}× the time of 20,000 independent stages ({i:.2} s); target ≤ 2×",
            d / i
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin =
        std::env::var("PLAN_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rkd-orch").into());
    // First, while this process is small: a child's peak RSS starts at its parent's.
    scaling(Path::new(&bin), dir.path());

    let text = recipe();
    let mut lib = Vec::new();
    let mut stages = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = rkd_orch::recipe::parse("bench.yaml", "bench", &text).expect("valid recipe");
        let plan = rkd_orch::plan::build(r).expect("plannable");
        lib.push(t.elapsed().as_secs_f64());
        stages = plan.stages.len();
    }
    println!(
        "library: parse + expand + plan of {stages} stages: median {:.3} s over 5",
        median(lib)
    );

    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, &text).expect("write recipe");
    let mut cli = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new(&bin)
            .args(["plan", "--format", "json", "--runs-dir"])
            .arg(dir.path().join("runs"))
            .arg(&path)
            .output()
            .expect("run rkd-orch");
        cli.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "cli: `rkd-orch plan --format json` of {stages} stages: median {:.3} s over 3",
        median(cli)
    );
}
