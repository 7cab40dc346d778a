//! The coordinator's own costs, measured through the real binary on a 2-core machine:
//!
//! 1. a fully cached re-run of a 100-stage recipe (target < 0.5 s);
//! 2. coordinator overhead per stage: wall time of a run of 100 near-empty stages at
//!    `--jobs 1`, minus the time the stages report for their own work, per stage
//!    (target < 50 ms: spawn, spec, lock, commit check, ingest);
//! 3. two equal independent training stages with `--jobs 2 --threads-per-job 1` against
//!    `--jobs 1` (2 threads, the default) and `--jobs 1 --threads-per-job 1` (target ≤ 0.6×).
//!
//!   cargo bench --bench engine

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn rkd(args: &[&str], recipe: &Path, runs: &Path) -> f64 {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
        .args(args)
        .arg(recipe)
        .arg("--runs-dir")
        .arg(runs)
        .arg("-q")
        .output()
        .expect("run rkd-orch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds: Vec<String> = (0..50).map(|s| s.to_string()).collect();
    // 50 small trained models and their 50 evaluations.
    let hundred = dir.path().join("hundred.yaml");
    std::fs::write(
        &hundred,
        format!(
            "data:
  syn: {{kind: synthetic, classes: 6, dim: 16, train_per_class: 20, test_per_class: 10}}
stages:
  net:
    kind: train
    model: {{hidden: [16], embedding: 8}}
    loss: {{triplet: 1}}
    epochs: 1
    batch_size: 30
    matrix: {{seeds: [{}]}}
  eval: {{kind: evaluate, model: net}}
",
            seeds.join(", ")
        ),
    )
    .unwrap();
    let runs = dir.path().join("runs-100");
    let first = rkd(&["run", "--jobs", "1"], &hundred, &runs);
    let cached: Vec<f64> = (0..5).map(|_| rkd(&["run"], &hundred, &runs)).collect();
    println!(
        "100-stage recipe: first run {first:.2} s; fully cached re-run median {:.3} s over 5 (target < 0.5 s)",
        median(cached)
    );

    // Overhead: wall time minus what the stages report for their own work.
    let db = rusqlite::Connection::open(runs.join("results.sqlite")).unwrap();
    let work: f64 = db
        .query_row("SELECT SUM(wall_s) FROM stages", [], |r| r.get(0))
        .unwrap();
    println!(
        "coordinator overhead per stage (--jobs 1): {:.1} ms (wall {first:.2} s − stage work {work:.2} s, over 100 stages; target < 50 ms)",
        (first - work) / 100.0 * 1000.0
    );

    // Two equal independent stages.
    let two = dir.path().join("two.yaml");
    std::fs::write(
        &two,
        "data:
  syn: {kind: synthetic, classes: 8, dim: 64, train_per_class: 400, test_per_class: 10}
defaults: {model: {hidden: [256], embedding: 16}, loss: {rkd_d: 1, rkd_a: 1}, epochs: 15, batch_size: 64}
stages:
  teacher: {kind: train, loss: {triplet: 1}, epochs: 1}
  s1: {kind: distill, teacher: teacher, seed: 1}
  s2: {kind: distill, teacher: teacher, seed: 2}
",
    )
    .unwrap();
    let time_pair = |args: &[&str]| -> f64 {
        let mut v = Vec::new();
        for rep in 0..3 {
            let runs = dir.path().join(format!("pair-{}-{rep}", args.join("_")));
            // The teacher is not part of the comparison: train it first.
            let warm = dir.path().join("teacher-only.yaml");
            std::fs::write(
                &warm,
                std::fs::read_to_string(&two)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.contains("s1:") && !l.contains("s2:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
            .unwrap();
            rkd(&["run"], &warm, &runs);
            v.push(rkd(&[&["run"], args].concat(), &two, &runs));
        }
        median(v)
    };
    let j1 = time_pair(&["--jobs", "1"]);
    let j1t1 = time_pair(&["--jobs", "1", "--threads-per-job", "1"]);
    let j2 = time_pair(&["--jobs", "2", "--threads-per-job", "1"]);
    println!(
        "two equal distill stages: --jobs 1 (2 threads) {j1:.2} s, --jobs 1 --threads-per-job 1 {j1t1:.2} s, --jobs 2 --threads-per-job 1 {j2:.2} s: ratio {:.2} against --jobs 1 (target ≤ 0.6), {:.2} against one thread",
        j2 / j1,
        j2 / j1t1
    );
}
