//! Unit tests: finite differences, a naive cube reference, the candle adapters,
//! thread-count determinism and mining invariants. The golden vectors are checked in
//! `tests/golden.rs`.

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

type LossFn = fn(MatRef<f64>, MatRef<f64>) -> (f64, Vec<f64>);

/// A candle adapter applied to the student, with the teacher or triplets captured.
type Adapter<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;

/// Central differences on every coordinate; returns the worst error over max|grad|.
fn fd_rel_err(f: LossFn, s: &[f64], t: &[f64], n: usize, ds: usize, dt: usize) -> f64 {
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
    let (v1, g1) = super::rkd::rkd_angle_unfused(sm, tm);
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
    let cases: [(&str, Adapter, Vec<f64>); 3] = [
        (
            "rkd_distance",
            Box::new(|x| rkd_distance_loss(x, &teacher)),
            rkd_distance(sm, tm).1,
        ),
        (
            "rkd_angle",
            Box::new(|x| rkd_angle_loss(x, &teacher)),
            rkd_angle(sm, tm).1,
        ),
        (
            "triplet",
            Box::new(|x| triplet_loss(x, &trips, 0.5)),
            triplet(sm, &trips, 0.5).1,
        ),
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
    let err = rkd_angle_loss(&s, &t).unwrap_err().to_string();
    assert!(err.contains("4 rows") && err.contains("5"), "{err}");
    assert!(rkd_distance_loss(&s.flatten_all().unwrap(), &t).is_err());
    assert!(triplet_loss(&s, &[[0, 1, 4]], 0.2).is_err());
    let half = s.to_dtype(candle_core::DType::F16).unwrap();
    assert!(triplet_loss(&half, &[[0, 1, 2]], 0.2).is_err());
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
    let v = rkd_angle_loss(&st_t, &tt)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(v, rkd_angle(sm, tm).0);
    let v = rkd_distance_loss(&st_t, &tt)
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
    for mining in [Mining::Random, Mining::SemiHard, Mining::Hard] {
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
                Mining::Random => {}
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
}
