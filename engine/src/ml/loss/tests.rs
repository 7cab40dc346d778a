//! Unit tests: finite differences, naive references, the candle adapters, thread-count
//! determinism, mining invariants and [`eval_cases`] on the whole public golden file. The
//! golden vectors are also checked, per loss and in f32 too, in `tests/golden.rs`.

use super::*;
use candle_core::{Device, Tensor, Var};

/// xorshift64*: a few lines instead of a rand dependency; only needs to be deterministic.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn mat(&mut self, rows: usize, cols: usize) -> Vec<f64> {
        (0..rows * cols).map(|_| self.unit()).collect()
    }
}

/// A candle adapter applied to the student, with the teacher or triplets captured.
type Adapter<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;

/// Central differences on every coordinate; returns the worst error over max|grad|.
fn fd_rel_err(
    f: impl Fn(MatRef<f64>, MatRef<f64>) -> (f64, Vec<f64>),
    s: &[f64],
    t: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
) -> f64 {
    let tm = MatRef::new(t, n, dt).unwrap();
    let (_, grad) = f(MatRef::new(s, n, ds).unwrap(), tm);
    let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(scale > 0.0, "degenerate test input");
    let h = 1e-6;
    let mut worst = 0.0f64;
    let mut x = s.to_vec();
    for idx in 0..s.len() {
        x[idx] = s[idx] + h;
        let lp = f(MatRef::new(&x, n, ds).unwrap(), tm).0;
        x[idx] = s[idx] - h;
        let lm = f(MatRef::new(&x, n, ds).unwrap(), tm).0;
        x[idx] = s[idx];
        worst = worst.max(((lp - lm) / (2.0 * h) - grad[idx]).abs() / scale);
    }
    worst
}

#[test]
fn rkd_angle_matches_finite_differences() {
    let mut rng = XorShift(0x1234_5678);
    let (n, ds, dt) = (6, 4, 5);
    let s = rng.mat(n, ds);
    // A teacher far from the student so some residuals sit on the linear Huber branch.
    let t: Vec<f64> = rng.mat(n, dt).iter().map(|v| 3.0 * v).collect();
    let err = fd_rel_err(rkd_angle, &s, &t, n, ds, dt);
    assert!(err < 1e-7, "rkd_angle FD error {err:e}");
}

#[test]
fn rkd_distance_matches_finite_differences() {
    let mut rng = XorShift(0x9e37_79b9);
    let (n, ds, dt) = (6, 4, 5);
    let s: Vec<f64> = rng.mat(n, ds).iter().map(|v| v * v * v * 4.0).collect();
    let t = rng.mat(n, dt);
    let err = fd_rel_err(rkd_distance, &s, &t, n, ds, dt);
    assert!(err < 1e-7, "rkd_distance FD error {err:e}");
}

#[test]
fn triplet_matches_finite_differences() {
    let mut rng = XorShift(42);
    let (n, d) = (6, 4);
    let s = rng.mat(n, d);
    let trips = [[0, 1, 2], [3, 4, 5], [5, 0, 1], [2, 3, 0]];
    let f = |x: &[f64]| triplet(MatRef::new(x, n, d).unwrap(), &trips, 0.7);
    let (_, grad) = f(&s);
    let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(scale > 0.0);
    let mut x = s.clone();
    for idx in 0..s.len() {
        x[idx] = s[idx] + 1e-6;
        let lp = f(&x).0;
        x[idx] = s[idx] - 1e-6;
        let lm = f(&x).0;
        x[idx] = s[idx];
        let fd = (lp - lm) / 2e-6;
        assert!(
            (fd - grad[idx]).abs() < 1e-7 * scale,
            "coord {idx}: {fd} vs {}",
            grad[idx]
        );
    }
}

/// The textbook cube, written without tiles, symmetry or chunking.
fn naive_angle(s: &[f64], t: &[f64], n: usize, ds: usize, dt: usize) -> f64 {
    let unit = |x: &[f64], d: usize, i: usize, j: usize| -> Vec<f64> {
        let v: Vec<f64> = (0..d).map(|c| x[j * d + c] - x[i * d + c]).collect();
        let nrm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|a| a / nrm).collect()
    };
    let mut sum = 0.0;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                let dotp = |x: &[f64], d: usize| -> f64 {
                    let (a, b) = (unit(x, d, i, j), unit(x, d, i, k));
                    a.iter().zip(&b).map(|(p, q)| p * q).sum()
                };
                sum += huber(dotp(s, ds) - dotp(t, dt));
            }
        }
    }
    sum / (n * n * n) as f64
}

#[test]
fn rkd_angle_tiles_match_naive_cube() {
    // Sizes that are not multiples of the tile shape, so tiles and tails both run.
    let mut rng = XorShift(7);
    let (n, ds, dt) = (21, 19, 35);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let (v, _) = rkd_angle(
        MatRef::new(&s, n, ds).unwrap(),
        MatRef::new(&t, n, dt).unwrap(),
    );
    let r = naive_angle(&s, &t, n, ds, dt);
    assert!((v - r).abs() <= 1e-13 * r.abs(), "{v} vs {r}");
}

#[test]
fn rkd_angle_unfused_path_agrees() {
    // On an FMA machine the public function never takes the portable path; check it here.
    let mut rng = XorShift(8);
    let (n, ds, dt) = (23, 13, 9);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let (v0, g0) = rkd_angle(sm, tm);
    let (v1, g1) = super::angle_direct::rkd_angle_unfused(sm, tm);
    assert!((v0 - v1).abs() <= 1e-14 * v0.abs());
    let scale = g0.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (a, b) in g0.iter().zip(&g1) {
        assert!((a - b).abs() <= 1e-12 * scale, "{a} vs {b}");
    }
    assert!((v0 - naive_angle(&s, &t, n, ds, dt)).abs() <= 1e-13 * v0.abs());
}

#[test]
fn rkd_angle_gradient_on_tile_sizes() {
    // FD at a size where the register tiles, not only the tails, produce the gradient.
    let mut rng = XorShift(99);
    let (n, ds, dt) = (18, 17, 16);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let err = fd_rel_err(rkd_angle, &s, &t, n, ds, dt);
    assert!(err < 1e-6, "rkd_angle FD error {err:e}");
}

#[test]
fn rkd_angle_is_bit_identical_across_thread_counts() {
    let mut rng = XorShift(2024);
    let (n, ds, dt) = (37, 21, 18);
    let s: Vec<f32> = rng.mat(n, ds).iter().map(|&v| v as f32).collect();
    let t: Vec<f32> = rng.mat(n, dt).iter().map(|&v| v as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (v, g) = rkd_angle(
                MatRef::new(&s, n, ds).unwrap(),
                MatRef::new(&t, n, dt).unwrap(),
            );
            (
                v.to_bits(),
                g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            )
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn n_below_two_is_zero_not_nan() {
    let s = [1.0f64, 2.0];
    let t = [3.0f64];
    let (v, g) = rkd_distance(
        MatRef::new(&s, 1, 2).unwrap(),
        MatRef::new(&t, 1, 1).unwrap(),
    );
    assert_eq!((v, g), (0.0, vec![0.0, 0.0]));
    let (v, g) = rkd_angle(
        MatRef::new(&s, 1, 2).unwrap(),
        MatRef::new(&t, 1, 1).unwrap(),
    );
    assert_eq!((v, g), (0.0, vec![0.0, 0.0]));
    let (v, g) = triplet(MatRef::new(&s, 1, 2).unwrap(), &[], 0.2);
    assert_eq!((v, g), (0.0, vec![0.0, 0.0]));
}

#[test]
fn matref_rejects_bad_length() {
    let d = [0.0f32; 5];
    assert_eq!(
        MatRef::new(&d, 2, 3).unwrap_err(),
        LossError::BadShape {
            len: 5,
            rows: 2,
            cols: 3
        }
    );
}

#[test]
fn huber_is_smooth_l1() {
    assert_eq!(huber(0.5f64), 0.125);
    assert_eq!(huber(-2.0f64), 1.5);
    assert_eq!(huber_grad(0.5f64), 0.5);
    assert_eq!(huber_grad(-2.0f64), -1.0);
}

fn grad_of(
    loss: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    s: &[f64],
    n: usize,
    d: usize,
    dtype: candle_core::DType,
) -> Vec<f64> {
    let dev = Device::Cpu;
    let init = Tensor::from_vec(s.to_vec(), (n, d), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let var = Var::from_tensor(&init).unwrap();
    // Scaling the loss checks that bwd multiplies by the incoming gradient.
    let l = (loss(var.as_tensor()).unwrap() * 3.0).unwrap();
    assert_eq!(l.dims(), &[] as &[usize]);
    let grads = l.backward().unwrap();
    let g = grads.get(var.as_tensor()).expect("student gets a gradient");
    g.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn candle_adapters_backprop_the_pure_gradients() {
    let mut rng = XorShift(5);
    let (n, ds, dt) = (9, 5, 7);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let dev = Device::Cpu;
    let teacher = Tensor::from_vec(t.clone(), (n, dt), &dev).unwrap();
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let trips = [[0, 1, 2], [4, 3, 8], [7, 6, 5]];
    // KD needs a teacher of the student's width; CE needs labels below Ds.
    let t_same = rng.mat(n, ds);
    let teacher_same = Tensor::from_vec(t_same.clone(), (n, ds), &dev).unwrap();
    let tsm = MatRef::new(&t_same, n, ds).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % ds as u32).collect();
    let kernel = CcKernel::Taylor { p: 3, gamma: 0.7 };
    let cases: [(&str, Adapter, Vec<f64>); 7] = [
        (
            "rkd_distance",
            Box::new(|x| rkd_distance_loss(x, &teacher, None)),
            rkd_distance(sm, tm).1,
        ),
        (
            "rkd_angle",
            Box::new(|x| rkd_angle_loss(x, &teacher, None)),
            rkd_angle(sm, tm).1,
        ),
        (
            "triplet",
            Box::new(|x| triplet_loss(x, &trips, 0.5)),
            triplet(sm, &trips, 0.5).1,
        ),
        ("sp", Box::new(|x| sp_loss(x, &teacher, None)), sp(sm, tm).1),
        (
            "cc",
            Box::new(|x| cc_loss(x, &teacher, kernel, None)),
            cc(sm, tm, kernel).1,
        ),
        (
            "kd",
            Box::new(|x| kd_loss(x, &teacher_same, 2.5)),
            kd(sm, tsm, 2.5).1,
        ),
        ("ce", Box::new(|x| ce_loss(x, &labels)), ce(sm, &labels).1),
    ];
    for (name, f, want) in &cases {
        let got = grad_of(f, &s, n, ds, candle_core::DType::F64);
        for (g, w) in got.iter().zip(want) {
            assert_eq!(*g, 3.0 * w, "{name} f64");
        }
        let got = grad_of(f, &s, n, ds, candle_core::DType::F32);
        let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - 3.0 * w).abs() <= 1e-4 * 3.0 * scale,
                "{name} f32: {g} vs {w}"
            );
        }
    }
}

#[test]
fn candle_adapters_reject_bad_inputs() {
    let dev = Device::Cpu;
    let s = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
    let t = Tensor::zeros((5, 3), candle_core::DType::F32, &dev).unwrap();
    let err = rkd_angle_loss(&s, &t, None).unwrap_err().to_string();
    assert!(err.contains("4 rows") && err.contains("5"), "{err}");
    assert!(rkd_distance_loss(&s.flatten_all().unwrap(), &t, None).is_err());
    assert!(triplet_loss(&s, &[[0, 1, 4]], 0.2).is_err());
    let half = s.to_dtype(candle_core::DType::F16).unwrap();
    assert!(triplet_loss(&half, &[[0, 1, 2]], 0.2).is_err());
    assert!(sp_loss(&s, &t, None).is_err());
    assert!(cc_loss(&s, &t, CcKernel::Bilinear, None).is_err());
    // KD: same number of classes, positive temperature.
    let t4 = Tensor::zeros((4, 5), candle_core::DType::F32, &dev).unwrap();
    let err = kd_loss(&s, &t4, 4.0).unwrap_err().to_string();
    assert!(err.contains("3 classes") && err.contains("5"), "{err}");
    let t3 = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(kd_loss(&s, &t3, 0.0).is_err());
    assert!(kd_loss(&s, &t3, f64::NAN).is_err());
    // Positive in f64 but 0 or inf once cast to the f32 student: an error, not a panic.
    assert!(kd_loss(&s, &t3, 1e-50).is_err());
    assert!(kd_loss(&s, &t3, 1e300).is_err());
    assert!(kd_loss(&s, &t3, 4.0).is_ok());
    // CE: one label per row, each below the class count.
    assert!(ce_loss(&s, &[0, 1, 2]).is_err());
    let err = ce_loss(&s, &[0, 1, 2, 3]).unwrap_err().to_string();
    assert!(err.contains("label 3"), "{err}");
    assert!(ce_loss(&s, &[0, 1, 2, 2]).is_ok());
}

#[test]
fn candle_adapter_values_match_pure_functions() {
    let mut rng = XorShift(11);
    let (n, ds, dt) = (7, 3, 4);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let dev = Device::Cpu;
    // A transposed (non-contiguous) student exercises the contiguous() path.
    let st = Tensor::from_vec(s.clone(), (n, ds), &dev).unwrap();
    let st_t = st.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!st_t.is_contiguous());
    let tt = Tensor::from_vec(t.clone(), (n, dt), &dev).unwrap();
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let v = rkd_angle_loss(&st_t, &tt, None)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(v, rkd_angle(sm, tm).0);
    let v = rkd_distance_loss(&st_t, &tt, None)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(v, rkd_distance(sm, tm).0);
}

#[test]
fn mined_triplets_are_valid() {
    let mut rng = XorShift(3);
    let (n, d) = (24, 6);
    let emb: Vec<f32> = rng.mat(n, d).iter().map(|&v| v as f32).collect();
    // Label 9 is a singleton: that row has no positive and must not be an anchor.
    let mut labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
    labels[5] = 9;
    let m = MatRef::new(&emb, n, d).unwrap();
    let dist = |a: usize, b: usize| -> f64 {
        (0..d)
            .map(|c| (f64::from(emb[a * d + c]) - f64::from(emb[b * d + c])).powi(2))
            .sum()
    };
    for mining in [
        Mining::Random,
        Mining::SemiHard,
        Mining::Hard,
        Mining::DistanceWeighted,
    ] {
        let mut r = XorShift(17);
        let trips = mine_triplets(m, &labels, mining, &mut || r.next_u64());
        assert_eq!(trips.len(), n - 1, "{mining:?}");
        for &[a, p, ng] in &trips {
            assert_ne!(a, 5);
            assert_ne!(a, p);
            assert_eq!(labels[a], labels[p]);
            assert_ne!(labels[a], labels[ng]);
            let negs = (0..n).filter(|&j| labels[j] != labels[a]);
            match mining {
                Mining::Hard => assert!(negs.into_iter().all(|j| dist(a, j) >= dist(a, ng))),
                Mining::SemiHard => {
                    let dap = dist(a, p);
                    let farther: Vec<usize> = negs.filter(|&j| dist(a, j) > dap).collect();
                    if farther.is_empty() {
                        let all = (0..n).filter(|&j| labels[j] != labels[a]);
                        assert!(all.into_iter().all(|j| dist(a, j) >= dist(a, ng)));
                    } else {
                        assert!(dist(a, ng) > dap);
                        assert!(farther.iter().all(|&j| dist(a, j) >= dist(a, ng)));
                    }
                }
                Mining::Random | Mining::DistanceWeighted | Mining::All => {}
            }
        }
        // Same rng stream, same triplets.
        let mut r2 = XorShift(17);
        assert_eq!(
            trips,
            mine_triplets(m, &labels, mining, &mut || r2.next_u64())
        );
    }
}

#[test]
fn mining_deserialises_from_snake_case() {
    let m: Mining = serde_json::from_str("\"semi_hard\"").unwrap();
    assert_eq!(m, Mining::SemiHard);
    let m: Mining = serde_json::from_str("\"semihard\"").unwrap();
    assert_eq!(m, Mining::SemiHard);
    let m: Mining = serde_json::from_str("\"all\"").unwrap();
    assert_eq!(m, Mining::All);
    let m: Mining = serde_json::from_str("\"distance_weighted\"").unwrap();
    assert_eq!(m, Mining::DistanceWeighted);
    assert_eq!(
        serde_json::to_string(&Mining::DistanceWeighted).unwrap(),
        "\"distance_weighted\""
    );
}

// ---------------------------------------------------------------------------------------
// SP, CC, KD, CE
// ---------------------------------------------------------------------------------------

/// Random student/teacher pair with different widths.
fn pair(seed: u64, n: usize, ds: usize, dt: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = XorShift(seed);
    (rng.mat(n, ds), rng.mat(n, dt))
}

#[test]
fn sp_and_sp_torchdistill_match_finite_differences() {
    let (n, ds, dt) = (7, 5, 9);
    let (s, t) = pair(31, n, ds, dt);
    let err = fd_rel_err(sp, &s, &t, n, ds, dt);
    assert!(err < 1e-7, "sp FD error {err:e}");
    let err = fd_rel_err(sp_torchdistill, &s, &t, n, ds, dt);
    assert!(err < 1e-7, "sp_torchdistill FD error {err:e}");
}

#[test]
fn cc_matches_finite_differences_for_every_kernel() {
    let (n, ds, dt) = (6, 4, 7);
    let (s, t) = pair(32, n, ds, dt);
    let kernels = [
        CcKernel::Taylor { p: 0, gamma: 0.4 },
        CcKernel::Taylor { p: 1, gamma: 0.4 },
        CcKernel::Taylor { p: 2, gamma: 0.4 },
        CcKernel::Taylor { p: 4, gamma: 1.0 },
        CcKernel::Gaussian { gamma: 0.7 },
        CcKernel::Bilinear,
    ];
    for kernel in kernels {
        if kernel == (CcKernel::Taylor { p: 0, gamma: 0.4 }) {
            // K is the constant e^{−2γ}: zero loss and zero gradient, not an FD check.
            let (v, g) = cc(
                MatRef::new(&s, n, ds).unwrap(),
                MatRef::new(&t, n, dt).unwrap(),
                kernel,
            );
            assert_eq!(v, 0.0);
            assert!(g.iter().all(|&x| x == 0.0));
            continue;
        }
        let err = fd_rel_err(|a, b| cc(a, b, kernel), &s, &t, n, ds, dt);
        assert!(err < 1e-7, "cc {kernel:?} FD error {err:e}");
    }
}

#[test]
fn cc_torchdistill_and_repdistiller_match_finite_differences() {
    let (n, ds, dt) = (6, 4, 7);
    let (s, t) = pair(33, n, ds, dt);
    for kernel in [
        CcTorchdistillKernel::Gaussian { p: 2, gamma: 0.4 },
        CcTorchdistillKernel::Gaussian { p: 4, gamma: 1.0 },
        CcTorchdistillKernel::Bilinear,
    ] {
        let err = fd_rel_err(|a, b| cc_torchdistill(a, b, kernel), &s, &t, n, ds, dt);
        assert!(err < 1e-7, "cc_torchdistill {kernel:?} FD error {err:e}");
    }
    let (s, t) = pair(34, n, ds, ds);
    let err = fd_rel_err(cc_repdistiller, &s, &t, n, ds, ds);
    assert!(err < 1e-7, "cc_repdistiller FD error {err:e}");
}

#[test]
fn kd_and_ce_match_finite_differences() {
    let (n, c) = (5, 6);
    let (s, t) = pair(35, n, c, c);
    // Logits of a few units so the softmax is neither flat nor saturated.
    let s: Vec<f64> = s.iter().map(|v| 6.0 * v).collect();
    let t: Vec<f64> = t.iter().map(|v| 6.0 * v).collect();
    for temperature in [1.0, 4.0, 0.5] {
        let err = fd_rel_err(|a, b| kd(a, b, temperature), &s, &t, n, c, c);
        assert!(err < 1e-7, "kd T={temperature} FD error {err:e}");
    }
    let labels = [0u32, 5, 2, 2, 1];
    let err = fd_rel_err(|a, _| ce(a, &labels), &s, &t, n, c, c);
    assert!(err < 1e-7, "ce FD error {err:e}");
}

/// `[(v, grad)]` of the paper's CC from its definition, with no Horner, centring or Gram
/// symmetry: the reference for the kernel variants.
fn naive_cc(s: &[f64], t: &[f64], n: usize, ds: usize, dt: usize, k: impl Fn(f64) -> f64) -> f64 {
    let corr = |x: &[f64], d: usize| -> Vec<f64> {
        let unit: Vec<Vec<f64>> = x
            .chunks_exact(d)
            .map(|r| {
                let nrm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                r.iter().map(|v| v / nrm).collect()
            })
            .collect();
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = k(unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum());
            }
        }
        c
    };
    let (ks, kt) = (corr(s, ds), corr(t, dt));
    ks.iter()
        .zip(&kt)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / (n * n) as f64
}

#[test]
fn cc_kernels_match_their_definitions() {
    let (n, ds, dt) = (9, 6, 4);
    let (s, t) = pair(36, n, ds, dt);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-13 * b.abs();
    // Taylor: Σ_p e^{−2γ}(2γ)^p/p! c^p, term by term as KD-Zoo writes it.
    let (p, gamma) = (3u32, 0.9);
    let taylor = |c: f64| -> f64 {
        (0..=p)
            .map(|k| {
                let fact: f64 = (1..=k).map(f64::from).product();
                (-2.0 * gamma).exp() * (2.0 * gamma).powi(k as i32) / fact * c.powi(k as i32)
            })
            .sum()
    };
    let v = cc(sm, tm, CcKernel::Taylor { p, gamma }).0;
    assert!(close(v, naive_cc(&s, &t, n, ds, dt, taylor)));
    // Gaussian: exp(−γ‖F̂_i − F̂_j‖²) with the distance itself, not via C.
    let (unit_s, unit_t): (Vec<f64>, Vec<f64>) = {
        let u = |x: &[f64], d: usize| -> Vec<f64> {
            x.chunks_exact(d)
                .flat_map(|r| {
                    let nrm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                    r.iter().map(move |v| v / nrm)
                })
                .collect()
        };
        (u(&s, ds), u(&t, dt))
    };
    let gauss_matrix = |x: &[f64], d: usize| -> Vec<f64> {
        let mut k = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let sq: f64 = (0..d).map(|c| (x[i * d + c] - x[j * d + c]).powi(2)).sum();
                k[i * n + j] = (-gamma * sq).exp();
            }
        }
        k
    };
    let (ks, kt) = (gauss_matrix(&unit_s, ds), gauss_matrix(&unit_t, dt));
    let want = ks
        .iter()
        .zip(&kt)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / (n * n) as f64;
    let v = cc(sm, tm, CcKernel::Gaussian { gamma }).0;
    assert!((v - want).abs() <= 1e-12 * want, "{v} vs {want}");
    // Bilinear on the normalised features: K = C.
    let v = cc(sm, tm, CcKernel::Bilinear).0;
    assert!(close(v, naive_cc(&s, &t, n, ds, dt, |c| c)));
}

#[test]
fn cc_taylor_approaches_the_exact_gaussian() {
    let (n, ds, dt) = (10, 7, 5);
    let (s, t) = pair(37, n, ds, dt);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    for gamma in [0.4, 1.0] {
        let (vg, gg) = cc(sm, tm, CcKernel::Gaussian { gamma });
        let scale = gg.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let err_at = |p: u32| {
            let (v, g) = cc(sm, tm, CcKernel::Taylor { p, gamma });
            let ge = g
                .iter()
                .zip(&gg)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            ((v - vg).abs() / vg, ge / scale)
        };
        // For |C| ≤ 1 the kernel's remainder after P = 12 is at most
        // e^{−2γ} Σ_{p>12} (2γ)^p/p! ≤ (2γ)^13/13!: 8.8e-12 for γ = 0.4, 1.3e-6 for γ = 1.
        let remainder = (2.0 * gamma).powi(13) / (1..=13).map(f64::from).product::<f64>();
        let (ve, ge) = err_at(12);
        assert!(
            ve < 10.0 * remainder && ge < 10.0 * remainder,
            "γ={gamma}: P=12 off by {ve:e} / {ge:e} (remainder bound {remainder:e})"
        );
        // And the error shrinks with P.
        let (v4, _) = err_at(4);
        let (v8, _) = err_at(8);
        assert!(v4 > v8 && v8 > ve, "γ={gamma}: {v4:e} {v8:e} {ve:e}");
    }
    // A huge P stops at the coefficients that underflow instead of allocating them all.
    let (v, _) = cc(
        sm,
        tm,
        CcKernel::Taylor {
            p: u32::MAX,
            gamma: 1.0,
        },
    );
    let vg = cc(sm, tm, CcKernel::Gaussian { gamma: 1.0 }).0;
    assert!((v - vg).abs() <= 1e-12 * vg, "{v} vs {vg}");
}

#[test]
fn cc_and_sp_survive_zero_rows_and_tiny_batches() {
    // A zero student row normalises to 0 (torch's clamp), no NaN anywhere.
    let (n, ds, dt) = (5, 3, 4);
    let (mut s, t) = pair(38, n, ds, dt);
    s[3 * ds..4 * ds].fill(0.0);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    for (name, (v, g)) in [
        ("sp", sp(sm, tm)),
        ("sp_torchdistill", sp_torchdistill(sm, tm)),
        ("cc", cc(sm, tm, CcKernel::Taylor { p: 2, gamma: 0.4 })),
        ("cc gaussian", cc(sm, tm, CcKernel::Gaussian { gamma: 0.4 })),
    ] {
        assert!(v.is_finite() && g.iter().all(|x| x.is_finite()), "{name}");
    }
    // Empty and single-row batches: 0, no NaN.
    let e: [f64; 0] = [];
    let empty = MatRef::new(&e, 0, 3).unwrap();
    assert_eq!(sp(empty, empty), (0.0, vec![]));
    assert_eq!(cc(empty, empty, CcKernel::Bilinear), (0.0, vec![]));
    let one = [1.0f64, 2.0];
    let one = MatRef::new(&one, 1, 2).unwrap();
    assert_eq!(cc_repdistiller(one, one), (0.0, vec![0.0, 0.0]));
    assert_eq!(sp(one, one).0, 0.0);
    let none: [u32; 0] = [];
    assert_eq!(ce(empty, &none), (0.0, vec![]));
}

#[test]
fn kd_with_exact_zero_teacher_probability_stays_finite() {
    // Teacher row 0: logit −4000 at T = 4 is a softmax term of e^{−1000} = exactly 0.
    let s = [0.3f64, -0.2, 0.5, 1.0, 0.0, -1.0];
    let t = [0.0f64, -4000.0, 1.0, 2.0, 2.0, -3000.0];
    let (n, c, temp) = (2, 3, 4.0);
    let pt0 = {
        let z: Vec<f64> = t[..3].iter().map(|v| v / temp).collect();
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
        (z[1] - m).exp() / sum
    };
    assert_eq!(pt0, 0.0, "the test needs an exact zero");
    let sm = MatRef::new(&s, n, c).unwrap();
    let tm = MatRef::new(&t, n, c).unwrap();
    let (v, g) = kd(sm, tm, temp);
    assert!(v.is_finite() && v > 0.0, "{v}");
    assert!(g.iter().all(|x| x.is_finite()));
    // Reference from the definition, skipping the zero term: T²/B Σ p^t ln(p^t / p^s).
    let softmax = |z: &[f64]| -> Vec<f64> {
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / temp));
        let e: Vec<f64> = z.iter().map(|v| (v / temp - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|x| x / sum).collect()
    };
    let mut want = 0.0;
    let mut want_g = Vec::new();
    for i in 0..n {
        let (ps, pt) = (
            softmax(&s[i * c..(i + 1) * c]),
            softmax(&t[i * c..(i + 1) * c]),
        );
        for k in 0..c {
            if pt[k] > 0.0 {
                want += pt[k] * (pt[k] / ps[k]).ln();
            }
            want_g.push(temp / n as f64 * (ps[k] - pt[k]));
        }
    }
    want *= temp * temp / n as f64;
    assert!((v - want).abs() <= 1e-12 * want, "{v} vs {want}");
    for (a, b) in g.iter().zip(&want_g) {
        assert!((a - b).abs() <= 1e-15, "{a} vs {b}");
    }
    // f32 too: the same logits must not produce inf or NaN.
    let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let (v32, g32) = kd(
        MatRef::new(&s32, n, c).unwrap(),
        MatRef::new(&t32, n, c).unwrap(),
        4.0f32,
    );
    assert!(v32.is_finite() && g32.iter().all(|x| x.is_finite()));
}

#[test]
fn ce_hand_example() {
    // Row 0: logits [0, ln 2, ln 3] → p = [1/6, 2/6, 3/6], label 2 → −ln(1/2) = ln 2.
    // Row 1: equal logits → p = 1/3 each, label 0 → ln 3. Mean: (ln 2 + ln 3)/2 = ln(6)/2.
    let z = [0.0f64, 2f64.ln(), 3f64.ln(), 5.0, 5.0, 5.0];
    let (v, g) = ce(MatRef::new(&z, 2, 3).unwrap(), &[2, 0]);
    assert!((v - 6f64.ln() / 2.0).abs() < 1e-15, "{v}");
    // (softmax − onehot)/N.
    let want = [
        1.0 / 12.0,
        1.0 / 6.0,
        -1.0 / 4.0,
        -1.0 / 3.0,
        1.0 / 6.0,
        1.0 / 6.0,
    ];
    for (a, b) in g.iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
    // Large logits do not overflow (log-sum-exp).
    let z = [1000.0f32, 0.0, -1000.0];
    let (v, g) = ce(MatRef::new(&z, 1, 3).unwrap(), &[1]);
    assert!((v - 1000.0).abs() < 1e-3, "{v}");
    assert!((g[0] - 1.0).abs() < 1e-6 && (g[1] + 1.0).abs() < 1e-6 && g[2] == 0.0);
}

#[test]
#[should_panic(expected = "label 3 out of range")]
fn ce_rejects_out_of_range_labels() {
    let z = [0.0f64; 6];
    let _ = ce(MatRef::new(&z, 2, 3).unwrap(), &[0, 3]);
}

#[test]
#[should_panic(expected = "equal shapes")]
fn cc_repdistiller_rejects_different_widths() {
    let (s, t) = ([0.0f64; 6], [0.0f64; 4]);
    let _ = cc_repdistiller(
        MatRef::new(&s, 2, 3).unwrap(),
        MatRef::new(&t, 2, 2).unwrap(),
    );
}

#[test]
fn sp_and_cc_are_bit_identical_across_thread_counts() {
    // Large enough that the Gram products split into many rayon tasks.
    let mut rng = XorShift(4242);
    let (n, ds, dt) = (70, 300, 130);
    let s: Vec<f32> = rng.mat(n, ds).iter().map(|&v| v as f32).collect();
    let t: Vec<f32> = rng.mat(n, dt).iter().map(|&v| v as f32).collect();
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let bits = |(v, g): (f32, Vec<f32>)| {
                (
                    v.to_bits(),
                    g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                )
            };
            [
                bits(sp(sm, tm)),
                bits(sp_torchdistill(sm, tm)),
                bits(cc(sm, tm, CcKernel::Taylor { p: 2, gamma: 0.4 })),
                bits(cc(sm, tm, CcKernel::Gaussian { gamma: 0.4 })),
                bits(cc_torchdistill(
                    sm,
                    tm,
                    CcTorchdistillKernel::Gaussian { p: 2, gamma: 0.4 },
                )),
            ]
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    assert_eq!(one, run(8));
}

#[test]
fn simd_gram_kernels_round_like_the_portable_ones() {
    // The AVX2 entry points (taken on this machine if it has AVX2) must give the portable
    // kernels' bits, or results would depend on the CPU.
    let mut rng = XorShift(77);
    let (n, d) = (23, 45);
    let x: Vec<f32> = rng.mat(n, d).iter().map(|&v| v as f32).collect();
    let m: Vec<f32> = rng.mat(n, n).iter().map(|&v| v as f32).collect();
    let xm = MatRef::new(&x, n, d).unwrap();
    let (g, p) = super::linalg::gram_and_product_portable(xm, &m);
    assert_eq!(g, super::linalg::gram(xm));
    assert_eq!(p, super::linalg::square_times(&m, xm));
}

// ---------------------------------------------------------------------------------------
// Mining
// ---------------------------------------------------------------------------------------

#[test]
fn mining_all_enumerates_every_valid_triplet() {
    let mut rng = XorShift(12);
    let (n, d) = (13, 4);
    let emb: Vec<f32> = rng.mat(n, d).iter().map(|&v| v as f32).collect();
    let labels: Vec<u32> = vec![0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 0];
    let m = MatRef::new(&emb, n, d).unwrap();
    let mut draws = 0;
    let trips = mine_triplets(m, &labels, Mining::All, &mut || {
        draws += 1;
        0
    });
    assert_eq!(draws, 0, "Mining::All needs no randomness");
    let expected: usize = (0..n)
        .map(|a| {
            let pos = (0..n).filter(|&j| j != a && labels[j] == labels[a]).count();
            let neg = (0..n).filter(|&j| labels[j] != labels[a]).count();
            pos * neg
        })
        .sum();
    assert_eq!(trips.len(), expected);
    let unique: std::collections::HashSet<_> = trips.iter().collect();
    assert_eq!(unique.len(), expected, "no duplicates");
    for &[a, p, ng] in &trips {
        assert!(a != p && labels[a] == labels[p] && labels[a] != labels[ng]);
    }
    // The singleton label 3 is never an anchor; the loss is the mean over all triplets.
    assert!(trips.iter().all(|t| t[0] != 9));
    let e64: Vec<f64> = emb.iter().map(|&v| f64::from(v)).collect();
    let (v, _) = triplet(MatRef::new(&e64, n, d).unwrap(), &trips, 0.3);
    let mean = trips
        .iter()
        .map(|&t| triplet(MatRef::new(&e64, n, d).unwrap(), &[t], 0.3).0)
        .sum::<f64>()
        / expected as f64;
    assert!((v - mean).abs() <= 1e-14 * mean.abs().max(1.0));
}

/// Unit vectors along coordinate axes and mixtures, so distances are known exactly.
fn axis_embedding(rows: &[&[f32]], d: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|r| {
            let mut v = vec![0.0f32; d];
            v[..r.len()].copy_from_slice(r);
            v
        })
        .collect()
}

#[test]
fn distance_weighted_mining_respects_the_cutoffs() {
    let d = 8;
    // Anchor 0 and positive 1 along e0. Negatives: 2 and 3 are orthogonal to the anchor
    // (distance √2 ≈ 1.414 ≥ 1.4: ineligible), 4 at distance ~0.39 (clamped to 0.5),
    // 5 at distance ~1.0. Only 4 and 5 may be drawn for anchor 0.
    let emb = axis_embedding(
        &[
            &[1.0],
            &[1.0, 0.1],
            &[0.0, 1.0],
            &[0.0, 0.0, 1.0],
            &[1.0, 0.4],
            &[1.0, 0.0, 0.0, 1.7],
        ],
        d,
    );
    let labels = [0u32, 0, 1, 1, 2, 3];
    let m = MatRef::new(&emb, 6, d).unwrap();
    let mut count4 = 0;
    let mut r = XorShift(99);
    let draws = 2000;
    for _ in 0..draws {
        let trips = mine_triplets(m, &labels, Mining::DistanceWeighted, &mut || r.next_u64());
        let t0 = trips
            .iter()
            .find(|t| t[0] == 0)
            .expect("anchor 0 has a triplet");
        assert_eq!(t0[1], 1);
        assert!(t0[2] == 4 || t0[2] == 5, "ineligible negative {t0:?}");
        count4 += usize::from(t0[2] == 4);
    }
    // In 8 dimensions 1/q(0.5) ≈ 74 and 1/q(0.99) ≈ 2.1 (no clip): 4 has probability 0.97.
    let frac = count4 as f64 / draws as f64;
    assert!((0.95..0.99).contains(&frac), "P(closest) = {frac}");

    // In 128 dimensions 1/q is astronomically large below d ≈ 1.15, so the λ clip makes
    // the near negatives (d = 0.5 and 0.8 here) equally likely instead of always the
    // nearest one.
    let d = 128;
    let near = |dist: f32| -> Vec<f32> {
        // A unit vector at distance `dist` from e0: cos θ = 1 − dist²/2.
        let c = 1.0 - dist * dist / 2.0;
        vec![c, (1.0 - c * c).sqrt()]
    };
    let (n05, n08) = (near(0.5), near(0.8));
    let emb = axis_embedding(&[&[1.0], &[1.0, 0.0, 0.1], &n05, &n08], d);
    let labels = [0u32, 0, 1, 2];
    let m = MatRef::new(&emb, 4, d).unwrap();
    let mut count_near = 0;
    for _ in 0..draws {
        let trips = mine_triplets(m, &labels, Mining::DistanceWeighted, &mut || r.next_u64());
        count_near += usize::from(trips[0][2] == 2);
    }
    let frac = count_near as f64 / draws as f64;
    assert!((0.45..0.55).contains(&frac), "P(d = 0.5) = {frac}");

    // No eligible negative at all (every negative orthogonal): uniform fallback.
    let emb = axis_embedding(&[&[1.0], &[1.0, 0.0], &[0.0, 1.0], &[0.0, 0.0, 1.0]], d);
    let labels = [0u32, 0, 1, 2];
    let m = MatRef::new(&emb, 4, d).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut r = XorShift(5);
    for _ in 0..100 {
        let trips = mine_triplets(m, &labels, Mining::DistanceWeighted, &mut || r.next_u64());
        seen.insert(trips[0][2]);
    }
    assert_eq!(seen, [2usize, 3].into_iter().collect());
}

#[test]
fn sphere_distance_density_is_normalised() {
    // ∫₀² q(d) dd = 1 by the midpoint rule, for small and large dimensions: checks the
    // exact ln Γ sums behind Z, which set where the λ clip starts to act.
    for dim in [2usize, 3, 8, 33, 128, 512] {
        let q = super::mining::SphereDensity::new(dim);
        let steps = 200_000;
        let h = 2.0 / steps as f64;
        let total: f64 = (0..steps)
            .map(|k| (-q.neg_ln_q((k as f64 + 0.5) * h)).exp() * h)
            .sum();
        // n = 2 has an integrable 1/sqrt singularity at d = 2 that the midpoint rule
        // under-resolves; the others are smooth.
        let tol = if dim == 2 { 5e-3 } else { 1e-6 };
        assert!((total - 1.0).abs() < tol, "dim {dim}: ∫q = {total}");
    }
}

#[test]
fn distance_weighted_mining_is_deterministic_and_valid() {
    let mut rng = XorShift(8);
    let (n, d) = (40, 16);
    let emb: Vec<f32> = rng.mat(n, d).iter().map(|&v| v as f32).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
    let m = MatRef::new(&emb, n, d).unwrap();
    let mine = |seed| {
        let mut r = XorShift(seed);
        mine_triplets(m, &labels, Mining::DistanceWeighted, &mut || r.next_u64())
    };
    let a = mine(1);
    assert_eq!(a.len(), n);
    assert_eq!(a, mine(1));
    assert_ne!(a, mine(2), "the rng drives the sampling");
    for &[an, p, ng] in &a {
        assert!(an != p && labels[an] == labels[p] && labels[an] != labels[ng]);
    }
    // Dimension 1 has no sphere density: eligible negatives are drawn uniformly.
    let e1: Vec<f32> = (0..6)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let l1 = [0u32, 0, 0, 1, 1, 1];
    let mut r = XorShift(3);
    let t = mine_triplets(
        MatRef::new(&e1, 6, 1).unwrap(),
        &l1,
        Mining::DistanceWeighted,
        &mut || r.next_u64(),
    );
    assert_eq!(t.len(), 6);
}

// ---------------------------------------------------------------------------------------
// eval_cases
// ---------------------------------------------------------------------------------------

/// The public golden file: `RKD_GOLDEN` if set, else the copy in `tests/data/golden/`.
/// Missing is a failure, not a skip, so a moved file cannot turn into a silent pass.
fn golden_json() -> serde_json::Value {
    let path = std::env::var_os("RKD_GOLDEN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/golden/losses-public.json"
            ))
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden vectors {} (set RKD_GOLDEN): {e}",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("golden file parses")
}

#[test]
fn eval_cases_reproduces_every_public_golden_case() {
    let input = golden_json();
    let out = eval_cases(&input).expect("every golden case evaluates");
    let cases = input["cases"].as_array().unwrap();
    let got = out["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 143);
    assert_eq!(got.len(), cases.len());
    let mut failures = Vec::new();
    for (want, got) in cases.iter().zip(got) {
        let name = want["name"].as_str().unwrap();
        assert_eq!(got["name"], want["name"]);
        // FORMAT.md: value |Δ| ≤ 1e-9|v| + 1e-12, gradient |Δ| ≤ 1e-8|g| + 1e-10 max|g row|;
        // pub_n2/rkd_* (exactly 0 or round-off) absolutely to 1e-12.
        let absolute = name.starts_with("pub_n2/rkd_");
        let (v, vr) = (
            got["value"].as_f64().unwrap(),
            want["value"].as_f64().unwrap(),
        );
        let vb = if absolute {
            1e-12
        } else {
            1e-9 * vr.abs() + 1e-12
        };
        if (v - vr).abs() > vb || v.is_nan() {
            failures.push(format!("{name}: value {v:e} vs {vr:e}"));
        }
        let (gw, gg) = (
            want["grad_student"].as_array().unwrap(),
            got["grad_student"].as_array().unwrap(),
        );
        assert_eq!(gw.len(), gg.len(), "{name}: rows");
        for (r, (rw, rg)) in gw.iter().zip(gg).enumerate() {
            let (rw, rg) = (rw.as_array().unwrap(), rg.as_array().unwrap());
            assert_eq!(rw.len(), rg.len(), "{name}: row {r} length");
            let row_max = rw
                .iter()
                .fold(0.0f64, |m, x| m.max(x.as_f64().unwrap().abs()));
            for (k, (w, g)) in rw.iter().zip(rg).enumerate() {
                let (w, g) = (w.as_f64().unwrap(), g.as_f64().unwrap());
                let b = if absolute {
                    1e-12
                } else {
                    1e-8 * w.abs() + 1e-10 * row_max
                };
                if (g - w).abs() > b || g.is_nan() {
                    failures.push(format!("{name}: grad[{r}][{k}] {g:e} vs {w:e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn eval_cases_defaults_and_extra_losses() {
    let s = serde_json::json!([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]);
    let t = serde_json::json!([[0.1, 0.2, 0.3], [-1.0, 2.0, 0.5]]);
    let input = serde_json::json!({"cases": [
        {"name": "kd_default", "loss": "kd", "student": s, "teacher": t},
        {"name": "kd_t4", "loss": "kd", "params": {"temperature": 4.0}, "student": s, "teacher": t},
        {"name": "ce", "loss": "ce", "student": s, "labels": [2, 0]},
        {"name": "trip", "loss": "triplet", "student": s, "triplets": [[0, 1, 0]], "teacher": null},
        {"name": "cc_gauss", "loss": "cc", "params": {"kernel": "gaussian", "gamma": 0.5},
         "student": s, "teacher": t},
        {"name": "cc_float_p", "loss": "cc", "params": {"P": 3.0}, "student": s, "teacher": t},
    ]});
    let out = eval_cases(&input).unwrap();
    let c = out["cases"].as_array().unwrap();
    assert_eq!(c.len(), 6);
    assert_eq!(c[0]["value"], c[1]["value"], "kd defaults to T = 4");
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let sv = flat(&s);
    let tv = flat(&t);
    let sm = MatRef::new(&sv, 2, 3).unwrap();
    let tm = MatRef::new(&tv, 2, 3).unwrap();
    let (v, g) = ce(sm, &[2, 0]);
    assert_eq!(c[2]["value"].as_f64().unwrap(), v);
    assert_eq!(flat(&c[2]["grad_student"]), g);
    assert_eq!(
        c[3]["value"].as_f64().unwrap(),
        triplet(sm, &[[0, 1, 0]], 0.2).0,
        "margin defaults to 0.2"
    );
    assert_eq!(
        c[4]["value"].as_f64().unwrap(),
        cc(sm, tm, CcKernel::Gaussian { gamma: 0.5 }).0
    );
    assert_eq!(
        c[5]["value"].as_f64().unwrap(),
        cc(sm, tm, CcKernel::Taylor { p: 3, gamma: 0.4 }).0,
        "P given as 3.0, γ defaults to 0.4"
    );
}

#[test]
fn eval_cases_reports_the_case_and_field() {
    let s = serde_json::json!([[0.5, -1.0], [1.5, 0.25]]);
    let err =
        |cases: serde_json::Value| eval_cases(&serde_json::json!({ "cases": cases })).unwrap_err();
    assert_eq!(
        eval_cases(&serde_json::json!({})).unwrap_err(),
        EvalError::NoCases
    );
    let e = err(serde_json::json!([{"name": "a", "loss": "sp", "student": s}]));
    assert_eq!(
        e,
        EvalError::Missing {
            case: "a".into(),
            field: "teacher".into()
        }
    );
    assert_eq!(e.to_string(), "case a: missing field `teacher`");
    let e = err(serde_json::json!([{"loss": "sp", "student": s}]));
    assert!(
        e.to_string().contains("case #0") && e.to_string().contains("`name`"),
        "{e}"
    );
    let e = err(serde_json::json!([{"name": "b", "loss": "nope", "student": s}]));
    assert!(
        matches!(e, EvalError::UnknownLoss { ref case, .. } if case == "b"),
        "{e}"
    );
    let e = err(
        serde_json::json!([{"name": "c", "loss": "cc", "params": {"P": -1},
        "student": s, "teacher": s}]),
    );
    assert!(
        matches!(e, EvalError::Invalid { ref field, .. } if field == "params.P"),
        "{e}"
    );
    let e = err(
        serde_json::json!([{"name": "c2", "loss": "cc", "params": {"P": 1.5},
        "student": s, "teacher": s}]),
    );
    assert!(
        matches!(e, EvalError::Invalid { ref field, .. } if field == "params.P"),
        "{e}"
    );
    let e = err(
        serde_json::json!([{"name": "d", "loss": "kd", "params": {"temperature": 0},
        "student": s, "teacher": s}]),
    );
    assert!(e.to_string().contains("params.temperature"), "{e}");
    let e = err(serde_json::json!([{"name": "e", "loss": "kd", "student": s,
        "teacher": [[1.0], [2.0]]}]));
    assert!(
        matches!(e, EvalError::Invalid { ref field, .. } if field == "teacher"),
        "{e}"
    );
    let e = err(
        serde_json::json!([{"name": "f", "loss": "rkd_angle", "student": [[1.0, 2.0], [3.0]],
        "teacher": s}]),
    );
    assert!(e.to_string().contains("row 1 has 1 entries"), "{e}");
    let e = err(
        serde_json::json!([{"name": "g", "loss": "triplet", "student": s,
        "triplets": [[0, 1, 2]]}]),
    );
    assert!(
        e.to_string().contains("case g") && e.to_string().contains("`triplets`"),
        "{e}"
    );
    let e = err(serde_json::json!([{"name": "h", "loss": "ce", "student": s, "labels": [0, 2]}]));
    assert!(e.to_string().contains("`labels`"), "{e}");
    let e = err(serde_json::json!([{"name": "i", "loss": "cc_torchdistill",
        "params": {"kernel": "poly"}, "student": s, "teacher": s}]));
    assert!(e.to_string().contains("params.kernel"), "{e}");
    let e = err(
        serde_json::json!([{"name": "j", "loss": "cc", "params": {"l2_normalize": false},
        "student": s, "teacher": s}]),
    );
    assert!(e.to_string().contains("params.l2_normalize"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Relation masking
// ---------------------------------------------------------------------------------------

/// The four maskable losses through one signature, for tests that loop over them.
type MaskedFn = fn(MatRef<f64>, MatRef<f64>, Mask) -> (f64, Vec<f64>);
type PlainFn = fn(MatRef<f64>, MatRef<f64>) -> (f64, Vec<f64>);
/// A loss value and its gradient.
type Loss = (f64, Vec<f64>);

/// The CC kernel the masked CC tests use (the paper's Taylor form, KD-Zoo's P = 2).
const MASK_CC_KERNEL: CcKernel = CcKernel::Taylor { p: 2, gamma: 0.4 };

fn cc_plain(s: MatRef<f64>, t: MatRef<f64>) -> (f64, Vec<f64>) {
    cc(s, t, MASK_CC_KERNEL)
}

fn cc_masked_taylor(s: MatRef<f64>, t: MatRef<f64>, m: Mask) -> (f64, Vec<f64>) {
    cc_masked(s, t, MASK_CC_KERNEL, m)
}

const MASKED: [(&str, PlainFn, MaskedFn); 4] = [
    ("rkd_distance", rkd_distance, rkd_distance_masked),
    ("rkd_angle", rkd_angle, rkd_angle_masked),
    ("sp", sp, sp_masked),
    ("cc", cc_plain, cc_masked_taylor),
];

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Value within `value_rel`·|v| and every gradient entry within `grad_rel`·max|g|.
fn assert_close(
    what: &str,
    got: &(f64, Vec<f64>),
    want: &(f64, Vec<f64>),
    value_rel: f64,
    grad_rel: f64,
) {
    let (v, g) = got;
    let (rv, rg) = want;
    // The absolute floor covers values that are pure round-off (N = 2 RKD-A is ~1e-33).
    assert!(
        (v - rv).abs() <= value_rel * rv.abs() + 1e-25,
        "{what}: value {v:e} vs {rv:e}"
    );
    assert_eq!(g.len(), rg.len(), "{what}: gradient length");
    let scale = max_abs(rg);
    for (idx, (a, b)) in g.iter().zip(rg).enumerate() {
        assert!(
            (a - b).abs() <= grad_rel * scale + 1e-25,
            "{what}: grad[{idx}] {a:e} vs {b:e} (max {scale:e})"
        );
    }
}

#[test]
fn mask_keep_one_equals_unmasked() {
    // Sizes that are not multiples of the 8/16-lane splits, the RKD-A tiles or the gather
    // tile, widths on both sides of 64.
    for (seed, n, ds, dt) in [
        (1, 2, 3, 5),
        (2, 7, 19, 35),
        (3, 23, 75, 11),
        (4, 37, 21, 18),
    ] {
        let (s, t) = pair(500 + seed, n, ds, dt);
        let sm = MatRef::new(&s, n, ds).unwrap();
        let tm = MatRef::new(&t, n, dt).unwrap();
        let mask = Mask { keep: 1.0, seed };
        for (name, plain, masked) in MASKED {
            let want = plain(sm, tm);
            let got = masked(sm, tm, mask);
            if name == "rkd_angle" {
                // A different kernel (sparse dot products instead of register tiles), so a
                // different summation order: equal to rounding, not bit for bit.
                assert_close(&format!("{name} n={n}"), &got, &want, 1e-14, 1e-13);
            } else {
                assert_eq!(got, want, "{name} n={n}: keep = 1 must be bit-identical");
            }
        }
    }
    // f32 too for the pair losses: the same operations, the same bits.
    let (s, t) = pair(599, 29, 13, 40);
    let s: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let sm = MatRef::new(&s, 29, 13).unwrap();
    let tm = MatRef::new(&t, 29, 40).unwrap();
    let m = Mask { keep: 1.0, seed: 9 };
    assert_eq!(rkd_distance_masked(sm, tm, m), rkd_distance(sm, tm));
    assert_eq!(sp_masked(sm, tm, m), sp(sm, tm));
    assert_eq!(
        cc_masked(sm, tm, MASK_CC_KERNEL, m),
        cc(sm, tm, MASK_CC_KERNEL)
    );
}

/// The pair mask, materialised with the public decision function.
fn kept_pairs(mask: &Mask, n: usize) -> Vec<bool> {
    (0..n * n)
        .map(|idx| mask.keeps_pair(idx / n, idx % n))
        .collect()
}

/// `unit(x_j − x_i)` as torch `F.normalize`, and the raw norm.
fn brute_unit(x: &[f64], d: usize, i: usize, j: usize) -> (Vec<f64>, f64) {
    let v: Vec<f64> = (0..d).map(|c| x[j * d + c] - x[i * d + c]).collect();
    let nrm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    (v.iter().map(|a| a / nrm.max(1e-12)).collect(), nrm)
}

/// Backward of `e = v / max(‖v‖, 1e-12)`: where the clamp is inactive
/// `(de − e (e·de)) / ‖v‖`, else `de / 1e-12` (torch's clamp passes no gradient).
fn brute_unit_backward(e: &[f64], nrm: f64, de: &[f64]) -> Vec<f64> {
    if nrm > 1e-12 {
        let p: f64 = e.iter().zip(de).map(|(a, b)| a * b).sum();
        e.iter().zip(de).map(|(a, b)| (b - a * p) / nrm).collect()
    } else {
        de.iter().map(|b| b / 1e-12).collect()
    }
}

/// Masked RKD-D from the definition: full distance matrices, μ over all off-diagonal
/// pairs, the masked mean, and the gradient by the chain rule over ordered pairs.
fn brute_rkd_distance(
    s: &[f64],
    t: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
    kept: &[bool],
) -> (f64, Vec<f64>) {
    let dists = |x: &[f64], d: usize| -> (Vec<f64>, Vec<bool>) {
        let mut dm = vec![0.0; n * n];
        let mut live = vec![false; n * n];
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let q: f64 = (0..d).map(|c| (x[i * d + c] - x[j * d + c]).powi(2)).sum();
                    dm[i * n + j] = q.max(1e-12).sqrt();
                    live[i * n + j] = q > 1e-12;
                }
            }
        }
        (dm, live)
    };
    let (d_s, live) = dists(s, ds);
    let (d_t, _) = dists(t, dt);
    let pairs = (n * (n - 1)) as f64;
    let mu_s = d_s.iter().sum::<f64>() / pairs;
    let mu_t = d_t.iter().sum::<f64>() / pairs;
    let cnt = kept.iter().filter(|&&k| k).count() as f64;
    let mut grad = vec![0.0; n * ds];
    if cnt == 0.0 {
        return (0.0, grad);
    }
    let r = |idx: usize| d_s[idx] / mu_s - d_t[idx] / mu_t;
    let mut loss = 0.0;
    let mut dl_dmu = 0.0;
    for idx in (0..n * n).filter(|&idx| kept[idx]) {
        loss += huber(r(idx)) / cnt;
        dl_dmu += huber_grad(r(idx)) * (-d_s[idx] / (mu_s * mu_s)) / cnt;
    }
    for a in 0..n {
        for b in 0..n {
            let idx = a * n + b;
            if a == b || !live[idx] {
                continue;
            }
            let direct = if kept[idx] {
                huber_grad(r(idx)) / (mu_s * cnt)
            } else {
                0.0
            };
            let dd = direct + dl_dmu / pairs;
            for c in 0..ds {
                let u = (s[a * ds + c] - s[b * ds + c]) / d_s[idx];
                grad[a * ds + c] += dd * u;
                grad[b * ds + c] -= dd * u;
            }
        }
    }
    (loss, grad)
}

/// Masked RKD-A from the definition: every ordered triple (i; j, k) the public decision
/// function keeps, its angle from freshly normalised differences, and the gradient by the
/// chain rule per triple.
fn brute_rkd_angle(
    s: &[f64],
    t: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
    mask: &Mask,
) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut cnt = 0usize;
    let mut grad = vec![0.0; n * ds];
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                if !mask.keeps_angle(i, j, k) {
                    continue;
                }
                cnt += 1;
                let (eij, nij) = brute_unit(s, ds, i, j);
                let (eik, nik) = brute_unit(s, ds, i, k);
                let a_s: f64 = eij.iter().zip(&eik).map(|(a, b)| a * b).sum();
                let (fij, _) = brute_unit(t, dt, i, j);
                let (fik, _) = brute_unit(t, dt, i, k);
                let a_t: f64 = fij.iter().zip(&fik).map(|(a, b)| a * b).sum();
                loss += huber(a_s - a_t);
                let h = huber_grad(a_s - a_t);
                // ∂A/∂e_ij = e_ik and ∂A/∂e_ik = e_ij; v_ij = x_j − x_i.
                for (row, e, nrm, other) in [(j, &eij, nij, &eik), (k, &eik, nik, &eij)] {
                    let de: Vec<f64> = other.iter().map(|v| h * v).collect();
                    let dv = brute_unit_backward(e, nrm, &de);
                    for c in 0..ds {
                        grad[row * ds + c] += dv[c];
                        grad[i * ds + c] -= dv[c];
                    }
                }
            }
        }
    }
    if cnt == 0 {
        return (0.0, vec![0.0; n * ds]);
    }
    let cnt = cnt as f64;
    (loss / cnt, grad.iter().map(|g| g / cnt).collect())
}

/// Masked SP from the definition: `G = X Xᵀ`, full-row L2 normalisation, the masked mean
/// of squared differences, and the chain rule through the normalisation and the product.
fn brute_sp(
    s: &[f64],
    t: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
    kept: &[bool],
) -> (f64, Vec<f64>) {
    let norm_gram = |x: &[f64], d: usize| -> (Vec<f64>, Vec<f64>) {
        let mut g = vec![0.0; n * n];
        for a in 0..n {
            for b in 0..n {
                g[a * n + b] = (0..d).map(|c| x[a * d + c] * x[b * d + c]).sum();
            }
        }
        let norms: Vec<f64> = (0..n)
            .map(|a| (0..n).map(|b| g[a * n + b].powi(2)).sum::<f64>().sqrt())
            .collect();
        let h = (0..n * n)
            .map(|idx| g[idx] / norms[idx / n].max(1e-12))
            .collect();
        (h, norms)
    };
    let (hs, norms) = norm_gram(s, ds);
    let (ht, _) = norm_gram(t, dt);
    let cnt = kept.iter().filter(|&&k| k).count() as f64;
    let mut grad = vec![0.0; n * ds];
    if cnt == 0.0 {
        return (0.0, grad);
    }
    let mut loss = 0.0;
    let mut dh = vec![0.0; n * n];
    for idx in (0..n * n).filter(|&idx| kept[idx]) {
        loss += (hs[idx] - ht[idx]).powi(2) / cnt;
        dh[idx] = 2.0 * (hs[idx] - ht[idx]) / cnt;
    }
    for a in 0..n {
        let row = &hs[a * n..(a + 1) * n];
        let dg = brute_unit_backward(row, norms[a], &dh[a * n..(a + 1) * n]);
        for b in 0..n {
            for c in 0..ds {
                grad[a * ds + c] += dg[b] * s[b * ds + c];
                grad[b * ds + c] += dg[b] * s[a * ds + c];
            }
        }
    }
    (loss, grad)
}

/// Masked CC (Taylor P = 2, γ = 0.4, term by term) from the definition.
fn brute_cc(
    s: &[f64],
    t: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
    kept: &[bool],
) -> (f64, Vec<f64>) {
    let gamma: f64 = 0.4;
    let coef = |p: i32| (-2.0 * gamma).exp() * (2.0 * gamma).powi(p) / [1.0, 1.0, 2.0][p as usize];
    let k = |c: f64| coef(0) + coef(1) * c + coef(2) * c * c;
    let dk = |c: f64| coef(1) + 2.0 * coef(2) * c;
    let units = |x: &[f64], d: usize| -> (Vec<f64>, Vec<f64>) {
        let norms: Vec<f64> = (0..n)
            .map(|a| (0..d).map(|c| x[a * d + c].powi(2)).sum::<f64>().sqrt())
            .collect();
        let u = (0..n * d)
            .map(|idx| x[idx] / norms[idx / d].max(1e-12))
            .collect();
        (u, norms)
    };
    let corr = |u: &[f64], d: usize| -> Vec<f64> {
        (0..n * n)
            .map(|idx| {
                (0..d)
                    .map(|c| u[idx / n * d + c] * u[idx % n * d + c])
                    .sum()
            })
            .collect()
    };
    let (us, norms) = units(s, ds);
    let (ut, _) = units(t, dt);
    let (cs, ct) = (corr(&us, ds), corr(&ut, dt));
    let cnt = kept.iter().filter(|&&k| k).count() as f64;
    let mut grad = vec![0.0; n * ds];
    if cnt == 0.0 {
        return (0.0, grad);
    }
    let mut loss = 0.0;
    let mut du = vec![0.0; n * ds];
    for idx in (0..n * n).filter(|&idx| kept[idx]) {
        let diff = k(cs[idx]) - k(ct[idx]);
        loss += diff * diff / cnt;
        let dc = 2.0 * diff * dk(cs[idx]) / cnt;
        let (a, b) = (idx / n, idx % n);
        for c in 0..ds {
            du[a * ds + c] += dc * us[b * ds + c];
            du[b * ds + c] += dc * us[a * ds + c];
        }
    }
    for a in 0..n {
        let dx = brute_unit_backward(
            &us[a * ds..(a + 1) * ds],
            norms[a],
            &du[a * ds..(a + 1) * ds],
        );
        grad[a * ds..(a + 1) * ds].copy_from_slice(&dx);
    }
    (loss, grad)
}

#[test]
fn masked_losses_match_brute_force() {
    for (case, (n, ds, dt)) in [(13, 19, 11), (10, 75, 6), (17, 8, 33)]
        .into_iter()
        .enumerate()
    {
        let (mut s, t) = pair(600 + case as u64, n, ds, dt);
        if case == 1 {
            // Duplicate student rows: unit(0) = 0 and the 1e-12 clamp's backward in RKD-A,
            // a clamped distance that passes no gradient in RKD-D.
            let (a, b) = s.split_at_mut(4 * ds);
            b[..ds].copy_from_slice(&a[ds..2 * ds]);
        }
        let sm = MatRef::new(&s, n, ds).unwrap();
        let tm = MatRef::new(&t, n, dt).unwrap();
        for keep in [0.3, 0.7] {
            let mask = Mask {
                keep,
                seed: 77 + case as u64,
            };
            let kept = kept_pairs(&mask, n);
            let what = |name: &str| format!("{name} n={n} keep={keep}");
            assert_close(
                &what("rkd_distance"),
                &rkd_distance_masked(sm, tm, mask),
                &brute_rkd_distance(&s, &t, n, ds, dt, &kept),
                1e-12,
                1e-10,
            );
            let want = brute_rkd_angle(&s, &t, n, ds, dt, &mask);
            assert_close(
                &what("rkd_angle"),
                &rkd_angle_masked(sm, tm, mask),
                &want,
                1e-12,
                1e-10,
            );
            assert_close(
                &what("rkd_angle direct"),
                &super::angle_direct::rkd_angle_masked(sm, tm, mask),
                &want,
                1e-12,
                1e-10,
            );
            assert_close(
                &what("rkd_angle direct unfused"),
                &super::angle_direct::rkd_angle_masked_unfused(sm, tm, mask),
                &want,
                1e-12,
                1e-10,
            );
            assert_close(
                &what("sp"),
                &sp_masked(sm, tm, mask),
                &brute_sp(&s, &t, n, ds, dt, &kept),
                1e-12,
                1e-10,
            );
            assert_close(
                &what("cc"),
                &cc_masked(sm, tm, MASK_CC_KERNEL, mask),
                &brute_cc(&s, &t, n, ds, dt, &kept),
                1e-12,
                1e-10,
            );
        }
    }
}

#[test]
fn masked_losses_match_finite_differences() {
    let (n, ds, dt) = (7, 5, 6);
    let (s, t) = pair(700, n, ds, dt);
    // Teacher scaled up so some RKD residuals sit on the linear Huber branch.
    let t: Vec<f64> = t.iter().map(|v| 3.0 * v).collect();
    for keep in [0.4, 0.8] {
        let mask = Mask { keep, seed: 5 };
        for (name, _, masked) in MASKED {
            let err = fd_rel_err(|a, b| masked(a, b, mask), &s, &t, n, ds, dt);
            assert!(err < 1e-7, "{name} keep={keep}: FD error {err:e}");
        }
    }
    // RKD-A where the dot products and the gather run full tiles, not only tails.
    let (n, ds, dt) = (9, 70, 17);
    let (s, t) = pair(701, n, ds, dt);
    let err = fd_rel_err(
        |a, b| rkd_angle_masked(a, b, Mask { keep: 0.5, seed: 6 }),
        &s,
        &t,
        n,
        ds,
        dt,
    );
    assert!(err < 1e-6, "rkd_angle_masked FD error {err:e}");
}

#[test]
fn pair_mask_statistics() {
    let n = 64;
    for keep in [0.1, 0.3, 0.7] {
        // Per seed the ordered fraction has sd ≈ sqrt(keep(1−keep)·8128)/4096 ≤ 0.011, so
        // 0.05 is over 4.5 sd; the mean over 16 seeds (sd ≤ 0.003) must be within 0.01.
        let fracs: Vec<f64> = (0..16u64)
            .map(|seed| {
                let m = super::mask::PairMask::new(&Mask { keep, seed }, n);
                assert_eq!(m.count, m.kept.iter().filter(|&&k| k).count());
                m.count as f64 / (n * n) as f64
            })
            .collect();
        for f in &fracs {
            assert!((f - keep).abs() < 0.05, "keep {keep}: fraction {f}");
        }
        let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
        assert!(
            (mean - keep).abs() < 0.01,
            "keep {keep}: mean fraction {mean}"
        );
    }
    let a = Mask { keep: 0.5, seed: 1 };
    let b = Mask { keep: 0.5, seed: 2 };
    let (ka, kb) = (kept_pairs(&a, n), kept_pairs(&b, n));
    assert_eq!(
        ka,
        kept_pairs(&Mask { keep: 0.5, seed: 1 }, n),
        "same seed, same mask"
    );
    // Independent masks disagree on about half the entries.
    let differ = ka.iter().zip(&kb).filter(|(x, y)| x != y).count() as f64 / (n * n) as f64;
    assert!(
        (0.4..0.6).contains(&differ),
        "different seeds differ on {differ}"
    );
    for i in 0..n {
        for j in 0..n {
            assert_eq!(ka[i * n + j], ka[j * n + i], "symmetric at ({i}, {j})");
        }
    }
    // The materialised mask is the public decision function, whatever N.
    let pm = super::mask::PairMask::new(&a, n);
    assert_eq!(pm.kept, ka);
    let small = kept_pairs(&a, 20);
    for i in 0..20 {
        for j in 0..20 {
            assert_eq!(small[i * 20 + j], ka[i * n + j], "independent of N");
        }
    }
    // keep = 1 keeps everything.
    assert!(kept_pairs(&Mask { keep: 1.0, seed: 3 }, 30)
        .iter()
        .all(|&k| k));
}

/// The angle mask of one vertex as the kernel generates it: the kept k ≥ j for each j.
fn angle_rows(mask: &Mask, i: usize, n: usize) -> Vec<Vec<usize>> {
    let gaps = super::mask::GapSampler::new(mask.keep);
    (0..n)
        .map(|j| super::mask::AngleStream::new(mask, &gaps, i, j, n).collect())
        .collect()
}

#[test]
fn angle_mask_statistics() {
    let n = 32;
    for keep in [0.1, 0.3, 0.7, 1.0] {
        for seed in 0..4u64 {
            let mask = Mask { keep, seed };
            let mut count = 0usize;
            for i in 0..n {
                for (j, ks) in angle_rows(&mask, i, n).iter().enumerate() {
                    assert!(ks.windows(2).all(|w| w[0] < w[1]) && ks.iter().all(|&k| k >= j));
                    count += ks
                        .iter()
                        .map(|&k| if k == j { 1 } else { 2 })
                        .sum::<usize>();
                }
            }
            // Ordered fraction sd ≈ 0.004 here; 0.02 is 5 sd.
            let frac = count as f64 / (n * n * n) as f64;
            assert!(
                (frac - keep).abs() < 0.02,
                "keep {keep} seed {seed}: {frac}"
            );
            if keep == 1.0 {
                assert_eq!(count, n * n * n);
            }
        }
    }
    // The geometric skipping keeps each offset k − j with probability keep, the first (the
    // diagonal) included, and independently of its neighbour.
    let keep = 0.3;
    let mask = Mask { keep, seed: 11 };
    let trials = 60 * 60;
    for d in [0usize, 1, 2, 7, 30] {
        let mut hits = 0;
        let mut both = 0;
        for i in 0..60 {
            for j in 0..60 {
                let a = mask.keeps_angle(i, j, j + d);
                hits += usize::from(a);
                both += usize::from(a && mask.keeps_angle(i, j, j + d + 1));
            }
        }
        let p = hits as f64 / trials as f64;
        let p2 = both as f64 / trials as f64;
        // sd 0.0076 and 0.0047.
        assert!((p - keep).abs() < 0.035, "offset {d}: {p}");
        assert!(
            (p2 - keep * keep).abs() < 0.025,
            "offset {d}, {}: {p2}",
            d + 1
        );
    }
    // Symmetric in (j, k); consistent with the kernel's streams; independent of N.
    let mask = Mask {
        keep: 0.4,
        seed: 21,
    };
    let rows = angle_rows(&mask, 5, 40);
    let rows_short = angle_rows(&mask, 5, 25);
    for j in 0..40 {
        for k in 0..40 {
            let kept = mask.keeps_angle(5, j, k);
            assert_eq!(kept, mask.keeps_angle(5, k, j));
            assert_eq!(kept, rows[j.min(k)].contains(&j.max(k)));
            if j < 25 && k < 25 {
                assert_eq!(kept, rows_short[j.min(k)].contains(&j.max(k)));
            }
        }
    }
    // Same seed, same mask; another seed or another vertex, another one.
    assert_eq!(
        rows,
        angle_rows(
            &Mask {
                keep: 0.4,
                seed: 21
            },
            5,
            40
        )
    );
    assert_ne!(
        rows,
        angle_rows(
            &Mask {
                keep: 0.4,
                seed: 22
            },
            5,
            40
        )
    );
    assert_ne!(rows, angle_rows(&mask, 6, 40));
}

#[test]
fn nothing_kept_is_zero() {
    // keep = 1e-12: for a handful of relations nothing is kept (checked, not assumed).
    let (n, ds, dt) = (4, 3, 5);
    let (s, t) = pair(800, n, ds, dt);
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let mask = Mask {
        keep: 1e-12,
        seed: 1,
    };
    assert!(kept_pairs(&mask, n).iter().all(|&k| !k));
    assert!((0..n).all(|i| angle_rows(&mask, i, n).iter().all(Vec::is_empty)));
    for (name, _, masked) in MASKED {
        assert_eq!(masked(sm, tm, mask), (0.0, vec![0.0; n * ds]), "{name}");
    }
    // The smallest positive keep (q rounds to 1) and empty batches do not hang or panic.
    let tiny = Mask {
        keep: f64::MIN_POSITIVE,
        seed: 2,
    };
    for (name, _, masked) in MASKED {
        assert_eq!(masked(sm, tm, tiny).0, 0.0, "{name}");
        let e: [f64; 0] = [];
        let empty = MatRef::new(&e, 0, 3).unwrap();
        assert_eq!(masked(empty, empty, tiny), (0.0, vec![]), "{name} empty");
    }
}

#[test]
#[should_panic(expected = "rkd_angle_masked: mask keep must be in (0, 1], got 0")]
fn masked_loss_rejects_keep_zero() {
    let s = [0.0f64; 6];
    let m = MatRef::new(&s, 2, 3).unwrap();
    let _ = rkd_angle_masked(m, m, Mask { keep: 0.0, seed: 0 });
}

#[test]
#[should_panic(expected = "sp_masked: mask keep must be in (0, 1], got NaN")]
fn masked_loss_rejects_keep_nan() {
    let s = [0.0f64; 6];
    let m = MatRef::new(&s, 2, 3).unwrap();
    let _ = sp_masked(
        m,
        m,
        Mask {
            keep: f64::NAN,
            seed: 0,
        },
    );
}

#[test]
fn masked_losses_are_bit_identical_across_thread_counts() {
    let mut rng = XorShift(9090);
    // 70 columns: the gather's full 64-wide tiles run too.
    for (n, ds, dt) in [(37, 21, 18), (41, 70, 30)] {
        let s: Vec<f32> = rng.mat(n, ds).iter().map(|&v| v as f32).collect();
        let t: Vec<f32> = rng.mat(n, dt).iter().map(|&v| v as f32).collect();
        let sm = MatRef::new(&s, n, ds).unwrap();
        let tm = MatRef::new(&t, n, dt).unwrap();
        let mask = Mask {
            keep: 0.4,
            seed: 123,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let bits = |(v, g): (f32, Vec<f32>)| {
                    (
                        v.to_bits(),
                        g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    )
                };
                [
                    bits(rkd_distance_masked(sm, tm, mask)),
                    bits(rkd_angle_masked(sm, tm, mask)),
                    bits(sp_masked(sm, tm, mask)),
                    bits(cc_masked(sm, tm, MASK_CC_KERNEL, mask)),
                ]
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}

#[test]
fn masked_f32_agrees_with_f64() {
    // The f32 masked kernels (FMA tiles, unnormalised accumulation) against f64 on the same
    // rounded inputs, to the golden f32 bounds.
    let (n, ds, dt) = (33, 70, 19);
    let (s, t) = pair(900, n, ds, dt);
    let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let s64: Vec<f64> = s32.iter().map(|&v| f64::from(v)).collect();
    let t64: Vec<f64> = t32.iter().map(|&v| f64::from(v)).collect();
    let mask = Mask { keep: 0.3, seed: 4 };
    let (a, b) = (
        MatRef::new(&s32, n, ds).unwrap(),
        MatRef::new(&t32, n, dt).unwrap(),
    );
    let (c, d) = (
        MatRef::new(&s64, n, ds).unwrap(),
        MatRef::new(&t64, n, dt).unwrap(),
    );
    let widen = |(v, g): (f32, Vec<f32>)| (f64::from(v), g.iter().map(|&x| f64::from(x)).collect());
    assert_close(
        "rkd_distance f32",
        &widen(rkd_distance_masked(a, b, mask)),
        &rkd_distance_masked(c, d, mask),
        1e-5,
        1e-4,
    );
    assert_close(
        "rkd_angle f32",
        &widen(rkd_angle_masked(a, b, mask)),
        &rkd_angle_masked(c, d, mask),
        1e-5,
        1e-4,
    );
    assert_close(
        "sp f32",
        &widen(sp_masked(a, b, mask)),
        &sp_masked(c, d, mask),
        1e-5,
        1e-4,
    );
    assert_close(
        "cc f32",
        &widen(cc_masked(a, b, MASK_CC_KERNEL, mask)),
        &cc_masked(c, d, MASK_CC_KERNEL, mask),
        1e-5,
        1e-4,
    );
}

#[test]
fn candle_adapters_take_a_mask() {
    let mut rng = XorShift(55);
    let (n, ds, dt) = (9, 5, 7);
    let s = rng.mat(n, ds);
    let t = rng.mat(n, dt);
    let dev = Device::Cpu;
    let teacher = Tensor::from_vec(t.clone(), (n, dt), &dev).unwrap();
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let m = Mask { keep: 0.5, seed: 8 };
    let cases: [(&str, Adapter, Loss); 4] = [
        (
            "rkd_distance",
            Box::new(|x| rkd_distance_loss(x, &teacher, Some(m))),
            rkd_distance_masked(sm, tm, m),
        ),
        (
            "rkd_angle",
            Box::new(|x| rkd_angle_loss(x, &teacher, Some(m))),
            rkd_angle_masked(sm, tm, m),
        ),
        (
            "sp",
            Box::new(|x| sp_loss(x, &teacher, Some(m))),
            sp_masked(sm, tm, m),
        ),
        (
            "cc",
            Box::new(|x| cc_loss(x, &teacher, MASK_CC_KERNEL, Some(m))),
            cc_masked(sm, tm, MASK_CC_KERNEL, m),
        ),
    ];
    let st = Tensor::from_vec(s.clone(), (n, ds), &dev).unwrap();
    for (name, f, (want_v, want_g)) in &cases {
        assert_eq!(
            f(&st).unwrap().to_scalar::<f64>().unwrap(),
            *want_v,
            "{name}"
        );
        let got = grad_of(f, &s, n, ds, candle_core::DType::F64);
        for (g, w) in got.iter().zip(want_g) {
            assert_eq!(*g, 3.0 * w, "{name}");
        }
    }
    for keep in [0.0, -0.5, 1.5, f64::NAN] {
        let bad = Some(Mask { keep, seed: 0 });
        let err = rkd_angle_loss(&st, &teacher, bad).unwrap_err().to_string();
        assert!(err.contains("keep must be in (0, 1]"), "{err}");
        assert!(rkd_distance_loss(&st, &teacher, bad).is_err());
        assert!(sp_loss(&st, &teacher, bad).is_err());
        assert!(cc_loss(&st, &teacher, MASK_CC_KERNEL, bad).is_err());
    }
}

#[test]
fn eval_cases_masks_on_request() {
    let mut rng = XorShift(66);
    let (n, ds, dt) = (6, 4, 3);
    let (s, t) = (rng.mat(n, ds), rng.mat(n, dt));
    let rows = |x: &[f64], d: usize| -> serde_json::Value {
        serde_json::json!(x.chunks(d).map(|r| r.to_vec()).collect::<Vec<_>>())
    };
    let (sj, tj) = (rows(&s, ds), rows(&t, dt));
    let sm = MatRef::new(&s, n, ds).unwrap();
    let tm = MatRef::new(&t, n, dt).unwrap();
    let seed = u64::MAX - 5;
    let m = Mask { keep: 0.6, seed };
    let params = serde_json::json!({"keep": 0.6, "mask_seed": seed});
    let case = |loss: &str, params: &serde_json::Value| serde_json::json!({"name": loss, "loss": loss, "params": params, "student": sj, "teacher": tj});
    let input = serde_json::json!({"cases": [
        case("rkd_distance", &params),
        case("rkd_angle", &params),
        case("sp", &params),
        case("cc", &params),
    ]});
    let out = eval_cases(&input).unwrap();
    let got: Vec<f64> = out["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_f64().unwrap())
        .collect();
    assert_eq!(got[0], rkd_distance_masked(sm, tm, m).0);
    assert_eq!(got[1], rkd_angle_masked(sm, tm, m).0);
    assert_eq!(got[2], sp_masked(sm, tm, m).0);
    assert_eq!(got[3], cc_masked(sm, tm, MASK_CC_KERNEL, m).0);
    assert_ne!(got[3], cc(sm, tm, MASK_CC_KERNEL).0, "the mask is applied");
    let err = |loss: &str, p: serde_json::Value| {
        eval_cases(&serde_json::json!({"cases": [case(loss, &p)]})).unwrap_err()
    };
    let field = |e: &EvalError| match e {
        EvalError::Invalid { field, .. } => field.clone(),
        other => panic!("{other}"),
    };
    // The same seed written as a float is rejected: above 2^53 it cannot name one integer
    // (this one rounds to 2^64).
    assert_eq!(
        field(&err(
            "cc",
            serde_json::json!({"keep": 0.6, "mask_seed": seed as f64})
        )),
        "params.mask_seed"
    );
    assert_eq!(
        field(&err("sp", serde_json::json!({"keep": 0.5}))),
        "params.keep"
    );
    assert_eq!(
        field(&err("sp", serde_json::json!({"mask_seed": 3}))),
        "params.mask_seed"
    );
    assert_eq!(
        field(&err("kd", serde_json::json!({"keep": 0.5, "mask_seed": 3}))),
        "params.keep"
    );
    for bad_keep in [
        serde_json::json!(0),
        serde_json::json!(1.5),
        serde_json::json!("0.5"),
    ] {
        assert_eq!(
            field(&err(
                "rkd_angle",
                serde_json::json!({"keep": bad_keep, "mask_seed": 3})
            )),
            "params.keep"
        );
    }
    for bad_seed in [
        serde_json::json!(-1),
        serde_json::json!(1.5),
        serde_json::json!(1e300),
    ] {
        assert_eq!(
            field(&err(
                "rkd_angle",
                serde_json::json!({"keep": 0.5, "mask_seed": bad_seed})
            )),
            "params.mask_seed"
        );
    }
    // An integral float seed below 2^53 is the integer.
    let out = eval_cases(&serde_json::json!({"cases": [case("sp", &serde_json::json!({"keep": 0.6, "mask_seed": 12.0}))]})).unwrap();
    assert_eq!(
        out["cases"][0]["value"].as_f64().unwrap(),
        sp_masked(
            sm,
            tm,
            Mask {
                keep: 0.6,
                seed: 12
            }
        )
        .0
    );
}

#[test]
fn large_batches_take_the_matrix_product_path_and_stay_thread_independent() {
    // N²·D above the threshold where the Gram products go through `gemm` (64²·40), and
    // above the one where `gemm` itself splits the work over threads (256²·300).
    for (n, ds, dt) in [(64, 40, 24), (256, 300, 40)] {
        thread_independent_at(n, ds, dt);
    }
}

fn thread_independent_at(n: usize, ds: usize, dt: usize) {
    let (s64, t64) = pair(901, n, ds, dt);
    let s: Vec<f32> = s64.iter().map(|&v| v as f32).collect();
    let t: Vec<f32> = t64.iter().map(|&v| v as f32).collect();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let (sm, tm) = (
                    MatRef::new(&s, n, ds).unwrap(),
                    MatRef::new(&t, n, dt).unwrap(),
                );
                vec![
                    rkd_distance(sm, tm),
                    rkd_angle(sm, tm),
                    sp(sm, tm),
                    cc(sm, tm, CcKernel::Taylor { p: 2, gamma: 0.4 }),
                ]
            })
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        for (a, b) in one.iter().zip(&other) {
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "value, {threads} threads");
            assert_eq!(a.1, b.1, "gradient, {threads} threads");
        }
    }
    // And the f32 fast path agrees with f64 (which uses the same code at a wider type).
    let (sm, tm) = (
        MatRef::new(&s64, n, ds).unwrap(),
        MatRef::new(&t64, n, dt).unwrap(),
    );
    let wide = [
        rkd_distance(sm, tm),
        rkd_angle(sm, tm),
        sp(sm, tm),
        cc(sm, tm, CcKernel::Taylor { p: 2, gamma: 0.4 }),
    ];
    for (narrow, wide) in one.iter().zip(&wide) {
        assert!((f64::from(narrow.0) - wide.0).abs() <= 1e-4 * wide.0.abs());
    }
}
