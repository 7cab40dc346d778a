//! Planning speed: a recipe whose matrices expand to 10,050 stages (50 teacher seeds ×
//! 10 Taylor orders × 10 kernel widths of CC students, each evaluated), timed through the
//! library (parse + expand + validate + keys) and through the CLI (`rkd-orch plan --format
//! json` on an empty runs directory, which also looks up every key in the cache).
//!
//!   cargo bench --bench plan

use std::time::Instant;

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let text = recipe();
    let mut lib = Vec::new();
    let mut stages = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = rkd_orch::recipe::parse("bench.yaml", "bench", &text).expect("valid recipe");
        let plan = rkd_orch::plan::build(&r).expect("plannable");
        lib.push(t.elapsed().as_secs_f64());
        stages = plan.stages.len();
    }
    println!(
        "library: parse + expand + plan of {stages} stages: median {:.3} s over 5",
        median(lib)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, &text).expect("write recipe");
    let bin = env!("CARGO_BIN_EXE_rkd-orch");
    let mut cli = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
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
