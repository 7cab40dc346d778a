//! Golden-vector checks of every loss in the golden file (RKD-D, RKD-A, SP, CC and their
//! torchdistill/RepDistiller variants, KD, triplet) against the torch references
//! (`tests/data/golden/losses-public.json`, semantics in `tests/data/golden/FORMAT.md`,
//! provenance in `tests/data/golden/README.md`).
//!
//! The file is part of the repository, so a fresh clone runs these tests with nothing beside
//! it; `RKD_GOLDEN` names another file of the same format instead. A missing file fails the
//! test rather than skipping it, so a moved file cannot turn into a silent pass.

use rkd_orch::ml::loss::{
    cc, cc_repdistiller, cc_torchdistill, kd, rkd_angle, rkd_distance, sp, sp_torchdistill,
    triplet, CcKernel, CcTorchdistillKernel, MatRef,
};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct GoldenFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    loss: String,
    params: serde_json::Value,
    student: Vec<Vec<f64>>,
    teacher: Option<Vec<Vec<f64>>>,
    triplets: Option<Vec<[usize; 3]>>,
    value: f64,
    grad_student: Vec<Vec<f64>>,
}

fn golden_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RKD_GOLDEN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/golden/losses-public.json"
    ));
    assert!(
        p.exists(),
        "golden vectors not found at {} (they are part of the repository; RKD_GOLDEN names another file)",
        p.display()
    );
    p
}

fn load() -> Vec<Case> {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden vectors {}: {e}", path.display()));
    let file: GoldenFile = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
    file.cases
}

fn flat<T: Copy>(m: &[Vec<f64>], conv: impl Fn(f64) -> T) -> (Vec<T>, usize, usize) {
    let rows = m.len();
    let cols = m.first().map_or(0, Vec::len);
    assert!(m.iter().all(|r| r.len() == cols), "ragged matrix");
    (m.iter().flatten().map(|&v| conv(v)).collect(), rows, cols)
}

/// Evaluates the case's loss in precision `T`, returning value and gradient as f64.
fn eval<T: num_traits::Float + Send + Sync + 'static>(
    c: &Case,
    conv: impl Fn(f64) -> T,
) -> (f64, Vec<f64>) {
    let (s, n, ds) = flat(&c.student, &conv);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let (v, g) = if c.loss == "triplet" {
        let margin = c.params["margin"].as_f64().expect("margin");
        triplet(sm, c.triplets.as_ref().expect("triplets"), conv(margin))
    } else {
        let (t, tn, dt) = flat(c.teacher.as_ref().expect("teacher"), &conv);
        let tm = MatRef::new(&t, tn, dt).unwrap();
        let p = || c.params["P"].as_u64().expect("P") as u32;
        let gamma = || c.params["gamma"].as_f64().expect("gamma");
        match c.loss.as_str() {
            "rkd_distance" => rkd_distance(sm, tm),
            "rkd_angle" => rkd_angle(sm, tm),
            "sp" => sp(sm, tm),
            "sp_torchdistill" => sp_torchdistill(sm, tm),
            "cc" => cc(
                sm,
                tm,
                CcKernel::Taylor {
                    p: p(),
                    gamma: gamma(),
                },
            ),
            "cc_torchdistill" => {
                let kernel = match c.params["kernel"].as_str().expect("kernel") {
                    "gaussian" => CcTorchdistillKernel::Gaussian {
                        p: p(),
                        gamma: gamma(),
                    },
                    "bilinear" => CcTorchdistillKernel::Bilinear,
                    other => panic!("{}: unknown kernel {other}", c.name),
                };
                cc_torchdistill(sm, tm, kernel)
            }
            "cc_repdistiller" => cc_repdistiller(sm, tm),
            "kd" => kd(
                sm,
                tm,
                conv(c.params["temperature"].as_f64().expect("temperature")),
            ),
            other => panic!("{}: unknown loss {other}", c.name),
        }
    };
    (
        v.to_f64().unwrap(),
        g.iter().map(|x| x.to_f64().unwrap()).collect(),
    )
}

const LOSSES: [&str; 9] = [
    "rkd_distance",
    "rkd_angle",
    "sp",
    "sp_torchdistill",
    "cc",
    "cc_torchdistill",
    "cc_repdistiller",
    "kd",
    "triplet",
];

/// Cases per loss in the public file, in [`LOSSES`] order. Asserted so that a truncated or
/// renamed file, or a filter bug, cannot pass by checking fewer cases.
const EXPECTED_COUNTS: [usize; 9] = [8, 8, 8, 8, 64, 24, 8, 8, 7];

/// Element-wise bounds: value `|Δ| ≤ value_rel·|v| + value_abs`, gradient
/// `|Δ| ≤ grad_elem·|g_ref| + grad_row·max|g_ref row| + grad_abs`.
#[derive(Clone, Copy)]
struct Tol {
    value_rel: f64,
    value_abs: f64,
    grad_elem: f64,
    grad_row: f64,
    grad_abs: f64,
}

/// `pub_n2/rkd_*`: with two samples RKD-D is exactly 0 and RKD-A is round-off (~6e-33),
/// gradients included, so relative bounds are meaningless; FORMAT.md says to compare
/// absolutely.
const N2_ABSOLUTE: Tol = Tol {
    value_rel: 0.0,
    value_abs: 1e-12,
    grad_elem: 0.0,
    grad_row: 0.0,
    grad_abs: 1e-12,
};

/// `err ≤ bound`, false for a NaN error, so a NaN result is reported as a failure.
fn within(err: f64, bound: f64) -> bool {
    err <= bound
}

/// Runs every case whose loss `tol_for` gives a tolerance for in precision `T` (`None`
/// skips the case) and reports all failures at once. Returns the number of cases checked
/// per loss. Prints the worst errors (outside `pub_n2/rkd_*`) so an accuracy drift is
/// visible before it becomes a failure.
fn check_all<T: num_traits::Float + Send + Sync + 'static>(
    label: &str,
    conv: impl Fn(f64) -> T,
    tol_for: impl Fn(&Case) -> Option<Tol>,
) -> [usize; 9] {
    let mut failures = Vec::new();
    let mut counts = [0usize; 9];
    // Per loss: worst |Δv|/|v|, worst |Δg|/max|g_ref row| (over rows whose max is at least
    // 1e-30: rows below that are pure underflow in f32), and the largest fraction of its
    // tolerance that any value or gradient entry used.
    let mut worst = [(0.0f64, 0.0f64, 0.0f64); 9];
    for c in &load() {
        let li = LOSSES
            .iter()
            .position(|l| *l == c.loss)
            .unwrap_or_else(|| panic!("{}: loss `{}` not covered by this test", c.name, c.loss));
        let Some(case_tol) = tol_for(c) else {
            continue;
        };
        counts[li] += 1;
        let tiny = c.name.starts_with("pub_n2/rkd_");
        let t = if tiny { N2_ABSOLUTE } else { case_tol };
        let (v, g) = eval::<T>(c, &conv);
        let dv = (v - c.value).abs();
        if !tiny {
            worst[li].0 = worst[li].0.max(dv / c.value.abs());
        }
        let value_bound = t.value_rel * c.value.abs() + t.value_abs;
        if !tiny {
            worst[li].2 = worst[li].2.max(dv / value_bound);
        }
        if !within(dv, value_bound) {
            failures.push(format!("{}: value {v:e} vs {:e}", c.name, c.value));
        }
        let ds = c.student[0].len();
        assert_eq!(
            g.len(),
            c.grad_student.len() * ds,
            "{}: gradient size",
            c.name
        );
        for (r, row) in c.grad_student.iter().enumerate() {
            let row_max = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (k, &gr) in row.iter().enumerate() {
                let got = g[r * ds + k];
                let d = (got - gr).abs();
                let bound = t.grad_elem * gr.abs() + t.grad_row * row_max + t.grad_abs;
                if !tiny && row_max >= 1e-30 {
                    worst[li].1 = worst[li].1.max(d / row_max);
                }
                if !tiny && bound > 0.0 {
                    worst[li].2 = worst[li].2.max(d / bound);
                }
                if !within(d, bound) {
                    failures.push(format!("{}: grad[{r}][{k}] {got:e} vs {gr:e}", c.name));
                }
            }
        }
    }
    for (l, (wv, wg, wt)) in LOSSES.iter().zip(worst) {
        println!(
            "{label} {l}: worst value rel err {wv:.2e}, worst grad err / row max {wg:.2e}, \
             worst err / tolerance {wt:.2e}"
        );
    }
    assert!(
        failures.is_empty(),
        "{label}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    counts
}

/// float64 with FORMAT.md's suggested tolerances for every loss: value
/// `|Δ| ≤ 1e-9·|v| + 1e-12`, gradient `|Δ| ≤ 1e-8·|g_ref| + 1e-10·max|g_ref row|` (the row
/// scale because the duplicate-row RKD-A rows are ~4e9 while the others are ~1e-3);
/// `pub_n2/rkd_*` absolutely to 1e-12.
#[test]
fn golden_f64() {
    let tol = Tol {
        value_rel: 1e-9,
        value_abs: 1e-12,
        grad_elem: 1e-8,
        grad_row: 1e-10,
        grad_abs: 0.0,
    };
    let counts = check_all::<f64>("f64", |x| x, |_| Some(tol));
    assert_eq!(counts, EXPECTED_COUNTS, "cases checked per loss {LOSSES:?}");
}

/// The f32 tolerance of one case.
///
/// Inputs are rounded to f32 (~6e-8 relative) and the results compared with the f64
/// references. Every loss gets value `|Δ| ≤ 1e-5·|v|` and gradient
/// `|Δ| ≤ 1e-4·max|g_ref row|`: the row scale because the duplicate-row RKD-A rows are ~4e9
/// (from ±dE/1e-12 terms) while the others are ~1e-3. What the bounds have to absorb, per
/// loss (the observed worst errors are printed by the test and sit 20× or more inside):
/// * rkd_distance, rkd_angle, triplet: the normalisations (by μ, by ‖x_j − x_i‖) amplify the
///   input rounding by their conditioning.
/// * sp, sp_torchdistill, cc: the loss is a difference of two normalised Gram/kernel
///   matrices, so Gram rounding is divided by how close student and teacher are.
/// * cc_torchdistill, including `pub_n8_large` where the unnormalised P = 4 kernel entries
///   are ~1e27: they fit f32 (max 3.4e38) because the squared Frobenius norm (~1e55) is
///   accumulated in f64, and [`cc_torchdistill`] drops the kernel's constant term before
///   `K^S − K^T` so `pub_n8_tiny` (|F Fᵀ| ~ 1e-5 next to a constant e^{−2γ}) keeps its digits.
/// * cc_repdistiller: products of |S − T|, no normalisation.
/// * kd: [`kd`] computes in f64 internally, so only the input rounding remains (logits
///   ~1e3 move by ~6e-5). Plus an absolute 1e-30: the saturated `pub_n8_large` rows hold
///   entries down to 1e-276, which f32 flushes to 0.
fn f32_tol(c: &Case) -> Tol {
    assert!(
        LOSSES.contains(&c.loss.as_str()),
        "{}: no f32 tolerance for loss `{}`",
        c.name,
        c.loss
    );
    Tol {
        value_rel: 1e-5,
        value_abs: 0.0,
        grad_elem: 0.0,
        grad_row: 1e-4,
        grad_abs: if c.loss == "kd" { 1e-30 } else { 0.0 },
    }
}

/// float32 on all the same cases, inputs rounded to f32, compared with the f64 references,
/// with the tolerances of [`f32_tol`].
#[test]
fn golden_f32() {
    let counts = check_all::<f32>("f32", |x| x as f32, |c| Some(f32_tol(c)));
    assert_eq!(counts, EXPECTED_COUNTS, "cases checked per loss {LOSSES:?}");
}
