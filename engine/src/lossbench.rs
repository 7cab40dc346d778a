//! `rkd-orch loss bench`: forward+backward time of one loss in float32, the way
//! `../shared/bench/torch_losses.py` times the PyTorch references, so the two can be put
//! side by side.

use std::time::Instant;

use serde::Serialize;

use crate::ml::loss::{self, Mask, MatRef};
use crate::ml::rng::Rng;
use crate::spec::{Loss, LossDecl, DECLS};

/// How many names [`LOSSES`] has.
const N_LOSSES: usize = {
    let (mut n, mut i) = (0, 0);
    while i < DECLS.len() {
        if DECLS[i].teacher {
            n += 1;
            if DECLS[i].golden_name.is_some() {
                n += 1;
            }
        }
        i += 1;
    }
    n
};

/// The losses that can be timed: those a recipe distils with, by their recipe names
/// (`rkd_d`, …), then by the names of the golden vectors and the PyTorch references
/// (`rkd_distance`, `rkd_angle`).
pub const LOSSES: [&str; N_LOSSES] = {
    let mut names = [""; N_LOSSES];
    let (mut n, mut i) = (0, 0);
    while i < DECLS.len() {
        if DECLS[i].teacher {
            names[n] = DECLS[i].name;
            n += 1;
        }
        i += 1;
    }
    i = 0;
    while i < DECLS.len() {
        if let (true, Some(golden)) = (DECLS[i].teacher, DECLS[i].golden_name) {
            names[n] = golden;
            n += 1;
        }
        i += 1;
    }
    names
};

/// The declaration of a loss [`LOSSES`] names.
fn benched(name: &str) -> Option<&'static LossDecl> {
    DECLS
        .iter()
        .find(|d| d.teacher && (d.name == name || d.golden_name == Some(name)))
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub loss: String,
    pub n: usize,
    pub dim: usize,
    pub threads: usize,
    /// The relation mask's keep fraction (1 = the unmasked loss).
    pub keep: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Peak resident memory of the whole process (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown loss `{name}`; expected one of: {}", LOSSES.join(", "))]
    UnknownLoss { name: String },
    #[error("--keep {0}: relation masking takes a fraction in (0, 1], on rkd_distance, rkd_angle, sp or cc")]
    BadKeep(f64),
    #[error("cannot start a pool of {0} threads: {1}")]
    Pool(usize, String),
}

/// Peak resident set size of this process in MiB, from /proc (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Times `repeat` runs (after one warm-up) of the loss's forward+backward on N×D standard
/// normal student and teacher matrices, on a pool of `threads` threads.
pub fn bench(
    name: &str,
    n: usize,
    dim: usize,
    threads: usize,
    repeat: usize,
    keep: Option<f64>,
) -> Result<BenchRow, BenchError> {
    let decl = benched(name);
    if let Some(k) = keep {
        if !(k > 0.0 && k <= 1.0) || decl.is_some_and(|d| !d.keep) {
            return Err(BenchError::BadKeep(k));
        }
    }
    let Some(decl) = decl else {
        return Err(BenchError::UnknownLoss {
            name: name.to_string(),
        });
    };
    // The options a recipe term has when it gives none.
    let defaults = decl.defaults();
    let mut rng = Rng::new(0);
    let mut draw = || -> Vec<f32> { (0..n * dim).map(|_| rng.normal() as f32).collect() };
    let (s, t) = (draw(), draw());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| BenchError::Pool(threads, e.to_string()))?;
    let run = || -> f32 {
        let sm = MatRef::new(&s, n, dim).expect("sized");
        let tm = MatRef::new(&t, n, dim).expect("sized");
        let (v, g) = match (&defaults, keep.map(|keep| Mask { keep, seed: 0 })) {
            (Loss::RkdD, None) => loss::rkd_distance(sm, tm),
            (Loss::RkdD, Some(m)) => loss::rkd_distance_masked(sm, tm, m),
            (Loss::RkdA, None) => loss::rkd_angle(sm, tm),
            (Loss::RkdA, Some(m)) => loss::rkd_angle_masked(sm, tm, m),
            (Loss::Sp, None) => loss::sp(sm, tm),
            (Loss::Sp, Some(m)) => loss::sp_masked(sm, tm, m),
            (Loss::Cc { kernel }, None) => loss::cc(sm, tm, *kernel),
            (Loss::Cc { kernel }, Some(m)) => loss::cc_masked(sm, tm, *kernel, m),
            (Loss::Kd { temperature }, _) => loss::kd(sm, tm, *temperature as f32),
            (Loss::Triplet { .. } | Loss::Ce, _) => unreachable!("not a distillation loss"),
        };
        // Keep the gradient alive until here so that it is part of the measured work.
        std::hint::black_box(g);
        v
    };
    let mut times = Vec::with_capacity(repeat);
    let mut value = 0.0;
    pool.install(|| {
        for r in 0..=repeat {
            let started = Instant::now();
            value = run();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if r > 0 {
                times.push(ms);
            }
        }
    });
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        0.0
    } else if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    Ok(BenchRow {
        implementation: "rkd-orch",
        loss: name.to_string(),
        n,
        dim,
        threads,
        keep: keep.unwrap_or(1.0),
        median_ms: median,
        min_ms: times.first().copied().unwrap_or(0.0),
        peak_rss_mib: peak_rss_mib(),
        value: f64::from(value),
    })
}
