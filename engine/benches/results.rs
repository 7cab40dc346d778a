//! Result-command speed on a big database: 10,000 evaluated stages of a sweep (10 seeds ×
//! 10 Taylor orders p × 10 kernel widths γ × 10 samplers), each with recall@1/2/4/8 and
//! queries, written through the `Store` API as the coordinator would. Times the pivot
//! `results --metric recall@1 --by p --by gamma --by sampler` (100 rows × 10 columns,
//! mean ± std over 10 seeds per cell) through the library and through the CLI binary
//! (process start included), plus the plain table, `export` and a `query`.
//!
//!   cargo bench --bench results

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rkd_orch::recipe::Param;
use rkd_orch::results::pivot::PivotSpec;
use rkd_orch::spec::{Metric, StageResult};
use rkd_orch::store::{Binding, Store};

const RECIPE: &str = "bench";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn param(origin: &str, path: &str, label: &str, value: String) -> Param {
    Param {
        origin: origin.into(),
        path: path.into(),
        label: label.into(),
        value,
        named: true,
    }
}

/// Writes the sweep; returns the number of stages.
fn fill(db: &Path) -> usize {
    let mut store = Store::open_rw(db).expect("open");
    let inv = store
        .begin_invocation(RECIPE, "bench.yaml", &"0".repeat(64), "bench")
        .expect("invocation");
    let mut n = 0;
    for seed in 0..10 {
        for p in 1..=10 {
            for g in 1..=10 {
                for s in 0..10 {
                    let key = format!("{n:032x}");
                    let gamma = format!("{:.1}", g as f64 * 0.1);
                    let sampler = format!("sampler{s}");
                    let name = format!("eval[seed={seed},p={p},gamma={gamma},sampler={sampler}]");
                    // A made-up but structured response surface, with seed noise.
                    let base = 0.5 + 0.02 * p as f64 - 0.01 * (g as f64 - 5.0).abs()
                        + 0.003 * s as f64
                        + 0.001 * ((seed * 7919 + n) % 13) as f64;
                    let metrics = [1, 2, 4, 8]
                        .iter()
                        .map(|k| Metric {
                            name: format!("recall@{k}"),
                            value: (base + 0.05 * (*k as f64).log2()).min(1.0),
                            split: "test/unseen-classes".into(),
                        })
                        .chain([Metric {
                            name: "queries".into(),
                            value: 5000.0,
                            split: "test/unseen-classes".into(),
                        }])
                        .collect();
                    let result = StageResult {
                        key: key.clone(),
                        kind: "evaluate".into(),
                        metrics,
                        epochs: Vec::new(),
                        artifacts: BTreeMap::new(),
                        checkpoint: "last_epoch".into(),
                        wall_s: 1.0,
                        threads: 1,
                        device: "cpu".into(),
                        engine_version: "bench".into(),
                        finished_unix: 1_700_000_000,
                    };
                    store.ingest(&result, "{}").expect("ingest");
                    let params = [
                        param("teacher", "seed", "seed", seed.to_string()),
                        param("student", "loss.cc.p", "p", p.to_string()),
                        param("student", "loss.cc.gamma", "gamma", gamma),
                        param("student", "sampler.kind", "sampler", sampler),
                    ];
                    store
                        .bind_stage(
                            &Binding {
                                recipe: RECIPE,
                                stage: &name,
                                base: "eval",
                                kind: "evaluate",
                                declared_kind: "evaluate",
                                key: &key,
                                params: &params,
                            },
                            inv,
                        )
                        .expect("bind");
                    n += 1;
                }
            }
        }
    }
    store.finish_invocation(inv, "ok").expect("finish");
    n
}

fn cli(bin: &str, runs: &Path, args: &[&str], repeat: usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeat {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--runs-dir")
            .arg(runs)
            .output()
            .expect("run rkd-orch");
        times.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bytes = out.stdout.len();
    }
    (median(times), bytes)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).expect("runs dir");
    let db = runs.join("results.sqlite");
    let t = Instant::now();
    let n = fill(&db);
    println!(
        "filled {n} stages (ingest + bind, one transaction each) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Where the time goes: loading from SQLite, grouping, rendering.
    {
        let store = Store::open_for_reading(&db).expect("open");
        let sel = rkd_orch::store::Selection {
            recipe: Some(RECIPE),
            metric: Some("recall@1"),
            include_stale: false,
        };
        let (mut load, mut group, mut render) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let stages = store.stages(&sel).expect("load");
            load.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let spec = PivotSpec {
                metric: "recall@1".into(),
                by: vec!["p".into(), "gamma".into(), "sampler".into()],
                ..Default::default()
            };
            let p = rkd_orch::results::pivot::pivot(RECIPE, &stages, &spec).expect("pivot");
            group.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = p.render(rkd_orch::results::Format::Table);
            render.push(t.elapsed().as_secs_f64());
        }
        println!(
            "library, of which: load {:.1} ms, pivot {:.1} ms, render {:.1} ms (medians over 5)",
            median(load) * 1e3,
            median(group) * 1e3,
            median(render) * 1e3
        );
    }

    let spec = PivotSpec {
        metric: "recall@1".into(),
        by: vec!["p".into(), "gamma".into(), "sampler".into()],
        ..Default::default()
    };
    let mut lib = Vec::new();
    let mut shape = (0, 0);
    for _ in 0..7 {
        let t = Instant::now();
        let store = Store::open_for_reading(&db).expect("open");
        let p = rkd_orch::results::pivot_from(&store, RECIPE, &spec).expect("pivot");
        let text = p.render(rkd_orch::results::Format::Table);
        lib.push(t.elapsed().as_secs_f64());
        shape = (p.rows.len(), p.cols.len());
        assert!(text.contains("mean ± std over seed (n = 10 per cell)"));
    }
    println!(
        "library: open + pivot recall@1 by p, gamma, sampler ({} × {} cells, n = 10) of {n} stages: median {:.1} ms over 7",
        shape.0,
        shape.1,
        median(lib) * 1e3
    );

    let bin = env!("CARGO_BIN_EXE_rkd-orch");
    let pivot = [
        "results", RECIPE, "--metric", "recall@1", "--by", "p", "--by", "gamma", "--by", "sampler",
    ];
    let (t, bytes) = cli(bin, &runs, &pivot, 7);
    println!(
        "cli: `rkd-orch {}` on {n} stages: median {:.1} ms over 7 ({bytes} bytes out)",
        pivot.join(" "),
        t * 1e3
    );
    for args in [
        vec!["results", RECIPE],
        vec!["export", "--format", "csv"],
        vec![
            "query",
            "SELECT p.value AS p, AVG(r.value) FROM results r JOIN params p ON p.recipe = r.recipe AND p.stage = r.stage WHERE p.path = 'loss.cc.p' AND r.metric = 'recall@1' GROUP BY p.value",
        ],
    ] {
        let (t, bytes) = cli(bin, &runs, &args, 5);
        println!(
            "cli: `rkd-orch {}` on {n} stages: median {:.1} ms over 5 ({bytes} bytes out)",
            args.join(" "),
            t * 1e3
        );
    }
}
